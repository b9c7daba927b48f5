"""The per-day index of a raw images file's uids (``cache/raw_image_uids/dt=DAY.parquet``): a cache of the
byte search, trusted while the raw file keeps its recorded size and times (else its recorded sha256),
so a day's reference check does not decompress the whole history.

A pruned day (its raw folder gone from the raw zone, its warehouse partitions kept: README, "raw folder gone")
still holds the images its ingest found: :func:`raw_image_uids` answers for it from what its ingest recorded
(:func:`kept_image_uids`), and :func:`reference_days` adds such days to the raw days a reference is looked up in
(review rev29a: a re-ingest of a later day quarantined its rows that named a pruned day's images as
``unknown_image_reference``).

What a day's ingest found is recorded with its six files (:func:`exports_record_path`,
``warehouse/.image_exports/dt=DAY.parquet``, renamed with them): the uids the byte search of its images file found
that its ``images`` partition does not hold (the uids of quarantined lines, nested members, ...), and any the
partition holds that the search did not find; with the partition it gives exactly what the search gave (review
rev29e: the rev29a look-up searched the quarantine's stored text, masked and lossy-decoded, so a nested uid was
lost after the prune and a line with an invalid UTF-8 byte resolved a uid the raw file never exported). It lives
in the warehouse, not in the disposable cache: once the raw folder is gone it cannot be worked out again.
"""
from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Collection, Iterable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from formats.files import PARQUET_OPTIONS, atomic_path, make_real_folder, open_regular_in_real_folder, sha256_file
from formats.home import DataHome
from formats.locks import CACHE_WRITERS_LOCK, held_scratch_folder, writing_shared
from formats.rawzone import day_of_folder
from pipelines.ingest import lines
from pipelines.ingest.config import IngestConfig
from pipelines.ingest.reader import open_raw
from pipelines.ingest.uidset import UidSet, in_memory, sorted_uids

_UID_INDEX_VERSION = "2"   # 2: uids only a JSON decode finds (lines.spelled_image_uid) included


def stat_key(path: Path) -> str | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return f"{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"


def raw_image_uids(home: DataHome, day: str, wanted: set[str], config: IngestConfig | None = None) -> set[str]:
    """The uids of ``wanted`` that appear as an ``"image_uid"`` member in ``day``'s raw images file.

    Answered from the day's uid index when it describes the file as it is now (same size and
    times, else the same sha256); otherwise the file is searched and the index (re)written. The
    answer depends only on the raw bytes: the index is a cache of the byte search, nothing more.
    A day that is not a day of the raw zone any more (pruned) is answered from what the warehouse keeps of it
    (:func:`kept_image_uids`).
    """
    return _image_uids(home, day, wanted, config, whole=False) or set()


def named_image_uids(home: DataHome, day: str, wanted: set[str], config: IngestConfig | None = None) -> set[str] | None:
    """:func:`raw_image_uids`, or None where ``day``'s raw images file is there but cannot be read whole (not a
    regular file inside the raw zone, damaged, truncated, or cut by ``ingest.max_file_bytes``/``max_file_lines``):
    it may name any uid. No file names none (an empty set). Review rev33d: what decides whether a blob an export
    wrote is named by any day (:func:`pipelines.appdb.blobs.withdraw_blobs`), so "cannot be read" never passes
    for "names nothing". A uid index is trusted here only when it records a whole read (``whole``)."""
    return _image_uids(home, day, wanted, config, whole=True)


def _image_uids(home: DataHome, day: str, wanted: set[str], config: IngestConfig | None,
                whole: bool) -> set[str] | None:
    if not raw_day_present(home, day):
        return kept_image_uids(home, day, wanted)   # a pruned day: what its ingest found, as the warehouse keeps it
    path = home.raw_file(day, "images")
    config = config or IngestConfig()
    raw = open_raw(home, path, config=config)   # a file that is not a regular one inside the raw zone: never read or hashed
    if raw.status != "ok":
        return None if whole and raw.status != "missing" else set()
    index = home.raw_image_uid_index(day)
    if index.is_file():
        try:
            meta = pq.read_schema(index).metadata or {}
            if meta.get(b"version") == _UID_INDEX_VERSION.encode() and (not whole or meta.get(b"whole") == b"1"):
                fresh = meta.get(b"stat") == (stat_key(path) or "").encode()
                if not fresh and path.is_file():
                    fresh = meta.get(b"raw_sha256") == sha256_file(path).encode()
                if fresh:
                    uids = pq.read_table(index).column("image_uid")
                    hits = uids.filter(pc.is_in(uids, value_set=pa.array(sorted(wanted), pa.string())))
                    return set(hits.to_pylist())
        except (OSError, pa.ArrowException):
            pass  # an unreadable cache is searched around and rewritten
    stat = stat_key(path)
    with contextlib.ExitStack() as scratch:
        # what the search finds, in bounded memory (review rev33i): runs past MAX_MEMORY_UIDS go to a scratch folder
        # of the ingest's kind (swept when a crash leaves it), made only when needed
        found = UidSet(lambda: scratch.enter_context(held_scratch_folder(home.cache / "tmp", f"ingest-{day}-")))
        lines.scan_image_uids(raw.chunks(), found, config.max_line_bytes)
        read_whole = raw.status in ("ok", "empty") and not raw.limited
        if not raw.limited:   # a read that depends on the limits (cut, or stopped unchecked): never kept for another run's
            write_uid_index(home, day, found, raw.file_sha256, stat, read_whole)
        return found.intersection(wanted) if read_whole or not whole else None


