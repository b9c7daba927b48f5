"""Connecting to the app's PostgreSQL database without ever showing its password.

The DSN (a libpq key/value string or a ``postgresql://`` URL) is parsed only to name the server in
messages: host, port, database and user, never the password. Every error raised here is built from
those parts and from libpq's reason with any password text removed, and is raised ``from None`` so
no driver exception (whose text may quote the DSN) travels along in a traceback or the Dagster UI.
The redaction goes by structure: host, port, database and user are the values of their own non-secret
keys and are shown whole (a password that happens to be part of a name, 'pick' in database
'pickapic', is never masked inside it: that spelled the password out as the hidden part); only free
text (libpq's reason) is searched for the password texts, and an occurrence inside one of those names
there is left as it is for the same reason. A ``dbname`` that is itself a connection string or URL
(libpq's ``expand_dbname`` form) is free text: searched for secrets, and shown whole as ``***`` when its
secrets cannot be told apart from the rest of it. In free text the value after any ``password=`` key is hidden
to the end of the quoted name holding it, and so is a start of a password (4 characters or more) ending a
quoted name: the server cuts a database name to 63 bytes before it quotes it, inside the password (review
rev24g).

The export's session is pinned as pg_dump pins its own, so the role's, database's or server's
defaults cannot change what is read: time zone, float digits, DateStyle and IntervalStyle (psycopg
parses only ISO dates), the schema the tables are looked up in, ``row_security = off`` (a policy
that would hide rows makes the read fail instead of exporting a subset) and the timeouts. With the
statement timeouts lifted, the connection bounds how long a dead peer goes unnoticed instead: TCP
keepalives and ``tcp_user_timeout`` on the client's socket (:data:`KEEPALIVE_PARAMETERS`, each unless the
DSN gives its own) and the server's (:data:`SERVER_KEEPALIVE_SETTINGS`, each unless already set).
"""
from __future__ import annotations

import bisect
import os
import re
from dataclasses import dataclass
from typing import Callable, Iterator

import psycopg
from psycopg import IsolationLevel, sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.types.string import ByteaBinaryLoader

from formats.files import account_name

# Where the deployment puts the app database's DSN and the app's image storage location.
DSN_ENV = "PICKAPIC_APP_DB_DSN"
IMAGE_STORE_ENV = "PICKAPIC_APP_IMAGE_STORE"
CONNECT_TIMEOUT_S = 10
APPLICATION_NAME = "pickapic-app-export"
# Session settings the export's SQL relies on: UTC day bounds for timestamptz columns, shortest exact
# float text (extra_float_digits >= 1), dates and intervals in the only styles psycopg parses (a server
# with DateStyle 'SQL, DMY' or 'German' failed every export reading the database's clock).
SESSION_SETTINGS = ("SET TIME ZONE 'UTC'", "SET extra_float_digits = 1", "SET DateStyle = 'ISO, YMD'",
                    "SET IntervalStyle = 'postgres'")
# The schema holding the app's tables (as sql/app_db/schema.sql creates them). The session's search_path
# is pinned to it: with the default ("$user", public) a schema named after the export's role would
# shadow the app's tables.
APP_SCHEMA = "public"
# What the export's (read-only) session sets as pg_dump sets it for its own: row_security off, so a
# row-level security policy that would hide rows from the role fails the read (see database_error)
# instead of exporting a subset; no statement or idle-in-transaction timeout (a role default sized for
# the app's own queries must not fail a nightly read of a whole day, and the transaction stays open only
# while the tables are read); a lock wait bounded, so an export stuck behind an ACCESS EXCLUSIVE lock
# (a migration left open) fails with that reason and the next run retries, instead of hanging: at most
# MAX_LOCK_WAIT, or the server's, database's or role's lock_timeout where that is shorter (a DBA's
# stricter limit is kept; with the export always lifting it to 5 minutes, a database set to 300 ms
# made an export wait 5 minutes behind a migration).
EXPORT_SETTINGS = ("SET row_security = off", "SET statement_timeout = 0",
                   "SET idle_in_transaction_session_timeout = 0")
