"""Hostile review rev23h of commit ef3d76d (fix23f, the answer to review rev23f): ``runnernames.options_refusal`` and
``runner.check_runner`` (FlinkRunner/SparkRunner need a local job-server jar or ``--job_endpoint``, PortableRunner a
``--job_endpoint``, the three an SDK environment that pulls no image, DataflowRunner ``--project``/``--region``/a
gs:// ``--temp_location`` and apache-beam[gcp]), checked before the staging folder and by the first step of a run
with the feature op (``runconfig.check_run_config(ops=...)``); a user's subclass of Beam's DirectRunner built with
``run_pipeline`` on the stage's FnApiRunner; and the cron check in ``dagster_project/home_settings.py`` (Dagster's
``is_valid_cron_string`` narrowed: R/H/W/?/@daily refused, steps larger than their range, days that never come).

Each test asserts the correct behaviour of a defect confirmed by running the real thing (the real ``pickapic``
CLI on a simulated home, the real feature stage on Beam 2.77 with no network, Dagster 1.13's own cron iterator,
Beam's own options validator, ``systemd-analyze verify`` for the README's unit), filed as a strict xfail; all six were fixed the same day (fix23h).

What held up: Beam parses options with ``allow_abbrev=False``, so ``--job_end=...``/``--run=...`` are unknown options
the stage refuses (the check cannot be fooled by abbreviations); ``--opt value`` and ``--opt=value``, repeated
options (last wins) and quoted strings split the same way in the first-step check and in the asset (both
``shlex.split``); the first-step runner check runs only when the run's own ops include ``fingerprint_images``
(an asset-selection run of the ingest assets alone, as the nightly/sensor/``pickapic build`` request them, is not
refused for a broken dotted runner); a user's DirectRunner subclass (with or without a ``super()`` run_pipeline)
runs on two ``multi_processing`` workers with outputs byte-identical to the default DirectRunner's, and the
default DirectRunner path is unchanged; ``PortableRunner --job_endpoint=embed --environment_type=LOOPBACK`` runs
offline; the cron check agrees with Dagster and croniter on ``1-5``, ``*/6``, ``MON``, ``sun``, ``1,15``,
``29 2`` (leap years), ``31 * *``, ``7``, ``JAN``, ``*/1``, ``1-30/2``, tabs, ``L``, ``L5``, ``fri#2``, wrapped
ranges; a refused cron stops ``pickapic serve`` at once with one clear line (not a silently broken daemon).
"""
from __future__ import annotations

import re
import shlex
import sys
import textwrap
from pathlib import Path

import pytest

from formats.settings import SettingsError, load

REPO = Path(__file__).resolve().parents[2]
DAY = "2023-03-01"


# ------------------------------- 1. the README's systemd unit sets PICKAPIC_NIGHTLY_CRON to '0': nothing loads

def _systemd_environment(line: str) -> tuple[dict[str, str], list[str]]:
    """An ``Environment=`` line as systemd reads it (systemd.exec(5): a space-separated list of assignments, quotes
    group words; a word without '=' is an invalid assignment systemd logs and ignores): the variables and the
    ignored words. ``systemd-analyze verify`` on the README's line says ``Invalid environment assignment,
    ignoring: 2`` (then ``*`` three times) on systemd 252."""
    variables, ignored = {}, []
    for word in shlex.split(line.split("=", 1)[1]):
        name, sep, value = word.partition("=")
        if sep and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            variables[name] = value
        else:
            ignored.append(word)
    return variables, ignored


def test_the_readme_systemd_unit_gives_the_service_the_cron_it_shows(tmp_path):
    from dagster_project.automation import home_crons
    from formats.home import DataHome

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    unit = re.search(r"```ini\n(\[Unit\].*?)```", readme, re.DOTALL)
    assert unit, "the README's systemd unit"
    lines = [line for line in unit.group(1).splitlines() if line.startswith("Environment=")]
    cron_lines = [line for line in lines if "PICKAPIC_NIGHTLY_CRON" in line]
    assert cron_lines, lines
    environ, ignored = {}, []
    for line in cron_lines:
        variables, dropped = _systemd_environment(line)
        environ.update(variables)
        ignored += dropped
    home = DataHome(tmp_path / "home")
    home.root.mkdir()
    assert ignored == [], f"systemd ignores {ignored} of {cron_lines}: the service gets {environ}"
    crons = home_crons(home, environ)     # what `pickapic serve` and the definitions read
    assert len(crons.nightly_cron.split()) == 5, crons.nightly_cron


# ------------- 2. features.runner = FlinkRunner: accepted everywhere the settings are checked, then every run refused

