"""``pickapic rerank``: best-of-n with a preference model: per prompt, keep the candidate it scores highest.

    pickapic rerank --model RUN/best --candidates CANDIDATES/ --output OUT/

Candidates come as a folder with one subfolder per prompt (``prompt.txt`` holding the prompt, the candidate
images beside it: ``.png``, ``.jpg``, ``.jpeg``, ``.webp``, ``.bmp``, sorted by name; any other file an
``unsupported_image`` row) or as a table
(``.parquet`` / ``.csv`` / ``.jsonl``; ``prompt`` and ``image`` columns, optional ``prompt_id`` to group).
``OUT/`` receives ``choices.parquet`` (one row per prompt: the choice, its score and softmax preference,
its margin over the runner-up, the candidates that could not be scored; ``schemas.scoring.RERANK_CHOICES``),
``scores.parquet`` (every candidate, ``IMAGE_SCORES``) and ``contact_sheet.png`` (the first prompts, their
candidates best first, the choice framed). A candidate that cannot be read is reported, never fatal.
"""
from __future__ import annotations

import argparse
import io
import sys
import textwrap
from pathlib import Path
from typing import Any, Iterable, Sequence

from PIL import Image, ImageDraw, ImageFont, ImageOps

from formats.files import is_apple_double, open_regular_file, write_bytes_atomic
from formats.home import DataHome
from formats.outputs import open_output_files, recorded_output_dir, write_output_record
from schemas import get_schema
from training.score_cli import (
    MAX_PROMPT_BYTES,
    PairRow,
    add_model_arguments,
    error_summary,
    int_between,
    read_pairs_table,
    score_rows,
    write_rows,
    write_rows_to,
)

MAX_SHEET_PROMPTS = 256   # a sheet is for a person to look at; each prompt is a 194 px row of the PNG
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
# images the scorer does not read: beside the prompt subfolders they still get a row (other files there, such as
# the simulator's truth.parquet or a README, are not candidates)
OTHER_IMAGE_SUFFIXES = (".gif", ".tif", ".tiff", ".heic", ".heif", ".avif", ".jxl", ".jp2", ".ico", ".svg", ".psd")
PROMPT_FILE = "prompt.txt"


def read_prompt(prompt_file: Path) -> tuple[str, str | None]:
    """(prompt, error) of a candidate subfolder's ``prompt.txt``: only a regular file of at most
    ``MAX_PROMPT_BYTES`` UTF-8 bytes is read (a FIFO is never waited on, ``/dev/zero`` never read); a leading
    byte-order mark and the white space around the prompt are dropped."""
    try:
        with open_regular_file(prompt_file) as handle:
            data = b""
            while len(data) <= MAX_PROMPT_BYTES and (chunk := handle.read(MAX_PROMPT_BYTES + 1 - len(data))):
                data += chunk
    except FileNotFoundError:
        return "", f"missing_prompt: {prompt_file.parent.name}/ has no {PROMPT_FILE}"
    except OSError as exc:
        return "", f"missing_prompt: {prompt_file} cannot be read ({exc.strerror or exc})"
    if len(data) > MAX_PROMPT_BYTES:
        return "", f"missing_prompt: {prompt_file} is longer than {MAX_PROMPT_BYTES} bytes"
    try:
        prompt = data.decode("utf-8-sig").strip()   # a byte-order mark (Windows Notepad's UTF-8) is no part of it
    except UnicodeDecodeError as exc:
        return "", f"missing_prompt: {prompt_file} cannot be read ({exc})"
    return prompt, None if prompt else f"missing_prompt: {prompt_file} is empty"


# what file managers leave in folders: never a candidate (a hidden name such as ".c2.png" is one, review rev22c)
SYSTEM_FILES = (".DS_Store", "Thumbs.db", "desktop.ini", ".directory")


def _system_file(path: Path) -> bool:
    """A file manager's own file: a name of ``SYSTEM_FILES``, or macOS's ``._NAME`` metadata (by its first bytes,
    :func:`formats.files.is_apple_double`: a real image named ``._c2.png`` is a candidate, review rev22d). Only a
    regular file's bytes are read."""
    return path.name in SYSTEM_FILES or is_apple_double(path)


