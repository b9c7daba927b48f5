"""Fix38m: review rev38e's defects in the MOVED_WAITING files (``HOME/cache/app_export_moved/dt=DAY.json``), and the
noticed item (one row_days look-up a file day and table each night).

- ``_load_waiting`` parses a file a piece at a time into int64 arrays (``_parse_waiting``); ids in the export's
  (ascending) order are taken as they come, others sorted once in the array (numpy), each once; the limit is 64 MiB.
- ``_save_waiting`` writes json.dumps' bytes a piece at a time (the same bytes as before).
- A file that is not as the export writes it raises ``WaitingDamaged``: each night names it
  (``damaged_waiting_warning``), and a writer moves it aside to ``dt=DAY.json.damaged`` (-2, ...) before writing the
  day's rows, never over another file.
- ``watch_waiting`` looks up the ids of many file days at once (WAITING_BATCH) and counts the rows listed a table and
  day.
"""
from __future__ import annotations

import array
import io
import json
import math
import os
from pathlib import Path

import psycopg
import pytest
from appdb_fixtures import NIGHTLY, NOW
from appdb_fixtures import add_rankings as _rankings
from test_fix37h import _waiting
from test_fix38b import _remembered_ids
from test_hostile_rev38e import _three_waiting, _waiting_days_db

from formats.home import DataHome
from pipelines.appdb import export as appexport
from pipelines.appdb.export import (
    DAMAGED_WAITING,
    MOVED_WAITING,
    WaitingDamaged,
    _add_waiting,
    _load_waiting,
    _parse_waiting,
    _save_waiting,
    damaged_waiting_warning,
    export_day,
    forget_waiting,
    waiting_days,
    watch_waiting,
)
from pipelines.appdb.tables import statement
from tests.postgres_server import postgres_server  # noqa: F401 - fixture

DAY = "2023-02-15"


def _home(tmp_path: Path) -> tuple[DataHome, Path]:
    home = DataHome.at(tmp_path / "home")
    path = home.cache / MOVED_WAITING / f"dt={DAY}.json"
    path.parent.mkdir(parents=True)
    return home, path


def _ids(per_table: dict[str, array.array]) -> dict[str, list[int]]:
    return {table: list(ids) for table, ids in per_table.items() if ids}


def test_the_export_s_files_read_back_as_written_and_write_the_same_bytes(tmp_path: Path, monkeypatch) -> None:
    home, path = _home(tmp_path)
    per_table = {"images": array.array("q", [-(1 << 63), -5, 0, 7, (1 << 63) - 1]),
                 "rankings": array.array("q", range(10**9, 10**9 + 40_000)), "users": array.array("q")}
    _save_waiting(home, DAY, per_table)
    raw = path.read_bytes()
    assert raw == json.dumps({"images": list(per_table["images"]), "rankings": list(per_table["rankings"])},
                             sort_keys=True).encode()                 # the bytes json.dumps wrote before
    for piece in (3, 7, 1 << 18):          # every cut of a piece read: an id, a name, the blanks between
        monkeypatch.setattr(appexport, "WAITING_READ_BYTES", piece)
        assert _ids(_load_waiting(home, DAY)) == _ids(per_table)
    _save_waiting(home, DAY, _load_waiting(home, DAY))
    assert path.read_bytes() == raw


def test_a_file_past_the_limit_is_not_written_over_the_one_there(tmp_path: Path, monkeypatch) -> None:
    home, path = _home(tmp_path)
    _save_waiting(home, DAY, {"rankings": array.array("q", [1, 2])})
    monkeypatch.setattr(appexport, "MOVED_WAITING_MAX_BYTES", 64)
    with pytest.raises(OSError, match="more than the 64 bytes"):
        _add_waiting(home, {"rankings": {DAY: array.array("q", range(10**9, 10**9 + 20))}})
    assert _waiting(home, DAY) == {"rankings": [1, 2]} and os.listdir(path.parent) == [path.name]   # no temp left


def test_a_hand_written_file_out_of_order_is_read_sorted_each_id_once(tmp_path: Path, monkeypatch) -> None:
    home, path = _home(tmp_path)
    path.write_text('{\n  "rankings": [ 9 , 3,3, -1,\n 9 ],\n  "images" : [],"users":[4]\n}\n')
    monkeypatch.setattr(appexport, "WAITING_READ_BYTES", 5)
    assert _ids(_load_waiting(home, DAY)) == {"rankings": [-1, 3, 9], "users": [4]}


