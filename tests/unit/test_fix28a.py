"""Fixes of hostile review rev28a (tests/unit/test_hostile_rev28a.py): the trainer and its use. A run folder named in
run config is checked as `pickapic train --output-dir` is, and `python -m simulator.best_of_n --output` as `pickapic
rerank --output`; the evaluation asset reports on the run's own splits; a data_dir's run is named after its version;
a credential in init_from is hidden; malformed samples and labels are refused naming shard and key; captions are cut
before tokenization; `pickapic score` keeps no object per row it could not score."""
from __future__ import annotations

import io
import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from formats.home import DataHome
from formats.outputs import RefusedOutput, check_output_dir
from training import runs
from training.data import MAX_CAPTION_CHARS, ImageSpec, PairCollator, bounded_caption, iter_captions, pair_meta
from training.synthetic import tiny_config, write_synthetic_version

SIZES = {"train": 16, "validation": 8, "test": 8, "validation_unique": 8, "test_unique": 8}
VERSION = "2023-03-01-0000000000"


def _jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 30, 30)).save(buffer, format="JPEG")
    return buffer.getvalue()


def _sample(**meta) -> dict:
    values = {"caption": "a red cube", "label_0": 1.0, "label_1": 0.0, "num_example_per_prompt": 2}
    values.update(meta)
    return {"__key__": "tr000007", "__url__": "/v/train/pickapic-train-000003.tar", "0.jpg": _jpeg(), "1.jpg": _jpeg(),
            "txt": values["caption"].encode(), "json": json.dumps(values).encode()}


# ------------------------------------------------------------------------------------------ labels and samples
@pytest.mark.parametrize("labels", [(1, 0), (0.0, 1.0), (0.5, 0.5), (0.7, 0.3)])
def test_a_preference_distribution_is_taken_as_it_is(labels):
    meta = pair_meta(_sample(label_0=labels[0], label_1=labels[1]))
    assert meta["label"] == (float(labels[0]), float(labels[1]))
    assert meta["weight"] == 0.5 and meta["caption"] == "a red cube"


@pytest.mark.parametrize("labels", [(3.0, -2.0), (0.5, 0.6), (True, False), ("1", "0"), (None, None), (1.5, -0.5)])
def test_labels_that_are_no_preference_are_refused_naming_shard_and_key(labels):
    with pytest.raises(ValueError, match="label_0") as caught:
        pair_meta(_sample(label_0=labels[0], label_1=labels[1]))
    assert "tr000007" in str(caught.value) and "pickapic-train-000003.tar" in str(caught.value)


def test_non_finite_labels_are_refused():
    sample = _sample()
    sample["json"] = b'{"caption": "x", "label_0": NaN, "label_1": Infinity, "num_example_per_prompt": 1}'
    with pytest.raises(ValueError, match="no preference"):
        pair_meta(sample)


@pytest.mark.parametrize("count", ["3", 0, -1, True, None, [2]])
def test_a_count_that_is_not_a_positive_number_is_refused_naming_the_sample(count):
    with pytest.raises(ValueError, match="num_example_per_prompt") as caught:
        pair_meta(_sample(num_example_per_prompt=count))
    assert "tr000007" in str(caught.value) and "pickapic-train-000003.tar" in str(caught.value)


@pytest.mark.parametrize("member, data, words", [
    ("json", b"[1, 2]", "not an object"), ("json", b"{not json", "not valid JSON"),
    ("json", b"\xff\xfe{}", "not valid JSON"), ("txt", b"\xff\xfe a red cube", "not UTF-8")])
def test_a_malformed_member_is_one_line_naming_shard_and_key(member, data, words):
    sample = _sample()
    sample[member] = data
    with pytest.raises(ValueError, match=words) as caught:
        pair_meta(sample)
    message = str(caught.value)
    assert "\n" not in message and "tr000007" in message and "pickapic-train-000003.tar" in message


def test_an_image_that_does_not_decode_is_refused_naming_shard_and_key():
    from training.model import train_tokenizer

    sample = _sample()
    sample["1.jpg"] = b"not a jpeg"
    collate = PairCollator(train_tokenizer(["a red cube", "two blue stars"] * 10, 600), 77)
    with pytest.raises(ValueError, match="1.jpg cannot be read") as caught:
        collate([sample], ImageSpec(32, 32), draft=False)
    assert "tr000007" in str(caught.value) and "pickapic-train-000003.tar" in str(caught.value)


def test_captions_are_cut_only_past_the_bound():
    normal = "a photo of a red cube on a table, " * 100
    assert bounded_caption(normal) is normal
    huge = "ab" * MAX_CAPTION_CHARS
    assert bounded_caption(huge) == huge[:MAX_CAPTION_CHARS]
    assert len("é" * MAX_CAPTION_CHARS) * 4 <= 64 * 1024  # at most the 64 KiB `pickapic score` takes, in UTF-8
    assert pair_meta(_sample(caption=huge))["caption"] == huge[:MAX_CAPTION_CHARS]


