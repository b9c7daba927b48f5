"""Review rev34g: third pass over the app export from PostgreSQL after fix33d / fix33l (README 1a, section 9's rev33d
and rev33l bullets): ``pipelines/appdb/export.py`` (the superseded export's withdrawal of its blobs, ``named_uids``,
``owner.json``, the staging folders and ``_publish``), ``pipelines/appdb/blobs.py``, ``pipelines/appdb/connection.py``
and ``pipelines/ingest/uidindex.py``.

How: the real ``export_day`` against the PostgreSQL server the test starts (``tests/postgres_server.py``), a local
image store, real gzip day files, real staging folders and their ``flock``; an export interrupted by a real SIGKILL in
a forked child (``_in_child_killed``: the child kills itself at the named step, so nothing of it runs after the
signal), then the next night's export rerun in the parent; the erasure of README 1a (rows deleted, the day
re-exported, the images deleted) run from inside the older export's blob copies, as reviews rev32c / rev33d do.

What held up (no test): every error of ``connect()`` for 21 hostile DSNs (a URL with a broken IPv6 host, bad
``sslmode``/``port``/``connect_timeout``/``target_session_attrs``/``service``/``require_auth`` values holding the
password, a percent-encoded password, a password in ``options``, ``passfile``, ``sslkey`` paths) names the server and
never the password or a piece of it; hostile column contents (ids at -2**31 and 2**31-1, ``gs`` NaN / Infinity / -0 /
1e308 / 5e-324, a prompt holding an escaped ``"image_uid": "<uuid>"`` member and a JSON ``\\u0000``, U+2028 / BOM /
RLO in a name, a 5,000-character email, a uid with a leading blank, a created_at at 23:59:59.999999) are exported
as valid lines where JSON allows and the ingest reconciles every line (accepted or quarantined with its reason:
``invalid_value``, ``invalid_uid``, ``missing_field``); a prompt cannot spoof a uid to the byte search (its quotes
are escaped); ``uidindex`` takes the file's stat before the lazy open and checks it again after the read, so a day
swapped in mid-read leaves no index (no stale index trusted for the new file); ``named_uids`` reads the staged files
before listing the raw days, so a staging folder renamed into its day meanwhile is read there; an export killed
mid-write of a day file leaves only its private staging folder, removed by the next export once stale.

Measured (this machine, 2 shared CPUs): each test below 1-8 s, most of it the server's start and the child's export.

Noticed, not filed: an export that fails with an exception (not a kill) between its blob copies and its publish
(``DayFolderRefused``, a full disk) loses its record of created blobs the same way as test 1 (one cause: the record
is an unnamed ``TemporaryFile`` that only a superseded export that reaches its publish step reads), and so does a
withdrawal killed half-way; a kill between ``_publish``'s exchange and its cleanup leaves the old day at a staging
name, reported by ``raw_zone_problems`` as an unexpected entry until the next export removes it (60 s later at the
earliest); ``remove_stale_staging`` runs only inside an export that reached its snapshot, so a home whose exports
keep failing earlier (database down) keeps reporting a dead export's folder; a kill between ``_publish``'s swap and
its record of the ticket (rev31h's microsecond window) was not re-run; ``remove_stale_staging`` reports a folder as
removed even where ``rmtree(ignore_errors=True)`` could not remove it (another account's).

Each test below is a defect confirmed by running it, ranked by severity, filed as a strict xfail whose assertions
state the correct behaviour. All four were fixed the same day (fix34g, ``tests/unit/test_fix34g.py``) and their
markers removed: an export's blobs and temporary files are named in ``raw/images/.exports/<staging name>`` before each
copy, and the next export removes what one that did not finish left; the staged day takes its mode before its
rename or swap; the staging folder is held by an OFD lock that a probe tests without taking a lock. Test 3's kill
point moved from ``export.folder_mode`` (now called before the rename) to right after the rename, the moment it is
about; its assertions are unchanged.
"""
from __future__ import annotations

import gzip
import json
import os
import signal
import time
import uuid
from pathlib import Path

import psycopg

from formats.home import DataHome
from pipelines.appdb import blobs
from pipelines.appdb.export import AppExportConfig, export_day
from pipelines.cachesweep import sweep_cache_temps
from tests.postgres_server import create_app_database, postgres_server  # noqa: F401 - fixture
from tests.unit.test_hostile_rev32c import NOW, _rank

DAY = "2023-03-01"
CONFIG = AppExportConfig(lag_minutes=60, lookback_days=2)


