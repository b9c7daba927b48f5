"""Hostile review rev31h of fix31e (merge eef65ea; README section 1a, "Two exports of one day", and section 9's
thirty-first-session entry): the app-database export's per-day lock and snapshot tickets
(``HOME/.locks/app-export-dt=DAY.lock``, ``HOME/cache/app_export_snapshots/dt=DAY.json``, ``take_snapshot``,
``superseded``), the undated state merged under ``HOME/.locks/app-export-undated.lock``, ``mark_late``'s warnings and
the moved-row rule (every app row under a left id marks its day, whatever its identity).

Driven by a real PostgreSQL server started by the test (``tests/postgres_server.py``) and the real ``export_day``;
overlapping exports are made as test_fix31e does, by running a whole second export from the first one's progress
callback (after its snapshot, before its publish), then the schedule's loop (``late_days`` re-exported) and the next
nightly. Probes run by hand (same server helper, not kept as tests) drove subprocesses, threads and bind mounts.

Held (tried, no defect filed): a FIFO at the ticket's path (read as none without blocking, replaced by the record, the
day published); a ticket from the future (9.0e18, near the int64 limit) only makes later tickets count up past it, no
export is called superseded; garbage, a list, a string or negative ticket, a record over 4 KiB read as none; a
process holding the day's lock SIGKILLed: the next export of the day took the lock at once (0.23 s); a ranged export
of six days twice in one thread beside two threads exporting one of those days six times each: no deadlock, no error,
3.4 s (the file lock is never held across a statement that waits for a table lock: the table locks come before the
ticket's lock, and the publish holds no database session); ``HOME/cache`` bind-mounted read-only: the export
publishes, with warnings (the ticket twice, the undated state); ``HOME/.locks`` read-only: a clear refusal before
anything is written; the ticket and lock files hold integers and a pid only (no DSN, no secret), made with the umask;
the undated-state merge of two days' exports (a row dated by one and forgotten by the other stays right, and the state
re-reads each row's day at the next export, so a stale day there heals).

Measured: the two tests take 23 s together on this 2-CPU machine (about 2 s each in its body; the rest is the
server's start, one per test process, shared).

Noticed, not filed: a superseded export's report (``python -m pipelines.appdb``'s JSON, the asset's metadata) gives
the rows and sha256 of the files it did not publish, not the day's; a read-only ``HOME/cache`` repeats the ticket
warning (once at the snapshot, once at the publish); the refusal of a read-only ``HOME/.locks`` says "mount it
read-write to build" for an export; from a replica (or ``keep_exported_rows``) a row moved and reassigned is now in
two raw days with different content (documented: "both lines are in the raw zone"), which curation drops whole as
``conflicting_ranking``, where before fix31e the ranking reached the dataset with its old user (not run through a
build); ``moved_rows`` skips a new day whose raw file holds the id, whatever that line's identity (reachable only by a
row moved back and forth past the check's window, or an id reused after a restore: not run); a kill between the
publish's renames and its ticket record lets an older overlapping export publish over the day (a microsecond window).

Each test below is a defect confirmed by running it, ranked by severity, filed as a strict xfail whose assertions
state the correct behaviour. Both have one cause: a late marker (``HOME/cache/app_export_late/dt=DAY``) carries no
order, so an export clears, from its older snapshot, a marker set after that snapshot by an export that saw newer
rows; both lose a row from the raw zone for good (the day is past every later late-row check). Both were fixed the
same day (fix31h, ``tests/unit/test_fix31h.py``) and their xfail markers removed: a marker records a ticket drawn
as it is set from the clock every day's snapshot tickets come from, an export clears it only with a larger ticket,
and the checked days found whole are cleared only once the export published (a superseded export clears none).
"""
from __future__ import annotations

import gzip
import json

import psycopg
from appdb_fixtures import NIGHTLY, NOW, app_db

from formats.home import DataHome
from pipelines.appdb.export import export_day, late_days
from tests.postgres_server import create_app_database, postgres_server  # noqa: F401 - fixture


def _ids(home: DataHome, day: str) -> list:
    path = home.raw_file(day, "rankings")
    lines = gzip.decompress(path.read_bytes()).splitlines() if path.exists() else []
    return [json.loads(line)["ranking_id"] for line in lines]


