"""Fixes of hostile review rev22a's input defects of ``pickapic score`` / ``pickapic rerank`` (tables, candidate
folders, rerank's --output), beyond the review's own tests in test_hostile_rev22a.py."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from dagster_project.cli import main as pickapic
from schemas import get_schema
from tests.scoring_fixtures import FakeScorer

_FakeScorer = FakeScorer


@pytest.fixture
def fake_scorer(monkeypatch):
    import training.scoring

    monkeypatch.setattr(training.scoring, "Scorer", _FakeScorer)


def _png(path, colour=(90, 20, 20)):
    Image.new("RGB", (16, 16), colour).save(path, format="PNG")
    return path


def test_a_duplicated_csv_column_is_refused_naming_the_column(tmp_path):
    from training.score_cli import read_pairs_table

    (tmp_path / "dup.csv").write_text("prompt,image,image\na cube,a.png,b.png\n")
    with pytest.raises(ValueError, match="more than one column named 'image'"):
        read_pairs_table(tmp_path / "dup.csv")


def test_a_prompt_id_of_two_prompts_is_refused_and_one_of_one_prompt_is_a_set(tmp_path, capsys, fake_scorer):
    from training.score_cli import read_pairs_table

    pq.write_table(pa.table({"prompt_id": [7, 7, 8], "prompt": ["a cube", "a cube", "a ring"],
                             "image": ["a.png", "b.png", "c.png"]}), tmp_path / "ok.parquet")
    assert [row.prompt_id for row in read_pairs_table(tmp_path / "ok.parquet")] == ["7", "7", "8"]
    # a row without a prompt (white space only) is its own error row, no second prompt of its id
    pq.write_table(pa.table({"prompt_id": ["g", "g"], "prompt": ["a cube", " "], "image": ["a.png", "b.png"]}),
                   tmp_path / "blank.parquet")
    assert [row.error is None for row in read_pairs_table(tmp_path / "blank.parquet")] == [True, False]
    pq.write_table(pa.table({"prompt_id": ["g", "g", "h"], "prompt": ["a cube", "a ring", "x"],
                             "image": ["a.png", "b.png", "c.png"]}), tmp_path / "bad.parquet")
    code = pickapic(["score", "--model", str(tmp_path / "m"), "--input", str(tmp_path / "bad.parquet")])
    err = capsys.readouterr().err
    assert code == 1 and "prompt_id 'g' holds different prompts ('a cube', 'a ring'" in err, err


def test_pair_table_rows_index_like_a_list(tmp_path):
    from training.score_cli import read_pairs_table

    pq.write_table(pa.table({"prompt": ["a", None, "c"], "image": ["a.png", "b.png", None]}), tmp_path / "t.parquet")
    rows = read_pairs_table(tmp_path / "t.parquet")
    assert len(rows) == 3 and rows[-1] == rows[2] == list(rows)[2] and rows[1:] == list(rows)[1:]
    assert rows[1].error == "missing_prompt: row 2 of t.parquet has no prompt"
    assert rows[2].error == "missing_image_path: row 3 of t.parquet has no image"
    with pytest.raises(IndexError):
        rows[3]


@pytest.mark.parametrize("fmt", [".parquet", ".csv", ".jsonl"])
def test_rows_are_written_in_batches_as_one_table(tmp_path, monkeypatch, fmt):
    import training.score_cli as sc

    monkeypatch.setattr(sc, "ROW_BATCH", 4)
    schema = get_schema("rerank_choices")
    rows = [{f.name: None for f in schema} | {"prompt_id": f"p{n}", "prompt": "a, \"cube\"", "num_candidates": n,
                                                "num_scored": 0, "errors": [f"e{n}", "x"]} for n in range(10)]
    path = sc.write_rows(rows, schema, tmp_path / f"out{fmt}")
    if fmt == ".parquet":
        assert pq.read_table(path).to_pylist() == rows
    elif fmt == ".jsonl":
        assert [json.loads(line) for line in path.read_text().splitlines()] == rows
    else:
        lines = path.read_text().splitlines()
        assert len(lines) == 11 and lines[0].startswith('"prompt_id"') and '"[""e9"", ""x""]"' in lines[-1]


def test_scores_of_more_rows_than_a_batch_keep_their_order(tmp_path, monkeypatch, fake_scorer):
    import training.score_cli as sc

    monkeypatch.setattr(sc, "ROW_BATCH", 3)
    prompts = ["a cube" if n % 3 else None for n in range(10)]
    pq.write_table(pa.table({"prompt": prompts, "image": [f"{n}.png" for n in range(10)]}), tmp_path / "t.parquet")
    assert pickapic(["score", "--model", str(tmp_path / "m"), "--input", str(tmp_path / "t.parquet"), "--output",
                     str(tmp_path / "out.parquet")]) == 0
    out = pq.read_table(tmp_path / "out.parquet").to_pylist()
    assert [row["image"] for row in out] == [str(tmp_path / f"{n}.png") for n in range(10)]
    assert [row["score"] for row in out] == [None, 1.0, 2.0, None, 3.0, 4.0, None, 5.0, 6.0, None]
    assert [row["error"] is None for row in out] == [p is not None for p in prompts]


def test_every_candidate_file_gets_a_row_hidden_files_none(tmp_path):
    from training.rerank import read_candidate_folder

    sub = tmp_path / "cands" / "p0"
    sub.mkdir(parents=True)
    (sub / "prompt.txt").write_bytes("\ufeffa cube\n".encode())
    _png(sub / "c0.PNG")
    (sub / "notes.txt").write_text("not an image")
    (sub / ".DS_Store").write_bytes(b"\0")
    rows = read_candidate_folder(tmp_path / "cands")
    assert [(row.prompt, row.image.rsplit("/", 1)[1], row.error) for row in rows] == [
        ("a cube", "c0.PNG", None),
        ("a cube", "notes.txt", "unsupported_image: p0/notes.txt is not a .png, .jpg, .jpeg, .webp, .bmp file "
                                "(convert it to score it)")]


@pytest.mark.parametrize("where", ["same", "inside", "link"])
def test_rerank_output_in_its_candidates_folder_is_refused(tmp_path, capsys, fake_scorer, where):
    sub = tmp_path / "cands" / "p0"
    sub.mkdir(parents=True)
    (sub / "prompt.txt").write_text("a cube\n")
    _png(sub / "c0.png")
    (tmp_path / "link").symlink_to(tmp_path / "cands")
    output = {"same": tmp_path / "cands", "inside": sub / "out", "link": tmp_path / "link" / "out"}[where]
    code = pickapic(["rerank", "--model", str(tmp_path / "m"), "--candidates", str(tmp_path / "cands"),
                     "--output", str(output)])
    assert code == 1 and "is inside --candidates" in capsys.readouterr().err
    assert sorted(p.name for p in sub.iterdir()) == ["c0.png", "prompt.txt"]


def test_rerank_output_beside_a_candidates_table_is_fine(tmp_path, fake_scorer):
    _png(tmp_path / "a.png")
    pq.write_table(pa.table({"prompt": ["a cube"], "image": ["a.png"]}), tmp_path / "cands.parquet")
    assert pickapic(["rerank", "--model", str(tmp_path / "m"), "--candidates", str(tmp_path / "cands.parquet"),
                     "--output", str(tmp_path / "out")]) == 0
    assert pq.read_table(tmp_path / "out" / "choices.parquet").column("best_image").to_pylist() == [
        str(tmp_path / "a.png")]


def test_rerank_of_a_tiny_table_of_many_bad_rows_costs_no_memory_per_row(tmp_path, fake_scorer):
    import tracemalloc

    def bomb(rows: int):
        path = tmp_path / f"bomb-{rows}.parquet"
        pq.write_table(pa.table({"prompt": pa.nulls(rows, pa.string()), "image": pa.nulls(rows, pa.string())}), path,
                       compression="zstd")
        return path

    # a first small run imports what rerank imports when it runs (~24 MiB of modules), outside the measure
    assert pickapic(["rerank", "--model", str(tmp_path / "model"), "--candidates", str(bomb(10)),
                     "--output", str(tmp_path / "warm")]) == 0
    rows = 100_000
    tracemalloc.start()
    try:
        code = pickapic(["rerank", "--model", str(tmp_path / "model"), "--candidates", str(bomb(rows)),
                         "--output", str(tmp_path / "out")])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert code == 0
    assert peak < 16 << 20, f"{peak / 2**20:.0f} MiB for {rows} rows that cannot be scored"      # was 86 MiB
    (choice,) = pq.read_table(tmp_path / "out" / "choices.parquet").to_pylist()
    assert choice["num_candidates"] == rows and choice["num_scored"] == 0
    assert len(choice["errors"]) == 21 and choice["errors"][-1].startswith(f"... and {rows - 20} more")
    assert pq.read_metadata(tmp_path / "out" / "scores.parquet").num_rows == rows     # every row is still there


def test_choices_and_the_sheet_keep_the_best_first_input_order_on_ties(tmp_path):
    from training.rerank import choose, contact_sheet_png

    def row(n, score, prompt_id="p"):
        return {"prompt_id": prompt_id, "prompt": "two red stars", "image": str(tmp_path / f"c{n}.png"),
                "score": score, "preference": None if score is None else score / 10, "rank": None,
                "error": None if score is not None else "missing_file: gone"}

    rows = [row(0, 1.0), row(1, None), row(2, 3.0), row(3, 3.0), row(4, 2.0), row(5, 3.0, "q"), row(6, None, "q")]
    (p, q) = choose(rows)
    assert (p["best_image"], p["runner_up_image"], p["margin"]) == (rows[2]["image"], rows[3]["image"], 0.0)
    assert (p["num_candidates"], p["num_scored"], len(p["errors"])) == (5, 4, 1)
    assert (q["best_image"], q["runner_up_image"], q["num_candidates"]) == (rows[5]["image"], None, 2)
    for n in range(7):
        _png(tmp_path / f"c{n}.png", (40 * n, 20, 20))
    assert contact_sheet_png(rows, prompts=1, max_candidates=3) == contact_sheet_png(rows[:5], prompts=1,
                                                                                    max_candidates=3)


def test_file_managers_files_are_skipped_and_an_image_beside_the_subfolders_gets_a_row(tmp_path):
    from training.rerank import read_candidate_folder

    sub = tmp_path / "cands" / "p0"
    sub.mkdir(parents=True)
    (sub / "prompt.txt").write_text("two red stars\n")
    for name in ("c0.png", ".c1.png"):
        _png(sub / name)
    for name in (".DS_Store", "Thumbs.db"):
        (sub / name).write_bytes(b"file manager metadata")
    (sub / "._c0.png").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00 macOS AppleDouble metadata")
    _png(sub / "._c2.png")                                 # a real image of that name is a candidate (rev22d)
    _png(tmp_path / "cands" / "stray.png")                 # files in no prompt's subfolder
    (tmp_path / "cands" / "README.txt").write_text("notes")
    (tmp_path / "cands" / ".DS_Store").write_bytes(b"file manager metadata")
    rows = read_candidate_folder(tmp_path / "cands")
    assert [(r.prompt_id, Path(r.image).name, (r.error or "").split(":")[0]) for r in rows] == [
        ("stray.png", "stray.png", "missing_prompt"),
        ("p0", "._c2.png", ""), ("p0", ".c1.png", ""), ("p0", "c0.png", "")]


def test_a_nan_prompt_id_is_no_id_and_a_group_takes_its_first_real_prompt(tmp_path):
    from training.rerank import choose
    from training.score_cli import prompt_digest, read_pairs_table, score_rows

    table = tmp_path / "cands.parquet"
    pq.write_table(pa.table({"prompt_id": [float("nan"), float("nan"), 7.0], "prompt": ["a dog", "a cat", "a cat"],
                             "image": ["a.png", "b.png", "c.png"]}), table)
    rows = read_pairs_table(table)           # NaN is pandas' missing value: the prompt's digest, not one id "nan"
    assert [r.prompt_id for r in rows] == [prompt_digest("a dog"), prompt_digest("a cat"), "7.0"]
    grouped = tmp_path / "grouped.parquet"
    pq.write_table(pa.table({"prompt_id": ["g", "g"], "prompt": ["   ", "a cat"], "image": ["a.png", "b.png"]}), grouped)
    [choice] = choose(score_rows(_FakeScorer(), read_pairs_table(grouped)))
    assert choice["prompt"] == "a cat" and choice["num_candidates"] == 2 and choice["num_scored"] == 1
