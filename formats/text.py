"""Text from outside (file names, table cells, error messages quoting them) made safe to write and to print.

:func:`utf8_text` makes any Python string valid UTF-8 (Arrow, Parquet and JSON writers refuse lone surrogates, which
is how Python holds the bytes of a file name it could not decode); :func:`terminal_text` also shows control and
format characters as escapes, so text printed on a terminal cannot move the cursor, retitle the window, clear the
screen or reorder what follows (bidirectional overrides).
"""
from __future__ import annotations

import os
import re
from typing import Any


def utf8_text(value: str) -> str:
    """``value`` as valid UTF-8 text: a byte a file name could not decode (Python's surrogate escape) becomes
    ``\\xNN``, any other lone surrogate ``\\uXXXX``; text that is valid already comes back as it is."""
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        pass
    return "".join(f"\\x{ord(ch) - 0xDC00:02x}" if 0xDC80 <= ord(ch) <= 0xDCFF
                   else f"\\u{ord(ch):04x}" if 0xD800 <= ord(ch) <= 0xDFFF else ch for ch in value)


def first_line(exc: BaseException) -> str:
    """The first line of ``exc``'s text (its type's name when it has none): what a one-line error quotes of it."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def terminal_text(value: str, keep: str = "") -> str:
    """``value`` safe to print on a terminal: :func:`utf8_text`, and every control or format character (ESC, BEL,
    a carriage return, C1 controls, line separators, bidirectional overrides and isolates) but those in ``keep``
    (e.g. ``"\\n"`` for a message of several lines) shown as its ``\\x`` / ``\\u`` escape instead of acting."""
    value = utf8_text(value)
    if value.isprintable():
        return value
    return "".join(ch if ch.isprintable() or ch in keep else
                   (f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}") for ch in value)


# a URL's password (scheme://user:PASSWORD@host: everything up to the token's last '@', so a password holding an
# unescaped '@' is hidden whole) and the value of a command-line option whose name says it holds a credential
# (Beam's --s3_secret_access_key, --s3_session_token, --s3_access_key_id, --azure_connection_string, ...).
# These patterns are the definition (tests/unit/test_fix25j.py holds them as the reference); redact_credentials
# applies them with the linear scan below: a regex engine tries every start position, and each start rescanned
# the rest of the text, so a value of 's3://k:' repeated took minutes (review rev25j).
_URL_PASSWORD = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://[^\s/@:'\"]*:)[^\s]*@")
_SECRET_OPTION = re.compile(r"(?i)(--?[a-z0-9_\-]*(?:secret|token|password|passwd|credential|connection_string|"
                            r"access_key|api_key|private_key)[a-z0-9_\-]*)(=|\s+)(\"[^\"]*\"?|'[^']*'?|\S+)")


# a URL's user name without a password (a token given as the user: https://TOKEN@host) and a URL's query (an Azure
# SAS token's sig=..., a signed URL's signature: review rev23j)
_URL_USER = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^\s/@:'\"?#]+@")
_URL_QUERY = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://[^\s?#'\"]*\?)[^\s#'\"]+")

_SCHEME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+.-")
_LETTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_NAME_RUN = re.compile(r"[a-zA-Z0-9_\-]+")      # an option name's characters: a run is matched once, left to right
_CREDENTIAL_WORD = re.compile(r"(?i)secret|token|password|passwd|credential|connection_string|access_key|api_key|"
                              r"private_key")
_NON_SPACE = re.compile(r"\S+")
_BLANK = re.compile(r"\s")
_BLANKS = re.compile(r"\s*+")


def _is_word(ch: str) -> bool:
    return ch.isalnum() or ch == "_"


def _url_schemes(token: str) -> list[tuple[int, int]]:
    """``(start, sep)`` of each URL scheme in ``token`` (text without blanks): ``token[sep:sep + 3] == "://"`` and
    ``token[start:sep]`` the leftmost text ``\\b[a-z][a-z0-9+.\\-]*`` ending there. Linear: the scheme characters
    before one ``://`` are never those before another (':' and '/' are none)."""
    found = []
    sep = token.find("://")
    while sep != -1:
        run = sep
        while run > 0 and token[run - 1] in _SCHEME_CHARS:
            run -= 1
        for start in range(run, sep):
            if token[start] in _LETTERS and (start == 0 or not _is_word(token[start - 1])):
                found.append((start, sep))
                break
        sep = token.find("://", sep + 1)
    return found


