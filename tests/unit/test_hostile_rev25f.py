"""Hostile review rev25f: the fixes of review rev25c (commits 77bff1d + 778452f, fix25c1: nested-bracket prompt
cleaning, ``empty_prompt``, numbers judged as written, every version of a conflicting key quarantined including a
rejected line with a valid key (spill log, worker split redone, a 100,000-key cap), a leading UTF-8 BOM skipped;
and 10ff9ab, fix25c2: ``mismatched_image``, ``conflicting_image``, ``IngestNotReconciled``, ``quarantine_reasons``
lines, decisions code version 7).

Each test states the correct behaviour (filed as strict xfails; all seven fixed the same day by fix25f). Confirmed by
running real ingests (``ingest_day``), real curation (``build_decisions`` / ``build_pairs``) and the real CLI
(``pickapic simulate`` + ``pickapic build``, an old-code build followed by a new-code build of the same home).
"""
from __future__ import annotations

import datetime as dt
import json
import multiprocessing
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from curation_fixtures import HomeBuilder, build_all
from test_ingest_fixtures import DayBuilder

from dagster_project.versions import CODE_VERSIONS
from formats.home import DataHome
from pipelines.curation.decisions import IngestNotReconciled, check_ingest_reconciled
from pipelines.ingest import parse as rp
from pipelines.ingest import reader
from pipelines.ingest.config import IngestConfig
from pipelines.ingest.day import ingest_day
from pipelines.sqlrun import connect

DAY = "2023-03-01"


# --- 1. ingest output changed, ingest code version not bumped ------------------------------------------------

def test_the_ingest_code_version_was_bumped_for_the_rev25c_rules():
    assert CODE_VERSIONS["ingest"] != "3"


# --- 2. versions of a key that fail before typing are not counted: the other version is guessed ---------------

def _ingest_with_second_version(tmp_path, second: bytes):
    home = DataHome(tmp_path / "home")
    b = DayBuilder(DAY).populate(users=3, images=6, rankings=3, downloads=0)
    shown = b.image_uids
    good = b.ranking(ranking_id=500, image_0_uid=shown[0], image_1_uid=shown[1], best_image_uid=shown[0])
    b.add("rankings", good)
    b.lines["rankings"].append(second.replace(b"@GOOD@", json.dumps(
        dict(good, best_image_uid=shown[1]))[1:-1].encode()))
    b.write(home)
    report = ingest_day(home, DAY)
    accepted = pq.read_table(home.partition_file("rankings", DAY)).column("ranking_id").to_pylist()
    return report, accepted


@pytest.mark.parametrize("second", [
    b'{@GOOD@, "gs": NaN}',                             # a NaN written by a Python json.dumps export: invalid_value
    b'{@GOOD@, "prompt": "another caption"}',           # a member named twice: malformed_json
], ids=["nan_constant", "member_named_twice"])
def test_a_version_rejected_in_the_json_decode_still_conflicts(tmp_path, second):
    report, accepted = _ingest_with_second_version(tmp_path, second)
    assert report.tables["rankings"].quarantined == 2
    assert 500 not in accepted
    assert report.tables["rankings"].reasons.get("conflicting_primary_key") == 1


# --- 3. IngestNotReconciled: the advised remedy does not cure a stray file -----------------------------------

def _reconcile(home: DataHome) -> None:
    con = connect({name: home.table_glob(name) for name in ("rankings", "images", "ingest_files")})
    try:
        check_ingest_reconciled(con)
    finally:
        con.close()


def test_the_advised_re_ingest_cures_a_stray_partition_file_or_the_refusal_names_it(tmp_path):
    home = DataHome(tmp_path / "home")
    DayBuilder(DAY).populate(users=3, images=4, rankings=2, downloads=0).write(home)
    ingest_day(home, DAY)
    _reconcile(home)                                            # a fresh ingest is reconciled
    stray = home.partition_file("rankings", DAY).with_name("part-0-copy.parquet")
    stray.write_bytes(home.partition_file("rankings", DAY).read_bytes())
    with pytest.raises(IngestNotReconciled):
        _reconcile(home)
    ingest_day(home, DAY)                                       # what `build --force --from DAY --to DAY` runs
    try:
        _reconcile(home)
    except IngestNotReconciled as exc:
        assert "part-0-copy.parquet" in str(exc)


