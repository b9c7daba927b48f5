"""Model run retention (``[models] keep_runs``): a year of weekly trainings must not keep 52 run folders.

Every training of `latest` records its version as the newest run (``HOME/models/preference_model.runs``);
when it has finished, the runs beyond the newest ``keep_runs`` are deleted, never the run just trained, the run
of `latest`'s version, a run a trainer is writing, or anything that is not a trainer's run folder.
"""
from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path

import pytest

from formats import dataset
from formats.home import DataHome
from formats.settings import SettingsError, load
from tests.accounts import without_privileges
from training import runs
from training.synthetic import tiny_config, write_synthetic_version

SIZES = {"train": 40, "validation": 12, "test": 12, "validation_unique": 12, "test_unique": 12}


def _name(day: int, tag: str = "0") -> str:
    return f"2023-03-{day:02d}-{tag * 10}"


def _fake_run(home: DataHome, name: str, record: bool = True) -> Path:
    """A run folder as a trainer leaves it (the files retention looks at; the weights do not matter here),
    recorded as the newest run as a training of `latest` records it (``record``)."""
    if record:
        assert runs._record_run(home, name) is None
    run = runs.runs_folder(home) / name
    for sub in ("init", "best", "checkpoints/last"):
        (run / sub).mkdir(parents=True, exist_ok=True)
        (run / sub / "train_config.json").write_text("{}\n")
        (run / sub / "model.safetensors").write_bytes(b"w" * 100)
    (run / "metrics.json").write_text("{}\n")
    return run


def _present(home: DataHome) -> list[str]:
    return sorted(os.listdir(runs.runs_folder(home)))


def test_keeps_the_newest_runs_by_the_record_not_by_name_or_clock(tmp_path: Path) -> None:
    home = DataHome(tmp_path / "home")
    # trained in this order (a re-publish of an earlier export day can be trained later)
    order = [_name(1), _name(3), _name(2), _name(5, "a"), _name(4)]
    for name in order:
        _fake_run(home, name)
    old_mtime = 10**9   # a clock set far back on the newest run changes nothing
    os.utime(runs.runs_folder(home) / _name(4), (old_mtime, old_mtime))
    result = runs.apply_run_retention(home, 2, protect={_name(4)})
    assert sorted(result.deleted) == sorted([_name(1), _name(3), _name(2)])
    assert _present(home) == sorted([_name(5, "a"), _name(4)])
    assert runs.read_runs(home) == [_name(5, "a"), _name(4)]
    assert not result.left


def test_only_recorded_runs_are_deleted_and_protected_runs_always_stay(tmp_path: Path) -> None:
    """Runs the record does not name (trained before it began, or by hand into the folder) are never deleted and
    do not count; protected runs stay whatever keep says."""
    home = DataHome(tmp_path / "home")
    for name in (_name(9), _name(8)):     # trained before the record began
        _fake_run(home, name, record=False)
    for name in (_name(1), _name(2), _name(3)):
        _fake_run(home, name)
    result = runs.apply_run_retention(home, 1, protect={_name(1), _name(3)})
    assert result.deleted == [_name(2)]
    assert _present(home) == sorted([_name(9), _name(8), _name(1), _name(3)])
    result = runs.apply_run_retention(home, 1, protect={_name(3)})
    assert result.deleted == [_name(1)] and runs.read_runs(home) == [_name(3)]


def test_a_run_without_a_model_does_not_count(tmp_path: Path) -> None:
    """A training that died before its first checkpoint leaves a run without best/: newer than the kept models it
    stays (it may be resumed) without pushing a model out; older, it goes."""
    home = DataHome(tmp_path / "home")
    for day in (1, 2, 3):
        _fake_run(home, _name(day))
    shutil.rmtree(runs.runs_folder(home) / _name(3) / "best")
    _fake_run(home, _name(4))
    result = runs.apply_run_retention(home, 2, protect={_name(4)})
    assert result.deleted == [_name(1)] and _present(home) == [_name(2), _name(3), _name(4)]
    shutil.rmtree(runs.runs_folder(home) / _name(2) / "best")
    _fake_run(home, _name(5))
    result = runs.apply_run_retention(home, 2, protect={_name(5)})
    assert sorted(result.deleted) == [_name(2), _name(3)] and _present(home) == [_name(4), _name(5)]


