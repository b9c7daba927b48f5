"""Hostile review rev16d (December 5, 2026): a group-shared home as a second member of the group builds it, after
the rev16c fixes (the instance's databases given ``0666 & ~umask``). Runs as ``nobody`` like
``tests/e2e/test_hostile_rev16c_readers.py`` and reuses its fixtures; each test was a strict xfail until fixed (December 5)."""
from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.test_hostile_rev16c_readers import NOBODY, REPO, _as_nobody, nobody_python, world_folder  # noqa: F401

# what a build does with the instance before its runs: use_home, then record the raw days' content versions
_OBSERVE = """
import sys
from pathlib import Path
import dagster as dg
from formats.home import DataHome
from dagster_project.build import use_home
from dagster_project.staleness import record_observations
use_home(DataHome(Path(sys.argv[1])))
with dg.DagsterInstance.get() as instance:
    record_observations(instance, {sys.argv[2]: sys.argv[3]})
print("recorded")
"""


_REFUSED = """
import sys
from pathlib import Path
from formats.home import DataHome
from dagster_project.build import use_home
try:
    use_home(DataHome(Path(sys.argv[1])))
except PermissionError as exc:
    print("refused:", exc)
"""


def _group_home_observed_by_owner(home: Path, umask: int) -> None:
    """Make ``home`` as the README's group-shared home (owned by nobody's group, setgid), then let this account (the
    owner) record a raw day's observation in it under ``umask``: the instance is created then."""
    home.parent.mkdir(mode=0o755)
    home.mkdir()
    os.chown(home, -1, NOBODY.pw_gid)
    os.chmod(home, 0o2775)
    owner = subprocess.run([sys.executable, "-c", _OBSERVE, str(home), "2023-02-14", "v1"], capture_output=True,
                           text=True, cwd=REPO, umask=umask, timeout=120)
    assert owner.returncode == 0, owner.stderr[-2000:]


def test_a_group_member_records_new_raw_days_in_a_group_shared_home(world_folder: Path, nobody_python) -> None:  # noqa: F811
    if os.geteuid() != 0:
        pytest.fail("needs root to run a second account (nobody)")
    home = world_folder / "group16d" / "home"
    _group_home_observed_by_owner(home, umask=0o002)
    wrong = [f"{oct(stat.S_IMODE(p.stat().st_mode))} {p.relative_to(home)}"      # runs.db: group only (rev25g)
             for p in sorted((home / "dagster").rglob("*.db"))
             if stat.S_IMODE(p.stat().st_mode) != (0o660 if p == home / "dagster/history/runs.db" or _run_events(p)
                                                   else 0o664)]
    python, env = nobody_python
    member = _as_nobody([python, "-c", _OBSERVE, str(home), "2023-02-15", "v2"], env, umask=0o002, group=True)
    err = member.stderr.decode(errors="replace")
    assert member.returncode == 0 and b"recorded" in member.stdout, (wrong, [line for line in err.splitlines() if "Error" in line][-3:])
    assert not wrong, wrong


def test_a_group_member_after_the_readmes_chmod_gets_no_sqlite_traceback(world_folder: Path,  # noqa: F811
                                                                       nobody_python) -> None:  # noqa: F811
    if os.geteuid() != 0:
        pytest.fail("needs root to run a second account (nobody)")
    home = world_folder / "group16d-old" / "home"
    _group_home_observed_by_owner(home, umask=0o022)   # the instance created under umask 022
    os.chmod(home / "dagster", 0o2775)
    for database in sorted((home / "dagster").rglob("*.db")):   # the databases only: their folders stay 0755
        os.chmod(database, 0o664)
    python, env = nobody_python
    refused = _as_nobody([python, "-c", _REFUSED, str(home)], env, umask=0o002, group=True)
    out = refused.stdout.decode(errors="replace")
    # refused before Dagster starts, naming the folder SQLite would have to write its journal into
    assert refused.returncode == 0 and "refused:" in out and "Permission denied" in out and "history" in out, \
        (out, refused.stderr.decode(errors="replace")[-1500:])
    # the README's advice (December 5): group write on the whole instance, folders and databases
    subprocess.run(["chmod", "-R", "g+w", str(home / "dagster")], check=True)
    member = _as_nobody([python, "-c", _OBSERVE, str(home), "2023-02-15", "v2"], env, umask=0o002, group=True)
    err = member.stderr.decode(errors="replace")
    assert "Traceback" not in err, [line for line in err.splitlines() if "Error" in line][-3:]
    assert member.returncode == 0 and b"recorded" in member.stdout, err[-2000:]


def test_the_precheck_follows_an_instance_configured_elsewhere(world_folder: Path, nobody_python) -> None:  # noqa: F811
    if os.geteuid() != 0:
        pytest.fail("needs root to run a second account (nobody)")
    home = world_folder / "moved16d" / "home"
    (home / "dagster" / "history").mkdir(parents=True)
    home.parent.chmod(0o755)
    (home / "dagster" / "history" / "runs.db").write_bytes(b"")       # left over from before the move, root's
    instance = home / "dagster" / "instance"
    (home / "dagster" / "dagster.yaml").write_text(          # the user's own: the instance's storage moved
        f"telemetry:\n  enabled: false\nstorage:\n  sqlite:\n    base_dir: {instance}\n")
    for path in [home, *home.rglob("*")]:
        if "history" not in path.parts:
            os.chown(path, NOBODY.pw_uid, NOBODY.pw_gid)
    python, env = nobody_python
    member = _as_nobody([python, "-c", _OBSERVE, str(home), "2023-02-15", "v2"], env)
    err = member.stderr.decode(errors="replace")
    assert member.returncode == 0 and b"recorded" in member.stdout, err[-1500:]
    assert any(instance.rglob("*.db"))


def _run_events(path) -> bool:
    """Whether ``path`` is a run's event database (``history/runs/<run id>.db``), read by no other account (rev25j)."""
    return path.parent.name == "runs" and path.parent.parent.name == "history" and path.name not in ("index.db", ".db")
