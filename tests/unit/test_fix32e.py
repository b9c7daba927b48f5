"""fix32e: the fixes of review rev32e (``tests/unit/test_hostile_rev32e.py``) beyond the review's own tests.

- the nightly, the raw-day sensor and the rebuild sensor skip, saying why, while a `pickapic build` holds the home's
  build lock (``automation.build_skip_reason``), and request again once it is free; a lock file the daemon may not
  read stops nothing for good (``build_holds_lock``), while it still counts as a running build for its runs;
- the ingest refuses a day that has not begun (UTC) before it reads or writes (``check_day_begun``), and ``python
  -m pipelines.ingest`` without ``--day`` skips such a folder with a warning, ingesting the other days;
- ``holds_credential`` asks texts only (a NaN, alone or in a list, is no credential);
- ``serve`` runs its processes in the project's folder, ``-d`` given; ``pickapic ui`` beside a serve gives its
  webserver the automation default the serve recorded (``HOME/.locks/daemon.automation``);
- the home's ``dagster.yaml`` caps the runs the daemon starts at once (``max_concurrent_runs``), and the one an
  earlier version wrote is brought up to date; ``serve --host`` beyond loopback is warned about.
"""
from __future__ import annotations

import datetime as dt
import errno
import os
import sys
from argparse import Namespace

import dagster as dg
import pytest

from dagster_project import automation, cli, serve
from dagster_project.build import build_lock, use_home
from formats.home import DataHome
from formats.locks import hold_lock
from tests.unit.test_automation import DAYS, _land_day, _plan, _pretend_built, _sensor_context, home, instance  # noqa: F401 - fixtures

# --- the automation while a build holds the lock ------------------------------------------------------------------


def test_skip_reason_follows_the_lock_and_an_unreadable_lock_stops_nothing(home, monkeypatch) -> None:
    assert automation.build_skip_reason(home) is None                  # no lock file: no build
    with build_lock(home):
        reason = automation.build_skip_reason(home)
        assert reason and "pickapic build" in reason and str(home.root) in reason
    assert automation.build_skip_reason(home) is None                  # released
    real_open = os.open

    def refused(path, *args, **kwargs):
        if os.fspath(path) == os.fspath(home.lock_file):
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", refused)
    # unknown: a build's runs still count as running (rev21g), but the automation is not stopped for good by it
    assert automation.build_running(home) is True
    assert automation.build_holds_lock(home) is False
    assert automation.build_skip_reason(home) is None


def test_the_rebuild_sensor_skips_under_the_lock_and_requests_after_it(home, instance) -> None:
    _pretend_built(home, instance, _plan(home, instance))
    (home.root / "pickapic.toml").write_text("[publish]\nmax_samples_per_shard = 50\n")
    with build_lock(home):
        held = automation.rebuild_sensor.evaluate_tick(_sensor_context(home, instance))
    assert not held.run_requests and "build lock" in (held.skip_message or ""), held.skip_message
    after = automation.rebuild_sensor.evaluate_tick(_sensor_context(home, instance))
    assert len(after.run_requests) == 1 and after.run_requests[0].run_key.startswith("rebuild-")


def test_the_raw_sensor_under_the_lock_adds_nothing_and_keeps_its_raw_zone_note(home, instance) -> None:
    (home.raw_logs / "notes.txt").write_text("not a day\n")           # a raw-zone problem the sensor names
    with build_lock(home):
        held = automation.raw_partition_sensor.evaluate_tick(_sensor_context(home, instance))
    assert not held.run_requests and not held.dynamic_partitions_requests
    assert "build lock" in held.skip_message and "notes.txt" in held.skip_message, held.skip_message
    after = automation.raw_partition_sensor.evaluate_tick(_sensor_context(home, instance))
    assert [r.partition_key for r in after.run_requests] == list(DAYS)


# --- a day that has not begun -------------------------------------------------------------------------------------


def test_check_day_begun_takes_today_and_refuses_tomorrow() -> None:
    from pipelines.ingest.day import DayNotBegun, check_day_begun

    today = dt.datetime.now(dt.timezone.utc).date()
    check_day_begun(today.isoformat())
    check_day_begun("2023-02-13")
    with pytest.raises(DayNotBegun) as refused:
        check_day_begun((today + dt.timedelta(days=1)).isoformat())
    assert isinstance(refused.value, ValueError) and "has not begun" in str(refused.value)
    check_day_begun("2023-02-14", today="2023-02-14")
    with pytest.raises(DayNotBegun):
        check_day_begun("2023-02-15", today="2023-02-14")


def test_ingest_refuses_a_later_day_before_writing_and_the_cli_skips_it(fast_tmp, capsys) -> None:
    from pipelines.ingest.__main__ import main as ingest_main
    from pipelines.ingest.day import DayNotBegun, ingest_day

    home = DataHome(fast_tmp / "home")
    _land_day(home, DAYS[0])
    _land_day(home, "9999-12-31")
    with pytest.raises(DayNotBegun, match="9999-12-31"):
        ingest_day(home, "9999-12-31")
    assert not home.warehouse.exists() or not list(home.warehouse.rglob("dt=9999-12-31*"))
    assert ingest_main(["--home", str(home.root)]) == 0
    assert "dt=9999-12-31" in capsys.readouterr().err
    assert home.partition_file("rankings", DAYS[0]).is_file()
    assert not list(home.warehouse.rglob("dt=9999-12-31*"))


