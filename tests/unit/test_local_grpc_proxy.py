"""A proxy in the environment ($http_proxy, $https_proxy, $grpc_proxy) never carries this machine's own connections.

Found by running the tests with ``http_proxy`` set (CI audit, December 6, 2026): gRPC sends a channel to
``localhost`` through the proxy unless ``$no_grpc_proxy`` (else ``$no_proxy``) lists it, so the feature stage's
Beam workers never reached their runner and the stage, and with it ``pickapic build``, hung for good.
``pipelines/__init__.py`` adds the loopback names to the list gRPC reads.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from test_features_fixtures import png, write_day

from formats.home import DataHome

REPO = Path(__file__).resolve().parents[2]
DAY = "2023-03-01"


def _closed_port() -> int:
    """A local port nothing listens on: a proxy there refuses every connection."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _env(**extra: str) -> dict[str, str]:
    names = ("http_proxy", "https_proxy", "grpc_proxy", "no_proxy", "no_grpc_proxy", "HTTP_PROXY", "HTTPS_PROXY",
             "NO_PROXY")
    env = {k: v for k, v in os.environ.items() if k not in names}
    env.update(PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]), **extra)
    return env


def test_the_feature_stages_workers_reach_their_runner_past_a_proxy(tmp_path: Path) -> None:
    home = DataHome(tmp_path / "home")
    write_day(home, DAY, {"a": png(1, (64, 64)), "b": png(2, (64, 64))})
    proxy = f"http://127.0.0.1:{_closed_port()}"
    env = _env(http_proxy=proxy, https_proxy=proxy, grpc_proxy=proxy, no_proxy="proxy-exempt.example")
    try:
        done = subprocess.run([sys.executable, "-m", "pipelines.features", "--home", str(home.root), "--day", DAY,
                               "--workers", "2", "--in-process-below", "0"], capture_output=True, text=True, env=env,
                              cwd=REPO, timeout=120)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError("the feature stage hung with a proxy set (its workers' channels to the runner on "
                             f"localhost went to {proxy})") from exc
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout[done.stdout.index("\n{") + 1:])
    assert (report["processed"], report["workers"]) == (2, 2)


def test_the_hosts_a_user_exempted_stay_exempted_and_loopback_is_added() -> None:
    probe = "import os, pipelines; print(os.environ['no_grpc_proxy'])"
    for extra, expected in (({}, "localhost,127.0.0.1,::1"),
                            ({"no_proxy": "corp.example, localhost"}, "corp.example,localhost,127.0.0.1,::1"),
                            ({"no_proxy": "corp.example", "no_grpc_proxy": "grpc.example"},   # gRPC's own list wins
                             "grpc.example,localhost,127.0.0.1,::1")):
        done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=_env(**extra),
                              cwd=REPO, timeout=120, check=True)
        assert done.stdout.strip() == expected, extra
