"""User-given output paths (``query``/``export --output``, ``train --output-dir``, ``simulate --home``) and file modes.

Nothing the tool writes may replace what it did not create: devices, links, FIFOs, sockets, folders and
the data home's own files are refused, and published files honour the umask (read back as another
account: a child process that drops root's uid, gid and groups to ``nobody``).
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import stat
import sys
from pathlib import Path

import pyarrow as pa
import pytest
from test_publish_fixtures import make_home

from dagster_project.cli import main as pickapic
from formats import files, outputs
from formats.home import DataHome
from pipelines.publish.config import PublishConfig
from pipelines.publish.version import publish_dataset
from pipelines.query import engine as query
from pipelines.query import export

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # tests/unit is not a package: reach tests/
from tests.accounts import read_as_other_account  # noqa: E402
from tests.hostile_corpus import plant_hostile_outputs  # noqa: E402


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> DataHome:
    home = make_home(tmp_path_factory.mktemp("outputs") / "home", num_rankings=40, seed=4)
    publish_dataset(home, PublishConfig(workers=1, fsync=False))
    return home


@contextlib.contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _state(path: Path) -> tuple:
    """What is at ``path`` (links not followed): kind, mode, size, content of a regular file or a link."""
    if not os.path.lexists(path):
        return ("absent",)
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode):
        return ("link", os.readlink(path))
    if stat.S_ISREG(info.st_mode):
        return ("file", info.st_mode, path.read_bytes())
    return ("other", stat.S_IFMT(info.st_mode), info.st_mode)


# --------------------------------------------------------------------------- query --output / export --output
def test_hostile_outputs_are_refused_and_left_alone(published: DataHome, tmp_path: Path) -> None:
    cases = plant_hostile_outputs(published, tmp_path / "scratch")
    for case in cases:
        before = (_state(case.path), _state(case.guarded))
        out, err = io.StringIO(), io.StringIO()
        code = query.run_query(published, "SELECT 1 AS a", fmt="csv", output=case.path, stdout=out, stderr=err)
        assert code == 2 and case.words in err.getvalue() and out.getvalue() == "", (case.name, err.getvalue())
        assert (_state(case.path), _state(case.guarded)) == before, case.name
        with pytest.raises(outputs.RefusedOutput, match=case.words):
            outputs.check_output_file(case.path, [published.root])
    assert not list((tmp_path / "scratch").glob(".*.tmp"))


def test_data_home_found_without_being_named(published: DataHome, tmp_path: Path) -> None:
    """A warehouse file of *another* home (not --home) is refused too: any folder that looks like a home counts."""
    partition = next(published.warehouse.rglob("*.parquet"))
    with pytest.raises(outputs.RefusedOutput, match="inside the data home"):
        outputs.check_output_file(partition, homes=[tmp_path / "some-other-home"])


def test_regular_file_is_replaced_atomically_keeping_its_mode(published: DataHome, tmp_path: Path) -> None:
    # the replaced file's own mode, not the umask's (review rev34e: a user's 0600 result became 0644); a new file
    # gets the umask's (tests/unit/test_fix34e.py)
    target = tmp_path / "result.csv"
    target.write_text("old\n")
    os.chmod(target, 0o600)
    with umask(0o027):
        err = io.StringIO()
        assert query.run_query(published, "SELECT 2 AS b", fmt="csv", output=target, stderr=err) == 0
    assert target.read_text().splitlines() == ['"b"', "2"]
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert err.getvalue() == f"wrote 1 row (csv) to {target}\n"
    nested = tmp_path / "new" / "deeper" / "r.json"
    assert query.run_query(published, "SELECT 1 AS a UNION ALL SELECT 2", fmt="json", output=nested,
                           stderr=io.StringIO()) == 0
    assert nested.is_file() and not list(tmp_path.rglob(".*.tmp"))


def test_swap_for_a_link_before_the_rename_is_caught(tmp_path: Path) -> None:
    """The entry is re-checked right before the rename: a link planted meanwhile is refused, its target kept."""
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    final = tmp_path / "out.bin"
    with pytest.raises(outputs.RefusedOutput, match="became a symbolic link"):
        with outputs.open_output_file(final) as handle:
            handle.write(b"payload")
            final.symlink_to(victim)
    assert victim.read_text() == "keep me" and final.is_symlink() and os.readlink(final) == str(victim)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin", "victim"]      # the temp file is gone


def test_folder_swapped_for_a_link_into_the_home_is_caught(published: DataHome, tmp_path: Path) -> None:
    """The folder is held open: swapping it for a link into the home afterwards does not redirect the write."""
    folder = tmp_path / "out"
    folder.mkdir()
    with outputs.open_output_file(folder / "r.csv", [published.root]) as handle:
        handle.write(b"x\n")
        folder.rename(tmp_path / "moved")
        folder.symlink_to(published.warehouse)
    assert (tmp_path / "moved" / "r.csv").read_bytes() == b"x\n"
    assert not (published.warehouse / "r.csv").exists()


def test_export_output_folder(published: DataHome, tmp_path: Path) -> None:
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    a_file = tmp_path / "file"
    a_file.write_text("x")
    for target, words in ((foreign, "not a previous output"), (link, "symbolic link"), (a_file, "regular file"),
                          (published.datasets / "exports", "inside the data home"),
                          (published.root / "exports", "inside the data home")):
        with pytest.raises(outputs.RefusedOutput, match=words):
            export.export_pickscore_parquet(published, None, target)
    assert (foreign / "notes.txt").read_text() == "mine" and not (tmp_path / "elsewhere").exists()
    assert not (published.root / "exports").exists()
    out = tmp_path / "export"
    with umask(0o022):
        export.export_pickscore_parquet(published, None, out)
    assert {stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()} == {0o644}
    (out / "train.parquet").unlink()
    (out / "train.parquet").symlink_to(a_file)              # a previous export with a planted link inside
    with pytest.raises(outputs.RefusedOutput, match="symbolic link"):
        export.export_pickscore_parquet(published, None, out)
    assert a_file.read_text() == "x"
    (out / "train.parquet").unlink()
    export.export_pickscore_parquet(published, None, out)    # a previous export is rewritten
    assert (out / "train.parquet").stat().st_size > 0


# --------------------------------------------------------------------------- train --output-dir / simulate --home
def test_output_dir_rules(published: DataHome, tmp_path: Path) -> None:
    markers = ["init/train_config.json"]
    run = tmp_path / "run"
    (run / "init").mkdir(parents=True)
    (run / "init" / "train_config.json").write_text("{}")
    assert outputs.check_output_dir(run, markers=markers) == run           # a previous run: resumed
    assert outputs.check_output_dir(tmp_path / "new" / "run", markers=markers) == tmp_path / "new" / "run"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert outputs.check_output_dir(empty, markers=markers) == empty
    (tmp_path / "link").symlink_to(run)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "thesis.tex").write_text("x")
    for target, words in ((tmp_path / "link", "symbolic link"), (tmp_path / "other", "not a previous output"),
                          (run / "init" / "train_config.json", "regular file"), (Path("/dev/null"), "character device")):
        with pytest.raises(outputs.RefusedOutput, match=words):
            outputs.check_output_dir(target, markers=markers)
    # inside a data home: only outside the pipeline's own folders when in_home is allowed
    assert outputs.check_output_dir(published.models / "run1", in_home=True) == published.models / "run1"
    for target in (published.warehouse / "run1", published.datasets / "run1", published.root):
        with pytest.raises(outputs.RefusedOutput, match="only the pipeline writes"):
            outputs.check_output_dir(target, in_home=True)
    with pytest.raises(outputs.RefusedOutput, match="inside the data home"):
        outputs.check_output_dir(published.models / "run1")


def test_train_cli_refuses_foreign_output_dirs(published: DataHome, tmp_path: Path,
                                              capsys: pytest.CaptureFixture) -> None:
    version = str(published.datasets / "latest")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "data.bin").write_text("x")
    (tmp_path / "link").symlink_to(foreign)
    for target, words in ((foreign, "not a previous output"), (tmp_path / "link", "symbolic link"),
                          (published.warehouse, "only the pipeline writes")):
        code = pickapic(["train", "--home", str(published.root), "--data-dir", version, "--output-dir", str(target)])
        assert code == 1 and words in capsys.readouterr().err, target
    assert sorted(p.name for p in foreign.iterdir()) == ["data.bin"]


def test_home_rules_for_simulate(published: DataHome, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    other = tmp_path / "documents"
    other.mkdir()
    (other / "letter.txt").write_text("x")
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    for target, words in ((other, "not a data home"), (a_file, "not a folder"),
                          (published.warehouse / "nested", "inside the data home"), (Path("/dev/null"), "not a folder")):
        code = pickapic(["simulate", "--home", str(target), "--days", "1", "--users", "4", "--rankings-per-day", "10",
                         "--image-size", "32", "--quiet"])
        assert code == 1 and words in capsys.readouterr().err, target
    assert sorted(p.name for p in other.iterdir()) == ["letter.txt"] and a_file.read_text() == "x"
    assert outputs.check_home_dir(published) == published.root                 # an existing home is fine
    assert outputs.check_home_dir(DataHome(tmp_path / "fresh")) == tmp_path / "fresh"


# --------------------------------------------------------------------------- modes
@pytest.mark.parametrize("mask,expected", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_written_files_take_the_umask_mode(tmp_path: Path, mask: int, expected: int) -> None:
    with umask(mask):
        assert files.current_umask() == mask
        files.write_bytes_atomic(tmp_path / "a.json", b"{}")
        files.write_parquet_atomic(pa.table({"x": [1]}), tmp_path / "sub" / "b.parquet")
        files.write_bytes_atomic(tmp_path / "secret", b"s", private=True)
        with outputs.open_output_file(tmp_path / "c.csv") as handle:
            handle.write(b"x")
        fd, name = files.create_temp(tmp_path, "d")
        os.close(fd)
        (tmp_path / "lib").mkdir(mode=0o700)
        (tmp_path / "lib" / "w.safetensors").write_bytes(b"w")
        os.chmod(tmp_path / "lib" / "w.safetensors", 0o600)
        files.honour_umask(tmp_path / "lib")
    for name_ in ("a.json", "sub/b.parquet", "c.csv", name, "lib/w.safetensors"):
        assert stat.S_IMODE((tmp_path / name_).stat().st_mode) == expected, name_
    assert stat.S_IMODE((tmp_path / "secret").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "lib").stat().st_mode) == 0o777 & ~mask


@pytest.fixture()
def shared_folder():
    """A folder every account can reach (pytest's own temp root is 0700)."""
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="pickapic-shared-"))
    os.chmod(folder, 0o755)
    yield folder
    shutil.rmtree(folder)


