"""`pickapic demo`: simulate a small sample, build every asset, train briefly, print what happened."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import duckdb
from rich.console import Console
from rich.table import Table

from dagster_project.progress import build_progress
from formats import dataset
from formats.home import DataHome
from training import runs

# The demo's settings, written to HOME/pickapic.toml so that every later build of the home keeps them.
# 40 users would pass at the nightly default of 6% too (the ledger fills validation and test first);
# 30% gives the demo's evaluation more than a handful of rows.
# The demo is a simulation: its model and dedup reports may read the simulator's ground truth (a production
# home leaves evaluation.ground_truth empty, and nothing reads any).
DEMO_SETTINGS = {"splits.heldout_fraction": 0.3, "evaluation.ground_truth": "ground_truth"}


def _scalar(con: duckdb.DuckDBPyConnection, sql: str) -> Any:
    return con.execute(sql).fetchone()[0]


def demo_summary(home: DataHome) -> dict[str, Any]:
    """Counts from a built data home: rows in, quarantined, duplicates, drops, splits, shards, accuracy."""
    from dagster_project.contracts import warehouse_views
    from pipelines.sqlrun import connect

    con = connect(warehouse_views(home))
    summary: dict[str, Any] = {
        "raw_lines": int(_scalar(con, "SELECT coalesce(sum(lines_in), 0) FROM ingest_files")),
        "accepted_rows": int(_scalar(con, "SELECT coalesce(sum(accepted), 0) FROM ingest_files")),
        # identical bad lines share a quarantine row (line_count): lines are what reconcile with raw_lines
        "quarantined_lines": int(_scalar(con, "SELECT coalesce(sum(line_count), 0) FROM quarantine")),
        "quarantine_rows": int(_scalar(con, "SELECT count(*) FROM quarantine")),
        "quarantine_reasons": {reason: int(lines) for reason, lines in con.execute(
            "SELECT reason, sum(line_count) FROM quarantine GROUP BY 1 ORDER BY 2 DESC, 1").fetchall()},
        "images_fingerprinted": int(_scalar(con, "SELECT count(*) FROM image_features")),
        "images_rejected": int(_scalar(con, "SELECT count(*) FROM image_rejects")),
        "duplicate_clusters": int(_scalar(con, "SELECT count(DISTINCT cluster_id) FROM duplicate_clusters WHERE cluster_size > 1")),
        "images_in_duplicate_clusters": int(_scalar(con, "SELECT count(*) FROM duplicate_clusters WHERE cluster_size > 1")),
        "drop_reasons": dict(con.execute(
            "SELECT reason, count(*) FROM decisions WHERE NOT keep GROUP BY 1 ORDER BY 2 DESC, 1").fetchall()),
        "pairs": int(_scalar(con, "SELECT count(*) FROM pairs")),
        "pairs_per_split": dict(con.execute(
            "SELECT split, count(*) FROM split_pairs GROUP BY 1 ORDER BY 1").fetchall()),
    }
    con.close()
    latest = dataset.latest_link(home)
    if latest.exists():
        manifest = dataset.read_manifest(latest)   # bounded (fix38a)
        summary["dataset_version"] = latest.resolve().name
        summary["shards_written"] = sum(len(list((latest / split).glob(dataset.shard_glob(split)))) for split in summary["pairs_per_split"])
        summary["manifest"] = str(latest / dataset.MANIFEST_FILE)
        summary["manifest_version"] = manifest.get("version")
        run_dir = runs.run_dir(home, latest.resolve())
        eval_file = run_dir / runs.EVAL_FILE
        if runs.is_evaluated(home):   # of the finished model best/ holds, never an earlier one's
            result = json.loads(eval_file.read_text())
            summary.update({key: result.get(key) for key in (
                "test_accuracy", "threshold", "random_baseline", "untrained_test_accuracy",
                "bayes_optimal_accuracy", "fraction_of_bayes")})
            summary["model_dir"] = str(run_dir / "best")
    return summary


def _print_summary(console: Console, home: DataHome, summary: dict[str, Any], seconds: float) -> None:
    table = Table(title=f"pickapic demo: {home.root} ({seconds:.0f} s)", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")

    def reasons(values: dict) -> str:
        return ", ".join(f"{k} {v}" for k, v in values.items()) or "none"

    def pct(value: Any) -> str:
        return "n/a" if value is None else f"{100 * value:.1f}%"

    table.add_row("raw lines in", f"{summary['raw_lines']} ({summary['accepted_rows']} accepted)")
    table.add_row("quarantined", f"{summary['quarantined_lines']} lines in {summary['quarantine_rows']} rows: "
                                 f"{reasons(summary['quarantine_reasons'])}")
    table.add_row("images", f"{summary['images_fingerprinted']} fingerprinted, {summary['images_rejected']} rejected")
    table.add_row("duplicates", f"{summary['duplicate_clusters']} clusters holding {summary['images_in_duplicate_clusters']} images")
    table.add_row("policy drops", reasons(summary["drop_reasons"]))
    table.add_row("pairs per split", f"{summary['pairs']} pairs: {reasons(summary['pairs_per_split'])}")
    if "dataset_version" in summary:
        table.add_row("published", f"version {summary['dataset_version']}, {summary['shards_written']} shards")
    if summary.get("test_accuracy") is not None:
        table.add_row("test_unique accuracy",
                      f"{pct(summary['test_accuracy'])} (random {pct(summary['random_baseline'])}, untrained "
                      f"{pct(summary['untrained_test_accuracy'])}, Bayes-optimal {pct(summary['bayes_optimal_accuracy'])})")
    table.add_row("where", f"shards {dataset.latest_link(home)}\nwarehouse {home.warehouse}\n"
                           f"model {summary.get('model_dir', 'n/a')}\nDagster runs: pickapic ui --home {home.root}")
    console.print(table)


def run_demo(args: argparse.Namespace) -> int:
    """Simulate -> write the demo settings -> build (all assets, model included) -> print the summary."""
    from dagster_project.build import build, select_days
    from dagster_project.steplog import stderr_warner
    from formats.settings import write_settings
    from simulator import SimConfig, simulate

    console = Console(stderr=True)
    home = DataHome.at(args.home)
    started = time.perf_counter()
    sim = SimConfig(days=args.days, users=args.users, rankings_per_day=args.rankings_per_day,
                    image_size=args.image_size, seed=args.seed)
    console.print(f"[bold]1/3[/bold] simulating {sim.days} days of app logs into {home.raw}")
    simulate(home, sim)
    values = dict(DEMO_SETTINGS)
    if args.train_steps:
        values["train.max_steps"] = args.train_steps
    path = write_settings(home.root, values)
    console.print(f"    settings {', '.join(f'{k} = {v}' for k, v in values.items())} written to {path}")
    days = select_days(home)
    console.print(f"[bold]2/3[/bold] building {len(days)} partitions through Dagster (ingest, Beam features, "
                  "curation, splits, shards) and training the preference model")
    with build_progress(None) as progress:
        # what the build and its steps warn of, on stderr as `pickapic build` shows it (a fresh home: nothing)
        result = build(home, with_model=True, progress=progress, on_plan=lambda lines: progress.total(len(lines)),
                       warn=stderr_warner())
    if result.up_to_date:
        # a demo run again on its home: the simulation left the files that held its bytes as they were, so the
        # build found every asset fresh (fix35b: all four runs ran again)
        latest = dataset.latest_link(home)
        version = f" dataset version {latest.resolve().name}," if latest.exists() else ""
        console.print(f"    up to date: the raw zone was already this simulation's, and every asset built from it "
                      f"(ingest, features, curation, splits,{version} the model) is reused; nothing ran")
    else:
        console.print(f"    ran {len(result.run_ids)} Dagster run{'' if len(result.run_ids) == 1 else 's'}")
    console.print("[bold]3/3[/bold] summary")
    summary = demo_summary(home)
    _print_summary(Console(), home, summary, time.perf_counter() - started)
    Path(home.root / "demo_summary.json").write_text(json.dumps(summary, indent=1, sort_keys=True, default=str) + "\n")
    return 0
