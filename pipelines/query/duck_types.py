"""DuckDB types that DuckDB's Arrow export cannot carry, and how ``pickapic query`` writes them instead.

Review rev27d: a result is read from DuckDB as Arrow, and some DuckDB values reach Arrow wrong, so every format
wrote them silently wrong: a BIT as DuckDB's internal bytes, a BIGNUM (VARINT) as its encoding, a VARIANT as its
``{metadata, value}`` bytes, a TIMETZ without its offset, a UHUGEINT above 2^127 wrapped negative, and an INTERVAL
of more than ~292 years of time (2^63 nanoseconds: Arrow's ``month_day_nano``; DuckDB's hold microseconds)
wrapped. :func:`text_columns` names, from the result's DuckDB types (``relation.types``: bound, nothing run), the
columns holding one at any depth, and the type each is selected as: such a value becomes VARCHAR (DuckDB's own
text for it, its ``::VARCHAR``), in a list, struct, map or union too, the rest of the column as it was.

An INTERVAL is DuckDB's text for it in every format and at any depth (``1 year 2 months 3 days 04:05:06.5``, as
DuckDB's ``::VARCHAR`` and its own CSV and JSON writers give it; exact at any size, and ``'...'::INTERVAL`` reads it
back). Until fix35b ``--format json`` and the JSON text of a nested value wrote ``[months, days, nanoseconds]``,
an anonymous list (and fix36n took out what turned the text back into that triple, which nothing called since).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

# DuckDB type ids whose Arrow export is wrong: written as DuckDB's text in every format
WRONG_IN_ARROW = frozenset({"bit", "bignum", "varint", "variant", "time with time zone", "uhugeint"})
_NESTED = frozenset({"list", "array", "struct", "map", "union"})


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _plan(kind: Any) -> tuple[str, bool]:
    """How to select a value of DuckDB type ``kind`` (a ``DuckDBPyType``): its SQL type text, and whether that
    differs from the type itself."""
    ident = kind.id
    if ident in WRONG_IN_ARROW or ident == "interval":
        return "VARCHAR", True
    if ident == "enum":      # its values reach Python as text either way: no quoting of them to get wrong
        return "VARCHAR", False
    if ident not in _NESTED:
        return str(kind), False
    children = list(kind.children)
    if ident in ("list", "array"):
        sql, changed = _plan(children[0][1])
        return (f"{sql}[]" if ident == "list" else f"{sql}[{children[1][1]}]"), changed
    if ident == "map":
        (key, key_changed), (value, value_changed) = _plan(children[0][1]), _plan(children[1][1])
        return f"MAP({key}, {value})", key_changed or value_changed
    members = children[1:] if ident == "union" else children     # a union's first child is its tag
    plans = [(name, _plan(member)) for name, member in members]
    sql = f"{ident.upper()}({', '.join(f'{_quoted(name)} {member_sql}' for name, (member_sql, _) in plans)})"
    return sql, any(changed for _, (_, changed) in plans)


def text_columns(types: Sequence[Any]) -> dict[int, str]:
    """Of a result of DuckDB ``types``: the columns to select as another type (index -> that type's SQL text);
    empty for a result without such types. An INTERVAL, at any depth, is DuckDB's text in every format (fix35b:
    json wrote [months, days, nanoseconds])."""
    cast: dict[int, str] = {}
    for i, kind in enumerate(types):
        sql, changed = _plan(kind)
        if changed:
            cast[i] = sql
    return cast


def projection(names: Sequence[str], cast: dict[int, str]) -> str:
    """The select list of a result's columns by position (``#1`` ...), those in ``cast`` cast, every one named as
    it was (duplicate names kept)."""
    return ", ".join(f"CAST(#{i + 1} AS {cast[i]}) AS {_quoted(name)}" if i in cast else f"#{i + 1} AS {_quoted(name)}"
                     for i, name in enumerate(names))
