"""Fixes of review rev32a (tests/unit/test_hostile_rev32a.py), beyond the review's own tests.

- the scratch tokenizer's merges are learnt by ``training.model.bpe_merges``: most frequent pair first, equal counts
  in the pairs' sorted order, so the tokenizer is a pure function of the captions (their order, the process's hash
  seed and the number of calls do not matter);
- a table prompt over 64 KiB is refused from its Arrow byte length, never made a Python string whole; its row keeps
  the first ``PROMPT_KEPT`` bytes (a bounded reject row in ``--output``) and the digest of the whole prompt;
- a trainer state whose ``best`` / ``history`` entries are not what the trainer writes, or whose step is negative,
  is refused naming the file; a damaged ``train_config.json`` is refused naming the file;
- ``--prompt`` of white space only, over 64 KiB or not UTF-8 is refused naming ``--prompt``;
- a credential in ``--data-dir`` is hidden in the error, as in ``--model``.
"""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.csv  # noqa: F401  (pa.csv)
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from dagster_project.cli import main as pickapic
from formats.dataset import resolve_data_dir
from training.config import CONFIG_FILE, TrainConfig, parse_run_json
from training.model import bpe_merges, build_model, save_checkpoint, shown_path, train_tokenizer
from training.score_cli import MAX_PROMPT_BYTES, PROMPT_KEPT, check_prompt_argument, prompt_digest, read_pairs_table
from training.synthetic import tiny_config
from training.train import load_trainer_state

ROOT = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------------------ deterministic BPE
def test_equal_counts_merge_in_the_pairs_sorted_order():
    counts = {"her": 5, "hen": 5, "pen": 5, "per": 5, "ten": 5, "ter": 5}
    assert bpe_merges(counts, 3) == [("e", "n</w>"), ("e", "r</w>"), ("h", "en</w>")]
    assert bpe_merges(dict(reversed(list(counts.items()))), 3) == bpe_merges(counts, 3)   # dict order: no matter
    assert bpe_merges({"ab": 1}, 10) == [("a", "b</w>")]       # stops when no pair is left
    assert bpe_merges({"a": 7}, 10) == []                       # one-symbol words hold no pair


def test_the_most_frequent_pair_wins_and_a_pair_merges_once():
    merges = bpe_merges({"aaaa": 3, "ab": 1}, 50)
    assert merges[0] == ("a", "a")                              # 2 x 3 (non-overlapping: 6; counted as pairs: 9)
    assert len(merges) == len(set(merges))


def test_the_tokenizer_does_not_depend_on_caption_order():
    rng = random.Random(3)
    words = ["red", "reed", "read", "bread", "tread", "dread", "ed", "der", "redder", "photo", "of", "a"]
    captions = [" ".join(rng.choice(words) for _ in range(8)) for _ in range(200)]
    shuffled = captions[:]
    rng.shuffle(shuffled)
    first, second = train_tokenizer(captions, 560), train_tokenizer(shuffled, 560)
    assert first.backend_tokenizer.to_str() == second.backend_tokenizer.to_str()
    assert first.get_vocab() == second.get_vocab()
    # the tokenizer splits a training word as the training merged it
    assert first.tokenize("redder bread") == second.tokenize("redder bread")
    assert len(first) <= 560


def test_the_merges_are_the_same_under_another_hash_seed():
    """Sets and dicts of strings iterate in an order the process's hash seed decides: none of it may reach the merges."""
    code = ("import json, sys; from training.model import bpe_merges; "
            "w = {x: (len(x) * 7) % 5 + 1 for x in 'her hen pen per ten ter herd hens tender pent'.split()}; "
            "print(json.dumps(bpe_merges(w, 40)))")
    outputs = set()
    for seed in ("1", "2"):
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT,
                              env={**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(ROOT)})
        outputs.add(done.stdout)
    assert len(outputs) == 1


# ------------------------------------------------------------------------------------------ over-long table prompts
def _table(path: Path, prompts: pa.Array, images: list[str] | None = None, **columns) -> Path:
    images = images or ["x.png"] * len(prompts)
    pq.write_table(pa.table({"prompt": prompts, "image": pa.array(images), **columns}), path)
    return path


