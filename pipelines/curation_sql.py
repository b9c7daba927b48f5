"""SQL steps of the curation and split stages: ``sqlrun``'s run-and-cast contract on DuckDB 2.x.

``pipelines.sqlrun.run_sql`` calls ``fetch_arrow_table()``, which DuckDB 2.0 removed
(``to_arrow_table()`` replaces it). Until the shared helper is fixed these two functions keep its
exact contract (``sql/<name>.sql``, named ``$params``, cast to the dataset schema, atomic write);
once it is, they can become plain re-exports of ``run_sql`` / ``run_to_parquet``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import duckdb
import pyarrow as pa

from pipelines.sqlrun import sql_text
from pipelines.storage import cast_to_schema, write_parquet_atomic
from schemas import get_schema


def run_sql(con: duckdb.DuckDBPyConnection, name: str, params: Mapping[str, object] | None = None) -> pa.Table:
    """Run ``sql/<name>.sql`` with named ``$params`` and return an Arrow table."""
    try:
        return con.sql(sql_text(name), params=dict(params or {})).to_arrow_table()
    except duckdb.Error as exc:
        raise RuntimeError(f"sql/{name}.sql failed: {exc}") from exc


def run_to_parquet(con: duckdb.DuckDBPyConnection, name: str, dataset: str, output: Path,
                   params: Mapping[str, object] | None = None) -> pa.Table:
    """Run ``sql/<name>.sql``, cast to ``dataset``'s schema, write ``output`` atomically."""
    table = cast_to_schema(run_sql(con, name, params), get_schema(dataset))
    write_parquet_atomic(table, output)
    return table
