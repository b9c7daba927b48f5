"""Settings of the Dagster layer itself: ``[schedules]`` (cron strings) and ``[evaluation]`` (ground truth).

Both are sections of HOME/pickapic.toml like the stages' (``formats.settings.SECTIONS``); this module
imports no Dagster, so ``pickapic settings`` lists them without loading it. Neither changes a byte of
what the pipeline publishes (``output=False``): the crons decide when runs start, the ground truth only
feeds the model assets' metadata and the dedup report.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from formats.home import DataHome
from formats.settings import check_fields, knob, quoted

# The five fields of a cron string: name, smallest and largest value, the names a value may have.
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_CRON_FIELDS = (("minute", 0, 59, ()), ("hour", 0, 23, ()), ("day-of-month", 1, 31, ()),
                ("month", 1, 12, _MONTHS), ("day-of-week", 0, 7, _DAYS))
_MONTH_DAYS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
_VALUE = r"[0-9]{1,2}|[a-z]{3}"
# one item of a field: *, a value, a range, each with an optional /step; L (the month's last day) in the
# day of month; L<day> (the month's last such weekday) and <day>#<n> (its n-th) in the day of week
_ITEM = re.compile(rf"(?:(\*)|({_VALUE})(?:-({_VALUE}))?)(?:/([0-9]{{1,2}}))?", re.ASCII | re.IGNORECASE)
_LAST_DAY = re.compile(r"l", re.IGNORECASE)
_NTH_DAY = re.compile(rf"(?:l({_VALUE})|({_VALUE})#([0-9]))", re.ASCII | re.IGNORECASE)


def cron_problem(text: str) -> str | None:
    """Why ``text`` is not a cron string the schedules take (five fields: minute hour day-of-month month
    day-of-week), or None when it is.

    The rule is Dagster's ``ScheduleDefinition`` check (``dagster._utils.schedules.is_valid_cron_string``:
    croniter's syntax, five fields, no February 30 or 31), narrowed to what is deterministic and checked here
    without importing Dagster (``tests/unit/test_fix23f.py`` compares the two on a set of strings): each
    field a comma-separated list of ``*``, a value, a range ``a-b``, each with an optional step ``/n``
    (months and weekdays also by their three-letter English names), ``L`` (the month's last day) in the
    day of month, ``L<d>`` / ``<d>#<n>`` (the month's last / n-th weekday d) in the day of week. Refused:
    croniter's random ``R`` and hashed ``H`` (a value picked anew on every read: the check itself and every
    Dagster process would disagree: review rev23f), ``W`` (the nearest weekday, which croniter takes and
    Dagster refuses: the definitions stopped loading), ``?``, ``@daily``-style names, six or seven fields,
    values out of range, a step larger than the range it steps through (Dagster warns it fires more often
    than it reads), and a day that never comes in the months given. Reasons quote the item bounded and
    escaped (never croniter's message, which repeats the whole string raw).
    """
    fields = text.split()
    if len(fields) != 5:
        return f"{len(fields)} fields, expected 5 (minute hour day-of-month month day-of-week), e.g. '0 2 * * *'"
    if not text.isascii() or any(c not in " \t" and not c.isprintable() for c in text):
        return "it holds a character no cron string has (only ASCII letters, digits, '*,-/#' and spaces)"
    # Quartz's '?' (no specific value): croniter reads a day-of-month or day-of-week field that is exactly '?' as
    # '*', deterministically, and Dagster takes it (review rev23h); anywhere else croniter refuses it
    for index in (2, 4):
        if fields[index] == "?":
            fields[index] = "*"
    for field, (name, *_rest) in zip(fields, _CRON_FIELDS):
        if "?" in field:
            return (f"{name} field {quoted(field, 40)} holds '?', which stands alone in the day-of-month or "
                    "day-of-week field only (read as '*')")
    values: list[set[int]] = []
    for field, (name, low, high, names) in zip(fields, _CRON_FIELDS):
        found: set[int] = set()
        for item in field.split(","):
            problem = _item_problem(item, name, low, high, names, found)
            if problem:
                return problem
        values.append(found)
    days, months, weekdays = values[2], values[3], fields[4]
    if days and weekdays == "*" and min(days) > max(_MONTH_DAYS[m - 1] for m in months):
        return f"day {quoted(fields[2], 40)} of month {quoted(fields[3], 40)} never comes"
    if months == {2} and days and days <= {30, 31}:
        return f"day {quoted(fields[2], 40)} of February never comes"
    return _croniter_problem(text) or _never_fires(fields)


def _never_fires(fields: list[str]) -> str | None:
    """Why Dagster's scheduler cannot iterate the cron ``fields`` (``?`` read as ``*``), or None; its reason says
    which day never comes. Dagster's ``cron_string_iterator`` (what its scheduler daemon and the UI's next tick
    use) steps with its own copy of croniter, which fails (``CroniterBadDateError``) when no fire time comes
    within 50 years, and which, for a cron that gives both a day of month and a day of week (fired on either),
    computes each of the two on its own and fails when either never comes: '0 0 31 4 mon' (April 31, or
    April's Mondays) fails there, though the croniter installed here fires it on the Mondays (review rev23h).
    Mirrored without importing Dagster: the croniter installed here computes the next and the previous fire
    time (Dagster's iterator takes both) of the cron, and of each of its two day rules on its own."""
    import datetime

    from croniter import CroniterBadDateError, CroniterError, croniter

    expanded = croniter.expand(" ".join(fields))[0]
    both = expanded[2][0] != "*" and expanded[4][0] != "*"
    variants = [(fields, "")] + ([(fields[:4] + ["*"], f"day {quoted(fields[2], 40)} of month {quoted(fields[3], 40)}"),
                                  (fields[:2] + ["*", fields[3], fields[4]],
                                   f"day of week {quoted(fields[4], 40)} in month {quoted(fields[3], 40)}")]
                                 if both else [])
    now = datetime.datetime.now(datetime.timezone.utc).replace(second=0, microsecond=0)
    for variant, what in variants:
        try:
            croniter(" ".join(variant), now).get_next(datetime.datetime)
            croniter(" ".join(variant), now).get_prev(datetime.datetime)
        except (CroniterBadDateError, CroniterError):
            if what:
                return (f"{what} never comes, and Dagster's scheduler, which computes the day of month and the day "
                        "of week each on its own, fails on it (CroniterBadDateError) instead of firing on the other")
            return ("croniter finds no time it fires within 50 years (CroniterBadDateError; a day of the month with "
                    "an n-th or last weekday is one it never finds), so Dagster's scheduler cannot iterate it")
    return None


def _item_problem(item: str, name: str, low: int, high: int, names: tuple[str, ...], found: set[int]) -> str | None:
    """Why one comma-separated ``item`` of the cron field ``name`` is refused, or None; the days of the month and
    the months it takes are added to ``found`` (``L`` as the 28th, the earliest a month's last day comes)."""
    shown = quoted(item, 40)
    lowered = item.lower()
    if name == "day-of-month" and _LAST_DAY.fullmatch(item):
        found.add(28)                             # the month's last day: the 28th at the earliest
        return None
    if name == "day-of-week":
        nth = _NTH_DAY.fullmatch(item)
        if nth:
            day = _value(nth.group(1) or nth.group(2), names)
            if day is None or not low <= day <= high:
                return f"{name} item {shown}: {nth.group(1) or nth.group(2)!r} is no weekday (0-7 or sun-sat)"
            if nth.group(3) and not 1 <= int(nth.group(3)) <= 5:
                return f"{name} item {shown}: a month has a 1st to a 5th weekday, not a {nth.group(3)}th"
            return None
    match = _ITEM.fullmatch(item)
    if not match:
        if re.match(r"[rh](?:$|[(/])", lowered):
            why = ("holds croniter's random 'R' or hashed 'H' value, which is not deterministic (picked anew on "
                   "every read: the check and each Dagster process would tick at different times)")
        elif name == "day-of-month" and "w" in lowered:
            why = "holds 'W' (the nearest weekday), which Dagster's schedules refuse"
        else:
            why = ("is not a cron item: give *, a value, a range a-b, each with an optional /step, or a "
                   "comma-separated list of them")
        return f"{name} item {shown} {why}" if item else f"{name} field has an empty item"
    star, first, last, step = match.groups()
    for given in (first, last):
        value = _value(given, names)
        if given is not None and (value is None or not low <= value <= high):
            allowed = f"{low}-{high}" + (f" or {names[0]}-{names[-1]}" if names else "")
            where = "" if given == item else f" in {shown}"
            return f"{name} value {given!r}{where} is out of range (allowed {allowed})"
    start = low if star else _value(first, names)
    end = high if star or (step is not None and last is None) else _value(last or first, names)
    top = end if start <= end else high
    if step is not None and not 1 <= int(step) <= top:
        return (f"{name} step {step!r} in {shown} is out of range: 1 to the last value it steps to ({top}); a "
                f"larger step fires once, not every {int(step)}")
    if name in ("day-of-month", "month"):
        if start <= end:
            found.update(range(start, end + 1, int(step or 1)))
        else:                                     # a range that wraps around (croniter's 5-1)
            found.update(range(start, high + 1, int(step or 1)), range(low, end + 1))
    return None


def _value(text: str | None, names: tuple[str, ...]) -> int | None:
    """A cron value: a number, or a month's / weekday's three-letter name (None for another word)."""
    if text is None:
        return None
    if text.isdigit():
        return int(text)
    lowered = text.lower()
    if lowered not in names:
        return None
    return names.index(lowered) + (1 if len(names) == 12 else 0)


def _croniter_problem(text: str) -> str | None:
    """croniter's own verdict on a string the rules above passed (Dagster's schedules use croniter), without its
    message's copy of the string (shown raw, and long enough to crowd out the reason)."""
    from croniter import CroniterError, croniter

    try:
        croniter.expand(text)
    except CroniterError as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        message = (lines[-1] if lines else "").replace(text, "the string").replace(text.lower(), "the string")
        return f"croniter refuses it ({type(error).__name__}: {quoted(message, 160)[1:-1]})"
    return None


def check_cron(value: str, key: str) -> str:
    """``value`` when it is a valid cron string; else ``ValueError`` naming ``key`` and the problem."""
    problem = cron_problem(value)
    if problem:
        raise ValueError(f"{key} = {quoted(value)} is not a cron string: {problem}")
    return value


@dataclass(frozen=True)
class ScheduleConfig:
    """When the schedules tick (UTC); read when Dagster loads the definitions of the home."""

    nightly_cron: str = knob("0 2 * * *", "cron (UTC) of nightly_schedule: request what is missing or stale.",
                             output=False)
    train_cron: str = knob("0 4 * * 0", "cron (UTC) of weekly_training_schedule: train on `latest` when it has no "
                                        "model yet.", output=False)
    app_export_cron: str = knob("0 1 * * *", "cron (UTC) of app_export_schedule: export the app database's newest "
                                             "closed day.", output=False)
    sensor_interval_s: int = knob(60, "seconds between ticks of raw_partition_sensor and rebuild_when_inputs_change.",
                                  min=1, max=86400, output=False)

    def validate(self) -> "ScheduleConfig":
        """Raise ``ValueError`` naming the first bad cron string; return self."""
        check_fields(self)
        for name in ("nightly_cron", "train_cron", "app_export_cron"):
            check_cron(getattr(self, name), f"schedules.{name}")
        return self


@dataclass(frozen=True)
class EvaluationConfig:
    """Where the model and dedup reports find ground truth: empty (production) means nothing reads any."""

    ground_truth: str = knob("", "folder of a simulation's ground truth (models.json, summary.json, duplicates.parquet, "
                                 "images.parquet), relative to the data home; empty = none (production): truth_* "
                                 "metadata, Bayes-optimal accuracy and best-of-n are left out. `pickapic demo` sets "
                                 "it to ground_truth.", output=False)

    def validate(self) -> "EvaluationConfig":
        """Raise ``ValueError`` on a value that is not a plain relative folder; return self."""
        check_fields(self)
        if self.ground_truth and (Path(self.ground_truth).is_absolute() or ".." in Path(self.ground_truth).parts):
            raise ValueError(f"evaluation.ground_truth = {quoted(self.ground_truth)} must be a folder inside the data "
                             "home (a relative path without '..')")
        return self

    def truth_dir(self, home: DataHome) -> Path | None:
        """The ground-truth folder, None when none is configured; a configured folder that is missing is an error."""
        if not self.ground_truth:
            return None
        folder = home.root / self.ground_truth
        if not folder.is_dir():
            raise FileNotFoundError(f"evaluation.ground_truth = {quoted(self.ground_truth)}: {folder} is not a folder "
                                    "(simulate into this home, or set evaluation.ground_truth = \"\" for none)")
        return folder


def ground_truth_dir(home: DataHome) -> Path | None:
    """The home's configured ground-truth folder (``evaluation.ground_truth``), None in production."""
    from formats.settings import load

    return load(home.root).config("evaluation").truth_dir(home)
