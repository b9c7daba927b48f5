"""The data contracts a published version is gated by, and their versions (what identifies the rules it passed).

A version's id (:func:`pipelines.publish.samples.version_id`), the identity its manifest is checked against
(:func:`pipelines.publish.manifest.identity`) and the Dagster publish step's code version
(:func:`dagster_project.versions.code_version`) all hold :func:`contract_versions`, so a contract change (a rule
added, its ``version`` raised) makes another version, gated by the new rules, and the publish step stale (review
rev36e: the same inputs kept the old manifest, never gated by the new contract, under the id a fresh home published
with other bytes). Cheap to import: :mod:`data_contracts.engine` is read when asked.
"""
from __future__ import annotations

import hashlib
import json

# the datasets a published version holds and the publish gate checks against their contracts
CONTRACT_DATASETS = ("split_pairs", "shard_samples", "prompt_counts", "shards", "splits_summary", "image_features",
                     "decisions", "published_quarantine")


def contract_versions() -> dict[str, str | None]:
    """Each gated dataset's contract version (``version:`` of ``data_contracts/<dataset>.yaml``; None: no contract),
    as ``manifest.json`` records them under ``contracts``."""
    from data_contracts.engine import load_contract  # duckdb, pydantic: only when asked

    versions: dict[str, str | None] = {}
    for dataset in CONTRACT_DATASETS:
        try:
            versions[dataset] = load_contract(dataset).version
        except FileNotFoundError:
            versions[dataset] = None
    return versions


def contracts_text(versions: dict[str, str | None]) -> str:
    """``versions`` as one canonical text (keys sorted), the form hashed into a version id."""
    return json.dumps(versions, sort_keys=True, separators=(",", ":"))


def contracts_digest(versions: dict[str, str | None]) -> str:
    """A short digest of ``versions`` (10 hex digits of the sha256 of :func:`contracts_text`): the contracts' part
    of the publish step's code version."""
    return hashlib.sha256(contracts_text(versions).encode()).hexdigest()[:10]
