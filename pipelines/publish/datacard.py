"""The dataset card (``README.md``) of a published version: Hugging Face ``configs`` and a datasheet.

The YAML header declares the data files, so ``datasets.load_dataset(<version folder>)`` reads the
five splits from the tar shards instead of guessing a builder from every file it finds (the
``meta/`` tables would be mixed in). It declares no second config for the Parquet sidecars:
``datasets`` infers one builder per folder from the first config's files (``LocalDatasetModuleFactory``
in ``datasets/load.py``), so a Parquet config beside the tar one is read by the webdataset builder
and fails; the card shows the ``load_dataset("parquet", data_files=...)`` call instead. The datasheet below it is written from the
version's own meta tables (how the data was collected and curated, every filter with its count,
split method and sizes, tie rate, known limits), so it is a pure function of the version's inputs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from formats.dataset import shard_glob
from formats.files import write_bytes_atomic
from schemas.publish import SAMPLE_COLUMNS

CARD_FILE = "README.md"
# The card's code version, hashed into the version id (:func:`pipelines.publish.samples.version_id`) and recorded in
# the manifest: bump it whenever this module writes other text for the same version folder, so that a publish with
# the same inputs makes a new version with the new card (its shards hard-linked from the old one) instead of taking
# the complete folder of the old card as the version (review rev31d: a card fix never reached an existing `latest`).
# 1: images counted once each (not once per export day), "not enough data" reasons as kept (rev31d)
# 2: "Known limits" names the images deduplicated by identical bytes only, and symmetric images (rev34b)
# 3: "Known limits" names the images symmetric both ways, deduplicated by identical bytes only (rev34k)
CARD_VERSION = "3"


PUBLIC_DEFAULT = "public-default"   # CardSources.pseudonym_secret: the documented default, anyone can reverse
PRIVATE = "private"                 # another secret (the card never knows which)


@dataclass(frozen=True)
class CardSources:
    """Facts the card needs that are not in the version's meta tables."""

    days: list[str]
    split_rejects: dict[str, int] = field(default_factory=dict)   # reason -> rows dropped to keep splits leak-free
    # the policy the decisions were built with, as they record it (pipelines.curation.decisions.read_policy;
    # {}: not recorded, the card then names no number)
    policy: dict = field(default_factory=dict)
    # which secret keyed the user_id pseudonyms (PUBLIC_DEFAULT, PRIVATE, or None: split_pairs records no key check)
    pseudonym_secret: str | None = None
    # the splits settings split_pairs records (pipelines.splits.assign.read_settings_record: heldout_fraction,
    # unique_prompts; {}: not recorded, the card then names the defaults as defaults)
    split_settings: dict = field(default_factory=dict)
    # (size, quality) of the training JPEGs, from their keys' folder (meta.train_jpeg_formats; []: not known)
    train_jpegs: list[tuple[int, int]] = field(default_factory=list)

    def nsfw_threshold(self) -> float | None:
        value = self.policy.get("nsfw_threshold")
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    def nsfw_classes(self) -> list[str] | None:
        value = self.policy.get("nsfw_classes")
        return [str(c) for c in value] if isinstance(value, list) else None

    def near_duplicate_k(self) -> int | None:
        dedup = self.policy.get("dedup")
        value = dedup.get("k") if isinstance(dedup, dict) else None
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    def curation(self) -> dict:
        """What ``manifest.json`` records of how the version was curated (null where not recorded)."""
        reversible = None if self.pseudonym_secret is None else self.pseudonym_secret == PUBLIC_DEFAULT
        return {"nsfw_classes": self.nsfw_classes(), "nsfw_threshold": self.nsfw_threshold(),
                "near_duplicate_max_distance": self.near_duplicate_k(),
                "pseudonyms": {"secret": self.pseudonym_secret, "reversible": reversible}}


