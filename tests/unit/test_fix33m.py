"""Fix33m: the defects of review rev33m (fix33h's record refusal, `SwitchNotSynced`, full-disk texts), beyond the
review's tests.

- `switch_latest` syncs the versions' folder even when `latest` already names the version (a rerun), so a switch whose
  sync failed is never counted synced until it is (`SwitchNotSynced` saying `latest` already named it).
- The record of switched versions' refusal says what happened ("was written but the folder holding it could not be
  synced" vs "could not be written") and what to do by errno (free space, have the quota raised, make the folder
  writable, the disk's error); the history's and the record of runs' notes say the same of a folder not synced.
- `dagster_project.build._root_cause`: a step's innermost kernel error naming no file gives way to the nearest error of
  the step's code raised from it (the one naming the file), Dagster's wrappers passed over.
- `full_disk_path` reads a path as repr() quotes it (double quotes, escaped quotes), keeps escapes such as `\\n` as
  written, and reads the path an error naming the file said after its own words.
"""
from __future__ import annotations

import errno
import os
from pathlib import Path

import dagster as dg
import pytest
from dagster._utils.error import SerializableErrorInfo
from test_fix25d import _version

import formats.dataset as dataset_module
from dagster_project.build import _root_cause
from formats.dataset import (
    SwitchNotSynced,
    history_file,
    latest_version,
    read_switched,
    record_switch,
    switch_latest,
    switched_file,
)
from formats.files import full_disk_path, no_space_message
from formats.home import DataHome
from training import runs

V1, V2 = "2023-03-01-aaaaaaaaaa", "2023-03-02-bbbbbbbbbb"


def _two_versions(root: Path) -> DataHome:
    home = DataHome(root / "home")
    home.datasets.mkdir(parents=True)
    _version(home.datasets, V1)
    assert switch_latest(home.datasets, V1, fsync=False) is None
    _version(home.datasets, V2)
    return home


def _failing_sync(monkeypatch, folder: Path, code: int = errno.EIO) -> list[Path]:
    """Make `formats.dataset.fsync_dir` fail with ``code`` for ``folder``; returns the folders it was asked to sync."""
    real, asked = dataset_module.fsync_dir, []

    def broken(path, enabled=True, unsupported_ok=False):
        asked.append(Path(path))
        if Path(path) == folder and enabled:
            raise OSError(code, os.strerror(code), str(path))
        return real(path, enabled, unsupported_ok)

    monkeypatch.setattr(dataset_module, "fsync_dir", broken)
    return asked


# --------------------------------------------------------------------------- a rerun's switch is synced too
def test_a_switch_already_in_place_is_synced_and_says_so_when_it_cannot_be(fast_tmp: Path, monkeypatch) -> None:
    home = _two_versions(fast_tmp)
    asked = _failing_sync(monkeypatch, home.datasets)
    with pytest.raises(SwitchNotSynced) as caught:
        switch_latest(home.datasets, V1, fsync=True)       # `latest` names V1 already
    text = str(caught.value)
    assert caught.value.errno == errno.EIO and caught.value.filename == str(home.datasets)
    assert f"`latest` already named {V1} (readers get it now)" in text and "was switched" not in text
    assert home.datasets in asked and latest_version(home.datasets) == V1
    monkeypatch.undo()
    assert switch_latest(home.datasets, V1, fsync=True) is None      # synced once the folder can be


def test_a_switch_already_in_place_without_fsync_syncs_nothing(fast_tmp: Path, monkeypatch) -> None:
    home = _two_versions(fast_tmp)
    _failing_sync(monkeypatch, home.datasets)
    assert switch_latest(home.datasets, V1, fsync=False) is None       # fsync off (tests, synthetic homes): no sync
    assert latest_version(home.datasets) == V1


def test_an_absolute_link_already_naming_the_version_is_rewritten_and_synced(fast_tmp: Path, monkeypatch) -> None:
    home = _two_versions(fast_tmp)
    link = home.datasets / "latest"
    link.unlink()
    link.symlink_to(home.datasets / V2)                  # absolute: rewritten as the relative link the tool writes
    _failing_sync(monkeypatch, home.datasets)
    with pytest.raises(SwitchNotSynced, match=f"`latest` was switched to {V2}"):
        switch_latest(home.datasets, V2, fsync=True)
    assert os.readlink(link) == V2


