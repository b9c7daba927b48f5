"""The published dataset's format, in one place: every writer (``pipelines.publish``) and every reader
(``training``, ``pipelines.query``, the Dagster assets, the benchmarks) takes these facts from here.

A data home's ``datasets/pickapic/`` holds complete versions and a ``latest`` link::

    datasets/pickapic/<version>/manifest.json          every file with its sha256
    datasets/pickapic/<version>/<split>/pickapic-<split>-<segment>-<digest>.{tar,parquet,_stats.json}
                                                        (<digest>: of what the shard holds, :func:`shard_name`)
    datasets/pickapic/<version>/<split>/sizes.json      {shard.tar: samples}
    datasets/pickapic/<version>/<split>/prompt_counts.parquet
    datasets/pickapic/<version>/meta/                   decisions, images, quarantine, ...
    datasets/pickapic/latest -> <version>
    datasets/pickapic.history                           the versions `latest` was switched to, oldest first
    datasets/pickapic.staging/.partial-<version>        a version being written (never among the versions)

A shard ``<name>.tar`` holds ``KEY.0.jpg``, ``KEY.1.jpg``, ``KEY.json``, ``KEY.txt`` per sample;
``<name>.parquet`` (its sidecar) holds one row per sample with the tar offsets. The ``pickapic-``
prefix keeps ``meta/*.parquet`` out of the sidecar glob.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import fnmatch
import glob
import hashlib
import io
import json
import os
import re
import stat
import sys
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator

from formats.files import (
    is_real_folder,
    open_regular_file,
    read_limited,
    read_small_file,
    sha256_file,
    write_bytes_atomic,
)
from formats.home import DataHome
from formats.text import shown_path, terminal_text

FORMAT_VERSION = "pickapic-wds/6"     # bump when the bytes written for equal input change (6: content-named shards)
SPLITS = ("train", "validation", "test", "validation_unique", "test_unique")
UNIQUE_SUFFIX = "_u"                  # unique splits repeat parent rows: their keys get a suffix
LATEST = "latest"
MANIFEST_FILE = "manifest.json"
SIZES_FILE = "sizes.json"
PROMPT_COUNTS_FILE = "prompt_counts.parquet"  # per split: prompt_key -> num_example_per_prompt (not in the shards)
SHARD_PREFIX = "pickapic-"
MEMBERS = ("0.jpg", "1.jpg", "json", "txt")   # per sample, in this order inside a tar
VERSION_NAME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}-[0-9a-f]{10}")   # <last export day>-<sha256[:10]>: what a publish names its folder


def shard_name(split: str, segment: str, content: str) -> str:
    """Base name (no extension) of a shard: split, segment (an export day ``YYYYMMDD`` or a bucket) and a
    40-bit digest of ``content``, what the shard holds (``pipelines.publish.plan.content_digest``: its
    sample keys and each sample's JSON digest, the JPEGs' sha256s among them, under the format and writer
    versions). So a name never holds other bytes in a later version (review rev28c: a cache keyed by the
    name, webdataset's ``cache_dir``, served a rewritten shard's old samples), and an unchanged shard keeps
    its name (and stays a hard link of the older version's file)."""
    return f"{SHARD_PREFIX}{split}-{segment}-{hashlib.blake2b(content.encode(), digest_size=5).hexdigest()}"


def shard_segment(name: str) -> str:
    """The segment of a shard's name (``pickapic-train-20230213-f8b177beaf.tar`` -> ``20230213``)."""
    return Path(name).name.split("-")[2]


def shard_glob(split: str = "*", suffix: str = ".tar") -> str:
    """Glob of one split's shards (``.tar``) or sidecars (``.parquet``), inside the split's folder."""
    return f"{SHARD_PREFIX}{split}-*{suffix}"


def split_sidecars(version_dir: Path, split: str) -> list[Path]:
    """Sorted sidecar Parquet files of one split of a version (``prompt_counts.parquet`` is not one)."""
    return sorted((Path(version_dir) / split).glob(shard_glob(split, ".parquet")))


def sidecar_glob(version_dir: str | os.PathLike) -> str:
    """Glob of every split's sidecar Parquet files of a version (what DuckDB's ``read_parquet`` takes); the
    version's own path is escaped (:func:`glob.escape`: a home at ``/data/pickapic[1]`` is no character class)."""
    return f"{glob.escape(os.fspath(version_dir))}/*/{SHARD_PREFIX}*.parquet"


def manifest_files(version_dir: Path, known: dict[str, tuple[int, str]] | None = None) -> dict[str, dict]:
    """The manifest's ``files``: every file of a version but the manifest, ``{relpath: {bytes, sha256}}``;
    ``known`` gives (bytes, sha256) already computed for some relpaths (they are not read again)."""
    known = known or {}
    files = {}
    for path in sorted(p for p in version_dir.rglob("*") if p.is_file()):
        rel = str(path.relative_to(version_dir))
        if rel == MANIFEST_FILE:
            continue
        size, digest = known.get(rel) or (path.stat().st_size, sha256_file(path))
        files[rel] = {"bytes": size, "sha256": digest}
    return files


# The most bytes a version's manifest.json (and a split's sizes.json, which lists fewer names, shorter) may hold: a
# planted or symlinked multi-GB one is refused, never read (noticed in fix38a: retention read every complete-looking
# folder's manifest whole). Derivation: a manifest line per file is ~155-172 bytes (a test publish's manifest: 88
# files, 15.5 KB); a shard is 3 files (tar, sidecar, _stats.json), ~500 bytes of manifest. A Pick-a-Pic v2-size
# version (~1M pairs, ~100 GB at ~270 MB a day: ~370 export days) has ~64 shards a day over its splits
# (publish.shards_per_day) plus the unique splits' daily ones: ~26,000 shards, ~13 MB of manifest with the per-day
# meta and sources. Even every shard at the smallest average the shard limits allow (publish.min_shard_bytes,
# 256 KiB: ~381,000 shards in 100 GB) gives ~183 MB. 256 MiB is ~20x the first and above the second.
MANIFEST_MAX_BYTES = 256 << 20


def read_manifest(version_dir: str | os.PathLike) -> dict:
    """A version's ``manifest.json`` (its ``files``: ``{relpath: {bytes, sha256}}``, every file but itself).

    ``FileNotFoundError`` without one (not a complete version), ``ValueError`` when it is not a JSON object
    with a ``files`` object, not a regular file (a link is followed; a FIFO is never waited on, a device never
    read) or larger than :data:`MANIFEST_MAX_BYTES` (never read then: :func:`formats.files.read_limited`); all
    name the path."""
    path = Path(version_dir) / MANIFEST_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} missing: {Path(version_dir)} is not a complete published version")
    try:
        data = read_limited(path, MANIFEST_MAX_BYTES)
    except ValueError as exc:
        raise ValueError(f"{exc}: not a manifest a publish wrote") from None
    try:
        text = data.decode("utf-8")
        del data      # the bytes go before the parse: its peak is the text's and the parser's (review rev38d)
        manifest = json.loads(text)
    except (UnicodeDecodeError, RecursionError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is not valid JSON ({type(exc).__name__})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise ValueError(f"{path} is not a manifest: no 'files' object")
    return manifest


def shard_paths(folder: Path, name: str) -> tuple[Path, Path, Path]:
    """``<name>.tar``, ``<name>.parquet`` and ``<name>_stats.json`` in ``folder``."""
    return folder / f"{name}.tar", folder / f"{name}.parquet", folder / f"{name}{STATS_SUFFIX}"


STATS_SUFFIX = "_stats.json"          # a shard's commit marker: <name>_stats.json


# --------------------------------------------------------------------------- versions and `latest`
def latest_link(home: DataHome) -> Path:
    """The ``latest`` symlink of a data home's datasets (it may not exist yet)."""
    return home.datasets / LATEST


def latest_version(datasets: Path) -> str | None:
    """The name of the folder in ``datasets`` that the ``latest`` link reaches, or None: no link there, or one
    reaching something outside ``datasets`` (or ``datasets`` itself, or a loop of links).

    The link is resolved as the kernel resolves it for every reader and the trainer (``os.path.realpath``, the
    ``latest.resolve()`` of :func:`resolve_version`): the version is the folder that ``latest`` finally reaches when
    that is a direct child of ``datasets``'s real path. So a relative target (``<version>``, ``./<version>``,
    ``<version>/.``), an absolute one (``ln -sfn "$PWD/<version>" latest``, a rollback by hand), a link through a
    linked home and a link through a named link beside the versions (``latest -> candidate -> <version>``) all name
    the version readers get. Review rev25d: an absolute link's version was taken for no version at all; review
    rev25e: the link's text was read and ``candidate`` or ``<version>/.`` taken for the version, so retention
    deleted the version readers were on and the record of switched versions left it out. A target that does not
    exist (yet) is resolved as far as it goes. Whether the name is a complete version is the caller's to check."""
    link = Path(datasets) / LATEST
    if not os.path.islink(link):
        return None
    try:
        reached = os.path.realpath(link)
        home = os.path.realpath(datasets)
    except (OSError, ValueError):
        return None
    parent, name = os.path.split(reached)
    if not name or name in (".", "..") or parent != home or name == LATEST:
        return None                    # outside datasets, datasets itself, or a loop (realpath stops on it)
    if os.path.islink(reached):
        return None                    # a loop of links: realpath leaves the path where it found the loop
    return name


class LatestRefused(ValueError):
    """Something at ``datasets/pickapic/latest`` that is not a symbolic link: the publish switches only a link."""


def describe(path: str | os.PathLike) -> str:
    """What is at ``path``, without following it: "a symbolic link to 'x'", "a folder", "a regular file", ..."""
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode):
        return f"a symbolic link to {os.readlink(path)!r}"
    if stat.S_ISDIR(info.st_mode):
        return "a folder"
    if stat.S_ISREG(info.st_mode):
        return "a regular file"
    return "neither a file nor a folder (a FIFO, a socket or a device)"


