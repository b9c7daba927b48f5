"""``manifest.json`` (counts, sources, config, contract versions, sha256 of every file) and its verification."""
from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import pyarrow as pa

from formats.dataset import (
    FORMAT_VERSION,
    MANIFEST_FILE,
    MANIFEST_MAX_BYTES,
    describe,
    manifest_files,
    read_manifest,
    shard_paths,
    sidecar_glob,
)
from formats.duck import NO_HIVE
from formats.files import write_bytes_atomic
from formats.text import terminal_text
from pipelines.publish import datacard
from pipelines.publish.config import PublishConfig
from pipelines.publish.plan import WRITERS
from pipelines.publish.samples import splits_in


def identity(version: str, table: pa.Table, sources: dict[str, dict[str, str]],
             contracts: dict[str, str | None]) -> dict:
    """What a version's manifest records of what it is: its format, its card's code version
    (:data:`pipelines.publish.datacard.CARD_VERSION`), the versions of the data contracts it was gated by
    (``contracts``: :func:`pipelines.publish.contracts.contract_versions`, in the version id too: review rev36e),
    its version and its sources (the
    ``split_pairs`` days and rows, the warehouse files hashed into the version id). A complete folder at the
    version's name is taken as the version only when its manifest records these
    (:func:`pipelines.publish.versions.check_version_identity`)."""
    days = sorted({d.isoformat() for d in table.column("dt").unique().to_pylist()})
    return {
        "format": FORMAT_VERSION,
        "card": datacard.CARD_VERSION,           # the card's code version (in the version id too: review rev31d)
        "contracts": contracts,                  # the contracts' versions (in the version id too: review rev36e)
        "version": version,
        "sources": {
            "split_pairs": {"days": days, "rows": table.num_rows},
            **{name: dict(sorted(files.items())) for name, files in sources.items()},
        },
    }


def write_manifest(staging: Path, version: str, table: pa.Table, stats: list[dict],
                   sources: dict[str, dict[str, str]], plans: dict[str, str], config: PublishConfig,
                   contracts: dict[str, str | None], curation: dict | None = None) -> None:
    """``manifest.json``: counts, source partitions, config, contract versions, how the version was curated
    (``curation``: :meth:`pipelines.publish.datacard.CardSources.curation`), sha256 of every file."""
    known = {}
    for s in stats:
        split_dir = staging / s["split"]
        known[str((split_dir / s["shard"]).relative_to(staging))] = (s["num_bytes"], s["sha256"])
        known[str((split_dir / s["sidecar"]).relative_to(staging))] = (s["sidecar_bytes"], s["sidecar_sha256"])
    files = manifest_files(staging, known)
    splits = {}
    for split in splits_in(table):
        split_stats = [s for s in stats if s["split"] == split]
        splits[split] = {"pairs": sum(s["num_samples"] for s in split_stats), "shards": len(split_stats),
                         "bytes": sum(s["num_bytes"] for s in split_stats)}
    manifest = {
        **identity(version, table, sources, contracts),
        "writers": WRITERS,
        "splits": splits,
        "plans": dict(sorted(plans.items())),
        "config": config.output_fields(),
        **({"curation": curation} if curation is not None else {}),
        # hive_partitioning off: a folder named split=... or dt=... above the version is no column (review rev32b)
        "read_parquet": f"SELECT * FROM read_parquet('{sidecar_glob('HOME/datasets/pickapic/' + version)}', "
                        f"{NO_HIVE})",
        "files": files,
    }
    data = manifest_text(manifest).encode()
    if len(data) > MANIFEST_MAX_BYTES:
        raise ManifestTooLarge(too_large(version, f"holds {len(data):,} bytes", len(stats), config))
    write_bytes_atomic(staging / MANIFEST_FILE, data)


class ManifestTooLarge(ValueError):
    """The version's ``manifest.json`` would pass :data:`formats.dataset.MANIFEST_MAX_BYTES`, what its readers
    accept (review rev38d)."""


