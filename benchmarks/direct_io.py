"""Benchmark: the publish's shard tars by O_DIRECT against the page cache (``publish.direct_io``), alternated in one run.

    python -m benchmarks.direct_io [--samples 3000] [--days 3] [--repeats 6] [--json-out results.json]

Builds the data home of :mod:`benchmarks.shards` (``--days`` export days and one more for the
night), then per repeat, once with ``direct_io`` and once without (the order alternates between
repeats): a from-scratch publish of ``--days`` days into an empty dataset folder, then the nightly
publish of one more day on top of it. For each it records the shard phase's rate, the writer
pool's MB per CPU-second, and how much the page cache grew during the from-scratch publish
(``Cached`` in ``/proc/meminfo``: a tar written by ``O_DIRECT`` leaves nothing there). Reports the
medians per mode and their ratios (direct over buffered), the peak resident memory of the writers
and of this process, and every repeat's numbers.

Unlike :mod:`benchmarks.shards` there is no raw write or bare writer between the publishes: the
nightly runs right after the from-scratch publish, as it would after the stages before it.
"""
from __future__ import annotations

import argparse
import resource
import shutil
import statistics
import sys
from pathlib import Path

from benchmarks import claim, report, work_folder
from benchmarks.shards import _children_cpu, _publish_with_days, _set_aside, build_history
from pipelines.publish.config import PublishConfig


def page_cache_mib() -> float:
    """The page cache's size now (``Cached`` in ``/proc/meminfo``), MiB."""
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("Cached:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("/proc/meminfo has no Cached line")


def run(samples: int, days: int, repeats: int, workers: int, root: Path | None) -> dict:
    with work_folder(root, "bench-direct-io-") as base:
        # every file under a folder the benchmark made (an earlier run's is wiped; a folder of someone else's refused)
        home, table = build_history(claim(base / "home"), samples, days)
        runs: dict[str, dict[str, list[float]]] = {
            mode: {k: [] for k in ("scratch_mb_s", "scratch_mb_per_cpu_s", "page_cache_growth_mib", "nightly_mb_s")}
            for mode in ("direct", "buffered")}
        written = {"scratch_mb": 0.0, "nightly_mb": 0.0}
        trash = claim(base / "trash")
        try:
            for repeat in range(repeats):
                for mode in (("direct", "buffered") if repeat % 2 == 0 else ("buffered", "direct")):
                    config = PublishConfig(workers=workers, fsync=True, max_samples_per_shard=1000,
                                           direct_io=mode == "direct")
                    _set_aside(home, trash / f"{repeat}-{mode}")
                    cpu, cached = _children_cpu(), page_cache_mib()
                    scratch = _publish_with_days(home, table, days, config)
                    growth, cpu = page_cache_mib() - cached, _children_cpu() - cpu
                    nightly = _publish_with_days(home, table, days + 1, config)
                    r = runs[mode]
                    r["scratch_mb_s"].append(scratch.bytes_written / 1e6 / scratch.write_seconds)
                    r["page_cache_growth_mib"].append(growth)
                    if cpu > 0:       # a pool ran (workers > 1)
                        r["scratch_mb_per_cpu_s"].append(scratch.bytes_written / 1e6 / cpu)
                    r["nightly_mb_s"].append(nightly.bytes_written / 1e6 / nightly.write_seconds)
                    written = {"scratch_mb": round(scratch.bytes_written / 1e6, 1),
                               "nightly_mb": round(nightly.bytes_written / 1e6, 1)}
        finally:
            shutil.rmtree(trash, ignore_errors=True)
    med = {mode: {k: statistics.median(v) if v else float("nan") for k, v in r.items()} for mode, r in runs.items()}
    return {
        "benchmark": "direct_io", "samples": samples, "days": days, "repeats": repeats, **written,
        "median": {mode: {k: round(v, 1) for k, v in m.items()} for mode, m in med.items()},
        "ratio_direct_vs_buffered": {k: round(med["direct"][k] / med["buffered"][k], 3)
                                     for k in ("scratch_mb_s", "scratch_mb_per_cpu_s", "nightly_mb_s")},
        "peak_rss_mib": {"writers": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
                         "this_process": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)},
        "runs": {mode: {k: [round(x, 1) for x in v] for k, v in r.items()} for mode, r in runs.items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=3000)
    parser.add_argument("--days", type=int, default=3, help="export days of the from-scratch publish (the night adds one)")
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--workers", type=int, default=0, help="0 = one per CPU")
    parser.add_argument("--dir", type=Path, help="work folder, kept (default: a temporary one, removed); its home/ "
                        "and trash/ are wiped by the next run, and refused if a benchmark did not make them")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args(argv)
    report(run(args.samples, args.days, args.repeats, args.workers, args.dir), args.json_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
