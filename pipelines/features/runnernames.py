"""Which runner a ``--runner`` value names, and whether the feature stage runs it: what
:mod:`pipelines.features.runner` and the settings check (``FeaturesConfig.validate``) share.

Two checks, because reading the settings must never run code the settings name:

- :func:`runner_refusal`, with the settings (``pickapic settings``, ``build --dry-run``, the Dagster definitions,
  sensors, every run's first step): it imports nothing, neither Beam (about a second and 100 MB) nor the
  user's module. A bare name must be one of :data:`RUNNERS`, Beam's runners this project runs (a static list,
  checked against Beam's own ``create_runner`` by ``tests/unit/test_fix23c.py``); a dotted path is checked for
  its form only (dotted Python names, at most :data:`MAX_RUNNER_PATH` characters).
- :func:`start_refusal`, when the feature stage starts (``runner.pipeline_options``, before the staging folder
  is made): a dotted path is imported, as Beam's ``create_runner`` would import it, and whatever its import
  raises (a missing dependency, a syntax error, ``sys.exit``, an error of its own) is a one-line reason.

Until review rev23c the settings check imported a dotted path whenever the settings were read: its module's
code ran in ``pickapic settings`` and in the Dagster processes, and an import that raised anything but an
ImportError ended them in a traceback (or, ``sys.exit``, silently); bare names Beam cannot make here
(``interactive``) or that download a binary at run time (``prism``) were accepted.
"""
from __future__ import annotations

import functools
import importlib

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
    """:func:`runner_refusal`, then, for a dotted path, what importing it says, as the feature stage starts: a
    module that fails to import (whatever it raises but KeyboardInterrupt: a missing dependency, a syntax
    error, ``sys.exit``, an error of its own), a name it does not hold, an object that is no runner class (one
    with ``run_pipeline``: Beam only calls the class, so a duck-typed runner of the user's is one too), or
    Beam's own class of a runner :data:`REFUSED_RUNNERS` refuses."""
    refusal = runner_refusal(name)
    if refusal or "." not in name:
        return refusal
    target, error = _imported(name)
    if error is not None:
        return f"cannot be imported ({error})"
    if not (isinstance(target, type) and callable(getattr(target, "run_pipeline", None))):
        return ("is not a runner class (a PipelineRunner, with run_pipeline): give one of "
                f"{', '.join(RUNNERS)} or the dotted path of a runner class")
    known = runner_class(name)
    if known in REFUSED_RUNNERS:
        return f"is Beam's {known}, which {REFUSED_RUNNERS[known]}"
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
    (:data:`LOCAL_RUNNERS`)."""
    return runner_class(name) in LOCAL_RUNNERS


def _standard_options() -> type:
    """Beam's ``StandardOptions`` (its runners), Beam imported quietly first (no apitools notice, no root handler):
    for checks of the static tables here against Beam, never for the settings."""
    from pipelines.features import beamworker  # noqa: F401  # isort: skip

    from apache_beam.options.pipeline_options import StandardOptions

    return StandardOptions
