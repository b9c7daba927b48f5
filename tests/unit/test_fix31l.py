"""fix31l: the defects of review rev31l (``tests/unit/test_hostile_rev31l.py``) fixed, and their neighbours.

- the publish's code version as the build planner, the build stamp and Dagster see it
  (``dagster_project.versions.code_version``) holds the data card's code version (``datacard.CARD_VERSION``): a
  card-only change makes ``published_dataset`` stale, and the fast "up to date" answer no longer vouches for it;
- ``training.runs.train_latest`` hands what run retention could not do, an unrecorded run and a diverged run
  trained over to its ``warn`` (the model step's tagged step warnings), ordinary progress to ``progress``.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dagster_project.versions import BY_NAME, CARD_MARK, CODE_VERSIONS, code_version, code_versions
from formats.home import DataHome
from pipelines.publish import datacard

ROOT = Path(__file__).resolve().parents[2]


def test_the_publish_code_version_holds_the_cards_and_no_other_stage_changes() -> None:
    # fix36e: the contracts' digest follows the card's (tests/unit/test_fix36e.py)
    assert code_version("publish").startswith(CODE_VERSIONS["publish"] + CARD_MARK + datacard.CARD_VERSION + "+")
    assert BY_NAME["publish"].code_version == code_version("publish")
    for name in CODE_VERSIONS:
        if name != "publish":
            assert code_version(name) == CODE_VERSIONS[name] == BY_NAME[name].code_version
    assert code_versions() == {name: code_version(name) for name in CODE_VERSIONS}


def test_either_bump_changes_the_publish_code_version(monkeypatch: pytest.MonkeyPatch) -> None:
    before = code_version("publish")
    monkeypatch.setattr(datacard, "CARD_VERSION", f"{datacard.CARD_VERSION}+next")
    after_card = code_version("publish")
    monkeypatch.setitem(CODE_VERSIONS, "publish", CODE_VERSIONS["publish"] + "9")
    after_both = code_version("publish")
    assert len({before, after_card, after_both}) == 3
    assert code_version("model") == CODE_VERSIONS["model"]      # the model's own version does not move with it


def test_the_dagster_asset_records_the_same_code_version() -> None:
    import dagster as dg

    from dagster_project.assets.publish import published_dataset

    assert published_dataset.code_versions_by_key[dg.AssetKey("published_dataset")] == code_version("publish")


def test_a_card_bump_stales_the_recorded_publish_and_the_model_after_it(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """What a publish step records (``runtime_version``) and what the planner expects (``stage_version``) agree
    before and after a card bump, and the bump moves both: the publish step and the model downstream are stale."""
    import dagster as dg

    from dagster_project.staleness import runtime_version, stage_version
    from pipelines.publish.config import PublishConfig

    home = DataHome(tmp_path / "home")

    def upstream(name: str, day: str | None) -> str | None:
        return None              # nothing recorded, as in the ephemeral instance below

    with dg.DagsterInstance.ephemeral() as instance:
        recorded = runtime_version(instance, "publish", home, PublishConfig())
        assert recorded == stage_version(BY_NAME["publish"], home, PublishConfig(), upstream, [], None)
        monkeypatch.setattr(datacard, "CARD_VERSION", f"{datacard.CARD_VERSION}+next")
        planned = stage_version(BY_NAME["publish"], home, PublishConfig(), upstream, [], None)
        assert planned != recorded
        assert runtime_version(instance, "publish", home, PublishConfig()) == planned
    from training.synthetic import tiny_config

    train = tiny_config("", "")
    model_before = stage_version(BY_NAME["model"], home, train, lambda n, d: recorded, [], None)
    model_after = stage_version(BY_NAME["model"], home, train, lambda n, d: planned, [], None)
    assert model_before != model_after


def test_the_build_stamp_is_not_up_to_date_after_a_card_bump(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    """The fast answer of ``pickapic build`` records the code versions: a card-only change must not find the
    stamp a build wrote before it (it would answer "up to date" without planning)."""
    from dagster_project import buildstamp

    home = DataHome(tmp_path / "home")
    before = buildstamp.stamp_key(home)
    assert buildstamp.stamp_key(home) == before                       # deterministic
    monkeypatch.setattr(datacard, "CARD_VERSION", f"{datacard.CARD_VERSION}+next")
    assert buildstamp.stamp_key(home) != before


def test_importing_the_versions_stays_cheap() -> None:
    """``dagster_project.versions`` reads the card's version only when asked: importing it loads neither the card's
    module nor pyarrow (the build stamp's path imports it first)."""
    code = ("import sys, dagster_project.versions as v; "
            "print('pipelines.publish.datacard' in sys.modules, 'pyarrow' in sys.modules, 'dagster' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert out.stdout.split() == ["False", "False", "False"], out


# --------------------------------------------------------------------------- train_latest's notes

class _Trained:
    def __init__(self, curve_path: Path) -> None:
        self.curve_path = curve_path

    def metadata(self) -> dict:
        return {"steps": 1}


def _latest(tmp_path: Path) -> DataHome:
    from training.synthetic import write_synthetic_version

    home = DataHome(tmp_path / "home")
    sizes = {"train": 8, "validation": 4, "test": 4, "validation_unique": 4, "test_unique": 4}
    write_synthetic_version(home.datasets / "2023-03-01-0000000000", sizes, image_px=16, shards_per_split=1)
    return home


def _stub_training(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, *, restart: bool = True) -> None:
    import training.train
    from training import runs

    curve = tmp_path / "curve.png"
    curve.write_bytes(b"\x89PNG\r\n\x1a\n")

    def train(config, on_event=None):
        on_event({"step": 1, "loss": 0.5})
        if restart:
            on_event({"event": "restart", "diverged_step": 3, "changed": "learning_rate",
                      "message": "run diverged at step 3 with the previous recipe; learning_rate changed: training "
                                 "it over from step 0"})
        return _Trained(curve)

    monkeypatch.setattr(training.train, "train", train)
    monkeypatch.setattr(runs, "_record_run", lambda home, version: "the record of runs X was not written (EROFS)")
    monkeypatch.setattr(runs, "apply_run_retention", lambda home, keep, protect=(): runs.Retention(
        deleted=["2023-02-01-0000000000"], kept=[], left={"2023-02-02-0000000000": "left whole: a mount point",
                                                          "record": "the record of runs Y was not written"}))


def test_problems_go_to_warn_and_progress_keeps_the_rest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from training import runs
    from training.synthetic import tiny_config

    home = _latest(tmp_path)
    _stub_training(monkeypatch, tmp_path)
    progress: list[str] = []
    warned: list[str] = []
    done = runs.train_latest(home, tiny_config("", ""), progress=progress.append, keep_runs=1, warn=warned.append)
    assert warned == ["the record of runs X was not written (EROFS)",
                      "run diverged at step 3 with the previous recipe; learning_rate changed: training it over "
                      "from step 0",
                      "model run 2023-02-02-0000000000: left whole: a mount point",
                      "the record of runs Y was not written"]
    assert progress == ["step 1: loss 0.5000",
                        "deleted the model run 2023-02-01-0000000000 (models.keep_runs = 1)"]
    assert done.retention is not None and "record" in done.retention.left      # still in the result too


def test_without_warn_every_note_goes_to_progress_as_before(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from training import runs
    from training.synthetic import tiny_config

    home = _latest(tmp_path)
    _stub_training(monkeypatch, tmp_path, restart=False)
    progress: list[str] = []
    runs.train_latest(home, tiny_config("", ""), progress=progress.append, keep_runs=1)
    assert progress == ["the record of runs X was not written (EROFS)", "step 1: loss 0.5000",
                        "deleted the model run 2023-02-01-0000000000 (models.keep_runs = 1)",
                        "model run 2023-02-02-0000000000: left whole: a mount point",
                        "the record of runs Y was not written"]
    runs.train_latest(home, tiny_config("", ""), keep_runs=1)        # neither given: silent, nothing raises


def test_the_model_step_logs_progress_at_info_and_problems_as_tagged_warnings(tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch
                                                                               ) -> None:
    """The real ``preference_model`` asset through Dagster (training stubbed): the step's loss lines and the runs it
    deleted stay at INFO, untagged; each problem is one tagged warning, which ``build._step_warnings`` passes on."""
    import logging

    import dagster as dg

    from dagster_project.assets.model import preference_model
    from dagster_project.build import QUIET_LOGS, _step_warnings
    from dagster_project.resources import PickapicHome
    from dagster_project.steplog import MARK

    home = _latest(tmp_path)
    _stub_training(monkeypatch, tmp_path)
    with dg.DagsterInstance.ephemeral() as instance:
        result = dg.materialize([preference_model], instance=instance, run_config=QUIET_LOGS,
                                resources={"data_home": PickapicHome(root=str(home.root))})
        assert result.success
        entries = [(e.level, e.user_message) for e in instance.all_logs(result.run_id) if e.dagster_event is None]
        warned = _step_warnings(instance, result.run_id)
    info = [m for level, m in entries if level == logging.INFO]
    assert "step 1: loss 0.5000" in info
    assert "deleted the model run 2023-02-01-0000000000 (models.keep_runs = 3)" in info
    assert not any(m.startswith(MARK) for m in info)
    assert warned == ["the record of runs X was not written (EROFS)",
                      "run diverged at step 3 with the previous recipe; learning_rate changed: training it over "
                      "from step 0",
                      "model run 2023-02-02-0000000000: left whole: a mount point",
                      "the record of runs Y was not written"]
