"""The feature stage's settings (:class:`FeaturesConfig`) and the counters of one run (:class:`FeaturesReport`)."""
from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass
from typing import Any

from formats.settings import check_fields, knob

FEATURES = "image_features"   # the stage's two datasets ...
REJECTS = "image_rejects"
REUSED = "reused"             # ... and the pipeline's third output: bytes identical to an earlier image


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
    nsfw_threads: int = knob(1, "onnxruntime intra-op threads per worker process", min=1, output=False)
    workers: int = knob(2, "DirectRunner multi_processing workers (0: in-process)", min=0, output=False)
    in_process_below: int = knob(32, "DirectRunner jobs with fewer images run in-process", min=0, output=False)
    runner: str = knob("DirectRunner", "Beam runner used when beam_args names none", output=False)
    blob_zone: str = knob("raw", "folder of the home that blob paths must stay inside")
    blob_base: str | None = knob(None, "where blob paths and the JPEG store resolve (default: the home)", output=False)
    staging: str | None = knob(None, "scratch folder of a run (default <base>/.staging/features/dt=<day>)",
                               output=False)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field."""
        check_fields(self)   # types and ranges of every setting
        checks = [
            ("max_side", self.max_side >= self.min_side), ("runner", bool(self.runner)),
            ("blob_zone", bool(self.blob_zone) and "/" not in self.blob_zone and self.blob_zone not in (".", "..")),
        ]
        for name, ok in checks:
            if not ok:
                raise ValueError(f"FeaturesConfig.{name}={getattr(self, name)!r} is invalid")

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
    workers: int
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


def parse_day(day: str) -> dt.date:
    """``YYYY-MM-DD`` -> date; the error names the value."""
    try:
        return dt.date.fromisoformat(day)
    except (TypeError, ValueError):
        raise ValueError(f"day {day!r} is not an ISO date YYYY-MM-DD") from None
