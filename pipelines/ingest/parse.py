"""Raw app-export lines: validate each line into a row or a reject.

This module holds the per-line rules of the daily ingest (listed below; the per-file rules are in
``pipelines.ingest.reader`` and ``pipelines.ingest.references``; the bytes and line cutting in
``pipelines.ingest.lines``). It does no I/O: ``LineParser`` turns one line into a tuple of typed values
or raises ``Reject(reason, detail)``, and ``split_prompt`` applies the prompt transformations.

Line rules, checked in this order (the first failing check is the line's reason):

- ``line_too_long``: more bytes than ``max_line_bytes`` (default 1 MiB); never decoded.
- ``invalid_utf8``: the line is not valid UTF-8, or a string holds a lone surrogate escape (``\\ud800``).
- ``malformed_json``: not parseable as JSON (also a blank line, a duplicate key, nesting too deep). An integer of
  more digits than Python converts from text (4,300) is a number as written (``_parse_big_int``), judged by its
  field like ``1e400`` (review rev33i: it was malformed_json, keyless).
- ``invalid_value`` for ``NaN``/``Infinity``/``-Infinity`` tokens (not JSON).
- ``not_an_object``: a JSON array, string, number, boolean or null.
- ``missing_field``: a column of the table is absent, or null where the column is required.
- ``unexpected_field``: a key that is not a column of the table (the detail names the first ten in sorted
  order, then how many more).
- ``wrong_type``: a string/boolean/fractional number where an integer is expected, a non-number
  where a number is expected, a non-string where a string is expected. A number written with no
  fraction (``5.0``, ``5e0``) is accepted as the integer 5. Judged on the number as written, never on
  its rounded binary double: ``4503599627370497.5`` is fractional (``wrong_type``) although its double
  is ``4503599627370498.0``, and ``9007199254740993.0`` is the integer 2^53 + 1 (``invalid_value`` for
  an id), not 2^53 (review rev25c). ``1e400`` (beyond a double) is an integer outside the range
  (``invalid_value`` naming ``1e400``), not the double ``inf`` (review rev25f).
- ``invalid_value``: ids (``user_id``, ``image_id``, ``ranking_id``, ``download_id``) outside
  [1, ``max_id`` = 2^53]; ``seed`` outside [0, 2^63-1]; ``gs`` outside [``min_gs``, ``max_gs``] = [0, 50]
  (also a number that overflows to infinity); ``steps`` outside [1, 1000]; ``idx`` outside [0, 999] or
  not below ``num_generated``; ``num_generated`` outside [1, 1000]; ``model_id``/``scheduler_cls``
  empty or longer than ``max_name_chars`` (256).
- ``bad_timestamp``: ``created_at`` not exactly ``YYYY-MM-DD HH:MM:SS`` with an optional 1-6 digit
  fraction (naive UTC, ASCII digits), not a real calendar time, before ``earliest_created_at``
  (2022-01-01), or at/after the end of the partition day plus ``future_tolerance_days`` (2). Rows from
  earlier days (late arrivals) are accepted.
- ``invalid_uid``: an image uid that is not a canonical lowercase UUID (8-4-4-4-12 hex digits); this
  rejects path tricks (``../``, ``/``, ``\\``, NUL), so ``blob_path`` always stays in ``raw/images/``.
- ``prompt_too_long``: ``prompt``/``negative_prompt`` longer than ``max_prompt_chars`` (2000) characters.
- ``control_characters``: a C0/C1 control character (tab and newline included), a bidi embedding,
  override, isolate or mark (U+061C, U+200E/F, U+202A-E, U+2066-9), U+2028/9 or U+FEFF in a prompt,
  ``model_id`` or ``scheduler_cls``.
- ``empty_prompt``: a required ``prompt`` (images, rankings) that shows nothing once cleaned as
  ``split_prompt`` cleans it: only blanks, only ``[bracketed]`` negative text (``"[ugly]"``,
  ``"[[x]]"``), or nothing (review rev25c: such rows were accepted with prompt ``''``); blanks include
  the characters that render as nothing by the prompt key's definition (``pipelines.invisibles``: zero-width
  space, word joiner, Hangul fillers, Braille blank; review rev25f).
- ``invalid_ranking``: ``image_2_uid``/``image_3_uid`` not both set or both null, the same image
  shown twice, or ``best_image_uid`` neither ``'none'`` nor one of the shown uids.

A UTF-8 byte order mark (``EF BB BF``) at the very start of a file is not part of its first line
(``without_bom``, as ``utf-8-sig`` readers do); anywhere else it is a ``malformed_json`` line whose
detail names it. A rejected line that is a JSON object with a valid primary key carries that key
(``Reject.key``): the reader counts it as one more version of the key (``conflicting_primary_key``). So does a
line refused in the decode for a ``NaN``/``Infinity`` constant or a member named twice, its key read again
leniently (``LineParser.decoded_key``) when it reads one way (review rev25f), and since review rev33i one nested too
deeply for the decoder (read without recursion, ``_shallow_members``) or not UTF-8 (read with U+FFFD for each invalid
byte, ``LineParser.undecodable_key``), and since review rev34a one over ``max_line_bytes`` (never decoded: its top-level
key members read from its bytes as they stream, ``lines.MemberScan``, ``LineParser.overlong_key``).
"""
from __future__ import annotations

import datetime as dt
import hashlib
import heapq
import json
import json.scanner
import math
import re
from decimal import Decimal
from typing import Callable

from pipelines.ingest.lines import RAW_TEXT_BYTES, OverlongLine
from pipelines.invisibles import renders_empty
from schemas.raw import PRIMARY_KEYS

# Quarantine reasons, in the order the checks run (the first failing check names the line).
LINE_TOO_LONG = "line_too_long"
INVALID_UTF8 = "invalid_utf8"
MALFORMED_JSON = "malformed_json"
NOT_AN_OBJECT = "not_an_object"
MISSING_FIELD = "missing_field"
UNEXPECTED_FIELD = "unexpected_field"
LISTED_KEYS = 10   # unexpected keys named in an unexpected_field detail (then how many more)
WRONG_TYPE = "wrong_type"
INVALID_VALUE = "invalid_value"
BAD_TIMESTAMP = "bad_timestamp"
INVALID_UID = "invalid_uid"
PROMPT_TOO_LONG = "prompt_too_long"
CONTROL_CHARACTERS = "control_characters"
EMPTY_PROMPT = "empty_prompt"
INVALID_RANKING = "invalid_ranking"
DUPLICATE_ROW = "duplicate_row"
CONFLICTING_PRIMARY_KEY = "conflicting_primary_key"
UNKNOWN_IMAGE_REFERENCE = "unknown_image_reference"
MISSING_FILE = "missing_file"
UNREADABLE_FILE = "unreadable_file"

