"""Hostile review rev39e: a seeded random differential test of issue #16's core promise (README section 6).

Nights of a year, condensed: a small real home (``make_home``, 11 export days of ~7 rankings) published one night
at a time with the real ``publish_dataset`` and retention (``keep_versions`` 2 or 3). Each night adds a day and
0-3 random late changes: a ban or an account erasure of a user with rankings on old days, two old duplicate clusters
merged, a prompt newly held out (the ``_unique`` splits derived again), a re-export flipping an old ranking's
choice or (with the app's rankings volumes ingested, half the seeds) changing an old day's rankings line count, a
setting change (small shards or another seed, toggled). Some nights instead publish an earlier night's inputs
again (a restored split_pairs: the version switched back to, or rebuilt after retention deleted it), and some
write split_pairs' rows in another order (the same samples). After every night:

(a) the version equals a from-scratch publish of the same inputs in a pristine copy of the home, byte for byte
    (every shard, sidecar, sizes.json, manifest; the same version id; nothing linked there);
(b) exactly the shards whose samples changed are rewritten: an old shard holding a changed key is gone, and every
    old shard of a (split, segment) holding no changed key (nor a day whose volume changed) is kept, unless the
    shard settings changed that night;
(c) every shard byte-identical to one of a version kept before the publish is that very file (same inode), and
    the report counts at least those links;
(d) after retention every kept version verifies against its manifest with checksums, at most keep_versions are
    kept, and ``latest`` is the newest;
(e) the version's samples are exactly the input rows, split by split (nothing lost, nothing invented; publish has
    no rejects path for these inputs, so any loss would show here).

Defects found: none. Scratch runs of seeds 0-2, 100-110, 200-209, 300-303 and 401-421 (49 histories, 4-8
nights each, most nights with 1-3 late changes, reruns, shuffled rows and old days' volume changes among them) all
held (a)-(e) (seed 400 was no history: its first days hold no test split, a publish refused by design). No xfail
test: there is nothing to mark. The test runs seed 401 (~23 s on a loaded 2-CPU box; seed 301 adds volume changes
of old days in ~35 s more): its history holds a hold-out, a cluster merge, an erasure, a re-export, a setting
change, shuffled rows and two reruns of earlier nights, with volumes ingested.
"""
from __future__ import annotations

import hashlib
import os
import random
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from test_publish_fixtures import make_home, write_split_pairs
from test_publish_incremental import _write_rankings_volumes

from formats import dataset
from formats.dataset import list_versions, resolve_version
from formats.files import write_parquet_atomic
from formats.home import DataHome
from pipelines.publish import shards
from pipelines.publish.config import PublishConfig
from pipelines.publish.manifest import verify_version
from pipelines.publish.version import publish_dataset
from schemas import get_schema

DAYS = 11           # export days in the world; the first FIRST are published on night 0
FIRST = 3
# one shard per (split, day) at first; a setting change toggles small shards (cuts inside a day) or the seed
DAY_SHARDS = dict(workers=1, fsync=False, min_shards_per_split=1, max_samples_per_shard=10**6, max_shard_bytes=10**12)
CHANGES = ("ban", "erase", "merge", "hold_out", "re_export", "setting")
# the columns a sample carries (num_example_per_prompt goes to prompt_counts, recounted by write_split_pairs)
IGNORED = {"num_example_per_prompt"}
SHUFFLED = 0.3     # chance that a night's split_pairs rows are written in another order
RERUN = 0.2         # chance that a night (from the third on) publishes an earlier night's inputs again


def _row_digest(row: dict) -> str:
    return hashlib.sha256(repr(sorted((k, v) for k, v in row.items() if k not in IGNORED)).encode()).hexdigest()


def _inputs(rows: list[dict], day) -> dict[str, str]:
    """sample key -> row digest of the rows published up to ``day``."""
    return {shards.sample_key(r["pair_id"], r["split"]): _row_digest(r) for r in rows if r["dt"] <= day}


def _files(version: Path) -> dict[str, os.stat_result]:
    return {p.relative_to(version).as_posix(): p.stat() for p in sorted(version.rglob("*")) if p.is_file()}


def _digests(version: Path) -> dict[str, str]:
    return {rel: hashlib.sha256((version / rel).read_bytes()).hexdigest() for rel in _files(version)}


def _shard_keys(version: Path) -> dict[str, list[str]]:
    """relative tar path -> its sample keys, from the sidecars."""
    import pyarrow.parquet as pq

    return {f"{s.parent.name}/{s.stem}.tar": pq.read_table(s, columns=["key"]).column("key").to_pylist()
            for s in sorted(version.glob("*/pickapic-*.parquet"))}