_STOPS: dict[str, re.Pattern] = {}


def _first_of(token: str, stops: str, start: int) -> int:
    """The index of the first character of ``stops`` in ``token`` at ``start`` or after; ``len(token)`` if none
    (a scan that ends at the first one found)."""
    pattern = _STOPS.get(stops)
    if pattern is None:
        pattern = _STOPS[stops] = re.compile("[" + re.escape(stops) + "]")
    found = pattern.search(token, start)
    return len(token) if found is None else found.start()


def _url_password(token: str) -> str:
    """``_URL_PASSWORD.sub(r"\\1***@", token)``: the first URL whose user part ends in ':' with an '@' after it takes
    everything to the token's last '@' (so only one can match)."""
    last_at = token.rfind("@")
    if last_at == -1:
        return token
    for start, sep in _url_schemes(token):
        user_end = _first_of(token, "/@:'\"", sep + 3)
        if user_end < last_at and token[user_end] == ":":
            return token[:user_end + 1] + "***@" + token[last_at + 1:]
    return token


def _url_user(token: str) -> str:
    """``_URL_USER.sub(r"\\1***@", token)``."""
    out, done = [], 0
    for start, sep in _url_schemes(token):
        if start < done:
            continue
        end = _first_of(token, "/@:'\"?#", sep + 3)
        if end > sep + 3 and end < len(token) and token[end] == "@":
            out.append(token[done:sep + 3] + "***@")
            done = end + 1
    return "".join(out) + token[done:]


def _url_query(token: str) -> str:
    """``_URL_QUERY.sub(r"\\1***", token)``: the scan for each URL's '?' stops where the previous one's did, so the
    whole token is read once."""
    out, done, stop = [], 0, -1
    for start, sep in _url_schemes(token):
        if start < done:
            continue
        if stop < sep + 3:
            stop = _first_of(token, "?#'\"", sep + 3)
        if stop < len(token) and token[stop] == "?":
            end = _first_of(token, "#'\"", stop + 1)
            if end > stop + 1:
                out.append(token[done:stop + 1] + "***")
                done = end
    return "".join(out) + token[done:]


def _secret_options(value: str) -> str:
    """``_SECRET_OPTION.sub(r"\\1\\2***", value)``: a run of name characters from its first '-' (at or after where the
    last replacement ended) holding a credential word after that '-', then '=' or blanks, then the value (quoted:
    to its closing quote or the end; else to the next blank)."""
    out, done = [], 0
    for run in _NAME_RUN.finditer(value):
        begin, end = max(run.start(), done), run.end()
        dash = value.find("-", begin, end)
        if dash == -1 or not _CREDENTIAL_WORD.search(value, dash + 1, end):
            continue
        if end < len(value) and value[end] == "=":
            after = end + 1
        else:
            after = end
            while after < len(value) and value[after].isspace():
                after += 1
            if after == end or after == len(value):
                continue
        if after == len(value) or value[after].isspace():
            continue                              # '--token=' then nothing or a blank: the value must be one character
        quote = value[after]
        if quote in "\"'":
            close = value.find(quote, after + 1)
            stop = len(value) if close == -1 else close + 1
        else:
            blank = _BLANK.search(value, after)
            stop = len(value) if blank is None else blank.start()
        out.append(value[done:after] + "***")
        done = stop
    return "".join(out) + value[done:]


# a libpq key/value password (password=..., sslpassword=..., quoted: password='a b'), and one in an assignment of
# the environment's or a properties file's (PGPASSWORD=..., db_password=...): review rev26a
_PASSWORD_ASSIGNMENT = re.compile(r"(?i)(?<![A-Za-z0-9_])[A-Za-z0-9_]*?passw(?:or)?d\s*+=\s*+")


