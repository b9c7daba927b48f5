"""Which runner a ``--runner`` value names, and whether the feature stage runs it: what
:mod:`pipelines.features.runner` and the settings check (``FeaturesConfig.validate``) share.

Checks in two places, because reading the settings must never run code the settings name:

- :func:`runner_refusal`, with the settings (``pickapic settings``, ``build --dry-run``, the Dagster definitions,
  sensors, a run's launch, every run's first step): it imports nothing, neither Beam (about a second and 100 MB)
  nor the user's module. A bare name must be one of :data:`RUNNERS`, Beam's runners this project runs (a static
  list, checked against Beam's own ``create_runner`` by ``tests/unit/test_fix23c.py``); a dotted path is checked
  for its form only (dotted Python names, at most :data:`MAX_RUNNER_PATH` characters).
- when the feature stage starts (``runner.pipeline_options`` / ``runner.check_runner``, before the staging folder
  is made) and in the first step of a run that executes the feature step (in the run's own process:
  ``dagster_project.runconfig.check_run_config``): :func:`start_refusal` imports a dotted path, as Beam's
  ``create_runner`` would, and whatever its import raises (a missing dependency, a syntax error, ``sys.exit``,
  an error of its own) is a one-line reason, as is a class that runs nothing or derives from a refused
  runner; :func:`options_refusal` refuses a runner that starts its job elsewhere (Portable, Flink, Spark,
  Dataflow) without the Beam options that make it run with no download at run time and no option missing.

Until review rev23c the settings check imported a dotted path whenever the settings were read: its module's
code ran in ``pickapic settings`` and in the Dagster processes, and an import that raised anything but an
ImportError ended them in a traceback (or, ``sys.exit``, silently); bare names Beam cannot make here
(``interactive``) or that download a binary at run time (``prism``) were accepted. Until review rev23f
FlinkRunner and SparkRunner ran without their job server jar (Beam downloads it), PortableRunner and
DataflowRunner without the options they need (Beam failed after the staging folder was written), a user's
subclass of Beam's DirectRunner started Prism, and a dotted path was first imported by the feature step,
after the run's ingest step had written.
"""
from __future__ import annotations

import functools
import importlib
import os
import re

from formats.settings import quoted

# Beam 2.77's runners as its create_runner finds a bare name (StandardOptions.ALL_KNOWN_RUNNERS and the alias
# create_runner adds, PythonRPCDirectRunner), by class name: a static copy, so that no settings read imports Beam
# (a unit test checks it against Beam's own table).
BEAM_RUNNERS = {
    "BundleBasedDirectRunner": "apache_beam.runners.direct.direct_runner.BundleBasedDirectRunner",
    "DataflowRunner": "apache_beam.runners.dataflow.dataflow_runner.DataflowRunner",
    "DirectRunner": "apache_beam.runners.direct.direct_runner.DirectRunner",
    "FlinkRunner": "apache_beam.runners.portability.flink_runner.FlinkRunner",
    "FnApiRunner": "apache_beam.runners.portability.fn_api_runner.FnApiRunner",
    "InteractiveRunner": "apache_beam.runners.interactive.interactive_runner.InteractiveRunner",
    "KafkaStreamsRunner": "apache_beam.runners.portability.kafka_streams_runner.KafkaStreamsRunner",
    "PortableRunner": "apache_beam.runners.portability.portable_runner.PortableRunner",
    "PrismRunner": "apache_beam.runners.portability.prism_runner.PrismRunner",
    "PythonRPCDirectRunner": "apache_beam.runners.experimental.python_rpc_direct.python_rpc_direct_runner"
                             ".PythonRPCDirectRunner",
    "SparkRunner": "apache_beam.runners.portability.spark_runner.SparkRunner",
    "SwitchingDirectRunner": "apache_beam.runners.direct.direct_runner.SwitchingDirectRunner",
    "TestDataflowRunner": "apache_beam.runners.test.TestDataflowRunner",
    "TestDirectRunner": "apache_beam.runners.test.TestDirectRunner",
}

