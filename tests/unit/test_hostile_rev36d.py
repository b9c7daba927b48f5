"""Hostile review rev36d: a second pass over fix35f (the feature stage's Beam temp folder and
``formats.locks.ScratchFolderUnusable``) and the schedule storage's kept engine
(``dagster_project.instance.KeptEngineSqliteScheduleStorage``).

What was reviewed and how. (1) fix35f, read against README section 9 and Beam 2.77's ``Pipeline`` source, driven by
the real ``build_features`` (real Beam: the stage's FnApiRunner in memory and with 2 worker processes) on tiny homes
(``test_features_fixtures``), in subprocesses where the scratch disk or the system temp folder had to be a real mount
(root in a private mount namespace, ``unshare -m``, a tmpfs mounted read-only or with its inodes used up, as
``test_fix33t`` does). Attacks: ``HOME/cache/tmp`` read-only, full, a dangling link, a link into a regular file, a
link loop, a file above it; ``TMPDIR`` full or dangling; ``kill -9`` of a 2-worker feature stage mid-Beam.
(2) ``KeptEngineSqliteScheduleStorage`` on a real ``PickapicInstance`` made by ``use_home`` (umask 002): ticks written
by other processes (their own instances) between this process's reads, a forked child reading through the inherited
``ENGINES``, a thread hammering ``ENGINES.get`` while the main thread forked 40 children that each used it, and read
against Dagster 1.13's ``SqliteScheduleStorage`` (``from_local``, ``connect``).

What held up (no test). A kill -9 of a 2-worker feature stage mid-Beam: its ``beamworker`` processes ended, nothing
was left in the system temp folder, and the held ``cache/tmp/beam-XXXX`` kept its marker with Beam's ``pipeline``
subfolder (the next stage's sweep removes it, as ``test_fix35f`` guards). A full or dangling ``TMPDIR``: Python's
``tempfile`` falls back to ``/tmp``, and the stage ran. A link into a regular file and a self-link at
``cache/tmp`` are taken as dangling (``mkdir`` says EEXIST): warning, fallback, same rows. The schedule storage:
every read saw the ticks other processes had committed just before (2, 4, 6 over three rounds), a forked child read
all 6 through the parent's ``ENGINES`` (the key holds the pid; ``NullPool``: no connection is ever kept), no forked
child hung on ``ENGINES._lock`` (0 of 40 while another thread used it), ``schedules.db`` on a group-shared home is
0664. A database deleted, replaced or made read-only while kept behaves as Dagster's own storage (a new connection
per use, nothing cached between uses), and the 30 s lock wait is longer than Dagster's 5 s, not shorter.

Measured: the feature stage on a 2-image home with ``HOME/cache/tmp`` a read-only tmpfs failed in 2.9 s with
``OSError: [Errno 30] Read-only file system: '.../cache/tmp/.new-beam-2b7420899d8c'``; with its inodes used up,
``[Errno 28] No space left on device``; the same home with a dangling link there warns and builds.

Not a defect of the tool: with no writable system temp folder at all (``/tmp`` and ``/var/tmp`` read-only, as
under systemd's ``ProtectSystem=strict`` without ``PrivateTmp``) nothing of Beam even imports (``dill`` calls
``tempfile.gettempdir()`` at import), so Beam's own ``mkdtemp`` in ``Pipeline()`` is never the first to need it.

Noticed, not filed: the Dagster asset calls ``build_features`` with the ``silent`` progress, so the fallback's
warning (and the sweeps' notes) reach no log in a ``pickapic build`` or a daemon run; only ``python -m
pipelines.features`` prints it (the same home's ingest still refuses with ``ScratchFolderUnusable``, so the
operator hears of it). A file at ``HOME/cache`` (above the scratch folder) or a link loop above it gives a bare
``NotADirectoryError`` / ``ELOOP`` ``OSError`` from ``held_scratch_folder``, not the ``ScratchFolderUnusable`` its
docstring promises for "a file ... at a folder's above it" (a home whose ``cache`` is a file fails elsewhere
first). The fallback's message calls a self-link "a symbolic link to tmp, which does not exist", where it is a loop.
A kill -9 of a feature stage running in the fallback leaves Beam's empty ``/tmp/beam-pipeline-temp*`` (0700) for
good: README says the fallback is the behaviour before the thirty-fourth session, so a documented trade-off. The
ingest's spill folder in a read-only ``cache/tmp`` is a bare ``OSError`` naming a ``.new-ingest-...`` name that
does not exist (the ingest needs the folder, so an error is right; only its wording is bare).

Each test below is a defect confirmed by running it, ranked by severity, filed as a strict xfail whose assertions
state the correct behaviour. All were fixed the same day (fix36d, ``tests/unit/test_fix36d.py``: a read-only or full
scratch folder is a ``ScratchFolderUnusable`` naming the error, the feature stage falls back, a link's target is
shown escaped; the noticed items too: the asset's warnings reach the run's log, a file or loop above ``cache/tmp``
and a self-link are named as such) and their markers removed.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from test_features_fixtures import fake_detector, png, write_day

from formats.home import DataHome
from formats.locks import ScratchFolderUnusable, held_scratch_folder
from pipelines.features.config import FeaturesConfig
from pipelines.features.stage import build_features

DAY = "2023-03-01"
REPO = Path(__file__).resolve().parents[2]


def _can_mount() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs none /mnt"],
                          capture_output=True).returncode == 0


# the feature stage in a child process, whose scratch folder is a real mount of its own mount namespace
_STAGE = """
import json, sys
from pathlib import Path
from test_features_fixtures import fake_detector
from formats.home import DataHome
from formats.locks import ScratchFolderUnusable, held_scratch_folder
from pipelines.features.config import FeaturesConfig
from pipelines.features.stage import build_features
said = []
try:
    report = build_features(DataHome(Path(sys.argv[1])), "2023-03-01", FeaturesConfig(workers=0),
                            progress=said.append, detector_factory=fake_detector)
    print(json.dumps({"rows": report.features_rows + report.rejects_rows, "said": said}))
