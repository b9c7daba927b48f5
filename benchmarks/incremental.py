"""Nightly incremental cost vs a first build: `pickapic build` of day N+1 after N days vs the first N days.

    .venv/bin/python -m benchmarks.incremental [--days 3] [--users 40] [--rankings-per-day 120] [--image-size 256]

Simulates N+1 days (with images), then times, as separate ``pickapic build`` processes on one data home:
the first build of days 1..N (``--to DAY_N``), the nightly build of day N+1 (``--from/--to DAY_N+1``:
ingest + fingerprints of the new day, then curation, splits and publish over everything), and the same
nightly command again with nothing new (the fixed cost: Dagster runs, checks, the global stages). The
CLI start-up (``pickapic build --help``) is timed too. Ideal: nightly / first close to 1 / N. It also
reports the bytes the nightly publish wrote (files of the new version sharing no inode with the first
one) against the new version's size: unchanged shards are hard-linked, not written again.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pipelines.home import DataHome
from pipelines.simulator import SimConfig, simulate

REPO = Path(__file__).resolve().parents[1]


def _build(home: DataHome, *args: str) -> float:
    """Wall seconds of one `pickapic build` process (raises with its output if it fails)."""
    command = [sys.executable, "-m", "dagster_project.cli", "build", "--home", str(home.root), *args]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {done.returncode}:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return seconds


def _inodes(home: DataHome) -> set[int]:
    """Inodes of every file of every published version."""
    return {p.stat().st_ino for p in home.datasets.rglob("*") if p.is_file() and not p.is_symlink()}


def run(days: int = 3, users: int = 40, rankings_per_day: int = 120, image_size: int = 256, seed: int = 0,
        root: Path | None = None) -> dict:
    """Time the first build of ``days`` days, the nightly build of the next day and a no-op rerun."""
    base = Path(root) if root else Path(tempfile.mkdtemp(prefix="bench-incremental-"))
    home = DataHome(base / "home")
    if home.root.exists():
        shutil.rmtree(home.root)
    config = SimConfig(days=days + 1, users=users, rankings_per_day=rankings_per_day, image_size=image_size, seed=seed)
    simulate(home, config)
    last, new = config.day(days - 1), config.day(days)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "dagster_project.cli", "build", "--help"], cwd=REPO,
                   capture_output=True, check=True)
    startup = time.perf_counter() - started
    first = _build(home, "--to", last)
    first_inodes = _inodes(home)
    nightly = _build(home, "--from", new, "--to", new)
    latest = (home.datasets / "latest").resolve()
    files = [p for p in latest.rglob("*") if p.is_file()]
    version_bytes = sum(p.stat().st_size for p in files)
    written = sum(p.stat().st_size for p in files if p.stat().st_ino not in first_inodes)
    noop = _build(home, "--from", new, "--to", new)
    if root is None:
        shutil.rmtree(base)
    return {
        "benchmark": "incremental", "days": days, "users": users, "rankings_per_day": rankings_per_day,
        "image_size": image_size, "cpus": os.cpu_count(),
        "cli_startup_seconds": round(startup, 2),
        "first_build_seconds": round(first, 2),
        "nightly_build_seconds": round(nightly, 2),
        "nightly_rerun_nothing_new_seconds": round(noop, 2),
        "ratio_nightly_vs_first": round(nightly / first, 3),
        "ideal_ratio": round(1 / days, 3),
        "ratio_fixed_cost_vs_nightly": round(noop / nightly, 3),
        "nightly_publish_bytes_written": written,
        "nightly_version_bytes": version_bytes,
        "ratio_publish_written_vs_version": round(written / version_bytes, 3),
    }


def main(argv: list[str] | None = None) -> dict:
    """Command line: run, print JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=3)
    parser.add_argument("--users", type=int, default=40)
    parser.add_argument("--rankings-per-day", type=int, default=120)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--dir", type=Path)
    args = parser.parse_args(argv)
    result = run(args.days, args.users, args.rankings_per_day, args.image_size, root=args.dir)
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
