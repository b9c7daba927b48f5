"""``build_features``: one day's images -> ``image_features`` + ``image_rejects``, every input row in exactly one.

The driver reads the day's ``images`` partition, copies what it can reuse, stages the rest for the
Beam pipeline (:class:`~pipelines.features.transforms.FingerprintImages`), reads the staged outputs
back, reconciles them with the inputs and commits both partitions atomically. Only the driver
touches the warehouse; the workers see the blob base and the staging folder.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import re
import time
from collections import Counter
from pathlib import Path
from typing import Callable, Iterator

# First: it imports apache_beam quietly (no apitools notice, no root log handler left behind).
from pipelines.features import beamworker  # noqa: F401  # isort: skip

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from formats.files import cast_to_schema, sweep_temps_of, write_parquet_atomic
from formats.home import DataHome
from formats.locks import (
    ScratchFolderUnusable,
    held_scratch_folder,
    hold_lock,
    scratch_unusable,
    sweep_scratch_folders,
    writing_shared,
)
from formats.progress import Progress, silent
from pipelines import faults
from pipelines.features import decode, trainjpegs
from pipelines.features.blobidentity import BlobIdentities
from pipelines.features.blobs import is_local, join_url, lost_training_jpegs
from pipelines.features.config import FEATURES, REJECTS, FeaturesConfig, FeaturesReport, check_staging, parse_day
from pipelines.features.nsfw import NsfwDetector
from pipelines.features.reuse import (
    earlier_partitions,
    known_digests,
    output_key,
    rows_reused_by_sha256,
    rows_reused_by_uid,
    with_output_key,
)
from pipelines.features.runner import check_runner, pipeline_options, pipeline_runner, worker_processes
from pipelines.features.staging import (
    REUSED_SCHEMA,
    STAGED_KINDS,
    STAGED_SCHEMA,
    TODO_SCHEMA,
    beam_visible,
    read_staged,
    remove_dir,
    reset_dir,
    staged_record,
    write_npy_url,
    write_parquet_url,
)
from pipelines.features.transforms import FingerprintImages, process_settings_kept
from schemas import get_schema

INPUT_COLUMNS = ("image_uid", "blob_path")


def build_features(home: DataHome, day: str, config: FeaturesConfig = FeaturesConfig(),
                   beam_args: list[str] | None = None, progress: Progress = silent,
                   detector_factory: Callable[[], NsfwDetector] | None = None) -> FeaturesReport:
    """Fingerprint the images of ``day``: write image_features and image_rejects for that partition."""
    started = time.perf_counter()
    config.validate(home.root)   # also refuses a blob base or staging folder the stage must not write or delete
    day_date = parse_day(day)
    runner = check_runner(config, beam_args)   # bad options, a runner that cannot run here: refused first
    base = config.base(home.root)
    staging = config.staging_url(home.root, day)
    if not config.staging:       # a staging folder from the settings was checked by validate; the default here
        check_staging(staging, base, home.root)
    if is_local(staging):
        # resolved once: the lock and every later use name this folder, even if a link on its path moves
        # while the run goes on (another run could then lock the folder the link names now)
        staging = os.path.realpath(staging)
    # one feature stage per day at a time, and per staging folder (the day's default one too: another day's
    # run may be given it as its staging setting)
    # review rev30b: shared while it writes training JPEGs, so the build's removal of unneeded ones waits for none
    with hold_day_lock(home, day, staging), writing_shared(trainjpegs.lock_file(home), "the training JPEG store"):
        return _build_day(home, day, day_date, config, beam_args, progress, detector_factory, started, runner,
                          base, staging)


def _build_day(home: DataHome, day: str, day_date, config: FeaturesConfig, beam_args: list[str] | None,
               progress: Progress, detector_factory: Callable[[], NsfwDetector] | None, started: float, runner: str,
               base: str, staging: str) -> FeaturesReport:
    """The body of :func:`build_features`, run while this process holds the day's lock."""
    # the day's two partitions are written only by this stage, under this lock: a killed run's temporary files
    _note(sweep_temps_of([home.partition_file(FEATURES, day), home.partition_file(REJECTS, day)]), progress)
    sweep_scratch_folders(home.cache / "tmp", BEAM_FOLDER_RE)     # the Beam temp folders of killed runs (any day's)
    inputs = read_inputs(home, day)
    progress(f"{inputs.num_rows} images in {home.partition_file('images', day)}")
    key = output_key(config)
    history = earlier_partitions(home, day, key)     # only rows made under these output settings are reused
    sources: dict[str, str] = {}
    by_uid = rows_reused_by_uid(home, day, inputs, history, sources)
    # A row is reused only while its training JPEG is there as the row records it (review rev24d: a lost one was
    # never written again, and publish failed for good): such a row is computed again, which writes the JPEG,
    # and stays the reused row where the bytes are still the same (_settle_restored).
    # A JPEG row, or one of a format its path's extension does not take, is judged again from its blob's bytes
    # (decode.check_extension, refuse_structure_bomb and, for a JPEG, refuse_jpeg_data_ran_out, in ReadBlobFn) before
    # it is copied (review rev24h: rows a home holds from before a fix of those checks were copied for good, while a
    # build from scratch refused them; rev31f: JPEGs libjpeg grey-filled).
    again = {row["image_uid"] for row in by_uid if decode.judged_again_on_reuse(row["format"], row["blob_path"])}
    # A row is reused unread only while its blob is the file it was read from (review rev29a: a blob replaced under
    # an accepted uid was never read again, not even by --force): one stat a row against the run's records
    # (pipelines.features.blobidentity); any other is read and hashed again, and kept where the bytes are the row's.
    identities = BlobIdentities(home, day, base)
    again |= identities.unverified([row for row in by_uid if row["image_uid"] not in again], sources)
    lost = lost_training_jpegs(base, [row for row in by_uid if row["image_uid"] not in again])
    restoring = {row["image_uid"]: row for row in by_uid if row["image_uid"] in lost or row["image_uid"] in again}
    by_uid = [row for row in by_uid if row["image_uid"] not in restoring]
    reused_uids = {row["image_uid"] for row in by_uid}
    todo = inputs.filter(pc.invert(pc.is_in(inputs["image_uid"], pa.array(sorted(reused_uids), pa.string()))))
    progress(f"{len(by_uid)} reused by uid, {todo.num_rows} to read"
             + (f" ({len(again)} of them reused rows judged again from their bytes, {len(lost)} reused rows whose "
                "training JPEG is lost or damaged)" if restoring else ""))

    computed = get_schema(FEATURES).empty_table()
    rejects = get_schema(REJECTS).empty_table()
    candidates = REUSED_SCHEMA.empty_table()
    stage_seconds = 0.0
    workers: int | None = 0         # worker processes the Beam stage ran on (0: this process, or nothing to compute)
    if todo.num_rows:
        reset_dir(staging, base)
        todo_path = join_url(staging, "todo.parquet")
        expect = [restoring.get(uid) for uid in todo["image_uid"].to_pylist()]
        write_parquet_url(pa.table({"image_uid": todo["image_uid"], "blob_path": todo["blob_path"],
                                    "dt": pa.array([day_date] * todo.num_rows, pa.date32()),
                                    "reuse_sha256": [row and row["sha256"] for row in expect],
                                    "reuse_jpeg_bytes": [row and row["train_jpg_bytes"] for row in expect]},
                                   schema=TODO_SCHEMA), todo_path)
        digests_path = join_url(staging, "known_sha256.npy")
        write_npy_url(known_digests([h for h in history if h[0] < day]), digests_path)
        identities.before_read(dict(zip(todo["image_uid"].to_pylist(), todo["blob_path"].to_pylist())))
        stage_started = time.perf_counter()
        options = pipeline_options(config, beam_args, todo.num_rows)
        workers = worker_processes(options)
        # Beam globs the paths it reads and writes: a staging path with glob characters goes through an alias
        with beam_visible(staging) as visible, _beam_temp_folder(home, progress) as beam_tmp:
            with process_settings_kept(), beam.Pipeline(runner=pipeline_runner(options), options=options) as pipeline:
                if beam_tmp is not None:
                    _local_tempdir_in(pipeline, beam_tmp, progress)
                rows = (pipeline | "ReadTodo" >> beam.io.ReadFromParquet(join_url(visible, "todo.parquet"))
                        | "Spread" >> beam.Reshuffle())
                out = rows | "Fingerprint" >> FingerprintImages(base, config, join_url(visible, "known_sha256.npy"),
                                                                detector_factory)
                staged = [out[kind] | f"Stage_{kind}" >> beam.Map(staged_record, kind) for kind in STAGED_KINDS]
                (staged | "AllOutputs" >> beam.Flatten()
                 | "WriteStaged" >> beam.io.WriteToParquet(join_url(visible, "out/part"), STAGED_SCHEMA,
                                                           file_name_suffix=".parquet"))
            stage_seconds = time.perf_counter() - stage_started
            faults.maybe_crash("features.after_beam")  # tests: Beam finished, outputs not committed
            progress(f"Beam stage finished in {stage_seconds:.1f} s on {runner}")
            computed, rejects, candidates = read_staged(join_url(visible, "out/part"), day_date)
    bytes_read = sum(pc.sum(t["num_bytes"]).as_py() or 0 for t in (computed, rejects, candidates))
    restored, computed, rejects, candidates = _settle_restored(restoring, computed, rejects, candidates)
    if restoring:
        progress(f"{len(restored)} reused rows kept (lost training JPEGs written again); "
                 f"{len(restoring) - len(restored)} such rows judged afresh (their blob is gone, holds other bytes now "
                 "or is refused)")
    by_uid += restored

    by_sha = rows_reused_by_sha256(day_date, candidates, history)
    copied = pa.Table.from_pylist(by_uid + by_sha, schema=get_schema(FEATURES))
    features = pa.concat_tables([cast_to_schema(computed, get_schema(FEATURES)), copied])
    features = features.sort_by("image_uid").combine_chunks()
    rejects = cast_to_schema(rejects, get_schema(REJECTS)).sort_by("image_uid").combine_chunks()
    _reconcile(inputs, features, rejects)
    if is_local(base):   # every JPEG of the day is whole now: what killed writers of those keys left goes
        _note(sweep_temps_of(sorted({join_url(base, key) for key in features["train_jpg_key"].to_pylist()}),
                             follow=False), progress)

    if is_local(base):
        os.sync()   # training JPEGs were renamed into place without fsync; make them durable first
    features_path = write_parquet_atomic(features, home.partition_file(FEATURES, day),
                                         with_output_key(get_schema(FEATURES), key))
    rejects_path = write_parquet_atomic(rejects, home.partition_file(REJECTS, day),
                                        with_output_key(get_schema(REJECTS), key))
    _note([note] if (note := identities.write(features)) else [], progress)
    if todo.num_rows:
        remove_dir(staging, base)

    report = FeaturesReport(
        day=day, inputs=inputs.num_rows, processed=computed.num_rows, reused=len(by_uid) + len(by_sha),
        reused_by_uid=len(by_uid), reused_by_sha256=len(by_sha),
        rejected=dict(sorted(Counter(rejects.column("reason").to_pylist()).items())),
        bytes_read=int(bytes_read), stage_seconds=round(stage_seconds, 3),
        total_seconds=round(time.perf_counter() - started, 3),
        images_per_second=round(todo.num_rows / stage_seconds, 2) if stage_seconds else 0.0,
        features_rows=features.num_rows, rejects_rows=rejects.num_rows, runner=runner,
        workers=workers, features_path=str(features_path), rejects_path=str(rejects_path))
    progress(f"features: {report.features_rows} rows ({report.processed} computed, {report.reused} reused), "
        f"rejects: {report.rejects_rows}")
    return report


