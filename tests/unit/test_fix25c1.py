"""Fixes of review rev25c (ingest side): prompt cleaning to a fixed point, empty_prompt, ids judged as written,
no guessed key when another version fails a line rule, a byte order mark at the start of a file."""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import random
import re

import pyarrow.parquet as pq
import pytest
from test_ingest_fixtures import DayBuilder

from formats.home import DataHome
from pipelines.ingest import day as ingest
from pipelines.ingest import parse as rp
from pipelines.ingest import reader
from pipelines.ingest.config import OUTPUT_DATASETS, IngestConfig
from pipelines.ingest.day import ingest_day

DAY = "2023-03-01"
PAIR_RE = re.compile(r"\[[^\[\]]*\]")   # the *_prompt_clean contract rules' bracket pattern


def _parser(table: str) -> rp.LineParser:
    return IngestConfig().line_parser(table, dt.date.fromisoformat(DAY))


def _outcome(parser: rp.LineParser, line: str):
    """(values, None) or (None, (reason, detail)); the fast path and the reference rules must agree."""
    try:
        values = parser.parse(line.encode())
    except rp.Reject as exc:
        with pytest.raises(rp.Reject) as slow:
            parser.validate(rp.load_json(line))
        assert slow.value.reason == exc.reason
        return None, (exc.reason, exc.detail)
    assert parser.validate(rp.load_json(line)) == values
    return values, None


def _snapshot(home: DataHome) -> dict[str, bytes]:
    return {name: home.partition_file(name, DAY).read_bytes() for name in OUTPUT_DATASETS}


def _quarantine(home: DataHome, table: str) -> list[dict]:
    return [r for r in pq.read_table(home.partition_file("quarantine", DAY)).to_pylist() if r["table"] == table]


# --- prompt cleaning ------------------------------------------------------------------------------------------

def _single_pass(raw: str) -> tuple[str, str | None]:
    """The cleaning as it was before the fix (one pass of the single-level rule): the reference for plain text."""
    text = rp.unescape(raw)
    parts = [p.strip() for p in rp.BRACKET_RE.findall(text)]
    if not parts:
        return text.strip(), None
    return rp.BRACKET_RE.sub(" ", text).strip(), ", ".join(p for p in parts if p) or None


@pytest.mark.parametrize("raw, expected", [
    ("[[x]]", ("", "x")),
    ("a cat [ [ugly] ]", ("a cat", "ugly")),
    ("a [b [c] d] e", ("a e", "c, b d")),
    ("[a [b]", ("[a", "b")),                  # an unmatched [ stays
    ("a ] [b] [c", ("a ] [c", "b")),          # unmatched ] and [ stay
    ("x [a] [b] y", ("x  y", "a, b")),        # plain pairs: exactly as before
    ("[[single_quote]]", ("", "'")),
    ("a [b] ] [c [d]] e [", ("a ] e [", "b, d, c")),
])
def test_split_prompt_removes_nested_pairs_whole(raw, expected):
    assert rp.split_prompt(raw) == expected


def test_split_prompt_reaches_the_contract_fixed_point_and_keeps_plain_prompts_as_they_were():
    rng = random.Random(25)
    alphabet = ["[", "]", " ", "a", "b", "[single_quote]"]
    for _ in range(20_000):
        raw = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 16)))
        prompt, negative = rp.split_prompt(raw)
        assert not PAIR_RE.search(prompt) and "[single_quote]" not in prompt and prompt == prompt.strip(), raw
        before = _single_pass(raw)
        if not PAIR_RE.search(before[0]):    # no nesting: byte for byte what earlier ingests wrote
            assert (prompt, negative) == before, raw


def test_a_deeply_nested_prompt_is_cleaned_in_one_pass():
    deep = "a " + "[" * 999 + "x" + "]" * 999
    assert rp.split_prompt(deep) == ("a", "x")
    assert rp.split_prompt("[" * 1000 + "]" * 1000) == ("", None)