def test_the_tokenizers_caption_pass_reads_cut_captions(tmp_path):
    from tests.unit.test_hostile_rev28a import _rewrite_split

    version = write_synthetic_version(tmp_path / "home" / "datasets" / "pickapic" / VERSION, SIZES, image_px=32,
                                      shards_per_split=1).version_dir
    before = list(iter_captions(version, "train"))

    def longer(sample: dict) -> dict:
        if sample["__key__"].endswith("0"):
            sample["txt"] = sample["txt"] * 5000
        return sample
    _rewrite_split(version / "train", longer)
    after = list(iter_captions(version, "train"))
    assert len(after) == len(before) and max(map(len, after)) == MAX_CAPTION_CHARS
    assert [a for a, b in zip(after, before) if a != b] and all(
        a == b for a, b in zip(after, before) if len(a) < MAX_CAPTION_CHARS)

    def not_utf8(sample: dict) -> dict:
        sample["txt"] = b"\xff" + sample["txt"]
        return sample
    _rewrite_split(version / "train", not_utf8)
    with pytest.raises(ValueError, match="not UTF-8") as caught:
        list(iter_captions(version, "train"))
    assert "pickapic-train-" in str(caught.value)


# ------------------------------------------------------------------------------------------ output folders
def _home(tmp_path: Path) -> tuple[DataHome, Path]:
    home = DataHome.at(tmp_path / "home")
    version = write_synthetic_version(home.root / "datasets" / "pickapic" / VERSION, SIZES, image_px=32,
                                      shards_per_split=1).version_dir
    return home, version


def test_a_run_config_output_dir_is_checked_as_train_output_dir(tmp_path):
    home, version = _home(tmp_path)
    (tmp_path / "file").write_text("x")
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "notes.txt").write_text("mine\n")
    for refused in (tmp_path / "file", tmp_path / "link", "/dev/null", tmp_path / "theirs", version,
                    home.warehouse / "run", home.root):
        with pytest.raises(RefusedOutput, match="output_dir"):
            runs.check_run_output_dir(refused, home)
        with pytest.raises(RefusedOutput, match="output_dir"):   # before anything is read or written
            runs.train_latest(home, tiny_config("", str(refused), max_steps=1, eval_every=1))
    assert (tmp_path / "theirs" / "notes.txt").read_text() == "mine\n" and not list((tmp_path / "real").iterdir())
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / ".train.lock").write_text("")
    for accepted in (tmp_path / "new" / "run", tmp_path / "real", earlier, home.models / "by-hand"):
        assert runs.check_run_output_dir(accepted, home) == Path(os.path.abspath(accepted))


def test_a_data_dir_outside_the_home_needs_an_output_dir(tmp_path):
    home, _ = _home(tmp_path)
    elsewhere = write_synthetic_version(tmp_path / "copies" / VERSION, SIZES, image_px=32, shards_per_split=1).version_dir
    with pytest.raises(ValueError, match="give output_dir too"):
        runs.train_latest(home, tiny_config(str(elsewhere), "", max_steps=1, eval_every=1))
    assert not runs.runs_folder(home).exists() or not list(runs.runs_folder(home).iterdir())


def test_best_of_n_by_hand_refuses_an_output_in_the_home_or_through_a_link(tmp_path):
    from simulator.best_of_n import OUTPUT_MARKERS, main

    home = DataHome.at(tmp_path / "home")
    (home.root / "datasets" / "pickapic").mkdir(parents=True)
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    for refused in (home.warehouse / "bon", tmp_path / "link", home.root / "datasets" / "pickapic" / "x"):
        with pytest.raises(RefusedOutput, match="--output"):
            main(["--home", str(home.root), "--model", str(tmp_path / "run" / "best"), "--output", str(refused)])
    assert not home.warehouse.exists() and not list((tmp_path / "real").iterdir())
    earlier = tmp_path / "earlier"
    (earlier / "candidates").mkdir(parents=True)
    (earlier / "candidates" / "truth.parquet").write_bytes(b"")
    assert check_output_dir(earlier, [home.root], "--output", markers=OUTPUT_MARKERS, in_home=True) == earlier
    (earlier / "rerank").symlink_to(tmp_path / "real")    # an earlier output whose rerank/ is a link
    with pytest.raises(RefusedOutput, match="symbolic link"):
        main(["--home", str(home.root), "--model", str(tmp_path / "run" / "best"), "--output", str(earlier)])


# ------------------------------------------------------------------------------------------ evaluation splits
def _best_with_splits(tmp_path: Path, eval_split: str, test_split: str) -> Path:
    best = tmp_path / "run" / "best"
    best.mkdir(parents=True)
    tiny_config(tmp_path / "data", tmp_path / "run").save(best, None)
    path = best / "train_config.json"
    stored = json.loads(path.read_text())
    stored.update(eval_split=eval_split, test_split=test_split)
    path.write_text(json.dumps(stored))
    return best


