"""The fixes of review rev23c's defects (tests/unit/test_hostile_rev23c.py holds the reviewer's tests), and what
the fixes added around them:

- ``features.runner`` is checked with the settings without importing anything (a static table of Beam's runner
  names, checked here against Beam); a dotted path is imported when the feature stage starts, where whatever
  its import raises is one line naming the setting;
- PrismRunner (a download at run time) and Beam's other runners the stage does not run are refused by name, and
  a dotted path to Beam's PrismRunner when the stage starts;
- every value a config check echoes is quoted bounded; ``quoted`` cuts no escape, in a list either, and states a
  string's length in characters and a list's in items; croniter's traceback-in-a-message is one short line;
- a ``file://`` URL with ``?``, ``#`` or ``;`` is refused, as a blob base too;
- the Dagster definitions' settings reader survives any exception.
"""
from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap

import pytest

from formats.settings import SettingsError, load, quoted
from pipelines.features.config import FeaturesConfig, StagingRefused
from pipelines.features.runnernames import (
    BEAM_RUNNERS,
    REFUSED_RUNNERS,
    RUNNERS,
    _standard_options,
    runner_refusal,
    start_refusal,
)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# ------------------------------------------------------------------- the static runner table is Beam's

def test_the_static_runner_names_are_beams_and_every_accepted_one_is_made():
    from apache_beam.runners.runner import _RUNNER_MAP, create_runner

    assert {path.rsplit(".", 1)[-1]: path for path in _RUNNER_MAP.values()} == BEAM_RUNNERS
    assert set(_standard_options().KNOWN_RUNNER_NAMES) <= set(BEAM_RUNNERS)
    assert set(RUNNERS) | set(REFUSED_RUNNERS) == set(BEAM_RUNNERS) and not set(RUNNERS) & set(REFUSED_RUNNERS)
    for name in RUNNERS:
        for spelling in (name, name.lower(), name[:-len("Runner")].upper()):
            assert runner_refusal(spelling) is None, spelling
            assert type(create_runner(spelling)).__name__ in (name, "SwitchingDirectRunner"), spelling
    for name in REFUSED_RUNNERS:
        assert runner_refusal(name) and runner_refusal(name[:-len("Runner")].lower()), name


def test_reading_the_settings_imports_neither_beam_nor_a_runner_module(tmp_path):
    """In a fresh process (this one has Beam already): ``pickapic settings`` of a home naming a Beam runner and a
    dotted path leaves both unimported (a runner that needs Beam options, given none in ``features.beam_args``, is
    refused without importing Beam either: review rev23h; options there are parsed by Beam)."""
    home = tmp_path / "home"
    home.mkdir()
    script = textwrap.dedent(f"""
        import sys
        from dagster_project.cli import main
        from formats.settings import SettingsError, load
        for runner in ("BundleBasedDirect", "fnapirunner", "rev23c_never_imported.Runner"):
            assert load(None, assignments=["features.runner=" + runner]).config("features").runner == runner
        for runner in ("portable", "FlinkRunner", "dataflow"):
            try:
                load(None, assignments=["features.runner=" + runner])
                raise AssertionError(runner)
            except SettingsError as exc:
                assert "features.beam_args" in str(exc), exc
        assert main(["settings", "--home", {str(home)!r}, "--set", "features.runner=directrunner"]) == 0
        assert "apache_beam" not in sys.modules and "rev23c_never_imported" not in sys.modules
        print("clean")
        """)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": ROOT})
    assert done.returncode == 0 and done.stdout.strip().endswith("clean"), done.stderr[-2000:]


@pytest.mark.parametrize(("runner", "why"), [
    ("prism", "downloads Beam's Prism binary"), ("PrismRunner", "no download at run time"),
    ("interactive", "notebook runner"), ("KafkaStreams", "Kafka Streams job server"),
    ("testdataflowrunner", "give DataflowRunner"), ("PythonRPCDirect", "no module"),
])
def test_beams_runners_the_stage_does_not_run_are_refused_saying_why(runner, why):
    with pytest.raises(SettingsError, match=f"features.runner = '{runner}' is Beam's .*{why}") as caught:
        load(None, assignments=[f"features.runner={runner}"])
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("runner", ["a..b", ".a.b", "a.b.", "a.b-c", "a.b c", "a.1b", "a." + "b" * 300, "a.b\x00"])
def test_a_runner_path_of_no_python_form_is_refused_with_the_settings(runner):
    with pytest.raises(SettingsError, match="is not a Beam runner: give one of DirectRunner") as caught:
        load(None, assignments=[f"features.runner={runner}"])
    assert len(str(caught.value)) < 1000 and "\n" not in str(caught.value)


# ------------------------------------------------------------------ a dotted path, when the stage starts