def test_another_account_reads_what_the_tool_writes(published: DataHome, shared_folder: Path) -> None:
    with umask(0o022):
        files.write_bytes_atomic(shared_folder / "sizes.json", b'{"a": 1}\n')
        files.write_bytes_atomic(shared_folder / "secret.key", b"hidden", private=True)
        assert query.run_query(published, "SELECT 7 AS n", fmt="csv", output=shared_folder / "q" / "r.csv",
                               stderr=io.StringIO()) == 0
    with umask(0o077):
        files.write_bytes_atomic(shared_folder / "private-by-umask.json", b"{}")
    assert read_as_other_account(shared_folder / "sizes.json") == b'{"a": 1}\n'
    assert read_as_other_account(shared_folder / "q" / "r.csv").splitlines() == [b'"n"', b"7"]
    assert read_as_other_account(shared_folder / "secret.key") is None
    assert read_as_other_account(shared_folder / "private-by-umask.json") is None


# --------------------------------------------------------------------------- linked folders, foreign files, all or nothing
def test_linked_parent_folders_are_refused(published: DataHome, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A link among the folders of an output path (live or dangling) is refused, nothing is made at its target."""
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "live").symlink_to(real, target_is_directory=True)
    (tmp_path / "dangling").symlink_to(tmp_path / "ghost" / "deep", target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    for link in ("live", "dangling"):
        for given in (tmp_path / link / "out.csv", Path(link) / "out.csv", tmp_path / link / "sub" / "out.csv"):
            with pytest.raises(outputs.RefusedOutput, match="symbolic link"):
                outputs.check_output_file(given, [published.root])
            with pytest.raises(outputs.RefusedOutput, match="symbolic link"):
                outputs.check_output_dir(given, [published.root])
            err = io.StringIO()
            assert query.run_query(published, "SELECT 1 AS a", fmt="csv", output=given, stderr=err) == 2
            assert "symbolic link" in err.getvalue()
            with pytest.raises(outputs.RefusedOutput, match="symbolic link"):
                export.export_eval_prompts(published, None, given)
    assert list(real.iterdir()) == [] and not (tmp_path / "ghost").exists()
    # a path without links still works, folders made as needed
    assert outputs.check_output_file(Path("real") / "new" / "x.csv") == real / "new" / "x.csv"


def test_export_replaces_only_files_an_earlier_export_wrote(published: DataHome, tmp_path: Path) -> None:
    """A folder merely holding files named like an export's is refused; an earlier export lists its files."""
    mine = tmp_path / "project"
    mine.mkdir()
    for name, text in (("train.parquet", "MY TRAIN"), ("test.parquet", "MY TEST"), ("notes.txt", "notes")):
        (mine / name).write_text(text)
    evals = tmp_path / "evals"
    evals.mkdir()
    (evals / "eval_prompts.parquet").write_text("MINE")
    (evals / "other.txt").write_text("x")
    before = {p.name: _state(p) for folder in (mine, evals) for p in folder.iterdir()}
    with pytest.raises(outputs.RefusedOutput, match="not a previous output"):
        export.export_pickscore_parquet(published, None, mine)
    with pytest.raises(outputs.RefusedOutput, match="not a previous output"):
        export.export_eval_prompts(published, None, evals)
    assert {p.name: _state(p) for folder in (mine, evals) for p in folder.iterdir()} == before
    out = tmp_path / "export"
    report = export.export_pickscore_parquet(published, None, out)
    record = json.loads((out / export.EXPORT_MARKER).read_text())
    # the split files and the folder's dataset card (review rev28c)
    assert record["files"] == sorted([*(Path(f).name for f in report.files.values()), "README.md"])
    (out / "notes.txt").write_text("the user's")                  # a file of the user's beside an export stays
    export.export_eval_prompts(published, None, out)               # the other format into the same folder
    export.export_pickscore_parquet(published, None, out)          # and the first one again
    assert (out / "notes.txt").read_text() == "the user's"
    assert json.loads((out / export.EXPORT_MARKER).read_text())["files"] == sorted(record["files"] + ["eval_prompts.parquet"])
    # a file the record does not list is never replaced, even in an earlier export
    (out / "eval_prompts.parquet").unlink()
    export.export_pickscore_parquet(published, None, out)          # the record drops what is gone
    (out / "eval_prompts.parquet").write_text("MINE")
    with pytest.raises(outputs.RefusedOutput, match="not written by this command before"):
        export.export_eval_prompts(published, None, out)
    assert (out / "eval_prompts.parquet").read_text() == "MINE"
    (out / export.EXPORT_MARKER).write_text("[1, 2]")               # a record the tool did not write
    with pytest.raises(outputs.RefusedOutput, match="not a record this tool wrote"):
        export.export_pickscore_parquet(published, None, out)


def test_failed_export_leaves_the_folder_as_it_was(published: DataHome, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "export"
    export.export_pickscore_parquet(published, None, out)
    before = {p.name: _state(p) for p in out.iterdir()}
    (out / "test.parquet").unlink()
    (out / "test.parquet").symlink_to(tmp_path / "elsewhere")     # every target is checked before any is written
    with pytest.raises(outputs.RefusedOutput, match="symbolic link"):
        export.export_pickscore_parquet(published, None, out)
    assert {p.name: _state(p) for p in out.iterdir() if p.name != "test.parquet"} == \
        {k: v for k, v in before.items() if k != "test.parquet"}
    (out / "test.parquet").unlink()
    before = {p.name: _state(p) for p in out.iterdir()}
    calls = []
    real_rows = export._export_rows

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise OSError("disk gone")
        return real_rows(*args, **kwargs)

    monkeypatch.setattr(export, "_export_rows", failing)
    for target in (out, tmp_path / "new" / "export"):               # an earlier export, a new folder
        calls.clear()
        with pytest.raises(OSError, match="disk gone"):
            export.export_pickscore_parquet(published, None, target)
    assert {p.name: _state(p) for p in out.iterdir()} == before    # no file replaced, no temp file left
    assert not (tmp_path / "new").exists()


def test_a_killed_exports_own_temporary_files_do_not_block_its_rerun(published: DataHome, tmp_path: Path) -> None:
    # a hostile review: SIGKILL mid-export left .train.parquet.<hex>.tmp; the same command was then refused
    out = tmp_path / "export"
    out.mkdir()
    (out / ".train.parquet.0123456789ab.tmp").write_bytes(b"half a split")
    (out / ".notes.txt.0123456789ab.tmp").write_bytes(b"not the export's")   # another name: kept, and refused
    with pytest.raises(outputs.RefusedOutput):
        export.export_pickscore_parquet(published, None, out)
    (out / ".notes.txt.0123456789ab.tmp").unlink()
    export.export_pickscore_parquet(published, None, out)
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    assert (out / "pickapic-export.json").is_file()
