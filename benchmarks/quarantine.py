"""Ingest memory and time on a day of millions of bad lines: peak RSS must not grow with them.

    .venv/bin/python -m benchmarks.quarantine [--lines 10000000] [--kinds blank,repeats,distinct] [--dir DIR]

For each kind of hostile day, a raw zone of one day whose ``downloads`` (or ``rankings``) file holds
``--lines`` bad lines (the other files hold a few clean rows) is ingested by ``ingest_day`` in a
fresh process that reports its own peak RSS (``ru_maxrss``) and wall time:

- ``blank``: blank lines (the reported attack: a 16 KB gzip of newlines);
- ``repeats``: exact copies of one valid ranking (``duplicate_row``, the repeat log);
- ``distinct``: all-different lines (``{"download_id": i}``, ``missing_field``): nothing collapses, so
  the quarantine has a row per line, spilled to disk and combined by DuckDB.

Baselines, in the same run and each in its own fresh process: the same file read by a bare
``gzip`` + line split (what any reader must pay), and the ingest of a clean day of a few rows (the
interpreter, pyarrow, DuckDB and the pipeline imported: the floor of any ingest). Goal: peak RSS under
500 MB at 10M bad lines for every kind.
"""
from __future__ import annotations

import argparse
import gzip
import itertools
import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from benchmarks import claim, remove_owned, work_folder

REPO = Path(__file__).resolve().parents[1]
DAY = "2023-03-01"
GOAL_MB = 500.0
KINDS = ("blank", "repeats", "distinct")

# Peak RSS is the child's own VmHWM: ru_maxrss survives fork and exec, so a child would report its
# parent's peak (the runner that wrote a 3 GB file) instead of its own.
_CHILD = textwrap.dedent("""
    import json, resource, sys, time
    def peak_mb():
        try:
            with open("/proc/self/status") as status:
                return next(int(l.split()[1]) for l in status if l.startswith("VmHWM:")) / 1024
        except (OSError, StopIteration):
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.perf_counter()
    mode, root = sys.argv[1], sys.argv[2]
    if mode == "ingest":
        from formats.home import DataHome
        from pipelines.ingest.day import ingest_day
        report = ingest_day(DataHome(__import__("pathlib").Path(root)), sys.argv[3])
        out = {"lines_in": report.lines_in, "quarantined": report.quarantined, "rows": report.quarantine_rows,
               "reconciled": report.reconciled}
    else:
        import gzip
        lines = 0
        with gzip.open(root, "rb") as handle:
            while block := handle.read(1 << 20):
                lines += len(block.split(b"\\n")) - 1
        out = {"lines_in": lines}
    out["seconds"] = time.perf_counter() - started
    out["peak_rss_mb"] = peak_mb()
    print(json.dumps(out))
""")

_CLEAN = {
    "users": b'{"user_id": 7, "created_at": "2023-03-01 08:00:00", "email": null, "name": null}\n',
    "images": (b'{"image_id": 1, "created_at": "2023-03-01 08:00:01", "image_uid": "0b0a5e2e-6d9c-4b8e-9d3e-1c2b3a4d5e6f", '
               b'"user_id": 7, "prompt": "a red cube", "negative_prompt": null, "seed": 1, "gs": 7.5, "steps": 25, '
               b'"idx": 0, "num_generated": 2, "scheduler_cls": "DDIM", "model_id": "m"}\n'
               b'{"image_id": 2, "created_at": "2023-03-01 08:00:01", "image_uid": "1b0a5e2e-6d9c-4b8e-9d3e-1c2b3a4d5e6f", '
               b'"user_id": 7, "prompt": "a red cube", "negative_prompt": null, "seed": 1, "gs": 7.5, "steps": 25, '
               b'"idx": 1, "num_generated": 2, "scheduler_cls": "DDIM", "model_id": "m"}\n'),
    "rankings": (b'{"ranking_id": 1, "created_at": "2023-03-01 08:00:02", "user_id": 7, '
                 b'"image_0_uid": "0b0a5e2e-6d9c-4b8e-9d3e-1c2b3a4d5e6f", "image_1_uid": "1b0a5e2e-6d9c-4b8e-9d3e-1c2b3a4d5e6f", '
                 b'"image_2_uid": null, "image_3_uid": null, "best_image_uid": "none", "prompt": "a red cube"}\n'),
    "downloads": (b'{"download_id": 1, "created_at": "2023-03-01 08:00:03", "user_id": 7, '
                  b'"image_uid": "0b0a5e2e-6d9c-4b8e-9d3e-1c2b3a4d5e6f", "prompt": null}\n'),
}


