"""The stored key owners (``split_key_owners``): once a prompt or an image is kept in a split, it keeps that owner in
every later build under the same salt, whatever leaves ``pairs`` (a ban), arrives late (a backfilled day) or merges
(two duplicate clusters); a cluster whose images are pinned to two splits is used by none. A key is pinned once the
version holding it is published (at the next build, from the home's split_pairs: no sidecar read), so a build that
is never published pins nothing; lost pins are re-seeded from every retained published version."""
from __future__ import annotations

import hashlib
import json
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from splits_fixtures import pair_row, publish_splits, realistic_pairs, users_by_home, write_pairs

from formats.dataset import is_published
from formats.files import write_parquet_atomic
from formats.home import DataHome
from pipelines.splits import assign, coverage
from pipelines.splits.assign import SplitConfig, build_splits, normalize_prompt
from schemas import get_schema

CFG = SplitConfig(heldout_fraction=0.5, unique_prompts=3, min_unique_rows=0)  # pure held-out fraction: no filling
USERS = users_by_home(CFG.salt, CFG.heldout_fraction, {"train": 4, "validation": 2, "test": 2})
QUIET = dict(log=lambda message: None)
P = "a lighthouse in a storm"
PARENTS = ("train", "validation", "test")


def _night(home: DataHome, rows: list[dict], config: SplitConfig = CFG) -> assign.SplitReport:
    write_pairs(home, rows)
    return build_splits(home, config, **QUIET)


def _kept(home: DataHome) -> dict[str, str]:
    """pair_id -> split of the parent splits' rows."""
    return {r["pair_id"]: r["split"] for r in pq.read_table(home.table_file("split_pairs")).to_pylist()
            if r["split"] in PARENTS}


def _rejects(home: DataHome) -> dict[str, dict]:
    return {r["pair_id"]: r for r in pq.read_table(home.table_file("split_rejects")).to_pylist()}


def _pins(home: DataHome, salt: str | None = CFG.salt) -> dict[tuple[str, str], tuple[str, object]]:
    """(kind, key) -> (owner, first_dt) under ``salt`` (every salt's, keyed by (salt, kind, key), when None)."""
    rows = pq.read_table(home.table_file("split_key_owners")).to_pylist()
    if salt is None:
        return {(r["salt"], r["kind"], r["key"]): (r["owner"], r["first_dt"]) for r in rows}
    return {(r["kind"], r["key"]): (r["owner"], r["first_dt"]) for r in rows if r["salt"] == salt}


def _publish(home: DataHome, name: str) -> None:
    """The fixture's stand-in publish, with the record the publish stage writes after switching ``latest``."""
    publish_splits(home, name)
    sha = hashlib.sha256(home.table_file("split_pairs").read_bytes()).hexdigest()
    coverage.write_published_source(home, home.datasets / name, sha)


def _reconciled(home: DataHome, rows: list[dict]) -> None:
    """pairs = kept parent rows + split_rejects, no pair in both."""
    kept, rejects = _kept(home), _rejects(home)
    assert not set(kept) & set(rejects)
    assert sorted(kept) + sorted(rejects) and sorted([*kept, *rejects]) == sorted(r["pair_id"] for r in rows)


# --- a ban, a backfill: the key stays where it was kept ---------------------------------------------------------------

