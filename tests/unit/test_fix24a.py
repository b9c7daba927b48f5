"""The fixes of review rev24a's defects (tests/unit/test_hostile_rev24a.py holds the reviewer's tests), and what the
fixes added around them:

- a moderation list that is not UTF-8 (Latin-1, UTF-16 with or without a byte order mark) is refused with an error
  naming the file and the line, the banned users' list too; a UTF-8 list with a byte order mark is still read;
- the display order of a right-to-left override holds only the text's own characters (every one but the bidi
  controls, once), and is ICU's wherever ICU drops no mark; a character outside the BMP stays whole;
- the Arabic tatweel is read as nothing in the prompt key, the moderation key and the moderation text;
- the key owner pins record the versions of the Unicode / ICU data the key was computed with, and a change (or a
  record from before it was kept) re-keys them once;
- the split ledger is re-seeded from every retained version ``latest`` was switched to (``latest``'s split first,
  a version a publish left unswitched never), and a ledger restored from before a salt change is re-seeded under the
  current salt, while a salt change still reshuffles when ``latest`` is known to be built under the old salt.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import random

import icu
import pyarrow.parquet as pq
import pytest
import regex
from splits_fixtures import ledger_splits, pair_row, publish_splits, users_by_home, write_pairs

from formats.home import DataHome
from pipelines.curation.decisions import ListNotUtf8, read_id_list, read_phrases
from pipelines.splits import assign, coverage
from pipelines.splits.assign import SplitConfig, build_splits

QUIET = {"log": lambda message: None}


# --- moderation lists that are not UTF-8 --------------------------------------------------------------------------

@pytest.mark.parametrize("data, line, says", [
    ("nude\nbreasts\nnudé\n".encode("latin-1"), 3, "Latin-1"),
    ("nudé\n".encode("utf-16"), 1, "UTF-16"),                      # Windows Notepad's "Unicode": a byte order mark
    ("nude\nsex\n".encode("utf-16-le"), 1, "UTF-16"),              # ASCII text in UTF-16 without one: NULs in UTF-8
], ids=["latin-1", "utf-16-with-bom", "utf-16-ascii-without-bom"])
def test_a_phrase_list_that_is_not_utf8_names_the_file_the_line_and_what_to_do(tmp_path, data, line, says):
    path = tmp_path / "nsfw_phrases.txt"
    path.write_bytes(data)
    with pytest.raises(ListNotUtf8) as caught:
        read_phrases(path)
    message = str(caught.value)
    assert message.startswith(f"{path}:{line}: ") and "save it as UTF-8" in message and says in message
    assert "\n" not in message


def test_a_banned_users_list_that_is_not_utf8_names_the_file(tmp_path):
    path = tmp_path / "banned_users.txt"
    path.write_bytes("12\n# Jérôme\n13\n".encode("latin-1"))
    with pytest.raises(ListNotUtf8, match=f"^{path}:2: the banned user id list is not UTF-8"):
        read_id_list(path)


def test_utf8_lists_with_a_byte_order_mark_are_still_read(tmp_path):
    phrases, banned = tmp_path / "p.txt", tmp_path / "b.txt"
    phrases.write_bytes("\ufeffnudé\n# comment\nsex  scene\n".encode("utf-8"))
    banned.write_bytes("\ufeff12\n7 # spam\n".encode("utf-8"))
    assert read_phrases(phrases) == ["nudé", "sex scene"]
    assert read_id_list(banned) == [7, 12]


# --- the display order of a right-to-left override ----------------------------------------------------------------

def _icu_order(text: str) -> str | None:
    bidi = icu.Bidi()
    bidi.setPara(icu.UnicodeString(text), 0)
    try:
        return str(bidi.writeReordered(icu.Bidi.REMOVE_BIDI_CONTROLS | icu.Bidi.KEEP_BASE_COMBINING))
    except icu.ICUError:
        return None


def test_the_display_order_holds_the_texts_characters_and_is_icus_wherever_icu_drops_no_mark():
    controls = "\u200c\u200d\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
    alphabet = list("ab c1.") + list(controls) + ["\u0301", "\u3099", "\u20dd", "\u05d0", "\u0627", "\u0644",
                                                  "\U0001F600", "\U0001D400", "\u2029", "\n"]
    mark_after_control = regex.compile(f"[{controls}]\\p{{M}}")
    rng = random.Random(24)
    compared = 0
    for _ in range(3000):
        text = "\u202e" + "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 10)))
        shown = assign._display_order(text)
        assert sorted(shown) == sorted(c for c in text if c not in controls), [hex(ord(c)) for c in text]
        theirs = _icu_order(text)
        if theirs is not None and not mark_after_control.search(text):
            assert shown == theirs, [hex(ord(c)) for c in text]
            compared += 1
    assert compared > 1000


def test_the_display_order_keeps_marks_on_their_letters_and_astral_characters_whole():
    assert assign._display_order("a \u202ecat\u202c dog") == "a tac dog"
    assert assign._display_order("\u202ea\u0301b") == "ba\u0301"                   # the accent stays on its a
    assert assign._display_order("\u202e\U0001F600x\U0001D400") == "\U0001D400x\U0001F600"
    assert assign._display_order("\u202e\u0301ab") == "ba\u0301"                  # a mark drawn on nothing: kept
    assert assign._display_order("") == ""


# --- the tatweel -------------------------------------------------------------------------------------------------

def test_the_tatweel_is_read_as_nothing_in_every_key():
    plain, stretched = "صورة سكس", "صـورة سـكـــس"
    assert assign.normalize_prompt(stretched) == assign.normalize_prompt(plain)
    assert assign.moderation_key(stretched) == assign.moderation_key(plain)
    assert assign.moderation_text(stretched + "!") == assign.moderation_text(plain + "!")
    # a harakat NFKC spells on a tatweel (U+FE71) stays, on the letter before it
    assert assign.normalize_prompt("قطة\ufe71") == assign.normalize_prompt("قطة\u064b")


# --- the pins record the Unicode / ICU data the key was computed with ---------------------------------------------

def _record(home: DataHome) -> dict:
    return json.loads(pq.read_schema(home.table_file("split_key_owners")).metadata[coverage.PINS_KEY])


def _publish(home: DataHome, name: str) -> None:
    publish_splits(home, name)
    sha = hashlib.sha256(home.table_file("split_pairs").read_bytes()).hexdigest()
    coverage.write_published_source(home, home.datasets / name, sha)


def test_the_pins_record_the_key_data_and_a_change_of_it_rekeys_once(tmp_path, monkeypatch):
    home = DataHome(tmp_path)
    config = SplitConfig()
    t, v = users_by_home(config.salt, config.heldout_fraction, {"train": 2})["train"]
    rows = [pair_row(1, t, "a fox", "c1a", "c1b", day=0), pair_row(2, v, "a red fox", "c2a", "c2b", day=0)]
    write_pairs(home, rows)
    build_splits(home, config, **QUIET)
    _publish(home, "2023-03-01-00000000a1")
    build_splits(home, config, **QUIET)
    record = _record(home)
    assert (record["key_version"], record["key_data"]) == (assign.KEY_VERSION, assign.key_data_version())
    assert f"ICU {icu.ICU_VERSION}" in record["key_data"] and "regex " in record["key_data"]
    # an upgrade of the data: the next build re-keys (logged), records it, and the one after does nothing
    monkeypatch.setattr(assign, "key_data_version", lambda: "ICU 99.1 (Unicode 99.0); regex 2099.1.1")
    logged: list[str] = []
    build_splits(home, config, log=logged.append)
    assert any("its Unicode / ICU data" in line and "ICU 99.1" in line for line in logged), logged
    assert _record(home)["key_data"] == "ICU 99.1 (Unicode 99.0); regex 2099.1.1"
    logged.clear()
    build_splits(home, config, log=logged.append)
    assert not any("prompt key function changed" in line for line in logged), logged


def test_pins_recorded_without_the_key_data_are_rekeyed_once(tmp_path, monkeypatch):
    home = DataHome(tmp_path)
    config = SplitConfig()
    t, v = users_by_home(config.salt, config.heldout_fraction, {"train": 2})["train"]
    write_pairs(home, [pair_row(1, t, "a fox", "c1a", "c1b"), pair_row(2, v, "a red fox", "c2a", "c2b")])
    with monkeypatch.context() as patch:             # pins written by the code before the data versions were recorded
        patch.setattr(assign, "key_data_version", lambda: None)
        build_splits(home, config, **QUIET)
        _publish(home, "2023-03-01-00000000a1")
        build_splits(home, config, **QUIET)
    assert "key_data" not in _record(home) and _record(home)["key_version"] == assign.KEY_VERSION
    logged: list[str] = []
    build_splits(home, config, log=logged.append)
    assert any("prompt key function changed (its Unicode / ICU data unrecorded" in line for line in logged), logged
    assert _record(home)["key_data"] == assign.key_data_version()


# --- the ledger re-seeded from every retained switched-to version, and across a salt change -----------------------

def _users_by_two_salts(first: SplitConfig, second: SplitConfig, wanted: list[tuple[str, str]]) -> list[str]:
    """One pseudonym-like user id per (home under ``first``, home under ``second``) in ``wanted``."""
    found: list[str | None] = [None] * len(wanted)
    i = 0
    while None in found:
        user = f"{i:016x}"
        homes = (assign.user_home(user, first.salt, first.heldout_fraction),
                 assign.user_home(user, second.salt, second.heldout_fraction))
        for k, want in enumerate(wanted):
            if found[k] is None and homes == want and user not in found:
                found[k] = user
                break
        i += 1
    return found


def test_latest_keeps_its_users_split_over_an_older_version_built_under_another_salt(tmp_path):
    # X was published in validation by a1 (the old salt) and in train by a2 (the new salt, latest): the deliberate
    # reshuffle. A ledger lost after it re-seeds X as latest published X, not as the older version did
    old = SplitConfig(salt="old-salt", heldout_fraction=0.5, min_unique_rows=0)
    new = dataclasses.replace(old, salt="new-salt")
    x, t1, t2 = _users_by_two_salts(old, new, [("validation", "train"), ("train", "train"), ("train", "train")])
    home = DataHome(tmp_path)
    rows = [pair_row(1, t1, "a prompt of T1", "c1a", "c1b", day=0), pair_row(2, x, "a prompt of X", "c2a", "c2b", day=1)]
    write_pairs(home, rows)
    build_splits(home, old, **QUIET)
    assert ledger_splits(home)[x] == "validation"
    _publish(home, "2023-03-02-00000000a1")
    build_splits(home, new, **QUIET)
    assert {r["user_id"]: r["split"] for r in pq.read_table(home.table_file("split_pairs")).to_pylist()}[x] == "train"
    _publish(home, "2023-03-03-00000000a2")
    home.table_file("split_ledger").unlink()                                   # the ledger lost
    write_pairs(home, rows + [pair_row(3, t2, "a prompt of T2", "c3a", "c3b", day=2)])
    report = build_splits(home, new, **QUIET)
    now = {(r["user_id"], r["salt"]): (r["split"], r["rule"])
           for r in pq.read_table(home.table_file("split_ledger")).to_pylist()}
    assert now[(x, new.salt)] == ("train", "published") and now[(t1, new.salt)] == ("train", "published")
    assert report.metadata()["ledger_reseeded_users"] == 2


def test_a_version_a_publish_left_unswitched_does_not_reseed_the_ledger(tmp_path):
    cfg = SplitConfig(heldout_fraction=0.5, min_unique_rows=0)
    other = dataclasses.replace(cfg, salt="another-salt")
    a, y = _users_by_two_salts(cfg, other, [("train", "train"), ("train", "validation")])
    home = DataHome(tmp_path)
    write_pairs(home, [pair_row(1, a, "a prompt of A", "c1a", "c1b", day=0)])
    build_splits(home, cfg, **QUIET)
    publish_splits(home, "2023-03-01-00000000a1")
    rows = [pair_row(1, a, "a prompt of A", "c1a", "c1b", day=0), pair_row(2, y, "a prompt of Y", "c2a", "c2b", day=1)]
    write_pairs(home, rows)
    build_splits(home, other, **QUIET)
    publish_splits(home, "2023-03-02-00000000a2", switch=False)               # a publish that died before switching
    home.table_file("split_ledger").unlink()
    build_splits(home, cfg, **QUIET)
    entries = {r["user_id"]: (r["split"], r["rule"]) for r in pq.read_table(home.table_file("split_ledger")).to_pylist()}
    assert entries[y] == ("train", "hash")                   # never published in validation: assigned by the fold
    assert entries[a] == ("train", "published")


def test_a_restored_ledger_after_a_salt_change_still_reshuffles_when_latest_was_built_under_the_old_salt(tmp_path):
    # latest is known (the publish record names the home's split_pairs, built under the old salt) to be the old
    # salt's: the users the restored ledger holds under the old salt are reshuffled, not re-seeded; a user it lacks
    # under every salt is re-seeded (a lost entry)
    old = SplitConfig(heldout_fraction=0.5, min_unique_rows=0)
    new = dataclasses.replace(old, salt="pickapic-split-v2")
    x, y, z = _users_by_two_salts(old, new, [("validation", "train"), ("train", "train"), ("validation", "train")])
    home = DataHome(tmp_path)
    rows = [pair_row(1, y, "a prompt of Y", "c1a", "c1b", day=0), pair_row(2, x, "a prompt of X", "c2a", "c2b", day=1)]
    write_pairs(home, rows)
    build_splits(home, old, **QUIET)
    ledger_before_z = home.table_file("split_ledger").read_bytes()
    rows.append(pair_row(3, z, "a prompt of Z", "c3a", "c3b", day=2))
    write_pairs(home, rows)
    build_splits(home, old, **QUIET)
    _publish(home, "2023-03-03-00000000a1")
    home.table_file("split_ledger").write_bytes(ledger_before_z)               # restored from an older copy
    logged: list[str] = []
    build_splits(home, new, log=logged.append)
    now = {(r["user_id"], r["salt"]): (r["split"], r["rule"])
           for r in pq.read_table(home.table_file("split_ledger")).to_pylist()}
    assert now[(x, new.salt)] == ("train", "hash")                             # the deliberate reshuffle
    assert now[(z, new.salt)] == ("validation", "published")                   # unknown under every salt: re-seeded
    assert not any("other salts only" in line for line in logged), logged
