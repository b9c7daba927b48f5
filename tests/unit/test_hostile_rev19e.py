"""Hostile review (rev19e) of the rev19d fixes (c4f2e98): ``transforms.configure_worker`` notes in
``_STAGE_SET`` what it changes in ``os.environ`` and ``process_settings_kept`` puts back the noted variables
still holding the noted value; ``runner.runner_class`` resolves a dotted ``--runner`` by the class it imports.

Each test was a defect confirmed by running it, filed as a strict xfail; both are fixed (the markers are gone).
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from test_features_fixtures import fake_detector, png, write_day

from formats.home import DataHome
from pipelines.features.config import FeaturesConfig

DAY = "2023-03-01"
REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "tests" / "unit"


# --- 1. a note made by configure_worker outside any stage is applied by a later, unrelated stage ----------

def test_a_stage_keeps_a_variable_configure_worker_set_before_it_outside_any_stage(tmp_path, monkeypatch):
    """``configure_worker`` is public and called outside any stage (``benchmarks/features.py`` calls it
    directly, so do tests; a process that configures itself once): it sets ``PILLOW_BLOCKS_MAX=64`` and
    notes ``(None, "64")`` in ``_STAGE_SET``, with no stage running, so no restore ever clears the note.
    The process keeps ``PILLOW_BLOCKS_MAX=64`` (its own setting now). A later feature stage runs in-process;
    its ``configure_worker`` changes nothing (the variable is already set, ``setdefault``), yet at its end
    ``_restore_process_settings`` applies the stale note: the value is still "64", so the variable is
    deleted. The stage removed a variable that was set before it started and that it never touched
    (the same happens with a stage whose DoFns ran in workers or on Dataflow: "nothing changes" there, and
    with LD_LIBRARY_PATH where cv2 was first imported by such a call: cv2's folder is dropped). Fix: note
    only while a stage is active (``_KEPT["stages"] > 0``), or clear ``_STAGE_SET`` when the first stage
    starts (with the snapshot)."""
    import cv2  # noqa: F401 - loaded already (its LD_LIBRARY_PATH change is not the point here)

    from pipelines.features import transforms
    from pipelines.features.stage import build_features
    from pipelines.features.transforms import configure_worker

    monkeypatch.delenv("PILLOW_BLOCKS_MAX", raising=False)
    try:
        configure_worker()                                   # outside any stage, as benchmarks/features.py does
        assert os.environ.get("PILLOW_BLOCKS_MAX") == "64"
        home = DataHome(tmp_path / "home")
        write_day(home, DAY, {f"i{k}": png(k, (64, 64)) for k in range(4)})
        report = build_features(home, DAY, FeaturesConfig(), detector_factory=fake_detector)
        assert report.workers == 0 and report.processed == 4     # in this process
        assert os.environ.get("PILLOW_BLOCKS_MAX") == "64"       # set before the stage; the stage never changed it
    finally:
        transforms._STAGE_NOTES.clear()                      # leave no stale note to later tests (renamed in the fix)


# --- 2. another thread's LD_LIBRARY_PATH, set while the stage's first `import cv2` runs, is deleted --------

_CV2_RACE_PROBE = textwrap.dedent("""
    import importlib.abc, json, os, sys, threading
    from pathlib import Path
    from formats.home import DataHome
    from pipelines.features.config import FeaturesConfig
    from pipelines.features.stage import build_features
    from test_features_fixtures import fake_detector, png, write_day

    assert "cv2" not in sys.modules and "LD_LIBRARY_PATH" not in os.environ
    importing, other_done = threading.Event(), threading.Event()

    class Gate(importlib.abc.MetaPathFinder):
        # holds the stage's first `import cv2` (in configure_worker) until the other thread has acted
        def find_spec(self, name, path=None, target=None):
            if name == "cv2" and not importing.is_set():
                importing.set()
                assert other_done.wait(60)
            return None

    def other_thread():
        # another thread of the run process sets a library folder for its own subprocesses, on purpose
        assert importing.wait(60)
        os.environ["LD_LIBRARY_PATH"] = "/opt/vendor/lib"
        other_done.set()

    sys.meta_path.insert(0, Gate())
    helper = threading.Thread(target=other_thread)
    helper.start()
    home = DataHome(Path(sys.argv[1]))
    write_day(home, "2023-03-01", {f"i{k}": png(k, (64, 64)) for k in range(4)})
    report = build_features(home, "2023-03-01", FeaturesConfig(), detector_factory=fake_detector)
    helper.join(60)
    print(json.dumps({"workers": report.workers, "processed": report.processed,
                      "gated": importing.is_set() and other_done.is_set(),
                      "ld": os.environ.get("LD_LIBRARY_PATH")}))
""")


def test_another_threads_library_path_set_during_the_stages_cv2_import_is_kept(tmp_path):
    """``configure_worker`` reads ``LD_LIBRARY_PATH`` before ``import cv2`` and notes (before, after) after it:
    everything that changed the variable in between is taken as OpenCV's doing. The first import of cv2 in
    a run process is slow (hundreds of ms: the loader, the native module); another thread that sets
    ``LD_LIBRARY_PATH`` meanwhile (here: exactly then, held by an import gate; it could be any thread of the
    Dagster process) has its value noted as the stage's, and at the stage's end the variable still holds
    that noted value, so it is put back to "unset": the other thread's ``/opt/vendor/lib`` is gone,
    the very rev19d defect (a value another thread set during the stage is undone) through a wider door.
    Fix: undo only OpenCV's own change, i.e. remove the folders cv2 prepended (``BINARIES_PATHS``) from the
    value at the end instead of setting the whole variable back to the value read before the import."""
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(UNIT)])
    done = subprocess.run([sys.executable, "-c", _CV2_RACE_PROBE, str(tmp_path / "home")], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    import json

    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["workers"] == 0 and result["processed"] == 4 and result["gated"], result
    assert "/opt/vendor/lib" in (result["ld"] or "").split(":"), result
