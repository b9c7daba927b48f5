"""Hostile review rev28f of fix28c (commit dd82ba8): content-named shards (``plan.content_digest``, pickapic-wds/6),
the versions staged in ``datasets/pickapic.staging/.partial-<version>`` (with a fallback to the versions' folder
when it is on another file system), the umask's bits given to ``datasets/``, ``datasets/pickapic/`` and
``datasets/pickapic.staging/`` by every publish, and the ``pickscore-parquet`` export's dataset card and version
record.

Run by hand against real publishes (seeded homes of ``test_publish_fixtures`` published night by night, a
versions' folder linked to ``/dev/shm``, a second file system), the export and ``datasets.load_dataset`` 5.2.0.

Checked and found sound (no test): the shard-name digest against everything the tar and sidecar hold (each
sample's JSON digest carries every column, the JPEGs' ``jpg_*_sha256`` among them; DuckDB's ``to_json`` renders
distinct doubles, NULs and control characters distinctly, so no change of content keeps a name); a split whose
samples repeat is refused (``pair_id repeated within a split``), splits and days never share a name; a nightly
links every unchanged shard and equals the from-scratch build; a user's ``.partial-notes`` in the versions' folder
and in ``pickapic.staging`` is left with a note while an old-layout staging is swept; ``datasets.load_dataset`` on
an export folder and on a version folder gives the five splits with the published counts; the export card names
the version exported and the Parquet files carry ``dataset_version``; a publish killed (SIGKILL, ``PICKAPIC_FAULT``)
at ``shards.after_tar`` (1st and 3rd), ``publish.after_link`` (1st and 3rd), ``publish.after_shards``,
``publish.before_rename`` and ``publish.before_switch`` of a nightly (2 workers, retention 1) never showed a partial
version among the versions, and its rerun left ``pickapic.staging`` empty and gave the from-scratch bytes.

Filed below as strict xfails (each confirmed by running it); all three fixed the same day (``versions.open_folders``
adds read and search bits only, ``versions.sweep_staging_root``), and the tests now pass as plain tests:
- a publish gives ``datasets/`` / ``datasets/pickapic/`` every bit of ``0777 & ~umask``, the owner's (and, under
  umask 002, the group's) write bit included: a versions' folder its owner froze with ``chmod a-w`` is made
  writable again (only a note says so), and retention then deletes the frozen version;
- where the versions' folder is on another file system (the fallback), stagings left in
  ``datasets/pickapic.staging`` are never swept nor reported: a whole partial version stays for good.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import os
import stat
from pathlib import Path
from unittest import mock

from test_publish_fixtures import history_home, publish_until

from pipelines.publish import version as publish_version
from pipelines.publish import versions
from pipelines.publish.config import PublishConfig


@contextlib.contextmanager
def _umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_a_frozen_versions_folder_is_not_made_writable(tmp_path: Path) -> None:
    with _umask(0o022):
        home, table = history_home(tmp_path / "home", days=3, rankings=60)
        first = publish_until(home, table, last_day=dt.date(2023, 3, 1))
        os.chmod(home.datasets, 0o555)            # the owner freezes the published versions
        try:
            with contextlib.suppress(OSError):
                publish_until(home, table, config=PublishConfig(workers=1, fsync=False, min_shards_per_split=1,
                                                                keep_versions=1))
            mode = _mode(home.datasets)
        finally:
            os.chmod(home.datasets, 0o755)        # so pytest can remove tmp_path
    # (the run as root writes through 0555 whatever the fix; as any other account the publish then fails, and
    # the frozen version stays)
    assert first.version and mode & 0o222 == 0, f"the frozen folder was given write bits: {mode:04o}"


def test_a_publish_under_umask_002_gives_no_group_write_bit(tmp_path: Path) -> None:
    with _umask(0o022):
        home, table = history_home(tmp_path / "home", days=2, rankings=40)
        publish_until(home, table, last_day=dt.date(2023, 3, 1))
    assert _mode(home.datasets) == _mode(home.datasets.parent) == 0o755
    with _umask(0o002):
        publish_until(home, table)
    assert _mode(home.datasets) & 0o020 == 0 and _mode(home.datasets.parent) & 0o020 == 0


def test_the_fallback_still_sweeps_the_staging_folder(tmp_path: Path) -> None:
    home, table = history_home(tmp_path / "home", days=2, rankings=40)
    publish_until(home, table, last_day=dt.date(2023, 3, 1))
    left = versions.staging_root(home.datasets) / ".partial-2023-03-01-0123456789"
    (left / "train").mkdir(parents=True)
    (left / "train" / "pickapic-train-20230301-0123456789.tar").write_bytes(b"\0" * 4096)
    real_open, real_stat = versions.open_staging_root, os.stat

    def other_device(path, *args, **kwargs):
        info = real_stat(path, *args, **kwargs)
        if not isinstance(path, int) and Path(path) == home.datasets:
            return os.stat_result((info.st_mode, info.st_ino, info.st_dev + 1, *tuple(info)[3:]))
        return info

    def fallback(datasets):
        with mock.patch.object(versions.os, "stat", other_device):
            return real_open(datasets)

    with mock.patch.object(publish_version, "open_staging_root", fallback):
        report = publish_until(home, table)
    assert report.version in {p.name for p in home.datasets.iterdir()}
    assert not left.exists() or any(str(left) in note for note in report.notes)
