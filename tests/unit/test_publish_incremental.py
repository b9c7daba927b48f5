"""Nightly publishing writes what changed: content-stable shards, hard-linked reuse, late changes, retention."""
from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from test_publish_fixtures import make_home, write_split_pairs

from formats import dataset
from formats.dataset import list_versions, resolve_version
from formats.home import DataHome
from pipelines.publish import chunkwriter, meta, shards
from pipelines.publish.config import PublishConfig
from pipelines.publish.manifest import verify_version
from pipelines.publish.version import publish_dataset
from pipelines.publish.versions import apply_retention, staging_root

# One shard per (split, export day): no limit or anchor cuts inside these small days, no min-shards halving.
DAYS = 6
CONFIG = PublishConfig(workers=1, fsync=False, min_shards_per_split=1, max_samples_per_shard=10**6,
                       max_shard_bytes=10**12)


def _split_pairs(home: DataHome) -> pa.Table:
    return pq.read_table(home.table_file("split_pairs"))


def _history(root: Path, seed: int = 7) -> tuple[DataHome, pa.Table]:
    """A home with DAYS export days of split_pairs; returns it and the full table (the last day not yet published)."""
    home = make_home(root, num_rankings=150, seed=seed, days=DAYS)
    return home, _split_pairs(home)


def _last_day(table: pa.Table):
    return max(table.column("dt").to_pylist())


def _without_last_day(table: pa.Table) -> pa.Table:
    return table.filter(pc.not_equal(table.column("dt"), pa.scalar(_last_day(table), pa.date32())))


def _files(version: Path) -> dict[str, os.stat_result]:
    return {p.relative_to(version).as_posix(): p.stat() for p in sorted(version.rglob("*")) if p.is_file()}


def _digests(version: Path) -> dict[str, str]:
    return {rel: hashlib.sha256((version / rel).read_bytes()).hexdigest() for rel in _files(version)}


def _shards_by_key(version: Path) -> dict[str, str]:
    """sample key -> relative path of the tar holding it."""
    out = {}
    for sidecar in version.glob("*/pickapic-*.parquet"):
        for key in pq.read_table(sidecar, columns=["key"]).column("key").to_pylist():
            out[key] = f"{sidecar.parent.name}/{sidecar.stem}.tar"
    return out


def _linked(old: Path, new: Path) -> set[str]:
    """Relative paths of new's tars that are the very same file (inode) as a tar in old."""
    old_inodes = {st.st_ino for rel, st in _files(old).items() if rel.endswith(".tar")}
    return {rel for rel, st in _files(new).items() if rel.endswith(".tar") and st.st_ino in old_inodes}


def _publish_nightly(home: DataHome, table: pa.Table, config: PublishConfig = CONFIG):
    write_split_pairs(home, table)
    return publish_dataset(home, config)


def test_incremental_equals_from_scratch_and_reuses_by_hard_link(tmp_path: Path) -> None:
    home, full = _history(tmp_path / "inc")
    first = _publish_nightly(home, _without_last_day(full))
    nightly = _publish_nightly(home, full)
    new_day = _last_day(full).strftime("%Y%m%d")
    # only the new day's shards (and unique-split buckets that gained a row) are written; the rest is linked
    assert nightly.shards_linked > 0 and nightly.shards_written + nightly.shards_linked == sum(nightly.shards.values())
    written = {rel for rel in _files(nightly.path) if rel.endswith(".tar")} - _linked(first.path, nightly.path)
    assert written and all(new_day in rel or "_unique/" in rel for rel in written), written
    # a reused shard is a hard link: same inode, a link count of at least 2, identical bytes
    for rel in _linked(first.path, nightly.path):
        a, b = (first.path / rel).stat(), (nightly.path / rel).stat()
        assert a.st_ino == b.st_ino and b.st_nlink >= 2
    # the same inputs published from scratch give the same version, byte for byte, file for file
    scratch, _ = _history(tmp_path / "scratch")
    write_split_pairs(scratch, full)
    clean = publish_dataset(scratch, CONFIG)
    assert clean.version == nightly.version and clean.shards_linked == 0
    assert _digests(clean.path) == _digests(nightly.path)


