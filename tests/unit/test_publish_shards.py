"""Shard building blocks: tar headers, the content-stable plan (segments, anchors, limits, names), keys."""
from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest

from formats import dataset
from pipelines.publish import plan as shardplan
from pipelines.publish import shards


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


def _plan_keys(n: int, seed: int = 0) -> list[str]:
    return [f"{i * 7 + seed}_0" for i in range(n)]


def test_chunk_bounds_cut_at_segments_anchors_and_limits() -> None:
    segments = ["a"] * 5 + ["b"] * 7
    sizes = np.full(12, 1000)
    anchors = np.zeros(12, dtype=bool)
    anchors[2] = anchors[5] = anchors[9] = True          # 5 is also a segment start
    bounds = shardplan.chunk_bounds(segments, sizes, anchors, max_samples=100, max_bytes=10**9)
    assert bounds == [(0, 2), (2, 5), (5, 9), (9, 12)]
    # the sample limit forces a cut; so does the byte limit (the tar's size, padding included)
    assert shardplan.chunk_bounds(["a"] * 7, np.full(7, 1000), np.zeros(7, bool), 3, 10**9) == [(0, 3), (3, 6), (6, 7)]
    by_bytes = shardplan.chunk_bounds(["a"] * 7, np.full(7, 5000), np.zeros(7, bool), 100, 3 * 10240)
    assert by_bytes == [(0, 5), (5, 7)] and shards.tar_size(5 * 5000) <= 3 * 10240 < shards.tar_size(6 * 5000)
    # a single sample larger than the byte limit gets a shard of its own instead of looping forever
    assert shardplan.chunk_bounds(["a"] * 3, np.array([5, 10**6, 5]), np.zeros(3, bool), 10, 100) == [(0, 1), (1, 2), (2, 3)]
    assert shardplan.chunk_bounds([], np.array([], dtype=np.int64), np.array([], dtype=bool), 10, 10) == []


def test_chunk_bounds_keep_a_run_together_unless_it_is_larger_than_a_shard() -> None:
    none = np.zeros(7, bool)
    runs = ["a", "b", "b", "b", "c", "d", "d"]
    # without runs the limit of 3 cuts b's run; with runs b starts its own shard
    assert shardplan.chunk_bounds(["s"] * 7, np.full(7, 10), none, 3, 10**9) == [(0, 3), (3, 6), (6, 7)]
    assert shardplan.chunk_bounds(["s"] * 7, np.full(7, 10), none, 3, 10**9, runs) == [(0, 1), (1, 4), (4, 7)]
    # by bytes as well: b's three samples do not fit after a's
    big = np.full(7, 10240)
    assert shardplan.chunk_bounds(["s"] * 7, big, none, 100, shards.tar_size(3 * 10240), runs) == \
        [(0, 1), (1, 4), (4, 7)]
    assert shardplan.chunk_bounds(["s"] * 8, np.full(8, 10240), np.zeros(8, bool), 100, shards.tar_size(3 * 10240),
                                  runs[:4] + ["c", "c", "d", "d"]) == [(0, 1), (1, 4), (4, 6), (6, 8)]
    # a run larger than a shard is split by the limit; one-sample runs change nothing
    assert shardplan.chunk_bounds(["s"] * 5, np.full(5, 10), np.zeros(5, bool), 2, 10**9, ["x"] * 5) == \
        [(0, 2), (2, 4), (4, 5)]
    singles = [str(i) for i in range(7)]
    assert shardplan.chunk_bounds(["s"] * 7, np.full(7, 10), none, 3, 10**9, singles) == \
        shardplan.chunk_bounds(["s"] * 7, np.full(7, 10), none, 3, 10**9)
    assert shardplan.chunk_bounds([], np.array([], dtype=np.int64), np.array([], dtype=bool), 3, 10, []) == []