def _rank(conn, day: str, ranking_id: int, user_id: int = 1) -> None:
    conn.execute("INSERT INTO rankings (ranking_id, created_at, user_id, image_0_uid, image_1_uid, prompt) "
                 "VALUES (%s, %s, %s, 'u0', 'u1', 'p')", (ranking_id, f"{day} 12:00", user_id))


def _next_night(home: DataHome, dsn: str, night: str) -> None:
    """The nightly export of ``night``, then what the schedule re-exports (the days marked late)."""
    export_day(home, dsn, night, NIGHTLY, now=NOW)
    for marked in late_days(home):
        export_day(home, dsn, marked, NIGHTLY, now=NOW)


# --- 1. an export publishing an older snapshot clears the marker a moved row's new day was given since ---------------

def test_an_older_snapshot_never_clears_the_marker_of_a_row_moved_into_its_day(postgres_server,  # noqa: F811
                                                                             tmp_path):
    dsn, home = app_db(postgres_server), DataHome.at(tmp_path / "home")
    old_day, new_day = "2023-03-01", "2023-03-20"       # 03-01 is past 03-20's late-row check (03-04 .. 03-17)
    with psycopg.connect(dsn) as conn:
        _rank(conn, old_day, 1)
        _rank(conn, new_day, 2)
    for day in (old_day, new_day):
        export_day(home, dsn, day, NIGHTLY, now=NOW)
    seen = []

    def meanwhile(message: str) -> None:
        """While a re-export of 03-01 (a ranged backfill, a schedule's re-export) writes, its snapshot taken: the app
        moves ranking 2 to 03-01 (created_at corrected) and the nightly export of 03-20 runs whole."""
        if message.startswith("rankings") and not seen:
            with psycopg.connect(dsn) as conn:
                conn.execute("UPDATE rankings SET created_at = %s WHERE ranking_id = 2", (f"{old_day} 08:00",))
            newer = export_day(home, dsn, new_day, NIGHTLY, now=NOW)
            seen.append((newer.published, _ids(home, new_day), late_days(home)))

    older = export_day(home, dsn, old_day, NIGHTLY, now=NOW, progress=meanwhile)
    # 03-20's export took ranking 2 out of its day and marked 03-01, which must now hold it
    assert seen == [("updated", [], [old_day])]
    # 03-01's export (no other export of 03-01: not superseded) published its snapshot, taken before the move, and
    # cleared 03-01's marker: now [] and 03-01 holds [1]
    assert older.published == "unchanged"
    assert late_days(home) == [old_day]
    _next_night(home, dsn, "2023-03-21")
    assert _ids(home, old_day) == [1, 2]
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT created_at::date::text FROM rankings WHERE ranking_id = 2").fetchone() \
            == (old_day,)


# --- 2. a superseded export clears a checked day's marker (README: it "clears no marker") ----------------------------

def test_a_superseded_export_clears_no_marker_of_a_checked_day(postgres_server, tmp_path):  # noqa: F811
    dsn, home = app_db(postgres_server), DataHome.at(tmp_path / "home")
    checked, day = "2023-03-04", "2023-03-20"           # 03-20's late-row check: 03-04 .. 03-17, 03-04 the oldest
    with psycopg.connect(dsn) as conn:
        _rank(conn, checked, 1)
        _rank(conn, day, 2)
    for each in (checked, day):
        export_day(home, dsn, each, NIGHTLY, now=NOW)
    seen = []

    def meanwhile(message: str) -> None:
        """While export A of 03-20 (the schedule's) writes, its snapshot taken: a ranking is committed late into
        03-04, and export B of 03-20 (an operator's `pickapic build --from-app-db`) runs whole."""
        if message.startswith("rankings") and not seen:
            with psycopg.connect(dsn) as conn:
                _rank(conn, checked, 5)
            newer = export_day(home, dsn, day, NIGHTLY, now=NOW)
            seen.append((sorted(newer.late), late_days(home)))

    older = export_day(home, dsn, day, NIGHTLY, now=NOW, progress=meanwhile)
    assert seen == [([checked], [checked])]             # B's check found 03-04 late and marked it
    assert older.published == "superseded"              # A published nothing ...
    stayed = late_days(home)
    _next_night(home, dsn, "2023-03-21")                # 03-21 checks 03-05 .. 03-18: 03-04 no more
    # ... but its check (LateCheck.finish, before the publish's ticket test) cleared 03-04's marker from A's older
    # snapshot: now [] and 03-04 holds [1] after the next night and the schedule
    assert stayed == [checked]
    assert _ids(home, checked) == [1, 5]
