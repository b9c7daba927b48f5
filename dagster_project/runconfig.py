"""Run config for assets, generated from each stage's frozen config dataclass (one place per knob)."""
from __future__ import annotations

import dataclasses
import typing
from typing import Any

import dagster as dg
import pydantic

_ALLOWED = (bool, int, float, str)


def _annotation(tp: Any) -> Any:
    """Map a dataclass field type to one Dagster config accepts (tuples become lists)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp in _ALLOWED:
        return tp
    if origin in (tuple, list) and args:
        return list[args[0]]
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)) and type(None) in args:
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return typing.Optional[_annotation(inner[0])]
    if origin is typing.Literal:
        return str
    raise TypeError(f"config field type {tp!r} is not supported in Dagster run config")


def config_class(dc: type, name: str) -> type[dg.Config]:
    """A ``dg.Config`` subclass with one optional field per field of dataclass ``dc``."""
    hints = typing.get_type_hints(dc)
    fields: dict[str, Any] = {}
    for field in dataclasses.fields(dc):
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()  # type: ignore[misc]
        if isinstance(default, tuple):
            default = list(default)
        description = field.metadata.get("help") or f"default: {default!r}"
        fields[field.name] = (_annotation(hints[field.name]), pydantic.Field(default=default, description=description))
    return pydantic.create_model(name, __base__=dg.Config, __doc__=f"Run config for {dc.__name__}.", **fields)


def to_dataclass(dc: type, config: dg.Config) -> Any:
    """Build the stage's frozen config from the run config (lists back to tuples)."""
    hints = typing.get_type_hints(dc)
    values = {}
    for field in dataclasses.fields(dc):
        value = getattr(config, field.name)
        if isinstance(value, list) and typing.get_origin(hints[field.name]) is tuple:
            value = tuple(value)
        values[field.name] = value
    return dc(**values)