MAX_LOCK_WAIT = "5min"
# PostgreSQL 17's transaction_timeout would end the export's transaction like the timeouts above.
EXPORT_SETTINGS_17 = ("SET transaction_timeout = 0",)
# libpq keys whose values are secrets (the password, and the passphrase of the client's SSL key).
SECRET_KEYS = ("password", "sslpassword")
# libpq keys whose values name the server and are never secret: shown whole, and an occurrence of one in
# libpq's reason is never masked (see redact).
NAME_KEYS = ("host", "hostaddr", "port", "user", "dbname")
NAME_ENV = ("PGHOST", "PGHOSTADDR", "PGPORT", "PGUSER", "PGDATABASE")
# Dead-peer detection on the client's socket (libpq connection parameters, each given only where the DSN
# gives none of its own; libpq ignores them on a unix socket). The export lifts statement_timeout, as pg_dump
# does, so without them a peer that vanished mid-export (a partition, a NAT dropping the flow, a host that
# died) was noticed only by the kernel's default keepalive, after about 2 h 11 min, the app tables locked
# meanwhile. Keepalive probes start after 60 s without traffic, every 10 s, and 6 unanswered ones (about 2
# minutes in all) end the connection; tcp_user_timeout ends it when data sent stays unacknowledged for 2
# minutes. A server busy with a long query still answers the probes (its kernel does), so nothing alive is cut.
KEEPALIVE_PARAMETERS = {"keepalives": "1", "keepalives_idle": "60", "keepalives_interval": "10",
                        "keepalives_count": "6", "tcp_user_timeout": "120000"}
# The same on the server's end of the export's session (GUCs any role may set; PostgreSQL ignores them on a
# unix socket), each set only where nothing set it (pg_settings.source 'default', the system's value): a backend stuck
# writing to a client that vanished (ClientWrite, holding the export's ACCESS SHARE locks, behind which a
# migration and then the app queue) ends after about 2 minutes instead of the kernel's 15-plus; a value the
# server, database, role or the DSN's options give is kept. tcp_user_timeout exists since PostgreSQL 12.
SERVER_KEEPALIVE_SETTINGS = {"tcp_keepalives_idle": "60", "tcp_keepalives_interval": "10",
                             "tcp_keepalives_count": "6", "tcp_user_timeout": "120000"}


class AppDatabaseError(RuntimeError):
    """The app database cannot be reached or used; the message names host, port and database only."""


@dataclass(frozen=True)
class ServerName:
    """Where a DSN points, without its secrets (what messages and metadata may show)."""

    host: str
    port: str
    dbname: str
    user: str

    def __str__(self) -> str:
        return f"database {self.dbname!r} on host {self.host!r} port {self.port} as user {self.user!r}"

    def as_metadata(self) -> dict[str, str]:
        """JSON-able host, port, database and user."""
        return {"host": self.host, "port": self.port, "database": self.dbname, "user": self.user}


def _looks_like_conninfo(value: str) -> bool:
    """Whether libpq would expand ``value``, given as a dbname, as a connection string: it holds ``=``
    or starts with a ``postgresql://`` / ``postgres://`` URL prefix."""
    return "=" in value or bool(_URL.match(value))


def _dsn_secrets(dsn: str, nested: bool = False, depth: int = 0) -> list[str]:
    """The secret values of a DSN, and of a connection string or URL in its ``dbname`` (recursively).

    A nested string is shown as it is written (a server's 'database ... does not exist' quotes it, and
    so does the name of the server in every message), so where its secrets are not there verbatim (a
    quoted or escaped password, a percent-encoded one in a URL) or it does not parse, the whole string
    is a secret."""
    try:
        parts = conninfo_to_dict(dsn)
    except psycopg.Error:
        return [dsn] if nested else []     # the top-level DSN: server_name refuses it without showing it
    found = [str(parts[key]) for key in SECRET_KEYS if parts.get(key)]
    if nested and (any(secret not in dsn for secret in found) or _misplaced_url_secret(dsn)):
        return [dsn]
    dbname = str(parts.get("dbname") or "")
    if dbname and _looks_like_conninfo(dbname):
        found += [dbname] if depth >= 3 else _dsn_secrets(dbname, nested=True, depth=depth + 1)
    return found


def _secrets(dsn: str) -> list[str]:
    """Password texts that must never appear in a message (from the DSN, any connection string nested in
    its dbname, and libpq's environment)."""
    found = _dsn_secrets(dsn)
    password = os.environ.get("PGPASSWORD")
    if password:
        found.append(password)
    return found


