"""Seeded raw-zone builder for the ingest tests (independent of the simulator), plus its own checks."""
from __future__ import annotations

import gzip
import json
import random
import uuid
from pathlib import Path

from formats.home import DataHome

MODELS = ("stabilityai/stable-diffusion-2-1", "yuvalkirstain/dreamlike-photoreal-2-flax", "CONTENT_FILTERED")
WORDS = ("red", "blue", "cube", "cat", "dog", "forest", "city", "oil painting", "photo", "three", "two")


class DayBuilder:
    """Build one day's four raw files line by line; objects are dicts, planted defects may be raw bytes."""

    def __init__(self, day: str, seed: int = 0, id_base: int = 1):
        self.day = day
        self.rng = random.Random(f"{day}/{seed}")
        self.next_id = id_base
        self.lines: dict[str, list[bytes]] = {t: [] for t in ("users", "images", "rankings", "downloads")}
        self.image_uids: list[str] = []
        self.user_ids: list[int] = []

    # --- value makers -------------------------------------------------------------------------
    def uid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def ts(self) -> str:
        r = self.rng
        return f"{self.day} {r.randrange(24):02d}:{r.randrange(60):02d}:{r.randrange(60):02d}.{r.randrange(10**6):06d}"

    def new_id(self) -> int:
        self.next_id += 1
        return self.next_id

    def text(self) -> str:
        return " ".join(self.rng.choice(WORDS) for _ in range(self.rng.randint(2, 6)))

    # --- objects ---------------------------------------------------------------------------------
    def user(self, **over) -> dict:
        obj = {"user_id": self.new_id(), "created_at": self.ts(), "email": f"u{self.next_id}@example.com",
               "name": f"User {self.next_id}"}
        obj.update(over)
        return obj

    def image(self, **over) -> dict:
        obj = {"image_id": self.new_id(), "created_at": self.ts(), "image_uid": self.uid(),
               "user_id": self.rng.choice(self.user_ids) if self.user_ids else 7, "prompt": self.text(),
               "negative_prompt": "ugly, blurry", "seed": self.rng.randrange(2**32),
               "gs": round(self.rng.uniform(3, 12), 3), "steps": 25, "idx": self.rng.randrange(4),
               "num_generated": 4, "scheduler_cls": "DPMSolverMultistepScheduler", "model_id": self.rng.choice(MODELS)}
        obj.update(over)
        return obj

    def ranking(self, **over) -> dict:
        shown = self.rng.sample(self.image_uids, 2)
        best = self.rng.choice(shown + ["none"])
        obj = {"ranking_id": self.new_id(), "created_at": self.ts(), "user_id": self.rng.choice(self.user_ids),
               "image_0_uid": shown[0], "image_1_uid": shown[1], "image_2_uid": None, "image_3_uid": None,
               "best_image_uid": best, "prompt": self.text()}
        obj.update(over)
        return obj

    def download(self, **over) -> dict:
        obj = {"download_id": self.new_id(), "created_at": self.ts(), "user_id": self.rng.choice(self.user_ids),
               "image_uid": self.rng.choice(self.image_uids), "prompt": self.text()}
        obj.update(over)
        return obj

    # --- adding lines ----------------------------------------------------------------------------
    def add(self, table: str, obj: dict | bytes | str | list) -> int:
        """Append one line (an object, or raw bytes/str written as-is); returns its 1-based line number."""
        if isinstance(obj, bytes):
            line = obj
        elif isinstance(obj, str):
            line = obj.encode("utf-8")
        else:
            line = json.dumps(obj, ensure_ascii=False, allow_nan=True).encode("utf-8")
        self.lines[table].append(line)
        if table == "images" and isinstance(obj, dict) and isinstance(obj.get("image_uid"), str):
            self.image_uids.append(obj["image_uid"])
        if table == "users" and isinstance(obj, dict) and isinstance(obj.get("user_id"), int):
            self.user_ids.append(obj["user_id"])
        return len(self.lines[table])

    def populate(self, users: int = 5, images: int = 20, rankings: int = 15, downloads: int = 5) -> "DayBuilder":
        """Add clean rows (images before rankings so references resolve)."""
        for _ in range(users):
            self.add("users", self.user())
        for _ in range(images):
            self.add("images", self.image())
        for _ in range(rankings):
            self.add("rankings", self.ranking())
        for _ in range(downloads):
            self.add("downloads", self.download())
        return self

    def write(self, home: DataHome, skip: tuple[str, ...] = ()) -> dict[str, Path]:
        """Write each table as gzip JSON lines (fixed mtime: byte-identical); returns the paths."""
        paths = {}
        for table, lines in self.lines.items():
            if table in skip:
                continue
            path = home.raw_file(self.day, table)
            path.parent.mkdir(parents=True, exist_ok=True)
            payload = b"".join(line + b"\n" for line in lines)
            path.write_bytes(gzip.compress(payload, mtime=0))
            paths[table] = path
        return paths


