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


class CheckedRunCoordinator(dg.QueuedRunCoordinator):
    """Dagster's queued run coordinator, refusing at submission a run whose config a step would refuse."""

    def submit_run(self, context: dg.SubmitRunContext) -> dg.DagsterRun:
        run = context.dagster_run
        if run.status == dg.DagsterRunStatus.NOT_STARTED:
            check_launch(run.run_config)
        return super().submit_run(context)
