"""The app-database export against what a hostile review planted: undated rows, misparsed DSN URLs,
positioned server errors, linked output folders, killed exports, half-replaced days, huge rows and blobs
that change in the store. Each test failed on the code before its fix (a real throwaway server)."""
from __future__ import annotations

import gzip
import os
import subprocess
import sys

import psycopg
import pytest
from apache_beam.io.localfilesystem import LocalFileSystem

from formats.home import DataHome
from formats.rawzone import scan_raw_zone
from pipelines.appdb import blobs
from pipelines.appdb import export as export_module
from pipelines.appdb.connection import AppDatabaseError, server_name
from pipelines.appdb.export import app_days, export_day
from tests.postgres_server import postgres_server  # noqa: F401 - fixture
from tests.unit.test_app_export import BY_DAY, DAYS, _stats, app_db, simulated_template  # noqa: F401 - fixtures


def _lines(home: DataHome, day: str, table: str) -> list[bytes]:
    return gzip.decompress(home.raw_file(day, table).read_bytes()).splitlines()


@pytest.mark.parametrize("url,secret", [
    ("postgresql://export:Sup3r@s3cretTail@db.internal:5432/app", "s3cretTail"),
    ("postgresql://export:hunter2/s3cretTail@db.internal/app", "hunter2"),
    ("POSTGRES://export:a/b@c@db/app", "b@c"),
])
def test_a_url_whose_password_holds_an_unescaped_at_or_slash_is_refused_without_showing_it(url, secret):
    # libpq would read the password's tail as the host (or the head as the port): every message shows those
    with pytest.raises(AppDatabaseError) as error:
        server_name(url)
    message = str(error.value)
    assert "percent-encode" in message and secret not in message and "s3cret" not in message


def test_urls_that_libpq_reads_right_are_still_taken():
    assert server_name("postgresql://u:p%40ss@host:5432/db?sslmode=disable").host == "host"
    assert server_name("postgresql://host/db?user=a@b").user == "a@b"      # '@' in a query value is fine


def test_a_positioned_server_error_reports_its_reason_not_the_caret(app_db, tmp_path):
    with psycopg.connect(app_db, autocommit=True) as conn:
        conn.execute("ALTER DATABASE " + conn.info.dbname + " SET lock_timeout = '300ms'")
    locker = psycopg.connect(app_db)
    try:
        locker.execute("LOCK TABLE rankings IN ACCESS EXCLUSIVE MODE")     # a migration holding the table
        with pytest.raises(AppDatabaseError) as error:
            export_day(DataHome.at(tmp_path / "home"), app_db, DAYS[0])
    finally:
        locker.close()
    message = str(error.value)
    assert "lock timeout" in message and not message.rstrip().endswith("^") and "LINE " not in message


def test_rows_no_day_can_hold_are_counted_named_and_never_make_a_day(app_db, tmp_path):
    with psycopg.connect(app_db, autocommit=True) as conn:
        conn.execute("ALTER TABLE rankings ALTER COLUMN created_at DROP NOT NULL")
        ids = [conn.execute("INSERT INTO rankings (created_at, user_id, prompt) VALUES (%s::timestamp, 1, 'x') "
                            "RETURNING ranking_id", (value,)).fetchone()[0]
               for value in (None, "infinity", "-infinity", "0044-03-15 12:00 BC", "10000-01-01")]
        conn.execute("INSERT INTO downloads (created_at, user_id, image_uid, prompt) "
                     "VALUES ('1970-01-01 00:00:00', 1, 'u', 'an epoch row is a real, dated row')")
    found = app_days(app_db)
    # one probe per day with rows: the epoch row adds its own day, never the 19,000 days between
    assert found.days == ["1970-01-01", *DAYS]
    assert found.undated["rankings"]["rows"] == 5
    assert found.undated["rankings"]["first_ids"] == [str(i) for i in sorted(ids)]
    assert set(found.undated) == {"rankings"} and "ids " + ", ".join(map(str, sorted(ids))) in found.warning()
    report = export_day(DataHome.at(tmp_path / "home"), app_db, DAYS[0], BY_DAY)
    assert report.undated == found.undated and report.metadata()["undated_rows"] == 5
    assert report.warnings == [found.warning()]