def _named(home: DataHome, day: str) -> list[str]:
    path = home.raw_file(day, "images")
    lines = gzip.decompress(path.read_bytes()).splitlines() if path.exists() else []
    return [json.loads(line)["image_uid"] for line in lines]


def _in_child_killed(body) -> None:
    """Run ``body`` in a forked child that SIGKILLs itself where ``body`` says (a kill -9 of the export, an OOM
    kill, a node lost): nothing of it runs after the signal, no finally, no cleanup."""
    pid = os.fork()
    if pid == 0:     # the child: never returns into pytest
        try:
            body()
        except BaseException:
            import traceback
            traceback.print_exc()
        finally:
            os._exit(3)    # reached only where the body did not kill itself
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, status


def _age_staging(home: DataHome) -> None:
    """An hour later: the killed export's staging folder is stale (untouched past STALE_AFTER_S)."""
    old = time.time() - 3600
    for entry in home.raw_logs.iterdir():
        if entry.name.startswith(".dt="):
            os.utime(entry, (old, old))


def _app(postgres_server, tmp_path: Path, uids: list[str]) -> tuple[str, DataHome, Path]:  # noqa: F811
    dsn = create_app_database(postgres_server, f"rev34g_{uuid.uuid4().hex[:8]}")
    home = DataHome.at(tmp_path / "home")
    store = tmp_path / "store"
    store.mkdir()
    for uid in uids:
        (store / f"{uid}.png").write_bytes(b"\x89PNG " + uid.encode() * 64)
    return dsn, home, store


# --- 1. an export killed after its blob copies keeps the erased account's images it copied back, for good ---------

def test_an_export_killed_after_its_copies_keeps_no_erased_image_it_copied_back(postgres_server, tmp_path,  # noqa: F811
                                                                               monkeypatch):
    erased, kept = str(uuid.UUID(int=5)), str(uuid.UUID(int=6))
    dsn, home, store = _app(postgres_server, tmp_path, [erased, kept])
    with psycopg.connect(dsn) as conn:
        conn.execute("INSERT INTO users (user_id, created_at, email) VALUES (5, '2023-03-01 01:00', 'x@example.com')")
        for uid, user in ((erased, 5), (kept, 1)):
            conn.execute("INSERT INTO images (created_at, image_uid, user_id, prompt) "
                         "VALUES ('2023-03-01 02:00', %s, %s, 'p')", (uid, user))
        _rank(conn, DAY, 1, user_id=5)
        _rank(conn, DAY, 2, user_id=1)
    assert export_day(home, dsn, DAY, CONFIG, now=NOW, image_store=str(store)).blobs["copied"] == 2

    def older_export_killed_after_its_copies() -> None:
        real_copy, real_copy_blobs, seen, depth = blobs._copy_one, blobs.copy_blobs, [], []

        def copy_one(*args, **kwargs) -> str:
            if not seen:   # README 1a's erasure, while the older export copies: rows, re-export, images deleted
                seen.append(1)
                with psycopg.connect(dsn) as conn:
                    for table in ("rankings", "images", "users"):
                        conn.execute(f"DELETE FROM {table} WHERE user_id = 5")
                assert export_day(home, dsn, DAY, CONFIG, now=NOW, image_store=str(store)).published == "updated"
                (home.raw_images / f"{erased}.png").unlink()
            return real_copy(*args, **kwargs)

        def copy_blobs(*args, **kwargs) -> dict:
            depth.append(1)
            counts = real_copy_blobs(*args, **kwargs)
            depth.pop()
            if depth:                           # the erasure's own re-export, inside the older one's copies
                return counts
            assert counts["copied"] == 1        # the erased image, copied back for the older snapshot
            os.kill(os.getpid(), signal.SIGKILL)   # killed before its superseded check and withdrawal
            return counts

        monkeypatch.setattr(blobs, "_copy_one", copy_one)
        monkeypatch.setattr(blobs, "copy_blobs", copy_blobs)
        export_day(home, dsn, DAY, CONFIG, now=NOW, image_store=str(store))

    _in_child_killed(older_export_killed_after_its_copies)
    assert _named(home, DAY) == [kept]                   # the erasure's re-export is the published day
    _age_staging(home)
    rerun = export_day(home, dsn, DAY, CONFIG, now=NOW, image_store=str(store))   # the next night
    assert rerun.published != "superseded" and _named(home, DAY) == [kept]
    assert (home.raw_images / f"{kept}.png").is_file()
    # no file names the erased account's image: the export that copied it back must not leave it in raw/images
    assert not (home.raw_images / f"{erased}.png").exists(), rerun.warnings


