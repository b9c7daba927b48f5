"""The simulator run: days of activity -> defects planted -> raw files, blobs and ground truth."""
from __future__ import annotations

import json
import multiprocessing
import os
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from formats.home import DataHome
from formats.processes import worker_pool
from formats.progress import Progress, silent
from simulator import activity, defects, export, render, world
from simulator.config import SimConfig

# Expected treatment of a whole ranking when several apply: the lowest code wins.
TREATMENTS = (*defects.LINE_DEFECTS.values(), "decision:banned_user", "decision:nsfw_prompt",
              "decision:content_filtered", *defects.BLOB_DEFECTS.values(), "accept")
CODE = {t: i for i, t in enumerate(TREATMENTS)}
ACCEPT = CODE["accept"]


@dataclass
class SimReport:
    """What one simulator run wrote."""

    home: str
    config: dict
    days: list[str]
    users: int = 0
    images: int = 0
    rankings: int = 0
    rankings_pending: int = 0           # late rankings of the last day: they arrive tomorrow
    downloads: int = 0
    blobs_written: int = 0
    lines: dict = field(default_factory=dict)
    defects: dict = field(default_factory=dict)
    duplicate_groups: dict = field(default_factory=dict)
    tie_rate: float = 0.0
    bayes_optimal_accuracy: float = 0.0
    model_ranking: list = field(default_factory=list)

    def metadata(self) -> dict:
        """JSON-able values and markdown for the orchestrator."""
        table = "\n".join(f"| {name} | {count} |" for name, count in sorted(self.defects.items()))
        return {
            "home": self.home, "days": len(self.days), "first_day": self.days[0], "last_day": self.days[-1],
            "users": self.users, "images": self.images, "rankings": self.rankings,
            "rankings_pending": self.rankings_pending, "downloads": self.downloads,
            "blobs_written": self.blobs_written, "lines": dict(self.lines),
            "defects_total": int(sum(self.defects.values())),
            "duplicate_groups": dict(self.duplicate_groups), "tie_rate": round(self.tie_rate, 4),
            "bayes_optimal_accuracy": round(self.bayes_optimal_accuracy, 4),
            "model_ranking": list(self.model_ranking), "config": dict(self.config),
            "defects": f"| defect | rows |\n|---|---|\n{table}",
        }


def _render_group(task: tuple) -> list[tuple[str, str | None, int | None, bool]]:
    """Render one image (and its duplicates) and write the blobs; runs in a worker process."""
    root, size, uid, spec_tuple, blob, members = task
    spec = render.ImageSpec(*spec_tuple)
    array = render.render_array(spec, size)
    png = render.png_bytes(array)
    written = []
    data = png if blob is None else defects.damage_blob(png, blob[0], blob[1])
    if data is not None:
        export.write_unless_same(os.path.join(root, f"{uid}.png"), data)
    written.append((uid, None, None, data is not None))
    for member_uid, kind, transform in members:
        if kind == "exact":
            export.write_unless_same(os.path.join(root, f"{member_uid}.png"), png)
            written.append((member_uid, "identical bytes", 0, True))
        else:
            near, detail, distance = render.near_duplicate(transform, spec, array, size)
            export.write_unless_same(os.path.join(root, f"{member_uid}.png"), render.png_bytes(near))
            written.append((member_uid, detail, distance, True))
    return written


# Line defects a typed database with primary keys cannot hold (export_defects=False leaves them out).
EXPORT_LINE_DEFECTS = ("malformed_json", "wrong_type", "duplicate_row", "conflicting_primary_key")


class RawZoneSink:
    """Where simulated days go by default: the raw zone's JSON-lines files and ``raw/images``."""

    def __init__(self, home: DataHome):
        self.home = home
        self.image_root = home.raw_images

    def write_table(self, day: str, table: str, lines: list[str]) -> None:
        """Write one day's file of ``table``."""
        export.write_jsonl_gz(self.home.raw_file(day, table), lines)

    def finish(self) -> None:
        """Nothing to do: every file was written atomically."""

    def abort(self) -> None:
        """Nothing to undo: the files written so far are complete days."""


