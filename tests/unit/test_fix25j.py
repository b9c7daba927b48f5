"""Fix25j, the answer to review rev25j (tests/unit/test_hostile_rev25j.py): more of what it changed.

- ``formats.text.redact_credentials`` replaces what its four patterns replace, scanned in linear time;
- a settings error, a CLI error and a launch refusal never quote a URL's credential (a cut value included);
- the home's Dagster instance (``dagster_project.instance``) refuses a run holding a credential (stored scrubbed and
  marked refused until review rev25l: nothing is stored now), refuses such a backfill, creates each run's event database with no access for other accounts;
- ``coordinator.scrub_refused_run`` (for a run stored whole: an instance configured elsewhere) scrubs the tags too,
  waits Dagster's 30 s for a writer, and says so, with the run's id and never the credential, where the scrub or
  the checkpoint could not be completed.
"""
from __future__ import annotations

import logging
import os
import random
import sqlite3
import stat
import time
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.storage.runs.sqlite.sqlite_run_storage import SqliteRunStorage

from dagster_project.build import use_home
from dagster_project.coordinator import (
    DAGSTER_YAML,
    OLD_DAGSTER_YAMLS,
    REFUSED_TAG,
    RunConfigRefused,
    scrub_refused_run,
)
from formats import text
from formats.home import DataHome

SECRET = "Fix25jSecret"


def _reference(value: str) -> str:
    """What redact_credentials did before rev25j: its four patterns applied with re.sub (quadratic)."""
    value = text._URL_PASSWORD.sub(r"\1***@", value)
    value = text._URL_USER.sub(r"\1***@", value)
    value = text._URL_QUERY.sub(r"\1***", value)
    return text._SECRET_OPTION.sub(r"\1\2***", value)


def test_redact_credentials_replaces_what_its_patterns_replace() -> None:
    pieces = ["s3", "://", ":", "@", "/", "?", "#", "'", '"', " ", "\t", "-", "--", "=", "a", "K", "_", ".", "+",
              "1", "é", "token", "secret", "x", "https", "--s3_secret_access_key", "sig=", "&"]
    rng = random.Random(25)
    for _ in range(20000):
        value = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 14)))
        assert text.redact_credentials(value) == _reference(value), repr(value)
    for value in ("https://user:pa@ss@host/x @y", "s3://KEY:SECRET@bucket/blobs", "file://reader:pw@otherhost/b",
                  "https://TOKEN@host/x", "https://host/p?sig=abc&se=1#frag", "--s3_secret_access_key=abc --x=1",
                  "--token 'a b' rest", '--password="a b', "gs://a:b@c s3://d:e@f", "x.s3://u:p@h", "-s3://u:p@h"):
        assert text.redact_credentials(value) == _reference(value), value


def test_redact_credentials_of_long_adversarial_values() -> None:
    # each took the patterns quadratic time (the reviewer's 's3://k:' * N: minutes at 1 MB); the results
    assert text.redact_credentials("s3://k:" * 40000) == "s3://k:" * 40000
    assert text.redact_credentials("s3://k:" * 40000 + "@h") == "s3://k:***@h"
    assert text.redact_credentials("a." * 100000) == "a." * 100000
    assert text.redact_credentials("-" * 200000) == "-" * 200000
    assert text.redact_credentials("s3://a?" * 30000) == "s3://a?***"
    assert text.redact_credentials("--token " * 30000).count("***") == 15000


def test_a_settings_error_hides_a_credential_even_where_the_value_is_cut() -> None:
    from formats.settings import SettingsError, quoted

    long = f"s3://KEY:{SECRET}{'S' * 200}@bucket/blobs"
    assert SECRET not in quoted(long) and "***" in quoted(long)
    assert SECRET not in str(SettingsError(f"features.blob_base = {long!r} is refused"))


def test_the_cli_error_line_hides_a_credential(fast_tmp, capsys) -> None:
    from dagster_project.cli import main

    home = fast_tmp / "home"
    home.mkdir()
    assert main(["settings", "--home", str(home), "--set", f"features.blob_base=file://u:{SECRET}@other/b"]) != 0
    out, err = capsys.readouterr()
    assert "blob_base" in err and SECRET not in out + err


def _holding(home: DataHome, secret: str) -> list[str]:
    return sorted(str(path.relative_to(home.dagster_home)) for path in home.dagster_home.rglob("*")
                  if path.is_file() and secret.encode() in path.read_bytes())


def _dsn_config() -> dict:
    return {"resources": {"app_db": {"config": {"dsn": f"host=db.internal user=ro password={SECRET}"}}}}