# --- 2. a blob copy killed mid-write leaves its temporary file in raw/images for good ------------------------------

def test_a_blob_copy_killed_before_its_rename_leaves_no_temporary_file_in_raw_images(postgres_server,  # noqa: F811
                                                                                     tmp_path, monkeypatch):
    uid = str(uuid.UUID(int=9))
    dsn, home, store = _app(postgres_server, tmp_path, [uid])
    with psycopg.connect(dsn) as conn:
        conn.execute("INSERT INTO images (created_at, image_uid, user_id, prompt) "
                     "VALUES ('2023-03-01 02:00', %s, 1, 'p')", (uid,))
        _rank(conn, DAY, 1)

    def export_killed_mid_copy() -> None:
        def check_start(old, new: Path) -> None:   # the copy is written, not yet renamed into place
            os.kill(os.getpid(), signal.SIGKILL)

        monkeypatch.setattr(blobs, "_check_start", check_start)
        export_day(home, dsn, DAY, CONFIG, now=NOW, image_store=str(store))

    _in_child_killed(export_killed_mid_copy)
    left = sorted(p.name for p in home.raw_images.iterdir() if p.name.endswith(".tmp"))
    assert len(left) == 1 and left[0].startswith(f".{uid}.png."), left     # what the kill left
    _age_staging(home)
    rerun = export_day(home, dsn, DAY, CONFIG, now=NOW, image_store=str(store))
    assert rerun.blobs["copied"] == 1 and (home.raw_images / f"{uid}.png").is_file()
    sweep_cache_temps(home)
    # the killed copy's temporary file (a whole blob, up to features.max_bytes + 1) must not stay for good
    assert sorted(p.name for p in home.raw_images.iterdir() if p.name.endswith(".tmp")) == []


# --- 3. an export killed between its publish's rename and its chmod leaves the day private (0700) for good ---------

def test_an_export_killed_between_its_rename_and_its_chmod_leaves_a_readable_day(postgres_server,  # noqa: F811
                                                                                 tmp_path, monkeypatch):
    dsn, home, _ = _app(postgres_server, tmp_path, [])
    with psycopg.connect(dsn) as conn:
        _rank(conn, DAY, 1)
    old_umask = os.umask(0o022)
    try:
        def export_killed_after_its_rename() -> None:
            # fix34g: the kill point was ``export.folder_mode`` (called between the rename and the chmod); the fix
            # chmods the staged folder before its rename, so that call now comes before the rename and a kill there
            # publishes nothing (the rerun's day is then a "new day"). The kill is now right after the rename, the
            # moment the test is about; its assertions are unchanged.
            real_rename = os.rename

            def rename(source, target, *args, **kwargs) -> None:    # the day is renamed into place
                real_rename(source, target, *args, **kwargs)
                if Path(target) == home.raw_day(DAY):
                    os.kill(os.getpid(), signal.SIGKILL)

            monkeypatch.setattr(os, "rename", rename)
            export_day(home, dsn, DAY, CONFIG, now=NOW)

        _in_child_killed(export_killed_after_its_rename)
        rerun = export_day(home, dsn, DAY, CONFIG, now=NOW)      # the next night: nothing changed in the app
    finally:
        os.umask(old_umask)
    assert rerun.published == "unchanged"
    # the published day takes the home's mode (umask 022: 0755), so the home's group and other readers can list it
    assert oct(home.raw_day(DAY).stat().st_mode & 0o777) == oct(0o755)


# --- 4. a raw-zone scan probing a staging folder the instant its export locks it fails that export -----------------

def test_a_raw_zone_scan_probing_a_new_staging_folder_never_fails_its_export(postgres_server, tmp_path,  # noqa: F811
                                                                            monkeypatch):
    import fcntl

    from pipelines.appdb import export

    dsn, home, _ = _app(postgres_server, tmp_path, [])
    with psycopg.connect(dsn) as conn:
        _rank(conn, DAY, 1)
    real_hold, probed = export.hold_staging, []

    def hold_staging(staging: Path) -> int:
        # another process's scan_raw_zone is inside staging_in_use(staging) right now: between its open and its
        # close it holds the exclusive flock it probes with (the same calls, stopped at that moment)
        fd = os.open(staging, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            probed.append(staging)
            return real_hold(staging)
        finally:
            os.close(fd)     # the probe ends (it says "not in use": the folder is an unexpected entry to it)

    monkeypatch.setattr(export, "hold_staging", hold_staging)
    report = export_day(home, dsn, DAY, CONFIG, now=NOW)
    assert probed and report.published == "new day"