def search_image_uids(home: DataHome, path: Path, wanted: set[str],
                      config: IngestConfig | None = None) -> tuple[set[str] | None, str]:
    """The uids of ``wanted`` that the raw images file ``path`` (inside the raw zone: an app export's staged one)
    names as the byte search finds them, keeping only those (memory: ``wanted``), and how it was read: ``"whole"``,
    ``"missing"`` (no file: an empty set), ``"writing"`` (a gzip stream that ends early, no member failing its check:
    the bytes a file being written holds so far; the uids found so far), or why it cannot be read whole (None: it
    may name any). No index is read or written. Read whole whatever ``ingest.max_file_bytes``/``max_file_lines``
    say (review rev33l: a staged file past them named none of the uids after the cut, and the blob its export was
    about to publish a row for was withdrawn): only ``config.max_line_bytes`` applies, to what a line holds."""
    config = config or IngestConfig()
    try:
        raw = open_raw(home, path, config=config)
    except OSError as exc:      # a folder this account may not search (another account's 0700 staging)
        return None, f"{path.name} cannot be read ({exc.strerror or exc})"
    raw.max_bytes = raw.max_lines = None
    if raw.status != "ok":
        return (set(), "missing") if raw.status == "missing" else (None, raw.error or "unreadable")
    found: set[str] = set()
    for _, data in lines.iter_lines(lines.tap_image_uids(raw.chunks(), found, wanted), config.max_line_bytes):
        if type(data) is bytes:
            uid = lines.spelled_image_uid(data)
            if uid is not None and uid in wanted:
                found.add(uid)
    if raw.status in ("ok", "empty"):
        return found, "whole"
    return (found, "writing") if raw.ended_early else (None, raw.error or "unreadable")


def write_uid_index(home: DataHome, day: str, uids: set[str] | UidSet, raw_sha256: str | None, stat: str | None,
                    whole: bool = False) -> None:
    """Record the uids found in ``day``'s raw images file, keyed by the file's sha256 and stat; ``whole``: the
    file was read whole (no damaged or truncated member), recorded as ``whole`` = 1 in the footer. Written a batch
    of ``WRITE_BATCH`` uids at a time (a :class:`~pipelines.ingest.uidset.UidSet` is never held whole)."""
    path = home.raw_file(day, "images")
    if raw_sha256 is None or stat is None or stat_key(path) != stat:
        return  # not read, or changed while it was read: leave no index
    schema = pa.schema([pa.field("image_uid", pa.string())]).with_metadata(
        {"version": _UID_INDEX_VERSION, "raw_sha256": raw_sha256, "stat": stat, "whole": "1" if whole else "0"})
    # review rev33l: the index is a disposable cache: one that cannot be written (its folder a file, not writable,
    # the disk full) leaves the day searched again next time, never the caller's read failed (the ingest's reference
    # check, a superseded export's withdrawal of its blobs)
    with contextlib.suppress(OSError), \
            writing_shared(home.locks / CACHE_WRITERS_LOCK, "the cache writers of the data home") as held:
        if held:   # the ingest sweeps killed writers' temporary files under this lock, exclusively (review rev29b)
            with atomic_path(home.raw_image_uid_index(day)) as tmp:
                _write_batches(tmp, schema, ({"image_uid": batch} for batch in _batched(sorted_uids(uids))))


WRITE_BATCH = 16_384   # rows of a streamed record or index written at a time (one row group each)


def _batched(items: Iterable) -> Iterator[list]:
    iterator, size = iter(items), WRITE_BATCH
    while batch := list(itertools.islice(iterator, size)):
        yield batch


def _write_batches(tmp: Path, schema: pa.Schema, batches: Iterator[dict]) -> None:
    """A Parquet file of ``schema`` from column batches, one row group each; an empty one as ``pq.write_table`` writes
    an empty table (the same bytes as that for a single batch)."""
    # a str path, as pq.write_table gives it (a pathlib.Path here was followed by a crash of a later tracemalloc
    # run in the same process, tests/unit/test_hostile_rev29e.py's last test)
    with pq.ParquetWriter(str(tmp), schema, **PARQUET_OPTIONS) as writer:
        wrote = False
        for columns in batches:
            writer.write_table(pa.table(columns, schema=schema))
            wrote = True
        if not wrote:
            writer.write_table(schema.empty_table())