LINE_REASONS = (
    LINE_TOO_LONG, INVALID_UTF8, MALFORMED_JSON, NOT_AN_OBJECT, MISSING_FIELD, UNEXPECTED_FIELD,
    WRONG_TYPE, INVALID_VALUE, BAD_TIMESTAMP, INVALID_UID, PROMPT_TOO_LONG, CONTROL_CHARACTERS,
    EMPTY_PROMPT, INVALID_RANKING, DUPLICATE_ROW, CONFLICTING_PRIMARY_KEY, UNKNOWN_IMAGE_REFERENCE,
)
FILE_REASONS = (MISSING_FILE, UNREADABLE_FILE)
REASONS = LINE_REASONS + FILE_REASONS

TIE = "none"
SINGLE_QUOTE_TOKEN = "[single_quote]"

UID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
TS_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,6})?")
# C0 and C1 controls (tab and newline included: a caption is one line), bidi embeddings/overrides/
# isolates and marks, line/paragraph separators, BOM.
CONTROL_RE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ufeff]")
# a [...] pair with the blanks around it; the blanks before it matched only from the start of their run (the
# lookbehind), so a long run of blanks is scanned once, not once per blank (linear, review rev25f); the same matches
# as r"\s*\[([^\[\]]*)\]\s*" (a scan resumes after a match's trailing blanks, never inside a run)
BRACKET_RE = re.compile(r"(?:(?<!\s)\s+)?\[([^\[\]]*)\]\s*")
_BRACKET_CHAR_RE = re.compile(r"[\[\]]")
BOM = b"\xef\xbb\xbf"   # UTF-8 byte order mark: skipped at the very start of a file (``without_bom``)


def without_bom(data: bytes) -> bytes:
    """The first line of a file without a leading UTF-8 byte order mark (``utf-8-sig``); call it for line 1 only."""
    return data[3:] if data[:3] == BOM else data


class Reject(Exception):
    """A line that cannot be ingested: ``reason`` is one of ``REASONS``; ``detail`` names the value;
    ``key``: the line's primary key when it is a JSON object whose key field is valid (else None)."""

    key = None
    readable = False   # True: a NaN constant, a duplicated member or nesting too deep failed the decode; the key may
    # still be read (``LineParser.decoded_key``)

    def __init__(self, reason: str, detail: str):
        super().__init__(reason, detail)   # formatted only when shown: millions are raised on hostile days
        self.reason = reason
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}"


def raw_fields(data: bytes | OverlongLine, table: str | None = None) -> tuple[str | None, int, str]:
    """(raw_text first 64 KiB as lossy UTF-8, raw_length, raw_sha256) of one line; ``table``: the text masked as
    that table's quarantine stores it (:func:`mask_line`: no email or name), the length and sha256 still those of
    the line as written."""
    if isinstance(data, OverlongLine):
        text, length, sha = data.prefix[:RAW_TEXT_BYTES].decode("utf-8", "replace"), data.length, data.sha256
    else:
        text, length, sha = data[:RAW_TEXT_BYTES].decode("utf-8", "replace"), len(data), hashlib.sha256(data).hexdigest()
    return (mask_line(table, text) if table is not None else text), length, sha


# Raw tables whose lines hold personal data (emails, names): it never leaves the raw zone, so their quarantined
# lines' raw_text is masked (``redact_personal``) and a wrong-typed value of these fields is not shown in a detail.
PERSONAL_FIELDS: dict[str, frozenset[str]] = {"users": frozenset({"email", "name"})}
REDACTED = "[redacted]"
# Strings a users line's raw_text keeps as written: its field names, and ids / times (digits and time punctuation,
# never an email or a name). Every other string and every bare word that is not a JSON number or literal is masked.
_KEPT_STRINGS = frozenset({"user_id", "created_at", "email", "name"})
_HARMLESS_RE = re.compile(r"[0-9 :.+\-TZ]{0,40}")
_NUMBER_RE = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
# a string (closed, or cut by the end of the text), a bare word, a run of JSON punctuation and blanks
_TOKEN_RE = re.compile(r'"(?:[^"\\]|\\.)*(?:"|\\?\Z)|[^\s{}\[\]:,"]+|[\s{}\[\]:,]+', re.DOTALL)


PERSONAL_TEXT_CHARS = 4096   # the part of a users line its masked raw_text shows (a users line is ~150 bytes)


def _kept_string(token: str) -> bool:
    if len(token) < 2 or token[-1] != '"' or len(token) > 200:
        return False      # a string the end of the text cut, or too long to be a field name, an id or a time
    value = token[1:-1]
    if "\\" in value:
        try:
            value = json.loads(token)
        except ValueError:
            return False
    return value in _KEPT_STRINGS or _HARMLESS_RE.fullmatch(value) is not None


def _redacted_token(match: re.Match) -> str:
    token = match.group()
    first = token[0]
    if first == '"':
        return token if _kept_string(token) else f'"{REDACTED}"'
    if first.isspace() or first in "{}[]:,":
        return token
    return token if token in ("true", "false", "null") or _NUMBER_RE.fullmatch(token) else REDACTED


def redact_personal(text: str) -> str:
    """A quarantined line of a table with personal data (``PERSONAL_FIELDS``), masked for the warehouse: every
    JSON string except the field names and ids / times (digits and ``-:.+TZ`` only) becomes ``"[redacted]"``, every
    bare word that is not a JSON number, ``true``, ``false`` or ``null`` becomes ``[redacted]``; blanks, JSON
    punctuation and numbers stay. Works on any text, JSON or not (a line too broken to parse, cut, not UTF-8), so
    the email and name never reach the quarantine; deterministic. Only the first ``PERSONAL_TEXT_CHARS`` characters
    are shown (masking costs a step per string: a hostile line of 64 KiB of tiny strings stays cheap); at most
    ``RAW_TEXT_BYTES`` characters. The line as written stays in the raw zone, found by the row's file, line_number
    and raw_sha256."""
    return _TOKEN_RE.sub(_redacted_token, text[:PERSONAL_TEXT_CHARS])[:RAW_TEXT_BYTES]


# ---------------------------------------------------------------------------------------------
# Field kinds
ID, INT, FLOAT, TS, UID, PROMPT, NAME, FREE = "id", "int", "float", "ts", "uid", "prompt", "name", "free"

