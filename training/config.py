"""One frozen config object holding every trainer knob, with the paper's recipe and a CPU demo as presets.

The config is saved as ``train_config.json`` inside every checkpoint, so a model directory always says
how it was made. ``paper`` is the PickScore recipe (Kirstain et al. 2023, arXiv 2305.01569), meant to be used
with ``init_from`` pointing at a local CLIP-H or PickScore checkpoint on a GPU; ``demo`` trains the tiny
``scratch`` CLIP on CPU in about a minute.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import os
import shutil
import stat
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from formats.dataset import SPLITS
from formats.files import read_small_file
from formats.settings import MAX_PROCESSES, MAX_THREADS, check_fields, knob, quoted
from formats.text import first_line

AUGMENTS = ("none", "hflip", "dihedral")
CONFIG_FILE = "train_config.json"
TRAIN_LOCK_FILE = ".train.lock"   # in a run folder, held (flock) by the trainer writing it
DIVERGED_FILE = "diverged.json"   # in a run folder: the trainer's record of a run stopped by TrainingDiverged
# in a run folder while a training that changes its model (best/, checkpoints/last) has not finished: written (and
# synced) before the first change, removed after metrics.json is written. A run holding it is no finished model,
# whatever metrics.json (of an earlier finish) says
TRAINING_FILE = "training.json"
# what the evaluation, leaderboard and best-of-n stages write into a run folder about its model (``eval.json``,
# ``leaderboard.png``, ``true_quality.json``, ``best_of_n/``): removed when a training that changes the model starts
DERIVED_OUTPUTS = ("eval.json", "leaderboard.png", "true_quality.json", "best_of_n")
METRICS_FILE = "metrics.json"   # written by a run that finished (training.train), never by one that diverged
# what a stage writes into a run folder before it is published (training.runs.publishing):
# ``.publishing-<name>.<token>``, removed by the next training that changes the model
STAGING_PREFIX = ".publishing-"

# Fields that may change between an interrupted run and its resumption (they do not change the math
# already done, or only extend it). num_workers is not one: the train stream's shard order, shuffle seeds and
# per-worker skip depend on it (the trainer lets a run that trains no further steps change it).
RESUMABLE_FIELDS = frozenset({"cpu_threads", "max_steps", "output_dir", "data_dir", "log_every", "eval_batch_size",
                              "device"})
FLOAT32_MAX = 3.4028234663852886e38   # torch's optimizer and model hold float settings as float32
FLOAT32_TINY = 1.1754943508222875e-38   # float32's smallest normal number: below it a value is denormal or 0
HELD_OUT = "_unique"   # validation_unique / test_unique repeat rows of validation / test
PATH_FIELDS = ("data_dir", "output_dir", "init_from")   # stored relative to the data home when inside it
HOME_PREFIX = "home:"   # marks a stored path as relative to the data home ("home:datasets/pickapic/<version>")
# set while a config is read from a run's train_config.json: the rules for new runs (TrainConfig.recipe_problems)
# are not applied to a stored recipe, so a model trained before a rule was added still loads and evaluates
_STORED: ContextVar[bool] = ContextVar("stored_train_config", default=False)


@contextlib.contextmanager
def _reading_stored() -> Any:
    token = _STORED.set(True)
    try:
        yield
    finally:
        _STORED.reset(token)


def _absolute(path: str) -> str:
    """``path`` (absolute, or relative to the working directory) as an absolute path naming the same place.
    Lexically normalised (a ``latest`` link stays a link) unless it holds ``..``, which only the file system
    can follow correctly (``link/..`` is the link target's parent): then resolved."""
    path = os.path.expanduser(path)
    return os.path.realpath(path) if ".." in Path(path).parts else os.path.abspath(path)


def home_relative(path: str, home: Path | None) -> str:
    """``path`` (as given: absolute, or relative to the working directory) as it is stored in a run's files:
    ``home:<relative path>`` when it lies inside the data ``home`` (``home:datasets/pickapic/<version>``,
    ``home:models/preference_model/<version>``), else absolute. ``scratch`` and ``""`` stay as they are.

    Runs are shared with other accounts and tools, and homes move: an absolute path of the home would leak
    the account's layout and name a place that may not exist for the reader. A path outside the home is
    stored absolute, never as given: a working-directory-relative path means nothing to a later reader, and
    only marked paths are joined to the home again (:func:`from_home`)."""
    if not path or path == "scratch":
        return path
    absolute = _absolute(path)
    if home is not None:
        for candidate, root in ((absolute, os.path.abspath(home)), (os.path.realpath(absolute), os.path.realpath(home))):
            try:
                rel = Path(candidate).relative_to(root)
            except ValueError:
                continue
            return HOME_PREFIX + (rel.as_posix() if rel.parts else ".")
    return absolute


def remove_run_path(path: Path, ignore_errors: bool = False) -> None:
    """Delete a file or folder of a run folder, never following a link (a link is unlinked, not its target);
    nothing there is nothing to do. ``ignore_errors``: a folder's entries that cannot be removed are left."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(info.st_mode):
        shutil.rmtree(path, ignore_errors=ignore_errors)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def parse_run_json(data: str | bytes, path: str | os.PathLike) -> Any:
    """``json.loads`` of a small file a run folder holds (``path``: named in the error): malformed JSON, text that
    is not UTF-8 and a file nested too deeply for the parser (``RecursionError``) are a ``ValueError`` naming it."""
    try:
        return json.loads(data)
    except RecursionError:
        raise ValueError(f"{path} is not valid JSON: it nests arrays or objects too deeply to be read") from None
    except ValueError as exc:   # json.JSONDecodeError, UnicodeDecodeError of bytes
        raise ValueError(f"{path} is not valid JSON ({first_line(exc)})") from None


def from_home(stored: str, home: Path | None) -> str:
    """A path as a run's file stores it, made usable: ``home:<rel>`` joined to ``home`` (left as stored when
    no home is known); anything else (absolute, ``scratch``, or a path as given in files written before
    paths were marked) as it is. A marked path that is absolute or climbs out of the home with ``..`` is
    refused: no file the trainer writes holds one."""
    if not stored.startswith(HOME_PREFIX):
        return stored
    rel = stored[len(HOME_PREFIX):]
    if not rel or Path(rel).is_absolute() or ".." in Path(rel).parts:
        raise ValueError(f"stored path {stored!r} is not a path inside the data home (absolute, empty or with '..')")
    if home is None:
        return stored
    return str(Path(home) / rel) if rel != "." else str(Path(home))


def locate_home(directory: Path, output_dir: str) -> Path | None:
    """The data home of a run folder's file in ``directory`` (``init/``, ``best/``, ``checkpoints/last/`` or the
    run folder itself), found from the stored ``home:``-relative ``output_dir``: the ancestor of ``directory``
    whose path ends with it is the run folder, and the home holds it. None when ``output_dir`` is not
    marked relative to the home (a run outside any home, or a file written before paths were stored
    relative) or no ancestor matches."""
    if not output_dir.startswith(HOME_PREFIX):
        return None
    output_dir = output_dir[len(HOME_PREFIX):]
    rel = Path(output_dir)
    if not output_dir or rel.is_absolute() or output_dir == "." or ".." in rel.parts:
        return None
    directory = Path(os.path.abspath(directory))
    for run in (directory, *list(directory.parents)[:2]):
        if len(run.parts) > len(rel.parts) and run.parts[-len(rel.parts):] == rel.parts:
            return run.parents[len(rel.parts) - 1]
    return None


@dataclass(frozen=True)
class TrainConfig:
    """Every hyperparameter of a preference-model training run (see module docstring for presets)."""

    data_dir: str = knob("", "published version dir (holds train/, validation_unique/, ...) or datasets/pickapic/latest")
    output_dir: str = knob("", "run dir: init/, checkpoints/, best/, metrics.json, curve.png (rerun to resume)")
    init_from: str = knob("scratch", "'scratch' (tiny CLIP + BPE trained on the captions) or a local HF CLIP / "
                          "PickScore dir")
    preset: str = knob("demo", "name of the preset these values started from (demo | paper)", choices=("demo", "paper"))
    # optimisation (paper: AdamW lr 3e-6, wd 0.3, 500 warmup, batch 128, 4000 steps, clip 1.0, seed 42)
    learning_rate: float = knob(5e-4, "AdamW peak learning rate (after warmup, then linear decay to 0)", min=0,
                                min_exclusive=True)
    weight_decay: float = knob(0.3, "AdamW weight decay, on matrices only (biases, norms, logit_scale excluded)", min=0)
    adam_beta1: float = knob(0.9, "AdamW beta1")
    adam_beta2: float = knob(0.999, "AdamW beta2")
    adam_eps: float = knob(1e-8, "AdamW epsilon")
    warmup_steps: int = knob(20, "linear warmup steps from lr / warmup to lr", min=0)
    max_steps: int = knob(250, "optimizer steps in total (a resumed run may raise it)", min=1)
    batch_size: int = knob(16, "GLOBAL batch (pairs); split evenly over DDP ranks", min=1)
    grad_clip: float = knob(1.0, "clip the gradient norm to this (0 = off)", min=0)
    contrastive_weight: float = knob(1.0, "weight of the in-batch caption-vs-all-images term added to the "
                                          "PickScore loss (0 = off)", min=0)
    augment: str = knob("hflip", "train-image augmentation, per image: none | hflip | dihedral (random flips "
                                 "and 90-degree turns)", choices=AUGMENTS)
    seed: int = knob(42, "seed of the init, data order, shuffle buffer and augmentation")
    bf16: bool = knob(True, "bf16 autocast on CUDA; CPU always runs fp32")
    device: str = knob("auto", "auto | cpu | cuda", choices=("auto", "cpu", "cuda"), output=False)
    cpu_threads: int = knob(0, "torch threads per rank on CPU; 0 = cores / (ranks x (1 + workers))", min=0,
                            max=MAX_THREADS, output=False)
    # evaluation / checkpointing
    eval_every: int = knob(50, "evaluate on eval_split (and checkpoint) every N steps", min=1)
    eval_split: str = knob("validation_unique", "split for checkpoint selection and the tie threshold", choices=SPLITS)
    test_split: str = knob("test_unique", "split the final accuracy is reported on", choices=SPLITS)
    eval_batch_size: int = knob(64, "pairs per evaluation batch", min=1, output=False)
    log_every: int = knob(10, "record the mean train loss every N steps", min=1, output=False)
    # data loading
    num_workers: int = knob(1, "loader processes per rank (1 keeps up on 2 cores)", min=0, max=MAX_PROCESSES, output=False)
    shuffle_buffer: int = knob(1000, "samples in the seeded shuffle buffer", min=1)
    shuffle_initial: int = knob(100, "samples buffered before the first one is yielded", min=0)
    resampled: bool = knob(True, "draw shards with replacement per rank/worker (else seeded epochs)")
    draft_decode: bool = knob(True, "PIL JPEG draft (DCT-scaled) decode of TRAIN images; evaluation always "
                                    "decodes exactly")
    max_length: int = knob(77, "caption tokens (pad + truncate), as CLIP; at least 2 (the start and end of text "
                                "tokens)", min=2)
    # 'scratch' model (ignored when init_from is a directory)
    image_size: int = knob(64, "scratch model: input size in px (shortest edge resize + center crop)", min=1)
    patch_size: int = knob(8, "scratch model: ViT patch size", min=1)
    text_width: int = knob(64, "scratch model: text transformer width", min=1)
    vision_width: int = knob(64, "scratch model: vision transformer width", min=1)
    layers: int = knob(2, "scratch model: layers of each tower", min=1)
    heads: int = knob(2, "scratch model: attention heads", min=1)
    projection_dim: int = knob(64, "scratch model: joint embedding size", min=1)
    tokenizer_vocab_size: int = knob(2048, "scratch model: BPE vocabulary size (>= 600)", min=600)
    tokenizer_max_captions: int = knob(200_000, "scratch model: train captions the BPE is trained on", min=1)

    @classmethod
    def from_settings(cls, **values: Any) -> "TrainConfig":
        """The config a data home's ``[train]`` settings give: its ``preset`` (default demo), then the values set."""
        return preset(values.pop("preset", "demo"), **values)

    def __post_init__(self) -> None:
        if _STORED.get() and self.max_length == 1:
            # the trainer before max_length >= 2 finished runs with max_length=1: a stored recipe keeps its value
            # (the range is a rule for new runs: recipe_problems), every other field is checked as usual
            probe = copy.copy(self)
            object.__setattr__(probe, "max_length", 2)
            check_fields(probe)
        else:
            check_fields(self)   # type, range and choices of every field, as the settings file checks them
        problems = []
        if self.image_size % self.patch_size:
            problems.append(f"image_size={self.image_size} is not a multiple of patch_size={self.patch_size}")
        for name in ("text_width", "vision_width"):
            if getattr(self, name) % self.heads:
                problems.append(f"{name}={getattr(self, name)} is not a multiple of heads={self.heads}")
        if _STORED.get():   # a recipe a run stored: the rules for new runs are not applied again
            object.__setattr__(self, "_stored", True)
        else:
            problems += self.recipe_problems()
        if problems:
            raise ValueError("invalid TrainConfig: " + "; ".join(problems))

    def recipe_problems(self) -> list[str]:
        """What the rules for a new run (not applied to a recipe read from a run's ``train_config.json``) find
        wrong: a float setting float32 cannot hold (beyond its range, or non-zero below its smallest normal
        number, which float32 rounds to 0 or computes with lost precision: ``adam_eps=1e-46`` became 0 and 0/0
        turned weights NaN), or eval_split / test_split that are not two different held-out splits."""
        problems = []
        for f in dataclasses.fields(self):   # the optimizer and the model compute in float32
            value = getattr(self, f.name)
            if f.type not in ("float", float):
                continue
            if abs(value) > FLOAT32_MAX:
                problems.append(f"{f.name}={value!r} is beyond float32's range (at most {FLOAT32_MAX:.4g}), which "
                                "the optimizer and the model compute in")
            elif value != 0 and abs(value) < FLOAT32_TINY:
                problems.append(f"{f.name}={value!r} is below float32's smallest normal number ({FLOAT32_TINY:.4g}), "
                                "which the optimizer and the model compute in: it would be rounded to 0 or lose its "
                                "precision (use 0 where the setting allows it, or a value of at least that)")
        if self.max_length < 2:   # only a stored recipe gets here (the field's range refuses it in a new one)
            problems.append(f"max_length={self.max_length} leaves no room for the start and end of text tokens "
                            "every caption gets; set max_length to at least 2")
        held_out = [name for name in ("eval_split", "test_split") if getattr(self, name) == "train"]
        if held_out or self.eval_split.removesuffix(HELD_OUT) == self.test_split.removesuffix(HELD_OUT):
            problems.append(f"eval_split={self.eval_split!r} and test_split={self.test_split!r} must be two different "
                            "held-out splits, neither of them train (the checkpoint and tie threshold are chosen on "
                            "eval_split, the accuracy is reported on test_split; a *_unique split repeats rows of "
                            "its parent)")
        return problems

    def check_new_run(self) -> None:
        """Refuse a config a new run (or a resume) cannot train with, also when it was read from a run's files."""
        problems = self.recipe_problems()
        if problems:
            raise ValueError("invalid TrainConfig: " + "; ".join(problems))

    @property
    def stored(self) -> bool:
        """Whether this config was read from a run's ``train_config.json`` (then the new-run rules were not
        applied: :meth:`check_new_run` applies them)."""
        return bool(self.__dict__.get("_stored"))

    def replace(self, **changes: Any) -> "TrainConfig":
        """A copy with ``changes`` applied (validated again; a stored recipe's copy is one too)."""
        with _reading_stored() if self.stored else contextlib.nullcontext():
            return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict of every field."""
        return dataclasses.asdict(self)

    def stored_dict(self, home: Path | None) -> dict[str, Any]:
        """``to_dict`` as a run's files store it: paths inside the data ``home`` marked relative to it, others
        absolute (``home_relative``)."""
        values = self.to_dict()
        values.update({name: home_relative(values[name], home) for name in PATH_FIELDS})
        return values

    def with_home(self, home: Path | None) -> "TrainConfig":
        """A config read from a run's files with its ``home:`` paths made absolute again under ``home``
        (:func:`from_home`); every other path (absolute; as given in files written before paths were marked)
        stays as it is."""
        changes = {name: from_home(getattr(self, name), home) for name in PATH_FIELDS}
        changes = {name: value for name, value in changes.items() if value != getattr(self, name)}
        return self.replace(**changes) if changes else self

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        """Inverse of ``to_dict``; unknown keys are an error that names them."""
        if not isinstance(values, dict):
            raise ValueError(f"a TrainConfig is stored as a JSON object, not {type(values).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig fields {unknown}")
        return cls(**values)

    def save(self, directory: Path, home: Path | None = None) -> Path:
        """Write ``train_config.json`` into ``directory``, paths inside the data ``home`` relative to it."""
        path = Path(directory) / CONFIG_FILE
        path.write_text(json.dumps(self.stored_dict(home), indent=1, sort_keys=True) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, directory: Path, home: Path | None = None, resolve: bool = True) -> "TrainConfig":
        """Read ``train_config.json`` from a checkpoint directory; with ``resolve``, its ``home:`` paths made
        absolute under the home the run folder lies in (:func:`locate_home`), else under ``home``. Files
        written before paths were stored relative hold paths as given (absolute, or relative to the working
        directory of the run): they are read as they are. The rules for new runs (:meth:`recipe_problems`) are
        not applied: a model trained before one was added still loads, evaluates and scores."""
        path = Path(directory) / CONFIG_FILE
        if not path.is_file():
            raise FileNotFoundError(f"no {CONFIG_FILE} in {directory}")
        with _reading_stored():   # the rules for new runs are not applied to a stored recipe
            try:
                config = cls.from_dict(parse_run_json(path.read_text(encoding="utf-8"), path))
            except (ValueError, TypeError) as exc:   # a list, unknown or mistyped fields: the file named (rev32a)
                text = first_line(exc)
                raise ValueError(text if str(path) in text else f"{path}: {text}") from None
        if not resolve:
            return config
        return config.with_home(locate_home(Path(directory), config.output_dir) or home)


PRESETS: dict[str, dict[str, Any]] = {
    # PickScore recipe (arXiv 2305.01569). batch 128 = 16 per GPU x 8 GPUs.
    "paper": dict(learning_rate=3e-6, weight_decay=0.3, warmup_steps=500, batch_size=128, max_steps=4000,
                  grad_clip=1.0, seed=42, bf16=True, eval_every=100, num_workers=4, shuffle_buffer=10_000,
                  shuffle_initial=1000, image_size=224, patch_size=32, text_width=256, vision_width=256,
                  layers=4, heads=4, projection_dim=256, tokenizer_vocab_size=49408, contrastive_weight=0.0,
                  augment="none"),
    # Tiny scratch CLIP on CPU, about a minute on 2 cores (see training/README.md for measured numbers).
    "demo": dict(learning_rate=5e-4, weight_decay=0.3, warmup_steps=20, batch_size=16, max_steps=250,
                 grad_clip=1.0, seed=42, bf16=True, eval_every=50, num_workers=1, shuffle_buffer=1000,
                 shuffle_initial=100, image_size=64, patch_size=8, text_width=64, vision_width=64, layers=2,
                 heads=2, projection_dim=64, tokenizer_vocab_size=2048,
                 # regularisers for the small simulated versions: without them the 1,500-step demo on 2,580
                 # pairs overfits to the random baseline (test_unique 0.553 vs random 0.556); with them 0.59-0.61
                 contrastive_weight=1.0, augment="hflip"),
}


def preset(name: str, **overrides: Any) -> TrainConfig:
    """The ``name`` preset (``paper`` or ``demo``) with ``overrides`` applied."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {quoted(name)}; choose one of {sorted(PRESETS)}")
    values = {**PRESETS[name], "preset": name}
    values.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig(**values)


def recorded_max_length(directory: str | os.PathLike) -> int | None:
    """The ``max_length`` a run's checkpoint folder records in its ``train_config.json`` (the caption tokens the run
    trained and evaluated with), or None for a folder without one (a downloaded CLIP / PickScore checkpoint)."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        return None
    try:
        return TrainConfig.load(Path(directory), resolve=False).max_length
    except (ValueError, TypeError, RecursionError) as exc:   # a stored recipe that does not parse: scores would not
        # match the run's (RecursionError: parse_run_json makes a deeply nested file a ValueError; kept for safety)
        raise ValueError(f"{path} is not a train_config.json this trainer wrote ({first_line(exc)}); the caption "
                         "length the model was trained with is unknown") from None


def metrics_steps(run: Path) -> int | None:
    """The ``steps`` metrics.json of ``run`` records, or None when it does not say."""
    data = read_small_file(run / METRICS_FILE, 64 << 20)
    try:
        record = parse_run_json(data, run / METRICS_FILE) if data is not None else None
    except ValueError:
        return None
    steps = record.get("steps") if isinstance(record, dict) else None
    return steps if type(steps) is int else None
