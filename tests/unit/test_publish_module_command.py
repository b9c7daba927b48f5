"""``python -m pipelines.publish`` ends as every stage module does (``formats.commands.run_command``): into a
closed stdout (``| head`` that quit) it publishes and exits 0 quietly; an ordinary refusal is one line, exit 1."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from test_publish_fixtures import make_home

from formats.dataset import latest_version

REPO = Path(__file__).resolve().parents[2]
SETTINGS = "[publish]\nworkers = 1\nfsync = false\nmin_shards_per_split = 1\nmax_samples_per_shard = 5\n"


def _publish(home_root: Path, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipelines.publish", "--home", str(home_root)], cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, text=True, timeout=300, check=False, **kwargs)


def test_a_publish_into_a_closed_stdout_publishes_and_ends_quietly(tmp_path: Path) -> None:
    home = make_home(tmp_path / "home")
    (home.root / "pickapic.toml").write_text(SETTINGS)
    read, write = os.pipe()
    os.close(read)
    try:
        done = _publish(home.root, stdout=write, stderr=subprocess.PIPE)
    finally:
        os.close(write)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr, done.stderr[-3000:]
    assert latest_version(home.datasets) is not None


def test_a_refused_publish_is_one_line(tmp_path: Path) -> None:
    home = make_home(tmp_path / "home")
    (home.root / "pickapic.toml").write_text(SETTINGS)
    home.table_file("split_pairs").unlink()           # nothing to publish: an ordinary mistake, not a bug
    done = _publish(home.root, capture_output=True)
    assert done.returncode == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith("python -m pipelines.publish: error: "), done.stderr[-3000:]
