"""fix32i: settings digested in their canonical spelling (review rev32i, ``tests/unit/test_hostile_rev32i.py``).

``Knob.canonical`` reads a setting by its declared form before ``config_digest`` fingerprints it: an instant
(``ingest.earliest_created_at``) as the naive UTC time it names, a set (``curation.nsfw_classes``) once each in the
default-first order, a home file (``curation.phrases_file`` / ``banned_users_file``) as ``''`` where it names the
home's own list. These tests check the edges: what is merged, what never is (different meanings), that every
already canonical spelling (the defaults, the demo home's settings) digests exactly as before the fix (so no
existing home rebuilds), and the neighbours the fix touches (the ingest's bound, the decisions' policy record and
the SQL's class list, the staleness fingerprint). All in process, no build.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from formats import settings as settings_module
from formats.home import BANNED_USERS_FILE, NSFW_PHRASES_FILE, DataHome
from formats.settings import SECTIONS, config_digest, knob, knobs, load, write_settings
from pipelines.curation.decisions import EXPLICIT_CLASSES, CurationConfig, policy_classes, policy_record
from pipelines.ingest.config import IngestConfig
from schemas.features import NSFW_CLASSES


def _settings(folder: Path, text: str):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pickapic.toml").write_text(text, encoding="utf-8")
    return load(folder)


def _as_spelled_digest(section: str, config) -> str:
    """``config_digest`` as it was before the fix: every value as spelled (the fingerprints existing homes hold)."""
    values = {}
    for name, spec in knobs(section).items():
        if not spec.output or not spec.in_file:
            continue
        value = getattr(config, name)
        values[name] = settings_module._secret_digest(value) if spec.secret and value is not None else \
            (list(value) if isinstance(value, tuple) else value)
    return hashlib.sha256(json.dumps([section, values], sort_keys=True).encode()).hexdigest()[:16]


# --- existing homes keep their fingerprints ----------------------------------------------------------------------

def test_the_demo_home_and_the_defaults_digest_as_before(tmp_path: Path) -> None:
    from dagster_project.demo import DEMO_SETTINGS

    write_settings(tmp_path, {**DEMO_SETTINGS, "train.max_steps": 30})    # what `pickapic demo` writes
    for root in (tmp_path, None):
        settings = load(root)
        for section in SECTIONS:
            config = settings.config(section)
            assert settings.digest(section) == _as_spelled_digest(section, config), (root, section)


def test_canonical_spellings_of_each_form_digest_as_before(tmp_path: Path) -> None:
    text = ('[ingest]\nearliest_created_at = "2021-06-30 12:30:00.250000"\n[curation]\n'
            'nsfw_classes = ["BUTTOCKS_EXPOSED", "ANUS_EXPOSED", "FACE_MALE"]\nphrases_file = "lists/phrases.txt"\n'
            'banned_users_file = "/srv/moderation/banned.txt"\n')
    settings = _settings(tmp_path / "home", text)
    for section in ("ingest", "curation"):
        assert settings.digest(section) == _as_spelled_digest(section, settings.config(section)), section


def test_every_default_is_canonical() -> None:
    for section in SECTIONS:
        for spec in knobs(section).values():
            canonical = spec.canonical(spec.default, Path("/nonexistent-home"))
            assert canonical == spec.default and type(canonical) is type(spec.default), spec.key


# --- instants ----------------------------------------------------------------------------------------------------

def test_an_instant_reads_as_its_naive_utc_time() -> None:
    spec = knobs("ingest")["earliest_created_at"]
    assert spec.form == "instant"
    for spelling in ("2022-01-01", "2022-01-01T00:00", "2022-01-01 00:00:00.000000", "2022-01-01T01:00:00+01:00",
                     "2021-12-31T19:00:00-05:00", "2022-01-01T00:00:00Z", "2022-01-01 00:00:00.0000004"):
        assert spec.canonical(spelling) == "2022-01-01 00:00:00", spelling
        assert IngestConfig(earliest_created_at=spelling).earliest() == dt.datetime(2022, 1, 1), spelling
    # never merged: other instants, however close, stay apart
    assert spec.canonical("2022-01-01 00:00:00.000001") == "2022-01-01 00:00:00.000001"
    assert spec.canonical("2022-01-01T00:00:00+01:00") == "2021-12-31 23:00:00"
    assert spec.canonical("2022-01-01T00:00:00+00:00:01") == "2021-12-31 23:59:59"
    # not an instant (the stage's own check refuses it): kept as written, never a crash
    for text in ("not a date", "0001-01-01T00:00:00+01:00", ""):
        assert spec.canonical(text) == text


def test_equivalent_instants_share_one_digest_and_different_ones_do_not(tmp_path: Path) -> None:
    digests = {spelling: _settings(tmp_path / str(n), f'[ingest]\nearliest_created_at = "{spelling}"\n').digest("ingest")
               for n, spelling in enumerate(("2022-06-01 08:00:00", "2022-06-01T08:00:00", "2022-06-01T10:00:00+02:00",
                                             "2022-06-01 08:00:00.000001", "2022-06-01 08:00:00+02:00"))}
    assert digests["2022-06-01 08:00:00"] == digests["2022-06-01T08:00:00"] == digests["2022-06-01T10:00:00+02:00"]
    assert len(set(digests.values())) == 3


def test_an_offset_bound_still_rejects_as_before() -> None:
    config = IngestConfig(earliest_created_at="2022-01-01T02:00:00+02:00")
    low, _ = config.timestamp_range(dt.date(2023, 1, 1))
    assert low == dt.datetime(2022, 1, 1)
    with pytest.raises(ValueError, match="not an ISO timestamp"):
        IngestConfig(earliest_created_at="2022-13-01")


# --- sets --------------------------------------------------------------------------------------------------------

def test_a_set_is_canonical_once_each_in_the_default_first_order() -> None:
    spec = knobs("curation")["nsfw_classes"]
    assert spec.form == "set"
    assert spec.canonical(tuple(reversed(EXPLICIT_CLASSES))) == EXPLICIT_CLASSES
    others = [c for c in NSFW_CLASSES if c not in EXPLICIT_CLASSES]
    mixed = (others[3], EXPLICIT_CLASSES[2], others[0], others[3], EXPLICIT_CLASSES[0])
    assert spec.canonical(mixed) == (EXPLICIT_CLASSES[0], EXPLICIT_CLASSES[2], others[0], others[3])
    assert spec.canonical(()) == ()
    assert spec.canonical(list(mixed)) == list(spec.canonical(mixed))     # a list stays a list


def test_different_sets_keep_different_digests(tmp_path: Path) -> None:
    def digest(n: int, classes) -> str:
        listed = ", ".join(f'"{c}"' for c in classes)
        return _settings(tmp_path / str(n), f"[curation]\nnsfw_classes = [{listed}]\n").digest("curation")

    full = digest(0, EXPLICIT_CLASSES)
    assert digest(1, EXPLICIT_CLASSES[1:]) != full                       # one class fewer
    assert digest(2, [*EXPLICIT_CLASSES, "FACE_MALE"]) != full            # one more
    assert digest(3, []) != full                                          # the filter off
    assert digest(4, [*reversed(EXPLICIT_CLASSES), EXPLICIT_CLASSES[0]]) == full
    assert digest(5, []) == digest(6, [])


def test_the_policy_record_and_the_sql_get_the_canonical_classes(tmp_path: Path) -> None:
    home = DataHome(tmp_path / "home")
    home.table_file("duplicate_clusters").parent.mkdir(parents=True)
    pq.write_table(pa.table({"image_uid": ["a"]}), home.table_file("duplicate_clusters"))
    reordered = CurationConfig(nsfw_classes=(*reversed(EXPLICIT_CLASSES), EXPLICIT_CLASSES[1]))
    assert policy_classes(reordered) == list(EXPLICIT_CLASSES)
    assert policy_record(home, reordered) == policy_record(home, CurationConfig())
    assert json.loads(policy_record(home, reordered))["nsfw_classes"] == list(EXPLICIT_CLASSES)
    assert policy_classes(CurationConfig(nsfw_classes=())) == []


# --- home files --------------------------------------------------------------------------------------------------

def test_the_home_files_are_the_knobs_defaults(tmp_path: Path) -> None:
    home = DataHome(tmp_path)
    assert home.nsfw_phrases_file == tmp_path / "raw" / "moderation" / "nsfw_phrases.txt" == tmp_path / NSFW_PHRASES_FILE
    assert home.banned_users_file == tmp_path / "raw" / "moderation" / "banned_users.txt" == tmp_path / BANNED_USERS_FILE
    assert knobs("curation")["phrases_file"].home_file == NSFW_PHRASES_FILE
    assert knobs("curation")["banned_users_file"].home_file == BANNED_USERS_FILE


def test_spellings_of_the_home_list_are_the_default(tmp_path: Path) -> None:
    root = tmp_path / "home"
    (root / "raw" / "moderation").mkdir(parents=True)
    (root / NSFW_PHRASES_FILE).write_text("bad phrase\n", encoding="utf-8")
    (root / "lists").mkdir()
    os.symlink(root / NSFW_PHRASES_FILE, root / "lists" / "link.txt")
    spec = knobs("curation")["phrases_file"]
    for spelling in ("", NSFW_PHRASES_FILE, "./raw/moderation/nsfw_phrases.txt", "raw//moderation/./nsfw_phrases.txt",
                     str(root / NSFW_PHRASES_FILE), "lists/link.txt"):
        assert spec.canonical(spelling, root) == "", spelling
    assert spec.canonical(NSFW_PHRASES_FILE) == ""                      # relative: no root needed
    base = _settings(root, "").digest("curation")
    for spelling in (NSFW_PHRASES_FILE, str(root / NSFW_PHRASES_FILE), "lists/link.txt"):
        assert _settings(root, f'[curation]\nphrases_file = "{spelling}"\n').digest("curation") == base, spelling


def test_other_files_and_unsure_spellings_are_never_merged(tmp_path: Path) -> None:
    root = tmp_path / "home"
    (root / "raw" / "moderation").mkdir(parents=True)
    (root / NSFW_PHRASES_FILE).write_text("bad phrase\n", encoding="utf-8")
    phrases, banned = knobs("curation")["phrases_file"], knobs("curation")["banned_users_file"]
    assert phrases.canonical(BANNED_USERS_FILE, root) == BANNED_USERS_FILE       # the other list is another file
    assert banned.canonical(NSFW_PHRASES_FILE, root) == NSFW_PHRASES_FILE
    for kept in ("raw/moderation/../moderation/nsfw_phrases.txt", "raw/moderation/nsfw_phrases.txt/",
                 "raw/moderation/nsfw_phrases.txt/.", "/raw/moderation/nsfw_phrases.txt"):
        assert phrases.canonical(kept, root) == kept, kept
    # another file's spellings: one spelling, the path as the system reads it
    assert phrases.canonical("./lists//p.txt", root) == "lists/p.txt"
    assert phrases.canonical("/srv/./lists/p.txt", root) == "/srv/lists/p.txt"
    assert phrases.canonical("lists/p.txt", root) == "lists/p.txt"          # already canonical: as written
    other = _settings(root / "a", '[curation]\nphrases_file = "lists/p.txt"\n').digest("curation")
    assert _settings(root / "b", '[curation]\nphrases_file = "./lists//p.txt"\n').digest("curation") == other
    assert other != _settings(root / "c", "").digest("curation")


def test_the_staleness_fingerprint_resolves_in_the_home(tmp_path: Path) -> None:
    from dagster_project.staleness import stage_version
    from dagster_project.versions import BY_NAME

    root = tmp_path / "home"
    (root / "raw" / "moderation").mkdir(parents=True)
    (root / NSFW_PHRASES_FILE).write_text("bad phrase\n", encoding="utf-8")
    home = DataHome(root)

    def version(stage: str, config) -> str:
        return stage_version(BY_NAME[stage], home, config, lambda name, day: f"{name}-v", ["2023-02-14"], None)

    for stage in ("decisions", "pairs"):
        base = version(stage, CurationConfig())
        assert version(stage, CurationConfig(phrases_file=str(root / NSFW_PHRASES_FILE))) == base
        assert version(stage, CurationConfig(nsfw_classes=tuple(reversed(EXPLICIT_CLASSES)))) == base
        assert version(stage, CurationConfig(phrases_file="lists/other.txt")) != base
    assert config_digest("curation", CurationConfig(phrases_file=str(root / NSFW_PHRASES_FILE)), root) == \
        config_digest("curation", CurationConfig())


def test_an_unknown_form_is_refused() -> None:
    @dataclasses.dataclass(frozen=True)
    class Probe:
        value: str = knob("", "a probe", form="instant")

    assert dataclasses.fields(Probe)[0].metadata["form"] == "instant"
    with pytest.raises(ValueError, match="form 'date'"):
        knob("", "a probe", form="date")
