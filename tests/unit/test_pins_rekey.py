"""A key-function change re-keys the prompt pins from the published captions (review rev18j, December 5, 2026).

The upgrade review built a home with yesterday's code and then today's: ``кот в сапогах`` was published in test
under its old key ``ĸot b caπorax`` and ``Кот в сапогах`` in train; today's key (case never changes a key) is
``kot b caπorax`` for both, pinned to train by the capitalised prompt's unchanged key, so train users' rows of the
caption published in test entered train. Now the first build after a key-function change keys every retained
published caption anew and pins its new key held out when any caption of it was published held out.
"""
from __future__ import annotations

import json

import pyarrow.parquet as pq
from splits_fixtures import pair_row, write_pairs
from test_hostile_dec5_pins import _switched
from test_hostile_rev15b import _others
from test_splits_key_owners import CFG, USERS, _kept, _night, _pins

from formats.home import DataHome
from pipelines.splits import assign, coverage
from pipelines.splits.assign import normalize_prompt

LOWER, CAPITAL = "кот в сапогах", "Кот в сапогах"


def _logged_night(home: DataHome, rows: list[dict], logged: list[str]) -> assign.SplitReport:
    write_pairs(home, rows)
    return assign.build_splits(home, CFG, log=logged.append)


def _old_key(text: str) -> str:
    """Yesterday's key of the two planted captions: small Cyrillic letters keyed apart from their capitals."""
    return "ĸot b caπorax" if text == LOWER else normalize_prompt(text)


def test_a_caption_published_held_out_stays_held_out_when_its_new_key_merges_with_a_train_key(tmp_path, monkeypatch):
    home = DataHome(tmp_path)
    te, tr, tr2 = USERS["test"][0], USERS["train"][0], USERS["train"][1]
    base = _others()
    rows = base + [pair_row(1, te, LOWER, "p1", "p2", day=1), pair_row(2, tr, CAPITAL, "q1", "q2", day=1)]
    # yesterday: the old key function and a pins record without a key version (as the previous code wrote it)
    with monkeypatch.context() as patch:
        patch.setattr(assign, "normalize_prompt", _old_key)
        patch.setattr(assign, "KEY_VERSION", None)
        _night(home, rows)
        assert _kept(home)["1_0"] == "test" and _kept(home)["2_0"] == "train"
        _switched(home, "2023-03-05-00000000a1")
        _night(home, rows)                                # the pins of the published version are stored
    assert _pins(home)[("prompt", normalize_prompt(CAPITAL))][0] == "train"
    assert "key_version" not in json.loads(pq.read_schema(home.table_file("split_key_owners")).metadata[coverage.PINS_KEY])
    # today: a train user types the caption that was published in test; its new key is the capitalised one's
    assert normalize_prompt(LOWER) == normalize_prompt(CAPITAL)
    logged = []
    report = _logged_night(home, rows + [pair_row(3, tr2, LOWER, "r1", "r2", day=2)], logged).metadata()
    kept = _kept(home)
    assert "3_0" not in kept and "2_0" not in kept, kept           # no train row of a key published in test
    assert kept["1_0"] == "test"
    assert _pins(home)[("prompt", normalize_prompt(LOWER))][0] == "test"
    assert json.loads(pq.read_schema(home.table_file("split_key_owners")).metadata[coverage.PINS_KEY])[
        "key_version"] == assign.KEY_VERSION
    assert report["key_owners_rekeyed"] >= 1
    assert any("prompt key function changed" in line for line in logged), logged
    assert report["key_owners_update"]
    # the next build finds the pins re-keyed: nothing more to do, and the caption stays out of train
    logged.clear()
    _logged_night(home, rows + [pair_row(3, tr2, LOWER, "r1", "r2", day=2)], logged)
    assert not any("prompt key function changed" in line for line in logged)
    assert "3_0" not in _kept(home)


def test_pins_written_by_this_code_record_its_key_version_and_are_not_rekeyed(tmp_path):
    home = DataHome(tmp_path)
    rows = _others() + [pair_row(1, USERS["test"][0], LOWER, "p1", "p2", day=1)]
    _night(home, rows)
    _switched(home, "2023-03-05-00000000a1")
    logged = []
    _logged_night(home, rows, logged)
    record = json.loads(pq.read_schema(home.table_file("split_key_owners")).metadata[coverage.PINS_KEY])
    assert record["key_version"] == assign.KEY_VERSION
    assert not any("prompt key function changed" in line for line in logged)
