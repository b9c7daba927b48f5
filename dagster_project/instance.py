"""The Dagster instance of a data home: Dagster's own, with a run storage that never stores a credential.

Dagster stores a launched run (its run config and tags with it) before the run coordinator sees it, and stores a
backfill launched from the UI (its run config and tags) without any check at all (``launchPartitionBackfill``:
``instance.add_backfill`` straight after parsing the config; review rev25j). So the check is made where they are
stored: :class:`CheckedSqliteRunStorage` is Dagster's SQLite run storage, but

- a run whose config or tags hold a credential (:func:`dagster_project.coordinator.credential_refusal`: a DSN with
  a password in ``resources.app_db.config.dsn``, a stage value holding a URL's password, token or query, a tag
  holding a password, a token or a credential query parameter) is refused (``RunConfigRefused``), nothing stored,
  so no byte of the credential is ever written (no reader of ``runs.db`` and no lock on it can keep one there),
  and no way of running it, launched or in process, gets a run to execute (review rev25l: a run stored scrubbed
  and tagged refused, as fix25j did, still ran in process with the value it was given);
- a backfill whose run config, tags, title or description hold one is refused (``RunConfigRefused``), nothing
  stored;
- tags added to a stored run are checked as a new run's (:data:`dagster_project.coordinator.REFUSED_TAG` dropped);
- each run's event database (``history/runs/<run id>.db``, where its events, a refusal's reason among them, are
  kept) is created before Dagster writes it, with no access for other accounts (as ``runs.db``), and so is each
  compute log (``storage/<run id>/compute_logs/*.out|.err``, the same events and log lines again:
  :class:`PrivateComputeLogManager`, the instance's default compute log manager);
- its connections wait up to 30 s for a lock, as Dagster's other SQLite storages do (Dagster's run storage: 5 s);
- a run of ``pickapic build`` (tag :data:`dagster_project.automation.BUILD_TAG`; the build runs each job with
  ``execute_in_process``, which gives a run no origin) is stored with the origin of its job in the home's code
  location (:func:`home_job_origin`: the location ``pickapic serve`` / ``pickapic ui`` load,
  ``dagster_project.definitions``, repository ``__repository__``), so the UI's *Re-execute* of it launches like
  any UI launch of that job (review rev21h: Dagster refused it with ``Expected non-None value``, as a run without
  an origin); :func:`give_build_runs_an_origin` does the same for a build's finished runs stored before;
- a run that arrives with an origin (a launch through a workspace: the UI's re-execution of a build's run copies
  the parent's tags) is stored without the build's tag: it is not a run of a build, and the sensors, the nightly,
  the next build and the run monitoring judge it as the launch it is.

``dagster.yaml`` (:data:`dagster_project.coordinator.DAGSTER_YAML`) names :class:`PickapicInstance` as its
``instance_class``, whose default storage is :class:`PickapicSqliteStorage` (Dagster's layout, files and schema:
a home made before reads as it was).
"""
from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator, Mapping
from typing import Any

import dagster as dg
import yaml
from dagster._core.instance.ref import InstanceRef, compute_logs_directory
from dagster._core.storage.compute_log_manager import ComputeIOType
from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage
from dagster._core.storage.local_compute_log_manager import IO_TYPE_EXTENSION, LocalComputeLogManager
from dagster._core.storage.runs.sqlite.sqlite_run_storage import SqliteRunStorage
from dagster._core.storage.schedules.sqlite.sqlite_schedule_storage import SqliteScheduleStorage
from dagster._core.storage.sqlite import SQLITE_BUSY_TIMEOUT_SECONDS
from dagster._core.storage.sqlite_storage import (
    DagsterSqliteStorage,
    _event_logs_directory,
    _runs_directory,
    _schedule_directory,
)
from dagster._serdes import ConfigurableClassData

EVENTS_FOLDER = os.path.join("history", "runs")
_FINISHED = frozenset({dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED})


def event_database_mode() -> int:
    """The mode of a run's event database: the umask's (``0666 & ~umask``) without other accounts' bits."""
    from formats.files import file_mode

    return file_mode() & ~0o007


def prepare_event_database(events_dir: str, run_id: str) -> None:
    """Create ``events_dir/<run_id>.db`` empty with :func:`event_database_mode` (an empty file is a new SQLite
    database: Dagster creates its tables at the first connection, and SQLite gives its -wal and -shm files the
    database's mode), or take other accounts' bits off one that is there; never through a link."""
    prepare_private_file(os.path.join(events_dir, f"{run_id}.db"))


