"""Fix of review rev30b (``tests/unit/test_hostile_rev30b.py``): cases its xfails do not cover.

- A raw row is looked up by its id *and its identity* (``row_days.sql``'s ``identity``, ``export.row_identity``):
  the same digest from the app's row and from the line the export wrote of it (a UTF8 database; one in LATIN1,
  whose non-ASCII text is compared as '?'); a re-export kept by ``keep_exported_rows`` keeps a row whose id the app
  gave a new row, and still takes out a row that moved.
- ``pickapic build``'s removal of training JPEGs (``pipelines.features.trainjpegs``): only JPEGs no warehouse day
  and no unfinished version names, with their digest cache entries; nothing while a feature stage writes, nothing
  when a partition cannot be read, never a link.
- ``split_key_owners`` drops the pins of keys no warehouse row holds (``assign.drop_erased_pins``), never those
  whose rows only left ``pairs``.
Real PostgreSQL (``tests/postgres_server.py``) where the app database is involved.
"""
from __future__ import annotations

import gzip
import json
import os

import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
from appdb_fixtures import NOW, app_db

from formats.home import DataHome
from formats.locks import writing_shared
from pipelines.appdb.export import UNKNOWN_IDENTITY, AppExportConfig, export_day, format_row, held_ids, row_identity
from pipelines.features import trainjpegs
from pipelines.publish import jpgdigests
from pipelines.splits.assign import drop_erased_pins, normalize_prompt
from pipelines.sqlrun import connect
from tests.postgres_server import create_app_database, postgres_server  # noqa: F401 - fixture

KEEPING = AppExportConfig(lag_minutes=60, lookback_days=2, keep_exported_rows=True)


def _prompts(home: DataHome, day: str) -> list:
    return [json.loads(line)["prompt"] for line in gzip.decompress(home.raw_file(day, "rankings").read_bytes()).splitlines()]


def _rank(conn, day: str, prompt: str, user_id: int = 1) -> None:
    conn.execute("INSERT INTO rankings (created_at, user_id, image_0_uid, prompt) VALUES (%s, %s, 'u-0', %s)",
                 (f"{day} 12:00", user_id, prompt))


# --- identity of a row --------------------------------------------------------------------------------------------

def _identity_pairs(dsn: str, prompts: list[str]) -> list[tuple[int, int]]:
    """(the app row's identity digest, the identity digest of the line the export writes of it) per ranking."""
    with psycopg.connect(dsn) as conn:     # the text in an image uid too: the prompt is no identity column (rev30g)
        for prompt in prompts:
            conn.execute("INSERT INTO rankings (created_at, user_id, image_0_uid, prompt) VALUES (%s, 1, %s, %s)",
                         ("2023-03-01 12:00", prompt, prompt))
    home_rows = []
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT ranking_id::int8, to_char(created_at, 'YYYY-MM-DD HH24:MI:SS.US'), user_id::int8, "
                            "image_0_uid, image_1_uid, image_2_uid, image_3_uid, best_image_uid, prompt "
                            "FROM rankings ORDER BY 1").fetchall()
        found = held_ids(conn, "rankings", [row[0] for row in rows])
        for row, app in zip(rows, found.identities):
            exact = conn.info.parameter_status("server_encoding") in ("UTF8", "SQL_ASCII")
            home_rows.append((app, row_identity(format_row("rankings", row), "rankings", exact)))
    return home_rows


def test_the_app_row_and_its_raw_line_have_one_identity(postgres_server):  # noqa: F811
    pairs = _identity_pairs(app_db(postgres_server), ["a cat", "Кот в сапогах ünïcode", 'quotes " and \\'])
    assert all(app == raw and raw != UNKNOWN_IDENTITY for app, raw in pairs)
    assert len({app for app, _ in pairs}) == 3


def test_a_latin1_database_compares_its_non_ascii_text_as_unknown_alike(postgres_server):  # noqa: F811
    pairs = _identity_pairs(app_db(postgres_server, "LATIN1"), ["a cat", "café au lait"])
    assert all(app == raw and raw != UNKNOWN_IDENTITY for app, raw in pairs)


