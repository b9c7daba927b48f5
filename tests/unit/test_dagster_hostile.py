"""Defects of the Dagster layer found by a hostile review, each run through a real Dagster materialization
where the behaviour is Dagster's (run config typed in the launchpad, a UI materialization of a partition).

Homes and instances live in ``fast_tmp`` (tmpfs when the machine has one: Dagster's SQLite storage fsyncs
every event, about 15,000 fsyncs for this module)."""
from __future__ import annotations

import os
from pathlib import Path

import dagster as dg
import pyarrow.parquet as pq
import pytest
from test_features_fixtures import fake_detector, png, write_day
from test_ingest_fixtures import clean_home

from dagster_project.assets.features import fingerprint_images
from dagster_project.assets.ingest import ingest_day_assets
from dagster_project.resources import PickapicHome
from formats.home import DataHome
from pipelines.features.config import STAGING_MARKER, FeaturesConfig, StagingRefused
from pipelines.features.stage import build_features, day_lock_file
from pipelines.features.staging import remove_dir, reset_dir

DAY = "2023-03-01"


@pytest.fixture()
def instance(fast_tmp):
    (fast_tmp / "instance").mkdir()  # not fast_tmp/dagster: fast_tmp would look like a home holding ./home
    with dg.instance_for_test(temp_dir=str(fast_tmp / "instance")) as instance:
        yield instance


def _features_home(fast_tmp: Path) -> DataHome:
    home = DataHome(fast_tmp / "home")
    home.raw_logs.mkdir(parents=True)
    write_day(home, DAY, {"a": png(1), "b": png(2)})
    (home.root / "warehouse" / "rankings" / f"dt={DAY}").mkdir(parents=True)
    (home.root / "warehouse" / "rankings" / f"dt={DAY}" / "part-0.parquet").write_bytes(b"keep me")
    return home


def _tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# 1. features.staging is deleted and recreated by the stage: only a folder the stage created may be


def test_launchpad_staging_at_the_warehouse_is_refused_and_nothing_is_deleted(fast_tmp, instance):
    home = _features_home(fast_tmp)
    before = _tree(home.root)
    instance.add_dynamic_partitions("raw_days", [DAY])
    result = dg.materialize(
        [fingerprint_images], instance=instance, partition_key=DAY, raise_on_error=False,
        resources={"data_home": PickapicHome(root=str(home.root))},
        run_config={"ops": {"fingerprint_images": {"config": {"staging": str(home.root / "warehouse"),
                                                              "workers": 0}}}})
    assert not result.success
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    assert "lies inside" in str(failure.event_specific_data.error) and ".staging/features" in str(failure.event_specific_data.error)
    assert _tree(home.root) == before     # every table still there, nothing written


@pytest.mark.parametrize("where", ["home", "warehouse", "parent", "others", "symlink", "file", "device",
                                   "area_itself", "nested_in_area"])
def test_a_staging_folder_the_stage_did_not_create_is_refused(fast_tmp, where):
    home = _features_home(fast_tmp)
    others = fast_tmp / "someones_files"
    others.mkdir()
    (others / "thesis.txt").write_text("mine\n")
    (fast_tmp / "link").symlink_to(others)
    (fast_tmp / "a_file").write_text("x")
    staging = {"home": home.root, "warehouse": home.root / "warehouse", "parent": fast_tmp,
               "others": others, "symlink": fast_tmp / "link", "file": fast_tmp / "a_file", "device": Path("/dev/null"),
               "area_itself": home.root / ".staging" / "features",
               "nested_in_area": home.root / ".staging" / "features" / "x" / "y"}[where]
    before = _tree(fast_tmp)
    with pytest.raises(StagingRefused):
        build_features(home, DAY, FeaturesConfig(workers=0, staging=str(staging)), detector_factory=fake_detector)
    assert _tree(fast_tmp) == before
    assert (others / "thesis.txt").read_text() == "mine\n"


def test_the_filesystem_root_is_refused_without_running_anything(fast_tmp):
    # checked on the config alone: a test must never hand "/" to code that may delete it
    home = _features_home(fast_tmp)
    with pytest.raises(StagingRefused, match="is or holds"):
        FeaturesConfig(staging="/").validate(home.root)
    with pytest.raises(StagingRefused, match="bucket's root"):
        FeaturesConfig(staging="gs://bucket/").validate(home.root)


def test_a_symlinked_staging_area_is_refused(fast_tmp):
    home = _features_home(fast_tmp)
    (fast_tmp / "elsewhere").mkdir()
    (fast_tmp / "elsewhere" / "features").mkdir()
    (fast_tmp / "elsewhere" / "features" / f"dt={DAY}").mkdir()
    (fast_tmp / "elsewhere" / "features" / f"dt={DAY}" / "precious").write_text("x")
    (home.root / ".staging").symlink_to(fast_tmp / "elsewhere")
    with pytest.raises(StagingRefused, match="is a symbolic link"):
        build_features(home, DAY, FeaturesConfig(workers=0), detector_factory=fake_detector)
    assert (fast_tmp / "elsewhere" / "features" / f"dt={DAY}" / "precious").exists()


