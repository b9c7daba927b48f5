"""Hostile review rev32c of the thirty-first session's app-database export changes (fix31e, fix31h and their fix31a /
fix31b neighbours; README section 1a, "Two exports of one day", the layout's ``cache/app_export_*`` lines and section
9's thirty-first-session bullets): the per-day export lock and the snapshot tickets drawn from one clock
(``HOME/cache/app_export_snapshots/clock.json``, ``dt=DAY.json``), late markers with tickets, the superseded export,
the undated state merged under its lock, and the cache sweep of the tickets.

Driven by a real PostgreSQL server started by the test (``tests/postgres_server.py``) and the real ``export_day``;
overlapping exports are made as test_fix31e / rev31h make them (a whole second export run from the first one's
progress callback, after its snapshot and before its publish), then the schedule's loop (``late_days`` re-exported)
and later nightlies. The ticket clock is driven in-process (``draw_ticket`` under ``tickets_lock``).

Held (tried, no defect filed): an export killed (KeyboardInterrupt) between its ticket and its publish leaves its
ticket as ``taken`` and no staging folder, and the rerun draws a larger ticket and publishes the day; a symlink at
``clock.json`` to another account's file is not followed (read as none, replaced by the export's record, the target
untouched); a 10 MiB ``clock.json`` is read as none without reading it whole and replaced. Read, not run: the cache
sweep removes only the tickets' temporary files, never a record or the clock, and the records stay one ~50-byte file
per day ever exported (a year of nights: 365 small files, none listed or read beyond its own day), so they do not grow
with the nights; a superseded export always has a newer one that published the day (the larger ticket that finishes
first publishes), so a schedule plus manual exports supersede an export but never keep a day unpublished (no
livelock).

Measured: the four tests take about 11 s together on this 2-CPU machine (most of it the server's start, one per test
process, shared); each body 0.1-2 s.

Noticed, not filed: the tickets cannot order a home's snapshot against a restored app database (a point-in-time
restore is newer by ticket and older by content: the keep_exported_rows case, documented); a marker whose ticket is
past the clock's ``last`` (the clock could not be recorded: a warning at the snapshot, none from ``mark_late``, which
drops draw_ticket's warning) counts as set at its modification time, so after a clock set back an export whose
snapshot predates it may clear it (needs an unwritable clock, which the snapshot's warning already names); a kill
between the publish's renames and its ticket record (rev31h's microsecond window) was not re-run.

Each test below is a defect confirmed by running it, ranked by severity, filed as a strict xfail whose assertions
state the correct behaviour. Tests 1 and 2 have one cause: the tickets, the day records and the late markers are
keyed by day only and read and written through a link at ``HOME/cache`` (or at ``cache/app_export_snapshots`` /
``cache/app_export_late``, which the sweep follows on purpose), while the locks that order them are the home's own
(``HOME/.locks``): two homes whose cache is one folder (a home copied with ``cp -a`` whose ``cache`` is a link to a
fast disk) clear each other's late markers and supersede each other's exports. Nothing refuses or warns.
Fixed the same day (fix32c, ``tests/unit/test_fix32c.py``) and the markers removed: each folder of the export's state
in ``HOME/cache`` records the home it belongs to (``owner.json``) and an export into another home that reaches it
refuses (``CacheOfAnotherHome``, naming both homes; tests 1 and 2 now assert the refusal, see their docstrings); a
superseded export stops copying blobs once a newer one has published the day and removes the ones it wrote that the
published day does not name; the ticket clock stops at 2**63 - 1 with a warning (and ``mark_late`` passes on
draw_ticket's warning).
"""
from __future__ import annotations

import gzip
import json
import uuid

import psycopg
import pytest
from appdb_fixtures import NIGHTLY, NOW, app_db

from formats.home import DataHome
from pipelines.appdb.export import (
    SNAPSHOT_ORDER,
    TICKET_CLOCK,
    CacheOfAnotherHome,
    draw_ticket,
    export_day,
    late_days,
    tickets_lock,
)
from tests.postgres_server import create_app_database, postgres_server  # noqa: F401 - fixture


