"""Hostile review rev32f: a year of nightly operation of a young app with few users (README *Running it every
night*, "Disk over a year"; `dagster_project/build.py`; the caches under HOME/cache; retention of raw days, versions
and the publish history; the simulator).

How it was driven (real components, outside the suite: each experiment is minutes of CPU). The simulator wrote 45 days
(6 users, 10 rankings a day, 32 px images, seed 1); a home received them one day a night and ran the in-process
`dagster_project.build.build` after each (real Dagster runs, Beam DirectRunner, DuckDB, NudeNet), with
`splits.min_users = 3`, `splits.min_unique_rows = 1`, `publish.workers = 1`, `publish.fsync = false`. 26 nights
were run before the deadline (2 shared CPUs); every version's manifest was kept as it was published.

What held up (no test filed):
- Incremental equals from scratch: from-scratch builds of days 1..8 and 1..20 published the same version names
  and manifests (every file's sha256) as the nightly home after those days (2023-02-20-ab3be2a4fb,
  2023-03-04-055c421d8e), the first with the same warehouse bytes too; a re-delivery of a day with the same bytes
  (new inodes) runs nothing.
- A day the app skipped and delivered a night late (day 10 landing after day 11, each built when it landed) gives
  the version the in-order nights gave (2023-02-22-8e738c7896 both ways): the late day's ingest rewrote what the
  later day's file held of it.
- Raw retention: deleting the three oldest raw day folders leaves the home "up to date" (no run, `latest` kept);
  the next night with a new day publishes the very version the home with every raw day published.
- A day with zero rankings (four empty gzip files) and a day of four zero-byte files: ingested as "empty", the
  build publishes; a home below `splits.min_users` fails each night with the one-line NotEnoughDataError, leaves
  no staging folder and keeps `latest`.
- Per-night growth stayed flat over 26 nights, and cost nearly so: 12.0 CPU-s at night 4, 12-14 to night 23,
  14-15 at nights 24-26 (those under heavier load, 100 s wall: not separable from contention here), peak RSS
  0.70-0.75 GB; Dagster's instance grew 2.6 MB and 8 files a night (2 runs: one SQLite file and
  one compute-log folder each, as README's "Disk over a year" says, 2.35 MB there); `cache/` grew by the
  per-day files only (raw_image_uids, blob_identities, about 7 KB a night); `cache/train_jpg_sha256` stays at
  most a few parts (merged at MAX_PARTS); `cache/tmp` empty after each night; `.locks` and `.staging/features`
  hold one small lock file per day (documented). A night writes only the new day's shards, its
  `meta/images/images-<day>.parquet` and the small files README lists as rewritten every night; every other file
  of the version is a hard link of the previous one.
- The publish history, the record of switched versions and `pickapic.salts` stay at `keep_versions` (+1 while a
  publish runs) entries; retention over 120 nights with reverted content (a version id seen before) and versions
  named by an earlier day keeps exactly the three most recently switched to (the test below).
- The simulator: a 4-day run reproduces a 3-day run's raw files byte for byte; a run over 29 February 2024 gives
  the three days.

Noticed, not filed: a day with zero rankings still publishes a new version (new id, same shards: its quarantine,
`ingest_files` and the card's counts are sources of the version id); under the default `splits.min_users = 10` a
young app's every night re-runs the whole global rebuild (26 s here) to fail with NotEnoughDataError, as README's
nightly retry describes; the in-process build's peak RSS rose from 0.57 to 0.75 GB over the first 22 builds of one
process (`pickapic build` is one process a build, so not filed); `cache/raw_day_digests.json` keeps the entries of raw
days retention pruned (about 1 KB a day ever seen: 64 MB, its read limit, after some 190 years).

No defect was confirmed in this area within the time box. Each test below is a defect confirmed by running it,
ranked by severity, filed as a strict xfail whose assertions state the correct behaviour; as there is none, the
file holds a passing regression test of the strongest attack on retention that held up.
"""
from __future__ import annotations

import datetime as dt
import random
from pathlib import Path

from test_fix25d import _version

from formats.dataset import latest_version, list_versions, read_history, read_switched, record_switch, switch_latest
from formats.home import DataHome
from pipelines.publish import versions

KEEP = 3


def test_a_year_of_nights_keeps_exactly_the_versions_last_switched_to(tmp_path: Path) -> None:
    """120 nights of record_switch + switch_latest + retention (what each nightly publish does after writing its
    version), with nights whose content reverts to a version id seen before and nights whose version is named by
    an earlier day (the last day's pairs all left): `latest` is always the night's version, the versions kept are
    the KEEP most recently switched to (never ordered by name), and the history and the switched record stay
    bounded by KEEP + 1 whatever the number of nights."""
    home = DataHome(tmp_path / "home")
    home.datasets.mkdir(parents=True)
    day0, rng = dt.date(2023, 2, 13), random.Random(0)
    published: list[str] = []
    for night in range(120):
        if night % 17 == 5 and len(published) > 1:
            name = published[-2]                                   # content reverted: that id again
        elif night % 11 == 3:
            name = f"{(day0 + dt.timedelta(days=night - 2)).isoformat()}-{rng.getrandbits(40):010x}"
        else:
            name = f"{(day0 + dt.timedelta(days=night)).isoformat()}-{rng.getrandbits(40):010x}"
        if not (home.datasets / name).exists():
            _version(home.datasets, name)
        assert record_switch(home.datasets, name, fsync=False) is None
        assert switch_latest(home.datasets, name, fsync=False) is None
        versions.apply_retention(home, KEEP, [])
        published.append(name)
        present = list_versions(home)
        assert latest_version(home.datasets) == name, night
        assert present == list(dict.fromkeys(reversed(published)))[:KEEP][::-1], night
        history = read_history(home.datasets)
        assert history[-KEEP:] == present and len(history) <= KEEP + 1, night
        switched = read_switched(home.datasets)
        assert set(present) <= switched and len(switched) <= KEEP + 1, night
    assert sorted(p.name for p in home.datasets.iterdir()) == sorted(present + ["latest"])
