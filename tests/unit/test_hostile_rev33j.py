"""Hostile review rev33j: fix33b (``dagster_project/webgate.py``: ``install()`` wrapping the ``uvicorn.run`` of
Dagster's webserver CLI with ``proxy_headers=False``, a head-bounded h11 protocol of 64 KiB and a 10 s deadline for a
request head; the relayed-header rules; the sender checked before any GraphQL of an address is parsed, bounded to
16 KiB / 2,000 tokens; the code server's socket in a 0700 temporary folder), attacked as another local account and
as a hostile web page in the owner's browser.

How: the real start-up path, ``pickapic serve``'s own command line (``serve.commands``: ``python -m
dagster_project.webgate -m dagster_project.definitions -d ROOT -h 127.0.0.1 -p PORT``) run as a process with a fresh
home (about 39 s to its first answer here), probed over loopback sockets; and, for the tests, the gate under a real
uvicorn with :func:`webgate.server_settings` on a loopback port in a thread (the ``_server`` helper of
``test_fix33b``), with a neighbour that is the ``nobody`` account (a child that dropped root's ids) where the
account matters. Read: uvicorn 0.55's ``h11_impl`` (``on_response_complete``, ``data_received``,
``handle_events``), Dagster 1.13's ``dagster_webserver.cli`` and its UI bundle, ``http.cookies`` of Python 3.11.7.

What held up (no test): the running process gets every setting: a 100 KiB head is answered ``400`` and closed (h11,
not httptools), a silent connection is closed after 10.0 s, ``X-Forwarded-For: 127.0.0.1`` from the owner's own
socket is refused, the code server (``dagster api grpc --socket``) listens in ``/tmp/pickapic-ui-XXXXXXXX`` (0700,
``mkdtemp``'s random name, made with ``O_EXCL``: nothing can be planted there before start), removed when the
webserver is stopped by SIGTERM, also 12 s and 25 s into its start (before uvicorn runs; Dagster's CLI exits 1 and
``atexit`` runs). Dagster's CLI calls ``uvicorn.run(app, host=, port=, log_level=)`` with an app object: there is no
reload or worker process that could start uvicorn without the settings; a workspace reload spawns its new code
server from the same process (``tempfile.tempdir`` kept). The Dagster UI never sends GraphQL in an address: its
Apollo ``HttpLink`` has no ``useGETForQueries``, so its queries (some over 16 KiB) are POSTed as JSON and the 16 KiB /
2,000-token bound never meets them. A websocket outlives the head deadline (fix33b's test); a refused websocket
handshake and a refused GET are closed at once. Pipelined requests: h11 pauses on the second head and gives it its
own deadline after the first answer; a slow owner upload (complete head, slow body) is not cut. A hostile page's
preflight (``OPTIONS`` with its ``Origin``) for ``X-Forwarded-For`` is refused, so it cannot relay. curl's
``Expect: 100-continue`` upload of 3 MB (plain, chunked, and rate-limited to 15 s) got 100 then 200 under h11.

Measured: ``SimpleCookie().load`` of one quoted cookie value of backslash pairs (CVE-2024-7592, fixed in Python
3.11.10; the project's venv runs 3.11.7): 0.7 s for 8,000 characters, 2.2 s for 16,000, 8.3 s for 32,000, 32 s for
60,000, which the 64 KiB head still lets through; the gate calls it (``_by_token``) for every request before it
knows who sent it: with a neighbour's 20,000-character one in, the owner's ``/server_info`` waited 2.4 s. 15,000
``Cookie`` headers of one request (joined by ``_headers``) cost 0.05 s: not filed. A
neighbour held 300 connections past both the 10 s head deadline and uvicorn's 5 s keep-alive (60 s, all alive) by
sending one body byte after each 403, while 50 silent ones were all closed.

Noticed, not filed: the 10 s deadline does not stop a neighbour from holding the file-descriptor limit's worth of
connections by reopening them every 9 s (any TCP server shares that); a relayed session is bound to "relayed", so
any local account that obtains such a cookie may use it with any ``X-Forwarded-For`` (it has to obtain it first);
``peer_uid`` reading all of ``/proc/net/tcp`` per request (94 ms with 18,000
entries here) was left by rev32j, not refiled;
the 64 KiB head refuses an owner's browser whose cookies for 127.0.0.1 (every port's, a neighbour's local web app's
too) exceed it, a cookie bomb by a page the owner opened on another local port; Starlette parses the cookies of a
request that passed the gate with the same ``http.cookies._unquote`` (only the owner's and token holders'). The
daemon's code server socket is still in ``$TMPDIR`` (documented, not refiled).

Each test below is a defect confirmed by running it, ranked by severity, filed as a strict xfail whose assertions
state the correct behaviour. Both were fixed the same day (fix33j, ``tests/unit/test_fix33j.py``) and their markers
removed: the gate reads its cookie from the header itself, linearly (no ``SimpleCookie``); a 403 closes its
connection, and the head deadline also runs while an answered request's unread body still comes.
"""
from __future__ import annotations