@pytest.mark.parametrize("text, why", [
    ('{"rankings": [1, 2, 3]', "ends early"),                       # truncated
    ('{"rankings": [1, 2, 3', "ends early"),
    ("", "ends early"),
    ('{"rankings": [1, 2]}{"rankings": [3]}', "more than one JSON object"),
    ('{"rankings": [1, 2]} x', "more than one JSON object"),
    ('{"rankings": [1, 2,]}', "not the export's JSON"),
    ('{"rankings": [01]}', "not the export's JSON"),
    ('{"rankings": [1.5]}', "not the export's JSON"),
    ('{"rankings": ["1"]}', "not the export's JSON"),
    ('{"rankings": {"1": 2}}', "not the export's JSON"),
    ("[1, 2]", "not the export's JSON"),
    ('{"comments": [1]}', "not one the export writes"),             # a table it does not write: not dropped
    ('{"rankings": [1], "rankings": [2]}', "there twice"),
    ('{"rankings": [9223372036854775808]}', "not a 64-bit integer"),
    ('{"rankings": [1, -9223372036854775809]}', "not a 64-bit integer"),
])
def test_a_file_not_as_the_export_writes_it_is_damaged_not_empty(tmp_path: Path, text: str, why: str) -> None:
    home, path = _home(tmp_path)
    path.write_text(text)
    with pytest.raises(WaitingDamaged, match=why):
        _load_waiting(home, DAY)


def test_a_long_part_not_understood_and_a_growing_file_stop_the_read(monkeypatch) -> None:
    with pytest.raises(WaitingDamaged, match="not the export's JSON"):     # never buffered whole
        _parse_waiting(io.BytesIO(b'{"rankings": [' + b" " * 100_000 + b"x"), 1 << 30)
    with pytest.raises(WaitingDamaged, match="more than 50 bytes"):
        _parse_waiting(io.BytesIO(b'{"rankings": [' + b"1, " * 100 + b"1]}"), 50)


def test_a_file_too_large_a_link_a_fifo_or_a_folder_is_damaged(tmp_path: Path, monkeypatch) -> None:
    home, path = _home(tmp_path)
    path.write_text('{"rankings": [1, 2, 3]}')
    monkeypatch.setattr(appexport, "MOVED_WAITING_MAX_BYTES", 10)
    with pytest.raises(WaitingDamaged, match="more than the 10"):
        _load_waiting(home, DAY)
    monkeypatch.undo()
    target = tmp_path / "elsewhere.json"
    target.write_text('{"rankings": [1]}')
    for make, why in ((lambda: path.symlink_to(target), "symbolic link"), (lambda: os.mkfifo(path), "not a regular"),
                      (lambda: path.mkdir(), "not a regular")):
        if path.is_dir() and not path.is_symlink():
            path.rmdir()
        else:
            path.unlink(missing_ok=True)
        make()
        with pytest.raises(WaitingDamaged, match=why):
            _load_waiting(home, DAY)
    assert _ids(_load_waiting(home, "2023-02-16")) == {}      # no file: no rows


def test_a_writer_moves_a_damaged_file_aside_never_over_another(tmp_path: Path) -> None:
    home, path = _home(tmp_path)
    mine = path.with_name(path.name + DAMAGED_WAITING)
    mine.write_bytes(b"a user's file under the first name")
    path.write_bytes(b'{"rankings": [5001, 5002, 500')
    _add_waiting(home, {"rankings": {DAY: array.array("q", [7])}})
    assert mine.read_bytes() == b"a user's file under the first name"
    second = path.with_name(path.name + DAMAGED_WAITING + "-2")
    assert second.read_bytes() == b'{"rankings": [5001, 5002, 500'        # kept whole
    assert _waiting(home, DAY) == {"rankings": [7]}
    assert waiting_days(home) == [DAY]                                     # an aside name is no waiting day
    path.write_bytes(b"not json")
    watch = appexport.WaitingWatch(forget={DAY: {"rankings": array.array("q", [7])}})
    assert forget_waiting(home, watch) == ""
    assert path.with_name(path.name + DAMAGED_WAITING + "-3").read_bytes() == b"not json"
    assert not path.exists() and waiting_days(home) == []
    os.mkfifo(path)                                  # not a regular file: moved aside as well, never replaced
    _add_waiting(home, {"rankings": {DAY: array.array("q", [8])}})
    assert path.with_name(path.name + DAMAGED_WAITING + "-4").is_fifo()
    assert _waiting(home, DAY) == {"rankings": [8]}


