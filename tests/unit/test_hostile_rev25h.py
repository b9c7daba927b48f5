"""Hostile review rev25h: the two fixes of review rev25b merged today (seven defects, each filed as a strict
xfail; all fixed the same day by fix25h, and the tests now pass as plain tests).

- c08fc7d (fix25b1): users lines masked in the warehouse quarantine (``parse.redact_personal``), the rules of
  split_ledger / split_key_owners / split_rejects / raw_zone_problems as blocking asset checks, raw-zone entries
  warned about and recorded by every build (``pipelines.ingest.rawrecord``);
- 427a76b (fix25b2): ``formats.commands.run_command`` (one-line errors of the stage modules), ``pickapic`` on a
  closed stdout, dedup's checks of its home and ``--truth`` before it writes.

Each defect was confirmed by running the real component (the real ingest, the real ``pickapic build`` on a
simulated home, the real stage modules); each test states the correct behaviour and fails now.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from curation_fixtures import HomeBuilder
from test_ingest_fixtures import DayBuilder

from formats.commands import run_command
from formats.home import DataHome
from pipelines.ingest.day import ingest_day

ROOT = Path(__file__).resolve().parents[2]
DAY = "2023-03-01"
EMAIL, NAME = "zelda.quinn@example.com", "Zelda Quinn"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PICKAPIC_HOME", "PICKAPIC_FAULT", "PYTHONUNBUFFERED")}
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


# --- 1. a stray file name in the raw zone stops every nightly build --------------------------------------------

def test_two_stray_names_that_display_alike_do_not_fail_the_ingest_checks(tmp_path: Path) -> None:
    from dagster_project.assets.ingest import RAW_ZONE_RECORD, RAW_ZONE_RECORD_ASSET
    from dagster_project.contracts import materialize_and_check
    from dagster_project.versions import INGEST_DATASETS

    home = DataHome(tmp_path / "home")
    DayBuilder(DAY).populate(users=2, images=4, rankings=2, downloads=1).write(home)
    open(os.path.join(os.fsencode(home.raw_logs), b"notes\xff.txt"), "w").close()   # an uploader's odd bytes
    (home.raw_logs / "notes\\xff.txt").write_text("")                                  # and a name with a backslash
    report = ingest_day(home, DAY)
    assert report.reconciled
    out = list(materialize_and_check(home, INGEST_DATASETS, report, partition=DAY, data_version="v1",
                                     also={RAW_ZONE_RECORD_ASSET: RAW_ZONE_RECORD}))
    failed = [r.check_name for r in out if isinstance(r, dg.AssetCheckResult) and not r.passed]
    versions = {r.data_version.value for r in out if isinstance(r, dg.MaterializeResult)}
    assert failed == [] and versions == {"v1"}


# --- 2. an email in another table's line reaches the warehouse quarantine ----------------------------------------

def test_an_email_in_a_line_of_another_table_is_masked_in_the_warehouse_quarantine(tmp_path: Path) -> None:
    home = DataHome(tmp_path / "home")
    b = DayBuilder(DAY).populate(users=3, images=4, rankings=2, downloads=1)
    planted = {
        b.add("rankings", {**b.ranking(), "email": EMAIL, "name": NAME}),
        b.add("rankings", b.ranking(user_id=EMAIL)),
        b.add("downloads", {**b.download(), "user_email": EMAIL}),
    }
    b.write(home)
    assert ingest_day(home, DAY).reconciled
    rows = [r for r in pq.read_table(home.partition_file("quarantine", DAY)).to_pylist()
            if r["table"] in ("rankings", "downloads")]
    mine = [r for r in rows if r["line_number"] in planted]
    assert len(mine) >= 3
    for row in mine:
        line = b.lines[row["table"]][row["line_number"] - 1]
        assert row["raw_sha256"] == hashlib.sha256(line).hexdigest()      # still found in the raw zone
    for row in rows:
        assert EMAIL not in (row["raw_text"] or "") and EMAIL not in row["detail"], row


# --- 3. pickapic build into a closed stdout: the error is lost, success exits 1 ----------------------------------

_FAKE_BUILD = r'''
import sys
import dagster_project.build as b
def fake(home, **kw):
    if sys.argv[1] == "fail":
        raise b.BuildError("the nightly failed: disk quota exceeded on warehouse/")
    kw["progress"]("ingest 2023-03-01")
    return b.BuildResult(days=["2023-03-01"], run_ids={"x": "r"}, plan=["x"])
b.build = fake
from dagster_project import cli
sys.exit(cli.main(["build", "--home", sys.argv[2]]))
'''


def _build_into_closed_pipe(mode: str, home: Path) -> subprocess.CompletedProcess:
    read, write = os.pipe()
    os.close(read)
    try:
        return subprocess.run([sys.executable, "-c", _FAKE_BUILD, mode, str(home)], stdout=write,
                              stderr=subprocess.PIPE, text=True, env=_env(), cwd=str(ROOT), timeout=300, check=False)
    finally:
        os.close(write)


def test_a_build_into_a_closed_stdout_reports_its_failure_and_its_success(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / "raw" / "app_logs" / f"dt={DAY}").mkdir(parents=True)
    failed = _build_into_closed_pipe("fail", home)
    assert failed.returncode == 1
    assert "disk quota exceeded" in failed.stderr, failed.stderr
    done = _build_into_closed_pipe("ok", home)
    assert done.returncode == 0, (done.returncode, done.stderr)


# --- 4. run_command turns real bugs into one line -----------------------------------------------------------------

def test_run_command_keeps_the_traceback_of_an_interpreter_error(capsys: pytest.CaptureFixture) -> None:
    def recurse(n: int) -> int:
        return recurse(n + 1)

    def buggy(argv: object) -> None:
        recurse(0)

    def mutating(argv: object) -> None:
        seen = {1: 1}
        for key in seen:
            seen[key + 1] = 1

    with pytest.raises(RecursionError):
        run_command("python -m pipelines.ingest", buggy, [])
    with pytest.raises(RuntimeError, match="changed size during iteration"):
        run_command("python -m pipelines.ingest", mutating, [])


# --- 5. dedup --truth of the wrong types: the table is rewritten before the refusal --------------------------------

@pytest.fixture()
def featured(tmp_path: Path) -> Path:
    builder = HomeBuilder(tmp_path / "home")
    for uid in ("a", "b", "c"):
        builder.image(uid)
    return builder.write().root


def test_dedup_refuses_a_truth_file_of_the_wrong_types_before_rewriting(featured: Path, tmp_path: Path) -> None:
    from pipelines.curation import dedup

    dedup.main(["--home", str(featured)])
    table = featured / "warehouse" / "duplicate_clusters" / "data.parquet"
    before = (table.stat().st_ino, table.read_bytes())
    truth = tmp_path / "duplicates.parquet"
    pq.write_table(pa.table({"group_id": [1], "image_uid": [5], "kind": [3], "source_uid": [7]}), truth)
    with pytest.raises(Exception) as refused:
        dedup.main(["--home", str(featured), "--truth", str(truth)])
    assert (table.stat().st_ino, table.read_bytes()) == before
    assert str(refused.value).startswith(f"--truth {truth} "), refused.value


# --- 6. a stage whose progress meets a closed stdout stops its work and exits 0 ----------------------------------

def test_the_feature_stage_into_a_closed_stdout_does_its_work_or_fails(tmp_path: Path) -> None:
    home = DataHome(tmp_path / "home")
    DayBuilder(DAY).populate(users=2, images=4, rankings=2, downloads=1).write(home)
    assert ingest_day(home, DAY).reconciled
    read, write = os.pipe()
    os.close(read)
    try:
        done = subprocess.run([sys.executable, "-m", "pipelines.features", "--home", str(home.root), "--day", DAY],
                              stdout=write, stderr=subprocess.PIPE, text=True, env=_env(), cwd=str(ROOT),
                              timeout=300, check=False)
    finally:
        os.close(write)
    written = home.partition_file("image_features", DAY).is_file()
    assert written or done.returncode != 0, (done.returncode, done.stderr)
    assert written == (done.returncode == 0)


# --- 7. a refused build writes into the warehouse ---------------------------------------------------------------

def test_a_refused_build_writes_nothing_in_the_warehouse(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from dagster_project import cli

    home = DataHome(tmp_path / "home")
    DayBuilder(DAY).populate(users=2, images=4, rankings=2, downloads=1).write(home)
    assert ingest_day(home, DAY).reconciled
    table = home.table_file("raw_zone_problems")
    before = (table.stat().st_ino, table.read_bytes())
    (home.raw_logs / "stray.txt").write_text("x\n")
    code = cli.main(["build", "--home", str(home.root), "--set", "nosuch.key=1"])
    err = capsys.readouterr().err
    assert code != 0 and "unknown setting 'nosuch.key'" in err, err
    assert (table.stat().st_ino, table.read_bytes()) == before
