"""The training-JPEG digest cache (``pipelines/publish/jpgdigests.py``) and the shard writer's check
that each JPEG is still the file whose sha256 the version carries.

Every home is a folder under ``tmp_path``; every planted link points at a folder under ``tmp_path``.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from formats.home import DataHome
from pipelines.publish import jpgdigests, shards
from pipelines.publish.chunkwriter import ChunkWriter
from pipelines.publish.versions import staging_root
from tests.inplace import rewrite_in_place

KEYS = [f"blobs/train/{i:02d}.jpg" for i in range(6)]


def _home(root: Path) -> DataHome:
    home = DataHome(root)
    for i, key in enumerate(KEYS):
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        (root / key).write_bytes(bytes([i]) * (300 + 41 * i))
    return home


def _index(home: DataHome) -> jpgdigests.JpgIndex:
    return jpgdigests.index_jpgs(home, {"jpg_0_key": pa.chunked_array([pa.array(KEYS[:4])]),
                                        "jpg_1_key": pa.chunked_array([pa.array(KEYS[2:])])})


def _truth(home: DataHome) -> list[str]:
    return [hashlib.sha256((home.root / key).read_bytes()).hexdigest() for key in KEYS]


def _parts(home: DataHome) -> list[Path]:
    return sorted(jpgdigests.cache_dir(home).glob("part-*.parquet"))


def _listing(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_the_cache_is_used_and_records_each_jpegs_identity(tmp_path: Path) -> None:
    home = _home(tmp_path / "h")
    first = _index(home)
    assert (first.hashed, first.note) == (len(KEYS), "")
    again = _index(home)
    assert again.hashed == 0 and again.sha256.to_pylist() == _truth(home) == first.sha256.to_pylist()
    for i, key in enumerate(KEYS):
        assert again.identities[i].tolist() == shards.file_identity(os.stat(home.root / key))
    (part,) = _parts(home)
    assert pq.read_schema(part).names == jpgdigests.CACHE_SCHEMA.names    # bytes, mtime, ctime, inode


def test_a_jpeg_rewritten_in_place_with_its_mtime_put_back_is_hashed_again(tmp_path: Path) -> None:
    home = _home(tmp_path / "h")
    _index(home)
    blob = home.root / KEYS[3]
    rewrite_in_place(blob, b"\xff" * 10)   # same inode, same size, mtime put back: only the ctime moved
    index = _index(home)
    assert index.hashed == 1 and index.sha256.to_pylist() == _truth(home)


def _truncated(part: Path) -> None:
    part.write_bytes(part.read_bytes()[: part.stat().st_size // 2])


def _flipped(part: Path) -> None:
    data = bytearray(part.read_bytes())
    data[len(data) // 3] ^= 0x01
    part.write_bytes(bytes(data))


def _rewritten(change):
    def damage(part: Path) -> None:
        table = pq.read_table(part)
        pq.write_table(change(table), part)
    return damage


def _column(name, values):
    return lambda t: t.set_column(t.schema.get_field_index(name), name, pa.array(values(t), t.schema.field(name).type))


DAMAGES = {
    "truncated": _truncated,
    "a flipped byte": _flipped,
    "not parquet": lambda part: part.write_bytes(b"someone's notes"),
    "the old layout without ctime": _rewritten(lambda t: t.drop_columns(["ctime_ns"])),
    "another type": _rewritten(lambda t: t.set_column(1, "bytes", t.column("bytes").cast(pa.int32()))),
    "a negative size": _rewritten(_column("bytes", lambda t: [-1] * t.num_rows)),
    "a digest that is no digest": _rewritten(_column("sha256", lambda t: ["0" * 63 + "g"] * t.num_rows)),
    "a key twice": _rewritten(lambda t: pa.concat_tables([t, t.slice(0, 1)])),
    "a null": _rewritten(lambda t: t.set_column(5, pa.field("sha256", pa.string()),
                                                pa.array([None] * t.num_rows, pa.string()))),
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_a_cache_that_cannot_be_trusted_counts_as_empty_and_is_replaced(tmp_path: Path, damage: str) -> None:
    home = _home(tmp_path / "h")
    _index(home)
    (part,) = _parts(home)
    DAMAGES[damage](part)

    index = _index(home)
    assert index.hashed == len(KEYS) and index.sha256.to_pylist() == _truth(home)
    assert "not trusted" in index.note
    assert part not in _parts(home) and len(_parts(home)) == 1      # replaced by one trusted part
    after = _index(home)
    assert (after.hashed, after.note, after.sha256.to_pylist()) == (0, "", _truth(home))


def test_one_file_recorded_with_two_digests_makes_the_cache_untrusted(tmp_path: Path) -> None:
    home = _home(tmp_path / "h")
    _index(home)
    (part,) = _parts(home)
    table = pq.read_table(part)
    liar = table.set_column(5, "sha256", pa.array(["0" * 64] * table.num_rows))   # same identities, other digests
    pq.write_table(liar, part.with_name("part-000001-0000000000000000.parquet"))
    index = _index(home)
    assert index.hashed == len(KEYS) and index.sha256.to_pylist() == _truth(home) and "two digests" in index.note


def test_a_part_that_is_a_link_is_not_read(tmp_path: Path) -> None:
    home = _home(tmp_path / "h")
    _index(home)
    (part,) = _parts(home)
    elsewhere = tmp_path / "elsewhere.parquet"
    shutil.move(part, elsewhere)
    os.symlink(elsewhere, part)
    index = _index(home)
    assert index.hashed == len(KEYS) and "not trusted" in index.note
    assert elsewhere.is_file() and not part.is_symlink()                  # the link went, not its target


@pytest.mark.parametrize("planted", ["link", "dangling link", "file"])
def test_no_cache_through_a_link_or_a_file_in_its_place(tmp_path: Path, planted: str) -> None:
    home = _home(tmp_path / "h")
    victim = tmp_path / "victim"
    victim.mkdir()
    other = _home(tmp_path / "other")
    for _ in range(jpgdigests.MAX_PARTS + 1):       # enough parts that a cache there would be merged
        (other.root / KEYS[0]).write_bytes(os.urandom(50))
        _index(other)
    for part in _parts(other):
        shutil.copy(part, victim / part.name)
    before = _listing(victim)
    home.cache.mkdir(parents=True)
    folder = jpgdigests.cache_dir(home)
    if planted == "link":
        os.symlink(victim, folder)
    elif planted == "dangling link":
        os.symlink(tmp_path / "nowhere", folder)
    else:
        folder.write_text("someone's notes")

    for _ in range(2):
        index = _index(home)
        assert index.hashed == len(KEYS) and index.sha256.to_pylist() == _truth(home)
        assert "not used" in index.note and str(folder) in index.note
    assert _listing(victim) == before and not (tmp_path / "nowhere").exists()
    assert os.path.islink(folder) or folder.read_text() == "someone's notes"


def test_many_parts_are_merged_into_one_that_holds_every_entry(tmp_path: Path) -> None:
    home = _home(tmp_path / "h")
    _index(home)
    for n in range(jpgdigests.MAX_PARTS + 1):
        (home.root / KEYS[n % len(KEYS)]).write_bytes(os.urandom(100 + n))
        assert _index(home).hashed == 1
    assert len(_parts(home)) <= jpgdigests.MAX_PARTS
    index = _index(home)
    assert (index.hashed, index.note, index.sha256.to_pylist()) == (0, "", _truth(home))


def test_a_cache_replaced_after_damage_keeps_another_accounts_part(tmp_path: Path, monkeypatch) -> None:
    home = _home(tmp_path / "h")
    _index(home)
    (ours,) = _parts(home)
    theirs = ours.with_name("part-000007-0000000000000000.parquet")
    shutil.copy(ours, theirs)
    owner = 4242
    if os.geteuid() == 0:
        os.chown(theirs, owner, owner)
    else:                    # a file cannot be given away: that one name is said to be another account's
        real = jpgdigests._Cache._foreign_owner
        monkeypatch.setattr(jpgdigests._Cache, "_foreign_owner",
                            lambda self, name: owner if name == theirs.name else real(self, name))
    _truncated(ours)

    index = _index(home)
    assert index.hashed == len(KEYS) and index.sha256.to_pylist() == _truth(home)
    assert "not trusted" in index.note and f"{theirs.name} belongs to uid {owner}" in index.note
    assert not ours.exists() and theirs.is_file()        # ours replaced; theirs not read, not removed
    new = [part for part in _parts(home) if part != theirs]
    assert len(new) == 1 and new[0].name > theirs.name   # numbered past every part there


def test_a_jpeg_changing_while_it_is_hashed_fails(tmp_path: Path, monkeypatch) -> None:
    home = _home(tmp_path / "h")
    real = jpgdigests.file_identity
    calls = []

    def moving(info):   # the second look at the open file (after its bytes were read) sees another ctime
        calls.append(1)
        identity = real(info)
        return identity if len(calls) % 2 else [*identity[:2], identity[2] + 1, identity[3]]

    monkeypatch.setattr(jpgdigests, "file_identity", moving)
    with pytest.raises(shards.JpgChangedError, match="changed during the publish.*run it again"):
        jpgdigests.index_jpgs(home, {"jpg_0_key": pa.chunked_array([pa.array(KEYS[:1])])})


def _read(home: DataHome, key: str, expected: list[int]) -> int:
    fd = os.open(home.root / "out.tar", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        with ChunkWriter(fd) as out:
            return shards._read_jpg_into(out, str(home.root), key, "sample-1", expected)
    finally:
        os.close(fd)


def test_the_writer_copies_a_jpeg_only_while_it_is_the_file_that_was_hashed(tmp_path: Path) -> None:
    home = _home(tmp_path / "h")
    index = _index(home)
    blob = home.root / KEYS[1]
    assert _read(home, KEYS[1], index.identities[1].tolist()) == blob.stat().st_size

    rewrite_in_place(blob, b"\xfe")              # in place, mtime put back: only the ctime moved
    with pytest.raises(shards.JpgChangedError, match=f"sample-1.*{KEYS[1]}.*changed during the publish"):
        _read(home, KEYS[1], index.identities[1].tolist())

    replacement = blob.with_name(".new")
    replacement.write_bytes(blob.read_bytes())
    os.replace(replacement, blob)               # the same bytes, another file
    with pytest.raises(shards.JpgChangedError):
        _read(home, KEYS[1], index.identities[1].tolist())


def test_a_pickled_task_carries_only_its_slice_of_the_identities() -> None:
    whole = pa.table({"key": pa.array([f"k{i}" for i in range(20_000)])})
    identities = np.arange(20_000 * 8, dtype=np.int64).reshape(20_000, 8)
    task = shards.ShardTask("train", "pickapic-train-x", "/out", "/home", whole.slice(100, 50), "digest", False,
                            False, identities[100:150])
    data = pickle.dumps(task)
    assert len(data) < 20_000
    back = pickle.loads(data)
    assert back == task and back.jpg_identities.tolist() == identities[100:150].tolist()


def test_an_inode_past_int64_is_kept_as_its_twos_complement() -> None:
    info = os.stat_result((0o100644, 2**64 - 5, 1, 1, 0, 0, 10, 0, 0, 0))
    assert shards.file_identity(info)[3] == -5


# --------------------------------------------------------------------------- through the publish
def test_a_jpeg_replaced_mid_publish_fails_it_naming_the_key_and_a_rerun_publishes(tmp_path: Path,
                                                                                   monkeypatch) -> None:
    from test_publish_fixtures import make_home

    from formats.dataset import LATEST
    from pipelines.publish.config import PublishConfig
    from pipelines.publish.version import publish_dataset

    home = make_home(tmp_path / "h", num_rankings=40, seed=3)
    key = pq.read_table(home.table_file("split_pairs")).column("jpg_1_key")[0].as_py()
    blob = home.root / key
    real = jpgdigests.index_jpgs

    def then_replace(*args, **kwargs):
        index = real(*args, **kwargs)
        replacement = blob.with_name(".replacement")
        replacement.write_bytes(blob.read_bytes()[:-1] + b"\x00")   # a concurrent writer: a new file renamed in
        os.replace(replacement, blob)
        return index

    config = PublishConfig(workers=2, fsync=False, min_shards_per_split=1)     # the check runs in the pool workers
    monkeypatch.setattr(jpgdigests, "index_jpgs", then_replace)
    with pytest.raises(shards.JpgChangedError, match=f"{key}.*changed during the publish.*run it again"):
        publish_dataset(home, config)
    monkeypatch.undo()
    assert not (home.datasets / LATEST).exists()
    for staging in staging_root(home.datasets).glob(".partial-*"):      # only committed shards stay for a rerun
        for tar in staging.glob("*/*.tar"):
            assert tar.with_name(tar.name[: -len(".tar")] + "_stats.json").is_file()

    report = publish_dataset(home, config)
    assert report.jpgs_hashed == 1 and not any("digest" in note for note in report.notes)
    digests = {row["jpg_1_key"]: row["jpg_1_sha256"] for sidecar in report.path.glob("*/*.parquet")
               if sidecar.name.startswith("pickapic-") for row in pq.read_table(sidecar).to_pylist()}
    assert digests[key] == hashlib.sha256(blob.read_bytes()).hexdigest()


def test_the_publish_report_says_when_the_digest_cache_was_not_used(tmp_path: Path) -> None:
    from test_publish_fixtures import make_home

    from pipelines.publish.config import PublishConfig
    from pipelines.publish.version import publish_dataset

    home = make_home(tmp_path / "h", num_rankings=40, seed=3)
    victim = tmp_path / "victim"
    victim.mkdir()
    home.cache.mkdir(parents=True, exist_ok=True)
    os.symlink(victim, jpgdigests.cache_dir(home))
    config = PublishConfig(workers=1, fsync=False, min_shards_per_split=1)
    for reused in (False, True):
        report = publish_dataset(home, config)
        assert report.reused is reused
        assert [note for note in report.metadata()["notes"] if "digest cache not used" in note]
    assert list(victim.iterdir()) == []


TRICKY_KEYS = ["blobs/ab/abc.jpg", "../etc/passwd", "/etc/passwd", "blobs/../../x.jpg", "blobs//x.jpg", "a\\b.jpg",
               "a\0b", "", ".", "..", "...", "a/.", "a/..", "a/./b", "./a", "a/", "a/.b/c", "a/..b", "..a/b",
               "a/b..", "ü/ß.jpg", "a/.../b", "/", "//", None]


def test_the_vectorized_key_check_agrees_with_the_per_key_one() -> None:
    looks = jpgdigests.keys_look_safe(pa.array(TRICKY_KEYS, pa.string())).to_pylist()
    assert looks == [shards.jpg_key_is_safe(key) if key is not None else False for key in TRICKY_KEYS]
    assert [key for key, ok in zip(TRICKY_KEYS, looks) if ok] == [
        "blobs/ab/abc.jpg", "...", "a/.b/c", "a/..b", "..a/b", "a/b..", "ü/ß.jpg", "a/.../b"]


def test_the_first_unsafe_key_of_the_first_column_is_named(tmp_path: Path) -> None:
    home = _home(tmp_path / "h")
    columns = {"jpg_0_key": pa.chunked_array([pa.array([KEYS[0], "a/../b.jpg", "/abs.jpg"])]),
               "jpg_1_key": pa.chunked_array([pa.array(["../up.jpg"])])}
    with pytest.raises(ValueError, match=r"split_pairs\.jpg_0_key value 'a/\.\./b\.jpg' is not a safe path"):
        jpgdigests.index_jpgs(home, columns)


def test_missing_jpegs_name_the_first_column_that_holds_them(tmp_path: Path) -> None:
    home = _home(tmp_path / "h")
    gone = "blobs/train/gone.jpg"
    both = {"jpg_0_key": pa.chunked_array([pa.array([KEYS[0], gone])]), "jpg_1_key": pa.chunked_array([pa.array([gone])])}
    with pytest.raises(FileNotFoundError, match=r"'blobs/train/gone\.jpg' \(split_pairs\.jpg_0_key\) is missing"):
        jpgdigests.index_jpgs(home, both)
    second = {"jpg_0_key": pa.chunked_array([pa.array([KEYS[0]])]), "jpg_1_key": pa.chunked_array([pa.array([gone])])}
    with pytest.raises(FileNotFoundError, match=r"\(split_pairs\.jpg_1_key\) is missing"):
        jpgdigests.index_jpgs(home, second)
    assert jpgdigests.first_columns(pa.array([KEYS[1], KEYS[3], KEYS[5]]),
                                    {"a": pa.array(KEYS[:4]), "b": pa.array(KEYS[3:])}) == ["a", "a", "b"]


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_hashing_in_runs_gives_each_files_digest_in_order(tmp_path: Path, monkeypatch, workers: int) -> None:
    monkeypatch.setattr(jpgdigests, "_READ_CHUNK", 1000)     # files of 0 to 4 reads
    root = tmp_path / "h"
    files = []
    for i in range(23):
        key = f"blobs/{i % 3}/{i:02d}.jpg"
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        (root / key).write_bytes(os.urandom(i * 170))
        files.append((key, "jpg_0_key"))
    done = jpgdigests.hash_files(root, files, workers)
    assert [sha for sha, _ in done] == [hashlib.sha256((root / key).read_bytes()).hexdigest() for key, _ in files]
    assert [identity for _, identity in done] == [shards.file_identity(os.stat(root / key)) for key, _ in files]
    assert jpgdigests.hash_files(root, [], workers) == []
    (root / files[19][0]).unlink()
    (root / files[6][0]).unlink()
    with pytest.raises(FileNotFoundError, match=r"'blobs/0/06\.jpg' \(split_pairs\.jpg_0_key\) cannot be read"):
        jpgdigests.hash_files(root, files, workers)
