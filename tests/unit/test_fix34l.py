"""Fix34l: the defects of review rev34l (``tests/unit/test_hostile_rev34l.py``) and their neighbours.

- ``model.read_tokenizer_mark``: the scratch tokenizer's mark read strictly for the start-over's decision: a missing
  file or a readable one without the mark is older code; an unreadable one, a link or a FIFO is a ``ValueError``
  naming it, and the trainer refuses the run (left as it is) instead of training it over;
- ``train._start_over`` removes ``best/``, metrics, ``init/`` before the checkpoint, and a training from step 0 (no
  checkpoint) removes a ``best/`` left there, so an interrupted start-over never publishes the older model;
- ``train._remove_leftovers``: a ``.tmp`` / ``.old`` sibling beside a folder in place is removed on every run;
- ``model.drop_load_time_settings``: ``tokenizer_config.json`` saved without what a load added, so a checkpoint saved
  from a loaded one is byte for byte the first one.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
from pathlib import Path

import pytest

from training import model as model_module
from training import synthetic
from training import train as train_module
from training.synthetic import tiny_config, write_synthetic_version

SIZES = {split: 24 if split == "train" else 8 for split in synthetic.DEFAULT_SIZES}


class _Killed(BaseException):
    """The process killed."""


def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _listing(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): os.lstat(p).st_ino for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="module")
def _version(tmp_path_factory):
    root = tmp_path_factory.mktemp("fix34l")
    return write_synthetic_version(root / "datasets" / "v1", SIZES, image_px=32, shards_per_split=1)


def _older_tokenizer(real):
    """``train_tokenizer`` as an older code had it: other merges for the same captions, recording nothing."""
    def train_tokenizer(captions, vocab_size, max_length=77):
        tokenizer = real([caption[::-1] for caption in captions], vocab_size, max_length)
        tokenizer.init_kwargs.pop(model_module.TOKENIZER_MARK)
        return tokenizer
    return train_tokenizer


# ------------------------------------------------------------------------------------------ the mark, read strictly
def test_the_mark_is_older_code_only_where_missing_or_readable_without_it(tmp_path, monkeypatch):
    folder = tmp_path / "m"
    folder.mkdir()
    settings = folder / "tokenizer_config.json"
    assert model_module.read_tokenizer_mark(folder) is None                       # missing
    assert model_module.read_tokenizer_mark(tmp_path / "nowhere") is None          # no folder either
    for text, expected in (('{"pickapic_tokenizer": "bpe/1"}', "bpe/1"), ('{"backend": "tokenizers"}', None),
                           ('{"pickapic_tokenizer": 7}', None), ("{not json", None), ("[" * 100_000, None)):
        settings.write_text(text, encoding="utf-8")
        assert model_module.read_tokenizer_mark(folder) == expected, text
    settings.write_text('{"pickapic_tokenizer": "bpe/1"}', encoding="utf-8")

    real_open, real_fstat = os.open, os.fstat
    for code in (errno.EIO, errno.EACCES, errno.EMFILE):
        def failing_open(path, flags, *args, _code=code, **kwargs):
            if os.fspath(path) == str(settings):
                raise OSError(_code, os.strerror(_code), path)
            return real_open(path, flags, *args, **kwargs)
        monkeypatch.setattr(os, "open", failing_open)
        with pytest.raises(ValueError, match="tokenizer_config.json cannot be read") as err:
            model_module.read_tokenizer_mark(folder)
        assert os.strerror(code) in str(err.value) and "left as it is" in str(err.value)
        assert model_module.tokenizer_version(folder) is None     # the lenient reader: only for rebuilding init/
    monkeypatch.setattr(os, "open", real_open)

    def failing_fstat(fd):   # an error once the file is open: on the read's side
        raise OSError(errno.EIO, os.strerror(errno.EIO))
    monkeypatch.setattr(os, "fstat", failing_fstat)
    with pytest.raises(ValueError, match="cannot be read"):
        model_module.read_tokenizer_mark(folder)
    monkeypatch.setattr(os, "fstat", real_fstat)

    settings.unlink()
    (tmp_path / "elsewhere.json").write_text('{"pickapic_tokenizer": "bpe/1"}', encoding="utf-8")
    os.symlink(tmp_path / "elsewhere.json", settings)             # never followed, never "older code"
    with pytest.raises(ValueError, match="is a symbolic link"):
        model_module.read_tokenizer_mark(folder)
    settings.unlink()
    os.mkfifo(settings)                                           # never waited on
    with pytest.raises(ValueError, match="not a regular file"):
        model_module.read_tokenizer_mark(folder)


def test_an_unreadable_mark_refuses_the_run_and_leaves_it_as_it_was(tmp_path, monkeypatch, _version):
    config = tiny_config(_version.version_dir, tmp_path / "run", max_steps=2, eval_every=2)
    run = tmp_path / "run"
    train_module.train(config)
    before = _listing(run)
    metrics = (run / "metrics.json").read_bytes()
    mark = str(run / "checkpoints" / "last" / "tokenizer_config.json")
    real_open = os.open

    def denied(path, flags, *args, **kwargs):   # e.g. a restore that left the file 0000 for the service account
        if os.fspath(path) == mark:
            raise OSError(errno.EACCES, os.strerror(errno.EACCES), path)
        return real_open(path, flags, *args, **kwargs)
    events: list[dict] = []
    with monkeypatch.context() as patched:
        patched.setattr(os, "open", denied)
        with pytest.raises(ValueError, match=r"checkpoints/last/tokenizer_config.json cannot be read"):
            train_module.train(config, on_event=events.append)
    assert not events
    assert _listing(run) == before and (run / "metrics.json").read_bytes() == metrics   # not even training.json

    events.clear()   # readable again: a rerun of the finished run only evaluates
    result = train_module.train(config, on_event=events.append)
    assert not [e for e in events if e["event"] == "restart"] and result.resumed_from_step == 2
    assert os.stat(run / "best").st_ino == before["best"]


# ------------------------------------------------------------------------------------------ the start-over's order
def test_a_start_over_killed_before_the_checkpoint_went_starts_over_again(tmp_path, monkeypatch, _version):
    config = tiny_config(_version.version_dir, tmp_path / "run", max_steps=2, eval_every=2, learning_rate=1e-9)
    reference = train_module.train(config.replace(output_dir=str(tmp_path / "reference")))
    run = tmp_path / "run"
    with monkeypatch.context() as patched:
        patched.setattr(model_module, "train_tokenizer", _older_tokenizer(model_module.train_tokenizer))
        train_module.train(config)
    assert list(train_module.OWN_OUTPUTS[-3:]) == list(train_module.CHECKPOINT_OUTPUTS)
    real_remove = train_module.remove_run_path

    def die_at_the_checkpoint(path):
        if Path(path).name == "last" and os.path.lexists(path):
            raise _Killed()
        return real_remove(path)
    with monkeypatch.context() as patched:
        patched.setattr(train_module, "remove_run_path", die_at_the_checkpoint)
        with pytest.raises(_Killed):
            train_module.train(config)
    # everything the checkpoint made is gone already; the checkpoint that makes it start over is still there
    assert {p.name for p in run.iterdir()} >= {"checkpoints", "training.json"}
    assert not {"best", "init", "metrics.json", "curve.png"} & {p.name for p in run.iterdir()}
    assert model_module.read_tokenizer_mark(run / "checkpoints" / "last") is None

    events: list[dict] = []
    result = train_module.train(config, on_event=events.append)
    assert [e for e in events if e["event"] == "restart"] and result.resumed_from_step == 0
    for name in ("model.safetensors", "tokenizer.json", "tokenizer_config.json", "best_step.json"):
        assert (run / "best" / name).read_bytes() == (reference.best_dir / name).read_bytes(), name


def test_a_fresh_run_never_keeps_a_best_it_did_not_train(tmp_path, monkeypatch, _version):
    """An older trainer saved best/ before checkpoints/last/: killed between the two at step 0 it left a best/ and
    no checkpoint; today's retrain killed after its step-0 checkpoint kept that best/ (no record) as its own."""
    config = tiny_config(_version.version_dir, tmp_path / "run", max_steps=2, eval_every=2, learning_rate=1e-9)
    reference = train_module.train(config.replace(output_dir=str(tmp_path / "reference")))
    run = tmp_path / "run"
    with monkeypatch.context() as patched:
        patched.setattr(model_module, "train_tokenizer", _older_tokenizer(model_module.train_tokenizer))
        train_module.train(config)
    train_module.remove_run_path(run / "checkpoints")           # as the older trainer killed at step 0 left it
    (run / "best" / train_module.BEST_RECORD).unlink()
    train_module.remove_run_path(run / "metrics.json")
    (run / ".best.tmp").mkdir()                                 # and a half-written one beside
    real_save = train_module._save_dir_atomic

    def die_after_last(final, write, root=None):
        real_save(final, write, root)
        if final.name == "last":
            raise _Killed()
    with monkeypatch.context() as patched:
        patched.setattr(train_module, "_save_dir_atomic", die_after_last)
        with pytest.raises(_Killed):
            train_module.train(config)
    assert not (run / "best").exists() and not (run / ".best.tmp").exists()   # removed before step 0 trained
    result = train_module.train(config)
    assert result.best_step == 0 and train_module.best_record_step(run / "best") == 0
    assert model_module.tokenizer_version(run / "best") == model_module.TOKENIZER_VERSION
    assert _sha(run / "best" / "model.safetensors") == _sha(reference.best_dir / "model.safetensors")
    assert (run / "best" / "tokenizer.json").read_bytes() == (reference.best_dir / "tokenizer.json").read_bytes()


