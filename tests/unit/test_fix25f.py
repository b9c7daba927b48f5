"""Fixes of review rev25f (the rev25c fixes of the ingest and curation): the ingest code version bumped, a version of
a key rejected in the JSON decode (NaN, a member named twice) counted as a version, a day's partition folders cleared
of files its ingest did not write (and the stray files named by IngestNotReconciled), crashed ingests' spill folders
swept, mismatched_image a pair decision, invisible-only prompts empty, 1e400 judged as written, the bracket rule
linear."""
from __future__ import annotations

import datetime as dt
import json
import os
import random
import re

import pyarrow.parquet as pq
import pytest
from curation_fixtures import HomeBuilder, build_all
from test_ingest_fixtures import DayBuilder

from formats.home import DataHome
from formats.locks import SCRATCH_MARKER
from pipelines.curation.decisions import IngestNotReconciled, check_ingest_reconciled
from pipelines.ingest import day as ingest
from pipelines.ingest import parse as rp
from pipelines.ingest.config import OUTPUT_DATASETS, IngestConfig
from pipelines.ingest.day import ingest_day
from pipelines.invisibles import renders_empty
from pipelines.sqlrun import connect

DAY = "2023-03-01"
SHOWN = ["12345678-1234-4234-8234-123456789abc", "12345678-1234-4234-8234-123456789abd"]


def _parser(table: str = "rankings") -> rp.LineParser:
    return IngestConfig().line_parser(table, dt.date.fromisoformat(DAY))


def _ranking(**over) -> dict:
    return {"ranking_id": 5, "created_at": "2023-03-01 10:00:00", "user_id": 1, "image_0_uid": SHOWN[0],
            "image_1_uid": SHOWN[1], "image_2_uid": None, "image_3_uid": None, "best_image_uid": SHOWN[0],
            "prompt": "a cat", **over}


def _reject(line: str | bytes, table: str = "rankings") -> rp.Reject:
    with pytest.raises(rp.Reject) as caught:
        _parser(table).parse(line.encode() if isinstance(line, str) else line)
    return caught.value


# --- a version rejected in the JSON decode ----------------------------------------------------------------------

def test_the_key_of_a_line_rejected_in_the_decode_is_read_when_it_reads_one_way():
    body = json.dumps(_ranking(ranking_id=500))[:-1]
    assert _reject(body + ', "gs": NaN}').key == 500                       # invalid_value, key read
    assert _reject(body + ', "gs": -Infinity}').key == 500
    assert _reject(body + ', "prompt": "x"}').key == 500                   # malformed_json (a member twice)
    assert _reject(body + ', "ranking_id": 500}').key == 500               # the key twice, alike
    assert _reject(body + ', "ranking_id": 501}').key is None               # the key twice, two ways: no key
    assert _reject(body + ', "ranking_id": 500.0}').key is None             # written two ways: no key
    assert _reject(body.replace('"ranking_id": 500', '"ranking_id": NaN') + "}").key is None
    assert _reject(body + ', "gs": NaN} trailing').key is None              # not one JSON object
    assert _reject(body + ', "gs": NaN, }').key is None                     # malformed besides
    assert _reject(body.replace('"ranking_id": 500', '"ranking_id": 0') + ', "gs": NaN}').key is None
    # a uid key (images): read the same way
    uid = "12345678-1234-4234-8234-1234567890ff"
    image = json.dumps({"image_id": 1, "image_uid": uid, "prompt": "a"})[:-1]
    assert _reject(image + ', "gs": NaN}', "images").key == uid
    assert _reject(image + ', "image_uid": "' + uid + '"}', "images").key == uid


def test_a_decode_reject_whose_key_reads_two_ways_guesses_nothing_and_conflicts_with_nothing(tmp_path):
    home = DataHome(tmp_path / "home")
    b = DayBuilder(DAY).populate(users=3, images=6, rankings=3, downloads=0)
    good = b.ranking(ranking_id=500)
    b.add("rankings", good)
    b.add("rankings", json.dumps(dict(good, ranking_id=600))[:-1] + ', "ranking_id": 500}')   # 600 or 500?
    b.write(home)
    report = ingest_day(home, DAY)
    accepted = pq.read_table(home.partition_file("rankings", DAY)).column("ranking_id").to_pylist()
    assert 500 in accepted
    assert report.tables["rankings"].reasons == {"malformed_json": 1}