def test_an_identity_that_cannot_be_read_is_unknown():
    line = b'{"ranking_id": 1, "created_at": "2023-03-01 12:00:00.000000", "user_id": 1, "image_0_uid": "u", "pro'
    assert row_identity(line, "rankings") == UNKNOWN_IDENTITY                      # a cut line
    assert row_identity(b'{"user_id": "1", "email": null}', "users") != UNKNOWN_IDENTITY
    assert row_identity(b'{"image_id": 1, "image_uid": "u", "user_id": "one"}', "images") == UNKNOWN_IDENTITY
    assert row_identity(b'{"download_id": 1, "user_id": 1.0, "image_uid": "u", "prompt": "p"}', "downloads") == \
        row_identity(b'{"download_id": 1, "user_id": 1, "image_uid": "u", "prompt": "p"}', "downloads")


def test_keep_exported_rows_keeps_a_row_whose_id_the_app_gave_again_and_drops_a_moved_one(postgres_server,  # noqa: F811
                                                                                           tmp_path):
    dsn, home = app_db(postgres_server), DataHome.at(tmp_path / "home")
    with psycopg.connect(dsn) as conn:
        for prompt in ("kept 1", "lost in the restore 2", "lost in the restore 3", "moved 4"):
            _rank(conn, "2023-03-01", prompt)
    export_day(home, dsn, "2023-03-01", KEEPING, now=NOW)
    with psycopg.connect(dsn) as conn:
        conn.execute("UPDATE rankings SET created_at = '2023-03-05 08:00' WHERE ranking_id = 4")   # moved
        conn.execute("DELETE FROM rankings WHERE ranking_id IN (2, 3)")                             # a restore
        conn.execute("INSERT INTO rankings (ranking_id, created_at, user_id, prompt) VALUES "
                     "(2, '2023-03-05 09:00', 7, 'a new row 2'), (3, '2023-03-05 10:00', 7, 'a new row 3')")
    report = export_day(home, dsn, "2023-03-01", KEEPING, now=NOW)
    assert _prompts(home, "2023-03-01") == ["kept 1", "lost in the restore 2", "lost in the restore 3"]
    assert report.kept["rankings"]["rows"] == 2
    assert "" not in report.warnings


# --- training JPEGs -----------------------------------------------------------------------------------------------

SHA = {name: name * 64 for name in "abcdef"}


def _jpeg_key(sha: str, folder: str = "s512q90") -> str:
    return f"blobs/train/{folder}/{sha[:2]}/{sha}.jpg"


def _store(home: DataHome) -> DataHome:
    """A home whose store holds JPEGs a..f: a day needs a, an unfinished version c, a finished version d only."""
    for sha in SHA.values():
        path = home.root / _jpeg_key(sha)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"jpeg " + sha.encode())
    old = home.root / _jpeg_key(SHA["e"], "s256q85")           # an older size setting's, no day needs it
    old.parent.mkdir(parents=True, exist_ok=True)
    old.write_bytes(b"old")
    part = home.partition_file("image_features", "2023-03-01")
    part.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"image_uid": ["x"], "train_jpg_key": [_jpeg_key(SHA["a"])]}), part)
    for version, sha, complete in (("2023-03-01-0123456789", SHA["c"], False), ("2023-02-01-0123456789", SHA["d"], True)):
        folder = home.datasets / version / "train"
        folder.mkdir(parents=True)
        pq.write_table(pa.table({"jpg_0_key": [_jpeg_key(sha)], "jpg_1_key": [_jpeg_key(sha)]}), folder / "s.parquet")
        if complete:
            (home.datasets / version / "manifest.json").write_text('{"files": {}}')
    os.symlink(home.root / _jpeg_key(SHA["a"]), home.root / "blobs/train/s512q90/ff" / ("f" * 63 + "0.jpg"))
    (home.root / "blobs/train/s512q90/bb/notes.txt").write_text("not a JPEG of the stage")
    return home


