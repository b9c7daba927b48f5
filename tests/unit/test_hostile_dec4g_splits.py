"""Hostile review of December 4, 2026 (dec4g): the split assignment's no-leakage promise, attacked as hostile
users and a growing history would.

Each test reproduces a defect on main and is marked ``xfail(strict=True)`` until it is fixed. Every test asserts
the violated property directly: a prompt (as the README's normalization describes it) in both train and a
held-out split, or a user who was held out placed in train.
"""
from __future__ import annotations

import shutil
import unicodedata

import pyarrow.parquet as pq
import pytest
from splits_fixtures import ledger_splits, pair_row, publish_splits, users_by_home, write_pairs
from test_splits_key_owners import _publish

from formats.home import DataHome
from pipelines.curation.pseudonym import pseudonymize
from pipelines.splits.assign import SplitConfig, build_splits, normalize_prompt

CFG = SplitConfig(heldout_fraction=0.5, unique_prompts=3, min_unique_rows=0)  # pure held-out fraction: no filling
USERS = users_by_home(CFG.salt, CFG.heldout_fraction, {"train": 2, "validation": 1, "test": 1})
PLAIN = "a red fox in the snow"


def _build(home: DataHome, rows: list[dict], config: SplitConfig = CFG) -> list[dict]:
    write_pairs(home, rows)
    build_splits(home, config)
    return [r for r in pq.read_table(home.table_file("split_pairs")).to_pylist() if not r["split"].endswith("_unique")]


def _test_typed_first_then_train(tmp_path, lookalike: str) -> list[dict]:
    """A test user types PLAIN on day 0; a train user types ``lookalike`` on day 1. The split rows."""
    rows = [pair_row(1, USERS["test"][0], PLAIN, "k1", "k2", day=0),
            pair_row(2, USERS["train"][0], lookalike, "k3", "k4", day=1)]
    return _build(DataHome(tmp_path), rows)


# --- 1. Hangul fillers are removed, not read as spaces ------------------------------------------------------------

@pytest.mark.parametrize("filler", ["\u3164", "\uffa0", "\u115f", "\u1160"])
def test_a_hangul_filler_between_words_reads_as_a_space(tmp_path, filler):
    lookalike = f"a red fox{filler}in the snow"        # renders as 'a red fox in the snow'
    split = _test_typed_first_then_train(tmp_path, lookalike)
    held_out = {r["prompt_key"] for r in split if r["split"] in ("validation", "test")}
    # the README's normalization: the filler is a space
    train_as_documented = {normalize_prompt(r["caption"].replace(filler, " ")) for r in split if r["split"] == "train"}
    assert held_out == {normalize_prompt(PLAIN)}
    assert not held_out & train_as_documented, "the test prompt is in train, typed with a Hangul filler for a space"
    assert normalize_prompt(lookalike) == normalize_prompt(PLAIN)


# --- 2. Symbols other than math/modifier ones (emoji, stars, (c), currency) stay in the key --------------------------

def _as_documented(caption: str) -> str:
    """README: 'punctuation and symbols to spaces' ('as every symbol is'): every S* character as a space."""
    return normalize_prompt("".join(" " if unicodedata.category(c).startswith("S") else c for c in caption))


@pytest.mark.parametrize("symbol", ["\U0001F98A", "\u2605", "\u00a9", "\u2728", "\u00b0"])
def test_a_trailing_symbol_or_emoji_does_not_make_a_new_prompt(tmp_path, symbol):
    split = _test_typed_first_then_train(tmp_path, f"{PLAIN} {symbol}")
    held_out = {r["prompt_key"] for r in split if r["split"] in ("validation", "test")}
    train_as_documented = {_as_documented(r["caption"]) for r in split if r["split"] == "train"}
    assert held_out == {normalize_prompt(PLAIN)}
    assert not held_out & train_as_documented, f"the test prompt is in train with {symbol!r} appended"


# --- 3. Small-capital letters ("fancy text") are not folded ----------------------------------------------------------

SMALL_CAPS = {"\u1d00": "a", "\u0280": "r", "\u1d07": "e", "\u1d05": "d", "\ua730": "f", "\u1d0f": "o",
              "\u026a": "i", "\u0274": "n", "\u1d1b": "t", "\u029c": "h", "\ua731": "s", "\u1d21": "w"}