def _tar_inodes(home: DataHome) -> dict[str, set[int]]:
    """sha256 -> inodes of the tars of every kept version."""
    out: dict[str, set[int]] = {}
    for name in list_versions(home) if home.datasets.is_dir() else []:
        for tar in (home.datasets / name).glob("*/*.tar"):
            out.setdefault(hashlib.sha256(tar.read_bytes()).hexdigest(), set()).add(tar.stat().st_ino)
    return out


def _segment(rel: str) -> tuple[str, str]:
    return rel.split("/")[0], dataset.shard_segment(rel)


def _with_uniques(rows: list[dict]) -> list[dict]:
    """``rows`` with the ``_unique`` splits derived as the splits stage does: a held-out prompt's earliest pair."""
    out = [r for r in rows if not r["split"].endswith("_unique")]
    firsts: dict[tuple[str, str], dict] = {}
    for r in sorted(out, key=lambda r: (r["dt"], r["ranking_id"])):
        if r["split"] in ("validation", "test"):
            firsts.setdefault((r["split"], r["prompt_key"]), r)
    return out + [dict(r, split=f"{r['split']}_unique") for r in firsts.values()]


def _late_change(kind: str, rows: list[dict], day, rng: random.Random, settings: dict) -> list[dict]:
    """``rows`` (the whole world: published and future days) after one late change touching days <= ``day``."""
    old = [r for r in rows if r["dt"] < day]
    if kind in ("ban", "erase"):        # a ban and an erasure both take every ranking of the user out
        users = sorted({r["user_id"] for r in old})
        user = rng.choice(users)
        kept = [r for r in rows if r["user_id"] != user]
        return kept if {r["split"] for r in kept if r["dt"] <= day} == {r["split"] for r in rows if r["dt"] <= day} \
            else rows                   # never ban the last user of a split: that publish is refused by design
    if kind == "merge":
        clusters = sorted({r[c] for r in old for c in ("cluster_0", "cluster_1")})
        a, b = rng.sample(clusters, 2)
        return [dict(r, cluster_0=b if r["cluster_0"] == a else r["cluster_0"],
                     cluster_1=b if r["cluster_1"] == a else r["cluster_1"]) for r in rows]
    if kind == "hold_out":
        prompts = sorted({r["prompt_key"] for r in old if r["split"] == "train"})
        if len(prompts) < 2:
            return rows
        prompt = rng.choice(prompts)
        return [dict(r, split="validation") if r["split"] == "train" and r["prompt_key"] == prompt else r
                for r in rows]
    if kind == "re_export":             # the app's export of an old day again, one ranking's choice flipped
        pair = rng.choice(sorted({r["pair_id"] for r in old if r["label_0"] != 0.5}))
        return [dict(r, label_0=r["label_1"], label_1=r["label_0"],
                     best_image_uid=r["image_1_uid"] if r["best_image_uid"] == r["image_0_uid"] else r["image_0_uid"])
                if r["pair_id"] == pair else r for r in rows]
    assert kind == "setting"
    if rng.random() < 0.5:
        settings["max_samples_per_shard"] = 4 if settings["max_samples_per_shard"] > 4 else 10**6
    else:
        settings["seed"] = settings.get("seed", 42) + 1
    return rows