# Beam's runners pipelines.features.runner runs on its own batch FnApiRunner (pipeline_runner), and those that run
# every DoFn in the calling process, by class name: a --runner value is resolved to its class as Beam resolves it.
LOCAL_RUNNERS = ("DirectRunner", "SwitchingDirectRunner", "TestDirectRunner", "FnApiRunner")
IN_PROCESS_RUNNERS = ("BundleBasedDirectRunner",)
# The runners a bare name may name: those above (on this machine, no network) and those README section 3 runs
# the stage on ("Beyond one machine": a job service, Dataflow, Flink, Spark); each one Beam makes here.
RUNNERS = LOCAL_RUNNERS + IN_PROCESS_RUNNERS + ("PortableRunner", "DataflowRunner", "FlinkRunner", "SparkRunner")
# Beam's other runners, and why the stage runs none of them.
REFUSED_RUNNERS = {
    "PrismRunner": "downloads Beam's Prism binary from GitHub when the stage starts, and this project makes no "
                   "download at run time: give DirectRunner (the stage runs it on Beam's FnApiRunner, without Prism)",
    "InteractiveRunner": "is Beam's notebook runner, which Beam cannot make in this environment (its module fails "
                         "to import) and which runs no batch stage",
    "KafkaStreamsRunner": "needs a Kafka Streams job server that no Beam release publishes; this project does not "
                          "run it",
    "PythonRPCDirectRunner": "is an experimental name Beam 2.77 has no module for",
    "TestDataflowRunner": "is Beam's test runner for Dataflow: give DataflowRunner",
}
# Those of them a dotted path may import (InteractiveRunner's module fails to, PythonRPCDirectRunner has none).
_REFUSED_CLASSES = ("PrismRunner", "KafkaStreamsRunner", "TestDataflowRunner")
MAX_RUNNER_PATH = 255   # characters of a dotted runner path
_BY_LOWER = {name.lower(): name for name in BEAM_RUNNERS}


def _beam_name(name: str) -> str | None:
    """The class name of Beam's runner a bare ``--runner`` value names, as ``create_runner`` reads it:
    case-insensitively, ``Runner`` optional (``direct``, ``directrunner`` and ``DirectRunner`` are all
    ``DirectRunner``); None for a name that is none of Beam's."""
    return _BY_LOWER.get(name.lower()) or _BY_LOWER.get(name.lower() + "runner")


def is_dotted_path(name: str) -> bool:
    """Whether ``name`` has the form of a dotted path Beam's ``create_runner`` imports: at least two dotted Python
    names (``module.Class``, ``package.module.Class``), at most :data:`MAX_RUNNER_PATH` characters."""
    parts = name.split(".")
    return len(name) <= MAX_RUNNER_PATH and len(parts) >= 2 and all(part.isidentifier() for part in parts)


def runner_refusal(name: str) -> str | None:
    """Why the feature stage runs no runner of a ``--runner`` value (None: it may), without importing anything:
    a bare name must be one of :data:`RUNNERS` (:data:`REFUSED_RUNNERS` says why another of Beam's is refused),
    a dotted path must have the form of one (:func:`is_dotted_path`); what a dotted path imports is checked
    when the stage starts (:func:`start_refusal`). Checked with the settings and the Beam options."""
    if "." not in name:
        known = _beam_name(name)
        if known in RUNNERS:
            return None
        if known in REFUSED_RUNNERS:
            return f"is Beam's {known}, which {REFUSED_RUNNERS[known]}"
    elif is_dotted_path(name):
        return None
    return (f"is not a Beam runner: give one of {', '.join(RUNNERS)} (case and the 'Runner' ending optional) or "
            "the dotted path of a runner class (a PipelineRunner), imported when the feature stage starts")


