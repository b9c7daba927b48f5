"""Hostile review (rev17) of the PostgreSQL app-database export: defects confirmed by running them.

Each test was a confirmed defect (filed as a strict xfail), fixed since. Every test that needs a server starts its own throwaway PostgreSQL
(``tests.postgres_server``) and stops it at the end of the session.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import gc
import gzip
import itertools
import os

import dagster as dg
import psycopg
import pytest

from dagster_project import automation
from dagster_project.definitions import defs
from dagster_project.resources import PickapicHome
from formats.home import DataHome
from pipelines.appdb.export import AppExportConfig, export_day
from tests.postgres_server import create_app_database, postgres_server  # noqa: F401 - fixture

_names = itertools.count()


def _app_db(server, encoding: str = "UTF8") -> str:
    """A new empty database holding the app's schema (``sql/app_db/schema.sql``); returns its DSN."""
    return create_app_database(server, f"rev17_{os.getpid()}_{next(_names)}", encoding)


def _lines(home: DataHome, day: str, table: str) -> list[str]:
    return gzip.decompress(home.raw_file(day, table).read_bytes()).decode("utf-8").splitlines()


# --- 1. the schedule's catch-up forgets every missed day past the first 31 ------------------------------

def _tick(instance, home: DataHome, when: dt.datetime) -> list[str]:
    result = automation.app_export_schedule.evaluate_tick(dg.build_schedule_context(
        instance=instance, scheduled_execution_time=when,
        resources={"data_home": PickapicHome(root=str(home.root))}, repository_def=defs.get_repository_def()))
    return [r.partition_key for r in result.run_requests]


def test_catch_up_after_a_long_outage_continues_on_the_next_night(monkeypatch, tmp_path):
    home = DataHome.at(tmp_path / "home")
    (tmp_path / "instance").mkdir()
    monkeypatch.setenv("PICKAPIC_APP_DB_DSN", "host=db dbname=app")
    monkeypatch.setenv("PICKAPIC_APP_EXPORT_LAG_MINUTES", "60")
    monkeypatch.setenv("PICKAPIC_APP_EXPORT_LOOKBACK_DAYS", "2")
    (home.raw_logs / "dt=2022-12-20").mkdir(parents=True)        # the last night before a ten-week outage
    with dg.instance_for_test(temp_dir=str(tmp_path / "instance")) as instance:
        first_night = _tick(instance, home, dt.datetime(2023, 3, 5, 1, 0, tzinfo=dt.timezone.utc))
        assert first_night[0] == "2022-12-21" and len(first_night) == automation.CATCH_UP_DAYS + 3
        for day in first_night:                                    # every run of that night succeeded
            (home.raw_logs / f"dt={day}").mkdir()
        second_night = _tick(instance, home, dt.datetime(2023, 3, 6, 1, 0, tzinfo=dt.timezone.utc))
        # the second night goes on with the missed days (2023-01-21 onwards), CATCH_UP_DAYS of them
        assert second_night[0] == "2023-01-21" and len(second_night) == automation.CATCH_UP_DAYS + 3
        for day in second_night:
            (home.raw_logs / f"dt={day}").mkdir(exist_ok=True)
        # 71 missed days at 31 a night: the third night requests the last 9, then only its window is left
        third_night = _tick(instance, home, dt.datetime(2023, 3, 7, 1, 0, tzinfo=dt.timezone.utc))
        assert third_night == [(dt.date(2023, 2, 21) + dt.timedelta(days=k)).isoformat() for k in range(9)] \
            + ["2023-03-04", "2023-03-05", "2023-03-06"]
        gc.collect()
    exported = {d.name[3:] for d in home.raw_logs.iterdir()} | set(third_night)
    day, never = dt.date(2022, 12, 21), []
    while day <= dt.date(2023, 3, 6):
        if day.isoformat() not in exported:
            never.append(day.isoformat())
        day += dt.timedelta(days=1)
    assert never == [], f"{len(never)} days never requested: {never[0]} .. {never[-1]}"


