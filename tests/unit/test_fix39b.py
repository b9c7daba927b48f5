"""fix39b (noticed in fix38n): a publish history or a record of switched versions this account may not read (another
account's file of mode 0600) was reported as "not a publish history this tool wrote" / "not a record this tool
wrote", which sent the operator to remove the tool's own record; and a publish whose switch was refused (the history
could not be written, fix38n) showed none of the notes it had collected before the refusal. The reads run as
another account (``tests.accounts.as_another_account``: a forked child dropping root to uid 65534), since the suite
runs as root, whom no file mode stops."""
from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from test_publish_fixtures import contracts_at, make_home

from formats import dataset as dataset_module
from formats.dataset import (
    HISTORY_HEADER,
    SWITCHED_HEADER,
    history_file,
    latest_version,
    record_switch,
    record_switched,
    switched_file,
)
from pipelines.publish.config import PublishConfig
from pipelines.publish.version import publish_dataset
from tests.accounts import as_another_account, shared_folder

CONFIG = PublishConfig(workers=1, fsync=False)
NAME = "2026-01-02-bbbbbbbbbb"
ROOT = os.geteuid() == 0   # then the reads run in a forked child as uid 65534, of root's file


@pytest.fixture()
def shared_tmp():
    """A folder every account may enter (the forked child of ``as_another_account`` works in it)."""
    with shared_folder("fix39b-") as base:
        yield base


def _unreadable_record(base: Path, path_of, header: bytes) -> tuple[Path, Path]:
    """A versions' folder with one version, and beside it a record this tool wrote, mode 0600 (the test's account's:
    root's in CI, so another account's for the forked child; the test's own with mode 0 when not root)."""
    datasets = base / "home" / "datasets" / "pickapic"
    datasets.mkdir(parents=True)
    for folder in (datasets.parent.parent, datasets.parent, datasets):
        os.chmod(folder, 0o755)                # enterable, not writable by the other account
    (datasets / "2026-01-01-aaaaaaaaaa").mkdir(mode=0o755)
    path = path_of(datasets)
    path.write_bytes(header + b"2026-01-01-aaaaaaaaaa\n")
    os.chmod(path, 0o600 if ROOT else 0)
    return datasets, path


def _says_unreadable(note: str | None, path: Path, consequence: str) -> None:
    assert note is not None and f"{path} could not be read by this account" in note, note
    assert os.strerror(errno.EACCES) in note and consequence in note and "this tool wrote" not in note, note
    if ROOT:
        assert "another account's file (uid 0), mode 0600" in note and f"chmod a+r {path}" in note, note
        assert "publish as that account" in note, note
    else:
        assert "this account's file, mode 0000" in note and f"chmod u+r {path}" in note, note


def test_a_history_this_account_cannot_read_is_said_to_be_unreadable(shared_tmp: Path) -> None:
    datasets, path = _unreadable_record(shared_tmp, history_file, HISTORY_HEADER)
    before = path.read_bytes()

    def publish() -> None:
        _says_unreadable(record_switch(datasets, NAME, fsync=False), path,
                         "versions are ordered by their folders' modification time")

    as_another_account(publish)
    assert path.read_bytes() == before                       # left as it is


def test_a_record_of_switched_versions_this_account_cannot_read_is_said_to_be_unreadable(shared_tmp: Path) -> None:
    datasets, path = _unreadable_record(shared_tmp, switched_file, SWITCHED_HEADER)
    before = path.read_bytes()

    def publish() -> None:
        _says_unreadable(record_switched(datasets, [NAME], fsync=False), path,
                         "every present version counts as published")

    as_another_account(publish)
    assert path.read_bytes() == before


@pytest.mark.parametrize("path_of", [history_file, switched_file])
def test_a_readable_file_the_tool_did_not_write_is_still_said_to_be_so(shared_tmp: Path, path_of) -> None:
    """The neighbour that must not change: a readable file without the header, a link, a folder."""
    datasets, path = _unreadable_record(shared_tmp, path_of, b"")
    os.chmod(path, 0o644)
    call = (lambda: record_switch(datasets, NAME, fsync=False)) if path_of is history_file else (
        lambda: record_switched(datasets, [NAME], fsync=False))
    note = call()
    assert note is not None and "that is not a " in note and "this tool wrote" in note, note
    assert "could not be read" not in note, note
    path.unlink()
    os.symlink("elsewhere", path)
    note = call()
    assert note is not None and "a symbolic link to 'elsewhere'" in note and "could not be read" not in note
    os.unlink(path)
    path.mkdir(mode=0o700)
    note = call()
    assert note is not None and "is a folder that is not a" in note and "could not be read" not in note


def _history_cannot_be_written(home, monkeypatch: pytest.MonkeyPatch) -> None:
    """A user's folder at a publish's prefix (left alone, with a note collected before the switch), and a history
    whose write fails (a full disk): the switch is refused (fix38n)."""
    home.datasets.mkdir(parents=True, exist_ok=True)
    (home.datasets / ".partial-backup").mkdir()
    real = dataset_module.write_names

    def failing(path, header, names, fsync):
        if path == history_file(home.datasets):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(path, header, names, fsync)

    monkeypatch.setattr(dataset_module, "write_names", failing)


def test_a_refused_switch_prints_and_carries_the_notes_collected_before(fast_tmp: Path, capfd,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    home = make_home(fast_tmp / "home", num_rankings=40, seed=3905)
    first = publish_dataset(home, CONFIG)
    _history_cannot_be_written(home, monkeypatch)
    contracts_at(monkeypatch, "64.0.0")
    capfd.readouterr()
    with pytest.raises(OSError, match="`latest` was not switched") as refused:
        publish_dataset(home, CONFIG)
    printed = capfd.readouterr().err
    assert "publish: " in printed and ".partial-backup" in printed, printed        # on stderr before the error
    carried = refused.value.publish_notes                                           # and with it
    assert any(".partial-backup" in note for note in carried), carried
    assert all(f"publish: {note}" in printed for note in carried), printed
    assert latest_version(home.datasets) == first.version


def test_the_publish_asset_logs_the_notes_of_a_refused_switch_as_warnings(fast_tmp: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The Dagster step of a refused switch: each note a warning of the project's own, which ``pickapic build``
    prints on stderr (``build._step_warnings``), before the step fails with the refusal."""
    import dagster as dg

    from dagster_project.assets.publish import published_dataset
    from dagster_project.build import QUIET_LOGS, _root_cause, _step_warnings
    from dagster_project.resources import PickapicHome

    home = make_home(fast_tmp / "home", num_rankings=40, seed=3906)
    _history_cannot_be_written(home, monkeypatch)
    with dg.DagsterInstance.ephemeral() as instance:
        result = dg.materialize([published_dataset], instance=instance, raise_on_error=False, run_config=QUIET_LOGS,
                                resources={"data_home": PickapicHome(root=str(home.root))})
        assert not result.success
        failed = [event for event in result.all_events if event.is_step_failure]
        assert failed and "`latest` was not switched" in _root_cause(failed[0].event_specific_data.error)
        warned = _step_warnings(instance, result.run_id)
    assert any(".partial-backup" in message for message in warned), warned
    assert latest_version(home.datasets) is None
