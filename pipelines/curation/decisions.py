"""The safety and quality policy (``decisions``) and the preference pairs (``pairs``).

Decide on metadata first: every rule is a SQL file over the warehouse, the shard writer only applies
the outcome. Subjects and reasons of ``decisions`` (all ``keep = false``; one row per subject and reason):

- ``image``: ``conflicting_image`` (one image_uid exported on several days with different content: every
  version dropped, none guessed), ``content_filtered`` (provider filter), ``missing_image_row``, ``feature_rejected``,
  ``missing_features``, ``nsfw`` (a NudeNet detection of a configured class at >= threshold, both as float32),
  ``nsfw_cluster`` (a duplicate-cluster mate of an ``nsfw`` image: a cluster decision covers all members).
- ``ranking`` (subject_id = ranking_id): ``banned_user``, ``prompt_phrase`` (word-bounded,
  case-insensitive phrase match on the ingested prompt, its moderation key or its moderation text), ``conflicting_ranking`` (one ranking_id
  exported twice with different content: every copy dropped), ``invalid_best_image``,
  ``four_image_tie`` (only with ``four_image_ties = 'drop'``), ``all_pairs_dropped`` /
  ``no_candidate_pairs`` (every candidate pair has a pair decision).
- ``pair`` (subject_id = pair_id): ``mismatched_image`` (either image was generated for another prompt or by another
  user than the ranking's, such as the app's control image: the caption does not describe it; the ranking's pairs
  between matching images are kept, review rev25f), ``image_dropped`` (either image has an image decision),
  ``same_cluster`` (both images in one duplicate cluster: no preference signal).
- ``ranking_export`` (``<ranking_id>@<day>``): ``duplicate_ranking``, an identical re-export.
- ``user`` (subject_id = pseudonym): ``banned_user``.

Reconciliation: every ranking_id is in ``pairs`` or has a ``ranking`` decision; every extra export
has a ``ranking_export`` decision (blocking rule in data_contracts/pairs.yaml). Before either build reads
anything, the rows of each day's ``rankings`` / ``images`` partitions must equal what that day's ingest
accepted (``ingest_files.accepted``), with no key on two rows of a day: otherwise :class:`IngestNotReconciled`
(:func:`check_ingest_reconciled`). ``decisions`` records the identity of what it was built from (the input files'
bytes, the moderation lists, the policy: :func:`curation_inputs`); ``build_pairs`` refuses a ``decisions`` built from
other inputs than it reads (:class:`DecisionsOutOfDate`, review rev32g). Both read, and digest, one snapshot of
their inputs (:func:`_snapshot_inputs`: hard links in a held folder in ``.staging/curation``), so the identity is of
what is curated (review rev32k); ``build_pairs`` checks ``decisions`` under the curation lock. Every ranking in ``pairs`` has each of its
candidate pairs there or with a pair decision (``pairs_candidate_pairs_reconciled``).

Pairs follow the released Pick-a-Pic columns. 4-image era: a ranking with a chosen image gives one
pair of the chosen image against each other shown image (3 pairs; the order among the unchosen is
unknown, so no pair between them); a 4-image tie says "none is significantly better", a statement
about every pair, so it gives all 6 pairs as ties (``four_image_ties = 'drop'`` drops them instead).
Pair images keep display order; ``pair_id = <ranking_id>_<pair_index>`` with pair_index in display
order of (first, second) position, assigned before any drop so ids never shift.

Model short names (``model_0`` / ``model_1``): see ``MODEL_SHORT_NAMES``; other ids keep their
name without the organisation prefix. ``are_different`` compares the full model ids.
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import regex

from formats.files import sha256_file
from formats.home import BANNED_USERS_FILE, NSFW_PHRASES_FILE, DataHome
from formats.locks import held_scratch_folder, sweep_scratch_folders
from formats.settings import (
    MAX_THREADS,
    add_flags,
    check_fields,
    check_path_text,
    knob,
    knobs,
    public_fields,
    quoted,
    stage_config,
)
from pipelines.curation.dedup import DEDUP_METADATA
from pipelines.curation.pseudonym import DEFAULT_SECRET, KEY_CHECK_METADATA, key_check, pseudonym_table
from pipelines.curation.writing import writing_table
from pipelines.features.nsfw import NMS_SCORE_THRESHOLD
from pipelines.splits.assign import _styled_letters, _symbol_readings, _visible, moderation_key, moderation_text
from pipelines.sqlrun import connect, run_sql, run_to_parquet
from schemas.features import NSFW_CLASSES

MODEL_SHORT_NAMES = {
    "stabilityai/stable-diffusion-2-1": "sd-2.1",
    "stable-diffusion-768-v2-1": "sd-2.1-768",
    "yuvalkirstain/dreamlike-photoreal-2-flax": "dreamlike-photoreal-2.0",
    "stable-diffusion-xl-beta-v2-2-2": "sdxl-beta-v2.2.2",
    "stable-diffusion-xl-beta-v2-2-1": "sdxl-beta-v2.2.1",
    "stable-diffusion-xl-beta-v2-2": "sdxl-beta-v2.2",
}



# every SDXL beta engine of the app's API (``stable-diffusion-xl-beta-v2-2-4`` too, not only those listed above)
SDXL_ENGINE = re.compile(r"stable-diffusion-xl-beta-v([0-9]+(?:-[0-9]+)*)")


def short_model_name(model_id: str) -> str:
    """The ``model_0`` / ``model_1`` name of a generator (Python mirror of sql/curation_pairs.sql)."""
    if model_id in MODEL_SHORT_NAMES:
        return MODEL_SHORT_NAMES[model_id]
    engine = SDXL_ENGINE.fullmatch(model_id)
    if engine:
        return "sdxl-beta-v" + engine.group(1).replace("-", ".")
    return re.sub(r"^.*/", "", model_id)


def _shaped_letters() -> str:
    """RE2 class ranges of the letters and digits drawn in a shape (symbols, So: circled ⓐ, squared 🄰, negative
    squared 🅰, :func:`~pipelines.splits.assign._symbol_readings`, :func:`~pipelines.splits.assign._styled_letters`):
    part of a word on the prompt as typed, as their letters are (review rev18e: ``ⓐⓢⓢ`` is not in ``ⓖⓛⓐⓢⓢ``)."""
    cps = sorted({cp for cp, reading in _symbol_readings().items() if len(reading) == 1 and reading.isalnum()}
                 | {cp for cp in _styled_letters() if not regex.match(r"[\pL\pN\pM]", chr(cp))})
    ranges: list[list[int]] = []
    for cp in cps:
        if ranges and ranges[-1][1] == cp - 1:
            ranges[-1][1] = cp
        else:
            ranges.append([cp, cp])
    return "".join(rf"\x{{{a:X}}}" if a == b else rf"\x{{{a:X}}}-\x{{{b:X}}}" for a, b in ranges)


# RE2: not a letter, digit, mark (a vowel sign is part of its word), underscore or letter drawn in a shape
_WORD = rf"[^\pL\pN\pM_{_shaped_letters()}]"
# Scripts written without spaces between words: a letter of one next to a spaced-script phrase is a boundary (Unicode
# word breaks: a change of script is one), and a phrase in one needs no boundary at all (Han, Hiragana, Thai, ...),
# except Katakana: a run of it is one (loan)word, so a Katakana phrase must not continue a Katakana run
# (``ロリ`` is not in ``カロリー``). The prolonged sound mark ー (and its halfwidth form) is a Katakana letter here.
_FREE_SCRIPTS = ("Han", "Hiragana", "Thai", "Lao", "Khmer", "Myanmar")


_KATAKANA = regex.compile(r"[\p{Katakana}\u30fc\uff70]")
_HANGUL = regex.compile(r"\p{Hangul}")
# RE2: a Katakana phrase's neighbours (in the prompt as typed and in a key or text, which keep Katakana), with the
# (semi-)voiced sound marks, combining (NFD ペ is ヘ + U+309A), spacing and halfwidth (review rev18e)
_KANA = r"\p{Katakana}\x{30FC}\x{FF70}\x{3099}-\x{309C}\x{FF9E}\x{FF9F}"
_UNSPACED = "".join(rf"\p{{{name}}}" for name in _FREE_SCRIPTS) + _KANA
_GUARDS = {   # RE2 before / after a phrase, by the kind of its first / last character
    # a Hangul letter next to a word of another script is a boundary (``sexy한 여자``: Korean glues its particles
    # onto any word), next to a Hangul word it is not (``음란섹스`` is one word)
    "word": (rf"(?:^|{_WORD}|[{_UNSPACED}\p{{Hangul}}])", rf"(?:$|{_WORD}|[{_UNSPACED}\p{{Hangul}}])"),
    "hangul": (rf"(?:^|{_WORD}|[{_UNSPACED}])", rf"(?:$|{_WORD}|[{_UNSPACED}])"),
    "kana": (rf"(?:^|[^{_KANA}])", rf"(?:$|[^{_KANA}])"),
    "free": ("", ""),
}
_FREE_CHAR = regex.compile("[" + "".join(rf"\p{{{name}}}" for name in _FREE_SCRIPTS) + "]")


# The defaults of the one NSFW policy (``curation.nsfw_classes`` / ``curation.nsfw_threshold``): explicit
# nudity (covered parts, faces, feet, bellies, armpits and male breasts are not). The feature stage only
# records NudeNet's scores; this stage applies the policy, with the home's settings.
EXPLICIT_CLASSES = (
    "FEMALE_GENITALIA_EXPOSED", "FEMALE_BREAST_EXPOSED", "BUTTOCKS_EXPOSED", "ANUS_EXPOSED",
    "MALE_GENITALIA_EXPOSED",
)
FLAG_THRESHOLD = 0.5
# nsfw_cluster evidence names at most this many flagged members of the cluster (and counts them all)
SHOWN_FLAGGED = 10
# Parquet key-value metadata of decisions: the policy it was built with (JSON: the NSFW classes and threshold, and
# the duplicate clusters' settings as duplicate_clusters records them), which the published data card states
POLICY_METADATA = b"pickapic.curation_policy"
# Parquet key-value metadata of decisions: the identity of what it was built from (JSON: one digest per input,
# :func:`curation_inputs`), which build_pairs compares with the inputs it reads (review rev32g)
INPUTS_METADATA = b"pickapic.curation_inputs"


@dataclass(frozen=True)
class CurationConfig:
    """Policy knobs of the decisions and pairs builds."""

    nsfw_classes: tuple[str, ...] = knob(EXPLICIT_CLASSES, "NudeNet classes that make an image NSFW.", choices=NSFW_CLASSES,
                                         form="set")
    # NudeNet drops every detection scored below its own cut-off, so a lower threshold would silently act as it.
    nsfw_threshold: float = knob(FLAG_THRESHOLD, "Minimum NudeNet detection score of a listed class to flag an image "
                                 "(NudeNet keeps no detection below 0.25).", min=NMS_SCORE_THRESHOLD, max=1)
    phrases_file: str = knob("", "Moderation phrase list (one per line, # comments); '' = the home's nsfw_phrases.txt; a relative path is inside the data home.",
                             home_file=NSFW_PHRASES_FILE)
    banned_users_file: str = knob("", "Banned user ids (one per line, # comments); '' = the home's banned_users.txt; a relative path is inside the data home.",
                                  home_file=BANNED_USERS_FILE)
    four_image_ties: str = knob("all_pairs", "4-image tie: 'all_pairs' (6 tie pairs) or 'drop'.", choices=("all_pairs", "drop"))
    pseudonym_secret: str = knob(DEFAULT_SECRET, "HMAC secret for user pseudonyms (set your own for a release).", secret=True)
    threads: int = knob(0, "DuckDB threads (0: one per core).", min=0, max=MAX_THREADS, output=False)

    def __post_init__(self) -> None:
        check_fields(self)
        for name in ("phrases_file", "banned_users_file"):
            check_path_text(getattr(self, name), f"curation.{name}")
        if not self.pseudonym_secret:
            raise ValueError("CurationConfig.pseudonym_secret must not be empty")


def _table_md(header: tuple[str, ...], rows: list[tuple]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


@dataclass
class CurationReport:
    """Counts of one decisions build."""

    rankings: int
    ranking_exports: int
    rankings_dropped: int
    decisions: int
    by_reason: list[tuple[str, str, int]]
    config: dict = field(default_factory=dict)

    def metadata(self) -> dict:
        """JSON-able values and a markdown table of decisions by subject and reason."""
        return {
            "rankings": self.rankings,
            "ranking_exports": self.ranking_exports,
            "rankings_dropped": self.rankings_dropped,
            "decisions": self.decisions,
            "decisions_by_reason": {f"{s}/{r}": n for s, r, n in self.by_reason},
            "drop_reasons": _table_md(("subject", "reason", "rows"), self.by_reason),
            "config": json.dumps(self.config, sort_keys=True),
        }


@dataclass
class PairsReport:
    """Counts of one pairs build, reconciled against the rankings."""

    pairs: int
    rankings: int
    rankings_with_pairs: int
    rankings_with_decision: int
    rankings_unaccounted: int
    ties: int
    four_image_pairs: int
    are_different: int
    models: list[tuple[str, int]]
    # export rows (ranking_id, day) neither used by pairs, nor of a dropped ranking, nor with a ranking_export
    # decision (must be 0, as pairs_exports_reconciled checks; noticed by review rev32g)
    exports_unaccounted: int = 0

    def metadata(self) -> dict:
        """JSON-able values and markdown tables (reconciliation, models)."""
        return {
            "pairs": self.pairs,
            "rankings": self.rankings,
            "rankings_with_pairs": self.rankings_with_pairs,
            "rankings_with_decision": self.rankings_with_decision,
            "rankings_unaccounted": self.rankings_unaccounted,
            "exports_unaccounted": self.exports_unaccounted,
            "tie_rate": round(self.ties / self.pairs, 6) if self.pairs else 0.0,
            "four_image_pairs": self.four_image_pairs,
            "are_different_rate": round(self.are_different / self.pairs, 6) if self.pairs else 0.0,
            "reconciliation": _table_md(("rankings", "with pairs", "with a drop decision", "unaccounted",
                                         "unaccounted exports"),
                                        [(self.rankings, self.rankings_with_pairs, self.rankings_with_decision,
                                          self.rankings_unaccounted, self.exports_unaccounted)]),
            "models": _table_md(("model", "images in pairs"), self.models),
        }


class ListNotUtf8(ValueError):
    """A moderation list that is not UTF-8 text (the message names the file, the line and what to do)."""


def read_list_text(path: Path, what: str, named: Path | None = None) -> str:
    """The text of a moderation list (UTF-8, a byte order mark allowed). A file in another encoding (Latin-1 or
    Windows-1252 from an old editor, UTF-16 from Windows Notepad) is refused with an error naming the file, the
    line of the first byte that is not UTF-8 and what to do, instead of Python's bare ``'utf-8' codec can't
    decode byte`` (review rev24a): guessing the encoding could read a phrase as other letters than it holds."""
    data = Path(path).read_bytes()
    path = named or path   # the name messages give (the list, not the build's snapshot of it)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        utf16 = data[:2] in (b"\xff\xfe", b"\xfe\xff") or b"\x00" in data[:exc.start + 2]
        found = "UTF-16 (as Windows Notepad saves 'Unicode')" if utf16 else "another encoding (Latin-1, Windows-1252?)"
        raise ListNotUtf8(f"{path}:{line}: the {what} list is not UTF-8 text (byte 0x{data[exc.start]:02x} at "
                          f"offset {exc.start} cannot be read as UTF-8; it looks like {found}): save it as UTF-8 "
                          "and run again") from None
    if "\x00" in text:          # UTF-16 without a byte order mark, of ASCII text only, decodes as UTF-8 with NULs
        line = text.count("\n", 0, text.index("\x00")) + 1
        raise ListNotUtf8(f"{path}:{line}: the {what} list holds NUL characters, so it is not UTF-8 text (it looks "
                          "like UTF-16, as Windows Notepad saves 'Unicode'): save it as UTF-8 and run again")
    return text


INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
_ASCII_ID = re.compile(r"[+-]?[0-9]+")


def read_id_list(path: Path, named: Path | None = None) -> list[int]:
    """Integer ids, one per line; blank lines and ``#`` comments skipped; errors name the file and line (an id past
    int64 too: it was a bare ``OverflowError`` from pyarrow, review rev28b)."""
    ids = []
    text_of_list = read_list_text(path, "banned user id", named)
    path = named or path   # the name messages give
    for number, line in enumerate(text_of_list.splitlines(), start=1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        if not _ASCII_ID.fullmatch(text):    # int() also reads 1_000, Arabic-Indic ٣ and fullwidth １ as numbers
            raise ValueError(f"{path}:{number}: {quoted(text)} is not an integer user id (ASCII digits 0-9, a sign "
                             "allowed)")
        value = int(text) if len(text) <= 24 else INT64_MAX + 1   # past int64 either way; int() refuses 4,300+ digits
        if not INT64_MIN <= value <= INT64_MAX:   # the app's ids are 64-bit (rankings.user_id is int64)
            raise ValueError(f"{path}:{number}: {quoted(text)} is not a user id: past the 64-bit integer range of the app's "
                             "ids (a pasted phone or card number?)")
        ids.append(value)
    return sorted(set(ids))


def read_phrases(path: Path, named: Path | None = None) -> list[str]:
    """Moderation phrases, one per line, whitespace collapsed; blank lines and ``#`` comments skipped."""
    phrases = set()
    for line in read_list_text(path, "moderation phrase", named).splitlines():
        text = " ".join(line.split("#", 1)[0].split())
        if text:
            phrases.add(text)
    return sorted(phrases)


