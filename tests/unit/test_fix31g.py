"""fix31g: review rev31g's prompt key defects fixed (``tests/unit/test_hostile_rev31g.py``; README section 5, step 6).

The decorative marks the key (and the moderation key and text, through the shared ``assign._visible``) removes are a
rule now (``assign._decorative_marks``): every combining mark (Mn, Me) of the shared mark blocks and of Cyrillic's
combining signs that no precomposed character holds, the emoji enclosing marks kept; a dot above on a soft-dotted
letter goes with the case fold and the dotless ``ȷ`` reads as ``j``. These tests pin the rule's edges: what it
removes, what it must keep (accents, other scripts' marks, emoji marks), the other readers of ``_visible`` (symbol-only
and bracket-only keys, the moderation text) and the real curation stage on the neighbours of the review's cases.
"""
from __future__ import annotations

import sys
import unicodedata

import pyarrow.parquet as pq
from curation_fixtures import HomeBuilder
from splits_fixtures import pair_row, users_by_home, write_pairs

from formats.home import DataHome
from pipelines.curation.decisions import CurationConfig, build_decisions
from pipelines.curation.dedup import DedupConfig, build_clusters
from pipelines.splits import assign
from pipelines.splits.assign import SplitConfig, build_splits, moderation_key, moderation_text, normalize_prompt

QUIET = {"log": lambda message: None}
SHARED_BLOCKS = ((0x0300, 0x036F), (0x1AB0, 0x1AFF), (0x1DC0, 0x1DFF), (0x20D0, 0x20FF), (0xFE20, 0xFE2F))
# the marks the key removed before fix31g (its list): each still removed
OLD_LIST = ("\u20dd\u20de\u20df\u0305\u0332\u0333\u0334\u0335\u0336\u0337\u0338\u033f\u20d2\u20d3\u20d8\u20d9\u20da"
            "\u20e5\u20e6\u20ea\u20eb\u031f\u033a\u033b\u033c\u033d\u033e\u0346\u0347\u0348\u034e\u0353\u0359\u035b"
            "\u0488\u0489")


def _held_by_a_letter() -> set[int]:
    return {int(part, 16) for cp in range(sys.maxunicode + 1) if (d := unicodedata.decomposition(chr(cp)))
            and not d.startswith("<") for part in d.split()}


def _removed() -> set[int]:
    return {cp for cp in range(0x10000) if assign._decorative_marks().fullmatch(chr(cp))}


def test_the_rule_removes_exactly_the_marks_no_letter_holds_of_the_shared_blocks():
    held, removed = _held_by_a_letter(), _removed()
    for cp in removed:                            # only combining marks; none a letter holds, but the solidus overlay
        assert unicodedata.category(chr(cp)) in ("Mn", "Me"), hex(cp)
        assert cp not in held or cp == 0x0338, hex(cp)
    for first, last in SHARED_BLOCKS:             # every mark of the shared blocks that no letter holds
        for cp in range(first, last + 1):
            if unicodedata.category(chr(cp)) in ("Mn", "Me") and cp not in held and (
                    unicodedata.normalize("NFKC", chr(cp)) == chr(cp)):      # NFKC reads U+0340 as the grave U+0300
                assert cp in removed or cp in (0x20E0, 0x20E2, 0x20E3, 0x20E4), hex(cp)
    assert {0xA670, 0xA671, 0xA672, 0x0488, 0x0489, 0x0483, 0x2DE0, 0xA67C} <= removed      # Cyrillic signs
    assert {ord(c) for c in OLD_LIST} <= removed  # the former list: nothing it removed comes back
    assert not {0x20E0, 0x20E2, 0x20E3, 0x20E4} & removed


def test_every_removed_mark_on_a_letter_keys_as_the_letter_and_hides_no_phrase():
    for cp in sorted(_removed()):
        mark = chr(cp)
        text = "".join(c + mark for c in "nude") + " statue"
        assert normalize_prompt(text) == "nude statue", hex(cp)
        assert moderation_key(text) == "nude statue", hex(cp)
        assert moderation_text(text) == "nude statue", hex(cp)


def test_accents_other_scripts_marks_and_emoji_marks_still_make_another_key():
    kept = [("résumé", "resume"), ("phở", "pho"), ("ǎ", "a"), ("ẹ́", "e"),              # accents a letter holds
            ("שָׁלוֹם", "שלום"), ("كَتَبَ", "كتب"), ("कि", "क"), ("ก็", "ก"),            # other scripts' marks
            ("🚬\u20e0", "🚬"), ("🚶\u20e2", "🚶"), ("⚠\u20e4", "⚠")]                   # emoji enclosing marks
    for marked, plain in kept:
        assert normalize_prompt(marked) != normalize_prompt(plain), marked
    assert normalize_prompt("1\ufe0f\u20e3 fox") == "1 fox"                          # a keycap still its digit


