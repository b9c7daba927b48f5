"""``pickapic score``: PickScore scores of (prompt, image) pairs from the command line, and the pair tables
``pickapic score`` and ``pickapic rerank`` read and write.

    pickapic score --model RUN/best --prompt "two red stars" a.png b.png c.png
    pickapic score --model RUN/best --input pairs.parquet --output scores.parquet

Input: one prompt and image files, or a table (``.parquet``, ``.csv``, ``.jsonl``) with a ``prompt`` and an
``image`` column (paths; relative ones are taken relative to the table's folder) and optionally a
``prompt_id`` column that groups candidate sets (one prompt per ``prompt_id``). Output: one row per pair
(``schemas.scoring.IMAGE_SCORES``: score, softmax preference and rank within its prompt, or the error that kept
it from being scored), printed as a table or written to ``--output`` (``.parquet``, ``.csv`` or ``.jsonl``).
Building the parser imports no torch; the model loads when a command runs.
"""
from __future__ import annotations

import argparse
import bisect
import hashlib
import json
import math
import sys
from array import array
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from formats.files import atomic_path
from formats.home import DataHome
from formats.outputs import check_output_file, open_output_file
from formats.text import terminal_text, utf8_text
from schemas import get_schema

TABLE_FORMATS = (".parquet", ".csv", ".jsonl")
MAX_PROMPT_BYTES = 64 * 1024  # far above any real prompt; a longer one is an error row, never tokenized
ROW_BATCH = 8192              # table rows turned into Python objects at a time (reading, writing)
SCORE_ROWS = 2048             # rows given to the scorer at a time (score_rows): its results are held until scored


@dataclass(frozen=True)
class PairRow:
    """One (prompt, image) to score, from the command line or a table row; ``error`` when the row itself is bad."""

    prompt_id: str
    prompt: str
    image: str
    error: str | None = None


def prompt_digest(prompt: str) -> str:
    """A stable id for a prompt: the first 16 hex digits of its sha256."""
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:16]


def _table_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix == ".json":
        suffix = ".jsonl"
    if suffix not in TABLE_FORMATS:
        raise ValueError(f"{path}: unknown table format {path.suffix!r}; use one of {', '.join(TABLE_FORMATS)}")
    return suffix


