"""The Dagster UI of a data home behind a gate: only the home's owner may use it (review rev32h).

Dagster's webserver has no login: whoever reaches its port may launch, re-execute and delete runs (they execute
as the home's owner, with its environment: ``$PICKAPIC_APP_DB_DSN``, ``PGPASSWORD``) and switch schedules and
sensors; on 127.0.0.1 that is every other account of the machine. ``pickapic serve`` and ``pickapic ui`` therefore
start the webserver as ``python -m dagster_project.webgate`` (Dagster's own webserver command, its flags unchanged,
the same workspace), whose ASGI app is Dagster's wrapped in :class:`UiGate`. A request (HTTP or websocket) passes
when

- it comes over loopback from a socket of this account (its owner's uid, looked up in ``/proc/net/tcp{,6}`` as
  ``ss -e`` does; the owner's browser, ``curl``, an SSH tunnel's ``sshd``), to a loopback or ``localhost`` name
  (``Host``), so a web page that rebinds its own name to 127.0.0.1 (DNS rebinding) is not let in, and says no
  proxy relays it (no ``X-Forwarded-For`` / ``-Proto``, ``Forwarded``: fix33b); or
- it carries the home's UI token (Jupyter's way, for a browser that is not this account's, or a ``--host`` beyond
  loopback): ``?token=...`` once (answered by a redirect to the same address, as sent, without it), then a cookie,
  or a header ``Authorization: token ...`` / ``X-Pickapic-Token``. The cookie (``HttpOnly``, ``SameSite=Strict``,
  named after the port) never holds the token, since a browser sends a cookie of a host to every port of it: it
  holds a random value the gate keeps in memory, bound to the browser it was given to (its socket's account over
  loopback, its address beyond; through a relaying proxy, that proxy's socket's account or address: rev33q), and
  ``Secure`` where the request came over HTTPS, a relaying proxy's ``X-Forwarded-Proto`` / ``Forwarded`` saying
  so too; the owner's loopback browser gets none (fix32j).

A request from another site's page is refused whatever it carries (CSRF, or opening its websocket): an ``Origin``
that is not the address it was sent to, or ``Sec-Fetch-Site: cross-site`` / ``same-site`` (another port); so is a
``/graphql`` address whose ``?query=`` holds anything but queries (a GET mutation carries no ``Origin``), or
over 16 KiB / 2,000 tokens, parsed only once the request passed the checks above (a stranger's costs nothing). Every
answer forbids framing by another site (``X-Frame-Options``, CSP ``frame-ancestors``). Everything else gets 403,
its connection closed with it (the body a refused request may still send is not waited for). The token is random
(256 bits), kept in ``HOME/dagster/ui.token`` (mode 0600, created once, kept across restarts so a bookmark keeps
working; :func:`ui_token`); it is never logged: ``serve`` / ``ui`` print the address with it only to a terminal.

The webserver is Dagster's, started by its own CLI (:func:`main`, :func:`install`), with uvicorn set for a machine
shared with other accounts (:func:`server_settings`, review rev33b): no proxy headers (uvicorn trusts
``X-Forwarded-For`` from 127.0.0.1 by default, so any local account set the client address the gate checks), h11
with a request head bounded to :data:`HEAD_MAX` (httptools, uvicorn's default, kept an endless header in memory) and
closed :data:`HEAD_TIMEOUT_S` seconds after a connection opened (or its last answer) without a complete head, the
same bound for a websocket's handshake (:func:`head_bounded_ws_protocol`); the code server's socket in a 0700
temporary folder (:func:`private_tempdir`).
"""
from __future__ import annotations

import contextlib
import hmac
import ipaddress
import os
import re
import secrets
import stat
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, unquote_plus, urlencode, urlsplit

from formats.home import DataHome

