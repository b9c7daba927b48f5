"""Beam pipeline options and the runner: DirectRunner defaults, and the local runner built without Prism."""
from __future__ import annotations

from typing import Sequence

# First: it imports apache_beam quietly (no apitools notice, no root log handler left behind).
from pipelines.features.beamworker import QuietFnApiRunner  # isort: skip

from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.runner import PipelineRunner

from formats.settings import quoted
from pipelines.features.config import FeaturesConfig
from pipelines.features.runnernames import (
    IN_PROCESS_RUNNERS,
    dataflow_package_refusal,
    direct_subclass,
    is_local_runner,
    option_values,
    options_refusal,
    runner_base,
    runner_class,
    runner_given,
    shown,
    split_beam_args,
    start_refusal,
)


def pipeline_options(config: FeaturesConfig, beam_args: Sequence[str] | None, num_images: int | None = None) -> PipelineOptions:
    """Beam options of a run: ``features.beam_args`` (:func:`beam_option_args`), then ``beam_args`` (unchanged:
    a later option wins, as Beam reads a repeated one), plus DirectRunner defaults; unknown flags raise.

    On the DirectRunner without an explicit ``--direct_running_mode``: ``multi_processing`` with the
    ``--direct_num_workers`` given, else with ``config.workers`` processes, or ``in_memory`` when ``workers`` is 0 or the job is smaller than
    ``config.in_process_below`` images (starting the workers costs ~3 CPU-s: below ~120-170 images a day the
    stage is no slower in-process, with ~40% less CPU and half the memory; ``benchmarks/features_crossover.py``).
    A dotted runner (a user's class) runs with ``--allow_unsafe_triggers``, which makes Beam 2.77's
    ``DirectRunner.run_pipeline`` skip its Prism attempt however the class reaches it (review rev23h; the
    stage's pipeline has only Beam's default trigger, which that option leaves as it is).
    """
    args = beam_option_args(config) + list(beam_args or [])
    from_settings = not runner_given(args)
    if from_settings:
        args.append(f"--runner={config.runner}")
    try:
        known = option_values(args)
    except ValueError as exc:
        raise ValueError(f"the Beam options {shown(' '.join(args), 200)} hold {exc}") from None
    runner = str(known.get("runner") or "")
    # a dotted path is imported here, when the stage starts, not with the settings; then what the runner needs
    # in the options to run without a download at run time (a job server jar, a job endpoint, an environment, no
    # option that downloads or installs) and a local runner's --direct_num_workers range: the settings check's own
    refusal = start_refusal(runner) or options_refusal(runner, known)
    if refusal:
        raise ValueError(f"{_named(runner, from_settings)} {refusal}")
    if "." in runner and not known.get("allow_unsafe_triggers"):
        args.append("--allow_unsafe_triggers")    # no Prism, whatever path the user's class takes into DirectRunner
    if is_local_runner(runner) and not any(a.startswith("--direct_running_mode") for a in args):
        small = num_images is not None and num_images < config.in_process_below
        if any(a == "--direct_num_workers" or a.startswith("--direct_num_workers=") for a in args):
            args += ["--direct_running_mode=multi_processing"]   # the user's own count of workers, as given
        elif config.workers >= 1 and not small:
            args += ["--direct_running_mode=multi_processing", f"--direct_num_workers={config.workers}"]
        else:
            args += ["--direct_running_mode=in_memory"]
        if not any(a.startswith("--default_sdk_harness_log_level") for a in args):
            args.append("--default_sdk_harness_log_level=ERROR")
    return PipelineOptions(args)


def check_runner(config: FeaturesConfig, beam_args: Sequence[str] | None) -> str:
    """The ``--runner`` value the feature stage will run, after every check it gets before anything is written:
    :func:`pipeline_options`' (the options, the runner, what it needs in the options) and whether Beam can make
    the runner here (DataflowRunner needs ``apache-beam[gcp]``: without it Beam fails after the staging folder
    was written). Raises ``ValueError`` in one line naming ``features.runner`` (or ``--runner``). Run when the
    stage starts and by the run's first step (``dagster_project.runconfig.check_run_config``), never where the
    settings are read."""
    args = beam_option_args(config) + list(beam_args or [])
    options = pipeline_options(config, beam_args)
    runner = str(options.get_all_options().get("runner") or "")
    refusal = dataflow_package_refusal() if runner_base(runner) == "DataflowRunner" else None
    if refusal:
        raise ValueError(f"{_named(runner, not runner_given(args))} {refusal}")
    return runner


