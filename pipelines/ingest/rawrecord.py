"""The raw zone's problems, named and recorded by every build, whether or not a day is ingested (review rev25b).

Every ingest rewrites ``warehouse/raw_zone_problems/data.parquet`` from the raw zone as it is
(``pipelines.ingest.day.write_raw_zone_problems``). A build that ingests nothing (the build stamp answers
"up to date", or the plan finds every asset fresh) ran no ingest, so entries that landed since the last
ingest were warned about but never recorded: the table said the raw zone was clean. :func:`note_raw_zone`
is what ``pickapic build`` calls first, on every path (the stamp's "up to date" and ``--dry-run``
included): it scans the raw zone and names each skipped entry through ``warn``, writing nothing
(``record=False``). The table is brought up to date with the raw zone (when it differs, under the home's
ingest lock) by :func:`record_noting`, which the build calls once its settings are read and it holds the
home's build lock (``dagster_project.build.build``'s ``on_locked``): a build refused for a mistyped
``--set`` or because another build holds the home writes nothing (review rev25h). A build whose stamp
says "up to date" while the table differs from the raw zone (:func:`differs`) plans in full, under the lock,
as it did when the record changed the warehouse first.

Light on purpose (the stamp's "up to date" answer stays well under a second): pyarrow is imported only when
the table exists or the raw zone has problems, the ingest module only when the table must be rewritten. A home
whose ingest never ran (no ``warehouse/raw_zone_problems/`` folder) is left alone: its first ingest writes the
table. An ingest running now (the lock is held) is left to write it itself: nothing waits.
"""
from __future__ import annotations

from collections.abc import Callable

from formats.files import is_real_folder
from formats.home import DataHome
from formats.rawzone import RawZoneScan

DATASET = "raw_zone_problems"


class _Busy(Exception):
    """The ingest lock is held by another process: its ingest writes the table."""


def _rows(scan: RawZoneScan) -> list[dict]:
    return [{"path": p.path, "entry": p.entry, "reason": p.reason, "detail": p.detail, "file_bytes": p.file_bytes}
            for p in scan.problems]


def recorded_rows(home: DataHome) -> list[dict] | None:
    """The rows of the stored table (None when it is missing or cannot be read)."""
    path = home.table_file(DATASET)
    if not path.is_file():
        return None
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path, columns=["path", "entry", "reason", "detail", "file_bytes"]).to_pylist()
    except (OSError, pa.ArrowException):
        return None


def record_raw_zone_problems(home: DataHome, scan: RawZoneScan | None = None) -> bool:
    """Rewrite the table when it differs from the raw zone as ``scan`` (or a scan now) found it; True when written.
    Nothing is written in a home whose ingest never ran, or while another process holds the ingest lock."""
    if not is_real_folder(home.warehouse) or not is_real_folder(home.table_dir(DATASET)):
        return False
    scan = scan if scan is not None else home.scan_raw_zone()
    if not scan.problems and not home.table_file(DATASET).is_file():
        return False
    if recorded_rows(home) == _rows(scan):
        return False
    from pipelines.ingest.day import ingest_lock, write_raw_zone_problems

    def busy(_holder: str) -> None:
        raise _Busy

    try:
        with ingest_lock(home, on_wait=busy):
            scan = home.scan_raw_zone()      # as it is under the lock: an ingest that just ended wrote its own
            if recorded_rows(home) == _rows(scan):
                return False
            write_raw_zone_problems(home, scan)
            return True
    except _Busy:
        return False


def differs(home: DataHome, scan: RawZoneScan) -> bool:
    """Whether :func:`record_raw_zone_problems` would rewrite the table for ``scan`` (nothing is written here)."""
    if not is_real_folder(home.warehouse) or not is_real_folder(home.table_dir(DATASET)):
        return False
    if not scan.problems and not home.table_file(DATASET).is_file():
        return False
    return recorded_rows(home) != _rows(scan)


def record_noting(home: DataHome, warn: Callable[[str], None], scan: RawZoneScan | None = None) -> bool:
    """:func:`record_raw_zone_problems`, its failure a warning (never fatal: the next ingest writes the table).
    Call it after the command's checks passed, holding the build lock (see the module docstring)."""
    try:
        return record_raw_zone_problems(home, scan)
    except OSError as exc:   # the error names no absolute path
        warn(f"could not record the raw zone's problems in warehouse/{DATASET}: {exc.strerror or type(exc).__name__}")
    except ValueError as exc:   # the ingest lock refused (formats.locks.LockFileRefused): the build says so next
        warn(f"could not record the raw zone's problems in warehouse/{DATASET}: {exc}")
    return False


def note_raw_zone(home: DataHome, warn: Callable[[str], None], record: bool = True) -> RawZoneScan:
    """Name each raw-zone entry that is not a day through ``warn`` (``skipped <entry>: <reason>: ...``, the lines
    ``pickapic build`` prints: :meth:`RawZoneScan.skipped_lines`, the folders holding only exporter markers in one
    line) and, with ``record``, bring ``raw_zone_problems`` up to date with them (:func:`record_noting`; ``pickapic
    build`` names them with ``record=False`` and records under its lock)."""
    scan = home.scan_raw_zone()
    for line in scan.skipped_lines():
        warn(f"skipped {line}")
    if record:
        record_noting(home, warn, scan)
    return scan
