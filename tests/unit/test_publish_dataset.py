"""Publishing a version: round trips, determinism, atomic switch, crash safety, retention, privacy."""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import sys
import tarfile
import threading
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from PIL import Image
from test_publish_fixtures import SECRET_EMAIL, SECRET_NAME, make_home

from formats import dataset
from formats.dataset import list_versions, resolve_version
from pipelines.publish import shards
from pipelines.publish.config import PublishConfig
from pipelines.publish.version import publish_dataset
from pipelines.publish.versions import staging_root

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # tests/unit is not a package: reach tests/
from tests.fifos import fifo_that_fails_not_hangs  # noqa: E402

FAST = PublishConfig(workers=1, fsync=False)


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory):
    home = make_home(tmp_path_factory.mktemp("pub") / "home", num_rankings=120, seed=0)
    report = publish_dataset(home, PublishConfig(workers=2, verify_checksums=True))
    return home, report


def _split_pairs(home) -> dict[tuple[str, str], dict]:
    table = pq.read_table(home.table_file("split_pairs")).to_pylist()
    return {(r["split"], r["pair_id"]): r for r in table}


def test_report_and_layout(published) -> None:
    home, report = published
    root = resolve_version(home)
    assert root.name == report.version and (home.datasets / "latest").is_symlink()
    assert os.readlink(home.datasets / "latest") == report.version          # relative link
    expected = {}
    for r in _split_pairs(home).values():
        expected[r["split"]] = expected.get(r["split"], 0) + 1
    assert report.pairs == expected
    assert list(report.pairs) == [s for s in dataset.SPLITS if s in expected]
    assert all(n == 4 for n in report.shards.values())                      # min_shards_per_split
    meta = report.metadata()
    json.dumps(meta)
    assert meta["num_pairs"] == sum(expected.values()) and meta["shards_written"] == 20 and meta["shards_linked"] == 0
    assert (root / "README.md").is_file()
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["version"] == report.version and manifest["sources"]["split_pairs"]["days"] == ["2023-03-01", "2023-03-02"]
    for split, info in manifest["splits"].items():
        sizes = json.loads((root / split / "sizes.json").read_text())
        assert sum(sizes.values()) == info["pairs"] and len(sizes) == info["shards"]
        assert all((root / split / name).is_file() for name in sizes)
        assert all(name.startswith(f"pickapic-{split}-") and name.endswith(".tar") for name in sizes)
        counts = pq.read_table(root / split / "prompt_counts.parquet").to_pylist()
        assert sum(c["num_example_per_prompt"] ** 0 for c in counts) == len({r["prompt_key"] for (s, _), r
                                                                           in _split_pairs(home).items() if s == split})
    for rel, info in manifest["files"].items():
        data = (root / rel).read_bytes()
        assert len(data) == info["bytes"] and hashlib.sha256(data).hexdigest() == info["sha256"], rel
    assert report.version.startswith("2023-03-02-") and len(report.version) == len("2023-03-02-") + 10


def test_webdataset_round_trip(published) -> None:
    home, _ = published
    root = resolve_version(home)
    rows = _split_pairs(home)
    counts = {(c["split"], c["prompt_key"]): c["num_example_per_prompt"]
              for c in pq.read_table(sorted(root.glob("*/prompt_counts.parquet"))).to_pylist()}
    seen = 0
    for split in json.loads((root / "manifest.json").read_text())["splits"]:
        urls = sorted(str(p) for p in (root / split).glob("*.tar"))
        for sample in wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode("pil"):
            meta = sample["json"]
            row = rows[(split, meta["pair_id"])]
            assert sample["__key__"] == shards.sample_key(row["pair_id"], split)
            assert sample["txt"] == row["caption"]
            assert meta["ranking_id"] == row["ranking_id"] and meta["label_0"] == row["label_0"]
            assert isinstance(meta["has_label"], bool)
            assert "num_example_per_prompt" not in meta                      # per split, outside the shards
            assert counts[(split, meta["prompt_key"])] == row["num_example_per_prompt"]
            assert meta["created_at"] == row["created_at"].strftime("%Y-%m-%dT%H:%M:%S.%f")
            assert meta["dt"] == row["dt"].isoformat() and meta["split"] == split
            for side in ("0", "1"):
                image = sample[f"{side}.jpg"]
                assert isinstance(image, Image.Image) and image.size == (48, 48)
                original = Image.open(home.root / row[f"jpg_{side}_key"])
                assert image.convert("RGB").tobytes() == original.convert("RGB").tobytes()
                assert meta[f"jpg_{side}_sha256"] == hashlib.sha256((home.root / row[f"jpg_{side}_key"]).read_bytes()).hexdigest()
            seen += 1
    assert seen == len(rows)