def test_a_ban_of_the_first_train_user_keeps_the_prompt_in_train(tmp_path):
    """The README's example: train user T1 types P on day 1, a validation user on day 2 (rejected), train user T2 on
    day 3. Banning T1 used to make P validation-owned (T2's pair left train, the validation pair entered validation);
    with the pins P stays train."""
    t1, t2, v = USERS["train"][0], USERS["train"][1], USERS["validation"][0]
    rows = [pair_row(1, t1, P, "a1", "a2", day=1), pair_row(2, v, P + "!", "b1", "b2", day=2),
            pair_row(3, t2, P.upper(), "c1", "c2", day=3), pair_row(4, v, "an owl at dusk", "d1", "d2", day=2)]
    home = DataHome(tmp_path / "home")
    first = _night(home, rows)
    assert _kept(home) == {"1_0": "train", "3_0": "train", "4_0": "validation"}
    assert _rejects(home)["2_0"]["reason"] == "prompt_conflict"
    assert _pins(home) == {} and first.metadata()["key_owners_added"] == 0      # nothing published yet
    _publish(home, "2023-03-05-00000000a1")
    banned = [r for r in rows if r["user_id"] != t1]
    report = _night(home, banned)              # pins what a1 published, then assigns
    assert _pins(home)[("prompt", normalize_prompt(P))][0] == "train"
    assert report.metadata()["key_owners_added_per_kind"] == {"prompt": 2, "image": 6}
    assert report.metadata()["key_owners_update"] == "split_pairs"
    assert _kept(home) == {"3_0": "train", "4_0": "validation"}
    reject = _rejects(home)["2_0"]
    assert reject["reason"] == "prompt_conflict"
    assert json.loads(reject["evidence"])["conflicts"] == [{"kind": "prompt", "key": normalize_prompt(P), "owner": "train"}]
    assert report.metadata()["split_rejects_pinned_owner"] == 1
    pins_before = _pins(home)
    again = _night(home, banned)
    assert again.metadata()["key_owners_added"] == 0 and _pins(home) == pins_before
    _reconciled(home, banned)
    # the same rows without any pin (a home that never built them) give P to validation: the pins hold it
    fresh = DataHome(tmp_path / "fresh")
    _night(fresh, banned)
    assert _kept(fresh) == {"2_0": "validation", "4_0": "validation"}


def test_a_backfilled_older_day_does_not_move_a_train_pinned_prompt(tmp_path):
    """A train user keeps P on day 2; a day 0 export arrives late with a test user typing P: first use now says
    test, the pin says train, so the late test row is rejected and the train row stays."""
    tr, te = USERS["train"][0], USERS["test"][0]
    nights = [pair_row(10, tr, P, "a1", "a2", day=2), pair_row(11, te, "a quiet harbour", "b1", "b2", day=2)]
    home = DataHome(tmp_path)
    _night(home, nights)
    _publish(home, "2023-03-05-00000000a1")
    _night(home, nights)                                       # pins what a1 published
    pins = _pins(home)
    late = [pair_row(5, te, P + " ...", "c1", "c2", day=0)]
    report = _night(home, late + nights)
    assert _kept(home) == {"10_0": "train", "11_0": "test"}
    assert _rejects(home)["5_0"]["reason"] == "prompt_conflict"
    assert report.metadata()["split_rejects_pinned_owner"] == 1
    assert {k: v for k, v in _pins(home).items() if k in pins} == pins        # a pin never changes
    assert _pins(home)[("prompt", normalize_prompt(P))] == ("train", nights[0]["dt"])


def test_a_pin_never_changes_once_written(tmp_path):
    """A key first kept in train stays train-owned, and its pin row stays byte for byte, while the first-use
    computation over the rows present says validation (the validation use is the earliest row now)."""
    tr, v = USERS["train"][0], USERS["validation"][0]
    home = DataHome(tmp_path)
    _night(home, [pair_row(1, tr, P, "a1", "a2", day=3)])
    _publish(home, "2023-03-05-00000000a1")
    _night(home, [pair_row(1, tr, P, "a1", "a2", day=3)])      # pins what a1 published
    written = pq.read_table(home.table_file("split_key_owners")).to_pylist()
    assert written
    rows = [pair_row(2, v, P, "b1", "b2", day=0), pair_row(3, v, "a different prompt", "a1", "c2", day=1),
            pair_row(1, tr, P, "a1", "a2", day=3)]
    for _ in range(2):
        _night(home, rows)
        assert _kept(home) == {"1_0": "train"}
        assert {r["pair_id"]: r["reason"] for r in _rejects(home).values()} == {"2_0": "prompt_conflict",
                                                                                 "3_0": "cluster_conflict"}
        after = pq.read_table(home.table_file("split_key_owners")).to_pylist()
        assert [r for r in after if (r["kind"], r["key"]) in {(w["kind"], w["key"]) for w in written}] == written
    # heldout_wins would make P validation-owned outright; the pin overrides it too
    _night(home, rows, SplitConfig(heldout_fraction=0.5, unique_prompts=3, min_unique_rows=0, owner_mode="heldout_wins"))
    assert _kept(home) == {"1_0": "train"}


