"""``pickapic export``: a published version in the released Pick-a-Pic schema, or its benchmark prompt set.

``--format pickscore-parquet``: one Parquet file per split (``<output>/<split>.parquet``, columns of ``schemas.publish.PICKSCORE_EXPORT``,
``jpg_0`` / ``jpg_1`` as JPEG bytes) so existing PickScore code can do::

    datasets.load_dataset("parquet", data_files={"train": "OUT/train.parquet", "test_unique": "OUT/test_unique.parquet"})

The rows are read from the version's sidecars and the image bytes straight out of its tar shards
(via the sidecar offsets), so an export always matches the shards of that version exactly; bytes whose
sha256 differs from the sidecar's ``jpg_0_sha256`` / ``jpg_1_sha256`` stop the export, naming the sample.
The sidecars are the ones the version's manifest lists (never a glob of its folders), and each sidecar and
``<split>/prompt_counts.parquet`` (the loss weight ``num_example_per_prompt``) must have the sha256 the
manifest records, as the trainer requires: an edited one stops the export, naming the file (exit 2).

``--format eval-prompts``: ``<output>/eval_prompts.parquet`` (``schemas.scoring.EVAL_PROMPTS``), the
test_unique prompts with their normalized key, how often the test split asked them and the dataset version:
the held-out prompt set the paper proposes for evaluating generators (instead of MS-COCO captions). Its
users and prompts never reach train, so a scorer trained on the same version has not seen them.

The folder gets a dataset card too (``README.md``: a ``configs`` block naming each split's file, as a version's
own card does), so ``datasets.load_dataset("OUT")`` gives the splits as exported: without it ``datasets`` guessed
them from the file names and merged ``validation_unique`` into ``validation`` and ``test_unique`` into ``test``
(review rev28c). Every Parquet file names the version it holds in its metadata (``dataset_version``), and
``pickapic-export.json`` records each file's version (``dataset_versions``), so a folder exported into night after
night says which version it holds (review rev28c).

``--output`` is a new folder, an empty one, or an earlier export: one holding ``pickapic-export.json``, the
list of files the exports into it wrote. Only those files are ever replaced; a folder holding other files
and no such list is refused. Every file of an export is checked first, written under a temp name, and
renamed into place only once all are written, so a failed export leaves the folder as it was.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from formats.dataset import (
    MANIFEST_FILE,
    PROMPT_COUNTS_FILE,
    SPLITS,
    ChecksumError,
    manifest_sidecars,
    open_listed_file,
    read_manifest,
    reading_version,
    republish,
)
from formats.files import cast_to_schema, read_small_file
from formats.home import DataHome
from formats.outputs import open_output_files, recorded_output_dir, write_output_record
from formats.progress import Progress
from pipelines.publish.datacard import CARD_FILE, export_card
from schemas import get_schema

FORMATS = ("pickscore-parquet", "eval-prompts")
EVAL_PROMPTS_FILE = "eval_prompts.parquet"
EXPORT_MARKER = "pickapic-export.json"   # the files the exports into a folder wrote: the only ones a later one replaces
ROWS_PER_GROUP = 256          # ~70 MB of 2 x 140 KB JPEGs: row groups a reader can stream


class CorruptShard(ValueError):
    """A shard whose image bytes differ from the sha256 its sidecar records (the message names the sample)."""


@dataclass
class ExportReport:
    """What an export wrote: rows and bytes per split."""

    version: str
    output_dir: Path
    rows: dict[str, int]
    files: dict[str, str]
    bytes: dict[str, int]
    seconds: float

    def metadata(self) -> dict:
        """JSON-able values for Dagster / the CLI."""
        return {"version": self.version, "output_dir": str(self.output_dir), "rows_per_split": dict(self.rows),
                "files": dict(self.files), "num_rows": sum(self.rows.values()),
                "num_bytes": sum(self.bytes.values()), "seconds": round(self.seconds, 3)}


def export_pickscore_parquet(home: DataHome, version: str | None, output_dir: Path,
                             progress: Progress | None = None) -> ExportReport:
    """Write one PickScore-schema Parquet per split of ``version`` (default ``latest``) into ``output_dir``."""
    started = time.perf_counter()
    with reading_version(home, version) as root:   # held for reading: the publish's retention keeps it meanwhile
        return _export_pickscore_parquet(home, root, output_dir, progress, started)


def _export_pickscore_parquet(home: DataHome, root: Path, output_dir: Path, progress: Progress | None,
                              started: float) -> ExportReport:
    manifest = read_manifest(root)
    files_listed = manifest["files"]
    schema = get_schema("pickscore_export")
    schema = schema.with_metadata({**(schema.metadata or {}), b"dataset_version": root.name.encode()})
    splits = [s for s in SPLITS if s in manifest["splits"]]
    names = {split: f"{split}.parquet" for split in splits}
    # a new or empty folder, or an earlier export; never a link, a file or a place inside a data home
    output_dir, listed = recorded_output_dir(output_dir, [home.root], "--output", EXPORT_MARKER,
                                             [*names.values(), CARD_FILE])
    rows: dict[str, int] = {}
    files: dict[str, str] = {}
    total = sum(manifest["splits"][s]["shards"] for s in splits)
    done = 0
    with open_output_files(output_dir, [*names.values(), CARD_FILE, EXPORT_MARKER], [home.root],
                           "--output") as open_file:
        for split in splits:
            sidecars = manifest_sidecars(root, split, files_listed)   # the manifest's, never a glob of the folder
            if len(sidecars) != manifest["splits"][split]["shards"]:
                raise RuntimeError(f"version {root.name}: split {split} has {len(sidecars)} sidecars, manifest says "
                                   f"{manifest['splits'][split]['shards']}")
            count = 0
            with open_file(names[split]) as tmp:
                with pq.ParquetWriter(tmp, schema, compression={name: ("NONE" if name.startswith("jpg_") else "ZSTD")
                                                                for name in schema.names},
                                      use_dictionary=[n for n in schema.names if not n.startswith("jpg_")]) as writer:
                    # absent in versions of format pickapic-wds/1; checked against its manifest sha256, as the
                    # trainer does: it is the loss weight num_example_per_prompt (review rev24c)
                    # (its size first, then its sha256 hashed streaming: a planted huge file is never read whole)
                    with open_listed_file(root, f"{split}/{PROMPT_COUNTS_FILE}", files_listed,
                                          "an edited prompt_counts.parquet reweights the loss") as handle:
                        counts = pq.read_table(handle, columns=["prompt_key", "num_example_per_prompt"]) \
                            if handle is not None else None
                    for sidecar in sidecars:
                        table = _export_rows(sidecar, _read_sidecar(root, sidecar, files_listed), schema, counts,
                                             first_index=count)
                        for start in range(0, table.num_rows, ROWS_PER_GROUP):
                            writer.write_table(table.slice(start, ROWS_PER_GROUP))
                        count += table.num_rows
                        done += 1
                        if progress:
                            progress("export", done, total)
            rows[split], files[split] = count, str(output_dir / names[split])
        with open_file(CARD_FILE) as handle:
            handle.write(export_card(root.name, names, rows).encode("utf-8"))
        _write_record(open_file, output_dir, listed, [*names.values(), CARD_FILE], root.name)
    sizes = {split: Path(path).stat().st_size for split, path in files.items()}
    return ExportReport(root.name, output_dir, rows, files, sizes, time.perf_counter() - started)


def _write_record(open_file, output_dir: Path, listed: list[str], written: list[str], version: str) -> None:
    """``pickapic-export.json``: the files the exports into the folder wrote (``listed``) and the dataset version
    each holds (``dataset_versions``): ``version`` for the files this export ``written``, an earlier record's for
    the files an earlier export wrote and this one kept (review rev28c: the folder named no version). Read while
    the folder is held (:func:`formats.outputs.open_output_files`); the earlier record was checked by
    :func:`formats.outputs.recorded_output_dir`."""
    earlier: dict[str, str] = {}
    data = read_small_file(output_dir / EXPORT_MARKER, 1 << 20)   # never a link followed, nor a large file read
    try:
        recorded = json.loads(data).get("dataset_versions") if data is not None else None
    except (ValueError, AttributeError, RecursionError):
        recorded = None
    if isinstance(recorded, dict):
        earlier = {name: value for name, value in recorded.items() if isinstance(value, str) and name in listed}
    versions = {name: (version if name in written else earlier[name]) for name in listed
                if name in written or name in earlier}
    write_output_record(open_file, EXPORT_MARKER, listed, "pickapic export", {"dataset_versions": versions})


_READ_COLUMNS = {"key": pa.types.is_string, "jpg_0_offset": pa.types.is_integer, "jpg_0_size": pa.types.is_integer,
                 "jpg_0_sha256": pa.types.is_string, "jpg_1_offset": pa.types.is_integer,
                 "jpg_1_size": pa.types.is_integer, "jpg_1_sha256": pa.types.is_string}


def _check_columns(side: pa.Table, sidecar: Path, tar: Path) -> None:
    """Refuse a damaged sidecar whose columns the export reads are missing or of another type (review rev22b: a
    float or string offset was a TypeError traceback, a missing one a KeyError)."""
    for column, fits in _READ_COLUMNS.items():
        count = side.column_names.count(column)
        kind = side.schema.field(column).type if count == 1 else None
        if kind is None or not fits(kind):
            what = f"{count} columns {column}" if kind is None else f"{column} of type {kind}"
            raise CorruptShard(f"{tar}: {sidecar.name} has {what}, not what the shard's sidecar holds; the version "
                               "is damaged, nothing was exported (republish the version)")


def _read_sidecar(root: Path, sidecar: Path, files: dict, columns: list[str] | None = None) -> pa.Table:
    """A sidecar of the version, checked against the size and sha256 its manifest records first
    (:class:`formats.dataset.ChecksumError` naming it): the export's rows and labels are its columns, and
    the JPEG bytes are checked against its sha256s, so an edited sidecar (labels swapped) would otherwise be
    exported as the version (review rev24c)."""
    with open_listed_file(root, f"{sidecar.parent.name}/{sidecar.name}", files,
                          "an edited sidecar changes the exported rows and labels") as handle:
        if handle is None:
            raise ChecksumError(f"{sidecar} is not listed in the {MANIFEST_FILE} of dataset version {root.name}; "
                                f"{republish(root)}")
        return pq.read_table(handle, columns=columns)


def _export_rows(sidecar: Path, side: pa.Table, schema: pa.Schema, counts: pa.Table | None,
                 first_index: int) -> pa.Table:
    """The export rows of one shard (``side``: its sidecar's rows, checked): sidecar columns, the prompt's count,
    both JPEGs read from the tar by offset, numbered (``__index_level_0__``) from ``first_index``, the row's
    position in its split file."""
    _check_columns(side, sidecar, sidecar.with_suffix(".tar"))
    if "num_example_per_prompt" not in side.column_names and counts is not None:   # kept outside the shards
        position = pc.index_in(side.column("prompt_key"), value_set=counts.column("prompt_key"))
        if position.null_count:
            raise RuntimeError(f"{sidecar}: prompt_key {side.column('prompt_key').filter(pc.is_null(position))[0]!r} "
                               f"is missing from {PROMPT_COUNTS_FILE}")
        side = side.append_column("num_example_per_prompt", counts.column("num_example_per_prompt").take(position))
    tar = sidecar.with_suffix(".tar")
    jpgs: dict[str, list[bytes]] = {"jpg_0": [], "jpg_1": []}
    members = [(name, side.column(f"{name}_offset").to_pylist(), side.column(f"{name}_size").to_pylist(),
                side.column(f"{name}_sha256").to_pylist()) for name in ("jpg_0", "jpg_1")]
    keys = side.column("key").to_pylist()
    with open(tar, "rb") as handle:
        tar_bytes = os.fstat(handle.fileno()).st_size
        for row in range(side.num_rows):
            for name, offsets, sizes, digests in members:  # in tar order: sequential reads
                offset, size = offsets[row], sizes[row]
                if offset is None or size is None or offset < 0 or size < 0 or offset + size > tar_bytes:
                    # a damaged sidecar: a null, a negative number or a member past the tar's end is never read
                    raise CorruptShard(f"{tar}: sample {keys[row]!r}: {sidecar.name} records the {name} bytes at "
                                       f"offset {offset}, {size} bytes, outside the tar's {tar_bytes} bytes; the "
                                       "version is damaged, nothing was exported (republish the version)")
                handle.seek(offset)
                data = handle.read(size)
                if len(data) != size:
                    raise RuntimeError(f"{tar}: member at offset {offset} is truncated ({len(data)} of {size} bytes)")
                digest = hashlib.sha256(data).hexdigest()
                if digest != digests[row]:  # the export promises the shard's images: never pass on damaged ones
                    raise CorruptShard(f"{tar}: sample {keys[row]!r}: the {name} bytes at offset {offset} have "
                                       f"sha256 {digest}, but {sidecar.name} records {digests[row]}; the shard is "
                                       "damaged, nothing was exported (republish the version)")
                jpgs[name].append(data)
    columns = {name: side.column(name) for name in schema.names if name in side.column_names}
    columns["image_0_url"] = side.column("jpg_0_key")
    columns["image_1_url"] = side.column("jpg_1_key")
    columns["jpg_0"] = pa.array(jpgs["jpg_0"], pa.binary())
    columns["jpg_1"] = pa.array(jpgs["jpg_1"], pa.binary())
    columns["__index_level_0__"] = pa.array(range(first_index, first_index + side.num_rows), pa.int64())
    return cast_to_schema(pa.table(columns), schema)


def _sidecars(root: Path, split: str, columns: list[str]) -> pa.Table:
    """``columns`` of every sidecar of ``split`` the version's manifest lists, each checked against its sha256."""
    listed = read_manifest(root)["files"]
    files = manifest_sidecars(root, split, listed)
    if not files:
        raise FileNotFoundError(f"version {root.name} has no {split} sidecars in {root / split}")
    return pa.concat_tables([_read_sidecar(root, f, listed, columns) for f in files])


def export_eval_prompts(home: DataHome, version: str | None, output_dir: Path) -> ExportReport:
    """Write the test_unique prompts of ``version`` (default ``latest``) as ``eval_prompts.parquet``."""
    started = time.perf_counter()
    with reading_version(home, version) as root:   # held for reading: the publish's retention keeps it meanwhile
        return _export_eval_prompts(home, root, output_dir, started)


def _export_eval_prompts(home: DataHome, root: Path, output_dir: Path, started: float) -> ExportReport:
    unique = _sidecars(root, "test_unique", ["key", "caption", "prompt_key"])
    counts: dict[str, int] = {}
    for key in _sidecars(root, "test", ["prompt_key"]).column("prompt_key").to_pylist():
        counts[key] = counts.get(key, 0) + 1
    rows = []
    for key, caption, prompt_key in sorted(zip(*(unique.column(c).to_pylist() for c in ("key", "caption", "prompt_key"))),
                                           key=lambda r: r[2]):
        if prompt_key not in counts:
            raise RuntimeError(f"version {root.name}: test_unique prompt {prompt_key!r} ({key}) is not in the test split")
        rows.append({"prompt_id": hashlib.sha256(prompt_key.encode("utf-8")).hexdigest()[:16], "prompt_key": prompt_key,
                     "caption": caption, "count": counts[prompt_key], "test_unique_key": key,
                     "dataset_version": root.name})
    if len({r["prompt_key"] for r in rows}) != len(rows):
        raise RuntimeError(f"version {root.name}: test_unique holds a prompt_key twice")
    schema = get_schema("eval_prompts")
    table = pa.Table.from_pylist(rows, schema=schema).replace_schema_metadata({"dataset_version": root.name})
    # a new or empty folder, or an earlier export; never a link, a file or a place inside a data home
    output_dir, listed = recorded_output_dir(output_dir, [home.root], "--output", EXPORT_MARKER, [EVAL_PROMPTS_FILE])
    final = output_dir / EVAL_PROMPTS_FILE
    with open_output_files(output_dir, [EVAL_PROMPTS_FILE, EXPORT_MARKER], [home.root], "--output") as open_file:
        with open_file(EVAL_PROMPTS_FILE) as handle:
            pq.write_table(table, handle, compression="zstd")
        _write_record(open_file, output_dir, listed, [EVAL_PROMPTS_FILE], root.name)
    return ExportReport(root.name, output_dir, {"test_unique": len(rows)}, {"test_unique": str(final)},
                        {"test_unique": final.stat().st_size}, time.perf_counter() - started)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``pickapic export``."""
    parser.add_argument("--format", dest="fmt", choices=FORMATS, default="pickscore-parquet",
                        help="pickscore-parquet: <split>.parquet in the released schema (default); eval-prompts: "
                             "eval_prompts.parquet, the test_unique prompts to evaluate generators on")
    parser.add_argument("--output", type=Path, required=True, metavar="DIR",
                        help="folder for the <split>.parquet files or eval_prompts.parquet")
    parser.add_argument("--version", dest="dataset_version", metavar="V", help="published version (default: latest)")


def run_from_args(args: argparse.Namespace, home: DataHome | None = None, prog: str = "pickapic export") -> int:
    """Entry point for ``pickapic export``; prints what was written, returns the exit code (an error is one line,
    ``PROG: error: ...``)."""
    home = home or DataHome.at(getattr(args, "home", None))
    try:
        write = export_eval_prompts if args.fmt == "eval-prompts" else export_pickscore_parquet
        report = write(home, args.dataset_version, args.output)
    except (FileNotFoundError, ValueError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    for split, path in report.files.items():
        print(f"{split:18s} {report.rows[split]:>9d} {'prompts' if args.fmt == 'eval-prompts' else 'rows'}  {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m pipelines.query.export [--home HOME] --output DIR``."""
    parser = argparse.ArgumentParser(prog="python -m pipelines.query.export", description=__doc__.splitlines()[0])
    parser.add_argument("--home", help="data home (default: $PICKAPIC_HOME or ./data)")
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv), prog=parser.prog)


if __name__ == "__main__":
    from formats.commands import run_command

    sys.exit(run_command('python -m pipelines.query.export', main))