except Exception as exc:
    print(json.dumps({"error": f"{type(exc).__name__}: {exc}", "said": said}))
"""

# how the scratch disk at HOME/cache/tmp is broken: remounted read-only after an error (ext4 errors=remount-ro), or
# out of inodes / space
_MOUNTS = {
    "read-only": 'mount -t tmpfs -o ro none "$1"',
    "full": 'mount -t tmpfs -o nr_inodes=4 none "$1" && for i in 1 2 3 4 5 6; do touch "$1/fill$i" 2>/dev/null; done; true',
}


@pytest.mark.skipif(not _can_mount(), reason="needs root and a private mount namespace (unshare -m) to mount")
@pytest.mark.parametrize("broken", sorted(_MOUNTS))
def test_a_read_only_or_full_scratch_disk_does_not_break_the_feature_stage(tmp_path: Path, broken: str) -> None:
    blobs = {"a": png(1), "b": png(2), "c": b"not an image"}
    plain = DataHome(tmp_path / "plain")              # the same day built with a working scratch folder
    write_day(plain, DAY, blobs)
    systmp = tmp_path / "systmp"
    systmp.mkdir()
    saved = tempfile.tempdir
    tempfile.tempdir = str(systmp)
    try:
        build_features(plain, DAY, FeaturesConfig(workers=0), detector_factory=fake_detector)
    finally:
        tempfile.tempdir = saved

    home = DataHome(tmp_path / "home")
    write_day(home, DAY, blobs)
    scratch = home.cache / "tmp"
    scratch.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests" / "unit")]),
           "TMPDIR": str(systmp)}
    done = subprocess.run(["unshare", "-m", "sh", "-c", _MOUNTS[broken] + ' && exec "$2" -c "$3" "$4"', "sh",
                           str(scratch), sys.executable, _STAGE, str(home.root)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    # the stage runs on (as for a dangling link: fix35f), warning once that cache/tmp cannot be used
    assert "error" not in result, result["error"]
    assert result["rows"] == 3
    warned = [line for line in result["said"] if line.startswith("warning: ") and str(scratch) in line]
    assert len(warned) == 1, result["said"]
    for kind in ("image_features", "image_rejects"):     # the same bytes as with a working scratch folder
        assert home.partition_file(kind, DAY).read_bytes() == plain.partition_file(kind, DAY).read_bytes()
    assert [n for n in os.listdir(systmp) if n.startswith("beam")] == []   # Beam's fallback folder removed at the end


@pytest.fixture
def systmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This process's system temp folder, a private one (another xdist worker's Beam runs never show in it)."""
    folder = tmp_path / "systmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def test_the_fallback_warning_is_one_line_whatever_the_dangling_link_names(tmp_path: Path, systmp: Path) -> None:
    home = DataHome(tmp_path / "home")
    write_day(home, DAY, {"a": png(1), "b": b"not an image"})
    home.cache.mkdir(parents=True, exist_ok=True)
    os.symlink("/mnt/scratch\nERROR features: 0 rows written, dataset v7 deleted\x1b[2K", home.cache / "tmp")
    with pytest.raises(ScratchFolderUnusable) as caught:     # the ingest's spill folder: its one-line refusal
        with held_scratch_folder(home.cache / "tmp", f"ingest-{DAY}-"):
            pass
    assert "\n" not in str(caught.value) and "\x1b" not in str(caught.value), str(caught.value)
    said: list[str] = []
    report = build_features(home, DAY, FeaturesConfig(workers=0), progress=said.append, detector_factory=fake_detector)
    assert report.features_rows + report.rejects_rows == 2           # the fallback itself works
    warned = [line for line in said if line.startswith("warning: ") and str(home.cache / "tmp") in line]
    assert len(warned) == 1, said
    assert "\n" not in warned[0] and "\x1b" not in warned[0], warned[0]     # one line, no terminal escape
