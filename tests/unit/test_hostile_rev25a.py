"""Hostile review rev25a (December 6, 2026): secrets and permissions as a production deployment with other
accounts sees it.

Reviewed by running the real components: `pickapic demo` under umask 077 and under umask 002 in a setgid
group-shared home, a second member of the group building that home (`nobody`, as in
``tests/e2e/test_hostile_rev16c_readers.py``), a rebuild under umask 022 of a home made under 077,
`pickapic query/export` outputs under 027 and 002, a real PostgreSQL export (``tests/postgres_server.py``)
with a password, a refused login and an unreachable host, `pickapic simulate --to-postgres` with passwords in
every DSN form, `features.beam_args` holding credentials through a real build (the data home, Dagster's
run/event storage and compute logs grepped), and the settings' refusals of secrets on the command line.

Held up (not filed): no password, pseudonym secret or Beam credential reached any file of the data home,
Dagster's storage or the CLI's output; every file and folder under umask 077 was 0600/0700 and under 027
0640/0750; raw exports and blobs follow the umask and a setgid parent.

What did not hold is below, one test per defect (each a strict xfail when filed; all six fixed the same day by
fix25a), each assertion stating the correct behaviour.
Tests that need a second account (a member of a group-shared home) switch to ``nobody`` in a forked child,
as the rev16c/rev16d reviews do; they run as root, as CI's container does.
"""
from __future__ import annotations

import os
import pwd
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from formats import dataset
from tests.accounts import OWNER_GID, OWNER_UID
from tests.unit.test_publish_fixtures import make_home


def _setgid_folder(path: Path) -> Path:
    """A group-shared folder as the README makes one: group-writable, setgid (group: this account's own)."""
    path.mkdir(parents=True)
    os.chmod(path, 0o2775)
    assert os.stat(path).st_mode & stat.S_ISGID
    return path


def _without_setgid(top: Path) -> list[str]:
    """Every real folder at or under ``top`` whose setgid bit is off."""
    folders = [top, *(p for p in top.rglob("*") if p.is_dir() and not p.is_symlink())]
    return [f"{oct(stat.S_IMODE(os.stat(p).st_mode))} {p.relative_to(top.parent)}" for p in folders
            if not os.stat(p).st_mode & stat.S_ISGID]


def test_a_version_published_in_a_setgid_home_keeps_the_setgid_bit_on_its_folders(tmp_path: Path) -> None:
    from pipelines.publish.config import PublishConfig
    from pipelines.publish.version import publish_dataset

    root = _setgid_folder(tmp_path / "home")
    old = os.umask(0o002)
    try:
        home = make_home(root, num_rankings=80, seed=3)
        publish_dataset(home, PublishConfig(workers=1, fsync=False))
    finally:
        os.umask(old)
    version = dataset.resolve_version(home)
    assert os.stat(version.parent).st_mode & stat.S_ISGID          # datasets/pickapic, made by mkdir: kept
    assert _without_setgid(version) == []


def test_a_checkpoint_folder_in_a_setgid_home_keeps_the_setgid_bit(tmp_path: Path) -> None:
    from training.train import _save_dir_atomic

    run = _setgid_folder(tmp_path / "home") / "models" / "preference_model" / "run1"
    old = os.umask(0o002)
    try:
        run.mkdir(parents=True)

        def write(folder: Path) -> None:   # as safetensors does: the weights 0600, and a sub-folder
            (folder / "model.safetensors").write_bytes(b"weights")
            os.chmod(folder / "model.safetensors", 0o600)
            (folder / "tokenizer").mkdir()
            (folder / "tokenizer" / "vocab.json").write_text("{}")

        _save_dir_atomic(run / "best", write)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(run / "best" / "model.safetensors").st_mode) == 0o664   # the umask: held
    assert _without_setgid(run / "best") == []


def _in_child(uid: int, gid: int, groups: list[int], umask: int, action) -> int:
    """Run ``action()`` in a forked child as ``uid``/``gid`` (and ``groups``) under ``umask``; its exit status:
    0 when it returned, 13 on PermissionError, 1 on anything else. Nothing is imported in the child (the
    interpreter's own files may be unreachable for that account): what ``action`` needs is imported first."""
    pid = os.fork()
    if pid == 0:   # pragma: no cover - the child
        code = 1
        try:
            os.setgroups(groups)
            os.setgid(gid)
            os.setuid(uid)
            os.umask(umask)
            action()
            code = 0
        except PermissionError:
            code = 13
        except BaseException:  # noqa: BLE001 - the child must never return into pytest
            code = 1
        finally:
            os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


