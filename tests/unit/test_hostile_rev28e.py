"""Hostile review rev28e of fix28a (commit ed35538, "Fix review rev28a (trainer and its use)"): the run-config
``output_dir`` check (``runs.check_run_output_dir``), ``python -m simulator.best_of_n --output`` and its
``OUTPUT_MARKERS``, the run's own evaluation splits (``runs.run_splits``), a ``data_dir``'s run folder named after its
version, ``model.shown_path`` for credentials in ``init_from``, the label and malformed-sample checks of
``training/data.py``, captions cut to ``data.MAX_CAPTION_CHARS`` and ``score_cli.score_rows`` scoring ``SCORE_ROWS``
rows at a time (``ErrorTexts``, ``FailedRuns``).

Run for real: tiny CPU trainings on synthetic versions in the publish layout (``training.train.train``,
``runs.train_latest`` / ``evaluate_latest``, what the model assets call), a real Dagster materialization of
``preference_model``, the real ``pickapic rerank`` command and ``python -m simulator.best_of_n``, and the real
``Scorer`` on a saved tiny model.

Filed as eight strict xfails; all seven defects fixed the same day by fix28e (``tests/unit/test_fix28e.py``), and the
tests now pass as plain tests.

Reviewed and found sound (no test here): a run-config ``output_dir`` that is a symbolic link, has a linked parent,
climbs through ``..`` into a pipeline folder, or is a published version is refused; resuming a run into the same
``output_dir``, the weekly training of `latest` after a ``data_dir`` training, and a home whose version another
home's run folder was trained on are accepted or refused as they should be (an existing run folder of another
version or home is refused by the trainer's own "cannot resume" check); ``run_splits`` gives the defaults for a model
without ``train_config.json``; ties 0.5/0.5, integer labels 1/0, 0.30000000000000004 + 0.7 and a count 2.0 are
taken; ``shown_path`` hides ``user:pass@`` in https, hf, s3, upper-case schemes, IPv6 hosts and a query string,
also where ``Path`` folded ``//``; ``score_rows`` on tables of exactly 2,048 and 2,049 rows, and on tables whose every
row fails, gives the same rows and error texts as scoring the whole table at once, and the same bytes on a rerun;
a table of a million rows that cannot be scored holds only numbers (a scored row costs ~260 bytes, its score and a
per-prompt array: noticed, not filed).

Each test below reproduces a defect confirmed by running it; the assertions state the correct behaviour.
"""
from __future__ import annotations

import random
from collections import defaultdict

import numpy as np
import pytest
from PIL import Image

from formats.home import DataHome
from tests.unit.test_fix28a import _sample
from tests.unit.test_hostile_rev28a import TINY, _rewrite_split, _set_meta, _simulated_home, _version  # noqa: F401
from training import runs
from training.synthetic import tiny_config, write_synthetic_version

SIZES = {"train": 16, "validation": 8, "test": 8, "validation_unique": 8, "test_unique": 8}


# ------------------------------------------------------------------------------------------ data loss
def test_best_of_n_never_deletes_a_users_candidates_beside_their_rerank_output(tmp_path):
    from dagster_project.cli import main as pickapic
    from simulator.best_of_n import main

    _, model = _simulated_home(tmp_path / "home")
    project = tmp_path / "project"
    prompt = project / "candidates" / "cube"
    prompt.mkdir(parents=True)
    (prompt / "prompt.txt").write_text("a red cube\n")
    for i in range(2):
        Image.fromarray(np.full((32, 32, 3), 40 * i, np.uint8)).save(prompt / f"mine{i}.png")
    assert pickapic(["rerank", "--home", str(tmp_path / "home"), "--model", str(model), "--candidates",
                     str(project / "candidates"), "--output", str(project / "rerank"), "--device", "cpu"]) == 0
    mine = sorted(p.relative_to(project).as_posix() for p in (project / "candidates").rglob("*"))
    try:
        main(["--home", str(tmp_path / "home"), "--model", str(model), "--output", str(project), "--n", "2",
              "--max-prompts", "1", "--device", "cpu"])
    except (SystemExit, ValueError):
        pass
    assert sorted(p.relative_to(project).as_posix() for p in (project / "candidates").rglob("*")) == mine


# ------------------------------------------------------------------------------------------ wrong published data
def test_an_output_dir_naming_another_versions_run_folder_is_refused(tmp_path):
    home = DataHome.at(tmp_path / "home")
    old = write_synthetic_version(home.root / "datasets" / "pickapic" / "2023-03-01-0000000000", SIZES, image_px=32,
                                  shards_per_split=1).version_dir
    new = write_synthetic_version(home.root / "datasets" / "pickapic" / "2023-03-02-0000000000", SIZES, image_px=32,
                                  shards_per_split=1, seed=5).version_dir
    latest_run = runs.run_dir(home, new)
    with pytest.raises(ValueError):
        runs.train_latest(home, tiny_config(str(old), str(latest_run), max_steps=2, eval_every=2))
    assert not latest_run.exists()


