"""Hostile review rev32j: the Dagster UI's gate of fix32h (``dagster_project/webgate.py``, started by ``pickapic serve``
/ ``pickapic ui`` as ``python -m dagster_project.webgate``), attacked as another local account and as a web page the
owner visits.

How: Dagster's real webserver app (``dagster_webserver.app.create_app_from_workspace_process_context``, an empty
workspace, a real sqlite instance from ``DagsterInstance.local_temp``) wrapped in :class:`UiGate`, served by a real
uvicorn on a real loopback socket in this process; requests sent over real sockets with the headers a browser sends
for an ``<img>``, an ``<iframe>`` and a top-level navigation; Python's ``http.cookiejar`` standing in for the
browser's cookie store; the ``nobody`` account (``tests.accounts``) making connections to compare its socket's uid
in ``/proc/net/tcp``; ``peer_uid`` timed against many open connections. About 9 s for the file.

What held up (no test): the owner's normal use through a real ``pickapic serve --no-automation`` (webserver up in
35 s): the owner's ``curl`` got ``/``, ``/server_info`` and a GraphQL POST without a token, ``nobody`` got 403, and
200 with ``?token=`` (303, cookie, follow); the log (not a terminal) named the token's file, never the token. The token never reaches Dagster or uvicorn's access log (``--uvicorn-log-level info``
printed ``GET /server_info`` for ``/server_info?token=...``, the scope's query already stripped, also for a wrong
token and a percent-encoded ``%74oken`` key); it is compared with ``hmac.compare_digest``; it is not on any command
line; the 303 after ``?token=`` does not keep it in the address (so no ``Referer`` carries it); DNS rebinding (``Host:
evil.example:3000``, ``localhost.attacker``, ``localhost.``) gets 403 over the owner's own socket; ``Origin: null``,
another port's origin and a missing ``Host`` are refused; websockets pass the same gate (an ``Origin`` always comes
with them); every route (``/graphql``, ``/server_info``, ``/dagit_info``, ``/download/...``, static files) is behind
it since the whole Starlette app is wrapped, and the patched factory is the name ``dagster_webserver.cli`` calls;
three pipelined requests on one connection got 200, 403 (``Host: evil.example``), 200; a token file that is a symlink, a FIFO (``O_NONBLOCK``), a folder or another
account's file is refused by name, a huge or loose one replaced. On this kernel (6.18) a neighbour's closed
(orphaned, FIN_WAIT) socket keeps its uid in ``/proc/net/tcp`` (``sk_uid``) with inode 0; only TIME_WAIT shows uid 0,
so a home owned by root was not let in by a neighbour closing early (older kernels printed 0 for orphans: not filed).

Measured: ``peer_uid`` reads all of ``/proc/net/tcp{,6}`` synchronously on the event loop per request: 2.7 ms here,
19 ms with 4000 more loopback sockets (about 4.5 us each), so a neighbour holding tens of thousands of idle sockets
slows every UI request by a fraction of a second (not filed: a neighbour may flood the port anyway).

Noticed, not filed: an SSH ``-L`` tunnel that the owner opens on a shared laptop lets that laptop's other accounts in
as the owner (inherent to a uid check, the README's own advice); Beam's job/expansion servers on loopback and
Dagster's code-server sockets accept any local account (another area); ``SimpleCookie.load`` stops at the first
malformed cookie, so a cookie another 127.0.0.1 site sets badly hides the UI cookie from a browser of another account
(a lock-out, not a way in).

Each test below is a defect confirmed by running it, ranked by severity, filed as a strict xfail whose assertions
state the correct behaviour. All five were fixed the same day (fix32j, ``tests/unit/test_fix32j.py``) and their
markers removed; the per-request read of ``/proc/net/tcp{,6}`` was left (a cache by address and port could let in a
neighbour that reuses the owner's closed client port).
"""
from __future__ import annotations

import http.client
import http.cookiejar
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

TOKEN = "T" * 43