# --- duplicate clusters: pinned by their images ----------------------------------------------------------------------

def test_two_clusters_published_in_different_splits_merged_by_a_bridging_image_are_used_by_none(tmp_path):
    """Cluster A kept in train, cluster B in test; a new image joins them (curation gives every member the merged
    cluster id, the smallest image uid). Its images are pinned to two splits: every row carrying the merged cluster is
    rejected (cluster_conflict, owner 'conflict'), nobody is re-pinned, and pairs = kept + rejects."""
    tr, tr2, te = USERS["train"][0], USERS["train"][1], USERS["test"][0]
    before = [pair_row(1, tr, "a red kite", "A", "x1", day=0), pair_row(2, te, "a blue kite", "B", "x2", day=0),
              pair_row(3, tr2, "a green kite", "x3", "x4", day=0)]
    home = DataHome(tmp_path)
    _night(home, before)
    assert _kept(home) == {"1_0": "train", "2_0": "test", "3_0": "train"}
    _publish(home, "2023-03-05-00000000b1")
    merged = [dict(before[0], cluster_0="M"), dict(before[1], cluster_0="M"), before[2],
              pair_row(4, tr2, "a kite bridge", "M", "x5", day=1), pair_row(5, te, "a kite at night", "x6", "M", day=1)]
    report = _night(home, merged)                              # pins what b1 published, then assigns
    pins = _pins(home)
    assert pins[("image", "1-0-a")][0] == "train" and pins[("image", "2-0-a")][0] == "test"
    assert _kept(home) == {"3_0": "train"}
    rejects = _rejects(home)
    assert {p: r["reason"] for p, r in rejects.items()} == {p: "cluster_conflict" for p in ("1_0", "2_0", "4_0", "5_0")}
    for reject in rejects.values():
        assert {"kind": "cluster", "key": "M", "owner": "conflict"} in json.loads(reject["evidence"])["conflicts"]
    assert report.metadata()["split_rejects_cluster_merge"] == 4
    _reconciled(home, merged)
    _publish(home, "2023-03-06-00000000b2")
    _night(home, merged)
    assert _pins(home) == pins                                 # no new pin: the bridging rows were not kept
    # the bridge gone again (the image removed): each cluster goes back to its own split
    _night(home, before)
    assert _kept(home) == {"1_0": "train", "2_0": "test", "3_0": "train"}


def test_an_image_whose_row_left_pairs_still_pins_its_cluster(tmp_path):
    """A test row keeps image i in cluster C; a train row's image j, a near-duplicate in C, is rejected. The test
    user is banned: the rows no longer carry i, but duplicate_clusters still lists it in C, so C stays test-owned and
    j does not enter train (without that table the rows alone would make C train-owned)."""
    te, tr = USERS["test"][0], USERS["train"][0]
    rows = [pair_row(1, te, "a snowy owl", "C", "y1", day=0), pair_row(2, tr, "an owl in snow", "C", "y2", day=1)]
    home = DataHome(tmp_path)
    clusters = pa.table({"image_uid": ["1-0-a", "2-0-a"], "cluster_id": ["C", "C"], "cluster_size": [2, 2],
                         "is_canonical": [True, False], "exact_group": ["e1", "e2"]})
    write_parquet_atomic(clusters, home.table_file("duplicate_clusters"), get_schema("duplicate_clusters"))
    _night(home, rows)
    assert _kept(home) == {"1_0": "test"} and _rejects(home)["2_0"]["reason"] == "cluster_conflict"
    _publish(home, "2023-03-05-00000000a1")
    report = _night(home, rows[1:])                            # the test user banned
    assert _kept(home) == {} and _rejects(home)["2_0"]["reason"] == "cluster_conflict"
    assert report.metadata()["split_rejects_pinned_owner"] == 1


