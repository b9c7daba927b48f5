"""Storing a build's Dagster events: the home's instance against Dagster's stock SQLite storage (run by hand).

    .venv/bin/python -m benchmarks.dagster_events [--runs 6] [--assets 8] [--repeats 3] [--dir D] [--json F]

A small build is mostly Dagster's bookkeeping: ~1,000 events (each step's start and end, each contract check's
three events, each materialization), each stored in the run's own SQLite database and, for asset events, in the
index database. Dagster's stock SQLite storage makes a new SQLAlchemy engine (dialect set-up, statement compilation)
and a new SQLite connection for every use. The home's instance (``dagster_project.instance``) keeps the engines, one
per database and process, and still opens and closes a connection per use (a connection kept open was tried in the
thirty-fourth session and withdrawn: a read could see a stale snapshot; README *Jobs, schedules and sensors*; an idle
anchor connection per database, tried in the thirty-fifth session, was withdrawn too: review rev35d).

Each case runs ``--runs`` materializations of a job of ``--assets`` assets, each with one asset check, in a
forked child of its own (a new instance in a new folder; its peak RSS is reported): the home's instance (``home``)
and Dagster's default ``DagsterInstance`` on its own SQLite storage (``stock``), alternated ``--repeats`` times.
Prints the median wall and CPU seconds of each, milliseconds per stored event, the stock / home ratios and the
peak RSS of each.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _job(assets: int):
    import dagster as dg

    defs = []
    for i in range(assets):
        @dg.asset(name=f"a{i}")
        def one():
            return 1

        @dg.asset_check(asset=f"a{i}", name=f"c{i}")
        def check():
            return dg.AssetCheckResult(passed=True)

        defs += [one, check]
    return defs


def _measure(case: str, folder: Path, runs: int, assets: int) -> dict:
    import dagster as dg

    from dagster_project.build import use_home
    from formats.home import DataHome

    if case == "home":
        home = DataHome(folder / "home")
        use_home(home)
        instance = dg.DagsterInstance.from_config(str(home.dagster_home))
    else:
        (folder / "stock").mkdir(parents=True)
        (folder / "stock" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        instance = dg.DagsterInstance.from_config(str(folder / "stock"))
    defs = _job(assets)
    quiet = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
    with instance:
        dg.materialize(defs, instance=instance, run_config=quiet)   # warm: imports, first engine, schema checks
        cpu = time.process_time()
        wall = time.perf_counter()
        done = []
        for _ in range(runs):
            result = dg.materialize(defs, instance=instance, run_config=quiet)
            assert result.success
            done.append(result.run_id)
        wall = time.perf_counter() - wall
        cpu = time.process_time() - cpu
        events = sum(len(instance.all_logs(run_id)) for run_id in done)
    return {"wall_s": wall, "cpu_s": cpu, "events": events}


def _in_child(case: str, folder: Path, runs: int, assets: int) -> dict:
    from benchmarks import in_child

    result, peak = in_child(_measure, case, folder, runs, assets)
    return {**result, "peak_rss_mib": peak / 1024}


def main(argv: list[str] | None = None) -> dict:
    sys.path.insert(0, str(REPO))
    from benchmarks import report, work_folder

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=6, help="materializations timed per case")
    parser.add_argument("--assets", type=int, default=8, help="assets (each with one check) in the job")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", default=None, help="work folder (default: a new temporary folder, removed after)")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    runs: dict[str, list[dict]] = {"home": [], "stock": []}
    with work_folder(args.dir, "bench-dagster-events-") as work:
        for repeat in range(args.repeats):
            for case in (("home", "stock") if repeat % 2 == 0 else ("stock", "home")):
                runs[case].append(_in_child(case, work / f"{case}-{repeat}", args.runs, args.assets))
    results: dict = {"benchmark": "dagster_events", "runs": args.runs, "assets": args.assets,
                     "repeats": args.repeats}
    for case, rows in runs.items():
        wall = statistics.median(r["wall_s"] for r in rows)
        cpu = statistics.median(r["cpu_s"] for r in rows)
        events = rows[0]["events"]
        results[case] = {"wall_s": round(wall, 3), "cpu_s": round(cpu, 3), "events": events,
                         "ms_per_event": round(1000 * wall / events, 3) if events else None,
                         "runs_wall_s": [round(r["wall_s"], 3) for r in rows],
                         "peak_rss_mib": round(max(r["peak_rss_mib"] for r in rows), 1)}
    results["stock_over_home_wall"] = round(results["stock"]["wall_s"] / results["home"]["wall_s"], 2)
    results["stock_over_home_cpu"] = round(results["stock"]["cpu_s"] / results["home"]["cpu_s"], 2)
    results["load_average"] = round(os.getloadavg()[0], 2)
    report(results, args.json)
    return results


if __name__ == "__main__":
    main()
