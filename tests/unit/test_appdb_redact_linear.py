"""``pipelines.appdb.connection.redact`` on a long server message: linear in its length (reviews rev26c noted the
password-key quote count and the name-span containment test as quadratic: 0.4 s and 8 s at 176-270 KB)."""
from __future__ import annotations

import time

import pytest

from pipelines.appdb.connection import _password_values, redact

DSN = "host=db.internal dbname=pickapic user=pick password=sekrit"


@pytest.mark.parametrize("text", ['password=x "a" ' * 16000, "pickapic sekrit " * 17000, "pick sekrit pickapic " * 13000,
                                  '"password=' * 30000, 'password=' * 30000, 'password="' * 30000])
def test_redact_of_a_long_message_is_linear(text) -> None:
    started = time.thread_time()   # CPU time: a loaded CI machine does not inflate it
    out = redact(text, DSN)
    assert time.thread_time() - started < 3.0         # quadratic: several seconds to minutes
    assert "sekrit" not in out


def test_the_spans_found_are_unchanged() -> None:
    # a password inside a connection name stays (masking it inside the name would show it); elsewhere it is hidden
    assert redact('database "pickapic" user pick password=sekrit', DSN) == 'database "pickapic" user pick password=***'
    assert redact("x sekrit y", DSN) == "x *** y"
    text = 'a "b password=c d" password=e f'
    assert [text[s:e] for s, e in _password_values(text)] == ['c d', "e"]
