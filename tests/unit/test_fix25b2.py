"""Fixes of review rev25b (the stage modules' command lines, a closed stdout): `formats.commands.run_command`, the
dedup stage's checks before it writes, `pickapic` into a reader that has gone."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from curation_fixtures import HomeBuilder

from formats.commands import run_command
from pipelines.curation import dedup

ROOT = Path(__file__).resolve().parents[2]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PICKAPIC_HOME", "PICKAPIC_FAULT", "PYTHONUNBUFFERED")}
    env.update(extra)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _into_closed_pipe(*args: str, **env: str) -> subprocess.CompletedProcess:
    """``python ARGS | head -0``: stdout is a pipe whose reader has already gone (buffered, unless ``env`` says
    PYTHONUNBUFFERED=1)."""
    read, write = os.pipe()
    os.close(read)
    try:
        return subprocess.run([sys.executable, *args], stdout=write, stderr=subprocess.PIPE, text=True, env=_env(**env),
                              cwd=str(ROOT), timeout=300, check=False)
    finally:
        os.close(write)


# --- run_command: one line for an ordinary mistake, a bug keeps its traceback --------------------------------

def test_an_ordinary_mistake_is_one_line_and_exit_1(capsys: pytest.CaptureFixture) -> None:
    def main(argv):
        raise FileNotFoundError(f"pairs not found at {argv[0]}: run pipelines.curation.decisions first")

    assert run_command("python -m stage", main, ["/h/\x1b[2Jx"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == ("python -m stage: error: pairs not found at /h/\\x1b[2Jx: run pipelines.curation.decisions "
                            "first\n")          # one line; a quoted control character shown, not acting


def test_the_status_a_main_returns_is_kept_and_a_bug_keeps_its_traceback(capsys: pytest.CaptureFixture) -> None:
    assert run_command("p", lambda argv: 3) == 3
    assert run_command("p", lambda argv: object()) == 0          # a report, not a status
    assert run_command("p", lambda argv: None) == 0

    def bug(argv):
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        run_command("p", bug)

    def stopped(argv):
        raise KeyboardInterrupt

    assert run_command("p", stopped) == 130 and capsys.readouterr().err == "interrupted\n"


def test_a_broken_pipe_that_is_not_stdouts_is_not_swallowed() -> None:
    def child_gone(argv):       # a write to a child process's pipe, stdout still open: a failure, not `| head`
        raise BrokenPipeError(32, "Broken pipe")

    with pytest.raises(BrokenPipeError):
        run_command("p", child_gone)


RUN_COMMAND_SCRIPT = """
import sys
from formats.commands import run_command

def main(argv):
    for i in range(int(sys.argv[1])):
        print("line", i)
    return int(sys.argv[2])

sys.exit(run_command("p", main))
"""


@pytest.mark.parametrize("lines, status, unbuffered", [(100_000, 0, ""), (3, 0, ""), (3, 4, ""), (3, 4, "1")])
def test_a_closed_stdout_ends_a_stage_quietly_with_its_status(lines: int, status: int, unbuffered: str) -> None:
    """Met in the last flush (3 buffered lines): the status the command had; cut short in a write (100 000 lines,
    or any line unbuffered): 0. Never a traceback or Python's 'Exception ignored' line."""
    done = _into_closed_pipe("-c", RUN_COMMAND_SCRIPT, str(lines), str(status), PYTHONUNBUFFERED=unbuffered)
    assert (done.returncode, done.stderr) == (0 if unbuffered or lines > 10_000 else status, "")


# --- the stage modules, as `python -m` runs them ------------------------------------------------------------

@pytest.mark.parametrize("module", ["pipelines.splits.assign", "pipelines.curation.decisions",
                                    "pipelines.curation.dedup"])
def test_stage_modules_refuse_a_home_without_their_input_in_one_line(module: str, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-home"
    done = subprocess.run([sys.executable, "-m", module, "--home", str(missing)], capture_output=True, text=True,
                          env=_env(), cwd=str(ROOT), timeout=300, check=False)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.startswith(f"python -m {module}: error: ") and done.stderr.count("\n") == 1, done.stderr
    assert "not found" in done.stderr and not missing.exists()      # nothing made where nothing was


# --- dedup: nothing written before every check passed ------------------------------------------------------

def test_dedup_refuses_a_folder_of_other_files_and_a_folder_without_features(tmp_path: Path) -> None:
    other = tmp_path / "my-folder"
    other.mkdir()
    (other / "notes.txt").write_text("my notes\n")
    with pytest.raises(ValueError, match="holds other files and is not a data home"):
        dedup.main(["--home", str(other)])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="image_features not found .*run the feature stage first"):
        dedup.main(["--home", str(empty)])
    with pytest.raises(FileNotFoundError, match="image_features not found"):
        dedup.main(["--home", str(tmp_path / "typo")])
    assert sorted(p.name for p in other.iterdir()) == ["notes.txt"] and not any(empty.iterdir())
    assert not (tmp_path / "typo").exists()


@pytest.fixture()
def featured(tmp_path: Path) -> Path:
    """A home holding image_features only (no raw zone): the stage's input is what makes it a home to dedup."""
    builder = HomeBuilder(tmp_path / "home")
    for uid in ("a", "b", "c"):
        builder.image(uid)
    return builder.write().root


def test_dedup_checks_truth_before_rewriting_its_table(featured: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    dedup.main(["--home", str(featured)])
    table = featured / "warehouse" / "duplicate_clusters" / "data.parquet"
    before = (table.stat().st_ino, table.read_bytes())
    not_parquet = tmp_path / "dups.parquet"
    not_parquet.write_text("group_id,image_uid\n")
    other_table = tmp_path / "other.parquet"
    pq.write_table(pa.table({"image_uid": ["a"]}), other_table)
    for truth, words in ((tmp_path / "nope.parquet", "is not a file"), (tmp_path, "is not a file"),
                         (not_parquet, "is not a readable Parquet table"),
                         (other_table, "lacks the column(s) group_id, kind, source_uid")):
        with pytest.raises((FileNotFoundError, ValueError)) as refused:
            dedup.main(["--home", str(featured), "--truth", str(truth)])
        assert str(refused.value).startswith(f"--truth {truth} ") and words in str(refused.value), refused.value
        assert (table.stat().st_ino, table.read_bytes()) == before
    truth = tmp_path / "duplicates.parquet"
    pq.write_table(pa.table({"group_id": [1, 1], "image_uid": ["a", "b"], "kind": ["near", "near"],
                             "source_uid": ["a", "a"]}), truth)
    capsys.readouterr()
    dedup.main(["--home", str(featured), "--truth", str(truth)])
    assert '"truth_truth_pairs": 1' in capsys.readouterr().out


# --- `pickapic` into a reader that has gone ----------------------------------------------------------------

def test_pickapic_settings_into_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    done = _into_closed_pipe("-m", "dagster_project.cli", "settings", "--home", str(tmp_path / "home"))
    assert (done.returncode, done.stderr) == (0, "")
    assert not (tmp_path / "home").exists()
