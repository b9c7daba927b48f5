"""fix32h: the defects of review rev32h (another local account and the network next to a running pipeline), beyond
the review's own tests: the UI's gate (:mod:`dagster_project.webgate`) called in process as a raw ASGI app, with real
loopback sockets for its owner check; the UI token's file; the Beam servers' loopback binding; the simulator's
refusal of a DSN with a password; the compute logs' mode (:class:`dagster_project.instance.PrivateComputeLogManager`
and the sweep of old ones)."""
from __future__ import annotations

import asyncio
import os
import socket
import stat
from pathlib import Path

import pytest

from formats.home import DataHome

TOKEN = "T" * 43


# ---------------------------------------------------------------------------------------------------------------
# the UI's gate

class _App:
    def __init__(self) -> None:
        self.scopes: list[dict] = []

    async def __call__(self, scope, receive, send) -> None:
        self.scopes.append(dict(scope))
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})
        elif scope["type"] == "websocket":
            await send({"type": "websocket.accept"})


def _call(app, scope: dict) -> list[dict]:
    sent: list[dict] = []
    incoming = [{"type": "websocket.connect"} if scope["type"] == "websocket" else
                {"type": "http.request", "body": b"", "more_body": False}]

    async def receive():
        return incoming.pop(0) if incoming else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent


def _scope(kind: str = "http", *, method: str = "GET", path: str = "/graphql", query: bytes = b"",
           headers: dict[str, str] | None = None, client=("192.0.2.7", 40000), server=("127.0.0.1", 3000)) -> dict:
    given = {"host": f"{server[0]}:{server[1]}", **(headers or {})}
    scope = {"type": kind, "path": path, "root_path": "", "query_string": query, "client": client, "server": server,
             "headers": [(k.encode(), v.encode()) for k, v in given.items()], "scheme": "http"}
    if kind == "http":
        scope["method"] = method
    return scope


def _session(ui, **scope) -> str:
    """The cookie value the gate gives a browser (of ``scope``'s client) for ``?token=`` (fix32j: a random session
    value bound to that browser, never the token itself)."""
    sent = _call(ui, _scope(query=f"token={TOKEN}".encode(), **scope))
    cookie = dict(sent[0]["headers"])[b"set-cookie"].decode()
    name, value = cookie.split(";", 1)[0].split("=", 1)
    assert name == f"pickapic-ui-{scope.get('server', ('', 3000))[1]}" and value != TOKEN
    return value


def _status(sent: list[dict]) -> int | str:
    first = sent[0]
    return first["status"] if first["type"] == "http.response.start" else first["type"]


@pytest.fixture
def gate():
    from dagster_project.webgate import UiGate

    app = _App()
    return UiGate(app, TOKEN), app


