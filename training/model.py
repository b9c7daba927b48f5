"""The preference model: a ``transformers.CLIPModel`` (local checkpoint or tiny 'scratch' one) + its processor.

'scratch' = a tiny CLIPConfig (demo preset: ViT 64 px / patch 8, 2 layers, width 64; text 2 layers, width
64; projection 64; about 0.33 M parameters with the 2,048-token vocabulary: ``count_parameters``) plus a
byte-level BPE tokenizer trained offline with ``tokenizers`` on the train captions, laid out like CLIP's
own vocabulary (256 bytes, 256 bytes + ``</w>``, merged tokens, then ``<|startoftext|>``,
``<|endoftext|>``), merged tokens numbered in sorted order. The merges are learnt by :func:`bpe_merges`
(words counted by the ``tokenizers`` pipeline), ties broken by the pairs' sorted order, so the tokenizer is a
pure function of the captions and the vocabulary size: the ``tokenizers`` trainer orders merges of equal count
by hash-map order, new in every call (review rev32a). It is saved as a plain ``CLIPTokenizer``, so
``AutoProcessor`` / ``AutoModel.from_pretrained(dir)`` load it like any CLIP / PickScore checkpoint.
Nothing is ever downloaded: every load passes ``local_files_only=True``; no code from a checkpoint folder ever
runs: ``load_model`` uses transformers' own CLIP classes with ``trust_remote_code=False`` and refuses a processor
folder whose configs name custom classes (``auto_map``).
"""
from __future__ import annotations

import errno
import heapq
import json
import math
import os
import pickle
import stat
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from huggingface_hub.errors import StrictDataclassError
from safetensors import SafetensorError, safe_open
from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers
from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPProcessor, CLIPTokenizer
from transformers.utils import logging as hf_logging

from formats.files import open_regular_file, read_small_file, write_bytes_atomic
from formats.text import first_line as _first_line
from formats.text import shown_path
from training.config import TrainConfig
from training.data import bounded_caption

hf_logging.disable_progress_bar()  # per-file "Loading weights" bars would flood the run logs

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
# What made a scratch tokenizer: :func:`train_tokenizer` records it in the tokenizer's ``tokenizer_config.json``
# (``pickapic_tokenizer``, kept by every save and load). Changed whenever train_tokenizer's output for the same
# captions changes (its merges, their number, how captions are read before counting). A scratch run whose tokenizer
# records another one, or none (made before it was recorded: model code version 6 and older), is trained over
# from step 0 by the trainer (review rev34c: a run finished under model code version 5 was kept, with its version 5
# tokenizer, as the model today's code trains).
TOKENIZER_MARK = "pickapic_tokenizer"
TOKENIZER_VERSION = "bpe/2"   # 2: the words counted held within TOKENIZER_SYMBOL_BUDGET (the rarest pruned past it)
# The byte-level symbols (plus one a word) of the distinct words the scratch BPE holds while it counts them and learns
# its merges on them: about 200 bytes a symbol at the merges' peak, so about 200 MiB at most whatever the captions
# (tracemalloc: 178 MiB for 4,000 distinct 77-character CJK prompts, 928k symbols; 136 MiB for 12,000, pruned).
# Past it the rarest words are pruned (lossy counting, deterministic: see train_tokenizer). Review fix35c: every
# distinct 77-character CJK prompt (one word of 231 symbols) cost about 50 KiB, without bound.
TOKENIZER_SYMBOL_BUDGET = 1 << 20
# CLIP's own pre-tokenization (transformers' CLIPTokenizer): words, digits, punctuation runs.
_CLIP_SPLIT = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def _bpe_pipeline() -> Tokenizer:
    tok = Tokenizer(models.BPE(unk_token=EOS, end_of_word_suffix="</w>", continuing_subword_prefix=""))
    tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "),
                                           normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_CLIP_SPLIT), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False)])
    return tok


