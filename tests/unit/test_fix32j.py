"""fix32j: the defects of review rev32j (the UI's gate, :mod:`dagster_project.webgate`, attacked as another local
account and as a web page), beyond the review's own tests: the gate called in process as a raw ASGI app (the
helpers of ``test_fix32h``), with real loopback sockets (IPv4 and dual-stack IPv6) for its owner check."""
from __future__ import annotations

import os
import socket

import pytest

from tests.unit.test_fix32h import TOKEN, _App, _call, _scope, _session, _status

AUTH = {"x-pickapic-token": TOKEN}


@pytest.fixture
def gate():
    from dagster_project.webgate import UiGate

    app = _App()
    return UiGate(app, TOKEN), app


def _headers(sent: list[dict]) -> dict[bytes, list[bytes]]:
    found: dict[bytes, list[bytes]] = {}
    for key, value in sent[0]["headers"]:
        found.setdefault(bytes(key).lower(), []).append(bytes(value))
    return found


# ---------------------------------------------------------------------------------------------------------------
# another site's page: Sec-Fetch-Site, GraphQL in the address

@pytest.mark.parametrize("site", ["cross-site", "same-site", "Cross-Site"])
def test_another_sites_request_is_refused_on_every_method_whatever_it_carries(gate, site: str) -> None:
    ui, app = gate
    for method in ("GET", "POST", "HEAD"):
        sent = _call(ui, _scope(method=method, headers={**AUTH, "sec-fetch-site": site}))
        assert _status(sent) == 403 and b"Sec-Fetch-Site" in sent[1]["body"]
    assert _call(ui, _scope("websocket", headers={**AUTH, "sec-fetch-site": site}))[0]["type"] == "websocket.close"
    assert app.scopes == []


@pytest.mark.parametrize("site", ["same-origin", "none", None])
def test_the_uis_own_requests_and_a_typed_address_pass(gate, site: str | None) -> None:
    ui, app = gate
    headers = {**AUTH, **({"sec-fetch-site": site} if site else {})}
    assert _status(_call(ui, _scope(method="POST", headers=headers))) == 200
    assert len(app.scopes) == 1


@pytest.mark.parametrize("query", [
    b"query=mutation%7BsetAutoMaterializePaused(paused%3Afalse)%7D",
    b"query=mutation+M+%7Bx%7D&operationName=M",
    b"query=subscription%7Bx%7D",
    b"query=query+Q%7Bx%7D+mutation+M%7By%7D&operationName=Q",     # one mutation among queries
    b"query=%7Bx%7D&query=mutation%7By%7D",                          # a second parameter
    b"query=mutation%7B",                                              # not GraphQL: not passed on either
])
def test_graphql_in_the_address_is_run_only_when_it_is_queries(gate, query: bytes) -> None:
    ui, app = gate
    for method in ("GET", "POST"):      # a POST that is not JSON: Dagster reads ?query= too
        for path in ("/graphql", "/graphql/", "/prefix/graphql"):
            sent = _call(ui, _scope(method=method, path=path, query=query, headers=AUTH))
            assert _status(sent) == 403 and b"GraphQL" in sent[1]["body"], (method, path)
    assert app.scopes == []


def test_graphql_queries_in_the_address_and_other_paths_pass(gate) -> None:
    ui, app = gate
    assert _status(_call(ui, _scope(query=b"query=%7Bversion%7D", headers=AUTH))) == 200
    assert _status(_call(ui, _scope(query=b"query=query+Q%7Bversion%7D+fragment+F+on+T%7Bx%7D",
                                    headers=AUTH))) == 200
    assert _status(_call(ui, _scope(path="/runs", query=b"query=mutation%7Bx%7D", headers=AUTH))) == 200
    assert _status(_call(ui, _scope(method="POST", headers=AUTH))) == 200     # the UI's JSON POSTs
    assert len(app.scopes) == 4


# ---------------------------------------------------------------------------------------------------------------
# the cookie: a session value bound to its browser, never the token

