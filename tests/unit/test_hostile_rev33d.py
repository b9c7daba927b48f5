"""Hostile review rev33d of the thirty-second session's app-export and consumer fixes: fix32c
(``pipelines/appdb/export.py``: ``owner.json`` in each folder of the export's state, ``CacheOfAnotherHome``, a
superseded export withdrawing the blobs it wrote through ``published_uids`` / ``blobs.withdraw_blobs``, the ticket
clock stopped at 2**63-1) and fix32b (``formats.duck.NO_HIVE``, ``pickapic query`` reading the manifest-listed files,
``python -m pipelines.publish --version NAME --verify-checksums``, the README's flock recipe); README sections 1a, 6
and section 9's rev32b / rev32c bullets.

Driven by the real ``export_day`` against the PostgreSQL server the test starts (``tests/postgres_server.py``), with a
local image store; overlapping exports made as test_fix32c makes them (a whole export run from inside the older
export's blob copy, ``blobs._copy_one`` wrapped). The owner records by ``claim_export_state`` on real folders and
links. The consumer side on a home seeded by ``test_publish_fixtures.make_home`` and published by the real
``publish_dataset``, read by the real ``pickapic query`` (DuckDB) and ``python -m pipelines.publish --version``.

Held (tried, no test): ``pickapic query`` with a listed sidecar replaced by a link to a Parquet file outside the version,
and with a listed ``zz/pickapic-z.parquet`` whose ``zz`` is a link to a folder outside: DuckDB refuses both
("file system operations are disabled"), nothing outside is read; a listed name with ``..`` / an absolute path is
skipped or refused; ``--version`` with ``..``, ``../..``, an absolute path, ``latest/../NAME`` or an empty name is
refused in one line; the version check names an entry whose ``bytes`` is a string or negative (a size mismatch) and
an extra, missing or same-size substituted file (sha256); an ``owner.json`` that is a FIFO does not hang the claim
(replaced); pyarrow's ``read_table`` and polars' ``scan_parquet`` (the README's recipe, a glob and a folder) read
each sample's own ``split``/``dt`` under ``/x/split=train/dt=2026-12-07/``. Measured: a 40-ranking home builds and
publishes in ~5.5 s; the export tests below take 6-11 s each.

Noticed, not filed: ``published_uids`` sorts its digests through ``sorted()`` (a list of Python ints, ~36 bytes an
image, transiently) where its docstring says 8 bytes an image; two hosts whose homes share one NFS cache folder see
it with different ``st_dev`` (the claim takes each other's record for a copy and replaces it: no refusal) - not
run here (no NFS); a home moved by ``mv`` keeps its record's old path in ``owner.json`` (only the message's name).

Each test below is a defect confirmed by running it, ranked by severity, filed as a strict xfail whose assertions
state the correct behaviour. All four were fixed the same day (fix33d, ``tests/unit/test_fix33d.py``) and their
markers removed: a superseded export removes a blob it wrote only when no file names it (every day a reference
resolves against, through the ingest's byte search and uid index, and the running exports' staged files, under a
blob lock each batch of copies holds shared), so a moved row's blob and an over-long line's stay, and only a file
that cannot be read whole withdraws nothing (``published_uids`` is gone, and with it the ``sorted()`` list: a
withdrawal holds a batch of 65,536 uids and one day's look-up at a time); ``owner.json`` records the host, and a
home at the recorded path on that host (restored where it was) is the home itself; the version check names an entry
without its ``bytes``/``sha256`` record as a damaged manifest.
"""
from __future__ import annotations

import gzip
import json
import os
import shutil
import uuid
from pathlib import Path

import psycopg
import pytest

from formats.home import DataHome
from pipelines.appdb import blobs
from pipelines.appdb.export import CACHE_OWNER, AppExportConfig, claim_export_state, export_day, export_state_folders
from tests.postgres_server import create_app_database, postgres_server  # noqa: F401 - fixture
from tests.unit.test_hostile_rev32c import NIGHTLY, NOW, _rank