def test_the_evaluation_uses_the_runs_own_splits(tmp_path):
    assert runs.run_splits(_best_with_splits(tmp_path, "test_unique", "validation_unique")) == (
        "test_unique", "validation_unique")
    assert runs.run_splits(tmp_path / "no-config") == ("validation_unique", "test_unique")


@pytest.mark.parametrize("splits", [("validation", "validation_unique"), ("test_unique", "test_unique")])
def test_a_model_whose_selection_split_is_its_report_split_is_refused(tmp_path, splits):
    with pytest.raises(ValueError, match="not two different held-out splits"):
        runs.run_splits(_best_with_splits(tmp_path, *splits))


# ------------------------------------------------------------------------------------------ credentials
def test_a_credential_in_a_model_link_is_never_shown(tmp_path):
    from training.model import check_clip_dir, shown_path

    link = "https://alice:hf_Rev28aSecretToken@huggingface.co/yuvalkirstain/PickScore_v1"
    assert "hf_Rev28aSecretToken" not in shown_path(link)
    assert "hf_Rev28aSecretToken" not in shown_path(Path(link))          # Path folds '//' into '/'
    assert shown_path(Path(link)).startswith("https://alice:***@huggingface.co")
    assert shown_path(tmp_path / "plain" / "best") == str(tmp_path / "plain" / "best")
    assert shown_path("relative/run:1/best") == "relative/run:1/best"
    with pytest.raises(FileNotFoundError) as caught:
        check_clip_dir(link)
    assert "hf_Rev28aSecretToken" not in str(caught.value) and "alice:***@" in str(caught.value)


# ------------------------------------------------------------------------------------------ pickapic score
class _Scorer:
    """Scores pairs whose image names start with 'ok' (1.0, 2.0, ... per call), the rest a missing file."""

    def __init__(self) -> None:
        self.calls = []

    def score_pairs(self, pairs, groups=None):
        pairs = list(pairs)
        self.calls.append(len(pairs))
        return [SimpleNamespace(score=float(n + 1), error=None) if image.startswith("ok") else
                SimpleNamespace(score=None, error=f"missing_file: {image} does not exist")
                for n, (_, image) in enumerate(pairs)]


def test_scores_come_back_in_order_with_preferences_and_ranks_over_every_chunk(monkeypatch):
    import training.score_cli as sc
    from training.scoring import ranks_within, softmax_within

    monkeypatch.setattr(sc, "SCORE_ROWS", 3)
    rows = [sc.PairRow("g1", "p", "ok-a"), sc.PairRow("g1", "p", "gone-1"), sc.PairRow("g2", "q", "", "missing_image_path: x"),
            sc.PairRow("g1", "p", "gone-2"), sc.PairRow("g1", "p", "ok-b"), sc.PairRow("g2", "q", "ok-c"),
            sc.PairRow("g2", "q", "gone-3"), sc.PairRow("g1", "p", "ok-d")]
    scorer = _Scorer()
    out = list(sc.score_rows(scorer, rows))
    assert scorer.calls == [3, 3, 1]
    assert [r["error"] for r in out] == [None, "missing_file: gone-1 does not exist", "missing_image_path: x",
                                         "missing_file: gone-2 does not exist", None, None,
                                         "missing_file: gone-3 does not exist", None]
    scores = [r["score"] for r in out]
    assert scores == [1.0, None, None, None, 1.0, 2.0, None, 1.0]   # the fake numbers its calls' pairs from 1
    groups = [r.prompt_id for r in rows]
    assert [r["preference"] for r in out] == softmax_within(groups, scores)
    assert [r["rank"] for r in out] == ranks_within(groups, scores)
    assert sc.ScoredRows.__getitem__(sc.score_rows(_Scorer(), rows), -2)["error"] == "missing_file: gone-3 does not exist"


def test_unscorable_rows_share_their_error_text_and_distinct_texts_are_bounded(monkeypatch):
    import training.score_cli as sc

    monkeypatch.setattr(sc, "MAX_ERROR_TEXTS", 2)
    errors = sc.ErrorTexts()
    first = errors.add("missing_file: /a.png does not exist", "/a.png")
    assert errors.add("missing_file: /b.png does not exist", "/b.png") == first
    errors.add("unreadable_image: /c.png: truncated", "/c.png")
    spill = errors.add("unreadable_image: /d.png: cannot identify image at 0x1", "/d.png")
    assert errors.add("unreadable_image: /e.png: cannot identify image at 0x2", "/e.png") == spill
    assert len(errors.texts) == 3
    assert errors.text(spill, "/e.png").startswith("unreadable_image: /e.png (the details of this error were not kept")
    runs_ = sc.FailedRuns()
    for number in (0, 1, 2, 5, 6):
        runs_.add(number, 0)
    runs_.close()
    runs_.add(9, 0)
    runs_.add(10, 1)
    assert len(runs_.starts) == 3
    assert [runs_.find(n) for n in (0, 2, 4, 6, 7, 8, 9, 10, 11)] == [0, 0, 0, 0, None, None, 0, 1, None]
