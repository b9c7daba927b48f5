"""Pictures for the Dagster UI: NSFW score histogram, duplicate-cluster sizes, split sizes."""
from __future__ import annotations

import base64
import glob
import io

import dagster as dg

from pipelines.sqlrun import NO_HIVE, offline_connection
from schemas.features import NSFW_CLASSES


def _pyplot():
    """matplotlib's pyplot on the Agg backend, imported at a chart's first drawing, not with the definitions: every
    process that loads them (each ``pickapic`` command, each run's step process) paid ~0.25-0.5 s for it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _query(sql: str, parameters: list) -> list[tuple]:
    """Rows of ``sql`` on a new offline DuckDB (no extension installed from the network), closed after."""
    con = offline_connection()
    try:
        return con.execute(sql, parameters).fetchall()
    finally:
        con.close()


def _embed(fig, title: str) -> dg.MetadataValue:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    _pyplot().close(fig)
    data = base64.b64encode(buf.getvalue()).decode()
    return dg.MetadataValue.md(f"**{title}**\n\n![{title}](data:image/png;base64,{data})")


def nsfw_histogram(features_path: str) -> dg.MetadataValue:
    """Histogram of each image's highest NudeNet score over all classes (log-count axis)."""
    greatest = ", ".join(f'coalesce(nsfw_max."{name}", 0)' for name in NSFW_CLASSES)
    # column names come from the schema; the path is a bound parameter, never spliced into the SQL, and escaped:
    # DuckDB takes it for a glob, and a home at /data/home[1] would read /data/home1's file (review rev24c)
    scores = [row[0] for row in _query(
        f"SELECT greatest({greatest}) FROM read_parquet(?, {NO_HIVE})", [glob.escape(str(features_path))])]
    fig, ax = _pyplot().subplots(figsize=(5, 2.6))
    ax.hist(scores, bins=20, range=(0, 1), color="#8a5cf6", log=bool(scores))
    ax.set_xlabel("max NudeNet score per image")
    ax.set_ylabel("images")
    return _embed(fig, "NSFW score histogram")


def cluster_size_histogram(clusters_path: str) -> dg.MetadataValue:
    """How many duplicate clusters of each size (singletons excluded)."""
    rows = _query(
        f"SELECT cluster_size, count(DISTINCT cluster_id) FROM read_parquet(?, {NO_HIVE}) "
        "WHERE cluster_size > 1 GROUP BY 1 ORDER BY 1", [glob.escape(str(clusters_path))])
    fig, ax = _pyplot().subplots(figsize=(5, 2.6))
    ax.bar([str(size) for size, _ in rows] or ["none"], [n for _, n in rows] or [0], color="#0ea5e9")
    ax.set_xlabel("images in cluster")
    ax.set_ylabel("clusters")
    return _embed(fig, "duplicate-cluster sizes")


def split_sizes(split_pairs_path: str) -> dg.MetadataValue:
    """Rows per split, ties shaded."""
    rows = _query(
        f"SELECT split, count(*), count(*) FILTER (WHERE label_0 = 0.5) FROM read_parquet(?, {NO_HIVE}) "
        "GROUP BY 1 ORDER BY 1", [glob.escape(str(split_pairs_path))])
    fig, ax = _pyplot().subplots(figsize=(5, 2.6))
    names = [r[0] for r in rows]
    ax.barh(names, [r[1] for r in rows], color="#22c55e", label="pairs")
    ax.barh(names, [r[2] for r in rows], color="#f59e0b", label="ties")
    ax.set_xscale("log")
    ax.set_xlabel("rows (log)")
    ax.legend(loc="lower right", fontsize=7)
    return _embed(fig, "split sizes")