DAY, NEXT = "2023-03-01", "2023-03-02"


def _named(home: DataHome, day: str) -> list[str]:
    path = home.raw_file(day, "images")
    lines = gzip.decompress(path.read_bytes()).splitlines() if path.exists() else []
    return [json.loads(line)["image_uid"] for line in lines]


def test_a_superseded_export_withdraws_a_blob_another_days_published_rows_name(postgres_server, tmp_path,  # noqa: F811
                                                                             monkeypatch):
    dsn = create_app_database(postgres_server, f"rev33d_{uuid.uuid4().hex[:8]}")
    home = DataHome.at(tmp_path / "home")
    store = tmp_path / "store"
    store.mkdir()
    uid = str(uuid.UUID(int=7))
    (store / f"{uid}.png").write_bytes(b"\x89PNG image")
    with psycopg.connect(dsn) as conn:
        conn.execute("INSERT INTO images (created_at, image_uid, user_id, prompt) VALUES (%s, %s, 1, 'p')",
                     (f"{NEXT} 00:00:05", uid))
        _rank(conn, DAY, 1)
        _rank(conn, NEXT, 2)
    real_copy, entered, reports = blobs._copy_one, [], {}

    def copy_one(*args, **kwargs) -> str:
        if entered:
            return real_copy(*args, **kwargs)
        entered.append(1)
        with psycopg.connect(dsn) as conn:      # the app corrects the image's time: it moves into the day before
            conn.execute("UPDATE images SET created_at = %s WHERE image_uid = %s", (f"{DAY} 23:59:59", uid))
        reports["newer"] = export_day(home, dsn, NEXT, NIGHTLY, now=NOW, image_store=str(store))
        outcome = real_copy(*args, **kwargs)     # the older export of NEXT copies the blob (none was there)
        reports["day"] = export_day(home, dsn, DAY, NIGHTLY, now=NOW, image_store=str(store))   # finds it there
        return outcome

    monkeypatch.setattr(blobs, "_copy_one", copy_one)
    older = export_day(home, dsn, NEXT, NIGHTLY, now=NOW, image_store=str(store))
    assert older.published == "superseded" and reports["newer"].published != "superseded"
    assert _named(home, DAY) == [uid] and _named(home, NEXT) == []       # DAY's published rows name the image
    assert reports["day"].blobs["present"] == 1
    # the image DAY's published rows name must still be in raw/images
    assert (home.raw_images / f"{uid}.png").is_file(), older.warnings


def test_one_over_long_prompt_in_the_day_keeps_every_erased_image_a_superseded_export_copied(
        postgres_server, tmp_path, monkeypatch):  # noqa: F811
    config = AppExportConfig(lag_minutes=60, lookback_days=2, max_line_bytes=300)
    dsn = create_app_database(postgres_server, f"rev33d_{uuid.uuid4().hex[:8]}")
    home = DataHome.at(tmp_path / "home")
    store = tmp_path / "store"
    store.mkdir()
    erased, long = str(uuid.UUID(int=5)), str(uuid.UUID(int=6))
    for uid in (erased, long):
        (store / f"{uid}.png").write_bytes(b"\x89PNG " + uid.encode())
    with psycopg.connect(dsn) as conn:
        conn.execute("INSERT INTO users (user_id, created_at, email) VALUES (5, '2023-03-01 01:00', 'x@example.com')")
        conn.execute("INSERT INTO images (created_at, image_uid, user_id, prompt) "
                     "VALUES ('2023-03-01 02:00', %s, 5, 'p')", (erased,))
        # another user's prompt over the line limit: the export writes its line cut (the ingest quarantines it)
        conn.execute("INSERT INTO images (created_at, image_uid, user_id, prompt) "
                     "VALUES ('2023-03-01 03:00', %s, 1, %s)", (long, "y" * 2000))
        _rank(conn, DAY, 1, user_id=5)
        _rank(conn, DAY, 2, user_id=1)
    export_day(home, dsn, DAY, config, now=NOW, image_store=str(store))
    real_copy, seen = blobs._copy_one, []

    def copy_one(*args, **kwargs) -> str:
        if not seen:     # the erasure: rows deleted, the day re-exported, the account's images deleted
            seen.append(1)
            with psycopg.connect(dsn) as conn:
                for table in ("rankings", "images", "users"):
                    conn.execute(f"DELETE FROM {table} WHERE user_id = 5")
            seen.append(export_day(home, dsn, DAY, config, now=NOW, image_store=str(store)).published)
            (home.raw_images / f"{erased}.png").unlink()
        return real_copy(*args, **kwargs)

    monkeypatch.setattr(blobs, "_copy_one", copy_one)
    older = export_day(home, dsn, DAY, config, now=NOW, image_store=str(store))
    assert seen == [1, "updated"] and older.published == "superseded"
    assert older.blobs["copied"] == 1
    assert (home.raw_images / f"{long}.png").is_file()                 # the kept row's image stays
    # the erased account's image, copied back by the superseded export, must be removed again
    assert not (home.raw_images / f"{erased}.png").exists(), older.warnings


