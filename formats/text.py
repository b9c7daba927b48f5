"""Text from outside (file names, table cells, error messages quoting them) made safe to write and to print.

:func:`utf8_text` makes any Python string valid UTF-8 (Arrow, Parquet and JSON writers refuse lone surrogates, which
is how Python holds the bytes of a file name it could not decode); :func:`terminal_text` also shows control and
format characters as escapes, so text printed on a terminal cannot move the cursor, retitle the window, clear the
screen or reorder what follows (bidirectional overrides).
"""
from __future__ import annotations

import re


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


def _per_token(value: str, rewrite) -> str:
    return _NON_SPACE.sub(lambda match: rewrite(match.group()), value)


def redact_credentials(value: str) -> str:
    """``value`` as a message may show it: a URL's password (``https://user:***@host``), a URL's user name given
    without a password (``https://***@host``: a token), a URL's query (``https://host/?***``: an Azure SAS token,
    a signature) and the value of an option named for a credential (``--s3_secret_access_key=***``) replaced by
    ``***``. Over-redacts rather than under (a URL path holding '@' after a ``user:`` part). No list of patterns
    finds every credential: a setting that may hold one is never shown whole (:func:`option_names`).

    What ``_URL_PASSWORD``, ``_URL_USER``, ``_URL_QUERY`` and ``_SECRET_OPTION`` replace, in that order, found in
    time linear in the value's length (review rev25j: the patterns themselves are quadratic)."""
    if "://" in value:
        value = _per_token(value, _url_password)
        value = _per_token(value, _url_user)
        value = _per_token(value, _url_query)
    if "-" in value:
        value = _secret_options(value)
    return value


# a URL query parameter whose name says it carries a credential (token=, access_token=, api_key=, sig= of an Azure
# SAS, X-Amz-Signature / X-Amz-Credential / X-Amz-Security-Token, X-Goog-Signature, password=, code= of OAuth)
_SECRET_PARAMETER = re.compile(r"(?i)token|secret|sig|passw|pwd|auth|credential|key|session|jwt|code")
# the start of a token given as a URL's user name (GitHub, GitLab, Hugging Face, Slack, OpenAI-style, AWS key ids)
_TOKEN_PREFIXES = ("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_", "glpat-", "hf_", "xox", "sk-", "AKIA", "ASIA")
TOKEN_USER_LENGTH = 16      # a URL user name this long or longer, given without a password, is taken for a token


def tag_holds_credential(value: str) -> bool:
    """Whether a run tag's key or value holds a credential: a URL's password (``https://u:PASSWORD@host``), a URL user
    name that looks like a token (:data:`TOKEN_USER_LENGTH` characters or more, or one of :data:`_TOKEN_PREFIXES`),
    a URL query parameter named for one (:data:`_SECRET_PARAMETER`: ``token=``, ``sig=``, ``X-Amz-Signature=``) or
    a credential option's value (``--s3_secret_access_key=...``). Narrower than :func:`redact_credentials`, which
    hides every query and every user name: a tag is a label or a link a person typed (review rev25l: a tracker link
    ``https://tracker.example/browse?id=42`` or a git remote ``ssh://git@host/repo.git`` refused the run). Linear
    in the value's length."""
    from urllib.parse import unquote

    if "://" in value:
        for match in _NON_SPACE.finditer(value):
            token = match.group()
            if "://" not in token:
                continue
            if _url_password(token) != token:
                return True
            stop, done = -1, 0
            for start, sep in _url_schemes(token):
                if start < done:                # inside a query already read (its parameters were looked at)
                    continue
                end = _first_of(token, "/@:'\"?#", sep + 3)
                if sep + 3 < end < len(token) and token[end] == "@":
                    user = token[sep + 3:end]
                    if len(user) >= TOKEN_USER_LENGTH or user.startswith(_TOKEN_PREFIXES):
                        return True
                if stop < sep + 3:
                    stop = _first_of(token, "?#'\"", sep + 3)
                if stop < len(token) and token[stop] == "?":
                    done = _first_of(token, "#'\"", stop + 1)
                    for part in re.split(r"[&;]", token[stop + 1:done]):
                        if _SECRET_PARAMETER.search(unquote(part.split("=", 1)[0])):
                            return True
    return "-" in value and _secret_options(value) != value


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
