"""Hostile review rev39c of fix39a (``decisions._isin`` on the set's own Arrow chunks) and fix39b (an unreadable
publish history / record of switched versions said to be unreadable, ``formats.dataset._unreadable``; a refused
switch's notes printed first and carried as ``publish_notes``, logged by the ``published_dataset`` asset).

Defects found (fix39b; fix39a showed none, see the report):

1. A refused switch's notes are shown twice by ``pickapic build``. ``version._switch`` prints each note on stderr
   ("publish: <note>") and the asset logs each again as a step warning, which the build prints again
   ("warning: <note>", ``build._tell`` with ``steplog.stderr_warner``). The build runs the step in its own process
   (``execute_in_process``; the compute-log tail mirrors the step's stderr to the terminal), so both reach the user.
   Seen: the ``.partial-backup`` note 2 times on stderr (once "publish: ...", once "warning: ...") for one refusal;
   a successful publish shows it once.
2. The advice for a file this account may not read though its mode says it may (a POSIX ACL entry
   ``user:65534:---`` on a 0644 file, the mode showing 0644) is "have that account make it readable to this one
   (chmod a+r ...)", a command that changes nothing: the note says "mode 0644" and sends the operator to a chmod
   already in effect, and never names the ACL / security policy that refuses the read.
3. ``_unreadable`` crashes with ``UnboundLocalError`` ("cannot access local variable 'info'") where the ``lstat``
   itself is refused (EACCES: the folder holding the record is not searchable by this account, e.g. its mode changed
   between the caller's ``os.path.lexists`` and this ``lstat``): the except branch keeps the cause, then formats
   ``info.st_mode`` that was never set. Out of ``record_switch`` that is no OSError: the publish fails with a
   traceback after the version is in place, instead of the switch's clear refusal or a note.
"""
from __future__ import annotations

import errno
import os
import struct
from pathlib import Path

import pytest
from test_publish_fixtures import make_home

from formats import dataset as dataset_module
from formats.dataset import HISTORY_HEADER, _unreadable, history_file, latest_version, record_switch
from tests.accounts import as_another_account, shared_folder

NAME = "2026-01-02-bbbbbbbbbb"


@pytest.fixture()
def shared_tmp():
    with shared_folder("rev39c-") as base:
        yield base


def test_a_build_shows_each_note_of_a_refused_switch_once(fast_tmp: Path, capfd, monkeypatch: pytest.MonkeyPatch) -> None:
    import dagster as dg

    from dagster_project.assets.publish import published_dataset
    from dagster_project.build import QUIET_LOGS, _step_warnings, _tell
    from dagster_project.resources import PickapicHome
    from dagster_project.steplog import stderr_warner

    home = make_home(fast_tmp / "home", num_rankings=40, seed=3931)
    home.datasets.mkdir(parents=True, exist_ok=True)
    (home.datasets / ".partial-backup").mkdir()          # a user's folder: left alone, with a note
    real = dataset_module.write_names

    def failing(path, header, names, fsync):              # the history cannot be written: the switch is refused
        if path == history_file(home.datasets):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(path, header, names, fsync)

    monkeypatch.setattr(dataset_module, "write_names", failing)
    capfd.readouterr()
    with dg.DagsterInstance.ephemeral() as instance:      # what build._execute does, then its _tell to the CLI's warn
        result = dg.materialize([published_dataset], instance=instance, raise_on_error=False, run_config=QUIET_LOGS,
                                resources={"data_home": PickapicHome(root=str(home.root))})
        assert not result.success
        _tell(stderr_warner(), _step_warnings(instance, result.run_id), None)
    shown = [line for line in capfd.readouterr().err.splitlines() if ".partial-backup" in line]
    assert latest_version(home.datasets) is None
    assert len(shown) == 1, [line[:12] for line in shown]


def _posix_acl(entries: list[tuple[int, int, int]]) -> bytes:
    """The ``system.posix_acl_access`` value of ``entries`` (tag, perm, id), as the kernel takes it."""
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", tag, perm, ident) for tag, perm, ident in entries)


def test_no_chmod_advice_for_a_file_whose_mode_already_lets_this_account_read_it(shared_tmp: Path) -> None:
    datasets = shared_tmp / "pickapic"
    datasets.mkdir(mode=0o755)
    os.chmod(datasets, 0o755)
    (datasets / "2026-01-01-aaaaaaaaaa").mkdir(mode=0o755)
    path = history_file(datasets)
    path.write_bytes(HISTORY_HEADER + b"2026-01-01-aaaaaaaaaa\n")
    os.chmod(path, 0o644)
    any_id = 0xFFFFFFFF
    os.setxattr(path, "system.posix_acl_access", _posix_acl(    # user:65534:--- (the forked child's account)
        [(0x01, 6, any_id), (0x02, 0, 65534), (0x04, 4, any_id), (0x10, 4, any_id), (0x20, 4, any_id)]))
    assert os.stat(path).st_mode & 0o777 == 0o644

    def publish() -> None:
        note = record_switch(datasets, NAME, fsync=False)
        assert note is not None and "could not be read by this account" in note, note
        assert "mode 0644" in note, note
        assert "chmod a+r" not in note, note        # already in effect: the advice changes nothing

    as_another_account(publish)


def test_a_record_whose_lstat_is_refused_gets_a_note_not_a_crash(shared_tmp: Path) -> None:
    outer = shared_tmp / "outer"
    datasets = outer / "pickapic"
    datasets.mkdir(parents=True)
    path = history_file(datasets)
    path.write_bytes(HISTORY_HEADER)
    os.chmod(datasets, 0o755)
    os.chmod(outer, 0o744)                          # readable, not searchable by another account: lstat is EACCES

    def check() -> None:
        try:
            note = _unreadable(path, "versions are ordered by their folders' modification time")
        except UnboundLocalError as exc:
            raise AssertionError(f"UnboundLocalError: {exc}") from None
        assert note is None or "could not be read" in note, note

    as_another_account(check)
