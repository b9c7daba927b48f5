"""fix38h (noticed by fix38a): the trainer's ``training.data.prompt_counts`` read ``prompt_counts.parquet`` whole
(``path.read_bytes()``) before checking it against the version's manifest, so a multi-GB file planted at that name
cost as much memory before it was refused. It now goes through ``formats.dataset.open_listed_file``: its size is
checked against the manifest's record before a byte is read, its sha256 hashed streaming."""
from __future__ import annotations

import tracemalloc
from pathlib import Path

import pytest
from test_publish_fixtures import published_home

from formats.dataset import ChecksumError, resolve_version
from training import data


@pytest.fixture(autouse=True)
def _fresh_cache():
    data.prompt_counts.cache_clear()
    yield
    data.prompt_counts.cache_clear()


def test_an_intact_prompt_counts_file_gives_the_counts(tmp_path: Path) -> None:
    version = resolve_version(published_home(tmp_path / "home"))
    counts = data.prompt_counts(str(version / "train"))
    assert counts and all(isinstance(k, str) and isinstance(v, int) and v >= 1 for k, v in counts.items())


def test_a_planted_huge_prompt_counts_file_is_refused_before_it_is_read(tmp_path: Path) -> None:
    version = resolve_version(published_home(tmp_path / "home"))
    path = version / "train" / "prompt_counts.parquet"
    path.unlink()                                   # a version's files may be links shared with others
    with open(path, "wb") as handle:                # sparse: 1 GiB that costs no disk
        handle.truncate(1 << 30)
    tracemalloc.start()
    try:
        with pytest.raises(ChecksumError, match=r"has 1073741824 bytes but its manifest.json records \d+: it changed "
                                                r"after publishing \(an edited prompt_counts.parquet reweights"):
            data.prompt_counts(str(version / "train"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, peak                     # was the whole file: 1 GiB


def test_an_edited_prompt_counts_file_of_the_same_size_is_refused_by_its_sha256(tmp_path: Path) -> None:
    version = resolve_version(published_home(tmp_path / "home"))
    path = version / "train" / "prompt_counts.parquet"
    raw = path.read_bytes()
    path.unlink()
    path.write_bytes(raw[:-1] + bytes([raw[-1] ^ 1]))
    with pytest.raises(ChecksumError, match=r"has sha256 [0-9a-f]{64} but its manifest.json records"):
        data.prompt_counts(str(version / "train"))


def test_an_unlisted_prompt_counts_file_is_refused_and_a_missing_one_named(tmp_path: Path) -> None:
    version = resolve_version(published_home(tmp_path / "home"))
    planted = version / "planted" / "prompt_counts.parquet"          # a folder no manifest lists
    planted.parent.mkdir()
    listed = version / "train" / "prompt_counts.parquet"
    planted.write_bytes(listed.read_bytes())
    with pytest.raises(ChecksumError, match="is not listed in the manifest.json"):
        data.prompt_counts(str(planted.parent))
    listed.unlink()
    with pytest.raises(FileNotFoundError, match="carry no num_example_per_prompt"):
        data.prompt_counts(str(listed.parent))
