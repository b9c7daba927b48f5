"""Fix33t of review rev33t (``tests/unit/test_hostile_rev33t.py``), tested beyond the review's tests.

``formats.trees.remove_tree(path, last=NAME)`` removes the file ``NAME`` of ``path`` only once everything else is gone
(the scratch sweep's marker: a folder it could not empty stays marked and a later sweep removes it); ``remove_tree``
and ``remove_folder`` never enter a file system mounted inside the tree (a folder of another device, or a mount point
of ``/proc/self/mountinfo``: a bind mount keeps the device), leave it whole and raise EXDEV once the rest is removed;
``benchmarks.run``'s stopped benchmark ends itself ``STOP_WAIT_S`` after its first stop signal (SIGALRM);
``benchmarks.history_marker`` leaves ``SimConfig.workers`` out.
"""
from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from formats import trees
from formats.locks import SCRATCH_MARKER, held_scratch_folder, sweep_scratch_folders
from formats.trees import mounts_under, remove_folder, remove_tree
from tests.accounts import check_as_nobody

REPO = Path(__file__).resolve().parents[2]
AS_ROOT = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to another account")


def _as_nobody(check) -> None:
    """Run ``check`` as uid/gid 65534 (root empties every folder, so no obstacle would hold)."""
    check_as_nobody(check)


@pytest.fixture()
def shared_tmp():
    base = Path(tempfile.mkdtemp(prefix="fix33t-"))
    os.chmod(base, 0o777)
    try:
        yield base
    finally:
        for root, dirs, _files in os.walk(base):
            for name in dirs:
                os.chmod(os.path.join(root, name), 0o755)
        shutil.rmtree(base, ignore_errors=True)


def _fake_mountinfo(path: Path, points: list[str]) -> str:
    """A mountinfo table listing ``points`` (escaped as the kernel writes them) after this process's real lines."""
    def escape(point: str) -> str:
        return "".join(f"\\{ord(c):03o}" if c in " \t\n\\" else c for c in point)

    real = Path("/proc/self/mountinfo").read_text()
    lines = [f"{900 + i} 1 0:99 / {escape(p)} rw,relatime - tmpfs none rw" for i, p in enumerate(points)]
    path.write_text(real + "\n".join(lines) + "\n")
    return str(path)


# --- the marker removed last ------------------------------------------------------------------------------------

def test_last_is_removed_with_the_folder_when_everything_else_goes(tmp_path):
    folder = tmp_path / "spill-a"
    (folder / "deep" / "er").mkdir(parents=True)
    (folder / SCRATCH_MARKER).touch()
    (folder / "deep" / "er" / "rows.arrow").write_bytes(b"x")
    (folder / "z.parquet").write_bytes(b"y")
    remove_tree(folder, last=SCRATCH_MARKER)
    assert not folder.exists()


def test_last_named_like_a_folder_is_removed_as_a_folder(tmp_path):
    folder = tmp_path / "spill-a"
    (folder / SCRATCH_MARKER / "inner").mkdir(parents=True)
    remove_tree(folder, last=SCRATCH_MARKER)
    assert not folder.exists()


def test_last_only_applies_to_the_top_folder(tmp_path):
    folder = tmp_path / "spill-a"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / SCRATCH_MARKER).touch()
    remove_tree(folder, last=SCRATCH_MARKER)
    assert not folder.exists()


@AS_ROOT
def test_a_folder_that_could_not_be_emptied_keeps_only_its_marker_and_what_blocked(shared_tmp):
    folder = shared_tmp / "spill-a"

    def check() -> None:
        (folder / "part").mkdir(parents=True)
        (folder / SCRATCH_MARKER).touch()
        (folder / "a.parquet").write_bytes(b"x")
        (folder / "zz.parquet").write_bytes(b"x")
        (folder / "part" / "rows.arrow").write_bytes(b"y")
        os.chmod(folder / "part", 0o555)
        with pytest.raises(PermissionError):
            remove_tree(folder, last=SCRATCH_MARKER)
        assert sorted(os.listdir(folder)) == [SCRATCH_MARKER, "part"]     # the rest removed, the marker kept
        os.chmod(folder / "part", 0o755)
        remove_tree(folder, last=SCRATCH_MARKER)
        assert not folder.exists()

    _as_nobody(check)


@AS_ROOT
def test_a_held_folder_its_holder_could_not_empty_is_swept_by_a_later_run(shared_tmp):
    import re

    scratch = shared_tmp / "scratch"

    def check() -> None:
        with held_scratch_folder(scratch, "ingest-") as folder:
            (folder / "part").mkdir()
            (folder / "part" / "rows.arrow").write_bytes(b"y")
            os.chmod(folder / "part", 0o555)
        assert (folder / SCRATCH_MARKER).is_file()             # left marked, not taken for another program's
        os.chmod(folder / "part", 0o755)
        assert sweep_scratch_folders(scratch, re.compile(r"ingest-[0-9a-f]+")) == [folder.name]
        assert os.listdir(scratch) == []

    _as_nobody(check)


