"""The stages of the asset graph, their code versions and their data versions (no Dagster import: cheap).

Each stage's data version is :func:`pipelines.provenance.combine` of its name, its code version, the
digest of its output-affecting settings and the data versions of its inputs (see
``pipelines/provenance.py``). Bump a stage's code version whenever a code change alters what the stage
writes for the same input: every build after that recomputes the stage and everything downstream.

A stage's code version as the build planner, the build stamp and Dagster see it is :func:`code_version`: the
entry of ``CODE_VERSIONS`` and, for the publish, the data card's own code version
(``pipelines.publish.datacard.CARD_VERSION``, bumped with any change of the card's text), so a card-only change
makes the publish step stale (review rev31l: the planner found it fresh and no build published the new card), and a
digest of the versions of the data contracts the publish gates a version by
(``pipelines.publish.contracts.contract_versions``, in the version id too), so a contract change reruns the publish
and checks ``latest``'s inputs against the new rules (review rev36e).
"""
from __future__ import annotations

from dataclasses import dataclass

# stage -> code version (bump on a change of output for the same input)
CODE_VERSIONS: dict[str, str] = {
    "app_export": "7",    # 2: rows a replica's (or keep_exported_rows') re-export did not read are kept in the
                          #    day's files, where it was refused (RowsWouldVanish) before (rev29c)
                          # 3: a raw row is matched by id and an identity a legitimate edit keeps (rankings: user and
                          #    image uids; downloads: user and image; accounts: the id alone): a row moved and edited,
                          #    an account whose email changed, leave their old day (rev30b, rev30g)
                          # 4: a raw line's id and identity read as written, as the ingest reads them
                          #    (9007199254740993.0 is 2^53 + 1, 4503599627370497.5 no id): a line another exporter
                          #    wrote is no longer taken for a row of another id (rev35a)
                          # 5: a raw line's id read by the fast match only in the plain form: 05 / -05 (not JSON) and
                          #    a key named again with an escape (download\u005fid) read as the ingest reads them, no
                          #    id, so a re-export keeps such a line where it dropped it as a row it read (rev35c)
                          # 6: whether a re-export replaces a raw line is decided by the ingest's reading of its key
                          #    (a member that is no JSON value, text after the object, a raw control character, the
                          #    id named again past the first MiB: no key), so such a line is kept (rev36c)
                          # 7: a raw line's key read whole as the ingest reads it at its max_line_bytes (a longer line
                          #    by its key members, lines.MemberScan; the export's own cut line as its row's): a line
                          #    past 1 MiB of an edited row is replaced, not kept beside it (rev36i)
    "ingest": "9",        # 2: quarantine line_count / last_line_number, relative paths, late images
                          # 3: uids only a JSON decode finds, raw files checked on the open descriptor, file limits
                          # 4: users lines' emails and names masked in the quarantine's raw_text and details (rev25b);
                          #    rev25c rules (nested brackets cleaned whole, empty_prompt, numbers judged as written,
                          #    a rejected version of a key conflicts, a leading BOM skipped) and rev25f (a version
                          #    rejected in the JSON decode conflicts, invisible-only prompts empty, 1e400 as written,
                          #    a day's partition folders hold only its files)
                          # 5: an email whose @ is an HTML character reference or a fullwidth / small look-alike
                          #    masked in the quarantine's raw_text and details (parse.ENCODED_EMAIL_RE);
                          #    rev27b: no line of a gzip member that fails its check (CRC-32, a bad block) is
                          #    ingested, an unexpected_field detail names ten keys then how many more, the
                          #    quarantine's row groups cut by raw_text + detail bytes;
                          #    rev27e: the gzip member a file limit cuts is checked to its end (within
                          #    lines.LIMIT_CHECK_BYTES) before any of its lines is read
                          # 6: a pruned raw day's images (as the warehouse keeps them) still resolve other days'
                          #    references (rev29a: a re-ingest quarantined them as unknown_image_reference)
                          # 7: an integer past Python's 4,300-digit limit judged as written (invalid_value, key kept);
                          #    a line nested too deep or not UTF-8 keeps its readable key (its other versions
                          #    conflict); the .image_exports record written in row groups of 16,384 (rev33i)
                          # 8: a line_too_long line keeps its key read from its bytes, and a rejected line's id is
                          #    judged as written (9007199254740993.0): their other versions conflict (rev34a)
                          # 9: an overlong line that is not JSON at the top level has no key, an id written with
                          #    more than 256 bytes of zeros that do not count keeps it, a line past 64 MiB has
                          #    none (rev34h)
    "features": "12",     # 2: bad_dimensions rejects (max_side, max_aspect), pyspng decode; 3: NudeNet NMS per class
                          # 4: PNG structure checked before decoding; reused_from as a build in day order sets it
                          # 5: PNG check before Pillow's parse: full IHDR, ancillary chunk rules, metadata/chunk limits
                          #    (+ rev18d: compressed chunks read as Pillow does, chunk type letters, whole interlaced stream)
                          # 6: JPEG pre-scan before Pillow (marker/fill/scan floods, scans x pixels, EXIF/MPF tag
                          #    blocks), Pillow given the extension's formats only, reuse judged as a decode (rev24d/h)
                          # 7: a row reused by uid only while its blob is the file it was read from (blobidentity);
                          #    else the blob is read and hashed again (rev29a: a replaced blob was never read)
                          # 8: a JPEG whose image data ends early (libjpeg's grey fill) truncated_image; a RIFF file
                          #    not a WebP not_an_image; a 12-bit / 2-component JPEG unsupported_mode (rev31f)
                          # 9: also a JPEG cut at a restart interval's end, before a marker segment or a stray RSTn,
                          #    or in / before a later scan of one scan per component truncated_image (rev31j)
                          # 10: also a JPEG cut and ended by another marker than its end marker (COM, APPn, RSTn, a
                          #     length past the end), or missing whole restart intervals / with a restart marker's
                          #     number one or two off (libjpeg's grey resync) truncated_image (rev32d)
                          # 11: also a JPEG libjpeg-turbo warns is corrupt (extraneous bytes before a marker: zeroed or
                          #     padded scan data; premature end of data segment: a 16k+1-high 4:2:0 JPEG cut in its last
                          #     MCU row; a bad Huffman / arithmetic code) truncated_image (simplejpeg strict, rev33c)
                          # 12: stray bytes between header segments, and a run of zeros before a marker after whole
                          #     scan data (padding), no longer make a whole JPEG truncated_image (rev33n)
    "dedup": "7",         # 2: band buckets over the cap checked (within a pair budget) or sampled, never skipped
                          # 3: a bucket past the budget searched exactly by sub-bands before representatives
                          # 4: every dHash of a pHash group banded (not its smallest uid's only); the settings
                          #    recorded in the file's metadata (rev28b)
                          # 5: an uninformative pHash (fewer than 16 set bits besides the DC bit: flat or smoothly
                          #    shaded images of any colour) clusters by sha256 only, not by its pHash (rev33u)
                          # 6: a mirror-symmetric pHash (odd DCT terms all 0) is not informative; one not informative
                          #    with a textured dHash (3+ distinct rows) clusters by pHash <= k AND dHash <= 3 (rev34b)
                          # 7: a textured dHash that is a mirror's makes the pHash not informative (keyed); a mirror
                          #    both ways (kaleidoscope, centred emblem) clusters by sha256 only (rev34k)
    "decisions": "14",    # 2: moderation keys read every symbol as a space and fold small capitals (splits 4)
                          # 3: symbol phrases on the symbol-keeping moderation text; keycaps, regional letters, CJK squares (splits 5)
                          # 4: no word boundary needed at an emoji or an unspaced script; decorative marks out; RLO runs in display order
                          # 5: text folds punctuation look-alikes, negative squared letters, drops skin tones; edges as read;
                          #    Katakana look-alikes only in keys; a space before / after an emoji optional (splits 9)
                          #    (rev18e, same version: shaped letters part of a word as typed, Katakana unfolded in keys,
                          #    voiced marks Katakana, a space at an emoji optional inside a glued phrase too)
                          # 6: the Arabic tatweel (kashida) read as nothing; RLO display order without ICU's stale
                          #    buffer; a list that is not UTF-8 refused naming it (rev24a, splits 10)
                          # 7: conflicting_image (an image re-exported with other content), mismatched_image (a shown
                          #    image of another prompt / user); refuses partitions that differ from ingest_files (rev25c)
                          # 8: mismatched_image a pair decision: only the pairs with the mismatched image dropped (rev25f)
                          # 9: nsfw_cluster evidence names the first 10 flagged members and counts them; the policy
                          #    (NSFW classes, threshold, the clusters' settings) in the file's metadata (rev28b)
                          # 10: NudeNet scores compared with the threshold as float32, as they are stored: a score
                          #     recorded as the threshold (0.7) flags the image; the evidence's scores rounded to
                          #     4 decimals as doubles (0.7, not float32's 0.699999988079071) (rev28d)
                          # 11: moderation keys and texts drop every combining mark no precomposed character holds
                          #     (symbol marks, Cyrillic millions signs, glitch-text stacks) and a dot above on a
                          #     soft-dotted letter; the dotless j read as j (rev31g, splits 15)
                          # 12: moderation keys and texts fold a stroked / slashed letter (ø, đ, ł) as its letter, as the
                          #     overlay mark typed on it; keycaps on fullwidth / mathematical digits (and with a
                          #     decorative mark before the keycap) read as the digit (rev32d, splits 16)
                          # 13: the identity of its inputs (files' bytes, moderation lists, policy) in the file's
                          #     metadata, which build_pairs checks: pairs over out-of-date decisions are refused;
                          #     a day's partition repeating a key is refused like a count mismatch (rev32g)
                          # 14: moderation keys and texts fold a letter ICU leaves whole that Unicode names as a base
                          #     letter with an overlay (ⱥ, ꞓ, ꝃ, ӿ) as that letter, as base + overlay mark (rev33c, splits 17)
    "pairs": "2",         # 2: every SDXL beta engine shortened (stable-diffusion-xl-beta-v2-2-4 -> sdxl-beta-v2.2.4)
    "splits": "19",        # 2: user ledger with held-out fill; prompt key without ignorables, confusables folded; 3: capitals folded as their look-alike capitals, format characters and blanks out, NFC after each fold;
                          # 4: Hangul fillers as spaces, every symbol and emoji a separator, small capitals folded (the value stayed "3")
                          # 5: keycaps as their digit, regional indicator runs as letters, CJK square words as their NFKC words
                          # 6: stored key owner pins (split_key_owners): a published prompt or image keeps its split
                          # 7: pins only what was published (from latest's split_pairs, or every retained version's sidecars); split_pairs records its salt
                          # 8: decorative combining marks out of the key; a symbols-only key without spaces, punctuation, skin tones
                          # 9: letters fold to letters (ꓳ as o, not 0), letters ICU reads as punctuation kept; more decorative marks; bracketed-only keys folded, words apart
                          #    (rev18e, same version: case never changes a key, Katakana not folded, only apostrophe-like modifier letters read as ')
                          # 10: the tatweel out of the key (KEY_VERSION 10); the pins record the ICU / Unicode / regex versions
                          #     the key was made with (a change re-keys); the ledger re-seeded from every retained version (rev24a)
                          # 11: split_pairs records pairs' pseudonym key check (the publish tells the public default secret, rev28b)
                          # 12: pins of keys no warehouse row holds any more (an erased account's) dropped (rev30b);
                          #     split_pairs records heldout_fraction and unique_prompts (the data card states them, rev30d)
                          # 13: a pin is kept while an image, download or quarantined line of the warehouse holds its
                          #     key (rev30g: a quarantined ranking's prompt lost its pin, published in train next);
                          #     split_pairs records min_unique_rows and its held-out users by ledger rule (the card
                          #     states how they were chosen, rev30f)
                          # 14: a quarantined line read as the ingest reads it (a leading byte order mark skipped:
                          #     line 1 of a BOM-prefixed file lost its pins); a ranking of pairs matched by id and
                          #     day; a held-out record naming an unknown ledger rule is not believed (rev30i)
                          # 15: the prompt key drops every combining mark of the shared and Cyrillic mark blocks that
                          #     no precomposed character holds (U+A670..A672, U+20E8, glitch-text stacks; emoji
                          #     enclosing marks kept) and a dot above on a soft-dotted letter (j̇ is j); the dotless
                          #     ȷ reads as j (KEY_VERSION 11: pins re-keyed; rev31g)
                          # 16: a letter's confusable prototype without the decorative marks ICU's skeleton spells it
                          #     with (ø as o, as o̸ keys); keycaps on any character NFKC reads as a digit, # or *, with
                          #     decorative marks between (KEY_VERSION 12: pins re-keyed; rev32d)
                          # 17: a letter ICU leaves whole that Unicode names as a base letter with a stroke, bar, slash or
                          #     middle tilde (ⱥ, ꞓ, ꞹ, ꝃ, ᵭ, ӿ) as that letter, as base + overlay mark keys
                          #     (KEY_VERSION 13: pins re-keyed; rev33c)
                          # 18: a pin kept while a retained version publishes its key; split_ledger.settings (the
                          #     placement settings of each entry: a one-off override's unpublished entries decided
                          #     again); an unpinned key no row is kept with owned again from the rows rejected for such
                          #     keys alone (rev36f)
                          # 19: a retained version's row of an erased account (gone from users and pairs, told with
                          #     the curation's pseudonym secret) keeps no pin (fix37a)
    "publish": "13",      # 2: pickapic-wds/2: per-day content-stable shards, prompt_counts.parquet, meta/images/
                          # 3: pickapic-wds/3: a user's pairs of a day are one run inside a shard
                          # 4: pickapic-wds/4: shard sizes follow the day's volume (raw rankings lines); lean sidecars
                          # 5: pickapic-wds/5: uncompressed sidecars (written in batches, markers after one fsync round)
                          # 6: the data card names the decisions conflicting_image and mismatched_image (rev25c/f)
                          # 7: the card states the NSFW classes, threshold and k the version was curated with and
                          #    says when the pseudonyms are under the public default secret; manifest "curation" (rev28b)
                          # 8: the card states the threshold as recorded (not rounded to 6 digits) and, curated with
                          #    no NSFW class, that no NSFW filter was applied (rev28d); pickapic-wds/6: a shard named
                          #    by a digest of what it holds (rev28c); the partial version staged in
                          #    datasets/pickapic.staging/, outside the versions' folder
                          # 9: the card states the training JPEGs' size and quality (from their keys' folder), the
                          #    held-out fraction and unique_prompts the version was split with, and the _unique splits'
                          #    sampling noise from their prompt count, not 512 px / 6% / 500 / +-2 points (rev30d)
                          # 10: the card counts quarantined lines (summed line_count; a missing / unreadable file as
                          #     a file), says how the held-out users were chosen (fill rule / hash, by ledger rule)
                          #     and states the version's own tie share (rev30f)
                          # 11: the card's code version (pipelines.publish.datacard.CARD_VERSION, bumped with any
                          #     change of the card's text) in the version id and the manifest, so a card change
                          #     makes a new version; the card counts distinct fingerprinted images (rev31d)
                          # 12: the manifest's read_parquet statement reads with hive_partitioning = false (a folder
                          #     named split=... / dt=... above the version is no column, rev32b)
                          # 13: the data contracts' versions in the version id and the identity a version at that
                          #     name is checked against (they were in the manifest alone); the code version below
                          #     names them too (CONTRACTS_MARK); shards reused only from versions a publish made
                          #     and recorded (rev36e)
    "model": "9",         # 2: captions cut to 16,384 characters before tokenization and the BPE's training; bad
                          #    samples refused naming them; a data_dir's run folder named after its version (rev28a)
                          # 3: a caption's blanks read as one space before the cut; a count below 1 or not whole
                          #    refused; best_of_n's scores from batches of one fixed shape (rev28e)
                          # 4: a caption's form feeds, vertical tabs and NELs read as blanks before the cut, as
                          #    the tokenizer reads them (rev30e; the value was left at "3" then)
                          # 5: the scratch tokenizer's merges learnt deterministically (equal counts in the pairs'
                          #    sorted order, up to the vocabulary size: a different merges.txt / tokenizer.json and
                          #    token ids for the same captions); a mistyped or negative-step trainer state refused (rev32a)
                          # 6: the scratch tokenizer learns merges until its vocabulary holds tokenizer_vocab_size
                          #    tokens (the word-final symbols no longer subtracted: more merges, other token ids
                          #    for the same captions); bpe_merges itself learns the same merges as before (rev33f)
                          # 7: the scratch tokenizer records what made it (tokenizer_config.json's pickapic_tokenizer)
                          #    and a scratch run whose tokenizer another code made is trained over; best/ records its
                          #    step (best_step.json) and is saved after checkpoints/last/ (rev34c)
                          # 8: tokenizer_config.json saved without what a load adds (is_local, local_files_only, the
                          #    truncation / padding settings its tokenizer.json holds): a resumed run's best/ is the
                          #    uninterrupted run's byte for byte; an unreadable tokenizer mark refuses the run (rev34l)
                          # 9: the scratch tokenizer's word counts held within TOKENIZER_SYMBOL_BUDGET (the rarest
                          #    pruned past it: other merges for captions of more distinct words; TOKENIZER_VERSION
                          #    bpe/2, so a scratch run of bpe/1 is trained over); rank 0's refusals reach every rank (fix35c)
}
INGEST_DATASETS = ("users", "images", "rankings", "downloads", "quarantine", "ingest_files")
FEATURE_DATASETS = ("image_features", "image_rejects")
RAW_ASSET = "raw_app_logs"
DATA_VERSION_TAG = "dagster/data_version"   # the tag of an asset event that holds its data version
PARTITIONS = "raw_days"
# Appended to the data version of an output whose blocking contract check failed: never "fresh".
FAILED_SUFFIX = "-failed-checks"
# A day's ingest may accept a ranking or download through an image first exported on a later day (within
# ingest.late_image_days): those days are inputs of the day too. Their names ride in the day's ingest
# version after this mark ("<digest>+late:2023-02-14"), so a plan recomputes the version from the raw zone
# without reading the day's data, and a changed later export makes the earlier day stale.
LATE_MARK = "+late:"


