"""Hostile review rev16c: the data home as other accounts see it (read-only readers, a group-shared home).

One service account builds the home (umask 022); analysts and a training job's user only read it. Every
read-side command (`query`, `export`, `score`, `rerank`, `train` into a folder of their own, the README's
plain-DuckDB and webdataset readers) worked as ``nobody`` in this review; what did not is below, each a
strict xfail until it was fixed (all five, December 5, 2026).

The ``nobody`` account runs this checkout's CLI (``python -m dagster_project.cli`` from the repository root).
When it cannot reach the test's interpreter (a pyenv install under ``/root``, mode 0700), the interpreter,
its shared library and its standard library are hard-linked (copied across file systems) into a 0755
folder, and a virtual environment there points at this virtualenv's ``lib/``. Homes that ``nobody`` must
reach live in a 0755 ``tempfile`` folder (pytest's temporary root is 0700), removed afterwards, as in
``tests/e2e/test_permissions.py``.
"""
from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from formats.home import DataHome
from tests.e2e.conftest import copy_home

REPO = Path(__file__).resolve().parents[2]
NOBODY = pwd.getpwnam("nobody")
TIMEOUT = 120


def _link_or_copy(source: str, destination: str) -> str:
    try:
        os.link(source, destination)
    except OSError:
        shutil.copy2(source, destination)
    return destination


def _as_nobody(command: list[str], env: dict[str, str], *, umask: int = 0o022, group: bool = False,
               timeout: int = TIMEOUT) -> subprocess.CompletedProcess:
    """``command`` as ``nobody`` (uid, gid and supplementary groups dropped by the child before exec);
    ``group``: also in ``nobody``'s group as a supplementary group, as a member of a shared group would be."""
    return subprocess.run(command, capture_output=True, timeout=timeout, user=NOBODY.pw_uid, group=NOBODY.pw_gid,
                          extra_groups=[NOBODY.pw_gid] if group else [], cwd=REPO, env=env, umask=umask)


@pytest.fixture(scope="module")
def world_folder() -> Iterator[Path]:
    """A 0755 folder every account can reach (removed afterwards)."""
    folder = Path(tempfile.mkdtemp(prefix="pickapic-rev16c-"))
    os.chmod(folder, 0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def nobody_python(world_folder: Path) -> tuple[str, dict[str, str]]:
    """(interpreter, environment) with which ``nobody`` runs this checkout's code; $HOME is /nonexistent,
    as for the real account."""
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/nonexistent", "LANG": "C.UTF-8",
           "PYTHONPATH": str(REPO)}
    try:
        if _as_nobody([sys.executable, "-c", "import duckdb, dagster, dagster_project"], env).returncode == 0:
            return sys.executable, env
    except PermissionError:      # the exec itself is refused: a folder above the interpreter is not searchable
        pass
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    base, prefix = Path(sys.base_prefix), world_folder / "py"
    (prefix / "bin").mkdir(parents=True)
    (prefix / "lib").mkdir()
    _link_or_copy(os.path.realpath(sys.executable), str(prefix / "bin" / version))
    for lib in (base / "lib").glob("libpython*.so*"):
        if lib.is_symlink():
            os.symlink(os.readlink(lib), prefix / "lib" / lib.name)
        else:
            _link_or_copy(str(lib), str(prefix / "lib" / lib.name))
    shutil.copytree(base / "lib" / version, prefix / "lib" / version, symlinks=True, copy_function=_link_or_copy)
    venv = world_folder / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "pyvenv.cfg").write_text(f"home = {prefix / 'bin'}\ninclude-system-site-packages = false\n")
    os.symlink(Path(sys.prefix) / "lib", venv / "lib")
    os.symlink(prefix / "bin" / version, venv / "bin" / "python")
    env["LD_LIBRARY_PATH"] = str(prefix / "lib")
    python = str(venv / "bin" / "python")
    probe = _as_nobody([python, "-c", "import duckdb, dagster, dagster_project"], env)
    assert probe.returncode == 0, probe.stderr.decode()[-2000:]
    return python, env


@pytest.fixture(scope="module")
def reader_home(built_home: DataHome, world_folder: Path) -> Path:
    """The shared home as built (modes kept: umask 022, owned by this account), where ``nobody`` can reach it."""
    home = world_folder / "reader" / "home"
    home.parent.mkdir(mode=0o755)
    shutil.copytree(built_home.root, home, symlinks=True)
    return home


def _cli(python: tuple[str, dict[str, str]], args: list[str], **kwargs) -> subprocess.CompletedProcess:
    interpreter, env = python
    return _as_nobody([interpreter, "-m", "dagster_project.cli", *args], env, **kwargs)