def train_tokenizer(captions: Iterable[str], vocab_size: int, max_length: int = 77,
                    symbol_budget: int | None = TOKENIZER_SYMBOL_BUDGET) -> CLIPTokenizer:
    """Train a CLIP-style byte-level BPE on ``captions`` (offline) and wrap it as a ``CLIPTokenizer``.

    A pure function of the captions and ``vocab_size``: words are counted with the ``tokenizers`` pipeline
    (:func:`_bpe_pipeline`), the merges learnt by :func:`bpe_merges` (most frequent pair first, equal counts in
    the pairs' sorted order), not by the ``tokenizers`` trainer, whose order of merges of equal count (and so the
    merges kept at ``vocab_size``) follows hash-map order, new in every call (review rev32a). The tokenizer
    has ``vocab_size`` tokens (256 bytes, their 256 ``</w>`` forms, ``vocab_size - 514`` merged tokens, BOS and
    EOS), fewer only when the captions hold no more pairs to merge (review rev33f). It records what made it
    (:data:`TOKENIZER_VERSION`, saved in its ``tokenizer_config.json``: :func:`tokenizer_version`).

    Its memory is bounded whatever the captions (review fix35c: about 50 KiB a distinct CJK prompt, without bound):
    the distinct words held cost at most ``symbol_budget`` (:data:`TOKENIZER_SYMBOL_BUDGET`; a word costs its
    symbols plus one). Where a new word takes them past it, the words are pruned to half of it, keeping the most
    frequent so far (equal counts: in sorted order; a word met again after its pruning is counted from one), as
    lossy counting does: in the captions' order, which is the shards', so the tokenizer stays a pure function of
    the captions. Captions whose distinct words fit the budget give the tokenizer an unbounded count gives
    (``symbol_budget=None``)."""
    if symbol_budget is not None and (type(symbol_budget) is not int or symbol_budget < 2):
        raise ValueError(f"symbol_budget={symbol_budget!r}: an integer of at least 2 (or None: no bound) is needed")
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    n_merges = vocab_size - 2 * len(alphabet) - 2
    if n_merges <= 0:
        raise ValueError(f"vocab_size={vocab_size} leaves no room for merges (needs > {2 * len(alphabet) + 2})")
    pipeline = _bpe_pipeline()
    normalize, split = pipeline.normalizer.normalize_str, pipeline.pre_tokenizer.pre_tokenize_str
    words: Counter[str] = Counter()
    held = 0   # the cost of the words held: their symbols, plus one a word
    for caption in captions:
        for word, _ in split(normalize(caption)):
            if not word:
                continue
            if word in words:
                words[word] += 1
                continue
            words[word] = 1
            held += len(word) + 1
            if symbol_budget is not None and held > symbol_budget:
                held = _prune_words(words, symbol_budget // 2)
    # merges until the vocabulary has vocab_size tokens (fewer only when the captions hold no more pairs): the
    # layout holds every byte's </w> form already, so the word-final symbols the tokenizers trainer counted in
    # its vocabulary take no room (subtracting them left 600 no merge on mixed-language captions: rev33f)
    merges = bpe_merges(words, None, n_tokens=n_merges)
    # Ids of merged tokens are assigned in sorted order (as CLIP lays out its vocabulary: bytes, bytes + </w>,
    # merged tokens, specials).
    vocab: dict[str, int] = {}
    for token in [*alphabet, *(a + "</w>" for a in alphabet), *sorted({a + b for a, b in merges}), BOS, EOS]:
        vocab.setdefault(token, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length,
                         **{TOKENIZER_MARK: TOKENIZER_VERSION})


def _prune_words(words: Counter[str], keep: int) -> int:
    """Keep in ``words`` the most frequent (equal counts: the first in sorted order) whose cost (symbols plus one
    each) fits ``keep``, a word that does not fit passed over for the next; returns the cost kept."""
    ranked = sorted(words.items(), key=lambda item: (-item[1], item[0]))
    words.clear()
    held = 0
    for word, count in ranked:
        cost = len(word) + 1
        if held + cost <= keep:
            words[word] = count
            held += cost
    return held


def tokenizer_version(model_dir: str | Path) -> str | None:
    """What made the tokenizer saved in ``model_dir`` (its ``tokenizer_config.json``'s ``pickapic_tokenizer``:
    :data:`TOKENIZER_VERSION` for one :func:`train_tokenizer` makes today), or None: none recorded (a tokenizer made
    before it was recorded, or not by train_tokenizer), or no readable ``tokenizer_config.json``."""
    data = read_small_file(Path(model_dir) / "tokenizer_config.json", 16 << 20)
    try:
        value = json.loads(data) if data is not None else None
    except (ValueError, RecursionError):
        return None
    mark = value.get(TOKENIZER_MARK) if isinstance(value, dict) else None
    return mark if isinstance(mark, str) else None


def read_tokenizer_mark(model_dir: str | Path) -> str | None:
    """:func:`tokenizer_version`, read strictly, for a decision that discards a model: None only where no
    ``tokenizer_config.json`` is there, or it is a readable regular file that records no mark (a tokenizer made
    before it was recorded: older code). A file that cannot be read (an I/O error, no permission, too many open
    files), or is not a regular file (a link, a FIFO), raises ``ValueError`` naming it: what made that tokenizer is
    unknown, never "older code" (review rev34l: one EIO on the mark trained a finished run over from step 0)."""
    path = Path(model_dir) / "tokenizer_config.json"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        what = "is a symbolic link" if exc.errno == errno.ELOOP else f"cannot be read ({exc.strerror or exc})"
        raise ValueError(_unknown_mark(path, what)) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError(_unknown_mark(path, "is not a regular file"))
        with open(fd, "rb", closefd=False) as handle:
            data = handle.read(_MARK_FILE_LIMIT + 1)
    except OSError as exc:
        raise ValueError(_unknown_mark(path, f"cannot be read ({exc.strerror or exc})")) from None
    finally:
        os.close(fd)
    if len(data) > _MARK_FILE_LIMIT:
        return None   # read, and no tokenizer_config.json the tokenizer saves: no mark this code wrote
    try:
        value = json.loads(data)
    except (ValueError, RecursionError):
        return None
    mark = value.get(TOKENIZER_MARK) if isinstance(value, dict) else None
    return mark if isinstance(mark, str) else None


_MARK_FILE_LIMIT = 16 << 20


def _unknown_mark(path: Path, what: str) -> str:
    return (f"{shown_path(path)} {what}: whether its tokenizer is this code's ({TOKENIZER_MARK} {TOKENIZER_VERSION}) "
            "is unknown, so the run is left as it is (a tokenizer another code made would be trained over from step "
            "0); make the file readable (its permissions, the disk) and rerun")


def bpe_merges(word_counts: dict[str, int], n_merges: int | None,
               n_tokens: int | None = None) -> list[tuple[str, str]]:
    """At most ``n_merges`` (None: no limit) BPE merges learnt on ``word_counts`` (a word: its byte-level symbols, the last one
    suffixed ``</w>``), deterministically: each step merges the most frequent adjacent pair, of pairs with equal
    counts the smallest (as a tuple of strings), each occurrence left to right; a pair is merged once; stops early
    when no pair is left, or (``n_tokens``) once the merges have made that many distinct tokens (two merges can
    make one token: ``a`` + ``bc`` and ``ab`` + ``c``).

    Incremental, in time and memory bounded by the input's symbols whatever the number of merges (review
    rev33f): the symbols are linked lists, each pair indexed by the positions it starts at, and a merge changes
    only the pairs beside each merged occurrence (every occurrence merged removes a symbol); a pair's count goes
    on a heap when it changes, and an entry whose count is no longer the pair's is skipped when it comes up."""
    symbol: list[str] = []
    freq: list[int] = []        # per position: its word's count
    after: list[int] = []       # per position: the next position of its word, -1 at the end
    before: list[int] = []      # per position: the previous one, -1 at the start
    for word, count in sorted(word_counts.items()):
        start = len(symbol)
        for k, char in enumerate(word):
            symbol.append(char + "</w>" if k == len(word) - 1 else char)
            freq.append(count)
            after.append(start + k + 1 if k < len(word) - 1 else -1)
            before.append(start + k - 1 if k else -1)
    counts: dict[tuple[str, str], int] = defaultdict(int)
    where: dict[tuple[str, str], set[int]] = defaultdict(set)   # pair -> the positions it starts at
    for position, nxt in enumerate(after):
        if nxt >= 0:
            pair = (symbol[position], symbol[nxt])
            counts[pair] += freq[position]
            where[pair].add(position)
    heap = [(-count, pair) for pair, count in counts.items()]
    heapq.heapify(heap)
    merges: list[tuple[str, str]] = []
    done: set[tuple[str, str]] = set()
    made: set[str] = set()
    changed: dict[tuple[str, str], int] = {}   # pair -> how much this merge changed its count

    def take(pair: tuple[str, str], position: int, count: int) -> None:
        if pair not in done:
            counts[pair] -= count
            changed[pair] = changed.get(pair, 0) - count
            held = where[pair]
            held.discard(position)
            if not held:
                del where[pair]

    def give(pair: tuple[str, str], position: int, count: int) -> None:
        if pair not in done:
            counts[pair] += count
            changed[pair] = changed.get(pair, 0) + count
            where[pair].add(position)

    while heap and (n_merges is None or len(merges) < n_merges) and (n_tokens is None or len(made) < n_tokens):
        negative, pair = heapq.heappop(heap)
        if pair in done or counts.get(pair, 0) != -negative or negative >= 0:
            continue   # a stale entry: the pair's current count has its own entry
        merges.append(pair)
        done.add(pair)
        first, second = pair
        joined = first + second
        made.add(joined)
        changed.clear()
        for position in sorted(where.pop(pair, ())):   # in word order, each word left to right
            right = after[position]
            # an occurrence an earlier one of this merge consumed (``a a a``: the second ``a a``) is skipped
            if right < 0 or symbol[position] != first or symbol[right] != second:
                continue
            count, left, beyond = freq[position], before[position], after[right]
            if left >= 0:
                take((symbol[left], first), left, count)
            if beyond >= 0:
                take((second, symbol[beyond]), right, count)
            symbol[position] = joined
            symbol[right] = ""          # consumed: no pair starts or ends here any more
            after[position], after[right], before[right] = beyond, -1, -1
            if beyond >= 0:
                before[beyond] = position
            if left >= 0:
                give((symbol[left], joined), left, count)
            if beyond >= 0:
                give((joined, symbol[beyond]), position, count)
        for other, delta in sorted(changed.items()):
            if delta and counts[other] > 0:   # unchanged: its entry is still the current one
                heapq.heappush(heap, (-counts[other], other))
            elif counts[other] == 0:
                del counts[other]
    return merges


def scratch_clip_config(config: TrainConfig, tokenizer: CLIPTokenizer) -> CLIPConfig:
    """The tiny CLIPConfig of the 'scratch' model (sizes from ``config``)."""
    return CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=config.text_width,
                         intermediate_size=4 * config.text_width, num_hidden_layers=config.layers,
                         num_attention_heads=config.heads, max_position_embeddings=config.max_length,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(image_size=config.image_size, patch_size=config.patch_size,
                           hidden_size=config.vision_width, intermediate_size=4 * config.vision_width,
                           num_hidden_layers=config.layers, num_attention_heads=config.heads),
        projection_dim=config.projection_dim)


