"""Raw export files as bytes: stream one ``*.jsonl.gz`` file (bounded memory, decompression limits),
cut it into numbered lines (an overlong line keeps only its prefix, length and digest), and tap the
``image_uid`` members of the raw bytes for the reference check. Nothing here decodes a line (an overlong line's
top-level members of one name are followed by its structure only, :class:`MemberScan`): the line rules are in
:mod:`pipelines.ingest.parse`."""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import stat
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

RAW_TEXT_BYTES = 64 * 1024   # the first bytes of a rejected line kept in the quarantine's raw_text
# Finds every "image_uid": "<uuid>" member in raw bytes without parsing (reference check).
IMAGE_UID_MEMBER_RE = re.compile(
    rb'"image_uid"[ \t\r]{0,16}:[ \t\r]{0,16}"([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})"'
)
_UID_SCAN_OVERLAP = 128
# How much more the survey inflates, past the point where ingest.max_file_bytes / max_file_lines stop the read, to
# reach the end of (and so check) the gzip member the limit cuts: at least this, at most as much as before the cut
# (a survey inflates at most twice what the read reads, plus this). A member whose end lies further is not read.
LIMIT_CHECK_BYTES = 64 << 20
# What the ingest recorded as read for a raw file that was a link out of the raw zone (refused, never read), as
# ``pipelines.provenance.RawDigests`` names such a path: never a sha256 (review rev27f)
LINK_OUT_OF_ZONE = "link-out-of-zone"
_CANONICAL_UID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@dataclass(frozen=True)
class OverlongLine:
    """A line longer than the limit: only its first bytes, length and digest are kept, and (when
    :func:`iter_lines` was given a ``member`` name) the values of the line's top-level members of that name as
    written (:class:`MemberScan`): ``members`` is None when the line is not one JSON object at its top level, or is
    longer than ``MemberScan.BUDGET``."""

    prefix: bytes
    length: int
    sha256: str
    members: tuple[bytes | None, ...] | None = None


_NOT_WS = re.compile(rb"[^ \t\n\r]")
_STRING_STOP = re.compile(rb'["\\]')
_NESTED_STOP = re.compile(rb'"|[\[{]+|[\]}]+')      # a string, a run of openers, a run of closers
_SCALAR_END = re.compile(rb'[ \t\n\r,:"\[\]{}]')
_OPENERS, _QUOTE, _BACKSLASH = b"[{", 0x22, 0x5C
# Whole tokens skipped in one step (possessive: linear, never backtracking into a token the piece cut): a string's
# body to its closing quote (or its first escape the piece cuts); inside a container, a run of scalars, strings and
# containers holding no container (the common case: arrays of numbers, of small objects); at the top level, a run of
# whole members ending in a comma (their names then checked for the one wanted, MemberScan.feed). Top-level names,
# strings and scalars are checked as JSON (review rev34h): a string holds no raw control character and only the
# escapes JSON has, a scalar is a JSON number or a constant the decoder reads (NaN and Infinity: a readable reject).
_STRING = rb'"[^"\\]*+(?:\\.[^"\\]*+)*+"'
_JSON_STRING = rb'"(?:[^"\\\x00-\x1f]++|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4}))*+"'
_JSON_SCALAR = (rb'(?:-?+(?:0|[1-9][0-9]*+)(?:\.[0-9]++)?+(?:[eE][-+]?+[0-9]++)?+'
                rb'|true|false|null|NaN|-?+Infinity)')
_FLAT = rb'[\[{](?:[^"\[\]{}]++|' + _STRING + rb')*+[\]}]'
_STRING_BODY = re.compile(rb'[^"\\]*+(?:\\.[^"\\]*+)*+', re.DOTALL)
_JSON_STRING_BODY = re.compile(rb'(?:[^"\\\x00-\x1f]++|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4}))*+')
_ESCAPE = re.compile(rb'\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4})')
_ESCAPE_START = re.compile(rb'\\(?:u[0-9a-fA-F]{0,3})?')   # an escape cut by the end of a piece
_DIGITS = re.compile(rb'[0-9]*+')
_NESTED_SKIP = re.compile(rb'(?:[^"\[\]{}]++|' + _STRING + rb'|' + _FLAT + rb')*+', re.DOTALL)
_MEMBERS_SKIP = re.compile(rb'(?:' + _JSON_STRING + rb'[ \t\n\r]*+:[ \t\n\r]*+(?:' + _JSON_STRING + rb'|' + _FLAT
                           + rb'|' + _JSON_SCALAR + rb')[ \t\n\r]*+,[ \t\n\r]*+)*+', re.DOTALL)
_CONSTANTS = (b"true", b"false", b"null", b"NaN", b"Infinity", b"-Infinity")
_FIRST_PHASE = {b"-": "minus", b"0": "zero", **{bytes([d]): "int" for d in b"123456789"}}
_DIGIT_BYTES = frozenset(b"0123456789")


