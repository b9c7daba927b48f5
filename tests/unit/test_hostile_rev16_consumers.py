"""Hostile review 16: defects found in the consumer-side commands (`query`, `export`, `score`, `rerank`).

Every test reproduces one confirmed defect and was a strict xfail until it was fixed (December 5, 2026).
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import time
from pathlib import Path
from types import SimpleNamespace

import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from dagster_project.cli import main as pickapic
from tests.fifos import fifo_that_fails_not_hangs
from training.data import iter_captions
from training.model import build_model, save_checkpoint
from training.synthetic import tiny_config, write_synthetic_version


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny CLIP checkpoint (random weights, BPE trained on synthetic captions): loads in well under a second."""
    root = tmp_path_factory.mktemp("rev16-model")
    sizes = {"train": 24, "validation": 4, "test": 4, "validation_unique": 8, "test_unique": 12}
    version = write_synthetic_version(root / "home" / "datasets" / "pickapic" / "v1", sizes, image_px=64,
                                      seed=5).version_dir
    config = tiny_config(version, root / "run")
    clip, processor = build_model(config, iter_captions(version, "train"))
    torch.manual_seed(1)
    save_checkpoint(root / "best", clip, processor)
    config.save(root / "best")
    return root / "best"


def _png(path: Path, size: tuple[int, int] = (40, 40), mode: str = "RGB") -> Path:
    Image.new(mode, size, 90 if mode != "RGB" else (90, 20, 20)).save(path, format="PNG")
    return path


class _FakeScorer:
    """Scores every pair 1.0, 2.0, ... (what rerank's writers see without loading a model)."""

    def score_pairs(self, pairs, groups=None):
        return [SimpleNamespace(score=1.0 + i, preference=0.5, rank=1, error=None) for i, _ in enumerate(pairs)]


# --- user-given output folders ------------------------------------------------------------------------------------------

def test_a_refused_output_folder_inside_the_home_is_left_untouched(tmp_path, capsys):
    home = tmp_path / "home"
    (home / "datasets" / "pickapic").mkdir(parents=True)
    (home / "pickapic.toml").write_text("")
    # the nightly best_of_n asset writes HOME/.../rerank/scores.parquet through formats.files.atomic_path: while it
    # writes, its temporary file is .scores.parquet.<12 hex>.tmp
    inside = home / "models" / "best_of_n" / "rerank"
    inside.mkdir(parents=True)
    in_flight = inside / ".scores.parquet.0123456789ab.tmp"
    in_flight.write_bytes(b"the nightly's scores, half written")
    candidates = tmp_path / "candidates" / "p0"
    candidates.mkdir(parents=True)
    (candidates / "prompt.txt").write_text("a cube\n")
    _png(candidates / "c0.png")
    code = pickapic(["rerank", "--home", str(home), "--model", str(tmp_path / "no-model"), "--candidates",
                     str(candidates.parent), "--output", str(inside)])
    assert code != 0 and "inside the data home" in capsys.readouterr().err     # refused, as it must be ...
    assert in_flight.read_bytes() == b"the nightly's scores, half written"       # ... and deletes nothing in the home


# --- hostile candidate files ----------------------------------------------------------------------------------------------

def test_rerank_reports_a_candidate_whose_file_name_is_not_utf8_and_writes_its_outputs(tmp_path):
    import training.rerank as rr
    from formats.outputs import recorded_output_dir

    sub = tmp_path / "candidates" / "p0"
    sub.mkdir(parents=True)
    (sub / "prompt.txt").write_text("a cube\n")
    _png(sub / "ok.png")
    _png(Path(os.fsdecode(os.path.join(os.fsencode(sub), b"gen-\xff\xfe.png"))))   # a generator's Latin-1 name
    rows = rr.read_candidate_folder(tmp_path / "candidates")
    assert len(rows) == 2
    folder, listed = recorded_output_dir(tmp_path / "out", [], "--output", rr.RERANK_RECORD, rr.RERANK_FILES)
    rr.rerank(_FakeScorer(), rows, folder, record=listed)
    scores = pq.read_table(folder / "scores.parquet").to_pylist()
    assert len(scores) == 2 and any(r["image"].endswith("ok.png") for r in scores)
    assert pq.read_table(folder / "choices.parquet").num_rows == 1


def test_score_output_survives_an_image_path_that_is_not_utf8(tmp_path):
    from schemas import get_schema
    from training.score_cli import PairRow, score_rows, write_rows

    good = _png(tmp_path / "a.png")
    odd = os.fsdecode(os.path.join(os.fsencode(tmp_path), b"b-\xe9.png"))
    _png(Path(odd))
    rows = [PairRow("p", "a cube", str(good)), PairRow("p", "a cube", odd)]
    out = tmp_path / "scores.parquet"
    write_rows(score_rows(_FakeScorer(), rows), get_schema("image_scores"), out, user_given=[])
    assert pq.read_table(out).num_rows == 2