def test_a_prompt_in_small_capitals_keys_as_the_prompt(tmp_path):
    fancy = "".join(next((s for s, a in SMALL_CAPS.items() if a == c), c) for c in PLAIN)
    assert fancy == "\u1d00 \u0280\u1d07\u1d05 \ua730\u1d0fx \u026a\u0274 \u1d1b\u029c\u1d07 \ua731\u0274\u1d0f\u1d21"
    split = _test_typed_first_then_train(tmp_path, fancy)
    held_out = {r["prompt_key"] for r in split if r["split"] in ("validation", "test")}
    train_read = {normalize_prompt("".join(SMALL_CAPS.get(c, c) for c in r["caption"]))
                  for r in split if r["split"] == "train"}
    assert held_out == {normalize_prompt(PLAIN)}
    assert not held_out & train_read, "the test prompt is in train, typed in small capitals"


# --- 4. Rotating the pseudonym secret reshuffles every hash-assigned user --------------------------------------------
# Found as: the ledger is keyed by pseudonym, HMAC(curation.pseudonym_secret, raw id); a new secret (the README
# advises one after a leak) gave every user a pseudonym the ledger never saw, and 7 of 200 raw users published as
# validation/test landed in train, silently. The splits stage cannot re-key by itself (it never holds the secret or
# a raw id), so the promise tested is: a build under the new secret refuses, naming the migration, and once the
# ledger is re-keyed with the old secret every raw user keeps their split.

