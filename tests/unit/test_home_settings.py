"""The [evaluation] setting: ground truth is read only when the home names its folder."""
import json

import pytest

from dagster_project.home_settings import ground_truth_dir
from formats.home import DataHome
from formats.settings import SettingsError, load, write_settings
from training import runs


def test_truth_is_not_read_unless_the_home_opts_in(tmp_path):
    home = DataHome(tmp_path / "home")
    home.ground_truth.mkdir(parents=True)  # a simulated home: the folder is there
    assert ground_truth_dir(home) is None  # production default: nothing reads it
    write_settings(home.root, {"evaluation.ground_truth": "ground_truth"})
    assert ground_truth_dir(home) == home.ground_truth
    write_settings(home.root, {"evaluation.ground_truth": "elsewhere"})
    with pytest.raises(FileNotFoundError, match="evaluation.ground_truth = 'elsewhere'"):
        ground_truth_dir(home)


@pytest.mark.parametrize("value", ["/srv/truth", "../truth", "a/../../b"])
def test_ground_truth_stays_inside_the_home(value):
    with pytest.raises(SettingsError, match="must be a folder inside the data home"):
        load(None, assignments=[f"evaluation.ground_truth={value}"])


def test_true_quality_table_uses_the_names_pairs_use(tmp_path):
    models = tmp_path / "models.json"
    models.write_text(json.dumps({"org/model-a": {"true_quality": 0.7}, "org/model-b": {"true_quality": None}}))
    out = runs.true_quality_table(models, lambda model_id: model_id.rsplit("/", 1)[-1], tmp_path / "q.json")
    assert json.loads(out.read_text()) == {"model-a": {"quality": 0.7, "model_id": "org/model-a"}}


def test_run_folders_and_missing_model_errors(tmp_path):
    home = DataHome(tmp_path / "home")
    assert runs.run_dir(home, tmp_path / "v7") == home.models / "preference_model" / "v7"
    assert not runs.is_evaluated(home)
    with pytest.raises(FileNotFoundError, match="publish a dataset version first"):
        runs.trained_model(home)
