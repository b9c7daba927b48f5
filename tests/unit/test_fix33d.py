"""Fix33d: the defects of review rev33d (``tests/unit/test_hostile_rev33d.py``) and their neighbours.

- a superseded export removes a blob it wrote only when no file names it (``export.named_uids``): every day a
  reference resolves against, read by the ingest's byte search (``uidindex.named_image_uids``: a line over the line
  limit names its uid; the uid index answers where it records a whole read), and the running exports' staged files
  (a dead export's leftover and its own staging are not read); a file that cannot be read whole withdraws nothing;
  ``blobs.withdraw_blobs`` looks the uids up a batch at a time under ``BLOBS_LOCK``, which each batch of blob copies
  holds shared;
- ``owner.json`` records the host; a home at the recorded path on that host (restored where it was) is the home
  itself, a moved home's record takes its new path, a record of that path on another host is refused;
- the version check names a manifest entry without its ``bytes``/``sha256`` record.

Driven in-process on small homes (real gzip files, real locks, the real uid index)."""
from __future__ import annotations

import gzip
import json
import os
import shutil
import threading
import uuid
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from formats.home import DataHome
from formats.locks import writing_shared
from pipelines.appdb import blobs
from pipelines.appdb.export import (
    CACHE_OWNER,
    CacheOfAnotherHome,
    claim_export_state,
    export_state_folders,
    hold_staging,
    named_uids,
)
from pipelines.ingest.uidindex import named_image_uids, raw_image_uids

DAY, NEXT = "2023-03-01", "2023-03-02"
UIDS = [str(uuid.UUID(int=i + 1)) for i in range(6)]


def _images(path: Path, uids: list[str], extra: bytes = b"") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(b"".join(json.dumps({"image_id": i, "image_uid": uid}).encode() + b"\n"
                                            for i, uid in enumerate(uids)) + extra))


def _home(tmp_path: Path) -> DataHome:
    home = DataHome.at(tmp_path / "home")
    home.raw_images.mkdir(parents=True)
    return home


# --- which files name a blob -----------------------------------------------------------------------------------

def test_another_days_file_names_a_blob_and_an_unreadable_one_stops_the_withdrawal(tmp_path: Path) -> None:
    home = _home(tmp_path)
    _images(home.raw_file(DAY, "images"), UIDS[:1])
    _images(home.raw_file(NEXT, "images"), UIDS[1:2])
    assert named_uids(home, NEXT, None, set(UIDS[:3])) == set(UIDS[:2])     # the day before names UIDS[0]
    home.raw_file(DAY, "images").write_bytes(gzip.compress(b"{}\n")[:-4])  # another day's file damaged
    assert named_uids(home, NEXT, None, set(UIDS[:3])) is None
    assert named_uids(home, NEXT, None, set(UIDS[1:2])) == set(UIDS[1:2])  # all named before it is reached


def test_a_line_over_the_line_limit_and_an_escaped_member_name_their_uids(tmp_path: Path) -> None:
    home = _home(tmp_path)
    (home.root / "pickapic.toml").write_text("[ingest]\nmax_line_bytes = 200\n")
    long = json.dumps({"image_uid": UIDS[0], "prompt": "y" * 1000}).encode()
    escaped = b'{"image\\u005fuid": "' + UIDS[1].encode() + b'"}'
    _images(home.raw_file(DAY, "images"), [], long + b"\n" + escaped + b"\n" + b"[1]\n")
    assert named_uids(home, DAY, None, set(UIDS[:3])) == set(UIDS[:2])


def test_a_running_exports_staged_file_names_a_blob_a_dead_ones_and_its_own_do_not(tmp_path: Path) -> None:
    home = _home(tmp_path)
    _images(home.raw_file(DAY, "images"), [])
    running = home.raw_logs / f".dt={NEXT}.export-1-0a0a0a0a"
    dead = home.raw_logs / f".dt={NEXT}.export-2-0b0b0b0b"
    own = home.raw_logs / f".dt={DAY}.export-3-0c0c0c0c"
    for folder, uid in ((running, UIDS[0]), (dead, UIDS[1]), (own, UIDS[2])):
        folder.mkdir(mode=0o700)
        _images(folder / "images.jsonl.gz", [uid])
    held = [hold_staging(running), hold_staging(own)]
    try:
        assert named_uids(home, DAY, own, set(UIDS[:3])) == {UIDS[0]}
        (running / "images.jsonl.gz").write_bytes(b"\x1f\x8b")          # still being written: names none yet
        assert named_uids(home, DAY, own, set(UIDS[:3])) == set()
    finally:
        for fd in held:
            os.close(fd)