def test_a_nan_version_conflicts_in_the_parallel_ingest_too(tmp_path):
    home = DataHome(tmp_path / "home")
    b = DayBuilder(DAY).populate(users=3, images=8, rankings=20, downloads=0)
    good = b.ranking(ranking_id=500)
    b.add("rankings", good)
    b.add("rankings", json.dumps(dict(good, best_image_uid="none"))[:-1] + ', "gs": NaN}')
    b.write(home)
    report = ingest_day(home, DAY, IngestConfig(workers=2, parallel_min_bytes=1))
    assert report.tables["rankings"].reasons == {"invalid_value": 1, "conflicting_primary_key": 1}
    assert 500 not in pq.read_table(home.partition_file("rankings", DAY)).column("ranking_id").to_pylist()


# --- a day's partition folders hold only its files; IngestNotReconciled names the strays ------------------------

def _reconcile(home: DataHome, with_home: bool = True) -> None:
    con = connect({name: home.table_glob(name) for name in ("rankings", "images", "ingest_files")})
    try:
        check_ingest_reconciled(con, home if with_home else None)
    finally:
        con.close()


def test_the_refusal_names_the_stray_files_escaped_and_the_re_ingest_removes_them(tmp_path):
    home = DataHome(tmp_path / "home")
    DayBuilder(DAY).populate(users=3, images=4, rankings=2, downloads=0).write(home)
    ingest_day(home, DAY)
    part = home.partition_file("rankings", DAY)
    odd = part.with_name("copy\n\u202e.parquet")                         # a newline and a bidi override in the name
    odd.write_bytes(part.read_bytes())
    (part.parent / "sub").mkdir()
    (part.parent / "sub" / "more.parquet").write_bytes(part.read_bytes())
    with pytest.raises(IngestNotReconciled) as refused:
        _reconcile(home)
    message = str(refused.value)
    assert "\n" not in message and "\u202e" not in message
    assert "warehouse/rankings/dt=2023-03-01/copy\\n\\u202e.parquet" in message
    assert "warehouse/rankings/dt=2023-03-01/sub" in message
    with pytest.raises(IngestNotReconciled) as plain:                       # without the home: counts only
        _reconcile(home, with_home=False)
    assert "copy" not in str(plain.value)
    ingest_day(home, DAY)
    _reconcile(home)
    for name in OUTPUT_DATASETS:
        assert os.listdir(home.partition_file(name, DAY).parent) == ["part-0.parquet"]


def test_a_linked_partition_folder_is_never_cleared(tmp_path):
    """A partition folder that is a link to a folder outside: the ingest removes nothing there."""
    home = DataHome(tmp_path / "home")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("mine")
    folder = home.partition_file("downloads", DAY).parent
    folder.parent.mkdir(parents=True)
    folder.symlink_to(outside)
    assert ingest.clear_partition_folders([home.partition_file("downloads", DAY)]) == []
    assert (outside / "keep.txt").read_text() == "mine"


# --- spill folders of crashed ingests ---------------------------------------------------------------------------

def test_only_unheld_spill_folders_of_the_ingest_s_own_names_are_swept(tmp_path):
    home = DataHome(tmp_path / "home")
    scratch = home.cache / "tmp"
    scratch.mkdir(parents=True)
    stale = scratch / "ingest-2023-03-01-abc_123"                           # a crashed ingest's: nobody holds it
    stale.mkdir()
    (stale / SCRATCH_MARKER).touch()                                        # made by an ingest (fix33a)
    (stale / "batch-0.pickle").write_bytes(b"raw text")
    other = scratch / "ingest-notes"                                        # not the tool's name
    other.mkdir()
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "x").write_text("x")
    (scratch / "ingest-2023-03-02-linked").symlink_to(target)               # a link: never followed nor removed
    with ingest._spill_folder(home, DAY) as running:                        # a running ingest's: held
        (running / "batch-0.pickle").write_bytes(b"spill")
        assert re.fullmatch(r"ingest-2023-03-01-\w+", running.name)
        assert ingest.sweep_spill_folders(home) == ["ingest-2023-03-01-abc_123"]
        assert running.is_dir() and not stale.exists()
    assert not running.exists()
    assert other.is_dir() and (target / "x").exists() and (scratch / "ingest-2023-03-02-linked").is_symlink()


# --- mismatched_image: a pair decision --------------------------------------------------------------------------

def test_a_chosen_control_image_drops_every_pair_of_its_ranking_with_the_pair_reason(tmp_path):
    b = HomeBuilder(tmp_path)
    b.image("ctl", user=99, prompt="a red square on white")
    for uid in ("c0", "c1", "c2"):
        b.image(uid, prompt="a cat")
    b.ranking(10, ["c0", "c1", "ctl", "c2"], "ctl")                         # the user chose the control image
    b.pair(11)
    home = b.write()
    build_all(home)
    decisions = pq.read_table(home.table_file("decisions")).to_pylist()
    pairs = pq.read_table(home.table_file("pairs")).to_pylist()
    assert [p["ranking_id"] for p in pairs] == [11]
    ranking = {d["reason"]: json.loads(d["evidence"]) for d in decisions
               if d["subject"] == "ranking" and d["subject_id"] == "10"}
    assert ranking == {"all_pairs_dropped": {"candidate_pairs": 3, "pair_reasons": ["mismatched_image"]}}
    assert sorted(d["reason"] for d in decisions if d["subject"] == "pair") == ["mismatched_image"] * 3


