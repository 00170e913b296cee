"""Commands other packages add to the one `molm3d` CLI (entry points), so this library imports no
service code: `molm3d.commands` entries add subcommands (e.g. `serve`), `molm3d.remote` runs
`caption`/`ask` against a server."""

from __future__ import annotations

import argparse
from importlib.metadata import entry_points
from typing import Any


def add_plugin_commands(sub: argparse._SubParsersAction) -> None:
    for ep in entry_points(group="molm3d.commands"):
        ep.load()(sub)


def plugin(group: str, name: str) -> Any:
    found = entry_points(group=group, name=name)
    if not found:
        raise ValueError(f"no {group}:{name} plugin installed; install the services package (`make setup`)")
    return next(iter(found)).load()
