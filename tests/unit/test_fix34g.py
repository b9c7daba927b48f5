"""Fix34g: the defects of review rev34g (``tests/unit/test_hostile_rev34g.py``) and the neighbours of their fixes.

- ``blobs.BlobRecord`` (``raw/images/.exports/<staging name>``): each blob copy's line (uid and temporary file) is in
  the record before the copy makes its file, ``over`` for a capped copy completed over its old copy; a normal export
  removes its record; one failing with an exception before its publish leaves it, and the next export withdraws the
  blobs no file names (the review's "noticed, not filed" exception case).
- ``export.withdraw_interrupted_exports``: only records of exports that no longer run, only the temporary files the
  record names (never another program's file at a look-alike name, nor a link), blobs a file names kept, a record a
  file stops kept with a warning; the capped markers' temporary files swept while no batch of copies runs.
- ``rawzone.staging_in_use`` / ``export.hold_staging``: the probe takes no lock the hold could find taken (an OFD lock
  tested with ``F_OFD_GETLK``), a pre-fix34g export's exclusive ``flock`` is still seen, and the ``flock`` fallback
  retries past a probe's shared lock.
- ``export._publish``: the updated day's mode and group are the staged folder's before the swap.

Small homes, in-process calls, real files and locks; the PostgreSQL server the tests start for the two whole exports.
"""
from __future__ import annotations

import errno
import fcntl
import gzip
import json
import os
import threading
import time
import uuid
from pathlib import Path

import psycopg
import pytest

from formats import rawzone
from formats.home import DataHome
from formats.locks import writing_shared
from pipelines.appdb import blobs, export
from pipelines.appdb.export import AppExportConfig, export_day, hold_staging, withdraw_interrupted_exports
from tests.postgres_server import create_app_database, postgres_server  # noqa: F401 - fixture
from tests.unit.test_hostile_rev32c import NOW, _rank

DAY = "2023-03-01"
CONFIG = AppExportConfig(lag_minutes=60, lookback_days=2)
UIDS = [str(uuid.UUID(int=i + 1)) for i in range(6)]
DEAD = f".dt={DAY}.export-4242-0badc0de"


def _home(tmp_path: Path) -> DataHome:
    home = DataHome.at(tmp_path / "home")
    home.raw_images.mkdir(parents=True)
    home.raw_logs.mkdir(parents=True)
    return home


def _published(home: DataHome, uids: list[str], day: str = DAY) -> None:
    path = home.raw_file(day, "images")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(b"".join(json.dumps({"image_id": i, "image_uid": uid}).encode() + b"\n"
                                            for i, uid in enumerate(uids))))


def _record(home: DataHome, name: str, lines: list[str]) -> Path:
    folder = home.raw_images / blobs.EXPORTS
    folder.mkdir(exist_ok=True)
    path = folder / name
    path.write_text("".join(line + "\n" for line in lines))
    return path


# --- the record ----------------------------------------------------------------------------------------------------

def test_each_copy_is_in_the_record_before_its_temporary_file_exists(tmp_path: Path, monkeypatch) -> None:
    home = _home(tmp_path)
    store = tmp_path / "store"
    store.mkdir()
    for uid in UIDS[:3]:
        (store / f"{uid}.png").write_bytes(b"png" * 100)
    (home.raw_images / f"{UIDS[0]}.png").write_bytes(b"png" * 100)        # present: no line
    seen: list[tuple[str, bool]] = []
    real_blob_temp = blobs._blob_temp

    def blob_temp(target: Path, note=None):
        def noted(token: str) -> None:
            note(token)
            tmp = target.parent / f".{target.name}.{token}.tmp"
            seen.append((token, not tmp.exists() and token in record.path.read_text()))
        return real_blob_temp(target, noted)

    monkeypatch.setattr(blobs, "_blob_temp", blob_temp)
    record = blobs.BlobRecord.create(home, DEAD)
    spill = open(tmp_path / "spill", "w+b")
    spill.write("".join(uid + "\n" for uid in UIDS[:3]).encode())
    with spill:
        counts = blobs.copy_blobs(spill, 0, str(store), home, 2, record=record)
    assert counts["copied"] == 2 and counts["present"] == 1
    assert len(seen) == 2 and all(ok for _, ok in seen)
    with record.reader() as handle:
        lines = sorted(blobs.record_lines(handle))
    assert sorted(uid for uid, _, _ in lines) == sorted(UIDS[1:3]) and not any(over for _, _, over in lines)
    assert sorted(token for _, token, _ in lines) == sorted(token for token, _ in seen)
    assert not list(home.raw_images.glob(".*.tmp"))                       # renamed: none left
    record.close(remove=True)
    assert not record.path.exists()


