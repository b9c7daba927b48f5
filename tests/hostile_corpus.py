"""A seeded hostile-input corpus planted into a simulated raw zone, with the outcome expected for each item.

``plant_hostile_corpus(home, outside, seed)`` takes a data home holding one simulated day and adds,
deterministically:

- hostile JSON lines appended to that day's four gzip files (each expected in ``quarantine`` with a
  specific reason at a known line number),
- image rows with hostile blobs (each expected in ``image_rejects`` with a specific reason),
- a ranking over two hostile images (expected as ``decisions`` rows),
- a second day whose files are broken (not gzip, truncated gzip, empty, missing) and a third day with
  a raw file that is a symlink out of the home, one that is a directory and a gzip of nothing,
- symlinked blobs pointing outside the raw zone and outside the home, into ``outside`` (a sibling
  folder the test snapshots: nothing there may be read into the dataset or changed);
- floods of identical bad lines (100,000 blank lines in a few hundred bytes of gzip, 2,000 exact
  repeats of one accepted row), each expected as one quarantine row with its ``line_count``;
- raw-zone entries that are not days (``dt=2023-02-30``, ``dt=2023-2-1``, ``dt=garbage``, a file named
  like a day, a day folder linked outside the home, a dangling link, a stray file, a non-UTF-8 name),
  each expected in ``raw_zone_problems`` and none read;
- a ranking and a download of the first day whose image is first exported on the second day (late),
  expected accepted and counted in ``ingest_files.accepted_late_image``.

Everything is generated from ``seed``; no hand-edited blobs.
"""
from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import io
import json
import os
import struct
import uuid
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from formats.home import DataHome

# Ids far above anything the small simulated day uses, so planted rows never collide with its keys.
ID_BASE = 900_000


@dataclass(frozen=True)
class LineCase:
    """One hostile raw line: where it lands and the quarantine reason it must get."""

    name: str
    table: str
    day: str
    line_number: int
    reason: str


@dataclass(frozen=True)
class BlobCase:
    """One image row whose blob is hostile: the image_rejects reason it must get."""

    name: str
    image_uid: str
    day: str
    reason: str


@dataclass(frozen=True)
class FileCase:
    """One hostile raw file: its expected ``ingest_files.status`` and file-level quarantine reason (or None)."""

    name: str
    table: str
    day: str
    status: str
    reason: str | None


@dataclass(frozen=True)
class FloodCase:
    """``count`` identical bad lines from ``first_line`` on: one quarantine row with that line_count."""

    name: str
    table: str
    day: str
    first_line: int
    last_line: int
    count: int
    reason: str


@dataclass
class Corpus:
    """What was planted, and what each item must become."""

    day: str
    lines: list[LineCase] = field(default_factory=list)
    blobs: list[BlobCase] = field(default_factory=list)
    files: list[FileCase] = field(default_factory=list)
    ranking_over_rejects: int | None = None          # ranking_id whose two images are both rejected
    rejected_pair_uids: tuple[str, str] | None = None
    outside_sha256: list[str] = field(default_factory=list)   # sha256 of every file under ``outside``
    outside_user_id: int | None = None              # a user id that exists only in a file outside the home
    expected_lines: dict[tuple[str, str], int] = field(default_factory=dict)  # (day, table) -> lines readable
    floods: list[FloodCase] = field(default_factory=list)
    raw_zone: dict[str, str] = field(default_factory=dict)   # raw_zone_problems entry -> reason
    raw_zone_user_ids: list[int] = field(default_factory=list)  # users only in entries that must not be read
    late_ranking_id: int | None = None               # day-1 ranking whose image day 2's export brings
    late_download_id: int | None = None


# ------------------------------------------------------------------------------------------ images