def _rates(sizes: np.ndarray) -> np.ndarray:
    """Anchor rates at limits of 100 samples, no per-day term (a huge volume)."""
    return shardplan.anchor_rates(sizes, np.full(len(sizes), 10**12), max_samples=100, max_bytes=10**9,
                                  shards_per_day=1, min_shard_bytes=1)


def test_removing_a_users_run_moves_no_boundary_after_the_next_anchor() -> None:
    """Bounded ripple: a banned user's run leaves; only the shards from the one before its shard (which
    takes over its followers when the run had started a shard) up to the next anchor change."""
    rng = np.random.default_rng(0)
    labels: list[str] = []
    for user in range(1200):
        labels += [f"d/u{user:05d}"] * int(rng.integers(1, 5))
    n = len(labels)
    keys = [f"k{i}" for i in range(n)]
    sizes = rng.integers(2_000, 6_000, size=n)
    draws = shardplan.key_draws(labels, "t")
    is_anchor = shardplan.run_anchors(labels, draws, _rates(sizes))
    assert 30 < is_anchor.sum() < 110                       # about 2 per 100 samples
    before = shardplan.chunk_bounds(["d"] * n, sizes, is_anchor, 100, 10**9, labels)
    named_before = {tuple(keys[a:b]) for a, b in before}
    for user in (0, 17, 600, 1199):
        gone = [i for i, label in enumerate(labels) if label == f"d/u{user:05d}"]
        keep = np.ones(n, dtype=bool)
        keep[gone] = False
        kept_labels = [label for label, flag in zip(labels, keep) if flag]
        kept_keys = [k for k, flag in zip(keys, keep) if flag]
        kept_anchor = shardplan.run_anchors(kept_labels, draws[keep], _rates(sizes[keep]))
        assert kept_anchor.tolist() == is_anchor[keep].tolist()   # no other run's decision moves
        after = shardplan.chunk_bounds(["d"] * len(kept_keys), sizes[keep], kept_anchor, 100, 10**9, kept_labels)
        changed = [(a, b) for a, b in after if tuple(kept_keys[a:b]) not in named_before]
        own = max(a for a, _ in before if a <= gone[0])
        previous = max((a for a, _ in before if a < own), default=0)
        next_anchor = next((i for i in range(gone[-1] + 1, n) if is_anchor[i]), n) - len(gone)
        assert changed or own == gone[0], "the shard that lost the run changes (or was the run alone)"
        assert all(a >= previous and b <= next_anchor for a, b in changed), (user, changed)
        assert len(changed) <= 3


def test_a_run_longer_than_a_shard_gets_anchors_inside_so_one_pair_leaving_moves_no_cut_far() -> None:
    """A bot's day (one run of 3,000 pairs, limit 100): one pair leaving changes its own shard and the
    stretch up to the next anchor inside the run, not every limit cut after it."""
    import datetime as dt

    import pyarrow as pa

    n = 3_000 + 40
    rows = pa.table({
        "key": [f"{i}_0" for i in range(n)],
        "dt": pa.array([dt.date(2023, 3, 1)] * n, pa.date32()),
        "user_id": ["bot"] * 3_000 + [f"u{i % 20:02d}" for i in range(40)],
        "created_at": pa.array([dt.datetime(2023, 3, 1) + dt.timedelta(seconds=i) for i in range(n)], pa.timestamp("us")),
    })
    sizes = np.full(n, 4096)

    def shards_of(table, sample_sizes):
        indices, plans = shardplan.plan_split(table, "train", sample_sizes, max_samples=100, max_bytes=10**9,
                                              min_shards=1, seed=3, shards_per_day=1, min_shard_bytes=256 * 1024,
                                              day_volume={"20230301": 10**6})
        keys = table.column("key").take(indices).to_pylist()
        return {tuple(keys[p.start:p.stop]) for p in plans}

    before = shards_of(rows, sizes)
    assert max(len(s) for s in before) <= 100 and len(before) > 30
    assert shardplan.long_runs(np.array([1] * 3000 + [2] * 3), np.full(3003, 10), np.zeros(3003), 100,
                               10**9).tolist() == [True] * 3000 + [False] * 3
    # a run holding more than LONG_RUN_SHARDS anchors' worth of samples is long even where a shard could hold it
    assert shardplan.long_runs(np.array([1] * 9 + [2] * 3), np.full(12, 10), np.full(12, 0.5), 100,
                               10**9).tolist() == [True] * 9 + [False] * 3
    for gone in (5, 1500):
        keep = [i != gone for i in range(n)]
        after = shards_of(rows.filter(pa.array(keep)), sizes[np.array(keep)])
        assert len(after - before) <= 3, (gone, len(after - before))