def read_table(path: Path) -> pa.Table:
    """A Parquet / CSV / JSONL table; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"input table {str(path)!r} does not exist or is not a file")
    fmt = _table_format(path)
    try:
        if fmt == ".parquet":
            table = pq.read_table(path)
        elif fmt == ".csv":   # every column as text, as written: no number guessed, no NA / null read as missing
            as_text = pacsv.ConvertOptions(null_values=[], strings_can_be_null=False, quoted_strings_can_be_null=False)
            with pacsv.open_csv(path, convert_options=as_text) as reader:   # the header's column names
                names = reader.schema.names
            _refuse_duplicated_columns(path, names)
            as_text.column_types = {name: pa.string() for name in names}
            table = pacsv.read_csv(path, convert_options=as_text)
        else:
            table = pajson.read_json(path)
        _refuse_duplicated_columns(path, table.column_names)
        table.validate(full=True)   # text that is not UTF-8 (JSON and Parquet readers pass it on) is refused here
        return table
    except (pa.ArrowInvalid, OSError) as exc:
        raise ValueError(f"input table {str(path)!r} cannot be read as {fmt[1:]}: {exc}") from None


def _refuse_duplicated_columns(path: Path, names: Sequence[str]) -> None:
    """A clear error for a table that names one column twice (a CSV header ``prompt,image,prompt``)."""
    twice = sorted(name for name, n in Counter(names).items() if n > 1)
    if twice:
        raise ValueError(f"input table {str(path)!r} has more than one column named "
                         + ", ".join(repr(name) for name in twice))


def read_pairs_table(path: Path, prompt_column: str = "prompt", image_column: str = "image",
                     prompt_id_column: str | None = "prompt_id") -> PairTable:
    """The (prompt, image) rows of a table; a row without a prompt (or one of only white space) or image path
    becomes an error row. A ``prompt_id`` shared by rows of different prompts is refused."""
    path = Path(path)
    table = read_table(path)
    for column in (prompt_column, image_column):
        if column not in table.column_names:
            raise ValueError(f"input table {str(path)!r} has no column {column!r} (columns: {table.column_names})")
    if not (prompt_id_column and prompt_id_column in table.column_names):
        return PairTable(path, table, prompt_column, image_column, None)
    rows = PairTable(path, table, prompt_column, image_column, prompt_id_column)
    _refuse_shared_prompt_ids(rows, prompt_id_column)
    return rows


def _refuse_shared_prompt_ids(rows: PairTable, prompt_id_column: str) -> None:
    """A clear error when rows of one prompt_id hold different prompts: they would be ranked as one candidate
    set (one softmax over the images of two prompts). Rows without a prompt are left out; a row with a prompt and
    no image counts (review rev22c: its prompt became the choice's)."""
    first: dict[str, str] = {}
    for row in rows:
        has_prompt = row.error is None or not row.error.startswith("missing_prompt")    # a row without an image too
        if has_prompt and first.setdefault(row.prompt_id, row.prompt) != row.prompt:
            raise ValueError(f"input table {str(rows.path)!r}: {prompt_id_column} {row.prompt_id!r} holds different "
                             f"prompts ({_shorten(first[row.prompt_id], 60)!r}, {_shorten(row.prompt, 60)!r}); "
                             f"give each prompt its own {prompt_id_column}")


def _index(rows: Sequence, index: int | slice, item: Callable[[int], Any]) -> Any:
    """``rows[index]`` as a list does it (negative numbers, slices with steps), ``item(n)`` making row ``n``."""
    if isinstance(index, slice):
        return [item(number) for number in range(*index.indices(len(rows)))]
    number = index + len(rows) if index < 0 else index
    if not 0 <= number < len(rows):
        raise IndexError(index)
    return item(number)


class PairTable(Sequence[PairRow]):
    """The rows of a pair table as :class:`PairRow`, made when asked for (:data:`ROW_BATCH` rows at a time while
    iterated): a table of many bad rows (a 1 KB Parquet can declare millions) holds no Python object per row."""

    def __init__(self, path: Path, table: pa.Table, prompt_column: str, image_column: str,
                 prompt_id_column: str | None) -> None:
        self.path, self._table = Path(path), table
        self._columns = (prompt_column, image_column, prompt_id_column)

    def __len__(self) -> int:
        return self._table.num_rows

    def __getitem__(self, index):
        return _index(self, index, lambda number: next(self._rows(number, 1)))

    def __iter__(self) -> Iterator[PairRow]:
        for start in range(0, len(self), ROW_BATCH):
            yield from self._rows(start, ROW_BATCH)

    def _rows(self, start: int, length: int) -> Iterator[PairRow]:
        prompt_column, image_column, prompt_id_column = self._columns
        part = self._table.slice(start, length)
        prompts, images = _bounded_texts(part.column(prompt_column)), part.column(image_column).to_pylist()
        ids = part.column(prompt_id_column).to_pylist() if prompt_id_column else [None] * part.num_rows
        for number, prompt, image, prompt_id in zip(range(start + 1, start + part.num_rows + 1), prompts, images, ids):
            yield self._row(number, prompt, image, prompt_id)

    def _row(self, number: int, prompt: Any, image: Any, prompt_id: Any) -> PairRow:
        prompt_column, image_column, _ = self._columns
        name, error = self.path.name, None
        digest = None
        if isinstance(prompt, _LongText):
            # as a candidate folder's prompt.txt: far above any real prompt, never given to the tokenizer whole,
            # never made a Python string whole: the row keeps its first PROMPT_KEPT bytes
            error = (f"missing_prompt: row {number} of {name} has a {prompt_column} longer than {MAX_PROMPT_BYTES} "
                     f"bytes ({prompt.size} bytes; its first {PROMPT_KEPT} bytes are kept)")
            prompt, digest = prompt.head, prompt.digest
        elif not isinstance(prompt, str) or not prompt.strip():
            # white space only is no prompt, as in a candidate folder's prompt.txt
            error, prompt = (f"missing_prompt: row {number} of {name} has no {prompt_column}",
                             prompt if isinstance(prompt, str) else "")     # bytes are no prompt text ("b'...'")
        if not isinstance(image, str) or not image:
            error, image = error or f"missing_image_path: row {number} of {name} has no {image_column}", ""
        elif not Path(image).is_absolute():
            image = str(self.path.parent / image)
        missing_id = prompt_id in (None, "") or (isinstance(prompt_id, float) and math.isnan(prompt_id))   # pandas' NaN
        return PairRow((digest or prompt_digest(prompt)) if missing_id else str(prompt_id), prompt, image, error)


PROMPT_KEPT = 1024   # bytes of a refused over-long table prompt kept in its row (and so in --output)


@dataclass(frozen=True)
class _LongText:
    """A table text over :data:`MAX_PROMPT_BYTES`, as read without making it a Python string: its size in bytes,
    its first :data:`PROMPT_KEPT` bytes (cut at a character boundary) and its :func:`prompt_digest`."""

    size: int
    head: str
    digest: str


def _bounded_texts(column: pa.ChunkedArray) -> list[Any]:
    """The values of a prompt column as Python objects, except that a text over :data:`MAX_PROMPT_BYTES` becomes a
    :class:`_LongText` and a value that is no text (numbers, bytes, lists: no prompt) ``None``, neither made a
    Python object whole: the byte lengths come from the Arrow column first (``pyarrow.compute.binary_length``, of
    a dictionary column's dictionary), so a tiny file declaring many huge rows costs no memory per row (rev32a)."""
    array = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    values = array.dictionary if pa.types.is_dictionary(array.type) else array
    if pa.types.is_string_view(values.type):   # no binary_length kernel: each view's length, no text copied
        lengths = pa.array([None if (data := value.as_buffer()) is None else len(data) for value in values],
                           pa.int64())
    elif pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        lengths = pc.binary_length(values)
    else:
        return [None] * len(array)
    if pa.types.is_dictionary(array.type):
        lengths = pc.take(lengths, array.indices)
    long_rows = pc.greater(pc.fill_null(lengths, 0), MAX_PROMPT_BYTES)
    if not pc.any(long_rows).as_py():
        return array.to_pylist()
    out: list[Any] = []
    for i, is_long in enumerate(long_rows.to_pylist()):
        if not is_long:
            out.append(array[i].as_py())
            continue
        scalar = array[i]
        data = (scalar.value if pa.types.is_dictionary(array.type) else scalar).as_buffer()
        view = memoryview(data)
        out.append(_LongText(len(view), bytes(view[:PROMPT_KEPT]).decode("utf-8", "ignore"),
                             hashlib.sha256(view).hexdigest()[:16]))
    return out


class ErrorTexts:
    """The error texts of the rows a scorer could not score, held once per distinct text with the row's image path
    taken out (a million rows whose images are missing share one ``missing_file: <image> does not exist``), at
    most :data:`MAX_ERROR_TEXTS` of them: past that a row keeps its reason and image path only, and says so."""

    IMAGE = "\x00\uffff<image>\uffff\x00"   # where the row's image path goes back in

    def __init__(self) -> None:
        self._index: dict[str, int] = {}
        self.texts: list[str] = []

    def add(self, error: str, image: str) -> int:
        """The index of ``error`` (a row's error text about its ``image``)."""
        text = error.replace(image, self.IMAGE) if image else error
        index = self._index.get(text)
        if index is None:
            if len(self.texts) >= MAX_ERROR_TEXTS:
                reason = error.split(":", 1)[0]
                text = (f"{reason}: {self.IMAGE} (the details of this error were not kept: more than "
                        f"{MAX_ERROR_TEXTS} different errors in one table)")
                index = self._index.get(text)
                if index is not None:
                    return index
            index = self._index[text] = len(self.texts)
            self.texts.append(text)
        return index

    def text(self, index: int, image: str) -> str:
        """The error text ``index`` about the row's ``image``."""
        return self.texts[index].replace(self.IMAGE, image)


MAX_ERROR_TEXTS = 1024   # distinct error texts a scoring keeps whole (a reason for each of the rest)


class ScoredRows(Sequence[dict]):
    """Every input row, in order, as an ``IMAGE_SCORES`` dict made when asked for. Held: the score, preference and
    rank of each scored row (numbers in arrays) and, for the rows the scorer could not score, runs of rows that
    share an error text (:class:`ErrorTexts`): a row that could not be scored costs no Python object while held,
    and a run of such rows with one error (images missing) costs what one row does."""

    def __init__(self, rows: Sequence[PairRow], scored: array, values: array, preferences: array, ranks: array,
                 failed: FailedRuns, errors: ErrorTexts) -> None:
        self._rows, self._scored, self._values, self._preferences, self._ranks = rows, scored, values, preferences, ranks
        self._failed, self._errors = failed, errors

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, index):
        return _index(self, index, lambda number: self._dict(number, self._rows[number]))

    def __iter__(self) -> Iterator[dict]:
        return (self._dict(number, row) for number, row in enumerate(self._rows))

    def _dict(self, number: int, row: PairRow) -> dict[str, Any]:
        out = {"prompt_id": row.prompt_id, "prompt": row.prompt, "image": row.image, "score": None, "preference": None,
               "rank": None, "error": row.error}
        if row.error is not None:           # never given to the scorer
            return out
        k = bisect.bisect_left(self._scored, number)
        if k < len(self._scored) and self._scored[k] == number:
            out.update(score=self._values[k], preference=self._preferences[k], rank=self._ranks[k])
            return out
        index = self._failed.find(number)
        out["error"] = self._errors.text(index, row.image) if index is not None else "not_scored: no result kept"
        return out