def dsn_from_env(variable: str = DSN_ENV) -> str:
    """The DSN held by environment variable ``variable``; raises naming the variable when it is unset."""
    value = os.environ.get(variable, "").strip()
    if not value:
        raise AppDatabaseError(f"environment variable {variable} is not set: put the app database's DSN there "
                               "(e.g. 'host=db.internal port=5432 dbname=app user=export'; the password may "
                               "come from PGPASSWORD or ~/.pgpass)")
    return value


def _names(dsn: str) -> list[str]:
    """The non-secret names the DSN and libpq's environment give (host, hostaddr, port, user, dbname), each
    whole and, for a comma-separated list of hosts or ports, each of its items; a dbname that is itself a
    connection string is no name (it may hold secrets). Nothing for a DSN that does not parse."""
    try:
        parts = conninfo_to_dict(dsn)
    except psycopg.Error:
        return []
    values = [str(parts.get(key) or "") for key in NAME_KEYS] + [os.environ.get(var, "") for var in NAME_ENV]
    if not parts.get("user") and not os.environ.get("PGUSER"):
        values.append(account_name() or "")
    found = set()
    for value in values:
        if value and not _looks_like_conninfo(value):
            found.add(value)
            found.update(item.strip() for item in value.split(",") if item.strip())
    return sorted(found)


def _occurrences(text: str, needle: str) -> Iterator[tuple[int, int]]:
    """(start, end) of every occurrence of ``needle`` in ``text``, overlapping ones included."""
    start = text.find(needle)
    while start >= 0:
        yield start, start + len(needle)
        start = text.find(needle, start + 1)


# A password key in free text (a dbname that is a connection string, quoted back by the server): its value
# is hidden whatever it is, to the end of the value or of the quoted name holding it.
_PASSWORD_KEY = re.compile(r"(?<![A-Za-z0-9_])(?:ssl)?password\s*=\s*", re.IGNORECASE)
# The shortest start of a password hidden where a quoted name ends with it (the server cuts a name to 63 bytes,
# NAMEDATALEN - 1, before it quotes it: 'database "...password=correcthorseba" does not exist').
PREFIX_MIN = 4
_QUOTE_END = re.compile(r'"(?=$|[\s,.;:)])')


_BLANK = re.compile(r"\s")


def _password_values(text: str) -> Iterator[tuple[int, int]]:
    """(start, end) of the value after each password key in ``text``: inside a double-quoted name (an odd
    number of '"' before the key), to the quote that closes it; a libpq-quoted value ('...', backslash
    escapes), to its closing quote; else to the next whitespace; the end of the text where nothing ends it."""
    quotes, counted = 0, 0          # '"' before ``counted``, kept as the keys are found left to right (linear)
    closes: list[int] | None = None  # where a quoted name may close, found once (a search per key was quadratic)
    blank = -1
    for match in _PASSWORD_KEY.finditer(text):
        start = match.end()
        quotes += text.count('"', counted, match.start())
        counted = match.start()
        if quotes % 2:
            if closes is None:
                closes = [close.start() for close in _QUOTE_END.finditer(text)]
            at = bisect.bisect_left(closes, start)
            end = closes[at] if at < len(closes) else len(text)
        elif text.startswith("'", start):
            end, pos = len(text), start + 1
            while pos < len(text):
                if text[pos] == "\\":
                    pos += 2
                    continue
                if text[pos] == "'":
                    end = pos + 1
                    break
                pos += 1
        else:
            if blank < start:       # the keys come left to right: the next blank found is reused while ahead
                space = _BLANK.search(text, start)
                blank = space.start() if space else len(text)
            end = blank
        if end > start:
            yield start, end


_PASSWORD_PLACE = re.compile(r"(?:(?<![A-Za-z0-9_])(?:ssl)?password\s*=\s*'?|:)$", re.IGNORECASE)


def _after_password_place(text: str, start: int) -> bool:
    """Whether ``text[start:]`` follows a password key (``password=``, ``password='``) or a ':' (a URL's
    ``user:password``): a password's place, whatever the text there matches."""
    return bool(_PASSWORD_PLACE.search(text, max(0, start - 40), start))


def _cut_prefixes(text: str, secret: str) -> Iterator[tuple[int, int]]:
    """(start, end) of each start of ``secret`` (PREFIX_MIN characters or more, not all of it) that ends right
    before a quote: a name the server cut to its length limit inside the password."""
    if len(secret) <= PREFIX_MIN:
        return
    for quote in re.finditer("[\"']", text):
        end = quote.start()
        for k in range(min(len(secret) - 1, end), PREFIX_MIN - 1, -1):
            if text.startswith(secret[:k], end - k):
                yield end - k, end
                break


