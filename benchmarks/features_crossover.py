"""Small days: the feature stage in-process vs in worker processes, by the number of images (run by hand).

    .venv/bin/python -m benchmarks.features_crossover [--images 30,60,120,240] [--size 512] [--format png]
        [--workers 2] [--repeats 2] [--json out.json]

On the DirectRunner the stage runs ``in_memory`` (in the calling process, one onnxruntime thread) when a
day has fewer images than ``features.in_process_below``, else ``multi_processing`` with
``features.workers`` processes, each of which starts a Python, imports Beam and loads NudeNet before its
first image. This benchmark times both modes on the same generated images for each job size, alternated
repeat by repeat so that load drift hits both, each run in a fresh Python process that has already
imported the stage (as the Dagster process has) and then calls ``build_features`` once:

- wall seconds of the stage (``FeaturesReport.stage_seconds``);
- CPU seconds of that process and every worker it started (``RUSAGE_SELF`` + ``RUSAGE_CHILDREN``);
- peak memory of the run, its process and its live workers together (their proportional set sizes,
  ``Pss`` of ``/proc/PID/smaps_rollup``, summed, sampled every 20 ms: shared library pages count once);
- the ratio in-process / workers of the median wall and CPU, and the largest size at which in-process
  is still no slower (the crossover ``in_process_below`` should sit at).
Absolute numbers drift on shared machines; compare the ratios, which come from the same run.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

ONE_RUN = r"""
import json, os, resource, sys, threading, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from benchmarks.features import make_home
from pipelines.features.config import FeaturesConfig
from pipelines.features.stage import build_features

root, raw, paths, workers = Path(sys.argv[2]), Path(sys.argv[3]), json.loads(sys.argv[4]), int(sys.argv[5])
home = make_home(root, raw, paths)
peak, stop = [0], threading.Event()

def rss_kib(pid):
    # PSS: a page shared by several processes (the libraries every worker maps) counts once in the sum
    try:
        with open(f"/proc/{pid}/smaps_rollup") as rollup:
            return next(int(line.split()[1]) for line in rollup if line.startswith("Pss:"))
    except (OSError, StopIteration):
        return 0

def descendants(pid):
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        children = []
        for task in Path(f"/proc/{parent}/task").glob("*"):   # a child belongs to the thread that started it
            try:
                children += (task / "children").read_text().split()
            except OSError:
                continue
        found += [int(c) for c in children]
        todo += [int(c) for c in children]
    return found

def sample():
    me = os.getpid()
    while not stop.is_set():
        peak[0] = max(peak[0], rss_kib(me) + sum(rss_kib(p) for p in descendants(me)))
        stop.wait(0.02)

sampler = threading.Thread(target=sample, daemon=True)
sampler.start()
config = FeaturesConfig(workers=workers, in_process_below=0)
cpu = lambda: sum(resource.getrusage(who).ru_utime + resource.getrusage(who).ru_stime
                  for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
before = cpu()
report = build_features(home, "2023-03-01", config)
spent = cpu() - before
stop.set()
sampler.join()
assert report.processed == len(paths), report
print(json.dumps({"wall": report.stage_seconds, "cpu": spent, "peak_mib": peak[0] / 1024}))
"""


def one_run(folder: Path, raw: Path, paths: list[str], workers: int) -> dict:
    """Wall, CPU and peak memory of one ``build_features`` call (``workers`` 0: in-process) in a fresh process."""
    done = subprocess.run([sys.executable, "-c", ONE_RUN, str(REPO), str(folder), str(raw), json.dumps(paths),
                           str(workers)], capture_output=True, text=True, cwd=REPO, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"benchmark run failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    sys.path.insert(0, str(REPO))
    from benchmarks.features import make_raw

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", default="30,60,120,240", help="job sizes (images in the day), e.g. 30,60,120,240")
    parser.add_argument("--size", type=int, default=512, help="image side in pixels (> 100)")
    parser.add_argument("--format", choices=("png", "jpeg"), default="png")
    parser.add_argument("--workers", type=int, default=2, help="worker processes of the multi_processing runs")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    sizes = sorted({int(n) for n in args.images.split(",") if n.strip()})
    results: dict = {"size": args.size, "format": args.format, "workers": args.workers, "repeats": args.repeats,
                     "cpus": os.cpu_count(), "machine": platform.processor() or platform.machine(),
                     "load_average_before": os.getloadavg()[0], "jobs": {}}
    with tempfile.TemporaryDirectory(prefix="bench-crossover-") as tmp:
        folder = Path(tmp)
        raw, paths = make_raw(folder / "shared", max(sizes), args.size, args.format)
        for n in sizes:
            runs: dict[str, list[dict]] = {"in_process": [], "workers": []}
            for repeat in range(args.repeats):
                order = (("in_process", 0), ("workers", args.workers))
                for mode, workers in (order if repeat % 2 == 0 else order[::-1]):
                    runs[mode].append(one_run(folder / f"{mode}-{n}-{repeat}", raw, paths[:n], workers))
            job = {mode: {key: round(statistics.median(r[key] for r in rs), 3) for key in ("wall", "cpu", "peak_mib")}
                   for mode, rs in runs.items()}
            job["in_process / workers, wall"] = round(job["in_process"]["wall"] / job["workers"]["wall"], 3)
            job["in_process / workers, CPU"] = round(job["in_process"]["cpu"] / job["workers"]["cpu"], 3)
            job["in_process / workers, peak memory"] = round(job["in_process"]["peak_mib"] / job["workers"]["peak_mib"], 3)
            job["runs"] = runs
            results["jobs"][n] = job
            print(f"{n:5d} images: in-process {job['in_process']['wall']:6.2f} s, {job['in_process']['cpu']:6.2f} CPU-s, "
                  f"{job['in_process']['peak_mib']:6.0f} MiB | {args.workers} workers {job['workers']['wall']:6.2f} s, "
                  f"{job['workers']['cpu']:6.2f} CPU-s, {job['workers']['peak_mib']:6.0f} MiB | in-process / workers: "
                  f"wall {job['in_process / workers, wall']:.2f}, CPU {job['in_process / workers, CPU']:.2f}, "
                  f"peak memory {job['in_process / workers, peak memory']:.2f}", flush=True)
    results["load_average_after"] = os.getloadavg()[0]
    no_slower = [n for n in sizes if results["jobs"][n]["in_process / workers, wall"] <= 1.0]
    results["largest_size_in_process_no_slower"] = max(no_slower) if no_slower else None
    print(f"{args.size}px {args.format.upper()}, {results['cpus']} CPUs, load {results['load_average_before']:.1f} -> "
          f"{results['load_average_after']:.1f}: in-process no slower up to {results['largest_size_in_process_no_slower']} "
          f"images of the sizes tried")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, sort_keys=True))
    return results


if __name__ == "__main__":
    main()
