"""The split ledger: small homes fill validation and test first, assignments never move, prefix builds agree."""
from __future__ import annotations

import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.compute  # noqa: F401 - pa.compute
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from splits_fixtures import ledger_splits, pair_row, realistic_pairs, write_pairs

from data_contracts.engine import evaluate, load_contract
from formats.home import DataHome
from pipelines.splits.assign import (
    NotEnoughData,
    SplitConfig,
    assign_users,
    build_splits,
    require_trainable,
    trainability_problems,
)
from pipelines.sqlrun import connect


def _split_rows(home: DataHome) -> dict[str, str]:
    rows = pq.read_table(home.table_file("split_pairs"), columns=["pair_id", "split"]).to_pylist()
    return {r["pair_id"]: r["split"] for r in rows if not r["split"].endswith("_unique")}


def _contract_failures(home: DataHome) -> list:
    con = connect({name: str(home.table_file(name)) for name in ("pairs", "split_pairs", "split_rejects", "split_ledger")})
    results = [r for name in ("split_pairs", "split_rejects", "split_ledger") for r in evaluate(load_contract(name), con)]
    return [(r.rule.name, r.value, r.error) for r in results if not r.passed]


def _days(rows: list[dict]) -> list:
    return sorted({r["dt"] for r in rows})


def _build_day_by_day(root: Path, rows: list[dict], config: SplitConfig) -> tuple[DataHome, list[dict[str, str]]]:
    """Build the splits once per day, each time on the history up to that day; the ledger after each build."""
    home = DataHome(root)
    ledgers = []
    for day in _days(rows):
        write_pairs(home, [r for r in rows if r["dt"] <= day])
        build_splits(home, config)
        ledgers.append(ledger_splits(home))
    return home, ledgers


def test_first_user_trains_then_validation_and_test_fill():
    config = SplitConfig(min_unique_rows=2, heldout_fraction=0.0)  # the fraction alone would hold out nobody
    # each new user types one new prompt: the fill alternates held-out and train users until both own 2
    events = [(f"u{i}", f"p{i}", True, True, None) for i in range(10)]
    assigned, owned = assign_users(events, {}, config)
    assert [assigned[f"u{i}"].split for i in range(10)] == [
        "train", "validation", "train", "test", "train", "validation", "train", "test", "train", "train"]
    assert [assigned[f"u{i}"].rule for i in range(10)] == [
        "first_user", "fill", "hash", "fill", "hash", "fill", "hash", "fill", "hash", "hash"]
    assert owned["validation"] == 2 and owned["test"] == 2


def test_fill_counts_prompts_the_split_owns_not_retyped_ones():
    config = SplitConfig(min_unique_rows=1, heldout_fraction=0.0)
    events = [("a", "shared", True, True, None), ("b", "shared", True, False, None),
              ("c", "c-own", True, True, None), ("d", "d-own", True, True, None)]
    assigned, owned = assign_users(events, {}, config)
    # b retyped train's prompt, which train owns: validation still owns nothing, so d fills validation too
    assert [assigned[u].split for u in "abcd"] == ["train", "validation", "train", "validation"]
    assert owned == {"train": 2, "validation": 1}


def test_ledger_entries_win_over_the_fold():
    config = SplitConfig(min_unique_rows=2)
    first, _ = assign_users([("x", "p1", True, True, None)], {}, config)
    assert first["x"].split == "train"
    pinned = {"x": first["x"].__class__("test", "fill", 0, None, config.salt)}
    again, _ = assign_users([("x", "p1", True, True, None), ("y", "p2", True, True, None)], pinned, config)
    assert again["x"].split == "test" and again["y"].position == 1


def test_day_by_day_equals_all_at_once_and_nobody_moves(tmp_path):
    config = SplitConfig()
    rows = realistic_pairs(users=40, days=4, per_day=60, seed=21, reuse_rate=0.2, self_repeat=0.3)
    home, ledgers = _build_day_by_day(tmp_path / "daily", rows, config)
    for before, after in zip(ledgers, ledgers[1:]):
        assert {u: after[u] for u in before} == before  # no user ever moves
        assert set(after) >= set(before)
    daily_pairs = _split_rows(home)
    daily_bytes = home.table_file("split_ledger").read_bytes()
    once = DataHome(tmp_path / "once")
    write_pairs(once, rows)
    build_splits(once, config)
    assert ledger_splits(once) == ledgers[-1]
    assert once.table_file("split_ledger").read_bytes() == daily_bytes
    assert _split_rows(once) == daily_pairs
    assert _contract_failures(home) == [] and _contract_failures(once) == []


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, 11), st.integers(0, 8), st.integers(0, 3), st.booleans()),
                min_size=1, max_size=45),
       st.integers(0, 4))
def test_prefix_builds_agree_on_random_histories(spec, minimum):
    config = SplitConfig(min_unique_rows=minimum, unique_prompts=5, heldout_fraction=0.2)
    rows = [pair_row(i + 1, f"{u:016x}", f"prompt {p}", f"c{i}a", f"c{i}b", day=d, tie=tie, seconds=i)
            for i, (u, p, d, tie) in enumerate(spec)]
    with tempfile.TemporaryDirectory() as tmp:
        home, ledgers = _build_day_by_day(Path(tmp) / "daily", rows, config)
        for before, after in zip(ledgers, ledgers[1:]):
            assert {u: after[u] for u in before} == before
        once = DataHome(Path(tmp) / "once")
        write_pairs(once, rows)
        build_splits(once, config)
        assert once.table_file("split_ledger").read_bytes() == home.table_file("split_ledger").read_bytes()
        assert _split_rows(once) == _split_rows(home)
        assert _contract_failures(once) == []


