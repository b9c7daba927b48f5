"""The app's four tables as the export needs them: column names from ``schemas.raw``, allowed server types.

A column's type family comes from its raw schema type (int64 -> any integer type, float64 -> double
precision / real / numeric, string -> text-like, uuid or any ENUM type, whose label is read as text)
except ``created_at``, which must be a timestamp (naive, as the app stores it, or with time zone, read
in UTC). Extra columns are ignored. A domain counts as its base type (``sql/app_db/columns.sql``).
"""
from __future__ import annotations

import re

import psycopg
import pyarrow as pa

from pipelines.appdb.connection import APP_SCHEMA, as_text
from pipelines.sqlrun import sql_text
from schemas import get_schema
from schemas.raw import RAW_TABLES

FAMILIES: dict[str, tuple[str, ...]] = {
    "integer": ("bigint", "integer", "smallint"),
    "float": ("double precision", "real", "numeric"),
    "text": ("text", "character varying", "character", "uuid"),
    "timestamp": ("timestamp without time zone", "timestamp with time zone"),
}
# Families a column of an ENUM type (CREATE TYPE ... AS ENUM, a routine migration of a text column) may
# stand in: the export statements read every text column as ::text, which gives an enum's label, byte
# for byte what the text column held.
ENUM_FAMILIES = ("text",)


class AppSchemaError(ValueError):
    """An app table is missing, lacks a column, or has a column of an unexpected type."""


def family(table: str, column: str) -> str:
    """The type family the export expects for ``table.column``."""
    if column == "created_at":
        return "timestamp"
    arrow_type = get_schema(f"raw_{table}").field(column).type
    if pa.types.is_integer(arrow_type):
        return "integer"
    if pa.types.is_floating(arrow_type):
        return "float"
    return "text"


def expected_columns(table: str) -> list[tuple[str, str]]:
    """(column, family) of ``table`` in the raw line's order."""
    return [(name, family(table, name)) for name in get_schema(f"raw_{table}").names]


def check_tables(conn: psycopg.Connection, where: str = "the app database") -> None:
    """Raise ``AppSchemaError`` naming table, column and expected type for the first mismatch."""
    found: dict[str, dict[str, str]] = {table: {} for table in RAW_TABLES}
    seen: set[str] = set()
    named: dict[tuple[str, str], str] = {}        # the type's own name, for the message
    with conn.cursor() as cursor:
        cursor.execute(statement("columns"), {"tables": list(RAW_TABLES)})
        for table, column, data_type, is_enum in cursor:
            table, column = as_text(table), as_text(column)
            found[table][column] = "enum" if is_enum else as_text(data_type)
            named[(table, column)] = as_text(data_type)
            seen.add(table)
    for table in RAW_TABLES:
        if table not in seen:
            raise AppSchemaError(f"{where} has no table {table!r} in schema {APP_SCHEMA!r}; expected columns "
                                 + ", ".join(f"{c} ({f})" for c, f in expected_columns(table)))
        for column, kind in expected_columns(table):
            allowed = FAMILIES[kind]
            if column not in found[table]:
                raise AppSchemaError(f"app table {table!r} in {where} has no column {column!r} "
                                     f"(expected type {kind}: one of {', '.join(allowed)})")
            actual = found[table][column]
            if actual == "enum" and kind in ENUM_FAMILIES:
                continue
            if actual not in allowed:
                enum = f"{named[(table, column)]!r} (an enum)" if actual == "enum" else repr(actual)
                also = ", or an enum type" if kind in ENUM_FAMILIES else ""
                raise AppSchemaError(f"app table {table!r} in {where}: column {column!r} has type {enum}, "
                                     f"expected type {kind} (one of {', '.join(allowed)}{also})")


def statement(name: str) -> str:
    """``sql/app_db/<name>.sql`` with its ``$parameters`` as psycopg placeholders (``%(name)s``)."""
    text = sql_text(f"app_db/{name}").replace("%", "%%")
    return re.sub(r"\$([A-Za-z_][A-Za-z0-9_]*)", r"%(\1)s", text)