def raw_day_present(home: DataHome, day: str) -> bool:
    """Whether ``day`` is a day of the raw zone (as ``formats.rawzone.scan_raw_zone`` lists it): its ``dt=`` folder
    is a folder inside the raw zone (a link to one inside it counts, one leading out or dangling does not)."""
    folder = home.raw_day(day)
    try:
        zone = (home.root / "raw").resolve()
        target = folder.resolve(strict=True)
        return folder.is_dir() and (target == zone or zone in target.parents)
    except (OSError, RuntimeError):
        return False


def pruned_days(home: DataHome, raw_days: Collection[str]) -> list[str]:
    """The days not among ``raw_days`` (the raw zone's) whose ``images`` partition the warehouse holds: days whose
    raw folder was pruned (or moved out of the raw zone) after their ingest, kept as they were built. One listing
    of ``warehouse/images``; sorted."""
    found: list[str] = []
    present = set(raw_days)
    try:
        entries = list(os.scandir(home.table_dir("images")))
    except OSError:
        return []
    for entry in entries:
        day, _ = day_of_folder(entry.name)
        if day is not None and day not in present and home.partition_file("images", day).is_file() \
                and not raw_day_present(home, day):
            found.append(day)
    return sorted(found)


def reference_days(home: DataHome, raw_days: Collection[str]) -> list[str]:
    """The days whose images exports a reference may resolve against: the raw zone's days and the pruned days the
    warehouse keeps (:func:`pruned_days`), sorted. :func:`raw_image_uids` answers for both."""
    return sorted(set(raw_days) | set(pruned_days(home, raw_days)))


EXPORTS_FOLDER = ".image_exports"   # in the warehouse, beside the tables: one record per ingested day
_EXPORTS_VERSION = "1"
_EXPORTS_SCHEMA = pa.schema([pa.field("image_uid", pa.string(), nullable=False),
                             pa.field("exported", pa.bool_(), nullable=False)])


def exports_record_path(home: DataHome, day: str) -> Path:
    """The record of what ``day``'s ingest found in its raw images file: ``warehouse/.image_exports/dt=DAY.parquet``."""
    return home.warehouse / EXPORTS_FOLDER / f"dt={day}.parquet"


def exports_rows(found: set[str] | UidSet, accepted: list[str]) -> Iterator[tuple[str, bool]]:
    """The rows of the record of a day's images export as its ingest's byte search ``found`` it, against the
    ``accepted`` uids of its ``images`` partition: (uid, True) per uid found and not accepted, (uid, False) per uid
    accepted and not found (none where the search reads every accepted line, as it does), in uid order; both
    streamed in order and merged, so memory holds ``accepted`` only (review rev33i)."""
    whole = in_memory(found)
    if whole is not None:   # never spilled: the set's own operations, as fast as before
        accepted_set = set(accepted)
        yield from sorted([(uid, True) for uid in whole - accepted_set] +
                          [(uid, False) for uid in accepted_set - whole])
        return
    held = iter(sorted(set(accepted)))
    mine = next(held, None)
    for uid in sorted_uids(found):
        while mine is not None and mine < uid:
            yield mine, False
            mine = next(held, None)
        if mine == uid:
            mine = next(held, None)
        else:
            yield uid, True
    while mine is not None:
        yield mine, False
        mine = next(held, None)


def exports_record(found: set[str] | UidSet, accepted: list[str], raw_sha256: str | None) -> pa.Table:
    """:func:`exports_rows` as one table (for a small record; the ingest writes it streamed:
    :func:`write_exports_record`), the images file's sha256 (``ingest_files``' own, '' for none) in the footer
    binding it to the partition it was written with."""
    rows = list(exports_rows(found, accepted))
    table = pa.table({"image_uid": pa.array([r[0] for r in rows], pa.string()),
                      "exported": pa.array([r[1] for r in rows], pa.bool_())}, schema=_EXPORTS_SCHEMA)
    return table.replace_schema_metadata(_exports_meta(raw_sha256))


def _exports_meta(raw_sha256: str | None) -> dict[str, str]:
    return {"version": _EXPORTS_VERSION, "raw_sha256": raw_sha256 or ""}


def prepare_exports_folder(home: DataHome) -> None:
    """Make ``warehouse/.image_exports`` (a real folder); raise NotADirectoryError when a symbolic link or a file is
    there: nothing is written through it."""
    home.warehouse.mkdir(parents=True, exist_ok=True)
    make_real_folder(home.warehouse / EXPORTS_FOLDER, "the record of a day's images export")