def check_latest(datasets: Path) -> None:
    """Raise :class:`LatestRefused` when ``datasets/latest`` exists and is not a symbolic link.

    A folder there (a copy of the home made without keeping links: ``rsync -r`` without ``-l``, ``cp -r``)
    would make every publish fail after its version is in place, with a bare ``IsADirectoryError`` from the
    rename over it; a regular file would be silently replaced. Neither is the tool's: checked before any
    work, and the message says what to do."""
    link = Path(datasets) / LATEST
    try:
        info = os.lstat(link)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(info.st_mode):
        return
    if stat.S_ISDIR(info.st_mode):
        hint = ("perhaps a copy of the home made without keeping symbolic links (rsync without -l, cp -r); "
                "it may hold a version's files: move it aside (mv latest latest.copy) or delete it")
    else:
        hint = "move it aside or delete it"
    raise LatestRefused(f"{link} is {describe(link)}, not the symbolic link to a version that the publish "
                        f"switches: nothing was published and it was left as it is; {hint}, then publish again "
                        f"(the publish makes `latest` a link to the new version)")


def switch_latest(datasets: Path, version: str, fsync: bool = True) -> str | None:
    """Point ``datasets/latest`` at ``version`` atomically: a temp symlink renamed over the old one, so a
    reader resolves the old version or the new one, never nothing. Only a link (or nothing) at ``latest`` is
    replaced (:func:`check_latest`), and the temp link never stays behind.

    First ``version`` (and the version ``latest`` names now, by a relative or an absolute link:
    :func:`latest_version`; switched to by definition) is added to the record of
    switched versions (:func:`record_switched`): before the switch, so a process killed right after it cannot leave
    a version readers were given out of the record (its held-out keys would then go unpinned once ``latest`` was
    rolled back); a process killed in between leaves a version recorded that was never switched to, whose keys are
    then pinned (a split kept, never a leak). A record that cannot be written (a full disk) refuses the switch: an
    OSError naming the record, ``latest`` left as it was (review rev33h: the switch went on, the version out of the
    record). Returns why the record was left alone (something there this tool did not write), or None.

    Once the link is renamed readers get ``version``: a failure to sync the folder after that is
    :class:`SwitchNotSynced` (saying so, naming the folder), not an error that reads as if nothing was switched.
    Where ``latest`` already names ``version`` (a rerun) the folder is synced all the same, as an earlier switch's
    sync may have failed: a switch is only reported synced once its folder is (review rev33m)."""
    check_latest(datasets)
    link = Path(datasets) / LATEST
    before = latest_version(datasets)     # a relative or an absolute link to a version in datasets (rev25d)
    note = record_switched(datasets, [name for name in (before, version) if name], fsync)
    target = None
    with contextlib.suppress(OSError):
        target = os.readlink(link)
    if target == version:                 # an absolute link to it is made the relative link the tool writes
        _sync_switch(Path(datasets), version, fsync, renamed=False)   # an earlier switch's sync may have failed
        return note
    tmp = Path(datasets) / f".latest.{os.getpid()}.tmp"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(version, tmp)
    try:
        os.replace(tmp, link)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    _sync_switch(Path(datasets), version, fsync, renamed=True)
    return note