BEAM_FOLDER_RE = re.compile(r"beam-[A-Za-z0-9_]{1,64}")


# the folder inside the held ``beam-XXXX`` scratch folder that the pipeline gets as its local temp folder
BEAM_TEMP_SUBFOLDER = "pipeline"


@contextlib.contextmanager
def _beam_temp_folder(home: DataHome, progress: Progress) -> Iterator[Path | None]:
    """The held scratch folder ``HOME/cache/tmp/beam-XXXX`` for the Beam run (:func:`_local_tempdir_in`), or None
    (with a warning) when ``HOME/cache/tmp`` is no folder and cannot be made one (a dangling link to a scratch disk
    not mounted) or nothing can be made in it (a read-only or full disk: the warning names the system's error):
    the stage needs no folder there (only an external transform writes into Beam's temp folder), so it runs with
    Beam's own empty one in the system temp folder, removed when the run ends, as before the thirty-fourth session
    (review rev35b: every feature stage failed with a bare ``FileExistsError``; review rev36d: with a bare
    ``OSError`` EROFS / ENOSPC). The warning goes to ``progress``, which the Dagster asset sends to the run's log
    (``dagster_project.steplog.step_progress``)."""
    with contextlib.ExitStack() as stack:
        try:
            folder: Path | None = stack.enter_context(held_scratch_folder(home.cache / "tmp", "beam-"))
        except ScratchFolderUnusable as exc:
            progress(f"warning: {exc}; Beam's (empty) temp folder is in the system temp folder for this run")
            folder = None
        yield folder


