"""Run what is missing or stale in a data home, recorded in the home's own Dagster instance.

``build`` plans against the data versions Dagster recorded (``dagster_project.staleness``): raw days that
were never ingested or whose files changed are (re)ingested and fingerprinted, one run per day; the
global stages (curation, splits, publish) run once, and only those whose inputs changed; an unchanged
home starts no run. ``force`` and a ``--from/--to`` range recompute on request.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
import signal
import stat
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import dagster as dg

from dagster_project import buildstamp
from dagster_project.coordinator import DAGSTER_YAML, OLD_DAGSTER_YAMLS
from dagster_project.staleness import BuildPlan, PlannedRun, begun_days, plan_build, record_observations
from dagster_project.versions import EXPORT, PARTITIONS, STAGES
from formats import dataset
from formats.files import file_mode, is_real_folder, read_small_file, write_bytes_atomic
from formats.home import DataHome
from formats.locks import hold_lock
from formats.progress import Progress
from formats.rawzone import future_days_note
from formats.settings import SETTINGS_FILE, Settings, load
from pipelines.cachesweep import sweep_cache_temps

# Failures reach the user as one BuildError line naming the step and its cause (and every event stays in
# the run's record for `pickapic ui`), not as Dagster's console stack traces.
QUIET_LOGS = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}
_HOME_SOURCE = f"{SETTINGS_FILE} of the data home"


class BuildError(RuntimeError):
    """A build could not start or one of its runs failed; the message says which and why."""


class NotEnoughDataError(BuildError):
    """The data cannot feed a trainer yet: nothing was published; the message says what is missing."""


class BuildInterrupted(KeyboardInterrupt):
    """A Ctrl-C (SIGINT), a SIGTERM or a SIGHUP reached the build while Dagster ran one of its runs: no later run
    starts and nothing more is written (``pickapic build`` says "interrupted", exit 130, "terminated", exit 143, or
    "hung up", exit 129)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


_STOPPING = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _hang_up_like_sigint(signum: int, frame: object) -> None:
    """SIGHUP's handler during a Dagster run: what SIGINT's handler does now (Dagster's for a run records it, or in a
    step raises its interrupt; outside Dagster's hold, a KeyboardInterrupt), as Dagster maps SIGTERM; which signal
    it was is read from the wakeup pipe (:func:`signals_seen`)."""
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler):
        handler(signal.SIGINT, frame)
    else:   # SIG_IGN (a background job) or SIG_DFL: the build still stops for a hangup
        raise KeyboardInterrupt


@contextlib.contextmanager
def signals_seen() -> Iterator[Callable[[], int | None]]:
    """Watch for SIGINT / SIGTERM / SIGHUP while Dagster runs a job in this process; yield a function that says
    which came first, if any.

    Dagster takes SIGINT and SIGTERM over for a run (``capture_interrupts``: SIGTERM mapped to its SIGINT handler)
    and, outside a step, only records one, then forgets it as the run ends: a Ctrl-C or SIGTERM as a run ended was
    swallowed and the build went on to its next run and published (review rev29b). The kernel-level record
    Python keeps of every signal a handler takes, whichever handler it is (``signal.set_wakeup_fd``: the signal's
    number, in the order they came), is read here instead. SIGHUP, where the command handles it (``pickapic
    build``: not under ``nohup``), is handed to SIGINT's handler of the moment for the run, as Dagster does SIGTERM.
    As a run returns, Dagster has put SIGINT's own handler (a KeyboardInterrupt) back on SIGTERM too: a plain
    KeyboardInterrupt that leaves the block or this function's restore is raised again as the
    :class:`BuildInterrupted` of the signal the pipe saw first (review rev29g: a SIGTERM then said "interrupted").
    The handlers in place before the run are put back after it, before the wakeup pipe is given up. Outside the
    main thread (no handler can be set) nothing is watched."""
    if threading.current_thread() is not threading.main_thread():
        yield lambda: None
        return
    handlers = {sig: signal.getsignal(sig) for sig in _STOPPING}
    reader, writer = os.pipe()
    arrived: list[int] = []
    try:
        for fd in (reader, writer):
            os.set_blocking(fd, False)
        previous = signal.set_wakeup_fd(writer, warn_on_full_buffer=False)
        try:
            def seen() -> int | None:
                with contextlib.suppress(BlockingIOError, InterruptedError):
                    while data := os.read(reader, 512):
                        arrived.extend(sig for sig in data if sig in _STOPPING and sig not in arrived)
                return arrived[0] if arrived else None

            try:
                try:
                    if callable(handlers[signal.SIGHUP]):   # the command's own (not SIG_IGN under nohup, not SIG_DFL)
                        signal.signal(signal.SIGHUP, _hang_up_like_sigint)
                    yield seen
                finally:
                    for sig, handler in handlers.items():
                        if handler is not None and signal.getsignal(sig) != handler:
                            signal.signal(sig, handler)
            except KeyboardInterrupt as stop:
                if isinstance(stop, BuildInterrupted) or (signum := seen()) is None:
                    raise
                raise BuildInterrupted(signum) from None
        finally:
            signal.set_wakeup_fd(previous, warn_on_full_buffer=False)
    finally:
        os.close(reader)
        os.close(writer)


