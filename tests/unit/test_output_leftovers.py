"""Leftover temp files of `export --output DIR` / `rerank --output DIR` (formats/outputs.py).

A rerun removes the `.NAME.HEX.tmp` files a killed run left, but only once DIR passed every check (not in a
data home, not through a linked folder), and only a dead run's: a run that is writing holds DIR locked.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from formats.outputs import RefusedOutput, open_output_files, recorded_output_dir

REPO = Path(__file__).resolve().parents[2]
RECORD = "pickapic-rerank.json"
NAMES = ["scores.parquet", "choices.parquet"]


def test_a_folder_reached_through_a_linked_folder_is_refused_before_anything_is_removed(tmp_path):
    victim = tmp_path / "victim"
    (victim / "out").mkdir(parents=True)
    temp = victim / "out" / ".scores.parquet.0123456789ab.tmp"
    temp.write_bytes(b"someone's file")
    (tmp_path / "link").symlink_to(victim)
    with pytest.raises(RefusedOutput, match="symbolic link"):
        recorded_output_dir(tmp_path / "link" / "out", [], "--output", RECORD, NAMES)
    assert temp.read_bytes() == b"someone's file"


def test_a_folder_inside_a_home_given_in_homes_is_refused_before_anything_is_removed(tmp_path):
    home = tmp_path / "home"
    inside = home / "models" / "x"
    inside.mkdir(parents=True)
    temp = inside / ".choices.parquet.0123456789ab.tmp"
    temp.write_bytes(b"the pipeline's")
    with pytest.raises(RefusedOutput, match="inside the data home"):
        recorded_output_dir(inside, [home], "--output", RECORD, NAMES)
    assert temp.read_bytes() == b"the pipeline's"


def test_a_dead_runs_temp_files_are_removed_and_the_rerun_writes(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    dead = out / ".scores.parquet.0123456789ab.tmp"
    dead.write_bytes(b"half")
    folder, listed = recorded_output_dir(out, [], "--output", RECORD, NAMES)
    assert not dead.exists() and folder == out and listed == sorted(NAMES)
    with open_output_files(folder, [*NAMES, RECORD]) as open_file:
        for name in [*NAMES, RECORD]:
            with open_file(name) as handle:
                handle.write(b"x")
    assert sorted(p.name for p in out.iterdir()) == sorted([*NAMES, RECORD])


_WRITER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from formats.outputs import open_output_files, write_output_record
    names = ["scores.parquet", "choices.parquet", "pickapic-rerank.json"]
    with open_output_files(Path(sys.argv[1]), names) as open_file:
        with open_file("scores.parquet") as handle:
            handle.write(b"first run's scores")
        print("writing", flush=True)
        sys.stdin.readline()                   # the main test lets it finish
        with open_file("choices.parquet") as handle:
            handle.write(b"first run's choices")
        write_output_record(open_file, names[2], names[:2], "test")
    print("done", flush=True)
""")


def _start_writer(out: Path) -> subprocess.Popen:
    """A run of ``_WRITER`` into a new folder ``out``: it prints ``writing`` once its temp file exists, then waits
    for a line on stdin before it finishes."""
    out.mkdir()
    return subprocess.Popen([sys.executable, "-c", _WRITER, str(out)], cwd=REPO, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})


