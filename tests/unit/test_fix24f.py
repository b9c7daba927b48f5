"""The fixes of review rev24f's defects (tests/unit/test_hostile_rev24f.py holds the reviewer's tests), and what the
fixes added around them:

- the ledger's record names the retained versions whose users it holds; a record without them (written before this
  fix) reads every retained switched-to version once, then the nightly build reads no sidecar again;
- the salt each published version was built under is learned at the first build after its publish and kept beside
  the versions (``datasets/pickapic.salts``), pruned with the versions; a link at its path is never followed;
- an older version whose salt is not recorded counts as built under ``latest``'s salt, so a salt change on a home
  published before the record still reshuffles;
- a retained version read for the re-seed whose sidecar is a link is refused, naming it, and nothing is written; the
  same version left alone while the ledger's record covers it;
- the re-seed's log line names the version each user's split came from, and says no "rolled back from".
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil

import pyarrow.parquet as pq
import pytest
from splits_fixtures import ledger_splits, pair_row, publish_splits, users_by_home, write_pairs

from formats import dataset
from formats.home import DataHome
from pipelines.publish.config import PublishConfig
from pipelines.publish.version import _switch
from pipelines.splits import assign, coverage
from pipelines.splits.assign import SplitConfig, UnreadPublishedVersion, build_splits, merge_published_users

QUIET = {"log": lambda message: None}
V1, V2, V3 = "2023-03-01-00000000b1", "2023-03-03-00000000b2", "2023-03-04-00000000b3"


def _publish(home: DataHome, name: str) -> None:
    """The home's split_pairs published as ``name`` and ``latest`` switched as ``publish_dataset`` does."""
    publish_splits(home, name, switch=False)
    _switch(home, name, PublishConfig(fsync=False), [],
            hashlib.sha256(home.table_file("split_pairs").read_bytes()).hexdigest())


def _ledger_record(home: DataHome) -> dict:
    return json.loads(pq.read_schema(home.table_file("split_ledger")).metadata[coverage.LEDGER_KEY])


def _two_versions(home: DataHome, config: SplitConfig) -> tuple[list[dict], tuple[str, str, str]]:
    """A (train) published as V1; B, hashed to train, filled into validation and published as V2; a build after it."""
    a, b, d = users_by_home(config.salt, config.heldout_fraction, {"train": 3})["train"]
    night1 = [pair_row(1, a, "a prompt of A", "c1a", "c1b", day=0)]
    write_pairs(home, night1)
    build_splits(home, config, **QUIET)
    _publish(home, V1)
    night2 = night1 + [pair_row(3, b, "a prompt of B", "c3a", "c3b", day=2)]
    write_pairs(home, night2)
    build_splits(home, config, **QUIET)
    assert ledger_splits(home)[b] == "validation"
    _publish(home, V2)
    build_splits(home, config, **QUIET)
    return night2, (a, b, d)


# --- the ledger's record names the versions it covers ---------------------------------------------------------------

def _recorded_versions(home: DataHome) -> list[str]:
    body = json.loads((home.cache / coverage.LEDGER_VERSIONS_FILE).read_text())
    assert body["ledger_sha256"] == hashlib.sha256(home.table_file("split_ledger").read_bytes()).hexdigest()
    return body["versions"]


