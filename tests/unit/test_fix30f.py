"""Fixes of hostile review rev30f (tests/unit/test_hostile_rev30f.py): the data card counts quarantined lines (not
rows; a missing file as a file), says how the held-out users were chosen (by ledger rule, as ``split_pairs`` records
them) and states the version's own tie share; ``build``'s "not enough data" line names the held-out users whose rows
all went to ``split_rejects``; ``splits.min_users`` counts users in the splits; ``pickapic query`` / ``export``
errors carry their command and say when the splits were built but nothing was published."""
from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from formats.home import DataHome
from pipelines.splits.assign import (
    HELDOUT_METADATA,
    SplitConfig,
    build_splits,
    heldout_record,
    read_heldout_record,
    read_settings_record,
    trainability_problems,
)

# --- the card's quarantine table -----------------------------------------------------------------------------------


def _quarantine(path: Path, rows: list[tuple[str, str, int, int]]) -> None:
    pq.write_table(pa.table({name: pa.array([r[i] for r in rows], kind) for i, (name, kind) in enumerate(
        [("table", pa.string()), ("reason", pa.string()), ("line_number", pa.int64()), ("line_count", pa.int64())])}),
        path)


def test_quarantined_sums_line_count_and_counts_a_file_row_as_a_file(tmp_path):
    from pipelines.publish.datacard import _quarantined

    path = tmp_path / "quarantine.parquet"
    _quarantine(path, [("rankings", "malformed_json", 7, 100),     # 100 identical lines: one row
                       ("rankings", "malformed_json", 3, 1),
                       ("downloads", "missing_file", 0, 1),         # a file-level row: no line
                       ("images", "missing_file", 0, 1), ("images", "missing_file", 0, 1),
                       ("users", "unreadable_file", 0, 1), ("users", "unreadable_file", 12, 2)])
    assert _quarantined(path) == [["downloads", "missing_file", "1 file missing"],
                                  ["images", "missing_file", "2 files missing"],
                                  ["rankings", "malformed_json", "101"],
                                  ["users", "unreadable_file", "2 (and 1 file unreadable)"]]
    _quarantine(path, [])
    assert _quarantined(path) == []


# --- the card's Splits and Known limits ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def version(tmp_path_factory):
    """A published version (its meta tables) and its splits, to render cards of other sources from."""
    from test_publish_fixtures import make_home

    from pipelines.publish.config import PublishConfig
    from pipelines.publish.samples import splits_in
    from pipelines.publish.version import publish_dataset

    home = make_home(tmp_path_factory.mktemp("card30f") / "home", num_rankings=40, seed=7)
    report = publish_dataset(home, PublishConfig(workers=1, fsync=False))
    return report.path, splits_in(pq.read_table(home.table_file("split_pairs")))


def _card(version, path: Path | None = None, **sources) -> str:
    from pipelines.publish.datacard import PRIVATE, CardSources, render

    folder, splits = version
    return render(path or folder, "v", splits, CardSources(days=["2023-03-01"], pseudonym_secret=PRIVATE, **sources))


def _section(card: str, title: str) -> str:
    start = card.index(f"## {title}")
    end = card.find("\n## ", start + 1)
    return card[start:] if end < 0 else card[start:end]


def test_the_card_states_how_the_held_out_users_were_chosen(version):
    record = {"validation": {"fill": 4}, "test": {"fill": 5, "hash": 1}}
    card = _card(version, split_settings={"heldout_fraction": 0.06, "unique_prompts": 500, "min_unique_rows": 10,
                                          "heldout_users": record})
    splits = " ".join(_section(card, "Splits").split())
    assert "fewer than `splits.min_unique_rows` = 10 prompts, new users fill them in order of arrival" in splits
    assert ("This version's held-out users: `validation` 4 users: 4 filled in as early users (the fill rule); "
            "`test` 6 users: 5 filled in as early users (the fill rule), 1 by the salted hash.") in splits
    limits = " ".join(_section(card, "Known limits").split())
    assert "- 9 of the 10 held-out users are the app's early users, put in validation / test by the fill rule" in limits
    hashed = _card(version, split_settings={"heldout_users": {"validation": {"hash": 2},
                                                              "test": {"hash": 1, "published": 1}}})
    text = " ".join(hashed.split())
    assert "`validation` 2 users: 2 by the salted hash; `test` 2 users: 1 by the salted hash, 1 kept where a " \
           "published version had them (re-seeded ledger)." in text
    assert "early users, put in" not in text                       # no fill-rule user: no such limit
    assert "`splits.min_unique_rows` (10 by default)" in text        # the setting not recorded: named as a default
    unrecorded = " ".join(_card(version).split())                 # split before splits code version 13
    assert "how each of this version's held-out users was chosen is not recorded in it" in unrecorded