def clean_home(tmp_path: Path, day: str = "2023-03-01", seed: int = 0, **sizes) -> tuple[DataHome, DayBuilder]:
    """A data home with one clean day written."""
    home = DataHome(tmp_path / "home")
    builder = DayBuilder(day, seed).populate(**sizes)
    builder.write(home)
    return home, builder


def test_builder_is_deterministic(tmp_path):
    a, _ = clean_home(tmp_path / "a")
    b, _ = clean_home(tmp_path / "b")
    for table in ("users", "images", "rankings", "downloads"):
        assert a.raw_file("2023-03-01", table).read_bytes() == b.raw_file("2023-03-01", table).read_bytes()


def test_builder_rankings_reference_built_images(tmp_path):
    _, builder = clean_home(tmp_path)
    rankings = [json.loads(line) for line in builder.lines["rankings"]]
    assert all(r["image_0_uid"] in builder.image_uids and r["image_1_uid"] in builder.image_uids for r in rankings)


def hostile_lines(b: DayBuilder) -> list[tuple[str, bytes | str | dict, str]]:
    """(table, line, expected quarantine reason) for every line-level reason; ``b`` must be populated."""
    uid0, uid1 = b.image_uids[0], b.image_uids[1]
    long_prompt = "a" * 100_000
    ranking = b.ranking
    image = b.image
    return [
        ("images", b"{" + b"x" * (1 << 20) + b"}", "line_too_long"),
        # an id no clean user has: since fix33i an invalid_utf8 line keeps its key (a version of that user)
        ("users", b'{"user_id": 9000005, "name": "\xff\xfe"}', "invalid_utf8"),
        ("images", json.dumps(image(prompt="x\ud800"), ensure_ascii=True), "invalid_utf8"),
        ("rankings", b'{"ranking_id": 1, "created_at": ', "malformed_json"),
        ("users", b"", "malformed_json"),
        ("users", '{"user_id": 1, "user_id": 2, "created_at": "2023-03-01 00:00:00", "email": null, "name": null}',
         "malformed_json"),
        ("rankings", b"[1, 2, 3]", "not_an_object"),
        ("rankings", b'"just a string"', "not_an_object"),
        ("images", image(gs=float("nan")), "invalid_value"),
        ("images", '{"image_id": 1, "gs": Infinity}', "invalid_value"),
        ("users", {"user_id": 77, "created_at": "2023-03-01 01:00:00", "email": None}, "missing_field"),
        ("rankings", ranking(prompt=None), "missing_field"),
        ("downloads", b.download(extra_field=1), "unexpected_field"),
        ("rankings", ranking(ranking_id="12"), "wrong_type"),
        ("rankings", ranking(user_id=True), "wrong_type"),
        ("images", image(steps=25.5), "wrong_type"),
        ("images", image(prompt=12345), "wrong_type"),
        ("images", image(gs="7.5"), "wrong_type"),
        ("users", b.user(user_id=-4), "invalid_value"),
        ("users", b.user(user_id=0), "invalid_value"),
        ("rankings", ranking(ranking_id=2**60), "invalid_value"),
        ("images", json.dumps(image(gs=123.25)).replace("123.25", "1e400"), "invalid_value"),
        ("images", image(idx=4, num_generated=4), "invalid_value"),
        ("images", image(model_id=""), "invalid_value"),
        ("users", b.user(created_at="2023-03-01T10:00:00Z"), "bad_timestamp"),
        ("users", b.user(created_at="2023-02-30 10:00:00"), "bad_timestamp"),
        ("rankings", ranking(created_at="2031-01-01 00:00:00"), "bad_timestamp"),
        ("rankings", ranking(created_at="2019-05-05 00:00:00"), "bad_timestamp"),
        ("downloads", b.download(created_at="1677628800"), "bad_timestamp"),
        ("images", image(image_uid="../../etc/passwd"), "invalid_uid"),
        ("images", image(image_uid="a/b"), "invalid_uid"),
        ("images", image(image_uid="C:\\evil"), "invalid_uid"),
        ("images", image(image_uid=uid0[:-1] + "\x00"), "invalid_uid"),
        ("images", image(image_uid=uid0.upper()), "invalid_uid"),
        ("downloads", b.download(image_uid="not-a-uuid"), "invalid_uid"),
        ("images", image(prompt=long_prompt), "prompt_too_long"),
        ("rankings", ranking(prompt="a cat\u202eevil"), "control_characters"),
        ("rankings", ranking(prompt="a cat\x07"), "control_characters"),
        ("images", image(prompt="line\nbreak"), "control_characters"),
        ("rankings", ranking(image_0_uid=uid0, image_1_uid=uid1, best_image_uid=b.uid()), "invalid_ranking"),
        ("rankings", ranking(image_0_uid=uid0, image_1_uid=uid0, best_image_uid="none"), "invalid_ranking"),
        ("rankings", ranking(image_2_uid=b.image_uids[2]), "invalid_ranking"),
        ("rankings", ranking(image_0_uid=uid0, image_1_uid=b.uid(), best_image_uid="none"), "unknown_image_reference"),
        ("downloads", b.download(image_uid=b.uid()), "unknown_image_reference"),
    ]
