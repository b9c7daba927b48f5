"""Hostile review rev33b: the Dagster UI's gate as fix32h and fix32j left it (``dagster_project/webgate.py``, started
by ``pickapic serve`` / ``pickapic ui`` as ``python -m dagster_project.webgate``), attacked as another local account
and as a hostile web page in the owner's browser.

How: Dagster's real webserver app (an empty workspace, a real sqlite instance from ``DagsterInstance.local_temp``)
made by Dagster's own CLI path, ``dagster_webserver.cli.host_dagster_ui_with_workspace_process_context``, with the
factory patched as ``webgate.main`` patches it (``gated_app_factory``) and ``uvicorn.run`` caught only to serve on a
free port in a thread with the very keyword arguments Dagster gives it (``host``, ``port``, ``log_level``: uvicorn's
defaults otherwise, so its ``http="auto"`` parser, httptools, and its proxy-header middleware); requests over real
loopback sockets, by this (the owner's) account and by the ``nobody`` account (a child that dropped root's ids),
which reads ``/proc/net/tcp`` as any account may. About 25 s for the file here, 8 s of it making the webserver.

What held up (no test): there is no second, ungated port to reach: the gate wraps Dagster's app inside the
webserver's own process (``webserver_cli.create_app_from_workspace_process_context`` patched), so nothing listens
behind it, and smuggling "between gate and backend" has no second HTTP parser to desynchronise; a connection is one
socket of one account, so pipelined requests on it cannot mix the owner's and a neighbour's (by reading). The code
server Dagster spawns listens on a Unix socket in ``$TMPDIR`` (``safe_tempfile_path_unmanaged``), which gRPC made
0755 under umask 022 (run), so ``nobody`` cannot connect (connecting needs write permission). A refused request's
200 MiB body (``Content-Length: 1000000000``) was answered 403 at once and the webserver stayed at 32 MiB RSS (not
buffered); an HTTP/1.0 request without ``Host`` gets 403. The ``nobody`` account without the header got 403 for the
GraphQL mutation (test 1's control). The token file's creation (``O_EXCL|O_NOFOLLOW``, 0600, a random temporary name
then ``link``), a planted symlink at ``HOME/dagster/ui.token``, and IPv6 / v4-mapped owners are covered by fix32h's
and fix32j's tests, read here, not refiled.

Measured: one neighbour connection sending a single endless header grew the webserver process (a subprocess running
the gate under ``uvicorn.run`` defaults) from 32 MiB to 294 MiB RSS after 250 MiB sent, 12 s for the first 50 MiB
and 89 s for the fifth (httptools concatenates the value: quadratic CPU on the one event loop that serves the owner
too), with no answer. ``graphql.parse`` of ``{a a a ...}``: about 80 us a field (1.6 s for 40 KB, 6.2 s for 160 KB);
httptools refuses a request line over 64 KiB, so one request costs up to about 2.5 s of the event loop here; with two
such requests from ``nobody`` the owner's ``/server_info`` waited 4.8 s.

Noticed, not filed: connections that send nothing are never closed (uvicorn starts its keep-alive timer only after
a first response), so a neighbour holding about ``RLIMIT_NOFILE`` idle connections (1024 under systemd's default)
could lock the owner out while it holds them (not run to exhaustion; any local TCP server shares it). The forged
``X-Forwarded-For`` of test 1 also forges the address a token session of a remote browser is bound to, rewrites
the access log's client, and works on websockets (the same middleware); ``X-Forwarded-Proto`` from a loopback
client sets ``scope["scheme"]`` (only the ``Secure`` flag of a cookie follows it). Under umask 002 the code server's
socket is open to the owner's group. (These last by reading uvicorn 0.55's middleware, not run.)

Each test below is a defect confirmed by running it, ranked by severity, filed as a strict xfail whose assertions
state the correct behaviour. All three were fixed the same day (fix33b, ``tests/unit/test_fix33b.py``) and the
markers removed. The fix also sets uvicorn up on Dagster's start-up path (``webgate.install``: ``uvicorn.run`` of
Dagster's CLI gets ``proxy_headers=False`` and a head-bounded h11 protocol), so the fixture now sets the CLI up as
``webgate.main`` does through that one function, and test 1 checks Dagster's keyword arguments plus those settings
(it asserted exactly Dagster's three, which the fixed start-up path no longer serves with). The gate itself lets no
relayed request in by account under uvicorn's defaults either (``test_fix33b``).
"""
from __future__ import annotations

import contextlib
import http.client
import os
import pwd
import socket
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest

TOKEN = "T" * 43
MUTATION = b'{"query": "mutation { setAutoMaterializePaused(paused: false) }"}'


class _Ui:
    def __init__(self, port: int, kwargs: dict) -> None:
        self.port, self.kwargs = port, kwargs


