"""A lock file this account may not open is named as a permission problem, never as something to remove
(rev16c: the owner's `.build.lock` was called "a symbolic link or something else; remove it", and deleting a
held lock file lets a second build run beside the first)."""
from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from formats.locks import LockFileRefused, open_lock_file
from training.train import run_lock


def _denied_for(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.open

    def denying(path, flags, *args, **kwargs):
        if os.fspath(path).endswith(name):
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return real(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", denying)


def test_a_lock_file_this_account_may_not_open_is_not_called_a_link_to_remove(tmp_path: Path, monkeypatch) -> None:
    lock = tmp_path / ".build.lock"
    lock.write_text("4242\n")                      # the owner's, held or not
    _denied_for(".build.lock", monkeypatch)
    with pytest.raises(LockFileRefused) as refused:
        open_lock_file(lock, "the data home", linked_folder=True)
    message = str(refused.value)
    assert "Permission denied" in message and "may not write" in message
    assert "remove it" not in message and "symbolic link" not in message
    assert lock.read_text() == "4242\n"


def test_a_lock_file_that_is_a_link_is_still_called_one(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").write_text("")
    (tmp_path / ".build.lock").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(LockFileRefused, match="symbolic link or something else is there; remove it"):
        open_lock_file(tmp_path / ".build.lock", "the data home", linked_folder=True)


def test_a_run_folder_this_account_may_not_write_says_so(tmp_path: Path, monkeypatch) -> None:
    _denied_for(".train.lock", monkeypatch)
    with pytest.raises(ValueError, match="Permission denied: the run folder cannot be written here") as refused:
        with run_lock(tmp_path):
            pass
    assert "a link or something else" not in str(refused.value)