def test_the_strict_look_up_trusts_only_an_index_of_a_whole_read(tmp_path: Path) -> None:
    home = _home(tmp_path)
    path = home.raw_file(DAY, "images")
    _images(path, UIDS[:2])
    assert named_image_uids(home, DAY, {UIDS[0], UIDS[3]}) == {UIDS[0]}
    index = home.raw_image_uid_index(DAY)
    assert pq.read_schema(index).metadata[b"whole"] == b"1"
    assert named_image_uids(home, DAY, {UIDS[1]}) == {UIDS[1]}            # from the index
    # a file whose second member is damaged: the ingest reads the first (and indexes it), this look-up says None
    first = gzip.compress(json.dumps({"image_uid": UIDS[0]}).encode() + b"\n")
    second = bytearray(gzip.compress(json.dumps({"image_uid": UIDS[1]}).encode() + b"\n"))
    second[-8] ^= 0xFF                                                    # its CRC fails
    path.write_bytes(first + bytes(second))
    assert raw_image_uids(home, DAY, {UIDS[0], UIDS[1]}) == {UIDS[0]}
    assert pq.read_schema(index).metadata[b"whole"] == b"0"
    assert named_image_uids(home, DAY, {UIDS[0]}) is None                 # the index of a partial read: not trusted
    assert raw_image_uids(home, DAY, {UIDS[0]}) == {UIDS[0]}             # the ingest's answer is unchanged
    path.unlink()
    assert named_image_uids(home, DAY, {UIDS[0]}) == set()                # no file: it names none


# --- the withdrawal --------------------------------------------------------------------------------------------

def _created(tmp_path: Path, uids: list[str]):
    created = open(tmp_path / "created", "w+b")
    created.write("".join(uid + "\n" for uid in uids).encode("ascii"))
    return created


def test_the_withdrawal_looks_up_batch_by_batch_and_removes_only_unnamed_blobs(tmp_path: Path, monkeypatch) -> None:
    home = _home(tmp_path)
    for uid in UIDS:
        (home.raw_images / f"{uid}.png").write_bytes(b"png")
    monkeypatch.setattr(blobs, "WITHDRAW_BATCH", 2)
    asked: list[int] = []

    def named(batch: set[str]) -> set[str]:
        asked.append(len(batch))
        return batch & {UIDS[1], UIDS[4]}

    with _created(tmp_path, UIDS[:5]) as created:
        assert blobs.withdraw_blobs(created, home, named) == (3, True)
    assert asked == [2, 2, 1]
    assert sorted(p.name for p in home.raw_images.iterdir()) == sorted(f"{u}.png" for u in (UIDS[1], *UIDS[4:]))


def test_a_withdrawal_that_cannot_look_up_removes_nothing(tmp_path: Path) -> None:
    home = _home(tmp_path)
    for uid in UIDS[:2]:
        (home.raw_images / f"{uid}.png").write_bytes(b"png")
    with _created(tmp_path, UIDS[:2]) as created:
        assert blobs.withdraw_blobs(created, home, lambda batch: None) == (0, False)
    assert len(list(home.raw_images.iterdir())) == 2


def test_the_withdrawal_waits_for_a_batch_of_copies_to_end(tmp_path: Path) -> None:
    home = _home(tmp_path)
    (home.raw_images / f"{UIDS[0]}.png").write_bytes(b"png")
    done = threading.Event()
    with _created(tmp_path, UIDS[:1]) as created:
        with writing_shared(home.locks / blobs.BLOBS_LOCK, "a batch of blob copies") as held:
            assert held
            worker = threading.Thread(target=lambda: (blobs.withdraw_blobs(created, home, lambda b: set()),
                                                      done.set()))
            worker.start()
            assert not done.wait(0.5)                                     # the batch runs: nothing removed
            assert (home.raw_images / f"{UIDS[0]}.png").exists()
        worker.join(10)
    assert done.is_set() and not (home.raw_images / f"{UIDS[0]}.png").exists()


