"""fix25g: three of review rev25g's defects (tests/unit/test_hostile_rev25g.py holds the review's own tests).

- a run refused at launch keeps no credential in the run storage: its stored config is scrubbed
  (``dagster_project.coordinator.scrub_refused_run``), and ``HOME/dagster/history/runs.db`` is read by no other
  account (the group's bits kept);
- an untrusted ``.partial-<version>`` staging this account cannot remove (a group member's, 0700) is moved aside to
  a ``.deleting-<version>[.N]`` name that ``sweep_stale`` handles, and the version is written afresh;
- a settings value holding a URL's credential is shown redacted and makes the settings file private.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.storage.runs.sqlite.sqlite_run_storage import SqliteRunStorage

from dagster_project.build import use_home
from dagster_project.coordinator import RunConfigRefused, scrub_refused_run, scrubbed_run_config
from formats.home import DataHome

PASSWORD = "Fix25gPw"
VERSION = "2023-03-02-784ff62fe0"


@pytest.fixture
def umask_kept():
    old = os.umask(0o022)
    os.umask(old)
    yield
    os.umask(old)


# ----------------------------------------------------------------------------------- the refused run's config


def test_a_refused_runs_config_keeps_its_values_but_no_credential() -> None:
    given = {"resources": {"app_db": {"config": {
        "dsn": f"host=db dbname=pickapic user=ro password={PASSWORD}",
        "image_store": f"https://user:{PASSWORD}@store.example/images"}},
        "data_home": {"config": {"root": {"env": "PICKAPIC_HOME"}}}},
        "ops": {"published_dataset": {"config": {"keep_versions": 0}},
                "image_features": {"config": {"beam_args": f"--runner=DirectRunner --s3_secret={PASSWORD}",
                                              "blob_base": f"s3://KEY:{PASSWORD}@bucket/blobs"}},
                "other": {"config": {"names": ["plain", f"https://x/?sig={PASSWORD}"]}}}}
    scrubbed = scrubbed_run_config(given)
    assert PASSWORD not in repr(scrubbed)
    assert scrubbed["ops"]["published_dataset"] == {"config": {"keep_versions": 0}}
    assert scrubbed["resources"]["data_home"] == {"config": {"root": {"env": "PICKAPIC_HOME"}}}
    assert scrubbed["resources"]["app_db"]["config"]["dsn"].startswith("*** (removed")
    assert scrubbed["resources"]["app_db"]["config"]["image_store"] == "https://user:***@store.example/images"
    assert scrubbed["ops"]["image_features"]["config"]["beam_args"] == "--runner=*** --s3_secret=***"
    assert scrubbed["ops"]["other"]["config"]["names"][0] == "plain"
    # a DSN without a password, or one that does not parse (it cannot be told free of one)
    assert scrubbed_run_config({"resources": {"app_db": {"config": {"dsn": "host=db dbname=x"}}}}) == \
        {"resources": {"app_db": {"config": {"dsn": "host=db dbname=x"}}}}
    unparsed = scrubbed_run_config({"resources": {"app_db": {"config": {"dsn": f"host='db password={PASSWORD}"}}}})
    assert PASSWORD not in repr(unparsed)


@pytest.mark.parametrize("name, value", [("blob_base", f"s3://KEY:{PASSWORD}@bucket/blobs"),
                                         ("beam_args", f"--runner=DirectRunner --s3_secret_access_key={PASSWORD}")])
def test_a_stage_value_holding_a_credential_is_refused_at_launch(tmp_path, name, value) -> None:
    from dagster_project.coordinator import check_launch

    home = tmp_path / "home"
    base = {"resources": {"data_home": {"config": {"root": str(home)}}}}
    with pytest.raises(RunConfigRefused, match=f"ops.fingerprint_images.config.{name} holds a credential") as refused:
        check_launch({**base, "ops": {"fingerprint_images": {"config": {name: value}}}})
    assert PASSWORD not in str(refused.value)
    check_launch({**base, "ops": {"fingerprint_images": {"config": {"blob_base": "s3://bucket/blobs"}}}})


def _instance_with_run(tmp_path: Path, run_config: dict) -> tuple[DataHome, dg.DagsterInstance, dg.DagsterRun]:
    home = DataHome(tmp_path / "home")
    use_home(home)
    instance = dg.DagsterInstance.from_config(str(home.dagster_home))
    run = dg.DagsterRun(job_name="rebuild_dataset_job", run_config=run_config)
    # stored whole, as Dagster's own run storage stores it (an instance configured elsewhere): the home's own
    # refuses a run holding a credential and stores nothing (review rev25l; tests/unit/test_fix25j.py)
    SqliteRunStorage.add_run(instance.run_storage, run)
    return home, instance, run


def _holding(home: DataHome, text: str) -> list[str]:
    return sorted(str(path.relative_to(home.dagster_home)) for path in home.dagster_home.rglob("*")
                  if path.is_file() and text.encode() in path.read_bytes())


def test_the_coordinator_scrubs_a_refused_run_and_leaves_no_byte_of_the_password(tmp_path, env_kept) -> None:
    dsn = f"host=db.internal dbname=pickapic user=ro password={PASSWORD}"
    home, instance, run = _instance_with_run(tmp_path, {
        "resources": {"app_db": {"config": {"dsn": dsn}}},
        "ops": {"published_dataset": {"config": {"keep_versions": 3}}}})
    with instance:
        assert _holding(home, PASSWORD) == ["history/runs.db"]
        with pytest.raises(RunConfigRefused, match="holds a password") as refused:
            instance.run_coordinator.submit_run(dg.SubmitRunContext(run, workspace=None))
        assert PASSWORD not in str(refused.value)
        kept = instance.get_run_by_id(run.run_id)
        assert kept is not None                                          # the run's page still shows what was launched
        assert kept.run_config["ops"] == {"published_dataset": {"config": {"keep_versions": 3}}}
        assert kept.run_config["resources"]["app_db"]["config"]["dsn"].startswith("*** (removed")
    assert _holding(home, PASSWORD) == []                                # no old row's bytes in free pages or a WAL


def test_a_run_without_a_credential_is_left_as_it_was_stored(tmp_path, env_kept) -> None:
    home, instance, run = _instance_with_run(tmp_path, {"ops": {"published_dataset": {"config": {"keep_versions": 2}}}})
    with instance:
        before = (home.dagster_home / "history" / "runs.db").read_bytes()
        scrub_refused_run(instance, run)
        assert (home.dagster_home / "history" / "runs.db").read_bytes() == before
        assert instance.get_run_by_id(run.run_id).run_config == run.run_config


@pytest.mark.parametrize("umask, mode", [(0o022, 0o640), (0o002, 0o660), (0o077, 0o600)])
def test_the_run_database_is_read_by_no_other_account(tmp_path, env_kept, umask_kept, umask, mode) -> None:
    os.umask(umask)
    home = DataHome(tmp_path / "home")
    use_home(home)
    runs = home.dagster_home / "history" / "runs.db"
    assert stat.S_IMODE(runs.stat().st_mode) == mode
    index = home.dagster_home / "history" / "runs" / "index.db"
    assert stat.S_IMODE(index.stat().st_mode) == 0o666 & ~umask      # the other databases follow the umask as before


def test_a_run_database_made_before_loses_other_accounts_bits(tmp_path, env_kept, umask_kept) -> None:
    os.umask(0o022)
    home = DataHome(tmp_path / "home")
    use_home(home)
    runs = home.dagster_home / "history" / "runs.db"
    os.chmod(runs, 0o664)                       # as an earlier version (or a group-shared home's chmod) left it
    wal = runs.with_name("runs.db-wal")
    wal.write_bytes(b"")
    os.chmod(wal, 0o644)
    use_home(home)
    assert stat.S_IMODE(runs.stat().st_mode) == 0o660 and stat.S_IMODE(wal.stat().st_mode) == 0o640
    outside = tmp_path / "elsewhere.db"
    outside.write_bytes(b"")
    os.chmod(outside, 0o644)
    runs.unlink()
    runs.symlink_to(outside)                    # a link there is never changed through
    use_home(home)
    assert stat.S_IMODE(outside.stat().st_mode) == 0o644


# ------------------------------------------------------------------------------------- an untrusted staging


def _untrusted_staging(datasets: Path) -> Path:
    staging = datasets / f".partial-{VERSION}"
    (staging / "train").mkdir(parents=True)
    (staging / "train" / "000000.tar").write_bytes(b"half a shard")
    os.chmod(staging, 0o2770)                   # group-writable: never resumed
    return staging


def test_an_untrusted_staging_that_cannot_be_removed_is_moved_aside_and_swept_later(tmp_path, monkeypatch,
                                                                                     capsys) -> None:
    import shutil

    from pipelines.publish import versions

    datasets = tmp_path / "datasets"
    datasets.mkdir()
    staging = _untrusted_staging(datasets)
    (datasets / f".deleting-{VERSION}").mkdir()          # a retention's leftover: never renamed over
    real_rmtree = shutil.rmtree

    def refused(path, *args, **kwargs):                  # as for a group member's 0700 staging
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(shutil, "rmtree", refused)
    opened = versions.open_staging(datasets, VERSION)
    monkeypatch.setattr(shutil, "rmtree", real_rmtree)
    assert opened == staging and list(staging.iterdir()) == []
    assert stat.S_IMODE(staging.stat().st_mode) & 0o077 == 0
    aside = datasets / f".deleting-{VERSION}.1"
    assert (aside / "train" / "000000.tar").read_bytes() == b"half a shard"
    err = capsys.readouterr().err
    assert "moved aside" in err and aside.name in err
    assert versions.DELETING_NAME.fullmatch(aside.name)
    notes = versions.sweep_stale(datasets, staging.name)                 # a later publish removes it
    assert notes == [] and sorted(p.name for p in datasets.iterdir()) == [staging.name]


def test_an_untrusted_staging_that_can_neither_be_removed_nor_moved_is_refused(tmp_path, monkeypatch) -> None:
    import shutil

    from pipelines.publish import versions

    datasets = tmp_path / "datasets"
    datasets.mkdir()
    staging = _untrusted_staging(datasets)

    def refused(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(shutil, "rmtree", refused)
    monkeypatch.setattr(versions.os, "rename", refused)
    with pytest.raises(versions.StagingRefused, match="neither be removed .* nor moved aside"):
        versions.open_staging(datasets, VERSION)
    assert (staging / "train" / "000000.tar").read_bytes() == b"half a shard"


def test_an_untrusted_staging_this_account_can_remove_is_still_emptied_in_place(tmp_path, capsys) -> None:
    from pipelines.publish import versions

    datasets = tmp_path / "datasets"
    datasets.mkdir()
    staging = _untrusted_staging(datasets)
    assert versions.open_staging(datasets, VERSION) == staging and list(staging.iterdir()) == []
    assert sorted(p.name for p in datasets.iterdir()) == [staging.name]
    assert "its files were removed" in capsys.readouterr().err


# --------------------------------------------------------------------------------- a credential in a setting


def test_a_url_credential_in_a_setting_is_redacted_and_makes_the_file_private(tmp_path, capsys) -> None:
    from dagster_project.cli import main
    from formats.settings import SETTINGS_FILE, load

    home = tmp_path / "home"
    home.mkdir()
    settings = home / SETTINGS_FILE
    settings.write_text(f'[features]\nblob_base = "https://user:{PASSWORD}@store.example/blobs"\n')
    os.chmod(settings, 0o644)
    capsys.readouterr()
    assert main(["settings", "--home", str(home), "--section", "features"]) == 0
    out, err = capsys.readouterr()
    assert PASSWORD not in out + err
    assert "features.blob_base = 'https://user:***@store.example/blobs'" in out
    assert stat.S_IMODE(settings.stat().st_mode) == 0o600 and "chmod 600" in err
    assert load(home).config("features").blob_base.endswith(f"{PASSWORD}@store.example/blobs")   # used as it is


def test_public_fields_hide_a_url_credential_and_a_plain_url_leaves_the_file_as_it_is(tmp_path) -> None:
    from formats.settings import SETTINGS_FILE, load, public_fields

    home = tmp_path / "home"
    home.mkdir()
    settings = home / SETTINGS_FILE
    settings.write_text('[features]\nblob_base = "s3://bucket/blobs"\n')
    os.chmod(settings, 0o644)
    loaded = load(home)
    assert stat.S_IMODE(settings.stat().st_mode) == 0o644             # no credential: nothing to guard
    assert public_fields(loaded.config("features"))["blob_base"] == "s3://bucket/blobs"
    secret = loaded.config("features", {"blob_base": f"s3://KEY:{PASSWORD}@bucket/blobs"}, "test")
    assert public_fields(secret)["blob_base"] == "s3://KEY:***@bucket/blobs"
