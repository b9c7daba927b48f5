"""Fix34c: the defects of review rev34c (``tests/unit/test_hostile_rev34c.py``) and their neighbours.

- ``training.model.train_tokenizer`` records what made it (``pickapic_tokenizer`` in ``tokenizer_config.json``:
  ``model.TOKENIZER_VERSION``), kept by every save and load; a scratch run whose checkpoint holds a tokenizer another
  code made (another mark, or none: made before it was recorded) is trained over from step 0 (a ``restart`` event),
  an ``init/`` of such a tokenizer is built again, and a changed recipe is still refused as before;
- ``checkpoint()`` saves ``checkpoints/last/`` before ``best/``, which records its step (``best/best_step.json``); a
  resume whose state names its own step as best and finds ``best/`` behind (a kill between the two saves, or inside
  best/'s swap) saves ``best/`` again from ``checkpoints/last/``: the run ends as an uninterrupted one.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from formats.home import DataHome
from training import model as model_module
from training import runs, synthetic
from training import train as train_module
from training.synthetic import tiny_config, write_synthetic_version

SIZES = {split: 24 if split == "train" else 8 for split in synthetic.DEFAULT_SIZES}


def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _unmarked_tokenizer(real):
    """``train_tokenizer`` as code before the mark had it: the same tokenizer, recording nothing."""
    def train_tokenizer(captions, vocab_size, max_length=77):
        tokenizer = real(captions, vocab_size, max_length)
        tokenizer.init_kwargs.pop(model_module.TOKENIZER_MARK)
        return tokenizer
    return train_tokenizer


class _Killed(BaseException):
    """The process killed."""


# ------------------------------------------------------------------------------------------ the tokenizer's mark
def test_the_mark_survives_save_and_load_and_is_read_strictly(tmp_path):
    tokenizer = model_module.train_tokenizer(["a red cat", "a blue dog", "ein Hund"], 600, 16)
    config = tiny_config("", "", max_length=16)
    clip, processor = model_module.build_model(config, tokenizer=tokenizer)
    model_module.save_checkpoint(tmp_path / "one", clip, processor)
    assert model_module.tokenizer_version(tmp_path / "one") == model_module.TOKENIZER_VERSION
    clip, processor = model_module.load_model(tmp_path / "one")        # a checkpoint saved from a loaded one
    model_module.save_checkpoint(tmp_path / "two", clip, processor)
    assert model_module.tokenizer_version(tmp_path / "two") == model_module.TOKENIZER_VERSION
    assert processor.tokenizer("a red cat")["input_ids"] == tokenizer("a red cat")["input_ids"]

    settings = tmp_path / "two" / "tokenizer_config.json"
    value = json.loads(settings.read_text(encoding="utf-8"))
    for text, expected in ((json.dumps({**value, model_module.TOKENIZER_MARK: 7}), None),   # not a string
                           (json.dumps([value]), None), ("{not json", None), ("[" * 100_000, None),
                           (json.dumps({k: v for k, v in value.items() if k != model_module.TOKENIZER_MARK}), None)):
        settings.write_text(text, encoding="utf-8")
        assert model_module.tokenizer_version(tmp_path / "two") == expected
    settings.unlink()
    os.symlink(tmp_path / "one" / "tokenizer_config.json", settings)   # never followed
    assert model_module.tokenizer_version(tmp_path / "two") is None
    assert model_module.tokenizer_version(tmp_path / "missing") is None


# ------------------------------------------------------------------------------------------ older tokenizers
def test_an_unfinished_run_with_an_older_tokenizer_is_trained_over_as_an_uninterrupted_run(tmp_path, monkeypatch):
    """The neighbour the review noticed: a run started by older code, killed, and resumed by today's code."""
    version = write_synthetic_version(tmp_path / "datasets" / "v1", SIZES, image_px=32, shards_per_split=1)
    config = tiny_config(version.version_dir, tmp_path / "run", max_steps=4, eval_every=2)
    reference = train_module.train(config.replace(output_dir=str(tmp_path / "reference")))
    real_save = train_module._save_dir_atomic
    events: list[dict] = []

    def save_then_die(final, write, root=None):
        real_save(final, write, root)
        if final.name == "last" and any(e.get("event") == "eval" and e["step"] == 2 for e in events):
            raise _Killed()
    with monkeypatch.context() as patched:
        patched.setattr(model_module, "train_tokenizer", _unmarked_tokenizer(model_module.train_tokenizer))
        patched.setattr(train_module, "_save_dir_atomic", save_then_die)
        with pytest.raises(_Killed):
            train_module.train(config, on_event=events.append)
    run = tmp_path / "run"
    assert model_module.tokenizer_version(run / "checkpoints" / "last") is None
    (run / "eval.json").write_text("{}\n", encoding="utf-8")             # published about the old model

    events.clear()
    result = train_module.train(config, on_event=events.append)
    restarts = [e for e in events if e["event"] == "restart"]
    assert len(restarts) == 1 and "tokenizer" in restarts[0]["message"], events[:3]
    assert result.resumed_from_step == 0 and result.steps == 4
    for folder in ("init", "best", "checkpoints/last"):
        assert model_module.tokenizer_version(run / folder) == model_module.TOKENIZER_VERSION
    assert _sha(run / "best" / "model.safetensors") == _sha(reference.best_dir / "model.safetensors")
    assert (run / "best" / "vocab.json").read_bytes() == (reference.best_dir / "vocab.json").read_bytes()
    assert not (run / "eval.json").exists() and not (run / "training.json").exists()

    events.clear()   # a rerun of the run today's code finished only evaluates again
    best_inode = os.stat(run / "best").st_ino
    train_module.train(config, on_event=events.append)
    assert not [e for e in events if e["event"] == "restart"] and os.stat(run / "best").st_ino == best_inode


