"""The ingest's limits (:class:`IngestConfig`) and the counts of one day (:class:`IngestReport`, per file
:class:`TableReport`)."""
from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field

from formats.settings import MAX_PROCESSES, check_fields, knob, quoted, utc_naive
from pipelines.ingest import parse as rp

OUTPUT_DATASETS = ("users", "images", "rankings", "downloads", "quarantine", "ingest_files")


@dataclass(frozen=True)
class IngestConfig:
    """Limits of the daily ingest (the rules that use them: ``parse``, ``reader``, ``references``)."""

    max_line_bytes: int = knob(1 << 20, "longer lines -> line_too_long (bytes)", min=1)
    max_file_bytes: int = knob(4 << 30, "decompressed bytes read from one raw file; the rest is not read and the "
                                        "file is quarantined as unreadable_file (a gzip bomb)", min=1)
    max_file_lines: int = knob(50_000_000, "lines read from one raw file; the rest is not read and the file is "
                                           "quarantined as unreadable_file", min=1)
    max_prompt_chars: int = knob(2000, "longer prompt / negative_prompt -> prompt_too_long (characters)", min=1)
    max_name_chars: int = knob(256, "longest model_id / scheduler_cls (characters)", min=1)
    max_id: int = knob(2**53, "ids above this -> invalid_value (JSON-safe integers)", min=1)
    min_gs: float = knob(0.0, "lowest accepted guidance scale")
    max_gs: float = knob(50.0, "highest accepted guidance scale")
    earliest_created_at: str = knob("2022-01-01 00:00:00", "created_at before this -> bad_timestamp (naive UTC, as the "
                                                           "app's timestamps; a value with an offset, `...+02:00` or "
                                                           "`...Z`, is read as the same instant in UTC)",
                                    form="instant")
    future_tolerance_days: int = knob(2, "created_at at/after the end of the partition day + this many days -> "
                                         "bad_timestamp", min=0, max=3650)
    workers: int = knob(2, "processes for a large day (lines split between them by primary key); output does not "
                           "depend on it", min=1, max=MAX_PROCESSES, output=False)
    parallel_min_bytes: int = knob(16 << 20, "compressed raw bytes of a day from which the worker processes are used",
                                   min=1, output=False)
    late_image_days: int = knob(2, "a ranking/download may name an image first exported up to this many days later "
                                   "(0: none)", min=0, max=30)

    def __post_init__(self) -> None:
        check_fields(self)
        if not self.min_gs <= self.max_gs:
            raise ValueError(f"IngestConfig.min_gs {quoted(self.min_gs)} must not exceed max_gs {quoted(self.max_gs)}")
        self.earliest()

    def earliest(self) -> dt.datetime:
        """``earliest_created_at`` as the app's timestamps are: naive UTC. A value with an offset
        (``...+02:00``, ``...Z``) is the same instant in UTC: every line's created_at is naive, and
        comparing it with an aware bound raised a TypeError on every line (review rev21a)."""
        try:
            earliest = utc_naive(self.earliest_created_at)   # also how the version reads it (Knob.canonical)
        except (TypeError, ValueError, OverflowError):
            raise ValueError(f"IngestConfig.earliest_created_at {quoted(self.earliest_created_at)} is not an ISO "
                             "timestamp of years 1-9999 (naive is UTC, as the app's timestamps are)") from None
        return earliest

    def timestamp_range(self, day: dt.date) -> tuple[dt.datetime, dt.datetime | PastTheCalendar]:
        """[earliest, end of ``day`` + tolerance) for ``created_at``. The end of a day near 9999-12-31 may
        lie past the calendar: then every timestamp is before it (:class:`PastTheCalendar`)."""
        try:
            end = dt.datetime.combine(day, dt.time()) + dt.timedelta(days=1 + self.future_tolerance_days)
        except OverflowError:
            end = PastTheCalendar()
        return self.earliest(), end

    def line_parser(self, table: str, day: dt.date) -> rp.LineParser:
        """The line parser of ``table`` for the lines of ``day`` under these limits (the ingest's, and the look at
        a quarantined line of another day's: both must read a line alike)."""
        return rp.LineParser(table, max_id=self.max_id, max_prompt_chars=self.max_prompt_chars,
                             max_name_chars=self.max_name_chars, gs_range=(self.min_gs, self.max_gs),
                             ts_range=self.timestamp_range(day))