def prepare_private_file(path: str) -> None:
    """Create ``path`` empty with :func:`event_database_mode` (the umask's mode without other accounts' bits), or
    take other accounts' bits off this account's regular file that is there; never through a link; nothing (the
    writer that follows says what is wrong) when it cannot be made or opened."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    with contextlib.suppress(OSError):
        try:
            fd = os.open(path, flags, event_database_mode())
        except FileExistsError:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            info = os.fstat(fd)
            if stat.S_ISREG(info.st_mode) and info.st_uid == os.geteuid() and info.st_mode & 0o007:
                os.fchmod(fd, stat.S_IMODE(info.st_mode) & ~0o007)
        finally:
            os.close(fd)


class PrivateComputeLogManager(LocalComputeLogManager):
    """Dagster's local compute log manager (``HOME/dagster/storage/<run id>/compute_logs/<step>.out|.err``, the
    sensors' and schedules' tick logs), whose log files are created before Dagster writes them with no access for
    other accounts (:func:`prepare_private_file`, as each run's event database): they repeat the run's step events
    and every ``context.log`` line (a refusal's reason among them), and Dagster created them with the umask's mode,
    readable by every account under umask 022 (review rev32h). One made before loses other accounts' bits here,
    and when the home is used (:func:`dagster_project.build.create_dagster_storage`)."""

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData | None, config_value: Mapping[str, Any]
                          ) -> PrivateComputeLogManager:
        return cls(inst_data=inst_data, **config_value)

    def _prepare(self, log_key: Any, io_type: Any) -> None:
        path = self.get_captured_local_path(log_key, IO_TYPE_EXTENSION[io_type])
        with contextlib.suppress(OSError):
            os.makedirs(os.path.dirname(path), exist_ok=True)
        prepare_private_file(path)

    @contextlib.contextmanager
    def capture_logs(self, log_key: Any) -> Iterator[Any]:
        for io_type in (ComputeIOType.STDOUT, ComputeIOType.STDERR):
            self._prepare(log_key, io_type)
        with super().capture_logs(log_key) as context:
            yield context

    @contextlib.contextmanager
    def open_log_stream(self, log_key: Any, io_type: Any) -> Iterator[Any]:
        self._prepare(log_key, io_type)
        with super().open_log_stream(log_key, io_type) as stream:
            yield stream


class _Engines:
    """SQLAlchemy engines of SQLite databases, one per database and process, the most recently used kept.

    Dagster's SQLite storages make a new engine for every connection (``NullPool``: a new SQLite connection each
    time, closed when released). An engine also holds its dialect, set up at its first connection, and its cache
    of compiled statements, so each of a build's ~1,000 events (a daily run's ~75 contract checks are three
    events each) paid for both again: about a tenth of a small build's CPU. An engine kept here still uses
    ``NullPool``, so every connection is the same new SQLite connection as before (nothing is shared between
    threads or with a forked child, which gets its own engines: the key holds the pid). The webserver and the
    daemon open the event database of every run they read: only ``MAX`` engines are kept."""

    MAX = 8

    def __init__(self) -> None:
        import threading
        from collections import OrderedDict

        self._lock = threading.Lock()
        self._kept: OrderedDict[tuple[int, str], Any] = OrderedDict()

    def get(self, conn_string: str, timeout_s: float) -> Any:
        import sqlalchemy as db
        from sqlalchemy.pool import NullPool

        key = (os.getpid(), conn_string)
        with self._lock:
            engine = self._kept.get(key)
            if engine is not None:
                self._kept.move_to_end(key)
                return engine
        engine = db.create_engine(conn_string, poolclass=NullPool, connect_args={"timeout": timeout_s})
        with self._lock:
            engine = self._kept.setdefault(key, engine)
            self._kept.move_to_end(key)
            while len(self._kept) > self.MAX:
                self._kept.popitem(last=False)
        return engine


ENGINES = _Engines()


@contextlib.contextmanager
def _kept_connection(conn_string: str) -> Iterator[Any]:
    """A connection to the SQLite database of ``conn_string`` through its kept engine (:class:`_Engines`), waiting
    up to SQLITE_BUSY_TIMEOUT_SECONDS for a lock, in a transaction committed when the block ends: the ``connect``
    of :class:`CheckedSqliteRunStorage` and :class:`KeptEngineSqliteScheduleStorage` (Dagster's, but for the
    engine and the wait)."""
    with ENGINES.get(conn_string, SQLITE_BUSY_TIMEOUT_SECONDS).connect() as conn, conn.begin():
        yield conn


class CheckedSqliteRunStorage(SqliteRunStorage):
    """Dagster's SQLite run storage, storing no credential of a run or a backfill (the module's docstring)."""

    events_dir: str | None = None

    def connect(self) -> contextlib.AbstractContextManager[Any]:
        return _kept_connection(self._conn_string)

    def add_run(self, dagster_run: dg.DagsterRun) -> dg.DagsterRun:
        run = _storable(dagster_run)
        if self.events_dir:
            prepare_event_database(self.events_dir, run.run_id)
        super().add_run(run)
        return run

    def give_build_runs_an_origin(self) -> int:
        """:func:`give_build_runs_an_origin` of this storage."""
        import sqlalchemy as db
        from dagster._core.storage.runs.schema import RunsTable, RunTagsTable
        from dagster._core.storage.tags import REPOSITORY_LABEL_TAG
        from dagster._serdes import deserialize_value, serialize_value

        from dagster_project.automation import BUILD_TAG, BUILD_TAG_VALUE

        finished = [status.value for status in dg.DagsterRunStatus if status in _FINISHED]
        built = db.select(RunTagsTable.c.run_id).where(RunTagsTable.c.key == BUILD_TAG,
                                                         RunTagsTable.c.value == BUILD_TAG_VALUE)
        labelled = db.select(RunTagsTable.c.run_id).where(RunTagsTable.c.key == REPOSITORY_LABEL_TAG)
        query = db.select(RunsTable.c.run_id, RunsTable.c.status, RunsTable.c.run_body).where(
            RunsTable.c.run_id.in_(built), RunsTable.c.run_id.not_in(labelled), RunsTable.c.status.in_(finished))
        given = 0
        with self.connect() as conn:
            # the write lock before the read (pysqlite would begin the transaction only at the first UPDATE): another
            # process migrating at once, or adding a tag to one of these runs, waits and then sees what was written
            # (review rev27c: two migrations at once labelled every run twice; a tag added meanwhile was lost)
            conn.exec_driver_sql("BEGIN IMMEDIATE")
            for run_id, status, body in conn.execute(query).fetchall():
                try:
                    run = deserialize_value(body, dg.DagsterRun)
                except Exception:      # noqa: BLE001 - a body this Dagster cannot read (another version's, damaged):
                    continue           # left as it is, for the UI to show or delete (review rev27c)
                if run.remote_job_origin is not None:
                    continue
                new = _with_build_origin(run)
                done = conn.execute(RunsTable.update().where(RunsTable.c.run_id == run_id, RunsTable.c.status == status)
                                    .values(run_body=serialize_value(new)))
                if not done.rowcount:
                    continue
                held = set(run.tags_for_storage())         # the run's tag rows: those it was stored with
                added = {key: value for key, value in new.tags_for_storage().items() if key not in held}
                if added:
                    conn.execute(RunTagsTable.insert(), [{"run_id": run_id, "key": key, "value": value}
                                                         for key, value in added.items()])
                given += 1
        return given

    def add_historical_run(self, dagster_run: dg.DagsterRun, run_creation_time: Any) -> dg.DagsterRun:
        run = _storable(dagster_run)
        super().add_historical_run(run, run_creation_time)
        return run

    def add_run_tags(self, run_id: str, new_tags: Mapping[str, str]) -> None:
        """Tags added to a stored run (the UI's *Add tags*, ``addTagsToRun``; a re-execution's) are checked as a new
        run's are: one holding a credential is refused, nothing stored. :data:`dagster_project.coordinator.REFUSED_TAG`
        is dropped, as a new run's is (only a refusal set it), and a tag the run holds already with the same value
        is not new: ``dagster instance reindex`` adds a run's whole tag set again (a run stored scrubbed and marked
        refused before review rev25l included)."""
        from dagster_project.coordinator import REFUSED_TAG, RunConfigRefused, credential_refusal

        tags = {key: value for key, value in (new_tags or {}).items() if key != REFUSED_TAG}
        stored = self._get_run_by_id(run_id) if tags else None
        held = dict(stored.tags or {}) if stored is not None else {}
        reason = credential_refusal(None, {key: value for key, value in tags.items() if held.get(key) != value})
        if reason is not None:
            raise RunConfigRefused(f"tags refused, nothing was stored: {reason}")
        super().add_run_tags(run_id, tags)

    def add_backfill(self, partition_backfill: Any) -> None:
        """A backfill is refused, nothing stored, where its run config or tags hold a credential
        (:func:`dagster_project.coordinator.credential_refusal`) or its title or description does (they are stored
        with it and shown on its page: review rev26a), as :func:`formats.text.tag_holds_credential` reads a tag."""
        from dagster_project.coordinator import RunConfigRefused, credential_refusal
        from formats.text import tag_holds_credential

        reason = credential_refusal(partition_backfill.run_config, partition_backfill.tags)
        for field in ("title", "description"):
            text = getattr(partition_backfill, field, None)
            if reason is None and isinstance(text, str) and tag_holds_credential(text):
                reason = (f"its {field} holds a credential (a URL's password or token, a password=..., a bearer or "
                          "known token; its text is not shown), and it is stored with the backfill and shown in the "
                          "UI: launch without it")
        if reason:
            raise RunConfigRefused(f"backfill refused, nothing was stored: {reason}")
        super().add_backfill(partition_backfill)


def _storable(run: dg.DagsterRun) -> dg.DagsterRun:
    """``run`` as it may be stored, without a :data:`dagster_project.coordinator.REFUSED_TAG` (only a refusal sets it:
    a run re-executed from a refused one copies its tags, and is checked afresh); ``RunConfigRefused`` where its
    config or tags hold a credential, and nothing is stored. Dagster hands the run it creates to whatever runs it
    next: the coordinator for a launch, the in-process executor for ``dagster asset materialize`` / ``execute_job``,
    which runs it with the config it was given, whatever was stored (review rev25l: a run stored scrubbed and
    tagged refused ran to success in process), so refusing here is the one place every way of running sees.
    A build's run is given its job's origin in the home's code location, and a run launched with an origin loses a
    copied build tag (:func:`_with_build_origin`)."""
    from dagster_project.coordinator import REFUSED_TAG, RunConfigRefused, credential_refusal

    tags = {key: value for key, value in (run.tags or {}).items() if key != REFUSED_TAG}
    reason = credential_refusal(run.run_config, tags)
    if reason is not None:
        raise RunConfigRefused(f"run refused at launch, nothing was stored: {reason}")
    run = run if len(tags) == len(run.tags or {}) else run._replace(tags=tags)
    return _with_build_origin(run)


def home_job_origin(job_name: str) -> Any:
    """The origin a run of ``job_name`` launched from the home's UI has (``RemoteJobOrigin``): the code location
    ``pickapic serve`` and ``pickapic ui`` load (``-m dagster_project.definitions``, so named by Dagster), its one
    repository (``__repository__``, that of a ``Definitions``). Dagster's re-execution reads only the location's
    and the repository's names from a parent's origin; the new run gets the origin of the job the workspace
    loaded."""
    from dagster._core.definitions.repository_definition.valid_definitions import SINGLETON_REPOSITORY_NAME
    from dagster._core.remote_origin import RemoteJobOrigin, RemoteRepositoryOrigin
    from dagster._core.workspace.load import location_origin_from_module_name

    from dagster_project.location import MODULE

    location = location_origin_from_module_name(MODULE, None, None)
    return RemoteJobOrigin(RemoteRepositoryOrigin(location, SINGLETON_REPOSITORY_NAME), job_name)


def _with_build_origin(run: dg.DagsterRun) -> dg.DagsterRun:
    """``run`` with the build's tag read for what it is. A run carrying it and no origin is a run of ``pickapic
    build`` (``execute_in_process``: nothing else on this instance sets the tag, and every launch through a
    workspace has an origin): it gets :func:`home_job_origin` and the code-location tag Dagster gives a run created
    with one, so the UI shows it in the home's location and can re-execute it. A run carrying it with an origin was
    launched through a workspace (the UI's re-execution of a build's run copies the parent's tags): the tag is
    dropped, and the run is judged as the launch it is: by its code server in the run monitoring, counted by the
    sensors and the nightly whether or not a build runs, and never failed by the next build as a dead build's run.
    """
    from dagster._core.storage.tags import CODE_LOCATION_TAG

    from dagster_project.automation import BUILD_TAG, BUILD_TAG_VALUE

    tags = dict(run.tags or {})
    if tags.get(BUILD_TAG) != BUILD_TAG_VALUE:
        return run
    if run.remote_job_origin is not None:
        del tags[BUILD_TAG]
        return run.with_tags(tags)
    origin = home_job_origin(run.job_name)
    return run.with_job_origin(origin).with_tags({**tags, CODE_LOCATION_TAG: origin.location_name})


def give_build_runs_an_origin(instance: dg.DagsterInstance) -> int:
    """Give the finished runs of ``pickapic build`` that a home stored without an origin (every one before the
    twenty-seventh session) the origin and tags :func:`_with_build_origin` gives a new one, so the UI can
    re-execute them too; returns how many. Only the home's own run storage (:class:`CheckedSqliteRunStorage`);
    a run still in progress is left for a later call (its build writes its status meanwhile), and each run's
    row is changed only while its status is the one read. Cheap when there is nothing to do: one query over the
    run tags."""
    storage = instance.run_storage
    return storage.give_build_runs_an_origin() if isinstance(storage, CheckedSqliteRunStorage) else 0


class KeptEngineSqliteEventLogStorage(SqliteEventLogStorage):
    """Dagster's SQLite event log storage (one database per run, one index), connecting through a kept engine
    (:class:`_Engines`) instead of a new one per connection; otherwise Dagster's ``_connect``, as it is."""

    @contextlib.contextmanager
    def _connect(self, shard: str) -> Iterator[Any]:
        with self._db_lock:
            engine = ENGINES.get(self.conn_string_for_shard(shard), SQLITE_BUSY_TIMEOUT_SECONDS)
            if shard not in self._initialized_dbs:
                self._initdb(engine)
                self._initialized_dbs.add(shard)
            with engine.connect() as conn, conn.begin():
                yield conn


class KeptEngineSqliteScheduleStorage(SqliteScheduleStorage):
    """Dagster's SQLite schedule storage (the sensors' and schedules' ticks and cursors: the daemon writes it at
    every evaluation), connecting through a kept engine (:class:`_Engines`) instead of a new one per connection, and
    waiting up to 30 s for a lock like the other storages (Dagster's: pysqlite's 5 s)."""

    def connect(self) -> contextlib.AbstractContextManager[Any]:
        return _kept_connection(self._conn_string)


class PickapicSqliteStorage(DagsterSqliteStorage):
    """Dagster's SQLite storage (runs, events, schedules in the home's ``dagster`` folder, Dagster's layout) with
    :class:`CheckedSqliteRunStorage` for its runs."""

    def __init__(self, base_dir: str, inst_data: ConfigurableClassData | None = None):
        self.base_dir = base_dir
        self._run_storage = CheckedSqliteRunStorage.from_local(_runs_directory(base_dir))
        self._run_storage.events_dir = _event_logs_directory(base_dir)
        self._event_log_storage = KeptEngineSqliteEventLogStorage(_event_logs_directory(base_dir))
        self._schedule_storage = KeptEngineSqliteScheduleStorage.from_local(_schedule_directory(base_dir))
        self._inst_data = inst_data
        super(DagsterSqliteStorage, self).__init__()

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData, config_value: Mapping[str, Any]
                          ) -> PickapicSqliteStorage:
        return cls.from_local(inst_data=inst_data, **config_value)


class PickapicInstance(dg.DagsterInstance):
    """Dagster's instance whose default storage is :class:`PickapicSqliteStorage`."""

    @classmethod
    def config_schema(cls) -> dict[str, Any]:
        return {}

    @staticmethod
    def config_defaults(base_dir: str) -> Mapping[str, ConfigurableClassData | None]:
        defaults = dict(InstanceRef.config_defaults(base_dir))
        defaults["storage"] = ConfigurableClassData("dagster_project.instance", "PickapicSqliteStorage",
                                                    yaml.dump({"base_dir": base_dir}, default_flow_style=False))
        defaults["compute_logs"] = ConfigurableClassData(
            "dagster_project.instance", "PrivateComputeLogManager",
            yaml.dump({"base_dir": compute_logs_directory(base_dir)}, default_flow_style=False))
        return defaults