def test_the_instance_refuses_a_run_holding_a_credential_and_stores_nothing(fast_tmp, env_kept) -> None:
    # fix25j stored such a run scrubbed and tagged refused; review rev25l found it still ran in process with the
    # value given, so since then the run storage refuses it (the coordinator's refusal of a run stored with the tag
    # by that version is below)
    home = DataHome(fast_tmp / "home")
    use_home(home)
    assert (home.dagster_home / "dagster.yaml").read_text() == DAGSTER_YAML
    with dg.DagsterInstance.from_config(str(home.dagster_home)) as instance:
        with pytest.raises(RunConfigRefused, match="refused at launch, nothing was stored.*holds a password") as caught:
            instance.run_storage.add_run(dg.DagsterRun(job_name="rebuild_dataset_job", run_config=_dsn_config(),
                                                       tags={"plain": "v"}))
        assert SECRET not in str(caught.value)
        with pytest.raises(RunConfigRefused, match="the tag 'note' holds a credential") as caught:
            instance.run_storage.add_run(dg.DagsterRun(job_name="rebuild_dataset_job",
                                                       tags={"note": f"https://u:{SECRET}@h/x", "plain": "v"}))
        assert SECRET not in str(caught.value)
        assert instance.get_runs() == []
        assert _holding(home, SECRET) == []
        # a run stored with the refusal tag by fix25j's version: the coordinator refuses it with the reason
        old = dg.DagsterRun(job_name="rebuild_dataset_job", tags={"plain": "v", REFUSED_TAG: "holds a password"})
        SqliteRunStorage.add_run(instance.run_storage, old)
        with pytest.raises(RunConfigRefused, match="refused at launch.*holds a password"):
            instance.run_coordinator.submit_run(dg.SubmitRunContext(instance.get_run_by_id(old.run_id),
                                                                    workspace=None))
        # a run without a credential is stored as it is
        plain = instance.run_storage.add_run(dg.DagsterRun(job_name="rebuild_dataset_job", tags={"a": "b"}))
        assert instance.get_run_by_id(plain.run_id).tags == {"a": "b"}
        # a run re-executed from a refused one (its tags copied) is checked afresh: the mark is the storage's own
        again = instance.run_storage.add_run(dg.DagsterRun(job_name="rebuild_dataset_job",
                                                           tags={REFUSED_TAG: "an old reason", "a": "b"}))
        assert instance.get_run_by_id(again.run_id).tags == {"a": "b"}
    assert _holding(home, SECRET) == []


def test_a_backfill_holding_a_credential_is_refused_before_it_is_stored(fast_tmp, env_kept) -> None:
    from dagster._core.execution.backfill import BulkActionStatus, PartitionBackfill

    home = DataHome(fast_tmp / "home")
    use_home(home)
    with dg.DagsterInstance.from_config(str(home.dagster_home)) as instance:
        def backfill(name: str, run_config: dict | None, tags: dict) -> PartitionBackfill:
            return PartitionBackfill(backfill_id=name, status=BulkActionStatus.REQUESTED, from_failure=False, tags=tags,
                                     backfill_timestamp=time.time(), asset_selection=[dg.AssetKey("app_export")],
                                     run_config=run_config, serialized_asset_backfill_data="{}")
        with pytest.raises(RunConfigRefused, match="backfill refused, nothing was stored.*holds a password") as no:
            instance.add_backfill(backfill("withdsn", _dsn_config(), {}))
        assert SECRET not in str(no.value)
        with pytest.raises(RunConfigRefused, match="tag"):
            instance.add_backfill(backfill("withtag", None, {"src": f"postgresql://u:{SECRET}@h/db"}))
        instance.add_backfill(backfill("plain", {"ops": {"published_dataset": {"config": {"keep_versions": 2}}}}, {}))
        assert [b.backfill_id for b in instance.get_backfills()] == ["plain"]
    assert _holding(home, SECRET) == []


@pytest.mark.parametrize("umask, mode", [(0o022, 0o640), (0o002, 0o660)])
def test_each_runs_event_database_is_read_by_no_other_account(fast_tmp, env_kept, umask, mode) -> None:
    saved = os.umask(umask)
    try:
        home = DataHome(fast_tmp / "home")
        use_home(home)
        with dg.DagsterInstance.from_config(str(home.dagster_home)) as instance:
            run = instance.run_storage.add_run(dg.DagsterRun(job_name="rebuild_dataset_job"))
            instance.report_engine_event("an event of the run", run)
        events = home.dagster_home / "history" / "runs"
        assert stat.S_IMODE((events / f"{run.run_id}.db").stat().st_mode) == mode
        assert stat.S_IMODE((events / "index.db").stat().st_mode) == 0o666 & ~umask
        # one made earlier (SQLite's 0644) loses other accounts' bits when the home is used
        old = events / "0123abcd-0000-0000-0000-000000000000.db"
        old.write_bytes(b"")
        os.chmod(old, 0o644)
        use_home(home)
        assert stat.S_IMODE(old.stat().st_mode) == 0o640
        assert stat.S_IMODE((events / "index.db").stat().st_mode) == 0o666 & ~umask
    finally:
        os.umask(saved)