@contextlib.contextmanager
def _helpers_deaf_to_ctrl_c() -> Iterator[None]:
    """Start the processes Dagster runs beside each step with SIGINT blocked, for the block.

    A step's compute logs are mirrored by ``tail -F`` and a babysitter, ``watch_orphans.py``, a Python process that
    kills the tail should the build die (``dagster._core.execution.compute_logs.execute_posix_tail``); both are in
    the build's process group, so a Ctrl-C at the terminal reaches them too, and each babysitter printed a
    KeyboardInterrupt traceback above the build's one line (review rev29g). Started with SIGINT blocked (a signal
    mask is inherited through fork and exec, and Python does not unblock it) they ignore a Ctrl-C; Dagster ends them
    with SIGTERM when the step ends, and the babysitter still ends the tail, and itself, within a second of the
    build dying. The build's own thread has SIGINT blocked only while Dagster starts the two: a Ctrl-C then is
    delivered as it is unblocked (or to another thread), never lost."""
    from dagster._core.execution import compute_logs

    original = getattr(compute_logs, "execute_posix_tail", None)
    if original is None or threading.current_thread() is not threading.main_thread():
        yield
        return

    @contextlib.contextmanager
    def execute_posix_tail(path, stream):
        with contextlib.ExitStack() as stack:
            blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
            try:
                pids = stack.enter_context(original(path, stream))
            finally:
                if signal.SIGINT not in blocked:
                    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
            yield pids

    compute_logs.execute_posix_tail = execute_posix_tail
    try:
        yield
    finally:
        compute_logs.execute_posix_tail = original


@dataclass
class BuildResult:
    days: list[str]
    run_ids: dict[str, str] = field(default_factory=dict)   # run label -> Dagster run id
    plan: list[str] = field(default_factory=list)            # what ran and why
    up_to_date: bool = False                                  # nothing had to run


# the daemon's probe of the build lock (automation.build_running) holds it shared for microseconds: a build starting
# then tries again this long before it refuses or waits (review rev33e: it was refused at once)
PROBE_GRACE_S = 0.5


@contextlib.contextmanager
def build_lock(home: DataHome, wait: bool = False) -> Iterator[None]:
    """Hold an exclusive lock on the data home; a second build waits (``wait``) or refuses. The lock file
    ``.build.lock`` is opened without following a link and holds only a pid: a link, a hard link or a file
    of other content there is refused, untouched (:mod:`formats.locks`). Its folder is the home root, which
    may be a link (a home on another disk), unlike the stages' ``.locks/``. A lock held for an instant (the
    daemon's probe, :func:`automation.build_running`) is tried again for :data:`PROBE_GRACE_S` first."""
    def busy(holder: str) -> None:
        if not wait:
            raise BuildError(f"another build is running on {home.root} (pid {holder}, lock {home.lock_file}); "
                             "wait for it to finish or pass --wait")

    with hold_lock(home.lock_file, f"the data home {home.root}", busy, linked_folder=True, grace_s=PROBE_GRACE_S):
        yield


def _fail_dead_build_runs(instance: dg.DagsterInstance) -> None:
    """Mark failed the runs an earlier `pickapic build` left queued or running: this build holds the home's build
    lock, so the build that started them is gone (SIGKILLed, OOM-killed, a reboot), and nothing else ends them
    (review rev21f: left STARTED, one held back every later rebuild and nightly)."""
    from dagster_project.automation import _UNFINISHED, BUILD_TAG, BUILD_TAG_VALUE

    for run in instance.get_runs(filters=dg.RunsFilter(statuses=_UNFINISHED, tags={BUILD_TAG: BUILD_TAG_VALUE})):
        instance.report_run_failed(run, "the `pickapic build` that ran this was gone when the next one started "
                                        "(killed); the next build recomputes what it left")


def use_home(home: DataHome) -> Path:
    """Point this process's Dagster and pipeline at ``home`` (DAGSTER_HOME lives inside it)."""
    home.dagster_home.mkdir(parents=True, exist_ok=True)
    config = home.dagster_home / "dagster.yaml"
    # written when missing, or brought up to date when it holds what an earlier version wrote; a file a user
    # edited (or a link, a folder) is left as it is
    current = read_small_file(config, 4096) if os.path.lexists(config) else b""
    own = current == DAGSTER_YAML.encode()     # the instance this tool configures: storage in the default layout
    if current == b"" or (current is not None and current.decode("utf-8", "replace") in OLD_DAGSTER_YAMLS):
        write_bytes_atomic(config, DAGSTER_YAML.encode())
        own = True
    os.environ["DAGSTER_HOME"] = str(home.dagster_home)
    os.environ["PICKAPIC_HOME"] = str(home.root)
    check_instance_writable(home, own)
    create_dagster_storage(home, own)
    return home.dagster_home


def give_old_build_runs_an_origin(home: DataHome, instance: dg.DagsterInstance | None = None) -> None:
    """Give the finished build runs an earlier version stored without an origin the one a build's run is stored
    with now, so the UI can re-execute them (:func:`dagster_project.instance.give_build_runs_an_origin`): by a
    build (on its open ``instance``) and by ``pickapic serve`` / ``ui`` before the UI starts (the daemon and the
    webserver open the instance then anyway). A failure (a database another process holds locked past the wait)
    (or an instance a user's own ``dagster.yaml`` configures that does not open: the UI says so) only leaves them
    as they were, for the next build or UI."""
    import sqlalchemy.exc
    from dagster._core.errors import DagsterError

    from dagster_project.instance import give_build_runs_an_origin

    with contextlib.suppress(sqlalchemy.exc.SQLAlchemyError, OSError, DagsterError):
        if instance is not None:
            give_build_runs_an_origin(instance)
            return
        with dg.DagsterInstance.from_config(str(home.dagster_home)) as opened:
            give_build_runs_an_origin(opened)


