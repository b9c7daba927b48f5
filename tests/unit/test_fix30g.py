"""Fix of review rev30g (``tests/unit/test_hostile_rev30g.py``): cases its xfails do not cover.

- ``assign.drop_erased_pins`` keeps a pin while the quarantine (a line's prompt, cleaned as the ingest cleans it, or
  an image uid it names), an image or a download of the warehouse holds its key; a line that is not JSON names none.
- ``export.row_identity``: a ranking is its user and image uids (its prompt edited keeps it), an account its id
  alone; ``HeldRows.by_day`` names no day with 0 rows.
- The training JPEG removal (``pipelines.features.trainjpegs``): the keys the home's ``split_pairs`` and a version
  staged in ``datasets/pickapic.staging`` name stay; a file a needed key names under another size folder name
  stays; a linked ``<xx>`` folder is not followed; a JPEG that is not removed keeps its digest cache entry; a
  ``file://`` URL of the home is the home; the removal waits for the publish lock.
"""
from __future__ import annotations

import threading

import pyarrow as pa
import pyarrow.parquet as pq

from formats.home import DataHome
from pipelines.appdb.export import UNKNOWN_IDENTITY, HeldRows, row_identity
from pipelines.features import trainjpegs
from pipelines.publish import jpgdigests
from pipelines.publish.versions import publish_lock, staging_root
from pipelines.splits.assign import drop_erased_pins, normalize_prompt
from pipelines.sqlrun import connect
from tests.unit.test_fix30b import SHA, _jpeg_key, _store

# --- split key owner pins --------------------------------------------------------------------------------------------


def _quarantine(home: DataHome, lines: list[tuple[str, str]]) -> None:
    path = home.partition_file("quarantine", "2023-03-01")
    path.parent.mkdir(parents=True, exist_ok=True)
    n = len(lines)
    pq.write_table(pa.table({"table": [t for t, _ in lines], "raw_text": [text for _, text in lines],
                             "reason": ["unknown_image_reference"] * n, "line_number": list(range(1, n + 1))}), path)


def test_pins_held_by_the_quarantine_an_image_or_a_download_stay(tmp_path):
    home = DataHome(tmp_path / "home")
    for table, rows in (("rankings", {"ranking_id": [1], "prompt": ["in pairs"], "image_0_uid": ["img-p"],
                                      "image_1_uid": ["img-p"], "image_2_uid": [None], "image_3_uid": [None]}),
                        ("images", {"image_uid": ["img-p", "img-only"], "prompt": ["in pairs", "an image's prompt"]}),
                        ("downloads", {"image_uid": ["img-dl"], "prompt": ["a download's prompt"]})):
        path = home.partition_file(table, "2023-03-01")
        path.parent.mkdir(parents=True)
        pq.write_table(pa.table(rows), path)
    _quarantine(home, [("rankings", '{"ranking_id": 7, "prompt": "a cat[single_quote]s hat", "image_0_uid": "img-q"}'),
                       ("images", '{"image_uid": "img-qi", "prompt": "quarantined image"}'),
                       ("rankings", '{"ranking_id": 8, "prompt": "cut at 64 KiB'),          # no JSON: no key
                       ("users", '{"user_id": 1, "prompt": "a users line"}')])              # no prompt table
    pairs = pa.table({"ranking_id": [1], "image_0_uid": ["img-p"], "image_1_uid": ["img-p"]})
    split_pairs = pa.table({"prompt_key": [normalize_prompt("in pairs")]})
    con = connect({"pairs": pairs, "split_pairs": split_pairs, "split_rejects": split_pairs.slice(0, 0)})
    held = [("prompt", normalize_prompt("a cat's hat")), ("prompt", normalize_prompt("quarantined image")),
            ("prompt", normalize_prompt("an image's prompt")), ("prompt", normalize_prompt("a download's prompt")),
            ("image", "img-q"), ("image", "img-qi"), ("image", "img-only"), ("image", "img-dl")]
    erased = [("prompt", normalize_prompt("cut at 64 KiB")), ("prompt", normalize_prompt("a users line")),
              ("prompt", "erased"), ("image", "img-erased")]
    keys = held + erased
    pins = pa.table({"salt": ["s"] * len(keys), "kind": [k for k, _ in keys], "key": [v for _, v in keys]})
    kept, dropped = drop_erased_pins(con, home, pins)
    assert dropped == len(erased)
    assert list(zip(kept.column("kind").to_pylist(), kept.column("key").to_pylist())) == held
    assert drop_erased_pins(con, home, kept) == (kept, 0)


