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
an anonymous list; :func:`interval_from_text` still turns the text into that triple for a caller that wants it.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import pyarrow as pa

# DuckDB type ids whose Arrow export is wrong: written as DuckDB's text in every format
WRONG_IN_ARROW = frozenset({"bit", "bignum", "varint", "variant", "time with time zone", "uhugeint"})
_NESTED = frozenset({"list", "array", "struct", "map", "union"})

Reviver = Callable[[Any], Any]


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class _Plan:
    """One DuckDB type as selected: its SQL type text, whether it differs from the type itself, and the
    function turning its Python value (INTERVALs as text) back into the documented shape, or None."""

    __slots__ = ("changed", "revive", "sql")

    def __init__(self, sql: str, changed: bool, revive: Reviver | None) -> None:
        self.sql, self.changed, self.revive = sql, changed, revive


def _plan(kind: Any, revive_intervals: bool, in_union: bool = False) -> _Plan:
    """How to select a value of DuckDB type ``kind`` (a ``DuckDBPyType``)."""
    ident = kind.id
    if ident in WRONG_IN_ARROW:
        return _Plan("VARCHAR", True, None)
    if ident == "interval":
        return _Plan("VARCHAR", True, _revive_interval if revive_intervals and not in_union else None)
    if ident == "enum":      # its values reach Python as text either way: no quoting of them to get wrong
        return _Plan("VARCHAR", False, None)
    if ident not in _NESTED:
        return _Plan(str(kind), False, None)
    children = list(kind.children)
    if ident in ("list", "array"):
        child = _plan(children[0][1], revive_intervals, in_union)
        sql = f"{child.sql}[]" if ident == "list" else f"{child.sql}[{children[1][1]}]"
        revive = child.revive
        return _Plan(sql, child.changed, None if revive is None else _list_reviver(revive))
    if ident == "map":
        key, value = (_plan(children[0][1], revive_intervals, in_union), _plan(children[1][1], revive_intervals,
                                                                                in_union))
        revive = None
        if key.revive or value.revive:
            revive = _map_reviver(key.revive or _same, value.revive or _same)
        return _Plan(f"MAP({key.sql}, {value.sql})", key.changed or value.changed, revive)
    members = children[1:] if ident == "union" else children     # a union's first child is its tag
    plans = [(name, _plan(member, revive_intervals, in_union or ident == "union")) for name, member in members]
    changed = any(plan.changed for _, plan in plans)
    sql = f"{ident.upper()}({', '.join(f'{_quoted(name)} {plan.sql}' for name, plan in plans)})"
    revivers = {name: plan.revive for name, plan in plans if plan.revive is not None}
    return _Plan(sql, changed, _struct_reviver(revivers) if revivers else None)


def _same(value: Any) -> Any:
    return value


def _list_reviver(revive: Reviver) -> Reviver:
    return lambda value: None if value is None else [revive(item) for item in value]


def _map_reviver(key: Reviver, value: Reviver) -> Reviver:
    # a map reaches Python as a list of (key, value) pairs
    return lambda entries: None if entries is None else [(key(k), value(v)) for k, v in entries]


def _struct_reviver(revivers: dict[str, Reviver]) -> Reviver:
    def revive(value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        return {name: revivers[name](item) if name in revivers else item for name, item in value.items()}
    return revive


def _revive_interval(value: Any) -> Any:
    return None if value is None else interval_from_text(value)


_INTERVAL = re.compile(r"(?:(-?\d+) years? ?)?(?:(-?\d+) months? ?)?(?:(-?\d+) days? ?)?"
                       r"(?:(-?)(\d+):(\d{2}):(\d{2})(?:\.(\d{1,6}))?)?")


def interval_from_text(text: str) -> pa.MonthDayNano:
    """DuckDB's text for an INTERVAL (``Interval::ToString``: ``-1 year -2 months 3 days -04:05:06.000789``,
    ``00:00:00``) as ``[months, days, nanoseconds]`` (a ``pyarrow.MonthDayNano``, as ``to_pylist`` gives an
    interval), exact for every interval DuckDB holds: nanoseconds are a Python int, never wrapped."""
    match = _INTERVAL.fullmatch(text)
    if match is None or not text:
        raise ValueError(f"not DuckDB's text for an INTERVAL: {text[:80]!r}")
    years, months, days, sign, hours, minutes, seconds, fraction = match.groups()
    micros = ((int(hours or 0) * 60 + int(minutes or 0)) * 60 + int(seconds or 0)) * 1_000_000 \
        + int((fraction or "").ljust(6, "0"))
    return pa.MonthDayNano([12 * int(years or 0) + int(months or 0), int(days or 0),
                            (-micros if sign else micros) * 1000])


def text_columns(types: Sequence[Any], fmt: str) -> tuple[dict[int, str], dict[int, Reviver]]:
    """Of a result of DuckDB ``types`` written as ``fmt``: the columns to select as another type (index -> that
    type's SQL text), and the function each of them needs to give its Python value the documented shape (index ->
    function, for ``output.write_result(..., revive=...)``). Both empty for a result without such types."""
    cast: dict[int, str] = {}
    revive: dict[int, Reviver] = {}
    for i, kind in enumerate(types):
        # an INTERVAL, at any depth: DuckDB's text in every format (fix35b: json wrote [months, days, nanoseconds])
        plan = _plan(kind, revive_intervals=False)
        if plan.changed:
            cast[i] = plan.sql
            if plan.revive is not None:
                revive[i] = plan.revive
    return cast, revive


def projection(names: Sequence[str], cast: dict[int, str]) -> str:
    """The select list of a result's columns by position (``#1`` ...), those in ``cast`` cast, every one named as
    it was (duplicate names kept)."""
    return ", ".join(f"CAST(#{i + 1} AS {cast[i]}) AS {_quoted(name)}" if i in cast else f"#{i + 1} AS {_quoted(name)}"
                     for i, name in enumerate(names))
