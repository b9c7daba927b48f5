"""Dagster run config of a stage, generated from the stage's settings (``formats.settings``).

Every field of a stage's config dataclass becomes an optional run-config field whose default is ``None``,
meaning "the data home's ``pickapic.toml`` value at run time" (then the dataclass default): so scheduled,
sensor and automation runs always use the settings file as it is when they run, and a value typed in the
launchpad (or passed by ``pickapic build --set``) overrides it for that run only. Each field's description
shows the help text, the allowed values and the home's value when the definitions were loaded. Secrets
are never run config (it is stored with every run and shown in the UI): they come from the file only.
"""
from __future__ import annotations

import typing
from typing import Any, Collection, Mapping

import dagster as dg
import pydantic

from dagster_project.versions import STAGES
from formats.home import DataHome, resolve_home
from formats.settings import Settings, SettingsError, knobs, load, quoted

_TYPES = {int: int, float: float, bool: bool, str: str, tuple: list[str]}


def _home_settings() -> tuple[Settings, str]:
    """The settings of the home these definitions load for ($PICKAPIC_HOME), or defaults if unreadable."""
    root = resolve_home(None)
    try:
        return load(root), f"{root}/pickapic.toml"
    except (SettingsError, OSError) as exc:  # the UI still loads; every run will report the bad file
        return Settings(), f"unreadable settings ({exc})"
    except Exception as exc:   # noqa: BLE001 - whatever else reading them raises: the UI still loads (review rev23c)
        return Settings(), f"unreadable settings ({type(exc).__name__}: {quoted(str(exc))})"


def config_class(section: str, name: str) -> type[dg.Config]:
    """A ``dg.Config`` with one optional field per non-secret setting of ``section``."""
    settings, where = _home_settings()
    current = settings.section(section)
    fields: dict[str, Any] = {}
    for field_name, spec in knobs(section).items():
        if spec.secret:
            continue
        # the home's value, as the UI may show it: bounded, a URL's credentials or a credential option's value hidden;
        # a private setting's (features.beam_args) option names only
        now = f"; {where}: {_shown(current[field_name], spec.private)}" if field_name in current else ""
        description = (f"{spec.help + ' ' if spec.help else ''}(allowed: {spec.allowed()}; default "
                       f"{list(spec.default) if isinstance(spec.default, tuple) else spec.default!r}{now}). "
                       f"Empty: the home's pickapic.toml value when the run starts.")
        fields[field_name] = (typing.Optional[_TYPES[spec.kind]], pydantic.Field(default=None, description=description))
    return pydantic.create_model(name, __base__=dg.Config, __doc__=f"Run config of the {section} stage.", **fields)


def _shown(value: Any, private: bool = False) -> str:
    """A setting's value as a run-config field's description shows it (:func:`formats.text.redact_credentials`, a
    private setting's by :func:`formats.text.option_names`; :func:`formats.settings.quoted`)."""
    from formats.text import option_names, redact_credentials

    if isinstance(value, str):
        value = option_names(value) if private else redact_credentials(value)
    return quoted(value)


def stage_config(section: str, config: dg.Config, home: DataHome,
                 context: dg.AssetExecutionContext | None = None) -> Any:
    """The stage's dataclass for this run: the home's settings file now, then the values set in run config.

    With ``context``, every stage's values in the run's run config are checked first
    (:func:`check_run_config`), so a bad value for a later step fails the run's first step, before
    anything is written.
    """
    if context is not None:
        # (context.run_config is deprecated); the run's own process: the feature runner is checked too
        check_run_config(context.run.run_config, home, ops=_run_ops(context))
    overrides = {name: getattr(config, name) for name in knobs(section) if getattr(config, name, None) is not None}
    return load(home.root).config(section, overrides, "run config")


def _run_ops(context: dg.AssetExecutionContext) -> frozenset[str]:
    """The ops this run executes (its job, or the subset of it the run selected)."""
    try:
        return frozenset(node.name for node in context.job_def.graph.nodes)
    except Exception:   # noqa: BLE001 - unknown: every op is taken to run (the runner is checked)
        return frozenset(stage.op for stage in STAGES)


def stage_config_of_run(section: str, run_config: Mapping[str, Any] | None, home: DataHome) -> Any:
    """Another stage's dataclass as this run's run config sets it (``ops.<that stage's op>.config`` over the home's
    settings file): what a step needs of a stage it does not run (the publish step removing the training JPEGs
    reads the feature stage's blob base)."""
    op = next(stage.op for stage in STAGES if stage.section == section)
    entry = ((run_config or {}).get("ops") or {}).get(op)
    given = (entry.get("config") or {}) if isinstance(entry, Mapping) else {}
    return load(home.root).config(section, _overrides(section, given), f"run config of {op}")


def _overrides(section: str, given: Mapping[str, Any]) -> dict[str, Any]:
    """The values an op's run config sets for ``section``'s knobs (None: not set)."""
    return {name: value for name, value in given.items() if name in knobs(section) and value is not None}