def scratch_processor(config: TrainConfig, tokenizer: CLIPTokenizer) -> CLIPProcessor:
    """CLIP processor (bicubic, shortest edge + center crop at ``image_size``, CLIP mean/std) + tokenizer."""
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": config.image_size},
                                            crop_size={"height": config.image_size, "width": config.image_size})
    return CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)


def build_model(config: TrainConfig, captions: Iterable[str] | None = None,
                tokenizer: CLIPTokenizer | None = None) -> tuple[CLIPModel, CLIPProcessor]:
    """The initial model: 'scratch' (seeded init; tokenizer given or trained on ``captions``) or a local checkpoint."""
    if config.init_from == "scratch":
        if tokenizer is None:
            if captions is None:
                raise ValueError("init_from='scratch' needs the train captions to train its tokenizer")
            tokenizer = train_tokenizer(captions, config.tokenizer_vocab_size, config.max_length)
        torch.manual_seed(config.seed)
        return CLIPModel(scratch_clip_config(config, tokenizer)), scratch_processor(config, tokenizer)
    return load_model(config.init_from)


PROCESSOR_FILES = "preprocessor_config.json and the tokenizer files (tokenizer.json, or vocab.json + merges.txt)"


class NotAClipCheckpoint(ValueError):
    """A model directory that holds no CLIP checkpoint (the message names the directory and what is wrong)."""


def check_clip_dir(model_dir: str | Path, what: str = "model dir") -> Path:
    """``model_dir`` as a Path once it holds a CLIP ``config.json``; a clear error otherwise (never downloads)."""
    path = Path(model_dir).expanduser()
    config_file = path / "config.json"
    if not path.is_dir():
        raise FileNotFoundError(f"{what} {shown_path(path)!r} is not a directory (nothing is downloaded: pass a local "
                                "CLIP / PickScore checkpoint directory)")
    if not config_file.is_file():
        raise NotAClipCheckpoint(f"{what} {shown_path(path)!r} holds no config.json: not a saved Hugging Face model (nothing "
                                 "is downloaded: pass a local CLIP / PickScore checkpoint directory or 'scratch')")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:     # ValueError: not JSON, or an integer of 5,000 digits
        raise NotAClipCheckpoint(f"{what} {shown_path(path)!r}: config.json is not valid JSON ({_first_line(exc)})") from None
    except RecursionError:
        raise NotAClipCheckpoint(f"{what} {shown_path(path)!r}: config.json nests too deeply to be read (a CLIP config "
                                 "nests two levels)") from None
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if model_type != "clip":
        raise NotAClipCheckpoint(f"{what} {shown_path(path)!r} is not a CLIP checkpoint: config.json has model_type="
                                 f"{model_type!r} (architectures {config.get('architectures') if isinstance(config, dict) else None}); "
                                 "PickScore and CLIP checkpoints have model_type 'clip'")
    return path


