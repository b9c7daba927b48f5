"""Fix33l: review rev33l's defects (tests/unit/test_hostile_rev33l.py), and the neighbours the fix touches.

- a running export's staged images file is read whole whatever ``ingest.max_file_bytes``/``max_file_lines`` say
  (``uidindex.search_image_uids``, which now says how it read the file); only one still being written (a gzip
  stream that ends early: ``lines.RawFile.ended_early``) or none names nothing yet; a damaged one, or a staging
  folder this account cannot open, stops the withdrawal (None), and ``export.named_uids`` says which file stopped
  it (``why``), named in the export's warning (``export.withdrawn_warning``);
- the uid index (``cache/raw_image_uids``) that cannot be written is skipped, never raised (``write_uid_index``):
  the ingest's reference check and the withdrawal's look-up both answer;
- ``claim_export_state``'s refusal of a record of another host names both hosts.

Small homes, in-process calls, real gzip files, real ``flock``-held staging folders (``export.hold_staging``).
"""
from __future__ import annotations

import gzip
import json
import os
import shutil
import socket
import uuid
from pathlib import Path

import pytest

from formats.home import DataHome
from pipelines.appdb import blobs
from pipelines.appdb.export import (
    CACHE_OWNER,
    CacheOfAnotherHome,
    claim_export_state,
    export_state_folders,
    hold_staging,
    named_uids,
    withdrawn_warning,
)
from pipelines.ingest import lines
from pipelines.ingest.uidindex import named_image_uids, raw_image_uids, search_image_uids
from tests.accounts import as_another_account, shared_folder

DAY, NEXT = "2023-03-01", "2023-03-02"
UIDS = [str(uuid.UUID(int=i + 1)) for i in range(4)]


def _gz(uids: list[str], extra: bytes = b"") -> bytes:
    return gzip.compress(b"".join(json.dumps({"image_id": i, "image_uid": uid}).encode() + b"\n"
                                  for i, uid in enumerate(uids)) + extra)


def _home(tmp_path: Path) -> DataHome:
    home = DataHome.at(tmp_path / "home")
    home.raw_images.mkdir(parents=True)
    home.raw_file(DAY, "images").parent.mkdir(parents=True)
    home.raw_file(DAY, "images").write_bytes(_gz([]))
    return home


def _staging(home: DataHome, data: bytes, name: str = "0a0a0a0a") -> Path:
    staging = home.raw_logs / f".dt={NEXT}.export-{os.getpid()}-{name}"
    staging.mkdir(mode=0o700)
    (staging / "images.jsonl.gz").write_bytes(data)
    return staging


# --- the staged files ------------------------------------------------------------------------------------------