class MemberScan:
    """The values of one JSON object's top-level members named ``name``, read from the line's bytes as they stream
    (:meth:`feed`), never holding the line: an overlong line is never decoded, but a version of a primary key all the
    same (review rev34a: a ``line_too_long`` line had no key, so the key's other version was accepted, a guess).

    The top level is followed and checked as JSON: it must be one object (``{``, members ``"name": value`` apart by
    ``,``, ``}``, then blanks only; a BOM before it only on a file's first line), its names and string values valid
    JSON strings (no raw control character, only JSON's escapes), its scalars JSON numbers or the constants the
    decoder reads (``true``, ``false``, ``null``; ``NaN`` and ``Infinity`` as its lenient read takes them); a line
    failing that is not JSON as a short line of it is malformed_json with no key, so it has no key either (review
    rev34h: it had one, and the good version of that key was quarantined). The containers below the top level are
    skipped by their brackets and strings (neither checked nor kept). A scalar is kept only under ``name``, a number
    with the zeros that do not change it dropped (a fraction's trailing zeros, an exponent's leading ones:
    ``5.000`` and ``5.0e00`` are kept as ``5.0`` and ``5.0e0``, the same number to the decoder; review rev34h: an id
    written ``5.`` and 300 zeros was too long to keep, so its line had no key). ``result()``: the values of the members
    named ``name``, each spelling once (their bytes as written, numbers as above, at most ``CAP``; None for an object /
    array value, a longer one, or past ``SPELLINGS`` spellings), or None when the line is not one JSON object as
    followed, or is longer than ``BUDGET`` bytes (never scanned further: a hostile line costs bounded time, see
    below). Memory: the state, at most ``CAP`` bytes of a name or value and ``SPELLINGS`` values; time: linear, a
    regular-expression step per top-level token (a run of whole members of other names: one step) and per string,
    run of brackets or run of flat containers below, at most ``BUDGET`` bytes of a line."""

    CAP = 256   # bytes kept of a member's name or its value (a key is at most 36 characters, as written 6 a character)
    SPELLINGS = 16   # different values kept of the members named ``name``
    # bytes of a line scanned at most: past them the line has no key. The worst shapes cost about 1.5 s of CPU a MiB
    # (tiny members holding escapes), so one line costs at most about a minute and a half, where a 4 GiB line (one
    # raw file's limit) cost over an hour; a real line this long (64 times the default max_line_bytes) is not expected
    BUDGET = 64 << 20

    def __init__(self, name: str, bom: bool = False):
        self.name = name
        self.state = "bom" if bom else "start"
        self.depth = 0              # open containers: 1 inside the top-level object
        self.after = ""             # where a string leads when it closes: "colon" (a name) or "comma" (a value)
        self.escape = b""           # the start of an escape the last piece cut inside a string
        self.phase = ""             # where a top-level scalar is: minus, zero, int, dot, frac, e, esign, exp, constant
        self.written = b""          # a constant's bytes so far
        self.zeros = 0              # a fraction's zeros not kept yet (kept only when a digit other than 0 follows)
        self.digits = False         # a fraction's or an exponent's digit was kept
        self.fed = 0                # bytes fed
        self.keep: bytearray | None = None   # the name or value being read (None: not kept)
        self.wanted = False         # the member being read is named ``name``
        self.values: list[bytes | None] = []
        self.failed = False
        self.pending = b""          # the first bytes of a file's first line while a BOM may still be starting
        self._literal = json.dumps(name).encode()   # the name as a member written without escapes spells it
        # the bytes a written name of ``name``'s characters takes with its quotes: each character 1 to 12 (a
        # surrogate pair's two escapes)
        self._shortest, self._longest = len(name) + 2, 12 * len(name) + 2

    def _kept(self, piece: bytes, start: int, stop: int) -> None:
        if self.keep is not None:
            if len(self.keep) + stop - start > self.CAP:
                self.keep = None     # too long to be the key (or its name)
            else:
                self.keep += piece[start:stop]

    def feed(self, piece: bytes) -> None:
        if self.failed or not piece:
            return
        self.fed += len(piece)
        if self.fed > self.BUDGET:
            return self._fail()
        if self.state == "bom":
            piece = self.pending + piece
            if len(piece) < 3 and b"\xef\xbb\xbf".startswith(piece):
                self.pending = piece
                return
            self.pending, self.state = b"", "start"
            if piece.startswith(b"\xef\xbb\xbf"):
                piece = piece[3:]
        position, end = 0, len(piece)
        # the end of the run of whole members from a member on (``_MEMBERS_SKIP``), and the next bytes in it where a
        # member named ``name`` may be written (its name as is, any ``\u`` escape): the members before them are skipped
        run_end = next_literal = next_escape = -1
        literal, escaped = self._literal, b"\\u"   # a primary key's name is lowercase letters and "_": written
        # otherwise than as is, one of its characters is a \u escape
        while position < end:
            state = self.state
            if state == "string":
                if self.depth > 1:   # a string below the top level: followed to its end, not checked
                    if self.escape:
                        self.escape = b""
                        position += 1
                        continue
                    at = _STRING_BODY.match(piece, position).end()
                    if at == end:
                        return
                    position = at + 1
                    if piece[at] == _BACKSLASH:   # an escape the piece cuts: its next byte is in the next piece
                        self.escape = b"\\"
                    else:
                        self.state = "nested"
                    continue
                if self.escape:      # an escape the last piece cut: completed from this one, then checked
                    done = self.escape
                    length = 6 if done[1:2] == b"u" or (len(done) == 1 and piece[position] == 0x75) else 2
                    taken = piece[position:position + length - len(done)]
                    done += taken
                    self._kept(piece, position, position + len(taken))
                    position += len(taken)
                    if len(done) < length:
                        if not _ESCAPE_START.fullmatch(done):
                            return self._fail()
                        self.escape = done
                        return
                    if not _ESCAPE.fullmatch(done):
                        return self._fail()
                    self.escape = b""
                    continue
                at = _JSON_STRING_BODY.match(piece, position).end()
                self._kept(piece, position, at)
                if at == end:
                    return
                if piece[at] == _QUOTE:
                    self._kept(piece, at, at + 1)
                    position = at + 1
                    self._string_closed()
                    continue
                cut = piece[at:at + 6]    # an escape the piece cuts, or not JSON (a control byte, a bad escape)
                if piece[at] != _BACKSLASH or at + len(cut) != end or not _ESCAPE_START.fullmatch(cut):
                    return self._fail()
                self._kept(piece, at, end)
                self.escape = cut
                return
            if state == "nested":
                position = _NESTED_SKIP.match(piece, position).end()
                stop = _NESTED_STOP.match(piece, position)
                if stop is None:
                    return
                run = stop.group()
                position = stop.end()
                if run[0] == _QUOTE:
                    self.state, self.keep = "string", None
                elif run[0] in _OPENERS:
                    self.depth += len(run)
                elif self.depth - len(run) > 1:
                    self.depth -= len(run)
                else:                 # the run closes the top-level member's value (and maybe more)
                    position = stop.start() + self.depth - 1
                    self.depth, self.state = 1, "comma"
                continue
            if state == "scalar":
                stop = _SCALAR_END.search(piece, position)
                if not self._scalar(piece, position, end if stop is None else stop.start()):
                    return self._fail()
                if stop is None:
                    return
                position = stop.start()
                if not self._scalar_done():
                    return self._fail()
                self._value_done()
                self.state = "comma"
                continue
            found = _NOT_WS.search(piece, position)
            if found is None:
                return
            position = found.start()
            if state == "key":   # whole members in one step, up to one that may be named ``name`` (then read below)
                if position >= run_end:
                    run_end, next_literal, next_escape = _MEMBERS_SKIP.match(piece, position).end(), -1, -1
                if run_end > position:
                    if next_literal < position:   # each searched once per run (linear), up to the run's end
                        at = piece.find(literal, position, run_end)
                        next_literal = at if at >= 0 else run_end
                    if next_escape < position:
                        at = piece.find(escaped, position, run_end)
                        next_escape = at if at >= 0 else run_end
                    suspect = min(next_literal, next_escape)
                    stop_at = run_end if suspect >= run_end else _MEMBERS_SKIP.match(piece, position, suspect).end()
                    if stop_at > position:
                        position = stop_at
                        continue
            char = piece[position:position + 1]
            position += 1
            if state == "start":
                if char != b"{":
                    return self._fail()
                self.depth, self.state = 1, "key_or_end"
            elif state in ("key", "key_or_end"):
                if char == b'"':
                    self.state, self.after, self.keep = "string", "colon", bytearray(char)
                elif char == b"}" and state == "key_or_end":
                    self.depth, self.state = 0, "end"
                else:
                    return self._fail()
            elif state == "colon":
                if char != b":":
                    return self._fail()
                self.state = "value"
            elif state == "value":
                self.keep = bytearray(char) if self.wanted else None
                if char == b'"':
                    self.state, self.after = "string", "comma"
                elif char in (b"{", b"["):
                    if self.wanted:
                        self._value(None)    # an object or array: never a key
                    self.depth, self.state = 2, "nested"
                elif char in b"-0123456789":
                    self.state, self.phase, self.zeros, self.digits = "scalar", _FIRST_PHASE[char], 0, False
                elif char in b"tfnNI":
                    self.state, self.phase, self.written = "scalar", "constant", char
                else:
                    return self._fail()
            elif state == "comma":
                if char == b",":
                    self.state = "key"
                elif char == b"}":
                    self.depth, self.state = 0, "end"
                else:
                    return self._fail()
            else:   # end: blanks only after the object
                return self._fail()

    def _scalar(self, piece: bytes, start: int, stop: int) -> bool:
        """Follow a top-level scalar's bytes ``piece[start:stop]`` (the scalar goes on after them or ends there):
        False where they make it no JSON number or constant. A kept number drops a fraction's trailing zeros and an
        exponent's leading ones (the class)."""
        position = start
        while position < stop:
            phase = self.phase
            if phase == "constant":
                self.written += piece[position:min(stop, position + 10)]   # a constant is at most 9 bytes
                self._kept(piece, position, stop)
                return any(c.startswith(self.written) for c in _CONSTANTS)
            if phase == "int" or phase == "frac" or phase == "exp":
                at = _DIGITS.match(piece, position, stop).end()
                if at > position:
                    if phase == "int":
                        self._kept(piece, position, at)
                    elif self.keep is not None:
                        self._digits(piece[position:at], phase)
                    position = at
                    continue
            byte = piece[position]
            if byte in _DIGIT_BYTES:
                if phase == "minus":
                    phase = "zero" if byte == 0x30 else "int"
                    if byte == 0x30:
                        self._kept(piece, position, position + 1)
                        position += 1
                elif phase == "dot":
                    phase = "frac"
                elif phase == "e" or phase == "esign":
                    phase = "exp"
                else:
                    return False   # after a leading 0
                self.phase = phase
                continue
            if byte == 0x2E and (phase == "zero" or phase == "int"):
                self.phase = "dot"
            elif byte in b"eE" and (phase == "zero" or phase == "int" or phase == "frac"):
                if phase == "frac":
                    self._fraction_done()
                self.phase, self.digits = "e", False
            elif byte in b"+-" and phase == "e":
                self.phase = "esign"
            elif byte == 0x49 and phase == "minus":   # -Infinity
                self.phase, self.written = "constant", b"-"
                continue
            else:
                return False
            self._kept(piece, position, position + 1)
            position += 1
        return True

    def _digits(self, run: bytes, phase: str) -> None:
        """Keep a run of a kept number's fraction or exponent digits, but for the zeros that do not change it."""
        if phase == "frac":
            significant = run.rstrip(b"0")
            if significant:
                self._kept_zeros(self.zeros)
                self._kept(significant, 0, len(significant))
                self.zeros, self.digits = len(run) - len(significant), True
            else:
                self.zeros += len(run)
        else:
            if not self.digits:
                run = run.lstrip(b"0")
            if run:
                self._kept(run, 0, len(run))
                self.digits = True

    def _kept_zeros(self, count: int) -> None:
        if self.keep is not None and count:
            if len(self.keep) + count > self.CAP:
                self.keep = None
            else:
                self.keep += b"0" * count

    def _fraction_done(self) -> None:
        """A kept fraction's trailing zeros dropped: one 0 kept where it was all zeros (``5.000``: ``5.0``)."""
        if not self.digits:
            self._kept_zeros(1)
        self.zeros = 0

    def _scalar_done(self) -> bool:
        """Whether the top-level scalar that ended is a JSON number or a constant the decoder reads."""
        phase = self.phase
        if phase == "frac":
            self._fraction_done()
        elif phase == "exp" and not self.digits:
            self._kept_zeros(1)
        elif phase == "constant":
            return self.written in _CONSTANTS
        return phase in ("zero", "int", "frac", "exp")

    def _string_closed(self) -> None:
        if self.after == "colon":
            keep = self.keep
            self.wanted = keep is not None and self._shortest <= len(keep) <= self._longest \
                and _member_name(bytes(keep)) == self.name
            self.state = "colon"
        else:
            self._value_done()
            self.state = "comma"

    def _value_done(self) -> None:
        if self.wanted:
            self._value(bytes(self.keep) if self.keep is not None else None)
        self.keep, self.wanted = None, False

    def _value(self, value: bytes | None) -> None:
        """Keep a value of a member named ``name``, once per spelling: at most ``SPELLINGS`` of them, then None (a
        line naming its key in that many ways has no key; memory stays bounded whatever the line repeats)."""
        if value not in self.values:
            if len(self.values) < self.SPELLINGS:
                self.values.append(value)
            elif None not in self.values:
                self.values.append(None)

    def _fail(self) -> None:
        self.failed = True

    def result(self) -> tuple[bytes | None, ...] | None:
        """The values of the members named ``name`` (see the class), or None: not one JSON object at the top level
        (or past ``BUDGET``)."""
        if self.failed or self.state != "end":
            return None
        return tuple(self.values)

    def truncated(self) -> bool:
        """Whether the bytes fed are one JSON object's start cut short: followed as JSON without a fault (within
        ``BUDGET``), but not closed (the app export's own cut line of an oversized row, ``_cut_oversized``)."""
        return not self.failed and self.state not in ("end", "start", "bom")