def _ids(home: DataHome, day: str) -> list:
    path = home.raw_file(day, "rankings")
    lines = gzip.decompress(path.read_bytes()).splitlines() if path.exists() else []
    return [json.loads(line)["ranking_id"] for line in lines]


def _rank(conn, day: str, ranking_id: int, user_id: int = 1) -> None:
    conn.execute("INSERT INTO rankings (ranking_id, created_at, user_id, image_0_uid, image_1_uid, prompt) "
                 "VALUES (%s, %s, %s, 'u0', 'u1', 'p')", (ranking_id, f"{day} 12:00", user_id))


def _schedule_loop(home: DataHome, dsn: str) -> None:
    """What the schedule re-exports after a night: the days marked late."""
    for marked in late_days(home):
        export_day(home, dsn, marked, NIGHTLY, now=NOW)


def _two_homes(tmp_path) -> tuple[DataHome, DataHome]:
    """Production and a copy of it (``cp -a`` for a staging deployment reading the same app database): both homes'
    ``cache`` is the same link, to one folder on a fast disk."""
    shared = tmp_path / "fastdisk" / "pickapic-cache"
    shared.mkdir(parents=True)
    homes = []
    for name in ("prod", "copy"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "cache").symlink_to(shared)
        homes.append(DataHome.at(tmp_path / name))
    return homes[0], homes[1]


# --- 1. a home sharing the cache clears the other home's late marker: the late row reaches no raw day of it ---------

def test_a_home_sharing_the_cache_never_clears_the_other_homes_late_marker(postgres_server, tmp_path):  # noqa: F811
    """Fix32c: the copy's exports refuse the cache prod's exports own (CacheOfAnotherHome, naming both homes), so
    the copy's export of 03-02 and its schedule's re-export fail (the test asserted before that they ran, and that
    the copy's re-export brought ranking 2: the behaviour whose side effect cleared prod's marker)."""
    dsn = app_db(postgres_server)
    prod, copy = _two_homes(tmp_path)
    checked = "2023-03-02"          # the oldest day 03-18's late-row check reaches (03-02 .. 03-15)
    with psycopg.connect(dsn) as conn:
        _rank(conn, checked, 1)
    export_day(prod, dsn, checked, NIGHTLY, now=NOW)
    with pytest.raises(CacheOfAnotherHome) as refused:
        export_day(copy, dsn, checked, NIGHTLY, now=NOW)
    assert str(prod.root) in str(refused.value) and str(copy.root) in str(refused.value)
    with psycopg.connect(dsn) as conn:
        _rank(conn, checked, 2)     # committed late, past the lookback
    report = export_day(prod, dsn, "2023-03-18", NIGHTLY, now=NOW)          # prod's nightly finds it and marks 03-02
    assert checked in report.late and late_days(prod) == [checked]
    with pytest.raises(CacheOfAnotherHome):
        _schedule_loop(copy, dsn)   # the copy's schedule sees prod's marker: its export refuses, the marker stays
    assert late_days(prod) == [checked] and _ids(copy, checked) == []
    _schedule_loop(prod, dsn)       # prod's schedule re-exports 03-02 and clears its marker
    for night in ("2023-03-19", "2023-03-20"):   # 03-02 is past every later night's check
        export_day(prod, dsn, night, NIGHTLY, now=NOW)
        _schedule_loop(prod, dsn)
    assert _ids(prod, checked) == [1, 2]          # now [1]: prod's raw zone never gets ranking 2


# --- 2. an export into one home is superseded by an export into another home: its day is not published -------------

