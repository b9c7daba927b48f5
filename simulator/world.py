"""The simulated world: prompt vocabulary, generator models, users, and the choice model."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# --- prompt attributes -------------------------------------------------------------------------
COLOURS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white",
           "gray", "cyan")
COLOUR_RGB = np.array([
    (220, 40, 40), (245, 140, 30), (240, 220, 40), (50, 170, 60), (40, 80, 220), (140, 60, 190),
    (245, 130, 190), (120, 75, 35), (20, 20, 20), (245, 245, 245), (128, 128, 128), (40, 210, 220),
], dtype=np.float32)
SHAPES = ("circle", "square", "triangle", "star", "hexagon", "ring", "cross", "diamond")
SHAPE_PLURALS = ("circles", "squares", "triangles", "stars", "hexagons", "rings", "crosses", "diamonds")
COUNT_WORDS = ("one", "two", "three", "four")
STYLES = ("flat", "outlined", "gradient", "textured")
ATTRIBUTES = ("colour", "shape", "count", "background", "style")
ATTRIBUTE_SIZES = (len(COLOURS), len(SHAPES), len(COUNT_WORDS), len(COLOURS), len(STYLES))
# How much a correctly rendered attribute adds to an image's utility.
MATCH_WEIGHTS = np.array([1.0, 1.0, 0.8, 0.6, 0.6])

# Prompt templates; three carry an apostrophe (escaped as [single_quote] in the raw export).
TEMPLATES = (
    "{n} {c} {sp} on a {b} background, {s} style",
    "{s} illustration of {n} {c} {sp} over a {b} background",
    "a child's drawing of {n} {c} {sp} on {b}, {s}",
    "{n} {c} {sp}, {b} background, {s} style, 4k, trending on artstation",
    "an artist's {s} rendering of {n} {c} {sp} on a {b} backdrop",
    "{n} {c} {sp} floating on a {b} background, {s}, it's beautiful",
)
# Style words appended to a prompt (0-3 of them); they make most fresh prompts unique, as real ones are.
MODIFIERS = ("highly detailed", "digital art", "minimalist", "centered", "symmetrical", "8k", "studio lighting",
             "vector art", "award winning", "clean lines", "soft shadows", "isometric", "poster", "bold colors",
             "simple", "icon", "wallpaper", "sharp focus", "matte finish", "geometric")
NEGATIVE_BRACKETS = ("[blurry, low quality]", "[text, watermark]", "[ugly]", "[deformed, extra shapes]",
                     "[dark]")
DEFAULT_NEGATIVE_PROMPT = "ugly, blurry, poor quality"

# Mild placeholder phrases for the moderation list (none occurs inside the clean vocabulary).
NSFW_PHRASES = (
    "nsfw", "nude", "naked", "explicit", "topless", "lingerie", "porn", "xxx", "erotic", "sexy",
    "gore", "uncensored", "onlyfans", "hentai", "nipples", "undressed", "strip club", "bikini model",
    "adult content", "r18", "lewd", "fetish", "bdsm", "seductive pose", "no clothes", "sensual",
    "risque", "provocative", "playboy", "boudoir",
)


# --- generator models --------------------------------------------------------------------------
@dataclass(frozen=True)
class GeneratorModel:
    """One simulated generator: attribute accuracy, image degradations, share of generations."""

    model_id: str
    mix: float                      # share of generations
    accuracy: tuple[float, ...]     # P(attribute rendered as asked), per ATTRIBUTES entry
    blur: float                     # mean blur level in 0..1
    noise: float                    # mean pixel-noise level in 0..1
    artefacts: float                # mean number of blotch artefacts per image
    steps: int
    scheduler_cls: str


DPM = "DPMSolverMultistepScheduler"
DDIM = "DDIMScheduler"
MODELS = (
    GeneratorModel("stable-diffusion-xl-beta-v2-2-2", 0.28, (0.92, 0.90, 0.65, 0.88, 0.80), 0.10, 0.08, 0.2, 50, DDIM),
    GeneratorModel("stable-diffusion-xl-beta-v2-2-4", 0.22, (0.88, 0.85, 0.55, 0.85, 0.74), 0.16, 0.12, 0.3, 50, DDIM),
    GeneratorModel("yuvalkirstain/dreamlike-photoreal-2-flax", 0.18, (0.85, 0.78, 0.45, 0.82, 0.55), 0.20, 0.10, 0.4, 25, DPM),
    GeneratorModel("stable-diffusion-768-v2-1", 0.12, (0.80, 0.74, 0.40, 0.78, 0.60), 0.28, 0.25, 0.5, 50, DDIM),
    GeneratorModel("stabilityai/stable-diffusion-2-1", 0.20, (0.74, 0.66, 0.35, 0.72, 0.50), 0.35, 0.30, 0.7, 25, DPM),
)
CONTENT_FILTERED = "CONTENT_FILTERED"
MODEL_IDS = tuple(m.model_id for m in MODELS) + (CONTENT_FILTERED,)
CF_INDEX = len(MODELS)
MIX = np.array([m.mix for m in MODELS])
ACCURACY = np.array([m.accuracy for m in MODELS])
BLUR = np.array([m.blur for m in MODELS])
NOISE = np.array([m.noise for m in MODELS])
ARTEFACTS = np.array([m.artefacts for m in MODELS])

# --- utility and choice ------------------------------------------------------------------------
QUALITY_WEIGHTS = {"blur": 2.0, "noise": 2.0, "artefact": 0.4}
BLANK_UTILITY = -3.0               # a CONTENT_FILTERED (black) image: nothing matches, worst quality
UTILITY_SCALE = 1.5                # temperature of the Bradley-Terry choice


def quality_of(blur: np.ndarray, noise: np.ndarray, artefacts: np.ndarray) -> np.ndarray:
    """Image quality term of the utility (0 is perfect, more negative is worse)."""
    return -(QUALITY_WEIGHTS["blur"] * blur + QUALITY_WEIGHTS["noise"] * noise
             + QUALITY_WEIGHTS["artefact"] * artefacts)


def model_true_quality() -> dict[str, float]:
    """Expected utility of one image of each model for the average user (the true model score)."""
    scores = {}
    for m in MODELS:
        match = float(np.dot(MATCH_WEIGHTS, m.accuracy))
        # per-image levels are model level x lognormal(0, 0.3), clipped to 1; E[lognormal] = e^0.045
        scale = float(np.exp(0.045))
        quality = float(quality_of(np.array(min(1.0, m.blur * scale)), np.array(min(1.0, m.noise * scale)),
                                   np.array(m.artefacts)))
        scores[m.model_id] = round(UTILITY_SCALE * (match + quality), 6)
    scores[CONTENT_FILTERED] = UTILITY_SCALE * BLANK_UTILITY
    return scores


def choice_probabilities(utility: np.ndarray, shown: np.ndarray, tie_weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Davidson's Bradley-Terry model with ties, generalised to n shown images.

    P(best = i) = exp(u_i) / Z and P(tie) = nu * exp(mean_shown(u)) / Z, with
    Z = sum_shown exp(u_j) + nu * exp(mean_shown(u)). ``utility`` is (N, 4), ``shown`` a bool mask.
    Returns (p_best (N, 4), p_tie (N,)).
    """
    u = np.where(shown, utility, -np.inf)
    top = np.max(u, axis=1, keepdims=True)
    e = np.where(shown, np.exp(u - top), 0.0)
    mean_u = np.sum(np.where(shown, utility, 0.0), axis=1, keepdims=True) / np.sum(shown, axis=1, keepdims=True)
    tie = tie_weight[:, None] * np.exp(mean_u - top)
    z = np.sum(e, axis=1, keepdims=True) + tie
    return e / z, (tie / z)[:, 0]