def _within(spans: list[tuple[int, int]]):
    """A test whether ``(start, end)`` lies inside one of ``spans``: the spans sorted by start, with the largest end
    reached so far, so each test is a bisection (the spans x occurrences scan was quadratic on a long message)."""
    from itertools import accumulate

    ordered = sorted(spans)
    starts = [s for s, _ in ordered]
    reach = list(accumulate((e for _, e in ordered), max))

    def inside(start: int, end: int) -> bool:
        at = bisect.bisect_right(starts, start)
        return at > 0 and reach[at - 1] >= end

    return inside


def redact(text: str, dsn: str) -> str:
    """``text`` with every password text replaced by ``***`` (a run of hidden characters: one ``***``),
    except an occurrence that lies inside an occurrence of one of the connection's non-secret names
    (:func:`_names`): masking 'pick' inside database 'pickapic' showed the password as the part hidden
    (and a password equal to the user name or port is shown by those names anyway). Also hidden (review
    rev24g): the value after any ``password=`` key, to the end of the quoted name holding it (a dbname that is a
    connection string, quoted back by the server), and a start of a password (PREFIX_MIN characters or more)
    that ends a quoted name, where the server cut the name to its 63-byte limit inside the password: outside the
    names likewise, except a cut start that follows a password key or a ':' (a URL's ``user:password``): there
    the password's place wins over the names (review rev24k: a cut password starting with the user name)."""
    if not text:
        return text
    secrets = [secret for secret in set(_secrets(dsn)) if secret]
    spans = [span for name in _names(dsn) for span in _occurrences(text, name)]
    found = [span for secret in secrets for span in _occurrences(text, secret)]
    found += _password_values(text)
    # a start of a password the server cut after a password key or a ':' (a URL's user:password) is hidden even
    # where it is a connection name (review rev24k: a password starting with the user name, cut right after it,
    # showed its start; a whole password equal to a name cannot be told from it, and the name shows it anyway)
    placed = []
    for secret in secrets:
        for start, end in _cut_prefixes(text, secret):
            (placed if _after_password_place(text, start) else found).append((start, end))
    hidden = bytearray(len(text))
    inside = _within(spans)
    for start, end in found:
        if not inside(start, end):
            hidden[start:end] = b"\x01" * (end - start)
    for start, end in placed:
        hidden[start:end] = b"\x01" * (end - start)
    if not any(hidden):
        return text
    out, pos = [], 0
    while pos < len(text):
        if hidden[pos]:
            while pos < len(text) and hidden[pos]:
                pos += 1
            out.append("***")
        else:
            end = hidden.find(1, pos)
            end = len(text) if end < 0 else end
            out.append(text[pos:end])
            pos = end
    return "".join(out)


_URL = re.compile(r"\s*postgres(?:ql)?://", re.IGNORECASE)


def _misplaced_url_secret(dsn: str) -> bool:
    """Whether a ``postgresql://`` URL has an ``@`` that libpq would not read as the end of its user
    and password: a second one in the authority, or one in the database path. That is a password (or
    user name) holding ``@``, ``/`` or ``?`` unescaped; libpq then takes the rest of the password as the
    host, port or database name, which every message would show."""
    match = _URL.match(dsn)
    if not match:
        return False
    rest = dsn[match.end():]
    authority = re.split(r"[/?]", rest, maxsplit=1)[0]
    path = rest[len(authority):].split("?", 1)[0]
    return authority.count("@") > 1 or "@" in path


