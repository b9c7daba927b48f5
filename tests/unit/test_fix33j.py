"""fix33j: the defects of review rev33j (the UI's gate and its webserver, :mod:`dagster_project.webgate`), beyond the
review's own tests: the gate's own linear reading of the ``Cookie`` header (no ``http.cookies.SimpleCookie``: its
unquote is quadratic before Python 3.11.10, and it stopped at the first cookie it could not parse), a refused
request's connection closed with its 403, and the head deadline of a connection whose answer is complete while the
request's body still comes (a passed request's too). The gate is called in process as a raw ASGI app, and served by
a real uvicorn on a loopback port (the helpers of ``test_fix32h`` / ``test_fix33b``)."""
from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator

import pytest

from tests.unit.test_fix32h import TOKEN, _App, _call, _scope, _session, _status
from tests.unit.test_fix33b import _closed_within, _server

_HOSTILE = 'a="' + "\\\\" * 30000 + '"'       # 60,000 characters: SimpleCookie took 32 s on it (Python 3.11.7)


# ---------------------------------------------------------------------------------------------------------------
# the Cookie header, read linearly

def test_cookie_values_are_the_named_pairs_in_order() -> None:
    from dagster_project.webgate import _cookie_values

    name = "pickapic-ui-3000"
    assert _cookie_values("", name) == []
    assert _cookie_values(f"{name}=abc", name) == ["abc"]
    assert _cookie_values(f'other=1;  {name} = "q v" ;x', name) == ["q v"]          # quoted: unquoted once
    assert _cookie_values(f"{name}=a=b; {name}=; {name}2=c; x{name}=d; {name}", name) == ["a=b", ""]
    assert _cookie_values(f'bad"cookie; ;;={name}; {name}="; {name}=ok', name) == ['"', "ok"]
    assert _cookie_values(_HOSTILE + f"; {name}=after", name) == ["after"]


def test_cookie_values_take_linear_time_on_hostile_headers() -> None:
    from dagster_project.webgate import _cookie_values

    for header in ('a="' + "\\\\" * 500_000 + '"', "=" * 1_000_000, ";" * 1_000_000, "pickapic-ui-3000=x;" * 50_000,
                   '"' * 1_000_000):
        started = time.process_time()     # CPU time, not wall: the bound is for the parse, not the machine's load
        _cookie_values(header, "pickapic-ui-3000")
        # SimpleCookie took 32 s of CPU for 60,000 backslashes (quadratic): a million would take hours
        assert time.process_time() - started < 2.0, header[:20]


@pytest.fixture
def gate():
    from dagster_project.webgate import UiGate

    app = _App()
    return UiGate(app, TOKEN), app


def _with_cookies(*values: str, **scope) -> dict:
    """A request from ``scope``'s client with one ``Cookie`` header per value (HTTP/2 style; the gate joins them)."""
    built = _scope(**scope)
    built["headers"] += [(b"cookie", value.encode("latin-1")) for value in values]
    return built


def test_a_hostile_cookie_header_is_refused_at_once(gate) -> None:
    """A neighbour's quoted value of backslash pairs (60,000 characters, the 64 KiB head's worth) costs the gate
    no more than its refusal; with the session cookie after it, the browser it was given to still gets in."""
    ui, app = gate
    started = time.process_time()     # CPU time: a loaded machine (the full suite) stretches wall time
    assert _status(_call(ui, _with_cookies(_HOSTILE))) == 403
    assert _status(_call(ui, _with_cookies(_HOSTILE, client=("127.0.0.1", 1)))) == 403
    assert time.process_time() - started < 0.5
    session = _session(ui)
    assert _status(_call(ui, _with_cookies(f"{_HOSTILE}; pickapic-ui-3000={session}"))) == 200
    assert len(app.scopes) == 1


def test_the_session_cookie_is_found_behind_malformed_and_shadowing_cookies(gate) -> None:
    """Another 127.0.0.1 site's badly made cookie no longer hides the gate's (``SimpleCookie`` stopped there), nor
    does one of the same name set for a longer path (sent first); quoted, or in a second ``Cookie`` header, it
    is the same cookie. Still only for the browser it was given to, and never the token."""
    ui, app = gate
    session = _session(ui)
    shadow = "S" * 43
    for header in (f'bad"cookie; x=\\"; pickapic-ui-3000={session}', f"pickapic-ui-3000={shadow}; pickapic-ui-3000="
                   f"{session}", f'pickapic-ui-3000="{session}"', f"  pickapic-ui-3000 =\t{session} ;"):
        assert _status(_call(ui, _with_cookies(header))) == 200, header
    assert _status(_call(ui, _with_cookies("other=1", f"pickapic-ui-3000={session}"))) == 200
    refused = [_with_cookies(f"pickapic-ui-3000={session}", client=("192.0.2.8", 1)),     # another browser
               _with_cookies(f"pickapic-ui-3000={session}x"), _with_cookies(f"pickapic-ui-3000={session[:-1]}"),
               _with_cookies(f"pickapic-ui-3000={TOKEN}"), _with_cookies(f"pickapic-ui-3001={session}"),
               _with_cookies(f"pickapic-ui-3000={shadow}")]
    for scope in refused:
        assert _status(_call(ui, scope)) == 403
    assert len(app.scopes) == 5


