"""Best-of-n measured on the simulator: how much true utility a scorer's pick among n candidates gains.

The paper's third result: generate several images per prompt and keep the one PickScore ranks highest. Here
every held-out (test_unique) prompt of a simulated home gets ``n`` fresh candidates from one generator
(``simulator.candidates``); ``pickapic rerank``'s code scores them with the trained model (and with
its untrained initial model); the simulator knows each candidate's true utility for the average user.

For each k in ``ns`` the candidates of a prompt are cut into n // k disjoint groups of k (so every k uses the
same images); per group, the scorer's pick (highest score, first on ties), a random pick (the group's mean
utility, its expectation) and the oracle (the group's best) are compared. ``gain`` = mean utility of the pick
minus that of a random pick (0 at k = 1 by construction); ``oracle_gain`` is the most any scorer could gain.

    python -m simulator.best_of_n --home HOME --model RUN/best [--ground-truth DIR] [--untrained RUN/init] [--n 8]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import stat
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pyarrow.parquet as pq

from formats import dataset
from formats.files import write_bytes_atomic
from formats.home import DataHome
from formats.outputs import check_output_dir, refuse_linked_subfolders
from simulator import candidates as C
from training.figures import pyplot, save_figure
from training.rerank import read_candidate_folder, rerank
from training.score_cli import score_rows

DEFAULT_NS = (1, 2, 4, 8)
# Written by best-of-n into its output folder before it deletes or writes anything there: the folder is best-of-n's
MARKER = ".best_of_n"
# What only a best-of-n run makes in its output folder: a non-empty --output holding none of these is refused
# (review rev28a: the candidates/ of a user's folder were deleted), and each folder on the way to one is never a link.
# Not rerank/scores.parquet: `pickapic rerank --output project/rerank` makes that beside a user's own candidates/
# (review rev28e), and a rerank output alone is no best-of-n output
OUTPUT_MARKERS = (MARKER, "best_of_n.json", f"candidates/{C.TRUTH_FILE}", ".candidates.tmp")
# What it writes in its output folder: no folder on the way to one may be a link
WRITTEN = (*OUTPUT_MARKERS, "rerank/scores.parquet")


def pick_utilities(utility: np.ndarray, scores: np.ndarray, k: int) -> dict[str, float]:
    """Mean true utility of the scorer's pick, a random pick and the best candidate over groups of ``k``, and
    the standard error of the scorer's gain (over prompts: each prompt's gain averaged over its groups).

    ``utility`` and ``scores`` are [prompts, n]; unscored candidates (NaN) are never picked, and a group without
    any score falls back to a random pick.
    """
    prompts, n = utility.shape
    if not 1 <= k <= n:
        raise ValueError(f"group size {k} must be in 1..{n}")
    chosen, random, oracle = [], [], []
    for g in range(n // k):
        u = utility[:, g * k:(g + 1) * k]
        s = np.where(np.isnan(scores[:, g * k:(g + 1) * k]), -np.inf, scores[:, g * k:(g + 1) * k])
        pick = np.argmax(s, axis=1)  # first maximum: input order breaks ties
        none = np.isneginf(s).all(axis=1)
        chosen.append(np.where(none, u.mean(axis=1), u[np.arange(prompts), pick]))
        random.append(u.mean(axis=1))
        oracle.append(u.max(axis=1))
    per_prompt = np.mean(np.asarray(chosen) - np.asarray(random), axis=0)
    gain_se = float(per_prompt.std(ddof=1) / np.sqrt(prompts)) if prompts > 1 else float("nan")
    return {"chosen": float(np.mean(chosen)), "random": float(np.mean(random)), "oracle": float(np.mean(oracle)),
            "gain_se": gain_se}


@dataclass
class BestOfNResult:
    """Gains of best-of-k over a random pick, per scorer and k, with the oracle's for scale."""

    generator: str
    prompts: int
    candidates_per_prompt: int
    ns: list[int]
    random_utility: dict[int, float]
    oracle_utility: dict[int, float]
    chosen_utility: dict[str, dict[int, float]]        # scorer name -> k -> mean utility of its pick
    gain_se: dict[str, dict[int, float]] = field(default_factory=dict)  # standard error of each gain
    unscored: dict[str, int] = field(default_factory=dict)
    output_dir: str = ""
    chart_path: str | None = None
    contact_sheet: str | None = None

    def gain(self, scorer: str, k: int) -> float:
        """Mean utility of ``scorer``'s best-of-k pick minus a random pick's."""
        return self.chosen_utility[scorer][k] - self.random_utility[k]

    def table(self) -> str:
        """Markdown: gain over a random pick per k for each scorer and the oracle."""
        names = list(self.chosen_utility)
        lines = ["| n | " + " | ".join(f"{name} gain" for name in names) + " | oracle gain | random pick utility |",
                 "|---|" + "---|" * (len(names) + 2)]
        for k in self.ns:
            cells = [f"{self.gain(name, k):+.3f} ± {self.gain_se[name][k]:.3f}" if k > 1 else "0" for name in names]
            lines.append(f"| {k} | " + " | ".join(cells) + f" | {self.oracle_utility[k] - self.random_utility[k]:+.3f} | "
                         f"{self.random_utility[k]:.3f} |")
        return "\n".join(lines)

    def to_dict(self, relative: bool = False) -> dict[str, Any]:
        """JSON-able (k keys as strings), gains included. ``relative`` (as ``best_of_n.json`` stores it): the chart
        and contact sheet as paths relative to ``output_dir``, which is left out, so the file stays right when
        the folder moves and is the same wherever the data home is."""
        out = asdict(self)
        if relative:
            del out["output_dir"]
            for key in ("chart_path", "contact_sheet"):
                if out[key] is not None:
                    out[key] = os.path.relpath(out[key], self.output_dir)
        for key in ("random_utility", "oracle_utility"):
            out[key] = {str(k): v for k, v in out[key].items()}
        for key in ("chosen_utility", "gain_se"):
            out[key] = {name: {str(k): v for k, v in by.items()} for name, by in getattr(self, key).items()}
        out["gain"] = {name: {str(k): self.gain(name, k) for k in self.ns} for name in self.chosen_utility}
        out["oracle_gain"] = {str(k): self.oracle_utility[k] - self.random_utility[k] for k in self.ns}
        return out

    def metadata(self) -> dict[str, Any]:
        """Dagster-ready metadata: gains per k and scorer, the markdown table, the chart and contact sheet paths."""
        meta: dict[str, Any] = {"generator": self.generator, "prompts": self.prompts,
                                "candidates_per_prompt": self.candidates_per_prompt}
        for name in self.chosen_utility:
            for k in self.ns:
                meta[f"gain_{name}_n{k}"] = self.gain(name, k)
        for k in self.ns:
            meta[f"gain_oracle_n{k}"] = self.oracle_utility[k] - self.random_utility[k]
        meta["best_of_n"] = self.table()
        meta["output_dir"] = self.output_dir
        return meta