def _snapshot(folder: Path) -> dict[str, tuple[int, int, int]]:
    """path -> (mode, size, mtime_ns) of everything under ``folder`` (links not followed)."""
    out = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            info = os.lstat(Path(root) / name)
            out[str(Path(root, name).relative_to(folder))] = (info.st_mode, info.st_size, info.st_mtime_ns)
    return out


def _dagster_instance_removed(home: Path) -> None:
    for part in ("history", "schedules", "storage"):
        shutil.rmtree(home / "dagster" / part, ignore_errors=True)


def test_dry_run_by_a_reader_is_no_traceback(reader_home: Path, nobody_python) -> None:
    before = _snapshot(reader_home)
    done = _cli(nobody_python, ["build", "--home", str(reader_home), "--dry-run"])
    err = done.stderr.decode(errors="replace")
    assert "Traceback" not in err, err[-3000:]
    # a plan, or a one-line refusal naming the cause
    assert done.returncode == 0 or "error" in err.strip().splitlines()[-1], err[-3000:]
    assert _snapshot(reader_home) == before


def test_build_by_a_reader_is_refused_without_blaming_the_lock_file(reader_home: Path, nobody_python) -> None:
    before = _snapshot(reader_home)
    done = _cli(nobody_python, ["build", "--home", str(reader_home)])
    err = done.stderr.decode(errors="replace")
    assert done.returncode != 0
    assert "Traceback" not in err, err[-3000:]
    assert "ermission" in err, err[-3000:]   # the cause: this account may not write the home
    # the lock file is the owner's own, not something planted: deleting it while a build holds it lets a
    # second build run beside the first (README, "Data home layout")
    assert "remove it" not in err and "symbolic link" not in err, err[-3000:]
    assert _snapshot(reader_home) == before


def test_dagster_instance_files_follow_the_umask(built_home: DataHome, tmp_path: Path) -> None:
    home = copy_home(built_home, tmp_path / "home").root
    _dagster_instance_removed(home)            # a home whose instance is created under this umask
    done = subprocess.run([sys.executable, "-m", "dagster_project.cli", "build", "--home", str(home), "--dry-run"],
                          capture_output=True, cwd=REPO, umask=0o002, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-3000:]
    databases = sorted((home / "dagster").rglob("*.db"))
    assert {"runs.db", "index.db", "schedules.db"} <= {p.name for p in databases}, databases
    # the database of runs (their run config) is read by no other account: the group's bits only (review rev25g)
    wrong = [f"{oct(stat.S_IMODE(p.stat().st_mode))} {p.relative_to(home)}" for p in databases
             if stat.S_IMODE(p.stat().st_mode) != (0o660 if p == home / "dagster/history/runs.db" or _run_events(p)
                                                   else 0o664)]
    assert not wrong, wrong


def test_train_lock_follows_the_umask(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    code = ("import sys; from pathlib import Path; from training.train import run_lock\n"
            "with run_lock(Path(sys.argv[1])): pass\n")
    done = subprocess.run([sys.executable, "-c", code, str(run)], capture_output=True, cwd=REPO, umask=0o002,
                          timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    assert stat.S_IMODE((run / ".train.lock").stat().st_mode) == 0o664


def test_a_group_member_builds_a_group_shared_home(built_home: DataHome, world_folder: Path, nobody_python) -> None:
    home = world_folder / "group" / "home"
    home.parent.mkdir(mode=0o755)
    shutil.copytree(built_home.root, home, symlinks=True)
    _dagster_instance_removed(home)            # the instance is created by the owner under umask 002, below
    group = NOBODY.pw_gid
    for root, dirs, files in os.walk(home):
        for name in dirs + files:
            path = Path(root) / name
            os.chown(path, -1, group, follow_symlinks=False)
            if not path.is_symlink():
                mode = stat.S_IMODE(path.stat().st_mode) | stat.S_IWGRP | (stat.S_ISGID if path.is_dir() else 0)
                os.chmod(path, mode)
    os.chown(home, -1, group)
    os.chmod(home, 0o2775)
    owner = subprocess.run([sys.executable, "-m", "dagster_project.cli", "build", "--home", str(home), "--dry-run"],
                           capture_output=True, cwd=REPO, umask=0o002, timeout=TIMEOUT)
    assert owner.returncode == 0, owner.stderr.decode(errors="replace")[-3000:]
    done = _cli(nobody_python, ["build", "--home", str(home), "--from", "2023-02-14", "--to", "2023-02-14"],
                umask=0o002, group=True)
    err = done.stderr.decode(errors="replace")
    assert "Traceback" not in err, err[-3000:]
    assert done.returncode == 0, err[-3000:]
    assert (home / "datasets" / "pickapic" / "latest" / "manifest.json").is_file()


def _run_events(path) -> bool:
    """Whether ``path`` is a run's event database (``history/runs/<run id>.db``), read by no other account (rev25j)."""
    return path.parent.name == "runs" and path.parent.parent.name == "history" and path.name not in ("index.db", ".db")