def test_a_home_restored_at_its_own_path_is_not_refused_as_another_home(tmp_path: Path) -> None:
    """The only home that ever used its (linked) cache, restored from its backup at the same path: a new inode."""
    fast = tmp_path / "fastdisk"
    fast.mkdir()
    prod = DataHome.at(tmp_path / "prod")
    prod.root.mkdir()
    prod.cache.symlink_to(fast)                     # the cache on a fast disk, a link
    claim_export_state(prod)
    shutil.copytree(prod.root, tmp_path / "backup", symlinks=True)          # the backup (the link kept as a link)
    os.rename(prod.root, tmp_path / "lost")                                  # the disk lost ...
    shutil.copytree(tmp_path / "backup", prod.root, symlinks=True)          # ... the home restored where it was
    shutil.rmtree(tmp_path / "lost")
    claim_export_state(prod)          # today: CacheOfAnotherHome "state of the data home P, not of P" (itself)
    ids = {tuple(json.loads((folder / CACHE_OWNER).read_text())["home_id"]) for folder in export_state_folders(prod)}
    assert ids == {(os.stat(prod.root).st_dev, os.stat(prod.root).st_ino)}


@pytest.fixture(scope="module")
def published_home(tmp_path_factory) -> DataHome:
    """A seeded home (40 rankings), published once (read-only: copy it)."""
    from test_publish_fixtures import make_home

    from pipelines.publish.config import PublishConfig
    from pipelines.publish.version import publish_dataset

    home = make_home(tmp_path_factory.mktemp("rev33d") / "home", num_rankings=40, seed=5)
    publish_dataset(home, PublishConfig(workers=1, fsync=False))
    return home


@pytest.mark.parametrize("entry", [{}, None, [1, 2]])
def test_the_version_check_names_a_damaged_manifest_entry_instead_of_crashing(published_home, tmp_path, capsys,
                                                                               entry) -> None:
    """What every checksum error recommends (``python -m pipelines.publish --verify-checksums --version NAME``) on a
    version whose manifest.json lost one entry's record (a bad edit, a truncated rewrite by hand)."""
    from formats import dataset
    from pipelines.publish.__main__ import run as publish

    shutil.copytree(published_home.root, tmp_path / "home", symlinks=True)
    home = DataHome(tmp_path / "home")
    version = dataset.resolve_version(home)
    path = version / dataset.MANIFEST_FILE
    manifest = json.loads(path.read_text())
    manifest["files"]["train/sizes.json"] = entry
    path.chmod(0o644)
    path.write_text(json.dumps(manifest))
    capsys.readouterr()
    code = publish(["--home", str(home.root), "--verify-checksums", "--version", version.name])  # today: raises
    err = capsys.readouterr().err
    assert code == 1 and "train/sizes.json" in err and "Traceback" not in err, err
