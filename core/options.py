"""Plugin options: one parser for every plugin family.

A plugin declares its options as a pydantic model (subclass ``PluginOptions``: unknown keys are
refused, values are frozen) and reads them with ``parse_options``, which turns a validation failure
into a ``ConfigError`` naming each bad option, what was expected and what was given::

    class MyOptions(PluginOptions):
        window: float = Field(default=1.0, gt=0, description="seconds")

    settings = parse_options(MyOptions, options, "batcher 'mine'")
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from .errors import ConfigError

__all__ = ["PluginOptions", "as_tuple", "parse_options", "validation_error"]


class PluginOptions(BaseModel):
    """Base of plugin option models: unknown keys are an error, values are not coerced (``"5"`` is
    not a number, ``1`` is not ``true``; an integer is a fine float), parsed values are immutable.
    TOML and JSON have no tuples: a tuple field should accept a list (see ``as_tuple``)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


def as_tuple(value: Any) -> Any:
    """A ``mode="before"`` field validator helper: lists become tuples, anything else is left as is."""
    return tuple(value) if isinstance(value, list) else value


OptionsT = TypeVar("OptionsT", bound=BaseModel)


def validation_error(source: str, error: ValidationError, prefix: str = "") -> ConfigError:
    """A ``ConfigError`` naming the source, each bad key and what was expected."""
    problems = []
    for item in error.errors():
        key = ".".join(str(p) for p in (prefix, *item["loc"]) if p != "")
        expected = item["msg"]
        if item["type"] == "extra_forbidden":
            expected = "unknown key"
        problems.append({"key": key, "expected": expected, "got": repr(item.get("input"))[:80]})
    text = "; ".join(f"{p['key']}: {p['expected']} (got {p['got']})" for p in problems)
    return ConfigError(f"{source}: {text}", file=source, problems=problems)


def parse_options(model: type[OptionsT], options: Mapping[str, Any] | None, what: str) -> OptionsT:
    """Validate ``options`` against ``model``; ``what`` names the plugin in the error
    (``"batcher 'dynamic'"``). Raises ``ConfigError`` listing every bad or unknown option."""
    try:
        return model.model_validate(dict(options or {}))
    except ValidationError as exc:
        raise validation_error(f"{what} options", exc) from None
