"""Hostile review 15: the launch coordinator seen through a real webserver, as `pickapic ui` serves it."""
from __future__ import annotations

import pytest

from tests.e2e.test_launch_refusal import _launch, webserver  # noqa: F401 - the module's webserver fixture


@pytest.mark.xfail(strict=True, reason="rev15: CheckedRunCoordinator is a QueuedRunCoordinator; `pickapic ui` runs no "
                                        "daemon, so a good run launched from its launchpad stays QUEUED forever")
def test_a_good_run_launched_from_pickapic_ui_without_a_daemon_is_started_not_left_queued(webserver):
    # the fixture's webserver is what `pickapic ui` (no --with-daemon) runs: dagster_webserver on the home, no daemon;
    # before the coordinator a launch there started the run at once (Dagster's default coordinator)
    port, _home = webserver
    result = _launch(port, {"ops": {"published_dataset": {"config": {"keep_versions": 2}}}})
    assert result["__typename"] == "LaunchRunSuccess", result
    assert result["run"]["status"] != "QUEUED", "nothing dequeues it: `pickapic ui` starts no dagster-daemon"
