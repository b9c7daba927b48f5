"""Hostile review rev30b of the app-database export after fix29c, fix29d, fix29h and fix29i (``pipelines/appdb/``,
``sql/app_db/``; README section 1a): the late-row check's id digest (``hashint8extended`` in ``day_counts.sql``,
``day_ids.sql``, ``row_days.sql``), the look-up of the rows that left a day, ``cache/app_export_undated.json``,
``keep_vanishing_rows``, ``_piece_key``, the byte order mark, the int64 id arrays, the ranged
``build --from-app-db`` over raw-only days (``cache/app_export_written/``), and the account erasure (GDPR)
procedure of README 1a followed literally, checked over the raw zone, the warehouse, the caches and every kept
published version.

Run against a real PostgreSQL server (``tests/postgres_server.py``) as a young app evolves (rows updated,
deleted, re-inserted; a restore from an older backup), and against a copy of the shared demo home built for real
through Dagster and Beam (``pickapic build``).

Held (tried, no defect filed): ``export.id_hash`` equals the server's ``hashint8extended`` for 0, +-1, +-2^31,
+-2^32, the int64 edges and negative ids; a ``timestamptz`` day boundary read in UTC whatever the app's session
zone; a ranged build over days never exported before exports just the app's days in the range; the erased
account's email, name and rows leave every raw day, the warehouse's row tables, the quarantine and Dagster's
storage (a home simulated into PostgreSQL, built with ``--from-app-db``, then erased by the procedure).

Noticed, not filed: ``hashint8extended`` folds an id's high half into its low half, so ids 1 and 2^32 (or -1 and
2^32 - 1) hash alike and a deletion of one plus a late row of the other on the same day keeps the day's rows,
largest id and digest (only ids past 2^32, no young app's); erasing the only user a held-out split holds makes the
next publish refuse ("split 'test' is empty"), so ``latest`` stays the version published before the erasure.

Each test states the correct behaviour; all four were fixed the same day (fix30b, ``tests/unit/test_fix30b.py``)
and the strict-xfail markers removed.
"""
from __future__ import annotations

import gzip
import json
import os
import shutil

import psycopg
import pyarrow.parquet as pq
import pytest
from appdb_fixtures import NIGHTLY, NOW, app_db

from formats.home import DataHome
from formats.settings import load
from pipelines.appdb.export import export_day, late_days
from tests.conftest import copy_home
from tests.postgres_server import create_app_database, postgres_server  # noqa: F401 - fixture


def _raw_lines(home: DataHome, day: str, table: str) -> list[dict]:
    """The JSON objects of a raw table file (the simulator's malformed lines left out)."""
    path = home.raw_file(day, table)
    out = []
    for line in gzip.decompress(path.read_bytes()).splitlines() if path.exists() else []:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            out.append(row)
    return out


def _ids(home: DataHome, day: str) -> list:
    return [line["ranking_id"] for line in _raw_lines(home, day, "rankings")]


def _rank(conn, day: str, prompt: str, user_id: int = 1) -> None:
    conn.execute("INSERT INTO rankings (created_at, user_id, prompt) VALUES (%s, %s, %s)",
                 (f"{day} 12:00", user_id, prompt))


# --- the account erasure (GDPR) of README 1a, followed literally on a built home ---------------------------------

def _without_user(path, user: int) -> None:
    """Delete, by hand as README 1a says, the lines of raw file ``path`` that name ``user`` as their user_id."""
    kept = []
    for line in gzip.decompress(path.read_bytes()).splitlines(keepends=True):
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if not (isinstance(row, dict) and row.get("user_id") == user):
            kept.append(line)
    staged = path.with_name(f".{path.name}.edit")
    staged.write_bytes(gzip.compress(b"".join(kept), mtime=0))
    os.replace(staged, path)


