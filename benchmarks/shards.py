"""Benchmark: publishing WebDataset shards vs raw sequential disk write, measured in the same run.

    python -m benchmarks.shards [--samples 3000] [--days 3] [--repeats 3] [--no-direct-io] [--json-out results.json]

Builds a synthetic data home (distinct ~70 KB JPEGs, a split_pairs table over ``--days`` export
days), then per repeat measures
(1) the publish stage from scratch (``publish_dataset`` into an empty dataset folder, every JPEG
hashed: shard phase alone and end to end) and a raw sequential write of as many bytes as its shard
phase wrote (1 MiB blocks from memory, fsync at the end), right after it;
(2) the nightly publish: the same home with one more export day (``samples / days`` more pairs),
published on top of the previous version: only the new day's shards are written, the rest hard-linked.
Its shard phase (the bytes it writes) and the whole stage against a raw write of the same bytes;
(3) webdataset's ``TarWriter`` alone on one core, writing the from-scratch samples;
(4) a bare reference writer, right after each raw write: as many forked processes as the pool has,
each reading its share of the same samples' JPEG files (both of each sample, as the tars hold
them), hashing them with sha256 and appending them to one file of its own, fsynced at the end: a
shard writer's per-byte work without tar headers, JSON, sidecars, per-shard files or early
writeback. Its rate is given in the shard phase's bytes (the phase's bytes over the bare writer's
seconds), so every ratio with it compares times for the same samples. It is a reference, not a
bound: the phase starts writeback early, and the bare writer runs at another moment;
(5) a lean reference writer, right after the bare one: the same processes and JPEGs, but each reads
its JPEGs into one reused buffer (``readinto``, no per-file ``bytes``), hashes and writes every
2 MiB, and spreads them over as many files as the phase wrote shards (each fsynced, as the phase's):
about the least a writer in Python that sha256es every byte does here (``lean``).
The publish writes its tars by ``O_DIRECT`` (``publish.direct_io``, the default) unless
``--no-direct-io``; the ratios then move with the page cache's memory as much as with the code (a
buffered publish leaves the raw write after it only fresh pages: see the README's *Direct writes*).
Reports medians and the ratios to the raw write (goal for the shard phase: >= 0.5) and to the
bare writer, every repeat's numbers (``runs_mb_s``), and, because the machine is shared, the
from-scratch phase per CPU-second (the writer pool's user + system time against the raw write's),
which other jobs on the machine do not change.

During each nightly publish every file the shard writers create is timed (``create_us``: the
median microseconds of one create, over the phase's files; per repeat in ``runs_create_us``, and
the writers' creates summed in ``runs_create_ms_total``). On
ext4 without a journal (this project's VMs) a new inode is found by skipping, one by one, the free
inodes of its block group that were deleted in the last 5 seconds (5 minutes while their inode table
block is dirty), so files deleted shortly before in the same block group (the previous run's work
folder, when runs follow each other with ``--dir``) make every create of the phase slower, and a
night creates 3 files per shard. Read the ratios next to this number (README, *Creating files on
this VM*).
"""
from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import io
import os
import random
import resource
import shutil
import signal
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import NoReturn

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image

from benchmarks import claim, remove_owned, report, work_folder
from formats.files import write_parquet_atomic
from formats.home import DataHome
from pipelines.publish.config import PublishConfig
from pipelines.publish.version import publish_dataset
from schemas import get_schema


