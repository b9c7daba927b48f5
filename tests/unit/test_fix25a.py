"""Fixes of hostile review rev25a (secrets and permissions, December 6, 2026): the settings file holding a secret
is read by no other account (but a group-shared home's group where its owner gave it access), another account's
settings file is never taken over by `--write`, the launch check refuses an app database DSN holding a password,
a resumed publish staging that other accounts could write into is emptied, and a group-shared home's folders keep
their setgid bit when the publish and the trainer give them the umask's mode. No test here needs root (the
review's own tests switch accounts)."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from formats import settings as settings_module
from formats.files import honour_umask
from formats.settings import SETTINGS_FILE, SettingsError, load, write_settings
from pipelines import faults
from pipelines.publish.config import PublishConfig
from pipelines.publish.version import publish_dataset
from pipelines.publish.versions import give_modes, open_staging, staging_root
from tests.unit.test_publish_fixtures import history_home, write_split_pairs

SECRET = "fix25a secret value"
CONFIG = PublishConfig(workers=1, fsync=False, min_shards_per_split=1)


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _with_umask(mask: int, run):
    old = os.umask(mask)
    try:
        return run()
    finally:
        os.umask(old)


def _settings_with_secret(home: Path, mode: int) -> Path:
    home.mkdir(parents=True, exist_ok=True)
    path = home / SETTINGS_FILE
    path.write_text(f'[splits]\nmin_users = 12\n\n[curation]\npseudonym_secret = "{SECRET}"\n')
    os.chmod(path, mode)
    return path


def _setgid(folder: Path) -> Path:
    folder.mkdir(parents=True)
    os.chmod(folder, 0o2775)
    assert os.stat(folder).st_mode & stat.S_ISGID
    return folder


# --------------------------------------------------------------------------- settings: read side
def test_reading_a_world_readable_secret_settings_file_makes_it_0600_and_says_so(tmp_path: Path, capsys) -> None:
    path = _settings_with_secret(tmp_path / "home", 0o644)

    assert load(tmp_path / "home").config("curation").pseudonym_secret == SECRET

    err = capsys.readouterr().err
    assert _mode(path) == 0o600
    assert SETTINGS_FILE in err and f"chmod 600 {path}" in err and "0644" in err and SECRET not in err
    load(tmp_path / "home")
    assert capsys.readouterr().err == ""          # said once: the file is private now


def test_in_a_group_shared_home_the_group_keeps_its_access_and_other_accounts_lose_theirs(tmp_path: Path,
                                                                                        capsys) -> None:
    path = _settings_with_secret(_setgid(tmp_path / "home"), 0o664)

    load(tmp_path / "home")

    assert _mode(path) == 0o660
    assert "chmod 660" in capsys.readouterr().err


def test_a_settings_file_without_a_secret_keeps_its_mode_silently(tmp_path: Path, capsys) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / SETTINGS_FILE).write_text("[splits]\nmin_users = 12\n")
    os.chmod(home / SETTINGS_FILE, 0o644)

    load(home)

    assert _mode(home / SETTINGS_FILE) == 0o644 and capsys.readouterr().err == ""


def test_a_linked_settings_file_is_never_changed_through_but_is_named_with_the_chmod(tmp_path: Path,
                                                                                   capsys) -> None:
    target = _settings_with_secret(tmp_path / "elsewhere", 0o644)
    home = tmp_path / "home"
    home.mkdir()
    os.symlink(target, home / SETTINGS_FILE)

    load(home)

    err = capsys.readouterr().err
    assert _mode(target) == 0o644
    assert "symbolic link" in err and "chmod 600" in err and SECRET not in err


# --------------------------------------------------------------------------- settings: --write
def test_the_owners_write_keeps_a_group_shared_homes_group_read_access(tmp_path: Path) -> None:
    path = _settings_with_secret(_setgid(tmp_path / "home"), 0o640)

    _with_umask(0o002, lambda: write_settings(tmp_path / "home", {"splits.min_users": 10}))

    assert _mode(path) == 0o640 and "min_users = 10" in path.read_text() and SECRET in path.read_text()


def test_outside_a_group_shared_home_a_secret_holding_file_is_written_0600(tmp_path: Path) -> None:
    path = _settings_with_secret(tmp_path / "home", 0o640)

    _with_umask(0o002, lambda: write_settings(tmp_path / "home", {"splits.min_users": 10}))

    assert _mode(path) == 0o600


def test_another_accounts_secret_holding_settings_file_is_not_taken_over(tmp_path: Path, monkeypatch) -> None:
    """As another account (its uid faked: no root needed), `--write` is refused and the file left as it is."""
    path = _settings_with_secret(_setgid(tmp_path / "home"), 0o640)
    before = path.read_bytes()
    other = os.geteuid() + 1
    monkeypatch.setattr(settings_module.os, "geteuid", lambda: other)

    with pytest.raises(SettingsError, match=r"belongs to another account .*holds a secret.*left as it is") as refused:
        write_settings(tmp_path / "home", {"splits.min_users": 10})

    monkeypatch.undo()
    assert SECRET not in str(refused.value)
    assert path.read_bytes() == before and _mode(path) == 0o640


# --------------------------------------------------------------------------- launch check: the app database
@pytest.mark.parametrize("dsn", [
    "host=db.internal dbname=pickapic user=ro password=Fx25aPw",
    "postgresql://ro:Fx25aPw@db.internal/pickapic",
    "host=db.internal user=ro sslpassword=Fx25aPw",
    "dbname='host=db.internal password=Fx25aPw'",
    "host='db.internal password=Fx25aPw",                      # does not parse: cannot be told free of one
])
def test_a_run_config_dsn_holding_a_password_is_refused_at_launch_without_showing_it(
        dsn: str, tmp_path: Path, monkeypatch) -> None:
    from dagster_project.coordinator import RunConfigRefused, check_launch

    monkeypatch.setenv("PICKAPIC_HOME", str(tmp_path / "home"))
    with pytest.raises(RunConfigRefused, match=r"resources\.app_db\.config\.dsn .*PICKAPIC_APP_DB_DSN.*PGPASSWORD.*"
                                               r"password file") as refused:
        check_launch({"resources": {"app_db": {"config": {"dsn": dsn}}}})
    assert "Fx25aPw" not in str(refused.value) and "db.internal" not in str(refused.value)


def test_a_dsn_from_the_environment_or_without_a_password_passes_the_launch_check(tmp_path: Path,
                                                                                 monkeypatch) -> None:
    from dagster_project.coordinator import check_launch

    monkeypatch.setenv("PICKAPIC_HOME", str(tmp_path / "home"))
    check_launch({"resources": {"app_db": {"config": {"dsn": {"env": "PICKAPIC_APP_DB_DSN"}}}}})
    check_launch({"resources": {"app_db": {"config": {"dsn": "host=db.internal dbname=pickapic user=ro",
                                                      "image_store": "s3://bucket/images"}}}})


def test_an_image_store_url_holding_a_credential_is_refused_at_launch(tmp_path: Path, monkeypatch) -> None:
    from dagster_project.coordinator import RunConfigRefused, check_launch

    monkeypatch.setenv("PICKAPIC_HOME", str(tmp_path / "home"))
    with pytest.raises(RunConfigRefused, match="image_store holds a credential") as refused:
        check_launch({"resources": {"app_db": {"config": {"image_store": "https://blob.example/c?sig=Fx25aSig"}}}})
    assert "Fx25aSig" not in str(refused.value)


# --------------------------------------------------------------------------- publish staging
def test_a_new_staging_is_made_0700_and_keeps_a_setgid_parents_bit(tmp_path: Path) -> None:
    datasets = _setgid(tmp_path / "datasets")

    staging = _with_umask(0o002, lambda: open_staging(datasets, "2024-01-01-0123456789"))

    assert os.stat(staging).st_mode & 0o7777 == 0o2700


def test_a_staging_no_other_account_could_write_is_resumed(tmp_path: Path, monkeypatch) -> None:
    """Killed after its shards under umask 022 (0755 folders, this account's files): the rerun resumes them."""
    home, full = history_home(tmp_path / "h")
    write_split_pairs(home, full)

    def die(point: str) -> None:
        if point == "publish.after_shards":
            raise RuntimeError("killed")

    monkeypatch.setattr(faults, "maybe_crash", die)
    with pytest.raises(RuntimeError, match="killed"):
        _with_umask(0o022, lambda: publish_dataset(home, CONFIG))
    monkeypatch.undo()
    (staging,) = staging_root(home.datasets).glob(".partial-*")
    os.chmod(staging, 0o755)                     # as an earlier version made it: nobody else writes there

    report = _with_umask(0o022, lambda: publish_dataset(home, CONFIG))

    assert report.shards_resumed > 0 and report.shards_written == 0


def test_a_staging_with_a_folder_other_accounts_may_write_is_emptied_and_written_afresh(
        tmp_path: Path, monkeypatch, capsys) -> None:
    home, full = history_home(tmp_path / "h")
    write_split_pairs(home, full)

    def die(point: str) -> None:
        if point == "publish.after_shards":
            raise RuntimeError("killed")

    monkeypatch.setattr(faults, "maybe_crash", die)
    with pytest.raises(RuntimeError, match="killed"):
        _with_umask(0o022, lambda: publish_dataset(home, CONFIG))
    monkeypatch.undo()
    (staging,) = staging_root(home.datasets).glob(".partial-*")
    os.chmod(staging, 0o755)
    split = next(p for p in staging.iterdir() if p.is_dir())
    os.chmod(split, 0o777)                        # a folder another account could drop files into
    (split / "planted.parquet").write_bytes(b"PAR1 planted PAR1")
    capsys.readouterr()

    report = _with_umask(0o022, lambda: publish_dataset(home, CONFIG))

    assert report.shards_resumed == 0 and report.shards_written > 0
    assert not (report.path / split.name / "planted.parquet").exists()
    err = capsys.readouterr().err
    assert f"{split.name} writable by other accounts" in err and "written afresh" in err


# --------------------------------------------------------------------------- setgid folders
def test_give_modes_keeps_a_folders_setgid_bit_and_counts_only_permission_changes(tmp_path: Path) -> None:
    top = _setgid(tmp_path / "v")
    (top / "train").mkdir()
    os.chmod(top / "train", 0o2700)
    (top / "train" / "a.bin").write_bytes(b"x")
    os.chmod(top / "train" / "a.bin", 0o600)

    assert _with_umask(0o022, lambda: give_modes(top, False)) == 3
    assert os.stat(top).st_mode & 0o7777 == 0o2755 and os.stat(top / "train").st_mode & 0o7777 == 0o2755
    assert _mode(top / "train" / "a.bin") == 0o644
    assert _with_umask(0o022, lambda: give_modes(top, False)) == 0   # the setgid bit is no difference


def test_honour_umask_keeps_a_folders_setgid_bit(tmp_path: Path) -> None:
    top = _setgid(tmp_path / "best")
    (top / "tokenizer").mkdir()
    os.chmod(top / "tokenizer", 0o2700)
    (top / "model.safetensors").write_bytes(b"w")
    os.chmod(top / "model.safetensors", 0o600)
    plain = tmp_path / "plain"
    plain.mkdir(mode=0o700)

    _with_umask(0o002, lambda: (honour_umask(top), honour_umask(plain)))

    assert os.stat(top).st_mode & 0o7777 == 0o2775 and os.stat(top / "tokenizer").st_mode & 0o7777 == 0o2775
    assert _mode(top / "model.safetensors") == 0o664
    assert os.stat(plain).st_mode & 0o7777 == 0o775              # no setgid bit where there was none
