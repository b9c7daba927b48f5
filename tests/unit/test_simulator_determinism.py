"""The simulator is deterministic: same config, same bytes; more days keep the earlier days."""
from __future__ import annotations

from pathlib import Path

from formats.home import DataHome
from simulator import SimConfig, simulate


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` by relative path."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_config_gives_identical_bytes(tmp_path):
    config = SimConfig(days=2, start_date="2023-02-14", users=12, rankings_per_day=30, image_size=64, seed=3)
    first = simulate(DataHome(tmp_path / "a"), config)
    simulate(DataHome(tmp_path / "b"), config)
    a, b = snapshot(tmp_path / "a"), snapshot(tmp_path / "b")
    assert a.keys() == b.keys()
    assert [name for name in a if a[name] != b[name]] == []
    assert any(name.startswith("raw/images/") for name in a)
    assert first.blobs_written == sum(name.startswith("raw/images/") for name in a)
    different = snapshot_of_seed(tmp_path / "c", config, 4)
    assert different["raw/app_logs/dt=2023-02-14/rankings.jsonl.gz"] != a["raw/app_logs/dt=2023-02-14/rankings.jsonl.gz"]


def snapshot_of_seed(root: Path, config: SimConfig, seed: int) -> dict[str, bytes]:
    from dataclasses import replace
    simulate(DataHome(root), replace(config, seed=seed, no_images=True))
    return snapshot(root)


def test_worker_count_does_not_change_output(tmp_path):
    base = dict(days=1, start_date="2023-03-01", users=20, rankings_per_day=40, image_size=48, seed=5)
    simulate(DataHome(tmp_path / "one"), SimConfig(**base, workers=1))
    simulate(DataHome(tmp_path / "two"), SimConfig(**base, workers=2))
    assert snapshot(tmp_path / "one") == snapshot(tmp_path / "two")


def test_more_days_reproduce_the_earlier_days(tmp_path):
    base = dict(start_date="2023-02-13", users=15, rankings_per_day=30, image_size=32, seed=11)
    simulate(DataHome(tmp_path / "short"), SimConfig(days=2, **base))
    simulate(DataHome(tmp_path / "long"), SimConfig(days=3, **base))
    short, long = snapshot(tmp_path / "short" / "raw"), snapshot(tmp_path / "long" / "raw")
    for name, data in short.items():
        if name.startswith(("app_logs/", "images/")):
            assert long[name] == data, name
    assert "app_logs/dt=2023-02-15/rankings.jsonl.gz" in long