def _write_gz(path: Path, chunks) -> None:
    """Stream ``chunks`` into a gzip file (level 6, mtime 0) without holding them all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=0) as out:
        for chunk in chunks:
            out.write(chunk)


def make_day(root: Path, kind: str, lines: int) -> Path:
    """A raw zone of one day with ``lines`` bad lines of ``kind``; returns the hostile file."""
    folder = root / "raw" / "app_logs" / f"dt={DAY}"
    for table, text in _CLEAN.items():
        _write_gz(folder / f"{table}.jsonl.gz", [text])
    batch = 100_000
    if kind == "blank":
        target = folder / "downloads.jsonl.gz"
        _write_gz(target, (b"\n" * min(batch, lines - i) for i in range(0, lines, batch)))
    elif kind == "repeats":
        target = folder / "rankings.jsonl.gz"
        _write_gz(target, itertools.chain([_CLEAN["rankings"]], (_CLEAN["rankings"] * min(batch, lines - i)
                                                                  for i in range(0, lines, batch))))
    elif kind == "distinct":
        target = folder / "downloads.jsonl.gz"
        _write_gz(target, (b"".join(b'{"download_id": %d}\n' % n for n in range(i, min(i + batch, lines)))
                           for i in range(0, lines, batch)))
    else:
        raise ValueError(f"unknown kind {kind!r}; choose from {KINDS}")
    return target


def _child(*args: str) -> dict:
    done = subprocess.run([sys.executable, "-c", _CHILD, *args], cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"benchmark child {args} exited {done.returncode}:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(lines: int = 10_000_000, kinds: tuple[str, ...] = KINDS, root: Path | None = None) -> dict:
    """Measure every kind; returns the numbers and their ratios to the baselines."""
    with work_folder(root, "bench-quarantine-") as base:
        results: dict = {"benchmark": "quarantine", "lines": lines, "goal_peak_rss_mb": GOAL_MB, "kinds": {}}
        clean = claim(base / "clean")      # an earlier run's is wiped; a folder of someone else's refused
        for table, text in _CLEAN.items():
            _write_gz(clean / "raw" / "app_logs" / f"dt={DAY}" / f"{table}.jsonl.gz", [text])
        results["clean_day_ingest"] = _child("ingest", str(clean), DAY)
        for kind in kinds:
            home = claim(base / kind)
            started = time.perf_counter()
            target = make_day(home, kind, lines)
            setup = time.perf_counter() - started
            bare = _child("bare", str(target))
            ingest = _child("ingest", str(home), DAY)
            if not ingest["reconciled"] or ingest["quarantined"] < lines:
                raise RuntimeError(f"{kind}: the ingest did not quarantine every bad line: {ingest}")
            results["kinds"][kind] = {
                "gzip_bytes": target.stat().st_size, "setup_seconds": round(setup, 1),
                "ingest_seconds": round(ingest["seconds"], 1), "ingest_peak_rss_mb": round(ingest["peak_rss_mb"], 1),
                "quarantine_rows": ingest["rows"], "quarantined_lines": ingest["quarantined"],
                "bare_read_seconds": round(bare["seconds"], 1), "bare_read_peak_rss_mb": round(bare["peak_rss_mb"], 1),
                "ratio_time_vs_bare_read": round(ingest["seconds"] / bare["seconds"], 2),
                "ratio_rss_vs_clean_day": round(ingest["peak_rss_mb"] / results["clean_day_ingest"]["peak_rss_mb"], 2),
                "bad_lines_per_s": round(lines / ingest["seconds"]),
                "meets_goal": ingest["peak_rss_mb"] < GOAL_MB,
            }
            remove_owned(home)
    return results


def main(argv: list[str] | None = None) -> dict:
    """Command line: print the results as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=10_000_000, help="bad lines per hostile day (default 10M)")
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated subset of {','.join(KINDS)}")
    parser.add_argument("--dir", type=Path, default=None, help="work folder, kept (default: a temporary one, removed); "
                        "its clean/ and KIND/ folders are refused if a benchmark did not make them")
    args = parser.parse_args(argv)
    result = run(args.lines, tuple(k.strip() for k in args.kinds.split(",") if k.strip()), args.dir)
    print(json.dumps(result, indent=1))   # `python -m benchmarks.run --only quarantine` also keeps the JSON
    return result


if __name__ == "__main__":
    main()
