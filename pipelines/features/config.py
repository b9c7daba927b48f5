"""The feature stage's settings (:class:`FeaturesConfig`) and the counters of one run (:class:`FeaturesReport`)."""
from __future__ import annotations

import datetime as dt
import os
import stat
from dataclasses import asdict, dataclass
from typing import Any

from formats.files import is_url, path_within
from formats.outputs import entry_kind
from formats.settings import MAX_PROCESSES, MAX_THREADS, check_fields, knob, quoted
from pipelines.features.runnernames import runner_refusal, settings_refusal

FEATURES = "image_features"   # the stage's two datasets ...
REJECTS = "image_rejects"
REUSED = "reused"             # ... and the pipeline's third output: bytes identical to an earlier image
DEFAULT_RUNNER = "DirectRunner"
STAGING_AREA = ".staging/features"           # the stage's own scratch area under the blob base
STAGING_MARKER = ".pickapic-features-staging"  # written into every staging folder the stage creates: only a
                                               # folder holding it (or a folder of STAGING_AREA) is ever deleted


class StagingRefused(ValueError):
    """A staging folder or blob base the stage must not write into or delete."""


@dataclass(frozen=True)
class FeaturesConfig:
    """Knobs of the feature stage (validated by :meth:`validate`)."""

    train_size: int = knob(512, "shortest side of the training JPEG in px (never upscaled)", min=16)
    jpeg_quality: int = knob(90, "training JPEG quality", min=1, max=95)
    max_pixels: int = knob(4096 * 4096, "decompression-bomb limit on width x height from the header", min=1)
    max_bytes: int = knob(64 * 1024 * 1024, "larger blobs are rejected (file_too_large) without being loaded", min=1)
    min_side: int = knob(8, "images whose shortest side is below this are rejected (too_small)", min=1)
    max_side: int = knob(4096, "images whose longest side is above this are rejected (bad_dimensions); bounds "
                               "NudeNet's padded square", min=1)
    max_aspect: float = knob(4.0, "images whose longest / shortest side is above this are rejected (bad_dimensions)",
                             min=1)
    nsfw_batch_size: int = knob(8, "images per NudeNet session.run (batching gains 4-10%)", min=1, output=False)
    nsfw_threads: int = knob(1, "onnxruntime intra-op threads per worker process", min=1, max=MAX_THREADS, output=False)
    workers: int = knob(2, "DirectRunner multi_processing workers (0: in-process)", min=0, max=MAX_PROCESSES, output=False)
    in_process_below: int = knob(128, "DirectRunner jobs with fewer images run in-process", min=0, output=False)
    runner: str = knob(DEFAULT_RUNNER, "Beam runner used when beam_args names none: a Beam runner's name or the "
                                       "dotted path of a runner class", output=False)
    beam_args: str = knob("", "Beam pipeline options of every run of the stage, as on a command line (split like a "
                              "shell does: quotes group words), e.g. '--flink_job_server_jar=/opt/beam/flink.jar "
                              "--environment_type=LOOPBACK'; a run's own beam_args (run config, pickapic build --set) "
                              "replace them, without credentials; listed with every option's value hidden, and the "
                              "settings file holding them is 0600", output=False, private=True)
    blob_zone: str = knob("raw", "folder of the home that blob paths must stay inside")
    blob_base: str | None = knob(None, "where blob paths and the JPEG store resolve (default: the home); a local "
                                       "store outside the home records the home as its writer "
                                       "(<base>/blobs/train/.writers), and a home whose store another home writes "
                                       "into removes no training JPEG", output=False)
    staging: str | None = knob(None, "scratch folder of a run (default <base>/.staging/features/dt=<day>); "
                                     "deleted after the run, so a new folder outside the home or a subfolder "
                                     "of <base>/.staging/features", output=False)

    def validate(self, home: str | os.PathLike | None = None) -> None:
        """Raise ``ValueError`` naming the first bad field; with ``home``, also check ``blob_base`` and
        ``staging`` against that data home (:class:`StagingRefused`) before anything is written or deleted."""
        check_fields(self)   # types and ranges of every setting
        for name in ("blob_base", "staging"):
            value = getattr(self, name)
            if value is not None and (not value.strip() or "\x00" in value):
                raise ValueError(f"FeaturesConfig.{name}={quoted(value)} is invalid")
            if value is not None and not is_url(value) and not os.path.isabs(value):
                # a relative folder would resolve against the working directory of each process (the CLI's,
                # the daemon's run worker's): two runs of one home would use different folders (review rev22e)
                raise ValueError(f"features.{name} = {quoted(value)} is a relative path: give an absolute folder or a "
                                 "URL (or empty for the default)")
            if value is not None:
                file_url_path(value, f"features.{name}")   # a file:// URL's form: with the settings too
        checks = [
            ("max_side", self.max_side >= self.min_side), ("runner", bool(self.runner)),
            ("blob_zone", bool(self.blob_zone) and "/" not in self.blob_zone and self.blob_zone not in (".", "..")),
        ]
        for name, ok in checks:
            if not ok:
                raise ValueError(f"FeaturesConfig.{name}={quoted(getattr(self, name))} is invalid")
        # a name or the form of a dotted path: the module a path names is not imported (its code would run
        # wherever the settings are read); a path is imported, and what it needs in the Beam options checked, by
        # the first step of a run with the feature step and when the stage starts
        refusal = runner_refusal(self.runner)
        if refusal:
            raise ValueError(f"features.runner = {quoted(self.runner)} {refusal}")
        # the runner with the Beam options every run gets (no run of `pickapic build`, the nightly or the sensors
        # passes any other): one that cannot run with them is refused here, not in every run (review rev23h)
        refusal = settings_refusal(self.runner, self.beam_args)
        if refusal:
            raise ValueError(refusal)
        if home is not None:
            check_blob_base(self.blob_base, home)
            if self.staging is not None:
                check_staging(self.staging, self.base(home), home, "FeaturesConfig.staging")

    def base(self, home: str | os.PathLike) -> str:
        """The blob base: ``blob_base`` or the home."""
        return self.blob_base or str(home)

    def staging_url(self, home: str | os.PathLike, day: str) -> str:
        """This run's scratch folder: ``staging`` or ``<base>/.staging/features/dt=<day>``."""
        return self.staging or _join(self.base(home), f"{STAGING_AREA}/dt={day}")

    def decode_limits(self) -> dict[str, Any]:
        """Keyword limits of :func:`pipelines.features.decode.decode_image`."""
        return {"max_pixels": self.max_pixels, "min_side": self.min_side, "max_side": self.max_side,
                "max_aspect": self.max_aspect}

    @property
    def train_prefix(self) -> str:
        """Folder of the training JPEGs for this size/quality, relative to the home."""
        return f"blobs/train/s{self.train_size}q{self.jpeg_quality}"


