"""Fix36f: the defects of review rev36f (``tests/unit/test_hostile_rev36f.py``) and their neighbours.

- A key owner pin stays while a retained version (:func:`formats.dataset.list_versions`) publishes its key in a
  train / validation / test sidecar (``assign.retained_published_keys``), though no warehouse row holds it any more
  (a generation deleted in the app); it goes at the first build after no retained version shows it (retention, or
  the versions an erasure tells the operator to delete). A version not read whole keeps every candidate's pin.
- The split ledger records the placement settings each entry was decided under (``split_ledger.settings``:
  heldout_fraction, min_unique_rows); a build under other settings decides again, in place, the users of ``pairs``
  whose entry no published version holds (a one-off ``--set`` run), and settles (settings null) those a published
  version holds. A ledger written before the column stands as it is.
- An unpinned key no row is kept with (its first use rejected for another key) is owned again from the rows
  rejected for such keys alone (``sql/splits_assign.sql``): a train row of a prompt whose held-out first use was
  rejected for a cluster is kept.
"""
from __future__ import annotations

import shutil
from dataclasses import replace

import pyarrow.parquet as pq
from splits_fixtures import (
    kept_splits,
    pair_row,
    publish_recorded,
    publish_splits,
    read_pins,
    realistic_pairs,
    users_by_home,
    write_pairs,
    write_warehouse,
)

from formats.home import DataHome
from pipelines.splits.assign import (
    SplitConfig,
    build_splits,
    normalize_prompt,
    placement_settings,
    read_ledger,
    retained_published_keys,
)
from schemas import get_schema

QUIET = {"log": lambda message: None}
P = "a red fox in the snow"
V1, V2 = "2023-03-01-0000000fa1", "2023-03-02-0000000fa2"


def _build(home: DataHome, rows: list[dict], config: SplitConfig = SplitConfig(), publish: str | None = None) -> None:
    write_pairs(home, rows)
    write_warehouse(home, rows)
    build_splits(home, config, **QUIET)
    if publish:
        publish_recorded(home, publish)


# --- defect 1: pins and the retained versions ----------------------------------------------------------------------

def test_a_deleted_generations_pins_stay_while_a_retained_version_shows_them_and_go_after(tmp_path):
    config = SplitConfig()
    t, v = users_by_home(config.salt, config.heldout_fraction, {"train": 2})["train"]
    home = DataHome(tmp_path / "home")
    night1 = [pair_row(1, t, "a prompt of T", "c1a", "c1b"), pair_row(2, v, P, "c2a", "c2b")]
    _build(home, night1, publish=V1)
    night2 = [night1[0], pair_row(3, v, "another prompt of V", "c3a", "c3b", day=1)]   # generation 2 deleted
    _build(home, night2, publish=V2)
    pins = read_pins(home)
    # the prompt and both images of the deleted generation: V1 still publishes them in validation
    assert pins[("prompt", normalize_prompt(P))] == "validation"
    assert pins[("image", "2-0-a")] == pins[("image", "2-0-b")] == "validation"
    # retention deletes V1: no retained version shows them, so the next build drops their pins
    shutil.rmtree(home.datasets / V1)
    _build(home, night2)
    pins = read_pins(home)
    assert ("prompt", normalize_prompt(P)) not in pins and ("image", "2-0-a") not in pins
    assert pins[("prompt", normalize_prompt("another prompt of V"))] == "validation"      # V2's keys stay
    # and a train user's later use of the prompt is no longer held out (no retained version shows it)
    _build(home, night2 + [pair_row(4, t, P, "c4a", "c4b", day=2)])
    assert kept_splits(home)["4_0"] == "train"


def test_retained_published_keys_reads_every_retained_version_and_keeps_all_when_one_cannot_be_read(tmp_path):
    config = SplitConfig()
    t, v = users_by_home(config.salt, config.heldout_fraction, {"train": 2})["train"]
    home = DataHome(tmp_path / "home")
    _build(home, [pair_row(1, t, "a prompt of T", "c1a", "c1b"), pair_row(2, v, P, "c2a", "c2b")], publish=V1)
    candidates = {("prompt", normalize_prompt(P)), ("image", "1-0-b"), ("prompt", "never published"),
                  ("image", "9-9-z"), ("image", normalize_prompt(P))}      # a prompt's text is no image uid
    assert retained_published_keys(home, candidates) == {("prompt", normalize_prompt(P)), ("image", "1-0-b")}
    assert retained_published_keys(home, set()) == set()
    # a version left unswitched (a publish that died before the switch) counts too: a pin kept is never a leak
    _build(home, [pair_row(5, t, "unswitched prompt", "c5a", "c5b")])
    publish_splits(home, V2, switch=False)
    assert retained_published_keys(home, {("prompt", "unswitched prompt")}) == {("prompt", "unswitched prompt")}
    # a split folder that is a link is not read: nothing can be told, every candidate keeps its pin
    shutil.move(home.datasets / V2 / "train", tmp_path / "elsewhere")
    (home.datasets / V2 / "train").symlink_to(tmp_path / "elsewhere")
    assert retained_published_keys(home, candidates) == candidates
    # no version at all: nothing holds them
    empty = DataHome(tmp_path / "empty")
    assert retained_published_keys(empty, candidates) == set()


# --- defect 2: the placement settings of each ledger entry -----------------------------------------------------------

