"""The prompt key ignores invisible characters and cross-script look-alike letters; the caption stays as typed."""
from __future__ import annotations

import sys

import pyarrow.parquet as pq
import regex
from hypothesis import given, settings
from hypothesis import strategies as st
from splits_fixtures import pair_row, users_by_home, write_pairs

from formats.home import DataHome
from pipelines.splits.assign import SplitConfig, build_splits, normalize_prompt

# Every default-ignorable code point (the Unicode property, as the regex package knows it) but the four Hangul
# fillers, which render as a blank and read as a space.
_IGNORABLE = regex.compile(r"\p{Default_Ignorable_Code_Point}")
HANGUL_FILLERS = "\u3164\uffa0\u115f\u1160"
IGNORABLES = [chr(cp) for cp in range(sys.maxunicode + 1) if _IGNORABLE.match(chr(cp)) and chr(cp) not in HANGUL_FILLERS]
# Well-known homoglyphs of Latin letters from other scripts (Cyrillic, Greek, Armenian, IPA), an oracle
# independent of the ICU data the key is built from.
# Not Greek small nu and upsilon (v and u look-alikes): their capitals look like N and Y, and a key never changes
# with case (review rev18e), so both key as their capital's twin.
LOOKALIKES = {"a": "аɑα", "c": "сⅽ", "e": "еҽ", "i": "іɩ", "j": "ј", "o": "оοσ", "p": "рρ", "s": "ѕ", "x": "х",
              "y": "уγ", "h": "һ", "n": "ո", "u": "ս", "w": "ԝ", "d": "ԁ", "g": "ɡ"}
ASCII_PROMPT = st.text(alphabet="abcdeghijnopsuvwxy ABCDEFGHIJ,.!-'", min_size=1, max_size=40)


def test_ignorables_cover_the_characters_of_the_reported_leak():
    for char in ("\u200b", "\u200c", "\u200d", "\u2060", "\u00ad", "\ufe0f", "\U000e0041", "\u180e", "\u034f"):
        assert char in IGNORABLES, hex(ord(char))
    assert normalize_prompt("a red\u200b circle on white") == normalize_prompt("a red circle on white")


@settings(max_examples=200, deadline=None)
@given(ASCII_PROMPT, st.lists(st.tuples(st.integers(0, 60), st.sampled_from(IGNORABLES)), max_size=6))
def test_invisible_characters_never_change_the_key(prompt, inserts):
    typed = prompt
    for position, char in inserts:
        at = position % (len(typed) + 1)
        typed = typed[:at] + char + typed[at:]
    assert normalize_prompt(typed) == normalize_prompt(prompt)


@settings(max_examples=200, deadline=None)
@given(ASCII_PROMPT, st.lists(st.integers(0, 60), max_size=8), st.integers(0, 2))
def test_lookalike_letters_from_other_scripts_give_one_key(prompt, positions, pick):
    typed = list(prompt)
    for position in positions:
        at = position % len(typed)
        options = LOOKALIKES.get(typed[at].lower())
        if options:
            typed[at] = options[pick % len(options)]
    assert normalize_prompt("".join(typed)) == normalize_prompt(prompt)


def test_different_prompts_keep_different_keys():
    assert normalize_prompt("a red circle") != normalize_prompt("a red square")
    assert normalize_prompt("corn field") != normalize_prompt("com field")  # ASCII is left as typed
    assert normalize_prompt("красный круг") != normalize_prompt("синий круг")
    assert normalize_prompt("\u200b\u200d") != ""  # nothing left: keyed on its own text, never the empty key


def test_the_caption_keeps_what_was_typed(tmp_path):
    home = DataHome(tmp_path)
    variants = ["a red circle on white", "a red\u200b circle on white", "a r\u0435d circle on white"]
    write_pairs(home, [pair_row(i + 1, f"{i:016x}", v, f"c{i}", f"d{i}") for i, v in enumerate(variants)])
    build_splits(home, SplitConfig(min_unique_rows=0))
    rows = pq.read_table(home.table_file("split_pairs")).to_pylist()
    rejects = pq.read_table(home.table_file("split_rejects")).to_pylist()
    assert {r["prompt_key"] for r in rows + rejects} == {"a red circle on white"}
    assert {r["caption"] for r in rows} <= set(variants)
    assert len({r["split"] for r in rows if not r["split"].endswith("_unique")}) == 1  # one owner, no leak


# Capital homoglyphs (a hostile review: case folding ran first, so Cyrillic М became м, no look-alike of m).
CAPITAL_LOOKALIKES = {"A": "АΑ", "B": "ВΒ", "C": "С", "E": "ЕΕ", "H": "НΗ", "I": "ІΙ", "K": "КΚ", "M": "МΜ",
                      "N": "Ν", "O": "ОΟ", "P": "РΡ", "T": "ТΤ", "X": "ХΧ", "Y": "Υ", "Z": "Ζ"}


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="ABCEHIKMNOPTXYZ abc", min_size=1, max_size=40), st.lists(st.integers(0, 60), max_size=8),
       st.integers(0, 2))
