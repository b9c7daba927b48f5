"""fix33g: the benchmarks' work folders (review rev33g) and the peak memory of every row of ``benchmarks.run``.

Beyond the review's tests: the rules of :func:`benchmarks.claim` / :func:`benchmarks.remove_owned` /
:func:`benchmarks.work_folder` themselves (a symlink, a file, an empty folder, an earlier run's folder, the
marks of earlier versions), the neighbours the fix touched (``shards``, ``direct_io``, ``nightly``'s
``work`` and ``next-N``, ``metadata``'s ``scratch``, ``quarantine``'s per-kind folders), ``nightly.prepare``
reusing a snapshot of the same parameters and rebuilding one of an earlier version, and ``benchmarks.run``'s
per-benchmark process: its result, its peak memory, a failure or a killed process, the report and the JSON.
No benchmark runs at any size here: each is stopped at its first step, or replaced by a tiny function.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

import benchmarks
from benchmarks import OWNER_MARK, claim, remove_owned, work_folder

REPO = Path(__file__).resolve().parents[2]


def _boom(*_args, **_kwargs):
    raise RuntimeError("a benchmark step failed (simulated)")


def _foreign(folder: Path) -> Path:
    """A folder of the operator's own, with a file in it; returns the file."""
    folder.mkdir(parents=True)
    precious = folder / "precious.txt"
    precious.write_text("mine\n")
    return precious


# --- claim / remove_owned / work_folder -------------------------------------------------------------------------

def test_claim_makes_a_marked_folder_and_a_second_claim_wipes_it(tmp_path):
    folder = claim(tmp_path / "a" / "home")
    assert sorted(p.name for p in folder.iterdir()) == [OWNER_MARK]
    (folder / "old-output").write_text("x")
    again = claim(folder)
    assert sorted(p.name for p in again.iterdir()) == [OWNER_MARK]


def test_claim_refuses_a_folder_it_did_not_make_and_keeps_every_file(tmp_path):
    precious = _foreign(tmp_path / "home")
    (tmp_path / "home" / "sub").mkdir()
    with pytest.raises(ValueError, match="not made by a benchmark"):
        claim(tmp_path / "home")
    with pytest.raises(ValueError, match="not made by a benchmark"):
        remove_owned(tmp_path / "home")
    assert precious.read_text() == "mine\n" and (tmp_path / "home" / "sub").is_dir()
    assert not (tmp_path / "home" / OWNER_MARK).exists()


def test_claim_takes_an_empty_folder_and_a_missing_one(tmp_path):
    (tmp_path / "empty").mkdir()
    assert (claim(tmp_path / "empty") / OWNER_MARK).is_file()
    remove_owned(tmp_path / "missing")                      # nothing there: nothing to do
    assert not (tmp_path / "missing").exists()


def test_claim_refuses_a_symlink_even_to_a_marked_folder_and_a_file(tmp_path):
    target = claim(tmp_path / "target")
    (target / "kept").write_text("x")
    (tmp_path / "link").symlink_to(target)
    with pytest.raises(ValueError, match="symlink or a file"):
        claim(tmp_path / "link")
    assert (target / "kept").is_file() and (tmp_path / "link").is_symlink()
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="symlink or a file"):
        remove_owned(tmp_path / "dangling")
    (tmp_path / "file").write_text("mine")
    with pytest.raises(ValueError, match="symlink or a file"):
        claim(tmp_path / "file")
    assert (tmp_path / "file").read_text() == "mine"


def test_a_legacy_mark_counts_only_where_named(tmp_path):
    old = tmp_path / "snapshot-3"
    old.mkdir()
    (old / ".built").write_text("ok\n")
    with pytest.raises(ValueError):
        remove_owned(old)
    claim(old, legacy_marks=(".built",))
    assert sorted(p.name for p in old.iterdir()) == [OWNER_MARK]


def test_work_folder_removes_its_temporary_folder_on_failure_and_keeps_a_given_one(tmp_path, monkeypatch):
    import tempfile

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    with pytest.raises(KeyboardInterrupt):
        with work_folder(None, "bench-x-") as base:
            (base / "big").write_bytes(b"0" * 1000)
            raise KeyboardInterrupt
    assert list(scratch.iterdir()) == []
    with work_folder(None, "bench-x-", keep=True) as kept:
        pass
    assert kept.is_dir() and kept.parent == scratch
    given = tmp_path / "given" / "deeper"
    with pytest.raises(RuntimeError):
        with work_folder(given, "bench-x-") as base:
            assert base == given
            raise RuntimeError
    assert given.is_dir()


# --- the benchmarks the fix touched beyond the review's ---------------------------------------------------------