@pytest.mark.parametrize("table", ["images", "rankings"])
@pytest.mark.parametrize("prompt", ["", "   ", "[ugly, blurry]", "[[x]]", " [a] [ [b] ] "])
def test_a_required_prompt_empty_after_cleaning_is_empty_prompt(table, prompt):
    b = DayBuilder(DAY).populate(users=1, images=2, rankings=0, downloads=0)
    obj = b.image(prompt=prompt) if table == "images" else b.ranking(prompt=prompt)
    values, reject = _outcome(_parser(table), json.dumps(obj))
    assert values is None and reject[0] == rp.EMPTY_PROMPT and "empty after cleaning" in reject[1]


def test_a_prompt_with_text_beside_its_brackets_and_an_optional_download_prompt_are_accepted():
    b = DayBuilder(DAY).populate(users=1, images=2, rankings=0, downloads=0)
    assert _outcome(_parser("images"), json.dumps(b.image(prompt="[[x]] a cat")))[0] is not None
    assert _outcome(_parser("rankings"), json.dumps(b.ranking(prompt="'[single_quote]'")))[0] is not None
    assert _outcome(_parser("downloads"), json.dumps(b.download(prompt="[x]")))[0] is not None   # not required


def test_the_day_with_nested_and_empty_prompts_passes_its_clean_rule(tmp_path):
    home = DataHome(tmp_path / "home")
    b = DayBuilder(DAY).populate(users=2, images=4, rankings=0, downloads=0)
    b.add("images", b.image(prompt="[[x]]"))
    b.add("images", b.image(prompt="a [b [c] d] e"))
    b.add("rankings", b.ranking(prompt="a cat [ [ugly] ]"))
    b.add("rankings", b.ranking(prompt="  "))
    b.write(home)
    report = ingest_day(home, DAY)
    assert report.tables["images"].reasons == {"empty_prompt": 1}
    assert report.tables["rankings"].reasons == {"empty_prompt": 1}
    images = pq.read_table(home.partition_file("images", DAY)).to_pylist()
    assert {(r["prompt"], r["bracket_negative_prompt"]) for r in images} >= {("a e", "c, b d")}
    rankings = pq.read_table(home.partition_file("rankings", DAY)).to_pylist()
    assert [(r["prompt"], r["bracket_negative_prompt"]) for r in rankings] == [("a cat", "ugly")]


# --- ids as written -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("written, expected", [
    ("5.0", 5), ("5e0", 5), ("50E-1", 5), ("9007199254740992.0", 2**53),
    ("4503599627370497.5", "wrong_type"), ("9007199254740992.5", "wrong_type"),
    ("1.00000000000000000001", "wrong_type"), ("1e-400", "wrong_type"),
    ("9007199254740993.0", "invalid_value"), ("9007199254740993", "invalid_value"),
    ("1e400", "invalid_value"), ("1e999999999", "invalid_value"),       # as written, not as inf (review rev25f)
    ("1e-99999999999999999999", "wrong_type"),
])
def test_an_id_is_judged_on_the_number_as_written(written, expected):
    b = DayBuilder(DAY).populate(users=1, images=2, rankings=0, downloads=0)
    line = json.dumps(b.ranking(ranking_id=7)).replace('"ranking_id": 7,', f'"ranking_id": {written},')
    values, reject = _outcome(_parser("rankings"), line)
    if isinstance(expected, int):
        assert values is not None and values[0] == expected and type(values[0]) is int
    else:
        assert values is None and reject[0] == expected, reject


def test_an_integer_field_takes_the_exact_integer_written_and_a_measure_keeps_its_double():
    b = DayBuilder(DAY).populate(users=1, images=0, rankings=0, downloads=0)
    line = json.dumps(b.image(seed=1, gs=7.5)).replace('"seed": 1,', '"seed": 9007199254740993.0,')
    line = line.replace('"gs": 7.5,', '"gs": 7.00000000000000000001,')
    values, _ = _outcome(_parser("images"), line)
    assert values[6] == 9007199254740993 and type(values[6]) is int   # not the double 2^53
    assert values[7] == 7.0 and type(values[7]) is float
    huge = json.dumps(b.image(seed=1)).replace('"seed": 1,', '"seed": 1e300,')
    assert _outcome(_parser("images"), huge)[1] == ("invalid_value", f"seed = 1e300 outside [0, {2**63 - 1}]")
    assert _outcome(_parser("images"), huge.replace("1e300", "1.5e-999999999"))[1][0] == "wrong_type"
    assert _outcome(_parser("images"), huge.replace("1e300", "1e999999999"))[1][0] == "invalid_value"   # rev25f


