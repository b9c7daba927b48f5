"""Keyed user pseudonyms: HMAC-SHA256 of the raw user id, so published ids cannot be reversed or joined.

The secret comes from configuration (``CurationConfig.pseudonym_secret``); ``DEFAULT_SECRET`` is a
documented, public default meant only for local runs: a real release must set its own secret, or
anyone can recompute the mapping from raw ids. Pseudonyms are the first 16 hex characters (64 bits).
"""
from __future__ import annotations

import hashlib
import hmac

import pyarrow as pa

DEFAULT_SECRET = "pickapic-local-dev-secret"
PSEUDONYM_HEX_CHARS = 16
KEY_CHECK_LABEL = b"pickapic-ledger-key-check"       # HMAC'd under the secret: never a decimal id, so never a pseudonym
KEY_CHECK_METADATA = b"pickapic.pseudonym_key_check"  # Parquet key-value metadata of pairs and split_ledger


def pseudonymize(user_id: int, secret: str = DEFAULT_SECRET) -> str:
    """HMAC-SHA256(secret, decimal user id), hex, truncated to 16 characters."""
    if not secret:
        raise ValueError("pseudonym secret must be a non-empty string")
    digest = hmac.new(secret.encode("utf-8"), str(int(user_id)).encode("ascii"), hashlib.sha256).hexdigest()
    return digest[:PSEUDONYM_HEX_CHARS]


def key_check(secret: str) -> str:
    """Which secret a table's pseudonyms were made under, told without the secret: HMAC-SHA256(secret, a fixed
    label), hex. Two tables with the same value were keyed under the same secret (exactly, not by a heuristic).

    It lets nobody recover the secret nor test a guess more cheaply than the pseudonyms already do: HMAC is a
    pseudo-random function, so the value says nothing of the secret; checking a guessed secret against it costs
    one HMAC, as checking it against any published pseudonym of a (small, sequential) raw id does. The label is
    not a decimal number, so the value is no user's pseudonym either. Written in ``pairs`` (by the curation, which
    holds the secret) and in ``split_ledger``, never printed."""
    if not secret:
        raise ValueError("pseudonym secret must be a non-empty string")
    return hmac.new(secret.encode("utf-8"), KEY_CHECK_LABEL, hashlib.sha256).hexdigest()


def read_key_check(metadata: dict | None) -> str | None:
    """The key check recorded in a Parquet file's key-value ``metadata``, or None (none recorded, or not one)."""
    value = (metadata or {}).get(KEY_CHECK_METADATA)
    try:
        text = value.decode("ascii") if isinstance(value, bytes) else None
    except UnicodeDecodeError:
        return None
    return text if text and len(text) == 64 and all(c in "0123456789abcdef" for c in text) else None


def pseudonym_table(user_ids: list[int], secret: str = DEFAULT_SECRET) -> pa.Table:
    """(user_id int64, pseudonym string) for each distinct id, sorted by id; errors on a pseudonym collision."""
    ids = sorted(set(int(u) for u in user_ids))
    names = [pseudonymize(u, secret) for u in ids]
    if len(set(names)) != len(names):
        seen: dict[str, int] = {}
        for uid, name in zip(ids, names):
            if name in seen:
                raise ValueError(f"pseudonym collision: user ids {seen[name]} and {uid} both map to {name}")
            seen[name] = uid
    return pa.table({"user_id": pa.array(ids, pa.int64()), "pseudonym": pa.array(names, pa.string())})
