"""Which runner a ``--runner`` value names, and whether the feature stage runs it: what
:mod:`pipelines.features.runner` and the settings check (``FeaturesConfig.validate``) share.

Checks in two places, because reading the settings must never run code the settings name:

- :func:`runner_refusal`, with the settings (``pickapic settings``, ``build --dry-run``, the Dagster definitions,
  sensors, a run's launch, every run's first step): it imports nothing, neither Beam (about a second and 100 MB)
  nor the user's module. A bare name must be one of :data:`RUNNERS`, Beam's runners this project runs (a static
  list, checked against Beam's own ``create_runner`` by ``tests/unit/test_fix23c.py``); a dotted path is checked
  for its form only (dotted Python names, at most :data:`MAX_RUNNER_PATH` characters). Then
  :func:`settings_refusal`: the runner with ``features.beam_args``, the Beam options every run of the home gets,
  parsed by Beam (imported only when there are options, never the user's module), must have what it needs
  (:func:`options_refusal`), so that no scheduled run fails for an option none can pass (review rev23h).
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
after the run's ingest step had written. Until review rev23h no scheduled run could pass a Beam option (they were
run config only): a runner that needed one passed the settings check and failed every scheduled run;
DataflowRunner was held to hand-written rules stricter than Beam's own validator; a jar that was no zip archive
passed, Beam's environment URNs did not; and a user's DirectRunner subclass calling Beam's ``run_pipeline``
explicitly reached Prism.
"""
from __future__ import annotations

import functools
import importlib
import os
import re
from typing import Sequence

from formats.settings import MAX_PROCESSES, quoted

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
# time (Beam 2.77, read from its code and checked offline by tests/unit/test_fix23f.py and test_fix23h.py).
_JOB_SERVER_JARS = {"FlinkRunner": "flink_job_server_jar", "SparkRunner": "spark_job_server_jar"}
_PORTABLE = ("PortableRunner", "FlinkRunner", "SparkRunner")
_ENVIRONMENTS = ("LOOPBACK", "EXTERNAL", "PROCESS", "DOCKER")
# Beam's URNs of those environments (``Environment.from_options`` takes a ``beam:env:`` URN as it is)
_ENVIRONMENT_URNS = {"beam:env:docker:v1": "DOCKER", "beam:env:process:v1": "PROCESS",
                     "beam:env:external:v1": "EXTERNAL", "beam:env:embedded_python_loopback:v1": "LOOPBACK"}
# the runners that need Beam options of their own (the settings check imports Beam only for these, or when
# features.beam_args holds options)
OPTION_RUNNERS = _PORTABLE + ("DataflowRunner",)
MAX_BEAM_ARGS_CHARS = 8192   # features.beam_args: characters (Beam's parser took 9.5 s on a megabyte, review rev23j)
MAX_BEAM_ARGS = 200          # ... and words
_JAR_MAGIC = b"PK\x03\x04"      # a jar is a zip archive: its first local file header


def option_values(args: tuple[str, ...] | list[str]) -> dict:
    """The Beam options ``args`` give, as Beam parses them (``PipelineOptions(args).get_all_options()``);
    ``ValueError`` in one line for a value Beam's parser refuses (its message, bounded, credentials hidden) or an
    option it does not know. Imports Beam.

    The options are first parsed by :class:`_CheckParser`, Beam's own parser with every option class's options,
    whose errors raise instead of printing and exiting: nothing is written to stderr and ``sys.stderr`` is never
    replaced (until review rev23j it was, for every thread of the process, while Beam parsed)."""
    from pipelines.features import beamworker  # noqa: F401  # isort: skip  # Beam imported quietly first

    from apache_beam.options.pipeline_options import PipelineOptions

    parser = _check_parser()
    try:
        _parsed, unknown = parser.parse_known_args(list(args))
    except _ParserRefusal as exc:
        reason = str(exc).split("error: ", 1)[-1]
        raise ValueError(f"a value Beam refuses ({shown(reason, 200)[1:-1]})") from None
    names, dropped = [], 0
    for position, arg in enumerate(unknown):
        if arg == "--":      # every word after it is dropped by Beam (never shown: it may be a credential)
            dropped += len(unknown) - position
            break
        if arg.startswith("-"):
            name = arg.split("=", 1)[0]
            if name not in names:
                names.append(name)
        else:
            dropped += 1
    if names:
        listed = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        raise ValueError(f"options Beam does not know: {shown(listed, 200)[1:-1]}")
    if dropped:   # review rev23l: Beam drops them with a warning, a listing would show them whole
        raise ValueError(f"{dropped} word(s) that are no option and no option's value ('--' or a stray word, which "
                         "Beam drops); give each option as --name=value")
    try:
        return PipelineOptions(list(args)).get_all_options()   # the same parser's options: accepted above
    except SystemExit:
        raise ValueError("a value Beam refuses") from None