def _assigned_passwords(value: str) -> str:
    """``value`` with the value of each :data:`_PASSWORD_ASSIGNMENT` replaced by ``***``: a quoted one (libpq's
    ``'...'`` with backslash escapes, or ``"..."``) to its closing quote or the end, any other to the next blank
    (a ``'`` ending it, unescaped, is the quote of the text holding the DSN: libpq escapes a quote in a value, so
    it is kept, and a message quoting ``'host=x password=***'`` still reads whole). Linear: each search starts
    where the last value ended."""
    out, done, pos = [], 0, 0
    while True:
        found = _PASSWORD_ASSIGNMENT.search(value, pos)
        if found is None:
            break
        after = found.end()
        if after == len(value) or value[after].isspace():
            pos = after
            continue
        quote = value[after]
        if quote in "'\"":
            end, cursor = len(value), after + 1
            while cursor < len(value):
                if value[cursor] == "\\":
                    cursor += 2
                    continue
                if value[cursor] == quote:
                    end = cursor + 1
                    break
                cursor += 1
        else:
            blank = _BLANK.search(value, after)
            end = len(value) if blank is None else blank.start()
            if end - after > 1 and value[end - 1] == "'" and value[end - 2] != "\\":
                end -= 1
        out.append(value[done:after] + "***")
        done = pos = end
    return "".join(out) + value[done:]


def _per_token(value: str, rewrite) -> str:
    return _NON_SPACE.sub(lambda match: rewrite(match.group()), value)


def redact_credentials(value: str) -> str:
    """``value`` as a message may show it: a URL's password (``https://user:***@host``), a URL's user name given
    without a password (``https://***@host``: a token), a URL's query (``https://host/?***``: an Azure SAS token,
    a signature), the value of an option named for a credential (``--s3_secret_access_key=***``) and a libpq
    key/value password (``host=db password=***``, ``sslpassword='***'``, ``PGPASSWORD=***``: review rev26a, a
    standby's ``primary_conninfo`` given as ``app_export.primary_host``) replaced by ``***``. Over-redacts rather
    than under (a URL path holding '@' after a ``user:`` part). No list of patterns finds every credential: a
    setting that may hold one is never shown whole (:func:`option_names`).

    What ``_URL_PASSWORD``, ``_URL_USER``, ``_URL_QUERY``, :func:`_assigned_passwords` and ``_SECRET_OPTION``
    replace, in that order, found in time linear in the value's length (review rev25j: the patterns
    themselves are quadratic)."""
    if "://" in value:
        value = _per_token(value, _url_password)
        value = _per_token(value, _url_user)
        value = _per_token(value, _url_query)
    if "=" in value:        # before the options: '-password = ...' would take '=' for the option's value
        value = _assigned_passwords(value)
    if "-" in value:
        value = _secret_options(value)
    return value


# a bearer credential of this length or more is taken for a token
TOKEN_USER_LENGTH = 16
# the start of a token given as a URL's user name (GitHub, GitLab, Hugging Face, Slack, OpenAI-style, AWS key ids)
_TOKEN_PREFIXES = ("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_", "glpat-", "hf_", "xox", "sk-", "AKIA", "ASIA")
# a URL's user name (given without a password) that reads as random (review rev26c: an account or organization
# name, https://contoso-engineering@dev.azure.com/..., is none): 20 or more letters and digits, both, and nothing
# else (GitHub's 40 hex digits, an Azure DevOps token), 32 or more letters or digits, or 40 or more of a base64url
# token's characters mixing upper and lower case and digits
_RANDOM_USER = re.compile(r"(?=[A-Za-z]*+[0-9])(?=[0-9]*+[A-Za-z])[A-Za-z0-9]{20,}|[A-Za-z0-9]{32,}"
                          r"|(?=[^A-Z]*+[A-Z])(?=[^a-z]*+[a-z])(?=[^0-9]*+[0-9])[A-Za-z0-9+_\-]{40,}=*")


def _token_like_user(user: str) -> bool:
    """Whether ``user`` (a URL's user name given without a password) looks like a token: one of
    :data:`_TOKEN_PREFIXES`, or random (:data:`_RANDOM_USER`)."""
    return user.startswith(_TOKEN_PREFIXES) or _RANDOM_USER.fullmatch(user) is not None

