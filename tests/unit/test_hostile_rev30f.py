"""Hostile review rev30f: a young app with few users, over its first weeks, end to end with the real CLI
(``pickapic simulate`` / ``build`` / ``query`` / ``export`` / ``train``, real Dagster, Beam, DuckDB) on small homes.

Run for real: homes of 1, 2, 3, 5, 6, 12, 16, 24 and 40 simulated users; a 16-user home built night by night for 30
nights (published from night 20 on) and the same raw zone built from scratch; days with zero rankings, with no
rankings / downloads file at all, with only ties, with one prompt for everyone and one prompt a day, with every image
blob missing, with every ranking by a banned user, with a single generator model; a ban wave after a publish.

Held (tried, no defect): ``build`` on 1, 2, 3, 5 users, on a day of zero rankings as the first day, on a day of four
empty files and after a ban wave prints one plain ``not enough data to publish`` line (exit 1, no traceback), publishes
nothing and keeps ``latest`` ("latest stays at V"); the 30-night home never moved a pair, user, prompt key, caption
or image between train / validation / test across its ten snapshotted versions, ``leakage_audit`` found nothing in any
retained version, and its last version is byte-identical (same version id) to a from-scratch build of the same raw
zone; every raw line reconciles per table and day (table + quarantine ``line_count``), every image uid is in
``image_features`` or ``image_rejects``, every ranking is in ``pairs`` or has a ranking decision; ``sizes.json``,
the tar members, the sidecars, ``manifest.json``, ``meta/splits_summary.parquet``, the card's sizes table and its
``dataset_info`` agree on every split (pairs, rankings, users, prompts, tie rate); a missing table file is a
``missing_file`` quarantine row; ``query`` / ``export`` / ``train`` on a home with nothing published say so in one
line; the trainer reads only the train split for the scratch tokenizer, refuses ``eval_split`` / ``test_split`` =
train, and trains (CPU, seconds) on a 6-pair train split, an all-tie version and a single-model version, whose
generator leaderboard does not crash.

Filed (strict xfails, ranked: wrong published text first, then an operator misled): the dataset card counts
quarantine rows as "lines" (100 identical bad lines are 1, a missing file is 1); the card describes the split as a
6% salted hash for a version whose held-out users were chosen by the fill rule; the card's Known limits state a tie
share and an evaluation noise that the version's own tables contradict; ``build`` says "no user is held out for it
yet" for a split whose held-out users' rows were all dropped as prompt conflicts. All four fixed the same day
(fix30f, ``tests/unit/test_fix30f.py``) and the strict-xfail markers removed.
"""
from __future__ import annotations

import gzip
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.fast_tmp import fast_folder

