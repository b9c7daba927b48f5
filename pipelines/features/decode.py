"""Safe handling of one untrusted image blob: path checks, bounded read, one careful decode.

Policies (each failure is a reject row with one of these reasons, never an exception):

==================  ===========================================================================
unsafe_path         blob path is empty, absolute, has a scheme, ``..``/``.``/empty components,
                    a backslash, NUL or another control character, lies outside the blob zone
                    (``raw/`` by default), or (local files) resolves through a symlink to a target
                    outside that zone, or is not a regular file (directory, FIFO, device).
missing_blob        nothing at the blob path.
unreadable_blob     the blob is there but reading it failed (permission, I/O or storage error).
file_too_large      more than ``max_bytes`` bytes (read is capped: a huge file is never loaded).
empty_file          zero bytes.
not_an_image        bytes the extension's decoder does not recognise and whose leading bytes name
                    none of PNG, JPEG, WEBP, GIF, BMP, TIFF (every signature Pillow accepts for them).
extension_mismatch  the bytes are an image of another format than the extension promises
                    (``.png`` must be PNG; ``.jpg``/``.jpeg`` JPEG; ``.webp`` WEBP), or the
                    extension is none of these. Judged on the leading bytes before Pillow parses
                    anything, and Pillow is then given only the extension's format: no other
                    reader (TIFF's IFD reader, say) ever sees the bytes (review rev24d).
decompression_bomb  the header declares more than ``max_pixels`` pixels (default 4096 x 4096),
                    checked before any pixel is decoded; also Pillow's own bomb / text-chunk limits,
                    and, checked before Pillow parses a PNG, one of more than 65,536 chunks (seconds of
                    parsing for nothing), a second iCCP, more than 1,000 text/sPLT/eXIf chunks (libspng's
                    limit), a compressed chunk inflating past 1 MiB or 8 MiB of metadata in all (each
                    chunk read exactly as Pillow reads it); and, checked before Pillow parses a JPEG
                    (:func:`scan_jpeg`), more than 1,000 marker segments or 1,024 fill/stray bytes
                    before its first scan (Pillow walks them in Python and keeps every APPn/COM), more
                    than 65,536 markers in all, or more scans than the image's size allows (libjpeg
                    decodes every scan over the whole image; an encoder writes at most a few dozen):
                    500, fewer from 2 Mpx on (64 at 4096 x 4096, scans x pixels at most 2^30), never
                    under 32; and an EXIF (APP1) or MPF (APP2) TIFF directory whose tags declare more
                    data than twice its bytes (plus 64 KiB), or more than 4 MiB of EXIF: Pillow's TIFF
                    reader copies each tag's data (tags sharing one block are each a copy; MPF tags are
                    all decoded to Python objects), review rev24h.
too_small           shortest side below ``min_side`` (default 8 px; a 1x1 image is rejected).
bad_dimensions      longest side above ``max_side`` (default 4096 px) or longest / shortest side
                    above ``max_aspect`` (default 4). NudeNet sees an image padded to a square, so
                    a thin strip is both unjudgeable (under 80 of the model's 320 rows at 4:1) and
                    expensive (a 70000 x 8 PNG pads to 14 GB; the JPEG encoder cannot even write
                    a side above 65,535). Bounding the longest side bounds the padded square at
                    max_side^2 x 3 bytes (48 MiB at 4096).
animated_image      more than one frame (APNG, animated WEBP/GIF): there is no single image to
                    train on.
unsupported_mode    a JPEG whose frame header declares other than 8 bits a sample or 2 (or 5+)
                    components, which Pillow does not open (review rev31f: was ``truncated_image``);
                    more than 8 bits per channel where Pillow keeps them (``I``, ``I;16*``, ``F``:
                    16-bit grayscale and the like; Pillow's RGB conversion clips them, so pixels
                    would be wrong) or CMYK/YCbCr/LAB (no colour management here). A 16-bit RGB,
                    RGBA or grayscale-with-alpha PNG Pillow opens as 8 bits a sample (the high
                    byte of each, tested) and is accepted as that. 8-bit modes ``1, L, LA, P, PA, RGB, RGBA`` are converted to
                    RGB by dropping alpha, exactly as ``cv2.imread`` (and so NudeNet) does.
truncated_image     a header that parses but pixel data that does not decode completely
                    (truncated, corrupt stream, bad CRC), a known signature with an unreadable
                    header, a PNG that breaks the spec's chunk rules (``png_problem``), or a JPEG
                    whose image data ran out before its last block (libjpeg grey-fills it with a
                    warning Pillow drops: :func:`jpeg_data_ran_out`, review rev31f; in any scan
                    or restart interval, or a component with no scan at all: review rev31j), or
                    whose scan data libjpeg-turbo warns is corrupt (zeroed, a padded cut: review rev33c).
processing_error    the bytes passed every check above, yet a later step (hashing, the training
                    JPEG, the NSFW model) raised: a case no policy foresaw. The detail names the
                    step and the exception; the run goes on.
==================  ===========================================================================

Checks run in that order, so a file gets the first reason that applies. Pillow parses every header;
the pixels of an 8-bit PNG whose image data is its last chunk (nothing after it but ``IEND``) are
decoded by libspng (``pyspng``), about twice as fast as Pillow on generated 512 px images and equal to
Pillow's ``convert("RGB")`` pixel for pixel (tested for every 8-bit colour type); any other file,
including one with chunks after its image data (text there is Pillow's to police), is decoded by
Pillow. Rejects are recomputed on
every run, so a transient read error or a fixed bug heals on the next run of the day. EXIF
orientation is not applied: the stored pixels are the image (generated images carry no EXIF).
"""
from __future__ import annotations

import errno
import hashlib
import io
import itertools
import os
import re
import stat
import struct
import warnings
import zlib
from dataclasses import dataclass

import numpy as np
import pyspng
import simplejpeg
from PIL import Image, JpegImagePlugin, PngImagePlugin, TiffImagePlugin, UnidentifiedImageError

UNSAFE_PATH = "unsafe_path"
MISSING_BLOB = "missing_blob"
UNREADABLE_BLOB = "unreadable_blob"
FILE_TOO_LARGE = "file_too_large"
EMPTY_FILE = "empty_file"
NOT_AN_IMAGE = "not_an_image"
EXTENSION_MISMATCH = "extension_mismatch"
DECOMPRESSION_BOMB = "decompression_bomb"
TOO_SMALL = "too_small"
BAD_DIMENSIONS = "bad_dimensions"
ANIMATED_IMAGE = "animated_image"
UNSUPPORTED_MODE = "unsupported_mode"
TRUNCATED_IMAGE = "truncated_image"
PROCESSING_ERROR = "processing_error"

REJECT_REASONS = (
    UNSAFE_PATH, MISSING_BLOB, UNREADABLE_BLOB, FILE_TOO_LARGE, EMPTY_FILE, NOT_AN_IMAGE, EXTENSION_MISMATCH,
    DECOMPRESSION_BOMB, TOO_SMALL, BAD_DIMENSIONS, ANIMATED_IMAGE, UNSUPPORTED_MODE, TRUNCATED_IMAGE,
    PROCESSING_ERROR,
)
# Reasons given before the bytes were read: their rows carry no sha256 / num_bytes.
UNREAD_REASONS = (UNSAFE_PATH, MISSING_BLOB, UNREADABLE_BLOB, FILE_TOO_LARGE, EMPTY_FILE)

PROBED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")   # what sniff_format names; Pillow opens only an extension's
EXTENSION_FORMATS = {".png": ("PNG",), ".jpg": ("JPEG", "MPO"), ".jpeg": ("JPEG", "MPO"), ".webp": ("WEBP",)}
# What Pillow is given to open each extension's bytes with: formats with an open entry of their own (MPO has none, it
# shares JPEG's factory, which makes an MPO image of a JPEG with an MP index; naming it made Pillow raise
# KeyError('MPO') for every .jpg whose header did not parse, review rev24h).
OPEN_FORMATS = {extension: tuple(name for name in names if name != "MPO")
                for extension, names in EXTENSION_FORMATS.items()}
CONVERTIBLE_MODES = frozenset({"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX"})
# Every prefix Pillow's plugins of PROBED_FORMATS accept (their ``_accept``; TIFF: ``TiffImagePlugin.PREFIXES``, the
# classic and BigTIFF headers in both byte orders and Pillow's two "invalid" ones, tested): a blob starting with
# one is that format to the extension check (review rev24d: four of the six TIFF ones were missed, and Pillow's
# TIFF reader parsed them in a .png blob).
FORMAT_SIGNATURES = ((b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"),
                     (b"MM\x00*", "TIFF"), (b"II*\x00", "TIFF"), (b"MM*\x00", "TIFF"), (b"II\x00*", "TIFF"),
                     (b"MM\x00+", "TIFF"), (b"II+\x00", "TIFF"), (b"BM", "BMP"))
# What :func:`sniff_format` names (a WebP is ``RIFF`` + size + ``WEBP``, not any RIFF file: a WAV or an AVI names no
# image format, review rev31f): a blob starting with one whose header does not parse is a ``truncated_image``.
SIGNATURES = tuple(signature for signature, _ in FORMAT_SIGNATURES)


class ImageRejected(Exception):
    """One blob cannot be used; ``reason`` is one of ``REJECT_REASONS``."""

    def __init__(self, reason: str, detail: str) -> None:
        if reason not in REJECT_REASONS:
            raise ValueError(f"unknown reject reason {reason!r}")
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class DecodedImage:
    """A fully decoded image in RGB (as a Pillow image and as an (h, w, 3) uint8 array) plus its header facts."""

    rgb: Image.Image
    pixels: np.ndarray
    width: int
    height: int
    mode: str
    format: str


def _reason_for(exc: Exception, default: str) -> str:
    """Pillow's own limits (compressed text chunks, text memory) are bombs too; other errors get ``default``."""
    message = str(exc).lower()
    if isinstance(exc, Image.DecompressionBombError) or (
            isinstance(exc, ValueError) and ("decompressed data too large" in message or "too much memory" in message)):
        return DECOMPRESSION_BOMB
    return default


def check_blob_path(relpath: object, zone: str = "raw") -> str:
    """Return ``relpath`` if it is a plain relative path inside ``zone``; raise ``unsafe_path`` otherwise."""
    if not isinstance(relpath, str) or not relpath:
        raise ImageRejected(UNSAFE_PATH, f"blob path {relpath!r} is empty or not a string")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in relpath) or "\\" in relpath:
        raise ImageRejected(UNSAFE_PATH, f"blob path {relpath!r} contains a control character or backslash")
    if relpath.startswith("/") or "://" in relpath or (len(relpath) > 1 and relpath[1] == ":"):
        raise ImageRejected(UNSAFE_PATH, f"blob path {relpath!r} is absolute")
    parts = relpath.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise ImageRejected(UNSAFE_PATH, f"blob path {relpath!r} has an empty, '.' or '..' component")
    if parts[0] != zone or len(parts) < 2:
        raise ImageRejected(UNSAFE_PATH, f"blob path {relpath!r} is outside the {zone}/ zone")
    return relpath