# The words of a name (``X-Amz-Signature``: x, amz, signature; ``access_token``: access, token; ``apiKey``: api,
# key): runs of letters, split where a lower-case letter meets an upper-case one (``APIKey``: api, key).
_NAME_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+")
# A name is a credential's (review rev26a: by words, not parts of words, so ``assignee``, ``author``, ``tokenizer``
# and ``target_session_attrs`` are none) where its last word is one of _CREDENTIAL_LAST or ends with one of
# _CREDENTIAL_ENDINGS (``PGPASSWORD``, ``sslpassword``, ``accesstoken``), unless the word before makes it a plain
# one (_PLAIN_BEFORE: Dagster's ``dagster/run_key``, a ``partition_key``, a ``public_key``; a tokenizer's
# ``pad_token``, a ``page_token``) ...
_CREDENTIAL_LAST = frozenset({
    "token", "key", "secret", "secrets", "password", "passwords", "passwd", "passphrase", "pass", "pw", "pwd",
    "auth", "authorization", "credential", "credentials", "creds", "sig", "signature", "jwt", "cookie", "apikey",
    "accesskey", "secretkey", "privatekey", "sessionid", "jsessionid", "phpsessid", "sessionkey", "authkey",
    "passcode"})
_CREDENTIAL_ENDINGS = ("token", "secret", "password", "passwd", "apikey", "accesskey", "secretkey", "privatekey",
                       "connectionstring")
_PLAIN_BEFORE = {
    "key": frozenset({"run", "partition", "sort", "cache", "primary", "foreign", "idempotency", "concurrency",
                      "asset", "public", "object", "row", "index", "join", "group", "hash", "lookup", "dedup",
                      "unique", "composite", "shard", "routing", "order", "search", "map", "dict"}),
    "token": frozenset({"max", "min", "num", "pad", "eos", "bos", "unk", "sep", "cls", "mask", "special", "start",
                        "end", "next", "page", "continuation", "cursor", "sync"}),
}
# ... or where any word is one of _CREDENTIAL_ANYWHERE (``SECRET_KEY_BASE``, ``password_hash``) and the last word
# does not say where a credential is kept or what is said of it (_REFERENCE_WORDS: ``password_file``,
# ``secret_name``), or where the name holds "connection string" (``AZURE_STORAGE_CONNECTION_STRING``)
_CREDENTIAL_ANYWHERE = frozenset({
    "secret", "secrets", "password", "passwords", "passwd", "passphrase", "pwd", "credential", "credentials",
    "creds", "jwt", "apikey", "accesskey", "secretkey", "privatekey"})
_REFERENCE_WORDS = frozenset({
    "file", "files", "path", "dir", "folder", "name", "names", "id", "ids", "arn", "ref", "url", "uri", "env", "var",
    "type", "kind", "length", "len", "count", "size", "policy", "reset", "hint", "prompt", "expiry", "expires",
    "expiration", "rotation", "manager", "store", "scanning", "required", "enabled", "mode", "method", "version",
    "strength", "age", "command", "cmd", "helper", "location",
    # a measure of something named for a credential (review rev26c: token_budget, token_limit, as token_count)
    "budget", "budgets", "limit", "limits", "quota", "quotas", "max", "min", "total", "usage", "used", "rate",
    "ratio", "number", "num", "window", "cost", "costs", "stats"})
# the last words a name may end with that are also plain English (a "QA pass", a "sort key"): a name ending in one
# holds a credential only where its value looks like one (:func:`_plain_value_at`; review rev26c)
_WEAK_LAST = frozenset({"pass", "key"})
# a URL query parameter is also a credential's where it carries a session or an authorization code (review rev26c:
# ?session_id=, ?sessionId=, ?session=, ?code= of OAuth, ?authkey=, ?passcode=): its last word is a session's, or
# the words end in session id / session key, or it is a code that authorizes (?code=, ?auth_code=, ?otp_code=)
_QUERY_SESSION_LAST = frozenset({"session", "sessionid", "sessionkey", "sessid", "authkey", "passcode", "authcode"})
_QUERY_CODE_BEFORE = frozenset({"auth", "authorization", "oauth", "access", "otp", "mfa", "totp", "verification",
                                "login", "pass", "invite", "magic"})


