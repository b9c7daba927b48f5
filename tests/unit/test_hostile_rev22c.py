"""Hostile review rev22c of the rev22a/rev22b fixes (a42e0f5 model loading, ba13957 score/rerank inputs,
7ee393b streaming choose/contact sheet, 274b75d run monitoring / output temps / export columns).

Each test asserts the correct behaviour of a defect confirmed by running it, filed as a strict xfail; all 8 are
fixed (the twenty-second session; the markers are gone).

Tried and held up:
- rerank ``choose`` against the old sort-based implementation (copied): 3,000 random inputs with None scores,
  ties, 0.0 / -0.0, up to 40 rows over 3 groups: identical (errors past 20 aside, by design);
- ``contact_sheet_png`` against the pre-7ee393b one: 60 random inputs (missing and real images, ties,
  prompts 0-5, max_candidates 1-6): byte-identical PNGs;
- ``read_pairs_table`` + ``score_rows`` + ``write_rows_to`` against the pre-ba13957 code for 0, 1, 8,191, 8,192,
  8,193 and 16,385 rows (nulls, empty strings, ids, relative/absolute paths): equal rows, equal Parquet tables,
  byte-equal CSV and JSONL; a zero-row CSV still has its header;
- PairTable / ScoredRows negative indices and stepped slices (``range(*slice.indices)``);
- candidate files that are a FIFO (with and without an image suffix), a folder, a link to /dev/zero, a link loop:
  error rows, nothing waited on or read;
- a CSV with a UTF-8 BOM (pyarrow drops it), a JSONL row naming a key twice (refused by pyarrow, one line);
- a prompt_id equal to another prompt's digest is caught (the check runs on the final ids);
- a sharded checkpoint (model.safetensors.index.json, 3 shards) loads; an ``image_processor_type`` naming a
  class of a .py file in the folder runs nothing (CLIPProcessor's own class is used); a scalar image_std,
  a nested or null image_mean, a crop_size of text are refused in one line;
- open_output_files: the temp lock descriptors are closed in ``finally``; export ``_check_columns`` accepts the
  types ``schemas.publish.SHARD_SAMPLES`` declares (string / int64), so a real sidecar still exports.

Not turned into tests (noted): a stray image at the top level of a ``--candidates`` folder (beside the prompt
subfolders) is still silently ignored; a checkpoint with logit_scale 1000 (finite) loads and every row becomes
non_finite_score; a NaN prompt_id (pandas' missing value) is refused as "prompt_id 'nan' holds different prompts"
rather than treated as no prompt_id.
"""
from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from tests.scoring_fixtures import FakeScorer, processor_variant, tiny_checkpoint

_FakeScorer = FakeScorer


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny CLIP checkpoint (image_size 32) saved by the project's own code."""
    return tiny_checkpoint(tmp_path_factory.mktemp("rev22c-model"))


_variant = processor_variant


# ---------------------------------------------------------------------------------------------- candidate folders
def test_a_hidden_named_image_candidate_still_gets_a_row(tmp_path):
    from training.rerank import read_candidate_folder

    sub = tmp_path / "cands" / "p1"
    sub.mkdir(parents=True)
    (sub / "prompt.txt").write_text("a red cube")
    Image.new("RGB", (16, 16), (200, 0, 0)).save(sub / "c1.png")
    Image.new("RGB", (16, 16), (0, 200, 0)).save(sub / ".c2.png")
    names = [Path(row.image).name for row in read_candidate_folder(tmp_path / "cands")]
    assert ".c2.png" in names, names       # scored, or at least an error row: never left out unseen


# ---------------------------------------------------------------------------------------------- prompt_id check
def test_a_prompt_id_shared_with_an_error_row_of_another_prompt_is_refused_or_named_right(tmp_path):
    from training.rerank import choose
    from training.score_cli import read_pairs_table, score_rows

    table = tmp_path / "cands.parquet"
    pq.write_table(pa.table({"prompt_id": ["g", "g", "g"], "prompt": ["a dog", "a cat", "a cat"],
                             "image": ["", "a.png", "b.png"]}), table)
    try:
        rows = read_pairs_table(table)
    except ValueError as exc:                   # refused: one prompt_id, two prompts
        assert "different prompts" in str(exc)
        return
    [choice] = choose(score_rows(_FakeScorer(), rows))
    # b.png was scored against "a cat": a choice that reports "a dog" pairs an image with a prompt it never saw
    assert choice["best_image"].endswith("b.png")
    assert choice["prompt"] == "a cat", choice


