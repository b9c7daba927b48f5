"""Content-stable shard plan: which samples form which shard, as a pure function of the samples.

A split's samples are ordered by (segment, user_id, created_at, key); the segment of a sample is its
export day (``dt``), in every split. A shard never spans two segments, so a new export day only adds
shards and leaves every older one as it was. (The unique splits hold at most 500 pairs: their daily
shards are small, but a prompt entering or leaving them rewrites only one day's shard.)

Inside a segment a user's pairs of that day are one run, and the boundaries are content-defined, as
in rsync or restic: a run starts a new shard when a salted hash of (segment, user) falls under the
run's *anchor rate* (:func:`anchor_rates`: each sample adds its share, about ``shards_per_day``
anchors per day's *volume* of rankings, the rankings the app logged that day, but no more than one per
``min_shard_bytes`` of samples and no fewer than two per shard limit), or a sample starts one when the
open shard would pass the sample or byte limit. The volume is what the app logged, not what curation
kept, so a user banned later, a cluster merge or a prompt held out changes no other run's rate: a ban
rewrites about one shard per day the user was active (about ``1 / shards_per_day`` of the day,
however many pairs they ranked), plus the shard before theirs when their run had started one (it
takes over the followers) and, where a limit rather than an anchor had cut after them, the shards up
to the next anchor; no boundary after the next anchor moves. A run holding more than
``LONG_RUN_SHARDS`` anchors' worth of samples (a bot's day) gets anchors inside, by key. A shard's
name is made of its split, segment and a digest of what it holds (:func:`content_digest`: its keys
and each sample's JSON digest), never of a position, so an unchanged shard keeps its name and bytes
and a rewritten one gets a new name: a name never holds other bytes in a later version (review
rev28c: named by its first key, a rewritten shard kept its name, and a cache keyed by names served
its old samples).

While a split has fewer shards than ``min_shards_per_split`` (only while it is tiny), its largest
shards are halved until it has enough: the trainer needs at least GPUs x loader workers shards.
"""
from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from formats.dataset import FORMAT_VERSION, shard_name


def _writer_versions() -> str:
    """The libraries whose versions change the bytes a publish writes for equal input: pyarrow writes
    the sidecars and meta tables (and names its version in every Parquet footer), DuckDB the JSON
    members of large shards and the meta queries. Part of every plan digest and of the version id, so
    after an upgrade nothing is reused and a nightly equals a build from scratch byte for byte."""
    from importlib.metadata import version

    return f"pyarrow {version('pyarrow')}; duckdb {version('duckdb')}"


WRITERS = _writer_versions()
from pipelines.publish import shards

ANCHOR_RATE = 2.0            # cuts per shard limit, at least: where the limits set a day's shard count
LONG_RUN_SHARDS = 4          # a run holding more than this many anchors' worth of samples is cut inside


@dataclass(frozen=True)
class ShardPlan:
    """One planned shard: its name and the rows ``start:stop`` of the split's ordered samples."""

    split: str
    name: str
    start: int
    stop: int


def segment_labels(samples: pa.Table) -> pa.Array:
    """Each sample's segment: ``YYYYMMDD`` of its export day."""
    return pc.strftime(samples.column("dt").cast(pa.timestamp("s")), "%Y%m%d")


def key_draws(keys: list[str], salt: str) -> np.ndarray:
    """A uniform draw in [0, 1) per key: a salted blake2b of the key (stable across runs and machines)."""
    prefix = f"{salt}:".encode()
    ints = np.fromiter(
        (int.from_bytes(hashlib.blake2b(prefix + k.encode(), digest_size=8).digest(), "big") >> 11 for k in keys),
        dtype=np.int64, count=len(keys))
    return ints / float(1 << 53)


def order(samples: pa.Table, segments: pa.Array) -> pa.Array:
    """Indices that sort the samples by (segment, user_id, created_at, key)."""
    keyed = pa.table({"segment": segments, "user_id": samples.column("user_id"),
                      "created_at": samples.column("created_at"), "key": samples.column("key")})
    return pc.sort_indices(keyed, sort_keys=[("segment", "ascending"), ("user_id", "ascending"),
                                             ("created_at", "ascending"), ("key", "ascending")])


