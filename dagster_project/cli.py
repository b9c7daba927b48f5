"""The `pickapic` command: simulate, build, settings, query, export, train, demo, serve, ui."""
from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import signal
import sys
import threading
import time
from pathlib import Path

from formats.commands import answer_closed_stdout, error_message, flush_stdout
from formats.home import DEFAULT_HOME, ENV_VAR, DataHome

HOME_HELP = f"data home (default: ${ENV_VAR}, then {DEFAULT_HOME})"

# Subcommands whose flags and behaviour live in a stage module: (module, help).
MOUNTED = {
    "simulate": ("simulator.cli", "generate sample app logs (the raw zone) and their ground truth"),
    "query": ("pipelines.query.engine", "read-only DuckDB SQL over a published dataset version"),
    "export": ("pipelines.query.export", "export a published version in another format (pickscore-parquet, eval-prompts)"),
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

    build = sub.add_parser("build", help="run what is missing or stale for the raw partitions present",
                           description="Ingest + fingerprint every raw day that is new or changed, then curate, "
                                       "split and publish if an input changed; an unchanged home is a no-op. Runs "
                                       "are recorded in HOME/dagster and show in `pickapic ui`. Settings come from "
                                       "HOME/pickapic.toml (see `pickapic settings`).")
    _add_home(build)
    build.add_argument("--from", dest="start", metavar="DATE", type=_day, help="first raw day to recompute, YYYY-MM-DD")
    build.add_argument("--to", dest="end", metavar="DATE", type=_day, help="last raw day to recompute, YYYY-MM-DD")
    build.add_argument("--force", action="store_true", help="recompute every selected day and the global stages")
    build.add_argument("--set", dest="assignments", action="append", default=[], metavar="SECTION.NAME=VALUE",
                       help="override one setting for this run (repeatable), e.g. --set splits.heldout_fraction=0.1")
    build.add_argument("--config", dest="config_file", metavar="FILE", type=Path,
                       help="a TOML file of settings overriding HOME/pickapic.toml for this run")
    build.add_argument("--dry-run", action="store_true", help="print what would run and why, run nothing")
    build.add_argument("--with-model", action="store_true", help="also train and evaluate the preference model")
    build.add_argument("--wait", action="store_true", help="wait for a running build instead of refusing")
    build.add_argument("--from-app-db", action="store_true",
                       help="first export each day from the app's PostgreSQL database ($PICKAPIC_APP_DB_DSN, blobs "
                            "from $PICKAPIC_APP_IMAGE_STORE) into the raw zone; days = the database's closed days")
    build.set_defaults(_run=_cmd_build)

    settings = sub.add_parser("settings", help="show (or change) the data home's settings",
                              description="Every setting of HOME/pickapic.toml with its value, default, source and "
                                          "allowed values; --set validates values and --write stores them.")
    _add_home(settings)
    settings.add_argument("--set", dest="assignments", action="append", default=[], metavar="SECTION.NAME=VALUE",
                          help="a value to validate (and with --write, to store)")
    settings.add_argument("--write", action="store_true", help="store the --set values in HOME/pickapic.toml")
    settings.add_argument("--section", help="show only this section")
    settings.set_defaults(_run=_cmd_settings)

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

    serve = sub.add_parser("serve", help="run the Dagster UI and daemon: the nightly path runs by itself",
                           description="dagster-webserver on 127.0.0.1 plus dagster-daemon for this data home; the "
                                       "nightly schedule, the raw-day sensor and the rebuild sensor are on by "
                                       "default (--no-automation starts them off). Run it as a service to keep "
                                       "the home fresh (README: Running it every night).")
    _add_home(serve)
    serve.add_argument("--port", type=int, default=3000, help="port (default 3000)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--no-automation", action="store_true",
                       help="start schedules and sensors switched off (PICKAPIC_AUTOMATION=off)")
    serve.set_defaults(_run=_cmd_serve)

    ui = sub.add_parser("ui", help="start the Dagster UI on 127.0.0.1 for this data home",
                        description="Runs dagster-webserver with DAGSTER_HOME=HOME/dagster (the builds' instance) and "
                                    "the Dagster daemon, which starts the runs launched from the UI, with schedules "
                                    "and sensors switched off by default; the webserver alone when a `pickapic "
                                    "serve` already runs this home's daemon.")
    _add_home(ui)
    ui.add_argument("--port", type=int, default=3000, help="port (default 3000)")
    ui.add_argument("--with-daemon", action="store_true",
                    help="schedules and sensors on by default too (the same as `pickapic serve`)")
    ui.set_defaults(_run=_cmd_ui)
    return parser


def _mount(sub_parser: argparse.ArgumentParser, module: str) -> None:
    """Let the stage module declare its own flags; add --home if it did not."""
    mod = importlib.import_module(module)
    mod.add_arguments(sub_parser)
    _add_home(sub_parser)


def _cmd_build(args: argparse.Namespace) -> int:
    home = DataHome.at(args.home)
    started = time.perf_counter()
    # the database may have changed without a trace in the home: --from-app-db always exports and plans
    plain = not (args.force or args.start or args.end or args.dry_run or args.from_app_db)
    from dagster_project.steplog import stderr_warner

    warn = stderr_warner()   # it may quote a raw-zone entry's name: shown (once), never acting on the terminal

    from pipelines.ingest import rawrecord

    # every build names the raw-zone entries it skips, "up to date" and --dry-run included (review rev25b), and
    # records them in raw_zone_problems once its settings are read and it holds the home's build lock (review
    # rev25h: a build refused for a bad --set, or while another build runs, writes nothing); a dry run writes nothing
    scan = rawrecord.note_raw_zone(home, warn, record=False)
    if plain and not rawrecord.differs(home, scan):   # a record to bring up to date: the full path, under the lock
        from dagster_project import buildstamp

        key = buildstamp.stamp_key(home, assignments=args.assignments, config_file=args.config_file,
                                   with_model=args.with_model)
        if buildstamp.is_up_to_date(home, key):
            import datetime as dt

            from formats.rawzone import future_days_note

            # a day folder skipped as not begun is named here too, as the build that wrote the stamp named it
            today = dt.datetime.now(dt.timezone.utc).date().isoformat()
            future = [day for day in scan.days if day > today]
            if future:
                warn(f"skipped {future_days_note(future, today)}")
            print(f"up to date: nothing changed in {home.root} since the last build "
                  f"(checked in {time.perf_counter() - started:.1f}s); nothing ran")
            return 0
    from dagster_project.build import BuildError, build, build_selection, describe_plan, plan_only

    if args.dry_run:
        if args.from_app_db:
            raise BuildError("--dry-run plans from the raw zone; with --from-app-db the days are only known once "
                             "the database is exported: run `pickapic build --from-app-db` without --dry-run")
        selected = build_selection(home, args.start, args.end, warn)   # names what it skips, as the build does
        plan = plan_only(home, assignments=args.assignments, config_file=args.config_file, selected_days=selected,
                         force=args.force, with_model=args.with_model)
        print("\n".join(describe_plan(plan)) or f"up to date: every asset of {home.root} is fresh")
        return 0
    from dagster_project.progress import build_progress

    shown: list[list[str]] = []
    with build_progress(None) as progress:
        result = build(home, start=args.start, end=args.end, force=args.force, with_model=args.with_model,
                       assignments=args.assignments, config_file=args.config_file, wait=args.wait, progress=progress,
                       on_plan=lambda lines: (shown.append(lines), progress.total(len(lines))),
                       from_app_db=args.from_app_db, warn=warn,
                       on_locked=lambda: rawrecord.record_noting(home, warn))
    seconds = time.perf_counter() - started
    if result.up_to_date:
        from dagster_project.staleness import begun_days

        raw_days = home.raw_days()    # a day that has not begun is skipped (and named above), not counted as built
        begun = len(begun_days(raw_days))
        later = f", {len(raw_days) - begun} not begun yet" if len(raw_days) > begun else ""
        print(f"up to date: every asset of {home.root} is fresh ({begun} raw days{later}, checked in "
              f"{seconds:.1f}s); nothing ran")
        return 0
    for line in shown[0] if shown else []:
        print(f"  ran {line}")
    days = f"{len(result.days)} day(s) {result.days[0]}..{result.days[-1]}" if result.days else "no day"
    print(f"built {days} in {seconds:.0f}s; {len(result.run_ids)} Dagster runs recorded in {home.dagster_home} "
          "(see them with `pickapic ui`)")
    return 0


def _cmd_settings(args: argparse.Namespace) -> int:
    from formats.settings import (
        SECTIONS,
        SettingsError,
        load,
        no_secrets,
        parse_assignments,
        unknown_section,
        with_new_values,
        write_settings,
    )

    if args.section is not None and args.section not in SECTIONS:
        raise unknown_section(args.section, "--section")   # never an empty listing for a typo
    home = DataHome.at(args.home)
    if args.write:
        from formats.outputs import check_home_dir

        if not args.assignments:
            raise SettingsError("--write needs at least one --set SECTION.NAME=VALUE")
        # the file is checked but for the keys replaced (a value it is refused for can be replaced); a secret is
        # never taken from the command line (shell history), and what every run would refuse is never written
        pairs = no_secrets(parse_assignments(args.assignments), "--set")
        new = with_new_values(home.root, pairs, "--set")
        if any(key.strip().startswith("features.") for key in pairs):
            try:
                new.config("features").validate(home.root)     # staging and blob base against this home
            except (ValueError, OSError) as exc:
                where = " and ".join(sorted({source for key, source in new.sources.items()
                                             if key.startswith("features.")}))
                text = str(exc) if len(str(exc)) <= 400 else str(exc)[:397] + "..."
                raise SettingsError(f"[features] ({where}) is refused for {home.root}, nothing written: {text}") \
                    from None
        check_home_dir(home)  # pickapic.toml goes there: a new, empty or existing data home only
        path = write_settings(home.root, pairs)
        print(f"wrote {path}")
        settings = load(home.root)      # listed as every later command reads it (sources included)
    else:
        settings = load(home.root, assignments=args.assignments)
    for row in settings.describe():
        if args.section and not row["key"].startswith(args.section + "."):
            continue
        print(f"{row['key']} = {row['value']!r}  [{row['source']}; default {row['default']!r}; {row['allowed']}]")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from dagster_project.demo import run_demo
    from formats.outputs import check_home_dir

    check_home_dir(DataHome.at(args.home))  # the demo simulates into it: a new, empty or existing data home only
    return run_demo(args)


def _cmd_serve(args: argparse.Namespace) -> int:
    from dagster_project.serve import DaemonRunning, serve
    from formats.outputs import check_home_dir

    home = DataHome.at(args.home)
    check_home_dir(home)  # serve writes dagster/dagster.yaml there
    note = exposed_host_warning(args.host)
    if note:
        print(f"warning: {note}", file=sys.stderr, flush=True)
    try:
        return serve(home, host=args.host, port=args.port, automation=not args.no_automation)
    except DaemonRunning as exc:
        print(f"error: {exc}; stop it first", file=sys.stderr)
        return 1


def exposed_host_warning(host: str) -> str | None:
    """A warning for a ``--host`` other than a loopback address (None for one): Dagster's UI has no login, so
    whoever reaches that address can launch, re-execute and delete runs, and switch the schedules and sensors."""
    import ipaddress

    name = host.strip().strip("[]")
    if name.lower() == "localhost":
        return None
    try:
        if ipaddress.ip_address(name).is_loopback:
            return None
    except ValueError:
        pass            # a host name: it may resolve to any interface
    return (f"the Dagster UI listens on {host}, beyond this machine: anyone who can reach it and holds the home's UI "
            "token (HOME/dagster/ui.token) can launch, re-execute and delete runs and switch schedules and sensors, "
            "and the token travels unencrypted over plain HTTP; put it behind TLS and a firewall, or keep the default "
            "127.0.0.1 (an SSH tunnel: ssh -L 3000:127.0.0.1:3000)")


def _cmd_ui(args: argparse.Namespace) -> int:
    from dagster_project.automation import AUTOMATION_ENV
    from dagster_project.build import give_old_build_runs_an_origin, use_home
    from dagster_project.serve import DaemonRunning, commands, daemon_automation, project_root, serve, ui_address
    from formats.outputs import check_home_dir

    home = DataHome.at(args.home)
    check_home_dir(home)  # use_home writes dagster/dagster.yaml there
    try:   # a launched run waits in Dagster's run queue until a daemon starts it: run one, unless a serve does
        return serve(home, port=args.port, automation=args.with_daemon)
    except DaemonRunning as exc:
        print(f"{exc}: it starts the runs launched here; starting the webserver alone", flush=True)
    use_home(home)
    give_old_build_runs_an_origin(home)
    # the UI shows the schedules and sensors as the serve's daemon runs them (review rev32e), never as this shell's
    # $PICKAPIC_AUTOMATION would start them
    automation = daemon_automation(home)
    if automation is not None:
        os.environ[AUTOMATION_ENV] = automation
    else:
        print("warning: the running serve did not record whether its schedules and sensors are on; this UI shows "
              "them as $PICKAPIC_AUTOMATION would start them (restart the serve to record it)", flush=True)
    command = commands("127.0.0.1", args.port)["webserver"]
    print(f"Dagster UI for {home.root} at {ui_address(home, '127.0.0.1', args.port)} (Ctrl-C to stop)", flush=True)
    os.chdir(project_root())      # never the code of the folder it was typed in (review rev32e)
    os.execv(sys.executable, command)
    return 0  # unreachable: execv replaces this process


def _quiet_logging(debug: bool) -> None:
    """Keep library chatter (Beam's optional-dependency warnings) off the console unless --debug."""
    import logging

    logging.basicConfig(level=logging.DEBUG if debug else logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    if not debug:
        logging.getLogger().setLevel(logging.ERROR)
        for handler in logging.getLogger().handlers:   # a Ctrl-C in a Beam step: "interrupted", not Beam's traceback
            handler.addFilter(_no_interrupt_records)


def _no_interrupt_records(record) -> bool:
    """False for a log record of an interrupt (Beam logs the error that stops a step, with its traceback, before
    it re-raises it: for a Ctrl-C or SIGTERM in a step that is Dagster's ``DagsterExecutionInterruptedError``, and
    the command then says "interrupted" or "terminated" in one line, review rev29b)."""
    error = record.exc_info[1] if record.exc_info else None
    return not (isinstance(error, KeyboardInterrupt) or type(error).__name__ == "DagsterExecutionInterruptedError")


# Commands that SIGTERM (kill, timeout(1), a stopped service) and SIGHUP (the terminal closed) end like Ctrl-C: those
# that write a user-given output, so their temporary files and spill folders are removed on the way out instead of
# left behind, and `build`, which then stops wherever the signal comes, writes nothing more and says so in one line
# (review rev29g: outside a Dagster run it died by the signal); and `demo` / `simulate`, whose image-rendering pool
# is then stopped, not left running (review rev30c). A signal ignored when the command starts (nohup,
# a launcher's SIG_IGN) stays ignored.
TERMINABLE = ("query", "export", "score", "rerank", "build", "demo", "simulate")
ENDING = {signal.SIGTERM: ("terminated", 128 + signal.SIGTERM), signal.SIGHUP: ("hung up", 128 + signal.SIGHUP)}


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised in the main thread (a KeyboardInterrupt, so DuckDB stops its query as for Ctrl-C)."""

    def __init__(self, signum: int = signal.SIGTERM) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


_TERMINATED = threading.Event()
_TERMINATED_BY: list[int] = []     # the first SIGTERM / SIGHUP the handler took


def _terminate(signum: int, frame: object) -> None:
    if not _TERMINATED_BY:
        _TERMINATED_BY.append(signum)
    _TERMINATED.set()
    engine = sys.modules.get("pipelines.query.engine")
    if engine is not None:   # a running query stops now, and at its next batch if DuckDB swallowed this
        engine.interrupt_active()
    raise Terminated(signum)


def _stopped_by(stop: KeyboardInterrupt) -> int:
    """The signal that stopped the command: a SIGTERM / SIGHUP its handler took (the exception that arrives may be
    DuckDB's own, or a later Ctrl-C's), else the one the exception names (the build's), else SIGINT."""
    if _TERMINATED.is_set() and _TERMINATED_BY:
        return _TERMINATED_BY[0]
    return getattr(stop, "signum", None) or signal.SIGINT


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `pickapic` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    chosen = next((a for a in argv if not a.startswith("-")), None)
    parser = _build_parser(chosen)
    args = parser.parse_args(argv)
    _quiet_logging(args.debug)
    _TERMINATED.clear()
    _TERMINATED_BY.clear()
    taken = []
    if args.command in TERMINABLE and threading.current_thread() is threading.main_thread():
        taken = [sig for sig in ENDING if signal.getsignal(sig) == signal.SIG_DFL]
        for sig in taken:
            signal.signal(sig, _terminate)
        if taken:
            # a signal mask is inherited through fork and exec: a launcher thread that had SIGTERM blocked
            # would leave it pending forever here
            signal.pthread_sigmask(signal.SIG_UNBLOCK, set(taken))
    code: int | None = None
    try:
        if hasattr(args, "_module"):
            outcome = importlib.import_module(args._module).run_from_args(args)
            code = outcome if isinstance(outcome, int) else 0
        else:
            code = int(args._run(args) or 0)
        flush_stdout()   # a reader gone (`| head`) is met here, not in the interpreter's final flush
        return code
    except BrokenPipeError:   # stdout's reader stopped early: what it wanted was delivered; exit quietly
        answer_closed_stdout()
        return code or 0
    except KeyboardInterrupt as stop:
        line, code = ENDING.get(_stopped_by(stop), ("interrupted", 130))
        with contextlib.suppress(OSError):   # a hangup: the terminal may be gone
            print(line, file=sys.stderr)
        return code
    except Exception as exc:  # a full disk from any layer (OSError, Arrow, SQLite via Dagster): one line, no traceback
        home = DataHome.at(getattr(args, "home", None)).root
        # an interpreter's RuntimeError (RecursionError, a dict changed while iterated) is a bug: its traceback; an
        # error may quote what it refused (a table row, a file name): shown, never acting on the terminal, and never
        # with a URL's credential it quotes (review rev25j)
        shown = None if args.debug else error_message(exc, [home], databases=DataHome(home).dagster_home, redact=True)
        if shown is None:
            raise
        print(f"pickapic {args.command}: error: {shown}", file=sys.stderr)
        return 1
    finally:   # the caller's own handling again (a test calling main, a later signal at exit: the default)
        for sig in taken:
            if signal.getsignal(sig) == _terminate:
                signal.signal(sig, signal.SIG_DFL)


if __name__ == "__main__":
    sys.exit(main())