def _local_tempdir_in(pipeline: beam.Pipeline, folder: Path, progress: Progress = silent) -> None:
    """Give ``pipeline`` a folder in the held scratch folder ``folder`` (``HOME/cache/tmp/beam-XXXX``) as its local
    temp folder.

    ``beam.Pipeline()`` makes one in the system temp folder (``/tmp/beam-pipeline-tempXXXX``) and removes it when
    the run ends, so every feature stage killed mid-run (a stopped build, the out-of-memory killer) left one there
    for good (review rev34d, noticed). The folder is empty when made and only an external transform (none here)
    writes into it: it is removed at once and the pipeline pointed at ``folder/pipeline``, which a killed run
    leaves, inside the marked ``folder``, for the next feature stage's sweep (:data:`BEAM_FOLDER_RE`,
    :func:`formats.locks.sweep_scratch_folders`). A subfolder, not ``folder`` itself: Beam's
    ``shutil.rmtree(local_tempdir)`` at the end of ``Pipeline.run`` removes files in listing order, the
    ``.pickapic-scratch`` marker too, so a run killed then left an unmarked ``beam-*`` folder no sweep removes
    (review rev35b, noticed); now it removes only its own subfolder and ``folder`` goes marker last. Where that
    subfolder cannot be made (the scratch disk filled up since ``folder`` was: review rev36d), the pipeline keeps
    Beam's own, with the same warning as :func:`_beam_temp_folder`'s."""
    made = pipeline.local_tempdir
    inner = folder / BEAM_TEMP_SUBFOLDER
    try:
        inner.mkdir(mode=0o777)
    except OSError as exc:
        refused = scratch_unusable(folder, exc)
        if refused is None:
            raise
        progress(f"warning: {refused}; Beam's (empty) temp folder is in the system temp folder for this run")
        return
    pipeline.local_tempdir = str(inner)
    with contextlib.suppress(OSError):
        os.rmdir(made)


