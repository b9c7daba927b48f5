"""The `pickapic` command: --help everywhere, one-line errors for bad flags and missing data."""
import pytest

from dagster_project.cli import main

SUBCOMMANDS = ["simulate", "build", "settings", "query", "export", "train", "demo", "serve", "ui"]


@pytest.mark.parametrize("sub", [None, *SUBCOMMANDS])
def test_help_for_every_subcommand(sub, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([sub, "--help"] if sub else ["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "usage: pickapic" in out
    if sub not in (None, "ui"):
        assert "--home" in out


def test_build_without_raw_data_is_one_clear_line(tmp_path, capsys):
    assert main(["build", "--home", str(tmp_path / "empty")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "no raw partitions" in err[0] and "pickapic simulate" in err[0]


def test_build_with_a_range_outside_the_raw_days(tmp_path, capsys):
    (tmp_path / "raw" / "app_logs" / "dt=2023-02-13").mkdir(parents=True)
    assert main(["build", "--home", str(tmp_path), "--from", "2024-01-01"]) == 1
    assert "no raw partition between 2024-01-01" in capsys.readouterr().err


def test_bad_flag_value_exits_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["simulate", "--days", "0"])
    assert exit_info.value.code == 2
    assert "--days" in capsys.readouterr().err


def test_home_defaults_to_environment(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PICKAPIC_HOME", str(tmp_path / "from-env"))
    assert main(["build"]) == 1
    assert str(tmp_path / "from-env") in capsys.readouterr().err


def test_second_build_refuses_while_one_holds_the_lock(tmp_path):
    from dagster_project.build import BuildError, build_lock
    from formats.home import DataHome

    home = DataHome(tmp_path)
    with build_lock(home):
        with pytest.raises(BuildError, match="another build is running"):
            with build_lock(home):
                pass
    with build_lock(home):  # released after the first build ends
        pass


def test_build_rejects_a_malformed_day(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["build", "--from", "2023-13-01"])
    assert exit_info.value.code == 2
    assert "'2023-13-01' is not a day" in capsys.readouterr().err


def test_build_refuses_days_in_the_future(tmp_path, capsys):
    (tmp_path / "raw" / "app_logs" / "dt=2999-06-01").mkdir(parents=True)
    assert main(["build", "--home", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "raw day(s) 2999-06-01 lie in the future" in err


def test_build_refuses_a_bad_setting_before_anything_runs(tmp_path, capsys):
    (tmp_path / "raw" / "app_logs" / "dt=2023-02-13").mkdir(parents=True)
    assert main(["build", "--home", str(tmp_path), "--set", "splits.heldout_fraction=1.5"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["pickapic build: error: setting splits.heldout_fraction = 1.5 (--set) is out of range: "
                   "allowed a number, 0 <= value < 1"]
    assert not (tmp_path / "dagster").exists()  # refused before any Dagster instance was made
    (tmp_path / "pickapic.toml").write_text("[dedup]\nbands = 99\n")
    assert main(["build", "--home", str(tmp_path)]) == 1
    assert "dedup.bands = 99 (pickapic.toml of the data home) is out of range: allowed an integer, 1 <= value <= 16" \
        in capsys.readouterr().err


def test_settings_command_lists_validates_and_writes(tmp_path, capsys):
    assert main(["settings", "--home", str(tmp_path), "--section", "splits"]) == 0
    out = capsys.readouterr().out
    assert "splits.heldout_fraction = 0.06  [default; default 0.06; a number, 0 <= value < 1]" in out
    assert main(["settings", "--home", str(tmp_path), "--set", "splits.min_unique_rows=5", "--write"]) == 0
    assert "min_unique_rows = 5" in (tmp_path / "pickapic.toml").read_text()
    assert main(["settings", "--home", str(tmp_path), "--set", "dedup.k=64"]) == 1
    assert "dedup.k = 64 (--set) is out of range" in capsys.readouterr().err