def read_candidate_folder(folder: Path) -> list[PairRow]:
    """Candidates of a folder of prompt subfolders; a subfolder without ``prompt.txt`` yields error rows. Every
    entry of a subfolder but ``prompt.txt`` and file managers' own files (``SYSTEM_FILES``, AppleDouble ``._*``)
    is a candidate: one whose suffix is not in ``IMAGE_SUFFIXES`` (``c1.gif``) is an ``unsupported_image`` error
    row, never left out unseen. An image beside the subfolders (no prompt of its own; any image suffix, also one
    the scorer does not read) is a ``missing_prompt`` row; other files there (a README, a table) are no candidates."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"candidates {str(folder)!r} is neither a folder nor a table")
    rows: list[PairRow] = []
    entries = sorted(folder.iterdir())
    subfolders = [p for p in entries if p.is_dir()]
    if not subfolders:
        raise ValueError(f"candidates folder {str(folder)!r} has no prompt subfolders (each holds prompt.txt + images)")
    rows += [PairRow(p.name, "", str(p), f"missing_prompt: {p.name} lies beside the prompt subfolders, in none; move "
                     "it into the subfolder of its prompt") for p in entries
             if p.suffix.lower() in IMAGE_SUFFIXES + OTHER_IMAGE_SUFFIXES and not p.is_dir() and not _system_file(p)]
    for sub in subfolders:
        images = sorted(p for p in sub.iterdir() if p.name != PROMPT_FILE and not _system_file(p))
        prompt, error = read_prompt(sub / PROMPT_FILE)
        if not images:
            rows.append(PairRow(sub.name, prompt, str(sub), error or f"no_candidates: {sub.name}/ holds no images"))
        rows += [PairRow(sub.name, prompt, str(image), error or _unsupported(image)) for image in images]
    return rows


def _unsupported(image: Path) -> str | None:
    """The error of a candidate file whose suffix is not one of ``IMAGE_SUFFIXES``, else None."""
    if image.suffix.lower() in IMAGE_SUFFIXES:
        return None
    return (f"unsupported_image: {image.parent.name}/{image.name} is not a {', '.join(IMAGE_SUFFIXES)} file "
            "(convert it to score it)")


def read_candidates(source: Path) -> list[PairRow]:
    """Candidates from a folder or a table (by what ``source`` is)."""
    source = Path(source)
    if source.is_file():
        return read_pairs_table(source)
    return read_candidate_folder(source)


MAX_LISTED_ERRORS = 20      # a choice lists this many of its group's unscored candidates, then counts the rest


class _Group:
    """What a choice and a contact-sheet row need of one prompt group, held while the rows stream past: its
    first prompt (of the first row that has one), counts, the ``keep`` best scored rows (input order on ties) and the first unscored ones."""

    def __init__(self, prompt: str | None, keep: int) -> None:
        self.prompt, self.keep, self.real = prompt, keep, False
        self.count = self.scored = 0
        self.best: list[dict[str, Any]] = []         # highest score first; an equal score after the earlier row
        self.unscored: list[dict[str, Any]] = []

    def add(self, row: dict[str, Any]) -> None:
        self.count += 1
        if not self.real and _has_prompt(row):
            self.prompt, self.real = row["prompt"], True    # the group's prompt, not a first row's refused one
        if row["score"] is None:
            if len(self.unscored) < self.keep:
                self.unscored.append(row)
            return
        self.scored += 1
        at = len(self.best)
        while at and self.best[at - 1]["score"] < row["score"]:
            at -= 1
        if at < self.keep:
            self.best.insert(at, row)
            del self.best[self.keep:]


def _has_prompt(row: dict[str, Any]) -> bool:
    """Whether a row's prompt was taken as one (not a ``missing_prompt`` row's: empty, white space, over-long)."""
    return bool((row["prompt"] or "").strip()) and not (row["error"] or "").startswith("missing_prompt")


def _groups(scored: Iterable[dict[str, Any]], keep: int, limit: int | None = None) -> dict[str, _Group]:
    """The prompt groups of ``scored`` in input order (the first ``limit`` only, when given), one pass."""
    groups: dict[str, _Group] = {}
    for row in scored:
        group = groups.get(row["prompt_id"])
        if group is None:
            if limit is not None and len(groups) >= limit:
                continue
            group = groups[row["prompt_id"]] = _Group(row["prompt"], keep)
        group.add(row)
    return groups


def choose(scored: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per prompt group (input order), the best-of-n choice: the highest score (first on ties), its margins.

    One pass over the rows, holding per group its two best rows and the first ``MAX_LISTED_ERRORS`` unscored
    ones (the rest are counted in a last entry of ``errors``: every row is in scores.parquet), so a table of
    millions of rows that cannot be scored costs no memory per row here (review rev22a)."""
    choices = []
    for prompt_id, group in _groups(scored, max(2, MAX_LISTED_ERRORS)).items():
        best = group.best[0] if group.best else None
        second = group.best[1] if len(group.best) > 1 else None
        errors = [f"{r['image']}: {r['error']}" for r in group.unscored[:MAX_LISTED_ERRORS]]
        more = group.count - group.scored - len(errors)
        if more:
            errors.append(f"... and {more} more candidates that could not be scored (see scores.parquet)")
        choices.append({
            "prompt_id": prompt_id, "prompt": group.prompt, "num_candidates": group.count,
            "num_scored": group.scored,
            "best_image": best["image"] if best else None, "best_score": best["score"] if best else None,
            "best_preference": best["preference"] if best else None,
            "runner_up_image": second["image"] if second else None,
            "margin": best["score"] - second["score"] if second else None,
            "preference_margin": best["preference"] - second["preference"] if second else None,
            "errors": errors,
        })
    return choices