class PastTheCalendar:
    """An exclusive upper bound past every ``datetime`` (the created_at window of a day whose end plus the
    tolerance lies after 9999-12-31): ``x < bound`` is true and ``x >= bound`` false for any datetime ``x``.
    Before this, such a day's ingest died with an OverflowError (review rev21a)."""

    def __gt__(self, other: object) -> bool:
        return True if isinstance(other, dt.datetime) else NotImplemented

    def __le__(self, other: object) -> bool:
        return False if isinstance(other, dt.datetime) else NotImplemented

    def __str__(self) -> str:
        return "the end of 9999-12-31"

    __repr__ = __str__


def shift_day(day: dt.date, days: int) -> dt.date:
    """``day`` moved by ``days``, held to the calendar (0001-01-01 .. 9999-12-31): a window reaching
    past either end ends there, since no day lies beyond (review rev21a: days of year 1 and of
    9999-12-29..31 raised OverflowError in the late-image and export-verify windows)."""
    try:
        return day + dt.timedelta(days=days)
    except OverflowError:
        return dt.date.max if days > 0 else dt.date.min


@dataclass
class TableReport:
    """What happened to one raw file of one day."""

    table: str
    file: str
    status: str = "ok"
    file_sha256: str | None = None
    file_bytes: int = 0
    lines_in: int = 0
    accepted: int = 0
    quarantined: int = 0                       # quarantined lines (identical ones share a row)
    accepted_late_image: int = 0               # accepted rows whose image only a later day's export has
    late_image_days: list[str] = field(default_factory=list)   # later days whose images export was used
    reasons: dict[str, int] = field(default_factory=dict)  # every quarantine row, file-level included
    error: str | None = None
    # not a field (outside asdict / the report's JSON): ``RawFile.unread_as`` of the file read, "missing" /
    # "not-a-file" where the path was no regular file when read, "link-out-of-zone" for a link out of the raw zone
    # (``IngestReport.read_digests``)
    unread_as = None

    @property
    def reconciled(self) -> bool:
        return self.lines_in == self.accepted + self.quarantined


