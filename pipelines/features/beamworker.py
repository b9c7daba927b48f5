"""Local Beam workers without Beam's start-up noise: a quiet ``apache_beam`` import and the worker entry point.

Importing ``apache_beam`` without ``google-apitools`` installed logs ``apitools not found, and bigquery
client libraries are not available ...`` through ``logging.warning``, which as a side effect installs
a stderr handler on the root logger (``logging.basicConfig``). Every SDK worker process of the
DirectRunner's ``multi_processing`` mode then prints that warning and, through the handler it left,
``INFO:__main__:Logging handler created.``: two lines per process per run that say nothing about the
run. :func:`import_beam_quietly` imports Beam with only that notice dropped and no handler left
behind, and ``python -m pipelines.features.beamworker`` is Beam's ``sdk_worker_main`` started that way;
:class:`QuietFnApiRunner` makes the local runner start its worker processes through it. Every other
record, warnings included, reaches the handlers exactly as before.
"""
from __future__ import annotations

import logging
import sys

APITOOLS_NOTICE = "apitools not found, and bigquery client libraries are not available"
STOCK_WORKER_MODULE = "apache_beam.runners.worker.sdk_worker_main"
QUIET_WORKER_MODULE = "pipelines.features.beamworker"


class _DropApitoolsNotice(logging.Filter):
    """Drop the root logger's apitools notice (a missing optional GCP client, not a problem of the run)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(APITOOLS_NOTICE)


def import_beam_quietly() -> None:
    """Import ``apache_beam`` with its apitools notice dropped and the root logger's handlers left as they were."""
    if "apache_beam" in sys.modules:
        return
    root = logging.getLogger()
    notice_filter = _DropApitoolsNotice()
    # With no handler on the root logger, logging.warning() would call basicConfig(); Python's own
    # last-resort handler stands in while Beam imports, so real warnings still print as they would.
    stand_in = (logging.lastResort or logging.StreamHandler()) if not root.handlers else None
    root.addFilter(notice_filter)
    if stand_in is not None:
        root.addHandler(stand_in)
    try:
        import apache_beam  # noqa: F401
    finally:
        root.removeFilter(notice_filter)
        if stand_in is not None:
            root.removeHandler(stand_in)


def quiet_worker_command(command: str) -> str:
    """The command that starts Beam's SDK worker module through this one instead (other commands unchanged)."""
    stock = f"-m {STOCK_WORKER_MODULE}"
    return command.replace(stock, f"-m {QUIET_WORKER_MODULE}") if command.endswith(stock) else command


import_beam_quietly()

from apache_beam.portability import python_urns  # noqa: E402 - after the quiet import
from apache_beam.runners.portability.fn_api_runner import fn_runner  # noqa: E402


class QuietFnApiRunner(fn_runner.FnApiRunner):
    """Beam's batch ``FnApiRunner`` whose ``multi_processing`` workers run ``python -m pipelines.features.beamworker``."""

    def run_via_runner_api(self, pipeline_proto, options):
        for environment in pipeline_proto.components.environments.values():
            if environment.urn == python_urns.SUBPROCESS_SDK:
                environment.payload = quiet_worker_command(environment.payload.decode("utf-8")).encode("utf-8")
        return super().run_via_runner_api(pipeline_proto, options)


def main(argv: list[str]) -> None:
    """Beam's SDK worker entry point (``sdk_worker_main.main``), imported after the quiet import."""
    from apache_beam.runners.worker import sdk_worker_main

    sdk_worker_main.main(argv)


if __name__ == "__main__":
    main(sys.argv)
