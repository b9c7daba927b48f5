"""Leak-free train / validation / test splits by user, normalized prompt and duplicate cluster.

- Held-out users: a user is held out iff the first 52 bits of ``sha256(salt + ':' + pseudonym)``, read as
  a fraction, fall under ``heldout_fraction``; digest hex character 14 (even/odd) picks validation or
  test. A pure function of the pseudonym: nightly rebuilds with more days never move a user.
- Keys: each row carries its normalized prompt (``prompt_key``) and the duplicate clusters of both
  images. Every key has one owner split; a row is kept only when all its keys are owned by its
  user's split, so no user, prompt or cluster spans two of train / validation / test (SQL contract
  rules check it). Conflicting rows are dropped into ``split_rejects`` with the reason
  (``prompt_conflict``, else ``cluster_conflict``): pairs = parent split rows + split_rejects.
- Owner of a key (``owner_mode``): ``first_use`` (default): the split of the first row that used it,
  ordered by (export day, created_at, ranking_id, pair_index). A prompt first typed by a held-out
  user stays held out forever (held-out wins: later train rows with it are dropped); a popular prompt
  first typed by a train user stays train, and a held-out user's later retyping of it is dropped
  instead. Because new days only append later rows, no owner changes on a rebuild (only a backfill
  of an older export day, or a cluster merge, can move a key). ``heldout_wins``: any held-out use
  makes the key held out (test before validation); stable too, but popular prompts typed by many
  users are then almost always held out, which costs train a large share of its rows (see the
  ``sacrificed_train_rows`` metadata of both modes on the same data).
- Prompt normalization (``prompt_key``): Unicode NFKC, case-folded, any ``[bracketed]`` text
  (negative prompt) removed, punctuation (Unicode P*) and math/modifier symbols (Sm, Sk) turned into
  spaces, whitespace collapsed and trimmed. A prompt that normalizes to nothing keys on its
  NFKC-case-folded text instead (never on the empty string, which would join unrelated rows).
- ``*_unique``: per held-out split, one labelled row per prompt_key (smallest salted digest of the
  pair_id), up to ``unique_prompts`` prompts chosen by salted prompt digest; rows repeat their
  parents. ``num_example_per_prompt`` counts rows with the same prompt_key within the split.
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import json
import re
import sys
import unicodedata
from dataclasses import asdict, dataclass, field

import pyarrow as pa

from pipelines.sqlrun import run_sql, run_to_parquet
from pipelines.home import DataHome
from pipelines.sqlrun import connect

SPLITS = ("train", "validation", "test", "validation_unique", "test_unique")
_BRACKETS = re.compile(r"\[[^\]]*\]")


def _knob(default, help: str):
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class SplitConfig:
    """Knobs of the split build."""

    salt: str = _knob("pickapic-split-v1", "Salt of the held-out user digest; changing it reshuffles every user.")
    heldout_fraction: float = _knob(0.06, "Share of users held out (half validation, half test).")
    owner_mode: str = _knob("first_use", "Who owns a shared prompt/cluster: 'first_use' or 'heldout_wins'.")
    unique_prompts: int = _knob(500, "Prompts in each of validation_unique and test_unique (at most).")
    threads: int = _knob(0, "DuckDB threads (0: one per core).")

    def __post_init__(self) -> None:
        if not 0.0 <= self.heldout_fraction < 1.0:
            raise ValueError(f"SplitConfig.heldout_fraction={self.heldout_fraction} must be within [0, 1)")
        if self.owner_mode not in ("first_use", "heldout_wins"):
            raise ValueError(f"SplitConfig.owner_mode={self.owner_mode!r}: expected 'first_use' or 'heldout_wins'")
        if self.unique_prompts < 0:
            raise ValueError(f"SplitConfig.unique_prompts={self.unique_prompts} must be >= 0")
        if not self.salt:
            raise ValueError("SplitConfig.salt must not be empty")


@functools.cache
def _punctuation_to_space() -> dict[int, str]:
    """``str.translate`` table: every punctuation (P*) and math/modifier symbol (Sm, Sk) -> space."""
    category = unicodedata.category
    return {cp: " " for cp in range(sys.maxunicode + 1)
            if (c := category(chr(cp)))[0] == "P" or c in ("Sm", "Sk")}


def normalize_prompt(text: str) -> str:
    """The prompt key: NFKC, casefold, brackets removed, punctuation to spaces, whitespace collapsed."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    stripped = _BRACKETS.sub(" ", folded)
    spaced = stripped.translate(_punctuation_to_space())
    key = " ".join(spaced.split())
    return key if key else "#" + " ".join(folded.split())


def user_home(pseudonym: str, salt: str, heldout_fraction: float) -> str:
    """The split a user belongs to (Python mirror of ``sql/splits_assign.sql``)."""
    digest = hashlib.sha256(f"{salt}:{pseudonym}".encode("utf-8")).hexdigest()
    if int(digest[:13], 16) < int(heldout_fraction * (1 << 52)):
        return "validation" if int(digest[13], 16) % 2 == 0 else "test"
    return "train"


