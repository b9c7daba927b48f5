"""Seeded pairs tables for split tests (pairs schema, written into a data home)."""
from __future__ import annotations

import datetime as dt
import random

import pyarrow as pa
import pyarrow.parquet as pq

from formats.files import write_parquet_atomic
from formats.home import DataHome
from pipelines.curation.pseudonym import pseudonymize
from pipelines.splits.assign import SplitConfig, user_home
from schemas import get_schema

T0 = dt.datetime(2023, 3, 1)


def pair_row(ranking_id: int, user: str, caption: str, cluster_0: str, cluster_1: str, *, pair_index: int = 0,
             day: int = 0, tie: bool = False, seconds: int | None = None) -> dict:
    """One pairs row with the given keys; everything else filled deterministically."""
    created = T0 + dt.timedelta(days=day, seconds=seconds if seconds is not None else ranking_id)
    return dict(
        pair_id=f"{ranking_id}_{pair_index}", ranking_id=ranking_id, pair_index=pair_index, user_id=user,
        caption=caption, created_at=created, image_0_uid=f"{ranking_id}-{pair_index}-a",
        image_1_uid=f"{ranking_id}-{pair_index}-b", label_0=0.5 if tie else 1.0, label_1=0.5 if tie else 0.0,
        best_image_uid=None if tie else f"{ranking_id}-{pair_index}-a", has_label=True, are_different=True,
        model_0="sd-2.1", model_1="sd-2.1-768", cluster_0=cluster_0, cluster_1=cluster_1, sha256_0="0" * 64,
        sha256_1="1" * 64, jpg_0_key=f"blobs/{ranking_id}a.jpg", jpg_1_key=f"blobs/{ranking_id}b.jpg",
        dt=(T0 + dt.timedelta(days=day)).date())


def write_pairs(home: DataHome, rows: list[dict]) -> None:
    """Write ``rows`` as the home's pairs table."""
    write_parquet_atomic(pa.Table.from_pylist(rows, schema=get_schema("pairs")), home.table_file("pairs"))


def write_warehouse(home: DataHome, rows: list[dict], users: list[int] | None = None) -> None:
    """The warehouse's rankings and images as the app holds them now: those of ``rows`` (one partition, what the
    key owner pins' erasure check reads), and with ``users`` its ``users`` table of those raw ids."""
    tables = [("rankings", {"ranking_id": [r["ranking_id"] for r in rows],
                            "prompt": [r["caption"] for r in rows], "dt": [r["dt"] for r in rows]}),
              ("images", {"image_uid": [u for r in rows for u in (r["image_0_uid"], r["image_1_uid"])],
                          "prompt": [r["caption"] for r in rows for _ in range(2)]})]
    if users is not None:
        tables.append(("users", {"user_id": pa.array(users, pa.int64())}))
    for table, data in tables:
        folder = home.table_dir(table)
        for old in folder.rglob("*.parquet") if folder.exists() else []:
            old.unlink()
        path = home.partition_file(table, "2023-03-01")
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table(data), path)


def keyed_users(secret: str, n: int, home: str = "train") -> list[tuple[int, str]]:
    """``n`` (raw id, pseudonym under ``secret``) whose hash rule home is ``home`` (the first users of a ledger fill
    the held-out splits whatever their hash says)."""
    config, found, raw = SplitConfig(), [], 1
    while len(found) < n:
        name = pseudonymize(raw, secret)
        if user_home(name, config.salt, config.heldout_fraction) == home:
            found.append((raw, name))
        raw += 1
    return found


def publish_recorded(home: DataHome, name: str) -> None:
    """:func:`publish_splits` as ``name`` with the publish record the publish stage writes (which ``split_pairs``
    ``latest`` was published from), so the next build takes the nightly path."""
    import hashlib

    from pipelines.splits import coverage

    publish_splits(home, name)
    sha = hashlib.sha256(home.table_file("split_pairs").read_bytes()).hexdigest()
    coverage.write_published_source(home, home.datasets / name, sha)


def read_pins(home: DataHome) -> dict[tuple[str, str], str]:
    """The home's key owner pins, (kind, key) -> owner."""
    return {(r["kind"], r["key"]): r["owner"] for r in pq.read_table(home.table_file("split_key_owners")).to_pylist()}


def kept_splits(home: DataHome) -> dict[str, str]:
    """pair id -> the train / validation / test split of each kept row of ``split_pairs`` (``_unique`` left out)."""
    return {r["pair_id"]: r["split"] for r in pq.read_table(home.table_file("split_pairs")).to_pylist()
            if r["split"] in ("train", "validation", "test")}


