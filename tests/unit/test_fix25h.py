"""Fixes of hostile review rev25h, fast checks beside the review's own tests.

- ``formats.rawzone.display_name`` is injective (a backslash of the name doubled): two raw-zone entries never
  share a path in raw_zone_problems;
- every table's quarantined line is masked in the warehouse quarantine (``parse.mask_line``), and no table's
  detail shows a value that could be an email or a name;
- ``formats.commands.known_error``: a RuntimeError the interpreter raised is a bug (traceback), one the project
  raised is one line;
- ``formats.commands.progress_line``: a closed stdout drops progress, never the work;
- dedup ``--truth`` of the wrong types is refused before anything is written; a simulation's truth passes;
- ``pickapic build`` records the raw zone's problems only once its settings are read and it holds the build lock.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from curation_fixtures import HomeBuilder
from test_ingest_fixtures import DayBuilder

from formats.commands import error_message, known_error, run_command
from formats.home import DataHome
from formats.rawzone import display_name, scan_raw_zone
from pipelines.ingest import rawrecord
from pipelines.ingest.day import ingest_day
from pipelines.ingest.parse import REDACTED, LineParser, Reject, mask_line

ROOT = Path(__file__).resolve().parents[2]
DAY = "2023-03-01"
EMAIL, NAME = "zelda.quinn@example.com", "Zelda Quinn"
UID = "0b8f2d7e-1c3a-4b5e-9f6d-2a7c8e9f0a1b"


# --- raw-zone names: one text per name ----------------------------------------------------------------------

def test_display_name_is_injective_and_keeps_plain_names() -> None:
    names = [os.fsdecode(b"notes\xff.txt"), "notes\\xff.txt", "notes\\\\xff.txt", "notes\\", "notes\\\\",
             os.fsdecode(b"notes\\\xff"), "notes.txt", "caf\u00e9 \u2603.txt"]
    shown = [display_name(name) for name in names]
    assert len(set(shown)) == len(names), shown
    assert shown[-2:] == ["notes.txt", "caf\u00e9 \u2603.txt"]                  # UTF-8 without a backslash: as written
    assert shown[0] == "notes\\xff.txt" and shown[1] == "notes\\\\xff.txt"
    assert [display_name(name) for name in names] == shown                      # deterministic
    for text in shown:
        text.encode("utf-8")                                                     # always valid UTF-8


def test_two_alike_names_get_two_paths_in_the_scan(tmp_path: Path) -> None:
    logs = tmp_path / "raw" / "app_logs"
    logs.mkdir(parents=True)
    open(os.path.join(os.fsencode(logs), b"n\xff"), "w").close()
    (logs / "n\\xff").write_text("")
    paths = [p.path for p in scan_raw_zone(tmp_path).problems]
    assert sorted(paths) == ["raw/app_logs/n\\\\xff", "raw/app_logs/n\\xff"]


# --- the warehouse quarantine: no email or name, whatever the table ---------------------------------------------

LINES = [
    ("rankings", json.dumps({"ranking_id": 5, "created_at": "2023-03-01 10:00:00", "user_id": 7, "image_0_uid": UID,
                             "image_1_uid": UID, "best_image_uid": "none", "prompt": "a cat",
                             "email": EMAIL, "name": NAME})),
    ("rankings", json.dumps({"ranking_id": 5, "user_id": EMAIL, "prompt": f"portrait, mail {EMAIL}"})),
    ("downloads", json.dumps({"download_id": 1, "user_email": EMAIL, "profile": {"name": NAME, "mail": [EMAIL]}})),
    ("downloads", '{"download_id": 1, "prompt": "zelda.quinn\\u0040example.com", "user_id": 3}'),
    ("images", f'{{"image_id": 2, "model_id": "sd", "prompt": "x", "created_at": "{NAME}", "seed": "{EMAIL}'),  # cut
    ("images", f"not json at all {EMAIL} {NAME}"),
    ("images", f'["{EMAIL}", "{NAME}", 5, true, null]'),
    ("rankings", f'{{"ranking_id": 1, "{EMAIL}": "{NAME}", "user_id": "{NAME}"}}'),
    ("downloads", f'{{"download_id": 1, "best_image_uid": "{NAME}", "image_uid": "{EMAIL}"}}'),
]


@pytest.mark.parametrize("table, text", LINES)
def test_mask_line_leaves_no_email_or_name(table: str, text: str) -> None:
    masked = mask_line(table, text)
    for secret in (EMAIL, NAME, "zelda", "Zelda", "Quinn", "example.com"):
        assert secret not in masked, masked
    assert mask_line(table, text) == masked                                     # deterministic


def test_mask_line_keeps_what_finds_the_problem() -> None:
    line = json.dumps({"ranking_id": 5, "created_at": "2023-03-01 10:00:00.5", "user_id": "17", "image_0_uid": UID,
                       "image_1_uid": "ABC", "best_image_uid": "none", "prompt": "a red [ugly] cat \"quoted\"",
                       "seed": 1.5, "flag": True, "note": None})
    masked = mask_line("rankings", line)
    assert masked == line.replace('"ABC"', f'"{REDACTED}"')                      # only the letters in a uid field
    assert mask_line("images", '{"prompt": "mail me at a@b.org now", "model_id": "sd-1.5"}') == \
        f'{{"prompt": "mail me at {REDACTED} now", "model_id": "sd-1.5"}}'


def test_mask_line_is_bounded_on_a_hostile_line() -> None:
    text = '{"prompt": [' + '"a",' * 20_000 + "]}"
    masked = mask_line("images", text[: 64 * 1024])
    assert len(masked) <= 64 * 1024


_B = DayBuilder(DAY).populate(users=2, images=4, rankings=2, downloads=1)


@pytest.mark.parametrize("table, line, detail", [
    ("rankings", _B.ranking(user_id=EMAIL), "user_id: string <value>, expected integer"),
    ("downloads", {**_B.download(), EMAIL: 1}, "unexpected <value>"),
    ("downloads", _B.download(created_at=NAME), None),
    ("images", _B.image(image_uid=EMAIL), "image_uid = <value> is not a lowercase canonical UUID"),
    ("rankings", _B.ranking(best_image_uid=EMAIL), None),
    ("images", _B.image(prompt=f"  [{EMAIL}]  "), None),
])
def test_no_detail_of_any_table_shows_an_email_or_name(table: str, line: dict, detail: str | None) -> None:
    parser = LineParser(table, max_id=2**53, max_prompt_chars=2000, max_name_chars=256, gs_range=(0.0, 50.0),
                        ts_range=(dt.datetime(2022, 1, 1), dt.datetime(2023, 3, 4)))
    with pytest.raises(Reject) as refused:
        parser.parse(json.dumps(line).encode())
    assert EMAIL not in refused.value.detail and "Zelda" not in refused.value.detail, refused.value.detail
    if detail is not None:
        assert refused.value.detail == detail


def test_the_ingest_masks_every_table_and_is_byte_identical(tmp_path: Path) -> None:
    runs = []
    for name in ("a", "b"):
        home = DataHome(tmp_path / name)
        b = DayBuilder(DAY).populate(users=3, images=4, rankings=2, downloads=1)
        b.add("images", {**b.image(), "uploader": {"email": EMAIL, "name": NAME}})
        b.add("rankings", b.ranking(user_id=NAME))
        b.add("downloads", f'{{"download_id": 9, "note": "{EMAIL}"')
        b.write(home)
        assert ingest_day(home, DAY).reconciled
        table = home.partition_file("quarantine", DAY)
        text = json.dumps(pq.read_table(table).to_pylist(), default=str)
        assert EMAIL not in text and NAME not in text
        runs.append(table.read_bytes())
    assert runs[0] == runs[1]


# --- run_command: an interpreter's RuntimeError keeps its traceback ---------------------------------------------

def test_a_runtime_error_the_project_raises_is_one_line_and_the_interpreters_is_a_bug(capsys) -> None:
    def refused(argv):
        raise RuntimeError("version v3 fails its contracts, not publishing")

    assert run_command("p", refused) == 1
    assert capsys.readouterr().err == "p: error: version v3 fails its contracts, not publishing\n"

    def generator_bug(argv):
        def gen():
            yield next(iter(()))     # StopIteration inside a generator: RuntimeError raised by the interpreter
        list(gen())

    with pytest.raises(RuntimeError, match="generator raised StopIteration"):
        run_command("p", generator_bug)

    def unfinished(argv):
        raise NotImplementedError("todo")

    with pytest.raises(NotImplementedError):
        run_command("p", unfinished)
    assert known_error(ValueError("x")) and known_error(FileNotFoundError(2, "No such file", "/x"))
    assert error_message(KeyError("k")) is None


def test_pickapic_keeps_the_traceback_of_an_interpreter_error(monkeypatch, tmp_path: Path) -> None:
    from dagster_project import cli

    def buggy(args):
        seen = {1: 1}
        for key in seen:
            seen[key + 1] = 1

    monkeypatch.setattr(cli, "_cmd_settings", buggy)
    with pytest.raises(RuntimeError, match="changed size during iteration"):
        cli.main(["settings", "--home", str(tmp_path / "home")])


# --- a closed stdout drops the progress lines, never the work ----------------------------------------------------

PROGRESS_SCRIPT = """
import sys
from formats.commands import progress_line, run_command

