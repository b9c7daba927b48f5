"""Every benchmark in one run and one report: each stage's throughput next to its baseline, as ratios.

    .venv/bin/python -m benchmarks.run [--quick] [--only features,dedup,...] [--out FILE]
    make bench [BENCH_ARGS="--quick --only dedup"]

Runs, in this order, each in a forked process of its own and each with its baseline measured in the same run:

- ``features``: the feature stage vs its per-image limit, the NudeNet 320n forward plus the fastest PNG
  decode (goal >= 0.9x), vs the obvious code, and the Beam scaling from 1 to 2 workers (benchmarks/features.py);
- ``dedup``: banded near-duplicate search vs brute force at 1M hashes (goal < 10 s) (benchmarks/dedup.py);
- ``shards``: shard writing vs raw sequential disk write (goal >= 0.5x) and vs a bare reference writer
  (reading, hashing and appending the same JPEGs) (benchmarks/shards.py);
- ``loader``: the trainer's loader vs decode+preprocess alone (goal >= 0.9x) (benchmarks/loader.py);
- ``metadata``: ingest, curation, splits and sidecars on 1M simulated rankings (goal < 120 s in all)
  (benchmarks/metadata.py);
- ``incremental``: a nightly `pickapic build` of day N+1 vs the first build of N days
  (benchmarks/incremental.py);
- ``app_export``: one day of 1M rankings exported from a throwaway PostgreSQL server vs a bare read of
  the same rows, and its peak RSS vs a 10x smaller day (benchmarks/app_export.py).
- ``quarantine``: ingest of a day of 10M bad lines (blank, repeated, all different) vs a bare gzip
  read of the same file and a clean day's ingest (goal: peak RSS < 500 MB) (benchmarks/quarantine.py).
- ``nightly``: the nightly path stage by stage after 3, 10 and 30 days, and the "up to date" build
  (benchmarks/nightly.py).

The other benchmarks of README's table (``features_crossover``, ``moderation``, ``direct_io``, ``jpg_digests``,
``fetch_plan``, ``nightly_publish``, ``sidecar_scan``, ``dagster_events``, and the diagnostics ``pickscore_compat``,
``scorer_diagnosis``) are not run here: each is run by hand with its own command line.

Prints one table, each row with the wall seconds and the peak memory of its benchmark (``ru_maxrss`` of the
benchmark's process or of the largest child it waited for: not a sum), and writes JSON to
``benchmarks/results/bench-<git short sha>[-dirty][-quick].json`` (no timestamp in the name, so results
compare across versions). ``--quick`` uses small sizes for a
smoke check. A benchmark that fails is reported as such; the others still run (exit status 1).
Absolute numbers drift on a shared machine; the ratios come from one run and are what to compare.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
ORDER = ("features", "dedup", "shards", "loader", "metadata", "incremental", "nightly", "app_export",
         "quarantine")


@dataclass
class Row:
    """One line of the report: a measure, its baseline from the same run, and their ratio."""

    benchmark: str
    measure: str
    value: float
    unit: str
    baseline: str
    baseline_value: float
    ratio: float
    goal: str
    seconds: float = float("nan")        # wall seconds of the whole benchmark this row comes from
    peak_rss_mb: float = float("nan")    # its peak memory: ru_maxrss of its process or of one of its children


def _ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b else float("nan")


# --- runners (one per benchmark module; each returns that module's own result dict) -------------

def run_features(quick: bool) -> dict:
    from benchmarks import features

    return features.main(["--images", "32", "--size", "256", "--rounds", "1"] if quick else [])


def run_dedup(quick: bool) -> dict:
    from benchmarks import dedup
    from pipelines.curation.dedup import DedupConfig

    return dedup.run(100_000, 10_000, DedupConfig()) if quick else dedup.run(1_000_000, 50_000, DedupConfig())


def run_shards(quick: bool) -> dict:
    from benchmarks import shards

    return shards.run(600, 1, 0, True, None) if quick else shards.run(3000, 3, 0, True, None)


def run_loader(quick: bool) -> dict:
    from benchmarks import loader

    return loader.main(["--pairs", "128", "--repeats", "1"] if quick else [])


def run_metadata(quick: bool) -> dict:
    from benchmarks import metadata

    return metadata.run(rankings=50_000, days=2) if quick else metadata.run(rankings=1_000_000, days=10)


def run_incremental(quick: bool) -> dict:
    from benchmarks import incremental

    if quick:
        return incremental.run(days=2, users=40, rankings_per_day=60, image_size=64,
                               settings={"splits.min_users": 3, "splits.min_unique_rows": 1})
    return incremental.run()


def run_app_export(quick: bool) -> dict:
    from benchmarks import app_export

    return app_export.run(20_000, 2_000) if quick else app_export.run()


def run_quarantine(quick: bool) -> dict:
    from benchmarks import quarantine

    return quarantine.run(lines=200_000 if quick else 10_000_000)


def run_nightly(quick: bool) -> dict:
    from benchmarks import nightly

    if quick:
        return nightly.run(days=(3, 5), users=40, rankings_per_day=60, rounds=1)
    return nightly.run()


RUNNERS: dict[str, Callable[[bool], dict]] = {
    "features": run_features, "dedup": run_dedup, "shards": run_shards, "loader": run_loader,
    "metadata": run_metadata, "incremental": run_incremental, "nightly": run_nightly,
    "app_export": run_app_export, "quarantine": run_quarantine,
}


# --- rows: what each result means next to its baseline -----------------------------------------

def rows_features(r: dict) -> list[Row]:
    limit = [Row("features", "feature stage, 1 thread (CPU time)", r["stage_1t_cpu"], "img/CPU-s",
                 f"model forward + {r['fastest_decoder']} PNG decode", r["limit_cpu"],
                 _ratio(r["stage_1t_cpu"], r["limit_cpu"]), ">= 0.9")] if "limit_cpu" in r else []
    if "direct_1t_cpu" in r:   # the same work as plain calls: what any implementation with these outputs must do
        limit.append(Row("features", "the same work as plain calls (CPU time)", r["direct_1t_cpu"], "img/CPU-s",
                         f"model forward + {r['fastest_decoder']} PNG decode", r["limit_cpu"],
                         _ratio(r["direct_1t_cpu"], r["limit_cpu"]), "—"))
        limit.append(Row("features", "feature stage, 1 thread (CPU time)", r["stage_1t_cpu"], "img/CPU-s",
                         "the same work as plain calls", r["direct_1t_cpu"],
                         _ratio(r["stage_1t_cpu"], r["direct_1t_cpu"]), ">= 0.95"))
    return limit + [
        Row("features", "feature stage, 1 thread (wall)", r["stage_1t_wall"], "img/s",
            "bare session.run, 1 thread", r["bare_1t_wall"], _ratio(r["stage_1t_wall"], r["bare_1t_wall"]), "—"),
        Row("features", "feature stage, 1 thread (CPU time)", r["stage_1t_cpu"], "img/CPU-s",
            "bare session.run, 1 thread", r["bare_1t_cpu"], _ratio(r["stage_1t_cpu"], r["bare_1t_cpu"]), "—"),
        Row("features", "Beam 2 workers (marginal)", r["beam_2w_steady"], "img/s",
            "bare session.run, 2 threads", r["bare_2t_wall"], _ratio(r["beam_2w_steady"], r["bare_2t_wall"]), ">= 0.9"),
        Row("features", "feature stage, 1 thread (wall)", r["stage_1t_wall"], "img/s",
            "NudeDetector.detect + imagehash", r["obvious_wall"], _ratio(r["stage_1t_wall"], r["obvious_wall"]), "> 1"),
        Row("features", "Beam 2 workers (marginal)", r["beam_2w_steady"], "img/s",
            "Beam 1 worker (marginal)", r["beam_1w_steady"], _ratio(r["beam_2w_steady"], r["beam_1w_steady"]), "~2 (scaling)"),
    ]


def rows_dedup(r: dict) -> list[Row]:
    n = r["n"]
    return [
        Row("dedup", f"banded search, {n:,} hashes ({r['banded_seconds']} s)", round(n / r["banded_seconds"]), "hashes/s",
            "numpy brute force (extrapolated)", round(n / r["brute_seconds_extrapolated"]),
            r["speedup_vs_brute_force"], "< 10 s at 1M"),
    ]


def rows_shards(r: dict) -> list[Row]:
    return [
        Row("shards", "publish, shard phase", r["publish_shards_mb_s"], "MB/s",
            "raw sequential write", r["raw_write_mb_s"], r["ratio_publish_shards_vs_raw"], ">= 0.5"),
        Row("shards", "publish, end to end", r["publish_total_mb_s"], "MB/s",
            "raw sequential write", r["raw_write_mb_s"], r["ratio_publish_total_vs_raw"], ""),
        Row("shards", f"nightly publish, shard phase ({r['nightly_written_mb']} MB written)", r["nightly_shards_mb_s"],
            "MB/s", "raw sequential write", r["nightly_raw_write_mb_s"], r["ratio_nightly_shards_vs_raw"], ">= 0.5"),
        Row("shards", "webdataset TarWriter, 1 core", r["webdataset_tarwriter_1core_mb_s"], "MB/s",
            "raw sequential write", r["raw_write_mb_s"], r["ratio_tarwriter_vs_raw"], "(reference)"),
        Row("shards", "bare writer: read + sha256 + append the JPEGs, as many processes", r["bare_mb_s"], "MB/s",
            "raw sequential write", r["raw_write_mb_s"], r["ratio_bare_vs_raw"], "(reference)"),
        Row("shards", "publish, shard phase", r["publish_shards_mb_s"], "MB/s",
            "the bare writer", r["bare_mb_s"], r["ratio_publish_shards_vs_bare"], "(reference)"),
        Row("shards", "nightly bare writer", r["nightly_bare_mb_s"], "MB/s",
            "raw sequential write", r["nightly_raw_write_mb_s"], r["ratio_nightly_bare_vs_raw"], "(reference)"),
        Row("shards", "nightly publish, shard phase", r["nightly_shards_mb_s"], "MB/s",
            "the bare writer", r["nightly_bare_mb_s"], r["ratio_nightly_shards_vs_bare"], "(reference)"),
    ]


def rows_loader(r: dict) -> list[Row]:
    return [
        Row("loader", "train loader, 1 worker, draft decode (wall)", r["draft_loader_1worker_pairs_per_s"], "pairs/s",
            "decode + preprocess alone", r["draft_alone_pairs_per_s"], r["draft_ratio_loader_1worker_vs_alone_wall"], ">= 0.9"),
        Row("loader", "train loader, draft decode (CPU time)", float("nan"), "",
            "decode + preprocess alone", float("nan"), r["draft_ratio_loader_vs_alone_cpu"], ">= 0.9"),
        Row("loader", "train loader, 1 worker, full decode (wall)", r["full_loader_1worker_pairs_per_s"], "pairs/s",
            "decode + preprocess alone", r["full_alone_pairs_per_s"], r["full_ratio_loader_1worker_vs_alone_wall"], ">= 0.9"),
    ]


def rows_metadata(r: dict) -> list[Row]:
    rows = [Row("metadata", f"{name} ({s['seconds']} s)", s["rows_per_s"], "rows/s", s["baseline"],
                s["baseline_rows_per_s"], s["ratio_vs_baseline"], "") for name, s in r["stages"].items()]
    rows.append(Row("metadata", f"all stages, {r['rankings_requested']:,} rankings", r["total_seconds"], "s",
                    "goal", r["goal_seconds"], r["ratio_goal_vs_total"], "< 120 s (ratio >= 1)"))
    return rows


def rows_incremental(r: dict) -> list[Row]:
    return [
        Row("incremental", f"nightly build of day {r['days'] + 1}", r["nightly_build_seconds"], "s",
            f"first build of {r['days']} days", r["first_build_seconds"], r["ratio_nightly_vs_first"],
            f"~{r['ideal_ratio']} (1/N)"),
        Row("incremental", "same nightly, nothing new (fixed cost)", r["nightly_rerun_nothing_new_seconds"], "s",
            "nightly build", r["nightly_build_seconds"], r["ratio_fixed_cost_vs_nightly"], "small"),
    ]


def rows_nightly(r: dict) -> list[Row]:
    small, large = r["histories"][0], r["histories"][-1]
    n0, n1 = small["days"], large["days"]
    return [
        Row("nightly", f"daily partition of day {n1 + 1}", large["daily_seconds"], "s",
            f"the same after {n0} days", small["daily_seconds"], r["ratio_daily"], "<= 1.2 (flat)"),
        Row("nightly", f"global rebuild after {n1} days", large["global_seconds"], "s",
            f"the same after {n0} days", small["global_seconds"], r["ratio_global"], "(grows with history)"),
        Row("nightly", f"unchanged home, {n1} days", large["up_to_date_seconds"], "s",
            "goal", 5.0, _ratio(large["up_to_date_seconds"], 5.0), "< 5 s (ratio < 1)"),
    ]


def rows_app_export(r: dict) -> list[Row]:
    return [
        Row("app_export", f"export of {r['rankings_requested']:,} rankings ({r['export_seconds']} s)",
            r["export_rows_per_s"], "rows/s", "bare read of the same rows", r["read_only_rows_per_s"],
            r["ratio_export_vs_read_only"], "(formatting cost)"),
        Row("app_export", f"peak RSS, {r['rankings_requested']:,} rankings", r["export_peak_rss_mb"], "MB",
            f"peak RSS, {r['small_rankings']:,} rankings", r["small_export_peak_rss_mb"],
            r["ratio_peak_rss_big_vs_small"], "~1 (flat in the day's size)"),
    ]


def rows_quarantine(r: dict) -> list[Row]:
    rows = []
    floor = r["clean_day_ingest"]["peak_rss_mb"]
    for kind, k in r["kinds"].items():
        rows.append(Row("quarantine", f"{kind}: ingest of {r['lines']:,} bad lines ({k['ingest_seconds']} s)",
                        k["ingest_peak_rss_mb"], "MB peak", "clean day's ingest", floor, k["ratio_rss_vs_clean_day"],
                        f"< {r['goal_peak_rss_mb']:.0f} MB"))
        rows.append(Row("quarantine", f"{kind}: ingest time", k["ingest_seconds"], "s", "bare gzip + line split",
                        k["bare_read_seconds"], k["ratio_time_vs_bare_read"], ""))
    return rows


ROWS: dict[str, Callable[[dict], list[Row]]] = {
    "features": rows_features, "dedup": rows_dedup, "shards": rows_shards, "loader": rows_loader,
    "metadata": rows_metadata, "incremental": rows_incremental, "nightly": rows_nightly,
    "app_export": rows_app_export, "quarantine": rows_quarantine,
}


# --- report -------------------------------------------------------------------------------------

def git_name() -> str:
    """``<short sha>`` plus ``-dirty`` when the working tree has changes ('nogit' outside git)."""
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "nogit"
    return sha + ("-dirty" if dirty else "")


def _fmt(value: float) -> str:
    if value != value:  # NaN
        return "-"
    return f"{value:,.1f}" if abs(value) < 1e5 else f"{value:,.0f}"


def render(rows: list[Row], errors: dict[str, str], seconds: dict[str, float] | None = None,
           peaks: dict[str, float] | None = None) -> str:
    """The report as an aligned text table: each row with its benchmark's wall seconds and peak memory."""
    header = ("benchmark", "measure", "value", "unit", "baseline (same run)", "baseline", "ratio", "bench s",
              "peak MB", "goal")
    cells = [header] + [(r.benchmark, r.measure, _fmt(r.value), r.unit, r.baseline, _fmt(r.baseline_value),
                         f"{r.ratio:.3f}" if r.ratio == r.ratio else "-", _fmt(r.seconds), _fmt(r.peak_rss_mb), r.goal)
                        for r in rows]
    widths = [max(len(str(c[i])) for c in cells) for i in range(len(header))]
    numeric = {2, 5, 6, 7, 8}
    lines = []
    for n, row in enumerate(cells):
        lines.append("  ".join(str(c).rjust(w) if i in numeric else str(c).ljust(w)
                               for i, (c, w) in enumerate(zip(row, widths))).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    for name, error in errors.items():
        spent = [f"{_fmt(seconds[name])} s" if seconds and name in seconds else "",
                 f"peak {_fmt(peaks[name])} MB" if peaks and name in peaks else ""]
        spent_text = ", ".join(x for x in spent if x)
        lines.append(f"{name}: FAILED: {error.strip().splitlines()[-1]}" + (f" ({spent_text})" if spent_text else ""))
    return "\n".join(lines)


def _measure(name: str, quick: bool) -> dict:
    """In the benchmark's own process: its result and the report's rows (both JSON-able)."""
    result = RUNNERS[name](quick)
    return {"result": result, "rows": [asdict(r) for r in ROWS[name](result)]}


# how long a benchmark stopped by a Ctrl-C or a SIGTERM to ``benchmarks.run`` may take to remove its work folder
# (GBs of files) before it is killed; a second Ctrl-C kills it at once
STOP_WAIT_S = 120.0
# what stops a run: the parent turns them into an exception and stops its benchmark (never leaves it running: review
# rev33k); the benchmark turns the first into KeyboardInterrupt (its ``finally`` blocks run) and ignores the others
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _stopped_by_signal(signum: int, _frame) -> None:
    """The parent's handler of SIGTERM and SIGHUP (``kill PID``, a job runner's cancel, a closed terminal): an
    exception, so :func:`isolated` stops its benchmark before this process ends (exit status 128 + the signal)."""
    raise SystemExit(128 + signum)


def _interrupt_once(benchmark: int) -> None:
    """In the benchmark's process ``benchmark``: the first of SIGINT, SIGTERM or SIGHUP raises KeyboardInterrupt, so its
    clean-up runs (``work_folder``'s removal of the temporary folder), and the later ones are ignored, so that
    clean-up is not cut short: a terminal's Ctrl-C reaches it twice, once from the terminal and once forwarded by
    :func:`isolated` (review rev33k: its SIGTERM ended the benchmark at once, and a temporary folder of 20,000 files
    stayed). A process the benchmark forks (a pool's worker) inherits this handler but keeps the signals' usual
    meaning (SIGINT: KeyboardInterrupt; the others end it).

    The clean-up is bounded by the benchmark itself: the first stop signal also starts a timer of
    :data:`STOP_WAIT_S` (``ITIMER_REAL``) whose SIGALRM, at its default action, ends the benchmark. The parent's
    SIGKILL after that wait is not enough: a parent SIGKILLed meanwhile (a job runner's grace period, shorter than
    STOP_WAIT_S) sends only the SIGTERM of ``PR_SET_PDEATHSIG``, which is ignored by then (review rev33t: a hung
    clean-up outlived ``benchmarks.run`` for good)."""
    def handler(signum: int, frame) -> None:
        if os.getpid() != benchmark:
            if signum == signal.SIGINT:
                signal.default_int_handler(signum, frame)
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        for sig in _STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        signal.setitimer(signal.ITIMER_REAL, STOP_WAIT_S)     # the clean-up's bound, whoever is left to wait
        raise KeyboardInterrupt(f"stopped by signal {signal.Signals(signum).name}")

    for sig in _STOP_SIGNALS:
        signal.signal(sig, handler)


def _stop(pid: int) -> None:
    """Stop and reap the benchmark ``pid`` (this process was interrupted): SIGTERM, which it turns into
    KeyboardInterrupt once (:func:`_interrupt_once`), then up to :data:`STOP_WAIT_S` for its clean-up; SIGKILL after
    that, or at once on a second interruption here (which is then raised)."""
    import time as clock

    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = clock.monotonic() + STOP_WAIT_S
    try:
        while not os.waitpid(pid, os.WNOHANG)[0]:
            if clock.monotonic() > deadline:
                break
            clock.sleep(0.05)
        else:
            return
    except ChildProcessError:
        return
    except BaseException:                              # a second Ctrl-C: no more waiting
        with contextlib.suppress(ProcessLookupError, ChildProcessError):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        raise
    with contextlib.suppress(ProcessLookupError, ChildProcessError):
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def isolated(function: Callable, *args) -> tuple[object, float, str | None]:
    """``function(*args)`` in a forked child process: (its JSON-able value or None, peak RSS in MB, the
    traceback if it raised, else None).

    The peak is ``ru_maxrss`` of the child and of the processes it waited for (``wait4``: the largest one,
    not a sum): the memory of that benchmark alone, which the same number of one process running every
    benchmark in turn cannot tell (it only grows). The child starts as a copy of this small process (only the
    standard library imported), so its peak includes those few MB. Each benchmark's imports, caches and
    garbage also end with its process.

    The benchmark never outlives this process (review rev33k): a Ctrl-C, or a SIGTERM or SIGHUP here (turned into
    ``SystemExit``), stops it (:func:`_stop`) and is raised once it has ended; a SIGKILL here sends it SIGTERM
    (``PR_SET_PDEATHSIG``). Stopped either way, it gets KeyboardInterrupt once (:func:`_interrupt_once`), so its
    temporary work folder is removed as when it runs by itself."""
    parent = os.getpid()
    # no stop signal between the fork and the handlers: the child's come before its code, the parent's before it waits
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        read, write = os.pipe()
        pid = os.fork()
    except BaseException:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        raise
    if pid == 0:                                       # the child: never returns into the caller's code
        code = 1
        try:
            _interrupt_once(os.getpid())
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            from formats.processes import die_with_parent

            die_with_parent(parent, signal.SIGTERM)    # this process SIGKILLed: the benchmark still cleans up
            os.close(read)
            try:
                payload = {"value": function(*args)}
            except Exception:  # noqa: BLE001 -- sent to the parent, which reports it
                payload = {"error": traceback.format_exc()}
            data = json.dumps(payload, default=str).encode()
            with os.fdopen(write, "wb") as pipe:
                pipe.write(data)
            code = 0
        except BaseException:  # noqa: BLE001 -- e.g. Ctrl-C: printed, then the child ends
            traceback.print_exc()
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)
    previous = {}
    try:
        for sig in (signal.SIGTERM, signal.SIGHUP):
            previous[sig] = signal.signal(sig, _stopped_by_signal)
    except ValueError:                                 # not the main thread: the caller's handlers stay
        pass
    os.close(write)
    pipe = os.fdopen(read, "rb")
    try:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)   # a signal that came meanwhile is raised here
        data = pipe.read()
        _, status, usage = os.wait4(pid, 0)
    except BaseException:                              # Ctrl-C or SIGTERM here: the child is stopped and reaped too
        _stop(pid)
        raise
    finally:
        pipe.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    peak_mb = round(usage.ru_maxrss / 1024, 1)        # KiB on Linux
    if status != 0 or not data:
        how = (f"killed by signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status)
               else f"exited {os.WEXITSTATUS(status)}")
        return None, peak_mb, f"the benchmark's process {how} without a result\n"
    payload = json.loads(data)
    return payload.get("value"), peak_mb, payload.get("error")


