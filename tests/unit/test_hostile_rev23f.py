"""Hostile review rev23f of commit 9fcef58 (fix23c, the answer to review rev23c): ``features.runner`` checked with the
settings against a fixed list of Beam's runner names (``pipelines/features/runnernames.py``: DirectRunner,
SwitchingDirectRunner, TestDirectRunner, FnApiRunner, BundleBasedDirectRunner, PortableRunner, DataflowRunner,
FlinkRunner, SparkRunner accepted; Prism and four others refused) and a dotted path for its form only, imported
when the feature stage starts (``runner.pipeline_options``); ``runconfig._home_settings`` surviving any error;
``quoted()`` cutting between whole escapes; config checks quoting bounded; croniter's errors cut to their last line;
``file://`` URLs with ``?``, ``#`` or ``;`` refused.

Each test asserts the correct behaviour of a defect confirmed by running the real thing (the real feature stage with
Beam 2.77 and no network, the real ``pickapic simulate``/``build``, the real settings loader, Dagster's own
``ScheduleDefinition``), filed as a strict xfail; all eight were fixed the same day (fix23f).

What held up: the name list resolves exactly as Beam's ``create_runner`` does (both use ``str.lower`` and the
optional ``Runner`` ending, so the Kelvin sign, dotless/dotted i, ligatures, whitespace and case agree); no path
imports a runner module with the settings (``pickapic settings``, ``build --dry-run``, the definitions, sensors);
the dotted import runs only in the run's own process (``in_process_executor``), never in the code server or
daemon; a broken ``pickapic.toml`` does not let the UI run on defaults (the definitions stop loading, and every
run's step loads the file itself); ``quoted()`` on TOML datetimes, NaN/inf, 4000-digit integers, tables of huge
strings and 100,000-deep arrays stayed bounded and one line; every string setting's check was bounded, one line
and printable for long values with escapes; ``file://`` URLs as described.
"""
from __future__ import annotations

import sys
import textwrap

import pytest

from formats.settings import SettingsError, load

DAY = "2023-03-01"


def _feature_home(tmp_path):
    from test_features_fixtures import png, write_day

    from formats.home import DataHome

    home = DataHome(tmp_path / "home")
    write_day(home, DAY, {"a": png(1)})
    return home


def _staging(home):
    return home.root / ".staging" / "features" / f"dt={DAY}"


# ----------------------------------- 1. FlinkRunner / SparkRunner download a job-server jar when the stage runs

@pytest.mark.parametrize(("runner", "beam_args"), [
    ("FlinkRunner", []),
    ("SparkRunner", []),
    ("FlinkRunner", ["--flink_master=flink-jobmanager:8081"]),      # README's cluster command without the jar
], ids=["flink", "spark", "flink-remote-master"])
def test_a_flink_or_spark_runner_downloads_no_job_server_jar_at_run_time(tmp_path, monkeypatch, runner, beam_args):
    import tempfile

    from apache_beam.utils import subprocess_server
    from test_features_fixtures import fake_detector

    from pipelines.features.config import FeaturesConfig
    from pipelines.features.stage import build_features

    downloads: list[str] = []

    def refuse(cls, url, cached_jar, user_agent=None):
        downloads.append(url)
        raise RuntimeError(f"download refused by the test: {url}")

    monkeypatch.setattr(subprocess_server.JavaJarServer, "_download_jar_to_cache", classmethod(refuse))
    monkeypatch.setattr(subprocess_server.JavaJarServer, "JAR_CACHE", str(tmp_path / "jars"))   # nothing cached
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    home = _feature_home(tmp_path)
    caught: BaseException | None = None
    try:
        build_features(home, DAY, FeaturesConfig(runner=runner), beam_args=list(beam_args),
                       detector_factory=fake_detector)
    except Exception as exc:   # noqa: BLE001 - whatever it raises is checked below
        caught = exc
    assert downloads == []
    assert isinstance(caught, ValueError) and "features.runner" in str(caught), repr(caught)[:300]
    assert not _staging(home).exists()


# ------------------------------- 2. a cron string the settings accept stops the Dagster definitions loading

@pytest.mark.parametrize("cron", ["0 2 15W * *", "0 4 1W * 0"])
def test_a_cron_string_the_settings_accept_is_one_dagster_accepts(cron):
    import dagster as dg

    try:
        load(None, assignments=[f"schedules.nightly_cron={cron}"])
    except SettingsError as exc:
        assert "schedules.nightly_cron" in str(exc)
        return
    dg.ScheduleDefinition(name="probe", cron_schedule=cron, job_name="probe_job")   # raised


# ------------------------------- 3. a dotted path to the user's DirectRunner subclass starts Prism at run time