@pytest.mark.parametrize("where", ["inside_home", "holds_home", "file"])
def test_a_blob_base_holding_or_inside_the_home_or_not_a_folder_is_refused(fast_tmp, where):
    home = _features_home(fast_tmp)
    (fast_tmp / "a_file").write_text("x")
    base = {"inside_home": home.root / "warehouse", "holds_home": fast_tmp, "file": fast_tmp / "a_file"}[where]
    with pytest.raises(StagingRefused):
        FeaturesConfig(blob_base=str(base)).validate(home.root)


def test_a_new_staging_folder_or_the_default_area_still_work_and_only_they_are_removed(fast_tmp):
    home = _features_home(fast_tmp)
    scratch = fast_tmp / "scratch" / "run1"      # a new folder outside the home: created, marked, removed
    report = build_features(home, DAY, FeaturesConfig(workers=0, staging=str(scratch)), detector_factory=fake_detector)
    assert report.processed == 2 and not scratch.exists() and (fast_tmp / "scratch").is_dir()
    # an interrupted run's leftover in the stage's own area (no marker: an older version's) is replaced
    leftover = home.root / ".staging" / "features" / "dt=2023-03-02"
    leftover.mkdir(parents=True)
    (leftover / "todo.parquet").write_text("half")
    write_day(home, "2023-03-02", {"c": png(3)})
    build_features(home, "2023-03-02", FeaturesConfig(workers=0), detector_factory=fake_detector)
    # nothing staged is left: only the staging folders' lock files, beside them in the stage's own area
    left = sorted(str(p.relative_to(home.root)) for p in (home.root / ".staging").rglob("*"))
    assert left and all(name == ".staging/features" or (name.startswith(".staging/features/.dt=")
                                                     and name.endswith(".lock")) for name in left), left


def test_reset_and_remove_delete_only_a_marked_folder(fast_tmp):
    base = str(fast_tmp / "base")
    ours, theirs = fast_tmp / "ours", fast_tmp / "theirs"
    reset_dir(str(ours), base)
    assert (ours / STAGING_MARKER).is_file()
    (ours / "todo.parquet").write_text("x")
    reset_dir(str(ours), base)                       # emptied and marked again
    assert os.listdir(ours) == [STAGING_MARKER]
    remove_dir(str(ours), base)
    assert not ours.exists()
    theirs.mkdir()
    (theirs / "keep").write_text("x")
    for call in (reset_dir, remove_dir):
        with pytest.raises(StagingRefused, match="not created by the feature stage"):
            call(str(theirs), base)
    assert (theirs / "keep").exists()


# 2. a UI materialization of a partition whose raw folder is gone must not replace its tables with empty ones


def _ingest(home: DataHome, instance, day: str):
    return dg.materialize([ingest_day_assets], instance=instance, partition_key=day, raise_on_error=False,
                          resources={"data_home": PickapicHome(root=str(home.root))})


def test_materializing_a_day_whose_raw_folder_is_gone_fails_and_rewrites_nothing(fast_tmp, instance):
    day = "2023-03-01"
    home, _ = clean_home(fast_tmp, day)
    instance.add_dynamic_partitions("raw_days", [day])
    assert _ingest(home, instance, day).success
    built = {p: p.read_bytes() for p in sorted((home.root / "warehouse").rglob("*.parquet"))}
    rows = pq.read_table(home.partition_file("rankings", day)).num_rows
    assert rows > 0
    materializations = len(instance.fetch_materializations(dg.AssetKey("rankings"), limit=100).records)
    os.rename(home.raw_day(day), fast_tmp / "archived")        # raw-zone retention moved the day away

    result = _ingest(home, instance, day)
    assert not result.success
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    message = str(failure.event_specific_data.error)
    assert "its raw folder is gone: keep what was built from it" in message and "nothing was rewritten" in message
    assert {p: p.read_bytes() for p in sorted((home.root / "warehouse").rglob("*.parquet"))} == built
    assert len(instance.fetch_materializations(dg.AssetKey("rankings"), limit=100).records) == materializations


# 4. the launchpad's resources.data_home.config.root is checked as the CLI checks --home


@pytest.mark.parametrize("where", ["others", "inside_home"])
def test_a_launchpad_home_root_that_is_someones_folder_or_inside_a_home_is_refused(fast_tmp, instance, where):
    day = "2023-03-01"
    home, _ = clean_home(fast_tmp, day)
    victim = fast_tmp / "victim_docs" if where == "others" else home.root / "warehouse" / "nested"
    victim.mkdir(parents=True)
    (victim / "thesis.txt").write_text("my files\n")
    instance.add_dynamic_partitions("raw_days", [day])
    result = dg.materialize([ingest_day_assets], instance=instance, partition_key=day, raise_on_error=False,
                            resources={"data_home": PickapicHome.configure_at_launch()},
                            run_config={"resources": {"data_home": {"config": {"root": str(victim)}}}})
    assert not result.success
    assert "resources.data_home.config.root" in str([e.event_specific_data.error for e in result.all_events
                                                     if e.is_step_failure])
    assert _tree(victim) == ["thesis.txt"]