def credential_name(name: str) -> bool:
    """Whether ``name`` (a run tag's key, a URL query parameter's, an option's, an assignment's) names a credential:
    ``aws_secret_access_key``, ``PGPASSWORD``, ``api_token``, ``X-Amz-Signature``, ``sig``, ``pass``,
    ``Authorization``; not ``assignee``, ``author``, ``target_session_attrs``, ``tokenizer``, ``max_tokens``,
    ``run_key``, ``password_file``. Linear in the name's length."""
    words = [word.lower() for word in _NAME_WORD.findall(name)]
    if not words:
        return False
    last = words[-1]
    if last in _CREDENTIAL_LAST or last.endswith(_CREDENTIAL_ENDINGS):
        return not (len(words) > 1 and words[-2] in _PLAIN_BEFORE.get(last, ()))
    if last in _REFERENCE_WORDS:
        return False
    if any(word in _CREDENTIAL_ANYWHERE or word.endswith(_CREDENTIAL_ENDINGS) for word in words):
        return True
    from itertools import pairwise

    return any(first == "connection" and second == "string" for first, second in pairwise(words))


def query_credential_name(name: str) -> bool:
    """Whether ``name``, a URL query parameter's, names a credential: :func:`credential_name`, or a session's or an
    authorization code's (``session_id``, ``sessionId``, ``session``, ``code``, ``auth_code``, ``authkey``,
    ``passcode``; not ``target_session_attrs``, ``country_code``, ``id``). Linear in the name's length."""
    if credential_name(name):
        return True
    words = [word.lower() for word in _NAME_WORD.findall(name)]
    if not words:
        return False
    last = words[-1]
    if last in _QUERY_SESSION_LAST:
        return True
    if len(words) > 1 and words[-2] == "session" and last in ("id", "key"):
        return True
    return last == "code" and (len(words) == 1 or words[-2] in _QUERY_CODE_BEFORE)


def _weak_name(name: str) -> bool:
    """Whether ``name`` (one :func:`credential_name` takes for a credential's) ends in one of :data:`_WEAK_LAST`."""
    words = _NAME_WORD.findall(name)
    return bool(words) and words[-1].lower() in _WEAK_LAST


# The patterns of tag_holds_credential. Each may start only where a run of its characters starts (a lookbehind)
# and takes its runs possessively, so no text is read twice over and the check stays linear in the value's length.
# An assignment: NAME=value, NAME: value, "NAME": value (libpq's password=..., PGPASSWORD=..., a header
# Authorization: ..., a query's token=...): the name and the first two characters of its value, looked at but not
# taken (the value may be an assignment itself: opts=password=...). A name of two words a blank apart ("sort key:
# created_at") is read as the two joined (sort_key: review rev26c), the word before taken as group 1.
_ASSIGNMENT = re.compile(r"(?<![A-Za-z0-9_.\-])(?:([A-Za-z0-9_.][A-Za-z0-9_.\-]*+)[ \t]++)?"
                         r"([A-Za-z0-9_.][A-Za-z0-9_.\-]*+)[\"']?+\s*+[=:]\s*+(?=(\S?)(\S?))")
# the start of a further assignment (NAME=, NAME:, "NAME":), where the value of one ends
_NEXT_ASSIGNMENT = re.compile(r"[A-Za-z0-9_.\-]++[\"']?+[ \t]*+[=:]")
# a value that is plain text under a weak name (_WEAK_LAST): a short number, a ratio, a version or a time
# (3/3, 0.95, 12:30), a yes or no
_PLAIN_VALUE = re.compile(r"(?i)[0-9]{1,3}|[0-9]{1,6}(?:[/.:][0-9]{1,6})++|true|false|yes|no|none|null|ok|n/a|-")
# a word of letters (dedup, created_at, dry-run)
_LETTER_WORD = re.compile(r"[A-Za-z]++(?:[_\-][A-Za-z]++)*+")
# a chat webhook's URL, whose path is its secret (review rev26c: Slack's hooks.slack.com/services/T.../B.../...,
# Discord's discord.com/api/webhooks/<id>/<token>, Microsoft Teams' ....webhook.office.com/webhookb2/...)
_SECRET_URL = re.compile(
    r"(?i)(?<![A-Za-z0-9.\-])(?:hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9]++/[A-Za-z0-9]"
    r"|(?:(?:canary|ptb)\.)?discord(?:app)?\.com/api(?:/v[0-9]++)?/webhooks/[0-9]++/[A-Za-z0-9_\-]"
    r"|[A-Za-z0-9\-]++\.webhook\.office\.com/webhookb2/[A-Za-z0-9]"
    r"|outlook\.office(?:365)?+\.com/webhook/[A-Za-z0-9])")
