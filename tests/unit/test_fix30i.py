"""Fix of review rev30i (``tests/unit/test_hostile_rev30i.py``): cases its xfails do not cover.

- The training JPEG removal (``pipelines.features.trainjpegs``) deletes only what this home alone owns: a link that
  stays in the home, or leads to a store no other home holds or writes into, is still followed; one into another
  data home is skipped with a note; a home whose store is outside it records itself there
  (``<base>/blobs/train/.writers/<digest>``, from ``check_blob_base``), and a store holding another home's marker
  loses nothing.
- ``drop_erased_pins`` reads a quarantined line as the ingest does (a leading byte order mark skipped), and takes a
  ranking of ``pairs`` by id and day; a held-out record naming an unknown ledger rule is not believed.
Real files, real DuckDB, the real removal.
"""
from __future__ import annotations

import json
import os
import stat

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from formats.home import DataHome
from pipelines.features import trainjpegs
from pipelines.features.config import FeaturesConfig, StagingRefused, check_blob_base
from pipelines.splits.assign import (
    HELDOUT_METADATA,
    Assignment,
    drop_erased_pins,
    heldout_record,
    normalize_prompt,
    read_heldout_record,
)
from pipelines.sqlrun import connect
from tests.unit.test_fix30b import SHA, _jpeg_key
from tests.unit.test_hostile_rev30i import _home_with_jpeg

# --- the training JPEG removal ----------------------------------------------------------------------------------------


def _orphan(root, sha: str, folder: str = "s512q90"):
    """A JPEG no warehouse day names, written under ``root`` (a home or a store) as the stage names it."""
    path = root / _jpeg_key(sha, folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"orphan " + sha.encode())
    return path


def _markers(base) -> list[str]:
    folder = base / "blobs" / "train" / ".writers"
    return sorted(os.listdir(folder)) if folder.exists() else []


def test_a_link_inside_the_home_or_to_a_plain_folder_is_followed(tmp_path):
    home = _home_with_jpeg(tmp_path / "home", SHA["a"])
    inside = home.root / "disk2" / "s600q90"
    inside.mkdir(parents=True)
    (home.root / "blobs" / "train" / "s600q90").symlink_to(inside)
    outside = tmp_path / "bigdisk" / "s700q90"          # no data home holds it, no home writes into it
    outside.mkdir(parents=True)
    (home.root / "blobs" / "train" / "s700q90").symlink_to(outside)
    orphans = [_orphan(home.root, SHA["c"], "s600q90"), _orphan(home.root, SHA["d"], "s700q90"),
               _orphan(home.root, SHA["e"])]
    report = trainjpegs.prune_training_jpegs(home)
    assert not any(path.exists() for path in orphans), report
    assert report.removed == 3 and not report.notes
    assert (home.root / _jpeg_key(SHA["a"])).is_file()


@pytest.mark.parametrize("linked", ["blobs", "blobs/train"])
def test_a_link_higher_up_into_another_home_prunes_nothing_there(tmp_path, linked):
    other = DataHome(tmp_path / "home_b")        # a home known by its settings file alone
    other.root.mkdir()
    (other.root / "pickapic.toml").write_text("")
    theirs = _orphan(other.root, SHA["b"])        # b: B's, not in A's warehouse
    home = DataHome(tmp_path / "home_a")
    home.root.mkdir()
    (home.root / linked).parent.mkdir(parents=True, exist_ok=True)
    (home.root / linked).symlink_to(other.root / linked)
    report = trainjpegs.prune_training_jpegs(home)
    assert theirs.is_file()
    assert report.removed == 0 and report.listed == 0
    assert len(report.notes) == 1 and "in the data home" in report.notes[0] and "s512q90" in report.notes[0]


