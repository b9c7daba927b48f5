"""Which other days' exports a day's rows take images from, so a change there reaches the day.

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

An image that only moves to another earlier holder changes nothing and ``L`` is left alone. A quarantined
``unknown_image_reference`` ranking of ``L`` counts as well: its detail names its first unknown image, so the
images it shows before that one are taken from those exports like an accepted row's (:func:`quarantined_first_uids`:
from the row's stored line when it is the whole line, else from ``L``'s raw rankings file at its line number);
one taken late is followed by ``refresh_late_references`` in :mod:`pipelines.ingest.day` (review rev24i).

Per later day, the record of where each such uid came from (its resolver day, and that day's images file by
``stat``) is cached, keyed by the ``stat`` of ``L``'s ``rankings`` and ``downloads`` partitions: in
``cache/earlier_image_days.json`` when it holds at most ``INLINE_UIDS`` uids, else in
``cache/earlier_image_uids/dt=DAY.parquet`` (read only when a look needs its uids: one of its resolver days'
images file changed or left the raw zone, or it took uids late and the looked-at day's export changed since the
last whole look at it, which the JSON file records per day as ``looked``: a record is always consistent with the
exports as they were at the last whole look of each day). A look holds at most about ``BATCH_UIDS`` uids of
records at once. A missing, stale or unreadable record is worked out from the partitions and the raw zone as they
are, the missing ones together (:func:`resolve_together`: each day's uid index read about once for all of them),
and ``L`` is ingested again when they disagree (a uid in no export within its reach, or another late count per
table than ``ingest_files`` records), so the decision never depends on the cache being there. A record of a day
found stale is dropped, so a crash before its rewrite leaves it worked out again. Disposable.

A pruned earlier day (its raw folder gone, its partitions kept) still gives the images its warehouse keeps
(:func:`pipelines.ingest.uidindex.reference_days`; its ``stat`` in a record is ``gone``): a record that took a uid
from it before the prune resolves it there again, and the later day is not ingested again (review rev29a).
"""
from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Collection, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from formats.files import write_bytes_atomic, write_parquet_atomic
from formats.home import DataHome
from pipelines.ingest import parse as rp
from pipelines.ingest.config import IngestConfig, parse_day
from pipelines.ingest.lines import iter_lines
from pipelines.ingest.reader import open_raw
from pipelines.ingest.references import REFERENCE_FIELDS, late_window_end
from pipelines.ingest.uidindex import raw_image_uids, reference_days, stat_key
from pipelines.provenance import writing_cache

_VERSION = "3"         # 3: the late uids counted ("late"), the days whose export every record was checked against ("looked")
DAYS_CACHE = "earlier_image_days.json"
_SCHEMA = pa.schema([pa.field("day", pa.string(), nullable=False), pa.field("image_uid", pa.string(), nullable=False)])
INLINE_UIDS = 64       # a record of at most this many uids is kept in the JSON file (no file of its own to read)
BATCH_UIDS = 16_384    # the later days' uids one look holds at once (records checked, or worked out, a batch at a time)
_JSON_ERRORS = (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError)
_MISSING_FIELD = re.compile(r"^(image_[0-3]_uid) = ")


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


def resolve_together(home: DataHome, wants: dict[str, set[str]], days: Sequence[str],
                     config: IngestConfig) -> dict[str, tuple[dict[str, str], set[str]]]:
    """Per day of ``wants`` (day -> uids its rows name): (uid -> the other day whose export gives it, the uids no
    export within its reach holds), each uid looked for as that day's reference check does (its own export, the
    earlier days newest first, then its late window in order; a uid its own export holds is in neither). All the
    days are resolved together: each day's uid index is read at most twice (once for the union of the uids still
    unresolved by the days it is own or earlier to, once for those of the days whose late window holds it)."""
    left = {day: set(uids) for day, uids in wants.items()}
    found: dict[str, dict[str, str]] = {day: {} for day in wants}
    if not wants:
        return {}
    top = max(wants)
    ends = {day: late_window_end(day, config.late_image_days) for day in wants}

    def look(other: str, asking: list[str]) -> None:
        wanted = set().union(*(left[day] for day in asking))
        if not wanted:
            return
        held = raw_image_uids(home, other, wanted, config)
        if not held:
            return
        for day in asking:
            hit = left[day] & held
            if hit:
                left[day] -= hit
                if day != other:
                    found[day].update(dict.fromkeys(hit, other))

    for other in sorted((d for d in days if d <= top), reverse=True):      # own, then earlier newest first
        look(other, [day for day in wants if day >= other and left[day]])
    for other in sorted(days):                                               # then the late windows in order
        look(other, [day for day in wants if day < other <= ends[day] and left[day]])
    return {day: (found[day], left[day]) for day in wants}


