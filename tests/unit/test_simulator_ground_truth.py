"""Ground truth of the app-log simulator agrees with the raw files it wrote, and the app's quirks show."""
from __future__ import annotations

import gzip
import io
import itertools
import json
import re

import imagehash
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image, UnidentifiedImageError

from formats.home import DataHome
from schemas.raw import PRIMARY_KEYS, RAW_TABLES
from simulator import SimConfig, simulate, world

CONFIG = SimConfig(days=3, start_date="2023-02-13", users=30, rankings_per_day=80, image_size=64, seed=7, workers=1)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    home = DataHome(tmp_path_factory.mktemp("sim"))
    report = simulate(home, CONFIG)
    lines = {}
    for day in home.raw_days():
        for table in RAW_TABLES:
            with gzip.open(home.raw_file(day, table), "rt", encoding="utf-8") as handle:
                lines[(table, day)] = handle.read().splitlines()
    gt = home.ground_truth
    return {
        "home": home, "report": report, "lines": lines,
        "defects": pq.read_table(gt / "defects.parquet").to_pylist(),
        "duplicates": pq.read_table(gt / "duplicates.parquet").to_pylist(),
        "users": pq.read_table(gt / "users.parquet").to_pylist(),
        "rankings": pq.read_table(gt / "rankings.parquet").to_pylist(),
        "images": pq.read_table(gt / "images.parquet").to_pylist(),
        "summary": json.loads((gt / "summary.json").read_text()),
        "models": json.loads((gt / "models.json").read_text()),
    }


def parsed(run, table):
    """Every line of a table that parses, as (day, row)."""
    out = []
    for (t, day), lines in run["lines"].items():
        if t != table:
            continue
        for line in lines:
            try:
                out.append((day, json.loads(line)))
            except json.JSONDecodeError:
                pass
    return out


def all_image_uids(run):
    return {row["image_uid"] for _, row in parsed(run, "images")}


def test_layout_and_every_defect_kind_planted(run):
    home = run["home"]
    assert home.raw_days() == ["2023-02-13", "2023-02-14", "2023-02-15"]
    assert not (home.raw / "ground_truth").exists() and home.ground_truth.is_dir()
    kinds = {(d["defect"], d["table"]) for d in run["defects"]}
    for table in RAW_TABLES:
        for kind in ("malformed_json", "wrong_type", "duplicate_row"):
            assert (kind, table) in kinds
    for kind in ("conflicting_primary_key", "unknown_image_reference"):
        assert (kind, "rankings") in kinds and (kind, "downloads") in kinds
    for kind in ("banned_user", "nsfw_prompt", "content_filtered", "duplicate_ranking", "late_arrival"):
        assert (kind, "rankings") in kinds
    for kind in ("missing_blob", "empty_file", "not_an_image", "truncated_image", "content_filtered"):
        assert (kind, "images") in kinds
    expected = {d["expected"] for d in run["defects"]}
    assert {"quarantine:malformed_json", "quarantine:wrong_type", "quarantine:duplicate_row",
            "quarantine:conflicting_primary_key", "quarantine:unknown_image_reference", "reject:missing_blob",
            "reject:empty_file", "reject:not_an_image", "reject:truncated_image", "decision:banned_user",
            "decision:nsfw_prompt", "decision:content_filtered", "decision:duplicate_ranking", "accept"} == expected


def test_each_defect_is_where_the_ground_truth_says(run):
    home, lines = run["home"], run["lines"]
    banned = set(home.banned_users_file.read_text().split())
    uids = all_image_uids(run)
    cf_uids = {row["image_uid"] for _, row in parsed(run, "images") if row["model_id"] == "CONTENT_FILTERED"}
    phrases = home.nsfw_phrases_file.read_text().splitlines()
    days = home.raw_days()
    for d in run["defects"]:
        text = lines[(d["table"], d["dt"])][d["line_number"] - 1]
        key_field = PRIMARY_KEYS[d["table"]]
        kind = d["defect"]
        if kind == "malformed_json":
            with pytest.raises(json.JSONDecodeError):
                json.loads(text)
            assert d["key"] in text
            continue
        row = json.loads(text)
        assert str(row[key_field]) == d["key"], d
        if kind == "wrong_type":
            bad = [k for k, v in row.items() if (k.endswith("_id") or k == "seed") and isinstance(v, str)
                   or k == "created_at" and not isinstance(v, str)]
            assert bad, d
        elif kind == "duplicate_row":
            earlier = lines[(d["table"], d["dt"])][: d["line_number"] - 1]
            assert text in earlier
        elif kind == "conflicting_primary_key":
            same_key = [t for t in lines[(d["table"], d["dt"])]
                        if t != text and t.startswith(text[: text.index(",")] + ",")]
            assert same_key, d
        elif kind == "unknown_image_reference":
            refs = [v for k, v in row.items() if k.startswith("image_") and k.endswith("uid") and v]
            assert any(r not in uids for r in refs)
        elif kind == "banned_user":
            assert str(row["user_id"]) in banned
        elif kind == "nsfw_prompt":
            assert any(p in row["prompt"].lower() for p in phrases)
        elif kind == "content_filtered":
            if d["table"] == "images":
                assert row["model_id"] == "CONTENT_FILTERED"
            else:
                assert {row[f"image_{k}_uid"] for k in range(4)} & cf_uids
        elif kind == "duplicate_ranking":
            previous = days[days.index(d["dt"]) - 1]
            assert text in lines[("rankings", previous)]
        elif kind == "late_arrival":
            assert row["created_at"][:10] < d["dt"]
        elif kind in ("missing_blob", "empty_file", "not_an_image", "truncated_image"):
            path = home.raw_images / f"{d['key']}.png"
            if kind == "missing_blob":
                assert not path.exists()
            elif kind == "empty_file":
                assert path.stat().st_size == 0
            elif kind == "not_an_image":
                with pytest.raises(UnidentifiedImageError):
                    Image.open(path)
            else:
                with pytest.raises(OSError):
                    Image.open(path).load()
        else:
            raise AssertionError(f"unchecked defect kind {kind}")