# --- a key whose other version fails a line rule --------------------------------------------------------------

def _two_versions(b: DayBuilder, bad_first: bool) -> tuple[dict, dict]:
    shown = b.image_uids
    good = b.ranking(ranking_id=500, image_0_uid=shown[0], image_1_uid=shown[1], best_image_uid=shown[0])
    bad = dict(good, best_image_uid=shown[1], created_at=good["created_at"].replace(" ", "T") + "Z")
    for obj in ((bad, good) if bad_first else (good, bad)):
        b.add("rankings", obj)
    return good, bad


def test_the_valid_version_is_conflicting_whichever_line_comes_first(tmp_path):
    home = DataHome(tmp_path / "home")
    b = DayBuilder(DAY).populate(users=3, images=6, rankings=3, downloads=0)
    _two_versions(b, bad_first=True)
    b.write(home)
    report = ingest_day(home, DAY)
    assert 500 not in pq.read_table(home.partition_file("rankings", DAY)).column("ranking_id").to_pylist()
    assert report.tables["rankings"].accepted == 3 and report.reconciled
    rows = {q["line_number"]: q for q in _quarantine(home, "rankings")}
    assert rows[4]["reason"] == "bad_timestamp"
    assert rows[5]["reason"] == "conflicting_primary_key"
    assert rows[5]["detail"] == ("ranking_id 500 has 2 lines with different content (lines 4, 5); 1 of them failed a "
                                 "line rule and is quarantined under its own reason (line 4: bad_timestamp)")
    good_line = b.lines["rankings"][4]
    assert rows[5]["raw_sha256"] == hashlib.sha256(good_line).hexdigest()   # the line's own bytes, re-read


def test_a_rejected_line_with_a_key_no_other_line_has_changes_nothing_else(tmp_path):
    home = DataHome(tmp_path / "home")
    b = DayBuilder(DAY).populate(users=3, images=4, rankings=2, downloads=0)
    b.add("users", {**b.user(user_id=900), "created_at": "yesterday"})
    b.add("users", {"user_id": b.user_ids[0]})     # a version of user 1 without its fields: user 1 is not guessed
    b.write(home)
    report = ingest_day(home, DAY)
    assert report.tables["users"].reasons == {"bad_timestamp": 1, "missing_field": 1, "conflicting_primary_key": 1}
    accepted = pq.read_table(home.partition_file("users", DAY)).column("user_id").to_pylist()
    assert accepted == b.user_ids[1:3] and 900 not in accepted


def test_rejected_keys_spilled_give_the_same_bytes(tmp_path, monkeypatch):
    """The keys of rejected lines go to a spill log (flat memory); spilling after every 2 changes no byte."""
    home = DataHome(tmp_path / "home")
    b = DayBuilder(DAY).populate(users=3, images=6, rankings=4, downloads=0)
    for n in range(12):
        if n % 3 == 0:
            _two_versions(b, bad_first=n % 2 == 0)
            for at in (-1, -2):
                b.lines["rankings"][at] = b.lines["rankings"][at].replace(b'"ranking_id": 500',
                                                                          f'"ranking_id": {600 + n}'.encode())
        b.add("rankings", {**b.ranking(ranking_id=700 + n), "prompt": ""})
    b.write(home)
    first = ingest_day(home, DAY)
    expected = _snapshot(home)
    assert first.tables["rankings"].reasons == {"bad_timestamp": 4, "conflicting_primary_key": 4, "empty_prompt": 12}
    monkeypatch.setattr(reader._RepeatLog, "max_events", 2)
    ingest_day(home, DAY)
    assert _snapshot(home) == expected


