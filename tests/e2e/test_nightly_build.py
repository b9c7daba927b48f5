"""Day 1 to day 365: default settings publish a trainable version, builds do only what is missing or stale.

A 40-user, 3-day home is built once with default settings (no settings file) by a real ``pickapic build``
process; each test works on a private copy. A fourth simulated day is kept aside to land later.
The homes live on tmpfs when the machine has one (``scratch``, ``tests/fast_tmp.py``).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import dagster as dg
import pytest

from dagster_project.staleness import record_observations
from formats.home import DataHome
from simulator import SimConfig, simulate
from tests.cli_forkserver import forked_cli, run_python  # noqa: F401 (fixture)
from tests.e2e.conftest import copy_home
from tests.fast_tmp import build_once

REPO = Path(__file__).resolve().parents[2]
SIM = SimConfig(days=4, users=40, rankings_per_day=60, image_size=64, seed=5)
DAYS = [SIM.day(i) for i in range(4)]
SPLITS = {"train", "validation", "test", "validation_unique", "test_unique"}


pytestmark = pytest.mark.usefixtures("forked_cli")   # the tests' commands: children of a fork server


def pickapic(home: DataHome, *args: str, fresh: bool = False) -> subprocess.CompletedProcess:
    """Run `pickapic <args> --home HOME` as its own process (no inherited DAGSTER_HOME): forked from the module's
    server (``tests/cli_forkserver.py``: the imports paid once), or with ``fresh`` a new interpreter."""
    env = {k: v for k, v in os.environ.items() if k not in ("PICKAPIC_HOME", "DAGSTER_HOME", "PICKAPIC_FAULT")}
    return run_python(["-m", "dagster_project.cli", args[0], "--home", str(home.root), *args[1:]], env=env, cwd=REPO,
                      fresh=fresh)


def _instance(home: DataHome) -> dg.DagsterInstance:
    return dg.DagsterInstance.from_config(str(home.dagster_home))


def _runs(home: DataHome) -> list:
    with _instance(home) as instance:
        return list(instance.get_runs())


def _materializations(home: DataHome, asset: str) -> dict[str | None, int]:
    """partition -> number of materializations recorded."""
    with _instance(home) as instance:
        records = instance.fetch_materializations(dg.AssetKey(asset), limit=10_000).records
    counts: dict[str | None, int] = {}
    for record in records:
        counts[record.partition_key] = counts.get(record.partition_key, 0) + 1
    return counts


def _latest(home: DataHome) -> str:
    return os.readlink(home.datasets / "latest")


def _build_night(folder: Path) -> None:
    home = DataHome(folder / "home")
    simulate(home, SIM)
    shutil.move(str(home.raw_day(DAYS[3])), folder / "day4")
    done = pickapic(home, "build", fresh=True)   # a fresh interpreter: its own hash seed, as every command had
    if done.returncode != 0:
        raise RuntimeError(f"pickapic build exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")


@pytest.fixture(scope="session")
def night_base(tmp_path_factory) -> tuple[DataHome, Path]:
    """(a home with days 1-3 built by `pickapic build` with default settings, the raw folder of day 4)."""
    folder = build_once(tmp_path_factory, "night-home", _build_night)
    return DataHome(folder / "home"), folder / "day4"


def test_default_settings_publish_every_split_with_the_minimum(night_base):
    home, _ = night_base
    assert not (home.root / "pickapic.toml").exists()  # nothing but the defaults
    manifest = json.loads((home.datasets / "latest" / "manifest.json").read_text())
    pairs = {split: info["pairs"] for split, info in manifest["splits"].items()}
    assert set(pairs) == SPLITS and all(pairs.values()), pairs
    assert pairs["validation_unique"] >= 10 and pairs["test_unique"] >= 10, pairs
    with _instance(home) as instance:
        assert sorted(instance.get_dynamic_partitions("raw_days")) == DAYS[:3]  # the data's calendar


def test_unchanged_home_runs_nothing(night_base, scratch):
    home = copy_home(night_base[0], scratch / "home")
    before, latest = len(_runs(home)), _latest(home)
    full = pickapic(home, "build")  # a copy has new inodes: this one plans against Dagster's records
    assert full.returncode == 0, full.stderr
    assert "up to date: every asset" in full.stdout and "nothing ran" in full.stdout
    fast = pickapic(home, "build")
    assert fast.returncode == 0 and "up to date: nothing changed" in fast.stdout, fast.stdout
    assert len(_runs(home)) == before and _latest(home) == latest


def test_new_day_then_reexports(night_base, scratch):
    base, spare = night_base
    home = copy_home(base, scratch / "home")
    before = {day: n for day, n in _materializations(home, "ingest_files").items()}
    first_version = _latest(home)
    shutil.copytree(spare, home.raw_day(DAYS[3]))
    added = pickapic(home, "build")
    assert added.returncode == 0, added.stderr
    runs = _runs(home)
    new = runs[: len(runs) - sum(before.values()) - 1]
    assert sorted((r.job_name, r.tags.get("dagster/partition")) for r in new) == [
        ("daily_partition_job", DAYS[3]), ("rebuild_dataset_job", None)]
    after = _materializations(home, "ingest_files")
    assert {day: after[day] for day in before} == before and after[DAYS[3]] == 1  # old days untouched
    assert _latest(home) != first_version

    # the same bytes exported again (a new mtime): nothing to do
    for path in home.raw_day(DAYS[1]).iterdir():
        path.write_bytes(path.read_bytes())
    count = len(_runs(home))
    same = pickapic(home, "build")
    assert same.returncode == 0 and "up to date" in same.stdout and len(_runs(home)) == count

    # changed bytes: Dagster sees the day stale, the build reruns that day and the rebuild
    import gzip

    rankings = home.raw_file(DAYS[1], "rankings")
    lines = gzip.decompress(rankings.read_bytes()).splitlines(keepends=True)
    rankings.write_bytes(gzip.compress(b"".join(lines[:-1]), mtime=0))  # the export lost its last line
    from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
    from dagster._core.loader import LoadingContextForTest

    from dagster_project.build import plan_only
    from dagster_project.definitions import defs

    plan = plan_only(home)
    assert [r.partition for r in plan.runs] == [DAYS[1], None]
    with _instance(home) as instance:
        record_observations(instance, plan.observations)  # what the raw-day sensor records
        resolver = CachingStaleStatusResolver(instance, defs.resolve_asset_graph(), LoadingContextForTest(instance))
        assert resolver.get_status(dg.AssetKey("rankings"), DAYS[1]) == StaleStatus.STALE
        assert resolver.get_status(dg.AssetKey("rankings"), DAYS[0]) == StaleStatus.FRESH
    changed = pickapic(home, "build")
    assert changed.returncode == 0, changed.stderr
    assert [(r.job_name, r.tags.get("dagster/partition")) for r in _runs(home)[:2]] == [
        ("rebuild_dataset_job", None), ("daily_partition_job", DAYS[1])]


def test_a_setting_changes_the_version_and_a_useless_version_is_never_published(night_base, scratch):
    home = copy_home(night_base[0], scratch / "home")
    original = _latest(home)
    smaller = pickapic(home, "build", "--set", "publish.max_samples_per_shard=25")
    assert smaller.returncode == 0, smaller.stderr
    assert "rebuild: published_dataset (publish: inputs changed" in smaller.stdout  # only publish reran
    assert _latest(home) != original
    back = pickapic(home, "build")  # the override was for one run: the file's settings come back
    assert back.returncode == 0 and _latest(home) == original, back.stdout

    refused = pickapic(home, "build", "--set", "splits.min_unique_rows=500")
    assert refused.returncode == 1
    assert "not enough data to publish: split 'validation_unique' has" in refused.stderr
    assert "fewer than the 500 required" in refused.stderr and f"latest stays at {original}" in refused.stderr
    assert _latest(home) == original

    bad = pickapic(home, "build", "--set", "dedup.k=99")
    assert bad.returncode == 1 and "dedup.k = 99 (--set) is out of range: allowed an integer, 0 <= value <= 63" in bad.stderr


def _keep_rankings_of(home: DataHome, day: str, users: int) -> set[int]:
    """Rewrite a raw day's rankings so that only the first ``users`` ranking users remain (bad lines stay)."""
    import gzip

    path = home.raw_file(day, "rankings")
    kept_users: list[int] = []
    out = []
    for line in gzip.decompress(path.read_bytes()).splitlines(keepends=True):
        try:
            user = json.loads(line).get("user_id")
        except (ValueError, AttributeError):
            out.append(line)
            continue
        if user not in kept_users and len(kept_users) < users and isinstance(user, int):
            kept_users.append(user)
        if user in kept_users:
            out.append(line)
    path.write_bytes(gzip.compress(b"".join(out), mtime=0))
    return set(kept_users)


