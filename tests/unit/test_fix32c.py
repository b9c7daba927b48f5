"""Fix32c: the defects of review rev32c (``tests/unit/test_hostile_rev32c.py``) and their neighbours.

- each folder of the app export's state in ``HOME/cache`` records the home it belongs to (``owner.json``): an
  export into another home that reaches it (a linked cache, a link at one of its folders) refuses, naming both
  homes; a copy of the folder (``cp -a`` of a home with a real cache, a restore) is the copy's own;
- a superseded export stops copying blobs once a newer export published the day, and removes those it wrote into
  raw/images that the published day does not name (an erased account's);
- the ticket clock stops at 2**63 - 1 with a warning, never restarting from the time; ``mark_late`` passes on the
  clock's warning.

Driven in-process (the claim, the clock, the blob copy against a local store); one test runs the real export
against the PostgreSQL server the test starts (``tests/postgres_server.py``)."""
from __future__ import annotations

import gzip
import json
import shutil
import uuid
from pathlib import Path

import psycopg
import pytest

from formats.home import DataHome
from pipelines.appdb import blobs
from pipelines.appdb.export import (
    CACHE_OWNER,
    LAST_TICKET,
    SNAPSHOT_ORDER,
    TICKET_CLOCK,
    CacheOfAnotherHome,
    claim_export_state,
    draw_ticket,
    export_day,
    export_state_folders,
    last_ticket,
    late_days,
    mark_late,
    named_uids,
    tickets_lock,
)
from tests.postgres_server import create_app_database, postgres_server  # noqa: F401 - fixture
from tests.unit.test_hostile_rev32c import NIGHTLY, NOW, _ids, _rank

DAY = "2023-03-01"
HEX = "0123456789ab"


def _owner(folder: Path) -> dict:
    return json.loads((folder / CACHE_OWNER).read_text())


# --- the cache's owner ------------------------------------------------------------------------------------------

def test_a_home_claims_its_export_state_and_a_copied_home_claims_its_copy(tmp_path: Path) -> None:
    home = DataHome.at(tmp_path / "home")
    claim_export_state(home)
    folders = export_state_folders(home)
    assert len(folders) == 5 and all(_owner(folder)["home"] == str(home.root) for folder in folders)   # five since fix35e (app_export_content)
    claim_export_state(home)                                     # its own: nothing refused
    copy = DataHome.at(tmp_path / "copy")
    shutil.copytree(home.root, copy.root, symlinks=True)         # cp -a: a cache folder of its own
    claim_export_state(copy)
    assert all(_owner(folder)["home"] == str(copy.root) for folder in export_state_folders(copy))
    claim_export_state(home)                                     # and the original's records are still its own
    assert all(_owner(folder)["home"] == str(home.root) for folder in folders)


def test_a_link_at_one_folder_of_the_state_to_another_homes_is_refused(tmp_path: Path) -> None:
    prod, other = DataHome.at(tmp_path / "prod"), DataHome.at(tmp_path / "other")
    claim_export_state(prod)
    other.cache.mkdir(parents=True)
    (other.cache / "app_export_late").symlink_to(prod.cache / "app_export_late")   # the sweep follows such a link
    with pytest.raises(CacheOfAnotherHome) as refused:
        claim_export_state(other)
    message = str(refused.value)
    assert "\n" not in message and str(prod.root) in message and str(other.root) in message
    assert str((prod.cache / "app_export_late").resolve()) in message      # the folder both reach, by its real path
    assert _owner(prod.cache / "app_export_late")["home"] == str(prod.root)   # nothing replaced
    (prod.cache / "app_export_late" / CACHE_OWNER).unlink()     # what the message says, once prod no longer uses it
    claim_export_state(other)
    with pytest.raises(CacheOfAnotherHome):
        claim_export_state(prod)


@pytest.mark.parametrize("content", [b"", b"not json", b"[1, 2]", b'{"home": 5}', b"x" * (9 << 10)])
def test_an_owner_record_the_export_did_not_write_is_replaced(tmp_path: Path, content: bytes) -> None:
    home = DataHome.at(tmp_path / "home")
    for folder in export_state_folders(home):
        folder.mkdir(parents=True)
        (folder / CACHE_OWNER).write_bytes(content)
    claim_export_state(home)
    assert all(_owner(folder)["home"] == str(home.root) for folder in export_state_folders(home))


def test_the_cache_sweep_removes_the_owner_records_temporary_files(tmp_path: Path) -> None:
    from pipelines.cachesweep import sweep_cache_temps

    home = DataHome.at(tmp_path / "home")
    claim_export_state(home)
    temps = []
    for folder in export_state_folders(home):
        temps.append(folder / f".{CACHE_OWNER}.{HEX}.tmp")
        temps[-1].write_bytes(b"partial")
    sweep_cache_temps(home)
    assert not any(temp.exists() for temp in temps)
    assert all((folder / CACHE_OWNER).is_file() for folder in export_state_folders(home))


