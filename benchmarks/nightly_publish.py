"""Nightly publish on a simulated history: bytes written, disk for the kept versions, shard write speed.

    python -m benchmarks.nightly_publish [--days 30] [--users 150] [--rankings-per-day 120] [--image-size 512]
                                         [--max-shard-bytes N] [--max-samples-per-shard N] [--shards-per-day N]
                                         [--min-shard-bytes N] [--dir DIR] [--json-out F]

512 px by default, the size of the pipeline's training JPEGs (``features.train_size``) and of Pick-a-Pic's
images: a pair is then ~100 KB, as in the released dataset. At 64 px a pair is ~10 KB and the
per-version files (meta tables, manifest, sidecar footers) weigh about half a day.

1. History: ``pickapic simulate`` (the same ``simulate`` call) writes ``days + 1`` days; days
   1..N-1 are built stage by stage as the pipeline runs them (``ingest_day``, the Beam feature stage,
   dedup, decisions, pairs, splits; no Dagster) and published: version 1.
2. Night N, with late changes planted: day N is ingested and fingerprinted; then a user with published
   pairs on several old days is added to ``raw/moderation/banned_users.txt`` (a newly banned user), and
   one of day N's ``image_features`` rows is given the sha256 of an old image of one duplicate cluster
   and the pHash of an old image of another (a new image that merges two old clusters); curation,
   splits, publish: version 2.
3. Night N+1: day N+1 only, nothing planted: version 3.

Printed for each night: bytes the publish wrote (files of the new version that share no inode with an
older kept version), by kind, divided by the tar bytes of the new day's samples in every split, the
unique splits' included (goal <= 1.5; ``ratio_vs_new_day_outside_unique_splits`` divides by the
other splits' only, as this benchmark did before: it counted the unique splits' new samples, copies
of the day's validation / test pairs, as overhead); the old shards rewritten next to the old shards that hold a sample that changed, left or was added (they
must be equal); the shard writers' throughput on what they wrote next to a raw sequential write of
the same bytes measured right after (fsync on both; goal >= 0.5, but a plain night writes about ten
megabytes, too little to time well: ``benchmarks.shards`` measures the same ratio at ~100 MB).
An old shard is rewritten when it holds a sample that changed or left, or its day gained one; with
shards smaller than a day, a shard after such a sample may also be rewritten when a limit cut moves
or a removed user's run had started a shard (its followers join the shard before it), up to the next
anchor (``rewritten_by_ripple``).
Then the disk the three kept versions take (distinct inodes) divided by the newest version (goal <= 1.3).
:func:`run` returns the numbers, for ``benchmarks.nightly`` to call.
"""
from __future__ import annotations

import argparse
import glob
import os
import shutil
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from benchmarks import claim, history_marker, report, work_folder
from benchmarks.shards import raw_write
from formats import dataset
from formats.dataset import list_versions
from formats.files import write_parquet_atomic
from formats.home import DataHome
from pipelines.curation.decisions import build_decisions, build_pairs, read_id_list
from pipelines.curation.dedup import build_clusters
from pipelines.features.config import FeaturesConfig
from pipelines.features.stage import build_features
from pipelines.ingest.day import ingest_day
from pipelines.publish.config import PublishConfig, PublishReport
from pipelines.publish.version import publish_dataset
from pipelines.splits.assign import build_splits
from schemas import get_schema
from simulator import SimConfig, simulate

GOALS = {"bytes_written_vs_new_day": 1.5, "disk_3_versions_vs_one": 1.3, "shard_write_vs_raw": 0.5}
BUILT_MARKER = ".bench-nightly-history"


def build_days(home: DataHome, days: list[str]) -> None:
    """Ingest and fingerprint ``days`` (the Beam stage in-process), as the daily partition job does."""
    for day in days:
        ingest_day(home, day)
        build_features(home, day, FeaturesConfig(workers=0))


def rebuild(home: DataHome) -> None:
    """The global stages of the nightly rebuild: dedup, decisions, pairs, splits."""
    build_clusters(home)
    build_decisions(home)
    build_pairs(home)
    build_splits(home)


def _read(home: DataHome, dataset: str, columns: list[str]) -> pa.Table:
    """``columns`` of every partition of a warehouse dataset."""
    return pq.read_table(sorted(home.table_dir(dataset).glob("**/*.parquet")), columns=columns, partitioning=None)


