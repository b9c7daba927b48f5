"""rev36h: second-pass hostile review of fix36d (README section 9, thirty-sixth session, the fix36d bullet).

Reviewed: ``formats.locks.scratch_unusable`` / ``ScratchFolderUnusable`` / ``held_scratch_folder`` (its ``try`` now
around ``_make_scratch`` and ``_make_marked_folder``), the feature stage's fallback to Beam's own temp folder
(``stage._beam_temp_folder``, ``stage._local_tempdir_in``), link targets shown through ``formats.settings.quoted``,
and ``dagster_project.steplog.step_progress`` feeding the feature asset's progress lines and warnings into a Dagster
run's log. Driven by real components: real Dagster materializations of ``fingerprint_images`` (``instance_for_test``,
the run's event log read back with ``instance.all_logs``), the real Beam DirectRunner feature stage (NudeNet aside:
``fake_detector``, as test_fix36d does), the real ingest uid search (``DayBuilder`` gzip raw day) with a forced
spill, and a real read-only tmpfs mounted over ``HOME/cache`` (a parent of the scratch folder) in a private mount
namespace (``unshare -m``), as the fix's tests do.

What held up (no defect filed):
- misattribution: ``held_scratch_folder`` wraps only the making of ``cache/tmp`` and of its ``.new-PREFIX`` folder
  and marker, so an EACCES/EROFS/ENOSPC raised elsewhere (the stage's outputs, staging, the system temp folder) is
  never called "scratch folder unusable"; an error that says nothing of the folder (EIO, EMFILE, ENAMETOOLONG) is
  re-raised as is. A read-only tmpfs over ``HOME/cache`` itself (not only ``cache/tmp``): the stage warned once
  ("cannot be written (a read-only disk) ... EROFS"), ran on Beam's own folder and wrote 3 features + 1 reject rows.
- the ingest's spill never falls back: ``named_image_uids`` / ``raw_image_uids`` with ``MAX_MEMORY_UIDS`` forced to
  2 and a dangling ``cache/tmp`` raise ``ScratchFolderUnusable`` (the export's ``named_uids`` catches it as
  ``OSError`` and stops the withdrawal, naming the scratch folder's message: safe); ``ingest_day`` enters its spill
  folder first and refuses.
- the run's log: a real materialization of a 21-image day (20 PNGs, one bad blob) logged 5 entries of the stage's
  (4 INFO: counts, Beam's time, the summary; 1 project WARNING), 69 DEBUG Dagster entries; the second run the same.
  Progress counts (``progress(phase, done, total)``) go nowhere: no per-image INFO flood. The fallback warning is
  logged once per run, at WARNING only (not also at INFO), and ``pickapic build`` dedupes it per run
  (``build._step_warnings``) and per build (``stderr_warner``), so it is not counted twice.
- raw control characters: a link target holding ESC, BEL and a newline reaches the run's log escaped (``'\\x1b'``,
  ``'\\n'``), the stored message one line; no secret reaches these messages (paths, counts, the runner's name).

Noticed, not filed: the fallback warning repeats on every feature run while ``cache/tmp`` stays unusable (one per
day's run, deduped within a build): deliberate (the condition persists; it is the only place it is said). The
``errno`` of a ``ScratchFolderUnusable`` is an attribute set after construction, so a pickled one (a worker's error
sent to its parent) arrives with ``errno`` None (nothing reads it outside tests). The EACCES text names
``cache/tmp`` even where the folder not writable is its parent (``HOME/cache`` of another account), as the system's
own mkdir error did. Not tried: EACCES as a second account (this machine's venv is not readable by one; as root no
EACCES arises), a disconnected FUSE mount at ``cache/tmp`` (ENOTCONN behind mkdir's EEXIST would be reported as
"cannot be made: File exists"; no FUSE here to confirm it).

After an honest effort no defect was confirmed; each test below is a passing regression test of the strongest
attacks that held up (no xfail). Had any failed, the rule would apply: each test below is a defect confirmed by
running it, ranked by severity, filed as a strict xfail whose assertions state the correct behaviour.
"""
from __future__ import annotations