# --- a NaN is no credential ---------------------------------------------------------------------------------------


def test_holds_credential_asks_texts_only() -> None:
    from formats.settings import holds_credential

    nan = float("nan")
    for value in (nan, [nan], (nan, "x"), 1.5, 0, None, True, "plain", ["a", "b"], float("inf")):
        assert not holds_credential(value), value
    for value in ("postgresql://user:secret@db/app", ["x", "s3://KEY:SECRET@bucket/p"], ("postgresql://u:p@h/d",)):
        assert holds_credential(value), value


# --- serve and ui -------------------------------------------------------------------------------------------------


def test_serve_commands_run_in_the_project_folder() -> None:
    root = serve.project_root()
    assert os.path.isfile(os.path.join(root, "dagster_project", "definitions.py"))
    for command in serve.commands("127.0.0.1", 3999).values():
        assert command[command.index("-d") + 1] == root


def test_serve_records_its_automation_default(fast_tmp, monkeypatch) -> None:
    home = DataHome(fast_tmp / "home")
    home.root.mkdir()
    seen = []
    monkeypatch.setattr(serve, "_serve", lambda *args: seen.append(serve.daemon_automation(home)) or 0)
    old = os.umask(0o022)
    try:
        assert serve.serve(home, automation=False) == 0
        assert serve.serve(home, automation=True) == 0
    finally:
        os.umask(old)
    assert seen == ["off", "on"]
    assert serve.daemon_automation_file(home).stat().st_mode & 0o044 == 0o044     # umask honoured
    for text in (b"", b"maybe\n", b"x" * 64):
        serve.daemon_automation_file(home).write_bytes(text)
        assert serve.daemon_automation(home) is None


@pytest.mark.parametrize("record", [b"off\n", b"on\n", None])
def test_ui_beside_a_serve_gives_its_webserver_the_serve_automation(fast_tmp, monkeypatch, env_kept, capsys,
                                                                     record) -> None:
    home = DataHome(fast_tmp / "home")
    _land_day(home, DAYS[0])
    home.locks.mkdir(parents=True)
    if record is not None:
        serve.daemon_automation_file(home).write_bytes(record)
    monkeypatch.chdir(fast_tmp)                                         # restored after the test
    monkeypatch.setenv("PICKAPIC_AUTOMATION", "shell")
    caught = {}

    def execv(path, argv):
        caught.update(cwd=os.getcwd(), automation=os.environ.get("PICKAPIC_AUTOMATION"), argv=argv)
        raise SystemExit(0)

    monkeypatch.setattr(os, "execv", execv)
    with hold_lock(serve.daemon_lock_file(home), "a serve", lambda holder: None):
        with pytest.raises(SystemExit):
            cli._cmd_ui(Namespace(home=str(home.root), port=3998, with_daemon=False))
    assert caught["cwd"] == serve.project_root()
    assert caught["argv"] == serve.commands("127.0.0.1", 3998)["webserver"] and caught["argv"][0] == sys.executable
    if record is None:
        assert caught["automation"] == "shell" and "did not record" in capsys.readouterr().out
    else:
        assert caught["automation"] == record.decode().strip()


@pytest.mark.parametrize("host,warned", [("127.0.0.1", False), ("::1", False), ("[::1]", False), ("localhost", False),
                                         ("127.0.0.2", False), ("0.0.0.0", True), ("::", True), ("10.1.2.3", True),
                                         ("build-box.example", True)])
def test_serve_warns_of_a_host_beyond_loopback(host, warned) -> None:
    note = cli.exposed_host_warning(host)
    assert bool(note) == warned
    if warned:
        assert host in note and "UI token" in note


def test_cmd_serve_prints_the_warning(fast_tmp, monkeypatch, capsys) -> None:
    home = DataHome(fast_tmp / "home")
    home.root.mkdir()
    monkeypatch.setattr(serve, "serve", lambda *args, **kwargs: 0)
    assert cli._cmd_serve(Namespace(home=str(home.root), host="0.0.0.0", port=3997, no_automation=False)) == 0
    assert "UI token" in capsys.readouterr().err


# --- the home's dagster.yaml --------------------------------------------------------------------------------------


def test_the_home_instance_starts_at_most_max_concurrent_runs(fast_tmp, env_kept) -> None:
    from dagster_project.coordinator import _INSTANCE_YAML, DAGSTER_YAML, MAX_CONCURRENT_RUNS, OLD_DAGSTER_YAMLS

    home = DataHome(fast_tmp / "home")
    home.dagster_home.mkdir(parents=True)
    before = OLD_DAGSTER_YAMLS[-1]                        # what the thirty-first session wrote
    assert before.startswith(_INSTANCE_YAML) and "max_concurrent_runs" not in before
    (home.dagster_home / "dagster.yaml").write_text(before)
    use_home(home)
    assert (home.dagster_home / "dagster.yaml").read_text() == DAGSTER_YAML          # brought up to date
    with dg.DagsterInstance.get() as instance:
        assert instance.get_concurrency_config().run_queue_config.max_concurrent_runs == MAX_CONCURRENT_RUNS
    edited = DAGSTER_YAML.replace(f"max_concurrent_runs: {MAX_CONCURRENT_RUNS}", "max_concurrent_runs: 5")
    (home.dagster_home / "dagster.yaml").write_text(edited)
    use_home(home)
    assert (home.dagster_home / "dagster.yaml").read_text() == edited                 # an edited file is kept
