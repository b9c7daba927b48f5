"""The `pickapic` command: simulate, build, query, export, train, demo, ui."""
from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
import time
from typing import Callable, Iterator

from pipelines.home import DEFAULT_HOME, ENV_VAR, DataHome

HOME_HELP = f"data home (default: ${ENV_VAR}, then {DEFAULT_HOME})"

# Subcommands whose flags and behaviour live in a stage module: (module, help).
MOUNTED = {
    "simulate": ("pipelines.simulator", "generate sample app logs (the raw zone) and their ground truth"),
    "query": ("pipelines.query", "read-only DuckDB SQL over a published dataset version"),
    "export": ("pipelines.export", "export a published version in another format (pickscore-parquet, eval-prompts)"),
    "train": ("training.cli", "train the CLIP preference model on a published version"),
    "score": ("training.score_cli", "score (prompt, image) pairs with a preference model (PickScore scores)"),
    "rerank": ("training.rerank", "best-of-n: keep the candidate a preference model scores highest per prompt"),
}


def _day(text: str) -> str:
    """An argparse type for YYYY-MM-DD days (a bad value exits 2 naming it)."""
    import datetime as dt

    try:
        return dt.date.fromisoformat(text).isoformat()
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a day in YYYY-MM-DD form") from None


def _add_home(parser: argparse.ArgumentParser) -> None:
    if not any("--home" in action.option_strings for action in parser._actions):
        parser.add_argument("--home", default=None, help=HOME_HELP)


def _build_parser(chosen: str | None = None) -> argparse.ArgumentParser:
    """The argument parser; only the chosen mounted subcommand's module is imported (torch is slow)."""
    parser = argparse.ArgumentParser(prog="pickapic", description=(
        "Raw Pick-a-Pic app logs -> validated tables -> fingerprints -> curated, leak-free splits -> "
        "WebDataset shards -> a PickScore-style preference model. Every command takes --home."))
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    for name, (module, help_text) in MOUNTED.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        sub_parser.set_defaults(_module=module)
        if name == chosen:
            _mount(sub_parser, module)

    build = sub.add_parser("build", help="materialize every asset for the raw partitions present",
                           description="Ingest + fingerprint every raw day (or --from/--to), then curate, split "
                                       "and publish; runs are recorded in HOME/dagster and show in `pickapic ui`.")
    _add_home(build)
    build.add_argument("--from", dest="start", metavar="DATE", type=_day, help="first raw day to (re)build, YYYY-MM-DD")
    build.add_argument("--to", dest="end", metavar="DATE", type=_day, help="last raw day to (re)build, YYYY-MM-DD")
    build.add_argument("--with-model", action="store_true", help="also train and evaluate the preference model")
    build.add_argument("--wait", action="store_true", help="wait for a running build instead of refusing")
    build.add_argument("--from-app-db", action="store_true",
                       help="first export each day from the app's PostgreSQL database ($PICKAPIC_APP_DB_DSN, blobs "
                            "from $PICKAPIC_APP_IMAGE_STORE) into the raw zone; days = the database's closed days")
    build.set_defaults(_run=_cmd_build)

    demo = sub.add_parser("demo", help="simulate a small sample, build, train briefly, print a summary",
                          description="The one-command tour: simulate -> build -> train (demo preset) -> summary.")
    _add_home(demo)
    demo.add_argument("--days", type=int, default=3, help="simulated days (default 3)")
    demo.add_argument("--users", type=int, default=40, help="simulated users (default 40)")
    demo.add_argument("--rankings-per-day", type=int, default=120, help="simulated rankings per day (default 120)")
    demo.add_argument("--image-size", type=int, default=256, help="simulated image size in px (default 256)")
    demo.add_argument("--train-steps", type=int, default=None, help="training steps (default: the demo preset)")
    demo.add_argument("--seed", type=int, default=0, help="simulator seed (default 0)")
    demo.set_defaults(_run=_cmd_demo)

    ui = sub.add_parser("ui", help="start the Dagster UI on 127.0.0.1 for this data home",
                        description="Runs dagster-webserver with DAGSTER_HOME=HOME/dagster (the builds' instance).")
    _add_home(ui)
    ui.add_argument("--port", type=int, default=3000, help="port (default 3000)")
    ui.add_argument("--with-daemon", action="store_true", help="also run the daemon (schedules and sensors)")
    ui.set_defaults(_run=_cmd_ui)
    return parser


