"""Leak-free train / validation / test splits by user, normalized prompt and duplicate cluster.

- Held-out users: a ledger (``split_ledger``) holds every user's split, decided once, when the user first
  appears, by folding over the history in order (:func:`assign_users`): the first user goes to train;
  while validation or test own fewer than ``min_unique_rows`` prompts, new users fill them (at most one
  held-out user for each train user); after that a user is held out iff the first 52 bits of
  ``sha256(salt + ':' + pseudonym)``, read as a fraction, fall under ``heldout_fraction`` (digest hex
  character 14, even/odd, picks validation or test). A decision depends only on the history before the
  user's first pair, so appending days never changes it; the stored ledger also keeps a user where they are
  when an older day is re-exported or banned. The fill depends on the order days arrived in, so a fold from
  scratch is no record: each build checks the ledger against the latest published version
  (:func:`load_ledger`), re-seeds the published users it lacks in the split they were published in (read from
  every retained version ``latest`` was switched to, also while ``latest`` dangles; a version built under this salt
  first, then ``latest``'s split, then held out first: :func:`merge_published_users`; under this salt also the
  users it holds under other salts only, unless the version whose split they keep is known to be built under
  another salt: reviews rev24a, rev24f; a version to read whose split folder is a link is refused, never
  skipped: :class:`UnreadPublishedVersion`), and
  refuses a ledger keyed under another pseudonym secret (:class:`LedgerKeysChanged`;
  :mod:`pipelines.splits.rekey` re-keys it). The version's sidecars are read only when they can hold a user the
  ledger lacks (:mod:`pipelines.splits.coverage`). A young home of few users thus still gets validation and test users, and a large one
  holds out ``heldout_fraction`` of its users as pickapic_v1 did. Each entry records the placement settings it was
  decided under (:func:`placement_settings`); a build under others decides again, in place, an entry no published
  version holds (a one-off override's run lasts one run: review rev36f) and settles one a published version holds.
- Keys: each row carries its normalized prompt (``prompt_key``) and the duplicate clusters of both
  images. Every key has one owner split (below); a row is kept only when all its keys are owned by its
  user's split, so no user, prompt or cluster spans two of train / validation / test (SQL contract
  rules check it). Conflicting rows are dropped into ``split_rejects`` with the reason
  (``prompt_conflict``, else ``cluster_conflict``): pairs = parent split rows + split_rejects.
- Owner of a key: its stored pin (``split_key_owners``), else computed (``owner_mode``). Once a version is
  published, the prompt_key and both image uids of its train, validation and test rows are pinned to their split
  under the salt (first writer wins, a pin never changes but towards held out after a change of the key function,
  :func:`rekey_prompt_pins`; sorted by salt, kind, key), so a published key keeps its
  split in every later version, whatever leaves ``pairs`` (a ban, a moderation rule), arrives late (a backfilled
  day) or merges. Only published keys are pinned: at the start of each build, under the ledger lock and before
  assigning, :func:`update_pins` brings the pins up to date with ``latest`` (nothing when their record covers it;
  from the home's ``split_pairs`` when that file is what ``latest`` was published from: the nightly case, no
  sidecar read; else from the sidecars of every retained version), so a build never published pins nothing. Images
  are pinned, not clusters: a cluster's id
  (its smallest image uid) changes when clusters merge. A cluster is owned by the one split its pinned member
  images (the rows' images in it and its members in ``duplicate_clusters``) are pinned to; pinned to two or more
  (clusters published in different splits merged by a new image), owner ``conflict``: every row carrying it is
  rejected (``cluster_conflict``). Pins lost (a lost file, a restored home, a home built before them) are
  re-seeded from the train / validation / test sidecars of every retained published version, oldest first, each
  key in the split it was published in (in two splits: test, then validation); keys published only in versions
  retention deleted cannot be recovered. The pins' record (:mod:`pipelines.splits.coverage`) says which
  ``split_pairs`` and versions they cover. A key pinned only under another salt is not
  re-seeded: a new salt reassigns on purpose. Cost: one row per kept prompt and image (a year of ~1M pairs:
  ~2.5M pins, 43-53 MB of Parquet). A computed owner (a key nobody has pinned), by ``owner_mode``:
  ``first_use`` (default): the split of the first row that used it, ordered by (export day, created_at,
  ranking_id, pair_index). A prompt first typed by a held-out user stays held out (held-out wins: later train
  rows with it are dropped); a popular prompt first typed by a train user stays train, and a held-out user's
  later retyping of it is dropped instead. ``heldout_wins``: any held-out use makes the key held out (test
  before validation); popular prompts typed by many users are then almost always held out, which costs train a
  large share of its rows (see the ``sacrificed_train_rows`` metadata of both modes on the same data). An unpinned
  key no row would be kept with is owned again from the rows rejected only for such keys (review rev36f).
- Prompt normalization (``prompt_key``, a matching key; the caption stays as typed): every symbol (S*,
  emoji code points) turned into spaces as typed, but a letter drawn in a shape (Ⓐ, 🄰, ⒜), which reads
  as its letter, an emoji keycap (3️⃣ as 3), a run of regional indicator letters (as its letters between
  spaces: a flag as its country code) and a CJK square word (㍻ as 平成); Unicode NFKC; blank-looking characters (Braille blank, Hangul
  fillers) read as spaces, then invisible characters removed (default-ignorable code points and format
  characters, Cf); NFC; any ``[bracketed]`` text (negative prompt) removed; punctuation and symbols
  (P*, S*) turned into spaces and the marks left on a space dropped; case folded, then every non-ASCII
  character but Katakana folded to its UTS #39 confusable prototype, whatever its case (ICU's skeleton, as the
  ASCII look-alike of its capital, else of its small letter, where one has it: a Cyrillic or Greek look-alike
  of a Latin letter, capital or not, keys as that letter, and case never changes a key; a small capital or a negative circled or squared letter, which ICU ties to nothing, as the
  letter its Unicode name says; ASCII is left as typed, so ``rn`` and ``m`` stay apart), NFC,
  case-folded, folded again, whitespace collapsed and trimmed. A prompt that normalizes to nothing keys
  on its case-folded visible text instead (never on the empty string, which would join unrelated rows).
- ``*_unique``: per held-out split, one labelled row per prompt_key (smallest salted digest of the
  pair_id), up to ``unique_prompts`` prompts chosen by salted prompt digest; rows repeat their
  parents. ``num_example_per_prompt`` counts rows with the same prompt_key within the split.
- One build at a time per home (:func:`hold_ledger_lock`): a build reads the ledger, assigns and writes it
  back, so two at once (a UI run during the nightly one) would each write the ledger they read plus their
  own new users, and the later write would drop the earlier run's published held-out users (who then fall
  wherever the fold puts them on a changed history: a leak). The whole stage holds an exclusive ``flock``
  from before it reads ``pairs`` and the ledger until its four tables are written; a second build waits,
  says so, and then builds on the first one's ledger.
- Trainable: :func:`trainability_problems` says which split a trainer would miss (empty, or a ``_unique``
  split under ``min_unique_rows``, fewer than ``min_users`` users with labelled rankings) and why (too
  few users, or too few distinct held-out prompts yet). The splits asset's blocking check and the publish stage refuse such
  a version, so ``latest`` stays on the last version a trainer can use.
"""
from __future__ import annotations

import argparse
import contextlib
import fnmatch
import functools
import hashlib
import json
import os
import re
import stat
import sys
import time
import unicodedata
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import regex

from formats.dataset import (
    MANIFEST_FILE,
    SPLITS,
    describe,
    latest_link,
    list_versions,
    read_switched,
    shard_glob,
    split_sidecars,
    switched_file,
)
from formats.files import cast_to_schema, is_real_folder, sha256_file, sweep_temps_of, write_parquet_atomic
from formats.home import DataHome
from formats.locks import hold_lock
from formats.settings import MAX_THREADS, add_flags, check_fields, knob, stage_config
from pipelines.curation.pseudonym import KEY_CHECK_METADATA, key_check, pseudonymize, read_key_check
from pipelines.invisibles import BLANK, INVISIBLE
from pipelines.splits import coverage
from pipelines.sqlrun import NO_HIVE, connect, literal_glob, register_views, run_sql, run_to_parquet
from schemas import get_schema

HELDOUT = ("validation", "test")
# The prompt key function's version (normalize_prompt): bumped with every change that can change a prompt's key, so
# the first build after it re-keys the prompt pins from the published captions (update_pins: review rev18j)
KEY_VERSION = "13"


def key_data_version() -> str | None:
    """The versions of the data the prompt key is computed from besides this code (review rev24a): ICU's (its
    confusable skeletons, inside the pyicu-wheels wheel) and the Unicode version of its data, the ``regex``
    package's (its Unicode property tables: the separators, invisibles, letters, scripts of the key), and the
    Unicode version of Python's ``unicodedata`` (NFKC, case folding, categories, names). An upgrade of any of them
    can change a prompt's key as a change of the code does, so the key owner pins record it with
    :data:`KEY_VERSION` and a change re-keys them (:func:`update_pins`). None while :data:`KEY_VERSION` is None
    (tests: the code from before the key version was recorded)."""
    if KEY_VERSION is None:
        return None
    import icu

    return (f"ICU {icu.ICU_VERSION} (Unicode {icu.UNICODE_VERSION}); regex {regex.__version__}; "
            f"Python unicodedata {unicodedata.unidata_version}")


PIN_KINDS = ("prompt", "image")          # split_key_owners.kind: a prompt_key, an image_uid
SALT_METADATA = b"pickapic.splits_salt"   # split_pairs' key-value metadata: the salt it was built under
# split_pairs' key-value metadata: the settings that shape its splits, as JSON ({"heldout_fraction": 0.06,
# "unique_prompts": 500}); the data card states them (review rev30d: it said "6%" and "500" whatever they were)
SETTINGS_METADATA = b"pickapic.splits_settings"
# split_pairs' key-value metadata: how the held-out users of its validation / test were chosen, as JSON, split ->
# ledger rule -> users of that split with a row in split_pairs ({"validation": {"fill": 4, "hash": 1}, ...}); the
# data card states it (review rev30f: it called a young version's fill-rule users a 6% salted-hash sample)
HELDOUT_METADATA = b"pickapic.splits_heldout_users"
# the ledger rules a held-out record may name ("unknown": a user the ledger has no entry for, or one of a rule this
# code does not write); a record naming any other is not believed (review rev30i: the card showed the name as written)
HELDOUT_RULES = frozenset({"first_user", "fill", "hash", "published", "unknown"})


def settings_record(config: SplitConfig) -> bytes:
    """What :data:`SETTINGS_METADATA` records of ``config``."""
    return json.dumps({"heldout_fraction": float(config.heldout_fraction),
                       "unique_prompts": int(config.unique_prompts),
                       "min_unique_rows": int(config.min_unique_rows)}, sort_keys=True).encode("ascii")


def heldout_record(users: Iterable[tuple[str, str]], assigned: dict[str, Assignment]) -> bytes:
    """What :data:`HELDOUT_METADATA` records: of the (split, user_id) of ``split_pairs``' held-out users, how many
    each ledger rule (``assigned``: user -> Assignment) put in each split."""
    counts: dict[str, Counter] = {split: Counter() for split in HELDOUT}
    for split, user in users:
        if split in counts:
            rule = assigned[user].rule if user in assigned else "unknown"
            counts[split][rule if rule in HELDOUT_RULES else "unknown"] += 1
    return json.dumps({split: dict(sorted(c.items())) for split, c in counts.items()},
                      sort_keys=True).encode("ascii")


def read_settings_record(metadata: dict | None) -> dict:
    """The settings a ``split_pairs`` file's key-value ``metadata`` records (:data:`SETTINGS_METADATA`), each only
    when it is a number in its setting's range; {} when none is recorded (written before review rev30d) or the
    record is not JSON. With ``heldout_users`` when it records them (:func:`read_heldout_record`)."""
    heldout = read_heldout_record(metadata)
    out: dict = {} if heldout is None else {"heldout_users": heldout}
    try:
        record = json.loads((metadata or {}).get(SETTINGS_METADATA, b""))
    except ValueError:
        return out
    if not isinstance(record, dict):
        return out
    fraction = record.get("heldout_fraction")
    if isinstance(fraction, (int, float)) and not isinstance(fraction, bool) and 0 <= fraction < 1:
        out["heldout_fraction"] = float(fraction)
    for name in ("unique_prompts", "min_unique_rows"):
        if _is_count(record.get(name)):
            out[name] = record[name]
    return out