def phrase_body(phrase: str) -> str:
    """RE2 source for ``phrase``: literal characters, any whitespace run matching ``\\s+``, or ``\\s*`` next to a
    symbol (an emoji is never part of a word: ``peach🍑`` holds ``peach 🍑``, as its prompt key says); between a
    symbol and a character glued to it in the phrase ``\\s*`` too (``peach🍑`` and ``🍑🍆`` match ``peach 🍑`` and
    ``🍑 🍆``, review rev18e)."""
    out = []
    tokens = [token for token in re.split(r"(\s+)", phrase) if token]
    for i, token in enumerate(tokens):
        if token.isspace():
            at_symbol = (i > 0 and _is_symbol(_base_char(tokens[i - 1], -1))
                         or i + 1 < len(tokens) and _is_symbol(_base_char(tokens[i + 1], 0)))
            out.append(r"\s*" if at_symbol else r"\s+")
            continue
        previous = ""
        for ch in token:
            if previous and not _MARK_OR_INVISIBLE.match(ch) and (_is_symbol(previous) or _is_symbol(ch)):
                out.append(r"\s*")       # an emoji glued to its neighbour in the phrase: spaced in a prompt too
            out.append(ch if ch.isalnum() or ch == "_" or ord(ch) > 127 else "\\" + ch)
            if not _MARK_OR_INVISIBLE.match(ch):
                previous = ch
    return "".join(out)