def _mount(sub_parser: argparse.ArgumentParser, module: str) -> None:
    """Let the stage module declare its own flags; add --home if it did not."""
    mod = importlib.import_module(module)
    mod.add_arguments(sub_parser)
    _add_home(sub_parser)


def _cmd_build(args: argparse.Namespace) -> int:
    from dagster_project.build import run_build, select_app_db_days, select_days

    home = DataHome.at(args.home)
    days = (select_app_db_days(args.start, args.end) if args.from_app_db else
            select_days(home, args.start, args.end, warn=lambda message: print(f"warning: {message}", file=sys.stderr)))
    started = time.perf_counter()
    with build_progress(len(days) * (1 + int(args.from_app_db)) + 1 + int(args.with_model)) as note:
        result = run_build(home, days, with_model=args.with_model, wait=args.wait, progress=note,
                           from_app_db=args.from_app_db)
    print(f"built {len(days)} day(s) {days[0]}..{days[-1]} in {time.perf_counter() - started:.0f}s; "
          f"{len(result.run_ids)} Dagster runs recorded in {home.dagster_home} (see them with `pickapic ui`)")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from dagster_project.demo import run_demo
    from pipelines.storage import check_home_dir

    check_home_dir(DataHome.at(args.home))  # the demo simulates into it: a new, empty or existing data home only
    return run_demo(args)


def _cmd_ui(args: argparse.Namespace) -> int:
    from dagster_project.build import use_home
    from pipelines.storage import check_home_dir

    home = DataHome.at(args.home)
    check_home_dir(home)  # use_home writes dagster/dagster.yaml there
    use_home(home)
    if args.with_daemon:
        command = [sys.executable, "-m", "dagster", "dev", "-m", "dagster_project.definitions",
                   "-h", "127.0.0.1", "-p", str(args.port)]
    else:
        command = [sys.executable, "-m", "dagster_webserver", "-m", "dagster_project.definitions",
                   "-h", "127.0.0.1", "-p", str(args.port)]
    print(f"Dagster UI for {home.root} at http://127.0.0.1:{args.port} (Ctrl-C to stop)", flush=True)
    os.execv(sys.executable, command)
    return 0  # unreachable: execv replaces this process


@contextlib.contextmanager
def build_progress(total_steps: int) -> Iterator[Callable[[str], None]]:
    """A rich progress bar over a build's runs; each call names the step that starts now."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} runs"),
               TimeElapsedColumn())
    with Progress(*columns, transient=False) as bar:
        task = bar.add_task("starting", total=total_steps)
        started = [False]

        def note(message: str) -> None:
            if started[0]:
                bar.advance(task)
            started[0] = True
            bar.update(task, description=message)

        yield note
        if started[0]:
            bar.advance(task)
        bar.update(task, description="done")


def _quiet_logging(debug: bool) -> None:
    """Keep library chatter (Beam's optional-dependency warnings) off the console unless --debug."""
    import logging

    logging.basicConfig(level=logging.DEBUG if debug else logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    if not debug:
        logging.getLogger().setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `pickapic` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    chosen = next((a for a in argv if not a.startswith("-")), None)
    parser = _build_parser(chosen)
    args = parser.parse_args(argv)
    _quiet_logging(args.debug)
    try:
        if hasattr(args, "_module"):
            outcome = importlib.import_module(args._module).run_from_args(args)
            return outcome if isinstance(outcome, int) else 0
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a full disk from any layer (OSError, Arrow, SQLite via Dagster): one line, no traceback
        from pipelines.storage import no_space_message

        home = DataHome.at(getattr(args, "home", None)).root
        full = no_space_message(exc, [home], databases=DataHome(home).dagster_home)
        known = (ValueError, FileNotFoundError, FileExistsError, RuntimeError, PermissionError)
        if args.debug or (full is None and not isinstance(exc, known)):
            raise
        print(f"pickapic {args.command}: error: {full or exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