@pytest.fixture
def world() -> Iterator[Path]:
    """A 0755 folder every account can reach (pytest's temporary root is 0700), removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="pickapic-rev25a-"))
    os.chmod(folder, 0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def _read(path: Path):
    return lambda: path.read_bytes()


def test_a_members_settings_write_never_locks_the_owner_out_of_a_secret_holding_settings_file(
        tmp_path: Path, world: Path) -> None:
    from formats.settings import SETTINGS_FILE, load, write_settings

    member = pwd.getpwnam("nobody")
    owner = pwd.struct_passwd(("owner", "x", OWNER_UID, OWNER_GID, "", "/", "/bin/sh"))   # an id, not a `daemon`
    group = member.pw_gid
    home = world / "home"
    home.mkdir()
    os.chown(home, owner.pw_uid, group)
    os.chmod(home, 0o2775)
    (home / ".locks").mkdir()
    os.chown(home / ".locks", owner.pw_uid, group)
    os.chmod(home / ".locks", 0o2775)
    settings = home / SETTINGS_FILE
    settings.write_text('[splits]\nmin_users = 12\n\n[curation]\npseudonym_secret = "group home secret 25a"\n')
    os.chown(settings, owner.pw_uid, group)
    os.chmod(settings, 0o640)          # the owner lets the group's members build with the secret
    write_settings(tmp_path / "warm", {"splits.min_users": 11})   # imports what the child needs
    load(tmp_path / "warm")

    assert _in_child(owner.pw_uid, owner.pw_gid, [group], 0o002, _read(settings)) == 0   # the owner reads it
    assert _in_child(member.pw_uid, member.pw_gid, [group], 0o002, _read(settings)) == 0  # and so does a member
    status = _in_child(member.pw_uid, member.pw_gid, [group], 0o002,
                       lambda: write_settings(home, {"splits.min_users": 10}))
    assert status in (0, 1), status
    # whatever the member's write did, the owner still reads the home's settings, and no other account does
    assert _in_child(owner.pw_uid, owner.pw_gid, [group], 0o002, _read(settings)) == 0
    assert not os.stat(settings).st_mode & 0o007


def test_a_launchpad_dsn_holding_a_password_is_refused_at_launch(tmp_path: Path, monkeypatch) -> None:
    from dagster_project.coordinator import RunConfigRefused, check_launch

    monkeypatch.setenv("PICKAPIC_HOME", str(tmp_path / "home"))
    password = "RunCfgPw25a"
    run_config = {"resources": {"app_db": {"config": {
        "dsn": f"host=db.internal port=5432 dbname=pickapic user=pipeline_ro password={password}"}}}}
    with pytest.raises(RunConfigRefused) as refused:
        check_launch(run_config)
    assert password not in str(refused.value)


def test_a_hand_edited_secret_in_a_world_readable_settings_file_is_not_left_readable_silently(
        tmp_path: Path, capsys) -> None:
    from dagster_project.cli import main
    from formats.settings import SETTINGS_FILE, write_settings

    home = tmp_path / "home"
    home.mkdir()
    old = os.umask(0o022)
    try:
        write_settings(home, {"splits.min_users": 10})        # as `pickapic settings --set ... --write` makes it
    finally:
        os.umask(old)
    settings = home / SETTINGS_FILE
    assert stat.S_IMODE(os.stat(settings).st_mode) == 0o644
    with open(settings, "a", encoding="utf-8") as out:        # the README's way to set the secret: by hand
        out.write('\n[curation]\npseudonym_secret = "hand edited secret 25a"\n')
    capsys.readouterr()
    assert main(["settings", "--home", str(home)]) == 0
    err = capsys.readouterr().err
    assert "hand edited secret 25a" not in err
    assert not os.stat(settings).st_mode & 0o007 or ("chmod" in err and SETTINGS_FILE in err)


def test_a_file_planted_in_the_publish_staging_is_never_published_or_listed(tmp_path: Path) -> None:
    import json
    import shutil

    from pipelines.publish.config import PublishConfig
    from pipelines.publish.version import publish_dataset

    root = _setgid_folder(tmp_path / "home")
    old = os.umask(0o002)
    try:
        home = make_home(root, num_rankings=80, seed=3)
        publish_dataset(home, PublishConfig(workers=1, fsync=False))
        version = dataset.resolve_version(home)
        name, datasets = version.name, version.parent
        shutil.rmtree(version)                              # as before its first publish
        os.unlink(datasets / "latest")
        staging = datasets / f".partial-{name}"
        (staging / "train").mkdir(parents=True)             # what a group member may make (the folder is 02775)
        assert os.stat(staging).st_mode & 0o020
        (staging / "train" / "planted.parquet").write_bytes(b"PAR1 planted by another member PAR1")
        (staging / "train" / "000000.tar").write_bytes(b"not a tar")
        publish_dataset(home, PublishConfig(workers=1, fsync=False))
    finally:
        os.umask(old)
    version = dataset.resolve_version(home)
    listed = json.loads((version / "manifest.json").read_text())["files"]
    planted = ("train/planted.parquet", "train/000000.tar")
    assert [p for p in planted if p in listed] == []
    assert [p for p in planted if (version / p).exists()] == []