def test_the_ledger_record_names_every_switched_to_version_and_a_record_without_them_reads_them_once(tmp_path):
    """The versions whose users the ledger holds are kept beside it (cache/, keyed by the ledger's sha256), not in
    the ledger's bytes: without that record (lost, or an older ledger's) every retained version is read once."""
    home = DataHome(tmp_path)
    config = SplitConfig()
    _two_versions(home, config)
    assert _recorded_versions(home) == [V1, V2]
    assert "versions" not in _ledger_record(home)
    assert not build_splits(home, config, **QUIET).published_sidecars_read       # covered: nothing read
    (home.cache / coverage.LEDGER_VERSIONS_FILE).unlink()     # the cache deleted (or the upgrade)
    assert build_splits(home, config, **QUIET).published_sidecars_read
    assert _recorded_versions(home) == [V1, V2]
    assert not build_splits(home, config, **QUIET).published_sidecars_read
    # a record naming another ledger (this one restored from an older copy) covers no version
    body = json.loads((home.cache / coverage.LEDGER_VERSIONS_FILE).read_text())
    body["ledger_sha256"] = "0" * 64
    (home.cache / coverage.LEDGER_VERSIONS_FILE).write_text(json.dumps(body))
    assert build_splits(home, config, **QUIET).published_sidecars_read


# --- the salt each version was built under --------------------------------------------------------------------------

def test_each_versions_salt_is_recorded_beside_the_versions_and_pruned_with_them(tmp_path):
    home = DataHome(tmp_path)
    old = SplitConfig(salt="old-salt", heldout_fraction=0.5, min_unique_rows=0)
    new = dataclasses.replace(old, salt="new-salt")
    t1, t2 = users_by_home(new.salt, new.heldout_fraction, {"train": 2})["train"]
    rows = [pair_row(1, t1, "a prompt of T1", "c1a", "c1b", day=0)]
    write_pairs(home, rows)
    build_splits(home, old, **QUIET)
    _publish(home, V1)
    assert coverage.read_version_salts(home) == {}                  # not learned before the next build
    build_splits(home, new, **QUIET)                                # learns V1's: the split_pairs it was published from
    assert coverage.read_version_salts(home) == {V1: "old-salt"}
    _publish(home, V2)
    write_pairs(home, rows + [pair_row(2, t2, "a prompt of T2", "c2a", "c2b", day=1)])
    build_splits(home, new, **QUIET)
    assert coverage.read_version_salts(home) == {V1: "old-salt", V2: "new-salt"}
    assert coverage.salts_file(home) == home.root / "datasets" / "pickapic.salts"
    shutil.rmtree(home.datasets / V1)                               # retention deleted V1
    build_splits(home, new, **QUIET)
    assert coverage.read_version_salts(home) == {V2: "new-salt"}
    # split_pairs and the ledger are the same whatever the record says: it holds facts about versions only
    assert pq.read_schema(home.table_file("split_ledger")).metadata[coverage.LEDGER_KEY].find(b"new-salt") < 0


def test_a_link_at_the_salts_record_is_left_as_it_is_and_never_followed(tmp_path):
    home = DataHome(tmp_path / "home")
    config = SplitConfig()
    t = users_by_home(config.salt, config.heldout_fraction, {"train": 1})["train"][0]
    write_pairs(home, [pair_row(1, t, "a prompt", "c1a", "c1b")])
    build_splits(home, config, **QUIET)
    _publish(home, V1)
    target = tmp_path / "someone-elses-file"
    target.write_text("theirs")
    coverage.salts_file(home).symlink_to(target)
    logged: list[str] = []
    build_splits(home, config, log=logged.append)
    assert target.read_text() == "theirs" and coverage.salts_file(home).is_symlink()
    assert any(str(coverage.salts_file(home)) in line and "left as it is" in line for line in logged), logged
    assert coverage.read_version_salts(home) is None


def _users_by_two_salts(first: SplitConfig, second: SplitConfig, wanted: list[tuple[str, str]]) -> list[str]:
    found: list[str | None] = [None] * len(wanted)
    i = 0
    while None in found:
        user = f"{i:016x}"
        homes = (assign.user_home(user, first.salt, first.heldout_fraction),
                 assign.user_home(user, second.salt, second.heldout_fraction))
        for k, want in enumerate(wanted):
            if found[k] is None and homes == want and user not in found:
                found[k] = user
                break
        i += 1
    return found