def test_the_build_warns_about_undated_rows_and_exports_only_days_with_rows(app_db, monkeypatch, tmp_path):
    from dagster_project.build import select_app_db_days
    from formats.settings import load

    with psycopg.connect(app_db, autocommit=True) as conn:
        conn.execute("INSERT INTO rankings (created_at, user_id, prompt) VALUES ('infinity', 1, 'x')")
        conn.execute("INSERT INTO rankings (created_at, user_id, prompt) VALUES ('2023-03-20 10:00', 1, 'x')")
    monkeypatch.setenv("PICKAPIC_APP_DB_DSN", app_db)
    warnings: list[str] = []
    days = select_app_db_days(load(tmp_path), warn=warnings.append)
    assert days == [*DAYS, "2023-03-20"]       # no empty day between them is exported
    assert len(warnings) == 1 and "rankings: 1" in warnings[0]


@pytest.mark.parametrize("linked", ["raw/app_logs", "raw/images"])
def test_a_linked_output_folder_is_refused_and_nothing_is_written_through_it(app_db, tmp_path, linked):
    outside = tmp_path / "outside"
    outside.mkdir()
    home = DataHome.at(tmp_path / "home")
    (home.root / "raw").mkdir(parents=True)
    os.symlink(outside, home.root / linked)
    store = tmp_path / "store"
    store.mkdir()
    with pytest.raises(FileExistsError, match="is a symlink"):
        export_day(home, app_db, DAYS[0], image_store=str(store))
    assert list(outside.iterdir()) == []


def test_only_a_held_staging_folder_is_skipped_and_a_dead_one_is_removed_by_the_next_export(app_db, tmp_path):
    # staging ownership is an flock on the folder (a PID alone is wrong across PID namespaces, and a name
    # alone must never hide data from the ingest)
    home = DataHome.at(tmp_path / "home")
    export_day(home, app_db, DAYS[0])
    dead = home.raw_logs / f".dt={DAYS[1]}.export-12345-0badc0de"      # an export killed mid-way
    huge = home.raw_logs / f".dt={DAYS[1]}.export-{10**30}-00000bad"   # a name anything could make
    fresh = home.raw_logs / f".dt={DAYS[1]}.export-1-0000f00d"         # just made, not locked yet
    held = home.raw_logs / f".dt={DAYS[1]}.export-1-0000beef"          # a running export's, in any PID namespace
    for folder in (dead, huge, fresh, held):
        folder.mkdir()
        (folder / "rankings.jsonl.gz").write_bytes(b"half")
    for folder in (dead, huge):
        os.utime(folder, (1, 1))
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDONLY); "
                               "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)", str(held)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        os.utime(held, (1, 1))
        scan = scan_raw_zone(home.root)
        assert scan.days == [DAYS[0]]
        assert sorted({p.entry for p in scan.problems}) == sorted(
            str(path.relative_to(home.root)) for path in (dead, huge, fresh))
        export_day(home, app_db, DAYS[1])
        assert not dead.exists() and not huge.exists()     # nobody holds them: interrupted exports' leftovers
        assert fresh.exists() and held.exists()            # too new to judge / held by a running export
    finally:
        holder.kill()
        holder.wait()


def test_a_changed_day_is_swapped_whole_and_unchanged_files_keep_their_inode(app_db, tmp_path):
    home = DataHome.at(tmp_path / "home")
    export_day(home, app_db, DAYS[0])
    before = _stats(home, DAYS[0])
    folder = os.lstat(home.raw_day(DAYS[0])).st_ino
    with psycopg.connect(app_db) as conn:
        conn.execute("INSERT INTO rankings (created_at, user_id, prompt) VALUES ('2023-02-13 23:00', 1, 'late')")
    assert export_day(home, app_db, DAYS[0]).changed_tables == ["rankings"]
    after = _stats(home, DAYS[0])
    assert {t: after[t] == before[t] for t in after} == {"users": True, "images": True, "rankings": False,
                                                         "downloads": True}
    assert os.lstat(home.raw_day(DAYS[0])).st_ino != folder        # one rename of the whole day
    assert [p.name for p in home.raw_logs.iterdir()] == [f"dt={DAYS[0]}"]