def test_a_day_whose_export_failed_is_requested_again_though_newer_days_exist(monkeypatch, tmp_path):
    home = DataHome.at(tmp_path / "home")
    (tmp_path / "instance").mkdir()
    monkeypatch.setenv("PICKAPIC_APP_DB_DSN", "host=db dbname=app")
    monkeypatch.setenv("PICKAPIC_APP_EXPORT_LAG_MINUTES", "60")
    monkeypatch.setenv("PICKAPIC_APP_EXPORT_LOOKBACK_DAYS", "2")
    for day in range(1, 26):                   # February's nights, but the export of the 10th failed every time
        if day != 10:
            (home.raw_logs / f"dt=2023-02-{day:02d}").mkdir(parents=True)
    with dg.instance_for_test(temp_dir=str(tmp_path / "instance")) as instance:
        night = _tick(instance, home, dt.datetime(2023, 2, 28, 1, 0, tzinfo=dt.timezone.utc))
        gc.collect()
    assert night == ["2023-02-10", "2023-02-25", "2023-02-26", "2023-02-27"]
    # a gap older than the horizon is left to `pickapic build --from-app-db`: the scan stays bounded
    assert automation.missing_days(home, "2024-03-10")[0] == \
        (dt.date(2024, 3, 10) - dt.timedelta(days=automation.CATCH_UP_HORIZON_DAYS)).isoformat()


# --- 2. a run of big rows after many small ones arrives in one fetch of 4,096 rows -------------------------

