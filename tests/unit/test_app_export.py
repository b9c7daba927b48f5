"""The app-database export against a real throwaway PostgreSQL server: format, idempotence, late rows, errors."""
from __future__ import annotations

import datetime as dt
import gc
import gzip
import json
import os

import dagster as dg
import psycopg
import pyarrow.parquet as pq
import pytest

from dagster_project import automation
from dagster_project.definitions import defs
from dagster_project.resources import PickapicHome
from formats import rawlines
from formats.home import DataHome
from pipelines.appdb.connection import AppDatabaseError, Unconvertible, connect, convert_values, server_name
from pipelines.appdb.export import AppExportConfig, ExportTooEarly, export_day, format_row
from pipelines.appdb.tables import AppSchemaError
from pipelines.ingest import parse as rp
from pipelines.ingest.day import ingest_day
from simulator import SimConfig, simulate
from simulator.appdb_sink import AppDatabaseSink
from tests.postgres_server import create_database, postgres_server  # noqa: F401 - fixture

DAYS = ("2023-02-13", "2023-02-14")
CONFIG = SimConfig(days=2, users=14, rankings_per_day=40, seed=9, no_images=True, export_defects=False)
BY_DAY = AppExportConfig(users_snapshot=False)
_counter = iter(range(10**6))


def _parser(table: str) -> rp.LineParser:
    return rp.LineParser(table, max_id=2**53, max_prompt_chars=2000, max_name_chars=256, gs_range=(0.0, 50.0),
                         ts_range=(dt.datetime(2022, 1, 1), dt.datetime(2030, 1, 1)))


@pytest.fixture(scope="module")
def simulated_template(postgres_server, tmp_path_factory):  # noqa: F811 - pytest fixture injection
    """A database holding the simulated history (export defects off), simulated once per module."""
    name = f"template_{os.getpid()}"
    simulate(DataHome.at(tmp_path_factory.mktemp("sim")), CONFIG,
             sink=AppDatabaseSink(create_database(postgres_server, name), None))
    return name


