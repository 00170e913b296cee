"""Rendered overlays, once per session: k8s/ is copied to a temporary folder where each overlay gets
a throwaway api-token.env (the real one is never committed), then rendered with kustomize."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from .validation import kustomize

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
OVERLAYS = ("dev", "prod")


@pytest.fixture(scope="session")
def k8s_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("k8s") / "k8s"
    shutil.copytree(K8S, root, ignore=shutil.ignore_patterns("api-token.env", "__pycache__"))
    for overlay in OVERLAYS:
        (root / "overlays" / overlay / "api-token.env").write_text(f"token=test-{overlay}-token\n")
    return root


@pytest.fixture(scope="session")
def rendered(k8s_copy: Path) -> dict[str, list[dict[str, Any]]]:
    """overlay name -> the objects it renders."""
    return {overlay: kustomize(k8s_copy / "overlays" / overlay) for overlay in OVERLAYS}


def find(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def one(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = find(objects, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]