def check_run_config(run_config: Mapping[str, Any] | None, home: DataHome,
                     ops: Collection[str] | None = None) -> None:
    """Build every stage's settings from the run's run config (``ops.<op>.config``) as its step will, with
    the ranges and cross-field checks of the stage's dataclass (and the feature stage's staging and blob
    base checks against the home): raise ``SettingsError`` naming the op and the value if one is refused.

    Dagster validates run config at launch only against types; each step ran its own stage's checks when
    it started, after the earlier steps of the run had rewritten their tables (keep_versions=0 for the
    last step, publish, failed after curation and splits had rewritten theirs). The home's settings file is
    read (and its values checked) whether or not the run overrides any: a run without overrides whose file
    every step would refuse is refused too, and so is a file whose feature blob base or staging folder the
    feature step would refuse for this home (checked whether or not the run overrides them).

    The feature settings' own check covers ``features.runner`` with the run's Beam options (``features.beam_args``,
    or the run's own ``beam_args``, which replace them): a runner Beam names that cannot run with them (FlinkRunner
    without its job server jar, PortableRunner without ``--job_endpoint``, ...) is refused here, at launch too
    (Beam is imported to parse the options, when there are any; review rev23h).

    With ``ops`` (the run's own ops: only when called by a step, in the run's own process), a run that
    executes the feature op also gets the feature step's runner checks (``pipelines.features.runner.
    check_runner``): a dotted ``features.runner`` is imported and checked with the same options, before the
    ingest step writes (review rev23f). Never at launch (``coordinator.check_launch`` passes no ``ops``): no
    code a setting names runs in the webserver or the daemon.
    """
    sections = {stage.op: stage.section for stage in STAGES}
    given_ops = (run_config or {}).get("ops") or {}
    ops_config = {op: entry.get("config") or {} for op, entry in given_ops.items() if isinstance(entry, Mapping)}
    settings = load(home.root)
    features_checked = False
    for op, given in sorted(ops_config.items()):
        section = sections.get(op)
        if section is None:
            continue
        overrides = _overrides(section, given)
        if not overrides:
            continue
        built = settings.config(section, overrides, f"run config of {op}")
        if section == "features":
            try:
                built.validate(home.root)
            except ValueError as exc:
                raise SettingsError(f"run config of {op} is refused: {exc}") from None
            features_checked = True
    if not features_checked:
        # the file's own blob base and staging folder, checked against this home as the feature step will: a
        # linked or foreign staging folder written into the file by hand is refused here, not after ingest ran
        try:
            settings.config("features", {}, "settings file").validate(home.root)
        except ValueError as exc:
            raise SettingsError(f"the settings file's [features] is refused for {home.root}: {exc}") from None
    features_op = next(stage.op for stage in STAGES if stage.section == "features")
    if ops is not None and features_op in ops:
        _check_feature_runner(settings, ops_config.get(features_op) or {}, features_op)


def _check_feature_runner(settings: Settings, given: Mapping[str, Any], op: str) -> None:
    """The feature step's runner checks, as the step will run them (its settings with the run's overrides, its
    ``beam_args`` among them: the run's own, or the home's ``features.beam_args``); ``SettingsError`` naming the
    op and the cause."""
    overrides = {name: value for name, value in given.items() if name in knobs("features") and value is not None}
    config = settings.config("features", overrides, f"run config of {op}")
    from pipelines.features.runner import check_runner  # imports Beam: in the run's own process only

    try:
        check_runner(config, None)
    except ValueError as exc:
        raise SettingsError(f"the feature step of this run would refuse its runner: {exc}") from None


def run_config_for(section: str, values: dict[str, Any]) -> dict[str, Any]:
    """Run-config values (JSON-able) for settings of ``section`` (tuples become lists; secrets refused).

    None (``--set features.blob_base=``: none for this run) becomes ``""``, which the run reads as none: in
    run config None means "not given", so the run would use the file's value (review rev22e)."""
    out = {}
    for name, value in values.items():
        spec = knobs(section)[name]
        if spec.secret:
            raise SettingsError(f"{spec.key} is a secret and is never passed as run config")
        if isinstance(value, str) and _holds_credential(value):
            # run config is stored with the run and shown in the UI (features.beam_args: review rev23h)
            raise SettingsError(f"{spec.key} holds a credential (a URL's password, user token or query, or an option "
                                "such as --s3_secret_access_key), which run config would store with the run and show "
                                "in the UI: "
                                "set it in HOME/pickapic.toml instead (by hand: a command line is kept in the shell's "
                                "history)")
        if value is None:
            if spec.kind is not str:
                raise SettingsError(f"{spec.key}: none cannot be passed as run config; set it in the file")
            value = ""
        out[name] = list(value) if isinstance(value, tuple) else value
    return out


def _holds_credential(value: str) -> bool:
    """Whether a setting's text holds what :func:`formats.text.redact_credentials` hides."""
    from formats.text import redact_credentials

    return redact_credentials(value) != value
