"""Fixes of hostile review rev30d (tests/unit/test_hostile_rev30d.py): the data card states the training JPEGs' size
and quality, the held-out fraction and ``unique_prompts`` the version was built with (no literal 512 px / 6% / 500 /
+-2 points); the exporter markers named in one line on every path of ``pickapic build``; a raw day that has not
begun named by ``--dry-run`` and the build stamp's "up to date" too, and not counted as a built day; ``--dry-run
--with-model`` naming the model's reports; the data-home layout naming what a home holds."""
from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from formats.files import write_parquet_atomic
from formats.home import DataHome
from pipelines.splits.assign import SETTINGS_METADATA, SplitConfig, build_splits, read_settings_record
from schemas import get_schema
from tests.conftest import copy_home
from tests.fast_tmp import fast_folder

ROOT = Path(__file__).resolve().parents[2]


# --- the data card ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def version(tmp_path_factory):
    """A published version (its meta tables) and its splits, to render cards of other sources from."""
    from test_publish_fixtures import make_home

    from pipelines.publish.config import PublishConfig
    from pipelines.publish.samples import splits_in
    from pipelines.publish.version import publish_dataset

    home = make_home(tmp_path_factory.mktemp("card30d") / "home", num_rankings=40, seed=7)
    report = publish_dataset(home, PublishConfig(workers=1, fsync=False))
    return report.path, splits_in(pq.read_table(home.table_file("split_pairs")))


def _card(version, **sources) -> str:
    from pipelines.publish.datacard import PRIVATE, CardSources, render

    path, splits = version
    return render(path, "v", splits, CardSources(days=["2023-03-01"], pseudonym_secret=PRIVATE, **sources))


def test_train_jpeg_formats_reads_the_size_and_quality_from_the_keys_folder():
    from pipelines.publish.meta import train_jpeg_formats

    table = pa.table({"jpg_0_key": ["blobs/train/s600q90/ab/ab1.jpg", "blobs/train/s600q90/cd/cd2.jpg",
                                    "blobs/train/s384q85/ef/ef3.jpg"],
                      "jpg_1_key": ["blobs/train/s600q90/01/012.jpg", "blobs/ab/ab.jpg", "blobs/train/s12qx/a.jpg"]})
    assert train_jpeg_formats(table) == [(384, 85), (600, 90)]     # keys of another form tell nothing
    assert train_jpeg_formats(table.slice(1, 0)) == []


def test_the_card_states_the_training_jpeg_size_and_quality(version):
    card = _card(version, train_jpegs=[(600, 90)])
    assert "(the two training JPEGs, at most 600 px on the short side, JPEG quality 90,\n" in card
    assert "512" not in card
    mixed = _card(version, train_jpegs=[(384, 85), (600, 90)])
    assert re.findall(r"at most (\d+) px on the short side", mixed) == ["600"]     # a bound every JPEG keeps
    assert "(`features.train_size` 384, 600 across its days), JPEG quality 85, 90" in mixed
    unknown = _card(version)                                       # keys of another form: no number at all
    assert "at most `features.train_size` px on the short side (a size not recorded" in unknown
    assert not re.search(r"at most \d+ px", unknown)


def test_the_card_states_the_split_settings_the_version_records(version):
    path, splits = version
    summary = {r["split"]: r for r in pq.read_table(path / "meta" / "splits_summary.parquet").to_pylist()}
    smallest = min(summary[s]["num_prompts"] for s in splits if s.endswith("_unique"))
    card = _card(version, split_settings={"heldout_fraction": 0.125, "unique_prompts": 7})
    assert "(`splits.heldout_fraction` = 12.5% of the users,\nhalf validation and half test)" in card
    assert "up to\n7 prompts each (`splits.unique_prompts`; the evaluation sets" in card
    assert (f"keep at most 7 prompts (`splits.unique_prompts`): with {smallest} prompts in the smaller one "
            f"here, their accuracy has about +-{50 / smallest ** 0.5:.0f} points of sampling noise") in card
    assert not re.search(r"\b6% by default|\b500 prompts|\+-2 points", card)
    default = _card(version, split_settings={"heldout_fraction": 0.06, "unique_prompts": 500})
    assert "= 6% of the users" in default and "up to\n500 prompts each" in default
    unrecorded = _card(version)                                    # split before splits code version 12
    assert "(a configured fraction, 6% by default,\nhalf validation" in unrecorded
    assert "up to\n`splits.unique_prompts` prompts each (500 by default; the evaluation sets" in unrecorded