def test_an_older_tokenizers_init_is_built_again_and_a_changed_recipe_still_refused(tmp_path, monkeypatch):
    version = write_synthetic_version(tmp_path / "datasets" / "v1", SIZES, image_px=32, shards_per_split=1)
    config = tiny_config(version.version_dir, tmp_path / "run", max_steps=2, eval_every=2)
    run = tmp_path / "run"
    real_save = train_module._save_dir_atomic

    def die_at_first_checkpoint(final, write, root=None):
        if final.name == "last":
            raise _Killed()
        real_save(final, write, root)
    with monkeypatch.context() as patched:   # killed before its first checkpoint: init/ alone, older tokenizer
        patched.setattr(model_module, "train_tokenizer", _unmarked_tokenizer(model_module.train_tokenizer))
        patched.setattr(train_module, "_save_dir_atomic", die_at_first_checkpoint)
        with pytest.raises(_Killed):
            train_module.train(config)
    assert model_module.tokenizer_version(run / "init") is None and not (run / "checkpoints" / "last").exists()
    train_module.train(config)
    assert model_module.tokenizer_version(run / "init") == model_module.TOKENIZER_VERSION
    assert model_module.tokenizer_version(run / "best") == model_module.TOKENIZER_VERSION

    # a finished run of an older tokenizer rerun with another recipe: refused as any changed recipe, nothing removed
    with monkeypatch.context() as patched:
        patched.setattr(model_module, "train_tokenizer", _unmarked_tokenizer(model_module.train_tokenizer))
        train_module.train(config.replace(output_dir=str(tmp_path / "old")))
    before = sorted(p.name for p in (tmp_path / "old").iterdir())
    with pytest.raises(ValueError, match=r"config fields \['learning_rate'\] differ"):
        train_module.train(config.replace(output_dir=str(tmp_path / "old"), learning_rate=1e-3))
    assert sorted(p.name for p in (tmp_path / "old").iterdir()) == before
    assert model_module.tokenizer_version(tmp_path / "old" / "best") is None


def test_the_managed_flow_logs_the_start_over_and_a_warm_start_is_never_trained_over(tmp_path, monkeypatch):
    home = DataHome(tmp_path / "home")
    version = write_synthetic_version(home.datasets / "2023-03-01-0000000000", SIZES, image_px=32,
                                      shards_per_split=1)
    config = tiny_config("", "", max_steps=2, eval_every=2)
    with monkeypatch.context() as patched:
        patched.setattr(model_module, "train_tokenizer", _unmarked_tokenizer(model_module.train_tokenizer))
        old = runs.train_latest(home, config)
    notes: list[str] = []
    again = runs.train_latest(home, config, warn=notes.append)
    assert [n for n in notes if "tokenizer" in n and "over from step 0" in n], notes
    assert again.result.resumed_from_step == 0
    assert model_module.tokenizer_version(old.result.best_dir) == model_module.TOKENIZER_VERSION

    # a warm start's tokenizer is its init_from model's: never judged by the scratch tokenizer's mark
    start = tmp_path / "start"
    with monkeypatch.context() as patched:
        patched.setattr(model_module, "train_tokenizer", _unmarked_tokenizer(model_module.train_tokenizer))
        train_module.train(tiny_config(version.version_dir, start, max_steps=2, eval_every=2))
    warm = tiny_config(version.version_dir, tmp_path / "warm", max_steps=2, eval_every=2,
                       init_from=str(start / "best"))
    train_module.train(warm)
    events: list[dict] = []
    result = train_module.train(warm, on_event=events.append)
    assert not [e for e in events if e["event"] == "restart"] and result.resumed_from_step == 2
    assert model_module.tokenizer_version(tmp_path / "warm" / "best") is None