TOKEN_FILE = "ui.token"
TOKEN_PARAMETER = "token"
TOKEN_HEADER = "x-pickapic-token"
_TOKEN = re.compile(r"[A-Za-z0-9_-]{32,128}")
_SESSION = re.compile(r"[A-Za-z0-9_-]{43}")     # a session cookie's value as the gate makes it (token_urlsafe(32))
_TOKEN_FILE_MAX = 256
# GraphQL in an address (``/graphql?query=``) is parsed only for a request that passes the gate otherwise, and only
# this much of it (graphql-core takes about 80 us a field: an unbounded one held the event loop for seconds)
_ADDRESS_QUERY_MAX = 16 << 10
_ADDRESS_QUERY_TOKENS = 2000
# headers a proxy adds for the client it relays: such a request is not its socket's account's (review rev33b)
_RELAYED = ("x-forwarded-for", "x-forwarded-proto", "forwarded")
# uvicorn as the gate's webserver runs it (:func:`server_settings`): a request's head (line and headers) is
# refused beyond this size, a connection that sends no complete head within this many seconds is closed
HEAD_MAX = 64 << 10
HEAD_TIMEOUT_S = 10.0
_SESSIONS_MAX = 256                 # browsers let in by the token, remembered by the gate (oldest forgotten first)
_URL_SAFE = "/%!$&'()*+,;=:@-._~"   # what a redirect's path keeps as sent; everything else is percent-encoded
_QUERY_SAFE = _URL_SAFE + "?"
_REFUSED_FETCH_SITES = ("cross-site", "same-site")     # Sec-Fetch-Site of another site's (or port's) page
# every answer, Dagster's and the gate's: no other site's page may frame the UI (clickjacking); Dagster frames its
# own pages (the notebook viewer), so its own origin still may
_FRAMING = [(b"x-frame-options", b"SAMEORIGIN")]
_FRAME_ANCESTORS = "frame-ancestors 'self'"

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class TokenFileError(RuntimeError):
    """The home's UI token file is not one this account may use (a link, another account's file, not a file)."""


def token_file(home: DataHome) -> Path:
    """Where the home's UI token is kept (``HOME/dagster/ui.token``)."""
    return home.dagster_home / TOKEN_FILE


def _read_token(path: Path) -> str | None:
    """The token in ``path``: None when it is missing, or is this account's regular file that is not one (others'
    bits set, or not a token: it is replaced); :class:`TokenFileError` for a link or anything not this account's."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise TokenFileError(f"{path}: the UI token file cannot be read ({exc.strerror or exc}); remove it, "
                             "a new one is made") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid():
            raise TokenFileError(f"{path}: the UI token file is not a regular file of this account; remove it, a "
                                 "new one is made")
        if info.st_mode & 0o077:        # others may have read it: a new one
            return None
        data = os.read(fd, _TOKEN_FILE_MAX + 1)
    finally:
        os.close(fd)
    text = data.decode("ascii", "replace").strip()
    return text if _TOKEN.fullmatch(text) else None


def ui_token(home: DataHome) -> str:
    """The home's UI token (:func:`token_file`), made when there is none (mode 0600 whatever the umask, written
    whole before it appears under its name); one whose file others may read (group or other bits) or that is no
    token is replaced by a new one. Raises :class:`TokenFileError` when the file is not this account's."""
    path = token_file(home)
    token = _read_token(path)
    if token is not None:
        return token
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    temp = path.with_name(f".{TOKEN_FILE}.{secrets.token_hex(8)}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, token.encode("ascii") + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        if os.path.lexists(path):       # this account's file, loose or no token (_read_token said so): replaced
            os.replace(temp, path)
            return token
        try:
            os.link(temp, path)         # never over a file another start made meanwhile: that one is used
        except FileExistsError:
            again = _read_token(path)
            if again is None:
                os.replace(temp, path)
                return token
            return again
        return token
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)


def owner_url(host: str, port: int, token: str) -> str:
    """The address the owner opens (with the token: a browser that is not this account's gets in too)."""
    name = host if ":" not in host or host.startswith("[") else f"[{host}]"
    return f"http://{name}:{port}/?{TOKEN_PARAMETER}={token}"