def _base_jpegs(count: int, seed: int) -> list[bytes]:
    """Noisy 512 px JPEGs of roughly 70 KB (the size of a Pick-a-Pic training JPEG)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        smooth = rng.integers(0, 255, size=(16, 16, 3), dtype=np.uint8)
        image = Image.fromarray(smooth).resize((512, 512), Image.BICUBIC)
        noise = rng.integers(-12, 12, size=(512, 512, 3))
        pixels = np.clip(np.asarray(image, dtype=np.int16) + noise, 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=80)
        out.append(buffer.getvalue())
    return out


def build_home(root: Path, samples: int, seed: int = 0, days: int = 1) -> DataHome:
    """A data home with ``samples`` pairs over ``2 * samples`` distinct JPEG files, ``days`` export days."""
    home = DataHome(root)
    bases = _base_jpegs(24, seed)
    rng = random.Random(seed)
    keys = []
    for i in range(2 * samples):
        data = bases[i % len(bases)] + i.to_bytes(8, "big")   # distinct files; bytes after EOI are ignored
        digest = hashlib.sha256(data).hexdigest()
        key = f"blobs/{digest[:2]}/{digest}.jpg"
        (home.root / key).parent.mkdir(parents=True, exist_ok=True)
        (home.root / key).write_bytes(data)
        keys.append((key, digest))
    start = dt.datetime(2023, 3, 1)
    rows = []
    for i in range(samples):
        (k0, s0), (k1, s1) = keys[2 * i], keys[2 * i + 1]
        split = "train" if i % 50 else ("validation" if i % 100 else "test")
        label = rng.choice([(1.0, 0.0), (0.0, 1.0), (0.5, 0.5)])
        rows.append({
            "pair_id": f"{i + 1}_0", "ranking_id": i + 1, "pair_index": 0, "user_id": f"u{i % 300:05d}",
            "caption": f"a photo of thing {i % 700} in the style of painter {i % 13}", "created_at": start + dt.timedelta(seconds=i),
            "image_0_uid": s0[:32], "image_1_uid": s1[:32], "label_0": label[0], "label_1": label[1],
            "best_image_uid": None if label[0] == 0.5 else (s0[:32] if label[0] else s1[:32]), "has_label": True,
            "are_different": True, "model_0": "sd-2-1", "model_1": "sdxl", "cluster_0": s0[:32], "cluster_1": s1[:32],
            "sha256_0": s0, "sha256_1": s1, "jpg_0_key": k0, "jpg_1_key": k1,
            "dt": dt.date(2023, 3, 1) + dt.timedelta(days=i * days // samples),
            "split": split, "prompt_key": f"thing {i % 700}", "num_example_per_prompt": 1,
        })
    # the unique splits repeat one pair per prompt of their parent split, as the splits stage writes them
    # (a version without them is refused: no trainer could use it)
    for parent in ("validation", "test"):
        seen: set[str] = set()
        for row in [r for r in rows if r["split"] == parent]:
            if row["prompt_key"] not in seen:
                seen.add(row["prompt_key"])
                rows.append({**row, "split": f"{parent}_unique"})
    write_parquet_atomic(with_prompt_counts(pa.Table.from_pylist(rows, schema=get_schema("split_pairs"))),
                         home.table_file("split_pairs"), get_schema("split_pairs"))
    return home


def build_history(root: Path, samples: int, days: int) -> tuple[DataHome, pa.Table]:
    """:func:`build_home` with ``samples`` pairs over ``days`` export days plus one more day of
    ``samples // days`` pairs (the nightly one), and its whole split_pairs table."""
    import pyarrow.parquet as pq

    home = build_home(root, samples + samples // days, days=days + 1)
    return home, pq.read_table(home.table_file("split_pairs"))


def raw_write(path: Path, total_bytes: int, fsync: bool, cpu: list | None = None) -> float:
    """Seconds to write ``total_bytes`` sequentially in 1 MiB blocks (the machine's baseline).

    ``cpu``, when given, receives the CPU seconds (user + system) the write took.
    """
    block = os.urandom(1 << 20)
    cpu_started = time.process_time()
    started = time.perf_counter()
    with open(path, "wb", buffering=0) as out:
        left = total_bytes
        while left > 0:
            left -= out.write(block[: min(left, len(block))])
        if fsync:
            os.fsync(out.fileno())
    seconds = time.perf_counter() - started
    if cpu is not None:
        cpu.append(time.process_time() - cpu_started)
    path.unlink()
    return seconds


class CreateTimes:
    """Times every file the shard writers create (``shards.create_temp``), in the pool's forked
    workers too: each create appends its seconds to a log opened here (``O_APPEND``, inherited by
    the fork), one small ``write`` per file."""

    def __init__(self, log: Path) -> None:
        self.log = log

    def __enter__(self) -> CreateTimes:
        from pipelines.publish import shards

        self._shards, self._create = shards, shards.create_temp
        fd = self._fd = os.open(self.log, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        create = self._create

        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return create(*args, **kwargs)
            finally:
                os.write(fd, b"%.9f\n" % (time.perf_counter() - started))

        shards.create_temp = timed
        return self

    def __exit__(self, *exc) -> None:
        self._shards.create_temp = self._create
        os.close(self._fd)

    def seconds(self) -> list[float]:
        """Each create's seconds, in the order they ended."""
        return [float(x) for x in self.log.read_text().split()]


def _timed_children(name: str, parent: Path, workers: int, child) -> float:
    """Seconds for ``workers`` forked processes, each running ``child(worker, out_dir)`` (which ends the
    process), to finish, with ``out_dir`` a new folder in ``parent`` (removed after); a failed child is
    an error naming the ``name`` writer."""
    out_dir = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=parent))
    children: list[int] = []
    try:
        started = time.perf_counter()
        # SIGINT blocked while forking: a KeyboardInterrupt between fork and the child's own
        # try would run the benchmark's (or pytest's) code on in the child
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            for worker in range(workers):
                pid = os.fork()
                if pid == 0:
                    try:
                        child(worker, out_dir)
                    finally:        # never returns into the benchmark's (or pytest's) code in the child
                        os._exit(1)
                children.append(pid)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            failed = [pid for pid in children if os.waitpid(pid, 0)[1] != 0]   # every child started
        seconds = time.perf_counter() - started
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    if failed:
        raise RuntimeError(f"{name} writer processes {failed} failed (their errors are above)")
    return seconds


