"""The fixes of hostile review rev22e (tests/unit/test_hostile_rev22e.py), beyond that file's cases: what the
fixes keep working (``--set`` strings, an integer for a number, empty for none, new files' modes) and the
neighbouring paths they also cover (``--config``, the launch check, the build stamp, ``blob_base``)."""
from __future__ import annotations

import os
import stat

import pytest

from formats.home import DataHome
from formats.settings import INT64_MAX, SettingsError, load, settings_lock_file, settings_path, write_settings


def test_set_values_are_still_parsed_from_text(tmp_path):
    settings = load(tmp_path, assignments=["features.jpeg_quality=90", "app_export.users_snapshot=no"])
    assert settings.config("features").jpeg_quality == 90
    assert settings.config("app_export").users_snapshot is False


def test_the_file_keeps_what_toml_types_promise(tmp_path):
    settings_path(tmp_path).write_text('[features]\nmax_aspect = 4\nstaging = ""\n[curation]\n'
                                       'nsfw_classes = "BUTTOCKS_EXPOSED"\n', encoding="utf-8")
    settings = load(tmp_path)
    assert settings.config("features").max_aspect == 4.0          # an integer is a number
    assert settings.config("features").staging is None            # empty is none
    assert settings.config("curation").nsfw_classes == ("BUTTOCKS_EXPOSED",)


def test_a_config_file_is_as_strict_as_the_home_file(tmp_path):
    other = tmp_path / "night.toml"
    other.write_text('[features]\njpeg_quality = "90"\n', encoding="utf-8")
    with pytest.raises(SettingsError, match="expected"):
        load(tmp_path, config_file=other)
    other.write_text("[splitz]\n", encoding="utf-8")
    with pytest.raises(SettingsError, match=r"\[splitz\].*did you mean \[splits\]"):
        load(tmp_path, config_file=other)


def test_a_key_set_twice_is_refused_by_build(tmp_path, capsys):
    from dagster_project.cli import main

    code = main(["build", "--home", str(tmp_path), "--set", "splits.min_users=5", "--set", "splits.min_users=6"])
    assert code != 0 and "splits.min_users twice" in capsys.readouterr().err


def test_integer_settings_stay_within_64_bits(tmp_path):
    assert load(tmp_path, assignments=[f"train.seed={INT64_MAX}"]).config("train").seed == INT64_MAX
    for assignment in ("train.seed=-1", f"features.max_pixels={2 ** 63}", "train.adam_beta1=1",
                       "train.adam_eps=0"):
        with pytest.raises(SettingsError, match=assignment.split("=")[0]):
            load(tmp_path, assignments=[assignment])
    assert load(tmp_path, assignments=["train.adam_beta1=0"]).config("train").adam_beta1 == 0


def test_errors_of_a_bad_file_are_one_line_naming_it(tmp_path):
    path = settings_path(tmp_path)
    path.write_bytes(b"#" + b"a" * (2 << 20) + b"\n")
    with pytest.raises(SettingsError) as refused:
        load(tmp_path)
    assert "pickapic.toml" in str(refused.value) and "\n" not in str(refused.value) and "aaaa" not in str(refused.value)


def test_the_launch_check_names_a_deeply_nested_file(tmp_path):
    from dagster_project.runconfig import check_run_config

    settings_path(tmp_path).write_text("[splits]\nx = " + "[" * 5000 + "]" * 5000 + "\n", encoding="utf-8")
    with pytest.raises(SettingsError, match="pickapic.toml.*nests"):
        check_run_config({}, DataHome(tmp_path))


def test_the_build_stamp_skips_what_load_refuses(tmp_path):
    from dagster_project import buildstamp

    home = DataHome(tmp_path)
    settings_path(tmp_path).write_text('[curation]\nphrases_file = "a\\u0000b"\n', encoding="utf-8")
    assert buildstamp._moderation_elsewhere(home) == []
    settings_path(tmp_path).write_text("[splits]\nx = " + "[" * 5000 + "]" * 5000 + "\n", encoding="utf-8")
    assert buildstamp._moderation_elsewhere(home) == []


def test_empty_for_none_reaches_the_run_config(tmp_path):
    from dagster_project.build import _override_config

    settings = load(tmp_path, assignments=["features.blob_base=", "features.staging=none"])
    assert _override_config(settings)["features"] == {"blob_base": "", "staging": ""}


def test_a_relative_blob_base_is_refused_too(tmp_path):
    settings_path(tmp_path).write_text('[features]\nblob_base = "../blobs"\n', encoding="utf-8")
    with pytest.raises(SettingsError, match="features.blob_base.*relative"):
        load(tmp_path)


def test_clearing_an_optional_setting_removes_its_line_only(tmp_path):
    path = settings_path(tmp_path)
    path.write_text(f'# mine\n[features]\nstaging = "{tmp_path / "stage"}"\njpeg_quality = 80  # kept\n',
                    encoding="utf-8")
    write_settings(tmp_path, {"features.staging": ""})
    assert path.read_text(encoding="utf-8") == "# mine\n[features]\njpeg_quality = 80  # kept\n"
    write_settings(tmp_path, {"features.staging": ""})       # clearing what is not there: no change
    assert path.read_text(encoding="utf-8") == "# mine\n[features]\njpeg_quality = 80  # kept\n"


def test_a_crlf_file_gets_crlf_in_new_sections_too(tmp_path):
    path = settings_path(tmp_path)
    path.write_bytes(b"[splits]\r\nheldout_fraction = 0.2\r\n")
    write_settings(tmp_path, {"features.jpeg_quality": "80"})
    data = path.read_bytes()
    assert b"jpeg_quality = 80\r\n" in data and data.count(b"\n") == data.count(b"\r\n")
    assert load(tmp_path).config("features").jpeg_quality == 80


def test_modes_of_new_and_secret_files(tmp_path):
    old = os.umask(0o022)
    try:
        write_settings(tmp_path, {"splits.min_users": "5"})
        assert stat.S_IMODE(settings_path(tmp_path).stat().st_mode) == 0o644
        settings_path(tmp_path).write_text(settings_path(tmp_path).read_text() +
                                           '[curation]\npseudonym_secret = "s3cret-value"\n', encoding="utf-8")
        write_settings(tmp_path, {"splits.min_users": "6"})
        assert stat.S_IMODE(settings_path(tmp_path).stat().st_mode) == 0o600
    finally:
        os.umask(old)
    assert settings_lock_file(tmp_path) == tmp_path / ".locks" / "settings.lock"
    assert settings_lock_file(tmp_path).is_file()
