"""The size and sha256 of every training JPEG a version publishes, remembered between publishes.

Each published sample carries the sha256 of its two JPEGs exactly as they sit in the tar (so a
reader can verify the tar bytes from the sidecar), and the shard plan compares those digests to
decide whether a shard changed. Hashing every JPEG on every publish would read the whole store each
night (~100 GB at Pick-a-Pic size); a file whose identity (size, mtime, ctime and inode:
:func:`pipelines.publish.shards.file_identity`) is the one recorded when it was hashed takes its
digest from ``HOME/cache/train_jpg_sha256/`` instead, so a nightly publish hashes only the new day's
JPEGs. The ctime is what catches a file rewritten in place with its size kept and its mtime put
back (``cp -p``, ``rsync -t --inplace``, ``touch -r``): ``utime`` cannot set it.

The same identities go with the shard tasks, and the shard writer refuses a JPEG that is no longer
that file when it copies it (``JpgChangedError``: a JPEG replaced or rewritten during the publish
fails it, naming the key; a rerun hashes it again). A JPEG changing while it is hashed here fails
the same way.

The cache is disposable: without it every JPEG is hashed again, with the same result. It is Parquet
parts written with page checksums. They are merged into one part holding only the entries of the
keys this publish references (the index it builds) when there would be more than ``MAX_PARTS``, or
when more than ``MAX_UNUSED`` of the rows read served this publish nothing (keys it no longer
references, a deleted user's images, entries superseded by a newer part): so the cache, read whole
every night, stays about the size of what is published instead of growing with every key ever
recorded. An entry dropped only costs a re-hash if its key is published again (a publish with an
earlier ``last_day`` may drop the later days' entries: the next publish hashes them again). A cache
that cannot be read or trusted (a part failing its checksums or not parsing, another layout, a
null, a negative size, a digest that is not 64 hex digits, a key twice in one part, one identity
recorded with two digests) counts as empty: every JPEG is hashed and the cache replaced. Only parts
owned by this process's effective uid are believed (as for reused shards and lock files): another
account's part is not read, never removed, and noted each run (the rest of the cache is used). The
folder must be a real folder, opened once without following a link: a symbolic link or a file there
means no cache for the run (everything hashed, nothing written, read or deleted through it), said in
:attr:`JpgIndex.note` and the publish report's ``notes``.

Trust: what neither the cache nor the writer can see is a file's bytes changing with its size,
mtime, ctime and inode all kept (bit rot, a write within the same clock tick as the file's last
change); ``publish.verify_checksums`` re-reads the published files, not the JPEGs.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import re
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from formats.files import PARQUET_OPTIONS, create_temp, naming_full_disk, naming_the_file, open_regular_file
from formats.home import DataHome
from pipelines.publish.shards import JPG_IDENTITY_FIELDS, JpgChangedError, file_identity, jpg_key_is_safe

CACHE_SCHEMA = pa.schema([
    pa.field("key", pa.string(), nullable=False),         # training JPEG key, relative to the data home
    *[pa.field(name, pa.int64(), nullable=False) for name in JPG_IDENTITY_FIELDS],   # bytes, mtime, ctime, inode
    pa.field("sha256", pa.string(), nullable=False),
])
MAX_PARTS = 16     # more cache files than this are merged into one
MAX_UNUSED = 0.25  # more of the rows read than this serving the publish nothing, and the cache is merged
PART_NAME = r"part-([0-9]{6,})-[0-9a-f]{16}\.parquet"
_PART = re.compile(PART_NAME)    # the only names the cache reads or removes
_READ_CHUNK = 1 << 20


@dataclass
class JpgIndex:
    """Every JPEG key referenced (sorted, unique) with its size and sha256; ``hashed`` were read this time."""

    keys: pa.Array
    sizes: np.ndarray
    sha256: pa.Array
    hashed: int
    hashed_bytes: int
    # per key its identity (``JPG_IDENTITY_FIELDS``) when its sha256 was taken; the shard writer checks it
    identities: np.ndarray | None = None
    note: str = ""      # why the digest cache was not used, trusted or written, if it was not

    def positions(self, column: pa.ChunkedArray | pa.Array) -> np.ndarray:
        """Index into ``keys`` of every value of ``column`` (all must be known)."""
        found = pc.index_in(column, value_set=self.keys)
        if found.null_count:
            raise KeyError(pc.filter(column, pc.is_null(found))[0].as_py())
        return np.asarray(found.to_numpy(zero_copy_only=False), dtype=np.int64)

    def digest_update(self, digest: "hashlib._Hash") -> None:
        """Feed every (key, size, sha256) to ``digest``, in key order."""
        for key, size, sha in zip(self.keys.to_pylist(), self.sizes.tolist(), self.sha256.to_pylist()):
            digest.update(f"{key}\0{size}\0{sha}\0".encode())


def cache_dir(home: DataHome) -> Path:
    """Folder of the digest cache (Parquet parts)."""
    return home.cache / "train_jpg_sha256"


def index_jpgs(home: DataHome, columns: dict[str, pa.ChunkedArray], workers: int = 1) -> JpgIndex:
    """Size, sha256 and identity of every JPEG named in ``columns`` (column name -> keys), cached by identity.

    Unsafe keys, then missing files and what is not a regular file (a FIFO, a device, a folder; a
    symlink counts as what it points to), are errors naming the key and its column.
    """
    unique = {name: pc.unique(column) for name, column in columns.items()}
    for name, values in unique.items():
        if not pc.all(keys_look_safe(values), min_count=0).as_py():    # then find the first, as it is written
            for rel in values.to_pylist():
                if not jpg_key_is_safe(rel):
                    raise ValueError(f"split_pairs.{name} value {rel!r} is not a safe path inside the data home")
    keys = pc.unique(pa.chunked_array([v for v in unique.values()], pa.string()))
    keys = keys.take(pc.sort_indices(keys))
    key_list = keys.to_pylist()

    def column_of(rel: str) -> str:
        return first_columns(pa.array([rel], pa.string()), unique)[0]

    # every key is stat-ed each night (a changed file must be hashed again): kept to the syscall and
    # a few list operations a key, no Path objects (~15 -> ~5 us a key; 2M keys at Pick-a-Pic size)
    root = os.path.join(os.fspath(home.root), "")
    flat: list[int] = []
    for rel in key_list:
        try:
            st = os.stat(root + rel)
        except OSError as exc:
            raise FileNotFoundError(f"training JPEG {rel!r} (split_pairs.{column_of(rel)}) is missing: {exc}") from exc
        if not stat.S_ISREG(st.st_mode):    # a FIFO would block the reader forever, a device never end
            raise FileNotFoundError(f"training JPEG {rel!r} (split_pairs.{column_of(rel)}) is not a regular file")
        flat += file_identity(st)
    stats = np.array(flat, dtype=np.int64).reshape(len(key_list), len(JPG_IDENTITY_FIELDS))

    with _Cache(home) as cache:
        cached = cache.read()
        hit = np.zeros(len(keys), dtype=bool)
        known = pa.nulls(len(keys), pa.string())
        if cached.num_rows:
            where = pc.index_in(keys, value_set=cached.column("key"))
            hit = pc.fill_null(pc.is_valid(where), False).to_numpy(zero_copy_only=False)
            slots = np.asarray(pc.fill_null(where, 0).to_numpy(zero_copy_only=False), dtype=np.int64)
            for j, name in enumerate(JPG_IDENTITY_FIELDS):
                hit &= cached.column(name).to_numpy()[slots] == stats[:, j]
            known = cached.column("sha256").take(pa.array(slots))
        missing = np.flatnonzero(~hit)
        names = first_columns(keys.take(pa.array(missing)), unique) if len(missing) else []
        done = hash_files(home.root, [(key_list[i], name) for i, name in zip(missing.tolist(), names)], workers)
        hashed = pa.array([sha for sha, _ in done], pa.string())
        if len(missing):
            stats[missing] = np.array([identity for _, identity in done], dtype=np.int64)  # as it was hashed
        sha256 = pc.replace_with_mask(known, pa.array(~hit), hashed) if len(missing) else known
        merge = cache.merge_due(int(hit.sum()))
        if merge:     # every key this publish references, as it was found or hashed now: nothing else
            cache.record(pa.table({"key": keys, **{name: stats[:, j] for j, name in enumerate(JPG_IDENTITY_FIELDS)},
                                   "sha256": sha256}, schema=CACHE_SCHEMA), merge=True)
        elif len(missing):
            cache.record(pa.table({"key": keys.take(pa.array(missing)),
                                   **{name: stats[missing, j] for j, name in enumerate(JPG_IDENTITY_FIELDS)},
                                   "sha256": hashed}, schema=CACHE_SCHEMA), merge=False)
    return JpgIndex(keys, stats[:, 0].copy(), sha256, int(len(missing)), int(stats[missing, 0].sum()), stats,
                    cache.note)


def forget(home: DataHome, keys: set[str]) -> tuple[int, str]:
    """Drop the entries of ``keys`` (training JPEGs removed: ``pipelines.features.trainjpegs``) from the cache,
    rewriting it as one part of the other entries (this account's parts; another's are left and noted); an
    untrusted cache is replaced by an empty one. Returns the entries dropped and the cache's note. Call under the
    publish lock (``pipelines.publish.versions.publish_lock``), as every writer of the cache and its temp-file sweep
    run (review rev30g)."""
    with _Cache(home) as cache:
        cached = cache.read()
        if cache.fd is None or (cache.trusted and not cached.num_rows):
            return 0, cache.note
        gone = pc.is_in(cached.column("key"), value_set=pa.array(sorted(keys), pa.string()))
        dropped = int(pc.sum(gone).as_py() or 0)
        if cache.trusted and not dropped and cache.rows == cached.num_rows:
            return 0, cache.note
        cache.record(cached.filter(pc.invert(gone)), merge=True)
    return dropped, cache.note


_UNSAFE_PART = r"(?:^|/)\.{0,2}(?:/|$)"     # an empty, "." or ".." part (a leading or doubled "/" too)


def keys_look_safe(values: pa.Array) -> pa.Array:
    """Per value, :func:`~pipelines.publish.shards.jpg_key_is_safe` computed by Arrow (null: False)."""
    bad = pc.or_(pc.match_substring_regex(values, _UNSAFE_PART),
                 pc.or_(pc.match_substring(values, "\\"), pc.match_substring(values, "\0")))
    return pc.fill_null(pc.invert(bad), False)


def first_columns(keys: pa.Array, unique: dict[str, pa.Array]) -> list[str]:
    """For each key, the first column (in ``unique``'s order) that holds it (errors name it)."""
    names = list(unique)
    where = np.full(len(keys), len(names) - 1, dtype=np.int64)
    for j in range(len(names) - 2, -1, -1):     # the earlier column wins: it is written last
        where[pc.is_in(keys, value_set=unique[names[j]]).to_numpy(zero_copy_only=False)] = j
    return [names[j] for j in where.tolist()]


def _euid() -> int:
    """This process's effective uid: the owner a cache part must have to be believed."""
    return os.geteuid()


HASH_TASKS_PER_WORKER = 4   # contiguous runs of files per hashing thread, so the threads finish close together


def hash_files(root: Path, files: list[tuple[str, str]], workers: int = 1) -> list[tuple[str, list[int]]]:
    """:func:`_hash` of every ``(key, column)`` in ``files`` (keys relative to ``root``), in order.

    ``workers`` threads (hashlib and file reads release the GIL), each taking a contiguous run of the
    files and reading them through one reused buffer of its own: handing each file to the pool as a
    task of its own, and reading each into a new ``bytes``, cost more than the hashing (about 75 µs a
    file against 25 µs of sha256 for a 45 KB JPEG). The first error in file order is raised.
    """
    if not files:
        return []
    runs = min(len(files), max(1, workers) * HASH_TASKS_PER_WORKER)
    bounds = np.linspace(0, len(files), runs + 1).astype(np.int64).tolist()

    def run(k: int) -> list[tuple[str, list[int]]]:
        buffer = memoryview(bytearray(_READ_CHUNK))
        return [_hash(root / rel, rel, column, buffer) for rel, column in files[bounds[k]:bounds[k + 1]]]

    if workers <= 1:
        return [result for k in range(runs) for result in run(k)]
    with ThreadPoolExecutor(min(workers, runs)) as pool:
        return [result for results in pool.map(run, range(runs)) for result in results]


def _hash(path: Path, rel: str, column: str, buffer: memoryview) -> tuple[str, list[int]]:
    """sha256 of a JPEG's bytes and its identity, the same before and after they were read (else
    :class:`JpgChangedError`: the digest may mix two versions of the file). ``buffer``: where to read them."""
    try:
        handle = open_regular_file(path)
    except OSError as exc:
        raise FileNotFoundError(f"training JPEG {rel!r} (split_pairs.{column}) cannot be read: {exc}") from exc
    digest = hashlib.sha256()
    read = 0
    with handle:
        before = file_identity(os.fstat(handle.fileno()))
        while got := handle.readinto(buffer):
            digest.update(buffer[:got])
            read += got
        after = file_identity(os.fstat(handle.fileno()))
    if after != before or read != before[0]:
        raise JpgChangedError(f"training JPEG {rel!r} (split_pairs.{column}) changed during the publish, while its "
                              "sha256 was taken; run it again")
    return digest.hexdigest(), before


class _Cache:
    """``HOME/cache/train_jpg_sha256``, opened once as a real folder (no link followed) and then used
    only through that descriptor, so nothing is read, written or deleted anywhere else. ``note``
    says why the cache was not used, not trusted or not written."""

    def __init__(self, home: DataHome) -> None:
        self.home = home
        self.folder = cache_dir(home)
        self.fd: int | None = None
        self.usable = True          # False: no cache this run (a link or a file in its place)
        self.trusted = True         # False: what is there counts as empty and is replaced
        self.parts: list[str] = []  # the parts read (this account's), oldest first
        self.rows = 0               # rows in them, superseded ones included
        self.notes: list[str] = []
        self._open(create=False)

    @property
    def note(self) -> str:
        return "; ".join(self.notes)

    def __enter__(self) -> "_Cache":
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def _open(self, create: bool) -> None:
        """Open the folder (making it when ``create``); a link or a file there makes the cache unusable."""
        try:
            if create:
                self.home.cache.mkdir(parents=True, exist_ok=True)
                with contextlib.suppress(FileExistsError):     # whatever is there is checked by the open
                    os.mkdir(self.folder)
            self.fd = os.open(self.folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            if create:
                self._unusable("it vanished while it was made")
        except OSError as exc:
            self._unusable(exc.strerror or str(exc))

    def _unusable(self, why: str) -> None:
        self.usable = False
        self.notes.append(f"JPEG digest cache not used: {self.folder}: {why} (it must be a real folder, not a "
                          "symbolic link or a file; remove what is there): every JPEG hashed, nothing recorded")

    def read(self) -> pa.Table:
        """Every trusted entry, one per key (of a key in several parts, the newest part's); empty if
        there are none or if any part cannot be trusted (then the next :meth:`record` replaces them all)."""
        if self.fd is None:
            return CACHE_SCHEMA.empty_table()
        try:
            names = [name for name in os.listdir(self.fd) if _PART.fullmatch(name)]
        except OSError as exc:
            return self._distrust(f"cannot list it: {exc}")
        self.parts = []
        for name in sorted(names, key=lambda name: (int(_PART.fullmatch(name)[1]), name)):
            owner = self._foreign_owner(name)
            if owner is None:
                self.parts.append(name)
            else:
                self._foreign(name, owner)
        tables = []
        for name in self.parts:
            table = self._read_part(name)
            if isinstance(table, str):
                return self._distrust(f"{name}: {table}")
            tables.append(table)
        if not tables:
            return CACHE_SCHEMA.empty_table()
        table = pa.concat_tables(tables)
        self.rows = table.num_rows
        conflicts = table.group_by(["key", *JPG_IDENTITY_FIELDS]).aggregate([("sha256", "count_distinct")])
        if conflicts.num_rows and pc.max(conflicts.column("sha256_count_distinct")).as_py() > 1:
            return self._distrust("a file recorded with two digests")
        rows = pa.table({"key": table.column("key"), "row": pa.array(np.arange(table.num_rows))})
        table = table.take(pc.sort_indices(rows, sort_keys=[("key", "ascending"), ("row", "descending")]))
        keys = table.column("key").to_numpy(zero_copy_only=False)
        first = np.ones(len(keys), dtype=bool)
        first[1:] = keys[1:] != keys[:-1]
        return table.filter(pa.array(first))

    def _foreign_owner(self, name: str) -> int | None:
        """The uid owning part ``name`` (not following a link) when it is not this process's effective
        uid; None when it is ours or cannot be looked at (then reading it says what is wrong)."""
        try:
            uid = os.stat(name, dir_fd=self.fd, follow_symlinks=False).st_uid
        except OSError:
            return None
        return None if uid == _euid() else uid

    def _foreign(self, name: str, uid: int) -> None:
        self.notes.append(f"JPEG digest cache part {name} belongs to uid {uid}, not to this account (uid {_euid()}): "
                          "not read and left in place (not this account's to remove)")

    def merge_due(self, used: int) -> bool:
        """Whether the cache is to be rewritten as one part of this publish's keys only: it was not
        trusted, it has ``MAX_PARTS`` parts, or more than ``MAX_UNUSED`` of its rows were not among the
        ``used`` entries that gave this publish a digest."""
        return not self.trusted or len(self.parts) >= MAX_PARTS or self.rows - used > MAX_UNUSED * self.rows

    def _distrust(self, why: str) -> pa.Table:
        self.trusted = False
        self.notes.append(f"JPEG digest cache not trusted ({why}): every JPEG hashed, the cache replaced")
        return CACHE_SCHEMA.empty_table()

    def _read_part(self, name: str) -> pa.Table | str:
        """A part's entries, or why it cannot be trusted (never raises: whatever a damaged file
        raises, it is no cache)."""
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=self.fd)
            try:
                info = os.fstat(fd)
                if not stat.S_ISREG(info.st_mode):
                    return "not a regular file"
                if info.st_uid != _euid():      # swapped in since it was looked at
                    return f"owned by uid {info.st_uid}, not this account"
                with open(fd, "rb", closefd=False) as handle:
                    data = handle.read()
            finally:
                os.close(fd)
            table = pq.read_table(pa.BufferReader(data), use_threads=False, page_checksum_verification=True)
        except Exception as exc:   # noqa: BLE001
            return f"unreadable: {type(exc).__name__}: {str(exc)[:200]}"
        if table.schema.names != CACHE_SCHEMA.names or any(
                field.type != want.type for field, want in zip(table.schema, CACHE_SCHEMA)):
            return "another layout"
        if any(column.null_count for column in table.columns):
            return "a missing value"
        if not table.num_rows:
            return CACHE_SCHEMA.empty_table()
        if pc.min(table.column("bytes")).as_py() < 0:
            return "a negative size"
        if not pc.all(pc.match_substring_regex(table.column("sha256"), "^[0-9a-f]{64}$")).as_py():
            return "a digest that is not 64 hex digits"
        if pc.count_distinct(table.column("key")).as_py() != table.num_rows:
            return "a key recorded twice"
        return pa.Table.from_arrays(table.columns, schema=CACHE_SCHEMA)    # the one schema every part shares

    def record(self, table: pa.Table, merge: bool) -> None:
        """Add ``table``'s entries as one more part or, when ``merge``, write them as the one part that
        replaces the parts read (this account's: another's are left). A failure to write is noted."""
        if not self.usable:
            return
        if self.fd is None:
            self._open(create=True)
            if self.fd is None:
                return
        try:
            numbers = [int(m[1]) for name in os.listdir(self.fd) if (m := _PART.fullmatch(name))]
            digest = hashlib.sha256("\0".join(table.column("key").to_pylist()).encode()).hexdigest()[:16]
            self._write(f"part-{max(numbers, default=-1) + 1:06d}-{digest}.parquet", table)
        except OSError as exc:            # a full disk: only the next publish pays
            self.notes.append(f"JPEG digests not recorded: {exc}")
            return
        if merge:
            for old in self.parts:        # the merged part holds every entry still wanted and sorts last
                owner = self._foreign_owner(old)
                if owner is not None:     # replaced by another account's file since it was read
                    self._foreign(old, owner)
                    continue
                try:
                    os.unlink(old, dir_fd=self.fd)    # a name in our own folder: never follows a link
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    self.notes.append(f"JPEG digest cache part {old} not removed: {exc}")

    def _write(self, name: str, table: pa.Table) -> None:
        """Write ``table`` as the new part ``name``: a temporary file in the folder, page checksums,
        fsync, renamed (all relative to the folder's descriptor)."""
        fd, tmp = create_temp(self.folder, name, dir_fd=self.fd)
        try:
            final = Path(self.folder) / name     # a full disk's note names the part (review rev33h)
            with naming_full_disk(final), naming_the_file(final):
                with open(fd, "wb", closefd=False) as handle:
                    pq.write_table(table, handle, **PARQUET_OPTIONS, write_page_checksum=True)
                os.fsync(fd)
            os.rename(tmp, name, src_dir_fd=self.fd, dst_dir_fd=self.fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=self.fd)
            raise
        finally:
            os.close(fd)
