"""Fixes of review rev28c (``tests/unit/test_hostile_rev28c.py``): the published dataset as its consumers see it.

- a shard is named by a digest of what it holds (``plan.content_digest``), so a rewritten shard gets a new name and
  an unchanged one keeps its name and inode, and a nightly still equals a build from scratch byte for byte;
- ``datasets/`` and ``datasets/pickapic/`` get the bits a later publish's umask gives (never through a link);
- the partial version is staged in ``datasets/pickapic.staging/``, outside the versions' folder; a failed publish
  resumes from it, and the stagings the code before left among the versions are swept;
- the ``pickscore-parquet`` export writes a dataset card naming each split's file and records its version.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import stat
from pathlib import Path
from unittest import mock

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from test_publish_fixtures import history_home, make_home, publish_until

from formats.outputs import RefusedOutput
from pipelines.publish import plan as shardplan
from pipelines.publish import shards, versions
from pipelines.publish.config import PublishConfig
from pipelines.publish.datacard import CARD_FILE
from pipelines.publish.version import publish_dataset
from pipelines.query import export


@contextlib.contextmanager
def _umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _tars(version: Path) -> dict[str, os.stat_result]:
    return {p.relative_to(version).as_posix(): p.stat() for p in sorted(version.glob("*/*.tar"))}


def _digests(version: Path) -> dict[str, str]:
    return {p.relative_to(version).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(version.rglob("*")) if p.is_file()}


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


# --------------------------------------------------------------------------- content-named shards
def _plan_rows(captions: list[str]) -> pa.Table:
    n = len(captions)
    return pa.table({
        "dt": pa.array([dt.date(2023, 3, 1)] * n, pa.date32()),
        "user_id": pa.array([f"u{i // 3:03d}" for i in range(n)], pa.string()),
        "created_at": pa.array([dt.datetime(2023, 3, 1, 0, i) for i in range(n)], pa.timestamp("us")),
        "caption": pa.array(captions, pa.string()),
        "key": pa.array([f"{i}_0" for i in range(n)], pa.string()),
    })


def _named_shards(rows: pa.Table) -> dict[str, tuple[str, ...]]:
    indices, plans = shardplan.plan_split(rows, "train", np.full(rows.num_rows, 4096), max_samples=6,
                                          max_bytes=10**9, min_shards=1, seed=1, shards_per_day=1,
                                          min_shard_bytes=1)
    keys = rows.column("key").take(indices).to_pylist()
    return {p.name: tuple(keys[p.start:p.stop]) for p in plans}


def test_a_shard_name_is_a_digest_of_its_keys_and_content() -> None:
    captions = [f"caption {i}" for i in range(30)]
    before = _named_shards(_plan_rows(captions))
    assert len(before) > 2
    # the same keys with one sample's content changed (a caption, the same key): only its shard is renamed
    changed = _named_shards(_plan_rows(captions[:10] + ["another caption"] + captions[11:]))
    holder = next(name for name, keys in before.items() if "10_0" in keys)
    assert set(before.values()) == set(changed.values())
    assert set(before) - set(changed) == {holder} and len(set(changed) - set(before)) == 1
    assert all(name.startswith("pickapic-train-20230301-") and len(name) == len("pickapic-train-20230301-") + 10
               for name in changed)
    # given row digests name the shards as the computed ones do
    rows = _plan_rows(captions)
    _, given = shardplan.plan_split(rows, "train", np.full(30, 4096), max_samples=6, max_bytes=10**9, min_shards=1,
                                    seed=1, shards_per_day=1, min_shard_bytes=1,
                                    row_digests=shards.json_digests(rows))
    assert {p.name for p in given} == set(before)
    with pytest.raises(ValueError, match="row_digests has 29 entries for 30 samples"):
        shardplan.plan_split(rows, "train", np.full(30, 4096), max_samples=6, max_bytes=10**9, min_shards=1, seed=1,
                             shards_per_day=1, min_shard_bytes=1, row_digests=shards.json_digests(rows)[:29])


def test_a_nightly_renames_the_shards_it_rewrites_links_the_rest_and_equals_from_scratch(tmp_path: Path) -> None:
    home, table = history_home(tmp_path / "home", days=4, rankings=160)
    first = publish_until(home, table)
    day_one = min((first.path / "train").glob("pickapic-train-20230301-*.parquet"))
    users = pq.read_table(day_one, columns=["user_id"]).column("user_id").to_pylist()
    banned = users[-1] if users[-1] != users[0] else users[len(users) // 2]   # not the shard's first sample
    rest = table.filter(pc.not_equal(table.column("user_id"), banned))
    second = publish_until(home, rest)
    old, new = _tars(first.path), _tars(second.path)
    # every name in both versions is the very same file (a hard link), never other bytes
    assert set(old) & set(new) and all(old[rel].st_ino == new[rel].st_ino for rel in set(old) & set(new))
    assert second.shards_linked == len(set(old) & set(new))
    # the shard that held the banned user's pairs is gone by name; its successor has a new one
    gone = f"train/{day_one.stem}.tar"
    assert gone in old and gone not in new
    assert set(new) - set(old)
    # the nightly equals the same split_pairs published from scratch, byte for byte, file for file
    scratch, _ = history_home(tmp_path / "scratch", days=4, rankings=160)
    clean = publish_until(scratch, rest)
    assert clean.version == second.version and clean.shards_linked == 0
    assert _digests(clean.path) == _digests(second.path)


# --------------------------------------------------------------------------- the folders on the way to the versions
def test_the_datasets_folders_get_what_a_later_umask_gives_and_a_linked_one_is_left(tmp_path: Path) -> None:
    with _umask(0o022):
        home, table = history_home(tmp_path / "home", days=4, rankings=80)
    with _umask(0o077):
        publish_until(home, table, last_day=dt.date(2023, 3, 3))
    assert _mode(home.datasets) == _mode(home.datasets.parent) == 0o700
    with _umask(0o027):
        report = publish_until(home, table, last_day=dt.date(2023, 3, 4))
    assert _mode(home.datasets.parent) == _mode(home.datasets) == 0o750
    assert any("had mode 0700: given 0750" in note for note in report.notes)
    with _umask(0o077):       # never taken away: the version published under 027 stays reachable
        publish_until(home, table)
    assert _mode(home.datasets.parent) == _mode(home.datasets) == 0o750
    # a versions' folder that is a link (a user's layout) is never chmodded through it
    with _umask(0o022):
        other, table = history_home(tmp_path / "other", days=2, rankings=40)
        target = tmp_path / "elsewhere"
        target.mkdir(mode=0o700)
        other.datasets.parent.mkdir(parents=True)
        other.datasets.symlink_to(target)
        report = publish_until(other, table)
    assert _mode(target) == 0o700 and (target / report.version / "manifest.json").is_file()


# --------------------------------------------------------------------------- staging outside the versions' folder
def test_a_failed_publish_stages_outside_the_versions_and_the_rerun_resumes(tmp_path: Path) -> None:
    from pipelines.publish import version

    with _umask(0o022):
        home, table = history_home(tmp_path / "home", days=3, rankings=80)
        first = publish_until(home, table, last_day=dt.date(2023, 3, 2))
        # a staging the code before review rev28c left among the versions is swept by the next publish
        (home.datasets / f".partial-{first.version[:-1]}0").mkdir(mode=0o700)
        with mock.patch.object(version.manifest, "write_manifest", side_effect=OSError(5, "I/O error")), \
                pytest.raises(OSError):
            publish_until(home, table)
        root = versions.staging_root(home.datasets)
        assert root == home.root / "datasets" / "pickapic.staging" and _mode(root) == 0o755
        (staging,) = root.glob(".partial-*")
        assert _mode(staging) == 0o700
        assert sorted(p.name for p in home.datasets.iterdir()) == sorted([first.version, "latest"])
        again = publish_until(home, table)
    assert again.shards_resumed > 0 and not staging.exists() and list(root.iterdir()) == []
    assert sorted(p.name for p in home.datasets.iterdir()) == sorted([first.version, again.version, "latest"])


def test_the_staging_stays_in_the_versions_folder_on_another_file_system(tmp_path: Path) -> None:
    datasets = tmp_path / "datasets" / "pickapic"
    datasets.mkdir(parents=True)
    assert versions.open_staging_root(datasets) == tmp_path / "datasets" / "pickapic.staging"
    real = os.stat

    def other_device(path, *args, **kwargs):
        info = real(path, *args, **kwargs)
        if Path(path) == datasets:
            return os.stat_result((info.st_mode, info.st_ino, info.st_dev + 1, *tuple(info)[3:]))
        return info

    with mock.patch.object(versions.os, "stat", other_device):
        assert versions.open_staging_root(datasets) == datasets
    root = tmp_path / "datasets" / "pickapic.staging"
    root.rmdir()
    root.symlink_to(tmp_path)
    with pytest.raises(versions.StagingRefused, match="not the folder a publish stages its versions in"):
        versions.open_staging_root(datasets)


# --------------------------------------------------------------------------- the pickscore-parquet export
def test_the_export_has_a_card_and_records_its_version(tmp_path: Path) -> None:
    home = make_home(tmp_path / "home", num_rankings=60, seed=5)
    published = publish_dataset(home, PublishConfig(workers=1, fsync=False))
    out = tmp_path / "out"
    report = export.export_pickscore_parquet(home, None, out)
    card = (out / CARD_FILE).read_text()
    assert card.startswith("---\nconfigs:\n") and f"`{published.version}`" in card
    for split in report.rows:
        assert f'  - split: {split}\n    path: "{split}.parquet"\n' in card
        assert pq.read_schema(out / f"{split}.parquet").metadata[b"dataset_version"] == published.version.encode()
    record = json.loads((out / export.EXPORT_MARKER).read_text())
    assert CARD_FILE in record["files"]
    assert record["dataset_versions"] == {name: published.version for name in record["files"]}
    # the same bytes on a rerun; eval-prompts into the folder keeps the other files' versions
    before = _digests(out)
    export.export_pickscore_parquet(home, None, out)
    assert _digests(out) == before
    export.export_eval_prompts(home, None, out)
    record = json.loads((out / export.EXPORT_MARKER).read_text())
    assert set(record["dataset_versions"]) == set(record["files"]) and export.EVAL_PROMPTS_FILE in record["files"]
    # a README.md the export did not write is never replaced
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / export.EXPORT_MARKER).write_text(json.dumps({"written_by": "pickapic export", "files": []}))
    (foreign / CARD_FILE).write_text("mine\n")
    with pytest.raises(RefusedOutput, match="README.md"):
        export.export_pickscore_parquet(home, None, foreign)
    assert (foreign / CARD_FILE).read_text() == "mine\n"
    # a record nested too deep to parse is refused in one line (it was a RecursionError traceback)
    deep = tmp_path / "deep"
    deep.mkdir()
    (deep / export.EXPORT_MARKER).write_text("[" * 200_000)
    with pytest.raises(RefusedOutput, match="not a record this tool wrote"):
        export.export_pickscore_parquet(home, None, deep)