def announce(home: DataHome, host: str, port: int, out=None) -> str:
    """The line that tells the owner where the UI is: with the token when ``out`` (stdout) is a terminal, and
    otherwise (a service's journal, a log file) only where the token is kept: it never goes into a log."""
    out = sys.stdout if out is None else out
    token = ui_token(home)
    with contextlib.suppress(AttributeError, ValueError, OSError):
        if out.isatty():
            return owner_url(host, port, token)
    name = host if ":" not in host or host.startswith("[") else f"[{host}]"
    return f"http://{name}:{port} (the token for a browser of another account: {token_file(home)})"


# ---------------------------------------------------------------------------------------------------------------
# the ASGI middleware

def _loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address: ``127.0.0.0/8``, ``::1``, or ``::ffff:127.x.y.z`` (how a dual-stack
    socket, ``--host ::``, sees an IPv4 loopback client)."""
    with contextlib.suppress(ValueError):
        address = ipaddress.ip_address(host.strip("[]"))
        mapped = getattr(address, "ipv4_mapped", None)
        return (mapped if mapped is not None else address).is_loopback
    return False


def _graphql_mutation_in_query(scope: Scope, query: list[tuple[str, str]]) -> bool:
    """Whether a request to Dagster's ``/graphql`` carries in its address (``?query=``, which Dagster executes for a
    GET and for a POST that is not JSON) anything but queries: a mutation or subscription, or text that is not
    GraphQL. The UI's own mutations are POSTed as JSON; from an address they come only from another site's ``<img>``
    or link (CSRF: a GET carries no ``Origin``)."""
    if not str(scope.get("path", "")).rstrip("/").endswith("/graphql"):
        return False
    texts = [value for key, value in query if key == "query"]
    if not texts:
        return False
    if sum(len(text) for text in texts) > _ADDRESS_QUERY_MAX:
        return True         # bounded: what is parsed here runs on the webserver's one event loop
    from graphql import GraphQLError, OperationDefinitionNode, OperationType, parse

    for text in texts:
        try:
            document = parse(text, no_location=True, max_tokens=_ADDRESS_QUERY_TOKENS)
        except (GraphQLError, RecursionError, ValueError, TypeError):
            return True
        if any(isinstance(node, OperationDefinitionNode) and node.operation != OperationType.QUERY
               for node in document.definitions):
            return True
    return False


def _relayed(headers: dict[str, str]) -> bool:
    """Whether a request says a proxy relays it for another client (``X-Forwarded-For``, ``-Proto``,
    ``Forwarded``). Its socket's account is then not its sender's; and where uvicorn trusts such headers from
    loopback (``proxy_headers``, on by default: :func:`server_settings` turns it off), ``scope["client"]`` is the
    header's address, which any local account may set to the owner's open connection (review rev33b)."""
    return any(name in headers for name in _RELAYED)


def _relayed_over_https(headers: dict[str, str]) -> bool:
    """Whether a relaying proxy says a request reached it over HTTPS: an ``X-Forwarded-Proto`` value, or a
    ``Forwarded`` element's ``proto``, of ``https`` (any of a chain's). With ``proxy_headers`` off (review rev33b)
    ``scope["scheme"]`` is ``http`` for such a request too; its session cookie is then marked ``Secure`` (review
    rev33q), which is safe whoever says so: the browser only ever sends that cookie over HTTPS."""
    protos = [value.strip().lower() for value in headers.get("x-forwarded-proto", "").split(",")]
    for element in headers.get("forwarded", "").split(","):
        for pair in element.split(";"):
            key, _, value = pair.partition("=")
            if key.strip().lower() == "proto":
                protos.append(value.strip().strip('"').strip().lower())
    return "https" in protos


def _socket_sender(scope: Scope) -> tuple[str, Any]:
    """Who holds the socket ``scope`` came over: ``("uid", n)`` for a loopback socket of account ``n``
    (:func:`peer_uid`), else ``("ip", address)`` (beyond loopback, or a loopback socket not found in ``/proc``)."""
    client, server = scope.get("client") or (None, None), scope.get("server") or (None, None)
    if client[0] is not None and _loopback(str(client[0])) and server[0] is not None:
        with contextlib.suppress(ValueError, TypeError):
            uid = peer_uid((str(client[0]), int(client[1])), (str(server[0]), int(server[1])))
            if uid is not None:
                return ("uid", uid)
    return ("ip", None if client[0] is None else str(client[0]))


def _host_name(value: str) -> str:
    """The host of a ``Host`` header value (``name``, ``name:port``, ``[v6]:port``), lower case."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def _proc_addresses(ip: str, port: int) -> list[str]:
    """``ip:port`` as ``/proc/net/tcp{,6}`` write it (hex, each 32-bit word in host order; an IPv4 address also
    as the IPv4-mapped IPv6 one a dual-stack socket shows)."""
    address = ipaddress.ip_address(ip)
    found = []
    if isinstance(address, ipaddress.IPv4Address):
        found.append(address.packed[::-1].hex().upper())
        address = ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + address.packed)
    elif address.ipv4_mapped is not None:
        found.append(address.ipv4_mapped.packed[::-1].hex().upper())
    packed = address.packed
    found.append("".join(packed[i:i + 4][::-1].hex().upper() for i in range(0, 16, 4)))
    return [f"{text}:{port:04X}" for text in found]