# --- mounted file systems: the mountinfo table (a bind mount keeps the device) ----------------------------------

def test_mounts_under_unescapes_the_table_and_takes_only_points_strictly_under(tmp_path, monkeypatch):
    tree = tmp_path / "tree"
    (tree / "a b\\c").mkdir(parents=True)
    (tmp_path / "tree-sibling").mkdir()
    monkeypatch.setattr(trees, "MOUNTINFO", _fake_mountinfo(
        tmp_path / "mountinfo", [str(tree / "a b\\c"), str(tmp_path / "tree-sibling"), str(tree),
                                 str(tree / "gone")]))
    info = os.lstat(tree / "a b\\c")
    assert mounts_under(tree) == {(info.st_dev, info.st_ino)}


def test_mounts_under_through_a_link_to_the_tree(tmp_path, monkeypatch):
    tree = tmp_path / "tree"
    (tree / "mnt").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tree)
    monkeypatch.setattr(trees, "MOUNTINFO", _fake_mountinfo(tmp_path / "mountinfo", [str(tree / "mnt")]))
    info = os.lstat(tree / "mnt")
    assert mounts_under(tmp_path / "link") == {(info.st_dev, info.st_ino)}


def test_an_unreadable_mount_table_changes_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(trees, "MOUNTINFO", str(tmp_path / "absent"))
    (tmp_path / "tree" / "a").mkdir(parents=True)
    (tmp_path / "tree" / "a" / "f").write_bytes(b"x")
    assert mounts_under(tmp_path / "tree") == set()
    remove_tree(tmp_path / "tree")
    assert not (tmp_path / "tree").exists()


@pytest.mark.parametrize("remove", [remove_tree, remove_folder], ids=["remove_tree", "remove_folder"])
def test_a_mount_point_of_the_table_is_left_whole_and_the_rest_removed(tmp_path, monkeypatch, remove):
    tree = tmp_path / "tree"
    point = tree / "v1" / "deep" / "mnt with space"
    (point / "inner").mkdir(parents=True)
    (point / "inner" / "keep.txt").write_text("precious")
    (point / "keep.txt").write_text("precious")
    (tree / "v1" / "data.parquet").write_bytes(b"ours")
    (tree / "v1" / "deep" / "zz.parquet").write_bytes(b"ours")
    (tree / "v2").mkdir()
    (tree / "v2" / "data.parquet").write_bytes(b"ours")
    monkeypatch.setattr(trees, "MOUNTINFO", _fake_mountinfo(tmp_path / "mountinfo", [str(point)]))
    with pytest.raises(OSError) as raised:
        remove(tree)
    assert raised.value.errno == errno.EXDEV and raised.value.filename == "mnt with space"
    assert sorted(str(p.relative_to(tree)) for p in tree.rglob("*")) == [
        "v1", "v1/deep", "v1/deep/mnt with space", "v1/deep/mnt with space/inner",
        "v1/deep/mnt with space/inner/keep.txt", "v1/deep/mnt with space/keep.txt"]


def test_a_file_bind_mounted_in_the_tree_is_not_unlinked(tmp_path, monkeypatch):
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "bound.txt").write_text("precious")
    (tree / "ours.txt").write_text("ours")
    monkeypatch.setattr(trees, "MOUNTINFO", _fake_mountinfo(tmp_path / "mountinfo", [str(tree / "bound.txt")]))
    with pytest.raises(OSError) as raised:
        remove_tree(tree, last="ours.txt")
    assert raised.value.errno == errno.EXDEV
    assert sorted(os.listdir(tree)) == ["bound.txt", "ours.txt"]           # a marker kept: not emptied


def test_the_scratch_sweep_leaves_a_mount_inside_a_marked_folder_and_the_folder_marked(tmp_path, monkeypatch):
    import re

    scratch = tmp_path / "scratch"
    folder = scratch / "spill-a"
    (folder / "mnt").mkdir(parents=True)
    (folder / SCRATCH_MARKER).touch()
    (folder / "mnt" / "keep.txt").write_text("precious")
    (folder / "ours.arrow").write_bytes(b"x")
    monkeypatch.setattr(trees, "MOUNTINFO", _fake_mountinfo(tmp_path / "mountinfo", [str(folder / "mnt")]))
    assert sweep_scratch_folders(scratch, re.compile(r"spill-[a-z]+")) == []
    assert sorted(os.listdir(folder)) == [SCRATCH_MARKER, "mnt"]
    assert (folder / "mnt" / "keep.txt").read_text() == "precious"