def test_a_runner_setting_no_scheduled_run_can_satisfy_is_refused_where_the_settings_are_checked(tmp_path, capsys):
    from dagster_project.cli import main

    home = tmp_path / "home"
    assert main(["simulate", "--home", str(home), "--days", "1", "--users", "5", "--rankings-per-day", "10",
                 "--image-size", "32", "--workers", "1", "--quiet"]) == 0
    capsys.readouterr()
    settings_code = main(["settings", "--home", str(home), "--set", "features.runner=FlinkRunner", "--write"])
    settings_out = capsys.readouterr()
    dry_code = main(["build", "--home", str(home), "--dry-run"]) if settings_code == 0 else None
    dry_out = capsys.readouterr()
    told = settings_out.err + settings_out.out + dry_out.err + dry_out.out
    assert settings_code != 0 or dry_code != 0, (
        "FlinkRunner accepted by `pickapic settings --write` and `pickapic build --dry-run`; every build/scheduled run "
        "then fails in ingest_day: 'needs the Beam option --flink_job_server_jar ...'")
    assert "features.runner" in told, told[-500:]


# --------------------------- 3. Quartz's '?' (deterministic, Dagster and croniter take it as '*') now stops the home

@pytest.mark.parametrize("cron", ["0 2 ? * MON-FRI", "0 2 1 * ?"])
def test_a_question_mark_cron_dagster_runs_deterministically_is_accepted(cron):
    import datetime
    import itertools
    import warnings

    import dagster as dg
    from dagster._utils.schedules import cron_string_iterator, is_valid_cron_string

    star = cron.replace("?", "*")
    start = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC).timestamp()
    assert is_valid_cron_string(cron)
    assert list(itertools.islice(cron_string_iterator(start, cron, "UTC"), 40)) == \
        list(itertools.islice(cron_string_iterator(start, star, "UTC"), 40))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dg.ScheduleDefinition(name="probe", cron_schedule=cron, target=dg.AssetSelection.all())
    load(None, assignments=[f"schedules.nightly_cron={cron}"])      # refused now: SettingsError


# ------------------------ 4. a DirectRunner subclass calling DirectRunner.run_pipeline explicitly starts Prism

def test_a_direct_runner_subclass_calling_the_base_method_explicitly_never_starts_prism(tmp_path, monkeypatch):
    from test_features_fixtures import fake_detector, png, refuse_prism, write_day

    from formats.home import DataHome
    from pipelines.features.config import FeaturesConfig
    from pipelines.features.stage import build_features

    folder = tmp_path / "modules"
    folder.mkdir()
    (folder / "rev23h_explicit_direct.py").write_text(textwrap.dedent("""
        from apache_beam.runners.direct.direct_runner import DirectRunner

        class Runner(DirectRunner):
            '''The team's DirectRunner that counts runs.'''
            def run_pipeline(self, pipeline, options):
                return DirectRunner.run_pipeline(self, pipeline, options)
        """), encoding="utf-8")
    monkeypatch.syspath_prepend(str(folder))
    attempts = refuse_prism(monkeypatch, tmp_path)
    home = DataHome(tmp_path / "home")
    write_day(home, DAY, {"a": png(1)})
    try:
        build_features(home, DAY, FeaturesConfig(runner="rev23h_explicit_direct.Runner"), detector_factory=fake_detector)
    except ValueError as exc:          # refused when the stage starts: acceptable, if before the staging folder
        assert "features.runner" in str(exc) and not (home.root / ".staging" / "features" / f"dt={DAY}").exists()
    finally:
        sys.modules.pop("rev23h_explicit_direct", None)
    assert attempts == [], attempts


# ----------------------- 5. a cron the check accepts on which Dagster's own scheduler raises CroniterBadDateError

@pytest.mark.parametrize("cron", ["0 0 31 4 mon", "0 2 31 6 sat,sun"])
def test_an_accepted_cron_is_one_dagsters_scheduler_can_iterate(cron):
    import datetime
    import itertools

    from dagster._utils.schedules import cron_string_iterator

    try:
        load(None, assignments=[f"schedules.nightly_cron={cron}"])
    except SettingsError as exc:         # refused with the key named: fine
        assert "schedules.nightly_cron" in str(exc)
        return
    start = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC).timestamp()
    assert len(list(itertools.islice(cron_string_iterator(start, cron, "UTC"), 3))) == 3


# ---------------------- 6. DataflowRunner refused for a --temp_location Beam does not need (with --staging_location)

def test_dataflow_with_a_staging_location_is_not_refused_for_a_temp_location_beam_does_not_need():
    from pipelines.features import beamworker  # noqa: F401  # isort: skip  # Beam imported quietly first

    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.options.pipeline_options_validator import PipelineOptionsValidator

    from pipelines.features.runnernames import options_refusal

    args = ["--runner=DataflowRunner", "--project=my-project", "--region=europe-west1",
            "--staging_location=gs://bucket/staging"]
    options = PipelineOptions(args)
    assert PipelineOptionsValidator(options, "DataflowRunner").validate() == []    # Beam: nothing missing
    assert options_refusal("DataflowRunner", PipelineOptions(args).get_all_options()) is None
