"""Literal-row data homes for curation and split tests: warehouse partitions written with real schemas."""
from __future__ import annotations

import datetime as dt
import hashlib
from collections import defaultdict
from pathlib import Path

import pyarrow as pa

from formats.files import write_parquet_atomic
from formats.home import DataHome
from schemas import get_schema
from schemas.features import NSFW_CLASSES

SD21 = "stabilityai/stable-diffusion-2-1"
DREAM = "yuvalkirstain/dreamlike-photoreal-2-flax"
T0 = dt.datetime(2023, 3, 1, 12, 0, 0)


def phash_of(seed: int) -> int:
    """A deterministic 64-bit hash with the DC bit set (far from other seeds' hashes)."""
    return int.from_bytes(hashlib.sha256(f"phash{seed}".encode()).digest()[:8], "big") | (1 << 63)


class HomeBuilder:
    """Collects literal rows and writes them as warehouse partitions of one data home."""

    def __init__(self, root):
        self.home = DataHome(Path(root))
        self.images: dict[str, list[dict]] = defaultdict(list)
        self.rankings: dict[str, list[dict]] = defaultdict(list)
        self.features: dict[str, list[dict]] = defaultdict(list)
        self.rejects: dict[str, list[dict]] = defaultdict(list)
        self.banned: list[int] = []
        self.phrases: list[str] = []
        self._image_id = 0
        self._image_ids: dict[str, int] = {}

    def image(self, uid: str, *, user: int = 1, prompt: str = "a cat", model: str = SD21, day: str = "2023-03-01",
              phash: int | None = None, sha: str | None = None, nsfw: dict[str, float] | None = None,
              features: bool = True) -> str:
        """Add an image row (and by default a feature row); returns the uid. A uid added again (a re-export on
        another day) keeps its image_id, as the app's row does."""
        if uid not in self._image_ids:
            self._image_id += 1
            self._image_ids[uid] = self._image_id
        self.images[day].append(dict(
            image_id=self._image_ids[uid], created_at=T0, image_uid=uid, user_id=user, prompt=prompt,
            bracket_negative_prompt=None, negative_prompt=None, seed=1, gs=7.0, steps=25, idx=0, num_generated=2,
            scheduler_cls="DPMSolver", model_id=model, blob_path=f"raw/images/{uid}.png", dt=dt.date.fromisoformat(day)))
        if features:
            self.feature(uid, phash=phash, sha=sha, nsfw=nsfw, day=day)
        return uid

    def feature(self, uid: str, *, phash: int | None = None, sha: str | None = None,
                nsfw: dict[str, float] | None = None, day: str = "2023-03-01") -> None:
        nsfw = nsfw or {}
        seed = int(hashlib.sha256(uid.encode()).hexdigest()[:8], 16)
        self.features[day].append(dict(
            image_uid=uid, dt=dt.date.fromisoformat(day), blob_path=f"raw/images/{uid}.png",
            sha256=sha or hashlib.sha256(uid.encode()).hexdigest(), num_bytes=1000, width=512, height=512,
            mode="RGB", format="PNG", phash=phash if phash is not None else phash_of(seed),
            dhash=phash_of(seed + 1), nsfw_detections=[{"class": c, "score": s, "box": [0, 0, 10, 10]} for c, s in sorted(nsfw.items())],
            nsfw_max={c: float(nsfw.get(c, 0.0)) for c in NSFW_CLASSES},
            train_jpg_key=f"blobs/{uid}.jpg", train_width=512, train_height=512, train_jpg_bytes=500, reused_from=None))

    def reject(self, uid: str, reason: str = "undecodable", day: str = "2023-03-01") -> None:
        self.rejects[day].append(dict(image_uid=uid, dt=dt.date.fromisoformat(day), blob_path=f"raw/images/{uid}.png",
                                      reason=reason, detail="bad bytes", sha256=None, num_bytes=None))

    def ranking(self, ranking_id: int, shown: list[str], best: str | None, *, user: int = 1, prompt: str = "a cat",
                day: str = "2023-03-01", created_at: dt.datetime | None = None) -> None:
        """Add a ranking row; ``best=None`` is a tie."""
        padded = list(shown) + [None] * (4 - len(shown))
        self.rankings[day].append(dict(
            ranking_id=ranking_id, created_at=created_at or T0 + dt.timedelta(seconds=ranking_id), user_id=user,
            image_0_uid=padded[0], image_1_uid=padded[1], image_2_uid=padded[2], image_3_uid=padded[3],
            num_shown=len(shown), best_image_uid=best, is_tie=best is None, prompt=prompt,
            bracket_negative_prompt=None, dt=dt.date.fromisoformat(day)))

    def pair(self, ranking_id: int, *, user: int = 1, prompt: str = "a cat", day: str = "2023-03-01",
             tie: bool = False, models: tuple[str, str] = (SD21, DREAM), created_at: dt.datetime | None = None,
             uids: tuple[str, str] | None = None) -> tuple[str, str]:
        """A 2-image ranking with two fresh images; returns their uids."""
        a, b = uids or (f"r{ranking_id}a", f"r{ranking_id}b")
        self.image(a, user=user, prompt=prompt, model=models[0], day=day)
        self.image(b, user=user, prompt=prompt, model=models[1], day=day)
        self.ranking(ranking_id, [a, b], None if tie else a, user=user, prompt=prompt, day=day, created_at=created_at)
        return a, b

    def write(self) -> DataHome:
        """Write every collected partition and the moderation lists; returns the home."""
        for dataset, parts in (("images", self.images), ("rankings", self.rankings),
                               ("image_features", self.features), ("image_rejects", self.rejects)):
            for day, rows in parts.items():
                schema = get_schema(dataset)
                write_parquet_atomic(pa.Table.from_pylist(rows, schema=schema), self.home.partition_file(dataset, day))
        for day in sorted(set(self.images) | set(self.rankings)):
            self.write_ingest_files(day)
        self.home.moderation.mkdir(parents=True, exist_ok=True)
        self.home.banned_users_file.write_text("# banned\n" + "".join(f"{u}\n" for u in self.banned))
        self.home.nsfw_phrases_file.write_text("# phrases\n" + "".join(f"{p}\n" for p in self.phrases))
        return self.home


    def write_ingest_files(self, day: str) -> None:
        """The day's ``ingest_files`` partition as the ingest records it (rankings and images: accepted = the rows
        written here), which curation reconciles its partitions against."""
        rows = [{"table": table, "dt": dt.date.fromisoformat(day), "file": f"raw/app_logs/{day}/{table}.jsonl.gz",
                 "file_sha256": None, "file_bytes": 0, "status": "ok", "lines_in": len(parts.get(day, [])),
                 "accepted": len(parts.get(day, [])), "accepted_late_image": 0, "quarantined": 0}
                for table, parts in (("images", self.images), ("rankings", self.rankings))]
        write_parquet_atomic(pa.Table.from_pylist(rows, schema=get_schema("ingest_files")),
                             self.home.partition_file("ingest_files", day))


def build_all(home: DataHome, **curation_kwargs):
    """Run dedup, decisions and pairs on ``home``; returns (dedup, decisions, pairs) reports."""
    from pipelines.curation.decisions import CurationConfig, build_decisions, build_pairs
    from pipelines.curation.dedup import DedupConfig, build_clusters

    config = CurationConfig(**curation_kwargs)
    return build_clusters(home, DedupConfig()), build_decisions(home, config), build_pairs(home, config)