# the database of runs, each with its run config (shown on its page in the UI): read by no account outside the
# home's group (review rev25g); SQLite gives its -wal and -shm files its mode
RUN_CONFIG_DATABASE = "history/runs.db"
# Dagster's SQLite databases in the layout of the instance this tool configures (DAGSTER_YAML: default storage);
# `history/runs/.db` holds the events of no run (every build's raw-day observations), created at the first one
INSTANCE_DATABASES = ("history/runs.db", "history/runs/index.db", "schedules/schedules.db")
RUNLESS_DATABASE = "history/runs/.db"
INSTANCE_FOLDERS = ("history", "history/runs", "schedules")   # SQLite makes its -wal / -shm / -journal files here


def check_instance_writable(home: DataHome, own: bool) -> None:
    """Raise PermissionError (one line: what this account may not write) when it cannot write the home's Dagster
    instance: a build, even ``--dry-run``, and the UI write runs, events and partitions there, and Dagster would
    otherwise stop with a SQLite traceback ("attempt to write a readonly database"). An account that only reads
    a home uses ``pickapic query`` / ``export`` / ``score`` / ``train --data-dir`` instead. The databases and
    their folders (SQLite creates its journal files beside a database) are checked in the layout this tool
    configures (``own``: the home's ``dagster.yaml`` is the one this tool writes); an instance a user's own
    ``dagster.yaml`` keeps elsewhere is Dagster's to check."""
    try:
        read_only = bool(os.statvfs(home.dagster_home).f_flag & os.ST_RDONLY)
    except OSError:
        read_only = False
    if read_only:       # os.access says "no" for the owner too: the cause is the mount, not the account
        raise PermissionError(f"{home.dagster_home}: Read-only file system: the data home is mounted read-only here; "
                              "mount it read-write to build or serve it (pickapic query, export, score and train "
                              "--data-dir read it as it is)")
    targets = [home.dagster_home]
    if own:
        targets += [home.dagster_home / name for name in (*INSTANCE_FOLDERS, *INSTANCE_DATABASES, RUNLESS_DATABASE)
                    if os.path.lexists(home.dagster_home / name)]
    for target in targets:
        if not os.access(target, os.W_OK | (os.X_OK if target.is_dir() else 0)):
            raise PermissionError(f"{target}: Permission denied: this account may not write the data home's Dagster "
                                  "instance, and a build, the UI and the daemon need write access to the whole home "
                                  "(run them as its owner, or see README, Readers and a shared home; an account that "
                                  "only reads it can use pickapic query, export, score and train --data-dir)")


def create_dagster_storage(home: DataHome, own: bool) -> None:
    """Create the instance's SQLite databases (runs, event log index, schedules) in this process, before anything
    else opens the instance: ``pickapic serve`` starts the daemon and the webserver at once, and on a new home both
    would create them, one failing (``table alembic_version already exists``, seen in CI). SQLite creates a
    database 0644 whatever the umask; each one this call created is given the umask's mode (``0666 & ~umask``,
    as every other file the tool writes), and the database of run-less events (``history/runs/.db``, written by
    every build) is created empty with that mode before Dagster first writes it, so a group-shared home (umask
    002) lets the group write them. Each run's own event database (``history/runs/<run id>.db``: its events, a
    refusal's reason among them) is created by the home's instance before Dagster writes it, with no access for
    other accounts, and one made before loses other accounts' bits here (review rev25j).
    The database of runs (:data:`RUN_CONFIG_DATABASE`: every run's config, which the UI shows) is given no access
    for other accounts (``0666 & ~umask & ~0007``: 0640 under umask 022, 0660 in a group-shared home under umask
    002), and one made before (0644), with its -wal and -shm files, loses other accounts' bits whenever this
    account uses the home (review rev25g). Only for the instance this tool configures (``own``: its own ``dagster.yaml``): one a user pointed elsewhere is
    left alone."""
    if not own:
        return
    paths = [home.dagster_home / name for name in INSTANCE_DATABASES]
    created = [path for path in paths if not os.path.lexists(path)]
    run_config = home.dagster_home / RUN_CONFIG_DATABASE
    if created:
        from pipelines.publish.reuse import give_mode  # the publish's rule for giving a file this run's mode

        with dg.DagsterInstance.from_config(str(home.dagster_home)):
            pass
        for path in created:
            with contextlib.suppress(OSError, RuntimeError):
                if os.lstat(path).st_uid == os.geteuid():     # this process made it (a link planted there is left)
                    give_mode(path, file_mode() & ~0o007 if path == run_config else file_mode(), fsync=False)
    for path in (run_config, *(run_config.with_name(run_config.name + end) for end in ("-wal", "-shm"))):
        _no_access_for_others(path)
    _no_access_to_run_events(home.dagster_home / RUNLESS_DATABASE.rsplit("/", 1)[0])
    _no_access_to_compute_logs(home.dagster_home / COMPUTE_LOGS_FOLDER)
    runless = home.dagster_home / RUNLESS_DATABASE
    if not os.path.lexists(runless) and is_real_folder(runless.parent):
        # an empty file is a new SQLite database: Dagster creates its tables at the first connection
        with contextlib.suppress(FileExistsError, PermissionError):
            os.close(os.open(runless, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666))


COMPUTE_LOGS_FOLDER = "storage"     # Dagster's local compute logs: <run id>/compute_logs/<step>.out|.err, tick logs
COMPUTE_LOG_ENDINGS = (".out", ".err", ".out.partial", ".err.partial")


