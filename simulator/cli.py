"""``pickapic simulate`` / ``python -m simulator`` flags and their run (the raw zone, or the app's database)."""
from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path
from typing import Callable

from formats.home import DataHome
from formats.outputs import check_home_dir
from simulator.config import SimConfig
from simulator.simulation import SimReport, simulate


def _positive_int(name: str, minimum: int = 1) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{name} must be >= {minimum}, got {value}")
        return value
    return parse


def _date(text: str) -> str:
    try:
        day = dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--start-date must be YYYY-MM-DD, got {text!r}") from None
    return day.isoformat()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the simulator's flags (``--home`` is left to the caller when it already defines one)."""
    defaults = SimConfig()
    if not any("--home" in action.option_strings for action in parser._actions):
        parser.add_argument("--home", default=None,
                            help="data home (default: $PICKAPIC_HOME, else ./data)")
    parser.add_argument("--days", type=_positive_int("--days"), default=defaults.days,
                        help=f"number of daily exports to write (default {defaults.days})")
    parser.add_argument("--start-date", type=_date, default=defaults.start_date,
                        help=f"first day, YYYY-MM-DD, not before 2023-01-01 (default {defaults.start_date})")
    parser.add_argument("--users", type=_positive_int("--users", 4), default=defaults.users,
                        help=f"active user population (default {defaults.users})")
    parser.add_argument("--rankings-per-day", type=_positive_int("--rankings-per-day", 10),
                        default=defaults.rankings_per_day,
                        help=f"rankings created per day (default {defaults.rankings_per_day})")
    parser.add_argument("--image-size", type=_positive_int("--image-size", 32), default=defaults.image_size,
                        help=f"PNG side in pixels, 32..2048 (default {defaults.image_size})")
    parser.add_argument("--seed", type=_positive_int("--seed", 0), default=defaults.seed,
                        help=f"random seed (default {defaults.seed})")
    parser.add_argument("--no-images", action="store_true",
                        help="write metadata only (no PNG blobs): for scale tests up to 1M rankings")
    parser.add_argument("--workers", type=_positive_int("--workers"), default=defaults.workers,
                        help=f"processes rendering images; output does not depend on it (default {defaults.workers})")
    parser.add_argument("--no-export-defects", action="store_true",
                        help="plant no defects of a file exporter (malformed/mistyped/repeated lines, re-exports, "
                             "next-day rankings): what a database source gives; implied by --to-postgres")
    parser.add_argument("--to-postgres", metavar="DSN", default=None,
                        help="play the app: write the history into the app's PostgreSQL tables (schema created in "
                             "an empty database) instead of the raw zone; a DSN holding a password is refused (a "
                             "command line is readable by every account): the password comes from PGPASSWORD, "
                             "~/.pgpass or a service file")
    parser.add_argument("--image-store", metavar="DIR", default=None,
                        help="with --to-postgres: the app's storage folder for {image_uid}.png blobs (outside the "
                             "data home; required unless --no-images)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def config_from_args(args: argparse.Namespace) -> SimConfig:
    """The validated ``SimConfig`` described by parsed flags."""
    return SimConfig(days=args.days, start_date=args.start_date, users=args.users,
                     rankings_per_day=args.rankings_per_day, image_size=args.image_size, seed=args.seed,
                     no_images=bool(args.no_images), workers=getattr(args, "workers", SimConfig.workers),
                     export_defects=not (getattr(args, "no_export_defects", False)
                                         or getattr(args, "to_postgres", None))).validate()


def _sink(args: argparse.Namespace, config: SimConfig, home: DataHome):
    """The app-database sink for ``--to-postgres`` (None: the raw zone's files)."""
    if not getattr(args, "to_postgres", None):
        if getattr(args, "image_store", None):
            raise ValueError("--image-store is only used with --to-postgres")
        return None
    store = None
    if not config.no_images:
        if not args.image_store:
            raise ValueError("--to-postgres needs --image-store DIR for the image blobs (or --no-images)")
        store = Path(args.image_store).expanduser().resolve()
        if store == home.root or home.root in store.parents:
            raise ValueError(f"--image-store {args.image_store} is inside the data home {home.root}: the app's "
                             "storage is the export's source, not part of the pipeline's home")
        if store.exists() and not store.is_dir():
            raise ValueError(f"--image-store {args.image_store} exists and is not a folder")
    from simulator.appdb_sink import AppDatabaseSink

    return AppDatabaseSink(args.to_postgres, store)


def check_dsn_argument(dsn: str | None) -> None:
    """Raise ValueError (one line, the DSN's values never in it) for a ``--to-postgres`` DSN that holds a password
    (``password=``, ``sslpassword=``, a URL's ``user:password@``, or one in a connection string given as its
    dbname) or that libpq cannot read: a command line is readable by every account on this machine
    (``/proc/PID/cmdline``, ``ps``) for as long as the simulator runs (review rev32h). The password comes from
    PGPASSWORD, ~/.pgpass or a service file instead, as for the export (``--dsn-env``) and the run config."""
    if not dsn:
        return
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    from pipelines.appdb.connection import _dsn_secrets

    try:
        conninfo_to_dict(dsn)
    except psycopg.Error:
        raise ValueError("--to-postgres: not a connection string libpq reads (key=value pairs or a postgresql:// "
                         "URL); it is not shown here, as it may hold a password") from None
    if _dsn_secrets(dsn):
        raise ValueError("--to-postgres: the DSN holds a password, and a command line is readable by every account "
                         "on this machine (/proc/PID/cmdline); give it without one and the password through "
                         "PGPASSWORD, ~/.pgpass or a service file (PGSERVICEFILE, service=NAME)")


def run_from_args(args: argparse.Namespace) -> SimReport:
    """Run the simulator from parsed flags, with a rich progress bar unless ``--quiet``."""
    check_dsn_argument(getattr(args, "to_postgres", None))   # before anything is made or connected
    config = config_from_args(args)
    home = DataHome.at(args.home)
    check_home_dir(home)  # new, empty or a data home: never a folder of other files, never inside another home
    sink = _sink(args, config, home)
    if getattr(args, "quiet", False):
        return simulate(home, config, sink=sink)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description:>8}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  transient=False) as bar:
        tasks: dict[str, int] = {}

        def progress(stage: str, done: int | None = None, total: int | None = None) -> None:
            if done is None:   # a message: the simulator reports counts only
                return
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done, total=total)

        return simulate(home, config, progress, sink=sink)
