"""The version's ``meta/`` snapshots of the query tables and the counts its dataset card shows."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from formats.dataset import FORMAT_VERSION, SPLITS, sidecar_glob
from formats.files import open_regular_file, sha256_file, write_parquet_atomic
from pipelines.curation.pseudonym import DEFAULT_SECRET, key_check
from pipelines.publish import datacard
from pipelines.publish.plan import WRITERS
from pipelines.publish.reuse import NotReusable, link_or_copy, read_manifest, real_folder
from pipelines.sqlrun import connect, run_sql, sql_text
from schemas import get_schema

META_TABLES = ("shards", "images", "decisions", "quarantine", "splits_summary")
META_SCHEMAS = {"shards": "shards", "images": "image_features", "decisions": "decisions",
                "quarantine": "published_quarantine", "splits_summary": "splits_summary"}


# the columns each snapshot reads of its warehouse table (None: every column): never quarantine's raw_text (each
# quarantined line's text, up to 64 KiB, which no snapshot publishes), only the reason of split_rejects
SOURCE_COLUMNS: dict[str, tuple[str, ...] | None] = {
    "image_features": None,
    "decisions": None,
    "quarantine": tuple(n for n in get_schema("quarantine").names if n != "raw_text"),
    "split_rejects": ("reason",),
}


def write_source_snapshots(staging: Path, meta_sources: dict[str, list[Path]],
                           digests: dict[str, dict[str, str]] | None = None, previous: list[Path] = (),
                           fsync: bool = True) -> dict[str, str]:
    """Write the snapshots built from the warehouse (``meta/images/``, ``meta/decisions.parquet``,
    ``meta/quarantine.parquet``: no raw text, no emails); return the images files' plan digests.

    ``images`` is one file per export day (``meta/images/images-<day>.parquet``, from that day's
    features partition): a day whose partition is unchanged is hard-linked from an older version, so
    the snapshot of a growing history costs a nightly version only its new day.

    Every snapshot is built from exactly the warehouse files ``meta_sources`` lists (never a glob of the
    table, which would also read a partition an ingest lands while the publish runs), each checked against
    the sha256 ``digests`` (:func:`pipelines.publish.samples.source_digests`: what the version id and the
    manifest's ``sources`` record) gives it (review rev24c); one that changed since is :class:`SourceChanged`.
    Without ``digests`` they are computed here. The publish calls it under the home's ingest lock, with the
    listing and the hashing of those files, before the shards are written (review rev24j)."""
    meta = staging / "meta"
    digests = dict(digests or {})
    for name, files in meta_sources.items():
        if name not in digests:
            digests[name] = {_relative(p): sha256_file(p) for p in files}
    plans = _write_image_snapshots(meta / "images", meta_sources["image_features"], digests["image_features"],
                                   list(previous), fsync)
    views: dict[str, str | pa.Table] = {
        name: read_sources(name, files, digests[name]) for name, files in meta_sources.items()
        if name in ("decisions", "quarantine")}
    con = connect(views)
    try:
        for table_name, sql_name in (("decisions", "publish_decisions"), ("quarantine", "publish_quarantine")):
            result = run_sql(con, sql_name)
            write_parquet_atomic(result, meta / f"{table_name}.parquet", get_schema(META_SCHEMAS[table_name]))
    finally:
        con.close()
    return plans


def write_meta(staging: Path, stats: list[dict], meta_sources: dict[str, list[Path]] | None = None,
               digests: dict[str, dict[str, str]] | None = None, previous: list[Path] = (), fsync: bool = True,
               pairs: pa.Table | None = None) -> dict[str, str]:
    """Snapshot the query tables under ``meta/`` built from the version itself (``shards``, ``splits_summary``),
    and with ``meta_sources`` first those built from the warehouse (:func:`write_source_snapshots`, whose
    plan digests it returns; none without).

    ``pairs``: the version's pairs as the publish holds them (its ``split_pairs`` rows, which the
    shards hold one each), for ``splits_summary``; without it the version's sidecars are read, which
    for a year of history is every sidecar twice a night. The gate checks the summary against the
    shards' own counts (``splits_summary.pairs_match_shards``).
    """
    plans = write_source_snapshots(staging, meta_sources, digests, previous, fsync) if meta_sources is not None \
        else {}
    meta = staging / "meta"
    ordered = sorted(stats, key=lambda s: (SPLITS.index(s["split"]), s["shard"]))
    shard_rows = []
    for s in ordered:
        index = sum(1 for r in shard_rows if r["split"] == s["split"])
        shard_rows.append({**{n: s[n] for n in get_schema("shards").names if n != "shard_index"}, "shard_index": index})
    shards_table = pa.Table.from_pylist(shard_rows, schema=get_schema("shards")) if shard_rows else \
        get_schema("shards").empty_table()
    write_parquet_atomic(shards_table, meta / "shards.parquet", get_schema("shards"))
    views = {"pairs": pairs if pairs is not None else sidecar_glob(staging), "shards": shards_table}
    con = connect(views, uniform=("pairs",))      # this version's sidecars: one schema
    try:
        write_parquet_atomic(run_sql(con, "publish_splits_summary"), meta / "splits_summary.parquet",
                             get_schema(META_SCHEMAS["splits_summary"]))
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
        source = digests[_relative(path)] if path is not None else ""
        plans[rel] = hashlib.sha256(f"{FORMAT_VERSION}\0{WRITERS}\0{rel}\0{source}\0{sql}".encode()).hexdigest()
        target = folder / name
        if any(_reuse_snapshot(d / rel, target, entries.get(rel), fsync)
               for d, p, entries in earlier if p.get(rel) == plans[rel] and real_folder(d, "meta/images")):
            continue
        con = connect({"image_features": read_sources("image_features", [path] if path is not None else [], digests)})
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


class SourceChanged(RuntimeError):
    """A warehouse file a snapshot reads whose bytes are no longer those the version id hashed (rewritten while
    the publish ran): nothing is published from it; the next publish sees the new bytes."""


def _relative(path: Path) -> str:
    """A warehouse file's path inside its dataset (``dt=2023-03-01/part-0.parquet``), as ``sources`` names it."""
    dataset_dir = next(p for p in path.parents if p.parent.name == "warehouse")
    return str(path.relative_to(dataset_dir))


