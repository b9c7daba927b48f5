"""Seeded fixtures for the publish / query / export tests: a data home with split_pairs and JPEGs."""
from __future__ import annotations

import datetime as dt
import hashlib
import io
import random
import shutil
from pathlib import Path

import pyarrow as pa
from PIL import Image

from formats import dataset
from formats.files import write_parquet_atomic
from formats.home import DataHome
from schemas import get_schema

MODELS = ("stabilityai/stable-diffusion-2-1", "yuvalkirstain/dreamlike-photoreal-2-flax", "stable-diffusion-xl-beta-v2-2-2")
SECRET_EMAIL = "alice.secret@example.org"
SECRET_NAME = "Alice Secretname"


def _jpeg(rng: random.Random, size: int = 48) -> bytes:
    """A small random-colour JPEG (noise so sizes vary)."""
    image = Image.new("RGB", (size, size), tuple(rng.randrange(256) for _ in range(3)))
    pixels = image.load()
    for _ in range(size * 4):
        pixels[rng.randrange(size), rng.randrange(size)] = tuple(rng.randrange(256) for _ in range(3))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def make_home(root: Path, num_rankings: int = 120, seed: int = 0, days: int = 2) -> DataHome:
    """Write split_pairs, training JPEGs, image_features, decisions and quarantine under ``root``."""
    rng = random.Random(seed)
    home = DataHome(Path(root).resolve())
    images = []
    for i in range(num_rankings // 2 + 4):
        data = _jpeg(rng)
        digest = hashlib.sha256(data).hexdigest()
        key = f"blobs/{digest[:2]}/{digest}.jpg"
        path = home.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        uid = f"{rng.getrandbits(128):032x}"
        images.append((uid, key, digest, len(data), MODELS[i % len(MODELS)]))
    prompts = [f"a painting of a {word} number {i}, [single_quote]trending[single_quote] ünïcödé"
               for i, word in enumerate(["cat", "dog", "castle", "robot", "tree", "river", "moon", "ship"] * 4)]
    start = dt.datetime(2023, 3, 1, 12, 0, 0, 123456)
    rows = []
    for ranking_id in range(1, num_rankings + 1):
        a, b = rng.sample(images, 2)
        prompt = rng.choice(prompts)
        day = dt.date(2023, 3, 1) + dt.timedelta(days=ranking_id % days)
        outcome = rng.random()
        label_0, label_1 = (0.5, 0.5) if outcome < 0.13 else ((1.0, 0.0) if outcome < 0.56 else (0.0, 1.0))
        best = None if label_0 == 0.5 else (a[0] if label_0 == 1.0 else b[0])
        rows.append({
            "pair_id": f"{ranking_id}_0", "ranking_id": ranking_id, "pair_index": 0,
            "user_id": hashlib.sha256(f"user{ranking_id % 17}".encode()).hexdigest()[:16],
            "caption": prompt, "created_at": start + dt.timedelta(minutes=ranking_id, microseconds=ranking_id),
            "image_0_uid": a[0], "image_1_uid": b[0], "label_0": label_0, "label_1": label_1,
            "best_image_uid": best, "has_label": True, "are_different": a[4] != b[4],
            "model_0": a[4], "model_1": b[4], "cluster_0": a[0], "cluster_1": b[0],
            "sha256_0": a[2], "sha256_1": b[2], "jpg_0_key": a[1], "jpg_1_key": b[1], "dt": day,
        })
    # Split by prompt: most prompts train, a few validation / test, unique splits one row per prompt.
    held = sorted(set(prompts))
    rng.shuffle(held)
    validation_prompts, test_prompts = set(held[:6]), set(held[6:12])
    out = []
    for split_name, chosen in (("validation", validation_prompts), ("test", test_prompts)):
        split_rows = [r for r in rows if r["caption"] in chosen]
        out += [dict(r, split=split_name) for r in split_rows]
        firsts = {}
        for r in split_rows:
            firsts.setdefault(r["caption"], r)
        out += [dict(r, split=f"{split_name}_unique") for r in firsts.values()]
    out += [dict(r, split="train") for r in rows if r["caption"] not in validation_prompts | test_prompts]
    counts: dict[tuple[str, str], int] = {}
    for r in out:
        counts[(r["split"], r["caption"])] = counts.get((r["split"], r["caption"]), 0) + 1
    for r in out:
        r["prompt_key"] = r["caption"].lower()
        r["num_example_per_prompt"] = counts[(r["split"], r["caption"])]
    rng.shuffle(out)
    write_parquet_atomic(pa.Table.from_pylist(out, schema=get_schema("split_pairs")),
                         home.table_file("split_pairs"), get_schema("split_pairs"))
    _write_side_tables(home, images, days)
    return home



def published_home(root: Path) -> DataHome:
    """A seeded home (80 rankings) with one published version: what the trainer's checksum tests damage copies of."""
    from pipelines.publish.config import PublishConfig
    from pipelines.publish.version import publish_dataset

    home = make_home(root, num_rankings=80, seed=3)
    publish_dataset(home, PublishConfig(workers=1, fsync=False))
    return home


def copy_version(published: DataHome, home_root: Path) -> Path:
    """A copy of ``published``'s current version at ``home_root/datasets/pickapic/<version>`` (with its
    ``latest``), that a test may damage: its own files, never the fixture's."""
    version = dataset.resolve_version(published)
    target = home_root / "datasets" / "pickapic" / version.name
    shutil.copytree(version, target)
    dataset.switch_latest(target.parent, version.name, fsync=False)
    return target

def write_split_pairs(home: DataHome, table: pa.Table) -> pa.Table:
    """Write ``table`` as split_pairs with ``num_example_per_prompt`` recounted per (split, prompt_key)."""
    import pyarrow.compute as pc

    counts = table.group_by(["split", "prompt_key"]).aggregate([([], "count_all")])
    lookup = {(r["split"], r["prompt_key"]): r["count_all"] for r in counts.to_pylist()}
    recounted = pa.array([lookup[(s, p)] for s, p in zip(table.column("split").to_pylist(),
                                                          table.column("prompt_key").to_pylist())], pa.int64())
    table = table.set_column(table.schema.get_field_index("num_example_per_prompt"), "num_example_per_prompt", recounted)
    table = table.take(pc.sort_indices(table, sort_keys=[("split", "ascending"), ("pair_id", "ascending")]))
    write_parquet_atomic(table, home.table_file("split_pairs"), get_schema("split_pairs"))
    return table


def history_home(root: Path, days: int = 4, rankings: int = 80) -> tuple[DataHome, pa.Table]:
    """A seeded home of ``days`` export days and its whole split_pairs table (for publishing a day at a time)."""
    import pyarrow.parquet as pq

    home = make_home(root, num_rankings=rankings, seed=7, days=days)
    return home, pq.read_table(home.table_file("split_pairs"))


def publish_until(home: DataHome, table: pa.Table, config=None, last_day=None):
    """Publish ``table``'s rows up to ``last_day`` (all of them when None) as split_pairs; the report.
    ``config`` defaults to one worker, no fsync, one shard per split at least."""
    import pyarrow.compute as pc

    from pipelines.publish.config import PublishConfig
    from pipelines.publish.version import publish_dataset

    if last_day is not None:
        table = table.filter(pc.less_equal(table.column("dt"), pa.scalar(last_day, pa.date32())))
    write_split_pairs(home, table)
    return publish_dataset(home, config or PublishConfig(workers=1, fsync=False, min_shards_per_split=1))


def export_days(table: pa.Table) -> list:
    """The export days of a split_pairs table, sorted."""
    return sorted(set(table.column("dt").to_pylist()))


def contracts_at(monkeypatch, shards: str) -> None:
    """Another version id for the same inputs: the shards contract's version (in the version id) set to ``shards``
    for the rest of the test."""
    from pipelines.publish import contracts
    from pipelines.publish import version as version_module

    real = contracts.contract_versions
    monkeypatch.setattr(version_module, "_contract_versions", lambda: {**real(), "shards": shards})


def _write_side_tables(home: DataHome, images: list[tuple], days: int) -> None:
    """image_features per day, decisions and quarantine (with planted personal data)."""
    features = get_schema("image_features")
    nsfw_max = {name.name: 0.0 for name in features.field("nsfw_max").type}
    for d in range(days):
        day = dt.date(2023, 3, 1) + dt.timedelta(days=d)
        rows = [{
            "image_uid": uid, "dt": day, "blob_path": f"raw/images/{uid}.png", "sha256": digest, "num_bytes": size,
            "width": 48, "height": 48, "mode": "RGB", "format": "PNG", "phash": i * 7919, "dhash": i,
            "nsfw_detections": [], "nsfw_max": nsfw_max, "train_jpg_key": key, "train_width": 48,
            "train_height": 48, "train_jpg_bytes": size, "reused_from": None,
        } for i, (uid, key, digest, size, _model) in enumerate(images) if i % days == d]
        write_parquet_atomic(pa.Table.from_pylist(rows, schema=features), home.partition_file("image_features", day.isoformat()), features)
    decisions = [
        {"subject": "ranking", "subject_id": "7", "keep": False, "reason": "banned_user", "evidence": '{"note": "x"}'},
        {"subject": "image", "subject_id": images[0][0], "keep": False, "reason": "nsfw",
         "evidence": f'{{"reported_by": "{SECRET_EMAIL}"}}'},
        {"subject": "pair", "subject_id": "3_0", "keep": True, "reason": "kept", "evidence": "{}"},
    ]
    write_parquet_atomic(pa.Table.from_pylist(decisions, schema=get_schema("decisions")), home.table_file("decisions"))
    quarantine = [
        {"table": "users", "dt": dt.date(2023, 3, 1), "file": "raw/app_logs/dt=2023-03-01/users.jsonl.gz",
         "line_number": 3, "last_line_number": 3, "line_count": 1, "reason": "bad_email", "detail": f"email {SECRET_EMAIL} is duplicated",
         "raw_text": f'{{"user_id": 5, "email": "{SECRET_EMAIL}", "name": "{SECRET_NAME}"}}',
         "raw_length": 80, "raw_sha256": "0" * 64},
        {"table": "rankings", "dt": dt.date(2023, 3, 2), "file": "raw/app_logs/dt=2023-03-02/rankings.jsonl.gz",
         "line_number": 9, "last_line_number": 9, "line_count": 1, "reason": "not_an_object", "detail": "line is a JSON array", "raw_text": "[1, 2]",
         "raw_length": 6, "raw_sha256": "1" * 64},
    ]
    write_parquet_atomic(pa.Table.from_pylist(quarantine, schema=get_schema("quarantine")),
                         home.partition_file("quarantine", "2023-03-01"))


def test_fixture_is_seeded(tmp_path: Path) -> None:
    """The fixture itself is deterministic (same seed, same split_pairs bytes)."""
    a = make_home(tmp_path / "a", num_rankings=30, seed=3)
    b = make_home(tmp_path / "b", num_rankings=30, seed=3)
    assert a.table_file("split_pairs").read_bytes() == b.table_file("split_pairs").read_bytes()
