"""A DuckDB connection that never reaches the network by itself (the bottom layer's, for every reader)."""
from __future__ import annotations

import duckdb

OFFLINE = {"autoinstall_known_extensions": False, "autoload_known_extensions": False}

# The option every ``read_parquet`` the project runs or documents takes (review rev32b): DuckDB's default guesses
# hive partitions from every ``key=value`` folder name of a file's path, the folders above the data included, and
# a guessed column replaces the file's own column of that name. A home or a mirror below ``/x/split=train/`` read
# every sample as train, one below ``/x/dt=2026-12-07/`` every sample's day as that date. The files always carry
# their own columns (every warehouse table its ``dt``, every sidecar its ``split`` and ``dt``): nothing is read
# from a folder's name. There is no setting for the default, so each call states it.
NO_HIVE = "hive_partitioning = false"


def offline_connection() -> duckdb.DuckDBPyConnection:
    """A new in-memory DuckDB that never installs or loads an extension by itself. DuckDB's default installs a
    known extension from the network the first time a statement needs one (``httpfs`` for a path starting with
    ``https://`` or ``s3://``, ``spatial``, ...); nothing here may use the network at run time, and every
    extension the pipeline needs (Parquet, JSON, ICU) is built into the wheel. Every connection the pipeline, its
    contracts and its benchmarks open comes from here (``pickapic query``'s own sets the same and more:
    ``pipelines.query.engine``)."""
    return duckdb.connect(":memory:", config=dict(OFFLINE))
