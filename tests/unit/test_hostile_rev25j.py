"""Hostile review rev25j (December 6, 2026): fix25g (def06b5, merged as 320eb2b), the answer to review rev25g.

Reviewed: ``dagster_project.coordinator.scrub_refused_run`` (a run refused at launch has its stored config
rewritten in Dagster's run storage, SQLite with ``secure_delete``, the WAL checkpointed and truncated), the launch
check refusing a credential in a stage's op config, ``runs.db``'s mode, ``versions._set_aside`` and
``formats.settings.holds_credential`` / the redaction of URL credentials where settings are shown.

Run against the real components: a real ``dagster-webserver`` on a fresh data home launching
``rebuild_dataset_job`` (and a backfill) through GraphQL as the launchpad does (the fixture of
tests/e2e/test_launch_refusal.py, as review rev25g did), every file under ``HOME/dagster`` grepped for the password
afterwards; the home's real Dagster instance and its coordinator with a second SQLite connection reading or writing
``runs.db`` as the webserver and the daemon do; the real ``pickapic settings`` command.

What did not hold is below, one test per defect (strict xfails when filed; all seven fixed the same day by fix25j),
each assertion stating the correct behaviour.
"""
from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import dagster as dg
import pytest

from tests.e2e.test_launch_refusal import _launch, webserver  # noqa: F401 - the fixture
from tests.e2e.test_serve import LOCAL

LAUNCH_TAGGED = """mutation($params: ExecutionParams!) { launchRun(executionParams: $params) { __typename
  ... on LaunchRunSuccess { run { runId status } }
  ... on PythonError { message }
  ... on RunConfigValidationInvalid { errors { message } } } }"""


def _holding(dagster_home: Path, text: str) -> list[str]:
    """The files under ``dagster_home`` (the -wal and -shm files of its databases too) holding ``text``."""
    found = []
    for folder, _, names in os.walk(dagster_home):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as handle:
                if text.encode() in handle.read():
                    found.append(os.path.relpath(path, dagster_home))
    return sorted(found)


def test_a_refusal_caused_by_the_settings_file_neither_shows_nor_stores_its_credential(webserver) -> None:
    port, home = webserver
    secret = "StagingSecret25j"
    settings = home.root / "pickapic.toml"
    settings.write_text(f'[features]\nstaging = "s3://AKIAEXAMPLE25J:{secret}@bucket"\n')
    os.chmod(settings, 0o600)
    try:
        result = _launch(port, {"ops": {"published_dataset": {"config": {"keep_versions": 2}}}})
    finally:
        settings.unlink()
    assert result["__typename"] == "PythonError" and "refused at launch" in result["message"], result
    assert "staging" in result["message"]
    assert secret not in result["message"]
    assert _holding(home.dagster_home, secret) == []


def test_a_settings_error_does_not_quote_a_url_credential(tmp_path, capsys) -> None:
    from dagster_project.cli import main
    from formats.settings import SETTINGS_FILE

    secret = "BlobBaseSecret25j"
    value = f"file://reader:{secret}@otherhost/blobs"
    home = tmp_path / "home"
    home.mkdir()
    capsys.readouterr()
    assert main(["settings", "--home", str(home), "--set", f"features.blob_base={value}"]) != 0
    out, err = capsys.readouterr()
    assert "blob_base" in out + err and secret not in out + err
    (home / SETTINGS_FILE).write_text(f'[features]\nblob_base = "{value}"\n')
    os.chmod(home / SETTINGS_FILE, 0o600)
    assert main(["settings", "--home", str(home)]) != 0
    out, err = capsys.readouterr()
    assert "blob_base" in out + err and secret not in out + err