ROOT = Path(__file__).resolve().parents[2]
FLOOD = 100     # identical malformed lines appended to one day's rankings file


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PICKAPIC_HOME", "DAGSTER_HOME", "PICKAPIC_FAULT")}
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def pickapic(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """The real `pickapic` command (a subprocess of this interpreter)."""
    done = subprocess.run([sys.executable, "-m", "dagster_project.cli", *args], capture_output=True, text=True,
                          env=_env(), cwd=str(ROOT), timeout=600, check=False)
    if check and done.returncode != 0:
        raise AssertionError(f"pickapic {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done


def _rewrite(path: Path, change) -> None:
    """Rewrite a raw .jsonl.gz file, passing each JSON object line through ``change`` (other lines kept)."""
    out = []
    for line in gzip.decompress(path.read_bytes()).splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            out.append(line)
            continue
        out.append(json.dumps(change(row)).encode() if isinstance(row, dict) else line)
    path.write_bytes(gzip.compress(b"".join(line + b"\n" for line in out), mtime=0))


def _days(root: Path) -> list[Path]:
    return sorted(p for p in (root / "raw" / "app_logs").iterdir() if p.name.startswith("dt="))


@pytest.fixture(scope="module")
def young(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A young app's home (40 users, 3 days, default settings) built and published by `pickapic build`; its raw
    zone carries a flood of 100 identical malformed ranking lines (day 3) and a day without a downloads file."""
    with fast_folder(tmp_path_factory.mktemp("rev30f"), prefix="pickapic-rev30f-") as folder:
        root = folder / "home"
        pickapic("simulate", "--home", str(root), "--days", "3", "--users", "40", "--rankings-per-day", "60",
                 "--image-size", "32", "--seed", "5", "--quiet")
        days = _days(root)
        rankings = days[2] / "rankings.jsonl.gz"
        rankings.write_bytes(gzip.compress(gzip.decompress(rankings.read_bytes()) + b"{this is not json\n" * FLOOD,
                                           mtime=0))
        (days[1] / "downloads.jsonl.gz").unlink()       # the exporter wrote no file for a day without downloads
        pickapic("build", "--home", str(root))
        assert (root / "datasets" / "pickapic" / "latest").is_symlink()
        yield root


def _version(root: Path) -> Path:
    return (root / "datasets" / "pickapic" / "latest").resolve()


def _card(root: Path) -> str:
    return (_version(root) / "README.md").read_text(encoding="utf-8")


def _section(card: str, title: str) -> str:
    start = card.index(f"## {title}")
    end = card.find("\n## ", start + 1)
    return card[start:] if end < 0 else card[start:end]


# --- 1. wrong published text: the card's quarantine "lines" are rows --------------------------------------------


def test_the_card_counts_quarantined_lines_not_rows(young: Path) -> None:
    quarantine = pq.read_table(_version(young) / "meta" / "quarantine.parquet").to_pylist()
    lines: dict[tuple[str, str], int] = {}
    for row in quarantine:
        key = (row["table"], row["reason"])
        lines[key] = lines.get(key, 0) + (row["line_count"] if row["line_number"] > 0 else 0)
    assert lines[("rankings", "malformed_json")] >= FLOOD                        # held: the meta table counts them
    assert lines.get(("downloads", "missing_file")) == 0                          # held: a file-level row
    section = _card(young).split("Raw lines quarantined at ingest", 1)[1].split("Decisions (subject", 1)[0]
    shown = {(t, r): int(n.replace(",", "")) for t, r, n in re.findall(r"^\| (\w+) \| (\w+) \| ([\d,]+) \|$",
                                                                          section, re.MULTILINE)}
    assert shown, section
    assert shown[("rankings", "malformed_json")] == lines[("rankings", "malformed_json")], shown
    assert shown.get(("downloads", "missing_file"), 0) == 0, shown
    assert {k: v for k, v in shown.items() if v != lines.get(k)} == {}


# --- 2. the card's split method for a young version ---------------------------------------------------------------


def test_the_card_says_how_a_young_versions_users_were_held_out(young: Path) -> None:
    version = _version(young)
    users = {}
    for split in ("train", "validation", "test"):
        for path in sorted((version / split).glob(f"pickapic-{split}-*.parquet")):
            for user in pq.read_table(path, columns=["user_id"]).column("user_id").to_pylist():
                users[user] = split
    ledger = {r["user_id"]: r["rule"] for r in
              pq.read_table(young / "warehouse" / "split_ledger" / "data.parquet").to_pylist()}
    filled = [u for u, split in users.items() if split != "train" and ledger.get(u) == "fill"]
    held_out = [u for u, split in users.items() if split != "train"]
    assert filled and len(held_out) / len(users) > 0.2, (len(filled), len(held_out), len(users))   # held: the facts
    splits = _section(_card(young), "Splits")
    assert re.search(r"\bfill|\bfirst users|\bearliest users", splits, re.IGNORECASE), splits


# --- 3. the card's Known limits contradict the version's own tables -----------------------------------------------


def test_the_cards_known_limits_agree_with_the_versions_own_tables(young: Path) -> None:
    version = _version(young)
    summary = {r["split"]: r for r in pq.read_table(version / "meta" / "splits_summary.parquet").to_pylist()}
    main = ("train", "validation", "test")
    tie_rate = sum(summary[s]["num_ties"] for s in main) / sum(summary[s]["num_pairs"] for s in main)
    smallest = min(summary[s]["num_pairs"] for s in ("validation_unique", "test_unique"))
    assert tie_rate < 0.08 and smallest < 50, (tie_rate, smallest)              # held: a young, few-tie version
    limits = _section(_card(young), "Known limits")
    if "one pair in eight" in limits:
        assert 0.09 <= tie_rate <= 0.17, f"card: one pair in eight is a tie; version: {tie_rate:.1%}"
    noise = [float(n) for n in re.findall(r"\+-\s*([\d.]+) points", limits)]
    standard_error = 100 * 0.5 / math.sqrt(smallest)
    assert all(n >= 0.8 * standard_error for n in noise), (noise, round(standard_error, 1), smallest)


# --- 4. a false "why" in the not-enough-data line ----------------------------------------------------------------


def test_not_enough_data_tells_the_truth_about_held_out_users_whose_rows_all_conflict(tmp_path: Path) -> None:
    with fast_folder(tmp_path, prefix="pickapic-rev30f-prompt-") as folder:
        root = folder / "home"
        # 20 rankings a day (60 images), not 40 (120): every prompt is made the same, so no split can fill whatever
        # the size; half the images to fingerprint (NudeNet ~25 ms each) and to carry through every stage
        pickapic("simulate", "--home", str(root), "--days", "1", "--users", "24", "--rankings-per-day", "20",
                 "--image-size", "32", "--seed", "1", "--quiet")
        for day in _days(root):
            for table in ("images", "rankings", "downloads"):
                _rewrite(day / f"{table}.jsonl.gz",
                         lambda row: {**row, "prompt": "a red circle"} if "prompt" in row else row)
        done = pickapic("build", "--home", str(root), "--set", "splits.min_users=3", check=False)
        assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
        assert "not enough data to publish" in done.stderr                              # held: refused plainly
        assert not (root / "datasets" / "pickapic" / "latest").exists()
        ledger = pq.read_table(root / "warehouse" / "split_ledger" / "data.parquet").to_pylist()
        held_in_validation = [r for r in ledger if r["split"] == "validation"]
        rejects = pq.read_table(root / "warehouse" / "split_rejects" / "data.parquet").to_pylist()
        assert held_in_validation and {r["reason"] for r in rejects} == {"prompt_conflict"}   # held: the facts
        assert "split 'validation' is empty: no user is held out for it yet" not in done.stderr, done.stderr
        assert "prompt_conflict" in done.stderr or "conflict" in done.stderr, done.stderr