# name, kind, required, (low, high) for numbers
TABLE_FIELDS: dict[str, tuple[tuple[str, str, bool, tuple | None], ...]] = {
    "users": (
        ("user_id", ID, True, None),
        ("created_at", TS, True, None),
        ("email", FREE, False, None),
        ("name", FREE, False, None),
    ),
    "images": (
        ("image_id", ID, True, None),
        ("created_at", TS, True, None),
        ("image_uid", UID, True, None),
        ("user_id", ID, True, None),
        ("prompt", PROMPT, True, None),
        ("negative_prompt", PROMPT, False, None),
        ("seed", INT, False, (0, 2**63 - 1)),
        ("gs", FLOAT, False, None),  # range from the config
        ("steps", INT, False, (1, 1000)),
        ("idx", INT, False, (0, 999)),
        ("num_generated", INT, False, (1, 1000)),
        ("scheduler_cls", NAME, False, None),
        ("model_id", NAME, True, None),
    ),
    "rankings": (
        ("ranking_id", ID, True, None),
        ("created_at", TS, True, None),
        ("user_id", ID, True, None),
        ("image_0_uid", UID, True, None),
        ("image_1_uid", UID, True, None),
        ("image_2_uid", UID, False, None),
        ("image_3_uid", UID, False, None),
        ("best_image_uid", FREE, True, None),  # 'none' or one of the shown uids (checked per row)
        ("prompt", PROMPT, True, None),
    ),
    "downloads": (
        ("download_id", ID, True, None),
        ("created_at", TS, True, None),
        ("user_id", ID, True, None),
        ("image_uid", UID, True, None),
        ("prompt", PROMPT, False, None),
    ),
}


# --- masking the quarantined lines of the other tables (review rev25h) -------------------------------------------
# An email or a name may sit in any table's line (an export that joined the user row into rankings: "email",
# "name"; a downloads line with "user_email"; an email typed into user_id). A quarantined line of images,
# rankings or downloads keeps, as written: its JSON punctuation, blanks, numbers and literals; the keys that are
# lowercase identifiers; the values of its table's own fields read as the field reads them: a prompt, model_id or
# scheduler_cls as written with any email-shaped run (``local@domain``) masked, an id, time, uid or
# best_image_uid only when it is id / time / UUID shaped (else masked). Every other string (a value under a key
# the table does not have, inside a nested object, of a line that is not an object) and every other bare word
# reads ``[redacted]``. Deterministic, and it works on any text, a line too broken to parse included.
# An email-shaped run: a run of characters that are not blanks, quotes, brackets or ``,;:@\\`` (the class C), an
# ``@``, another such run. Linear (review rev25k): the negative lookbehind starts a match only at the first
# character of a run, so a long value without ``@`` is scanned once, not once per start position (the pattern
# ``C+@C+`` alone backtracked from every position: quadratic, seconds per 64 KiB prompt). It finds exactly what
# ``C+@C+`` found: a leftmost match always starts at a run's first character. ENCODED_EMAIL_RE is the same run
# with the ``@`` written another way, masked after EMAIL_RE: percent-encoded (``%40``, ``%2540``, as a URL's
# query carries it), an HTML character reference (``&#64;``, ``&#x40;``, ``&commat;``, also after ``&amp;``, as a
# page copied into a prompt carries it) or a look-alike that NFKC reads as ``@`` (the fullwidth ``＠`` U+FF20, the
# small ``﹫`` U+FE6B). Also linear: a lazy run ended by one of those forms, started only at a run's first character.
_EMAIL_CHAR = r"[^\s\"'<>()\[\]{},;:@\\]"
EMAIL_RE = re.compile(rf"(?<!{_EMAIL_CHAR}){_EMAIL_CHAR}+@{_EMAIL_CHAR}+")
_OTHER_AT = r"(?:%(?:25)*40|&(?:amp;)*(?:#0*64;|#[xX]0*40;|commat;)|[\uff20\ufe6b])"
ENCODED_EMAIL_RE = re.compile(rf"(?<!{_EMAIL_CHAR}){_EMAIL_CHAR}+?{_OTHER_AT}{_EMAIL_CHAR}+", re.IGNORECASE)
_OTHER_AT_HINTS = ("%", "&", "\uff20", "\ufe6b")
_UUID_SHAPED_RE = re.compile(r"\{?[0-9A-Fa-f]{8}(?:-?[0-9A-Fa-f]{4}){3}-?[0-9A-Fa-f]{12}\}?")
_TEXT_KINDS = frozenset({PROMPT, NAME})
_FIELD_KINDS = {table: {name: kind for name, kind, *_ in fields} for table, fields in TABLE_FIELDS.items()}
_MASKED = None          # the value about to come is read by no field of the table: masked


def has_email(text: str) -> bool:
    """Whether ``text`` holds an email-shaped run, its ``@`` as written or written another way (``ENCODED_EMAIL_RE``)."""
    return EMAIL_RE.search(text) is not None or (_other_at(text) and ENCODED_EMAIL_RE.search(text) is not None)


def _other_at(text: str) -> bool:
    """Whether ``text`` may hold an ``@`` written another way (a cheap test before ``ENCODED_EMAIL_RE``)."""
    return any(hint in text for hint in _OTHER_AT_HINTS)


def mask_emails(text: str) -> str:
    """``text`` with each email-shaped run (``@`` as written, then written another way: ``ENCODED_EMAIL_RE``)
    replaced by ``[redacted]``; linear in the length of ``text``."""
    text = EMAIL_RE.sub(REDACTED, text) if "@" in text else text
    return ENCODED_EMAIL_RE.sub(REDACTED, text) if _other_at(text) else text


def _harmless(value: str) -> bool:
    """An id, a time, a UUID or ``none`` (never an email nor a name)."""
    return _HARMLESS_RE.fullmatch(value) is not None or _UUID_SHAPED_RE.fullmatch(value) is not None \
        or value == TIE


def _string_value(token: str) -> str | None:
    """The value of a JSON string token (None when it cannot be read: cut by the end of the text, a bad escape)."""
    if len(token) < 2 or token[-1] != '"' or (len(token) > 2 and token[-2] == "\\" and not _closed(token)):
        return None
    if "\\" not in token:
        return token[1:-1]
    try:
        value = json.loads(token)
    except ValueError:
        return None
    return value if type(value) is str else None


def _closed(token: str) -> bool:
    """Whether a string token ending in backslash-quote is closed (an even run of backslashes before the quote)."""
    run = len(token) - 1 - len(token[:-1].rstrip("\\"))
    return run % 2 == 0


def _masked_value(token: str, kind: str | None) -> str:
    if kind is _MASKED:
        return f'"{REDACTED}"'
    value = _string_value(token)
    if kind in _TEXT_KINDS:
        if value is None:     # cut or unreadable: shown only without an escape that could hide an '@'
            return token if "\\" not in token and "@" not in token else f'"{REDACTED}"'
        if not has_email(value):
            return token
        return mask_emails(token) if "\\" not in token else f'"{REDACTED}"'
    return token if value is not None and len(value) <= 80 and _harmless(value) else f'"{REDACTED}"'


