"""The run coordinator of a data home's Dagster instance: a run's config is checked when it is launched.

Dagster checks a launched run's config against its schema, which holds types only: ``keep_versions = 0``
or ``salt = ""`` typed in the launchpad passes that check, and used to fail only at the run's first step
(:func:`dagster_project.runconfig.check_run_config`). :class:`CheckedRunCoordinator` is Dagster's own
queued run coordinator with one step before a run is queued: the data home the run would write
(``resources.data_home.config.root``, else ``$PICKAPIC_HOME``) is checked as the CLI checks ``--home``,
and every stage's values in the run config are built with their ranges and cross-field rules, as the
steps will build them. A run that fails is never queued: Dagster marks it failed with the reason as an
engine event, and the launchpad shows the same reason where the launch was clicked. Schedules and sensors
submit their runs through it too (their values come from the settings file, which is checked when read).

``use_home`` writes it into ``HOME/dagster/dagster.yaml`` (:data:`DAGSTER_YAML`, with the run launcher of
:mod:`dagster_project.launcher` and Dagster's run monitoring turned on); a ``dagster.yaml`` of
the home's own making, written before it existed, is brought up to date; one a user edited is left as it
is, and then the first step still checks the run.
"""
from __future__ import annotations

import contextlib
import os
from typing import Any, Mapping

import dagster as dg

_COORDINATOR_YAML = ("telemetry:\n  enabled: false\n"
                     "# Refuses a run whose config a step would refuse, before it is queued (dagster_project/coordinator.py).\n"
                     "run_coordinator:\n  module: dagster_project.coordinator\n  class: CheckedRunCoordinator\n")
DAGSTER_YAML = (_COORDINATOR_YAML
                + "# Dagster's default launcher, which also tells a run whose worker died with the machine\n"
                  "# (dagster_project/launcher.py); the daemon's run monitoring then marks such a run failed.\n"
                  "run_launcher:\n  module: dagster_project.launcher\n  class: MonitoredRunLauncher\n"
                  "run_monitoring:\n  enabled: true\n  poll_interval_seconds: 60\n  start_timeout_seconds: 600\n"
                  "  max_resume_run_attempts: 0\n"
                  "  # a canceled run whose step still runs stays CANCELING for up to a day (Dagster's default: 180 s;\n"
                  "  # 0 is not accepted); one whose worker is gone is marked canceled by automation.unfinished_runs\n"
                  "  cancel_timeout_seconds: 86400\n")
# what earlier versions wrote: replaced by DAGSTER_YAML
OLD_DAGSTER_YAMLS = ("telemetry:\n  enabled: false\n", _COORDINATOR_YAML,
                     DAGSTER_YAML[:DAGSTER_YAML.index("  # a canceled run whose step")])


class RunConfigRefused(ValueError):
    """A launched run's config would fail its first step; the message says which value and why."""


def check_launch(run_config: Mapping[str, Any] | None) -> None:
    """Raise :class:`RunConfigRefused` when the run's data home or any stage's values in ``run_config``
    would be refused by its steps (:meth:`dagster_project.resources.PickapicHome.home`,
    :func:`dagster_project.runconfig.check_run_config`)."""
    from dagster_project.resources import PickapicHome
    from dagster_project.runconfig import check_run_config
    from formats.settings import SettingsError

    resource = (((run_config or {}).get("resources") or {}).get("data_home") or {}).get("config") or {}
    try:
        _check_app_db(run_config)
        _check_op_credentials(run_config)
        home = PickapicHome(root=_root(resource.get("root"))).home()
        check_run_config(run_config, home)
    except (SettingsError, ValueError, OSError) as exc:
        raise RunConfigRefused(f"run refused at launch, nothing was queued or written: {exc}") from None