def test_a_launchpad_home_root_that_is_a_home_or_a_new_folder_works(fast_tmp, instance):
    day = "2023-03-01"
    home, _ = clean_home(fast_tmp, day)
    instance.add_dynamic_partitions("raw_days", [day])
    result = dg.materialize([ingest_day_assets], instance=instance, partition_key=day,
                            resources={"data_home": PickapicHome.configure_at_launch()},
                            run_config={"resources": {"data_home": {"config": {"root": str(home.root)}}}})
    assert result.success and home.partition_file("rankings", day).is_file()


# 5. two runs of one day's feature stage (the sensor's and a UI materialization) must not share one staging


_HOLD = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o666)
fcntl.flock(fd, fcntl.LOCK_EX)
os.ftruncate(fd, 0); os.pwrite(fd, f"{os.getpid()}\\n".encode(), 0)
print("held", flush=True)
sys.stdin.read()
"""


def _other_run_holds(lock: Path):
    """A process holding ``lock`` as a running feature stage does, until its stdin closes."""
    import subprocess
    import sys

    lock.parent.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(lock)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_second_run_of_a_days_feature_stage_fails_at_once_and_leaves_the_first_ones_staging(fast_tmp, instance):
    home = _features_home(fast_tmp)
    staging = home.root / ".staging" / "features" / f"dt={DAY}"     # the first run's, in the middle of its Beam stage
    staging.mkdir(parents=True)
    (staging / STAGING_MARKER).touch()
    (staging / "todo.parquet").write_bytes(b"being read by the first run's workers")
    holder = _other_run_holds(day_lock_file(home, DAY))
    try:
        instance.add_dynamic_partitions("raw_days", [DAY])
        result = dg.materialize(
            [fingerprint_images], instance=instance, partition_key=DAY, raise_on_error=False,
            resources={"data_home": PickapicHome(root=str(home.root))},
            run_config={"ops": {"fingerprint_images": {"config": {"workers": 0}}}})
    finally:
        holder.stdin.close()
        holder.wait()
    assert not result.success
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    assert f"the feature stage of {DAY} is already running (pid {holder.pid} holds" in str(failure.event_specific_data.error)
    assert (staging / "todo.parquet").read_bytes() == b"being read by the first run's workers"
    assert not home.partition_file("image_features", DAY).exists()
    # once the first run has finished, the day runs (the lock died with its holder)
    report = build_features(home, DAY, FeaturesConfig(workers=0), detector_factory=fake_detector)
    assert report.processed == 2 and not staging.exists()


def test_two_days_sharing_a_staging_folder_from_the_settings_do_not_run_at_once(fast_tmp):
    from pipelines.features.stage import DayAlreadyRunning, hold_day_lock

    home = _features_home(fast_tmp)
    shared = str(fast_tmp / "scratch")
    # another day's run using the same staging folder holds it
    with hold_day_lock(home, "2023-03-02", shared), pytest.raises(DayAlreadyRunning, match="using the staging folder"):
        build_features(home, DAY, FeaturesConfig(workers=0, staging=shared), detector_factory=fake_detector)
    assert build_features(home, DAY, FeaturesConfig(workers=0, staging=shared),
                          detector_factory=fake_detector).processed == 2


# 6. every step's run config is checked before the run's first step writes anything


@pytest.mark.parametrize("bad", [{"jpeg_quality": 500}, {"max_side": 4, "min_side": 8}, {"staging": "WAREHOUSE"}])
def test_a_bad_value_for_a_later_step_fails_the_first_step_before_it_writes(fast_tmp, instance, bad):
    day = "2023-03-01"
    home, _ = clean_home(fast_tmp, day)
    bad = {k: str(home.root / "warehouse") if v == "WAREHOUSE" else v for k, v in bad.items()}
    instance.add_dynamic_partitions("raw_days", [day])
    result = dg.materialize([ingest_day_assets, fingerprint_images], instance=instance, partition_key=day,
                            raise_on_error=False, resources={"data_home": PickapicHome(root=str(home.root))},
                            run_config={"ops": {"fingerprint_images": {"config": {"workers": 0, **bad}}}})
    assert not result.success
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    assert failure.step_key == "ingest_day" and "run config of fingerprint_images" in str(failure.event_specific_data.error)
    assert not (home.root / "warehouse" / "rankings").exists()          # the ingest wrote nothing
    assert not [e for e in result.all_events if e.event_type_value == "ASSET_MATERIALIZATION"]
