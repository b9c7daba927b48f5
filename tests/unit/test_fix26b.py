"""Fix26b, the answer to review rev26a (tests/unit/test_hostile_rev26a.py): what a run's tag may hold
(``formats.text.tag_holds_credential`` reads names by words: ``credential_name``), a libpq key/value password in
run config (``formats.text.redact_credentials``), a refused run's plain tags kept by the coordinator's scrub, tags
added again to a stored run (Dagster's reindex), a backfill's title."""
from __future__ import annotations

import time
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.storage.runs.sqlite.sqlite_run_storage import SqliteRunStorage

from dagster_project.build import use_home
from dagster_project.coordinator import (
    REFUSED_TAG,
    REMOVED_TAG_TEXT,
    RunConfigRefused,
    scrub_refused_run,
    scrubbed_tags,
)
from formats.home import DataHome
from formats.settings import holds_credential
from formats.text import credential_name, redact_credentials, tag_holds_credential

SECRET = "Fix26bSecret"


def _holding(home: DataHome, text: str) -> list[str]:
    return sorted(str(path.relative_to(home.dagster_home)) for path in home.dagster_home.rglob("*")
                  if path.is_file() and text.encode() in path.read_bytes())


@pytest.mark.parametrize("name", [
    "aws_secret_access_key", "PGPASSWORD", "sslpassword", "api_token", "access_token", "X-Amz-Signature",
    "X-Amz-Credential", "X-Amz-Security-Token", "sig", "pass", "pw", "pwd", "apiKey", "APIKey", "AccountKey",
    "Authorization", "client_secret", "SECRET_KEY_BASE", "password_hash", "db.password", "GITHUB_TOKEN",
    "AZURE_STORAGE_CONNECTION_STRING", "s3_session_token", "token_2",
])
def test_a_credential_name(name) -> None:
    assert credential_name(name)


@pytest.mark.parametrize("name", [
    "assignee", "author", "target_session_attrs", "tokenizer", "clip-tokenizer", "max_tokens", "token_count",
    "pad_token", "page_token", "run_key", "dagster/run_key", "dagster/concurrency_key", "partition_key",
    "public_key", "password_file", "passfile", "secret_name", "SignatureVersion", "AWS_ACCESS_KEY_ID", "bypass",
    "keep_versions", "id", "", "2023", "open-secret-scanning",
])
def test_not_a_credential_name(name) -> None:
    assert not credential_name(name)


@pytest.mark.parametrize("value", [
    f"host=db.internal dbname=pickapic user=ro password={SECRET}",
    f"host=db.internal sslpassword='{SECRET} x' user=ro",
    f"PGPASSWORD={SECRET} pg_dump -h db",
    f"opts=password={SECRET}",                                   # an assignment's value that is one
    f'{{"user": "ro", "password": "{SECRET}"}}',
    f"spring.datasource.password: {SECRET}",
    f"AZURE_STORAGE_CONNECTION_STRING={SECRET}",
    f"Authorization: Bearer {SECRET}",
    f"Bearer {SECRET}0123456789",
    "Authorization: Basic cm86Rml4MjZiU2VjcmV0",
    "basic cm86Rml4MjZiU2VjcmV0",                                 # base64 of ro:Fix26bSecret
    f"https://api.example/v1?user=bob&pass={SECRET}",
    f"https://api.example/v1?apiKey={SECRET}",
    f"https://h/x?SignatureVersion=2&Signature={SECRET}",
    f"see ?token={SECRET} in the log",
    f"--token {SECRET}",
    f'--password "{SECRET} x"',
    f"ghp_{SECRET}0123456789abcdefghijklmn",
    f"github_pat_11ABCDEFG0{SECRET}abcdefghij",
    f"glpat-{SECRET}abcdefghij",
    f"hf_{SECRET}abcdefghijklmnopqrstu",
    "xoxb-1234567890-abcdefghij",
    f"sk-proj{SECRET}0123456789",
    "AKIAIOSFODNN7EXAMPLE",
    "token eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln",
])
def test_a_tag_value_holding_a_credential(value) -> None:
    assert tag_holds_credential(value)


@pytest.mark.parametrize("key", ["aws_secret_access_key", "PGPASSWORD", "api_token", "hf-token"])
def test_a_tag_key_named_for_a_credential_with_a_value(key) -> None:
    assert tag_holds_credential(SECRET, key=key)
    assert not tag_holds_credential("", key=key) and not tag_holds_credential("  ", key=key)


