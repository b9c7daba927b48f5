"""fix33k: the scratch sweep never raises for what a planted folder holds, ``benchmarks.run`` never leaves its
benchmark running nor cuts its clean-up short, and a kept simulated history is keyed on the code too (review rev33k).

Beyond the review's tests: :func:`formats.trees.remove_tree` (now shared by the sweep and the publish) on a tree
deeper than PATH_MAX, keeping only its first error; the sweep going on past a folder it cannot lock and removing a
deep marked ``.new-`` folder; a running holder's own clean-up of a deep tree planted in its folder;
``benchmarks.run.isolated`` stopped by SIGTERM (the work folder removed too), by a SIGKILL to it (the benchmark
cleans up on its own), a second Ctrl-C (the benchmark killed at once), its handlers and signal mask restored, and
a process the benchmark forks keeping SIGTERM's usual meaning; ``benchmarks.history_marker`` (``nightly``'s
``.built``): a snapshot of another code version, or of the format before, is built again.
"""
from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from formats import locks, trees
from formats.locks import SCRATCH_MARKER, held_scratch_folder, sweep_scratch_folders

REPO = Path(__file__).resolve().parents[2]
NAME = re.compile(r"bench-[a-z]+")


def _deep(top: Path, depth: int, name: str = "d", files: int = 1) -> None:
    """``depth`` folders named ``name`` below ``top`` (made relative to each other), ``files`` files in each."""
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            for index in range(files):
                os.close(os.open(f"f{index}", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd))
            os.mkdir(name, dir_fd=fd)
            inner = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = inner
    finally:
        os.close(fd)


def _marked(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / SCRATCH_MARKER).touch()
    return folder


# --- formats.trees.remove_tree: no recursion, no path limit, one error kept ----------------------------------

def test_remove_tree_removes_a_tree_deeper_than_the_recursion_and_path_limits(fast_tmp):
    top = fast_tmp / "top"
    top.mkdir()
    _deep(top, 1500, name="ddd")                 # 6,000 characters of path: beyond PATH_MAX, beyond the recursion limit
    trees.remove_tree(top)
    assert not top.exists()


def test_remove_tree_keeps_only_the_first_error_and_removes_the_rest(fast_tmp, monkeypatch):
    top = fast_tmp / "top"
    top.mkdir()
    for index in range(300):
        (top / f"keep{index:03}").write_text("x")
    (top / "other").write_text("x")
    real_unlink = os.unlink
    seen = []

    def refusing(name, *args, **kwargs):
        if str(name).startswith("keep"):
            seen.append(name)
            raise PermissionError(errno.EPERM, "refused (simulated)", name)
        return real_unlink(name, *args, **kwargs)

    monkeypatch.setattr(trees.os, "unlink", refusing)
    with pytest.raises(PermissionError) as raised:
        trees.remove_tree(top)
    monkeypatch.undo()
    assert raised.value.filename == "keep000" and len(seen) == 300
    assert sorted(p.name for p in top.iterdir())[:1] == ["keep000"] and not (top / "other").exists()


def test_remove_tree_refuses_a_link_and_a_file(tmp_path):
    (tmp_path / "target").mkdir()
    (tmp_path / "target" / "kept").write_text("x")
    (tmp_path / "link").symlink_to(tmp_path / "target")
    (tmp_path / "file").write_text("x")
    for path in (tmp_path / "link", tmp_path / "file"):
        with pytest.raises(NotADirectoryError):
            trees.remove_tree(path)
    assert (tmp_path / "target" / "kept").is_file() and (tmp_path / "file").is_file()


def test_publish_still_exports_the_removers():
    from pipelines.publish import versions

    assert versions.remove_tree is trees.remove_tree and versions.remove_folder is trees.remove_folder


# --- the sweep ------------------------------------------------------------------------------------------------

def test_sweep_removes_a_deep_marked_folder_and_the_others_beside_it(fast_tmp):
    scratch = fast_tmp / "scratch"
    deep = _marked(scratch / "bench-deep")
    _deep(deep, 1500, name="ddd", files=2)
    _marked(scratch / "bench-plain")
    assert sweep_scratch_folders(scratch, NAME) == ["bench-deep", "bench-plain"]
    assert list(scratch.iterdir()) == []


def test_sweep_removes_an_old_deep_new_folder(fast_tmp):
    scratch = fast_tmp / "scratch"
    fresh = _marked(scratch / ".new-bench-killed")
    _deep(fresh, 1200)
    old = time.time() - locks.FRESH_SCRATCH_AGE_S - 60
    os.utime(fresh, (old, old))
    assert sweep_scratch_folders(scratch, NAME) == [".new-bench-killed"]
    assert not fresh.exists()