@pytest.mark.parametrize("metadata, expected", [
    (None, {}),
    ({}, {}),
    ({SETTINGS_METADATA: b"not json"}, {}),
    ({SETTINGS_METADATA: b"[1, 2]"}, {}),
    ({SETTINGS_METADATA: b'{"heldout_fraction": 0.3, "unique_prompts": 40}'},
     {"heldout_fraction": 0.3, "unique_prompts": 40}),
    ({SETTINGS_METADATA: b'{"heldout_fraction": true, "unique_prompts": -1}'}, {}),
    ({SETTINGS_METADATA: b'{"heldout_fraction": 1.0, "unique_prompts": 2.5}'}, {}),
    ({SETTINGS_METADATA: b'{"heldout_fraction": 0, "unique_prompts": 0}'}, {"heldout_fraction": 0.0, "unique_prompts": 0}),
])
def test_read_settings_record_takes_only_values_in_range(metadata, expected):
    assert read_settings_record(metadata) == expected


def test_the_splits_stage_records_its_settings_and_the_publish_states_them(tmp_path):
    from splits_fixtures import realistic_pairs, write_pairs

    home = DataHome(tmp_path / "home")
    write_pairs(home, realistic_pairs(users=30, days=2, per_day=40, seed=5))
    build_splits(home, SplitConfig(heldout_fraction=0.3, unique_prompts=40, min_unique_rows=0),
                 log=lambda message: None)
    metadata = pq.read_schema(home.table_file("split_pairs")).metadata
    recorded = read_settings_record(metadata)      # with the held-out users by rule since review rev30f
    assert {k: v for k, v in recorded.items() if k != "heldout_users"} == {
        "heldout_fraction": 0.3, "unique_prompts": 40, "min_unique_rows": 0}
    assert set(recorded["heldout_users"]) == {"validation", "test"}
    assert json.loads(metadata[SETTINGS_METADATA]) == {"heldout_fraction": 0.3, "unique_prompts": 40,
                                                       "min_unique_rows": 0}


def test_a_publish_states_what_its_split_pairs_records(tmp_path):
    from test_publish_fixtures import make_home

    from pipelines.publish.config import PublishConfig
    from pipelines.publish.version import publish_dataset

    home = make_home(tmp_path / "home", num_rankings=40, seed=7)
    table = pq.read_table(home.table_file("split_pairs"))
    record = json.dumps({"heldout_fraction": 0.2, "unique_prompts": 9}).encode()
    schema = get_schema("split_pairs")
    write_parquet_atomic(table, home.table_file("split_pairs"), schema.with_metadata({SETTINGS_METADATA: record}))
    card = (publish_dataset(home, PublishConfig(workers=1, fsync=False)).path / "README.md").read_text()
    assert "`splits.heldout_fraction` = 20% of the users" in card and "up to\n9 prompts each" in card


# --- the raw zone: exporter markers in one line, days that have not begun ------------------------------------------


def _raw_home(root: Path) -> DataHome:
    home = DataHome(root)
    logs = home.raw_logs
    for day in ("2023-03-01", "2023-03-02", "2023-03-03"):
        (logs / f"dt={day}").mkdir(parents=True)
        for table in ("users", "images", "rankings", "downloads"):
            (logs / f"dt={day}" / f"{table}.jsonl.gz").write_bytes(b"")
    (logs / "dt=2023-03-01" / "_SUCCESS").write_bytes(b"")
    (logs / "dt=2023-03-02" / "_SUCCESS").write_bytes(b"")
    (logs / "dt=2023-03-02" / "._SUCCESS.crc").write_bytes(b"\0" * 8)
    (logs / "dt=2023-03-03" / "_SUCCESS").write_bytes(b"")
    (logs / "dt=2023-03-03" / "notes.txt").write_bytes(b"x")        # not only a marker: named on its own line
    (logs / "README").write_bytes(b"x")
    return home


def test_the_scan_names_marker_only_folders_in_one_line(tmp_path):
    from pipelines.ingest import rawrecord

    home = _raw_home(tmp_path / "home")
    lines = home.scan_raw_zone().skipped_lines()
    assert len(lines) == 3, lines
    assert [line for line in lines if line.startswith("raw/app_logs/dt=2023-03-0")] == [
        line for line in lines if line.startswith("raw/app_logs/dt=2023-03-03:")]
    assert any(line.startswith("raw/app_logs/README:") for line in lines)
    assert lines[-1].startswith("3 exporter marker file(s) (._SUCCESS.crc, _SUCCESS) in 2 folder(s) "
                                "(raw/app_logs/dt=2023-03-01, ...): left alone")
    warned: list[str] = []
    rawrecord.note_raw_zone(home, warned.append, record=False)     # what `pickapic build` prints first: the same
    assert warned == [f"skipped {line}" for line in lines]
    assert not home.warehouse.exists()                               # record=False writes nothing