# --- the cache's owner -----------------------------------------------------------------------------------------

def _owner(folder: Path) -> dict:
    return json.loads((folder / CACHE_OWNER).read_text())


def test_a_moved_home_keeps_its_state_and_its_record_takes_the_new_path(tmp_path: Path) -> None:
    fast = tmp_path / "fastdisk"
    fast.mkdir()
    home = DataHome.at(tmp_path / "home")
    home.root.mkdir()
    home.cache.symlink_to(fast)
    claim_export_state(home)
    moved = DataHome.at(tmp_path / "moved")
    os.rename(home.root, moved.root)                                     # mv: the same folder
    claim_export_state(moved)
    assert {_owner(folder)["home"] for folder in export_state_folders(moved)} == {str(moved.root)}
    other = DataHome.at(tmp_path / "home")                               # a new home at the old path: another home
    other.root.mkdir()
    other.cache.symlink_to(fast)
    with pytest.raises(CacheOfAnotherHome):
        claim_export_state(other)


def test_a_record_of_the_same_path_on_another_host_is_refused_and_an_old_record_is_taken(tmp_path: Path) -> None:
    home = DataHome.at(tmp_path / "home")
    claim_export_state(home)
    folders = export_state_folders(home)
    assert {_owner(folder)["host"] for folder in folders} == {os.uname().nodename}
    for folder in folders:                                     # another host's home at this path, another inode
        record = _owner(folder)
        (folder / CACHE_OWNER).write_text(json.dumps({**record, "home_id": [0, 1], "host": "elsewhere"}))
    with pytest.raises(CacheOfAnotherHome):
        claim_export_state(home)
    for folder in folders:                                     # a record written before the host was recorded
        record = _owner(folder)
        del record["host"]
        (folder / CACHE_OWNER).write_text(json.dumps({**record, "home_id": [0, 1]}))
    claim_export_state(home)
    assert all(_owner(folder)["host"] == os.uname().nodename and _owner(folder)["home_id"] != [0, 1]
               for folder in folders)


def test_a_copy_beside_a_restored_home_is_still_refused(tmp_path: Path) -> None:
    fast = tmp_path / "fastdisk"
    fast.mkdir()
    prod = DataHome.at(tmp_path / "prod")
    prod.root.mkdir()
    prod.cache.symlink_to(fast)
    claim_export_state(prod)
    shutil.copytree(prod.root, tmp_path / "copy", symlinks=True)        # cp -a: the link kept
    with pytest.raises(CacheOfAnotherHome):
        claim_export_state(DataHome.at(tmp_path / "copy"))


# --- the version check -----------------------------------------------------------------------------------------

def _version(tmp_path: Path, entry: object) -> Path:
    from formats.dataset import MANIFEST_FILE

    version = tmp_path / "v1"
    (version / "train").mkdir(parents=True)
    (version / "train" / "a.json").write_bytes(b"{}")
    (version / "train" / "b.json").write_bytes(b"[]")
    good = {"bytes": 2, "sha256": "x"}
    (version / MANIFEST_FILE).write_text(json.dumps({"files": {"train/a.json": entry, "train/b.json": good}}))
    return version


@pytest.mark.parametrize("entry", [{"bytes": 2}, {"sha256": "x"}, "2", 2, True])
def test_an_entry_without_its_record_is_named_with_or_without_checksums(tmp_path: Path, entry: object) -> None:
    from pipelines.publish.manifest import ManifestMismatch, verify_version

    version = _version(tmp_path, entry)
    for checksums in (False, True):
        with pytest.raises(ManifestMismatch) as differs:
            verify_version(version, checksums=checksums)
        assert differs.value.paths[0] == "train/a.json" and "damaged" in str(differs.value)
        assert "train/b.json" in differs.value.paths if checksums else differs.value.paths == ["train/a.json"]


def test_a_whole_entry_still_passes(tmp_path: Path) -> None:
    from pipelines.publish.manifest import verify_version

    assert verify_version(_version(tmp_path, {"bytes": 2, "sha256": "y"}))["files"]["train/a.json"]["bytes"] == 2
