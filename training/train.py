"""PickScore-style preference training of a CLIP model on published Pick-a-Pic shards (plain PyTorch + DDP).

Run: ``python -m training --data-dir HOME/datasets/pickapic/latest --output-dir HOME/models/run1``
(one process, CPU or one GPU) or ``torchrun --nproc_per_node N -m training ...`` (DDP; gloo on
CPU, nccl on CUDA). Output dir layout::

    init/                   scratch runs: the untrained initial model (model + processor + train_config.json)
    checkpoints/last/       latest state for resuming (model, processor, trainer_state.pt, train_config.json)
    best/                   best model by validation_unique tie-aware accuracy (save_pretrained + config), and
                            best_step.json (its step; saved after checkpoints/last/, a resume repairs one behind)
    metrics.json            history (train loss, lr, validation accuracy) + final test_unique evaluation
    curve.png               training curve
    diverged.json           only after TrainingDiverged: the step, the reason and the recipe that diverged
    training.json           while a training that changes the model has not finished (written before the first
                            change, removed after metrics.json): a run is finished when metrics.json is there and
                            neither this nor diverged.json is

Rerunning the same command resumes from ``checkpoints/last`` (optimizer, scheduler, step and data
position restored; a finished run only re-evaluates). A run that diverged is not resumed: rerun unchanged it is
refused at once, rerun with a changed recipe (a lower learning_rate, ...) it starts over from step 0, once the
new recipe is checked. A training that changes the model removes what the evaluation, leaderboard and best-of-n
stages wrote into the run folder about the model it held (``eval.json``, ``leaderboard.png``, ...).
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import math
import os
import pickle
import stat
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.distributed as dist

from formats import dataset
from formats.files import honour_umask, read_small_file, write_bytes_atomic
from training.config import (
    DERIVED_OUTPUTS,
    DIVERGED_FILE,
    RESUMABLE_FIELDS,
    STAGING_PREFIX,
    TRAIN_LOCK_FILE,
    TRAINING_FILE,
    TrainConfig,
    from_home,
    home_relative,
    metrics_steps,
    parse_run_json,
    remove_run_path,
)
from training.data import (
    ImageSpec,
    LoaderBatches,
    PairCollator,
    ShardChecksumError,
    TrainPairStream,
    check_split,
    clear_traceback_locals,
    iter_captions,
    make_loader,
    shard_digests,
    split_shards,
    stable_seed,
    verify_shards,
)
from training.device import autocast, cpu_threads, resolve_device
from training.evaluate import EvalResult, SplitScores, evaluate_scores, score_split
from training.figures import pyplot, save_figure
from training.loss import contrastive_loss, global_weight_sum, pair_kl, preference_loss
from training.metric import choose_threshold, only_ties
from training.model import (
    TOKENIZER_VERSION,
    PairScorer,
    build_model,
    count_parameters,
    load_model,
    own_pair_scores,
    read_tokenizer_mark,
    save_checkpoint,
    shown_path,
    tokenizer_version,
)

STATE_FILE = "trainer_state.pt"
# in best/: which checkpoint it holds ({"step", "val_accuracy"}, the trainer state's "best" when it was saved). best/
# is saved after checkpoints/last/ at the step it improved at, so a kill between the two leaves a state whose best
# step is its own step and a best/ of an earlier one: a resume saves best/ again from checkpoints/last/ (review
# rev34c: best/ was saved first, and a kill between the two left best/ ahead of the state describing it)
BEST_RECORD = "best_step.json"
LOCK_FILE = TRAIN_LOCK_FILE   # ".train.lock": held (flock) by the trainer writing a run folder; a second one is refused
EventSink = Callable[[dict[str, Any]], None]   # metric events: train, eval, done


@dataclass
class TrainResult:
    """Where a run wrote its outputs and what it measured."""

    output_dir: Path
    best_dir: Path
    metrics_path: Path
    curve_path: Path
    steps: int
    best_step: int
    best_val_accuracy: float
    final_train_loss: float
    test: EvalResult
    n_parameters: int
    resumed_from_step: int
    wall_s: float
    world_size: int = 1
    pairs_per_s: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)

    def metadata(self) -> dict[str, Any]:
        """Dagster-ready metadata (JSON-able values, markdown table)."""
        return {
            "output_dir": str(self.output_dir), "best_dir": str(self.best_dir), "metrics_json": str(self.metrics_path),
            "curve_png": str(self.curve_path), "steps": self.steps, "best_step": self.best_step,
            "best_val_accuracy": self.best_val_accuracy, "final_train_loss": self.final_train_loss,
            "test_accuracy": self.test.test_accuracy, "threshold": self.test.threshold,
            "random_baseline": self.test.random_baseline, "n_parameters": self.n_parameters,
            "resumed_from_step": self.resumed_from_step, "wall_s": round(self.wall_s, 2),
            "world_size": self.world_size, "pairs_per_s": round(self.pairs_per_s, 1),
            "metrics_table": self.test.metadata()["metrics_table"],
        }


# --------------------------------------------------------------------------- distributed helpers
# how long a rank waits in a collective for the others (gloo's default, set for NCCL too, whose default is shorter):
# the ranks wait there while rank 0 alone evaluates, and a rank whose loader worker hangs reaches the next collective
# with its error after data.LOADER_TIMEOUT_S, well within it
GROUP_TIMEOUT_S = 1800


def _init_distributed(device_pref: str) -> tuple[int, int, int, bool]:
    """(rank, world, local_rank, created): join the torchrun process group when WORLD_SIZE > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0, False
    created = False
    if not dist.is_initialized():
        use_cuda = device_pref != "cpu" and torch.cuda.is_available()
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", timeout=timedelta(seconds=GROUP_TIMEOUT_S))
        created = True
    return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), created


def _barrier(world: int) -> None:
    if world > 1:
        dist.barrier()


def _all_mean(value: torch.Tensor, world: int) -> Any:
    """The mean over ranks of ``value``: a float, or a list of floats for a 1-D tensor."""
    value = value.detach().float().clone()
    if world > 1:
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= world
    return value.tolist()


def _from_rank0(value: Any, world: int) -> Any:
    """Rank 0's ``value`` on every rank (a decision only rank 0 can make: its evaluation, its run folder)."""
    if world > 1:
        box = [value]
        dist.broadcast_object_list(box, src=0)
        value = box[0]
    return value


def _share_failure(failure: BaseException | None, rank: int, world: int) -> None:
    """Where rank 0 failed in what it alone does (it reads and changes the run folder, builds or loads the scratch
    model's ``init/``), every rank fails with its reason: rank 0 raises ``failure``, the others a ``ValueError`` of
    the same text (a refusal's) or naming it (review: a refusal raised on rank 0 alone left the other ranks waiting
    in the next collective, or reading a later message of rank 0 as this one's). Every rank calls it at the same
    point, so it is also a barrier: no rank goes on before rank 0's work is done."""
    told = None if failure is None else (str(failure) if isinstance(failure, ValueError)
                                         else f"rank 0 stopped with {type(failure).__name__}: {failure}")
    told = _from_rank0(told, world)
    if failure is not None:
        raise failure
    if told is not None:
        raise ValueError(told)


def _share_any_failure(failure: BaseException | None, rank: int, world: int) -> None:
    """Where each rank does its own part of a check (the open shards a resume hashes, ``opened[rank::world]``),
    every rank fails with the first failure in rank order: the failing rank raises its own, the others a
    ``ShardChecksumError`` or ``ValueError`` of the same text, or a ``ValueError`` naming another exception
    (review rev35f: a damaged shard in rank 1's slice left rank 0 waiting in its next collective). A collective:
    every rank calls it at the same point."""
    told = None if failure is None else (
        ("ShardChecksumError", str(failure)) if isinstance(failure, ShardChecksumError)
        else ("ValueError", str(failure)) if isinstance(failure, ValueError)
        else ("ValueError", f"rank {rank} stopped with {type(failure).__name__}: {failure}"))
    if world > 1:
        gathered: list[Any] = [None] * world
        dist.all_gather_object(gathered, told)
        told = next((t for t in gathered if t is not None), None)
    if failure is not None:
        raise failure
    if told is not None:
        kind, text = told
        raise ShardChecksumError(text) if kind == "ShardChecksumError" else ValueError(text)


