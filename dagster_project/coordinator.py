"""The run coordinator of a data home's Dagster instance: a run's config is checked when it is launched.

Dagster checks a launched run's config against its schema, which holds types only: ``keep_versions = 0``
or ``salt = ""`` typed in the launchpad passes that check, and used to fail only at the run's first step
(:func:`dagster_project.runconfig.check_run_config`). :class:`CheckedRunCoordinator` is Dagster's own
queued run coordinator with one step before a run is queued: the data home the run would write
(``resources.data_home.config.root``, else ``$PICKAPIC_HOME``) is checked as the CLI checks ``--home``,
and must be the home whose instance the run is launched on (a run on home A's instance that built home B recorded
B's materializations as A's: review rev29f; every step checks it again, for a run started some other way), and
every stage's values in the run config are built with their ranges and cross-field rules, as the steps will build
them. A run that fails is never queued: Dagster marks it failed with the reason as an
engine event, and the launchpad shows the same reason where the launch was clicked. Schedules and sensors
submit their runs through it too (their values come from the settings file, which is checked when read).

Dagster stores a run before its coordinator sees it: the home's instance (:mod:`dagster_project.instance`) refuses
one whose config or tags hold a credential (:func:`credential_refusal`) and stores nothing (a run stored before
review rev25l may still carry :data:`REFUSED_TAG`, which the coordinator refuses with that reason); a run refused
here that is stored elsewhere, or stored whole, is scrubbed (:func:`scrub_refused_run`), its tags holding no
credential kept as given.

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
                     DAGSTER_YAML[:DAGSTER_YAML.index("  # a canceled run whose step")], DAGSTER_YAML)
# Dagster's instance with a run storage that stores no credential of a run or a backfill (dagster_project/instance.py;
# review rev25j: a backfill's run config was stored unchecked, a refused run's password stayed while runs.db was read)
_INSTANCE_YAML = ("# Stores no credential of a run or a backfill launched from the UI (dagster_project/instance.py).\n"
                  "instance_class:\n  module: dagster_project.instance\n  class: PickapicInstance\n")
OLD_DAGSTER_YAMLS = (*OLD_DAGSTER_YAMLS, _INSTANCE_YAML + DAGSTER_YAML)   # the last: before max_concurrent_runs
# Runs the daemon starts at once (Dagster's queue default: 10): each daily run starts Beam with NudeNet, and after a
# catch-up the raw-day sensor requests a run per day (rev32e). Edit the home's dagster.yaml to change it (an edited
# file is left as it is).
MAX_CONCURRENT_RUNS = 2
DAGSTER_YAML = _INSTANCE_YAML + DAGSTER_YAML.replace(
    "  class: CheckedRunCoordinator\n",
    "  class: CheckedRunCoordinator\n"
    "  # at most this many runs at once (Dagster's default: 10); each daily run starts Beam with NudeNet\n"
    f"  config:\n    max_concurrent_runs: {MAX_CONCURRENT_RUNS}\n", 1)


class RunConfigRefused(ValueError):
    """A launched run's config would fail its first step; the message says which value and why."""


def check_launch(run_config: Mapping[str, Any] | None, instance: dg.DagsterInstance | None = None) -> None:
    """Raise :class:`RunConfigRefused` when the run's data home or any stage's values in ``run_config``
    would be refused by its steps (:meth:`dagster_project.resources.PickapicHome.home`,
    :func:`dagster_project.runconfig.check_run_config`). With ``instance`` (the one the run is launched on), a
    data home that is not the instance's own home is refused too
    (:func:`dagster_project.resources.check_instance_home`; review rev29f)."""
    from dagster_project.resources import PickapicHome
    from dagster_project.runconfig import check_run_config
    from formats.settings import SettingsError
    from formats.text import redact_credentials

    resource = (((run_config or {}).get("resources") or {}).get("data_home") or {}).get("config") or {}
    try:
        _check_app_db(run_config)
        _check_op_credentials(run_config)
        home = PickapicHome(root=_root(resource.get("root"))).home(instance)
        check_run_config(run_config, home)
    except (SettingsError, ValueError, OSError) as exc:
        # the reason may quote a value of the settings file (a stage's own check quotes what it refuses): shown in
        # the launchpad and stored as the refused run's event, so never with a credential (review rev25j)
        raise RunConfigRefused("run refused at launch, nothing was queued or written: "
                               f"{redact_credentials(str(exc))}") from None


