"""The ``unknown_image_reference`` rule: every image a ranking or download names must be in some images export.

``unknown_image_reference`` (rankings' shown uids, downloads' ``image_uid``): the uid appears as an
``"image_uid"`` member in none of the raw images files of this day, any earlier day, or the
``late_image_days`` (2) days after it in the raw zone. Only the raw bytes are searched (quarantined
image lines count as exported), so the answer depends on the raw zone alone, not on what was
ingested before, with one exception: a day whose raw folder was pruned after its ingest keeps what was
built from it, so its images export is what its ingest's search found, as the warehouse keeps it (its ``images``
partition and the record written with it: :func:`pipelines.ingest.uidindex.kept_image_uids`, reviews rev29a,
rev29e). A build
from scratch of a home whose raw day was pruned has no such partition, so its rows naming that day's images
are ``unknown_image_reference`` there: it sees fewer facts than the home that ingested the day. A row
resolved only by a later day's export is accepted and counted in ``ingest_files.accepted_late_image``; the
detail names the first unknown image and the window, never which later days exist yet. When day D is ingested, each ingested day in [D - late_image_days, D)
whose ``unknown_image_reference`` rows name an image D's export holds is ingested again
(``refresh_late_references`` in :mod:`pipelines.ingest.day`, reported in ``IngestReport.refreshed``),
and so is each ingested later day whose ``unknown_image_reference`` rows name an image D's export holds
(``refresh_later_days``: D landed after them), so ingesting day by day as the days land gives the same
bytes as ingesting all of them at once, in any order.
"""
from __future__ import annotations

from typing import Sequence

from formats.home import DataHome
from pipelines.ingest import parse as rp
from pipelines.ingest.config import IngestConfig, parse_day, shift_day
from pipelines.ingest.reader import TableRun
from pipelines.ingest.uidindex import raw_image_uids, reference_days
from pipelines.ingest.uidset import UidSet

REFERENCE_FIELDS = {"rankings": ("image_0_uid", "image_1_uid", "image_2_uid", "image_3_uid"),
                    "downloads": ("image_uid",)}


def check_references(runs: dict[str, TableRun], parsers: dict[str, rp.LineParser],
                     known_today: set[str] | UidSet | None, home: DataHome, day: str, raw_days: Sequence[str],
                     late_days: int, config: IngestConfig | None = None) -> None:
    """Quarantine rankings/downloads rows whose image uid no images export of this day, an earlier
    day or the ``late_days`` days after it has; count the rows only a later export resolved.

    ``known_today`` holds the uids found while the same process read today's images file; without
    it, today's file is searched like the others (the same byte-level search either way). Other days
    are searched through their uid index (``raw_image_uids``), so a day's check costs one small
    Parquet read per day, not a decompression of every images file. A pruned day the warehouse keeps is
    searched like a raw day, in what the warehouse keeps of it (:func:`~pipelines.ingest.uidindex.reference_days`).
    """
    tables = [t for t in REFERENCE_FIELDS if t in runs]
    positions = {t: [parsers[t].names.index(name) for name in REFERENCE_FIELDS[t]] for t in tables}
    referenced: set[str] = set()
    for table in tables:
        for _, values in runs[table].rows.values():
            referenced.update(values[i] for i in positions[table] if values[i] is not None)
    unresolved = referenced - known_today.intersection(referenced) if known_today is not None else referenced
    if unresolved:
        raw_days = reference_days(home, raw_days)   # the raw zone's days and the pruned days the warehouse keeps
    scan_days = {d for d in raw_days if d < day}
    if known_today is None:
        scan_days.add(day)
    for other in sorted(scan_days, reverse=True):
        if not unresolved:
            break
        unresolved -= raw_image_uids(home, other, unresolved, config)
    late: set[str] = set()
    used: list[str] = []
    last_day = late_window_end(day, late_days)
    for later in sorted(d for d in raw_days if day < d <= last_day):
        if not unresolved:
            break
        found = raw_image_uids(home, later, unresolved, config)
        late |= found
        unresolved -= found
        if found:
            used.append(later)
    for table in tables:
        runs[table].report.late_image_days = used
    if not unresolved and not late:
        return
    # the text names the window, never which later days exist yet: it must not change when one lands
    where = (f"of {day}, an earlier day or the {late_days} day(s) after it (up to {last_day})" if late_days
             else f"of {day} or earlier")
    for table in tables:
        run = runs[table]
        bad = []
        for key, (number, values) in run.rows.items():
            uids = [(name, values[i]) for name, i in zip(REFERENCE_FIELDS[table], positions[table])]
            missing = next(((name, uid) for name, uid in uids if uid in unresolved), None)
            if missing is not None:
                bad.append(key)
                run.reject(number, rp.UNKNOWN_IMAGE_REFERENCE, f"{missing[0]} = {missing[1]} is in no images export "
                                                               f"{where}", None)
            elif any(uid in late for _, uid in uids):
                run.report.accepted_late_image += 1
        for key in bad:
            del run.rows[key]


def late_window_end(day: str, late_days: int) -> str:
    """The last day whose images export may still resolve a reference of ``day``."""
    return shift_day(parse_day(day), late_days).isoformat()