def test_an_over_long_prompt_row_is_bounded_and_keeps_the_whole_prompts_digest(tmp_path):
    long = "é" * (MAX_PROMPT_BYTES // 2 + 7)            # 2 bytes a character: cut inside one at PROMPT_KEPT + 1
    table = _table(tmp_path / "t.parquet", pa.array(["a cat", long, None, "  ", "a dog"]))
    rows = list(read_pairs_table(table))
    assert [row.error is None for row in rows] == [True, False, False, False, True]
    assert [rows[0].prompt, rows[4].prompt] == ["a cat", "a dog"]
    bad = rows[1]
    assert bad.error.startswith("missing_prompt: row 2 of t.parquet has a prompt longer than 65536 bytes")
    assert f"{len(long.encode())} bytes" in bad.error
    assert bad.prompt == "é" * (PROMPT_KEPT // 2) and len(bad.prompt.encode()) <= PROMPT_KEPT
    assert bad.prompt_id == prompt_digest(long)           # rows of one long prompt still share an id
    assert rows[1] == read_pairs_table(table)[1]          # indexing gives the row iteration gives


def test_a_prompt_of_exactly_the_limit_is_a_prompt(tmp_path):
    exact, over = "a" * MAX_PROMPT_BYTES, "a" * (MAX_PROMPT_BYTES + 1)
    rows = list(read_pairs_table(_table(tmp_path / "t.parquet", pa.array([exact, over], pa.large_string()))))
    assert rows[0].error is None and rows[0].prompt == exact
    assert rows[1].error.startswith("missing_prompt") and len(rows[1].prompt) == PROMPT_KEPT


def test_a_dictionary_prompt_column_with_nulls_and_long_values(tmp_path):
    long = "b" * (MAX_PROMPT_BYTES + 10)
    column = pa.DictionaryArray.from_arrays(pa.array([0, None, 1, 0], pa.int32()), pa.array(["a horse", long]))
    rows = list(read_pairs_table(_table(tmp_path / "t.parquet", column)))
    assert [r.prompt for r in rows] == ["a horse", "", "b" * PROMPT_KEPT, "a horse"]
    assert [r.error is None for r in rows] == [True, False, False, True]
    assert rows[1].error.endswith("has no prompt")


def test_a_string_view_prompt_column(tmp_path):
    long = "v" * (MAX_PROMPT_BYTES + 1)
    rows = list(read_pairs_table(_table(tmp_path / "t.parquet", pa.array(["a cow", None, long], pa.string_view()))))
    assert [r.prompt for r in rows] == ["a cow", "", "v" * PROMPT_KEPT]
    assert [r.error is None for r in rows] == [True, False, False] and rows[2].prompt_id == prompt_digest(long)


def test_a_prompt_column_that_is_no_text_is_no_prompt(tmp_path):
    big = b"\xff" * (MAX_PROMPT_BYTES * 4)
    rows = list(read_pairs_table(_table(tmp_path / "t.parquet", pa.array([big, b"a cat"]))))
    assert [(r.prompt, r.error) for r in rows] == [("", "missing_prompt: row 1 of t.parquet has no prompt"),
                                                  ("", "missing_prompt: row 2 of t.parquet has no prompt")]
    rows = list(read_pairs_table(_table(tmp_path / "n.parquet", pa.array([3, None]))))
    assert all(r.error.endswith("has no prompt") for r in rows)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A tiny saved scratch model (its tokenizer trained on a few captions)."""
    root = tmp_path_factory.mktemp("fix32a-model")
    config = tiny_config(root / "version", root / "run")
    clip, processor = build_model(config, ["a red cat", "a blue dog", "a photo of a horse"] * 3)
    save_checkpoint(root / "best", clip, processor)
    config.save(root / "best")
    return root / "best"


def test_a_refused_long_prompt_is_not_copied_into_the_output(model_dir, tmp_path, capsys):
    """`pickapic score --input` of 200 rows of one 256 KiB prompt (a tiny dictionary-encoded file): the --output CSV
    holds a bounded row for each (the review: 1,000 such rows became a 262 MB CSV), and a good row is scored."""
    Image.new("RGB", (40, 40), (200, 10, 10)).save(tmp_path / "a.png")
    long = "z" * (256 * 1024)
    column = pa.DictionaryArray.from_arrays(pa.array([0] * 200 + [1], pa.int32()), pa.array([long, "a red cat"]))
    table = _table(tmp_path / "t.parquet", column, ["a.png"] * 201)
    out = tmp_path / "out.csv"
    assert pickapic(["score", "--home", str(tmp_path / "home"), "--model", str(model_dir), "--input", str(table),
                     "--output", str(out)]) == 0
    capsys.readouterr()
    assert out.stat().st_size < 201 * (PROMPT_KEPT + 400)       # not 200 x 256 KiB
    rows = pa.csv.read_csv(out).to_pylist()
    assert len(rows) == 201 and all(r["prompt"] == "z" * PROMPT_KEPT for r in rows[:200])
    assert all(r["error"].startswith("missing_prompt") and r["prompt_id"] == prompt_digest(long) for r in rows[:200])
    assert not rows[200]["error"] and rows[200]["score"] is not None          # CSV: no error is an empty cell


# ------------------------------------------------------------------------------------------ trainer state
def _state(**change) -> dict:
    state = {"step": 2, "optimizer": {}, "scheduler": {}, "torch_rng": [torch.get_rng_state()],
             "history": [{"step": 1, "loss": 0.7, "lr": 1e-4},
                         {"step": 2, "val_accuracy": 0.5, "val_threshold": 0.0, "val_loss": 0.69}],
             "best": {"step": 2, "val_accuracy": 0.5}}
    state.update(change)
    return state


def test_a_state_as_the_trainer_writes_it_loads(tmp_path):
    path = tmp_path / "trainer_state.pt"
    for state in (_state(), _state(step=0, history=[], best={"step": -1, "val_accuracy": -1.0}),
                  _state(history=[{"step": 3, "loss": float("nan"), "lr": 0}])):
        torch.save(state, path)
        assert load_trainer_state(path)["step"] == state["step"]


@pytest.mark.parametrize("change", [
    {"step": -3}, {"step": True}, {"best": {"step": 1}}, {"best": {"step": "1", "val_accuracy": 0.5}},
    {"best": {"step": -2, "val_accuracy": 0.5}}, {"best": {"step": 1, "val_accuracy": "high"}},
    {"history": [{"loss": 0.5, "lr": 1.0}]}, {"history": [{"step": 1, "loss": "0.5", "lr": 1.0}]},
    {"history": [{"step": 1, "val_accuracy": 0.5}]}, {"history": [{"step": -1, "loss": 0.5, "lr": 1.0}]},
    {"history": [None]}, {"history": [{"step": 1}]},
], ids=lambda change: json.dumps(change))
def test_a_mistyped_state_is_refused_naming_the_file(tmp_path, change):
    path = tmp_path / "trainer_state.pt"
    torch.save(_state(**change), path)
    with pytest.raises(ValueError) as refused:
        load_trainer_state(path)
    assert str(path) in str(refused.value) and next(iter(change)) in str(refused.value)


# ------------------------------------------------------------------------------------------ damaged run JSON
def test_malformed_run_json_is_a_value_error_naming_the_file(tmp_path):
    for data in ("{", b"\xff\xfe{", "[1,", ""):
        with pytest.raises(ValueError, match="not valid JSON") as refused:
            parse_run_json(data, tmp_path / "x.json")
        assert str(tmp_path / "x.json") in str(refused.value)


@pytest.mark.parametrize("text", ['{"seed": 1', "[1, 2]", '{"nonsense": 1}', "\udcff", '"a string"'])
def test_a_damaged_train_config_names_the_file(tmp_path, text):
    path = tmp_path / CONFIG_FILE
    path.write_bytes(text.encode("utf-8", "surrogateescape"))
    with pytest.raises(ValueError) as refused:
        TrainConfig.load(tmp_path)
    assert str(refused.value).count(str(path)) == 1


# ------------------------------------------------------------------------------------------ --prompt
@pytest.mark.parametrize("prompt, words", [(" \n\t", "white space"), ("x" * (MAX_PROMPT_BYTES + 1), "longer than"),
                                           ("red \udcff", "not UTF-8")])
def test_a_prompt_argument_no_row_could_hold_is_refused(prompt, words):
    with pytest.raises(ValueError, match=words) as refused:
        check_prompt_argument(prompt)
    assert str(refused.value).startswith("--prompt ")
    assert len(str(refused.value)) < 400                       # the over-long prompt is not echoed


def test_the_prompt_is_refused_before_the_model_loads(tmp_path, capsys):
    code = pickapic(["score", "--home", str(tmp_path / "home"), "--model", str(tmp_path / "no-model"),
                     "--prompt", "é" * (MAX_PROMPT_BYTES // 2 + 1), str(tmp_path / "a.png")])
    err = capsys.readouterr().err
    assert code != 0 and "--prompt is longer than" in err and "no-model" not in err
    check_prompt_argument("é" * (MAX_PROMPT_BYTES // 2))      # at the limit: a prompt


# ------------------------------------------------------------------------------------------ --data-dir credential
def test_a_credential_in_a_data_dir_is_hidden(tmp_path, capsys):
    link = "https://alice:s3cr3tT0ken@example.com/datasets/pickapic"
    with pytest.raises(FileNotFoundError) as missing:
        resolve_data_dir(link)
    assert "s3cr3tT0ken" not in str(missing.value) and "alice:***@" in str(missing.value)
    code = pickapic(["train", "--home", str(tmp_path / "home"), "--data-dir", link,
                     "--output-dir", str(tmp_path / "home" / "runs" / "x")])
    err = capsys.readouterr().err
    assert code != 0 and "s3cr3tT0ken" not in err and "dataset dir" in err
    assert shown_path(Path(link)) == "https://alice:***@example.com/datasets/pickapic"    # still from training.model
    local = tmp_path / "no such dir"
    with pytest.raises(FileNotFoundError, match="no such dir"):
        resolve_data_dir(local)                                 # a plain path is shown as it is