class _Run:
    """Mutable state of one run (kept out of the public interface)."""

    def __init__(self, home: DataHome, config: SimConfig, sink=None):
        self.home, self.config = home, config
        self.sink = sink or RawZoneSink(home)
        self.state = activity.new_state(config)
        self.carry: list[tuple[int, str, list[defects.Record]]] = []
        self.defect_rows: list[dict] = []
        self.image_gt: list[dict] = []
        self.ranking_gt: list[dict] = []
        self.user_gt: list[dict] = []
        self.tasks: list[tuple] = []
        self.dup_rows: list[dict] = []
        self.cf_uids: list[tuple[int, str]] = []
        self.lines = {t: 0 for t in ("users", "images", "rankings", "downloads")}
        self.pending = 0
        self.downloads = 0

    def kinds(self, *names: str) -> tuple[str, ...]:
        """The line defects to plant among ``names`` (only data-level ones without export defects)."""
        return names if self.config.export_defects else tuple(n for n in names if n not in EXPORT_LINE_DEFECTS)

    # --- one day ------------------------------------------------------------------------------
    def day(self, index: int) -> None:
        cfg = self.config
        d = activity.simulate_day(index, cfg, self.state)
        if not cfg.export_defects:  # a database holds every ranking under its own day
            d.rankings["late"][:] = False
        rng = np.random.default_rng([cfg.seed, 2, index])
        last_day = index == cfg.days - 1
        prompt_json = [json.dumps(world.escape_quotes(t)) for t in d.session_text]
        rate = cfg.defect_rate

        # users ---------------------------------------------------------------------------
        u = d.users
        u_ts = activity.timestamps(u["created_us"])
        identities = [world.user_identity(int(i)) for i in u["user_id"]]
        user_lines = defects.FileLines("users", d.day, [
            export.user_line(int(i), t, e, n) for i, t, (e, n) in zip(u["user_id"], u_ts, identities)])
        keys = [str(int(i)) for i in u["user_id"]]
        mask = u["member"] < 0
        defects.plant_lines(user_lines, keys, mask, self.kinds("malformed_json", "wrong_type"), rate, rng)
        rest = ~(u["member"] < 0) | mask
        defects.plant_lines(user_lines, keys, rest, self.kinds("duplicate_row"), rate, rng)
        pop = self.state.population
        for i, (uid, ts, (email, name), member) in enumerate(zip(u["user_id"], u_ts, identities, u["member"])):
            m = int(member)
            self.user_gt.append({
                "user_id": int(uid), "created_at": ts, "dt": d.day, "email": email, "name": name,
                "is_active": m >= 0, "is_banned": bool(pop.is_banned[m]) if m >= 0 else False,
                "attr_weight": float(pop.attr_weight[m]) if m >= 0 else None,
                "quality_weight": float(pop.quality_weight[m]) if m >= 0 else None,
                "favourite_style": world.STYLES[pop.favourite_style[m]] if m >= 0 else None,
                "style_bonus": float(pop.style_bonus[m]) if m >= 0 else None,
                "tie_propensity": float(pop.tie_propensity[m]) if m >= 0 else None,
                "activity": float(pop.activity[m]) if m >= 0 else None,
            })

        # images --------------------------------------------------------------------------
        img = d.images
        n_img = len(img["uid"])
        img_order = np.argsort(img["image_id"], kind="stable")
        img_ts = activity.timestamps(img["created_us"])
        model_ids = [world.CONTENT_FILTERED if cf else world.MODEL_IDS[m] for m, cf in zip(img["model"], img["is_cf"])]
        neg = export.jstr(world.DEFAULT_NEGATIVE_PROMPT)
        steps = [m.steps for m in world.MODELS]
        sched = [m.scheduler_cls for m in world.MODELS]
        o = img_order
        image_texts = [
            export.image_line(iid, ts, uid, user, prompt_json[sess], neg, seed, gs, steps[m], idx, num, sched[m], mid)
            for iid, ts, uid, user, sess, seed, gs, m, idx, num, mid in zip(
                img["image_id"][o].tolist(), [img_ts[e] for e in o.tolist()], [img["uid"][e] for e in o.tolist()],
                img["user_id"][o].tolist(), img["session"][o].tolist(), img["seed"][o].tolist(),
                img["gs"][o].tolist(), img["model"][o].tolist(), img["idx"][o].tolist(),
                img["num_generated"][o].tolist(), [model_ids[e] for e in o.tolist()])]
        image_lines = defects.FileLines("images", d.day, image_texts)
        entry_of_image = np.empty(n_img, dtype=np.int64)
        entry_of_image[img_order] = np.arange(n_img)
        keys = [img["uid"][e] for e in img_order.tolist()]
        orphan_entries = img["orphan"][img_order].copy()
        used = defects.plant_lines(image_lines, keys, orphan_entries, self.kinds("malformed_json", "wrong_type"), rate,
                                    rng)
        rest = np.ones(n_img, dtype=bool)
        rest[used] = False
        defects.plant_lines(image_lines, keys, rest, self.kinds("duplicate_row"), rate, rng)
        for e in np.flatnonzero(img["is_cf"]).tolist():
            image_lines.tag(int(entry_of_image[e]), defects.Record(
                "content_filtered", img["uid"][e], defects.DECISIONS["content_filtered"], "provider safety filter"))
            self.cf_uids.append((int(img["image_id"][e]), img["uid"][e]))

        # blob defects on referenced, original, unfiltered images
        blob_of = {}
        if not cfg.no_images:
            is_source = np.zeros(n_img, dtype=bool)
            is_source[img["dup_source"][img["dup_source"] >= 0]] = True
            ok = ~img["orphan"] & ~img["is_cf"] & (img["dup_kind"] == 0) & ~is_source
            for kind in defects.BLOB_DEFECTS:
                for variant, e in enumerate(defects.pick(ok, rate / 4, rng).tolist()):
                    blob_of[e] = (kind, variant)
                    image_lines.tag(int(entry_of_image[e]), defects.Record(
                        kind, img["uid"][e], defects.BLOB_DEFECTS[kind], defects.blob_detail(kind, variant)))

        # rankings ------------------------------------------------------------------------
        rk = d.rankings
        n_r = len(rk["ranking_id"])
        uid_arr = np.asarray(img["uid"], dtype=object)
        slot_uid = np.where(rk["slot_entity"] >= 0, uid_arr[np.maximum(rk["slot_entity"], 0)], None)
        best_uid = np.where(rk["best"] >= 0, slot_uid[np.arange(n_r), np.maximum(rk["best"], 0)], "none")
        line_uid = slot_uid.copy()
        line_best = best_uid.copy()
        clean = ~rk["banned"] & ~rk["nsfw_prompt"] & ~rk["content_filtered"] & ~rk["late"]
        expected = np.full(n_r, ACCEPT, dtype=np.int64)
        unknown = defects.pick(clean, rate, rng)
        fresh = activity.uuids(rng, len(unknown))
        unknown_detail = {}
        for r, new_uid in zip(unknown.tolist(), fresh):
            slot = int(rng.integers(0, rk["n_shown"][r]))
            if line_best[r] == line_uid[r, slot]:
                line_best[r] = new_uid
            line_uid[r, slot] = new_uid
            unknown_detail[r] = f"image_{slot}_uid {new_uid} is in no images file"
        r_ts = activity.timestamps(rk["created_us"])
        texts = [export.ranking_line(int(rk["ranking_id"][r]), r_ts[r], int(rk["user_id"][r]), list(line_uid[r]),
                                     line_best[r], prompt_json[rk["session"][r]]) for r in range(n_r)]
        today = np.flatnonzero(~rk["late"])
        today = today[np.argsort(rk["ranking_id"][today], kind="stable")]
        ranking_lines = defects.FileLines("rankings", d.day, [texts[r] for r in today.tolist()])
        keys = [str(int(rk["ranking_id"][r])) for r in today.tolist()]
        for entry, r in enumerate(today.tolist()):
            if r in unknown_detail:
                ranking_lines.tag(entry, defects.Record("unknown_image_reference", keys[entry],
                                                        defects.LINE_DEFECTS["unknown_image_reference"],
                                                        unknown_detail[r]))
                expected[r] = min(expected[r], CODE[defects.LINE_DEFECTS["unknown_image_reference"]])

        def conflicting_ranking(entry: int) -> tuple[str, str]:
            r = int(today[entry])
            other = line_uid[r, 0] if line_best[r] == "none" else "none"
            return (export.ranking_line(int(rk["ranking_id"][r]), r_ts[r], int(rk["user_id"][r]), list(line_uid[r]),
                                        other, prompt_json[rk["session"][r]]), f"best_image_uid {other} vs {line_best[r]}")

        avail = clean[today].copy()
        avail_before = avail.copy()
        defects.plant_lines(ranking_lines, keys, avail,
                            self.kinds("malformed_json", "wrong_type", "conflicting_primary_key"), rate, rng,
                            conflicting=conflicting_ranking)
        for entry in np.flatnonzero(avail_before & ~avail).tolist():
            for rec in ranking_lines.records.get(entry, []):
                expected[today[entry]] = min(expected[today[entry]], CODE[rec.expected])
        defects.plant_lines(ranking_lines, keys, avail, self.kinds("duplicate_row"), rate, rng)
        # decisions on today's lines
        for entry, r in enumerate(today.tolist()):
            for rec in self._decisions(rk, r, keys[entry]):
                ranking_lines.tag(entry, rec)
        for flag, reason in (("content_filtered", "decision:content_filtered"), ("nsfw_prompt", "decision:nsfw_prompt"),
                             ("banned", "decision:banned_user")):
            expected = np.where(rk[flag], np.minimum(expected, CODE[reason]), expected)
        # yesterday's late rankings and re-exports come first, in id order
        carry = sorted(self.carry, key=lambda c: c[0])
        for k, (rid, text, records) in enumerate(carry):
            entry = ranking_lines.add(text, -1.0 + (k + 1) / (len(carry) + 1))
            for rec in records:
                ranking_lines.tag(entry, rec)
        # tomorrow's carry: today's late rankings and a few re-exports of clean lines
        self.carry = []
        reexport = defects.pick(avail, rate, rng) if cfg.export_defects else np.zeros(0, dtype=np.int64)
        for entry in reexport.tolist():
            self.carry.append((int(rk["ranking_id"][today[entry]]), ranking_lines.texts[entry], [defects.Record(
                "duplicate_ranking", keys[entry], defects.DECISIONS["duplicate_ranking"],
                f"ranking first exported on {d.day}")]))
        for r in np.flatnonzero(rk["late"]).tolist():
            key = str(int(rk["ranking_id"][r]))
            records = [defects.Record("late_arrival", key, "accept", f"created {r_ts[r]}, exported the next day")]
            self.carry.append((int(rk["ranking_id"][r]), texts[r], records + self._decisions(rk, r, key)))
        if last_day:
            self.pending = int(rk["late"].sum())
            self.carry = []

        # cascade: a ranking showing a damaged blob loses that image downstream
        if blob_of:
            blob_code = np.full(n_img + 1, ACCEPT, dtype=np.int64)
            for e, (kind, _) in blob_of.items():
                blob_code[e] = CODE[defects.BLOB_DEFECTS[kind]]
            ents = np.where(rk["slot_entity"] >= 0, rk["slot_entity"], n_img)
            expected = np.minimum(expected, blob_code[ents].min(axis=1))

        # downloads -----------------------------------------------------------------------
        dl = d.downloads
        n_d = len(dl["download_id"])
        self.downloads += n_d
        d_order = np.argsort(dl["download_id"], kind="stable")
        d_ts = activity.timestamps(dl["created_us"])
        d_uid = [img["uid"][e] for e in dl["entity"]]
        avail = np.ones(n_d, dtype=bool)
        unknown = set(defects.pick(avail, rate, rng).tolist())
        fresh = iter(activity.uuids(rng, len(unknown)))
        d_line_uid = [next(fresh) if i in unknown else d_uid[i] for i in range(n_d)]
        dl_texts = [export.download_line(int(dl["download_id"][i]), d_ts[i], int(dl["user_id"][i]), d_line_uid[i],
                                         prompt_json[dl["session"][i]]) for i in d_order.tolist()]
        download_lines = defects.FileLines("downloads", d.day, dl_texts)
        keys = [str(int(dl["download_id"][i])) for i in d_order.tolist()]
        for entry, i in enumerate(d_order.tolist()):
            if i in unknown:
                download_lines.tag(entry, defects.Record("unknown_image_reference", keys[entry],
                                                         defects.LINE_DEFECTS["unknown_image_reference"],
                                                         f"image_uid {d_line_uid[i]} is in no images file"))
        avail = avail[d_order]

        def conflicting_download(entry: int) -> tuple[str, str]:
            i = int(d_order[entry])
            shifted = activity.timestamps(np.array([dl["created_us"][i] + int(rng.integers(1, 60)) * activity.US]))[0]
            return (export.download_line(int(dl["download_id"][i]), shifted, int(dl["user_id"][i]), d_line_uid[i],
                                         prompt_json[dl["session"][i]]), f"created_at {shifted} vs {d_ts[i]}")

        defects.plant_lines(download_lines, keys, avail,
                            self.kinds("malformed_json", "wrong_type", "conflicting_primary_key", "duplicate_row"), rate, rng,
                            conflicting=conflicting_download)

        # write the day's files ---------------------------------------------------------------
        for table, lines in (("users", user_lines), ("images", image_lines), ("rankings", ranking_lines),
                             ("downloads", download_lines)):
            final, rows = lines.finish()
            self.sink.write_table(d.day, table, final)
            self.lines[table] += len(final)
            self.defect_rows.extend(rows)

        self._ground_truth(d, index, last_day, slot_uid, best_uid, expected, model_ids, img_ts, r_ts, blob_of)

    def _decisions(self, rk: dict, r: int, key: str) -> list[defects.Record]:
        out = []
        if rk["banned"][r]:
            out.append(defects.Record("banned_user", key, defects.DECISIONS["banned_user"],
                                      f"user {int(rk['user_id'][r])} is on the banned list"))
        if rk["nsfw_prompt"][r]:
            out.append(defects.Record("nsfw_prompt", key, defects.DECISIONS["nsfw_prompt"],
                                      "prompt contains a listed phrase"))
        if rk["content_filtered"][r]:
            out.append(defects.Record("content_filtered", key, defects.DECISIONS["content_filtered"],
                                      "a shown image is CONTENT_FILTERED"))
        return out

    def _ground_truth(self, d, index, last_day, slot_uid, best_uid, expected, model_ids, img_ts, r_ts, blob_of):
        cfg = self.config
        img, rk = d.images, d.rankings
        uid_arr = np.asarray(img["uid"], dtype=object)
        shown = np.arange(activity.SLOTS)[None, :] < rk["n_shown"][:, None]
        offsets = np.concatenate([[0], np.cumsum(rk["n_shown"])]).astype(np.int32)

        def lists(values: np.ndarray, kind: pa.DataType) -> pa.Array:
            return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values[shown].tolist(), type=kind))

        late = rk["late"]
        exported = ~(late & last_day)
        file_day = np.where(late, "" if last_day else cfg.day(index + 1), d.day)
        exp_text = np.asarray(TREATMENTS, dtype=object)[expected]
        exp_text = np.where(exported, exp_text, "pending")
        ents = np.maximum(rk["slot_entity"], 0)
        model_arr = np.asarray(model_ids, dtype=object)
        sessions = rk["session"]
        self.ranking_gt.append(pa.table({
            "ranking_id": rk["ranking_id"], "user_id": rk["user_id"], "created_at": r_ts,
            "dt": pa.array([f if x else None for f, x in zip(file_day.tolist(), exported.tolist())], pa.string()),
            "exported": exported, "n_shown": rk["n_shown"].astype(np.int8),
            "image_uids": lists(slot_uid, pa.string()), "model_ids": lists(model_arr[ents], pa.string()),
            "utilities": lists(rk["utility"], pa.float64()), "p_best": lists(rk["p_best"], pa.float64()),
            "p_none": rk["p_tie"], "p_0": rk["p_0"], "p_1": rk["p_1"], "p_tie": rk["p_tie_pair"],
            "best_index": rk["best"].astype(np.int8), "best_image_uid": best_uid.astype(str).tolist(),
            "prompt": [d.session_text[k] for k in sessions.tolist()],
            "prompt_canonical": [d.session_canonical[k] for k in sessions.tolist()],
            "expected": exp_text.tolist(),
            "labelled": exported & (exp_text == "accept") & (rk["n_shown"] == 2),
        }))
        n_img = len(img["uid"])
        columns = {
            "image_uid": img["uid"], "image_id": img["image_id"], "dt": [d.day] * n_img, "created_at": img_ts,
            "user_id": img["user_id"], "model_id": model_ids,
            "generator": np.asarray(world.MODEL_IDS, dtype=object)[img["model"]].tolist(),
            "is_content_filtered": img["is_cf"], "orphan": img["orphan"],
        }
        for k, a in enumerate(world.ATTRIBUTES):
            columns[f"target_{a}"] = img["target"][:, k].astype(np.int8)
        for k, a in enumerate(world.ATTRIBUTES):
            columns[f"rendered_{a}"] = img["rendered"][:, k].astype(np.int8)
        columns.update({
            "match": img["match"], "quality": img["quality"], "blur": img["blur"], "noise": img["noise"],
            "artefacts": img["artefacts"], "utility": img["utility"],
            "blob_defect": pa.array([blob_of[e][0] if e in blob_of else None for e in range(n_img)], pa.string()),
        })
        self.image_gt.append(pa.table(columns))
        # render tasks and duplicate groups
        members: dict[int, list] = {}
        for e in np.flatnonzero(img["dup_kind"] > 0).tolist():
            src = int(img["dup_source"][e])
            kind = "exact" if img["dup_kind"][e] == 1 else "near"
            transform = "identical" if kind == "exact" else render.NEAR_TRANSFORMS[img["near_transform"][e]]
            members.setdefault(src, []).append((img["uid"][e], kind, transform))
        for src in sorted(members, key=lambda s: int(img["image_id"][s])):
            self.dup_rows.append({"source_image_id": int(img["image_id"][src]), "source_uid": img["uid"][src],
                                  "members": members[src]})
        if cfg.no_images:
            return
        for e in np.argsort(img["image_id"], kind="stable").tolist():
            if img["dup_kind"][e] > 0:
                continue
            spec = (int(img["rendered"][e][0]), int(img["rendered"][e][1]), int(img["rendered"][e][2]),
                    int(img["rendered"][e][3]), int(img["rendered"][e][4]), float(img["blur"][e]),
                    float(img["noise"][e]), int(img["artefacts"][e]), int(img["layout"][e]), bool(img["is_cf"][e]))
            self.tasks.append((str(self.sink.image_root), cfg.image_size, uid_arr[e], spec, blob_of.get(e),
                               members.get(e, [])))