def test_an_older_version_of_unrecorded_salt_counts_as_built_under_latests_so_a_salt_change_still_reshuffles(tmp_path):
    # a home published twice under the old salt before the salts were recorded, its ledger's record without the
    # versions (every retained version is read): the first build under a new salt reshuffles X (held under the old
    # salt only), as it did before; V1 (no salt recorded) does not re-seed X under the new salt
    old = SplitConfig(salt="old-salt", heldout_fraction=0.5, min_unique_rows=0)
    new = dataclasses.replace(old, salt="new-salt")
    x, t1 = _users_by_two_salts(old, new, [("validation", "train"), ("train", "train")])
    home = DataHome(tmp_path)
    rows = [pair_row(1, t1, "a prompt of T1", "c1a", "c1b", day=0), pair_row(2, x, "a prompt of X", "c2a", "c2b", day=1)]
    write_pairs(home, rows)
    build_splits(home, old, **QUIET)
    _publish(home, V1)
    rows.append(pair_row(3, t1, "T1 again", "c3a", "c3b", day=2))
    write_pairs(home, rows)
    build_splits(home, old, **QUIET)
    _publish(home, V2)
    coverage.salts_file(home).unlink()                              # the home from before the record
    ledger = home.table_file("split_ledger")
    table = pq.read_table(ledger)
    pq.write_table(table.replace_schema_metadata({}), ledger)       # no record at all: every version read
    logged: list[str] = []
    report = build_splits(home, new, log=logged.append)
    assert report.published_sidecars_read
    now = {(r["user_id"], r["salt"]): (r["split"], r["rule"]) for r in pq.read_table(ledger).to_pylist()}
    assert now[(x, new.salt)] == ("train", "hash")                  # the deliberate reshuffle
    assert coverage.read_version_salts(home) == {V2: "old-salt"}    # latest's learned; V1's cannot be told


def test_merge_published_users_ranks_the_current_salt_then_latest_then_held_out_first():
    day = "2023-03-01"
    merged = merge_published_users(
        "new", "L",
        {"u1": ("train", day), "u2": ("train", day)},
        {"A": {"u1": ("validation", day), "u3": ("validation", day), "u4": ("test", day)},
         "B": {"u2": ("validation", day), "u3": ("train", day), "u4": ("validation", day)}},
        {"L": "old", "A": "new", "B": None})
    assert (merged["u1"].split, merged["u1"].version, merged["u1"].overridden) == ("validation", "A", True)
    assert (merged["u2"].split, merged["u2"].version) == ("validation", "B")   # unknown salt ranks with the current
    assert (merged["u3"].split, merged["u3"].version) == ("validation", "A")   # same rank: held out first
    assert (merged["u4"].split, merged["u4"].version) == ("test", "A")
    assert not merged["u4"].other_salt
    only_other = merge_published_users("new", "L", {"u1": ("validation", day)}, {}, {"L": "old"})
    assert only_other["u1"].other_salt and only_other["u1"].split == "validation"


# --- a retained version read for the re-seed: refused when it cannot be read whole --------------------------------------

def test_a_linked_sidecar_of_a_version_to_reseed_from_is_refused_naming_it_and_nothing_is_written(tmp_path):
    home = DataHome(tmp_path / "home")
    config = SplitConfig()
    _, ledger_v1 = _night1_then_v2(home, config)
    sidecar = next((home.datasets / V2 / "validation").glob("*.parquet"))
    moved = tmp_path / "moved.parquet"
    shutil.move(sidecar, moved)
    sidecar.symlink_to(moved)
    dataset.switch_latest(home.datasets, V1, fsync=False)
    home.table_file("split_ledger").write_bytes(ledger_v1)
    before = {name: home.table_file(name).read_bytes() for name in ("split_pairs", "split_ledger", "split_key_owners")}
    logged: list[str] = []
    with pytest.raises(UnreadPublishedVersion) as caught:
        build_splits(home, config, log=logged.append)
    assert str(sidecar) in str(caught.value) and "Nothing was written" in str(caught.value)
    assert any(str(sidecar) in line for line in logged), logged
    assert {name: home.table_file(name).read_bytes() for name in before} == before