def _member_name(written: bytes) -> str | None:
    """A member name as written (its quotes included) as the text it is, or None where it does not decode."""
    if b"\\" not in written:
        try:
            return written[1:-1].decode("utf-8")
        except UnicodeDecodeError:
            return None
    try:
        name = json.loads(written)
    except ValueError:
        return None
    return name if isinstance(name, str) else None


class RawFile:
    """Stream one gzip JSON-lines file; after ``chunks()`` is exhausted, ``status``/``error`` say how it went.

    ``status``: ``ok``, ``missing`` (no file), ``empty`` (no bytes after decompression), ``unreadable``
    (not gzip, truncated, corrupt, not a regular file, or a link out of the raw zone). Every member before a
    damaged one is yielded, so the lines before the damage are still ingested; a damaged member (one that fails
    its integrity check or cannot be inflated) yields nothing, nor does anything after it; a truncated last
    member yields the bytes before the cut.
    ``error`` names the file by ``name`` (its path relative to the data home), never by its absolute
    path: the message is stored in the quarantine and published.
    """

    def __init__(self, path: Path, *, name: str | None = None, read_bytes: int = 1 << 20, max_chunk: int = 1 << 20,
                 zone_root: str | None = None, expect: tuple[int, int, int, int] | None = None,
                 max_bytes: int | None = None, max_lines: int | None = None):
        self.path = Path(path)
        self.name = name if name is not None else self.path.name
        self.read_bytes = read_bytes
        self.max_chunk = max_chunk
        self.zone_root = zone_root      # the opened file must lie under it (checked on the open file)
        self.expect = expect            # the identity an earlier read of this file recorded: another one is refused
        self.identity: tuple[int, int, int, int] | None = None   # (device, inode, size, mtime_ns) as opened
        self.max_bytes = max_bytes      # decompressed bytes yielded at most (ingest.max_file_bytes)
        self.max_lines = max_lines      # lines yielded at most (ingest.max_file_lines)
        self.lines_out = 0
        self.cut = False                # a limit stopped the read (what was read depends on the limits)
        # what was read depends on the limits: ``cut``, or the survey could not check the member a limit cuts (its
        # end lies past the check budget, which the limits set): never cached for another run (review rev27f)
        self.limited = False
        # the stream ends early (a gzip member without its end: the bytes a file being written holds so far, or a
        # cut copy), no member failing its check before: what an app export's staged file is until it is whole
        self.ended_early = False
        self.status = "ok"
        self.error: str | None = None
        self.file_bytes = 0
        self.file_sha256: str | None = None
        self.output_bytes = 0
        # what was at the path when it was no regular file to read, as ``pipelines.provenance.RawDigests`` names it
        # ("missing": nothing, a dangling link; "not-a-file": a folder, a FIFO, ...; LINK_OUT_OF_ZONE: a link that
        # leaves the raw zone, review rev27f); None otherwise. The day's version names it, never the file as it is
        # later (review rev27e)
        self.unread_as: str | None = None

    def check(self) -> bool:
        """Set ``missing``/``unreadable`` for a path that cannot be opened; True when it can be read."""
        if not self.path.exists() and not self.path.is_symlink():
            self.status, self.error = "missing", f"no file at {self.name}"
            self.unread_as = "missing"
            return False
        if not self.path.is_file():
            self.status, self.error = "unreadable", f"{self.name} is not a regular file"
            self.unread_as = _unread_as(self.path)
            return False
        return True

    def chunks(self) -> Iterator[bytes]:
        """Yield decompressed bytes (concatenated gzip members supported); never raises for bad data.

        Two passes over the open file: :meth:`_survey` hashes it and inflates every member without keeping its
        bytes, to find the first member that fails (its CRC-32 or length check, a bad block, a bad header such as
        garbage after the last member); then the members before that one are inflated again and yielded. A
        member's bytes are yielded only once its check passed (review rev27b: a member that failed its CRC had
        every line already yielded accepted, the damaged one included), except the last one of a truncated
        file (it has no check: its bytes before the cut are yielded). Where a limit (``max_bytes``, ``max_lines``) cuts a member, that member too is
        checked to its end before any of it is yielded (review rev27e), and the survey stops there."""
        handle = self._open()
        if handle is None:
            return
        with handle:
            bad = self._survey(handle)
            if self.status == "ok":
                yield from self._inflate(handle, bad)

    def _survey(self, handle: io.FileIO) -> tuple[int, str] | None:
        """The first pass: ``file_bytes`` and ``file_sha256`` of the whole file, and the first member that fails as
        (its compressed offset, the error), or None. Inflates ``max_chunk`` bytes at a time, keeping nothing, up to
        the member in which a limit stops the second pass (more than ``max_bytes`` bytes inflated, or a byte after
        the ``max_lines``-th newline, review rev27f): that member is checked to its end too (review rev27e: its bytes
        before the cut were yielded unchecked), inflating at most ``max(LIMIT_CHECK_BYTES, the bytes before the
        cut)`` more; one whose end lies further is not verifiable and fails like a damaged one (none of its lines is
        read; ``limited`` is set: the budget depends on the limits, review rev27f)."""
        digest = hashlib.sha256()
        decomp = None
        start = produced = newlines = 0
        bad = None
        done = False              # a limit stopped the read in a member that was then checked whole
        budget = None             # inflated bytes allowed before the end of the member the limit cuts
        count_lines = self.max_lines is not None
        line_end = None           # inflated bytes up to the max_lines-th newline: the read stops at the next byte
        try:
            while block := handle.read(self.read_bytes):
                self.file_bytes += len(block)
                digest.update(block)
                data, pending = block, False
                while bad is None and not done and (data or pending):
                    if decomp is None or decomp.eof:  # a new gzip member starts here
                        if budget is not None:        # the member the limit cut was checked whole: stop
                            done = True
                            break
                        start = self.file_bytes - len(data)
                        decomp = zlib.decompressobj(wbits=31)
                    try:
                        out = decomp.decompress(data, self.max_chunk)
                    except zlib.error as exc:
                        why = (f"not a valid gzip stream near compressed byte {self.file_bytes}: {exc}; nothing "
                               f"from compressed byte {start} on was read (a gzip member is read only when its "
                               "integrity check passes)")
                        bad = (start, why)
                        break
                    if budget is None and count_lines and line_end is None:
                        found = out.count(b"\n")
                        if newlines + found >= self.max_lines:   # the last allowed newline is in ``out``
                            end = -1
                            for _ in range(self.max_lines - newlines):
                                end = out.find(b"\n", end + 1)
                            line_end = produced + end + 1
                        newlines += found
                    produced += len(out)
                    if budget is None:
                        # where the read stops (``_capped``): past max_bytes, or at the first byte after the
                        # max_lines-th newline (review rev27f: not at the next newline)
                        if (self.max_bytes is not None and produced > self.max_bytes) or \
                                (line_end is not None and produced > line_end):
                            budget = produced + max(LIMIT_CHECK_BYTES, produced)
                    if decomp.eof:
                        data, pending = decomp.unused_data, False
                    else:
                        data, pending = decomp.unconsumed_tail, len(out) == self.max_chunk
                        if budget is not None and produced > budget:
                            self.limited = True       # the budget depends on the limits (review rev27f)
                            bad = (start, f"a limit (ingest.max_file_bytes / ingest.max_file_lines) stops the read "
                                          f"in the gzip member at compressed byte {start}, whose end lies more than "
                                          f"{budget} decompressed bytes in: it could not be checked, so nothing from "
                                          "that byte on was read (a gzip member is read only when its integrity "
                                          "check passes)")
        except OSError as exc:
            self._fail(f"read error after {self.file_bytes} compressed bytes: {_os_reason(exc)}")
        self.file_sha256 = digest.hexdigest()
        return bad

    def _inflate(self, handle: io.FileIO, bad: tuple[int, str] | None) -> Iterator[bytes]:
        """The second pass: the members before ``bad`` inflated and yielded (capped by the limits). The file is
        hashed again: bytes that differ from the first pass (rewritten in place meanwhile) make it unreadable,
        and ``file_sha256`` is then of the bytes this pass read."""
        handle.seek(0)
        digest = hashlib.sha256()
        position = 0
        decomp = None
        try:
            while block := handle.read(self.read_bytes):
                position += len(block)
                digest.update(block)
                data, pending = block, False
                while data or pending:
                    if decomp is None or decomp.eof:  # a new gzip member starts here
                        if bad is not None and position - len(data) >= bad[0]:
                            self._fail(bad[1])
                            break
                        decomp = zlib.decompressobj(wbits=31)
                    out = decomp.decompress(data, self.max_chunk)
                    if out:
                        out, cut = self._capped(out)
                        if out:
                            self.output_bytes += len(out)
                            yield out
                        if cut:
                            self.cut = self.limited = True
                            self._fail(cut)
                            break
                    if decomp.eof:
                        data, pending = decomp.unused_data, False
                    else:
                        data, pending = decomp.unconsumed_tail, len(out) == self.max_chunk
                if self.status != "ok":
                    break
        except zlib.error as exc:
            self._fail(f"not a valid gzip stream near compressed byte {position}: {exc}")
        except OSError as exc:
            self._fail(f"read error after {position} compressed bytes: {_os_reason(exc)}")
        if self.status == "ok" and decomp is not None and not decomp.eof:
            try:
                tail = decomp.flush()
            except zlib.error:
                tail = b""
            tail, cut = self._capped(tail) if tail else (tail, None)
            if cut is not None:
                self.cut = self.limited = True
            if tail:
                self.output_bytes += len(tail)
                yield tail
            self.ended_early = cut is None
            self._fail(cut or f"gzip stream truncated after {position} compressed bytes")
        read_whole = True
        if self.status != "ok":
            read_whole = self._drain(handle, digest)
        elif self.output_bytes == 0:
            self.status = "empty"
        if read_whole and digest.hexdigest() != self.file_sha256:
            self.file_sha256 = digest.hexdigest()
            self.status = "unreadable"
            self.error = (f"{self.name} changed while it was read (rewritten in place: its bytes differ between two "
                          "reads)")

    def _capped(self, out: bytes) -> tuple[bytes, str | None]:
        """``out`` cut at ``max_bytes`` (the line it cuts into is dropped by :func:`iter_lines`) or after the
        ``max_lines``-th newline, and why it was cut (None: not cut)."""
        why = None
        if self.max_bytes is not None and self.output_bytes + len(out) > self.max_bytes:
            out = out[:self.max_bytes - self.output_bytes]
            why = (f"{self.name} decompresses to more than {self.max_bytes} bytes (ingest.max_file_bytes): the "
                   "bytes after that were not read")
        if self.max_lines is not None:
            room = self.max_lines - self.lines_out      # newlines still allowed
            newlines = out.count(b"\n")
            if newlines >= room:
                end = -1
                for _ in range(room):
                    end = out.find(b"\n", end + 1)
                if end + 1 < len(out):                 # bytes after the last allowed line: one line too many
                    out, newlines = out[:end + 1], room
                    why = (f"{self.name} has more than {self.max_lines} lines (ingest.max_file_lines): the lines "
                           f"after line {self.max_lines} were not read")
            self.lines_out += newlines
        return out, why

    def _open(self) -> io.FileIO | None:
        """The file, opened without waiting (a FIFO swapped in is never waited on) and checked on the open
        descriptor: a regular file, under ``zone_root`` where ``/proc`` names it (a link swapped in after the
        path checks is refused), the same file as ``expect`` says; None with ``status`` set otherwise."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            self.status, self.error = "unreadable", f"cannot open {self.name}: {_os_reason(exc)}"
            if isinstance(exc, FileNotFoundError):
                self.unread_as = "missing"      # gone (or a dangling link) since the path checks
            return None
        info = os.fstat(fd)
        problem = None
        if not stat.S_ISREG(info.st_mode):
            problem = f"{self.name} is not a regular file"
            self.unread_as = "not-a-file"
        elif self.zone_root is not None:
            try:
                opened = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                opened = None        # no /proc: the path checks stand
            if opened is not None and opened.startswith("/") and os.path.commonpath([self.zone_root, opened]) != self.zone_root:
                problem = f"{self.name} resolves outside the raw zone"
                self.unread_as = LINK_OUT_OF_ZONE
        self.identity = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)
        if problem is None and self.expect is not None and self.identity != self.expect:
            problem = f"{self.name} changed while it was ingested (another file or other bytes)"
        if problem is not None:
            os.close(fd)
            self.status, self.error = "unreadable", problem
            return None
        return io.FileIO(fd, "rb", closefd=True)

    def _drain(self, handle, digest) -> bool:
        """Finish the second pass's digest after it stopped early; False when a read error stopped that too."""
        try:
            while block := handle.read(self.read_bytes):
                digest.update(block)
        except OSError as exc:
            self.error = f"{self.error}; read error while hashing: {_os_reason(exc)}"
            return False
        return True

    def _fail(self, message: str) -> None:
        self.status, self.error = "unreadable", message