def main(argv):
    for i in range(5000):
        progress_line(f"step {i}")
    open(sys.argv[1], "w").write("done")
    return 0

sys.exit(run_command("p", main))
"""


def test_progress_into_a_closed_stdout_does_not_stop_the_work(tmp_path: Path) -> None:
    read, write = os.pipe()
    os.close(read)
    marker = tmp_path / "done"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONUNBUFFERED",)}
    env["PYTHONPATH"] = str(ROOT)
    try:
        done = subprocess.run([sys.executable, "-c", PROGRESS_SCRIPT, str(marker)], stdout=write,
                              stderr=subprocess.PIPE, text=True, env=env, cwd=str(ROOT), timeout=120, check=False)
    finally:
        os.close(write)
    assert (done.returncode, done.stderr, marker.read_text()) == (0, "", "done")


# --- dedup --truth: types checked before writing; a simulation's truth passes ------------------------------------

@pytest.fixture()
def featured(tmp_path: Path) -> Path:
    builder = HomeBuilder(tmp_path / "home")
    for uid in ("a", "b", "c"):
        builder.image(uid)
    return builder.write().root


def test_dedup_truth_types(featured: Path, tmp_path: Path, capsys) -> None:
    from pipelines.curation import dedup

    good = tmp_path / "good.parquet"
    pq.write_table(pa.table({"group_id": pa.array([1, 1], pa.int64()), "image_uid": ["a", "b"],
                             "kind": ["source", "exact"], "source_uid": ["a", "a"]}), good)
    dedup.main(["--home", str(featured), "--truth", str(good)])
    assert "truth_pairs" in capsys.readouterr().out
    table = featured / "warehouse" / "duplicate_clusters" / "data.parquet"
    before = (table.stat().st_ino, table.read_bytes())
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"group_id": [1], "image_uid": ["a"], "kind": [3], "source_uid": ["a"]}), bad)
    with pytest.raises(ValueError, match=r"^--truth .*kind is int64, not a string; nothing was written"):
        dedup.main(["--home", str(featured), "--truth", str(bad)])
    assert (table.stat().st_ino, table.read_bytes()) == before


# --- pickapic build: the raw zone recorded only under the build lock, after its settings --------------------------

def test_a_build_refused_by_another_builds_lock_writes_nothing(tmp_path: Path, capsys) -> None:
    from dagster_project import cli
    from dagster_project.build import build_lock

    home = DataHome(tmp_path / "home")
    DayBuilder(DAY).populate(users=2, images=4, rankings=2, downloads=1).write(home)
    assert ingest_day(home, DAY).reconciled
    table = home.table_file("raw_zone_problems")
    before = (table.stat().st_ino, table.read_bytes())
    (home.raw_logs / "stray.txt").write_text("x\n")
    assert rawrecord.differs(home, home.scan_raw_zone())
    with build_lock(home):
        code = cli.main(["build", "--home", str(home.root)])
    err = capsys.readouterr().err
    assert code == 1 and "another build is running" in err and "stray.txt" in err, err   # warned, not written
    assert (table.stat().st_ino, table.read_bytes()) == before
    # what the build does under its lock once it holds it
    warned: list[str] = []
    assert rawrecord.record_noting(home, warned.append) and warned == []
    assert not rawrecord.differs(home, home.scan_raw_zone())
    assert pq.read_table(table).column("path").to_pylist() == ["raw/app_logs/stray.txt"]