@dataclass
class FeaturesReport:
    """Counters of one run of the feature stage."""

    day: str
    inputs: int                   # rows of the day's images partition
    processed: int                # images fingerprinted by this run (decoded + NSFW model)
    reused: int                   # rows copied instead of computed (by uid + by sha256)
    reused_by_uid: int            # uid already in this day's or an earlier partition (never read)
    reused_by_sha256: int         # new uid, bytes identical to an earlier day's image (read, not decoded)
    rejected: dict[str, int]      # reject reason -> count (this day's image_rejects)
    bytes_read: int               # blob bytes read by this run
    stage_seconds: float          # wall time of the Beam pipeline (0 when nothing had to be read)
    total_seconds: float          # wall time of build_features
    images_per_second: float      # images read by the Beam stage / stage_seconds (start-up included)
    features_rows: int
    rejects_rows: int
    runner: str
    workers: int | None               # worker processes the day ran on (0: this process; None: the runner's)
    features_path: str
    rejects_path: str

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())

    def metadata(self) -> dict[str, Any]:
        """JSON-able values plus a markdown ``summary`` table, for Dagster asset metadata."""
        values: dict[str, Any] = asdict(self)
        values["rejected"] = dict(sorted(self.rejected.items()))
        values["rejected_total"] = self.rejected_total
        values["reconciled"] = self.features_rows + self.rejects_rows == self.inputs
        lines = ["| counter | value |", "|---|---|"]
        for key in ("inputs", "processed", "reused", "reused_by_uid", "reused_by_sha256", "rejected_total",
                    "bytes_read", "images_per_second", "stage_seconds"):
            lines.append(f"| {key} | {values[key]} |")
        for reason, count in values["rejected"].items():
            lines.append(f"| rejected: {reason} | {count} |")
        values["summary"] = "\n".join(lines)
        return values