@pytest.mark.parametrize("value", [
    "https://github.com/org/repo/issues?assignee=alice",
    "https://github.com/org/repo/commits/main?author=alice",
    "postgresql://pipeline_ro@db1.internal,db2.internal/pickapic?target_session_attrs=read-write",
    "https://h/x?SignatureVersion=2&page=1",
    "https://h/x?token",                                          # a name without a value
    "retrain after the clip-tokenizer change", "see the open-secret-scanning alerts",
    "max_tokens=77", "pad_token: <pad>", "token_count=12", "password_file=/run/secrets/db",
    "--password-file /run/secrets/db", "passfile=/home/u/.pgpass", "--tokenizer clip", "--dry-run",
    "password=", "password=''", 'password: ""',
    "the bearer of bad news", "Basic training run", "pip install sk-learn-compat-layer-for-pipelines",
    "ghp_short", "AKIA is the prefix", "eyJhbGciOiJIUzI1NiJ9 alone",
    '{"host": "localhost", "port": 4000}', "2023-02-13T02:00:00+00:00", "features: inputs changed",
    "host=db.internal dbname=pickapic user=ro", "keep_versions: 3",
])
def test_a_plain_tag_value(value) -> None:
    assert not tag_holds_credential(value)


@pytest.mark.parametrize(("key", "value"), [
    ("dagster/run_key", "nightly-rebuild-v3"), ("dagster/concurrency_key", "db"), ("partition_key", "2023-02-13"),
    ("password_file", "/run/secrets/db"), ("note", "x"), ("max_tokens", "77"),
])
def test_a_plain_tag_key(key, value) -> None:
    assert not tag_holds_credential(value, key=key)


@pytest.mark.parametrize("value", [
    "a=" * 60000, "a: " * 60000, "a:" * 60000, "password" * 40000 + "=", "passwd" * 50000 + "=x", "a" * 300000 + ":",
    "-a " * 60000, "--token" * 40000, "--token " * 40000, "x-" * 150000, "Bearer " * 40000, "Basic " * 40000,
    "Basic " + "A" * 300000, "eyJa." * 60000, "eyJ" * 100000, "ghp_" * 75000, "AKIA" * 75000, "sk-" * 100000,
    "aB" * 150000 + "=x", "AB" * 150000 + "b=x", "password='" * 30000, "password=\\'" * 30000,
    "a.b-c_" * 50000 + "=x", '"' * 300000, "https://h/x?" + "a_b&" * 60000,
])
def test_the_checks_are_linear(value) -> None:
    started = time.thread_time()   # CPU time: a loaded CI machine does not inflate it
    tag_holds_credential(value)
    tag_holds_credential(value, key=value)
    redact_credentials(value)
    assert time.thread_time() - started < 3.0     # quadratic: minutes for these 200-400 KB values


@pytest.mark.parametrize(("value", "shown"), [
    (f"host=10.0.0.5 port=5432 user=replicator password={SECRET}",
     "host=10.0.0.5 port=5432 user=replicator password=***"),
    (f"host=x password='{SECRET} \\' b' user=u", "host=x password=*** user=u"),
    (f"host=x sslpassword = {SECRET} user=u", "host=x sslpassword = *** user=u"),
    (f"PGPASSWORD={SECRET} pg_dump", "PGPASSWORD=*** pg_dump"),
    (f"a = 'host=x password={SECRET}' is refused", "a = 'host=x password=***' is refused"),   # a message's quote
    ("password=", "password="), ("passfile=/x", "passfile=/x"),
])
def test_a_key_value_password_is_hidden(value, shown) -> None:
    assert redact_credentials(value) == shown
    assert holds_credential(value) == (value != shown)


def test_a_settings_error_quoting_a_conninfo_hides_its_password() -> None:
    from formats.settings import SettingsError, quoted

    message = str(SettingsError(f"app_export.primary_host = {quoted(f'host=x password={SECRET}')} is refused"))
    assert SECRET not in message and message.endswith("'host=x password=***' is refused")


def test_the_scrub_keeps_plain_tags_as_given_and_hides_credentials() -> None:
    tags = {"note": "https://tracker.example/browse?id=42", "repo": "ssh://git@git.example/pickapic.git",
            "source": f"postgresql://ro:{SECRET}@db/x", "env": f"host=x password={SECRET}",
            "PGPASSWORD": SECRET, "bearer": f"Authorization: Bearer {SECRET}0123456789"}
    scrubbed = scrubbed_tags(tags)
    assert scrubbed == {"note": tags["note"], "repo": tags["repo"], "source": "postgresql://ro:***@db/x",
                        "env": "host=x password=***", "PGPASSWORD": REMOVED_TAG_TEXT, "bearer": REMOVED_TAG_TEXT}
    assert SECRET not in repr(scrubbed)


