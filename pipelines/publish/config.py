"""The publish stage's settings (:class:`PublishConfig`) and what one publish did (:class:`PublishReport`)."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

from formats.dataset import SPLITS
from formats.settings import MAX_PROCESSES, check_fields, knob, output_fields


@dataclass(frozen=True)
class PublishConfig:
    """Knobs of the publish stage (the ones marked 'output' change the version id)."""

    seed: int = knob(42, "salt of the content-defined shard boundaries")
    max_samples_per_shard: int = knob(10_000, "most samples in one shard", min=1)
    max_shard_bytes: int = knob(256 * 1024 * 1024, "most tar bytes in one shard", min=1)
    shards_per_day: int = knob(64, "anchors per export day's volume (the rankings the app logged that day): about "
                               "this many shards a day over all splits when a ranking gives one published pair; a "
                               "late change rewrites about 1/shards_per_day of each day it touches", min=1)
    min_shard_bytes: int = knob(256 * 1024, "at most one anchor per this many sample bytes: a quiet day gets fewer, "
                                "larger shards", min=1)
    min_shards_per_split: int = knob(4, "least shards per split (when it has that many samples), for GPUs x loader "
                                     "workers", min=1)
    keep_versions: int = knob(3, "complete versions kept; older ones are deleted after the switch", min=1, output=False)
    workers: int = knob(0, "shard writer processes; 0 = one per CPU, 1 = in-process", min=0, max=MAX_PROCESSES, output=False)
    fsync: bool = knob(True, "make what a publish writes durable: each shard's tar and sidecar before its "
                            "commit marker, the whole version before it is renamed into place", output=False)
    direct_io: bool = knob(True, "with fsync, write shard tars with O_DIRECT where the file system takes it: from the "
                                 "writer's buffer to the disk, no page-cache copy (false: through the page cache)",
                           output=False)
    verify_checksums: bool = knob(False, "re-read every file and compare its sha256 with the manifest before "
                                         "switching latest", output=False)
    reuse_shards: bool = knob(True, "hard-link shards whose content is unchanged from an older version (false: "
                                    "write every shard)", output=False)

    def __post_init__(self) -> None:
        check_fields(self)

    def output_fields(self) -> dict:
        """The fields that change the bytes written (they go into the version id)."""
        return output_fields(self)

    def worker_count(self) -> int:
        """Processes (and hashing threads) to use."""
        return self.workers or os.cpu_count() or 1


@dataclass
class PublishReport:
    """What one publish did: the version, per-split counts, bytes and speed."""

    version: str
    path: Path
    reused: bool
    pairs: dict[str, int]
    shards: dict[str, int]
    bytes: dict[str, int]
    shards_written: int
    shards_resumed: int
    write_seconds: float
    total_seconds: float
    deleted_versions: list[str]
    shards_linked: int = 0           # hard-linked (or copied) unchanged from an older version
    bytes_written: int = 0           # tar + sidecar bytes of the shards written by this run
    jpgs_hashed: int = 0             # training JPEGs read to learn their sha256 (not in the digest cache)
    # reused shards (linked from an older version, or resumed from an interrupted run) that failed their
    # check before the switch and were written again: "<split>/<shard> from <version | an interrupted run>"
    shards_repaired: list[str] = dataclasses.field(default_factory=list)
    # every contract rule's result (data_contracts.engine.RuleResult) on this version's files, as the
    # gate before the switch evaluated them; empty when an existing version was switched to again
    contract_results: list = dataclasses.field(default_factory=list, repr=False)
    # sidecars the gate read for its row-local rules, and those whose counts it had recorded (rulecache)
    contract_sidecars_scanned: int = 0
    contract_sidecars_cached: int = 0
    # why the gate's row-local rules read every sidecar instead, or why their counts were not recorded
    contract_counts_note: str = ""
    # what the publish left alone on its way (a stray link named like a staging folder, a foreign history file)
    notes: list[str] = dataclasses.field(default_factory=list)
    # the rules answered from the cached key/split/prompt_key columns (columncache), the sidecars whose
    # columns the gate read and those taken from the cache, and why anything fell short
    contract_column_rules: list[str] = dataclasses.field(default_factory=list)
    contract_column_sidecars_scanned: int = 0
    contract_column_sidecars_cached: int = 0
    contract_columns_note: str = ""

    @property
    def total_bytes(self) -> int:
        return sum(self.bytes.values())

    @property
    def mb_per_s(self) -> float:
        """Shard bytes written per second of shard writing (0 when nothing was written)."""
        return self.bytes_written / 1e6 / self.write_seconds if self.shards_written and self.write_seconds > 0 else 0.0

    def metadata(self) -> dict:
        """JSON-able values and a markdown table for Dagster."""
        rows = "\n".join(f"| {s} | {self.pairs[s]} | {self.shards[s]} | {self.bytes[s] / 1e6:.1f} |" for s in self.pairs)
        return {
            "version": self.version,
            "path": str(self.path),
            "reused_existing_version": self.reused,
            "num_pairs": sum(self.pairs.values()),
            "num_shards": sum(self.shards.values()),
            "num_bytes": self.total_bytes,
            "pairs_per_split": dict(self.pairs),
            "shards_per_split": dict(self.shards),
            "shards_written": self.shards_written,
            "shards_linked": self.shards_linked,
            "shards_resumed": self.shards_resumed,
            "bytes_written": self.bytes_written,
            "jpgs_hashed": self.jpgs_hashed,
            "write_mb_per_s": round(self.mb_per_s, 1),
            "write_seconds": round(self.write_seconds, 3),
            "total_seconds": round(self.total_seconds, 3),
            "deleted_versions": list(self.deleted_versions),
            "shards_repaired": list(self.shards_repaired),
            "contract_sidecars_scanned": self.contract_sidecars_scanned,
            "contract_sidecars_cached": self.contract_sidecars_cached,
            "contract_counts_note": self.contract_counts_note,
            "notes": list(self.notes),
            "contract_column_rules": list(self.contract_column_rules),
            "contract_column_sidecars_scanned": self.contract_column_sidecars_scanned,
            "contract_column_sidecars_cached": self.contract_column_sidecars_cached,
            "contract_columns_note": self.contract_columns_note,
            "splits": "| split | pairs | shards | MB |\n|---|---|---|---|\n" + rows,
        }


def report_of(manifest: dict, path: Path, reused: bool, written: ShardsDone, total_seconds: float,
              deleted: list[str], jpgs_hashed: int) -> PublishReport:
    """The report of a publish, from the version's manifest and what the shard phase did."""
    splits = dict(sorted(manifest["splits"].items(), key=lambda item: SPLITS.index(item[0])))
    return PublishReport(
        version=manifest["version"], path=path, reused=reused,
        pairs={s: v["pairs"] for s, v in splits.items()}, shards={s: v["shards"] for s, v in splits.items()},
        bytes={s: v["bytes"] for s, v in splits.items()}, shards_written=written.written,
        shards_resumed=written.resumed, write_seconds=written.seconds, total_seconds=total_seconds,
        deleted_versions=deleted, shards_linked=written.linked, bytes_written=written.bytes_written,
        jpgs_hashed=jpgs_hashed, shards_repaired=list(written.repaired))


@dataclass
class ShardsDone:
    """What the shard phase did."""

    stats: list[dict]
    resumed: int = 0
    linked: int = 0
    written: int = 0
    bytes_written: int = 0
    seconds: float = 0.0
    # "split/shard" -> the version it was linked from, or None: resumed from an interrupted run's staging
    sources: dict[str, Path | None] = dataclasses.field(default_factory=dict)
    repaired: list[str] = dataclasses.field(default_factory=list)   # reused shards that failed their checksum, written again
