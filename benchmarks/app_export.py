"""The app-database export at Pick-a-Pic scale: one day of 1M rankings out of a real PostgreSQL server.

    .venv/bin/python -m benchmarks.app_export [--rankings 1000000] [--small 100000] [--json-out F]

1. Setup (timed, not measured): a throwaway server (``tests.postgres_server``), and per size one
   database filled by ``pickapic simulate --no-images --to-postgres`` (the same ``AppDatabaseSink``)
   with one day of ``--rankings`` (and ``--small``) rankings.
2. Measured, each in a fresh child process that reports its own peak RSS: ``export_day`` of that day
   (four tables streamed from a server-side cursor, formatted, gzip-compressed, staged, published).
3. Baselines, in the same run: the same four queries read through the same server-side cursor with
   every row discarded (what the server and the driver alone cost), in a child process too; and the
   small day's export, whose peak RSS should equal the big day's (memory flat in the day's size).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg

from benchmarks import report

REPO = Path(__file__).resolve().parents[1]
DAY = "2023-02-13"

# Peak RSS of the child itself: VmHWM belongs to the process's own address space (ru_maxrss would
# carry the parent's peak across fork + exec).
_PEAK = """
def peak_rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
"""

_CHILD_EXPORT = _PEAK + """
import json, sys, time
from pipelines.appdb.export import AppExportConfig, export_day
from formats.home import DataHome
dsn, home = sys.argv[1], sys.argv[2]
started = time.perf_counter()
cpu = time.process_time()
report = export_day(DataHome.at(home), dsn, "%s", AppExportConfig(lag_minutes=0))
seconds = time.perf_counter() - started
print(json.dumps({"seconds": seconds, "cpu_seconds": time.process_time() - cpu,
                  "rows": {t: e.rows for t, e in report.tables.items()},
                  "bytes": sum(e.bytes for e in report.tables.values()),
                  "peak_rss_mb": peak_rss_mb()}))
""" % DAY

_CHILD_READ_ONLY = _PEAK + """
import json, sys, time
from pipelines.appdb.connection import connect
from pipelines.appdb.connection import read_rows
from pipelines.appdb.tables import statement
dsn = sys.argv[1]
snapshot = {"start": "0001-01-01", "end": "%s 00:00:00", "max_chars": (1 << 20) + 1}
day = {"start": "%s 00:00:00", "end": "%s 00:00:00", "max_chars": (1 << 20) + 1}
started, cpu = time.perf_counter(), time.process_time()
rows = {}
conn = connect(dsn)
for table in ("users", "images", "rankings", "downloads"):
    params = snapshot if table == "users" else day
    rows[table] = sum(len(b) for b in read_rows(conn, statement("export_" + table), params))
conn.close()
print(json.dumps({"seconds": time.perf_counter() - started, "cpu_seconds": time.process_time() - cpu, "rows": rows,
                  "peak_rss_mb": peak_rss_mb()}))
"""


def _child(code: str, *args: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    if out.returncode != 0:
        raise RuntimeError(f"benchmark child failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _fill(server, name: str, rankings: int, work: Path) -> tuple[str, float]:
    """A database holding one simulated day of ``rankings`` rankings (metadata only); returns (dsn, seconds)."""
    from formats.home import DataHome
    from simulator import SimConfig, simulate
    from simulator.appdb_sink import AppDatabaseSink
    from tests.postgres_server import create_database

    dsn = create_database(server, name)
    started = time.perf_counter()
    config = SimConfig(days=1, start_date=DAY, users=max(40, rankings // 50), rankings_per_day=rankings,
                       no_images=True, export_defects=False)
    simulate(DataHome.at(work / f"sim-{name}"), config, sink=AppDatabaseSink(dsn, None))
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
    return dsn, time.perf_counter() - started


def run(rankings: int = 1_000_000, small: int = 100_000) -> dict:
    """Fill, export and baseline; returns the measured numbers and their ratios."""
    from tests.postgres_server import start_server

    server = start_server()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-app-export-") as tmp:
            work = Path(tmp)
            big_dsn, fill_big = _fill(server, "big", rankings, work)
            small_dsn, fill_small = _fill(server, "small", small, work)
            read_only = _child(_CHILD_READ_ONLY % (f"{DAY[:-2]}14", DAY, f"{DAY[:-2]}14"), big_dsn)
            export_big = _child(_CHILD_EXPORT, big_dsn, str(work / "home-big"))
            export_small = _child(_CHILD_EXPORT, small_dsn, str(work / "home-small"))
    finally:
        server.stop()
    rows = sum(export_big["rows"].values())
    return {
        "rankings_requested": rankings, "load_average_1m_at_end": round(os.getloadavg()[0], 2),
        "rows": export_big["rows"], "rows_total": rows,
        "setup_fill_seconds": {"big": round(fill_big, 1), "small": round(fill_small, 1)},
        "export_seconds": round(export_big["seconds"], 2),
        "export_rows_per_s": round(rows / export_big["seconds"]),
        "export_rankings_per_s": round(export_big["rows"]["rankings"] / export_big["seconds"]),
        "export_client_cpu_seconds": round(export_big["cpu_seconds"], 2),
        "export_rows_per_client_cpu_s": round(rows / export_big["cpu_seconds"]),
        "export_gzip_mb": round(export_big["bytes"] / 2**20, 1),
        "export_peak_rss_mb": round(export_big["peak_rss_mb"], 1),
        "read_only_seconds": round(read_only["seconds"], 2),
        "read_only_rows_per_s": round(sum(read_only["rows"].values()) / read_only["seconds"]),
        "read_only_client_cpu_seconds": round(read_only["cpu_seconds"], 2),
        "read_only_peak_rss_mb": round(read_only["peak_rss_mb"], 1),
        "ratio_export_vs_read_only": round(read_only["seconds"] / export_big["seconds"], 3),
        "ratio_export_vs_read_only_cpu": round(read_only["cpu_seconds"] / export_big["cpu_seconds"], 3),
        "small_rankings": small, "small_rows_total": sum(export_small["rows"].values()),
        "small_export_peak_rss_mb": round(export_small["peak_rss_mb"], 1),
        "ratio_peak_rss_big_vs_small": round(export_big["peak_rss_mb"] / export_small["peak_rss_mb"], 3),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.app_export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rankings", type=int, default=1_000_000, help="rankings in the measured day")
    parser.add_argument("--small", type=int, default=100_000, help="rankings in the memory-baseline day")
    parser.add_argument("--json-out", default=None, help="also write the result here")
    args = parser.parse_args(argv)
    result = run(args.rankings, args.small)
    report(result, args.json_out, indent=2)
    return result


if __name__ == "__main__":
    main()
