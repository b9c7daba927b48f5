"""`Scorer`, `pickapic score` and `pickapic rerank`: the evaluation's scores, PickScore's README, bad input as rows."""
from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from transformers import AutoModel, AutoProcessor

from dagster_project.cli import main as pickapic
from data_contracts.engine import evaluate, load_contract
from pipelines.sqlrun import connect
from tests.hostile_corpus import png_from_rows
from training.data import iter_captions, preprocess_image, split_shards, tar_samples
from training.evaluate import score_split
from training.model import NotAClipCheckpoint, PairScorer, build_model, save_checkpoint
from training.scoring import Scorer
from training.synthetic import tiny_config, write_synthetic_version


@pytest.fixture(scope="module")
def version(tmp_path_factory):
    # 160 px JPEGs for a 32 px model: the old draft decode reads them at 1/4 scale, so it differs from exact
    root = tmp_path_factory.mktemp("home") / "datasets" / "pickapic" / "v1"
    sizes = {"train": 24, "validation": 4, "test": 4, "validation_unique": 8, "test_unique": 12}
    return write_synthetic_version(root, sizes, image_px=160, seed=5).version_dir


@pytest.fixture(scope="module")
def model_dir(version, tmp_path_factory):
    out = tmp_path_factory.mktemp("model")
    config = tiny_config(version, out / "run")
    clip, processor = build_model(config, iter_captions(version, "train"))
    torch.manual_seed(1)
    with torch.no_grad():  # a non-trivial logit scale, so preferences are far from uniform
        clip.logit_scale.fill_(3.0)
    save_checkpoint(out / "best", clip, processor)
    config.save(out / "best")
    return out / "best"


def _pairs(version: Path, split: str) -> list[dict]:
    return list(tar_samples({"url": str(p)} for p in split_shards(version, split)))


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def test_scores_equal_the_evaluation_path(version, model_dir):
    scorer = Scorer(model_dir, device="cpu", batch_size=5)
    clip = AutoModel.from_pretrained(model_dir, local_files_only=True).eval()
    evaluated = score_split(PairScorer(clip), scorer.processor, version, "test_unique", num_workers=0, bf16=False)
    samples = {s["__key__"]: s for s in _pairs(version, "test_unique")}
    pairs = [(samples[k]["txt"].decode(), samples[k][f"{j}.jpg"]) for k in evaluated.keys for j in (0, 1)]
    rows = scorer.score_pairs(pairs, groups=[k for k in evaluated.keys for _ in (0, 1)])
    ours = np.array([r.score for r in rows]).reshape(-1, 2)
    np.testing.assert_allclose(ours, evaluated.scores, atol=1e-4)
    # the preference is the softmax over each pair, as the metric reads it
    probs = np.exp(evaluated.scores) / np.exp(evaluated.scores).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(np.array([r.preference for r in rows]).reshape(-1, 2), probs, atol=1e-5)
    # a draft decode would not have matched: the evaluation decodes exactly
    spec = scorer.spec
    jpg = samples[evaluated.keys[0]]["0.jpg"]
    assert np.abs(preprocess_image(jpg, spec, draft=True) - preprocess_image(jpg, spec, draft=False)).max() > 1e-3


def test_pickscore_readme_snippet_agrees_with_scorer(model_dir):
    # PickScore's README `calc_probs`, verbatim but for transformers 5's output objects (`.pooler_output`)
    processor = AutoProcessor.from_pretrained(model_dir, local_files_only=True)
    model = AutoModel.from_pretrained(model_dir, local_files_only=True).eval()
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (90, 120, 3), dtype=np.uint8)) for _ in range(4)]
    prompt = "a red cube, oil painting"
    image_inputs = processor(images=images, padding=True, truncation=True, max_length=77, return_tensors="pt")
    text_inputs = processor(text=prompt, padding=True, truncation=True, max_length=77, return_tensors="pt")
    with torch.no_grad():
        image_embs = model.get_image_features(**image_inputs).pooler_output
        image_embs = image_embs / torch.norm(image_embs, dim=-1, keepdim=True)
        text_embs = model.get_text_features(**text_inputs).pooler_output
        text_embs = text_embs / torch.norm(text_embs, dim=-1, keepdim=True)
        scores = model.logit_scale.exp() * (text_embs @ image_embs.T)[0]
        probs = torch.softmax(scores, dim=-1)
    rows = Scorer(model_dir, device="cpu").score(prompt, images)
    np.testing.assert_allclose([r.score for r in rows], scores.numpy(), atol=1e-4)
    np.testing.assert_allclose([r.preference for r in rows], probs.numpy(), atol=1e-5)
    assert [r.rank for r in rows] == list(np.argsort(np.argsort(-scores.numpy())) + 1)
    # the same images as PNG files score the same
    paths = []
    for i, image in enumerate(images):
        path = model_dir.parent / f"img{i}.png"
        path.write_bytes(_png(np.asarray(image)))
        paths.append(path)
    np.testing.assert_allclose([r.score for r in Scorer(model_dir, device="cpu").score(prompt, paths)],
                               scores.numpy(), atol=1e-4)