def _join(base: str, relpath: str) -> str:
    return base.rstrip("/") + "/" + relpath


_within = path_within     # ``path`` is ``root`` or lies below it (both absolute, normalised)


def in_staging_area(url: str, base: str) -> bool:
    """``url`` is a direct subfolder of the stage's own area ``<base>/.staging/features`` (the default's place)."""
    area = _join(base, STAGING_AREA)
    if is_url(url) or is_url(base):
        return url.rstrip("/").rsplit("/", 1)[0] == area.rstrip("/")
    return os.path.dirname(os.path.realpath(url)) == os.path.realpath(area)


def has_marker(path: str) -> bool:
    """A local folder holds the marker file the stage writes into each staging folder it creates."""
    try:
        return stat.S_ISREG(os.lstat(os.path.join(path, STAGING_MARKER)).st_mode)
    except OSError:
        return False


def file_url_path(value: str, where: str) -> str | None:
    """The local path of a ``file://`` URL (``file:///abs``, ``file://localhost/abs``; scheme and host in any case),
    None for any other value. Beam has no file system of its own for ``file://``, but a plugin may map it onto
    the local disk: a staging folder or blob base given as one gets the checks of that path (it got none, as a
    bucket's URL: noted by the rev22 reviews). ``file:/abs`` is no URL (Beam reads it as a relative path, and
    so does the stage). Another host, a percent escape (read as itself or decoded, depending on the file
    system), or a ``?``, ``#`` or ``;`` (a query, fragment or parameters: part of the folder's name to one
    file system, cut off by one that parses the URL, so ``file:///HOME?x`` is the new folder ``HOME?x`` to
    the checks and the home to such a file system: review rev23c) is refused: give the path."""
    text = value.strip()
    if not is_url(text) or text.split(":", 1)[0].lower() != "file":
        return None
    host, _, path = text.partition("://")[2].partition("/")
    if host.lower() not in ("", "localhost") or any(mark in path for mark in "%?#;"):
        raise StagingRefused(f"{where} = {quoted(value)} is a file URL of another host, with a percent escape or "
                             "with a query, fragment or parameters ('?', '#', ';'); give the local folder as a path")
    return "/" + path


def check_blob_base(blob_base: str | None, home: str | os.PathLike) -> None:
    """A local blob base must be an existing real folder, neither a folder holding the home nor a folder inside
    it (blobs/train and .staging are written there); a ``file://`` URL is checked as its path, any other URL gets
    no check here. Once accepted, a local store that is not inside the home (another folder, another data home, the
    home's own behind a link), and a size folder of it a link takes outside the home (review rev31a), records the
    home as one of its writers (``storewriters.record_store_user``, review rev30i: that home's removal of training
    JPEGs then removes none there), as the settings are set and as the feature stage starts."""
    where = f"FeaturesConfig.blob_base={quoted(blob_base)}"
    blob_base = blob_base and (file_url_path(blob_base, "features.blob_base") or blob_base)
    if blob_base is not None and is_url(blob_base):
        return
    if blob_base is None:
        _record_writer(str(home), home, "the data home's training JPEG store")
        return
    try:
        info = os.lstat(blob_base)
    except OSError as exc:
        raise StagingRefused(f"{where}: not an existing folder ({exc.strerror})") from None
    if not stat.S_ISDIR(info.st_mode):
        raise StagingRefused(f"{where} is {entry_kind(info.st_mode)}, not a folder")
    real, home_real = os.path.realpath(blob_base), os.path.realpath(home)
    if real != home_real and (_within(home_real, real) or _within(real, home_real)):
        raise StagingRefused(f"{where} {'holds' if _within(home_real, real) else 'lies inside'} the data home "
                             f"{home_real}; give the home itself or a folder outside it")
    _record_writer(blob_base, home, where)