class SwitchNotSynced(OSError):
    """``latest`` names the new version (live: readers get it) but its folder could not be synced after
    (:func:`switch_latest`); the new version stays where it is."""


def _sync_switch(datasets: Path, version: str, fsync: bool, renamed: bool) -> None:
    """Sync the folder holding ``latest`` once it names ``version``: :class:`SwitchNotSynced` when that fails. Also
    when ``latest`` already named ``version`` (``renamed`` False: a rerun of a publish whose switch could not be
    synced), so the switch counts as synced only once the folder is: review rev33m, the rerun skipped the sync and
    retention deleted the version a power cut could still bring the link back to."""
    try:
        fsync_dir(datasets, fsync)
    except OSError as exc:
        said = f"`latest` was switched to {version}" if renamed else f"`latest` already named {version}"
        raise SwitchNotSynced(exc.errno, f"{said} (readers get it now), but the folder holding the link could not "
                              f"be synced ({exc.strerror or exc}): a power cut may bring back the link as it was "
                              "before the switch", str(datasets)) from exc


# Every version `latest` was switched to (still present): the published versions, whose keys the split stage pins
# (pipelines.splits.assign.switched_versions). Written right before each switch (switch_latest).
SWITCHED_HEADER = b"# pickapic switched versions: every version `latest` was switched to (present ones), sorted\n"


def switched_file(datasets: Path) -> Path:
    """``datasets/pickapic.switched``: beside the versions' folder, as the history."""
    return _beside(datasets, "switched")


def read_switched(datasets: Path) -> set[str] | None:
    """The versions the record of switched versions names, or None when there is no record this tool wrote
    (missing, unreadable, not a regular file, too large, without its header)."""
    names = read_names(switched_file(datasets), SWITCHED_HEADER)
    return None if names is None else set(names)


def record_switched(datasets: Path, versions: Iterable[str], fsync: bool = True) -> str | None:
    """Add ``versions`` (just switched to) to the record of switched versions; names no longer present as real
    folders are dropped. Return why it was not written, or None.

    Where there is no record yet (a home published before it existed, or the record was lost) it starts with every
    complete version present (a folder with its manifest): those were published as far as anyone can tell, so a
    version a publish left unswitched before the record began counts too (its keys pinned: a split kept, never a
    leak). Something at the record's path this tool did not write is left as it is (every present version then
    counts as switched to, as without a record). A record that cannot be written is an OSError naming it (the caller,
    :func:`switch_latest`, then switches nothing: review rev33h)."""
    datasets = Path(datasets)
    path = switched_file(datasets)
    names = read_switched(datasets)
    if names is None:
        if os.path.lexists(path):
            said = "every present version counts as published"
            return _unreadable(path, said) or (
                f"{path} is {describe(path)} that is not a record this tool wrote: left as it is, so {said}; remove "
                "it to let the publish keep the record again")
        names = set()
        entries: list[Path] = []
        with contextlib.suppress(OSError):
            entries = list(datasets.iterdir())
        for entry in entries:
            with contextlib.suppress(OSError):   # a version this account cannot look into: not named
                if _is_complete_version(entry):
                    names.add(entry.name)
    kept = sorted(name for name in names | {v for v in versions if VERSION_NAME.fullmatch(v)}
                  if is_real_folder(datasets / name))
    try:
        write_names(path, SWITCHED_HEADER, kept, fsync)
    except OSError as exc:   # a version switched to but out of the record would lose its pins after a rollback
        what = ("was written but the folder holding it could not be synced" if isinstance(exc, RecordNotSynced)
                else "could not be written")
        raise OSError(exc.errno, f"the record of switched versions {what} ({exc.strerror or exc}), so `latest` was "
                      f"not switched; {_remedy(exc.errno, path.parent)} and publish again", str(path)) from exc
    return None


def _unreadable(path: Path, said: str) -> str | None:
    """Why the regular file at ``path`` (a record this tool keeps) is not read, where this account may not read it
    (EACCES, EPERM: another account's file of mode 0600), with whose it is and what to do; None where it can be
    opened or is not a regular file (then it is not a record this tool wrote). Noticed in fix38n: such a file was
    reported as one this tool did not write, and the operator was sent to remove a record the tool had written.

    Where its mode already lets this account read it (or the refusal is EPERM), a POSIX ACL or a security policy
    (SELinux, AppArmor) refuses the read: that is named, not a ``chmod`` already in effect (review rev39c); where the
    ``lstat`` itself is refused (a folder above it this account may not search), the plain note, without whose or
    which mode (review rev39c: an UnboundLocalError)."""
    info = None
    try:
        info = os.lstat(path)
        if not stat.S_ISREG(info.st_mode):
            return None
        os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC))  # never waits on a FIFO
    except OSError as exc:
        if exc.errno not in (errno.EACCES, errno.EPERM):
            return None
        cause, code = exc.strerror or os.strerror(exc.errno), exc.errno
    else:
        return None
    left = f"left as it is, so {said}"
    if info is None:
        return (f"{path} could not be read by this account ({cause}: a folder holding it may not be searched by this "
                f"account): {left}; make the folders holding it searchable to this account (chmod a+x)")
    mode = f"mode {stat.S_IMODE(info.st_mode):04o}"
    mine = info.st_uid == os.geteuid()
    whose = f"this account's file, {mode}" if mine else f"another account's file (uid {info.st_uid}), {mode}"
    if code == errno.EPERM or _mode_lets_read(info):     # no mode bit refuses with EPERM
        fix = ("a POSIX ACL or a security policy (SELinux, AppArmor) refuses the read, not its mode: "
               f"see getfacl {path} (setfacl -x to drop the entry) or the system's security log")
    elif mine:
        fix = f"make it readable (chmod u+r {path})"
    else:
        fix = f"have that account make it readable to this one (chmod a+r {path}), or publish as that account"
    return f"{path} could not be read by this account ({cause}: {whose}): {left}; {fix}"