def test_capital_lookalikes_from_other_scripts_give_one_key(prompt, positions, pick):
    typed = list(prompt)
    for position in positions:
        at = position % len(typed)
        options = CAPITAL_LOOKALIKES.get(typed[at])
        if options:
            typed[at] = options[pick % len(options)]
    assert normalize_prompt("".join(typed)) == normalize_prompt(prompt)


def test_what_the_hostile_review_typed_keys_as_the_plain_prompt():
    plain = normalize_prompt("a cafe on the moon at night")
    cases = {
        "capitals": ("THE MOON AND HONEY", "ТНЕ МОО\u039d А\u039dD НО\u039dЕ\u03a5"),
        "greek capitals": ("NIKE SHOES", "\u039d\u0399\u039a\u0395 SHOES"),
        "turkish capital dotted I": ("istanbul gece", "\u0130STANBUL GECE"),
        "joiner inside an accent": ("café", "cafe\u034f\u0301"),
        "zero width space inside an accent": ("café", "cafe\u200b\u0301"),
        "cyrillic e with a combining acute": ("café", "caf\u0435\u0301"),
        "braille blank as spaces": ("a cafe on the moon", "a\u2800cafe\u2800on\u2800the\u2800moon"),
        "interlinear annotation": ("a cafe", "a \ufff9cafe"),
        "egyptian format control": ("a cafe", "a cafe\U00013430"),
    }
    for name, (typed, lookalike) in cases.items():
        assert normalize_prompt(lookalike) == normalize_prompt(typed), name
    assert plain != normalize_prompt("a cafe on the moon at noon")


def test_icu_lookalike_letters_key_as_their_ascii_twin():
    """Every non-ASCII letter ICU's confusables data ties to an ASCII letter or digit keys as that character,
    but for a few whose NFKC or case folding says otherwise (long s is s; the lunate sigmas are sigmas), and
    letters whose case partner has another twin (they key as their partner: case never changes a key)."""
    import unicodedata

    import icu

    checker = icu.SpoofChecker()
    twins: dict[str, list[str]] = {}
    for char in (chr(c) for c in range(0x30, 0x7F) if chr(c).isalnum()):
        twins.setdefault(checker.getSkeleton(0, char), []).append(char)
    missed = []
    for cp in range(0x80, sys.maxunicode + 1):
        char = chr(cp)
        if not unicodedata.category(char).startswith("L"):
            continue
        targets = twins.get(checker.getSkeleton(0, char))
        if targets and normalize_prompt(f"x{char}x") not in {normalize_prompt(f"x{t}x") for t in targets}:
            # a key never changes with case (review rev18e): where a letter's and its case partner's twins differ
            # (Greek nu: v and N; upsilon: u and Y; tone five), both key as the capital's twin
            base = unicodedata.normalize("NFKC", char)
            partner = base.upper() if base.upper() != base else base.lower()
            if partner != base and normalize_prompt(f"x{char}x") == normalize_prompt(f"x{partner}x"):
                continue
            missed.append(char)
    assert set(missed) <= {"\u017f", "\u03f2", "\u03f9", "\u037a"}, [f"U+{ord(c):04X}" for c in missed]


def test_blank_characters_read_as_spaces_even_the_default_ignorable_hangul_fillers():
    for blank in HANGUL_FILLERS + "\u2800\U0001d159":
        assert normalize_prompt(f"a red fox{blank}in the snow") == "a red fox in the snow", f"U+{ord(blank):04X}"
        assert normalize_prompt(f"a red fox {blank} in the snow") == "a red fox in the snow", f"U+{ord(blank):04X}"


# Emoji as users type them: single code points, presentation selectors, skin tones, ZWJ sequences, tag-sequence
# flags, the # and * keycaps, an emoji newer than Python's Unicode data (moose, Unicode 15). Not here: a digit keycap
# (reads as its digit) and a regional indicator flag (reads as its country code), see the test after this one.
EMOJI = ["\U0001F98A", "\u2764\ufe0f", "\U0001F44D\U0001F3FB", "\U0001F469\U0001F3FD\u200d\U0001F680",
         "\U0001F3F3\ufe0f\u200d\U0001F308", "\U0001F9D1\u200d\U0001F91D\u200d\U0001F9D1",
         "\U0001F3F4\U000E0067\U000E0062\U000E0073\U000E0063\U000E0074\U000E007F", "#\ufe0f\u20e3",
         "*\u20e3", "\U0001F468\u200d\U0001F469\u200d\U0001F467\u200d\U0001F466", "\U0001F9B0", "\U0001FACE",
         "\u2728", "\u2605", "\u00a9", "\u00ae", "\u2122", "\u00b0", "$", "\u20ac", "\u00a3", "\u20bf", "\u2318",
         "\u2615\ufe0e", "\u2800"]


