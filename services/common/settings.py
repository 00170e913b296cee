"""Typed settings of a deployment, read from its Serve `user_config`: one frozen dataclass per stage.

The dataclass's defaults are THE defaults: serve.yaml lists only what differs from them or what an
operator is expected to tune. `from_user_config` refuses a key the class does not declare, a value of
the wrong type and a value out of its range, with one line that names the class and the key, so a
typo in serve.yaml or a k8s patch fails the deploy at start instead of being ignored:

    @dataclass(frozen=True)
    class EncoderSettings(ModelSettings):                 # token_env + checkpoint, device, ... inherited
        max_batch_size: int = setting(32, ge=1)
        batch_wait_timeout_s: float = setting(0.01, ge=0)

    def reconfigure(self, config: dict[str, Any]) -> None:  # Serve passes the user_config
        self.settings = s = EncoderSettings.from_user_config(config)
        self._init_stage(s.token_env)

Field types: bool, int, float (an int is taken), str, a `Literal[...]` of strings, or dict (a mapping
checked by its consumer). A key set to null (`key:` in YAML) takes the default. Cross-field checks go in
`__post_init__`, raising ValueError: `from_user_config` prefixes the class name.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Mapping
from typing import Any, Literal, Self

from .auth import DEFAULT_TOKEN_ENV


class SettingsError(ValueError):
    """A user_config that does not fit its settings class."""


def setting(default: Any, *, ge: float | None = None, gt: float | None = None, le: float | None = None) -> Any:
    """A settings field with its default and optional bounds (`ge` <= value, `gt` < value, value <= `le`)."""
    metadata = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le)) if v is not None}
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass(frozen=True)
class Settings:
    """Base of every settings class: the mechanism, no fields."""

    @classmethod
    def from_user_config(cls, config: Mapping[str, Any] | None) -> Self:
        """The settings of `config` (None or {} = all defaults); SettingsError naming the bad key."""
        name = cls.__name__
        if config is None:
            config = {}
        if not isinstance(config, Mapping):
            raise SettingsError(f"{name}: user_config must be a mapping, got {type(config).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(str(k) for k in config if k not in fields)
        if unknown:
            raise SettingsError(
                f"{name}: unknown user_config key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                f"allowed: {', '.join(sorted(fields))}"
            )
        hints = typing.get_type_hints(cls)
        values = {
            key: _check(name, key, value, hints[key], fields[key].metadata)
            for key, value in config.items()
            if value is not None
        }
        try:
            return cls(**values)
        except (TypeError, ValueError) as err:  # __post_init__ checks
            raise SettingsError(f"{name}: {err}") from None


def _check(name: str, key: str, value: Any, kind: Any, bounds: Mapping[str, float]) -> Any:
    """`value` converted to the field's type (int -> float only), or SettingsError."""

    given = value

    def fail(expected: str) -> SettingsError:
        return SettingsError(f"{name}: {key} must be {expected}, got {given!r}")

    if typing.get_origin(kind) is Literal:
        choices = typing.get_args(kind)
        if value not in choices:
            raise fail(f"one of {', '.join(map(repr, choices))}")
        return value
    base = typing.get_origin(kind) or kind
    if base is bool:
        if not isinstance(value, bool):
            raise fail("true or false")
        return value
    if base is str:
        if not isinstance(value, str):
            raise fail("a string")
        return value
    if base is dict:
        if not isinstance(value, Mapping):
            raise fail("a mapping")
        return dict(value)
    if base is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail("an integer")
    elif base is float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise fail("a finite number")
        value = float(value)
    else:
        raise TypeError(f"{name}.{key}: unsupported settings type {kind!r}")
    if "ge" in bounds and not value >= bounds["ge"]:
        raise fail(f">= {bounds['ge']:g}")
    if "gt" in bounds and not value > bounds["gt"]:
        raise fail(f"> {bounds['gt']:g}")
    if "le" in bounds and not value <= bounds["le"]:
        raise fail(f"<= {bounds['le']:g}")
    return value


@dataclasses.dataclass(frozen=True)
class StageSettings(Settings):
    """What every gRPC stage reads: the environment variable that holds the API token (services/common/auth.py)."""

    token_env: str = DEFAULT_TOKEN_ENV
