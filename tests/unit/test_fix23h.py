"""The fixes of review rev23h's defects (tests/unit/test_hostile_rev23h.py holds the reviewer's tests), and what the
fixes added around them:

- ``features.beam_args``: the Beam options of every run of the home (a string split as a shell splits words, as the
  Dagster asset's ``beam_args`` run config always was; a run's own ``beam_args`` replace it), checked with the
  settings together with ``features.runner``; a jar must be an absolute path to a zip archive; Beam's environment
  URNs are taken; credentials in it are never echoed, never passed as run config;
- DataflowRunner checked by Beam's own options validator, offline;
- a user's runner class runs with ``--allow_unsafe_triggers``, so Beam's DirectRunner never tries Prism, whatever
  path the class takes into it;
- cron strings: ``?`` read as ``*`` where croniter reads it so, and a cron accepted only where Dagster's scheduler
  can iterate it.
"""
from __future__ import annotations

import datetime
import itertools
import sys
import textwrap

import pytest

from formats.settings import SettingsError, load, settings_path

DAY = "2023-03-01"


@pytest.fixture
def jar(tmp_path):
    path = tmp_path / "beam-runners-flink-job-server.jar"
    path.write_bytes(b"PK\x03\x04" + b"\x00" * 26)
    return str(path)


def _features(*assignments: str):
    return load(None, assignments=list(assignments)).config("features")


# ------------------------------------------------------------------- features.beam_args: every run's Beam options

def test_the_home_beam_args_are_the_options_of_every_run_and_a_runs_own_replace_them(tmp_path):
    from dagster_project.runconfig import config_class, stage_config
    from formats.home import DataHome
    from pipelines.features.runner import pipeline_options

    home = DataHome(tmp_path / "home")
    home.root.mkdir()
    settings_path(home.root).write_text(
        '[features]\nbeam_args = "--direct_running_mode=in_memory --experiments=\'a b\'"\n', encoding="utf-8")
    config = load(home.root).config("features")
    values = pipeline_options(config, None, 500).get_all_options()
    assert (values["direct_running_mode"], values["experiments"]) == ("in_memory", ["a b"])   # quotes group words
    # given to the stage after them, a later option wins (Beam reads a repeated option's last value)
    later = pipeline_options(config, ["--direct_running_mode=multi_threading"], 500).get_all_options()
    assert later["direct_running_mode"] == "multi_threading"
    run_config = config_class("features", "Probe")
    assert stage_config("features", run_config(), home).beam_args == config.beam_args          # a schedule's run
    replaced = stage_config("features", run_config(beam_args="--direct_num_workers=3"), home)
    assert replaced.beam_args == "--direct_num_workers=3"                                      # a run's own
    assert pipeline_options(replaced, None, 500).get_all_options()["direct_running_mode"] == "multi_processing"


def test_a_runner_that_needs_options_is_accepted_with_them_in_features_beam_args(jar, tmp_path):
    flink = f"--flink_job_server_jar={jar}"
    assert _features("features.runner=FlinkRunner", f"features.beam_args={flink}").beam_args == flink
    remote = f"{flink} --flink_master=flink:8081"
    for environment in ("--environment_type=EXTERNAL --environment_config=localhost:50000",
                        "--environment_type=beam:env:external:v1 --environment_config=localhost:50000",
                        "--environment_type=beam:env:embedded_python_loopback:v1",
                        "--environment_type=beam:env:docker:v1 --environment_config=registry/worker:1"):
        _features("features.runner=FlinkRunner", f"features.beam_args={remote} {environment}")
    with pytest.raises(SettingsError, match=r"--environment_config \(the worker pool's address\) with "
                                            r"--environment_type='beam:env:external:v1'"):
        _features("features.runner=FlinkRunner", f"features.beam_args={remote} --environment_type=beam:env:external:v1")
    with pytest.raises(SettingsError, match="needs the Beam option --environment_type"):
        _features("features.runner=FlinkRunner", f"features.beam_args={remote} --environment_type=beam:env:default:v1")
    # the runner given by --runner in the options is checked the same way
    with pytest.raises(SettingsError, match=r"--runner='PortableRunner' in features.beam_args needs the Beam option "
                                            r"--job_endpoint.*give the option in features.beam_args"):
        _features("features.beam_args=--runner=PortableRunner")


