"""``make test`` hands whole files to its workers, slowest first: the list it orders by must name real files."""
from __future__ import annotations

from pathlib import Path

from tests.e2e.conftest import SLOW_FILES_FIRST

TESTS = Path(__file__).resolve().parents[1]


def test_every_file_listed_slowest_first_exists() -> None:
    missing = [name for name in SLOW_FILES_FIRST if not (TESTS / name).is_file()]
    assert not missing, f"SLOW_FILES_FIRST names files that are gone (renamed?): {missing}"
    assert len(set(SLOW_FILES_FIRST)) == len(SLOW_FILES_FIRST)


def test_make_test_keeps_files_whole_in_collection_order() -> None:
    makefile = (TESTS.parent / "Makefile").read_text()
    (line,) = [line for line in makefile.splitlines() if "-m pytest" in line and " tests" in line]
    assert "--dist loadfile" in line and "--no-loadscope-reorder" in line