@contextlib.contextmanager
def _kept(failures: list[BaseException]) -> Iterator[None]:
    """Keep in ``failures`` the ``Exception`` the block raises, to be shared (:func:`_share_failure`) at the point
    every rank reaches next, instead of raising it on this rank alone."""
    try:
        yield
    except Exception as exc:   # noqa: BLE001 - shared with every rank, then raised on this one
        failures.append(exc)


class TrainingDiverged(ValueError):
    """The loss, the weights or an evaluation's scores turned NaN or infinite: the run stops, keeps its last
    checkpoint whose evaluation was finite, and records the divergence (``diverged.json``) so that a rerun
    with the same recipe is refused and one with a changed recipe starts over."""

    def __init__(self, message: str, step: int = 0, what: str = ""):
        super().__init__(message)
        self.step, self.what = step, what


def _diverged(step: int, what: str) -> TrainingDiverged:
    return TrainingDiverged(f"training diverged at step {step}: {what}; the run stops unfinished, without "
                            "metrics.json (checkpoints/last/ and best/ keep the last checkpoint whose evaluation was "
                            "finite); rerun with a lower learning_rate, weight_decay or contrastive_weight (or set "
                            "grad_clip > 0) to train it over from step 0, or use a new output_dir", step, what)


def _non_finite(scores: SplitScores, split: str) -> str | None:
    """Why an evaluation's scores show a diverged model (a NaN or infinite score: finite weights grown too
    large), or None."""
    bad = int((~np.isfinite(scores.scores)).any(axis=1).sum())
    if bad:
        return (f"{bad} of the {len(scores.keys)} pairs of {split} score NaN or infinite (weights grown too large "
                "for float32)")
    return None


def _check_finite_weights(scorer: torch.nn.Module, step: int) -> None:
    """Refuse weights with a NaN or infinite value before they are evaluated or checkpointed (a diverged
    model's scores earn no accuracy, and ``load_model`` refuses such a checkpoint)."""
    bad = [name for name, value in scorer.named_parameters() if not bool(torch.isfinite(value).all())]
    if bad:
        raise _diverged(step, f"{len(bad)} weight(s) hold NaN or infinite values (first: {bad[0]})")


# --------------------------------------------------------------------------- checkpoint io
@contextlib.contextmanager
def run_lock(out: Path) -> Any:
    """Hold an exclusive ``flock`` on ``out/.train.lock`` while a trainer writes ``out``; a second trainer on the
    same folder is refused at once (two would overwrite each other's checkpoints), and so is one while a stage
    publishes about the run's model (it holds the lock shared: ``training.runs.publishing``). The kernel drops the
    lock when the process dies, so a killed run never leaves a stale one."""
    path = out / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)   # the umask decides
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise ValueError(f"cannot lock {path}: {exc.strerror or exc}: the run folder cannot be written here; "
                             "give an output_dir this account may write") from None
        raise ValueError(f"cannot lock {path}: {exc.strerror or exc} (a link or something else is there)") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError(f"cannot lock {path}: not a regular file")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunLocked(f"another trainer is writing to {out} (it holds {path}), or a stage (evaluation, "
                            "leaderboard, best-of-n) is publishing about its model; wait for it to finish or use "
                            "another output_dir") from None
        yield path
    finally:
        os.close(fd)  # closing releases the lock


class RunLocked(RuntimeError):
    """A run folder another trainer is writing to."""


def _refuse_links(root: Path, final: Path) -> None:
    """Refuse when ``final``, its ``.tmp`` / ``.old`` siblings or a folder between ``root`` and them is a
    symbolic link (checked with ``lstat``): the trainer never writes, renames or deletes through a link."""
    for target in (final, final.with_name(f".{final.name}.tmp"), final.with_name(f".{final.name}.old")):
        path = root
        for part in target.relative_to(root).parts:
            path = path / part
            if path.is_symlink():
                raise ValueError(f"{path} is a symbolic link: the trainer writes and replaces {final} and never "
                                 "does so through a link (remove the link or use a new output_dir)")


def _save_dir_atomic(final: Path, write: Callable[[Path], None], root: Path | None = None) -> None:
    """Write a directory beside ``final`` and swap it in (a crash leaves the old or the new one); refused when
    anything between ``root`` (default: ``final``'s parent) and ``final`` is a link. The files and folders written
    are fsynced before the renames and the parent after them (noted by review rev33f: a power cut could leave a
    renamed ``checkpoints/last`` of empty files)."""
    _refuse_links(final.parent if root is None else root, final)
    tmp, old = final.with_name(f".{final.name}.tmp"), final.with_name(f".{final.name}.old")
    remove_run_path(tmp)
    tmp.mkdir(parents=True)
    write(tmp)
    honour_umask(tmp)  # safetensors writes 0600 whatever the umask; other accounts must read the weights
    _fsync_tree(tmp)   # on disk before the renames: a power cut never leaves a renamed folder of empty files
    if os.path.lexists(final):
        remove_run_path(old)
        final.rename(old)
    tmp.rename(final)
    dataset.fsync_dir(final.parent, unsupported_ok=True)   # the renames themselves
    remove_run_path(old)


def _fsync_tree(folder: Path) -> None:
    """fsync every regular file under ``folder``, then every folder, ``folder`` last (links are not followed; a
    file system that cannot sync a folder leaves it as it is)."""
    folders = []
    for root, dirs, files in os.walk(folder):
        folders.append(root)
        for name in files:
            path = os.path.join(root, name)
            if os.path.islink(path):
                continue
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    for root in reversed(folders):
        dataset.fsync_dir(Path(root), unsupported_ok=True)


def _recover_dir(root: Path, final: Path) -> None:
    """After a crash between the two renames of ``_save_dir_atomic``, restore the previous directory."""
    _refuse_links(root, final)
    old = final.with_name(f".{final.name}.old")
    if not os.path.lexists(final) and os.path.lexists(old):
        old.rename(final)


def _save_model(directory: Path, clip: Any, processor: Any, config: TrainConfig, home: Path | None) -> None:
    save_checkpoint(directory, clip, processor)
    config.save(directory, home)


def _save_best(directory: Path, clip: Any, processor: Any, config: TrainConfig, home: Path | None,
               best: dict[str, Any]) -> None:
    """best/: the model, its config, and which checkpoint it is (:data:`BEST_RECORD`)."""
    _save_model(directory, clip, processor, config, home)
    record = {"step": best["step"], "val_accuracy": best["val_accuracy"]}
    write_bytes_atomic(directory / BEST_RECORD, (json.dumps(_plain(record), sort_keys=True, allow_nan=False) + "\n").encode())


def best_record_step(best_dir: Path) -> int | None:
    """The step of the checkpoint ``best_dir`` holds (its :data:`BEST_RECORD`), or None when it has no record the
    trainer wrote (none: a best/ saved before it was recorded; or not a regular file of JSON with a step)."""
    data = read_small_file(Path(best_dir) / BEST_RECORD, 1 << 16)
    try:
        record = json.loads(data) if data is not None else None
    except (ValueError, RecursionError):
        return None
    step = record.get("step") if isinstance(record, dict) else None
    return step if type(step) is int and step >= 0 else None


def _best_behind(best_dir: Path, state: dict[str, Any]) -> bool:
    """Whether ``best_dir`` is not the model the resumed trainer ``state`` names as best while that model is the
    one in checkpoints/last/ (the state's best step is its own step): a kill between the saves of
    checkpoints/last/ and best/ left an earlier best/ (or none, at the first checkpoint). A best/ without a
    record (saved before it was recorded, when best/ was saved before checkpoints/last/ and so never behind) is
    kept; one with a record of another step, or a damaged one, is behind."""
    if state["best"]["step"] != state["step"]:
        return False
    if not os.path.lexists(best_dir):
        return True
    return os.path.lexists(Path(best_dir) / BEST_RECORD) and best_record_step(best_dir) != state["step"]


_STATE_KEYS = {"step": int, "optimizer": dict, "scheduler": dict, "history": list, "best": dict, "torch_rng": list}


