"""Pyarrow schemas: the single source of column names and types for every table.

Each stage owns one module (``raw``, ``warehouse``, ``features``, ``curation``, ``publish``, ``scoring``);
this package exposes them by dataset name so contracts, SQL casts and writers agree.
"""
from __future__ import annotations

import pyarrow as pa

from schemas import curation, features, publish, raw, scoring, warehouse

_MODULES = [raw, warehouse, features, curation, publish, scoring]

SCHEMAS: dict[str, pa.Schema] = {}
for _module in _MODULES:
    for _name, _schema in _module.SCHEMAS.items():
        if _name in SCHEMAS:
            raise RuntimeError(f"schema {_name!r} is defined twice (second in {_module.__name__})")
        SCHEMAS[_name] = _schema


def get_schema(name: str) -> pa.Schema:
    """Return the pyarrow schema of dataset ``name`` or raise naming the known datasets."""
    try:
        return SCHEMAS[name]
    except KeyError:
        raise KeyError(f"unknown dataset {name!r}; known: {sorted(SCHEMAS)}") from None