@pytest.fixture(scope="module")
def erased(built_home, tmp_path_factory):
    """A copy of the demo home after README 1a's erasure of one train user with images of their own: the account's
    rows taken out of each raw day by hand (the demo's days were not written by the app export: README 1a says to
    edit them), its blobs deleted from raw/images, the warehouse rebuilt and published (``pickapic build``), and the
    versions published before the erasure deleted. Returns (home, what the account had)."""
    from dagster_project.cli import main
    from pipelines.curation.pseudonym import pseudonymize

    home = copy_home(built_home, tmp_path_factory.mktemp("rev30b-erasure") / "home")
    before = {p.name for p in home.datasets.iterdir() if p.is_dir() and not p.is_symlink()}
    latest = (home.datasets / "latest").resolve()
    secret = load(home.root).config("curation").pseudonym_secret
    train_users = set()
    for sidecar in (latest / "train").glob("pickapic-train-*.parquet"):
        train_users |= set(pq.read_table(sidecar, columns=["user_id"]).column("user_id").to_pylist())
    days = home.raw_days()
    images = [line for day in days for line in _raw_lines(home, day, "images")]
    rankings = [line for day in days for line in _raw_lines(home, day, "rankings")]
    features = {}
    for part in (home.root / "warehouse" / "image_features").glob("dt=*/part-0.parquet"):
        for row in pq.read_table(part, columns=["image_uid", "sha256"]).to_pylist():
            features[row["image_uid"]] = row["sha256"]
    owners: dict[str, set] = {}
    images = [line for line in images if isinstance(line.get("image_uid"), str)]
    for line in images:
        if line["image_uid"] in features:
            owners.setdefault(features[line["image_uid"]], set()).add(line.get("user_id"))

    def own_shas(user):
        return {features[line["image_uid"]] for line in images if line.get("user_id") == user
                and line["image_uid"] in features and owners[features[line["image_uid"]]] == {user}}

    candidates = [u for u in {line.get("user_id") for line in rankings} if type(u) is int
                  and pseudonymize(u, secret) in train_users]
    user = max(sorted(candidates), key=lambda u: len(own_shas(u)))
    typed_by = {}
    for line in rankings + images:
        if isinstance(line.get("prompt"), str):
            typed_by.setdefault(line["prompt"], set()).add(line.get("user_id"))
    account = {"user_id": user,
               "uids": sorted(line["image_uid"] for line in images if line.get("user_id") == user),
               "shas": sorted(own_shas(user)),
               "prompts": sorted(p for p, users in typed_by.items() if users == {user})}
    assert account["shas"] and account["prompts"]
    for day in days:                                    # the rows out of each raw day, by hand (README 1a)
        for table in ("users", "images", "rankings", "downloads"):
            if home.raw_file(day, table).exists():
                _without_user(home.raw_file(day, table), user)
    for uid in account["uids"]:                         # then its blobs
        (home.raw_images / f"{uid}.png").unlink(missing_ok=True)
    assert main(["build", "--home", str(home.root)]) == 0        # rebuild the warehouse and publish
    for name in before:                                 # delete the versions published before the erasure
        folder = home.datasets / name
        if folder.exists() and folder != (home.datasets / "latest").resolve():
            shutil.rmtree(folder)
    assert (home.datasets / "latest").resolve().name not in before
    return home, account


def test_the_erasure_leaves_no_training_jpeg_of_the_accounts_images(erased):
    home, account = erased
    left = [p.name for p in (home.root / "blobs").rglob("*.jpg") if p.stem in set(account["shas"])]
    assert left == []


def test_the_erasure_leaves_no_prompt_of_the_account_in_the_warehouse(erased):
    from pipelines.splits.assign import normalize_prompt

    home, account = erased
    wanted = {normalize_prompt(p) for p in account["prompts"]} | set(account["prompts"])
    holding = []
    for part in sorted((home.root / "warehouse").rglob("*.parquet")):
        table = pq.read_table(part)
        for name in table.column_names:
            values = table.column(name).to_pylist()
            if any(isinstance(v, str) and v in wanted for v in values):
                holding.append(f"{part.relative_to(home.root)}:{name}")
    assert holding == []