import contextlib
import pwd
import socket
import subprocess
import time

import pytest

from tests.unit.test_fix32h import TOKEN, _App
from tests.unit.test_fix33b import _closed_within, _get, _server

# what the neighbour runs as `nobody` (stdlib only): one request whose Cookie header holds a quoted value of
# backslash pairs, well under the 64 KiB head; it prints the status it gets
_NEIGHBOUR = r"""
import http.client, sys
port, size = int(sys.argv[1]), int(sys.argv[2])
connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
connection.request("GET", "/server_info", headers={"Cookie": 'a="' + "\\\\" * (size // 2) + '"'})
print(connection.getresponse().status)
"""


def _as_nobody(command: list[str]) -> subprocess.Popen:
    account = pwd.getpwnam("nobody")
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, user=account.pw_uid,
                            group=account.pw_gid, extra_groups=[], cwd="/")


def test_a_neighbours_cookie_header_does_not_freeze_the_owners_ui() -> None:
    """Any local account sends one request with ``Cookie: a="\\\\\\\\..."`` (20,000 characters, under the 64 KiB head
    bound): the gate's ``_by_token`` loads it into ``SimpleCookie`` on uvicorn's one event loop before refusing it,
    about 3.5 s here (32 s at 60,000 characters), and the owner's own request meanwhile waits. A refused request should
    cost no more than its refusal (fix33b's own rule): the owner is answered at once and the neighbour gets 403."""
    from dagster_project import webgate

    app = _App()
    with _server(webgate.UiGate(app, TOKEN), **webgate.server_settings()) as port:
        assert _get(port) == 200                                   # the owner, by account (warm)
        neighbour = _as_nobody(["/usr/bin/python3", "-c", _NEIGHBOUR, str(port), "20000"])
        try:
            time.sleep(0.5)                                       # the neighbour's request is in
            started = time.monotonic()
            assert _get(port) == 200
            waited = time.monotonic() - started
            out, err = neighbour.communicate(timeout=60)
        finally:
            with contextlib.suppress(ProcessLookupError):
                neighbour.kill()
        assert out.strip() == "403", err
        assert waited < 1.0, f"the owner's request waited {waited:.1f} s behind a neighbour's Cookie header"


@pytest.mark.parametrize("framing", [b"Content-Length: 1000000000", b"Transfer-Encoding: chunked"])
def test_a_refused_requests_connection_is_not_kept_by_its_unread_body(monkeypatch: pytest.MonkeyPatch,
                                                                      framing: bytes) -> None:
    """fix33b closes a connection that sends no complete head within 10 s, so a neighbour cannot hold the
    file-descriptor limit's worth of connections at no cost. A neighbour sends a complete head announcing a body
    (here refused for its ``Host``, a DNS-rebinding name), gets 403 at once, and sends one byte of the body: the
    body is thrown away (nobody reads it), yet the connection is then held with no timer at all (300 held 60 s in
    the measurement, while silent ones were closed). The correct behaviour: a connection whose answer is complete is
    closed within the deadlines (keep-alive, head) whatever body bytes it trickles after the answer."""
    from dagster_project import webgate

    monkeypatch.setattr(webgate, "HEAD_TIMEOUT_S", 0.5)
    app = _App()
    with _server(webgate.UiGate(app, TOKEN), **webgate.server_settings(), timeout_keep_alive=0.5) as port:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as attack:
            attack.sendall(b"POST /graphql HTTP/1.1\r\nHost: rebound.example\r\n%s\r\n\r\n" % framing)
            time.sleep(0.3)
            assert attack.recv(65536).startswith(b"HTTP/1.1 403")
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                attack.sendall(b"1\r\nx\r\n" if b"chunked" in framing else b"x")
            assert _closed_within(attack, 3), "the refused connection is still open 3 s after its answer"
    assert app.scopes == []
