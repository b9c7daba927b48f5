"""Hostile review rev31k: what fix31b (README section 9, the rev31b bullet) left of "only ``dt=YYYY-MM-DD`` folders
are days", and the plan's days not run (``provenance.days_not_run``, ``CopiedRows`` cache version 5 and its
``settled`` flag, ``automation.plan_complete_days``, ``provenance.read_cache``).

How: every place listing ``dt=*`` under pipelines/, dagster_project/ and formats/ was read and the suspicious ones
driven for real: the feature stage (``build_features``, real decode and JPEG encode, the fake detector of the
feature tests), the training JPEG prune (``needed_keys``), ``CopiedRows`` over real Parquet partitions and its
cache, ``read_cache`` on a FIFO, a symlink, a file one byte over and exactly at its bound.

Held up (no test): ``read_cache`` opens once with ``O_NOFOLLOW | O_NONBLOCK`` and reads at most ``max_bytes + 1``
from the descriptor it ``fstat``-ed, so a file replaced between stat and read is either the old inode read whole
or the new one judged again: no stat/read race; a cache exactly at the bound is read, one byte more is none. The
raw zone's own notion of a day (``rawzone.day_of_folder``) refuses impossible dates, and ``uidindex.pruned_days``
uses it. A day that becomes complete later loses its ``settled`` flag: ``_valid_copies_entry`` compares the flag,
so the cache is not trusted and the day is judged again (driven: a risky row of an incomplete day A copied by a
later day B, both "same" while A is settled, both "changed" once A's last file lands, warm cache and cold alike;
the nightly and the raw-day sensor both plan with
``plan_complete_days``, on the same clock). Cache files written by the nightly's plan (incomplete days settled)
and read by the build stamp (incomplete days run) disagree on the flag and are judged again whole at each
alternation: slower, not wrong (not filed).

Noticed, not filed: ``table_glob`` (DuckDB's reader of every daily table) uses the same glob as
``partition_days``, so an impossible-date folder's rows are read by curation too (the glob cannot tell calendar
dates; the first test's fix in ``partition_days`` alone would leave that reader apart), and the publish's
``meta/images`` snapshot (``samples.py``, same glob) would ship an ``images-2023-02-30.parquet``: the same root
cause as the first test, not filed twice. ``trainjpegs.needed_keys`` also keeps the JPEGs a ``.bak`` copy names
(over-retention, safe); only its refusal to prune at all is filed.

Each test below is a defect confirmed by running it, ranked by severity, filed as a strict xfail whose assertions
state the correct behaviour. Both were fixed the same day (fix31k, ``tests/unit/test_fix31k.py``) and the markers
removed: ``partition_days`` takes a calendar date only (``rawzone.day_of_folder``), and every reader of a daily
table (DuckDB's views, ``needed_keys``, the publish's snapshots) reads ``DataHome.table_files``, the files of those
days, so the noticed ``table_glob`` and ``meta/images`` readers were fixed with them.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from test_features_fixtures import fake_detector, png, write_day

from formats.home import DataHome
from pipelines.features import trainjpegs
from pipelines.features.config import FeaturesConfig
from pipelines.features.reuse import earlier_partitions
from pipelines.features.stage import build_features
from pipelines.provenance import CopiedRows

A, L = "2023-03-01", "2023-03-03"
IMPOSSIBLE = "2023-02-30"


def test_an_impossible_date_folder_is_no_day_the_stage_copies_from(tmp_path: Path) -> None:
    """An operator's folder ``dt=2023-02-30`` (a typo'd restore, a copy renamed by hand) under
    ``warehouse/image_features`` is a day for ``DataHome.partition_days`` (the glob checks digits only), while the
    raw zone refuses the same name as "not a calendar date". The feature stage's history (``earlier_partitions``)
    then takes it as an earlier day and day L copies x's row from it (``reused_from = x``): a build from scratch,
    which never writes such a folder, computes x afresh, so incremental and from scratch differ. The plan settles
    the folder (no raw day of that name), so nothing ever runs L again: the same defect rev31b fixed for
    ``dt=DAY.bak``, left open for a name that only looks like a day."""
    config = FeaturesConfig(workers=0)
    home = DataHome(tmp_path / "home")
    write_day(home, A, {"x": png(1)})
    time.sleep(0.15)
    build_features(home, A, config, detector_factory=fake_detector)
    folder = home.partition_file("image_features", A).parent
    os.rename(folder, folder.with_name(f"dt={IMPOSSIBLE}"))          # A has no partition now; the copy remains
    write_day(home, L, {"x": png(1), "v": png(1)})
    time.sleep(0.15)
    assert IMPOSSIBLE not in home.partition_days("image_features")
    assert earlier_partitions(home, L) == []
    build_features(home, L, config, detector_factory=fake_detector)
    table = pq.read_table(home.partition_file("image_features", L))
    rows = sorted((r["image_uid"], r["reused_from"]) for r in table.to_pylist())
    assert rows == [("v", None), ("x", None)]                        # as a build from scratch: computed afresh
    assert CopiedRows(home)._look() == {L: None}


def test_a_bak_copy_of_a_day_does_not_stop_the_training_jpeg_prune(tmp_path: Path) -> None:
    """``trainjpegs.needed_keys`` lists ``image_features/dt=*/*.parquet`` (not ``partition_days`` / ``table_glob``),
    so an operator's ``dt=DAY.bak/`` copy (here one taken before the table had ``train_jpg_key``) is read as a
    warehouse day: it lacks the column, ``NotPruned`` is raised and the publish step's prune removes nothing, at
    every rebuild, for as long as the copy stays (the erased accounts' training JPEGs of review rev30b are kept for
    good). rev31b made every other reader agree that ``dt=DAY.bak`` is no day."""
    home = DataHome(tmp_path / "home")
    day_file = home.partition_file("image_features", A)
    day_file.parent.mkdir(parents=True)
    pq.write_table(pa.table({"image_uid": ["x"], "train_jpg_key": ["blobs/train/s512q90/ab/x.jpg"]}), day_file)
    bak = day_file.parent.with_name(f"dt={A}.bak") / "part-0.parquet"
    bak.parent.mkdir(parents=True)
    pq.write_table(pa.table({"image_uid": ["x"], "sha256": ["0" * 64]}), bak)   # an older layout: no key column
    assert trainjpegs.needed_keys(home) == {"blobs/train/s512q90/ab/x.jpg"}