def test_each_night_names_a_damaged_file_in_place_and_once_moved_aside(postgres_server, tmp_path):  # noqa: F811
    total, dsn, home = _three_waiting(postgres_server, tmp_path)
    path = home.cache / MOVED_WAITING / "dt=2023-02-15.json"
    kept = path.read_bytes()[:-3]
    path.write_bytes(kept)
    for night in ("2023-03-02", "2023-03-03"):
        report = export_day(home, dsn, night, NIGHTLY, now=NOW)
        named = [line for line in report.warnings if str(path) in line]
        assert len(named) == 1 and "ends early" in named[0] and "--from 2023-02-15 --to 2023-02-15" in named[0]
        assert path.read_bytes() == kept                     # read only: never replaced, never moved by a reader
    # a row moved to 2023-02-15 past the cap again: the damaged file is moved aside, the new row waits beside it
    with psycopg.connect(dsn) as conn:
        _rankings(conn, 7001, 7001, "2023-03-03 10:00")
    export_day(home, dsn, "2023-03-03", NIGHTLY, now=NOW)
    assert len(_remembered_ids(home)) == appexport.REMEMBER_UNDATED        # full: the next one waits
    with psycopg.connect(dsn) as conn:
        conn.execute("UPDATE rankings SET created_at = '2023-02-15 07:00' WHERE ranking_id = 7001")
    report = export_day(home, dsn, "2023-03-03", NIGHTLY, now=NOW)
    assert report.published == "updated", report.warnings
    aside = path.with_name(path.name + DAMAGED_WAITING)
    assert aside.read_bytes() == kept and _waiting(home, "2023-02-15") == {"rankings": [7001]}
    report = export_day(home, dsn, "2023-03-04", NIGHTLY, now=NOW)
    named = [line for line in report.warnings if str(aside) in line]
    assert len(named) == 1 and "moved aside" in named[0], report.warnings
    assert any("rankings: 1001 (" in line for line in report.warnings), report.warnings   # 1,000 remembered, 7001


def test_the_warning_names_at_most_first_ids_files() -> None:
    damaged = appexport.DamagedWaiting()
    for day in range(1, 13):
        damaged.add(f"/h/cache/{MOVED_WAITING}/dt=2023-01-{day:02d}.json", "ends early at byte 3")
    line = damaged_waiting_warning(damaged)
    assert line.startswith("12 file(s)") and "dt=2023-01-10.json" in line and "dt=2023-01-11.json" not in line
    assert "--from 2023-01-01 --to 2023-01-01" in line


@pytest.mark.parametrize("batch", [appexport.WAITING_BATCH, 7])
def test_the_waiting_rows_of_many_days_take_one_look_up_a_batch(postgres_server, tmp_path, monkeypatch,  # noqa: F811
                                                                batch: int) -> None:
    days, per_day = 120, 15
    dsn, home = _waiting_days_db(postgres_server, tmp_path, days, per_day)
    monkeypatch.setattr(appexport, "WAITING_BATCH", batch)
    looked_up = 0
    with psycopg.connect(dsn) as conn:
        real = conn.execute

        def counted(query, *args, **kwargs):
            nonlocal looked_up
            looked_up += query == statement("row_days")
            return real(query, *args, **kwargs)

        conn.execute = counted
        watch = watch_waiting(conn, home, "2022-01-03")
    assert looked_up == math.ceil(days * per_day / batch)          # 120 before (one a file day and table)
    listed = watch.dated["rankings"]
    assert len(listed) == (days - 1) * appexport.FIRST_IDS
    assert sorted(key for key, on in listed.items() if on == "2022-01-01") == list(range(1, 11))
    assert watch.more["rankings"]["2022-01-01"] == per_day - appexport.FIRST_IDS
    assert "2022-01-03" not in watch.more["rankings"]
    assert list(watch.forget["2022-01-03"]["rankings"]) == list(range(31, 46))    # its own day's: forgotten
    assert not watch.damaged and watch.damaged.named == []
