"""Which runner a ``--runner`` value names, as Beam's ``create_runner`` resolves it, and whether Beam can make one
of it: what :mod:`pipelines.features.runner` and the settings check (``FeaturesConfig.validate``) share. Beam is
imported on first use only, so reading the settings costs no Beam import unless ``features.runner`` is set."""
from __future__ import annotations

import functools

# Beam's runners pipelines.features.runner runs on its own batch FnApiRunner (pipeline_runner), and those that run
# every DoFn in the calling process, by class name: a --runner value is resolved to its class as Beam resolves it.
LOCAL_RUNNERS = ("DirectRunner", "SwitchingDirectRunner", "TestDirectRunner", "FnApiRunner")
IN_PROCESS_RUNNERS = ("BundleBasedDirectRunner",)


@functools.lru_cache(maxsize=None)
def runner_class(name: str) -> str:
    """The class name of Beam's own runner that ``create_runner`` makes of a ``--runner`` value: a bare name
    case-insensitively, ``Runner`` optional (``direct``, ``directrunner`` and ``DirectRunner`` are all
    ``DirectRunner``); a dotted path by the class it imports, so any path to one of the runners checked here
    (``apache_beam.runners.DirectRunner``, a re-export) is that runner, and a path to a class elsewhere,
    whatever it is named, is not; any other value as given, which no check here matches. Cached: a build asks
    several times (options, worker count, runner), and a module that fails to import would run each time."""
    StandardOptions = _standard_options()

    if "." in name:
        target = _import_class(name)
        for path in StandardOptions.ALL_KNOWN_RUNNERS:
            known = path.rsplit(".", 1)[-1]
            if target is not None and known in LOCAL_RUNNERS + IN_PROCESS_RUNNERS and _import_class(path) is target:
                return known
        return name
    known = {path.rsplit(".", 1)[-1].lower(): path for path in StandardOptions.ALL_KNOWN_RUNNERS}
    path = known.get(name.lower(), known.get(name.lower() + "runner", name))
    return path.rsplit(".", 1)[-1]


def _standard_options() -> type:
    """Beam's ``StandardOptions`` (its runners), Beam imported quietly first (no apitools notice, no root handler)."""
    from pipelines.features import beamworker  # noqa: F401  # isort: skip

    from apache_beam.options.pipeline_options import StandardOptions

    return StandardOptions


def _import_class(path: str) -> object | None:
    """The object a dotted path names, as Beam's ``create_runner`` imports it; None where it does not import."""
    import importlib

    module, _, attribute = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), attribute)
    except (ImportError, AttributeError, ValueError, TypeError):   # TypeError: a relative path, "../../x"
        return None


def runner_refusal(name: str) -> str | None:
    """Why Beam's ``create_runner`` makes no runner of a ``--runner`` value (None: it makes one): a bare name must
    be one of Beam's runners as :func:`runner_class` reads it, a dotted path must import a runner class (one
    with ``run_pipeline``: Beam only calls the class, so a duck-typed runner of the user's is one too).
    Checked with the settings and the Beam options, not first when the Beam stage starts, after the staging
    folder is made."""
    StandardOptions = _standard_options()

    if "." in name:
        target = _import_class(name)
        if isinstance(target, type) and callable(getattr(target, "run_pipeline", None)):
            return None
    elif runner_class(name) in StandardOptions.KNOWN_RUNNER_NAMES:
        return None
    return (f"is not a Beam runner: give one of {', '.join(StandardOptions.KNOWN_RUNNER_NAMES)} (case and the "
            "'Runner' ending optional) or the dotted path of a runner class (a PipelineRunner)")


def is_local_runner(name: str) -> bool:
    """Whether ``--runner`` ``name`` is one :mod:`pipelines.features.runner` runs on its own FnApiRunner
    (:data:`LOCAL_RUNNERS`)."""
    return runner_class(name) in LOCAL_RUNNERS
