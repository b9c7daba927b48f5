"""Hostile review rev23c of commit 4338781 (merged as 0d3f1e8), which fixed four defects the rev22 reviews noted:
bounded, escaped quoting of settings keys and values (``formats.settings.quoted``); ``features.runner`` (and a
``--runner`` in the Beam options) refused unless Beam can make a runner of it (``pipelines/features/runnernames.py``,
checked in ``FeaturesConfig.validate``); ``settings --write`` refusing a hard-linked ``pickapic.toml``; a ``file://``
staging folder or blob base checked as its path.

Each test asserts the correct behaviour of a defect confirmed by running it (the real CLI, the real settings loader,
the Dagster definitions' settings reader, Beam 2.77's own ``create_runner``, a real feature stage for the runner
cases), filed as a strict xfail; all eight were fixed the same day (fix23c). The hard-link refusal held up (with and without ``--write``, symlinks, the lock)
and has no test here.
"""
from __future__ import annotations

import sys
import textwrap

import pytest

from formats.settings import SettingsError, load, quoted, settings_path
from pipelines.features.config import FeaturesConfig, StagingRefused


@pytest.fixture
def runner_module(tmp_path, monkeypatch):
    """Write ``<name>.py`` (the given body) into a folder on ``sys.path``; the module is forgotten afterwards."""
    folder = tmp_path / "modules"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    names = []

    def make(name: str, body: str):
        (folder / f"{name}.py").write_text(textwrap.dedent(body), encoding="utf-8")
        names.append(name)
        return folder

    yield make
    for name in names:
        sys.modules.pop(name, None)


def _home(tmp_path, runner: str):
    home = tmp_path / "home"
    home.mkdir()
    settings_path(home).write_text(f'[features]\nrunner = "{runner}"\n', encoding="utf-8")
    return home


# ------------------------------------------------------------ 1. a runner module that fails its import: a crash

@pytest.mark.parametrize("body", [
    "raise KeyError('PROD_BEAM_ENDPOINT')\n",      # a missing environment variable in the reader's environment
    "def f(:\n",                                    # a syntax error (another Python version)
    "import sys\nsys.exit(3)\n",                    # a module that exits
    "raise RuntimeError('no')\n",
], ids=["KeyError", "SyntaxError", "SystemExit", "RuntimeError"])
def test_a_runner_module_that_fails_its_import_is_a_one_line_error(tmp_path, runner_module, capsys, body):
    from dagster_project.cli import main
    from pipelines.features.runner import pipeline_options

    name = f"rev23c_broken_{abs(hash(body)) % 10**8}"
    runner_module(name, body)
    home = _home(tmp_path, f"{name}.Runner")
    caught: BaseException | None = None
    try:
        load(home)
    except BaseException as exc:   # noqa: BLE001 - SystemExit included on purpose
        caught = exc
    assert caught is None or (isinstance(caught, SettingsError) and "features.runner" in str(caught)), repr(caught)
    capsys.readouterr()
    try:
        code = main(["settings", "--home", str(home), "--section", "splits"])
    except BaseException as exc:   # noqa: BLE001
        code = exc
    err = capsys.readouterr().err.strip()
    assert code == 0 or (code == 1 and "features.runner" in err and len(err.splitlines()) == 1), (code, err[-300:])
    try:
        pipeline_options(FeaturesConfig(), [f"--runner={name}.Runner"])
        caught = None
    except BaseException as exc:   # noqa: BLE001
        caught = exc
    assert isinstance(caught, ValueError) and f"{name}.Runner" in str(caught), repr(caught)


def test_the_dagster_definitions_still_load_when_the_runner_module_raises(tmp_path, runner_module, monkeypatch):
    from dagster_project.runconfig import _home_settings

    runner_module("rev23c_keyerror_runner", "raise KeyError('PROD_BEAM_ENDPOINT')\n")
    home = _home(tmp_path, "rev23c_keyerror_runner.Runner")
    monkeypatch.setenv("PICKAPIC_HOME", str(home))
    _settings, where = _home_settings()      # raised KeyError
    assert isinstance(where, str)


# ------------------------------------------------- 2. reading the settings runs the module features.runner names