def test_the_launch_check_of_a_long_value_is_not_quadratic(tmp_path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    code = ("import sys\n"
            "from dagster_project.coordinator import check_launch, RunConfigRefused\n"
            "value = 's3://k:' * 40000\n"
            "config = {'resources': {'data_home': {'config': {'root': sys.argv[1]}}},\n"
            "          'ops': {'fingerprint_images': {'config': {'blob_base': value}}}}\n"
            "try:\n    check_launch(config)\nexcept RunConfigRefused:\n    pass\nprint('checked')\n")
    root = Path(__file__).resolve().parents[2]
    try:
        done = subprocess.run([sys.executable, "-c", code, str(home)], check=False, cwd=root, capture_output=True,
                              text=True, env={**os.environ, "PYTHONPATH": str(root)}, timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail("the launch check of one 280 KB value was still running after 30 s")
    assert done.returncode == 0 and "checked" in done.stdout, done.stderr[-2000:]


def _launch_tagged(port: int, run_config: dict, tags: dict[str, str]) -> dict:
    params = {"selector": {"repositoryLocationName": "dagster_project.definitions", "repositoryName": "__repository__",
                           "jobName": "rebuild_dataset_job"}, "runConfigData": run_config,
              "executionMetadata": {"tags": [{"key": key, "value": value} for key, value in tags.items()]}}
    body = json.dumps({"query": LAUNCH_TAGGED, "variables": {"params": params}}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/graphql", data=body,
                                     headers={"Content-Type": "application/json"})
    try:
        with LOCAL.open(request, timeout=60) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:
        body = exc.read()
    return json.loads(body)["data"]["launchRun"]


def test_a_refused_runs_tags_keep_no_credential(webserver) -> None:
    port, home = webserver
    secret = "TagSecret25j"
    result = _launch_tagged(port, {"ops": {"published_dataset": {"config": {"keep_versions": 0}}}},
                            {"source_db": f"postgresql://pipeline_ro:{secret}@db.internal/pickapic"})
    assert result["__typename"] == "PythonError" and "refused at launch" in result["message"], result
    with dg.DagsterInstance.from_config(str(home.dagster_home)) as instance:
        # stored scrubbed and failed until review rev25l; refused with nothing stored since
        assert [run for run in instance.get_runs() if "source_db" in run.tags] == []
    assert _holding(home.dagster_home, secret) == []


def test_a_reader_holding_the_run_database_does_not_keep_the_refused_password(tmp_path, env_kept) -> None:
    from dagster_project.build import use_home
    from dagster_project.coordinator import RunConfigRefused
    from formats.home import DataHome

    secret = "ReaderHeldPw25j"
    home = DataHome(tmp_path / "home")
    use_home(home)
    with dg.DagsterInstance.from_config(str(home.dagster_home)) as instance:
        # the home's run storage refuses the run, nothing stored (since review rev25l; fix25j stored it scrubbed
        # and the coordinator refused it), so a reader or a writer holding runs.db cannot keep the password
        run = dg.DagsterRun(job_name="rebuild_dataset_job", run_config={
            "resources": {"app_db": {"config": {"dsn": f"host=db.internal user=ro password={secret}"}}}})
        reader = sqlite3.connect(home.dagster_home / "history" / "runs.db", isolation_level=None)
        try:
            reader.execute("BEGIN")
            reader.execute("SELECT count(*) FROM runs").fetchall()     # as a UI page listing runs reads it
            with pytest.raises(RunConfigRefused):
                instance.run_storage.add_run(run)
            assert instance.get_run_by_id(run.run_id) is None
            held = _holding(home.dagster_home, secret)
            reader.execute("COMMIT")
        finally:
            reader.close()
    assert held == []


def test_a_write_lock_on_the_run_database_does_not_leave_the_refused_password(tmp_path, env_kept) -> None:
    import threading

    from dagster_project.build import use_home
    from dagster_project.coordinator import RunConfigRefused
    from formats.home import DataHome

    secret = "WriterHeldPw25j"
    home = DataHome(tmp_path / "home")
    use_home(home)
    with dg.DagsterInstance.from_config(str(home.dagster_home)) as instance:
        # the home's run storage refuses the run, nothing stored (since review rev25l; fix25j stored it scrubbed
        # and the coordinator refused it), so a reader or a writer holding runs.db cannot keep the password
        run = dg.DagsterRun(job_name="rebuild_dataset_job", run_config={
            "resources": {"app_db": {"config": {"dsn": f"host=db.internal user=ro password={secret}"}}}})
        writer = sqlite3.connect(home.dagster_home / "history" / "runs.db", isolation_level=None,
                                 check_same_thread=False)
        writer.execute("BEGIN IMMEDIATE")             # another process's write transaction, 7 s long (> 5 s)
        release = threading.Timer(7, lambda: writer.execute("COMMIT"))
        release.start()
        try:
            with pytest.raises(RunConfigRefused):
                instance.run_storage.add_run(run)
        finally:
            release.join()
            writer.close()
        stored = instance.get_run_by_id(run.run_id)
        assert stored is None or secret not in repr(stored.run_config)
    assert _holding(home.dagster_home, secret) == []


BACKFILL = """mutation($params: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $params) {
  __typename ... on LaunchBackfillSuccess { backfillId } ... on PythonError { message } } }"""


def test_a_backfill_with_a_password_in_its_run_config_leaves_none_in_the_run_storage(webserver) -> None:
    port, home = webserver
    secret = "BackfillPw25j"
    day = "2023-01-01"
    with dg.DagsterInstance.from_config(str(home.dagster_home)) as instance:
        instance.add_dynamic_partitions("raw_days", [day])
    params = {"assetSelection": [{"path": ["app_export"]}], "partitionNames": [day],
              "runConfigData": {"resources": {"app_db": {"config": {
                  "dsn": f"host=db.internal dbname=pickapic user=pipeline_ro password={secret}"}}}}}
    body = json.dumps({"query": BACKFILL, "variables": {"params": params}}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/graphql", data=body,
                                     headers={"Content-Type": "application/json"})
    try:
        with LOCAL.open(request, timeout=60) as response:
            answer = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        answer = json.loads(exc.read())
    launched = answer["data"]["launchPartitionBackfill"]
    assert secret not in json.dumps(launched)
    assert _holding(home.dagster_home, secret) == []