class FailedRuns:
    """The rows a scorer could not score, as runs ``[start, end)`` of row numbers that share one error text index
    (rows between them that carry their own error, never scored, do not end a run; a scored row does)."""

    def __init__(self) -> None:
        self.starts, self.ends, self.indexes = array("q"), array("q"), array("q")
        self._open = False

    def add(self, number: int, index: int) -> None:
        if self._open and self.indexes[-1] == index:
            self.ends[-1] = number + 1
            return
        self.starts.append(number)
        self.ends.append(number + 1)
        self.indexes.append(index)
        self._open = True

    def close(self) -> None:
        """A scored row came: the next failed row starts a new run."""
        self._open = False

    def find(self, number: int) -> int | None:
        """The error text index of the failed row ``number`` (None: not a failed row)."""
        k = bisect.bisect_right(self.starts, number) - 1
        return self.indexes[k] if k >= 0 and number < self.ends[k] else None


def softmax_within(groups: Sequence[str], scores: Sequence[float | None]) -> list[float | None]:
    """:func:`training.scoring.softmax_within` (imported when called: it imports torch)."""
    from training.scoring import softmax_within as within

    return within(groups, scores)


def ranks_within(groups: Sequence[str], scores: Sequence[float | None]) -> list[int | None]:
    """:func:`training.scoring.ranks_within` (imported when called: it imports torch)."""
    from training.scoring import ranks_within as within

    return within(groups, scores)