def start_refusal(name: str) -> str | None:
    """:func:`runner_refusal`, then, for a dotted path, what importing it says, as the feature stage starts (and
    the run's first step, ``dagster_project.runconfig.check_run_config``): a module that fails to import
    (whatever it raises but KeyboardInterrupt: a missing dependency, a syntax error, ``sys.exit``, an error of
    its own), a name it does not hold, an object that is no runner class (one with ``run_pipeline``: Beam only
    calls the class, so a duck-typed runner of the user's is one too), an abstract one (Beam's
    ``PipelineRunner`` itself, or a subclass that implements neither ``run_pipeline`` nor
    ``run_portable_pipeline``: it runs nothing), or Beam's own class of a runner :data:`REFUSED_RUNNERS`
    refuses, or a subclass of one. What the runner needs in the Beam options is :func:`options_refusal`'s."""
    refusal = runner_refusal(name)
    if refusal or "." not in name:
        return refusal
    target, error = _imported(name)
    if error is not None:
        return f"cannot be imported ({error})"
    if not (isinstance(target, type) and callable(getattr(target, "run_pipeline", None))):
        return ("is not a runner class (a PipelineRunner, with run_pipeline): give one of "
                f"{', '.join(RUNNERS)} or the dotted path of a runner class")
    if _abstract(target):
        return ("is an abstract runner class (Beam's PipelineRunner implements neither run_pipeline nor "
                f"run_portable_pipeline: it runs nothing): give one of {', '.join(RUNNERS)} or the dotted path "
                "of a runner class that runs pipelines")
    known = runner_base(name)
    if known in REFUSED_RUNNERS:
        what = f"Beam's {known}" if runner_class(name) == known else f"a subclass of Beam's {known}"
        return f"is {what}, which {REFUSED_RUNNERS[known]}"
    return None


def _abstract(target: type) -> bool:
    """Whether a runner class runs nothing: abstract (``abc``), or a ``PipelineRunner`` (Beam's own included) that
    overrides neither ``run_pipeline`` nor ``run_portable_pipeline`` (Beam's base raises NotImplementedError)."""
    import inspect

    from apache_beam.runners.runner import PipelineRunner

    if inspect.isabstract(target):
        return True
    return (issubclass(target, PipelineRunner) and target.run_pipeline is PipelineRunner.run_pipeline
            and target.run_portable_pipeline is PipelineRunner.run_portable_pipeline)


@functools.lru_cache(maxsize=64)
def runner_base(name: str) -> str | None:
    """The class name of Beam's runner a ``--runner`` value is or derives from: a bare name as :func:`_beam_name`
    reads it (no import), a dotted path by the first of Beam's runner classes in its class's MRO (a user's
    subclass of Beam's FlinkRunner is a FlinkRunner: it needs what Beam's does); None for any other value, and
    for a class that derives from none of Beam's runners. Imports a dotted path: for the stage only."""
    if "." not in name:
        return _beam_name(name)
    if not is_dotted_path(name):
        return None
    target, _error = _imported(name)
    for cls in getattr(target, "__mro__", ()) if isinstance(target, type) else ():
        if not str(getattr(cls, "__module__", "")).startswith("apache_beam."):
            continue
        for known, path in BEAM_RUNNERS.items():
            # Beam's DirectRunner is its SwitchingDirectRunner: compare classes, importing only a same-named one
            if path.rsplit(".", 1)[1] == cls.__name__ and _imported(path)[0] is cls:
                return "DirectRunner" if known == "SwitchingDirectRunner" else known
    return None


def direct_subclass(name: str) -> type | None:
    """The class a dotted ``--runner`` path names when it is a user's subclass of Beam's DirectRunner (not one of
    Beam's own classes, which :data:`LOCAL_RUNNERS` covers): Beam's ``DirectRunner.run_pipeline`` first
    starts Prism (a download at run time), so :func:`pipelines.features.runner.pipeline_runner` builds the
    subclass with that method replaced by the stage's FnApiRunner. None for any other value."""
    if "." not in name or runner_class(name) in LOCAL_RUNNERS + IN_PROCESS_RUNNERS:
        return None
    if runner_base(name) not in ("DirectRunner", "TestDirectRunner"):
        return None
    target = _imported(name)[0]
    return target if isinstance(target, type) else None


# What each runner that starts a job elsewhere needs in the Beam options to run here without a download at run
# time (Beam 2.77, read from its code and checked offline by tests/unit/test_fix23f.py).
_JOB_SERVER_JARS = {"FlinkRunner": "flink_job_server_jar", "SparkRunner": "spark_job_server_jar"}
_PORTABLE = ("PortableRunner", "FlinkRunner", "SparkRunner")
_ENVIRONMENTS = ("LOOPBACK", "EXTERNAL", "PROCESS", "DOCKER")
_DATAFLOW_OPTIONS = ("project", "region", "temp_location")