def test_a_dotted_runner_subclassing_the_direct_runner_never_starts_prism(tmp_path, monkeypatch):
    from test_features_fixtures import fake_detector, refuse_prism

    from pipelines.features.config import FeaturesConfig
    from pipelines.features.stage import build_features

    folder = tmp_path / "modules"
    folder.mkdir()
    (folder / "rev23f_my_direct.py").write_text(textwrap.dedent("""
        from apache_beam.runners.direct.direct_runner import DirectRunner

        class Runner(DirectRunner):
            '''The team's DirectRunner with a hook.'''
        """), encoding="utf-8")
    monkeypatch.syspath_prepend(str(folder))
    attempts = refuse_prism(monkeypatch, tmp_path)
    home = _feature_home(tmp_path)
    try:
        build_features(home, DAY, FeaturesConfig(runner="rev23f_my_direct.Runner"), detector_factory=fake_detector)
    except ValueError as exc:          # refused when the stage starts: acceptable, if before the staging folder
        assert "features.runner" in str(exc) and not _staging(home).exists()
    finally:
        sys.modules.pop("rev23f_my_direct", None)
    assert attempts == []
    assert not any(path.name.startswith("beam-temp") for path in (tmp_path / "tmp").iterdir())


# ------------------- 4. a runner module that fails to import no longer fails the run's first step (regression)

def test_a_build_whose_runner_module_fails_to_import_writes_nothing(tmp_path, monkeypatch, capsys):
    from dagster_project.cli import main

    folder = tmp_path / "modules"
    folder.mkdir()
    (folder / "rev23f_broken_runner.py").write_text("raise KeyError('PROD_BEAM_ENDPOINT')\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(folder))
    home = tmp_path / "home"
    assert main(["simulate", "--home", str(home), "--days", "1", "--users", "5", "--rankings-per-day", "10",
                 "--image-size", "32", "--workers", "1", "--quiet"]) == 0
    (home / "pickapic.toml").write_text('[features]\nrunner = "rev23f_broken_runner.Runner"\n', encoding="utf-8")
    capsys.readouterr()
    try:
        code = main(["build", "--home", str(home)])
    finally:
        sys.modules.pop("rev23f_broken_runner", None)
    err = capsys.readouterr().err
    assert code != 0 and "features.runner" in err, err[-500:]
    written = sorted(str(p.relative_to(home)) for p in (home / "warehouse").rglob("*.parquet")) \
        if (home / "warehouse").exists() else []
    assert written == [], written[:5]


# ----------------------------------- 5. croniter's random 'R': a check and a schedule that differ on every read

@pytest.mark.parametrize("cron", ["R 2 * * *", "0 2 R 2 *"])
def test_a_random_cron_field_is_refused(cron):
    outcomes = set()
    for _ in range(60):
        try:
            load(None, assignments=[f"schedules.nightly_cron={cron}"])
            outcomes.add("accepted")
        except SettingsError as exc:
            outcomes.add("refused" if "schedules.nightly_cron" in str(exc) else str(exc))
    assert outcomes == {"refused"}


# ---------------------------------------- 6. croniter's message echoes the value raw: control characters

@pytest.mark.parametrize("text", ["\x1b[2J\x1b[31mmon", "mon-fri\x00", "mon\u202eirf"], ids=["esc", "nul", "rlo"])
def test_a_cron_error_shows_no_control_character(text):
    with pytest.raises(SettingsError) as caught:
        load(None, assignments=[f"schedules.nightly_cron=0 2 * * {text}"])
    message = str(caught.value)
    assert message.isprintable(), repr(message)


# --------------------------------------- 7. runners accepted that cannot run: found after the staging folder

@pytest.mark.parametrize("runner", ["PortableRunner", "DataflowRunner", "apache_beam.runners.runner.PipelineRunner"])
def test_a_runner_that_cannot_run_is_refused_before_the_staging_folder(tmp_path, monkeypatch, runner):
    import tempfile

    from test_features_fixtures import fake_detector

    from pipelines.features.config import FeaturesConfig
    from pipelines.features.stage import build_features

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    home = _feature_home(tmp_path)
    with pytest.raises(Exception) as caught:   # noqa: PT011 - what it raises is checked below
        build_features(home, DAY, FeaturesConfig(runner=runner), detector_factory=fake_detector)
    message = str(caught.value)
    assert isinstance(caught.value, ValueError) and "features.runner" in message, repr(caught.value)[:300]
    assert "\n" not in message
    assert not _staging(home).exists()


# ----------------------------------------------------------------------------------------------- 8. cosmetic

def test_a_long_cron_error_keeps_the_reason():
    with pytest.raises(SettingsError) as caught:
        load(None, assignments=["schedules.nightly_cron=0 2 " + "1," * 80 + "32 * *"])
    message = str(caught.value)
    assert len(message) < 1000 and "\n" not in message
    assert "not acceptable" in message or "out of range" in message, message
