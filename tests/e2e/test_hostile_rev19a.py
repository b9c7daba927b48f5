"""Hostile review (rev19a) of two changes: the feature stage's ``in_process_below`` 32 -> 128 with the
report's ``workers`` now "the worker processes actually used" (bd3d3de), and the app export's fetch plan
counting escapes with ``regexp_replace()`` instead of ``translate()`` (b8ca704).

Each test was a defect confirmed by running it, filed as a strict xfail; all four are fixed (the markers
are gone). The portable runner's worker count is None now ("the runner decides": a job service may run
any number of harnesses), not the job service's own choice, which this process cannot know in general.
"""
from __future__ import annotations

import gzip
import itertools
import json
import os
from pathlib import Path

import psycopg
import pytest

from formats.home import DataHome
from pipelines.appdb.export import export_day
from pipelines.features.config import FeaturesConfig
from pipelines.features.runner import pipeline_options, worker_processes
from tests import postgres_server as pg_helper
from tests.postgres_server import create_app_database, postgres_server  # noqa: F401 - fixture

_names = itertools.count()


# --- 1. regexp_replace() refuses a nondeterministic collation, which translate() never cared about --------

_CI_COLLATION = "CREATE COLLATION rev19a_ci (provider = icu, locale = 'und-u-ks-level2', deterministic = false)"


def _try_icu(server) -> str | None:
    """A new app database on ``server`` whose ``rankings.prompt`` has a case-insensitive (nondeterministic)
    ICU collation, as an app that wants case-insensitive prompts declares it; None when the server has no ICU."""
    dsn = create_app_database(server, f"rev19a_{os.getpid()}_{next(_names)}")
    with psycopg.connect(dsn, autocommit=True) as conn:
        try:
            conn.execute(_CI_COLLATION)
        except psycopg.errors.FeatureNotSupported:      # a server built without ICU (the pgserver wheel)
            return None
        conn.execute("ALTER TABLE rankings ALTER COLUMN prompt TYPE text COLLATE rev19a_ci")
    return dsn


@pytest.fixture()
def icu_app_db(postgres_server):
    """The app database above, on the session's server or, if it lacks ICU, on another install that has it."""
    dsn = _try_icu(postgres_server)
    if dsn is not None:
        yield dsn
        return
    started = []
    try:
        for bindir in pg_helper._bindir_candidates():
            if bindir == postgres_server.bindir or not (bindir / "postgres").is_file():
                continue
            previous = os.environ.get("PICKAPIC_PG_BINDIR")
            os.environ["PICKAPIC_PG_BINDIR"] = str(bindir)
            try:
                server = pg_helper.start_server()
            except (RuntimeError, FileNotFoundError):
                continue
            finally:
                if previous is None:
                    os.environ.pop("PICKAPIC_PG_BINDIR", None)
                else:
                    os.environ["PICKAPIC_PG_BINDIR"] = previous
            started.append(server)
            dsn = _try_icu(server)
            if dsn is not None:
                break
        if dsn is None:     # a missing component is a failure here, not a skip (README: PostgreSQL 15 with ICU)
            pytest.fail("no PostgreSQL install with ICU (nondeterministic collations) found: install one, e.g. "
                        "postgresql-15, or point PICKAPIC_PG_BINDIR at one")
        yield dsn
    finally:
        for server in started:
            server.stop()


def test_a_prompt_column_with_a_nondeterministic_collation_still_exports(icu_app_db, tmp_path):
    """A UTF8 app database whose ``rankings.prompt`` is ``COLLATE`` a case-insensitive ICU collation: the
    export reads it (``left(prompt::text, n)`` keeps the column's collation), and before b8ca704 the fetch
    plan of a UTF8 database used only octet_length/char_length/translate, none of which looks at collations.
    PostgreSQL refuses regular expressions under a nondeterministic collation ("nondeterministic collations
    are not supported for regular expressions"), so the new plan fails every export of that database."""
    with psycopg.connect(icu_app_db) as conn:
        conn.execute("INSERT INTO rankings (ranking_id, created_at, user_id, prompt) VALUES "
                     "(1, '2023-03-01 12:00', 1, 'A cat'), (2, '2023-03-01 12:01', 1, 'a CAT \"quoted\"\n')")
    home = DataHome.at(tmp_path / "home")
    export_day(home, icu_app_db, "2023-03-01")
    with gzip.open(home.raw_file("2023-03-01", "rankings"), "rb") as lines:
        prompts = sorted(json.loads(line)["prompt"] for line in lines)
    assert prompts == ["A cat", 'a CAT "quoted"\n']


