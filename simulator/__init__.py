"""App-log simulator: a realistic stand-in for the Pick-a-Pic app's daily exports, with ground truth.

Model
-----
*Users.* ``--users`` active users form the population; 70% sign up on the first day, the rest
1, 2, 3, ... days later (geometric), so a run shows the users whose sign-up falls in the window.
Each day also has a few drive-by sign-ups that never rank. A user row is exported on its sign-up
day. Each active user has an activity rate (lognormal), latent weights on attribute match
(alpha_u) and on image quality (beta_u) (both lognormal around 1), a favourite style with a bonus
kappa_u in [0, 0.5], and a tie propensity (lognormal multiplier). A few percent are banned.

*Prompts.* A prompt asks for attributes: colour (12), shape (8), count (1-4), background colour
(12, != colour), style (flat, outlined, gradient, textured), written with one of six templates
(three contain an apostrophe, exported as ``[single_quote]``), followed by 0-3 of 20 style words
("highly detailed", "8k", ...) so that, as in the real app, most fresh prompts are unique; 10% end
with a bracketed negative prompt such as ``[blurry, low quality]``. A session's prompt is fresh, or
(2%) drawn from a shared pool of ``users / 2`` popular prompts with Zipf(1.1) popularity (30% of
those retyped with case, whitespace or punctuation changes), or (15%) the user's own previous
prompt, retyped the same way 30% of the time; 2% of fresh sessions carry a listed NSFW phrase.

*Sessions, images, rankings.* A session (user, prompt) holds a geometric number of rankings
(mean 2.2). Each ranking shows 2 images (4 in a 60% share of rankings before 2023-02-15), freshly
generated for it; 30% of later rankings in a session keep one image of the previous ranking.
Each generated image picks a generator model by its share; the model draws each attribute right
with its own accuracy (else a different value) and degrades the image with its own blur, pixel
noise and blotch artefacts (per image: model level x lognormal(0, 0.3), artefacts Poisson). The
provider's safety filter replaces 1.5% of images (35% on NSFW prompts) by a black image
(``CONTENT_FILTERED``). Images are drawn with PIL: shapes placed with per-image jitter in position,
size and rotation over the background colour modulated by a random low-frequency field, so distinct
images have far-apart perceptual hashes.

*Choice.* The utility of image i for user u is
``u_i = 1.5 * (alpha_u * match_i + beta_u * quality_i + kappa_u * [style_i == favourite_u])`` with
``match_i`` = weighted count of attributes drawn as asked (weights colour 1, shape 1, count 0.8,
background 0.6, style 0.6) and ``quality_i = -(2 blur_i + 2 noise_i + 0.4 artefacts_i)``;
a black image has utility 1.5 * -3. The user picks by Davidson's Bradley-Terry model with ties,
generalised to n images: ``P(best = i) = exp(u_i) / Z``, ``P(tie) = nu * t_u * exp(mean u) / Z``,
``Z = sum_j exp(u_j) + nu * t_u * exp(mean u)``; the global tie weight ``nu`` is calibrated on a
reference sample so that about 13% of 2-image rankings are ties (recorded as ``'none'``). Each
generator model's true quality is its expected utility for the average user; the ground truth ranks
models by it and records every ranking's outcome probabilities and the Bayes-optimal tie-aware
accuracy.

*Defects* (each a few percent, at least one per kind per day, all in ``ground_truth/defects.parquet``
with the expected treatment): exact duplicate images under new uids, near duplicates (re-render with
a tiny change, JPEG re-encode saved as PNG, resize, small crop; pHash distance <= 4, verified),
banned users, NSFW-phrase prompts, CONTENT_FILTERED images, truncated / non-image / zero-byte /
missing blobs, rankings and downloads referencing unknown images, malformed JSON lines, wrong types,
lines exported twice (same file) and rankings re-exported the next day, conflicting rows sharing a
primary key, and rankings arriving in the next day's file (the last day's late rankings are not
written: they would arrive tomorrow).

*Determinism.* Every random draw comes from numpy generators seeded by (seed, stream, day), gzip has
mtime 0 and no name, and ids follow creation time, so the same config gives byte-identical files,
and a run with more days reproduces a shorter run's days exactly (only the moderation list grows).
"""
from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path
from typing import Callable

from formats.home import DataHome
from formats.outputs import check_home_dir
from simulator.config import SimConfig, config_from_dict
from simulator.simulation import SimReport, simulate

MODEL_DESCRIPTION = __doc__.split("Model\n-----\n", 1)[1].strip()

__all__ = ["SimConfig", "SimReport", "simulate", "add_arguments", "run_from_args", "config_from_dict",
           "MODEL_DESCRIPTION"]


