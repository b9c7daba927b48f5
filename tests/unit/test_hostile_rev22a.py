"""Hostile review rev22a: the consumer commands `pickapic score`, `pickapic rerank` and `pickapic export`.

Each test below reproduced one defect confirmed by running the command, filed as a strict xfail; all 17 are fixed
(the twenty-second session; the markers are gone).

Tried and held up (no test kept unless noted):
- score/rerank/export --output refusals: a link to a file, a folder, a path inside a data home, a FIFO and
  /dev/null; umask 007 gives 0660 files and 0770 created folders (score --output and rerank --output).
- rerank twice on the same candidates (ties included: three identical images) writes byte-identical
  choices.parquet, scores.parquet, contact_sheet.png and pickapic-rerank.json; equal scores keep the input
  order in the choice, the rank and the contact sheet alike (kept below as a regular test).
- export --format pickscore-parquet and eval-prompts, twice into two folders: byte-identical files; both
  formats into one folder merge their record.
- a Parquet table with a duplicated `prompt` column (a clear error naming the table), a CSV with a UTF-8
  byte-order mark in its header, a CSV with a quoted multi-line prompt, a CSV/JSONL that does not parse.
- a `pytorch_model.bin` that unpickles `os.system` (refused by torch's weights_only load; no code runs),
  `auto_map` in a --model folder's processor/tokenizer configs (the folder's config.json names a CLIP model,
  so transformers uses its own classes and never asks), a URL as an image path (missing_file, no network).
- no network: `strace -f -e trace=connect` on a whole rerank (HF_HUB_OFFLINE unset) shows no inet connect.
- a 2 MB prompt in a CSV or JSONL row (a missing_prompt row, the other rows scored), a Latin-1 CSV (refused).
- a --model folder holding no config.json / a bert config / no tokenizer (clear refusals, earlier reviews).
"""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from dagster_project.cli import main as pickapic
from formats.files import create_temp
from tests.scoring_fixtures import FakeScorer, tiny_checkpoint

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny CLIP checkpoint (random weights, BPE trained on synthetic captions): loads in well under a second."""
    return tiny_checkpoint(tmp_path_factory.mktemp("rev22a-model"), logit_scale=3.0, save_run_config=True)


def _png(path: Path, colour=(90, 20, 20), size=(40, 40)) -> Path:
    Image.new("RGB", size, colour).save(path, format="PNG")
    return path


_FakeScorer = FakeScorer


@pytest.fixture
def fake_scorer(monkeypatch):
    import training.scoring

    monkeypatch.setattr(training.scoring, "Scorer", _FakeScorer)


def _model_copy(model_dir: Path, target: Path) -> Path:
    shutil.copytree(model_dir, target)
    return target


# --- input tables -----------------------------------------------------------------------------------------------------

def test_a_csv_with_a_duplicated_column_is_a_clear_error(tmp_path, capsys, fake_scorer):
    _png(tmp_path / "a.png")
    (tmp_path / "dup.csv").write_text("prompt,image,prompt\ntwo red stars,a.png,a green ring\n")
    # today: KeyError('Field "prompt" exists 2 times in schema') escapes pickapic's main as a traceback
    code = pickapic(["score", "--model", str(tmp_path / "model"), "--input", str(tmp_path / "dup.csv")])
    assert code == 1 and "dup.csv" in capsys.readouterr().err


def test_one_prompt_id_with_two_prompts_is_not_ranked_as_one_set(tmp_path, capsys, fake_scorer):
    _png(tmp_path / "a.png")
    _png(tmp_path / "b.png", (20, 90, 20))
    pq.write_table(pa.table({"prompt_id": ["g", "g"], "prompt": ["two red stars", "a green ring"],
                             "image": ["a.png", "b.png"]}), tmp_path / "cands.parquet")
    code = pickapic(["rerank", "--model", str(tmp_path / "model"), "--candidates", str(tmp_path / "cands.parquet"),
                     "--output", str(tmp_path / "out")])
    if code == 0:   # today: one choice, prompt 'two red stars', picked between images of two different prompts
        choices = pq.read_table(tmp_path / "out" / "choices.parquet").to_pylist()
        assert len(choices) == 2, choices
    else:
        assert "prompt_id" in capsys.readouterr().err


def test_a_whitespace_only_table_prompt_is_missing_as_in_a_prompt_txt(tmp_path):
    from training.rerank import read_candidate_folder
    from training.score_cli import read_pairs_table

    sub = tmp_path / "cands" / "p0"
    sub.mkdir(parents=True)
    (sub / "prompt.txt").write_text("  \n")
    _png(sub / "c0.png")
    assert read_candidate_folder(tmp_path / "cands")[0].error.startswith("missing_prompt")   # the folder form
    pq.write_table(pa.table({"prompt": ["  \n"], "image": [str(sub / "c0.png")]}), tmp_path / "t.parquet")
    row = read_pairs_table(tmp_path / "t.parquet")[0]
    assert row.error is not None and row.error.startswith("missing_prompt"), row


def test_a_byte_order_mark_is_not_part_of_a_prompt_txt(tmp_path):
    from training.rerank import read_candidate_folder

    sub = tmp_path / "cands" / "p0"
    sub.mkdir(parents=True)
    (sub / "prompt.txt").write_bytes("\ufefftwo red stars\r\n".encode("utf-8"))   # Windows Notepad's UTF-8
    _png(sub / "c0.png")
    # (with the test model: -1.325 for the BOM prompt, -1.388 for 'two red stars'; a CSV's BOM is dropped by Arrow)
    assert read_candidate_folder(tmp_path / "cands")[0].prompt == "two red stars"


def test_a_candidate_of_an_unlisted_image_suffix_is_not_dropped_silently(tmp_path):
    from training.rerank import read_candidate_folder

    sub = tmp_path / "cands" / "p0"
    sub.mkdir(parents=True)
    (sub / "prompt.txt").write_text("two red stars\n")
    _png(sub / "c0.png")
    Image.new("RGB", (40, 40), (20, 20, 90)).save(sub / "c1.gif", format="GIF")
    rows = read_candidate_folder(tmp_path / "cands")
    assert any(row.image.endswith("c1.gif") for row in rows), rows   # scored, or an error row naming it


def test_a_tiny_table_of_many_bad_rows_is_not_a_memory_bomb(tmp_path, fake_scorer):
    import tracemalloc

    rows = 100_000                       # the same file with 100 M rows is a few hundred KB and ~90 GB of rows
    bomb = tmp_path / "bomb.parquet"
    pq.write_table(pa.table({"prompt": pa.nulls(rows, pa.string()), "image": pa.nulls(rows, pa.string())}), bomb,
                   compression="zstd")
    assert bomb.stat().st_size < 4096
    tracemalloc.start()
    try:
        pickapic(["score", "--model", str(tmp_path / "model"), "--input", str(bomb), "--output",
                  str(tmp_path / "out.parquet")])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # refused as a table bomb, or streamed: either way not 1 KB of Python objects per bad row
    assert peak < 32 << 20, f"{peak / 2**20:.0f} MiB for a {bomb.stat().st_size}-byte table"


# --- images -----------------------------------------------------------------------------------------------------------

def test_a_16_bit_grayscale_png_is_not_scored_as_white(model_dir, tmp_path):
    from training.scoring import Scorer

    Image.fromarray(np.full((40, 40), 20000, dtype=np.uint16)).save(tmp_path / "g16.png")   # 30 % grey, I;16
    _png(tmp_path / "g8.png", (78, 78, 78))
    _png(tmp_path / "white.png", (255, 255, 255))
    g16, g8, white = Scorer(model_dir, device="cpu").score("two red stars", [tmp_path / n for n in
                                                                             ("g16.png", "g8.png", "white.png")])
    assert g16.error is not None or abs(g16.score - g8.score) < 0.05, (g16.score, g8.score, white.score)


# --- the model folder -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("damage", ["no weights", "truncated safetensors"])
def test_a_model_folder_without_readable_weights_is_a_clear_error(model_dir, tmp_path, capsys, damage):
    broken = _model_copy(model_dir, tmp_path / "broken")
    weights = broken / "model.safetensors"
    if damage == "no weights":
        weights.unlink()
    else:
        weights.write_bytes(weights.read_bytes()[:100])   # an interrupted copy
    _png(tmp_path / "a.png")
    code = pickapic(["score", "--model", str(broken), "--prompt", "two red stars", str(tmp_path / "a.png")])
    assert code == 1 and str(broken) in capsys.readouterr().err


def test_a_checkpoint_missing_weights_is_refused_not_randomly_initialised(model_dir, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    partial = _model_copy(model_dir, tmp_path / "partial")
    weights = load_file(model_dir / "model.safetensors")
    del weights["text_projection.weight"]
    save_file(weights, partial / "model.safetensors", metadata={"format": "pt"})
    _png(tmp_path / "a.png")
    outputs = []
    for run in range(2):
        out = tmp_path / f"s{run}.jsonl"
        code = pickapic(["score", "--model", str(partial), "--prompt", "two red stars", str(tmp_path / "a.png"),
                         "--output", str(out)])
        outputs.append((code, out.read_bytes() if out.exists() else None))
    # today: exit 0 both times, scores e.g. -4.20 and 0.58 (random init), the report only in transformers' log line
    assert outputs[0][0] == 1 and outputs[0][1] is None and "text_projection" in capsys.readouterr().err, outputs


def test_non_finite_scores_are_never_reported_as_scores(model_dir, tmp_path):
    from transformers import CLIPModel

    nan_model = _model_copy(model_dir, tmp_path / "nan")
    clip = CLIPModel.from_pretrained(model_dir, local_files_only=True)
    with torch.no_grad():
        clip.visual_projection.weight[0, 0] = float("nan")     # what a diverged training run saves
    clip.save_pretrained(nan_model)
    images = [str(_png(tmp_path / "a.png")), str(_png(tmp_path / "b.png", (20, 90, 20)))]
    out = tmp_path / "s.jsonl"
    code = pickapic(["score", "--model", str(nan_model), "--prompt", "two red stars", *images, "--output", str(out)])
    if code == 0:
        def refuse(constant):
            raise ValueError(f"{constant} is not JSON")
        rows = [json.loads(line, parse_constant=refuse) for line in out.read_text().splitlines()]
        assert all((r["score"] is None and r["error"]) or math.isfinite(r["score"]) for r in rows), rows


def test_a_processor_crop_size_that_does_not_fit_the_model_is_refused(model_dir, tmp_path, capsys):
    odd = _model_copy(model_dir, tmp_path / "odd")
    crop = {"height": 1_000_000, "width": 1_000_000}
    config = json.loads((odd / "processor_config.json").read_text())
    config["image_processor"]["crop_size"] = crop
    (odd / "processor_config.json").write_text(json.dumps(config))
    config = json.loads((odd / "preprocessor_config.json").read_text())
    config["crop_size"] = crop
    (odd / "preprocessor_config.json").write_text(json.dumps(config))
    _png(tmp_path / "a.png")
    # today: numpy's _ArrayMemoryError ("Unable to allocate 349. TiB") escapes as a traceback
    code = pickapic(["score", "--model", str(odd), "--prompt", "two red stars", str(tmp_path / "a.png")])
    assert code == 1 and "crop" in capsys.readouterr().err


def test_a_processor_folder_never_runs_its_own_python_code(model_dir, tmp_path):
    evil = _model_copy(model_dir, tmp_path / "evil-processor")
    for name in ("config.json", "model.safetensors", "train_config.json"):
        (evil / name).unlink()
    marker = tmp_path / "code-ran"
    (evil / "evil_proc.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
        "from transformers import CLIPProcessor\nclass EvilProcessor(CLIPProcessor):\n    pass\n")
    for name in ("tokenizer_config.json", "preprocessor_config.json", "processor_config.json"):
        config = json.loads((evil / name).read_text())
        config.pop("processor_class", None)
        config["auto_map"] = {"AutoProcessor": "evil_proc.EvilProcessor"}
        (evil / name).write_text(json.dumps(config))
    image = _png(tmp_path / "a.png")
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HOME": str(tmp_path / "hf"),
           "HF_MODULES_CACHE": str(tmp_path / "hf-modules"), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "dagster_project.cli", "score", "--model", str(model_dir),
                           "--processor", str(evil), "--prompt", "two red stars", str(image)],
                          input="y\n", capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    # today: transformers prints "Do you wish to run the custom code? [y/N]", reads 'y' and imports evil_proc.py
    assert not marker.exists()
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]


# --- outputs ----------------------------------------------------------------------------------------------------------

def test_a_rerun_of_score_removes_the_temporary_file_a_killed_run_left(tmp_path, fake_scorer):
    _png(tmp_path / "a.png")
    out = tmp_path / "results" / "s.parquet"
    out.parent.mkdir()
    fd, leftover = create_temp(out.parent, out.name)   # what a run killed while writing leaves (seen with os._exit)
    os.write(fd, b"PAR1 half written")
    os.close(fd)
    assert pickapic(["score", "--model", str(tmp_path / "model"), "--prompt", "two red stars", str(tmp_path / "a.png"),
                     "--output", str(out)]) == 0
    assert sorted(p.name for p in out.parent.iterdir()) == ["s.parquet"]   # as rerank and export clean theirs


def test_rerank_never_reads_its_own_output_as_candidates(tmp_path, capsys, fake_scorer):
    sub = tmp_path / "cands" / "p0"
    sub.mkdir(parents=True)
    (sub / "prompt.txt").write_text("two red stars\n")
    _png(sub / "c0.png")
    out = tmp_path / "cands" / "_reranked"
    argv = ["rerank", "--model", str(tmp_path / "model"), "--candidates", str(tmp_path / "cands"), "--output", str(out)]
    first = pickapic(argv)
    if first == 0:
        assert pickapic(argv) == 0
        ids = [c["prompt_id"] for c in pq.read_table(out / "choices.parquet").to_pylist()]
        assert ids == ["p0"], ids   # today: ['_reranked', 'p0'], contact_sheet.png a missing_prompt candidate
    else:
        assert "--candidates" in capsys.readouterr().err


def test_a_refused_rerank_output_removes_nothing_from_the_folder(tmp_path, capsys, fake_scorer):
    from formats.outputs import open_output_file

    sub = tmp_path / "cands" / "p0"
    sub.mkdir(parents=True)
    (sub / "prompt.txt").write_text("two red stars\n")
    _png(sub / "c0.png")
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("the user's own file: work/ is no rerank output")
    # a `pickapic score --output work/scores.parquet` in flight (it holds no lock on work/) ...
    with open_output_file(work / "scores.parquet", []) as handle:
        handle.write(b"the scores of a long score run")
        # ... while a rerank is pointed at work/ by mistake: refused, as it must be ...
        code = pickapic(["rerank", "--model", str(tmp_path / "model"), "--candidates", str(tmp_path / "cands"),
                         "--output", str(work)])
        assert code == 1 and "not a previous output" in capsys.readouterr().err
    # ... but it deleted the score run's temporary file first: today its rename fails, FileNotFoundError
    assert (work / "scores.parquet").read_bytes() == b"the scores of a long score run"


@pytest.mark.parametrize("case", ["score --output", "score --output 249 bytes", "score --input", "rerank --output",
                                  "rerank --candidates", "export --output"])
def test_a_path_name_too_long_for_the_file_system_is_a_clear_error(tmp_path, capsys, fake_scorer, case):
    _png(tmp_path / "a.png")
    sub = tmp_path / "cands" / "p0"
    sub.mkdir(parents=True)
    (sub / "prompt.txt").write_text("two red stars\n")
    _png(sub / "c0.png")
    long = str(tmp_path / ("n" * 300))
    model = ["--model", str(tmp_path / "model")]
    score = ["score", *model, "--prompt", "two red stars", str(tmp_path / "a.png")]
    rerank = ["rerank", *model, "--candidates", str(tmp_path / "cands"), "--output", str(tmp_path / "out")]
    if case == "export --output":
        from test_publish_fixtures import make_home

        from pipelines.publish.config import PublishConfig
        from pipelines.publish.version import publish_dataset

        home = make_home(tmp_path / "home", num_rankings=40, seed=31)
        publish_dataset(home, PublishConfig(workers=1, fsync=False))
    argv = {"score --output": [*score, "--output", long + ".csv"],
            # a valid name (249 bytes): refused or written, never lost after the scoring ('.NAME.HEX.tmp' is 267)
            "score --output 249 bytes": [*score, "--output", str(tmp_path / ("n" * 245)) + ".csv"],
            "score --input": ["score", *model, "--input", long + ".csv"],
            "rerank --output": [*rerank[:-1], long],
            "rerank --candidates": [*rerank[:4], long, *rerank[5:]],
            "export --output": ["export", "--home", str(tmp_path / "home"), "--output", long]}[case]
    code = pickapic(argv)                 # today: OSError [Errno 36] File name too long escapes as a traceback
    if code == 0:
        assert case == "score --output 249 bytes" and Path(argv[-1]).is_file()
    else:
        assert code in (1, 2) and "too long" in capsys.readouterr().err


def test_rerank_outputs_are_byte_identical_across_runs_and_ties_keep_input_order(tmp_path, fake_scorer, monkeypatch):
    """Held up: equal scores keep the input order everywhere, and two runs write the same bytes."""
    class TiedScorer(_FakeScorer):
        def score_pairs(self, pairs, groups=None):
            rows = super().score_pairs(pairs, groups)
            from training.scoring import ranks_within, softmax_within
            for row in rows:
                row.score = 1.0
            groups = list(groups) if groups is not None else [r.prompt for r in rows]
            scores = [r.score for r in rows]
            for row, p, r in zip(rows, softmax_within(groups, scores), ranks_within(groups, scores)):
                row.preference, row.rank = p, r
            return rows

    import training.scoring
    monkeypatch.setattr(training.scoring, "Scorer", TiedScorer)
    sub = tmp_path / "cands" / "p0"
    sub.mkdir(parents=True)
    (sub / "prompt.txt").write_text("two red stars\n")
    for name in ("c2.png", "c0.png", "c1.png"):
        _png(sub / name)
    written = []
    for run in ("r1", "r2"):
        assert pickapic(["rerank", "--model", str(tmp_path / "model"), "--candidates", str(tmp_path / "cands"),
                         "--output", str(tmp_path / run)]) == 0
        written.append({p.name: p.read_bytes() for p in sorted((tmp_path / run).iterdir())})
    assert written[0] == written[1]
    choice = pq.read_table(tmp_path / "r1" / "choices.parquet").to_pylist()[0]
    assert choice["best_image"].endswith("c0.png") and choice["runner_up_image"].endswith("c1.png")
    ranks = {Path(r["image"]).name: r["rank"] for r in pq.read_table(tmp_path / "r1" / "scores.parquet").to_pylist()}
    assert ranks == {"c0.png": 1, "c1.png": 2, "c2.png": 3}


# --- export -----------------------------------------------------------------------------------------------------------

def test_export_of_a_damaged_sidecar_offset_is_a_clear_error(tmp_path, capsys):
    from test_publish_fixtures import make_home

    from pipelines.publish.config import PublishConfig
    from pipelines.publish.version import publish_dataset

    home = make_home(tmp_path / "home", num_rankings=40, seed=31)
    published = publish_dataset(home, PublishConfig(workers=1, fsync=False))
    sidecar = sorted((published.path / "train").glob("pickapic-train-*.parquet"))[0]
    table = pq.read_table(sidecar)
    index = table.schema.get_field_index("jpg_0_offset")
    offsets = table.column(index).to_pylist()
    offsets[0] = -512                                      # one damaged value, as a bad disk block would leave
    table = table.set_column(index, table.schema.field(index), pa.array(offsets, table.schema.field(index).type))
    os.chmod(sidecar, 0o644)
    pq.write_table(table, sidecar)
    out = tmp_path / "export"
    code = pickapic(["export", "--home", str(home.root), "--output", str(out)])
    assert code in (1, 2) and sidecar.name in capsys.readouterr().err
    assert not out.exists()