def test_keep_zero_keeps_every_run(tmp_path: Path) -> None:
    home = DataHome(tmp_path / "home")
    for day in range(1, 6):
        _fake_run(home, _name(day))
    result = runs.apply_run_retention(home, 0, protect={_name(5)})
    assert result.deleted == [] and len(_present(home)) == 5


def test_only_a_trainers_run_folders_are_deleted(tmp_path: Path) -> None:
    home = DataHome(tmp_path / "home")
    folder = runs.runs_folder(home)
    elsewhere = tmp_path / "elsewhere"
    _fake_run(DataHome(elsewhere), _name(1), record=False)   # a run folder outside the home, named like a version
    folder.mkdir(parents=True)
    os.symlink(runs.runs_folder(DataHome(elsewhere)) / _name(1), folder / _name(1))
    (folder / _name(2)).mkdir()                          # a user's folder named like a version, no trainer files
    (folder / _name(2) / "notes.txt").write_text("mine")
    (folder / "my-experiment").mkdir()                   # a user's folder with another name
    _fake_run(home, "my-experiment", record=False)
    (folder / _name(3)).write_text("a file")             # a file named like a version
    _fake_run(home, _name(4))
    _fake_run(home, _name(5))
    for name in (_name(1), _name(2), _name(3)):   # even named in the record (a run later replaced by hand)
        runs._record_run(home, name)
    runs._record_run(home, _name(5))
    result = runs.apply_run_retention(home, 1, protect={_name(5)})
    assert result.deleted == [_name(4)]
    assert "no train_config.json" in result.left[_name(2)]
    assert (elsewhere / "models/preference_model" / _name(1) / "best/train_config.json").is_file()
    assert (folder / _name(1)).is_symlink() and (folder / _name(2) / "notes.txt").read_text() == "mine"
    assert (folder / "my-experiment/best/train_config.json").is_file() and (folder / _name(3)).is_file()


def test_a_run_a_trainer_is_writing_is_kept(tmp_path: Path) -> None:
    home = DataHome(tmp_path / "home")
    busy = _fake_run(home, _name(1))
    _fake_run(home, _name(2))
    fd = os.open(busy / runs.TRAIN_LOCK_FILE, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)   # as training.train.run_lock holds it
        result = runs.apply_run_retention(home, 1, protect={_name(2)})
        assert result.deleted == [] and "a trainer is writing it" in result.left[_name(1)]
        assert (busy / "best/train_config.json").is_file()
    finally:
        os.close(fd)
    assert runs.apply_run_retention(home, 1, protect={_name(2)}).deleted == [_name(1)]


def test_no_retention_while_another_training_of_latest_runs(tmp_path: Path) -> None:
    home = DataHome(tmp_path / "home")
    for day in (1, 2, 3):
        _fake_run(home, _name(day))
    with runs._runs_lock(home):          # held shared by a training in progress
        result = runs.apply_run_retention(home, 1, protect={_name(3)})
    assert result.deleted == [] and "another training" in result.left["*"]
    assert len(_present(home)) == 3


def test_a_deletion_cut_short_is_finished_by_the_next_retention(tmp_path: Path) -> None:
    home = DataHome(tmp_path / "home")
    _fake_run(home, _name(1))
    _fake_run(home, _name(2))
    os.rename(runs.runs_folder(home) / _name(1), runs.runs_folder(home) / f"{runs.DELETING_PREFIX}{_name(1)}")
    result = runs.apply_run_retention(home, 1, protect={_name(2)})
    assert result.deleted == [] and _present(home) == [_name(2)]


