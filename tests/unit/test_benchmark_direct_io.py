"""``benchmarks.direct_io`` runs both modes, alternating, and cleans up after itself."""
from __future__ import annotations

from benchmarks import direct_io


def test_both_modes_are_measured_in_every_repeat_and_nothing_is_left(tmp_path) -> None:
    result = direct_io.run(samples=60, days=2, repeats=2, workers=2, root=tmp_path / "work")
    for mode in ("direct", "buffered"):
        runs = result["runs"][mode]
        assert {k: len(v) for k, v in runs.items()} == {"scratch_mb_s": 2, "scratch_mb_per_cpu_s": 2,
                                                        "page_cache_growth_mib": 2, "nightly_mb_s": 2}
        assert all(x > 0 for k in ("scratch_mb_s", "scratch_mb_per_cpu_s", "nightly_mb_s") for x in runs[k])
    assert result["scratch_mb"] > result["nightly_mb"] > 0
    assert set(result["ratio_direct_vs_buffered"]) == {"scratch_mb_s", "scratch_mb_per_cpu_s", "nightly_mb_s"}
    assert result["peak_rss_mib"]["writers"] > 0
    assert not (tmp_path / "work" / "trash").exists()      # the repeats' versions are deleted at the end


def test_page_cache_is_read_from_meminfo() -> None:
    assert direct_io.page_cache_mib() > 0
