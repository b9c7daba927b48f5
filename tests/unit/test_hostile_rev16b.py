"""Hostile review rev16b (December 5, 2026): attacks on the day's fixes (sidecar read-back on reuse, consumer
text/image hardening, serve's instance creation, key owner pins from switched versions). Each test reproduces
a confirmed defect and was a strict xfail until it was fixed (all fixed the same day)."""
from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_hostile_dec4f_publish_fixes import _rewrite_in_place
from test_hostile_rev16_consumers import model_dir  # noqa: F401 - a fixture
from test_publish_columncache import _check
from test_publish_fixtures import write_split_pairs
from test_publish_rulecache import CONFIG, _first_night

from pipelines import faults
from pipelines.publish.manifest import verify_version
from pipelines.publish.version import check_contracts, publish_dataset
from pipelines.publish.versions import staging_root


# --------------------------------------------------------------------------- 1. sidecar read-back on reuse
def test_a_resumed_linked_shard_gets_the_sidecar_read_back_too(tmp_path: Path, monkeypatch) -> None:
    home, table, first = _first_night(tmp_path)
    _check(first.path, home)                                       # both caches know every sidecar of it

    write_split_pairs(home, table)
    real = faults.maybe_crash

    def fail(point: str) -> None:
        if point == "publish.after_shards":
            raise RuntimeError("nightly failed after its shards (disk full, a contract, ...)")
        real(point)

    monkeypatch.setattr(faults, "maybe_crash", fail)
    with pytest.raises(RuntimeError, match="nightly failed"):
        publish_dataset(home, CONFIG)                              # committed shards stay in staging for the rerun
    monkeypatch.setattr(faults, "maybe_crash", real)
    (staging,) = staging_root(home.datasets).glob(".partial-*")
    sidecar = min(first.path.glob("train/pickapic-*.parquet"))
    staged = staging / sidecar.relative_to(first.path)
    assert os.stat(staged).st_ino == os.stat(sidecar).st_ino      # linked by the failed run

    old = pq.read_table(sidecar)
    keys = old.column("key").to_pylist()
    _rewrite_in_place(sidecar, old.set_column(old.schema.get_field_index("key"), old.schema.field("key"),
                                              pa.array([keys[0], keys[0]] + keys[2:], pa.string())))

    nightly = publish_dataset(home, CONFIG)                        # the rerun resumes the staged shards
    verify_version(nightly.path, checksums=True)                   # every file is its manifest's sha256
    check_contracts(nightly.path)                                  # the whole view: no duplicate key


