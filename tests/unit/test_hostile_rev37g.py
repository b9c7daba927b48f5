"""Hostile review rev37g: the curation stage (pipelines/curation/decisions.py, the sql/curation_*.sql it runs, the
decisions and pairs contracts, README section 4 and section 9's curation bullets), attacked as a hostile app user
and a hostile export.

How: the real :func:`~pipelines.curation.decisions.phrase_matches` (real DuckDB RE2 patterns, the real
``moderation_key`` / ``moderation_text``) on in-memory ``ranking_base`` views of crafted prompts; the SQL read
against the ingest's contracts (rankings.yaml / images.yaml) to see which hostile rows can reach curation at all.

Held up (no test): 60-odd banned-phrase dodges were all caught: zero-width, soft hyphen, CGJ and tag characters
inside a word; combining strikethrough / low line / Zalgo marks; small capitals (``ɴᴜᴅᴇ``), circled, fullwidth,
mathematical bold, superscript / subscript letters; regional-indicator letters; Cyrillic / Greek / Cherokee /
Canadian-syllabics look-alikes; Turkish ``İ``; NBSP, U+2028, U+3000 and ZWJ between words; phrases with
punctuation against curly apostrophes, modifier apostrophes, fullwidth / small-form ``＋ ＊ ＃ ＠ ＿``, one-dot
leaders and hyphen / en-dash variants; a 400k-character prompt. Bracketed negative text is moved out of
``prompt`` by the ingest and never published (bracket_negative_prompt reaches no output). Rankings that show one
image twice, 3-image rankings, ties with a best image and null user ids / prompts are refused by the ingest
(parse.py, rankings.yaml) before curation. ``content_digest`` (DuckDB ``hash`` of a struct) is order-sensitive
(swapped images are a conflicting re-export) and treats -0.0 as 0.0. Policy changes reach old days (decisions is
rebuilt whole; the lists are in the inputs identity and in Dagster's staleness).

Measured: with 1,000 listed phrases, ``phrase_matches`` over 500 distinct prompts took 1.0 s for ordinary prompts
and 104 s for prompts that hold one listed phrase and stuff the others' letters inside longer words
(``xabcdefx...``, 240 per 2,000-character prompt); 2,000 such prompts took 282 s (about 0.12 s each, 2 vCPUs). The
test's scale (40 phrases, 20 prompts): 5-7 s against 0.2-0.4 s.

Noticed, not filed: accented letters (``nüde``, ``nudé``) and parenthesized letters (``⒩⒰⒟⒠``, read as
``n u d e``) dodge a phrase; both follow documented choices of the key (accents a precomposed letter holds stay;
``⒜`` reads as `` a ``; review rev17f pins ``pá`` as not ``pa``); so do a Russian stress mark (``по́рно``) and
Arabic harakat (``سَكْس``, whose key maps fatha / sukun to U+0301 / U+030A). ``ѕекс`` with Macedonian dze keys as
``sekc``, not ``cekc`` (a fair reading). A phrase list line ``#nsfw`` is a comment (documented), so a hashtag
cannot be listed (``nsfw`` catches ``#nsfw``).

Each test below is a defect confirmed by running it, ranked by severity, filed as a strict xfail whose assertions
state the correct behaviour. Fixed the same day (fix37g, ``tests/unit/test_fix37g.py``) and the markers removed; the
timed comparison was rewritten as a count of the guarded patterns built (the timing is in benchmarks/moderation.py).
"""
from __future__ import annotations

import math
import random
import string

import duckdb
import pyarrow as pa

from pipelines.curation.decisions import phrase_matches


def _matches_and_guarded_patterns(phrases: list[str], prompts: list[str], monkeypatch) -> tuple[int, list[int]]:
    """Rows of the real ``phrase_matches`` and the size of each guarded pattern it built (one a guarded RE2 compiled
    and scanned: the slow per-phrase check)."""
    from pipelines.curation import decisions

    built: list[int] = []
    real = decisions.phrase_pattern
    monkeypatch.setattr(decisions, "phrase_pattern", lambda group, kinds=None: (built.append(len(group)),
                                                                                  real(group, kinds))[1])
    con = duckdb.connect()
    try:
        con.register("ranking_base", pa.table({"ranking_id": pa.array(range(len(prompts)), pa.int64()),
                                               "prompt": pa.array(prompts, pa.string())}))
        return phrase_matches(con, phrases).num_rows, built
    finally:
        con.close()
        monkeypatch.setattr(decisions, "phrase_pattern", real)


def test_phrase_bodies_stuffed_inside_words_do_not_multiply_moderation_time(monkeypatch):
    """A hostile app user submits prompts that hold one listed phrase as a word (so the ranking is dropped, as it
    must be) and pack the letters of every other listed phrase inside longer words (``xabcdefx``), which match no
    phrase. The result is right, but the group testing tests each of those phrases with its own guarded pattern on
    every such prompt: the time grows with (hostile prompts x phrases), about 0.12 s per prompt at 1,000 phrases,
    so 10,000 such rankings add 20 minutes to every curation build. Correct: such prompts cost about what ordinary
    prompts of the same length, count and verdict cost.

    Fixed (fix37g): below a part that matched, where both halves' bodies occur the halves are told apart by their
    guarded patterns, so the guarded patterns follow the phrases really present as words. The review timed the two
    kinds of prompts (5-7 s against 0.2-0.4 s here); timings are not asserted in unit tests (flaky on a shared
    2-CPU machine), so this test counts the guarded patterns built (each a slow RE2 compile and scan), at most two
    a level of halves for the one phrase present, plus each part, for each form (as typed and by key): 22 here, 82
    before the fix (one a listed phrase), 4 for the ordinary prompts; the timing comparison (ratio against ordinary prompts in the same
    run, peak memory) is ``python -m benchmarks.moderation --stuffed``."""
    rng = random.Random(37)
    phrases = sorted({"".join(rng.choices(string.ascii_lowercase, k=6)) for _ in range(40)})
    count = 20
    hostile, plain = [], []
    for i in range(count):
        stuffed = "".join(f"x{body}x" for body in rng.sample(phrases, 39))
        hostile.append(f"{phrases[0]} {i} {stuffed}"[:2000])
        filler = " ".join(rng.choices(["cat", "dog", "house", "red", "photo", "sunset"], k=300))
        plain.append(f"{phrases[0]} {i} {filler}"[:2000])
    plain_rows, plain_built = _matches_and_guarded_patterns(phrases, plain, monkeypatch)
    hostile_rows, hostile_built = _matches_and_guarded_patterns(phrases, hostile, monkeypatch)
    assert plain_rows == hostile_rows == count     # every prompt holds exactly phrases[0] as a word
    forms, levels = 2, math.ceil(math.log2(len(phrases)))
    assert len(plain_built) <= forms * (1 + 2 * levels)
    assert len(hostile_built) <= forms * (1 + 2 * levels), f"{len(hostile_built)} guarded patterns for 1 phrase present"
