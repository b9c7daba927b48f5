"""Reuse of unchanged files: a shard (or an images snapshot) whose plan equals one of an older complete
version is hard-linked from it (copied across file systems), so older versions share their bytes."""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
from pathlib import Path

from formats.dataset import FORMAT_VERSION, LATEST, MANIFEST_FILE, list_versions, shard_paths
from formats.home import DataHome
from pipelines.publish import shards

LINK_FALLBACK_ERRORS = (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP)


def previous_versions(home: DataHome, version: str) -> list[Path]:
    """Complete versions to reuse shards from: the one ``latest`` names first, then newest first."""
    link = home.datasets / LATEST
    current = os.readlink(link) if link.is_symlink() else None
    names = [v for v in reversed(list_versions(home)) if v != version]
    if current in names:
        names.remove(current)
        names.insert(0, current)
    return [home.datasets / name for name in names]


def reusable(task: shards.ShardTask, previous: list[Path]) -> Path | None:
    """The stats file of an identical, intact shard in an older version, if there is one."""
    for version_dir in previous:
        stats_path = shard_paths(version_dir / task.split, task.name)[2]
        if shards._committed_stats(stats_path, task.plan_sha256) is not None:
            return stats_path
    return None


def link_shard(stats_path: Path, task: shards.ShardTask, fsync: bool) -> dict:
    """Hard-link (or copy) a shard's tar, sidecar and stats (last: the commit marker) into the staging folder."""
    Path(task.out_dir).mkdir(parents=True, exist_ok=True)
    for source, target in zip(shard_paths(stats_path.parent, task.name), task.paths()):
        link_or_copy(source, target, fsync)
    return json.loads(stats_path.read_text(encoding="utf-8"))


def link_or_copy(source: Path, target: Path, fsync: bool = True) -> bool:
    """Make ``target`` a hard link to ``source`` (a copy where the file system refuses); True if linked.

    The link is made under a temporary name and renamed, so ``target`` is never half there and no
    existing file is written into.
    """
    if target.exists() and os.path.samefile(source, target):
        return True
    tmp = target.with_name(f".{target.name}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    linked = True
    try:
        os.link(source, tmp)
    except OSError as exc:
        if exc.errno not in LINK_FALLBACK_ERRORS:
            raise
        linked = False
        shutil.copyfile(source, tmp)
        if fsync:
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
    os.replace(tmp, target)
    return linked



def manifest_plans(version_dir: Path) -> dict[str, str]:
    """The plan digests recorded in a complete version's manifest (empty for older formats)."""
    try:
        manifest = json.loads((version_dir / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return manifest.get("plans", {}) if manifest.get("format") == FORMAT_VERSION else {}