def test_shards_refuses_a_home_or_scratch_it_did_not_make(tmp_path, monkeypatch):
    from benchmarks import shards

    precious = _foreign(tmp_path / "home")
    with pytest.raises(ValueError):
        shards.run(10, 1, 0, False, tmp_path, days=1)
    assert precious.read_text() == "mine\n"
    precious.unlink()
    (tmp_path / "home").rmdir()
    precious = _foreign(tmp_path / "scratch")
    monkeypatch.setattr(shards, "build_history", lambda root, samples, days: (None, None))
    with pytest.raises(ValueError):
        shards.run(10, 1, 0, False, tmp_path, days=1)
    assert precious.read_text() == "mine\n"
    assert (tmp_path / "home" / OWNER_MARK).is_file()       # the benchmark's own, kept for the next run to wipe


def test_direct_io_refuses_a_trash_folder_it_did_not_make(tmp_path, monkeypatch):
    from benchmarks import direct_io

    monkeypatch.setattr(direct_io, "build_history", lambda root, samples, days: (None, None))
    precious = _foreign(tmp_path / "trash")
    with pytest.raises(ValueError):
        direct_io.run(10, 1, 1, 1, tmp_path)
    assert precious.read_text() == "mine\n"


def test_sidecar_scan_refuses_a_home_it_did_not_make(tmp_path):
    from benchmarks import sidecar_scan

    precious = _foreign(tmp_path / "home")
    with pytest.raises(ValueError):
        sidecar_scan.run(10, tmp_path)
    assert precious.read_text() == "mine\n"


