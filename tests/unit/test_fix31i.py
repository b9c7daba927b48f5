"""fix31i: the defects of review rev31i (``tests/unit/test_hostile_rev31i.py``) fixed, and their neighbours.

- a build passes on only the warnings the project's own steps log (``steplog.step_warning``: the project's tag,
  at WARNING), never Dagster's messages about the steps it skipped after a failure, its other warnings, nor a
  step's errors (``build._step_warnings``, ``steplog.project_warning``);
- a warning whose text the build's error line states already is not printed again (``build._tell``);
- ``pickapic demo`` gives its build the same ``warn`` as ``pickapic build`` (``steplog.stderr_warner``).
"""
from __future__ import annotations

import logging
import types

import dagster as dg
import pytest

from dagster_project.steplog import MARK, project_warning, stderr_warner, step_warner, step_warning


class _Log:
    def __init__(self) -> None:
        self.said: list[tuple[str, str]] = []

    def warning(self, message: str) -> None:
        self.said.append(("warning", message))


def test_only_a_tagged_warning_is_the_projects_own():
    assert project_warning(logging.WARNING, MARK + "a note") == "a note"
    assert project_warning("WARNING", MARK + "a note") == "a note"               # a level stored as its name
    assert project_warning(logging.WARNING, "Dependencies for step x failed: ['y']. Not executing.") is None
    assert project_warning(logging.ERROR, MARK + "not enough data to publish: too few users") is None
    assert project_warning(logging.CRITICAL, MARK + "x") is None
    assert project_warning(logging.INFO, MARK + "x") is None
    assert project_warning(logging.WARNING, MARK) is None and project_warning(logging.WARNING, "") is None
    assert project_warning(logging.WARNING, None) is None
    assert project_warning(logging.WARNING, "a note " + MARK) is None               # the tag begins the text


def test_step_warning_and_the_warner_tag_each_message():
    log = _Log()
    step_warning(log, "one")
    step_warner(log)("two")
    assert log.said == [("warning", MARK + "one"), ("warning", MARK + "two")]


def test_the_staleness_note_is_a_project_warning():
    from dagster_project.staleness import settled_version

    log = _Log()
    assert settled_version(types.SimpleNamespace(log=log), "a", "b") == "a"
    assert len(log.said) == 1 and project_warning(logging.WARNING, log.said[0][1]).startswith("the inputs' recorded")
    assert settled_version(types.SimpleNamespace(log=log), "a", "a") == "a" and len(log.said) == 1


def test_a_failed_runs_warnings_are_the_steps_own_only():
    from dagster_project.build import QUIET_LOGS, _step_warnings

    @dg.op
    def noisy(context):
        step_warning(context.log, "the project's note")
        context.log.warning("an untagged warning (as Dagster's own are)")
        context.log.error(MARK + "an error, tagged or not, is the error line's job")
        step_warning(context.log, "the project's note")
        raise RuntimeError("the step fails")

    @dg.op
    def after(context, value):
        step_warning(context.log, "never runs")

    @dg.op
    def later(context, value):
        pass

    @dg.job
    def job():
        later(after(noisy()))

    with dg.DagsterInstance.ephemeral() as instance:
        result = job.execute_in_process(instance=instance, run_config=QUIET_LOGS, raise_on_error=False)
        assert not result.success
        logged = [e.user_message for e in instance.all_logs(result.run_id) if e.dagster_event is None]
        assert any("Not executing." in m for m in logged), logged    # Dagster's own, at ERROR: the defect's source
        assert _step_warnings(instance, result.run_id) == ["the project's note"]


def test_a_warning_the_error_states_is_told_once():
    from dagster_project.build import BuildError, BuildInterrupted, NotEnoughDataError, _tell

    said: list[str] = []
    error = NotEnoughDataError("not enough data to publish: too few users: the home has 3. Nothing was published")
    _tell(said.append, ["not enough data to publish: too few users: the home has 3", "another note"], error)
    assert said == ["another note"]
    said.clear()
    _tell(said.append, ["a note", "x failed"], BuildError("job x failed (run 1): step: boom"))
    assert said == ["a note"]
    said.clear()
    _tell(said.append, ["2", "a note"], BuildInterrupted(2))       # an interruption states no warning's text
    assert said == ["2", "a note"]
    said.clear()
    _tell(said.append, ["a note"], None)
    assert said == ["a note"]


def test_stderr_warner_prints_each_message_once_shown_not_acting(capsys):
    warn = stderr_warner()
    warn("a \x1b[2Jnote")
    warn("a \x1b[2Jnote")
    warn("another")
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and err[0].startswith("warning: a ") and "\x1b" not in err[0] and err[1] == "warning: another"
    stderr_warner()("another")           # a new command, a new record of what was shown
    assert capsys.readouterr().err == "warning: another\n"


def test_demo_gives_its_build_a_warn(tmp_path, monkeypatch, capsys):
    import argparse

    import dagster_project.build as build_module
    from dagster_project.demo import run_demo

    class Stop(Exception):
        pass

    def build(home, **kwargs):
        assert kwargs.get("warn") is not None, "the demo's build has no warn"
        kwargs["warn"]("a step's note")
        kwargs["warn"]("a step's note")
        raise Stop

    monkeypatch.setattr(build_module, "build", build)
    args = argparse.Namespace(home=str(tmp_path / "home"), days=1, users=4, rankings_per_day=10, image_size=32,
                              seed=1, train_steps=None)
    with pytest.raises(Stop):
        run_demo(args)
    assert capsys.readouterr().err.count("warning: a step's note") == 1