def test_search_of_a_staged_file_says_how_it_was_read(tmp_path: Path) -> None:
    home = _home(tmp_path)
    path = home.raw_logs / "staged.jsonl.gz"
    assert search_image_uids(home, path, {UIDS[0]}) == (set(), "missing")
    whole = _gz(UIDS[:2])
    path.write_bytes(whole)
    assert search_image_uids(home, path, {UIDS[0], UIDS[2]}) == ({UIDS[0]}, "whole")
    path.write_bytes(whole[:len(whole) // 2])                   # a prefix: the file being written
    named, state = search_image_uids(home, path, {UIDS[0]})
    assert state == "writing" and named is not None
    damaged = bytearray(whole)
    damaged[-8] ^= 0xFF                                         # its CRC fails: not a file being written
    path.write_bytes(bytes(damaged))
    named, state = search_image_uids(home, path, {UIDS[0]})
    assert named is None and "integrity" in state               # why, as the reader says it


def test_a_staged_file_past_the_line_limit_of_the_file_is_read_whole(tmp_path: Path) -> None:
    home = _home(tmp_path)
    (home.root / "pickapic.toml").write_text("[ingest]\nmax_file_lines = 2\n")
    staging = _staging(home, _gz([str(uuid.UUID(int=100 + i)) for i in range(5)] + [UIDS[0]]))
    held = hold_staging(staging)
    try:
        assert named_uids(home, DAY, None, {UIDS[0], UIDS[1]}) == {UIDS[0]}     # the uid on line 6
    finally:
        os.close(held)
    # the published days keep the ingest's limits: a day cut by them may name any uid (None), as before
    home.raw_file(DAY, "images").write_bytes(_gz([str(uuid.UUID(int=100 + i)) for i in range(5)] + [UIDS[1]]))
    why: list[str] = []
    assert named_uids(home, DAY, None, {UIDS[1]}, why) is None
    assert why == [f"day {DAY}'s images file cannot be read whole"]


def test_a_damaged_staged_file_stops_the_withdrawal_and_names_its_folder(tmp_path: Path) -> None:
    home = _home(tmp_path)
    damaged = bytearray(_gz([UIDS[1]]))
    damaged[-8] ^= 0xFF
    staging = _staging(home, bytes(damaged))
    (home.raw_images / f"{UIDS[0]}.png").write_bytes(b"png")
    held = hold_staging(staging)
    why: list[str] = []
    try:
        with open(tmp_path / "created", "w+b") as created:
            created.write(UIDS[0].encode() + b"\n")
            outcome = blobs.withdraw_blobs(created, home, lambda uids: named_uids(home, DAY, None, uids, why))
    finally:
        os.close(held)
    assert outcome == (0, False) and (home.raw_images / f"{UIDS[0]}.png").exists()
    assert len(why) == 1 and staging.name in why[0] and "running export" in why[0], why
    line = withdrawn_warning(DAY, 0, False, why[0])
    assert staging.name in line and "0 removed" in line


def test_a_staged_file_being_written_names_nothing_yet_and_a_dead_exports_leftover_is_not_read(
        tmp_path: Path) -> None:
    home = _home(tmp_path)
    whole = _gz([UIDS[0]] * 50)
    writing = _staging(home, whole[:len(whole) // 2])
    dead = _staging(home, b"not gzip", name="0b0b0b0b")          # unreadable, but no export holds it
    held = hold_staging(writing)
    try:
        named = named_uids(home, DAY, None, {UIDS[0]})
        assert named is not None and named <= {UIDS[0]}         # what the prefix holds so far, never None
        (writing / "images.jsonl.gz").write_bytes(b"\x1f")
        assert named_uids(home, DAY, None, {UIDS[0]}) == set()
    finally:
        os.close(held)
    assert dead.exists()


def test_an_entry_with_a_staging_name_that_is_no_folder_is_not_read(tmp_path: Path) -> None:
    home = _home(tmp_path)
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o700)
    (target / "images.jsonl.gz").write_bytes(_gz([UIDS[0]]))
    (home.raw_logs / f".dt={NEXT}.export-1-0c0c0c0c").symlink_to(target)
    (home.raw_logs / f".dt={NEXT}.export-2-0d0d0d0d").write_bytes(b"a file")
    assert named_uids(home, DAY, None, {UIDS[0]}) == set()




@pytest.fixture()
def shared_tmp():
    """A folder every account may enter (the forked child of ``_as_another_account`` reads the home in it)."""
    with shared_folder("fix33l-") as base:
        yield base


_as_another_account = as_another_account


def test_a_staging_folder_this_account_cannot_open_stops_the_withdrawal(shared_tmp: Path) -> None:
    home = _home(shared_tmp)
    staging = _staging(home, _gz([]))                       # 0700: its owner's only
    named_uids(home, DAY, None, {UIDS[1]})                  # lazily imported modules loaded before any uid drop
    if os.geteuid() != 0:
        os.chmod(staging, 0)

    def check() -> None:
        why: list[str] = []
        assert named_uids(home, DAY, None, {UIDS[0]}, why) is None
        assert staging.name in why[0] and "cannot be opened" in why[0], why

    try:
        _as_another_account(check)
    finally:
        os.chmod(staging, 0o700)


def test_raw_file_ended_early_only_for_a_stream_cut_at_its_end(tmp_path: Path) -> None:
    whole = _gz(UIDS)
    cases = {"prefix": (whole[:-20], None, True), "whole": (whole, None, False),
             "cut by a limit": (whole, 10, False), "not gzip": (b"plain text\n", None, False)}
    for name, (data, max_bytes, expected) in cases.items():
        path = tmp_path / f"{name}.gz"
        path.write_bytes(data)
        raw = lines.RawFile(path, max_bytes=max_bytes)
        for _ in raw.chunks():
            pass
        assert raw.ended_early is expected, (name, raw.status, raw.error)


# --- the uid index that cannot be written ----------------------------------------------------------------------

def test_an_index_that_cannot_be_written_is_skipped_by_every_look_up(tmp_path: Path) -> None:
    home = _home(tmp_path)
    home.raw_file(DAY, "images").write_bytes(_gz(UIDS[:2]))
    index = home.raw_image_uid_index(DAY).parent
    index.parent.mkdir(parents=True, exist_ok=True)
    index.write_text("not a folder")
    assert raw_image_uids(home, DAY, {UIDS[0], UIDS[3]}) == {UIDS[0]}   # the ingest's reference check
    assert named_image_uids(home, DAY, {UIDS[1]}) == {UIDS[1]}           # the withdrawal's look-up
    assert index.read_text() == "not a folder"
    index.unlink()
    assert named_image_uids(home, DAY, {UIDS[1]}) == {UIDS[1]}           # writable again: written
    assert home.raw_image_uid_index(DAY).is_file()


def test_an_index_folder_not_writable_is_skipped(shared_tmp: Path) -> None:
    home = _home(shared_tmp)
    home.raw_file(DAY, "images").write_bytes(_gz(UIDS[:1]))
    folder = home.raw_image_uid_index(DAY).parent
    folder.mkdir(parents=True)
    os.chmod(folder, 0o555)                                 # nobody may write it but root, who is not the checker

    def check() -> None:
        assert named_image_uids(home, DAY, {UIDS[0]}) == {UIDS[0]}

    try:
        _as_another_account(check)
    finally:
        os.chmod(folder, 0o755)
    assert not home.raw_image_uid_index(DAY).exists()


# --- the owner record --------------------------------------------------------------------------------------------

def _rewrite_records(of: DataHome, **changes) -> None:
    for folder in export_state_folders(of):
        record = json.loads((folder / CACHE_OWNER).read_text())
        (folder / CACHE_OWNER).write_text(json.dumps({**record, **changes}))


def test_a_refused_record_of_another_path_on_another_host_names_both(tmp_path: Path) -> None:
    home = DataHome.at(tmp_path / "home")
    claim_export_state(home)
    _rewrite_records(home, home_id=[0, 1], home="/srv/other", host="build-7\n")
    with pytest.raises(CacheOfAnotherHome) as refused:
        claim_export_state(home)
    message = str(refused.value)
    assert "/srv/other on the host 'build-7\\n'" in message and "\n" not in message
    assert f"{home.root} on this host ({socket.gethostname()!r})" in message


def test_a_refused_record_of_this_host_names_no_host(tmp_path: Path) -> None:
    home = DataHome.at(tmp_path / "home")
    claim_export_state(home)
    _rewrite_records(home, home_id=[0, 1], home="/srv/other")
    with pytest.raises(CacheOfAnotherHome) as refused:
        claim_export_state(home)
    message = str(refused.value)
    assert "/srv/other, not of" in message and "host" not in message.split("remove")[0]


def test_a_record_of_this_path_on_this_host_is_still_taken(tmp_path: Path) -> None:
    home = DataHome.at(tmp_path / "home")
    claim_export_state(home)
    _rewrite_records(home, home_id=[0, 1])                      # restored where it was: another inode
    claim_export_state(home)
    for folder in export_state_folders(home):
        assert json.loads((folder / CACHE_OWNER).read_text())["home_id"] != [0, 1]
    shutil.rmtree(home.root)