def _read_rows(home: DataHome, day: str) -> dict[str, pa.Table]:
    try:
        return {table: pq.read_table(home.partition_file(table, day), columns=list(fields))
                for table, fields in REFERENCE_FIELDS.items()}
    except (OSError, pa.ArrowException) as exc:
        raise Stale(str(exc)) from None


def _naming(table: pa.Table, value_set: pa.Array) -> pa.Array | None:
    """Which rows of ``table`` (reference columns) name one of ``value_set``'s uids; None for a table without columns."""
    hit = None
    for column in table.columns:
        found = pc.fill_null(pc.is_in(column, value_set=value_set), False)
        hit = found if hit is None else pc.or_(hit, found)
    return hit


def _late_rows(tables: dict[str, pa.Table], late: set[str]) -> dict[str, int]:
    """Per table, the accepted rows naming an image taken late (as the reference check counts
    ``accepted_late_image``)."""
    counts = dict.fromkeys(tables, 0)
    if not late:
        return counts
    value_set = pa.array(sorted(late), pa.string())
    for name, table in tables.items():
        hit = _naming(table, value_set)
        if hit is not None:
            counts[name] = pc.sum(hit).as_py() or 0
    return counts


def _recorded_late_rows(home: DataHome, day: str) -> dict[str, int]:
    try:
        files = pq.read_table(home.partition_file("ingest_files", day), columns=["table", "accepted_late_image"])
    except (OSError, pa.ArrowException) as exc:
        raise Stale(str(exc)) from None
    counts = dict.fromkeys(REFERENCE_FIELDS, 0)
    for table, count in zip(files.column("table").to_pylist(), files.column("accepted_late_image").to_pylist()):
        if table in counts:
            counts[table] += count or 0
    return counts


def quarantined_first_uids(home: DataHome, day: str, config: IngestConfig) -> set[str]:
    """The uids ``day``'s quarantined ``unknown_image_reference`` rankings name in the fields before the one their
    detail names (its first unknown image): those images resolved when the day was ingested, and one that no
    export holds any more changes the detail (review rev24i). Read from the row's stored line when it is the whole
    line (its length and sha256), else from the day's raw rankings file at the row's line number; raises
    :class:`Stale` when neither gives the line (the partition or the raw file changed: ingest the day again)."""
    path = home.partition_file("quarantine", day)
    filters = [("reason", "=", rp.UNKNOWN_IMAGE_REFERENCE), ("table", "=", "rankings")]
    try:
        details = pq.read_table(path, columns=["detail"], filters=filters).column("detail")
        if not pc.any(pc.invert(pc.starts_with(details, "image_0_uid = "))).as_py():
            return set()   # none shows an image before its unknown one (the common case: no line text read)
        rows = pq.read_table(path, columns=["table", "line_number", "detail", "raw_text", "raw_length", "raw_sha256"],
                             filters=filters)
    except (OSError, pa.ArrowException) as exc:
        raise Stale(str(exc)) from None
    fields = REFERENCE_FIELDS["rankings"]
    wanted: list[tuple[int, int, str, int]] = []   # (line number, fields before the missing one, sha256, length)
    lines: dict[int, bytes] = {}
    for number, detail, text, length, sha in zip(*(rows.column(c).to_pylist() for c in
                                                   ("line_number", "detail", "raw_text", "raw_length", "raw_sha256"))):
        match = _MISSING_FIELD.match(detail or "")
        before = fields.index(match.group(1)) if match else len(fields)
        if before == 0:
            continue   # image_0 is the unknown one: no image before it
        data = (text or "").encode("utf-8")
        if len(data) == length and hashlib.sha256(data).hexdigest() == sha:
            lines[number] = data
        wanted.append((number, before, sha, length))
    if any(number not in lines for number, *_ in wanted):
        lines.update(_raw_lines(home, day, {n: s for n, _, s, _ in wanted if n not in lines}, config))
    parser = config.line_parser("rankings", parse_day(day))
    positions = [parser.names.index(name) for name in fields]
    uids: set[str] = set()
    for number, before, _, _ in wanted:
        try:
            values = parser.parse(lines[number] if number != 1 else rp.without_bom(lines[number]))
        except rp.Reject:
            raise Stale(f"its quarantined ranking at line {number} no longer parses") from None
        uids.update(values[i] for i in positions[:before] if values[i] is not None)
    return uids