# --- lost pins, re-seeded; the record skips the scan ------------------------------------------------------------------

def _history() -> list[dict]:
    """A test user types P first, a train user retypes it the next day; enough other users for every split."""
    rows = [pair_row(1, USERS["test"][0], P, "p1", "p2", day=0), pair_row(2, USERS["train"][0], P + "!", "p3", "p4", day=1)]
    for i, user in enumerate([u for split in PARENTS for u in USERS[split]]):
        rows.append(pair_row(100 + i, user, f"a prompt of user {i}", f"u{i}a", f"u{i}b", day=i % 3))
    return rows


def test_lost_pins_are_reseeded_from_the_published_version_and_the_nightly_build_reads_no_sidecar(tmp_path, monkeypatch):
    """The kept home pins what it published from its split_pairs (no sidecar read); the lost home, its pins and its
    split_pairs lost (a home restored without its tables), re-seeds them from the published sidecars: same bytes."""
    rows = _history()
    banned = [r for r in rows if r["user_id"] != USERS["test"][0]]
    kept_home, lost_home = DataHome(tmp_path / "kept"), DataHome(tmp_path / "lost")
    for home in (kept_home, lost_home):
        _night(home, rows)
        _publish(home, "2023-03-05-00000000aa")
    lost_home.table_file("split_key_owners").unlink()           # lost (or a home built before the pins)
    lost_home.table_file("split_pairs").unlink()                # and latest's source with it: only the sidecars tell
    scans: list[str] = []
    real = assign.read_published
    monkeypatch.setattr(assign, "read_published", lambda h, keys=True: scans.append(h.root.name) or real(h, keys))
    messages: list[str] = []
    kept_report = _night(kept_home, banned)
    write_pairs(lost_home, banned)
    lost_report = build_splits(lost_home, CFG, log=messages.append)
    assert scans == ["lost"]                                    # the home with its split_pairs read no sidecar
    assert not kept_report.metadata()["key_owners_published_sidecars_read"]
    assert kept_report.metadata()["key_owners_update"] == "split_pairs"
    assert not kept_report.metadata()["ledger_published_sidecars_read"]
    lost = lost_report.metadata()
    assert lost["key_owners_published_sidecars_read"] and lost["ledger_published_sidecars_read"]
    assert lost["key_owners_reseeded"] == len(_pins(kept_home)) and lost["key_owners_reseeded_per_kind"]["prompt"] > 0
    assert lost["key_owners_published_versions_read"] == 1 and lost["key_owners_update"] == "sidecars"
    assert lost["ledger_reseeded_users"] == 0
    assert any("split key owners re-seeded" in m for m in messages), messages
    for name in ("split_pairs", "split_rejects", "split_key_owners", "split_ledger"):
        assert kept_home.table_file(name).read_bytes() == lost_home.table_file(name).read_bytes(), name
    assert "2_0" not in _kept(lost_home)                        # P stays test-owned: the train row stays rejected
    # re-seeded, its record covers latest: the next night reads nothing either
    assert not _night(lost_home, banned).metadata()["key_owners_published_sidecars_read"] and scans == ["lost"]


