"""Hostile review (rev19b) of the rev19a fixes (048e5ec): ``transforms.process_settings_kept`` around an
in-process feature stage (a day under ``features.in_process_below`` = 128 now runs in the Dagster run
process), ``runner.worker_processes`` (the report's and the asset's ``workers``), and the fetch plan's
``COLLATE "C"``.

Each test was a defect confirmed by running it, filed as a strict xfail; all three are fixed (the markers
are gone).
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from formats.home import DataHome
from pipelines.features.config import FeaturesConfig
from pipelines.features.runner import pipeline_options, worker_processes

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "tests" / "unit"


# --- 1. an in-process day still changes the run process's environment: cv2's import adds LD_LIBRARY_PATH ----

_ENVIRONMENT_PROBE = textwrap.dedent("""
    import json, os, sys
    from pathlib import Path
    from formats.home import DataHome
    from pipelines.features.config import FeaturesConfig
    from pipelines.features.stage import build_features
    from test_features_fixtures import fake_detector, png, write_day

    assert "cv2" not in sys.modules          # as in a Dagster run process (dagster_project.definitions loads no cv2)
    home = DataHome(Path(sys.argv[1]))
    write_day(home, "2023-03-01", {f"i{k:02d}": png(k, (64, 64)) for k in range(6)})
    before = dict(os.environ)
    report = build_features(home, "2023-03-01", FeaturesConfig(), detector_factory=fake_detector)
    after = dict(os.environ)
    print(json.dumps({"workers": report.workers, "processed": report.processed,
                      "changed": {k: [before.get(k), after.get(k)] for k in sorted(set(before) | set(after))
                                  if before.get(k) != after.get(k)}}))