class _ParserRefusal(Exception):
    """An argparse error of :class:`_CheckParser`."""


def _check_parser():
    """Beam's argument parser (``_BeamArgumentParser``, no abbreviations, no ``--help``) with the options of every
    ``PipelineOptions`` class, as ``get_all_options`` builds it, but whose ``error`` and ``exit`` raise
    :class:`_ParserRefusal` instead of printing to stderr and exiting."""
    from apache_beam.options import pipeline_options

    class _CheckParser(pipeline_options._BeamArgumentParser):
        def error(self, message):
            raise _ParserRefusal(message)

        def exit(self, status=0, message=None):
            raise _ParserRefusal(message or f"exit {status}")

    parser = _CheckParser(allow_abbrev=False, add_help=False)
    classes: dict = {}
    for cls in pipeline_options.PipelineOptions.__subclasses__():
        classes.setdefault(str(cls), cls)
    for cls in classes.values():
        cls._add_argparse_args(parser)  # noqa: SLF001 - as Beam's get_all_options adds them
    return parser


def shown(value: object, limit: int = 80) -> str:
    """A Beam option's value (or a list of them) as a message may quote it: credentials hidden
    (:func:`formats.text.redact_credentials`: a URL's password, a --s3_secret_access_key), escaped and bounded
    (:func:`formats.settings.quoted`)."""
    from formats.text import redact_credentials

    return quoted(redact_credentials(str(value)), limit)


def split_beam_args(beam_args: str) -> list[str]:
    """``features.beam_args`` as a list of options, split as a shell splits words (``shlex.split``, as the Dagster
    asset always split its run config's ``beam_args``); ``ValueError`` naming the setting where it cannot be."""
    import shlex

    try:
        return shlex.split(beam_args)
    except ValueError as exc:
        raise ValueError(f"features.beam_args = {shown(beam_args)} cannot be split ({exc})") from None


def runner_given(args: Sequence[str]) -> bool:
    """Whether Beam options ``args`` name the runner themselves (``--runner``), over ``features.runner``."""
    return any(arg == "--runner" or arg.startswith("--runner=") for arg in args)


def settings_refusal(runner: str, beam_args: str) -> str | None:
    """Why ``features.runner`` with ``features.beam_args`` (the Beam options every run of the home gets: `pickapic
    build`, the nightly schedule, the sensors, a UI run that gives no ``beam_args`` of its own) cannot run, in one
    line naming the setting and the option to add to ``features.beam_args``; None when they can. The settings
    check (``FeaturesConfig.validate``: `pickapic settings`, `settings --write`, `build --dry-run`, a run's
    launch): ``beam_args`` split as the asset splits it (``shlex.split``), parsed by Beam (imported only when
    there are options to parse or the runner needs some: :data:`OPTION_RUNNERS`), the runner checked by name
    (:func:`runner_refusal`; a dotted path is imported only by the run's first step and the stage) and by what it
    needs (:func:`options_refusal`); a job-server jar must be an absolute path (each process resolves a relative
    one against its own working directory), and DataflowRunner needs apache-beam[gcp] installed (review rev23h:
    FlinkRunner passed the settings check and every scheduled run failed for an option none could pass)."""
    if len(beam_args) > MAX_BEAM_ARGS_CHARS:        # Beam's parser takes seconds on a megabyte, on every read
        return (f"features.beam_args is {len(beam_args):,} characters long: at most {MAX_BEAM_ARGS_CHARS:,} are "
                "taken (no run needs more Beam options)")
    try:
        args = split_beam_args(beam_args)
    except ValueError as exc:
        return f"{exc}: give the options as on a command line"
    if len(args) > MAX_BEAM_ARGS:
        return (f"features.beam_args holds {len(args):,} words: at most {MAX_BEAM_ARGS} are taken (no run needs more "
                "Beam options)")
    given = runner_given(args)
    if not args:                                    # nothing to parse: Beam is not imported
        base = None if "." in runner else _beam_name(runner)
        if base not in OPTION_RUNNERS:
            return None
        refusal = (options_refusal(runner, {}) if base != "DataflowRunner" else
                   "needs the Beam options --project, --region and a gs:// --temp_location or --staging_location: "
                   "Beam's own check of the options refuses a Dataflow job without")
        return (f"features.runner = {shown(runner)} {refusal}; give the option in features.beam_args (the Beam "
                "options of every run: `pickapic build`, the nightly schedule, the sensors)")
    try:
        values = option_values(tuple(args) if given else (*args, f"--runner={runner}"))
    except ValueError as exc:
        return f"features.beam_args = {shown(beam_args)} holds {exc}"
    name = str(values.get("runner") or "")
    where = f"--runner={shown(name)} in features.beam_args" if given else f"features.runner = {shown(runner)}"
    refusal = runner_refusal(name)
    if refusal:
        return f"{where} {refusal}"
    if "." in name:
        return None                                 # a dotted path: imported, and checked, when a run starts
    base = _beam_name(name)
    if base not in OPTION_RUNNERS:                  # a local runner: the stage's own checks of its options
        refusal = options_refusal(name, values)
        return f"{where} {refusal}; change features.beam_args" if refusal else None
    refusal = download_refusal(values)
    if refusal:
        return f"features.beam_args {refusal}"
    option = _JOB_SERVER_JARS.get(base or "")
    jar = values.get(option) if option and not values.get("job_endpoint") else None
    if jar and "://" not in str(jar) and not os.path.isabs(str(jar)):
        return (f"{where} is given --{option}={shown(jar)} in features.beam_args, a relative path: give the jar's "
                "absolute path (each process resolves a relative one against its own working directory)")
    refusal = options_refusal(name, values)
    if refusal:
        return (f"{where} {refusal}; give the option in features.beam_args (the Beam options of every run: "
                "`pickapic build`, the nightly schedule, the sensors)")
    refusal = dataflow_package_refusal() if base == "DataflowRunner" else None
    return f"{where} {refusal}" if refusal else None


