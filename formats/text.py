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
# (Beam's --s3_secret_access_key, --s3_session_token, --s3_access_key_id, --azure_connection_string, ...)
_URL_PASSWORD = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://[^\s/@:'\"]*:)[^\s]*@")
_SECRET_OPTION = re.compile(r"(?i)(--?[a-z0-9_\-]*(?:secret|token|password|passwd|credential|connection_string|"
                            r"access_key|api_key|private_key)[a-z0-9_\-]*)(=|\s+)(\"[^\"]*\"?|'[^']*'?|\S+)")


# a URL's user name without a password (a token given as the user: https://TOKEN@host) and a URL's query (an Azure
# SAS token's sig=..., a signed URL's signature: review rev23j)
_URL_USER = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^\s/@:'\"?#]+@")
_URL_QUERY = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://[^\s?#'\"]*\?)[^\s#'\"]+")


def redact_credentials(value: str) -> str:
    """``value`` as a message may show it: a URL's password (``https://user:***@host``), a URL's user name given
    without a password (``https://***@host``: a token), a URL's query (``https://host/?***``: an Azure SAS token,
    a signature) and the value of an option named for a credential (``--s3_secret_access_key=***``) replaced by
    ``***``. Over-redacts rather than under (a URL path holding '@' after a ``user:`` part). No list of patterns
    finds every credential: a setting that may hold one is never shown whole (:func:`option_names`)."""
    value = _URL_PASSWORD.sub(r"\1***@", value)
    value = _URL_USER.sub(r"\1***@", value)
    value = _URL_QUERY.sub(r"\1***", value)
    return _SECRET_OPTION.sub(r"\1\2***", value)


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
