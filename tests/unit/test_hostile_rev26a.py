"""Hostile review rev26a of commits 40a29df and 62c89f1: the data home's run storage
(``dagster_project.instance.CheckedSqliteRunStorage``, named by ``instance_class`` in ``HOME/dagster/dagster.yaml``)
refusing, with nothing stored, a run or a backfill whose run config or tags hold a credential
(``dagster_project.coordinator.credential_refusal``), and tags added to a stored run; run tags checked by the new,
narrower ``formats.text.tag_holds_credential``, run config by ``formats.settings.holds_credential``.

Run against the real components: a real ``dagster-webserver`` on a fresh data home (``use_home``), launching through
its GraphQL API as the UI does (``launchRun``, ``launchMultipleRuns``, ``launchPipelineReexecution`` with extra tags,
``launchPartitionBackfill`` with a title and a description), every file of ``HOME/dagster`` and the webserver's log
grepped for the secret afterwards; the home's own instance (``DagsterInstance.from_config``) and its run coordinator.

Found working: a refused launch (config or tag) leaves no run, no event database and no secret in ``runs.db``, its
``-wal``, ``index.db`` or the webserver's log, and its GraphQL answer (message, stack, error chain) quotes none;
``launchMultipleRuns`` refuses the one run and launches the other; a re-execution with a credential in its extra tags
is refused; the tag check ran in linear time on every adversarial 200-480 KB value tried (many schemes, queries,
'@', '#', '%', quotes, dashes) and on 100 000 tags.

What did not hold is below, one strict xfail per defect, each assertion stating the correct behaviour. Those on the
tag check were also seen end to end through the webserver: ``launchRun`` with the tag
``host=db.internal ... password=...`` or ``Authorization: Bearer ...`` was queued and its tag shown back in the answer
and stored in ``runs.db``; one with ``https://github.com/org/repo/issues?assignee=alice`` or
``try the clip-tokenizer v2`` was refused; a backfill whose description held a DSN password was stored.

All nine fixed the same day (fix26b: ``formats.text.credential_name`` / ``tag_holds_credential``, the key/value
password in ``redact_credentials``, the backfill's title and description, the scrub keeping plain tags;
``tests/unit/test_fix26b.py``).
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import dagster as dg
import pytest

from dagster_project.build import use_home
from dagster_project.coordinator import RunConfigRefused
from formats.home import DataHome

SECRET = "Rev26aSecretPw"


@pytest.fixture
def home_instance(fast_tmp: Path):
    """A fresh data home (``use_home``) and its own Dagster instance; the environment restored afterwards."""
    saved = {name: os.environ.get(name) for name in ("DAGSTER_HOME", "PICKAPIC_HOME")}
    home = DataHome(fast_tmp / "home")
    use_home(home)
    try:
        with dg.DagsterInstance.from_config(str(home.dagster_home)) as instance:
            yield home, instance
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _holding(home: DataHome, text: str) -> list[str]:
    """The files under ``HOME/dagster`` (the -wal and -shm files of its databases too) holding ``text``."""
    return sorted(str(path.relative_to(home.dagster_home)) for path in home.dagster_home.rglob("*")
                  if path.is_file() and text.encode() in path.read_bytes())


def _assert_refused_and_absent(home: DataHome, instance: dg.DagsterInstance, run: dg.DagsterRun) -> None:
    with pytest.raises(RunConfigRefused, match="nothing was stored") as caught:
        instance.run_storage.add_run(run)
    assert SECRET not in str(caught.value)
    assert instance.get_runs() == []
    assert _holding(home, SECRET) == []


def test_a_tag_holding_a_key_value_dsn_with_a_password_is_refused(home_instance) -> None:
    home, instance = home_instance
    for secret_key in ("password", "sslpassword"):
        run = dg.DagsterRun(job_name="rebuild_dataset_job", tags={
            "source_db": f"host=db.internal dbname=pickapic user=pipeline_ro {secret_key}={SECRET}"})
        _assert_refused_and_absent(home, instance, run)


def test_a_backfill_whose_title_or_description_holds_a_credential_is_refused(home_instance) -> None:
    from dagster._core.execution.backfill import BulkActionStatus, PartitionBackfill

    home, instance = home_instance
    texts = {"description": f"re-export from postgresql://pipeline_ro:{SECRET}@db.internal/pickapic",
             "title": f"postgresql://pipeline_ro:{SECRET}@db.internal/pickapic"}
    for number, (field, text) in enumerate(sorted(texts.items())):
        values = {"title": "reexport", "description": None, field: text}
        backfill = PartitionBackfill(backfill_id=f"rev26a{number}", status=BulkActionStatus.REQUESTED,
                                     from_failure=False, tags={}, backfill_timestamp=time.time(),
                                     asset_selection=[dg.AssetKey("app_export")], **values)
        with pytest.raises(RunConfigRefused, match="nothing was stored") as caught:
            instance.add_backfill(backfill)
        assert SECRET not in str(caught.value)
    assert instance.get_backfills() == []
    assert _holding(home, SECRET) == []


@pytest.mark.parametrize("tags", [
    {"aws_secret_access_key": SECRET},
    {"PGPASSWORD": SECRET},
    {"env": f"AWS_ACCESS_KEY_ID=AKIAEXAMPLE26A AWS_SECRET_ACCESS_KEY={SECRET}"},
], ids=["key-aws-secret", "key-pgpassword", "env-assignment"])
def test_a_tag_named_for_a_credential_is_refused(home_instance, tags) -> None:
    home, instance = home_instance
    _assert_refused_and_absent(home, instance, dg.DagsterRun(job_name="rebuild_dataset_job", tags=tags))


@pytest.mark.parametrize("value", [
    f"ghp_{SECRET}0123456789abcdefghij",
    f"hf_{SECRET}abcdefghijklmnopqrstu",
    f"Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJwaXBlbGluZSJ9.{SECRET}",
], ids=["github", "hugging-face", "bearer-header"])
def test_a_bare_token_in_a_tag_is_refused(home_instance, value) -> None:
    home, instance = home_instance
    _assert_refused_and_absent(home, instance, dg.DagsterRun(job_name="rebuild_dataset_job", tags={"note": value}))


@pytest.mark.parametrize("value", [
    f"https://api.example/v1/export?user=bob&pass={SECRET}",
    f"https://api.example/v1/export?user=bob&pw={SECRET}",
], ids=["pass", "pw"])
def test_a_short_password_parameter_in_a_tag_is_still_refused(home_instance, value) -> None:
    home, instance = home_instance
    _assert_refused_and_absent(home, instance, dg.DagsterRun(job_name="rebuild_dataset_job", tags={"link": value}))


@pytest.mark.parametrize("value", [
    "https://github.com/org/repo/issues?assignee=alice",
    "https://github.com/org/repo/commits/main?author=alice",
    "postgresql://pipeline_ro@db1.internal,db2.internal/pickapic?target_session_attrs=read-write",
], ids=["assignee", "author", "target-session-attrs"])
def test_a_link_whose_parameter_name_contains_a_credential_word_is_kept(home_instance, value) -> None:
    _, instance = home_instance
    run = instance.run_storage.add_run(dg.DagsterRun(job_name="rebuild_dataset_job", tags={"link": value}))
    assert instance.get_run_by_id(run.run_id).tags == {"link": value}


@pytest.mark.parametrize("value", ["retrain after the clip-tokenizer change", "see the open-secret-scanning alerts"],
                         ids=["tokenizer", "secret-scanning"])
def test_a_label_with_a_hyphenated_credential_word_is_kept(home_instance, value) -> None:
    _, instance = home_instance
    run = instance.run_storage.add_run(dg.DagsterRun(job_name="rebuild_dataset_job", tags={"note": value}))
    assert instance.get_run_by_id(run.run_id).tags == {"note": value}


def test_a_run_refused_for_a_bad_value_keeps_its_plain_link_tags(home_instance) -> None:
    from dagster._core.run_coordinator import SubmitRunContext

    home, instance = home_instance
    tags = {"note": "https://tracker.example/browse?id=42", "repo": "ssh://git@git.example/pickapic.git"}
    run = instance.run_storage.add_run(dg.DagsterRun(
        job_name="rebuild_dataset_job", tags=tags, status=dg.DagsterRunStatus.NOT_STARTED,
        run_config={"resources": {"data_home": {"config": {"root": str(home.root)}}},
                    "ops": {"published_dataset": {"config": {"keep_versions": 0}}}}))
    assert instance.get_run_by_id(run.run_id).tags == tags       # stored as given: no credential in them
    with pytest.raises(RunConfigRefused, match="keep_versions"):
        instance.run_coordinator.submit_run(SubmitRunContext(run, workspace=None))
    assert instance.get_run_by_id(run.run_id).tags == tags


def test_a_stage_value_holding_a_key_value_password_is_refused(home_instance) -> None:
    home, instance = home_instance
    run = dg.DagsterRun(job_name="app_export_job", run_config={"ops": {"app_export": {"config": {
        "primary_host": f"host=10.0.0.5 port=5432 user=replicator password={SECRET}"}}}})
    _assert_refused_and_absent(home, instance, run)