# --------------------------------------------------------------------------- the record's refusal, worded by errno
def test_a_record_written_but_not_synced_says_so_and_refuses_the_switch(fast_tmp: Path, monkeypatch) -> None:
    home = _two_versions(fast_tmp)
    record = switched_file(home.datasets)
    _failing_sync(monkeypatch, record.parent)             # the record's folder (datasets' parent)
    with pytest.raises(OSError) as caught:
        switch_latest(home.datasets, V2, fsync=True)
    text = str(caught.value)
    assert caught.value.errno == errno.EIO and caught.value.filename == str(record)
    assert "was written but the folder holding it could not be synced" in text and "could not be written" not in text
    assert "`latest` was not switched" in text and "free" not in text and "the disk's error" in text
    assert latest_version(home.datasets) == V1 and V2 in read_switched(home.datasets)   # written, not switched


@pytest.mark.parametrize("code, says", [(errno.ENOSPC, "free some space and publish again"),
                                        (errno.EDQUOT, "have the account's quota raised"),
                                        (errno.EACCES, "writable for this account"),
                                        (errno.EROFS, "writable for this account"),
                                        (errno.EIO, "the disk's error")])
def test_the_record_refusal_says_what_to_do_by_errno(fast_tmp: Path, monkeypatch, code: int, says: str) -> None:
    home = _two_versions(fast_tmp)
    record = switched_file(home.datasets)
    real = dataset_module.write_names

    def failing(path, header, names, fsync):
        if Path(path) == record:
            raise OSError(code, os.strerror(code))
        return real(path, header, names, fsync)

    monkeypatch.setattr(dataset_module, "write_names", failing)
    with pytest.raises(OSError) as caught:
        switch_latest(home.datasets, V2, fsync=False)
    text = str(caught.value)
    assert "could not be written" in text and says in text and "fix the file" not in text
    if code in (errno.EACCES, errno.EROFS):
        assert f"make {record.parent} writable" in text and "free" not in text
    assert latest_version(home.datasets) == V1


def test_the_history_note_says_it_was_written_when_only_its_folder_was_not_synced(fast_tmp: Path,
                                                                                  monkeypatch) -> None:
    home = _two_versions(fast_tmp)
    _failing_sync(monkeypatch, history_file(home.datasets).parent)
    note = record_switch(home.datasets, V2, fsync=True)
    assert note and "was written but its folder was not synced" in note and "was not written" not in note
    assert history_file(home.datasets).read_text().splitlines()[-1] == V2


def test_the_runs_note_says_it_was_written_when_only_its_folder_was_not_synced(fast_tmp: Path, monkeypatch) -> None:
    home = DataHome(fast_tmp / "home")
    runs.runs_folder(home).mkdir(parents=True)
    _failing_sync(monkeypatch, home.models)
    note = runs._write_runs(home, [], V1)
    assert note and "was written but its folder was not synced" in note, note
    assert runs.read_runs(home) == [V1]
    monkeypatch.undo()
    _failing_sync(monkeypatch, Path("/nonexistent"))
    monkeypatch.setattr(dataset_module, "write_bytes_atomic",
                        lambda *a, **k: (_ for _ in ()).throw(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))))
    note = runs._write_runs(home, [V1], V2)
    assert note and "was not written (No space left on device)" in note


# --------------------------------------------------------------------------- a build's root cause
def _info(cls: str, message: str, cause=None) -> SerializableErrorInfo:
    return SerializableErrorInfo(f"{cls}: {message}\n", [], cls, cause=cause)


_WRAP = "DagsterExecutionStepExecutionError"
_KERNEL = _info("OSError", "[Errno 28] No space left on device")


def test_root_cause_takes_the_error_naming_the_file_over_the_kernels() -> None:
    named = _info("OSError", "[Errno 28] No space left on device: \"/h/o'b/x.json\"", cause=_KERNEL)
    assert _root_cause(_info(_WRAP, 'Error occurred while executing op "s":', cause=named)) == \
        "OSError: [Errno 28] No space left on device: \"/h/o'b/x.json\""
    # the nearest error of the step's own code, even one two levels out; Dagster's wrappers passed over
    outer = _info("SwitchNotSynced", "[Errno 28] a note: '/h/datasets'", cause=named)
    assert _root_cause(_info(_WRAP, "Error occurred", cause=outer)) == named.message.strip()