def test_the_refused_export_writes_nothing_into_the_shared_cache(postgres_server, tmp_path):  # noqa: F811
    dsn = create_app_database(postgres_server, f"fix32c_{uuid.uuid4().hex[:8]}")
    shared = tmp_path / "fastdisk"
    shared.mkdir()
    prod, copy = DataHome.at(tmp_path / "prod"), DataHome.at(tmp_path / "copy")
    for home in (prod, copy):
        home.root.mkdir()
        home.cache.symlink_to(shared)
    with psycopg.connect(dsn) as conn:
        _rank(conn, DAY, 1)
    export_day(prod, dsn, DAY, NIGHTLY, now=NOW)
    before = {path: path.read_bytes() for path in sorted(shared.rglob("*")) if path.is_file()}
    with pytest.raises(CacheOfAnotherHome):
        export_day(copy, dsn, DAY, NIGHTLY, now=NOW)
    after = {path: path.read_bytes() for path in sorted(shared.rglob("*")) if path.is_file()}
    assert after == before and not copy.raw_file(DAY, "rankings").exists()
    assert late_days(prod) == [] and _ids(prod, DAY) == [1]


# --- the ticket clock's end ----------------------------------------------------------------------------------------

def _clock(home: DataHome, last: int) -> None:
    (home.cache / SNAPSHOT_ORDER).mkdir(parents=True, exist_ok=True)
    (home.cache / SNAPSHOT_ORDER / TICKET_CLOCK).write_text(json.dumps({"last": last}))


def test_the_clock_stops_at_its_end_with_a_warning_each_time(tmp_path: Path) -> None:
    home = DataHome.at(tmp_path / "home")
    _clock(home, LAST_TICKET - 1)
    with tickets_lock(home):
        first, none = draw_ticket(home)
        drawn = [draw_ticket(home) for _ in range(2)]
    assert first == LAST_TICKET and none == ""                 # the last ticket there is: no warning yet
    assert all(ticket == LAST_TICKET and "reached its end" in warning for ticket, warning in drawn)
    assert last_ticket(home) == LAST_TICKET                    # read back as a ticket, never as none


def test_a_ticket_asked_past_the_end_is_the_end_with_a_warning(tmp_path: Path) -> None:
    home = DataHome.at(tmp_path / "home")
    with tickets_lock(home):
        ticket, warning = draw_ticket(home, at_least=1 << 64)
    assert ticket == LAST_TICKET and str(home.cache / SNAPSHOT_ORDER) in warning


def test_mark_late_passes_on_the_clocks_warning(tmp_path: Path) -> None:
    home = DataHome.at(tmp_path / "home")
    _clock(home, LAST_TICKET)
    assert "reached its end" in mark_late(home, DAY, True) and late_days(home) == [DAY]
    assert mark_late(home, DAY, False, LAST_TICKET) == "" and late_days(home) == [DAY]   # a marker at the end stays
    assert mark_late(home, DAY, False) == "" and late_days(home) == []                  # an operator's clear


def test_mark_late_passes_on_a_clock_it_could_not_record(tmp_path: Path) -> None:
    home = DataHome.at(tmp_path / "home")
    (home.cache / SNAPSHOT_ORDER / TICKET_CLOCK).mkdir(parents=True)      # the clock cannot be written
    assert "could not be recorded" in mark_late(home, DAY, True) and late_days(home) == [DAY]


# --- the blobs of a superseded export --------------------------------------------------------------------------------

def _store(tmp_path: Path, count: int) -> tuple[Path, list[str]]:
    store = tmp_path / "store"
    store.mkdir()
    uids = [str(uuid.UUID(int=i + 1)) for i in range(count)]
    for uid in uids:
        (store / f"{uid}.png").write_bytes(b"\x89PNG " + uid.encode())
    return store, uids


def _spill(tmp_path: Path, uids: list[str]):
    spill = open(tmp_path / "spill", "w+b")
    spill.write("".join(uid + "\n" for uid in uids).encode("ascii"))
    return spill


def test_copy_blobs_lists_only_the_blobs_it_wrote_and_stops_when_told(tmp_path: Path) -> None:
    home = DataHome.at(tmp_path / "home")
    home.raw_images.mkdir(parents=True)
    store, uids = _store(tmp_path, 3)
    shutil.copy(store / f"{uids[0]}.png", home.raw_images / f"{uids[0]}.png")     # already in the raw zone
    created = open(tmp_path / "created", "w+b")
    with _spill(tmp_path, uids) as spill, created:
        counts = blobs.copy_blobs(spill, 0, str(store), home, 2, created=created, stop=lambda: False)
        created.seek(0)
        assert sorted(created.read().decode().split()) == uids[1:]
    assert counts["copied"] == 2 and counts["present"] == 1 and "not_copied" not in counts
    other = DataHome.at(tmp_path / "other")
    other.raw_images.mkdir(parents=True)
    with _spill(tmp_path, uids) as spill:
        counts = blobs.copy_blobs(spill, 0, str(store), other, 2, stop=lambda: True)
    assert counts["not_copied"] == 3 and counts["copied"] == 0 and not any(other.raw_images.iterdir())


