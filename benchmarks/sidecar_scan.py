"""Benchmark: the contract rules over a year of sidecars: by column name, as one schema, and fused.

    python -m benchmarks.sidecar_scan [--files 23000] [--json-out results.json]

Publishes a small synthetic version (:func:`benchmarks.shards.build_home`, 300 pairs), then fills a
folder with ``--files`` hard links to its train sidecars (23,000 is about a year of sidecars at
Pick-a-Pic's volume: ~4 MB shards, ~64 a day). Each of the ``shard_samples`` contract's rules then
runs in a fresh process over that folder, through :func:`pipelines.sqlrun.connect`, twice: with the
view reading by column name (``union_by_name``, what every version view did before) and as one schema
(``uniform``, what the publish's contract check, its Dagster checks and ``meta/`` use now). Then the
whole contract once more in one fresh process, as the publish evaluates it
(:func:`data_contracts.engine.evaluate`: the eight row-count rules in one fused scan, then
``key_unique``), over the same one-schema view; and once more with the row-count cache of
:mod:`pipelines.publish.rulecache`, as a night after a version of all but ``--new`` of the files
(64: a night's sidecars); and that night once more with the column cache of
:mod:`pipelines.publish.columncache` too (``key_unique`` over the recorded keys and the new files'),
against the night without it. Prints each mode's seconds (all rules) and the largest peak RSS of its
processes, and the ratios; the fused, incremental and column-cache values must equal the per-rule ones.
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

from benchmarks import claim, report


def _child(mode: str, glob: str, rule: str) -> None:
    """One rule over ``glob`` in this process: print seconds and peak RSS (MiB) as JSON."""
    import resource

    from data_contracts.engine import load_contract
    from pipelines.sqlrun import connect

    con = connect({"shard_samples": glob}, uniform=("shard_samples",) if mode != "union_by_name" else ())
    if mode.startswith("incremental"):
        _incremental(con, glob, int(rule), mode.partition(":")[2] or "both")
        return
    if mode == "fused":                     # the whole contract, as the publish's gate evaluates it
        from data_contracts.engine import evaluate

        started = time.perf_counter()
        value = {r.rule.name: r.value for r in evaluate(load_contract("shard_samples"), con)}
        seconds = time.perf_counter() - started
    else:
        (found,) = [r for r in load_contract("shard_samples").rules if r.name == rule]
        started = time.perf_counter()
        value = con.execute(found.sql()).fetchone()[0]
        seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "value": value,
                      "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def _incremental(con, glob: str, new: int, phase: str = "both") -> None:
    """The gate with the row-count cache (:mod:`pipelines.publish.rulecache`): ``first``, every file
    but the last ``new`` is counted and recorded (a first version); ``night``, the whole contract is
    evaluated over every file as a night does (the ``new`` files read for the row-local rules, the
    rest from the cache, ``key_unique`` over all); ``both``, one after the other in this process.
    ``first-columns`` and ``night-columns`` do the same with the column cache as well
    (:mod:`pipelines.publish.columncache`: ``key_unique`` over the cached keys and the new files'),
    with caches of their own. The caches are beside the glob's folders. Each hard link gets its own
    identity (the sha256 of its name): in a real version a sidecar's identity is its content's sha256
    from the manifest, with its inode, size and mtime."""
    import glob as globbing
    import hashlib
    import resource

    from data_contracts.engine import evaluate, load_contract
    from pipelines.publish import columncache, rulecache

    paths = sorted(Path(p) for p in globbing.glob(glob))
    sidecars = {p: hashlib.sha256(p.name.encode()).hexdigest() for p in paths}
    columns = phase.endswith("-columns")
    phase = phase.removesuffix("-columns")
    root = Path(glob).parent.parent
    cache = root / ("counts-with-columns.parquet" if columns else "counts.parquet")
    column_cache = root / "columns.parquet"
    views = {"shard_samples": glob}
    out: dict = {}
    if phase in ("first", "both"):
        cache.unlink(missing_ok=True)
        column_cache.unlink(missing_ok=True)
        started = time.perf_counter()
        first = rulecache.row_local_values(dict(list(sidecars.items())[:-new]), cache)
        out.update(first_seconds=time.perf_counter() - started, first_scanned=first.scanned)
        if columns:
            started = time.perf_counter()
            recorded = columncache.narrow_values(dict(list(sidecars.items())[:-new]), column_cache, {},
                                                 columncache.narrow_rules(views, {f"shard_samples.{n}" for n in first.values}))
            out.update(first_columns_seconds=time.perf_counter() - started, first_columns_scanned=recorded.scanned,
                       first_columns_note=recorded.note)
    if phase in ("night", "both"):
        started = time.perf_counter()
        night = rulecache.row_local_values(sidecars, cache)
        given = dict(night.values)
        if columns:
            narrow = columncache.narrow_values(sidecars, column_cache, {},
                                               columncache.narrow_rules(views, {f"shard_samples.{n}" for n in given}))
            given.update(narrow.values.get("shard_samples", {}))
            out.update(columns_scanned=narrow.scanned, columns_cached=narrow.cached, columns_note=narrow.note,
                       column_rules=narrow.rules, column_cache_bytes=column_cache.stat().st_size)
        out["value"] = {r.rule.name: r.value for r in evaluate(load_contract("shard_samples"), con, given)}
        out.update(seconds=time.perf_counter() - started, scanned=night.scanned, cached=night.cached)
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(out))


def run(files: int, root: Path | None = None, new: int = 64) -> dict:
    from benchmarks.shards import build_home
    from data_contracts.engine import load_contract
    from pipelines.publish.config import PublishConfig
    from pipelines.publish.version import publish_dataset

    base = Path(root or tempfile.mkdtemp(prefix="bench-sidecars-"))
    try:
        # every file under a folder the benchmark made (an earlier run's is wiped; a folder of someone else's refused)
        home = build_home(claim(base / "home"), 300, days=3)
        version = publish_dataset(home, PublishConfig(workers=1, fsync=False)).path
        sources = sorted(version.glob("train/pickapic-*.parquet"))
        folder = claim(base / "year") / "train"
        folder.mkdir()
        for n in range(files):
            os.link(sources[n % len(sources)], folder / f"pickapic-train-{n:06d}.parquet")
        glob = str(base / "year" / "*" / "pickapic-*.parquet")
        rules = [r.name for r in load_contract("shard_samples").rules]
        out: dict[str, dict] = {}
        values: dict[str, dict] = {}
        for mode in ("union_by_name", "uniform"):
            seconds, peak, per_rule, per_value = 0.0, 0.0, {}, {}
            for rule in rules:
                done = subprocess.run([sys.executable, "-m", "benchmarks.sidecar_scan", "--child", mode, glob, rule],
                                      check=True, capture_output=True, text=True)
                result = json.loads(done.stdout.strip().splitlines()[-1])
                seconds += result["seconds"]
                peak = max(peak, result["peak_rss_mib"])
                per_rule[rule] = round(result["seconds"], 2)
                per_value[rule] = result["value"]
            out[mode] = {"seconds": round(seconds, 1), "peak_rss_mib": round(peak), "per_rule_s": per_rule}
            values[mode] = per_value
        done = subprocess.run([sys.executable, "-m", "benchmarks.sidecar_scan", "--child", "fused", glob, ""],
                              check=True, capture_output=True, text=True)
        result = json.loads(done.stdout.strip().splitlines()[-1])
        out["fused"] = {"seconds": round(result["seconds"], 1), "peak_rss_mib": round(result["peak_rss_mib"])}
        if {k: float(v) for k, v in values["uniform"].items()} != result["value"]:
            raise AssertionError(f"fused values {result['value']} differ from per-rule {values['uniform']}")
        runs = {}
        for phase in ("first", "night", "first-columns", "night-columns"):   # each in a fresh process
            done = subprocess.run([sys.executable, "-m", "benchmarks.sidecar_scan", "--child", f"incremental:{phase}",
                                   glob, str(new)], check=True, capture_output=True, text=True)
            runs[phase] = json.loads(done.stdout.strip().splitlines()[-1])
        result = runs["night"]
        out["incremental"] = {"seconds": round(result["seconds"], 1), "peak_rss_mib": round(result["peak_rss_mib"]),
                              "first_version_count_seconds": round(runs["first"]["first_seconds"], 1),
                              "first_version_peak_rss_mib": round(runs["first"]["peak_rss_mib"]),
                              "sidecars_scanned": [runs["first"]["first_scanned"], result["scanned"]],
                              "sidecars_cached": [0, result["cached"]]}
        if {k: float(v) for k, v in values["uniform"].items()} != result["value"]:
            raise AssertionError(f"incremental values {result['value']} differ from per-rule {values['uniform']}")
        result, first = runs["night-columns"], runs["first-columns"]
        out["columns"] = {"seconds": round(result["seconds"], 2), "peak_rss_mib": round(result["peak_rss_mib"]),
                          "rules": result["column_rules"], "note": result["columns_note"],
                          "sidecars_scanned": [first["first_columns_scanned"], result["columns_scanned"]],
                          "sidecars_cached": [0, result["columns_cached"]],
                          "cache_mb": round(result["column_cache_bytes"] / 1e6, 1),
                          "first_version_record_seconds": round(first["first_columns_seconds"], 1),
                          "first_version_peak_rss_mib": round(first["peak_rss_mib"])}
        if result["column_rules"] != ["shard_samples.key_unique"] or result["columns_note"]:
            raise AssertionError(f"the column cache did not answer key_unique: {result}")
        if {k: float(v) for k, v in values["uniform"].items()} != {k: float(v) for k, v in result["value"].items()}:
            raise AssertionError(f"column-cache values {result['value']} differ from per-rule {values['uniform']}")
    finally:
        if root is None:
            shutil.rmtree(base, ignore_errors=True)
    return {
        "benchmark": "sidecar_scan", "files": files, "sidecar_files_published": len(sources),
        **{f"{mode}_{k}": v for mode, r in out.items() for k, v in r.items()},
        "ratio_seconds_uniform_vs_union": round(out["uniform"]["seconds"] / out["union_by_name"]["seconds"], 3),
        "ratio_peak_rss_uniform_vs_union": round(out["uniform"]["peak_rss_mib"] / out["union_by_name"]["peak_rss_mib"], 3),
        "ratio_seconds_fused_vs_uniform": round(out["fused"]["seconds"] / out["uniform"]["seconds"], 3),
        "ratio_peak_rss_fused_vs_uniform": round(out["fused"]["peak_rss_mib"] / out["uniform"]["peak_rss_mib"], 3),
        "new_sidecars": new,
        "ratio_seconds_incremental_vs_fused": round(out["incremental"]["seconds"] / out["fused"]["seconds"], 3),
        "ratio_seconds_columns_vs_incremental": round(out["columns"]["seconds"] / out["incremental"]["seconds"], 3),
        "ratio_peak_rss_columns_vs_incremental": round(out["columns"]["peak_rss_mib"] / out["incremental"]["peak_rss_mib"],
                                                        3),
        "load_average": round(os.getloadavg()[0], 2),
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        _child(*argv[1:4])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=23000)
    parser.add_argument("--new", type=int, default=64, help="sidecars a night adds (incremental mode)")
    parser.add_argument("--dir", type=Path, help="work folder, kept (default: a temporary one, removed); its home/ "
                        "and year/ are wiped by the next run, and refused if a benchmark did not make them")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args(argv)
    report(run(args.files, args.dir, args.new), args.json_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