@pytest.fixture
def app_db(postgres_server, simulated_template):  # noqa: F811
    """A fresh copy of the simulated app database (tests may change it), and its DSN."""
    name = f"app{next(_counter)}_{os.getpid()}"
    with psycopg.connect(postgres_server.dsn(password="postgres"), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{simulated_template}"')
    return postgres_server.dsn(name, password="postgres")


def _files(home: DataHome, day: str) -> dict[str, bytes]:
    return {t: home.raw_file(day, t).read_bytes() for t in ("users", "images", "rankings", "downloads")}


def _stats(home: DataHome, day: str) -> dict[str, tuple[int, int]]:
    return {t: (home.raw_file(day, t).stat().st_ino, home.raw_file(day, t).stat().st_mtime_ns)
            for t in ("users", "images", "rankings", "downloads")}


def _sensor_keys(home: DataHome) -> dict[str, str]:
    """The raw-day sensor's run key per day, seen by a new instance (a key follows the day's content)."""
    folder = home.root.parent / f"dagster-{next(_counter)}"
    folder.mkdir()
    with dg.instance_for_test(temp_dir=str(folder)) as instance:
        context = dg.build_sensor_context(instance=instance, instance_ref=instance.get_ref(),
                                          resources={"data_home": PickapicHome(root=str(home.root))},
                                          repository_def=defs.get_repository_def())
        result = automation.raw_partition_sensor.evaluate_tick(context)
        del context
        gc.collect()   # close the instance the sensor context opened from the ref while this one is current
    return {r.partition_key: r.run_key for r in result.run_requests}


# --- the line format, without a server ----------------------------------------------------------

def test_lines_keep_the_simulator_format_and_write_null_for_sql_null():
    line = rawlines.image_line(7, "2023-02-13 00:00:01.000000", "u", 3, rawlines.jstr("a [single_quote] b"),
                               "null", None, 7.5, None, 0, 1, None, "m")
    assert line == ('{"image_id": 7, "created_at": "2023-02-13 00:00:01.000000", "image_uid": "u", "user_id": 3, '
                    '"prompt": "a [single_quote] b", "negative_prompt": null, "seed": null, "gs": 7.5, "steps": null, '
                    '"idx": 0, "num_generated": 1, "scheduler_cls": null, "model_id": "m"}')
    assert json.loads(rawlines.user_line(1, "t", 'say "hi"\\', None))["email"] == 'say "hi"\\'
    assert '"gs": NaN' in rawlines.image_line(1, "t", "u", 1, "null", "null", 1, float("nan"), 1, 0, 1, "s", "m")


def test_text_json_cannot_carry_reaches_the_ingest_as_a_quarantined_line():
    uid = "0b6c3c40-6b0f-4c5e-9a7e-3d8a3b1e2f10"
    row = [5, b"2023-02-13 10:00:00.000000", 2, uid.encode(), uid.replace("0b", "1c").encode(), None, None, b"none"]
    bad_bytes = format_row("rankings", [*row, b"a cat \xff\xed\xa0\x80 on a mat"])
    assert b"\xff\xed\xa0\x80" in bad_bytes  # the raw bytes, not a replacement character
    with pytest.raises(rp.Reject) as rejected:
        _parser("rankings").parse(bad_bytes)
    assert rejected.value.reason == rp.INVALID_UTF8
    nul = format_row("rankings", [*row, "a cat\x00 on a mat".encode()])
    assert b"\\u0000" in nul
    with pytest.raises(rp.Reject) as rejected:
        _parser("rankings").parse(nul)
    assert rejected.value.reason == rp.CONTROL_CHARACTERS
    assert _parser("rankings").parse(format_row("rankings", [*row, b"caf\xc3\xa9 [single_quote]"]))[-1] == \
        "caf\u00e9 [single_quote]"


def test_a_dsn_that_does_not_parse_is_refused_without_quoting_it():
    with pytest.raises(AppDatabaseError) as error:
        server_name("host=db port=5432 dbname=app passwordhunter2-secret")
    assert "hunter2" not in str(error.value)


# --- against the server -----------------------------------------------------------------------

def test_export_gives_the_simulator_files_byte_for_byte(app_db, tmp_path):
    files, exported = DataHome.at(tmp_path / "files"), DataHome.at(tmp_path / "db")
    simulate(files, CONFIG)
    for day in DAYS:
        report = export_day(exported, app_db, day, BY_DAY)
        assert report.published == "new day"
        assert _files(exported, day) == _files(files, day)
    snapshot = DataHome.at(tmp_path / "snapshot")
    export_day(snapshot, app_db, DAYS[1])
    users = [json.loads(x) for x in gzip.decompress(snapshot.raw_file(DAYS[1], "users").read_bytes())
             .decode().splitlines()]
    expected = [json.loads(x) for day in DAYS for x in gzip.decompress(
        files.raw_file(day, "users").read_bytes()).decode().splitlines()]
    assert users == expected  # the snapshot: every account created up to the day's end, by user_id


def test_reexport_is_idempotent_and_a_late_row_makes_the_sensor_reingest(app_db, tmp_path):
    home = DataHome.at(tmp_path / "home")
    for day in DAYS:
        export_day(home, app_db, day)
    before, keys = _stats(home, DAYS[0]), _sensor_keys(home)
    assert set(keys) == set(DAYS)

    again = export_day(home, app_db, DAYS[0])
    assert again.published == "unchanged" and again.changed_tables == []
    assert _stats(home, DAYS[0]) == before  # same inodes and mtimes: nothing rewritten
    assert _sensor_keys(home) == keys       # so the raw-day sensor does not fire
    assert not [p for p in home.raw_logs.iterdir() if p.name.startswith(".")]  # staging removed

    with psycopg.connect(app_db) as conn:  # a click committed after the day was exported
        uids = conn.execute("SELECT image_uid FROM images WHERE created_at < %s ORDER BY image_id LIMIT 2",
                            (DAYS[1],)).fetchall()
        conn.execute("INSERT INTO rankings (created_at, user_id, image_0_uid, image_1_uid, best_image_uid, prompt) "
                     "VALUES ('2023-02-13 23:59:59.5', 1, %s, %s, 'none', 'a late tie')", (uids[0][0], uids[1][0]))
    late = export_day(home, app_db, DAYS[0])
    assert late.published == "updated" and late.changed_tables == ["rankings"]
    after = _stats(home, DAYS[0])
    assert {t: after[t] == before[t] for t in after} == {"users": True, "images": True, "rankings": False,
                                                         "downloads": True}
    new_keys = _sensor_keys(home)
    assert new_keys[DAYS[0]] != keys[DAYS[0]] and new_keys[DAYS[1]] == keys[DAYS[1]]
    report = ingest_day(home, DAYS[0])
    assert report.reconciled
    assert b"a late tie" in gzip.decompress(home.raw_file(DAYS[0], "rankings").read_bytes())


def test_a_day_is_not_exported_before_its_lag_has_passed(app_db, tmp_path):
    home = DataHome.at(tmp_path / "home")
    ended = dt.datetime(2023, 2, 14, 0, 30, tzinfo=dt.timezone.utc)  # day one ended 30 minutes ago
    with pytest.raises(ExportTooEarly, match="2023-02-13 is still open for late commits until 2023-02-14 01:00"):
        export_day(home, app_db, DAYS[0], AppExportConfig(lag_minutes=60), now=ended)
    assert not home.raw.exists()
    assert export_day(home, app_db, DAYS[0], AppExportConfig(lag_minutes=20), now=ended).published == "new day"


def test_unreachable_database_and_refused_login_name_the_server_never_the_password(postgres_server, tmp_path):  # noqa: F811
    home = DataHome.at(tmp_path / "home")
    secret = f"pw-{os.getpid()}-unreachable-7f3a"
    with pytest.raises(AppDatabaseError) as error:
        export_day(home, f"host=127.0.0.1 port=1 dbname=appdb user=export password={secret} connect_timeout=3",
                   DAYS[0], source="$PICKAPIC_APP_DB_DSN")
    message = str(error.value)
    assert "'127.0.0.1'" in message and "port 1" in message and "'appdb'" in message and secret not in message
    assert "$PICKAPIC_APP_DB_DSN" in message and error.value.__cause__ is None

    secret = f"pw-{os.getpid()}-refused-{next(_counter)}"
    dsn = create_database(postgres_server, f"auth{next(_counter)}", owner_password="right-" + secret)
    wrong = dsn.replace("right-" + secret, secret)
    with pytest.raises(AppDatabaseError) as error:
        export_day(home, wrong, DAYS[0])
    message = str(error.value)
    assert "password authentication failed" in message and str(postgres_server.port) in message
    assert secret not in message and "auth" in message
    assert not home.raw.exists()  # nothing written


def test_a_missing_column_or_unexpected_type_fails_naming_table_column_and_type(app_db, tmp_path):
    home = DataHome.at(tmp_path / "home")
    with psycopg.connect(app_db, autocommit=True) as conn:
        conn.execute("ALTER TABLE rankings ALTER COLUMN best_image_uid TYPE integer USING 0")
    with pytest.raises(AppSchemaError, match="'rankings'.*'best_image_uid' has type 'integer', expected type text"):
        export_day(home, app_db, DAYS[0])
    with psycopg.connect(app_db, autocommit=True) as conn:
        conn.execute("ALTER TABLE rankings ALTER COLUMN best_image_uid TYPE text")
        conn.execute("ALTER TABLE images DROP COLUMN gs")
    with pytest.raises(AppSchemaError, match="'images'.*no column 'gs' \\(expected type float"):
        export_day(home, app_db, DAYS[0])
    assert not home.raw.exists()


def test_bytes_a_sql_ascii_database_holds_are_quarantined_by_the_ingest(postgres_server, tmp_path):  # noqa: F811
    dsn = create_database(postgres_server, f"ascii{next(_counter)}", encoding="SQL_ASCII")
    simulate(DataHome.at(tmp_path / "sim"), CONFIG, sink=AppDatabaseSink(dsn, None))
    with psycopg.connect(dsn) as conn:
        first, second = conn.execute("SELECT ranking_id FROM rankings WHERE created_at < %s ORDER BY ranking_id "
                                     "LIMIT 2", (DAYS[1],)).fetchall()
        conn.execute("UPDATE rankings SET prompt = convert_from('\\x61ff62'::bytea, 'SQL_ASCII') WHERE ranking_id = %s",
                     first)
        conn.execute("UPDATE rankings SET prompt = 'tab' || chr(9) || 'bed' WHERE ranking_id = %s", second)
    home = DataHome.at(tmp_path / "home")
    export_day(home, dsn, DAYS[0])
    ingest_day(home, DAYS[0])
    quarantine = pq.read_table(home.partition_file("quarantine", DAYS[0])).to_pylist()
    reasons = {(q["table"], q["reason"]) for q in quarantine}
    assert ("rankings", rp.INVALID_UTF8) in reasons and ("rankings", rp.CONTROL_CHARACTERS) in reasons
    kept = pq.read_table(home.partition_file("rankings", DAYS[0]), columns=["ranking_id"]).column(0).to_pylist()
    assert first[0] not in kept and second[0] not in kept


def _lines_by_id(home: DataHome, day: str, table: str) -> dict[int, bytes]:
    with gzip.open(home.raw_file(day, table)) as handle:
        return {json.loads(line.decode("utf-8"))[f"{table[:-1]}_id"]: line for line in handle.read().splitlines()}


def test_text_a_win1252_database_has_no_utf8_for_is_quarantined_and_the_day_goes_on(
        app_db, postgres_server, tmp_path):  # noqa: F811
    # The same simulated history in a UTF8 database (app_db) and a WIN1252 one; in both, ranking 2 and
    # download 1 get text WIN1252 converts ('café €': bytes E9 and 80); in the WIN1252 one, ranking 1 (the
    # same fetch as ranking 2: more fetches follow it) and download 2 get bytes WIN1252 leaves undefined.
    dsn = create_database(postgres_server, f"win{next(_counter)}", encoding="WIN1252")
    simulate(DataHome.at(tmp_path / "sim"), CONFIG, sink=AppDatabaseSink(dsn, None))
    ranking_ids = {}
    for target in (app_db, dsn):
        with psycopg.connect(target) as conn:
            ranking_ids[target] = [i for (i,) in conn.execute(
                "SELECT ranking_id FROM rankings WHERE created_at < %s ORDER BY ranking_id LIMIT 2", (DAYS[1],))]
            download_ids = [i for (i,) in conn.execute(
                "SELECT download_id FROM downloads WHERE created_at < %s ORDER BY download_id LIMIT 2", (DAYS[1],))]
            conn.execute("UPDATE rankings SET prompt = 'caf\u00e9 \u20ac' WHERE ranking_id = %s",
                         (ranking_ids[target][1],))
            conn.execute("UPDATE downloads SET prompt = 'caf\u00e9 \u20ac' WHERE download_id = %s",
                         (download_ids[0],))
    assert ranking_ids[app_db] == ranking_ids[dsn]
    first, second = ranking_ids[dsn]
    with psycopg.connect(dsn) as conn:
        # bytes in the database's own encoding are stored as they are (WIN1252 takes any byte but NUL)
        conn.execute("UPDATE rankings SET prompt = convert_from('\\x63616ee9812081'::bytea, 'WIN1252') "
                     "WHERE ranking_id = %s", (first,))
        conn.execute("UPDATE downloads SET prompt = convert_from('\\x8d8f909d'::bytea, 'WIN1252') "
                     "WHERE download_id = %s", (download_ids[1],))
    utf8_home, home = DataHome.at(tmp_path / "utf8"), DataHome.at(tmp_path / "home")
    export_day(utf8_home, app_db, DAYS[0], BY_DAY)
    report = export_day(home, dsn, DAYS[0], BY_DAY)   # failed whole before: 0x81 has no equivalent in UTF8

    assert report.unconvertible == {"rankings": {"rows": 1, "first_ids": [str(first)]},
                                    "downloads": {"rows": 1, "first_ids": [str(download_ids[1])]}}
    assert "has no UTF-8 equivalent" in "\n".join(report.warnings) and report.metadata()["unconvertible_rows"] == 2
    # Every other line is what the UTF8 database gives (converted by the server, 'café €' included);
    # the bad ones carry the stored bytes as \udcXX escapes.
    for table, bad in (("rankings", first), ("downloads", download_ids[1])):
        mine, theirs = _lines_by_id(home, DAYS[0], table), _lines_by_id(utf8_home, DAYS[0], table)
        assert mine.keys() == theirs.keys() and report.tables[table].rows == len(mine)
        assert {i: line for i, line in mine.items() if i != bad} == {i: line for i, line in theirs.items() if i != bad}
    assert b'"prompt": "can\\udce9\\udc81 \\udc81"' in _lines_by_id(home, DAYS[0], "rankings")[first]
    assert b'"prompt": "caf\\u00e9 \\u20ac"' in _lines_by_id(home, DAYS[0], "rankings")[second]
    assert b'"prompt": "\\udc8d\\udc8f\\udc90\\udc9d"' in _lines_by_id(home, DAYS[0], "downloads")[download_ids[1]]

    # The ingest quarantines exactly those rows, with the reason; the counts reconcile.
    ingest_day(home, DAYS[0])
    quarantine = pq.read_table(home.partition_file("quarantine", DAYS[0])).to_pylist()
    utf8 = [(q["table"], q["detail"], json.loads(q["raw_text"])[f"{q['table'][:-1]}_id"])
            for q in quarantine if q["reason"] == rp.INVALID_UTF8]
    assert sorted(utf8) == [("downloads", "prompt holds a lone surrogate escape", download_ids[1]),
                            ("rankings", "prompt holds a lone surrogate escape", first)]
    for table in ("rankings", "downloads"):
        kept = pq.read_table(home.partition_file(table, DAYS[0])).num_rows
        held = sum(q["line_count"] for q in quarantine if q["table"] == table)
        assert kept + held == report.tables[table].rows


def test_the_server_converts_values_and_names_each_one_it_cannot(postgres_server):  # noqa: F811
    dsn = create_database(postgres_server, f"win{next(_counter)}", encoding="WIN1252")
    values = [b"caf\xe9", b"a \x81 b", b"\x80 ok", *[b"x%d\xe9" % i for i in range(40)], b"\x8d", b"\xe9\x90"]
    conn = connect(dsn)
    try:
        converted = convert_values(conn, "WIN1252", values)
        assert conn.execute("SELECT 1").fetchone() == (1,)   # the transaction is still usable
    finally:
        conn.close()
    assert converted[:3] == [b"caf\xc3\xa9", "a \udc81 b", "\u20ac ok".encode()]
    assert converted[3:-2] == ["x%d\u00e9".encode() % i for i in range(40)]
    assert converted[-2:] == ["\udc8d", "\udce9\udc90"]
    assert [type(v) is Unconvertible for v in converted] == [False, True, *[False] * 41, True, True]


def test_simulating_into_a_database_that_holds_rows_is_refused(app_db, tmp_path):
    with pytest.raises(ValueError, match="already holds .* rows"):
        AppDatabaseSink(app_db, None)


def test_export_schedule_requests_the_newest_closed_day_and_the_lookback_days(monkeypatch, tmp_path):
    from formats.settings import write_settings

    home = DataHome.at(tmp_path / "home")
    (tmp_path / "instance").mkdir()  # not tmp_path/dagster: tmp_path would look like a home holding ./home
    with dg.instance_for_test(temp_dir=str(tmp_path / "instance")) as instance:
        def tick():
            return automation.app_export_schedule.evaluate_tick(dg.build_schedule_context(
                instance=instance, scheduled_execution_time=dt.datetime(2023, 3, 5, 1, 0, tzinfo=dt.timezone.utc),
                resources={"data_home": PickapicHome(root=str(home.root))}, repository_def=defs.get_repository_def()))

        monkeypatch.delenv("PICKAPIC_APP_DB_DSN", raising=False)
        assert "PICKAPIC_APP_DB_DSN is not set" in tick().skip_message
        monkeypatch.setenv("PICKAPIC_APP_DB_DSN", "host=db dbname=app")
        monkeypatch.setenv("PICKAPIC_APP_EXPORT_LAG_MINUTES", "90")
        requests = tick().run_requests
        # at 01:00 with a 90-minute lag, 2023-03-04 is not closed yet: the newest is 2023-03-03
        assert [r.partition_key for r in requests] == ["2023-03-01", "2023-03-02", "2023-03-03"]
        assert requests[0].run_config["ops"]["app_export"]["config"] == {"lag_minutes": 90, "lookback_days": 2}
        assert set(instance.get_dynamic_partitions("raw_days")) == {"2023-03-01", "2023-03-02", "2023-03-03"}
        monkeypatch.delenv("PICKAPIC_APP_EXPORT_LAG_MINUTES")
        write_settings(home.root, {"app_export.lookback_days": 0})   # the home's settings file, when no variable
        assert [r.partition_key for r in tick().run_requests] == ["2023-03-04"]
        monkeypatch.setenv("PICKAPIC_APP_EXPORT_LOOKBACK_DAYS", "40")
        with pytest.raises(dg.DagsterError) as error:
            tick()
        assert "app_export.lookback_days = 40 ($PICKAPIC_APP_EXPORT_LOOKBACK_DAYS) is out of range" in \
            str(error.value.__cause__)
        del error
        gc.collect()   # close the instances the schedule contexts opened from the ref while this one is current


def test_export_schedule_catches_up_the_days_of_missed_nights(monkeypatch, tmp_path):
    """A daemon down longer than Dagster's catch-up of missed ticks (about 5) left every day before the lookback
    window unexported for good; the schedule now exports the days the raw zone lacks first (at most
    CATCH_UP_DAYS a night, oldest first), then the newest closed day and its lookback days."""
    home = DataHome.at(tmp_path / "home")
    (tmp_path / "instance").mkdir()
    monkeypatch.setenv("PICKAPIC_APP_DB_DSN", "host=db dbname=app")
    monkeypatch.setenv("PICKAPIC_APP_EXPORT_LAG_MINUTES", "90")
    with dg.instance_for_test(temp_dir=str(tmp_path / "instance")) as instance:
        def tick() -> list[str]:
            return [r.partition_key for r in automation.app_export_schedule.evaluate_tick(dg.build_schedule_context(
                instance=instance, scheduled_execution_time=dt.datetime(2023, 3, 5, 1, 0, tzinfo=dt.timezone.utc),
                resources={"data_home": PickapicHome(root=str(home.root))},
                repository_def=defs.get_repository_def())).run_requests]

        window = ["2023-03-01", "2023-03-02", "2023-03-03"]
        assert tick() == window                              # a new deployment: no history is exported by itself
        (home.raw_logs / "dt=2023-02-20").mkdir(parents=True)   # the last night the export ran
        assert tick() == [f"2023-02-{d}" for d in range(21, 29)] + window
        (home.raw_logs / "dt=2023-02-20").rename(home.raw_logs / "dt=2022-12-20")   # down for ten weeks
        got = tick()
        assert got[:automation.CATCH_UP_DAYS] == [(dt.date(2022, 12, 21) + dt.timedelta(days=k)).isoformat()
                                                  for k in range(automation.CATCH_UP_DAYS)]
        assert got[automation.CATCH_UP_DAYS:] == window and automation.CATCH_UP_DAYS == 31
        (home.raw_logs / "dt=2023-01-21").mkdir()            # one day landed: the gap before it still counts
        assert tick()[:2] == ["2022-12-21", "2022-12-22"] and "2023-01-21" not in tick() and len(tick()) == 31 + 3
        for k in range(31):                                  # the first catch-up night's days landed
            (home.raw_logs / f"dt={dt.date(2022, 12, 21) + dt.timedelta(days=k)}").mkdir()
        assert tick()[:2] == ["2023-01-22", "2023-01-23"] and tick()[-3:] == window and len(tick()) == 31 + 3
        gc.collect()


def test_without_export_defects_every_line_is_a_typed_row_of_its_own_day(tmp_path):
    home = DataHome.at(tmp_path / "home")
    report = simulate(home, CONFIG)
    planted = set(pq.read_table(home.ground_truth / "defects.parquet").column("defect").to_pylist())
    assert planted.isdisjoint({"malformed_json", "wrong_type", "duplicate_row", "conflicting_primary_key",
                               "duplicate_ranking", "late_arrival"})
    assert "unknown_image_reference" in planted  # data-level defects a database can hold stay
    assert report.rankings_pending == 0
    for day in DAYS:
        for table in ("users", "images", "rankings", "downloads"):
            lines = gzip.decompress(home.raw_file(day, table).read_bytes()).splitlines()
            keys = [_parser(table).parse(line)[0] for line in lines]  # raises Reject on any planted line damage
            assert keys == sorted(keys) and len(set(keys)) == len(keys)
    truth = pq.read_table(home.ground_truth / "rankings.parquet", columns=["created_at", "dt"]).to_pylist()
    assert all(row["created_at"][:10] == row["dt"] for row in truth)


def test_simulate_to_postgres_refuses_an_image_store_inside_the_data_home(tmp_path, capsys):
    from dagster_project.cli import main

    home = tmp_path / "home"
    code = main(["simulate", "--home", str(home), "--days", "1", "--to-postgres", "host=/nonexistent dbname=app",
                 "--image-store", str(home / "store"), "--quiet"])
    assert code == 1 and "is inside the data home" in capsys.readouterr().err


def test_blobs_are_copied_once_and_a_uid_is_never_a_path(app_db, tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    with psycopg.connect(app_db) as conn:
        uids = [u for (u,) in conn.execute("SELECT image_uid FROM images WHERE created_at < %s ORDER BY image_id",
                                           (DAYS[1],))]
        conn.execute("INSERT INTO images (created_at, image_uid, user_id, prompt, model_id) "
                     "VALUES ('2023-02-13 12:00:00', '../../escaped', 1, 'p', 'm')")
    (store / f"{uids[0]}.png").write_bytes(b"\x89PNG first blob")
    (tmp_path / "escaped.png").write_bytes(b"must never be copied")
    home = DataHome.at(tmp_path / "home")
    first = export_day(home, app_db, DAYS[0], image_store=str(store)).blobs
    assert (first["copied"], first["missing"], first["invalid_uid"]) == (1, len(uids) - 1, 1)
    assert (home.raw_images / f"{uids[0]}.png").read_bytes() == b"\x89PNG first blob"
    assert sorted(p.name for p in home.raw_images.iterdir()) == [f"{uids[0]}.png"]
    assert [p.name for p in home.root.rglob("escaped*")] == []
    again = export_day(home, app_db, DAYS[0], image_store=str(store)).blobs
    assert (again["copied"], again["present"]) == (0, 1)


def test_command_line_exports_with_the_dsn_from_the_environment(app_db, tmp_path, monkeypatch, capsys):
    from pipelines.appdb.__main__ import main

    monkeypatch.setenv("PICKAPIC_APP_DB_DSN", app_db)
    home = tmp_path / "home"
    assert main(["--home", str(home), "--day", DAYS[0], "--day", DAYS[1], "--no-users-snapshot"]) == 0
    summaries = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(s["day"], s["published"]) for s in summaries] == [(DAYS[0], "new day"), (DAYS[1], "new day")]
    monkeypatch.delenv("PICKAPIC_APP_DB_DSN")
    assert main(["--home", str(home), "--day", DAYS[0]]) == 1
    assert "PICKAPIC_APP_DB_DSN is not set" in capsys.readouterr().err


def test_a_numeric_gs_no_float_can_hold_is_quarantined_not_rounded():
    # a hostile review: numeric 1e-400 became 0.0 (and passed the ingest's range check); 1e400 became Infinity
    uid = "0b6c3c40-6b0f-4c5e-9a7e-3d8a3b1e2f10"
    for text in ("1e-400", "0." + "0" * 399 + "1",
                 "1e400"):
        row = [7, b"2023-02-13 10:00:00.000000", uid.encode(), 3, b"a cat", None, 1, text.encode(), 30, 0, 1,
               b"s", b"m"]
        line = format_row("images", row)
        assert json.loads(line)["gs"] == text
        with pytest.raises(rp.Reject):
            _parser("images").parse(line)
    for text, value in (("7.5", 7.5), ("0", 0.0), ("0.000", 0.0), ("-0.0", 0.0), ("Infinity", float("inf"))):
        row = [7, b"2023-02-13 10:00:00.000000", uid.encode(), 3, b"a cat", None, 1, text.encode(), 30, 0, 1,
               b"s", b"m"]
        assert json.loads(format_row("images", row))["gs"] == value


def test_a_value_over_the_ingests_line_limit_is_fetched_cut_and_quarantined(app_db, tmp_path):
    # A value longer than the home's ingest.max_line_bytes is read only up to that + 1 characters (a 100 MB
    # prompt cost 4-5.5x its size in export memory); its line is written cut, and the ingest quarantines it
    # as line_too_long, as it would the whole line. A line long only by its escapes is written whole.
    from pipelines.ingest.config import IngestConfig

    home = DataHome.at(tmp_path / "home")
    home.root.mkdir(parents=True)
    (home.root / "pickapic.toml").write_text("[ingest]\nmax_line_bytes = 4096\n")
    with psycopg.connect(app_db) as conn:
        huge, escaped = (i for (i,) in conn.execute("SELECT ranking_id FROM rankings WHERE created_at < %s "
                                                    "ORDER BY ranking_id LIMIT 2", (DAYS[1],)))
        conn.execute("UPDATE rankings SET prompt = repeat('a', 100000) WHERE ranking_id = %s", (huge,))
        conn.execute("UPDATE rankings SET prompt = repeat('é', 1000) WHERE ranking_id = %s", (escaped,))
    report = export_day(home, app_db, DAYS[0])
    assert report.oversized == {"rankings": {"rows": 1, "first_ids": [str(huge)]}}
    assert any("more than ingest.max_line_bytes (4096)" in w and f"rankings: 1 (ids {huge})" in w
               for w in report.warnings)
    lines = gzip.decompress(home.raw_file(DAYS[0], "rankings").read_bytes()).splitlines()
    cut = next(line for line in lines if line.startswith(f'{{"ranking_id": {huge},'.encode()))
    assert len(cut) == 4097 and cut.endswith(b"a" * 100)
    whole = next(line for line in lines if line.startswith(f'{{"ranking_id": {escaped},'.encode()))
    assert len(whole) > 4096 and json.loads(whole)["prompt"] == "é" * 1000
    ingest_day(home, DAYS[0], IngestConfig(max_line_bytes=4096))
    quarantine = pq.read_table(home.partition_file("quarantine", DAYS[0])).to_pylist()
    too_long = sorted(q["line_number"] for q in quarantine if q["reason"] == rp.LINE_TOO_LONG)
    assert too_long == sorted(lines.index(line) + 1 for line in (cut, whole))
    assert report.metadata()["oversized_rows"] == 1
