"""Reuse of unchanged files: a shard (or an images snapshot) whose plan equals one of an older complete
version is hard-linked from it, so older versions share their bytes.

Only a regular file (never a symlink followed) with the recorded size is reused; it is copied instead
of linked when it belongs to another account, has another mode than this run gives new files, or the
file system refuses the link. See :func:`link_or_copy`."""
from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import stat
from pathlib import Path

from formats.dataset import FORMAT_VERSION, shard_paths
from formats.dataset import read_manifest as dataset_manifest
from formats.files import create_temp, file_mode, sha256_file
from pipelines.publish import shards

LINK_FALLBACK_ERRORS = (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP)


class NotReusable(Exception):
    """An older version's file that cannot be reused: not a regular file (a symlink is never
    followed), not the recorded size, or not readable by this account. The caller writes its own."""


def reusable(task: shards.ShardTask, previous: list[Path], manifests: dict[Path, dict] | None = None
             ) -> tuple[Path, dict] | None:
    """The stats file (and its stats) of an identical, intact shard in an older version, if there is one.

    Intact: its split folder is a real folder of the version (not a link to one elsewhere), its files
    regular files of the recorded sizes, and its stats file (the commit marker, whose numbers and
    sha256s go into the new manifest unchecked) has the sha256 the version's manifest recorded for
    it. ``manifests`` caches :func:`read_manifest` per version (filled as needed).
    """
    manifests = {} if manifests is None else manifests
    for version_dir in previous:
        if not real_folder(version_dir, task.split):
            continue
        stats_path = shard_paths(version_dir / task.split, task.name)[2]
        raw: list[bytes] = []
        stats = shards._committed_stats(stats_path, task.plan_sha256, raw)
        if stats is None:
            continue
        if version_dir not in manifests:
            manifests[version_dir] = read_manifest(version_dir)
        entry = (manifests[version_dir].get("files") or {}).get(f"{task.split}/{stats_path.name}")
        if isinstance(entry, dict) and entry.get("sha256") == hashlib.sha256(raw[0]).hexdigest():
            return stats_path, stats
    return None


def real_folder(version_dir: Path, rel: str) -> bool:
    """Whether every folder of ``rel`` under ``version_dir`` is a real folder, not a symlink (whose
    files, linked into a new version, would be another folder's)."""
    path = version_dir
    for part in rel.split("/"):
        path = path / part
        try:
            if not stat.S_ISDIR(os.lstat(path).st_mode):
                return False
        except OSError:
            return False
    return True


def link_shard(source: tuple[Path, dict], task: shards.ShardTask, fsync: bool, mode: int) -> dict | None:
    """Hard-link (or copy) a shard's tar, sidecar and stats (last: the commit marker) into the staging
    folder; return its stats, or None (nothing left in staging) when a file turned out not reusable.

    The linked sidecar is read back and must have the sha256 its stats (and so the new manifest) give it:
    a sidecar changed in place since it was published, with its size and mtime kept (``rsync -t --inplace``,
    an edit followed by ``touch -r``), is not carried into the new version, whose shard is then written
    afresh. The gate's caches (:mod:`pipelines.publish.rulecache`, :mod:`pipelines.publish.columncache`)
    know a sidecar by that sha256, inode, size and mtime, so without this check they would answer for
    the old bytes. A sidecar is ~1% of its shard; the tar is trusted by its size, as the issue asks
    (``publish.verify_checksums`` re-hashes everything)."""
    stats_path, stats = source
    Path(task.out_dir).mkdir(parents=True, exist_ok=True)
    sizes = (stats["num_bytes"], stats["sidecar_bytes"], None)
    done = []
    try:
        for origin, target, size in zip(shard_paths(stats_path.parent, task.name), task.paths(), sizes):
            link_or_copy(origin, target, fsync, size=size, mode=mode)
            done.append(target)
            if target == task.paths()[1] and file_sha256(target) != stats.get("sidecar_sha256"):
                raise NotReusable(f"{origin}: its bytes are not the sha256 its stats record (changed in place)")
    except NotReusable:
        for target in done:
            with contextlib.suppress(FileNotFoundError):
                target.unlink()
        return None
    return stats


def file_sha256(path: Path) -> str | None:
    """:func:`formats.files.sha256_file`, or None where the file cannot be read."""
    try:
        return sha256_file(path)
    except OSError:
        return None