def test_root_cause_adds_the_kernels_text_to_an_error_without_its_errno() -> None:
    wrapped = _info("ValueError", "cannot write /h/cache/x.json", cause=_KERNEL)
    assert _root_cause(_info(_WRAP, "Error occurred", cause=wrapped)) == \
        "ValueError: cannot write /h/cache/x.json (OSError: [Errno 28] No space left on device)"


@pytest.mark.parametrize("inner", [
    _KERNEL,                                                          # nothing of the step's own raised from it
    _info("OSError", "[Errno 5] Input/output error: '/h/x'"),           # it names its file already
    _info("ValueError", "bad row 3: column 'a' is null"),                 # not the kernel's
])
def test_root_cause_is_the_innermost_otherwise(inner: SerializableErrorInfo) -> None:
    assert _root_cause(_info(_WRAP, "Error occurred", cause=inner)) == inner.message.strip()


def test_root_cause_of_a_real_step_whose_folder_sync_fails_names_the_folder(fast_tmp: Path, monkeypatch) -> None:
    from dagster_project.build import _run_failure

    folder = fast_tmp / "datasets"
    folder.mkdir()
    monkeypatch.setattr(dataset_module.os, "fsync",
                        lambda fd: (_ for _ in ()).throw(OSError(errno.EIO, os.strerror(errno.EIO))))

    @dg.op
    def step():
        dataset_module.fsync_dir(folder)

    @dg.job
    def sync():
        step()

    result = sync.execute_in_process(raise_on_error=False)
    text = str(_run_failure(type("Run", (), {"job": "sync", "partition": None})(), result))
    assert f"step: OSError: [Errno 5] Input/output error: '{folder}'" in text, text


# --------------------------------------------------------------------------- the path of a full disk's text
@pytest.mark.parametrize("path", ["/srv/o'brien/x", '/srv/say "hi"/x', "/srv/o'say \"hi\"/x", "/plain/x"])
def test_full_disk_path_reads_a_path_however_repr_quotes_it(path: str) -> None:
    one = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
    two = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "2023-03-02-bbbbbbbbbb", None, path)
    quota = OSError(errno.EDQUOT, os.strerror(errno.EDQUOT), path)
    for error in (one, two, quota):
        assert full_disk_path(f"publish failed (run 1): s: OSError: {error}; t: ValueError: x") == path, error


def test_full_disk_path_keeps_an_escaped_newline_as_written() -> None:
    error = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/srv/a\nb")
    path = full_disk_path(f"OSError: {error}")
    assert path == "/srv/a\\nb" and "\n" not in path


def test_full_disk_path_reads_the_path_an_error_naming_the_file_said_after_its_own_words(fast_tmp: Path) -> None:
    record = fast_tmp / "o'brien" / "pickapic.switched"
    refusal = OSError(errno.ENOSPC, "the record of switched versions could not be written (No space left on device),"
                      " so `latest` was not switched; free some space and publish again", str(record))
    text = f"publish failed (run 1): step: OSError: {refusal}"
    assert full_disk_path(text) == str(record)
    message = no_space_message(RuntimeError(text), [fast_tmp / "elsewhere"])
    assert message is not None and message.startswith(f"no space left on device at {record};")
    # an errno other than a full disk's is not read as one
    assert full_disk_path(f"OSError: {OSError(errno.EIO, 'x', str(record))}") is None


@pytest.mark.parametrize("other", ["ValueError: bad 'x': 'y'", "OSError: [Errno 5] Input/output error: '/o'"])
def test_full_disk_path_never_reads_a_later_steps_path(other: str) -> None:
    """A build's text joins its failed steps (`STEP: CLASS: TEXT; ...`): a full disk naming no file is not given the
    path another step's error quotes."""
    text = f"publish failed (run 1): a: OSError: [Errno 28] No space left on device; b: {other}"
    assert full_disk_path(text) is None
    named = "publish failed (run 1): a: OSError: [Errno 28] refused; free some space: '/p/r'; b: " + other
    assert full_disk_path(named) == "/p/r"