def server_name(dsn: str, source: str = "the DSN") -> ServerName:
    """Host, port, database and user a DSN names (libpq's environment defaults filled in)."""
    if _misplaced_url_secret(dsn):
        raise AppDatabaseError(f"{source} is a postgresql:// URL with an '@' where libpq does not expect one: "
                               "percent-encode '@', '/', '?', ':' and '%' in its user name and password (e.g. "
                               "'@' as %40, '/' as %2F), or give a key/value string "
                               "(its text is not shown because it may hold a password)")
    try:
        parts = conninfo_to_dict(dsn)
    except psycopg.Error:
        # The driver's message quotes the offending fragment, which may be the password: never show it.
        raise AppDatabaseError(f"{source} is not a valid libpq connection string or postgresql:// URL "
                               "(its text is not shown because it may hold a password)") from None
    user = parts.get("user") or os.environ.get("PGUSER") or account_name() or "the login user"
    # Host, port and user are the values of their own non-secret keys: shown whole, never searched for the
    # password (that masked 'pick' in 'pickapic', spelling the password out). A dbname that is itself a
    # connection string or URL (libpq's expand_dbname form) is free text that may hold secrets: redacted.
    dbname = str(parts.get("dbname") or os.environ.get("PGDATABASE") or user)
    return ServerName(
        host=str(parts.get("host") or parts.get("hostaddr") or os.environ.get("PGHOST") or "the default socket"),
        port=str(parts.get("port") or os.environ.get("PGPORT") or 5432),
        dbname=redact(dbname, dsn) if _looks_like_conninfo(dbname) else dbname,
        user=str(user),
    )


def _reason(exc: BaseException, dsn: str) -> str:
    """libpq's reason on one line: the server's primary message where it sent one (e.g. 'canceling
    statement due to lock timeout'), else the last non-empty line of the driver's text (e.g. 'FATAL:
    password authentication failed ...'), never the statement excerpt and caret of a positioned error."""
    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None) if diag is not None else None
    if primary:
        severity = getattr(diag, "severity_nonlocalized", None) or getattr(diag, "severity", None)
        reason = f"{severity}: {primary}" if severity else primary
        return redact(" ".join(reason.split()), dsn)[:300]
    lines = [line.strip() for line in str(exc).splitlines()
             if line.strip() and not line.strip().startswith(("LINE ", "^"))]
    reason = lines[-1] if lines else type(exc).__name__
    for prefix in ("connection failed: ",):
        reason = reason.removeprefix(prefix)
    return redact(reason, dsn)[:300]


def connect(dsn: str, *, source: str = "the DSN", read_only: bool = True,
            autocommit: bool = False) -> psycopg.Connection:
    """Open a connection with the export's session settings; errors name the server, never the password.

    ``read_only`` connections run one REPEATABLE READ READ ONLY transaction, so every table of a day
    is read from the same snapshot (an image and the ranking that shows it are committed together).
    """
    name = server_name(dsn, source)
    kwargs = {}
    parts = conninfo_to_dict(dsn)
    if "connect_timeout" not in parts:
        kwargs["connect_timeout"] = CONNECT_TIMEOUT_S
    if "application_name" not in parts:
        kwargs["application_name"] = APPLICATION_NAME
    for key, value in KEEPALIVE_PARAMETERS.items():      # dead-peer detection, unless the DSN gives its own
        if key not in parts:
            kwargs[key] = value
    # The session starts in an encoding every server can give, whatever its own: psycopg has no codec for
    # some server encodings (EUC_TW, MULE_INTERNAL), so a session opened in the server's failed its first
    # statement. The export's is set for good below, once the server's is known (SQL_ASCII: no conversion,
    # for every server encoding); the simulator's sink writes UTF-8.
    kwargs["client_encoding"] = "SQL_ASCII" if read_only else "UTF8"
    try:
        conn = psycopg.connect(dsn, autocommit=autocommit, **kwargs)
    except psycopg.Error as exc:
        hint = ""
        if _looks_like_conninfo(str(parts.get("dbname") or "")):
            hint = (" (its dbname is a connection string, which psycopg does not expand as libpq's "
                    "expand_dbname would: give those keys in the DSN itself)")
        raise AppDatabaseError(f"cannot connect to the app {name} (from {source}): {_reason(exc, dsn)}"
                               f"{hint}") from None
    try:
        if read_only:
            conn.isolation_level = IsolationLevel.REPEATABLE_READ
            conn.read_only = True
        for statement in SESSION_SETTINGS:
            conn.execute(statement)
        # pg_catalog first (a table or function in the app's schema never shadows a built-in); the sink
        # creates the app's tables, so its path is the schema alone (pg_catalog is then searched first too).
        path = [sql.Identifier("pg_catalog"), sql.Identifier(APP_SCHEMA)] if read_only else [sql.Identifier(APP_SCHEMA)]
        conn.execute(sql.SQL("SET search_path = {}").format(sql.SQL(", ").join(path)))
        if read_only:
            for statement in EXPORT_SETTINGS + (EXPORT_SETTINGS_17 if conn.info.server_version >= 170000 else ()):
                conn.execute(statement)
            # the shorter of MAX_LOCK_WAIT and the lock_timeout the session starts with (0: none)
            conn.execute("SELECT set_config('lock_timeout', CASE WHEN current_setting('lock_timeout')::interval "
                         "> '0'::interval AND current_setting('lock_timeout')::interval < %s::interval THEN "
                         "current_setting('lock_timeout') ELSE %s END, false)", (MAX_LOCK_WAIT, MAX_LOCK_WAIT))
            # the server's end of the socket: only where nothing set it (source 'default': the system's value;
            # the server's file, the database, the role and the DSN's options each keep theirs)
            wanted = server_keepalive_settings(conn.info.server_version)
            conn.execute("SELECT set_config(s.name, v.value, false) FROM pg_catalog.pg_settings AS s "
                         "JOIN unnest(%s::text[], %s::text[]) AS v(name, value) ON v.name = s.name "
                         "WHERE s.source = 'default'", (list(wanted), list(wanted.values())))
        # A UTF8 database's text arrives as it is stored. Any other database's text is read unconverted
        # (SQL_ASCII as client encoding turns the server's conversion off): a SQL_ASCII database's bytes
        # reach the file as they are, and the export reads another encoding's text as its stored bytes and
        # converts it batch by batch (read_rows), because the server converting while it streams rows fails
        # the whole fetch, and with it the day, on one character with no UTF-8 equivalent (WIN1252 0x81).
        # The simulator's sink (read_only=False) writes UTF-8 text, which the server converts on the way in.
        server_encoding = conn.info.parameter_status("server_encoding")
        conn.execute("SET client_encoding = 'SQL_ASCII'" if server_encoding == "SQL_ASCII"
                     or (read_only and server_encoding != "UTF8") else "SET client_encoding = 'UTF8'")
        if read_only:
            # The settings above ran in a transaction whose snapshot is taken already (set_config is a SELECT):
            # it ends here (the settings stay), so the caller's transaction starts with no snapshot and can
            # lock the tables before taking one (export.lock_tables, as pg_dump does).
            conn.commit()
    except psycopg.Error as exc:
        conn.close()
        raise AppDatabaseError(f"cannot set up a session on the app {name} (from {source}): "
                               f"{_reason(exc, dsn)}") from None
    return conn