def mask_line(table: str, text: str) -> str:
    """A quarantined line's text as the warehouse quarantine stores it: no email or name (see above; a users line:
    :func:`redact_personal`). At most ``RAW_TEXT_BYTES`` characters; the line as written stays in the raw zone,
    found by the row's file, line_number and raw_sha256."""
    if table in PERSONAL_FIELDS or table not in TABLE_FIELDS:
        return redact_personal(text)
    kinds = _FIELD_KINDS[table]
    out: list[str] = []
    stack: list[tuple[str, str | None]] = []   # open containers: ("{", None) or ("[", kind of its items)
    expect_key = False
    kind: str | None = _MASKED
    for match in _TOKEN_RE.finditer(text):
        token = match.group()
        first = token[0]
        if first == '"':
            if expect_key:
                key = _string_value(token)
                known = key is not None and key in kinds
                out.append(token if known or (key is not None and _IDENTIFIER_RE.fullmatch(key)) else f'"{REDACTED}"')
                kind = kinds[key] if known and len(stack) == 1 else _MASKED   # a nested object's members: masked
                expect_key = False
            else:
                out.append(_masked_value(token, kind))
        elif first.isspace() or first in "{}[]:,":
            out.append(token)
            for char in token:
                if char == "{":
                    stack.append(("{", None))
                    expect_key, kind = True, _MASKED
                elif char == "[":
                    stack.append(("[", kind if stack else _MASKED))
                elif char in "}]":
                    if stack:
                        stack.pop()
                    expect_key, kind = False, _MASKED
                elif char == ",":
                    if stack and stack[-1][0] == "{":
                        expect_key, kind = True, _MASKED
                    elif stack:
                        kind = stack[-1][1]
                elif char == ":":
                    expect_key = False
        else:
            out.append(token if token in ("true", "false", "null") or _NUMBER_RE.fullmatch(token) else REDACTED)
    return "".join(out)[:RAW_TEXT_BYTES]


class _NonFinite(ValueError):
    pass


class _DuplicateKey(ValueError):
    pass


def _reject_constant(name: str) -> float:
    raise _NonFinite(name)


class _WrittenNumber(float):
    """A JSON number whose double is a whole number but which is not that number as written
    (``4503599627370497.5``, ``9007199254740993.0``, ``1e-400``): ``text`` keeps how it was written, so an
    integer field judges the number itself, never its rounding (review rev25c)."""

    __slots__ = ("text",)

    def __repr__(self) -> str:   # a detail names the number as written (1e400), never its double (inf)
        return self.text


def _parse_float(text: str) -> float:
    value = float(text)
    if value.is_integer() or math.isinf(value):   # a whole double or an overflow (1e400, review rev25f) can be
        # taken for an integer: check it is the number written
        try:
            exact = Decimal(text) == value
        except ArithmeticError:   # an exponent beyond Decimal's range: not the double's value either
            exact = False
        if not exact:
            marked = _WrittenNumber(value)
            marked.text = text
            return marked
    return value


def _object_pairs(pairs: list) -> dict:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return obj


# Python converts at most 4,300 digits (sys.get_int_max_str_digits) from a string to an int; JSON sets no limit. An
# integer of more than _INT_DIGITS digits is kept as a number as written (``_WrittenNumber``, its double ``inf``), so a
# field judges it as written like ``1e400`` (review rev33i: it was malformed_json with no key). 640 digits is the
# least limit Python can be set to: int() of fewer never fails, whatever the interpreter's setting.
_INT_DIGITS = 640


def _parse_big_int(text: str) -> int:
    if len(text) <= _INT_DIGITS:
        return int(text)
    marked = _WrittenNumber(float(text))
    marked.text = text
    return marked


_DECODER = json.JSONDecoder(parse_constant=_reject_constant, object_pairs_hook=_object_pairs,
                            parse_float=_parse_float)
_SCAN = json.scanner.make_scanner(_DECODER)
# the same, with every integer going through _parse_big_int (slower: used only where _SCAN met an integer past the limit)
_BIG_SCAN = json.scanner.make_scanner(json.JSONDecoder(parse_constant=_reject_constant, object_pairs_hook=_object_pairs,
                                                       parse_float=_parse_float, parse_int=_parse_big_int))


def _scan_json(text: str, start: int) -> tuple[object, int]:
    try:
        return _SCAN(text, start)
    except (_NonFinite, _DuplicateKey, json.JSONDecodeError):
        raise
    except ValueError:   # an integer past Python's int-from-string digit limit: read again, judged as written
        return _BIG_SCAN(text, start)
_JSON_WS = " \t\n\r"


def load_json(text: str, show_key: Callable[..., str] | None = None) -> object:
    """``json.loads`` without NaN/Infinity and duplicate keys; raises ``Reject`` for anything invalid (``show_key``:
    how a duplicate key is named in the detail, ``_short`` by default)."""
    start = 0
    if text[:1] in _JSON_WS:
        stripped = text.lstrip(_JSON_WS)
        if not stripped:
            raise Reject(MALFORMED_JSON, "blank line")
        start = len(text) - len(stripped)
    try:
        obj, end = _scan_json(text, start)
    except StopIteration as exc:
        if text[exc.value:exc.value + 1] == "\ufeff":
            raise Reject(MALFORMED_JSON, f"a byte order mark (U+FEFF) at character {exc.value}: allowed only "
                                         "at the very start of a file") from None
        raise Reject(MALFORMED_JSON, f"expecting a value at character {exc.value}") from None
    except _NonFinite as exc:
        raise _readable(Reject(INVALID_VALUE, f"non-finite number {exc.args[0]} is not valid JSON")) from None
    except _DuplicateKey as exc:
        raise _readable(Reject(MALFORMED_JSON, f"duplicate key {(show_key or _short)(exc.args[0])}")) from None
    except RecursionError:
        raise _readable(Reject(MALFORMED_JSON, "nesting too deep")) from None
    except ValueError as exc:  # json.JSONDecodeError
        raise Reject(MALFORMED_JSON, str(exc).split("; use sys.")[0][:200]) from None
    if end != len(text) and text[end:].strip(_JSON_WS):
        raise Reject(MALFORMED_JSON, f"extra data after the JSON value at character {end}")
    return obj


def _readable(reject: Reject) -> Reject:
    reject.readable = True
    return reject


class _Members(list):
    """A JSON object read leniently (``lenient_members``): its (name, value) members as written, repeats kept."""

    __slots__ = ()


_LENIENT_SCAN = json.scanner.make_scanner(json.JSONDecoder(
    parse_constant=lambda _name: None, object_pairs_hook=_Members, parse_float=_parse_float,
    parse_int=_parse_big_int))