def _mode_lets_read(info: os.stat_result) -> bool:
    """Whether the mode bits of ``info`` let this account read the file: its owner's, group's or others' read bit,
    whichever class this account is in (as the kernel picks it, before any ACL)."""
    if info.st_uid == os.geteuid():
        return bool(info.st_mode & stat.S_IRUSR)
    if info.st_gid == os.getegid() or info.st_gid in os.getgroups():
        return bool(info.st_mode & stat.S_IRGRP)
    return bool(info.st_mode & stat.S_IROTH)


def _remedy(code: int | None, folder: Path) -> str:
    """What to do about a record that could not be written or synced, by the error's errno (review rev33m: "free
    the space (or fix the file)" for a read-only folder)."""
    if code in (errno.ENOSPC, errno.EDQUOT):
        return "free some space" + (" (or have the account's quota raised)" if code == errno.EDQUOT else "")
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"make {folder} writable for this account"
    return "fix the disk's error (the system log says more)"


# The order versions were published in, for retention: a folder's mtime is the wall clock of its night, and
# after a night run with the clock behind, "the newest versions" by mtime are not the last ones published.
HISTORY_HEADER = b"# pickapic publish history: the versions `latest` was switched to, oldest first\n"
HISTORY_MAX_BYTES = 1 << 20


def _beside(datasets: Path, suffix: str) -> Path:
    """``datasets.<suffix>``: a record beside the versions' folder, not in it, so whoever syncs that folder gets
    versions and ``latest`` only."""
    datasets = Path(datasets)
    return datasets.parent / f"{datasets.name}.{suffix}"


def read_names(path: Path, header: bytes) -> list[str] | None:
    """The version names a record of this tool lists, in its order (lines that are not version names skipped),
    or None when there is no such record: missing, unreadable, not a regular file (never followed), too large,
    or without ``header``."""
    data = read_small_file(path, HISTORY_MAX_BYTES)
    if data is None or not data.startswith(header):
        return None
    return [line for line in data[len(header):].decode("utf-8", "replace").splitlines() if VERSION_NAME.fullmatch(line)]


class RecordNotSynced(OSError):
    """A record was written (renamed into place) but the folder holding it could not be synced after
    (:func:`write_names`): the record's text is there, a power cut may bring back the one before."""


def write_names(path: Path, header: bytes, names: Iterable[str], fsync: bool) -> None:
    """Replace a record with ``header`` and ``names``, one a line, atomically (OSError when it cannot be;
    :class:`RecordNotSynced`, naming the folder, when it was written but its folder could not be synced after)."""
    write_bytes_atomic(path, header + "".join(f"{name}\n" for name in names).encode())
    try:
        fsync_dir(path.parent, fsync)
    except OSError as exc:
        raise RecordNotSynced(exc.errno, exc.strerror or os.strerror(exc.errno or 0),
                              os.fspath(exc.filename or path.parent)) from exc


def history_file(datasets: Path) -> Path:
    """``datasets/pickapic.history`` (:func:`_beside`)."""
    return _beside(datasets, "history")


def read_history(datasets: Path) -> list[str] | None:
    """The version names of the publish history, oldest first (a name switched to twice counts where it was
    last), or None when there is no history this tool wrote (:func:`read_names`)."""
    names = read_names(history_file(datasets), HISTORY_HEADER)
    if names is None:
        return None
    order: dict[str, None] = {}
    for name in names:
        order.pop(name, None)
        order[name] = None
    return list(order)


def record_switch(datasets: Path, version: str, fsync: bool = True) -> str | None:
    """Add ``version`` to the publish history as the newest (before ``latest`` is switched to it), right after
    the version ``latest`` names now; the versions no longer present are dropped. Return why the history was
    left alone (something there this tool did not write) or why its folder was not synced, or None.

    ``latest``'s version (:func:`latest_version`: a relative or an absolute link to a folder in ``datasets``; a link
    to anything outside it names no version) goes right before ``version`` because it is the last one switched to: a
    publish that died between writing the history and switching left its version recorded as the newest though
    ``latest`` never named it, and retention would otherwise keep that one and delete the version readers were
    still on.

    Written under a temporary name and renamed; something at its path that this tool did not write (a link,
    a folder, a file without its header) is left as it is and the history goes unwritten: versions are then
    ordered by their folders' mtime (:func:`list_versions`). The history changes no published byte. A history that
    cannot be written (any OSError: a full disk, a folder this account may not write, another account's history in
    a sticky folder) is an OSError naming it, its cause and what to do, and nothing is switched (fix38n, review
    rev38f: the switch went on with the history naming only older versions, and retention deleted the version
    ``latest`` named until then before them); one written whose folder could not be synced is a note.

    The versions retention deletes after the switch stay named until the next publish's ``record_switch``, which
    drops them; by design, not rewritten by retention (fix38d): no reader acts on a name alone.
    :func:`list_versions` lists only the folders there, ordered by it; a version published again under such a
    name is recorded here as the newest before its switch; ``previous_versions`` takes a folder as a reuse source
    only where :func:`pipelines.publish.versions.made_by_publish` accepts it (its manifest names it, it holds only
    the files listed), so a folder put back under such a name meanwhile is the version the history named; no
    command, status or rollback reads the history. A rewrite after the switch would be one more write that can
    fail with the version live."""
    datasets = Path(datasets)
    path = history_file(datasets)
    names = read_history(datasets)
    if names is None and os.path.lexists(path):
        said = "versions are ordered by their folders' modification time"
        return _unreadable(path, said) or (
            f"{path} is {describe(path)} that is not a publish history this tool wrote: left as it is, so {said}; "
            "remove it to let the publish keep the history again")

    def present(name: str) -> bool:
        return is_real_folder(datasets / name)

    current = latest_version(datasets)    # a relative or an absolute link to a folder in datasets (rev25d)
    last = [current] if current and current != version and present(current) else []
    kept = [name for name in names or [] if name != version and name not in last and present(name)] + last + [version]
    try:
        write_names(path, HISTORY_HEADER, kept, fsync)
    except RecordNotSynced as exc:    # written: the order is right unless a power cut brings back the one before
        return (f"the publish history {path} was written but its folder was not synced ({exc.strerror or exc}): "
                f"{_remedy(exc.errno, path.parent)}")
    except OSError as exc:
        # the path, not the random temporary name the error names (fix38d), its cause and what to do; the switch is
        # refused (fix38n, review rev38f: it went on, and retention took the versions the history did not name, the
        # one `latest` named until then first, for the oldest)
        raise OSError(exc.errno, f"the publish history {path} could not be written ({exc.strerror or exc}), so "
                      f"`latest` was not switched (retention would take the versions it does not name for the "
                      f"oldest); {_history_remedy(exc.errno, path)} and publish again", str(path)) from exc
    return None