# an option, '-' or '--' where a word starts (not a hyphen inside a word: clip-tokenizer), then '=' or blanks and
# a value: its name
_OPTION = re.compile(r"(?<![A-Za-z0-9_\-])-++([A-Za-z0-9][A-Za-z0-9_\-]*+)(?:=|\s++)(?=\S)")
# an HTTP authorization's scheme and credentials (Bearer <token>, Basic <base64 of user:password>)
_AUTH_SCHEME = re.compile(r"(?i)(?<![A-Za-z0-9_\-])(bearer|basic)\s++([A-Za-z0-9\-._~+/]++=*+)")
# a token of a well-known kind, bare (GitHub's classic and fine-grained tokens, GitLab's, Hugging Face's, Slack's,
# an OpenAI-style sk-, an AWS access key id, a JSON web token)
_KNOWN_TOKEN = re.compile(
    r"(?<![A-Za-z0-9_\-])(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{22,}|glpat-[A-Za-z0-9_\-]{20,}"
    r"|hf_[A-Za-z0-9]{30,}|xox[abpors]-[A-Za-z0-9\-]{10,}|sk-[A-Za-z0-9_\-]{20,}"
    r"|(?:AKIA|ASIA)[A-Z0-9]{16}(?![A-Za-z0-9])|eyJ[A-Za-z0-9_\-]++\.eyJ[A-Za-z0-9_\-]++\.)")


def _hidden_at(value: str, start: int) -> bool:
    """Whether the value at ``value[start:]`` is ``***`` alone: one :func:`redact_credentials` hid (a scrubbed tag's
    ``password=***``, as a URL's ``user:***@`` is none)."""
    end = start + 3
    return value.startswith("***", start) and (end == len(value) or value[end].isspace() or value[end] in "'\",;")


def _basic_credentials(text: str) -> bool:
    """Whether ``text`` is the base64 of ``user:password`` (HTTP Basic authorization's credentials)."""
    import base64
    import binascii

    if len(text) < 8 or len(text) % 4:
        return False
    try:
        decoded = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return False
    return b":" in decoded and decoded.decode("utf-8", "replace").isprintable()


def _holds_known_token(value: str) -> bool:
    for match in _KNOWN_TOKEN.finditer(value):
        token = match.group()
        if not token.startswith("sk-"):
            return True
        body = token[3:]       # an OpenAI-style key mixes cases and digits ('sk-learn-...' is a package's name)
        if any(ch.isdigit() for ch in body) and any(ch.isupper() for ch in body) and any(ch.islower() for ch in body):
            return True
    return False


def _url_holds_credential(token: str) -> bool:
    """Whether ``token`` (text without blanks holding '://') holds a URL's password, a token-like user name
    (:func:`_token_like_user`) or a query parameter named for a credential (:func:`query_credential_name`, its name
    percent-decoded) with a value."""
    from urllib.parse import unquote

    if _url_password(token) != token:
        return True
    stop, done = -1, 0
    for start, sep in _url_schemes(token):
        if start < done:                # inside a query already read (its parameters were looked at)
            continue
        end = _first_of(token, "/@:'\"?#", sep + 3)
        if sep + 3 < end < len(token) and token[end] == "@" and _token_like_user(token[sep + 3:end]):
            return True
        if stop < sep + 3:
            stop = _first_of(token, "?#'\"", sep + 3)
        if stop < len(token) and token[stop] == "?":
            done = _first_of(token, "#'\"", stop + 1)
            for part in re.split(r"[&;]", token[stop + 1:done]):
                name, equals, given = part.partition("=")
                if equals and given and query_credential_name(unquote(name)):
                    return True
    return False


def _plain_value_at(value: str, start: int, ends: dict[str, int | bool]) -> bool:
    """Whether the value at ``value[start:]`` (not blank), given under a weak name (:data:`_WEAK_LAST`), reads as
    plain text rather than a secret (review rev26c: "QA pass: 3/3", "second pass: dedup only"): its word (to the
    next blank, quotes and a trailing ``,`` / ``;`` aside) is a short number, a ratio, a version or a yes or no
    (:data:`_PLAIN_VALUE`), or a word of letters followed by more words that are no assignment. ``ends`` keeps
    where the last value looked at ends and what follows it, so values sharing an end (``pass:pass:...``) read
    the text once: linear over all the values of one text."""
    end = ends.get("end", -1)
    if end < start:
        blank = _BLANK.search(value, start)
        end = len(value) if blank is None else blank.start()
        ends.clear()
        ends["end"] = end
    if end - start > 64:
        return False
    word = value[start:end].strip("\"'").rstrip(",;&").strip("\"'")
    if _PLAIN_VALUE.fullmatch(word):
        return True
    if not _LETTER_WORD.fullmatch(word):
        return False
    if "prose" not in ends:
        after = _BLANKS.match(value, end).end()
        ends["prose"] = (after < len(value) and value[after].isalpha()
                         and _NEXT_ASSIGNMENT.match(value, after) is None)
    return bool(ends["prose"])