def test_a_dotted_runner_is_checked_when_the_stage_starts_naming_where_it_was_given(module_folder):
    from pipelines.features.runner import pipeline_options

    module_folder("rev23c_fix_multiline", "raise RuntimeError('first line\\n\\x1bsecond line')\n")
    for runner in ("json.JSONDecoder", "os.path", "rev23c_fix_multiline.Runner"):
        load(None, assignments=[f"features.runner={runner}"])     # a dotted path: its form only, with the settings
    with pytest.raises(ValueError, match=r"^features.runner = 'json.JSONDecoder' is not a runner class"):
        pipeline_options(FeaturesConfig(runner="json.JSONDecoder"), None)
    with pytest.raises(ValueError, match=r"^--runner='os.path' in the Beam options is not a runner class"):
        pipeline_options(FeaturesConfig(), ["--runner=os.path"])
    with pytest.raises(ValueError, match=r"cannot be imported \(RuntimeError: first line second line\)$") as caught:
        pipeline_options(FeaturesConfig(runner="rev23c_fix_multiline.Runner"), None)
    assert "\n" not in str(caught.value)
    with pytest.raises(ValueError, match=r"cannot be imported \(AttributeError: module 'json' has no attribute"):
        pipeline_options(FeaturesConfig(runner="json.NoSuchRunner"), None)


def test_a_dotted_path_to_beams_prism_runner_is_refused_when_the_stage_starts():
    path = BEAM_RUNNERS["PrismRunner"]
    assert runner_refusal(path) is None                       # the settings import nothing
    assert "downloads Beam's Prism binary" in start_refusal(path)
    assert start_refusal("apache_beam.runners.portability.portable_runner.PortableRunner") is None


def test_a_stage_whose_runner_module_fails_to_import_stops_before_its_staging_folder(tmp_path, module_folder):
    from test_features_fixtures import fake_detector, png, write_day

    from formats.home import DataHome
    from pipelines.features.stage import build_features

    module_folder("rev23c_fix_exits", "import sys\nsys.exit(4)\n")
    home = DataHome(tmp_path / "home")
    write_day(home, "2023-03-01", {"a": png(1)})
    with pytest.raises(ValueError, match=r"features.runner = 'rev23c_fix_exits.Runner' cannot be imported "
                                         r"\(SystemExit: 4\)"):
        build_features(home, "2023-03-01", FeaturesConfig(runner="rev23c_fix_exits.Runner"),
                       detector_factory=fake_detector)
    assert not (home.root / ".staging").exists()


# ------------------------------------------------------------------------------------- bounded quoting

@pytest.mark.parametrize("value", ["\x1b" * 70, "\u200b" * 30, "a\nb" * 50, "'\"" * 60, "é" * 100, "x" * 80,
                                   "\U000e0001" * 9])
def test_quoted_cuts_a_string_between_whole_escapes_and_states_its_length(value):
    text = quoted(value)
    if text == repr(value):
        assert len(text) <= 82
        return
    shown, _, size = text.rpartition("... (")
    assert size == f"{len(value)} characters)" and len(shown) <= 82
    assert value.startswith(ast.literal_eval(shown))         # a whole repr of a start of the value


def test_quoted_cuts_a_list_between_whole_escapes_and_counts_its_items():
    value = ["\x1b" * 70, "b"]
    text = quoted(value)
    assert text.endswith("... (2 items)")
    assert text[:-len("... (2 items)")] == "['" + "\\x1b" * 19        # 78 characters: a 20th escape would cut


@pytest.mark.parametrize(("key", "value"), [
    ("schedules.train_cron", "1-" + "9" * 5000 + " * * * *"),       # croniter's message: a whole traceback
    ("schedules.app_export_cron", "x" * 5000 + " * * * *"),          # croniter's message quotes the string
    ("ingest.earliest_created_at", "2023-01-01\n" * 1000),
    ("features.blob_zone", ".."),
])
def test_config_checks_refuse_on_one_short_line(key, value):
    with pytest.raises(SettingsError) as caught:
        load(None, assignments=[f"{key}={value}"])
    assert len(str(caught.value)) < 1000 and "\n" not in str(caught.value), str(caught.value)[:300]


# ------------------------------------------------------------------------------------------ file:// URLs

@pytest.mark.parametrize("suffix", ["?x", "#x", ";x", "/raw?x"])
def test_a_file_url_with_a_query_fragment_or_parameters_is_refused_as_blob_base_and_with_the_settings(tmp_path, suffix):
    home = tmp_path / "home"
    (home / "raw").mkdir(parents=True)
    with pytest.raises(StagingRefused, match=r"query, fragment or parameters \('\?', '#', ';'\); give the local"):
        FeaturesConfig(blob_base=f"file://{tmp_path}{suffix}").validate(home)
    for key in ("blob_base", "staging"):       # with the settings too, no home needed
        with pytest.raises(SettingsError, match=f"features.{key} = .* is a file URL .* give the local folder"):
            load(None, assignments=[f"features.{key}=file://{tmp_path}{suffix}"])


# -------------------------------------------------------------------------------- the definitions' reader

def test_the_definitions_settings_reader_survives_any_error(monkeypatch):
    from dagster_project import runconfig

    def broken(root):
        raise RuntimeError("x" * 10_000)

    monkeypatch.setattr(runconfig, "load", broken)
    settings, where = runconfig._home_settings()
    assert settings.explicit == {} and where.startswith("unreadable settings (RuntimeError: 'xxx") and len(where) < 300
