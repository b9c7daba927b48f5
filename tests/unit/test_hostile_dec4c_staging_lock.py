"""Third hostile review of December 4, 2026: the feature stage's staging lock (b84e2b0, merged as ab8bc27).

The staging lock is named after the folder's real path when it is taken, in ``HOME/.locks``. Each test
reproduced a way two runs still staged into one local folder under two different locks (marked
``xfail(strict=True)`` until it was fixed the same day).
"""
from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

import pytest
from test_features_fixtures import fake_detector, png, write_day

from formats.home import DataHome
from pipelines.features import stage
from pipelines.features.config import STAGING_MARKER, FeaturesConfig
from pipelines.features.stage import DayAlreadyRunning, build_features, hold_day_lock

DAY, OTHER_DAY = "2023-03-01", "2023-03-02"
THEIRS = b"being read by the other run's Beam workers"


def _features_home(root, day: str = DAY) -> DataHome:
    home = DataHome(root)
    home.raw_logs.mkdir(parents=True)
    write_day(home, day, {"a": png(1), "b": png(2)})
    return home


def _mid_beam(staging) -> None:
    """What a run in the middle of its Beam stage has in its staging folder (``reset_dir`` + ``todo.parquet``)."""
    staging.mkdir(parents=True, exist_ok=True)
    (staging / STAGING_MARKER).touch()
    (staging / "todo.parquet").write_bytes(THEIRS)


@pytest.mark.parametrize("shared", ["the blob base's default staging folder", "one --staging folder"])
def test_two_homes_do_not_stage_one_day_in_one_folder(tmp_path, shared):
    """Two data homes, each run's locks in its own ``HOME/.locks``, so neither sees the other's:

    - ``the blob base's default staging folder``: both homes have one blob base (``features.blob_base``: the raw
      bucket or disk both read, its content-addressed JPEG store shared; say the nightly's home and a second home
      rebuilt from the same raw data with other settings). Their runs of a day both default to
      ``<blob-base>/.staging/features/dt=DAY``.
    - ``one --staging folder``: both homes' settings name one scratch folder outside them (a copied settings
      file), which ``validate`` allows for each.

    The second run's ``reset_dir`` deletes the first's ``todo.parquet`` and staged outputs mid-Beam, and its
    ``remove_dir`` then deletes the folder. The first run reads back whatever is staged there; with the same
    images (a copied home) ``_reconcile`` passes on the other home's rows, made under other settings."""
    second = _features_home(tmp_path / "second")
    first = DataHome(tmp_path / "first")
    first.root.mkdir()
    if shared == "one --staging folder":
        config = FeaturesConfig(workers=0, staging=str(tmp_path / "scratch" / "stage"))
    else:
        base = tmp_path / "blobs"
        shutil.copytree(second.raw_images, base / second.raw_images.relative_to(second.root))  # blobs resolve here
        config = FeaturesConfig(workers=0, blob_base=str(base))
    config.validate(first.root)
    theirs = config.staging_url(first.root, DAY)
    with hold_day_lock(first, DAY, theirs):                       # the first home's run of DAY, mid-Beam
        _mid_beam(Path(theirs))
        try:
            with contextlib.suppress(DayAlreadyRunning):          # refused: what should happen
                build_features(second, DAY, config, detector_factory=fake_detector)
        finally:
            todo = Path(theirs) / "todo.parquet"
            survived = todo.is_file() and todo.read_bytes() == THEIRS
        assert survived, "the second home's run deleted the first home's staged todo.parquet"


def test_a_run_keeps_staging_in_the_folder_it_locked_when_a_link_on_its_path_moves(tmp_path, monkeypatch):
    """``--staging /scratch/current/stage`` where ``current`` is a link an operator (or a rotation job) moves
    from ``a`` to ``b``. The run locks ``a/stage`` (the real path when it starts), but every later use of its
    staging string goes through the link again. A run of another day given ``--staging /scratch/b/stage`` takes
    the lock of ``b/stage``, free, and stages there; the first run's ``reset_dir`` then empties ``b/stage``
    (it holds the stage's marker), deleting that run's files. Two locks, one folder. Here the link moves
    after the first run took its locks, while it reads its inputs; the other run, if it gets its lock, is in
    its Beam stage in ``b/stage``."""
    home = _features_home(tmp_path / "home")
    scratch = tmp_path / "scratch"
    (scratch / "a").mkdir(parents=True)
    (scratch / "b").mkdir()
    os.symlink("a", scratch / "current")
    theirs = scratch / "b" / "stage"
    real_read_inputs = stage.read_inputs
    other_started = []
    with contextlib.ExitStack() as other_run:
        def link_moves_then_other_run_starts(home_, day):
            os.symlink("b", scratch / "current.new")
            os.replace(scratch / "current.new", scratch / "current")     # the rotation: atomic
            with contextlib.suppress(DayAlreadyRunning):                   # refused: a fix too
                other_run.enter_context(hold_day_lock(home_, OTHER_DAY, str(theirs)))
                _mid_beam(theirs)
                other_started.append(True)
            return real_read_inputs(home_, day)

        monkeypatch.setattr(stage, "read_inputs", link_moves_then_other_run_starts)
        with contextlib.suppress(Exception):    # the first run may fail; it must not touch the other's folder
            build_features(home, DAY, FeaturesConfig(workers=0, staging=str(scratch / "current" / "stage")),
                           detector_factory=fake_detector)
        todo = theirs / "todo.parquet"
        if other_started:
            assert todo.is_file() and todo.read_bytes() == THEIRS, \
                "the first run emptied (and later deleted) the staging folder another run held the lock of"