@dataclass
class SplitReport:
    """Rows, users, prompts and tie rate per split, and the rows dropped for leakage prevention."""

    per_split: list[dict]
    rejects: list[tuple[str, str, int]]
    pairs: int
    train_home_rows: int
    sacrificed_train_rows: int
    config: dict = field(default_factory=dict)

    def metadata(self) -> dict:
        """JSON-able values and markdown tables."""
        split_rows = "\n".join(
            f"| {s['split']} | {s['rows']} | {s['users']} | {s['prompts']} | {s['tie_rate']:.4f} |" for s in self.per_split)
        reject_rows = "\n".join(f"| {home} | {reason} | {n} |" for home, reason, n in self.rejects)
        sacrificed = self.sacrificed_train_rows / self.train_home_rows if self.train_home_rows else 0.0
        return {
            "pairs": self.pairs,
            "rows_per_split": {s["split"]: s["rows"] for s in self.per_split},
            "users_per_split": {s["split"]: s["users"] for s in self.per_split},
            "prompts_per_split": {s["split"]: s["prompts"] for s in self.per_split},
            "tie_rate_per_split": {s["split"]: s["tie_rate"] for s in self.per_split},
            "split_rejects": sum(n for _, _, n in self.rejects),
            "sacrificed_train_rows": self.sacrificed_train_rows,
            "sacrificed_train_fraction": round(sacrificed, 6),
            "splits": "| split | rows | users | prompts | tie rate |\n|---|---:|---:|---:|---:|\n" + split_rows,
            "leakage_drops": "| home split | reason | rows |\n|---|---|---:|\n" + reject_rows,
            "config": json.dumps(self.config, sort_keys=True),
        }


def prompt_key_table(captions: list[str]) -> pa.Table:
    """(caption, prompt_key) for each distinct caption."""
    distinct = sorted(set(captions))
    return pa.table({"caption": pa.array(distinct, pa.string()),
                     "prompt_key": pa.array([normalize_prompt(c) for c in distinct], pa.string())})


def assign(con, config: SplitConfig) -> pa.Table:
    """Register ``prompt_keys`` and ``split_assignments`` on ``con`` (with a ``pairs`` view); return the latter."""
    captions = [row[0] for row in con.sql("SELECT DISTINCT caption FROM pairs").fetchall()]
    con.register("prompt_keys", prompt_key_table(captions))
    table = run_sql(con, "splits_assign", {"salt": config.salt, "heldout_fraction": float(config.heldout_fraction),
                                           "owner_mode": config.owner_mode})
    con.register("split_assignments", table)
    return table


def build_splits(home: DataHome, config: SplitConfig = SplitConfig()) -> SplitReport:
    """Write ``split_pairs`` and ``split_rejects`` from ``pairs``."""
    source = home.table_file("pairs")
    if not source.exists():
        raise FileNotFoundError(f"pairs not found at {source}: run pipelines.curation first")
    con = connect({"pairs": source}, threads=config.threads or None)
    assign(con, config)
    split_pairs = run_to_parquet(con, "splits_pairs", "split_pairs", home.table_file("split_pairs"),
                                 {"salt": config.salt, "unique_prompts": int(config.unique_prompts)})
    rejects = run_to_parquet(con, "splits_rejects", "split_rejects", home.table_file("split_rejects"))
    con.register("split_pairs", split_pairs)
    con.register("split_rejects", rejects)
    per_split = []
    for split, rows, users, prompts, ties in con.sql("""
            SELECT split, count(*), count(DISTINCT user_id), count(DISTINCT prompt_key), count(*) FILTER (label_0 = 0.5)
            FROM split_pairs GROUP BY split""").fetchall():
        per_split.append({"split": split, "rows": rows, "users": users, "prompts": prompts,
                          "tie_rate": round(ties / rows, 6) if rows else 0.0})
    present = {s["split"] for s in per_split}
    per_split += [{"split": s, "rows": 0, "users": 0, "prompts": 0, "tie_rate": 0.0} for s in SPLITS if s not in present]
    per_split.sort(key=lambda s: SPLITS.index(s["split"]))
    by_reason = con.sql("SELECT home_split, reason, count(*) FROM split_rejects GROUP BY ALL ORDER BY 1, 2").fetchall()
    train_home = con.sql("SELECT count(*) FROM split_assignments WHERE home = 'train'").fetchall()[0][0]
    sacrificed = sum(n for home_split, _, n in by_reason if home_split == "train")
    pairs = con.sql("SELECT count(*) FROM pairs").fetchall()[0][0]
    return SplitReport(per_split=per_split, rejects=[tuple(r) for r in by_reason], pairs=pairs,
                       train_home_rows=train_home, sacrificed_train_rows=sacrificed, config=asdict(config))


def main(argv: list[str] | None = None) -> None:
    """``python -m pipelines.splits --home DIR``: build split_pairs and split_rejects, print the report."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--home", default=None)
    parser.add_argument("--owner-mode", default=SplitConfig.owner_mode)
    args = parser.parse_args(argv)
    report = build_splits(DataHome.at(args.home), SplitConfig(owner_mode=args.owner_mode))
    print(json.dumps(report.metadata(), indent=2))


if __name__ == "__main__":
    main()