def test_a_new_day_reusing_old_prompts_changes_counts_not_shards(tmp_path: Path) -> None:
    home, full = _history(tmp_path / "h")
    history = _without_last_day(full)
    first = _publish_nightly(home, history)
    # the new day types prompts already in the history: their counts change, their old samples do not
    last = full.filter(pc.equal(full.column("dt"), pa.scalar(_last_day(full), pa.date32())))
    old_prompts = set(history.column("prompt_key").to_pylist())
    reused = [p for p in set(last.column("prompt_key").to_pylist()) if p in old_prompts]
    assert reused, "the fixture's new day must reuse an old prompt"
    nightly = _publish_nightly(home, full)
    old_tars = {rel for rel in _files(first.path) if rel.endswith(".tar") and "_unique/" not in rel}
    assert old_tars <= _linked(first.path, nightly.path)
    before = {(r["split"], r["prompt_key"]): r["num_example_per_prompt"]
              for r in pq.read_table(sorted(first.path.glob("*/prompt_counts.parquet"))).to_pylist()}
    after = {(r["split"], r["prompt_key"]): r["num_example_per_prompt"]
             for r in pq.read_table(sorted(nightly.path.glob("*/prompt_counts.parquet"))).to_pylist()}
    assert any(after[k] > before[k] for k in before if k[1] in reused and k in after)


def _assert_only_touched_rewritten(first: Path, nightly: Path, touched_keys: set[str],
                                   gained: set[tuple[str, str]] = frozenset()) -> set[str]:
    """Every old shard holding a touched key is replaced; every other old shard is linked, except those of
    a (split, day) that ``gained`` samples. Returns the touched shards."""
    by_key = _shards_by_key(first)
    touched = {by_key[k] for k in touched_keys if k in by_key}
    old_tars = {rel for rel in _files(first) if rel.endswith(".tar")}
    growing = {rel for rel in old_tars if (rel.split("/")[0], rel.split("-")[2]) in gained}
    linked = _linked(first, nightly)
    assert touched and not (touched & linked), touched & linked
    assert old_tars - touched - growing <= linked, sorted(old_tars - touched - growing - linked)
    return touched


def test_late_ban_rewrites_only_the_shards_holding_that_users_pairs(tmp_path: Path) -> None:
    home, full = _history(tmp_path / "h")
    first = _publish_nightly(home, full)
    users = full.group_by("user_id").aggregate([("dt", "count_distinct")]).sort_by([("dt_count_distinct", "descending"),
                                                                                   ("user_id", "ascending")])
    banned = users.column("user_id")[0].as_py()           # active on several old days
    keys = {shards.sample_key(p, s) for p, s, u in zip(full.column("pair_id").to_pylist(), full.column("split").to_pylist(),
                                                       full.column("user_id").to_pylist()) if u == banned}
    nightly = _publish_nightly(home, full.filter(pc.not_equal(full.column("user_id"), banned)))
    touched = _assert_only_touched_rewritten(first.path, nightly.path, keys)
    assert len(touched) >= 2
    assert not set(_shards_by_key(nightly.path)) & keys                 # the user is gone from every shard
    assert nightly.shards_written == sum(1 for rel in _files(nightly.path) if rel.endswith(".tar")) \
        - len(_linked(first.path, nightly.path))