def score_rows(scorer: Any, rows: Sequence[PairRow]) -> ScoredRows:
    """Score the rows that have no error yet; every input row comes back, in order, as an IMAGE_SCORES dict.

    The scorer is given :data:`SCORE_ROWS` rows at a time and only numbers are kept: a score per scored row, runs of
    rows it could not score with their error text (review rev28a: a million rows whose images are missing held a
    million result objects); the preference (softmax) and rank of each scored row within its ``prompt_id`` are
    computed once every row is scored, as :func:`training.scoring.softmax_within` / ``ranks_within`` do."""
    scored, values = array("q"), array("d")          # the rows with a score, in input order
    failed, errors = FailedRuns(), ErrorTexts()
    members: dict[str, array] = {}                   # prompt_id -> positions in ``scored``
    chunk: list[tuple[int, PairRow]] = []

    def run() -> None:
        results = scorer.score_pairs([(row.prompt, row.image) for _, row in chunk],
                                     groups=[row.prompt_id for _, row in chunk])
        for (number, row), result in zip(chunk, results, strict=True):
            if result.error is None and result.score is not None:
                members.setdefault(row.prompt_id, array("q")).append(len(scored))
                scored.append(number)
                values.append(float(result.score))
                failed.close()
            else:
                failed.add(number, errors.add(str(result.error or "not_scored: the scorer gave no score"), row.image))
        chunk.clear()

    for number, row in enumerate(rows):
        if row.error is None:
            chunk.append((number, row))
            if len(chunk) == SCORE_ROWS:
                run()
    if chunk:
        run()
    preferences, ranks = array("d", bytes(8 * len(scored))), array("q", bytes(8 * len(scored)))
    for positions in members.values():
        group = [values[k] for k in positions]
        for k, preference in zip(positions, softmax_within([""] * len(group), group)):
            preferences[k] = preference
        for k, rank in zip(positions, ranks_within([""] * len(group), group)):
            ranks[k] = rank
    return ScoredRows(rows, scored, values, preferences, ranks, failed, errors)


