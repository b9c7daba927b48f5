"""The run storage's refusal of a run holding a credential (review rev25l, twenty-sixth session): what a run's tags
may hold (``formats.text.tag_holds_credential``), the check of tags added to a stored run, and that a refused
in-process run leaves no trace in the home's Dagster folder."""
from __future__ import annotations

import time
from pathlib import Path

import dagster as dg
import pytest

from dagster_project.build import use_home
from dagster_project.coordinator import REFUSED_TAG, RunConfigRefused
from formats.home import DataHome
from formats.text import tag_holds_credential

SECRET = "Fix26aSecret"


@pytest.mark.parametrize("value", [
    f"postgresql://ro:{SECRET}@db.internal/pickapic",
    "https://ghp_0123456789abcdefghij@github.com/org/repo.git",
    "https://0123456789abcdefghij0123@github.com/org/repo.git",
    "https://account.blob.core.windows.net/c/x?sv=2022-11-02&sp=r&sig=abc%2Bdef",
    "https://bucket.s3.amazonaws.com/k?X-Amz-Algorithm=AWS4&X-Amz-Signature=abcdef",
    "see https://api.example/v1?access_token=abc for it",
    "https://h/x?id=1#frag https://h/y?token=2",
    "https://h/x?%74oken=2",                              # a percent-encoded name is decoded first
    "--s3_secret_access_key=abc",
])
def test_a_tag_holding_a_credential_is_one(value) -> None:
    assert tag_holds_credential(value)


@pytest.mark.parametrize("value", [
    "https://tracker.example/browse?id=42",
    "ssh://git@git.example/pickapic.git",
    "https://h/x?versionId=3&page=2",
    "https://user@h/x",
    "nightly", "", "a b c", "--dry-run", "2023-02-13",
])
def test_a_plain_label_or_link_is_none(value) -> None:
    assert not tag_holds_credential(value)


@pytest.mark.parametrize("value", ["a://x?" * 40000, "a://x?#" * 40000, "a://x" * 40000 + "?id=1",
                                   "a://" + "b@" * 40000, ("a://x?y=1#") * 40000, "a://:" * 40000])
def test_the_tag_check_is_linear(value) -> None:
    started = time.thread_time()   # CPU time: a loaded CI machine does not inflate it
    tag_holds_credential(value)
    assert time.thread_time() - started < 3.0     # quadratic: minutes for these 200-280 KB values


def _holding(home: DataHome, text: str) -> list[str]:
    return sorted(str(path.relative_to(home.dagster_home)) for path in home.dagster_home.rglob("*")
                  if path.is_file() and text.encode() in path.read_bytes())


@dg.asset(config_schema={"staging": str})
def fix26a_thing(context) -> int:
    return len(context.op_execution_context.op_config["staging"])


def test_an_in_process_run_holding_a_password_is_refused_and_leaves_nothing(fast_tmp: Path, env_kept) -> None:
    home = DataHome(fast_tmp / "home")
    use_home(home)
    with dg.DagsterInstance.from_config(str(home.dagster_home)) as instance:
        with pytest.raises(RunConfigRefused, match="nothing was stored") as caught:
            dg.materialize([fix26a_thing], instance=instance,
                           run_config={"ops": {"fix26a_thing": {"config": {"staging": f"s3://AK:{SECRET}@bucket/x"}}}})
        assert SECRET not in str(caught.value)
        with pytest.raises(RunConfigRefused, match="the tag 'source' holds a credential"):
            dg.materialize([fix26a_thing], instance=instance, tags={"source": f"postgresql://ro:{SECRET}@db/x"},
                           run_config={"ops": {"fix26a_thing": {"config": {"staging": "s3://bucket/x"}}}})
        assert instance.get_runs() == []
        # the same run with a plain link tag runs, its tag kept as given
        result = dg.materialize([fix26a_thing], instance=instance, tags={"note": "https://tracker.example/b?id=42"},
                                run_config={"ops": {"fix26a_thing": {"config": {"staging": "s3://bucket/x"}}}})
        assert result.success
        assert instance.get_run_by_id(result.run_id).tags["note"] == "https://tracker.example/b?id=42"
    assert _holding(home, SECRET) == []


def test_tags_added_to_a_stored_run_are_checked(fast_tmp: Path, env_kept) -> None:
    home = DataHome(fast_tmp / "home")
    use_home(home)
    with dg.DagsterInstance.from_config(str(home.dagster_home)) as instance:
        run = instance.run_storage.add_run(dg.DagsterRun(job_name="rebuild_dataset_job", tags={"a": "b"}))
        with pytest.raises(RunConfigRefused, match="tags refused, nothing was stored.*'source' holds a credential"):
            instance.add_run_tags(run.run_id, {"source": f"postgresql://ro:{SECRET}@db/x"})
        # the refusal mark is dropped, as a new run's is (fix26b: Dagster's reindex adds a run's whole tag set again)
        instance.add_run_tags(run.run_id, {REFUSED_TAG: "made up"})
        instance.add_run_tags(run.run_id, {"note": "https://tracker.example/b?id=42"})
        assert instance.get_run_by_id(run.run_id).tags == {"a": "b", "note": "https://tracker.example/b?id=42"}
    assert _holding(home, SECRET) == []