def _plain(value: Any) -> Any:
    """``value`` as data ``torch.load(weights_only=True)`` accepts: numpy scalars/arrays become numbers/tensors."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value.copy())
    return value


def _is_number(value: Any) -> bool:
    return type(value) in (int, float)


def _is_best(best: dict[str, Any]) -> bool:
    """Whether ``best`` is a trainer state's best checkpoint record: its step (-1 before any evaluation) and accuracy."""
    return type(best.get("step")) is int and best["step"] >= -1 and _is_number(best.get("val_accuracy"))


def _is_history_entry(entry: Any) -> bool:
    """Whether ``entry`` is a history entry the trainer writes: a train log line (step, loss, lr) or an evaluation
    (step, val_loss, val_accuracy and other numbers); what the curve, metrics.json and the log read of it is there."""
    if not (isinstance(entry, dict) and type(entry.get("step")) is int and entry["step"] >= 0):
        return False
    if "val_accuracy" in entry or "val_loss" in entry:
        return _is_number(entry.get("val_accuracy")) and _is_number(entry.get("val_loss"))
    return _is_number(entry.get("loss")) and _is_number(entry.get("lr"))


def load_trainer_state(path: Path) -> dict[str, Any]:
    """The trainer state at ``path``, loaded as plain data only (tensors, dicts, lists, numbers, strings):
    a state that needs any other class is refused, since unpickling it could run code."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as err:
        raise ValueError(f"refusing to resume from {path}: it does not load as plain data (tensors, dicts, lists, "
                         f"numbers, strings) and was not written by this trainer ({type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else ''}); move it away to start over") from None
    wrong = sorted(k for k, kind in _STATE_KEYS.items() if not isinstance(state, dict) or not isinstance(state.get(k), kind))
    if isinstance(state, dict) and not isinstance(state.get("data_version_dir", ""), str):
        wrong.append("data_version_dir")  # optional: states written before it was recorded lack it
    open_shards = state.get("open_shards", []) if isinstance(state, dict) else None
    if not (isinstance(open_shards, list) and all(isinstance(rel, str) for rel in open_shards)):
        wrong.append("open_shards")       # optional: [train shards the workers were inside, "train/<name>"]
    world = state.get("world_size", 1) if isinstance(state, dict) else None
    if not (type(world) is int and world >= 1):
        wrong.append("world_size")        # optional: the ranks that trained it (states written before lack it)
    running = state.get("running_loss", [0.0, 0]) if isinstance(state, dict) else None
    if not (isinstance(running, list) and len(running) == 2 and isinstance(running[0], float)
            and type(running[1]) is int and running[1] >= 0):
        wrong.append("running_loss")      # optional too: [loss summed since the last log line, steps in it]
    if isinstance(state, dict) and isinstance(state.get("step"), int) and (type(state["step"]) is not int
                                                                            or state["step"] < 0):
        wrong.append("step")              # steps trained: a whole number (not a bool), never negative
    if isinstance(state, dict) and isinstance(state.get("best"), dict) and not _is_best(state["best"]):
        wrong.append("best")              # {"step": int >= -1, "val_accuracy": number}, as the trainer writes it
    if isinstance(state, dict) and isinstance(state.get("history"), list) and not all(
            _is_history_entry(entry) for entry in state["history"]):
        wrong.append("history")           # dicts with an int step and numbers (loss, lr, val_loss, val_accuracy, ...)
    if wrong:
        raise ValueError(f"refusing to resume from {path}: missing or mistyped trainer state entries "
                         f"{sorted(set(wrong))}")
    if not state["torch_rng"] or not all(isinstance(r, torch.Tensor) and r.dtype == torch.uint8 for r in state["torch_rng"]):
        raise ValueError(f"refusing to resume from {path}: torch_rng must be a non-empty list of uint8 RNG states")
    return state


def _verify_open_shards(state: dict[str, Any], data_dir: Path, path: Path, rank: int, world: int) -> None:
    """Hash whole the train shards the checkpointed run's workers were inside (``open_shards``: started, not
    read to their end, so not verified; their samples may already be in the checkpoint's weights). A resume
    whose ``max_steps`` is already reached never reads them again, and one that goes on could stop inside
    another shard first; so every resume checks them before anything else, ranks sharing the list. States
    written before they were recorded have none. Each rank hashes its slice and raises on its own: the caller
    shares the failure with every rank (:func:`_share_any_failure`), with the rest of each rank's resume checks."""
    recorded = state.get("open_shards", [])
    if not recorded:
        return
    digests = shard_digests(split_shards(data_dir, "train"))
    urls = [str(data_dir / rel) for rel in recorded]
    unknown = sorted(rel for rel, url in zip(recorded, urls) if url not in digests)
    if unknown:  # checked before any file is opened: the state names only shards of the version's manifest
        raise ValueError(f"refusing to resume from {path}: its open_shards {unknown} are not train shards of "
                         f"{data_dir}'s manifest")
    verify_shards(urls[rank::world], digests)


def _check_resumable(saved: TrainConfig, config: TrainConfig, home: Path | None = None) -> None:
    """Refuse a resume whose recipe changed; ``saved`` as stored (``TrainConfig.load(resolve=False)``): its
    ``init_from`` is ``home:``-relative or absolute, or as given in files written before paths were stored
    relative (then it must be given the same way again). ``num_workers`` is checked where the step is known
    (:func:`_check_continuation`)."""
    changed = sorted(f.name for f in dataclasses.fields(TrainConfig)
                     if f.name not in RESUMABLE_FIELDS and f.name not in ("init_from", "num_workers")
                     and getattr(saved, f.name) != getattr(config, f.name))
    if saved.init_from not in (config.init_from, home_relative(config.init_from, home)) and not (
            Path(saved.init_from).is_absolute()
            and home_relative(saved.init_from, home) == home_relative(config.init_from, home)):
        changed = sorted([*changed, "init_from"])
    if changed:
        raise ValueError(f"cannot resume {config.output_dir}: config fields {changed} differ from the checkpoint "
                         "(use a new output_dir)")


def _check_continuation(saved: TrainConfig, config: TrainConfig, step: int, out: Path, world: int = 1,
                        saved_world: int | None = None) -> None:
    """Refuse a resume at ``step`` whose ``max_steps`` is below it (the run would report more steps than it
    was given), or that trains on with another loader worker count (``num_workers``: the train stream's
    shard order, shuffle seeds and per-worker skip depend on it, 0 and 1 read alike) or another DDP world
    size (``world`` ranks now, ``saved_world`` when the checkpoint was written, None in states written
    before it was recorded: each rank reads its own share of the shards, so the ranks decide the pairs
    too); a run that trains no further step may change either."""
    if 0 < step < config.max_steps and saved_world is not None and saved_world != world:
        raise ValueError(f"cannot resume {out} on {world} process(es): its checkpoint at step {step} was trained "
                         f"by {saved_world} DDP ranks, and each rank reads its own share of the train shards, so "
                         f"the world size decides which train pairs come next; rerun with {saved_world} "
                         "process(es) (torchrun --nproc_per_node) or use a new output_dir")
    if step > config.max_steps:
        raise ValueError(f"cannot resume {out} with max_steps={config.max_steps}: its checkpoint is at step {step} "
                         f"already; rerun with max_steps >= {step} or use a new output_dir")
    if 0 < step < config.max_steps and max(saved.num_workers, 1) != max(config.num_workers, 1):
        raise ValueError(f"cannot resume {out} with num_workers={config.num_workers}: its checkpoint at step {step} "
                         f"was trained with num_workers={saved.num_workers}, and the loader worker count decides "
                         f"which train pairs come next; rerun with num_workers={saved.num_workers} or use a new "
                         "output_dir")