def load_model(model_dir: str | Path, processor_dir: str | Path | None = None) -> tuple[CLIPModel, Any]:
    """Load a CLIP / PickScore checkpoint and its processor from local directories (never downloads).

    ``processor_dir`` defaults to ``model_dir``; PickScore_v1's own repository, for one, holds no processor
    (its README loads the processor of ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``). A checkpoint that would score
    with anything but its own saved weights is refused (``NotAClipCheckpoint`` naming the folder): no or unreadable
    weights, weights missing or left over (transformers would fill a missing one with random values), a weight that
    is NaN or infinite, a processor whose image size is not the model's or whose mean / std cannot normalise.
    """
    path = check_clip_dir(model_dir)
    processor_path = Path(processor_dir).expanduser() if processor_dir else path
    if not processor_path.is_dir():
        raise FileNotFoundError(f"processor dir {shown_path(processor_path)!r} is not a directory")
    if not any((processor_path / name).is_file() for name in ("preprocessor_config.json", "processor_config.json")):
        raise NotAClipCheckpoint(f"{shown_path(processor_path)!r} holds no preprocessor_config.json / processor_config.json: "
                                 f"no CLIP processor to preprocess with (pass --processor DIR holding {PROCESSOR_FILES})")
    if not ((processor_path / "tokenizer.json").is_file()
            or all((processor_path / name).is_file() for name in ("vocab.json", "merges.txt"))):
        raise NotAClipCheckpoint(f"{shown_path(processor_path)!r} holds no tokenizer (tokenizer.json, or vocab.json + "
                                 "merges.txt): every prompt would get the same embedding (pass --processor DIR "
                                 f"holding {PROCESSOR_FILES})")
    check_no_custom_code(processor_path)
    check_config_fits_weights(path)
    model = _load_weights(path)
    try:
        # CLIPProcessor itself, never a class a config names through auto_map; trust_remote_code=False so that
        # transformers refuses instead of asking on stdin whether to run the folder's code
        processor = CLIPProcessor.from_pretrained(processor_path, local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise NotAClipCheckpoint(f"processor dir {shown_path(processor_path)!r}: no CLIP processor can be loaded from it "
                                 f"({_first_line(exc)}; pass --processor DIR holding {PROCESSOR_FILES})") from None
    vocab, tokens = model.config.text_config.vocab_size, len(processor.tokenizer)
    if tokens != vocab:
        raise NotAClipCheckpoint(f"the tokenizer in {shown_path(processor_path)!r} has {tokens} tokens but the model in "
                                 f"{shown_path(path)!r} has text_config.vocab_size={vocab}: they do not belong together "
                                 f"(pass --processor DIR holding the model's own {PROCESSOR_FILES})")
    check_processor_fits(processor.image_processor, model.config.vision_config.image_size, processor_path, path)
    eos = model.config.text_config.eos_token_id
    if eos != 2 and eos != processor.tokenizer.eos_token_id:    # 2: transformers' legacy pooling at the largest id
        raise NotAClipCheckpoint(f"the model in {shown_path(path)!r} pools each prompt at text_config.eos_token_id={eos!r}, "
                                 f"but the tokenizer in {shown_path(processor_path)!r} ends prompts with "
                                 f"{processor.tokenizer.eos_token_id!r}: every prompt would get the same embedding")
    return model, processor


def _weight_files(path: Path) -> tuple[list[Path], str]:
    """The checkpoint's weight files (one, or the shards its index names) and their kind ("safetensors" or "bin").

    Only regular files directly in ``path`` are taken: a shard named by an absolute path or through ``..`` (the
    index would have files outside the folder opened), a FIFO or a device (waited on, read for ever) is refused
    before anything is opened (review rev22g). No weights at all is refused too."""
    for kind, single, index in (("safetensors", "model.safetensors", "model.safetensors.index.json"),
                                ("bin", "pytorch_model.bin", "pytorch_model.bin.index.json")):
        names = None
        if os.path.lexists(path / single):
            names = [single]
        elif os.path.lexists(path / index):
            try:   # followed if a link (a Hugging Face cache's snapshot holds links), never waited on
                with open_regular_file(path / index) as handle:
                    text = handle.read((16 << 20) + 1)
                shards = json.loads(text if len(text) <= 16 << 20 else b"").get("weight_map")
                names = sorted(set(shards.values()))
            except (AttributeError, TypeError, ValueError, RecursionError, OSError):
                raise NotAClipCheckpoint(f"model dir {shown_path(path)!r}: {index} is not a weight index (a JSON object with "
                                         "a weight_map of file names, at most 16 MiB)") from None
        if names is None:
            continue
        for name in names:
            if not isinstance(name, str) or not name or "/" in name or "\\" in name or name in (".", "..") \
                    or "\0" in name or not name.isprintable() or not _utf8(name):
                raise NotAClipCheckpoint(f"model dir {shown_path(path)!r}: the weight index names {name!r}, not a file of "
                                         "the folder; nothing outside the model folder is read")
            try:
                info = os.stat(path / name)
            except OSError as exc:
                raise NotAClipCheckpoint(f"model dir {shown_path(path)!r}: weight file {name} cannot be read "
                                         f"({exc.strerror}); an interrupted copy?") from None
            if not stat.S_ISREG(info.st_mode):
                raise NotAClipCheckpoint(f"model dir {shown_path(path)!r}: weight file {name} is not a regular file (a FIFO, "
                                         "a device or a folder is never read)")
        return [path / name for name in names], kind
    raise NotAClipCheckpoint(f"model dir {shown_path(path)!r} holds config.json but no weights ({', '.join(WEIGHT_FILES)}): "
                             "an interrupted copy? pass a complete CLIP / PickScore checkpoint directory")


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _weight_shapes(files: list[Path], kind: str) -> dict[str, tuple[int, ...]] | None:
    """Every tensor's shape in the weight files, read without allocating them (safetensors headers; a zip
    ``.bin`` loaded on the meta device), names without transformers' ``clip.`` prefix; None where they cannot be
    read that way (a legacy ``.bin``): the size check of :func:`check_config_fits_weights` still applies."""
    shapes: dict[str, tuple[int, ...]] = {}
    try:
        for file in files:
            if kind == "safetensors":
                with safe_open(file, framework="pt") as handle:
                    shapes.update({name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()})
            else:
                weights = torch.load(file, map_location="meta", weights_only=True, mmap=True)
                shapes.update({name: tuple(value.shape) for name, value in weights.items()
                               if isinstance(value, torch.Tensor)})
    except Exception:   # noqa: BLE001 - an unreadable file is from_pretrained's to report, in one line
        return None
    return {name.removeprefix("clip."): shape for name, shape in shapes.items()}


_POSITIVE = {"projection_dim": (), "vision_config": ("hidden_size", "intermediate_size", "num_hidden_layers",
                                                     "num_attention_heads", "image_size", "patch_size", "num_channels"),
             "text_config": ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                             "vocab_size", "max_position_embeddings")}