def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_from_rows(width: int, height: int, raw_rows: bytes, bit_depth: int = 8, colour: int = 0) -> bytes:
    """A PNG with the given IHDR and ``raw_rows`` (filter bytes included) deflated into one IDAT."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(raw_rows, 9))
            + _png_chunk(b"IEND", b""))


def noise_image(rng: np.random.Generator, size: int = 64, mode: str = "RGB") -> Image.Image:
    """A smooth random picture (so it compresses and hashes like an image, not like noise)."""
    small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    return Image.fromarray(small, "RGB").resize((size, size), Image.BILINEAR).convert(mode)


def _encode(image: Image.Image, fmt: str, **params) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **params)
    return out.getvalue()


def hostile_blobs(rng: np.random.Generator) -> dict[str, tuple[bytes, str]]:
    """name -> (blob bytes, expected reject reason); each blob is stored as ``<uid>.png``."""
    good = noise_image(rng)
    png = _encode(good, "PNG")
    frames = [noise_image(rng), noise_image(rng)]
    apng = io.BytesIO()
    frames[0].save(apng, "PNG", save_all=True, append_images=frames[1:], duration=100, loop=0)
    gray16 = Image.fromarray((rng.integers(0, 65535, (64, 64))).astype(np.uint16))
    bomb_side = 5000  # 25 Mpx > max_pixels (4096^2); ~25 MB of zero rows deflate to a few KB
    bomb = png_from_rows(bomb_side, bomb_side, bytes(bomb_side * (bomb_side + 1)))
    huge_header = png_from_rows(20_000, 20_000, b"\x00" * 64)  # header only: the pixels are not there
    return {
        "png_that_is_jpeg": (_encode(good, "JPEG", quality=90), "extension_mismatch"),
        # PNG cannot hold CMYK and every blob path ends in .png, so a CMYK image (a JPEG here) is refused
        # for its format before its mode is looked at; the 16-bit PNG below reaches the mode check
        "cmyk_jpeg": (_encode(good.convert("CMYK"), "JPEG"), "extension_mismatch"),
        "decompression_bomb": (bomb, "decompression_bomb"),
        "one_by_one": (_encode(Image.new("RGB", (1, 1), (200, 10, 10)), "PNG"), "too_small"),
        "header_20000x20000": (huge_header, "decompression_bomb"),
        "animated_png": (apng.getvalue(), "animated_image"),
        "gray_16_bit": (_encode(gray16, "PNG"), "unsupported_mode"),
        "truncated_png": (png[: len(png) // 2], "truncated_image"),
        "random_bytes": (rng.bytes(4096), "not_an_image"),
        "zero_bytes": (b"", "empty_file"),
        # thin strips under max_pixels: a full decode would pad to 14 GB for NudeNet and break the JPEG encoder
        "thin_70000x8": (png_from_rows(70_000, 8, (b"\x00" + bytes(i % 256 for i in range(70_000))) * 8), "bad_dimensions"),
        "thin_8x70000": (png_from_rows(8, 70_000, b"".join(b"\x00" + bytes([i % 256]) * 8 for i in range(70_000))),
                         "bad_dimensions"),
    }


# ------------------------------------------------------------------------------------------ lines

class _Lines:
    """Valid-looking rows of one day, from which each hostile line is one mutation."""

    def __init__(self, day: str, rng: np.random.Generator, user_id: int, known_uids: list[str]):
        self.day = day
        self.rng = rng
        self.user_id = user_id
        self.known = known_uids
        self.next_id = ID_BASE

    def new_id(self) -> int:
        self.next_id += 1
        return self.next_id

    def uid(self) -> str:
        return str(uuid.UUID(bytes=self.rng.bytes(16), version=4))

    def ts(self) -> str:
        seconds = int(self.rng.integers(0, 86_400))
        return f"{self.day} {dt.timedelta(seconds=seconds)!s:0>8}.{int(self.rng.integers(0, 10**6)):06d}"

    def image(self, **over) -> dict:
        row = {"image_id": self.new_id(), "created_at": self.ts(), "image_uid": self.uid(), "user_id": self.user_id,
               "prompt": "a red circle on a blue background", "negative_prompt": None,
               "seed": int(self.rng.integers(0, 2**31)), "gs": 7.5, "steps": 25, "idx": 0, "num_generated": 1,
               "scheduler_cls": "DPMSolverMultistepScheduler", "model_id": "stabilityai/stable-diffusion-2-1"}
        row.update(over)
        return row

    def ranking(self, **over) -> dict:
        a, b = self.known[0], self.known[1]
        row = {"ranking_id": self.new_id(), "created_at": self.ts(), "user_id": self.user_id, "image_0_uid": a,
               "image_1_uid": b, "image_2_uid": None, "image_3_uid": None, "best_image_uid": a,
               "prompt": "a red circle on a blue background"}
        row.update(over)
        return row

    def download(self, **over) -> dict:
        row = {"download_id": self.new_id(), "created_at": self.ts(), "user_id": self.user_id,
               "image_uid": self.known[0], "prompt": "a red circle"}
        row.update(over)
        return row

    def user(self, **over) -> dict:
        row = {"user_id": self.new_id(), "created_at": self.ts(), "email": "hostile@example.org", "name": "Hos Tile"}
        row.update(over)
        return row


def _dump(obj: object) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode("utf-8", "surrogatepass")


def _replace(raw: bytes, key: str, literal: str) -> bytes:
    """Set ``key`` to a raw JSON token (NaN, Infinity, ...) that json.dumps would not write."""
    obj_text = raw.decode("utf-8")
    marker = f'"{key}": '
    start = obj_text.index(marker) + len(marker)
    end = start
    while obj_text[end] not in ",}":
        end += 1
    return (obj_text[:start] + literal + obj_text[end:]).encode("utf-8")


def hostile_lines(g: _Lines) -> list[tuple[str, str, bytes, str]]:
    """(name, table, raw line bytes without newline, expected quarantine reason), in file order."""
    image, ranking, download, user = g.image, g.ranking, g.download, g.user
    known = g.known
    out: list[tuple[str, str, bytes, str]] = []

    def add(name: str, table: str, line: bytes | dict, reason: str) -> None:
        out.append((name, table, line if isinstance(line, bytes) else _dump(line), reason))

    add("invalid_utf8", "rankings", _dump(ranking(prompt="PLACEHOLDER")).replace(b"PLACEHOLDER", b"caf\xe9 \xff\xfe"), "invalid_utf8")
    add("lone_surrogate", "images", _dump(image(prompt="x")).replace(b'"prompt": "x"', b'"prompt": "\\ud800"'), "invalid_utf8")
    add("json_array", "rankings", b"[1, 2, 3]", "not_an_object")
    add("json_scalar_number", "images", b"42", "not_an_object")
    add("json_scalar_string", "downloads", b'"just a string"', "not_an_object")
    add("json_null", "users", b"null", "not_an_object")
    add("line_10_mb", "images", _dump(image(prompt="A" * (10 * 1024 * 1024))), "line_too_long")
    add("blank_line", "rankings", b"   ", "malformed_json")
    add("truncated_json", "rankings", _dump(ranking())[:-7], "malformed_json")
    add("duplicate_key", "downloads", b'{"download_id": 1, "download_id": 2}', "malformed_json")
    add("deep_nesting", "users", b"[" * 200_000 + b"]" * 200_000, "malformed_json")
    # valid JSON (no digit limit), judged as written since fix33i: an object lacking the other fields
    add("huge_integer_literal", "users", b'{"user_id": ' + b"9" * 5000 + b"}", "missing_field")
    add("byte_order_mark", "users", b"\xef\xbb\xbf" + _dump(user()), "malformed_json")
    missing = image()
    del missing["model_id"]
    add("missing_field", "images", missing, "missing_field")
    add("required_null", "rankings", ranking(image_0_uid=None), "missing_field")
    add("extra_field", "downloads", {**download(), "is_admin": True}, "unexpected_field")
    add("id_as_string", "rankings", ranking(ranking_id=str(g.new_id())), "wrong_type")
    add("user_id_as_string", "images", image(user_id=str(g.user_id)), "wrong_type")
    add("gs_as_string", "images", image(gs="7.5"), "wrong_type")
    add("prompt_as_number", "rankings", ranking(prompt=12345), "wrong_type")
    add("uid_as_number", "downloads", download(image_uid=123), "wrong_type")
    add("bool_as_id", "users", user(user_id=True), "wrong_type")
    add("fractional_id", "users", user(user_id=12.5), "wrong_type")
    add("gs_nan", "images", _replace(_dump(image()), "gs", "NaN"), "invalid_value")
    add("gs_infinity", "images", _replace(_dump(image()), "gs", "Infinity"), "invalid_value")
    add("seed_minus_infinity", "images", _replace(_dump(image()), "seed", "-Infinity"), "invalid_value")
    add("gs_overflow", "images", _replace(_dump(image()), "gs", "1e400"), "invalid_value")
    add("negative_id", "rankings", ranking(ranking_id=-3), "invalid_value")
    add("zero_id", "downloads", download(download_id=0), "invalid_value")
    add("absurd_id", "users", user(user_id=10**30), "invalid_value")
    add("absurd_seed", "images", image(seed=2**70), "invalid_value")
    add("negative_steps", "images", image(steps=-25), "invalid_value")
    add("ts_iso_t_z", "rankings", ranking(created_at=f"{g.day}T08:00:00Z"), "bad_timestamp")
    add("ts_european", "images", image(created_at="13/02/2023 08:00"), "bad_timestamp")
    add("ts_epoch_string", "downloads", download(created_at="1676275200"), "bad_timestamp")
    add("ts_far_future", "users", user(created_at="2999-01-01 00:00:00"), "bad_timestamp")
    add("ts_ancient", "rankings", ranking(created_at="1970-01-01 00:00:00"), "bad_timestamp")
    add("ts_impossible", "images", image(created_at="2023-02-30 25:61:00"), "bad_timestamp")
    add("ts_epoch_number", "users", user(created_at=1676275200), "wrong_type")
    add("prompt_100k", "images", image(prompt="a cat " * 16_667), "prompt_too_long")
    add("ranking_prompt_100k", "rankings", ranking(prompt="b" * 100_000), "prompt_too_long")
    add("prompt_bell", "images", image(prompt="a red \x07 circle"), "control_characters")
    add("prompt_nul", "rankings", ranking(prompt="a red\x00circle"), "control_characters")
    add("prompt_rtl_override", "rankings", ranking(prompt="a red \u202ecircle"), "control_characters")
    add("prompt_rtl_mark", "images", image(prompt="a red circle\u200f"), "control_characters")
    add("prompt_newline", "downloads", download(prompt="line one\nline two"), "control_characters")
    add("model_id_escape", "images", image(model_id="sd\x1b[31m"), "control_characters")
    add("uid_not_uuid", "images", image(image_uid="not-a-uuid"), "invalid_uid")
    add("uid_dotdot", "images", image(image_uid="../../../../etc/passwd"), "invalid_uid")
    add("uid_slash", "images", image(image_uid="abc/def"), "invalid_uid")
    add("uid_backslash", "images", image(image_uid="..\\..\\evil"), "invalid_uid")
    add("uid_nul", "images", image(image_uid=g.uid() + "\x00.png"), "invalid_uid")
    add("uid_uppercase", "images", image(image_uid=g.uid().upper()), "invalid_uid")
    add("ranking_uid_dotdot", "rankings", ranking(image_1_uid="../" + known[1]), "invalid_uid")
    add("download_uid_absolute", "downloads", download(image_uid="/etc/passwd"), "invalid_uid")
    add("best_not_shown", "rankings", ranking(best_image_uid=known[2]), "invalid_ranking")
    add("best_garbage", "rankings", ranking(best_image_uid="tie"), "invalid_ranking")
    add("same_image_twice", "rankings", ranking(image_1_uid=known[0]), "invalid_ranking")
    add("four_with_repeat", "rankings",
        ranking(image_2_uid=known[2], image_3_uid=known[0]), "invalid_ranking")
    add("half_four", "rankings", ranking(image_2_uid=known[2]), "invalid_ranking")
    add("unknown_reference", "downloads", download(image_uid=g.uid()), "unknown_image_reference")
    dup = download()
    add("exact_repeat_first", "downloads", dup, "ACCEPTED")   # the first copy is kept
    add("exact_repeat", "downloads", dup, "duplicate_row")
    conflict = user()
    add("conflict_a", "users", conflict, "conflicting_primary_key")
    add("conflict_b", "users", {**conflict, "created_at": g.ts()}, "conflicting_primary_key")
    return out


# ------------------------------------------------------------------------------------------ files

def _read_gz(path: Path) -> bytes:
    return gzip.decompress(path.read_bytes())


def _write_gz(path: Path, data: bytes) -> None:
    path.write_bytes(gzip.compress(data, compresslevel=6, mtime=0))


def _lines_of(data: bytes) -> int:
    if not data:
        return 0
    return data.count(b"\n") + (0 if data.endswith(b"\n") else 1)


def _next_day(day: str, n: int) -> str:
    return (dt.date.fromisoformat(day) + dt.timedelta(days=n)).isoformat()


def plant_hostile_corpus(home: DataHome, outside: Path, seed: int = 0) -> Corpus:
    """Add the hostile corpus to ``home`` (one simulated raw day present); files for symlinks go to ``outside``."""
    rng = np.random.default_rng(seed)
    day = home.raw_days()[0]
    corpus = Corpus(day=day)
    outside.mkdir(parents=True, exist_ok=True)

    contents = {t: _read_gz(home.raw_file(day, t)) for t in ("users", "images", "rankings", "downloads")}
    for table, data in contents.items():
        if data and not data.endswith(b"\n"):
            contents[table] = data + b"\n"
    first_image = json.loads(contents["images"].split(b"\n", 1)[0])
    known = [json.loads(line)["image_uid"] for line in contents["images"].splitlines()[:6]
             if line.startswith(b"{") and b'"image_uid"' in line]
    gen = _Lines(day, rng, int(first_image["user_id"]), known)

    # hostile lines, appended to the simulated files
    appended: dict[str, list[bytes]] = {t: [] for t in contents}
    accepted_names = set()
    for name, table, line, reason in hostile_lines(gen):
        number = _lines_of(contents[table]) + len(appended[table]) + 1
        appended[table].append(line)
        if reason == "ACCEPTED":
            accepted_names.add(name)
            continue
        corpus.lines.append(LineCase(name, table, day, number, reason))

    # images with hostile blobs (valid rows), plus symlinks and odd file kinds
    blob_rows = []
    for name, (data, reason) in hostile_blobs(rng).items():
        row = gen.image()
        (home.raw_images / f"{row['image_uid']}.png").write_bytes(data)
        blob_rows.append(row)
        corpus.blobs.append(BlobCase(name, row["image_uid"], day, reason))
    sentinel = _encode(noise_image(rng), "PNG")
    (outside / "sentinel.png").write_bytes(sentinel)
    specials = {
        "symlink_outside_home": lambda p: p.symlink_to(outside / "sentinel.png"),
        "symlink_into_ground_truth": lambda p: p.symlink_to(os.path.relpath(home.ground_truth / "users.parquet", p.parent)),
        "symlink_dangling_outside": lambda p: p.symlink_to(outside / "does-not-exist.png"),
        "directory_as_blob": lambda p: p.mkdir(),
        "fifo_as_blob": lambda p: os.mkfifo(p),
    }
    special_reasons = {"symlink_outside_home": "unsafe_path", "symlink_into_ground_truth": "unsafe_path",
                       "symlink_dangling_outside": "unsafe_path", "directory_as_blob": "unsafe_path",
                       "fifo_as_blob": "unsafe_path"}
    for name, make in specials.items():
        row = gen.image()
        make(home.raw_images / f"{row['image_uid']}.png")
        blob_rows.append(row)
        corpus.blobs.append(BlobCase(name, row["image_uid"], day, special_reasons[name]))
    missing = gen.image()
    blob_rows.append(missing)
    corpus.blobs.append(BlobCase("missing_blob", missing["image_uid"], day, "missing_blob"))
    appended["images"].extend(_dump(r) for r in blob_rows)

    # a valid ranking over two rejected images: decisions must drop both images and the ranking
    by_name = {b.name: b.image_uid for b in corpus.blobs}
    pair = (by_name["decompression_bomb"], by_name["png_that_is_jpeg"])
    over = gen.ranking(image_0_uid=pair[0], image_1_uid=pair[1], best_image_uid=pair[0])
    appended["rankings"].append(_dump(over))
    corpus.ranking_over_rejects = over["ranking_id"]
    corpus.rejected_pair_uids = pair

    # a ranking and a download naming an image that only day 2's export holds (a late image)
    late_uid = str(uuid.UUID(bytes=hashlib.sha256(b"pickapic hostile late image").digest()[:16], version=4))
    late = gen.ranking(image_0_uid=late_uid, image_1_uid=known[1], best_image_uid="none")
    late_download = gen.download(image_uid=late_uid)
    appended["rankings"].append(_dump(late))
    appended["downloads"].append(_dump(late_download))
    corpus.late_ranking_id, corpus.late_download_id = late["ranking_id"], late_download["download_id"]

    # floods of identical bad lines: each is one quarantine row, however many lines
    for name, table, line, count, reason in (
            ("blank_flood", "downloads", b"", 100_000, "malformed_json"),
            ("repeat_flood", "rankings", _dump(over), 2_000, "duplicate_row")):
        first = _lines_of(contents[table]) + len(appended[table]) + 1
        appended[table].extend([line] * count)
        corpus.floods.append(FloodCase(name, table, day, first, first + count - 1, count, reason))

    for table, data in contents.items():
        full = data + b"".join(line + b"\n" for line in appended[table])
        _write_gz(home.raw_file(day, table), full)
        corpus.expected_lines[(day, table)] = _lines_of(full)

    # day 2: not gzip, truncated gzip, empty, missing
    day2 = _next_day(day, 1)
    g2 = _Lines(day2, rng, gen.user_id, known)
    g2.next_id = gen.next_id + 1000
    home.raw_day(day2).mkdir(parents=True)
    home.raw_file(day2, "users").write_bytes(b"".join(_dump(g2.user()) + b"\n" for _ in range(3)))
    corpus.files.append(FileCase("not_gzip", "users", day2, "unreadable", "unreadable_file"))
    truncated_rows = [g2.image(image_uid=late_uid)] + [g2.image() for _ in range(3)]
    for row in truncated_rows:
        (home.raw_images / f"{row['image_uid']}.png").write_bytes(_encode(noise_image(rng), "PNG"))
    payload = b"".join(_dump(r) + b"\n" for r in truncated_rows)
    compressed = gzip.compress(payload, mtime=0)
    home.raw_file(day2, "images").write_bytes(compressed[: len(compressed) * 2 // 3])
    readable = zlib.decompressobj(wbits=31).decompress(compressed[: len(compressed) * 2 // 3])
    assert late_uid.encode() in readable, "the late image must lie before the truncation"
    corpus.files.append(FileCase("truncated_gzip", "images", day2, "unreadable", "unreadable_file"))
    home.raw_file(day2, "rankings").write_bytes(b"")
    corpus.files.append(FileCase("empty_file", "rankings", day2, "empty", None))
    corpus.files.append(FileCase("missing_file", "downloads", day2, "missing", "missing_file"))

    # day 3: a raw file linking out of the home, a directory, a gzip of nothing, random bytes
    day3 = _next_day(day, 2)
    g3 = _Lines(day3, rng, gen.user_id, known)
    g3.next_id = gen.next_id + 2000
    home.raw_day(day3).mkdir(parents=True)
    outside_user = g3.user()
    corpus.outside_user_id = outside_user["user_id"]
    (outside / "users.jsonl.gz").write_bytes(gzip.compress(_dump(outside_user) + b"\n", mtime=0))
    home.raw_file(day3, "users").symlink_to(outside / "users.jsonl.gz")
    corpus.files.append(FileCase("raw_symlink_outside_home", "users", day3, "unreadable", "unreadable_file"))
    home.raw_file(day3, "images").mkdir()
    corpus.files.append(FileCase("directory_as_file", "images", day3, "unreadable", "unreadable_file"))
    home.raw_file(day3, "rankings").write_bytes(gzip.compress(b"", mtime=0))
    corpus.files.append(FileCase("gzip_of_nothing", "rankings", day3, "empty", None))
    home.raw_file(day3, "downloads").write_bytes(rng.bytes(2048))
    corpus.files.append(FileCase("random_bytes", "downloads", day3, "unreadable", "unreadable_file"))

    # raw-zone entries that are not days: reported in raw_zone_problems, never read, never fatal
    logs = home.raw_logs
    hidden_users = [g3.user() for _ in range(3)]
    corpus.raw_zone_user_ids = [u["user_id"] for u in hidden_users]
    for name, user in zip(("dt=2023-02-30", "dt=2023-2-1", "dt=garbage"), hidden_users):
        (logs / name).mkdir()
        _write_gz(logs / name / "users.jsonl.gz", _dump(user) + b"\n")
        corpus.raw_zone[f"raw/app_logs/{name}"] = "invalid_day_name"
    (logs / f"dt={_next_day(day, 5)}").write_bytes(b"not a folder")
    corpus.raw_zone[f"raw/app_logs/dt={_next_day(day, 5)}"] = "not_a_folder"
    exports = outside / "exports"
    exports.mkdir()
    _write_gz(exports / "users.jsonl.gz", _dump(g3.user(user_id=corpus.outside_user_id)) + b"\n")
    (logs / f"dt={_next_day(day, 6)}").symlink_to(exports, target_is_directory=True)
    corpus.raw_zone[f"raw/app_logs/dt={_next_day(day, 6)}"] = "link_outside_raw_zone"
    (logs / f"dt={_next_day(day, 7)}").symlink_to(outside / "no-such-folder")
    corpus.raw_zone[f"raw/app_logs/dt={_next_day(day, 7)}"] = "link_outside_raw_zone"
    (logs / "README.txt").write_text("app exports land here\n")
    corpus.raw_zone["raw/app_logs/README.txt"] = "unexpected_entry"
    os.mkdir(os.fsencode(logs / "dt=") + b"\xff\xfe")
    corpus.raw_zone["raw/app_logs/dt=\\xff\\xfe"] = "invalid_day_name"
    (home.raw_day(day) / "rankings.jsonl").write_bytes(b"{}\n")
    corpus.raw_zone[f"raw/app_logs/dt={day}"] = "unexpected_file"

    corpus.outside_sha256 = sorted(hashlib.sha256(p.read_bytes()).hexdigest()
                                   for p in outside.rglob("*") if p.is_file())
    return corpus


# --------------------------------------------------------------------------- hostile user-given outputs and queries
@dataclass(frozen=True)
class OutputCase:
    """A user-given output path that must be refused (``words`` in the message) with ``guarded`` left unchanged."""

    name: str
    path: Path
    words: str
    guarded: Path          # what a careless writer would have replaced or written through


def plant_hostile_outputs(home: DataHome, scratch: Path) -> list[OutputCase]:
    """Output targets an adversary passes to ``query --output`` / ``export --output`` (``home`` holds a published version).

    Devices, links, FIFOs, sockets, folders, the data home's own files (directly, through a linked folder,
    through ``..``) and a path whose folder is a file. Everything is made under ``scratch``.
    """
    import socket

    scratch.mkdir(parents=True, exist_ok=True)
    victim = scratch / "victim.txt"
    victim.write_text("not the tool's file\n")
    (scratch / "to_victim").symlink_to(victim)
    (scratch / "dangling").symlink_to(scratch / "created-through-a-link.csv")
    (scratch / "a_folder").mkdir()
    os.mkfifo(scratch / "a_fifo")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(scratch / "a_socket"))
    sock.close()
    (scratch / "into_home").symlink_to(home.warehouse)
    partition = next(home.warehouse.rglob("*.parquet"))
    relative_up = Path(os.path.relpath(partition, scratch))
    return [
        OutputCase("dev_null", Path("/dev/null"), "character device", Path("/dev/null")),
        OutputCase("dev_stdout_link", Path("/dev/stdout"), "symbolic link", Path("/dev/stdout")),
        OutputCase("symlink_to_file", scratch / "to_victim", "symbolic link", victim),
        OutputCase("dangling_symlink", scratch / "dangling", "symbolic link", scratch / "created-through-a-link.csv"),
        OutputCase("directory", scratch / "a_folder", "directory", scratch / "a_folder"),
        OutputCase("fifo", scratch / "a_fifo", "FIFO", scratch / "a_fifo"),
        OutputCase("socket", scratch / "a_socket", "socket", scratch / "a_socket"),
        OutputCase("warehouse_partition", partition, "inside the data home", partition),
        OutputCase("published_sidecar", next(home.datasets.rglob("*.parquet")), "inside the data home",
                   next(home.datasets.rglob("*.parquet"))),
        OutputCase("new_file_in_home_root", home.root / "result.csv", "inside the data home", home.root / "result.csv"),
        OutputCase("through_linked_folder", scratch / "into_home" / "x.csv", "inside the data home",
                   home.warehouse / "x.csv"),
        OutputCase("dot_dot_into_home", scratch / relative_up, "inside the data home", partition),
        OutputCase("folder_is_a_file", victim / "x.csv", "not a folder", victim),
    ]


# Queries an adversary runs: (name, SQL, words the refusal / failure must contain). The `.tmp` ones are run
# from a working directory holding `.tmp/secret.txt` (or `.tmp -> /etc`), the heavy ones under a small time limit.
HOSTILE_QUERIES = [
    ("read_cwd_tmp", "SELECT * FROM read_text('.tmp/secret.txt')", "Permission Error"),
    ("glob_cwd_tmp_link", "SELECT * FROM glob('.tmp/*')", "Permission Error"),
    ("read_cwd_tmp_absolute", "SELECT * FROM read_text('{cwd}/.tmp/secret.txt')", "Permission Error"),
    ("never_ending_count", "SELECT count(*) FROM range(10000000000000::BIGINT)", "time limit"),
    ("never_ending_cross_join", "SELECT count(*) FROM range(10000000) a, range(10000000) b", "time limit"),
]


# ---------------------------------------------------------------------------- look-alike prompts

# One prompt typed by different users with invisible characters and letters from other scripts mixed in:
# they must share one prompt key (so no two of them sit in different splits) while each caption stays as typed.
LOOKALIKE_PROMPTS = (
    "a red circle on white",
    "a red\u200b circle on white",             # zero-width space (the reported leak)
    "a red\u200d circle\u200c on white",       # zero-width joiner / non-joiner
    "a red circle\u2060 on\u00ad white",       # word joiner, soft hyphen
    "a red\ufe0f circle on white\U000e0041",   # variation selector, tag character
    "a r\u0435d \u0441ircle \u043en white",    # Cyrillic e, c, o
    "a red circle \u03bfn wh\u0456te",         # Greek omicron, Cyrillic i
)


@dataclass
class LookalikeCase:
    """The rankings typed with look-alike prompts, ranking id -> the prompt as typed."""

    day: str
    prompts: dict[int, str] = field(default_factory=dict)


def plant_lookalike_prompts(home: DataHome, seed: int = 0, corpus: Corpus | None = None) -> LookalikeCase:
    """Append, to the first raw day, one new user per look-alike prompt with two images and one ranking.

    With ``corpus`` (planted first), its expected line counts grow by the lines added here.
    """
    rng = np.random.default_rng(seed + 1)
    day = home.raw_days()[0]
    gen = _Lines(day, rng, 0, ["", ""])  # every ranking below names its own two images
    gen.next_id = ID_BASE + 50_000
    added: dict[str, list[bytes]] = {"users": [], "images": [], "rankings": []}
    case = LookalikeCase(day=day)
    for prompt in LOOKALIKE_PROMPTS:
        user = gen.user(email=f"lookalike{gen.next_id}@example.org", name="Look Alike")
        gen.user_id = user["user_id"]
        images = [gen.image(prompt=prompt, user_id=user["user_id"]) for _ in range(2)]
        for row in images:
            (home.raw_images / f"{row['image_uid']}.png").write_bytes(_encode(noise_image(rng), "PNG"))
        ranking = gen.ranking(prompt=prompt, user_id=user["user_id"], image_0_uid=images[0]["image_uid"],
                              image_1_uid=images[1]["image_uid"], best_image_uid=images[0]["image_uid"])
        added["users"].append(_dump(user))
        added["images"].extend(_dump(r) for r in images)
        added["rankings"].append(_dump(ranking))
        case.prompts[ranking["ranking_id"]] = prompt
    for table, lines in added.items():
        data = _read_gz(home.raw_file(day, table))
        if data and not data.endswith(b"\n"):
            data += b"\n"
        _write_gz(home.raw_file(day, table), data + b"".join(line + b"\n" for line in lines))
        if corpus is not None and (day, table) in corpus.expected_lines:
            corpus.expected_lines[(day, table)] += len(lines)
    return case