def _history_remedy(code: int | None, path: Path) -> str:
    """What to do about a publish history that could not be replaced: :func:`_remedy`, but for another account's
    history in a sticky folder (``/tmp``-like, a shared home's ``datasets/``: mode 1777), which only its owner (or
    root, or the folder's owner) may replace or remove however writable the folder is."""
    if code in (errno.EACCES, errno.EPERM):
        try:
            info, folder = os.lstat(path), os.lstat(path.parent)
        except OSError:
            return _remedy(code, path.parent)
        me = os.geteuid()
        if folder.st_mode & stat.S_ISVTX and info.st_uid != me and folder.st_uid != me:
            return (f"it belongs to another account (uid {info.st_uid}) and {path.parent} is sticky (mode "
                    f"{stat.S_IMODE(folder.st_mode):04o}), so only that account (or root) may replace or remove it: "
                    f"have it remove {path} (the next publish starts the history afresh, ordering the versions it "
                    f"does not name by mtime) or publish as that account")
    return _remedy(code, path.parent)


def fsync_dir(path: Path, enabled: bool = True, unsupported_ok: bool = False) -> None:
    """fsync a folder, so the renames and links made in it survive a power cut; with ``unsupported_ok`` a file
    system that cannot sync a folder (``EINVAL`` / ``ENOTSUP``) leaves it as it is; any other error names the folder
    (review rev33h: an EIO named nothing)."""
    if not enabled:
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if not (unsupported_ok and exc.errno in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP)):
            raise OSError(exc.errno, exc.strerror or os.strerror(exc.errno or 0), os.fspath(path)) from exc  # rev33h
    finally:
        os.close(fd)


def is_published(home: DataHome) -> bool:
    """Whether ``latest`` names a complete version (one with its manifest)."""
    return (latest_link(home) / MANIFEST_FILE).is_file()


def prompt_counts_glob(version_dir: str | os.PathLike) -> str:
    """Glob of every split's ``prompt_counts.parquet`` of a version (its path escaped, as :func:`sidecar_glob`)."""
    return f"{glob.escape(os.fspath(version_dir))}/*/{PROMPT_COUNTS_FILE}"


def list_versions(home: DataHome) -> list[str]:
    """Complete version names, oldest first (in the order they were last published).

    A version is a real folder (not a link) named as a publish names one (``VERSION_NAME``) that holds
    a manifest. Anything else beside them (a backup copy, a user's folder) is not a version: retention
    never deletes it and no publish reuses files from it. A folder this account cannot look into is
    skipped too.

    The order is the publish history's (:func:`record_switch`), which no clock moves; versions it does not
    name (published before it existed, or with it missing or damaged) come first, by their folder's mtime.
    """
    if not home.datasets.is_dir():
        return []
    history = {name: position for position, name in enumerate(read_history(home.datasets) or [])}
    found = []
    for path in home.datasets.iterdir():
        try:
            if _is_complete_version(path):
                known = path.name in history
                found.append((known, history[path.name] if known else path.lstat().st_mtime_ns, path.name))
        except OSError:          # EACCES: another account's version under a strict umask
            continue
    return [name for _, _, name in sorted(found)]


def _is_complete_version(path: Path) -> bool:
    """Whether ``path`` is a version: a real folder (not a link) named as a publish names one that holds its
    manifest (OSError where this account cannot look)."""
    return (VERSION_NAME.fullmatch(path.name) is not None and not path.is_symlink() and path.is_dir()
            and (path / MANIFEST_FILE).is_file())


def _why_unpublished(home: DataHome) -> str:
    """What to tell a reader of a home with no ``latest``: with its splits built (``split_pairs`` there), the last
    build may have refused to publish for lack of data, which a rerun of the publish stage does not change (review
    rev30f: "run the publish stage" was said in any case)."""
    if home.table_file("split_pairs").is_file():
        return ("the splits are built but no version was published: the build found too little data for a version "
                "a trainer can use (it said `not enough data to publish` and why) or stopped before publishing; "
                "`pickapic build` again, once the app has more users and rankings if it said not enough data")
    return "nothing was published yet: run `pickapic build`, or the publish stage"


def resolve_version(home: DataHome, version: str | None = None) -> Path:
    """The real directory of ``version`` (default: what ``latest`` points to now); must be complete."""
    if version is None:
        link = latest_link(home)
        if not link.exists():
            raise FileNotFoundError(f"no published dataset: {link} does not exist ({_why_unpublished(home)})")
        path = link.resolve()
    else:
        if not version or "/" in version or "\\" in version or version.startswith("."):
            raise ValueError(f"version {version!r} is not a version name")
        path = (home.datasets / version).resolve()
    if path.parent != home.datasets.resolve() or not (path / MANIFEST_FILE).is_file():
        available = ", ".join(list_versions(home)) or "none"
        raise FileNotFoundError(f"version {version or LATEST!r} is not a complete published version (available: {available})")
    return path


def resolve_data_dir(data_dir: str | os.PathLike) -> Path:
    """A version directory given by a reader: a version dir itself, or a folder holding ``latest``
    (``datasets/pickapic``); links resolved; errors name the path."""
    path = Path(data_dir).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"dataset dir {shown_path(path)!r} does not exist")   # a link's token hidden (rev32a)
    path = path.resolve()
    if not (path / "train").is_dir() and (path / LATEST).exists():
        path = (path / LATEST).resolve()
    return path