def test_pins_restored_from_an_older_copy_are_checked_against_the_sidecars(tmp_path, monkeypatch):
    """An older pins file (its record names an older split_pairs) reads the sidecars once and re-seeds what the
    published version kept since; a pins file edited by hand keeping its record is caught by the keys digest."""
    rows = _history()
    home = DataHome(tmp_path)
    _night(home, rows[:4])
    older = home.table_file("split_key_owners").read_bytes()    # from before anything was published
    _publish(home, "2023-03-05-00000000a1")
    _night(home, rows)
    _publish(home, "2023-03-06-00000000a2")
    assert not _night(home, rows).metadata()["key_owners_published_sidecars_read"]
    home.table_file("split_key_owners").write_bytes(older)
    report = _night(home, rows).metadata()                     # covers neither a1 nor a2: both are read
    assert report["key_owners_published_sidecars_read"] and report["key_owners_reseeded"] > 0
    assert report["key_owners_published_versions_read"] == 2
    assert not report["ledger_reseeded_users"]
    assert not _night(home, rows).metadata()["key_owners_published_sidecars_read"]
    path = home.table_file("split_key_owners")
    table = pq.read_table(path)
    pq.write_table(table.slice(1), path)                       # pyarrow keeps the key-value metadata
    assert coverage.PINS_KEY in pq.read_schema(path).metadata
    report = _night(home, rows).metadata()
    assert report["key_owners_published_sidecars_read"] and report["key_owners_reseeded"] == 1


def test_a_ledger_needing_the_sidecars_does_not_read_the_keys_the_pins_cover(tmp_path, monkeypatch):
    """Only the ledger's record fails (a ledger restored from before the publish): the one read takes the users
    only, and the pins, covered, are neither read for nor re-seeded."""
    rows = _history()
    home = DataHome(tmp_path)
    _night(home, rows[:6])
    older = home.table_file("split_ledger").read_bytes()
    _night(home, rows)
    _publish(home, "2023-03-05-00000000aa")
    home.table_file("split_ledger").write_bytes(older)
    reads: list[bool] = []
    real = assign.read_published
    monkeypatch.setattr(assign, "read_published", lambda h, keys=True: reads.append(keys) or real(h, keys))
    report = _night(home, rows).metadata()
    assert reads == [False]
    assert report["ledger_published_sidecars_read"] and not report["key_owners_published_sidecars_read"]
    assert report["ledger_reseeded_users"] > 0 and report["key_owners_reseeded"] == 0


def test_a_key_published_in_two_splits_is_reseeded_as_held_out(tmp_path):
    """A version the blocking rules would have refused (a key in train and test): the lost pin is re-seeded held
    out, never train."""
    home = DataHome(tmp_path)
    _night(home, _history())
    published = pq.read_table(home.table_file("split_pairs")).to_pylist()
    train_row = next(r for r in published if r["split"] == "train")
    leaked = [dict(train_row, split="test", pair_id="9_9", ranking_id=9, pair_index=9)]
    write_parquet_atomic(pa.Table.from_pylist(published + leaked, schema=get_schema("split_pairs")),
                         home.table_file("split_pairs"))
    _publish(home, "2023-03-05-00000000aa")
    home.table_file("split_key_owners").unlink()
    _night(home, _history())
    assert _pins(home)[("prompt", train_row["prompt_key"])][0] == "test"


# --- deterministic, salts kept ----------------------------------------------------------------------------------------

def test_same_inputs_give_byte_identical_key_owners(tmp_path):
    rows = realistic_pairs(users=40, days=3, per_day=60, seed=4)
    first, second = DataHome(tmp_path / "a"), DataHome(tmp_path / "b")
    for home in (first, second):
        _night(home, rows)
        _publish(home, "2023-03-05-00000000aa")
    published = hashlib.sha256(first.table_file("split_pairs").read_bytes()).hexdigest()
    for home in (first, second):
        _night(home, rows)
    for name in ("split_pairs", "split_rejects", "split_ledger"):
        assert first.table_file(name).read_bytes() == second.table_file(name).read_bytes(), name
    data = first.table_file("split_key_owners").read_bytes()
    assert data == second.table_file("split_key_owners").read_bytes()
    _night(first, rows)                                        # a rebuild on the same pairs adds nothing
    assert first.table_file("split_key_owners").read_bytes() == data
    table = pq.read_table(first.table_file("split_key_owners"))
    order = [(r["salt"], r["kind"], r["key"]) for r in table.to_pylist()]
    assert order == sorted(order) and len(set(order)) == len(order)
    record = json.loads(pq.read_schema(first.table_file("split_key_owners")).metadata[coverage.PINS_KEY])
    assert record["split_pairs_sha256"] == [published] and record["versions"] == ["2023-03-05-00000000aa"]
    assert record["keys_sha256"] == coverage.keys_digest(table)