_PEAK = """
import resource, sys
from pathlib import Path
from formats.home import DataHome
from pipelines.appdb.export import AppExportConfig, export_day
export_day(DataHome.at(Path(sys.argv[2])), sys.argv[1], sys.argv[3], AppExportConfig(users_snapshot=False))
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""


def _export_peak(dsn: str, home, day: str) -> int:
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", _PEAK, dsn, str(home), day], cwd=repo, capture_output=True,
                          text=True, check=True)
    return int(done.stdout.split()[-1])


def test_big_prompts_after_many_small_rows_do_not_arrive_in_one_fetch(postgres_server, tmp_path):  # noqa: F811
    dsn = _app_db(postgres_server)
    day = "2023-02-13"
    with psycopg.connect(dsn) as conn:
        conn.execute("INSERT INTO rankings (ranking_id, created_at, user_id, prompt) SELECT g, "
                     "'2023-02-13 12:00', 1, 'short prompt ' || g FROM generate_series(1, 4080) g")
    baseline = _export_peak(dsn, tmp_path / "base", day)
    with psycopg.connect(dsn) as conn:
        conn.execute("INSERT INTO rankings (ranking_id, created_at, user_id, prompt) SELECT g, "
                     "'2023-02-13 12:00', 1, repeat(md5(g::text), 1024) FROM generate_series(4081, 8176) g")
    peak = _export_peak(dsn, tmp_path / "big", day)
    grew = (peak - baseline) >> 20
    # about BATCH_BYTES (4 MiB) of lines a fetch: a few such fetches in flight, not the whole run at once
    assert grew < 32, f"peak RSS grew by {grew} MiB for 4,096 rows of 32 KiB (128 MiB) read after 4,080 short ones"


# --- 3. the staging folder takes the umask's group write bit and its files are opened through links -------

def test_a_link_planted_in_the_staging_folder_is_never_written_through(postgres_server, tmp_path,  # noqa: F811
                                                                         monkeypatch):
    from pipelines.appdb import export as export_module

    dsn = _app_db(postgres_server)
    with psycopg.connect(dsn) as conn:
        conn.execute("INSERT INTO downloads (created_at, user_id, image_uid, prompt) "
                     "VALUES ('2023-02-13 12:00', 1, 'u', 'p')")
    victim = tmp_path / "exporter-account" / "authorized_keys"      # a file of the export's account
    victim.parent.mkdir()
    victim.write_text("ssh-ed25519 AAAA... operator\n")
    home = DataHome.at(tmp_path / "home")
    home.raw_logs.mkdir(parents=True)
    real = export_module._write_table
    seen_modes = []

    def racing(conn, table, params, path, *args, **kwargs):
        if table == "downloads":       # another member of the home's group, watching raw/app_logs (inotify)
            seen_modes.append(os.stat(path.parent).st_mode & 0o777)
            if os.stat(path.parent).st_mode & 0o020:       # the staging folder lets the group write into it
                os.symlink(victim, path)
        return real(conn, table, params, path, *args, **kwargs)

    monkeypatch.setattr(export_module, "_write_table", racing)
    old_umask = os.umask(0o002)          # a group-shared data home (the README's 2750 / group carry-over)
    try:
        with contextlib.suppress(Exception):   # refusing the planted link is a fine outcome
            export_day(home, dsn, "2023-02-13")
    finally:
        os.umask(old_umask)
    assert victim.read_bytes() == b"ssh-ed25519 AAAA... operator\n", \
        f"the export wrote through a link planted in its staging folder (mode {oct(seen_modes[0])})"
    day_file = home.raw_file("2023-02-13", "downloads")
    assert not day_file.is_symlink()
    assert seen_modes == [0o700]                               # private while the export writes
    assert os.stat(home.raw_day("2023-02-13")).st_mode & 0o777 == 0o775   # published as mkdir would have made it

    # a link that gets there anyway (another process of the export's own account): refused, not written through
    def planting(conn, table, params, path, *args, **kwargs):
        if table == "downloads":
            os.symlink(victim, path)
        return real(conn, table, params, path, *args, **kwargs)

    monkeypatch.setattr(export_module, "_write_table", planting)
    with psycopg.connect(dsn) as conn:
        conn.execute("INSERT INTO downloads (created_at, user_id, image_uid, prompt) "
                     "VALUES ('2023-02-14 12:00', 1, 'u', 'p')")
    with pytest.raises(FileExistsError):
        export_day(home, dsn, "2023-02-14")
    assert victim.read_bytes() == b"ssh-ed25519 AAAA... operator\n"
    assert not os.path.lexists(home.raw_day("2023-02-14"))

    # an update of a day keeps the day folder's own mode (an operator's 0750 stays), once swapped in
    monkeypatch.setattr(export_module, "_write_table", real)
    os.chmod(home.raw_day("2023-02-13"), 0o750)
    with psycopg.connect(dsn) as conn:
        conn.execute("INSERT INTO downloads (created_at, user_id, image_uid, prompt) "
                     "VALUES ('2023-02-13 13:00', 2, 'v', 'q')")
    assert export_day(home, dsn, "2023-02-13").published == "updated"
    assert os.stat(home.raw_day("2023-02-13")).st_mode & 0o777 == 0o750


# --- 4. an undated row whose primary key is NULL fails every export --------------------------------------

def test_an_undated_row_with_a_null_id_is_reported_not_a_crash(postgres_server, tmp_path):  # noqa: F811
    dsn = _app_db(postgres_server)
    with psycopg.connect(dsn) as conn:
        conn.execute("ALTER TABLE images DROP CONSTRAINT images_pkey")
        conn.execute("ALTER TABLE images ALTER COLUMN image_id DROP NOT NULL, ALTER COLUMN created_at DROP NOT NULL")
        conn.execute("INSERT INTO images (image_id, created_at, image_uid) VALUES (NULL, NULL, 'undated')")
        conn.execute("INSERT INTO images (image_id, created_at, image_uid) VALUES (7, '2023-02-13 10:00', 'dated')")
    home = DataHome.at(tmp_path / "home")
    report = export_day(home, dsn, "2023-02-13")
    assert report.tables["images"].rows == 1 and report.undated["images"]["rows"] == 1
    assert any("images: 1 (ids NULL)" in warning for warning in report.warnings), report.warnings
    from pipelines.appdb.export import app_days

    found = app_days(dsn)           # what every build's day listing reads: the same warning, no TypeError
    assert found.days == ["2023-02-13"] and "images: 1 (ids NULL)" in found.warning()


# --- 5. a table rewritten during the export is read empty from the export's snapshot -----------------------

def test_a_table_rewritten_while_the_day_is_exported_does_not_read_empty(postgres_server, tmp_path,  # noqa: F811
                                                                         monkeypatch):
    import threading
    import time

    from pipelines.appdb import export as export_module
    from pipelines.appdb.export import TablesLocked

    dsn = _app_db(postgres_server)
    with psycopg.connect(dsn) as conn:
        conn.execute("INSERT INTO downloads (created_at, user_id, image_uid, prompt) SELECT '2023-02-13 12:00', g, "
                     "'u' || g, 'p' FROM generate_series(1, 50) g")
    real = export_module._write_table
    migration: dict = {}

    def migrate() -> None:
        try:
            with psycopg.connect(dsn, autocommit=True) as other:
                other.execute("SET lock_timeout = '60s'")
                other.execute("ALTER TABLE downloads ALTER COLUMN user_id TYPE bigint")
            migration["done_at"] = time.monotonic()
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            migration["error"] = exc

    def migrating(conn, table, params, path, *args, **kwargs):
        if table == "downloads":         # the DBA's migration lands while users/images/rankings were written
            migration["thread"] = threading.Thread(target=migrate)
            migration["thread"].start()
            with psycopg.connect(dsn, autocommit=True) as probe:     # until the ALTER waits for its lock
                for _ in range(200):
                    if probe.execute("SELECT count(*) FROM pg_locks WHERE NOT granted").fetchone()[0]:
                        break
                    time.sleep(0.05)
                else:
                    raise AssertionError("the migration never waited for the export's lock")
        return real(conn, table, params, path, *args, **kwargs)

    monkeypatch.setattr(export_module, "_write_table", migrating)
    home = DataHome.at(tmp_path / "home")
    report = export_day(home, dsn, "2023-02-13")
    finished = time.monotonic()
    migration["thread"].join(60)
    assert report.tables["downloads"].rows == 50, "the day was published with its downloads silently lost"
    assert len(_lines(home, "2023-02-13", "downloads")) == 50
    # the migration waited for the export's snapshot to be read, then went through
    assert "error" not in migration and migration["done_at"] >= finished - 1.0, migration
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT format_type(atttypid, NULL) FROM pg_attribute WHERE attrelid = "
                            "'downloads'::regclass AND attname = 'user_id'").fetchone()[0] == "bigint"

    # a migration holding its lock when the export starts: the export waits lock_timeout, then says why
    monkeypatch.setattr(export_module, "_write_table", real)
    with psycopg.connect(postgres_server.dsn(password="postgres"), autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]}" SET lock_timeout = 300')
    with psycopg.connect(dsn) as holder:
        holder.execute("LOCK TABLE rankings IN ACCESS EXCLUSIVE MODE")
        with pytest.raises(TablesLocked, match="could not be locked .* lock_timeout = 300ms"):
            export_day(home, dsn, "2023-02-14")
    assert not home.raw_day("2023-02-14").exists()


# --- 6. the blob step reads every image uid whole, 256 at a time ------------------------------------------

_PEAK_STORE = """
import resource, sys
from pathlib import Path
from formats.home import DataHome
from pipelines.appdb.export import AppExportConfig, export_day
report = export_day(DataHome.at(Path(sys.argv[2])), sys.argv[1], sys.argv[3], AppExportConfig(users_snapshot=False),
                    image_store=sys.argv[4])