def _check_app_db(run_config: Mapping[str, Any] | None) -> None:
    """``ValueError`` when the run's ``resources.app_db.config`` gives a credential as a literal: run config is
    stored with the run (``HOME/dagster/history/runs.db``) and shown on its page in the UI, so a DSN with a
    password (``password=``, a URL's ``user:password@``, or one nested in its ``dbname``) or a DSN that does
    not parse (it cannot be told free of one) is refused, as ``features.beam_args`` holding a credential is
    (review rev25a). The message never quotes the DSN. ``{env: VAR}`` (the default, ``PICKAPIC_APP_DB_DSN``)
    stores only the variable's name."""
    resources = (run_config or {}).get("resources") or {}
    config = ((resources.get("app_db") if isinstance(resources, Mapping) else None) or {})
    config = (config.get("config") if isinstance(config, Mapping) else None) or {}
    if not isinstance(config, Mapping):
        return
    dsn = config.get("dsn")
    if isinstance(dsn, str) and dsn.strip():
        import psycopg
        from psycopg.conninfo import conninfo_to_dict

        from pipelines.appdb.connection import _dsn_secrets, _misplaced_url_secret

        try:
            conninfo_to_dict(dsn)
            unsafe = "holds a password" if _dsn_secrets(dsn) or _misplaced_url_secret(dsn) else None
        except psycopg.Error:
            unsafe = "does not parse as a libpq DSN or postgresql:// URL, so it cannot be told free of a password"
        if unsafe:
            raise ValueError(f"resources.app_db.config.dsn {unsafe} (its text is not shown), and run config is "
                             "stored with the run and shown in the UI: give the DSN as {env: PICKAPIC_APP_DB_DSN} "
                             "(the default) without a password, and the password in PGPASSWORD or a password "
                             "file (~/.pgpass, or passfile= in the DSN)")
    store = config.get("image_store")
    if isinstance(store, str):
        from formats.text import redact_credentials

        if redact_credentials(store) != store:
            raise ValueError("resources.app_db.config.image_store holds a credential (a URL's password, user token "
                             "or query; its text is not shown), and run config is stored with the run and shown "
                             "in the UI: give the location without it, or as $PICKAPIC_APP_IMAGE_STORE "
                             "(image_store empty), and the credential in the storage client's own environment")


def _check_op_credentials(run_config: Mapping[str, Any] | None) -> None:
    """``ValueError`` when a stage's value in the run's ``ops.<op>.config`` holds a credential
    :func:`formats.settings.holds_credential` finds (``features.blob_base = "s3://KEY:SECRET@bucket"``, a
    ``beam_args`` option named for a credential): run config is stored with the run and shown in the UI, so
    such a value is set in ``HOME/pickapic.toml`` only, as ``pickapic build --set`` already requires
    (``runconfig.run_config_for``; review rev25g: the launchpad's was accepted). The message never quotes it."""
    from formats.settings import holds_credential

    ops = (run_config or {}).get("ops") or {}
    if not isinstance(ops, Mapping):
        return
    for op, entry in sorted(ops.items(), key=lambda item: str(item[0])):
        config = (entry.get("config") if isinstance(entry, Mapping) else None) or {}
        if not isinstance(config, Mapping):
            continue
        for name, value in sorted(config.items(), key=lambda item: str(item[0])):
            if holds_credential(value):
                raise ValueError(f"ops.{op}.config.{name} holds a credential (a URL's password, user token or "
                                 "query, or an option such as --s3_secret_access_key; its text is not shown), and "
                                 "run config is stored with the run and shown in the UI: set it in "
                                 "HOME/pickapic.toml instead (the run reads the file's value when it is left empty)")


def _root(value: Any) -> str:
    """The data home root a run's ``resources.data_home.config.root`` gives, as Dagster will resolve it when the
    run starts: a string, or ``{"env": VAR}`` (a ``StringSource``: the variable's value, in this process's
    environment, which the webserver and the daemon share with the runs they launch). Empty: ``$PICKAPIC_HOME``."""
    if isinstance(value, Mapping) and set(value) == {"env"}:
        name = value["env"]
        if not isinstance(name, str) or name not in os.environ:
            raise ValueError(f"resources.data_home.config.root names the environment variable {name!r}, which is not "
                             "set: the run could not start")
        return os.environ[name]
    if value is None or isinstance(value, str):
        return value or ""
    raise ValueError(f"resources.data_home.config.root must be a path or {{env: VAR}}, not {type(value).__name__}")


