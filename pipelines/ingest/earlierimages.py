"""The images a day's accepted rows take from earlier days' exports, by the day whose export held each.

A ranking or download may name an image first exported on an earlier day (a download from the app's history
page, a ranking across midnight); the reference check accepts it when any earlier day's raw images export
holds the uid. When such an earlier day is delivered again without that image (the app deleted it), a build
from scratch quarantines the later day's row (``unknown_image_reference``), so the later day must be ingested
again with the earlier one (:func:`pipelines.ingest.day.refresh_later_days`).

Per ingested day, ``cache/earlier_image_uids/dt=DAY.parquet`` records each such uid with the day that held it
(the latest earlier day whose export has it, as the reference check searches), keyed by the stat of the day's
``rankings`` and ``downloads`` partitions: a day is read again only after its own ingest rewrote them; and
``cache/earlier_image_days.json`` the earlier days each record names, under the same stat. When a day ``D`` is
ingested, each later day costs one ``stat`` (two files) and only the records that name ``D`` are read, their
uids looked up in ``D``'s uid index together (so ingesting every day of a year again reads no record per pair
of days). Disposable: without it each later day is worked out once from its partitions (its
references, its own export, the earlier days' uid indexes newest first), and a later day whose accepted rows
name an image that no export within its reach holds any more is found that way too.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from formats.files import write_bytes_atomic, write_parquet_atomic
from formats.home import DataHome
from pipelines.ingest.config import IngestConfig
from pipelines.ingest.references import REFERENCE_FIELDS, late_window_end
from pipelines.ingest.uidindex import raw_image_uids, stat_key

_VERSION = "1"
_DAYS_CACHE = "earlier_image_days.json"
_SCHEMA = pa.schema([pa.field("day", pa.string(), nullable=False), pa.field("image_uid", pa.string(), nullable=False)])


def record_path(home: DataHome, day: str) -> Path:
    return home.cache / "earlier_image_uids" / f"dt={day}.parquet"


def _partitions_stat(home: DataHome, day: str) -> str | None:
    """The stat of ``day``'s reference-holding partitions (None when one is missing: never ingested)."""
    stats = [stat_key(home.partition_file(table, day)) for table in REFERENCE_FIELDS]
    return None if any(s is None for s in stats) else "|".join(stats)  # type: ignore[arg-type]


class Stale(Exception):
    """The day's partitions cannot be read, or name an image no export within its reach holds: ingest it again."""


def _referenced(home: DataHome, day: str) -> set[str]:
    named: set[str] = set()
    try:
        for table, fields in REFERENCE_FIELDS.items():
            rows = pq.read_table(home.partition_file(table, day), columns=list(fields))
            for column in rows.columns:
                named.update(pc.unique(column.drop_null()).to_pylist())
    except (OSError, pa.ArrowException) as exc:
        raise Stale(str(exc)) from None
    return named


def _work_out(home: DataHome, day: str, days: Sequence[str], config: IngestConfig) -> pa.Table:
    """``day``'s record from its partitions and the raw zone as it is now; :class:`Stale` when a uid its accepted
    rows name is in no export within its reach (its own, an earlier day's, the late window's)."""
    left = _referenced(home, day)
    if left:
        left -= raw_image_uids(home, day, left, config)
    found_days: list[str] = []
    found_uids: list[str] = []
    for earlier in sorted((d for d in days if d < day), reverse=True):
        if not left:
            break
        found = raw_image_uids(home, earlier, left, config)
        left -= found
        found_days += [earlier] * len(found)
        found_uids += sorted(found)
    last = late_window_end(day, config.late_image_days)
    for later in sorted(d for d in days if day < d <= last):
        if not left:
            break
        left -= raw_image_uids(home, later, left, config)   # accepted late: refresh_late_references' business
    if left:
        raise Stale(f"{len(left)} image uid(s) its accepted rows name are in no export within its reach")
    return pa.table({"day": pa.array(found_days, pa.string()), "image_uid": pa.array(found_uids, pa.string())},
                    schema=_SCHEMA)


class EarlierImages:
    """Per ingested day, which earlier days' exports its accepted rows take images from (``cache/
    earlier_image_days.json``: the days only, keyed by the partitions' stat) and the uids (one Parquet file a
    day): an ingest looks at every later day by one ``stat`` and reads the uids only of those that name it."""

    def __init__(self, home: DataHome, days: Sequence[str], config: IngestConfig) -> None:
        self.home, self.days, self.config = home, days, config
        self.path = home.cache / _DAYS_CACHE
        try:
            known = json.loads(self.path.read_text(encoding="utf-8"))
            self.known: dict[str, dict] = known["days"] if known.get("version") == _VERSION else {}
            if not isinstance(self.known, dict):
                self.known = {}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            self.known = {}
        self.changed = False

    def uids_from(self, later: str, day: str) -> set[str] | None:
        """The uids ``later``'s accepted rows take from ``day``'s export (empty: none); None when ``later`` must be
        ingested again (:class:`Stale`: unreadable, or naming an image no export in its reach holds now)."""
        stat = _partitions_stat(self.home, later)
        if stat is None:
            return set()   # never ingested: its own ingest checks its references
        entry = self.known.get(later)
        if isinstance(entry, dict) and entry.get("stat") == stat and isinstance(entry.get("from"), list):
            if day not in entry["from"]:
                return set()
            path = record_path(self.home, later)
            try:
                if (pq.read_schema(path).metadata or {}).get(b"stat") == stat.encode():
                    return set(pq.read_table(path, filters=[("day", "=", day)]).column("image_uid").to_pylist())
            except (OSError, pa.ArrowException):
                pass   # worked out again below
        try:
            record = _work_out(self.home, later, self.days, self.config)
        except Stale:
            return None
        if _partitions_stat(self.home, later) == stat:   # not rewritten meanwhile: the record describes these partitions
            path = record_path(self.home, later)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                write_parquet_atomic(record.replace_schema_metadata({"version": _VERSION, "stat": stat}), path)
                self.known[later] = {"stat": stat, "from": sorted(set(record.column("day").to_pylist()))}
                self.changed = True
            except OSError:
                pass   # a cache: a full disk or a read-only cache folder only costs speed
        return set(record.filter(pc.equal(record.column("day"), day)).column("image_uid").to_pylist())

    def save(self) -> None:
        """Write the days' cache back when it learnt something (never required for correctness)."""
        if self.changed:
            body = {"version": _VERSION, "days": self.known}
            try:
                write_bytes_atomic(self.path, (json.dumps(body, sort_keys=True) + "\n").encode())
            except OSError:
                pass
            self.changed = False