def home_of(version_dir: str | os.PathLike) -> Path | None:
    """The data home a version directory lies in (``HOME/datasets/pickapic/<version>``), or None when it is
    not laid out as a home's version (a copy elsewhere)."""
    path = Path(version_dir)
    if path.parent.name == "pickapic" and path.parent.parent.name == "datasets" and path.is_absolute():
        return path.parents[2]
    return None


# --------------------------------------------------------------------------- readers' locks on a version
# A reader of a version holds a shared ``flock`` on the version's folder itself for as long as it reads (the
# trainer, the evaluation and the leaderboard, ``pickapic query`` and ``pickapic export``); the publish's
# retention takes an exclusive one, without waiting, on each version it would delete, keeps one a reader holds
# (deleted by a later publish once free) and renames the version out of the way with the lock held. The folder
# is opened read-only (O_RDONLY | O_DIRECTORY): no file is written into the version and any account that may
# read the dataset may hold it, as `( flock -s 9 && cmd ) 9<DATASET/VERSION` does for a tool of its own (not
# `flock -s DATASET/VERSION cmd`, which creates a file there where the version was deleted: review rev32b).
READ_TRIES = 5       # `latest` resolved again this many times where the version it named was deleted meanwhile


class VersionGone(FileNotFoundError):
    """The version a reader resolved was deleted (by the publish's retention) or moved before the reader held it:
    nothing was read from it."""


class VersionBusy(RuntimeError):
    """Another process held the version exclusively for longer than the reader would wait (``wait_s`` of
    :func:`hold_for_reading`): nothing was read from it. Not an OSError: that, from ``flock``, means a file system
    with no locks on folders, read unlocked."""


def _gone(path: Path, via_latest: bool, tries: int = 1) -> VersionGone:
    if via_latest:
        return VersionGone(f"dataset version {path.name} ({path}), which `latest` named, was deleted by the publish's "
                           f"retention (publish.keep_versions) before it could be read"
                           f"{f' ({tries} tries)' if tries > 1 else ''}: nothing was read from it; read "
                           f"`latest` again")
    return VersionGone(f"dataset version {path.name} ({path}) was deleted (the publish's retention, "
                       f"publish.keep_versions) or moved before it could be read: nothing was read from it; read "
                       f"`latest` or a version that is there (available: "
                       f"{', '.join(_versions_beside(path)) or 'none'})")


def _versions_beside(path: Path) -> list[str]:
    try:
        return sorted(entry.name for entry in os.scandir(path.parent)
                      if VERSION_NAME.fullmatch(entry.name) and entry.is_dir(follow_symlinks=False))
    except OSError:
        return []


def lock_holders(fd: int) -> list[int]:
    """The process ids holding a ``flock`` on the file ``fd`` is open on, as the kernel lists them
    (``/proc/locks``: ``N: FLOCK ADVISORY READ|WRITE PID MAJOR:MINOR:INODE ...``, major and minor in hex), sorted;
    [] where the list cannot be read (another OS, a hidden /proc)."""
    info = os.fstat(fd)
    device = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"
    try:
        with open("/proc/locks", encoding="ascii", errors="replace") as listing:
            lines = listing.read(1 << 22).splitlines()
    except OSError:
        return []
    pids = set()
    for line in lines:
        fields = line.split()
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == device and fields[4].isdigit():
            pids.add(int(fields[4]))
    return sorted(pids)


def holders_text(pids: list[int]) -> str:
    """``pid 12, 34`` for a message naming who holds a lock; ``a process this account cannot see`` for none."""
    return "pid " + ", ".join(str(pid) for pid in pids) if pids else "a process whose id the kernel did not list"