# ------------------------------------------------------------------------------------------ leftovers
def test_leftovers_beside_a_folder_in_place_go_and_nothing_else(tmp_path):
    out = tmp_path / "run"
    for rel in ("best", ".best.old", ".best.tmp", "checkpoints/last", "checkpoints/.last.tmp", "checkpoints/.last.old",
                ".init.old", "notes", ".best.older", "checkpoints/keep"):
        (out / rel).mkdir(parents=True)
        (out / rel / "file").write_text(rel, encoding="utf-8")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("x", encoding="utf-8")
    os.symlink(outside, out / ".init.tmp")       # init/ missing: its siblings are not leftovers of a swap
    train_module._remove_leftovers(out, fresh=False)
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.name != "file") == [
        ".best.older", ".init.old", ".init.tmp", "best", "checkpoints", "checkpoints/keep", "checkpoints/last", "notes"]

    (out / ".best.old").mkdir()
    os.symlink(outside, out / ".best.tmp")       # a link is unlinked, never followed
    train_module._remove_leftovers(out, fresh=True)
    assert not os.path.lexists(out / "best") and not os.path.lexists(out / ".best.old")
    assert not os.path.lexists(out / ".best.tmp") and (outside / "precious").is_file()
    assert (out / "checkpoints" / "last" / "file").is_file() and (out / "notes" / "file").is_file()