def configs_yaml(splits: list[str], paths: dict[str, str] | None = None) -> str:
    """The ``configs`` block: each split's files, by default the tar shards of a version (one builder per
    folder: webdataset); ``paths`` (split -> path or glob, relative to the card) for other files, as the
    ``pickapic export`` card gives its ``<split>.parquet`` files (:func:`export_card`)."""
    lines = ["configs:", "- config_name: default", "  default: true", "  data_files:"]
    for split in splits:
        path = paths[split] if paths is not None else f"{split}/{shard_glob(split)}"
        lines += [f"  - split: {split}", f"    path: \"{path}\""]
    return "\n".join(lines) + "\n"


def export_card(version: str, files: dict[str, str], rows: dict[str, int]) -> str:
    """The ``README.md`` of a ``pickapic export --format pickscore-parquet`` folder: the ``configs`` block
    naming each split's file (``files``: split -> file name), as the version's own card does, so
    ``datasets.load_dataset(<folder>)`` gives the splits as exported. Without it ``datasets`` guesses the
    splits from the file names and merges ``validation_unique.parquet`` into ``validation`` and
    ``test_unique.parquet`` into ``test`` (review rev28c). Names the version exported (a pure function of it)."""
    table = _table(["split", "pairs", "file"], [[split, rows[split], f"`{files[split]}`"] for split in files])
    return f"""---
{configs_yaml(list(files), files)}---

# Pick-a-Pic preference pairs: export of dataset version `{version}`

Written by `pickapic export --format pickscore-parquet` from the published dataset version `{version}` (its
dataset card, `README.md` in the version's folder, describes how it was collected, curated and split). One
Parquet file per split in the released Pick-a-Pic schema, `jpg_0` / `jpg_1` holding the JPEG bytes; every file
also names the version in its Parquet metadata (`dataset_version`).

{table}

```python
import datasets
splits = datasets.load_dataset("path/to/this/folder")   # the splits above, as this card declares them
```

The `_unique` splits repeat pairs of `validation` and `test` (one pair per prompt): keep them apart, as the
`configs` above do.
"""


def dataset_info_yaml(pairs: dict[str, int]) -> str:
    """The ``dataset_info`` block: the features of a sample and each split's size (``datasets`` checks both).

    Declared rather than inferred: ``datasets`` would guess them from five samples, and five ties in a
    row would type ``best_image_uid`` as null.
    """
    lines = ["dataset_info:", "  features:", "  - name: 0.jpg", "    dtype: image", "  - name: 1.jpg",
             "    dtype: image", "  - name: json", "    struct:"]
    for column in SAMPLE_COLUMNS:
        lines += [f"    - name: {column.name}", f"      dtype: {_hf_dtype(column.type)}"]
    lines += ["  - name: txt", "    dtype: string", "  - name: __key__", "    dtype: string", "  - name: __url__",
              "    dtype: string", "  splits:"]
    for split, count in pairs.items():
        lines += [f"  - name: {split}", f"    num_examples: {count}"]
    return "\n".join(lines) + "\n"


def _hf_dtype(arrow_type: pa.DataType) -> str:
    """The ``datasets`` dtype a JSON member value of ``arrow_type`` reads back as."""
    if pa.types.is_integer(arrow_type):
        return "int64"
    if pa.types.is_floating(arrow_type):
        return "float64"
    if pa.types.is_boolean(arrow_type):
        return "bool"
    return "string"       # strings, and timestamps / dates written as ISO text


def write_card(version_dir: Path, version: str, splits: list[str], sources: CardSources) -> Path:
    """Write ``README.md`` into ``version_dir`` (its meta tables must already be there)."""
    path = version_dir / CARD_FILE
    write_bytes_atomic(path, render(version_dir, version, splits, sources).encode("utf-8"))
    return path


def _jpeg_text(formats: list[tuple[int, int]]) -> str:
    """What the card says of the training JPEGs' size and quality (review rev30d: "at most 512 px" was a literal)."""
    if not formats:
        return "at most `features.train_size` px on the short side (a size not recorded in this version's keys)"
    sizes, qualities = sorted({s for s, _ in formats}), sorted({q for _, q in formats})
    built = f" (`features.train_size` {', '.join(map(str, sizes))} across its days)" if len(sizes) > 1 else ""
    return (f"at most {sizes[-1]} px on the short side{built}, JPEG quality "
            f"{', '.join(map(str, qualities))}")


