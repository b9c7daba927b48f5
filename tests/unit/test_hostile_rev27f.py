"""Hostile review rev27f of fix27e (commit 059c2b7, merged as 83e443f): the daily ingest's raw-file reader after
review rev27e (README section 2 "File-level", section 9 "Fixed since (twenty-seventh session"): ``lines.RawFile``'s
survey checks the gzip member a limit (``ingest.max_file_bytes`` / ``max_file_lines``) cuts to its end, within
``max(lines.LIMIT_CHECK_BYTES, the bytes before the cut)`` more (a member whose end lies further yields no line,
"could not be checked"), and stops after the member where either limit stops the read; ``RawFile.unread_as`` /
``TableReport.unread_as`` name a path that was no regular file when read ("not-a-file" / "missing").

What held (run): the survey's memory stays flat on a bomb far past the cut (39 MiB peak RSS inflating 1 GiB of
zeros from a 1 MB file). Read through, not run (so not claimed as tested): members ending exactly at
``max_file_bytes`` or at the ``max_file_lines``-th newline, empty members around the cut, a member ending exactly at
the check budget, and a folder -> file / file -> dangling link swap between the path checks and the open
(``_open`` names them "not-a-file" / "missing"); no defect was seen there.

Each test below is one confirmed defect, filed as a strict xfail stating the correct behaviour (all three fixed the same day
by fix27f). Ranked by severity.
"""
from __future__ import annotations

import gzip
import zlib

import dagster as dg
from test_ingest_fixtures import DayBuilder

from dagster_project.assets.ingest import ingest_day_assets
from dagster_project.resources import PickapicHome
from dagster_project.staleness import plan_build
from formats.home import DataHome
from formats.settings import load
from pipelines.ingest import lines as raw_lines
from pipelines.ingest.config import IngestConfig
from pipelines.ingest.day import ingest_day
from pipelines.ingest.reader import open_raw
from pipelines.ingest.uidindex import raw_image_uids

DAY = "2023-03-01"
LATE_UID = "22222222-2222-4222-8222-222222222222"


# 1. wrong published data (references rejected): a read the survey stopped as "could not be checked" (the member a
#    limit cuts ends past the check budget) depends on the limits, but RawFile.cut stays False (the survey's failure
#    fires first), so the day's uid index is written from it and answers later runs with other limits: the uids of
#    that member are never found again while the images file is unchanged

def test_a_read_the_check_budget_stopped_is_not_kept_in_the_uid_index(fast_tmp):
    home = DataHome(fast_tmp / "home")
    paths = DayBuilder(DAY, seed=2761).populate(users=3, images=6, rankings=5, downloads=2).write(home)
    first = gzip.decompress(paths["images"].read_bytes())
    line = b'{"image_uid": "%s", "pad": "%s"}\n' % (LATE_UID.encode(), b"p" * 200)
    late = line * ((raw_lines.LIMIT_CHECK_BYTES + (16 << 20)) // len(line))     # ends past the check budget
    paths["images"].write_bytes(gzip.compress(first, mtime=0) + gzip.compress(late, mtime=0))
    report = ingest_day(home, DAY, IngestConfig(max_file_bytes=len(first) + 100, workers=1))
    assert report.tables["images"].status == "unreadable"
    assert "could not be checked" in report.tables["images"].error
    # the file is unchanged; with limits that do not cut it, its uid is there
    assert raw_image_uids(home, DAY, {LATE_UID}, IngestConfig()) == {LATE_UID}


# 2. resources: the survey stops on the line limit only at the (max_file_lines + 1)-th newline, while the read stops
#    at the first byte after the max_file_lines-th; bytes without a newline after that (members of one long
#    line, a bomb of zeros) are all inflated, up to max_file_bytes and max(64 MiB, max_file_bytes) more (8 GiB by
#    default) for a read of a few lines. README section 9: "it now stops after the member where either limit stops
#    the read"

class _Counting:
    """zlib with a count of every byte inflated."""
    error = zlib.error

    def __init__(self) -> None:
        self.produced = 0

    def decompressobj(self, *args, **kwargs):
        inner, owner = zlib.decompressobj(*args, **kwargs), self

        class Wrapped:
            def decompress(self, data, max_length=0):
                out = inner.decompress(data, max_length)
                owner.produced += len(out)
                return out

            def flush(self, *a):
                out = inner.flush(*a)
                owner.produced += len(out)
                return out

            def __getattr__(self, name):
                return getattr(inner, name)

        return Wrapped()


def test_the_survey_stops_where_the_line_limit_stops_the_read_without_another_newline(tmp_path, monkeypatch):
    lines = b"".join(b'{"a": %d}\n' % i for i in range(10))
    member = gzip.compress(b"x" * (64 << 10), mtime=0)          # 64 KiB of one unterminated line a member
    path = tmp_path / "f.jsonl.gz"
    path.write_bytes(gzip.compress(lines, mtime=0) + member * 256)
    counter = _Counting()
    monkeypatch.setattr(raw_lines, "zlib", counter)
    raw = raw_lines.RawFile(path, max_lines=10, max_chunk=1 << 16)
    got = [data for _, data in raw_lines.iter_lines(raw.chunks(), 1 << 20, lambda: raw.cut)]
    assert got == lines.splitlines() and raw.cut and "max_file_lines" in raw.error
    assert raw.file_bytes == path.stat().st_size               # still hashed whole
    assert counter.produced <= 4 << 16                         # the members up to the cut, twice at most


# 3. data never ingested: a raw file that is a link out of the raw zone is refused unread, but its read digest is
#    None, so the day's version names the link's target as it is when recorded; replacing the link with a copy of
#    the same bytes (the obvious repair of "resolves outside the raw zone") leaves the day fresh and the file is
#    never ingested

def test_a_link_out_of_the_raw_zone_replaced_by_a_copy_leaves_the_day_stale(fast_tmp):
    home = DataHome(fast_tmp / "home")
    paths = DayBuilder(DAY, seed=2762).populate(users=3, images=6, rankings=5, downloads=2).write(home)
    outside = fast_tmp / "outside.jsonl.gz"
    outside.write_bytes(paths["rankings"].read_bytes())
    paths["rankings"].unlink()
    paths["rankings"].symlink_to(outside)                    # a delivery that links out of the raw zone
    refused = open_raw(home, paths["rankings"])
    assert refused.status == "unreadable" and "outside the raw zone" in refused.error   # never read
    (fast_tmp / "instance").mkdir()
    with dg.instance_for_test(temp_dir=str(fast_tmp / "instance")) as instance:
        instance.add_dynamic_partitions("raw_days", [DAY])
        resources = {"data_home": PickapicHome(root=str(home.root))}
        assert dg.materialize([ingest_day_assets], instance=instance, partition_key=DAY, resources=resources).success

        def planned() -> bool:
            plan = plan_build(home, load(home.root), instance)
            return any(run.partition == DAY and "ingest_day" in run.ops for run in plan.runs)

        assert not planned()                                 # unchanged: nothing to ingest again
        paths["rankings"].unlink()
        paths["rankings"].write_bytes(outside.read_bytes())  # repaired: the same bytes, now inside the raw zone
        assert planned()                                     # the file can now be read: the day is stale
