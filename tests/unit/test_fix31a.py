"""fix31a: the defects of review rev31a (``tests/unit/test_hostile_rev31a.py``) fixed, and their neighbours.

- a size folder a link takes outside the home records the home in the size folder's own ``.writers``
  (``storewriters.record_store_user``), and the training JPEG removal skips a size folder holding another home's
  marker wherever it lies (``trainjpegs._foreign_size_folder``); a home alone on its disk still prunes;
- a ranged build from the primary re-exports a day whose raw folder retention pruned and which the app holds no row
  on, when the warehouse built it from the app export's files (``export.built_from_export``), so the erasure reaches
  its warehouse partitions; otherwise (no record, keep_exported_rows, a replica) a warning names it;
- what a build's steps log as warnings reaches the build's ``warn`` (``build._step_warnings``);
- a ``.partial-<version>`` sidecar column that is not text leaves the removal with a note, never an exception.
"""
from __future__ import annotations

import datetime as dt
import os
import shutil

import dagster as dg
import psycopg
import pyarrow as pa
import pyarrow.parquet as pq

from formats.home import DataHome
from pipelines.features import trainjpegs
from pipelines.features.config import check_blob_base
from pipelines.features.storewriters import WRITERS, home_digest
from tests.postgres_server import create_app_database, postgres_server  # noqa: F401 - fixture
from tests.unit.test_fix30b import SHA, _jpeg_key
from tests.unit.test_hostile_rev30i import _home_with_jpeg

_counter = iter(range(10**6))
NOW = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)


# --- 1. markers at the size folder level --------------------------------------------------------------------------

def test_a_size_folder_linked_out_records_the_home_in_it_and_a_plain_one_does_not(tmp_path):
    disk = tmp_path / "disk" / "s512q90"
    disk.mkdir(parents=True)
    home = DataHome(tmp_path / "home")
    train = home.root / "blobs" / "train"
    train.mkdir(parents=True)
    (train / "s512q90").symlink_to(disk)
    (train / "s256q80").mkdir()                                   # a plain size folder in the home
    check_blob_base(None, home.root)
    check_blob_base(None, home.root)                              # idempotent: the marker is written once
    assert sorted(os.listdir(disk / WRITERS)) == [home_digest(home.root)]
    assert not (train / WRITERS).exists() and not (train / "s256q80" / WRITERS).exists()
    assert not (disk.parent / WRITERS).exists()                   # nothing beside the linked folder
    assert oct((disk / WRITERS / home_digest(home.root)).stat().st_mode & 0o004)   # readable by others (umask 022)


def test_a_store_on_another_disk_records_at_the_store_not_in_its_plain_size_folders(tmp_path):
    disk = tmp_path / "disk" / "train"
    (disk / "s512q90").mkdir(parents=True)
    home = DataHome(tmp_path / "home")
    (home.root / "blobs").mkdir(parents=True)
    (home.root / "blobs" / "train").symlink_to(disk)
    check_blob_base(None, home.root)
    assert os.listdir(disk / WRITERS) == [home_digest(home.root)]
    assert not (disk / "s512q90" / WRITERS).exists()


def test_a_home_alone_on_its_disk_still_prunes_through_its_size_folder_link(tmp_path):
    disk = tmp_path / "disk" / "s512q90"
    disk.mkdir(parents=True)
    (tmp_path / "home" / "blobs" / "train").mkdir(parents=True)
    (tmp_path / "home" / "blobs" / "train" / "s512q90").symlink_to(disk)
    home = _home_with_jpeg(tmp_path / "home", SHA["a"])
    check_blob_base(None, home.root)
    orphan = home.root / _jpeg_key(SHA["c"])
    orphan.parent.mkdir(exist_ok=True)
    orphan.write_bytes(b"jpeg c")
    report = trainjpegs.prune_training_jpegs(home, str(home.root))
    assert report.removed == 1 and not orphan.exists() and not report.notes, report
    assert (home.root / _jpeg_key(SHA["a"])).is_file()
    assert (disk / WRITERS / home_digest(home.root)).is_file()    # its own marker stays


def test_another_homes_size_folder_linked_into_this_store_is_skipped_and_the_rest_pruned(tmp_path):
    home = _home_with_jpeg(tmp_path / "home_a", SHA["a"])
    other = DataHome(tmp_path / "home_b")                          # B links its s256q80 into A's own store
    (home.root / "blobs" / "train" / "s256q80").mkdir()
    (other.root / "blobs" / "train").mkdir(parents=True)
    (other.root / "blobs" / "train" / "s256q80").symlink_to(home.root / "blobs" / "train" / "s256q80")
    check_blob_base(None, other.root)                              # B's feature stage starts: its marker in it
    assert (home.root / "blobs" / "train" / "s256q80" / WRITERS / home_digest(other.root)).is_file()
    b_jpeg = home.root / _jpeg_key(SHA["b"], "s256q80")           # B's JPEG, through its link
    b_jpeg.parent.mkdir()
    b_jpeg.write_bytes(b"jpeg b")
    orphan = home.root / _jpeg_key(SHA["c"])                       # A's own unneeded JPEG
    orphan.parent.mkdir()
    orphan.write_bytes(b"jpeg c")
    report = trainjpegs.prune_training_jpegs(home, str(home.root))
    assert b_jpeg.is_file(), report
    assert not orphan.exists() and report.removed == 1
    assert any("s256q80" in note and "training JPEGs" in note for note in report.notes), report.notes