def dataflow_package_refusal() -> str | None:
    """Why Beam cannot submit a Dataflow job from this machine (apache-beam[gcp] missing: Beam fails after the
    staging folder was written), or None."""
    try:
        importlib.import_module("apache_beam.runners.dataflow.internal.apiclient")
    except Exception as exc:   # noqa: BLE001 - an ImportError, or whatever a half-installed google package raises
        return (f"needs apache-beam[gcp] installed on this machine (Beam cannot submit a Dataflow job without it: "
                f"{type(exc).__name__})")
    return None


def options_refusal(name: str, values: dict) -> str | None:
    """Why the runner a ``--runner`` value names cannot run with the Beam options ``values``
    (``PipelineOptions.get_all_options()``) without a download at run time or a failure for an option it
    lacks, in one line; None when nothing is missing (or the runner is not one of Beam's that starts a job
    elsewhere). Checked with the settings (:func:`settings_refusal`: ``features.beam_args``), when the feature
    stage starts, before its staging folder, and in the run's first step. A user's subclass of one of these
    runners needs what Beam's does.

    - every runner but the local ones (which stage nothing): no option that makes Beam download or install at
      run time (:func:`download_refusal`).
    - the local runners (DirectRunner, FnApiRunner, a user's DirectRunner subclass): ``--direct_num_workers`` 0
      (one per CPU) to ``MAX_PROCESSES``, ``features.workers``' range (review rev23j: the settings accepted what
      every run refused).

    - PortableRunner: ``--job_endpoint`` (Beam starts no job service for it: "You must specify a
      --job_endpoint").
    - FlinkRunner, SparkRunner: ``--job_endpoint``, or ``--flink_job_server_jar`` / ``--spark_job_server_jar``
      naming a jar file on this machine (a zip archive: its first bytes are checked): else Beam downloads its
      job server jar from Maven Central when the stage runs (a URL is a download too); SparkRunner with
      ``--spark_submit_uber_jar`` also needs ``--spark_rest_url``.
    - all three: an SDK harness environment that pulls nothing: ``--environment_type`` LOOPBACK, EXTERNAL
      (with ``--environment_config``, the worker pool's address), PROCESS (with ``--environment_config``, the
      command) or DOCKER with the image given (``--environment_config``), by name or by Beam's URN
      (``beam:env:external:v1``, ...): Beam's default is DOCKER with its own SDK image (pulled from Docker Hub,
      and without this project's code); Flink on its local ``[auto]`` / ``[local]`` master and Spark on a
      ``local`` master default to LOOPBACK, as Beam does.
    - DataflowRunner: ``--region`` given (Beam's default region runs ``gcloud``, which no settings read may:
      review rev23j), then what Beam's own validator (``PipelineOptionsValidator``, which ``Pipeline()`` runs
      with the runner) finds missing or wrong, run here offline (:func:`_dataflow_refusal`): ``--project``, a
      gs:// ``--temp_location`` or ``--staging_location`` (Beam takes either for both), ...
    """
    local = is_local_runner(name) or runner_class(name) in IN_PROCESS_RUNNERS
    refusal = None if local else download_refusal(values)     # a local runner stages nothing
    if refusal:
        return refusal
    base = runner_base(name)
    if base == "DataflowRunner":
        return _dataflow_refusal(values)
    count = values.get("direct_num_workers")
    if count is not None and local and not 0 <= int(count) <= MAX_PROCESSES:
        # Beam starts that many processes (or fails with an IndexError below 0): held to features.workers' range
        return f"is given --direct_num_workers={count} in the Beam options: give 0 (one per CPU) to {MAX_PROCESSES}"
    if base not in _PORTABLE:
        return None
    if not values.get("job_endpoint"):
        if base == "PortableRunner":
            return ("needs the Beam option --job_endpoint (the address of a running job service, or 'embed'): Beam "
                    "starts none for PortableRunner")
        jar = values.get(_JOB_SERVER_JARS[base])
        problem = _jar_problem(str(jar)) if jar else None
        if not jar or problem:
            given = f" ({shown(jar)} {problem})" if jar else ""
            return (f"needs the Beam option --{_JOB_SERVER_JARS[base]} naming a job server jar on this machine{given}, "
                    f"or --job_endpoint: without either Beam downloads its {base[:-6]} job server jar from Maven "
                    "Central when the stage runs, and this project makes no download at run time")
        if base == "SparkRunner" and values.get("spark_submit_uber_jar") and not values.get("spark_rest_url"):
            return "needs the Beam option --spark_rest_url with --spark_submit_uber_jar (Beam refuses the job without)"
    return _environment_refusal(base, values)