# ------------------------------------------------------------------------------------------ secrets
def test_a_token_in_init_froms_url_fragment_never_reaches_the_run_history(tmp_path, env_kept):
    import dagster as dg

    from dagster_project.assets.model import preference_model
    from dagster_project.build import use_home
    from dagster_project.resources import PickapicHome

    secret = "hf_Rev28eFragmentToken"
    home = DataHome(tmp_path / "home")
    _version(home.root)
    settings = home.root / "pickapic.toml"
    settings.write_text(f'[train]\ninit_from = "https://huggingface.co/yuvalkirstain/PickScore_v1#access_token={secret}"'
                        '\nmax_steps = 2\nnum_workers = 0\ndevice = "cpu"\n')
    settings.chmod(0o600)
    use_home(home)
    with dg.DagsterInstance.from_config(str(home.dagster_home)) as instance:
        result = dg.materialize([preference_model], instance=instance, raise_on_error=False,
                                resources={"data_home": PickapicHome(root=str(home.root))})
    assert not result.success
    holding = sorted(str(p.relative_to(home.dagster_home)) for p in home.dagster_home.rglob("*")
                     if p.is_file() and secret.encode() in p.read_bytes())
    assert holding == []


# ------------------------------------------------------------------------------------------ pickapic score / rerank
def test_identical_rows_in_different_chunks_get_one_score(tmp_path):
    from training.data import iter_captions
    from training.model import build_model, save_checkpoint
    from training.score_cli import SCORE_ROWS, PairRow, prompt_digest, score_rows
    from training.scoring import Scorer

    version = write_synthetic_version(tmp_path / "home" / "datasets" / "pickapic" / "2023-03-01-0000000000", SIZES,
                                      image_px=32, shards_per_split=1).version_dir
    clip, processor = build_model(tiny_config(version, tmp_path / "unused"), iter_captions(version, "train"))
    save_checkpoint(tmp_path / "model", clip, processor)
    for i in range(8):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(
            tmp_path / f"img{i}.png")
    rng = random.Random(1)
    words = ["red cube", "blue star", "green ball", "a tall tower of many words in a long caption " * 3, "cat"]
    rows = []
    for _ in range(SCORE_ROWS + 52):
        prompt = f"{rng.choice(words)} {rng.randrange(40)}"
        rows.append(PairRow(prompt_digest(prompt), prompt, str(tmp_path / f"img{rng.randrange(8)}.png")))
    out = list(score_rows(Scorer(tmp_path / "model", device="cpu"), rows))
    scores = defaultdict(set)
    for row in out:
        scores[(row["prompt_id"], row["prompt"], row["image"])].add(row["score"])
    assert {key: values for key, values in scores.items() if len(values) > 1} == {}


# ------------------------------------------------------------------------------------------ bad samples
@pytest.mark.parametrize("meta", [{"label_0": 10 ** 400, "label_1": 0}, {"num_example_per_prompt": 10 ** 400}],
                         ids=["label", "count"])
def test_a_huge_integer_label_or_count_is_a_one_line_error_naming_the_sample(meta):
    from training.data import pair_meta

    with pytest.raises(Exception) as caught:
        pair_meta(_sample(**meta))
    message = str(caught.value)
    assert isinstance(caught.value, ValueError) and not isinstance(caught.value, OverflowError), message
    assert "tr000007" in message and "pickapic-train-000003.tar" in message and "\n" not in message


def test_a_count_below_one_is_bad_data_not_a_divergence(tmp_path):
    from training.train import TrainingDiverged, train

    version_dir = _version(tmp_path / "home")
    _rewrite_split(version_dir / "train", _set_meta(num_example_per_prompt=1e-300))
    run = tmp_path / "run"
    with pytest.raises(ValueError, match="num_example_per_prompt") as caught:
        train(tiny_config(version_dir, run, **TINY))
    assert not isinstance(caught.value, TrainingDiverged)
    assert "pickapic-train-" in str(caught.value)
    assert not (run / "diverged.json").exists() and not (run / "metrics.json").exists()


# ------------------------------------------------------------------------------------------ captions
def test_a_cut_caption_tokenizes_as_the_whole_caption(tmp_path):
    from training.data import ImageSpec, PairCollator
    from training.model import train_tokenizer

    tokenizer = train_tokenizer(["a red cube on a table", "two blue stars"] * 20, 600, 77)
    caption = " " * 16_400 + "a red cube"
    batch = PairCollator(tokenizer, 77)([_sample(caption=caption)], ImageSpec(32, 32), draft=False)
    whole = tokenizer([caption], padding=True, truncation=True, max_length=77, return_tensors="pt")
    assert batch["input_ids"].tolist() == whole["input_ids"].tolist()