def _published(home: DataHome, uids: list[str]) -> None:
    path = home.raw_file(DAY, "images")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(b"".join(json.dumps({"image_id": i, "image_uid": uid}).encode() + b"\n"
                                            for i, uid in enumerate(uids))))


def test_withdraw_removes_only_the_blobs_it_wrote_that_the_published_day_does_not_name(tmp_path: Path) -> None:
    home = DataHome.at(tmp_path / "home")
    home.raw_images.mkdir(parents=True)
    uids = [str(uuid.UUID(int=i + 1)) for i in range(4)]
    for uid in uids:
        (home.raw_images / f"{uid}.png").write_bytes(b"png")
    _published(home, [uids[0], uids[2]])

    def named(batch: set[str]) -> set[str] | None:     # fix33d: what the export asks (named_uids)
        return named_uids(home, DAY, None, batch)

    assert named({uids[0], uids[1]}) == {uids[0]}
    created = open(tmp_path / "created", "w+b")
    with created:
        created.write("".join(uid + "\n" for uid in uids[:2]).encode())   # it wrote 0 and 1 (2, 3: not its own)
        assert blobs.withdraw_blobs(created, home, named) == (1, True)
    assert sorted(p.name for p in home.raw_images.iterdir()) == sorted(f"{uid}.png" for uid in (uids[0], *uids[2:]))


def test_a_published_images_file_that_cannot_be_read_names_nothing_to_remove(tmp_path: Path) -> None:
    """Fix33d: a file that is read whole and holds no uid (``[1]``: a line the ingest quarantines, which no
    reference resolves to) names nothing; only one that cannot be read whole stops the withdrawal (None)."""
    home = DataHome.at(tmp_path / "home")
    path = home.raw_file(DAY, "images")
    path.parent.mkdir(parents=True)
    path.write_bytes(gzip.compress(b'{"image_uid": "a"}\n')[:-6])        # cut short
    assert named_uids(home, DAY, None, {"a"}) is None
    path.write_bytes(gzip.compress(b"[1]\n"))
    assert named_uids(home, DAY, None, {"a"}) == set()
    path.unlink()
    assert named_uids(home, DAY, None, {"a"}) == set()                  # no file: it names nothing


def test_a_blob_copied_back_after_the_newer_export_published_is_removed_again(postgres_server, tmp_path,  # noqa: F811
                                                                              monkeypatch):
    """The newer export publishes after the older one's last look (its batch started): the older one copies the
    erased image back, then finds itself superseded and removes it, saying so."""
    dsn = create_app_database(postgres_server, f"fix32c_{uuid.uuid4().hex[:8]}")
    home = DataHome.at(tmp_path / "home")
    store, (uid,) = _store(tmp_path, 1)
    with psycopg.connect(dsn) as conn:
        conn.execute("INSERT INTO users (user_id, created_at, email) VALUES (5, '2023-03-01 01:00', 'x@example.com')")
        conn.execute("INSERT INTO images (created_at, image_uid, user_id, prompt) "
                     "VALUES ('2023-03-01 02:00', %s, 5, 'p')", (uid,))
        _rank(conn, DAY, 1, user_id=5)
    export_day(home, dsn, DAY, NIGHTLY, now=NOW, image_store=str(store))
    real_copy, seen = blobs._copy_one, []

    def copy_one(*args, **kwargs) -> str:
        if not seen:     # the erasure: rows deleted, the day re-exported, the account's images deleted
            with psycopg.connect(dsn) as conn:
                for table in ("rankings", "images", "users"):
                    conn.execute(f"DELETE FROM {table} WHERE user_id = 5")
            seen.append(export_day(home, dsn, DAY, NIGHTLY, now=NOW, image_store=str(store)).published)
            (home.raw_images / f"{uid}.png").unlink()
        return real_copy(*args, **kwargs)

    monkeypatch.setattr(blobs, "_copy_one", copy_one)
    older = export_day(home, dsn, DAY, NIGHTLY, now=NOW, image_store=str(store))
    assert seen == ["updated"] and older.published == "superseded" and _ids(home, DAY) == []
    assert older.blobs["copied"] == 1 and older.blobs["withdrawn"] == 1
    assert any("were removed again" in warning for warning in older.warnings)
    assert not (home.raw_images / f"{uid}.png").exists()


def test_a_folder_that_cannot_be_made_is_left_unclaimed_and_the_others_are_claimed(tmp_path: Path) -> None:
    home = DataHome.at(tmp_path / "home")
    home.cache.mkdir(parents=True)
    (home.cache / "app_export_late").write_bytes(b"not a folder")    # the export warns where it writes there
    claim_export_state(home)
    assert [folder.name for folder in export_state_folders(home) if (folder / CACHE_OWNER).is_file()] == [
        "app_export_snapshots", "app_export_counts", "app_export_written", "app_export_content"]   # + fix35e