def lenient_members(text: str) -> _Members | None:
    """The members of a line that ``load_json`` refused only for a ``NaN``/``Infinity`` constant (read as null),
    a member named twice (both kept) or nesting too deep for Python's recursion (read without recursion,
    :func:`_shallow_members`): None unless the whole line is one JSON object that way."""
    stripped = text.lstrip(_JSON_WS)
    try:
        obj, end = _LENIENT_SCAN(stripped, 0)
    except RecursionError:
        return _shallow_members(stripped)
    except (StopIteration, ValueError):
        return None
    if type(obj) is not _Members or stripped[end:].strip(_JSON_WS):
        return None
    return obj


# One JSON token after blanks: a string, a number, a constant (NaN/Infinity read as null, as the lenient read does),
# or a structural character
_JSON_TOKEN_RE = re.compile(r'[ \t\n\r]*(?:("(?:[^"\\\x00-\x1f]|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4}))*")'
                            r'|(-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?)'
                            r'|(true|false|null|NaN|Infinity|-Infinity)|([{}\[\]:,]))')
_OPEN_ARRAYS_RE = re.compile(r"[ \t\n\r]*\[(?:[ \t\n\r]*\[)*")    # a run of "[": pushed at once
_CLOSE_ARRAYS_RE = re.compile(r"[ \t\n\r]*\](?:[ \t\n\r]*\])*")   # a run of "]": popped at once
_CONSTANTS = {"true": True, "false": False}   # null, NaN, Infinity: None (as the lenient read takes them)
_NESTED = object()   # the value of a top-level member that is an object or an array (never a valid key)


def _shallow_members(text: str) -> _Members | None:
    """The top-level members of a JSON object nested too deeply for the recursive decoder, read without recursion (a
    stack of the open containers, the whole text checked as JSON): each (name, value), an object or array value as a
    marker; a repeated name and a NaN constant are kept as :func:`lenient_members` keeps them. None unless the text is
    one JSON object. Review rev33i: such a line lost its key, so the key's other version was accepted."""
    members = _Members()
    stack: list[str] = []       # "{" / "[" of the open containers
    expect = "value"            # value, value_or_end, key, key_or_end, colon, comma_or_end
    name = None
    position = 0
    match_token = _JSON_TOKEN_RE.match
    while True:
        if stack and expect != "colon" and not expect.startswith("key"):   # runs of brackets: one step each
            run = (_OPEN_ARRAYS_RE if expect.startswith("value") else _CLOSE_ARRAYS_RE).match(text, position)
            if run is not None:
                count = run.group().count("[") or run.group().count("]")
                if expect.startswith("value"):
                    if len(stack) == 1:
                        members.append((name, _NESTED))
                    stack.extend("[" * count)
                    expect = "value_or_end"
                else:
                    if len(stack) < count or stack[-count:].count("[") != count:
                        return None
                    del stack[-count:]
                    if not stack:
                        return None    # the top level is an object: "]" never closes it
                position = run.end()
                continue
        found = match_token(text, position)
        if found is None:
            return None
        if not stack and found.group(4) != "{":
            return None          # not an object
        position = found.end()
        string, number, constant, mark = found.groups()
        if expect == "value" or expect == "value_or_end":
            if mark == "{" or mark == "[":
                if len(stack) == 1:
                    members.append((name, _NESTED))
                stack.append(mark)
                expect = "key_or_end" if mark == "{" else "value_or_end"
                continue
            if mark == "]" and expect == "value_or_end":
                stack.pop()
            elif mark is not None:
                return None
            elif len(stack) == 1:
                if string is not None:
                    value = json.loads(string)
                elif number is not None:
                    value = _parse_float(number) if number.strip("-0123456789") else _parse_big_int(number)
                else:
                    value = _CONSTANTS.get(constant)
                members.append((name, value))
        elif expect == "key" or expect == "key_or_end":
            if string is not None:
                name = json.loads(string)
                expect = "colon"
                continue
            if mark != "}" or expect != "key_or_end":
                return None
            stack.pop()
        elif expect == "colon":
            if mark != ":":
                return None
            expect = "value"
            continue
        else:   # comma_or_end
            if mark == ",":
                expect = "key" if stack[-1] == "{" else "value"
                continue
            if mark != ("}" if stack[-1] == "{" else "]"):
                return None
            stack.pop()
        if not stack:            # the top-level object closed
            break
        expect = "comma_or_end"
    return None if text[position:].strip(_JSON_WS) else members


def _alike(a: object, b: object) -> bool:
    """Whether two values of one member name are the same value as written: the same type and value, and a number
    kept as written (``_WrittenNumber``) the same text (``9007199254740993.0`` and ``9007199254740992.5`` share a
    double but are two numbers)."""
    if type(a) is not type(b) or a != b:
        return False
    if type(a) is not _WrittenNumber or a.text == b.text:
        return True
    try:
        return Decimal(a.text) == Decimal(b.text)
    except ArithmeticError:   # an exponent beyond Decimal's range: alike only as written
        return False