def _lr_lambda(warmup: int, total: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup  # step 0 already trains at lr / warmup
        return max(0.0, (total - step) / max(1, total - warmup))
    return factor


def _optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices only (biases, norms, logit_scale and embeddings' 1-D params excluded)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=config.learning_rate,
                             betas=(config.adam_beta1, config.adam_beta2), eps=config.adam_eps)


def augment_images(pixels: torch.Tensor, kind: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random per-image flips (``hflip``) or dihedral transforms (``dihedral``: flip + 0-3 quarter turns) of
    [B, 2, C, H, W] square images, drawn from ``generator`` (the trainer seeds one per (seed, rank, step), so
    resumes stay bit-identical). Every simulator attribute (colour, shape, count, background, style) and
    quality cue survives them."""
    if kind == "none":
        return pixels
    if kind not in ("hflip", "dihedral"):
        raise ValueError(f"unknown augment {kind!r}")
    flat = pixels.flatten(0, 1)
    flip = (torch.rand(flat.shape[0], generator=generator) < 0.5).to(flat.device)[:, None, None, None]
    flat = torch.where(flip, flat.flip(-1), flat)
    if kind == "dihedral":
        turns = torch.randint(0, 4, (flat.shape[0],), generator=generator)
        flat = torch.stack([torch.rot90(img, int(k), dims=(-2, -1)) for img, k in zip(flat, turns)])
    return flat.view_as(pixels)


# --------------------------------------------------------------------------- divergence record
# Settings that do not change what a run computes: a rerun of a diverged run that changes only these is the same
# recipe (refused); any other change (learning_rate, max_steps and its schedule, num_workers and its data order,
# device, the data version, ...) starts the run over.
NOT_RECIPE = frozenset({"cpu_threads", "output_dir", "data_dir", "log_every", "eval_batch_size"})
# what the trainer makes in a run folder: a diverged run started over with a changed recipe loses these, and
# only these (its lock file and anything else in the folder stay). Removed in this order: the checkpoint last, so
# a start-over killed midway still finds the checkpoint that made it start over (review rev34l: checkpoints/
# went first, and the older tokenizer's best/ left behind was kept by the retrain as its step-0 model)
OWN_OUTPUTS = ("best", ".best.tmp", ".best.old", "metrics.json", "curve.png", "init", ".init.tmp", ".init.old",
               "checkpoints/.last.tmp", "checkpoints/.last.old", "checkpoints/last")
CHECKPOINT_OUTPUTS = ("checkpoints/.last.tmp", "checkpoints/.last.old", "checkpoints/last")


def _recipe(config: TrainConfig, data_dir: Path, home: Path | None) -> dict[str, Any]:
    """What a run computes with: the config as stored (paths home-relative) less :data:`NOT_RECIPE`, and the
    resolved dataset version."""
    values = {name: value for name, value in config.stored_dict(home).items() if name not in NOT_RECIPE}
    values["data_version_dir"] = home_relative(str(data_dir), home)
    return values


def _record_divergence(out: Path, err: TrainingDiverged, config: TrainConfig, data_dir: Path,
                       home: Path | None) -> None:
    """Write ``out/diverged.json``: the step, the reason and the recipe of a run that diverged."""
    record = {"step": err.step, "reason": err.what, "recipe": _recipe(config, data_dir, home)}
    write_bytes_atomic(out / DIVERGED_FILE,
                       (json.dumps(record, indent=1, sort_keys=True, allow_nan=False) + "\n").encode())


def read_divergence(out: Path) -> dict[str, Any] | None:
    """The divergence record of the run folder ``out`` (``step``, ``reason``, ``recipe``), or None when the run has
    not diverged; a record this trainer did not write (unreadable, a link, malformed, nested too deeply) is refused."""
    path = Path(out) / DIVERGED_FILE
    if not os.path.lexists(path):
        return None
    data = read_small_file(path, 1 << 20)
    try:
        record = parse_run_json(data, path) if data is not None else None
    except ValueError:
        record = None
    if not (isinstance(record, dict) and type(record.get("step")) is int and isinstance(record.get("reason"), str)
            and isinstance(record.get("recipe"), dict)):
        raise ValueError(f"{path} is not a divergence record this trainer wrote (a regular file with step, reason "
                         "and recipe); remove it if the run is to be resumed")
    return record


def _after_divergence(out: Path, config: TrainConfig, data_dir: Path,
                      home: Path | None) -> tuple[str | None, dict[str, Any] | None]:
    """Rank 0, lock held, before anything is read from ``out``: (refusal, start-over). A run that diverged is
    refused when rerun with the same recipe (it would diverge again at the same step); when the recipe changed
    it is to start over: the start-over (``step``, ``changed``) is returned and nothing is removed yet. The
    new recipe is checked first (its ``init_from`` loads, its ``max_length`` fits the model, and it lies
    outside what the start-over removes); only then :func:`_start_over` removes the diverged run's outputs."""
    record = read_divergence(out)
    if record is None:
        return None, None
    recipe = _recipe(config, data_dir, home)
    changed = sorted(name for name in set(recipe) | set(record["recipe"])
                     if recipe.get(name) != record["recipe"].get(name))
    if not changed:
        return (f"cannot rerun {out} with the same recipe: training diverged at step {record['step']} "
                f"({record['reason']}); change learning_rate, weight_decay or contrastive_weight (or set grad_clip "
                "> 0) to train it over from step 0, or use a new output_dir"), None
    for rel in (*OWN_OUTPUTS, TRAINING_FILE, *DERIVED_OUTPUTS):
        _refuse_links(out, out / rel)   # before anything changes: the start-over never removes through a link
    return None, {"step": record["step"], "changed": changed}


def _unfinish(out: Path, step: int, config: TrainConfig, restart: bool) -> None:
    """Rank 0, before a training changes the model of ``out`` (best/, checkpoints/last, init/): record that the run
    is not finished (``training.json``, synced: then ``metrics.json`` of an earlier finish no longer counts), then
    remove what the evaluation, leaderboard and best-of-n stages published about the model it held
    (:data:`DERIVED_OUTPUTS`). A kill at any point leaves a run that counts as unfinished, or the run as it was."""
    for rel in (TRAINING_FILE, *DERIVED_OUTPUTS):
        _refuse_links(out, out / rel)
    record = {"from_step": step, "max_steps": config.max_steps, "started_over": restart}
    write_bytes_atomic(out / TRAINING_FILE, (json.dumps(record, indent=1, sort_keys=True) + "\n").encode())
    dataset.fsync_dir(out, unsupported_ok=True)
    for rel in DERIVED_OUTPUTS:
        remove_run_path(out / rel)
    for name in os.listdir(out):   # what a stage killed before it published left under a staging name
        if name.startswith(STAGING_PREFIX):
            remove_run_path(out / name)
    dataset.fsync_dir(out, unsupported_ok=True)


def _stale_tokenizer(out: Path, config: TrainConfig, home: Path | None) -> dict[str, Any] | None:
    """Rank 0, lock held, before anything is read from ``out``: the start-over (``made``, ``changed``) of a scratch
    run whose checkpoint holds a tokenizer other code made (its recorded :func:`training.model.tokenizer_version` is
    not :data:`training.model.TOKENIZER_VERSION`, or none: made before it was recorded), else None. Such a run is
    not the model this code trains on its captions (other merges, other token ids: review rev34c, a run finished
    under model code version 5 was kept by today's trainer, which only evaluated it again), so it is trained over
    from step 0 as a diverged run with a changed recipe is (:func:`_start_over`). A checkpoint whose recipe changed is
    left to the resume's refusal (:func:`_check_resumable`), and a run without a checkpoint builds its ``init/``
    again where that tokenizer is another code's (:func:`_train_locked`)."""
    last = out / "checkpoints" / "last"
    if config.init_from != "scratch" or not (last / STATE_FILE).is_file():
        return None
    try:
        _check_resumable(TrainConfig.load(last, resolve=False), config, home)
    except (ValueError, TypeError, OSError):
        return None   # the resume refuses it, on every rank, as before
    made = read_tokenizer_mark(last)   # an unreadable mark raises: unknown is never "older code" (rev34l)
    if made == TOKENIZER_VERSION:
        return None
    for rel in (*OWN_OUTPUTS, TRAINING_FILE, *DERIVED_OUTPUTS):
        _refuse_links(out, out / rel)   # before anything changes: the start-over never removes through a link
    return {"made": made, "changed": ["tokenizer"]}


def _start_over(out: Path, config: TrainConfig, restart: dict[str, Any], emit: EventSink) -> None:
    """Rank 0, once the changed recipe of a diverged run is known to be trainable (or a scratch run's tokenizer is
    known to be another code's: :func:`_stale_tokenizer`): mark the run unfinished (:func:`_unfinish`, which also
    removes what was published about its model), remove its best/, metrics.json, curve.png, init/ and then its
    checkpoints (the trainer's own; only these: :data:`OWN_OUTPUTS`, in that order), then the divergence record if
    any (last: a crash in between finds the checkpoint, or the record, that makes it start over again)."""
    _unfinish(out, 0, config, restart=True)
    for rel in OWN_OUTPUTS:
        if rel == CHECKPOINT_OUTPUTS[0]:   # what the checkpoint made gone for good before the checkpoint goes
            dataset.fsync_dir(out, unsupported_ok=True)
        remove_run_path(out / rel)
    if os.path.lexists(out / DIVERGED_FILE):
        (out / DIVERGED_FILE).unlink()
    dataset.fsync_dir(out, unsupported_ok=True)
    if "made" in restart:
        made = restart["made"] or "none recorded: older code"
        emit({"event": "restart", "changed": restart["changed"],
              "message": f"{out} was trained with a scratch tokenizer another code made ({made}; this code makes "
                         f"{TOKENIZER_VERSION}: other merges and token ids for the same captions): training it over "
                         "from step 0 with this code's tokenizer"})
        return
    emit({"event": "restart", "diverged_step": restart["step"], "changed": restart["changed"],
          "message": f"{out} diverged at step {restart['step']} with the previous recipe; {restart['changed']} "
                     "changed: training it over from step 0"})


def _remove_leftovers(out: Path, fresh: bool) -> None:
    """Rank 0, once the run folder may change: remove what a kill inside :func:`_save_dir_atomic` left beside a
    folder in place (its ``.tmp`` sibling half written, its ``.old`` sibling, the folder it replaced), the trainer's
    own names only (review rev34l: a kill after ``best/``'s swap at the step that stayed best left ``.best.old``, a
    whole earlier model, for good; ``_recover_dir`` has already brought back a folder whose swap was cut between
    its renames). ``fresh``: a training from step 0 (no checkpoint) holds no model yet, so a ``best/`` there was
    left by an interrupted start-over or an older trainer killed between ``best/`` and ``checkpoints/last/``: it is
    removed too (step 0 saves one), never kept by a resume as the step-0 model."""
    for folder in (out / "checkpoints" / "last", out / "best", out / "init"):
        if os.path.lexists(folder):
            for sibling in (f".{folder.name}.tmp", f".{folder.name}.old"):
                remove_run_path(folder.with_name(sibling))
    if fresh:
        for rel in ("best", ".best.tmp", ".best.old"):
            remove_run_path(out / rel)


def _finished_here(out: Path, step: int) -> bool:
    """Whether ``out``, whose checkpoint is at ``step``, records a finished training: ``metrics.json`` of ``step``
    steps (or of steps it does not say) and no ``training.json`` (a divergence record is handled before:
    :func:`_after_divergence`). A checkpoint past metrics.json's steps is a training that extended the run and
    stopped before it finished (also one of a trainer that wrote no ``training.json``)."""
    if not (out / "metrics.json").is_file() or os.path.lexists(out / TRAINING_FILE):
        return False
    steps = metrics_steps(out)
    return steps is None or step <= steps


def _refuse_init_inside(out: Path, config: TrainConfig, restart: bool) -> None:
    """Refuse an ``init_from`` that lies inside what this training replaces or (starting a diverged run over)
    removes in its own run folder: its ``best/``, ``checkpoints/`` or ``init/`` (the model would be deleted before
    it is read, or replaced while the run's evaluation still builds its untrained model from there). Refused,
    not copied aside: nothing is removed and no copy of a large model is made."""
    if config.init_from == "scratch":
        return
    source = os.path.realpath(config.init_from)
    for rel in ("best", ".best.tmp", ".best.old", "checkpoints", "init", ".init.tmp", ".init.old"):
        own = os.path.realpath(out / rel)
        if source == own or source.startswith(own + os.sep):
            raise ValueError(f"init_from {shown_path(config.init_from)} lies inside {out / rel}, which this training "
                             f"{'removes (it trains the diverged run over from step 0)' if restart else 'replaces'}: "
                             "train into a new output_dir with this init_from, or copy that model out of the run "
                             "folder first and give the copy as init_from")


def _check_max_length(config: TrainConfig, clip: Any, processor: Any, source: Any) -> None:
    """Refuse a ``max_length`` the model (loaded from ``source``) cannot take."""
    limit = clip.config.text_config.max_position_embeddings
    if config.max_length > limit:   # the text tower has no position past its last; evaluation would crash inside it
        raise ValueError(f"max_length={config.max_length} is more than the {limit} caption tokens the model "
                         f"{source} takes (its text_config.max_position_embeddings); set max_length to at most {limit}")
    specials = processor.tokenizer.num_special_tokens_to_add()
    if config.max_length < specials:   # the tokenizer would not truncate: the text tower gets too long a sequence
        raise ValueError(f"max_length={config.max_length} leaves no room for the {specials} special tokens the "
                         f"tokenizer of {source} adds to every caption; set max_length to at least {specials}")


def _non_finite_paths(value: Any, path: str = "") -> list[str]:
    """The key paths of the NaN or infinite numbers in JSON-like ``value``."""
    if isinstance(value, float):
        return [] if math.isfinite(value) else [path or "."]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _non_finite_paths(v, f"{path}.{k}")]
    if isinstance(value, (list, tuple)):
        return [p for i, v in enumerate(value) for p in _non_finite_paths(v, f"{path}[{i}]")]
    return []


# --------------------------------------------------------------------------- outputs
def ties_only_message(split: str, pairs: int) -> str:
    """The warning of a run whose selection split holds only ties (noted by review rev33f)."""
    return (f"eval_split {split!r} holds only ties ({pairs} pairs): every model scores 1.0 on it at the threshold "
            "1.0, so it cannot choose best/ (the first checkpoint evaluated stays best/); choose an eval_split with "
            "preferences")


def _validation_entry(step: int, scores: SplitScores) -> dict[str, Any]:
    choice = choose_threshold(scores.scores, scores.labels)
    kl = pair_kl(torch.from_numpy(scores.scores), torch.from_numpy(scores.labels)).numpy()
    return {"step": step, "val_accuracy": choice.accuracy, "val_threshold": choice.threshold,
            "val_loss": float((scores.weights * kl).sum() / scores.weights.sum())}


def write_curve(history: list[dict[str, Any]], path: Path, title: str = "") -> Path:
    """Training curve PNG: train loss and validation accuracy against step (matplotlib Agg)."""
    plt = pyplot()
    train = [h for h in history if "loss" in h]
    val = [h for h in history if "val_accuracy" in h]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax_loss.plot([h["step"] for h in train], [h["loss"] for h in train], label="train (weighted KL)")
    ax_loss.plot([h["step"] for h in val], [h["val_loss"] for h in val], "o-", label="validation_unique")
    ax_loss.set(xlabel="step", ylabel="loss", title="loss")
    ax_loss.legend()
    ax_acc.plot([h["step"] for h in val], [h["val_accuracy"] for h in val], "o-", color="C2")
    ax_acc.set(xlabel="step", ylabel="tie-aware accuracy", title="validation_unique accuracy")
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)


