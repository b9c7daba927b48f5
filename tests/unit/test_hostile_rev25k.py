"""Hostile review rev25k of fix25h (2470a72, merged as 230c371) and of c54a5b7 / 56425e5 (five defects, each filed
as a strict xfail; all fixed the same day by fix25k, and the tests now pass as plain tests).

Reviewed: ``parse.mask_line`` (every table's quarantined line masked in the warehouse quarantine),
``formats.commands.known_error`` / ``raised_by_a_raise`` (an interpreter's RuntimeError keeps its traceback, the
project's own is one line), ``progress_line`` and the stage mains going through ``run_command``.
Each test states the correct behaviour and is expected to fail until the defect is fixed.
"""
from __future__ import annotations

import signal
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from test_ingest_fixtures import DayBuilder

from formats.commands import error_message, known_error
from formats.home import DataHome
from pipelines.ingest import day as ingest
from pipelines.ingest.config import IngestConfig
from pipelines.ingest.day import ingest_day
from pipelines.ingest.parse import mask_line

DAY = "2023-03-01"


class _TooSlow(Exception):
    pass


def _alarm(signum, frame):
    raise _TooSlow()


def test_mask_line_is_linear_on_a_long_prompt_without_an_at_sign() -> None:
    lines = ['{"prompt": "' + chr(ord("a") + i) * 65_000 + '"}' for i in range(8)]
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(20)       # 8 lines of 64 KiB: well under a second when linear, about a minute now
    try:
        masked = [mask_line("images", line) for line in lines]
    except _TooSlow:
        masked = None
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    assert masked is not None, "masking 8 lines of 64 KiB did not finish in 20 s"


_REAL_INGEST_TABLES = ingest._ingest_tables


def _buggy_in_a_worker(home, day, tables, config, raw_days, shard=None, spill_dir=None, **options):
    """The worker's own code with an interpreter bug (a dict changed while iterated) when run as a shard."""
    if shard is not None:
        seen = {1: 1}
        for key in seen:
            seen[key + 1] = 1
    return _REAL_INGEST_TABLES(home, day, tables, config, raw_days, shard, spill_dir, **options)


def test_an_interpreter_error_in_an_ingest_worker_keeps_its_traceback(tmp_path: Path, monkeypatch) -> None:
    home = DataHome(tmp_path / "home")
    DayBuilder(DAY).populate(users=3, images=6, rankings=4, downloads=2).write(home)
    monkeypatch.setattr(ingest, "_ingest_tables", _buggy_in_a_worker)
    with pytest.raises(RuntimeError, match="changed size during iteration") as raised:
        ingest_day(home, DAY, IngestConfig(workers=2, parallel_min_bytes=1))
    # the same bug in a serial run is a traceback (known_error False); so must it be from a worker
    assert known_error(raised.value) is False
    assert error_message(raised.value) is None


def test_a_bare_raise_without_an_active_exception_is_a_bug() -> None:
    def misplaced_reraise():
        raise  # noqa: PLE0704 - the bug under test

    with pytest.raises(RuntimeError, match="No active exception") as raised:
        misplaced_reraise()
    assert known_error(raised.value) is False
    assert error_message(raised.value) is None


def test_a_percent_encoded_email_in_a_prompt_is_masked_in_the_quarantine(tmp_path: Path) -> None:
    home = DataHome(tmp_path / "home")
    b = DayBuilder(DAY).populate(users=3, images=4, rankings=2, downloads=1)
    bad = b.image(prompt="a cat, see https://img.example/share?to=zelda.quinn%40example.com")
    bad["steps"] = -5          # quarantined (steps out of range), its prompt kept as text
    b.add("images", bad)
    b.write(home)
    assert ingest_day(home, DAY).reconciled
    rows = pq.read_table(home.partition_file("quarantine", DAY)).to_pylist()
    texts = [r["raw_text"] or "" for r in rows if r["table"] == "images"]
    assert texts, rows
    assert not any("zelda.quinn" in t for t in texts), texts


def test_a_failed_assert_in_a_beam_dofn_keeps_its_traceback() -> None:
    import logging

    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    # compiled here, not by pytest's assertion rewriting (which would give the assert a message)
    scope: dict = {"beam": beam}
    source = "class Asserting(beam.DoFn):\n    def process(self, x):\n        assert x < 0\n        yield x\n"
    exec(compile(source, "dofn_with_a_bug.py", "exec"), scope)  # noqa: S102 - fixed source, the DoFn under test
    Asserting = scope["Asserting"]

    logging.disable(logging.CRITICAL)
    try:
        options = PipelineOptions(["--runner=DirectRunner", "--direct_running_mode=in_memory"])
        with pytest.raises(RuntimeError, match="AssertionError") as raised, beam.Pipeline(options=options) as p:
            _ = p | beam.Create([1, 2]) | beam.ParDo(Asserting())
    finally:
        logging.disable(logging.NOTSET)
    assert known_error(raised.value) is False
    assert error_message(raised.value) is None