def _edge_kind(ch: str) -> str:
    """How a phrase starting (ending) with ``ch`` is bounded there (:data:`_GUARDS`): ``word`` for a letter, digit,
    mark or underscore of a spaced script and for ASCII punctuation (``18+`` is not in ``18+2``); ``kana`` for
    Katakana; ``hangul`` for a Hangul letter (a word boundary, where a Hangul neighbour is not one); ``free`` for a
    letter of another unspaced script and for a non-ASCII symbol (an emoji is never part of a word: ``big🍆``
    holds ``🍆``)."""
    if _KATAKANA.match(ch):
        return "kana"
    if _HANGUL.match(ch):
        return "hangul"
    if _FREE_CHAR.match(ch) or not (ch.isascii() or ch.isalnum() or ch == "_" or unicodedata.category(ch)[0] == "M"):
        return "free"
    return "word"


def _is_symbol(ch: str) -> bool:
    """A non-ASCII character that is no letter, digit, mark or unspaced-script letter (an emoji, a symbol)."""
    return bool(ch) and _edge_kind(ch) == "free" and not _FREE_CHAR.match(ch)


def _base_char(token: str, end: int) -> str:
    """The first (``end`` 0) or last (-1) character of ``token`` that is no mark or invisible ('' if none): the
    emoji a variation selector or skin tone follows."""
    bases = [c for c in token if not _MARK_OR_INVISIBLE.match(c)]
    return bases[end] if bases else ""


_MARK_OR_INVISIBLE = regex.compile(r"[\p{M}\p{Default_Ignorable_Code_Point}\p{Cf}\U0001F3FB-\U0001F3FF]")


def _edge_char_kind(ch: str) -> str:
    """:func:`_edge_kind` of a visible character, a letter drawn in a symbol (negative squared 🅽) as a letter."""
    return "word" if ord(ch) in _styled_letters() else _edge_kind(ch)


def edge_kinds(phrase: str) -> tuple[str, str]:
    """The kinds (:func:`_edge_kind`) of a phrase's first and last characters as read (NFKC, invisibles and
    decorative marks out; a letter in a shape is a letter: ``ⓐⓢⓢ`` is bounded as ``ass`` is, ``１８＋`` as ``18+``),
    on the prompt as typed and on its key and text alike (a key keeps Katakana and its sound marks as typed, so the
    ``kana`` guard is the same there; once it also took the Han and Hiragana look-alikes Katakana folded to, which
    made the particle へ and the numeral 二 Katakana in a key: review rev18e).
    A phrase ending in a Hangul letter is free at its end: Korean writes its particles and endings onto the word
    (``섹스를``, ``누드가``), so a word boundary there would miss nearly every use in a sentence; its start stays a
    word boundary."""
    visible = _visible(phrase).strip() or phrase.strip() or phrase
    last = "free" if _HANGUL.match(visible[-1]) else _edge_char_kind(visible[-1])
    return _edge_char_kind(visible[0]), last


