"""A code location for the run-monitoring test (test_run_monitoring.py): one job whose op notes that it started,
then waits for a release file (both named by environment variables the code server passes to its run workers)."""
from __future__ import annotations

import os
import time
from pathlib import Path

import dagster as dg


@dg.op
def wait_for_release() -> None:
    Path(os.environ["PICKAPIC_TEST_STARTED"]).write_text(str(os.getpid()))
    release = Path(os.environ["PICKAPIC_TEST_RELEASE"])
    deadline = time.monotonic() + 300
    while not release.exists() and time.monotonic() < deadline:
        time.sleep(0.05)


@dg.job(executor_def=dg.in_process_executor)
def waiting_job() -> None:
    wait_for_release()


defs = dg.Definitions(jobs=[waiting_job])