def bare_write(paths: list[Path], parent: Path, workers: int, fsync: bool) -> float:
    """Seconds for ``workers`` forked processes to read ``paths`` (interleaved between them), sha256
    them and append them to one new file each under a new folder in ``parent`` (removed after)."""
    return _timed_children("bare", parent, workers, lambda worker, out_dir: _bare_child(
        paths[worker::workers], out_dir / f"bare-{worker}.bin", fsync))


def lean_write(paths: list[Path], parent: Path, workers: int, fsync: bool, files: int) -> float:
    """Seconds for ``workers`` forked processes to read ``paths`` (interleaved between them) through
    one reused buffer, sha256 them and write them every ``LEAN_CHUNK`` bytes to ``files`` new files in
    all (split between the workers, each fsynced), under a new folder in ``parent`` (removed after)."""
    def child(worker: int, out_dir: Path) -> NoReturn:
        share = paths[worker::workers]
        count = max(1, min(len(share), files // workers + (worker < files % workers)))
        _lean_child([share[i::count] for i in range(count)], out_dir / f"lean-{worker}", fsync)

    return _timed_children("lean", parent, workers, child)


LEAN_CHUNK = 2 << 20


def _lean_child(groups: list[list[Path]], out_stem: Path, fsync: bool) -> NoReturn:
    """A lean writer process: each group of paths read into one buffer, hashed and written every
    ``LEAN_CHUNK`` bytes to a file of its own; exit 0, or print the error and exit 1."""
    code = 1
    try:
        buffer = bytearray(2 * LEAN_CHUNK)
        view = memoryview(buffer)
        for number, group in enumerate(groups):
            digest = hashlib.sha256()
            out = os.open(f"{out_stem}.{number}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                fill = 0
                for path in group:
                    source = os.open(path, os.O_RDONLY)
                    try:
                        while True:
                            if len(view) - fill < 65536:
                                view.release()                        # a JPEG larger than the room left
                                buffer.extend(bytes(len(buffer)))
                                view = memoryview(buffer)
                            got = os.readv(source, [view[fill:]])
                            if not got:
                                break
                            fill += got
                    finally:
                        os.close(source)
                    if fill >= LEAN_CHUNK:
                        _hash_and_write(digest, out, view[:fill])
                        fill = 0
                if fill:
                    _hash_and_write(digest, out, view[:fill])
                if fsync:
                    os.fsync(out)
            finally:
                os.close(out)
        code = 0
    except BaseException:   # noqa: BLE001 - reported, then the process ends
        traceback.print_exc()
    finally:
        os._exit(code)


def _hash_and_write(digest, fd: int, data: memoryview) -> None:
    digest.update(data)
    done = 0
    while done < len(data):
        done += os.write(fd, data[done:])


def _bare_child(paths: list[Path], out_path: Path, fsync: bool) -> NoReturn:
    """A bare writer process: read, hash and append ``paths``; exit 0, or print the error and exit 1."""
    code = 1
    try:
        digest = hashlib.sha256()
        with open(out_path, "xb", buffering=0) as out:
            for path in paths:
                with open(path, "rb", buffering=0) as source:
                    data = source.readall()
                digest.update(data)
                out.write(data)
            if fsync:
                os.fsync(out.fileno())
        code = 0
    except BaseException:   # noqa: BLE001 - reported, then the process ends
        traceback.print_exc()
    finally:
        os._exit(code)


def _jpeg_paths(home: DataHome, rows: pa.Table) -> list[Path]:
    """Both JPEGs of every row, in row order (a tar holds a JPEG once per sample that shows it)."""
    return [home.root / key for pair in zip(rows.column("jpg_0_key").to_pylist(), rows.column("jpg_1_key").to_pylist())
            for key in pair]


def _children_cpu() -> float:
    """CPU seconds (user + system) of the finished child processes: the shard writer pool."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def tarwriter_write(home: DataHome, out_dir: Path, max_count: int) -> tuple[float, int]:
    """Seconds and bytes for webdataset's ShardWriter writing the same samples on one core."""
    import pyarrow.parquet as pq
    import webdataset as wds

    rows = pq.read_table(home.table_file("split_pairs")).to_pylist()
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with wds.ShardWriter(str(out_dir / "wds-%06d.tar"), maxcount=max_count, verbose=0, mtime=0) as sink:
        for row in rows:
            meta = {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in row.items()}
            sink.write({"__key__": row["pair_id"], "0.jpg": (home.root / row["jpg_0_key"]).read_bytes(),
                        "1.jpg": (home.root / row["jpg_1_key"]).read_bytes(), "json": meta, "txt": row["caption"]})
    seconds = time.perf_counter() - started
    size = sum(p.stat().st_size for p in out_dir.glob("*.tar"))
    shutil.rmtree(out_dir)
    return seconds, size


def _set_aside(home: DataHome, folder: Path) -> None:
    """Move the previous repeat's versions and cache out of the home, to delete after the last repeat.

    Deleting them here (thousands of files) would slow the next publish's file creates: on a file
    system without a journal (this machine's root: ext4, no journal), the inode allocator skips the
    inodes freed in the last minute (five when their table block is still dirty), checking each one.
    A nightly publish never runs right after such a mass delete (retention deletes one old version's
    own files, a day earlier), so neither should the benchmark.
    """
    folder.mkdir(parents=True, exist_ok=True)
    for path in (home.datasets, home.cache):
        if path.exists():
            os.rename(path, folder / path.name)


def _day(n: int) -> pa.Scalar:
    """The ``n``-th export day (from 1) of :func:`build_home`'s history."""
    return pa.scalar(dt.date(2023, 3, 1) + dt.timedelta(days=n - 1), pa.date32())


def _rows_through(table: pa.Table, days: int) -> pa.Table:
    """The rows of the first ``days`` export days of ``table``."""
    return table.filter(pc.less_equal(table.column("dt"), _day(days)))


def _publish_with_days(home: DataHome, table: pa.Table, days: int, config: PublishConfig):
    """Publish the rows of the first ``days`` export days of ``table``."""
    write_parquet_atomic(with_prompt_counts(_rows_through(table, days)), home.table_file("split_pairs"),
                         get_schema("split_pairs"))
    return publish_dataset(home, config)


def with_prompt_counts(rows: pa.Table) -> pa.Table:
    """``rows`` with ``num_example_per_prompt`` = rows of the same (split, prompt_key), as the splits stage counts."""
    counts = rows.group_by(["split", "prompt_key"]).aggregate([([], "count_all")])
    joined = rows.drop_columns(["num_example_per_prompt"]).join(counts, ["split", "prompt_key"])
    return joined.rename_columns([("num_example_per_prompt" if n == "count_all" else n) for n in joined.column_names])


def run(samples: int, repeats: int, workers: int, fsync: bool, root: Path | None, days: int = 3,
        direct_io: bool = True) -> dict:
    """Run every measurement ``repeats`` times and return medians and ratios."""
    with work_folder(root, "bench-shards-") as base:
        # every file under a folder the benchmark made (an earlier run's is wiped; a folder of someone else's refused)
        home, table = build_history(claim(base / "home"), samples, days)
        base = claim(base / "scratch")     # raw.bin, create logs, the reference writers' and TarWriter's files
        config = PublishConfig(workers=workers, fsync=fsync, max_samples_per_shard=1000, direct_io=direct_io)
        m: dict[str, list[float]] = {k: [] for k in ("raw", "shards", "total", "nightly_raw", "nightly_shards",
                                                     "nightly_total", "tarwriter", "shards_cpu", "raw_cpu",
                                                     "bare", "nightly_bare", "lean", "nightly_lean")}
        creates_us: list[float | None] = []
        creates_ms: list[float] = []
        scratch_jpegs = _jpeg_paths(home, _rows_through(table, days))      # what the two publishes write
        nightly_jpegs = _jpeg_paths(home, table.filter(pc.greater(table.column("dt"), _day(days))))
        bare_workers = workers or os.cpu_count() or 1
        tar_bytes = nightly_bytes = 0
        nightly = None
        trash = claim(base / "trash")     # an interrupted earlier run's is wiped (holds up to a version per repeat)
        for repeat in range(repeats):
            _set_aside(home, trash / str(repeat))
            children = _children_cpu()
            report = _publish_with_days(home, table, days, config)
            writers_cpu = _children_cpu() - children     # the pool's writers (workers > 1): the shard phase's CPU
            tar_bytes = report.total_bytes
            m["shards"].append(report.bytes_written / 1e6 / report.write_seconds)
            m["total"].append(report.bytes_written / 1e6 / report.total_seconds)
            raw_cpu: list[float] = []
            m["raw"].append(report.bytes_written / 1e6 / raw_write(base / "raw.bin", report.bytes_written, fsync, raw_cpu))
            m["bare"].append(report.bytes_written / 1e6 / bare_write(scratch_jpegs, base, bare_workers, fsync))
            m["lean"].append(report.bytes_written / 1e6 / lean_write(scratch_jpegs, base, bare_workers, fsync,
                                                                       report.shards_written))
            if writers_cpu > 0:
                m["shards_cpu"].append(report.bytes_written / 1e6 / writers_cpu)
                m["raw_cpu"].append(report.bytes_written / 1e6 / raw_cpu[0])
            with CreateTimes(base / f"creates-{os.getpid()}-{repeat}.log") as creates:
                nightly = _publish_with_days(home, table, days + 1, config)
            times = creates.seconds()
            creates_us.append(statistics.median(times) * 1e6 if times else None)
            creates_ms.append(sum(times) * 1e3)
            nightly_bytes = nightly.bytes_written
            m["nightly_shards"].append(nightly_bytes / 1e6 / nightly.write_seconds)
            m["nightly_total"].append(nightly_bytes / 1e6 / nightly.total_seconds)
            m["nightly_raw"].append(nightly_bytes / 1e6 / raw_write(base / "raw.bin", nightly_bytes, fsync))
            m["nightly_bare"].append(nightly_bytes / 1e6 / bare_write(nightly_jpegs, base, bare_workers, fsync))
            m["nightly_lean"].append(nightly_bytes / 1e6 / lean_write(nightly_jpegs, base, bare_workers, fsync,
                                                                       nightly.shards_written))
            seconds, size = tarwriter_write(home, base / "wds", 1000)
            m["tarwriter"].append(size / 1e6 / seconds)
        remove_owned(trash)
    med = {k: statistics.median(v) if v else float("nan") for k, v in m.items()}
    return {
        "benchmark": "shards",
        "samples": samples, "days": days, "repeats": repeats, "workers": workers or os.cpu_count(), "fsync": fsync,
        "direct_io": direct_io,
        "tar_mb": round(tar_bytes / 1e6, 1),
        "raw_write_mb_s": round(med["raw"], 1),
        "publish_shards_mb_s": round(med["shards"], 1),
        "publish_total_mb_s": round(med["total"], 1),
        "webdataset_tarwriter_1core_mb_s": round(med["tarwriter"], 1),
        "ratio_publish_shards_vs_raw": round(med["shards"] / med["raw"], 3),
        "ratio_publish_total_vs_raw": round(med["total"] / med["raw"], 3),
        "ratio_tarwriter_vs_raw": round(med["tarwriter"] / med["raw"], 3),
        "publish_shards_mb_per_cpu_s": round(med["shards_cpu"], 1),
        "raw_write_mb_per_cpu_s": round(med["raw_cpu"], 1),
        "ratio_publish_shards_vs_raw_per_cpu_s": round(med["shards_cpu"] / med["raw_cpu"], 3),
        "load_average": round(os.getloadavg()[0], 2),
        "nightly_shards_written": nightly.shards_written if nightly else 0,
        "nightly_shards_linked": nightly.shards_linked if nightly else 0,
        "nightly_written_mb": round(nightly_bytes / 1e6, 1),
        "nightly_raw_write_mb_s": round(med["nightly_raw"], 1),
        "nightly_shards_mb_s": round(med["nightly_shards"], 1),
        "nightly_total_mb_s": round(med["nightly_total"], 1),
        "ratio_nightly_shards_vs_raw": round(med["nightly_shards"] / med["nightly_raw"], 3),
        "ratio_nightly_total_vs_raw": round(med["nightly_total"] / med["nightly_raw"], 3),
        "bare_mb_s": round(med["bare"], 1),
        "ratio_bare_vs_raw": round(med["bare"] / med["raw"], 3),
        "ratio_publish_shards_vs_bare": round(med["shards"] / med["bare"], 3),
        "nightly_bare_mb_s": round(med["nightly_bare"], 1),
        "ratio_nightly_bare_vs_raw": round(med["nightly_bare"] / med["nightly_raw"], 3),
        "ratio_nightly_shards_vs_bare": round(med["nightly_shards"] / med["nightly_bare"], 3),
        "lean_mb_s": round(med["lean"], 1),
        "ratio_lean_vs_raw": round(med["lean"] / med["raw"], 3),
        "nightly_lean_mb_s": round(med["nightly_lean"], 1),
        "ratio_nightly_lean_vs_raw": round(med["nightly_lean"] / med["nightly_raw"], 3),
        "ratio_nightly_shards_vs_lean": round(med["nightly_shards"] / med["nightly_lean"], 3),
        "goal_ratio": 0.5,
        "create_us": round(statistics.median(x for x in creates_us if x is not None), 1)
        if any(x is not None for x in creates_us) else None,
        "runs_create_us": [None if x is None else round(x, 1) for x in creates_us],
        "runs_create_ms_total": [round(x, 1) for x in creates_ms],    # all the writers' creates of the night, summed
        # per repeat, in order (shards_cpu and raw_cpu only where a pool ran: workers > 1)
        "runs_mb_s": {k: [round(x, 1) for x in v] for k, v in m.items()},
    }


def main(argv: list[str] | None = None) -> int:
    """Command line: print the results, optionally write them as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=3000)
    parser.add_argument("--days", type=int, default=3, help="export days of the history (the nightly adds one)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=0, help="0 = one per CPU")
    parser.add_argument("--no-fsync", action="store_true", help="measure page-cache speed (both sides)")
    parser.add_argument("--no-direct-io", action="store_true", help="the publish writes its tars through the page cache")
    parser.add_argument("--dir", type=Path, help="work folder, kept (default: a temporary one, removed); its home/ "
                        "and scratch/ are wiped by the next run, and refused if a benchmark did not make them")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args(argv)
    result = run(args.samples, args.repeats, args.workers, not args.no_fsync, args.dir, args.days,
                 not args.no_direct_io)
    report(result, args.json_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