def test_the_cards_tie_share_is_the_versions_own(version):
    path, splits = version
    summary = {r["split"]: r for r in pq.read_table(path / "meta" / "splits_summary.parquet").to_pylist()}
    main = [s for s in splits if not s.endswith("_unique")]
    share = sum(summary[s]["num_ties"] for s in main) / sum(summary[s]["num_pairs"] for s in main)
    limits = _section(_card(version), "Known limits")
    assert f"not expert ratings; {share:.1%} of the pairs in train / validation / test are ties." in limits
    assert "one pair in eight" not in limits
    smallest = min(summary[s]["num_prompts"] for s in splits if s.endswith("_unique"))
    assert f"+-{50 / smallest ** 0.5:.0f} points of sampling noise" in limits


def test_the_card_counts_the_versions_quarantined_lines(version, tmp_path):
    folder, _ = version
    copy = tmp_path / "v"
    shutil.copytree(folder, copy)
    target = copy / "meta" / "quarantine.parquet"
    target.chmod(0o644)
    _quarantine(target, [("rankings", "malformed_json", 4, 100), ("downloads", "missing_file", 0, 1)])
    section = _card(version, copy).split("Raw lines quarantined at ingest", 1)[1].split("Decisions (subject", 1)[0]
    assert "| rankings | malformed_json | 100 |" in section
    assert "| downloads | missing_file | 1 file missing |" in section
    _quarantine(target, [])
    assert "not a line):\n\nnone\n" in _card(version, copy).split("Decisions (subject", 1)[0]


# --- the held-out record of split_pairs ------------------------------------------------------------------------------


def test_heldout_record_round_trips_and_refuses_other_shapes():
    from pipelines.splits.assign import Assignment

    assigned = {u: Assignment(split, rule, i, None, "s") for i, (u, split, rule) in enumerate(
        [("a", "validation", "fill"), ("b", "test", "fill"), ("c", "test", "hash"), ("d", "train", "first_user")])}
    data = heldout_record([("validation", "a"), ("test", "b"), ("test", "c"), ("train", "d")], assigned)
    assert json.loads(data) == {"validation": {"fill": 1}, "test": {"fill": 1, "hash": 1}}
    assert read_heldout_record({HELDOUT_METADATA: data}) == {"validation": {"fill": 1}, "test": {"fill": 1, "hash": 1}}
    assert read_settings_record({HELDOUT_METADATA: data}) == {"heldout_users": read_heldout_record(
        {HELDOUT_METADATA: data})}
    for bad in (b"not json", b"[]", b'{"validation": {}}', b'{"validation": {"fill": -1}, "test": {}}',
                b'{"validation": {"fill": true}, "test": {}}', b'{"validation": [], "test": {}}'):
        assert read_heldout_record({HELDOUT_METADATA: bad}) is None, bad
    assert read_heldout_record(None) is None and read_heldout_record({}) is None


# --- trainability: held-out users whose rows all went to split_rejects ----------------------------------------------


def _one_prompt_home(root: Path, users: int) -> DataHome:
    """Every user ranks the same prompt once (a demo booth): train owns it, held-out users' rows all conflict."""
    from splits_fixtures import pair_row, write_pairs

    home = DataHome(root)
    write_pairs(home, [pair_row(i, f"{i:016x}", "a red circle", f"c{i}", f"d{i}") for i in range(1, users + 1)])
    return home