def users_by_home(salt: str, fraction: float, wanted: dict[str, int]) -> dict[str, list[str]]:
    """Pseudonym-like user ids whose home split is known: ``{'train': [...], 'validation': [...], 'test': [...]}``."""
    found: dict[str, list[str]] = {k: [] for k in wanted}
    i = 0
    while any(len(found[k]) < n for k, n in wanted.items()):
        user = f"{i:016x}"
        home = user_home(user, salt, fraction)
        if home in found and len(found[home]) < wanted[home]:
            found[home].append(user)
        i += 1
    return found


def realistic_pairs(users: int, days: int, per_day: int, seed: int = 0, popular: int = 40,
                    reuse_rate: float = 0.05, self_repeat: float = 0.15, dup_rate: float = 0.02) -> list[dict]:
    """Rankings with realistic prompt reuse: a popular pool shared across users, users retyping their own prompts,
    a few images re-used (duplicate clusters) across rankings."""
    rng = random.Random(seed)
    people = [f"{rng.getrandbits(64):016x}" for _ in range(users)]
    weights = [1.0 / (1 + i) ** 0.8 for i in range(users)]  # a few heavy users, many light ones
    pool = [f"Popular prompt number {i}, trending art" for i in range(popular)]
    last: dict[str, str] = {}
    rows, clusters = [], []
    rid = 0
    for day in range(days):
        for _ in range(per_day):
            rid += 1
            user = rng.choices(people, weights)[0]
            roll = rng.random()
            if roll < reuse_rate:
                caption = rng.choice(pool)
                if rng.random() < 0.3:
                    caption = caption.upper() + "!"
            elif roll < reuse_rate + self_repeat and user in last:
                caption = last[user]
            else:
                caption = f"{user[:4]} private prompt {rid}"
            last[user] = caption
            c0, c1 = f"c{rid}a", f"c{rid}b"
            if clusters and rng.random() < dup_rate:
                c0 = rng.choice(clusters)
            clusters += [c0, c1]
            rows.append(pair_row(rid, user, caption, c0, c1, day=day, tie=rng.random() < 0.13, seconds=rid))
    return rows


def publish_splits(home: DataHome, name: str, switch: bool = True) -> None:
    """A stand-in for the publish stage: the home's ``split_pairs`` as version ``name``'s sidecars (one per split and
    export day, the published sidecar schema, no tars) with a manifest, and ``latest`` switched to it. What the
    splits stage reads of a published version is its sidecars' user_id, split and dt. ``switch=False`` leaves
    ``latest`` where it was."""
    import json

    import pyarrow.parquet as pq

    from formats import dataset

    rows = pq.read_table(home.table_file("split_pairs")).to_pylist()
    version = home.datasets / name
    columns = get_schema("shard_samples")
    by_shard: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        by_shard.setdefault((row["split"], row["dt"].strftime("%Y%m%d")), []).append(row)
    for (split, day), members in sorted(by_shard.items()):
        shard = dataset.shard_name(split, day, members[0]["pair_id"])
        samples = [dict(r, key=r["pair_id"], shard=f"{shard}.tar", sample_index=i, jpg_0_offset=0, jpg_0_size=0,
                        jpg_1_offset=0, jpg_1_size=0, json_offset=0, json_size=0, txt_offset=0, txt_size=0,
                        jpg_0_sha256="0" * 64, jpg_1_sha256="1" * 64) for i, r in enumerate(members)]
        write_parquet_atomic(pa.Table.from_pylist(samples, schema=columns), version / split / f"{shard}.parquet", columns)
    (version / dataset.MANIFEST_FILE).write_text(json.dumps({"version": name}))
    if switch:      # switch=False: a publish that died with its version complete, before switching latest
        dataset.switch_latest(home.datasets, name, fsync=False)


def ledger_splits(home: DataHome) -> dict[str, str]:
    """The split ledger as user -> split."""
    return {r["user_id"]: r["split"] for r in pq.read_table(home.table_file("split_ledger")).to_pylist()}


def user_rows(users, secret: str = "s", day: int = 0) -> list[dict]:
    """One pair per raw user id, pseudonymized under ``secret`` as the curation does, its prompt and clusters
    the user's own, on day ``day`` + user % 3."""
    return [pair_row(u, pseudonymize(u, secret), f"prompt of user {u}", f"c{u}a", f"c{u}b", day=day + u % 3)
            for u in users]