def tag_holds_credential(value: str, key: str | None = None) -> bool:
    """Whether a run tag's value (or its key, given as ``value``) holds a credential, or, with ``key``, whether a
    tag ``key = value`` does: a URL's password (``https://u:PASSWORD@host``); a URL user name that looks like a
    token (:func:`_token_like_user`: one of :data:`_TOKEN_PREFIXES`, or random, such as 40 hex digits; not an
    account's name such as ``contoso-engineering@dev.azure.com``); a URL query parameter named for one
    (:func:`query_credential_name`: ``token=``, ``sig=``, ``X-Amz-Signature=``, ``pass=``, ``session_id=``,
    ``code=``) with a value; a chat webhook's URL (:data:`_SECRET_URL`: Slack, Discord, Microsoft Teams); an
    assignment whose name is one's (libpq's ``password=...``, ``sslpassword=...``, ``PGPASSWORD=...``,
    ``AWS_SECRET_ACCESS_KEY=...``, ``Authorization: ...``; a name of two words a blank apart read joined, so
    "sort key: created_at" is ``sort_key``'s); an option named for one with a value (``--s3_secret_access_key=...``,
    ``--token abc``; an option starts a word: ``clip-tokenizer`` is none); an HTTP authorization (``Bearer
    <token>``, ``Basic <base64 of user:password>``); a bare token of a well-known kind (``ghp_...``,
    ``github_pat_...``, ``glpat-...``, ``hf_...``, ``xoxb-...``, ``sk-...``, ``AKIA...``, a JSON web token); and,
    with ``key``, a key named for a credential (``aws_secret_access_key``, ``PGPASSWORD``, ``api_token``) with a
    value that is not blank. Under a name whose last word is also plain English (``pass``, ``key``: a ``qa_pass``,
    "QA pass: 3/3"), a value counts only where it looks like a secret (:func:`_plain_value_at`).

    Narrower than :func:`redact_credentials`, which hides every query and every user name: a tag is a label or a
    link a person typed (review rev25l: a tracker link ``https://tracker.example/browse?id=42`` or a git remote
    ``ssh://git@host/repo.git`` refused the run; review rev26a: ``?assignee=``, ``?author=``,
    ``?target_session_attrs=``, "the clip-tokenizer change"). Linear in the value's length."""
    if (key is not None and value.strip() and credential_name(key)
            and not (_weak_name(key) and _plain_value_at(value.strip(), 0, {}))):
        return True
    if "://" in value:
        for match in _NON_SPACE.finditer(value):
            if "://" in match.group() and _url_holds_credential(match.group()):
                return True
    if _SECRET_URL.search(value):
        return True
    ends: dict[str, int | bool] = {}
    for match in _ASSIGNMENT.finditer(value):
        first, second = match.group(3), match.group(4)
        if not first or (first in "\"'" and second == first) or _hidden_at(value, match.end()):
            continue
        name = match.group(2) if match.group(1) is None else f"{match.group(1)}_{match.group(2)}"
        if credential_name(name) and not (_weak_name(name) and _plain_value_at(value, match.end(), ends)):
            return True
    if "-" in value and any(credential_name(match.group(1)) and not _hidden_at(value, match.end())
                            for match in _OPTION.finditer(value)):
        return True
    for match in _AUTH_SCHEME.finditer(value):
        scheme, credentials = match.group(1).lower(), match.group(2)
        if scheme == "basic" and _basic_credentials(credentials):
            return True
        if scheme == "bearer" and (len(credentials) >= TOKEN_USER_LENGTH
                                   or (len(credentials) >= 8 and any(ch.isdigit() for ch in credentials))):
            return True
    return _holds_known_token(value)


