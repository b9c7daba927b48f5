"""Hostile review rev18k (December 5, 2026): the prompt pins' re-key after a key-function change (12ae2a0). Each test
was a confirmed defect (a strict xfail), fixed the same day: the re-key pins under every salt, and is recorded only once
every published version was read whole; the build report counts its pins (key_owners_rekeyed)."""
from __future__ import annotations

import json
import os
import shutil

import pyarrow.parquet as pq
from splits_fixtures import pair_row
from test_hostile_dec5_pins import _switched
from test_hostile_rev15b import _others
from test_splits_key_owners import CFG, USERS, _kept, _night, _pins

from formats.home import DataHome
from pipelines.splits import assign, coverage
from pipelines.splits.assign import normalize_prompt

LOWER, CAPITAL = "кот в сапогах", "Кот в сапогах"
V1 = "2023-03-05-00000000a1"


def _old_key(text: str) -> str:
    return "ĸot b caπorax" if text == LOWER else normalize_prompt(text)


def _record(home: DataHome) -> dict:
    return json.loads(pq.read_schema(home.table_file("split_key_owners")).metadata[coverage.PINS_KEY])


def _yesterday(home: DataHome, monkeypatch) -> list[dict]:
    """A home built and published by yesterday's code: LOWER published in test, CAPITAL in train, no key version."""
    te, tr = USERS["test"][0], USERS["train"][0]
    rows = _others() + [pair_row(1, te, LOWER, "p1", "p2", day=1), pair_row(2, tr, CAPITAL, "q1", "q2", day=1)]
    with monkeypatch.context() as patch:
        patch.setattr(assign, "normalize_prompt", _old_key)
        patch.setattr(assign, "KEY_VERSION", None)
        _night(home, rows)
        assert _kept(home)["1_0"] == "test" and _kept(home)["2_0"] == "train"
        _switched(home, V1)
        _night(home, rows)
    assert "key_version" not in _record(home)
    return rows


def _with_train_lower(rows: list[dict]) -> list[dict]:
    """``rows`` and a train user's row of LOWER (the caption published in test), on the day after."""
    return rows + [pair_row(3, USERS["train"][1], LOWER, "r1", "r2", day=2)]


def _assert_lower_kept_out_of_train(home: DataHome) -> None:
    """LOWER was published in test: no train user's row of it is kept in train, and its new key is not pinned there."""
    kept = _kept(home)
    assert kept.get("3_0") != "train", kept
    assert _pins(home).get(("prompt", normalize_prompt(LOWER)), ("none",))[0] != "train"


def test_a_version_unreadable_during_the_rekey_is_rekeyed_once_put_back(tmp_path, monkeypatch):
    home = DataHome(tmp_path)
    rows = _yesterday(home, monkeypatch)
    rows = _with_train_lower(rows)
    # the upgrade's first build runs while the published version's test folder is a link (moved to another disk)
    folder = home.datasets / V1 / "test"
    moved = tmp_path / "elsewhere-test"
    shutil.move(str(folder), str(moved))
    os.symlink(moved, folder)
    _night(home, rows)
    assert "key_version" not in _record(home)                         # not read whole: not recorded as done
    # the folder is put back; the next build re-seeds the version's keys from its sidecars
    os.unlink(folder)
    shutil.move(str(moved), str(folder))
    _night(home, rows)
    _assert_lower_kept_out_of_train(home)


def test_pins_written_while_nothing_is_published_do_not_skip_the_rekey(tmp_path, monkeypatch):
    home = DataHome(tmp_path)
    rows = _yesterday(home, monkeypatch)
    rows = _with_train_lower(rows)
    # the upgrade's first build runs while `latest` is away (a rollback in progress) and the pins file was lost
    link = home.datasets / "latest"
    target = os.readlink(link)
    os.unlink(link)
    home.table_file("split_key_owners").unlink()
    _night(home, rows)
    assert "key_version" not in _record(home)                         # nothing published: the re-key waits
    # `latest` is put back: the next build re-seeds the published version's (old) keys from its sidecars
    os.symlink(target, link)
    _night(home, rows)
    _assert_lower_kept_out_of_train(home)


def test_the_rekey_under_another_salt_does_not_leave_the_home_salt_stale(tmp_path, monkeypatch):
    import dataclasses
    home = DataHome(tmp_path)
    rows = _yesterday(home, monkeypatch)
    rows = _with_train_lower(rows)
    other = dataclasses.replace(CFG, salt=CFG.salt + "-other")
    _night(home, rows, other)                                   # the upgrade's first build, under another salt
    assert _record(home)["key_version"] == assign.KEY_VERSION   # re-keyed under every salt the pins hold
    _night(home, rows)                                          # back under the home's salt
    _assert_lower_kept_out_of_train(home)


def test_the_report_accounts_for_the_prompt_pins_the_rekey_added(tmp_path, monkeypatch):
    home = DataHome(tmp_path)
    rows = _others() + [pair_row(1, USERS["test"][0], LOWER, "p1", "p2", day=1)]
    with monkeypatch.context() as patch:
        patch.setattr(assign, "normalize_prompt", _old_key)
        patch.setattr(assign, "KEY_VERSION", None)
        _night(home, rows)
        _switched(home, V1)
        before = _night(home, rows).metadata()
    report = _night(home, rows).metadata()
    assert ("prompt", normalize_prompt(LOWER)) in _pins(home)           # the re-key pinned the new key
    grown = report["key_owners_pinned"] - before["key_owners_pinned"]
    assert grown == 1
    assert report["key_owners_added"] + report["key_owners_reseeded"] + report["key_owners_rekeyed"] == grown, report
