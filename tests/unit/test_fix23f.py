"""The fixes of review rev23f's defects (tests/unit/test_hostile_rev23f.py holds the reviewer's tests), and what the
fixes added around them:

- a runner that starts a job elsewhere runs only with the Beam options that make it run without a download at run
  time or a missing-option failure (``runnernames.options_refusal``), checked against what Beam 2.77 itself does
  with those options, offline;
- a dotted runner must be a concrete runner class; a subclass of one of Beam's refused runners is refused; a
  user's subclass of Beam's DirectRunner is built with its ``run_pipeline`` on the stage's FnApiRunner (no Prism);
- the run's first step imports and checks the feature runner when the run executes the feature step (never at
  launch, where the webserver or daemon would run the module's code);
- the settings' cron check is Dagster's rule narrowed to what is deterministic, compared here with Dagster's own.
"""
from __future__ import annotations

import sys
import warnings

import pytest

from formats.settings import SettingsError, load
from pipelines.features.config import FeaturesConfig
from pipelines.features.runnernames import options_refusal, start_refusal

DAY = "2023-03-01"


def _values(args: list[str]) -> dict:
    from pipelines.features import beamworker  # noqa: F401  # isort: skip  # Beam imported quietly first

    from apache_beam.options.pipeline_options import PipelineOptions

    return PipelineOptions(args).get_all_options()


# ------------------------------------------------------- runners that start a job elsewhere: what Beam needs

@pytest.fixture
def jar(tmp_path):
    path = tmp_path / "beam-runners-flink-job-server.jar"
    path.write_bytes(b"PK\x03\x04")
    return str(path)


@pytest.mark.parametrize("runner", ["FlinkRunner", "SparkRunner"])
def test_flink_and_spark_without_a_local_jar_or_endpoint_would_download_and_are_refused(runner, jar):
    """What Beam 2.77 does with the options, offline: without a jar, the job server it starts is Maven Central's
    jar (a download); with a local jar, that file; with --job_endpoint, no job server of its own."""
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.runners.portability import flink_runner, spark_runner

    server = flink_runner.FlinkJarJobServer if runner == "FlinkRunner" else spark_runner.SparkJarJobServer
    option = "--flink_job_server_jar" if runner == "FlinkRunner" else "--spark_job_server_jar"
    assert server(PipelineOptions([f"--runner={runner}"])).path_to_jar().startswith("https://")
    assert server(PipelineOptions([f"--runner={runner}", f"{option}={jar}"])).path_to_jar() == jar
    for args in ([], [f"{option}=https://example.org/job-server.jar"], [f"{option}={jar}.missing"]):
        refusal = options_refusal(runner, _values([f"--runner={runner}", *args]))
        assert refusal and option[2:] in refusal and "download" in refusal, (args, refusal)
    assert options_refusal(runner, _values([f"--runner={runner}", f"{option}={jar}"])) is None   # LOOPBACK locally
    assert options_refusal(runner, _values([f"--runner={runner}", "--job_endpoint=localhost:8099"])) is None


def test_a_remote_flink_master_needs_an_environment_that_pulls_nothing(jar):
    """Beam's default environment away from its local masters is DOCKER with Beam's own SDK image (a pull)."""
    from apache_beam.options.pipeline_options import PipelineOptions, PortableOptions
    from apache_beam.runners.portability.flink_runner import FlinkRunner
    from apache_beam.transforms.environments import DockerEnvironment

    remote = ["--runner=FlinkRunner", f"--flink_job_server_jar={jar}", "--flink_master=flink:8081"]
    environment = FlinkRunner().default_environment(PipelineOptions(remote).view_as(PortableOptions))
    assert isinstance(environment, DockerEnvironment) and environment.container_image.startswith("apache/beam")
    assert "Docker Hub" in options_refusal("FlinkRunner", _values(remote))
    assert "Docker Hub" in options_refusal("FlinkRunner", _values([*remote, "--environment_type=DOCKER"]))
    assert options_refusal("FlinkRunner", _values([*remote, "--environment_type=DOCKER",
                                                   "--environment_config=registry/worker:1"])) is None
    assert options_refusal("FlinkRunner", _values([*remote, "--environment_type=EXTERNAL",
                                                   "--environment_config=localhost:50000"])) is None
    assert "worker pool's address" in options_refusal("FlinkRunner", _values([*remote, "--environment_type=EXTERNAL"]))
    assert "builds a worker image" in options_refusal("FlinkRunner", _values(
        [*remote, "--environment_type=DOCKER", "--environment_config=x", "--prebuild_sdk_container_engine=docker"]))