def _positive_int(name: str, minimum: int = 1) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{name} must be >= {minimum}, got {value}")
        return value
    return parse


def _date(text: str) -> str:
    try:
        day = dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--start-date must be YYYY-MM-DD, got {text!r}") from None
    return day.isoformat()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the simulator's flags (``--home`` is left to the caller when it already defines one)."""
    defaults = SimConfig()
    if not any("--home" in action.option_strings for action in parser._actions):
        parser.add_argument("--home", default=None,
                            help="data home (default: $PICKAPIC_HOME, else ./data)")
    parser.add_argument("--days", type=_positive_int("--days"), default=defaults.days,
                        help=f"number of daily exports to write (default {defaults.days})")
    parser.add_argument("--start-date", type=_date, default=defaults.start_date,
                        help=f"first day, YYYY-MM-DD, not before 2023-01-01 (default {defaults.start_date})")
    parser.add_argument("--users", type=_positive_int("--users", 4), default=defaults.users,
                        help=f"active user population (default {defaults.users})")
    parser.add_argument("--rankings-per-day", type=_positive_int("--rankings-per-day", 10),
                        default=defaults.rankings_per_day,
                        help=f"rankings created per day (default {defaults.rankings_per_day})")
    parser.add_argument("--image-size", type=_positive_int("--image-size", 32), default=defaults.image_size,
                        help=f"PNG side in pixels, 32..2048 (default {defaults.image_size})")
    parser.add_argument("--seed", type=_positive_int("--seed", 0), default=defaults.seed,
                        help=f"random seed (default {defaults.seed})")
    parser.add_argument("--no-images", action="store_true",
                        help="write metadata only (no PNG blobs): for scale tests up to 1M rankings")
    parser.add_argument("--workers", type=_positive_int("--workers"), default=defaults.workers,
                        help=f"processes rendering images; output does not depend on it (default {defaults.workers})")
    parser.add_argument("--no-export-defects", action="store_true",
                        help="plant no defects of a file exporter (malformed/mistyped/repeated lines, re-exports, "
                             "next-day rankings): what a database source gives; implied by --to-postgres")
    parser.add_argument("--to-postgres", metavar="DSN", default=None,
                        help="play the app: write the history into the app's PostgreSQL tables (schema created in "
                             "an empty database) instead of the raw zone; the password may come from PGPASSWORD")
    parser.add_argument("--image-store", metavar="DIR", default=None,
                        help="with --to-postgres: the app's storage folder for {image_uid}.png blobs (outside the "
                             "data home; required unless --no-images)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def config_from_args(args: argparse.Namespace) -> SimConfig:
    """The validated ``SimConfig`` described by parsed flags."""
    return SimConfig(days=args.days, start_date=args.start_date, users=args.users,
                     rankings_per_day=args.rankings_per_day, image_size=args.image_size, seed=args.seed,
                     no_images=bool(args.no_images), workers=getattr(args, "workers", SimConfig.workers),
                     export_defects=not (getattr(args, "no_export_defects", False)
                                         or getattr(args, "to_postgres", None))).validate()


def _sink(args: argparse.Namespace, config: SimConfig, home: DataHome):
    """The app-database sink for ``--to-postgres`` (None: the raw zone's files)."""
    if not getattr(args, "to_postgres", None):
        if getattr(args, "image_store", None):
            raise ValueError("--image-store is only used with --to-postgres")
        return None
    store = None
    if not config.no_images:
        if not args.image_store:
            raise ValueError("--to-postgres needs --image-store DIR for the image blobs (or --no-images)")
        store = Path(args.image_store).expanduser().resolve()
        if store == home.root or home.root in store.parents:
            raise ValueError(f"--image-store {args.image_store} is inside the data home {home.root}: the app's "
                             "storage is the export's source, not part of the pipeline's home")
        if store.exists() and not store.is_dir():
            raise ValueError(f"--image-store {args.image_store} exists and is not a folder")
    from simulator.appdb_sink import AppDatabaseSink

    return AppDatabaseSink(args.to_postgres, store)


def run_from_args(args: argparse.Namespace) -> SimReport:
    """Run the simulator from parsed flags, with a rich progress bar unless ``--quiet``."""
    config = config_from_args(args)
    home = DataHome.at(args.home)
    check_home_dir(home)  # new, empty or a data home: never a folder of other files, never inside another home
    sink = _sink(args, config, home)
    if getattr(args, "quiet", False):
        return simulate(home, config, sink=sink)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description:>8}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  transient=False) as bar:
        tasks: dict[str, int] = {}

        def progress(stage: str, done: int | None = None, total: int | None = None) -> None:
            if done is None:   # a message: the simulator reports counts only
                return
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done, total=total)

        return simulate(home, config, progress, sink=sink)