_NEVER = r"[^\s\S]"   # RE2 that matches nothing


def phrase_pattern(phrases: list[str], kinds: dict[str, tuple[str, str]] | None = None) -> str:
    """One case-insensitive RE2 matching any phrase not embedded in a longer word (matches nothing if empty); each
    end of a phrase is bounded by its kind (``kinds[phrase]``, default :func:`edge_kinds` of the phrase itself).
    ``kinds`` given means ``phrases`` are moderation keys or texts, bounded as the phrases they came from.
    Phrases of the same two kinds share one alternation, so the pattern grows by the phrases' text, not by a guard
    per phrase (RE2 refuses a program past its size limit: :func:`phrase_patterns` cuts long lists)."""
    if not phrases:
        return _NEVER
    groups: dict[tuple[str, str], list[str]] = {}
    for phrase in sorted(phrases, key=lambda p: (-len(p), p)):
        kind = (kinds or {}).get(phrase) or edge_kinds(phrase)
        groups.setdefault(kind, []).append(phrase_body(phrase))
    branches = [f"{_GUARDS[first][0]}(?:{'|'.join(bodies)}){_GUARDS[last][1]}"
                for (first, last), bodies in sorted(groups.items())]
    return "(?i)(?:" + "|".join(branches) + ")"


PATTERN_BYTES = 32_000   # one combined RE2 at most (DuckDB's RE2 refused ~190 kB of Cyrillic phrases)


def phrase_chunks(phrases: list[str], kinds: dict[str, tuple[str, str]] | None = None) -> list[list[str]]:
    """``phrases`` (sorted) cut into consecutive lists whose :func:`phrase_pattern` stays under
    :data:`PATTERN_BYTES` (of UTF-8), so a list of any length compiles; at least one list."""
    guards = 2 * sum(len(before) + len(after) for before, after in _GUARDS.values()) + 64   # every group's, at most
    out, chunk, size = [], [], guards
    for phrase in sorted(phrases):
        body = len(phrase_body(phrase).encode()) + 1
        if chunk and size + body > PATTERN_BYTES:
            out.append(chunk)
            chunk, size = [], guards
        chunk.append(phrase)
        size += body
    out.append(chunk)
    return out


def phrase_patterns(phrases: list[str], kinds: dict[str, tuple[str, str]] | None = None) -> list[str]:
    """:func:`phrase_pattern` of each of :func:`phrase_chunks`: patterns of at most :data:`PATTERN_BYTES`."""
    return [phrase_pattern(chunk, kinds) for chunk in phrase_chunks(phrases, kinds)]


def _moderation_file(home: DataHome, configured: str, default: Path, what: str) -> Path:
    path = home.moderation_list(configured, default)
    if not path.is_file():
        raise FileNotFoundError(f"{what} list {path} does not exist (set CurationConfig to another file)")
    return path


class IngestNotReconciled(RuntimeError):
    """The rankings / images partitions curation reads no longer hold what their ingest accepted."""


SHOWN_MISMATCHES = 5   # (table, day) mismatches named in the message of IngestNotReconciled; the rest counted


SHOWN_STRAYS = 3   # files of a partition folder that its ingest did not write, named per mismatch


def _strays(home: DataHome, table: str, day: str) -> str:
    """The entries of ``table``'s partition folder of ``day`` other than the ingest's ``part-0.parquet``, escaped
    (``ascii``), for the message of :class:`IngestNotReconciled`; '' when there are none."""
    part = home.partition_file(table, day)
    try:
        names = sorted(name for name in os.listdir(part.parent) if name != part.name)
    except OSError:
        return ""
    if not names:
        return ""
    folder = part.parent.relative_to(home.root).as_posix()
    shown = ", ".join(ascii(f"{folder}/{name}") for name in names[:SHOWN_STRAYS])
    more = f" and {len(names) - SHOWN_STRAYS} more" if len(names) > SHOWN_STRAYS else ""
    return f", holding files its ingest did not write: {shown}{more}"


def check_ingest_reconciled(con: duckdb.DuckDBPyConnection, home: DataHome | None = None) -> None:
    """Refuse to curate (:class:`IngestNotReconciled`, one line naming each table and day) when the rows of the
    ``rankings`` / ``images`` views differ, for a day, from what that day's ingest accepted (the sum of its
    ``ingest_files.accepted``), a day has rows but no ingest record (review rev25c), or a day's partition holds one
    key (``ranking_id`` / ``image_uid``) on several rows (review rev32g: the ingest writes a key once a day, so a
    ranking lost and another repeated, a botched restore or merge, kept the accepted count). The ingest checks its
    counts only when it writes a partition; a partition rewritten, truncated, removed or given a stray file
    afterwards would otherwise be curated as it is: a ranking lost there drops out of ``pairs`` and of every
    reconciliation (they count what the partitions hold now), and a row added there is curated unvalidated.

    With ``home``, the message names the files of each such partition folder that its ingest did not write (review
    rev25f); the advised re-ingest removes them (the ingest of a day owns its partition folders)."""
    bad = run_sql(con, "curation_ingest_reconcile").to_pylist()
    if not bad:
        return
    named = []
    for row in bad[:SHOWN_MISMATCHES]:
        accepted = "it has no ingest_files record" if row["accepted"] is None else \
            f"its ingest accepted {row['accepted']}"
        if row["repeated"]:
            key = "ranking_id" if row["table"] == "rankings" else "image_uid"
            accepted += (f", {row['repeated']} of them {'repeats' if row['repeated'] == 1 else 'repeat'} another "
                         f"row's {key} (or {'has' if row['repeated'] == 1 else 'have'} none)")
        strays = "" if home is None else _strays(home, row["table"], row["dt"])
        named.append(f"{row['table']} {row['dt']}: {row['rows']} rows, {accepted}{strays}")
    more = f" (and {len(bad) - SHOWN_MISMATCHES} more)" if len(bad) > SHOWN_MISMATCHES else ""
    days = sorted({row["dt"] for row in bad})
    raise IngestNotReconciled(
        "curation refused: the warehouse partitions do not hold what the ingest accepted (" + "; ".join(named) + more
        + "): a partition was changed, lost rows or gained a file after its ingest; ingest the day again "
        f"(pickapic build --force --from {days[0]} --to {days[-1]}: it also removes the files of the day's "
        "partition folders it did not write) and curate after that")


class DecisionsOutOfDate(RuntimeError):
    """``decisions`` was built from other inputs than those ``build_pairs`` reads now (review rev32g)."""


# what decisions is built from, each an input of its identity (:func:`curation_inputs`); the moderation lists and the
# policy too
INPUT_TABLES = ("rankings", "images", "image_features", "image_rejects")