def plant_ban(home: DataHome, version: Path) -> dict:
    """Ban the user whose published train pairs span the median number of old days (at least two)."""
    rankings = _read(home, "rankings", ["ranking_id", "user_id"])
    owner = dict(zip(rankings.column("ranking_id").to_pylist(), rankings.column("user_id").to_pylist()))
    sidecars = pq.read_table(dataset.split_sidecars(version, "train"), columns=["ranking_id", "dt"])
    days: dict[int, set] = {}
    pairs: dict[int, int] = {}
    for ranking_id, day in zip(sidecars.column("ranking_id").to_pylist(), sidecars.column("dt").to_pylist()):
        user = owner[ranking_id]
        days.setdefault(user, set()).add(day)
        pairs[user] = pairs.get(user, 0) + 1
    banned = set(read_id_list(home.banned_users_file))
    candidates = sorted((len(d), pairs[u], u) for u, d in days.items() if len(d) >= 2 and u not in banned)
    if not candidates:
        raise RuntimeError("no user has published train pairs on two or more days: simulate more days or users")
    span, count, user = candidates[len(candidates) // 2]
    with open(home.banned_users_file, "a", encoding="utf-8") as handle:
        handle.write(f"{user}\n")
    return {"user_id": user, "old_days": span, "published_pairs": count}


def plant_cluster_merge(home: DataHome, version: Path, day: str) -> dict:
    """Give one of ``day``'s feature rows the sha256 of an old image and the pHash of another, in other clusters."""
    train = pq.read_table(dataset.split_sidecars(version, "train"),
                          columns=["key", "dt", "image_0_uid", "cluster_0", "image_1_uid", "cluster_1"])
    train = train.take(pc.sort_indices(train, sort_keys=[("dt", "ascending"), ("key", "ascending")]))
    first, last = train.slice(0, 1).to_pylist()[0], train.slice(train.num_rows // 2, 1).to_pylist()[0]
    a, b = first["image_0_uid"], last["image_1_uid"]
    if first["cluster_0"] == last["cluster_1"]:
        raise RuntimeError(f"images {a} and {b} are already in one cluster")
    old = _read(home, "image_features", ["image_uid", "sha256", "phash"])
    by_uid = {r["image_uid"]: r for r in old.to_pylist()}
    path = home.partition_file("image_features", day)
    features = pq.read_table(path)
    uids = features.column("image_uid").to_pylist()
    row = sorted(range(len(uids)), key=uids.__getitem__)[0]
    sha = features.column("sha256").to_pylist()
    phash = features.column("phash").to_pylist()
    sha[row], phash[row] = by_uid[a]["sha256"], by_uid[b]["phash"]
    features = features.set_column(features.schema.get_field_index("sha256"), "sha256", pa.array(sha, pa.string()))
    features = features.set_column(features.schema.get_field_index("phash"), "phash", pa.array(phash, pa.uint64()))
    write_parquet_atomic(features, path, get_schema("image_features"))
    return {"new_image": uids[row], "exact_copy_of": a, "phash_of": b,
            "clusters": [first["cluster_0"], last["cluster_1"]]}


def _kind(rel: str, day: str) -> str:
    """What a version file is, for the bytes-written breakdown."""
    parts = rel.split("/")
    if parts[0] == "meta":
        return "meta"
    if len(parts) == 1:
        return "manifest_and_card"
    if not parts[1].startswith(dataset.SHARD_PREFIX):
        return "sizes_and_prompt_counts"
    new = dataset.shard_segment(parts[1]) == day
    if parts[0].endswith("_unique"):
        return "unique_split_new_day_shards" if new else "unique_split_old_shards"
    return "new_day_shards" if new else "rewritten_old_shards"


NEW_DAY_KINDS = ("new_day_shards", "unique_split_new_day_shards")
OLD_SHARD_KINDS = ("rewritten_old_shards", "unique_split_old_shards")


def _files(version: Path) -> dict[str, os.stat_result]:
    return {p.relative_to(version).as_posix(): p.stat() for p in sorted(version.rglob("*")) if p.is_file()}


def _samples(version: Path) -> dict[str, tuple]:
    """key -> (shard, every sample column) of every sidecar."""
    out = {}
    for sidecar in sorted(Path(p) for p in glob.glob(dataset.sidecar_glob(version))):
        table = pq.read_table(sidecar)
        columns = [c for c in table.column_names if c not in ("shard", "sample_index") and not c.endswith(("_offset", "_size"))]
        for row in table.select(columns).to_pylist():
            out[row["key"]] = (f"{sidecar.parent.name}/{sidecar.stem}.tar", tuple(row.items()))
    return out


def measure_night(old: Path, new: Path, older: list[Path], day: str, report: PublishReport) -> dict:
    """Bytes ``new`` wrote (inodes in no older kept version) by kind, vs the tar bytes of ``day``'s samples."""
    segment = day.replace("-", "")
    known = {st.st_ino for version in older for st in _files(version).values()}
    written: dict[str, int] = {}
    for rel, st in _files(new).items():
        if st.st_ino not in known:
            kind = _kind(rel, segment)
            written[kind] = written.get(kind, 0) + st.st_size
    new_day_tars = {rel: st.st_size for rel, st in _files(new).items()
                    if rel.endswith(".tar") and _kind(rel, segment) in NEW_DAY_KINDS}
    new_day = sum(new_day_tars.values())
    new_day_unique = sum(size for rel, size in new_day_tars.items() if rel.split("/")[0].endswith("_unique"))
    before, after = _samples(old), _samples(new)
    changed = {k for k in before if k not in after or after[k][1] != before[k][1]}
    added_to_old = {(after[k][0].split("/")[0], dataset.shard_segment(after[k][0])) for k in after
                    if k not in before and dataset.shard_segment(after[k][0]) != segment}
    touched = {before[k][0] for k in changed} | {shard for shard, _ in before.values()
                                                 if (shard.split("/")[0], dataset.shard_segment(shard)) in added_to_old}
    old_inodes = {st.st_ino for rel, st in _files(old).items() if rel.endswith(".tar")}
    kept = {rel for rel, st in _files(new).items() if st.st_ino in old_inodes}
    rewritten = {rel for rel in _files(old) if rel.endswith(".tar") and rel not in kept}
    total = sum(written.values())
    raw_seconds = raw_write(new.parent / ".bench-raw.bin", max(report.bytes_written, 1), fsync=True) \
        if report.bytes_written else 0.0
    shard_mb_s = report.mb_per_s
    raw_mb_s = report.bytes_written / 1e6 / raw_seconds if raw_seconds else 0.0
    return {
        "version": new.name,
        "new_day_sample_bytes": new_day,
        "new_day_sample_bytes_in_unique_splits": new_day_unique,
        "bytes_written": total,
        "bytes_written_by_kind": dict(sorted(written.items())),
        "ratio_bytes_written_vs_new_day": round(total / new_day, 3) if new_day else None,
        "ratio_without_late_changes": round((total - sum(written.get(k, 0) for k in OLD_SHARD_KINDS)) / new_day, 3)
        if new_day else None,
        # the definition before 2026-12-02: the unique splits' new-day samples counted as overhead, not as the day
        "ratio_vs_new_day_outside_unique_splits": round(total / (new_day - new_day_unique), 3)
        if new_day > new_day_unique else None,
        "shards_written": report.shards_written, "shards_linked": report.shards_linked,
        "old_shards_rewritten": len(rewritten),
        "old_shards_holding_a_changed_removed_or_added_sample": len(touched),
        "touched_but_not_rewritten": len(touched - rewritten),          # must be 0
        "rewritten_by_ripple": len(rewritten - touched),                # boundaries shifted up to the next anchor
        "shard_phase_mb_s": round(shard_mb_s, 1), "raw_write_same_bytes_mb_s": round(raw_mb_s, 1),
        "ratio_shard_write_vs_raw": round(shard_mb_s / raw_mb_s, 3) if raw_mb_s else None,
        "publish_seconds": round(report.total_seconds, 2), "shard_phase_seconds": round(report.write_seconds, 3),
    }


def disk_ratio(home: DataHome) -> dict:
    """Bytes of distinct inodes over every kept version / bytes of the newest version."""
    versions = [home.datasets / v for v in list_versions(home)]
    distinct: dict[int, int] = {}
    for version in versions:
        for st in _files(version).values():
            distinct[st.st_ino] = st.st_size
    one = sum(st.st_size for st in _files(versions[-1]).values())
    return {"kept_versions": len(versions), "disk_bytes": sum(distinct.values()), "newest_version_bytes": one,
            "ratio_disk_vs_one_version": round(sum(distinct.values()) / one, 3)}


def run(days: int = 30, users: int = 150, rankings_per_day: int = 120, image_size: int = 512, seed: int = 0,
        root: Path | None = None, workers: int = 0, max_samples_per_shard: int | None = None,
        max_shard_bytes: int | None = None, shards_per_day: int | None = None,
        min_shard_bytes: int | None = None) -> dict:
    """Build the history, publish two nights (late changes, then plain), return the measurements.

    ``max_samples_per_shard`` and ``max_shard_bytes`` (default: the publish defaults) set the shard
    size: a late change rewrites whole shards, so smaller shards make it cheaper (and the version
    has more files).
    """
    with work_folder(root, "bench-nightly-publish-") as base:
        home = DataHome(base / "home")
        sim = SimConfig(days=days + 1, users=users, rankings_per_day=rankings_per_day, image_size=image_size, seed=seed)
        limits = {"max_samples_per_shard": max_samples_per_shard, "max_shard_bytes": max_shard_bytes,
                  "shards_per_day": shards_per_day, "min_shard_bytes": min_shard_bytes}
        config = PublishConfig(workers=workers, **{k: v for k, v in limits.items() if v})
        marker = history_marker(sim)       # the configuration, the stages' code versions, the simulator's code
        result: dict = {"benchmark": "nightly_publish", "days": days, "users": users, "rankings_per_day": rankings_per_day,
                        "image_size": image_size, "max_samples_per_shard": config.max_samples_per_shard,
                        "max_shard_bytes": config.max_shard_bytes, "shards_per_day": config.shards_per_day,
                        "min_shard_bytes": config.min_shard_bytes,
                        "cpus": os.cpu_count(), "goals": GOALS}
        started = time.perf_counter()
        history_days = [sim.day(i) for i in range(days - 1)]
        if not (home.root / BUILT_MARKER).is_file() or (home.root / BUILT_MARKER).read_text() != marker:
            claim(home.root, legacy_marks=(BUILT_MARKER,))   # an earlier run's is wiped; someone else's refused
            simulate(home, sim)
            build_days(home, history_days)
            rebuild(home)
            (home.root / BUILT_MARKER).write_text(marker)
        shutil.rmtree(home.datasets, ignore_errors=True)
        shutil.rmtree(home.cache / "train_jpg_sha256", ignore_errors=True)
        first = publish_dataset(home, config)
        result["history"] = {"version": first.version, "pairs": first.pairs, "shards": first.shards,
                             "bytes": first.total_bytes, "publish_seconds": round(first.total_seconds, 2),
                             "setup_seconds": round(time.perf_counter() - started, 1)}

        late_day, plain_day = sim.day(days - 1), sim.day(days)
        banned_file = home.banned_users_file.read_bytes()
        features_file = None
        try:
            build_days(home, [late_day])
            features_file = home.partition_file("image_features", late_day)
            result["planted"] = {"ban": plant_ban(home, first.path), "cluster_merge": plant_cluster_merge(home, first.path, late_day)}
            rebuild(home)
            second = publish_dataset(home, config)
            result["night_with_late_changes"] = measure_night(first.path, second.path, [first.path], late_day, second)
            build_days(home, [plain_day])
            rebuild(home)
            third = publish_dataset(home, config)
            result["plain_night"] = measure_night(second.path, third.path, [first.path, second.path], plain_day, third)
            result["disk"] = disk_ratio(home)
        finally:   # the history stays reusable: undo the nights (their partitions, the ban)
            home.banned_users_file.write_bytes(banned_file)
            for day in (late_day, plain_day):
                for dataset in ("users", "images", "rankings", "downloads", "quarantine", "ingest_files", "image_features",
                                "image_rejects"):
                    shutil.rmtree(home.table_dir(dataset) / f"dt={day}", ignore_errors=True)
            if features_file is not None:
                rebuild(home)
    return result


def main(argv: list[str] | None = None) -> dict:
    """Command line: run, print JSON, optionally write it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--users", type=int, default=150)
    parser.add_argument("--rankings-per-day", type=int, default=120)
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=0, help="publish writer processes (0 = one per CPU)")
    parser.add_argument("--max-samples-per-shard", type=int, default=None, help="shard size (default: publish's)")
    parser.add_argument("--max-shard-bytes", type=int, default=None, help="shard byte limit (default: publish's)")
    parser.add_argument("--shards-per-day", type=int, default=None, help="anchors per day's volume (default: publish's)")
    parser.add_argument("--min-shard-bytes", type=int, default=None, help="(default: publish's)")
    parser.add_argument("--dir", type=Path, help="work folder, kept: a second run reuses its simulated history")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args(argv)
    result = run(args.days, args.users, args.rankings_per_day, args.image_size, args.seed, args.dir, args.workers,
                 args.max_samples_per_shard, args.max_shard_bytes, args.shards_per_day, args.min_shard_bytes)
    report(result, args.json_out)
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
