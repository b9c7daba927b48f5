"""Hostile review 15: defects found in the stored key owner pins (split_key_owners) and the launch coordinator."""
from __future__ import annotations

import pytest
from splits_fixtures import pair_row, write_pairs
from test_splits_key_owners import CFG, QUIET, USERS, _kept, _pins, _publish

from formats.home import DataHome
from pipelines.splits.assign import build_splits, normalize_prompt

P = "a lighthouse in a storm"


def _others(day: int = 0) -> list[dict]:
    """One private prompt per user, so every split has rows."""
    return [pair_row(100 + i, u, f"a prompt of user {i}", f"u{i}a", f"u{i}b", day=day)
            for i, u in enumerate([u for s in ("train", "validation", "test") for u in USERS[s]])]


def test_lost_pins_keep_a_prompt_published_before_latest_in_its_split(tmp_path):
    home = DataHome(tmp_path)
    te, tr = USERS["test"][0], USERS["train"][0]
    v1 = [pair_row(1, te, P, "p1", "p2", day=0)] + _others()
    write_pairs(home, v1)
    build_splits(home, CFG, **QUIET)
    assert _kept(home)["1_0"] == "test"
    _publish(home, "2023-03-05-00000000a1")
    # the test user is banned: P leaves pairs; v2 published without P (the pin still holds P -> test)
    v2 = _others()
    write_pairs(home, v2)
    build_splits(home, CFG, **QUIET)
    _publish(home, "2023-03-06-00000000a2")
    assert _pins(home)[("prompt", normalize_prompt(P))][0] == "test"
    # the pins file is lost (disk restore, a home moved without it); a train user types P
    home.table_file("split_key_owners").unlink()
    write_pairs(home, v2 + [pair_row(3, tr, P, "q1", "q2", day=2)])
    build_splits(home, CFG, **QUIET)
    assert "3_0" not in _kept(home), "P, published in test by v1, is now kept in train"



def test_an_unpublished_one_off_owner_mode_build_does_not_decide_the_nightly_owners(tmp_path):
    """README: compare sacrificed_train_rows of both owner modes on the same data. Doing so once (a launchpad run or
    `pickapic build --set splits.owner_mode=heldout_wins`, never published) pins P to test for good: the nightly
    first_use build then drops the train row it keeps on the same pairs without that experiment."""
    import dataclasses

    rows = [pair_row(1, USERS["train"][0], P, "a1", "a2", day=0), pair_row(2, USERS["test"][0], P + "!", "b1", "b2", day=1)]
    rows += _others()
    tried, plain = DataHome(tmp_path / "tried"), DataHome(tmp_path / "plain")
    for home in (tried, plain):
        write_pairs(home, rows)
    build_splits(tried, dataclasses.replace(CFG, owner_mode="heldout_wins"), **QUIET)    # the experiment
    build_splits(tried, dataclasses.replace(CFG, owner_mode="first_use"), **QUIET)       # the nightly build
    build_splits(plain, dataclasses.replace(CFG, owner_mode="first_use"), **QUIET)
    assert _kept(plain)["1_0"] == "train"
    assert _kept(tried) == _kept(plain)


# --- the launch coordinator -------------------------------------------------------------------------------------------

def test_launch_refuses_a_root_given_through_an_env_var_that_is_not_a_home(tmp_path, monkeypatch):
    from dagster_project.coordinator import RunConfigRefused, check_launch

    good = tmp_path / "good"
    good.mkdir()
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("someone's files")
    monkeypatch.setenv("PICKAPIC_HOME", str(good))
    monkeypatch.setenv("REV15_TARGET_HOME", str(other))
    with pytest.raises(RunConfigRefused):      # the same root as a plain string is refused
        check_launch({"resources": {"data_home": {"config": {"root": str(other)}}}})
    # Dagster resolves {"env": ...} to `other` when the run starts (a StringSource field), so its first step refuses it
    with pytest.raises(RunConfigRefused):
        check_launch({"resources": {"data_home": {"config": {"root": {"env": "REV15_TARGET_HOME"}}}}})


def test_launch_refuses_a_run_without_overrides_when_the_settings_file_is_refused(tmp_path, monkeypatch):
    from dagster_project.coordinator import RunConfigRefused, check_launch

    home = tmp_path / "home"
    home.mkdir()
    (home / "pickapic.toml").write_text("[publish]\nkeep_versions = 0\n")
    monkeypatch.setenv("PICKAPIC_HOME", str(home))
    with pytest.raises(RunConfigRefused):       # any override makes check_launch read the file: refused
        check_launch({"ops": {"split_pairs": {"config": {"unique_prompts": 400}}}})
    with pytest.raises(RunConfigRefused):       # none: accepted and queued, and the first step then refuses the file
        check_launch({})


def test_launch_refuses_a_settings_file_whose_feature_staging_folder_the_step_would_refuse(tmp_path, monkeypatch):
    """Left open by rev15, fixed December 5: the feature stage's staging and blob base checks against the home ran
    at launch only when the run overrode a feature setting; a staging folder linked elsewhere, written into the
    file by hand, was queued and refused by the feature step after the day's ingest had run."""
    from dagster_project.coordinator import RunConfigRefused, check_launch

    home = tmp_path / "home"
    home.mkdir()
    elsewhere = tmp_path / "someone-elses-folder"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("not the stage's")
    linked = tmp_path / "staging-link"
    linked.symlink_to(elsewhere, target_is_directory=True)
    monkeypatch.setenv("PICKAPIC_HOME", str(home))
    check_launch({})                                              # the defaults: accepted
    (home / "pickapic.toml").write_text(f'[features]\nstaging = "{linked}"\n')
    with pytest.raises(RunConfigRefused, match="staging"):
        check_launch({})                                          # no override of the feature stage: refused all the same
    with pytest.raises(RunConfigRefused, match="staging"):
        check_launch({"ops": {"split_pairs": {"config": {"unique_prompts": 400}}}})
    assert (elsewhere / "keep.txt").read_text() == "not the stage's"