def test_a_rejected_version_on_another_worker_redoes_the_table(tmp_path, monkeypatch):
    """The bad version's key is spelled with an escape the router cannot read (worker 0); the good one routes to
    worker 1: the parts' keys meet, the table is redone in one process, the bytes are the serial ones."""
    home = DataHome(tmp_path / "home")
    b = DayBuilder(DAY, seed=3).populate(users=3, images=8, rankings=6, downloads=0)
    key = next(k for k in range(500, 600)
               if reader._route(f'"ranking_id": {k},'.encode(), reader._ROUTE_RE["rankings"], 2) == 1)
    good, bad = _two_versions(b, bad_first=False)
    b.lines["rankings"][-2] = json.dumps(dict(good, ranking_id=key)).encode()
    escaped = json.dumps(dict(bad, ranking_id=key)).replace('"ranking_id"', '"ranking\\u005fid"')
    b.lines["rankings"][-1] = escaped.encode()
    b.write(home)
    serial = ingest_day(home, DAY, IngestConfig(workers=1))
    expected = _snapshot(home)
    assert serial.tables["rankings"].reasons == {"bad_timestamp": 1, "conflicting_primary_key": 1}
    verdicts = []
    real = ingest._split_keys
    monkeypatch.setattr(ingest, "_split_keys", lambda parts: verdicts.append(real(parts)) or verdicts[-1])
    ingest_day(home, DAY, IngestConfig(workers=2, parallel_min_bytes=1))
    assert _snapshot(home) == expected
    assert dict(zip(ingest.RAW_TABLES, verdicts))["rankings"] is True


def test_a_part_that_kept_too_many_rejected_keys_is_redone(monkeypatch):
    run = type("Run", (), {"rejected_seen": set()})()
    monkeypatch.setattr(reader, "MAX_REJECTED_SEEN", 2)
    for key in (1, 2, 3):
        reader._note_rejected_key(run, key)
    assert run.rejected_seen == {1, 2, reader.SEEN_OVERFLOW}
    assert ingest._split_keys([(None, None, None, {5}), (None, None, None, run.rejected_seen)])
    assert not ingest._split_keys([(None, None, None, {5}), (None, None, None, {1, 2})])


# --- byte order mark ------------------------------------------------------------------------------------------

def test_a_bom_at_the_start_of_each_file_is_skipped(tmp_path):
    home = DataHome(tmp_path / "home")
    b = DayBuilder(DAY).populate(users=3, images=4, rankings=2, downloads=1)
    for table in b.lines:
        b.lines[table][0] = rp.BOM + b.lines[table][0]
    b.write(home)
    report = ingest_day(home, DAY)
    assert {t: (r.accepted, r.quarantined) for t, r in report.tables.items()} == {
        "users": (3, 0), "images": (4, 0), "rankings": (2, 0), "downloads": (1, 0)}


def test_a_bom_line_that_fails_keeps_its_bytes_and_a_bom_elsewhere_is_named(tmp_path):
    home = DataHome(tmp_path / "home")
    b = DayBuilder(DAY).populate(users=3, images=4, rankings=0, downloads=0)
    b.lines["users"][0] = rp.BOM + b'{"user_id": "x"}'
    b.lines["users"][1] = rp.BOM + b.lines["users"][1]
    b.write(home)
    report = ingest_day(home, DAY)
    assert report.tables["users"].accepted == 1
    rows = {q["line_number"]: q for q in _quarantine(home, "users")}
    assert rows[1]["reason"] == "missing_field"   # parsed without its BOM
    assert rows[1]["raw_sha256"] == hashlib.sha256(b.lines["users"][0]).hexdigest()   # stored as written
    assert rows[2]["reason"] == "malformed_json" and "byte order mark (U+FEFF)" in rows[2]["detail"]


def test_the_quarantine_contract_knows_every_reason_the_ingest_writes():
    from data_contracts.engine import load_contract

    rule = next(r for r in load_contract("quarantine").rules if r.name == "quarantine_reason_known")
    listed = re.search(r"reason NOT IN \(([^)]*)\)", rule.query).group(1)
    assert set(re.findall(r"'([a-z0-9_]+)'", listed)) == set(rp.REASONS)