print(report.blobs.get("invalid_uid"), report.blobs.get("copied"), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""


def test_huge_image_uids_do_not_grow_the_blob_steps_memory(postgres_server, tmp_path):  # noqa: F811
    import subprocess
    import sys
    from pathlib import Path

    dsn = _app_db(postgres_server)
    with psycopg.connect(dsn) as conn:
        conn.execute("ALTER TABLE images DROP CONSTRAINT images_image_uid_key")
        conn.execute("INSERT INTO images (created_at, image_uid, user_id, prompt) SELECT '2023-02-13 12:00', "
                     "g || repeat('-', 8 << 20), 1, 'p' FROM generate_series(1, 24) g")
        conn.execute("INSERT INTO images (created_at, image_uid, user_id, prompt) VALUES ('2023-02-13 12:00', "
                     "'12345678-1234-1234-1234-123456789abc', 1, 'p')")
    store = tmp_path / "store"
    store.mkdir()
    (store / "12345678-1234-1234-1234-123456789abc.png").write_bytes(b"png")   # the one real uid's blob
    repo = Path(__file__).resolve().parents[2]

    def peak(home: str, image_store: str) -> tuple[str, str, int]:
        done = subprocess.run([sys.executable, "-c", _PEAK_STORE, dsn, str(tmp_path / home), "2023-02-13",
                               image_store], cwd=repo, capture_output=True, text=True, check=True)
        invalid, copied, rss = done.stdout.split()[-3:]
        return invalid, copied, int(rss)

    _, _, without_store = peak("a", "")
    invalid, copied, with_store = peak("b", str(store))
    assert invalid == "24"                       # every huge uid is counted as not a UUID, as it should be
    assert copied == "1"                         # and the day's real uid is still copied
    grew = (with_store - without_store) >> 20
    assert grew < 96, f"reading the day's 24 image uids for the blob copy took {grew} MiB more"


# --- 7. a row committed after the lookback window never reaches the raw zone, unseen ----------------------

def test_a_row_committed_after_the_lookback_window_is_exported_or_reported(postgres_server, monkeypatch,  # noqa: F811
                                                                          tmp_path):
    dsn = _app_db(postgres_server)
    with psycopg.connect(dsn) as conn:
        for day in ("2023-03-01", "2023-03-02", "2023-03-03", "2023-03-04", "2023-03-05"):
            conn.execute("INSERT INTO rankings (created_at, user_id, prompt) VALUES (%s, 1, 'on time')",
                         (f"{day} 12:00",))
    home = DataHome.at(tmp_path / "home")
    (tmp_path / "instance").mkdir()
    monkeypatch.setenv("PICKAPIC_APP_DB_DSN", dsn)
    monkeypatch.setenv("PICKAPIC_APP_EXPORT_LAG_MINUTES", "60")
    monkeypatch.setenv("PICKAPIC_APP_EXPORT_LOOKBACK_DAYS", "2")
    warnings: list[str] = []
    requested: dict[int, list[str]] = {}

    def night(when: dt.datetime) -> None:
        with dg.instance_for_test(temp_dir=str(tmp_path / "instance")) as instance:
            days = requested[when.day] = _tick(instance, home, when)
            gc.collect()
        for day in days:                                          # what each requested app_export run does
            warnings.extend(export_day(home, dsn, day, AppExportConfig(lag_minutes=60, lookback_days=2)).warnings)

    for date in (3, 4):            # the nights whose window holds 2023-03-01 (the 4th's is 03-01 .. 03-03)
        night(dt.datetime(2023, 3, date, 1, 0, tzinfo=dt.timezone.utc))
    with psycopg.connect(dsn) as conn:    # then an offline client syncs a ranking it made on 03-01
        conn.execute("INSERT INTO rankings (created_at, user_id, prompt) VALUES ('2023-03-01 18:00', 2, 'late')")
    for date in (5, 6, 7, 8):
        night(dt.datetime(2023, 3, date, 1, 0, tzinfo=dt.timezone.utc))
    exported = any('"late"' in line for line in _lines(home, "2023-03-01", "rankings"))
    assert exported or any("2023-03-01" in warning for warning in warnings), \
        "the late ranking of 2023-03-01 is in the app database only, and nothing said so"
    # the night of the 5th found it (the export of 03-04 checks the days before its window) and said so ...
    (warning,) = [w for w in warnings if "committed after their day was last exported" in w]
    assert "2023-03-01: rankings 2 rows (max id 6) in the database, 1 (max id 1) in the raw zone" in warning
    # ... the next night re-exported the day, once: the raw zone holds the late ranking now
    assert requested[6][0] == "2023-03-01" and all("2023-03-01" not in requested[d] for d in (5, 7, 8))
    assert exported and len(_lines(home, "2023-03-01", "rankings")) == 2


# --- 8. the export cuts lines at the home file's ingest limit, not the build's ------------------------------

def test_the_export_cuts_lines_at_the_builds_ingest_limit(postgres_server, monkeypatch, tmp_path):  # noqa: F811
    import json

    from dagster_project.cli import main

    dsn = _app_db(postgres_server)
    with psycopg.connect(dsn) as conn:
        conn.execute("INSERT INTO rankings (created_at, user_id, prompt) "
                     "VALUES ('2023-02-13 10:00', 1, repeat('x', 2000000))")
        conn.execute("INSERT INTO images (created_at, image_uid, user_id, prompt) VALUES ('2023-02-13 10:00', "
                     "'12345678-1234-1234-1234-123456789abc', 1, 'p')")
    store = tmp_path / "store"
    store.mkdir()
    (store / "12345678-1234-1234-1234-123456789abc.png").write_bytes(b"p" * 5000)
    monkeypatch.setenv("PICKAPIC_APP_DB_DSN", dsn)
    monkeypatch.setenv("PICKAPIC_APP_IMAGE_STORE", str(store))
    home = DataHome.at(tmp_path / "home")
    for variable in ("DAGSTER_HOME", "PICKAPIC_HOME"):    # the build points both at the home: undone afterwards
        monkeypatch.setenv(variable, str(tmp_path))
    # the later stages may fail on this one-row app (no moderation lists): only the export and ingest matter here
    main(["build", "--home", str(home.root), "--from-app-db", "--from", "2023-02-13", "--to", "2023-02-13",
          "--set", "ingest.max_line_bytes=4194304", "--set", "features.max_bytes=1000"])
    (line,) = _lines(home, "2023-02-13", "rankings")
    assert len(line) > 2_000_000, f"the raw line was cut to {len(line)} bytes, under the build's 4 MiB ingest limit"
    assert json.loads(line)["prompt"] == "x" * 2_000_000
    # and the blob copy stops at the build's features.max_bytes + 1, not at the home's 64 MiB
    assert home.raw_images.joinpath("12345678-1234-1234-1234-123456789abc.png").stat().st_size == 1001


# --- 9. a domain over text (a CHECK on emails) stops every export ----------------------------------------

def test_a_domain_over_text_is_read_as_text(postgres_server, tmp_path):  # noqa: F811
    dsn = _app_db(postgres_server)
    with psycopg.connect(dsn) as conn:
        conn.execute("CREATE DOMAIN email_t AS text CHECK (VALUE LIKE '%@%')")
        conn.execute("ALTER TABLE users ALTER COLUMN email TYPE email_t")
        conn.execute("INSERT INTO users VALUES (1, '2023-02-13 09:00', 'a@example.org', 'A')")
    home = DataHome.at(tmp_path / "home")
    report = export_day(home, dsn, "2023-02-13")
    assert report.tables["users"].rows == 1
    assert '"email": "a@example.org"' in _lines(home, "2023-02-13", "users")[0]
    with psycopg.connect(dsn) as conn:     # a domain over that domain is still text underneath
        conn.execute("CREATE DOMAIN work_email_t AS email_t CHECK (VALUE LIKE '%.org')")
        conn.execute("ALTER TABLE users ALTER COLUMN email TYPE work_email_t")
    assert export_day(home, dsn, "2023-02-13").tables["users"].rows == 1
    with psycopg.connect(dsn) as conn:     # a domain over a type the column cannot be is still refused, by its base
        conn.execute("CREATE DOMAIN count_t AS integer")
        conn.execute("ALTER TABLE users ALTER COLUMN name TYPE count_t USING NULL")
    from pipelines.appdb.tables import AppSchemaError

    with pytest.raises(AppSchemaError, match="column 'name' has type 'integer'"):
        export_day(home, dsn, "2023-02-13")
