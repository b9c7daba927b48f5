"""``python -m pipelines.appdb --home DIR --day D``: export days of the app database into the raw zone."""
from __future__ import annotations

import argparse
import json
import os
import sys

from formats.home import DataHome
from formats.settings import SettingsError, add_flags, stage_config
from pipelines.appdb.connection import DSN_ENV, IMAGE_STORE_ENV, AppDatabaseError, dsn_from_env
from pipelines.appdb.export import export_day


def main(argv: list[str] | None = None) -> int:
    """Export each ``--day``; print one JSON summary per day; exit 1 naming the first failure."""
    parser = argparse.ArgumentParser(prog="python -m pipelines.appdb", description=__doc__)
    parser.add_argument("--home", default=None, help="data home (default: $PICKAPIC_HOME, else ./data)")
    parser.add_argument("--day", action="append", required=True, help="day to export, YYYY-MM-DD (repeatable)")
    parser.add_argument("--dsn-env", default=DSN_ENV, help=f"environment variable holding the DSN (default {DSN_ENV})")
    parser.add_argument("--image-store", default=os.environ.get(IMAGE_STORE_ENV, ""),
                        help=f"the app's blob folder or URL (default ${IMAGE_STORE_ENV}; empty: copy no blobs)")
    add_flags(parser, "app_export")   # --lag-minutes, --users-snapshot/--no-users-snapshot, ...
    args = parser.parse_args(argv)
    home = DataHome.at(args.home)
    try:
        config = stage_config(home.root, "app_export", args)   # the home's settings file, then the flags given
        dsn = dsn_from_env(args.dsn_env)
        for day in args.day:
            report = export_day(home, dsn, day, config, image_store=args.image_store, source=f"${args.dsn_env}")
            print(json.dumps(report.as_dict(), sort_keys=True))
    except (AppDatabaseError, SettingsError, ValueError, OSError) as exc:
        print(f"python -m pipelines.appdb: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    from formats.commands import run_command

    sys.exit(run_command('python -m pipelines.appdb', main))