def check_local_target(base: str, relpath: str, zone: str = "raw") -> str:
    """Resolve a checked ``relpath`` under local ``base``; refuse symlinks leaving ``base/zone`` and non-files."""
    zone_root = os.path.realpath(os.path.join(base, zone))
    target = os.path.realpath(os.path.join(base, relpath))
    if os.path.commonpath([zone_root, target]) != zone_root:
        raise ImageRejected(UNSAFE_PATH, f"blob path {relpath!r} resolves outside the {zone}/ zone")
    try:
        info = os.stat(target)
    except FileNotFoundError:
        raise ImageRejected(MISSING_BLOB, f"no file at {relpath!r}") from None
    if not stat.S_ISREG(info.st_mode):
        raise ImageRejected(UNSAFE_PATH, f"blob path {relpath!r} is not a regular file")
    return target


def open_local_blob(base: str, target: str, relpath: str, zone: str = "raw") -> io.FileIO:
    """Open ``target`` (what :func:`check_local_target` returned) to read, checking again on the open
    file what the path checks said: something swapped in after them is refused, never waited on or
    followed out of the zone.

    ``O_NONBLOCK`` (a FIFO swapped in is never waited on; no effect on a regular file), ``O_NOFOLLOW``
    (``target`` is already resolved: a link there now is a swap), then the open file must be a
    regular file and, where ``/proc`` names it, inside ``base/zone`` (a folder swapped for a link).
    """
    try:
        fd = os.open(target, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ImageRejected(MISSING_BLOB, f"no file at {relpath!r}") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ImageRejected(UNSAFE_PATH, f"blob path {relpath!r} became a symlink while being opened") from None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ImageRejected(UNSAFE_PATH, f"blob path {relpath!r} is not a regular file")
        try:
            opened = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            opened = None          # no /proc: the path checks stand
        zone_root = os.path.realpath(os.path.join(base, zone))
        if opened is not None and opened.startswith("/") and os.path.commonpath([zone_root, opened]) != zone_root:
            raise ImageRejected(UNSAFE_PATH, f"blob path {relpath!r} resolves outside the {zone}/ zone")
        return io.FileIO(fd, "rb", closefd=True)
    except BaseException:
        os.close(fd)
        raise


def read_capped(handle: io.RawIOBase | io.BufferedIOBase, relpath: str, max_bytes: int) -> bytes:
    """Read at most ``max_bytes`` from ``handle``; raise ``file_too_large`` / ``empty_file``."""
    chunks, total = [], 0
    while total <= max_bytes:
        chunk = handle.read(min(1 << 20, max_bytes + 1 - total))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    if total > max_bytes:
        raise ImageRejected(FILE_TOO_LARGE, f"{relpath!r} is larger than max_bytes={max_bytes}")
    if total == 0:
        raise ImageRejected(EMPTY_FILE, f"{relpath!r} has zero bytes")
    return b"".join(chunks)


def check_dimensions(width: int, height: int, relpath: str, *, max_pixels: int, min_side: int,
                     max_side: int, max_aspect: float) -> None:
    """Raise ``decompression_bomb`` / ``too_small`` / ``bad_dimensions`` for a header's size, in that order."""
    if width * height > max_pixels:
        raise ImageRejected(DECOMPRESSION_BOMB, f"{relpath!r} declares {width}x{height} = {width * height} pixels > max_pixels={max_pixels}")
    if min(width, height) < min_side:
        raise ImageRejected(TOO_SMALL, f"{relpath!r} is {width}x{height}, shortest side < min_side={min_side}")
    if max(width, height) > max_side:
        raise ImageRejected(BAD_DIMENSIONS, f"{relpath!r} is {width}x{height}, longest side > max_side={max_side}")
    if max(width, height) > max_aspect * min(width, height):
        raise ImageRejected(BAD_DIMENSIONS, f"{relpath!r} is {width}x{height}, aspect ratio "
                                            f"{max(width, height) / min(width, height):.1f} > max_aspect={max_aspect:g}")


def decode_image(data: bytes, relpath: str, *, max_pixels: int, min_side: int, max_side: int,
                 max_aspect: float) -> DecodedImage:
    """Decode ``data`` (the blob at ``relpath``) once, applying every policy in the module docstring."""
    if not data:
        raise ImageRejected(EMPTY_FILE, f"{relpath!r} has zero bytes")
    extension, expected, sniffed = check_extension(data, relpath)
    # A PNG's chunks are walked once before Pillow parses its header (which reads every chunk up to the image
    # data): a bomb there (a flood of chunks, repeated or oversized compressed ones) is refused without that walk.
    scan = scan_png(data) if sniffed == "PNG" else None
    if scan is not None and scan.bomb:
        raise ImageRejected(DECOMPRESSION_BOMB, f"{relpath!r}: {scan.bomb}")
    # A JPEG's markers likewise (Pillow walks those before the first scan in Python, keeping every APPn/COM; libjpeg
    # decodes every scan): a flood of markers, stray bytes or scans is refused without Pillow's walk (review rev24d).
    jpeg_bomb = scan_jpeg(data) if sniffed == "JPEG" else None
    if jpeg_bomb:
        raise ImageRejected(DECOMPRESSION_BOMB, f"{relpath!r}: {jpeg_bomb}")
    # Pillow parsers run on hostile bytes here: any error they raise is this image's fault, so it
    # becomes a reject row (with the exception type in the detail) instead of failing the run. Only the
    # extension's formats are tried: no other plugin ever parses the bytes (review rev24d).
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=OPEN_FORMATS[extension])
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageRejected(DECOMPRESSION_BOMB, f"{relpath!r}: {exc}") from None
    except UnidentifiedImageError:
        if sniffed == "JPEG":
            _refuse_jpeg_frame(data, relpath, max_pixels=max_pixels, min_side=min_side, max_side=max_side,
                               max_aspect=max_aspect)
        if sniffed is not None:
            raise ImageRejected(TRUNCATED_IMAGE, f"{relpath!r} starts with an image signature but its header does not parse") from None
        raise ImageRejected(NOT_AN_IMAGE, f"{relpath!r} ({len(data)} bytes, starts {data[:8]!r}) is not a {'/'.join(PROBED_FORMATS)} image") from None
    except Exception as exc:  # noqa: BLE001 - see comment above
        reason = _reason_for(exc, TRUNCATED_IMAGE if sniffed is not None else NOT_AN_IMAGE)
        raise ImageRejected(reason, f"{relpath!r}: header failed to parse: {type(exc).__name__}: {exc}") from None

    fmt = image.format or "unknown"
    if fmt not in expected:
        raise ImageRejected(EXTENSION_MISMATCH, f"{relpath!r} holds {fmt} bytes, extension {extension!r} expects {'/'.join(expected)}")
    width, height = image.size
    check_dimensions(width, height, relpath, max_pixels=max_pixels, min_side=min_side, max_side=max_side,
                     max_aspect=max_aspect)
    try:
        frames = getattr(image, "n_frames", 1)
    except Exception as exc:  # noqa: BLE001 - counting frames parses the whole file
        raise ImageRejected(TRUNCATED_IMAGE, f"{relpath!r}: frames unreadable: {type(exc).__name__}: {exc}") from None
    if frames != 1:
        raise ImageRejected(ANIMATED_IMAGE, f"{relpath!r} has {frames} frames")
    mode = image.mode
    if mode not in CONVERTIBLE_MODES:
        raise ImageRejected(UNSUPPORTED_MODE, f"{relpath!r} has mode {mode!r}; accepted: {sorted(CONVERTIBLE_MODES)}")
    fast = fmt == "PNG" and libspng_decodes(data)
    if fmt == "PNG":   # libspng checks the image data's length itself: it is inflated on Pillow's path (and an
        # interlaced PNG's on both)
        problem = png_problem(data, inflate=not fast, scan=scan)
        if problem:
            raise ImageRejected(problem[0], f"{relpath!r}: {problem[1]}")
    try:
        if fast:
            pixels = pyspng.load(data, format="RGB")
            return DecodedImage(Image.fromarray(pixels), pixels, width, height, mode, fmt)
        image.load()
    except Exception as exc:  # noqa: BLE001 - see comment above
        raise ImageRejected(_reason_for(exc, TRUNCATED_IMAGE),
                            f"{relpath!r}: pixel data does not decode: {type(exc).__name__}: {exc}") from None
    if fmt in ("JPEG", "MPO") and (ran_out := jpeg_data_ran_out(data, image)):
        raise ImageRejected(TRUNCATED_IMAGE, ran_out.format(relpath=relpath))
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    return DecodedImage(rgb, np.asarray(rgb), width, height, mode, fmt)