def test_the_portable_runner_needs_a_job_endpoint_and_an_environment():
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.runners.portability.portable_runner import PortableRunner

    with pytest.raises(NotImplementedError, match="You must specify a --job_endpoint"):
        PortableRunner().create_job_service(PipelineOptions(["--runner=PortableRunner"]))
    assert "--job_endpoint" in options_refusal("PortableRunner", _values(["--runner=PortableRunner"]))
    endpoint = ["--runner=PortableRunner", "--job_endpoint=localhost:8099"]
    assert "Docker Hub" in options_refusal("PortableRunner", _values(endpoint))
    assert options_refusal("portable", _values([*endpoint, "--environment_type=LOOPBACK"])) is None
    assert options_refusal("PortableRunner", _values(  # the README's command
        [*endpoint, "--environment_type=EXTERNAL", "--environment_config=localhost:50000", "--direct_num_workers=2"]
    )) is None


@pytest.mark.parametrize(("args", "missing"), [
    ([], "Missing required option: project"),
    (["--project=my-project", "--temp_location=gs://bucket/tmp"], "Missing required option: region"),
    (["--project=my-project", "--region=r", "--temp_location=/tmp/t"], "neither --temp_location nor --staging_location"),
])
def test_dataflow_needs_what_beams_own_validator_asks_for(args, missing, monkeypatch):
    """(Review rev23h: the hand-written rule became Beam's own validator, run offline.)"""
    monkeypatch.delenv("CLOUDSDK_COMPUTE_REGION", raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")            # no gcloud: Beam finds no default region
    assert missing in options_refusal("DataflowRunner", _values(["--runner=DataflowRunner", *args]))
    assert options_refusal("DataflowRunner", _values(["--project=my-project", "--region=r",
                                                      "--temp_location=gs://bucket/tmp"])) is None


def test_dataflow_without_beams_gcp_packages_is_refused_when_the_stage_starts(monkeypatch):
    from pipelines.features.runner import check_runner

    monkeypatch.setitem(sys.modules, "apache_beam.runners.dataflow.internal.apiclient", None)   # as if not installed
    with pytest.raises(ValueError, match=r"^--runner='DataflowRunner' in the Beam options needs apache-beam\[gcp\]"):
        check_runner(FeaturesConfig(), ["--runner=DataflowRunner", "--project=my-project", "--region=r",
                                        "--temp_location=gs://bucket/tmp"])


def test_the_local_runners_need_nothing():
    for runner in ("DirectRunner", "direct", "FnApiRunner", "BundleBasedDirectRunner", "TestDirectRunner"):
        assert options_refusal(runner, _values([f"--runner={runner}"])) is None, runner


# ------------------------------------------------------------------------------------ dotted runner classes

def test_an_abstract_runner_class_and_a_subclass_of_a_refused_runner_are_refused(module_folder):
    module_folder("rev23f_fix_runners", """
        import abc

        from apache_beam.runners.portability.prism_runner import PrismRunner
        from apache_beam.runners.portability.portable_runner import PortableRunner
        from apache_beam.runners.runner import PipelineRunner

        class Nothing(PipelineRunner):
            '''Implements neither run_pipeline nor run_portable_pipeline.'''

        class Abstract(PipelineRunner, abc.ABC):
            @abc.abstractmethod
            def hook(self): ...

            def run_pipeline(self, pipeline, options): ...

        class MyPrism(PrismRunner):
            pass

        class MyPortable(PortableRunner):
            pass
        """)
    for name in ("apache_beam.runners.runner.PipelineRunner", "rev23f_fix_runners.Nothing",
                 "rev23f_fix_runners.Abstract"):
        assert "is an abstract runner class" in start_refusal(name), name
    assert start_refusal("rev23f_fix_runners.MyPrism").startswith("is a subclass of Beam's PrismRunner, which downloads")
    assert start_refusal("rev23f_fix_runners.MyPortable") is None
    assert "--job_endpoint" in options_refusal("rev23f_fix_runners.MyPortable", _values([]))   # needs what Beam's does


def test_a_direct_runner_subclass_runs_its_own_code_on_the_stages_fnapirunner(tmp_path, monkeypatch, module_folder):
    from test_features_fixtures import fake_detector, png, refuse_prism, write_day

    from formats.home import DataHome
    from pipelines.features.runner import pipeline_options, pipeline_runner, worker_processes
    from pipelines.features.stage import build_features

    module_folder("rev23f_fix_direct", """
        from apache_beam.runners.direct.direct_runner import DirectRunner

        CALLS = []

        class Hooked(DirectRunner):
            def run_pipeline(self, pipeline, options):
                CALLS.append(type(self).__name__)
                return super().run_pipeline(pipeline, options)
        """)
    attempts = refuse_prism(monkeypatch, tmp_path)
    name = "rev23f_fix_direct.Hooked"
    options = pipeline_options(FeaturesConfig(runner=name, workers=2), None, 500)
    runner = pipeline_runner(options)
    assert isinstance(runner, sys.modules["rev23f_fix_direct"].Hooked) and type(runner).__name__ == "Hooked"
    assert worker_processes(options) == 2           # the DirectRunner's defaults: its worker processes
    home = DataHome(tmp_path / "home")
    write_day(home, DAY, {"a": png(1), "b": png(2)})
    report = build_features(home, DAY, FeaturesConfig(runner=name), detector_factory=fake_detector)
    assert report.features_rows == 2 and sys.modules["rev23f_fix_direct"].CALLS == ["Hooked"]
    assert attempts == [] and not [p for p in (tmp_path / "tmp").iterdir() if p.name.startswith("beam-temp")]


# ------------------------------------------------------------------------------ the run's first step

def test_the_first_step_checks_the_runner_only_in_the_run_and_only_with_the_feature_step(tmp_path, module_folder,
                                                                                          jar):
    from dagster_project.runconfig import check_run_config
    from formats.home import DataHome

    module_folder("rev23f_fix_broken", "raise KeyError('PROD_BEAM_ENDPOINT')\n")
    home = DataHome(tmp_path / "home")
    home.root.mkdir()
    (home.root / "pickapic.toml").write_text('[features]\nrunner = "rev23f_fix_broken.Runner"\n', encoding="utf-8")
    check_run_config({}, home)                                   # at launch: nothing a setting names is imported
    check_run_config({}, home, ops={"ingest_day"})          # a run without the feature step
    assert "rev23f_fix_broken" not in sys.modules
    with pytest.raises(SettingsError, match=r"features.runner = 'rev23f_fix_broken.Runner' cannot be imported "
                                            r"\(KeyError: 'PROD_BEAM_ENDPOINT'\)"):
        check_run_config({}, home, ops={"ingest_day", "fingerprint_images"})
    # (review rev23h: a FlinkRunner without its jar in features.beam_args is refused with the settings themselves;
    # a run's own beam_args replace the home's)
    (home.root / "pickapic.toml").write_text(
        f'[features]\nrunner = "FlinkRunner"\nbeam_args = "--flink_job_server_jar={jar}"\n', encoding="utf-8")
    check_run_config({}, home, ops={"fingerprint_images"})
    remote = "--job_endpoint=localhost:8099 --flink_master=flink:8081"      # a run's own options replace the home's
    given = {"ops": {"fingerprint_images": {"config": {"beam_args": remote}}}}
    with pytest.raises(SettingsError, match="features.runner = 'FlinkRunner' needs the Beam option --environment_type"):
        check_run_config(given, home, ops={"fingerprint_images"})
    given = {"ops": {"fingerprint_images": {"config": {"beam_args": "--job_endpoint='x", "runner": "direct"}}}}
    with pytest.raises(SettingsError, match="beam_args = .* cannot be split"):
        check_run_config(given, home, ops={"fingerprint_images"})


# ------------------------------------------------------------------------ cron strings: Dagster's own check

BOTH_ACCEPT = [
    "0 2 * * *", "*/15 1-5 * jan-mar mon-fri", "0 0 1,15 * *", "0 4 * * 7", "0 2 L * *", "0 2 * * mon#2",
    "0 2 * * L5", "0 2 * * 0-7", "0 2 29 2 *", "0 2 5-1 * *", "0 2 * * sat-sun", "0 2 1-31/31 * *",
    "0 2 * * MON-FRI/2", "00 2 * * *", "0 2 3/2 * *", "0 2 * * 1#5", " 0 2 * * *\t",
    "0 2 ? * *", "0 2 ? * MON-FRI", "0 2 1 * ?", "0 2 ? * ?",    # '?' read as '*' (review rev23h)
]
BOTH_REFUSE = [
    "0 2 15W * *", "0 4 1W * 0", "0 2 LW * *", "H 2 * * *", "H(0-29) 2 * * *", "0 2 * * 5L", "0 2 30 2 *",
    "0 2 * * * *", "0 2 * * 8", "0 2 */0 * *", "60 2 * * *", "0 2 * * 1,L5", "0 2 * * -1", "0 2 0 * *",
    "0 2 * 13 *", "0 2 ** * *", "0 2 1- * *", "0 2 L-2 * *", "0 2 +1 * *", "0 2 * * 1#6", "0 2 * * 7L", "0 2 * *",
]
ONLY_DAGSTER_ACCEPTS = [   # refused here: not deterministic, not what it reads like, or not iterable by Dagster
    "R 2 * * *", "0 2 R 2 *", "*/90 * * * *", "0-59/60 * * * *", "0 2 30,31 2 *", "0 2 31 4 *", "@daily",
    "0 2 \u0661 * *", "0 0 31 4 mon", "0 2 31 6 sat,sun", "0 2 15 * mon#1",
]


def test_the_settings_accept_a_cron_string_only_where_dagster_does():
    import dagster as dg
    from dagster._utils.schedules import has_out_of_range_cron_interval, is_valid_cron_string

    for cron in BOTH_ACCEPT:
        load(None, assignments=[f"schedules.nightly_cron={cron}"])
        assert is_valid_cron_string(cron) and not has_out_of_range_cron_interval(cron), cron
        with warnings.catch_warnings():
            warnings.simplefilter("error")        # not even Dagster's warning of a step out of range
            dg.ScheduleDefinition(name="probe", cron_schedule=cron, target=dg.AssetSelection.all())
    for cron in BOTH_REFUSE + ONLY_DAGSTER_ACCEPTS:
        with pytest.raises(SettingsError, match="schedules.nightly_cron"):
            load(None, assignments=[f"schedules.nightly_cron={cron}"])
        if "R" in cron.split():    # Dagster draws the random value on each check: "0 2 R 2 *" is valid unless the
            continue               # draw is a day February lacks (a flaky comparison); ours refuses every draw
        assert is_valid_cron_string(cron) == (cron in ONLY_DAGSTER_ACCEPTS), cron


@pytest.mark.parametrize(("cron", "why"), [
    ("R 2 * * *", "croniter's random 'R' or hashed 'H' value, which is not deterministic"),
    ("0 2 15W * *", "'W' (the nearest weekday), which Dagster's schedules refuse"),
    ("0 2 * * " + "1," * 300 + "9", "day-of-week value '9' is out of range (allowed 0-7 or sun-sat)"),
    ("*/90 * * * *", "step '90' in '*/90' is out of range"),
    ("0 2 31 4,6 *", "never comes"),
    ("0 2 * * mon\u202e", "a character no cron string has"),
])
def test_a_refused_cron_string_says_why_on_one_printable_line(cron, why):
    with pytest.raises(SettingsError) as caught:
        load(None, assignments=[f"schedules.train_cron={cron}"])
    message = str(caught.value)
    assert why in message and message.isprintable() and len(message) < 1000, message