@pytest.fixture(scope="module")
def ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Ui]:
    """Dagster's webserver as ``python -m dagster_project.webgate`` runs it: Dagster's CLI function makes the app
    (the factory patched as ``webgate.main`` does) and calls ``uvicorn.run(app, host=, port=, log_level=)``; that
    call is served as uvicorn would (same keyword arguments, uvicorn's other defaults) on a free port in a thread."""
    import dagster_webserver.cli as webserver_cli
    import uvicorn
    from dagster import DagsterInstance
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._core.workspace.load_target import EmptyWorkspaceTarget

    from dagster_project import webgate

    started: dict = {}

    def run(app, **kwargs) -> None:
        sock = socket.socket()
        sock.bind((kwargs["host"], 0))
        config = uvicorn.Config(app, **{**kwargs, "port": sock.getsockname()[1]}, lifespan="off")
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        deadline = time.monotonic() + 60
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline
            time.sleep(0.05)
        started.update(server=server, thread=thread, port=sock.getsockname()[1], kwargs=kwargs)

    base = tmp_path_factory.mktemp("rev33b") / "dagster"
    base.mkdir()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(webserver_cli.uvicorn, "run", run)
        webgate.install(webserver_cli, TOKEN, patch.setattr)        # as webgate.main does (fix33b)
        patch.setattr(webserver_cli, "log_action", lambda *a, **k: None)                  # no telemetry
        patch.setattr(webserver_cli, "uploading_logging_thread", contextlib.nullcontext)
        with DagsterInstance.local_temp(str(base)) as instance:
            with WorkspaceProcessContext(instance, EmptyWorkspaceTarget()) as context:
                webserver_cli.host_dagster_ui_with_workspace_process_context(context, "127.0.0.1", 3000, "",
                                                                             "warning")
                try:
                    yield _Ui(started["port"], started["kwargs"])
                finally:
                    started["server"].should_exit = True
                    started["thread"].join(timeout=30)


# what the neighbour runs (stdlib only, as the `nobody` account): find, in /proc/net/tcp (readable by every
# account), a loopback connection of another account to the UI's port, and claim its address in X-Forwarded-For
_NEIGHBOUR = r"""
import http.client, os, sys
port, body = int(sys.argv[1]), sys.argv[2].encode()
server = "0100007F:%04X" % port
claimed = None
for line in list(open("/proc/net/tcp"))[1:]:
    fields = line.split()
    if fields[2] == server and fields[3] == "01" and int(fields[7]) != os.geteuid():
        claimed = int(fields[1].split(":")[1], 16)
for headers in ({}, {"X-Forwarded-For": "127.0.0.1:%d" % claimed}):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("POST", "/graphql", body=body, headers={"Content-Type": "application/json", **headers})
    answer = connection.getresponse()
    print(answer.status, answer.read()[:120])
"""


def _as_nobody(command: list[str]) -> subprocess.CompletedProcess:
    account = pwd.getpwnam("nobody")
    return subprocess.run(command, capture_output=True, text=True, timeout=60, user=account.pw_uid,
                          group=account.pw_gid, extra_groups=[], cwd="/")


def test_a_neighbour_cannot_claim_the_owners_connection_with_x_forwarded_for(ui: _Ui) -> None:
    """The module's promise: over loopback only a socket of the owner's account passes without the token, its uid
    read from ``/proc/net/tcp`` for the request's client address. That address is ``scope["client"]``, which
    uvicorn's ``ProxyHeadersMiddleware`` (``proxy_headers=True``, ``forwarded_allow_ips="127.0.0.1,::1"`` by
    default; Dagster's ``uvicorn.run`` changes neither) replaces with ``X-Forwarded-For``'s ``host:port`` for any
    client on 127.0.0.1, i.e. every local account. While the owner has the UI open (its browser holds keep-alive
    and GraphQL-subscription connections, listed with their port and uid in ``/proc/net/tcp``), ``nobody`` sends
    ``X-Forwarded-For: 127.0.0.1:<the owner's port>`` and runs a GraphQL mutation as the owner (here switching the
    automation on; ``launchPipelineExecution``, ``deleteRun``, ``wipeAssets`` as well). The same header also forges
    the address a token session is bound to (``("ip", address)``). Correct: a forwarded header never decides who
    the socket's account is (the gate reads the connection's own peer, or uvicorn runs with ``proxy_headers``
    off), so the neighbour gets 403 both times and the mutation is not run."""
    if os.geteuid() != 0:
        pytest.skip("needs root to act as the nobody account")
    from dagster_project.webgate import server_settings

    # what Dagster's CLI gives uvicorn.run, with what the gate's webserver adds (fix33b)
    assert ui.kwargs.keys() == {"host", "port", "log_level"} | server_settings().keys()
    owner = http.client.HTTPConnection("127.0.0.1", ui.port, timeout=30)      # the owner's open UI tab
    try:
        owner.request("GET", "/server_info")
        answer = owner.getresponse()
        answer.read()
        assert answer.status == 200                                 # the owner passes without a token
        done = _as_nobody(["/usr/bin/python3", "-c", _NEIGHBOUR, str(ui.port), MUTATION.decode()])
        assert done.returncode == 0, done.stderr
        plain, forged = done.stdout.splitlines()
        assert plain.startswith("403")                              # the neighbour alone: refused
        assert forged.startswith("403"), forged                     # today: 200 {"data":{"setAutoMaterializePaused"
    finally:
        owner.close()