def test_with_small_shards_a_late_ban_rewrites_about_one_shard_per_day_the_user_was_active(tmp_path: Path) -> None:
    """A user's pairs of one day are one run inside a shard, so shards smaller than a day cost a ban
    one shard per active day, plus at most a merge with the next shard of that day (bounded ripple)."""
    home, full = _history(tmp_path / "h")
    groups = full.group_by(["user_id", "split", "dt"]).aggregate([("pair_id", "count")])
    per_user = groups.group_by("user_id").aggregate([("pair_id_count", "max"), ("pair_id_count", "sum"),
                                                     ("dt", "count")])
    per_user = per_user.filter(pc.greater(per_user.column("pair_id_count_sum"), per_user.column("dt_count")))
    banned = per_user.sort_by([("dt_count", "descending"), ("user_id", "ascending")]).column("user_id")[0].as_py()
    longest = max(c for u, c in zip(groups.column("user_id").to_pylist(), groups.column("pair_id_count").to_pylist())
                  if u == banned)
    config = PublishConfig(workers=1, fsync=False, min_shards_per_split=1, max_samples_per_shard=max(3, longest),
                           max_shard_bytes=10**12)
    first = _publish_nightly(home, full, config)
    rows = [r for r in full.to_pylist() if r["user_id"] == banned]
    by_key = _shards_by_key(first.path)
    shard_of_day: dict[tuple, set] = {}
    for r in rows:
        shard_of_day.setdefault((r["split"], r["dt"]), set()).add(by_key[shards.sample_key(r["pair_id"], r["split"])])
    assert len(rows) > len(shard_of_day) > 1                             # several pairs on some day, several days
    assert all(len(s) == 1 for s in shard_of_day.values()), shard_of_day  # one run, one shard
    touched = set().union(*shard_of_day.values())
    old_tars = sorted(rel for rel in _files(first.path) if rel.endswith(".tar"))
    assert len(old_tars) > 3 * len(touched)                              # shards much smaller than a day
    nightly = _publish_nightly(home, full.filter(pc.not_equal(full.column("user_id"), banned)), config)
    linked = _linked(first.path, nightly.path)
    rewritten = set(old_tars) - linked
    assert touched <= rewritten
    # anything else rewritten lies in a day the user was active on, at most two shards a day: the run's
    # followers join the shard before when the run started one, and the next-best run becomes a cut
    # (or the day's shard count changes by one) somewhere in that day
    def day_of(rel: str) -> tuple[str, str]:
        return rel.split("/")[0], dataset.shard_segment(rel)

    extra: dict[tuple[str, str], int] = {}
    for rel in rewritten - touched:
        extra[day_of(rel)] = extra.get(day_of(rel), 0) + 1
    assert set(extra) <= {day_of(t) for t in touched}, sorted(rewritten - touched)
    assert all(count <= 2 for count in extra.values()), extra
    assert len(rewritten) < 3 * len(touched)
    assert not set(_shards_by_key(nightly.path)) & {shards.sample_key(r["pair_id"], r["split"]) for r in rows}


def _write_rankings_volumes(home: DataHome, table: pa.Table, per_day: int) -> dict[str, int]:
    """``ingest_files`` partitions saying each export day of ``table`` had a raw rankings export of
    ``per_day`` lines (as the ingest writes them; the other tables' rows must not count)."""
    from schemas import get_schema

    volumes = {}
    for day in sorted({d for d in table.column("dt").to_pylist()}):
        rows = [{"table": name, "dt": day, "file": f"raw/app_logs/dt={day}/{name}.jsonl.gz", "file_sha256": None,
                 "file_bytes": 1, "status": "ok", "lines_in": lines, "accepted": lines, "accepted_late_image": 0,
                 "quarantined": 0} for name, lines in (("images", 7 * per_day), ("rankings", per_day))]
        path = home.partition_file("ingest_files", day.isoformat())
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows, schema=get_schema("ingest_files")), path)
        volumes[day.isoformat()] = per_day
    return volumes