def simulate(home: DataHome, config: SimConfig, progress: Progress = silent, sink=None) -> SimReport:
    """Write a simulated raw zone and its ground truth under ``home.root``; deterministic in ``config``.

    ``sink`` receives each day's tables and names the blob folder (default: the raw zone's files);
    ``simulator.appdb_sink.AppDatabaseSink`` writes into the app's database instead.
    """
    config.validate()
    run = _Run(home, config, sink)
    try:
        report = _simulate(home, config, run, progress)
    except BaseException:
        run.sink.abort()
        raise
    run.sink.finish()
    return report


def _simulate(home: DataHome, config: SimConfig, run: _Run, progress: Progress) -> SimReport:
    for index in range(config.days):
        run.day(index)
        progress("days", index + 1, config.days)

    banned = sorted(u["user_id"] for u in run.user_gt if u["is_banned"])
    export.write_text_lines(home.banned_users_file, [str(u) for u in banned])
    export.write_text_lines(home.nsfw_phrases_file, list(world.NSFW_PHRASES))

    rendered: dict[str, tuple] = {}
    blobs = 0
    if not config.no_images:
        run.sink.image_root.mkdir(parents=True, exist_ok=True)
        total = len(run.tasks)
        progress("images", 0, total)
        workers = min(config.workers, os.cpu_count() or 1)
        if workers > 1 and total >= 64:
            # spawn, not fork: the caller may be a threaded orchestrator process
            # a pool whose workers end with the command, at once when it is stopped (review rev30c)
            with worker_pool(workers, multiprocessing.get_context("spawn")) as pool:
                results = pool.map(_render_group, run.tasks, chunksize=8)
                for done, result in enumerate(results, 1):
                    for uid, detail, distance, written in result:
                        rendered[uid] = (detail, distance)
                        blobs += written
                    if done % 16 == 0 or done == total:
                        progress("images", done, total)
        else:
            for done, task in enumerate(run.tasks, 1):
                for uid, detail, distance, written in _render_group(task):
                    rendered[uid] = (detail, distance)
                    blobs += written
                progress("images", done, total)

    summary = _write_ground_truth(home, config, run, rendered)
    report = SimReport(home=str(home.root), config=config.as_dict(),
                       days=[config.day(i) for i in range(config.days)])
    report.users = len(run.user_gt)
    report.images = summary["counts"]["images"]
    report.rankings = summary["counts"]["rankings"]
    report.rankings_pending = run.pending
    report.downloads = summary["counts"]["downloads"]
    report.blobs_written = blobs
    report.lines = dict(run.lines)
    report.defects = dict(summary["defects"])
    report.duplicate_groups = dict(summary["duplicate_groups"])
    report.tie_rate = summary["tie_rate"]
    report.bayes_optimal_accuracy = summary["bayes_optimal_accuracy"]
    report.model_ranking = summary["model_ranking"]
    return report