def too_large(version: str, what: str, shards: int, config: PublishConfig) -> str:
    """Why a version whose manifest ``what`` (``holds N bytes``) is not published, and the knobs that change it."""
    return (f"dataset version {version} is not published: its {MANIFEST_FILE}, listing {shards:,} shards, {what}, more "
            f"than the {MANIFEST_MAX_BYTES} bytes a manifest may hold "
            f"(formats.dataset.MANIFEST_MAX_BYTES: every reader refuses a larger one, so the publish would refuse "
            f"its own version). Publish fewer, larger shards: lower publish.shards_per_day (now "
            f"{config.shards_per_day}) or raise publish.min_shard_bytes (now {config.min_shard_bytes}); "
            f"publish.max_samples_per_shard (now {config.max_samples_per_shard}) and publish.max_shard_bytes (now "
            f"{config.max_shard_bytes}) cap a shard's size. latest is left as it is")


def check_manifest_room(version: str, tasks: list, config: PublishConfig) -> None:
    """Refuse, before any shard is written, a shard plan (``tasks``:
    :func:`pipelines.publish.samples.plan_tasks`) whose manifest would pass :data:`MANIFEST_MAX_BYTES`: the
    least its shards' lines alone take (each file's size one digit) is compared; :func:`write_manifest` checks
    the exact text. Review rev38d: ``shards_per_day`` and ``min_shard_bytes`` have no bound and the shards grow
    with the export days, so a publish wrote every shard of a version whose manifest its own check then refused
    as "not a manifest a publish wrote"."""
    least = sum(len(file_line(str(path), _LEAST_ENTRY)) + 2
                for task in tasks for path in shard_paths(Path(task.split), task.name))
    if least > MANIFEST_MAX_BYTES:
        raise ManifestTooLarge(too_large(version, f"would hold at least {least:,} bytes", len(tasks), config))


_LEAST_ENTRY = {"bytes": 0, "sha256": "0" * 64}   # a file's manifest entry at its shortest


def file_line(rel: str, info: dict) -> str:
    """The line of the file ``rel`` in a manifest's ``files`` (:func:`manifest_text`), without its separator."""
    return f"  {json.dumps(rel)}: {json.dumps(info, sort_keys=True, separators=(',', ':'))}"


FILES_PLACEHOLDER = "\0files\0"


def manifest_text(manifest: dict) -> str:
    """The manifest as JSON: indented, keys sorted, one line per file in ``files`` (a version has
    thousands; the line form is about a fifth smaller and still diffs line by line)."""
    text = json.dumps({**manifest, "files": FILES_PLACEHOLDER}, indent=1, sort_keys=True)
    lines = ",\n".join(file_line(rel, info) for rel, info in sorted(manifest["files"].items()))
    block = "{\n" + lines + "\n }" if lines else "{}"
    placeholder = json.dumps(FILES_PLACEHOLDER)
    if text.count(placeholder) != 1:
        raise RuntimeError("manifest: the files placeholder occurs in another field")
    return text.replace(placeholder, block) + "\n"



class ManifestMismatch(RuntimeError):
    """A version's files differ from its manifest; ``paths``: every file that does (relative)."""

    def __init__(self, message: str, paths: list[str]) -> None:
        super().__init__(message)
        self.paths = paths


