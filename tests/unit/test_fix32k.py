"""fix32k: the curation builds read, and identify, one snapshot of their inputs (review rev32k).

``build_decisions`` and ``build_pairs`` hard-link every input file (copies for the moderation lists) into a private,
held folder in ``cache/tmp`` (``.staging/curation`` since fix33a; :func:`pipelines.curation.decisions._snapshot_inputs`),
digest the snapshot and read it, nothing else: a partition a concurrent daily run rewrites after the snapshot is
neither digested nor read; one rewritten before it is digested, so pairs refuse (``DecisionsOutOfDate``), never the
``cluster_0 is declared non-null`` of a new image that duplicate_clusters never saw. ``build_pairs`` holds the curation lock from before its
check of ``decisions``. Small literal homes (``curation_fixtures.HomeBuilder``), the real DuckDB builds in-process.
"""
from __future__ import annotations

import os
import time

import pyarrow.parquet as pq
import pytest
from curation_fixtures import DREAM, HomeBuilder, build_all

import pipelines.curation.decisions as decisions_module
from formats.home import DataHome
from formats.locks import SCRATCH_MARKER, try_lock
from pipelines.curation.decisions import (
    CurationConfig,
    DecisionsOutOfDate,
    ListNotUtf8,
    build_decisions,
    build_pairs,
    curation_inputs,
    read_inputs,
    sweep_snapshot_folders,
)
from pipelines.curation.writing import curation_lock_file


def _pair_ids(home):
    return pq.read_table(home.table_file("pairs"), columns=["pair_id"])["pair_id"].to_pylist()


def _home(fast_tmp):
    b = HomeBuilder(fast_tmp)
    b.pair(1)
    b.banned = [5]
    b.image("r3a", user=5)
    b.image("r3b", user=5, model=DREAM)
    home = b.write()
    build_all(home)
    return b, home


def _hook_before_snapshot(monkeypatch, action):
    """Run ``action`` once, after the build listed its input files and before it snapshots them."""
    real = decisions_module._snapshot_inputs

    def hooked(*args, **kwargs):
        monkeypatch.setattr(decisions_module, "_snapshot_inputs", real)
        action()
        return real(*args, **kwargs)

    monkeypatch.setattr(decisions_module, "_snapshot_inputs", hooked)


def test_a_new_image_of_a_missed_day_is_refused_clearly_not_a_non_null_error(fast_tmp, monkeypatch):
    # rev32k's noticed item: the late ranking's images are on a new day the build's file list missed, and
    # duplicate_clusters never saw them: the rewritten ranking day is in the snapshot, so its digest differs
    b, home = _home(fast_tmp)
    before = _pair_ids(home)

    def late_day():
        b.image("r4a", day="2023-03-02")
        b.image("r4b", model=DREAM, day="2023-03-02")
        b.ranking(4, ["r4a", "r4b"], "r4a")               # on 2023-03-01, whose partition is rewritten
        b.write()

    _hook_before_snapshot(monkeypatch, late_day)
    with pytest.raises(DecisionsOutOfDate, match="rankings"):
        build_pairs(home, CurationConfig())
    assert _pair_ids(home) == before                      # nothing written


def test_decisions_records_the_identity_of_what_it_read(fast_tmp, monkeypatch):
    # the same race on the decisions side: a day rewritten while decisions is built is neither read nor recorded;
    # pairs over the new day then refuse, and decisions built again accepts it
    b, home = _home(fast_tmp)
    real = decisions_module.curation_inputs

    def identity_then_the_day_is_ingested_again(*args, **kwargs):
        identity = real(*args, **kwargs)
        b.ranking(3, ["r3a", "r3b"], "r3a", user=5)
        b.write()
        monkeypatch.setattr(decisions_module, "curation_inputs", real)
        return identity

    monkeypatch.setattr(decisions_module, "curation_inputs", identity_then_the_day_is_ingested_again)
    build_decisions(home, CurationConfig())
    decisions = pq.read_table(home.table_file("decisions"))
    assert "3" not in decisions["subject_id"].to_pylist()  # the ranking it never read has no decision
    with pytest.raises(DecisionsOutOfDate, match="rankings"):
        build_pairs(home, CurationConfig())
    build_decisions(home, CurationConfig())
    build_pairs(home, CurationConfig())
    assert "3_0" not in _pair_ids(home)
    assert ("ranking", "3", "banned_user") in {
        (r["subject"], r["subject_id"], r["reason"]) for r in pq.read_table(home.table_file("decisions")).to_pylist()}


def test_the_identity_is_of_the_home_files_unchanged_in_meaning(fast_tmp):
    # the snapshot changes what is read, not the recorded identity: the digests name the home's own paths, so a
    # decisions file of an earlier version stays current (no version bump) and pairs are what they were
    b, home = _home(fast_tmp)
    files = {name: home.table_files(name) for name in decisions_module.INPUT_TABLES}
    files["duplicate_clusters"] = [home.table_file("duplicate_clusters")]
    lists = {"banned_users": home.banned_users_file, "nsfw_phrases": home.nsfw_phrases_file}
    recorded = read_inputs(pq.read_schema(home.table_file("decisions")).metadata)
    assert recorded == curation_inputs(home, CurationConfig(), files, lists)
    first = home.table_file("pairs").read_bytes()
    build_all(home)
    assert home.table_file("pairs").read_bytes() == first


