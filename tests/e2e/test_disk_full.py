"""A real full disk (a small tmpfs): `pickapic build` and `pickapic query --output` say so in one line.

Before, the build died with a SQLAlchemy traceback from the Dagster instance storage. Mounting a tmpfs
needs root (the CI container runs as root); the wording of every layer is also unit-tested in
``tests/unit/test_disk_full.py`` without a mount.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from formats.home import DataHome
from pipelines.publish.config import PublishConfig
from pipelines.publish.version import publish_dataset
from simulator import SimConfig, simulate

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from test_publish_fixtures import make_home  # noqa: E402


@pytest.fixture()
def small_disk():
    """A 40 MB tmpfs mounted for the test, unmounted after."""
    point = Path(tempfile.mkdtemp(prefix="pickapic-full-"))
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40m,mode=0755", "tmpfs", str(point)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        point.rmdir()
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield point
    finally:
        subprocess.run(["umount", str(point)], check=True)
        point.rmdir()


def _fill(disk: Path, leave: int) -> None:
    """Take all free space of ``disk`` but ``leave`` bytes."""
    info = os.statvfs(disk)
    fd = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.posix_fallocate(fd, 0, info.f_bavail * info.f_frsize - leave)
    finally:
        os.close(fd)


def _pickapic(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dagster_project.cli", *args], capture_output=True, text=True,
                          timeout=600)


def test_build_on_a_full_disk_says_where(small_disk: Path) -> None:
    home = DataHome(small_disk / "home")
    simulate(home, SimConfig(days=1, users=4, rankings_per_day=10, image_size=32, seed=1, workers=1))
    raw_before = sorted(p.relative_to(home.root) for p in home.raw.rglob("*"))
    _fill(small_disk, 200 * 1024)
    done = _pickapic("build", "--home", str(home.root))
    assert done.returncode == 1, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"pickapic build: error: no space left on device at {home.root}"), done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "sqlalchemy" not in done.stderr.lower()
    assert sorted(p.relative_to(home.root) for p in home.raw.rglob("*")) == raw_before   # the raw zone is untouched


def test_query_output_on_a_full_disk_says_where(small_disk: Path, tmp_path: Path) -> None:
    home = make_home(tmp_path / "home", num_rankings=30, seed=5)
    publish_dataset(home, PublishConfig(workers=1, fsync=False))
    _fill(small_disk, 64 * 1024)
    target = small_disk / "result.csv"
    done = _pickapic("query", "--home", str(home.root), "SELECT range, repeat('x', 200) AS pad FROM range(100000)",
                     "--format", "csv", "--output", str(target))
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert done.stderr.startswith(f"pickapic query: error: no space left on device at {target}"), done.stderr
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler"]           # no result, no temp file
