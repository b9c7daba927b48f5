"""Hostile review 15b: defects found in the second version of the key owner pins (update_pins) and `pickapic ui`."""
from __future__ import annotations

from splits_fixtures import pair_row
from test_splits_key_owners import CFG, USERS, _kept, _night, _publish

from formats import dataset
from formats.home import DataHome

P = "a lighthouse in a storm"


def _others(day: int = 0) -> list[dict]:
    """One private prompt per user, so every split has rows."""
    return [pair_row(100 + i, u, f"a prompt of user {i}", f"u{i}a", f"u{i}b", day=day)
            for i, u in enumerate([u for s in ("train", "validation", "test") for u in USERS[s]])]


def test_a_version_published_then_rolled_back_before_the_next_build_keeps_its_keys(tmp_path):
    home = DataHome(tmp_path)
    te, tr = USERS["test"][0], USERS["train"][0]
    base = _others()
    _night(home, base)
    _publish(home, "2023-03-05-00000000a1")
    # v2: a test user types P first (day 1), a train user retypes it (day 2, rejected): P published in test
    v2 = base + [pair_row(1, te, P, "p1", "p2", day=1), pair_row(2, tr, P + "!", "q1", "q2", day=2)]
    _night(home, v2)
    assert _kept(home)["1_0"] == "test" and "2_0" not in _kept(home)
    _publish(home, "2023-03-06-00000000a2")
    # a2 turns out bad: the operator points latest back at a1 (a2 stays retained, it was downloaded)
    dataset.switch_latest(home.datasets, "2023-03-05-00000000a1", fsync=False)
    # the test user is banned; the next build must not move P (published in test by a2) into train
    report = _night(home, base + [pair_row(2, tr, P + "!", "q1", "q2", day=2)]).metadata()
    assert "2_0" not in _kept(home), (report["key_owners_update"], "P, published in test by a2, is kept in train")


def test_a_key_published_under_the_current_salt_is_reseeded_even_when_an_old_salt_pins_it(tmp_path):
    import dataclasses

    from splits_fixtures import users_by_home

    from pipelines.splits.coverage import record_file

    home = DataHome(tmp_path)
    u0 = USERS["train"][0]
    _night(home, _others() + [pair_row(1, u0, P, "p1", "p2", day=0)])            # salt A: P published by a1
    _publish(home, "2023-03-05-00000000a1")
    new = dataclasses.replace(CFG, salt="pickapic-split-v2")                       # the deliberate reshuffle
    b = users_by_home(new.salt, new.heldout_fraction, {"train": 1, "test": 1})
    te, tr = b["test"][0], b["train"][0]
    v2 = _others() + [pair_row(2, te, P + "!", "q1", "q2", day=1), pair_row(3, tr, P.upper(), "r1", "r2", day=2)]
    _night(home, v2, new)                                                           # u0 banned; P: te first -> test
    assert _kept(home)["2_0"] == "test" and "3_0" not in _kept(home)
    _publish(home, "2023-03-06-00000000a2")                                         # a2 (salt B) publishes P in test
    record_file(home).unlink()                                                      # cache/ is disposable
    banned = [r for r in v2 if r["user_id"] != te]
    report = _night(home, banned, new).metadata()
    assert report["key_owners_update"] == "sidecars"
    assert "3_0" not in _kept(home), "P, published in test under this salt by a2, is kept in train"