def options_refusal(name: str, values: dict) -> str | None:
    """Why the runner a ``--runner`` value names cannot run with the Beam options ``values``
    (``PipelineOptions.get_all_options()``) without a download at run time or a failure for an option it
    lacks, in one line; None when nothing is missing (or the runner is not one of Beam's that starts a job
    elsewhere). Checked when the feature stage starts, before its staging folder, and in the run's first
    step; never with the settings (which hold no Beam options). A user's subclass of one of these runners
    needs what Beam's does.

    - PortableRunner: ``--job_endpoint`` (Beam starts no job service for it: "You must specify a
      --job_endpoint").
    - FlinkRunner, SparkRunner: ``--job_endpoint``, or ``--flink_job_server_jar`` / ``--spark_job_server_jar``
      naming a jar file on this machine: else Beam downloads its job server jar from Maven Central when the
      stage runs (a URL is a download too); SparkRunner with ``--spark_submit_uber_jar`` also needs
      ``--spark_rest_url``.
    - all three: an SDK harness environment that pulls nothing: ``--environment_type`` LOOPBACK, EXTERNAL
      (with ``--environment_config``, the worker pool's address), PROCESS (with ``--environment_config``, the
      command) or DOCKER with the image given (``--environment_config``): Beam's default is DOCKER with its own
      SDK image (pulled from Docker Hub, and without this project's code); Flink on its local ``[auto]`` /
      ``[local]`` master and Spark on a ``local`` master default to LOOPBACK, as Beam does.
      ``--prebuild_sdk_container_engine`` builds an image (pulling its base): refused.
    - DataflowRunner: ``--project``, ``--region`` and ``--temp_location`` (a gs:// path), what Beam's own check
      of the options refuses the job without ("Pipeline has validations errors", a five-line message).
    """
    base = runner_base(name)
    if base == "DataflowRunner":
        missing = [f"--{option}" for option in _DATAFLOW_OPTIONS if not values.get(option)]
        if missing:
            return (f"needs the Beam options {' and '.join(missing)} (Beam refuses a Dataflow job without "
                    f"{', '.join('--' + option for option in _DATAFLOW_OPTIONS)})")
        if not str(values["temp_location"]).startswith("gs://"):
            return "needs the Beam option --temp_location to be a gs:// path (Dataflow stages the job there)"
        return None
    if base not in _PORTABLE:
        return None
    if not values.get("job_endpoint"):
        if base == "PortableRunner":
            return ("needs the Beam option --job_endpoint (the address of a running job service, or 'embed'): Beam "
                    "starts none for PortableRunner")
        jar = values.get(_JOB_SERVER_JARS[base])
        if not jar or not os.path.isfile(str(jar)):
            given = f" ({quoted(str(jar))} is no file on this machine)" if jar else ""
            return (f"needs the Beam option --{_JOB_SERVER_JARS[base]} naming a job server jar on this machine{given}, "
                    f"or --job_endpoint: without either Beam downloads its {base[:-6]} job server jar from Maven "
                    "Central when the stage runs, and this project makes no download at run time")
        if base == "SparkRunner" and values.get("spark_submit_uber_jar") and not values.get("spark_rest_url"):
            return "needs the Beam option --spark_rest_url with --spark_submit_uber_jar (Beam refuses the job without)"
    return _environment_refusal(base, values)