def test_sidecar_offsets_point_at_the_member_bytes(published) -> None:
    home, _ = published
    root = resolve_version(home)
    rows = _split_pairs(home)
    for sidecar in sorted(root.glob("*/pickapic-*.parquet")):
        tar_bytes = sidecar.with_suffix(".tar").read_bytes()
        table = pq.read_table(sidecar).to_pylist()
        assert [r["sample_index"] for r in table] == list(range(len(table)))
        with tarfile.open(sidecar.with_suffix(".tar")) as tar:
            names = tar.getnames()
            assert {(m.uid, m.gid, m.mtime, m.uname) for m in tar.getmembers()} == {(0, 0, shards.TAR_MTIME, "")}
        assert names == [f"{r['key']}.{m}" for r in table for m in dataset.MEMBERS]
        for r in table:
            cut = lambda what: tar_bytes[r[f"{what}_offset"]: r[f"{what}_offset"] + r[f"{what}_size"]]  # noqa: E731
            assert cut("jpg_0") == (home.root / r["jpg_0_key"]).read_bytes()       # verbatim copy
            assert cut("jpg_1") == (home.root / r["jpg_1_key"]).read_bytes()
            # the sidecar verifies the tar's own bytes (sha256_0/1 are the original PNGs' digests)
            assert hashlib.sha256(cut("jpg_0")).hexdigest() == r["jpg_0_sha256"]
            assert hashlib.sha256(cut("jpg_1")).hexdigest() == r["jpg_1_sha256"]
            assert cut("txt").decode() == r["caption"]
            assert json.loads(cut("json"))["pair_id"] == r["pair_id"]
            assert r["shard"] == sidecar.with_suffix(".tar").name
            assert r["caption"] == rows[(r["split"], r["pair_id"])]["caption"]
        stats = json.loads(sidecar.with_name(sidecar.stem + "_stats.json").read_text())
        assert stats["num_samples"] == len(table) and stats["num_bytes"] == len(tar_bytes)
        assert stats["sha256"] == hashlib.sha256(tar_bytes).hexdigest()


def test_plain_duckdb_one_liner_reads_every_sample_and_no_meta(published) -> None:
    home, report = published
    glob = f"{home.datasets}/latest/*/pickapic-*.parquet"
    count, splits = duckdb.sql(f"SELECT count(*), count(DISTINCT split) FROM read_parquet('{glob}')").fetchall()[0]
    assert count == sum(report.pairs.values()) and splits == len(report.pairs)


def test_shard_limits_and_days(tmp_path: Path) -> None:
    home = make_home(tmp_path / "h", num_rankings=160, seed=4, days=3)
    report = publish_dataset(home, PublishConfig(workers=1, fsync=False, max_samples_per_shard=15, min_shards_per_split=2))
    root = resolve_version(home)
    for split, n in report.pairs.items():
        counts = json.loads((root / split / "sizes.json").read_text())
        assert sum(counts.values()) == n and max(counts.values()) <= 15 and len(counts) >= min(2, n)
        for sidecar in sorted((root / split).glob("pickapic-*.parquet")):
            days = set(pq.read_table(sidecar, columns=["dt"]).column("dt").to_pylist())
            if not split.endswith("_unique"):                # one export day per shard, named after it
                assert len(days) == 1 and sidecar.name.split("-")[2] == next(iter(days)).strftime("%Y%m%d")
    # a byte limit: every shard of several samples stays under it
    limit = 40_000
    report = publish_dataset(home, PublishConfig(workers=1, fsync=False, max_shard_bytes=limit))
    root = resolve_version(home)
    for stats_file in root.glob("*/*_stats.json"):
        stats = json.loads(stats_file.read_text())
        assert stats["num_bytes"] <= limit or stats["num_samples"] == 1, stats


def test_determinism_across_homes_and_worker_counts(tmp_path: Path) -> None:
    a = make_home(tmp_path / "a", num_rankings=80, seed=9)
    b = make_home(tmp_path / "b", num_rankings=80, seed=9)
    report_a = publish_dataset(a, PublishConfig(workers=2, fsync=False))
    report_b = publish_dataset(b, FAST)
    assert report_a.version == report_b.version
    files_a = json.loads((resolve_version(a) / "manifest.json").read_bytes())
    assert (resolve_version(a) / "manifest.json").read_bytes() == (resolve_version(b) / "manifest.json").read_bytes()
    assert any(rel.endswith(".tar") for rel in files_a["files"])
    # idempotent: publishing again reuses the complete version
    again = publish_dataset(a, PublishConfig(verify_checksums=True))
    assert again.reused and again.version == report_a.version and again.shards_written == 0
    # a config that changes the bytes gives another version
    other = publish_dataset(a, PublishConfig(workers=1, fsync=False, seed=7))
    assert other.version != report_a.version and list_versions(a)[-1] == other.version


