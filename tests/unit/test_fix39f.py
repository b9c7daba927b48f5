"""fix39f (review rev39c of fix39b): a refused switch's notes shown once whoever shows them (the plain publish prints
them, the Dagster asset logs them instead, and prints them once the switch is made); a publish's notes printed with
their control characters shown (``terminal_text``); the advice for a record this account may not read names a POSIX
ACL or a security policy where its mode already lets this account read it, or the refusal is EPERM; the plain note
where its ``lstat`` is refused. Also ``decisions._isin`` as one ``pc.is_in`` on the set's chunked array (review
rev39c), its results those of a Python set."""
from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pyarrow as pa
import pytest
from test_fix39b import CONFIG, _history_cannot_be_written
from test_publish_fixtures import make_home

from formats import dataset as dataset_module
from formats.dataset import HISTORY_HEADER, _mode_lets_read, _unreadable, history_file, latest_version
from pipelines.curation import decisions
from pipelines.publish import version as version_module
from pipelines.publish.version import publish_dataset

SAID = "versions are ordered by their folders' modification time"


def _shown(err: str) -> list[str]:
    return [line for line in err.splitlines() if ".partial-backup" in line]


@pytest.mark.parametrize(("shows_refused_notes", "printed"), [(False, 1), (True, 0)])
def test_a_refused_switch_prints_its_notes_once_unless_the_caller_shows_them(
        fast_tmp: Path, capfd, monkeypatch: pytest.MonkeyPatch, shows_refused_notes: bool, printed: int) -> None:
    """``python -m pipelines.publish`` (and any plain caller) prints each once; the Dagster asset, which logs them
    from the error as step warnings, gets them unprinted (review rev39c: `pickapic build` showed both)."""
    home = make_home(fast_tmp / "home", num_rankings=40, seed=3961)
    _history_cannot_be_written(home, monkeypatch)
    capfd.readouterr()
    with pytest.raises(OSError, match="`latest` was not switched") as refused:
        publish_dataset(home, CONFIG, shows_refused_notes=shows_refused_notes)
    shown = _shown(capfd.readouterr().err)
    assert len(shown) == printed and all(line.startswith("publish: ") for line in shown), shown
    assert any(".partial-backup" in note for note in refused.value.publish_notes)
    assert latest_version(home.datasets) is None


def test_a_caller_that_shows_the_refused_notes_still_sees_them_printed_once_a_switch_is_made(
        fast_tmp: Path, capfd) -> None:
    home = make_home(fast_tmp / "home", num_rankings=40, seed=3963)
    home.datasets.mkdir(parents=True, exist_ok=True)
    (home.datasets / ".partial-backup").mkdir()
    capfd.readouterr()
    report = publish_dataset(home, CONFIG, shows_refused_notes=True)
    shown = _shown(capfd.readouterr().err)
    assert len(shown) == 1 and shown[0].startswith("publish: "), shown
    assert any(".partial-backup" in note for note in report.notes)
    assert latest_version(home.datasets) == report.version


def test_a_publish_note_is_printed_with_its_control_characters_shown(capfd) -> None:
    version_module._print_note("home /tmp/a\x1b]0;owned\x07b: left alone")
    err = capfd.readouterr().err
    assert "\x1b" not in err and "\x07" not in err, repr(err)
    assert err == "publish: home /tmp/a\\x1b]0;owned\\x07b: left alone\n", repr(err)


def _record(tmp_path: Path, mode: int) -> Path:
    path = history_file(tmp_path / "pickapic")
    path.write_bytes(HISTORY_HEADER)
    os.chmod(path, mode)
    return path


def _refuse(monkeypatch: pytest.MonkeyPatch, call: str, path: Path, code: int) -> None:
    """``os.<call>`` of ``path`` fails with ``code`` (as the kernel does for a non-root account: the suite runs as
    root, whom no mode stops); any other path as before."""
    real = getattr(os, call)

    def refused(target, *args, **kwargs):
        if os.fspath(target) == os.fspath(path):
            raise PermissionError(code, os.strerror(code))
        return real(target, *args, **kwargs)

    monkeypatch.setattr(dataset_module.os, call, refused)


def test_an_eperm_on_a_file_is_put_to_an_acl_or_policy_not_to_chmod(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    path = _record(tmp_path, 0o600)
    _refuse(monkeypatch, "open", path, errno.EPERM)
    note = _unreadable(path, SAID)
    assert note is not None and f"{path} could not be read by this account ({os.strerror(errno.EPERM)}" in note, note
    assert "this account's file, mode 0600" in note and f"getfacl {path}" in note, note
    assert "chmod" not in note and SAID in note, note


def test_a_file_whose_mode_refuses_this_account_still_gets_chmod_advice(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The neighbour that must not change: the mode refuses (an EACCES of a 0200 file of this account's)."""
    path = _record(tmp_path, 0o200)
    _refuse(monkeypatch, "open", path, errno.EACCES)
    note = _unreadable(path, SAID)
    assert note is not None and "this account's file, mode 0200" in note, note
    assert f"chmod u+r {path}" in note and "getfacl" not in note, note


def test_a_refused_lstat_gives_the_plain_note(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _record(tmp_path, 0o600)
    _refuse(monkeypatch, "lstat", path, errno.EACCES)
    note = _unreadable(path, SAID)
    assert note is not None and f"{path} could not be read by this account ({os.strerror(errno.EACCES)}" in note
    assert "uid" not in note and "mode" not in note and SAID in note, note


def _info(mode: int, uid: int, gid: int) -> os.stat_result:
    return os.stat_result((stat.S_IFREG | mode, 0, 0, 1, uid, gid, 0, 0, 0, 0))


@pytest.mark.parametrize(("mode", "whose", "lets"), [
    (0o400, "mine", True), (0o044, "mine", False),          # the owner's bits alone, for its owner
    (0o040, "group", True), (0o404, "group", False),        # the group's bits alone, for a member not its owner
    (0o004, "other", True), (0o440, "other", False),
])
def test_the_mode_bits_are_read_for_the_class_this_account_is_in(mode: int, whose: str, lets: bool) -> None:
    me, group = os.geteuid(), os.getegid()
    stranger = 54321 if 54321 not in (me, group, *os.getgroups()) else 54322
    uid = me if whose == "mine" else stranger
    gid = group if whose in ("mine", "group") else stranger
    assert _mode_lets_read(_info(mode, uid, gid)) is lets


def test_isin_is_that_of_a_python_set_on_chunks_nulls_and_an_empty_set() -> None:
    values = pa.chunked_array([["a", None, "b"], [], ["c", "a", "d"]], type=pa.string())
    sets = [pa.chunked_array([["a"], [], ["c", "x"]], type=pa.string()),
            pa.chunked_array([[None, "d"]], type=pa.string()),
            pa.chunked_array([], type=pa.string()),
            pa.chunked_array([[], []], type=pa.string())]
    for among in sets:
        members = set(among.to_pylist())
        assert decisions._isin(values, among).to_pylist() == [v in members for v in values.to_pylist()], among
