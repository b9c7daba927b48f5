"""The simulator's command line: flag validation, --no-images, tie rate at scale."""
from __future__ import annotations

import argparse
import json

import pyarrow.parquet as pq
import pytest

from formats.home import DataHome
from simulator import SimConfig, simulate
from simulator.__main__ import main
from simulator.cli import add_arguments, run_from_args


@pytest.mark.parametrize("flags, message", [
    (["--days", "0"], "--days must be >= 1, got 0"),
    (["--days", "two"], "--days must be an integer, got 'two'"),
    (["--start-date", "2023-02-30"], "--start-date must be YYYY-MM-DD, got '2023-02-30'"),
    (["--start-date", "2022-12-31"], "2022-12-31 is before 2023-01-01"),
    (["--image-size", "16"], "--image-size must be >= 32, got 16"),
    (["--image-size", "4096"], "--image-size must be an integer in 32..2048, got 4096"),
    (["--users", "2"], "--users must be >= 4, got 2"),
    (["--rankings-per-day", "5"], "--rankings-per-day must be >= 10, got 5"),
    (["--seed", "-1"], "--seed must be >= 0, got -1"),
])
def test_bad_flags_name_the_value(tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as exc:
        main(["--home", str(tmp_path), "--quiet", *flags])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "raw").exists()


def test_config_validation_names_the_value():
    with pytest.raises(ValueError, match="'2023-13-01'"):
        SimConfig(start_date="2023-13-01").validate()
    with pytest.raises(ValueError, match="defect_rate"):
        SimConfig(defect_rate=0.9).validate()


def test_no_images_writes_metadata_only(tmp_path, capsys):
    assert main(["--home", str(tmp_path), "--days", "2", "--users", "10", "--rankings-per-day", "20",
                 "--no-images", "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["blobs_written"] == 0 and summary["rankings"] == 40
    home = DataHome(tmp_path)
    assert not home.raw_images.exists() or not any(home.raw_images.iterdir())
    assert home.raw_days() == ["2023-02-13", "2023-02-14"]
    assert home.banned_users_file.read_text().strip() and home.nsfw_phrases_file.read_text().count("\n") >= 30
    defects = pq.read_table(home.ground_truth / "defects.parquet").column("expected").to_pylist()
    assert not any(e.startswith("reject:") for e in defects)
    duplicates = pq.read_table(home.ground_truth / "duplicates.parquet")
    assert duplicates.num_rows and duplicates.column("phash_distance").null_count == duplicates.num_rows


def test_run_from_args_with_progress(tmp_path):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--home", str(tmp_path), "--days", "1", "--users", "6", "--rankings-per-day", "12",
                              "--image-size", "32", "--start-date", "2023-03-01"])
    report = run_from_args(args)
    meta = report.metadata()
    json.dumps(meta)
    assert meta["rankings"] == 12 and meta["blobs_written"] > 0
    assert meta["first_day"] == meta["last_day"] == "2023-03-01"
    assert "| defect | rows |" in meta["defects"]


def test_tie_rate_and_signal_at_scale(tmp_path):
    config = SimConfig(days=2, start_date="2023-03-01", users=300, rankings_per_day=6000, no_images=True, seed=1)
    report = simulate(DataHome(tmp_path), config)
    assert 0.11 <= report.tie_rate <= 0.15
    assert 0.72 <= report.bayes_optimal_accuracy <= 0.85
    models = json.loads((tmp_path / "ground_truth" / "models.json").read_text())
    by_rank = sorted((m for m in models.values() if m.get("empirical_win_rate") is not None),
                     key=lambda m: m["true_rank"])
    rates = [m["empirical_win_rate"] for m in by_rank]
    assert rates == sorted(rates, reverse=True)