def test_an_export_is_never_superseded_by_an_export_into_another_home(postgres_server, tmp_path):  # noqa: F811
    """Fix32c: the copy's export refuses the cache prod's exports own (the test expected it to publish the copy's
    day, "new day"): it publishes nothing and cannot supersede prod's export."""
    dsn = app_db(postgres_server)
    prod, copy = _two_homes(tmp_path)
    day = "2023-03-01"
    with psycopg.connect(dsn) as conn:
        _rank(conn, day, 1)
    export_day(prod, dsn, day, NIGHTLY, now=NOW)
    with psycopg.connect(dsn) as conn:
        _rank(conn, day, 2)         # committed late: prod's re-export (an operator's ranged build) brings it
    seen = []

    def meanwhile(message: str) -> None:
        """While prod's re-export writes, its snapshot taken: the copy's nightly exports the same day into the copy."""
        if message.startswith("rankings") and not seen:
            try:
                seen.append(export_day(copy, dsn, day, NIGHTLY, now=NOW).published)
            except CacheOfAnotherHome:
                seen.append("refused")

    report = export_day(prod, dsn, day, NIGHTLY, now=NOW, progress=meanwhile)
    assert seen == ["refused"] and not copy.raw_file(day, "rankings").exists()
    assert report.published == "updated", report.warnings      # now "superseded": by an export of another home
    assert _ids(prod, day) == [1, 2]                           # now [1]


# --- 3. a superseded export copies the blobs of the snapshot it does not publish --------------------------------------

def test_a_superseded_export_copies_no_blob_of_the_snapshot_it_did_not_publish(postgres_server,  # noqa: F811
                                                                                tmp_path):
    dsn, home = app_db(postgres_server), DataHome.at(tmp_path / "home")
    store = tmp_path / "store"
    store.mkdir()
    day, uid = "2023-03-01", str(uuid.UUID(int=5))
    (store / f"{uid}.png").write_bytes(b"\x89PNG the erased account's image")
    with psycopg.connect(dsn) as conn:
        conn.execute("INSERT INTO users (user_id, created_at, email) VALUES (5, '2023-03-01 01:00', 'x@example.com')")
        conn.execute("INSERT INTO images (created_at, image_uid, user_id, prompt) "
                     "VALUES ('2023-03-01 02:00', %s, 5, 'p')", (uid,))
        _rank(conn, day, 1, user_id=5)
    export_day(home, dsn, day, NIGHTLY, now=NOW, image_store=str(store))
    assert (home.raw_images / f"{uid}.png").exists()
    seen = []

    def meanwhile(message: str) -> None:
        """While the schedule's export of the day writes (one export of a large day takes hours), its snapshot
        taken: the account is erased as README 1a says (rows deleted in the primary, the day re-exported from it by
        `pickapic build --from-app-db`, then raw/images/<uid>.png of the account's images deleted)."""
        if message.startswith("rankings") and not seen:
            with psycopg.connect(dsn) as conn:
                for table in ("rankings", "images", "users"):
                    conn.execute(f"DELETE FROM {table} WHERE user_id = 5")
            seen.append(export_day(home, dsn, day, NIGHTLY, now=NOW, image_store=str(store)).published)
            (home.raw_images / f"{uid}.png").unlink()

    older = export_day(home, dsn, day, NIGHTLY, now=NOW, image_store=str(store), progress=meanwhile)
    assert seen == ["updated"] and older.published == "superseded" and _ids(home, day) == []
    assert not (home.raw_images / f"{uid}.png").exists()     # now copied back ("copied": 1), with no word of it


# --- 4. the ticket clock writes a ticket it then reads as none, and counts back -----------------------------------------

def test_the_ticket_clock_never_counts_back_past_a_ticket_it_accepted(tmp_path):
    home = DataHome.at(tmp_path / "home")
    (home.cache / SNAPSHOT_ORDER).mkdir(parents=True)
    # a clock the export reads as its own (an int below 2**63): a corrupt or restored record, or a day record's
    # ticket that draw_ticket's at_least carries into the clock
    (home.cache / SNAPSHOT_ORDER / TICKET_CLOCK).write_text(json.dumps({"last": 2**63 - 2}))
    with tickets_lock(home):
        drawn = [draw_ticket(home) for _ in range(3)]
    tickets = [ticket for ticket, _ in drawn]
    # now 2**63 - 1, 2**63, then ~1.8e18 (the time): a later snapshot gets a smaller ticket, with no warning;
    # correct: every ticket larger than the one before, or a warning saying the clock cannot count on
    assert tickets[0] < tickets[1] < tickets[2] or any(warning for _, warning in drawn)
