"""``manifest.json`` (counts, sources, config, contract versions, sha256 of every file) and its verification."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa

from formats.dataset import FORMAT_VERSION, MANIFEST_FILE, manifest_files, read_manifest, sidecar_glob
from formats.files import sha256_file, write_bytes_atomic
from pipelines.publish.config import PublishConfig
from pipelines.publish.plan import WRITERS
from pipelines.publish.samples import splits_in


def write_manifest(staging: Path, version: str, table: pa.Table, stats: list[dict],
                   sources: dict[str, dict[str, str]], plans: dict[str, str], config: PublishConfig,
                   contracts: dict[str, str | None]) -> None:
    """``manifest.json``: counts, source partitions, config, contract versions, sha256 of every file."""
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
    days = sorted({d.isoformat() for d in table.column("dt").unique().to_pylist()})
    manifest = {
        "format": FORMAT_VERSION,
        "writers": WRITERS,
        "version": version,
        "splits": splits,
        "sources": {
            "split_pairs": {"days": days, "rows": table.num_rows},
            **{name: dict(sorted(files.items())) for name, files in sources.items()},
        },
        "plans": dict(sorted(plans.items())),
        "config": config.output_fields(),
        "contracts": contracts,
        "read_parquet": f"SELECT * FROM read_parquet('{sidecar_glob('HOME/datasets/pickapic/' + version)}')",
        "files": files,
    }
    write_bytes_atomic(staging / MANIFEST_FILE, manifest_text(manifest).encode())


FILES_PLACEHOLDER = "\0files\0"


def manifest_text(manifest: dict) -> str:
    """The manifest as JSON: indented, keys sorted, one line per file in ``files`` (a version has
    thousands; the line form is about a fifth smaller and still diffs line by line)."""
    text = json.dumps({**manifest, "files": FILES_PLACEHOLDER}, indent=1, sort_keys=True)
    lines = ",\n".join(f"  {json.dumps(rel)}: {json.dumps(info, sort_keys=True, separators=(',', ':'))}"
                        for rel, info in sorted(manifest["files"].items()))
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


def verify_version(path: Path, checksums: bool = False) -> dict:
    """Check that ``path`` holds exactly the manifest's files with their sizes (and sha256s).

    Raises :class:`ManifestMismatch` naming the first difference and listing every file that differs.
    """
    manifest = read_manifest(path)
    expected = manifest["files"]
    present = {str(p.relative_to(path)) for p in path.rglob("*") if p.is_file() or p.is_symlink()} - {MANIFEST_FILE}
    missing, extra = sorted(set(expected) - present), sorted(present - set(expected))
    if missing or extra:
        raise ManifestMismatch(f"version {path.name}: files differ from its manifest: missing {missing[:5]}, "
                               f"unexpected {extra[:5]}", missing + extra)
    problems = []
    for rel, info in expected.items():
        size = (path / rel).stat().st_size
        if size != info["bytes"]:
            problems.append((rel, f"{rel} has {size} bytes, manifest says {info['bytes']}"))
        elif checksums and sha256_file(path / rel) != info["sha256"]:
            problems.append((rel, f"{rel} does not match its manifest sha256"))
    if problems:
        more = f" (and {len(problems) - 1} more files)" if len(problems) > 1 else ""
        raise ManifestMismatch(f"version {path.name}: {problems[0][1]}{more}", [rel for rel, _ in problems])
    return manifest