def test_sweep_goes_on_past_a_folder_it_cannot_lock(tmp_path, monkeypatch):
    scratch = tmp_path / "scratch"
    first, second = _marked(scratch / "bench-a"), _marked(scratch / "bench-b")
    real_try_lock = locks.try_lock
    calls = []

    def failing_once(fd, *args):
        calls.append(fd)
        if len(calls) == 1:
            raise OSError(errno.ENOLCK, "no locks available (simulated: a file system without flock)")
        return real_try_lock(fd, *args)

    monkeypatch.setattr(locks, "try_lock", failing_once)
    assert sweep_scratch_folders(scratch, NAME) == ["bench-b"]
    assert first.is_dir() and not second.exists()


def test_sweep_leaves_a_folder_a_running_holder_holds_even_when_deep(fast_tmp):
    scratch = fast_tmp / "scratch"
    with held_scratch_folder(scratch, "bench-") as folder:
        _deep(folder, 1200)
        assert sweep_scratch_folders(scratch, re.compile(r"bench-[0-9a-f]{12}")) == []
        assert folder.is_dir()
    assert not folder.exists()                   # the holder's own clean-up: no RecursionError either
    assert list(scratch.iterdir()) == []


# --- benchmarks.run.isolated ----------------------------------------------------------------------------------

def _session(script: str, **env_extra: str) -> subprocess.Popen:
    def defaults() -> None:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

    env = {**os.environ, "PYTHONPATH": str(REPO), **env_extra}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)], cwd=REPO, env=env,
                            start_new_session=True, preexec_fn=defaults,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _wait_for(path: Path, seconds: float = 30.0) -> str:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().endswith("\n"):
            return path.read_text()
        time.sleep(0.05)
    raise AssertionError(f"{path} never written")


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat_file:
            return stat_file.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _gone(pid: int, seconds: float = 20.0) -> bool:
    deadline = time.monotonic() + seconds
    while _running(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not _running(pid)


BENCHMARK_IN_A_WORK_FOLDER = """
    import os, time
    from benchmarks import work_folder
    from benchmarks.run import isolated

    def benchmark(record):
        with work_folder(None, "bench-f33k-") as base:
            for index in range(500):
                (base / f"f{index}").write_bytes(b"x")
            open(record, "w").write(f"{os.getpid()} {base}\\n")
            time.sleep(60)
        return {}

    isolated(benchmark, os.environ["F33K_RECORD"])
"""


@pytest.mark.parametrize("how", ["sigterm", "sighup", "sigkill"])
def test_stopping_benchmarks_run_stops_the_benchmark_and_removes_its_work_folder(fast_tmp, how):
    record, temp = fast_tmp / "record.txt", fast_tmp / "tmp"
    temp.mkdir()
    parent = _session(BENCHMARK_IN_A_WORK_FOLDER, F33K_RECORD=str(record), TMPDIR=str(temp))
    child, work = _wait_for(record).split()
    child = int(child)
    try:
        parent.send_signal({"sigterm": signal.SIGTERM, "sighup": signal.SIGHUP, "sigkill": signal.SIGKILL}[how])
        code = parent.wait(timeout=30)
        assert _gone(child), "the benchmark outlived benchmarks.run"
    finally:
        if _running(child):
            os.kill(child, signal.SIGKILL)
    assert not Path(work).exists()
    if how != "sigkill":
        assert code == 128 + (signal.SIGTERM if how == "sigterm" else signal.SIGHUP)


def test_a_second_ctrl_c_kills_a_benchmark_whose_clean_up_hangs(fast_tmp):
    started, record = fast_tmp / "started.txt", fast_tmp / "record.txt"
    parent = _session("""
        import os, time
        from benchmarks.run import isolated

        def benchmark(started, record):
            try:
                open(started, "w").write("yes\\n")
                time.sleep(60)
            finally:
                open(record, "w").write(f"{os.getpid()}\\n")
                time.sleep(60)                        # a clean-up that never ends
            return {}

        isolated(benchmark, os.environ["F33K_STARTED"], os.environ["F33K_RECORD"])
    """, F33K_STARTED=str(started), F33K_RECORD=str(record))
    try:
        _wait_for(started)
        os.killpg(parent.pid, signal.SIGINT)          # the first Ctrl-C: the benchmark begins its clean-up
        child = int(_wait_for(record))
        time.sleep(0.3)
        assert parent.poll() is None                  # still waiting for the clean-up
        os.killpg(parent.pid, signal.SIGINT)          # the second: no more waiting
        parent.wait(timeout=15)
        assert _gone(child, 5)
    finally:
        if parent.poll() is None:
            os.killpg(parent.pid, signal.SIGKILL)
            parent.wait()
        if record.exists() and _running(int(record.read_text())):
            os.kill(int(record.read_text()), signal.SIGKILL)


def _value(x):
    return {"x": x, "pid": os.getpid()}


def test_isolated_restores_the_handlers_and_the_signal_mask():
    from benchmarks import run

    before = (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGHUP),
              signal.getsignal(signal.SIGINT), signal.pthread_sigmask(signal.SIG_BLOCK, []))
    value, _peak, error = run.isolated(_value, 3)
    assert error is None and value["x"] == 3 and value["pid"] != os.getpid()
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGHUP),
            signal.getsignal(signal.SIGINT), signal.pthread_sigmask(signal.SIG_BLOCK, [])) == before


