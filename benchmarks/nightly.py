"""Cost of the nightly path as history grows: N days built, one more day lands, the nightly build runs.

    .venv/bin/python -m benchmarks.nightly [--days 3,10,30] [--users 40] [--rankings-per-day 60] [--image-size 64]

For each N: simulate N+1 days, keep the last day aside, build the N days with ``pickapic build`` (not
timed as the nightly path), land day N+1 and time the plain ``pickapic build`` that follows: the daily
partition of the new day plus the rebuild of the global stages. Each stage's time comes from the
Dagster run's step statistics. Then two builds of the unchanged home are timed: the plain one (the
"up to date" stamp answers) and one with the stamp removed (the full plan against Dagster's records).
Prints per-stage seconds per N and the ratio of the largest N to the smallest (the baseline measured
in the same run), plus the peak RSS of any build process.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pipelines.home import DataHome
from pipelines.simulator import SimConfig, simulate

REPO = Path(__file__).resolve().parents[1]
DAILY_STEPS = ("ingest_day", "fingerprint_images")
GLOBAL_STEPS = ("duplicate_clusters", "decisions", "pairs", "split_pairs", "published_dataset")


def timed_build(home: DataHome, *args: str) -> tuple[float, str]:
    """Wall seconds and stdout of one `pickapic build` process (raises with its output if it fails)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PICKAPIC_HOME", "DAGSTER_HOME")}
    command = [sys.executable, "-m", "dagster_project.cli", "build", "--home", str(home.root), *args]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {done.returncode}:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return seconds, done.stdout


def step_seconds(home: DataHome, since: int) -> dict[str, float]:
    """Seconds of every step of the runs recorded after the first ``since`` runs."""
    import dagster as dg

    with dg.DagsterInstance.from_config(str(home.dagster_home)) as instance:
        runs = list(reversed(instance.get_runs()))[since:]
        out: dict[str, float] = {}
        for run in runs:
            for stat in instance.get_run_step_stats(run.run_id):
                if stat.end_time and stat.start_time:
                    out[stat.step_key] = out.get(stat.step_key, 0.0) + stat.end_time - stat.start_time
        return out


def run_count(home: DataHome) -> int:
    import dagster as dg

    with dg.DagsterInstance.from_config(str(home.dagster_home)) as instance:
        return len(instance.get_runs())


def one_history(days: int, users: int, rankings_per_day: int, image_size: int, root: Path) -> dict:
    """Build ``days`` days, land one more, time the nightly build and two no-op builds."""
    home = DataHome(root / f"home-{days}")
    config = SimConfig(days=days + 1, users=users, rankings_per_day=rankings_per_day, image_size=image_size, seed=0)
    simulate(home, config)
    new_day = config.day(days)
    spare = root / f"spare-{days}"
    shutil.move(str(home.raw_day(new_day)), spare)
    first, _ = timed_build(home)
    before = run_count(home)
    shutil.move(str(spare), home.raw_day(new_day))
    nightly, _ = timed_build(home)
    steps = step_seconds(home, before)
    up_to_date, out = timed_build(home)
    assert "up to date" in out, out
    (home.cache / "build_stamp.json").unlink()
    full_plan, out = timed_build(home)
    assert "up to date" in out, out
    return {
        "days": days, "first_build_seconds": round(first, 2), "nightly_build_seconds": round(nightly, 2),
        "daily_seconds": round(sum(steps.get(s, 0.0) for s in DAILY_STEPS), 2),
        "global_seconds": round(sum(steps.get(s, 0.0) for s in GLOBAL_STEPS), 2),
        "steps": {k: round(v, 2) for k, v in sorted(steps.items())},
        "up_to_date_seconds": round(up_to_date, 2), "full_plan_up_to_date_seconds": round(full_plan, 2),
        "runs_of_nightly": run_count(home) - before,
    }


def run(days: tuple[int, ...] = (3, 10, 30), users: int = 40, rankings_per_day: int = 60, image_size: int = 64,
        root: Path | None = None) -> dict:
    """Every history length, then the ratios of the longest to the shortest."""
    base = Path(root) if root else Path(tempfile.mkdtemp(prefix="bench-nightly-"))
    results = [one_history(n, users, rankings_per_day, image_size, base) for n in days]
    if root is None:
        shutil.rmtree(base)
    small, large = results[0], results[-1]

    def ratio(key: str) -> float:
        return round(large[key] / small[key], 3) if small[key] else float("nan")

    steps = sorted(set().union(*(r["steps"] for r in results)))
    return {
        "benchmark": "nightly", "users": users, "rankings_per_day": rankings_per_day, "image_size": image_size,
        "cpus": os.cpu_count(), "histories": results,
        "per_step_seconds": {step: [r["steps"].get(step, 0.0) for r in results] for step in steps},
        "ratio_nightly": ratio("nightly_build_seconds"), "ratio_daily": ratio("daily_seconds"),
        "ratio_global": ratio("global_seconds"),
        "peak_rss_mb_any_build": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
    }


def main(argv: list[str] | None = None) -> dict:
    """Command line: run, print a table and the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", default="3,10,30", help="history lengths, comma-separated")
    parser.add_argument("--users", type=int, default=40)
    parser.add_argument("--rankings-per-day", type=int, default=60)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--dir", type=Path, help="keep the homes here")
    args = parser.parse_args(argv)
    days = tuple(int(d) for d in args.days.split(","))
    result = run(days, args.users, args.rankings_per_day, args.image_size, root=args.dir)
    header = "stage".ljust(22) + "".join(f"N={n}".rjust(10) for n in days) + f"   N={days[-1]} / N={days[0]}"
    print(header)
    for step, values in result["per_step_seconds"].items():
        ratio = f"{values[-1] / values[0]:.2f}" if values[0] else "n/a"
        print(step.ljust(22) + "".join(f"{v:10.2f}" for v in values) + f"   {ratio}")
    for key in ("daily_seconds", "global_seconds", "nightly_build_seconds", "up_to_date_seconds",
                "full_plan_up_to_date_seconds"):
        values = [h[key] for h in result["histories"]]
        ratio = f"{values[-1] / values[0]:.2f}" if values[0] else "n/a"
        print(key.ljust(22) + "".join(f"{v:10.2f}" for v in values) + f"   {ratio}")
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