def beam_option_args(config: FeaturesConfig) -> list[str]:
    """``features.beam_args`` as a list of options (:func:`runnernames.split_beam_args`)."""
    return split_beam_args(config.beam_args)


def _named(runner: str, from_settings: bool) -> str:
    """How an error names the runner: the setting, or the Beam option it came from."""
    return f"features.runner = {quoted(runner)}" if from_settings else f"--runner={quoted(runner)} in the Beam options"


def worker_processes(options: PipelineOptions) -> int | None:
    """Worker processes a run with ``options`` starts, as the local runner decides it: in ``multi_processing``
    mode ``direct_num_workers`` (0: one per CPU, as Beam's FnApiRunner reads it), in ``in_memory`` and
    ``multi_threading`` mode none (this process), none on Beam's in-process ``BundleBasedDirectRunner``;
    None on every other runner (a job service, Dataflow, Flink: the runner decides, not this process)."""
    import multiprocessing

    values = options.get_all_options()
    name = str(values.get("runner") or "")
    if runner_class(name) in IN_PROCESS_RUNNERS:
        return 0
    if not is_local_runner(name):
        return None
    if values.get("direct_running_mode") != "multi_processing":
        return 0
    workers = values.get("direct_num_workers")
    return multiprocessing.cpu_count() if workers == 0 else int(workers or 1)


def pipeline_runner(options: PipelineOptions) -> PipelineRunner | None:
    """The runner object for ``options``: for the DirectRunner (however ``--runner`` spells it: ``direct``,
    ``directrunner``, ...; :func:`runner_class`) and an explicit ``FnApiRunner``, Beam's batch ``FnApiRunner``
    built exactly as the DirectRunner builds it; for a user's subclass of Beam's DirectRunner (a dotted path),
    that class with its ``run_pipeline`` on the same FnApiRunner (:func:`_without_prism`); else None (Beam
    resolves ``--runner`` itself).

    Beam's ``DirectRunner`` (2.6x-2.77) first tries the Prism runner, whose binary it downloads from GitHub
    at run time: a network call this pipeline must never make (on a connected machine it would also
    silently switch runners), and, offline, a failed start that leaves a ``beam-temp*`` folder behind in
    the system temp dir on every run. Its fallback for a batch pipeline like this one is this
    ``FnApiRunner``, which honours ``--direct_running_mode`` and ``--direct_num_workers``.
    """
    values = options.get_all_options()
    name = str(values.get("runner") or "")
    if not is_local_runner(name):
        return None
    from apache_beam.portability.api import beam_provision_api_pb2
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    from apache_beam.runners.portability.portable_runner import JobServiceHandle

    encoded = JobServiceHandle.encode_pipeline_options(values)
    provision = fn_runner.ExtendedProvisionInfo(beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded))
    subclass = direct_subclass(name)
    if subclass is not None:
        return _without_prism(subclass, provision)
    return QuietFnApiRunner(provision_info=provision)


def _without_prism(cls: type, provision) -> PipelineRunner:
    """An instance of the user's subclass ``cls`` of Beam's DirectRunner (built as Beam's ``create_runner`` builds
    it: no arguments) whose ``run_pipeline`` is the stage's FnApiRunner instead of Beam's DirectRunner's, which
    first starts Prism (a download at run time). The user's own methods stay: a ``run_pipeline`` of theirs
    that calls ``super()`` reaches the stage's FnApiRunner, not Beam's (review rev23f). One that reaches Beam's
    method another way (``DirectRunner.run_pipeline(self, ...)`` explicitly, a fresh ``DirectRunner()``) runs
    Beam's FnApiRunner without Prism: :func:`pipeline_options` gives a dotted runner ``--allow_unsafe_triggers``
    (review rev23h)."""
    from apache_beam.runners.direct.direct_runner import SwitchingDirectRunner

    class WithoutPrism(SwitchingDirectRunner):
        def run_pipeline(self, pipeline, options):
            return QuietFnApiRunner(provision_info=provision).run_pipeline(pipeline, options)

    built = type(cls.__name__, (cls, WithoutPrism), {"__module__": cls.__module__, "__qualname__": cls.__qualname__,
                                                     "__doc__": cls.__doc__})
    return built()