@pytest.fixture
def connection():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(2)
        with socket.create_connection(listener.getsockname()) as client:
            accepted, _ = listener.accept()
            with accepted:
                yield client.getsockname(), listener.getsockname()


def test_the_session_cookie_opens_the_ui_only_for_its_own_browser(gate) -> None:
    ui, app = gate
    session = _session(ui, client=("192.0.2.7", 40000))
    cookie = {"cookie": f"pickapic-ui-3000={session}"}
    assert _status(_call(ui, _scope(headers=cookie, client=("192.0.2.7", 40001)))) == 200
    assert _status(_call(ui, _scope(headers=cookie, client=("192.0.2.8", 40000)))) == 403     # another machine
    assert _status(_call(ui, _scope(headers=cookie, client=("127.0.0.1", 40000)))) == 403     # a neighbour here
    # two browsers get two values; a restarted gate knows neither (the token address opens it again)
    assert _session(ui, client=("192.0.2.8", 1)) != session
    from dagster_project.webgate import UiGate

    assert _status(_call(UiGate(app, TOKEN), _scope(headers=cookie, client=("192.0.2.7", 40001)))) == 403
    assert len(app.scopes) == 1


def test_a_loopback_browser_of_another_account_is_bound_to_its_account(connection) -> None:
    from dagster_project.webgate import UiGate

    app = _App()
    ui = UiGate(app, TOKEN, uid=os.geteuid() + 1)      # this process plays a browser of an account not the owner's
    client, server = connection
    session = _session(ui, client=client, server=server)
    cookie = {"cookie": f"pickapic-ui-{server[1]}={session}", "host": f"127.0.0.1:{server[1]}"}
    assert _status(_call(ui, _scope(headers=cookie, client=client, server=server))) == 200
    # the same cookie from a loopback socket that is not this account's (here: none the kernel knows): refused
    assert _status(_call(ui, _scope(headers=cookie, client=("127.0.0.1", 1), server=server))) == 403
    assert len(app.scopes) == 1


def test_the_owners_loopback_browser_gets_no_cookie(gate, connection) -> None:
    ui, app = gate
    client, server = connection
    sent = _call(ui, _scope(path="/runs", query=f"token={TOKEN}".encode(), client=client, server=server))
    headers = _headers(sent)
    assert _status(sent) == 303 and headers[b"location"] == [b"/runs"] and b"set-cookie" not in headers
    assert app.scopes == []


def test_sessions_are_bounded(gate) -> None:
    from dagster_project import webgate

    ui, app = gate
    first = _session(ui, client=("192.0.2.7", 1))
    for _ in range(webgate._SESSIONS_MAX + 10):
        _session(ui, client=("192.0.2.9", 1))
    assert len(ui._sessions) == webgate._SESSIONS_MAX
    assert _status(_call(ui, _scope(headers={"cookie": f"pickapic-ui-3000={first}"}, client=("192.0.2.7", 1)))) == 403


# ---------------------------------------------------------------------------------------------------------------
# framing

def test_every_answer_forbids_framing_by_another_site(gate) -> None:
    from dagster_project.webgate import UiGate

    ui, app = gate
    for sent in (_call(ui, _scope()),                                            # 403
                 _call(ui, _scope(query=f"token={TOKEN}".encode())),             # 303
                 _call(ui, _scope(headers=AUTH))):                               # the app's
        headers = _headers(sent)
        assert headers[b"x-frame-options"] == [b"SAMEORIGIN"]
        assert headers[b"content-security-policy"] == [b"frame-ancestors 'self'"]

    async def own_policy(scope, receive, send) -> None:       # Dagster's page: its own CSP, kept and extended
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"Content-Security-Policy", b"script-src 'self';"),
                                (b"X-Frame-Options", b"ALLOWALL")]})
        await send({"type": "http.response.body", "body": b""})

    headers = _headers(_call(UiGate(own_policy, TOKEN), _scope(headers=AUTH)))
    assert headers[b"content-security-policy"] == [b"script-src 'self'; frame-ancestors 'self'"]
    assert headers[b"x-frame-options"] == [b"SAMEORIGIN"]

    async def framed_anywhere(scope, receive, send) -> None:  # a policy of its own allowing any frame: one more
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-security-policy", b"frame-ancestors *")]})
        await send({"type": "http.response.body", "body": b""})

    headers = _headers(_call(UiGate(framed_anywhere, TOKEN), _scope(headers=AUTH)))
    assert headers[b"content-security-policy"] == [b"frame-ancestors *", b"frame-ancestors 'self'"]


