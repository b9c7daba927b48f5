"""Nightly incremental cost vs a first build: `pickapic build` after day N+1 lands vs the first N days.

    .venv/bin/python -m benchmarks.incremental [--days 3] [--users 40] [--rankings-per-day 120] [--image-size 256]

Simulates N+1 days (with images) and keeps the last one aside, then times, as separate plain
``pickapic build`` processes on one data home: the first build of days 1..N, the nightly build once day
N+1 has landed (ingest + fingerprints of the new day, then curation, splits and publish over
everything), and the same command again with nothing new (the "up to date" answer). The CLI start-up
(``pickapic build --help``) is timed too. Ideal: nightly / first close to 1 / N. It also reports the
bytes the nightly publish wrote (files of the new version sharing no inode with the first one) against
the new version's size: unchanged shards are hard-linked, not written again. ``benchmarks.nightly``
follows the same path over several history lengths, stage by stage.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import claim, work_folder
from benchmarks.nightly import timed_build
from formats import dataset
from formats.home import DataHome
from formats.settings import write_settings
from simulator import SimConfig, simulate

REPO = Path(__file__).resolve().parents[1]


def _inodes(home: DataHome) -> set[int]:
    """Inodes of every file of every published version."""
    return {p.stat().st_ino for p in home.datasets.rglob("*") if p.is_file() and not p.is_symlink()}


def run(days: int = 3, users: int = 40, rankings_per_day: int = 120, image_size: int = 256, seed: int = 0,
        root: Path | None = None, settings: dict | None = None) -> dict:
    """Time the first build of ``days`` days, the nightly build of the next day and a no-op rerun."""
    with work_folder(root, "bench-incremental-") as base:
        home = DataHome(claim(base / "home"))      # an earlier run's is wiped; a folder of someone else's refused
        config = SimConfig(days=days + 1, users=users, rankings_per_day=rankings_per_day, image_size=image_size,
                           seed=seed)
        spare = claim(base / "spare") / "day"
        simulate(home, config)
        if settings:   # e.g. the small-home minimums a quick run needs to publish at all
            write_settings(home.root, settings)
        new = config.day(days)
        shutil.move(str(home.raw_day(new)), spare)
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "dagster_project.cli", "build", "--help"], cwd=REPO,
                       capture_output=True, check=True)
        startup = time.perf_counter() - started
        first = timed_build(home)[0]
        first_inodes = _inodes(home)
        shutil.move(str(spare), home.raw_day(new))
        nightly = timed_build(home)[0]
        latest = dataset.latest_link(home).resolve()
        files = [p for p in latest.rglob("*") if p.is_file()]
        version_bytes = sum(p.stat().st_size for p in files)
        written = sum(p.stat().st_size for p in files if p.stat().st_ino not in first_inodes)
        noop = timed_build(home)[0]
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
    parser.add_argument("--dir", type=Path, help="work folder, kept (default: a temporary one, removed); its "
                        "home/ and spare/ are wiped by the next run, and refused if a benchmark did not make them")
    args = parser.parse_args(argv)
    result = run(args.days, args.users, args.rankings_per_day, args.image_size, root=args.dir)
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
