"""Hostile review of model run retention (``training.runs.apply_run_retention``, ``models.keep_runs``).

Each test was a confirmed defect (strict xfail when the review filed it), fixed since.
"""
from __future__ import annotations

import os
import pickle
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Callable

import pytest

from formats.home import DataHome
from formats.outputs import RefusedOutput
from tests.accounts import clear_immutable, make_immutable, reported_immutable
from training import runs
from training.synthetic import tiny_config, write_synthetic_version

SIZES = {"train": 40, "validation": 12, "test": 12, "validation_unique": 12, "test_unique": 12}


def _name(day: int) -> str:
    return f"2023-03-{day:02d}-{'0' * 10}"


def _fake_run(home: DataHome, name: str) -> Path:
    """A run folder as a trainer leaves it (the files retention looks at)."""
    run = runs.runs_folder(home) / name
    for sub in ("init", "best", "checkpoints/last"):
        (run / sub).mkdir(parents=True, exist_ok=True)
        (run / sub / "train_config.json").write_text("{}\n")
        (run / sub / "model.safetensors").write_bytes(b"w" * 100)
    (run / runs.TRAIN_LOCK_FILE).write_bytes(b"")
    runs._record_run(home, name)     # as a training of `latest` records it: a run retention may delete
    return run


def _files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def _can_mount(tmp_path: Path) -> bool:
    src, dst = tmp_path / "probe-src", tmp_path / "probe-dst"
    src.mkdir()
    dst.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    if subprocess.run(["mount", "--bind", str(src), str(dst)], capture_output=True).returncode != 0:
        return False
    subprocess.run(["umount", str(dst)], check=True)
    return True


def _umount_all_under(folder: Path) -> None:
    for line in reversed(Path("/proc/self/mounts").read_text().splitlines()):
        point = line.split()[1].replace("\\040", " ")
        if point.startswith(str(folder) + "/"):
            subprocess.run(["umount", point], capture_output=True)


def _as_nobody(fn: Callable[[], Any]) -> tuple[str, Any]:
    """Run ``fn`` in a forked child that dropped to ``nobody`` (umask 002, as a member of a shared group);
    ('ok', its result) or ('raised', 'Type: message')."""
    nobody = pwd.getpwnam("nobody")
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:   # pragma: no cover - the child
        os.close(read_end)
        try:
            os.setgroups([])
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            os.umask(0o002)
            out: tuple[str, Any] = ("ok", fn())
        except BaseException as exc:   # noqa: BLE001 - reported to the parent
            out = ("raised", f"{type(exc).__name__}: {exc}")
        os.write(write_end, pickle.dumps(out))
        os._exit(0)
    os.close(write_end)
    data = b""
    while chunk := os.read(read_end, 1 << 16):
        data += chunk
    os.close(read_end)
    os.waitpid(pid, 0)
    return pickle.loads(data)


def _open_to_all(*paths: Path) -> None:
    for top in paths:
        for p in [top, *top.rglob("*")]:
            os.chmod(p, 0o777 if p.is_dir() else 0o666)


@pytest.fixture()
def shared_tmp() -> Any:
    """A folder every account can reach (pytest's tmp_path is under a 0700 folder of root's)."""
    folder = Path(tempfile.mkdtemp(prefix="pickapic-rev17-"))
    os.chmod(folder, 0o777)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chattr, mount, setuid)")


# --------------------------------------------------------------------------- 1: folders the tool did not make
def test_a_users_folder_named_deleting_is_not_deleted(tmp_path: Path) -> None:
    home = DataHome(tmp_path / "home")
    _fake_run(home, _name(1))
    mine = runs.runs_folder(home) / ".deleting-my-notes"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    runs.apply_run_retention(home, 0, protect={_name(1)})    # 0 = keep every run
    assert (mine / "notes.txt").read_text() == "mine"


@needs_root
def test_a_bind_mount_inside_a_run_is_not_deleted_through(tmp_path: Path) -> None:
    if not _can_mount(tmp_path):
        pytest.skip("bind mounts are not available here")
    home = DataHome(tmp_path / "home")
    old = _fake_run(home, _name(1))
    _fake_run(home, _name(2))
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "data.bin").write_text("not the tool's")
    (old / "best" / "extra").mkdir()
    subprocess.run(["mount", "--bind", str(precious), str(old / "best" / "extra")], check=True)
    try:
        result = runs.apply_run_retention(home, 1, protect={_name(2)})
    finally:
        _umount_all_under(tmp_path / "home")
    assert (precious / "data.bin").read_text() == "not the tool's"
    assert _name(1) not in result.deleted


