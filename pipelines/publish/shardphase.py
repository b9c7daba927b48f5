"""The shard phase of a publish: resume committed shards, link unchanged ones, write the rest in a process pool."""
from __future__ import annotations

import contextlib
import multiprocessing
import time
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from pathlib import Path

from formats.dataset import shard_paths
from formats.progress import Progress
from pipelines import faults
from pipelines.publish import shards
from pipelines.publish.config import PublishConfig, ShardsDone
from pipelines.publish.reuse import link_shard, reusable


def write_shards(tasks: list[shards.ShardTask], previous: list[Path], config: PublishConfig,
                 progress: Progress | None) -> ShardsDone:
    """Resume committed shards, link unchanged ones, write the rest (a process pool unless ``workers == 1``)."""
    results: list[dict | None] = [None] * len(tasks)
    out = ShardsDone([])
    todo = []
    for i, task in enumerate(tasks):
        committed = shards._committed_stats(task.paths()[2], task.plan_sha256)
        if committed is not None:
            results[i], out.resumed = committed, out.resumed + 1
            continue
        source = reusable(task, previous)
        if source is not None:
            results[i], out.linked = link_shard(source, task, config.fsync), out.linked + 1
            faults.maybe_crash("publish.after_link")  # tests: die with some unchanged shards linked
            continue
        todo.append(i)
    done = len(tasks) - len(todo)
    if progress:
        progress("shards", done, len(tasks))
    todo.sort(key=lambda i: -tasks[i].rows.num_rows)   # largest first: small shards fill the pool's tail
    started = time.perf_counter()
    workers = max(1, min(config.worker_count(), len(todo)))
    if workers == 1:
        for i in todo:
            results[i] = shards.write_shard(tasks[i])
            done += 1
            if progress:
                progress("shards", done, len(tasks))
    else:
        context = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            futures = {pool.submit(shards.write_shard, tasks[i]): i for i in todo}
            pending = set(futures)
            while pending:
                finished, pending = wait(pending, return_when=FIRST_EXCEPTION)
                for future in finished:
                    error = future.exception()
                    if error is not None:
                        for other in pending:
                            other.cancel()
                        raise error
                    results[futures[future]] = future.result()
                if progress:
                    progress("shards", done + len(todo) - len(pending), len(tasks))
    out.seconds = time.perf_counter() - started
    out.written = len(todo)
    out.bytes_written = sum(results[i]["num_bytes"] + results[i]["sidecar_bytes"] for i in todo)
    out.stats = [r for r in results if r is not None]
    return out


def clean_failed_staging(staging: Path) -> None:
    """After a failed (not killed) publish: drop temporary files and shard files without a commit marker.

    Committed shards stay, so the rerun resumes from them; everything else would be rewritten anyway
    and only holds disk space (which may be what ran out).
    """
    shards.remove_temporary_files(staging)
    for tar in staging.glob("*/*.tar"):
        tar_path, sidecar_path, stats_path = shard_paths(tar.parent, tar.name[: -len(".tar")])
        if not stats_path.exists():
            for path in (tar_path, sidecar_path):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