# ---------------------------------------------------------------------------------------------- model folder
def test_a_processor_mean_of_two_values_is_refused_at_load(model_dir, tmp_path):
    from training.model import NotAClipCheckpoint, load_model

    folder = _variant(model_dir, tmp_path / "mean2", image_mean=[0.5, 0.5])
    with pytest.raises(NotAClipCheckpoint, match="image_mean"):
        load_model(folder)


def test_a_processor_std_that_makes_infinite_pixels_is_refused_at_load(model_dir, tmp_path):
    from training.model import NotAClipCheckpoint, load_model

    folder = _variant(model_dir, tmp_path / "tiny-std", image_std=[1e-300, 0.26, 0.27])
    with pytest.raises(NotAClipCheckpoint, match="image_std"):
        load_model(folder)


def test_a_processor_that_resizes_larger_and_crops_to_the_model_size_loads(model_dir, tmp_path):
    from training.model import load_model

    folder = _variant(model_dir, tmp_path / "resize40", size={"shortest_edge": 40})   # crop_size stays 32
    _, processor = load_model(folder)
    assert processor.image_processor.crop_size["height"] == 32


def test_a_processor_config_that_is_not_an_object_is_refused_in_one_line(model_dir, tmp_path):
    from training.model import load_model

    folder = shutil.copytree(model_dir, tmp_path / "list-config")
    (folder / "processor_config.json").write_text("[]")
    with pytest.raises(ValueError, match="list-config"):
        load_model(folder)


def test_a_config_of_a_mistyped_field_is_refused_in_one_line(model_dir, tmp_path):
    from training.model import load_model

    folder = shutil.copytree(model_dir, tmp_path / "typed-config")
    config = json.loads((folder / "config.json").read_text())
    config["vision_config"]["image_size"] = "32"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="typed-config"):
        load_model(folder)


# ---------------------------------------------------------------------------------------------- run monitoring
from tests.e2e.test_run_monitoring import home  # noqa: E402, F401 - the Dagster home fixture


def test_unfinished_runs_leaves_a_run_that_ended_meanwhile_as_it_ended(home, tmp_path, monkeypatch):
    import dagster as dg
    from dagster._core.events import DagsterEvent, DagsterEventType
    from dagster._core.events.log import EventLogEntry
    from dagster._core.storage.tags import GRPC_INFO_TAG

    from dagster_project import automation
    from tests.e2e.monitor_defs import waiting_job

    with dg.DagsterInstance.from_config(str(home.dagster_home)) as instance:
        gone = {"host": "localhost", "socket": str(tmp_path / "no-server.sock")}     # nothing listens there
        run = instance.create_run_for_job(waiting_job, status=dg.DagsterRunStatus.STARTED,
                                          tags={GRPC_INFO_TAG: json.dumps(gone)})
        instance.handle_new_event(EventLogEntry(
            error_info=None, level=logging.INFO, user_message="", run_id=run.run_id, timestamp=time.time(),
            dagster_event=DagsterEvent(event_type_value=DagsterEventType.RUN_START.value, job_name=run.job_name)))
        instance.report_run_canceling(run)
        launcher = instance.run_launcher
        check = launcher.check_run_worker_health

        def slow_check(stale):
            # while the health check runs (a gRPC call, /proc), the worker ends the run itself: its step failed
            instance.report_run_failed(instance.get_run_by_id(stale.run_id), "the step failed while canceling")
            return check(stale)

        monkeypatch.setattr(launcher, "check_run_worker_health", slow_check)
        automation.unfinished_runs(instance, home)
        assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.FAILURE
        assert not instance.all_logs(run.run_id, of_type=DagsterEventType.RUN_CANCELED)