def hold_for_reading(path: str | os.PathLike, wait_s: float | None = None) -> int | None:
    """Take a shared ``flock`` on the version folder ``path`` (a real folder, links resolved) for reading it;
    return the descriptor that holds it (closing it releases the lock), or None where this file system has no
    ``flock`` on folders (some NFS and FUSE mounts: the folder is read unlocked, as before) or the folder cannot
    be opened though it is there (EACCES). Waits while an exclusive lock is held: retention deleting that very
    version (it never waits for a reader), or another tool's exclusive ``flock``; saying so on stderr first, with
    the holder's pid (review rev26e: a reader waited for ever, silently); for at most ``wait_s`` seconds where it is
    given, then :class:`VersionBusy` (review rev27a: ``pickapic query --timeout`` did not bound this wait).
    :class:`VersionGone` when the folder is not at ``path`` once the lock is held: retention renamed it out of the
    way with its lock held, so a reader never starts on a half-removed version."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        raise _gone(path, False) from None
    except OSError:
        return None
    try:
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:  # an exclusive lock: retention deleting it (brief), or another tool's flock
                print(terminal_text(
                    f"waiting to read dataset version {path.name}: {holders_text(lock_holders(fd))} holds it "
                    f"exclusively (the publish's retention deleting it, a moment; or another tool's `flock` without "
                    f"-s, which holds it until that process ends)"), file=sys.stderr, flush=True)
                if wait_s is None:
                    fcntl.flock(fd, fcntl.LOCK_SH)
                else:
                    _wait_shared(fd, path, wait_s)
        except OSError:          # ENOLCK, EOPNOTSUPP, EBADF, EINVAL: no flock on folders here
            os.close(fd)
            return None
        held = os.fstat(fd)
        try:
            there = os.stat(path, follow_symlinks=False)
        except OSError:
            there = None
        if there is None or (there.st_dev, there.st_ino) != (held.st_dev, held.st_ino):
            raise _gone(path, False)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _wait_shared(fd: int, path: Path, wait_s: float) -> None:
    """Take the shared ``flock`` on ``fd`` within ``wait_s`` seconds (asked again every 10 ms, doubling up to
    0.25 s), else :class:`VersionBusy` naming the holder."""
    deadline = time.monotonic() + max(0.0, wait_s)
    pause = 0.01
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise VersionBusy(f"dataset version {path.name} was still held exclusively by "
                              f"{holders_text(lock_holders(fd))} (the publish's retention deleting it, or another "
                              "tool's `flock` without -s): nothing was read from it")
        time.sleep(min(pause, left))
        pause = min(pause * 2, 0.25)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            continue


@contextlib.contextmanager
def reading_resolved(resolve: Callable[[], Path], via_latest: bool, wait_s: float | None = None) -> Iterator[Path]:
    """Hold the version ``resolve()`` names for reading (:func:`hold_for_reading`, waiting at most ``wait_s``
    seconds in all where it is given); where it was deleted between the two and ``via_latest``, resolve again
    (`latest` moved on), at most :data:`READ_TRIES` times."""
    until = None if wait_s is None else time.monotonic() + max(0.0, wait_s)
    for tries in range(1, READ_TRIES + 1):
        path = resolve()
        try:
            fd = hold_for_reading(path, None if until is None else max(0.0, until - time.monotonic()))
            break
        except VersionGone:
            if not via_latest:
                raise
            if tries == READ_TRIES:
                raise _gone(path, True, tries) from None
    try:
        yield path
    finally:
        if fd is not None:
            os.close(fd)


def reading_version(home: DataHome, version: str | None = None,
                    wait_s: float | None = None) -> contextlib.AbstractContextManager[Path]:
    """:func:`resolve_version`, held for reading until the ``with`` block ends: a shared lock on the version's
    folder that the publish's retention respects (it keeps the version). ``latest`` (``version`` None) is
    resolved to its version first and that is locked; one deleted in between is resolved again. Where another
    process holds the version exclusively it waits, for at most ``wait_s`` seconds where given
    (:class:`VersionBusy`)."""
    return reading_resolved(lambda: resolve_version(home, version), version is None, wait_s)


def reading_data_dir(data_dir: str | os.PathLike) -> contextlib.AbstractContextManager[Path]:
    """:func:`resolve_data_dir`, held for reading until the ``with`` block ends (:func:`reading_version`): a
    ``data_dir`` that reaches its version through ``latest`` is resolved again where that version was deleted
    before it was locked; a version folder given itself gives :class:`VersionGone`."""
    given = Path(data_dir).expanduser()
    via_latest = os.path.islink(given) or (not (given / "train").is_dir() and (given / LATEST).exists())
    return reading_resolved(lambda: resolve_data_dir(data_dir), via_latest)


# --------------------------------------------------------------------------- splits
class ChecksumError(ValueError):
    """A file of a published version whose bytes differ from the sha256 its manifest records, or one the
    manifest does not list."""


def republish(version: str | os.PathLike) -> str:
    """What to do about a file of the published ``version`` (its folder) that differs from its manifest: the
    command that checks that very version (``--version NAME``: every file's size and sha256, naming each that
    differs; it publishes nothing; ``--home`` the version's home where it lies in one, else ``HOME``), then how to
    publish it again. Review rev32b: the advice named
    ``python -m pipelines.publish --home HOME --verify-checksums`` alone, which verifies (or publishes) the version
    of the home's current inputs and exits 0 while an older version (``export/train --version``) stays damaged."""
    import shlex

    name = Path(version).name
    home = home_of(version)
    shown = shlex.quote(str(home)) if home is not None and str(home).isprintable() else "HOME"
    return (f"check the version with `python -m pipelines.publish --home {shown} --verify-checksums --version "
            f"{shlex.quote(name)}` (it names every file of {name} that differs from its manifest), then publish it "
            f"again: move the version folder aside and publish with publish.verify_checksums = true, which rewrites "
            f"a damaged shard an older version shares instead of linking it")


def read_sizes(split_dir: Path, files: dict | None = None) -> dict[str, int] | None:
    """``{shard.tar: samples}`` from a split's ``sizes.json``, or None when it has none.

    The bytes read must have the size (compared before any is read: no more than it is ever read) and the sha256
    the version's manifest (``files``: its ``files``, read when not given) records for ``<split>/sizes.json``,
    else :class:`ChecksumError`: the file decides the shards' expected counts and the weights of resampled
    training, so an edited one would skew or hide data. A ``sizes.json`` the manifest does not list is refused; one
    it lists but that is missing is an error."""
    split_dir = Path(split_dir)
    sizes_file = split_dir / SIZES_FILE
    version_dir = split_dir.parent
    if files is None:
        files = read_manifest(version_dir)["files"]
    info = files.get(f"{split_dir.name}/{SIZES_FILE}")
    if not isinstance(info, dict) or not isinstance(info.get("sha256"), str):
        if os.path.lexists(sizes_file):
            raise ChecksumError(f"{sizes_file} is not listed in the {MANIFEST_FILE} of dataset version "
                                f"{version_dir.name}: not a file that version published; {republish(version_dir)}")
        return None
    # never more than the manifest records (its size is compared before any byte is read, as open_listed_file
    # does: noticed in rev38d, up to 256 MiB were read to be refused by the sha256), nor than a manifest may hold
    recorded = info.get("bytes")
    limit = min(recorded, MANIFEST_MAX_BYTES) if isinstance(recorded, int) and recorded >= 0 else MANIFEST_MAX_BYTES
    try:
        data = read_limited(sizes_file, limit)
    except FileNotFoundError:
        raise FileNotFoundError(f"{sizes_file} missing: the {MANIFEST_FILE} of dataset version {version_dir.name} "
                                f"lists it; {republish(version_dir)}") from None
    except ValueError as exc:
        raise ChecksumError(f"{exc}: not the {SIZES_FILE} dataset version {version_dir.name} published; "
                            f"{republish(version_dir)}") from None
    if isinstance(recorded, int) and len(data) != recorded:
        raise ChecksumError(f"{sizes_file} of dataset version {version_dir.name} has {len(data)} bytes but its "
                            f"{MANIFEST_FILE} records {recorded}: it changed after publishing; "
                            f"{republish(version_dir)}")
    digest = hashlib.sha256(data).hexdigest()
    if digest != info["sha256"]:
        raise ChecksumError(f"{sizes_file} of dataset version {version_dir.name} has sha256 {digest} but its "
                            f"{MANIFEST_FILE} records {info['sha256']}: it changed after publishing (an edited "
                            f"sizes.json can hide shards or skew their weights); {republish(version_dir)}")
    return json.loads(data.decode("utf-8"))


@contextlib.contextmanager
def open_listed_file(version_dir: str | os.PathLike, rel: str, files: dict | None = None,
                     why: str = "") -> Iterator[io.FileIO | None]:
    """The version's file ``rel`` (``train/prompt_counts.parquet``) open to read, positioned at its start, once
    it is checked against its manifest (``files``: its ``files``, read when not given): first its size against
    the bytes the manifest records (from the open file, before reading any of it), then its sha256, hashed
    block by block through that descriptor (memory bounded whatever is there). A difference is
    :class:`ChecksumError` naming the file (``why``: what an edit of it does, for the message). Yields None when
    the manifest does not list it and nothing is there (a file of an older format); a file there that the
    manifest does not list is refused, and one it lists that is missing is a ``FileNotFoundError``.

    Review rev24j: the file was read whole into memory to take its sha256, so a 1 GiB file planted at a listed
    name took the export 1 GiB of memory before it was refused."""
    version_dir = Path(version_dir)
    path = version_dir / rel
    if files is None:
        files = read_manifest(version_dir)["files"]
    info = files.get(rel)
    if not isinstance(info, dict) or not isinstance(info.get("sha256"), str):
        if os.path.lexists(path):
            raise ChecksumError(f"{path} is not listed in the {MANIFEST_FILE} of dataset version "
                                f"{version_dir.name}: not a file that version published; {republish(version_dir)}")
        yield None
        return
    try:
        handle = open_regular_file(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} missing: the {MANIFEST_FILE} of dataset version {version_dir.name} "
                                f"lists it; {republish(version_dir)}") from None
    except OSError as exc:
        raise ChecksumError(f"{path} of dataset version {version_dir.name} cannot be read as the file its "
                            f"{MANIFEST_FILE} lists ({exc.strerror or exc}); {republish(version_dir)}") from None
    with handle:
        size = os.fstat(handle.fileno()).st_size
        if isinstance(info.get("bytes"), int) and size != info["bytes"]:
            raise ChecksumError(f"{path} of dataset version {version_dir.name} has {size} bytes but its "
                                f"{MANIFEST_FILE} records {info['bytes']}: it changed after publishing"
                                f"{f' ({why})' if why else ''}; {republish(version_dir)}")
        try:
            digest = hashlib.file_digest(handle, "sha256").hexdigest()   # block by block, through this descriptor
        except OSError as exc:
            raise ChecksumError(f"{path} of dataset version {version_dir.name} cannot be read as the file its "
                                f"{MANIFEST_FILE} lists ({exc.strerror or exc}); {republish(version_dir)}") from None
        if digest != info["sha256"]:
            raise ChecksumError(f"{path} of dataset version {version_dir.name} has sha256 {digest} but its "
                                f"{MANIFEST_FILE} records {info['sha256']}: it changed after publishing"
                                f"{f' ({why})' if why else ''}; {republish(version_dir)}")
        handle.seek(0)
        yield handle