def test_build_selection_names_a_day_that_has_not_begun_with_or_without_a_range(tmp_path):
    from dagster_project.build import BuildError, build_selection

    home = _raw_home(tmp_path / "home")
    future = (dt.datetime.now(dt.timezone.utc).date() + dt.timedelta(days=30)).isoformat()
    shutil.copytree(home.raw_logs / "dt=2023-03-01", home.raw_logs / f"dt={future}")
    warned: list[str] = []
    assert build_selection(home, warn=warned.append) is None        # the whole home: the plan picks the days
    assert any(f"raw day(s) {future} lie in the future" in line for line in warned), warned
    assert sum("exporter marker file(s)" in line for line in warned) == 1
    warned.clear()
    assert build_selection(home, "2023-03-02", None, warned.append) == ["2023-03-02", "2023-03-03"]
    assert any(future in line for line in warned)
    with pytest.raises(BuildError, match="lie in the future"):
        build_selection(home, future, None, warned.append)
    empty = DataHome(tmp_path / "empty")
    empty.raw_logs.mkdir(parents=True)
    with pytest.raises(BuildError, match="no raw partitions"):       # never "up to date" for a home of no day
        build_selection(empty, warn=warned.append)


# --- the plan's lines: the model's reports -----------------------------------------------------------------------------


def test_the_plan_names_every_asset_the_model_run_materializes():
    from dagster_project.build import describe_plan
    from dagster_project.staleness import BuildPlan, PlannedRun

    plan = BuildPlan(days=["2023-03-01"], runs=[
        PlannedRun("daily_partition_job", ["ingest_day", "fingerprint_images"], "2023-03-01", ["ingest: never built"]),
        PlannedRun("rebuild_dataset_job", ["duplicate_clusters", "decisions", "pairs", "split_pairs",
                                           "published_dataset"], None, ["dedup: never built"]),
        PlannedRun("train_model_job", ["preference_model"], None, ["model: never built"]),
    ], observations={}, expected={})
    assert describe_plan(plan) == [
        "2023-03-01: ingest_day, fingerprint_images (ingest: never built)",
        "rebuild: duplicate_clusters, decisions, pairs, split_pairs, published_dataset (dedup: never built)",
        "model: preference_model, best_of_n, generator_leaderboard, preference_model_eval (model: never built)",
    ]
    assert plan.describe()[2] == "model: preference_model (model: never built)"     # the plan's own, unchanged
    assert describe_plan(BuildPlan(days=[], runs=[], observations={}, expected={})) == []


# --- the CLI on a built home: every path names the markers once and the day to come -----------------------------------


def _pickapic(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("PICKAPIC_HOME", None)
    done = subprocess.run([sys.executable, "-m", "dagster_project.cli", *args], capture_output=True, text=True,
                          env=env, cwd=str(ROOT), timeout=600, check=False)
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done


def test_every_build_path_names_markers_once_and_a_day_to_come(built_home, tmp_path):
    with fast_folder(tmp_path, prefix="pickapic-fix30d-") as folder:
        root = copy_home(built_home, folder / "home").root
        logs = root / "raw" / "app_logs"
        days = sorted(p for p in logs.iterdir() if p.name.startswith("dt="))
        future = (dt.datetime.now(dt.timezone.utc).date() + dt.timedelta(days=400)).isoformat()
        shutil.copytree(days[-1], logs / f"dt={future}")
        for day in days:
            (day / "_SUCCESS").write_bytes(b"")

        def check(done: subprocess.CompletedProcess) -> None:
            lines = done.stderr.splitlines()
            assert [line for line in lines if "_SUCCESS" in line and "exporter marker" not in line] == [], lines
            grouped = [line for line in lines if "exporter marker file(s)" in line]
            assert len(grouped) == 1 and f"in {len(days)} folder(s)" in grouped[0], lines
            assert sum(f"raw day(s) {future} lie in the future" in line for line in lines) == 1, lines

        planned = _pickapic("build", "--home", str(root))              # the full plan: nothing to run
        check(planned)
        assert f"fresh ({len(days)} raw days, 1 not begun yet, checked in" in planned.stdout, planned.stdout
        stamped = _pickapic("build", "--home", str(root))              # the build stamp's answer
        check(stamped)
        assert "up to date: nothing changed" in stamped.stdout
        dry = _pickapic("build", "--home", str(root), "--dry-run")
        check(dry)
        assert "up to date: every asset" in dry.stdout


# --- the README's data home layout -----------------------------------------------------------------------------------


def test_the_layout_names_the_locks_and_staging_the_code_makes():
    from dagster_project.serve import daemon_lock_file
    from formats.locks import CACHE_WRITERS_LOCK
    from formats.settings import settings_lock_file
    from pipelines.curation.writing import curation_lock_file
    from pipelines.features.config import FeaturesConfig
    from pipelines.features.stage import staging_lock_file
    from training.runs import RUNS_LOCK

    block = (ROOT / "README.md").read_text(encoding="utf-8").split("## Data home layout", 1)[1].split("```", 2)[1]
    home = DataHome(Path("/HOME"))
    staging = FeaturesConfig().staging_url(home.root, "DAY")        # the default: HOME/.staging/features/dt=DAY
    for path in (settings_lock_file(home.root), curation_lock_file(home), daemon_lock_file(home),
                 home.locks / RUNS_LOCK, home.locks / f"{RUNS_LOCK}.record", home.locks / CACHE_WRITERS_LOCK,
                 staging_lock_file(home, staging), Path(staging)):
        assert str(path).removeprefix("/HOME/") in block, path