def test_a_run_this_account_cannot_delete_whole_is_left_whole(tmp_path: Path) -> None:
    """A group-shared home: a run folder another member made, with a folder in it this account may not change.
    Nothing of it is deleted (no half run)."""
    home = DataHome(tmp_path / "home")
    locked = _fake_run(home, _name(1))
    _fake_run(home, _name(2))
    os.chmod(locked / "best", 0o555)
    try:    # without privileges: root too meets the folder's mode, on any machine (chattr +i needs a capability)
        outcome = without_privileges(lambda: runs.apply_run_retention(home, 1, protect={_name(2)}))
    finally:
        os.chmod(locked / "best", 0o755)
    assert outcome[0] == "ok", outcome[1]
    result = outcome[1]
    assert result.deleted == [] and result.left[_name(1)].startswith("left whole: ")
    assert "may not delete the files in" in result.left[_name(1)]
    assert sorted(p.relative_to(locked).as_posix() for p in locked.rglob("*") if p.is_file()) == sorted(
        [f"{d}/{f}" for d in ("init", "best", "checkpoints/last") for f in ("train_config.json", "model.safetensors")]
        + ["metrics.json", runs.TRAIN_LOCK_FILE])


def test_a_foreign_record_is_left_and_no_run_is_deleted(tmp_path: Path) -> None:
    home = DataHome(tmp_path / "home")
    home.models.mkdir(parents=True)
    runs.runs_file(home).write_text("somebody's notes\n")
    for day in (3, 1, 2):
        _fake_run(home, _name(day), record=False)
    assert "not a record of runs" in runs._record_run(home, _name(2))
    result = runs.apply_run_retention(home, 1, protect={_name(2)})
    assert result.deleted == [] and len(_present(home)) == 3
    assert runs.runs_file(home).read_text() == "somebody's notes\n"


def test_keep_runs_setting_is_checked(tmp_path: Path) -> None:
    assert load(tmp_path).config("models").keep_runs == 3
    assert load(tmp_path, assignments=["models.keep_runs=0"]).config("models").keep_runs == 0
    with pytest.raises(SettingsError, match="models.keep_runs = -1"):
        load(tmp_path, assignments=["models.keep_runs=-1"])


def test_two_weekly_trainings_keep_one_run_with_keep_runs_1(tmp_path: Path) -> None:
    """The real trainer on two published versions: the second training deletes the first run; the record and
    `latest`'s run agree; the kept run's model is intact."""
    home = DataHome(tmp_path / "home")
    first, second = _name(1), _name(8)
    write_synthetic_version(home.datasets / first, SIZES, image_px=32, shards_per_split=2)
    one = runs.train_latest(home, tiny_config("", "", max_steps=2, eval_every=2), keep_runs=1)
    assert one.retention is not None and one.retention.deleted == []
    assert runs.read_runs(home) == [first]
    write_synthetic_version(home.datasets / second, SIZES, image_px=32, shards_per_split=2, seed=1)
    assert dataset.resolve_version(home).name == second
    messages: list[str] = []
    two = runs.train_latest(home, tiny_config("", "", max_steps=2, eval_every=2), progress=messages.append,
                            keep_runs=1)
    assert two.retention is not None and two.retention.deleted == [first]
    assert f"deleted the model run {first} (models.keep_runs = 1)" in messages
    assert _present(home) == [second] and runs.read_runs(home) == [second]
    _, best = runs.trained_model(home)
    assert (best / "train_config.json").is_file()
    # a run into a folder the caller names is not the home's run: never recorded, nothing deleted
    other = tmp_path / "elsewhere-run"
    three = runs.train_latest(home, tiny_config("", str(other), max_steps=2, eval_every=2), keep_runs=1)
    assert three.retention is None and runs.read_runs(home) == [second] and _present(home) == [second]


def test_a_runs_folder_this_account_may_not_change_fails_nothing(tmp_path: Path) -> None:
    """Renaming a run out of the way needs the runs folder writable; where it is not (another member's folder in a
    group-shared home, a 0555 one here), the runs stay whole and the reason is given, nothing raises."""
    home = DataHome(tmp_path / "home")
    _fake_run(home, _name(1))
    _fake_run(home, _name(2))
    folder = runs.runs_folder(home)
    os.chmod(folder, 0o555)
    try:    # without privileges: root too meets the folder's mode, on any machine (chattr +i needs a capability)
        outcome = without_privileges(lambda: runs.apply_run_retention(home, 1, protect={_name(2)}))
    finally:
        os.chmod(folder, 0o755)
    assert outcome[0] == "ok", outcome[1]
    result = outcome[1]
    assert result.deleted == [] and result.left[_name(1)].startswith("not deleted: ")
    assert (folder / _name(1) / "best/train_config.json").is_file()
