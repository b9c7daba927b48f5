"""Hostile review rev29e of the fix merged for review rev29a (fix29a, ``tests/unit/test_fix29a.py``).

Reviewed: (a) a pruned raw day (raw folder gone, or a link leading out of the raw zone) whose ``images`` partition
the warehouse keeps is searched in the warehouse (``pipelines/ingest/uidindex.py``: ``kept_image_uids``,
``reference_days``; used by the reference check, ``earlierimages`` and the late-row look; ingest code version 6);
(b) the feature stage copies a row by uid unread only while its blob has the identity recorded in
``cache/blob_identities/dt=DAY.parquet`` (``pipelines/features/blobidentity.py``; features code version 7).
Driven with the real ingest (``ingest_day`` on ``DayBuilder`` days), the real feature stage (``build_features``,
Beam's DirectRunner in process) and the real ``pickapic build`` CLI as a subprocess on a simulated home.

What held up (no test): a pruned day delivered again with other contents (the later day that took an image from
it is ingested again and equals a build from scratch, whether or not it was re-ingested while the day was gone);
a raw day replaced by a link inside the raw zone (a day) or out of it (pruned: searched in the warehouse), as
``scan_raw_zone`` sees it; a blob rewritten in place with its size and mtime put back by ``utime`` (the ctime
shows it); a record of another blob base; a record file that is garbage; the upgrade 6 -> 7 (each reused blob read
and hashed once, no decode: the worker's ``reuse_sha256`` path), and the next rerun reading nothing.

Noticed, not filed: a quarantined images line longer than 64 KiB is searched in its first 64 KiB only (documented
in README section 2), so a uid past that point resolved a later day's row while the raw day was there and no
longer does after the prune (the same data loss as test 1, documented as a limit); ``cache/raw_image_uids/dt=P``
of a pruned day, which holds exactly what the raw search found, is left unused. A record file that is a
symbolic link is read through the link and trusted (``rulecache.read_trusted`` refuses one). On a blob store
whose ctimes lie in the future (an NFS server's clock ahead) no identity is ever recorded until the clock
passes them: those rows are read and hashed on every rerun (cost only, not tested: a ctime cannot be set).
``cache/blob_identities`` grows one file per day ever built (also for days whose partitions were removed),
like ``cache/raw_image_uids``.

Each test below is a defect confirmed by running it, ranked by severity, filed as a strict xfail whose assertions
state the correct behaviour. All six were fixed the same day (fix29e, tested further in
``tests/unit/test_fix29e.py``).
"""
from __future__ import annotations

import errno
import gzip
import hashlib
import json
import os
import shutil
import threading
import time
import tracemalloc
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from test_features_fixtures import fake_detector, png, write_day
from test_ingest_fixtures import DayBuilder

from formats.files import write_parquet_atomic
from formats.home import DataHome
from formats.settings import write_settings
from pipelines.features import blobidentity
from pipelines.features.config import FeaturesConfig
from pipelines.features.stage import build_features
from pipelines.ingest.day import ingest_day
from simulator import SimConfig, simulate
from tests.cli_forkserver import CLI_MODULES, THIRD_PARTY, ForkServer, build_stdout, forked_cli  # noqa: F401 (a fixture)

# the module's fork server preimports the CLI and its stages too: its builds patch nothing
FORK_PREIMPORT = THIRD_PARTY + CLI_MODULES

DAY = "2023-03-01"


def _rows(home: DataHome, table: str, day: str) -> list[dict]:
    return pq.read_table(home.partition_file(table, day)).to_pylist()


def _later_day_results(home: DataHome, day: str) -> tuple[int, list[str]]:
    return len(_rows(home, "downloads", day)), [row["reason"] for row in _rows(home, "quarantine", day)]