def pairwise_probabilities(u0: np.ndarray, u1: np.ndarray, tie_weight: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Davidson probabilities (p_0, p_1, p_tie) for a pair of utilities."""
    utility = np.stack([u0, u1, u0, u0], axis=1)
    shown = np.zeros_like(utility, dtype=bool)
    shown[:, :2] = True
    p, tie = choice_probabilities(utility, shown, tie_weight)
    return p[:, 0], p[:, 1], tie


# --- users -------------------------------------------------------------------------------------
FIRST_NAMES = ("Ada", "Ben", "Chen", "Dana", "Eli", "Fatima", "Gus", "Hana", "Ivan", "Jun", "Kofi", "Lena",
               "Mateo", "Nora", "Omar", "Priya", "Quinn", "Rosa", "Sami", "Tova", "Uma", "Viktor", "Wen",
               "Yara", "Zoe")
LAST_NAMES = ("Abe", "Baker", "Costa", "Dubois", "Eze", "Fischer", "Garcia", "Haddad", "Ito", "Jensen",
              "Kim", "Lopez", "Moreau", "Novak", "Okafor", "Petrov", "Rossi", "Silva", "Tanaka", "Weber")


@dataclass
class Population:
    """The active user population (columns indexed by population index, not by user id)."""

    signup_day: np.ndarray        # day index of sign-up (may lie beyond the simulated window)
    signup_offset_us: np.ndarray  # microseconds after midnight of the sign-up day
    activity: np.ndarray          # relative session rate
    attr_weight: np.ndarray       # alpha_u: weight on attribute match
    quality_weight: np.ndarray    # beta_u: weight on image quality
    favourite_style: np.ndarray   # index into STYLES
    style_bonus: np.ndarray       # kappa_u: utility bonus for the favourite style
    tie_propensity: np.ndarray    # multiplier on the global Davidson tie weight
    is_banned: np.ndarray


def make_population(n: int, banned_fraction: float, rng: np.random.Generator) -> Population:
    """Draw ``n`` users' sign-up days and latent preference parameters."""
    early = rng.random(n) < 0.7
    later = rng.geometric(0.5, size=n)  # 1, 2, 3, ... days after the start
    signup_day = np.where(early, 0, later).astype(np.int64)
    offset = (rng.random(n) * 12 * 3600 * 1e6).astype(np.int64)
    activity = np.exp(rng.normal(0.0, 0.8, n))
    n_banned = max(1, int(round(banned_fraction * n))) if banned_fraction > 0 else 0
    is_banned = np.zeros(n, dtype=bool)
    is_banned[rng.choice(n, size=n_banned, replace=False)] = True
    # keep the banned users' share of clicks near their share of users
    activity = np.where(is_banned, 1.0, activity)
    return Population(
        signup_day=signup_day, signup_offset_us=offset, activity=activity,
        attr_weight=np.exp(rng.normal(0.0, 0.3, n)), quality_weight=np.exp(rng.normal(0.0, 0.3, n)),
        favourite_style=rng.integers(0, len(STYLES), n), style_bonus=0.5 * rng.random(n),
        tie_propensity=np.exp(rng.normal(0.0, 0.4, n)), is_banned=is_banned,
    )


def user_identity(user_id: int) -> tuple[str, str]:
    """Deterministic (email, name) of a user id."""
    first = FIRST_NAMES[(user_id * 7) % len(FIRST_NAMES)]
    last = LAST_NAMES[(user_id * 11 + 3) % len(LAST_NAMES)]
    return f"{first.lower()}.{last.lower()}{user_id}@example.com", f"{first} {last}"


# --- prompts -----------------------------------------------------------------------------------
def compose_prompt(colour: int, shape: int, count: int, background: int, style: int, template: int,
                   *modifiers: int) -> str:
    """The canonical prompt text of an attribute combination (count is 1..4; modifier index len(MODIFIERS) = none)."""
    text = TEMPLATES[template].format(
        n=COUNT_WORDS[count - 1], c=COLOURS[colour], sp=SHAPE_PLURALS[shape] if count > 1 else SHAPES[shape],
        b=COLOURS[background], s=STYLES[style])
    extra = []
    for m in modifiers:
        if m < len(MODIFIERS) and MODIFIERS[m] not in extra:
            extra.append(MODIFIERS[m])
    return ", ".join([text, *extra])


def variant_of(text: str, op: int) -> str:
    """A near-identical retyping of ``text``: case, whitespace or punctuation changes only."""
    ops = (
        lambda t: t[:1].upper() + t[1:],
        lambda t: t.upper(),
        lambda t: t + ".",
        lambda t: t.replace(" ", "  ", 1),
        lambda t: t.replace(",", ""),
        lambda t: t + " ",
        lambda t: t.title(),
        lambda t: t + "!",
    )
    return ops[op % len(ops)](text)


N_VARIANT_OPS = 8


def escape_quotes(text: str) -> str:
    """The app's storage escaping of single quotes."""
    return text.replace("'", "[single_quote]")


PROMPT_COLUMNS = 9


def draw_attributes(n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 9) int array: colour, shape, count (1..4), background (!= colour), style, template, 3 modifiers."""
    colour = rng.integers(0, len(COLOURS), n)
    background = (colour + rng.integers(1, len(COLOURS), n)) % len(COLOURS)
    n_modifiers = rng.choice(4, size=n, p=[0.25, 0.35, 0.25, 0.15])
    modifiers = rng.integers(0, len(MODIFIERS), (n, 3))
    modifiers = np.where(np.arange(3)[None, :] < n_modifiers[:, None], modifiers, len(MODIFIERS))
    return np.concatenate([np.stack([colour, rng.integers(0, len(SHAPES), n), rng.integers(1, 5, n), background,
                                     rng.integers(0, len(STYLES), n), rng.integers(0, len(TEMPLATES), n)], axis=1),
                           modifiers], axis=1)


def render_attributes(target: np.ndarray, model: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """What each model actually drew: each attribute right with the model's accuracy, else another value.

    ``target`` is (n, 5) (colour, shape, count 1..4, background, style); returns the same shape with
    the rendered object colour always different from the rendered background.
    """
    n = len(target)
    out = target[:, :5].copy()
    correct = rng.random((n, 5)) < ACCURACY[model]
    for k, size in enumerate(ATTRIBUTE_SIZES):
        base = out[:, k] - (1 if k == 2 else 0)
        other = (base + rng.integers(1, size, n)) % size + (1 if k == 2 else 0)
        out[:, k] = np.where(correct[:, k], out[:, k], other)
    clash = out[:, 0] == out[:, 3]
    # a clash means the object would vanish; the model then paints the background some other colour
    out[:, 3] = np.where(clash, (out[:, 3] + 1 + rng.integers(0, len(COLOURS) - 1, n)) % len(COLOURS), out[:, 3])
    fix = out[:, 0] == out[:, 3]
    out[:, 3] = np.where(fix, (out[:, 3] + 1) % len(COLOURS), out[:, 3])
    return out


def match_score(target: np.ndarray, rendered: np.ndarray) -> np.ndarray:
    """Weighted count of attributes rendered as asked."""
    return (target[:, :5] == rendered[:, :5]).astype(np.float64) @ MATCH_WEIGHTS


def calibrate_tie_weight(target_rate: float, rng: np.random.Generator, n: int = 20000) -> float:
    """Global Davidson tie weight nu giving ``target_rate`` ties on a reference sample of 2-image rankings.

    The sample depends only on ``rng`` (never on the run's days), so longer runs keep earlier days.
    """
    pop = make_population(n, 0.0, rng)
    target = draw_attributes(n, rng)
    u = np.empty((n, 2))
    for slot in range(2):
        model = rng.choice(len(MODELS), size=n, p=MIX)
        rendered = render_attributes(target, model, rng)
        blur = np.minimum(1.0, BLUR[model] * np.exp(rng.normal(0, 0.3, n)))
        noise = np.minimum(1.0, NOISE[model] * np.exp(rng.normal(0, 0.3, n)))
        arte = rng.poisson(ARTEFACTS[model])
        u[:, slot] = UTILITY_SCALE * (pop.attr_weight * match_score(target, rendered)
                                      + pop.quality_weight * quality_of(blur, noise, arte)
                                      + pop.style_bonus * (rendered[:, 4] == pop.favourite_style))
    lo, hi = 1e-4, 100.0
    for _ in range(48):  # bisection in log space: far below float noise in the tie rate
        mid = np.sqrt(lo * hi)
        _, _, tie = pairwise_probabilities(u[:, 0], u[:, 1], mid * pop.tie_propensity)
        if tie.mean() < target_rate:
            lo = mid
        else:
            hi = mid
    return float(np.sqrt(lo * hi))