def _percent(fraction: float) -> str:
    return f"{format(fraction * 100, '.6g')}%"


def _table(header: list[str], rows: list[list[object]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return "\n".join(out)


def _counts(path: Path, columns: list[str], where: tuple[str, object] | None = None) -> list[list[object]]:
    """Row counts of a meta table grouped by ``columns``, sorted by the group."""
    table = pq.read_table(path, columns=columns + ([where[0]] if where else []))
    if where:
        table = table.filter(pc.equal(table.column(where[0]), where[1]))
    grouped = table.group_by(columns).aggregate([([], "count_all")]).to_pylist()
    return sorted(([row[c] for c in columns] + [row["count_all"]] for row in grouped), key=lambda r: [str(v) for v in r])


FILE_LEVEL = {"missing_file": "missing", "unreadable_file": "unreadable"}   # quarantine reasons of a whole file


def _quarantined(path: Path) -> list[list[object]]:
    """(table, reason, lines) of ``meta/quarantine.parquet``, sorted: lines are the summed ``line_count`` of its
    line-level rows (identical bad lines share one row), as ``pickapic query --named quarantine_reasons`` counts
    them; a file-level row (``line_number`` 0: a missing or unreadable file) is no line, and is shown as files
    (review rev30f: the card counted rows, 100 identical lines as 1 and a missing file as 1 line)."""
    table = pq.read_table(path, columns=["table", "reason", "line_number", "line_count"])
    lines: dict[tuple[str, str], int] = {}
    files: dict[tuple[str, str], int] = {}
    for row in table.to_pylist():
        key = (row["table"], row["reason"])
        lines.setdefault(key, 0)
        if row["line_number"] > 0:
            lines[key] += row["line_count"]
        else:
            files[key] = files.get(key, 0) + 1
    out = []
    for key in sorted(lines):
        count, whole = lines[key], files.get(key, 0)
        shown = f"{count:,}"
        if whole:
            what = f"{whole:,} file{'s' * (whole != 1)} {FILE_LEVEL.get(key[1], 'quarantined whole')}"
            shown = what if count == 0 else f"{shown} (and {what})"
        out.append([*key, shown])
    return out


def _distinct_images(folder: Path) -> int:
    """Distinct ``image_uid`` of the ``meta/images`` snapshot: it holds one row per image and export day, so an
    image a later day exported again is one image, not two (review rev31d: the card counted rows)."""
    uids = pa.chunked_array([chunk for path in sorted(folder.glob("*.parquet"))
                             for chunk in pq.read_table(path, columns=["image_uid"]).column("image_uid").chunks],
                            pa.string())
    return len(pc.unique(uids))


def _noise_points(prompts: int) -> float:
    """One standard error, in accuracy points, of an accuracy measured on ``prompts`` independent pairs (p = 0.5,
    the widest): what the card says of the ``_unique`` splits' sampling noise."""
    return 50 / prompts ** 0.5


def _heldout_text(record: dict | None) -> tuple[str, str]:
    """What the card says of how this version's held-out users were chosen, from the ledger rules ``split_pairs``
    records (``heldout_users``: split -> rule -> users of the split; None: not recorded), and a Known-limits
    line when early users filled validation / test (review rev30f: the card called every version's held-out users
    a salted-hash sample)."""
    if record is None:
        return ("how each of this version's held-out users was chosen is not recorded in it (split before splits code "
                "version 13)", "")
    names = {"fill": "filled in as early users (the fill rule)", "hash": "by the salted hash",
             "published": "kept where a published version had them (re-seeded ledger)"}
    parts = []
    for split in ("validation", "test"):
        rules = record.get(split) or {}
        total = sum(rules.values())
        said = ", ".join(f"{n:,} {names.get(rule, f'by rule `{rule}`')}" for rule, n in sorted(rules.items()) if n)
        parts.append(f"`{split}` {total:,} user{'s' * (total != 1)}" + (f": {said}" if said else ""))
    filled = sum((record.get(s) or {}).get("fill", 0) for s in ("validation", "test"))
    held = sum(sum((record.get(s) or {}).values()) for s in ("validation", "test"))
    limit = (f"- {filled:,} of the {held:,} held-out users are the app's early users, put in validation / test by "
             "the fill rule in order of arrival, not a random sample: they may differ from train's users in when "
             "they joined and how they use the app.\n") if filled else ""
    return "; ".join(parts), limit


def render(version_dir: Path, version: str, splits: list[str], sources: CardSources) -> str:
    """The card's text."""
    meta = version_dir / "meta"
    summary = {row["split"]: row for row in pq.read_table(meta / "splits_summary.parquet").to_pylist()}
    images = _distinct_images(meta / "images")
    dropped = _counts(meta / "decisions.parquet", ["subject", "reason"], ("keep", False))
    quarantined = _quarantined(meta / "quarantine.parquet")
    size_rows = []
    for split in splits:
        s = summary[split]
        size_rows.append([f"`{split}`", f"{s['num_pairs']:,}", f"{s['num_rankings']:,}", f"{s['num_users']:,}",
                          f"{s['num_prompts']:,}", f"{s['tie_rate']:.1%}", s["num_shards"], f"{s['num_bytes'] / 1e6:,.1f}"])
    pairs = sum(summary[s]["num_pairs"] for s in splits if not s.endswith("_unique"))
    ties = sum(summary[s]["num_ties"] for s in splits if not s.endswith("_unique"))
    first, last = (sources.days[0], sources.days[-1]) if sources.days else ("-", "-")
    rejects = [[reason, f"{count:,}"] for reason, count in sources.split_rejects.items()]
    threshold, classes, k = sources.nsfw_threshold(), sources.nsfw_classes(), sources.near_duplicate_k()
    nsfw_classes = ("NudeNet classes " + ", ".join(f"`{c}`" for c in classes)) if classes is not None else \
        "NudeNet exposed-nudity classes"
    # the threshold as recorded (repr: what the manifest says; {:g} rounded 0.4999999 to 0.5, review rev28d)
    nsfw_rule = f"{nsfw_classes} at score >= {threshold!r}" if threshold is not None else \
        f"{nsfw_classes} at the score threshold of the curation, not recorded in this version"
    distance = f"pHash Hamming distance <= {k}" if k is not None else \
        "a pHash Hamming distance not recorded in this version"
    nsfw_reasons = f"""`nsfw` ({nsfw_rule}) and `nsfw_cluster` (an exact or near
duplicate of one, near meaning {distance})"""
    nsfw_limit = "The NSFW filter is a classifier at a fixed threshold" + \
        (f" (score >= {threshold!r})" if threshold is not None else "") + \
        "; it misses some images and drops some safe ones."
    if classes == []:   # curated with curation.nsfw_classes empty: no image was screened (review rev28d)
        nsfw_reasons = """`nsfw` and `nsfw_cluster`: none, no NSFW filter was applied to this version
(`curation.nsfw_classes` was empty: no NudeNet class flags an image, whatever its score)"""
        nsfw_limit = ("**No NSFW filter was applied** (`curation.nsfw_classes` was empty): the images were not "
                      "screened for nudity; only the prompt phrase list and the provider's content filter apply.")
    fraction, unique = sources.split_settings.get("heldout_fraction"), sources.split_settings.get("unique_prompts")
    unique_cap = f"{unique:,} prompts each (`splits.unique_prompts`" if unique is not None else \
        "`splits.unique_prompts` prompts each (500 by default"
    heldout = f"`splits.heldout_fraction` = {_percent(fraction)} of the users" if fraction is not None else \
        "a configured fraction, 6% by default"
    min_rows = sources.split_settings.get("min_unique_rows")
    fill_until = f"`splits.min_unique_rows` = {min_rows:,}" if min_rows is not None else \
        "`splits.min_unique_rows` (10 by default)"
    heldout_users, heldout_limit = _heldout_text(sources.split_settings.get("heldout_users"))
    tie_share = (f"{ties / pairs:.1%} of the pairs in train / validation / test are ties" if pairs else
                 "this version holds no pair in train / validation / test")
    unique_sizes = [summary[split]["num_prompts"] for split in splits if split.endswith("_unique")]
    smallest = min(unique_sizes) if unique_sizes else 0
    noise = (f"with {smallest:,} prompts in the smaller one here, their accuracy has about "
             f"+-{_noise_points(smallest):.0f} points of sampling noise (one standard error)") if smallest else \
        "no accuracy can be measured on an empty one"
    unique_limit = (f"keep at most {unique:,} prompts (`splits.unique_prompts`)" if unique is not None else
                    "keep at most `splits.unique_prompts` prompts") + f": {noise}."
    public = sources.pseudonym_secret == PUBLIC_DEFAULT
    user_id = ("an HMAC pseudonym of the app's id keyed with the public default secret: reversible, see Known "
               "limits") if public else "a keyed HMAC pseudonym, never the app's id"
    secret_limit = (
        "- **The `user_id` pseudonyms are keyed with the public default secret** (`curation.pseudonym_secret` was "
        "left at the documented `pickapic-local-dev-secret`): anyone can reverse them to the app's user ids by "
        "hashing candidate ids, so this version is for local use only, not a release. Set a private secret in the "
        "data home's `pickapic.toml` (`[curation] pseudonym_secret = \"...\"`), carry the split ledger over to it "
        "(`PICKAPIC_OLD_PSEUDONYM_SECRET=pickapic-local-dev-secret python -m pipelines.splits.rekey --home HOME`) "
        "and build again.\n") if public else ""
    return f"""---
pretty_name: Pick-a-Pic preference pairs ({version})
task_categories:
- text-to-image
tags:
- human-preference
- webdataset
- pickscore
{configs_yaml(splits)}{dataset_info_yaml({split: summary[split]["num_pairs"] for split in splits})}---

# Pick-a-Pic preference pairs, version `{version}`

Pairs of generated images shown to users of a text-to-image app for one prompt, with the user's
choice (image 0 better, image 1 better, or a tie), from the app's exports of {first} to {last}.
{pairs:,} pairs in train / validation / test ({ties / pairs if pairs else 0:.1%} ties), built by
pickapic-pipeline. Every file of this folder is listed with its sha256 in `manifest.json`.

## Loading

```python
import datasets
folder = "path/to/this/folder"
ds = datasets.load_dataset(folder)     # the tar shards: columns 0.jpg, 1.jpg, json, txt, __key__, __url__
pairs = datasets.load_dataset("parquet", data_files={{s: f"{{folder}}/{{s}}/pickapic-{{s}}-*.parquet"
                                                     for s in ("train", "validation", "test")}})  # sidecars: no image bytes
counts = datasets.load_dataset("parquet", data_files={{"train": f"{{folder}}/train/prompt_counts.parquet"}})
```

With `webdataset`: the shard names of a split are the keys of `<split>/sizes.json` (with their
sample counts). A shard holds pairs of one export day, grouped by user, so shuffle when reading:
`wds.WebDataset(urls, shardshuffle=len(urls)).shuffle(5000)`. The loss weight of the PickScore
objective, `num_example_per_prompt` (rows with the same `prompt_key` in the split), is in
`<split>/prompt_counts.parquet`, not in the shards: it changes for old pairs whenever a new day reuses
their prompt, and the shards stay byte-identical from one nightly version to the next.

## Sizes

{_table(["split", "pairs", "rankings", "users", "prompts", "tie rate", "shards", "MB"], size_rows)}

`validation_unique` / `test_unique` hold one labelled pair per prompt of their parent split, up to
{unique_cap}; the evaluation sets of the PickScore metric).

## Fields

Each sample: `KEY.0.jpg`, `KEY.1.jpg` (the two training JPEGs, {_jpeg_text(sources.train_jpegs)},
bytes as encoded by the feature stage), `KEY.txt` (the prompt), `KEY.json` (every pair column).
Columns: `pair_id`, `ranking_id`, `pair_index`, `user_id` ({user_id}),
`caption`, `created_at` (UTC), `image_0_uid`, `image_1_uid`, `label_0`, `label_1` (1/0, 0/1 or
0.5/0.5 for a tie), `best_image_uid` (null for a tie), `has_label`, `are_different` (different
generator models), `model_0`, `model_1`, `cluster_0`, `cluster_1` (near-duplicate cluster of each
image), `sha256_0`, `sha256_1` (of each image's original PNG in the app's store), `jpg_0_key`,
`jpg_1_key` (the training JPEG in the pipeline's store), `jpg_0_sha256`, `jpg_1_sha256` (of the JPEG
bytes in this tar: verify a member with them), `dt` (export day), `split`, `prompt_key` (normalized
prompt). Sidecars add the member offsets and sizes inside the tar.

## Collection

Users of the app wrote a prompt, were shown two (before mid-February 2023 sometimes four) images
generated for it by different models and settings, and clicked the better one or declared a tie.
The app's daily exports (users, images, rankings, downloads) were ingested with a contract per table;
lines that break it were quarantined with a reason. Emails and names never leave the raw zone.
A 4-image ranking with a chosen image gives one pair of the chosen image against each other shown
image; a 4-image tie gives every pair as a tie.

## Curation: every filter and its count

Raw lines quarantined at ingest (table, reason, lines; identical bad lines count each, a missing or
unreadable file is counted as a file, not a line):

{_table(["table", "reason", "lines"], quarantined) if quarantined else "none"}

Decisions (subject, reason, subjects dropped), from {images:,} fingerprinted images (sha256, pHash,
dHash, NudeNet):

{_table(["subject", "reason", "dropped"], dropped) if dropped else "none"}

Reasons: {nsfw_reasons}, `content_filtered` (blanked by the provider's filter),
`feature_rejected` (undecodable or unsafe image), `banned_user` (the app's moderation list),
`prompt_phrase` (a listed NSFW phrase in the prompt), `conflicting_ranking`, `duplicate_ranking` (a
re-export), `conflicting_image` (an image exported again with other content: every version dropped),
`mismatched_image` (a pair showing an image generated for another prompt or by another user),
`image_dropped` / `all_pairs_dropped` (a pair or ranking left without images), `same_cluster` (both
images are duplicates of each other).

## Splits

No user, no normalized prompt and no duplicate-image cluster is in more than one of train /
validation / test. Each user's split is decided once, when their first pair appears, and never changes (the
split ledger): the first user goes to train; while validation or test own fewer than {fill_until}
prompts, new users fill them in order of arrival, at most one held-out user per train user (the fill rule: a
young app's validation and test users are its early users); after that a user is held out by a salted
hash of their pseudonym ({heldout},
half validation and half test). This version's held-out users: {heldout_users}.
Each prompt and cluster belongs to the split of the first row that used it, and later rows that would
leak it were dropped:

{_table(["reason", "rows dropped"], rejects) if rejects else "none"}

## Known limits

- Labels are single clicks of app users, not expert ratings; {tie_share}.
{heldout_limit}{secret_limit}- Users are pseudonymous but their prompts are free text and may identify them.
- {nsfw_limit}
- Near-duplicate detection uses perceptual hashes ({distance}): heavy edits are not caught.
  Images with almost no texture (flat colours, smooth gradients such as skies, horizons, vignettes) are
  deduplicated by identical bytes only: a re-encode or resize of one is not caught and may be in another
  split. Mirror-symmetric images (a signature or watermark in a corner included) are near duplicates only
  when both their pHash and dHash match; images symmetric both ways (kaleidoscopes, centred emblems) are
  deduplicated by identical bytes only, as flat ones are.
- Shards hold one export day each, grouped by user: read them shuffled, or a batch sees one day
  (and a few users) only.
- `validation_unique` / `test_unique` {unique_limit}
"""
