"""Publish a dataset version: shards + sidecars, query snapshots, manifest, atomic ``latest`` switch.

Layout of ``HOME/datasets/pickapic/``::

    <version>/<split>/pickapic-<split>-<segment>-<digest>.{tar,parquet,_stats.json}
    <version>/<split>/sizes.json, prompt_counts.parquet
    <version>/meta/{shards,decisions,quarantine,splits_summary}.parquet, meta/images/images-<day>.parquet
    <version>/README.md              dataset card (Hugging Face ``configs`` + datasheet)
    <version>/manifest.json          counts, sources, config, contract versions, sha256 of every file
    latest -> <version>              a relative symlink, replaced with os.replace
    ../pickapic.history              the versions latest was switched to, oldest first (retention's order;
                                     those retention deleted named until the next publish: harmless,
                                     :func:`formats.dataset.record_switch`)
    ../pickapic.staging/.partial-<version>   a version being written (0700 until it is complete)

The version id is ``<max dt>-<sha256[:10] of inputs + config>`` (and of the format, the writers' versions and the
card's code version, ``datacard.CARD_VERSION``): equal inputs give the same version and byte-identical files, and a
card written by other code is another version (review rev31d: the old card stayed in ``latest``). Shards are content-stable (:mod:`pipelines.publish.plan`): a shard
whose planned content equals a shard of an older complete version is hard-linked from it (copied
across file systems) with its sidecar and stats, so a nightly version writes only new and changed
shards and older versions share the rest of their bytes. A version is written under
``../pickapic.staging/.partial-<version>`` (beside the versions' folder, not in it: whoever syncs or walks that
folder never meets a partial version, review rev28c), verified, renamed into place, and only
then does ``latest`` move. Older versions beyond ``keep_versions`` are deleted after the switch, in
the order of the publish history, never by the clock (deleting a name never touches a newer version's
links). The staging, its folders and ``latest`` are the tool's names: a link or a file there is never
followed (:func:`versions.open_staging`, :func:`formats.dataset.check_latest`). A crash leaves the previous ``latest``
untouched; the rerun resumes from the shards whose stats were committed. The warehouse files the meta
snapshots are built from are listed, hashed (into the version id) and read under the home's ingest lock,
before the shards are written, so an ingest writes a day before or after them, never in between.

Readers resolve ``latest`` once (:func:`resolve_version`) and read through the resolved path, so
a switch during a read never mixes versions; they hold it while they read (:func:`formats.dataset.reading_version`:
a shared ``flock`` on the version's folder), and retention keeps a version a reader holds. Plain DuckDB over every
sidecar of a version (``latest`` resolved first: ``readlink -f``)::

    SELECT * FROM read_parquet('HOME/datasets/pickapic/VERSION/*/pickapic-*.parquet', hive_partitioning = false);

(the ``pickapic-*`` part keeps ``meta/*.parquet`` out of the glob; ``hive_partitioning = false``: DuckDB would
otherwise read a folder named ``split=...`` or ``dt=...`` above the version as every sample's split or day,
review rev32b).
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shlex
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from data_contracts.engine import RuleResult, evaluate, load_contract
from formats.dataset import (
    PROMPT_COUNTS_FILE,
    SIZES_FILE,
    SwitchNotSynced,
    check_latest,
    fsync_dir,
    history_file,
    latest_version,
    list_versions,
    prompt_counts_glob,
    read_manifest,
    record_switch,
    sidecar_glob,
    sizes_json,
    switch_latest,
    switched_file,
)
from formats.files import (
    cast_to_schema,
    is_full_disk,
    open_regular_file,
    sweep_temps,
    write_bytes_atomic,
    write_parquet_atomic,
)
from formats.home import DataHome
from formats.progress import Progress
from formats.text import terminal_text
from pipelines import faults
from pipelines.curation.pseudonym import read_key_check
from pipelines.ingest.day import ingest_lock
from pipelines.publish import columncache, contracts, datacard, jpgdigests, manifest, meta, rulecache, samples, shards
from pipelines.publish.config import PublishConfig, PublishReport, ShardsDone, report_of
from pipelines.publish.manifest import verify_version
from pipelines.publish.meta import card_sources
from pipelines.publish.samples import (
    plan_tasks,
    prompt_counts,
    sample_table,
    source_digests,
    splits_in,
    version_id,
    with_keys,
)
from pipelines.publish.shardphase import clean_failed_staging, write_shards
from pipelines.publish.versions import (
    DELETING_PREFIX,
    STAGING_PREFIX,
    VersionWalks,
    apply_retention,
    check_version_identity,
    check_version_name,
    free_deleting_name,
    fsync_tree,
    give_modes,
    hiding_root,
    open_folders,
    open_staging,
    open_staging_root,
    previous_versions,
    publish_lock,
    remove_mode_copies,
    sweep_staging_root,
    sweep_stale,
)
from pipelines.splits import coverage
from pipelines.splits.assign import read_settings_record, require_trainable
from pipelines.sqlrun import connect
from schemas import get_schema

CONTRACT_DATASETS = contracts.CONTRACT_DATASETS


def publish_dataset(home: DataHome, config: PublishConfig = PublishConfig(), progress: Progress | None = None, *,
                    shows_refused_notes: bool = False) -> PublishReport:
    """Publish ``split_pairs`` as a new dataset version and point ``latest`` at it (idempotent). With
    ``shows_refused_notes`` the caller shows a refused switch's notes itself (the error's ``publish_notes``): they
    are not printed first (:func:`_switch`)."""
    started = time.perf_counter()
    check_latest(home.datasets)   # a folder or file at `latest`: refused before any work
    source = home.table_file("split_pairs")
    if not source.is_file():
        raise FileNotFoundError(f"split_pairs not found at {source}: run the splits stage first")
    with open_regular_file(source) as handle:     # one read: the version is made of the bytes its id hashes
        data = handle.readall()
    split_pairs_sha256 = hashlib.sha256(data).hexdigest()
    table = pq.read_table(pa.BufferReader(data))
    pseudonym_key = read_key_check(table.schema.metadata)   # which secret keyed user_id (the card says so)
    split_settings = read_settings_record(table.schema.metadata)   # heldout_fraction, unique_prompts (the card's)
    table = cast_to_schema(table, get_schema("split_pairs"))
    del data
    if table.num_rows == 0:
        raise ValueError(f"{source} has no rows: refusing to publish an empty dataset")
    require_trainable(table)  # an empty split is no version at all for a trainer: latest stays where it is
    table = with_keys(table)
    splits_in(table)
    home.datasets.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    with publish_lock(home), contextlib.ExitStack() as reading:
        # the temporary files a killed publish left outside its version: only the publish writes those names,
        # and only under this lock (the JPEG digest cache too, since review rev25d), so none is being written now
        notes += sweep_temp_files(home)
        staging_dir = open_staging_root(home.datasets)   # pickapic.staging, beside the versions (review rev28c)
        notes += open_folders(home)     # datasets/ and datasets/pickapic/ as this run's umask lets (review rev28c)
        jpgs = jpgdigests.index_jpgs(home, {c: table.column(c) for c in ("jpg_0_key", "jpg_1_key")},
                                     workers=config.worker_count())
        if jpgs.note:
            notes.append(jpgs.note)     # the JPEG digest cache not used, trusted or written
        # each version walked once (made_by_publish: the reuse sources, retention), before the ingest lock is
        # taken (review rev37c, noticed: twice, the first under the ingest lock, ~0.7 s a version of 70,000 files)
        walks = VersionWalks()
        walks.prime(home)
        # the warehouse as no ingest is writing it: the home's ingest lock from the listing of the sources the
        # snapshots are built from to their last read, before the shards (review rev24j: an ingest that
        # rewrote a day meanwhile failed the publish with SourceChanged after its shards were written)
        reading.enter_context(ingest_lock(home, lambda holder: print(
            f"waiting for an ingest on this home (pid {holder}) to finish before reading the warehouse",
            file=sys.stderr, flush=True)))
        meta_sources = samples.meta_sources(home)
        sources = source_digests(home, meta_sources)
        volumes = samples.day_volumes(home)           # read once: the version id and the plan see the same
        sources["rankings_per_day"] = {day: str(count) for day, count in volumes.items()}
        # the contracts' versions, read once: the version id, the identity checked and the manifest hold the same
        # (review rev36e: they were in the manifest alone, so a contract change kept the old version's manifest)
        gated_by = _contract_versions()
        version = version_id(table, split_pairs_sha256, jpgs, sources, config, gated_by)
        check_latest(home.datasets)
        final = home.datasets / version
        keep = f"{STAGING_PREFIX}{version}"
        if staging_dir != home.datasets:
            notes += sweep_stale(staging_dir, keep)   # a rerun that finds its version too
        else:   # staged among the versions (on another file system): what staged beside them before is stale
            notes += sweep_staging_root(home.datasets)
        # the versions' folder: retention's leftovers, and the stagings of code before review rev28c (staged there)
        notes += sweep_stale(home.datasets, keep if staging_dir == home.datasets else "")
        if check_version_name(home.datasets, version):
            # its manifest must be this version's: another version's files at this name are never switched to
            check_version_identity(final, manifest.identity(version, table, sources, gated_by))
            reading.close()                           # nothing more is read from the warehouse
            remove_mode_copies(final, read_manifest(final)["files"])   # a give_modes below killed mid-copy
            try:
                # the walk for the reuse sources listed its files (latest's, no folder changed since): not listed
                # again, each file lstat afresh (fix38n: a file truncated in place during the ingest lock's wait)
                recorded = verify_version(final, checksums=config.verify_checksums, present=walks.present(final))
            except manifest.ManifestMismatch as exc:
                raise manifest.ManifestMismatch(
                    f"{exc}\nnothing was switched: `latest` was left as it was. Move {final} aside (its files may "
                    f"be hard links shared with other versions: never edit them in place) and publish again with "
                    f"publish.verify_checksums = true", exc.paths) from None
            give_modes(final, config.fsync)   # written under another umask: latest names it with this run's modes
            os.utime(final)  # the newest by mtime too, where the publish history is missing
            switched = _switch(home, version, config, notes, split_pairs_sha256, shows_refused_notes)
            deleted = _retention(home, config, notes, walks) if switched else []
            report = report_of(recorded, final, True, ShardsDone([]), time.perf_counter() - started, deleted,
                               jpgs.hashed)
            report.notes = notes
            return report
        staging = open_staging(staging_dir, version)
        try:
            previous = previous_versions(home, version, walks)
            plans = meta.write_source_snapshots(staging, meta_sources, sources,
                                                previous if config.reuse_shards else [], config.fsync)
            card = card_sources(table, meta_sources, sources, pseudonym_key, split_settings)
            reading.close()                           # the warehouse is read: ingests go on while the shards are written
            written, results, counted, narrow = _stage_version(home, table, jpgs, plans, card, sources, volumes,
                                                               staging, version, previous, config, progress,
                                                               gated_by)
        except BaseException as exc:
            clean_failed_staging(staging)
            if is_full_disk(exc) and not shards.says_where(exc):      # a full disk names the file (rev33h: a quota)
                named = next((n for n in (exc.filename2, exc.filename) if isinstance(n, (str, bytes, os.PathLike))), None)
                raise shards.no_space_error(exc, Path(os.fsdecode(named)) if named is not None else staging) from exc
            raise
        faults.maybe_crash("publish.before_rename")  # tests: staged version complete, not in place
        os.rename(staging, final)
        fsync_dir(home.datasets, config.fsync)
        if staging_dir != home.datasets:
            fsync_dir(staging_dir, config.fsync)
        faults.maybe_crash("publish.before_switch")  # tests: version in place, latest not switched
        switched = _switch(home, version, config, notes, split_pairs_sha256, shows_refused_notes)
        deleted = _retention(home, config, notes, walks) if switched else []
        recorded = read_manifest(final)           # the one it wrote, read as every reader does (bounded)
    report = report_of(recorded, final, False, written, time.perf_counter() - started, deleted, jpgs.hashed)
    report.contract_results = results
    report.contract_sidecars_scanned, report.contract_sidecars_cached = counted.scanned, counted.cached
    report.contract_counts_note = counted.note
    report.notes = notes
    report.contract_column_rules = narrow.rules
    report.contract_column_sidecars_scanned, report.contract_column_sidecars_cached = narrow.scanned, narrow.cached
    report.contract_columns_note = narrow.note
    return report


def _switch(home: DataHome, version: str, config: PublishConfig, notes: list[str], split_pairs_sha256: str,
            shows_refused_notes: bool = False) -> bool:
    """Record ``version`` as the newest in the publish history (retention's order), then point ``latest``
    at it, then record which ``split_pairs`` it was published from (outside the version, in ``cache/``: the
    splits build then knows the split ledger holds its users without reading its sidecars,
    :mod:`pipelines.splits.coverage`); what was left alone on the way goes to ``notes`` and stderr.

    A history or a record of switched versions that cannot be written refuses the switch: an OSError naming it,
    ``latest`` left as it was (fix38n, review rev38f: the history's was a note, and retention then took the versions
    it did not name for the oldest). The notes collected until then go with the error as its ``publish_notes``
    (fix39b: a refused switch showed none of them, the Dagster asset logged none), and are on stderr first unless
    ``shows_refused_notes`` (a caller that shows them itself, the Dagster asset as its step's warnings: review
    rev39c, ``pickapic build`` showed each twice); then they are printed once the switch is made.

    Returns whether the switch is synced: a folder that could not be synced after ``latest`` was renamed
    (:class:`formats.dataset.SwitchNotSynced`, an EIO) does not fail the publish, whose version is live, but is
    noted, and retention waits for the next publish (a power cut could bring back the link to the version before;
    review rev33h: the publish failed with the version live, naming nothing)."""
    shown = 0 if shows_refused_notes else len(notes)
    for note in notes[:shown]:  # before a refusal too (noticed in fix38n: a refused switch printed none of them)
        _print_note(note)
    synced = True
    try:
        note = record_switch(home.datasets, version, config.fsync)
        if note:
            notes.append(note)
            if not shows_refused_notes:
                _print_note(note)
                shown += 1
        note = switch_latest(home.datasets, version, config.fsync)
    except SwitchNotSynced as exc:
        synced, note = False, f"{exc}; retention is left to the next publish"
    except OSError as exc:  # the switch refused: the notes go with the error (the Dagster asset logs them)
        exc.publish_notes = list(notes)   # type: ignore[attr-defined]
        raise
    for early in notes[shown:]:     # held back for a caller that shows a refusal's notes: the switch is made
        _print_note(early)
    if note:
        notes.append(note)
        _print_note(note)
    try:
        coverage.write_published_source(home, home.datasets / version, split_pairs_sha256)
    except OSError as exc:
        note = (f"which split_pairs the version was published from was not recorded in {coverage.record_file(home)} "
                f"({exc}): the next splits build reads its sidecars")
        notes.append(note)
        _print_note(note)
    return synced


def _print_note(note: str) -> None:
    """A publish's note on stderr, ``publish: ...``, its control characters shown, never acting on the terminal (a
    home's path may hold any; review rev39c, noticed: the step warnings' path showed them, this one printed raw)."""
    print(f"publish: {terminal_text(note)}", file=sys.stderr, flush=True)


def _retention(home: DataHome, config: PublishConfig, notes: list[str], walks: VersionWalks | None = None) -> list[str]:
    """Retention after the switch (:func:`versions.apply_retention`); what it left alone goes to ``notes`` and
    stderr. It never fails the publish whose version is live now."""
    left: list[str] = []
    deleted = apply_retention(home, config.keep_versions, left, walks)
    left += reversible_versions_kept(home)
    for note in left:
        notes.append(note)
        _print_note(note)
    return deleted


def _reversible(version: Path) -> bool | None:
    """Whether the version's manifest records ``user_id`` pseudonyms keyed with the public default secret
    (``curation.pseudonyms.reversible``); None where it records nothing or cannot be read."""
    try:
        value = read_manifest(version).get("curation", {}).get("pseudonyms", {}).get("reversible")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, bool) else None


def reversible_versions_kept(home: DataHome) -> list[str]:
    """A note when ``latest`` is keyed with a private secret but retention keeps versions whose pseudonyms are
    keyed with the public default one (published before ``curation.pseudonym_secret`` was set and the ledger
    re-keyed): anyone can reverse those ``user_id`` values, and whoever syncs the versions' folder gets them
    until ``keep_versions`` newer versions are published (or a reader holding one is done). They are kept (a
    rollback may want one), never deleted here: the note names them and the commands that delete them as
    retention does (review rev30e: it said ``rm -r``, which removes a version a training is reading and in place,
    what a sync meets as vanishing files): each under an exclusive ``flock`` taken without waiting (it fails,
    deleting nothing, while a reader holds the version's shared lock), renamed out of the versions' folder to a
    free ``.deleting-`` name where retention hides one (:func:`versions.hiding_root`), then removed."""
    current = latest_version(home.datasets)
    if current is None or _reversible(home.datasets / current) is not False:
        return []
    kept = [name for name in list_versions(home) if name != current and _reversible(home.datasets / name)]
    if not kept:
        return []
    root = hiding_root(home.datasets)
    commands = []
    for name in kept:
        hidden = free_deleting_name(root, name) or root / f"{DELETING_PREFIX}{name}"
        version, hidden = shlex.quote(str(home.datasets / name)), shlex.quote(str(hidden))
        commands.append(f"flock -xn {version} mv -T {version} {hidden} && rm -r {hidden}")
    return [terminal_text(
        f"versions {', '.join(kept)} are kept (by keep_versions, or by a reader holding one) but their user_id "
        f"pseudonyms are keyed with the public default secret (reversible by anyone; {current}, the latest, is "
        f"keyed with a private one): delete them before the versions' folder is shared, as retention does (each "
        f"moved out of the folder, then removed; flock -xn fails, deleting nothing, while a reader holds one): "
        + "; ".join(commands))]


def sweep_temp_files(home: DataHome) -> list[str]:
    """Remove the temporary files (``.NAME.<hex>.tmp``, :func:`formats.files.create_temp`) that a publish killed
    mid-write left outside its version: in the JPEG digest cache, beside the versions (the publish history and
    the record of switched versions), and in ``cache/`` (the record of the ``split_pairs`` published, the
    contract caches). Only the names the publish's own writers give their temporary files, in the folders they
    write, are removed: no other stage writes those names, and the caller holds the publish lock under which
    every publish writes them, so none is being written now. Returns notes on what was left (review rev25d: each
    such crash left a file for good, a whole merged digest cache at Pick-a-Pic size).

    Each folder is swept where the writers write: a home's ``datasets/`` or ``cache/`` (or a folder in them) that
    is a symbolic link to another disk, which the publish writes its history and ``latest`` through, is followed
    once to the folder it names (review rev25e: such a layout was silently never swept). A link at a temporary
    name is still never followed, and nothing outside those folders is touched (:func:`formats.files.sweep_temps`
    removes only this account's regular files at those names, relative to the folder it opened)."""
    counts, columns, record = rulecache.cache_file(home.cache), columncache.cache_file(home.cache), \
        coverage.record_file(home)
    places = [
        (jpgdigests.cache_dir(home), jpgdigests.PART_NAME),
        (home.datasets.parent, "|".join(re.escape(path.name) for path in (history_file(home.datasets),
                                                                           switched_file(home.datasets)))),
        (record.parent, re.escape(record.name)),
        (counts.parent, re.escape(counts.name)),
        (columns.parent, re.escape(columns.name)),
    ]
    notes: list[str] = []
    for folder, final in places:
        notes += sweep_temps(folder, final, follow=True)[1]
    return notes


def _stage_version(home: DataHome, table: pa.Table, jpgs: jpgdigests.JpgIndex, plans: dict[str, str],
                   card: datacard.CardSources, sources: dict[str, dict[str, str]], volumes: dict[str, int],
                   staging: Path, version: str, previous: list[Path], config: PublishConfig, progress: Progress | None,
                   gated_by: dict[str, str | None] | None = None
                   ) -> tuple[ShardsDone, list[RuleResult], rulecache.SidecarCounts, columncache.ColumnValues]:
    """Write every file of ``version`` into ``staging`` beside the warehouse snapshots already there
    (:func:`meta.write_source_snapshots`, whose ``plans`` go into the manifest; ``card``: what the dataset card
    counts from the warehouse), verified and checked against its contracts (``gated_by``: their versions, as the
    version id holds them; read here when not given); return what the shard phase did,
    every rule's result and what the row-local rules and the rules answered from the cached columns read.
    Nothing here reads the warehouse."""
    gated_by = _contract_versions() if gated_by is None else gated_by
    tasks = plan_tasks(home, sample_table(table, jpgs), jpgs, staging, config, volumes)
    manifest.check_manifest_room(version, tasks, config)   # before any shard is written (review rev38d)
    written = write_shards(tasks, previous, config, progress)
    faults.maybe_crash("publish.after_shards")  # tests: every shard committed, no manifest
    for attempt in (1, 2):
        for split in splits_in(table):
            sizes = {s["shard"]: s["num_samples"] for s in written.stats if s["split"] == split}
            write_bytes_atomic(staging / split / SIZES_FILE, sizes_json(sizes))
            write_parquet_atomic(prompt_counts(table, split), staging / split / PROMPT_COUNTS_FILE,
                                 get_schema("prompt_counts"))
        meta.write_meta(staging, written.stats, fsync=config.fsync, pairs=table)
        datacard.write_card(staging, version, splits_in(table), card)
        manifest.write_manifest(staging, version, table, written.stats, sources, plans, config, gated_by,
                                card.curation())
        try:
            verify_version(staging, checksums=config.verify_checksums)
            break
        except manifest.ManifestMismatch as exc:
            if attempt == 2:
                raise
            _repair_reused_shards(exc, tasks, written, config)   # then the files built from their stats again
    counted, narrow = rulecache.SidecarCounts({}), columncache.ColumnValues()
    results = check_contracts(staging, rulecache.cache_file(home.cache), counted,
                              columncache.cache_file(home.cache), narrow)
    give_modes(staging, config.fsync)   # files resumed from an interrupted run under another umask
    fsync_tree(staging, config.fsync)
    return written, results, counted, narrow


def _repair_reused_shards(exc: manifest.ManifestMismatch, tasks: list[shards.ShardTask], written: ShardsDone,
                          config: PublishConfig) -> None:
    """Write again, from the JPEGs, the shards this run did not write (linked from an older version,
    or resumed from an interrupted run) whose files failed verification: an older version's copy
    rotted or was changed in place (the bytes are shared). Re-raise ``exc`` if a file this run wrote
    failed, or any file that is not a shard's.

    The rewritten shards' stats replace the reused ones in ``written`` (the caller then writes the
    files built from them again and verifies once more). The older version keeps its damaged file:
    not this publish's to change; ``written.repaired`` names it.
    """
    by_file = {}
    for task in tasks:
        key = f"{task.split}/{task.name}"
        if key in written.sources:
            for path in task.paths():
                by_file[f"{task.split}/{path.name}"] = (key, task)
    if any(rel not in by_file for rel in exc.paths):
        raise exc
    damaged = dict(by_file[rel] for rel in exc.paths)
    for task in damaged.values():
        for path in task.paths()[::-1]:
            path.unlink(missing_ok=True)
    again = write_shards(list(damaged.values()), [], config, None)
    fresh = {f"{s['split']}/{s['shard'][: -len('.tar')]}": s for s in again.stats}
    written.stats = [fresh.get(f"{s['split']}/{s['shard'][: -len('.tar')]}", s) for s in written.stats]
    for key in damaged:
        source = written.sources.pop(key)
        written.repaired.append(f"{key} from {source.name if source is not None else 'an interrupted run'}")
        if source is not None:
            written.linked -= 1
        else:
            written.resumed -= 1
    written.written += again.written
    written.bytes_written += again.bytes_written


def version_views(path: Path) -> dict[str, str | Path]:
    """Contract dataset name -> Parquet glob (the version's path escaped in it) or file of that dataset
    inside a version directory. Every one must match a file (``required`` in :func:`pipelines.sqlrun.connect`):
    a view of a version that matched none would be an empty table, passing every rule."""
    return {
        "shard_samples": sidecar_glob(path),
        "prompt_counts": prompt_counts_glob(path),
        "shards": path / "meta" / "shards.parquet",
        "splits_summary": path / "meta" / "splits_summary.parquet",
        "published_quarantine": path / "meta" / "quarantine.parquet",
    }


def check_contracts(path: Path, counts_cache: Path | None = None,
                    counted: rulecache.SidecarCounts | None = None, columns_cache: Path | None = None,
                    narrow: columncache.ColumnValues | None = None) -> list[RuleResult]:
    """Evaluate every contract rule of a version's datasets and return the results; raise naming
    every blocking rule that failed.

    With ``counts_cache`` (a file, see :mod:`pipelines.publish.rulecache`) the row-local
    ``shard_samples`` rules read only the sidecars whose counts are not recorded there yet (the path
    needs a manifest); ``counted``, when given, receives what that did. With ``columns_cache`` (see
    :mod:`pipelines.publish.columncache`) the other rules that read only a sidecar's ``key``,
    ``split`` and ``prompt_key`` (``key_unique``, ``prompt_counts.counts_match_samples``) read only
    the sidecars whose columns are not recorded there; ``narrow`` receives what that did.
    """
    views = version_views(path)
    # the sidecars and their identities, listed and checked against the manifest once for both caches
    sidecars = rulecache.version_sidecars(path) if counts_cache is not None or columns_cache is not None else None
    given = rulecache.version_counts(sidecars, counts_cache) if counts_cache is not None else rulecache.SidecarCounts({})
    if counted is not None:
        counted.values, counted.scanned, counted.cached, counted.note = (given.values, given.scanned,
                                                                         given.cached, given.note)
    columns = (columncache.version_values(sidecars, views, columns_cache, {f"{rulecache.DATASET}.{name}" for name in given.values})
               if columns_cache is not None else columncache.ColumnValues())
    if narrow is not None:
        narrow.values, narrow.scanned, narrow.cached, narrow.note = (columns.values, columns.scanned,
                                                                     columns.cached, columns.note)
    known = {dataset: {**columns.values.get(dataset, {}), **(given.values if dataset == rulecache.DATASET else {})}
             for dataset in views}
    con = connect(views, uniform=views, required=views)   # one version: every glob's files share one schema
    try:
        results = [r for dataset in views
                   for r in evaluate(load_contract(dataset), con, known[dataset])]
    finally:
        con.close()
    failures = [f"{r.rule.dataset}.{r.rule.name} = {r.value} ({r.error or r.rule.expectation()})"
                for r in results if r.rule.blocking and not r.passed]
    if failures:
        raise RuntimeError(f"version {path.name} fails its contracts, not publishing: {'; '.join(failures)}")
    return results


def _contract_versions() -> dict[str, str | None]:
    """:func:`pipelines.publish.contracts.contract_versions`: read once per publish, for its version id, the
    identity a version at that name is checked against and the manifest (review rev36e)."""
    return contracts.contract_versions()
