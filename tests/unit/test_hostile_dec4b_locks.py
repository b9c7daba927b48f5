"""Second hostile review of December 4, 2026: the home's lock files (``formats.locks``, ``HOME/.locks/``, 352fa2a).

Each test reproduced a defect of main at 691940a (marked ``xfail(strict=True)`` until it was fixed the same day).
"""
from __future__ import annotations

import os

import pytest

from formats.home import DataHome
from formats.locks import LockFileRefused
from pipelines.features.config import FeaturesConfig
from pipelines.features.stage import DayAlreadyRunning, hold_day_lock
from pipelines.splits.assign import hold_ledger_lock

DAY, OTHER_DAY = "2023-03-01", "2023-03-02"


def _lock_args(home: DataHome, day: str, config: FeaturesConfig) -> tuple:
    """What ``build_features`` passed to ``hold_day_lock`` at 691940a (stage.py: ``staging if config.staging else
    None``), after the same ``validate`` it runs first. It now passes ``staging`` always; ``None`` still means the
    day's default folder under the home."""
    config.validate(home.root)
    staging = config.staging_url(home.root, day)
    return home, day, staging if config.staging else None


@pytest.mark.parametrize("spelling", ["trailing slash", "the day's default staging"])
def test_two_feature_runs_sharing_one_staging_folder_exclude_each_other(tmp_path, spelling):
    """Two feature runs of different days on one home that stage into the same folder must not run together:
    the second's ``reset_dir`` deletes the first's ``todo.parquet`` and staged outputs mid-Beam (what the
    staging lock exists for). ``trailing slash``: the nightly's settings say ``/scratch/stage``, a backfill
    passes ``--staging /scratch/stage/`` (shell completion adds the slash); both pass ``validate``, the lock
    names are sha256 of the two strings. ``the day's default staging``: a run of DAY without a staging setting
    stages into ``HOME/.staging/features/dt=DAY`` and takes only the day lock; a run of OTHER_DAY given that
    folder as ``--staging`` (``validate`` allows a subfolder of the stage's own area) takes only a staging
    lock on it."""
    home = DataHome(tmp_path / "home")
    home.root.mkdir()
    if spelling == "trailing slash":
        first = FeaturesConfig(staging=str(tmp_path / "scratch" / "stage"))
        second = FeaturesConfig(staging=str(tmp_path / "scratch" / "stage") + "/")
    else:
        first = FeaturesConfig()
        second = FeaturesConfig(staging=first.staging_url(home.root, DAY))
    first_args, second_args = _lock_args(home, DAY, first), _lock_args(home, OTHER_DAY, second)
    assert os.path.normpath(first.staging_url(home.root, DAY)) == os.path.normpath(second.staging_url(home.root,
                                                                                                      OTHER_DAY))
    with hold_day_lock(*first_args):
        with pytest.raises(DayAlreadyRunning):
            with hold_day_lock(*second_args):
                pass


@pytest.mark.parametrize("lock", ["split ledger", "feature day"])
def test_a_locks_folder_that_is_a_symbolic_link_is_refused(tmp_path, lock):
    """``open_lock_file`` refuses a link at the lock file's own path (``O_NOFOLLOW``) but ``mkdir(exist_ok=True)``
    and ``os.open`` follow one at ``HOME/.locks``: the stages then create and lock files in any folder it names
    (another home's ``.locks``, a world-writable folder another account can hold a lock in forever, the
    disposable ``cache/`` the locks were moved out of). The build lock's other zones (``checkpoints/``,
    ``best/``, output folders) refuse a linked folder; this one should too, creating nothing through it."""
    home = DataHome(tmp_path / "home")
    home.root.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.symlink(elsewhere, home.locks)
    hold = (lambda: hold_ledger_lock(home, log=lambda _: None)) if lock == "split ledger" else (
        lambda: hold_day_lock(home, DAY))
    try:
        with pytest.raises(LockFileRefused, match=r"\.locks"):
            with hold():
                pass
    finally:
        created = sorted(os.listdir(elsewhere))
    assert created == []
