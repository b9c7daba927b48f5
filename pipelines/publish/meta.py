"""The version's ``meta/`` snapshots of the query tables and the counts its dataset card shows."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from formats.dataset import FORMAT_VERSION, SPLITS, sidecar_glob
from formats.files import sha256_file, write_parquet_atomic
from pipelines.publish import datacard
from pipelines.publish.plan import WRITERS
from pipelines.publish.reuse import NotReusable, link_or_copy, read_manifest, real_folder
from pipelines.sqlrun import connect, run_sql, sql_text
from schemas import get_schema

META_TABLES = ("shards", "images", "decisions", "quarantine", "splits_summary")
META_SCHEMAS = {"shards": "shards", "images": "image_features", "decisions": "decisions",
                "quarantine": "published_quarantine", "splits_summary": "splits_summary"}


def write_meta(staging: Path, stats: list[dict], meta_sources: dict[str, list[Path]],
               image_sources: dict[str, str] | None = None, previous: list[Path] = (), fsync: bool = True,
               pairs: pa.Table | None = None) -> dict[str, str]:
    """Snapshot the query tables under ``meta/`` (no raw text, no emails); return the images files' plan digests.

    ``pairs``: the version's pairs as the publish holds them (its ``split_pairs`` rows, which the
    shards hold one each), for ``splits_summary``; without it the version's sidecars are read, which
    for a year of history is every sidecar twice a night. The gate checks the summary against the
    shards' own counts (``splits_summary.pairs_match_shards``).

    ``images`` is one file per export day (``meta/images/images-<day>.parquet``, from that day's
    features partition): a day whose partition is unchanged is hard-linked from an older version, so
    the snapshot of a growing history costs a nightly version only its new day.
    """
    meta = staging / "meta"
    ordered = sorted(stats, key=lambda s: (SPLITS.index(s["split"]), s["shard"]))
    shard_rows = []
    for s in ordered:
        index = sum(1 for r in shard_rows if r["split"] == s["split"])
        shard_rows.append({**{n: s[n] for n in get_schema("shards").names if n != "shard_index"}, "shard_index": index})
    shards_table = pa.Table.from_pylist(shard_rows, schema=get_schema("shards")) if shard_rows else \
        get_schema("shards").empty_table()
    write_parquet_atomic(shards_table, meta / "shards.parquet", get_schema("shards"))
    if image_sources is None:
        image_sources = {str(p.relative_to(p.parent.parent)): sha256_file(p) for p in meta_sources["image_features"]}
    plans = _write_image_snapshots(meta / "images", meta_sources["image_features"], image_sources, list(previous), fsync)
    views = {name: _glob_of(files) for name, files in meta_sources.items() if name not in ("split_rejects", "image_features")}
    views["pairs"] = pairs if pairs is not None else sidecar_glob(staging)
    views["shards"] = shards_table
    con = connect(views, uniform=("pairs",))      # this version's sidecars: one schema
    try:
        for table_name, sql_name in (("decisions", "publish_decisions"), ("quarantine", "publish_quarantine"),
                                     ("splits_summary", "publish_splits_summary")):
            result = run_sql(con, sql_name)
            write_parquet_atomic(result, meta / f"{table_name}.parquet", get_schema(META_SCHEMAS[table_name]))
    finally:
        con.close()
    return plans


def _write_image_snapshots(folder: Path, files: list[Path], digests: dict[str, str], previous: list[Path],
                           fsync: bool) -> dict[str, str]:
    """``images-<day>.parquet`` per features partition, linked from an older version when its plan is equal."""
    sql = sql_text("publish_images")
    earlier = []
    for version_dir in previous:
        recorded = read_manifest(version_dir)
        plans_of, files_of = recorded.get("plans"), recorded.get("files")
        if isinstance(plans_of, dict) and isinstance(files_of, dict):
            earlier.append((version_dir, plans_of, files_of))
    plans = {}
    for path in files or [None]:
        day = path.parent.name.removeprefix("dt=") if path is not None else "none"
        name = f"images-{day}.parquet"
        rel = f"meta/images/{name}"
        source = digests[str(path.relative_to(path.parent.parent))] if path is not None else ""
        plans[rel] = hashlib.sha256(f"{FORMAT_VERSION}\0{WRITERS}\0{rel}\0{source}\0{sql}".encode()).hexdigest()
        target = folder / name
        if any(_reuse_snapshot(d / rel, target, entries.get(rel), fsync)
               for d, p, entries in earlier if p.get(rel) == plans[rel] and real_folder(d, "meta/images")):
            continue
        con = connect({"image_features": str(path) if path is not None else "/nonexistent-pickapic-empty/*.parquet"})
        try:
            write_parquet_atomic(run_sql(con, "publish_images"), target, get_schema("image_features"))
        finally:
            con.close()
    return plans



def _reuse_snapshot(source: Path, target: Path, entry: dict | None, fsync: bool) -> bool:
    """Link (or copy) an older version's snapshot to ``target`` if it still has the size and sha256
    its manifest recorded (a snapshot is small: checked every time); False, and nothing at
    ``target``, if it does not."""
    if not isinstance(entry, dict) or not isinstance(entry.get("bytes"), int):
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        link_or_copy(source, target, fsync, size=entry["bytes"])
    except NotReusable:
        return False
    if sha256_file(target) == entry.get("sha256"):
        return True
    target.unlink()
    return False


def _glob_of(files: list[Path]) -> str | pa.Table:
    """A view source for a list of warehouse files (their dataset's glob), or an empty marker."""
    if not files:
        return "/nonexistent-pickapic-empty/*.parquet"  # sqlrun registers the dataset's empty schema
    dataset_dir = next(p for p in files[0].parents if p.parent.name == "warehouse")
    return str(dataset_dir / "**" / "*.parquet")


def card_sources(table: pa.Table, meta_sources: dict[str, list[Path]]) -> datacard.CardSources:
    """What the dataset card counts, beyond the version's own meta tables."""
    rejects = meta_sources.get("split_rejects") or []
    reasons: dict[str, int] = {}
    if rejects:
        column = pq.read_table(rejects, columns=["reason"], partitioning=None).column("reason")
        reasons = {item["values"]: item["counts"] for item in column.value_counts().to_pylist()}
    days = sorted({d.isoformat() for d in table.column("dt").unique().to_pylist()})
    return datacard.CardSources(days=days, split_rejects=dict(sorted(reasons.items())))