def test_halving_a_tiny_split_cuts_between_runs() -> None:
    starts = np.array([0, 5])                       # user A has 5 pairs, user B 1
    assert shardplan.ensure_min_chunks([(0, 6)], 2, starts) == [(0, 5), (5, 6)]
    assert shardplan.ensure_min_chunks([(0, 6)], 4, starts) == [(0, 2), (2, 3), (3, 5), (5, 6)]  # then A's run, as it must
    assert shardplan.ensure_min_chunks([(0, 6)], 2) == [(0, 3), (3, 6)]     # without runs: the middle


def test_a_sample_of_rate_one_always_anchors_its_run() -> None:
    runs = ["x", "x", "x", "y"]
    marked = shardplan.run_anchors(runs, np.array([0.9999999999999, 0.1, 0.1, 0.9999999999999]),
                                   np.array([0.0, 1.0, 0.0, 1.0]))
    assert marked.tolist() == [True, False, False, True]
    assert shardplan.run_anchors(np.array([7, 7, 9]), np.array([0.5, 0.5, 0.5]), np.array([0.4, 0.4, 0.1])).tolist() \
        == [True, False, False]                    # integer labels work too: 1 - 0.6**2 = 0.64 > 0.5


def test_anchor_rate_depends_only_on_the_sample_and_its_days_volume() -> None:
    sizes = np.array([100_000, 100_000, 100_000, 1_000, 3_000_000])
    volume = np.array([640, 6_400, 64, 64, 10**9])
    rates = shardplan.anchor_rates(sizes, volume, max_samples=200, max_bytes=100_000_000, shards_per_day=64,
                                   min_shard_bytes=256_000)
    # 64 shards per 640 rankings: 0.1; per 6,400: 0.01; per 64: 1, but one anchor per 256 KB of samples at most
    # (100 KB -> 0.390625, 1 KB -> 0.00390625, below the limits' floor of 2 per 200 samples); a 3 MB sample
    # in a 100 MB limit: 0.06 whatever the volume
    assert rates.tolist() == [0.1, 0.01, 0.390625, 0.01, 0.06]
    draws = np.array([0.05, 0.5, 0.2, 0.5, 0.05])
    assert shardplan.run_anchors(["a", "b", "c", "d", "e"], draws, rates).tolist() == [True, False, True, False, True]
    assert shardplan.anchor_rates(np.array([10]), np.array([0]), max_samples=10, max_bytes=10**9, shards_per_day=64,
                                  min_shard_bytes=1).tolist() == [1.0]      # an empty volume counts as one ranking