def _write_ground_truth(home: DataHome, config: SimConfig, run: _Run, rendered: dict) -> dict:
    gt = home.ground_truth

    # duplicates: planted groups, then the CONTENT_FILTERED blanks (all the same black PNG)
    dup = []
    group = 0
    for g in run.dup_rows:
        dup.append({"group_id": group, "image_uid": g["source_uid"], "kind": "source", "transform": "original",
                    "detail": None, "phash_distance": 0 if rendered else None, "source_uid": g["source_uid"]})
        for uid, kind, transform in g["members"]:
            detail, distance = rendered.get(uid, (None, None))
            dup.append({"group_id": group, "image_uid": uid, "kind": kind, "transform": transform,
                        "detail": detail, "phash_distance": distance, "source_uid": g["source_uid"]})
        group += 1
    cf = sorted(run.cf_uids)
    if len(cf) > 1:
        for k, (_, uid) in enumerate(cf):
            dup.append({"group_id": group, "image_uid": uid, "kind": "source" if k == 0 else "exact",
                        "transform": "original" if k == 0 else "content_filtered_blank",
                        "detail": "all-black image", "phash_distance": 0 if rendered else None,
                        "source_uid": cf[0][1]})
    dup_schema = pa.schema([("group_id", pa.int64()), ("image_uid", pa.string()), ("kind", pa.string()),
                            ("transform", pa.string()), ("detail", pa.string()), ("phash_distance", pa.int64()),
                            ("source_uid", pa.string())])
    export.write_parquet_unless_same(gt / "duplicates.parquet", pa.Table.from_pylist(dup, schema=dup_schema))

    defect_schema = pa.schema([("defect", pa.string()), ("table", pa.string()), ("dt", pa.string()),
                               ("line_number", pa.int64()), ("key", pa.string()), ("expected", pa.string()),
                               ("detail", pa.string())])
    rows = sorted(run.defect_rows, key=lambda r: (r["dt"], r["table"], r["line_number"], r["defect"]))
    export.write_parquet_unless_same(gt / "defects.parquet", pa.Table.from_pylist(rows, schema=defect_schema))

    export.write_parquet_unless_same(gt / "users.parquet", pa.Table.from_pylist(run.user_gt))
    images = pa.concat_tables(run.image_gt)
    export.write_parquet_unless_same(gt / "images.parquet", images)
    rankings = pa.concat_tables(run.ranking_gt)
    export.write_parquet_unless_same(gt / "rankings.parquet", rankings)

    # models: analytic quality, empirical win rate in labelled 2-image rankings
    quality = world.model_true_quality()
    order = sorted(quality, key=lambda m: -quality[m])
    labelled = rankings.filter(rankings["labelled"])
    wins, shows = {m: 0.0 for m in quality}, {m: 0 for m in quality}
    best = labelled["best_index"].to_numpy()
    for k in range(2):
        shown_models = pc.list_element(labelled["model_ids"], k).to_numpy(zero_copy_only=False)
        score = np.where(best < 0, 0.5, (best == k).astype(float))
        for m in quality:
            hit = shown_models == m
            shows[m] += int(hit.sum())
            wins[m] += float(score[hit].sum())
    models = {}
    for m in world.MODELS:
        models[m.model_id] = {
            "true_quality": quality[m.model_id], "true_rank": order.index(m.model_id) + 1, "mix": m.mix,
            "attribute_accuracy": dict(zip(world.ATTRIBUTES, m.accuracy)), "blur": m.blur, "noise": m.noise,
            "artefacts_per_image": m.artefacts, "steps": m.steps, "scheduler_cls": m.scheduler_cls,
            "empirical_win_rate": round(wins[m.model_id] / shows[m.model_id], 6) if shows[m.model_id] else None,
        }
    models[world.CONTENT_FILTERED] = {
        "true_quality": quality[world.CONTENT_FILTERED], "true_rank": len(order),
        "note": "provider safety filter: an all-black image replaces the generation",
        "empirical_win_rate": (round(wins[world.CONTENT_FILTERED] / shows[world.CONTENT_FILTERED], 6)
                               if shows[world.CONTENT_FILTERED] else None),
    }
    export.write_unless_same(gt / "models.json", (json.dumps(models, indent=2, sort_keys=True) + "\n").encode())

    p0, p1, pt = (labelled[c].to_numpy() for c in ("p_0", "p_1", "p_tie"))
    n_lab = labelled.num_rows
    bayes = float(np.mean(np.maximum.reduce([p0 + 0.5 * pt, p1 + 0.5 * pt, pt + 0.5 * (p0 + p1)]))) if n_lab else 0.0
    tie_rate = float(np.mean(best < 0)) if n_lab else 0.0
    exported = rankings.filter(rankings["exported"])
    exported_best = exported["best_index"].to_numpy()
    defect_counts: dict[str, int] = {}
    for row in run.defect_rows:
        defect_counts[row["defect"]] = defect_counts.get(row["defect"], 0) + 1
    from simulator import MODEL_DESCRIPTION
    summary = {
        "config": config.as_dict(),
        "counts": {
            "users": len(run.user_gt), "active_users": sum(u["is_active"] for u in run.user_gt),
            "banned_users": sum(u["is_banned"] for u in run.user_gt), "images": images.num_rows,
            "rankings": rankings.num_rows, "rankings_exported": exported.num_rows,
            "rankings_pending": run.pending, "rankings_labelled": n_lab,
            "four_image_rankings": int(pc.sum(pc.equal(rankings["n_shown"], 4)).as_py() or 0),
            "downloads": run.downloads,
            "lines": dict(run.lines), "prompts_distinct": pc.count_distinct(rankings["prompt"]).as_py(),
            "prompts_canonical_distinct": pc.count_distinct(rankings["prompt_canonical"]).as_py(),
        },
        "defects": dict(sorted(defect_counts.items())),
        "duplicate_groups": {
            "groups": len({d["group_id"] for d in dup}),
            "exact": sum(d["kind"] == "exact" for d in dup), "near": sum(d["kind"] == "near" for d in dup),
            "near_phash_max": max((d["phash_distance"] for d in dup if d["kind"] == "near"
                                   and d["phash_distance"] is not None), default=None),
        },
        "tie_rate": tie_rate,
        "tie_rate_expected": float(pt.mean()) if n_lab else 0.0,
        "tie_rate_all_exported": float(np.mean(exported_best < 0)) if exported.num_rows else 0.0,
        "tie_weight": run.state.tie_weight,
        "bayes_optimal_accuracy": bayes,
        "model_ranking": order,
        "model_description": MODEL_DESCRIPTION,
    }
    export.write_unless_same(gt / "summary.json", (json.dumps(summary, indent=2, sort_keys=True) + "\n").encode())
    return summary