def contact_sheet(scored: Sequence[dict[str, Any]], path: Path, prompts: int = 8, thumb: int = 128,
                  max_candidates: int = 8) -> Path:
    """Write :func:`contact_sheet_png` to ``path`` (atomically); returns the path."""
    write_bytes_atomic(Path(path), contact_sheet_png(scored, prompts, thumb, max_candidates))
    return Path(path)


def contact_sheet_png(scored: Sequence[dict[str, Any]], prompts: int = 8, thumb: int = 128,
                      max_candidates: int = 8) -> bytes:
    """PNG: one row per prompt (the first ``prompts``), its candidates best first with score and preference,
    the choice framed green, unreadable candidates as grey tiles naming the reason."""
    # the first ``prompts`` groups, each holding only the rows it may show (one pass, no memory per row)
    chosen = [(prompt_id, group, (group.best + group.unscored)[:max_candidates])
              for prompt_id, group in _groups(scored, max_candidates, prompts).items()] if prompts else []
    font = ImageFont.load_default(size=11)
    pad, caption_h, label_h = 8, 30, 28
    columns = max([min(group.count, max_candidates) for _, group, _ in chosen] or [1])
    width = pad + columns * (thumb + pad)
    row_h = caption_h + thumb + label_h + pad
    sheet = Image.new("RGB", (max(width, 320), pad + row_h * max(len(chosen), 1)), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (prompt_id, group, ordered) in enumerate(chosen):
        top = pad + r * row_h
        title = textwrap.shorten(f"{prompt_id}: {group.prompt}", width=max(20, width // 6), placeholder="…")
        draw.text((pad, top), title, fill="black", font=font)
        for c, row in enumerate(ordered):
            left, y = pad + c * (thumb + pad), top + caption_h
            tile = _thumbnail(row["image"], thumb) if row["score"] is not None else None
            if tile is None:
                draw.rectangle((left, y, left + thumb - 1, y + thumb - 1), fill=(200, 200, 200))
                reason = (row["error"] or "unreadable").split(":", 1)[0]
                draw.text((left + 4, y + thumb // 2 - 6), reason, fill="black", font=font)
            else:
                sheet.paste(tile, (left + (thumb - tile.width) // 2, y + (thumb - tile.height) // 2))
            if c == 0 and row["score"] is not None:
                draw.rectangle((left - 3, y - 3, left + thumb + 2, y + thumb + 2), outline=(20, 160, 40), width=3)
            label = "-" if row["score"] is None else f"{row['score']:.2f}  p={row['preference']:.2f}"
            draw.text((left, y + thumb + 4), label, fill="black", font=font)
            draw.text((left, y + thumb + 15), textwrap.shorten(Path(row["image"]).name, 22, placeholder="…"),
                      fill=(90, 90, 90), font=font)
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
    return buffer.getvalue()


def _thumbnail(path: str, size: int) -> Image.Image | None:
    """The candidate, read again as the scorer read it (:func:`training.scoring.load_rgb`: a regular file only, so a
    FIFO swapped in after scoring is never waited on; no decompression bomb), fitted into ``size`` pixels."""
    from training.scoring import ImageError, load_rgb  # imports torch: only once a sheet is drawn

    try:
        return ImageOps.contain(load_rgb(path, path), (size, size), Image.Resampling.BICUBIC)
    except (ImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None  # the scorer read it; a later change of the file only costs the picture


RERANK_RECORD = "pickapic-rerank.json"    # the files reranks into a folder wrote: the only ones a later one replaces
RERANK_FILES = ("scores.parquet", "choices.parquet", "contact_sheet.png")


def rerank(scorer: Any, candidates: Sequence[PairRow], output_dir: Path, sheet_prompts: int = 8,
           record: Sequence[str] | None = None, homes: Sequence[Path] = ()) -> dict[str, Any]:
    """Score ``candidates``, choose per prompt, write choices.parquet, scores.parquet and contact_sheet.png.

    ``record``: ``output_dir`` is a user-given ``--output`` checked by
    :func:`formats.outputs.recorded_output_dir`; its files and the ``pickapic-rerank.json`` listing
    ``record`` are written all or nothing (:func:`formats.outputs.open_output_files`: each entry checked
    again before the renames, never through a link, out of ``homes``).
    """
    output_dir = Path(output_dir)
    scored = score_rows(scorer, candidates)
    choices = choose(scored)
    if record is not None:
        tables = {"scores.parquet": (scored, get_schema("image_scores")),
                  "choices.parquet": (choices, get_schema("rerank_choices"))}
        with open_output_files(output_dir, [*RERANK_FILES, RERANK_RECORD], homes, "--output") as open_file:
            for name, (rows, schema) in tables.items():
                with open_file(name) as handle:
                    write_rows_to(handle, rows, schema)
            with open_file("contact_sheet.png") as handle:
                handle.write(contact_sheet_png(scored, prompts=sheet_prompts))
            write_output_record(open_file, RERANK_RECORD, record, "pickapic rerank")
        sheet = output_dir / "contact_sheet.png"
    else:
        output_dir.mkdir(parents=True, exist_ok=True)
        write_rows(scored, get_schema("image_scores"), output_dir / "scores.parquet")
        write_rows(choices, get_schema("rerank_choices"), output_dir / "choices.parquet")
        sheet = contact_sheet(scored, output_dir / "contact_sheet.png", prompts=sheet_prompts)
    return {"prompts": len(choices), "candidates": len(scored), "unscored": sum(r["score"] is None for r in scored),
            "choices": str(output_dir / "choices.parquet"), "scores": str(output_dir / "scores.parquet"),
            "contact_sheet": str(sheet), "summary": error_summary(scored)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``pickapic rerank``."""
    add_model_arguments(parser)
    parser.add_argument("--candidates", type=Path, required=True, metavar="FOLDER|TABLE",
                        help="a folder of prompt subfolders (prompt.txt + images) or a .parquet/.csv/.jsonl table "
                             "with prompt, image (and optional prompt_id) columns")
    parser.add_argument("--output", type=Path, required=True, metavar="DIR",
                        help="folder for choices.parquet, scores.parquet and contact_sheet.png")
    parser.add_argument("--sheet-prompts", type=int_between(0, MAX_SHEET_PROMPTS), default=8,
                        help=f"prompts on the contact sheet, 0 to {MAX_SHEET_PROMPTS} (default 8)")


def _refuse_output_in_candidates(output: Path, candidates: Path) -> None:
    """A clear error for an ``--output`` folder inside (or equal to) a ``--candidates`` folder: a later rerank of
    the same candidates would read the output folder as a prompt and its contact sheet as a candidate."""
    candidates, output = Path(candidates), Path(output)
    if candidates.is_dir() and output.resolve().is_relative_to(candidates.resolve()):
        raise ValueError(f"--output {str(output)!r} is inside --candidates {str(candidates)!r}: a later rerank "
                         "would read its files as candidates; write it somewhere else")


def run_from_args(args: argparse.Namespace) -> int:
    """Entry point of ``pickapic rerank``; returns the exit code."""
    _refuse_output_in_candidates(args.output, args.candidates)
    candidates = read_candidates(args.candidates)
    # a new or empty folder or an earlier rerank's (its record lists what it wrote: only those files are
    # replaced), never a link, a file or a folder inside a data home
    homes = [DataHome.at(getattr(args, "home", None)).root]
    output, listed = recorded_output_dir(args.output, homes, "--output", RERANK_RECORD, RERANK_FILES)
    from training.scoring import Scorer

    scorer = Scorer(args.model, args.processor, device=args.device, batch_size=args.batch_size)
    report = rerank(scorer, candidates, output, args.sheet_prompts, record=listed, homes=homes)
    print(f"{report['prompts']} prompts, {report['candidates']} candidates -> {report['choices']}, "
          f"{report['contact_sheet']}")
    if report["summary"]:
        print(report["summary"], file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m training.rerank``."""
    parser = argparse.ArgumentParser(prog="python -m training.rerank", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    from formats.commands import run_command

    sys.exit(run_command("python -m training.rerank", main))