# the tag a run stored with its credentials scrubbed carries (dagster_project.instance): the reason it is refused
REFUSED_TAG = "pickapic/refused"


def credential_refusal(run_config: Mapping[str, Any] | None, tags: Mapping[str, str] | None) -> str | None:
    """Why a run (or a backfill) with ``run_config`` and ``tags`` may not be stored as it is, or None: a credential
    :func:`check_launch` refuses in its config (``resources.app_db.config``, a stage's value), or a tag holding one
    (:func:`_check_tags`). The reason never quotes the credential."""
    try:
        _check_app_db(run_config)
        _check_op_credentials(run_config)
        _check_tags(tags)
    except ValueError as exc:
        return str(exc)
    return None


def _check_tags(tags: Mapping[str, str] | None) -> None:
    """``ValueError`` when a run's tag (its key or value) holds a credential :func:`formats.text.tag_holds_credential`
    finds (a DSN URL with a password pasted as a tag's value, a libpq ``password=``, a bare token, a key named for a
    credential such as ``aws_secret_access_key``): tags are stored with the run and shown in the UI (review
    rev25j: a refused run kept them). A plain link (a query such as ``?id=42`` or ``?assignee=``, a user name
    such as ``git@``) is no credential (reviews rev25l, rev26a). A key that holds one is not quoted (review
    rev26c)."""
    from formats.settings import quoted
    from formats.text import tag_holds_credential

    for key, value in sorted((tags or {}).items(), key=lambda item: str(item[0])):
        # a key holding a credential itself is not quoted: quoted() hides only what redact_credentials finds, not
        # a bare token or an assignment (review rev26c)
        key_holds = tag_holds_credential(str(key))
        if key_holds or tag_holds_credential(str(value), key=str(key)):
            tag = "a tag whose key" if key_holds else f"the tag {quoted(key)}"
            raise ValueError(f"{tag} holds a credential (a URL's password or token, a query parameter such as "
                             "token= or sig=, a chat webhook's URL, an assignment such as password=... or an option "
                             "such as --s3_secret_access_key, a bearer or known token, or a value under a name such "
                             "as aws_secret_access_key; its text is not shown), and tags are stored with the run and "
                             "shown in the UI: launch without it")


# what a refused run's tag holding a credential keeps where hiding the credential alone cannot be made sure of
REMOVED_TAG_TEXT = "*** (removed: held a credential)"


def _scrubbed_tag_text(text: str) -> str:
    """``text`` (a tag's key or value holding a credential) with what :func:`formats.text.redact_credentials` finds
    hidden, or :data:`REMOVED_TAG_TEXT` where :func:`formats.text.tag_holds_credential` still finds one after."""
    from formats.text import redact_credentials, tag_holds_credential

    hidden = redact_credentials(text)
    return REMOVED_TAG_TEXT if tag_holds_credential(hidden) else hidden


def scrubbed_tag_pairs(tags: Mapping[str, str] | None) -> list[tuple[str, str, str, str]]:
    """``(key, value, new key, new value)`` of each tag of ``tags``: a tag holding no credential
    (:func:`formats.text.tag_holds_credential`, as :func:`_check_tags` reads it) kept exactly as given, so a
    refused run's page shows the links it was launched with (review rev26a: the broad ``redact_credentials`` hid
    every query and user name); in one that holds one, the key and the value hidden as :func:`_scrubbed_tag_text`
    hides them, the whole value where the key is named for a credential (``PGPASSWORD``). A new key already
    taken is numbered."""
    from formats.text import credential_name, tag_holds_credential

    pairs, taken = [], set()
    for key, value in (tags or {}).items():
        key, value = str(key), str(value)
        key_holds = tag_holds_credential(key)
        if not key_holds and not tag_holds_credential(value, key=key):
            new_key, new_value = key, value
        else:
            new_key = _scrubbed_tag_text(key) if key_holds else key
            new_value = (REMOVED_TAG_TEXT if value.strip() and credential_name(new_key)
                         else _scrubbed_tag_text(value))
        if new_key != key:
            base, number = new_key, 1
            while new_key in taken or (new_key in (tags or {}) and new_key != key):
                number += 1
                new_key = f"{base} ({number})"
        taken.add(new_key)
        pairs.append((key, value, new_key, new_value))
    return pairs


