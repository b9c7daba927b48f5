"""Stage settings: one description per setting feeds the settings file, the flags and Dagster's run config."""
from __future__ import annotations

import argparse
import os
import stat

import pytest

from formats.settings import (
    MAX_PROCESSES,
    MAX_THREADS,
    SECTIONS,
    SettingsError,
    add_flags,
    config_digest,
    flag_values,
    knobs,
    load,
    settings_path,
    write_settings,
)
from pipelines.curation.decisions import EXPLICIT_CLASSES, FLAG_THRESHOLD, CurationConfig
from pipelines.features.nsfw import NMS_SCORE_THRESHOLD


def test_every_section_describes_every_field_with_a_checkable_type():
    for section in SECTIONS:
        specs = knobs(section)
        assert specs, section
        for spec in specs.values():
            assert spec.allowed()
            if spec.kind in (int, float) and spec.in_file and spec.name not in ("seed", "min_gs", "max_gs", "adam_beta1",
                                                                                "adam_beta2", "adam_eps", "max_length"):
                assert spec.minimum is not None, f"{spec.key} has no range"


def test_home_file_then_config_file_then_set(tmp_path):
    settings_path(tmp_path).write_text("[splits]\nheldout_fraction = 0.2\nunique_prompts = 40\n[dedup]\nk = 4\n")
    other = tmp_path / "night.toml"
    other.write_text("[splits]\nunique_prompts = 30\n")
    settings = load(tmp_path, config_file=other, assignments=["dedup.k=5"])
    splits = settings.config("splits")
    assert (splits.heldout_fraction, splits.unique_prompts, settings.config("dedup").k) == (0.2, 30, 5)
    assert settings.sources["splits.heldout_fraction"].startswith("pickapic.toml")
    assert settings.sources["splits.unique_prompts"] == f"--config {other}"
    assert settings.sources["dedup.k"] == "--set"
    assert settings.config("publish").max_samples_per_shard == 10_000  # untouched sections keep their defaults



def test_every_process_and_thread_count_has_an_upper_bound():
    """A launchpad or settings value of workers = 100000 would start that many processes or threads
    before anything failed: every parallelism setting is bounded."""
    counted = [spec for section in SECTIONS for spec in knobs(section).values()
               if spec.kind is int and ("worker" in spec.name or "thread" in spec.name)]
    assert len(counted) >= 9, [spec.key for spec in counted]
    for spec in counted:
        assert spec.maximum is not None and spec.maximum <= MAX_THREADS, f"{spec.key} has no upper bound"
        if "worker" in spec.name:
            assert spec.maximum <= MAX_PROCESSES, spec.key


@pytest.mark.parametrize("assignment", ["publish.workers=100000", "features.workers=5000", "ingest.workers=300",
                                        "features.nsfw_threads=100000", "dedup.threads=1000000"])
def test_a_huge_worker_count_is_refused(tmp_path, assignment):
    with pytest.raises(SettingsError, match="is out of range"):
        load(tmp_path, assignments=[assignment])

@pytest.mark.parametrize("assignment, message", [
    ("splits.heldout_fraction=1.5", "splits.heldout_fraction = 1.5 (--set) is out of range: allowed a number, 0 <= value < 1"),
    ("splits.heldout_fractin=0.1", "unknown setting 'splits.heldout_fractin' (--set): did you mean splits.heldout_fraction?"),
    ("split.heldout_fraction=0.1", "did you mean [splits]?"),
    ("dedup.k=seven", "dedup.k = 'seven' (--set) is refused: expected an integer, 0 <= value <= 63"),
    ("curation.nsfw_threshold=0.1", "curation.nsfw_threshold = 0.1 (--set) is out of range: allowed a number, 0.25 <= value <= 1"),
    ("curation.nsfw_classes=FACE_FEMALE,NOT_A_CLASS", "curation.nsfw_classes"),
    ("features.jpeg_quality=200", "features.jpeg_quality = 200 (--set) is out of range: allowed an integer, 1 <= value <= 95"),
    ("train.preset=huge", "train.preset = 'huge' (--set) is out of range: allowed one of 'demo', 'paper'"),
    ("publish.keep_versions=0", "publish.keep_versions = 0 (--set) is out of range: allowed an integer, 1 <= value"),
    ("curation.pseudonym_secret=hunter2", "a secret is only read from HOME/pickapic.toml"),
    ("splits", "expected SECTION.NAME=VALUE"),
])
def test_refusals_name_the_key_and_what_is_allowed(tmp_path, assignment, message):
    with pytest.raises(SettingsError) as error:
        load(tmp_path, assignments=[assignment])
    assert message in str(error.value)


def test_bad_settings_file_is_refused_naming_it(tmp_path):
    settings_path(tmp_path).write_text("[splits]\nheldout_fraction = 'lots'\n")
    with pytest.raises(SettingsError, match=r"splits.heldout_fraction = 'lots' \(pickapic.toml of the data home\)"):
        load(tmp_path)
    settings_path(tmp_path).write_text("[splits\n")
    with pytest.raises(SettingsError, match="is not valid TOML"):
        load(tmp_path)
    settings_path(tmp_path).write_text("heldout_fraction = 0.1\n")
    with pytest.raises(SettingsError, match=r"must be a \[section\] table"):
        load(tmp_path)