# ------------------------------------------------------------------ 1. data loss: a kept line's uid masked away
def test_a_pruned_days_quarantined_line_with_a_nested_image_uid_member_still_resolves(tmp_path: Path) -> None:
    home = DataHome(tmp_path / "home")
    early = DayBuilder("2023-03-01").populate(users=2, images=3, rankings=1, downloads=0)
    later = DayBuilder("2023-03-03", id_base=1000).populate(users=2, images=3, rankings=1, downloads=0)
    nested = early.uid()
    early.add("images", early.image(extra={"image_uid": nested}))   # quarantined (unexpected_field)
    later.add("downloads", later.download(image_uid=nested))
    early.write(home)
    later.write(home)
    for day in (early.day, later.day):
        ingest_day(home, day)
    assert [row["reason"] for row in _rows(home, "quarantine", early.day)] == ["unexpected_field"]
    before = _later_day_results(home, later.day)
    assert before == (1, [])                      # the raw search counts the line's member as exported
    shutil.rmtree(home.raw_day(early.day))        # retention prunes the raw day; its partitions stay
    ingest_day(home, later.day)                   # delivered again / --force / a code-version bump
    assert _later_day_results(home, later.day) == before


# ------------------------------------------------------- 2. wrong data: a pruned day resolves what it never held
def test_a_pruned_day_resolves_no_uid_its_raw_file_did_not_export(tmp_path: Path) -> None:
    home = DataHome(tmp_path / "home")
    early = DayBuilder("2023-03-01").populate(users=2, images=3, rankings=1, downloads=0)
    later = DayBuilder("2023-03-03", id_base=1000).populate(users=2, images=3, rankings=1, downloads=0)
    ghost = early.uid()
    early.add("images", b'{"image\\u005fuid": "' + ghost.encode() + b'", "prompt": "\xff", "extra": 1}')
    later.add("downloads", later.download(image_uid=ghost))
    early.write(home)
    later.write(home)
    for day in (early.day, later.day):
        ingest_day(home, day)
    assert [row["reason"] for row in _rows(home, "quarantine", early.day)] == ["invalid_utf8"]
    before = _later_day_results(home, later.day)
    assert before == (0, ["unknown_image_reference"])
    shutil.rmtree(home.raw_day(early.day))
    ingest_day(home, later.day)
    assert _later_day_results(home, later.day) == before


# ------------------------------------------- 3. wrong published data: a copy by uid on another day stays stale
def _pickapic_build(cli: ForkServer, home: DataHome, *args: str) -> str:
    """`pickapic build --home HOME ARGS`, forked from ``cli``'s server, which imported the CLI and its stages once
    (``tests/cli_forkserver.py``: each run would import Dagster, Beam and DuckDB again); its stdout."""
    return build_stdout(cli, home.root, *args)


def test_a_day_that_copied_a_row_by_uid_follows_the_earlier_days_row_after_a_blob_is_replaced(
        tmp_path: Path, forked_cli: ForkServer) -> None:
    sim = SimConfig(days=2, users=10, rankings_per_day=16, image_size=32, seed=3)
    day1, day2 = sim.day(0), sim.day(1)
    home = DataHome(tmp_path / "home")
    simulate(home, sim)
    write_settings(home.root, {"splits.min_users": 3, "splits.min_unique_rows": 1})
    picked = None
    for line in gzip.decompress(home.raw_file(day1, "images").read_bytes()).splitlines():
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict) and isinstance(obj.get("image_uid"), str) \
                and (home.root / home.raw_image_relpath(obj["image_uid"])).is_file():
            picked = obj
            break
    assert picked is not None
    uid = picked["image_uid"]
    images2 = home.raw_file(day2, "images")                  # the image's line exported again the next day
    images2.write_bytes(gzip.compress(gzip.decompress(images2.read_bytes()) + json.dumps(picked).encode() + b"\n",
                                      mtime=0))
    _pickapic_build(forked_cli, home)

    def sha(day: str) -> str:
        return {row["image_uid"]: row["sha256"] for row in _rows(home, "image_features", day)}[uid]

    assert sha(day1) == sha(day2)
    blob = home.root / home.raw_image_relpath(uid)
    blob.write_bytes(png(77, (32, 32)))                       # a corrected image delivered again under the uid
    time.sleep(0.3)
    _pickapic_build(forked_cli, home, "--force", "--from", day1, "--to", day1)
    _pickapic_build(forked_cli, home)                      # the next nightly
    now = hashlib.sha256(blob.read_bytes()).hexdigest()
    assert sha(day1) == now
    assert sha(day2) == now


