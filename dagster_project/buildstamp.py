"""The fast "up to date" answer of `pickapic build`: a stamp of everything a build's plan depends on.

After a build that left every asset fresh, ``HOME/cache/build_stamp.json`` records a digest of what the
plan read: the code versions, the settings file and the command's overrides, the raw zone (each file's
size, mtime and inode) and every output (warehouse files, the ``latest`` link, the model). A later build
whose digest matches has nothing to do and says so without loading Dagster or any stage (well under a
second); anything else, including a run launched from the UI or by the daemon (it rewrites outputs),
falls through to the full plan against the data versions Dagster recorded. Deleting the stamp only costs
that full plan once. No Dagster import here: this is the path that must stay cheap.
"""
from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Iterable

from dagster_project.versions import CODE_VERSIONS
from formats import dataset
from formats.files import write_bytes_atomic
from formats.home import DataHome
from formats.settings import settings_path
from pipelines.provenance import combine, raw_stats, stat_key

STAMP = "build_stamp.json"


def _file_text(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "unreadable"


def stamp_key(home: DataHome, *, assignments: Iterable[str] = (), config_file: Path | None = None,
              with_model: bool = False) -> str:
    """Digest of everything a build's plan depends on (see the module docstring)."""
    outputs = []
    if home.warehouse.is_dir():
        for folder, _, files in sorted(os.walk(home.warehouse)):
            for name in sorted(files):
                if name.endswith(".parquet"):
                    path = Path(folder) / name
                    outputs.append([str(path.relative_to(home.warehouse)), stat_key(path)])
    latest = dataset.latest_link(home)
    target = os.readlink(latest) if latest.is_symlink() else None
    model = None
    if with_model and target:
        model = stat_key(home.models / "preference_model" / target / "eval.json")
    return combine("build-stamp", CODE_VERSIONS, _file_text(settings_path(home.root)), sorted(assignments),
                   _file_text(config_file), with_model, raw_stats(home), _moderation_elsewhere(home), outputs, target,
                   stat_key(latest / dataset.MANIFEST_FILE) if target else None, model)


def _moderation_elsewhere(home: DataHome) -> list:
    """Moderation lists the settings file points outside the home's raw zone, by size/mtime/inode."""
    try:
        curation = tomllib.loads(settings_path(home.root).read_text(encoding="utf-8")).get("curation", {})
    except (OSError, ValueError):
        return []
    return [[name, stat_key(home.moderation_list(curation[name], home.root))] for name in ("phrases_file", "banned_users_file")
            if isinstance(curation.get(name), str) and curation[name]]


def is_up_to_date(home: DataHome, key: str) -> bool:
    """Whether the last fresh build left exactly this state."""
    try:
        return json.loads((home.cache / STAMP).read_text(encoding="utf-8")).get("key") == key
    except (OSError, ValueError):
        return False


def write_stamp(home: DataHome, key: str) -> None:
    """Record that the home is fresh in state ``key``."""
    write_bytes_atomic(home.cache / STAMP, (json.dumps({"key": key}) + "\n").encode())


def clear_stamp(home: DataHome) -> None:
    """Forget the fresh state (a build is about to change the home)."""
    try:
        (home.cache / STAMP).unlink()
    except FileNotFoundError:
        pass
