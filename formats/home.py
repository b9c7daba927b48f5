"""The data home: one object that knows where every dataset lives (and nothing else does)."""
from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path

from formats.rawzone import RawZoneScan, day_of_folder, scan_raw_zone

DEFAULT_HOME = "./data"
ENV_VAR = "PICKAPIC_HOME"


def resolve_home(home: str | os.PathLike | None = None) -> Path:
    """``--home`` if given, else ``$PICKAPIC_HOME``, else ``./data``; returned absolute."""
    chosen = home if home not in (None, "") else os.environ.get(ENV_VAR) or DEFAULT_HOME
    return Path(chosen).expanduser().resolve()


# the folders of a daily-partitioned table's days, as a glob (Python's and DuckDB's): dt=YYYY-MM-DD; the glob
# checks digits only (it matches dt=2023-02-30): a day is a name it matches that is also a calendar date
# (formats.rawzone.day_of_folder, DataHome.partition_days), and readers take DataHome.table_files (review rev31k)
PARTITION_FOLDER_GLOB = "dt=" + "-".join("[0-9]" * n for n in (4, 2, 2))
# the home's moderation lists, relative to the home: what curation.banned_users_file / phrases_file = '' name (their
# knobs' home_file: a setting naming the same file is the same setting, formats.settings.home_file_canonical)
BANNED_USERS_FILE = "raw/moderation/banned_users.txt"
NSFW_PHRASES_FILE = "raw/moderation/nsfw_phrases.txt"


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
        return self.root / BANNED_USERS_FILE

    @property
    def nsfw_phrases_file(self) -> Path:
        return self.root / NSFW_PHRASES_FILE

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
        """The days of a daily-partitioned dataset: its folders named ``dt=YYYY-MM-DD`` with a calendar date, as
        the raw zone judges a day's folder (:func:`formats.rawzone.day_of_folder`), sorted; none when its folder
        is missing or unreadable. An operator's copy ``dt=DAY.bak`` (or any other name) is no day (review rev31b:
        the feature stage copied rows from such a copy), nor is ``dt=2023-02-30`` (digits in the right places, no
        date: review rev31k). Every reader of the table reads these days' files only (:meth:`table_files`)."""
        try:
            names = os.listdir(self.table_dir(dataset))
        except OSError:
            return []
        return sorted(day for day in map(_day_of, names) if day is not None)

    def table_files(self, dataset: str) -> list[Path]:
        """The Parquet files of a daily-partitioned dataset, what every reader of the table reads (DuckDB's views,
        the publish's snapshots, the training JPEG prune): ``dt=DAY/*.parquet`` of each day of
        :meth:`partition_days`, sorted by day then name. An explicit list, not a glob: a glob cannot tell
        ``dt=2023-02-30`` (no calendar date) from a day, and read such a folder's rows into curation and the
        published ``meta/images`` (review rev31k). A stray Parquet file inside a day's folder is still read
        (curation's ``IngestNotReconciled`` names it and re-ingesting the day removes it); one elsewhere
        (``old.parquet``, ``backup/dt=DAY/``, ``dt=DAY.bak/``) is not (review rev25i)."""
        root = self.table_dir(dataset)
        return [path for day in self.partition_days(dataset)
                for path in sorted((root / f"dt={day}").glob("*.parquet"))]

    def table_file(self, dataset: str) -> Path:
        """Unpartitioned dataset file: ``warehouse/<dataset>/data.parquet``."""
        return self.table_dir(dataset) / "data.parquet"

    def table_glob(self, dataset: str) -> str:
        """Glob of the Parquet files of a daily-partitioned dataset's day folders (``dt=YYYY-MM-DD/*.parquet``,
        :meth:`partition_file`), the home's own path escaped (:func:`glob.escape`: a home at
        ``/data/pickapic[1]/home`` matches its files, not a character class, review rev24c). It checks digits
        only, so it also matches a ``dt=2023-02-30`` folder (no calendar date): the pipeline's readers take
        :meth:`table_files` instead (review rev31k); this pattern only shows where the files are."""
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

    @property
    def curation_snapshots(self) -> Path:
        """The curation builds' held snapshot folders (``curation-XXXX``: hard links of their inputs): outside the
        disposable cache, whose deletion during a build would take the files it reads (review rev33a), and on the
        warehouse's file system where the home is one disk, so the links cost no copy."""
        return self.root / ".staging" / "curation"

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


def _day_of(name: str) -> str | None:
    """The day of a partition folder's name, or None (:func:`formats.rawzone.day_of_folder`)."""
    return day_of_folder(name)[0]