def _parameters(config: CLIPConfig) -> int:
    """About how many parameters a CLIP model of ``config`` has (within a few percent): what building it allocates."""
    vision, text = config.vision_config, config.text_config

    def tower(part, embeddings: int) -> int:
        h, i = part.hidden_size, part.intermediate_size
        return embeddings + part.num_hidden_layers * (4 * h * h + 2 * h * i + 9 * h + i)

    patches = (vision.image_size // vision.patch_size) ** 2 + 1
    return (tower(vision, (patches + 1) * vision.hidden_size + vision.num_channels * vision.patch_size ** 2 * vision.hidden_size)
            + tower(text, (text.vocab_size + text.max_position_embeddings) * text.hidden_size)
            + config.projection_dim * (vision.hidden_size + text.hidden_size))


def check_config_fits_weights(path: Path) -> None:
    """Refuse a ``config.json`` that transformers cannot build a CLIP model from, or whose sizes are not those of
    the checkpoint's tensors, before anything is built: a config claiming a million layers or an 8-million-token
    vocabulary built (and allocated) all of them before the weights were compared (review rev22d), a patch size
    of 0 divided by zero, an unknown activation was a KeyError."""
    from transformers.activations import ACT2FN

    files, kind = _weight_files(path)
    try:
        config = CLIPConfig.from_pretrained(path, local_files_only=True)
        vision, text = config.vision_config, config.text_config
        sizes = {f"{section}.{name}" if name else section:
                 getattr(getattr(config, section), name) if name else getattr(config, section)
                 for section, names in _POSITIVE.items() for name in (names or ("",))}
        wrong = [f"{key} {value!r}" for key, value in sizes.items() if type(value) is not int or value <= 0]
        if wrong:
            raise ValueError(f"{', '.join(wrong)}: not a positive integer")
        problems = [f"{name}.hidden_act {part.hidden_act!r} is no activation transformers has"
                    for name, part in (("vision_config", vision), ("text_config", text)) if part.hidden_act not in ACT2FN]
        if not (0 < vision.patch_size <= vision.image_size and vision.image_size % vision.patch_size == 0):
            problems.append(f"vision_config.patch_size {vision.patch_size} does not divide image_size {vision.image_size}")
        expected = {} if problems else {
            "vision_model.embeddings.patch_embedding.weight": (vision.hidden_size, vision.num_channels,
                                                               vision.patch_size, vision.patch_size),
            "vision_model.embeddings.position_embedding.weight": ((vision.image_size // vision.patch_size) ** 2 + 1,
                                                                  vision.hidden_size),
            "vision_model.encoder.layers.0.mlp.fc1.weight": (vision.intermediate_size, vision.hidden_size),
            "text_model.embeddings.token_embedding.weight": (text.vocab_size, text.hidden_size),
            "text_model.embeddings.position_embedding.weight": (text.max_position_embeddings, text.hidden_size),
            "text_model.encoder.layers.0.mlp.fc1.weight": (text.intermediate_size, text.hidden_size),
            "visual_projection.weight": (config.projection_dim, vision.hidden_size),
            "text_projection.weight": (config.projection_dim, text.hidden_size),
        }
    except (StrictDataclassError, OSError, ValueError, TypeError, KeyError, AttributeError, ZeroDivisionError) as exc:
        raise NotAClipCheckpoint(f"model dir {shown_path(path)!r}: config.json does not describe a CLIP model "
                                 f"({_first_line(exc)}); pass a complete CLIP / PickScore checkpoint directory") from None
    if not problems:   # whatever the format: a model of more parameters than the files could hold is never built
        held = sum(os.stat(file).st_size for file in files)
        claimed = _parameters(config)
        if 2 * claimed > 2 * held + (64 << 20):       # 2 bytes a parameter at the least (float16 / bfloat16)
            problems.append(f"it describes a model of {claimed:,} parameters, more than {held:,} bytes of weights "
                            "can hold")
    shapes = _weight_shapes(files, kind) if not problems else None
    if shapes is not None:
        problems += [f"{name} is {shapes[name]} in the weights, {shape} by config.json"
                     for name, shape in expected.items() if name in shapes and shapes[name] != shape]
        for name, part in (("vision", vision), ("text", text)):
            held = {key.split(".")[3] for key in shapes if key.startswith(f"{name}_model.encoder.layers.")}
            if len(held) != part.num_hidden_layers:
                problems.append(f"{name}_config.num_hidden_layers is {part.num_hidden_layers}, the weights hold "
                                f"{len(held)} layers")
    if problems:
        raise NotAClipCheckpoint(f"model dir {shown_path(path)!r}: config.json does not fit the checkpoint "
                                 f"({'; '.join(problems[:4])}); pass a complete CLIP / PickScore checkpoint directory")


WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
PROCESSOR_CONFIGS = ("preprocessor_config.json", "processor_config.json", "tokenizer_config.json")


def check_no_custom_code(processor_path: Path) -> None:
    """Refuse a processor folder whose configs name custom classes (``auto_map``): that is Python code shipped
    in the folder, which transformers would offer to run; a CLIP / PickScore processor never needs it."""
    for name in PROCESSOR_CONFIGS:
        try:
            config = json.loads((processor_path / name).read_text(encoding="utf-8"))
        except FileNotFoundError:
            continue
        except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:   # ValueError: 5,000-digit ints too
            raise NotAClipCheckpoint(f"processor dir {shown_path(processor_path)!r}: {name} cannot be read as JSON "
                                     f"({_first_line(exc)})") from None
        if not isinstance(config, dict):
            raise NotAClipCheckpoint(f"processor dir {shown_path(processor_path)!r}: {name} holds a JSON "
                                     f"{type(config).__name__}, not the object of settings a processor config is")
        sections = [config, *(v for v in config.values() if isinstance(v, dict))]
        if any("auto_map" in section for section in sections):
            raise NotAClipCheckpoint(f"processor dir {shown_path(processor_path)!r}: {name} names custom code (auto_map); "
                                     "code from a model folder is never run: pass a plain CLIP / PickScore processor "
                                     f"holding {PROCESSOR_FILES}")


def _load_weights(path: Path) -> CLIPModel:
    """The CLIPModel saved in ``path``, refused unless every weight came from the checkpoint and is finite.

    transformers fills a weight the file lacks (or one of the wrong shape) with random values and only logs it:
    the scores would be noise that differs per run. A NaN or infinite weight (what a diverged training saves)
    makes NaN scores. A truncated or pickled-code weights file is refused with one line, not a traceback (no
    weights at all: :func:`check_config_fits_weights`, called first, refuses the folder).
    """
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()   # transformers' multi-line load report: the refusal below says it in one
    try:
        model, info = CLIPModel.from_pretrained(path, local_files_only=True, output_loading_info=True,
                                                ignore_mismatched_sizes=True)   # reported below, by name
    except pickle.UnpicklingError:   # torch's weights_only load met something other than tensors
        raise NotAClipCheckpoint(f"model dir {shown_path(path)!r}: its weights file holds objects other than tensors "
                                 "(refused: unpickling them could run code); pass a checkpoint saved as "
                                 "model.safetensors") from None
    except StrictDataclassError as exc:      # a config.json field of another type (image_size "32")
        raise NotAClipCheckpoint(f"model dir {shown_path(path)!r}: config.json does not describe a CLIP model "
                                 f"({_first_line(exc)}); pass a complete CLIP / PickScore checkpoint directory") from None
    except (OSError, RuntimeError, ValueError, TypeError, EOFError, SafetensorError) as exc:
        raise NotAClipCheckpoint(f"model dir {shown_path(path)!r}: its weights cannot be read ({_first_line(exc)}); an "
                                 "interrupted copy? pass a complete CLIP / PickScore checkpoint directory") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    # the position_ids buffers older transformers saved (PickScore_v1's checkpoint holds them) are dropped without
    # a report, so such checkpoints still load
    problems = [f"{kind}: {', '.join(sorted(k if isinstance(k, str) else str(k[0]) for k in keys)[:8])}"
                + (f" and {len(keys) - 8} more" if len(keys) > 8 else "")
                for kind, keys in (("missing", info["missing_keys"]), ("unexpected", info["unexpected_keys"]),
                                   ("wrong shape", info["mismatched_keys"])) if keys]
    if problems:
        raise NotAClipCheckpoint(f"model dir {shown_path(path)!r}: its weights do not match its config.json "
                                 f"({'; '.join(problems)}): scores would not be the checkpoint's (transformers fills "
                                 "a missing weight with random values); pass a complete CLIP / PickScore checkpoint "
                                 "directory")
    bad = [name for name, value in model.named_parameters() if not bool(torch.isfinite(value).all())]
    if not bad and not bool(torch.isfinite(model.logit_scale.exp())):
        bad = [f"logit_scale ({model.logit_scale.item():g}, whose exp is infinite)"]
    if bad:
        raise NotAClipCheckpoint(f"model dir {shown_path(path)!r}: {len(bad)} weight(s) hold NaN or infinite values "
                                 f"({', '.join(bad[:8])}), as a diverged training saves them: every score would be NaN")
    return model


MAX_RESIZE = 4       # a processor may resize the short side to at most this many times the model's size, then crop
MIN_STD, MAX_NORM = 1e-6, 1e6       # pixels of [0, 1] normalised stay far from float32's range with these bounds


def _check_processor_steps(image_processor: Any, processor_path: Path) -> None:
    """Refuse preprocessing steps the scorer would not carry out as the processor says (it rescales pixels by
    1/255 and resizes bicubic, as PickScore's evaluation does): ``do_rescale`` off or another ``rescale_factor``
    scored exactly as the plain processor (review rev22d), and so would another ``resample``."""
    factor, resample = getattr(image_processor, "rescale_factor", 1 / 255), getattr(image_processor, "resample", 3)
    bicubic = resample == 3 or (isinstance(resample, str) and resample.strip().lower() == "bicubic")  # not 3.5
    try:
        ok = (getattr(image_processor, "do_rescale", True) is True and math.isclose(float(factor), 1 / 255, rel_tol=1e-6)
              and bicubic)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise NotAClipCheckpoint(f"the processor in {shown_path(processor_path)!r} has do_rescale "
                                 f"{getattr(image_processor, 'do_rescale', None)!r}, rescale_factor {factor!r}, resample "
                                 f"{resample!r}: the scorer rescales pixels by 1/255 and resizes bicubic (resample 3), "
                                 "as PickScore's evaluation does, and scores with no other processor")


def check_processor_fits(image_processor: Any, image_size: int, processor_path: Path, model_path: Path) -> None:
    """Refuse an image processor whose crop is not the model's ``vision_config.image_size`` (any other size fails in
    the vision tower), whose resize is smaller than it or more than ``MAX_RESIZE`` times it (an absurd size would
    allocate terabytes; resizing larger and centre-cropping is how PickScore's processor works), or whose mean /
    std would make NaN or infinite pixels (3 finite values each, a std of at least ``MIN_STD``, all of at most
    ``MAX_NORM``: a std of 1e-300 makes every pixel infinite in float32)."""
    def side(value: Any, key: str) -> Any:
        return value.get(key) if isinstance(value, dict) else getattr(value, key, None)

    _check_processor_steps(image_processor, processor_path)
    crop, size = image_processor.crop_size, image_processor.size
    crops = {"crop_size height": side(crop, "height"), "crop_size width": side(crop, "width")}
    resizes = {f"size {key}": side(size, key) for key in ("shortest_edge", "height", "width")
               if side(size, key) is not None}
    wrong = {name: value for name, value in crops.items() if value != image_size}
    wrong.update({name: value for name, value in resizes.items()
                  if type(value) is not int or not image_size <= value <= MAX_RESIZE * image_size})
    if wrong or not resizes:
        found = ", ".join(f"{name} {value}" for name, value in wrong.items()) or f"size {size!r}"
        raise NotAClipCheckpoint(f"the processor in {shown_path(processor_path)!r} has {found} but the model in "
                                 f"{str(model_path)!r} takes {image_size} px images (vision_config.image_size: the "
                                 f"crop must be that, the resize from it to {MAX_RESIZE}x it): they do not belong "
                                 f"together (pass --processor DIR holding the model's own {PROCESSOR_FILES})")
    for name in ("image_mean", "image_std"):
        values = getattr(image_processor, name, None)
        try:   # a string is no list of numbers ("123" is not (1, 2, 3), review rev22d)
            numbers = [] if isinstance(values, (str, bytes)) else [float(v) for v in values]
        except (TypeError, ValueError):
            numbers = []
        low = MIN_STD if name == "image_std" else -MAX_NORM
        if len(numbers) != 3 or not all(math.isfinite(v) and low <= v <= MAX_NORM for v in numbers):
            raise NotAClipCheckpoint(f"the processor in {shown_path(processor_path)!r} has {name} {values!r}: pixels "
                                     "normalised with it would not be finite numbers, or it is not one value per "
                                     f"colour (a CLIP processor has three finite values, the std ones from {MIN_STD} "
                                     f"to {MAX_NORM:g})")


def save_checkpoint(directory: Path, clip: CLIPModel, processor: Any) -> None:
    """``save_pretrained`` the model and processor, plus the files older transformers read (``write_legacy_files``);
    ``tokenizer_config.json`` without the settings a load adds (:func:`drop_load_time_settings`)."""
    clip.save_pretrained(directory)
    processor.save_pretrained(directory)
    drop_load_time_settings(Path(directory), getattr(processor, "tokenizer", None))
    write_legacy_files(Path(directory))


# Set in a fast tokenizer's settings by every load, whatever tokenizer_config.json says (from_pretrained overwrites them)
LOAD_ORIGIN_SETTINGS = ("is_local", "local_files_only")


def drop_load_time_settings(directory: Path, tokenizer: Any) -> list[str]:
    """Remove from ``directory/tokenizer_config.json`` what a load of the tokenizer put in its settings and
    ``save_pretrained`` wrote back: :data:`LOAD_ORIGIN_SETTINGS`, and the truncation and padding settings
    (``max_length``, ``truncation_strategy``, ``padding_side``, ...) transformers derives on load from the
    ``tokenizer.json`` it saves beside (the backend's truncation and padding), where they hold the value that load
    derives (one that differs is the tokenizer's own setting: kept). A load of the saved folder gives the
    tokenizer the same settings either way, and a checkpoint saved from a loaded one (a resume's ``best/``,
    ``checkpoints/last/``) is byte for byte the one saved at first (review rev34l: a resumed run's
    ``best/tokenizer_config.json`` held seven keys more than an uninterrupted run's). Returns the keys removed."""
    path = Path(directory) / "tokenizer_config.json"
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or not path.is_file():
        return []
    settings = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(settings, dict):
        return []
    derived: dict[str, Any] = {}
    truncation, padding = backend.truncation, backend.padding   # what the saved tokenizer.json records
    if truncation is not None:      # as transformers' TokenizersBackend.__init__ sets them (setdefault, in order)
        derived.update(max_length=truncation["max_length"], truncation_side=truncation["direction"],
                       stride=truncation["stride"], truncation_strategy=truncation["strategy"])
    if padding is not None:
        derived.setdefault("pad_token_type_id", padding["pad_type_id"])
        derived.setdefault("padding_side", padding["direction"])
        derived.setdefault("max_length", padding["length"])
        derived.setdefault("pad_to_multiple_of", padding["pad_to_multiple_of"])
    drop = [key for key in settings if key in LOAD_ORIGIN_SETTINGS
            or (key in derived and settings[key] == derived[key] and type(settings[key]) is type(derived[key]))]
    if drop:
        kept = {key: value for key, value in settings.items() if key not in drop}
        # as save_pretrained writes it
        write_bytes_atomic(path, (json.dumps(kept, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8"))
    return drop


def write_legacy_files(directory: Path) -> list[str]:
    """Make a saved checkpoint loadable by transformers 4.2x (PickScore pins 4.27.3) as well as 5.x.

    transformers 5 saves the image processor inside ``processor_config.json`` and a ``tokenizer.json`` whose BPE
    merges are ``[a, b]`` pairs. transformers 4.27 reads the image processor only from ``preprocessor_config.json``,
    and its tokenizers (0.13) parses merges only as ``"a b"`` strings, which every later version reads too. This
    writes ``preprocessor_config.json``, rewrites the merges as strings, and adds the slow tokenizer's
    ``vocab.json`` + ``merges.txt`` (CLIP's layout). Returns the names of the files written.
    """
    written = []
    processor_config = directory / "processor_config.json"
    if processor_config.is_file() and not (directory / "preprocessor_config.json").is_file():
        image = json.loads(processor_config.read_text(encoding="utf-8")).get("image_processor")
        if image is not None:
            # the class name 4.x knows (5.x may record a backend-specific one such as CLIPImageProcessorPil)
            image = {**image, "image_processor_type": "CLIPImageProcessor", "processor_class": "CLIPProcessor"}
            _write_json(directory / "preprocessor_config.json", image)
            written.append("preprocessor_config.json")
    tokenizer_file = directory / "tokenizer.json"
    if tokenizer_file.is_file():
        tokenizer = json.loads(tokenizer_file.read_text(encoding="utf-8"))
        model = tokenizer.get("model", {})
        if model.get("type") == "BPE":
            merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
            if any(len(m.split(" ")) != 2 for m in merges):
                raise ValueError(f"{tokenizer_file}: a BPE merge holds a space; it cannot be written as 'a b'")
            if merges != model["merges"]:
                model["merges"] = merges
                _write_json(tokenizer_file, tokenizer)
                written.append("tokenizer.json")
            if not (directory / "vocab.json").is_file():
                _write_json(directory / "vocab.json", model["vocab"])
                written.append("vocab.json")
            if not (directory / "merges.txt").is_file():
                write_bytes_atomic(directory / "merges.txt", ("#version: 0.2\n" + "\n".join(merges) + "\n").encode())
                written.append("merges.txt")
    return written


def _write_json(path: Path, value: Any) -> None:
    write_bytes_atomic(path, (json.dumps(value, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))


def count_parameters(model: torch.nn.Module) -> int:
    """Number of parameters."""
    return sum(p.numel() for p in model.parameters())


def pooled_embeddings(output: Any) -> torch.Tensor:
    """The projected embedding of ``get_*_features`` (transformers >= 5 wraps it in a ModelOutput's pooler_output)."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def text_positions(clip: CLIPModel) -> int:
    """The most caption tokens the model's text tower takes (``text_config.max_position_embeddings``: 77 for
    CLIP, a scratch model's ``max_length``): what scoring truncates prompts to."""
    return int(clip.config.text_config.max_position_embeddings)


class PairScorer(torch.nn.Module):
    """``forward(input_ids, attention_mask, pixel_values[B, 2, 3, H, W]) -> scores[B, 2]`` (wrap this in DDP)."""

    def __init__(self, clip: CLIPModel):
        super().__init__()
        self.clip = clip

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pixel_values: torch.Tensor,
                all_images: bool = False) -> torch.Tensor:
        """Scores [B, 2] of each caption against its own two images; ``all_images``: [B, 2B] against every
        image of the batch (pair b's own images are columns 2b, 2b + 1), for the in-batch contrastive term."""
        batch = pixel_values.shape[0]
        image = pooled_embeddings(self.clip.get_image_features(pixel_values=pixel_values.flatten(0, 1)))
        text = pooled_embeddings(self.clip.get_text_features(input_ids=input_ids, attention_mask=attention_mask))
        image = image / image.norm(dim=-1, keepdim=True)
        text = text / text.norm(dim=-1, keepdim=True)
        if all_images:
            return self.clip.logit_scale.exp() * (text @ image.T)
        scores = torch.einsum("bd,bkd->bk", text, image.view(batch, 2, -1))
        return self.clip.logit_scale.exp() * scores


def own_pair_scores(all_scores: torch.Tensor) -> torch.Tensor:
    """[B, 2B] caption-vs-every-image scores -> [B, 2] scores of each caption's own two images."""
    batch = all_scores.shape[0]
    return all_scores.view(batch, batch, 2)[torch.arange(batch), torch.arange(batch)]


@torch.no_grad()
def score_prompt_images(model: CLIPModel, processor: Any, prompt: str, images: Sequence[Any],
                        device: str = "cpu") -> list[float]:
    """PickScore README scoring: probabilities (softmax over ``images``) that each image is preferred. The prompt
    is read as the training and :class:`training.scoring.Scorer` read one (:func:`training.data.bounded_caption`:
    the same tokens, at most ``MAX_CAPTION_CHARS`` characters given to the tokenizer; review rev30e)."""
    image_inputs = processor(images=list(images), return_tensors="pt").to(device)
    text_inputs = processor(text=bounded_caption(prompt), padding=True, truncation=True,
                            max_length=text_positions(model), return_tensors="pt").to(device)
    image_embs = pooled_embeddings(model.get_image_features(**image_inputs))
    image_embs = image_embs / torch.norm(image_embs, dim=-1, keepdim=True)
    text_embs = pooled_embeddings(model.get_text_features(**text_inputs))
    text_embs = text_embs / torch.norm(text_embs, dim=-1, keepdim=True)
    scores = model.logit_scale.exp() * (text_embs @ image_embs.T)[0]
    return torch.softmax(scores, dim=-1).cpu().tolist()