def test_every_symbol_and_emoji_sequence_is_a_separator_as_a_whole():
    plain = normalize_prompt("a red fox in the snow")
    for emoji in EMOJI:
        for typed in (f"a red fox in the snow {emoji}", f"a red fox {emoji} in the snow", f"a red fox{emoji}in the snow",
                      f"{emoji}a red fox in the snow{emoji}{emoji}"):
            assert normalize_prompt(typed) == plain, (typed, normalize_prompt(typed))
    assert normalize_prompt("a fox\u2605\u0301 in the snow") == normalize_prompt("a fox in the snow")  # orphan mark
    assert normalize_prompt("30\u2103") == normalize_prompt("30\u00b0C")      # degree Celsius: the C stays
    assert normalize_prompt("$100 bill") == normalize_prompt("100 bill")
    # a prompt of nothing but emoji keys on its own text, never the empty key
    keys = {normalize_prompt(e) for e in ("\U0001F98A", "\U0001F98A\U0001F98A", "#\ufe0f\u20e3", "*\u20e3")}
    assert len(keys) == 4 and all(k.startswith("#") and len(k) > 1 for k in keys)


def test_digit_keycaps_read_as_digits_and_regional_indicators_as_letters():
    """A keycap 3️⃣ is the digit 3 (as a circled ③ is); a run of regional indicator letters reads as its letters
    between spaces, so a flag is its country code, a word of them the word, and a flag glued to a word joins none."""
    assert normalize_prompt("3\ufe0f\u20e3 foxes") == normalize_prompt("3 foxes") == normalize_prompt("\u2462 foxes")
    assert normalize_prompt("1\u20e32\ufe0f\u20e3 foxes") == "12 foxes"
    assert normalize_prompt("a red fox\U0001F1EB\U0001F1F7in paris") == "a red fox fr in paris"
    assert normalize_prompt("\U0001F1EB\U0001F1F7 fox") != normalize_prompt("\U0001F1E9\U0001F1EA fox")
    spelled = "\u200b".join(chr(0x1F1E6 + ord(c) - ord("a")) for c in "fox")
    assert normalize_prompt(f"a red {spelled}!") == normalize_prompt("a red fox")


def test_letters_and_digits_are_never_separators():
    """Only punctuation, symbols and emoji code points become spaces: no letter, digit or mark of any script."""
    from pipelines.splits.assign import _punctuation_to_space, _symbol_readings

    category = regex.compile(r"[\p{L}\p{N}\p{M}]")
    for table in (_punctuation_to_space(), _symbol_readings()):
        assert not [f"U+{cp:04X}" for cp in table if category.match(chr(cp))]
    assert normalize_prompt("route 66 to 2049, 3 foxes") == "route 66 to 2049 3 foxes"
    for typed in ("\u0968\u0966\u0968\u096a \u0939\u093f\u0928\u094d\u0926\u0940", "\u0e52\u0e50\u0e52\u0e54 \u0e2b\u0e21\u0e32"):
        key = normalize_prompt(typed)    # Devanagari and Thai digits and words (a digit may fold as its look-alike)
        assert [len(w) for w in key.split()] == [len(w) for w in typed.split()], (typed, key)
    assert normalize_prompt("1 fox") != normalize_prompt("2 fox") != normalize_prompt("fox")
    assert normalize_prompt("\u65e5\u672c\u306e\u72d0") == "\u65e5\u672c\u306e\u72d0"


# "Fancy text" as generators write "a red fox in the snow": small capitals, modifier (superscript) letters, circled,
# negative circled, negative squared, parenthesized-free styles that NFKC or the confusable fold reads as letters.
FANCY = {
    "small capitals": "\u1d00 \u0280\u1d07\u1d05 \ua730\u1d0fx \u026a\u0274 \u1d1b\u029c\u1d07 \ua731\u0274\u1d0f\u1d21",
    "superscript": "\u1d43 \u02b3\u1d49\u1d48 \u1da0\u1d52\u02e3 \u2071\u207f \u1d57\u02b0\u1d49 \u02e2\u207f\u1d52\u02b7",
    "circled": "\u24d0 \u24e1\u24d4\u24d3 \u24d5\u24de\u24e7 \u24d8\u24dd \u24e3\u24d7\u24d4 \u24e2\u24dd\u24de\u24e6",
    "negative circled": "\U0001f150 \U0001f161\U0001f154\U0001f153 \U0001f155\U0001f15e\U0001f167 \U0001f158\U0001f15d "
                        "\U0001f163\U0001f157\U0001f154 \U0001f162\U0001f15d\U0001f15e\U0001f166",
    "negative squared": "\U0001f170 \U0001f181\U0001f174\U0001f173 \U0001f175\U0001f17e\U0001f187 \U0001f178\U0001f17d "
                        "\U0001f183\U0001f177\U0001f174 \U0001f182\U0001f17d\U0001f17e\U0001f186",
    "squared": "\U0001f130 \U0001f141\U0001f134\U0001f133 \U0001f135\U0001f13e\U0001f147 \U0001f138\U0001f13d "
               "\U0001f143\U0001f137\U0001f134 \U0001f142\U0001f13d\U0001f13e\U0001f146",
    "capital small capitals": "A RED FOX \ua7ae\u0274 THE SNOW",
    "modifier small capitals": "a red fox \u1da6\u1db0 the snow",     # NFKC makes them small capitals
}