def _nights(root: Path, seed: int) -> list[str]:
    """Publish a random history of 4-8 nights, checking (a)-(e) after each; returns what happened, for messages."""
    rng = random.Random(seed)
    home = make_home(root / "home", num_rankings=DAYS * 7, seed=seed, days=DAYS)
    import pyarrow.parquet as pq

    world_table = pq.read_table(home.table_file("split_pairs"))
    settings = dict(DAY_SHARDS)
    volumes = rng.random() < 0.5      # the app's rankings exports ingested: a day's volume sets its cuts
    if volumes:
        settings.update(shards_per_day=8, min_shard_bytes=1)
        _write_rankings_volumes(home, world_table, 40)
    pristine = root / "pristine"
    shutil.copytree(home.root, pristine, symlinks=True)
    schema = world_table.schema
    rows = _with_uniques(world_table.to_pylist())
    days = sorted({r["dt"] for r in rows})
    keep = rng.choice((2, 3))
    log: list[str] = [f"seed {seed} keep {keep} volumes {volumes}"]
    previous: Path | None = None
    previous_inputs: dict[str, str] = {}
    history: list[tuple] = []           # each night's (day, rows, settings): what an operator may publish again
    published_settings = dict(settings)
    step = 0
    for night in range(rng.randint(4, 8)):
        volume_days: set[str] = set()
        if night >= 2 and rng.random() < RERUN:
            # an operator publishes an earlier night's split_pairs again (restored from a backup), same settings
            earlier = rng.randrange(len(history))
            day, night_rows, night_settings = history[earlier]
            kinds = [f"rerun of night {earlier}"]
        else:
            day = days[FIRST - 1 + step]
            step += 1
            kinds = [rng.choice(CHANGES) for _ in range(rng.randint(0, 3))] if night else []
            for kind in kinds:
                if kind == "re_export" and volumes and rng.random() < 0.5:
                    # an old day's rankings exported again with another line count: that day's cuts move
                    old_day = rng.choice([d for d in days if d < day])
                    _write_rankings_volumes(home, world_table.filter(pc.equal(world_table.column("dt"), old_day)),
                                            rng.choice((5, 20, 60, 200)))
                    volume_days.add(old_day.strftime("%Y%m%d"))
                    kinds[kinds.index(kind)] = f"volume of {old_day}"
                    continue
                rows = _with_uniques(_late_change(kind, rows, day, rng, settings))
            night_rows, night_settings = rows, dict(settings)
        changed_setting = night_settings != published_settings
        published_settings = night_settings
        history.append((day, night_rows, night_settings))
        log.append(f"night {night} day {day} {kinds} {night_settings.get('max_samples_per_shard')}/"
                   f"{night_settings.get('seed', 42)}")
        config = PublishConfig(keep_versions=keep, **night_settings)
        table = pa.Table.from_pylist([r for r in night_rows if r["dt"] <= day], schema=schema)
        written = write_split_pairs(home, table)
        if rng.random() < SHUFFLED:     # the splits stage's rows in another order: the same samples
            order = list(range(written.num_rows))
            rng.shuffle(order)
            write_parquet_atomic(written.take(order), home.table_file("split_pairs"), get_schema("split_pairs"))
            log.append("  rows written shuffled")
        before = _tar_inodes(home)
        report = publish_dataset(home, config)
        version = report.path
        inputs = _inputs(night_rows, day)
        # (e) the samples are the input rows, split by split
        keys = _shard_keys(version)
        published = [k for ks in keys.values() for k in ks]
        assert sorted(published) == sorted(inputs), log
        # (a) byte-identical to a from-scratch publish of the same inputs
        scratch_root = root / f"scratch{night}"
        shutil.copytree(pristine, scratch_root, symlinks=True)
        scratch = DataHome(scratch_root)
        shutil.copyfile(home.table_file("split_pairs"), scratch.table_file("split_pairs"))
        if volumes:
            ingest = home.partition_file("ingest_files", "2023-03-01").parent.parent
            target = scratch.partition_file("ingest_files", "2023-03-01").parent.parent
            shutil.rmtree(target)
            shutil.copytree(ingest, target)
        clean = publish_dataset(scratch, config)
        assert clean.version == report.version and clean.shards_linked == 0, log
        assert _digests(clean.path) == _digests(version), log
        shutil.rmtree(scratch_root)
        if previous is not None:
            old_files, new_files = _files(previous), _files(version)
            old_keys = _shard_keys(previous)
            changed = {k for k in set(inputs) | set(previous_inputs) if inputs.get(k) != previous_inputs.get(k)}
            where_old = {k: rel for rel, ks in old_keys.items() for k in ks}
            where_new = {k: rel for rel, ks in keys.items() for k in ks}
            dirty = {_segment(where_old[k]) for k in changed if k in where_old} \
                | {_segment(where_new[k]) for k in changed if k in where_new} \
                | {(rel.split("/")[0], seg) for rel in keys for seg in volume_days}
            old_tars = {rel for rel in old_files if rel.endswith(".tar")}
            new_tars = {rel for rel in new_files if rel.endswith(".tar")}
            # (b) an old shard holding a changed key is rewritten; one outside the dirty segments is kept
            touched = {rel for rel in old_tars if set(old_keys[rel]) & changed}
            assert not touched & new_tars, (log, sorted(touched & new_tars))
            if not changed_setting:
                untouched = {rel for rel in old_tars if _segment(rel) not in dirty}
                assert untouched <= new_tars, (log, sorted(untouched - new_tars))
            # (c) a shard byte-identical to one of a version kept before this publish is that very file
            for rel in new_tars:
                digest = hashlib.sha256((version / rel).read_bytes()).hexdigest()
                if digest in before:
                    assert new_files[rel].st_ino in before[digest], (log, rel)
            assert report.reused or report.shards_linked >= len({rel for rel in new_tars
                                                if new_files[rel].st_ino in {st.st_ino for st in old_files.values()}}), log
        # (d) retention kept at most `keep`, the newest is latest, every kept version verifies
        kept = list_versions(home)
        assert kept[-1] == report.version and len(kept) <= keep and resolve_version(home) == version, (log, kept)
        for name in kept:
            verify_version(home.datasets / name, checksums=True)
        previous, previous_inputs = version, inputs
    return log


@pytest.mark.parametrize("seed", [401])
def test_random_nights_stay_incremental_equal_to_scratch_and_verified(tmp_path: Path, seed: int) -> None:
    log = _nights(tmp_path, seed)
    assert len(log) >= 5            # the seed's history was walked: 4-8 nights
