"""fix33b: the defects of review rev33b (the UI's gate and its webserver, :mod:`dagster_project.webgate`), beyond the
review's own tests: the gate called in process as a raw ASGI app (the helpers of ``test_fix32h``), and a real
uvicorn server (no Dagster: the gate over a small app) on a loopback port in a thread, with uvicorn's defaults
(what a gate under a differently started webserver gets) or with :func:`webgate.server_settings` (what
``python -m dagster_project.webgate`` runs)."""
from __future__ import annotations

import contextlib
import os
import socket
import stat
import tempfile
import threading
import time
import types
from collections.abc import Iterator

import pytest

from tests.unit.test_fix32h import TOKEN, _App, _call, _scope, _session, _status

AUTH = {"x-pickapic-token": TOKEN}


@contextlib.contextmanager
def _server(app, **settings) -> Iterator[int]:
    """``app`` served by a real uvicorn on 127.0.0.1 (its defaults, but ``settings``) in a thread; its port."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=sock.getsockname()[1], log_level="error",
                                           lifespan="off", **settings))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline
        time.sleep(0.02)
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def _get(port: int, headers: dict[str, str] | None = None, path: str = "/server_info") -> int:
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path, headers=headers or {})
        answer = connection.getresponse()
        answer.read()
        return answer.status
    finally:
        connection.close()


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the server closes ``sock`` (EOF or reset, after whatever it answers) within ``seconds``."""
    sock.settimeout(seconds)
    try:
        while sock.recv(4096):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        pass
    return True


# ---------------------------------------------------------------------------------------------------------------
# a relayed request (X-Forwarded-For, -Proto, Forwarded) never passes as its socket's account

@pytest.mark.parametrize("relayed", [{"x-forwarded-for": "127.0.0.1:1"}, {"forwarded": "for=127.0.0.1"},
                                     {"x-forwarded-proto": "https"}])
def test_under_uvicorns_proxy_headers_a_relayed_request_needs_the_token(relayed: dict[str, str]) -> None:
    """uvicorn's defaults (``proxy_headers`` on, trusting 127.0.0.1) rewrite ``scope["client"]`` from
    ``X-Forwarded-For``: the gate, wherever it runs, lets no relayed request in by account, the owner's own socket's
    included; the token still opens it."""
    from dagster_project.webgate import UiGate

    app = _App()
    with _server(UiGate(app, TOKEN)) as port:
        with socket.create_connection(("127.0.0.1", port)) as held:      # the owner's open connection, claimed
            claim = {k: v.replace("127.0.0.1:1", "127.0.0.1:%d" % held.getsockname()[1]) for k, v in relayed.items()}
            assert _get(port) == 200                                    # the owner, plainly
            assert _get(port, claim) == 403
            assert _get(port, {**claim, **AUTH}) == 200
    assert len(app.scopes) == 2


def test_a_session_is_bound_to_relayed_or_to_its_browser_never_both() -> None:
    from dagster_project.webgate import UiGate

    ui = UiGate(_App(), TOKEN)
    relay = {"x-forwarded-for": "192.0.2.9"}
    direct = _session(ui, client=("192.0.2.7", 40000))
    cookie = {"cookie": f"pickapic-ui-3000={direct}"}
    assert _status(_call(ui, _scope(headers=cookie, client=("192.0.2.7", 40001)))) == 200
    # the same address, claimed by a header: not the browser the session was given to
    assert _status(_call(ui, _scope(headers={**cookie, **relay}, client=("192.0.2.7", 40001)))) == 403
    sent = _call(ui, _scope(query=f"token={TOKEN}".encode(), headers=relay, client=("127.0.0.1", 5)))
    proxied = dict(sent[0]["headers"])[b"set-cookie"].decode().split(";", 1)[0].split("=", 1)[1]
    cookie = {"cookie": f"pickapic-ui-3000={proxied}"}
    assert _status(_call(ui, _scope(headers={**cookie, "x-forwarded-for": "198.51.100.1"},
                                    client=("127.0.0.1", 6)))) == 200
    assert _status(_call(ui, _scope(headers=cookie, client=("127.0.0.1", 6)))) == 403


def test_the_gates_webserver_ignores_forwarded_headers() -> None:
    """With :func:`server_settings` (no proxy headers) the app sees the socket's own address whatever the header
    claims."""
    from dagster_project.webgate import UiGate, server_settings

    app = _App()
    with _server(UiGate(app, TOKEN), **server_settings()) as port:
        assert _get(port, {"x-forwarded-for": "203.0.113.5:7", **AUTH}) == 200
        assert _get(port, {"x-forwarded-for": "127.0.0.1:7"}) == 403
    assert app.scopes[0]["client"][0] == "127.0.0.1" and app.scopes[0]["client"][1] != 7