def _visible(home) -> set[str]:
    return {p.name for p in home.datasets.iterdir() if not p.name.startswith(".")}


def test_crash_mid_shards_leaves_latest_and_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = make_home(tmp_path / "h", num_rankings=100, seed=1)
    first = publish_dataset(home, FAST)
    make_home(home.root, num_rankings=120, seed=2)          # the next day's inputs
    real_write = shards.write_batch
    calls = []

    def flaky(batch):
        results = []
        for task in batch:
            calls.append(task.name)
            if len(calls) == 7:
                # half a tar on disk, then the crash
                (Path(task.out_dir)).mkdir(parents=True, exist_ok=True)
                task.paths()[0].write_bytes(b"partial")
                raise RuntimeError("simulated crash")
            results += real_write([task])
        return results

    monkeypatch.setattr(shards, "write_batch", flaky)
    with pytest.raises(RuntimeError, match="simulated crash"):
        publish_dataset(home, FAST)
    assert _visible(home) == {"latest", first.version}
    assert resolve_version(home).name == first.version
    (partial,) = staging_root(home.datasets).glob(".partial-*")                   # hidden, resumable
    # the failure cleaned up: no temp file, no shard without its commit marker (the planted half tar)
    assert not [p for p in partial.rglob("*") if p.name.endswith(".tmp")]
    assert all(dataset.shard_paths(t.parent, t.stem)[2].is_file() for t in partial.rglob("*.tar"))
    monkeypatch.setattr(shards, "write_batch", real_write)
    resumed = publish_dataset(home, FAST)
    assert resumed.shards_resumed == 6 and resumed.shards_written == 14
    assert not list(staging_root(home.datasets).glob(".partial-*"))
    # byte-identical to an uninterrupted build of the same inputs
    clean = make_home(tmp_path / "clean", num_rankings=100, seed=1)
    make_home(clean.root, num_rankings=120, seed=2)
    uninterrupted = publish_dataset(clean, FAST)
    assert uninterrupted.version == resumed.version
    assert (resolve_version(clean) / "manifest.json").read_bytes() == (resolve_version(home) / "manifest.json").read_bytes()


def test_crash_before_switch_keeps_old_latest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipelines.publish import manifest

    home = make_home(tmp_path / "h", num_rankings=60, seed=1)
    first = publish_dataset(home, FAST)
    make_home(home.root, num_rankings=70, seed=3)
    real_manifest = manifest.write_manifest

    def crash_after_manifest(*args, **kwargs):
        real_manifest(*args, **kwargs)
        raise RuntimeError("killed between manifest and switch")

    monkeypatch.setattr(manifest, "write_manifest", crash_after_manifest)
    with pytest.raises(RuntimeError, match="killed"):
        publish_dataset(home, FAST)
    assert _visible(home) == {"latest", first.version} and resolve_version(home).name == first.version
    monkeypatch.setattr(manifest, "write_manifest", real_manifest)
    second = publish_dataset(home, FAST)
    assert second.shards_resumed == sum(second.shards.values())      # every shard was committed
    assert resolve_version(home).name == second.version != first.version


def test_readers_never_fail_during_rebuilds(tmp_path: Path) -> None:
    home = make_home(tmp_path / "h", num_rankings=50, seed=5)
    publish_dataset(home, FAST)
    stop = threading.Event()
    errors: list[BaseException] = []
    versions_seen: set[str] = set()
    iterations = [0]

    def reader() -> None:
        while not stop.is_set() or iterations[0] < 3:
            try:
                root = resolve_version(home)                 # resolve once, read through the real path
                versions_seen.add(root.name)
                sizes = json.loads((root / "train" / "sizes.json").read_text())
                name = sorted(sizes)[0]
                stats = json.loads((root / "train" / name.replace(".tar", "_stats.json")).read_text())
                data = (root / "train" / name).read_bytes()
                assert len(data) == stats["num_bytes"] and hashlib.sha256(data).hexdigest() == stats["sha256"]
                with tarfile.open(fileobj=io.BytesIO(data)) as tar:
                    assert len(tar.getnames()) == 4 * sizes[name]
                # a naive reader that always goes through the `latest` link also never fails
                (home.datasets / "latest" / "manifest.json").read_bytes()
            except BaseException as exc:  # noqa: BLE001 - collected and asserted below
                errors.append(exc)
                return
            iterations[0] += 1

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for seed in (6, 7, 8):
            make_home(home.root, num_rankings=50 + seed, seed=seed)
            publish_dataset(home, PublishConfig(workers=1, fsync=False, keep_versions=2))
    finally:
        stop.set()
        thread.join(timeout=60)
    assert not errors, errors
    assert iterations[0] >= 3 and len(versions_seen) >= 2
    assert len(list_versions(home)) == 2                      # retention ran during the reads