def test_every_unrecorded_line_is_clean(run):
    """Lines without a line-level defect record parse with the raw schema's types."""
    flagged = {(d["table"], d["dt"], d["line_number"]) for d in run["defects"]
               if d["defect"] in ("malformed_json", "wrong_type")}
    int_fields = {"user_id", "image_id", "ranking_id", "download_id", "seed", "steps", "idx", "num_generated"}
    stamp = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}$")
    for (table, day), lines in run["lines"].items():
        for number, text in enumerate(lines, 1):
            if (table, day, number) in flagged:
                continue
            row = json.loads(text)
            assert stamp.match(row["created_at"]), (table, day, number)
            for name in int_fields & row.keys():
                assert isinstance(row[name], int), (table, day, number, name)


def test_duplicate_groups_are_real(run):
    root = run["home"].raw_images
    groups = {}
    for row in run["duplicates"]:
        groups.setdefault(row["group_id"], []).append(row)
    assert any(r["kind"] == "exact" and r["transform"] == "identical" for r in run["duplicates"])
    near_transforms = {r["transform"] for r in run["duplicates"] if r["kind"] == "near"}
    assert near_transforms <= {"rerender", "jpeg_reencode", "resize", "crop"} and len(near_transforms) >= 3
    for members in groups.values():
        (source,) = [m for m in members if m["kind"] == "source"]
        src_bytes = (root / f"{source['image_uid']}.png").read_bytes()
        src_hash = imagehash.phash(Image.open(io.BytesIO(src_bytes)))
        for m in members:
            assert m["source_uid"] == source["image_uid"]
            data = (root / f"{m['image_uid']}.png").read_bytes()
            if m["kind"] == "exact":
                assert data == src_bytes
            elif m["kind"] == "near":
                assert data != src_bytes
                distance = src_hash - imagehash.phash(Image.open(io.BytesIO(data)))
                assert distance <= 4 and distance == m["phash_distance"]


def test_distinct_images_have_far_apart_phashes(run):
    """Images that are not planted duplicates (or blank) differ by >= 10 pHash bits."""
    root = run["home"].raw_images
    in_group = {r["image_uid"] for r in run["duplicates"]}
    damaged = {d["key"] for d in run["defects"] if d["table"] == "images" and d["expected"].startswith("reject:")}
    hashes = []
    for row in run["images"]:
        uid = row["image_uid"]
        if uid in in_group or uid in damaged or row["is_content_filtered"]:
            continue
        hashes.append(int(str(imagehash.phash(Image.open(root / f"{uid}.png"))), 16))
    h = np.array(hashes, dtype=np.uint64)
    assert len(h) > 300
    xor = h[:, None] ^ h[None, :]
    bits = np.unpackbits(xor.view(np.uint8), axis=1).reshape(len(h), len(h), 64).sum(axis=2)
    distances = bits[np.triu_indices(len(h), 1)]
    assert distances.min() >= 10


def test_banned_users_and_user_table(run):
    home = run["home"]
    banned = sorted(int(x) for x in home.banned_users_file.read_text().split())
    assert banned == sorted(u["user_id"] for u in run["users"] if u["is_banned"])
    assert banned
    exported = {row["user_id"]: (day, row) for day, row in parsed(run, "users")
                if isinstance(row["user_id"], int) and isinstance(row["created_at"], str)}
    for u in run["users"]:
        if u["user_id"] in exported:
            day, row = exported[u["user_id"]]
            assert day == u["dt"] == row["created_at"][:10]
            assert (row["email"], row["name"]) == (u["email"], u["name"])
    ranking_users = {row["user_id"] for _, row in parsed(run, "rankings")}
    signup = {u["user_id"]: u["created_at"] for u in run["users"]}
    for _, row in parsed(run, "rankings"):
        if isinstance(row["user_id"], int) and isinstance(row["created_at"], str):
            assert signup[row["user_id"]] < row["created_at"]
    assert ranking_users <= set(signup) | {str(u) for u in signup}