def test_listing_the_settings_runs_no_code_of_the_runner_module(tmp_path, runner_module, capsys):
    from dagster_project.cli import main

    marker = tmp_path / "imported"
    runner_module("rev23c_sidefx_runner", f"""
        open({str(marker)!r}, "w").close()        # a side effect at import
        print("printed at import")

        class Runner:
            def run_pipeline(self, pipeline, options):
                raise NotImplementedError
        """)
    home = _home(tmp_path, "rev23c_sidefx_runner.Runner")
    assert main(["settings", "--home", str(home), "--section", "features"]) == 0
    out = capsys.readouterr().out
    assert "features.runner = 'rev23c_sidefx_runner.Runner'" in out
    assert "printed at import" not in out and not marker.exists()


# ------------------------------------------------------------------- 3. runner names Beam cannot make: accepted

def test_every_runner_name_the_check_accepts_is_one_beam_can_make():
    from apache_beam.runners.runner import create_runner

    from pipelines.features.runnernames import _standard_options, runner_refusal

    names = list(_standard_options().KNOWN_RUNNER_NAMES) + ["interactive", "direct", "dataflow", "portable"]
    accepted_but_not_made = []
    for name in names:
        if runner_refusal(name) is not None:
            continue       # refusing a runner Beam could make is a policy (Prism: a download), not this defect
        try:
            create_runner(name)
        except Exception as exc:   # noqa: BLE001 - whatever Beam raises, it made no runner
            accepted_but_not_made.append((name, type(exc).__name__))
    assert accepted_but_not_made == []


@pytest.mark.parametrize("runner", ["prism", "PrismRunner"])
def test_a_runner_that_downloads_prism_at_run_time_is_refused_with_the_settings(runner):
    with pytest.raises(SettingsError, match="features.runner"):
        load(None, assignments=[f"features.runner={runner}"])


def test_a_runner_module_missing_a_dependency_is_refused_naming_the_dependency(tmp_path, runner_module):
    runner_module("rev23c_needs_dep_runner", """
        import rev23c_missing_dependency  # noqa: F401

        class Runner:
            def run_pipeline(self, pipeline, options):
                raise NotImplementedError
        """)
    from pipelines.features.runner import pipeline_options

    try:
        load(_home(tmp_path, "rev23c_needs_dep_runner.Runner"))   # accepted, or refused naming the cause
    except SettingsError as exc:
        assert "rev23c_missing_dependency" in str(exc)
    with pytest.raises(ValueError, match="rev23c_missing_dependency"):
        pipeline_options(FeaturesConfig(), ["--runner=rev23c_needs_dep_runner.Runner"])


# ---------------------------------------------------------------- 4. values still echoed whole in error messages

BIG = 100_000


@pytest.mark.parametrize(("key", "value"), [
    ("features.staging", "relative" + "x" * BIG),
    ("features.staging", "x\x00" + "y" * BIG),
    ("features.blob_base", "relative" + "x" * BIG),
    ("features.blob_zone", "a/" + "x" * BIG),
    ("ingest.earliest_created_at", "x" * BIG),
    ("schedules.nightly_cron", "x" * BIG),
    ("evaluation.ground_truth", "../" + "x" * BIG),
], ids=["staging-relative", "staging-nul", "blob_base-relative", "blob_zone", "earliest_created_at",
        "nightly_cron", "ground_truth"])
def test_a_long_value_refused_by_a_config_check_is_quoted_bounded(key, value):
    with pytest.raises(SettingsError) as caught:
        load(None, assignments=[f"{key}={value}"])
    assert len(str(caught.value)) < 1000


# ----------------------------------------------------------------------------------- 5. file:// URL spellings

@pytest.mark.parametrize("suffix", ["?x", "#x", ";x"])
def test_a_file_url_with_a_query_or_fragment_naming_the_home_is_refused(tmp_path, suffix):
    home = tmp_path / "home"
    (home / "raw").mkdir(parents=True)
    with pytest.raises(StagingRefused):
        FeaturesConfig(staging=f"file://{home}{suffix}").validate(home)


# ---------------------------------------------------------------------------------------- 6. cosmetic

def test_quoted_states_the_values_length_and_cuts_no_escape():
    value = "\x1b" * 70
    text = quoted(value)
    assert "(282 characters)" not in text
    assert text == repr(value) or "(70 characters)" in text