def scrubbed_tags(tags: Mapping[str, str] | None) -> dict[str, str]:
    """``tags`` as a refused run keeps them (:func:`scrubbed_tag_pairs`): each holding no credential as given."""
    return {new_key: new_value for _, _, new_key, new_value in scrubbed_tag_pairs(tags)}


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


# how long the scrub waits for another connection's write lock on the run storage (Dagster's own SQLite storages:
# 30 s; its run storage's connections 5 s), and for readers to let the write-ahead log be checkpointed
SCRUB_BUSY_TIMEOUT_S = 30
CHECKPOINT_WAIT_S = 10


def scrub_refused_run(instance: dg.DagsterInstance, run: dg.DagsterRun) -> str | None:
    """Rewrite the stored run ``run`` (refused at launch) with :func:`scrubbed_run_config` and :func:`scrubbed_tags`:
    Dagster stores a launched run, its run config and tags with it, before the coordinator sees it, and the UI shows
    them on the run's page, so a refused run's credential would stay in ``HOME/dagster/history/runs.db`` (review
    rev25g; its tags: review rev25j). A home's own instance stores such a run scrubbed already
    (:mod:`dagster_project.instance`): then nothing is written.

    The run's row (and its changed ``run_tags`` rows) are updated in Dagster's SQL run storage, waiting up to
    :data:`SCRUB_BUSY_TIMEOUT_S` for another writer; in SQLite with ``secure_delete`` on (the old row's bytes are
    zeroed, not left in free pages) and the write-ahead log then checkpointed and truncated, retried for up to
    :data:`CHECKPOINT_WAIT_S` while a reader holds it. Where the row cannot be rewritten the run is deleted; where
    that fails too, or the checkpoint never completes, the problem is logged (the run's id, never the credential)
    and returned as one sentence, which the refusal adds to its reason (so the run's page shows it). A run storage
    that is not SQL (none this tool configures) gets the run deleted instead."""
    import logging
    import time

    import sqlalchemy as db
    from dagster._core.storage.runs.schema import RunsTable, RunTagsTable
    from dagster._core.storage.runs.sql_run_storage import SqlRunStorage
    from dagster._serdes import serialize_value

    log = logging.getLogger(__name__)
    stored = instance.get_run_by_id(run.run_id)
    if stored is None:
        return None
    config, tags = scrubbed_run_config(stored.run_config), scrubbed_tags(stored.tags)
    if config == dict(stored.run_config or {}) and tags == dict(stored.tags or {}):
        return None
    storage = instance.run_storage
    storage = getattr(getattr(storage, "_storage", None), "run_storage", storage)   # a LegacyRunStorage's own
    if not isinstance(storage, SqlRunStorage):
        instance.delete_run(run.run_id)
        return None
    body = serialize_value(stored._replace(run_config=config, tags=tags))
    changed = [(key, new_key, new_value) for key, value, new_key, new_value in scrubbed_tag_pairs(stored.tags)
               if (new_key, new_value) != (key, value)]
    sqlite = False
    try:
        with storage.connect() as conn:
            sqlite = conn.dialect.name == "sqlite"
            if sqlite:
                conn.execute(db.text(f"PRAGMA busy_timeout = {SCRUB_BUSY_TIMEOUT_S * 1000}"))
                conn.execute(db.text("PRAGMA secure_delete = ON"))
            conn.execute(RunsTable.update().where(RunsTable.c.run_id == run.run_id).values(run_body=body))
            for key, _, _ in changed:
                conn.execute(RunTagsTable.delete().where(RunTagsTable.c.run_id == run.run_id,
                                                         RunTagsTable.c.key == key))
            for _, new_key, new_value in changed:
                conn.execute(RunTagsTable.insert().values(run_id=run.run_id, key=new_key, value=new_value))
    except Exception as exc:  # noqa: BLE001 - a lock held past the wait, a storage error: the run goes instead
        log.error("run %s was refused at launch and its stored config could not be scrubbed (%s); deleting it",
                  run.run_id, type(exc).__name__)
        try:
            with storage.connect() as conn:
                if conn.dialect.name == "sqlite":
                    conn.execute(db.text(f"PRAGMA busy_timeout = {SCRUB_BUSY_TIMEOUT_S * 1000}"))
                    conn.execute(db.text("PRAGMA secure_delete = ON"))
                conn.execute(RunTagsTable.delete().where(RunTagsTable.c.run_id == run.run_id))
                conn.execute(RunsTable.delete().where(RunsTable.c.run_id == run.run_id))
        except Exception as again:  # noqa: BLE001
            log.error("run %s: neither scrubbed nor deleted (%s): its stored config may still hold the credential "
                      "refused at launch; delete the run (dagster run delete %s) once HOME/dagster/history/runs.db "
                      "is free", run.run_id, type(again).__name__, run.run_id)
            return (f"THE RUN'S STORED CONFIG COULD NOT BE SCRUBBED ({type(again).__name__}: the run storage stayed "
                    f"locked): it may still hold the credential; delete run {run.run_id} (dagster run delete "
                    f"{run.run_id})")
        sqlite = True
    if not sqlite:
        return None
    deadline = time.monotonic() + CHECKPOINT_WAIT_S
    while True:
        try:
            with storage.connect() as conn:
                # a TRUNCATE checkpoint waits for readers through the busy handler: for what is left of the wait
                left = max(1, int((deadline - time.monotonic()) * 1000))
                conn.execute(db.text(f"PRAGMA busy_timeout = {left}"))
                busy, *_ = conn.execute(db.text("PRAGMA wal_checkpoint(TRUNCATE)")).fetchone() or (0,)
        except Exception as exc:  # noqa: BLE001
            busy, error = 1, type(exc).__name__
        else:
            error = "a reader held it"
        if not busy:
            return None
        if time.monotonic() >= deadline:
            log.error("run %s was refused at launch and scrubbed, but the write-ahead log of runs.db could not be "
                      "checkpointed (%s): the old bytes stay in HOME/dagster/history/runs.db until every "
                      "connection to it is closed", run.run_id, error)
            return ("its stored config was scrubbed, but the old bytes stay in HOME/dagster/history/runs.db until "
                    "every process reading it (the UI, the daemon) has let it go")
        time.sleep(0.2)