def test_the_days_logged_rankings_set_shard_sizes_and_a_ban_moves_no_other_cut(tmp_path: Path) -> None:
    """With the app's exports ingested, a day's volume is the line count of its raw rankings export: it is
    in the manifest and the version id, it sets how many shards a day has, and a late ban (which
    leaves the rankings as they were) rewrites only shards of the days the user was active on, at
    most one more than those holding the user's pairs per day."""
    home, full = _history(tmp_path / "h")
    config = PublishConfig(workers=1, fsync=False, min_shards_per_split=1, shards_per_day=40, min_shard_bytes=1)
    volumes = _write_rankings_volumes(home, full, 60)
    first = _publish_nightly(home, full, config)
    manifest = json.loads((first.path / "manifest.json").read_text())
    assert manifest["sources"]["rankings_per_day"] == {day: str(n) for day, n in volumes.items()}
    busier = tmp_path / "busier"
    shutil.copytree(home.root, busier, symlinks=True)
    other = DataHome(busier)
    shutil.rmtree(other.datasets)
    _write_rankings_volumes(other, full, 6_000)          # the same samples on far busier days: fewer, larger shards
    quiet = publish_dataset(other, config)
    assert quiet.version != first.version and sum(quiet.shards.values()) < sum(first.shards.values()) / 3
    users = full.column("user_id").to_pylist()
    banned = max(set(users), key=lambda u: (len({d for d, v in zip(full.column("dt").to_pylist(), users) if v == u}), u))
    rows = [r for r in full.to_pylist() if r["user_id"] == banned]
    by_key = _shards_by_key(first.path)
    touched = {by_key[shards.sample_key(r["pair_id"], r["split"])] for r in rows}
    nightly = _publish_nightly(home, full.filter(pc.not_equal(full.column("user_id"), banned)), config)
    old_tars = {rel for rel in _files(first.path) if rel.endswith(".tar")}
    rewritten = old_tars - _linked(first.path, nightly.path)
    days = {(rel.split("/")[0], dataset.shard_segment(rel)) for rel in touched}
    assert touched <= rewritten and {(rel.split("/")[0], dataset.shard_segment(rel)) for rel in rewritten} <= days
    assert len(rewritten - touched) <= len(days), sorted(rewritten - touched)
    assert len(old_tars) > 4 * len(rewritten)


def test_cluster_merge_and_a_prompt_becoming_held_out_rewrite_only_their_shards(tmp_path: Path) -> None:
    home, full = _history(tmp_path / "h")
    first = _publish_nightly(home, full)
    rows = full.to_pylist()
    train = [r for r in rows if r["split"] == "train"]
    # a duplicate cluster merges two old clusters: the members of one take the other's id
    merged_from, merged_into = train[0]["cluster_0"], train[-1]["cluster_1"]
    # a prompt becomes held out: all its train rows move to validation
    moved_prompt = next(r["prompt_key"] for r in reversed(train) if r["prompt_key"] != train[0]["prompt_key"])
    touched, segments = set(), set()
    for r in rows:
        changed = False
        for side in ("cluster_0", "cluster_1"):
            if r[side] == merged_from:
                r[side], changed = merged_into, True
        old_split = r["split"]
        if r["split"] == "train" and r["prompt_key"] == moved_prompt:
            r["split"], changed = "validation", True
        if changed:
            touched.add(shards.sample_key(r["pair_id"], old_split))
            segments |= {(old_split, r["dt"].strftime("%Y%m%d")), (r["split"], r["dt"].strftime("%Y%m%d"))}
    nightly = _publish_nightly(home, pa.Table.from_pylist(rows, schema=full.schema))
    _assert_only_touched_rewritten(first.path, nightly.path, touched, gained=segments)
    written = {rel for rel in _files(nightly.path) if rel.endswith(".tar")} - _linked(first.path, nightly.path)
    assert any(rel.startswith("validation/") for rel in written), "the moved rows form new validation shards"
    for rel in written:
        split, name = rel.split("/")
        assert split.endswith("_unique") or (split, name.split("-")[2]) in segments, rel