CARD_MARK = "+card:"   # the publish's code version: CODE_VERSIONS["publish"] + CARD_MARK + the card's code version
CONTRACTS_MARK = "+contracts:"   # ... + CONTRACTS_MARK + a digest of the gated contracts' versions (review rev36e)


def code_version(name: str) -> str:
    """The code version of stage ``name`` as the build planner, the build stamp and Dagster see it: its entry of
    ``CODE_VERSIONS``; for the publish also the data card's code version (``datacard.CARD_VERSION``, hashed into the
    published version id) and a digest of the data contracts' versions (``contracts.contract_versions``, hashed
    into the version id too), so bumping any of them makes the step stale (review rev31l, rev36e)."""
    version = CODE_VERSIONS[name]
    if name == "publish":
        # read when asked, not at import (the card's module imports pyarrow.compute): this module stays cheap
        from pipelines.publish import contracts, datacard

        version += CARD_MARK + str(datacard.CARD_VERSION)
        version += CONTRACTS_MARK + contracts.contracts_digest(contracts.contract_versions())
    return version


def code_versions() -> dict[str, str]:
    """Every stage's :func:`code_version` (what the build stamp records)."""
    return {name: code_version(name) for name in CODE_VERSIONS}


def late_days_of(version: str | None) -> list[str]:
    """The later raw days a recorded ingest version says the day's output depends on."""
    if not version:
        return []
    _, mark, days = version.removesuffix(FAILED_SUFFIX).partition(LATE_MARK)
    return [d for d in days.split(",") if d] if mark else []