def test_a_published_one_off_runs_users_keep_their_splits_and_are_settled(tmp_path):
    rows = realistic_pairs(120, 2, 150, seed=5)
    day0 = [r for r in rows if r["dt"] == rows[0]["dt"]]
    home = DataHome(tmp_path / "home")
    _build(home, day0, replace(SplitConfig(), heldout_fraction=0.5), publish=V1)    # the override's run, published
    before = read_ledger(home, SplitConfig().salt)
    assert {a.settings for a in before.values()} == {placement_settings(replace(SplitConfig(), heldout_fraction=0.5))}
    _build(home, rows)                                                                 # the file's settings
    after = read_ledger(home, SplitConfig().salt)
    published = {r["user_id"] for r in pq.read_table(home.table_file("split_pairs")).to_pylist()
                 if r["dt"] == rows[0]["dt"]}
    for user, entry in before.items():
        if user in published:       # a published user keeps the split the override gave, for good
            assert (after[user].split, after[user].settings) == (entry.split, None), user
    new = [a for u, a in after.items() if u not in before]
    assert new and {a.settings for a in new} == {placement_settings(SplitConfig())}
    # the next build under the file's settings reads nothing again and changes nothing
    ledger = home.table_file("split_ledger").read_bytes()
    _build(home, rows)
    assert home.table_file("split_ledger").read_bytes() == ledger


def test_a_one_off_min_unique_rows_is_forgotten_too_and_an_absent_users_entry_is_left_alone(tmp_path):
    rows = realistic_pairs(50, 2, 80, seed=7)
    day0 = [r for r in rows if r["dt"] == rows[0]["dt"]]
    plain, tried = DataHome(tmp_path / "plain"), DataHome(tmp_path / "tried")
    _build(plain, day0)
    _build(tried, day0, replace(SplitConfig(), min_unique_rows=0))                     # no fill, never published
    for home in (plain, tried):
        _build(home, rows)
    assert tried.table_file("split_ledger").read_bytes() == plain.table_file("split_ledger").read_bytes()
    assert tried.table_file("split_pairs").read_bytes() == plain.table_file("split_pairs").read_bytes()
    # a user the override decided who has no pair at the next build keeps the entry as it was (nothing to decide)
    third = DataHome(tmp_path / "third")
    _build(third, day0, replace(SplitConfig(), heldout_fraction=0.5))
    gone = next(iter(read_ledger(third, SplitConfig().salt)))
    _build(third, [r for r in rows if r["user_id"] != gone])
    entry = read_ledger(third, SplitConfig().salt)[gone]
    assert entry.settings == placement_settings(replace(SplitConfig(), heldout_fraction=0.5))


def test_a_ledger_written_before_the_settings_column_stands_under_any_settings(tmp_path):
    rows = realistic_pairs(60, 1, 100, seed=9)
    home = DataHome(tmp_path / "home")
    _build(home, rows, replace(SplitConfig(), heldout_fraction=0.5))
    old = pq.read_table(home.table_file("split_ledger")).drop(["settings"])
    pq.write_table(old, home.table_file("split_ledger"))                                # as an older build wrote it
    assert {a.settings for a in read_ledger(home, SplitConfig().salt).values()} == {None}
    _build(home, rows)                                                                   # another fraction now
    ledger = pq.read_table(home.table_file("split_ledger"), schema=get_schema("split_ledger"))
    assert ledger.column("split").to_pylist() == old.column("split").to_pylist()        # nobody moved
    assert set(ledger.column("settings").to_pylist()) == {None}


# --- the reviewer's noticed item: a key owned by a rejected first use ------------------------------------------------

def test_a_train_row_of_a_prompt_whose_held_out_first_use_was_rejected_is_kept(tmp_path):
    config = SplitConfig()
    t1, t2 = users_by_home(config.salt, config.heldout_fraction, {"train": 2})["train"]
    home = DataHome(tmp_path / "home")
    rows = [pair_row(1, t1, "prompt of T", "cA", "cB"),             # the first user: train, owns cluster cA
            pair_row(2, t2, "Q a cat", "cA", "cZ"),                  # filled into validation: Q's first use,
            pair_row(3, t1, "Q a cat", "cX", "cY", day=1),           #   rejected for cA; then train types Q
            pair_row(4, t1, "kept as before", "cX", "cW", day=1)]
    write_pairs(home, rows)
    build_splits(home, config, **QUIET)
    assert kept_splits(home) == {"1_0": "train", "3_0": "train", "4_0": "train"}
    rejects = pq.read_table(home.table_file("split_rejects")).to_pylist()
    assert [(r["pair_id"], r["home_split"]) for r in rejects] == [("2_0", "validation")]     # pairs = kept + rejects
    # heldout_wins: V's use holds cA and Q out, so T's rows of them go instead (the mode's choice: no orphan)
    build_splits(home, replace(config, owner_mode="heldout_wins"), **QUIET)
    assert kept_splits(home) == {"2_0": "validation", "4_0": "train"}


def test_a_pinned_prompt_is_not_owned_again_though_no_row_of_it_is_kept(tmp_path):
    config = SplitConfig()
    t, v = users_by_home(config.salt, config.heldout_fraction, {"train": 2})["train"]
    home = DataHome(tmp_path / "home")
    _build(home, [pair_row(1, t, "a prompt of T", "c1a", "c1b"), pair_row(2, v, P, "c2a", "c2b")], publish=V1)
    # V's row of P left pairs (a ban, a deletion); T types P: P is pinned validation (V1 shows it), owned by its pin
    # though no row of it is kept, so T's row is rejected
    _build(home, [pair_row(1, t, "a prompt of T", "c1a", "c1b"), pair_row(3, t, P, "c3a", "c3b", day=1)])
    assert kept_splits(home) == {"1_0": "train"}
    assert {r["pair_id"]: r["reason"] for r in pq.read_table(home.table_file("split_rejects")).to_pylist()} == {
        "3_0": "prompt_conflict"}