def _aligned(truth: dict[str, list], scored: Sequence[dict[str, Any]], folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """[prompts, n] utility and score arrays in truth order (scores matched on the candidate's path)."""
    score_of = {str(Path(r["image"]).relative_to(folder)): (np.nan if r["score"] is None else r["score"]) for r in scored}
    prompts = list(dict.fromkeys(truth["prompt_id"]))
    n = len(truth["prompt_id"]) // len(prompts)
    utility = np.asarray(truth["utility"], dtype=np.float64).reshape(len(prompts), n)
    scores = np.asarray([score_of[image] for image in truth["image"]], dtype=np.float64).reshape(len(prompts), n)
    return utility, scores


def write_chart(result: BestOfNResult, path: Path) -> Path:
    """Line chart: gain over a random pick against n, per scorer and for the oracle."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(result.ns, [result.oracle_utility[k] - result.random_utility[k] for k in result.ns], "k--o", label="oracle")
    for name in result.chosen_utility:
        ax.plot(result.ns, [result.gain(name, k) for k in result.ns], "o-", label=f"{name} scorer")
    ax.axhline(0, color="grey", linewidth=0.6)
    ax.set_xscale("log", base=2)
    ax.minorticks_off()
    ax.set(xlabel="candidates per prompt (n)", ylabel="true utility gain over a random pick",
           title=f"best-of-n, {result.generator.rsplit('/', 1)[-1]}, {result.prompts} prompts")
    ax.set_xticks(result.ns, [str(k) for k in result.ns])
    ax.legend()
    fig.tight_layout()
    return save_figure(fig, path)


def run_best_of_n(ground_truth: Path, version_dir: Path, model_dir: Path, output_dir: Path, *,
                  untrained_dir: Path | None = None, n: int = 8, ns: Sequence[int] = DEFAULT_NS,
                  generator: str = C.DEFAULT_GENERATOR, image_size: int | None = None, seed: int = 0,
                  max_prompts: int | None = None, device: str = "auto") -> BestOfNResult:
    """Render candidates for the test_unique prompts, rerank them with each scorer, measure the true gains.

    ``ground_truth``: the simulation's ground-truth folder (what each prompt asked for, the image size).
    """
    from training.scoring import Scorer

    ns = [k for k in ns if k <= n]
    if not ns:
        raise ValueError(f"no group size in {list(ns)} fits n={n}")
    ground_truth, output_dir = Path(ground_truth), Path(output_dir)
    if image_size is None:
        summary = json.loads((ground_truth / "summary.json").read_text(encoding="utf-8"))
        image_size = int(summary["config"]["image_size"])
    prompts = C.eval_prompts(ground_truth, version_dir)[:max_prompts]
    if not prompts:
        raise ValueError(f"{version_dir} has no test_unique prompts to generate for")
    # candidates are rebuilt from scratch beside the old ones and swapped in: no stale files from a larger n
    folder, staging, old = output_dir / "candidates", output_dir / ".candidates.tmp", output_dir / ".candidates.old"
    _claim(output_dir, folder)
    shutil.rmtree(staging, ignore_errors=True)
    truth_path = C.write_candidates(staging, prompts, generator, n, image_size, seed)
    shutil.rmtree(old, ignore_errors=True)
    if os.path.lexists(folder):
        folder.rename(old)      # out of the way in one step: a killed run never leaves a half-deleted candidates/
    staging.rename(folder)
    shutil.rmtree(old, ignore_errors=True)
    truth = pq.read_table(folder / truth_path.name).to_pydict()
    rows = read_candidate_folder(folder)
    scorers = {"trained": model_dir, **({"untrained": untrained_dir} if untrained_dir is not None else {})}
    chosen: dict[str, dict[int, float]] = {}
    gain_se: dict[str, dict[int, float]] = {}
    unscored: dict[str, int] = {}
    random_u: dict[int, float] = {}
    oracle_u: dict[int, float] = {}
    sheet = None
    for name, directory in scorers.items():
        scorer = Scorer(directory, device=device)
        if name == "trained":
            report = rerank(scorer, rows, output_dir / "rerank")
            scored = pq.read_table(report["scores"]).to_pylist()
            sheet = report["contact_sheet"]
        else:
            scored = score_rows(scorer, rows)
        utility, scores = _aligned(truth, scored, folder)
        unscored[name] = int(np.isnan(scores).sum())
        chosen[name], gain_se[name] = {}, {}
        for k in ns:
            picked = pick_utilities(utility, scores, k)
            chosen[name][k], gain_se[name][k] = picked["chosen"], picked["gain_se"]
            random_u[k], oracle_u[k] = picked["random"], picked["oracle"]
    result = BestOfNResult(C.world.MODELS[C.generator_index(generator)].model_id, len(prompts), n, list(ns), random_u,
                           oracle_u, chosen, gain_se, unscored, str(output_dir), contact_sheet=sheet)
    result.chart_path = str(write_chart(result, output_dir / "best_of_n.png"))
    write_bytes_atomic(output_dir / "best_of_n.json", (json.dumps(result.to_dict(relative=True), indent=1, sort_keys=True) + "\n").encode())
    return result


def _claim(output_dir: Path, folder: Path) -> None:
    """Before anything in ``output_dir`` is deleted: refuse a ``candidates/`` that best-of-n did not write (no
    ``truth.parquet`` of its own: a user's candidates, review rev28e) and mark the folder as best-of-n's
    (:data:`MARKER`), so that a run killed before ``best_of_n.json`` leaves a folder the next run recognises."""
    try:
        info = os.lstat(folder)
    except FileNotFoundError:
        info = None
    if info is not None and (not stat.S_ISDIR(info.st_mode) or not os.path.lexists(folder / C.TRUTH_FILE)):
        raise ValueError(f"{folder} was not written by best-of-n (no {C.TRUTH_FILE} in it) and is never replaced; "
                         "give a new or empty output folder")
    output_dir.mkdir(parents=True, exist_ok=True)
    if not os.path.lexists(output_dir / MARKER):
        write_bytes_atomic(output_dir / MARKER, b"written by python -m simulator.best_of_n\n")


def untrained_model_dir(best_dir: Path) -> Path | None:
    """The untrained initial model of a run: ``RUN/init`` for scratch runs, else the ``init_from`` checkpoint."""
    from training.config import TrainConfig

    best_dir = Path(best_dir)
    if not (best_dir / "train_config.json").is_file():
        return None
    config = TrainConfig.load(best_dir)
    candidate = best_dir.parent / "init" if config.init_from == "scratch" else Path(config.init_from)
    return candidate if (candidate / "config.json").is_file() else None


@contextlib.contextmanager
def _guarded(model: Path, output: Path) -> Iterator[None]:
    """Write ``output`` inside the trainer's run folder of ``model`` (``RUN/best`` -> ``RUN/best_of_n``) only as the
    best_of_n asset does: the run's training finished and its lock held throughout (``training.runs.publishing``),
    refused in one line otherwise. An output elsewhere, or a model outside a run folder, is written as it is."""
    from training import runs

    run = Path(model).parent
    inside = os.path.realpath(output).startswith(os.path.realpath(run) + os.sep)
    if not inside or not any(os.path.lexists(run / marker) for marker in runs.RUN_MARKERS):
        yield
        return
    try:
        with runs.publishing(run, "best_of_n", hold=True):
            yield
    except ValueError as exc:
        raise SystemExit(f"python -m simulator.best_of_n: {exc}") from None


def main(argv: list[str] | None = None) -> int:
    """``python -m simulator.best_of_n``: print the gains table and where the files went."""
    parser = argparse.ArgumentParser(prog="python -m simulator.best_of_n", description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, required=True, help="a simulated data home (with ground_truth/)")
    parser.add_argument("--model", type=Path, required=True, help="the trained model (RUN/best)")
    parser.add_argument("--ground-truth", type=Path, default=None,
                        help="the simulation's ground-truth folder (default: HOME/ground_truth)")
    parser.add_argument("--untrained", type=Path, default=None,
                        help="the untrained model to compare with (default: RUN/init or the run's init_from)")
    parser.add_argument("--version", default=None, help="dataset version (default: latest)")
    parser.add_argument("--output", type=Path, default=None, help="output folder (default: RUN/best_of_n)")
    parser.add_argument("--n", type=int, default=8, help="candidates per prompt (default 8)")
    parser.add_argument("--generator", default=C.DEFAULT_GENERATOR, help=f"simulated generator (default {C.DEFAULT_GENERATOR})")
    parser.add_argument("--image-size", type=int, default=None, help="candidate size in px (default: the simulator's)")
    parser.add_argument("--max-prompts", type=int, default=None, help="use only the first N prompts")
    parser.add_argument("--seed", type=int, default=0, help="candidate seed (default 0)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    args = parser.parse_args(argv)
    output = args.output or args.model.parent / "best_of_n"
    # as `pickapic rerank --output`: a new or empty folder or an earlier best-of-n output, never a link, a file or a
    # data home's pipeline folder (its models/ holds the runs' own best_of_n/); checked before anything is written
    final = check_output_dir(output, [DataHome(args.home).root], "--output", markers=OUTPUT_MARKERS, in_home=True)
    refuse_linked_subfolders(final, WRITTEN, "--output", output)   # rerank/ too: it writes there
    # the version held for reading (a shared lock on its folder, as every reader of a version: README section 6)
    with dataset.reading_version(DataHome(args.home), args.version) as version_dir, _guarded(args.model, output):
        result = run_best_of_n(args.ground_truth or DataHome(args.home).ground_truth, version_dir, args.model, output,
                               untrained_dir=args.untrained or untrained_model_dir(args.model), n=args.n,
                               generator=args.generator, image_size=args.image_size, seed=args.seed,
                               max_prompts=args.max_prompts, device=args.device)
    print(result.table())
    print(f"files: {result.output_dir} (best_of_n.json, best_of_n.png, rerank/contact_sheet.png)")
    return 0


if __name__ == "__main__":
    from formats.commands import run_command

    sys.exit(run_command("python -m simulator.best_of_n", main))
