"""The banned-users list takes ids in ASCII digits only: Python's ``int()`` also read ``1_000`` as 1000, Arabic-Indic
``٣`` as 3 and fullwidth ``１２`` as 12, so a typo or a pasted number banned a user nobody named (noticed by review
rev28d). A sign is allowed; an id of thousands of digits is past int64, not ``int()``'s digit-limit error."""
from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.curation.decisions import read_id_list


@pytest.mark.parametrize("text", ["1_000", "\u0663", "\uff11\uff12", "1.0", "0x10", "12 13", "\u00b2"])
def test_an_id_not_in_ascii_digits_is_refused_naming_the_line(tmp_path: Path, text: str) -> None:
    listed = tmp_path / "banned_users.txt"
    listed.write_text(f"# banned\n7\n{text}\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"banned_users\.txt:3: .* is not an integer user id \(ASCII digits"):
        read_id_list(listed)


def test_ascii_ids_with_signs_comments_and_blanks_are_read(tmp_path: Path) -> None:
    listed = tmp_path / "banned_users.txt"
    listed.write_text("  12  # spammer\n\n+5\n-3\n0012\n9223372036854775807\n", encoding="utf-8")
    assert read_id_list(listed) == [-3, 5, 12, 9223372036854775807]


def test_an_id_of_thousands_of_digits_is_past_the_64_bit_range(tmp_path: Path) -> None:
    listed = tmp_path / "banned_users.txt"
    listed.write_text("9" * 5000 + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"banned_users\.txt:1: .* past the 64-bit integer range"):
        read_id_list(listed)


def test_the_error_quotes_a_long_line_cut(tmp_path: Path) -> None:
    listed = tmp_path / "banned_users.txt"
    listed.write_text("9" * 5000 + "\n" + "x" * 5000 + "\n", encoding="utf-8")
    with pytest.raises(ValueError) as refused:
        read_id_list(listed)
    assert len(str(refused.value)) < 400
