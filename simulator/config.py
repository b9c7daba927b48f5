"""Run knobs of the app-log simulator: one frozen dataclass, validated up front."""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, fields

# The Dagster daily partitions start here; a raw day before it could never be materialized.
EARLIEST_START = dt.date(2023, 1, 1)
# From this day on the app showed two images per ranking (before it, often four).
TWO_IMAGE_CUTOVER = dt.date(2023, 2, 15)

_FRACTIONS = {
    "defect_rate": 0.2, "banned_fraction": 0.5, "nsfw_prompt_rate": 0.5, "content_filtered_rate": 0.5,
    "exact_duplicate_rate": 0.2, "near_duplicate_rate": 0.2, "four_image_share": 1.0, "late_rate": 0.2,
    "prompt_reuse_rate": 1.0, "prompt_variant_rate": 1.0, "self_repeat_rate": 0.9,
}


@dataclass(frozen=True)
class SimConfig:
    """Everything that determines a simulated raw zone; the same config gives byte-identical files."""

    days: int = 3
    start_date: str = "2023-02-13"
    users: int = 40                   # active user population (sign-ups after the window never appear)
    rankings_per_day: int = 120
    image_size: int = 512
    seed: int = 0
    no_images: bool = False           # metadata only: no PNG blobs, no blob defects
    defect_rate: float = 0.02         # rate of each line-level / blob defect kind (at least 1 per day)
    banned_fraction: float = 0.03     # share of the active population on the banned list
    nsfw_prompt_rate: float = 0.02    # share of sessions whose prompt carries a listed NSFW phrase
    content_filtered_rate: float = 0.015  # provider safety filter on clean prompts (0.35 on NSFW prompts)
    exact_duplicate_rate: float = 0.02    # share of generated images that copy an earlier one byte for byte
    near_duplicate_rate: float = 0.02     # share of generated images that are a near copy of an earlier one
    four_image_share: float = 0.6     # share of 4-image rankings before 2023-02-15
    late_rate: float = 0.02           # share of a day's rankings exported in the next day's file
    prompt_reuse_rate: float = 0.02   # share of sessions whose prompt comes from the shared popular pool
    prompt_variant_rate: float = 0.3  # share of reused prompts retyped with case/space/punctuation changes
    self_repeat_rate: float = 0.15    # share of sessions that retype the user's previous prompt
    tie_rate: float = 0.13            # target share of 2-image ties (calibrates the tie propensity)
    workers: int = 2                  # processes rendering PNGs (output does not depend on it)
    # Plant the defects of a fragile file exporter (malformed lines, wrong types, repeated and
    # conflicting lines, re-exports, rankings in the next day's file). A typed database cannot hold
    # them, so `--to-postgres` turns this off; data-level defects stay (see README, database source).
    export_defects: bool = True

    def validate(self) -> "SimConfig":
        """Raise ``ValueError`` naming the first bad value; return self."""
        if not isinstance(self.days, int) or self.days < 1:
            raise ValueError(f"--days must be a positive integer, got {self.days!r}")
        try:
            start = dt.date.fromisoformat(str(self.start_date))
        except ValueError:
            raise ValueError(f"--start-date must be a date YYYY-MM-DD, got {self.start_date!r}") from None
        if start < EARLIEST_START:
            raise ValueError(
                f"--start-date {self.start_date} is before {EARLIEST_START.isoformat()}, "
                "where the daily partitions start")
        if not isinstance(self.users, int) or self.users < 4:
            raise ValueError(f"--users must be an integer >= 4, got {self.users!r}")
        if not isinstance(self.rankings_per_day, int) or self.rankings_per_day < 10:
            raise ValueError(f"--rankings-per-day must be an integer >= 10, got {self.rankings_per_day!r}")
        if not isinstance(self.image_size, int) or not 32 <= self.image_size <= 2048:
            raise ValueError(f"--image-size must be an integer in 32..2048, got {self.image_size!r}")
        if not isinstance(self.seed, int) or not 0 <= self.seed < 2**63:
            raise ValueError(f"--seed must be a non-negative integer, got {self.seed!r}")
        if not isinstance(self.workers, int) or self.workers < 1:
            raise ValueError(f"workers must be a positive integer, got {self.workers!r}")
        for name, upper in _FRACTIONS.items():
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 <= value <= upper:
                raise ValueError(f"{name} must be a fraction in 0..{upper}, got {value!r}")
        if not isinstance(self.export_defects, bool):
            raise ValueError(f"export_defects must be true or false, got {self.export_defects!r}")
        if not 0.01 <= self.tie_rate <= 0.5:
            raise ValueError(f"tie_rate must be in 0.01..0.5, got {self.tie_rate!r}")
        return self

    @property
    def start(self) -> dt.date:
        """The first simulated day."""
        return dt.date.fromisoformat(self.start_date)

    def day(self, index: int) -> str:
        """ISO date of day ``index`` (0-based)."""
        return (self.start + dt.timedelta(days=index)).isoformat()

    def as_dict(self) -> dict:
        """JSON-able copy of every knob that shapes the output (``workers`` does not), in declaration order."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "workers"}


def config_from_dict(values: dict) -> SimConfig:
    """Build a validated config from a dict of knob values (unknown keys are an error)."""
    known = {f.name for f in fields(SimConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown simulator settings {unknown}; known: {sorted(known)}")
    return SimConfig(**values).validate()


__all__ = ["SimConfig", "config_from_dict", "EARLIEST_START", "TWO_IMAGE_CUTOVER"]
