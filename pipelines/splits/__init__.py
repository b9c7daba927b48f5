"""Stage 5, splits: pairs split by user and prompt with no leakage, from a stable assignment ledger.

- ``assign``: the ledger (held-out users in order of first appearance), prompt keys, trainability checks.
"""
