"""Cost of the nightly path as history grows: N days built, one more day lands, the nightly build runs.

    .venv/bin/python -m benchmarks.nightly [--days 3,10,30] [--rounds 3] [--users 40] [--rankings-per-day 60]
                                           [--image-size 64] [--dir DIR]

For each N: simulate N+1 days, keep the last day aside and build the N days with ``pickapic build``
(a snapshot, not timed as the nightly path). Then, in ``--rounds`` rounds that visit every N in a
rotating order (so load on a shared machine falls on every N alike), a copy of each snapshot gets
day N+1 and the plain ``pickapic build`` that follows is timed: the daily partition of the new day
plus the rebuild of the global stages, each stage's time from the Dagster run's step statistics.
After it, two builds of the unchanged home are timed: the plain one (the "up to date" stamp answers)
and one with the stamp removed (the full plan against Dagster's records). Prints the median per stage
and N, the ratio of the largest N to the smallest (the baseline measured in the same run), and the
peak RSS of any build process. ``--dir`` keeps the snapshots, and a later run reuses those built with the
same parameters and code (``.built`` holds the simulator configuration, the stages' code versions and a digest of
the simulator's code; one of other parameters, or built by another version, is built again); a
folder there that a benchmark did not make (``snapshot-N``, ``next-N``, ``work``) is refused, not deleted.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import claim, history_marker, remove_owned, work_folder
from formats.home import DataHome
from simulator import SimConfig, simulate

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


def folder_kb(folder: Path) -> float:
    """KiB the files under ``folder`` take on disk (allocated blocks, as ``du``; links not followed)."""
    total = 0
    for root, _dirs, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except FileNotFoundError:
                continue
    return round(total / 1024, 1)


def snapshot_marker(config: SimConfig) -> str:
    """What ``snapshot-N/.built`` holds: the simulator configuration the snapshot was built from (but ``workers``),
    the stages' code versions and the simulator's code digest (:func:`benchmarks.history_marker`)."""
    return history_marker(config)


def prepare(days: int, users: int, rankings_per_day: int, image_size: int, root: Path) -> tuple[Path, Path]:
    """(a home with ``days`` days built, the raw folder of the next day), reused when already there.

    A snapshot is reused only when its ``.built`` names the same simulator configuration (users, rankings a
    day, image size, seed...), the same code versions of the stages and the same simulator code: one of other
    parameters, or built by another version, is built again, never timed under the new ones. A
    folder of that name that a benchmark did not make is refused (``ValueError``), not deleted (a ``next-N``
    of a version before December 7 has no mark: remove it by hand).
    """
    snapshot, spare = root / f"snapshot-{days}", root / f"next-{days}"  # spare holds the dt=DAY folder
    config = SimConfig(days=days + 1, users=users, rankings_per_day=rankings_per_day, image_size=image_size, seed=0)
    built = snapshot / ".built"
    if built.is_file() and not built.is_symlink() and built.read_text() == snapshot_marker(config) \
            and (spare / f"dt={config.day(days)}").is_dir():
        return snapshot, spare
    for stale in (snapshot, spare):             # snapshots of earlier versions hold only .built ("ok")
        claim(stale, legacy_marks=(".built",) if stale == snapshot else ())
    home = DataHome(snapshot)
    simulate(home, config)
    shutil.move(str(home.raw_day(config.day(days))), spare)
    timed_build(home)
    built.write_text(snapshot_marker(config))
    return snapshot, spare


def one_night(days: int, snapshot: Path, spare: Path, work: Path) -> dict:
    """Land the next day on a copy of ``snapshot``; time the nightly build and two builds with nothing new."""
    remove_owned(work)                  # an interrupted run's copy (it holds the snapshot's mark); never another's
    shutil.copytree(snapshot, work, symlinks=True)
    home = DataHome(work)
    before = run_count(home)
    instance_before = folder_kb(home.dagster_home)
    for folder in spare.iterdir():  # the export of the next day lands
        if folder.is_dir():
            shutil.copytree(folder, home.raw_logs / folder.name)
    nightly, _ = timed_build(home)
    steps = step_seconds(home, before)
    instance_nightly = folder_kb(home.dagster_home)
    up_to_date, out = timed_build(home)
    assert "up to date" in out, out
    (home.cache / "build_stamp.json").unlink()
    full_plan, out = timed_build(home)
    assert "up to date" in out, out
    runs = run_count(home) - before
    instance_after = folder_kb(home.dagster_home)
    shutil.rmtree(work)
    return {
        "days": days, "nightly_build_seconds": round(nightly, 2),
        "daily_seconds": round(sum(steps.get(s, 0.0) for s in DAILY_STEPS), 2),
        "global_seconds": round(sum(steps.get(s, 0.0) for s in GLOBAL_STEPS), 2),
        "steps": {k: round(v, 2) for k, v in sorted(steps.items()) if k in DAILY_STEPS + GLOBAL_STEPS},
        "up_to_date_seconds": round(up_to_date, 2), "full_plan_up_to_date_seconds": round(full_plan, 2),
        "runs_of_nightly": runs,
        # Dagster's instance (HOME/dagster: runs, events, schedules) before, and what the nightly build and
        # the two up-to-date builds after it added: its growth over a year of nights
        "instance_kb_before": instance_before, "instance_kb_nightly": round(instance_nightly - instance_before, 1),
        "instance_kb_up_to_date_builds": round(instance_after - instance_nightly, 1),
    }


def run(days: tuple[int, ...] = (3, 10, 30), users: int = 40, rankings_per_day: int = 60, image_size: int = 64,
        rounds: int = 3, root: Path | None = None) -> dict:
    """Every history length, measured in rotating rounds; medians and the ratios of the longest to the shortest."""
    with work_folder(root, "bench-nightly-") as base:
        prepared = {n: prepare(n, users, rankings_per_day, image_size, base) for n in days}
        nights: dict[int, list[dict]] = {n: [] for n in days}
        for round_index in range(rounds):
            order = list(days[round_index % len(days):]) + list(days[: round_index % len(days)])
            for n in order:
                nights[n].append(one_night(n, *prepared[n], base / "work"))

    def median(values: list[float]) -> float:
        values = sorted(values)
        middle = len(values) // 2
        return round(values[middle] if len(values) % 2 else (values[middle - 1] + values[middle]) / 2, 2)

    keys = ("nightly_build_seconds", "daily_seconds", "global_seconds", "up_to_date_seconds",
            "full_plan_up_to_date_seconds", "instance_kb_before", "instance_kb_nightly", "instance_kb_up_to_date_builds")
    results = [{"days": n, "rounds": nights[n], **{k: median([r[k] for r in nights[n]]) for k in keys},
                "steps": {s: median([r["steps"].get(s, 0.0) for r in nights[n]]) for s in DAILY_STEPS + GLOBAL_STEPS}}
               for n in days]
    small, large = results[0], results[-1]

    def ratio(key: str) -> float:
        return round(large[key] / small[key], 3) if small[key] else float("nan")

    return {
        "benchmark": "nightly", "users": users, "rankings_per_day": rankings_per_day, "image_size": image_size,
        "rounds": rounds, "cpus": os.cpu_count(), "histories": results,
        "per_step_seconds": {step: [r["steps"][step] for r in results] for step in DAILY_STEPS + GLOBAL_STEPS},
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
    parser.add_argument("--rounds", type=int, default=3, help="nightly builds per N (median reported)")
    parser.add_argument("--dir", type=Path, help="keep (and reuse) the built snapshots here")
    args = parser.parse_args(argv)
    days = tuple(int(d) for d in args.days.split(","))
    result = run(days, args.users, args.rankings_per_day, args.image_size, args.rounds, root=args.dir)
    header = "stage".ljust(22) + "".join(f"N={n}".rjust(10) for n in days) + f"   N={days[-1]} / N={days[0]}"
    print(header)
    for step, values in result["per_step_seconds"].items():
        ratio = f"{values[-1] / values[0]:.2f}" if values[0] else "n/a"
        print(step.ljust(22) + "".join(f"{v:10.2f}" for v in values) + f"   {ratio}")
    for key in ("daily_seconds", "global_seconds", "nightly_build_seconds", "up_to_date_seconds",
                "full_plan_up_to_date_seconds", "instance_kb_before", "instance_kb_nightly",
                "instance_kb_up_to_date_builds"):
        values = [h[key] for h in result["histories"]]
        ratio = f"{values[-1] / values[0]:.2f}" if values[0] else "n/a"
        print(key.ljust(22) + "".join(f"{v:10.2f}" for v in values) + f"   {ratio}")
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