def verify_version(path: Path, checksums: bool = False, present: dict[str, os.stat_result] | None = None) -> dict:
    """Check that ``path`` holds exactly the manifest's files, each a regular file with its size (and sha256).

    Raises :class:`ManifestMismatch` naming every file that differs, one line each. Nothing is followed: a
    symbolic link (dangling or not) or anything else but a regular file at a manifest file's name differs
    from it (review rev24c: a link to a same-size file outside the home passed, as a version published
    again, and ``latest`` was switched to it; a dangling one was a bare ``FileNotFoundError``).

    The files an operating system or a file share drops in a folder someone browsed
    (:func:`pipelines.publish.versions.system_file`: ``.DS_Store``, AppleDouble ``._<name>``, ``Thumbs.db``, ...)
    are not the version's and do not make it differ, as they leave it a version a publish made for retention and
    reuse (:func:`pipelines.publish.versions.made_by_publish`; review rev37c: a browsed version was refused when
    its inputs came back). The tree is walked iteratively relative to open folders
    (:func:`pipelines.publish.versions.walk_tree`): a tree too deep or that cannot be listed is a
    :class:`ManifestMismatch` saying so, never a ``RecursionError`` (review rev37c, noticed).

    ``present``: the files a walk of the version made by this publish listed, each ``lstat`` afresh now
    (:meth:`pipelines.publish.versions.VersionWalks.present`, given only while nothing that walk rests on changed);
    the version is then not walked again (fix38d: an unchanged night walked ``latest`` twice; fix38n: the sizes
    must be the files' now, not the walk's, review rev38f).
    """
    from pipelines.publish.versions import system_file, walk_entries

    manifest = read_manifest(path)
    expected = manifest["files"]
    if present is None:
        present = {}
        try:
            for rel, info, dir_fd in walk_entries(path):      # no link followed, nothing by full path
                if stat.S_ISDIR(info.st_mode) or (rel not in expected and system_file(rel.rpartition("/")[2], info,
                                                                                       dir_fd)):
                    continue
                present[rel] = info
        except (OSError, RecursionError) as exc:
            raise ManifestMismatch(f"version {path.name}: it cannot be looked into whole to compare it with its "
                                   f"manifest ({terminal_text(str(exc))})", []) from None
    present = {rel: info for rel, info in present.items() if rel != MANIFEST_FILE}
    problems = [(rel, f"{rel} is missing") for rel in sorted(set(expected) - set(present))]
    problems += [(rel, f"{rel} is not in the manifest") for rel in sorted(set(present) - set(expected))]
    for rel in sorted(set(expected) & set(present)):
        info, recorded = present[rel], expected[rel]
        if not _is_entry(recorded):    # review rev33d: a KeyError/TypeError traceback, no file named
            problems.append((rel, f"{rel} has no record of its size and sha256 in the manifest (its entry is "
                                  f"{_entry_kind(recorded)}): the manifest is damaged"))
        elif not stat.S_ISREG(info.st_mode):
            problems.append((rel, f"{rel} is {describe(path / rel)}, not the regular file the manifest lists"))
        elif info.st_size != recorded["bytes"]:
            problems.append((rel, f"{rel} has {info.st_size} bytes, manifest says {recorded['bytes']}"))
        elif checksums and not _same_sha256(path / rel, recorded["sha256"]):
            problems.append((rel, f"{rel} does not match its manifest sha256"))
    if problems:
        # a file name is shown with its control characters escaped: one line a file, whatever a planted name holds
        lines = "".join(f"\n  {terminal_text(line)}" for _, line in problems)
        raise ManifestMismatch(f"version {path.name}: {len(problems)} file{'s' if len(problems) > 1 else ''} "
                               f"differ{'' if len(problems) > 1 else 's'} from its manifest:{lines}",
                               [rel for rel, _ in problems])
    return manifest


def _is_entry(recorded: object) -> bool:
    """Whether a manifest's entry for a file is a record with its ``bytes`` and ``sha256`` (their values are
    compared with the file's: a string or negative size differs from every file)."""
    return isinstance(recorded, dict) and "bytes" in recorded and "sha256" in recorded


def _entry_kind(recorded: object) -> str:
    if isinstance(recorded, dict):
        return "a record without " + " and ".join(repr(key) for key in ("bytes", "sha256") if key not in recorded)
    kinds = {type(None): "null", bool: "a boolean", int: "a number", float: "a number", str: "a string",
             list: "an array"}
    return kinds.get(type(recorded), "no record")


def _same_sha256(path: Path, expected: str) -> bool:
    """Whether the regular file ``path`` (never a link followed) has sha256 ``expected``; False where it cannot
    be read as one."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    with open(fd, "rb", buffering=0) as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        return hashlib.file_digest(handle, "sha256").hexdigest() == expected
