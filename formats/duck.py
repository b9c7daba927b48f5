"""A DuckDB connection that never reaches the network by itself (the bottom layer's, for every reader)."""
from __future__ import annotations

import duckdb

OFFLINE = {"autoinstall_known_extensions": False, "autoload_known_extensions": False}


def offline_connection() -> duckdb.DuckDBPyConnection:
    """A new in-memory DuckDB that never installs or loads an extension by itself. DuckDB's default installs a
    known extension from the network the first time a statement needs one (``httpfs`` for a path starting with
    ``https://`` or ``s3://``, ``spatial``, ...); nothing here may use the network at run time, and every
    extension the pipeline needs (Parquet, JSON, ICU) is built into the wheel. Every connection the pipeline, its
    contracts and its benchmarks open comes from here (``pickapic query``'s own sets the same and more:
    ``pipelines.query.engine``)."""
    return duckdb.connect(":memory:", config=dict(OFFLINE))
