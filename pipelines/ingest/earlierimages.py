"""Which other days' exports a day's accepted rows take images from, so a change there reaches the day.

A ranking or download may name an image its own day's export lacks: an earlier day's export holds it (a
download from the app's history page, a ranking across midnight), or a later day's within the late window
(accepted late, counted in ``ingest_files.accepted_late_image``). A build from scratch resolves each such uid
against the raw zone as it is; so when an earlier day ``D`` is ingested (its own run, or a rewrite by another
day's), every later day ``L`` is ingested again when ``D``'s change changes what ``L``'s rows resolve to:

- an image ``L`` took from ``D`` is no longer held by ``D`` nor by any other export within ``L``'s reach
  (the app deleted it): the row becomes ``unknown_image_reference``;
- an image ``L`` took from an earlier day now moves to the late window, or one it took late is now held by
  ``D`` (an earlier day landed or was delivered again with it): the late count changes;
- an export ``L`` took an image from changed or left the raw zone meanwhile: the images it gave are resolved
  again, as from scratch.

An image that only moves to another earlier holder changes nothing and ``L`` is left alone.

Per later day, the record of where each such uid came from (its resolver day, and that day's images file by
``stat``) is cached, keyed by the ``stat`` of ``L``'s ``rankings`` and ``downloads`` partitions: in
``cache/earlier_image_days.json`` when it holds at most ``INLINE_UIDS`` uids, else in
``cache/earlier_image_uids/dt=DAY.parquet`` (read only when an ingest of one of its resolver days looks at it).
A missing, stale or unreadable record is worked out from the partitions and the raw zone as they are, and
``L`` is ingested again when they disagree (a uid in no export within its reach, or another late count than
``ingest_files`` records), so the decision never depends on the cache being there. Disposable.
"""
from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from formats.files import write_bytes_atomic, write_parquet_atomic
from formats.home import DataHome
from pipelines.ingest.config import IngestConfig
from pipelines.ingest.references import REFERENCE_FIELDS, late_window_end
from pipelines.ingest.uidindex import raw_image_uids, stat_key

_VERSION = "2"
_DAYS_CACHE = "earlier_image_days.json"
_SCHEMA = pa.schema([pa.field("day", pa.string(), nullable=False), pa.field("image_uid", pa.string(), nullable=False)])
INLINE_UIDS = 64       # a record of at most this many uids is kept in the JSON file (no file of its own to read)
_JSON_ERRORS = (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError)


def record_path(home: DataHome, day: str) -> Path:
    return home.cache / "earlier_image_uids" / f"dt={day}.parquet"


def _partitions_stat(home: DataHome, day: str) -> str | None:
    """The stat of ``day``'s reference-holding partitions (None when one is missing: never ingested)."""
    stats = [stat_key(home.partition_file(table, day)) for table in REFERENCE_FIELDS]
    return None if any(s is None for s in stats) else "|".join(stats)  # type: ignore[arg-type]


def _raw_stat(home: DataHome, day: str) -> str:
    return stat_key(home.raw_file(day, "images")) or "gone"


class Stale(Exception):
    """The day's partitions cannot be read, or disagree with the raw zone: ingest it again."""


class _Reach:
    """Resolving a later day's uids the way its reference check does: its own export, earlier days newest
    first, then its late window in order."""

    def __init__(self, home: DataHome, day: str, days: Sequence[str], config: IngestConfig) -> None:
        self.home, self.day, self.config = home, day, config
        self.earlier = sorted((d for d in days if d < day), reverse=True)
        last = late_window_end(day, config.late_image_days)
        self.late = sorted(d for d in days if day < d <= last)

    def resolve(self, uids: set[str], own: bool = True) -> tuple[dict[str, str], set[str]]:
        """(uid -> the other day whose export gives it, the uids no export within reach holds); a uid the
        day's own export holds is in neither (only looked for when ``own``)."""
        left = set(uids)
        if own and left:
            left -= raw_image_uids(self.home, self.day, left, self.config)
        found: dict[str, str] = {}
        for other in [*self.earlier, *self.late]:
            if not left:
                break
            for uid in raw_image_uids(self.home, other, left, self.config):
                found[uid] = other
            left -= found.keys()
        return found, left