def test_rankings_ground_truth(run):
    rankings = run["rankings"]
    assert len(rankings) == CONFIG.days * CONFIG.rankings_per_day
    for r in rankings:
        total = sum(r["p_best"]) + r["p_none"]
        assert abs(total - 1.0) < 1e-9
        assert abs(r["p_0"] + r["p_1"] + r["p_tie"] - 1.0) < 1e-9
        if r["n_shown"] == 2:
            assert abs(r["p_0"] - r["p_best"][0]) < 1e-12 and abs(r["p_tie"] - r["p_none"]) < 1e-12
        assert len(r["image_uids"]) == r["n_shown"] == len(r["utilities"])
    labelled = [r for r in rankings if r["labelled"]]
    p = np.array([[r["p_0"], r["p_1"], r["p_tie"]] for r in labelled])
    bayes = np.mean(np.maximum.reduce([p[:, 0] + p[:, 2] / 2, p[:, 1] + p[:, 2] / 2, p[:, 2] + (p[:, 0] + p[:, 1]) / 2]))
    assert abs(bayes - run["summary"]["bayes_optimal_accuracy"]) < 1e-9
    assert 0.6 < bayes < 0.95
    # an accepted ranking's line is in its file with the recorded outcome
    by_id = {}
    for day, row in parsed(run, "rankings"):
        by_id.setdefault(row["ranking_id"], []).append((day, row))
    for r in labelled:
        (day, row), *_ = by_id[r["ranking_id"]]
        assert day == r["dt"]
        assert [row["image_0_uid"], row["image_1_uid"]] == r["image_uids"]
        assert row["best_image_uid"] == r["best_image_uid"]


def test_models_have_a_true_ranking(run):
    models = run["models"]
    assert set(models) == set(world.MODEL_IDS)
    ranks = sorted(m["true_rank"] for m in models.values())
    assert ranks == list(range(1, len(models) + 1))
    assert models["CONTENT_FILTERED"]["true_rank"] == len(models)
    best = min(models, key=lambda m: models[m]["true_rank"])
    assert all(models[best]["true_quality"] >= m["true_quality"] for m in models.values())


def test_quirks_present(run):
    rankings = parsed(run, "rankings")
    images = parsed(run, "images")
    prompts = [row["prompt"] for _, row in rankings if isinstance(row.get("prompt"), str)]
    assert any("[single_quote]" in p for p in prompts)
    assert not any("'" in p for p in prompts)
    assert any(re.search(r"\[(?!single_quote\])[^\]]+\]", p) for p in prompts)
    assert any(row["best_image_uid"] == "none" for _, row in rankings)
    four = [(day, row) for day, row in rankings if row.get("image_2_uid") is not None]
    assert four and all(row["created_at"][:10] < "2023-02-15" for _, row in four)
    late_days = [row for day, row in rankings if day == "2023-02-15" and row["created_at"][:10] == "2023-02-15"]
    assert late_days and all(row["image_2_uid"] is None and row["image_3_uid"] is None for row in late_days)
    models = {row["model_id"] for _, row in images}
    assert "CONTENT_FILTERED" in models and len(models) >= 4
    steps = {m.model_id: m.steps for m in world.MODELS}
    for _, row in images:
        if isinstance(row.get("gs"), float):
            assert 3.0 <= row["gs"] <= 12.0
        if row["model_id"] in steps:
            assert row["steps"] == steps[row["model_id"]]
    uids = [row["image_uid"] for _, row in images]
    assert all(re.match(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$", u) for u in uids)
    blank = next(row["image_uid"] for _, row in images if row["model_id"] == "CONTENT_FILTERED")
    array = np.asarray(Image.open(run["home"].raw_images / f"{blank}.png"))
    assert array.shape == (64, 64, 3) and array.max() == 0
    # popular prompts are shared across users; retyped variants exist
    users_by_prompt = {}
    for r in run["rankings"]:
        users_by_prompt.setdefault(r["prompt_canonical"], set()).add(r["user_id"])
    assert max(len(v) for v in users_by_prompt.values()) >= 2
    assert any(r["prompt"].lower().strip(" .!") != r["prompt_canonical"].lower() and "[" not in r["prompt"]
               and not any(p in r["prompt"].lower() for p in world.NSFW_PHRASES) for r in run["rankings"])


def test_nsfw_phrases_never_in_clean_vocabulary():
    vocabulary = " ".join([*world.TEMPLATES, *world.COLOURS, *world.SHAPES, *world.SHAPE_PLURALS,
                           *world.COUNT_WORDS, *world.STYLES, *world.NEGATIVE_BRACKETS, *world.MODIFIERS]).lower()
    for phrase in world.NSFW_PHRASES:
        assert phrase not in vocabulary
    for combo in itertools.islice(itertools.product(range(12), range(8), range(1, 5), range(12), range(4), range(6),
                                                    range(len(world.MODIFIERS) + 1)), 0, None, 97):
        if combo[0] != combo[3]:
            text = world.compose_prompt(*combo)
            assert not any(p in text for p in world.NSFW_PHRASES)