_REMOVED = "*** (removed: it held a password or did not parse; the run was refused at launch)"


def scrubbed_run_config(run_config: Mapping[str, Any] | None) -> dict[str, Any]:
    """``run_config`` as a refused run keeps it (review rev25g): ``resources.app_db.config.dsn`` replaced whole
    where :func:`check_launch` refuses it (a password, or text that does not parse as a DSN), a ``private``
    setting's value (``features.beam_args``) by its option names (:func:`formats.text.option_names`), and every
    other text (in a list too) with what :func:`formats.text.redact_credentials` finds hidden (a URL's password,
    user token or query, a credential option's value). Everything else is kept, so the run's page still shows
    what was launched."""
    from formats.settings import SECTIONS, knobs
    from formats.text import option_names, redact_credentials

    private = {name for section in SECTIONS for name, spec in knobs(section).items() if spec.private}

    def scrub(value: Any, path: tuple[str, ...]) -> Any:
        if isinstance(value, Mapping):
            return {key: scrub(item, (*path, str(key))) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [scrub(item, path) for item in value]
        if not isinstance(value, str):
            return value
        if path == ("resources", "app_db", "config", "dsn"):
            try:
                _check_app_db({"resources": {"app_db": {"config": {"dsn": value}}}})
            except ValueError:
                return _REMOVED
        if len(path) == 4 and path[0] == "ops" and path[2] == "config" and path[3] in private and value:
            return option_names(value)
        return redact_credentials(value)

    return scrub(dict(run_config or {}), ())


def scrub_refused_run(instance: dg.DagsterInstance, run: dg.DagsterRun) -> None:
    """Rewrite the stored run ``run`` (refused at launch) with :func:`scrubbed_run_config`: Dagster stores a
    launched run, its run config with it, before the coordinator sees it, and the UI shows that config on the
    run's page, so a refused run's credential would stay in ``HOME/dagster/history/runs.db`` (review rev25g).

    The run's row is updated in Dagster's SQL run storage; in SQLite with ``secure_delete`` on (the old row's
    bytes are zeroed, not left in free pages) and the write-ahead log then checkpointed and truncated. A run
    storage that is not SQL (none this tool configures) gets the run deleted instead."""
    scrubbed = scrubbed_run_config(run.run_config)
    if scrubbed == dict(run.run_config or {}):
        return
    import sqlalchemy as db
    from dagster._core.storage.runs.schema import RunsTable
    from dagster._core.storage.runs.sql_run_storage import SqlRunStorage
    from dagster._serdes import serialize_value

    storage = instance.run_storage
    storage = getattr(getattr(storage, "_storage", None), "run_storage", storage)   # a LegacyRunStorage's own
    if not isinstance(storage, SqlRunStorage):
        instance.delete_run(run.run_id)
        return
    stored = instance.get_run_by_id(run.run_id) or run
    body = serialize_value(stored._replace(run_config=scrubbed))
    with storage.connect() as conn:
        sqlite = conn.dialect.name == "sqlite"
        if sqlite:
            conn.execute(db.text("PRAGMA secure_delete = ON"))
        conn.execute(RunsTable.update().where(RunsTable.c.run_id == run.run_id).values(run_body=body))
    if sqlite:
        with storage.connect() as conn:
            conn.execute(db.text("PRAGMA wal_checkpoint(TRUNCATE)"))


class CheckedRunCoordinator(dg.QueuedRunCoordinator):
    """Dagster's queued run coordinator, refusing at submission a run whose config a step would refuse; a refused
    run is kept (failed, with the reason) but its stored config is scrubbed of credentials
    (:func:`scrub_refused_run`)."""

    def submit_run(self, context: dg.SubmitRunContext) -> dg.DagsterRun:
        run = context.dagster_run
        if run.status == dg.DagsterRunStatus.NOT_STARTED:
            try:
                check_launch(run.run_config)
            except Exception:
                try:
                    scrub_refused_run(self._instance, run)
                except Exception:   # noqa: BLE001 - the refusal is what the launchpad must show; then the run goes
                    with contextlib.suppress(Exception):
                        self._instance.delete_run(run.run_id)
                raise
        return super().submit_run(context)
