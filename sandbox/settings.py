"""The base of every settings model: strict pydantic, one-line errors, YAML without aliases.

Scenarios (:mod:`sandbox.config`) and the settings of each command (``rl eval``,
``rl train-head``, ``loop``, the IP-agent experiment, RL data builds, A/B) share these, so
every bad setting reads the same way: ``field.path: message``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError


class _NoAliasLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses aliases (``*name``).

    An alias bomb (each level referring to the one before ten times) parses in microseconds
    but expands exponentially once the config is copied, dumped or validated; a scenario has
    no need for aliases, so none are accepted.
    """

    def compose_node(self, parent: Any, index: Any) -> Any:
        """Compose the next node, raising on an alias."""
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, f"alias *{event.anchor} is not allowed in a scenario (write the "
                "value out)", event.start_mark)
        return super().compose_node(parent, index)


def safe_yaml(text: str) -> Any:
    """Parse YAML as ``yaml.safe_load`` does, but without aliases.

    Raises:
        yaml.YAMLError: invalid YAML, a tag other than the standard ones, or an alias.
    """
    loader = _NoAliasLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ConfigError(ValueError):
    """A command's settings are invalid (one line naming the setting)."""


class ConfigModel(BaseModel):
    """A command's settings, checked when made.

    The settings of ``rl eval``, ``rl train-head``, ``loop``, the IP-agent experiment and RL
    data builds: unknown keys are refused, and constructing one validates it, raising
    :attr:`error` with one line naming the first bad setting.
    """

    model_config = ConfigDict(extra="forbid")
    error: ClassVar[type[ValueError]] = ConfigError

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise self.error(validation_line(exc, "setting")) from None


def _loc(err: dict[str, Any]) -> str:
    return ".".join(str(p) for p in err.get("loc", ())) or "(top level)"


def validation_line(exc: ValidationError, key: str = "key") -> str:
    """A pydantic error as one line: ``field.path: message`` of the first problem.

    Args:
        exc: the error.
        key: what an unknown field is called in the message (``unknown key``).
    """
    err = exc.errors()[0]
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = f"unknown {key}"
    elif err["type"] == "literal_error":  # a wrong choice: say which
        msg = f"{msg}, got {err.get('input')!r}"
    more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    return f"{_loc(err)}: {msg}{more}"
