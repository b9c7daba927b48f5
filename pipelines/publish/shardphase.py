"""The shard phase of a publish: resume committed shards, link unchanged ones, write the rest in a process pool."""
from __future__ import annotations

import contextlib
import gc
import multiprocessing
import os
import time
from concurrent.futures import FIRST_COMPLETED, wait
from pathlib import Path

from formats.dataset import shard_paths
from formats.files import file_mode
from formats.processes import worker_pool
from formats.progress import Progress
from pipelines import faults
from pipelines.publish import shards
from pipelines.publish.config import PublishConfig, ShardsDone
from pipelines.publish.reuse import file_sha256, link_shard, reusable


def write_shards(tasks: list[shards.ShardTask], previous: list[Path], config: PublishConfig,
                 progress: Progress | None) -> ShardsDone:
    """Resume committed shards, link unchanged ones, write the rest (a process pool unless ``workers == 1``).

    ``previous``: the older complete versions (:func:`reuse.previous_versions`). With
    ``config.reuse_shards`` off nothing is linked from them, and a staged shard that an interrupted
    run may have linked or copied from one (it is shared, or an older version holds the same shard)
    is written again rather than resumed.
    """
    results: list[dict | None] = [None] * len(tasks)
    out = ShardsDone([])
    todo = []
    mode = file_mode()
    manifests: dict[Path, dict] = {}
    for i, task in enumerate(tasks):
        key = f"{task.split}/{task.name}"
        committed = shards._committed_stats(task.paths()[2], task.plan_sha256)
        if committed is not None and file_sha256(task.paths()[1]) != committed.get("sidecar_sha256"):
            # an interrupted run's shard, maybe linked from an older version whose sidecar then changed in place
            # (the same inode): read back as a link is (reuse.link_shard), and written again when it differs
            for path in task.paths()[::-1]:
                path.unlink(missing_ok=True)
            committed = None
        if committed is not None:
            if config.reuse_shards or not (_shared(task) or reusable(task, previous, manifests)):
                results[i], out.resumed = committed, out.resumed + 1
                out.sources[key] = None        # an earlier run's: verified with the version, repaired if it fails
                continue
            for path in task.paths()[::-1]:       # maybe reused by an interrupted run: only our names go
                path.unlink(missing_ok=True)
        source = reusable(task, previous, manifests) if config.reuse_shards else None
        if source is not None:
            results[i] = link_shard(source, task, config.fsync, mode)
            if results[i] is not None:
                out.linked += 1
                out.sources[key] = source[0].parent.parent
                faults.maybe_crash("publish.after_link")  # tests: die with some unchanged shards linked
                continue
        todo.append(i)
    done = len(tasks) - len(todo)
    if progress:
        progress("shards", done, len(tasks))
    started = time.perf_counter()
    workers = max(1, min(config.worker_count(), len(todo)))
    batches = make_batches([tasks[i].rows.num_rows for i in todo], workers)
    if workers == 1:
        for batch in batches:
            for i, stats in zip(batch, shards.write_batch([tasks[todo[b]] for b in batch])):
                results[todo[i]] = stats
            done += len(batch)
            if progress:
                progress("shards", done, len(tasks))
    else:
        # gc.freeze in each worker: the collector never walks (and so never copies on write) the
        # parent's objects the fork gave it; worker_pool: it dies with this process, whose lock files
        # (the build's, the publish's) the fork shares (review rev33e: left held for good by a killed build),
        # and a Ctrl-C / SIGTERM / SIGHUP / Dagster interrupt or a failed batch stops it at once (the
        # batches not begun cancelled, the writers terminated; review rev33o: the executor's own exit
        # wrote every queued batch first), a writer killed outright reported as WorkerProcessDied
        context = multiprocessing.get_context("fork")
        with worker_pool(workers, context, gc.freeze) as pool:
            futures = {pool.submit(shards.write_batch, [tasks[todo[b]] for b in batch]): batch for batch in batches}
            pending = set(futures)
            while pending:
                # FIRST_COMPLETED: progress after every batch (FIRST_EXCEPTION returned only once all were
                # done or one failed, so a long shard phase showed no progress at all); a failure still stops
                # the rest at once
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    error = future.exception()
                    if error is not None:
                        for other in pending:
                            other.cancel()
                        raise error
                    for b, stats in zip(futures[future], future.result()):
                        results[todo[b]] = stats
                    done += len(futures[future])
                if progress:
                    progress("shards", done, len(tasks))
    out.seconds = time.perf_counter() - started
    out.written = len(todo)
    out.bytes_written = sum(results[i]["num_bytes"] + results[i]["sidecar_bytes"] for i in todo)
    out.stats = [r for r in results if r is not None]
    return out


def _shared(task: shards.ShardTask) -> bool:
    """Whether a staged shard's tar is hard-linked from elsewhere (an older version): a publish with
    ``reuse_shards = false`` writes it again rather than resuming it."""
    try:
        return os.lstat(task.paths()[0]).st_nlink > 1
    except OSError:
        return False


BATCHES_PER_WORKER = 4     # enough batches that the pool's workers finish close together
MAX_BATCH_SHARDS = 64      # a batch holds its tars and sidecars open until their fsync round


def make_batches(weights: list[int], workers: int) -> list[list[int]]:
    """Consecutive positions of the shards to write, in batches of about equal weight (samples), heaviest first.

    A batch is what one worker writes in one go (:func:`shards.write_batch`: one JSON and sidecar
    build, one fsync round before its commit markers); about ``BATCHES_PER_WORKER`` per worker, so a
    worker that drew a heavy batch is not left alone at the end, and never fewer batches than workers
    (or shards). A shard heavier than the target is a batch of its own.
    """
    if not weights:
        return []
    target = max(1, -(-sum(weights) // (workers * BATCHES_PER_WORKER)))
    batches: list[list[int]] = [[]]
    weight = 0
    for position, w in enumerate(weights):
        if batches[-1] and (weight + w > target or len(batches[-1]) >= MAX_BATCH_SHARDS):
            batches.append([])
            weight = 0
        batches[-1].append(position)
        weight += w
    while len(batches) < min(len(weights), workers):    # a few heavy shards took whole batches: split one
        batches.sort(key=lambda batch: (len(batch) > 1, sum(weights[b] for b in batch)))
        batch = batches.pop()
        half, cut = sum(weights[b] for b in batch) / 2, 1
        while cut < len(batch) - 1 and sum(weights[b] for b in batch[:cut + 1]) <= half:
            cut += 1
        batches += [batch[:cut], batch[cut:]]
    return sorted(batches, key=lambda batch: -sum(weights[b] for b in batch))


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