def test_a_linked_split_folder_is_left_alone_while_the_ledger_holds_every_user_of_its_version(tmp_path):
    # the ledger's record covers V1 (and latest, V2): nothing to re-seed, so a linked folder (moved to another disk)
    # stops no build; the pins' read says it is not read whole, as before
    home = DataHome(tmp_path / "home")
    config = SplitConfig()
    _night1_then_v2(home, config)
    build_splits(home, config, **QUIET)
    folder = home.datasets / V1 / "train"
    shutil.move(folder, tmp_path / "archive")
    folder.symlink_to(tmp_path / "archive")
    home.table_file("split_key_owners").unlink()                    # the pins re-read every version
    logged: list[str] = []
    report = build_splits(home, config, log=logged.append)
    assert report.metadata()["ledger_reseeded_users"] == 0
    assert any(str(folder) in line and "split key owners" in line for line in logged), logged


def _night1_then_v2(home: DataHome, config: SplitConfig) -> tuple[list[dict], bytes]:
    """:func:`_two_versions` without the build after V2; returns night 2's rows and the ledger after night 1."""
    a, b, _ = users_by_home(config.salt, config.heldout_fraction, {"train": 3})["train"]
    night1 = [pair_row(1, a, "a prompt of A", "c1a", "c1b", day=0)]
    write_pairs(home, night1)
    build_splits(home, config, **QUIET)
    ledger_v1 = home.table_file("split_ledger").read_bytes()
    _publish(home, V1)
    night2 = night1 + [pair_row(3, b, "a prompt of B", "c3a", "c3b", day=2)]
    write_pairs(home, night2)
    build_splits(home, config, **QUIET)
    _publish(home, V2)
    return night2, ledger_v1


# --- the log line ---------------------------------------------------------------------------------------------------

def test_the_reseed_log_names_the_older_version_and_says_nothing_of_a_rollback(tmp_path):
    home = DataHome(tmp_path)
    config = SplitConfig()
    night2, (a, b, _) = _two_versions(home, config)
    write_pairs(home, night2 + [pair_row(5, a, "A again", "c5a", "c5b", day=3)])
    build_splits(home, config, **QUIET)
    _publish(home, V3)                                              # a newer version; B is in it too
    home.table_file("split_ledger").unlink()
    write_pairs(home, [r for r in night2 if r["user_id"] != b] + [pair_row(5, a, "A again", "c5a", "c5b", day=3)])
    build_splits(home, config, **QUIET)                             # B banned
    _publish(home, "2023-03-05-00000000b4")                         # latest without B
    home.table_file("split_ledger").unlink()
    write_pairs(home, night2 + [pair_row(5, a, "A again", "c5a", "c5b", day=3)])   # B unbanned
    logged: list[str] = []
    build_splits(home, config, log=logged.append)
    line = next(line for line in logged if line.startswith("split ledger re-seeded"))
    # B is validation in V2 and V3 alike (the same rank: the first by name); nothing says latest was rolled back
    assert "rolled back" not in line and f"as the older retained versions {V2} published them" in line, line
    assert ledger_splits(home)[b] == "validation"


def test_the_reseed_log_says_latest_names_no_version_while_it_dangles(tmp_path):
    home = DataHome(tmp_path)
    config = SplitConfig()
    _, (_, b, _) = _two_versions(home, config)
    os.unlink(home.datasets / "latest")
    (home.datasets / "latest").symlink_to("2023-03-09-00000000ff")      # dangling
    home.table_file("split_ledger").unlink()
    logged: list[str] = []
    build_splits(home, config, log=logged.append)
    line = next(line for line in logged if line.startswith("split ledger re-seeded"))
    assert f"({V1}, {V2}; latest names no complete version now)" in line, line
    assert ledger_splits(home)[b] == "validation"