# --------------------------------------------------------------------------- training
def train(config: TrainConfig, on_event: EventSink | None = None) -> TrainResult:
    """Train (or resume) a preference model per ``config``; rank 0 writes every output."""
    if not config.output_dir or not config.data_dir:
        raise ValueError(f"TrainConfig needs data_dir and output_dir (got {config.data_dir!r}, {config.output_dir!r})")
    config.check_new_run()   # the rules for new runs, also for a config read from a run's files
    started = time.perf_counter()
    rank, world, local_rank, created_group = _init_distributed(config.device)
    try:
        with cpu_threads(resolve_device(config.device), config.cpu_threads, config.num_workers, world):
            return _train(config, on_event, rank, world, local_rank, started)
    except BaseException as exc:
        # the failures kept and raised again on every rank are in reference cycles with the frames they passed: what
        # those frames hold (the model, the optimizer, a loader) goes now, not when the cyclic collector runs
        clear_traceback_locals(exc)   # (review rev37e); the traceback's text stays
        raise
    finally:
        if created_group:
            dist.destroy_process_group()


def _train(config: TrainConfig, on_event: EventSink | None, rank: int, world: int, local_rank: int,
           started: float) -> TrainResult:
    device = resolve_device(config.device)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if config.batch_size % world:
        raise ValueError(f"batch_size={config.batch_size} is not divisible by the world size {world}")
    out = Path(config.output_dir)
    # the version is read under a shared lock on its folder for the whole training: the publish's retention keeps
    # it meanwhile (review rev26b: a training outlasting keep_versions nightly publishes lost its version)
    with contextlib.ExitStack() as reading:
        data_dir = read_one_version(config.data_dir, rank, world, reading)
        return _train_reading(config, on_event, rank, world, local_rank, started, device, out, data_dir)


