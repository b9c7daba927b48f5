"""The data home: one object that knows where every dataset lives (and nothing else does)."""
from __future__ import annotations

import fnmatch
import glob
import os
from dataclasses import dataclass
from pathlib import Path

from formats.rawzone import RawZoneScan, scan_raw_zone

DEFAULT_HOME = "./data"
ENV_VAR = "PICKAPIC_HOME"


def resolve_home(home: str | os.PathLike | None = None) -> Path:
    """``--home`` if given, else ``$PICKAPIC_HOME``, else ``./data``; returned absolute."""
    chosen = home if home not in (None, "") else os.environ.get(ENV_VAR) or DEFAULT_HOME
    return Path(chosen).expanduser().resolve()


# the folders of a daily-partitioned table's days, as a glob (Python's and DuckDB's): dt=YYYY-MM-DD
PARTITION_FOLDER_GLOB = "dt=" + "-".join("[0-9]" * n for n in (4, 2, 2))


@dataclass(frozen=True)
class DataHome:
    """Layout of a data home (documented in README.md, section "Data home layout")."""

    root: Path

    @classmethod
    def at(cls, home: str | os.PathLike | None = None) -> "DataHome":
        return cls(resolve_home(home))

    # raw zone (written by the app export / simulator, read-only for the pipeline)
    @property
    def raw(self) -> Path:
        return self.root / "raw"

    @property
    def raw_logs(self) -> Path:
        return self.raw / "app_logs"

    def raw_day(self, day: str) -> Path:
        return self.raw_logs / f"dt={day}"

    def raw_file(self, day: str, table: str) -> Path:
        return self.raw_day(day) / f"{table}.jsonl.gz"

    @property
    def raw_images(self) -> Path:
        return self.raw / "images"

    def raw_image_relpath(self, image_uid: str) -> str:
        return f"raw/images/{image_uid}.png"

    @property
    def moderation(self) -> Path:
        return self.raw / "moderation"

    @property
    def banned_users_file(self) -> Path:
        return self.moderation / "banned_users.txt"

    @property
    def nsfw_phrases_file(self) -> Path:
        return self.moderation / "nsfw_phrases.txt"

    def moderation_list(self, configured: str, default: Path) -> Path:
        """A moderation list's path from the settings (``curation.banned_users_file`` / ``phrases_file``):
        a relative one is inside the data home, never the working directory of whoever runs (`pickapic
        build` from the home and the daemon from / planned the same home differently: review rev21b);
        '' is ``default``."""
        return self.root / configured if configured else default

    @property
    def ground_truth(self) -> Path:
        return self.root / "ground_truth"

    # warehouse: validated and derived tables, Parquet
    @property
    def warehouse(self) -> Path:
        return self.root / "warehouse"

    def table_dir(self, dataset: str) -> Path:
        return self.warehouse / dataset

    def partition_file(self, dataset: str, day: str) -> Path:
        """Daily-partitioned dataset file: ``warehouse/<dataset>/dt=<day>/part-0.parquet``."""
        return self.table_dir(dataset) / f"dt={day}" / "part-0.parquet"

    def partition_days(self, dataset: str) -> list[str]:
        """The days of a daily-partitioned dataset: its folders named ``dt=YYYY-MM-DD``
        (:data:`PARTITION_FOLDER_GLOB`, the folders every reader of the table reads: :meth:`table_glob`), sorted;
        none when its folder is missing or unreadable. An operator's copy ``dt=DAY.bak`` (or any other name) is no
        day (review rev31b: the feature stage copied rows from such a copy)."""
        try:
            names = os.listdir(self.table_dir(dataset))
        except OSError:
            return []
        return sorted(name[3:] for name in names if fnmatch.fnmatchcase(name, PARTITION_FOLDER_GLOB))

    def table_file(self, dataset: str) -> Path:
        """Unpartitioned dataset file: ``warehouse/<dataset>/data.parquet``."""
        return self.table_dir(dataset) / "data.parquet"

    def table_glob(self, dataset: str) -> str:
        """Glob matching the Parquet files of a daily-partitioned dataset where its stage writes them
        (``dt=YYYY-MM-DD/*.parquet``, :meth:`partition_file`), for DuckDB's ``read_parquet`` and Python's
        ``glob``: the home's own path is escaped (:func:`glob.escape`), so a home at ``/data/pickapic[1]/home``
        matches its files, not a character class (review rev24c). Only folders named ``dt=`` and a date are read,
        one level down (review rev25i: ``**/*.parquet`` read a stray ``old.parquet`` beside them, a
        ``backup/dt=DAY/`` copy or a ``dt=DAY.bak`` folder as rows of the table, which no re-ingest removes, and
        the last one failed curation with DuckDB's Binder Error); a stray Parquet file inside a day's folder is
        still read (curation's ``IngestNotReconciled`` names it and re-ingesting the day removes it)."""
        return f"{glob.escape(str(self.table_dir(dataset)))}/{PARTITION_FOLDER_GLOB}/*.parquet"

    # content-addressed training JPEGs written by the feature stage
    @property
    def blobs(self) -> Path:
        return self.root / "blobs"

    # published datasets, models, orchestration state
    @property
    def datasets(self) -> Path:
        return self.root / "datasets" / "pickapic"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def dagster_home(self) -> Path:
        return self.root / "dagster"

    # disposable caches: deleting them changes no output, only speed
    @property
    def cache(self) -> Path:
        return self.root / "cache"

    def raw_image_uid_index(self, day: str) -> Path:
        """Every ``image_uid`` member of one day's raw images file (``ingest``'s reference check)."""
        return self.cache / "raw_image_uids" / f"dt={day}.parquet"

    # locks (formats.locks): beside the home, never in the disposable cache, whose deletion while one is
    # held would let a second holder in
    @property
    def lock_file(self) -> Path:
        return self.root / ".build.lock"

    @property
    def locks(self) -> Path:
        """The stages' lock files (splits ledger, feature stage per day and per staging folder)."""
        return self.root / ".locks"

    def raw_days(self) -> list[str]:
        """Every valid ``dt=YYYY-MM-DD`` day folder of the raw zone, sorted; other entries are
        skipped here and reported by ``scan_raw_zone`` (``formats.rawzone``), never fatal."""
        return self.scan_raw_zone().days

    def scan_raw_zone(self) -> RawZoneScan:
        """The raw zone's days and the entries that are not days (misnamed, links out, stray files)."""
        return scan_raw_zone(self.root)

    def resolve_inside(self, relpath: str, zone: str | None = None) -> Path:
        """Resolve ``relpath`` under the home (under its ``zone`` folder, e.g. ``raw``, if given),
        refusing anything that escapes it (``..``, links); the error names no absolute path."""
        base = (self.root / zone).resolve() if zone else self.root.resolve()
        candidate = (self.root / relpath).resolve()
        if candidate != base and base not in candidate.parents:
            where = f"the {zone} zone" if zone else "the data home"
            raise ValueError(f"path {relpath!r} resolves outside {where}")
        return candidate
