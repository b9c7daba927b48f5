"""``assign._styled_letters`` scans planes 0 and 1 only: the same table as a scan of every code point."""
from __future__ import annotations

import sys
import unicodedata

from pipelines.splits import assign


def test_the_scan_of_planes_0_and_1_finds_every_styled_letter() -> None:
    everywhere = {}
    for cp in range(0x80, sys.maxunicode + 1):
        match = assign._STYLED_NAME.fullmatch(unicodedata.name(chr(cp), ""))
        if match and unicodedata.normalize("NFKC", chr(cp)) == chr(cp):
            everywhere[cp] = match.group(2) if match.group(1) == "CAPITAL " else match.group(2).lower()
    assert assign._styled_letters() == everywhere
    assert assign._styled_letters()[0x1D00] == "a" and assign._styled_letters()[0x1F170] == "A"   # ᴀ, 🅰