# --------------------------------------------------------------------------- 2: retention fails a training
@needs_root
def test_a_run_folder_that_is_a_bind_mount_does_not_fail_the_training(tmp_path: Path) -> None:
    if not _can_mount(tmp_path):
        pytest.skip("bind mounts are not available here")
    home = DataHome(tmp_path / "home")
    write_synthetic_version(home.datasets / _name(2), SIZES, image_px=32, shards_per_split=2)
    archived = _fake_run(DataHome(tmp_path / "archive"), _name(1))   # an archived run mounted in for reading
    mount_point = runs.runs_folder(home) / _name(1)
    mount_point.mkdir(parents=True)
    subprocess.run(["mount", "--bind", str(archived), str(mount_point)], check=True)
    runs._record_run(home, _name(1))          # once trained here, now a mount in its place
    try:
        trained = runs.train_latest(home, tiny_config("", "", max_steps=2, eval_every=2), keep_runs=1)
        assert trained.retention is not None and _name(1) in trained.retention.left
    finally:
        _umount_all_under(tmp_path / "home")
    assert (archived / "best" / "train_config.json").is_file()


@needs_root
def test_a_sticky_runs_folder_does_not_raise(shared_tmp: Path) -> None:
    tmp_path = shared_tmp
    home = DataHome(tmp_path / "home")
    _fake_run(home, _name(1))                 # another member's (root's) run, group-writable
    (tmp_path / "home" / ".locks").mkdir(exist_ok=True)
    _open_to_all(tmp_path / "home")
    os.chmod(runs.runs_folder(home), 0o1777)  # the shared folder of runs: sticky, owned by another member
    assert _as_nobody(lambda: str(_fake_run(home, _name(2))))[0] == "ok"   # this account's new run
    outcome = _as_nobody(lambda: runs.apply_run_retention(home, 1, protect={_name(2)}))
    assert outcome[0] == "ok", outcome[1]
    assert _name(1) in outcome[1].left


# --------------------------------------------------------------------------- 3: half-deleted runs
def test_a_run_with_an_undeletable_file_is_left_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = DataHome(tmp_path / "home")
    old = _fake_run(home, _name(1))
    _fake_run(home, _name(2))
    before = _files(old)
    pinned = old / "best" / "model.safetensors"
    if not make_immutable(pinned):
        # no CAP_LINUX_IMMUTABLE (root in a default container, any other account) or no such flag on this file
        # system: the kernel's answer for an immutable file stands in (retention asks FS_IOC_GETFLAGS), and then
        # nothing else stops a deletion, so a retention that did not ask would delete the run
        reported_immutable(monkeypatch, pinned)
    try:
        result = runs.apply_run_retention(home, 1, protect={_name(2)})
    finally:
        clear_immutable(*runs.runs_folder(home).rglob("model.safetensors"))
    assert _name(1) not in result.deleted
    assert _files(runs.runs_folder(home) / _name(1)) == before


@needs_root
def test_a_run_with_a_sticky_folder_of_another_members_files_is_left_whole(shared_tmp: Path) -> None:
    tmp_path = shared_tmp
    home = DataHome(tmp_path / "home")
    old = _fake_run(home, _name(1))
    _fake_run(home, _name(2))
    (tmp_path / "home" / ".locks").mkdir(exist_ok=True)
    _open_to_all(tmp_path / "home")
    os.chmod(old / "best", 0o1777)
    before = _files(old)
    outcome = _as_nobody(lambda: runs.apply_run_retention(home, 1, protect={_name(2)}))
    assert outcome[0] == "ok", outcome[1]
    assert _name(1) not in outcome[1].deleted
    assert _files(runs.runs_folder(home) / _name(1)) == before


# --------------------------------------------------------------------------- 4: runs still read
def test_the_run_a_training_starts_from_is_not_deleted(tmp_path: Path) -> None:
    home = DataHome(tmp_path / "home")
    write_synthetic_version(home.datasets / _name(1), SIZES, image_px=32, shards_per_split=2)
    runs.train_latest(home, tiny_config("", "", max_steps=2, eval_every=2), keep_runs=1)
    warm = runs.runs_folder(home) / _name(1) / "best"
    write_synthetic_version(home.datasets / _name(2), SIZES, image_px=32, shards_per_split=2, seed=1)
    config = tiny_config("", "", max_steps=2, eval_every=2).replace(init_from=str(warm))
    runs.train_latest(home, config, keep_runs=1)
    assert (warm / "config.json").is_file()
    runs.evaluate_latest(home)   # the next asset of the same Dagster job