def test_another_salts_pins_are_kept_untouched(tmp_path):
    rows = realistic_pairs(users=40, days=3, per_day=60, seed=6)
    other = SplitConfig(salt="another-salt", heldout_fraction=0.5, unique_prompts=3, min_unique_rows=0)
    home = DataHome(tmp_path)
    _night(home, rows)
    _publish(home, "2023-03-05-00000000a1")
    _night(home, rows)
    mine = _pins(home)
    assert mine
    _night(home, rows, other)
    assert _pins(home, other.salt) == {}                       # a1, under the first salt, is pinned already
    _publish(home, "2023-03-06-00000000a2")
    _night(home, rows, other)                                  # a2 (built under the other salt) pinned under it
    theirs = _pins(home, other.salt)
    assert _pins(home) == mine and theirs                      # the new salt pins afresh, the old pins untouched
    _night(home, rows)                                         # back under the first salt: both as they were
    assert _pins(home) == mine and _pins(home, other.salt) == theirs


# --- the promise over many nights ----------------------------------------------------------------------------------

@pytest.mark.parametrize("seed,mode", [(1, "first_use"), (2, "first_use"), (3, "heldout_wins")])
def test_no_prompt_or_image_is_kept_in_two_splits_across_versions(tmp_path, seed, mode):
    """Night after night, with late days backfilled and users banned: no prompt key or image is ever kept in one
    split in a version and in another split in a later one, pins only grow, and every build reconciles."""
    rng = random.Random(seed)
    config = SplitConfig(heldout_fraction=0.3, unique_prompts=5, min_unique_rows=2, owner_mode=mode)
    rows = realistic_pairs(users=50, days=6, per_day=50, seed=seed, reuse_rate=0.2, self_repeat=0.3, dup_rate=0.1)
    days = sorted({r["dt"] for r in rows})
    late = days[2]                                             # exported two nights late
    banned: set[str] = set()
    seen: dict[tuple[str, str], str] = {}
    pins: dict = {}
    home = DataHome(tmp_path)
    for night, today in enumerate(days):
        present = [r for r in rows if r["dt"] <= today and (r["dt"] != late or night >= 4) and r["user_id"] not in banned]
        _night(home, present, config)
        _publish(home, f"2023-04-{night + 1:02d}-{night:010x}")   # every version published (pinned at the next build)
        for row in pq.read_table(home.table_file("split_pairs")).to_pylist():
            if row["split"] not in PARENTS:
                continue
            for key in (("prompt", row["prompt_key"]), ("image", row["image_0_uid"]), ("image", row["image_1_uid"])):
                assert seen.setdefault(key, row["split"]) == row["split"], (night, key)
        now = _pins(home)
        assert {k: v for k, v in now.items() if k in pins} == pins
        pins = now
        _reconciled(home, present)
        users = sorted({r["user_id"] for r in present} - banned)
        banned.add(rng.choice(users))