def test_an_endless_header_is_refused_before_it_fills_the_webservers_memory(ui: _Ui) -> None:
    """Any local account may connect to the UI's port; the gate refuses it only once the request's headers are
    complete. With ``http="auto"`` uvicorn parses with httptools, which has no limit on a header's size (h11, the
    other parser, stops at 16 KiB): a neighbour sends ``X-A: aaaa...`` without ever ending it and the owner's
    webserver keeps it all in memory (measured: 32 MiB -> 294 MiB RSS for 250 MiB sent, with the one event loop
    busy re-concatenating the value, 89 s per 50 MiB by then). Correct: a request whose headers exceed a bound
    (tens of KiB, as h11's 16 KiB, nginx's 8 KiB lines) is answered 4xx or its connection closed. Here: 8 MiB of
    one header, after which the server must have answered or closed."""
    refused = False
    with socket.create_connection(("127.0.0.1", ui.port), timeout=10) as attack:
        attack.sendall(b"GET /server_info HTTP/1.1\r\nHost: 127.0.0.1\r\nX-A: ")
        chunk = b"a" * (64 << 10)
        try:
            for _ in range(128):
                attack.sendall(chunk)
            attack.settimeout(2)
            answer = attack.recv(64)
            refused = answer == b"" or answer.startswith((b"HTTP/1.1 4", b"HTTP/1.0 4"))
        except (ConnectionResetError, BrokenPipeError):
            refused = True
        except TimeoutError:        # still reading our header, or stopped reading without answering
            refused = False
    assert refused


_BIG_QUERY = r"""
import socket, sys
port, fields = int(sys.argv[1]), int(sys.argv[2])
target = "/graphql?query=%7B" + "a+" * fields + "%7D"            # about 60 KB: under httptools' 64 KiB request line
connections = [socket.create_connection(("127.0.0.1", port), timeout=120) for _ in range(2)]
for connection in connections:
    connection.sendall(("GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % (target, port)).encode())
print("sent", flush=True)
print(" ".join(connection.recv(12).decode().replace(" ", "/") for connection in connections), flush=True)
"""


def test_a_strangers_graphql_address_does_not_freeze_the_owners_ui(ui: _Ui) -> None:
    """fix32j refuses a ``/graphql`` address whose ``?query=`` holds anything but queries, by parsing it with
    ``graphql.parse`` in :meth:`UiGate.__call__` before the token or the account is checked, on the event loop
    that serves every request. graphql-core takes about 80 us per field here (``{a a a ...}``: 1.6 s for 40 KB,
    6.2 s for 160 KB in a parse of its own), so ``nobody`` (no token, refused in the end) sends two ``GET
    /graphql?query={a a ...}`` of 60 KB (httptools refuses a request line beyond 64 KiB; each costs about 2 s
    here) and every request of the owner waits until their parses are done. Correct: a request that will be
    refused costs no more than its refusal (check who sends it first, or bound what is parsed), so the owner's
    ``/server_info`` sent meanwhile is answered at once (well under 0.75 s) and the stranger still gets 403."""
    if os.geteuid() != 0:
        pytest.skip("needs root to act as the nobody account")
    account = pwd.getpwnam("nobody")
    neighbour = subprocess.Popen(["/usr/bin/python3", "-c", _BIG_QUERY, str(ui.port), "30000"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, user=account.pw_uid,
                                 group=account.pw_gid, extra_groups=[], cwd="/")
    try:
        assert neighbour.stdout.readline().strip() == "sent"
        time.sleep(0.2)                                 # the gate has the request: its parse has begun
        started = time.monotonic()
        owner = http.client.HTTPConnection("127.0.0.1", ui.port, timeout=120)
        try:
            owner.request("GET", "/server_info")
            answer = owner.getresponse()
            answer.read()
        finally:
            owner.close()
        waited = time.monotonic() - started
        stranger = neighbour.stdout.readline().split()
        assert answer.status == 200 and stranger == ["HTTP/1.1/403"] * 2, (answer.status, stranger)
        assert waited < 0.75, f"the owner's request waited {waited:.2f} s for a stranger's GraphQL to be parsed"
    finally:
        neighbour.kill()
        neighbour.wait()