# --- 2. FeaturesReport.workers is "the worker processes actually used": not for every option it accepts ---

def test_workers_reported_for_direct_num_workers_0_are_the_processes_beam_starts(monkeypatch):
    """``--direct_num_workers=0`` (a Dagster run config's ``beam_args``: "use every core") makes the FnApiRunner
    start ``multiprocessing.cpu_count()`` worker processes (fn_runner.FnApiRunner.run_pipeline); the report and
    the asset's ``workers`` metadata say ``int(0 or 1)`` = 1."""
    import multiprocessing

    from apache_beam.options.pipeline_options import DirectOptions

    monkeypatch.setattr(multiprocessing, "cpu_count", lambda: 7)
    config = FeaturesConfig(workers=2)
    options = pipeline_options(config, ["--direct_running_mode=multi_processing", "--direct_num_workers=0"], 500)
    assert options.view_as(DirectOptions).direct_num_workers == 0     # what fn_runner turns into cpu_count()
    assert worker_processes(options) == multiprocessing.cpu_count() == 7


@pytest.mark.parametrize("beam_args, used", [
    # the repo's own portable cluster (LocalPortableCluster.beam_args(workers=1)): its job service
    # (portable.ParallelBeamJob) runs max(1, direct_num_workers) SDK harness processes, whatever config.workers says
    # (the job service decides: this process cannot know, so it says None rather than config.workers)
    (["--runner=PortableRunner", "--job_endpoint=localhost:1", "--environment_type=EXTERNAL",
      "--environment_config=localhost:2", "--direct_num_workers=1", "--requirements_cache=skip"], None),
    # Beam's other local runner runs every DoFn in this process
    (["--runner=BundleBasedDirectRunner"], 0),
], ids=["portable-1-harness", "bundle-based-direct"])
def test_workers_reported_on_other_runners_are_the_processes_the_run_used(beam_args, used):
    config = FeaturesConfig()            # workers=2, the default
    assert worker_processes(pipeline_options(config, beam_args, 500)) == used


# --- 3. a day of 32-127 images now runs in the Dagster run process, and leaves its settings behind -------

def test_a_day_of_40_images_leaves_the_calling_process_as_it_was(tmp_path, monkeypatch):
    """Before bd3d3de a day of 40 images ran on 2 worker processes, and configure_worker() (Pillow's block
    cache of 64 blocks, ``PILLOW_BLOCKS_MAX`` exported, one OpenCV thread) applied to them only. Now it runs
    in the caller: afterwards the process keeps Pillow blocks cached (memory held after the stage) and every
    subprocess the run starts later inherits ``PILLOW_BLOCKS_MAX``."""
    from PIL import Image

    unit = Path(__file__).resolve().parents[1] / "unit"
    monkeypatch.syspath_prepend(str(unit))
    # the fake detector must import in worker processes too (the multi_processing path, before bd3d3de)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(unit.parents[1]), str(unit), os.environ.get("PYTHONPATH", "")]))
    from test_features_fixtures import fake_detector, png, write_day

    from pipelines.features.stage import build_features

    home = DataHome(tmp_path / "home")
    write_day(home, "2023-03-01", {f"i{k:02d}": png(k, (96 + k, 80)) for k in range(40)})
    monkeypatch.delenv("PILLOW_BLOCKS_MAX", raising=False)
    blocks_max = Image.core.get_blocks_max()
    Image.core.set_blocks_max(0)          # Pillow's default (an earlier in-process build in this pytest run may have set it)
    Image.core.clear_cache()
    try:
        report = build_features(home, "2023-03-01", FeaturesConfig(), detector_factory=fake_detector)
        assert report.processed == 40
        left = (os.environ.get("PILLOW_BLOCKS_MAX"), Image.core.get_blocks_max(), Image.core.get_stats()["blocks_cached"])
    finally:
        Image.core.set_blocks_max(blocks_max)
        Image.core.clear_cache()
    assert left == (None, 0, 0), left