def read_one_version(data_dir: str | os.PathLike, rank: int, world: int, reading: contextlib.ExitStack) -> Path:
    """The version folder every rank reads, held for reading until ``reading`` closes
    (:func:`formats.dataset.reading_data_dir`). Rank 0 resolves ``data_dir`` (``latest`` to its version) and the
    other ranks read the version it resolved: each rank resolved ``latest`` by itself before, so a nightly switching
    it between the ranks' starts trained them on two versions (noted by review rev26e). Where rank 0 cannot read
    it, every rank fails with its reason (none waits for a rank that gave up); so does every rank where another
    rank cannot read the version rank 0 resolved (a node-local copy missing: :func:`_share_any_failure`, review
    rev36b)."""
    if world <= 1:
        return reading.enter_context(dataset.reading_data_dir(data_dir))
    shared: list[Any] = [None]
    failure: BaseException | None = None
    if rank == 0:
        try:
            shared[0] = ("version", str(reading.enter_context(dataset.reading_data_dir(data_dir))))
        except Exception as exc:   # noqa: BLE001 - told to every rank, then raised here
            failure, shared[0] = exc, ("error", f"{type(exc).__name__}: {exc}")
    dist.broadcast_object_list(shared, src=0)
    if failure is not None:
        raise failure
    kind, value = shared[0]
    if kind == "error":
        raise ValueError(f"rank 0 could not read the dataset, so neither can rank {rank}: {value}")
    if rank != 0:
        try:
            reading.enter_context(dataset.reading_data_dir(value))
        except Exception as exc:   # noqa: BLE001 - told to every rank, then raised here
            failure = exc
    _share_any_failure(failure, rank, world)
    return Path(value)


def _train_reading(config: TrainConfig, on_event: EventSink | None, rank: int, world: int, local_rank: int,
                   started: float, device: torch.device, out: Path, data_dir: Path) -> TrainResult:
    # every rank checks the splits itself (its own reads: on a node-local copy of the home they may fail on that rank
    # alone), and rank 0 makes and locks the run folder (RunLocked): a failure of any rank stops every rank with it
    failed: list[BaseException] = []
    home: Path | None = None
    with _kept(failed):
        home = dataset.home_of(data_dir)  # the run's files store paths inside it relative to it
        for split in dict.fromkeys(("train", config.eval_split, config.test_split)):
            check_split(data_dir, split)  # an empty or truncated split fails now, not after all the training
    emit = on_event if (on_event is not None and rank == 0) else (lambda _: None)
    with contextlib.ExitStack() as held:  # rank 0 writes every output: it alone holds the run folder's lock
        if rank == 0 and not failed:
            with _kept(failed):
                out.mkdir(parents=True, exist_ok=True)
                held.enter_context(run_lock(out))
        _share_any_failure(failed[0] if failed else None, rank, world)
        try:
            return _train_locked(config, emit, rank, world, local_rank, started, device, out, data_dir, home)
        except TrainingDiverged as err:
            if rank == 0:   # lock held: a rerun reads it (refused unchanged, started over when the recipe changed)
                try:
                    _record_divergence(out, err, config, data_dir, home)
                except OSError as exc:
                    raise TrainingDiverged(f"{err} (its record {out / DIVERGED_FILE} was not written: "
                                           f"{exc.strerror or exc})", err.step, err.what) from None
            raise


def _scratch_init(config: TrainConfig, init_dir: Path, data_dir: Path, home: Path | None,
                  restart: dict[str, Any] | None) -> tuple[Any, Any, TrainConfig | None]:
    """Rank 0, a scratch run without a checkpoint: (clip, processor, the config to save ``init/`` with, or None where
    ``init/`` is kept). init/ stores the resolved version its tokenizer was trained on as its data_dir. Nothing has
    trained from it yet (no checkpoint): one built from another version ('latest' moved since a run was killed
    before its first checkpoint; or an init/ written before the version was stored) is built again, and so are one
    whose tokenizer another code made (review rev34c) and the init/ of a run started over (it is removed with the
    rest). A stale init/ of another recipe is refused."""
    built_on = None
    if restart is None and (init_dir / "config.json").is_file():
        built = TrainConfig.load(init_dir, resolve=False)
        _check_resumable(built, config, home)  # a stale init/ from another recipe
        built_on = built.data_dir
    if built_on not in (str(data_dir), home_relative(str(data_dir), home)) \
            or tokenizer_version(init_dir) != TOKENIZER_VERSION:
        clip, processor = build_model(config, iter_captions(data_dir, "train", config.tokenizer_max_captions))
        return clip, processor, config.replace(data_dir=str(data_dir))   # saved once the run folder may change
    clip, processor = load_model(init_dir)
    return clip, processor, None