def peer_uid(client: tuple[str, int], server: tuple[str, int]) -> int | None:
    """The uid owning the local TCP socket at ``client`` connected to ``server`` (``/proc/net/tcp``, ``tcp6``),
    None when there is none on this machine (a remote peer, a closed connection, no ``/proc``)."""
    try:
        locals_ = set(_proc_addresses(client[0], int(client[1])))
        remotes = set(_proc_addresses(server[0], int(server[1])))
    except (ValueError, TypeError, IndexError):
        return None
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table, encoding="ascii", errors="replace") as lines:
                next(lines, None)
                for line in lines:
                    fields = line.split()
                    if len(fields) > 7 and fields[1] in locals_ and fields[2] in remotes:
                        with contextlib.suppress(ValueError):
                            return int(fields[7])
        except OSError:
            continue
    return None


class UiGate:
    """ASGI middleware: ``app`` for this account and for the holders of ``token`` (see the module), 403 for the
    rest. ``uid``: the account let in without the token over loopback (default: this process's)."""

    def __init__(self, app: Callable[..., Awaitable[None]], token: str, uid: int | None = None) -> None:
        if not _TOKEN.fullmatch(token):
            raise ValueError("the UI token is not a token")
        self.app = app
        self.token = token
        self.uid = os.geteuid() if uid is None else uid
        # cookie value -> the browser it was given to (("uid", its account) over loopback, ("ip", its address)
        # beyond, ("relayed", the relaying proxy's socket's sender) through a proxy): random, only in this process's memory, never the token (a cookie of 127.0.0.1 goes to every
        # port of it, another account's server's too; there it opens nothing, the browser's account differing)
        self._sessions: dict[str, tuple[str, Any]] = {}

    def cookie_name(self, scope: Scope) -> str:
        server = scope.get("server") or (None, None)
        return f"pickapic-ui-{server[1]}" if server[1] else "pickapic-ui"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") not in ("http", "websocket"):
            await self.app(scope, receive, send)        # lifespan
            return
        if scope["type"] == "http":
            send = _forbid_framing(send)
        headers = _headers(scope)
        raw_query = scope.get("query_string", b"") or b""
        query = [(key, value) for key, value in parse_qsl(raw_query.decode("latin-1"), keep_blank_values=True)]
        given = [value for key, value in query if key == TOKEN_PARAMETER]
        if given:       # never passed on: neither Dagster nor a log line (uvicorn's access log) gets it
            scope["query_string"] = urlencode([(k, v) for k, v in query if k != TOKEN_PARAMETER]).encode("latin-1")
        if not self._same_origin(headers):
            await _refuse(scope, receive, send, "the request comes from another site's page (Origin)")
            return
        if headers.get("sec-fetch-site", "").strip().lower() in _REFUSED_FETCH_SITES:
            await _refuse(scope, receive, send, "the request comes from another site's page (Sec-Fetch-Site)")
            return
        # who sends it, first: a request refused costs no more than its refusal (review rev33b: the GraphQL of a
        # stranger's address was parsed before, for seconds, on the event loop that serves the owner too)
        by_query = any(self._valid(value) for value in given)
        if not (by_query or self._by_token(scope, headers) or self._by_account(scope, headers)):
            await _refuse(scope, receive, send, "open the address with the token that `pickapic serve` / `pickapic "
                          "ui` printed (its file: HOME/dagster/ui.token), as the account that owns the data home")
            return
        if _graphql_mutation_in_query(scope, query):
            await _refuse(scope, receive, send, "a GraphQL mutation (or anything but a query, or a query over "
                          f"{_ADDRESS_QUERY_MAX >> 10} KiB) in the address is not run: POST it as JSON")
            return
        if by_query and scope["type"] == "http" and scope.get("method") in ("GET", "HEAD"):
            await self._set_cookie_and_redirect(scope, headers, raw_query, send)
            return
        await self.app(scope, receive, send)

    def _valid(self, value: str | None) -> bool:
        return bool(value) and hmac.compare_digest(value.encode("utf-8", "replace"), self.token.encode("ascii"))

    def _by_token(self, scope: Scope, headers: dict[str, str]) -> bool:
        authorization = headers.get("authorization", "")
        if authorization[:6].lower() == "token " and self._valid(authorization[6:].strip()):
            return True
        if self._valid(headers.get(TOKEN_HEADER, "").strip()):
            return True
        # every cookie of the gate's name (another 127.0.0.1 site may set one of that name too, for a longer path, sent
        # first), looked up in the sessions by hash: a look-up's time says nothing of how near a guess is to a
        # session value (keyed, per-process string hashes), and a header of many costs one look-up each
        for value in _cookie_values(headers.get("cookie", ""), self.cookie_name(scope)):
            browser = self._sessions.get(value) if _SESSION.fullmatch(value) else None
            if browser is not None and browser == self._browser(scope, headers):
                return True
        return False

    def _browser(self, scope: Scope, headers: dict[str, str]) -> tuple[str, Any]:
        """Who sends ``scope``: its socket's sender (:func:`_socket_sender`: ``("uid", n)`` for a loopback socket of
        account ``n``, else ``("ip", address)``), or ``("relayed", that)`` for a request a proxy relays
        (:func:`_relayed`): the browser behind it is unknown (its address may be the header's, anyone's), so such a
        session holds for what that proxy relays, only from the proxy's own socket (its account, or its address): a
        neighbour presenting the cookie with a forwarded header from its own socket is another sender (rev33q)."""
        sender = _socket_sender(scope)
        return ("relayed", sender) if _relayed(headers) else sender

    def _new_session(self, scope: Scope, headers: dict[str, str]) -> str:
        while len(self._sessions) >= _SESSIONS_MAX:
            del self._sessions[next(iter(self._sessions))]
        value = secrets.token_urlsafe(32)
        self._sessions[value] = self._browser(scope, headers)
        return value

    def _by_account(self, scope: Scope, headers: dict[str, str]) -> bool:
        client, server = scope.get("client"), scope.get("server")
        if not client or not server or not _loopback(str(client[0])):
            return False
        if _relayed(headers):       # a proxy's request (or one claiming another's address): not the socket's own
            return False
        host = _host_name(headers.get("host", ""))
        if host != "localhost" and not _loopback(host):     # DNS rebinding: another site's name for 127.0.0.1
            return False
        return peer_uid((str(client[0]), int(client[1])), (str(server[0]), int(server[1]))) == self.uid

    @staticmethod
    def _same_origin(headers: dict[str, str]) -> bool:
        origin = headers.get("origin")
        if origin is None:
            return True
        try:
            parts = urlsplit(origin.strip())
            netloc = parts.netloc.lower()
        except ValueError:
            return False
        return bool(netloc) and netloc == headers.get("host", "").strip().lower()

    async def _set_cookie_and_redirect(self, scope: Scope, headers: dict[str, str], raw_query: bytes,
                                       send: Send) -> None:
        """303 to the address as it was sent (its raw path and query, only the token taken out); a cookie for a
        browser that is not the owner's over loopback (the owner's passes without one), holding a random session
        value bound to that browser (:meth:`_browser`), never the token."""
        answer = [(b"location", _redirect_location(scope, raw_query)), (b"cache-control", b"no-store"),
                  (b"content-length", b"0")]
        if not self._by_account(scope, headers):
            secure = scope.get("scheme") == "https" or _relayed_over_https(headers)
            cookie = (f"{self.cookie_name(scope)}={self._new_session(scope, headers)}; Path=/; HttpOnly; SameSite=Strict"
                      + ("; Secure" if secure else ""))
            answer.append((b"set-cookie", cookie.encode("ascii")))
        await send({"type": "http.response.start", "status": 303, "headers": answer})
        await send({"type": "http.response.body", "body": b""})


