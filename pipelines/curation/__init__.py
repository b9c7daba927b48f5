"""Stage 4, curation: duplicate clusters, per-image decisions (NSFW, banned, broken), pairs.

- ``dedup``: exact and perceptual-hash duplicate clustering (DuckDB SQL in ``sql/dedup_*.sql``).
- ``decisions``: what is kept and why, and the pair table built from the rankings.
- ``pseudonym``: keyed pseudonyms for user ids in everything published.
"""