def test_a_late_ban_keeps_the_day_volume_so_no_other_run_moves() -> None:
    """The day's volume (rankings logged) does not change when a user is banned: every other run keeps
    its decision, so the shards away from the user's stay byte for byte; with the volume taken from
    the split itself (a home without rankings) the shard count follows the samples."""
    import datetime as dt

    import pyarrow as pa

    rng = np.random.default_rng(1)
    users = [f"u{i:04d}" for i in range(300) for _ in range(int(rng.integers(1, 4)))]
    n = len(users)
    table = pa.table({
        "key": [f"{i}_0" for i in range(n)],
        "dt": pa.array([dt.date(2023, 3, 1)] * n, pa.date32()),
        "user_id": users,
        "created_at": pa.array([dt.datetime(2023, 3, 1) + dt.timedelta(seconds=i) for i in range(n)], pa.timestamp("us")),
    })
    sizes = np.full(n, 100_000)

    def shards_of(rows, sample_sizes, volume):
        indices, plans = shardplan.plan_split(rows, "train", sample_sizes, max_samples=10**6, max_bytes=10**12,
                                              min_shards=1, seed=5, shards_per_day=64, min_shard_bytes=1,
                                              day_volume=volume)
        keys = rows.column("key").take(indices).to_pylist()
        return [tuple(keys[p.start:p.stop]) for p in plans]

    volume = {"20230301": 600}
    before = shards_of(table, sizes, volume)
    assert 40 <= len(before) <= 90                         # about 64 x (samples / volume) = 64 x n / 600
    assert len(shards_of(table, sizes, {"20230301": 6_000})) < len(before) / 5
    assert len(shards_of(table, sizes, None)) == len(shards_of(table, sizes, {"20230301": n}))
    for banned in ("u0000", "u0150", "u0299"):
        keep = np.array([u != banned for u in users])
        after = shards_of(table.filter(pa.array(keep)), sizes[keep], volume)
        assert len(set(after) - set(before)) <= 2 and len(set(before) - set(after)) <= 2, banned


def test_ensure_min_chunks_halves_the_largest() -> None:
    assert shardplan.ensure_min_chunks([(0, 10)], 4) == [(0, 2), (2, 5), (5, 7), (7, 10)]
    assert shardplan.ensure_min_chunks([(0, 3), (3, 4)], 4) == [(0, 1), (1, 2), (2, 3), (3, 4)]
    assert shardplan.ensure_min_chunks([(0, 1), (1, 2)], 4) == [(0, 1), (1, 2)]   # nothing left to halve
    assert shardplan.ensure_min_chunks([(0, 5), (5, 9)], 2) == [(0, 5), (5, 9)]


def test_run_anchors_mark_only_run_starts_and_depend_on_the_run_alone() -> None:
    runs = ["d/a", "d/a", "d/b", "d/c", "d/c", "d/c", "e/a"]
    draws = shardplan.key_draws(runs, "t")
    assert draws[0] == draws[1] and draws[0] != draws[6]           # one draw per (segment, user)
    every = shardplan.run_anchors(runs, draws, np.ones(len(runs)))
    assert every.tolist() == [True, False, True, True, False, False, True]
    assert not shardplan.run_anchors(runs, draws, np.zeros(len(runs))).any()
    # the run's chance is 1 - prod(1 - rate) of its samples: c's three samples at 0.5 give 0.875
    rates = np.full(len(runs), 0.5)
    marked = shardplan.run_anchors(runs, np.array([0.7, 0.7, 0.7, 0.8, 0.8, 0.8, 0.2]), rates)
    assert marked.tolist() == [True, False, False, True, False, False, True]
    # a neighbour leaving does not change a run's decision
    kept = [0, 1, 3, 4, 5, 6]
    alone = shardplan.run_anchors([runs[i] for i in kept], draws[kept], rates[kept])
    assert alone.tolist() == shardplan.run_anchors(runs, draws, rates)[kept].tolist()
    assert shardplan.run_anchors([], np.array([]), np.array([])).tolist() == []


def test_key_draws_are_stable_and_salted() -> None:
    keys = _plan_keys(200)
    a = shardplan.key_draws(keys, "s")
    assert ((a >= 0) & (a < 1)).all() and len(set(a.tolist())) == 200
    assert shardplan.key_draws(keys[::-1], "s").tolist() == a[::-1].tolist()   # per key, not per position
    assert shardplan.key_draws(keys, "other").tolist() != a.tolist()


