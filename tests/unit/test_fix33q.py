"""fix33q: the defects of review rev33q (the UI's gate, :mod:`dagster_project.webgate`), beyond the review's own
tests: a relayed session bound to the relaying socket's sender (account or address), the ``Secure`` rule of a
cookie given through a proxy, and ``websockets``' head limits raised to the gate's :data:`HEAD_MAX`. The gate in
process (``test_fix32h``'s helpers) and under a real uvicorn with :func:`webgate.server_settings`
(``test_fix33b``'s ``_server``)."""
from __future__ import annotations

import base64
import contextlib
import os
import socket

import pytest

from tests.unit.test_fix32h import TOKEN, _App, _call, _scope, _status
from tests.unit.test_fix33b import _get, _server


def _cookie(sent: list[dict]) -> str | None:
    value = dict(sent[0]["headers"]).get(b"set-cookie")
    return None if value is None else value.decode()


# ---------------------------------------------------------------------------------------------------------------
# a relayed session: bound to the relaying socket's sender too

def test_a_relayed_session_holds_only_from_the_relaying_address() -> None:
    """A proxy beyond loopback (``--host``): the session given through it holds for whatever it relays (any
    ``X-Forwarded-For``, another connection), not for another address claiming a proxy relays it, nor for the
    proxy's own address without the header."""
    from dagster_project.webgate import UiGate

    ui = UiGate(_App(), TOKEN)
    proxy = "192.0.2.9"
    sent = _call(ui, _scope(query=f"token={TOKEN}".encode(), headers={"x-forwarded-for": "198.51.100.7"},
                            client=(proxy, 40000)))
    value = _cookie(sent).split(";", 1)[0].split("=", 1)[1]
    cookie = {"cookie": f"pickapic-ui-3000={value}"}
    relay = {"x-forwarded-for": "203.0.113.1"}
    assert _status(_call(ui, _scope(headers={**cookie, **relay}, client=(proxy, 40001)))) == 200
    assert _status(_call(ui, _scope(headers={**cookie, "forwarded": "for=203.0.113.1"}, client=(proxy, 2)))) == 200
    assert _status(_call(ui, _scope(headers={**cookie, **relay}, client=("192.0.2.10", 40001)))) == 403
    assert _status(_call(ui, _scope(headers=cookie, client=(proxy, 40001)))) == 403


def test_a_relayed_session_over_loopback_is_bound_to_the_proxys_account(monkeypatch: pytest.MonkeyPatch) -> None:
    """Over loopback the relaying socket's account decides (its address, 127.0.0.1, is every local account's): a
    socket of another account claiming ``X-Forwarded-For`` gets 403, another connection of the proxy's account
    passes. (``peer_uid`` by port here; the review's test runs a real ``nobody`` neighbour as root.)"""
    from dagster_project import webgate

    owners = {5: 1000, 6: 1000, 7: 1001}
    monkeypatch.setattr(webgate, "peer_uid", lambda client, server: owners.get(client[1]))
    ui = webgate.UiGate(_App(), TOKEN, uid=1000)
    relay = {"x-forwarded-for": "198.51.100.7"}
    sent = _call(ui, _scope(query=f"token={TOKEN}".encode(), headers=relay, client=("127.0.0.1", 5)))
    assert _status(sent) == 303
    cookie = {"cookie": _cookie(sent).split(";", 1)[0]}
    assert _status(_call(ui, _scope(headers={**cookie, **relay}, client=("127.0.0.1", 6)))) == 200
    assert _status(_call(ui, _scope(headers={**cookie, **relay}, client=("127.0.0.1", 7)))) == 403
    assert _status(_call(ui, _scope(headers={**cookie, **relay}, client=("127.0.0.1", 8)))) == 403  # not found
    assert _status(_call(ui, _scope(headers=cookie, client=("127.0.0.1", 7)))) == 403


def test_a_relayed_session_passes_on_the_proxys_next_connection_under_uvicorn() -> None:
    """A real proxy opens a new connection per request (or several): the session holds on every connection of the
    proxy's account, with any forwarded address."""
    from dagster_project import webgate

    app = _App()
    with _server(webgate.UiGate(app, TOKEN, uid=-1), **webgate.server_settings()) as port:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as proxy:
            proxy.sendall(b"GET /?token=%s HTTP/1.1\r\nHost: ui.example\r\nX-Forwarded-For: 198.51.100.7\r\n"
                          b"X-Forwarded-Proto: https\r\nConnection: close\r\n\r\n" % TOKEN.encode())
            answer = b""
            while chunk := proxy.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 303")
        line = next(line for line in answer.split(b"\r\n") if line.lower().startswith(b"set-cookie:")).decode()
        assert "; Secure" in line
        cookie = line.split(":", 1)[1].strip().split(";", 1)[0]
        assert _get(port, {"cookie": cookie, "x-forwarded-for": "203.0.113.2", "host": "ui.example"}) == 200
        assert _get(port, {"cookie": cookie, "host": "ui.example"}) == 403       # not relayed: not that session
    assert len(app.scopes) == 1


