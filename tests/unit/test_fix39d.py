"""fix39d (noticed, thirty-eighth session): after the test suite ``/tmp`` held empty ``beam-pipeline-temp*`` and
``beam-temp*`` folders. The feature stage's own runs leave nothing in the system temp folder, finished, failed or
stopped by a signal mid-Beam (each run here gets a private ``TMPDIR``, which ``tempfile`` honours, and its entries are
compared by name before and after). The ``beam-temp*`` came from tests that built ``beam.Pipeline(runner=
"DirectRunner")`` themselves: Beam's DirectRunner first starts Prism, whose job server makes
``$TMPDIR/beam-tempXXXX`` and, offline, fails to start without removing it (the stage never does:
``pipelines.features.runner.pipeline_runner``); those tests now run on the stage's runner."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

STAGE = r'''
import signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)   # as from a shell: an xdist worker's child starts ignoring it
from pathlib import Path
sys.path.insert(0, sys.argv[4])
from test_features_fixtures import fake_detector, png, write_day
from formats.home import DataHome
from pipelines.features.config import FeaturesConfig
from pipelines.features.stage import build_features

home, mode = DataHome(Path(sys.argv[1])), sys.argv[2]
detecting = str(Path(sys.argv[1]).parent / "detecting")   # a global: goes with the detector to worker processes
write_day(home, "2023-03-01", {f"u{i}": png(i) for i in range(int(sys.argv[3]))})


def detector():
    if mode == "fail":
        raise RuntimeError("no model")
    inner = fake_detector()
    if mode == "slow":
        return Slow(inner)
    return inner


class Slow:
    """The fake detector, 5 s a batch: the test signals once a detection is under way (a run of quick detections
    could end between the temp folder's making and the signal)."""

    def __init__(self, inner):
        self.inner = inner

    def detect_prepared(self, batch):
        open(detecting, "a").close()
        time.sleep(5)
        return self.inner.detect_prepared(batch)


try:
    build_features(home, "2023-03-01", FeaturesConfig(workers=int(sys.argv[5])), detector_factory=detector)
except RuntimeError as exc:   # Beam hands a KeyboardInterrupt in a DoFn on as a RuntimeError: not a failure here
    print("failed:", exc)
    if mode != "fail":
        raise
'''


def _entries(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


def _run_stage(tmp_path: Path, mode: str, images: int, workers: int, stop: int | None) -> tuple[int, Path, str]:
    systmp = tmp_path / "systmp"
    systmp.mkdir()
    assert _entries(systmp) == []
    env = dict(os.environ, TMPDIR=str(systmp), PYTHONPATH=str(REPO))
    process = subprocess.Popen([sys.executable, "-c", STAGE, str(tmp_path / "home"), mode, str(images),
                                str(REPO / "tests" / "unit"), str(workers)], env=env, cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if stop is not None:   # once Beam runs and detects (its temp folder is made), the signal a stopped build gets
        started = time.monotonic()
        # a detection under way, not only the temp folder (the thirty-ninth session's CI: the "slow" detector was a
        # function the stage never called, every image was a processing-error reject, and under load the quick run
        # ended before the signal: exit 0)
        while not (tmp_path / "detecting").exists() or not list((tmp_path / "home" / "cache" / "tmp").glob(
                "beam-*/pipeline")):
            assert process.poll() is None and time.monotonic() - started < 300, process.communicate()[0]
            time.sleep(0.05)
        process.send_signal(stop)
    output = process.communicate(timeout=600)[0].decode(errors="replace")
    return process.returncode, systmp, output


@pytest.mark.parametrize(("mode", "workers", "stop"), [("ok", 0, None), ("fail", 0, None), ("slow", 0, signal.SIGTERM),
                                                       ("slow", 2, signal.SIGINT)])
def test_a_feature_stage_run_leaves_nothing_in_the_system_temp_folder(tmp_path: Path, mode: str, workers: int,
                                                                      stop: int | None) -> None:
    code, systmp, output = _run_stage(tmp_path, mode, 12 if stop else 3, workers, stop)
    assert (code != 0) if stop else (code == 0), output     # SIGTERM: -15; SIGINT: a KeyboardInterrupt, 1
    if mode == "fail":
        assert "failed: no model" in output
    assert _entries(systmp) == []      # no beam-pipeline-temp*, beam-temp*, tmp* of the run's


@pytest.mark.parametrize("test", ["test_fix35f.py::test_a_shutil_rmtree_of_the_pipeline_folder_cannot_reach_the_marker",
                                  "test_fix35f.py::test_beams_own_removal_of_its_temp_folder_leaves_the_held_folder_marked",
                                  "test_own34_beam_tmp.py::test_the_pipeline_temp_folder_is_the_held_scratch_folder"])
def test_the_tests_that_build_their_own_pipeline_leave_no_beam_temp_folder(tmp_path: Path, test: str) -> None:
    systmp = tmp_path / "systmp"
    systmp.mkdir()
    env = dict(os.environ, TMPDIR=str(systmp), PYTHONPATH=str(REPO))
    env.pop("PYTEST_XDIST_WORKER", None)
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
                           f"--basetemp={tmp_path / 'base'}", f"tests/unit/{test}"], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:]
    # beam-requirements-cache is Beam's one fixed-name cache folder, the same every run: not a per-run leak
    assert [name for name in _entries(systmp) if name.startswith(("beam-temp", "beam-pipeline-temp"))] == []