def test_fancy_text_letters_key_as_the_plain_prompt():
    plain = normalize_prompt("a red fox in the snow")
    for name, fancy in FANCY.items():
        assert normalize_prompt(fancy) == plain, (name, normalize_prompt(fancy))
    assert normalize_prompt("\u0299\u029f\u1d1c\u1d07 \u0262\u029f\u1d00\ua731\ua731") == "blue glass"
    assert normalize_prompt("\u1d0b\u1d0a\u1d18\u1d20\u1d22\u028f\ua7af\u1d0d") == "kjpvzyqm"
    assert normalize_prompt("\u0280\u1d07\u1d05 \ua730\u1d0fx") != normalize_prompt("\u0280\u1d07\u1d05 \u0299\u1d0fx")


def test_a_home_built_with_the_old_keys_leaks_nothing_after_the_new_keys(tmp_path, monkeypatch):
    """A home whose splits were built before symbols and small capitals were folded (emulated: those characters
    kept in the key) is rebuilt with the new key: the ledger keeps every user, and the train rows that now share a
    key with a held-out prompt go to split_rejects (held-out first use wins), so no key is in two splits."""
    import pipelines.splits.assign as assign

    config = SplitConfig(heldout_fraction=0.5, unique_prompts=3, min_unique_rows=0)
    users = users_by_home(config.salt, config.heldout_fraction, {"train": 2, "validation": 1, "test": 1})
    train, test, validation = users["train"], users["test"][0], users["validation"][0]
    plain = "a red fox in the snow"
    rows = [pair_row(1, test, plain, "k1", "k2", day=0),
            pair_row(2, validation, "an owl at dusk", "k3", "k4", day=0),
            pair_row(3, train[0], f"{plain} \U0001F98A", "k5", "k6", day=1),
            pair_row(4, train[1], "\u1d00\u0274 \u1d0f\u1d21\u029f \u1d00\u1d1b \u1d05\u1d1cs\u1d0b \u2728", "k7", "k8", day=1),
            pair_row(5, train[1], "a cat on a mat", "k9", "k10", day=1),
            pair_row(6, train[0], "a cat on a mat \u2605", "k11", "k12", day=2)]
    home = DataHome(tmp_path)
    write_pairs(home, rows)
    new_key = assign.normalize_prompt
    old = str.maketrans({"\U0001F98A": " fox-emoji ", "\u2728": " sparkles ", "\u2605": " star ", "\u1d00": " small-a "})
    monkeypatch.setattr(assign, "normalize_prompt", lambda text: new_key(text.translate(old)))
    build_splits(home, config)
    ledger = pq.read_table(home.table_file("split_ledger")).to_pylist()
    before = {r["split"] for r in pq.read_table(home.table_file("split_pairs")).to_pylist() if r["pair_id"] in ("3_0", "4_0")}
    assert before == {"train"}                         # the old keys kept both look-alikes in train
    monkeypatch.setattr(assign, "normalize_prompt", new_key)
    build_splits(home, config)
    assert pq.read_table(home.table_file("split_ledger")).to_pylist() == ledger
    split = [r for r in pq.read_table(home.table_file("split_pairs")).to_pylist() if not r["split"].endswith("_unique")]
    rejects = pq.read_table(home.table_file("split_rejects")).to_pylist()
    owners: dict[str, set[str]] = {}
    for r in split:
        owners.setdefault(r["prompt_key"], set()).add(r["split"])
    assert all(len(s) == 1 for s in owners.values()), owners
    assert {r["pair_id"]: r["reason"] for r in rejects} == {"3_0": "prompt_conflict", "4_0": "prompt_conflict"}
    assert owners[plain] == {"test"} and owners["an owl at dusk"] == {"validation"} and owners["a cat on a mat"] == {"train"}
    assert sorted(r["pair_id"] for r in split + rejects) == sorted(r["pair_id"] for r in rows)