def _unread_as(path: Path) -> str | None:
    """What ``RawDigests.file`` names a path that is no regular file: "missing" when it does not stat (a dangling
    link), "not-a-file" when it does (a folder, a FIFO, ...); None when it cannot tell (another error)."""
    try:
        os.stat(path)
    except FileNotFoundError:
        return "missing"
    except OSError:
        return None
    return "not-a-file"


def _os_reason(exc: OSError) -> str:
    """An OSError's reason without the file name it carries (an absolute path)."""
    return exc.strerror or type(exc).__name__


def iter_lines(chunks: Iterable[bytes], max_line_bytes: int,
               cut_short: Callable[[], bool] | None = None,
               member: str | None = None) -> Iterator[tuple[int, bytes | OverlongLine]]:
    """Number the lines (1-based) of a byte stream; a line over ``max_line_bytes`` becomes ``OverlongLine``
    (with ``member``: the values of its top-level members of that name, :class:`MemberScan`).

    The text after the last newline counts as a line when it is not empty (a truncated file's tail), unless
    ``cut_short()`` says a limit stopped the stream (``RawFile.cut``): then it is the start of a line that was
    not read, and is dropped (the file's ``unreadable_file`` row says where the read stopped).
    """
    number = 0
    pieces: list[bytes] = []   # the start of the current line, as the chunks brought it (joined once it ends)
    carried = 0                # their length
    long_hash = None  # sha256 of the overlong line being skipped
    long_prefix = b""
    long_len = 0
    long_scan: MemberScan | None = None   # its top-level members named ``member``

    def overlong(data: bytes, first: bool) -> OverlongLine:
        """A line over the limit found whole in one buffer."""
        members = None
        if member is not None:
            scan = MemberScan(member, bom=first)
            scan.feed(data)
            members = scan.result()
        return OverlongLine(data[:RAW_TEXT_BYTES], len(data), hashlib.sha256(data).hexdigest(), members)

    for chunk in chunks:
        if long_hash is not None:
            cut = chunk.find(b"\n")
            if cut < 0:
                long_hash.update(chunk)
                long_len += len(chunk)
                if long_scan is not None:
                    long_scan.feed(chunk)
                continue
            long_hash.update(chunk[:cut])
            long_len += cut
            number += 1
            if long_scan is not None:
                long_scan.feed(chunk[:cut])
            yield number, OverlongLine(long_prefix, long_len, long_hash.hexdigest(),
                                       long_scan.result() if long_scan is not None else None)
            long_hash = long_scan = None
            chunk = chunk[cut + 1:]
        if b"\n" not in chunk:
            # no line ends here: keep the piece, never copy the line's start again (review rev33i: a line cut into
            # many tiny gzip members was re-joined and re-split per chunk, time quadratic in its length)
            if chunk:
                pieces.append(chunk)
                carried += len(chunk)
        else:
            if pieces:
                pieces.append(chunk)
                buf = b"".join(pieces)
            else:
                buf = chunk
            parts = buf.split(b"\n")
            carry = parts.pop()
            for part in parts:
                number += 1
                if len(part) > max_line_bytes:
                    yield number, overlong(part, number == 1)
                else:
                    yield number, part
            pieces, carried = ([carry], len(carry)) if carry else ([], 0)
        if carried > max_line_bytes:
            long_hash = hashlib.sha256()
            long_scan = MemberScan(member, bom=number == 0) if member is not None else None
            prefix = []
            room = RAW_TEXT_BYTES
            for piece in pieces:
                long_hash.update(piece)
                if long_scan is not None:
                    long_scan.feed(piece)
                if room > 0:
                    prefix.append(piece[:room])
                    room -= len(prefix[-1])
            long_prefix = b"".join(prefix)
            long_len = carried
            pieces, carried = [], 0
    if cut_short is not None and cut_short():
        return
    if long_hash is not None:
        number += 1
        yield number, OverlongLine(long_prefix, long_len, long_hash.hexdigest(),
                                   long_scan.result() if long_scan is not None else None)
    elif pieces:
        carry = b"".join(pieces)
        number += 1
        if len(carry) > max_line_bytes:
            yield number, overlong(carry, number == 1)
        else:
            yield number, carry


