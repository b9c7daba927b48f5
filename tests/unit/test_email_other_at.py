"""An email whose ``@`` is written another way is masked in the quarantine (``parse.ENCODED_EMAIL_RE``): an HTML
character reference (``&#64;``, ``&#x40;``, ``&commat;``, after ``&amp;`` too, any case), a look-alike NFKC reads
as ``@`` (fullwidth ``＠`` U+FF20, small ``﹫`` U+FE6B), as well as percent-encoded (rev25k); text that only has an
``&`` or a ``%`` stays as written; one pass over a long value."""
from __future__ import annotations

import json
import time
import unicodedata

import pytest

from dagster_project.versions import CODE_VERSIONS
from pipelines.ingest.parse import REDACTED, has_email, mask_emails, mask_line

AT_FORMS = ["&#64;", "&#064;", "&#x40;", "&#X40;", "&commat;", "&COMMAT;", "&amp;#64;", "&amp;amp;commat;",
            "\uff20", "\ufe6b", "%40", "%2540"]


@pytest.mark.parametrize("at", AT_FORMS)
def test_an_email_with_another_at_is_masked(at: str) -> None:
    value = f"send it to zelda.quinn{at}example.com please"
    assert has_email(value)
    assert mask_emails(value) == f"send it to {REDACTED} please"
    for table in ("images", "rankings"):
        masked = mask_line(table, json.dumps({"prompt": value, "model_id": "sd", "steps": -5}, ensure_ascii=False))
        assert "zelda" not in masked and "example.com" not in masked, masked
        escaped = mask_line(table, json.dumps({"prompt": value, "steps": -5}))       # non-ASCII as \\uXXXX
        assert "zelda" not in escaped and "example.com" not in escaped, escaped


def test_the_lookalikes_are_those_nfkc_reads_as_at() -> None:
    assert {unicodedata.normalize("NFKC", c) for c in ("\uff20", "\ufe6b")} == {"@"}


@pytest.mark.parametrize("value", ["cats &amp; dogs", "R&D #64;", "tom & jerry; @", "100%40", "cats&#64;",
                                   "&#64; alone", "x &commat; y", "AT&T", "50&#37; off"])
def test_an_ampersand_or_percent_that_is_no_email_stays(value: str) -> None:
    assert not has_email(value)
    line = json.dumps({"prompt": value, "model_id": "sd"})
    assert mask_line("images", line) == line


@pytest.mark.parametrize("chunk", ["&amp;", "a&", "&#000", "a&amp;amp;amp;", "&#x0", "\uff20", "%25"])
def test_masking_a_long_value_of_those_forms_is_one_pass(chunk: str) -> None:
    value = chunk * (160_000 // len(chunk))
    started = time.thread_time()   # CPU time: a loaded CI machine does not inflate it
    found, masked = has_email(value), mask_emails(value)
    assert time.thread_time() - started < 3.0        # a pattern backtracking from every position: minutes
    assert found == (chunk == "\uff20") and (REDACTED in masked) == found


def test_ingest_code_version_moved_with_the_masking() -> None:
    assert int(CODE_VERSIONS["ingest"]) >= 5       # 5 moved with the masking (6: review rev29a)