def sniff_format(data: bytes) -> str | None:
    """The format the leading bytes name (PNG, JPEG, WEBP, GIF, TIFF, BMP), or None: an extension is checked
    against it before Pillow parses a header (whose size alone may trip Pillow's bomb check)."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    for signature, name in FORMAT_SIGNATURES:
        if data.startswith(signature):
            return name
    return None


def check_extension(data: bytes, relpath: str) -> tuple[str, tuple[str, ...], str | None]:
    """``(extension, formats it accepts, sniffed format)`` of the blob ``data`` at ``relpath``, or raise
    ``extension_mismatch``: an extension none of ``EXTENSION_FORMATS``, or leading bytes of another format. The
    first check of :func:`decode_image`, and the whole of it a blob whose bytes are reused by sha256 gets (its
    decode is another path's), so a path's outcome never depends on which bytes earlier days held."""
    extension = os.path.splitext(relpath)[1].lower()
    expected = EXTENSION_FORMATS.get(extension)
    if expected is None:
        raise ImageRejected(EXTENSION_MISMATCH, f"extension {extension!r} of {relpath!r} is not one of {sorted(EXTENSION_FORMATS)}")
    sniffed = sniff_format(data)
    if sniffed is not None and sniffed not in expected:   # before Pillow's own bomb check parses the header
        raise ImageRejected(EXTENSION_MISMATCH, f"{relpath!r} holds {sniffed} bytes, extension {extension!r} expects {'/'.join(expected)}")
    return extension, expected, sniffed


def refuse_structure_bomb(data: bytes, relpath: str) -> None:
    """Raise ``decompression_bomb`` where :func:`decode_image` would before Pillow parses anything: a PNG's or a
    JPEG's structure walk (:func:`scan_png` / :func:`scan_jpeg`) finds a bomb. With :func:`check_extension` first,
    what bytes reused by sha256, and reused JPEG rows judged again, get (their pixels are another row's), so a
    path's outcome never depends on which bytes earlier days held nor on the rules a row was first judged under
    (review rev24h: a JPEG the pre-scan refuses was copied to new uids)."""
    sniffed = sniff_format(data)
    bomb = scan_png(data).bomb if sniffed == "PNG" else scan_jpeg(data) if sniffed == "JPEG" else None
    if bomb:
        raise ImageRejected(DECOMPRESSION_BOMB, f"{relpath!r}: {bomb}")


def refuse_jpeg_data_ran_out(data: bytes, relpath: str) -> None:
    """Raise ``truncated_image`` where :func:`decode_image` would for a JPEG whose image data ran out
    (:func:`jpeg_data_ran_out`): the one check of a decode's pixels that bytes reused by sha256, and reused JPEG
    rows judged again, get after :func:`check_extension` and :func:`refuse_structure_bomb`, so rows a home holds
    from before that check (review rev31f) are refused as a build from scratch refuses them. Costs one decode of a
    JPEG (two where its last pixel is mid-grey or its layout is not one plain scan: progressive, restart markers;
    review rev31j) and a 1/8-scale strict one (:func:`jpeg_corrupt_data`, review rev33c); any other bytes, or bytes Pillow does not decode (never reused:
    their decode rejected them), pass."""
    if sniff_format(data) != "JPEG":
        return
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = Image.open(io.BytesIO(data), formats=("JPEG",))
            image.load()
    except Exception:  # noqa: BLE001 - no verdict: a decode judges such bytes
        return
    if ran_out := jpeg_data_ran_out(data, image):
        raise ImageRejected(TRUNCATED_IMAGE, ran_out.format(relpath=relpath))


def judged_again_on_reuse(row_format: str | None, relpath: str) -> bool:
    """Whether a row reused by uid is judged again from its blob's bytes (:func:`check_extension`,
    :func:`refuse_structure_bomb`, :func:`refuse_jpeg_data_ran_out`) before it is copied:
    a JPEG (its pre-scan grew in reviews rev24d and rev24h: a flood of scans, EXIF and MPF tag blocks; its data
    running out is refused since rev31f), or a
    format its path's extension does not take (rows written before the extension check applied to reuse)."""
    extension = os.path.splitext(relpath)[1].lower()
    return row_format in ("JPEG", "MPO") or row_format not in EXTENSION_FORMATS.get(extension, ())


# Pillow (12.x, ``JpegImagePlugin.MARKER``): the markers its ``_open`` knows (any other before the first scan is
# "no marker found") and those of them it reads no length for.
_JPEG_KNOWN = frozenset(marker & 0xFF for marker in JpegImagePlugin.MARKER)
_JPEG_NO_LENGTH = frozenset(marker & 0xFF for marker, (_, _, handler) in JpegImagePlugin.MARKER.items() if handler is None)
# libjpeg, past the first scan: the next marker is an 0xFF (after any fill 0xFFs) followed by neither a stuffed 0x00
# nor a restart marker, whatever comes before it (entropy-coded data; garbage it skips with a warning).
_JPEG_NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
_JPEG_STANDALONE = frozenset({0x01, 0xD8, 0xD9})   # TEM, SOI, EOI: no length (libjpeg)
MAX_JPEG_HEADER_SEGMENTS = 1_000   # before the first scan: JFIF/EXIF/ICC (<= 255 APP2)/XMP, tables: dozens at most
MAX_JPEG_STRAY_BYTES = 1_024       # fill 0xFFs and junk before the first scan, one Python step of Pillow's each
MAX_JPEG_MARKERS = 65_536          # in all (bounds this walk, as MAX_PNG_CHUNKS does the PNG one)
MAX_JPEG_SCANS = 500               # libjpeg's simple progression writes 6 (grey) or 10 (colour); room for any script
# libjpeg decodes every scan over the whole image (review rev24h: 479 scans of a 4096 x 4096 image cost 15 normal
# decodes): scans x pixels is bounded, so a large image gets fewer scans (64 at 4096 x 4096), never under 32.
MAX_JPEG_SCAN_WORK = 64 * 4096 * 4096
MIN_JPEG_SCANS = 32
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}   # frame headers (DHT, JPG, DAC are not)
# Pillow's TIFF directory reader (``ImageFileDirectory_v2.load``) copies each tag's data out of the EXIF / MPF
# bytes, one copy per tag even where tags share one block, and the MP index is then decoded whole (``dict(info)``:
# SHORT data as tuples of Python ints): the data the tags of a directory declare is bounded by its bytes
# (a writer's tags never share data) - twice them plus 64 KiB - before Pillow parses it (review rev24h).
MAX_TIFF_TAG_DATA_FACTOR = 2
MAX_TIFF_TAG_DATA_SLACK = 64 << 10
MAX_JPEG_EXIF_BYTES = 4 << 20      # Pillow joins EXIF segments one copy at a time (quadratic); a camera writes one
_TIFF_UNIT = {typ: unit for typ, (unit, _) in TiffImagePlugin.ImageFileDirectory_v2._load_dispatch.items()}
_EXIF_SUB_IFDS = frozenset({0x8769, 0x8825, 0xA005})   # Exif, GPS, Interop directories (Exif.get_ifd)
MAX_TIFF_IFDS = 8