def curation_inputs(home: DataHome, config: CurationConfig, files: dict[str, list[Path]],
                    lists: dict[str, Path], read: dict[Path, Path] | None = None) -> dict[str, str]:
    """The identity of what the decisions and pairs builds read (``INPUTS_METADATA``): per input, a digest of its
    files' bytes with their paths inside the home (each daily table's partitions, ``duplicate_clusters``), of the
    moderation lists' bytes (by role, not path), and of the output-affecting policy (NSFW classes and threshold,
    the 4-image tie rule, which secret keys the pseudonyms, never the secret). ``build_decisions`` records it and
    ``build_pairs`` refuses a ``decisions`` file recording another one (:class:`DecisionsOutOfDate`): pairs applied
    the decisions of yesterday's warehouse to today's rankings, so a new day's NSFW image or a newly banned user's
    ranking, which had no decision, was published (review rev32g). Bytes, not rows: a partition rewritten with
    the same rows in other bytes counts as changed (one more decisions build), and equal inputs give the same
    digests in any copy of the home (paths are relative), so outputs stay byte-identical.

    ``read`` maps a file's path to the path of the copy the build reads (:func:`_snapshot_inputs`): its bytes are
    digested under the file's own path, so the identity is of exactly what the build reads (review rev32k)."""
    read = read or {}

    def digest(value: object) -> str:
        return hashlib.sha256(json.dumps(value, sort_keys=True).encode("utf-8")).hexdigest()[:32]

    def files_of(paths: list[Path]) -> str:
        return digest([[Path(os.path.relpath(path, home.root)).as_posix(), sha256_file(read.get(path, path))]
                       for path in paths])

    record = {name: files_of(paths) for name, paths in files.items()}
    record["moderation_lists"] = digest({role: sha256_file(read.get(path, path)) for role, path in lists.items()})
    record["policy"] = digest({"nsfw_classes": sorted(set(config.nsfw_classes)),
                               "nsfw_threshold": float(config.nsfw_threshold),
                               "four_image_ties": config.four_image_ties,
                               "pseudonyms": key_check(config.pseudonym_secret)})
    return record


def read_inputs(metadata: dict | None) -> dict:
    """The inputs identity ``decisions`` records (:func:`curation_inputs`) from a Parquet file's key-value
    ``metadata``, or {} (none recorded, or not one)."""
    return _metadata_record(metadata, INPUTS_METADATA)


def _metadata_record(metadata: dict | None, key: bytes) -> dict:
    """The JSON object a Parquet file's key-value ``metadata`` holds under ``key``, or {} (none, or not one)."""
    try:
        record = json.loads((metadata or {}).get(key) or b"null")
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


def check_decisions_current(decisions: Path, inputs: dict[str, str]) -> None:
    """Refuse (:class:`DecisionsOutOfDate`) a ``decisions`` file whose recorded inputs (:func:`read_inputs`) are
    not ``inputs``, naming the inputs that changed: the pairs would apply decisions made for other rankings,
    images, features, clusters, lists or policy (review rev32g)."""
    recorded = read_inputs(pq.read_schema(decisions).metadata)
    if recorded == inputs:
        return
    changed = sorted(name for name in set(recorded) | set(inputs) if recorded.get(name) != inputs.get(name))
    why = ("it records none of its inputs (written by an older version)" if not recorded else
           "its inputs changed since it was built: " + ", ".join(changed))
    raise DecisionsOutOfDate(
        f"pairs refused: decisions ({decisions}) is out of date, {why}; build decisions again and then pairs "
        "(pickapic build, or materialize decisions with pairs; python -m pipelines.curation.decisions builds both)")


# the curation builds' snapshot folders in HOME/.staging/curation (random names): swept when no build holds them
SNAPSHOT_FOLDER_RE = re.compile(r"curation-[A-Za-z0-9_]{1,64}")

# per snapshot folder of a running build, each snapshot file's path -> the input file it pins (:func:`_snapshot_inputs`),
# so an error a query raises names the input, never the snapshot (review rev33a)
_SNAPSHOT_SOURCES: dict[str, dict[str, str]] = {}


def sweep_snapshot_folders(home: DataHome) -> list[str]:
    """Remove the snapshot folders (``.staging/curation/curation-XXXX``, only those names, only folders a build made)
    that no running curation build holds (each holds an exclusive ``flock`` on its own): what a killed build left;
    and a ``.new-curation-XXXX`` a build killed before it held and named its folder left, once an hour old
    (:func:`formats.locks.sweep_scratch_folders`). Returns the names removed."""
    return sweep_scratch_folders(home.curation_snapshots, SNAPSHOT_FOLDER_RE)


def _named_by_inputs(exc: BaseException, folder: Path) -> BaseException:
    """``exc`` with every snapshot file its message names (``folder/000003.parquet``) replaced by the input file it
    pins (review rev33a: DuckDB named a damaged partition by its snapshot, in a folder removed as the error is
    raised), or ``exc`` itself where it names none."""
    message = str(exc)
    root = str(folder)
    if root not in message:
        return exc
    sources = {snap: source for key, names in dict(_SNAPSHOT_SOURCES).items()   # a copy: other threads' builds
               if key == root or key.startswith(root + os.sep) for snap, source in dict(names).items()}
    for snap in sorted(sources, key=len, reverse=True):   # longest first: lists/000000 before 000000
        message = message.replace(snap, sources[snap])
    head, context, tail = message.partition("\n\nLINE ")
    if context and str(folder.parent.parent) in tail:
        message = head                    # DuckDB's excerpt of a view over the snapshot, cut short: no file's name
    try:
        renamed = type(exc)(message)
    except Exception:                     # noqa: BLE001 - an exception type that takes other arguments
        return exc
    return renamed.with_traceback(exc.__traceback__)


@contextlib.contextmanager
def _snapshot_folder(home: DataHome) -> Iterator[Path]:
    """A folder in the data home's ``.staging/curation`` for one build's snapshot of its inputs
    (:func:`_snapshot_inputs`), held (``flock``) while the build runs and removed after
    (:func:`formats.locks.held_scratch_folder`); one a killed build left is removed by the next build
    (:func:`sweep_snapshot_folders`). Not under the disposable ``cache/``: deleting it during a build changes only
    speed (review rev33a). An error raised in the block names the inputs, not their snapshots."""
    _clusters_file(home)                  # a home without its input: refused before anything is made in it
    sweep_snapshot_folders(home)
    with held_scratch_folder(home.curation_snapshots, "curation-") as folder:
        try:
            yield folder
        except Exception as exc:
            renamed = _named_by_inputs(exc, folder)
            if renamed is exc:
                raise
            raise renamed from None
        finally:
            for key in [key for key in tuple(_SNAPSHOT_SOURCES) if key == str(folder)
                        or key.startswith(f"{folder}{os.sep}")]:
                _SNAPSHOT_SOURCES.pop(key, None)


def _clusters_file(home: DataHome) -> Path:
    """``duplicate_clusters``' file, which every curation build reads; FileNotFoundError (one line) where it is not."""
    clusters = home.table_file("duplicate_clusters")
    if not clusters.exists():
        raise FileNotFoundError(f"duplicate_clusters not found at {clusters}: run pipelines.curation.dedup first")
    return clusters