def test_a_marker_written_into_a_size_folder_after_the_listing_stops_its_removal(tmp_path, monkeypatch):
    home = _home_with_jpeg(tmp_path / "home_a", SHA["a"])
    orphan = home.root / _jpeg_key(SHA["c"])
    orphan.parent.mkdir()
    orphan.write_bytes(b"jpeg c")
    other = DataHome(tmp_path / "home_b")
    (other.root / "blobs" / "train").mkdir(parents=True)
    needed = trainjpegs.needed_keys

    def meanwhile(h):      # B links its size folder here and its feature stage starts while A reads its keys
        (other.root / "blobs" / "train" / "s512q90").symlink_to(home.root / "blobs" / "train" / "s512q90")
        check_blob_base(None, other.root)
        return needed(h)

    monkeypatch.setattr(trainjpegs, "needed_keys", meanwhile)
    report = trainjpegs.prune_training_jpegs(home, str(home.root))
    assert orphan.is_file() and report.removed == 0
    assert any("s512q90" in note and home_digest(other.root) in note for note in report.notes), report.notes


def test_a_partial_versions_sidecar_of_an_odd_type_leaves_everything_with_a_note(tmp_path):
    from pipelines.publish.versions import STAGING_PREFIX, staging_root

    home = _home_with_jpeg(tmp_path / "home", SHA["a"])
    orphan = home.root / _jpeg_key(SHA["c"])
    orphan.parent.mkdir()
    orphan.write_bytes(b"jpeg c")
    sidecar = staging_root(home.datasets) / f"{STAGING_PREFIX}2024-01-01-abc" / "train" / "pairs.parquet"
    sidecar.parent.mkdir(parents=True)
    pq.write_table(pa.table({"jpg_0_key": pa.array([[_jpeg_key(SHA["c"])]]),      # a list column
                             "jpg_1_key": pa.array([None], pa.string())}), sidecar)
    report = trainjpegs.prune_training_jpegs(home, str(home.root))              # never raises
    assert orphan.is_file() and report.removed == 0
    assert any("not text" in note and "jpg_0_key" in note for note in report.notes), report.notes
    pq.write_table(pa.table({"jpg_0_key": pa.array([None, None], pa.null()),   # an all-null column: no key
                             "jpg_1_key": pa.array([_jpeg_key(SHA["c"]), None]).dictionary_encode()}), sidecar)
    report = trainjpegs.prune_training_jpegs(home, str(home.root))
    assert orphan.is_file() and report.removed == 0 and not report.notes, report     # its key is named: kept


# --- 2. the erasure build and a pruned raw day --------------------------------------------------------------------

def _user_and_ranking(conn, user_id: int, day: str, ranking_id: int, prompt: str) -> None:
    conn.execute("INSERT INTO users (user_id, created_at, email, name) VALUES (%s, %s, %s, %s)",
                 (user_id, f"{day} 08:00", f"user{user_id}@example.com", f"User {user_id}"))
    conn.execute("INSERT INTO rankings (ranking_id, created_at, user_id, prompt) VALUES (%s, %s, %s, %s)",
                 (ranking_id, f"{day} 12:00", user_id, prompt))


def _pruned_home(server, tmp_path, monkeypatch):
    from pipelines.appdb.export import export_day
    from pipelines.ingest.day import ingest_day

    dsn = create_app_database(server, f"fix31a_{os.getpid()}_{next(_counter)}")
    home = DataHome.at(tmp_path / "home")
    with psycopg.connect(dsn) as conn:
        _user_and_ranking(conn, 1, "2023-03-01", 1, "the erased account's prompt")
        _user_and_ranking(conn, 2, "2023-03-02", 2, "another account's prompt")
    for day in ("2023-03-01", "2023-03-02"):
        export_day(home, dsn, day, now=NOW)
        ingest_day(home, day)
    shutil.move(str(home.raw_day("2023-03-01")), str(tmp_path / "archive"))
    with psycopg.connect(dsn) as conn:
        conn.execute("DELETE FROM rankings WHERE user_id = 1")
        conn.execute("DELETE FROM users WHERE user_id = 1")
    monkeypatch.setenv("PICKAPIC_APP_DB_DSN", dsn)
    return dsn, home


