"""A few trainer steps on tiny shards: loss goes down, outputs are written, resume is exact."""
import json

import pytest
import torch
from safetensors.torch import load_file

from formats.settings import SettingsError
from training.cli import add_arguments, config_from_args
from training.config import PRESETS, TrainConfig, preset
from training.evaluate import evaluate_model
from training.synthetic import tiny_config, write_synthetic_version
from training.train import STATE_FILE, train


@pytest.fixture(scope="module")
def version(tmp_path_factory):
    root = tmp_path_factory.mktemp("home") / "datasets" / "pickapic" / "v1"
    sizes = {"train": 96, "validation": 8, "test": 8, "validation_unique": 32, "test_unique": 32}
    write_synthetic_version(root, sizes, image_px=40, seed=1, shards_per_split=3)
    return root.parent / "latest"  # through the 'latest' link, as the lead passes it


@pytest.fixture(scope="module")
def trained(version, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    events = []
    result = train(tiny_config(version, out, max_steps=12, eval_every=6), on_event=events.append)
    return result, events


def test_few_steps_reduce_the_loss(trained):
    result, events = trained
    evals = [e for e in events if e["event"] == "eval"]
    assert [e["step"] for e in evals] == [0, 6, 12]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"]
    losses = [e["loss"] for e in events if e["event"] == "train"]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    assert result.steps == 12 and result.best_step in (0, 6, 12)


def test_outputs_metrics_curve_and_best_checkpoint(trained, version):
    result, _ = trained
    metrics = json.loads(result.metrics_path.read_text())
    assert metrics["steps"] == 12 and metrics["config"]["max_steps"] == 12
    assert {"test_accuracy", "threshold", "random_baseline"} <= set(metrics["test"])
    assert result.curve_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert TrainConfig.load(result.best_dir).max_steps == 12  # config saved inside the checkpoint
    assert 0 <= result.test.test_accuracy <= 1 and result.test.n_test == 32
    ev = evaluate_model(result.best_dir, version, num_workers=0, device="cpu")
    assert ev.test_accuracy == pytest.approx(result.test.test_accuracy)
    assert ev.untrained_test_accuracy is not None
    meta = ev.metadata()
    assert "| test accuracy on test_unique (trained) |" in meta["metrics_table"] and "n/a" not in meta["metrics_table"]
    # the baseline printed next to the accuracy is a random scorer's at the SAME threshold
    ties = ev.test_ties / ev.n_test
    assert ev.random_baseline == pytest.approx(ties * (ev.threshold + (1 - ev.threshold) / 2) + 0.5 * (1 - ties))
    assert ev.random_baseline_best == pytest.approx(ties * (ev.random_threshold + (1 - ev.random_threshold) / 2)
                                                    + 0.5 * (1 - ties))
    json.dumps(meta)
    json.dumps(result.metadata())


class Interrupt(Exception):
    pass


def test_resume_continues_exactly(version, tmp_path):
    straight = train(tiny_config(version, tmp_path / "a", max_steps=8, eval_every=4))

    def crash_after_checkpoint(event):
        if event["event"] == "train" and event["step"] == 6:
            raise Interrupt

    with pytest.raises(Interrupt):
        train(tiny_config(version, tmp_path / "b", max_steps=8, eval_every=4), on_event=crash_after_checkpoint)
    state = torch.load(tmp_path / "b" / "checkpoints" / "last" / STATE_FILE, weights_only=True)  # plain data only
    assert state["step"] == 4 and state["optimizer"]["state"]  # Adam moments saved
    resumed = train(tiny_config(version, tmp_path / "b", max_steps=8, eval_every=4))
    assert resumed.resumed_from_step == 4 and resumed.steps == 8
    final_a = load_file(tmp_path / "a" / "checkpoints" / "last" / "model.safetensors")
    final_b = load_file(tmp_path / "b" / "checkpoints" / "last" / "model.safetensors")
    for name, value in final_a.items():
        assert torch.equal(value, final_b[name]), name  # same data order, optimizer state and schedule
    def losses(result):
        return [(h["step"], h["loss"]) for h in result.history if "loss" in h]
    assert losses(resumed) == losses(straight)
    # a finished run only re-evaluates; a changed recipe refuses to resume
    again = train(tiny_config(version, tmp_path / "b", max_steps=8, eval_every=4))
    assert again.resumed_from_step == 8
    with pytest.raises(ValueError, match="learning_rate"):
        train(tiny_config(version, tmp_path / "b", learning_rate=1.0))


def test_a_resumed_run_logs_the_same_losses_when_checkpoints_fall_inside_a_logging_window(version, tmp_path):
    """eval_every 4 and log_every 3: the checkpoint at step 8 falls inside the window 7-9. The loss summed
    since the last log line is in the trainer state, so the resumed run logs step 9's mean over steps
    7-9 as the uninterrupted run does (it logged step 9 alone before)."""
    kwargs = dict(max_steps=12, eval_every=4, log_every=3)
    straight = train(tiny_config(version, tmp_path / "a", **kwargs))

    def crash_after_step_nine(event):
        if event["event"] == "train" and event["step"] == 9:
            raise Interrupt

    with pytest.raises(Interrupt):
        train(tiny_config(version, tmp_path / "b", **kwargs), on_event=crash_after_step_nine)
    state = torch.load(tmp_path / "b" / "checkpoints" / "last" / STATE_FILE, weights_only=True)
    assert state["step"] == 8 and state["running_loss"][1] == 2          # steps 7 and 8 summed, not yet logged
    resumed = train(tiny_config(version, tmp_path / "b", **kwargs))
    assert resumed.resumed_from_step == 8

    def losses(result):
        return [(h["step"], h["loss"]) for h in result.history if "loss" in h]
    assert losses(resumed) == losses(straight) and [s for s, _ in losses(straight)] == [3, 6, 9, 12]


def test_cli_flags_map_onto_presets():
    import argparse
    args = add_arguments(argparse.ArgumentParser()).parse_args(
        ["--data-dir", "d", "--output-dir", "o", "--preset", "paper", "--max-steps", "3", "--init-from", "/m"])
    config = config_from_args(args)
    assert config == preset("paper", data_dir="d", output_dir="o", max_steps=3, init_from="/m")
    assert (config.learning_rate, config.weight_decay, config.warmup_steps, config.batch_size, config.seed,
            config.eval_every, config.grad_clip) == (3e-6, 0.3, 500, 128, 42, 100, 1.0)


def test_dataclass_defaults_are_the_demo_preset():
    assert TrainConfig() == preset("demo")  # the Dagster run config defaults come from the dataclass
    with pytest.raises(ValueError, match="image_size=30 is not a multiple of patch_size=8"):
        preset("demo", image_size=30)
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        preset("huge")


@pytest.mark.parametrize("build", [
    lambda: TrainConfig(num_workers=100_000),
    lambda: TrainConfig.from_dict({**TrainConfig().to_dict(), "cpu_threads": 5000}),   # a train_config.json
    lambda: preset("paper", num_workers=257),
    lambda: TrainConfig.from_settings(preset="paper", cpu_threads=10**6),
    lambda: TrainConfig(heads=0),          # was a ZeroDivisionError in the width checks
    lambda: TrainConfig(preset="huge"),
    lambda: TrainConfig(learning_rate=0.0),
    lambda: TrainConfig(shuffle_buffer=True),
])
def test_every_field_is_checked_as_the_settings_file_checks_it(build):
    """``__post_init__`` runs ``check_fields`` (types, ranges, choices of every field, also the ones a home's
    settings file does not hold): a config built in code, from a stored ``train_config.json`` or from a
    preset is refused above the process and thread bounds, as ``pickapic.toml`` and the flags are."""
    with pytest.raises(SettingsError, match=r"setting train\.\w+ = .* \(TrainConfig\) is (out of range|refused)"):
        build()


def test_every_preset_passes_the_field_checks():
    for name in PRESETS:
        assert preset(name, data_dir="d", output_dir="o").preset == name


def test_the_state_records_the_world_size_and_a_state_without_it_still_resumes(version, tmp_path):
    """A checkpoint records the DDP world size (1 here) beside every rank's RNG state; a mistyped entry is
    refused like any other, and a state written before it was recorded resumes (nothing to compare)."""
    run = tmp_path / "run"
    train(tiny_config(version, run, max_steps=2, eval_every=2))
    state_path = run / "checkpoints" / "last" / STATE_FILE
    state = torch.load(state_path, weights_only=True)
    assert state["world_size"] == 1 and len(state["torch_rng"]) == 1
    for bad in (0, "2", 1.0):
        torch.save({**state, "world_size": bad}, state_path)
        with pytest.raises(ValueError, match=r"mistyped trainer state entries \['world_size'\]"):
            train(tiny_config(version, run, max_steps=3, eval_every=2))
    del state["world_size"]
    torch.save(state, state_path)
    assert train(tiny_config(version, run, max_steps=3, eval_every=2)).steps == 3
    assert torch.load(state_path, weights_only=True)["world_size"] == 1
