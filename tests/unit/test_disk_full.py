"""A full disk, from any layer, is reported as "no space left on device at PATH" without a traceback.

The real thing (a small full tmpfs under ``pickapic build`` and ``pickapic query --output``) is in
``tests/e2e/test_disk_full.py``; here the recognition of each layer's wording and the CLI path.
"""
from __future__ import annotations

import errno
import sqlite3
from pathlib import Path

import pytest
from test_publish_fixtures import make_home

from dagster_project.build import BuildError
from dagster_project.cli import main as pickapic
from formats.files import no_space_message
from pipelines.publish.config import PublishConfig
from pipelines.publish.version import publish_dataset
from pipelines.query import engine as query


def _chained(outer: BaseException, inner: BaseException) -> BaseException:
    try:
        try:
            raise inner
        except BaseException as exc:
            raise outer from exc
    except BaseException as exc:
        return exc


def test_each_layer_wording_is_recognised(tmp_path: Path) -> None:
    enospc = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "w" / "part-0.parquet"))
    assert no_space_message(enospc).startswith(f"no space left on device at {tmp_path / 'w' / 'part-0.parquet'}")
    wrapped = _chained(RuntimeError("ingest failed"), enospc)
    assert f"at {tmp_path / 'w' / 'part-0.parquet'}" in no_space_message(wrapped)
    arrow = OSError("Error writing bytes to file. Detail: [errno 28] No space left on device")
    assert no_space_message(arrow, [tmp_path]).startswith(f"no space left on device at {tmp_path}")
    step = BuildError("daily_partition_job for partition 2023-02-13 failed (run 1a2b): ingest_day: OSError: "
                      "[Errno 28] No space left on device: '/data/warehouse/users/dt=2023-02-13/part-0.parquet'")
    assert "at /data/warehouse/users/dt=2023-02-13/part-0.parquet" in no_space_message(step, [tmp_path])
    sqlite_full = sqlite3.OperationalError("database or disk is full")
    assert f"at {tmp_path / 'dagster'}" in no_space_message(sqlite_full, [tmp_path], databases=tmp_path / "dagster")
    io_error = sqlite3.OperationalError("disk I/O error")
    assert no_space_message(io_error, [tmp_path], databases=tmp_path / "dagster") is None  # the disk has room
    assert f"at {tmp_path / 'dagster'}" in no_space_message(io_error, [tmp_path], databases=tmp_path / "dagster",
                                                            full_below=1 << 62)      # as if the disk were full
    assert no_space_message(ValueError("bad value"), [tmp_path]) is None
    assert no_space_message(OSError(errno.EACCES, "Permission denied", "/x"), [tmp_path]) is None


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory):
    home = make_home(tmp_path_factory.mktemp("full") / "home", num_rankings=30, seed=2)
    publish_dataset(home, PublishConfig(workers=1, fsync=False))
    return home


def test_cli_names_the_output_file_when_its_disk_fills(published, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture) -> None:
    """The write fails half-way with a bare ENOSPC (as Arrow and plain writes give it): the message names the file."""
    def filling_writer(schema, batches, fmt, sink, to_terminal=False):
        sink.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(query, "write_result", filling_writer)
    target = tmp_path / "out" / "result.csv"
    code = pickapic(["query", "--home", str(published.root), "SELECT 1 AS a", "--format", "csv", "--output", str(target)])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith(f"pickapic query: error: no space left on device at {target}")
    assert "Traceback" not in err and err.count("\n") == 1
    assert list(target.parent.iterdir()) == []                         # neither the file nor a temp file


def test_other_errors_keep_their_traceback(published, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only a full disk is turned into one line: an unexpected error still raises (a bug must show where it is)."""
    def broken_writer(*args, **kwargs):
        raise KeyError("bug")

    monkeypatch.setattr(query, "write_result", broken_writer)
    with pytest.raises(KeyError):
        pickapic(["query", "--home", str(published.root), "SELECT 1 AS a", "--format", "csv", "--output",
                  str(Path(published.root).parent / "x.csv")])