def test_a_run_into_a_named_output_dir_is_never_deleted(tmp_path: Path) -> None:
    home = DataHome(tmp_path / "home")
    write_synthetic_version(home.datasets / _name(1), SIZES, image_px=32, shards_per_split=2)
    runs.train_latest(home, tiny_config("", "", max_steps=2, eval_every=2), keep_runs=1)
    write_synthetic_version(home.datasets / _name(2), SIZES, image_px=32, shards_per_split=2, seed=1)
    # by hand: python -m training --output-dir HOME/models/preference_model/<v> (here on the data of `latest`; a
    # folder there named after another version is refused since review rev28e)
    named = runs.runs_folder(home) / _name(2)
    runs.train_latest(home, tiny_config("", str(named), max_steps=2, eval_every=2), keep_runs=1)
    assert (named / "best" / "train_config.json").is_file()
    write_synthetic_version(home.datasets / _name(3), SIZES, image_px=32, shards_per_split=2, seed=2)
    runs.train_latest(home, tiny_config("", "", max_steps=2, eval_every=2), keep_runs=1)
    assert (named / "best" / "train_config.json").is_file()
    with pytest.raises(RefusedOutput, match="named after the version it trains on"):
        runs.train_latest(home, tiny_config("", str(runs.runs_folder(home) / _name(9)), max_steps=2, eval_every=2),
                          keep_runs=1)
    assert not (runs.runs_folder(home) / _name(9)).exists()


# --------------------------------------------------------------------------- 5: more ways to fail a training
def test_a_trainer_swapping_checkpoints_during_the_walk_does_not_fail_retention(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import fcntl

    home = DataHome(tmp_path / "home")
    busy = _fake_run(home, _name(1))
    (busy / "checkpoints" / ".last.old").mkdir()            # _save_dir_atomic's old copy, about to go
    (busy / "checkpoints" / ".last.old" / "model.safetensors").write_bytes(b"w")
    _fake_run(home, _name(2))
    real_walk = os.walk

    def walk(top: Any, *args: Any, **kwargs: Any) -> Any:
        for root, dirs, files in real_walk(top, *args, **kwargs):
            if os.path.basename(root) == ".last.old":
                shutil.rmtree(root)     # the trainer's remove_run_path(old), after the walk listed the folder
            yield root, dirs, files

    monkeypatch.setattr(os, "walk", walk)
    fd = os.open(busy / runs.TRAIN_LOCK_FILE, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)      # the trainer holds its run
        result = runs.apply_run_retention(home, 1, protect={_name(2)})
    finally:
        os.close(fd)
    assert _name(1) in result.left and (busy / "best" / "train_config.json").is_file()


def test_a_deep_folder_in_an_old_run_does_not_fail_retention(tmp_path: Path) -> None:
    home = DataHome(tmp_path / "home")
    old = _fake_run(home, _name(1))
    _fake_run(home, _name(2))
    fd = os.open(old, os.O_RDONLY)
    for _ in range(1200):
        os.mkdir("d", dir_fd=fd)
        deeper = os.open("d", os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = deeper
    os.close(fd)
    try:
        result = runs.apply_run_retention(home, 1, protect={_name(2)})
    finally:   # pytest's tmp_path clean-up recurses too
        subprocess.run(["rm", "-rf", str(tmp_path / "home")], check=True)
    assert result.deleted == [_name(1)] or _name(1) in result.left


def test_a_hard_link_to_the_runs_lock_made_during_training_does_not_fail_the_training(tmp_path: Path) -> None:
    home = DataHome(tmp_path / "home")
    write_synthetic_version(home.datasets / _name(1), SIZES, image_px=32, shards_per_split=2)
    snapshot = tmp_path / "snapshot-of-the-lock"

    def during_training(message: str) -> None:
        if not snapshot.exists():
            os.link(home.locks / runs.RUNS_LOCK, snapshot)

    trained = runs.train_latest(home, tiny_config("", "", max_steps=2, eval_every=2), progress=during_training,
                                keep_runs=1)
    assert snapshot.exists() and trained.retention is not None
    assert (runs.runs_folder(home) / _name(1) / "best" / "train_config.json").is_file()