def _note(notes: list[str], progress: Progress) -> None:
    """Say what a sweep of killed writers' temporary files left (a link or another account's file at such a name)."""
    for note in notes:
        progress(f"warning: {note}")


class DayAlreadyRunning(RuntimeError):
    """Another process runs the feature stage of the same day (a sensor run and a UI materialization)."""


def day_lock_file(home: DataHome, day: str) -> Path:
    """The lock file of a day's feature stage (``.locks/features-dt=DAY.lock``, outside the disposable cache)."""
    return home.locks / f"features-dt={day}.lock"


def staging_lock_file(home: DataHome, staging: str) -> Path:
    """The lock file of a staging folder, named after the folder, not the spelling.

    A local folder's lock lies beside it, ``.<name>.lock`` in the real folder that holds it (``/scratch/stage``,
    ``/scratch/stage/`` and a path through a link to it are one folder): every data home that stages there
    sees it, also two homes with one blob base (whose default staging folders are one) or one staging setting.
    Not inside it: the run empties and deletes its staging folder. A URL's lock (a bucket cannot be locked)
    is the home's ``.locks/features-staging-HASH.lock`` of the URL without its trailing ``/``: two homes must
    not share a URL staging folder."""
    folder = _staging_identity(staging)
    if is_local(staging):
        real = Path(folder)
        return real.parent / f".{real.name}.lock"
    return home.locks / f"features-staging-{hashlib.sha256(folder.encode()).hexdigest()[:16]}.lock"


def _staging_identity(staging: str) -> str:
    return os.path.realpath(staging) if is_local(staging) else staging.rstrip("/")


