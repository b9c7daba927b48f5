"""Hostile review rev24j of commit 0473e7a, the fix of review rev24c (tests/unit/test_hostile_rev24c.py,
tests/unit/test_fix24c_published.py).

Reviewed, by running the real ``pickapic`` CLI, the real publish and DuckDB on seeded homes: ``pickapic query``'s
sandbox now that the version's escaped path is one of DuckDB's ``allowed_directories``; ``pickapic export``
reading each manifest-listed sidecar and ``prompt_counts.parquet`` whole to check its sha256; the meta snapshots'
``SourceChanged`` when a warehouse file changes under a running publish; and the sweep of the ``.latest.<pid>.tmp``
links of killed switches. Each test states the correct behaviour; each was a strict xfail, all six fixed the same day (markers removed).

Checked and found sound (no test): ``..`` paths, globs and symbolic links (to a file or to a folder) under the
escaped path are refused by DuckDB; a planted sidecar is not exported and a listed one missing is named; a
version that has an empty split is refused before any required view is opened (``require_trainable``), so a
required view is never legitimately empty in the publish gate.
"""
from __future__ import annotations

import datetime
import os
import subprocess
import sys
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from test_publish_fixtures import history_home, make_home, publish_until, published_home

from formats.dataset import resolve_version
from formats.files import write_parquet_atomic
from formats.home import DataHome
from pipelines.publish import samples
from pipelines.publish.config import PublishConfig
from pipelines.publish.version import publish_dataset
from schemas import get_schema

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}
FAST = PublishConfig(workers=1, fsync=False)


def _cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dagster_project.cli", *args], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=timeout, check=False)


# --------------------------------------------------------------------------- the query sandbox
def test_query_cannot_read_a_folder_named_as_the_escaped_version_path(tmp_path: Path) -> None:
    home = published_home(tmp_path / "h[1]" / "home")
    version = resolve_version(home)
    assert _cli("query", "--home", str(home.root), "SELECT count(*) AS n FROM pairs").returncode == 0
    planted = tmp_path / "h[[]1]" / "home" / "datasets" / "pickapic" / version.name
    planted.mkdir(parents=True)
    (planted / "secret.txt").write_text("top secret outside the version\n")
    run = _cli("query", "--home", str(home.root), "--format", "csv",
               f"SELECT content FROM read_text('{planted / 'secret.txt'}')")
    assert "top secret" not in run.stdout
    assert run.returncode != 0


# --------------------------------------------------------------------------- export memory
EXPORT_RSS = """
import sys
def _peak_kib():   # VmHWM: this process's own peak RSS (ru_maxrss carries the forking pytest worker's over exec)
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
from dagster_project.cli import main
code = main(sys.argv[1:])
print("MAXRSS_KB", _peak_kib(), file=sys.stderr)
sys.exit(code)
"""


def test_export_refuses_an_oversized_prompt_counts_without_reading_it_into_memory(tmp_path: Path) -> None:
    home = published_home(tmp_path / "home")
    counts = resolve_version(home) / "train" / "prompt_counts.parquet"
    os.truncate(counts, 1 << 30)         # sparse: no disk used, but 1 GiB of zeros when read
    run = subprocess.run([sys.executable, "-c", EXPORT_RSS, "export", "--home", str(home.root),
                          "--output", str(tmp_path / "out")], cwd=REPO, env=ENV, capture_output=True, text=True,
                         timeout=300, check=False)
    assert run.returncode == 2, run.stderr
    assert "train/prompt_counts.parquet" in run.stderr
    assert not (tmp_path / "out" / "train.parquet").exists()
    peak_kb = int(run.stderr.rsplit("MAXRSS_KB", 1)[1].split()[0])
    assert peak_kb < 600 * 1024, f"peak memory {peak_kb // 1024} MiB for a refused 1 GiB file"


# --------------------------------------------------------------------------- meta snapshots: memory
PUBLISH_RSS = """
import sys
def _peak_kib():   # VmHWM: this process's own peak RSS (ru_maxrss carries the forking pytest worker's over exec)
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
from pathlib import Path
from formats.home import DataHome
from pipelines.publish.config import PublishConfig
from pipelines.publish.version import publish_dataset
publish_dataset(DataHome(Path(sys.argv[1])), PublishConfig(workers=1, fsync=False))
print("MAXRSS_KB", _peak_kib())
"""