def _read_rows(home: DataHome, day: str) -> list[pa.Table]:
    try:
        return [pq.read_table(home.partition_file(table, day), columns=list(fields))
                for table, fields in REFERENCE_FIELDS.items()]
    except (OSError, pa.ArrowException) as exc:
        raise Stale(str(exc)) from None


def _late_rows(tables: list[pa.Table], late: set[str]) -> int:
    """Accepted rows naming an image taken late (as the reference check counts ``accepted_late_image``)."""
    if not late:
        return 0
    value_set = pa.array(sorted(late), pa.string())
    count = 0
    for table in tables:
        hit = None
        for column in table.columns:
            found = pc.fill_null(pc.is_in(column, value_set=value_set), False)
            hit = found if hit is None else pc.or_(hit, found)
        if hit is not None:
            count += pc.sum(hit).as_py() or 0
    return count


def _recorded_late_rows(home: DataHome, day: str) -> int:
    try:
        files = pq.read_table(home.partition_file("ingest_files", day), columns=["accepted_late_image"])
    except (OSError, pa.ArrowException) as exc:
        raise Stale(str(exc)) from None
    return pc.sum(files.column(0)).as_py() or 0


class EarlierImages:
    """The later days' records, and the look at them when an earlier day is ingested (:meth:`changes`)."""

    def __init__(self, home: DataHome, days: Sequence[str], config: IngestConfig) -> None:
        self.home, self.days, self.config = home, days, config
        self.path = home.cache / _DAYS_CACHE
        self.known: dict[str, dict] = {}
        try:
            known = json.loads(self.path.read_text(encoding="utf-8"))
            if isinstance(known, dict) and known.get("version") == _VERSION and isinstance(known.get("days"), dict):
                self.known = known["days"]
        except _JSON_ERRORS:
            pass   # worked out again
        self.changed = False
        self.raw_stats: dict[str, str] = {}

    def raw_stat(self, day: str) -> str:
        if day not in self.raw_stats:
            self.raw_stats[day] = _raw_stat(self.home, day)
        return self.raw_stats[day]

    # ------------------------------------------------------------------ records
    def _entry(self, later: str, stat: str) -> dict | None:
        entry = self.known.get(later)
        if not (isinstance(entry, dict) and entry.get("stat") == stat and isinstance(entry.get("from"), dict)
                and all(isinstance(k, str) and isinstance(v, str) for k, v in entry["from"].items())):
            return None
        return entry

    def _uids(self, later: str, entry: dict, stat: str) -> dict[str, str] | None:
        """The record's uid -> resolver day; None when it cannot be read as this module wrote it."""
        inline = entry.get("uids")
        if inline is not None:
            if isinstance(inline, list) and all(isinstance(p, list) and len(p) == 2 and all(isinstance(x, str) for x in p)
                                                for p in inline):
                return {uid: day for day, uid in inline}
            return None
        path = record_path(self.home, later)
        try:
            meta = pq.read_schema(path).metadata or {}
            if meta.get(b"version") != _VERSION.encode() or meta.get(b"stat") != stat.encode():
                return None
            table = pq.read_table(path)
            if not table.schema.equals(_SCHEMA, check_metadata=False):
                return None
            return dict(zip(table.column("image_uid").to_pylist(), table.column("day").to_pylist()))
        except (OSError, pa.ArrowException, RecursionError):
            return None

    def _store(self, later: str, stat: str, uids: dict[str, str]) -> None:
        if _partitions_stat(self.home, later) != stat:
            return   # rewritten meanwhile: the record would describe other partitions
        days = sorted(set(uids.values()))
        entry: dict = {"stat": stat, "from": {d: self.raw_stat(d) for d in days}}
        pairs = sorted((day, uid) for uid, day in uids.items())
        if len(pairs) <= INLINE_UIDS:
            entry["uids"] = [list(p) for p in pairs]
        else:
            table = pa.table({"day": [d for d, _ in pairs], "image_uid": [u for _, u in pairs]}, schema=_SCHEMA)
            path = record_path(self.home, later)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                write_parquet_atomic(table.replace_schema_metadata({"version": _VERSION, "stat": stat}), path)
            except OSError:
                return   # a cache: a full disk or a read-only cache folder only costs speed
        self.known[later] = entry
        self.changed = True

    def _work_out(self, later: str, stat: str) -> None:
        """The record of ``later`` from its partitions and the raw zone as they are; :class:`Stale` when they
        disagree (a uid no export within reach holds, another late count than its ``ingest_files``)."""
        tables = _read_rows(self.home, later)
        named: set[str] = set()
        for table in tables:
            for column in table.columns:
                named.update(pc.unique(column.drop_null()).to_pylist())
        found, missing = _Reach(self.home, later, self.days, self.config).resolve(named)
        if missing:
            raise Stale(f"{len(missing)} image uid(s) its accepted rows name are in no export within its reach")
        late = {uid for uid, day in found.items() if day > later}
        if _late_rows(tables, late) != _recorded_late_rows(self.home, later):
            raise Stale("its late-image count is not what the exports give now")
        self._store(later, stat, found)

    # ------------------------------------------------------------------ the look at later days
    def changes(self, day: str, later: Collection[str]) -> list[str]:
        """The days of ``later`` (after ``day``, which was just ingested) to ingest again: see the module's
        docstring. The uids to look for in ``day``'s export are looked up in its uid index together."""
        stale: list[str] = []
        pending: list[tuple[str, str, dict[str, str], set[str]]] = []
        for other in later:
            stat = _partitions_stat(self.home, other)
            if stat is None:
                continue   # never ingested: its own ingest checks its references
            entry = self._entry(other, stat)
            uids = self._uids(other, entry, stat) if entry is not None else None
            if uids is None:
                try:
                    self._work_out(other, stat)
                except Stale:
                    stale.append(other)
                continue
            moved = {d for d, raw in entry["from"].items() if d == day or self.raw_stat(d) != raw}
            ask = {uid for uid, d in uids.items() if d in moved or d > other}
            if ask:
                pending.append((other, stat, uids, ask))
        if pending:
            wanted = set().union(*(ask for *_, ask in pending))
            held = raw_image_uids(self.home, day, wanted, self.config)   # one read of the day's uid index
            for other, stat, uids, ask in pending:
                if self._changed(other, stat, uids, ask, held, day):
                    stale.append(other)
        return sorted(stale)

    def _changed(self, later: str, stat: str, uids: dict[str, str], ask: set[str], held: set[str], day: str) -> bool:
        """Whether ``later``'s rows resolve otherwise now: ``ask`` are the uids whose resolver changed (or that it
        took late); ``held`` the ones ``day``'s export holds."""
        reach = _Reach(self.home, later, self.days, self.config)
        now = dict(uids)
        again: set[str] = set()
        for uid in ask:
            was = uids[uid]
            if was > later:                       # taken late: held by the earlier day now?
                if uid in held:
                    return True
                if was != day and self.raw_stat(was) == self.known[later]["from"].get(was):
                    continue
            again.add(uid)
        if again:
            found, missing = reach.resolve(again, own=False)
            if missing:
                return True
            for uid, resolver in found.items():
                if (resolver > later) != (uids[uid] > later):
                    return True                   # moved between an earlier day and the late window
                now[uid] = resolver
        if now != uids or any(self.raw_stat(d) != self.known[later]["from"].get(d) for d in set(now.values())):
            self._store(later, stat, now)
        return False

    def save(self) -> None:
        """Write the days' cache back when it learnt something (never required for correctness)."""
        if self.changed:
            body = {"version": _VERSION, "days": self.known}
            try:
                write_bytes_atomic(self.path, (json.dumps(body, sort_keys=True) + "\n").encode())
            except OSError:
                pass
            self.changed = False