def test_deleting_old_versions_leaves_newer_ones_intact(tmp_path: Path) -> None:
    home, full = _history(tmp_path / "h")
    days = sorted(set(full.column("dt").to_pylist()))
    versions = []
    for last in days[-3:]:
        versions.append(_publish_nightly(home, full.filter(pc.less_equal(full.column("dt"), pa.scalar(last, pa.date32())))))
    assert list_versions(home) == [v.version for v in versions]
    shared = _linked(versions[0].path, versions[2].path)
    assert shared, "the oldest and the newest version share shards"
    # retention (and a plain delete) of older versions never breaks a newer one's hard links
    shutil.rmtree(versions[0].path)
    apply_retention(home, keep=1)
    assert list_versions(home) == [versions[2].version] and resolve_version(home) == versions[2].path
    verify_version(versions[2].path, checksums=True)
    for rel in shared:
        assert (versions[2].path / rel).stat().st_nlink == 1


def test_three_versions_take_little_more_disk_than_one(tmp_path: Path) -> None:
    home, full = _history(tmp_path / "h")
    days = sorted(set(full.column("dt").to_pylist()))
    for last in days[-3:]:
        report = _publish_nightly(home, full.filter(pc.less_equal(full.column("dt"), pa.scalar(last, pa.date32()))))
    inodes: dict[int, int] = {}
    for name in list_versions(home):
        for st in _files(home.datasets / name).values():
            inodes[st.st_ino] = st.st_size
    one = sum(st.st_size for st in _files(report.path).values())
    assert sum(inodes.values()) < 1.6 * one      # a day is ~1/6 of this history: 3 versions ~ 1 + 2 days' deltas