# ------------------------------------------------------------------------------ 4. hang: a FIFO as the record
def test_a_fifo_at_the_blob_identity_record_is_never_waited_on(tmp_path: Path) -> None:
    config = FeaturesConfig(workers=0)
    home = DataHome(tmp_path / "home")
    write_day(home, DAY, {"a": png(1), "b": png(2)})
    time.sleep(0.15)
    build_features(home, DAY, config, detector_factory=fake_detector)
    record = blobidentity.record_path(home, DAY)
    record.unlink()
    os.mkfifo(record)
    opened: list[bool] = []
    finished = threading.Event()

    def writer() -> None:   # lets a reader blocked on the FIFO go on, and notes that one was there
        while not finished.is_set():
            try:
                fd = os.open(record, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as exc:
                if exc.errno != errno.ENXIO:
                    return
                time.sleep(0.01)
                continue
            opened.append(True)
            os.close(fd)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        report = build_features(home, DAY, config, detector_factory=fake_detector)
    finally:
        finished.set()
        thread.join()
    assert report.features_rows == 2
    assert opened == []                  # the stage never opened (and so never waited on) the FIFO


# --------------------------------------------------------- 5. security: a link at the cache folder written through
def test_a_link_at_the_blob_identities_folder_is_never_written_through(tmp_path: Path) -> None:
    config = FeaturesConfig(workers=0)
    home = DataHome(tmp_path / "home")
    write_day(home, DAY, {"a": png(1)})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    theirs = elsewhere / f"dt={DAY}.parquet"
    theirs.write_bytes(b"another program's file")
    home.cache.mkdir(parents=True, exist_ok=True)
    (home.cache / "blob_identities").symlink_to(elsewhere, target_is_directory=True)
    time.sleep(0.15)
    report = build_features(home, DAY, config, detector_factory=fake_detector)
    assert report.features_rows == 1
    assert theirs.read_bytes() == b"another program's file"
    assert sorted(os.listdir(elsewhere)) == [theirs.name]


# ------------------------------------------------------ 6. memory: whole earlier days' records held for one row
def test_checking_reused_rows_holds_memory_for_those_rows_not_whole_earlier_days(tmp_path: Path) -> None:
    home = DataHome(tmp_path / "home")
    home.raw_images.mkdir(parents=True)
    base = str(home.root)
    blob = home.root / home.raw_image_relpath("x")
    blob.write_bytes(b"x")
    days, per_day = 20, 10_000
    for i in range(days):
        uids = [f"{i:08x}-0000-4000-8000-{j:012x}" for j in range(per_day)]
        table = pa.table({"image_uid": uids, "blob_path": [f"raw/images/{u}.png" for u in uids],
                          "sha256": ["0" * 64] * per_day,
                          "identity": ["[1234,1672531200000000000,123456,1672531200000000000]"] * per_day},
                         schema=blobidentity._SCHEMA)
        table = table.replace_schema_metadata({"version": blobidentity._VERSION,
                                               "base": blobidentity._key(home, base)})
        path = blobidentity.record_path(home, f"2023-01-{i + 1:02d}")
        path.parent.mkdir(parents=True, exist_ok=True)
        write_parquet_atomic(table, path)
    rows = [{"image_uid": f"{i:08x}-0000-4000-8000-{0:012x}", "blob_path": home.raw_image_relpath("x"),
             "sha256": "0" * 64} for i in range(days)]
    sources = {row["image_uid"]: f"2023-01-{i + 1:02d}" for i, row in enumerate(rows)}
    identities = blobidentity.BlobIdentities(home, "2023-02-01", base)

    def measured() -> list:
        tracemalloc.start()
        try:
            unknown = identities.unverified(rows, sources)
            held, _ = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        return [sorted(unknown), held]

    # in a forked child, where no other thread runs: CPython 3.11's tracemalloc.stop() races with threads that
    # allocate meanwhile (gh-128679, fixed in 3.12/3.13 only) and segfaulted the xdist worker once, beside the idle
    # Beam and Arrow threads earlier tests left in it (the thirty-fourth session's full-suite run)
    from benchmarks import in_child

    (unknown, held), _ = in_child(measured)
    assert set(unknown) == {row["image_uid"] for row in rows}   # the identity differs: all read again
    assert held < 20_000_000, f"{held / 1e6:.0f} MB held for {days} rows"