@pytest.mark.parametrize(("value", "why"), [
    ("", "needs the Beam option --flink_job_server_jar naming a job server jar on this machine"),
    ("--flink_job_server_jar=beam-flink.jar", "a relative path: give the jar's absolute path"),
    ("--flink_job_server_jar={tmp}/missing.jar", "is no file on this machine"),
    ("--flink_job_server_jar={tmp}/not-a-jar.jar", "is not a jar (no zip archive)"),
    ("--flink_job_server_jar={tmp}", "is no file on this machine"),
    ("--flink_job_server_jar='x", "cannot be split"),
    ("--flink_job_servr_jar=/x.jar", "holds options Beam does not know: --flink_job_servr_jar"),
    ("--parallelism=many", "holds a value Beam refuses (argument --parallelism: invalid int value: 'many')"),
])
def test_a_flink_runner_the_settings_cannot_run_is_refused_in_one_line(tmp_path, value, why, capsys):
    (tmp_path / "not-a-jar.jar").write_text("<html>Maven Central</html>", encoding="utf-8")
    with pytest.raises(SettingsError) as caught:
        _features("features.runner=FlinkRunner", f"features.beam_args={value.format(tmp=tmp_path)}")
    message = str(caught.value)
    assert why in message and "\n" not in message and len(message) < 1200, message
    assert capsys.readouterr().err == ""          # argparse's usage and message are not printed