def _check_digest(handle, path: Path, digests: dict[str, str] | None) -> None:
    """Hash the open warehouse file ``path`` through ``handle`` and check it against ``digests`` (path in the
    dataset -> sha256, when given), then rewind: :class:`SourceChanged` when it is not the file the version id
    hashed."""
    digest = hashlib.file_digest(handle, "sha256").hexdigest()
    expected = (digests or {}).get(_relative(path), digest)
    if digest != expected:
        raise SourceChanged(f"{path} changed while the publish ran (sha256 {digest}, the version id "
                            f"hashed {expected}): nothing was published from it; publish again")
    handle.seek(0)


def read_sources(name: str, files: list[Path], digests: dict[str, str] | None) -> pa.Table:
    """The rows of exactly ``files`` (warehouse files of dataset ``name``), only the columns its snapshot reads
    (``SOURCE_COLUMNS``), by column name as DuckDB's ``union_by_name`` reads them (a file written before a
    column was added reads as null there); each file's bytes hashed block by block through the descriptor the
    table is then read from, and checked against ``digests`` (path in the dataset -> sha256, when given).
    No file: the dataset's empty schema.

    The tables the snapshots are built from were globs of the whole warehouse table, read after the version
    id was taken (review rev24c: a partition an ingest landed meanwhile went into a version whose id and
    manifest do not name it), and globs of the home's path (a home at ``/data/pickapic[1]`` read none).
    Review rev24j: every column was read, the raw text of every quarantined line of the history with it."""
    wanted = SOURCE_COLUMNS.get(name)
    tables = []
    for path in files:
        with open_regular_file(path) as handle:     # a warehouse file is replaced by a rename, never rewritten
            _check_digest(handle, path, digests)
            parquet = pq.ParquetFile(handle)
            columns = None if wanted is None else [c for c in parquet.schema_arrow.names if c in wanted]
            tables.append(parquet.read(columns=columns))
    if not tables:
        schema = get_schema(name)
        return schema.empty_table() if wanted is None else \
            pa.schema([schema.field(c) for c in wanted]).empty_table()
    return pa.concat_tables(tables, promote_options="permissive") if len(tables) > 1 else tables[0]


