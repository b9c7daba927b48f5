"""The hostile corpus generator is seeded (same seed, same bytes) and plants what it claims."""
from __future__ import annotations

import gzip
import hashlib
import sys
from pathlib import Path

from formats.home import DataHome
from simulator import SimConfig, simulate

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # tests/unit is not a package: reach tests/
from tests.hostile_corpus import plant_hostile_corpus  # noqa: E402


def _digest_tree(root: Path) -> dict[str, str]:
    out = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            out[rel] = "link:" + str(path.readlink()).replace(str(root.parents[1]), "<base>")
        elif path.is_file():
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            out[rel] = "dir" if path.is_dir() else "special"
    return out


def _plant(base: Path):
    home = DataHome(base / "home")
    simulate(home, SimConfig(days=1, users=6, rankings_per_day=10, image_size=32, seed=3, workers=1))
    corpus = plant_hostile_corpus(home, base / "outside", seed=5)
    return home, corpus


def test_same_seed_same_corpus(tmp_path: Path) -> None:
    home_a, corpus_a = _plant(tmp_path / "a")
    home_b, corpus_b = _plant(tmp_path / "b")
    assert corpus_a.lines == corpus_b.lines and corpus_a.blobs == corpus_b.blobs and corpus_a.files == corpus_b.files
    assert _digest_tree(home_a.raw) == _digest_tree(home_b.raw)


def test_planted_lines_sit_where_the_corpus_says(tmp_path: Path) -> None:
    home, corpus = _plant(tmp_path)
    kinds = {c.reason for c in corpus.lines}
    assert {"invalid_utf8", "not_an_object", "line_too_long", "missing_field", "unexpected_field", "wrong_type",
            "invalid_value", "bad_timestamp", "prompt_too_long", "control_characters", "invalid_uid",
            "invalid_ranking"} <= kinds
    assert {b.reason for b in corpus.blobs} >= {"extension_mismatch", "decompression_bomb", "too_small",
                                                "animated_image", "unsupported_mode", "unsafe_path"}
    for table in ("users", "images", "rankings", "downloads"):
        lines = gzip.decompress(home.raw_file(corpus.day, table).read_bytes()).split(b"\n")
        assert len(lines) - 1 == corpus.expected_lines[(corpus.day, table)]
        for case in (c for c in corpus.lines if c.table == table):
            line = lines[case.line_number - 1]
            if case.name == "invalid_utf8":
                assert b"\xff\xfe" in line
            elif case.name == "line_10_mb":
                assert len(line) > 10 * 1024 * 1024
            elif case.name == "json_array":
                assert line == b"[1, 2, 3]"
    # the symlinked blob points outside the home, at the sentinel
    link = next(b for b in corpus.blobs if b.name == "symlink_outside_home")
    target = (home.raw_images / f"{link.image_uid}.png").resolve()
    assert target == (tmp_path / "outside" / "sentinel.png").resolve()
