"""fix35f: the fixes of review rev35b (tests/unit/test_hostile_rev35b.py), beyond the review's test.

A dangling link (or a file) at a scratch folder ``held_scratch_folder`` makes its folders in is a clear
``ScratchFolderUnusable`` naming it, not a bare ``FileExistsError``; the feature stage runs on without
``HOME/cache/tmp`` (a warning; Beam's empty temp folder in the system one, removed); and Beam's temp folder is a
subfolder of the held, marked ``beam-XXXX`` one, so Beam's own ``rmtree`` at the end of its run never removes the
marker (rev35b, noticed)."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import apache_beam as beam
import pytest
from test_features_fixtures import fake_detector, in_memory_pipeline, png, write_day

from formats.home import DataHome
from formats.locks import SCRATCH_MARKER, ScratchFolderUnusable, held_scratch_folder, sweep_scratch_folders
from pipelines.features import stage
from pipelines.features.config import FeaturesConfig
from pipelines.features.stage import BEAM_FOLDER_RE, build_features

DAY = "2023-03-01"


@pytest.fixture
def systmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "systmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def test_a_dangling_link_at_the_scratch_folder_is_a_clear_error_and_nothing_is_made_through_it(tmp_path: Path) -> None:
    target = tmp_path / "gone" / "tmp"
    scratch = tmp_path / "cache" / "tmp"
    scratch.parent.mkdir()
    os.symlink(target, scratch)
    with pytest.raises(ScratchFolderUnusable) as caught:
        with held_scratch_folder(scratch, "ingest-2023-03-01-"):
            pass
    message = str(caught.value)
    assert "symbolic link" in message and str(scratch) in message and str(target) in message
    assert "\n" not in message and "File exists" not in message
    assert os.path.islink(scratch) and not os.path.lexists(tmp_path / "gone")   # the link kept, nothing made


def test_a_dangling_link_above_the_scratch_folder_and_a_file_there_are_named(tmp_path: Path) -> None:
    os.symlink(tmp_path / "nowhere", tmp_path / "cache")
    with pytest.raises(ScratchFolderUnusable, match="cache is a symbolic link"):
        with held_scratch_folder(tmp_path / "cache" / "tmp", "beam-"):
            pass
    (tmp_path / "home2").mkdir()
    (tmp_path / "home2" / "tmp").write_bytes(b"not ours")
    with pytest.raises(ScratchFolderUnusable, match="tmp is not a folder"):
        with held_scratch_folder(tmp_path / "home2" / "tmp", "beam-"):
            pass
    assert (tmp_path / "home2" / "tmp").read_bytes() == b"not ours"


def test_a_live_link_to_a_scratch_disk_still_works(tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    disk.mkdir()
    (tmp_path / "cache").mkdir()
    os.symlink(disk, tmp_path / "cache" / "tmp")
    with held_scratch_folder(tmp_path / "cache" / "tmp", "beam-") as folder:
        assert folder.parent == tmp_path / "cache" / "tmp" and (disk / folder.name / SCRATCH_MARKER).is_file()
    assert os.listdir(disk) == []


def test_the_feature_stage_warns_and_matches_a_build_with_a_real_cache_tmp(tmp_path: Path, systmp: Path) -> None:
    outputs = []
    for name, dangling in (("plain", False), ("linked", True)):
        home = DataHome(tmp_path / name)
        write_day(home, DAY, {"a": png(1), "b": png(2), "c": b"not an image"})
        if dangling:
            home.cache.mkdir(parents=True, exist_ok=True)
            os.symlink(tmp_path / "unmounted" / "tmp", home.cache / "tmp")
        said: list[str] = []
        report = build_features(home, DAY, FeaturesConfig(workers=0), progress=said.append,
                                detector_factory=fake_detector)
        assert report.features_rows + report.rejects_rows == 3
        warned = [line for line in said if "symbolic link" in line]
        assert bool(warned) == dangling
        if dangling:
            assert warned[0].startswith("warning: ") and "cache/tmp" in warned[0]
            assert os.path.islink(home.cache / "tmp") and not os.path.lexists(tmp_path / "unmounted")
        else:
            assert os.listdir(home.cache / "tmp") == []
        assert os.listdir(systmp) == []
        outputs.append([home.partition_file(kind, DAY).read_bytes() for kind in ("image_features", "image_rejects")])
    assert outputs[0] == outputs[1]          # the same bytes with or without the scratch folder


def test_beams_own_removal_of_its_temp_folder_leaves_the_held_folder_marked(tmp_path: Path, systmp: Path) -> None:
    scratch = tmp_path / "cache" / "tmp"
    with held_scratch_folder(scratch, "beam-") as folder:
        with in_memory_pipeline() as pipeline:
            stage._local_tempdir_in(pipeline, folder)
            (Path(pipeline.local_tempdir) / "artifact").write_bytes(b"x")   # what an external transform writes
            _ = pipeline | beam.Create([1]) | beam.Map(lambda x: x)
        # Beam's shutil.rmtree(local_tempdir) has run: the marker is still there, whatever its listing order
        assert os.listdir(folder) == [SCRATCH_MARKER]
    assert os.listdir(scratch) == []
    assert [n for n in os.listdir(systmp) if n.startswith("beam-pipeline-temp")] == []


def test_a_run_killed_while_beam_removed_its_temp_folder_is_swept(tmp_path: Path) -> None:
    scratch = tmp_path / "cache" / "tmp"
    left = scratch / "beam-0123456789ab"          # killed mid-rmtree: Beam's subfolder half gone, the marker kept
    (left / stage.BEAM_TEMP_SUBFOLDER / "half").mkdir(parents=True)
    (left / SCRATCH_MARKER).touch()
    other = scratch / "beam-notours"              # an empty unmarked folder: another program's, left alone
    other.mkdir()
    assert sweep_scratch_folders(scratch, BEAM_FOLDER_RE) == ["beam-0123456789ab"]
    assert os.listdir(scratch) == ["beam-notours"]


def test_a_shutil_rmtree_of_the_pipeline_folder_cannot_reach_the_marker(tmp_path: Path) -> None:
    scratch = tmp_path / "cache" / "tmp"
    with held_scratch_folder(scratch, "beam-") as folder:
        with in_memory_pipeline() as pipeline:
            made = pipeline.local_tempdir
            stage._local_tempdir_in(pipeline, folder)
            assert not os.path.lexists(made)          # Beam's own folder in the system temp folder removed at once
            assert Path(pipeline.local_tempdir).parent == folder
            shutil.rmtree(pipeline.local_tempdir)
            assert (folder / SCRATCH_MARKER).is_file()
            os.mkdir(pipeline.local_tempdir)          # Beam's end-of-run rmtree still finds a folder
            _ = pipeline | beam.Create([1]) | beam.Map(lambda x: x)