# ---------------------------------------------------------------------------------------------------------------
# GraphQL in the address: parsed only for a request that passes, and bounded

def test_a_strangers_graphql_address_is_never_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    import graphql

    from dagster_project.webgate import UiGate

    def parse(*args, **kwargs):
        raise AssertionError("parsed")

    monkeypatch.setattr(graphql, "parse", parse)
    ui = UiGate(_App(), TOKEN)
    for query in (b"query=%7Bx%7D", b"query=mutation%7Bx%7D", b"query=" + b"a+" * 30000):
        sent = _call(ui, _scope(query=query, client=("192.0.2.7", 1)))
        assert _status(sent) == 403 and b"the token" in sent[1]["body"]


def test_an_address_query_is_bounded_in_length_and_tokens() -> None:
    from dagster_project import webgate

    app = _App()
    ui = webgate.UiGate(app, TOKEN)
    fields = "+".join(["a"] * (webgate._ADDRESS_QUERY_TOKENS // 2))
    assert _status(_call(ui, _scope(query=f"query=%7B{fields}%7D".encode(), headers=AUTH))) == 200
    many = "+".join(["a"] * webgate._ADDRESS_QUERY_TOKENS)            # short enough, too many tokens
    sent = _call(ui, _scope(query=f"query=%7B{many}%7D".encode(), headers=AUTH))
    assert _status(sent) == 403 and b"GraphQL" in sent[1]["body"]
    long = "x" * webgate._ADDRESS_QUERY_MAX                            # one name, over the length
    started = time.monotonic()
    sent = _call(ui, _scope(query=f"query=%7B{long}%7D".encode(), headers=AUTH))
    assert _status(sent) == 403 and b"KiB" in sent[1]["body"] and time.monotonic() - started < 0.5
    # split over two parameters, together over the length: refused too
    half = "x" * (webgate._ADDRESS_QUERY_MAX // 2 + 1)
    assert _status(_call(ui, _scope(query=f"query=%7B{half}%7D&query=%7B{half}%7D".encode(), headers=AUTH))) == 403
    assert len(app.scopes) == 1


def test_a_token_address_with_a_mutation_is_refused_not_redirected() -> None:
    from dagster_project.webgate import UiGate

    app = _App()
    sent = _call(UiGate(app, TOKEN), _scope(query=f"token={TOKEN}&query=mutation%7Bx%7D".encode()))
    assert _status(sent) == 403 and b"GraphQL" in sent[1]["body"] and app.scopes == []


# ---------------------------------------------------------------------------------------------------------------
# the webserver: a bounded request head, and a deadline for it

@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[int, _App]]:
    from dagster_project import webgate

    monkeypatch.setattr(webgate, "HEAD_TIMEOUT_S", 0.5)
    app = _App()
    with _server(webgate.UiGate(app, TOKEN), **webgate.server_settings()) as port:
        yield port, app


def test_a_head_of_many_headers_over_the_bound_is_refused(served) -> None:
    from dagster_project.webgate import HEAD_MAX

    port, app = served
    with socket.create_connection(("127.0.0.1", port), timeout=10) as attack:
        attack.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        answer = b""
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            for i in range(HEAD_MAX // 1000 + 8):
                attack.sendall(b"X-%d: %s\r\n" % (i, b"a" * 1000))
            answer = attack.recv(64)
        assert answer == b"" or answer.startswith(b"HTTP/1.1 400")
        assert _closed_within(attack, 5)
    # a head under the bound (a browser's many cookies) is answered
    assert _get(port, {"cookie": "c=" + "v" * 20000, **AUTH}) == 200
    assert len(app.scopes) == 1


def test_a_connection_that_sends_no_complete_head_is_closed(served) -> None:
    port, _ = served
    with socket.create_connection(("127.0.0.1", port)) as idle:
        assert _closed_within(idle, 5)                  # nothing sent
    with socket.create_connection(("127.0.0.1", port)) as dribbling:
        started = time.monotonic()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            for _ in range(30):                         # a byte each 0.1 s: the deadline is not restarted
                dribbling.sendall(b"G")
                time.sleep(0.1)
        assert _closed_within(dribbling, 5) and time.monotonic() - started < 4


def test_after_an_answer_the_next_head_has_its_deadline_and_a_slow_body_does_not(served) -> None:
    port, app = served
    head = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pickapic-Token: %s\r\n\r\n" % TOKEN.encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as kept:
        kept.sendall(head)
        assert kept.recv(4096).startswith(b"HTTP/1.1 200")
        kept.sendall(b"GET / HTTP/1.1\r\n")             # a second request, never finished
        assert _closed_within(kept, 5)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as upload:
        upload.sendall(b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 4\r\nX-Pickapic-Token: %s\r\n\r\n"
                       % TOKEN.encode())
        time.sleep(1.2)                                 # the head is complete: its body may take its time
        upload.sendall(b"body")
        assert upload.recv(4096).startswith(b"HTTP/1.1 200")
    assert len(app.scopes) == 2


def test_a_websocket_outlives_the_head_deadline() -> None:
    import base64

    from dagster_project import webgate

    async def echo(scope, receive, send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        while (message := await receive())["type"] == "websocket.receive":
            await send({"type": "websocket.send", "text": message["text"]})

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(webgate, "HEAD_TIMEOUT_S", 0.5)
        with _server(webgate.UiGate(echo, TOKEN), **webgate.server_settings()) as port:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as ws:
                key = base64.b64encode(os.urandom(16))
                ws.sendall(b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                           b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\nX-Pickapic-Token: %s\r\n\r\n"
                           % (port, key, TOKEN.encode()))
                assert ws.recv(4096).startswith(b"HTTP/1.1 101")
                time.sleep(1.2)
                mask = os.urandom(4)
                ws.sendall(bytes([0x81, 0x80 | 2]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(b"hi")))
                assert ws.recv(64) == b"\x81\x02hi"


# ---------------------------------------------------------------------------------------------------------------
# the start-up path: Dagster's CLI module set up, the code server's socket in a private folder

def test_install_sets_dagsters_cli_up_once() -> None:
    from dagster_project import webgate

    calls: list[dict] = []
    module = types.SimpleNamespace(run=lambda app, **kwargs: calls.append(kwargs), Config=object)
    cli = types.SimpleNamespace(create_app_from_workspace_process_context=lambda *a, **k: _App(), uvicorn=module)
    webgate.install(cli, TOKEN)
    webgate.install(cli, TOKEN)
    app = cli.create_app_from_workspace_process_context(None, "")
    assert isinstance(app, webgate.UiGate) and isinstance(app.app, _App)              # one gate, one wrapping
    assert cli.uvicorn._module is module and cli.uvicorn.Config is object              # uvicorn: wrapped once
    cli.uvicorn.run(app, host="127.0.0.1", port=3000, log_level="warning", proxy_headers=True)
    assert calls == [{"host": "127.0.0.1", "port": 3000, "log_level": "warning", **webgate.server_settings()}]


def test_main_runs_dagsters_cli_installed_with_a_private_tempdir(fast_tmp, monkeypatch: pytest.MonkeyPatch) -> None:
    import dagster_webserver.cli as webserver_cli
    from dagster._utils import safe_tempfile_path_unmanaged

    from dagster_project import webgate

    seen: dict = {}

    def dagster_main() -> None:
        seen.update(uvicorn=webserver_cli.uvicorn, factory=webserver_cli.create_app_from_workspace_process_context,
                    socket=safe_tempfile_path_unmanaged(), tempdir=tempfile.gettempdir())

    monkeypatch.setattr(webserver_cli, "main", dagster_main)
    monkeypatch.setattr(webserver_cli, "uvicorn", webserver_cli.uvicorn)
    monkeypatch.setattr(webserver_cli, "create_app_from_workspace_process_context",
                        webserver_cli.create_app_from_workspace_process_context)
    monkeypatch.setattr(tempfile, "tempdir", None)
    monkeypatch.setattr("atexit.register", lambda *a, **k: None)
    monkeypatch.setenv("PICKAPIC_HOME", str(fast_tmp / "home"))
    monkeypatch.setattr("sys.argv", ["webgate"])
    old = os.umask(0o002)
    try:
        webgate.main()
    finally:
        os.umask(old)
    try:
        assert isinstance(seen["uvicorn"], webgate._GatedUvicorn)
        assert seen["factory"].__qualname__.startswith("gated_app_factory")
        folder = seen["tempdir"]
        assert os.path.dirname(seen["socket"]) == folder and os.path.basename(folder).startswith("pickapic-ui-")
        info = os.stat(folder)
        assert stat.S_IMODE(info.st_mode) == 0o700 and info.st_uid == os.geteuid()
    finally:
        import shutil

        shutil.rmtree(seen.get("tempdir", ""), ignore_errors=True)
