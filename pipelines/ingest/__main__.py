"""``python -m pipelines.ingest --home DIR [--day YYYY-MM-DD ...] [flags]`` (default: every raw day).

Prints one JSON summary per day and exits 1 if a day does not reconcile.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from formats.commands import run_command
from formats.home import DataHome
from formats.settings import add_flags, stage_config
from pipelines.ingest.day import ingest_day


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ingest's command-line options (``--home``, ``--day``, one per setting) to ``parser``."""
    parser.add_argument("--home", default=None, help="data home (default: $PICKAPIC_HOME, else ./data)")
    parser.add_argument("--day", action="append", default=None, metavar="YYYY-MM-DD",
                        help="day to ingest (repeatable; default: every day in the raw zone)")
    add_flags(parser, "ingest")


def run_from_args(args: argparse.Namespace) -> int:
    """Ingest the days named by ``args``; print one JSON summary per day; 0 when every day reconciles."""
    home = DataHome.at(args.home)
    config = stage_config(home.root, "ingest", args)   # the home's settings file, then the flags given
    scan = home.scan_raw_zone()
    for line in scan.summary():
        print(f"warning: skipped {line}", file=sys.stderr)
    days = args.day or scan.days
    if not args.day:     # a folder named after a later day is an export error: skipped, as `pickapic build` does
        from pipelines.provenance import begun_days

        later = sorted(set(days) - set(begun_days(days)))
        if later:
            print(f"warning: skipped {len(later)} raw day folder(s) of days that have not begun (UTC): "
                  f"{', '.join('dt=' + d for d in later[:5])}{', ...' if len(later) > 5 else ''}", file=sys.stderr)
            days = [day for day in days if day not in later]
    if not days:
        print(f"no raw days under {home.raw_logs}", file=sys.stderr)
        return 1
    status = 0
    for day in days:
        report = ingest_day(home, day, config)
        summary = {k: v for k, v in report.metadata().items() if k not in ("files", "quarantine_reasons_md")}
        print(json.dumps(summary, sort_keys=True))
        if not report.reconciled:
            print(f"day {day}: counts do not reconcile", file=sys.stderr)
            status = 1
    return status


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m pipelines.ingest --home DIR --day YYYY-MM-DD``."""
    parser = argparse.ArgumentParser(prog="python -m pipelines.ingest", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(run_command("python -m pipelines.ingest", main))