def test_an_image_pillow_flags_as_a_decompression_bomb_is_an_error_row(model_dir, tmp_path):
    import warnings

    from training.scoring import Scorer

    bomb = _png(tmp_path / "bomb.png", (9600, 9600), mode="1")   # 92 M pixels > Image.MAX_IMAGE_PIXELS (89 M)
    assert bomb.stat().st_size < 200_000
    good = _png(tmp_path / "good.png")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        rows = Scorer(model_dir, device="cpu", batch_size=2).score("two blue stars", [good, bomb])
    assert rows[0].error is None
    assert rows[1].score is None and (rows[1].error or "").startswith("decompression_bomb"), rows[1].error


def test_a_table_prompt_longer_than_64_kib_never_reaches_the_tokenizer_whole(model_dir, tmp_path):
    from training.rerank import MAX_PROMPT_BYTES
    from training.score_cli import read_pairs_table, score_rows
    from training.scoring import Scorer

    _png(tmp_path / "a.png")
    huge = "a red cube " * 40_000                                    # 440 KB on one line
    (tmp_path / "pairs.jsonl").write_text(json.dumps({"prompt": huge, "image": "a.png"}) + "\n"
                                          + json.dumps({"prompt": "a red cube", "image": "a.png"}) + "\n")
    rows = read_pairs_table(tmp_path / "pairs.jsonl")
    scorer = Scorer(model_dir, device="cpu")
    tokenizer, seen = scorer.processor.tokenizer, []

    def recording(texts, **kwargs):
        seen.extend(len(t.encode("utf-8")) for t in texts)
        return tokenizer(texts, **kwargs)

    scorer.processor = SimpleNamespace(tokenizer=recording, image_processor=scorer.processor.image_processor)
    out = score_rows(scorer, rows)
    assert out[1]["score"] is not None
    assert seen and max(seen) <= MAX_PROMPT_BYTES, f"the tokenizer was given a {max(seen)}-byte prompt"


def test_rerank_never_waits_on_a_candidate_swapped_for_a_fifo_after_scoring(tmp_path):
    import training.rerank as rr
    from formats.outputs import recorded_output_dir
    from training.score_cli import PairRow

    image = _png(tmp_path / "c0.png")
    stack = contextlib.ExitStack()

    class SwappingScorer:
        def score_pairs(self, pairs, groups=None):
            image.unlink()          # another account's generator folder: the file becomes a FIFO once it was read
            stack.enter_context(fifo_that_fails_not_hangs(image, after=60.0))
            return [SimpleNamespace(score=1.0, preference=1.0, rank=1, error=None) for _ in pairs]

    folder, listed = recorded_output_dir(tmp_path / "out", [], "--output", rr.RERANK_RECORD, rr.RERANK_FILES)
    started = time.monotonic()
    with stack:
        rr.rerank(SwappingScorer(), [PairRow("p", "a cube", str(image))], folder, record=listed)
    assert time.monotonic() - started < 30.0, "the contact sheet waited on the FIFO until a writer came (60 s)"
    assert Image.open(io.BytesIO((folder / "contact_sheet.png").read_bytes())).size[0] > 0


# --- hostile input tables -------------------------------------------------------------------------------------------------

def test_a_jsonl_table_with_invalid_utf8_is_refused_naming_the_table(tmp_path):
    from training.score_cli import read_pairs_table

    table = tmp_path / "pairs.jsonl"
    table.write_bytes(b'{"prompt": "a \xff cube", "image": "a.png"}\n{"prompt": "a cube", "image": "b.png"}\n')
    with pytest.raises(ValueError) as refused:
        read_pairs_table(table)
    assert "pairs.jsonl" in str(refused.value), str(refused.value)


def test_score_prints_no_terminal_control_characters_from_a_table(tmp_path):
    from training.score_cli import print_rows, read_pairs_table, score_rows

    _png(tmp_path / "a.png")
    hostile = "a cube \x1b]0;owned\x07\x1b[2J\x1b[1A"            # retitle the terminal, clear it, move the cursor
    (tmp_path / "pairs.jsonl").write_text(json.dumps({"prompt": hostile, "image": "a.png"}) + "\n"
                                          + json.dumps({"prompt": hostile, "image": "missing.png"}) + "\n")
    rows = read_pairs_table(tmp_path / "pairs.jsonl")
    out = io.StringIO()
    print_rows(score_rows(_FakeScorer(), rows), out)
    text = out.getvalue()
    assert "a cube" in text
    assert not any(c in text for c in "\x1b\x07"), repr(text)


@pytest.mark.parametrize("argv, refusal", [
    (["rerank", "--model", "m", "--candidates", "c", "--output", "o", "--sheet-prompts", "-1"],
     "--sheet-prompts: -1 is not between 0 and 256"),          # silently dropped the last prompt of the sheet
    (["rerank", "--model", "m", "--candidates", "c", "--output", "o", "--sheet-prompts", "100000"],
     "--sheet-prompts: 100000 is not between 0 and 256"),      # a PNG 100,000 rows of 194 px tall
    (["score", "--model", "m", "--prompt", "a", "b.png", "--batch-size", "1000000"],
     "--batch-size: 1000000 is not between 1 and 1024"),
])
def test_counts_of_the_consumer_commands_are_bounded_before_anything_loads(argv, refusal, capsys):
    """Suspected by rev16, fixed the same day: `--sheet-prompts` and `--batch-size` took any integer."""
    with pytest.raises(SystemExit) as stopped:
        pickapic(argv)
    assert stopped.value.code == 2 and refusal in capsys.readouterr().err