def test_reading_default_settings_imports_no_beam_for_the_options_check():
    import subprocess

    probe = ("import sys; from formats.settings import load; load(None).describe(); "
             "load(None, assignments=['features.runner=fnapi']).config('features'); "
             "print('apache_beam' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False", done.stderr[-2000:]


# -------------------------------------------------------------------------- credentials in the Beam options

SECRET = "--flink_job_server_jar=https://builder:hunter2@repo.example/flink.jar --s3_secret_access_key=AKIAhunter3"


def test_credentials_in_features_beam_args_are_never_shown(tmp_path):
    from dagster_project.runconfig import run_config_for
    from formats.text import redact_credentials

    assert redact_credentials(SECRET) == ("--flink_job_server_jar=https://builder:***@repo.example/flink.jar "
                                          "--s3_secret_access_key=***")
    with pytest.raises(SettingsError) as caught:     # refused (the jar is a URL: a download), password hidden
        _features("features.runner=FlinkRunner", f"features.beam_args={SECRET}")
    assert "hunter" not in str(caught.value) and "builder:***@" in str(caught.value)
    with pytest.raises(SettingsError) as caught:
        _features(f"features.beam_args={SECRET} --unknown_option=1")
    assert "hunter" not in str(caught.value)
    settings_path(tmp_path).write_text(f'[features]\nbeam_args = "{SECRET.split(" ")[1]}"\n', encoding="utf-8")
    rows = {row["key"]: row for row in load(tmp_path).describe()}
    assert rows["features.beam_args"]["value"] == "--s3_secret_access_key=***"
    with pytest.raises(SettingsError, match="holds a credential .* set it in HOME/pickapic.toml") as caught:
        run_config_for("features", {"beam_args": SECRET})         # `pickapic build --set`: stored with the run
    assert "hunter" not in str(caught.value)


def test_the_run_config_field_shows_the_homes_beam_args_without_credentials(tmp_path, monkeypatch):
    from dagster_project.runconfig import config_class

    settings_path(tmp_path).write_text('[features]\nbeam_args = "--s3_secret_access_key=AKIAhunter3"\n',
                                       encoding="utf-8")
    monkeypatch.setenv("PICKAPIC_HOME", str(tmp_path))
    schema = config_class("features", "Probe").model_json_schema()
    description = schema["properties"]["beam_args"]["description"]
    assert "--s3_secret_access_key=***" in description and "hunter" not in description


def test_stage_errors_bound_and_hide_the_beam_options():
    from pipelines.features.config import FeaturesConfig
    from pipelines.features.runner import pipeline_options

    with pytest.raises(ValueError) as caught:
        pipeline_options(FeaturesConfig(), [SECRET, "--unknown=" + "x" * 5000])
    assert "hunter" not in str(caught.value) and len(str(caught.value)) < 1000


# ---------------------------------------------------------------------------------- DataflowRunner, offline

def test_dataflow_is_checked_by_beams_own_validator_without_network(monkeypatch):
    from pipelines.features import beamworker  # noqa: F401  # isort: skip

    from apache_beam.options.pipeline_options import GoogleCloudOptions, TestOptions

    from pipelines.features.runnernames import option_values, options_refusal

    calls = []
    monkeypatch.setattr(GoogleCloudOptions, "_create_default_gcs_bucket", lambda self: calls.append("bucket"))
    soft_delete = GoogleCloudOptions._warn_if_soft_delete_policy_enabled

    def policy_check(self, arg_name):            # fetches the bucket's policy (a network call) unless dry_run
        if not self.view_as(TestOptions).dry_run:
            calls.append("policy")
        return soft_delete(self, arg_name)

    monkeypatch.setattr(GoogleCloudOptions, "_warn_if_soft_delete_policy_enabled", policy_check)
    monkeypatch.delenv("CLOUDSDK_COMPUTE_REGION", raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")                      # no gcloud: no default region

    def refusal(*args):
        return options_refusal("DataflowRunner", option_values(["--runner=DataflowRunner", *args]))

    assert refusal("--project=my-project", "--region=europe-west1", "--staging_location=gs://bucket/staging") is None
    assert refusal("--project=my-project", "--region=europe-west1", "--temp_location=gs://bucket/tmp") is None
    assert "Invalid Project ID (p)" in refusal("--project=p", "--region=r", "--temp_location=gs://bucket/tmp")
    assert "Missing required option: region" in refusal("--project=my-project", "--temp_location=gs://bucket/t")
    monkeypatch.setenv("CLOUDSDK_COMPUTE_REGION", "europe-west1")     # Beam's default region is never looked up
    assert "Missing required option: region" in refusal("--project=my-project", "--temp_location=gs://bucket/t")
    both = refusal("--project=my-project", "--region=r", "--temp_location=/tmp/t")
    assert "neither --temp_location nor --staging_location is a valid gs:// location" in both
    assert calls == []                          # no default bucket made, no bucket's policy fetched


# ----------------------------------------------------------------- a user's DirectRunner never reaches Prism

@pytest.mark.parametrize("body", [
    "return DirectRunner.run_pipeline(self, pipeline, options)",     # the pre-super() idiom
    "return DirectRunner().run_pipeline(pipeline, options)",          # a fresh instance of Beam's class
])
def test_a_user_runner_reaching_beams_direct_runner_any_way_runs_without_prism(tmp_path, monkeypatch, body):
    from test_features_fixtures import fake_detector, png, refuse_prism, write_day

    from formats.home import DataHome
    from pipelines.features.config import FeaturesConfig
    from pipelines.features.stage import build_features

    folder = tmp_path / "modules"
    folder.mkdir()
    (folder / "fix23h_direct.py").write_text(textwrap.dedent(f"""
        from apache_beam.runners.direct.direct_runner import DirectRunner

        class Runner(DirectRunner):
            def run_pipeline(self, pipeline, options):
                {body}
        """), encoding="utf-8")
    monkeypatch.syspath_prepend(str(folder))
    attempts = refuse_prism(monkeypatch, tmp_path)
    home = DataHome(tmp_path / "home")
    write_day(home, DAY, {"a": png(1), "b": png(2)})
    try:
        report = build_features(home, DAY, FeaturesConfig(runner="fix23h_direct.Runner", workers=0),
                                detector_factory=fake_detector)
    finally:
        sys.modules.pop("fix23h_direct", None)
    assert attempts == [] and report.features_rows == 2


# ---------------------------------------------------------------------------------------------- cron strings

@pytest.mark.parametrize(("cron", "why"), [
    ("0 2 ?,1 * *", "day-of-month field '?,1' holds '?'"),
    ("? 2 * * *", "minute field '?' holds '?'"),
    ("0 2 * ? *", "month field '?' holds '?'"),
    ("0 0 31 4 mon", "day '31' of month '4' never comes, and Dagster's scheduler"),
    ("0 0 1 2 L5,1#5", ""),
    ("0 2 15 * mon#1", "croniter finds no time it fires"),
])
def test_a_cron_dagster_cannot_take_or_iterate_is_refused_saying_why(cron, why):
    with pytest.raises(SettingsError) as caught:
        load(None, assignments=[f"schedules.nightly_cron={cron}"])
    assert why in str(caught.value) and "\n" not in str(caught.value), str(caught.value)


def test_every_cron_the_settings_accept_is_one_dagsters_scheduler_iterates():
    """Dagster's own iterator (its scheduler daemon's) on a grid of day-of-month / month / day-of-week fields: every
    cron the settings accept yields fire times, and every one it fails on is refused."""
    from dagster._utils.schedules import cron_string_iterator, is_valid_cron_string

    from dagster_project.home_settings import cron_problem

    start = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC).timestamp()
    doms = ["*", "?", "15", "29", "30", "31", "L", "30,31", "5-1"]
    months = ["*", "2", "4", "2,4", "11", "12-2"]
    dows = ["*", "?", "mon", "sat,sun", "1#5", "L5", "mon#1", "0-7"]
    for dom, month, dow in itertools.product(doms, months, dows):
        cron = f"0 2 {dom} {month} {dow}"
        try:
            iterates = is_valid_cron_string(cron) and len(list(itertools.islice(
                cron_string_iterator(start, cron, "UTC"), 3))) == 3
        except Exception:   # noqa: BLE001 - CroniterBadDateError and what else Dagster's iterator raises
            iterates = False
        assert (cron_problem(cron) is None) == iterates, (cron, cron_problem(cron))