# ---------------------------------------------------------------------------------------------------------------
# Secure: where the request came over HTTPS, a relaying proxy saying so too

@pytest.mark.parametrize(("headers", "secure"), [
    ({"x-forwarded-proto": "HTTPS"}, True),
    ({"x-forwarded-proto": "http, https"}, True),                     # a chain: any of it
    ({"x-forwarded-proto": "http"}, False),
    ({"x-forwarded-for": "198.51.100.7"}, False),
    ({"forwarded": 'for=198.51.100.7;proto="https"'}, True),
    ({"forwarded": "for=198.51.100.7, for=192.0.2.1; Proto=HTTPS"}, True),
    ({"forwarded": "for=198.51.100.7;proto=http"}, False),
    ({"forwarded": "for=198.51.100.7;by=https"}, False),
    ({"forwarded": "for=198.51.100.7;proto=httpsx"}, False),
    ({}, False),
])
def test_the_secure_flag_follows_what_a_relaying_proxy_says(headers: dict[str, str], secure: bool) -> None:
    from dagster_project.webgate import UiGate

    sent = _call(UiGate(_App(), TOKEN), _scope(query=f"token={TOKEN}".encode(), headers=headers))
    assert _status(sent) == 303
    assert ("; Secure" in _cookie(sent)) is secure


def test_an_https_scheme_still_gives_a_secure_cookie_and_the_owner_still_gets_none(monkeypatch) -> None:
    from dagster_project import webgate

    scope = _scope(query=f"token={TOKEN}".encode())
    scope["scheme"] = "https"
    assert "; Secure" in _cookie(_call(webgate.UiGate(_App(), TOKEN), scope))
    monkeypatch.setattr(webgate, "peer_uid", lambda client, server: 1000)
    owner = _scope(query=f"token={TOKEN}".encode(), client=("127.0.0.1", 5), headers={"host": "127.0.0.1:3000"})
    sent = _call(webgate.UiGate(_App(), TOKEN, uid=1000), owner)
    assert _status(sent) == 303 and _cookie(sent) is None


# ---------------------------------------------------------------------------------------------------------------
# a websocket handshake: the same head bound as HTTP

def _handshake(port: int, extra: bytes, pieces: int = 1) -> bytes:
    head = (b"GET /graphql HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nOrigin: http://127.0.0.1:%d\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n%s\r\n"
            % (port, port, base64.b64encode(os.urandom(16)), extra))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as ws:
        step = -(-len(head) // pieces)
        for start in range(0, len(head), step):
            ws.sendall(head[start:start + step])
        with contextlib.suppress(ConnectionResetError, TimeoutError):
            return ws.recv(4096)
    return b""


async def _echo(scope, receive, send) -> None:
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
        return
    await receive()
    await send({"type": "websocket.accept"})
    await receive()


def test_a_websocket_handshake_up_to_the_head_bound_opens_and_beyond_it_is_refused() -> None:
    """A 60,000-byte cookie line and 300 small headers (``websockets`` allowed 8,192 bytes a line, 128 headers)
    open the owner's websocket; a head over :data:`HEAD_MAX`, sent in pieces, is still refused by h11 (431)."""
    from dagster_project import webgate

    with _server(webgate.UiGate(_echo, TOKEN, uid=os.geteuid()), **webgate.server_settings()) as port:
        assert _handshake(port, b"Cookie: c=%s\r\n" % (b"v" * 60000)).startswith(b"HTTP/1.1 101")
        many = b"".join(b"X-H%d: v\r\n" % i for i in range(300))
        assert _handshake(port, many).startswith(b"HTTP/1.1 101")
        refused = _handshake(port, b"Cookie: c=%s\r\n" % (b"v" * (webgate.HEAD_MAX + 10)), pieces=8)
        assert refused.startswith(b"HTTP/1.1 431"), refused[:60]
        assert _handshake(port, b"").startswith(b"HTTP/1.1 101")           # the plain one, as before


def test_the_websocket_protocol_limits_are_raised_never_lowered(monkeypatch: pytest.MonkeyPatch) -> None:
    import websockets.http11
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

    from dagster_project import webgate

    monkeypatch.setattr(websockets.http11, "MAX_LINE_LENGTH", 8192)
    monkeypatch.setattr(websockets.http11, "MAX_NUM_HEADERS", 128)
    assert webgate.server_settings()["ws"] is WebSocketsSansIOProtocol
    assert websockets.http11.MAX_LINE_LENGTH >= webgate.HEAD_MAX
    assert websockets.http11.MAX_NUM_HEADERS >= webgate.HEAD_MAX // 4
    monkeypatch.setattr(websockets.http11, "MAX_LINE_LENGTH", 1 << 20)     # an operator's larger setting: kept
    monkeypatch.setattr(websockets.http11, "MAX_NUM_HEADERS", 1 << 16)
    webgate.head_bounded_ws_protocol()
    assert (websockets.http11.MAX_LINE_LENGTH, websockets.http11.MAX_NUM_HEADERS) == (1 << 20, 1 << 16)