def test_retention_keeps_latest_and_newest(tmp_path: Path) -> None:
    home = make_home(tmp_path / "h", num_rankings=40, seed=10)
    versions = [publish_dataset(home, PublishConfig(workers=1, fsync=False, keep_versions=2, seed=s)).version
                for s in (1, 2, 3)]
    assert list_versions(home) == versions[1:] and resolve_version(home).name == versions[2]
    # re-publishing an older version makes it latest again and it is kept
    back = publish_dataset(home, PublishConfig(workers=1, fsync=False, keep_versions=2, seed=2))
    assert back.reused and resolve_version(home).name == versions[1]
    assert set(list_versions(home)) == {versions[1], versions[2]}
    assert resolve_version(home, versions[2]).name == versions[2]
    with pytest.raises(FileNotFoundError, match="available"):
        resolve_version(home, versions[0])
    with pytest.raises(ValueError, match="not a version name"):
        resolve_version(home, "../x")


def test_nothing_personal_is_published(published) -> None:
    home, _ = published
    root = resolve_version(home)
    quarantine = pq.read_table(root / "meta" / "quarantine.parquet")
    assert "raw_text" not in quarantine.column_names and quarantine.num_rows == 2
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for secret in (SECRET_EMAIL, SECRET_NAME, "alice.secret"):
                assert secret.encode() not in data, (path, secret)
    assert pq.read_table(sorted((root / "meta" / "images").glob("images-*.parquet"))).num_rows > 0
    assert pq.read_table(root / "meta" / "decisions.parquet").num_rows == 3


def test_bad_inputs_are_named(tmp_path: Path) -> None:
    home = make_home(tmp_path / "h", num_rankings=30, seed=11)
    table = pq.read_table(home.table_file("split_pairs"))
    key = table.column("jpg_0_key")[0].as_py()
    (home.root / key).unlink()
    with pytest.raises(FileNotFoundError, match=key):
        publish_dataset(home, FAST)
    bad = table.set_column(table.schema.get_field_index("jpg_1_key"), "jpg_1_key",
                           [["../../etc/passwd"] * table.num_rows])
    pq.write_table(bad, home.table_file("split_pairs"))
    with pytest.raises(ValueError, match=r"\.\./\.\./etc/passwd"):
        publish_dataset(home, FAST)
    with pytest.raises(FileNotFoundError, match="split_pairs"):
        publish_dataset(make_home(tmp_path / "x", num_rankings=4).__class__(tmp_path / "empty"), FAST)
    assert not (home.datasets / "latest").exists()


@pytest.mark.parametrize("kind", ["fifo", "folder", "device"])
def test_a_training_jpeg_that_is_not_a_regular_file_is_named_and_never_read(tmp_path: Path, kind: str) -> None:
    """A FIFO in the blob store would block the publish forever, a link to a device such as /dev/zero
    would never end (/dev/null here: a regression fails, not hangs): each is an error naming the key,
    before anything is written."""
    home = make_home(tmp_path / "h", num_rankings=30, seed=11)
    key = pq.read_table(home.table_file("split_pairs")).column("jpg_1_key")[0].as_py()
    (home.root / key).unlink()
    if kind == "folder":
        (home.root / key).mkdir()
    elif kind == "device":
        (home.root / key).symlink_to("/dev/null")
    with fifo_that_fails_not_hangs(home.root / key) if kind == "fifo" else contextlib.nullcontext():
        with pytest.raises(FileNotFoundError, match=rf"training JPEG '{key}' \(split_pairs\.jpg_[01]_key\) is not a regular file"):
            publish_dataset(home, FAST)
    assert not (home.datasets / "latest").exists()


def test_command_line_publishes_with_the_home_settings_then_the_flags(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """``python -m pipelines.publish``: flags come from the publish settings; a flag beats the home's file."""
    from pipelines.publish.__main__ import main

    home = make_home(tmp_path / "h", num_rankings=60, seed=1)
    (home.root / "pickapic.toml").write_text("[publish]\nmax_samples_per_shard = 7\nworkers = 1\nfsync = false\n")
    report = main(["--home", str(home.root), "--max-samples-per-shard", "5", "--no-verify-checksums"])
    printed = json.loads(capsys.readouterr().out)
    assert printed["version"] == report.version and resolve_version(home) == report.path
    assert json.loads((report.path / "manifest.json").read_text())["config"]["max_samples_per_shard"] == 5
    assert report.version == publish_dataset(home, PublishConfig(max_samples_per_shard=5, workers=1, fsync=False)).version
    with pytest.raises(SystemExit):
        main(["--home", str(home.root), "--keep-versions", "0"])   # refused like every setting: 1 <= value