class CheckedRunCoordinator(dg.QueuedRunCoordinator):
    """Dagster's queued run coordinator, refusing at submission a run whose config a step would refuse; a refused
    run is kept (failed, with the reason) but its stored config is scrubbed of credentials
    (:func:`scrub_refused_run`)."""

    def submit_run(self, context: dg.SubmitRunContext) -> dg.DagsterRun:
        run = context.dagster_run
        if run.status == dg.DagsterRunStatus.NOT_STARTED:
            try:
                if REFUSED_TAG in (run.tags or {}):     # stored scrubbed (dagster_project.instance): the reason
                    raise RunConfigRefused(f"run refused at launch, nothing was queued or written: "
                                           f"{run.tags[REFUSED_TAG]}")
                try:
                    _check_tags(run.tags)
                except ValueError as exc:
                    raise RunConfigRefused(f"run refused at launch, nothing was queued or written: {exc}") from None
                check_launch(run.run_config, self._instance)
            except Exception as refused:
                try:
                    problem = scrub_refused_run(self._instance, run)
                except Exception as exc:   # noqa: BLE001 - the refusal is what the launchpad must show
                    import logging

                    logging.getLogger(__name__).error("run %s was refused at launch; scrubbing its stored config "
                                                      "failed (%s)", run.run_id, type(exc).__name__)
                    problem = (f"THE RUN'S STORED CONFIG COULD NOT BE SCRUBBED ({type(exc).__name__}): it may still "
                               f"hold the credential; delete run {run.run_id} (dagster run delete {run.run_id})")
                if problem:
                    raise RunConfigRefused(f"{refused}; {problem}") from None
                raise
        return super().submit_run(context)