def _snapshot_inputs(folder: Path, paths: list[Path], copy: bool = False) -> dict[Path, Path]:
    """Pin the bytes of ``paths`` in ``folder``: a hard link to each (the warehouse's writers replace a file by
    renaming a new one over it, never writing into it, so the link keeps the bytes it was made on), a copy where
    no link can be made (another file system) or with ``copy`` (the moderation lists, which an operator edits in
    place). The build digests the snapshot and reads it, nothing else, so the inputs' identity
    (:func:`curation_inputs`) is of the very bytes it curates: a partition a concurrent daily run rewrites after
    the snapshot is neither digested nor read (review rev32k: the digest was of one version of a day, the query
    read the next). A link is refused, and the file copied, on another file system and where the kernel forbids
    linking another account's file (EPERM: ``protected_hardlinks``, a group-shared home whose files are not
    group-writable); a copy keeps its file's mode bits. Costs no memory and, linked, no disk; returns each path's
    snapshot. A file listed and removed before its snapshot (a concurrent ingest clearing a stray file from its
    partition folder) is a one-line FileNotFoundError naming it."""
    read: dict[Path, Path] = {}
    sources = _SNAPSHOT_SOURCES.setdefault(str(folder), {})
    for index, path in enumerate(paths):
        snap = folder / f"{index:06d}{path.suffix}"
        sources[str(snap)] = str(path)
        try:
            if not copy:
                try:
                    os.link(path, snap, follow_symlinks=True)
                    read[path] = snap
                    continue
                except OSError as exc:
                    if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EACCES):
                        raise
            shutil.copyfile(path, snap)
            shutil.copymode(path, snap)
        except FileNotFoundError:
            if os.path.lexists(path) or not os.path.isdir(folder):
                raise
            raise FileNotFoundError(f"{path} was removed while the curation build was reading its inputs (a "
                                    "concurrent ingest or prune of its day, or an edit): build again") from None
        read[path] = snap
    return read


def _connect(home: DataHome, config: CurationConfig, snapshot: Path,
             with_decisions: bool = False) -> tuple[duckdb.DuckDBPyConnection, list[str], dict[str, str]]:
    """Register every input view, the moderation lists, pseudonyms and derived views; also return the phrases and
    the inputs' identity (:func:`curation_inputs`). Every input is read from its snapshot in the folder
    ``snapshot`` (:func:`_snapshot_inputs`), which the identity digests: what is curated is what is identified
    (review rev32k). With ``with_decisions``, a ``decisions`` file recording other inputs is refused
    (:func:`check_decisions_current`); the caller holds the curation lock, so no build replaces it after."""
    clusters = _clusters_file(home)
    files = {name: home.table_files(name) for name in INPUT_TABLES}
    files["duplicate_clusters"] = [clusters]
    ingest_files = home.table_files("ingest_files")
    if with_decisions:
        decisions = home.table_file("decisions")
        if not decisions.exists():
            raise FileNotFoundError(f"decisions not found at {decisions}: run build_decisions first")
    lists = {"banned_users": _moderation_file(home, config.banned_users_file, home.banned_users_file,
                                              "banned users"),
             "nsfw_phrases": _moderation_file(home, config.phrases_file, home.nsfw_phrases_file, "NSFW phrase")}
    read = _snapshot_inputs(snapshot, [path for paths in files.values() for path in paths] + ingest_files)
    (snapshot / "lists").mkdir()
    lists_read = _snapshot_inputs(snapshot / "lists", list(lists.values()), copy=True)
    read.update(lists_read)
    views: dict[str, object] = {
        **{name: [read[path] for path in files[name]] for name in INPUT_TABLES},
        "ingest_files": [read[path] for path in ingest_files],
        "duplicate_clusters": read[clusters],
    }
    if with_decisions:
        views["decisions"] = decisions
    con = connect(views, threads=config.threads or None)
    try:
        check_ingest_reconciled(con, home)
        inputs = curation_inputs(home, config, files, lists, read)
        if with_decisions:
            check_decisions_current(decisions, inputs)
    except BaseException:
        con.close()
        raise
    banned = read_id_list(lists_read[lists["banned_users"]], lists["banned_users"])
    phrases = read_phrases(lists_read[lists["nsfw_phrases"]], lists["nsfw_phrases"])
    con.register("banned_users", pa.table({"user_id": pa.array(banned, pa.int64())}))
    user_ids = [row[0] for row in con.sql("SELECT DISTINCT user_id FROM rankings ORDER BY 1").fetchall()]
    con.register("user_pseudonyms", pseudonym_table(user_ids, config.pseudonym_secret))
    con.register("model_names", pa.table({
        "model_id": pa.array(sorted(MODEL_SHORT_NAMES), pa.string()),
        "short_name": pa.array([MODEL_SHORT_NAMES[k] for k in sorted(MODEL_SHORT_NAMES)], pa.string()),
    }))
    con.register("ranking_base", run_sql(con, "curation_rankings"))
    con.register("image_base", run_sql(con, "curation_images"))
    con.register("candidate_pairs", run_sql(con, "curation_candidate_pairs",
                                            {"four_image_ties": config.four_image_ties}))
    return con, phrases, inputs


def _is_words(phrase: str) -> bool:
    """Whether ``phrase`` (NFKC) holds no punctuation (P*) nor symbol (S*: emoji too), which the key turns into
    spaces: such a phrase is matched by key, any other on its moderation text (symbols kept)."""
    return not any(unicodedata.category(ch)[0] in "PS" for ch in unicodedata.normalize("NFKC", phrase))


def body_pattern(phrases: list[str]) -> str:
    """The case-insensitive RE2 of ``phrases``' bodies without their guards (matches nothing if empty): it
    matches wherever :func:`phrase_pattern` of the same phrases does, and also inside longer words. Cheap to
    compile (~0.5 ms against ~7 ms for a guarded pattern, whose Unicode classes dominate)."""
    if not phrases:
        return _NEVER
    return "(?i)(?:" + "|".join(phrase_body(p) for p in sorted(phrases, key=lambda p: (-len(p), p))) + ")"


# RE2 class of the ASCII characters that are no letter, digit or underscore, and of the common non-ASCII spaces and
# the ideographic comma and full stop: a neighbour every guard of :data:`_GUARDS` takes as a boundary, whatever the
# phrase's kind (tests/unit/test_fix38j.py checks each character against each guard)
_PLAIN_EDGE = (r"[\x00-\x2F\x3A-\x40\x5B-\x5E\x60\x7B-\x7F\x{A0}\x{2000}-\x{200A}\x{2028}\x{2029}\x{202F}\x{205F}"
               r"\x{3000}-\x{3002}\x{FF0C}]")


def plain_word_pattern(phrases: list[str]) -> str:
    """The case-insensitive RE2 of ``phrases``' bodies between spaces, ASCII punctuation or the value's ends (matches
    nothing if empty): wherever it matches, :func:`phrase_pattern` of the same phrases matches too, whatever their
    kinds (each guard takes such a neighbour as a boundary: :data:`_PLAIN_EDGE`); it misses a phrase next to any
    other character, which only the guarded pattern decides. As cheap to compile as :func:`body_pattern` (no
    Unicode class)."""
    if not phrases:
        return _NEVER
    return f"(?i)(?:^|{_PLAIN_EDGE}){body_pattern(phrases).removeprefix('(?i)')}(?:$|{_PLAIN_EDGE})"


def _matching(con: duckdb.DuckDBPyConnection, values: pa.ChunkedArray, left: str, right: str) -> list[pa.ChunkedArray]:
    """The ``values`` (distinct) that the ``left`` RE2 matches and those ``right`` matches."""
    con.register("phrase_values", pa.table({"value": values}))
    table = run_sql(con, "curation_phrase_split", {"left": left, "right": right})
    return [table.filter(pc.fill_null(table[side], False))["value"] for side in ("left", "right")]


def _isin(values: pa.ChunkedArray, among: pa.ChunkedArray) -> pa.ChunkedArray:
    """Whether each of ``values`` is one of ``among`` (a null being one of a set holding a null), tested on
    ``among`` as it is: no Python copy of the set (fix39a: each call copied it into a Python list, up to six a split
    of :func:`_phrase_values`), one lookup however many chunks it has (fix39f, as review rev39c measured: 0.39 s for
    1.5M values where one lookup a chunk, or-ed, took 0.56-0.64 s)."""
    return pc.is_in(values, value_set=among)