def test_pairs_check_decisions_under_the_curation_lock(fast_tmp, monkeypatch):
    b, home = _home(fast_tmp)
    real = decisions_module.check_decisions_current
    held = []

    def checking(*args, **kwargs):
        fd = os.open(curation_lock_file(home), os.O_RDONLY)
        try:
            held.append(not try_lock(fd))
        finally:
            os.close(fd)
        return real(*args, **kwargs)

    monkeypatch.setattr(decisions_module, "check_decisions_current", checking)
    build_pairs(home, CurationConfig())
    assert held == [True]


def test_snapshot_folders_are_removed_and_a_killed_builds_swept(fast_tmp):
    b, home = _home(fast_tmp)
    scratch = home.curation_snapshots                                 # HOME/.staging/curation since fix33a
    assert not [n for n in os.listdir(scratch) if "curation" in n]   # each build removed its own
    stale = scratch / "curation-abc123"
    stale.mkdir()
    (stale / SCRATCH_MARKER).touch()                                  # made by a build (fix33a: only those swept)
    (stale / "000000.parquet").write_bytes(b"left by a killed build")
    held = scratch / "curation-held99"
    held.mkdir()
    (held / SCRATCH_MARKER).touch()
    outside = fast_tmp / "keep"
    outside.mkdir()
    (outside / "x").write_text("x")
    os.symlink(outside, scratch / "curation-link1")
    other = scratch / "ingest-2023-03-01-abc"                          # not a curation folder
    other.mkdir()
    fd = os.open(held, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert try_lock(fd)                                           # a running build's
        assert sweep_snapshot_folders(home) == ["curation-abc123"]
        build_pairs(home, CurationConfig())
        assert held.is_dir() and other.is_dir() and (outside / "x").exists()
    finally:
        os.close(fd)
    assert not stale.exists()


def test_moderation_list_edited_in_place_after_the_snapshot(fast_tmp, monkeypatch):
    # the lists are copied, so a list edited in place mid-build is neither digested nor applied
    b, home = _home(fast_tmp)
    b.ranking(3, ["r3a", "r3b"], "r3a", user=5)
    b.write()
    real = decisions_module.curation_inputs

    def identity_then_unban(*args, **kwargs):
        identity = real(*args, **kwargs)
        with open(home.banned_users_file, "r+") as handle:           # in place, as an editor saves
            handle.truncate(0)
        monkeypatch.setattr(decisions_module, "curation_inputs", real)
        return identity

    monkeypatch.setattr(decisions_module, "curation_inputs", identity_then_unban)
    build_decisions(home, CurationConfig())
    assert ("ranking", "3", "banned_user") in {
        (r["subject"], r["subject_id"], r["reason"]) for r in pq.read_table(home.table_file("decisions")).to_pylist()}
    with pytest.raises(DecisionsOutOfDate, match="moderation_lists"):
        build_pairs(home, CurationConfig())


def test_a_bad_list_is_named_by_its_own_path_not_the_snapshot(fast_tmp):
    b, home = _home(fast_tmp)
    home.banned_users_file.write_bytes(b"5\n\xe9\n")
    with pytest.raises(ListNotUtf8) as caught:
        build_decisions(home, CurationConfig())
    assert str(home.banned_users_file) in str(caught.value) and "cache" not in str(caught.value)
    home.banned_users_file.write_text("5\nfive\n")
    with pytest.raises(ValueError, match="banned_users.txt:2") as caught:
        build_decisions(home, CurationConfig())
    assert "cache" not in str(caught.value)


def test_a_fresh_folder_a_build_killed_before_naming_it_left_is_swept_once_old(fast_tmp):
    # a build killed between making `.new-curation-XXXX` and renaming it (microseconds) left it: the sweep takes it
    # once it is an hour old, never a fresh one another build is about to hold and name
    b, home = _home(fast_tmp)
    scratch = home.curation_snapshots                                 # HOME/.staging/curation since fix33a
    old, fresh = scratch / ".new-curation-old123", scratch / ".new-curation-new456"
    old.mkdir()
    fresh.mkdir()
    hours_ago = time.time() - 2 * 3600
    os.utime(old, (hours_ago, hours_ago))
    assert sweep_snapshot_folders(home) == [".new-curation-old123"]
    assert not old.exists() and fresh.is_dir()
    (scratch / ".new-curation-file1").write_text("not a folder")
    os.utime(scratch / ".new-curation-file1", (hours_ago, hours_ago))
    assert sweep_snapshot_folders(home) == [] and (scratch / ".new-curation-file1").exists()


def test_the_ingest_sweeps_a_fresh_spill_folder_a_killed_ingest_left_the_same_way(tmp_path):
    # the ingest's quarantine spill folders are made and swept by the same helpers (formats.locks), so the gap
    # fix32k's sweep closed for curation is closed for the ingest too
    from pipelines.ingest import day as ingest

    home = DataHome(tmp_path / "home")
    scratch = home.cache / "tmp"
    scratch.mkdir(parents=True)
    old = scratch / ".new-ingest-2023-03-01-old123"
    fresh = scratch / ".new-ingest-2023-03-01-new456"
    left = scratch / "ingest-2023-03-01-left99"
    for folder in (old, fresh, left):
        folder.mkdir()
    (left / SCRATCH_MARKER).touch()                                   # made by an ingest (fix33a: only those swept)
    hours_ago = time.time() - 2 * 3600
    os.utime(old, (hours_ago, hours_ago))
    with ingest._spill_folder(home, "2023-03-01") as running:
        assert running.parent == scratch and running.name.startswith("ingest-2023-03-01-")
        assert ingest.sweep_spill_folders(home) == [".new-ingest-2023-03-01-old123", "ingest-2023-03-01-left99"]
        assert running.is_dir() and fresh.is_dir()
    assert not running.exists()