def test_a_blob_base_outside_the_home_records_the_home_once(tmp_path):
    store = _home_with_jpeg(tmp_path / "home_a", SHA["a"])
    user = tmp_path / "home_b"
    user.mkdir()
    old = os.umask(0o022)
    try:
        check_blob_base(str(store.root), user)
        check_blob_base(f"file://{store.root}", user)          # again, as a file URL: the same one marker
        FeaturesConfig(blob_base=str(store.root)).validate(user)
    finally:
        os.umask(old)
    names = _markers(store.root)
    assert names == [trainjpegs.home_digest(user)] and len(names[0]) == 64
    marker = store.root / "blobs" / "train" / ".writers" / names[0]
    assert stat.S_IMODE(marker.stat().st_mode) == 0o644           # the umask's, readable by other accounts
    assert str(user).encode() not in marker.read_bytes() and b"/" not in marker.read_bytes()
    # the store's home removes nothing now, and says so once; the JPEG it no longer needs stays
    orphan = _orphan(store.root, SHA["c"])
    report = trainjpegs.prune_training_jpegs(store, str(store.root))
    assert orphan.is_file() and report.removed == 0
    assert len(report.notes) == 1 and names[0] in report.notes[0] and "blob_base" in report.notes[0]
    # the marker's removal (that home gone) lets it prune again
    marker.unlink()
    report = trainjpegs.prune_training_jpegs(store, str(store.root))
    assert not orphan.exists() and report.removed == 1


def test_the_default_base_records_nothing_unless_its_store_is_elsewhere(tmp_path):
    home = _home_with_jpeg(tmp_path / "home", SHA["a"])
    check_blob_base(None, home.root)
    assert not (home.root / "blobs" / "train" / ".writers").exists()
    # the store on another disk: the home records itself there, and its own marker never stops its removal
    disk = tmp_path / "disk" / "blobs"
    disk.parent.mkdir()
    (home.root / "blobs").rename(disk)
    (home.root / "blobs").symlink_to(disk)
    check_blob_base(None, home.root)
    assert _markers(disk.parent) == [trainjpegs.home_digest(home.root)]
    orphan = _orphan(home.root, SHA["c"])
    report = trainjpegs.prune_training_jpegs(home)
    assert not orphan.exists() and report.removed == 1 and not report.notes
    # a second home linking its store to the same folder records itself too: neither prunes the other's now
    second = tmp_path / "home2"
    second.mkdir()
    (second / "blobs").symlink_to(disk)
    check_blob_base(None, second)
    _orphan(second, SHA["b"])                           # b: the second home's, in the shared folder
    report = trainjpegs.prune_training_jpegs(home)
    assert (disk / "train" / "s512q90" / "bb" / f"{SHA['b']}.jpg").is_file()
    assert report.removed == 0 and len(report.notes) == 1


@pytest.mark.parametrize("kind", ["link", "file"])
def test_a_writers_entry_not_made_by_the_stage_is_refused(tmp_path, kind):
    store = tmp_path / "store"
    (store / "blobs" / "train").mkdir(parents=True)
    writers = store / "blobs" / "train" / ".writers"
    if kind == "link":
        (tmp_path / "elsewhere").mkdir()
        writers.symlink_to(tmp_path / "elsewhere")
    else:
        writers.write_text("not a folder")
    home = tmp_path / "home"
    home.mkdir()
    with pytest.raises(StagingRefused, match="cannot be recorded as a writer") as caught:
        check_blob_base(str(store), home)
    assert "\n" not in str(caught.value)
    assert not os.listdir(tmp_path / "elsewhere") if kind == "link" else writers.read_text() == "not a folder"


def test_a_marker_written_while_the_removal_reads_its_keys_stops_it(tmp_path, monkeypatch):
    store = _home_with_jpeg(tmp_path / "home_a", SHA["a"])
    orphan = _orphan(store.root, SHA["c"])
    user = tmp_path / "home_b"
    user.mkdir()
    real = trainjpegs.needed_keys

    def needed_while_another_home_starts(home):         # the other home's feature stage starts meanwhile
        check_blob_base(str(store.root), user)
        return real(home)

    monkeypatch.setattr(trainjpegs, "needed_keys", needed_while_another_home_starts)
    report = trainjpegs.prune_training_jpegs(store)
    assert orphan.is_file() and report.removed == 0 and len(report.notes) == 1


# --- split key owner pins ---------------------------------------------------------------------------------------------


def _warehouse(home: DataHome, rankings: dict, day: str = "2023-03-01") -> None:
    for table, rows in (("rankings", rankings), ("images", {"image_uid": ["img-p"], "prompt": ["in pairs"]})):
        path = home.partition_file(table, day)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table(rows), path)