def test_a_second_run_never_removes_a_running_writers_temp_files_and_is_refused(tmp_path):
    out = tmp_path / "out"
    first = _start_writer(out)
    try:
        assert first.stdout.readline().strip() == "writing"
        live = [p.name for p in out.iterdir()]
        assert len(live) == 1 and live[0].startswith(".scores.parquet.") and live[0].endswith(".tmp")
        # the second run: its leftover clean-up finds the first run's temp file, held, and refuses the folder
        with pytest.raises(RefusedOutput, match="another run is writing"):
            recorded_output_dir(out, [], "--output", RECORD, NAMES)
        assert [p.name for p in out.iterdir()] == live
        # a second run that got past its clean-up before the first began writing is refused at its write
        with pytest.raises(RefusedOutput, match="another run is writing"):
            with open_output_files(out, [*NAMES, RECORD]):
                pass
        assert [p.name for p in out.iterdir()] == live
        first.stdin.write("\n")
        first.stdin.flush()
        assert first.stdout.readline().strip() == "done"
        assert first.wait(timeout=30) == 0
    finally:
        first.kill()
        first.wait()
    assert (out / "scores.parquet").read_bytes() == b"first run's scores"
    assert sorted(p.name for p in out.iterdir()) == sorted([*NAMES, RECORD])
    # once the first run ended, the folder is free again: an earlier output of the command
    folder, listed = recorded_output_dir(out, [], "--output", RECORD, NAMES)
    assert folder == out


def test_a_killed_writers_temp_files_are_removed_by_the_next_run(tmp_path):
    out = tmp_path / "out"
    first = _start_writer(out)
    try:
        assert first.stdout.readline().strip() == "writing"
    finally:
        first.kill()                           # SIGKILL: no clean-up ran, the kernel dropped its lock
        first.wait()
    assert len(list(out.glob(".scores.parquet.*.tmp"))) == 1
    folder, listed = recorded_output_dir(out, [], "--output", RECORD, NAMES)
    assert list(out.iterdir()) == []


# --- single files (`score --output FILE`, `query --output FILE`): the writer holds its temp file locked ----------------

_FILE_WRITER = textwrap.dedent("""
    import sys
    from formats.outputs import open_output_file
    with open_output_file(sys.argv[1]) as handle:
        handle.write(b"first run's scores")
        print("writing", flush=True)
        sys.stdin.readline()
    print("done", flush=True)
""")


def _start_file_writer(out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", _FILE_WRITER, str(out)], cwd=REPO, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})


def test_a_single_file_writer_keeps_a_live_runs_temp_file_and_removes_a_killed_runs(tmp_path):
    from formats.outputs import open_output_file

    out = tmp_path / "scores.parquet"
    live = _start_file_writer(out)
    killed = _start_file_writer(tmp_path / "other.parquet")
    try:
        assert live.stdout.readline().strip() == "writing"
        assert killed.stdout.readline().strip() == "writing"
        killed.kill()                               # SIGKILL: its temp file stays, its lock goes with it
        killed.wait()
        live_temp = list(tmp_path.glob(".scores.parquet.*.tmp"))
        assert len(live_temp) == 1 and len(list(tmp_path.glob(".other.parquet.*.tmp"))) == 1
        with open_output_file(out) as handle:       # a second run of the same output, meanwhile
            handle.write(b"second run's scores")
        assert list(tmp_path.glob(".scores.parquet.*.tmp")) == live_temp      # the live run's is kept
        with open_output_file(tmp_path / "other.parquet") as handle:
            handle.write(b"rerun")
        assert list(tmp_path.glob(".other.parquet.*.tmp")) == []              # the killed run's is gone
        live.stdin.write("\n")
        live.stdin.flush()
        assert live.stdout.readline().strip() == "done" and live.wait(timeout=30) == 0
    finally:
        for process in (live, killed):
            process.kill()
            process.wait()
    assert out.read_bytes() == b"first run's scores"        # the last rename wins; neither run lost its file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.parquet", "scores.parquet"]


def test_what_is_not_a_regular_temp_file_of_ours_is_never_removed(tmp_path):
    from formats.outputs import remove_dead_temps

    (tmp_path / ".scores.parquet.0123456789ab.tmp").mkdir()                 # a folder of that name
    (tmp_path / ".scores.parquet.ba9876543210.tmp").symlink_to(tmp_path / "target")
    (tmp_path / "target").write_bytes(b"not ours to remove")
    (tmp_path / ".scores.parquet.tmp").write_bytes(b"not one of our temp names")
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert remove_dead_temps(fd, ["scores.parquet"]) == []
    finally:
        os.close(fd)
    assert len(list(tmp_path.iterdir())) == 4