def _record_writer(base: str, home: str | os.PathLike, where: str) -> None:
    """Record the home as a writer of the store of ``base`` (:func:`check_blob_base`); refused when it cannot be."""
    from pipelines.features.storewriters import record_store_user

    try:
        record_store_user(base, home)
    except OSError as exc:
        raise StagingRefused(f"{where}: this home cannot be recorded as a writer of its training JPEG store "
                             f"({exc.strerror or exc})") from None


def check_staging(staging: str, base: str, home: str | os.PathLike, where: str = "staging folder") -> None:
    """Refuse a staging folder the stage must not delete and recreate: the home, the blob base or a folder
    holding either; anything inside them but a subfolder of ``<base>/.staging/features``; a symlink, a file or
    a device; an existing folder that holds no staging marker (not created by the stage). The stage's own
    area ``<base>/.staging`` and ``<base>/.staging/features`` must not be symlinks either. A ``file://`` URL
    (either of them) is checked as its path (:func:`file_url_path`)."""
    what = f"{where} {quoted(staging)}"
    staging = file_url_path(staging, "features.staging") or staging
    base = file_url_path(base, "features.blob_base") or base
    if is_url(staging):
        rest = staging.partition("://")[2]
        if not rest.strip("/") or "/" not in rest.strip("/"):
            raise StagingRefused(f"{what} is a bucket's root; give a folder inside it")
        if is_url(base):
            s, b = staging.rstrip("/"), base.rstrip("/")
            if s == b or b.startswith(s + "/"):
                raise StagingRefused(f"{what} is or holds the blob base {quoted(base)}")
            if s.startswith(b + "/") and not in_staging_area(s, base):
                raise StagingRefused(f"{what} lies inside the blob base {quoted(base)}: only a subfolder of "
                                     f"{_join(base, STAGING_AREA)} may be a staging folder there")
        return
    path = os.path.abspath(staging)
    real = os.path.realpath(path)
    roots = {os.path.realpath(home)} | ({os.path.realpath(base)} if not is_url(base) else set())
    for root in sorted(roots):
        for sub in (".staging", STAGING_AREA):
            try:
                info = os.lstat(os.path.join(root, sub))
            except OSError:
                break
            if not stat.S_ISDIR(info.st_mode):
                raise StagingRefused(f"{os.path.join(root, sub)} is {entry_kind(info.st_mode)}; the feature stage "
                                     "keeps its staging folders in a real folder there")
        if _within(root, real):
            raise StagingRefused(f"{what} is or holds {root}, the data home or blob base: the stage deletes its "
                                 "staging folder")
        if _within(real, root) and os.path.dirname(real) != os.path.join(root, STAGING_AREA):
            raise StagingRefused(f"{what} lies inside {root}: only a subfolder of {os.path.join(root, STAGING_AREA)} "
                                 "may be a staging folder there (or give a new folder outside it)")
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:   # a file on the way (NotADirectoryError), a name too long, no permission: one line
        raise StagingRefused(f"{what} cannot be a staging folder "
                             f"({exc.strerror or exc})") from None
    if not stat.S_ISDIR(info.st_mode):
        raise StagingRefused(f"{what} is {entry_kind(info.st_mode)}, not a staging folder")
    if not has_marker(path) and not in_staging_area(path, base):
        raise StagingRefused(f"{what} is an existing folder the feature stage did not create (no {STAGING_MARKER} "
                             "in it); the stage deletes its staging folder, so give a new folder")


def parse_day(day: str) -> dt.date:
    """``YYYY-MM-DD`` -> date; the error names the value."""
    try:
        return dt.date.fromisoformat(day)
    except (TypeError, ValueError):
        raise ValueError(f"day {quoted(day)} is not an ISO date YYYY-MM-DD") from None