def test_an_instance_yaml_of_the_previous_version_is_brought_up_to_date(fast_tmp, env_kept) -> None:
    home = DataHome(fast_tmp / "home")
    home.dagster_home.mkdir(parents=True)
    # the version before this fix (fix32e appended a later one, with instance_class: tests/unit/test_fix32e.py)
    previous = next(text for text in reversed(OLD_DAGSTER_YAMLS) if "instance_class" not in text)
    (home.dagster_home / "dagster.yaml").write_text(previous)
    use_home(home)
    assert (home.dagster_home / "dagster.yaml").read_text() == DAGSTER_YAML
    assert previous == OLD_DAGSTER_YAMLS[-2]


def _stored_whole(fast_tmp: Path, tags: dict | None = None) -> tuple[DataHome, dg.DagsterInstance, dg.DagsterRun]:
    """A run holding the password stored whole, as Dagster's own run storage (an instance configured elsewhere)
    stores it."""
    home = DataHome(fast_tmp / "home")
    use_home(home)
    instance = dg.DagsterInstance.from_config(str(home.dagster_home))
    run = dg.DagsterRun(job_name="rebuild_dataset_job", run_config=_dsn_config(), tags=tags or {})
    SqliteRunStorage.add_run(instance.run_storage, run)
    assert _holding(home, SECRET) == ["history/runs.db"]
    return home, instance, run


def test_the_scrub_of_a_run_stored_whole_covers_its_tags(fast_tmp, env_kept) -> None:
    home, instance, run = _stored_whole(fast_tmp, {"source": f"postgresql://ro:{SECRET}@db/x", "keep": "me"})
    with instance:
        assert scrub_refused_run(instance, run) is None
        kept = instance.get_run_by_id(run.run_id)
        assert kept.tags == {"source": "postgresql://ro:***@db/x", "keep": "me"}
        assert dict(instance.get_run_tags(tag_keys=["source"])) == {"source": {"postgresql://ro:***@db/x"}}
    assert _holding(home, SECRET) == []


def test_a_scrub_that_cannot_write_says_so(fast_tmp, env_kept, monkeypatch, caplog) -> None:
    from dagster_project import coordinator

    monkeypatch.setattr(coordinator, "SCRUB_BUSY_TIMEOUT_S", 1)
    home, instance, run = _stored_whole(fast_tmp)
    writer = sqlite3.connect(home.dagster_home / "history" / "runs.db", isolation_level=None)
    try:
        writer.execute("BEGIN IMMEDIATE")       # another process's write, held past both tries
        with instance, caplog.at_level(logging.ERROR, logger="dagster_project.coordinator"), \
                pytest.raises(RunConfigRefused) as refused:
            instance.run_coordinator.submit_run(dg.SubmitRunContext(run, workspace=None))
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    message = str(refused.value)
    assert "holds a password" in message and "COULD NOT BE SCRUBBED" in message and run.run_id in message
    assert SECRET not in message
    assert any(run.run_id in record.getMessage() for record in caplog.records)
    assert not any(SECRET in record.getMessage() for record in caplog.records)


def test_a_scrub_whose_checkpoint_a_reader_holds_says_so(fast_tmp, env_kept, monkeypatch, caplog) -> None:
    from dagster_project import coordinator

    monkeypatch.setattr(coordinator, "CHECKPOINT_WAIT_S", 0.5)
    home, instance, run = _stored_whole(fast_tmp)
    reader = sqlite3.connect(home.dagster_home / "history" / "runs.db", isolation_level=None)
    try:
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM runs").fetchall()
        with instance, caplog.at_level(logging.ERROR, logger="dagster_project.coordinator"):
            problem = scrub_refused_run(instance, run)
            assert SECRET not in repr(instance.get_run_by_id(run.run_id).run_config)
    finally:
        reader.execute("COMMIT")
        reader.close()
    assert problem and "old bytes stay" in problem and SECRET not in problem
    assert any(run.run_id in record.getMessage() for record in caplog.records)


def test_a_scrub_waits_for_a_reader_that_lets_go(fast_tmp, env_kept) -> None:
    import threading

    home, instance, run = _stored_whole(fast_tmp)
    reader = sqlite3.connect(home.dagster_home / "history" / "runs.db", isolation_level=None, check_same_thread=False)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM runs").fetchall()
    release = threading.Timer(1, lambda: reader.execute("COMMIT"))
    release.start()
    try:
        with instance:
            assert scrub_refused_run(instance, run) is None     # the checkpoint completed once the reader let go
    finally:
        release.join()
        reader.close()
    assert _holding(home, SECRET) == []