def _raw_lines(home: DataHome, day: str, wanted: dict[int, str], config: IngestConfig) -> dict[int, bytes]:
    """The lines ``wanted`` (line number -> sha256) of ``day``'s raw rankings file; :class:`Stale` unless each is
    there with that sha256."""
    raw = open_raw(home, home.raw_file(day, "rankings"), config=config)
    found: dict[int, bytes] = {}
    if raw.status == "ok":
        last = max(wanted)
        for number, data in iter_lines(raw.chunks(), config.max_line_bytes):
            if number in wanted and isinstance(data, bytes) and hashlib.sha256(data).hexdigest() == wanted[number]:
                found[number] = data
            if number >= last:
                break
    if len(found) != len(wanted):
        raise Stale("a quarantined ranking's line is not in its raw file as it was")
    return found


class EarlierImages:
    """The later days' records, and the look at them when an earlier day is ingested (:meth:`changes`)."""

    def __init__(self, home: DataHome, days: Sequence[str], config: IngestConfig) -> None:
        # the days a uid resolves against: the raw zone's and the pruned days the warehouse keeps (review rev29a)
        self.home, self.days, self.config = home, reference_days(home, days), config
        self.path = home.cache / DAYS_CACHE
        self.known: dict[str, dict] = {}
        self.looked: dict[str, str] = {}
        try:
            known = json.loads(self.path.read_text(encoding="utf-8"))
            if isinstance(known, dict) and known.get("version") == _VERSION and isinstance(known.get("days"), dict):
                self.known = known["days"]
                looked = known.get("looked")
                if isinstance(looked, dict) and all(isinstance(v, str) for v in looked.values()):
                    self.looked = looked
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
                and all(isinstance(k, str) and isinstance(v, str) for k, v in entry["from"].items())
                and type(entry.get("late")) is int):
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
        entry: dict = {"stat": stat, "from": {d: self.raw_stat(d) for d in days},
                       "late": sum(1 for d in uids.values() if d > later)}
        pairs = sorted((day, uid) for uid, day in uids.items())
        if len(pairs) <= INLINE_UIDS:
            entry["uids"] = [list(p) for p in pairs]
        else:
            table = pa.table({"day": [d for d, _ in pairs], "image_uid": [u for _, u in pairs]}, schema=_SCHEMA)
            path = record_path(self.home, later)
            # written only under the cache-writers lock, swept under it exclusively (review rev30c)
            with writing_cache(self.home) as held:
                if not held:
                    return
                try:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    write_parquet_atomic(table.replace_schema_metadata({"version": _VERSION, "stat": stat}), path)
                except OSError:
                    return   # a cache: a full disk or a read-only cache folder only costs speed
        self.known[later] = entry
        self.changed = True

    def _forget(self, later: str) -> None:
        """Drop ``later``'s record (it is ingested again: worked out afresh at the next look)."""
        if self.known.pop(later, None) is not None:
            self.changed = True

    def _named(self, later: str) -> tuple[dict[str, pa.Table], set[str]]:
        """The uids ``later`` takes from other days' exports (those of its accepted rows and those its quarantined
        rankings name before their first unknown image, less the ones its own export holds), and its accepted rows
        that name one (their reference columns: all the late count needs)."""
        tables = _read_rows(self.home, later)
        named: set[str] = set()
        for table in tables.values():
            for column in table.columns:
                named.update(pc.unique(column.drop_null()).to_pylist())
        named |= quarantined_first_uids(self.home, later, self.config)
        if named:
            named -= raw_image_uids(self.home, later, named, self.config)   # its own export: taken from no other day
        value_set = pa.array(sorted(named), pa.string())
        kept: dict[str, pa.Table] = {}
        for name, table in tables.items():
            hit = _naming(table, value_set)
            kept[name] = table.filter(hit) if hit is not None else table
        return kept, named

    def _work_out(self, batch: list[tuple[str, str, dict[str, pa.Table], set[str]]]) -> list[str]:
        """The records of the later days of ``batch`` (day, partitions' stat, reference columns, named uids), their
        uids resolved together against the raw zone as it is; returns the days that disagree with it (a uid no
        export within reach holds, a late count per table other than their ``ingest_files``'): ingest them again."""
        resolved = resolve_together(self.home, {later: named for later, _, _, named in batch}, self.days, self.config)
        stale: list[str] = []
        for later, stat, tables, _ in batch:
            found, missing = resolved[later]
            try:
                late = {uid for uid, day in found.items() if day > later}
                if missing or _late_rows(tables, late) != _recorded_late_rows(self.home, later):
                    raise Stale("its rows resolve otherwise now")
            except Stale:
                stale.append(later)
                self._forget(later)
                continue
            self._store(later, stat, found)
        return stale

    # ------------------------------------------------------------------ the look at later days
    def changes(self, day: str, later: Collection[str]) -> list[str]:
        """The days of ``later`` (after ``day``, which was just ingested) to ingest again: see the module's
        docstring. The uids to look for in ``day``'s export are looked up in its uid index together, a batch of
        at most about ``BATCH_UIDS`` uids at a time; the records missing are worked out together likewise."""
        stat_now = self.raw_stat(day)
        check = self.looked.get(day) != stat_now     # day's export changed since the last whole look at it
        stale: list[str] = []
        pending: list[tuple[str, str, dict[str, str], set[str]]] = []
        work: list[tuple[str, str, dict[str, pa.Table], set[str]]] = []
        sizes = {"pending": 0, "work": 0}

        def flush_pending() -> None:
            if pending:
                wanted = set().union(*(ask for *_, ask in pending))
                held = raw_image_uids(self.home, day, wanted, self.config)   # one read of the day's uid index
                for other, stat, uids, ask in pending:
                    if self._changed(other, stat, uids, ask, held, day):
                        stale.append(other)
                        self._forget(other)
                pending.clear()
            sizes["pending"] = 0

        def flush_work() -> None:
            if work:
                stale.extend(self._work_out(work))
                work.clear()
            sizes["work"] = 0

        for other in later:
            stat = _partitions_stat(self.home, other)
            if stat is None:
                continue   # never ingested: its own ingest checks its references
            entry = self._entry(other, stat)
            if entry is not None:
                moved = {d for d, raw in entry["from"].items() if (check and d == day) or self.raw_stat(d) != raw}
                if not moved and not (check and entry["late"]):
                    continue   # nothing it takes comes from an export that changed: no record to read
                uids = self._uids(other, entry, stat)
                if uids is not None:
                    ask = {uid for uid, d in uids.items() if d in moved or (check and d > other)}
                    if ask:
                        pending.append((other, stat, uids, ask))
                        sizes["pending"] += len(uids)
                        if sizes["pending"] >= BATCH_UIDS:
                            flush_pending()
                    continue
            try:
                tables, named = self._named(other)
            except Stale:
                stale.append(other)
                self._forget(other)
                continue
            work.append((other, stat, tables, named))
            sizes["work"] += len(named)
            if sizes["work"] >= BATCH_UIDS:
                flush_work()
        flush_pending()
        flush_work()
        self.looked[day] = stat_now   # every record left is now checked against day's export as it is
        self.changed = True
        return sorted(stale)

    def _changed(self, later: str, stat: str, uids: dict[str, str], ask: set[str], held: set[str], day: str) -> bool:
        """Whether ``later``'s rows resolve otherwise now: ``ask`` are the uids whose resolver changed (or that it
        took late, when ``day``'s export changed since the last look at it); ``held`` the ones ``day``'s export
        holds."""
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
            elif was == day and uid in held:
                continue                          # still there (a newer earlier holder would change nothing)
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
            body = {"version": _VERSION, "days": self.known, "looked": self.looked}
            with writing_cache(self.home) as held:   # swept under it exclusively (review rev30c)
                if held:
                    try:
                        write_bytes_atomic(self.path, (json.dumps(body, sort_keys=True) + "\n").encode())
                    except OSError:
                        pass
            self.changed = False