@contextlib.contextmanager
def hold_day_lock(home: DataHome, day: str, staging: str | None = None) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the day's lock file and then on the lock file of the run's ``staging``
    folder (default: the day's own under the home, ``HOME/.staging/features/dt=DAY``) for the stage's run, or
    raise :class:`DayAlreadyRunning` at once, nothing read or written. Both, always: a run of one day given
    another day's default folder as its staging setting would otherwise delete that day's staged files
    (``reset_dir``). Always the day's first, without waiting, so two runs never wait on each other. The
    kernel drops a lock when its holder exits, killed or not, so a crash never leaves the day locked. The
    files live in ``.locks/``, not in ``cache/``: deleting the disposable cache while a run held one let a
    second run of the day create a new file and start beside it. A link, a hard link, a non-file or a file
    of other content than a pid at a lock path, or a link at ``.locks``, is refused, untouched
    (:mod:`formats.locks`)."""
    if staging is None:
        staging = FeaturesConfig().staging_url(home.root, day)
    folder = _staging_identity(staging)
    paths = [(day_lock_file(home, day), f"the feature stage of {day}"),
             (staging_lock_file(home, staging), f"a feature stage using the staging folder {folder}")]
    with contextlib.ExitStack() as stack:
        for path, what in paths:
            def refuse(holder: str, path: Path = path, what: str = what) -> None:
                raise DayAlreadyRunning(
                    f"{what} is already running (pid {holder} holds {path}); this run's feature stage changed "
                    "nothing: materialize the day again once that run has finished, if it is still stale")

            stack.enter_context(hold_lock(path, what, refuse))
        yield


def read_inputs(home: DataHome, day: str) -> pa.Table:
    """(image_uid, blob_path) of the day's images partition; raise naming the file if it is unusable."""
    path = home.partition_file("images", day)
    if not path.is_file():
        raise FileNotFoundError(f"images partition for {day} not found at {path}; run the ingest first")
    try:
        table = pq.read_table(path, columns=list(INPUT_COLUMNS))
    except (pa.ArrowInvalid, OSError, KeyError) as exc:
        raise ValueError(f"cannot read columns {list(INPUT_COLUMNS)} from {path}: {exc}") from exc
    for name in INPUT_COLUMNS:
        if table[name].null_count:
            raise ValueError(f"{path}: column {name!r} has {table[name].null_count} nulls")
    uids = table["image_uid"]
    if pc.count_distinct(uids).as_py() != table.num_rows:
        counts = pc.value_counts(uids)
        dupes = [c["values"] for c in counts.to_pylist() if c["counts"] > 1][:5]
        raise ValueError(f"{path}: image_uid is not unique, e.g. {dupes}")
    return table.sort_by("image_uid")



def _settle_restored(restoring: dict[str, dict], computed: pa.Table, rejects: pa.Table,
                     candidates: pa.Table) -> tuple[list[dict], pa.Table, pa.Table, pa.Table]:
    """Settle the uids sent through the pipeline only to write their lost training JPEG again (``restoring``: uid
    -> the row a reuse copies): where the pipeline found the same bytes (a computed row of the same sha256 and
    JPEG size, or a reuse candidate of that sha256, whose JPEG the worker checked or wrote) the reused row is
    kept and the pipeline's output for the uid dropped; otherwise (the blob is gone or changed) the pipeline's
    outcome stands, as a build from scratch gives it. Returns (kept rows, computed, rejects, candidates)."""
    if not restoring:
        return [], computed, rejects, candidates
    uids = pa.array(sorted(restoring), pa.string())
    same: set[str] = set()
    for table, columns in ((computed, ("image_uid", "sha256", "train_jpg_bytes")), (candidates, ("image_uid", "sha256"))):
        hits = table.filter(pc.is_in(table["image_uid"], uids)).select(list(columns)).to_pylist()
        for hit in hits:
            row = restoring[hit["image_uid"]]
            if hit["sha256"] == row["sha256"] and hit.get("train_jpg_bytes", row["train_jpg_bytes"]) == row["train_jpg_bytes"]:
                same.add(hit["image_uid"])
    if not same:
        return [], computed, rejects, candidates
    dropped = pa.array(sorted(same), pa.string())

    def without(table: pa.Table) -> pa.Table:
        return table.filter(pc.invert(pc.is_in(table["image_uid"], dropped)))

    return [restoring[uid] for uid in sorted(same)], without(computed), without(rejects), without(candidates)


def _reconcile(inputs: pa.Table, features: pa.Table, rejects: pa.Table) -> None:
    expected = set(inputs["image_uid"].to_pylist())
    got_features = features["image_uid"].to_pylist()
    got_rejects = rejects["image_uid"].to_pylist()
    both = set(got_features) & set(got_rejects)
    union = set(got_features) | set(got_rejects)
    if both or union != expected or len(got_features) + len(got_rejects) != len(expected):
        raise RuntimeError(
            f"feature outputs do not reconcile with {len(expected)} inputs: {len(got_features)} features, "
            f"{len(got_rejects)} rejects, in both {sorted(both)[:5]}, missing {sorted(expected - union)[:5]}, "
            f"unexpected {sorted(union - expected)[:5]}")