def _train_locked(config: TrainConfig, emit: EventSink, rank: int, world: int, local_rank: int, started: float,
                  device: torch.device, out: Path, data_dir: Path, home: Path | None) -> TrainResult:
    last_dir, best_dir, init_dir = out / "checkpoints" / "last", out / "best", out / "init"
    # ---- model: resume > scratch (built once on rank 0, shared through init/) > local checkpoint. Everything is
    # checked before anything in the run folder changes: a refused run leaves it as it was. What a rank does alone
    # (rank 0: the run folder, the scratch model; every rank: its own reads of the checkpoint, the shards, init/)
    # keeps its failure and shares it (_share_failure, _share_any_failure): every rank ends with it, none waits for a
    # rank that gave up (review rev36b: the reads of ranks above 0 were not shared)
    restart, failure, resuming = None, None, False
    if rank == 0:
        try:
            for folder in (last_dir, best_dir, init_dir):
                _recover_dir(out, folder)  # also refuses a run folder whose checkpoints/, best/ or init/ is a link
            refusal, restart = _after_divergence(out, config, data_dir, home)
            if refusal is not None:
                raise ValueError(refusal)
            if restart is None:   # its mark unreadable: refused, the run left as it is, on every rank
                restart = _stale_tokenizer(out, config, home)
            resuming = restart is None and (last_dir / STATE_FILE).is_file()   # rank 0 decides for every rank
        except Exception as exc:   # noqa: BLE001 - told to every rank, then raised here
            failure = exc
    _share_failure(failure, rank, world)
    restart, resuming = _from_rank0((restart, resuming), world)
    state, clip, processor, new_init = None, None, None, None
    source = shown_path(config.init_from)   # a credential in it never shown
    try:   # every rank's own reads and checks: a failure on any rank is shared below
        if resuming:
            source = last_dir
            saved = TrainConfig.load(last_dir, resolve=False)
            _check_resumable(saved, config, home)
            clip, processor = load_model(last_dir)
            state = load_trainer_state(last_dir / STATE_FILE)
            trained_on = state.get("data_version_dir")  # home:-relative; absolute in states written before
            if trained_on and trained_on not in (str(data_dir), home_relative(str(data_dir), home)):
                trained_on = from_home(trained_on, home)
                raise ValueError(f"cannot resume {out}: it was trained on the dataset version {trained_on}, but "
                                 f"data_dir {config.data_dir} now resolves to {data_dir} (did 'latest' move?); rerun "
                                 f"with --data-dir {trained_on} to finish on the same data, or use a new output_dir")
            _check_continuation(saved, config, state["step"], out, world, state.get("world_size"))
            _verify_open_shards(state, data_dir, last_dir / STATE_FILE, rank, world)
        elif config.init_from == "scratch":
            if rank == 0:   # rank 0 alone builds it; every rank loads it from init/ below
                clip, processor, new_init = _scratch_init(config, init_dir, data_dir, home, restart)
                _check_max_length(config, clip, processor, source)
        else:
            _refuse_init_inside(out, config, restart is not None)
            clip, processor = load_model(config.init_from)
        if clip is not None and not (state is None and config.init_from == "scratch"):
            _check_max_length(config, clip, processor, source)   # every rank (a scratch model's: above, rank 0)
    except Exception as exc:   # noqa: BLE001 - told to every rank, then raised here
        failure = exc
    _share_any_failure(failure, rank, world)
    # ---- every check passed: now the run folder changes (rank 0). A training that changes the model first marks
    # the run unfinished and removes what was published about the model it held; a finished run rerun at its
    # max_steps only evaluates again (its model, and what was published about it, stay)

    def change_run_folder() -> None:
        if restart is not None:
            _start_over(out, config, restart, emit)
        elif state is None or state["step"] < config.max_steps or not _finished_here(out, state["step"]):
            _unfinish(out, 0 if state is None else state["step"], config, restart=False)
        _remove_leftovers(out, state is None)
        if new_init is not None:
            _save_dir_atomic(init_dir, lambda d: _save_model(d, clip, processor, new_init, home), out)
        if state is not None and _best_behind(best_dir, state):   # killed between checkpoints/last/ and best/:
            _save_dir_atomic(best_dir, lambda d: _save_best(d, clip, processor, config, home, state["best"]), out)

    if rank == 0:
        try:
            change_run_folder()
        except Exception as exc:   # noqa: BLE001 - told to every rank, then raised here
            failure = exc
    _share_failure(failure, rank, world)   # the barrier: init/ is written before another rank reads it
    if state is None and config.init_from == "scratch":
        try:
            clip, processor = load_model(init_dir)   # every rank: the initial model exactly as saved
            if rank != 0:
                _check_max_length(config, clip, processor, source)
        except Exception as exc:   # noqa: BLE001 - told to every rank, then raised here
            failure = exc
        _share_any_failure(failure, rank, world)

    scorer = PairScorer(clip).to(device)
    model = (torch.nn.parallel.DistributedDataParallel(scorer, device_ids=[local_rank] if device.type == "cuda"
                                                       else None) if world > 1 else scorer)
    optimizer = _optimizer(scorer, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(config.warmup_steps, config.max_steps))
    step, history, best = 0, [], {"step": -1, "val_accuracy": -1.0}
    torch.manual_seed(config.seed + rank)
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, history, best = state["step"], state["history"], state["best"]
        torch.set_rng_state(state["torch_rng"][rank] if rank < len(state["torch_rng"]) else state["torch_rng"][0])
    # the loss summed since the last log line: checkpointed with the state, so a resumed run logs the same
    # losses as an uninterrupted one when eval_every is not a multiple of log_every
    running, running_n = (state.get("running_loss", [0.0, 0]) if state is not None else [0.0, 0])
    resumed_from = step
    spec = ImageSpec.from_processor(processor.image_processor)
    collate = PairCollator(processor.tokenizer, config.max_length)

    def validate() -> tuple[dict[str, Any] | None, str | None]:
        """Rank 0: the history entry of the evaluation on eval_split, and why it shows a diverged model (None)."""
        if rank != 0:
            return None, None
        scores = score_split(scorer, processor, data_dir, config.eval_split, batch_size=config.eval_batch_size,
                             num_workers=config.num_workers, device=device,
                             bf16=config.bf16, max_length=config.max_length)
        entry = _validation_entry(step, scores)
        if not noted_ties and only_ties(scores.labels):   # once a run: every evaluation of it is the same
            noted_ties.append(step)
            emit({"event": "warning", "step": step, "message": ties_only_message(config.eval_split, len(scores.labels))})
        problem = _non_finite(scores, config.eval_split)
        if problem is None and not math.isfinite(entry["val_loss"]):
            problem = f"the loss on {config.eval_split} is {entry['val_loss']} (not finite)"
        return entry, problem

    noted_ties: list[int] = []   # the step whose evaluation found eval_split of ties only (warned once)
    inside: dict[int, tuple[str, ...]] = {}   # loader worker -> the shards it was inside at its last batch taken
    train_digests: dict[str, str] = {}

    def verify_trained() -> list[str]:
        """Hash whole the train shards every rank's workers are inside (named by the last batch taken from each:
        started, not read to their end, so not verified), split over the ranks, and fail every rank with the
        checksum error if one is damaged. Every other shard the steps so far drew samples from passed its
        check, or its error would have come before the batch; so after this no step trained so far came from
        unverified bytes, and an evaluation or checkpoint may report or keep them. Returns the shards
        (``train/<name>``, the checkpoint's ``open_shards``). Any failure of a rank's part (a damaged shard, an
        unreadable one, a missing manifest) stops every rank with it (review rev36b: only checksum errors were
        shared)."""
        opened = sorted({f"{Path(url).parent.name}/{Path(url).name}" for urls in inside.values() for url in urls})
        if world > 1:
            gathered: list[Any] = [None] * world
            dist.all_gather_object(gathered, opened)
            opened = sorted({rel for part in gathered for rel in part})
        if not opened:
            return opened
        failure = None
        try:
            if not train_digests:
                train_digests.update(shard_digests(split_shards(data_dir, "train")))
            verify_shards([str(data_dir / rel) for rel in opened[rank::world]], train_digests)
        except Exception as exc:   # noqa: BLE001 - told to every rank, then raised here
            failure = exc
        _share_any_failure(failure, rank, world)   # none saves or goes on after a failure another rank met
        return opened

    def checkpoint(improved: bool, opened: list[str], failed: list[BaseException]) -> None:
        # opened: every rank's shards verify_trained just hashed; a resume hashes them again
        # (_verify_open_shards: the state may come from a trainer that did not, or the file changed since)
        rngs = [torch.get_rng_state()]     # every rank's (rank order): each resumes from its own
        if world > 1:
            gathered_rngs: list[Any] = [None] * world
            dist.all_gather_object(gathered_rngs, rngs[0])
            rngs = gathered_rngs
        # failed: rank 0's failure before (its event sink) or while saving: every rank stops with it at the barrier
        if rank == 0 and not failed:
            with _kept(failed):
                trainer_state = _plain({"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                                 "history": history, "best": best, "torch_rng": rngs, "world_size": world,
                                 "running_loss": [float(running), int(running_n)], "open_shards": opened,
                                 # the resolved version (home-relative): a resume must not switch
                                 "data_version_dir": home_relative(str(data_dir), home)})

                def write(d: Path) -> None:
                    _save_model(d, clip, processor, config, home)
                    torch.save(trainer_state, d / STATE_FILE)
                _save_dir_atomic(last_dir, write, out)
                if improved:   # after the state naming it: a kill between the two is repaired by the resume (_best_behind)
                    _save_dir_atomic(best_dir, lambda d: _save_best(d, clip, processor, config, home, best), out)
        _share_failure(failed[0] if failed else None, rank, world)

    def record_eval() -> None:
        nonlocal best
        # before anything reports or keeps the steps trained so far: a damaged shard fails the run here, and
        # checkpoints/last/ and best/ keep the previous checkpoint's steps, all of them verified
        opened = verify_trained()
        _check_finite_weights(scorer, step)   # every rank holds the same weights: all stop, none checkpoints
        failed: list[BaseException] = []   # rank 0's evaluation failed (an unreadable split): every rank stops
        entry, problem = None, None
        with _kept(failed):
            entry, problem = validate()
        _share_failure(failed[0] if failed else None, rank, world)
        # finite weights may still be too large to score with (a divergence in the last steps, before any
        # further loss could turn NaN): every rank stops before this step is reported or checkpointed
        problem = _from_rank0(problem, world)
        if problem is not None:
            raise _diverged(step, problem)
        improved = False
        if rank == 0:
            history.append(entry)
            improved = entry["val_accuracy"] > best["val_accuracy"]
            if improved:
                best = {"step": step, "val_accuracy": entry["val_accuracy"]}
            with _kept(failed):   # the caller's event sink failing: shared by checkpoint(), which then saves nothing
                emit({"event": "eval", **entry})
        checkpoint(improved, opened, failed)

    if step == 0 and state is None:
        record_eval()  # step 0 = the untrained model on validation_unique

    per_rank = config.batch_size // world
    loop_started, loop_steps = time.perf_counter(), 0
    batches: LoaderBatches | None = None

    def next_batch() -> dict[str, Any]:
        """This rank's next train batch (its loader made on the first call): its own reads, checked as they go."""
        nonlocal batches
        if batches is None:
            stream = TrainPairStream(split_shards(data_dir, "train"), per_rank, collate, spec, seed=config.seed,
                                     shuffle_buffer=config.shuffle_buffer, shuffle_initial=config.shuffle_initial,
                                     resampled=config.resampled, draft=config.draft_decode,
                                     num_workers=config.num_workers, skip_batches=step)
            batches = LoaderBatches(make_loader(stream, config.num_workers))
        batch = next(batches, None)
        if batch is None:   # the stream is endless: never reported as a run of fewer steps
            raise RuntimeError(f"the train stream of rank {rank} ended at step {step} of {config.max_steps}")
        return batch

    if step < config.max_steps:
        scorer.train()
        try:
            while True:
                fetched: BaseException | None = None
                try:   # this rank's own reads (a shard damaged or unreadable on its copy): shared below
                    batch = next_batch()
                    inside[batch["worker"]] = batch["inside_shards"]
                    labels, weights = batch["labels"].to(device), batch["weights"].to(device)
                    pixels = batch["pixel_values"].to(device, non_blocking=True)
                    if config.augment != "none":
                        pixels = augment_images(pixels, config.augment, torch.Generator().manual_seed(
                            stable_seed("augment", config.seed, rank, step)))
                except Exception as exc:   # noqa: BLE001 - told to every rank, then raised here
                    fetched, weights = exc, torch.full((1,), math.nan, device=device)
                # the step's first collective, the global weight sum, carries whether every rank has its batch: a rank
                # without one adds NaN (weights are finite and positive), and then every rank stops with its failure
                # (review rev36b: the others waited in the step's collectives), at no extra collective per step (on CUDA,
                # reading it waits for the previous step's kernels before this step's forward is queued)
                weight_sum = global_weight_sum(weights)
                if fetched is not None or (world > 1 and not math.isfinite(weight_sum.item())):   # ~2 us
                    _share_any_failure(fetched, rank, world)
                contrastive = config.contrastive_weight > 0
                with autocast(device, config.bf16):
                    scores = model(batch["input_ids"].to(device), batch["attention_mask"].to(device), pixels,
                                   all_images=contrastive)
                if contrastive:
                    all_scores, scores = scores.float(), own_pair_scores(scores.float())
                pref_loss = preference_loss(scores.float(), labels, weights, weight_sum, world)
                loss = pref_loss
                if contrastive:
                    loss = loss + config.contrastive_weight * contrastive_loss(all_scores, labels, weights, weight_sum, world)
                # global weighted PickScore loss of this step (curve), and the whole loss: a non-finite one on any
                # rank stops every rank before it reaches the weights
                step_loss, total_loss = _all_mean(torch.stack([pref_loss.detach(), loss.detach()]), world)
                if not math.isfinite(total_loss):
                    raise _diverged(step + 1, f"the loss is {total_loss} (not finite)")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if config.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(scorer.parameters(), config.grad_clip)
                lr = optimizer.param_groups[0]["lr"]
                optimizer.step()
                scheduler.step()
                step += 1
                loop_steps += 1
                running += step_loss
                running_n += 1
                if step % config.log_every == 0 or step == config.max_steps:
                    entry = {"step": step, "loss": running / running_n, "lr": lr}
                    logged: list[BaseException] = []   # rank 0's event sink failing: every rank stops with it
                    if rank == 0:
                        history.append(entry)
                        with _kept(logged):
                            emit({"event": "train", **entry})
                    _share_failure(logged[0] if logged else None, rank, world)
                    running, running_n = 0.0, 0
                if step % config.eval_every == 0 or step == config.max_steps:
                    record_eval()   # verifies first: a run that stops here is not resumed as finished
                if step >= config.max_steps:
                    break
        finally:   # its loader workers end here, before the final evaluation (as the for loop's did), and so when a
            if batches is not None:   # failure leaves the loop: a forked worker holds the run lock's descriptor until
                batches.close()       # it ends. Ended explicitly, not left to the garbage collector (review rev37e)
            batches = None
    loop_s = time.perf_counter() - loop_started

    # ---- final: best checkpoint, threshold on validation_unique, test_unique at it
    result, final_problem, failed = None, None, []
    if rank == 0:
        with _kept(failed):   # rank 0's failure (an unreadable best/ or split) shared below: every rank stops with it
            best_clip, best_processor = load_model(best_dir)
            best_scorer = PairScorer(best_clip).to(device)
            kwargs = dict(batch_size=config.eval_batch_size, num_workers=config.num_workers, device=device,
                          bf16=config.bf16, max_length=config.max_length)
            selection = score_split(best_scorer, best_processor, data_dir, config.eval_split, **kwargs)
            tested = score_split(best_scorer, best_processor, data_dir, config.test_split, **kwargs)
            why = _non_finite(selection, config.eval_split) or _non_finite(tested, config.test_split)
            if why is None:
                test = evaluate_scores(selection, tested, config.eval_split, config.test_split)
                test.model_dir = home_relative(str(best_dir), home)
                train_losses = [h["loss"] for h in history if "loss" in h]
                metrics = {"config": config.stored_dict(home), "data_version_dir": home_relative(str(data_dir), home),
                           "n_parameters": count_parameters(clip), "world_size": world,
                           "steps": step, "best_step": best["step"], "best_val_accuracy": best["val_accuracy"],
                           "final_train_loss": train_losses[-1] if train_losses else None,
                           "test": test.to_dict(), "history": history}
                try:   # strict JSON: a NaN or infinity written bare is no JSON (every number above is checked finite)
                    text = json.dumps(metrics, indent=1, sort_keys=True, allow_nan=False)
                except ValueError:
                    why = f"metrics.json would hold NaN or infinite values ({_non_finite_paths(metrics)[:3]})"
            if why is not None:
                final_problem = (best["step"], f"the best checkpoint's (step {best['step']}) final evaluation: {why}")
    _share_failure(failed[0] if failed else None, rank, world)
    final_problem = _from_rank0(final_problem, world)
    if final_problem is not None:   # never reported as a trained model, on any rank
        raise _diverged(*final_problem)
    if rank == 0:
        with _kept(failed):
            metrics_path = out / "metrics.json"
            if read_small_file(metrics_path, 256 << 20) != (text + "\n").encode():   # a rerun that only evaluates
                write_bytes_atomic(metrics_path, (text + "\n").encode())             # again leaves it as it was
            curve_path = write_curve(history, out / "curve.png",
                                     f"{config.preset} preset, init {Path(config.init_from).name}: "
                                     f"test_unique {test.test_accuracy:.3f} (random {test.random_baseline:.3f})")
            if os.path.lexists(out / TRAINING_FILE):   # last: from now on metrics.json describes best/, and the run counts
                dataset.fsync_dir(out, unsupported_ok=True)                            # as finished (metrics.json on disk before the record goes)
                remove_run_path(out / TRAINING_FILE)
                dataset.fsync_dir(out, unsupported_ok=True)
            pairs = loop_steps * config.batch_size
            result = TrainResult(out, best_dir, metrics_path, curve_path, step, best["step"], best["val_accuracy"],
                                 metrics["final_train_loss"] or float("nan"), test, count_parameters(clip), resumed_from,
                                 time.perf_counter() - started, world, pairs / loop_s if loop_s > 0 else 0.0, history)
            emit({"event": "done", **result.metadata()})
    _share_failure(failed[0] if failed else None, rank, world)
    _barrier(world)   # every rank done before any leaves the group
    if result is None:  # non-zero ranks: a light result naming the shared outputs
        result = TrainResult(out, best_dir, out / "metrics.json", out / "curve.png", step, best["step"],
                             best["val_accuracy"], float("nan"), EvalResult("", "", 0, 0, 0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0),
                             count_parameters(clip), resumed_from, time.perf_counter() - started, world)
    return result