def main(argv: list[str] | None = None) -> int:
    """Run the selected benchmarks, print the report, write the JSON; 1 if any benchmark failed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke check, not the reported numbers")
    parser.add_argument("--only", default=",".join(ORDER), help=f"comma-separated subset of {','.join(ORDER)}")
    parser.add_argument("--out", type=Path, help="JSON path (default: benchmarks/results/bench-<git sha>.json)")
    args = parser.parse_args(argv)
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(ORDER))
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {', '.join(ORDER)}")

    version = git_name()
    results: dict[str, dict] = {}
    seconds: dict[str, float] = {}
    peaks: dict[str, float] = {}
    errors: dict[str, str] = {}
    rows: list[Row] = []
    for name in (n for n in ORDER if n in chosen):
        print(f"== {name}", file=sys.stderr, flush=True)
        started = time.perf_counter()
        # each benchmark in a process of its own: its peak memory is its own (and a failure is reported, the
        # others still run, exit 1 at the end)
        value, peaks[name], error = isolated(_measure, name, args.quick)
        seconds[name] = round(time.perf_counter() - started, 1)
        if error is not None:
            errors[name] = error
            print(error, file=sys.stderr)
        else:
            results[name] = value["result"]
            rows += [Row(**{**r, "seconds": seconds[name], "peak_rss_mb": peaks[name]}) for r in value["rows"]]
        print(f"== {name}: {seconds[name]} s, peak {peaks[name]} MB", file=sys.stderr, flush=True)

    report = render(rows, errors, seconds, peaks)
    print(f"\npickapic benchmarks @ {version} ({'quick' if args.quick else 'full'} scale), "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}\n")
    print(report)
    out = args.out or RESULTS / f"bench-{version}{'-quick' if args.quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"version": version, "scale": "quick" if args.quick else "full", "cpus": os.cpu_count(),
               "machine": platform.platform(), "python": platform.python_version(),
               "benchmark_seconds": seconds, "benchmark_peak_rss_mb": peaks, "rows": [asdict(r) for r in rows], "results": results,
               "errors": errors}
    out.write_text(json.dumps(payload, indent=1, sort_keys=True, default=str) + "\n")
    print(f"\nJSON: {out}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