@dataclass(frozen=True)
class Stage:
    """One step of the graph: the op that runs it, the assets it writes, its settings section and job."""

    name: str
    op: str
    assets: tuple[str, ...]
    section: str
    partitioned: bool
    job: str

    @property
    def code_version(self) -> str:
        return code_version(self.name)


STAGES: tuple[Stage, ...] = (
    # The app database's day -> the raw zone. Its version is the content of the files it wrote, which is
    # also what ingest reads (raw_app_logs), so ingest never waits for it: a home fed by files has none.
    Stage("app_export", "app_export", ("app_export",), "app_export", True, "app_export_job"),
    Stage("ingest", "ingest_day", INGEST_DATASETS, "ingest", True, "daily_partition_job"),
    Stage("features", "fingerprint_images", FEATURE_DATASETS, "features", True, "daily_partition_job"),
    Stage("dedup", "duplicate_clusters", ("duplicate_clusters",), "dedup", False, "rebuild_dataset_job"),
    Stage("decisions", "decisions", ("decisions",), "curation", False, "rebuild_dataset_job"),
    Stage("pairs", "pairs", ("pairs",), "curation", False, "rebuild_dataset_job"),
    Stage("splits", "split_pairs", ("split_pairs",), "splits", False, "rebuild_dataset_job"),
    Stage("publish", "published_dataset", ("published_dataset",), "publish", False, "rebuild_dataset_job"),
    Stage("model", "preference_model", ("preference_model",), "train", False, "train_model_job"),
)
BY_NAME = {stage.name: stage for stage in STAGES}
EXPORT = BY_NAME["app_export"]
# The daily stages a build plans. The export runs only when asked (``pickapic build --from-app-db``, its
# schedule): what the database holds is unknown until it is read.
DAILY = tuple(s for s in STAGES if s.partitioned and s is not EXPORT)
GLOBAL = tuple(s for s in STAGES if not s.partitioned and s.name != "model")