# Beam's options that make it download or install at run time (its stager runs `pip download` / `pip install` or
# `python setup.py sdist`, fetches a URL, or builds a container image pulling its base), and why each is refused
_DOWNLOAD_OPTIONS = {
    "requirements_file": "--requirements_file (Beam runs `pip download` for it, and the workers `pip install`)",
    "setup_file": "--setup_file (Beam builds the package with `python setup.py sdist`, the workers `pip install` it)",
    "extra_packages": "--extra_package(s) (the workers `pip install` them, with what they depend on)",
    "prebuild_sdk_container_engine": "--prebuild_sdk_container_engine (Beam builds a worker image when the stage "
                                     "runs, pulling its base image: give the image with --environment_type=DOCKER "
                                     "--environment_config=IMAGE)",
    "maven_repository_url": "--maven_repository_url (Beam downloads jars from it)",
}


def download_refusal(values: dict) -> str | None:
    """Why the Beam options ``values`` make Beam download or install at run time, in one line; None when they do
    not. This project makes no download at run time (README section 3): :data:`_DOWNLOAD_OPTIONS`, and a URL
    given as ``--sdk_location`` or ``--files_to_stage`` (Beam fetches it). Every runner (review rev23j)."""
    for key, what in _DOWNLOAD_OPTIONS.items():
        if values.get(key):
            return f"holds {what}: this project makes no download or install at run time"
    location = str(values.get("sdk_location") or "")
    if "://" in location:
        return (f"holds --sdk_location={shown(location)}, a URL Beam downloads the SDK from: this project makes no "
                "download at run time")
    for path in values.get("files_to_stage") or ():
        if "://" in str(path):
            return (f"holds --files_to_stage={shown(path)}, a URL Beam downloads: this project makes no download at "
                    "run time")
    return None


def _jar_problem(path: str) -> str | None:
    """Why ``path`` is no jar file on this machine (None when it is one): no such regular file (a URL included:
    Beam downloads it), or one that is not a zip archive (Java would refuse it after the staging folder)."""
    if not os.path.isfile(path):
        return "is no file on this machine"
    try:
        with open(path, "rb") as handle:
            start = handle.read(len(_JAR_MAGIC))
    except OSError as exc:
        return f"cannot be read ({exc.strerror or type(exc).__name__})"
    return None if start == _JAR_MAGIC else "is not a jar (no zip archive)"