def test_a_target_that_cannot_be_replaced_stops_the_update_before_any_file_moves(app_db, tmp_path):
    home = DataHome.at(tmp_path / "home")
    export_day(home, app_db, DAYS[0])
    rankings = _lines(home, DAYS[0], "rankings")
    with psycopg.connect(app_db) as conn:
        uid = conn.execute("SELECT image_uid FROM images ORDER BY image_id LIMIT 1").fetchone()[0]
        conn.execute("INSERT INTO rankings (created_at, user_id, prompt) VALUES ('2023-02-13 23:00', 1, 'late')")
        conn.execute("INSERT INTO downloads (created_at, user_id, image_uid, prompt) "
                     "VALUES ('2023-02-13 23:00', 1, %s, 'late')", (uid,))
    downloads = home.raw_file(DAYS[0], "downloads")
    downloads.unlink()
    downloads.mkdir()                      # something else's folder where the export's file was
    (downloads / "keep").write_text("not the export's")
    with pytest.raises(FileExistsError, match="not a regular file"):
        export_day(home, app_db, DAYS[0])
    assert _lines(home, DAYS[0], "rankings") == rankings and (downloads / "keep").exists()


def test_fetches_follow_bytes_not_rows_once_huge_rows_arrive(app_db, tmp_path, monkeypatch):
    with psycopg.connect(app_db) as conn:
        for _ in range(40):
            conn.execute("INSERT INTO rankings (created_at, user_id, prompt) VALUES ('2023-02-13 12:00', 1, %s)",
                         ("p" * (1 << 20),))
    fetches: list[tuple[int, int]] = []      # (rows asked, text bytes got) per fetch of the rankings query
    real = export_module.read_rows

    def recording(conn, query, params, batch=4096):
        def asked():
            fetches.append((batch(), 0))
            return fetches[-1][0]
        for rows in real(conn, query, params, asked):
            if "FROM rankings" in query:
                fetches[-1] = (fetches[-1][0], sum(len(v) for row in rows for v in row if isinstance(v, bytes)))
            yield rows

    monkeypatch.setattr(export_module, "read_rows", recording)
    report = export_day(DataHome.at(tmp_path / "home"), app_db, DAYS[0], BY_DAY)
    assert report.tables["rankings"].rows >= 40
    rankings = [f for f in fetches if f[1]]
    assert sum(got for _, got in rankings) >= 40 << 20
    # every fetch of megabyte rows asks for about BATCH_BYTES of them, the first one too (the server's fetch
    # plan: before, 4,096 rows a fetch whatever their size, then a ramp sized from the previous fetch)
    per_mb = export_module.BATCH_BYTES >> 20
    assert all(rows <= per_mb + 1 for rows, got in rankings if got >= rows << 20 >> 1), rankings
    assert max(got for _, got in rankings) <= export_module.BATCH_BYTES + (1 << 20) and len(rankings) >= 40 // per_mb