def test_many_candidate_cookies_cost_one_look_up_each(gate) -> None:
    """The head's worth of cookies of the gate's name, each of a session value's shape: refused quickly (a look-up
    each, not a comparison with every session the gate keeps)."""
    ui, app = gate
    for _ in range(256):
        _session(ui)                     # the gate's most sessions
    header = "; ".join(f"pickapic-ui-3000={i:043d}" for i in range(1000))
    started = time.monotonic()
    assert _status(_call(ui, _with_cookies(header))) == 403
    assert time.monotonic() - started < 0.5
    assert app.scopes == []


# ---------------------------------------------------------------------------------------------------------------
# the webserver: a refused request's connection, an answered request's unread body

@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[int, _App]]:
    from dagster_project import webgate

    monkeypatch.setattr(webgate, "HEAD_TIMEOUT_S", 0.5)
    app = _App()
    with _server(webgate.UiGate(app, TOKEN), **webgate.server_settings(), timeout_keep_alive=0.5) as port:
        yield port, app


def _answer(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes ``sock`` (10 s at most)."""
    sock.settimeout(10)
    received = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            received += chunk
    return received


@pytest.mark.parametrize("request_", [
    b"GET /server_info HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",              # a loopback socket not the owner's
    b"POST /graphql HTTP/1.1\r\nHost: rebound.example\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: https://evil.example\r\n\r\n"])
def test_a_refused_request_is_answered_whole_and_its_connection_closed(request_: bytes) -> None:
    """The 403 says ``Connection: close`` and the connection closes with it, before any deadline (here the
    defaults: 10 s for a head, 5 s keep-alive); the answer arrives whole, its body as long as it says."""
    from dagster_project import webgate

    app = _App()
    with _server(webgate.UiGate(app, TOKEN, uid=-1), **webgate.server_settings()) as port:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as refused:
            started = time.monotonic()
            refused.sendall(request_)
            answer = _answer(refused)
            assert time.monotonic() - started < 2
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.lower().split(b"\r\n")
    assert lines[0].startswith(b"http/1.1 403") and b"connection: close" in lines
    length = next(int(line.split(b":")[1]) for line in lines if line.startswith(b"content-length:"))
    assert len(body) == length and body.startswith(b"403 Forbidden")
    assert app.scopes == []


@pytest.mark.parametrize("framing", [b"Content-Length: 1000000000", b"Transfer-Encoding: chunked"])
def test_an_answered_requests_unread_body_does_not_keep_its_connection(served, framing: bytes) -> None:
    """A request that passed (the token) is answered without its body being read (Dagster's 404 to a POST, say):
    a body byte every 0.1 s after the answer does not keep the connection past the head deadline (0.5 s here)."""
    port, app = served
    with socket.create_connection(("127.0.0.1", port), timeout=10) as upload:
        upload.sendall(b"POST /x HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pickapic-Token: %s\r\n%s\r\n\r\n"
                       % (TOKEN.encode(), framing))
        assert upload.recv(4096).startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            for _ in range(30):
                upload.sendall(b"1\r\nx\r\n" if b"chunked" in framing else b"x")
                time.sleep(0.1)
        assert _closed_within(upload, 3) and time.monotonic() - started < 3.5
    assert len(app.scopes) == 1


def test_an_answered_requests_body_then_the_next_head_in_time_are_served(served) -> None:
    """The body of an answered request finished within the deadline, the next request on the same connection is
    answered (keep-alive is not cut); a slow upload whose body is read before the answer is not cut either."""
    port, app = served
    token = TOKEN.encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as kept:
        kept.sendall(b"POST /x HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pickapic-Token: %s\r\nContent-Length: 4\r\n\r\n"
                     % token)
        assert kept.recv(4096).startswith(b"HTTP/1.1 200")
        kept.sendall(b"body" + b"GET /y HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pickapic-Token: %s\r\n\r\n" % token)
        assert kept.recv(4096).startswith(b"HTTP/1.1 200")
    assert [scope["path"] for scope in app.scopes] == ["/x", "/y"]