def test_link_falls_back_to_a_copy_across_file_systems(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home, full = _history(tmp_path / "h")
    first = _publish_nightly(home, _without_last_day(full))

    def cross_device(source, target, **_):
        raise OSError(errno.EXDEV, "Invalid cross-device link", str(source))

    monkeypatch.setattr(os, "link", cross_device)
    nightly = _publish_nightly(home, full)
    assert nightly.shards_linked > 0 and not _linked(first.path, nightly.path)   # copies, not links
    verify_version(nightly.path, checksums=True)
    reused = [rel for rel in _files(nightly.path) if rel.endswith("_stats.json") and (first.path / rel).is_file()
              and json.loads((first.path / rel).read_text())["plan_sha256"]
              == json.loads((nightly.path / rel).read_text())["plan_sha256"]]
    assert len(reused) == nightly.shards_linked
    for stats in reused:
        for rel in (stats, stats.replace("_stats.json", ".tar"), stats.replace("_stats.json", ".parquet")):
            assert (first.path / rel).read_bytes() == (nightly.path / rel).read_bytes()


def test_a_full_disk_in_a_shard_writer_cleans_up_and_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home, full = _history(tmp_path / "h")
    first = _publish_nightly(home, _without_last_day(full))
    write_split_pairs(home, full)
    real_write = os.write
    left = [1000]

    def full_disk_write(fd, data):
        """The tar writer's writes: 1,000 bytes go through (the last call partly), then the disk is full."""
        if not re.search(r"\.tar\.[0-9a-f]+\.tmp$", os.readlink(f"/proc/self/fd/{fd}")):
            return real_write(fd, data)
        if not left[0]:
            raise OSError(errno.ENOSPC, "No space left on device")
        taken = real_write(fd, data[: left[0]])     # O_DIRECT refuses 1,000 bytes: the writer goes on buffered
        left[0] -= taken
        return taken

    monkeypatch.setattr(chunkwriter.os, "write", full_disk_write)
    with pytest.raises(OSError, match=r"no space left on device at .*\.partial-.*pickapic-.*\.tar$") as caught:
        publish_dataset(home, CONFIG)
    assert caught.value.errno == errno.ENOSPC
    (staging,) = staging_root(home.datasets).glob(".partial-*")
    assert not [p for p in staging.rglob("*") if p.name.endswith(".tmp")], "a temp file still holds the space"
    assert resolve_version(home) == first.path
    monkeypatch.setattr(chunkwriter.os, "write", real_write)
    again = publish_dataset(home, CONFIG)
    assert again.version != first.version and resolve_version(home) == again.path
    verify_version(again.path, checksums=True)


def test_a_full_disk_after_the_shards_cleans_up_and_names_the_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home, full = _history(tmp_path / "h")
    write_split_pairs(home, full)
    real_meta = meta.write_meta

    def meta_then_full(staging, *args, **kwargs):
        (staging / "meta").mkdir(parents=True, exist_ok=True)
        (staging / "meta" / ".decisions.parquet.abc.tmp").write_bytes(b"half")   # a writer's temp file
        raise OSError(errno.ENOSPC, "No space left on device", str(staging / "meta" / ".decisions.parquet.abc.tmp"))

    monkeypatch.setattr(meta, "write_meta", meta_then_full)
    with pytest.raises(OSError, match=r"no space left on device at .*\.partial-.*/meta/"):
        publish_dataset(home, CONFIG)
    (staging,) = staging_root(home.datasets).glob(".partial-*")
    assert not [p for p in staging.rglob("*") if p.name.endswith(".tmp")]
    assert list(staging.glob("*/*_stats.json")), "committed shards stay for the rerun"
    monkeypatch.setattr(meta, "write_meta", real_meta)
    report = publish_dataset(home, CONFIG)
    assert report.shards_resumed == sum(report.shards.values()) and report.shards_written == 0


def test_the_trainer_reads_the_weight_beside_the_shards(tmp_path: Path) -> None:
    from training.data import pair_meta, tar_samples

    home, full = _history(tmp_path / "h")
    report = _publish_nightly(home, full)
    split_dir = report.path / "train"
    urls = [{"url": str(split_dir / name)} for name in json.loads((split_dir / "sizes.json").read_text())]
    expected = {shards.sample_key(r["pair_id"], "train"): r["num_example_per_prompt"]
                for r in _split_pairs(home).to_pylist() if r["split"] == "train"}
    metas = [pair_meta(sample) for sample in tar_samples(urls)]
    assert len(metas) == len(expected)
    assert all(m["weight"] == 1.0 / expected[m["key"]] for m in metas)


KILLED_PUBLISH = """
import sys
from formats.home import DataHome
from pipelines.publish.config import PublishConfig
from pipelines.publish.version import publish_dataset
report = publish_dataset(DataHome.at(sys.argv[1]), PublishConfig(workers=1, fsync=False, min_shards_per_split=1,
                                                                  max_samples_per_shard=10**6, max_shard_bytes=10**12))
print(report.version, report.shards_written, report.shards_linked, report.shards_resumed)
"""


@pytest.mark.parametrize("fault", ["publish.after_link:2", "shards.after_tar"])
def test_a_nightly_publish_killed_while_linking_or_writing_resumes_byte_identical(tmp_path: Path, fault: str) -> None:
    import signal
    import subprocess
    import sys

    home, full = _history(tmp_path / "h")
    first = _publish_nightly(home, _without_last_day(full))
    write_split_pairs(home, full)
    env = {k: v for k, v in os.environ.items() if k != "PICKAPIC_FAULT"}
    repo = Path(__file__).resolve().parents[2]
    command = [sys.executable, "-c", KILLED_PUBLISH, str(home.root)]
    killed = subprocess.run(command, cwd=repo, env={**env, "PICKAPIC_FAULT": fault}, capture_output=True, text=True,
                            start_new_session=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert resolve_version(home) == first.path and list_versions(home) == [first.version]
    (staging,) = staging_root(home.datasets).glob(".partial-*")
    assert list(staging.rglob("*_stats.json")), "something was committed before the kill"
    done = subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    version, written, linked, resumed = done.stdout.split()
    assert int(resumed) > 0 and int(linked) + int(written) + int(resumed) == sum(1 for _ in (home.datasets / version).glob("*/*.tar"))
    final = home.datasets / version
    assert _linked(first.path, final), "resumed links still share the older version's inodes"
    scratch, _ = _history(tmp_path / "scratch")
    write_split_pairs(scratch, full)
    clean = publish_dataset(scratch, CONFIG)
    assert clean.version == version and _digests(clean.path) == _digests(final)


def test_the_trainer_draws_shards_by_their_sample_counts(tmp_path: Path) -> None:
    """Shards of one export day differ in size; drawing them uniformly would over-sample small days."""
    from itertools import islice

    from training.data import ImageSpec, TrainPairStream, split_shards

    home, full = _history(tmp_path / "h")
    report = _publish_nightly(home, full)
    shards_ = split_shards(report.path, "train")
    sizes = json.loads((report.path / "train" / "sizes.json").read_text())
    assert len(set(sizes.values())) > 1, "the fixture's days must differ in size"
    stream = TrainPairStream(shards_, 4, None, ImageSpec(32, 32), seed=3, shuffle_buffer=1, shuffle_initial=1,
                               resampled=True, draft=True, num_workers=1)
    assert stream.weights == [sizes[p.name] for p in shards_]
    draws = [Path(d["url"]).name for d in islice(stream._resampled_shards(0, 1, 0), 6000)]
    total = sum(sizes.values())
    for name, count in sizes.items():
        assert abs(draws.count(name) / len(draws) - count / total) < 0.03, (name, draws.count(name), count)


def test_day_volumes_read_the_raw_rankings_line_counts(tmp_path: Path) -> None:
    """Only the rankings rows count; a day without ingest records, or with a null count (outside the
    contract), has no volume (its splits fall back to their own counts), never a volume of 0."""
    import datetime as dt

    from pipelines.publish.samples import day_volumes
    from schemas import get_schema

    home = DataHome(tmp_path / "h")
    assert day_volumes(home) == {}

    def write(day: str, counts: dict[str, int | None]) -> None:
        rows = [{"table": name, "dt": dt.date.fromisoformat(day), "file": f"raw/app_logs/dt={day}/{name}.jsonl.gz",
                 "file_sha256": None, "file_bytes": 1, "status": "ok", "lines_in": lines, "accepted": 0,
                 "accepted_late_image": 0, "quarantined": 0} for name, lines in counts.items()]
        path = home.partition_file("ingest_files", day)
        path.parent.mkdir(parents=True, exist_ok=True)
        schema = get_schema("ingest_files")
        schema = schema.set(schema.get_field_index("lines_in"), schema.field("lines_in").with_nullable(True))
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)

    write("2023-03-01", {"users": 5, "images": 200, "rankings": 120, "downloads": 9})
    write("2023-03-02", {"rankings": 0})
    write("2023-03-03", {"rankings": None})
    write("2023-03-04", {"images": 3})
    assert day_volumes(home) == {"2023-03-01": 120, "2023-03-02": 0}


def test_the_plan_uses_the_volumes_the_version_id_saw_even_when_there_were_none(tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """An ingest landing between the version id and the plan must not change the plan: the volumes
    read once (none here) are the ones planned with, so the same id always means the same shards."""
    from pipelines.publish import samples

    home, full = _history(tmp_path / "h")
    calls = []
    real = samples.day_volumes

    def racing(h):
        calls.append(1)
        if len(calls) > 1:       # a second read would see a day's ingest records appear
            _write_rankings_volumes(h, full, 5)
        return real(h)

    monkeypatch.setattr(samples, "day_volumes", racing)
    raced = _publish_nightly(home, full, PublishConfig(workers=1, fsync=False))
    assert len(calls) == 1
    monkeypatch.undo()
    clean = tmp_path / "clean"
    shutil.copytree(home.root, clean, symlinks=True)
    other = DataHome(clean)
    shutil.rmtree(other.datasets)
    shutil.rmtree(other.table_dir("ingest_files"), ignore_errors=True)
    again = publish_dataset(other, PublishConfig(workers=1, fsync=False))
    assert again.version == raced.version and again.shards == raced.shards
