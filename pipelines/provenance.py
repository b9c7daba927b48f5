"""Content digests of what the stages read, from which every asset's data version is derived.

A data version here is a digest of what went into an output: the stage's code version, the settings
that change its output (:func:`formats.settings.config_digest`) and the data versions of its inputs,
the way Dagster derives a default data version from code and input versions, plus the settings. At
the bottom sit the raw inputs, digested by content:

- a raw day: the sha256 of each of its four table files (:func:`raw_day_digest`); a file whose size and
  modification time match the last digest is not read again (the record lives in
  ``cache/raw_day_digests.json``, disposable: deleting it costs one re-read). A re-export with the same
  bytes therefore keeps the day's version, and any changed byte changes it;
- the moderation lists (banned users, NSFW phrases) the decisions read (:func:`files_digest`);
- the image blobs a day's features rejected for a reason a change of the blob can heal (missing, truncated,
  unreadable, ...): which are still missing, the others' size and times (:class:`RejectedBlobs`, named in the
  day's features version).

Equal versions mean equal outputs (every stage is deterministic), so a build can skip any asset whose
recorded version equals the one its inputs give now.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Iterable, Iterator

from formats.files import is_url, read_small_file, sha256_file, write_bytes_atomic
from formats.home import DataHome
from formats.locks import CACHE_WRITERS_LOCK, writing_shared
from pipelines.ingest.lines import LINK_OUT_OF_ZONE

RAW_TABLES = ("users", "images", "rankings", "downloads")
RAW_TABLE_FILES = tuple(f"{table}.jsonl.gz" for table in RAW_TABLES)   # a raw day's files (DataHome.raw_file)
RAW_DIGESTS_CACHE = "raw_day_digests.json"
CACHE_MAX_BYTES = 64 << 20   # a disposable cache of the plan larger than this is not read (counts as absent): a year
                             # of days takes a few MB; a larger file is not ours, and is never read whole


def read_cache(path: Path, max_bytes: int | None = None) -> object | None:
    """The JSON value of a disposable cache file of the plan (``cache/raw_day_digests.json``, ``missing_blobs.json``,
    ``copied_rows.json``, ``build_stamp.json``), None when it cannot be read as the tool writes it: absent, a symbolic
    link (never followed), a FIFO (never waited on), a device or anything else not a regular file, larger than
    ``max_bytes`` (default :data:`CACHE_MAX_BYTES`), unreadable, or not JSON (:func:`formats.files.read_small_file`).
    A cache that cannot be read counts as absent: it only changes how fast a plan is (review rev31b: a FIFO at one
    hung every plan, the build stamp's check and ``pickapic build --dry-run``)."""
    data = read_small_file(path, CACHE_MAX_BYTES if max_bytes is None else max_bytes)
    if data is None:
        return None
    try:
        return json.loads(data)
    except (ValueError, RecursionError):   # not UTF-8 or not JSON; nested beyond Python's recursion limit
        return None


def combine(*parts: object) -> str:
    """A 16-hex-digit digest of ``parts`` (strings, numbers, lists), order-sensitive."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def stat_key(path: Path) -> list | None:
    """[size, mtime_ns, inode, ctime_ns] of a file (None when missing, a file at a folder of its path included: a
    file named ``dt=DAY`` where a partition's folder belongs, review rev31b; a marker when not a regular file).

    The ctime is what ``utime`` cannot set: a file rewritten in place with the same size and its mtime put
    back (``cp -p``, ``rsync -t --inplace``, ``touch -r``) was trusted as unchanged (review rev21b). Anything
    else that moves a ctime (a chmod, a new link) only costs one more read of the file."""
    try:
        info = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return None
    if not path.is_file():
        return ["not-a-file", info.st_mode]
    return [info.st_size, info.st_mtime_ns, info.st_ino, info.st_ctime_ns]


class RawDigests:
    """sha256 of raw files, re-read only when a file's size, mtime, inode or ctime changed (cache in ``cache/``)."""

    def __init__(self, home: DataHome) -> None:
        self.home = home
        self.path = home.cache / RAW_DIGESTS_CACHE
        known = read_cache(self.path)
        self.known: dict[str, dict] = known if isinstance(known, dict) else {}
        self.changed = False
        self.read: dict[str, dict[str, str]] = {}   # day -> table -> digest of the file as a stage read it

    def pin(self, day: str, digests: dict[str, str | None]) -> None:
        """Use ``digests`` (table -> the sha256 of the file a stage read, "missing"; None: not read) for ``day``'s
        files instead of the files as they are now, so a stage's version names the bytes it read (review rev27b:
        a raw file delivered again after the ingest read it was named in the ingest's version, and the day looked
        fresh with the old rows)."""
        self.read[day] = {table: digest for table, digest in digests.items() if digest is not None}

    def file(self, path: Path) -> str:
        """Content digest of one file ("missing" / "not-a-file" for those, ``LINK_OUT_OF_ZONE`` for a file reached
        through a link out of the raw zone: the ingest refuses it unread, so its target's bytes are not what it
        read, review rev27f)."""
        rel = str(path.relative_to(self.home.root))
        stat = stat_key(path)
        if stat is None:
            return "missing"
        if stat[0] == "not-a-file":
            return "not-a-file"
        try:
            self.home.resolve_inside(path.relative_to(self.home.root).as_posix(), zone="raw")
        except ValueError:
            return LINK_OUT_OF_ZONE
        entry = self.known.get(rel)
        if isinstance(entry, dict) and entry.get("stat") == stat and isinstance(entry.get("sha256"), str):
            return entry["sha256"]
        digest = sha256_file(path)
        self.known[rel] = {"stat": stat, "sha256": digest}
        self.changed = True
        return digest

    def day(self, day: str) -> str:
        """Digest of one raw day's four table files."""
        read = self.read.get(day, {})
        return combine("raw-day", day, [(t, read.get(t) or self.file(self.home.raw_file(day, t))) for t in RAW_TABLES])

    def save(self) -> None:
        """Write the cache back when it learnt something (never required for correctness)."""
        if self.changed:
            # its temporary file exists only while the shared cache-writers lock is held: the ingest sweeps the
            # ones killed writers left under it exclusively (review rev29b); no lock, no cache written this time
            with writing_cache(self.home) as held:
                if held:
                    write_bytes_atomic(self.path, (json.dumps(self.known, sort_keys=True) + "\n").encode())
            self.changed = False


@contextlib.contextmanager
def writing_cache(home: DataHome) -> Iterator[bool]:
    """Hold the home's cache-writers lock shared (:func:`formats.locks.writing_shared`) for a block that writes one
    of the disposable caches :func:`sweep_cache_temps` sweeps; yields whether it is held (not held: write nothing,
    a cache is written another time)."""
    with writing_shared(home.locks / CACHE_WRITERS_LOCK, "the cache writers of the data home") as held:
        yield held


DAY_RECORD = r"dt=[0-9]{4}-[0-9]{2}-[0-9]{2}\.parquet"


def raw_day_digest(home: DataHome, day: str) -> str:
    """Content digest of one raw day (see :class:`RawDigests`)."""
    digests = RawDigests(home)
    value = digests.day(day)
    digests.save()
    return value


def files_digest(paths: Iterable[Path]) -> str:
    """Content digest of a few small files (missing ones count as missing)."""
    return combine([(str(p.name), sha256_file(p) if p.is_file() else "missing") for p in paths])


def raw_stats(home: DataHome) -> list:
    """Cheap fingerprint of the raw zone: every day folder's table files by size, mtime, inode and ctime."""
    out = []
    if home.raw_logs.is_dir():
        for folder in sorted(os.scandir(home.raw_logs), key=lambda e: e.name):
            if folder.is_dir():
                out.append([folder.name, [stat_key(Path(folder.path) / f"{t}.jsonl.gz") for t in RAW_TABLES]])
    out.append(["moderation", [stat_key(p) for p in (home.banned_users_file, home.nsfw_phrases_file)]])
    return out


# --------------------------------------------------------------------------- rejected blobs that can heal
MISSING_BLOB = "missing_blob"   # the feature stage's reasons (pipelines.features.decode: not imported, it loads Pillow)
EMPTY_FILE = "empty_file"
UNREADABLE_BLOB = "unreadable_blob"
UNWATCHED_REASONS = ("unsafe_path",)   # the stage refused the path itself (it may lie outside the blob zone): never looked at
MISSING_MARK = "+missing-blobs:"   # appended to a features version: the digest of the rejected blobs as its output saw them
CHANGED = "changed-while-fingerprinted"   # a rejected blob's identity when it changed during (or just before) the run
_MISSING_CACHE = "missing_blobs.json"
_MISSING_CACHE_VERSION = 2     # 2: counts, at most CACHED_BLOBS paths a day and kind, the folders past that (review rev23g)
CACHED_BLOBS = 64              # per day, missing and present rejected blobs: at most this many paths kept in the cache
CACHED_FOLDERS = 256           # past that, the folders that hold the day's rejected blobs (at most this many) are kept
SETTLE_NS = 100_000_000        # a blob whose ctime is this close before a run's start, or later, changed during it
COARSE_SETTLE_NS = 2_000_000_000   # the same on a file system that keeps whole seconds (ext3, HFS+, FAT, some NFS)
_BATCH_ROWS = 65_536           # image_rejects rows read at a time (memory stays bounded whatever a day rejects)


def blob_identity(path: str) -> list | None:
    """What is at a blob path (followed, as the stage reads it): [size, mtime_ns, inode, ctime_ns] of a regular file,
    ["not-a-file", type, mtime_ns, inode, ctime_ns] of anything else, None when nothing is there (a dangling link
    too). The last item is always the ctime, which ``utime`` cannot set back."""
    try:
        info = os.stat(path)
    except (OSError, ValueError):
        return None
    if not stat.S_ISREG(info.st_mode):
        return ["not-a-file", stat.S_IFMT(info.st_mode), info.st_mtime_ns, info.st_ino, info.st_ctime_ns]
    return [info.st_size, info.st_mtime_ns, info.st_ino, info.st_ctime_ns]


def changed_since(ctime_ns: int, since_ns: int) -> bool:
    """Whether a file whose ctime is ``ctime_ns`` may have changed at or after ``since_ns`` (``time.time_ns()``): the
    kernel stamps times from a clock that lags by up to a tick, and a file system that keeps whole seconds (its
    ctimes have no fraction) rounds them down, so a ctime a little before ``since_ns`` counts too."""
    settle = COARSE_SETTLE_NS if ctime_ns % 1_000_000_000 == 0 else SETTLE_NS
    return ctime_ns >= since_ns - settle


def _version_identity(identity: list | None) -> list | None:
    """The part of a blob's identity a features version names: its size and mtime (not its inode and ctime, so a
    home copied or moved with its times kept, ``cp -a`` / ``rsync -a``, keeps its versions; the ctime only
    says whether it changed during the run)."""
    return None if identity is None else identity[:2]


class _Multiset:
    """An order-free digest of a multiset of JSON-able items (a sum of 128-bit hashes): the rejects are streamed in
    file order, and the digest must not depend on it."""

    def __init__(self) -> None:
        self.count = 0
        self.total = 0

    def add(self, kind: str, path: str, *identity: object) -> None:
        # a watched blob path holds no NUL (unsafe_path rejects one); blake2b: a million rows in a fraction of a second
        text = f"{kind}\x00{path}\x00{json.dumps(identity) if identity else ''}"
        digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()
        self.total = (self.total + int.from_bytes(digest, "big")) % (1 << 128)
        self.count += 1

    def value(self) -> list:
        return [self.count, f"{self.total:032x}"]


def _mark(missing: _Multiset, present: _Multiset) -> str:
    if not missing.count and not present.count:
        return ""
    return MISSING_MARK + combine("rejected-blobs", missing.value(), present.value())


def missing_mark(paths: Iterable[str], present: Iterable[tuple[str, object]] = ()) -> str:
    """The suffix of a features version whose output rejects ``paths`` as missing and the blobs of ``present``
    ((path, identity) pairs, :func:`blob_identity`) for another reason that can heal ('' for none)."""
    missing_set, present_set = _Multiset(), _Multiset()
    for path in paths:
        missing_set.add("missing", path)
    for path, identity in present:
        present_set.add("present", path, identity)
    return _mark(missing_set, present_set)


def _looked_at(base: str | None) -> bool:
    """Whether the blobs under ``base`` are looked at: a local folder (a bucket's URL is not: no network here)."""
    return bool(base) and not is_url(base)


def _join(base: str, relpath: str) -> str:
    return os.path.join(base, relpath)


class RejectedBlobs:
    """Per day, the blobs its ``image_rejects`` partition rejects for a reason a change of the blob can heal: every
    reason but ``unsafe_path`` (the path itself was refused), ``missing_blob`` and the others (``truncated_image``,
    ``empty_file``, ``not_an_image``, ``unreadable_blob``, ...).

    A blob that lands, or is completed, after its day was fingerprinted (a raw zone fed by files: the blob sync
    lagging the log export, or a blob copied in place, as ``cp``/``scp`` write, seen half copied) changes what the
    feature stage would write, yet no raw day file changes (reviews rev23a, rev23g). The features version of a day
    with such rejects therefore names them (:data:`MISSING_MARK`, :meth:`recorded_mark` / :meth:`expected_mark`):

    - a ``missing_blob`` reject is recorded as missing and expected as missing while nothing is at its path: one
      that lands drops out of the expected mark;
    - any other watched reject is recorded by its blob's size and mtime as the run left it (not its inode and
      ctime: :func:`_version_identity`), and expected by them now: a blob that changes makes the day stale. A blob
      that changed during the run (its ctime says so: :func:`changed_since`), or whose size is not the one the
      reject row read, is recorded as :data:`CHANGED`, so the next plan runs the day again.

    Only rejected blobs are looked at, one ``stat`` each. The cache ``cache/missing_blobs.json`` keeps per day, by
    the partition's stat, the counts and at most ``CACHED_BLOBS`` paths of each kind (missing, present); a day
    with more keeps only the folders that hold them (at most ``CACHED_FOLDERS``), for the build stamp
    (:meth:`stamp_watch`). So the cache stays a few KB a day whatever a day rejects (review rev23g: one day of
    1,000,000 missing blobs made it 79 MB, read whole by every check), and the partition is streamed in batches.
    Disposable: deleting it costs one read of each ``image_rejects`` partition. Blob bases that are URLs (a
    bucket) are not looked at: no network here (``pickapic build --force --from D --to D`` fingerprints such a
    day again)."""

    def __init__(self, home: DataHome, planned: Iterable[str] | None = None) -> None:
        """``planned``: the raw days the plan runs (:func:`days_not_run`; default :func:`planned_days`, the
        nightly's), for :class:`CopiedRows`."""
        self.home = home
        self.path = home.cache / _MISSING_CACHE
        known = read_cache(self.path)
        try:
            self.known: dict[str, dict] = known["days"] if known.get("version") == _MISSING_CACHE_VERSION else {}
            if not isinstance(self.known, dict):
                self.known = {}
        except (KeyError, TypeError, AttributeError):
            self.known = {}
        self.changed = False
        # each day's rows against the earlier days' (reviews rev29e, rev30a), the days the plan runs as ``planned``
        self.copies = CopiedRows(home, planned)

    # --- reading the partition, streamed
    def _partition(self, day: str) -> tuple[Path, list] | None:
        path = self.home.partition_file("image_rejects", day)
        info = stat_key(path)
        return None if info is None or info[0] == "not-a-file" else (path, info)

    @staticmethod
    def _rows(path: Path) -> Iterator[tuple[str, str, int | None]]:
        """(blob_path, reason, num_bytes) of the watched rejects of an ``image_rejects`` file, a batch at a time.
        Raises OSError / ArrowException / KeyError for an unreadable file."""
        # imported here, not at the top: the build stamp's fast path reads the cache only
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        unwatched = pa.array(UNWATCHED_REASONS, pa.string())
        with pq.ParquetFile(path) as file:
            for batch in file.iter_batches(batch_size=_BATCH_ROWS, columns=["blob_path", "reason", "num_bytes"]):
                batch = batch.filter(pc.invert(pc.is_in(batch.column(1), value_set=unwatched)))
                yield from zip(batch.column(0).to_pylist(), batch.column(1).to_pylist(), batch.column(2).to_pylist())

    def summary(self, day: str) -> dict | None:
        """The cache entry of ``day`` (read from its partition when that changed): ``missing`` / ``present``
        counts, ``missing_paths`` / ``present_paths`` (sorted) when at most ``CACHED_BLOBS``, and ``folders`` when
        either count is larger and the folders are at most ``CACHED_FOLDERS``. None when the partition is missing
        or unreadable (the stage then runs for other reasons) or rejects nothing watched."""
        found = self._partition(day)
        if found is None:
            return None
        path, info = found
        entry = self.known.get(day)
        if not (_valid_entry(entry) and entry["stat"] == info):
            counts = {"missing": 0, "present": 0}
            kept: dict[str, list[str]] = {"missing": [], "present": []}
            folders: set[str] | None = set()
            try:
                for blob, reason, _ in self._rows(path):
                    kind = "missing" if reason == MISSING_BLOB else "present"
                    counts[kind] += 1
                    if counts[kind] <= CACHED_BLOBS:
                        kept[kind].append(blob)
                    if folders is not None:
                        folders.add(os.path.dirname(blob))
                        if len(folders) > CACHED_FOLDERS:
                            folders = None
            except (OSError, ValueError, KeyError, _arrow_error()):
                return None
            entry = {"stat": info, **counts}
            for kind in counts:
                if counts[kind] <= CACHED_BLOBS:
                    entry[f"{kind}_paths"] = sorted(kept[kind])
            if max(counts.values()) > CACHED_BLOBS and folders is not None:
                entry["folders"] = sorted(folders)
            self.known[day] = entry
            self.changed = True
        return entry if entry["missing"] or entry["present"] else None

    def _kinds(self, day: str, entry: dict) -> Iterator[tuple[str, str]]:
        """(kind, path) of every watched reject of ``day``: from the cache when it lists them, else streamed."""
        if "missing_paths" in entry and "present_paths" in entry:
            for kind in ("missing", "present"):
                for blob in entry[f"{kind}_paths"]:
                    yield kind, blob
            return
        found = self._partition(day)
        if found is None:
            return
        try:
            for blob, reason, _ in self._rows(found[0]):
                yield ("missing" if reason == MISSING_BLOB else "present"), blob
        except (OSError, ValueError, KeyError, _arrow_error()):
            return

    # --- the features version's mark
    def recorded_mark(self, day: str, base: str | None, since_ns: int) -> str:
        """The mark the features asset records with the version of the output it just wrote (its run began at
        ``since_ns``, ``time.time_ns()``): missing blobs as missing, the others by their size and mtime now, or
        :data:`CHANGED` when they changed since the run began (:func:`changed_since`) or do not have the size the
        reject row read."""
        found = self._partition(day)
        missing, present = _Multiset(), _Multiset()
        if found is not None:
            look = _looked_at(base)
            try:
                for blob, reason, num_bytes in self._rows(found[0]):
                    if reason == MISSING_BLOB:
                        missing.add("missing", blob)
                        continue
                    identity: object = "not-looked-at"
                    if look:
                        identity = blob_identity(_join(base, blob))
                        if identity is None:
                            # nothing to stat: as the stage found it only when it could not read it either
                            identity = None if reason == UNREADABLE_BLOB else CHANGED
                        elif identity[0] == "not-a-file" or changed_since(identity[-1], since_ns) \
                                or (num_bytes is not None and identity[0] != num_bytes) \
                                or (reason == EMPTY_FILE and identity[0] != 0):
                            identity = CHANGED
                        else:
                            identity = _version_identity(identity)
                    present.add("present", blob, identity)
            except (OSError, ValueError, KeyError, _arrow_error()):
                return ""
        return _mark(missing, present)

    def expected_mark(self, day: str, base: str | None) -> tuple[str, bool]:
        """(the mark of ``day``'s features version now, whether a blob it rejects as missing has landed since):
        the missing blobs still missing, the other watched blobs by their identity now. One ``stat`` per
        rejected blob, streamed from the partition when the cache does not list them. :data:`COPIES_MARK` follows
        while a row of the day is not what a run of it would copy or compute now from the earlier days' rows
        (:class:`CopiedRows`)."""
        mark, landed = self._rejects_mark(day, base)
        return mark + self.copies.mark(day), landed

    def _rejects_mark(self, day: str, base: str | None) -> tuple[str, bool]:
        entry = self.summary(day)
        if entry is None:
            return "", False
        look = _looked_at(base)
        missing, present = _Multiset(), _Multiset()
        landed = False
        for kind, blob in self._kinds(day, entry):
            if kind == "missing":
                if look and blob_identity(_join(base, blob)) is not None:
                    landed = True
                else:
                    missing.add("missing", blob)
            else:
                present.add("present", blob, _version_identity(blob_identity(_join(base, blob))) if look
                            else "not-looked-at")
        return _mark(missing, present), landed

    # --- the build stamp's cheap look
    def stamp_watch(self, day: str, base: str | None) -> list | None:
        """What the build stamp records of ``day``'s rejected blobs now: [partition stat, the identities of its
        missing blobs, of its other watched blobs, of the folders that hold them]. A kind with more than
        ``CACHED_BLOBS`` blobs is watched through the folders only (a blob landing in a folder changes the
        folder's mtime and ctime; a blob rewritten in place does not, so on such a day that is seen by the next
        full plan: the nightly, the sensor, or any build something else makes plan). ``[..., "unwatched"]`` when
        the folders are too many to keep: the stamp is then not trusted. None: nothing watched. A day that copied
        rows from earlier days, or holds a stale row, has ``{"copied_rows": "same" | "changed"}`` second
        (:meth:`CopiedRows.watch`): an earlier day run again that changed such a row (the copying day not run in
        that build) makes the next build plan in full (reviews rev29e, rev30a)."""
        copies = self.copies.watch(day)
        copied = [{"copied_rows": copies}] if copies is not None else []
        entry = self.summary(day)
        if entry is None:
            if not copied:
                return None
            found = self._partition(day)
            return [found[1] if found is not None else None, *copied]
        if not _looked_at(base):
            return [entry["stat"], *copied]
        parts: list = [entry["stat"], *copied]
        for kind in ("missing", "present"):
            listed = entry.get(f"{kind}_paths")
            parts.append(None if listed is None else [[p, blob_identity(_join(base, p))] for p in listed])
        if "missing_paths" not in entry or "present_paths" not in entry:
            folders = entry.get("folders")
            parts.append("unwatched" if folders is None else [[f, blob_identity(_join(base, f))] for f in folders])
        return parts

    # --- kept for callers of the earlier class
    def paths(self, day: str) -> list[str]:
        """The blob paths ``day``'s ``image_rejects`` partition rejects as missing, sorted (streamed when the cache
        does not list them: the caller holds the list)."""
        entry = self.summary(day)
        if entry is None:
            return []
        return sorted({blob for kind, blob in self._kinds(day, entry) if kind == "missing"})

    def still_missing(self, day: str, base: str | None) -> list[str]:
        """The paths of :meth:`paths` with nothing at them now under the local blob base ``base`` (all of
        them when the base is a URL: not looked at)."""
        paths = self.paths(day)
        if not paths or not _looked_at(base):
            return paths
        return [p for p in paths if blob_identity(_join(base, p)) is None]

    def save(self) -> None:
        """Write the caches back when they learnt something (never required for correctness)."""
        self.copies.save()
        if self.changed:
            with writing_cache(self.home) as held:   # swept under it exclusively (review rev30c)
                if held:
                    try:
                        write_bytes_atomic(self.path, (json.dumps({"version": _MISSING_CACHE_VERSION,
                                                                   "days": self.known}, sort_keys=True) + "\n").encode())
                    except OSError:
                        pass
            self.changed = False


def _arrow_error() -> type[Exception]:
    import pyarrow as pa

    return pa.ArrowException


def _valid_entry(entry: object) -> bool:
    """Whether a cache entry has the shape :meth:`RejectedBlobs.summary` writes."""
    if not isinstance(entry, dict) or not isinstance(entry.get("stat"), list):
        return False
    for kind in ("missing", "present"):
        count = entry.get(kind)
        if not isinstance(count, int) or count < 0:
            return False
        listed = entry.get(f"{kind}_paths")
        if count <= CACHED_BLOBS:
            if not isinstance(listed, list) or len(listed) != count or not all(isinstance(p, str) for p in listed):
                return False
        elif listed is not None:
            return False
    folders = entry.get("folders")
    return folders is None or (isinstance(folders, list) and len(folders) <= CACHED_FOLDERS
                               and all(isinstance(f, str) for f in folders))


# ----------------------------------------------------------------- rows copied from earlier days (or to be copied)
def raw_gone_days(home: DataHome, days: Iterable[str]) -> set[str]:
    """The days of ``days`` that are not days of the raw zone (``DataHome.raw_days``, the listing the build's plan
    runs days from): their raw folder was pruned by retention (README section 2, *A pruned raw day*), so no build
    runs them again and what was built from them is kept as it is. None in a home with no raw zone folder
    (``raw/app_logs``): nothing was pruned from it (its partitions were written by the stages called directly)."""
    if not home.raw_logs.is_dir():
        return set()
    return set(days) - set(home.raw_days())


def begun_days(days: Iterable[str], today: str | None = None) -> list[str]:
    """The days that have begun (UTC): a folder named after a later day is an export error, never ingested."""
    today = today or dt.datetime.now(dt.timezone.utc).date().isoformat()
    return [d for d in days if d <= today]


def raw_day_complete(home: DataHome, day: str) -> bool:
    """All four table files of a raw day are there (an export still landing is left alone)."""
    return all(home.raw_file(day, table).is_file() for table in RAW_TABLES)


def planned_days(home: DataHome, *, incomplete: bool = False, today: str | None = None) -> list[str]:
    """The raw days a plan runs (README section 3, copied rows): the days of the raw zone
    (``DataHome.raw_days``) that have begun (:func:`begun_days`), less, unless ``incomplete``, those lacking one of
    their four table files (:func:`raw_day_complete`): the nightly schedule and the sensors plan those as if their
    folder were gone (``automation.plan_complete_days``), while ``pickapic build`` ingests a day as it is
    (``incomplete=True``). ``today``: the caller's clock (default: now, UTC)."""
    days = begun_days(home.raw_days(), today)
    return days if incomplete else [day for day in days if raw_day_complete(home, day)]


def days_not_run(home: DataHome, days: Iterable[str], planned: Iterable[str] | None = None) -> set[str]:
    """The days of ``days`` a plan does not run: not among ``planned``, the raw days it runs (default
    :func:`planned_days`, the nightly's and the sensors': complete and begun). Their raw folder is gone (pruned by
    retention: :func:`raw_gone_days`), not begun, or, for the nightly, incomplete: what was built from them is kept
    as it is, so their rows are settled as they are (:class:`CopiedRows`) and their rejected blobs are not watched
    (``buildstamp``). The plan (``staleness.plan_build``) passes the days it runs, so what it runs and what it
    settles are one notion (review rev31b: an incomplete day the nightly plans as gone was judged as one it runs,
    and a later day copying a risky row of it was stale at every plan). None in a home with no raw zone folder
    (``raw/app_logs``): its partitions were written by the stages called directly."""
    if not home.raw_logs.is_dir():
        return set()
    return set(days) - set(planned_days(home) if planned is None else planned)


COPIES_MARK = "+copied-rows-changed"   # appended to a features version now when a row it copied changed at its source
_COPIES_CACHE = "copied_rows.json"
_COPIES_VERSION = 5   # 2: verdicts of every row against the earlier days (review rev30a); 3: rule of rev30h;
                      # 4: pruned days settled, a source's staleness followed only when its run may change its bytes;
                      # 5: the days the plan does not run settled (pruned, not begun, incomplete), flag "settled"
CACHED_COPIES = 1024   # per day, stale uids the cache keeps; a day with more is judged again at each look
_OUTPUT_KEY_FIELD = b"pickapic.features_output_key"   # pipelines.features.reuse.OUTPUT_KEY_FIELD (it imports Beam)


class CopiedRows:
    """Per day, whether each ``image_features`` row it holds is the row a run of the day would write now, as far as
    the other days' rows tell: a row copied by uid (``reused_from = image_uid``), by sha256 (``reused_from`` another
    uid) or computed afresh (``reused_from`` null) against the earlier days written under the same output settings.

    The feature stage copies a row by uid from the earliest earlier partition written under the same output settings
    that holds the uid (:func:`pipelines.features.reuse.rows_reused_by_uid`), and a new uid's row by sha256 from the
    earliest (day, uid) of those partitions holding its bytes, else computes it. So a row of a day ``D`` (uid ``u``,
    sha256 ``s``) is stale when, with ``E`` the earliest earlier day holding ``u`` and ``X`` the earliest earlier
    (day, uid) holding ``s``:

    - ``E`` holds ``u`` with ``s``, and the row is not a copy by uid (the day ran before ``E`` was fingerprinted
      again after a blob replacement: review rev30a);
    - otherwise (no ``E``, or ``E`` holds other bytes: ``E`` is the one out of date, a run of ``D`` reads the blob
      again and keeps the bytes it reads), its ``reused_from`` is not ``X``'s uid (null without ``X``): a copy by
      uid whose source was fingerprinted again (review rev29e) or that no earlier day holds, a copy by sha256 whose
      source no longer holds those bytes (review rev30a), or a fresh row an earlier day's bytes now match. ``X``
      may hold ``u`` itself (a later day than ``E``, run after the blob was replaced): the stage then writes
      ``reused_from = u`` for a copy by sha256, which is the row a run writes (review rev30h: it was read as a copy
      by uid against ``E`` and the day was planned at every build);
    - or the row ``E`` (``X``) holds is stale itself: its run may change what ``D`` copies (review rev30a: a chain
      A, B, C copying by uid, A fingerprinted again, C was fresh while B, its source now, was stale).

    These are what a run of each stale day in day order writes, so a build reaches a state with nothing stale, the
    state a build from scratch writes, whatever order the days ran in, and the answer is a function of the
    partitions alone: the cache ``cache/copied_rows.json`` (disposable) only saves work. The features version a plan
    expects of a stale day carries :data:`COPIES_MARK` (the version a run records never does); the build stamp
    watches the same (:meth:`watch`).

    Cost: two passes over every partition's three columns (``image_uid``, ``sha256``, ``reused_from``) in day
    order, linear in the history, done once per instance (a plan, a stamp): the first keeps 16 bytes a row
    (fingerprints), the second only the rows another row shares a uid or sha256 with, or that copied one, and
    those are judged with integer arrays (review rev30h: a Python tuple per row took about 1 KB a row). The cache
    keeps per day, by its partition's stat, its output key, its verdict and its stale uids (at most
    ``CACHED_COPIES``); a look stats every partition and trusts the verdicts of the days before the first one that
    changed (a day's rows depend on earlier days only); the days from there are read whole and the earlier ones only
    for the uids and sha256 those hold."""

    def __init__(self, home: DataHome, planned: Iterable[str] | None = None) -> None:
        """``planned``: the raw days the plan runs (:func:`days_not_run`); default :func:`planned_days`, the
        nightly's and the sensors' (``pickapic build`` passes its own, incomplete days included)."""
        self.home = home
        self.path = home.cache / _COPIES_CACHE
        known = read_cache(self.path)
        try:
            days = known["days"] if known.get("version") == _COPIES_VERSION else {}
            self.known: dict[str, dict] = days if isinstance(days, dict) else {}
        except (KeyError, TypeError, AttributeError):
            self.known = {}
        self.changed = False
        self._verdicts: dict[str, str | None] | None = None
        self._planned = None if planned is None else set(planned)
        self._settled: set[str] = set()   # the days the plan does not run (days_not_run), as the look found them

    def _file(self, day: str) -> Path:
        return self.home.partition_file("image_features", day)

    def _look(self) -> dict[str, str | None]:
        """day -> ``"same"`` / ``"changed"`` / None (copied nothing, nothing stale, or unreadable), for every day
        with an ``image_features`` partition; taken once per instance."""
        if self._verdicts is not None:
            return self._verdicts
        days = self.home.partition_days("image_features")   # the folders the stage reads (review rev31b)
        stats = {day: stat_key(self._file(day)) for day in days}
        stats = {day: info for day, info in stats.items() if info is not None and info[0] != "not-a-file"}
        days = [day for day in days if day in stats]
        self._settled = settled = days_not_run(self.home, days, self._planned)
        first = next((day for day in days
                      if not _valid_copies_entry(self.known.get(day), stats[day], day in settled)), None)
        gone = [day for day in sorted(self.known) if day not in stats]
        if gone and (first is None or gone[0] < first):   # a partition removed: the days after it are judged again
            first = next((day for day in days if day > gone[0]), None)
        if first is None and not gone:
            self._verdicts = {day: self.known[day]["verdict"] for day in days}
            return self._verdicts
        kept = [day for day in days if first is None or day < first]
        redo = [day for day in days if first is not None and day >= first]
        entries = {day: self.known[day] for day in kept}
        entries.update(self._judge(kept, redo, stats, entries))
        self.known = entries
        self.changed = True
        self._verdicts = {day: entries[day]["verdict"] for day in days}
        return self._verdicts

    def _read(self, day: str):
        """(the ``image_uid``, ``sha256``, ``reused_from`` columns of ``day``'s partition as strings, its output key).
        Raises OSError / ValueError / KeyError / ArrowException for an unreadable file."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pq.read_table(self._file(day), columns=list(_COPIES_COLUMNS))
        key = (table.schema.metadata or {}).get(_OUTPUT_KEY_FIELD)
        table = table.select(list(_COPIES_COLUMNS)).cast(pa.schema([(name, pa.string()) for name in _COPIES_COLUMNS]))
        return table, (key.decode("ascii", "replace") if key is not None else None)

    def _judge(self, kept: list[str], redo: list[str], stats: dict[str, list], entries: dict[str, dict]
               ) -> dict[str, dict]:
        """The cache entries of the ``redo`` days (sorted, each after every ``kept`` day), from their partitions
        and the rows of the ``kept`` days holding their uids or sha256 (those days' stale and risky uids from
        ``entries``); the rows of the days the plan does not run are settled as they are (:func:`days_not_run`).

        Only the rows that can matter are held as strings (review rev30h: the whole history's three columns and a
        Python tuple per row, about 1 KB a row): a first pass keeps a 64-bit fingerprint of each ``redo`` row's uid
        and sha256; a row whose uid and sha256 no other row shares (fingerprints equal are only candidates: the
        rows are compared by their strings) and that copied nothing is fresh and no source, and is not kept."""
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc

        errors = (OSError, ValueError, KeyError, pa.ArrowException)
        settled = self._settled
        out: dict[str, dict] = {}
        prints: dict[str | None, list] = {}   # output key -> [(day, uid prints, sha256 prints)] in day order
        for day in redo:
            try:
                table, key = self._read(day)
            except errors:
                out[day] = {"stat": stats[day], "key": None, "verdict": None, "stale": [], "risky": [],
                            "settled": day in settled, "unreadable": True}
                continue
            out[day] = {"stat": stats[day], "key": key, "settled": day in settled}
            prints.setdefault(key, []).append((day, *_fingerprints(table)))
            del table
        for key, recent in prints.items():
            seen_uids, seen_shas = [u for _, u, _ in recent], [s for _, _, s in recent]
            uids, shas = np.unique(np.concatenate(seen_uids)), np.unique(np.concatenate(seen_shas))
            tables = []
            for day in kept:
                if entries[day].get("key") != key or entries[day].get("unreadable"):
                    continue
                try:
                    table = self._read(day)[0]
                except errors:
                    continue   # read at the last look, unreadable now: a later look reads it again
                u, s = _fingerprints(table)
                wanted = _among(u, uids) | _among(s, shas)
                tables.append((day, table.filter(pa.array(wanted))))
                seen_uids.append(u[wanted])
                seen_shas.append(s[wanted])
            repeated_uids, repeated_shas = _repeated(np.concatenate(seen_uids)), _repeated(np.concatenate(seen_shas))
            del uids, shas, seen_uids, seen_shas
            for day, _, _ in recent:   # read again: only the rows that can matter are kept
                try:
                    table = self._read(day)[0]
                except errors:   # gone since the first read: judged again at the next look (its stat changed)
                    out[day].update(verdict=None, stale=[], risky=[], unreadable=True)
                    continue
                u, s = _fingerprints(table)
                wanted = _among(u, repeated_uids) | _among(s, repeated_shas) \
                    | pc.is_valid(table.column("reused_from")).to_numpy(zero_copy_only=False)
                tables.append((day, table.filter(pa.array(wanted))))
            verdicts = self._verdicts_of(tables, set(kept), entries)
            for day, _, _ in recent:
                out[day].update(verdicts.get(day, {}))
        return out

    def _verdicts_of(self, tables: list, kept: set[str], entries: dict[str, dict]) -> dict[str, dict]:
        """Per day of ``tables`` (day order, one output key) not in ``kept``: its verdict, stale and risky uids. Each
        row is judged (the rules of :class:`CopiedRows`) against the earliest earlier row of its uid and of its
        sha256, whose own verdicts are known first (day order), with integer arrays: no Python object per row. A
        row is risky when a run of its day may give it other bytes (a stale row with no earlier row holding its
        bytes, or one following a risky row): only those make the rows that follow them stale. The rows of a day
        the plan does not run (:func:`days_not_run`: its raw folder gone, not begun, or incomplete for the nightly)
        are neither: it is not run, its rows are sources as they are."""
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc

        settled = self._settled
        verdicts = {day: {"verdict": None, "stale": [], "risky": []} for day, _ in tables if day not in kept}
        # each partition sorted by uid (the stage's order): a day's earliest row of a sha256 is its least uid
        tables = [(day, _by_uid(table)) for day, table in tables if table.num_rows]
        if not tables:
            return verdicts
        bounds = np.cumsum([0] + [table.num_rows for _, table in tables])
        day_of = np.repeat(np.arange(len(tables), dtype=np.int32), np.diff(bounds))
        uid, sha, source = (pa.chunked_array([chunk for _, table in tables for chunk in table.column(name).chunks],
                                             pa.string()) for name in _COPIES_COLUMNS)
        prints = [_fingerprints(table) for _, table in tables]   # a table at a time: its strings as Python objects
        days = [day for day, _ in tables]
        del tables
        # each row's earliest row of its uid / of its sha256
        first_uid = _first_rows(uid, np.concatenate([u for u, _ in prints]))
        first_sha = _first_rows(sha, np.concatenate([s for _, s in prints]))
        del prints
        holder = day_of[first_uid] < day_of            # an earlier day holds the uid
        same_bytes = day_of[first_sha] < day_of        # an earlier (day, uid) holds the sha256
        holder_same = holder & (first_sha[first_uid] == first_sha)   # ... and the earliest holder has these bytes
        stale = np.zeros(len(day_of), dtype=bool)
        risky = np.zeros(len(day_of), dtype=bool)    # stale, and a run of its day may give the row other bytes
        for index, day in enumerate(days):
            rows = slice(int(bounds[index]), int(bounds[index + 1]))
            uids = uid[rows.start:rows.stop]
            if day in kept:
                for flags, name in ((stale, "stale"), (risky, "risky")):
                    known = pa.array(sorted(entries[day].get(name) or []), pa.string())
                    flags[rows] = _flags(pc.is_in(uids, value_set=known))
                continue
            sources = source[rows.start:rows.stop]
            copied = _flags(pc.is_valid(sources))
            verdict = verdicts[day]
            if copied.any():
                verdict["verdict"] = "same"
            if day in settled:
                continue   # settled as built: the plan does not run it (days_not_run)
            expected = np.where(holder_same[rows], _flags(pc.equal(sources, uids)),           # a copy by uid
                                np.where(same_bytes[rows],                                    # a copy by sha256
                                         _flags(pc.equal(sources, uid.take(pa.array(first_sha[rows])))),
                                         ~copied))                                            # computed afresh
            # a row following a risky one may get other bytes from it; a source stale in its reused_from alone
            # (its run copies the same bytes from elsewhere) gives the same row again (review rev30j)
            follows = (holder[rows] & risky[first_uid[rows]]) \
                | (~holder_same[rows] & same_bytes[rows] & risky[first_sha[rows]])
            stale[rows] = ~expected | follows
            risky[rows] = (~expected & ~holder_same[rows] & ~same_bytes[rows]) | follows
            if stale[rows].any():
                verdict["verdict"] = "changed"
                count = int(stale[rows].sum())
                verdict["stale"] = None if count > CACHED_COPIES else uids.filter(pa.array(stale[rows])).to_pylist()
                verdict["risky"] = None if count > CACHED_COPIES else uids.filter(pa.array(risky[rows])).to_pylist()
        return verdicts

    def same(self, day: str) -> bool | None:
        """Whether every row of ``day`` is what a run of it would write now (:class:`CopiedRows`); None when it
        copied no row and none is stale (or its partition is missing or unreadable: the stage runs for that)."""
        verdict = self._look().get(day)
        return None if verdict is None else verdict == "same"

    def mark(self, day: str) -> str:
        """:data:`COPIES_MARK` while a row of ``day`` differs from what a run of it would write now, else ''."""
        return COPIES_MARK if self.same(day) is False else ""

    def watch(self, day: str) -> str | None:
        """What the build stamp records of ``day``'s rows: ``same`` / ``changed``, None when it copied none and
        none is stale."""
        return self._look().get(day)

    def save(self) -> None:
        """Write the cache back when it learnt something (never required for correctness)."""
        if self.changed:
            with writing_cache(self.home) as held:
                if held:
                    try:
                        write_bytes_atomic(self.path, (json.dumps({"version": _COPIES_VERSION, "days": self.known},
                                                                  sort_keys=True) + "\n").encode())
                    except OSError:
                        pass
            self.changed = False


_COPIES_COLUMNS = ("image_uid", "sha256", "reused_from")


def _fingerprint(values):
    """64-bit fingerprints (numpy ``uint64``) of the strings of an arrow array: equal strings have equal ones, and
    rows with equal ones are compared by their strings (a fingerprint only says which rows to look at).

    Python's own string hash, one partition's strings at a time (they exist as Python objects for that partition
    only): equal within this process, which is all a look needs. Not polars' ``Series.hash``: that started polars'
    thread pool in the build process, which then forks its ingest and publish workers (polars is not fork-safe),
    and a CI run of the suite ended in a segmentation fault of a test worker on a native thread while polars' pool
    was alive there."""
    import numpy as np

    return np.fromiter((hash(value) for value in values.to_pylist()), dtype=np.int64,
                       count=len(values)).view(np.uint64)


def _fingerprints(table) -> tuple:
    """The fingerprints of the ``image_uid`` and of the ``sha256`` of each row of ``table``."""
    return _fingerprint(table.column("image_uid")), _fingerprint(table.column("sha256"))


def _by_uid(table):
    """``table`` sorted by ``image_uid`` (nulls first), itself when it is (as the stage writes a partition)."""
    import pyarrow.compute as pc

    uid = table.column("image_uid")
    if uid.null_count == 0 and not pc.any(pc.less(uid[1:], uid[:-1])).as_py():
        return table
    return table.sort_by([("image_uid", "ascending", "at_start")])


def _repeated(prints):
    """The fingerprints that occur more than once in ``prints``."""
    import numpy as np

    values, counts = np.unique(prints, return_counts=True)
    return values[counts > 1]


def _among(values, known):
    """Whether each item of ``values`` is in ``known`` (sorted, unique): numpy arrays."""
    import numpy as np

    if not len(known):
        return np.zeros(len(values), dtype=bool)
    at = np.minimum(np.searchsorted(known, values), len(known) - 1)
    return known[at] == values


def _flags(values):
    """A numpy bool array of an arrow boolean array (null: False)."""
    import numpy as np
    import pyarrow.compute as pc

    return np.asarray(pc.fill_null(values, False).to_numpy(zero_copy_only=False), dtype=bool)


_CHECKED_ROWS = 65_536   # rows whose strings are compared at a time


def _first_rows(values, prints):
    """For each item of ``values`` (an arrow string array, chunked), the index of the first item equal to it. Found
    by their 64-bit fingerprints ``prints`` (:func:`_fingerprint`), then each row's string compared with its first
    row's a block at a time; where two strings share a fingerprint, by the strings themselves (arrow's hash table:
    more memory)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    _, first, inverse = np.unique(prints, return_index=True, return_inverse=True)
    first = first[inverse.ravel()]
    if not values.null_count:
        later = np.flatnonzero(first != np.arange(len(first)))
        for start in range(0, len(later), _CHECKED_ROWS):
            rows = later[start:start + _CHECKED_ROWS]
            if not pc.all(pc.equal(values.take(pa.array(rows)), values.take(pa.array(first[rows])))).as_py():
                break
        else:
            return first
    codes = pc.index_in(values, value_set=pc.unique(values))   # nulls equal: null's own index
    _, first, inverse = np.unique(np.asarray(codes.to_numpy(zero_copy_only=False)), return_index=True,
                                  return_inverse=True)
    return first[inverse.ravel()]


def _valid_copies_entry(entry: object, info: list, settled: bool) -> bool:
    """Whether a cache entry has the shape :class:`CopiedRows` writes, the partition's stat ``info`` and was judged
    with the day settled (``settled``: one the plan does not run, :func:`days_not_run`) or not, as it is now."""
    if not isinstance(entry, dict) or entry.get("stat") != info or entry.get("settled") is not settled:
        return False
    if entry.get("verdict") not in (None, "same", "changed") or not isinstance(entry.get("key"), (str, type(None))):
        return False
    stale = entry.get("stale")
    if stale is None:   # too many stale uids to keep: judged again from the partitions
        return False
    risky = entry.get("risky")
    return isinstance(stale, list) and all(isinstance(uid, str) for uid in stale) \
        and (entry["verdict"] == "changed") == bool(stale) \
        and isinstance(risky, list) and all(isinstance(uid, str) for uid in risky) and set(risky) <= set(stale)