def test_a_kill_after_inits_swap_leaves_no_older_init_behind(tmp_path, monkeypatch, _version):
    """The neighbour of the review's third test: an older tokenizer's init/ built again, killed after the new one
    was renamed in and before ``.init.old`` went; the resume keeps the new init/ and removes the old one."""
    config = tiny_config(_version.version_dir, tmp_path / "run", max_steps=2, eval_every=2)
    run = tmp_path / "run"
    real_save, real_remove = train_module._save_dir_atomic, train_module.remove_run_path

    def die_at_first_checkpoint(final, write, root=None):
        if final.name == "last":
            raise _Killed()
        real_save(final, write, root)
    with monkeypatch.context() as patched:   # killed before its first checkpoint: init/ alone, older tokenizer
        patched.setattr(model_module, "train_tokenizer", _older_tokenizer(model_module.train_tokenizer))
        patched.setattr(train_module, "_save_dir_atomic", die_at_first_checkpoint)
        with pytest.raises(_Killed):
            train_module.train(config)

    def die_before_old_init_goes(path):
        if Path(path).name == ".init.old" and os.path.lexists(path) and os.path.lexists(run / "init"):
            raise _Killed()
        return real_remove(path)
    with monkeypatch.context() as patched:
        patched.setattr(train_module, "remove_run_path", die_before_old_init_goes)
        with pytest.raises(_Killed):
            train_module.train(config)
    assert (run / ".init.old").is_dir()
    assert model_module.tokenizer_version(run / "init") == model_module.TOKENIZER_VERSION
    train_module.train(config)
    assert not [name for name in os.listdir(run) if name.startswith((".best", ".init"))], os.listdir(run)
    assert not [name for name in os.listdir(run / "checkpoints") if name.startswith(".")]


