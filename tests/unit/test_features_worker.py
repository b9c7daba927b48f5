"""Beam imported quietly: the apitools notice is gone, real warnings still print, worker commands are rerouted."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from pipelines.features.beamworker import QUIET_WORKER_MODULE, quiet_worker_command

REPO = Path(__file__).resolve().parents[2]


def run_python(code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)


def test_quiet_import_drops_only_the_apitools_notice_and_leaves_no_handler() -> None:
    done = run_python(
        "import logging\n"
        "import pipelines.features.beamworker\n"
        "import apache_beam\n"
        "assert logging.getLogger().handlers == [], logging.getLogger().handlers\n"
        "logging.getLogger('pickapic.test').warning('a real warning')\n"
        "logging.getLogger('pickapic.test').info('an info line')\n")
    assert done.returncode == 0, done.stderr
    assert done.stderr == "a real warning\n"


def test_a_plain_beam_import_is_noisy() -> None:
    """The control: without the quiet import, Beam 2.77 prints the notice and leaves a root handler."""
    done = run_python("import logging, apache_beam\nassert logging.getLogger().handlers\n")
    assert done.returncode == 0 and "apitools not found" in done.stderr


def test_worker_commands_are_rerouted_through_the_quiet_entry_point() -> None:
    stock = f"{sys.executable} -m apache_beam.runners.worker.sdk_worker_main"
    assert quiet_worker_command(stock) == f"{sys.executable} -m {QUIET_WORKER_MODULE}"
    assert quiet_worker_command("/opt/apache/beam/boot --id=1") == "/opt/apache/beam/boot --id=1"


def test_worker_requirements_are_the_pyproject_entries() -> None:
    """requirements-worker.txt pins each package exactly as pyproject.toml does (one version policy)."""
    import tomllib

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    declared = {canonicalize_name(Requirement(entry).name): entry
                for entry in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]}
    lines = [line.split("#")[0].strip() for line in (REPO / "requirements-worker.txt").read_text().splitlines()]
    worker = [line for line in lines if line]
    assert {"apache-beam", "nudenet", "onnxruntime"} <= {canonicalize_name(Requirement(line).name) for line in worker}
    assert [line for line in worker if declared.get(canonicalize_name(Requirement(line).name)) != line] == []