def _short(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


_IDENTIFIER_RE = re.compile(r"[a-z_][a-z0-9_]{0,39}")
PERSONAL_VALUE = "<value>"   # what a detail of a personal-data table shows for a value that could be personal


def _short_personal(value: object, limit: int = 80) -> str:
    """``_short`` for a table with personal data: numbers, booleans, null and ids / times (digits and ``-:.+TZ``)
    as written, any other value (a string, an array, an object) as ``<value>``, as the published quarantine does."""
    if value is None or type(value) in (bool, int, float, _WrittenNumber) \
            or (type(value) is str and _HARMLESS_RE.fullmatch(value)):
        return _short(value, limit)
    return PERSONAL_VALUE


def _short_masked(value: object, limit: int = 80) -> str:
    """``_short`` for a table without personal fields: numbers, literals and ids / times / UUIDs / ``none`` as
    written, any other value as ``<value>`` (an email typed into user_id, a name in an id field, review rev25h)."""
    if value is None or type(value) in (bool, int, float, _WrittenNumber) \
            or (type(value) is str and len(value) <= 80 and _harmless(value)):
        return _short(value, limit)
    return PERSONAL_VALUE


def _show_text(value: object, limit: int = 80) -> str:
    """A prompt (or model name) in a detail: as written, its email-shaped runs masked."""
    return mask_emails(_short(value, limit)) if type(value) is str else _short_masked(value, limit)


def _key_personal(key: object, limit: int = 80) -> str:
    """A JSON key in a detail of a table with personal data: a lowercase identifier (``phone``, ``e_mail``) as
    written, anything else (``"Hana Okafor"``, an email) as ``<value>``."""
    return _short(key, limit) if type(key) is str and _IDENTIFIER_RE.fullmatch(key) else PERSONAL_VALUE


def _type_name(value: object) -> str:
    return {bool: "boolean", int: "integer", float: "number", _WrittenNumber: "number", str: "string",
            list: "array", dict: "object", type(None): "null"}.get(type(value), type(value).__name__)


class LineParser:
    """Validate one JSON line of ``table`` into a tuple of typed values (raw column order) or raise ``Reject``."""

    def __init__(self, table: str, *, max_id: int, max_prompt_chars: int, max_name_chars: int,
                 gs_range: tuple[float, float], ts_range: tuple[dt.datetime, dt.datetime]):
        if table not in TABLE_FIELDS:
            raise ValueError(f"unknown raw table {table!r}; known: {sorted(TABLE_FIELDS)}")
        self.table = table
        self.fields = TABLE_FIELDS[table]
        self.names = tuple(f[0] for f in self.fields)
        self.keyset = frozenset(self.names)
        # no table's detail shows a value that could be an email or a name (an email typed into user_id, a joined
        # user row's fields: review rev25h); a prompt's is shown with its emails masked (_show_text)
        self._show = _short_personal if table in PERSONAL_FIELDS else _short_masked
        self._show_key = _key_personal
        self.max_id = max_id
        self.max_prompt_chars = max_prompt_chars
        self.max_name_chars = max_name_chars
        self.gs_range = gs_range
        self.ts_min, self.ts_max = ts_range
        self._timestamps = [i for i, field in enumerate(self.fields) if field[1] is TS]
        self.key_name = PRIMARY_KEYS[table]
        self.key_kind = next(kind for name, kind, *_ in self.fields if name == self.key_name)
        self._fast = _compile_fast_path(self)

    def same(self, a: tuple, b: tuple) -> bool:
        """Whether two lines' typed values are the same row. Timestamps are kept as their text (Arrow casts
        the column later), so two spellings of one instant (``12:00:00.5`` / ``12:00:00.500000``,
        ``13:00:00`` / ``13:00:00.000000``) are compared as the instants they are: the same row, a
        ``duplicate_row``, not a conflict (review rev21a: both lines were quarantined)."""
        if a == b:
            return True
        if len(a) != len(b) or any(x != y for i, (x, y) in enumerate(zip(a, b)) if i not in self._timestamps):
            return False
        return all(a[i] == b[i] or (a[i] is not None and b[i] is not None
                                    and dt.datetime.fromisoformat(a[i]) == dt.datetime.fromisoformat(b[i]))
                   for i in self._timestamps)

    def parse(self, data: bytes) -> tuple:
        """Typed values of one line, in raw column order; raises ``Reject`` naming the first problem."""
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            reject = Reject(INVALID_UTF8, f"byte {exc.start}: {exc.reason}")
            reject.key = self.undecodable_key(data)   # a version of its key all the same (review rev33i)
            raise reject from None
        try:
            obj = load_json(text, self._show_key)
        except Reject as exc:
            if exc.readable:   # a version of its key all the same, when the key reads one way (review rev25f)
                exc.key = self.decoded_key(text)
            raise
        if type(obj) is not dict:
            return self.validate(obj)
        try:
            values = self._fast(obj)
        except ValueError:  # fromisoformat on a well-shaped but impossible time: the slow path names it
            values = None
        if values is not None:
            return values
        try:
            return self.validate(obj)
        except Reject as exc:
            exc.key = self.key_of(obj)
            raise

    def decoded_key(self, text: str) -> object:
        """The valid primary key of a line whose decode failed on a ``NaN``/``Infinity`` constant, a member named
        twice or nesting too deep (``Reject.readable``): read leniently (:func:`lenient_members`), the key field
        present with one value (written once, or every time alike), valid as :meth:`key_of` judges it; else None."""
        if self.key_name not in text and "\\" not in text:
            return None   # no member of that name (spelled with an escape it holds a backslash): no lenient read
        members = lenient_members(text)
        if members is None:
            return None
        values = [value for name, value in members if name == self.key_name]
        if not values or any(not _alike(v, values[0]) for v in values):
            return None
        return self.key_of({self.key_name: values[0]})

    def undecodable_key(self, data: bytes) -> object:
        """The valid primary key of a line that is not valid UTF-8, read with each invalid byte as U+FFFD: a key is an
        integer or a canonical uid, ASCII, so no replaced byte is ever part of one; the line otherwise read as any
        line is (a JSON object, or one :meth:`decoded_key` reads); else None."""
        text = data.decode("utf-8", "replace")
        try:
            obj = load_json(text)
        except Reject as exc:
            return self.decoded_key(text) if exc.readable else None
        return self.key_of(obj) if type(obj) is dict else None

    def overlong_key(self, line: OverlongLine) -> object:
        """The valid primary key of a line over ``max_line_bytes`` (never decoded): its top-level key members as
        :class:`~pipelines.ingest.lines.MemberScan` read them from the bytes (``OverlongLine.members``, the line one
        JSON object at its top level, review rev34h), present with one value (written once, or every time alike), valid as
        :meth:`key_of` judges it; else None (review rev34a: such a line had no key, so the key's other version was
        accepted)."""
        written = line.members
        if not written or None in written:
            return None
        values = []
        for text in written:
            try:
                value = load_json(text.decode("utf-8"))
            except (Reject, UnicodeDecodeError):
                return None
            if type(value) is dict or type(value) is list:
                return None
            values.append(value)
        if any(not _alike(v, values[0]) for v in values):
            return None
        return self.key_of({self.key_name: values[0]})

    def key_of(self, obj: dict) -> object:
        """The primary key of a JSON object as the accepted row would hold it, when its key field alone is
        valid (an id in [1, max_id] written as an integer, a canonical uid); else None. An id is judged as
        ``validate`` judges it, as written: ``9007199254740993.0`` is the id 2^53 + 1 (review rev34a: a number
        whose double is not the number written had no key, so a rejected version of a big id was keyless)."""
        value = obj.get(self.key_name)
        kind = type(value)
        if self.key_kind is ID:
            if kind is float and value.is_integer():   # a plain float is exactly the number written
                value, kind = int(value), int
            elif kind is _WrittenNumber:
                try:
                    value, kind = self._written_integer(self.key_name, value.text, 1, self.max_id), int
                except Reject:
                    return None
            return value if kind is int and 1 <= value <= self.max_id else None
        return value if kind is str and UID_RE.fullmatch(value) else None

    def _unexpected_detail(self, obj: dict) -> str:
        """``unexpected`` and the first ``LISTED_KEYS`` unexpected keys in sorted order (each shown at most 40
        characters), then how many more: bounded whatever the line holds (review rev27b: a line of 20,000 members
        had a detail of 840,000 characters, stored beside a raw_text held to 64 KiB)."""
        extra = [key for key in obj if key not in self.keyset]
        shown = ", ".join(self._show_key(k, 40) for k in heapq.nsmallest(LISTED_KEYS, extra))
        more = len(extra) - LISTED_KEYS
        return f"unexpected {shown}" + (f", ... {more} more" if more > 0 else "")

    def validate(self, obj: object) -> tuple:
        """The reference rules on a parsed JSON value (``parse`` takes a compiled fast path first)."""
        if type(obj) is not dict:
            raise Reject(NOT_AN_OBJECT, f"top-level JSON {_type_name(obj)}, expected an object")
        if obj.keys() != self.keyset:
            missing = [name for name in self.names if name not in obj]
            if missing:
                raise Reject(MISSING_FIELD, f"missing {', '.join(missing)}")
            raise Reject(UNEXPECTED_FIELD, self._unexpected_detail(obj))
        values = []
        append = values.append
        for name, kind, required, bounds in self.fields:
            value = obj[name]
            if value is None:
                if required:
                    raise Reject(MISSING_FIELD, f"{name} is null")
                append(None)
                continue
            kind_type = type(value)
            if kind is ID or kind is INT:
                low, high = (1, self.max_id) if kind is ID else bounds
                if kind_type is not int:
                    if kind_type is float and value.is_integer():
                        value = int(value)
                    elif kind_type is _WrittenNumber:
                        value = self._written_integer(name, value.text, low, high)
                    else:
                        raise Reject(WRONG_TYPE, f"{name}: {_type_name(value)} {self._show(value)}, expected integer")
                if not low <= value <= high:
                    raise Reject(INVALID_VALUE, f"{name} = {self._show(value)} outside [{low}, {high}]")
            elif kind is FLOAT:
                if kind_type is _WrittenNumber:
                    value, kind_type = float(value), float   # a measure: its double is the value (as before)
                if kind_type is not float and kind_type is not int:
                    raise Reject(WRONG_TYPE, f"{name}: {_type_name(value)} {self._show(value)}, expected number")
                low, high = self.gs_range
                if not low <= value <= high:  # also false for nan/inf (e.g. 1e400)
                    raise Reject(INVALID_VALUE, f"{name} = {self._show(value)} outside [{low}, {high}]")
                value = float(value)
            else:
                if kind_type is not str:
                    raise Reject(WRONG_TYPE, f"{name}: {_type_name(value)} {self._show(value)}, expected string")
                if not value.isascii():
                    try:
                        value.encode("utf-8")
                    except UnicodeEncodeError:
                        raise Reject(INVALID_UTF8, f"{name} holds a lone surrogate escape") from None
                if kind is TS:
                    value = self._timestamp(name, value)
                elif kind is UID:
                    if not UID_RE.fullmatch(value):
                        raise Reject(INVALID_UID, f"{name} = {self._show(value)} is not a lowercase canonical UUID")
                elif kind is PROMPT:
                    if len(value) > self.max_prompt_chars:
                        raise Reject(PROMPT_TOO_LONG, f"{name} has {len(value)} characters (max {self.max_prompt_chars})")
                    match = CONTROL_RE.search(value)
                    if match:
                        raise Reject(CONTROL_CHARACTERS, f"{name} has U+{ord(match.group()):04X} at {match.start()}")
                    if required and empty_prompt(value):
                        raise Reject(EMPTY_PROMPT, f"{name} is empty after cleaning (blanks, invisibles and "
                                                   f"[bracketed] negative text only): {_show_text(value)}")
                elif kind is NAME:
                    if not value or len(value) > self.max_name_chars:
                        raise Reject(INVALID_VALUE, f"{name} has {len(value)} characters (want 1-{self.max_name_chars})")
                    match = CONTROL_RE.search(value)
                    if match:
                        raise Reject(CONTROL_CHARACTERS, f"{name} has U+{ord(match.group()):04X} at {match.start()}")
            append(value)
        if self.table == "rankings":
            self._check_ranking(values)
        elif self.table == "images":
            idx, num = values[9], values[10]
            if idx is not None and num is not None and idx >= num:
                raise Reject(INVALID_VALUE, f"idx = {idx} not below num_generated = {num}")
        return tuple(values)

    @staticmethod
    def _written_integer(name: str, text: str, low: int, high: int) -> int:
        """The integer a JSON number with a fraction or exponent is as written (``text``), or ``Reject``:
        ``wrong_type`` when it has a fraction, ``invalid_value`` when it lies outside [low, high]."""
        shown = text if len(text) <= 80 else text[:77] + "..."
        try:
            exact = Decimal(text)
        except ArithmeticError:   # an exponent beyond what Decimal reads: judged by the signs as written (rev25f)
            mantissa, _, exponent = text.lower().partition("e")
            if not mantissa.strip("-+0."):
                exact = Decimal(0)    # zero, whatever its exponent
            elif not exponent.startswith("-"):
                raise Reject(INVALID_VALUE, f"{name} = {shown} outside [{low}, {high}]") from None
            else:
                raise Reject(WRONG_TYPE, f"{name}: number {shown} has a fraction, expected integer") from None
        if exact.is_finite() and exact != exact.to_integral_value():
            raise Reject(WRONG_TYPE, f"{name}: number {shown} has a fraction, expected integer")
        if not exact.is_finite() or exact.adjusted() > 40:   # never made a huge int
            raise Reject(INVALID_VALUE, f"{name} = {shown} outside [{low}, {high}]")
        value = int(exact)
        if not low <= value <= high:
            raise Reject(INVALID_VALUE, f"{name} = {shown} outside [{low}, {high}]")
        return value

    def _timestamp(self, name: str, value: str) -> str:
        if not TS_RE.fullmatch(value):
            raise Reject(BAD_TIMESTAMP, f"{name} = {self._show(value)} is not 'YYYY-MM-DD HH:MM:SS[.ffffff]'")
        try:
            parsed = dt.datetime.fromisoformat(value)
        except ValueError as exc:
            raise Reject(BAD_TIMESTAMP, f"{name} = {self._show(value)}: {exc}") from None
        if parsed < self.ts_min:
            raise Reject(BAD_TIMESTAMP, f"{name} = {value} is before {self.ts_min}")
        if parsed >= self.ts_max:
            raise Reject(BAD_TIMESTAMP, f"{name} = {value} is at or after {self.ts_max} (too far in the future)")
        return value  # kept as text: Arrow casts a whole column to timestamp[us] much faster

    @staticmethod
    def _check_ranking(values: list) -> None:
        shown2, shown3, best = values[5], values[6], values[7]
        if (shown2 is None) != (shown3 is None):
            raise Reject(INVALID_RANKING, "image_2_uid and image_3_uid must be both set or both null")
        shown = values[3:7] if shown2 is not None else values[3:5]
        if len(set(shown)) != len(shown):
            raise Reject(INVALID_RANKING, "the same image is shown twice")
        if best != TIE and best not in shown:
            raise Reject(INVALID_RANKING, f"best_image_uid = {_short_masked(best)} is neither 'none' nor a shown image")


def empty_prompt(raw: str) -> bool:
    """Whether a prompt shows nothing once cleaned as ``split_prompt`` cleans it: empty, or only blanks and
    invisible characters (zero-width space, word joiner, Hangul filler, Braille blank: ``pipelines.invisibles``,
    the prompt key's definition; review rev25f)."""
    return renders_empty(raw if "[" not in raw else split_prompt(raw)[0])


def unescape(text: str) -> str:
    """Replace the app's ``[single_quote]`` token with ``'``."""
    return text.replace(SINGLE_QUOTE_TOKEN, "'") if "[" in text else text


def split_prompt(raw: str) -> tuple[str, str | None]:
    """(prompt, bracket_negative_prompt): unescape, move ``[bracketed]`` text out, strip whitespace.

    Each matched ``[...]`` pair (and the blanks around it) becomes one space in the prompt; its text, stripped,
    is one part of the negative prompt (parts joined with ``", "`` in the order their ``]`` comes, empty ones
    left out). Nested pairs are removed whole (review rev25c: ``[[x]]`` left ``[ ]`` in the prompt, failing the
    ``*_prompt_clean`` contract rules): ``a [b [c] d] e`` gives ``a e`` and ``c, b d``. An unmatched ``[`` or
    ``]`` stays in the prompt, so the prompt never holds a ``[...]`` pair.
    """
    if "[" not in raw:  # the common case: nothing to unescape or move
        return raw.strip(), None
    text = unescape(raw)
    if "[" not in text:
        return text.strip(), None
    parts = [p.strip() for p in BRACKET_RE.findall(text)]
    if not parts:
        return text.strip(), None
    prompt = BRACKET_RE.sub(" ", text).strip()
    if BRACKET_RE.search(prompt) is not None:   # a pair held another pair: remove the nesting whole
        return _split_nested(text)
    negative = ", ".join(p for p in parts if p)
    return prompt, negative or None


def _split_nested(text: str) -> tuple[str, str | None]:
    """``split_prompt`` for text with nested ``[...]`` pairs, in one pass (linear: a hostile line of thousands
    of nested pairs costs no more than its length). Pairs are matched with a stack; each closed pair is
    replaced by an empty ``[]`` in the text around it, so the single-level rule (``BRACKET_RE``) then removes it
    with its surrounding blanks exactly as it removes a plain pair."""
    stack: list[list[str]] = []     # the open pairs' text so far, innermost last
    outside: list[str] = []          # the text outside every pair
    parts: list[str] = []
    last = 0
    for match in _BRACKET_CHAR_RE.finditer(text):
        at = match.start()
        (stack[-1] if stack else outside).append(text[last:at])
        last = at + 1
        if match.group() == "[":
            stack.append([])
        elif stack:
            inner = "".join(stack.pop())
            parts.append(BRACKET_RE.sub(" ", inner).strip())
            (stack[-1] if stack else outside).append("[]")
        else:
            outside.append("]")     # an unmatched ]: kept as written
    (stack[-1] if stack else outside).append(text[last:])
    while stack:                    # unmatched [: kept as written, with what followed it (its closed pairs as [])
        inner = "".join(stack.pop())
        (stack[-1] if stack else outside).append("[" + inner)
    prompt = BRACKET_RE.sub(" ", "".join(outside)).strip()
    negative = ", ".join(p for p in parts if p)
    return prompt, negative or None


def _utf8_ok(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _compile_fast_path(parser: LineParser) -> Callable[[dict], tuple | None]:
    """Compile straight-line checks for the common, valid case; ``None`` sends a line to ``validate``.

    It only ever accepts what ``validate`` accepts and returns the same values (a unit test compares
    both on every planted defect); anything unusual (nulls in required fields, floats for integers,
    integers for floats, non-ASCII text that needs a surrogate check) simply takes the slow path.
    """
    low_gs, high_gs = parser.gs_range
    env = {"KEYS": parser.keyset, "TSM": TS_RE.fullmatch, "UIDM": UID_RE.fullmatch, "CTRL": CONTROL_RE.search,
           "UTF8OK": _utf8_ok, "EMPTYP": empty_prompt, "FROMISO": dt.datetime.fromisoformat,
           "TMIN": parser.ts_min, "TMAX": parser.ts_max,
           "MAXID": parser.max_id, "MAXP": parser.max_prompt_chars, "MAXN": parser.max_name_chars,
           "LOGS": low_gs, "HIGS": high_gs, "TIE": TIE}
    body = ["def fast(o):", "    if o.keys() != KEYS: return None"]
    for i, (name, kind, required, bounds) in enumerate(parser.fields):
        v = f"v{i}"
        body.append(f"    {v} = o[{name!r}]")
        if kind is ID:
            bad = f"type({v}) is not int or not 1 <= {v} <= MAXID"
        elif kind is INT:
            env[f"LO{i}"], env[f"HI{i}"] = bounds
            bad = f"type({v}) is not int or not LO{i} <= {v} <= HI{i}"
        elif kind is FLOAT:
            bad = f"type({v}) is not float or not LOGS <= {v} <= HIGS"
        elif kind is TS:
            body.append(f"    if type({v}) is not str or TSM({v}) is None: return None")
            bad = f"not TMIN <= FROMISO({v}) < TMAX"
        elif kind is UID:
            bad = f"type({v}) is not str or UIDM({v}) is None"
        else:
            bad = f"type({v}) is not str or (not {v}.isascii() and not UTF8OK({v}))"
            # for ASCII text, CONTROL_RE matches exactly what str.isprintable() refuses (C0 and DEL)
            ctrl = f"(not {v}.isprintable() if {v}.isascii() else CTRL({v}) is not None)"
            if kind is PROMPT:
                bad += f" or len({v}) > MAXP or {ctrl}"
                if required:   # empty_prompt: blanks and invisibles only, or [bracketed] text only
                    bad += f" or EMPTYP({v})"
            elif kind is NAME:
                bad += f" or not {v} or len({v}) > MAXN or {ctrl}"
        if required:
            body.append(f"    if {bad}: return None")
        else:
            body.append(f"    if {v} is not None and ({bad}): return None")
    if parser.table == "images":
        body.append("    if v9 is not None and v10 is not None and v9 >= v10: return None")
    elif parser.table == "rankings":
        body += ["    if v5 is None:",
                 "        if v6 is not None or v3 == v4 or (v7 != TIE and v7 != v3 and v7 != v4): return None",
                 "    elif v6 is None or len({v3, v4, v5, v6}) != 4 or (v7 != TIE and v7 not in (v3, v4, v5, v6)):",
                 "        return None"]
    body.append("    return (" + ", ".join(f"v{i}" for i in range(len(parser.fields))) + ",)")
    exec("\n".join(body), env)  # noqa: S102 - source built above from the static field table
    return env["fast"]