def _phrase_values(con: duckdb.DuckDBPyConnection, values: list[str], elements: list[str],
                   kinds: dict[str, tuple[str, str]] | None) -> dict[str, list[str]]:
    """For each of ``elements`` (phrases, keys or texts, bounded by ``kinds``), the ``values`` its own
    :func:`phrase_pattern` matches, found by group testing: each part of :func:`phrase_chunks` is tested on every
    value by its guarded pattern, a part that matched is cut in halves, each tested by its unguarded bodies
    (:func:`body_pattern`) only on the values its parent matched, down to single elements; each element is then
    tested by its own guarded pattern on the values its body occurs in. Where both halves' bodies occur in a value,
    the bodies cannot tell which half holds what its parent matched: the halves are first tested there by their
    plain words (:func:`plain_word_pattern`, as cheap as bodies: a half so matched holds an element there), and
    only the halves left in doubt by their guarded patterns, on the values left in doubt (review rev38b); each half
    goes on with the values only its body occurs in and those its plain words or guarded pattern matched; an
    element is decided on those. An alternation matches exactly when one of its bodies does, a guarded match holds
    its body, a plain-word match is a guarded match, and a guarded alternation matches exactly when one of its
    elements' guarded patterns does (a search: the neighbours a guard consumes do not matter), so the result is
    that of testing every element's guarded pattern on every value. The guarded RE2s (~7 ms to compile each,
    slower to scan) number: one a part; one for each element whose body occurs in a value where no other
    element's does (a list of 4,000 phrases of which 3 hit: a few dozen cheap queries and a few guarded ones);
    where bodies of both halves occur, at most two a split, and none for a half whose bodies occur as plain words
    there. So a value holding every listed phrase as a plain word (a pasted list) costs the part's pattern only
    (fix37g: two a split, 1,999 at 1,000 phrases), and one stuffing every listed phrase inside longer words
    (``xabcdefx``) about one a level for each element present as a plain word, two if it is glued to other
    characters (before fix37g one for every stuffed element: 0.12 s a prompt at 1,000 phrases, review rev37g)."""
    found: dict[str, list[str]] = {}
    if not elements or not values:
        return found
    everything = pa.chunked_array([pa.array(values, pa.string())])
    # (candidates, one or two groups, guarded): each part first by its guarded pattern, so a list none of whose
    # phrases occurs as a word costs one query a part pair (review rev18c: phrases found only inside words); halves
    # whose bodies occur in the same values are told apart there by their guarded patterns (review rev37g)
    tests = [(everything, chunks, True) for chunks in _pairs(phrase_chunks(elements, kinds))]
    while tests:
        candidates, groups, guarded = tests.pop()
        pattern = (lambda group: phrase_pattern(group, kinds)) if guarded else body_pattern
        con.register("phrase_values", pa.table({"value": candidates}))
        table = run_sql(con, "curation_phrase_split", {
            "left": pattern(groups[0]), "right": pattern(groups[1]) if len(groups) > 1 else _NEVER})
        left, right = (pc.fill_null(table[side], False) for side in ("left", "right"))
        decided = [pa.chunked_array([], pa.string())] * 2     # values a half's own guarded pattern matched
        if not guarded and len(groups) == 2:
            both = pc.and_(left, right)
            if pc.any(both).as_py():   # both halves' bodies occur in these: their guarded patterns tell which holds
                shared = table.filter(both)["value"]
                # a half whose bodies occur there as plain words holds a phrase there: no guarded pattern needed
                # (review rev38b: a prompt pasting the list cost two guarded patterns a phrase); the rest are checked
                decided = _matching(con, shared, plain_word_pattern(groups[0]), plain_word_pattern(groups[1]))
                doubt = shared.filter(pc.invert(pc.and_(*(_isin(shared, plain) for plain in decided))))
                if len(doubt):
                    checked = _matching(con, doubt, *(
                        phrase_pattern(group, kinds) if not pc.all(_isin(doubt, plain)).as_py() else _NEVER
                        for group, plain in zip(groups, decided)))
                    decided = [pa.chunked_array(plain.chunks + more.filter(pc.invert(_isin(more, plain))).chunks,
                                                pa.string()) for plain, more in zip(decided, checked)]
                left, right = pc.and_not(left, both), pc.and_not(right, both)
        for group, hit, sure in zip(groups, (left, right), decided):
            matched = table.filter(hit)["value"]     # its pattern matched (a body: guarded one not tested)
            if guarded and len(group) == 1:          # its own guarded pattern decided
                if len(matched):
                    found.setdefault(group[0], []).extend(matched.to_pylist())
            elif len(group) == 1:                    # its body occurs: its own guarded pattern decides
                if len(sure):
                    found.setdefault(group[0], []).extend(sure.to_pylist())
                if len(matched):
                    tests.append((matched, [group], True))
            elif len(matched) or len(sure):
                half = len(group) // 2
                values = pa.chunked_array(matched.chunks + sure.chunks, pa.string())
                tests.append((values, [group[:half], group[half:]], False))
    con.unregister("phrase_values")
    return found


def _pairs(items: list[list[str]]) -> list[list[list[str]]]:
    return [items[i:i + 2] for i in range(0, len(items), 2)]


def phrase_matches(con: duckdb.DuckDBPyConnection, phrases: list[str]) -> pa.Table:
    """(ranking_id, phrase) for every prompt of ``ranking_base`` holding a moderation phrase.

    A prompt holds a phrase when the phrase's word-bounded, case-insensitive RE2 matches the prompt
    as typed, or, for a phrase of words only (no punctuation or symbol, which the key turns into
    spaces: ``18+`` would match any ``18``), when the phrase's
    :func:`~pipelines.splits.assign.moderation_key` matches (the same way) the prompt's key:
    zero-width characters, look-alike letters (Cyrillic ``е``), fullwidth or styled letters,
    non-ASCII spaces and punctuation between words do not hide such a phrase. A phrase with
    punctuation or a symbol (an emoji) is matched instead on :func:`~pipelines.splits.assign.moderation_text`
    of both, which keeps the symbols: zero-width characters, look-alike and fullwidth letters and
    keycap digits do not hide it either.
    Each distinct prompt (and each distinct key and text) is tested once, not each ranking, and the phrases
    are found by group testing (:func:`_phrase_values`); every pattern is a constant of its query (DuckDB
    compiles a pattern taken from a joined column once per row: 30 s at 1M rankings instead of 0.2 s)."""
    keys = {phrase: moderation_key(phrase) if _is_words(phrase) else "" for phrase in phrases}
    texts = {phrase: moderation_text(phrase) for phrase in phrases if not _is_words(phrase)}
    prompts = sorted(row[0] for row in con.sql(
        "SELECT DISTINCT prompt FROM ranking_base WHERE prompt IS NOT NULL").fetchall())
    found: set[tuple[str, str]] = set()
    for prompt_phrases in _phrase_values(con, prompts, sorted(set(phrases)), None).items():
        found.update((prompt, prompt_phrases[0]) for prompt in prompt_phrases[1])
    for form, by_phrase in ((moderation_key, keys), (moderation_text, texts)):
        # a key or text is bounded as the phrase it came from is (edge_kinds); two phrases of one key or text but of
        # other kinds (ロリ and 口リ) are tested in turn, so what a phrase matches never depends on what else is listed
        phrases_of: dict[tuple[str, tuple[str, str]], list[str]] = {}
        for phrase, element in sorted(by_phrase.items()):
            if element:
                phrases_of.setdefault((element, edge_kinds(phrase)), []).append(phrase)
        if not phrases_of:
            continue
        layers: list[dict[str, tuple[str, str]]] = []
        for element, kind in sorted(phrases_of):
            layer = next((layer for layer in layers if element not in layer), None)
            if layer is None:
                layers.append(layer := {})
            layer[element] = kind
        prompts_of: dict[str, list[str]] = {}
        for prompt in prompts:
            prompts_of.setdefault(form(prompt), []).append(prompt)
        for kinds in layers:
            for element, values in _phrase_values(con, sorted(prompts_of), sorted(kinds), kinds).items():
                found.update((prompt, phrase) for value in values for prompt in prompts_of[value]
                             for phrase in phrases_of[(element, kinds[element])])
    ordered = sorted(found)
    con.register("phrase_prompt_matches", pa.table({
        "prompt": pa.array([prompt for prompt, _ in ordered], pa.string()),
        "phrase": pa.array([phrase for _, phrase in ordered], pa.string())}))
    table = run_sql(con, "curation_phrase_matches")
    con.unregister("phrase_prompt_matches")
    schema = pa.schema([("ranking_id", pa.int64()), ("phrase", pa.string())])
    return table.cast(schema)