def read_listed_file(version_dir: str | os.PathLike, rel: str, files: dict | None = None,
                     why: str = "") -> bytes | None:
    """The bytes of the version's file ``rel``, checked as :func:`open_listed_file` checks it (its size before
    any byte is read, its sha256 hashed streaming); None where that yields None. For a small file: a caller
    that parses the file reads it from :func:`open_listed_file`'s handle instead."""
    with open_listed_file(version_dir, rel, files, why) as handle:
        return handle.readall() if handle is not None else None


def manifest_sidecars(version_dir: str | os.PathLike, split: str, files: dict | None = None) -> list[Path]:
    """Sorted sidecar paths of ``split``: the ``.parquet`` beside each shard :func:`split_shards` returns (the
    manifest's shards, never a glob of the folder); every one must be listed in the manifest too."""
    version_dir = Path(version_dir)
    if files is None:
        files = read_manifest(version_dir)["files"]
    sidecars = [tar.with_suffix(".parquet") for tar in split_shards(version_dir, split)]
    unlisted = [p.name for p in sidecars if f"{split}/{p.name}" not in files]
    if unlisted:
        raise ChecksumError(f"{version_dir / split}: the {MANIFEST_FILE} of dataset version {version_dir.name} "
                            f"lists {len(unlisted)} shards without their sidecars: {unlisted[:5]}; "
                            f"{republish(version_dir)}")
    return sidecars


def sizes_json(sizes: dict[str, int]) -> bytes:
    """The bytes of a ``sizes.json`` (sorted keys, so equal sizes give equal bytes)."""
    return (json.dumps(sizes, indent=1, sort_keys=True) + "\n").encode()


def split_shards(version_dir: Path, split: str) -> list[Path]:
    """Sorted shard paths of ``split``: exactly the ``<split>/pickapic-<split>-*.tar`` files the version's
    manifest lists. Every one must exist, and the split's ``sizes.json`` (checked against its manifest
    sha256, :func:`read_sizes`) must name exactly these shards.

    The manifest decides, not a glob of the folder nor ``sizes.json``: a shard deleted from the folder,
    or dropped from an edited ``sizes.json``, would otherwise silently leave training or evaluation (a
    hard test shard hidden raises the test accuracy). A shard file the manifest does not list is not
    returned (``training.data.check_split`` refuses the split for it)."""
    split_dir = Path(version_dir) / split
    if not split_dir.is_dir():
        raise FileNotFoundError(f"split {split!r} not found: {split_dir} is not a directory")
    files = read_manifest(version_dir)["files"]
    pattern = shard_glob(split)
    names = sorted(rel[len(split) + 1:] for rel in files
                   if rel.startswith(f"{split}/") and "/" not in rel[len(split) + 1:]
                   and fnmatch.fnmatchcase(rel[len(split) + 1:], pattern))
    shards = [split_dir / name for name in names]
    missing = [p.name for p in shards if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{split_dir}: {len(missing)} shards the {MANIFEST_FILE} of dataset version "
                                f"{Path(version_dir).name} lists do not exist: {missing[:5]}; {republish(version_dir)}")
    sizes = read_sizes(split_dir, files)
    if sizes is not None and set(sizes) != set(names):
        unlisted, absent = sorted(set(names) - set(sizes)), sorted(set(sizes) - set(names))
        raise ValueError(f"{split_dir / SIZES_FILE} does not name the shards the {MANIFEST_FILE} lists (shards it "
                         f"leaves out: {unlisted[:5]}; names the manifest does not list: {absent[:5]}); "
                         f"{republish(version_dir)}")
    return shards