# what a browser sends for <img src="http://127.0.0.1:3000/graphql?query=mutation..."> on another site's page: no
# Origin (a no-cors GET), the owner's own socket (the owner's browser), the UI's own Host
_IMAGE = {"Accept": "image/avif,image/webp,*/*", "Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors",
          "Sec-Fetch-Dest": "image", "Referer": "https://evil.example/"}


class _Ui:
    def __init__(self, instance, port: int, server, thread) -> None:
        self.instance, self.port, self.server, self.thread = instance, port, server, thread

    def get(self, target: str, headers: dict[str, str] | None = None, host: str = "127.0.0.1"):
        connection = http.client.HTTPConnection(host, self.port, timeout=30)
        try:
            connection.request("GET", target, headers=headers or {})
            response = connection.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            connection.close()


def _start(app, family: int = socket.AF_INET, host: str = "127.0.0.1"):
    import uvicorn

    sock = socket.socket(family)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)     # dual stack, as `--host ::` is
    sock.bind((host, 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline
        time.sleep(0.05)
    return server, thread, sock.getsockname()[1]


def _stop(server, thread) -> None:
    server.should_exit = True
    thread.join(timeout=30)


@pytest.fixture(scope="module")
def ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Ui]:
    """Dagster's real webserver app behind the gate, on a real uvicorn at 127.0.0.1:PORT of this (the owner's)
    account; one for the module (about 2 s to make)."""
    from dagster import DagsterInstance
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._core.workspace.load_target import EmptyWorkspaceTarget
    from dagster_webserver.app import create_app_from_workspace_process_context

    from dagster_project.webgate import UiGate

    base = tmp_path_factory.mktemp("rev32j") / "dagster"
    base.mkdir()
    with DagsterInstance.local_temp(str(base)) as instance:
        with WorkspaceProcessContext(instance, EmptyWorkspaceTarget()) as context:
            app = UiGate(create_app_from_workspace_process_context(context), TOKEN)
            server, thread, port = _start(app)
            try:
                yield _Ui(instance, port, server, thread)
            finally:
                _stop(server, thread)


def test_another_sites_image_cannot_run_a_graphql_mutation(ui: _Ui) -> None:
    """The module's promise: a page of another site sending requests to the UI (CSRF) is refused. Dagster's
    ``/graphql`` executes ``?query=`` on a GET, mutations included (launchRun, deleteRun, wipeAssets, startSchedule,
    setAutoMaterializePaused...), and a browser sends no ``Origin`` with a GET ``<img>``/link/form; the request comes
    over the owner's own socket to ``127.0.0.1`` (Host passes), so the gate lets it through. Here such a request turns
    the instance's auto-materialize back on. Correct: a mutation from a GET never runs (refused by the gate, e.g.
    on ``Sec-Fetch-Site: cross-site`` / a mutation over GET)."""
    from dagster._daemon.asset_daemon import get_auto_materialize_paused, set_auto_materialize_paused

    set_auto_materialize_paused(ui.instance, True)
    status, _, body = ui.get("/graphql?query=mutation%7BsetAutoMaterializePaused(paused%3Afalse)%7D", _IMAGE)
    assert get_auto_materialize_paused(ui.instance) is True, f"another site's image ran a mutation: {status} {body!r}"
    assert status in (400, 403, 405), (status, body)


def test_the_token_never_reaches_another_port_of_the_same_host(ui: _Ui) -> None:
    """``pickapic serve`` / ``ui`` print ``http://127.0.0.1:3000/?token=...`` and the owner opens it; the gate answers
    with ``Set-Cookie: pickapic-ui-3000=<the token>`` for host ``127.0.0.1``. Cookies are not kept apart by port
    (RFC 6265 8.5, browsers and ``http.cookiejar`` alike), and every ``http://127.0.0.1:*`` page is the same site for
    ``SameSite=Strict``: the next time the owner opens any 127.0.0.1 address another account listens on (a squatted
    TensorBoard/Jupyter port), that account reads the token and drives the UI. The owner's own socket passes without
    the token anyway. (The README says the cookie is "for the port": only its name is.) Correct: the token (or anything that opens the UI) never goes to another port."""
    jar = http.cookiejar.CookieJar()
    browser = urllib.request.build_opener(urllib.request.ProxyHandler({}), urllib.request.HTTPCookieProcessor(jar))
    with browser.open(f"http://127.0.0.1:{ui.port}/server_info?token={TOKEN}", timeout=30) as response:
        assert response.status == 200 and b"dagster_version" in response.read()
    received: list[bytes] = []
    with socket.socket() as neighbour:      # another account's web server on 127.0.0.1
        neighbour.bind(("127.0.0.1", 0))
        neighbour.listen(1)

        def answer() -> None:
            connection, _ = neighbour.accept()
            with connection:
                received.append(connection.recv(65536))
                connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")

        thread = threading.Thread(target=answer)
        thread.start()
        with browser.open(f"http://127.0.0.1:{neighbour.getsockname()[1]}/", timeout=30) as response:
            response.read()
        thread.join(timeout=30)
    assert received and TOKEN.encode() not in received[0], received[0].decode("latin-1")


def test_another_sites_page_cannot_frame_the_ui(ui: _Ui) -> None:
    """An ``<iframe src="http://127.0.0.1:3000/">`` on another site: a navigation, so no ``Origin``; it comes over the
    owner's socket, and the gate lets Dagster answer with the full UI, whose own requests inside the frame are then
    same-origin. Dagster's CSP has no ``frame-ancestors`` and there is no ``X-Frame-Options``, so the page may
    overlay it and have the owner click Launch / Terminate / Wipe. Correct: the gate refuses a cross-site frame, or
    the answer forbids framing by other sites."""
    status, headers, _ = ui.get("/", {"Accept": "text/html", "Sec-Fetch-Site": "cross-site",
                                      "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "iframe"})
    csp = headers.get("content-security-policy", "")
    framing_forbidden = (headers.get("x-frame-options", "").upper() in ("DENY", "SAMEORIGIN")
                         or "frame-ancestors" in csp)
    assert status == 403 or framing_forbidden, (status, headers.get("x-frame-options"), csp)


@pytest.mark.parametrize("path", ["/assets/caption_%E2%9C%93", "/runs%3Fx", "/%5Cevil.example"])
def test_the_token_redirect_keeps_the_address_as_given(ui: _Ui, path: str) -> None:
    """A bookmark with the token to a page of an asset named in Unicode, an encoded ``?`` in a partition name: the
    gate's 303 takes ``scope["path"]`` (percent-decoded) and encodes it as Latin-1, so ``✓`` raises
    (UnicodeEncodeError, a 500 and a traceback in the log), ``%3F`` becomes a query and ``%5C`` a ``/\\evil.example``
    that browsers read as ``//evil.example``, another host. Correct: 303 to the same path as it was sent
    (``raw_path``), only the token taken out."""
    status, headers, body = ui.get(f"{path}?token={TOKEN}")
    assert status == 303, (status, body[:200])
    assert headers.get("location") == path


def test_the_owner_over_ipv4_to_a_dual_stack_ui_passes_without_the_token(tmp_path: Path) -> None:
    """``peer_uid`` looks up a v4-mapped address on purpose ("as the IPv4-mapped IPv6 one a dual-stack socket
    shows"), but ``_loopback`` refuses the client first: ``ipaddress`` (Python 3.11) says ``::ffff:127.0.0.1`` is not
    loopback. The owner's ``curl http://127.0.0.1:PORT/`` to ``serve --host ::`` gets 403, while ``[::1]`` passes.
    Correct: the owner's own loopback connection passes either way (another account's still does not)."""
    from dagster_project.webgate import UiGate

    async def app(scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    server, thread, port = _start(UiGate(app, TOKEN), socket.AF_INET6, "::")
    try:
        v6 = _Ui(None, port, server, thread).get("/", host="::1")[0]
        v4 = _Ui(None, port, server, thread).get("/", host="127.0.0.1")[0]
    finally:
        _stop(server, thread)
    assert v6 == 200
    assert v4 == 200