def test_no_pin_candidate_reads_no_warehouse_table(tmp_path):
    home = DataHome(tmp_path / "home")
    bad = home.partition_file("rankings", "2023-03-01")
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not parquet")          # would keep every pin if read; never read with no candidate
    images = home.partition_file("images", "2023-03-01")
    images.parent.mkdir(parents=True)
    pq.write_table(pa.table({"image_uid": ["x"], "prompt": ["x"]}), images)
    split_pairs = pa.table({"prompt_key": ["k"]})
    con = connect({"pairs": pa.table({"ranking_id": [1], "image_0_uid": ["u"], "image_1_uid": ["u"]}),
                   "split_pairs": split_pairs, "split_rejects": split_pairs.slice(0, 0)})
    pins = pa.table({"salt": ["s", "s"], "kind": ["prompt", "image"], "key": ["k", "u"]})
    assert drop_erased_pins(con, home, pins) == (pins, 0)
    pins = pa.table({"salt": ["s"], "kind": ["prompt"], "key": ["gone"]})
    assert drop_erased_pins(con, home, pins) == (pins, 0)       # a table that cannot be read drops nothing


# --- the identity of an app row ----------------------------------------------------------------------------------------

def test_an_edit_keeps_a_rows_identity_and_other_rows_differ():
    line = '{{"ranking_id": 1, "user_id": {user}, "image_0_uid": "{uid}", "image_1_uid": "b", "image_2_uid": null, ' \
           '"image_3_uid": null, "prompt": "{prompt}"}}'
    first = row_identity(line.format(user=1, uid="a", prompt="a cat[single_quote]s hat").encode(), "rankings")
    assert first != UNKNOWN_IDENTITY
    assert row_identity(line.format(user=1, uid="a", prompt="a cat's hat").encode(), "rankings") == first
    assert row_identity(line.format(user=2, uid="a", prompt="a cat's hat").encode(), "rankings") != first
    assert row_identity(line.format(user=1, uid="c", prompt="a cat's hat").encode(), "rankings") != first
    download = '{{"download_id": 1, "user_id": 1, "image_uid": "{uid}", "prompt": "{prompt}"}}'
    assert row_identity(download.format(uid="a", prompt="x").encode(), "downloads") == \
        row_identity(download.format(uid="a", prompt="y").encode(), "downloads") != \
        row_identity(download.format(uid="b", prompt="x").encode(), "downloads")
    assert row_identity(b'{"user_id": 1, "email": "old@example.com"}', "users") == \
        row_identity(b'{"user_id": 1, "email": "new@example.com", "name": "b"}', "users") != UNKNOWN_IDENTITY


def test_by_day_names_only_days_rows_are_dated_to():
    rows = HeldRows(3)
    rows.add(1, "2023-03-01")
    rows.add(2, "2023-03-02")
    rows.add(3, None)
    rows.done()
    assert rows.by_day() == {"2023-03-01": (1, ["1"]), "2023-03-02": (1, ["2"])}
    only = HeldRows(1)
    only.names, only._index = rows.names, rows._index     # as same_rows() keeps the names of the rows it left out
    only.add(2, "2023-03-02")
    only.done()
    assert only.by_day() == {"2023-03-02": (1, ["2"])}


# --- training JPEGs ----------------------------------------------------------------------------------------------------

def _keys(home: DataHome) -> set[str]:
    return {str(p.relative_to(home.root)) for p in (home.root / "blobs" / "train").rglob("*.jpg")
            if not p.is_symlink()}