def write_exports_record(found: set[str] | UidSet, accepted: list[str], raw_sha256: str | None, tmp: Path) -> None:
    """Write the record (:func:`exports_rows`) to ``tmp`` a batch at a time: the bytes of ``exports_record``'s table
    written whole when it has at most ``WRITE_BATCH`` rows."""
    schema = _EXPORTS_SCHEMA.with_metadata(_exports_meta(raw_sha256))
    batches = ({"image_uid": [uid for uid, _ in batch], "exported": [flag for _, flag in batch]}
               for batch in _batched(exports_rows(found, accepted)))
    _write_batches(tmp, schema, batches)


def _ingested_images_sha256(home: DataHome, day: str) -> str | None:
    """The images file's sha256 as ``day``'s ``ingest_files`` partition records it ('' for a file that was not
    there), or None when the partition cannot be read."""
    handle = open_regular_in_real_folder(home.partition_file("ingest_files", day))
    if handle is None:
        return None
    try:
        with handle:
            rows = pq.read_table(handle, columns=["table", "file_sha256"]).to_pylist()
    except (OSError, ValueError, pa.ArrowException):
        return None
    shas = [row["file_sha256"] or "" for row in rows if row["table"] == "images"]
    return shas[0] if len(shas) == 1 else None


def _recorded_uids(path: Path, wanted: pa.Array, raw_sha256: str, version: bytes,
                   schema: pa.Schema) -> pa.Table | None:
    """The rows of a record (the exports record or the uid index) for the ``wanted`` uids, when it is a regular file
    of ``version`` and ``schema`` taken of the images file ``raw_sha256``; else None."""
    handle = open_regular_in_real_folder(path)
    if handle is None:
        return None
    try:
        with handle:
            meta = pq.read_schema(handle).metadata or {}
            if meta.get(b"version") != version or meta.get(b"raw_sha256") != raw_sha256.encode():
                return None
            table = pq.read_table(handle, filters=pc.field("image_uid").isin(wanted))
            return table if table.schema.equals(schema, check_metadata=False) else None
    except (OSError, ValueError, pa.ArrowException):
        return None


def kept_image_uids(home: DataHome, day: str, wanted: set[str]) -> set[str]:
    """The uids of ``wanted`` that a pruned ``day``'s ingest found in its raw images file: exactly what the byte
    search gave, from the day's ``images`` partition and the record its ingest wrote with it
    (:func:`exports_record_path`, review rev29e). Empty when the day has no readable ``images`` partition (never
    ingested: nothing was built from it).

    Without a record of the images file its partitions were built from (a day ingested before the record existed,
    or the record deleted): its uid index (``cache/raw_image_uids``) when it was taken of that file (the same
    search), else the accepted ``images`` rows and the ``image_uid`` members in the stored text of its quarantined
    images lines (review rev29a's look-up: the text is masked and lossy-decoded, its first 64 KiB, so a nested
    member is missed there and a line with an invalid UTF-8 byte may give a uid the search did not)."""
    value_set = pa.array(sorted(wanted), pa.string())
    try:
        uids = pq.read_table(home.partition_file("images", day), columns=["image_uid"]).column("image_uid")
    except (OSError, pa.ArrowException):
        return set()
    accepted = set(uids.filter(pc.is_in(uids, value_set=value_set)).to_pylist())
    raw_sha256 = _ingested_images_sha256(home, day)
    if raw_sha256 is not None:
        record = _recorded_uids(exports_record_path(home, day), value_set, raw_sha256, _EXPORTS_VERSION.encode(),
                                _EXPORTS_SCHEMA)
        if record is not None:
            marked = dict(zip(record.column("image_uid").to_pylist(), record.column("exported").to_pylist()))
            return {uid for uid in accepted if marked.get(uid, True)} | {u for u, e in marked.items() if e}
        if raw_sha256:
            index = _recorded_uids(home.raw_image_uid_index(day), value_set, raw_sha256,
                                   _UID_INDEX_VERSION.encode(), pa.schema([pa.field("image_uid", pa.string())]))
            if index is not None:
                return set(index.column("image_uid").to_pylist())
    found = accepted
    if found == wanted:
        return found
    try:
        texts = pq.read_table(home.partition_file("quarantine", day), columns=["raw_text"],
                              filters=[("table", "=", "images")]).column("raw_text")
    except (OSError, pa.ArrowException):
        return found
    seen: set[str] = set()
    for text in texts.to_pylist():
        if text:
            data = text.encode("utf-8")
            for _ in lines.tap_image_uids([data], seen):
                pass
            uid = lines.spelled_image_uid(data)
            if uid is not None:
                seen.add(uid)
    return found | (seen & wanted)