# ---------------------------------------------------------------------------------------------------------------
# the redirect after ?token=

@pytest.mark.parametrize(("raw_path", "location"), [
    (b"//evil.example/x", b"/evil.example/x"),
    (b"///evil.example", b"/evil.example"),
    (b"/\\evil.example", b"/%5Cevil.example"),
    (b"http://evil.example/x", b"/"),
    (b"/a b\"<>", b"/a%20b%22%3C%3E"),
    (b"/%2F%2Fevil.example", b"/%2F%2Fevil.example"),
])
def test_the_redirect_never_leaves_the_ui(gate, raw_path: bytes, location: bytes) -> None:
    ui, _ = gate
    scope = _scope(path=raw_path.decode("latin-1"), query=f"token={TOKEN}".encode())
    scope["raw_path"] = raw_path
    sent = _call(ui, scope)
    assert _status(sent) == 303 and _headers(sent)[b"location"] == [location]


def test_the_redirect_keeps_the_other_parameters_as_sent(gate) -> None:
    ui, app = gate
    scope = _scope(method="HEAD", path="/runs", query=f"a=%2F+b&%74oken={TOKEN}&c=%E2%9C%93&token=x&d".encode())
    scope["raw_path"] = b"/runs"
    sent = _call(ui, scope)
    assert _status(sent) == 303 and _headers(sent)[b"location"] == [b"/runs?a=%2F+b&c=%E2%9C%93&d"]
    # no raw_path (another server): the decoded path, encoded again; never a 500
    sent = _call(ui, _scope(path="/assets/caption_\u2713", query=f"token={TOKEN}".encode()))
    assert _status(sent) == 303 and _headers(sent)[b"location"] == [b"/assets/caption_%E2%9C%93"]
    assert app.scopes == []


# ---------------------------------------------------------------------------------------------------------------
# IPv4-mapped loopback

def test_v4_mapped_loopback_is_loopback() -> None:
    from dagster_project.webgate import _host_name, _loopback

    assert _loopback("::ffff:127.0.0.1") and _loopback("::ffff:127.1.2.3") and _loopback("[::ffff:127.0.0.1]")
    assert _loopback("::1") and _loopback("127.0.0.1")
    assert not _loopback("::ffff:10.0.0.1") and not _loopback("::ffff:0:127.0.0.1") and not _loopback("x")
    assert _loopback(_host_name("[::ffff:127.0.0.1]:3000"))


def test_a_dual_stack_ui_knows_its_ipv4_owner_and_refuses_another_account() -> None:
    from dagster_project.webgate import UiGate, peer_uid

    with socket.socket(socket.AF_INET6) as listener:
        listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        listener.bind(("::", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)) as client:
            accepted, peer = listener.accept()
            with accepted:
                seen_client, seen_server = peer[:2], accepted.getsockname()[:2]
                assert seen_client[0] == "::ffff:127.0.0.1" and client.getsockname()[1] == seen_client[1]
                assert peer_uid(seen_client, seen_server) == os.geteuid()
                scope = _scope(client=seen_client, server=seen_server, headers={"host": f"127.0.0.1:{port}"})
                app = _App()
                assert _status(_call(UiGate(app, TOKEN), dict(scope))) == 200
                assert _status(_call(UiGate(app, TOKEN, uid=os.geteuid() + 1), dict(scope))) == 403
                assert len(app.scopes) == 1