def read_policy_of(files: list[Path], digests: dict[str, str] | None) -> dict:
    """The curation policy the listed ``decisions`` file records it was built with
    (:func:`pipelines.curation.decisions.read_policy`; {} when none is listed or recorded), read through the
    descriptor its bytes are checked on (against ``digests``, when given)."""
    from pipelines.curation.decisions import read_policy

    for path in files:
        with open_regular_file(path) as handle:
            _check_digest(handle, path, digests)
            return read_policy(pq.ParquetFile(handle).schema_arrow.metadata)
    return {}


TRAIN_KEY_PATTERN = r"^blobs/train/s([0-9]{1,9})q([0-9]{1,3})/.*$"   # the folder train_jpeg_formats reads


def train_jpeg_formats(table: pa.Table) -> list[tuple[int, int]]:
    """The (size, quality) of the training JPEGs ``table``'s pairs show, as their keys' folder records it
    (``blobs/train/s<features.train_size>q<features.jpeg_quality>/``, ``FeaturesConfig.train_prefix``), sorted;
    a key of another form tells none (review rev30d: the card said 512 px whatever the size)."""
    import pyarrow.compute as pc

    found: set[tuple[int, int]] = set()
    for column in ("jpg_0_key", "jpg_1_key"):
        prefixes = pc.unique(pc.replace_substring_regex(table.column(column), pattern=TRAIN_KEY_PATTERN,
                                                        replacement=r"\1 \2", max_replacements=1))
        for value in prefixes.to_pylist():
            size, _, quality = (value or "").partition(" ")
            if size.isdigit() and quality.isdigit():
                found.add((int(size), int(quality)))
    return sorted(found)



def card_sources(table: pa.Table, meta_sources: dict[str, list[Path]],
                 digests: dict[str, dict[str, str]] | None = None,
                 pseudonym_key: str | None = None, split_settings: dict | None = None) -> datacard.CardSources:
    """What the dataset card counts, beyond the version's own meta tables (the listed ``split_rejects``
    files, checked against their ``digests`` when given: :func:`read_sources`), and how the version was curated:
    the policy the listed ``decisions`` file records (:func:`read_policy_of`) and which secret keyed the
    pseudonyms, from the key check ``split_pairs`` records (``pseudonym_key``, None when it records none):
    the public default one or another (review rev28b); the splits settings ``split_pairs`` records
    (``split_settings``: ``pipelines.splits.assign.read_settings_record``) and the training JPEGs' size and quality
    (:func:`train_jpeg_formats`) (review rev30d)."""
    rejects = meta_sources.get("split_rejects") or []
    reasons: dict[str, int] = {}
    if rejects:
        column = read_sources("split_rejects", rejects, (digests or {}).get("split_rejects")).column("reason")
        reasons = {item["values"]: item["counts"] for item in column.value_counts().to_pylist()}
    days = sorted({d.isoformat() for d in table.column("dt").unique().to_pylist()})
    policy = read_policy_of(meta_sources.get("decisions") or [], (digests or {}).get("decisions"))
    secret = None if pseudonym_key is None else \
        datacard.PUBLIC_DEFAULT if pseudonym_key == key_check(DEFAULT_SECRET) else datacard.PRIVATE
    return datacard.CardSources(days=days, split_rejects=dict(sorted(reasons.items())), policy=policy,
                                pseudonym_secret=secret, split_settings=dict(split_settings or {}),
                                train_jpegs=train_jpeg_formats(table))
