"""The sweep of the disposable caches' temporary files (review rev30c), apart from ``pipelines.provenance``: it
names the per-day records of ``pipelines.features.blobidentity`` and ``pipelines.ingest.earlierimages``, which
write through ``provenance.writing_cache`` (so provenance itself cannot import them without an import cycle)."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

from formats.files import sweep_temps, sweep_temps_of
from formats.home import DataHome
from formats.locks import CACHE_WRITERS_LOCK, sweep_exclusively
from formats.rawzone import RAW_ZONE_SAID
from pipelines import provenance
from pipelines.appdb.export import (
    CACHE_OWNER,
    CONTENT_RECORDS,
    COUNTS_CACHE,
    LATE_MARKERS,
    MOVED_WAITING,
    SNAPSHOT_ORDER,
    TICKET_CLOCK,
    UNDATED_STATE,
    WRITTEN_RECORDS,
    export_state_folders,
)
from pipelines.features.blobidentity import record_path as identity_record
from pipelines.ingest.earlierimages import DAYS_CACHE
from pipelines.ingest.earlierimages import record_path as earlier_record
from pipelines.ingest.waiting import WAITING_CACHE

DAY_FILE = r"dt=[0-9]{4}-[0-9]{2}-[0-9]{2}"


def sweep_cache_temps(home: DataHome, also: Iterable[Path] = ()) -> list[str]:
    """Remove the temporary files (``.NAME.<hex>.tmp``) that the disposable caches' writers killed mid-write left in
    ``cache/``: the raw-day digests', the blobs' (missing ones, copied rows), the earlier image days' (and their
    per-day records), the raw image-uid index's and the blob identity records'; and (review rev31c: each kill
    left one for good) the waiting image uids', the app export's (its undated ids, per-day counts, written records,
    late markers, snapshot tickets and their clock, content records, and
    each of their folders' owner record) and the raw-zone sensor's memory; ``also``: more cache files
    whose writers write the same way (the build stamp). Their writers (a plan, a check, any day's ingest, export or
    features run, a sensor: no stage lock they share) write only while holding the cache-writers lock shared
    (:func:`pipelines.provenance.writing_cache`), so this sweeps only while it is free
    (:func:`formats.locks.sweep_exclusively`: never waits, sweeps nothing while one writes) and no live writer's
    file is removed (reviews rev29b, rev30c: each kill left one for good).
    Returns notes on what was left."""
    caches = [home.cache / name for name in (provenance.RAW_DIGESTS_CACHE, provenance._MISSING_CACHE,
                                             provenance._COPIES_CACHE, DAYS_CACHE, WAITING_CACHE, UNDATED_STATE,
                                             RAW_ZONE_SAID, f"{SNAPSHOT_ORDER}/{TICKET_CLOCK}")]
    caches += [folder / CACHE_OWNER for folder in export_state_folders(home)]   # whose home they are (rev32c)
    folders = [(home.raw_image_uid_index("0000-00-00").parent, provenance.DAY_RECORD, True),   # written through a link
               (earlier_record(home, "0000-00-00").parent, provenance.DAY_RECORD, True),
               (identity_record(home, "0000-00-00").parent, provenance.DAY_RECORD, False),   # never (rev29e)
               # the app export's per-day records (written through a link at their folder, as the caches above)
               (home.cache / COUNTS_CACHE, DAY_FILE + r"\.json", True),
               (home.cache / MOVED_WAITING, DAY_FILE + r"\.json", True),    # fix37h
               (home.cache / WRITTEN_RECORDS, DAY_FILE + r"\.json", True),
               (home.cache / CONTENT_RECORDS, DAY_FILE + r"\.json", True),   # review rev35a
               (home.cache / LATE_MARKERS, DAY_FILE, True),
               (home.cache / SNAPSHOT_ORDER, DAY_FILE + r"\.json", True)]   # the exports' tickets (rev31e, rev31h)
    return sweep_exclusively(home.locks / CACHE_WRITERS_LOCK, "the cache writers of the data home", lambda: (
        sweep_temps_of([*caches, *also])
        + [note for folder, final, follow in folders
           for note in sweep_temps(folder, final, follow=follow)[1]]))