def _no_access_to_compute_logs(folder: Path) -> None:
    """Take other accounts' bits off each compute log under ``folder`` (``storage/<run id>/compute_logs/*.out``,
    ``*.err``; the sensors' and schedules' tick logs): they repeat a run's step events and log lines, which its event
    database keeps from other accounts. The home's instance creates each one so
    (:class:`dagster_project.instance.PrivateComputeLogManager`); one made before (the umask's mode) loses them
    whenever this account uses the home (review rev32h). Folders are walked without following links; only this
    account's regular files change."""
    for root, _folders, files in os.walk(folder, followlinks=False):
        for name in files:
            if not name.endswith(COMPUTE_LOG_ENDINGS):
                continue
            path = os.path.join(root, name)
            with contextlib.suppress(OSError):
                if os.lstat(path).st_mode & 0o007:
                    _no_access_for_others(Path(path))


def _no_access_to_run_events(folder: Path) -> None:
    """Take other accounts' bits off each run's event database in ``folder`` (``history/runs/<run id>.db``, its
    -wal, -shm and -journal files), which holds the run's events, a refusal's reason among them: the home's own
    instance creates each one so (:func:`dagster_project.instance.prepare_event_database`), and one made earlier
    (SQLite's 0644) loses them whenever this account uses the home (review rev25j). The event index
    (``index.db``) and the database of run-less events (``.db``) keep the umask's mode."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        base = entry.name.split(".db", 1)[0]
        if not base or base == "index" or not entry.name.endswith((".db", ".db-wal", ".db-shm", ".db-journal")):
            continue
        with contextlib.suppress(OSError):
            if entry.stat(follow_symlinks=False).st_mode & 0o007:
                _no_access_for_others(Path(entry.path))


def _no_access_for_others(path: Path) -> None:
    """Take other accounts' permission bits off this account's regular file ``path`` (the owner's and the group's
    are kept: the home's group builds a group-shared home); never through a link; nothing when it is not there."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return
    try:
        info = os.fstat(fd)
        if stat.S_ISREG(info.st_mode) and info.st_uid == os.geteuid() and info.st_mode & 0o007:
            os.fchmod(fd, stat.S_IMODE(info.st_mode) & ~0o007)
    except OSError:
        pass
    finally:
        os.close(fd)


def select_days(home: DataHome, start: str | None = None, end: str | None = None,
                warn: Callable[[str], None] | None = None) -> list[str]:
    """Raw days present, limited to [start, end]; errors when there are none.

    Raw-zone entries that are not days (misnamed or linked-out folders, stray files) and day folders of
    days that have not begun (UTC) are skipped, each named through ``warn``; they never stop the other
    days (only a selection of nothing but days to come is an error).
    """
    warn = warn or (lambda message: None)
    scan = home.scan_raw_zone()
    for line in scan.skipped_lines():
        warn(f"skipped {line}")
    days = scan.days
    if not days:
        problems = f" ({len(scan.summary())} entries there are not days: {'; '.join(scan.summary()[:3])})" \
            if scan.problems else ""
        raise BuildError(f"no raw partitions under {home.raw_logs}{problems}; run `pickapic simulate --home "
                         f"{home.root}` or copy an app export there first")
    chosen = [d for d in days if (start is None or d >= start) and (end is None or d <= end)]
    if not chosen:
        raise BuildError(f"no raw partition between {start or 'the first day'} and {end or 'the last day'}; "
                         f"present: {days[0]} .. {days[-1]}")
    begun = begun_days(chosen)
    future = [d for d in chosen if d not in begun]
    if future:
        today = dt.datetime.now(dt.timezone.utc).date().isoformat()
        message = future_days_note(future, today)
        if not begun:
            raise BuildError(message)
        warn(f"skipped {message}")
    return begun


def build_selection(home: DataHome, start: str | None = None, end: str | None = None,
                    warn: Callable[[str], None] | None = None) -> list[str] | None:
    """The days a build of [``start``, ``end``] recomputes (None without a range: every raw day, as the plan finds
    them). Either way :func:`select_days` names the raw zone's skipped entries and the days that have not begun
    through ``warn`` (a build and its ``--dry-run`` alike, review rev30d), and a home without a raw day is an error,
    not "up to date"."""
    if start or end:
        return select_days(home, start, end, warn)
    select_days(home, warn=warn)
    return None


def select_app_db_days(settings: Settings, start: str | None = None, end: str | None = None,
                       warn: Callable[[str], None] | None = None) -> list[str]:
    """Days of the app database ($PICKAPIC_APP_DB_DSN) with activity, closed for the export lag, within
    [start, end]; ``warn`` hears about rows that belong to no day (NULL or out-of-range created_at) and
    about days that have not begun (UTC), which the app's rows name when its clock runs ahead.

    With ``start`` or ``end`` given, the raw days of the home the settings were loaded for (``settings.root``)
    in that range are re-exported too when the app holds no row on them now (review rev29h: README 1a's account
    erasure, ``--from FIRST --to LAST`` from the primary, skipped a raw day whose only activity was the erased
    account's, so its email and rankings stayed in the raw zone; with every day of the range such a day, the
    build failed with "no day ... has rows"): from the primary such a day's files become what the app holds
    for it (the users snapshot only, or nothing), named in a warning. From a replica (a hot standby, a logical
    subscriber of the app tables) they are not: a re-export from it keeps every row it lacks, so it erases
    nothing; the warning says to build from the primary.

    Review rev29i: only a raw day whose app-table files the app export itself wrote and that are unchanged since
    (its record under HOME/cache/app_export_written: ``written_by_export``) is re-exported so. A day the raw zone
    got another way (the simulator or ``pickapic demo``, another exporter, history imported by hand), one edited
    since, or one whose record is gone, is left as it is, named in a warning that says what to do: the re-export
    would have replaced its rows with the app's nothing."""
    from pipelines.appdb.connection import DSN_ENV, dsn_from_env
    from pipelines.appdb.export import app_days, is_closed, written_by_export
    from pipelines.ingest.uidindex import pruned_days

    found = app_days(dsn_from_env(), source=f"${DSN_ENV}")
    if found.undated and warn is not None:
        warn(found.warning())

    def in_range(day: str) -> bool:
        return (start is None or day >= start) and (end is None or day <= end)

    raw_only: list[str] = []
    if (start or end) and settings.root is not None:
        app = set(found.days)
        home = DataHome(settings.root)
        raw_only = [d for d in home.raw_days() if in_range(d) and d not in app]
        foreign = [d for d in raw_only if not written_by_export(home, d)]
        if foreign:
            if warn is not None:
                warn(f"raw day(s) {_some_days(foreign)} hold no row the app database "
                     f"in ${DSN_ENV} has now and are left as they are: their files were not written by the app "
                     "export (the simulator, pickapic demo, another exporter, an import), or changed since, or its "
                     f"record under cache/app_export_written/ is gone; to erase an account from them, edit or "
                     "remove its rows in them by hand, or delete such a day if it is the app's "
                     "(README 1a, account erasure)")
            raw_only = [d for d in raw_only if d not in foreign]
    pruned: list[str] = []
    if (start or end) and settings.root is not None:
        pruned = _pruned_days_to_erase(settings, found, [d for d in pruned_days(home, home.raw_days())
                                                         if in_range(d) and d not in app], warn)
    if raw_only and found.replica:
        if warn is not None:
            warn(f"raw day(s) {_some_days(raw_only)}"
                 f" hold no row the app database in ${DSN_ENV} has now, and it is a replica (a hot standby or a "
                 "logical-replication subscriber): they are not re-exported from it (a re-export from a replica keeps "
                 "every row it lacks); to take rows the app deleted (an erased account) out of them, build from the "
                 "primary's DSN")
        raw_only = []
    if not found.days and not raw_only and not pruned:
        raise BuildError(f"the app database in ${DSN_ENV} has no dated rows in users, images, rankings or downloads"
                         + (f" ({found.warning()})" if found.undated else ""))
    lag = settings.config("app_export").lag_minutes
    wanted = sorted([d for d in found.days if in_range(d)] + raw_only + pruned)
    begun = set(begun_days(wanted))
    future = [d for d in wanted if d not in begun]
    if future and warn is not None:   # an app clock running ahead: these rows wait unseen otherwise
        today = dt.datetime.now(dt.timezone.utc).date().isoformat()
        warn(f"app rows dated in the future are not exported: day(s) {_some_days(future)} (today is {today}, UTC); a day is "
             "exported once it has closed for the export lag -- check the app servers' clocks")
    days = [d for d in wanted if is_closed(d, lag)]
    if not days:
        held = f" ({found.days[0]} .. {found.days[-1]})" if found.days else ""
        raise BuildError(f"no day of the app database{held} or of the raw zone between "
                         f"{start or 'the first day'} and {end or 'the last day'} has rows and is closed for the "
                         f"export lag (app_export.lag_minutes = {lag})")
    again = [d for d in raw_only if d in days]
    if again and warn is not None:
        warn(f"raw day(s) {_some_days(again)} hold "
             "no row the app database has now: re-exported from it all the same (the range was named), so rows the "
             "app deleted leave them (an erased account), unless app_export.keep_exported_rows = true")
    again = [d for d in pruned if d in days]
    if again and warn is not None:
        warn(f"warehouse day(s) {_some_days(again)} whose raw folder is gone (raw-zone retention) hold no row the app "
             "database has now: re-exported from it (the range was named), so the raw folder comes back with what "
             "the app holds (the users snapshot of the accounts left, or empty files) and the day's warehouse "
             "partitions are rebuilt from it, without the rows the app deleted (an erased account); a copy of the "
             "old raw folder kept elsewhere (where retention moved it) still holds them (README 1a, account erasure)")
    return days


def _some_days(days: list[str]) -> str:
    """``days`` for a message: the first ten, then how many more."""
    return f"{', '.join(days[:10])}{f' and {len(days) - 10} more' if len(days) > 10 else ''}"


def _pruned_days_to_erase(settings: Settings, found, gone: list[str], warn: Callable[[str], None] | None) -> list[str]:
    """Of ``gone`` (days of the ranged build the warehouse keeps though their raw folder is gone, which the app
    database holds no row on now), those re-exported so their warehouse partitions lose the rows the app deleted
    (review rev31a: README 1a's erasure build skipped them silently, and the warehouse kept an erased account's
    users row, its prompts in the quarantine and the training JPEGs its features name): from the primary, with
    ``app_export.keep_exported_rows = false`` (with it true the re-export keeps what the raw files held, and the
    files are gone: it would drop rows the operator keeps), and only a day whose partitions were built from the
    files the app export wrote (``export.built_from_export``: never a day the simulator, the demo or a hand import
    gave). The others are named in a warning that says what keeps them and what to do."""
    from pipelines.appdb.connection import DSN_ENV
    from pipelines.appdb.export import built_from_export

    if not gone:
        return []
    if found.replica:
        why = (f"the app database in ${DSN_ENV} is a replica (a hot standby or a logical-replication subscriber), "
               "and a re-export from it keeps every row it lacks: build from the primary's DSN")
        left, reach = gone, []
    elif settings.config("app_export").keep_exported_rows:
        why = ("app_export.keep_exported_rows = true keeps the rows the app deleted, and their raw files, which a "
               "re-export would keep them from, are gone: build with --set app_export.keep_exported_rows=false "
               "to rebuild them from what the app holds")
        left, reach = gone, []
    else:
        home = DataHome(settings.root)
        reach = [d for d in gone if built_from_export(home, d)]
        left = [d for d in gone if d not in reach]
        why = ("their partitions were not built from files the app export wrote (the simulator, pickapic demo, "
               "another exporter, an import), or its record under cache/app_export_written/ is gone")
    if left and warn is not None:
        warn(f"warehouse day(s) {_some_days(left)} whose raw folder is gone (raw-zone retention) hold no row the app "
             f"database in ${DSN_ENV} has now and are left as they are: {why}. Their warehouse partitions (users, "
             "images, rankings, downloads, quarantine) and the training JPEGs they name still hold every row the app "
             "deleted (an erased account): to erase it, put the day's raw folder back (from where retention moved "
             "it) with the account's rows taken out, then build that day (README 1a, account erasure)")
    return reach


def build(
    home: DataHome,
    *,
    start: str | None = None,
    end: str | None = None,
    days: list[str] | None = None,
    force: bool = False,
    with_model: bool = False,
    assignments: Iterable[str] = (),
    config_file: Path | None = None,
    overrides: dict | None = None,
    wait: bool = False,
    progress: Progress | None = None,
    on_plan: Callable[[list[str]], None] | None = None,
    from_app_db: bool = False,
    warn: Callable[[str], None] | None = None,
    on_locked: Callable[[], None] | None = None,
) -> BuildResult:
    """Plan, then run what is missing or stale (``days`` / ``start``-``end``: recompute those days).

    ``from_app_db``: first export each day of the app database (``days``, else its days closed for the
    export lag within ``start``-``end``) into the raw zone, one ``app_export_job`` run per day, each day
    added as a partition first; the plan that follows runs what the new or changed raw days make stale.
    ``warn`` hears about raw-zone entries that are skipped (never fatal). ``on_locked`` runs once the settings
    are read and the build holds the home's lock, before it plans (``pickapic build`` records the raw zone's
    problems there: a refused build writes nothing, review rev25h).
    """
    assignments = list(assignments)
    settings = load(home.root, config_file=config_file, assignments=assignments, overrides=overrides)
    exports: list[str] = []
    if from_app_db:
        exports = list(days) if days is not None else select_app_db_days(settings, start, end, warn)
        selected = None
    else:
        selected = days if days is not None else build_selection(home, start, end, warn)
    use_home(home)
    progress = progress or (lambda message: None)
    with build_lock(home, wait=wait), dg.DagsterInstance.get() as instance:
        if on_locked is not None:
            on_locked()
        # what killed cache writers (this build's earlier runs too: a plan, a features run, the stamp) left in
        # cache/; an ingest sweeps them too, but a build with no day to ingest must as well (review rev30c)
        for note in sweep_cache_temps(home, also=[home.cache / buildstamp.STAMP]):
            if warn is not None:
                warn(note)
        _fail_dead_build_runs(instance)
        give_old_build_runs_an_origin(home, instance)
        run_config = _override_config(settings)
        run_ids = {}
        if exports:
            buildstamp.clear_stamp(home)
            instance.add_dynamic_partitions(PARTITIONS, exports)   # the days exist once the database has them
            export_config = _export_config(settings, run_config)
            for day in exports:
                progress(f"export {day} from the app database")
                run = PlannedRun(EXPORT.job, [EXPORT.op], day, ["--from-app-db"])
                run_ids[f"export-{day}"] = _execute(run, instance, export_config, home, warn)
        # what the plan is about to see, for the stamp written at the end (review rev23g: a raw day landing or
        # beginning during the build, or a blob changing, is new to the next build)
        raw_days = home.raw_days()
        whole = not selected or set(selected) == set(raw_days)
        view = buildstamp.plan_view(home, assignments=assignments, config_file=config_file, with_model=with_model,
                                    not_begun=sorted(set(raw_days) - set(begun_days(raw_days)))) if whole else None
        plan = plan_build(home, settings, instance, selected_days=selected, force=force, with_model=with_model)
        record_observations(instance, plan.observations)
        instance.add_dynamic_partitions(PARTITIONS, plan.days)
        result = BuildResult(days=[r.partition for r in plan.runs if r.partition],
                             plan=[f"export {day} from the app database" for day in exports] + describe_plan(plan),
                             up_to_date=plan.up_to_date and not exports, run_ids=run_ids)
        if on_plan:
            on_plan(result.plan)
        if plan.runs:
            buildstamp.clear_stamp(home)
        for run in plan.runs:
            progress(_describe(run))
            result.run_ids[run.label] = _execute(run, instance, run_config, home, warn)
        if view is not None:
            # a day skipped because it had not begun is built by the first build once it has: the stamp ends then
            buildstamp.write_stamp(home, view.key_after_build(home), until=view.until)
    return result


def describe_plan(plan: BuildPlan) -> list[str]:
    """One line per run of ``plan`` (what a build prints, and ``--dry-run``): its stages' ops, then the other assets
    the run materializes (``automation.asset_keys``: ``train_model_job``'s evaluation reports after
    ``preference_model``; review rev30d: ``--dry-run --with-model`` named the training only), and why."""
    if not plan.runs:
        return []
    from dagster_project.automation import asset_keys
    from dagster_project.definitions import defs

    graph = defs.resolve_asset_graph()
    owned = {asset for stage in STAGES for asset in stage.assets}

    def followers(run: PlannedRun) -> list[str]:
        return [name for name in (key.to_user_string() for key in asset_keys(run, graph)) if name not in owned]

    return plan.describe(followers)


def run_build(home: DataHome, days: list[str], *, with_model: bool = False, wait: bool = False,
              progress: Progress | None = None, **settings) -> BuildResult:
    """Recompute ``days`` and then whatever they make stale (the build of exactly these days).

    With ``from_app_db=True`` the days are exported from the app database first, and then whatever
    their new or changed raw files make stale runs.
    """
    return build(home, days=days, with_model=with_model, wait=wait, progress=progress, **settings)


def _describe(run: PlannedRun) -> str:
    if run.partition:
        return f"ingest + fingerprint {run.partition}"
    if run.job == "rebuild_dataset_job":
        return f"curate, split and publish ({', '.join(run.ops)})"
    return "train, evaluate, rank generators"


def _override_config(settings: Settings) -> dict[str, dict]:
    """section -> the settings this command overrides (--set, --config): passed as run config."""
    from dagster_project.runconfig import run_config_for

    by_section: dict[str, dict] = {}
    for key, source in settings.sources.items():
        if source == _HOME_SOURCE:
            continue
        section, name = key.split(".", 1)
        by_section.setdefault(section, {})[name] = settings.explicit[section][name]
    return {section: run_config_for(section, values) for section, values in by_section.items()}


def _export_config(settings: Settings, run_config: dict[str, dict]) -> dict[str, dict]:
    """``run_config`` with the export's limits set to this build's effective ingest.max_line_bytes and
    features.max_bytes (the home's, or the --set / --config value): the export cuts over-long text and
    caps blob copies at the limits of the stages that will read the day in this build, not at the home
    file's."""
    limits = {"max_line_bytes": settings.config("ingest").max_line_bytes,
              "blob_max_bytes": settings.config("features").max_bytes}
    return {**run_config, "app_export": {**run_config.get("app_export", {}), **limits}}


def _execute(run: PlannedRun, instance: dg.DagsterInstance, overrides: dict[str, dict], home: DataHome,
             warn: Callable[[str], None] | None = None) -> str:
    from dagster_project.automation import BUILD_TAG, BUILD_TAG_VALUE, asset_keys
    from dagster_project.definitions import defs

    sections = {stage.op: stage.section for stage in STAGES}
    ops = {op: {"config": overrides[sections[op]]} for op in run.ops if sections.get(op) in overrides}
    run_config = {**QUIET_LOGS, **({"ops": ops} if ops else {})}
    job = defs.resolve_job_def(run.job)   # what the job may run is automation.JOB_SELECTIONS, defined once
    with signals_seen() as stopped, _helpers_deaf_to_ctrl_c():
        result = job.execute_in_process(instance=instance, run_config=run_config, partition_key=run.partition,
                                        asset_selection=asset_keys(run, defs.resolve_asset_graph()),
                                        raise_on_error=False, tags={BUILD_TAG: BUILD_TAG_VALUE,
                                                                    "pickapic/why": "; ".join(run.reasons)[:200]})
        signum = stopped()
    error: BaseException | None = None
    if signum is not None:   # in a step (it failed the run) or as the run ended: the build stops here
        error = BuildInterrupted(signum)
    elif not result.success:
        error = _not_enough_data(result, home) or _run_failure(run, result)
    if warn is not None:      # before a failure is raised too: what the steps warned of may be why
        _tell(warn, _step_warnings(instance, result.run_id), error)
    if error is not None:
        raise error
    return result.run_id


def _tell(warn: Callable[[str], None], messages: list[str], error: BaseException | None) -> None:
    """Pass a run's step warnings on to ``warn``, less any the error the build is about to raise states already: the
    build's error line says it, once (review rev31i)."""
    said = str(error) if isinstance(error, BuildError) else ""    # an interruption's text is its signal's number
    for message in messages:
        if message not in said:
            warn(message)


def _run_failure(run: PlannedRun, result) -> BuildError:
    """A failed run's error: each failed step's root cause."""
    failures = [event for event in result.all_events if event.is_step_failure]
    detail = "; ".join(f"{e.step_key}: {_root_cause(e.event_specific_data.error)}"
                       for e in failures if getattr(e.event_specific_data, "error", None))
    detail = detail or "see the run in `pickapic ui`"
    where = f" for partition {run.partition}" if run.partition else ""
    return BuildError(f"{run.job}{where} failed (run {result.run_id}): {detail}")


def _step_warnings(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    """What the steps of a build's run warned of (``steplog.step_warning``: the app export's warnings, the training
    JPEG removal's notes, a step that waited for another run, ...), in order, each once. The build runs Dagster with
    the console logger at CRITICAL (``QUIET_LOGS``), so these reach the user only through the build's ``warn``
    (``pickapic build`` prints each on stderr, as it prints the build's own warnings; review rev31a: the removal's
    notes, nothing removed because another home writes into the store or a feature stage was running, reached no
    one). Only the project's own warnings: Dagster's messages about the steps it skipped after a failure, its other
    warnings, and a step's errors (the "not enough data" refusal, which the build's error line states) are not
    (review rev31i; ``steplog.project_warning``). A run whose log cannot be read gives none (the run in ``pickapic
    ui`` still has them)."""
    from dagster_project.steplog import project_warning

    try:
        entries = instance.all_logs(run_id)
    except Exception:   # noqa: BLE001 - the event log is Dagster's storage: a warning lost is no build failure
        return []
    seen: dict[str, None] = {}
    for entry in entries:
        if entry.dagster_event is None and entry.step_key is not None:
            message = project_warning(entry.level, entry.user_message)
            if message is not None:
                seen.setdefault(message, None)
    return list(seen)


def _not_enough_data(result, home: DataHome) -> NotEnoughDataError | None:
    """A failed trainability check as the plain "not enough data" error (None when the check did not fail)."""
    from dagster_project.assets.splits import TRAINABLE_CHECK

    for event in result.all_events:
        data = event.event_specific_data
        if event.event_type_value == "ASSET_CHECK_EVALUATION" and getattr(data, "check_name", None) == TRAINABLE_CHECK \
                and not data.passed:
            latest = dataset.latest_link(home)
            kept = (f"latest stays at {latest.resolve().name}" if dataset.is_published(home)
                    else "no version has been published yet")
            why = data.description or "a split is empty"
            return NotEnoughDataError(f"{why}. Nothing was published; {kept}.")
    return None


# the kernel's error naming no file, as Python words it: "OSError: [Errno 28] No space left on device"
_BARE_ERRNO = re.compile(r"[\w.]+: \[Errno (\d+)\] [^:'\"\n]*")


# a worker process's traceback, as the executor attaches it to the error it raises again in the parent (the cause of
# that error: its text, not an error of its own; concurrent.futures' and multiprocessing.Pool's)
_TRACEBACK_TEXT = frozenset({"_RemoteTraceback", "RemoteTraceback"})
CAUSE_MAX_CHARS = 500   # a step's root cause in the build's error line, at most (a longer one is cut, "...")
_MARKERS = re.compile(r"[\s^~\"]*")   # a caret line under a quoted query or source; the quotes around a traceback
_TRACEBACK = "Traceback (most recent call last):"


def _root_cause(error) -> str:
    """The innermost error message of a Dagster SerializableErrorInfo chain, on one line. Where that is the kernel's
    error naming no file (``OSError: [Errno 5] Input/output error``) and an error of the step's own code was raised
    from it (one naming the file: :func:`formats.files.naming_the_file`, :func:`formats.dataset.fsync_dir`, the
    record of switched versions' refusal, ...), the nearest such error instead, followed by the kernel's text when it
    does not carry the same errno; Dagster's own wrappers are passed over (review rev33m: a full record of switched
    versions, an EIO at an atomic write's sync, named no file under `pickapic build`). A process pool worker's
    traceback text, the cause the executor gives the worker's error raised again in the step, is no error of its own:
    passed over too (review rev33r: the build said `step: \"\"\"`, that text's last line). Each error is its whole
    message on one line (:func:`_one_line`)."""
    chain = []
    while error is not None and len(chain) < 64:
        if error.cls_name not in _TRACEBACK_TEXT or not chain:
            chain.append(error)
        error = getattr(error, "cause", None)
    inner = _one_line(chain[-1])
    bare = _BARE_ERRNO.fullmatch(inner)
    if bare is None:
        return inner
    for outer in reversed(chain[:-1]):
        if (outer.cls_name or "").startswith("Dagster"):
            continue
        line = _one_line(outer)
        return line if f"[Errno {bare.group(1)}]" in line else _bounded(f"{line} ({inner})")
    return inner


def _one_line(error) -> str:
    """One error of a SerializableErrorInfo chain on one line (its class name when it has no message): from the line
    that names its class on (Python puts a SyntaxError's quoted source above it), its lines joined with " | " (after
    a line ending in ":" with a space), blank lines and the marker lines under a quoted query or source (carets) or
    around a quoted traceback dropped, cut at :data:`CAUSE_MAX_CHARS`. A message that quotes a traceback (a Beam
    worker's error, as the multi-processing runner raises it again) is the error that traceback ends in. Review
    rev33r: the last line alone was a DuckDB error's caret line (``^^^^^^``, its message, the column it lacks,
    lost) or a multi-line project error's last line of log."""
    lines = (error.message or "").splitlines()
    quoted = [i for i, line in enumerate(lines) if line.rstrip().endswith(_TRACEBACK)]
    if quoted:
        after = lines[quoted[-1] + 1:]
        frames = next((i for i, line in enumerate(after) if line[:1].strip()), len(after))
        if any(not _MARKERS.fullmatch(line) for line in after[frames:]):
            lines = after[frames:]
    name = re.compile(rf"(?:[\w.]+\.)?{re.escape(error.cls_name or '')}(?::|$)")
    start = next((i for i, line in enumerate(lines) if error.cls_name and name.match(line)), 0)
    kept = [line.strip() for line in lines[start:] if not _MARKERS.fullmatch(line)]
    if not kept:
        return error.cls_name or "unknown error"
    text = kept[0]
    for line in kept[1:]:
        text += (" " if text.endswith(":") else " | ") + line
        if len(text) > CAUSE_MAX_CHARS:
            break
    return _bounded(text)


def _bounded(text: str) -> str:
    return text if len(text) <= CAUSE_MAX_CHARS else text[:CAUSE_MAX_CHARS - 3].rstrip() + "..."


def plan_only(home: DataHome, **kwargs) -> BuildPlan:
    """The plan a build would run now (nothing runs, nothing is recorded)."""
    settings = load(home.root, config_file=kwargs.pop("config_file", None), assignments=kwargs.pop("assignments", ()))
    use_home(home)
    with dg.DagsterInstance.get() as instance:
        return plan_build(home, settings, instance, **kwargs)