# ------------------------------------------------------------------------------------------ tokenizer_config.json
def test_a_checkpoint_saved_from_a_loaded_one_keeps_its_bytes(tmp_path):
    tokenizer = model_module.train_tokenizer(["a red cat", "a blue dog", "ein Hund"], 600, 16)
    clip, processor = model_module.build_model(tiny_config("", "", max_length=16), tokenizer=tokenizer)
    saved = []
    for generation in range(4):
        folder = tmp_path / f"g{generation}"
        model_module.save_checkpoint(folder, clip, processor)
        saved.append({p.name: p.read_bytes() for p in folder.iterdir()})
        clip, processor = model_module.load_model(folder)
        # as training and evaluation call it: the backend keeps truncation and padding, saved in tokenizer.json
        processor.tokenizer(["a red cat", "a dog"], padding="max_length", truncation=True, max_length=16)
    assert saved[1]["tokenizer_config.json"] == saved[0]["tokenizer_config.json"]
    assert saved[1] == saved[2] == saved[3]
    settings = json.loads(saved[3]["tokenizer_config.json"])
    assert not {"is_local", "local_files_only", "max_length", "truncation_strategy", "padding_side"} & set(settings)
    assert settings[model_module.TOKENIZER_MARK] == model_module.TOKENIZER_VERSION
    assert json.loads(saved[3]["tokenizer.json"])["truncation"]["max_length"] == 16   # where a load takes them from
    first, last = model_module.load_model(tmp_path / "g0")[1].tokenizer, processor.tokenizer
    for kwargs in ({}, {"padding": True}, {"padding": "max_length", "truncation": True, "max_length": 16}):
        assert first(["a red cat " * 9, "ein"], **kwargs)["input_ids"] == last(["a red cat " * 9, "ein"],
                                                                               **kwargs)["input_ids"], kwargs


def test_a_tokenizers_own_setting_that_differs_from_its_tokenizer_json_is_kept(tmp_path):
    tokenizer = model_module.train_tokenizer(["a red cat", "a blue dog"], 600, 16)
    clip, processor = model_module.build_model(tiny_config("", "", max_length=16), tokenizer=tokenizer)
    processor.tokenizer(["a red cat"], padding="max_length", truncation=True, max_length=16)
    model_module.save_checkpoint(tmp_path / "one", clip, processor)   # its tokenizer.json truncates and pads
    clip, processor = model_module.load_model(tmp_path / "one")
    assert processor.tokenizer.init_kwargs["padding_side"] == "right"   # derived by the load
    processor.tokenizer.padding_side = "left"                    # the tokenizer's own, not what a load derives
    processor.tokenizer.init_kwargs.update(max_length=12, stride="0")
    model_module.save_checkpoint(tmp_path / "two", clip, processor)
    settings = json.loads((tmp_path / "two" / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert (settings["padding_side"], settings["max_length"], settings["stride"]) == ("left", 12, "0")
    assert "truncation_strategy" not in settings and "is_local" not in settings
    assert model_module.drop_load_time_settings(tmp_path / "two", processor.tokenizer) == []   # nothing more to drop
    assert model_module.drop_load_time_settings(tmp_path / "missing", processor.tokenizer) == []
    assert model_module.load_model(tmp_path / "two")[1].tokenizer.padding_side == "left"