def test_a_record_is_never_written_through_a_link_nor_over_an_entry(tmp_path: Path) -> None:
    home = _home(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (home.raw_images / blobs.EXPORTS).symlink_to(elsewhere)
    with pytest.raises(FileExistsError, match="not a folder"):
        blobs.BlobRecord.create(home, DEAD)
    assert list(elsewhere.iterdir()) == []
    (home.raw_images / blobs.EXPORTS).unlink()
    _record(home, DEAD, ["planted"])
    with pytest.raises(FileExistsError):
        blobs.BlobRecord.create(home, DEAD)
    assert (home.raw_images / blobs.EXPORTS / DEAD).read_text() == "planted\n"


def test_a_capped_copy_completed_is_recorded_as_over_and_never_withdrawn(tmp_path: Path) -> None:
    home = _home(tmp_path)
    store = tmp_path / "store"
    store.mkdir()
    uid = UIDS[0]
    (store / f"{uid}.png").write_bytes(bytes(range(256)) * 8)
    assert blobs._copy_one(str(store), uid, home.raw_images, max_bytes=100) == "too_large"
    lines: list[str] = []
    assert blobs._copy_one(str(store), uid, home.raw_images, max_bytes=10_000, record=lines.append) == "copied"
    assert len(lines) == 1 and lines[0].startswith(f"{uid} ") and lines[0].endswith(" over\n")
    path = _record(home, DEAD, [line.rstrip("\n") for line in lines])
    with open(path, "rb") as handle:
        assert blobs.withdraw_blobs(handle, home, lambda batch: set()) == (0, True)
    assert (home.raw_images / f"{uid}.png").stat().st_size == 2048       # not the export's to withdraw


def test_record_lines_skip_garbage_and_long_lines_without_reading_them_whole(tmp_path: Path) -> None:
    path = tmp_path / "record"
    token = "0123456789ab"
    path.write_bytes(b"x" * 200_000 + b"\n" + f"{UIDS[0]} {token}\n".encode() + b"not a line\n"
                     + f"{UIDS[1]} {token} over\n".encode() + f"{UIDS[2]}\n".encode() + f"{UIDS[3]} {token}".encode())
    with open(path, "rb") as handle:
        assert list(blobs.record_lines(handle)) == [(UIDS[0], token, False), (UIDS[1], token, True),
                                                    (UIDS[2], "", False), (UIDS[3], token, False)]


# --- what an export that did not finish left ----------------------------------------------------------------------

def test_the_next_export_removes_only_what_a_dead_exports_record_names(tmp_path: Path) -> None:
    home = _home(tmp_path)
    token, other = "00000000abcd", "ffffffff0000"
    for uid in UIDS[:3]:
        (home.raw_images / f"{uid}.png").write_bytes(b"png")
    _published(home, [UIDS[1]])
    _published(home, [UIDS[2]], "2023-02-27")                             # another day names it: kept (rev33d)
    mine = home.raw_images / f".{UIDS[3]}.png.{token}.tmp"
    mine.write_bytes(b"half a blob")
    foreign = home.raw_images / f".{UIDS[3]}.png.{other}.tmp"             # not its token: another writer's
    foreign.write_bytes(b"someone else's")
    target = tmp_path / "outside"
    target.write_bytes(b"keep me")
    (home.raw_images / f".{UIDS[4]}.png.{token}.tmp").symlink_to(target)  # a link at its name: never removed
    record = _record(home, DEAD, [f"{UIDS[0]} {token}", f"{UIDS[1]} {token}", f"{UIDS[2]} {token}",
                                  f"{UIDS[3]} {token}", f"{UIDS[4]} {token}"])
    notes = withdraw_interrupted_exports(home)
    assert not (home.raw_images / f"{UIDS[0]}.png").exists()              # named by no file: withdrawn
    assert (home.raw_images / f"{UIDS[1]}.png").exists() and (home.raw_images / f"{UIDS[2]}.png").exists()
    assert not mine.exists() and foreign.exists() and target.read_bytes() == b"keep me"
    assert not record.exists()
    assert len(notes) == 1 and DEAD in notes[0] and "1 temporary blob file(s) and 1 image blob(s)" in notes[0]
    assert withdraw_interrupted_exports(home) == []                        # done once


def test_a_running_exports_record_is_never_touched(tmp_path: Path) -> None:
    home = _home(tmp_path)
    staging = home.raw_logs / DEAD
    staging.mkdir(mode=0o700)
    (home.raw_images / f"{UIDS[0]}.png").write_bytes(b"png")
    tmp = home.raw_images / f".{UIDS[0]}.png.00000000abcd.tmp"
    tmp.write_bytes(b"being written")
    record = _record(home, DEAD, [f"{UIDS[0]} 00000000abcd"])
    held = hold_staging(staging)
    try:
        assert withdraw_interrupted_exports(home) == []
        assert record.exists() and tmp.exists() and (home.raw_images / f"{UIDS[0]}.png").exists()
    finally:
        os.close(held)
    withdraw_interrupted_exports(home)                                     # now it is dead
    assert not record.exists() and not tmp.exists()


def test_a_record_an_unreadable_file_stops_stays_for_the_next_export(tmp_path: Path) -> None:
    home = _home(tmp_path)
    (home.raw_images / f"{UIDS[0]}.png").write_bytes(b"png")
    path = home.raw_file(DAY, "images")
    path.parent.mkdir(parents=True)
    path.write_bytes(gzip.compress(b'{"image_uid": "x"}\n')[:-6])          # cut short: cannot be read whole
    record = _record(home, DEAD, [f"{UIDS[0]} 00000000abcd"])
    notes = withdraw_interrupted_exports(home)
    assert record.exists() and (home.raw_images / f"{UIDS[0]}.png").exists()
    assert len(notes) == 1 and "cannot be read whole" in notes[0] and "the others stay" in notes[0]
    path.unlink()                                                          # readable again (no file: names none)
    withdraw_interrupted_exports(home)
    assert not record.exists() and not (home.raw_images / f"{UIDS[0]}.png").exists()


def test_capped_marker_temporary_files_are_swept_only_while_no_batch_of_copies_runs(tmp_path: Path) -> None:
    home = _home(tmp_path)
    capped = home.raw_images / blobs.CAPPED
    capped.mkdir()
    left = capped / f".{UIDS[0]}.png.0123456789ab.tmp"
    left.write_bytes(b"100")
    other = capped / ".notes.txt.0123456789ab.tmp"                          # not a marker's: left alone
    other.write_bytes(b"x")
    with writing_shared(home.locks / blobs.BLOBS_LOCK, "a batch of blob copies") as held:
        assert held
        withdraw_interrupted_exports(home)
        assert left.exists()                                               # a batch runs: its marker may be it
    withdraw_interrupted_exports(home)
    assert not left.exists() and other.exists()


# --- the staging folder's lock -------------------------------------------------------------------------------------

def test_a_probe_takes_no_lock_and_sees_every_kind_of_hold(tmp_path: Path, monkeypatch) -> None:
    staging = tmp_path / DEAD
    staging.mkdir()
    assert not rawzone.staging_in_use(staging)
    probe = os.open(staging, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(probe, fcntl.LOCK_SH)                                   # a probe's shared flock, held
        held = hold_staging(staging)                                       # the export's hold is not refused
    finally:
        os.close(probe)
    try:
        assert rawzone.staging_in_use(staging) and rawzone.staging_in_use(staging)
        probe = os.open(staging, os.O_RDONLY | os.O_DIRECTORY)
        # the probes left nothing exclusive taken (the hold's own flock is shared since fix34i, for old releases)
        fcntl.flock(probe, fcntl.LOCK_SH | fcntl.LOCK_NB)
        os.close(probe)
    finally:
        os.close(held)
    assert not rawzone.staging_in_use(staging)
    old = os.open(staging, os.O_RDONLY | os.O_DIRECTORY)                   # an export before fix34g: an flock
    try:
        fcntl.flock(old, fcntl.LOCK_EX | fcntl.LOCK_NB)                     # nothing left taken at all
        assert rawzone.staging_in_use(staging)
    finally:
        os.close(old)


def test_without_ofd_locks_the_hold_is_an_flock_that_waits_out_a_probe(tmp_path: Path, monkeypatch) -> None:
    def no_ofd(fd: int, command: int, kind: int) -> bytes:
        raise OSError(errno.EINVAL, "no OFD locks here (simulated)")

    monkeypatch.setattr(rawzone, "_ofd_lock", no_ofd)
    staging = tmp_path / DEAD
    staging.mkdir()
    probe = os.open(staging, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(probe, fcntl.LOCK_SH)                                       # a probe, ending 0.2 s later
    threading.Timer(0.2, os.close, (probe,)).start()
    started = time.monotonic()
    held = hold_staging(staging)
    try:
        assert 0.1 < time.monotonic() - started < rawzone.HOLD_RETRY_S
        assert rawzone.staging_in_use(staging)
    finally:
        os.close(held)
    assert not rawzone.staging_in_use(staging)


# --- whole exports ------------------------------------------------------------------------------------------------

def _app(postgres_server, tmp_path: Path, uids: list[str]) -> tuple[str, DataHome, Path]:  # noqa: F811
    dsn = create_app_database(postgres_server, f"fix34g_{uuid.uuid4().hex[:8]}")
    home = DataHome.at(tmp_path / "home")
    store = tmp_path / "store"
    store.mkdir()
    for uid in uids:
        (store / f"{uid}.png").write_bytes(b"\x89PNG " + uid.encode() * 64)
    return dsn, home, store


def test_an_export_failing_before_its_publish_leaves_its_record_to_the_next(postgres_server, tmp_path,  # noqa: F811
                                                                          monkeypatch):
    erased, kept = UIDS[0], UIDS[1]
    dsn, home, store = _app(postgres_server, tmp_path, [erased, kept])
    with psycopg.connect(dsn) as conn:
        conn.execute("INSERT INTO users (user_id, created_at, email) VALUES (5, '2023-03-01 01:00', 'x@example.com')")
        for uid, user in ((erased, 5), (kept, 1)):
            conn.execute("INSERT INTO images (created_at, image_uid, user_id, prompt) "
                         "VALUES ('2023-03-01 02:00', %s, %s, 'p')", (uid, user))
        _rank(conn, DAY, 1)

    def refused(*args, **kwargs) -> None:
        raise export.DayFolderRefused("refused (simulated)")

    with monkeypatch.context() as patch:
        patch.setattr(export, "_publish", refused)
        with pytest.raises(export.DayFolderRefused):
            export_day(home, dsn, DAY, CONFIG, now=NOW, image_store=str(store))
    records = list((home.raw_images / blobs.EXPORTS).iterdir())
    assert len(records) == 1 and (home.raw_images / f"{erased}.png").exists()   # nothing published names them
    with psycopg.connect(dsn) as conn:                                     # README 1a's erasure
        for table in ("rankings", "images", "users"):
            conn.execute(f"DELETE FROM {table} WHERE user_id = 5")
    report = export_day(home, dsn, DAY, CONFIG, now=NOW, image_store=str(store))
    assert report.published == "new day"
    assert not (home.raw_images / f"{erased}.png").exists() and (home.raw_images / f"{kept}.png").exists()
    assert any(records[0].name in line for line in report.warnings), report.warnings
    assert not (home.raw_images / blobs.EXPORTS).exists()             # its own record is gone, and the folder


def test_an_updated_day_has_its_mode_and_group_before_the_swap(postgres_server, tmp_path, monkeypatch):  # noqa: F811
    dsn, home, _ = _app(postgres_server, tmp_path, [])
    with psycopg.connect(dsn) as conn:
        _rank(conn, DAY, 1)
    old_umask = os.umask(0o022)
    try:
        assert export_day(home, dsn, DAY, CONFIG, now=NOW).published == "new day"
        os.chmod(home.raw_day(DAY), 0o750)                                  # an operator's mode
        with psycopg.connect(dsn) as conn:
            _rank(conn, DAY, 2)
        real_exchange, modes = export.exchange, []

        def exchange(first: Path, second: Path) -> bool:
            modes.append(oct(os.stat(first).st_mode & 0o7777))               # the staged day, at the swap
            return real_exchange(first, second)

        monkeypatch.setattr(export, "exchange", exchange)
        assert export_day(home, dsn, DAY, CONFIG, now=NOW).published == "updated"
    finally:
        os.umask(old_umask)
    assert modes == [oct(0o750)] and oct(home.raw_day(DAY).stat().st_mode & 0o777) == oct(0o750)
