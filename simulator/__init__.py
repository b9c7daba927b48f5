"""App-log simulator: a realistic stand-in for the Pick-a-Pic app's daily exports, with ground truth.

Modules: ``config`` (SimConfig), ``world`` (prompts, attributes, generator models), ``activity`` (users,
sessions, rankings), ``render`` (the images), ``defects`` (what a file exporter plants), ``simulation`` (the
days, the ground truth), ``export`` (the raw zone's files), ``appdb_sink`` (the app's PostgreSQL tables
instead), ``cli`` (``pickapic simulate``), ``candidates`` + ``best_of_n`` (best-of-n on generated candidates).

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

from simulator.config import SimConfig
from simulator.simulation import SimReport, simulate

__all__ = ["MODEL_DESCRIPTION", "SimConfig", "SimReport", "simulate"]

MODEL_DESCRIPTION = __doc__.split("Model\n-----\n", 1)[1].strip()