def _pins(keys):
    return pa.table({"salt": ["s"] * len(keys), "kind": [k for k, _ in keys], "key": [v for _, v in keys]})


def test_quarantined_lines_read_as_the_ingest_reads_them(tmp_path):
    home = DataHome(tmp_path / "home")
    _warehouse(home, {"ranking_id": [1], "prompt": ["in pairs"], "image_0_uid": ["img-p"], "image_1_uid": ["img-p"],
                      "image_2_uid": [None], "image_3_uid": [None]})
    lines = ['\ufeff {"prompt": "after a bom and a blank", "image_0_uid": "img-b"}\r',
             '{"prompt": "no bom", "image_0_uid": "img-n"}',
             '\ufeff\ufeff{"prompt": "two boms", "image_0_uid": "img-2"}',          # the ingest skips one only
             '\ufeff{"prompt": "cut at 64 KiB']                                      # not JSON: no key
    path = home.partition_file("quarantine", "2023-03-01")
    path.parent.mkdir(parents=True)
    pq.write_table(pa.table({"table": ["rankings"] * len(lines), "raw_text": lines,
                             "reason": ["unknown_image_reference"] * len(lines), "line_number": [1] * len(lines)}),
                   path)
    pairs = pa.table({"ranking_id": [1], "image_0_uid": ["img-p"], "image_1_uid": ["img-p"]})
    split_pairs = pa.table({"prompt_key": [normalize_prompt("in pairs")]})
    con = connect({"pairs": pairs, "split_pairs": split_pairs, "split_rejects": split_pairs.slice(0, 0)})
    held = [("prompt", normalize_prompt("after a bom and a blank")), ("image", "img-b"),
            ("prompt", normalize_prompt("no bom")), ("image", "img-n")]
    erased = [("prompt", normalize_prompt("two boms")), ("image", "img-2"), ("prompt", normalize_prompt("cut at 64 KiB"))]
    kept, dropped = drop_erased_pins(con, home, _pins(held + erased))
    assert dropped == len(erased)
    assert list(zip(kept.column("kind").to_pylist(), kept.column("key").to_pylist())) == held


def test_a_ranking_id_of_pairs_on_another_day_keeps_its_prompt(tmp_path):
    home = DataHome(tmp_path / "home")
    for day, prompt in (("2023-03-01", "in pairs"), ("2023-03-02", "curated out, same id")):
        _warehouse(home, {"ranking_id": [1], "prompt": [prompt], "image_0_uid": ["img-p"], "image_1_uid": ["img-p"],
                          "image_2_uid": [None], "image_3_uid": [None],
                          "dt": pa.array([pa.scalar(day).cast(pa.date32()).as_py()], pa.date32())}, day)
    pairs = pa.table({"ranking_id": [1], "image_0_uid": ["img-p"], "image_1_uid": ["img-p"],
                      "dt": pa.array([pa.scalar("2023-03-01").cast(pa.date32()).as_py()], pa.date32())})
    split_pairs = pa.table({"prompt_key": [normalize_prompt("in pairs")]})
    con = connect({"pairs": pairs, "split_pairs": split_pairs, "split_rejects": split_pairs.slice(0, 0)})
    keys = [("prompt", normalize_prompt("curated out, same id")), ("prompt", normalize_prompt("erased"))]
    kept, dropped = drop_erased_pins(con, home, _pins(keys))
    assert dropped == 1 and kept.column("key").to_pylist() == [normalize_prompt("curated out, same id")]


def test_a_heldout_record_names_only_known_rules():
    good = {"validation": {"fill": 2, "hash": 1}, "test": {"published": 1, "unknown": 1}}
    assert read_heldout_record({HELDOUT_METADATA: json.dumps(good).encode()}) == good
    bad = {"validation": {"fill": 2, "x`](http://evil)": 1}, "test": {}}
    assert read_heldout_record({HELDOUT_METADATA: json.dumps(bad).encode()}) is None
    assigned = {"u1": Assignment("validation", "hash", 0, None, "s"),
                "u2": Assignment("test", "<b>odd</b>", 1, None, "s")}      # a ledger row this code never wrote
    record = json.loads(heldout_record([("validation", "u1"), ("test", "u2"), ("test", "u3")], assigned))
    assert record == {"validation": {"hash": 1}, "test": {"unknown": 2}}