def test_three_users_get_a_plain_not_enough_data(scratch):
    home = DataHome(scratch / "home")
    # 20 rankings (68 images) rather than 40 (140): the claim is about 3 users, not the volume, and under the
    # features stage's in_process_below (128) the day runs without starting 2 Beam worker processes (~3 CPU-s)
    simulate(home, SimConfig(days=1, users=6, rankings_per_day=20, image_size=64, seed=2))
    assert len(_keep_rankings_of(home, home.raw_days()[0], 3)) == 3
    done = pickapic(home, "build")
    assert done.returncode == 1
    assert "error: not enough data to publish: too few users: the home has 3 users" in done.stderr
    assert "needs at least 10 (splits.min_users)" in done.stderr
    assert "Nothing was published; no version has been published yet." in done.stderr
    assert not (home.datasets / "latest").exists()
    assert "Traceback" not in done.stderr


def test_demo_then_build_keeps_the_demo_settings(built_home, scratch):
    home = copy_home(built_home, scratch / "home")
    settings = (home.root / "pickapic.toml").read_text()
    assert "heldout_fraction = 0.3" in settings and "max_steps = 30" in settings
    before, latest = len(_runs(home)), _latest(home)
    done = pickapic(home, "build")
    assert done.returncode == 0 and "up to date" in done.stdout, done.stdout + done.stderr
    assert len(_runs(home)) == before and _latest(home) == latest
    assert (home.root / "pickapic.toml").read_text() == settings
