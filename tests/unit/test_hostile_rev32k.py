"""Hostile review rev32k: today's curation and settings changes in real flows (fix32g: ``build_pairs`` refusing a
``decisions`` built from other inputs, ``DecisionsOutOfDate``, decisions 13, the blocking rule
``pairs_candidate_pairs_reconciled``, the ingest check refusing a day repeating a key; fix32i: canonical settings
fingerprints; fix32e: the nightly and the sensors skipping while a build holds the lock).

How: small literal homes (``curation_fixtures.HomeBuilder``: real warehouse schemas and ``ingest_files``) driven
through the real DuckDB builds in-process (``build_clusters``, ``build_decisions``, ``build_pairs``) and the real
contract engine; and the shared demo home (built by an older code version, decisions 12) copied and rebuilt with
``pickapic build`` (real Dagster, Beam, NudeNet) to follow the upgrade and retention paths. The races are driven
deterministically: a hook at the one place the build computes its inputs' identity performs what a concurrent
daily run does there (the nightly's raw-day sensor starts a day's run beside a running rebuild: README, "a day
that landed during a rebuild"; ``max_concurrent_runs`` 2).

What held up (no test):
- upgrading a decisions-12 home: ``pickapic build`` planned features, dedup, decisions, pairs, splits and publish and
  ran them (68 s for the 2-day demo home); nothing refused.
- a nightly after raw retention moved a built day out of the raw zone, with ``pairs`` deleted: pairs rebuilt alone
  over the unchanged decisions, not refused (the pruned day's partitions are kept, so the identity holds).
- the Dagster path cannot reach a stuck ``DecisionsOutOfDate``: decisions and pairs share the ``curation`` settings
  section, every output-affecting knob is in both the settings digest and the recorded policy, the moderation lists
  are digested by content on both sides, and every writer of the four input tables (ingest, a day's refresh of
  another day, features) moves an upstream version that makes decisions stale; a pairs step refused after a
  concurrent daily run leaves decisions stale, so the next rebuild repairs it.
- the ingest never writes a key twice in a day's partition (per-file ``duplicate_row`` / ``conflicting_primary_key``;
  one file per table and day, a re-export rewrites the whole day; uids must be canonical lowercase UUIDs), so the
  new repeated-key refusal is not reached by legitimate data. Run for real: a copy of the built home whose
  2023-02-14 raw files repeat a ranking line, carry a second version of another ranking and repeat an image line
  (the app's duplicates) rebuilt with ``pickapic build`` (ingest, features, rebuild: 60 s, exit 0): the day's
  partition holds 46 rows, 46 distinct ranking ids, the repeats quarantined, curation not refused. A ranking
  re-exported on another day (the demo's lookback re-export of ranking 47) is no repeat either.
- cost of the identity: the demo home's ``image_features`` is ~300 bytes an image, so hashing every input partition
  twice a build (decisions and pairs) is seconds even for millions of images.
- ``pairs_candidate_pairs_reconciled`` agrees with ``curation_candidate_pairs`` on 2-, 3- and 4-image rankings,
  choices, ties under both ``four_image_ties`` values, a best image not shown, and one uid shown twice (k from the
  formula = the candidate SQL's count in each case; run with ``build_all`` on a home of a 3-image choice, a 3-image
  tie, a chosen uid shown twice and an unchosen uid shown twice, under ``all_pairs`` and ``drop``: every pairs and
  decisions rule passed); measured: 736,000 pairs from 320,000 rankings checked in
  0.96 s on one thread (240 MB), linear from 20,000 rankings: no correlated-subquery blow-up.
- change-and-change-back of curation settings records the same policy digest (classes as a set, threshold as float).

Noticed, not filed: the same race in ``build_pairs`` with a refreshed ranking whose images are in a partition the
build's file list missed ends in ``ValueError: column 'cluster_0' is declared non-null`` instead of a refusal naming
the cause (same root as test 1); ``check_decisions_current`` runs before the curation lock is taken, so a decisions
file replaced by another run between the check and the pairs query is read unchecked (same class).

Each test below is a defect confirmed by running it, ranked by severity, filed as a strict xfail whose assertions
state the correct behaviour. Fixed the same day (fix32k, ``tests/unit/test_fix32k.py``: the decisions and pairs
builds digest and read one hard-linked snapshot of their inputs; ``build_pairs`` checks ``decisions`` under the
curation lock; the noticed ``cluster_0`` case is now ``DecisionsOutOfDate``) and the markers removed.
"""
from __future__ import annotations

import pyarrow.parquet as pq
from curation_fixtures import DREAM, HomeBuilder, build_all

import pipelines.curation.decisions as decisions_module
from pipelines.curation.decisions import CurationConfig, DecisionsOutOfDate, build_pairs


def _pair_ids(home):
    return pq.read_table(home.table_file("pairs"), columns=["pair_id"])["pair_id"].to_pylist()


def test_pairs_read_a_partition_rewritten_after_the_identity_check(fast_tmp, monkeypatch):
    # The nightly's late-rows check re-exports day E with a ranking committed after E's export (its images were
    # exported and fingerprinted with E); the raw-day sensor runs E's ingest beside a running rebuild. build_pairs
    # digests every input file (curation_inputs), finds them equal to what decisions recorded, then DuckDB reads
    # the files as they are when the pairs query runs: the rewritten partition, with a ranking no decision saw.
    # Nothing after it notices (every pairs rule passes: the ranking has its pair), and the Dagster step records
    # the versions it started from, so the rebuild goes on to splits and publish with it.
    b = HomeBuilder(fast_tmp)
    b.pair(1)
    b.banned = [5]
    b.image("r3a", user=5)                                # exported and fingerprinted with the day
    b.image("r3b", user=5, model=DREAM)
    home = b.write()
    build_all(home)
    real = decisions_module.curation_inputs

    def identity_then_the_day_is_ingested_again(*args, **kwargs):
        identity = real(*args, **kwargs)
        b.ranking(3, ["r3a", "r3b"], "r3a", user=5)       # the late ranking of a banned user: E's rows now
        b.write()                                         # E's partitions and ingest_files, as its ingest writes them
        monkeypatch.setattr(decisions_module, "curation_inputs", real)
        return identity

    monkeypatch.setattr(decisions_module, "curation_inputs", identity_then_the_day_is_ingested_again)
    try:
        build_pairs(home, CurationConfig())
    except DecisionsOutOfDate:
        return                                            # refused: correct
    assert "3_0" not in _pair_ids(home), "a banned user's ranking, never decided, is in pairs"