def test_an_empty_split_whose_users_all_conflict_says_so(tmp_path):
    home = _one_prompt_home(tmp_path / "home", 8)
    report = build_splits(home, SplitConfig(min_users=3), log=lambda message: None)
    ledger = pq.read_table(home.table_file("split_ledger")).to_pylist()
    held = {s: sum(r["split"] == s for r in ledger) for s in ("validation", "test")}
    assert held["validation"] and not held["test"]      # the fill rule picks validation while it owns no prompt
    text = "; ".join(report.problems)
    assert "split 'validation' is empty: no user is held out" not in text, text
    assert "split 'test' is empty: no user is held out for it yet" in text, text     # true of test
    assert (f"split 'validation' is empty: the ledger holds {held['validation']} user"
            f"{'s' * (held['validation'] != 1)}, but every row of theirs went to split_rejects "
            f"({held['validation']} rows: {held['validation']} as prompt_conflict)") in text, text
    assert f"split 'validation_unique' is empty: 'validation' holds {held['validation']} user" in text, text
    assert "too few users" not in text                               # train's users are enough for min_users=3


def test_min_users_counts_users_in_the_splits_not_those_whose_rows_were_all_rejected(tmp_path):
    home = _one_prompt_home(tmp_path / "home", 8)
    report = build_splits(home, SplitConfig(min_users=5), log=lambda message: None)
    in_splits = len(set(pq.read_table(home.table_file("split_pairs")).column("user_id").to_pylist()))
    assert report.users == 8 and in_splits < 5                     # pairs' users; the splits hold train's only
    assert report.problems[0] == (f"too few users: the home has {in_splits} users with labelled rankings in its "
                                  "splits and needs at least 5 (splits.min_users)"), report.problems


def test_trainability_without_ledger_users_still_says_no_user_is_held_out():
    rows = {"train": 20, "validation": 0, "test": 5, "validation_unique": 0, "test_unique": 5}
    problems = trainability_problems(rows, users=12, min_unique_rows=5, min_users=10,
                                     ledger_users={"train": 10, "test": 2}, rejected={"train": {"prompt_conflict": 3}})
    assert problems == [
        "split 'validation' is empty: no user is held out for it yet; new users fill it as they arrive",
        "split 'validation_unique' is empty: no user is held out for it yet; new users fill it as they arrive"]


# --- query / export errors -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["query", "export"])
def test_query_and_export_errors_name_the_command_and_why_nothing_is_published(tmp_path, capsys, command):
    from pipelines.query import engine, export

    module = engine if command == "query" else export
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    args = parser.parse_args(["--named", "drop_reasons"] if command == "query" else ["--output", str(tmp_path / "o")])
    home = DataHome(tmp_path / "home")
    assert module.run_from_args(args, home) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"pickapic {command}: error: no published dataset: ") and err.count("\n") == 1, err
    assert "nothing was published yet: run `pickapic build`" in err
    home.table_file("split_pairs").parent.mkdir(parents=True)
    home.table_file("split_pairs").write_bytes(b"")                 # the splits built, the publish refused
    assert module.run_from_args(args, home) == 2
    err = capsys.readouterr().err
    assert "the splits are built but no version was published" in err and "not enough data to publish" in err, err
    assert "run the publish stage" not in err
    assert module.main(["--home", str(home.root), *(["--named", "drop_reasons"] if command == "query" else
                                                     ["--output", str(tmp_path / "o")])]) == 2
    assert capsys.readouterr().err.startswith(f"python -m pipelines.query.{module.__name__.rsplit('.', 1)[1]}: error: ")


def test_query_usage_errors_name_the_command(tmp_path, capsys):
    from pipelines.query import engine

    parser = argparse.ArgumentParser()
    engine.add_arguments(parser)
    home = DataHome(tmp_path / "home")
    assert engine.run_from_args(parser.parse_args(["--named", "no_such_query"]), home) == 2
    assert re.match(r"pickapic query: error: no named query 'no_such_query'", capsys.readouterr().err)
    assert engine.run_from_args(parser.parse_args(["--named", "drop_reasons", "--param", "a=1"]), home) == 2
    assert capsys.readouterr().err.startswith("pickapic query: error: the named query 'drop_reasons' takes no --param")