def _is_count(value) -> bool:
    """A non-negative ``int`` as JSON gives it (``true`` / ``false`` are not counts)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def read_heldout_record(metadata: dict | None) -> dict[str, dict[str, int]] | None:
    """The held-out users by split and ledger rule a ``split_pairs`` file's ``metadata`` records
    (:data:`HELDOUT_METADATA`); None when it records none (written before review rev30f) or not in that form."""
    try:
        record = json.loads((metadata or {}).get(HELDOUT_METADATA, b""))
    except ValueError:
        return None
    if not isinstance(record, dict) or set(record) != set(HELDOUT):
        return None
    out: dict[str, dict[str, int]] = {}
    for split in HELDOUT:
        rules = record[split]
        if not isinstance(rules, dict) or not all(
                rule in HELDOUT_RULES and _is_count(n) for rule, n in rules.items()):
            return None     # a rule name this code never writes (review rev30i: the card showed it as written)
        out[split] = {str(rule): n for rule, n in sorted(rules.items())}
    return out


_BRACKETS = re.compile(r"\[[^\]]*\]")


@dataclass(frozen=True)
class SplitConfig:
    """Knobs of the split build."""

    salt: str = knob("pickapic-split-v1", "Salt of the held-out user digest; changing it assigns every user and key "
                     "owner afresh under the new salt (the ledger and the key owners keep the other salts' entries: "
                     "going back finds them).")
    heldout_fraction: float = knob(0.06, "Share of users held out once the held-out splits are filled "
                                   "(half validation, half test).", min=0, max=1, max_exclusive=True)
    min_unique_rows: int = knob(10, "Prompts each of validation and test must own before new users are held out "
                                "only by heldout_fraction; also the fewest rows validation_unique and test_unique "
                                "need for a version to be published (0: no filling; each still needs one row, an "
                                "empty split is never published).", min=0, max=500)
    owner_mode: str = knob("first_use", "Who owns a shared prompt/cluster no stored pin owns yet: 'first_use' or "
                           "'heldout_wins' (a pinned key keeps its owner in both).",
                           choices=("first_use", "heldout_wins"))
    # The fill gives train the first user and validation/test at most one user per train user, so 10 users
    # give validation and test two or three users each.
    min_users: int = knob(10, "Fewest users with labelled rankings in the splits a published version needs (an "
                          "evaluation on two or three users says little; a user whose every row went to "
                          "`split_rejects` does not count).", min=3)
    unique_prompts: int = knob(500, "Prompts in each of validation_unique and test_unique (at most; at least 1: a "
                               "version with an empty _unique split is never published).", min=1,
                               range_note="0 would leave validation_unique and test_unique empty for good, and a "
                                          "version with an empty split is never published")
    threads: int = knob(0, "DuckDB threads (0: one per core).", min=0, max=MAX_THREADS, output=False)

    def __post_init__(self) -> None:
        check_fields(self)
        if not self.salt:
            raise ValueError("SplitConfig.salt must not be empty")
        if self.min_unique_rows > self.unique_prompts:
            raise ValueError(f"SplitConfig.min_unique_rows={self.min_unique_rows} exceeds "
                             f"unique_prompts={self.unique_prompts}, the most a _unique split holds")


@functools.cache
def _punctuation_to_space() -> dict[int, str]:
    """``str.translate`` table: every separator (:data:`_SEPARATOR`: punctuation, symbols, emoji) -> space, but
    the symbols :func:`_prototype` reads as a letter (:func:`_styled_letters`: negative squared 🅰)."""
    every = "".join(map(chr, range(sys.maxunicode + 1)))
    styled = _styled_letters()
    return {m.start(): " " for m in _SEPARATOR.finditer(every) if m.start() not in styled}


@functools.cache
def _symbol_readings() -> dict[int, str]:
    """``str.translate`` table for the text as typed, before NFKC: every symbol (a separator but for punctuation,
    which the bracket step needs) -> a space, or, for a letter or digit drawn in a shape, what NFKC reads in it
    (circled ⓐ and squared 🄰 as the letter, parenthesized ⒜ as `` a ``, ℃ as `` C``): so a symbol NFKC spells
    out in letters (™ as TM, ℠, ㎏) is a separator as every symbol is, instead of letters glued to the word. But a
    CJK square word (U+3200..33FF: era names ㍻ ㋿, ㍿, katakana words ㌔, telegraph dates ㋀) reads as the word NFKC
    spells in it when that word has no ASCII letter (Japanese has no spaces: the symbol is the word; ㎏ stays a
    separator)."""
    table = {}
    for cp, space in _punctuation_to_space().items():
        char = chr(cp)
        if _PUNCTUATION.match(char):
            continue
        reading = unicodedata.normalize("NFKC", char).translate(_punctuation_to_space())
        if len(reading.strip()) == 1 and _LETTER_OR_DIGIT.match(reading.strip()):
            table[cp] = reading
        elif 0x3200 <= cp <= 0x33FF and _CJK_WORD.fullmatch(reading.strip()):
            table[cp] = reading           # a CJK square word (㍻ 平成, ㍿ 株式会社): the word, unspaced
        else:
            table[cp] = space
    return table


@functools.cache
def _ascii_punctuation_to_space() -> bytes:
    """``bytes.translate`` table of :func:`_punctuation_to_space` for the ASCII bytes."""
    table = _punctuation_to_space()
    return bytes(ord(" ") if b in table else b for b in range(256))


def normalize_prompt(text: str) -> str:
    """The prompt key: symbols to spaces (a letter drawn in a shape as the letter, keycaps as digits, regional
    indicators as letters, CJK square words as their words: :func:`_read_symbols`), NFKC, blanks to spaces,
    invisibles out, NFC, brackets out, punctuation to spaces, case-folded, confusables folded whatever the case
    (:func:`_caseless_prototype`: a Cyrillic letter as the Latin letter its capital looks like; small capitals as
    their letters; Katakana as is), NFC, case-folded, NFC, whitespace collapsed."""
    key = _folded(_spaced(_BRACKETS.sub(" ", _visible(_read_symbols(text)))))
    return key if key else _symbol_key(text)


def _symbol_key(text: str) -> str:
    """The key of a prompt of nothing but symbols (emoji): ``#`` and its visible symbols, case folded, without
    what the main key also drops between them (whitespace, punctuation, skin-tone modifiers), so ``🦊 🦊``,
    ``🦊🦊!`` and ``🦊🦊`` (and ``👍🏻``, ``👍``) key alike; a prompt of punctuation alone keys on its text. A prompt
    whose letters or digits are all in ``[brackets]`` keys on them as the main key reads letters (look-alikes and
    small capitals folded, case folded twice), its punctuation as spaces, its words kept apart (``[a red fox]`` is
    not ``[ared fox]``) and its symbols kept, with no space next to a symbol (``🦊 [fox]`` is ``🦊[fox]``)."""
    visible = _fold_case(_visible(_read_keycaps(text)))     # a keycap as its character: #️⃣ is # and *⃣ is *
    if _LETTER_OR_DIGIT.search(visible) or any(ord(c) in _styled_letters() for c in visible):
        letters = _fold_case("".join(map(_letter_char, _fold_case("".join(map(_letter_char, visible))))))
        words = " ".join(_SKIN_TONES.sub("", _PUNCTUATION.sub(" ", letters)).split())
        core = _SPACE_AT_SYMBOL.sub("", words)
        if core:
            return "#" + core
    core = _SYMBOL_KEY_DROPS.sub("", visible)
    return "#" + (core if core else " ".join(visible.split()))


def _letter_char(char: str) -> str:
    """A non-ASCII letter or digit, or a letter drawn in a symbol, as its confusable prototype; anything else as is."""
    if char.isascii() or not (_LETTER_OR_DIGIT.match(char) or ord(char) in _styled_letters()):
        return char
    return _caseless_prototype(char)


def moderation_key(text: str) -> str:
    """What a moderation phrase is matched against (:mod:`pipelines.curation.decisions`): the prompt key
    of :func:`normalize_prompt` with bracketed text kept (a phrase inside brackets is still a phrase),
    so zero-width and format characters, look-alike letters, fullwidth and styled letters, non-ASCII
    spaces and punctuation between words change nothing. Empty for a prompt of nothing but those."""
    if text.isascii():       # the same result without the Unicode steps, which change no ASCII text
        return " ".join(text.encode("ascii").translate(_ascii_punctuation_to_space()).decode("ascii").lower().split())
    return _both_orders(text, lambda t: _folded(_spaced(_visible(_read_symbols(t)))))


def moderation_text(text: str) -> str:
    """What a moderation phrase holding punctuation or a symbol (an emoji, ``18+``) is matched against
    (:mod:`pipelines.curation.decisions`), as its :func:`moderation_key` would read the symbol as a space: the text
    with its symbols kept, but emoji keycaps as their digit, NFKC (fullwidth letters), blanks as spaces,
    invisibles out (zero-width spaces, emoji presentation selectors), every non-ASCII letter or digit folded to
    its confusable prototype (a Cyrillic ``е``), case folded, whitespace collapsed."""
    if text.isascii():       # the same result without the Unicode steps, which change no ASCII text
        return " ".join(text.lower().split())
    def text_of(t: str) -> str:       # case folded first, so a capital folds as its small letter (review rev18g)
        visible = _fold_case(_SKIN_TONES.sub("", _visible(_read_keycaps(t))))
        return " ".join(_fold_case(unicodedata.normalize("NFC", "".join(map(_text_char, visible)))).split())
    return _both_orders(text, text_of)


def _text_char(char: str) -> str:
    """One character of :func:`moderation_text`: a non-ASCII letter or digit, or a letter drawn in a symbol (negative
    squared 🅽, circled 🅝: :func:`_styled_letters`), as its confusable prototype; a punctuation mark or symbol whose
    prototype is ASCII punctuation (the typographic apostrophe ’ as ', the plus emoji ➕ as +) as that; any other
    symbol (an emoji) as typed."""
    if char.isascii() or _LETTER_OR_DIGIT.match(char) or ord(char) in _styled_letters():
        return _letter_char(char)
    if _PUNCTUATION_OR_SYMBOL.match(char):
        folded = _prototype(char)
        if folded and folded.isascii() and not any(c.isalnum() or c.isspace() for c in folded):
            return folded
    return char


def _both_orders(text: str, key: Callable[[str], str]) -> str:
    """``key(text)``, and for a text holding a RIGHT-TO-LEFT OVERRIDE also ``key`` of it in the order it is shown
    (:func:`_display_order`), the two joined by a paragraph separator (U+2029: a word boundary no phrase's ``\\s+``
    crosses). Both, because the override reverses only left-to-right text: what it holds nested or already
    right-to-left shows as stored, and a phrase is caught in whichever order a reader sees it."""
    stored = key(text)
    if "\u202e" not in text:
        return stored
    shown = key(_display_order(text))
    return stored if shown == stored else f"{stored}\u2029{shown}"


def _display_order(text: str) -> str:
    """``text`` in the order it is shown (ICU's implementation of the Unicode bidirectional algorithm, each
    paragraph left to right, an accent kept on its letter, the direction controls removed): a run a RIGHT-TO-LEFT
    OVERRIDE reverses is read as shown, whatever isolates, embeddings and pops it holds or sits in. Moderation only
    (with the stored order, :func:`_both_orders`): the prompt key and the model read the characters as stored.

    ICU gives the visual runs; the characters are put in their order here, not by ``writeReordered`` (review
    rev24a): with ``REMOVE_BIDI_CONTROLS | KEEP_BASE_COMBINING`` ICU drops a combining mark together with the bidi
    control before it (the override itself, when its run starts with a mark) but returns as many characters as
    the text holds without its controls, the last of them whatever its buffer held (NUL, or what an earlier call
    left there), so a text's moderation key depended on the texts read before it. Here the bidi controls ICU's
    ``REMOVE_BIDI_CONTROLS`` removes (ZWNJ, ZWJ, LRM, RLM, the embeddings, overrides and isolates) are left out
    first, then a reversed run is reversed by clusters (a character and the combining marks after it, kept in their
    order: ``KEEP_BASE_COMBINING``; a mark that starts the run is a cluster of its own). Every character of the
    result is one of the text's, and every one but the controls is in it once: ICU's own result wherever it drops
    no mark."""
    import icu

    if not text:
        return text
    # ICU counts UTF-16 code units: the code point each unit belongs to (both halves of a surrogate pair alike)
    unit_to_char = [i for i, char in enumerate(text) for _ in range(2 if ord(char) > 0xFFFF else 1)]
    bidi = icu.Bidi()
    try:
        bidi.setPara(icu.UnicodeString(text), 0)
        runs = [bidi.getVisualRun(i) for i in range(bidi.countRuns())]
    except icu.ICUError:
        return text
    shown: list[str] = []
    for start, length, direction in runs:
        chars = [i for i in dict.fromkeys(unit_to_char[start:start + length])    # the run's code points, logical
                 if not _BIDI_CONTROL.match(text[i])]
        if direction:                                                  # right to left: reversed by clusters
            clusters: list[list[int]] = []
            for i in chars:
                if clusters and unicodedata.category(text[i]).startswith("M"):
                    clusters[-1].append(i)                             # a mark stays after its character
                else:
                    clusters.append([i])
            chars = [i for cluster in reversed(clusters) for i in cluster]
        shown += [text[i] for i in chars]
    return "".join(shown)


# The characters ICU's REMOVE_BIDI_CONTROLS leaves out of a reordered text: ZWNJ, ZWJ, LRM, RLM, LRE, RLE, PDF, LRO,
# RLO, LRI, RLI, FSI, PDI (ICU's IS_BIDI_CONTROL_CHAR)
_BIDI_CONTROL = re.compile("[\u200c-\u200f\u202a-\u202e\u2066-\u2069]")


def _read_symbols(text: str) -> str:
    """Emoji keycaps as their digit, # or * (1️⃣2️⃣ as 12, as circled ①② read), a run of regional indicator letters
    as its letters between spaces (🇳🇺🇩🇪 as NUDE, a flag 🇫🇷 as its country code FR), every other symbol to a space,
    a letter or digit drawn in a shape as NFKC reads it (:func:`_symbol_readings`); before NFKC, which would spell
    ™ as TM."""
    return _read_regional(_read_keycaps(text)).translate(_symbol_readings())


def _read_keycaps(text: str) -> str:
    """Emoji keycaps (1️⃣, #️⃣, *⃣: a digit, # or * with U+20E3 and optional invisibles or decorative marks between)
    as their digit, # or *; also on a character NFKC reads as one (a fullwidth ``１⃣``, a mathematical ``𝟏⃣``,
    ``＃⃣``: review rev32d), as that ASCII character."""
    if "\u20e3" not in text:
        return text
    return _keycap().sub(lambda m: unicodedata.normalize("NFKC", m.group(1)), text)


@functools.cache
def _keycap() -> regex.Pattern:
    """An emoji keycap (:func:`_read_keycaps`): a character whose NFKC is an ASCII digit, ``#`` or ``*`` (planes 0
    and 1: fullwidth, mathematical, superscript, circled digits), then invisibles (U+FE0F) or decorative marks
    (:func:`_decorative_marks`: ``1̲⃣``), then U+20E3."""
    keyed = [chr(cp) for cp in range(0x20000) if len(n := unicodedata.normalize("NFKC", chr(cp))) == 1
             and n in "0123456789#*"]
    decorative = _decorative_marks().pattern[1:-1]
    return regex.compile("([" + regex.escape("".join(keyed)) + "])[\\p{Default_Ignorable_Code_Point}\\p{Cf}"
                         + decorative + "]*\u20e3")


def _read_regional(text: str) -> str:
    """Each run of regional indicator letters (U+1F1E6..1F1FF, invisibles between allowed) as its capital letters
    A-Z, with a space either side (a flag glued to a word does not join it)."""
    if not _REGIONAL_ANY.search(text):
        return text
    return _REGIONAL.sub(lambda m: " " + "".join(chr(ord(c) - 0x1F1E6 + ord("A")) for c in m.group()
                                                 if 0x1F1E6 <= ord(c) <= 0x1F1FF) + " ", text)


def _visible(text: str) -> str:
    """NFKC, blank-looking characters to spaces, invisibles and decorative marks out, NFC. Blanks first: the
    Hangul fillers are default-ignorable too, and they read as the space they render as. Decorative marks
    (:func:`_decorative_marks`: underlines, strokes and slashes through a letter, enclosing circles and squares,
    symbols drawn on a letter, glitch-text stacks) are what "fancy text" generators put on every letter; no
    precomposed letter of any script holds them. So is the
    kashida (:data:`_KASHIDA`: the Arabic tatweel that stretches a joining stroke, ``قـطـة`` is ``قطة``)."""
    visible = _INVISIBLE.sub("", _BLANK.sub(" ", unicodedata.normalize("NFKC", _jamo_finals(text))))
    if not visible.isascii():
        visible = _KASHIDA.sub("", _decorative_marks().sub("", visible))
    return unicodedata.normalize("NFC", visible)


def _jamo_finals(text: str) -> str:
    """A Korean word spelled in separate compatibility jamo (``ㅅㅔㄱㅅㅡ``, a common way past a word filter) as its
    syllables: NFKC reads every compatibility consonant as a leading jamo, so it rebuilt ``누드`` but left ``섹`` as
    ``세ᄀ``. After NFC (so a syllable typed decomposed is whole first), each compatibility jamo is read as its
    conjoining jamo, and a consonant after a vowel jamo and not before one as that syllable's final: ``ㅅㅔㄱㅅㅡ`` is
    ``섹스``, ``ㄱㅏㅅㅡㅁ`` is ``가슴`` (review rev18i). A jamo after a whole syllable stays apart (``좋아ㅋㅋ``)."""
    if not _COMPAT_JAMO.search(text):
        return text
    jamo = _COMPAT_JAMO.sub(lambda m: unicodedata.normalize("NFKC", m.group()), unicodedata.normalize("NFC", text))
    return _JAMO_FINAL.sub(lambda m: _FINAL_OF[m.group()], jamo)


def _spaced(text: str) -> str:
    """Separators (punctuation, symbols, emoji) to spaces, and the marks left on a space out (a combining accent
    or keycap typed on a symbol is drawn on nothing once the symbol is a space)."""
    return _ORPHAN_MARKS.sub("", text.translate(_punctuation_to_space()))


def _folded(spaced: str) -> str:
    """Confusables folded, case folded (twice: case folding can make a new non-ASCII letter, final sigma
    to sigma), whitespace collapsed. Punctuation already went: a dash must not become a look-alike letter."""
    return " ".join(_fold_case(_fold_confusables(_fold_case(_fold_confusables(_fold_case(spaced))))).split())


def _fold_confusables(text: str) -> str:
    """Every non-ASCII character as its confusable prototype (:func:`_prototype`), NFC, punctuation to spaces."""
    if text.isascii():
        return text
    folded = "".join(c if c.isascii() else _caseless_prototype(c) for c in text)
    return unicodedata.normalize("NFC", folded).translate(_punctuation_to_space())


def _fold_case(text: str) -> str:
    """Case-folded on the canonical decomposition, then NFC (Unicode's canonical caseless match: NFD first, so a
    capitalised polytonic Greek ``ᾼ͂`` folds as its small ``ᾷ`` does, review rev18g; a folded letter may
    decompose: the capital I with dot becomes i + U+0307, which reads as the i it is). A dot above on any
    soft-dotted letter (``i``, ``j``, ``į``, Cyrillic ``і`` ``ј``, ...: a letter whose dot an accent above replaces),
    with only marks below between, goes the same way (:data:`_SOFT_DOTTED_DOT`): ``j̇`` is the ``j`` it is drawn as,
    and so is the dotless ``ȷ`` given its dot, as ``ı̇`` is ``i`` (review rev31g)."""
    folded = unicodedata.normalize("NFD", text).casefold()
    if "\u0307" in folded:
        folded = _SOFT_DOTTED_DOT.sub("", folded)
    return unicodedata.normalize("NFC", folded)


# A combining dot above on a soft-dotted letter (Unicode's Soft_Dotted: i, j, į, ɨ, і, ј, ϳ, ...), marks below (not of
# the above class 230) allowed between, as canonical ordering puts them: the dot the letter has (NFD text).
_SOFT_DOTTED_DOT = regex.compile(r"(?<=\p{Soft_Dotted}[\p{M}--\p{ccc=230}]*)\u0307", regex.V1)
# Removed from a key: default-ignorable code points and every other format character; read as a space: the
# blank-looking characters (Braille blank, Hangul fillers), read before _INVISIBLE runs (pipelines.invisibles,
# shared with the ingest's empty_prompt rule).
_INVISIBLE = INVISIBLE
_BLANK = BLANK
# Separators: punctuation (P*), symbols (S*: math, currency, modifier and other symbols: emoji, skin-tone modifiers,
# regional indicators, stars, (c), degree) and emoji code points (Extended_Pictographic, which also holds the emoji
# blocks' code points not assigned yet), by the regex package's Unicode data; never a letter, digit or mark.
_SEPARATOR = regex.compile(r"[[\p{P}\p{S}\p{Extended_Pictographic}]--[\p{L}\p{N}\p{M}]]", regex.V1)
_PUNCTUATION = regex.compile(r"\p{P}")
_LETTER_OR_DIGIT = regex.compile(r"[\p{L}\p{N}]")
# A run of regional indicator letters (a flag is two of them), invisibles (a zero-width space) between them allowed.
_REGIONAL_ANY = regex.compile("[\U0001F1E6-\U0001F1FF]")
_REGIONAL = regex.compile(r"[\U0001F1E6-\U0001F1FF](?:[\p{Default_Ignorable_Code_Point}\p{Cf}]*[\U0001F1E6-\U0001F1FF])*")
# A CJK square's word (NFKC of ㍻ is 平成): letters and digits, none of them ASCII letters (㎏ is kg: a unit symbol).
_CJK_WORD = regex.compile(r"[[\p{L}\p{N}]--[A-Za-z]]+", regex.V1)
# Decorative combining marks, part of no letter (review rev31g: a rule, not a list): every combining mark (Mn, Me) of
# the blocks of marks shared by the scripts (Combining Diacritical Marks U+0300..036F, its Extended U+1AB0..1AFF and
# Supplement U+1DC0..1DFF, Combining Diacritical Marks for Symbols U+20D0..20FF, Combining Half Marks U+FE20..FE2F)
# and of Cyrillic's combining signs (titlo, the number signs U+0483..0489 and U+A66F..A672, the combining letters
# U+2DE0..2DFF, U+A674..A67D, U+A69E..A69F) that no precomposed character holds (in no canonical decomposition):
# the underlines, overlines, strokes, enclosing circles and squares, the symbols drawn under or over a letter, the
# Cyrillic millions signs (n҉u҉d҉e҉, n꙰u꙰d꙰e꙰) and the stacks of "glitch" (Zalgo) text. NFKC has composed every
# mark a letter holds first. Also the long solidus overlay U+0338, a slash through a letter (≠ holds it). Kept: the
# accents a precomposed letter holds (acute, grave, diaeresis, ...: they make other words), the marks of every other
# script (Hebrew points, Arabic harakat, Indic vowel signs) and the enclosing marks emoji use (the prohibition
# sign U+20E0, the screen U+20E2, the keycap U+20E3, the triangle U+20E4: 🚬⃠ is not 🚬).
_MARK_BLOCKS = ((0x0300, 0x036F), (0x1AB0, 0x1AFF), (0x1DC0, 0x1DFF), (0x20D0, 0x20FF), (0xFE20, 0xFE2F),
                (0x0483, 0x0489), (0x2DE0, 0x2DFF), (0xA66F, 0xA67D), (0xA69E, 0xA69F))
_EMOJI_ENCLOSING = frozenset((0x20E0, 0x20E2, 0x20E3, 0x20E4))


@functools.cache
def _decorative_marks() -> regex.Pattern:
    """The decorative combining marks (the rule at :data:`_MARK_BLOCKS`), by the standard library's ``unicodedata``
    (its categories and canonical decompositions: recorded in :func:`key_data_version`)."""
    # planes 0 and 1 hold every canonical decomposition with a mark (plane 2's are CJK compatibility ideographs)
    held = {int(part, 16) for cp in range(0x20000) if (d := unicodedata.decomposition(chr(cp)))
            and not d.startswith("<") for part in d.split()}
    marks = [cp for first, last in _MARK_BLOCKS for cp in range(first, last + 1)
             if unicodedata.category(chr(cp)) in ("Mn", "Me") and cp not in held and cp not in _EMOJI_ENCLOSING
             and unicodedata.normalize("NFKC", chr(cp)) == chr(cp)]      # NFKC, run first, reads U+0340 as U+0300
    return regex.compile("[" + "".join(map(chr, sorted({*marks, 0x0338}))) + "]")


# The kashida: the Arabic tatweel U+0640, which stretches the stroke that joins two letters to justify a line
# (``قـطـة`` is ``قطة``, cat): part of no letter, the usual way past an Arabic word filter, read as nothing (review
# rev24a). A harakat NFKC spells on a tatweel (U+FE71 ARABIC TATWEEL WITH FATHATAN ABOVE) stays, on the letter before
# it. (NKo's lajanyalan U+07FA stays a letter, as review rev18e asked.)
_KASHIDA = regex.compile("\u0640")
# What the key of a prompt of symbols alone drops between them: whitespace, punctuation, skin-tone modifiers.
_SYMBOL_KEY_DROPS = regex.compile("[\\s\\p{P}\U0001F3FB-\U0001F3FF]+")
# Emoji skin-tone modifiers (U+1F3FB..1F3FF): the same emoji in another colour.
_SKIN_TONES = regex.compile("[\U0001F3FB-\U0001F3FF]+")
# A space next to a character that is no letter, digit or mark (a symbol), in the key of a prompt of bracketed text.
_SPACE_AT_SYMBOL = regex.compile(r" (?=[^\pL\pN\pM])|(?<=[^\pL\pN\pM]) ")
_PUNCTUATION_OR_SYMBOL = regex.compile(r"[\p{P}\p{S}]")
_LETTER = regex.compile(r"\pL")
# Katakana and its prolonged sound mark (ー, halfwidth ｰ): kept out of the confusable fold (review rev18e), so a key
# tells a Katakana ロ from the Han 口 and the particle へ from the Katakana ヘ (ﾛﾘへの愛 holds ロリ)
_KATAKANA = regex.compile(r"[\p{Katakana}\u30fc\uff70]")
# The CJK scripts, kept out of the confusable fold as Katakana is: ICU reads Han 一 as Katakana ー, Hangul vowels ㅡ ㅣ
# as ー and Han 丨, so a Korean key spelled 유니섹스 as 유ᄂ丨서丨ᄀᄉー and a Han numeral continued a Katakana word.
_CJK = regex.compile(r"[\p{Katakana}\p{Hiragana}\p{Han}\p{Hangul}\p{Bopomofo}\u30fc\uff70\u3099\u309a]")
# Leading consonant jamo (choseong) and the final (jongseong) each one has; a vowel jamo (jungseong).
_FINAL_OF = dict(zip("\u1100\u1101\u1102\u1103\u1105\u1106\u1107\u1109\u110a\u110b\u110c\u110e\u110f\u1110\u1111\u1112",
                     "\u11a8\u11a9\u11ab\u11ae\u11af\u11b7\u11b8\u11ba\u11bb\u11bc\u11bd\u11be\u11bf\u11c0\u11c1\u11c2"))
_COMPAT_JAMO = regex.compile("[\u3131-\u318e\uffa1-\uffdc]")   # compatibility and halfwidth jamo
_JAMO_FINAL = regex.compile("(?<=[\u1161-\u1175])[" + "".join(_FINAL_OF) + "](?![\u1161-\u1175])")
_DIGIT = regex.compile(r"\pN")
# The modifier letters that read as an apostrophe or prime (ʼ ʻ ʽ ˈ ʹ, Spacing Modifier Letters and the Greek numeral
# sign): they fold to ' as a typed apostrophe reads (``girlʼs``); every other modifier letter (Lisu tone letters ꓸ ꓹ,
# NKo ߺ and its tone apostrophes, ˆ, 〳) stays a letter (review rev18e)
_APOSTROPHE_LIKE = regex.compile("[\u02b0-\u02ff\u0374]")
# Marks (accents, enclosing keycaps or circles) at the start of the text or after a space: drawn on nothing.
_ORPHAN_MARKS = regex.compile(r"(?:^|(?<=\s))\p{M}+")


@functools.lru_cache(maxsize=65536)
def _prototype(char: str) -> str:
    """A non-ASCII character's UTS #39 confusable prototype (ICU skeleton), as the ASCII letter or digit with
    the same skeleton where there is one (ICU's skeleton of ASCII ``m`` is ``rn``: a look-alike of ``m``
    keys as ``m``), else NFKC of the skeleton without invisibles. Not case-folded (the key folds case after).
    A letter folds to a letter twin and a digit to a digit twin where there is one (a caseless Lisu ꓳ or the
    dental click ǀ is O or l, not 0 or 1); a letter or digit whose prototype holds punctuation or a symbol (Hiragana
    く as ❬, Katakana ノ as /, Hebrew י as ') stays itself: a letter stays a letter (the apostrophe-like modifier
    letters ʼ ʻ ʽ ˈ ʹ are the exception: they fold to ', as a typed apostrophe reads; a Lisu tone letter ꓸ stays)."""
    if unicodedata.normalize("NFD", char)[0].isascii():
        return char          # an ASCII letter with marks (é, İ): case folding and NFC handle it
    skeleton = _spoof_checker().getSkeleton(0, char)
    if _LETTER_OR_DIGIT.match(char):   # ICU spells ø as o + U+0338, đ as d + U+0335: the decorative marks a key
        skeleton = _decorative_marks().sub("", skeleton) or skeleton   # drops where typed (review rev32d)
    base = _overlaid_letters().get(char) if skeleton == char else None
    if base:                 # ⱥ, ꞓ, ꝃ, ӿ: no confusable data, the letter as its base as a + U+0338 keys (rev33c)
        return _prototype(unicodedata.normalize("NFKC", base))   # as the key reads it typed (ẜ as ſ̸, as s)
    twins = _ascii_by_skeleton().get(skeleton)
    if twins:                # the twin of the same case: a Greek capital iota is I, not l
        kind = str.isalpha if _LETTER.match(char) else str.isdigit if _DIGIT.match(char) else None
        twins = [t for t in twins if kind(t)] or twins if kind else twins
        same_case = [t for t in twins if (t.isupper(), t.islower()) == (char.isupper(), char.islower())]
        return (same_case or [t for t in twins if t == skeleton] or twins)[0]
    styled = _styled_letters().get(ord(char))
    if styled:               # "fancy text" ICU has no twin for: small capitals, negative squared letters
        return styled
    folded = _INVISIBLE.sub("", unicodedata.normalize("NFKC", skeleton))
    if _PUNCTUATION_OR_SYMBOL.search(folded) and _LETTER_OR_DIGIT.match(char) and not (
            _APOSTROPHE_LIKE.match(char) and set(folded) == {"'"}):
        return char          # a letter read as punctuation would become a space in a key: it stays a letter
    return folded


# A Latin, Cyrillic or Greek letter drawn as another letter with an overlay (its Unicode name: "LATIN SMALL LETTER A
# WITH STROKE", "... C WITH BAR", "... K WITH DIAGONAL STROKE", "... D WITH MIDDLE TILDE", "... P WITH STROKE THROUGH
# DESCENDER", "... L WITH DOUBLE BAR"), what the overlay marks U+0334..U+0338 typed on that letter draw. A vertical
# stroke (ҝ, ҹ) and a top bar (ƃ) are not overlays: those letters stay themselves.
_OVERLAID_NAME = re.compile(r"((?:LATIN|CYRILLIC|GREEK) (?:CAPITAL|SMALL) LETTER .+?) WITH (.+)")
_OVERLAY_PART = re.compile(r"(?:(?:SHORT |LONG |HIGH |DIAGONAL |OBLIQUE |HORIZONTAL |DOUBLE )?(?:STROKE|BAR)"
                           r"(?: OVERLAY| THROUGH DESCENDER)?|(?:DOUBLE )?MIDDLE TILDE|SLASH)")


@functools.cache
def _letter_names() -> tuple[tuple[str, str], ...]:
    """(character, Unicode name) of every non-ASCII character of planes 0 and 1 whose name holds ``LETTER`` (the
    standard library's ``unicodedata``): the one walk of the names :func:`_styled_letters` and
    :func:`_overlaid_letters` share (0.1 s a process)."""
    return tuple((chr(cp), name) for cp in range(0x80, 0x20000) if "LETTER" in (name := unicodedata.name(chr(cp), "")))


@functools.cache
def _overlaid_letters() -> dict[str, str]:
    """A letter with an overlay (:data:`_OVERLAID_NAME`) -> its base letter: the letter named without the overlay
    (``ⱥ`` -> ``a``, ``ӿ`` -> ``х``, ``ꝅ`` K WITH STROKE AND DIAGONAL STROKE -> ``k``; a letter with an overlay and
    another part keeps that part: ``𝼚`` I WITH STROKE AND RETROFLEX HOOK -> ``ᶖ``). From the Unicode names of the
    standard library's ``unicodedata``, planes 0 and 1; a letter whose base has no name of its own is left out
    (``ƛ``, ``ʄ``). Review rev33c: 19 Latin and 2 Cyrillic letters ICU's confusable data leaves whole keyed apart
    from the same letter typed as base + overlay mark, which the key drops as decorative (a split leak)."""
    out = {}
    for char, name in _letter_names():
        match = _OVERLAID_NAME.fullmatch(name)
        if not match or unicodedata.decomposition(char):
            continue
        parts = match.group(2).split(" AND ")
        rest = [part for part in parts if not _OVERLAY_PART.fullmatch(part)]
        if len(rest) == len(parts):
            continue
        name = match.group(1) + (" WITH " + " AND ".join(rest) if rest else "")
        try:
            out[char] = unicodedata.lookup(name)
        except KeyError:
            continue
    return out


@functools.lru_cache(maxsize=65536)
def _caseless_prototype(char: str) -> str:
    """:func:`_prototype` of a letter whatever its case (review rev18e: ``Кот`` and ``кот`` keyed apart, a train /
    test leak): a function of ``char.casefold()`` alone. A cased letter folds to the ASCII look-alike of its capital
    where that has one (К and к as K, Н and н as H, Ν and ν as N), else to that of its small letter (Г and г as r,
    Һ and һ as h, Б and б as 6), else to the case-folded letter's prototype; the key case-folds after. A few small letters
    look like another Latin letter than their capital does (ν v / Ν N, υ u / Υ Y, ƽ s / Ƽ 5): they key as the
    capital's, since a prompt must not change its key with its case."""
    if _CJK.match(char):
        return char          # CJK scripts key as typed (NFKC: halfwidth as fullwidth): Katakana ロ is not Han 口,
        #                      Han 一 is not the Katakana ー, a Hangul syllable is not its jamo and ー (review rev18g)
    small = char.casefold()
    if len(small) != 1:
        return "".join(_caseless_prototype(c) if not c.isascii() else c for c in small)
    if small.isascii():
        return small
    # the capital, then the small letter (Cherokee case-folds to its capitals: ꮁ folds to Ꮁ, which looks like Γ)
    for variant in dict.fromkeys(v for v in (small.upper(), small.lower(), small) if len(v) == 1):
        folded = _prototype(variant)
        if folded.isascii() and folded.isalnum():
            return folded
    return _prototype(small)


# A Latin letter in a style: a small capital (LATIN LETTER SMALL CAPITAL R, modifier small capitals after NFKC),
# the capital of one, a letter in a negative (white on black) circle or square, a squared small letter; and the
# dotless i and j (ı, ȷ: the letter without its dot; ICU ties ı to i, ȷ to nothing: review rev31g).
_STYLED_NAME = re.compile(r"(?:NEGATIVE (?:CIRCLED|SQUARED) |SQUARED )?LATIN (CAPITAL |SMALL )?LETTER "
                          r"(?:SMALL CAPITAL |DOTLESS )?([A-Z])")


@functools.cache
def _styled_letters() -> dict[int, str]:
    """Code point -> ASCII letter, for the letters in a style (:data:`_STYLED_NAME`, from the Unicode names of the
    standard library's ``unicodedata``) that NFKC leaves as they are and ICU ties to no ASCII letter: the small
    capitals of "fancy text" generators (ᴀ ʀᴇᴅ ꜰᴏx), 🅰 and 🅐, the dotless ȷ. Lower case but for a capital letter's
    name."""
    out = {}
    # planes 0 and 1 only: planes 2 and 3 hold CJK ideographs, 14 tags and selectors, 15 and 16 private use, the
    # rest nothing (the same 79 letters in a quarter of the time: 0.15 s a process, paid by every build's splits)
    for char, name in _letter_names():
        match = _STYLED_NAME.fullmatch(name)
        if match and unicodedata.normalize("NFKC", char) == char:
            letter = match.group(2)
            out[ord(char)] = letter if match.group(1) == "CAPITAL " else letter.lower()
    return out


@functools.cache
def _ascii_by_skeleton() -> dict[str, list[str]]:
    """ICU skeleton -> the ASCII letters and digits that have it (``l``: ``1``, ``I`` and ``l``)."""
    checker = _spoof_checker()
    out: dict[str, list[str]] = {}
    for char in (chr(c) for c in range(0x30, 0x7F) if chr(c).isalnum()):
        out.setdefault(checker.getSkeleton(0, char), []).append(char)
    return out


@functools.cache
def _spoof_checker():
    import icu  # PyICU (pyicu-wheels): ICU's own confusables data, shipped inside the wheel

    return icu.SpoofChecker()


def user_home(pseudonym: str, salt: str, heldout_fraction: float) -> str:
    """The split the held-out fraction gives a user (the ``hash`` rule of the ledger)."""
    digest = hashlib.sha256(f"{salt}:{pseudonym}".encode("utf-8")).hexdigest()
    if int(digest[:13], 16) < int(heldout_fraction * (1 << 52)):
        return "validation" if int(digest[13], 16) % 2 == 0 else "test"
    return "train"


@dataclass
class SplitReport:
    """Rows, users, prompts and tie rate per split, the rows dropped for leakage prevention, trainability."""

    per_split: list[dict]
    rejects: list[tuple[str, str, int]]
    pairs: int
    train_home_rows: int
    sacrificed_train_rows: int
    users: int = 0                                        # users with labelled pairs
    new_users: dict[str, int] = field(default_factory=dict)   # split -> users added to the ledger by this run
    problems: list[str] = field(default_factory=list)     # why a trainer could not use this split set
    config: dict = field(default_factory=dict)
    reseeded_users: dict[str, int] = field(default_factory=dict)   # split -> ledger entries re-seeded from it
    published_version: str | None = None                  # the version the ledger was checked against
    published_sidecars_read: bool = False                 # its sidecars were read (the ledger's or the pins' record did not cover it)
    pins_added: dict[str, int] = field(default_factory=dict)      # kind -> pins appended from latest's split_pairs
    pins_reseeded: dict[str, int] = field(default_factory=dict)   # kind -> pins re-seeded from the published sidecars
    pins_held: int = 0                                    # pins under this salt after the build
    pins_sidecars_read: bool = False                      # the pins were re-seeded from the published sidecars
    pins_update: str = "nothing published"                # how the pins were brought up to date (update_pins)
    pins_versions_read: int = 0                           # published versions whose sidecars the pins re-seed read
    pins_rekeyed: int = 0                                 # prompt pins added or held out by a key-function re-key
    dropped_pinned: int = 0                               # rows dropped because a key's owner is a stored pin
    dropped_cluster_merge: int = 0                        # rows dropped: a cluster whose images are pinned to two splits

    @property
    def rows(self) -> dict[str, int]:
        return {s["split"]: s["rows"] for s in self.per_split}

    def metadata(self) -> dict:
        """JSON-able values and markdown tables."""
        split_rows = "\n".join(
            f"| {s['split']} | {s['rows']} | {s['users']} | {s['prompts']} | {s['tie_rate']:.4f} |" for s in self.per_split)
        reject_rows = "\n".join(f"| {home} | {reason} | {n} |" for home, reason, n in self.rejects)
        sacrificed = self.sacrificed_train_rows / self.train_home_rows if self.train_home_rows else 0.0
        return {
            "pairs": self.pairs,
            "users": self.users,
            "rows_per_split": self.rows,
            "users_per_split": {s["split"]: s["users"] for s in self.per_split},
            "prompts_per_split": {s["split"]: s["prompts"] for s in self.per_split},
            "tie_rate_per_split": {s["split"]: s["tie_rate"] for s in self.per_split},
            "new_users_per_split": dict(self.new_users),
            "ledger_reseeded_users": sum(self.reseeded_users.values()),
            "ledger_reseeded_per_split": dict(self.reseeded_users),
            "ledger_checked_against": self.published_version or "nothing published yet",
            "ledger_published_sidecars_read": self.published_sidecars_read,
            "key_owners_added": sum(self.pins_added.values()),
            "key_owners_added_per_kind": {k: self.pins_added.get(k, 0) for k in PIN_KINDS},
            "key_owners_reseeded": sum(self.pins_reseeded.values()),
            "key_owners_reseeded_per_kind": {k: self.pins_reseeded.get(k, 0) for k in PIN_KINDS},
            "key_owners_pinned": self.pins_held,
            "key_owners_published_sidecars_read": self.pins_sidecars_read,
            "key_owners_published_versions_read": self.pins_versions_read,
            "key_owners_update": self.pins_update,
            "key_owners_rekeyed": self.pins_rekeyed,
            "split_rejects_pinned_owner": self.dropped_pinned,
            "split_rejects_cluster_merge": self.dropped_cluster_merge,
            "split_rejects": sum(n for _, _, n in self.rejects),
            "sacrificed_train_rows": self.sacrificed_train_rows,
            "sacrificed_train_fraction": round(sacrificed, 6),
            "trainable": not self.problems,
            "trainability": "; ".join(self.problems) or "every split can feed the trainer",
            "splits": "| split | rows | users | prompts | tie rate |\n|---|---:|---:|---:|---:|\n" + split_rows,
            "leakage_drops": "| home split | reason | rows |\n|---|---|---:|\n" + reject_rows,
            "config": json.dumps(self.config, sort_keys=True),
        }


class NotEnoughData(ValueError):
    """The splits cannot feed a trainer yet; the message says which split and why."""


def trainability_problems(rows: dict[str, int], users: int, min_unique_rows: int = 1, min_users: int = 1,
                          kept_prompts: dict[str, int] | None = None, ledger_users: dict[str, int] | None = None,
                          rejected: dict[str, dict[str, int]] | None = None) -> list[str]:
    """Why a trainer could not use these splits (empty list: it can), each naming the split and the cause.

    ``users``: users with labelled rankings in the splits; ``kept_prompts``: split -> distinct prompts of its
    labelled rows in ``split_pairs`` (what its ``_unique`` split takes one row of each; not the prompts it owned at
    first use, whose rows may have gone to split_rejects: review rev31d); ``ledger_users``: split -> users of pairs
    the ledger puts there, and ``rejected``: split -> reason -> their rows dropped to split_rejects (an empty split
    whose users' rows were all rejected is not one no user is held out for: review rev30f)."""
    need = max(1, min_unique_rows)
    few = users < max(min_users, 3)
    problems = [f"too few users: the home has {users} user{'s' * (users != 1)} with labelled rankings in its "
                f"splits and needs at least {max(min_users, 3)} (splits.min_users)"] if few else []
    for split in SPLITS:
        n = rows.get(split, 0)
        if n >= (need if split.endswith("_unique") else 1):
            continue
        what = f"split '{split}' is empty" if n == 0 else f"split '{split}' has {n} rows, fewer than the {need} required"
        if few:
            problems.append(what)  # the first problem already says why
            continue
        parent = split.removesuffix("_unique")
        dropped = (rejected or {}).get(parent) or {}
        reasons = ", ".join(f"{count:,} as {reason}" for reason, count in sorted(dropped.items()))
        if split == "train":
            why = "every user so far is held out or every train row conflicts with a held-out key"
        elif rows.get(parent, 0) == 0:
            held = (ledger_users or {}).get(parent, 0)
            if not held:
                why = "no user is held out for it yet; new users fill it as they arrive"
            else:
                whose = f"'{parent}' holds" if parent != split else "the ledger holds"
                why = (f"{whose} {held} user{'s' * (held != 1)}, but every row of theirs went to split_rejects"
                       + (f" ({sum(dropped.values()):,} rows: {reasons})" if dropped else "")
                       + ": another split already owns their prompts or images; it fills when held-out users "
                         "rank prompts and images no other split has used")
        else:
            prompts = (kept_prompts or {}).get(parent)
            held = (f" ({parent}'s rows hold {prompts:,} distinct prompt{'s' * (prompts != 1)}, one row each here)"
                    if prompts is not None else "")
            gone = (f"; {sum(dropped.values()):,} of {parent}'s rows went to split_rejects ({reasons}): another split "
                    f"already owns their prompts or images" if dropped else "")
            # lowering the minimum helps a split that holds rows; an empty one is never published, whatever it is
            lower = " (or lower splits.min_unique_rows)" if n > 0 else ""
            why = (f"its users have typed too few distinct prompts yet{held}{gone}; it grows as held-out users type "
                   f"prompts no other split has used{lower}")
        problems.append(f"{what}: {why}")
    return problems


def require_trainable(table: pa.Table, min_unique_rows: int = 1, min_users: int = 1) -> None:
    """Refuse a split_pairs table a trainer cannot use (empty split, small _unique split, few users), saying why."""
    rows = Counter(table.column("split").to_pylist())
    labelled = table.filter(table.column("has_label"))
    users = len(set(labelled.column("user_id").to_pylist()))   # labelled, as the stage
    prompts = Counter(split for split, _ in set(zip(labelled.column("split").to_pylist(),
                                                    labelled.column("prompt_key").to_pylist())))
    problems = trainability_problems(dict(rows), users, min_unique_rows, min_users,
                                     {split: prompts[split] for split in rows})
    if problems:
        raise NotEnoughData("not enough data for a dataset a trainer can use, nothing published: " + "; ".join(problems))


def prompt_key_table(captions: list[str]) -> pa.Table:
    """(caption, prompt_key) for each distinct caption."""
    distinct = sorted(set(captions))
    return pa.table({"caption": pa.array(distinct, pa.string()),
                     "prompt_key": pa.array([normalize_prompt(c) for c in distinct], pa.string())})


@dataclass(frozen=True)
class Assignment:
    """One ledger entry: a user's split, why, and when the user first appeared."""

    split: str
    rule: str
    position: int
    first_dt: object
    salt: str
    # the placement settings the split was decided under (:func:`placement_settings`); None: the entry stands under
    # any settings (re-seeded or confirmed published, or read from a ledger written before they were recorded)
    settings: str | None = None


def placement_settings(config: SplitConfig) -> str:
    """The settings a new user's split is decided by besides the salt (:func:`_new_user_split`: the fill's
    ``min_unique_rows``, the hash's ``heldout_fraction``), as the ledger records them per entry (review rev36f)."""
    return f"heldout_fraction={config.heldout_fraction!r} min_unique_rows={config.min_unique_rows}"


def is_settled(entry: Assignment, settings: str) -> bool:
    """Whether a ledger entry stands for a build under the placement ``settings``: decided under them, or under any
    (None: published). An entry decided under other settings and never published (a one-off ``--set
    splits.heldout_fraction=...`` run) is decided again at the user's first use, in place (review rev36f)."""
    return entry.settings is None or entry.settings == settings


def assign_users(first_uses: Iterable[tuple[str, str, bool, bool, object]], ledger: dict[str, Assignment],
                 config: SplitConfig) -> tuple[dict[str, Assignment], Counter]:
    """Fold over first uses in history order: every user's split (ledger entries kept), and prompts owned per split.

    ``first_uses`` yields (user_id, prompt_key, user_first, prompt_first, dt) for the rows where a user or a
    prompt appears for the first time. A new user's split depends only on the rows before theirs. An entry decided
    under other placement settings than ``config``'s and not published since (:func:`is_settled`: a one-off
    override's) is decided again here, keeping its position and first day, as a ledger that never held it would
    decide it (review rev36f).
    """
    assigned: dict[str, Assignment] = {}
    users: Counter = Counter()
    owned: Counter = Counter()
    settings = placement_settings(config)
    position = max((a.position for a in ledger.values()), default=-1) + 1
    for user, prompt, user_first, prompt_first, day in first_uses:
        if user_first:
            entry = ledger.get(user)
            if entry is None:
                split, rule = _new_user_split(user, users, owned, config)
                entry = Assignment(split, rule, position, day, config.salt, settings)
                position += 1
            elif not is_settled(entry, settings):
                split, rule = _new_user_split(user, users, owned, config)
                entry = Assignment(split, rule, entry.position, entry.first_dt, config.salt, settings)
            assigned[user] = entry
            users[entry.split] += 1
        if prompt_first:
            owned[assigned[user].split] += 1
    return assigned, owned


def _new_user_split(user: str, users: Counter, owned: Counter, config: SplitConfig) -> tuple[str, str]:
    """(split, rule) of a user appearing now, given the users and prompts each split holds so far."""
    need = config.min_unique_rows
    if need > 0:
        if users["train"] == 0:
            return "train", "first_user"
        short = [s for s in HELDOUT if owned[s] < need]
        # at most one held-out user per train user while filling: train keeps half of the newcomers
        if short and users["validation"] + users["test"] < users["train"]:
            return max(short, key=lambda s: (need - owned[s], s == "validation")), "fill"
    return user_home(user, config.salt, config.heldout_fraction), "hash"


def read_ledger(home: DataHome, salt: str, others: list | None = None) -> dict[str, Assignment]:
    """The stored ledger's entries made under ``salt``; ``others``, when given, receives the entries made
    under other salts as (user_id, Assignment), so a build under another salt writes them back untouched
    (a one-off ``--set splits.salt=...`` never wipes the ledger a later build under the old salt needs)."""
    path = home.table_file("split_ledger")
    if not path.is_file():
        return {}
    table = pq.read_table(path, schema=get_schema("split_ledger"))
    mine = {}
    for row in table.to_pylist():
        entry = Assignment(row["split"], row["rule"], row["position"], row["first_dt"], row["salt"], row["settings"])
        if row["salt"] == salt:
            mine[row["user_id"]] = entry
        elif others is not None:
            others.append((row["user_id"], entry))
    return mine


def ledger_table(ledger: dict[str, Assignment], assigned: dict[str, Assignment],
                 others: list | None = None) -> pa.Table:
    """Every entry (old ones kept even when their user has no pair now), ordered by position; then the
    entries of other salts (``others``), by salt and position."""
    entries = {**ledger, **assigned}
    rows = sorted(entries.items(), key=lambda item: item[1].position)
    rows += sorted(others or [], key=lambda item: (item[1].salt, item[1].position))
    return pa.table({
        "user_id": pa.array([u for u, _ in rows], pa.string()),
        "split": pa.array([a.split for _, a in rows], pa.string()),
        "rule": pa.array([a.rule for _, a in rows], pa.string()),
        "position": pa.array([a.position for _, a in rows], pa.int64()),
        "first_dt": pa.array([a.first_dt for _, a in rows], pa.date32()),
        "salt": pa.array([a.salt for _, a in rows], pa.string()),
        "settings": pa.array([a.settings for _, a in rows], pa.string()),
    }, schema=get_schema("split_ledger"))


PUBLISHED_RULE = "published"   # a ledger entry re-seeded from the latest published version


class LedgerKeysChanged(RuntimeError):
    """The ledger's users are not the users of ``pairs``: the pseudonym secret changed (every user got a new
    pseudonym) and the ledger was not re-keyed; building would assign every user afresh."""


@dataclass
class Published:
    """What the latest published version promised (:func:`read_published`): its name (None when nothing is
    published), each user's (split, first export day), and, when asked for, each key's published owner."""

    version: str | None
    users: dict[str, tuple[str, object]]
    keys: pa.Table          # kind, key, owner, first_dt (ordered by kind, key)


def _literal(files: list[str]) -> list[str]:
    """``files`` as DuckDB's ``read_parquet`` takes them literally: each a glob of itself (a home at
    ``/d/home[1]`` would otherwise read ``/d/home1``'s files where such a folder exists)."""
    return [literal_glob(f) for f in files]


def _no_keys() -> pa.Table:
    return pa.table({"kind": pa.array([], pa.string()), "key": pa.array([], pa.string()),
                     "owner": pa.array([], pa.string()), "first_dt": pa.array([], pa.date32())})


def read_published(home: DataHome, keys: bool = True) -> Published:
    """The latest published version's users, and with ``keys`` its keys, read in one pass over the sidecars of
    train / validation / test (``user_id`` is the pseudonym the curation wrote, ``split`` the split it was
    published in; the keys are ``prompt_key`` (kind ``prompt``) and ``image_0_uid`` / ``image_1_uid`` (kind
    ``image``), each with the split it was published in and its first export day). A user or a key in two
    splits (a version the blocking rules would have refused) counts as held out (test, then validation): never
    moved into train."""
    link = latest_link(home)
    if not (link / MANIFEST_FILE).is_file():
        return Published(None, {}, _no_keys())
    version = link.resolve()
    files = [str(f) for split in ("train",) + HELDOUT for f in split_sidecars(version, split)]
    if not files:
        return Published(version.name, {}, _no_keys())
    con = connect({})
    key_table = _no_keys()
    try:
        if keys:
            con.register("side", con.sql(
                f"SELECT user_id, split, dt, prompt_key, image_0_uid, image_1_uid FROM read_parquet($files, {NO_HIVE}) "
                "WHERE split IN ('train', 'validation', 'test')", params={"files": _literal(files)}).to_arrow_table())
            rows = con.sql("SELECT user_id, split, min(dt) FROM side GROUP BY ALL").fetchall()
            key_table = con.sql("""
                SELECT kind, key,
                       CASE WHEN bool_or(split = 'test') THEN 'test' WHEN bool_or(split = 'validation') THEN 'validation'
                            ELSE 'train' END AS owner,
                       min(dt) AS first_dt
                FROM (SELECT unnest(['prompt', 'image', 'image']) AS kind,
                             unnest([prompt_key, image_0_uid, image_1_uid]) AS key, split, dt FROM side)
                GROUP BY kind, key ORDER BY kind, key""").to_arrow_table()
        else:
            rows = con.execute(f"SELECT user_id, split, min(dt) FROM read_parquet(?, {NO_HIVE}) "
                               "WHERE split IN ('train', 'validation', 'test') GROUP BY ALL", [_literal(files)]).fetchall()
    except Exception as exc:
        raise RuntimeError(f"cannot read which split each user was published in from {version}: {exc}. The "
                           "splits stage checks the split ledger against the latest published version; repair or "
                           "republish that version first") from exc
    finally:
        con.close()
    found: dict[str, tuple[str, object]] = {}
    for user, split, first in sorted(rows, key=lambda r: (r[0], r[1] == "train", r[1])):
        found.setdefault(user, (split, first))
    return Published(version.name, found, key_table)


def published_users(home: DataHome) -> tuple[str | None, dict[str, tuple[str, object]]]:
    """The latest published version's name and each of its users' (split, first export day)
    (:func:`read_published` without the keys). ``(None, {})`` when nothing is published."""
    published = read_published(home, keys=False)
    return published.version, published.users


def unknown_published(ledger: dict[str, Assignment], others: list,
                      published: dict[str, tuple[str, object]], other_salts: bool = True) -> dict[str, tuple[str, object]]:
    """The published users the ledger does not know under any salt (a lost or older ledger, or old pseudonyms).
    A user the ledger holds under another salt only is not one (a new ``splits.salt`` is the deliberate
    reshuffle), unless ``other_salts`` is false: then every published user the ledger lacks under this salt is
    (the published version was built under this salt, or which salt it was built under cannot be told:
    :func:`load_ledger`)."""
    known = set(ledger) | ({user for user, _ in others} if other_salts else set())
    return {user: value for user, value in published.items() if user not in known}


def read_retained_users(home: DataHome, names: list[str]) -> dict[str, dict[str, tuple[str, object]]]:
    """Each user of the train / validation / test sidecars of the published versions ``names`` (the retained versions
    other than ``latest`` that it was switched to) with (split, first export day), per version (version -> user ->
    (split, first day)), read in one pass: a user published in two splits of one version as held out (test, then
    validation), never moved into train, as :func:`read_retained_keys` does for keys. Across versions the caller
    picks (:func:`merge_published_users`: a version built under the current salt first; review rev24f). A split folder
    or sidecar that is a link is not followed (:func:`load_ledger` refuses to re-seed while one is: review rev24f)."""
    files = _retained_sidecars(home, names)
    if not files:
        return {}
    con = connect({})
    try:
        con.register("files", pa.table({"filename": pa.array(files, pa.string()),
                                        "version": pa.array([Path(f).parent.parent.name for f in files], pa.string())}))
        rows = con.execute(f"SELECT f.version, s.user_id, s.split, min(s.dt) FROM read_parquet(?, filename = true, "
                           f"{NO_HIVE}) s "
                           "JOIN files f USING (filename) WHERE s.split IN ('train', 'validation', 'test') "
                           "GROUP BY ALL", [_literal(files)]).fetchall()
    except Exception as exc:
        raise RuntimeError(f"cannot read which split each user was published in from the published versions "
                           f"{', '.join(names)} under {home.datasets}: {exc}. The splits stage re-seeds a lost split "
                           "ledger from every retained published version; repair or delete the damaged version "
                           "first") from exc
    finally:
        con.close()
    found: dict[str, dict[str, tuple[str, object]]] = {}
    for version, user, split, first in sorted(rows, key=lambda r: (r[0], r[1], r[2] == "train", r[2])):
        found.setdefault(version, {}).setdefault(user, (split, first))
    return found


_HELD_OUT_RANK = {"test": 0, "validation": 1, "train": 2}


@dataclass(frozen=True)
class PublishedSplit:
    """The split a user is re-seeded in (:func:`merge_published_users`): the split, the first export day, the
    version whose split it is, and whether that version is known to be built under another salt than the build's
    (its split then neither overrides one of the current salt's, nor re-seeds a user the ledger holds under
    another salt: the deliberate reshuffle)."""

    split: str
    first: object
    version: str
    other_salt: bool
    overridden: bool = False      # another version published the user in another split under another salt


def merge_published_users(salt: str, latest: str | None, latest_users: dict[str, tuple[str, object]],
                          older: dict[str, dict[str, tuple[str, object]]],
                          built_under: dict[str, str | None]) -> dict[str, PublishedSplit]:
    """Each user published by ``latest`` (``latest_users``) or by an older retained version latest was switched to
    (``older``: version -> users), in the split to re-seed them in. ``built_under``: the salt each version is known
    to be built under (None: cannot be told). The versions built under ``salt``, or whose salt cannot be told, come
    first (a split published under the current salt, or possibly under it, is kept: review rev24f); only a user no
    such version published takes the split of a version built under another salt. Among the versions of one rank,
    ``latest``'s split first (review rev24a), then held out first (test, then validation: never moved into train),
    the earliest first day, the version's name."""
    candidates: dict[str, list[tuple]] = {}
    for version, users in [(latest, latest_users)] + sorted(older.items()):
        if version is None:
            continue
        salt_of = built_under.get(version)
        other = salt_of is not None and salt_of != salt
        for user, (split, first) in users.items():
            rank = (other, version != latest, _HELD_OUT_RANK.get(split, 3), first is None, str(first), version)
            candidates.setdefault(user, []).append((rank, split, first, version, other))
    merged: dict[str, PublishedSplit] = {}
    for user, found in candidates.items():
        _, split, first, version, other = min(found)
        overridden = any(c[4] != other and c[1] != split for c in found)
        merged[user] = PublishedSplit(split, first, version, other, overridden)
    return merged


def _identity(path: Path) -> tuple[int, ...] | None:
    """(device, inode, size, modification and change times in ns) of the regular file at ``path`` (a link followed,
    as :func:`formats.files.sha256_file` does); None where there is none. Raises OSError."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(info.st_mode):
        return None
    return info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns


class PublishedSplitPairs:
    """The home's ``split_pairs`` while it is the file ``latest`` was published from (its sha256 is ``source``, the
    publish record's: :func:`pipelines.splits.coverage.latest_source`; None: nothing to learn). One per build
    (:func:`load_ledger`), never kept across builds: the file is hashed at most once however many things the build
    learns from it (``latest``'s salt, its key check, whether the pins cover it: fix38c), the digest memoised by the
    file's identity (:func:`_identity`), so a file replaced or rewritten in between is hashed again."""

    def __init__(self, home: DataHome, source: str | None):
        self.path = home.table_file("split_pairs")
        self.source = source
        self._digests: dict[tuple[int, ...], str] = {}

    def _is_source(self, identity: tuple[int, ...]) -> bool:
        if identity not in self._digests:
            digest = sha256_file(self.path)
            if _identity(self.path) != identity:      # replaced while it was read: what was read tells nothing
                return False
            self._digests[identity] = digest
        return self._digests[identity] == self.source

    def is_source(self) -> bool:
        """Whether the file at the path now is the one ``latest`` was published from. Never raises."""
        try:
            identity = _identity(self.path) if self.source is not None else None
            return identity is not None and self._is_source(identity)
        except OSError:
            return False

    def member(self, key: bytes) -> bytes | None:
        """Member ``key`` of the file's key-value metadata when it is the one ``latest`` was published from (a file
        without it is not hashed); else None. Never raises."""
        if self.source is None:
            return None
        try:
            identity = _identity(self.path)
            if identity is None:
                return None
            metadata = pq.read_schema(self.path).metadata or {}
            if key not in metadata or _identity(self.path) != identity or not self._is_source(identity):
                return None
            return metadata[key]
        except (OSError, ValueError, pa.ArrowException):
            return None


def split_pairs_salt(published_pairs: PublishedSplitPairs) -> str | None:
    """The salt the home's ``split_pairs`` records it was built under (:data:`SALT_METADATA`) when that file is the
    one ``latest`` was published from (:class:`PublishedSplitPairs`); else None. Never raises."""
    value = published_pairs.member(SALT_METADATA)
    try:
        return value.decode("utf-8") if value is not None else None
    except UnicodeDecodeError:
        return None


def version_keys(home: DataHome, retained: list[str], version: str | None,
                 published_pairs: PublishedSplitPairs) -> tuple[dict[str, str], bool]:
    """(the pseudonym key check each retained version is known to be keyed under, whether that differs from the
    record): the record's (:func:`pipelines.splits.coverage.read_version_keys`) and ``latest``'s when not named yet
    and the home's ``split_pairs`` is the file it was published from (learned as :func:`version_salts` learns its
    salt, at the first build after each publish; fix37a). Versions no longer retained are dropped."""
    recorded = coverage.read_version_keys(home)
    keys = {name: recorded[name] for name in retained if name in recorded}
    if version is not None and version in retained and version not in keys:
        learned = read_key_check({KEY_CHECK_METADATA: published_pairs.member(KEY_CHECK_METADATA)})
        if learned is not None:
            keys[version] = learned
    return keys, keys != recorded


def latest_built_under(home: DataHome, published_pairs: PublishedSplitPairs,
                       users: dict[str, tuple[str, object]]) -> str | None:
    """The salt ``latest`` (whose users are ``users``, :func:`read_published`) was built under, where it can be told
    (a version does not record its salt): that of the home's ``split_pairs`` (:data:`SALT_METADATA`) when that file
    is the one ``latest`` was published from (``published_pairs``: :func:`split_pairs_salt`), or when its train /
    validation / test users are ``latest``'s users in the same splits (what the version was published from, or a
    build that split every user alike); else None."""
    exact = split_pairs_salt(published_pairs)
    if exact is not None:
        return exact
    path = home.table_file("split_pairs")
    try:
        if not path.is_file():
            return None
        metadata = pq.read_schema(path).metadata or {}
        if SALT_METADATA not in metadata:
            return None
        built_under = metadata[SALT_METADATA].decode("utf-8")
        table = pq.read_table(path, columns=["user_id", "split"])
    except (OSError, ValueError, pa.ArrowException):
        return None
    found: dict[str, str] = {}
    pairs = set(zip(table.column("user_id").to_pylist(), table.column("split").to_pylist()))
    for user, split in sorted(pairs, key=lambda r: (r[0] or "", r[1] == "train", r[1] or "")):
        if split in ("train",) + HELDOUT:
            found.setdefault(user, split)
    return built_under if found == {user: split for user, (split, _) in users.items()} else None


def seed_from_published(ledger: dict[str, Assignment], unknown: dict[str, tuple[str, object]],
                        present: set[str], salt: str) -> dict[str, Assignment]:
    """Ledger entries for the ``unknown`` published users who are in ``pairs`` (``present``), each in the split
    it was published in (rule ``published``), under ``salt``, after the ledger's positions in order of (first
    day, user). A published user absent from ``pairs`` (banned since, or an old pseudonym after a re-keying)
    needs no entry: no row of theirs is assigned."""
    missing = sorted((first, user) for user, (_, first) in unknown.items() if user in present)
    position = max((a.position for a in ledger.values()), default=-1) + 1
    return {user: Assignment(unknown[user][0], PUBLISHED_RULE, position + i, first, salt)
            for i, (first, user) in enumerate(missing)}


REKEYED_MIN_USERS = 10   # fewer known users than this: too few to tell a new secret from a quiet night


def file_key_check(path: Path) -> str | None:
    """The pseudonym key check (:func:`pipelines.curation.pseudonym.key_check`) a Parquet file records, or None
    (no file, or one written before the check was recorded)."""
    if not path.is_file():
        return None
    return read_key_check(pq.read_schema(path).metadata)


def check_keys(pairs_users: set[str], ledger_users: set[str], published_users: set[str],
               pairs_key: str | None = None, ledger_key: str | None = None) -> None:
    """Refuse (:class:`LedgerKeysChanged`) when the ledger's pseudonyms are not those of ``pairs`` (a new
    ``curation.pseudonym_secret``: ``pairs`` is rebuilt, every user under a new pseudonym).

    Exact when both record their secret's key check (``pairs_key``, written by the curation; ``ledger_key``, by
    the last build or re-keying): equal, never refused (a ban wave then a night of new users is no new secret);
    different, refused while the ledger under this salt or the published version (its users the ledger does not
    know) holds a user. Otherwise (a ledger or ``pairs`` from before the check was recorded) by a heuristic:
    refused when most of the known users are absent from ``pairs`` and most of its users are unknown; growth adds
    users but keeps the old ones, a ban removes some but adds none."""
    if pairs_key and ledger_key:
        if pairs_key == ledger_key or not (ledger_users or published_users):
            return
        raise LedgerKeysChanged(
            "pairs was built under another pseudonym secret (curation.pseudonym_secret) than the split ledger: "
            "their key checks differ, so every user of pairs has a pseudonym the ledger never saw. Building now "
            "would assign every user afresh and move held-out users into train. Re-key the ledger with the old "
            "secret: PICKAPIC_OLD_PSEUDONYM_SECRET=... python -m pipelines.splits.rekey --home HOME (README, "
            "section 5), then build again; or, if the change was a mistake, set the old secret back and rebuild "
            "pairs. Nothing was written")
    known = ledger_users | published_users
    if len(known) < REKEYED_MIN_USERS or not pairs_users:
        return
    for group in (ledger_users, published_users):
        if len(group) >= REKEYED_MIN_USERS and 2 * len(group & pairs_users) >= len(group):
            return          # most of this record's users are still in pairs: the same pseudonyms
    if 2 * len(pairs_users & known) >= len(pairs_users):
        return
    raise LedgerKeysChanged(
        f"the split ledger and the published dataset know {len(known)} users, of whom {len(known & pairs_users)} "
        f"are in pairs, and {len(pairs_users - known)} of the {len(pairs_users)} users in pairs are unknown: the "
        "pseudonym secret (curation.pseudonym_secret) seems to have changed. Building now would assign every user "
        "afresh and move held-out users into train. Re-key the ledger with the old secret: "
        "PICKAPIC_OLD_PSEUDONYM_SECRET=... python -m pipelines.splits.rekey --home HOME (README, section 5), then "
        "build again. If the users really are new (or the old secret is lost), a new splits.salt assigns them "
        "afresh on purpose. Nothing was written")


def assign(con, config: SplitConfig, ledger: dict[str, Assignment] | None = None, pins: pa.Table | None = None,
           clusters: Path | None = None) -> tuple[pa.Table, dict[str, Assignment], Counter]:
    """Register ``prompt_keys``, ``user_splits``, ``stored_pins``, ``key_pins`` (this salt's), ``cluster_images``
    and ``split_assignments`` on ``con`` (with a ``pairs`` view). ``pins``: the stored key owner pins (every
    salt's; this salt's decide); ``clusters``: the ``duplicate_clusters`` file, whose members of a cluster count
    with the rows' own."""
    captions = [row[0] for row in con.sql("SELECT DISTINCT caption FROM pairs").fetchall()]
    con.register("prompt_keys", prompt_key_table(captions))
    events = run_sql(con, "splits_first_uses")
    columns = [events.column(name).to_pylist() for name in ("user_id", "prompt_key", "user_first", "prompt_first", "dt")]
    assigned, owned = assign_users(zip(*columns), ledger or {}, config)
    con.register("user_splits", pa.table({"user_id": pa.array(list(assigned), pa.string()),
                                           "home": pa.array([a.split for a in assigned.values()], pa.string())}))
    pins = get_schema("split_key_owners").empty_table() if pins is None else pins
    con.register("stored_pins", pins)
    con.register("key_pins", pins.filter(pc.equal(pins.column("salt"), config.salt)).select(["kind", "key", "owner"]))
    if clusters is not None and clusters.is_file():
        register_views(con, {"cluster_images": clusters})
    else:
        con.register("cluster_images", pa.table({"cluster_id": pa.array([], pa.string()),
                                                 "image_uid": pa.array([], pa.string())}))
    table = run_sql(con, "splits_assign", {"owner_mode": config.owner_mode})
    con.register("split_assignments", table)
    return table, assigned, owned


def ledger_lock_file(home: DataHome) -> Path:
    """The lock file of the home's splits stage (``.locks/split-ledger.lock``, outside the disposable cache)."""
    return home.locks / "split-ledger.lock"


@contextlib.contextmanager
def hold_ledger_lock(home: DataHome, log: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the home's split-ledger lock file for the ``with`` block; when another
    splits build holds it, say so through ``log`` and wait for it.

    Waiting, not refusing: the stage takes seconds to minutes, and the waiting build (a UI run during the
    nightly one, or the nightly one behind it) then reads the ledger the first one wrote and the newest
    ``pairs``, so both runs succeed and the last output is the newest. No other lock is taken while this one
    is held, so no build waits for one holding it (``pickapic build`` takes the home's build lock before
    it). The kernel drops the lock when its holder exits, killed or not. The file lives in ``.locks/``, not
    in ``cache/``: deleting the disposable cache while a build held it let a second build create a new
    lock file and run beside it. It is opened without following a link and never truncated unless it holds
    nothing but a pid (what the stage writes there): a link, a hard link, a folder, a FIFO or a file of other
    content at its path is refused, untouched (:mod:`formats.locks`)."""
    log = log or (lambda message: print(message, file=sys.stderr, flush=True))
    path = ledger_lock_file(home)
    waiting_since: list[float] = []

    def busy(holder: str) -> None:
        log(f"waiting for another splits build on this home (pid {holder} holds {path}); this one reads the split "
            "ledger once that one has written it")
        waiting_since.append(time.monotonic())

    with hold_lock(path, "the split ledger", busy):
        if waiting_since:
            log(f"split ledger lock taken after {time.monotonic() - waiting_since[0]:.1f} s of waiting")
        yield


def build_splits(home: DataHome, config: SplitConfig = SplitConfig(),
                 log: Callable[[str], None] | None = None, pseudonym_secret: str | None = None) -> SplitReport:
    """Write ``split_pairs``, ``split_rejects``, the grown ``split_ledger`` and ``split_key_owners`` from ``pairs``,
    one build at a time per home (:func:`hold_ledger_lock`; ``log`` hears that this one waits, default stderr).

    ``pseudonym_secret`` is the curation's ``pseudonym_secret`` (never logged nor written): with it, a key owner pin
    that only a retained version's rows of an erased account hold is dropped (:class:`Accounts`, fix37a); without
    it (or another secret than ``pairs``' own) such a pin stays until those versions are deleted."""
    source = home.table_file("pairs")
    if not source.exists():
        raise FileNotFoundError(f"pairs not found at {source}: run pipelines.curation.decisions first")
    log = log or (lambda message: print(message, file=sys.stderr, flush=True))
    with hold_ledger_lock(home, log):
        for note in sweep_split_temps(home):
            log(note)
        return _build_splits(home, config, source, log, pseudonym_secret)


# what the splits stage writes, only under the ledger lock: the four tables, and the records beside them
SPLIT_TABLES = ("split_pairs", "split_rejects", "split_ledger", "split_key_owners")


def sweep_split_temps(home: DataHome) -> list[str]:
    """Remove the temporary files (``.NAME.<hex>.tmp``) the splits stage's writers left when killed mid-write: of
    its four tables, of the salts record beside the versions (``datasets/pickapic.salts``) and of the ledger's
    record in ``cache/``. Only the stage writes those names, and only under the ledger lock, which the caller holds,
    so none is being written now (review rev29b: each crashed build left one the size of its table). Returns
    notes on what was left (:func:`formats.files.sweep_temps_of`)."""
    return sweep_temps_of([*(home.table_file(name) for name in SPLIT_TABLES), coverage.salts_file(home),
                           home.cache / coverage.LEDGER_VERSIONS_FILE])


@dataclass
class LedgerCheck:
    """What :func:`load_ledger` found: the ledger with the re-seeded entries, those entries, the version it was
    checked against, whether that version's sidecars were read, and the ``split_pairs`` digest of that version
    when the ledger now holds all its users (for the ledger's record, :mod:`pipelines.splits.coverage`); the same
    for the key owner pins brought up to date with the published versions (:func:`update_pins`)."""

    ledger: dict[str, Assignment]
    seeded: dict[str, Assignment]
    version: str | None
    sidecars_read: bool
    covered_source: str | None
    key_check: str | None = None
    pins: PinsUpdate | None = None
    versions: list[str] = field(default_factory=list)   # the retained versions whose users it holds (to record)
    version_salts: dict[str, str] | None = None   # the salt each retained version was built under, when to record
    version_keys: dict[str, str] = field(default_factory=dict)   # the key check of each retained version (fix37a)
    version_keys_changed: bool = False                             # ... which differs from its record


@dataclass
class PinsUpdate:
    """The key owner pins brought up to date with the published versions (:func:`update_pins`): every salt's pins
    (ordered by salt, kind, key), the pins appended from the home's ``split_pairs`` (``latest``'s source), those
    re-seeded from the published sidecars, how (``nothing published``, ``up to date``, ``split_pairs``,
    ``sidecars``), how many published versions' sidecars were read, the record to write (``split_pairs`` digests
    and version names covered), and whether the file must be written."""

    pins: pa.Table
    added: pa.Table
    seeded: pa.Table
    how: str
    versions_read: int
    covered: list[str]
    versions: list[str]
    changed: bool
    rekeyed: int = 0      # prompt pins added or held out by the re-key after a key-function change
    key_version: str | None = None   # the key function version every salt's prompt pins are keyed by (to record)
    key_data: str | None = None      # and the versions of the Unicode / ICU data it was computed with (to record)


def ledger_key_to_record(pairs_key: str | None, ledger_key: str | None) -> str | None:
    """The key check the ledger records after a build that passed :func:`check_keys`: that of ``pairs`` (its new
    entries are under that secret); the ledger's own when ``pairs`` records none; none when they differ (passed
    only because this salt had no entry: the other salts' entries stay under the old secret)."""
    if pairs_key and ledger_key and pairs_key != ledger_key:
        return None
    return pairs_key or ledger_key


def read_pins(home: DataHome) -> pa.Table:
    """Every stored key owner pin (``split_key_owners``, every salt's) as the file holds them; an empty table when
    there is no file (a new home, a lost file, a home built before the pins were stored)."""
    path = home.table_file("split_key_owners")
    schema = get_schema("split_key_owners")
    if not path.is_file():
        return schema.empty_table()
    return pq.read_table(path, schema=schema).replace_schema_metadata(None)


def seed_pins(stored: pa.Table, published: pa.Table, salt: str) -> pa.Table:
    """Pins under ``salt`` for the ``published`` keys (kind, key, owner, first_dt) that ``stored`` does not pin
    under ``salt``, each owned by the split it was published in, ordered by kind and key. A key pinned under
    another salt only is one: the sidecars do not say which salt a version was built under, and a key a version
    built under this salt published must keep its split (a re-seed after a salt change thus also pins the keys of
    the retained versions built under the old salt, which a nightly build under the new salt leaves unpinned)."""
    schema = get_schema("split_key_owners")
    if not published.num_rows:
        return schema.empty_table()
    mine = stored.filter(pc.equal(stored.column("salt"), salt)).select(["kind", "key"])
    missing = published.join(mine, keys=["kind", "key"], join_type="left anti")
    missing = missing.sort_by([("kind", "ascending"), ("key", "ascending")])
    return pa.table({"kind": missing.column("kind"), "key": missing.column("key"), "owner": missing.column("owner"),
                     "first_dt": missing.column("first_dt").cast(pa.date32()),
                     "salt": pa.array([salt] * missing.num_rows, pa.string())}, schema=schema)


def _retained_sidecars(home: DataHome, names: list[str]) -> list[str]:
    """The train / validation / test sidecar files of the published versions ``names``: a split folder that is a
    link, or a sidecar that is one, is not followed (a version's files are its own; :func:`unread_split_folders`
    names such versions)."""
    files = []
    for name in names:
        for split in ("train",) + HELDOUT:
            folder = home.datasets / name / split
            if is_real_folder(folder):
                files += [str(f) for f in split_sidecars(folder.parent, split) if not f.is_symlink() and f.is_file()]
    return files


def read_retained_keys(home: DataHome, names: list[str]) -> pa.Table:
    """The keys (kind, key, owner, first_dt; ordered by kind, key) of the train / validation / test sidecars of the
    published versions ``names`` (complete versions under the dataset folder, :func:`formats.dataset.list_versions`),
    read in one pass; a key published in two splits, in one version or across them, as held out (test, then
    validation), its first day the earliest. A split folder that is a link, or a sidecar that is one, is not
    followed (a version's files are its own; :func:`unread_split_folders` names such versions)."""
    files = _retained_sidecars(home, names)
    if not files:
        return _no_keys()
    con = connect({})
    try:
        con.register("side", con.sql(
            f"SELECT split, dt, prompt_key, image_0_uid, image_1_uid FROM read_parquet($files, {NO_HIVE}) "
            "WHERE split IN ('train', 'validation', 'test')", params={"files": _literal(files)}).to_arrow_table())
        return con.sql(f"SELECT kind, key, {_HELD_OUT_OWNER.format(column='split')}, min(dt) AS first_dt FROM "
                       "(SELECT unnest(['prompt', 'image', 'image']) AS kind, "
                       "unnest([prompt_key, image_0_uid, image_1_uid]) AS key, split, dt FROM side) "
                       "GROUP BY kind, key ORDER BY kind, key").to_arrow_table()
    except Exception as exc:
        raise RuntimeError(f"cannot read which split each key was published in from the published versions "
                           f"{', '.join(names)} under {home.datasets}: {exc}. The splits stage re-seeds lost key owner "
                           "pins from every retained published version; repair or delete the damaged version "
                           "first") from exc
    finally:
        con.close()


def unread_split_folders(home: DataHome, names: list[str]) -> dict[str, str]:
    """Why :func:`read_retained_keys` cannot read every train / validation / test sidecar of the published versions
    ``names`` (version -> the first reason found; a version read whole is not named): a split folder that is a
    symbolic link or not a folder (not followed: a version's files are its own), one this account cannot list, a
    sidecar that is a link or not a regular file. A split folder that is not there holds nothing to read."""
    unread = {}
    for name in names:
        for split in ("train",) + HELDOUT:
            folder = home.datasets / name / split
            try:
                if not os.path.lexists(folder):
                    continue
                if not is_real_folder(folder):
                    unread[name] = f"{folder} is {describe(folder)}"
                    break
                with os.scandir(folder) as entries:
                    odd = sorted(e.name for e in entries if fnmatch.fnmatchcase(e.name, shard_glob(split, ".parquet"))
                                 and not e.is_file(follow_symlinks=False))
            except OSError as exc:
                unread[name] = f"{folder} cannot be listed ({exc.strerror or exc})"
                break
            if odd:
                unread[name] = f"{folder / odd[0]} is {describe(folder / odd[0])}"
                break
    return unread


def switched_versions(home: DataHome, retained: list[str], latest: str | None) -> tuple[list[str], list[str]]:
    """(the ``retained`` versions ``latest`` was switched to at some point, those it never was), in their order. By
    the record of switched versions (:func:`formats.dataset.read_switched`, written by every switch of ``latest``
    right before it renames the link), ``latest``'s own version counting as switched to: a complete version the
    record does not name was left by a publish that stopped before switching, and was never published (one killed
    in the instant between the record and the rename is named: its keys pinned, a split kept, never a leak).
    Without a record (none written yet, or missing or damaged) that cannot be told, and every retained version
    counts as switched to; a record started on an upgraded home (or after it was lost) names every version present
    then.
    """
    record = read_switched(home.datasets)
    if record is None:
        return list(retained), []
    named = record | {latest}
    return [name for name in retained if name in named], [name for name in retained if name not in named]


_HELD_OUT_OWNER = ("CASE WHEN bool_or({column} = 'test') THEN 'test' WHEN bool_or({column} = 'validation') "
                   "THEN 'validation' ELSE 'train' END AS owner")


def merge_keys(tables: list[pa.Table]) -> pa.Table:
    """Published keys of several reads (:func:`read_published`, :func:`read_retained_keys`) as one table: a key
    owned by two splits as held out (test, then validation), its first day the earliest; ordered by kind, key."""
    tables = [t.select(["kind", "key", "owner", "first_dt"]) for t in tables if t.num_rows]
    if len(tables) <= 1:
        return tables[0] if tables else _no_keys()
    con = connect({})
    try:
        con.register("keys", pa.concat_tables(tables))
        return con.sql(f"SELECT kind, key, {_HELD_OUT_OWNER.format(column='owner')}, min(first_dt) AS first_dt "
                       "FROM keys GROUP BY kind, key ORDER BY kind, key").to_arrow_table()
    finally:
        con.close()


def _sorted_pins(pins: pa.Table) -> pa.Table:
    return pins.sort_by([("salt", "ascending"), ("kind", "ascending"), ("key", "ascending")])


def pins_from_split_pairs(path: Path, stored: pa.Table, salt: str) -> pa.Table:
    """``stored`` (every salt's pins) plus a pin for each key of a train / validation / test row of the
    ``split_pairs`` file ``path`` that none under its salt has (``sql/splits_key_owners.sql``: first writer wins),
    under the salt that file records it was built under (``salt`` when it records none); ordered by salt, kind,
    key. Reads five columns of the file."""
    metadata = pq.read_schema(path).metadata or {}
    built_under = metadata[SALT_METADATA].decode("utf-8") if SALT_METADATA in metadata else salt
    table = pq.read_table(path, columns=["split", "dt", "prompt_key", "image_0_uid", "image_1_uid"])
    con = connect({})
    try:
        con.register("split_pairs", table)
        con.register("stored_pins", stored)
        return cast_to_schema(run_sql(con, "splits_key_owners", {"salt": built_under}), get_schema("split_key_owners"))
    finally:
        con.close()


def update_pins(home: DataHome, salt: str, pins: pa.Table, version: str | None, published_pairs: PublishedSplitPairs,
                read_latest: Callable[[], "Published"], log: Callable[[str], None]) -> PinsUpdate:
    """The stored key owner pins (``pins``, every salt's, as read from ``split_key_owners``) brought up to date with
    the published versions (call under the ledger lock, before assigning): a key is pinned once the version
    holding it is published, so a build that is never published pins nothing.

    ``version``/``published_pairs``: ``latest``'s name and the ``split_pairs`` it was published from (its sha256 is
    ``published_pairs.source``: :func:`pipelines.splits.coverage.latest_source`). Up to date when the pins' record
    covers that digest (or that version). Else, when the home's ``split_pairs`` file (the previous build's, not yet
    overwritten) is that one (:meth:`PublishedSplitPairs.is_source`, hashed once per build: fix38c) and
    the record covers every older retained version: its kept keys are appended (the nightly case; no sidecar read).
    Else the train / validation / test sidecars of every retained published version are read, oldest first
    (``read_latest`` reads ``latest``'s, shared with the ledger's check), and the keys not pinned under ``salt`` are
    re-seeded under ``salt`` in the split they were published in (a key in two splits as held out: test, then
    validation). Keys published only in versions retention deleted are not on disk and cannot be re-seeded. A
    published version is one ``latest`` was switched to (:func:`switched_versions`: a version a publish left
    unswitched is neither read nor required); one not read whole (:func:`unread_split_folders`) is not recorded as
    covered, and the log says so."""
    source = published_pairs.source
    path = home.table_file("split_key_owners")
    digests, names, key_version, key_data = coverage.pins_record(path, pins)
    current_data = key_data_version()
    retained = list_versions(home)
    published, stranded = switched_versions(home, retained, version)
    older = [name for name in published if name != version]
    empty = get_schema("split_key_owners").empty_table()
    added = seeded = empty
    versions_read = 0
    unread: dict[str, str] = {}      # published versions the re-seed could not read whole (unread_split_folders)
    if version is None:
        how = "nothing published"
    elif ((source is not None and source in digests) or version in names) and set(older) <= names:
        how = "up to date"     # latest and every other retained version (one rolled back from, too) are pinned
    elif set(older) <= names and published_pairs.is_source():
        how = "split_pairs"
        updated = pins_from_split_pairs(home.table_file("split_pairs"), pins, salt)
        added = updated.join(pins.select(["salt", "kind", "key"]), keys=["salt", "kind", "key"], join_type="left anti")
        pins = updated
    else:
        how = "sidecars"
        latest = read_latest()
        if latest.version != version:      # latest switched in between: the record says nothing of this one
            version, source = latest.version, None
            published, stranded = switched_versions(home, retained, version)
            older = [name for name in published if name != version]
        unread = unread_split_folders(home, older + ([version] if version else []))
        keys = merge_keys([read_retained_keys(home, older), latest.keys])
        versions_read = len(older) + (version is not None)
        names = names | (set(older) - set(unread))    # every retained version read whole: its keys are pinned now
        seeded = seed_pins(pins, keys, salt)
        pins = _sorted_pins(pa.concat_tables([pins, seeded]))
        kinds = Counter(seeded.column("kind").to_pylist())
        log(f"split key owners re-seeded from the sidecars of {versions_read} published versions (latest: "
            f"{version}): {seeded.num_rows} keys they published ({kinds['prompt']} prompts, {kinds['image']} images) "
            f"had no owner pin in {path} (lost, restored from an older copy, or a home built before the pins were "
            "stored); they keep the split they were published in (keys published only in versions already deleted "
            "by retention cannot be recovered)")
        if stranded:
            log(f"split key owners: the versions {', '.join(stranded)} under {home.datasets} were never switched to "
                f"latest (a publish that stopped before switching; not in {switched_file(home.datasets)}): never "
                "published, so their keys are not pinned")
        if unread:
            log("split key owners: not every sidecar of the published versions " + "; ".join(
                f"{name} ({why})" for name, why in unread.items()) + " could be read as the version's own file (a "
                "link is not followed): their keys may not all be pinned, and they are not recorded as covered, so "
                "every build reads the sidecars again and says so until the folder is put back or the version deleted")
    rekeyed = 0
    record_version, record_data = key_version, key_data
    if version is None and not retained:     # no version at all, so no caption keyed by another function: current
        record_version, record_data = KEY_VERSION, current_data
    elif version is not None and (key_version, key_data) != (KEY_VERSION, current_data):
        # the prompt key function changed since these pins were made (or they predate the record): a published
        # caption's key may have changed, and merged with a key pinned elsewhere (``кот`` and ``Кот``, keyed apart
        # before version 9, held out and train): every retained published caption is keyed anew and its new key
        # pinned under every salt, held out if any caption of it was published held out. Recorded as done only when
        # every published version was read whole (review rev18k); with nothing published (latest away) it waits.
        # An upgrade of ICU, regex or Python's Unicode data (key_data_version) changes keys as a code change does
        # (a newer ICU ties one more letter to an ASCII letter): it re-keys too (review rev24a).
        pins, rekeyed = rekey_prompt_pins(home, pins, salt, published)
        not_read = unread_split_folders(home, published)
        if not not_read:
            record_version, record_data = KEY_VERSION, current_data
        changed_what = (f"key version {key_version or 'unrecorded'} -> {KEY_VERSION}" if key_version != KEY_VERSION
                        else f"its Unicode / ICU data {key_data or 'unrecorded'} -> {current_data}")
        log(f"split key owners: the prompt key function changed ({changed_what}): the captions of "
            f"{len(published)} published versions keyed anew, {rekeyed} prompt "
            "pins added or held out (a caption published in validation or test stays held out under its new key)"
            + (f"; not read whole: {', '.join(sorted(not_read))}, so the next build keys them again" if not_read else ""))
    whole = how != "nothing published" and version not in unread   # latest unread: nor it nor its split_pairs covered
    covered = digests | ({source} if source and whole else set())
    versions = (names & set(retained)) | ({version} if version and whole else set())
    changed = (not path.is_file() or added.num_rows > 0 or seeded.num_rows > 0 or covered != digests
               or versions != names or rekeyed > 0 or (record_version, record_data) != (key_version, key_data))
    return PinsUpdate(pins, added, seeded, how, versions_read, sorted(covered), sorted(versions), changed, rekeyed,
                      record_version, record_data)


def rekey_prompt_pins(home: DataHome, pins: pa.Table, salt: str, names: list[str]) -> tuple[pa.Table, int]:
    """``pins`` with the captions of the published versions ``names`` keyed by today's :func:`normalize_prompt`:
    each new key pinned under every salt the pins hold and ``salt`` (held out, test then validation, if any caption
    keyed to it was published held out; its first day the earliest), and a key pinned to train that a held-out
    caption now keys to held out instead, under every salt: the one change a pin gets, and towards held out, so no
    caption published for evaluation is trained on after a key-function change. Returns the pins (ordered) and how
    many were added or changed."""
    files = _retained_sidecars(home, names)
    if not files:
        return pins, 0
    con = connect({})
    try:
        captions = con.sql(f"SELECT caption, {_HELD_OUT_OWNER.format(column='split')}, min(dt) AS first_dt "
                           f"FROM read_parquet($files, {NO_HIVE}) WHERE split IN ('train', 'validation', 'test') "
                           "GROUP BY caption ORDER BY caption", params={"files": _literal(files)}).to_arrow_table()
        con.register("captions", captions.append_column(
            "key", pa.array([normalize_prompt(c) for c in captions.column("caption").to_pylist()], pa.string())))
        con.register("rekeyed", con.sql(f"SELECT key, {_HELD_OUT_OWNER.format(column='owner')}, min(first_dt) AS "
                                        "first_dt FROM captions GROUP BY key").to_arrow_table())
        con.register("pins", pins)
        # every salt that pins anything, and the build's: a later build under any of them finds the new keys
        con.register("salts", con.sql("SELECT DISTINCT salt FROM pins UNION SELECT $salt",
                                      params={"salt": salt}).to_arrow_table())
        changed = con.sql("""
            SELECT (SELECT count(*) FROM pins p JOIN rekeyed r ON p.kind = 'prompt' AND p.key = r.key
                    WHERE p.owner = 'train' AND r.owner <> 'train')
                 + (SELECT count(*) FROM rekeyed r CROSS JOIN salts s
                    WHERE NOT EXISTS (SELECT 1 FROM pins p WHERE p.salt = s.salt AND p.kind = 'prompt'
                                      AND p.key = r.key))""").fetchall()[0][0]
        updated = con.sql("""
            SELECT p.kind, p.key,
                   CASE WHEN p.kind = 'prompt' AND p.owner = 'train' AND r.owner <> 'train'
                        THEN r.owner ELSE p.owner END AS owner,
                   p.first_dt, p.salt
            FROM pins p LEFT JOIN rekeyed r ON p.kind = 'prompt' AND p.key = r.key
            UNION ALL
            SELECT 'prompt', r.key, r.owner, r.first_dt, s.salt FROM rekeyed r CROSS JOIN salts s
            WHERE NOT EXISTS (SELECT 1 FROM pins p WHERE p.salt = s.salt AND p.kind = 'prompt' AND p.key = r.key)
            """).to_arrow_table()
    except Exception as exc:
        raise RuntimeError(f"cannot read the captions of the published versions {', '.join(names)} under "
                           f"{home.datasets} to key them anew after the prompt key function changed: {exc}. Repair "
                           "or delete the damaged version first") from exc
    finally:
        con.close()
    return _sorted_pins(cast_to_schema(updated, get_schema("split_key_owners"))), int(changed)


class UnreadPublishedVersion(RuntimeError):
    """The split ledger must be re-seeded from a retained published version whose split folder or sidecar is not
    the version's own file (a link, not a folder, one this account cannot list): its users cannot be read, and
    assigning them afresh would record them for good in a split they may not have been published in (review
    rev24f). Nothing was written."""


def version_salts(home: DataHome, retained: list[str], version: str | None,
                  published_pairs: PublishedSplitPairs) -> tuple[dict[str, str], bool]:
    """(the salt each retained version is known to have been built under, whether that differs from the record):
    what the record beside the versions names (:func:`pipelines.splits.coverage.read_version_salts`), and
    ``latest``'s when not named yet and the home's ``split_pairs`` is the file it was published from
    (:func:`split_pairs_salt`: learned at the first build after each publish, which :func:`_build_splits` then
    records). A version does not record its salt itself. Versions no longer retained are dropped (review rev24f)."""
    recorded = coverage.read_version_salts(home)
    salts = {name: recorded[name] for name in retained if recorded and name in recorded}
    if version is not None and version in retained and version not in salts:
        learned = split_pairs_salt(published_pairs)
        if learned is not None:
            salts[version] = learned
    # a record this tool did not write is left as it is (write_version_salts says so while a salt is known)
    return salts, salts != recorded if recorded is not None else bool(salts)


def load_ledger(home: DataHome, salt: str, present: set[str], others: list,
                log: Callable[[str], None], pairs_key: str | None = None, pins: pa.Table | None = None,
                settings: str | None = None) -> LedgerCheck:
    """The ledger's entries under ``salt`` checked against the published versions (call under the ledger lock),
    with the published users it lacks re-seeded. Refuses (:class:`LedgerKeysChanged`) when ``present`` (the users
    of ``pairs``) are not the users the ledger and the published versions know (a new pseudonym secret: exactly, by
    the key checks of ``pairs_key`` and the ledger's, when both are recorded). ``others`` receives the other salts'
    entries. The key owner pins (``pins``, every salt's, as read from ``split_key_owners``; default: read here) are
    brought up to date with the published versions (:func:`update_pins`).

    The published versions are ``latest`` and every retained version it was switched to (:func:`switched_versions`;
    with ``latest`` dangling or away, those alone: review rev24f). Their sidecars are read (``latest``'s once: users,
    and keys when the pins need them) only when the ledger's record (:func:`pipelines.splits.coverage.ledger_record`)
    does not cover the ``split_pairs`` ``latest`` was published from or does not name every other one of them
    (review rev24f: a ledger restored from an older copy and ``latest`` published again from the backed-up
    ``split_pairs`` is covered for ``latest`` but not for the version it was rolled back from), or the pins need
    re-seeding from the sidecars: when the record covers them all, every published user is in the ledger, and the
    read would find nothing to re-seed nor any user for :func:`check_keys`. Each user the ledger lacks is re-seeded
    in the split :func:`merge_published_users` picks (a version built under ``salt`` first). A version to be read
    that has a split folder or sidecar this build cannot read as its own is refused (:class:`UnreadPublishedVersion`),
    never skipped.

    ``settings``: the build's placement settings (:func:`placement_settings`). An entry of a user of ``pairs``
    decided under others (a one-off override's run: review rev36f) makes the published versions be read: the
    entry stands (recorded as settled, settings None) when a published version holds its user, whose split it
    decided; else :func:`assign_users` decides it again."""
    ledger_file = home.table_file("split_ledger")
    ledger = read_ledger(home, salt, others)
    unsettled = ({user for user, entry in ledger.items() if user in present and not is_settled(entry, settings)}
                 if settings is not None else set())
    ledger_key = file_key_check(ledger_file)
    pins = read_pins(home) if pins is None else pins
    other_users = {user for user, _ in others}
    known = set(ledger) | other_users
    digests, recorded = coverage.ledger_record(home, ledger_file, known)
    version, source = coverage.latest_source(home)
    retained = list_versions(home)
    older = [name for name in switched_versions(home, retained, version)[0] if name != version]
    latest_covered = version is None or (source is not None and source in digests)
    # an entry decided under other placement settings: whether it was published is read from the versions
    covered = latest_covered and set(older) <= recorded and not unsettled
    published_pairs = PublishedSplitPairs(home, source)     # split_pairs hashed once for all it tells (fix38c)
    salts, salts_changed = version_salts(home, retained, version, published_pairs)
    keys, keys_changed = version_keys(home, retained, version, published_pairs)
    read: list[Published] = []

    def read_latest() -> Published:
        if not read:
            read.append(read_published(home, keys=True))
        return read[0]

    update = update_pins(home, salt, pins, version, published_pairs, read_latest, log)
    if read:
        published = read[0]
    elif not covered:
        published = read_published(home, keys=False)
    else:
        published = Published(version, {}, _no_keys())
    if published.version != version:        # latest switched in between: the record said nothing of this one
        version, source = published.version, None
        published_pairs = PublishedSplitPairs(home, None)
        older = [name for name in switched_versions(home, list_versions(home), version)[0] if name != version]
    older_users: dict[str, dict[str, tuple[str, object]]] = {}
    if not covered and older:
        # every retained version latest was switched to, not latest alone (review rev24a), and while latest
        # dangles too (review rev24f); a split folder not read as the version's own is refused, never skipped
        # (its users would be assigned afresh and recorded so for good: review rev24f)
        unread = unread_split_folders(home, older)
        if unread:
            why = "; ".join(f"{name} ({reason})" for name, reason in unread.items())
            message = (f"cannot re-seed the split ledger {ledger_file} from the published versions latest was "
                       f"switched to: not every sidecar of {why} can be read as the version's own file (a link is not "
                       "followed), and the ledger does not hold all their users (lost, restored from an older copy, or "
                       "rebuilt), so building now could put a user published in validation or test into train. Put the "
                       "folder back as a real folder (or delete the version), then build again. Nothing was written")
            log(message)
            raise UnreadPublishedVersion(message)
        older_users = read_retained_users(home, older)
    # an entry decided under other placement settings whose user a published version holds stands (review rev36f)
    published_now = set(published.users).union(*older_users.values())
    settled = {user: replace(ledger[user], settings=None) for user in sorted(unsettled & published_now)}
    if unsettled:
        log(f"split ledger: {len(unsettled)} entries of users of pairs were decided under other placement settings "
            f"than this build's ({settings}; a one-off override's run): {len(settled)} of them stand (a published "
            f"version holds their user), {len(unsettled) - len(settled)} never published are decided again as if "
            "that run had not happened")
    ledger = {**ledger, **settled}
    # the users the ledger lacks under this salt, each in the split the published versions put them in
    lacking_latest = {u: v for u, v in published.users.items() if u not in ledger}
    lacking_older = {name: {u: v for u, v in users.items() if u not in ledger} for name, users in older_users.items()}
    built_under: dict[str, str | None] = {}
    merged: dict[str, PublishedSplit] = {}
    if lacking_latest or any(lacking_older.values()):
        latest_salt = salts.get(version) if version is not None else None
        if version is not None and latest_salt is None:
            latest_salt = latest_built_under(home, published_pairs, published.users)
        # a version whose salt is not known is taken as built under latest's (the deliberate reshuffle of a
        # home published before the salts were recorded stays one); with latest's unknown too, as this salt's
        built_under = {name: salts.get(name, latest_salt) for name in older}
        if version is not None:
            built_under[version] = latest_salt
        merged = merge_published_users(salt, version, lacking_latest, lacking_older, built_under)
    unknown = {user: (m.split, m.first) for user, m in merged.items() if user not in other_users}
    # a user the ledger holds under other salts only is re-seeded under this salt unless the version whose split
    # they keep is known to be built under another salt (the deliberate reshuffle: review rev24a)
    other_salt_users = {user for user in merged if user in other_users}
    to_seed = {user: (m.split, m.first) for user, m in merged.items() if user not in other_users or not m.other_salt}
    check_keys(present, set(ledger), set(unknown), pairs_key, ledger_key)
    seeded = seed_from_published(ledger, to_seed, present, salt)
    if seeded:
        held = Counter(a.split for a in seeded.values())
        from_older = sorted(user for user in seeded if merged[user].version != version)
        older_named = sorted({merged[user].version for user in from_older})
        salted = sorted(user for user in seeded if user in other_salt_users)
        untold = sorted(user for user in salted if built_under.get(merged[user].version) is None)
        overridden = sorted(user for user in seeded if merged[user].overridden)
        where = (f"the published version {version}" if version is not None else
                 f"the retained published versions latest was switched to ({', '.join(older)}; latest names no "
                 "complete version now)")
        log(f"split ledger re-seeded from {where}: {len(seeded)} users they published "
            f"({held['validation']} validation, {held['test']} test, {held['train']} train) were missing from "
            f"{ledger_file} (lost, restored from an older copy, or rebuilt); they keep the split they were published in"
            + (f"; {len(from_older)} of them as the older retained versions {', '.join(older_named)} published them "
               "(versions latest was switched to before)" if from_older and version is not None else "")
            + (f"; {len(overridden)} of them published in another split by a version built under another salt, "
               f"kept as the version built under {salt!r} (or whose salt cannot be told) published them"
               if overridden else "")
            + (f"; {len(salted)} of them the ledger held under other salts only: re-seeded under {salt!r} because the "
               "version that published them was built under it"
               + (f" or, for {len(untold)} of them, which salt it was built under cannot be told (no publish record in "
                  "cache/ names it, and the home's split_pairs is not its source): if this build is the first under a "
                  "new splits.salt, these users are not reshuffled (a split kept, never a leak)" if untold else "")
               if salted else ""))
    holds_all = covered or set(to_seed) <= set(seeded)     # a published user absent from pairs gets no entry
    versions = (recorded & set(retained)) | ((set(older) | ({version} if version else set())) if holds_all else set())
    sidecars_read = bool(read) or (not covered and (version is not None or bool(older)))
    return LedgerCheck({**ledger, **seeded}, seeded, version, sidecars_read,
                       source if holds_all else None, ledger_key_to_record(pairs_key, ledger_key), pins=update,
                       versions=sorted(versions), version_salts=salts if salts_changed else None,
                       version_keys=keys, version_keys_changed=keys_changed)


# What drop_erased_pins reads of the quarantine: the JSON members of a quarantined line that hold a prompt or an
# image uid (a ranking, image or download the ingest set aside may come back: an unknown image exported again)
_QUARANTINE_TABLES = "('rankings', 'images', 'downloads')"
_QUARANTINE_UIDS = ("image_uid", "image_0_uid", "image_1_uid", "image_2_uid", "image_3_uid", "best_image_uid")


def drop_erased_pins(con, home: DataHome, pins: pa.Table,
                     accounts: Accounts | None = None) -> tuple[pa.Table, int]:
    """``pins`` without those whose key no row of the warehouse holds any more (review rev30b: an erased account's
    prompts stayed in ``split_key_owners`` as text, and its images' uids, for good), and how many were dropped.

    A pin is dropped only when its key is gone from every table of the warehouse that may bring it back into
    ``pairs``, since a key owned afresh may go to another split than the one a retained version published it in:
    a prompt pin is kept while a row of ``pairs`` (``split_pairs``, ``split_rejects``), a ranking, image or download
    of the warehouse (a banned user's, a moderated prompt's: dropped by curation but still there) or a line of the
    quarantine (review rev30g: a ranking set aside as ``unknown_image_reference`` after the app deleted one of its
    images, which comes back when the image does; its prompt read from the line's JSON as the ingest cleans it)
    keys to it; an image pin while a row of ``pairs``, an image, ranking or download of the warehouse or a
    quarantined line names its uid. So a key whose rows only left ``pairs`` keeps its split, and one whose rows left
    the raw zone is owned afresh if it ever comes back. A warehouse table that cannot be read, or a warehouse with
    no rankings or no images at all, drops nothing. Nor is a pin dropped while a train / validation / test sidecar of
    a retained version holds its key (:func:`retained_published_keys`, review rev36f: a generation deleted in the app
    leaves the warehouse, not the version that published it held out): it goes at the first build after the last
    such version is deleted (retention). A retained version's row of an account the warehouse no longer holds
    (``accounts``: an erased account, gone from ``users``; fix37a) keeps no pin: the erasure build drops the erased
    account's keys though the versions published before it are deleted only after it (README 1a).

    Cost (review rev30g): nothing is read while every pin's key is in ``split_pairs`` / ``split_rejects`` /
    ``pairs``; else the image uids are matched in DuckDB, and only the distinct prompt texts no ranking of ``pairs``
    carries (the text of a ranking in ``pairs`` keys to a key of ``split_pairs`` or ``split_rejects``, never a
    candidate's) are keyed in Python: the prompts curation dropped, not every ranking. A quarantined line that is
    not JSON (or cut at the quarantine's 64 KiB) names no key."""
    if not pins.num_rows:
        return pins, 0
    con.register("pins_now", pins.select(["kind", "key"]))
    try:
        candidates = con.sql("""
            SELECT DISTINCT kind, key FROM pins_now
            WHERE NOT (kind = 'prompt' AND key IN (SELECT prompt_key FROM split_pairs
                                                  UNION ALL SELECT prompt_key FROM split_rejects))
              AND NOT (kind = 'image' AND key IN (SELECT image_0_uid FROM pairs UNION ALL SELECT image_1_uid FROM pairs))
            """).fetchall()
    finally:
        con.unregister("pins_now")
    if not candidates:
        return pins, 0
    gone = {(kind, key) for kind, key in candidates}
    try:
        # no rankings or images at all is no warehouse to judge by (a home fed pairs by hand): every pin is kept
        register_views(con, {name: home.table_files(name) for name in ("rankings", "images", "downloads", "quarantine")},
                       required=("rankings", "images"))
        # the line as the ingest parses it: a byte order mark before line 1 of a file is skipped (parse.without_bom,
        # review rev30i: the quarantine keeps it, and json_valid refused the line), JSON blanks around it both allow
        line = _QUARANTINED_LINE
        quarantined = (f"""SELECT raw_text FROM (SELECT {line} AS raw_text FROM quarantine
                                                 WHERE "table" IN {_QUARANTINE_TABLES} AND raw_text IS NOT NULL)
                           WHERE json_valid(raw_text)""")
        columns = {name: {row[0] for row in con.sql(f"DESCRIBE {name}").fetchall()}
                   for name in ("rankings", "images", "downloads", "quarantine", "pairs")}

        def select(name: str, column: str, alias: str = "") -> list[str]:
            """``SELECT column FROM name`` where the table has that column (none where it has not: no rows)."""
            return [f"SELECT {column}{alias} FROM {name}"] if column in columns[name] else []

        if not {"table", "raw_text"} <= columns["quarantine"]:
            quarantined = "SELECT NULL::VARCHAR AS raw_text WHERE false"
        if any(kind == "prompt" for kind, _ in gone):
            warehouse = " UNION ".join(
                [f"{query} WHERE prompt IS NOT NULL"
                 for name in ("rankings", "images", "downloads") for query in select(name, "prompt", ", false")]
                + [f"""SELECT json_extract_string(raw_text, '$.prompt'), true FROM ({quarantined})
                       WHERE json_extract_string(raw_text, '$.prompt') IS NOT NULL"""])
            # a ranking of pairs by its id and day (review rev30i: an id two days hold took the other day's text out)
            in_pairs = ("""EXCEPT SELECT prompt, false FROM rankings
                           WHERE (ranking_id, CAST(dt AS DATE)) IN (SELECT ranking_id, CAST(dt AS DATE) FROM pairs)"""
                        if {"prompt", "ranking_id", "dt"} <= columns["rankings"]
                        and {"ranking_id", "dt"} <= columns["pairs"] else "")
            texts = con.sql(f"{warehouse} {in_pairs}").fetchall()
            from pipelines.ingest.parse import split_prompt

            wanted = {key for kind, key in gone if kind == "prompt"}
            held = {key for text, raw in texts
                    if (key := normalize_prompt(split_prompt(text)[0] if raw else text)) in wanted}
            gone = {(kind, key) for kind, key in gone if not (kind == "prompt" and key in held)}
        if any(kind == "image" for kind, _ in gone):
            con.register("image_candidates", pa.table({"key": pa.array(
                sorted(key for kind, key in gone if kind == "image"), pa.string())}))
            try:
                uids = " UNION ALL ".join(
                    [f"SELECT json_extract_string(raw_text, '$.{member}') AS uid FROM ({quarantined})"
                     for member in _QUARANTINE_UIDS]
                    + select("images", "image_uid") + select("downloads", "image_uid")
                    + [query for i in range(4) for query in select("rankings", f"image_{i}_uid")])
                held = {key for (key,) in con.sql(
                    f"SELECT key FROM image_candidates WHERE key IN (SELECT uid FROM ({uids}))").fetchall()}
            finally:
                con.unregister("image_candidates")
            gone = {(kind, key) for kind, key in gone if not (kind == "image" and key in held)}
    except Exception:   # noqa: BLE001 - a table that cannot be read: every pin is kept (never a key moved)
        return pins, 0
    if gone:
        # review rev36f: a key a retained version still publishes keeps its pin (a generation deleted in the app
        # leaves the warehouse, not the versions that published it), unless only by rows of erased accounts
        # (fix37a); the keys of versions not read whole are kept
        gone -= retained_published_keys(home, gone, accounts)
    if not gone:
        return pins, 0
    kinds, keys = pins.column("kind").to_pylist(), pins.column("key").to_pylist()
    keep = pa.array([(kind, key) not in gone for kind, key in zip(kinds, keys)], pa.bool_())
    kept = pins.filter(keep)
    return kept, pins.num_rows - kept.num_rows


# the raw line of a quarantined row as the ingest parses it (a byte order mark before line 1 of a file skipped)
_QUARANTINED_LINE = "CASE WHEN starts_with(raw_text, chr(65279)) THEN substr(raw_text, 2) ELSE raw_text END"


@dataclass(frozen=True)
class Accounts:
    """Which users of the retained versions are accounts the warehouse still holds (fix37a, rev37a): ``present``,
    the pseudonyms of ``pairs``' users (accounts with rows), and every raw user id the warehouse holds (``users``,
    ``rankings``, ``images``, ``downloads``, and the ``user_id`` of a quarantined line of those tables) keyed under
    ``secret`` (the curation's ``pseudonym_secret``, only when it is the secret ``pairs`` was keyed under: its key
    check; None otherwise, and then no account is taken to be gone). Never shows the secret (``repr``)."""
    home: DataHome
    present: frozenset[str]
    secret: str | None = field(default=None, repr=False)
    current: frozenset[str] = frozenset()       # the retained versions recorded as keyed under that secret

    @classmethod
    def of(cls, home: DataHome, present: Iterable[str], secret: str | None, pairs_key: str | None,
           version_keys: dict[str, str] | None = None) -> Accounts:
        """``secret`` kept only when ``pairs_key`` (the key check ``pairs`` records) says it keyed ``pairs``; the
        versions of ``version_keys`` (name -> key check: :func:`version_keys`) recorded under that key check."""
        known = secret if secret and pairs_key and key_check(secret) == pairs_key else None
        current = frozenset(name for name, key in (version_keys or {}).items() if known and key == pairs_key)
        return cls(home, frozenset(present), known, current)

    def account_ids(self, con) -> Iterator[list[int]]:
        """The distinct raw user ids the warehouse holds, in batches (never all of them in memory at once); nothing
        when ``rankings`` or ``images`` cannot be read (no warehouse to judge by)."""
        names = ("users", "rankings", "images", "downloads", "quarantine")
        register_views(con, {name: self.home.table_files(name) for name in names}, required=("rankings", "images"))
        columns = {name: {row[0] for row in con.sql(f"DESCRIBE {name}").fetchall()} for name in names}
        parts = [f"SELECT TRY_CAST(user_id AS BIGINT) AS user_id FROM {name}"
                 for name in names[:4] if "user_id" in columns[name]]
        if {"table", "raw_text"} <= columns["quarantine"]:
            # a quarantined line's user_id (rev37a): its JSON member, an integer (rev37i: 5.5 is no id, the ingest
            # reads none from it); a line cut or not JSON (line_too_long) names every integer "user_id": member it
            # holds (rev37i: the first could be a nested object's, and an account a line names is kept: a JSON
            # string escapes its quotes, so a prompt or name cannot spell one)
            lines = f"""SELECT {_QUARANTINED_LINE} AS line FROM quarantine
                        WHERE "table" IN ('users', 'rankings', 'images', 'downloads') AND raw_text IS NOT NULL"""
            parts.append(f"""SELECT TRY_CAST(json_extract_string(line, '$.user_id') AS BIGINT) AS user_id
                             FROM ({lines}) WHERE json_valid(line)
                               AND json_type(line, '$.user_id') IN ('BIGINT', 'UBIGINT')""")
            parts.append(f"""SELECT TRY_CAST(unnest(regexp_extract_all(
                                 line, '"user_id"\\s*:\\s*(-?[0-9]+)\\s*(?:[,}}]|$)', 1)) AS BIGINT) AS user_id
                             FROM ({lines}) WHERE NOT json_valid(line)""")
        reader = con.sql(f"SELECT DISTINCT user_id FROM ({' UNION ALL '.join(parts)}) WHERE user_id IS NOT NULL"
                         ).to_arrow_reader(65_536)
        for batch in reader:
            yield batch.column(0).to_pylist()

    def gone(self, suspects: set[str]) -> set[str]:
        """The ``suspects`` (pseudonyms not in ``present``) no account of the warehouse has. None when no secret is
        known or the warehouse cannot be read or names no account id (what cannot be told is taken to be there).
        Keys each account id once (one HMAC, ~2-5 us), in batches, stopping once every suspect is found."""
        unknown = set(suspects)
        if self.secret is None or not unknown:
            return set()
        seen = False
        con = connect({})
        try:
            for ids in self.account_ids(con):
                seen = seen or bool(ids)
                for user_id in ids:
                    unknown.discard(pseudonymize(user_id, self.secret))
                if not unknown:
                    break
        except Exception:   # noqa: BLE001 - no warehouse to judge by: no account is taken to be gone
            return set()
        finally:
            con.close()
        return unknown if seen else set()       # a warehouse that names no account is none to judge by


def retained_published_keys(home: DataHome, candidates: set[tuple[str, str]],
                            accounts: Accounts | None = None) -> set[tuple[str, str]]:
    """The (kind, key) of ``candidates`` that a train / validation / test row of a retained complete version
    (:func:`formats.dataset.list_versions`, whether ``latest`` was switched to it or not) holds: its ``prompt_key``,
    its ``image_0_uid`` or ``image_1_uid``. A row holds none when ``accounts`` tells its user gone (an erased
    account: fix37a) in a version recorded as keyed under the current secret (``Accounts.current``; a version not
    recorded, or keyed under an older secret, keeps every pin: rev37a, rev37i). Every candidate when a version
    cannot be read whole (a split folder or sidecar that is a link, not a folder, not listable:
    :func:`unread_split_folders`) or a sidecar cannot be read: what cannot be told keeps its pin (review rev36f).
    Reads four columns of each retained version's sidecars, only when a pin would otherwise be dropped."""
    if not candidates:
        return set()
    try:
        names = list_versions(home)
        if unread_split_folders(home, names):
            return set(candidates)
        files = {name: found for name in names if (found := _retained_sidecars(home, [name]))}
    except OSError:
        return set(candidates)
    if not files:
        return set()
    con = connect({})
    rows: list[tuple[str, str, str, str | None]] = []
    try:
        con.register("candidates", pa.table({"kind": pa.array([k for k, _ in sorted(candidates)], pa.string()),
                                             "key": pa.array([v for _, v in sorted(candidates)], pa.string())}))
        for name, found in sorted(files.items()):
            # one streaming pass, joined to the few candidates (never the versions' keys held in memory)
            rows += [(name, *row) for row in con.execute(f"""
                SELECT DISTINCT c.kind, c.key, s.user_id
                FROM (SELECT unnest(['prompt', 'image', 'image']) AS kind,
                             unnest([prompt_key, image_0_uid, image_1_uid]) AS key, user_id
                      FROM read_parquet(?, {NO_HIVE}) WHERE split IN ('train', 'validation', 'test')) s
                JOIN candidates c ON c.kind = s.kind AND c.key = s.key""", [_literal(found)]).fetchall()]
        # a row's user can be told only in a version recorded as keyed under the current secret (rev37i: a version
        # of the erased account alone was told by none of its users; rev37a: one under an older secret holds old
        # pseudonyms, which are no account's under this one)
        told = set(accounts.current) if accounts is not None else set()
        suspects = {user for name, _, _, user in rows if name in told and user is not None} - accounts.present \
            if accounts is not None else set()
    except Exception:   # noqa: BLE001 - a sidecar that cannot be read: every candidate keeps its pin
        return set(candidates)
    finally:
        con.close()
    gone = accounts.gone(suspects) if suspects else set()
    return {(kind, key) for name, kind, key, user in rows if not (user in gone and name in told)}


def _kinds(pins: pa.Table) -> Counter:
    """Pins per kind (prompt, image) of a ``split_key_owners`` table."""
    counts = pins.group_by("kind").aggregate([("kind", "count")]).to_pylist()
    return Counter({row["kind"]: row["kind_count"] for row in counts})


def _build_splits(home: DataHome, config: SplitConfig, source: Path, log: Callable[[str], None],
                  pseudonym_secret: str | None = None) -> SplitReport:
    """:func:`build_splits` under the ledger lock: pairs, the ledger, the key owner pins and the published users and
    keys are read only here."""
    con = connect({"pairs": source}, threads=config.threads or None)
    other_salts: list = []
    present = {row[0] for row in con.sql("SELECT DISTINCT user_id FROM pairs").fetchall()}
    pairs_key = file_key_check(source)
    check = load_ledger(home, config.salt, present, other_salts, log, pairs_key, settings=placement_settings(config))
    ledger, seeded, version = check.ledger, check.seeded, check.version
    update = check.pins
    _, assigned, _ = assign(con, config, ledger, update.pins, home.table_file("duplicate_clusters"))
    # the salt a published version was built under is learned from the home's split_pairs while it is the file
    # that version was published from: recorded before split_pairs is rewritten, so a build that dies in between
    # does not lose it (review rev24k); a record that cannot be written stops the build while split_pairs still
    # tells the salt (the rerun learns it again)
    if check.version_salts is not None:     # a published version's salt learned (or one no longer retained)
        unwritten = coverage.write_version_salts(home, check.version_salts)
        if unwritten and coverage.read_version_salts(home) is not None:
            raise OSError(f"split ledger: {unwritten}; split_pairs and the ledger were not rewritten (split_pairs "
                          "still tells which salt the published version was built under): free the space or fix "
                          "the permissions and rerun")
        if unwritten:
            log(f"split ledger: {unwritten}")
    # which secret each retained version's pseudonyms are under, learned like its salt (fix37a: an erased account's
    # rows in them keep no pin); a cache, written before split_pairs is rewritten
    if check.version_keys_changed:
        coverage.write_version_keys(home, check.version_keys)
    # which secret the user_id pseudonyms are under (pairs' key check, never the secret): the publish says so on the
    # data card when it is the public default one (review rev28b), and the settings the card states (rev30d)
    # and how its held-out users were chosen, by ledger rule (the card states it, review rev30f)
    kept_heldout = con.sql("""SELECT DISTINCT home, user_id FROM split_assignments
                              WHERE drop_reason IS NULL AND home IN ('validation', 'test') ORDER BY 1, 2""").fetchall()
    split_pairs = run_to_parquet(con, "splits_pairs", "split_pairs", home.table_file("split_pairs"),
                                 {"salt": config.salt, "unique_prompts": int(config.unique_prompts)},
                                 {SALT_METADATA: config.salt.encode("utf-8"),
                                  SETTINGS_METADATA: settings_record(config),
                                  HELDOUT_METADATA: heldout_record(kept_heldout, assigned),
                                  **({KEY_CHECK_METADATA: pairs_key.encode("ascii")} if pairs_key else {})})
    rejects = run_to_parquet(con, "splits_rejects", "split_rejects", home.table_file("split_rejects"))
    ledger_rows = ledger_table(ledger, assigned, other_salts)
    # the ledger's record: it holds every user of the split_pairs just written, and of latest's when checked so
    split_pairs_sha = sha256_file(home.table_file("split_pairs"))
    covered = [split_pairs_sha] + ([check.covered_source] if check.covered_source else [])
    schema = get_schema("split_ledger")
    metadata = coverage.ledger_metadata(ledger_rows.column("user_id").to_pylist(), covered)
    if check.key_check:             # which secret its pseudonyms are under (pipelines.curation.pseudonym.key_check)
        metadata[KEY_CHECK_METADATA] = check.key_check.encode("ascii")
    write_parquet_atomic(ledger_rows, home.table_file("split_ledger"), schema.with_metadata(metadata))
    coverage.record_ledger_versions(home, home.table_file("split_ledger"), check.versions)
    con.register("split_pairs", split_pairs)
    con.register("split_rejects", rejects)
    # the key owner pins, brought up to date with the published versions before assigning: written when changed;
    # review rev30b: less the pins of keys no row of the warehouse holds any more (an erased account's)
    pins, erased = drop_erased_pins(con, home, update.pins,
                                    Accounts.of(home, present, pseudonym_secret, pairs_key, check.version_keys))
    if update.changed or erased:
        pins_schema = get_schema("split_key_owners")
        write_parquet_atomic(pins, home.table_file("split_key_owners"),
                             pins_schema.with_metadata(coverage.pins_metadata(pins, update.covered, update.versions,
                                                                              update.key_version,
                                                                              update.key_data)))
    added = _kinds(update.added)
    held = pc.sum(pc.equal(pins.column("salt"), config.salt)).as_py() or 0
    dropped_pinned, dropped_merge = con.sql("""
        SELECT count(*) FILTER (drop_cause = 'pinned'), count(*) FILTER (drop_cause = 'cluster_merge')
        FROM split_assignments""").fetchall()[0]
    per_split = []
    kept_prompts = {}
    for split, rows, users, prompts, labelled, ties in con.sql("""
            SELECT split, count(*), count(DISTINCT user_id), count(DISTINCT prompt_key),
                   count(DISTINCT prompt_key) FILTER (has_label), count(*) FILTER (label_0 = 0.5)
            FROM split_pairs GROUP BY split""").fetchall():
        per_split.append({"split": split, "rows": rows, "users": users, "prompts": prompts,
                          "tie_rate": round(ties / rows, 6) if rows else 0.0})
        kept_prompts[split] = labelled
    present = {s["split"] for s in per_split}
    per_split += [{"split": s, "rows": 0, "users": 0, "prompts": 0, "tie_rate": 0.0} for s in SPLITS if s not in present]
    per_split.sort(key=lambda s: SPLITS.index(s["split"]))
    by_reason = con.sql("SELECT home_split, reason, count(*) FROM split_rejects GROUP BY ALL ORDER BY 1, 2").fetchall()
    train_home = con.sql("SELECT count(*) FROM split_assignments WHERE home = 'train'").fetchall()[0][0]
    sacrificed = sum(n for home_split, _, n in by_reason if home_split == "train")
    pairs = con.sql("SELECT count(*) FROM pairs").fetchall()[0][0]
    labelled_users = con.sql("SELECT count(DISTINCT user_id) FROM pairs WHERE has_label").fetchall()[0][0]
    # splits.min_users counts the users with labelled rankings in the splits: not those whose every row went to
    # split_rejects (review rev30f)
    split_users = con.sql("SELECT count(DISTINCT user_id) FROM split_pairs WHERE has_label").fetchall()[0][0]
    rows = {s["split"]: s["rows"] for s in per_split}
    ledger_users = Counter(a.split for a in assigned.values())   # users of pairs, by the split the ledger gives them
    rejected: dict[str, dict[str, int]] = {}
    for home_split, reason, n in by_reason:
        rejected.setdefault(home_split, {})[reason] = n
    new_users = Counter(a.split for u, a in assigned.items() if u not in ledger)
    return SplitReport(per_split=per_split, rejects=[tuple(r) for r in by_reason], pairs=pairs,
                       train_home_rows=train_home, sacrificed_train_rows=sacrificed, users=labelled_users,
                       new_users={s: new_users[s] for s in HELDOUT + ("train",) if new_users[s]},
                       problems=trainability_problems(rows, split_users, config.min_unique_rows, config.min_users,
                                                      {s: kept_prompts.get(s, 0) for s in HELDOUT},
                                                      dict(ledger_users), rejected),
                       config=asdict(config), reseeded_users=dict(Counter(a.split for a in seeded.values())),
                       published_version=version, published_sidecars_read=check.sidecars_read,
                       pins_added={k: added[k] for k in PIN_KINDS if added[k]},
                       pins_reseeded=dict(_kinds(update.seeded)),
                       pins_held=held, pins_sidecars_read=update.how == "sidecars",
                       pins_update=update.how, pins_versions_read=update.versions_read, pins_rekeyed=update.rekeyed,
                       dropped_pinned=dropped_pinned, dropped_cluster_merge=dropped_merge)


def main(argv: list[str] | None = None) -> None:
    """``python -m pipelines.splits.assign --home DIR``: build split_pairs, split_rejects and the ledger, print the report."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--home", default=None)
    add_flags(parser, "splits")
    args = parser.parse_args(argv)
    home = DataHome.at(args.home)
    report = build_splits(home, stage_config(home.root, "splits", args),
                          pseudonym_secret=stage_config(home.root, "curation").pseudonym_secret)
    print(json.dumps(report.metadata(), indent=2))


if __name__ == "__main__":
    from formats.commands import run_command

    sys.exit(run_command("python -m pipelines.splits.assign", main))