def test_a_refused_run_stored_whole_keeps_its_plain_tags(fast_tmp: Path, env_kept) -> None:
    home = DataHome(fast_tmp / "home")
    use_home(home)
    tags = {"note": "https://tracker.example/browse?id=42", "repo": "ssh://git@git.example/pickapic.git",
            "env": f"host=x password={SECRET}"}
    with dg.DagsterInstance.from_config(str(home.dagster_home)) as instance:
        run = dg.DagsterRun(job_name="rebuild_dataset_job", tags=tags)
        SqliteRunStorage.add_run(instance.run_storage, run)       # as Dagster's own run storage stores it
        assert scrub_refused_run(instance, run) is None
        kept = {"note": tags["note"], "repo": tags["repo"], "env": "host=x password=***"}
        assert instance.get_run_by_id(run.run_id).tags == kept
        assert dict(instance.get_run_tags(tag_keys=["note", "env"])) == {"note": {tags["note"]},
                                                                        "env": {kept["env"]}}
    assert _holding(home, SECRET) == []


def test_a_runs_tags_added_again_are_not_refused(fast_tmp: Path, env_kept) -> None:
    # Dagster's `dagster instance reindex` adds a run's whole tag set again (add_run_tags): a run stored scrubbed
    # and marked refused before review rev25l holds the mark and a scrubbed tag the check takes for a credential
    home = DataHome(fast_tmp / "home")
    use_home(home)
    legacy = {"source": "postgresql://ro:***@db/x", REFUSED_TAG: "run refused at launch: ...",
              "dagster/partition": "2023-02-13"}
    with dg.DagsterInstance.from_config(str(home.dagster_home)) as instance:
        run = dg.DagsterRun(job_name="rebuild_dataset_job", tags=legacy)
        SqliteRunStorage.add_run(instance.run_storage, run)
        instance.add_run_tags(run.run_id, legacy)
        assert instance.get_run_by_id(run.run_id).tags == legacy
        with pytest.raises(RunConfigRefused, match="'source' holds a credential"):
            instance.add_run_tags(run.run_id, {"source": f"postgresql://ro:{SECRET}@db/x"})
        with pytest.raises(RunConfigRefused, match="'PGPASSWORD' holds a credential"):
            instance.add_run_tags(run.run_id, {"PGPASSWORD": SECRET})
        assert instance.get_run_by_id(run.run_id).tags == legacy
    assert _holding(home, SECRET) == []


def test_a_backfill_with_a_plain_title_is_stored_and_one_with_a_token_is_not(fast_tmp: Path, env_kept) -> None:
    from dagster._core.execution.backfill import BulkActionStatus, PartitionBackfill

    home = DataHome(fast_tmp / "home")
    use_home(home)

    def backfill(backfill_id: str, title: str, description: str | None) -> PartitionBackfill:
        return PartitionBackfill(backfill_id=backfill_id, status=BulkActionStatus.REQUESTED, from_failure=False,
                                 tags={}, backfill_timestamp=time.time(), asset_selection=[dg.AssetKey("app_export")],
                                 title=title, description=description)

    with dg.DagsterInstance.from_config(str(home.dagster_home)) as instance:
        instance.add_backfill(backfill("fixtwentysixb", "reexport",
                                       "see https://tracker.example/browse?id=42 (ssh://git@git.example/p.git)"))
        with pytest.raises(RunConfigRefused, match="its description holds a credential") as caught:
            instance.add_backfill(backfill("fixtwentysixc", "reexport", f"Authorization: Bearer {SECRET}0123456"))
        assert SECRET not in str(caught.value)
        assert [stored.backfill_id for stored in instance.get_backfills()] == ["fixtwentysixb"]
    assert _holding(home, SECRET) == []


def test_a_stage_value_holding_a_key_value_password_is_refused_without_quoting_it(fast_tmp: Path, env_kept) -> None:
    home = DataHome(fast_tmp / "home")
    use_home(home)
    with dg.DagsterInstance.from_config(str(home.dagster_home)) as instance:
        run = dg.DagsterRun(job_name="app_export_job", run_config={"ops": {"app_export": {"config": {
            "primary_host": f"host=10.0.0.5 user=replicator sslpassword='{SECRET}'"}}}})
        with pytest.raises(RunConfigRefused, match="ops.app_export.config.primary_host holds a credential") as caught:
            instance.run_storage.add_run(run)
        assert SECRET not in str(caught.value)
        # the same address without a password is stored
        instance.run_storage.add_run(dg.DagsterRun(job_name="app_export_job", run_config={"ops": {"app_export": {
            "config": {"primary_host": "host=10.0.0.5 port=5432 user=replicator"}}}}))
        assert len(instance.get_runs()) == 1
    assert _holding(home, SECRET) == []