def _dataflow_refusal(values: dict) -> str | None:
    """What Beam 2.77's own check of the options (``PipelineOptionsValidator`` with a DataflowRunner, as
    ``Pipeline()`` runs it) finds wrong, in one line; None when nothing. Run offline on a copy of the options:
    ``dry_run`` set so that no bucket's soft-delete policy is fetched, and where neither ``--temp_location`` nor
    ``--staging_location`` is a gs:// path the check refuses at once instead of letting Beam create a default
    bucket (a network call; without apache-beam[gcp] Beam refuses the job then too). ``--region`` must be given:
    Beam's default region (``$CLOUDSDK_COMPUTE_REGION``, then ``gcloud config``, a program with no timeout) is
    never looked up, so the validator spawns nothing (review rev23j)."""
    import copy

    from pipelines.features import beamworker  # noqa: F401  # isort: skip  # Beam imported quietly first

    from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions, TestOptions
    from apache_beam.options.pipeline_options_validator import PipelineOptionsValidator
    from apache_beam.runners.dataflow.dataflow_runner import DataflowRunner

    options = PipelineOptions([], **copy.deepcopy(values))
    options.view_as(TestOptions).dry_run = True
    validator = PipelineOptionsValidator(options, DataflowRunner())
    errors: list[str] = []
    with _beam_logs_dropped():
        cloud = options.view_as(GoogleCloudOptions)
        if not cloud.region:
            # Beam's default region runs `gcloud config get-value compute/region` (no timeout): refused instead, and
            # the rest checked with a stand-in region, so the validator runs no program
            errors = ["Missing required option: region (give --region: Beam's default region is never looked up, "
                      "as that runs `gcloud`, and reading the settings runs no program)"]
            cloud.region = "pickapic-check"
        locations = [validator.validate_gcs_path(cloud, key) for key in ("temp_location", "staging_location")]
        if validator.is_service_runner() and all(locations):
            # Beam would create a default bucket here (a network call): refused instead, and the rest checked
            # with a stand-in location
            errors += ["neither --temp_location nor --staging_location is a valid gs:// location (Beam takes either "
                      f"for both): {locations[0][0]}"]
            cloud.staging_location = "gs://pickapic-check/staging"
        errors += validator.validate()
    if not errors:
        return None
    text = "; ".join(str(error) for error in errors)
    return f"needs what Beam's own check of the options asks for: {shown(text, 400)[1:-1]}"


class _DropAll:
    def filter(self, record) -> bool:
        return False


def _beam_logs_dropped():
    """A context in which Beam's options and Dataflow modules log nothing (their warnings repeat an option's value,
    and a check is no run)."""
    import contextlib
    import logging

    @contextlib.contextmanager
    def dropped():
        loggers = [logging.getLogger(name) for name in ("apache_beam.options.pipeline_options",
                                                        "apache_beam.options.pipeline_options_validator",
                                                        "apache_beam.runners.dataflow.dataflow_runner")]
        drop = _DropAll()
        for logger in loggers:
            logger.addFilter(drop)
        try:
            yield
        finally:
            for logger in loggers:
                logger.removeFilter(drop)
    return dropped()


def _environment_refusal(base: str, values: dict) -> str | None:
    """:func:`options_refusal`'s rule for the SDK harness environment of a portable runner."""
    given = values.get("environment_type")
    kind = _ENVIRONMENT_URNS.get(str(given), given) if given else given
    config = values.get("environment_config")
    if not kind and not values.get("output_executable_path"):
        flink_local = base == "FlinkRunner" and str(values.get("flink_master") or "").strip() in ("[local]", "[auto]")
        spark_local = base == "SparkRunner" and re.match(r"^local(\[.+\])?$", str(values.get("spark_master_url") or ""))
        if flink_local or spark_local:
            return None                                   # Beam runs the workers in this process (LOOPBACK)
    image = config or _environment_option(values, "docker_container_image")
    if kind not in _ENVIRONMENTS or (kind == "DOCKER" and not image):
        said = ", not DOCKER without an image" if kind == "DOCKER" else f", not {shown(given)}" if given else ""
        return (f"needs the Beam option --environment_type LOOPBACK, EXTERNAL, PROCESS or DOCKER (or its Beam URN, "
                f"e.g. beam:env:external:v1) with the worker image (--environment_config=IMAGE){said}: Beam's "
                "default environment pulls its own SDK image from Docker Hub when the stage runs (without this "
                "project's code), and this project makes no download at run time")
    if kind in ("EXTERNAL", "PROCESS") and not config and not _environment_option(
            values, "external_service_address" if kind == "EXTERNAL" else "process_command"):
        what = "the worker pool's address" if kind == "EXTERNAL" else "the worker command"
        named = given if given in _ENVIRONMENTS else shown(given)
        return f"needs the Beam option --environment_config ({what}) with --environment_type={named}"
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