def run_starts(runs) -> np.ndarray:
    """Indices where a run starts: ``runs`` holds a label per sample (a list, or an array of ints) and
    equal neighbours form a run."""
    if len(runs) == 0:
        return np.zeros(0, dtype=np.int64)
    label = runs if isinstance(runs, np.ndarray) else np.asarray(runs, dtype=object)
    return np.flatnonzero(np.concatenate(([True], label[1:] != label[:-1])))


def _run_sizes(runs, sample_bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Start index, samples and tar bytes (headers included) of every run."""
    starts = run_starts(runs)
    counts = np.diff(np.append(starts, len(runs)))
    totals = np.add.reduceat(np.asarray(sample_bytes, dtype=np.int64), starts) if starts.size \
        else np.zeros(0, dtype=np.int64)
    return starts, counts, totals


def anchor_rates(sample_bytes: np.ndarray, day_volume: np.ndarray, *, max_samples: int, max_bytes: int,
                 shards_per_day: int, min_shard_bytes: int) -> np.ndarray:
    """Each sample's anchor rate (the chance it would start a shard), from the sample and its day's volume alone.

    ``day_volume`` is, per sample, the rankings the app logged on its export day (see
    :func:`day_volumes`): ``shards_per_day / volume``, so a day is cut into about ``shards_per_day``
    shards over its splits when each ranking gives one published pair, but no more than one anchor
    per ``min_shard_bytes`` of such samples (a quiet day gets fewer, larger shards), and at least
    ``ANCHOR_RATE`` per shard limit (``max_samples`` samples or ``max_bytes`` of such samples), so
    the limits rarely have to cut. The volume counts what was logged, not what curation kept: a ban,
    a merge or a held-out prompt changes no other sample's rate.
    """
    sample_bytes = np.asarray(sample_bytes, dtype=np.float64)
    per_day = np.minimum(shards_per_day / np.maximum(np.asarray(day_volume, dtype=np.float64), 1.0),
                         sample_bytes / min_shard_bytes)
    by_limit = np.maximum(ANCHOR_RATE / max_samples, ANCHOR_RATE * sample_bytes / max_bytes)
    return np.minimum(np.maximum(per_day, by_limit), 1.0)


def run_anchors(runs, draws: np.ndarray, rates: np.ndarray) -> np.ndarray:
    """Whether each sample starts a new shard by itself, deciding once per run of equal ``runs`` labels.

    A run (one user's pairs of one day) is an anchor when the draw at its first sample (one per
    label) falls under the chance that any of its samples would be one (``1 - prod(1 - rate)``; a
    run holding a sample of rate 1 always is); only its first sample is marked. The draw depends on
    the label alone and the rate on the run's own samples, never on its neighbours.
    """
    out = np.zeros(len(runs), dtype=bool)
    starts = run_starts(runs)
    if not starts.size:
        return out
    rates = rates.astype(np.float64)
    keep = np.log1p(-np.minimum(rates, 1.0 - 1e-12))       # log(1 - rate) per sample
    run_rate = -np.expm1(np.add.reduceat(keep, starts))
    run_rate[np.maximum.reduceat(rates, starts) >= 1.0] = 1.0
    out[starts] = draws[starts] < run_rate
    return out


def long_runs(runs, sample_bytes: np.ndarray, rates: np.ndarray, max_samples: int, max_bytes: int) -> np.ndarray:
    """Whether each sample sits in a run that no single shard can hold (more than ``max_samples``
    samples or ``max_bytes`` of tar) or that holds more than ``LONG_RUN_SHARDS`` anchors' worth of
    samples (sum of its rates: a bot's day): such a run gets anchors inside, by key."""
    starts, counts, totals = _run_sizes(runs, sample_bytes)
    expected = np.add.reduceat(np.asarray(rates, dtype=np.float64), starts) if starts.size else np.zeros(0)
    return np.repeat((counts > max_samples) | (shards.tar_size(totals) > max_bytes) | (expected > LONG_RUN_SHARDS),
                     counts)


def chunk_bounds(segments: list[str], sample_bytes: np.ndarray, is_anchor: np.ndarray,
                 max_samples: int, max_bytes: int, runs=None) -> list[tuple[int, int]]:
    """Cut ordered samples into shards: at every segment change and anchor, and before the limits are passed.

    With ``runs`` (a label per sample, a list or an array; equal neighbours form a run), a run that
    would pass a limit of the open shard starts a new one, so a run is split only when it is larger
    than a shard.
    """
    if max_samples < 1 or max_bytes < 1:
        raise ValueError(f"shard limits must be positive: max_samples={max_samples}, max_bytes={max_bytes}")
    sizes = sample_bytes.tolist()
    run_count, run_bytes = _run_totals(runs, sizes) if runs is not None else (None, None)
    bounds: list[tuple[int, int]] = []
    start, count, used = 0, 0, 0
    for i, (segment, size, anchor) in enumerate(zip(segments, sizes, is_anchor.tolist())):
        if count and (anchor or segment != segments[start] or count >= max_samples
                      or shards.tar_size(used + size) > max_bytes
                      or (run_count is not None and run_count[i]
                          and (count + run_count[i] > max_samples or shards.tar_size(used + run_bytes[i]) > max_bytes))):
            bounds.append((start, i))
            start, count, used = i, 0, 0
        count += 1
        used += size
    if count:
        bounds.append((start, len(segments)))
    return bounds


def _run_totals(runs, sizes: list[int]) -> tuple[list[int], list[int]]:
    """Samples and bytes of the run each sample starts; 0 where a sample continues a run or is a run
    by itself (then the per-sample limit check already decides the same)."""
    starts, run_counts, run_bytes = _run_sizes(runs, sizes)
    counts = np.zeros(len(runs), dtype=np.int64)
    totals = np.zeros(len(runs), dtype=np.int64)
    counts[starts] = run_counts
    totals[starts] = run_bytes
    counts[counts == 1] = 0
    return counts.tolist(), totals.tolist()


def ensure_min_chunks(bounds: list[tuple[int, int]], minimum: int,
                      starts: np.ndarray | None = None) -> list[tuple[int, int]]:
    """Halve the largest shard (the first of equals) until there are ``minimum`` shards or no shard can split.

    With ``starts`` (sorted run start indices) a shard is cut at the run start nearest its middle
    (the earlier of two), so runs stay whole where the shard holds more than one.
    """
    bounds = list(bounds)
    while len(bounds) < minimum:
        widest = max(range(len(bounds)), key=lambda i: (bounds[i][1] - bounds[i][0], -i))
        start, stop = bounds[widest]
        if stop - start < 2:
            break
        middle = start + (stop - start) // 2
        if starts is not None:
            inside = starts[(starts > start) & (starts < stop)]
            if inside.size:
                middle = int(inside[np.argmin(np.abs(inside - middle))])
        bounds[widest:widest + 1] = [(start, middle), (middle, stop)]
    return bounds


def plan_split(samples: pa.Table, split: str, sample_bytes: np.ndarray, *, max_samples: int, max_bytes: int,
               min_shards: int, seed: int, shards_per_day: int, min_shard_bytes: int,
               day_volume: dict[str, int] | None = None,
               row_digests: Sequence[str] | None = None) -> tuple[pa.Array, list[ShardPlan]]:
    """The order of a split's samples and its shards; ``sample_bytes`` is aligned with ``samples``.

    ``day_volume`` maps a segment (``YYYYMMDD``) to its day's volume (:func:`anchor_rates`); a day it
    does not name counts this split's samples of that day. ``row_digests``: each sample's JSON digest
    (:func:`shards.json_digests` of ``samples``, aligned with it; computed when not given), which names
    the shards (:func:`content_digest`). Returns the indices that put ``samples`` in shard order and one
    :class:`ShardPlan` per shard over that order.
    """
    segments = segment_labels(samples)
    indices = order(samples, segments)
    ordered_segments = segments.take(indices).to_pylist()
    ordered_keys = samples.column("key").take(indices).to_pylist()
    ordered_users = samples.column("user_id").take(indices).to_pylist()
    ordered_bytes = np.asarray(sample_bytes[indices.to_numpy()], dtype=np.int64)
    # runs: a user's pairs of one day; labelled by number, hashed once per run as "<segment>/<user_id>"
    segment_array = np.asarray(ordered_segments, dtype=object)
    user_array = np.asarray(ordered_users, dtype=object)
    new_run = np.ones(len(ordered_keys), dtype=bool)
    new_run[1:] = (segment_array[1:] != segment_array[:-1]) | (user_array[1:] != user_array[:-1])
    runs = np.cumsum(new_run)
    starts = np.flatnonzero(new_run)
    volumes = {segment: (day_volume or {}).get(segment, count)
               for segment, count in Counter(ordered_segments).items()}
    rates = anchor_rates(ordered_bytes, np.array([volumes[s] for s in ordered_segments], dtype=np.float64),
                         max_samples=max_samples, max_bytes=max_bytes, shards_per_day=shards_per_day,
                         min_shard_bytes=min_shard_bytes)
    draws = np.zeros(len(ordered_keys))
    draws[starts] = key_draws([f"{ordered_segments[i]}/{ordered_users[i]}" for i in starts.tolist()],
                              f"pickapic-anchor:{seed}")
    is_anchor = run_anchors(runs, draws, rates)
    inner = np.flatnonzero(long_runs(runs, ordered_bytes, rates, max_samples, max_bytes) & ~new_run)
    if inner.size:   # a run longer than a shard: anchors by key inside it, so one pair leaving moves no cut far
        is_anchor[inner] = key_draws([ordered_keys[i] for i in inner.tolist()], f"pickapic-anchor-in-run:{seed}") \
            < rates[inner]
    bounds = chunk_bounds(ordered_segments, ordered_bytes, is_anchor, max_samples, max_bytes, runs)
    bounds = ensure_min_chunks(bounds, min(min_shards, len(ordered_keys)), starts)
    if row_digests is None:
        row_digests = shards.json_digests(samples)
    if len(row_digests) != len(ordered_keys):
        raise ValueError(f"row_digests has {len(row_digests)} entries for {len(ordered_keys)} samples")
    ordered_digests = np.asarray(row_digests, dtype=object)[indices.to_numpy()].tolist()
    plans = [ShardPlan(split, shard_name(split, ordered_segments[a],
                                         content_digest(ordered_keys[a:b], ordered_digests[a:b])), a, b)
             for a, b in bounds]
    names = [p.name for p in plans]
    if len(set(names)) != len(names):
        clash = next(n for n in names if names.count(n) > 1)
        raise RuntimeError(f"shard name {clash!r} occurs twice in split {split!r} (a 40-bit digest collision)")
    return indices, plans


def content_digest(keys: list[str], row_digests: list[str]) -> str:
    """sha256 (hex) of what a shard holds, which its name is made of (:func:`formats.dataset.shard_name`):
    format version, writer libraries, its sample keys in order and each sample's JSON digest.

    Known from the plan before anything is written. The JSON member carries every sample column, each
    JPEG's own sha256 included, and the txt member is the caption, so equal digests mean the same tar; the
    sidecar and stats follow from the tar and its name. Two shards that differ in any sample, its order or
    its bytes get different names."""
    return _shard_digest("", keys, row_digests)


def plan_digest(name: str, keys: list[str], row_digests: list[str]) -> str:
    """sha256 naming exactly what a shard holds: format version, writer libraries, name, keys and each
    sample's JSON digest.

    Equal digests mean byte-identical tar, sidecar and stats files: the JSON member carries every
    sample column, the JPEGs' own sha256 included, and the txt member is the caption.
    """
    return _shard_digest(f"{name}\0", keys, row_digests)


def _shard_digest(head: str, keys: list[str], row_digests: list[str]) -> str:
    """sha256 (hex) of format version, writer libraries, ``head``, the keys in order and the samples' JSON digests:
    :func:`content_digest` (no head) and :func:`plan_digest` (the shard's name)."""
    digest = hashlib.sha256(f"{FORMAT_VERSION}\0{WRITERS}\0{head}".encode())
    digest.update(("\0".join(keys) + "\0").encode())
    digest.update("".join(row_digests).encode())
    return digest.hexdigest()