def test_a_process_the_benchmark_forks_keeps_sigterms_usual_meaning(tmp_path):
    # a pool's worker forked by the benchmark inherits its handler: SIGTERM (the pool's terminate) must end it at
    # once, not raise KeyboardInterrupt in it nor be ignored after a first one
    script = textwrap.dedent("""
        import os, signal, sys, time
        from benchmarks.run import _interrupt_once

        _interrupt_once(os.getpid())
        pid = os.fork()
        if pid == 0:
            time.sleep(30)
            os._exit(0)
        time.sleep(0.2)
        os.kill(pid, signal.SIGTERM)
        _, status = os.waitpid(pid, 0)
        print(os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM)
        try:
            os.kill(os.getpid(), signal.SIGTERM)       # the benchmark itself: KeyboardInterrupt once
            time.sleep(5)
        except KeyboardInterrupt:
            os.kill(os.getpid(), signal.SIGTERM)       # then ignored: its clean-up runs to its end
            time.sleep(0.2)
            print("cleaned up")
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["True", "cleaned", "up"], done.stderr


# --- benchmarks.history_marker: nightly's .built ------------------------------------------------------------

def _fake_simulate(calls):
    def simulate(home, config):
        calls.append(config)
        day = home.raw_day(config.day(config.days - 1))
        day.mkdir(parents=True)
        (day / "rankings.jsonl.gz").write_bytes(b"")
    return simulate


def test_history_marker_holds_the_configuration_the_code_versions_and_the_simulators_code():
    from benchmarks import history_marker
    from dagster_project.versions import code_versions
    from simulator import SimConfig

    config = SimConfig(days=3, users=10, rankings_per_day=10, image_size=64, seed=0)
    marker = json.loads(history_marker(config))
    assert marker["users"] == 10 and marker["pickapic_code_versions"] == code_versions()
    assert re.fullmatch(r"[0-9a-f]{64}", marker["simulator_code_sha256"])
    assert history_marker(config) == history_marker(config)     # deterministic
    other = SimConfig(days=3, users=11, rankings_per_day=10, image_size=64, seed=0)
    assert history_marker(other) != history_marker(config)


def test_nightly_rebuilds_a_snapshot_built_by_another_code_version(tmp_path, monkeypatch):
    from benchmarks import nightly
    from dagster_project import versions

    calls = []
    monkeypatch.setattr(nightly, "simulate", _fake_simulate(calls))
    monkeypatch.setattr(nightly, "timed_build", lambda home: (0.0, ""))
    snapshot, _spare = nightly.prepare(1, 10, 10, 64, tmp_path)
    nightly.prepare(1, 10, 10, 64, tmp_path)
    assert len(calls) == 1                                      # same code: reused
    monkeypatch.setitem(versions.CODE_VERSIONS, "ingest", versions.CODE_VERSIONS["ingest"] + "-upgraded")
    nightly.prepare(1, 10, 10, 64, tmp_path)
    assert len(calls) == 2                                      # an upgraded stage: built again
    built = json.loads((snapshot / ".built").read_text())
    assert built["pickapic_code_versions"]["ingest"].endswith("-upgraded")
    config_only = {k: v for k, v in built.items() if k not in ("pickapic_code_versions", "simulator_code_sha256")}
    (snapshot / ".built").write_text(json.dumps(config_only, sort_keys=True) + "\n")   # the format before fix33k
    nightly.prepare(1, 10, 10, 64, tmp_path)
    assert len(calls) == 3
