"""Hostile review rev30i of fix30g and fix30f (README section 9, the rev30g and rev30f bullets of the thirtieth
session): the training JPEG removal the publish step runs (``pipelines/features/trainjpegs.py``,
``prune_training_jpegs``: links at ``blobs`` / ``blobs/train`` / a size folder followed, needed keys from the
warehouse, ``split_pairs`` and staged versions) and the split key owner pins kept while a warehouse or quarantined
row holds their key (``pipelines/splits/assign.py``, ``drop_erased_pins``).

Run against real files, real DuckDB and the real removal (no mocks of the code under review). All three fixed the
same day (fix30i, ``tests/unit/test_fix30i.py``) and the strict-xfail markers removed.
"""
from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from formats.home import DataHome
from pipelines.features import trainjpegs
from pipelines.features.config import check_blob_base
from pipelines.splits.assign import drop_erased_pins, normalize_prompt
from pipelines.sqlrun import connect
from tests.unit.test_fix30b import SHA, _jpeg_key

# --- the training JPEG removal ----------------------------------------------------------------------------------------


def _home_with_jpeg(root, sha: str) -> DataHome:
    """A home whose store holds the JPEG ``sha`` and whose one warehouse day names it."""
    home = DataHome(root)
    path = home.root / _jpeg_key(sha)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"jpeg " + sha.encode())
    part = home.partition_file("image_features", "2023-03-01")
    part.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"image_uid": ["x"], "train_jpg_key": [_jpeg_key(sha)]}), part)
    return home


def test_a_size_folder_linked_to_another_homes_store_keeps_that_homes_jpegs(tmp_path):
    other = _home_with_jpeg(tmp_path / "home_b", SHA["b"])          # B needs b
    home = _home_with_jpeg(tmp_path / "home_a", SHA["a"])           # A needs a, in its own store
    (home.root / "blobs" / "train" / "s600q90").symlink_to(other.root / "blobs" / "train" / "s512q90")
    report = trainjpegs.prune_training_jpegs(home, str(home.root))
    assert (home.root / _jpeg_key(SHA["a"])).is_file()
    assert (other.root / _jpeg_key(SHA["b"])).is_file(), report


def test_a_jpeg_of_a_home_whose_blob_base_is_this_home_stays(tmp_path):
    store = _home_with_jpeg(tmp_path / "home_a", SHA["a"])
    user = DataHome(tmp_path / "home_b")                  # B: features.blob_base = HOME_A
    user.root.mkdir()
    (user.root / "pickapic.toml").write_text(f'[features]\nblob_base = "{store.root}"\n')
    shared = store.root / _jpeg_key(SHA["b"])             # B's feature stage wrote b under its base, A's home
    shared.parent.mkdir(parents=True)
    shared.write_bytes(b"jpeg b")
    part = user.partition_file("image_features", "2023-03-01")
    part.parent.mkdir(parents=True)
    pq.write_table(pa.table({"image_uid": ["y"], "train_jpg_key": [_jpeg_key(SHA["b"])]}), part)
    check_blob_base(str(store.root), user.root)           # accepted: another home is a valid blob base
    trainjpegs.prune_training_jpegs(store, str(store.root))     # A's publish step
    assert (store.root / _jpeg_key(SHA["a"])).is_file()
    assert shared.is_file()


# --- split key owner pins -----------------------------------------------------------------------------------------------


def test_a_quarantined_first_line_after_a_bom_keeps_its_pin(tmp_path):
    home = DataHome(tmp_path / "home")
    for table, rows in (("rankings", {"ranking_id": [1], "prompt": ["in pairs"], "image_0_uid": ["img-p"],
                                      "image_1_uid": ["img-p"], "image_2_uid": [None], "image_3_uid": [None]}),
                        ("images", {"image_uid": ["img-p"], "prompt": ["in pairs"]})):
        path = home.partition_file(table, "2023-03-01")
        path.parent.mkdir(parents=True)
        pq.write_table(pa.table(rows), path)
    line = '\ufeff{"ranking_id": 7, "prompt": "a held out prompt", "image_0_uid": "img-q", "image_1_uid": "img-r"}'
    path = home.partition_file("quarantine", "2023-03-01")
    path.parent.mkdir(parents=True)
    pq.write_table(pa.table({"table": ["rankings"], "raw_text": [line], "reason": ["unknown_image_reference"],
                             "line_number": [1]}), path)
    pairs = pa.table({"ranking_id": [1], "image_0_uid": ["img-p"], "image_1_uid": ["img-p"]})
    split_pairs = pa.table({"prompt_key": [normalize_prompt("in pairs")]})
    con = connect({"pairs": pairs, "split_pairs": split_pairs, "split_rejects": split_pairs.slice(0, 0)})
    keys = [("prompt", normalize_prompt("a held out prompt")), ("image", "img-q")]
    pins = pa.table({"salt": ["s"] * len(keys), "kind": [k for k, _ in keys], "key": [v for _, v in keys]})
    kept, dropped = drop_erased_pins(con, home, pins)
    assert dropped == 0
    assert kept.num_rows == len(keys)