def _environment_refusal(base: str, values: dict) -> str | None:
    """:func:`options_refusal`'s rule for the SDK harness environment of a portable runner."""
    kind = values.get("environment_type")
    config = values.get("environment_config")
    if values.get("prebuild_sdk_container_engine"):
        return ("is given --prebuild_sdk_container_engine, which builds a worker image when the stage runs (pulling "
                "its base image): give the worker image with --environment_type=DOCKER --environment_config=IMAGE")
    if not kind and not values.get("output_executable_path"):
        flink_local = base == "FlinkRunner" and str(values.get("flink_master") or "").strip() in ("[local]", "[auto]")
        spark_local = base == "SparkRunner" and re.match(r"^local(\[.+\])?$", str(values.get("spark_master_url") or ""))
        if flink_local or spark_local:
            return None                                   # Beam runs the workers in this process (LOOPBACK)
    image = config or _environment_option(values, "docker_container_image")
    if kind not in _ENVIRONMENTS or (kind == "DOCKER" and not image):
        shown = ", not DOCKER without an image" if kind == "DOCKER" else f", not {quoted(str(kind))}" if kind else ""
        return (f"needs the Beam option --environment_type LOOPBACK, EXTERNAL, PROCESS or DOCKER with the worker "
                f"image (--environment_config=IMAGE){shown}: Beam's default environment "
                "pulls its own SDK image from Docker Hub when the stage runs (without this project's code), and "
                "this project makes no download at run time")
    if kind in ("EXTERNAL", "PROCESS") and not config and not _environment_option(
            values, "external_service_address" if kind == "EXTERNAL" else "process_command"):
        what = "the worker pool's address" if kind == "EXTERNAL" else "the worker command"
        return f"needs the Beam option --environment_config ({what}) with --environment_type={kind}"
    return None


def _environment_option(values: dict, key: str) -> str | None:
    """A ``--environment_option key=value``'s value (Beam's ``lookup_environment_option``), None if not given."""
    for option in values.get("environment_options") or ():
        if str(option).startswith(key + "="):
            return str(option).split("=", 1)[1] or None
    return None


@functools.lru_cache(maxsize=64)
def runner_class(name: str) -> str:
    """The class name of Beam's own runner that ``create_runner`` makes of a ``--runner`` value: a bare name as
    :func:`_beam_name` reads it (no import); a dotted path by the class it imports, so any path to one of the
    runners checked here (``apache_beam.runners.DirectRunner``, a re-export) is that runner, and a path to a class
    elsewhere, whatever it is named, is not; any other value as given, which no check here matches. Imports a
    dotted path: for the stage only, never for the settings. Cached: a build asks several times (options,
    worker count, runner)."""
    if "." not in name:
        return _beam_name(name) or name
    if not is_dotted_path(name):
        return name
    target, _error = _imported(name)
    if target is not None and str(getattr(target, "__module__", "")).startswith("apache_beam."):   # Beam's class
        for known in LOCAL_RUNNERS + IN_PROCESS_RUNNERS + _REFUSED_CLASSES:
            if _imported(BEAM_RUNNERS[known])[0] is target:
                return known
    return name


@functools.lru_cache(maxsize=64)
def _imported(path: str) -> tuple[object | None, str | None]:
    """The object a dotted path names, imported as Beam's ``create_runner`` imports it, and None; or None and why
    it does not import, in one line. Whatever the import raises is a reason (KeyboardInterrupt aside): the
    module is the user's and may raise anything (a KeyError, a SyntaxError, ``sys.exit``). Cached, so a
    module that fails to import runs once per process."""
    from pipelines.features import beamworker  # noqa: F401  # isort: skip  # Beam imported quietly first

    module, _, attribute = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), attribute), None
    except KeyboardInterrupt:
        raise
    except BaseException as exc:   # noqa: BLE001 - SystemExit included on purpose: a module that exits
        return None, _cause(exc)


def _cause(exc: BaseException) -> str:
    """``Type: message`` of an exception on one short line (control characters and line breaks as spaces)."""
    try:
        text = str(exc)[:1000]
    except Exception:   # noqa: BLE001 - a __str__ of the user's that raises
        text = ""
    text = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    text = text if len(text) <= 300 else text[:297] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def is_local_runner(name: str) -> bool:
    """Whether ``--runner`` ``name`` is one :mod:`pipelines.features.runner` runs on its own FnApiRunner
    (:data:`LOCAL_RUNNERS`, and a user's subclass of Beam's DirectRunner: :func:`direct_subclass`)."""
    return runner_class(name) in LOCAL_RUNNERS or direct_subclass(name) is not None


def _standard_options() -> type:
    """Beam's ``StandardOptions`` (its runners), Beam imported quietly first (no apitools notice, no root handler):
    for checks of the static tables here against Beam, never for the settings."""
    from pipelines.features import beamworker  # noqa: F401  # isort: skip

    from apache_beam.options.pipeline_options import StandardOptions

    return StandardOptions