def test_a_new_pseudonym_secret_keeps_held_out_users_held_out(tmp_path):
    config = SplitConfig()
    raw_users = range(1, 201)

    def history(secret: str) -> list[dict]:   # the same raw history, pseudonymized under ``secret``
        return [pair_row(u, pseudonymize(u, secret), f"prompt of user {u}", f"c{u}a", f"c{u}b", day=u // 50)
                for u in raw_users]

    home = DataHome(tmp_path)
    _build(home, history("secret-before"), config)
    before = {u: ledger_splits(home)[pseudonymize(u, "secret-before")] for u in raw_users}
    assert any(s != "train" for s in before.values())
    ledger_bytes = home.table_file("split_ledger").read_bytes()
    refused = None
    try:
        _build(home, history("secret-after"), config)          # the same home, its ledger in place
    except Exception as exc:
        refused = exc
    after = ledger_splits(home)
    leaked = sorted(u for u in raw_users if before[u] != "train" and after.get(pseudonymize(u, "secret-after")) == "train")
    assert leaked == [], f"raw users held out before the new secret and in train after it: {leaked}"
    assert refused is not None and "pipelines.splits.rekey" in str(refused), refused
    assert "secret-before" not in str(refused) and "secret-after" not in str(refused)
    assert home.table_file("split_ledger").read_bytes() == ledger_bytes, "a refused build wrote the ledger"

    from pipelines.splits.rekey import rekey_ledger
    report = rekey_ledger(home, raw_users, "secret-before", "secret-after", config.salt, log=lambda m: None)
    assert report["rekeyed"] == 200 and report["conflicts"] == 0
    assert "secret" not in repr(report)
    _build(home, history("secret-after"), config)
    after = {u: ledger_splits(home)[pseudonymize(u, "secret-after")] for u in raw_users}
    assert after == before
    assert len(ledger_splits(home)) == 200, "old pseudonyms left in the ledger"
    again = rekey_ledger(home, raw_users, "secret-before", "secret-after", config.salt, log=lambda m: None)
    assert again["rekeyed"] == 0 and again["already_rekeyed"] == 200      # a second run changes nothing


# --- 5./6. A rebuild from scratch must keep every published user where published ------------------------------------
# Found as: 'a rebuild from scratch on the same raw history gives the same ledger' (README) is false: the fill
# decisions depend on the order the days arrived in and on rows a ban later removes, so a build that lost its
# split_ledger (a lost warehouse, a rebuild from the raw zone) put users published in validation into train,
# silently. No fold over the history can know the arrival order, so the record of what was promised is the
# published dataset: the promise tested is that a rebuild that lost the warehouse but kept datasets/ gives every
# published user the split it was published in (the hostile review's versions built a fresh home from the same raw
# history with nothing published; such a home has promised nothing).

def _row(user: int, day: int) -> dict:
    return pair_row(user, f"{user:016x}", f"prompt of user {user}", f"c{user}a", f"c{user}b", day=day)


def _nightly(home: DataHome, rows: list[dict], config: SplitConfig, night: int) -> None:
    """A night: splits built, then the version published (:func:`publish_splits`)."""
    _build(home, rows, config)
    publish_splits(home, f"2023-03-{night:02d}-{night:010x}")


def _rebuild_without_warehouse(nightly: DataHome, root, rows: list[dict], config: SplitConfig) -> DataHome:
    """A home with the nightly home's published datasets only (warehouse lost), built from the same raw history."""
    scratch = DataHome(root)
    shutil.copytree(nightly.root / "datasets", scratch.root / "datasets", symlinks=True)
    _build(scratch, rows, config)
    return scratch


def test_a_late_day_gives_the_same_ledger_as_a_build_from_scratch(tmp_path):
    config = SplitConfig(min_unique_rows=1, heldout_fraction=0.0)
    rows = [_row(1, 0), _row(2, 1), _row(3, 2)]
    nightly = DataHome(tmp_path / "nightly")
    _nightly(nightly, [r for r in rows if r["ranking_id"] != 2], config, 3)   # day 1's export is late
    _nightly(nightly, rows, config, 4)                                      # it arrives the next night
    messages: list[str] = []
    scratch = DataHome(tmp_path / "scratch")
    shutil.copytree(nightly.root / "datasets", scratch.root / "datasets", symlinks=True)
    write_pairs(scratch, rows)
    report = build_splits(scratch, config, log=messages.append)
    nightly_ledger, scratch_ledger = ledger_splits(nightly), ledger_splits(scratch)
    assert nightly_ledger[f"{3:016x}"] == "validation"
    leaked = [u for u, s in nightly_ledger.items() if s != "train" and scratch_ledger.get(u) == "train"]
    assert leaked == [], f"held out in the nightly ledger, train when rebuilt from the same raw history: {leaked}"
    assert scratch_ledger == nightly_ledger
    assert report.metadata()["ledger_reseeded_users"] == 3                     # said loudly, with the count
    assert any("re-seeded" in m and "3 users" in m for m in messages), messages


def test_a_ban_then_a_rebuild_from_scratch_keeps_every_user_where_published(tmp_path):
    config = SplitConfig(min_unique_rows=2, heldout_fraction=0.0)
    rows = [_row(u, 0) for u in range(1, 9)]
    nightly = DataHome(tmp_path / "nightly")
    _nightly(nightly, rows, config, 1)                  # published: user 2 in validation, user 4 in test
    after_ban = rows[1:]                                # user 1 banned: its rows leave pairs
    _nightly(nightly, after_ban, config, 2)
    published = ledger_splits(nightly)
    rebuilt = ledger_splits(_rebuild_without_warehouse(nightly, tmp_path / "scratch", after_ban, config))
    assert published[f"{2:016x}"] == "validation"
    leaked = sorted(u for u, s in published.items() if s != "train" and rebuilt.get(u) == "train")
    assert leaked == [], f"held-out users in train after a rebuild from the same raw history: {leaked}"
    assert {u: s for u, s in published.items() if u != f"{1:016x}"} == rebuilt


# --- 7. Owners were recomputed each night: a ban moved a held-out prompt into train ----------------------------------
# Found as (then documented as known, not fixed): a test user types P first, a train user retypes it the next day
# (rejected). Banning the test user made P train-owned, so the next version trained on the prompt the previous
# version tested on. Fixed by the stored key owner pins (split_key_owners): P stays test-owned.

def test_a_later_ban_never_moves_a_held_out_prompt_into_train(tmp_path):
    home = DataHome(tmp_path)
    te, tr = USERS["test"][0], USERS["train"][0]
    rows = [pair_row(1, te, PLAIN, "k1", "k2", day=0),
            pair_row(2, tr, "A red fox in the snow!", "k3", "k4", day=1),
            pair_row(3, tr, "an owl at dusk", "k5", "k6", day=1)]
    first = _build(home, rows)
    held_out_before = {r["prompt_key"] for r in first if r["split"] in ("validation", "test")}
    assert held_out_before == {normalize_prompt(PLAIN)}
    _publish(home, "2023-03-05-00000000d4")          # the first version published (a key is pinned once published)
    second = _build(home, [r for r in rows if r["user_id"] != te])      # the test user is banned later
    train_after = {r["prompt_key"] for r in second if r["split"] == "train"}
    assert not held_out_before & train_after, "a prompt published in test is in train of the next version"
