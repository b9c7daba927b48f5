"""Planted defects: line-level damage to export files and damaged image blobs, each recorded.

Every planted defect becomes one ground-truth row (defect, table, dt, line_number, key, expected,
detail); ``expected`` is the treatment a correct pipeline applies:
``quarantine:<reason>`` (ingest), ``reject:<reason>`` (feature stage), ``decision:<reason>``
(curation) or ``accept``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

LINE_DEFECTS = {
    "malformed_json": "quarantine:malformed_json",
    "wrong_type": "quarantine:wrong_type",
    "duplicate_row": "quarantine:duplicate_row",
    "conflicting_primary_key": "quarantine:conflicting_primary_key",
    "unknown_image_reference": "quarantine:unknown_image_reference",
}
BLOB_DEFECTS = {
    "missing_blob": "reject:missing_blob",
    "empty_file": "reject:empty_file",
    "not_an_image": "reject:not_an_image",
    "truncated_image": "reject:truncated_image",
}
DECISIONS = {
    "banned_user": "decision:banned_user",
    "nsfw_prompt": "decision:nsfw_prompt",
    "content_filtered": "decision:content_filtered",
    "duplicate_ranking": "decision:duplicate_ranking",
    "late_arrival": "accept",
}
# Integer fields written as strings by the wrong_type defect, per table.
ID_FIELDS = {
    "users": ("user_id",),
    "images": ("image_id", "user_id", "seed"),
    "rankings": ("ranking_id", "user_id"),
    "downloads": ("download_id", "user_id"),
}
NOT_AN_IMAGE_BYTES = b"<?xml version=\"1.0\"?><Error><Code>AccessDenied</Code></Error>\n"


@dataclass(frozen=True)
class Record:
    """One planted defect, before its final line number is known."""

    defect: str
    key: str
    expected: str
    detail: str


class FileLines:
    """The lines of one export file under construction: replace, insert later, prepend, tag."""

    def __init__(self, table: str, day: str, texts: list[str]):
        self.table, self.day = table, day
        self.texts = list(texts)
        self.positions: list[float] = [float(i) for i in range(len(texts))]
        self.records: dict[int, list[Record]] = {}
        self.n_original = len(texts)

    def __len__(self) -> int:
        return len(self.texts)

    def add(self, text: str, position: float) -> int:
        """Add a line at a fractional position; returns its entry index."""
        self.texts.append(text)
        self.positions.append(position)
        return len(self.texts) - 1

    def later_position(self, entry: int, rng: np.random.Generator) -> float:
        """A random position after ``entry`` (strictly between two original lines)."""
        start = self.positions[entry]
        return float(start + 0.5 + rng.random() * max(0.0, (self.n_original - 1) - start))

    def tag(self, entry: int, record: Record) -> None:
        """Attach a ground-truth record to an entry."""
        self.records.setdefault(entry, []).append(record)

    def finish(self) -> tuple[list[str], list[dict]]:
        """Final line order and the ground-truth rows, with 1-based line numbers."""
        order = np.lexsort((np.arange(len(self.texts)), np.asarray(self.positions, dtype=np.float64)))
        line_of = np.empty(len(order), dtype=np.int64)
        line_of[order] = np.arange(1, len(order) + 1)
        rows = []
        for entry in sorted(self.records):
            for r in self.records[entry]:
                rows.append({"defect": r.defect, "table": self.table, "dt": self.day,
                             "line_number": int(line_of[entry]), "key": r.key, "expected": r.expected,
                             "detail": r.detail})
        return [self.texts[i] for i in order.tolist()], rows


def pick(available: np.ndarray, rate: float, rng: np.random.Generator, minimum: int = 1) -> np.ndarray:
    """Choose ``max(minimum, round(rate * n))`` indices among ``available`` (a bool mask), sorted."""
    candidates = np.flatnonzero(available)
    n = min(len(candidates), max(minimum, int(round(rate * len(available)))))
    if n <= 0:
        return np.zeros(0, dtype=np.int64)
    chosen = np.sort(rng.choice(candidates, size=n, replace=False))
    available[chosen] = False
    return chosen


def malformed(text: str, rng: np.random.Generator) -> tuple[str, str]:
    """A line that no JSON parser accepts: truncated mid-object, or trailing garbage."""
    if rng.random() < 0.5:
        cut = int(rng.integers(5, max(6, len(text) - 2)))
        broken, detail = text[:cut], f"truncated at character {cut}"
    else:
        broken, detail = text + "}", "trailing garbage"
    try:
        json.loads(broken)
    except json.JSONDecodeError:
        return broken, detail
    raise AssertionError(f"malformed line still parses: {broken!r}")


def wrong_type(text: str, table: str, rng: np.random.Generator) -> tuple[str, str]:
    """The same row with one integer field written as a string or the timestamp as epoch seconds."""
    row = json.loads(text)
    if rng.random() < 0.7:
        fields = ID_FIELDS[table]
        name = fields[int(rng.integers(0, len(fields)))]
        row[name] = str(row[name])
        return json.dumps(row), f"{name} as string"
    row["created_at"] = int(rng.integers(1_672_531_200, 1_704_067_200))
    return json.dumps(row), "created_at as integer epoch seconds"


def plant_lines(lines: FileLines, keys: list[str], eligible: np.ndarray, kinds: tuple[str, ...], rate: float,
                rng: np.random.Generator, conflicting: callable = None) -> np.ndarray:
    """Plant each line defect in ``kinds`` on disjoint eligible entries; return the entries used.

    ``eligible`` is updated in place: the entries used are no longer available to later calls.
    """
    available = eligible
    used = []
    for kind in kinds:
        if kind == "duplicate_row":
            chosen = pick(available, rate, rng)
            for entry in chosen.tolist():
                extra = lines.add(lines.texts[entry], lines.later_position(entry, rng))
                lines.tag(extra, Record(kind, keys[entry], LINE_DEFECTS[kind], "identical line exported twice"))
        elif kind == "malformed_json":
            chosen = pick(available, rate, rng)
            for entry in chosen.tolist():
                lines.texts[entry], detail = malformed(lines.texts[entry], rng)
                lines.tag(entry, Record(kind, keys[entry], LINE_DEFECTS[kind], detail))
        elif kind == "wrong_type":
            chosen = pick(available, rate, rng)
            for entry in chosen.tolist():
                lines.texts[entry], detail = wrong_type(lines.texts[entry], lines.table, rng)
                lines.tag(entry, Record(kind, keys[entry], LINE_DEFECTS[kind], detail))
        elif kind == "conflicting_primary_key":
            chosen = pick(available, rate, rng)
            for entry in chosen.tolist():
                other, detail = conflicting(entry)
                extra = lines.add(other, lines.later_position(entry, rng))
                record = Record(kind, keys[entry], LINE_DEFECTS[kind], detail)
                lines.tag(entry, record)
                lines.tag(extra, record)
        else:
            raise ValueError(f"unknown line defect {kind!r}")
        used.append(chosen)
    return np.concatenate(used) if used else np.zeros(0, dtype=np.int64)


def blob_detail(kind: str, variant: int) -> str:
    """Human-readable description of a blob defect."""
    return {
        "missing_blob": "no object for the image row",
        "empty_file": "zero-byte object",
        "truncated_image": "only the first half of the PNG bytes",
        "not_an_image": ("error document stored as the image" if variant % 2 == 0 else "PNG signature overwritten"),
    }[kind]


def damage_blob(png: bytes, kind: str, variant: int) -> bytes | None:
    """The stored bytes for a blob defect (None = the file is missing)."""
    if kind == "missing_blob":
        return None
    if kind == "empty_file":
        return b""
    if kind == "truncated_image":
        return png[:max(64, len(png) // 2)]
    if kind == "not_an_image":
        return NOT_AN_IMAGE_BYTES if variant % 2 == 0 else b"\x00JUNK\x00\x00\x00" + png[8:]
    raise ValueError(f"unknown blob defect {kind!r}")