def test_metadata_writes_its_copies_in_its_own_scratch_folder(tmp_path, monkeypatch):
    from benchmarks import metadata

    monkeypatch.setattr(metadata, "simulate", _boom)
    precious = _foreign(tmp_path / "scratch")
    with pytest.raises(ValueError):
        metadata.run(rankings=10, days=1, root=tmp_path)
    assert precious.read_text() == "mine\n"
    precious.unlink()
    (tmp_path / "scratch").rmdir()
    with pytest.raises(RuntimeError, match="simulated"):
        metadata.run(rankings=10, days=1, root=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home", "scratch"]


def test_quarantine_refuses_a_kind_folder_it_did_not_make(tmp_path, monkeypatch):
    from benchmarks import quarantine

    monkeypatch.setattr(quarantine, "_child", lambda *args: {"peak_rss_mb": 100.0})
    precious = _foreign(tmp_path / "distinct")
    with pytest.raises(ValueError):
        quarantine.run(lines=10, kinds=("distinct",), root=tmp_path)
    assert precious.read_text() == "mine\n"


def test_incremental_keeps_the_spare_day_in_a_folder_of_its_own(tmp_path, monkeypatch):
    from benchmarks import incremental

    monkeypatch.setattr(incremental, "simulate", _boom)
    precious = _foreign(tmp_path / "spare")
    with pytest.raises(ValueError):
        incremental.run(root=tmp_path)
    assert precious.read_text() == "mine\n"


# --- benchmarks.nightly: snapshots, next-N, work ----------------------------------------------------------------

def _fake_simulate(calls):
    def simulate(home, config):
        calls.append(config)
        day = home.raw_day(config.day(config.days - 1))
        day.mkdir(parents=True)
        (day / "rankings.jsonl.gz").write_bytes(b"")
    return simulate


def test_nightly_reuses_a_snapshot_of_the_same_parameters_and_rebuilds_an_old_one(tmp_path, monkeypatch):
    from benchmarks import nightly

    calls = []
    monkeypatch.setattr(nightly, "simulate", _fake_simulate(calls))
    monkeypatch.setattr(nightly, "timed_build", lambda home: (0.0, ""))
    snapshot, spare = nightly.prepare(2, 10, 10, 64, tmp_path)
    assert nightly.prepare(2, 10, 10, 64, tmp_path) == (snapshot, spare) and len(calls) == 1
    assert json.loads((snapshot / ".built").read_text())["users"] == 10
    (snapshot / ".built").write_text("ok\n")               # a snapshot of the version before: no configuration
    nightly.prepare(2, 10, 10, 64, tmp_path)
    assert len(calls) == 2
    day = next(p for p in spare.iterdir() if p.is_dir())   # a lost next day: built again, not reused without it
    import shutil
    shutil.rmtree(day)
    nightly.prepare(2, 10, 10, 64, tmp_path)
    assert len(calls) == 3


def test_nightly_refuses_a_snapshot_or_next_folder_it_did_not_make(tmp_path, monkeypatch):
    from benchmarks import nightly

    monkeypatch.setattr(nightly, "simulate", _boom)
    for name in ("snapshot-2", "next-2"):
        precious = _foreign(tmp_path / name)
        with pytest.raises(ValueError):
            nightly.prepare(2, 10, 10, 64, tmp_path)
        assert precious.read_text() == "mine\n"
        precious.unlink()
        (tmp_path / name).rmdir()


def test_nightly_one_night_refuses_a_work_folder_it_did_not_make(tmp_path, monkeypatch):
    from benchmarks import nightly

    calls = []
    monkeypatch.setattr(nightly, "simulate", _fake_simulate(calls))
    monkeypatch.setattr(nightly, "timed_build", lambda home: (0.0, ""))
    snapshot, spare = nightly.prepare(1, 10, 10, 64, tmp_path)
    precious = _foreign(tmp_path / "work")
    with pytest.raises(ValueError):
        nightly.one_night(1, snapshot, spare, tmp_path / "work")
    assert precious.read_text() == "mine\n"


# --- benchmarks.run: one process per benchmark, its peak memory on every row ------------------------------------

def _allocate(mb: int) -> int:
    block = bytearray(mb << 20)
    for i in range(0, len(block), 4096):
        block[i] = 1
    return len(block)


def _kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def test_isolated_returns_the_value_and_the_peak_of_the_child(monkeypatch):
    from benchmarks import run

    value, peak, error = run.isolated(_allocate, 300)
    assert (value, error) == (300 << 20, None)
    small_value, small_peak, _ = run.isolated(_allocate, 1)
    assert small_value == 1 << 20
    assert peak >= 300 and peak - small_peak >= 250            # the child's own memory, not a running maximum


def test_isolated_reports_an_exception_and_a_killed_process(capfd):
    from benchmarks import run

    value, peak, error = run.isolated(_boom)
    assert value is None and peak > 0 and "RuntimeError: a benchmark step failed (simulated)" in error
    value, peak, error = run.isolated(_kill_self)
    assert value is None and "killed by signal 9" in error


def _tiny_runner(quick: bool) -> dict:
    return {"n": _allocate(64 if quick else 1), "quick": quick}


def _tiny_rows(result: dict) -> list:
    from benchmarks.run import Row

    return [Row("tiny", "bytes allocated", result["n"], "B", "nothing", 1.0, float(result["n"]), "—")]


def test_run_prints_and_records_every_rows_peak_memory_and_time(tmp_path, monkeypatch, capsys):
    from benchmarks import run

    monkeypatch.setattr(run, "ORDER", ("tiny", "broken"))
    monkeypatch.setattr(run, "RUNNERS", {"tiny": _tiny_runner, "broken": lambda quick: _boom()})
    monkeypatch.setattr(run, "ROWS", {"tiny": _tiny_rows, "broken": _tiny_rows})
    out = tmp_path / "bench.json"
    assert run.main(["--quick", "--out", str(out)]) == 1
    printed = capsys.readouterr().out
    header = next(line for line in printed.splitlines() if line.startswith("benchmark"))
    assert "bench s" in header and "peak MB" in header
    payload = json.loads(out.read_text())
    peak = payload["benchmark_peak_rss_mb"]["tiny"]
    assert peak >= 64 and payload["results"]["tiny"]["quick"] is True
    (row,) = payload["rows"]
    assert row["peak_rss_mb"] == peak and row["seconds"] == payload["benchmark_seconds"]["tiny"]
    assert f"{peak:,.1f}" in next(line for line in printed.splitlines() if line.startswith("tiny"))
    failed = next(line for line in printed.splitlines() if line.startswith("broken: FAILED"))
    assert "simulated" in failed and "peak" in failed
    assert "broken" in payload["benchmark_peak_rss_mb"] and "broken" in payload["errors"]


def test_make_bench_passes_bench_args():
    done = subprocess.run(["make", "-n", "bench", "BENCH_ARGS=--quick --only dedup", "VENV=/nonexistent"],
                          cwd=REPO, capture_output=True, text=True)
    assert "-m benchmarks.run --quick --only dedup" in done.stdout, done.stdout + done.stderr


def test_readme_names_every_benchmark_that_make_bench_leaves_out():
    from benchmarks import run

    section = (REPO / "README.md").read_text(encoding="utf-8").split("\n## Benchmarks\n", 1)[1]
    intro = section[: section.index("```")]
    for name in run.ORDER:
        assert f"`{name}`" in intro
    table = section[: section.index("\n\n", section.index("| benchmark |"))]
    for name in {line.split("`")[1] for line in table.splitlines() if line.startswith("| `")}:
        if (REPO / "benchmarks" / f"{name}.py").is_file() and name not in run.ORDER:
            assert f"`{name}`" in intro, name
    assert benchmarks.OWNER_MARK in intro