def test_shard_names_come_from_segment_and_first_key() -> None:
    name = dataset.shard_name("train", "20230301", "17_0")
    assert name.startswith("pickapic-train-20230301-") and len(name) == len("pickapic-train-20230301-") + 10
    assert name == dataset.shard_name("train", "20230301", "17_0")
    assert name != dataset.shard_name("train", "20230301", "18_0")
    assert dataset.shard_segment(name + ".tar") == "20230301"


def test_plan_split_orders_by_day_then_user_then_time() -> None:
    import datetime as dt

    import pyarrow as pa

    n = 40
    rows = pa.table({
        "key": [f"{i}_0" for i in range(n)],
        "dt": pa.array([dt.date(2023, 3, 1 + (i % 3)) for i in range(n)], pa.date32()),
        "user_id": [f"u{(i * 7) % 5}" for i in range(n)],
        "created_at": pa.array([dt.datetime(2023, 3, 1) + dt.timedelta(minutes=(n - i)) for i in range(n)],
                               pa.timestamp("us")),
    })
    sizes = np.full(n, 2048)
    indices, plans = shardplan.plan_split(rows, "train", sizes, max_samples=10**6, max_bytes=10**9, min_shards=2, seed=1, shards_per_day=64, min_shard_bytes=256 * 1024)
    ordered = rows.take(indices)
    days = ordered.column("dt").to_pylist()
    assert days == sorted(days) and [p.name.split("-")[2] for p in plans] == ["20230301", "20230302", "20230303"]
    for plan in plans:                                       # by user, then time, inside a day
        users = ordered.column("user_id").to_pylist()[plan.start:plan.stop]
        times = ordered.column("created_at").to_pylist()[plan.start:plan.stop]
        assert users == sorted(users) and len(set(users)) > 1
        assert list(zip(users, times)) == sorted(zip(users, times))
    # small shards: a user's pairs of one day still share one shard (no anchor inside a run)
    indices, plans = shardplan.plan_split(rows, "train", sizes, max_samples=3, max_bytes=10**9, min_shards=2, seed=1, shards_per_day=64, min_shard_bytes=256 * 1024)
    ordered = rows.take(indices)
    shard_of = {}
    for number, plan in enumerate(plans):
        for day, user in zip(ordered.column("dt").to_pylist()[plan.start:plan.stop],
                             ordered.column("user_id").to_pylist()[plan.start:plan.stop]):
            assert shard_of.setdefault((day, user), number) == number, (day, user)
    assert len(plans) > 3
    # a split of fewer days than min_shards: its largest shards are halved (still one day each)
    _, few = shardplan.plan_split(rows.slice(0, 2), "test_unique", sizes[:2], max_samples=10**6,
                                  max_bytes=10**9, min_shards=4, seed=1, shards_per_day=64, min_shard_bytes=256 * 1024)
    assert len(few) == 2
    _, halved = shardplan.plan_split(rows.filter(pa.array([i % 3 == 0 for i in range(n)])), "test_unique",
                                     sizes[: (n + 2) // 3], max_samples=10**6, max_bytes=10**9, min_shards=4, seed=1,
                                     shards_per_day=64, min_shard_bytes=256 * 1024)
    assert len(halved) == 4 and {p.name.split("-")[2] for p in halved} == {"20230301"}


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


def test_sample_json_takes_null_and_empty_float_columns() -> None:
    """A float column that is all null (or a table with no rows) has nothing non-finite in it."""
    import json

    import pyarrow as pa

    rows = _rows_for_json()
    rows = rows.set_column(rows.schema.get_field_index("label_0"), "label_0", pa.nulls(rows.num_rows, pa.float64()))
    for min_rows in (1, 10**9):
        texts = shards.sample_json(rows, min_rows_for_duckdb=min_rows).to_pylist()
        assert [json.loads(t)["label_0"] for t in texts] == [None] * rows.num_rows
        assert shards.sample_json(rows.slice(0, 0), min_rows_for_duckdb=min_rows).to_pylist() == []


def test_a_pickled_task_carries_only_its_slice() -> None:
    import pickle

    import pyarrow as pa

    whole = pa.table({"key": pa.array([f"k{i}" * 20 for i in range(20_000)])}).combine_chunks()
    task = shards.ShardTask("train", "pickapic-train-x", "/out", "/home", whole.slice(100, 50), "digest", False)
    data = pickle.dumps(task)
    assert len(data) < 20_000 < len(pickle.dumps(whole))
    back = pickle.loads(data)
    assert back == task and back.rows.equals(task.rows) and back.rows.num_rows == 50


def _tar_rows(home):
    import pyarrow as pa

    rows = _rows_for_json()
    keys = []
    for i in range(rows.num_rows):
        for side in (0, 1):
            relpath = f"blobs/{i}_{side}.jpg"
            (home / "blobs").mkdir(exist_ok=True)
            (home / relpath).write_bytes(bytes([i, side]) * (700 + 37 * i))   # odd sizes: tar padding is exercised
            keys.append(relpath)
    rows = rows.append_column("jpg_0_key", pa.array(keys[0::2])).append_column("jpg_1_key", pa.array(keys[1::2]))
    return rows.drop_columns(["caption"]).append_column("caption", rows.column("caption"))


def _tar_to(rows, home, path, writeback, direct=False):
    """``shards._write_tar`` of ``rows`` into a new file at ``path``: (its result, member offsets, sizes)."""
    import os

    offsets = {m: [] for m in shards.MEMBERS}
    sizes = {m: [] for m in shards.MEMBERS}
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        result = shards._write_tar(rows, shards.sample_json(rows).to_pylist(), str(home), fd, offsets, sizes,
                                   writeback, direct)
    finally:
        os.close(fd)
    return result, offsets, sizes


@pytest.mark.parametrize("direct", [False, True])
def test_chunked_short_and_direct_writes_give_the_same_tar(tmp_path, monkeypatch, direct) -> None:
    """Small chunks, writes cut short, O_DIRECT (where the file system takes it) and early writeback
    change no byte: the tar is tarfile's, member for member."""
    import fcntl
    import os

    from pipelines.publish import chunkwriter

    rows = _tar_rows(tmp_path)
    plain = tmp_path / "plain.tar"
    expected = _tar_to(rows, tmp_path, plain, writeback=False)
    with tarfile.open(plain) as archive:
        names = archive.getnames()
        assert names[:4] == ["0_0.0.jpg", "0_0.1.jpg", "0_0.json", "0_0.txt"]
        assert archive.extractfile("3_0.1.jpg").read() == (tmp_path / "blobs/3_1.jpg").read_bytes()
        assert len(names) == 4 * rows.num_rows
    try:    # does this file system take O_DIRECT? (asked here, not through the code under test)
        os.close(os.open(tmp_path / "probe", os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o644))
        takes_direct = True
    except OSError:
        takes_direct = False

    cut = tmp_path / "cut.tar"
    real_write = os.write
    calls = []    # (bytes asked, O_DIRECT on) of each write to the tar

    def short_write(fd, data):   # a write cut short, as a signal may cut one: at most a page (1,000 bytes buffered)
        if os.readlink(f"/proc/self/fd/{fd}") != str(cut):
            return real_write(fd, data)
        on = bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT)
        calls.append((len(data), on))
        return real_write(fd, data[: 4096 if on else 1000])

    monkeypatch.setattr(chunkwriter.os, "write", short_write)
    monkeypatch.setattr(chunkwriter, "CHUNK", 8192)
    monkeypatch.setattr(chunkwriter, "_free", [])        # a buffer of 2 chunks: making room writes too
    started = []
    real_start = shards.start_writeback
    monkeypatch.setattr(shards, "start_writeback", lambda *a: (started.append(a), real_start(*a)))
    assert _tar_to(rows, tmp_path, cut, writeback=True, direct=direct) == expected
    assert cut.read_bytes() == plain.read_bytes()
    size = cut.stat().st_size
    assert size > 3 * 8192 and len(calls) > size // 8192    # chunked, and the short writes were continued
    if direct and takes_direct:
        assert calls[0][1] and not started       # straight to the disk: nothing left for writeback
    else:
        assert not any(on for _, on in calls)
        # one writeback per chunk written, consecutive ranges from 0 to the end of the file
        assert [offset for _, offset, _ in started] == list(np.cumsum([0] + [n for _, _, n in started[:-1]]))
        assert started[-1][1] + started[-1][2] == size and len(started) > 3