def test_split_pairs_and_a_staged_version_keep_their_jpegs(tmp_path):
    home = _store(DataHome(tmp_path / "home"))
    home.table_file("split_pairs").parent.mkdir(parents=True)
    pq.write_table(pa.table({"jpg_0_key": [_jpeg_key(SHA["b"])], "jpg_1_key": [_jpeg_key(SHA["b"])]}),
                   home.table_file("split_pairs"))
    staged = staging_root(home.datasets) / ".partial-2023-03-02-0123456789" / "test"
    staged.mkdir(parents=True)
    pq.write_table(pa.table({"jpg_0_key": [_jpeg_key(SHA["e"])], "jpg_1_key": [_jpeg_key(SHA["e"])]}),
                   staged / "s.parquet")
    report = trainjpegs.prune_training_jpegs(home, "file://" + str(home.root))   # the home as a file URL
    assert report.notes == [] and report.removed == 3         # d (a complete version's), f, and e's old size
    assert _keys(home) == {_jpeg_key(SHA[n]) for n in "abce"}
    elsewhere = trainjpegs.prune_training_jpegs(home, "file://" + str(tmp_path / "other"))
    assert elsewhere.removed == 0 and "is not the data home" in elsewhere.notes[0]


def test_an_aliased_size_folder_and_a_linked_key_folder(tmp_path):
    home = _store(DataHome(tmp_path / "home"))
    train = home.root / "blobs" / "train"
    (train / "s1q1").symlink_to(train / "s512q90")           # a second name of the folder a day's keys are under
    outside = tmp_path / "outside" / "dd"
    outside.mkdir(parents=True)
    (outside / (SHA["d"][:62] + "00.jpg")).write_bytes(b"not the store's")
    (train / "s256q85" / "dd").symlink_to(outside)           # a linked <xx> folder: never followed
    report = trainjpegs.prune_training_jpegs(home, str(home.root))
    assert (train / "s512q90" / "aa" / (SHA["a"] + ".jpg")).is_file()     # needed under s512q90, listed twice
    assert (outside / (SHA["d"][:62] + "00.jpg")).is_file()
    assert not (train / "s512q90" / "bb" / (SHA["b"] + ".jpg")).exists() and report.removed >= 1


def test_a_jpeg_not_removed_keeps_its_cache_entry(tmp_path, monkeypatch):
    home = _store(DataHome(tmp_path / "home"))
    stuck = _jpeg_key(SHA["b"])
    keys = sorted(_keys(home))
    jpgdigests.index_jpgs(home, {"jpg_0_key": pa.chunked_array([pa.array(keys, pa.string())])})
    real = trainjpegs._unlink_jpeg
    monkeypatch.setattr(trainjpegs, "_unlink_jpeg", lambda root, key, identity: key != stuck and real(root, key,
                                                                                                        identity))
    report = trainjpegs.prune_training_jpegs(home, str(home.root))
    assert (home.root / stuck).is_file() and any("could not be removed" in note for note in report.notes)
    with jpgdigests._Cache(home) as cache:
        cached = set(cache.read().column("key").to_pylist())
    assert stuck in cached and _jpeg_key(SHA["f"]) not in cached and _jpeg_key(SHA["a"]) in cached
    assert report.cache_entries_removed == report.removed


def test_the_removal_waits_for_a_publish(tmp_path):
    home = _store(DataHome(tmp_path / "home"))
    held, release = threading.Event(), threading.Event()

    def publish() -> None:
        with publish_lock(home, lambda message: None):
            held.set()
            release.wait(30)

    thread = threading.Thread(target=publish)
    thread.start()
    held.wait(30)
    timer = threading.Timer(0.3, release.set)
    timer.start()
    try:
        report = trainjpegs.prune_training_jpegs(home, str(home.root))
    finally:
        release.set()
        thread.join()
    assert any("waiting for another publish" in note for note in report.notes)
    assert report.removed > 0
