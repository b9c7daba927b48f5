"""Shard building blocks: tar headers, the balanced plan, the seeded order, keys."""
from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest

from pipelines import shards


@pytest.mark.parametrize("name,size", [("1_0.0.jpg", 0), ("12345_1.json", 511), ("9_0_u.txt", 512),
                                       ("x" * 100, 123456789), ("a-b_c.1.jpg", 8 ** 11 - 1)])
def test_tar_header_is_byte_identical_to_tarfile(name: str, size: int) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uname, info.gname = size, shards.TAR_MTIME, 0o444, "", ""
    assert shards.tar_header(name.encode(), size) == info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape")


def test_tar_header_refuses_what_ustar_cannot_hold() -> None:
    with pytest.raises(ValueError, match="longer than 100"):
        shards.tar_header(b"y" * 101, 1)
    with pytest.raises(ValueError, match="does not fit"):
        shards.tar_header(b"big", 8 ** 11)


def test_tarfile_reads_our_headers() -> None:
    blob = io.BytesIO()
    for name, data in ((b"k.0.jpg", b"abc"), (b"k.json", b"{}" * 300)):
        blob.write(shards.tar_header(name, len(data)) + data + b"\0" * (-len(data) % 512))
    blob.write(b"\0" * 1024)
    blob.seek(0)
    with tarfile.open(fileobj=blob) as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == ["k.0.jpg", "k.json"]
        assert tar.extractfile(members[1]).read() == b"{}" * 300
        assert {(m.uid, m.gid, m.mtime, m.mode) for m in members} == {(0, 0, shards.TAR_MTIME, 0o444)}


def test_plan_bounds_equal_counts_and_limits() -> None:
    rng = np.random.default_rng(0)
    sample_bytes = rng.integers(1_000, 5_000, size=1003)
    bounds = shards.plan_bounds(sample_bytes, max_samples=100, max_bytes=10**9, min_shards=4)
    counts = [b - a for a, b in bounds]
    assert len(bounds) == 11 and max(counts) - min(counts) <= 1 and sum(counts) == 1003
    assert bounds[0][0] == 0 and bounds[-1][1] == 1003
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    by_bytes = shards.plan_bounds(sample_bytes, max_samples=10**6, max_bytes=200_000, min_shards=1)
    assert all(int(sample_bytes[a:b].sum()) <= 200_000 for a, b in by_bytes)
    assert len(by_bytes) >= int(sample_bytes.sum()) // 200_000 + 1


def test_plan_bounds_min_shards_for_small_splits() -> None:
    assert len(shards.plan_bounds(np.full(500, 1000), 10_000, 10**9, 4)) == 4
    assert len(shards.plan_bounds(np.full(3, 1000), 10_000, 10**9, 4)) == 3   # not enough samples for 4
    assert shards.plan_bounds(np.array([], dtype=np.int64), 10, 10, 4) == []
    # a single sample larger than the byte limit gets a shard of its own instead of looping forever
    assert shards.plan_bounds(np.array([5, 10**6, 5]), 10, 100, 1) == [(0, 1), (1, 2), (2, 3)]


def test_shuffle_is_seeded_and_independent_of_input_order() -> None:
    keys = [f"{i}_0" for i in range(500)]
    order = shards.shuffle_order(keys, seed=42)
    assert sorted(order.tolist()) == list(range(500))
    assert order.tolist() != list(range(500))
    reversed_keys = keys[::-1]
    assert [reversed_keys[i] for i in shards.shuffle_order(reversed_keys, 42)] == [keys[i] for i in order]
    assert shards.shuffle_order(keys, seed=7).tolist() != order.tolist()


def test_sample_keys() -> None:
    assert shards.sample_key("17_0", "train") == "17_0"
    assert shards.sample_key("17_0", "test_unique") == "17_0_u"
    for bad in ("1.0", "a/b", "", "ü_1"):
        with pytest.raises(ValueError, match="cannot be a WebDataset key"):
            shards.sample_key(bad, "train")


def test_jpg_key_safety() -> None:
    assert shards.jpg_key_is_safe("blobs/ab/abc.jpg")
    for bad in ("../etc/passwd", "/etc/passwd", "blobs/../../x.jpg", "blobs//x.jpg", "a\\b.jpg", "a\0b", ""):
        assert not shards.jpg_key_is_safe(bad), bad


def _rows_for_json():
    import datetime as dt

    import pyarrow as pa

    strings = ["plain", 'quote " back \\ slash /', "tab\there", "nl\nx", "uni é 漢字 😀", "\u2028 \u200e rtl",
               "\x7f del", "\x01ctl", "", "it's"]
    n = len(strings)
    return pa.table({
        "pair_id": pa.array([f"{i}_0" for i in range(n)]),
        "ranking_id": pa.array(range(n), pa.int64()),
        "pair_index": pa.array([0] * n, pa.int8()),
        "caption": pa.array(strings),
        "created_at": pa.array([dt.datetime(2023, 3, 1, 12, 0, i, 123456 * (i % 2)) for i in range(n)],
                               pa.timestamp("us")),
        "label_0": pa.array([1.0, 0.0, 0.5] * 3 + [1.0], pa.float64()),
        "best_image_uid": pa.array([None, "x"] * (n // 2), pa.string()),
        "has_label": pa.array([True, False] * (n // 2)),
        "dt": pa.array([dt.date(2023, 3, 1)] * n, pa.date32()),
        "num_example_per_prompt": pa.array(range(1, n + 1), pa.int64()),
        "key": pa.array([f"{i}_0" for i in range(n)]),
    })


def test_sample_json_matches_json_dumps_row_by_row() -> None:
    import json

    import pyarrow.compute as pc

    rows = _rows_for_json()
    texts = shards.sample_json(rows, min_rows_for_duckdb=1).to_pylist()
    assert shards.sample_json(rows, min_rows_for_duckdb=10**9).to_pylist() == texts   # the small-shard path
    columns = {f.name: rows.column(f.name) for f in rows.schema if f.name != "key"}
    columns["created_at"] = pc.strftime(columns["created_at"], "%Y-%m-%dT%H:%M:%S")  # Arrow: seconds.ffffff
    columns["dt"] = columns["dt"].cast("string")
    expected = [json.dumps(r, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
                for r in __import__("pyarrow").table(columns).to_pylist()]
    assert texts == expected
    assert json.loads(texts[1])["created_at"] == "2023-03-01T12:00:01.123456"
    assert json.loads(texts[0])["created_at"] == "2023-03-01T12:00:00.000000"


def test_sample_json_refuses_non_finite_numbers() -> None:
    import pyarrow as pa

    rows = _rows_for_json()
    labels = rows.column("label_0").to_pylist()
    labels[3] = float("nan")
    rows = rows.set_column(rows.schema.get_field_index("label_0"), "label_0", pa.array(labels, pa.float64()))
    for min_rows in (1, 10**9):
        with pytest.raises(ValueError, match="'3_0'.*label_0 is not finite"):
            shards.sample_json(rows, min_rows_for_duckdb=min_rows)


def test_a_pickled_task_carries_only_its_slice() -> None:
    import pickle

    import pyarrow as pa

    whole = pa.table({"key": pa.array([f"k{i}" * 20 for i in range(20_000)])}).combine_chunks()
    task = shards.ShardTask("train", 3, "/out", "/home", whole.slice(100, 50), "digest", False)
    data = pickle.dumps(task)
    assert len(data) < 20_000 < len(pickle.dumps(whole))
    back = pickle.loads(data)
    assert back == task and back.rows.equals(task.rows) and back.rows.num_rows == 50