def test_blobs_once_copied_stay_frozen_and_late_ones_are_announced(app_db, tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    with psycopg.connect(app_db) as conn:
        uids = [u for (u,) in conn.execute("SELECT image_uid FROM images WHERE created_at < %s ORDER BY image_id "
                                           "LIMIT 2", (DAYS[1],))]
    (store / f"{uids[0]}.png").write_bytes(b"\x89PNG as exported")
    home = DataHome.at(tmp_path / "home")
    export_day(home, app_db, DAYS[0], image_store=str(store))
    (store / f"{uids[0]}.png").write_bytes(b"\x89PNG replaced in the store later, longer")
    (store / f"{uids[1]}.png").write_bytes(b"\x89PNG uploaded after the export")
    again = export_day(home, app_db, DAYS[0], image_store=str(store))
    assert (again.blobs["differs_in_store"], again.blobs["copied"]) == (1, 1)
    assert (home.raw_images / f"{uids[0]}.png").read_bytes() == b"\x89PNG as exported"
    text = "\n".join(again.warnings)
    assert "differ in the store" in text and f"pickapic build --force --from {DAYS[0]} --to {DAYS[0]}" in text


class _SchemeStore(LocalFileSystem):
    """Beam's local file system behind a URL scheme: the store's URL branch (``s3://``, ``gs://``) on
    real files, through Beam's own ``FileSystems`` dispatch."""

    PREFIX = "pickapic-test-store://"

    @classmethod
    def scheme(cls) -> str:
        return cls.PREFIX.split(":")[0]

    def match(self, patterns, limits=None):
        return super().match([p.removeprefix(self.PREFIX) for p in patterns], limits)

    def open(self, path, *args, **kwargs):
        return super().open(path.removeprefix(self.PREFIX), *args, **kwargs)


@pytest.mark.parametrize("url", [False, True], ids=["local", "url"])
def test_a_blob_replaced_by_other_bytes_of_the_same_size_differs_in_store(tmp_path, url):
    """The copy was compared with the store's object by size only: an object replaced by other bytes of
    the same size counted as 'present'. Now the bytes are compared (also past the first read chunk)."""
    store, images = tmp_path / "store", tmp_path / "images"
    store.mkdir()
    images.mkdir()
    where = _SchemeStore.PREFIX + str(store) if url else str(store)
    exported = bytes(range(256)) * (3 * blobs.CHUNK // 256) + b"tail"
    cases = {"0b6c3c40-6b0f-4c5e-9a7e-3d8a3b1e2f1%d" % i: exported for i in range(4)}
    for uid, data in cases.items():
        (store / f"{uid}.png").write_bytes(data)
        assert blobs._copy_one(where, uid, images) == "copied"
    first, last, longer, same = cases
    (store / f"{first}.png").write_bytes(b"X" + exported[1:])                      # same size, first byte
    (store / f"{last}.png").write_bytes(exported[:-1] + b"!")                      # same size, last chunk
    (store / f"{longer}.png").write_bytes(exported + b"more")                      # another size
    (store / f"{same}.png").write_bytes(bytes(exported))                           # rewritten, same bytes
    outcomes = {uid: blobs._copy_one(where, uid, images) for uid in cases}
    assert outcomes == {first: "differs_in_store", last: "differs_in_store", longer: "differs_in_store",
                        same: "present"}
    assert all((images / f"{uid}.png").read_bytes() == exported for uid in cases)   # the copies stay frozen
    assert sorted(p.name for p in images.iterdir()) == sorted(f"{uid}.png" for uid in cases)


def test_only_regular_files_of_a_local_store_are_copied(app_db, tmp_path):
    """A symlink in the app's store could name any file the export can read (it was followed and the
    file copied into the raw zone); a FIFO would block the copy. Neither is copied: counted and warned."""
    store = tmp_path / "store"
    store.mkdir()
    secret = tmp_path / "not-an-image.txt"
    secret.write_text("private key material")
    with psycopg.connect(app_db) as conn:
        uids = [u for (u,) in conn.execute("SELECT image_uid FROM images WHERE created_at < %s ORDER BY image_id "
                                           "LIMIT 3", (DAYS[1],))]
    os.symlink(secret, store / f"{uids[0]}.png")
    os.mkfifo(store / f"{uids[1]}.png")
    (store / f"{uids[2]}.png").write_bytes(b"\x89PNG a real one")
    home = DataHome.at(tmp_path / "home")
    report = export_day(home, app_db, DAYS[0], image_store=str(store))
    assert (report.blobs["not_a_file_in_store"], report.blobs["copied"]) == (2, 1)
    assert sorted(p.name for p in home.raw_images.iterdir()) == [f"{uids[2]}.png"]
    assert "are not regular files" in "\n".join(report.warnings)


def test_without_a_folder_swap_changed_files_are_renamed_one_by_one(app_db, tmp_path, monkeypatch):
    # a file system or kernel without renameat2(RENAME_EXCHANGE): the per-file path, same result
    monkeypatch.setattr(export_module, "exchange", lambda first, second: False)
    home = DataHome.at(tmp_path / "home")
    export_day(home, app_db, DAYS[0])
    before, folder = _stats(home, DAYS[0]), os.lstat(home.raw_day(DAYS[0])).st_ino
    with psycopg.connect(app_db) as conn:
        conn.execute("INSERT INTO rankings (created_at, user_id, prompt) VALUES ('2023-02-13 23:00', 1, 'late')")
    assert export_day(home, app_db, DAYS[0]).changed_tables == ["rankings"]
    after = _stats(home, DAYS[0])
    assert [t for t in after if after[t] != before[t]] == ["rankings"]
    assert os.lstat(home.raw_day(DAYS[0])).st_ino == folder and b"late" in b"".join(_lines(home, DAYS[0], "rankings"))
    assert [p.name for p in home.raw_logs.iterdir()] == [f"dt={DAYS[0]}"]
    assert sorted(p.name for p in home.raw_day(DAYS[0]).iterdir()) == sorted(f"{t}.jsonl.gz" for t in before)


def test_the_lag_also_holds_by_the_database_clock(app_db, tmp_path, monkeypatch):
    # this machine's clock says the day closed long ago; the database, which stamps the commits, is behind
    import datetime as dt

    from pipelines.appdb.export import ExportTooEarly

    monkeypatch.setattr(export_module, "database_now",
                        lambda conn: dt.datetime(2023, 2, 14, 0, 30, tzinfo=dt.timezone.utc))
    home = DataHome.at(tmp_path / "home")
    with pytest.raises(ExportTooEarly, match="by the app database's clock"):
        export_day(home, app_db, DAYS[0])
    assert not home.raw_logs.exists()
    monkeypatch.undo()
    with psycopg.connect(app_db) as conn:
        assert export_module.database_now(conn).tzinfo is not None
    assert export_day(home, app_db, DAYS[0]).published == "new day"


@pytest.mark.parametrize("refusal", ["link", "swap"])
def test_a_refused_link_or_swap_falls_back_to_renaming_each_changed_file(app_db, tmp_path, monkeypatch, refusal):
    # protected_hardlinks refuses a link to another account's file; a sticky shared folder refuses the swap
    import ctypes
    import errno

    home = DataHome.at(tmp_path / "home")
    export_day(home, app_db, DAYS[0])
    before = _stats(home, DAYS[0])
    if refusal == "link":
        def refused(*args, **kwargs):
            raise PermissionError(errno.EPERM, "Operation not permitted")
        monkeypatch.setattr(export_module.os, "link", refused)
    else:
        def refused_swap(*args):
            ctypes.set_errno(errno.EPERM)
            return -1
        monkeypatch.setattr(export_module, "_renameat2", refused_swap)
    with psycopg.connect(app_db) as conn:
        conn.execute("INSERT INTO rankings (created_at, user_id, prompt) VALUES ('2023-02-13 23:00', 1, 'late')")
    assert export_day(home, app_db, DAYS[0]).changed_tables == ["rankings"]
    after = _stats(home, DAYS[0])
    assert [t for t in after if after[t] != before[t]] == ["rankings"]
    assert b"late" in b"".join(_lines(home, DAYS[0], "rankings"))
    assert [p.name for p in home.raw_logs.iterdir()] == [f"dt={DAYS[0]}"]


@pytest.mark.parametrize("day", ["20230213", "2023-W07-1", "2023-044"])
def test_a_day_not_written_yyyy_mm_dd_is_refused(app_db, tmp_path, day):
    # Python 3.11's date.fromisoformat takes these; the raw zone's dt= folders would never be ingested
    home = DataHome.at(tmp_path / "home")
    with pytest.raises(ValueError, match="day must be YYYY-MM-DD"):
        export_day(home, app_db, day)
    assert not home.raw.exists()


def test_the_swapped_in_day_keeps_the_day_folders_mode(app_db, tmp_path):
    # an operator's chmod 2750 on a day folder survived per-file renames; the swap must keep it too
    home = DataHome.at(tmp_path / "home")
    export_day(home, app_db, DAYS[0])
    os.chmod(home.raw_day(DAYS[0]), 0o2750)
    with psycopg.connect(app_db) as conn:
        conn.execute("INSERT INTO rankings (created_at, user_id, prompt) VALUES ('2023-02-13 23:00', 1, 'late')")
    folder = os.lstat(home.raw_day(DAYS[0])).st_ino
    export_day(home, app_db, DAYS[0])
    info = os.lstat(home.raw_day(DAYS[0]))
    assert info.st_ino != folder and (info.st_mode & 0o7777) == 0o2750


def test_a_day_folder_holding_a_foreign_folder_is_refused_untouched(app_db, tmp_path):
    # a foreign folder cannot be carried into the swapped-in day (no hard link to a folder), and renaming
    # the changed files one by one beside it could leave a mixed day: the update is refused, nothing moves
    from pipelines.appdb.export import DayFolderRefused

    home = DataHome.at(tmp_path / "home")
    export_day(home, app_db, DAYS[0])
    (home.raw_day(DAYS[0]) / "operator-notes").mkdir()
    (home.raw_day(DAYS[0]) / "operator-notes" / "todo.txt").write_text("check the late clicks")
    before = _stats(home, DAYS[0])
    with psycopg.connect(app_db) as conn:
        conn.execute("INSERT INTO rankings (created_at, user_id, prompt) VALUES ('2023-02-13 23:00', 1, 'late')")
    with pytest.raises(DayFolderRefused, match="'operator-notes', which the export did not write"):
        export_day(home, app_db, DAYS[0])
    assert _stats(home, DAYS[0]) == before
    assert (home.raw_day(DAYS[0]) / "operator-notes" / "todo.txt").read_text() == "check the late clicks"
    assert [p.name for p in home.raw_logs.iterdir()] == [f"dt={DAYS[0]}"]


def test_the_blob_cap_is_the_homes_features_max_bytes_and_is_warned_about(app_db, tmp_path):
    home = DataHome.at(tmp_path / "home")
    home.root.mkdir(parents=True)
    (home.root / "pickapic.toml").write_text("[features]\nmax_bytes = 1000\n")
    store = tmp_path / "store"
    store.mkdir()
    with psycopg.connect(app_db) as conn:
        uid = conn.execute("SELECT image_uid FROM images WHERE created_at >= %s AND created_at < %s "
                           "ORDER BY image_id LIMIT 1", (DAYS[0], DAYS[1])).fetchone()[0]
    (store / f"{uid}.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(5000))
    report = export_day(home, app_db, DAYS[0], image_store=str(store))
    assert (report.blobs["too_large"], report.blobs["max_bytes"]) == (1, 1000)
    assert (home.raw_images / f"{uid}.png").stat().st_size == 1001
    assert any("larger than features.max_bytes (1000 bytes)" in w for w in report.warnings)
    again = export_day(home, app_db, DAYS[0], image_store=str(store))
    assert (again.blobs["present"], again.blobs["differs_in_store"], again.blobs["too_large"]) == (1, 0, 0)


def test_an_entry_added_during_the_swap_sends_the_folders_back_and_refuses(app_db, tmp_path, monkeypatch):
    # an operator's file landing in the day folder between the export's look at it and the swap would be
    # deleted with the old folder: the folders are swapped back, nothing is replaced, the file stays
    from pipelines.appdb.export import DayFolderRefused

    home = DataHome.at(tmp_path / "home")
    export_day(home, app_db, DAYS[0])
    (home.raw_day(DAYS[0]) / "NOTES.txt").write_text("carried")
    before = _stats(home, DAYS[0])
    real_exchange, calls = export_module.exchange, []

    def racing_exchange(first, second):
        if not calls:
            (home.raw_day(DAYS[0]) / "late-note.txt").write_text("written during the swap")
        calls.append(first)
        return real_exchange(first, second)

    monkeypatch.setattr(export_module, "exchange", racing_exchange)
    with psycopg.connect(app_db) as conn:
        conn.execute("INSERT INTO rankings (created_at, user_id, prompt) VALUES ('2023-02-13 23:00', 1, 'late')")
    with pytest.raises(DayFolderRefused, match="changed while the updated day was swapped in"):
        export_day(home, app_db, DAYS[0])
    assert len(calls) == 2 and _stats(home, DAYS[0]) == before
    assert sorted(p.name for p in home.raw_day(DAYS[0]).iterdir()) == sorted(
        ["NOTES.txt", "late-note.txt", *(f"{t}.jsonl.gz" for t in before)])
    assert [p.name for p in home.raw_logs.iterdir()] == [f"dt={DAYS[0]}"]
    monkeypatch.undo()
    assert export_day(home, app_db, DAYS[0]).changed_tables == ["rankings"]      # the next export carries both
    assert (home.raw_day(DAYS[0]) / "late-note.txt").read_text() == "written during the swap"