def jpeg_scan_cap(width: int, height: int) -> int:
    """The most scans a JPEG of ``width`` x ``height`` (from its frame header; 0 when unknown) may have."""
    pixels = width * height
    if pixels <= 0:
        return MAX_JPEG_SCANS
    return max(MIN_JPEG_SCANS, min(MAX_JPEG_SCANS, MAX_JPEG_SCAN_WORK // pixels))


def tiff_tag_data(tiff: bytes, follow: bool) -> int:
    """Bytes Pillow's TIFF directory reader copies out of ``tiff`` (an EXIF or MPF block) for the tags of its first
    directory whose data lies outside their entry: each tag's declared size (count x its type's unit, Pillow's
    ``_load_dispatch``), as much of it as the block holds; with ``follow`` also the Exif, GPS and Interop
    directories and the next ones (at most 8 directories), which Pillow reads when asked for them. A block
    Pillow does not read as a directory (no TIFF header; BigTIFF, whose 8-byte header Pillow cannot read
    from these 8 bytes) counts 0. Cheap: ``struct.iter_unpack`` over the entries, no tag data touched."""
    if len(tiff) < 8 or not tiff.startswith(tuple(TiffImagePlugin.PREFIXES)) or tiff[2] == 43:
        return 0
    order = "<" if tiff[:2] == b"II" else ">"
    size, total = len(tiff), 0
    pending, seen = [struct.unpack(order + "L", tiff[4:8])[0]], set()
    while pending and len(seen) < (MAX_TIFF_IFDS if follow else 1):
        offset = pending.pop(0)
        if offset in seen or offset + 2 > size:
            continue
        seen.add(offset)
        count = struct.unpack(order + "H", tiff[offset:offset + 2])[0]
        whole = min(count, (size - offset - 2) // 12)
        block = tiff[offset + 2:offset + 2 + 12 * whole]
        for tag, typ, items, value in struct.iter_unpack(order + "HHL4s", block):
            unit = _TIFF_UNIT.get(typ)
            if unit is None:
                continue
            at = struct.unpack(order + "L", value)[0]
            if items * unit > 4:
                total += max(0, min(items * unit, size - at))
            elif follow and tag in _EXIF_SUB_IFDS:
                pending.append(at)
        next_at = offset + 2 + 12 * count
        if follow and whole == count and next_at + 4 <= size:
            pending.append(struct.unpack(order + "L", tiff[next_at:next_at + 4])[0])
    return total


def _tiff_bomb(what: str, tiff: bytes, follow: bool) -> str | None:
    declared = tiff_tag_data(tiff, follow)
    if declared > MAX_TIFF_TAG_DATA_FACTOR * len(tiff) + MAX_TIFF_TAG_DATA_SLACK:
        return (f"its {what} TIFF directory's tags declare {declared} bytes of data in {len(tiff)} bytes (tags "
                f"sharing one block: Pillow's TIFF reader copies each; at most {MAX_TIFF_TAG_DATA_FACTOR}x its "
                f"size + {MAX_TIFF_TAG_DATA_SLACK})")
    return None


def scan_jpeg(data: bytes) -> str | None:
    """Walk a JPEG's markers once, cheaply, and say why it is a bomb (a ``decompression_bomb`` detail), or None.

    Up to the first scan (SOS) the walk is Pillow's ``JpegImageFile._open`` step for step, which runs in Python
    and keeps every APPn/COM segment: 16 million empty COM markers (64 MB) took it 32 s and 2.6 GB, and 16 MB of
    0xFF fill 14 s (review rev24d). Its EXIF (APP1 ``Exif`` segments, joined as Pillow joins them) and each MPF
    segment (APP2) are TIFF directories Pillow reads at open (the EXIF for its resolution, the MP index to tell
    an MPO): their tags' declared data is bounded (:func:`tiff_tag_data`; review rev24h: 2,000 tags sharing one
    30 KB block cost 57 MiB from a 54 KB file). Past the first scan the markers are found as libjpeg finds them
    (in C, by a regular expression over the entropy-coded data) and the scans counted: libjpeg decodes every
    scan of a progressive JPEG over the whole image, a repeated one too (a 165 KB 4096 x 4096 JPEG of 3,000
    scans: 16.7 s), so the cap falls with the frame's size (:func:`jpeg_scan_cap`). A walk that runs out of
    bytes (a truncated file, a length past the end) stops there without a verdict: the decoders judge the rest
    (its EXIF and MPF are judged all the same)."""
    size, position = len(data), 2
    segments = stray = 0
    width = height = 0
    exif: list[bytes] = []
    exif_bytes = 0

    def metadata_bomb() -> str | None:
        if exif:
            tiff = b"".join(exif)
            while tiff.startswith(b"Exif\x00\x00"):   # as Exif.load strips it
                tiff = tiff[6:]
            return _tiff_bomb("EXIF", tiff, True)
        return None

    while True:   # Pillow's walk up to the first scan
        if position + 1 >= size:
            return metadata_bomb()
        if data[position] != 0xFF:
            stray += 1           # junk: Pillow reads on one byte at a time
            position += 1
        else:
            marker = data[position + 1]
            if marker in _JPEG_KNOWN:
                segments += 1
                if segments > MAX_JPEG_HEADER_SEGMENTS:
                    return (f"more than {MAX_JPEG_HEADER_SEGMENTS} marker segments before its image data (an encoder "
                            "writes a few dozen at most)")
                if marker in _JPEG_NO_LENGTH:
                    position += 2
                    continue
                if position + 4 > size:
                    return metadata_bomb()
                length = max(2, int.from_bytes(data[position + 2:position + 4], "big"))   # as Pillow reads it
                if marker in _JPEG_SOF and length >= 7 and position + 9 <= size:
                    height = max(height, int.from_bytes(data[position + 5:position + 7], "big"))
                    width = max(width, int.from_bytes(data[position + 7:position + 9], "big"))
                elif marker == 0xE1 and data.startswith(b"Exif\x00\x00", position + 4):   # Pillow: 1st whole, then [6:]
                    body = data[position + 4:position + 2 + length]
                    exif.append(body if not exif else body[6:])
                    exif_bytes += len(body)
                    if exif_bytes > MAX_JPEG_EXIF_BYTES:
                        return (f"more than {MAX_JPEG_EXIF_BYTES} bytes of EXIF segments (a camera writes one of "
                                "at most 64 KB; Pillow joins them one copy at a time)")
                elif marker == 0xE2 and data.startswith(b"MPF\x00", position + 4):
                    # Pillow reads the MP index's first directory (the last MPF segment's; each is judged)
                    bomb = _tiff_bomb("MPF", data[position + 8:position + 2 + length], False)
                    if bomb:
                        return bomb
                position += 2 + length
                if marker == 0xDA:
                    break
                continue
            if marker == 0xFF:     # fill byte: the next 0xFF starts the marker
                stray += 1
                position += 1
            elif marker == 0x00:   # a stuffed zero: skipped
                stray += 1
                position += 2
            else:
                return metadata_bomb()        # Pillow: "no marker found"
        if stray > MAX_JPEG_STRAY_BYTES:
            return f"more than {MAX_JPEG_STRAY_BYTES} fill or stray bytes before its image data (an encoder writes none)"
    bomb = metadata_bomb()
    if bomb:
        return bomb
    cap = jpeg_scan_cap(width, height)
    scans, markers = 1, segments
    while (found := _JPEG_NEXT_MARKER.search(data, position)) is not None:   # libjpeg's walk past it
        start, marker = found.start(), data[found.start() + 1]
        markers += 1
        if markers > MAX_JPEG_MARKERS:
            return f"more than {MAX_JPEG_MARKERS} markers"
        if marker == 0xD9:
            return None
        if marker in _JPEG_STANDALONE:
            position = start + 2
            continue
        if start + 4 > size:
            return None
        if marker == 0xDA:
            scans += 1
            if scans > cap:
                return (f"more than {cap} scans for {width} x {height} pixels (libjpeg decodes each over the whole "
                        f"image: at most {MAX_JPEG_SCANS}, and scans x pixels at most {MAX_JPEG_SCAN_WORK}, never "
                        f"fewer than {MIN_JPEG_SCANS}; an encoder writes a few dozen at most)")
        position = start + 2 + max(2, int.from_bytes(data[start + 2:start + 4], "big"))
    return None


JPEG_MODES = {1: "L", 3: "RGB", 4: "CMYK"}   # components -> Pillow's mode (``JpegImagePlugin.SOF``): 8 bits only


def _jpeg_header_segments(data: bytes):
    """Yield ``(marker, position, length)`` of each marker segment of a JPEG up to and including its first scan
    header (SOS), walked as :func:`scan_jpeg` walks them (Pillow's ``_open``: stray and fill bytes skipped, a
    stuffed zero skipped); stops at an unknown marker or the end of the bytes. Run after :func:`scan_jpeg` has
    bounded the walk (at most 1,000 segments and 1,024 stray bytes)."""
    size, position = len(data), 2
    while position + 1 < size:
        if data[position] != 0xFF or data[position + 1] == 0xFF:
            position += 1
            continue
        marker = data[position + 1]
        if marker == 0x00:
            position += 2
            continue
        if marker not in _JPEG_KNOWN:
            return
        if marker in _JPEG_NO_LENGTH:
            yield marker, position, 0
            position += 2
            continue
        if position + 4 > size:
            return
        length = max(2, int.from_bytes(data[position + 2:position + 4], "big"))
        yield marker, position, length
        if marker == 0xDA:
            return
        position += 2 + length


def jpeg_frame(data: bytes) -> tuple[int, int, int, int] | None:
    """``(precision, components, width, height)`` of the first frame header (SOFn) of a JPEG, as Pillow reads it
    (``JpegImagePlugin.SOF``), or None where there is none whole before the first scan."""
    for marker, position, length in _jpeg_header_segments(data):
        if marker in _JPEG_SOF:
            if length < 8 or position + 10 > len(data):
                return None
            height = int.from_bytes(data[position + 5:position + 7], "big")
            width = int.from_bytes(data[position + 7:position + 9], "big")
            return data[position + 4], data[position + 9], width, height
        if marker == 0xDA:
            return None
    return None


def _refuse_jpeg_frame(data: bytes, relpath: str, **limits) -> None:
    """For a JPEG whose header Pillow did not parse: raise ``unsupported_mode`` (after the size checks, in the
    policy order) where its frame header declares what Pillow refuses by design, a precision other than 8 bits
    (12-bit, 16-bit lossless) or a number of components other than 1, 3, 4 (review rev31f: these were
    ``truncated_image``, "header does not parse"); return otherwise."""
    frame = jpeg_frame(data)
    if frame is None:
        return
    precision, components, width, height = frame
    if precision == 8 and components in JPEG_MODES:
        return
    check_dimensions(width, height, relpath, **limits)
    raise ImageRejected(UNSUPPORTED_MODE, f"{relpath!r} is a JPEG of {precision} bits a sample and {components} "
                                          "components; accepted: 8 bits, 1 or 3 components (4 is CMYK, also refused)")


# Entropy-coded filler for :func:`jpeg_data_ran_out`: fixed (deterministic), pseudo-random bits (so they decode to
# varied Huffman codes in any table), no 0xFF (never a marker). It starts with ones (0xD1), not zeros: libjpeg pads
# data that ran out with zero bits, which a chrominance table (DC 0 "00", end of block "00") reads as blocks that
# repeat the last DC - filler starting with a zero byte decoded a cut in the last MCU's chroma as the cut did
# (review rev31j's neighbour, fix31j). It goes before the fill bytes (0xFF) in front of a marker, never after one.
JPEG_FILLER = hashlib.shake_256(b"pickapic-pipeline jpeg filler").digest(512).replace(b"\xff", b"\xfe")
RESTART_FILLER = JPEG_FILLER[:64]   # before each restart marker: 512 bits, dozens of blocks' codes
MAX_JPEG_RESTART_FILLERS = 65_536   # a 4096 x 4096 4:2:0 JPEG restarting every MCU has 65,535 RSTn; at most 4 MiB
_RAN_OUT_DETAIL = ("{relpath!r}: its image data ends before its last block (libjpeg filled the blocks it lacks "
                   "with grey: 'premature end of data segment')")
_NO_SCAN_DETAIL = ("{relpath!r}: component {component} of its frame has no {what} scan (its image data ends before "
                   "it: libjpeg fills the component with grey)")
MID_GREY = 128   # what libjpeg decodes a block with no coefficients to (DC 0 is the level shift), in every channel
_JPEG_RESTART = re.compile(rb"\xff[\xd0-\xd7]")
_RESTART_MARKERS = tuple(bytes((0xFF, 0xD0 + number)) for number in range(8))   # RST0..RST7
# libjpeg's frames (jdmarker.c): Huffman sequential (SOF0, SOF1), progressive (SOF2); arithmetic (SOF9, SOF10)
_JPEG_HUFFMAN_FRAMES = {0xC0: False, 0xC1: False, 0xC2: True}
_JPEG_ARITHMETIC_FRAMES = {0xC9: False, 0xCA: True}


@dataclass(frozen=True)
class JpegScan:
    """One scan past its header (SOS): the frame component ids it codes, whether it is a first pass (a sequential
    scan, or a progressive DC first scan: every block's first data; a progressive scan refining what one coded is
    not), where its entropy-coded data starts, the marker libjpeg stops it at (not a restart marker), the restart
    markers in between (how many; the offsets of the first ones, at most :data:`MAX_JPEG_RESTART_FILLERS` in a
    file: memory bounded whatever the bytes hold), and the restart interval in effect (DRI, 0: none)."""
    components: tuple[int, ...]
    first_pass: bool
    data: int
    end: int
    restarts: tuple[int, ...]
    restart_interval: int
    restart_count: int = 0


@dataclass(frozen=True)
class JpegLayout:
    """A JPEG's frame as libjpeg decodes it (:func:`jpeg_layout`): the frame marker (SOFn), its component ids, its
    scans in order, and the offset of the end marker (EOI) libjpeg stops at."""
    frame: int
    components: tuple[int, ...]
    scans: tuple[JpegScan, ...]
    end: int


def jpeg_layout(data: bytes) -> JpegLayout | None:
    """Walk a JPEG's markers as libjpeg reads them (the header as :func:`_jpeg_header_segments`, past the first scan
    as :func:`scan_jpeg`: the next marker is an 0xFF followed by neither a stuffed zero nor a restart marker) and
    say its frame and scans, or None where it has no frame header or no scan (no verdict: the decoders judge such
    bytes). Where the bytes end before an end marker the layout ends at the file's end (``end`` is its length): a
    cut followed by a COM, an APPn (a thumbnail's own end marker inside it), an RSTn or a segment whose length
    runs past the end, which libjpeg decodes grey from the marker on without needing more bytes (review rev32d);
    a scan no marker ends runs to the file's end. Run after :func:`scan_jpeg` bounded the walk (scans, markers)."""
    size = len(data)
    frame = restart_interval = 0
    components: tuple[int, ...] = ()
    scans: list[JpegScan] = []

    def segment(marker: int, at: int, length: int) -> int | None:
        """Note a marker segment at ``at``; the offset of its scan's data where it is a scan header."""
        nonlocal frame, components, restart_interval
        body = data[at + 4:at + 2 + length]
        if marker in _JPEG_SOF and not frame and len(body) >= 6:
            frame = marker
            components = tuple(body[6 + 3 * k] for k in range(body[5]) if 6 + 3 * k < len(body))
        elif marker == 0xDD and len(body) >= 2:
            restart_interval = int.from_bytes(body[:2], "big")
        elif marker == 0xDA and body:
            count = body[0]
            if len(body) < 4 + 2 * count:
                return None
            spectral_start, approximation_high = body[1 + 2 * count], body[3 + 2 * count] >> 4
            progressive = _JPEG_HUFFMAN_FRAMES.get(frame, _JPEG_ARITHMETIC_FRAMES.get(frame, False))
            scans.append(JpegScan(tuple(body[1 + 2 * k] for k in range(count)),
                                  not progressive or (spectral_start == 0 and approximation_high == 0),
                                  at + 2 + length, -1, (), restart_interval))
            return at + 2 + length
        return None

    position = None
    for marker, at, length in _jpeg_header_segments(data):
        position = segment(marker, at, length)
    if position is None or not frame:
        return None
    while True:   # past each scan's data: the marker libjpeg stops at, then the segments up to the next scan
        scan = scans[-1]
        found = _JPEG_NEXT_MARKER.search(data, position)
        end = size if found is None else found.start()      # no marker: the scan's data runs to the file's end
        # in entropy-coded data an 0xFF is stuffed or starts a marker: each 0xFF Dn counted is a restart marker
        count = 0 if _JPEG_RESTART.search(data, position, end) is None else sum(
            data.count(bytes((0xFF, marker)), position, end) for marker in range(0xD0, 0xD8))
        kept = max(0, MAX_JPEG_RESTART_FILLERS - sum(len(earlier.restarts) for earlier in scans))
        restarts = tuple(hit.start() for hit in itertools.islice(
            _JPEG_RESTART.finditer(data, position, end), min(count, kept)))
        scans[-1] = JpegScan(scan.components, scan.first_pass, scan.data, end, restarts, scan.restart_interval, count)
        while found is not None:
            start, marker = found.start(), data[found.start() + 1]
            if marker == 0xD9:
                return JpegLayout(frame, components, tuple(scans), start)
            if marker in _JPEG_STANDALONE:
                position = start + 2
            elif start + 4 > size:
                break
            else:
                length = max(2, int.from_bytes(data[start + 2:start + 4], "big"))
                position = start + 2 + length
                if segment(marker, start, length) is not None:
                    break
            found = _JPEG_NEXT_MARKER.search(data, position)
        if found is None or scans[-1].end != -1:
            # the bytes end before an end marker (a cut followed by a COM / APPn / RSTn, a segment's length past
            # the end, a thumbnail's own EOI inside an APP1): libjpeg stopped each scan at the marker after it
            # (review rev32d), so the layout ends at the file's end
            return JpegLayout(frame, components, tuple(scans), size)


def jpeg_with_filler(data: bytes, layout: JpegLayout) -> bytes:
    """``data`` with filler (:data:`JPEG_FILLER`) before every marker that ends the entropy-coded data of a first
    pass scan (:class:`JpegScan`): 64 bytes before each restart marker in it (the first 65,536 of the file), 512
    before the marker it ends at and, where a restart interval is in effect, after those the restart marker due
    next and 512 more; with a restart interval the scan's restart markers are numbered as libjpeg expects them
    (0, 1, ... 7, 0, ...: one or two ahead libjpeg decodes the intervals between as grey, one or two behind it
    skips an interval; review rev32d), so a scan missing whole intervals ends short and reads the filler.
    libjpeg skips bytes before the marker that follows a whole restart interval or a whole scan, as junk (a
    warning): such data decodes to the same pixels; where data ran out it reads the filler as the blocks it
    lacked (also the interval after one cut at its end: it finds the restart marker it expects)."""
    pieces: list[bytes] = []
    at = 0

    def fill(marker: int, *filler: bytes) -> None:
        nonlocal at
        before = marker
        while before > at and data[before - 1] == 0xFF:   # fill bytes belong to the marker (data stuffs its 0xFF)
            before -= 1
        pieces.extend((data[at:before], *filler))
        at = before

    for scan in layout.scans:
        if not scan.first_pass:
            continue
        if scan.restart_interval:        # numbered as libjpeg expects them: 0, 1, ... 7, 0, ... (review rev32d)
            for number, restart in enumerate(scan.restarts):
                before = restart
                while before > at and data[before - 1] == 0xFF:   # as fill(): the filler before fill bytes
                    before -= 1
                pieces.extend((data[at:before], RESTART_FILLER, data[before:restart], _RESTART_MARKERS[number % 8]))
                at = restart + 2
        else:
            for restart in scan.restarts:
                fill(restart, RESTART_FILLER)
        if scan.restart_interval:
            fill(scan.end, JPEG_FILLER, bytes([0xFF, 0xD0 + scan.restart_count % 8]), JPEG_FILLER)
        else:
            fill(scan.end, JPEG_FILLER)
    pieces.append(data[at:])
    return b"".join(pieces)


def _decodes_otherwise(data: bytes, image: Image.Image) -> bool:
    """Whether ``data`` (``image``'s bytes with filler) decodes to other pixels than ``image`` (or not at all)."""
    try:
        again = Image.open(io.BytesIO(data), formats=("JPEG",))
        again.load()
    except Exception:  # noqa: BLE001 - the filler was read (only data that ran out reads it) and did not decode
        return True
    return again.mode != image.mode or again.size != image.size or again.tobytes() != image.tobytes()


def jpeg_missing_component(layout: JpegLayout) -> tuple[int, str] | None:
    """``(component id, 'sequential' or 'DC first')`` of a frame component no scan of a JPEG (its
    :func:`jpeg_layout`) gives its first data (libjpeg decodes it as mid-grey: a sequential file with one scan per
    component cut before its last scans, review rev31j), or None (also for a frame libjpeg does not decode)."""
    if layout.frame in _JPEG_HUFFMAN_FRAMES:
        progressive = _JPEG_HUFFMAN_FRAMES[layout.frame]
    elif layout.frame in _JPEG_ARITHMETIC_FRAMES:
        progressive = _JPEG_ARITHMETIC_FRAMES[layout.frame]
    else:
        return None
    coded = {component for scan in layout.scans if scan.first_pass for component in scan.components}
    for component in layout.components:
        if component not in coded:
            return component, "DC first" if progressive else "sequential"
    return None


def jpeg_data_ran_out(data: bytes, image: Image.Image) -> str | None:
    """Whether libjpeg ran out of image data decoding ``data`` (``image``: Pillow's loaded decode of it): a
    ``truncated_image`` detail (with ``{relpath!r}`` to format), or None.

    libjpeg that meets a marker (the end marker of a cut upload, or one given right after the headers) where scan
    data should be goes on with blocks of no coefficients, a flat mid-grey, and says so only as a warning
    ("premature end of data segment", JWRN_HIT_MARKER), which Pillow drops (review rev31f: half a photo was
    accepted a third grey, a 625-byte header-only JPEG as a 2048 x 2048 grey image). So:

    - every component of the frame must have a first pass scan (a sequential scan; a progressive DC first scan):
      a file with one scan per component cut before its last ones has none for a component (review rev31j);
    - the bytes are decoded a second time with filler before every marker that ends a first pass scan's data
      (:func:`jpeg_with_filler`: each restart marker, the marker after the scan; review rev31j: a cut at a
      restart interval's end, a cut followed by a COM/APPn/DQT segment or a stray RSTn before the end marker).
      libjpeg reads no entropy-coded data past a scan's or an interval's last block, so a JPEG whose data covers
      every block decodes to the same pixels (a grey image stays accepted); one whose data ran out reads the
      filler as the blocks it lacked and decodes to other pixels; restart markers are renumbered in order there,
      so intervals gone whole (or a marker's number off, which libjpeg resyncs on with grey intervals) are seen
      too (review rev32d). The second decode (one decode's cost) is for a JPEG whose last pixel is mid-grey -
      what a plain cut leaves, unless it is past the luma block holding that pixel in the last MCU (its chroma
      blocks, or off the 16-pixel grid its padding luma blocks: the pixel keeps its luma) - and for every JPEG
      of another layout than one scan with no restart markers ended by the end marker or the file's end
      (progressive, restart markers, one scan per component, a marker segment after the scan, no end marker
      after a segment), where a cut leaves no mark on the last pixel.

    - libjpeg-turbo's corrupt-data warnings (:func:`jpeg_corrupt_data`: zeroed scan data, a cut padded with
      zeros, a cut the filler check is not run for; review rev33c; not stray header bytes nor zero padding after
      whole scan data: review rev33n).

    A progressive JPEG whose later (refining) scans are missing or cut is, by design of the format, a coarser
    image and is kept: the filler goes only where first pass scans end. An arithmetic-coded JPEG (SOF9, SOF10;
    no encoder here, its decoder may read bytes past a whole scan) gets the component rule and, where its last
    pixel is mid-grey, the filler before its end marker alone (fix31f's check): a cut followed by a marker
    segment or restart markers there is not seen."""
    layout = jpeg_layout(data)
    if layout is None:
        return None       # Pillow decoded it: libjpeg found an end marker this walk does not (no verdict)
    missing = jpeg_missing_component(layout)
    if missing is not None:
        return _NO_SCAN_DETAIL.replace("{component}", str(missing[0])).replace("{what}", missing[1])
    width, height = image.size
    last = image.getpixel((width - 1, height - 1))
    grey = all(value == MID_GREY for value in (last if isinstance(last, tuple) else (last,)))
    if layout.frame in _JPEG_HUFFMAN_FRAMES:
        plain = len(layout.scans) == 1 and not layout.scans[0].restart_count and layout.scans[0].end == layout.end
        if (grey or not plain) and _decodes_otherwise(jpeg_with_filler(data, layout), image):
            return _RAN_OUT_DETAIL
    elif grey and _decodes_otherwise(jpeg_with_filler(data, JpegLayout(layout.frame, layout.components, (
            JpegScan((), True, -1, layout.end, (), 0),), layout.end)), image):
        return _RAN_OUT_DETAIL
    return jpeg_corrupt_data(data, layout)


# libjpeg's warnings (jerror.h) that say its entropy-coded data did not decode as written: "Corrupt JPEG data: N
# extraneous bytes before marker 0xNN" (the blocks ended before their marker: zeroed or padded bytes read as codes),
# "... premature end of data segment" (a marker where block data should be), "... bad Huffman code", "... bad
# arithmetic code". Not "found marker 0xNN instead of RSTn" (a restart marker's number off: the filler check judges
# those, libjpeg resyncs on the data whole where the number is 3 to 5 off, review rev32d), "Premature end of JPEG file"
# (the file ends with no end marker after whole data: a cut there is Pillow's "image file is truncated" or the
# filler check's), nor "bad ICC marker" (metadata).
_JPEG_CORRUPT_WARNING = re.compile(r"Corrupt JPEG data: (?:\d+ extraneous bytes before marker|premature end of data "
                                   r"segment|bad Huffman code|bad arithmetic code)")
# Of those, what a refining scan of a progressive JPEG cut before a marker gives (a coarser image, kept)
_JPEG_CUT_WARNING = re.compile(r"Corrupt JPEG data: premature end of data segment")
# ... and what bytes left before a marker after the blocks libjpeg expected give (padding after whole data, or real
# data after a decode that went off: jpeg_without_zero_padding tells them apart; review rev33n)
_JPEG_EXTRANEOUS_WARNING = re.compile(r"Corrupt JPEG data: \d+ extraneous bytes before marker")
_CORRUPT_DETAIL = ("{relpath!r}: its image data does not decode as written (libjpeg: {warning!r}; Pillow drops "
                   "libjpeg's warnings)")


def libjpeg_warning(data: bytes) -> str | None:
    """The first warning libjpeg-turbo gives decoding ``data``, or None: simplejpeg's strict decode (TurboJPEG's
    stop-on-warning: it raises ``ValueError`` with libjpeg's message at the first warning), as greyscale at 1/8 scale:
    libjpeg still entropy-decodes every block of every component (where its warnings come from), but transforms only
    the luma's, to an eighth of the pixels, and upsamples and converts nothing (1.4 ms for a 512 x 512 photo of
    58 KB against 4.8 ms for Pillow's decode and checks here; README section 3). An error that is not a warning is
    also returned (its text): Pillow decoded the bytes, so the caller judges only libjpeg's corrupt-data warnings."""
    try:
        simplejpeg.decode_jpeg(data, colorspace="GRAY", min_height=1, min_width=1, min_factor=8, strict=True)
    except ValueError as exc:
        return str(exc)
    return None


def jpeg_without_header_gaps(data: bytes) -> bytes:
    """``data`` without the bytes between its marker segments before its first scan's data (review rev33n): the
    stray bytes the header walk skips (:func:`_jpeg_header_segments`, as Pillow and libjpeg skip them), such as a
    metadata editor's padding after an APPn it wrote short. They are outside every segment and every scan (libjpeg
    warns "N extraneous bytes before marker 0xNN" and reads on), so they never mean corrupt image data; ``data``
    itself where there are none."""
    pieces, expected = [data[:2]], 2
    segments = list(_jpeg_header_segments(data))
    if not segments or segments[-1][0] != 0xDA:
        return data
    gaps = False
    for marker, at, length in segments:
        gaps = gaps or at != expected
        expected = at + (2 if marker in _JPEG_NO_LENGTH else 2 + length)
        pieces.append(data[at:expected])
    return b"".join((*pieces, data[expected:])) if gaps else data


def _run_start(data: bytes, floor: int, stop: int, byte: bytes) -> int:
    """Where the run of ``byte`` that ends at ``stop`` starts (not before ``floor``), read back in 4 KiB slices."""
    while stop > floor:
        piece = data[max(floor, stop - 4096):stop]
        kept = len(piece.rstrip(byte))
        if kept:
            return stop - len(piece) + kept
        stop -= len(piece)
    return floor


def jpeg_without_zero_padding(data: bytes, layout: JpegLayout, keep: int = 0) -> bytes | None:
    """``data`` with the run of zero bytes before each marker that ends entropy-coded data (each scan's end marker, its
    restart markers as :class:`JpegScan` notes them; fill bytes belong to the marker) cut to at most ``keep`` bytes,
    or None where there is no longer run (review rev33n). A zero that stuffs a data 0xFF is kept. Encoders end a
    segment's data with 1-bits to the byte; a run of zeros there is padding (a phone, an encoder, a client padding a
    cut upload): where the data covers every block without it, libjpeg reads none of it (it warns "N extraneous
    bytes before marker" and decodes the same pixels); where the data ran out it read the zeros as the missing
    blocks (garbage), and without them it warns that the data ended early."""
    cuts: list[tuple[int, int]] = []
    for scan in layout.scans:
        floor = scan.data
        for marker in (*scan.restarts, scan.end):
            if marker >= len(data) or marker < floor:
                continue
            before = _run_start(data, floor, marker, b"\xff")
            run = _run_start(data, floor, before, b"\x00")
            if run > floor and data[run - 1] == 0xFF:   # a stuffed zero: the data's own 0xFF
                run += 1
            if before - run > keep:
                cuts.append((run + keep, before))
            floor = marker + 2
    if not cuts:
        return None
    pieces, at = [], 0
    for start, stop in cuts:
        pieces.append(data[at:start])
        at = stop
    pieces.append(data[at:])
    return b"".join(pieces)


def jpeg_corrupt_data(data: bytes, layout: JpegLayout) -> str | None:
    """Whether libjpeg finds ``data``'s entropy-coded data corrupt (:data:`_JPEG_CORRUPT_WARNING`, from
    :func:`libjpeg_warning`): a ``truncated_image`` detail (``{relpath!r}`` to format), or None (review rev33c).

    JPEG has no checksum: zeroed bytes in the scan data (a bad block, a failed copy) or a cut upload padded with
    zeros before its end marker decode to garbage without an error, and libjpeg only warns ("corrupt JPEG data"),
    which Pillow drops; a 4:2:0 JPEG of height 16k + 1 cut in its last MCU row leaves no grey last pixel for the
    filler check, yet libjpeg warns that its data ended early. So every JPEG Pillow decoded is decoded again at
    1/8 scale with libjpeg-turbo's warnings as errors, without the stray bytes between its header segments
    (:func:`jpeg_without_header_gaps`: never image data; review rev33n). Extraneous bytes before a marker that ends
    scan data are refused unless they are a run of zeros whose removal leaves data libjpeg decodes without a
    corrupt-data warning (:func:`jpeg_without_zero_padding`, with none of the run, then with one zero of it kept
    where the data's own last byte is zero): padding after whole data (the same pixels), kept; a cut padded with
    zeros reads them as blocks and without them ends early, refused; real data left after a decode that went off
    (zeroed bytes inside the data) is no zero run, refused (review rev33n). A progressive JPEG whose first warning
    is a cut (premature end of data segment) is cut in a refining scan - a coarser image, kept as README section 3
    says - unless its first pass scans alone (the bytes up to the end of its last one, then an end marker) warn too;
    other corrupt data in a refining scan (extraneous bytes, a bad code) is refused. Only libjpeg's first warning is
    seen: one of another kind before it (a restart marker's number off, an unknown JFIF revision, a bad
    progression) hides corrupt data after it. Not every damage warns: Huffman codes resynchronise, and damaged data
    whose decode ends within the bytes libjpeg reads ahead (a few) of its marker, with the right number of blocks,
    decodes without a warning (a third of 64-byte zeroed runs in a one-scan baseline JPEG; JPEG has no checksum to
    tell); nor is padding of other bytes than zeros told from real data (refused), nor a cut of at most one byte
    padded with zeros (its last block's last codes read from a zero: accepted)."""
    canonical = jpeg_without_header_gaps(data)
    if canonical is not data and (canonical_layout := jpeg_layout(canonical)) is not None:
        data, layout = canonical, canonical_layout
    warning = libjpeg_warning(data)
    if warning is None or not _JPEG_CORRUPT_WARNING.match(warning):
        return None
    if _JPEG_EXTRANEOUS_WARNING.match(warning):
        for keep in (0, 1):
            unpadded = jpeg_without_zero_padding(data, layout, keep)
            if unpadded is None:
                break
            after = libjpeg_warning(unpadded)
            if after is None or not _JPEG_CORRUPT_WARNING.match(after):
                return None
    progressive = _JPEG_HUFFMAN_FRAMES.get(layout.frame, _JPEG_ARITHMETIC_FRAMES.get(layout.frame, False))
    first_pass = [scan for scan in layout.scans if scan.first_pass]
    if progressive and first_pass and _JPEG_CUT_WARNING.match(warning):
        warning = libjpeg_warning(data[:first_pass[-1].end] + b"\xff\xd9")
        if warning is None or not _JPEG_CORRUPT_WARNING.match(warning):
            return None
    return _CORRUPT_DETAIL.replace("{warning!r}", repr(warning).replace("{", "{{").replace("}", "}}"))


PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}   # colour type -> samples a pixel
PNG_BIT_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}   # colour type -> allowed
MAX_PNG_CHUNKS = 65_536   # libpng writes 8 KiB IDATs: a 64 MiB PNG has about 8,000 chunks
# libspng (0.7.4, in pyspng) keeps tEXt/zTXt/iTXt/sPLT/eXIf chunks and stops at its 1,001st ("reached chunk/cache
# limits", SPNG_MAX_CHUNK_COUNT) or past 64 MiB of them (pyspng's cache limit); Pillow has neither limit. Both are
# mirrored, lower, over the whole file, so each decoder sees only PNGs both accept.
MAX_PNG_KEPT_CHUNKS = 1_000
PNG_KEPT_CHUNKS = frozenset({b"tEXt", b"zTXt", b"iTXt", b"sPLT", b"eXIf"})
MAX_PNG_METADATA = 8 << 20   # bytes of text, profile, palette and EXIF chunks, compressed ones as inflated
# PNG spec (chunk ordering, table 5.3): at most one of each; the first five before PLTE, the next three after it, all
# but tIME and eXIf before the image data (sPLT too, which may repeat).
PNG_ONCE_CHUNKS = frozenset({b"cHRM", b"gAMA", b"iCCP", b"sBIT", b"sRGB", b"bKGD", b"hIST", b"tRNS", b"pHYs",
                             b"tIME", b"eXIf"})
PNG_BEFORE_PLTE = frozenset({b"cHRM", b"gAMA", b"iCCP", b"sBIT", b"sRGB"})
PNG_AFTER_PLTE = frozenset({b"bKGD", b"hIST", b"tRNS"})
PNG_BEFORE_IDAT = PNG_BEFORE_PLTE | PNG_AFTER_PLTE | {b"pHYs", b"sPLT"}
MAX_PNG_EXTRA_DATA = 1 << 20   # inflated bytes after an interlaced PNG's scanlines (png_problem)
ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


def _png_raw_bytes(width: int, height: int, bits: int, colour: int, interlaced: bool) -> int:
    """Bytes of the filtered scanlines a PNG's image data inflates to (one filter byte a row, Adam7 passes)."""
    pixel_bits = bits * PNG_CHANNELS[colour]
    if not interlaced:
        return height * (1 + (width * pixel_bits + 7) // 8)
    total = 0
    for x0, y0, dx, dy in ADAM7:
        pass_width, pass_height = (width - x0 + dx - 1) // dx, (height - y0 + dy - 1) // dy
        if pass_width > 0 and pass_height > 0:
            total += pass_height * (1 + (pass_width * pixel_bits + 7) // 8)
    return total


@dataclass(frozen=True)
class PngScan:
    """What one walk over a PNG's chunks found (:func:`scan_png`): ``bomb`` (a ``decompression_bomb`` detail,
    refused before Pillow parses anything), else ``problem`` (the first ``truncated_image`` detail), IHDR's
    ``(width, height, bits, colour, interlace)`` when it is valid, and the IDAT bodies as (start, end) offsets."""

    bomb: str | None
    problem: str | None
    ihdr: tuple[int, int, int, int, int] | None
    idat: tuple[tuple[int, int], ...]


def _ihdr_problem(data: bytes) -> str | None:
    """Why the first chunk is not a valid IHDR (libspng's ``check_ihdr``, which Pillow does not apply), or None."""
    if len(data) < 33 or data[12:16] != b"IHDR":
        return "its first chunk is not IHDR"
    length = int.from_bytes(data[8:12], "big")
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    bits, colour, compression, filter_method, interlace = data[24:29]
    if length != 13:
        return f"an IHDR chunk of {length} bytes (13)"
    if not (0 < width < 1 << 31 and 0 < height < 1 << 31):
        return f"IHDR declares {width}x{height} (1 to 2^31-1 a side)"
    if bits not in PNG_BIT_DEPTHS.get(colour, ()):
        return f"IHDR has colour type {colour} with bit depth {bits}"
    if compression or filter_method or interlace not in (0, 1):
        return f"IHDR has compression method {compression}, filter method {filter_method}, interlace {interlace}"
    return None


def _compressed_part(kind: bytes, body: bytes) -> bytes | None:
    """The zlib stream Pillow (12.x, ``PngImagePlugin.chunk_zTXt/iTXt/iCCP``) inflates from a zTXt, iTXt or iCCP
    chunk, parsed exactly as Pillow parses it, or None where Pillow inflates nothing (other chunks; a malformed
    one; a compression method other than 0, which Pillow refuses or keeps compressed). Pillow splits at the first
    NUL however far it is (the spec's keywords are 1 to 79 bytes; libspng refuses longer ones and so inflates a
    subset of what Pillow does), and inflates an iTXt whose compression flag is any non-zero value."""
    if kind == b"iCCP":   # s.find(b"\0") may be -1: Pillow then reads the method at 0 and inflates from 1
        keyword_end = body.find(b"\x00")
        if len(body) <= keyword_end + 1 or body[keyword_end + 1] != 0:
            return None   # IndexError / SyntaxError in Pillow: nothing inflated
        return body[keyword_end + 2:]
    keyword_end = body.find(b"\x00")
    if keyword_end < 0:
        return None   # zTXt: Pillow inflates b""; iTXt: kept as it is
    rest = body[keyword_end + 1:]
    if kind == b"zTXt":
        return rest[1:] if rest and rest[0] == 0 else None   # an empty rest is method 0 and inflates b""
    if kind == b"iTXt":
        if len(rest) < 2 or rest[0] == 0 or rest[1] != 0:
            return None
        parts = rest[2:].split(b"\x00", 2)
        return parts[2] if len(parts) == 3 else None
    return None


_PILLOW_CHUNK_TYPE = re.compile(rb"\w\w\w\w")   # what Pillow's PngImagePlugin reads on past (ChunkStream.read)


def _inflated_size(stream: bytes, limit: int) -> int:
    """Bytes ``stream`` inflates to, counted up to just past ``limit``; a corrupt stream counts what it inflated
    before its error (review rev18h: counted as 1 MiB, nine 20-byte corrupt zTXt chunks made a bomb; Pillow keeps
    nothing of one and reads the image)."""
    inflater, total, data = zlib.decompressobj(), 0, stream
    try:
        while data and total <= limit:
            total += len(inflater.decompress(data, 1 << 16))
            data = inflater.unconsumed_tail
    except zlib.error:
        pass
    return total


def scan_png(data: bytes) -> PngScan:
    """Walk every chunk of a PNG once, cheaply (CRCs, no image data inflated), for :func:`png_problem`.

    A walk that finds a bomb stops there; one that finds a broken chunk (outside the file, wrong CRC) stops
    there, as Pillow does; any other problem is noted (the first) and the walk goes on, so a flood of chunks
    behind it is still counted."""
    problem = _ihdr_problem(data)
    ihdr = None
    if problem is None:
        ihdr = (int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big"), data[24], data[25], data[28])
    colour = data[25] if len(data) > 25 else 0
    bits = data[24] if len(data) > 24 else 8
    idat: list[tuple[int, int]] = []
    seen: set[bytes] = set()
    position, seen_idat, idat_done, palette = 8, False, False, False
    chunks = kept = metadata = 0

    def scanned(bomb: str | None = None, note: str | None = None) -> PngScan:
        return PngScan(bomb, None if bomb else (problem or note), ihdr, tuple(idat))

    while True:
        chunks += 1
        if chunks > MAX_PNG_CHUNKS:   # a file of a million empty chunks costs Pillow seconds to walk
            return scanned(f"more than {MAX_PNG_CHUNKS} chunks (a PNG encoder writes a few thousand at most)")
        if position + 12 > len(data):
            return scanned(note="it ends inside a chunk (truncated), before IEND")
        length = int.from_bytes(data[position:position + 4], "big")
        kind = data[position + 4:position + 8]
        end = position + 12 + length
        bad_type = None
        if not kind.isalpha():   # PNG spec 5.3: four ASCII letters
            bad_type = f"a chunk type {kind!r} that is not four ASCII letters (broken)"
            if not _PILLOW_CHUNK_TYPE.fullmatch(kind):   # Pillow stops reading chunks there: so does the walk
                return scanned(note=bad_type)
            # Pillow reads on past digits and underscores (``\w\w\w\w``), so the walk goes on to count what
            # follows (review rev18h: 300 iCCP chunks behind an ``ab1d`` chunk cost Pillow 1.2 s)
        if length > 0x7FFFFFFF or end > len(data):
            return scanned(note=f"chunk {kind!r} runs past the end of the file (truncated)")
        body = data[position + 8:end - 4]
        if zlib.crc32(body, zlib.crc32(kind)) != int.from_bytes(data[end - 4:end], "big"):
            return scanned(note=f"chunk {kind.decode('latin-1')!r} has a wrong CRC")
        name = kind.decode("latin-1")
        note = None
        if kind == b"IDAT":
            if idat_done:
                note = "its IDAT chunks are not consecutive"
            elif colour == 3 and not palette:
                note = "an indexed PNG without a PLTE chunk before its image data"
            seen_idat = True
            idat.append((position + 8, end - 4))
        else:
            if seen_idat:
                idat_done = True
            if kind == b"PLTE":
                entries, rest = divmod(length, 3)
                if palette or seen_idat:
                    note = "a second PLTE chunk, or one after the image data"
                elif colour in (0, 4):
                    note = "a PLTE chunk in a grayscale PNG"
                elif rest or not 1 <= entries <= (1 << bits if colour == 3 else 256):
                    note = f"a PLTE chunk of {length} bytes (3 a colour, 1 to {1 << bits if colour == 3 else 256} colours)"
                elif seen & PNG_AFTER_PLTE:
                    note = "a bKGD, hIST or tRNS chunk before the PLTE chunk"
                palette = True
            elif kind == b"IEND":
                if length:
                    problem = problem or "an IEND chunk that is not empty"
                break
            elif kind == b"IHDR":
                if position != 8:
                    note = "a second IHDR chunk"
            elif kind[:1].isupper():
                note = f"unknown critical chunk {name!r}"
            else:
                if kind in PNG_ONCE_CHUNKS and kind in seen:
                    if kind == b"iCCP" and _compressed_part(kind, body) is not None:   # Pillow inflates each one
                        return scanned("a second iCCP chunk (the PNG spec allows one; each inflates up to 1 MiB)")
                    note = f"a second {name} chunk (the PNG spec allows one)"
                elif kind in PNG_BEFORE_PLTE and palette:
                    note = f"a {name} chunk after the PLTE chunk"
                elif kind in PNG_BEFORE_IDAT and seen_idat:
                    note = f"a {name} chunk after the image data"
                seen.add(kind)
                if kind in PNG_KEPT_CHUNKS:
                    kept += 1
                    if kept > MAX_PNG_KEPT_CHUNKS:
                        return scanned(f"more than {MAX_PNG_KEPT_CHUNKS} text, sPLT and eXIf chunks (libspng's limit)")
                stream = _compressed_part(kind, body) if kind in (b"zTXt", b"iTXt", b"iCCP") else None
                if stream is None:
                    if kind in PNG_KEPT_CHUNKS:
                        metadata += length
                else:
                    cap = PngImagePlugin.MAX_TEXT_CHUNK   # Pillow's limit for one chunk; libspng's is higher
                    inflated = _inflated_size(stream, min(cap, MAX_PNG_METADATA - metadata) + 1)
                    if inflated > cap:
                        return scanned(f"a {name} chunk that inflates past {cap} bytes (Pillow's MAX_TEXT_CHUNK)")
                    metadata += inflated
                if metadata > MAX_PNG_METADATA:
                    return scanned(f"more than {MAX_PNG_METADATA} bytes of text, profile and palette chunks (inflated)")
        if problem is None:
            problem = bad_type or note
        position = end
    if not seen_idat:
        problem = problem or "no image data (IDAT)"
    return scanned()


def png_problem(data: bytes, inflate: bool = True, scan: PngScan | None = None) -> tuple[str, str] | None:
    """Why a PNG is not whole and valid, as ``(reason, detail)``, or None; checked before either decoder sees its
    pixels, so libspng and Pillow (each lenient in its own ways) are given the same PNGs: every chunk inside the
    file with its CRC right (libspng is built here to ignore CRCs, Pillow skips the image data's); a valid IHDR
    (13 bytes; a bit depth its colour type allows; compression and filter method 0; interlace 0 or 1; sides 1 to
    2^31-1: libspng refuses what Pillow reads); the critical chunks only IHDR (first), PLTE, IDAT and IEND (empty)
    (Pillow skips an unknown one); a palette before the image data of an indexed PNG (Pillow invents one), at most
    one, 3 bytes a colour, 1 to 2^bits colours (none in a grayscale PNG: libspng refuses what Pillow reads); the
    IDATs one after another; every chunk type four ASCII letters (spec 5.3: Pillow stops reading at any other,
    so before the image data it refused the file and after it accepted it); the spec's rules for ancillary chunks (at most one cHRM, gAMA, iCCP, sBIT, sRGB, bKGD,
    hIST, tRNS, pHYs, tIME, eXIf; cHRM/gAMA/iCCP/sBIT/sRGB before PLTE, bKGD/hIST/tRNS after it, those and
    pHYs/sPLT before the image data: libspng refuses a tRNS before the PLTE, Pillow reads it). These are
    ``truncated_image``. ``decompression_bomb``: more than 65,536 chunks; a second iCCP; more than 1,000 text,
    sPLT or eXIf chunks (libspng refuses the 1,001st before the image data, Pillow reads any number); a compressed
    chunk inflating past Pillow's 1 MiB; more than 8 MiB of such metadata (libspng stops at 64 MiB).

    With ``inflate`` (Pillow's path, which fills missing rows with black), also their zlib stream: it must
    inflate without error to at least the scanlines IHDR declares (libspng refuses fewer itself, so its path
    skips the inflate, 2.6 ms of a 512 px image). The inflate stops at that size, so a stream that would
    inflate to gigabytes costs no more; bytes beyond it and the Adler-32 trailer are not judged here (libspng
    never reads them). An interlaced PNG's stream (on both paths: rare, generated PNGs are not interlaced) must
    also be whole, its end and a right Adler-32 within MAX_PNG_EXTRA_DATA bytes of output after the scanlines:
    Pillow refused one cut after its last scanline byte that libspng decoded (review rev18d). ``scan`` is
    :func:`scan_png`'s result when the caller already has it."""
    scan = scan_png(data) if scan is None else scan
    if scan.bomb:
        return DECOMPRESSION_BOMB, scan.bomb
    if scan.problem:
        return TRUNCATED_IMAGE, scan.problem
    if scan.ihdr is None:
        return None
    width, height, bits, colour, interlace = scan.ihdr
    if not inflate and interlace != 1:
        return None
    expected = _png_raw_bytes(width, height, bits, colour, interlace == 1)
    inflater = zlib.decompressobj()
    inflated = used = 0
    try:
        for start, stop in scan.idat:
            if inflated >= expected or inflater.eof:
                break
            used += 1
            out = inflater.decompress(data[start:stop], expected - inflated)
            inflated += len(out)
            while inflater.unconsumed_tail and inflated < expected:
                out = inflater.decompress(inflater.unconsumed_tail, expected - inflated)
                inflated += len(out)
        if inflated < expected:
            return TRUNCATED_IMAGE, f"its image data stops early: {inflated} of the {expected} bytes of scanlines IHDR declares"
        if interlace == 1 and not inflater.eof:
            # Pillow's decoder stops when its input runs out, even with rows of output still to come (libspng
            # finishes them): an interlaced stream cut after its last scanline byte was refused by Pillow only.
            # An interlaced PNG's stream must be whole (end code and Adler-32) on both paths, within 1 MiB of
            # extra output (none from an encoder). Not for non-interlaced PNGs: that would inflate every PNG twice.
            rest = inflater.unconsumed_tail + b"".join(data[start:stop] for start, stop in scan.idat[used:])
            extra = len(inflater.decompress(rest, MAX_PNG_EXTRA_DATA + 1))
            if extra > MAX_PNG_EXTRA_DATA or not inflater.eof:
                return TRUNCATED_IMAGE, ("its interlaced image data is not a whole zlib stream (cut after its last "
                                         f"scanline byte, or more than {MAX_PNG_EXTRA_DATA} bytes of data after them)")
    except zlib.error as exc:
        return TRUNCATED_IMAGE, f"its image data does not inflate: {exc}"
    return None


def libspng_decodes(data: bytes) -> bool:
    """True for a PNG of at most 8 bits per sample whose chunks after the first IDAT are IDATs and one
    IEND, and that has no APNG chunk (``acTL``, ``fcTL``, ``fdAT``): Pillow reads an APNG's frames
    and judges them (an animation, a frame that does not fit the image), libspng ignores them, so
    such a file always goes to Pillow and gets Pillow's outcome whatever its chunk layout."""
    if data[12:16] != b"IHDR" or len(data) < 33 or data[24] > 8:
        return False
    position, image_data = 8, False
    while position + 8 <= len(data):
        length, kind = int.from_bytes(data[position:position + 4], "big"), data[position + 4:position + 8]
        if kind in (b"acTL", b"fcTL", b"fdAT"):
            return False
        if kind == b"IEND":
            return image_data
        if kind == b"IDAT":
            image_data = True
        elif image_data:
            return False
        position += 12 + length
    return False   # no IEND: Pillow reports the truncation