def test_the_build_s_removal_keeps_what_a_day_or_an_unfinished_version_names(tmp_path):
    home = _store(DataHome(tmp_path / "home"))
    link = home.root / "blobs/train/s512q90/ff" / ("f" * 63 + "0.jpg")
    with jpgdigests._Cache(home) as cache:
        cache.record(pa.table({"key": [_jpeg_key(SHA[n]) for n in "ab"],
                               **{name: [1, 1] for name in jpgdigests.JPG_IDENTITY_FIELDS},
                               "sha256": ["0" * 64, "1" * 64]}, schema=jpgdigests.CACHE_SCHEMA), merge=False)
    report = trainjpegs.prune_training_jpegs(home, str(home.root))
    left = sorted(str(p.relative_to(home.root)) for p in (home.root / "blobs").rglob("*") if not p.is_dir())
    assert left == sorted([_jpeg_key(SHA["a"]), _jpeg_key(SHA["c"]), "blobs/train/s512q90/bb/notes.txt",
                           str(link.relative_to(home.root))])
    assert link.is_symlink()
    assert (report.removed, report.cache_entries_removed) == (5, 1)     # b, d, e, f and the older size's e
    with jpgdigests._Cache(home) as cache:
        assert cache.read().column("key").to_pylist() == [_jpeg_key(SHA["a"])]
    again = trainjpegs.prune_training_jpegs(home, str(home.root))       # idempotent
    assert (again.removed, again.cache_entries_removed) == (0, 0)


def test_nothing_is_removed_while_a_feature_stage_writes_or_a_partition_cannot_be_read(tmp_path):
    home = _store(DataHome(tmp_path / "home"))
    before = sorted((home.root / "blobs").rglob("*.jpg"))
    with writing_shared(trainjpegs.lock_file(home), "a feature stage") as held:
        assert held
        report = trainjpegs.prune_training_jpegs(home, str(home.root))
    assert report.removed == 0 and "feature stage" in report.notes[0]
    home.partition_file("image_features", "2023-03-02").parent.mkdir(parents=True)
    home.partition_file("image_features", "2023-03-02").write_bytes(b"not parquet")
    report = trainjpegs.prune_training_jpegs(home, str(home.root))
    assert report.removed == 0 and "cannot be read" in report.notes[0]
    assert sorted((home.root / "blobs").rglob("*.jpg")) == before
    elsewhere = trainjpegs.prune_training_jpegs(home, str(tmp_path / "bucket"))
    assert elsewhere.removed == 0 and "not the data home" in elsewhere.notes[0]


# --- key owner pins ---------------------------------------------------------------------------------------------

def test_pins_of_keys_no_warehouse_row_holds_are_dropped_only(tmp_path):
    home = DataHome(tmp_path / "home")
    for table, rows in (("rankings", {"ranking_id": [1, 2], "prompt": ["A Cat!", "banned user's dog"]}),
                        ("images", {"image_uid": ["img-kept", "img-banned"]})):
        path = home.partition_file(table, "2023-03-01")
        path.parent.mkdir(parents=True)
        pq.write_table(pa.table(rows), path)
    pairs = pa.table({"ranking_id": [1], "image_0_uid": ["img-kept"], "image_1_uid": ["img-kept"]})
    split_pairs = pa.table({"prompt_key": [normalize_prompt("A Cat!")]})
    con = connect({"pairs": pairs, "split_pairs": split_pairs, "split_rejects": split_pairs.slice(0, 0)})
    keys = [("prompt", normalize_prompt("A Cat!")), ("prompt", normalize_prompt("banned user's dog")),
            ("prompt", "an erased account's prompt"), ("image", "img-kept"), ("image", "img-banned"),
            ("image", "img-erased")]
    pins = pa.table({"salt": ["s"] * len(keys), "kind": [k for k, _ in keys], "key": [v for _, v in keys]})
    kept, dropped = drop_erased_pins(con, home, pins)
    assert dropped == 2
    assert [(k, v) for k, v in zip(kept.column("kind").to_pylist(), kept.column("key").to_pylist())] == \
        [keys[0], keys[1], keys[3], keys[4]]
    assert drop_erased_pins(con, home, kept) == (kept, 0)
