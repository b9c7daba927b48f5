"""Everything a real build writes honours the umask, and another account can read the published data.

The shared home is built by ``pickapic demo`` in this session (simulator, Beam, Dagster, publish, trainer),
so every writer of the pipeline is covered: raw exports, warehouse, blobs, sidecars, ``_stats.json``,
``sizes.json``, ``manifest.json``, ``meta/*.parquet``, model weights, ``metrics.json``, ``curve.png``,
the Dagster instance. The home is copied (modes kept) into a folder every account can reach, and the
unprivileged ``nobody`` account reads every file of it.
"""
from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path

import pytest

from dagster_project.build import COMPUTE_LOG_ENDINGS, COMPUTE_LOGS_FOLDER
from formats.files import current_umask
from formats.home import DataHome
from tests.accounts import read_as_other_account, unreadable_by_other_account


@pytest.fixture(scope="module")
def shared_copy(built_home: DataHome):
    """The built home copied with its modes into a 0755 folder (pytest's temp root is 0700)."""
    folder = Path(tempfile.mkdtemp(prefix="pickapic-perm-"))
    os.chmod(folder, 0o755)
    shutil.copytree(built_home.root, folder / "home", symlinks=True)
    yield folder / "home"
    shutil.rmtree(folder)


def test_every_file_and_folder_has_the_umask_mode(built_home: DataHome) -> None:
    mask = current_umask()
    wrong = []
    kinds = set()
    for root, dirs, files in os.walk(built_home.root):
        for name in dirs + files:
            path = Path(root) / name
            info = os.lstat(path)
            if stat.S_ISLNK(info.st_mode):
                continue
            expected = (0o777 if stat.S_ISDIR(info.st_mode) else 0o666) & ~mask
            if path.parent == built_home.root / "dagster" / "history" and path.name.startswith("runs.db"):
                expected &= ~0o007      # every run's config: read by no other account (review rev25g)
            if _run_events(path, built_home.root):
                expected &= ~0o007      # each run's events (a refusal's reason): read by no other account (rev25j)
            if _compute_log(path, built_home.root):
                expected &= ~0o007      # each step's and tick's compute log (the same lines again, rev32h)
            if stat.S_IMODE(info.st_mode) != expected:
                wrong.append(f"{oct(stat.S_IMODE(info.st_mode))} {path.relative_to(built_home.root)}")
            kinds.add(path.suffix or path.name)
    assert not wrong, "\n".join(wrong[:40])
    for kind in (".tar", ".parquet", ".json", ".safetensors", ".png", ".jpg", ".gz", ".db", ".yaml", ".pt"):
        assert kind in kinds, kind                                    # every kind of writer was looked at


def test_another_account_reads_every_file(built_home: DataHome, shared_copy: Path) -> None:
    others_read = not current_umask() & 0o004
    latest = shared_copy / "datasets" / "pickapic" / "latest"
    for path in (latest / "manifest.json", latest / "train" / "sizes.json", next(latest.glob("train/*_stats.json")),
                 next(latest.glob("train/*.parquet")), next(latest.glob("meta/images/*.parquet")),
                 next(shared_copy.glob("models/preference_model/*/best/model.safetensors")),
                 next(shared_copy.glob("models/preference_model/*/metrics.json"))):
        assert read_as_other_account(path) == (path.read_bytes() if others_read else None), path
    # but the database of runs (their run config: review rev25g), which only the home's group reads
    runs = shared_copy / "dagster" / "history" / "runs.db"
    assert runs.is_file() and read_as_other_account(runs) is None
    unreadable = [path for path in unreadable_by_other_account(shared_copy)      # (its -wal and -shm, if any, too)
                  if not (path.parent == runs.parent and path.name.startswith(runs.name))
                  and not _run_events(path, shared_copy)                      # nor each run's events (rev25j)
                  and not _compute_log(path, shared_copy)]                    # nor the compute logs (rev32h)
    assert (unreadable == []) == others_read, unreadable[:20]


def _run_events(path: Path, root: Path) -> bool:
    """Whether ``path`` is a run's event database (``dagster/history/runs/<run id>.db``, -wal, -shm): no other
    account reads it (review rev25j); the event index and the run-less events' database follow the umask."""
    return (path.parent == root / "dagster" / "history" / "runs"
            and not path.name.startswith(("index.db", ".db")) and ".db" in path.name)


def _compute_log(path: Path, root: Path) -> bool:
    """Whether ``path`` is a compute log (``dagster/storage/.../*.out|.err``, :data:`COMPUTE_LOG_ENDINGS`): created
    with no access for other accounts (review rev32h); the ``.complete`` markers beside them follow the umask."""
    storage = root / "dagster" / COMPUTE_LOGS_FOLDER
    return storage in path.parents and path.name.endswith(COMPUTE_LOG_ENDINGS)