# --- 4. a crashed ingest leaves its spill folder behind for good ---------------------------------------------

def _crash_after_first_spill(root: str) -> None:
    real = reader._RepeatLog._flush

    def flush_then_die(self):
        real(self)
        os._exit(137)            # SIGKILL / OOM kill right after the spill log reached disk

    reader._RepeatLog.max_events = 2
    reader._RepeatLog._flush = flush_then_die
    ingest_day(DataHome(Path(root)), DAY)
    os._exit(0)


def test_a_crashed_ingest_leaves_no_spill_folder_after_the_rerun(tmp_path):
    home = DataHome(tmp_path / "home")
    b = DayBuilder(DAY).populate(users=3, images=6, rankings=3, downloads=0)
    for n in range(8):                                          # rejected lines with a valid key: the spill log
        b.add("rankings", {**b.ranking(ranking_id=700 + n), "prompt": "[ugly]"})
    b.write(home)
    child = multiprocessing.get_context("fork").Process(target=_crash_after_first_spill, args=(str(home.root),))
    child.start()
    child.join(120)
    assert child.exitcode == 137                                # it did crash after spilling
    assert any((home.cache / "tmp").glob("ingest-*/*"))         # the spill is on disk
    report = ingest_day(home, DAY)                              # the rerun
    assert report.tables["rankings"].reasons == {"empty_prompt": 8}
    assert sorted(p.name for p in (home.cache / "tmp").glob("ingest-*")) == []


# --- 5. mismatched_image: the app's control image costs the whole ranking -------------------------------------

def test_a_ranking_showing_the_control_image_keeps_its_pairs_of_matching_images(tmp_path):
    b = HomeBuilder(tmp_path)
    b.image("ctl", user=99, prompt="a red square on white")     # the control image, shown to everyone
    for uid in ("c0", "c1", "c2"):
        b.image(uid, prompt="a cat")
    b.ranking(10, ["c0", "c1", "ctl", "c2"], "c0")
    home = b.write()
    build_all(home)
    pairs = pq.read_table(home.table_file("pairs")).to_pylist()
    kept = sorted(tuple(sorted((p["image_0_uid"], p["image_1_uid"]))) for p in pairs if p["ranking_id"] == 10)
    assert kept == [("c0", "c1"), ("c0", "c2")]


# --- 6. empty_prompt misses prompts that render as nothing ---------------------------------------------------

def _ranking_line(prompt: str) -> bytes:
    shown = ["12345678-1234-4234-8234-123456789abc", "12345678-1234-4234-8234-123456789abd"]
    return json.dumps({"ranking_id": 5, "created_at": "2023-03-01 10:00:00", "user_id": 1, "image_0_uid": shown[0],
                       "image_1_uid": shown[1], "image_2_uid": None, "image_3_uid": None,
                       "best_image_uid": shown[0], "prompt": prompt}).encode()


@pytest.mark.parametrize("prompt", ["\u200b", "\u2060\u2060", "\u3164", "\u2800", " [ugly, blurry] \u200b "],
                         ids=["zwsp", "word_joiner", "hangul_filler", "braille_blank", "bracketed_plus_zwsp"])
def test_a_prompt_that_renders_as_nothing_is_empty_prompt(prompt):
    parser = IngestConfig().line_parser("rankings", dt.date.fromisoformat(DAY))
    with pytest.raises(rp.Reject) as caught:
        parser.parse(_ranking_line(prompt))
    assert caught.value.reason == "empty_prompt"


# --- 7. an integer written with a huge exponent is judged on its double ---------------------------------------

def test_an_id_written_with_a_huge_exponent_is_invalid_value_as_written():
    parser = IngestConfig().line_parser("rankings", dt.date.fromisoformat(DAY))
    line = _ranking_line("a cat").replace(b'"ranking_id": 5', b'"ranking_id": 1e400')
    with pytest.raises(rp.Reject) as caught:
        parser.parse(line)
    assert (caught.value.reason, "inf" in caught.value.detail, "1e400" in caught.value.detail) == (
        "invalid_value", False, True)