def test_bad_images_become_rows_not_crashes(model_dir, tmp_path):
    good = tmp_path / "good.png"
    good.write_bytes(_png(np.full((40, 40, 3), 200, dtype=np.uint8)))
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:60])
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("not an image")
    (tmp_path / "folder.png").mkdir()
    (tmp_path / "bomb.png").write_bytes(png_from_rows(20_000, 20_000, b"\x00" * 64))  # a header, no pixels
    names = ["good.png", "missing.png", "truncated.png", "empty.png", "text.jpg", "folder.png", "bomb.png", "good.png"]
    rows = Scorer(model_dir, device="cpu", batch_size=2).score("two blue stars", [tmp_path / n for n in names])
    reasons = [r.error.split(":", 1)[0] if r.error else None for r in rows]
    assert reasons == [None, "missing_file", "unreadable_image", "empty_file", "unreadable_image", "not_a_file",
                       "decompression_bomb", None]
    assert "missing.png" in rows[1].error
    assert rows[0].score == pytest.approx(rows[7].score, abs=1e-5)
    assert rows[0].preference + rows[7].preference == pytest.approx(1.0)
    assert all(r.score is None and r.preference is None for r in rows[1:7])


def test_a_directory_that_is_not_a_clip_checkpoint_says_so(tmp_path, model_dir):
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        Scorer(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(NotAClipCheckpoint, match="holds no config.json"):
        Scorer(tmp_path / "empty")
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    with pytest.raises(NotAClipCheckpoint, match="model_type='bert'.*BertModel"):
        Scorer(bert)
    # PickScore_v1's own folder has weights but no processor: --processor names one
    weights_only = tmp_path / "weights_only"
    weights_only.mkdir()
    for name in ("config.json", "model.safetensors"):
        (weights_only / name).write_bytes((model_dir / name).read_bytes())
    with pytest.raises(NotAClipCheckpoint, match="--processor"):
        Scorer(weights_only)
    assert Scorer(weights_only, model_dir, device="cpu").score("x", [np.zeros((8, 8, 3), np.uint8).tobytes()])[0].error
    code = pickapic(["score", "--model", str(bert), "--prompt", "x", str(tmp_path / "a.png")])
    assert code == 1


def test_score_cli_reads_a_table_and_writes_every_row(model_dir, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        (images / f"{i}.png").write_bytes(_png(np.full((48, 48, 3), 60 * i, dtype=np.uint8)))
    table = pa.table({"prompt": ["a red cube", "a red cube", "a blue cube", None, "a blue cube"],
                      "image": ["images/0.png", "images/1.png", "images/2.png", "images/0.png", "images/gone.png"]})
    pacsv.write_csv(table, tmp_path / "pairs.csv")
    out = tmp_path / "scores.parquet"
    assert pickapic(["score", "--model", str(model_dir), "--input", str(tmp_path / "pairs.csv"), "--output", str(out)]) == 0
    rows = pq.read_table(out).to_pylist()
    assert len(rows) == 5 and [r["image"] for r in rows][:3] == [str(images / f"{i}.png") for i in range(3)]
    assert rows[3]["error"].startswith("missing_prompt") and rows[4]["error"].startswith("missing_file")
    assert rows[0]["preference"] + rows[1]["preference"] == pytest.approx(1.0) and rows[2]["preference"] == 1.0
    assert {rows[0]["rank"], rows[1]["rank"]} == {1, 2}
    assert "2 of 5 images could not be scored" in capsys.readouterr().err
    # one prompt + files on the command line, printed as a table; JSONL output
    assert pickapic(["score", "--model", str(model_dir), "--prompt", "a red cube", str(images / "0.png"),
                     str(images / "1.png")]) == 0
    printed = capsys.readouterr().out
    assert "preference" in printed and str(images / "1.png") in printed
    assert pickapic(["score", "--model", str(model_dir), "--prompt", "a red cube", str(images / "0.png"),
                     "--output", str(tmp_path / "s.jsonl")]) == 0
    assert json.loads((tmp_path / "s.jsonl").read_text().splitlines()[0])["rank"] == 1
    assert pickapic(["score", "--model", str(model_dir)]) == 1  # nothing to score: a clear error, exit 1
    assert "nothing to score" in capsys.readouterr().err


def test_rerank_picks_the_argmax(model_dir, tmp_path):
    rng = np.random.default_rng(3)
    folder = tmp_path / "candidates"
    for p, prompt in enumerate(["two red stars", "a green ring on black", "four blue squares"]):
        sub = folder / f"prompt{p}"
        sub.mkdir(parents=True)
        (sub / "prompt.txt").write_text(prompt + "\n")
        for c in range(4):
            (sub / f"c{c}.png").write_bytes(_png(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)))
    (folder / "prompt1" / "c9.png").write_bytes(b"\x89PNG broken")
    (folder / "no_prompt").mkdir()
    (folder / "no_prompt" / "c0.png").write_bytes(_png(np.zeros((40, 40, 3), np.uint8)))
    out = tmp_path / "out"
    assert pickapic(["rerank", "--model", str(model_dir), "--candidates", str(folder), "--output", str(out)]) == 0
    scores = pq.read_table(out / "scores.parquet").to_pylist()
    choices = {c["prompt_id"]: c for c in pq.read_table(out / "choices.parquet").to_pylist()}
    assert set(choices) == {"prompt0", "prompt1", "prompt2", "no_prompt"}
    for prompt_id in ("prompt0", "prompt1", "prompt2"):
        mine = [r for r in scores if r["prompt_id"] == prompt_id and r["score"] is not None]
        ordered = sorted(mine, key=lambda r: -r["score"])
        assert choices[prompt_id]["best_image"] == max(mine, key=lambda r: r["score"])["image"]
        assert choices[prompt_id]["margin"] == pytest.approx(ordered[0]["score"] - ordered[1]["score"])
        assert choices[prompt_id]["num_scored"] == 4
    assert choices["prompt1"]["num_candidates"] == 5 and choices["prompt1"]["errors"][0].endswith(
        "unreadable_image: " + choices["prompt1"]["errors"][0].split("unreadable_image: ")[1])
    assert choices["no_prompt"]["best_image"] is None and "missing_prompt" in choices["no_prompt"]["errors"][0]
    with Image.open(out / "contact_sheet.png") as sheet:
        assert sheet.width > 4 * 128 and sheet.height > 3 * 128
    con = connect({"rerank_choices": str(out / "choices.parquet"), "image_scores": str(out / "scores.parquet")})
    for dataset in ("rerank_choices", "image_scores"):
        results = evaluate(load_contract(dataset), con)
        assert results and all(r.passed for r in results), [(r.rule.name, r.value) for r in results if not r.passed]
    # the same candidates as a table give the same choices
    table = pa.table({"prompt_id": [r["prompt_id"] for r in scores], "prompt": [r["prompt"] or "x" for r in scores],
                      "image": [r["image"] for r in scores]})
    pq.write_table(table, tmp_path / "candidates.parquet")
    assert pickapic(["rerank", "--model", str(model_dir), "--candidates", str(tmp_path / "candidates.parquet"),
                     "--output", str(tmp_path / "out2")]) == 0
    again = {c["prompt_id"]: c["best_image"] for c in pq.read_table(tmp_path / "out2" / "choices.parquet").to_pylist()}
    assert {k: v for k, v in again.items() if k != "no_prompt"} == {
        k: c["best_image"] for k, c in choices.items() if k != "no_prompt"}


def test_scoring_commands_build_their_parsers_without_torch():
    # `pickapic train --help` took 13 s: building a parser must not import torch (nor transformers)
    code = ("import sys\nfrom dagster_project.cli import _build_parser\n"
            "for name in ('train', 'score', 'rerank', 'export'):\n    _build_parser(name)\n"
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_every_command_option_has_help_text():
    from dagster_project.cli import _build_parser

    for name in ("train", "score", "rerank"):
        parser = _build_parser(name)
        sub = next(a for a in parser._actions if a.dest == "command").choices[name]
        missing = [a.option_strings or a.dest for a in sub._actions if not a.help]
        assert not missing, f"pickapic {name}: options without help {missing}"


def test_score_and_rerank_refuse_outputs_they_must_not_replace(model_dir, tmp_path, capsys):
    image = tmp_path / "0.png"
    image.write_bytes(_png(np.full((40, 40, 3), 90, dtype=np.uint8)))
    target = tmp_path / "target.txt"
    target.write_text("not ours")
    link = tmp_path / "link.parquet"
    link.symlink_to(target)
    home = tmp_path / "home"
    (home / "warehouse" / "users").mkdir(parents=True)
    inside = home / "warehouse" / "users" / "x.parquet"
    for bad in (link, tmp_path, inside):
        code = pickapic(["score", "--home", str(home), "--model", str(model_dir), "--prompt", "a cube", str(image),
                         "--output", str(bad)])
        assert code == 1, bad
        assert "--output" in capsys.readouterr().err
    assert target.read_text() == "not ours" and link.is_symlink() and not inside.exists()
    folder = tmp_path / "candidates" / "p0"
    folder.mkdir(parents=True)
    (folder / "prompt.txt").write_text("a cube\n")
    (folder / "c0.png").write_bytes(image.read_bytes())
    dir_link = tmp_path / "out-link"
    dir_link.symlink_to(tmp_path / "candidates")
    for bad in (dir_link, target, home / "warehouse"):
        code = pickapic(["rerank", "--home", str(home), "--model", str(model_dir), "--candidates",
                         str(tmp_path / "candidates"), "--output", str(bad)])
        assert code == 1, bad
        assert "--output" in capsys.readouterr().err
    assert not (tmp_path / "candidates" / "choices.parquet").exists()


def test_csv_prompts_are_read_as_written(tmp_path):
    """Prompts that look like numbers or like NA / null are prompts; only an empty cell is a missing one."""
    from training.score_cli import read_pairs_table

    (tmp_path / "pairs.csv").write_text('prompt,image,prompt_id\n1984,a.png,7\nNA,b.png,\nnull,c.png,\n"",d.png,x\n')
    rows = read_pairs_table(tmp_path / "pairs.csv")
    assert [(r.prompt, r.error is None) for r in rows] == [("1984", True), ("NA", True), ("null", True), ("", False)]
    assert rows[0].prompt_id == "7" and rows[1].prompt_id != rows[2].prompt_id     # an empty id: the prompt's digest
    assert rows[3].error.startswith("missing_prompt") and rows[1].image == str(tmp_path / "b.png")


def test_score_refuses_an_unknown_output_format_before_loading_the_model(tmp_path, monkeypatch):
    import argparse

    import training.scoring
    from training import score_cli

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before --output was checked")

    monkeypatch.setattr(training.scoring, "Scorer", no_model)
    parser = argparse.ArgumentParser()
    score_cli.add_arguments(parser)
    args = parser.parse_args(["--model", str(tmp_path / "model"), "--prompt", "a cube", str(tmp_path / "0.png"),
                              "--output", str(tmp_path / "scores.txt")])
    with pytest.raises(ValueError, match="unknown table format '.txt'"):
        score_cli.run_from_args(args)
    assert not (tmp_path / "scores.txt").exists()


def test_rerank_replaces_only_files_an_earlier_rerank_wrote(model_dir, tmp_path, capsys):
    # a hostile review: a folder holding the user's own scores.parquet counted as an earlier rerank's
    image = tmp_path / "0.png"
    image.write_bytes(_png(np.full((40, 40, 3), 90, dtype=np.uint8)))
    folder = tmp_path / "candidates" / "p0"
    folder.mkdir(parents=True)
    (folder / "prompt.txt").write_text("a cube\n")
    (folder / "c0.png").write_bytes(image.read_bytes())
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "scores.parquet").write_bytes(b"my own scores")
    args = ["rerank", "--model", str(model_dir), "--candidates", str(tmp_path / "candidates"), "--output"]
    assert pickapic([*args, str(mine)]) == 1
    assert "not a previous output" in capsys.readouterr().err and (mine / "scores.parquet").read_bytes() == b"my own scores"
    out = tmp_path / "out"
    assert pickapic([*args, str(out)]) == 0 and pickapic([*args, str(out)]) == 0   # its own output: replaced
    assert sorted(p.name for p in out.iterdir()) == ["choices.parquet", "contact_sheet.png", "pickapic-rerank.json",
                                                     "scores.parquet"]


def test_rerank_writes_its_folder_all_or_nothing_and_never_through_a_swapped_in_link(tmp_path):
    # a hostile review: the folder was checked once, then written by path minutes later (after scoring)
    from types import SimpleNamespace

    import pytest

    import training.rerank as rr
    from formats.outputs import RefusedOutput, recorded_output_dir
    from training.score_cli import PairRow

    out, victim = tmp_path / "out", tmp_path / "victim"
    victim.mkdir()
    (victim / "scores.parquet").write_text("the victim's own file\n")
    folder, listed = recorded_output_dir(out, [], "--output", rr.RERANK_RECORD, rr.RERANK_FILES)

    class SwappingScorer:
        def score_pairs(self, pairs, groups=None):
            out.symlink_to(victim)          # while the model scores, the output becomes a link
            return [SimpleNamespace(score=1.0, preference=0.5, rank=1, error=None) for _ in pairs]

    with pytest.raises(RefusedOutput, match="symbolic link"):
        rr.rerank(SwappingScorer(), [PairRow("p", "a cat", "/x.png")], folder, record=listed)
    assert sorted(p.name for p in victim.iterdir()) == ["scores.parquet"]
    assert (victim / "scores.parquet").read_text() == "the victim's own file\n"


def test_extremely_thin_images_are_error_rows_not_a_memory_blow_up(model_dir, tmp_path):
    good = tmp_path / "good.png"
    good.write_bytes(_png(np.full((40, 40, 3), 200, dtype=np.uint8)))
    Image.new("RGB", (1, 2000), (90, 20, 20)).save(tmp_path / "strip.png")      # aspect 2000
    Image.new("RGB", (3000, 2), (90, 20, 20)).save(tmp_path / "band.png")       # aspect 1500
    Image.new("RGB", (40, 2000), (90, 20, 20)).save(tmp_path / "tall.png")     # aspect 50, the bound: scored
    names = ["good.png", "strip.png", "band.png", "tall.png"]
    rows = Scorer(model_dir, device="cpu", batch_size=2).score("two blue stars", [tmp_path / n for n in names])
    assert [r.error.split(":", 1)[0] if r.error else None for r in rows] == [None, "bad_dimensions", "bad_dimensions",
                                                                               None]
    from training.data import MAX_ASPECT, ImageGeometryError, ImageSpec, check_geometry

    assert MAX_ASPECT == 50
    assert f"{tmp_path / 'strip.png'}: image is 1x2000, aspect ratio 2000.0 > {MAX_ASPECT}" in rows[1].error
    assert rows[0].score is not None and rows[3].score is not None
    assert rows[0].preference + rows[3].preference == pytest.approx(1.0)
    # the hostile review's 1 x 200,000 PNG (862 bytes) would have been resized to 224 x 44.8 M pixels
    with pytest.raises(ImageGeometryError, match="1x200000"):
        check_geometry(1, 200_000, ImageSpec())
    with pytest.raises(ImageGeometryError, match="would be .* pixels"):
        check_geometry(8000, 8000 * 40, ImageSpec(shortest_edge=4096, crop=4096))