def policy_record(home: DataHome, config: CurationConfig) -> bytes:
    """What ``decisions`` records of the policy it was built with (``POLICY_METADATA``): the NSFW classes and
    threshold, and the settings duplicate_clusters records it was clustered with (``dedup``; null for a file
    written before they were recorded). The publish states them in the version's data card (review rev28b: the
    card said 0.5 and 6 whatever the home was built with); the secret is never recorded."""
    recorded = (pq.read_schema(home.table_file("duplicate_clusters")).metadata or {}).get(DEDUP_METADATA)
    try:
        dedup = json.loads(recorded) if recorded else None
    except ValueError:
        dedup = None
    record = {"nsfw_classes": policy_classes(config), "nsfw_threshold": float(config.nsfw_threshold),
              "four_image_ties": config.four_image_ties, "dedup": dedup if isinstance(dedup, dict) else None}
    return json.dumps(record, sort_keys=True).encode("utf-8")


def policy_classes(config: CurationConfig) -> list[str]:
    """The NSFW classes of ``config`` in their canonical order, each once (``knob(form="set")``): what decisions
    records and the data card lists, whatever order the settings name them in (review rev32i: the same classes in
    another order made a new version whose card listed them so)."""
    return list(knobs("curation")["nsfw_classes"].canonical(config.nsfw_classes))


def read_policy(metadata: dict | None) -> dict:
    """The policy ``decisions`` records (:func:`policy_record`) from a Parquet file's key-value ``metadata``, or {}
    (none recorded, or not one)."""
    return _metadata_record(metadata, POLICY_METADATA)


def build_decisions(home: DataHome, config: CurationConfig = CurationConfig()) -> CurationReport:
    """Write ``decisions``: every drop with its reason and JSON evidence. It reads, and records the identity of, a
    snapshot of its inputs (:func:`_snapshot_inputs`, review rev32k)."""
    with _snapshot_folder(home) as snapshot:
        con, phrases, inputs = _connect(home, config, snapshot)
        con.register("phrase_matches", phrase_matches(con, phrases))
        image_decisions = run_sql(con, "curation_image_decisions", {
            "nsfw_classes": policy_classes(config), "nsfw_threshold": float(config.nsfw_threshold),
            "shown_flagged": SHOWN_FLAGGED})
        con.register("image_decisions", image_decisions)
        with writing_table(home, "decisions") as final:   # under the curation lock (review rev29b)
            table = run_to_parquet(con, "curation_decisions", "decisions", final, {
                "four_image_ties": config.four_image_ties}, {
                    POLICY_METADATA: policy_record(home, config),
                    INPUTS_METADATA: json.dumps(inputs, sort_keys=True).encode("utf-8")})
        con.register("decisions", table)
        by_reason = con.sql(
            "SELECT subject, reason, count(*) FROM decisions GROUP BY ALL ORDER BY subject, reason").fetchall()
        rankings, exports = con.sql("SELECT count(DISTINCT ranking_id), count(*) FROM rankings").fetchall()[0]
        dropped = con.sql(
            "SELECT count(DISTINCT subject_id) FROM decisions WHERE subject = 'ranking'").fetchall()[0][0]
        con.close()
    return CurationReport(rankings=rankings, ranking_exports=exports, rankings_dropped=dropped,
                          decisions=table.num_rows, by_reason=[tuple(r) for r in by_reason], config=public_fields(config))


def build_pairs(home: DataHome, config: CurationConfig = CurationConfig()) -> PairsReport:
    """Write ``pairs`` from the candidate pairs and the ``decisions`` table; reconcile against rankings. A
    ``decisions`` file built from other inputs (rankings, images, features, clusters, moderation lists or policy
    changed since) is refused, :class:`DecisionsOutOfDate` (review rev32g). Both the check and the query are of
    one snapshot of the inputs (:func:`_snapshot_inputs`), under the curation lock, so neither a day a concurrent
    daily run rewrites nor a ``decisions`` another build writes reaches pairs unchecked (review rev32k)."""
    # under the curation lock (review rev29b) from before the check: decisions cannot change under it
    with writing_table(home, "pairs") as final, _snapshot_folder(home) as snapshot:
        con, _, _ = _connect(home, config, snapshot, with_decisions=True)
        # which secret the user_id pseudonyms are under, for the splits stage's ledger check (never the secret)
        table = run_to_parquet(con, "curation_pairs", "pairs", final, metadata={
            KEY_CHECK_METADATA: key_check(config.pseudonym_secret).encode("ascii")})
        con.register("pairs", table)
        row = run_sql(con, "curation_reconcile").to_pylist()[0]
        models = con.sql("""
            SELECT model, count(*) FROM (SELECT model_0 AS model FROM pairs UNION ALL SELECT model_1 FROM pairs)
            GROUP BY 1 ORDER BY 2 DESC, 1""").fetchall()
        con.close()
    return PairsReport(
        pairs=table.num_rows, rankings=row["rankings"], rankings_with_pairs=row["with_pairs"],
        rankings_with_decision=row["with_decision"], rankings_unaccounted=row["unaccounted"],
        ties=row["ties"], four_image_pairs=row["four_image_pairs"], are_different=row["are_different"],
        models=[tuple(m) for m in models], exports_unaccounted=row["unaccounted_exports"],
    )


def main(argv: list[str] | None = None) -> None:
    """``python -m pipelines.curation.decisions --home DIR``: build decisions then pairs and print both reports."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--home", default=None)
    add_flags(parser, "curation")
    args = parser.parse_args(argv)
    home = DataHome.at(args.home)
    config = stage_config(home.root, "curation", args)
    print(json.dumps(build_decisions(home, config).metadata(), indent=2))
    print(json.dumps(build_pairs(home, config).metadata(), indent=2))


if __name__ == "__main__":
    import sys

    from formats.commands import run_command

    sys.exit(run_command("python -m pipelines.curation.decisions", main))