def _quarantine_with_raw_text(home: DataHome, rows: int) -> None:
    """A day's quarantine of ``rows`` distinct 64 KiB bad lines (what ingest keeps of each in raw_text),
    written in small row groups (compressed, it is small on disk)."""
    schema = get_schema("quarantine")
    path = home.partition_file("quarantine", "2023-03-02")
    path.parent.mkdir(parents=True, exist_ok=True)
    with pq.ParquetWriter(path, schema, compression="zstd") as writer:
        for start in range(0, rows, 200):
            numbers = range(start, min(rows, start + 200))
            count = len(numbers)
            writer.write_table(pa.table({
                "table": ["rankings"] * count, "dt": [datetime.date(2023, 3, 2)] * count,
                "file": ["rankings.jsonl"] * count, "line_number": [i + 1 for i in numbers],
                "last_line_number": [i + 1 for i in numbers], "line_count": [1] * count,
                "reason": ["bad_json"] * count, "detail": ["not JSON"] * count,
                "raw_text": [f"{i:08d}" + "y" * (64 * 1024 - 8) for i in numbers],
                "raw_length": [64 * 1024] * count, "raw_sha256": [f"{i:064x}" for i in numbers]}, schema=schema))


def test_publish_memory_does_not_grow_with_the_raw_text_of_quarantined_lines(tmp_path: Path) -> None:
    home = make_home(tmp_path / "home", num_rankings=80, seed=3)
    _quarantine_with_raw_text(home, 6000)
    run = subprocess.run([sys.executable, "-c", PUBLISH_RSS, str(home.root)], cwd=REPO, env=ENV,
                         capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    assert (home.datasets / "latest").is_symlink()
    peak_kb = int(run.stdout.rsplit("MAXRSS_KB", 1)[1].split()[0])
    assert peak_kb < 450 * 1024, f"peak memory {peak_kb // 1024} MiB with 375 MiB of quarantined raw text"


# --------------------------------------------------------------------------- SourceChanged vs a running ingest
def test_a_publish_while_an_ingest_rewrites_a_day_publishes(tmp_path: Path, monkeypatch) -> None:
    from pipelines.ingest.day import ingest_lock

    home = make_home(tmp_path / "home", num_rankings=80, seed=3)
    real = samples.day_volumes
    done: list[BaseException | None] = []

    def ingest() -> None:
        try:
            with ingest_lock(home):          # what an ingest holds while it writes a day
                path = home.partition_file("quarantine", "2023-03-01")
                write_parquet_atomic(pq.read_table(path).slice(0, 1), path, get_schema("quarantine"))
            done.append(None)
        except BaseException as exc:         # noqa: BLE001 - reported below
            done.append(exc)

    worker = threading.Thread(target=ingest)

    def an_ingest_runs_meanwhile(at: DataHome) -> dict[str, int]:
        worker.start()
        worker.join(timeout=5)               # done at once unless the publish holds the ingest lock
        return real(at)

    monkeypatch.setattr(samples, "day_volumes", an_ingest_runs_meanwhile)
    try:
        report = publish_dataset(home, FAST)
    finally:
        worker.join()
    assert done == [None]
    assert (home.datasets / "latest").is_symlink()
    assert resolve_version(home) == report.path


# --------------------------------------------------------------------------- the sweep of .latest.<pid>.tmp
def test_a_killed_switchs_temporary_link_whose_pid_is_reused_is_swept(tmp_path: Path) -> None:
    home, full = history_home(tmp_path / "h")
    first = publish_until(home, full)
    left = home.datasets / ".latest.1.tmp"        # pid 1 always runs: a container's killed publish was pid 1
    os.symlink(first.version, left)
    publish_until(home, full)                      # the same version again: every publish sweeps
    assert not os.path.lexists(left)
    assert sorted(os.listdir(home.datasets)) == sorted([first.version, "latest"])



def test_the_sweep_leaves_folders_no_publish_made(tmp_path: Path) -> None:
    home, full = history_home(tmp_path / "h")
    first = publish_until(home, full)
    mine = [home.datasets / ".deleting-notes", home.datasets / ".partial-backup"]
    for folder in mine:
        folder.mkdir()
        (folder / "keep.txt").write_text("a user's file\n")
    report = publish_until(home, full)              # the same version again: every publish sweeps
    assert report.version == first.version
    for folder in mine:
        assert (folder / "keep.txt").read_text() == "a user's file\n"
        assert any(str(folder) in note for note in report.notes)