@pytest.mark.parametrize("seed,mode", [(4, "first_use"), (5, "heldout_wins")])
def test_merging_and_splitting_clusters_never_put_near_duplicates_in_two_splits_across_versions(tmp_path, seed, mode):
    """Night after night, curation merges clusters (every member takes the smallest id) and once splits one again,
    users are banned (their images stay in duplicate_clusters): a row kept tonight carries no cluster holding an
    image ever kept in another split, and no image is kept in two splits across versions."""
    rng = random.Random(seed)
    config = SplitConfig(heldout_fraction=0.3, unique_prompts=5, min_unique_rows=2, owner_mode=mode)
    rows = realistic_pairs(users=40, days=7, per_day=40, seed=seed, reuse_rate=0.2, self_repeat=0.3, dup_rate=0.15)
    days = sorted({r["dt"] for r in rows})
    parent: dict[str, str] = {}

    def find(cluster: str) -> str:
        while parent.get(cluster, cluster) != cluster:
            cluster = parent[cluster]
        return cluster

    home = DataHome(tmp_path)
    banned: set[str] = set()
    kept_in: dict[str, str] = {}
    merged_rows = 0
    for night, today in enumerate(days):
        every = [r for r in rows if r["dt"] <= today]
        clusters = sorted({r[c] for r in every for c in ("cluster_0", "cluster_1")})
        for a, b in (rng.sample(clusters, 2) for _ in range(3)):
            if find(a) != find(b):
                parent[max(find(a), find(b))] = min(find(a), find(b))
        if night == 4:
            parent.pop(min(parent))                                # a merge undone (the bridging image removed)
        every = [dict(r, cluster_0=find(r["cluster_0"]), cluster_1=find(r["cluster_1"])) for r in every]
        images = {r[f"image_{i}_uid"]: r[f"cluster_{i}"] for r in every for i in (0, 1)}
        write_parquet_atomic(pa.table({"image_uid": list(images), "cluster_id": list(images.values()),
                                       "cluster_size": [1] * len(images), "is_canonical": [True] * len(images),
                                       "exact_group": list(images)}),
                             home.table_file("duplicate_clusters"), get_schema("duplicate_clusters"))
        present = [r for r in every if r["user_id"] not in banned]
        merged_rows += _night(home, present, config).metadata()["split_rejects_cluster_merge"]
        _publish(home, f"2023-04-{night + 1:02d}-{night:010x}")   # every version published (pinned at the next build)
        kept = [r for r in pq.read_table(home.table_file("split_pairs")).to_pylist() if r["split"] in PARENTS]
        for row in kept:
            for image in (row["image_0_uid"], row["image_1_uid"]):
                assert kept_in.setdefault(image, row["split"]) == row["split"], (night, image)
        for row in kept:
            for cluster in (row["cluster_0"], row["cluster_1"]):
                splits = {kept_in[i] for i, c in images.items() if c == cluster and i in kept_in}
                assert splits == {row["split"]}, (night, cluster, splits, row["split"])
        _reconciled(home, present)
        banned.add(rng.choice(sorted({r["user_id"] for r in present})))
    assert merged_rows > 0                                       # the merges did join clusters of two splits


# --- only published keys are pinned -----------------------------------------------------------------------------------

def test_a_build_that_is_not_published_pins_nothing(tmp_path):
    """Builds that are never published (an experiment, a UI run) leave the pins file as it is: no new key, same bytes."""
    rows = _history()
    home = DataHome(tmp_path)
    first = _night(home, rows).metadata()
    assert _pins(home) == {} and first["key_owners_update"] == "nothing published"
    _publish(home, "2023-03-05-00000000a1")
    _night(home, rows)
    pinned = home.table_file("split_key_owners").read_bytes()
    stat = home.table_file("split_key_owners").stat()
    extra = [pair_row(50, USERS["test"][1], "a brand new prompt", "n1", "n2", day=3)]
    for config in (CFG, SplitConfig(heldout_fraction=0.5, unique_prompts=3, min_unique_rows=0, owner_mode="heldout_wins")):
        report = _night(home, rows + extra, config).metadata()
        assert "50_0" in _kept(home)
        assert report["key_owners_added"] == 0 and report["key_owners_update"] == "up to date"
        assert home.table_file("split_key_owners").read_bytes() == pinned
        assert home.table_file("split_key_owners").stat().st_mtime_ns == stat.st_mtime_ns      # not rewritten
    assert ("prompt", normalize_prompt("a brand new prompt")) not in _pins(home)