def test_the_erasure_leaves_no_split_pin_of_the_accounts_prompts_or_images(erased):
    """fix37a: the erasure build saw the versions published before it (deleted only after it); their rows of the
    erased account (gone from users) keep no pin, so the account's prompt keys and image uids leave
    split_key_owners at that build."""
    from pipelines.splits.assign import normalize_prompt

    home, account = erased
    pins = {(r["kind"], r["key"]) for r in pq.read_table(home.table_file("split_key_owners")).to_pylist()}
    assert {key for kind, key in pins if kind == "prompt"} & {normalize_prompt(p) for p in account["prompts"]} == set()
    assert {key for kind, key in pins if kind == "image"} & set(account["uids"]) == set()
    assert pins                                           # the other accounts' pins stay


# --- a restore from an older backup: ids reused by other rows ------------------------------------------------------

def _restore_then_new_rows(conn) -> None:
    """The app database restored from a backup taken when it held ranking 1 only (rankings 2 and 3 lost, the id
    sequence back to 1); the app then takes ids 2 and 3 again for two new, unrelated rankings on 2023-03-10."""
    conn.execute("DELETE FROM rankings WHERE ranking_id > 1")
    conn.execute("SELECT setval(pg_get_serial_sequence('rankings', 'ranking_id'), 1)")
    _rank(conn, "2023-03-10", "new after the restore", user_id=2)
    _rank(conn, "2023-03-10", "another new one", user_id=2)


def test_a_restore_that_reuses_ids_does_not_take_exported_rows_out_of_the_raw_zone(postgres_server, tmp_path):  # noqa: F811
    exported = ["clicked before the restore 1", "clicked before the restore 2", "clicked before the restore 3"]
    homes = {}
    for case in ("deleted", "reused"):
        dsn, home = app_db(postgres_server), DataHome.at(tmp_path / case)
        with psycopg.connect(dsn) as conn:
            for prompt in exported:
                _rank(conn, "2023-03-01", prompt)
        for day in ("2023-03-01", "2023-03-02", "2023-03-03"):
            export_day(home, dsn, day, NIGHTLY, now=NOW)
        with psycopg.connect(dsn) as conn:
            if case == "deleted":                      # the same rows lost, no id taken again
                conn.execute("DELETE FROM rankings WHERE ranking_id > 1")
            else:
                _restore_then_new_rows(conn)
        for night in ("2023-03-10", "2023-03-11", "2023-03-12"):     # nightly exports, 03-01 past the lookback
            export_day(home, dsn, night, NIGHTLY, now=NOW)
            for marked in late_days(home):                           # what the schedule re-exports
                export_day(home, dsn, marked, NIGHTLY, now=NOW)
        homes[case] = home
    assert [line["prompt"] for line in _raw_lines(homes["deleted"], "2023-03-01", "rankings")] == exported
    assert [line["prompt"] for line in _raw_lines(homes["reused"], "2023-03-01", "rankings")] == exported  # now [..1]


# --- an empty warning line --------------------------------------------------------------------------------------

def test_an_export_reports_no_empty_warning(postgres_server, tmp_path):  # noqa: F811
    dsn, home = app_db(postgres_server), DataHome.at(tmp_path / "home")
    with psycopg.connect(dsn) as conn:
        _rank(conn, "2023-03-01", "on time")
    export_day(home, dsn, "2023-03-01", NIGHTLY, now=NOW)
    with psycopg.connect(dsn) as conn:                 # its created_at corrected to the night being exported
        conn.execute("UPDATE rankings SET created_at = '2023-03-16 08:00' WHERE ranking_id = 1")
    report = export_day(home, dsn, "2023-03-16", NIGHTLY, now=NOW)     # checks 2023-02-28 .. 2023-03-13
    assert report.late["2023-03-01"]["rankings"]["left"] == 1
    assert "" not in report.warnings                                    # now ['...left their day...', '']