def write_rows(rows: Iterable[dict[str, Any]], schema: pa.Schema, path: Path,
               user_given: Sequence[Path] | None = None) -> Path:
    """Write ``rows`` (dicts with ``schema``'s columns) to ``path`` as Parquet, CSV or JSONL, atomically.

    ``user_given`` (the data homes to stay out of) marks ``path`` as a user-given ``--output``: it must be
    a new path or a regular file, never a link, device or a file inside a data home.
    """
    path = Path(path)
    fmt = _table_format(path)
    if user_given is None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp, open(tmp, "wb") as handle:
            write_rows_to(handle, rows, schema, fmt)
    else:
        with open_output_file(path, user_given) as handle:
            write_rows_to(handle, rows, schema, fmt)
    return path


def _valid_text(value: Any) -> Any:
    """A row's value with every string in it (also in a list, e.g. rerank's ``errors``) as :func:`utf8_text`."""
    if isinstance(value, str):
        return utf8_text(value)
    if isinstance(value, list):
        return [_valid_text(item) for item in value]
    return value


def write_rows_to(handle: Any, rows: Iterable[dict[str, Any]], schema: pa.Schema, fmt: str = ".parquet") -> None:
    """Write ``rows`` to an open binary ``handle`` as ``fmt`` (``.parquet``, ``.csv`` or ``.jsonl``), :data:`ROW_BATCH`
    rows at a time (Parquet row groups of that many rows). Text that is not valid UTF-8 (an image path with bytes
    its file system name could not decode) is written as :func:`utf8_text`."""
    # CSV has no lists: a list column (rerank's errors) is written as its JSON text
    as_csv = pa.schema([pa.field(f.name, pa.string(), f.nullable) if pa.types.is_list(f.type) else f for f in schema])
    if fmt == ".parquet":
        writer = pq.ParquetWriter(handle, schema, compression="zstd")
    elif fmt == ".csv":
        writer = pacsv.CSVWriter(handle, as_csv)
    else:
        writer = None
    try:
        for batch in _row_batches(rows):
            table = pa.Table.from_pylist(batch, schema=schema)
            del batch   # one batch of rows held at a time: this one goes before the next is made
            if fmt == ".parquet":
                writer.write_table(table)
            elif fmt == ".csv":
                writer.write_table(pa.Table.from_arrays(
                    [pa.array([json.dumps(v) for v in column.to_pylist()], pa.string())
                     if pa.types.is_list(column.type) else column for column in table.columns], schema=as_csv))
            else:
                handle.write("".join(json.dumps(row, ensure_ascii=False) + "\n"
                                     for row in table.to_pylist()).encode("utf-8"))
            del table
    finally:
        if writer is not None:
            writer.close()


