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


def pseudonymize(user_id: int, secret: str = DEFAULT_SECRET) -> str:
    """HMAC-SHA256(secret, decimal user id), hex, truncated to 16 characters."""
    if not secret:
        raise ValueError("pseudonym secret must be a non-empty string")
    digest = hmac.new(secret.encode("utf-8"), str(int(user_id)).encode("ascii"), hashlib.sha256).hexdigest()
    return digest[:PSEUDONYM_HEX_CHARS]


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
