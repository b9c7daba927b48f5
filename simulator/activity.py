"""One simulated day of app activity: sign-ups, sessions, generated images, rankings, downloads.

Everything is column arrays (numpy) so a day of 100,000 rankings takes about a second; only the
prompt texts are Python strings, one per session.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import numpy as np

from simulator import world
from simulator.config import TWO_IMAGE_CUTOVER, SimConfig

US = 1_000_000
DAY_US = 86_400 * US
EPOCH = dt.date(1970, 1, 1)
SLOTS = 4


def day_start_us(day: str) -> int:
    """Microseconds since the epoch at midnight UTC of ``day``."""
    return (dt.date.fromisoformat(day) - EPOCH).days * DAY_US


def timestamps(us: np.ndarray) -> list[str]:
    """Naive UTC timestamp strings ``YYYY-MM-DD HH:MM:SS.ffffff`` for microsecond epochs."""
    text = np.datetime_as_string(np.asarray(us, dtype=np.int64).astype("datetime64[us]"), unit="us")
    return [t.replace("T", " ") for t in text.tolist()]


def uuids(rng: np.random.Generator, n: int) -> list[str]:
    """``n`` version-4 UUID strings drawn from ``rng`` (deterministic, unlike uuid.uuid4)."""
    raw = rng.integers(0, 256, (n, 16), dtype=np.uint8)
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x40
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80
    h = raw.tobytes().hex()
    return [f"{h[i:i + 8]}-{h[i + 8:i + 12]}-{h[i + 12:i + 16]}-{h[i + 16:i + 20]}-{h[i + 20:i + 32]}"
            for i in range(0, 32 * n, 32)]


@dataclass
class PromptPool:
    """Popular prompts shared across users (Zipf popularity)."""

    attrs: np.ndarray          # (P, 6) colour, shape, count, background, style, template
    bracket: np.ndarray        # (P,) index into NEGATIVE_BRACKETS or -1
    weights: np.ndarray        # (P,) Zipf probabilities


def make_pool(users: int, rng: np.random.Generator) -> PromptPool:
    """A pool of ``max(20, users // 2)`` popular prompts with Zipf(1.1) popularity."""
    size = max(20, users // 2)
    weights = 1.0 / np.arange(1, size + 1) ** 1.1
    bracket = np.where(rng.random(size) < 0.1, rng.integers(0, len(world.NEGATIVE_BRACKETS), size), -1)
    return PromptPool(world.draw_attributes(size, rng), bracket, weights / weights.sum())


@dataclass
class State:
    """What carries from one day to the next."""

    population: world.Population
    pool: PromptPool
    tie_weight: float
    user_id: np.ndarray                     # population index -> user id (-1 before sign-up)
    last_attrs: np.ndarray                  # population index -> last session's prompt attributes
    last_text: list                         # population index -> last session's prompt text (or None)
    last_canonical: list                    # population index -> last session's canonical prompt
    next_user_id: int = 1
    next_image_id: int = 1
    next_ranking_id: int = 1
    next_download_id: int = 1


@dataclass
class Day:
    """One day's generated rows, before defects, as column arrays."""

    day: str
    # users signing up today (active population and drive-by sign-ups that never rank)
    users: dict = field(default_factory=dict)
    # sessions
    session_user: np.ndarray = None         # population index
    session_text: list = None               # final prompt text (unescaped)
    session_canonical: list = None          # prompt text before variants / NSFW / brackets
    session_nsfw: np.ndarray = None
    images: dict = field(default_factory=dict)
    rankings: dict = field(default_factory=dict)
    downloads: dict = field(default_factory=dict)


def new_state(config: SimConfig) -> State:
    """The world before the first day: population, prompt pool, calibrated tie weight."""
    population = world.make_population(config.users, config.banned_fraction,
                                       np.random.default_rng([config.seed, 0]))
    pool = make_pool(config.users, np.random.default_rng([config.seed, 3]))
    tie_weight = world.calibrate_tie_weight(config.tie_rate, np.random.default_rng([config.seed, 4]))
    n = config.users
    return State(population=population, pool=pool, tie_weight=tie_weight,
                 user_id=np.full(n, -1, dtype=np.int64), last_attrs=np.zeros((n, world.PROMPT_COLUMNS), dtype=np.int64),
                 last_text=[None] * n, last_canonical=[None] * n)


def _sign_ups(day_index: int, day: str, state: State, rng: np.random.Generator) -> dict:
    """Assign user ids to today's sign-ups (active members and drive-by accounts), in time order."""
    pop = state.population
    joining = np.flatnonzero(pop.signup_day == day_index)
    n_drive_by = max(2, int(round(0.1 * len(joining))))
    offsets = np.concatenate([pop.signup_offset_us[joining],
                              (rng.random(n_drive_by) * 23 * 3600 * US).astype(np.int64)])
    member = np.concatenate([joining, np.full(n_drive_by, -1)])
    order = np.lexsort((member, offsets))
    member, offsets = member[order], offsets[order]
    ids = state.next_user_id + np.arange(len(member), dtype=np.int64)
    state.next_user_id += len(member)
    active = member >= 0
    state.user_id[member[active]] = ids[active]
    return {"user_id": ids, "created_us": day_start_us(day) + offsets, "member": member}


def _session_prompts(n_s: int, users: np.ndarray, starts: np.ndarray, config: SimConfig, state: State,
                     rng: np.random.Generator) -> tuple[np.ndarray, list[str], list[str], np.ndarray]:
    """Prompt of every session: fresh, from the popular pool, or the user's previous prompt retyped."""
    attrs = world.draw_attributes(n_s, rng)
    bracket = np.where(rng.random(n_s) < 0.1, rng.integers(0, len(world.NEGATIVE_BRACKETS), n_s), -1)
    from_pool = rng.random(n_s) < config.prompt_reuse_rate
    pool_pick = rng.choice(len(state.pool.weights), size=n_s, p=state.pool.weights)
    attrs[from_pool] = state.pool.attrs[pool_pick[from_pool]]
    bracket[from_pool] = state.pool.bracket[pool_pick[from_pool]]
    nsfw = (rng.random(n_s) < config.nsfw_prompt_rate) & ~from_pool
    phrase = rng.integers(0, len(world.NSFW_PHRASES), n_s)
    phrase_first = rng.random(n_s) < 0.5
    variant = np.where(rng.random(n_s) < config.prompt_variant_rate, rng.integers(0, world.N_VARIANT_OPS, n_s), -1)
    variant[~from_pool] = -1
    repeat = rng.random(n_s) < config.self_repeat_rate
    repeat_variant = np.where(rng.random(n_s) < config.prompt_variant_rate,
                              rng.integers(0, world.N_VARIANT_OPS, n_s), -1)

    canonical, text = [], []
    for s in range(n_s):
        a = attrs[s]
        base = world.compose_prompt(*a.tolist())
        canonical.append(base)
        t = base
        if nsfw[s]:
            p = world.NSFW_PHRASES[phrase[s]]
            t = f"{p} {t}" if phrase_first[s] else f"{t}, {p}"
        if variant[s] >= 0:
            t = world.variant_of(t, int(variant[s]))
        if bracket[s] >= 0:
            t = f"{t} {world.NEGATIVE_BRACKETS[bracket[s]]}"
        text.append(t)

    # retyping the user's previous prompt: walk sessions of each user in time order
    order = np.lexsort((np.arange(n_s), starts, users))
    for s in order.tolist():
        u = int(users[s])
        if repeat[s] and state.last_text[u] is not None:
            attrs[s] = state.last_attrs[u]
            nsfw[s] = False
            prev = state.last_text[u]
            canonical[s] = state.last_canonical[u]
            text[s] = world.variant_of(prev, int(repeat_variant[s])) if repeat_variant[s] >= 0 else prev
        if not nsfw[s]:  # nobody retypes a prompt the app refused
            state.last_attrs[u] = attrs[s]
            state.last_text[u] = text[s]
            state.last_canonical[u] = canonical[s]
    return attrs, canonical, text, nsfw


def simulate_day(day_index: int, config: SimConfig, state: State) -> Day:
    """Generate one day's clean rows (defects are planted afterwards)."""
    rng = np.random.default_rng([config.seed, 1, day_index])
    day = config.day(day_index)
    start_us = day_start_us(day)
    out = Day(day=day)
    out.users = _sign_ups(day_index, day, state, rng)
    pop = state.population

    # --- sessions --------------------------------------------------------------------------
    n_r = config.rankings_per_day
    lengths = rng.geometric(0.45, size=n_r)
    cum = np.cumsum(lengths)
    n_s = int(np.searchsorted(cum, n_r) + 1)
    lengths = lengths[:n_s].copy()
    lengths[-1] -= int(cum[n_s - 1] - n_r)
    active = np.flatnonzero((pop.signup_day <= day_index) & (state.user_id >= 0))
    weights = pop.activity[active] / pop.activity[active].sum()
    s_user = active[rng.choice(len(active), size=n_s, p=weights)]
    joined_today = pop.signup_day[s_user] == day_index
    lo = np.where(joined_today, pop.signup_offset_us[s_user] + 120 * US, 60 * US)
    hi = 22 * 3600 * US
    s_start = start_us + lo + (rng.random(n_s) * (hi - lo)).astype(np.int64)
    attrs, canonical, text, nsfw = _session_prompts(n_s, s_user, s_start, config, state, rng)
    out.session_user, out.session_text, out.session_canonical, out.session_nsfw = s_user, text, canonical, nsfw

    # --- rankings (session order first; re-ordered by time below) ---------------------------
    r_session = np.repeat(np.arange(n_s), lengths)
    first = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    pos = np.arange(n_r) - first[r_session]
    gaps = np.where(pos == 0, rng.uniform(20, 40, n_r), 15 + rng.exponential(40, n_r))
    gap_cum = np.cumsum(gaps)
    within = gap_cum - np.repeat(gap_cum[first] - gaps[first], lengths)
    r_time = s_start[r_session] + (within * US).astype(np.int64) + rng.integers(0, US, n_r)
    r_time = np.minimum(r_time, start_us + DAY_US - 1)
    early = dt.date.fromisoformat(day) < TWO_IMAGE_CUTOVER
    n_shown = np.where(early & (rng.random(n_r) < config.four_image_share), 4, 2)
    shown = np.arange(SLOTS)[None, :] < n_shown[:, None]

    # slot 0 of a later ranking in a session keeps an image from the previous ranking 30% of the time
    flat = np.arange(n_r * SLOTS).reshape(n_r, SLOTS)
    ptr = flat.copy()
    keep = (pos > 0) & (rng.random(n_r) < 0.3)
    prev_slot = (rng.random(n_r) * np.roll(n_shown, 1)).astype(np.int64)
    ptr[keep, 0] = flat[np.flatnonzero(keep) - 1, prev_slot[keep]]
    fresh = shown.copy()
    fresh[keep, 0] = False
    ptr = ptr.reshape(-1)
    while True:
        nxt = ptr[ptr]
        if np.array_equal(nxt, ptr):
            break
        ptr = nxt

    # one image entity per fresh slot, numbered in (ranking, slot) order
    fresh_flat = fresh.reshape(-1)
    entity_of_slot = np.full(n_r * SLOTS, -1, dtype=np.int64)
    entity_of_slot[fresh_flat] = np.arange(int(fresh_flat.sum()))
    slot_entity = entity_of_slot[ptr].reshape(n_r, SLOTS)
    slot_entity[~shown] = -1
    n_e = int(fresh_flat.sum())
    e_rank = np.flatnonzero(fresh_flat) // SLOTS
    e_slot = np.flatnonzero(fresh_flat) % SLOTS

    # --- duplicates: a fresh slot copies the previous slot (or the previous ranking's slot 0) --
    src_slot = np.full(n_r * SLOTS, -1, dtype=np.int64)
    fr, fs = np.nonzero(fresh)
    has_prev_slot = fs > 0
    src_slot[flat[fr, fs][has_prev_slot]] = flat[fr, fs - 1][has_prev_slot]
    use_prev_rank = (fs == 0) & (pos[fr] > 0)
    src_slot[flat[fr, fs][use_prev_rank]] = flat[fr - 1, 0][use_prev_rank]
    e_src_slot = src_slot[np.flatnonzero(fresh_flat)]
    roll = rng.random(n_e)
    e_kind = np.where(roll < config.exact_duplicate_rate, 1,
                      np.where(roll < config.exact_duplicate_rate + config.near_duplicate_rate, 2, 0))
    e_kind[e_src_slot < 0] = 0
    e_source = np.where(e_src_slot >= 0, entity_of_slot[ptr[np.maximum(e_src_slot, 0)]], -1)

    # --- image entities: model, CONTENT_FILTERED, rendered attributes, degradations -------
    e_session = r_session[e_rank]
    model = rng.choice(len(world.MODELS), size=n_e, p=world.MIX)
    cf_p = np.where(nsfw[e_session], 0.35, config.content_filtered_rate)
    is_cf = rng.random(n_e) < cf_p
    target = attrs[e_session, :5]
    rendered = world.render_attributes(target, model, rng)
    blur = np.minimum(1.0, world.BLUR[model] * np.exp(rng.normal(0, 0.3, n_e)))
    noise = np.minimum(1.0, world.NOISE[model] * np.exp(rng.normal(0, 0.3, n_e)))
    arte = rng.poisson(world.ARTEFACTS[model])
    layout = rng.integers(0, 2**62, n_e)
    seed = rng.integers(0, 2**31 - 1, n_e)
    gs = np.round(rng.uniform(3.0, 12.0, n_e), 4)
    # a duplicate's source must be an original, non-filtered image; drop chains
    bad = (e_kind > 0) & ((e_source < 0) | is_cf[np.maximum(e_source, 0)]
                          | (e_kind[np.maximum(e_source, 0)] > 0))
    e_kind[bad] = 0
    e_source[e_kind == 0] = -1
    dup = np.flatnonzero(e_kind > 0)
    src = e_source[dup]
    for column in (model, rendered, blur, noise, arte, layout, seed, gs):
        column[dup] = column[src]
    is_cf[dup] = False
    near_transform = np.where(e_kind == 2, rng.integers(0, 4, n_e), -1)

    # per-ranking generation batch: idx / num_generated over the fresh slots
    batch_n = fresh.sum(axis=1)
    batch_idx = np.cumsum(fresh, axis=1) - 1
    e_idx = batch_idx[e_rank, e_slot]
    e_num = batch_n[e_rank]
    batch_time = r_time - (rng.uniform(4, 15, n_r) * US).astype(np.int64)
    e_time = batch_time[e_rank] + e_idx * 1234

    # --- orphan images: generated, never ranked ---------------------------------------------
    n_o = max(3, int(round(0.04 * n_e)))
    o_session = rng.integers(0, n_s, n_o)
    o_model = rng.choice(len(world.MODELS), size=n_o, p=world.MIX)
    o_target = attrs[o_session, :5]

    def cat(a, b):
        return np.concatenate([a, b])

    all_session = cat(e_session, o_session)
    all_model = cat(model, o_model)
    all_rendered = np.concatenate([rendered, world.render_attributes(o_target, o_model, rng)])
    all_blur = cat(blur, np.minimum(1.0, world.BLUR[o_model] * np.exp(rng.normal(0, 0.3, n_o))))
    all_noise = cat(noise, np.minimum(1.0, world.NOISE[o_model] * np.exp(rng.normal(0, 0.3, n_o))))
    all_arte = cat(arte, rng.poisson(world.ARTEFACTS[o_model]))
    all_layout = cat(layout, rng.integers(0, 2**62, n_o))
    all_seed = cat(seed, rng.integers(0, 2**31 - 1, n_o))
    all_gs = cat(gs, np.round(rng.uniform(3.0, 12.0, n_o), 4))
    all_cf = cat(is_cf, np.zeros(n_o, dtype=bool))
    all_time = cat(e_time, s_start[o_session] + (rng.uniform(1, 600, n_o) * US).astype(np.int64))
    all_time = np.minimum(all_time, start_us + DAY_US - 1)
    all_idx = cat(e_idx, np.zeros(n_o, dtype=np.int64))
    all_num = cat(e_num, np.ones(n_o, dtype=np.int64))
    all_kind = cat(e_kind, np.zeros(n_o, dtype=np.int64))
    all_source = cat(e_source, np.full(n_o, -1))
    all_transform = cat(near_transform, np.full(n_o, -1))
    all_orphan = cat(np.zeros(n_e, dtype=bool), np.ones(n_o, dtype=bool))
    n_img = n_e + n_o

    # image_id follows creation time
    order = np.lexsort((np.arange(n_img), all_time))
    image_id = np.empty(n_img, dtype=np.int64)
    image_id[order] = state.next_image_id + np.arange(n_img)
    state.next_image_id += n_img
    uid = uuids(rng, n_img)
    all_user = s_user[all_session]
    match = world.match_score(attrs[all_session, :5], all_rendered)
    quality = world.quality_of(all_blur, all_noise, all_arte)
    style_hit = all_rendered[:, 4] == pop.favourite_style[all_user]
    utility = world.UTILITY_SCALE * (pop.attr_weight[all_user] * match + pop.quality_weight[all_user] * quality
                                     + pop.style_bonus[all_user] * style_hit)
    utility = np.where(all_cf, world.UTILITY_SCALE * world.BLANK_UTILITY, utility)
    out.images = {
        "entity": np.arange(n_img), "image_id": image_id, "created_us": all_time, "uid": uid,
        "user_id": state.user_id[all_user], "session": all_session, "model": all_model, "is_cf": all_cf,
        "seed": all_seed, "gs": all_gs, "idx": all_idx, "num_generated": all_num,
        "target": attrs[all_session, :5], "rendered": all_rendered, "blur": all_blur, "noise": all_noise,
        "artefacts": all_arte, "layout": all_layout, "dup_kind": all_kind, "dup_source": all_source,
        "near_transform": all_transform, "orphan": all_orphan, "match": match, "quality": quality,
        "utility": utility, "nsfw_prompt": nsfw[all_session],
    }

    # --- choices -------------------------------------------------------------------------
    r_user = s_user[r_session]
    u = np.where(shown, utility[np.maximum(slot_entity, 0)], 0.0)
    tie_w = state.tie_weight * pop.tie_propensity[r_user]
    p_best, p_tie = world.choice_probabilities(u, shown, tie_w)
    cdf = np.cumsum(np.concatenate([p_best, p_tie[:, None]], axis=1), axis=1)
    pick = np.minimum((rng.random(n_r)[:, None] >= cdf).sum(axis=1), SLOTS)
    best = np.where(pick == SLOTS, -1, pick)
    p0, p1, pt = world.pairwise_probabilities(u[:, 0], u[:, 1], tie_w)

    # rankings in time order; ids follow creation time
    order = np.lexsort((np.arange(n_r), r_time))
    late_n = max(1, int(round(config.late_rate * n_r))) if config.late_rate > 0 else 0
    late = np.zeros(n_r, dtype=bool)
    late[order[n_r - late_n:]] = True
    ranking_id = np.empty(n_r, dtype=np.int64)
    ranking_id[order] = state.next_ranking_id + np.arange(n_r)
    state.next_ranking_id += n_r
    out.rankings = {
        "ranking_id": ranking_id, "created_us": r_time, "user": r_user, "user_id": state.user_id[r_user],
        "session": r_session, "n_shown": n_shown, "slot_entity": slot_entity, "best": best,
        "p_best": np.where(shown, p_best, np.nan), "p_tie": p_tie, "p_0": p0, "p_1": p1, "p_tie_pair": pt,
        "utility": np.where(shown, u, np.nan), "late": late, "banned": pop.is_banned[r_user],
        "nsfw_prompt": nsfw[r_session], "content_filtered": (all_cf[np.maximum(slot_entity, 0)] & shown).any(axis=1),
    }

    # --- downloads -------------------------------------------------------------------------
    candidates = np.flatnonzero(~late)
    n_d = min(len(candidates), max(10, int(round(0.05 * n_r))))
    d_rank = np.sort(rng.choice(candidates, size=n_d, replace=False))
    d_slot = np.where(best[d_rank] >= 0, best[d_rank], 0)
    d_time = np.minimum(r_time[d_rank] + (rng.uniform(5, 300, n_d) * US).astype(np.int64), start_us + DAY_US - 1)
    order = np.lexsort((np.arange(n_d), d_time))
    download_id = np.empty(n_d, dtype=np.int64)
    download_id[order] = state.next_download_id + np.arange(n_d)
    state.next_download_id += n_d
    out.downloads = {
        "download_id": download_id, "created_us": d_time, "user_id": state.user_id[r_user[d_rank]],
        "entity": slot_entity[d_rank, d_slot], "session": r_session[d_rank], "ranking": d_rank,
    }
    return out
