"""Hostile review rev36e: the nightly publish over a year (issue #16's design; README section 6, *A nightly version
writes what changed*, *Retention*, the WebDataset and readers paragraphs; ``pipelines/publish/``: plan.py,
shards.py, shardphase.py, reuse.py, version.py, versions.py, manifest.py, ``formats/dataset.py``).

How it was driven (outside the suite, then pinned here). Real publishes (``publish_dataset``: the real tar / Parquet
writers, DuckDB JSON and snapshots, the contract gate, hard-link reuse, retention) over homes from
``test_publish_fixtures.make_home`` (40-150 rankings, 3-6 export days), night after night:
- seeded random sequences of six nights (4 seeds), each night one of a late ban, a ban lifted, a duplicate-cluster
  merge, a prompt moved from train to validation, or nothing, with a new export day, and between nights random
  settings (``shards_per_day`` 4/16/64, ``min_shard_bytes`` 1/50 KB, ``max_samples_per_shard`` 3/7/10,000,
  ``min_shards_per_split`` 1/4, ``keep_versions`` 1-3, ``workers`` 1/2, ``reuse_shards``, ``verify_checksums``),
  a third of the nights re-run at once; after every night the version compared file by file (sha256) with a
  from-scratch publish of the same inputs and settings in a fresh home, and every older kept version's shard
  names checked against the new version's inodes;
- a night with ``shards_per_day = 8``, ``max_samples_per_shard = 5``: the rewritten shards of a late ban against
  the shards holding the user's pairs;
- an old version's shard tar changed in place (one byte, size kept) while hard-linked into ``latest``, then the
  next night with ``verify_checksums = true``; a duplicated pair_id in ``split_pairs``.

What held up (no test filed):
- incremental == from scratch, byte for byte, after every night of every sequence (bans, lifted bans, merges,
  held-out prompts, setting changes, re-runs, ``reuse_shards`` off and on);
- no shard whose name an older kept version holds was ever written again instead of linked (0 across 24 nights);
  a late ban rewrote the 7 shards holding the user's pairs plus one ripple shard of the same day (documented);
- retention kept exactly ``keep_versions`` after it was lowered between nights; every kept version verified;
- the in-place changed tar was repaired in the new version (``shards_repaired`` names it, written from the JPEGs,
  a new inode), the new version verifies with checksums and equals a from-scratch one; the older versions keep the
  damaged file (documented: the tar of a reused shard is trusted by its size unless ``verify_checksums``);
- a pair_id twice in a split is refused before anything is written.

Measured: a 150-ranking, 6-day home publishes in ~4-10 s a night on this shared 2-CPU machine; a late-ban night at
``shards_per_day = 8`` wrote 31 shards and linked 76; three kept versions after four nights (one with a late ban,
``shards_per_day = 16``) took 1.10 times the bytes of the newest alone (distinct inodes).

Noticed, not filed: the Dagster publish step's code version (``11+card:1``) does not name the contracts either, so
after a contract change the build finds ``published_dataset`` fresh and the new rules are not run against
``latest`` until the inputs change (the filed defect below is the publish's own half); the README's WebDataset
snippet takes the shared lock but does not check that the folder is still there once it holds it, as the
*Readers hold the version they read* paragraph says readers must (with ``keep_versions = 1`` it can fail with a
bare ``FileNotFoundError`` on ``sizes.json``; an error, never a mixed version); ``reuse.previous_versions`` links
from any folder named like a version that holds a manifest, also one retention reports as "not a version a publish
made" (a copy restored under another version's name), trusting its tar by size like any reused shard.

Each test below is a defect confirmed by running it, ranked by severity, filed as a strict xfail whose assertions
state the correct behaviour. Fixed the same day (fix36e, ``tests/unit/test_fix36e.py``: the contracts' versions in the
version id, the identity checked and the Dagster publish step's code version; the noticed WebDataset snippet and
reuse from a folder retention reports as no version a publish made fixed too) and the markers removed.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from test_publish_fixtures import make_home

from pipelines.publish import version as version_module
from pipelines.publish.config import PublishConfig
from pipelines.publish.version import publish_dataset

CONFIG = PublishConfig(workers=1, fsync=False)


def _digests(version: Path) -> dict[str, str]:
    return {p.relative_to(version).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(version.rglob("*")) if p.is_file()}


def test_a_contract_change_never_leaves_two_different_manifests_under_one_version_id(fast_tmp: Path,
                                                                                       monkeypatch) -> None:
    """README section 6: a version id covers what changes a published byte (the card's code version was added for
    this very reason, review rev31d), and incremental and from-scratch builds agree byte for byte. ``manifest.json``
    records ``contracts`` (each data contract's version, ``version._contract_versions``), which is neither hashed
    into ``samples.version_id`` nor compared by ``versions.check_version_identity``. A contract bump (a new rule in
    ``data_contracts/shards.yaml``, its ``version`` raised) then leaves a home's ``latest`` with the manifest of the
    old contracts under the id a fresh home publishes with the new ones: two different ``manifest.json`` (and so two
    different versions for a consumer checking sha256s) behind one version name, and the re-published version was
    never gated by the new contract."""
    nightly_home = make_home(fast_tmp / "nightly", num_rankings=40, seed=7)
    publish_dataset(nightly_home, CONFIG)                     # the nightly home is published under the old contracts

    real = version_module._contract_versions

    def bumped() -> dict:
        versions = real()
        versions["shards"] = "99.0.0"          # the contract of the shards table changed (a rule added)
        return versions

    monkeypatch.setattr(version_module, "_contract_versions", bumped)
    nightly = publish_dataset(nightly_home, CONFIG)            # the same inputs, published by the new code
    scratch = publish_dataset(make_home(fast_tmp / "scratch", num_rankings=40, seed=7), CONFIG)

    # the same inputs under the same code give one version, whatever the home published before
    assert scratch.version == nightly.version
    assert json.loads((nightly.path / "manifest.json").read_text())["contracts"] == bumped()
    assert _digests(scratch.path) == _digests(nightly.path)