@pytest.fixture
def connection():
    """A real loopback TCP connection of this process: (client address, server address)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        with socket.create_connection(listener.getsockname()) as client:
            accepted, _ = listener.accept()
            with accepted:
                yield client.getsockname(), listener.getsockname()


def test_the_owners_own_loopback_connection_passes_without_a_token(gate, connection) -> None:
    from dagster_project.webgate import peer_uid

    ui, app = gate
    client, server = connection
    assert peer_uid(client, server) == os.geteuid()
    assert _status(_call(ui, _scope(client=client, server=server))) == 200
    assert _status(_call(ui, _scope(client=client, server=server, headers={"host": f"localhost:{server[1]}"}))) == 200
    # the same connection to another site's name (DNS rebinding to 127.0.0.1): refused
    assert _status(_call(ui, _scope(client=client, server=server, headers={"host": "evil.example:3000"}))) == 403
    # a connection of this account as another uid would see it: refused
    from dagster_project.webgate import UiGate

    assert _status(_call(UiGate(app, TOKEN, uid=os.geteuid() + 1), _scope(client=client, server=server))) == 403
    assert len(app.scopes) == 2


def test_peer_uid_is_none_for_no_such_connection() -> None:
    from dagster_project.webgate import peer_uid

    assert peer_uid(("127.0.0.1", 1), ("127.0.0.1", 2)) is None
    assert peer_uid(("not an address", 1), ("127.0.0.1", 2)) is None


def test_a_stranger_gets_403_and_the_token_lets_it_in(gate) -> None:
    ui, app = gate
    sent = _call(ui, _scope())
    assert _status(sent) == 403 and b"token" in sent[1]["body"] and TOKEN.encode() not in sent[1]["body"]
    assert _status(_call(ui, _scope(query=b"token=wrong"))) == 403
    assert _status(_call(ui, _scope(headers={"authorization": "token wrong"}))) == 403
    assert app.scopes == []
    assert _status(_call(ui, _scope(headers={"authorization": f"token {TOKEN}"}))) == 200
    assert _status(_call(ui, _scope(headers={"x-pickapic-token": TOKEN}))) == 200
    session = _session(ui)
    assert _status(_call(ui, _scope(headers={"cookie": f"other=1; pickapic-ui-3000={session}"}))) == 200
    # the cookie of another port's UI is not this one's; the token itself in a cookie opens nothing (fix32j)
    assert _status(_call(ui, _scope(headers={"cookie": f"pickapic-ui-3001={session}"}))) == 403
    assert _status(_call(ui, _scope(headers={"cookie": f"pickapic-ui-3000={TOKEN}"}))) == 403
    assert len(app.scopes) == 3


def test_the_token_in_the_address_becomes_a_strict_cookie_and_never_reaches_dagster(gate) -> None:
    ui, app = gate
    sent = _call(ui, _scope(path="/runs", query=f"a=1&token={TOKEN}".encode()))
    assert _status(sent) == 303 and app.scopes == []
    headers = dict(sent[0]["headers"])
    assert headers[b"location"] == b"/runs?a=1"
    cookie = headers[b"set-cookie"].decode()
    assert cookie.startswith("pickapic-ui-3000=") and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert TOKEN not in cookie      # a random session value (fix32j)
    # a POST with it passes, the token taken out of what Dagster (and a log line) sees
    assert _status(_call(ui, _scope(method="POST", query=f"token={TOKEN}&b=2".encode()))) == 200
    assert app.scopes[-1]["query_string"] == b"b=2"


def test_another_sites_page_is_refused_even_with_the_cookie(gate) -> None:
    ui, app = gate
    cookie = {"cookie": f"pickapic-ui-3000={_session(ui)}"}
    assert _status(_call(ui, _scope(method="POST", headers={**cookie, "origin": "https://evil.example"}))) == 403
    assert _status(_call(ui, _scope(method="POST", headers={**cookie, "origin": "null"}))) == 403
    assert _status(_call(ui, _scope(method="POST", headers={**cookie, "origin": "http://127.0.0.1:3000"}))) == 200


def test_websockets_pass_the_same_gate(gate) -> None:
    ui, app = gate
    assert _call(ui, _scope("websocket")) == [{"type": "websocket.close", "code": 1008}]
    assert _call(ui, _scope("websocket", headers={"origin": "http://evil.example"}))[0]["type"] == "websocket.close"
    assert app.scopes == []
    assert _call(ui, _scope("websocket", headers={"cookie": f"pickapic-ui-3000={_session(ui)}",
                                                  "origin": "http://127.0.0.1:3000"}))[0]["type"] == "websocket.accept"


def test_lifespan_passes_through(gate) -> None:
    ui, app = gate

    async def run() -> None:
        await ui({"type": "lifespan"}, None, None)

    asyncio.run(run())
    assert app.scopes == [{"type": "lifespan"}]


def test_the_ui_token_file_is_private_kept_and_replaced_when_loose(tmp_path: Path) -> None:
    from dagster_project.webgate import TokenFileError, token_file, ui_token

    home = DataHome(tmp_path / "home")
    previous = os.umask(0)
    try:
        token = ui_token(home)
    finally:
        os.umask(previous)
    path = token_file(home)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and len(token) >= 40
    assert ui_token(home) == token
    assert [p.name for p in path.parent.iterdir() if "tmp" in p.name] == []
    path.chmod(0o640)                           # the group may have read it: a new one
    fresh = ui_token(home)
    assert fresh != token and stat.S_IMODE(path.stat().st_mode) == 0o600
    path.write_text("not a token\n")
    assert ui_token(home) not in (fresh, "not a token")
    path.unlink()
    target = tmp_path / "elsewhere"
    target.write_text("keep\n")
    path.symlink_to(target)
    with pytest.raises(TokenFileError, match="remove it"):
        ui_token(home)
    assert target.read_text() == "keep\n" and path.is_symlink()


def test_the_address_carries_the_token_only_to_a_terminal(tmp_path: Path) -> None:
    from dagster_project.webgate import announce, ui_token

    home = DataHome(tmp_path / "home")

    class Terminal:
        def __init__(self, tty: bool) -> None:
            self.tty = tty

        def isatty(self) -> bool:
            return self.tty

    token = ui_token(home)
    assert announce(home, "127.0.0.1", 3000, Terminal(True)) == f"http://127.0.0.1:3000/?token={token}"
    logged = announce(home, "127.0.0.1", 3000, Terminal(False))
    assert token not in logged and "ui.token" in logged
    assert announce(home, "::1", 3000, Terminal(True)).startswith("http://[::1]:3000/?token=")


def test_serve_and_ui_start_the_gated_webserver() -> None:
    from dagster_project.serve import WEBSERVER_MODULE, commands
    from dagster_project.webgate import UiGate, gated_app_factory

    assert commands("127.0.0.1", 3000)["webserver"][1:3] == ["-m", WEBSERVER_MODULE]
    assert WEBSERVER_MODULE == "dagster_project.webgate"
    made = gated_app_factory(lambda *args, **kwargs: ("dagster", args, kwargs), TOKEN)("ctx", "", lifespan=None)
    assert isinstance(made, UiGate) and made.app == ("dagster", ("ctx", ""), {"lifespan": None})


# ---------------------------------------------------------------------------------------------------------------
# Beam's servers

def test_beams_grpc_servers_bind_loopback_only() -> None:
    from pipelines.features.beamworker import _LoopbackGrpc, loopback_address, worker_handlers

    from apache_beam.utils import thread_pool_executor  # isort: skip - after beamworker's quiet Beam import

    assert loopback_address("[::]:0") == "localhost:0" and loopback_address("0.0.0.0:5") == "localhost:5"
    assert loopback_address("127.0.0.1:7") == "127.0.0.1:7"
    assert isinstance(worker_handlers.grpc, _LoopbackGrpc)
    server = worker_handlers.grpc.server(thread_pool_executor.shared_unbounded_instance())
    port = server.add_insecure_port("[::]:0")
    server.start()
    try:
        listening = set()
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                address, at = fields[1].split(":")
                if fields[3] == "0A" and int(at, 16) == port:
                    listening.add(address)
        assert listening and listening <= {"0100007F", "00000000000000000000000001000000",
                                           "0000000000000000FFFF00000100007F"}, listening
    finally:
        server.stop(0)


# ---------------------------------------------------------------------------------------------------------------
# the simulator's DSN

@pytest.mark.parametrize("dsn", [
    "host=db dbname=app user=u password=Pw-Secret-1",
    "postgresql://u:Pw-Secret-1@db/app",
    "host=db dbname=app sslpassword=Pw-Secret-1",
    "host=db dbname='host=x password=Pw-Secret-1'",
])
def test_the_simulator_refuses_a_dsn_with_a_password_without_showing_it(dsn: str, tmp_path: Path, capsys) -> None:
    from simulator.__main__ import main

    with pytest.raises(SystemExit) as stop:
        main(["--home", str(tmp_path / "home"), "--days", "1", "--no-images", "--quiet", "--to-postgres", dsn])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "password" in err and "PGPASSWORD" in err and "Pw-Secret-1" not in err
    assert not (tmp_path / "home").exists()


def test_the_simulators_dsn_check_lets_a_dsn_without_a_password_through() -> None:
    from simulator.cli import check_dsn_argument

    check_dsn_argument(None)
    check_dsn_argument("host=/nonexistent dbname=app user=u")
    check_dsn_argument("postgresql://u@db:5432/app")
    with pytest.raises(ValueError, match="not a connection string") as refused:
        check_dsn_argument("host=db password='Pw-Secret-1")
    assert "Pw-Secret-1" not in str(refused.value)


# ---------------------------------------------------------------------------------------------------------------
# compute logs

def test_compute_logs_are_created_without_other_accounts_bits(tmp_path: Path) -> None:
    from dagster._core.storage.compute_log_manager import ComputeIOType

    from dagster_project.instance import PrivateComputeLogManager

    manager = PrivateComputeLogManager(str(tmp_path / "storage"))
    old = tmp_path / "storage" / "run1" / "compute_logs" / "old.err"
    old.parent.mkdir(parents=True)
    old.write_text("before\n")
    old.chmod(0o644)
    for umask, expected in ((0o022, 0o640), (0o002, 0o660), (0o077, 0o600)):
        previous = os.umask(umask)
        try:
            with manager.capture_logs(["run1", "compute_logs", f"step{umask}"]):
                print("a line of the step")
            with manager.open_log_stream(["run1", "compute_logs", f"tick{umask}"], ComputeIOType.STDERR) as stream:
                stream.write("a tick's line\n")
        finally:
            os.umask(previous)
        folder = tmp_path / "storage" / "run1" / "compute_logs"
        for name in (f"step{umask}.out", f"step{umask}.err", f"tick{umask}.err"):
            assert stat.S_IMODE((folder / name).stat().st_mode) == expected, (name, oct(umask))
    assert "a tick's line" in (folder / "tick18.err").read_text()
    with manager.capture_logs(["run1", "compute_logs", "old"]):
        pass
    assert stat.S_IMODE(old.stat().st_mode) == 0o640 and old.read_text().startswith("before")
    manager.dispose()


def test_the_homes_instance_uses_private_compute_logs_and_sweeps_old_ones(fast_tmp: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import dagster as dg

    from dagster_project.build import use_home
    from dagster_project.instance import PrivateComputeLogManager

    for name in ("DAGSTER_HOME", "PICKAPIC_HOME"):
        monkeypatch.delenv(name, raising=False)
    home = DataHome(fast_tmp / "home")
    logs = home.dagster_home / "storage" / "some-run" / "compute_logs"
    logs.mkdir(parents=True)
    for name in ("step.err", "step.out", "notes.txt"):
        (logs / name).write_text("x\n")
        (logs / name).chmod(0o644)
    outside = fast_tmp / "outside.err"
    outside.write_text("not the home's\n")
    outside.chmod(0o644)
    (logs / "linked.err").symlink_to(outside)
    previous = os.umask(0o022)
    try:
        use_home(home)
    finally:
        os.umask(previous)
    modes = {name: stat.S_IMODE((logs / name).stat().st_mode) for name in ("step.err", "step.out", "notes.txt")}
    assert modes == {"step.err": 0o640, "step.out": 0o640, "notes.txt": 0o644}
    assert stat.S_IMODE(outside.stat().st_mode) == 0o644      # never through a link
    with dg.DagsterInstance.from_config(str(home.dagster_home)) as instance:
        assert isinstance(instance.compute_log_manager, PrivateComputeLogManager)