def test_the_nightly_build_pins_the_published_split_pairs_without_reading_a_sidecar(tmp_path, monkeypatch):
    """build, publish, build: the second build pins from the home's split_pairs (latest's source), no sidecar read."""
    reads: list[str] = []
    real_latest, real_retained = assign.read_published, assign.read_retained_keys
    monkeypatch.setattr(assign, "read_published",         # a read with a version published (not the first build's)
                        lambda h, keys=True: (is_published(h) and reads.append("latest")) or real_latest(h, keys))
    monkeypatch.setattr(assign, "read_retained_keys", lambda h, names: reads.append("retained") or real_retained(h, names))
    rows = _history()
    home = DataHome(tmp_path)
    for night in range(3):
        _night(home, rows)
        _publish(home, f"2023-03-0{night + 5}-00000000a{night}")
        report = _night(home, rows).metadata()
        assert report["key_owners_update"] == ("split_pairs" if night == 0 else "up to date")
        assert not report["key_owners_published_sidecars_read"] and report["key_owners_published_versions_read"] == 0
        assert not report["ledger_published_sidecars_read"], (night, report)
    assert reads == []
    assert _pins(home)[("prompt", normalize_prompt(P))][0] == "test"


def test_lost_pins_are_reseeded_from_every_retained_version(tmp_path, monkeypatch):
    """Three versions published; a prompt kept in train by v1 and (a version the rules would refuse) in test by v2, a
    prompt only v1 published: the lost pins come back from all three versions' sidecars, the first held out."""
    tr, te = USERS["train"][0], USERS["test"][0]
    home = DataHome(tmp_path)
    base = [r for r in _history() if r["pair_id"] not in ("1_0", "2_0")]
    v1 = base + [pair_row(1, tr, "a shared prompt", "s1", "s2", day=0), pair_row(2, te, "only in v1", "o1", "o2", day=0)]
    _night(home, v1)
    _publish(home, "2023-03-05-00000000a1")
    _night(home, base)
    published = pq.read_table(home.table_file("split_pairs")).to_pylist()
    leaked = dict(next(r for r in published if r["split"] == "test"), prompt_key="a shared prompt", pair_id="9_9",
                  ranking_id=9)
    write_parquet_atomic(pa.Table.from_pylist(published + [leaked], schema=get_schema("split_pairs")),
                         home.table_file("split_pairs"))
    _publish(home, "2023-03-06-00000000a2")
    _night(home, base)
    _publish(home, "2023-03-07-00000000a3")
    home.table_file("split_key_owners").unlink()
    _night(home, base + [pair_row(3, USERS["train"][1], "only in v1", "q1", "q2", day=2)])   # split_pairs is not a3's
    home.table_file("split_key_owners").unlink()
    names: list[list[str]] = []
    real = assign.read_retained_keys
    monkeypatch.setattr(assign, "read_retained_keys", lambda h, n: names.append(list(n)) or real(h, n))
    report = _night(home, base + [pair_row(3, USERS["train"][1], "only in v1", "q1", "q2", day=2)]).metadata()
    assert names == [["2023-03-05-00000000a1", "2023-03-06-00000000a2"]]      # oldest first; latest read with the users
    assert report["key_owners_published_versions_read"] == 3 and report["key_owners_update"] == "sidecars"
    pins = _pins(home)
    assert pins[("prompt", "only in v1")][0] == "test" and pins[("prompt", "a shared prompt")][0] == "test"
    assert "3_0" not in _kept(home)                            # v1 published it in test: the train retyping stays out
    record = json.loads(pq.read_schema(home.table_file("split_key_owners")).metadata[coverage.PINS_KEY])
    assert record["versions"] == ["2023-03-05-00000000a1", "2023-03-06-00000000a2", "2023-03-07-00000000a3"]