def test_a_user_whose_rows_vanish_keeps_the_ledger_entry(tmp_path):
    config = SplitConfig(min_unique_rows=1)
    home = DataHome(tmp_path)
    rows = [pair_row(i, f"{i:016x}", f"p{i}", f"c{i}", f"d{i}", day=0) for i in range(1, 7)]
    write_pairs(home, rows)
    build_splits(home, config)
    before = ledger_splits(home)
    write_pairs(home, rows[2:])  # e.g. two users banned after the fact
    build_splits(home, config)
    assert ledger_splits(home) == before
    write_pairs(home, rows)
    build_splits(home, config)
    assert ledger_splits(home) == before


def test_a_new_salt_starts_a_new_ledger_and_keeps_the_old_one(tmp_path):
    # a hostile review: a one-off build under another salt wiped the ledger, so the next build under the
    # old salt reassigned every user it had held (23 users changed split after one ban)
    from data_contracts.engine import evaluate, load_contract
    from pipelines.sqlrun import connect

    home = DataHome(tmp_path)
    write_pairs(home, realistic_pairs(users=30, days=1, per_day=60, seed=4))
    build_splits(home, SplitConfig())
    first = pq.read_table(home.table_file("split_ledger"))
    build_splits(home, SplitConfig(salt="another-salt"))
    both = pq.read_table(home.table_file("split_ledger"))
    assert set(both.column("salt").to_pylist()) == {"another-salt", SplitConfig().salt}
    assert both.filter(pa.compute.equal(both.column("salt"), SplitConfig().salt)).equals(first)   # untouched
    con = connect({"split_ledger": str(home.table_file("split_ledger"))})
    assert [r.rule.name for r in evaluate(load_contract("split_ledger"), con) if not r.passed] == []
    build_splits(home, SplitConfig())                          # back under the first salt: the same ledger
    again = pq.read_table(home.table_file("split_ledger"))
    assert again.filter(pa.compute.equal(again.column("salt"), SplitConfig().salt)).equals(first)


def test_forty_users_three_days_fill_every_split_to_the_minimum(tmp_path):
    home = DataHome(tmp_path)
    write_pairs(home, realistic_pairs(users=40, days=3, per_day=120, seed=0))
    report = build_splits(home, SplitConfig())
    rows = report.rows
    assert report.problems == [], report.problems
    assert all(rows[s] > 0 for s in rows)
    assert rows["validation_unique"] >= SplitConfig().min_unique_rows and rows["test_unique"] >= SplitConfig().min_unique_rows
    assert report.metadata()["trainable"] is True
    assert _contract_failures(home) == []


def test_three_users_is_not_enough_and_says_why(tmp_path):
    home = DataHome(tmp_path)
    write_pairs(home, [pair_row(i, f"{i % 3:016x}", f"p{i}", f"c{i}", f"d{i}") for i in range(1, 30)])
    report = build_splits(home, SplitConfig())
    assert report.problems and report.metadata()["trainable"] is False
    text = "; ".join(report.problems)
    assert text.startswith("too few users: the home has 3 users with labelled rankings in its splits and needs at least 10 "
                           "(splits.min_users)")
    table = pq.read_table(home.table_file("split_pairs"))
    with pytest.raises(NotEnoughData, match=r"nothing published: too few users: the home has 3 users"):
        require_trainable(table, SplitConfig().min_unique_rows, SplitConfig().min_users)
    with pytest.raises(NotEnoughData, match="split 'test' is empty: no user is held out for it yet"):
        require_trainable(table)  # publish's own floor: no empty split


def test_trainability_names_each_short_split():
    rows = {"train": 50, "validation": 4, "test": 0, "validation_unique": 3, "test_unique": 0}
    problems = trainability_problems(rows, users=15, min_unique_rows=5, min_users=10, kept_prompts={"validation": 3})
    assert [p.split(":")[0] for p in problems] == [
        "split 'test' is empty", "split 'validation_unique' has 3 rows, fewer than the 5 required",
        "split 'test_unique' is empty"]
    assert "validation's rows hold 3 distinct prompts" in problems[1] and "splits.min_unique_rows" in problems[1]
    assert trainability_problems({s: 10 for s in rows}, users=20, min_unique_rows=5) == []


def test_min_unique_rows_cannot_exceed_the_unique_cap():
    with pytest.raises(ValueError, match="min_unique_rows=20 exceeds unique_prompts=10"):
        SplitConfig(min_unique_rows=20, unique_prompts=10)


def test_the_ledger_contract_catches_repeated_positions_under_a_salt(tmp_path):
    # the rule used to read count - distinct + (max + 1 - count): positions 0, 0, 1 passed
    import datetime as dt

    from data_contracts.engine import evaluate, load_contract
    from formats.files import write_parquet_atomic
    from pipelines.sqlrun import connect
    from schemas import get_schema

    def failures(positions_by_salt):
        rows = [{"user_id": f"{salt}-{i}", "split": "train", "rule": "hash", "position": p,
                 "first_dt": dt.date(2023, 3, 1), "salt": salt}
                for salt, positions in positions_by_salt.items() for i, p in enumerate(positions)]
        path = tmp_path / "ledger.parquet"
        write_parquet_atomic(pa.Table.from_pylist(rows, schema=get_schema("split_ledger")), path)
        con = connect({"split_ledger": str(path)})
        return [r.rule.name for r in evaluate(load_contract("split_ledger"), con) if not r.passed]

    assert failures({"a": [0, 1, 2], "b": [0, 1]}) == []
    for bad in ({"a": [0, 0, 1]}, {"a": [1, 2]}, {"a": [0, 1], "b": [0, 2]}):
        assert failures(bad) == ["split_ledger_positions_dense"], bad
