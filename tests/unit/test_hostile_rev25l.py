"""Hostile review rev25l of fix25j (commit d5720d7): the data home's Dagster instance class
(``dagster_project.instance.PickapicInstance``, named by ``instance_class`` in ``HOME/dagster/dagster.yaml``), whose run
storage stores a run holding a credential already scrubbed and tagged ``pickapic/refused``, refuses such a backfill,
pre-creates each run's event database without other accounts' access and waits 30 s for a lock.

Checked by running them and found working: ``pickapic demo`` (2 days, in /tmp), ``pickapic serve`` (webserver and
daemon start on the new instance; a run launched from the launchpad without a credential is queued, started and
stored with its tags untouched; one with a DSN password is answered with the refusal, shown FAILURE with its
config scrubbed and the reason as a tag), the README's ``dagster asset materialize -m dagster_project.definitions
... --partition 2023-02-13`` run from another folder, ``dagster instance info`` / ``dagster instance migrate``, and a
home whose ``dagster.yaml`` the previous version wrote (brought up to date). What is filed here is where the record
the new run storage writes no longer says what happened.
"""
from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from dagster_project.build import use_home
from dagster_project.coordinator import REFUSED_TAG, RunConfigRefused
from formats.home import DataHome


@dg.asset(config_schema={"staging": str})
def rev25l_thing(context) -> int:
    return len(context.op_execution_context.op_config["staging"])


def test_a_run_stored_as_refused_does_not_run_to_success_in_process(fast_tmp: Path, env_kept) -> None:
    home = DataHome(fast_tmp / "home")
    use_home(home)
    with dg.DagsterInstance.from_config(str(home.dagster_home)) as instance:
        assert type(instance).__name__ == "PickapicInstance"
        # fixed the same day: the run storage refuses such a run, nothing stored, so it never runs (a run that ran
        # and is recorded as refused cannot happen)
        with pytest.raises(RunConfigRefused, match="refused at launch, nothing was stored"):
            dg.materialize([rev25l_thing], instance=instance, raise_on_error=False,
                           run_config={"ops": {"rev25l_thing": {"config": {"staging": "s3://bucket/stage?versionId=3"}}}})
        assert [(run.status, run.tags) for run in instance.get_runs()] == []
        # a run without one runs, and is not marked refused
        result = dg.materialize([rev25l_thing], instance=instance,
                                run_config={"ops": {"rev25l_thing": {"config": {"staging": "s3://bucket/stage"}}}})
        stored = instance.get_run_by_id(result.run_id)
        assert result.success and stored.status == dg.DagsterRunStatus.SUCCESS and REFUSED_TAG not in stored.tags


def test_a_plain_link_tag_does_not_refuse_the_run(fast_tmp: Path, env_kept) -> None:
    home = DataHome(fast_tmp / "home")
    use_home(home)
    tags = {"note": "https://tracker.example/browse?id=42", "repo": "ssh://git@git.example/pickapic.git"}
    with dg.DagsterInstance.from_config(str(home.dagster_home)) as instance:
        run = instance.run_storage.add_run(dg.DagsterRun(job_name="rebuild_dataset_job", tags=tags))
        stored = instance.get_run_by_id(run.run_id)
        assert stored.tags == tags