def test_a_removed_mark_unblocks_the_accent_after_it_and_decorates_every_reader():
    assert normalize_prompt("caf" + "e\u0351\u0301") == "café"        # the accent composes once the mark is out
    assert normalize_prompt("c\u0351a\u1dc3f\u20e8e\u0301") == "café"
    assert normalize_prompt("\ua670nude \u0310") == "nude"              # at the start and on a space
    assert normalize_prompt("🦊\u20e8🦊") == normalize_prompt("🦊🦊")      # symbols-only key
    assert normalize_prompt("[n\ua670u\ua670d\ua670e]") == normalize_prompt("[nude]")   # bracket-only key
    assert moderation_text("1\u03518\u0351+ only") == "18+ only"         # the symbol-keeping moderation text
    assert moderation_key("a \u202ee\u0351d\u0351u\u0351n\u0351\u202c") == moderation_key("a \u202eedun\u202c")


def test_a_dot_above_on_a_soft_dotted_letter_is_the_dot_it_has():
    j = normalize_prompt("a jungle cat")
    for copy in ("a \u0237ungle cat", "a \u0237\u0307ungle cat", "a j\u0307ungle cat", "a J\u0307ungle cat",
                 "a \u0458\u0307ungle cat", "a \U0001d6a5\u0307ungle cat", "A JUNGLE CAT"):
        assert normalize_prompt(copy) == j, copy
        assert moderation_key(copy) == moderation_key("a jungle cat"), copy
    assert normalize_prompt("i\u0307\u0301") == normalize_prompt("\u00ed")          # Lithuanian i̇́ is í
    assert normalize_prompt("\u1ecb\u0307") == normalize_prompt("\u1ecb")           # a mark below between
    assert normalize_prompt("\u012f\u0307") == normalize_prompt("\u012f")           # į with its dot
    assert normalize_prompt("\u0131\u0307ce") == "ice"
    assert normalize_prompt("o\u0307") == "\u022f"                                # no soft dot: ȯ stays ȯ
    # ɟ (DOTLESS J WITH STROKE) keys as ȷ̵ (ȷ + a stroke overlay, which the key drops) since fix33c: as j
    assert normalize_prompt("\u025f") == normalize_prompt("\u0237\u0335") == normalize_prompt("\u0237") == "j"


def test_the_moderation_stage_catches_glitch_text_and_a_dotted_dotless_j(tmp_path):
    builder = HomeBuilder(tmp_path / "moderation")
    builder.phrases = ["nude", "jerk"]
    builder.pair(1, user=1, prompt="a n\u0351\u0349u\u0310d\u035de\u031c statue")   # glitch text
    builder.pair(2, user=2, prompt="a \u0237\u0307erk")                              # the dotless j, dotted
    builder.pair(3, user=3, prompt="n\u1dc3u\u1dc3d\u1dc3e\u1dc3")                  # the Supplement block
    builder.pair(4, user=4, prompt="a nud\u00e9 statue")                             # an accent: another word
    builder.pair(5, user=5, prompt="🚬\u20e0 a cat")                                 # emoji mark, no phrase
    home = builder.write()
    build_clusters(home, DedupConfig())
    build_decisions(home, CurationConfig())
    dropped = {r["subject_id"] for r in pq.read_table(home.table_file("decisions")).to_pylist()
               if r["subject"] == "ranking" and r["reason"] == "prompt_phrase"}
    assert dropped == {"1", "2", "3"}


def test_splits_keep_every_decorated_copy_with_its_validation_prompt(tmp_path):
    config = SplitConfig()
    t, v = users_by_home(config.salt, config.heldout_fraction, {"train": 2})["train"]
    home = DataHome(tmp_path / "splits")
    prompt = "a red fox in the snow"
    copies = ["".join(c + "\u1dc3" if c.isalpha() else c for c in prompt),         # Supplement block
              "".join(c + "\ufe20" if c.isalpha() else c for c in prompt),         # half marks
              "".join(c + "\u2de0" if c.isalpha() else c for c in prompt),         # Cyrillic combining letter
              prompt.replace("a", "a\u0358")]                                         # a rare tone mark: over-merges
    rows = [pair_row(1, t, "a prompt of T", "c1a", "c1b", day=0), pair_row(2, v, prompt, "c2a", "c2b", day=1)]
    rows += [pair_row(10 + i, t, copy, f"c{10 + i}a", f"c{10 + i}b", day=2) for i, copy in enumerate(copies)]
    write_pairs(home, rows)
    build_splits(home, config, **QUIET)
    split_of = {r["pair_id"]: r["split"] for r in pq.read_table(home.table_file("split_pairs")).to_pylist()
                if r["split"] in ("train", "validation", "test")}
    assert split_of["2_0"] == "validation"
    assert all(normalize_prompt(copy) == prompt for copy in copies)
    assert not [copy for i, copy in enumerate(copies) if split_of.get(f"{10 + i}_0") == "train"]