# --------------------------------------------------------------------------- 2. consumer text and images
def test_rerank_writes_its_outputs_when_an_unscored_candidate_name_is_not_utf8(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from PIL import Image

    import training.rerank as rr
    from formats.outputs import recorded_output_dir

    class FakeScorer:
        def score_pairs(self, pairs, groups=None):
            return [SimpleNamespace(score=1.0 + i, preference=0.5, rank=1, error=None) for i, _ in enumerate(pairs)]

    good = tmp_path / "candidates" / "p0"
    good.mkdir(parents=True)
    (good / "prompt.txt").write_text("a cube\n")
    Image.new("RGB", (20, 20), (90, 20, 20)).save(good / "ok.png")
    lost = tmp_path / "candidates" / "p1"                               # its prompt.txt was never written
    lost.mkdir()
    Image.new("RGB", (20, 20), (20, 90, 20)).save(os.fsdecode(os.path.join(os.fsencode(lost), b"gen-\xff.png")))
    rows = rr.read_candidate_folder(tmp_path / "candidates")
    assert [r.error is None for r in rows] == [True, False]
    folder, listed = recorded_output_dir(tmp_path / "out", [], "--output", rr.RERANK_RECORD, rr.RERANK_FILES)
    rr.rerank(FakeScorer(), rows, folder, record=listed)
    choices = pq.read_table(folder / "choices.parquet").to_pylist()
    assert len(choices) == 2 and "gen-\\xff.png" in choices[1]["errors"][0]


def test_a_csv_table_that_does_not_parse_prints_no_terminal_escapes(tmp_path: Path, capsys) -> None:
    from dagster_project.cli import main as pickapic

    table = tmp_path / "pairs.csv"
    table.write_bytes(b'prompt,image\n"a cube",a.png\nx,y,\x1b]0;owned\x07\x1b[2J\x1b[1A\n')
    code = pickapic(["score", "--home", str(tmp_path / "home"), "--model", str(tmp_path / "no-model"),
                     "--input", str(table)])
    err = capsys.readouterr().err
    assert code != 0 and "pairs.csv" in err                        # refused, naming the table ...
    assert not any(c in err for c in "\x1b\x07"), repr(err)        # ... without the row's escapes acting



def test_an_image_path_too_long_for_the_file_system_is_an_error_row(model_dir, tmp_path: Path) -> None:
    from PIL import Image

    from training.scoring import Scorer

    good = tmp_path / "good.png"
    Image.new("RGB", (40, 40), (90, 20, 20)).save(good)
    long = tmp_path / ("gen-" + "a" * 300 + ".png")                 # one component longer than NAME_MAX
    rows = Scorer(model_dir, device="cpu", batch_size=2).score("two blue stars", [good, long])
    assert rows[0].error is None and rows[0].score is not None
    assert rows[1].score is None and rows[1].error, rows[1]


# --------------------------------------------------------------------------- 4. key owner pins from switched versions
def _splits_helpers():
    from splits_fixtures import pair_row, write_pairs
    from test_hostile_rev15b import _others
    from test_splits_key_owners import CFG, USERS, _kept, _night, _pins, _publish

    return pair_row, write_pairs, _others, CFG, USERS, _kept, _night, _pins, _publish


PROMPT = "a lighthouse in a storm"


def test_a_version_published_before_the_history_existed_still_pins_its_held_out_keys(tmp_path: Path) -> None:
    from formats import dataset
    from formats.home import DataHome
    from pipelines.splits.assign import build_splits, normalize_prompt

    pair_row, write_pairs, _others, CFG, USERS, _kept, _night, _pins, _publish = _splits_helpers()
    home = DataHome(tmp_path)
    te, tr = USERS["test"][0], USERS["train"][0]
    base = _others()
    _night(home, base + [pair_row(1, te, PROMPT, "p1", "p2", day=1)])
    assert _kept(home)["1_0"] == "test"
    _publish(home, "2023-03-05-00000000a1")          # published (latest switched to it) by a release without history
    _night(home, base)                              # the test user is banned: P is in no later version
    _publish(home, "2023-03-06-00000000a2")
    _night(home, base)
    assert not dataset.history_file(home.datasets).exists()
    dataset.switched_file(home.datasets).unlink()   # a1 and a2 were switched to by a release without these records
    assert dataset.record_switch(home.datasets, "2023-03-07-00000000a3", fsync=False) is None   # upgraded release
    _publish(home, "2023-03-07-00000000a3")
    assert dataset.list_versions(home) == ["2023-03-05-00000000a1", "2023-03-06-00000000a2", "2023-03-07-00000000a3"]

    home.table_file("split_key_owners").unlink()    # the pins lost: re-seeded from every retained published version
    write_pairs(home, base + [pair_row(2, tr, PROMPT + "!", "q1", "q2", day=2)])   # a train user types P
    build_splits(home, CFG, log=lambda message: None)
    assert _pins(home).get(("prompt", normalize_prompt(PROMPT)), (None,))[0] == "test"
    assert _kept(home).get("2_0") != "train", "a prompt published in test is in train"


def test_a_version_named_in_the_history_but_never_switched_to_is_not_pinned(tmp_path: Path) -> None:
    from splits_fixtures import publish_splits

    from formats import dataset
    from formats.home import DataHome
    from pipelines.splits.assign import normalize_prompt

    pair_row, write_pairs, _others, CFG, USERS, _kept, _night, _pins, _publish = _splits_helpers()
    home = DataHome(tmp_path)
    te, tr = USERS["test"][0], USERS["train"][0]
    base = _others()
    _night(home, base)
    home.datasets.mkdir(parents=True, exist_ok=True)
    assert dataset.record_switch(home.datasets, "2023-03-05-00000000a1", fsync=False) is None
    _publish(home, "2023-03-05-00000000a1")
    _night(home, base + [pair_row(1, te, PROMPT, "p1", "p2", day=1)])    # P kept in test by this build
    # its publish writes the version in place and records it in the history, then dies before switching latest
    publish_splits(home, "2023-03-06-00000000a2", switch=False)
    assert dataset.record_switch(home.datasets, "2023-03-06-00000000a2", fsync=False) is None   # latest never moved
    assert dataset.read_history(home.datasets)[-1] == "2023-03-06-00000000a2"
    # the test user is banned, a train user types P: P was never published, nothing holds it out of train
    _night(home, base + [pair_row(2, tr, PROMPT + "!", "q1", "q2", day=2)])
    assert ("prompt", normalize_prompt(PROMPT)) not in _pins(home)
    assert _kept(home).get("2_0") == "train"