def link_or_copy(source: Path, target: Path, fsync: bool = True, size: int | None = None,
                 mode: int | None = None) -> bool:
    """Make ``target`` a hard link to ``source``, or a copy of it; True if linked.

    Linked only when ``source`` is a regular file this account owns with ``mode`` (default: the
    mode this process gives a new file, ``0666 & ~umask``): a file of another account could be
    changed by it under the new version, and a file of another mode (an earlier run's umask, a
    ``chmod``) would carry that mode into it. Otherwise, and where the file system refuses a link,
    ``target`` is a copy with ``mode``. :class:`NotReusable` when ``source`` is not a regular file (a
    symlink is never followed), has not ``size`` bytes, or cannot be read.

    Made under a temporary name and renamed, so ``target`` is never half there and no existing file
    is written into.
    """
    mode = file_mode() if mode is None else mode
    try:
        info = os.lstat(source)
    except OSError as exc:
        raise NotReusable(f"{source}: {exc}") from exc
    _check(source, info, size)
    if info.st_uid == os.geteuid() and stat.S_IMODE(info.st_mode) == mode:
        with contextlib.suppress(OSError):
            have = os.lstat(target)
            if (have.st_dev, have.st_ino) == (info.st_dev, info.st_ino):
                return True                              # linked by an earlier, interrupted run
        tmp = target.with_name(f".{target.name}.tmp")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        try:
            os.link(source, tmp, follow_symlinks=False)   # links the name itself: a swapped-in symlink stays one
        except FileNotFoundError as exc:
            raise NotReusable(f"{source}: {exc}") from exc
        except OSError as exc:
            if exc.errno not in LINK_FALLBACK_ERRORS:
                raise
        else:
            try:
                linked = os.lstat(tmp)                    # the inode now linked, whatever the name held before
                if (stat.S_ISREG(linked.st_mode) and (size is None or linked.st_size == size)
                        and linked.st_uid == os.geteuid() and stat.S_IMODE(linked.st_mode) == mode):
                    os.replace(tmp, target)
                    return True
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
                raise
            tmp.unlink()
            _check(source, linked, size)
    _copy(source, target, fsync, size, mode)
    return False


def give_mode(path: Path, mode: int, fsync: bool = True) -> bool:
    """Give a version's regular file ``path`` (this account's) the ``mode`` this run gives new files;
    True when it had another. Never follows a link (a link or non-file is left: False).

    The same rule as :func:`link_or_copy`'s for a reused file of another mode: a file with one name is
    chmodded (no other version sees it); one hard-linked into another version too is copied, with
    ``mode``, and the copy renamed over ``path``. A chmod would change the file in every version that
    shares it, and those keep the mode they were published with (one written under umask 077 was meant
    to stay private); the copy costs its bytes once: the next nightly links from this version."""
    info = os.lstat(path)
    if not stat.S_ISREG(info.st_mode) or stat.S_IMODE(info.st_mode) == mode:
        return False
    if info.st_nlink == 1:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            have = os.fstat(fd)
            if (have.st_dev, have.st_ino, have.st_nlink) == (info.st_dev, info.st_ino, 1):
                os.fchmod(fd, mode)
                return True
        finally:
            os.close(fd)
    try:
        _copy(path, path, fsync, info.st_size, mode)
    except NotReusable as exc:
        raise RuntimeError(f"cannot give {path} this run's mode {mode:o}: {exc}") from exc
    return True


def _check(source: Path, info: os.stat_result, size: int | None) -> None:
    if not stat.S_ISREG(info.st_mode):
        raise NotReusable(f"{source} is not a regular file")
    if size is not None and info.st_size != size:
        raise NotReusable(f"{source} has {info.st_size} bytes, not {size}")


def _copy(source: Path, target: Path, fsync: bool, size: int | None, mode: int) -> None:
    """``target`` as a new file of ``mode`` holding ``source``'s bytes, renamed into place."""
    try:
        src = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise NotReusable(f"{source}: {exc}") from exc
    try:
        _check(source, os.fstat(src), size)
        fd, name = create_temp(target.parent, target.name)
        tmp = target.parent / name
        try:
            with open(src, "rb", closefd=False) as reader, open(fd, "wb", closefd=False) as writer:
                shutil.copyfileobj(reader, writer, 1 << 20)
            if size is not None and os.fstat(fd).st_size != size:
                raise NotReusable(f"{source} changed while it was copied")
            os.fchmod(fd, mode)
            if fsync:
                os.fsync(fd)
            os.close(fd)
            fd = -1
            os.replace(tmp, target)
        except BaseException:
            if fd >= 0:
                os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
    finally:
        os.close(src)


def read_manifest(version_dir: Path) -> dict:
    """A complete version's manifest, if it is of this format (else, or unreadable, empty)."""
    try:
        manifest = dataset_manifest(version_dir)
    except (OSError, ValueError):
        return {}
    return manifest if manifest.get("format") == FORMAT_VERSION else {}

