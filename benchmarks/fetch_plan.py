"""The app export's fetch plan (server time) against the translate()-based plan it replaced (run by hand).

    .venv/bin/python -m benchmarks.fetch_plan [--rows 4096] [--small 100000] [--repeats 3]

Before the export reads a day's table it asks the server for a fetch plan: each row's size as its JSON
line will take it (``export._written_bytes``: escapes counted), summed in the export's order
(:func:`pipelines.appdb.export.fetch_plan`). Until December 5 the escapes were counted with
``translate()``, whose cost grows with the text times the size of the character set, and each row's
size was computed twice (the sizes subquery was pulled up into the window). On a throwaway server
(``tests.postgres_server``) with three days of rankings:

- ``big``: ``--rows`` prompts of 32 KiB of hex text (128 MiB for 4,096 rows; no escapes);
- ``junk``: ``--rows`` prompts of 32 KiB of control characters (a paste of binary junk; 6-byte escapes);
- ``small``: ``--small`` ordinary prompts of 40-70 bytes;
each plan is timed the new way and the old way (the old SQL rebuilt here), alternated ``--repeats``
times; both must give the same plan. Prints the median seconds, the old / new ratio, and the peak RSS
of this process (the server's memory is bounded by its work_mem for the sort either way).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import psycopg

REPO = Path(__file__).resolve().parents[1]
DAYS = {"big": "2023-02-13", "junk": "2023-02-14", "small": "2023-02-15"}


def old_written_bytes(column: str, utf8: bool) -> str:
    """The size expression as it was until December 5 (translate())."""
    text = f"{column}::text"
    short = f"(octet_length({text}) - octet_length(translate({text}, %(plan_short)s, '')))"
    long = f"(octet_length({text}) - octet_length(translate({text}, %(plan_long)s, '')))"
    wide = (f"4 * (octet_length({text}) - char_length({text}))" if utf8 else
            f"5 * (octet_length({text}) - octet_length(regexp_replace({text}, '[^\\x01-\\x7f]+', '', 'g')))")
    return f"coalesce(octet_length({text}) + {short} + 5 * {long} + {wide}, 0)"


def old_fetch_plan(conn: psycopg.Connection, table: str, params: dict) -> list[int]:
    """``fetch_plan`` as it was until December 5 (translate(), sizes subquery pulled up)."""
    from pipelines.appdb import export
    from pipelines.appdb.tables import expected_columns, statement

    columns = expected_columns(table)
    names = [f"c{i}" for i in range(1, len(columns) + 1)]
    utf8 = conn.info.parameter_status("server_encoding") == "UTF8"
    size = " + ".join(old_written_bytes(c, utf8) if kind == "text" else f"coalesce(octet_length({c}::text), 0)"
                      for c, (_, kind) in zip(names, columns)) + f" + {export.ROW_OVERHEAD * len(names)}"
    aliases = ", ".join(names)
    query = (f"SELECT count(*)::int8 FROM (SELECT (sum(b) OVER w - b) / %(plan_bytes)s AS byte_run, "
             f"(row_number() OVER w - 1) / %(plan_rows)s AS row_run "
             f"FROM (SELECT {size} AS b, r.* FROM ({statement('export_' + table)}) AS r({aliases})) AS s "
             f"WINDOW w AS (ORDER BY {aliases} ROWS UNBOUNDED PRECEDING)) AS runs "
             f"GROUP BY byte_run, row_run ORDER BY byte_run, row_run")
    return [int(n) for (n,) in conn.execute(query, {**params, "plan_bytes": export.BATCH_BYTES,
                                                    "plan_rows": export.BATCH_LINES,
                                                    "plan_short": export._SHORT_ESCAPES,
                                                    "plan_long": export._LONG_ESCAPES})]


def peak_rss_mib() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main(argv: list[str] | None = None) -> dict:
    sys.path.insert(0, str(REPO))
    from pipelines.appdb.export import fetch_plan
    from tests.postgres_server import create_app_database, start_server

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4096, help="rows of 32 KiB prompts in the big and junk days")
    parser.add_argument("--small", type=int, default=100_000, help="rows of ordinary prompts in the small day")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    results: dict = {"rows": args.rows, "small": args.small, "repeats": args.repeats, "days": {}}
    server = start_server()
    try:
        dsn = create_app_database(server, "bench_fetch_plan", "UTF8")
        with psycopg.connect(dsn) as conn:
            conn.execute("INSERT INTO rankings (ranking_id, created_at, user_id, prompt) SELECT g, %s::timestamp + "
                         "interval '12 hours', 1, repeat(md5(g::text), 1024) FROM generate_series(1, %s::int) g",
                         (DAYS["big"], args.rows))
            conn.execute("INSERT INTO rankings (ranking_id, created_at, user_id, prompt) SELECT g, %s::timestamp + "
                         "interval '12 hours', 1, repeat(chr(1 + g %% 8), 32768) FROM generate_series(%s::int, %s::int) g",
                         (DAYS["junk"], args.rows + 1, 2 * args.rows))
            conn.execute("INSERT INTO rankings (ranking_id, created_at, user_id, prompt) SELECT g, %s::timestamp + "
                         "interval '12 hours', 1, 'a photo of ' || md5(g::text) || ', \"' || (g %% 97) || '\" style' "
                         "FROM generate_series(%s::int, %s::int) g", (DAYS["small"], 2 * args.rows + 1, 2 * args.rows + args.small))
            conn.commit()
            conn.autocommit = True
            conn.execute("VACUUM ANALYZE rankings")
            conn.autocommit = False
            for name, day in DAYS.items():
                params = {"start": f"{day} 00:00", "end": f"{day} 23:59:59.999999", "max_chars": 1_000_001}
                times: dict[str, list[float]] = {"new": [], "old": []}
                plans = {}
                for repeat in range(args.repeats):
                    order = [("new", fetch_plan), ("old", old_fetch_plan)]
                    for label, function in (order if repeat % 2 == 0 else order[::-1]):
                        started = time.perf_counter()
                        plans[label] = function(conn, "rankings", params)
                        times[label].append(time.perf_counter() - started)
                assert plans["new"] == plans["old"], f"{name}: the plans differ"
                new, old = statistics.median(times["new"]), statistics.median(times["old"])
                results["days"][name] = {"fetches": len(plans["new"]), "new_s": round(new, 3), "old_s": round(old, 3),
                                         "old / new": round(old / new, 2), "runs": times}
                print(f"{name:5s}: {sum(plans['new'])} rows in {len(plans['new'])} fetches; plan {new:.2f} s, "
                      f"translate() plan {old:.2f} s: {old / new:.1f}x", flush=True)
    finally:
        server.stop()
    results["peak_rss_mib"] = round(peak_rss_mib(), 1)
    print(f"peak RSS of this process: {results['peak_rss_mib']} MiB (the plans are computed by the server)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
