"""The feature stage's Beam pipeline keeps its local temp folder in the home's scratch folder (thirty-fourth
session; review rev34d, noticed): ``beam.Pipeline()`` made ``/tmp/beam-pipeline-tempXXXX`` and removed it only when
the run ended, so each killed feature stage left one behind in the system temp folder for good. Now it is a held,
marked folder ``HOME/cache/tmp/beam-XXXX``, removed when the run ends and swept by the next feature stage when a
killed run left it; nothing is made in the system temp folder."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import apache_beam as beam
import pytest
from test_features_fixtures import fake_detector, in_memory_pipeline, png, write_day

from formats.home import DataHome
from formats.locks import SCRATCH_MARKER, held_scratch_folder
from pipelines.features import stage
from pipelines.features.config import FeaturesConfig
from pipelines.features.stage import build_features

DAY = "2023-03-01"


def _beam_temps() -> set[str]:
    return {n for n in os.listdir(tempfile.gettempdir()) if n.startswith("beam-pipeline-temp")}


@pytest.fixture(autouse=True)
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """This process's system temp folder, a private one: another xdist worker's Beam runs never show in it."""
    (tmp_path / "systmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "systmp"))


def test_the_pipeline_temp_folder_is_the_held_scratch_folder(tmp_path: Path) -> None:
    scratch = tmp_path / "cache" / "tmp"
    before = _beam_temps()
    with held_scratch_folder(scratch, "beam-") as folder:
        with in_memory_pipeline() as pipeline:
            stage._local_tempdir_in(pipeline, folder)
            assert pipeline.local_tempdir == str(folder / stage.BEAM_TEMP_SUBFOLDER)   # inside it (fix35f)
            _ = pipeline | beam.Create([1, 2]) | beam.Map(lambda x: x + 1)
        assert _beam_temps() == before == set()   # none made (or left) in the system temp folder
    assert not folder.exists()


def test_the_feature_stage_sweeps_a_killed_runs_beam_folder_and_makes_none_in_tmp(tmp_path: Path) -> None:
    home = DataHome(tmp_path / "home")
    write_day(home, DAY, {"a": png(1), "b": png(2)})
    scratch = home.cache / "tmp"
    left = scratch / "beam-0123456789ab"              # what a killed run leaves: a marked folder nobody holds
    left.mkdir(parents=True)
    (left / SCRATCH_MARKER).touch()
    (left / "artifact").write_bytes(b"x")
    other = scratch / "beam-notours"                  # unmarked: another program's, left alone
    other.mkdir()
    before = _beam_temps()
    report = build_features(home, DAY, FeaturesConfig(workers=0), detector_factory=fake_detector)
    assert report is not None
    assert not left.exists() and other.exists()
    assert sorted(os.listdir(scratch)) == ["beam-notours"]     # the run's own folder removed when it ended
    assert _beam_temps() == before == set()