""")


def test_an_in_process_day_leaves_the_environment_of_the_run_process_as_it_was(tmp_path):
    """A day of 6 images runs in the calling process (under ``in_process_below``). ``process_settings_kept``
    restores ``PILLOW_BLOCKS_MAX`` because "later subprocesses inherit it", but the first ``import cv2`` (in
    ``configure_worker``, in the DoFns' ``setup``) prepends ``.../cv2/../../lib64`` to ``LD_LIBRARY_PATH`` in
    ``os.environ`` ("works for sub-processes only", cv2/__init__.py): every later subprocess of the run
    (shard writers, the ingest's forked readers, a psql, a training process) inherits it. A Dagster run
    process has not imported cv2 before the stage; with workers (the default for days of 32-127 images
    until 048e5ec) only the workers did."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(UNIT)]))
    env.pop("LD_LIBRARY_PATH", None)
    done = subprocess.run([sys.executable, "-c", _ENVIRONMENT_PROBE, str(tmp_path / "home")], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    import json

    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert (result["workers"], result["processed"]) == (0, 6)     # it did run in this process
    assert result["changed"] == {}, result["changed"]


# --- 2. process_settings_kept is not safe for two stages in one process at once ----------------------------

_GATES: dict[str, threading.Event] = {}


def _gate(name: str) -> threading.Event:
    return _GATES.setdefault(name, threading.Event())


class GatedDetector:
    """A picklable detector factory (pickled by reference: this module) that holds a day's stage in its
    ``setup`` (after ``configure_worker``) until another stage has reached a given point."""

    def __init__(self, arrive: str, wait: str) -> None:
        self.arrive, self.wait = arrive, wait

    def __call__(self):
        from test_features_fixtures import FakeDetector

        _gate(self.arrive).set()
        if not _gate(self.wait).wait(60):
            raise RuntimeError(f"gate {self.wait} never opened")
        return FakeDetector()


def test_two_overlapping_in_process_days_leave_the_process_as_it_was(tmp_path, monkeypatch):
    """Day A's stage has configured the process (``PILLOW_BLOCKS_MAX=64``, blocks_max 64, one OpenCV thread)
    when day B's stage starts in another thread (two days built at once in one process: a threaded
    executor, a test, a tool building a range of days; each day holds only its own lock). B's
    ``process_settings_kept`` snapshots A's settings as "the caller's"; A ends first and puts back the
    real ones, then B ends and puts A's settings back for good. A count of the stages running (restore
    when the last one ends), under a lock, would leave the process as it was."""
    from PIL import Image

    monkeypatch.syspath_prepend(str(UNIT))
    from test_features_fixtures import png, write_day

    from pipelines.features.stage import build_features

    _GATES.clear()
    home = DataHome(tmp_path / "home")
    write_day(home, "2023-03-01", {f"a{k}": png(k, (64, 64)) for k in range(4)})
    write_day(home, "2023-03-02", {f"b{k}": png(50 + k, (64, 64)) for k in range(4)})
    monkeypatch.delenv("PILLOW_BLOCKS_MAX", raising=False)
    blocks_max = Image.core.get_blocks_max()
    Image.core.set_blocks_max(0)
    Image.core.clear_cache()
    reports, errors = {}, []

    def build(day, factory):
        try:
            reports[day] = build_features(home, day, FeaturesConfig(), detector_factory=factory)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
            for gate in ("a_configured", "b_configured", "a_done"):
                _gate(gate).set()

    try:
        a = threading.Thread(target=build, args=("2023-03-01", GatedDetector("a_configured", "b_configured")))
        b = threading.Thread(target=build, args=("2023-03-02", GatedDetector("b_configured", "a_done")))
        a.start()
        assert _gate("a_configured").wait(60)        # A's DoFns have configured the process
        b.start()                                      # B snapshots the settings now
        a.join(120)                                    # A's detector waits until B's has configured too
        _gate("a_done").set()
        b.join(120)
        assert not errors, errors
        assert reports["2023-03-01"].workers == reports["2023-03-02"].workers == 0   # both ran in this process
        left = (os.environ.get("PILLOW_BLOCKS_MAX"), Image.core.get_blocks_max())
    finally:
        for gate in ("a_configured", "b_configured", "a_done"):
            _gate(gate).set()
        Image.core.set_blocks_max(blocks_max)
        Image.core.clear_cache()
        os.environ.pop("PILLOW_BLOCKS_MAX", None)
    assert left == (None, 0), left


# --- 3. worker_processes says "the runner decides" (None) for Beam's own local runners by other names -------

@pytest.mark.parametrize("beam_args, used", [
    # Beam's local batch runner itself (StandardOptions.LOCAL_RUNNERS): since the fix run like the DirectRunner
    # names (the stage's own defaults: a 500-image job on features.workers = 2 processes), or in this process
    (["--runner=FnApiRunner"], 2),
    (["--runner=FnApiRunner", "--direct_running_mode=in_memory"], 0),
    (["--runner=FnApiRunner", "--direct_running_mode=multi_processing", "--direct_num_workers=3"], 3),
    # Beam's create_runner looks names up lower-cased (and with "runner" appended): the same in-process runner
    (["--runner=bundlebaseddirectrunner"], 0),
    (["--runner=BundleBasedDirect"], 0),
], ids=["fnapi-default", "fnapi-in-memory", "fnapi-3-processes", "bundle-based-lower-case", "bundle-based-short"])
def test_workers_on_beams_local_runners_by_any_accepted_name(beam_args, used):
    """``--runner`` names Beam accepts for its local runners, whose worker processes this process's options
    decide: the report and the asset's ``workers`` metadata say None ("empty where another runner decides",
    README section 3) for a day that ran in this process or on 3 worker processes."""
    from apache_beam.runners.direct.direct_runner import BundleBasedDirectRunner
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner
    from apache_beam.runners.runner import create_runner

    runner = str(pipeline_options(FeaturesConfig(), beam_args, 500).get_all_options()["runner"])
    assert isinstance(create_runner(runner), (FnApiRunner, BundleBasedDirectRunner))   # what Beam runs
    assert worker_processes(pipeline_options(FeaturesConfig(), beam_args, 500)) == used


def test_a_lower_case_directrunner_gets_the_local_fnapirunner_not_beams_directrunner():
    """Fixed with the above: ``--runner=directrunner`` (Beam accepts it) was not one of the DirectRunner names,
    so ``pipeline_runner`` left it to Beam, whose DirectRunner first starts Prism (a binary it downloads)."""
    from pipelines.features.beamworker import QuietFnApiRunner
    from pipelines.features.runner import pipeline_runner

    for name in ("directrunner", "DIRECT", "switchingdirectrunner", "FnApiRunner"):
        options = pipeline_options(FeaturesConfig(workers=2), [f"--runner={name}"], 500)
        assert isinstance(pipeline_runner(options), QuietFnApiRunner), name
        assert options.get_all_options()["direct_running_mode"] == "multi_processing", name
    assert pipeline_runner(pipeline_options(FeaturesConfig(), ["--runner=PortableRunner",
                                                                "--job_endpoint=localhost:1",
                                                                # (rev23f: an environment that pulls no image)
                                                                "--environment_type=EXTERNAL",
                                                                "--environment_config=localhost:2"], 500)) is None