# ------------------------------------------------------------------------------------------ best/ behind the state
@pytest.fixture(scope="module")
def _uninterrupted(tmp_path_factory):
    root = tmp_path_factory.mktemp("fix34c")
    version = write_synthetic_version(root / "datasets" / "v1", SIZES, image_px=32, shards_per_split=1)
    config = tiny_config(version.version_dir, root / "reference", max_steps=6, eval_every=2, seed=1,
                         learning_rate=3e-3)
    events: list[dict] = []
    result = train_module.train(config, on_event=events.append)
    evals = {e["step"]: e["val_accuracy"] for e in events if e["event"] == "eval"}
    assert result.best_step == 6 and evals[6] > max(evals[s] for s in (0, 2, 4))   # step 6 is a new best
    return version, config, result


@pytest.mark.parametrize("where", ["after last/", "inside best/'s swap", "first checkpoint"])
def test_a_kill_leaving_best_behind_the_state_is_repaired_by_the_resume(tmp_path, monkeypatch, _uninterrupted, where):
    version, reference_config, reference = _uninterrupted
    config = reference_config.replace(output_dir=str(tmp_path / "run"))
    run = tmp_path / "run"
    events: list[dict] = []
    step = 0 if where == "first checkpoint" else 6
    real_save, real_rename = train_module._save_dir_atomic, Path.rename

    def kill_after_last(final, write, root=None):
        real_save(final, write, root)
        if final.name == "last" and [e for e in events if e["event"] == "eval"][-1]["step"] == step:
            raise _Killed()

    def kill_between_renames(self, target):
        if Path(target).name == "best" and Path(self).name == ".best.tmp" and events[-1].get("step") == 6:
            raise _Killed()                                   # best/ renamed to .best.old, the new one not in place
        return real_rename(self, target)

    with monkeypatch.context() as patched:
        if where == "inside best/'s swap":
            patched.setattr(Path, "rename", kill_between_renames)
        else:
            patched.setattr(train_module, "_save_dir_atomic", kill_after_last)
        with pytest.raises(_Killed):
            train_module.train(config, on_event=events.append)
    if where == "first checkpoint":
        assert not (run / "best").exists()
    elif where == "after last/":
        evals = {e["step"]: e["val_accuracy"] for e in events if e["event"] == "eval"}
        earlier = min(s for s in (0, 2, 4) if evals[s] == max(evals[t] for t in (0, 2, 4)))
        assert train_module.best_record_step(run / "best") == earlier    # the state's best step is 6 already
    else:
        assert not (run / "best").exists() and (run / ".best.old").is_dir()

    if step == 6:   # the review's rerun at a lower max_steps: refused, the state is at step 6 now
        with pytest.raises(ValueError, match="max_steps >= 6"):
            train_module.train(config.replace(max_steps=4))
    result = train_module.train(config)
    assert result.best_step == 6 and train_module.best_record_step(run / "best") == 6
    assert _sha(run / "best" / "model.safetensors") == _sha(reference.best_dir / "model.safetensors")
    # every file as the uninterrupted run's but train_config.json (its output_dir); tokenizer_config.json too since
    # fix34l (a tokenizer loaded from a checkpoint kept the truncation settings its tokenizer.json holds as arguments)
    other = ("train_config.json",)
    assert {p.name: p.read_bytes() for p in (run / "best").iterdir() if p.name not in other} == {
        p.name: p.read_bytes() for p in reference.best_dir.iterdir() if p.name not in other}
    assert model_module.tokenizer_version(run / "best") == model_module.TOKENIZER_VERSION
    metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    assert (metrics["best_step"], metrics["best_val_accuracy"]) == (6, reference.best_val_accuracy)
    assert not [name for name in os.listdir(run) if name.startswith(".best")]


def test_best_behind_reads_the_record_and_keeps_a_best_saved_before_it(tmp_path):
    best = tmp_path / "best"
    state = {"step": 6, "best": {"step": 6, "val_accuracy": 0.875}}
    assert train_module._best_behind(best, state)                         # missing: the first checkpoint's
    best.mkdir()
    assert not train_module._best_behind(best, state)                     # no record: saved before it was kept
    record = best / train_module.BEST_RECORD
    for text, behind in (('{"step": 6, "val_accuracy": 0.875}', False), ('{"step": 4, "val_accuracy": 0.75}', True),
                         ("not json", True), ('{"step": true}', True), ('{"step": -1}', True), ("[6]", True)):
        record.write_text(text, encoding="utf-8")
        assert train_module._best_behind(best, state) is behind, text
    record.write_text('{"step": 4, "val_accuracy": 0.75}', encoding="utf-8")
    assert not train_module._best_behind(best, {"step": 6, "best": {"step": 4, "val_accuracy": 0.75}})
    assert not train_module._best_behind(best, {"step": 6, "best": {"step": 2, "val_accuracy": 0.75}})


def test_the_best_record_is_readable_by_other_accounts(tmp_path, _uninterrupted):
    _version, _config, reference = _uninterrupted
    record = reference.best_dir / train_module.BEST_RECORD
    assert json.loads(record.read_text(encoding="utf-8")) == {"step": 6, "val_accuracy": reference.best_val_accuracy}
    umask = os.umask(0)
    os.umask(umask)
    assert record.stat().st_mode & 0o777 == 0o666 & ~umask
