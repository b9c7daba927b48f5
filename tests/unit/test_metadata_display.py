"""What the UI shows: floats rounded for display (files keep full values), the training curve once, no 'n/a'."""
from __future__ import annotations

import json

import dagster as dg

from dagster_project.assets.model import preference_model, preference_model_eval
from dagster_project.metadata import display_float, rounded_markdown, to_metadata
from dagster_project.resources import PickapicHome
from training.synthetic import tiny_config, write_synthetic_version


def test_floats_are_rounded_for_display_only():
    assert display_float(0.7999999999999999) == 0.8
    assert display_float(1031.852134951993) == 1031.9
    assert display_float(0.000123456789) == 0.0001235
    assert display_float(3.0) == 3.0 and display_float(0.0) == 0.0
    meta = to_metadata({"accuracy": 0.6049999999999999, "elo": {"a": 1031.852134951993, "b": [0.30000000000000004]},
                        "table": "| model | elo |\n|---|---|\n| a | 1031.852134951993 |", "count": 7, "name": "v1.20"})
    assert meta["accuracy"] == 0.605 and meta["count"] == 7 and meta["name"] == "v1.20"
    assert meta["elo"].data == {"a": 1031.9, "b": [0.3]}
    assert "| a | 1031.9 |" in meta["table"].value
    assert rounded_markdown("version 2023-02-20-a92f4d0ca5, 0.123456 and 12.5") == "version 2023-02-20-a92f4d0ca5, 0.1235 and 12.5"


def test_model_assets_show_the_curve_once_and_no_missing_numbers(tmp_path):
    version = write_synthetic_version(tmp_path / "home" / "datasets" / "pickapic" / "v1", {
        "train": 32, "validation": 4, "test": 4, "validation_unique": 12, "test_unique": 12}, image_px=32, seed=6)
    config = tiny_config(version.version_dir, "", max_steps=4, eval_every=2)  # data/output dirs: the asset's defaults
    run_config = {k: v for k, v in config.to_dict().items() if k not in ("data_dir", "output_dir")}
    result = dg.materialize([preference_model, preference_model_eval],
                            resources={"data_home": PickapicHome(root=str(tmp_path / "home"))},
                            run_config={"ops": {"preference_model": {"config": run_config}}})
    assert result.success
    trained = result.asset_materializations_for_node("preference_model")[0].metadata
    pictures = [key for key, value in trained.items() if "data:image/png" in str(getattr(value, "value", ""))]
    assert pictures == ["training_curve"]
    assert "n/a" not in trained["metrics_table"].value and "random baseline at that threshold" in trained["metrics_table"].value
    evaluated = result.asset_materializations_for_node("preference_model_eval")[0].metadata
    assert "untrained model accuracy" in evaluated["metrics_table"].value
    for value in (*trained.values(), *evaluated.values()):
        if isinstance(value, dg.FloatMetadataValue) and value.value is not None:
            assert value.value == display_float(value.value)
    # the files keep full precision
    saved = json.loads((tmp_path / "home" / "models" / "preference_model" / "v1" / "eval.json").read_text())
    assert display_float(saved["test_accuracy"]) == evaluated["test_accuracy"].value