def test_cross_field_rules_of_the_dataclass_still_apply(tmp_path):
    with pytest.raises(SettingsError, match=r"\[ingest\].*min_gs 30.0 must not exceed max_gs 20.0"):
        load(tmp_path, assignments=["ingest.min_gs=30", "ingest.max_gs=20"])
    with pytest.raises(SettingsError, match="min_unique_rows=50 exceeds unique_prompts=20"):
        load(tmp_path, assignments=["splits.min_unique_rows=50", "splits.unique_prompts=20"])


def test_one_nsfw_threshold_and_class_list_below_nudenet_cutoff_refused():
    config = CurationConfig()
    assert config.nsfw_threshold == FLAG_THRESHOLD and config.nsfw_classes == EXPLICIT_CLASSES
    with pytest.raises(ValueError, match=f"{NMS_SCORE_THRESHOLD}"):
        CurationConfig(nsfw_threshold=0.2)


def test_write_keeps_comments_validates_and_honours_the_umask(tmp_path):
    path = settings_path(tmp_path)
    old = os.umask(0o022)
    try:    # the hand-made file too: a rewrite keeps its owner's mode, which the test's umask must not decide
        path.write_text("# my notes\n[splits]\nheldout_fraction = 0.2  # tuned by hand\n")
        write_settings(tmp_path, {"splits.unique_prompts": 100, "train.max_steps": 30})
    finally:
        os.umask(old)
    text = path.read_text()
    assert "# my notes" in text and "# tuned by hand" in text and "unique_prompts = 100" in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert load(tmp_path).config("train").max_steps == 30
    with pytest.raises(SettingsError, match="out of range"):
        write_settings(tmp_path, {"splits.unique_prompts": -1})
    assert "unique_prompts = 100" in path.read_text()  # a refused value changes nothing
    write_settings(tmp_path, {"curation.pseudonym_secret": "release-secret"})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # a file holding a secret is the owner's only


def test_digest_follows_output_settings_only_and_hides_secrets():
    base = load(None)
    assert base.digest("dedup") != load(None, assignments=["dedup.k=5"]).digest("dedup")
    assert base.digest("dedup") == load(None, assignments=["dedup.threads=1"]).digest("dedup")
    assert base.digest("publish") == load(None, assignments=["publish.keep_versions=9"]).digest("publish")
    assert base.digest("publish") != load(None, assignments=["publish.max_samples_per_shard=50"]).digest("publish")
    secret = CurationConfig(pseudonym_secret="correct horse battery staple")
    assert config_digest("curation", secret) != config_digest("curation", CurationConfig())
    assert "correct horse" not in str(base.describe())


def test_flags_come_from_the_same_description(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_flags(parser, "splits")
    args = parser.parse_args(["--heldout-fraction", "0.25", "--min-unique-rows", "3"])
    assert flag_values("splits", args) == {"heldout_fraction": 0.25, "min_unique_rows": 3}
    with pytest.raises(SystemExit):
        parser.parse_args(["--heldout-fraction", "2"])
    assert "splits.heldout_fraction = 2.0 (command line) is out of range" in capsys.readouterr().err
    dedup = argparse.ArgumentParser()
    add_flags(dedup, "dedup")
    assert flag_values("dedup", dedup.parse_args(["--no-dhash-bands"])) == {"dhash_bands": False}
    curation = argparse.ArgumentParser()
    add_flags(curation, "curation")
    assert "--pseudonym-secret" not in curation.format_help()  # secrets are never flags


def test_stage_command_lines_read_the_home_file(tmp_path):
    from pipelines.splits import assign as splits

    settings_path(tmp_path).write_text("[splits]\nunique_prompts = 70\n")
    parser = argparse.ArgumentParser()
    add_flags(parser, "splits")
    from formats.settings import stage_config

    assert stage_config(tmp_path, "splits", parser.parse_args([])).unique_prompts == 70
    assert stage_config(tmp_path, "splits", parser.parse_args(["--unique-prompts", "90"])).unique_prompts == 90
    with pytest.raises(FileNotFoundError, match="pairs not found"):
        splits.main(["--home", str(tmp_path)])


def test_a_mistyped_secret_is_never_echoed_in_the_error(tmp_path) -> None:
    """An unquoted number (or a list) given for a secret setting is refused without its value."""
    from formats.settings import Settings, SettingsError

    for value in (918273645546372819, ["hunter2-is-my-secret"], {"k": "hunter2-is-my-secret"}):
        with pytest.raises(SettingsError) as caught:
            Settings().with_values({"curation.pseudonym_secret": value}, "pickapic.toml")
        message = str(caught.value)
        assert "curation.pseudonym_secret = ***" in message and "expected a string" in message
        assert "918273645546372819" not in message and "hunter2" not in message