def server_keepalive_settings(server_version: int) -> dict[str, str]:
    """:data:`SERVER_KEEPALIVE_SETTINGS` that a server of ``server_version`` has (tcp_user_timeout: 12+)."""
    return {name: value for name, value in SERVER_KEEPALIVE_SETTINGS.items()
            if name != "tcp_user_timeout" or server_version >= 120000}


def as_text(value: str | bytes | None) -> str | None:
    """A catalog value as text (a SQL_ASCII session returns text columns as bytes)."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


ROW_SECURITY_HINT = ("the export reads with row_security = off, as pg_dump does, so that a row-level security "
                     "policy never hides rows from it: export as a role with BYPASSRLS (ALTER ROLE ... BYPASSRLS) "
                     "or as the table's owner (where the table does not FORCE ROW LEVEL SECURITY)")


def database_error(exc: psycopg.Error, dsn: str, name: ServerName, doing: str) -> AppDatabaseError:
    """An ``AppDatabaseError`` for a driver error raised while ``doing`` something on the server."""
    reason = _reason(exc, dsn)
    primary = getattr(getattr(exc, "diag", None), "message_primary", None) or ""
    if isinstance(exc, psycopg.errors.InsufficientPrivilege) and "row-level security" in primary:
        reason += f" ({ROW_SECURITY_HINT})"
    return AppDatabaseError(f"{doing} failed on the app {name}: {reason}")


BATCH_LINES = 4096   # most rows per server-side fetch
BATCH_BYTES = 4 << 20   # about this many bytes of formatted lines per fetch (huge rows: fewer rows a fetch)


class Unconvertible(str):
    """Text the app database holds that its encoding has no UTF-8 for (a WIN1252 byte 0x81, undefined
    there): its stored bytes, ASCII as itself and every other byte as the lone surrogate U+DC80 + byte
    (Python's ``surrogateescape``). A JSON line carries those as ``\\udcXX`` escapes, so the ingest
    quarantines the line as ``invalid_utf8`` ('... holds a lone surrogate escape') and its raw text
    keeps the stored bytes; nothing is guessed or dropped."""


# The server's own conversion, of many values in one statement (values keep their order).
_CONVERT = "SELECT convert(v, %s::name, 'UTF8') FROM unnest(%s::bytea[]) WITH ORDINALITY AS u(v, n) ORDER BY n"


def text_encoding(conn: psycopg.Connection) -> str | None:
    """The server encoding whose text ``read_rows`` must convert (text arrives unconverted from a
    database that is neither UTF8 nor SQL_ASCII: see ``connect``), or None."""
    server = conn.info.parameter_status("server_encoding")
    if server in ("UTF8", "SQL_ASCII") or conn.info.parameter_status("client_encoding") != "SQL_ASCII":
        return None
    return server


def convert_values(conn: psycopg.Connection, encoding: str, values: list[bytes]) -> list[bytes | Unconvertible]:
    """``values`` (text stored in ``encoding``) as UTF-8 bytes, converted by the server as it would convert
    them itself; a value it cannot convert becomes :class:`Unconvertible`. One statement converts them all;
    when it fails, each half is tried again until the failing values stand alone (a few statements per bad
    value). Each attempt runs in a savepoint, so a failure leaves the transaction, its snapshot and the
    server-side cursor reading the rows usable."""
    conn.execute("SAVEPOINT pickapic_convert")
    try:
        converted = [v for (v,) in conn.execute(_CONVERT, (encoding, values), binary=True)]
    except psycopg.errors.DataError:   # 22P05 no equivalent in UTF8, 22021 invalid byte sequence
        conn.execute("ROLLBACK TO SAVEPOINT pickapic_convert")
        converted = None
    except psycopg.errors.UndefinedFunction:
        # 42883: the server has no conversion from this encoding to UTF8 at all (MULE_INTERNAL): no value converts
        conn.execute("ROLLBACK TO SAVEPOINT pickapic_convert")
        conn.execute("RELEASE SAVEPOINT pickapic_convert")
        return [Unconvertible(value.decode("ascii", "surrogateescape")) for value in values]
    conn.execute("RELEASE SAVEPOINT pickapic_convert")
    if converted is not None:
        return converted
    if len(values) == 1:
        return [Unconvertible(values[0].decode("ascii", "surrogateescape"))]
    half = len(values) // 2
    return convert_values(conn, encoding, values[:half]) + convert_values(conn, encoding, values[half:])


def _convert_rows(conn: psycopg.Connection, encoding: str, rows: list[tuple]) -> list[tuple]:
    """``rows`` with each text value in UTF-8 (see :func:`convert_values`). Every server encoding but
    UTF8 keeps ASCII bytes as ASCII (the encodings that do not are client-only in PostgreSQL), so only
    the batch's distinct values with a byte past 0x7F go to the server, once each."""
    pending = {v: None for row in rows for v in row if type(v) is bytes and not v.isascii()}
    if not pending:
        return rows
    mapping = dict(zip(pending, convert_values(conn, encoding, list(pending))))
    return [tuple(mapping.get(v, v) if type(v) is bytes else v for v in row) for row in rows]


def read_rows(conn: psycopg.Connection, query: str, params: dict,
              batch: int | Callable[[], int] = BATCH_LINES) -> Iterator[list[tuple]]:
    """Batches of rows from a server-side cursor: integers as int, text as the raw bytes the server sent.

    ``batch``: rows per fetch, or a function giving the next fetch's rows (the export's fetch plan,
    computed by the server from the rows' sizes: huge rows are fetched a few at a time). Text of a database
    that is neither UTF8 nor SQL_ASCII comes converted to UTF-8 bytes, or as :class:`Unconvertible`
    where its encoding has no UTF-8 for it (memory: one batch, however many values fail).
    """
    size = batch if callable(batch) else (lambda: batch)
    encoding = text_encoding(conn)
    with conn.cursor(name="pickapic_export", binary=True) as cursor:
        # Text as bytes: a SQL_ASCII database may hold bytes that are not UTF-8 (format_row handles them).
        cursor.adapters.register_loader("text", ByteaBinaryLoader)
        cursor.execute(query, params)
        while rows := cursor.fetchmany(max(1, size())):
            yield rows if encoding is None else _convert_rows(conn, encoding, rows)