def option_names(value: str) -> str:
    """A command line of options (``features.beam_args``) as a listing, a run's metadata or the launchpad shows it:
    each option's name, every value hidden (``--runner=*** --s3_secret_access_key=*** ***``), so that no credential
    in a value is shown whatever its form; ``***`` for text that does not split like a shell's words."""
    import shlex

    try:
        words = shlex.split(value)
    except ValueError:
        return "***"
    if "--" in words:      # what follows is no option (Beam drops it): hidden whole (review rev23l)
        words = words[:words.index("--") + 1] + ["***"] * (len(words) > words.index("--") + 1)
    return " ".join(word.split("=", 1)[0] + "=***" if word.startswith("-") and "=" in word
                    else word if word.startswith("-") else "***" for word in words)


_FOLDED_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:/(?!/)")


def shown_path(value: str | os.PathLike) -> str:
    """A path given by a user (a model or processor folder, a ``--data-dir``) as a message shows it: a credential
    in it hidden (an ``init_from``, ``--model`` or ``--data-dir`` given as a link such as
    ``https://alice:<token>@huggingface.co/...``, shown ``https://alice:***@...``: :func:`redact_credentials`),
    also where ``Path`` folded the link's ``//`` into ``/``, and a link's fragment (``https://host/repo#***``,
    where a token may be passed as ``#access_token=...``). A path without a credential is shown as it is (review
    rev28a: the trainer's refusal quoted the token into Dagster's run history; rev32a: ``--data-dir``'s)."""
    text = os.fspath(value)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    folded = _FOLDED_SCHEME.match(text)
    link = text[:folded.end()] + "/" + text[folded.end():] if folded else text
    hidden = redact_credentials(link)
    if hidden == link:
        hidden = redact_credentials(text)
    if folded or "://" in hidden:   # a link's fragment (#access_token=...: review rev28e) is never shown
        hash_at = hidden.find("#")
        if 0 <= hash_at < len(hidden) - 1:
            hidden = hidden[:hash_at + 1] + "***"
    return hidden


SHOWN_CHARS = 80   # of a key or value an error message quotes


def quoted(value: Any, limit: int = SHOWN_CHARS) -> str:
    """``repr(value)`` as a one-line error message may quote a key or value it was given: escaped (a newline or a
    control character shows as ``\\n`` / ``\\x1b``) and, where that is over ``limit`` characters (quotes aside),
    cut after the last whole character or escape that fits, saying how long the value is: a string's length in
    characters (not its escaped form's), a list's or table's in items (a 3 MB key in pickapic.toml or --set was
    echoed whole, a 3 MB error line: noted by the rev22 reviews; 70 ESC characters were cut inside an escape
    and said to be 282 characters long: review rev23c). A URL's credential in a text is hidden first
    (:func:`formats.text.redact_credentials`: review rev25j), so a cut never leaves part of one."""
    if isinstance(value, str):
        value = redact_credentials(value)
        if len(value) <= limit:
            text = repr(value)
            if len(text) <= limit + 2:
                return text
        # the longest prefix whose repr fits: a prefix's repr is never longer than a longer prefix's
        low, high = 0, min(len(value), limit)
        while low < high:
            middle = (low + high + 1) // 2
            if len(repr(value[:middle])) <= limit + 2:
                low = middle
            else:
                high = middle - 1
        return f"{value[:low]!r}... ({len(value)} characters)"
    try:
        text = repr(value)
    except RecursionError:      # a list nested too deep for repr
        return f"a {type(value).__name__} nested too deep to show"
    if len(text) <= limit:
        return text
    items = isinstance(value, (list, tuple, dict, set, frozenset))
    size = f"{len(value)} items" if items else f"{len(text)} characters"
    return f"{_cut_escaped(text, limit)}... ({size})"


def _cut_escaped(text: str, limit: int) -> str:
    """The longest start of a repr ``text`` of at most ``limit`` characters that ends on no half escape (a
    backslash in a repr always begins one: ``\\\\``, ``\\n``, ``\\x1b``, ``\\u200b``, ``\\U0001f600``)."""
    end = 0
    while end < limit:
        step = {"x": 4, "u": 6, "U": 10}.get(text[end + 1:end + 2], 2) if text[end] == "\\" else 1
        if end + step > limit:
            break
        end += step
    return text[:end]