@pytest.mark.parametrize("jpg_bytes", [3000, 3 << 20])     # the write due in maybe_write, or in making room
def test_a_full_disk_while_writing_a_tar_is_not_blamed_on_a_jpeg(tmp_path, monkeypatch, jpg_bytes) -> None:
    import errno

    from pipelines.publish import chunkwriter

    rows = _tar_rows(tmp_path)
    for relpath in rows.column("jpg_0_key").to_pylist():
        (tmp_path / relpath).write_bytes(b"j" * jpg_bytes)

    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(chunkwriter.os, "write", full)
    with pytest.raises(OSError) as caught:
        _tar_to(rows, tmp_path, tmp_path / "full.tar", writeback=False, direct=True)
    assert caught.type is OSError and caught.value.errno == errno.ENOSPC


def test_a_jpeg_that_fails_to_read_is_named(tmp_path, monkeypatch) -> None:
    import errno

    rows = _tar_rows(tmp_path)
    real_open = shards.open_regular_file

    class Failing:
        def __init__(self, handle):
            self.handle = handle

        def fileno(self):
            return self.handle.fileno()

        def readinto(self, view):
            raise OSError(errno.EIO, "Input/output error")

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

    monkeypatch.setattr(shards, "open_regular_file", lambda path: Failing(real_open(path)))
    with pytest.raises(FileNotFoundError, match=r"sample '0_0': cannot read training JPEG 'blobs/0_0.jpg': .*Input/output"):
        _tar_to(rows, tmp_path, tmp_path / "eio.tar", writeback=False)