@dataclass
class IngestReport:
    """Counts of one ingested day; ``metadata()`` gives JSON-able values for the orchestrator."""

    day: str
    tables: dict[str, TableReport]
    outputs: dict[str, str]
    seconds: float = 0.0
    raw_zone_problems: list[str] = field(default_factory=list)   # one line per skipped raw-zone entry
    quarantine_rows: int = 0          # rows of the quarantine file (identical bad lines share a row)
    refreshed: dict[str, "IngestReport"] = field(default_factory=dict)  # other days ingested again (pipelines.ingest.day)

    @property
    def lines_in(self) -> int:
        return sum(t.lines_in for t in self.tables.values())

    @property
    def accepted(self) -> int:
        return sum(t.accepted for t in self.tables.values())

    @property
    def quarantined(self) -> int:
        return sum(t.quarantined for t in self.tables.values())

    @property
    def reconciled(self) -> bool:
        return all(t.reconciled for t in self.tables.values()) and all(r.reconciled for r in self.refreshed.values())

    @property
    def accepted_late_image(self) -> int:
        return sum(t.accepted_late_image for t in self.tables.values())

    @property
    def late_image_days(self) -> list[str]:
        """The later days whose images export this day's output depends on (inputs of the day, too)."""
        return sorted({d for t in self.tables.values() for d in t.late_image_days})

    def read_digests(self) -> dict[str, str | None]:
        """Per table, the digest of the raw file as this ingest read it, as ``pipelines.provenance.RawDigests``
        gives one: its sha256 (hashed from the bytes read), ``missing``, ``not-a-file`` (a path that was no regular
        file when read: a folder, a FIFO; a dangling link is ``missing``, review rev27e), ``link-out-of-zone`` (a link
        out of the raw zone, refused unread, review rev27f), or None where it cannot tell (a file it could not
        open): the day's version names these, not the files as they are when it is recorded (review rev27b)."""
        return {table: report.file_sha256 if report.file_sha256 is not None
                else "missing" if report.status == "missing" else report.unread_as
                for table, report in self.tables.items()}

    def quarantine_by_reason(self) -> dict[str, int]:
        """Quarantine rows per reason over all tables (file-level rows included), sorted by reason."""
        total: dict[str, int] = {}
        for report in self.tables.values():
            for reason, count in report.reasons.items():
                total[reason] = total.get(reason, 0) + count
        return dict(sorted(total.items()))

    def reasons_markdown(self) -> str:
        """Markdown table of quarantine rows by table and reason."""
        lines = ["| table | reason | rows |", "|---|---|---:|"]
        for table, report in self.tables.items():
            for reason, count in sorted(report.reasons.items()):
                lines.append(f"| {table} | {reason} | {count} |")
        if len(lines) == 2:
            lines.append("| - | (none) | 0 |")
        return "\n".join(lines)

    def asset_metadata(self, dataset: str) -> dict[str, object]:
        """Metadata for one output dataset: its own counts for a table, the totals for quarantine/ingest_files."""
        if dataset in self.tables:
            report = self.tables[dataset]
            return {
                "day": self.day,
                "dagster/row_count": report.accepted,
                "rows_accepted": report.accepted,
                "rows_quarantined": report.quarantined,
                "accepted_late_image": report.accepted_late_image,
                "lines_in": report.lines_in,
                "reconciled": report.reconciled,
                "file": report.file,
                "file_status": report.status,
                "file_sha256": report.file_sha256,
                "quarantine_by_reason": dict(report.reasons),
                "path": self.outputs.get(dataset),
            }
        meta = self.metadata()
        meta.pop("files", None)
        meta["path"] = self.outputs.get(dataset)
        if dataset == "quarantine":
            meta["dagster/row_count"] = self.quarantine_rows
        elif dataset == "ingest_files":
            meta["dagster/row_count"] = len(self.tables)
        return meta

    def metadata(self) -> dict[str, object]:
        """JSON-able summary: totals, per-table counts, reasons, file statuses, markdown table."""
        return {
            "day": self.day,
            "lines_in": self.lines_in,
            "rows_accepted": self.accepted,
            "rows_quarantined": self.quarantined,
            "file_problems": sum(1 for t in self.tables.values() if t.status in ("missing", "unreadable")),
            "reconciled": self.reconciled,
            "accepted_by_table": {t: r.accepted for t, r in self.tables.items()},
            "accepted_late_image": self.accepted_late_image,
            "late_image_days": self.late_image_days,
            "refreshed_days": {d: {"accepted_late_image": r.accepted_late_image,
                                   "unknown_image_reference": r.quarantine_by_reason().get(rp.UNKNOWN_IMAGE_REFERENCE, 0)}
                               for d, r in sorted(self.refreshed.items())},
            "quarantined_by_table": {t: r.quarantined for t, r in self.tables.items()},
            "quarantine_by_reason": self.quarantine_by_reason(),
            "file_status": {t: r.status for t, r in self.tables.items()},
            "files": {t: asdict(r) for t, r in self.tables.items()},
            "outputs": dict(self.outputs),
            "seconds": round(self.seconds, 3),
            "quarantine_reasons_md": self.reasons_markdown(),
            "raw_zone_problems": list(self.raw_zone_problems),
        }



def parse_day(day: str) -> dt.date:
    """``YYYY-MM-DD`` -> date; errors name the value."""
    try:
        if len(day) != 10:
            raise ValueError
        return dt.date.fromisoformat(day)
    except (TypeError, ValueError):
        raise ValueError(f"day {day!r} is not a YYYY-MM-DD date") from None