# --- real mounts (a private mount namespace, as root) ------------------------------------------------------------

def _can_mount() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs none /mnt"],
                          capture_output=True).returncode == 0


@pytest.mark.skipif(not _can_mount(), reason="needs root and a private mount namespace (unshare -m) to mount")
def test_real_mounts_deep_down_a_bound_file_and_the_device_check_without_the_table(tmp_path):
    tree, outside = tmp_path / "tree", tmp_path / "outside"
    (tree / "a" / "b" / "tmp fs").mkdir(parents=True)
    (tree / "a" / "b" / "bound").mkdir()
    (tree / "a" / "file.txt").write_text("mount target")
    (tree / "a" / "b" / "ours.parquet").write_bytes(b"ours")
    outside.mkdir()
    (outside / "file.txt").write_text("outside file")
    (outside / "dir").mkdir()
    script = textwrap.dedent(f"""
        mount --make-rprivate / 2>/dev/null
        mount -t tmpfs none "{tree}/a/b/tmp fs" || exit 3
        mount --bind {outside}/dir {tree}/a/b/bound || exit 3
        mount --bind {outside}/file.txt {tree}/a/file.txt || exit 3
        echo precious > "{tree}/a/b/tmp fs/keep.txt"
        echo precious > {tree}/a/b/bound/keep.txt
        {sys.executable} -c '
        from formats import trees
        for table in ("/proc/self/mountinfo", "/nonexistent"):
            trees.MOUNTINFO = table
            try:
                trees.remove_tree("{tree}")
            except OSError as exc:
                print("raised", exc.errno)
        '
        cat "{tree}/a/b/tmp fs/keep.txt" {tree}/a/file.txt
        umount "{tree}/a/b/tmp fs" {tree}/a/b/bound {tree}/a/file.txt
    """)
    done = subprocess.run(["unshare", "-m", "sh", "-c", script], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=60)
    assert done.returncode == 0, done.stderr
    # with the table: all three kept (EXDEV first); without it (the second pass) the tmpfs is still told by its
    # device, and the bound file by the kernel (EBUSY: a mount point is never unlinked); the bound folder, of the same
    # device, only the table tells
    assert done.stdout.split("\n")[:2] == [f"raised {errno.EXDEV}", f"raised {errno.EBUSY}"], done.stdout
    assert done.stdout.split("\n")[2:4] == ["precious", "outside file"], done.stdout
    assert (outside / "file.txt").read_text() == "outside file"
    assert not (tree / "a" / "b" / "ours.parquet").exists()


# --- benchmarks.run: the stopped benchmark bounds its own clean-up ----------------------------------------------

def _stopped_child(clean_up_s: float) -> tuple[int, float]:
    """Fork a child that installs the benchmark's handlers (STOP_WAIT_S 1 s), is stopped by SIGTERM, and spends
    ``clean_up_s`` cleaning up; its wait status and how long it took after the signal."""
    from benchmarks import run

    pid = os.fork()
    if pid == 0:                                           # pragma: no cover (the child)
        code = 1
        try:
            run.STOP_WAIT_S = 1.0
            run._interrupt_once(os.getpid())
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(30)
            except KeyboardInterrupt:
                os.kill(os.getpid(), signal.SIGTERM)       # a later stop signal: ignored
                time.sleep(clean_up_s)
                code = 7
        finally:
            os._exit(code)
    started = time.monotonic()
    _, status = os.waitpid(pid, 0)
    return status, time.monotonic() - started


def test_a_stopped_benchmarks_clean_up_ends_at_stop_wait_by_its_own_timer():
    status, took = _stopped_child(30.0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGALRM
    assert 0.9 <= took < 10


def test_a_clean_up_within_stop_wait_ends_as_it_would_have():
    status, took = _stopped_child(0.1)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 7
    assert took < 1.0


def _itimer() -> float:
    return signal.getitimer(signal.ITIMER_REAL)[0]


def test_a_benchmark_not_stopped_has_no_timer_set():
    from benchmarks.run import isolated

    value, _peak, error = isolated(_itimer)
    assert error is None and value == 0.0


# --- benchmarks.history_marker: workers left out -------------------------------------------------------------

def test_history_marker_does_not_depend_on_the_number_of_rendering_processes():
    import json

    from benchmarks import history_marker
    from simulator import SimConfig

    base = dict(days=3, users=10, rankings_per_day=10, image_size=64, seed=0)
    one, four = SimConfig(**base, workers=1), SimConfig(**base, workers=4)
    assert history_marker(one) == history_marker(four)
    assert "workers" not in json.loads(history_marker(one))
    assert history_marker(SimConfig(**{**base, "seed": 1}, workers=1)) != history_marker(one)