def spelled_image_uid(data: bytes) -> str | None:
    """The top-level ``image_uid`` of one JSON line, decoded as JSON, when the byte search
    (``IMAGE_UID_MEMBER_RE``) may have missed it: a member spelled with an escape in its name or value
    (``"image\\u005fuid"``), or with more blanks around the colon than the search allows (the literal name
    appears more often than the search matched, e.g. beside a nested object's plain one). None for a line the
    search reads whole (no backslash, every literal name matched), or one that is not a JSON object with a
    canonical uid there."""
    if b"\\" not in data and data.count(b"image_uid") <= len(IMAGE_UID_MEMBER_RE.findall(data)):
        return None
    try:
        value = json.loads(data)
    except (ValueError, RecursionError):
        return None
    uid = value.get("image_uid") if isinstance(value, dict) else None
    return uid if isinstance(uid, str) and _CANONICAL_UID.fullmatch(uid) else None


def scan_image_uids(chunks: Iterable[bytes], sink: set[str], max_line_bytes: int) -> None:
    """Every image uid of a raw images file into ``sink``: the byte search over the raw bytes
    (:func:`tap_image_uids`) and, line by line, the uids only a JSON decode finds (:func:`spelled_image_uid`)."""
    for _, data in iter_lines(tap_image_uids(chunks, sink), max_line_bytes):
        if type(data) is bytes:
            uid = spelled_image_uid(data)
            if uid is not None:
                sink.add(uid)


def tap_image_uids(chunks: Iterable[bytes], sink: set[str], wanted: set[str] | None = None) -> Iterator[bytes]:
    """Pass ``chunks`` through, adding every ``"image_uid": "<uuid>"`` found (only ``wanted`` ones if given) to ``sink``."""
    tail = b""
    for chunk in chunks:
        window = tail + chunk
        found = {m.decode("ascii") for m in IMAGE_UID_MEMBER_RE.findall(window)}
        sink.update(found if wanted is None else found & wanted)
        tail = window[-_UID_SCAN_OVERLAP:]
        yield chunk