def _held_text(home: DataHome, day: str) -> str:
    texts = []
    for table in ("quarantine", "rankings", "users"):
        path = home.partition_file(table, day)
        if path.exists():
            texts.extend(str(value) for row in pq.read_table(path).to_pylist() for value in row.values())
    return " ".join(texts)


def test_the_erasure_build_re_exports_a_pruned_day_and_its_rebuild_drops_the_account(postgres_server,  # noqa: F811
                                                                                      tmp_path, monkeypatch):
    from dagster_project.build import select_app_db_days
    from formats.settings import load
    from pipelines.appdb.export import built_from_export, export_day
    from pipelines.ingest.day import ingest_day

    dsn, home = _pruned_home(postgres_server, tmp_path, monkeypatch)
    assert built_from_export(home, "2023-03-01")
    assert "the erased account's prompt" in _held_text(home, "2023-03-01")
    warnings: list[str] = []
    days = select_app_db_days(load(home.root), "2023-03-01", "2023-03-02", warnings.append)
    assert days == ["2023-03-01", "2023-03-02"]
    assert any("2023-03-01" in w and "raw folder is gone" in w and "re-exported" in w for w in warnings), warnings
    export_day(home, dsn, "2023-03-01", now=NOW)          # what the build then runs for it
    ingest_day(home, "2023-03-01")
    held = _held_text(home, "2023-03-01")
    assert "the erased account's prompt" not in held and "user1@example.com" not in held
    assert pq.read_table(home.partition_file("users", "2023-03-01")).column("user_id").to_pylist() != [1]
    assert select_app_db_days(load(home.root), None, None, warnings.append) == ["2023-03-02"]   # unranged: as before


def test_a_pruned_day_the_export_did_not_build_is_named_never_re_exported(postgres_server, tmp_path,  # noqa: F811
                                                                         monkeypatch):
    from dagster_project.build import select_app_db_days
    from formats.settings import load

    _, home = _pruned_home(postgres_server, tmp_path, monkeypatch)
    settings = load(home.root, assignments=["app_export.keep_exported_rows=true"])
    warnings: list[str] = []
    assert select_app_db_days(settings, "2023-03-01", "2023-03-02", warnings.append) == ["2023-03-02"]
    assert any("2023-03-01" in w and "keep_exported_rows" in w and "left as they are" in w for w in warnings)
    (home.cache / "app_export_written" / "dt=2023-03-01.json").unlink()     # the record gone (HOME/cache deleted)
    warnings.clear()
    assert select_app_db_days(load(home.root), "2023-03-01", "2023-03-02", warnings.append) == ["2023-03-02"]
    assert any("2023-03-01" in w and "not built from files the app export wrote" in w for w in warnings), warnings


def test_built_from_export_needs_the_record_and_the_ingested_files_to_agree(postgres_server, tmp_path,  # noqa: F811
                                                                           monkeypatch):
    from pipelines.appdb.export import built_from_export

    _, home = _pruned_home(postgres_server, tmp_path, monkeypatch)
    record = home.cache / "app_export_written" / "dt=2023-03-01.json"
    files = home.partition_file("ingest_files", "2023-03-01")
    table = pq.read_table(files)
    sha = table.column("file_sha256").to_pylist()
    pq.write_table(table.set_column(table.schema.get_field_index("file_sha256"), "file_sha256",
                                    pa.array(["0" * 64] + sha[1:], pa.string())), files)   # built from other bytes
    assert not built_from_export(home, "2023-03-01")
    pq.write_table(table, files)
    assert built_from_export(home, "2023-03-01")
    record.write_text("[]")
    assert not built_from_export(home, "2023-03-01")
    assert not built_from_export(home, "2023-03-05")                     # no record, no partition


# --- 3. the steps' warnings reach the build's warn ----------------------------------------------------------------

def test_a_runs_step_warnings_are_read_back_once_each_and_nothing_else():
    from dagster_project.build import QUIET_LOGS, _step_warnings
    from dagster_project.steplog import step_warning

    @dg.op
    def noisy(context):   # fix31i: a step's own warnings carry the project's tag (steplog.step_warning)
        context.log.info("an info line")
        step_warning(context.log, "training JPEGs not pruned: a note")
        step_warning(context.log, "training JPEGs not pruned: a note")
        step_warning(context.log, "another note")

    @dg.job
    def job():
        noisy()

    with dg.DagsterInstance.ephemeral() as instance:
        result = job.execute_in_process(instance=instance, run_config=QUIET_LOGS)
        assert _step_warnings(instance, result.run_id) == ["training JPEGs not pruned: a note", "another note"]
        assert _step_warnings(instance, "no-such-run") == []