def _row_batches(rows: Iterable[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    """``rows`` in lists of at most :data:`ROW_BATCH`, every string as :func:`_valid_text`."""
    batch = []
    for row in rows:
        batch.append({key: _valid_text(value) for key, value in row.items()})
        if len(batch) == ROW_BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def print_rows(rows: list[dict[str, Any]], out: Any = None) -> None:
    """An aligned text table of score rows (prompt shortened), errors last in each line; prompts, paths and errors
    are printed as :func:`terminal_text` (a table's escape sequences never reach the terminal)."""
    out = out or sys.stdout
    lines = [("rank", "score", "preference", "image", "prompt / error")]
    for row in rows:
        scored = row["score"] is not None
        lines.append((str(row["rank"]) if scored else "-", f"{row['score']:.4f}" if scored else "-",
                      f"{row['preference']:.4f}" if scored else "-", terminal_text(row["image"]),
                      terminal_text(_shorten(row["prompt"], 48) if scored else f"error {row['error']}")))
    widths = [max(len(line[k]) for line in lines) for k in range(4)]
    for line in lines:
        print("  ".join(value.rjust(w) if k < 3 else value.ljust(w) for k, (value, w) in
                        enumerate(zip(line[:4], widths))) + "  " + line[4], file=out)


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


def error_summary(rows: list[dict[str, Any]]) -> str:
    """'N of M images could not be scored (reason n, ...)', or '' when every image was scored."""
    reasons = Counter(row["error"].split(":", 1)[0] for row in rows if row["error"])
    if not reasons:
        return ""
    return (f"{sum(reasons.values())} of {len(rows)} images could not be scored ("
            + ", ".join(f"{reason} {n}" for reason, n in sorted(reasons.items())) + "); see the error column")


MAX_BATCH_SIZE = 1024        # images per forward pass; more only allocates a larger buffer at once


def int_between(low: int, high: int):
    """An argparse ``type``: an integer in [low, high], else argparse's usage error naming the bounds."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is not between {low} and {high}")
        return value
    parse.__name__ = "integer"
    return parse


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """``--model``, ``--processor``, ``--device``, ``--batch-size`` (shared with ``pickapic rerank``)."""
    parser.add_argument("--model", required=True, metavar="DIR",
                        help="a trained best/ directory or any local PickScore / CLIP checkpoint (never downloads)")
    parser.add_argument("--processor", metavar="DIR", default=None,
                        help="processor directory when the model directory has none (PickScore_v1 uses CLIP-H's); "
                             "default: the model directory")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="default auto (cuda if present)")
    parser.add_argument("--batch-size", type=int_between(1, MAX_BATCH_SIZE), default=32,
                        help=f"images per forward pass, 1 to {MAX_BATCH_SIZE} (default 32)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``pickapic score``."""
    add_model_arguments(parser)
    parser.add_argument("--prompt", help="the prompt to score IMAGES against")
    parser.add_argument("images", nargs="*", metavar="IMAGE", help="image files (with --prompt)")
    parser.add_argument("--input", type=Path, metavar="TABLE",
                        help="a .parquet / .csv / .jsonl table with prompt and image columns (instead of --prompt)")
    parser.add_argument("--prompt-column", default="prompt", help="prompt column of --input (default prompt)")
    parser.add_argument("--image-column", default="image", help="image path column of --input (default image)")
    parser.add_argument("--output", type=Path, metavar="FILE",
                        help="write the scores to a .parquet / .csv / .jsonl file instead of printing them")


def rows_from_args(args: argparse.Namespace) -> list[PairRow]:
    """The pairs named on the command line (``--prompt`` + images, or ``--input``); errors name the flag."""
    if args.input is not None:
        if args.prompt or args.images:
            raise ValueError("give either --input TABLE or --prompt with image files, not both")
        return read_pairs_table(args.input, args.prompt_column, args.image_column)
    if not args.prompt or not args.images:
        raise ValueError("nothing to score: give --prompt TEXT with one or more image files, or --input TABLE")
    check_prompt_argument(args.prompt)
    return [PairRow(prompt_digest(args.prompt), args.prompt, image) for image in args.images]


def check_prompt_argument(prompt: str, flag: str = "--prompt") -> None:
    """Refuse a command-line prompt no table row could hold: white space only (no prompt, a ``missing_prompt`` row
    in a table), over :data:`MAX_PROMPT_BYTES` UTF-8 bytes, or bytes that are not UTF-8 (Python's
    ``surrogateescape`` of argv). Errors name ``flag``."""
    if not prompt.strip():
        raise ValueError(f"{flag} holds only white space: give the prompt to score the images against")
    try:
        size = len(prompt.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValueError(f"{flag} is not UTF-8 text (a byte the terminal's encoding could not decode, shown "
                         f"{terminal_text(repr(prompt[:60]))}); give the prompt as UTF-8 (a UTF-8 locale, "
                         "or --input TABLE)") from None
    if size > MAX_PROMPT_BYTES:
        raise ValueError(f"{flag} is longer than {MAX_PROMPT_BYTES} bytes ({size}): far above any real prompt")


def run_from_args(args: argparse.Namespace) -> int:
    """Entry point of ``pickapic score``; returns the exit code."""
    rows = rows_from_args(args)
    homes = [DataHome.at(getattr(args, "home", None)).root]
    if args.output is not None:   # refuse a bad --output (place or format) before the model loads
        check_output_file(args.output, homes)
        try:
            _table_format(Path(args.output))
        except ValueError as exc:
            raise ValueError(f"--output {exc}") from None
    from training.scoring import Scorer

    scorer = Scorer(args.model, args.processor, device=args.device, batch_size=args.batch_size)
    results = score_rows(scorer, rows)
    if args.output is not None:
        write_rows(results, get_schema("image_scores"), args.output, user_given=homes)
        print(f"{len(results)} rows -> {args.output}", file=sys.stderr)
    else:
        print_rows(results)
    summary = error_summary(results)
    if summary:
        print(summary, file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m training.score_cli``."""
    parser = argparse.ArgumentParser(prog="python -m training.score_cli", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    from formats.commands import run_command

    sys.exit(run_command("python -m training.score_cli", main))
