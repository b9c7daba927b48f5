"""Carry the split ledger across a new pseudonym secret: every entry re-keyed old pseudonym -> new pseudonym.

The ledger is keyed by the user's pseudonym, ``HMAC(curation.pseudonym_secret, raw id)``. A new secret (the
README advises one after a leak) gives every user a pseudonym the ledger never saw, so the next splits build
refuses (:class:`~pipelines.splits.assign.LedgerKeysChanged`) rather than assign every user afresh and move
held-out users into train. This command maps each raw user id of the warehouse (``rankings`` and ``users``)
under the old and the new secret and rewrites the ledger's entries (every salt's, split, rule, position and first
day kept) under the new pseudonyms. Published users the ledger lacks are re-seeded first, as the splits build
does. The old secret comes from the environment (``PICKAPIC_OLD_PSEUDONYM_SECRET``: never a flag, which shell
history and ``ps`` would show), the new one from the home's settings file; neither, nor any raw id, is written
or printed: the report holds counts only. The re-keyed ledger records the new secret's key check
(:func:`pipelines.curation.pseudonym.key_check`), which the next build compares with that of ``pairs``. The key owner
pins (``split_key_owners``) need no re-keying: they are keyed on prompt keys and on image uids (the app's ids, which
no secret touches), not on pseudonyms; the retained versions keep their old pseudonyms, so a key that only their rows
of an account erased since hold keeps its pin until they are deleted (``assign.Accounts`` cannot tell those rows'
users under the new secret). Run it once, after the secret changed and before the next build::

    PICKAPIC_OLD_PSEUDONYM_SECRET='the old secret' python -m pipelines.splits.rekey --home HOME
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Callable, Iterable

from formats.files import write_parquet_atomic
from formats.home import DataHome
from formats.settings import load
from pipelines.curation.pseudonym import KEY_CHECK_METADATA, key_check, pseudonymize
from pipelines.splits.assign import (
    Assignment,
    file_key_check,
    hold_ledger_lock,
    ledger_table,
    published_users,
    read_ledger,
    seed_from_published,
    unknown_published,
)
from pipelines.sqlrun import connect
from schemas import get_schema

OLD_SECRET_ENV = "PICKAPIC_OLD_PSEUDONYM_SECRET"


class RekeyRefused(ValueError):
    """The re-keying would be wrong (same secret, an old secret that maps no entry); nothing was written."""


def raw_user_ids(home: DataHome) -> list[int]:
    """Every raw user id the warehouse holds (``rankings`` and ``users``), sorted."""
    con = connect({"rankings": home.table_files("rankings"), "users": home.table_files("users")})
    return sorted(row[0] for row in con.sql("SELECT user_id FROM rankings UNION SELECT user_id FROM users").fetchall()
                  if row[0] is not None)


def rekey_ledger(home: DataHome, user_ids: Iterable[int], old_secret: str, new_secret: str, salt: str,
                 log: Callable[[str], None] | None = None) -> dict:
    """Rewrite the split ledger under the new secret's pseudonyms (under the ledger lock); returns counts.

    ``user_ids``: the raw ids whose pseudonyms to map; ``salt``: the splits salt under which published users the
    ledger lacks are re-seeded before the mapping. An entry whose user no raw id maps stays as it is. A second
    run finds the ledger already re-keyed and changes nothing. Refuses (:class:`RekeyRefused`) an old secret
    equal to the new one, one whose key check is neither the ledger's nor the new secret's (when the ledger records
    one), or one that maps none of the ledger's users while it holds some (a mistyped secret)."""
    log = log or (lambda message: print(message, file=sys.stderr, flush=True))
    if not old_secret or not new_secret:
        raise RekeyRefused("the old and the new pseudonym secret must both be set")
    if old_secret == new_secret:
        raise RekeyRefused("the old pseudonym secret is the current one: nothing to re-key")
    ids = sorted(set(int(u) for u in user_ids))
    mapping = {pseudonymize(u, old_secret): pseudonymize(u, new_secret) for u in ids}
    with hold_ledger_lock(home, log):
        recorded = file_key_check(home.table_file("split_ledger"))
        if recorded and recorded not in (key_check(old_secret), key_check(new_secret)):
            raise RekeyRefused(f"the split ledger was built under another pseudonym secret than {OLD_SECRET_ENV} (its "
                               "key check differs): is it the secret the ledger was built under? Nothing was written")
        others: list = []
        mine = read_ledger(home, salt, others)
        version, published = published_users(home)
        unknown = unknown_published(mine, others, published)
        seeded = seed_from_published(mine, unknown, set(mapping), salt)
        entries = [(user, a) for user, a in {**mine, **seeded}.items()] + others
        old_keys = sum(1 for user, _ in entries if user in mapping)
        new_keys = set(mapping.values())
        if not old_keys:
            already = sum(1 for user, _ in entries if user in new_keys)
            records = len(entries) + len(unknown)
            if records and not already:
                raise RekeyRefused(f"the old secret maps none of the split ledger's {len(entries)} entries nor of the "
                                   f"{len(unknown)} users the latest published version holds beyond them to a raw "
                                   f"user id of the warehouse ({len(ids)} users): is {OLD_SECRET_ENV} the secret they "
                                   "were built under? Nothing was written")
            return {"entries": len(entries), "rekeyed": 0, "already_rekeyed": already, "reseeded": 0,
                    "kept_unmapped": len(entries) - already, "conflicts": 0, "published_version": version}
        by_salt: dict[str, dict[str, Assignment]] = {}
        conflicts = 0
        for user, entry in sorted(entries, key=lambda item: (item[1].salt, item[1].position)):
            key = mapping.get(user, user)
            held = by_salt.setdefault(entry.salt, {})
            if key in held:      # the new pseudonym has an entry already (a build under the new secret): the older stays
                conflicts += 1
                continue
            held[key] = entry
        rows: list = []
        for entry_salt, held in by_salt.items():   # positions dense again where a conflict dropped one
            rows += [(user, Assignment(a.split, a.rule, i, a.first_dt, a.salt, a.settings)) for i, (user, a) in enumerate(held.items())]
        schema = get_schema("split_ledger").with_metadata({KEY_CHECK_METADATA: key_check(new_secret).encode("ascii")})
        write_parquet_atomic(ledger_table({}, {}, rows), home.table_file("split_ledger"), schema)
    report = {"entries": len(entries), "rekeyed": old_keys, "already_rekeyed": 0, "reseeded": len(seeded),
              "kept_unmapped": len(entries) - old_keys, "conflicts": conflicts, "published_version": version}
    log(f"split ledger re-keyed to the new pseudonym secret: {old_keys} of {len(entries)} entries "
        f"({len(seeded)} re-seeded from the published version first), {conflicts} conflicts")
    return report


def main(argv: list[str] | None = None) -> None:
    """``PICKAPIC_OLD_PSEUDONYM_SECRET=... python -m pipelines.splits.rekey --home DIR``: re-key the split ledger
    from the old pseudonym secret to the one in the home's settings; prints counts as JSON."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--home", default=None)
    args = parser.parse_args(argv)
    home = DataHome.at(args.home)
    old_secret = os.environ.get(OLD_SECRET_ENV, "")
    if not old_secret:
        parser.error(f"set {OLD_SECRET_ENV} to the pseudonym secret the ledger was built under (the new one is read "
                     "from the home's settings file)")
    settings = load(home.root)
    try:
        report = rekey_ledger(home, raw_user_ids(home), old_secret, settings.config("curation").pseudonym_secret,
                              settings.config("splits").salt)
    except RekeyRefused as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    print(json.dumps(report, indent=2, sort_keys=True))


if __name__ == "__main__":
    from formats.commands import run_command

    sys.exit(run_command("python -m pipelines.splits.rekey", main))