def test_start_writeback_is_harmless_on_any_range(tmp_path) -> None:
    path = tmp_path / "f"
    with open(path, "wb", buffering=0) as out:
        out.write(b"x" * 10_000)
        shards.start_writeback(out.fileno(), 0, 10_000)
        shards.start_writeback(out.fileno(), 5_000, 1 << 30)   # past the end: nothing to write, no error
    assert path.read_bytes() == b"x" * 10_000


def test_start_writeback_is_a_no_op_without_the_call(tmp_path, monkeypatch) -> None:
    """Where libc has no sync_file_range (or no handle at all), nothing fails and nothing is asked."""
    def no_libc(*args, **kwargs):
        raise TypeError("no libc handle here")

    monkeypatch.setattr(shards, "_sync_file_range", None)
    monkeypatch.setattr(shards.ctypes, "CDLL", no_libc)
    with open(tmp_path / "f", "wb", buffering=0) as out:
        out.write(b"x" * 100)
        shards.start_writeback(out.fileno(), 0, 100)
    assert shards._sync_file_range is False          # looked up once, remembered as missing


def test_write_all_takes_more_pieces_than_one_writev_can(tmp_path) -> None:
    pieces = [bytes([i % 256]) * (1 + i % 7) for i in range(3 * shards.IOV_MAX + 5)]
    with open(tmp_path / "f", "wb", buffering=0) as out:
        shards._write_all(out.fileno(), pieces, sum(map(len, pieces)))
    assert (tmp_path / "f").read_bytes() == b"".join(pieces)