def _redirect_location(scope: Scope, raw_query: bytes) -> bytes:
    """The path as the client sent it (``raw_path``: an encoded ``?``, ``/`` or ``\\`` stays encoded), anything
    beyond the URL's characters percent-encoded, never ``//``-leading (another host) nor absolute; the query's
    parameters but the token, as sent."""
    raw = scope.get("raw_path")
    if not isinstance(raw, bytes | bytearray) or not raw:
        raw = (str(scope.get("root_path", "")) + str(scope.get("path", "/"))).encode("utf-8", "surrogateescape")
    location = quote(bytes(raw).split(b"?", 1)[0], safe=_URL_SAFE)
    if not location.startswith("/"):
        location = "/"
    location = "/" + location.lstrip("/")
    kept = [piece for piece in bytes(raw_query).split(b"&")
            if piece and unquote_plus(piece.split(b"=", 1)[0].decode("latin-1")) != TOKEN_PARAMETER]
    if kept:
        location += "?" + quote(b"&".join(kept), safe=_QUERY_SAFE)
    return location.encode("ascii")


def _forbid_framing(send: Send) -> Send:
    """``send`` whose answers forbid framing by another site: ``X-Frame-Options`` and the CSP's
    ``frame-ancestors`` (added to Dagster's own policy, or as one)."""
    async def framed(message: MutableMapping[str, Any]) -> None:
        if message.get("type") == "http.response.start":
            headers = [(bytes(k), bytes(v)) for k, v in message.get("headers") or ()
                       if bytes(k).lower() != b"x-frame-options"]
            policies = [i for i, (k, _) in enumerate(headers) if k.lower() == b"content-security-policy"]
            own = True
            for i in policies:
                key, value = headers[i]
                if b"frame-ancestors" not in value.lower():
                    headers[i] = (key, value.rstrip(b"; ") + b"; " + _FRAME_ANCESTORS.encode("ascii"))
                    own = False
            if own:         # none, or one with its own frame-ancestors: a browser enforces every policy given
                headers.append((b"content-security-policy", _FRAME_ANCESTORS.encode("ascii")))
            message = {**message, "headers": headers + _FRAMING}
        await send(message)
    return framed


