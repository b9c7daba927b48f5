"""Hostile review (rev19d) of the rev19c fixes: 3a2429e (``transforms.process_settings_kept`` puts back only
``STAGE_ENVIRONMENT``; ``runner.runner_class`` maps a dotted ``--runner`` path only when it is exactly one of
``StandardOptions.ALL_KNOWN_RUNNERS``; ``TestDirectRunner`` joins ``LOCAL_RUNNERS``).

Each test was a defect confirmed by running it, filed as a strict xfail; both defects are fixed (the markers are
gone).
"""
from __future__ import annotations

import os
import threading

import pytest
from test_features_fixtures import GATES, HeldDetector, fake_detector, gate, png, refuse_prism, write_day

from formats.home import DataHome
from pipelines.features.config import FeaturesConfig

DAY = "2023-03-01"


# --- 1. Beam's own public dotted paths of the DirectRunner still reach Prism -------------------------------

@pytest.mark.parametrize("runner", [
    "apache_beam.runners.direct.DirectRunner",                       # the package's public export (direct/__init__)
    "apache_beam.runners.DirectRunner",                              # apache_beam.runners re-export
    "apache_beam.runners.direct.test_direct_runner.TestDirectRunner",  # the class's own module
])
def test_beams_public_dotted_directrunner_paths_never_try_prism(tmp_path, monkeypatch, runner):
    """3a2429e maps a dotted ``--runner`` only when the string is literally one of ``ALL_KNOWN_RUNNERS``
    (``apache_beam.runners.direct.direct_runner.DirectRunner``). Beam's ``create_runner`` imports any dotted
    path, so the documented public path ``apache_beam.runners.direct.DirectRunner`` (``direct/__init__``: the
    package's API; the old last-part rule mapped it, so this is a regression), ``apache_beam.runners.
    DirectRunner`` and TestDirectRunner's real module path all build Beam's own DirectRunner class:
    ``pipeline_runner`` returns None, Beam's DirectRunner starts Prism (run-time download), and
    ``worker_processes`` says None for an in-process run. Fix: resolve a dotted path by importing it and
    comparing the class object (``is``) with Beam's runner classes, not by string."""
    from pipelines.features.stage import build_features

    attempts = refuse_prism(monkeypatch, tmp_path)
    home = DataHome(tmp_path / "home")
    write_day(home, DAY, {"a": png(1), "b": png(2)})
    try:
        build_features(home, DAY, FeaturesConfig(), [f"--runner={runner}"], detector_factory=fake_detector)
    except ValueError:
        pass                                      # refusing the runner is a fix too
    assert attempts == []


# --- 2. the two STAGE_ENVIRONMENT variables are reset even when the stage never changed them -----------------

def test_stage_environment_changed_elsewhere_is_kept_when_the_stage_did_not_set_it(tmp_path, monkeypatch):
    """3a2429e says it "puts back only the variables the stage sets ..., leaving what other code changed
    meanwhile", but ``_restore_process_settings`` resets ``PILLOW_BLOCKS_MAX`` and ``LD_LIBRARY_PATH`` to the
    snapshot whenever they differ, whoever changed them. Here the stage changes neither: OpenCV was imported
    before (its import no longer touches ``LD_LIBRARY_PATH``) and ``PILLOW_BLOCKS_MAX`` was already set
    (``configure_worker`` uses ``setdefault``). Another thread of the Dagster process sets both on purpose
    during the stage (a library folder for its subprocesses, a smaller block cache); the stage's end silently
    reverts them: the rev19c defect, kept for the two variables. Fix: put a variable back only when its value
    at the end is the one the stage gave it (``str(PILLOW_BLOCKS_MAX)`` from unset; cv2's ``BINARIES_PATHS``
    prepended to the snapshot, cv2 not loaded at the snapshot)."""
    import cv2  # noqa: F401 - loaded before the stage, as a Dagster process that used OpenCV has it

    from pipelines.features.stage import build_features

    GATES.clear()
    monkeypatch.setenv("LD_LIBRARY_PATH", "/opt/base/lib")
    monkeypatch.setenv("PILLOW_BLOCKS_MAX", "32")
    home = DataHome(tmp_path / "home")
    write_day(home, DAY, {f"i{k}": png(k, (64, 64)) for k in range(4)})
    reports, errors = [], []

    def build():
        try:
            reports.append(build_features(home, DAY, FeaturesConfig(), detector_factory=HeldDetector()))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
            gate("stage_running").set()

    thread = threading.Thread(target=build)
    try:
        thread.start()
        assert gate("stage_running").wait(60)     # the stage runs (in this process: 4 images)
        assert os.environ["LD_LIBRARY_PATH"] == "/opt/base/lib"   # the stage changed neither variable
        assert os.environ["PILLOW_BLOCKS_MAX"] == "32"
        os.environ["LD_LIBRARY_PATH"] = "/opt/vendor/lib:/opt/base/lib"   # another thread, on purpose
        os.environ["PILLOW_BLOCKS_MAX"] = "16"
    finally:
        gate("go_on").set()
        thread.join(120)
    assert not errors, errors
    assert reports[0].workers == 0 and reports[0].processed == 4
    left = (os.environ.get("LD_LIBRARY_PATH"), os.environ.get("PILLOW_BLOCKS_MAX"))
    assert left == ("/opt/vendor/lib:/opt/base/lib", "16"), left
