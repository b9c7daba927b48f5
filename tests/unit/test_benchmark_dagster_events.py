"""``benchmarks.dagster_events`` runs from the checkout and compares like with like: both cases store the same
events (the same job, the same number of runs), each in a forked process of its own, and it reports the ratios and
each case's peak memory. Smallest sizes: a smoke check of the benchmark, not a timing."""
from __future__ import annotations

from benchmarks import dagster_events


def test_the_benchmark_stores_the_same_events_both_ways_and_reports_ratios(tmp_path) -> None:
    results = dagster_events.main(["--runs", "1", "--assets", "1", "--repeats", "1", "--dir", str(tmp_path / "w")])
    home, stock = results["home"], results["stock"]
    assert home["events"] == stock["events"] > 0
    assert results["stock_over_home_wall"] > 0 and results["stock_over_home_cpu"] > 0
    assert home["peak_rss_mib"] > 0 and stock["peak_rss_mib"] > 0