def _cookie_values(header: str, name: str) -> list[str]:
    """The values of the cookies named ``name`` in a ``Cookie`` header (RFC 6265 5.4: ``name=value`` pairs split on
    ``;``, a value in double quotes unquoted of them, nothing else), in the header's order. Linear in the header, and
    read before the gate knows who sent it: ``http.cookies.SimpleCookie`` unquotes a quoted value in quadratic time
    before Python 3.11.10 (CVE-2024-7592: 20 KB held the event loop for seconds, review rev33j) and stops at the
    first cookie it cannot parse (another 127.0.0.1 site's badly made one hid the gate's)."""
    found = []
    for pair in header.split(";"):
        key, equals, value = pair.partition("=")
        if equals and key.strip(" \t") == name:
            value = value.strip(" \t")
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            found.append(value)
    return found


def _headers(scope: Scope) -> dict[str, str]:
    found: dict[str, str] = {}
    for key, value in scope.get("headers") or ():
        name = key.decode("latin-1").lower()
        found[name] = (found[name] + "; " if name == "cookie" and name in found else "") + value.decode("latin-1")
    return found


async def _refuse(scope: Scope, receive: Receive, send: Send, why: str) -> None:
    if scope["type"] == "websocket":
        await receive()     # websocket.connect: closing before accepting answers the handshake with 403
        await send({"type": "websocket.close", "code": 1008})
        return
    # closed once answered (h11 then closes it): the body it may still send is nobody's to read, and a refused
    # sender keeps no connection (one body byte after the answer held it for good, review rev33j)
    body = f"403 Forbidden: this Dagster UI serves only the owner of its data home: {why}\n".encode()
    await send({"type": "http.response.start", "status": 403,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                            (b"content-length", str(len(body)).encode("ascii")), (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


# ---------------------------------------------------------------------------------------------------------------
# the webserver

def gated_app_factory(factory: Callable[..., Any], token: str) -> Callable[..., Any]:
    """Dagster's app factory (``create_app_from_workspace_process_context``) whose app is behind :class:`UiGate`."""
    if getattr(factory, "_pickapic_gated", False):      # gated already: one gate
        return factory

    def create(*args: Any, **kwargs: Any) -> UiGate:
        return UiGate(factory(*args, **kwargs), token)
    create._pickapic_gated = True       # type: ignore[attr-defined]
    return create


_PROTOCOL: list[type] = []


def head_bounded_protocol() -> type:
    """uvicorn's h11 protocol (h11 refuses a request head over ``h11_max_incomplete_event_size``: 400 and closed;
    httptools, uvicorn's ``http="auto"`` choice, has no bound, review rev33b) closing a connection that has not sent
    a complete request head :data:`HEAD_TIMEOUT_S` seconds after it opened or after its last answer, whatever it
    sends meanwhile (a head's bytes, or the body of a request already answered; uvicorn's own keep-alive timer
    starts only after a first answer and stops at the next byte: an idle or dribbling connection of any local
    account was kept for good, reviews rev33b, rev33j)."""
    if _PROTOCOL:
        return _PROTOCOL[0]
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeadBoundedH11Protocol(H11Protocol):
        _head_timer: Any = None

        def connection_made(self, transport: Any) -> None:       # type: ignore[override]
            super().connection_made(transport)
            self._watch_head()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            self._watch_head()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._watch_head()

        def connection_lost(self, exc: Exception | None) -> None:
            self._stop_head_timer()
            super().connection_lost(exc)

        def _waiting(self) -> bool:
            """Whether the connection waits for a request's head: h11's ``their_state`` IDLE (none yet, or the
            previous one answered), or its answer is complete while the request's body still comes (``our_state``
            DONE: that body is nobody's to read, uvicorn throws it away, and a byte of it stops uvicorn's keep-alive
            timer for good, review rev33j)."""
            return self.conn.their_state is h11.IDLE or self.conn.our_state in (h11.DONE, h11.MUST_CLOSE)

        def _watch_head(self) -> None:
            """A timer while the connection waits for a request's head (:meth:`_waiting`), started once per wait
            (bytes trickling in, a head's or an answered request's body, do not restart it)."""
            if self._waiting() and not self.transport.is_closing():
                if self._head_timer is None:
                    self._head_timer = self.loop.call_later(HEAD_TIMEOUT_S, self._head_timeout)
            else:
                self._stop_head_timer()

        def _stop_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timeout(self) -> None:
            self._head_timer = None
            if self._waiting() and not self.transport.is_closing():
                self.transport.close()

    _PROTOCOL.append(HeadBoundedH11Protocol)
    return HeadBoundedH11Protocol


def head_bounded_ws_protocol() -> type:
    """uvicorn's websocket protocol on the ``websockets`` library (its sans-I/O one, what ``ws="auto"`` picks), with
    that library's head limits raised to the gate's: a handshake reaches it only through
    :func:`head_bounded_protocol` (uvicorn's h11 protocol passes it the head h11 parsed, bounded to :data:`HEAD_MAX`,
    written again as ``name: value`` lines), whose bound is the one that counts. ``websockets`` parses it again with
    its own, a header line of at most 8,192 bytes and 128 headers (module settings, ``WEBSOCKETS_MAX_LINE_LENGTH``
    read once at import): a ``Cookie`` line of 9 KB (every cookie of 127.0.0.1, any port's) opened the UI over
    HTTP but had its websocket refused with 431 (review rev33q). Raised here, never lowered, so that no head within
    :data:`HEAD_MAX` is refused: a line of :data:`HEAD_MAX` and the bytes uvicorn's rewriting adds, as many header
    lines as :data:`HEAD_MAX` can hold."""
    import websockets.http11
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

    websockets.http11.MAX_LINE_LENGTH = max(websockets.http11.MAX_LINE_LENGTH, HEAD_MAX + 16)
    websockets.http11.MAX_NUM_HEADERS = max(websockets.http11.MAX_NUM_HEADERS, HEAD_MAX // 2)
    return WebSocketsSansIOProtocol


def server_settings() -> dict[str, Any]:
    """What the gate's webserver adds to Dagster's ``uvicorn.run(app, host=, port=, log_level=)``: no proxy headers
    (uvicorn trusts ``X-Forwarded-For`` from 127.0.0.1 by default, i.e. from every local account: it set the
    client address the gate checks, review rev33b), :func:`head_bounded_protocol` with a :data:`HEAD_MAX` head, and
    :func:`head_bounded_ws_protocol` for websockets (the same head bound for a handshake, review rev33q)."""
    return {"proxy_headers": False, "http": head_bounded_protocol(), "h11_max_incomplete_event_size": HEAD_MAX,
            "ws": head_bounded_ws_protocol()}


class _GatedUvicorn:
    """The ``uvicorn`` module as Dagster's webserver CLI sees it: ``run`` with :func:`server_settings` added."""

    def __init__(self, module: Any) -> None:
        self._module = module

    def __getattr__(self, name: str) -> Any:
        return getattr(self._module, name)

    def run(self, app: Any, **kwargs: Any) -> Any:
        return self._module.run(app, **{**kwargs, **server_settings()})


def install(cli: Any, token: str, set_attribute: Callable[[Any, str, Any], None] = setattr) -> None:
    """Dagster's webserver CLI module (``dagster_webserver.cli``) set to serve the gated UI: its app factory
    (:func:`gated_app_factory`) and its ``uvicorn.run`` (:class:`_GatedUvicorn`), both on Dagster's own start-up
    path (``set_attribute``: how, e.g. a test's ``monkeypatch.setattr``)."""
    set_attribute(cli, "create_app_from_workspace_process_context",
                  gated_app_factory(cli.create_app_from_workspace_process_context, token))
    if not isinstance(cli.uvicorn, _GatedUvicorn):
        set_attribute(cli, "uvicorn", _GatedUvicorn(cli.uvicorn))


def private_tempdir() -> str:
    """A folder only this account may enter (0700 whatever the umask), made the process's temporary folder and
    removed at its exit: the Unix socket of the code server the webserver spawns (Dagster's
    ``safe_tempfile_path_unmanaged``, ``$TMPDIR``) gets gRPC's umask mode, group-writable under umask 002, and
    connecting to it is running code in the owner's code location."""
    import atexit
    import shutil
    import tempfile

    folder = tempfile.mkdtemp(prefix="pickapic-ui-")
    os.chmod(folder, 0o700)
    tempfile.tempdir = folder       # this process only: its children (the code server, runs) keep $TMPDIR
    atexit.register(shutil.rmtree, folder, True)
    return folder


def main() -> None:
    """``python -m dagster_project.webgate [dagster-webserver flags]``: Dagster's webserver (its CLI, uvicorn, the
    workspace the flags name) for the data home ``$PICKAPIC_HOME``, its app behind :class:`UiGate`."""
    import dagster_webserver.cli as webserver_cli

    home = os.environ.get("PICKAPIC_HOME")
    if not home:
        sys.exit("python -m dagster_project.webgate: error: PICKAPIC_HOME is not set (started by pickapic serve / ui)")
    try:
        token = ui_token(DataHome.at(home))
    except (TokenFileError, OSError) as exc:
        sys.exit(f"python -m dagster_project.webgate: error: {exc}")
    install(webserver_cli, token)
    private_tempdir()
    sys.argv[0] = "dagster-webserver"
    webserver_cli.main()


if __name__ == "__main__":
    main()