# --- empty_prompt: prompts that render as nothing ---------------------------------------------------------------

@pytest.mark.parametrize("prompt", ["\u00a0", "\u200b\u200c\u200d", "\u3164 \uffa0", "\u2800\u2800", "\u115f\u1160",
                                    "[a cat] \u2060", "\u034f", "\U000e0020"])
def test_invisible_or_blank_only_prompts_are_empty(prompt):
    assert renders_empty(rp.split_prompt(prompt)[0])
    reject = _reject(json.dumps(_ranking(prompt=prompt)))
    assert reject.reason == "empty_prompt" and reject.key == 5


@pytest.mark.parametrize("prompt", ["a\u200b", "\u3164x", "\u732b", "\u200b.", "[x] y \u2060", "\u0301"])
def test_a_prompt_with_something_visible_is_accepted_unchanged(prompt):
    values = _parser().parse(json.dumps(_ranking(prompt=prompt)).encode())
    assert values[8] == prompt                                             # the row keeps the prompt as written
    assert _parser().validate(rp.load_json(json.dumps(_ranking(prompt=prompt)))) == values


def test_an_optional_prompt_of_invisibles_is_not_empty_prompt():
    image = {"image_id": 1, "created_at": "2023-03-01 10:00:00", "image_uid": SHOWN[0], "user_id": 1,
             "prompt": "a cat", "negative_prompt": "\u200b", "seed": 1, "gs": 7.0, "steps": 25, "idx": 0,
             "num_generated": 2, "scheduler_cls": "x", "model_id": "m"}
    assert _parser("images").parse(json.dumps(image).encode())[5] == "\u200b"
    download = {"download_id": 1, "created_at": "2023-03-01 10:00:00", "user_id": 1, "image_uid": SHOWN[0],
                "prompt": "\u200b"}
    assert _parser("downloads").parse(json.dumps(download).encode())[4] == "\u200b"


# --- numbers as written -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("number,reason", [
    ("1e400", "invalid_value"), ("-1e400", "invalid_value"), ("1.5e400", "invalid_value"),
    ("1e99999999999999999999999999", "invalid_value"), ("1e-99999999999999999999999999", "wrong_type"),
    ("1e-400", "wrong_type")])
def test_an_id_with_a_huge_exponent_is_judged_as_written(number, reason):
    reject = _reject(json.dumps(_ranking()).replace('"ranking_id": 5', '"ranking_id": ' + number))
    assert (reject.reason, number in reject.detail, "inf" in reject.detail) == (reason, True, False)


def test_huge_exponents_elsewhere():
    line = json.dumps(_ranking()).replace('"user_id": 1', '"user_id": 1e400')
    assert _reject(line).reason == "invalid_value"
    line = json.dumps(_ranking()).replace('"prompt": "a cat"', '"prompt": 1e400')
    assert str(_reject(line)) == "wrong_type: prompt: number 1e400, expected string"
    image = {"image_id": 1, "created_at": "2023-03-01 10:00:00", "image_uid": SHOWN[0], "user_id": 1,
             "prompt": "a cat", "negative_prompt": None, "seed": 0, "gs": 7.0, "steps": 25, "idx": 0,
             "num_generated": 2, "scheduler_cls": "x", "model_id": "m"}
    text = json.dumps(image)
    assert _reject(text.replace('"gs": 7.0', '"gs": 1e400'), "images").reason == "invalid_value"
    assert _parser("images").parse(text.replace('"seed": 0', '"seed": 0e99999999999999999999').encode())[6] == 0


# --- the bracket rule: linear, the same matches -----------------------------------------------------------------

def test_the_bracket_rule_matches_as_the_quadratic_one_did():
    quadratic = re.compile(r"\s*\[([^\[\]]*)\]\s*")
    rng = random.Random(25)
    for _ in range(20000):
        text = "".join(rng.choice(" \t\u3000[]ab") for _ in range(rng.randint(0, 12)))
        assert rp.BRACKET_RE.findall(text) == quadratic.findall(text), text
        assert rp.BRACKET_RE.sub(" ", text) == quadratic.sub(" ", text), text