import functools
import logging
import os
import tempfile
from pathlib import Path

import dagster as dg
import pytest
from test_features_fixtures import fake_detector, png, write_day
from test_ingest_fixtures import DayBuilder

from dagster_project.steplog import project_warning
from formats.home import DataHome
from formats.locks import ScratchFolderUnusable

DAY = "2023-03-01"


def test_a_hostile_dangling_scratch_link_gives_one_escaped_warning_and_no_info_flood(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dagster_project.assets import features as asset
    from dagster_project.resources import PickapicHome
    from pipelines.features.stage import build_features

    monkeypatch.setattr(asset, "build_features", functools.partial(build_features, detector_factory=fake_detector))
    systmp = tmp_path / "systmp"
    systmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(systmp))
    home = DataHome(tmp_path / "home")
    home.raw_logs.mkdir(parents=True)
    write_day(home, DAY, {f"u{i:02d}": png(i) for i in range(8)} | {"bad": b"not an image"})
    home.cache.mkdir(parents=True, exist_ok=True)
    target = "/mnt/\x1b[31mred\x07\nERROR forged line"
    os.symlink(target, home.cache / "tmp")                        # dangling, hostile bytes in its target
    (tmp_path / "instance").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "instance")) as instance:
        instance.add_dynamic_partitions("raw_days", [DAY])
        result = dg.materialize([asset.fingerprint_images], instance=instance, partition_key=DAY, raise_on_error=False,
                                resources={"data_home": PickapicHome(root=str(home.root))},
                                run_config={"ops": {"fingerprint_images": {"config": {"workers": 0}}}})
        entries = [entry for entry in instance.all_logs(result.run_id) if entry.dagster_event is None]
    assert result.success
    said = [(entry.level, entry.user_message) for entry in entries]
    warned = [text for level, message in said if (text := project_warning(level, message))]
    infos = [message for level, message in said if level == logging.INFO]
    # one warning, one line, the target escaped: no raw escape, bell or newline in the run's log
    assert len(warned) == 1 and str(home.cache / "tmp") in warned[0] and "does not exist" in warned[0], said
    assert "\\x1b[31mred\\x07\\nERROR" in warned[0]
    for _, message in said:
        assert not any(ch in message for ch in "\x1b\x07\n\r"), message
    # the stage's own INFO lines: a handful a run, not one per image; the warning not repeated at INFO
    assert len(infos) <= 6 and not any("symbolic link" in message for message in infos), infos
    assert home.partition_file("image_features", DAY).exists() and home.partition_file("image_rejects", DAY).exists()
    assert os.readlink(home.cache / "tmp") == target                 # the link left as it was
    assert os.listdir(systmp) == []                                   # Beam's own temp folder removed


def test_the_ingest_uid_search_spill_refuses_a_dangling_scratch_link_never_falls_back(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipelines.ingest import uidindex, uidset

    home = DataHome(tmp_path / "home")
    DayBuilder(DAY, seed=33).populate(users=3, images=10, rankings=8, downloads=3).write(home)
    home.cache.mkdir(parents=True, exist_ok=True)
    os.symlink("/nonexistent/\x1bx", home.cache / "tmp")
    monkeypatch.setattr(uidset, "MAX_MEMORY_UIDS", 2)                 # the search must spill
    for search in (uidindex.named_image_uids, uidindex.raw_image_uids):
        with pytest.raises(ScratchFolderUnusable) as caught:
            search(home, DAY, {"00000000-0000-4000-8000-000000000000"})
        message = str(caught.value)
        assert str(home.cache / "tmp") in message and "\\x1bx" in message and "\x1b" not in message
    assert os.listdir(home.cache) == ["tmp"]                           # no index written from a partial search
