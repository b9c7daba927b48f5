"""Stage settings: one frozen dataclass per stage feeds the home's settings file, the flags and Dagster's config.

Every stage has one config dataclass (``IngestConfig``, ``FeaturesConfig``, ``DedupConfig``,
``CurationConfig``, ``SplitConfig``, ``PublishConfig``, ``TrainConfig``). Its fields are the stage's
settings, and a field's ``metadata`` says what the setting means (``help``), which values it accepts
(``min`` / ``max`` / ``choices``), whether it changes what the stage writes (``output``) and whether it is
a ``secret``; :func:`knob` builds such a field. From that one description this module makes:

- one section of the data home's settings file, ``HOME/pickapic.toml`` (``[splits]``
  ``heldout_fraction = 0.1``), read by every build, schedule, sensor and Dagster run of the home;
- command-line flags of the stage's command (:func:`add_flags`; e.g. ``python -m pipelines.ingest``), and ``KEY=VALUE``
  overrides for ``pickapic build --set``;
- (in ``dagster_project.runconfig``, the only Dagster-aware part) the stage's Dagster run-config class.

Values from any of them are validated the same way: an unknown key, a value of the wrong type or one
outside its range is refused with a message naming the key, where the value came from and what is
allowed. :meth:`Settings.digest` fingerprints the settings that change a stage's output (secrets only
through a slow key derivation, never in clear), so a changed setting changes the data versions and the
published version id, and a changed worker count does not.

``SECTIONS`` names each stage's class as ``"module:Class"``, imported on first use, so this bottom-layer module imports
no stage (the layering test checks it); a class may define ``from_settings`` to derive its values (``train``: presets).

``app_export`` holds the settings of the app-database export (``pickapic build --from-app-db`` and the
export schedule); the database's DSN is never a setting: it stays in ``$PICKAPIC_APP_DB_DSN``.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import difflib
import functools
import hashlib
import importlib
import json
import os
import stat
import sys
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Mapping, Sequence

SETTINGS_FILE = "pickapic.toml"
# Upper bounds of the parallelism settings: a typo or a hostile launchpad value (workers = 100000) would
# otherwise fork or spawn that many processes or threads on the machine before anything failed.
MAX_PROCESSES = 256
MAX_THREADS = 1024
# Every integer setting lies within a signed 64-bit integer: DuckDB parameters, Arrow columns and torch seeds
# take no more (review rev22e: splits.unique_prompts = 10**40 was accepted and failed the splits step).
INT64_MIN, INT64_MAX = -(2 ** 63), 2 ** 63 - 1
# A settings file is a few kilobytes; a larger one is refused before it is parsed (memory grows with the file).
MAX_FILE_BYTES = 1 << 20
# section -> "module:ConfigClass" (imported on first use: the features module pulls in Beam)
SECTIONS: dict[str, str] = {
    "app_export": "pipelines.appdb.export:AppExportConfig",
    "ingest": "pipelines.ingest.config:IngestConfig",
    "features": "pipelines.features.config:FeaturesConfig",
    "dedup": "pipelines.curation.dedup:DedupConfig",
    "curation": "pipelines.curation.decisions:CurationConfig",
    "splits": "pipelines.splits.assign:SplitConfig",
    "publish": "pipelines.publish.config:PublishConfig",
    "train": "training.config:TrainConfig",
    "models": "training.runs:RunsConfig",
    "schedules": "dagster_project.home_settings:ScheduleConfig",
    "evaluation": "dagster_project.home_settings:EvaluationConfig",
}
# Fields that are not settings of a data home: the home itself decides them.
_NOT_IN_FILE = {"train": frozenset({"data_dir", "output_dir"})}
# Ranges of settings whose dataclass field declares none, added here (review rev22e: values torch refuses
# only when training starts). AdamW takes betas in [0, 1) and a positive epsilon; the seed goes to
# torch.manual_seed(seed + rank) and random.Random, so 0 .. 2**63 - 1 leaves room for every rank.
_LIMITS: dict[str, dict[str, dict[str, Any]]] = {
    "train": {
        "adam_beta1": {"min": 0, "max": 1, "max_exclusive": True},
        "adam_beta2": {"min": 0, "max": 1, "max_exclusive": True},
        "adam_eps": {"min": 0, "min_exclusive": True},
        "seed": {"min": 0, "max": INT64_MAX},
    },
}
_SECRET_SALT = b"pickapic-settings-digest-v1"
# what a setting's value is beyond its type (knob(form=...)): how the version digests it (Knob.canonical)
FORMS = ("instant", "set")

class SettingsError(ValueError):
    """A setting was refused; the message names the key, its source and what is allowed. A credential the message
    would quote (a URL's password, user token or query, a credential option's value: a stage's own check quotes the
    value it refuses) is hidden (:func:`formats.text.redact_credentials`; review rev25j: ``pickapic settings`` and
    the launch refusal showed ``features.blob_base = 'file://user:SECRET@host/...'``)."""

    def __init__(self, *args: Any) -> None:
        from formats.text import redact_credentials

        super().__init__(*(redact_credentials(arg) if isinstance(arg, str) else arg for arg in args))


def knob(default: Any, help: str, *, min: float | None = None, max: float | None = None,
         min_exclusive: bool = False, max_exclusive: bool = False, choices: Sequence[Any] | None = None,
         output: bool = True, secret: bool = False, private: bool = False, range_note: str | None = None,
         form: str | None = None, home_file: str | None = None) -> Any:
    """A dataclass field that is a stage setting: help text, allowed values, output and secret flags.

    ``form``: what the value is beyond its type, so that the version digests one spelling per meaning
    (:meth:`Knob.canonical`): ``"instant"`` (an ISO timestamp, naive meaning UTC), ``"set"`` (a list whose order and
    repeats mean nothing). ``home_file``: a file path setting whose ``''`` means this file of the data home (relative
    to it, ``raw/moderation/nsfw_phrases.txt``); a relative path is inside the home (review rev32i).

    ``range_note``: why the range is what it is, told with a refused value (the range alone does not say why).

    ``private``: a command line of options that may hold credentials in forms no pattern finds (``features.
    beam_args``): never shown whole (each option's value hidden: :func:`formats.text.option_names`), the settings
    file written 0600 when it holds one; unlike a secret it may be given with ``--set`` (`pickapic settings --set
    ... --write`), and run config takes it only without a credential :func:`formats.text.redact_credentials` finds."""
    metadata = {"help": help, "output": output, "secret": secret, "private": private}
    for name, value in (("min", min), ("max", max), ("choices", tuple(choices) if choices else None)):
        if value is not None:
            metadata[name] = value
    if min_exclusive:
        metadata["min_exclusive"] = True
    if max_exclusive:
        metadata["max_exclusive"] = True
    if range_note:
        metadata["range_note"] = range_note
    if form is not None:
        if form not in FORMS:
            raise ValueError(f"knob form {form!r} is none of {', '.join(FORMS)}")
        metadata["form"] = form
    if home_file is not None:
        metadata["home_file"] = home_file
    return field(default=default, metadata=metadata, repr=not secret)   # a secret is never in a repr


def output_fields(config: Any) -> dict[str, Any]:
    """The settings of ``config`` that change what its stage writes (``knob(output=True)``), by name, as they are."""
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.metadata.get("output")}


def public_fields(config: Any) -> dict[str, Any]:
    """``dataclasses.asdict(config)`` with every secret setting shown as ``***`` (a private one by its option names,
    a URL's credential in any other hidden: :func:`_redacted`): what metadata, logs and reports may carry."""
    return {f.name: ("***" if f.metadata.get("secret") else _private_shown(value) if f.metadata.get("private")
                     else _redacted(value))
            for f, value in zip(dataclasses.fields(config), dataclasses.asdict(config).values())}


def _private_shown(value: Any) -> Any:
    """A ``private`` setting's value as it may be shown: each option's name, every value hidden."""
    from formats.text import option_names

    return option_names(value) if isinstance(value, str) else value


def _redacted(value: Any) -> Any:
    """A setting's value as it may be shown: a URL's credential (a password, a user token, a query) or a credential
    option's value in a text (or a list of texts) hidden by :func:`formats.text.redact_credentials`, as the
    launchpad's field descriptions show it (``features.blob_base = "s3://KEY:SECRET@bucket"``: review rev25g)."""
    from formats.text import redact_credentials

    if isinstance(value, str):
        return redact_credentials(value)
    if isinstance(value, (tuple, list)):
        return type(value)(redact_credentials(item) if isinstance(item, str) else item for item in value)
    return value


def holds_credential(value: Any) -> bool:
    """Whether a setting's value (a text, or a list of texts) holds what :func:`_redacted` hides. Only texts are
    asked: a number never holds one (a NaN, never equal to itself, counted as a credential when the redacted
    value was compared with the value: review rev32e)."""
    from formats.text import redact_credentials

    items = value if isinstance(value, (tuple, list)) else (value,)
    return any(isinstance(item, str) and redact_credentials(item) != item for item in items)


# ------------------------------------------------------------------------------------- one setting

@dataclass(frozen=True)
class Knob:
    """One setting of one stage, as described by its dataclass field."""

    section: str
    name: str
    kind: type                     # int, float, bool, str or tuple (of str)
    optional: bool                 # None is allowed
    default: Any
    help: str
    minimum: float | None = None
    maximum: float | None = None
    min_exclusive: bool = False
    max_exclusive: bool = False
    choices: tuple | None = None
    output: bool = True
    secret: bool = False
    in_file: bool = True
    private: bool = False
    range_note: str = ""           # why the range is what it is (said with a refused value)
    form: str = ""                 # "instant", "set" or "" (knob(form=...)): how :meth:`canonical` reads it
    home_file: str = ""            # a path setting whose '' is this file of the home (relative to the home)

    @property
    def key(self) -> str:
        return f"{self.section}.{self.name}"

    def allowed(self) -> str:
        """What values this setting accepts, in words."""
        if self.choices:
            text = ("a list of " if self.kind is tuple else "one of ") + ", ".join(repr(c) for c in self.choices)
        elif self.kind is tuple:
            text = "a list of strings"
        elif self.kind is bool:
            text = "true or false"
        elif self.minimum is not None or self.maximum is not None:
            noun = "an integer" if self.kind is int else "a number"
            low = "" if self.minimum is None else f"{_fmt(self.minimum)} {'<' if self.min_exclusive else '<='} "
            high = "" if self.maximum is None else f" {'<' if self.max_exclusive else '<='} {_fmt(self.maximum)}"
            text = f"{noun}, {low}value{high}"
        else:
            text = {int: "an integer", float: "a number", str: "a string"}[self.kind]
        return text + (" (or empty for none)" if self.optional else "")

    def coerce(self, value: Any, source: str, strict: bool = False) -> Any:
        """A typed, range-checked value from a TOML value or a command-line string.

        ``strict`` (a value of a settings file, which TOML already typed): a string is no integer, number or
        boolean (``jpeg_quality = "90"`` is refused, not read as 90); an empty string still means none for a
        setting that may be empty, and a list setting still takes a comma-separated string."""
        try:
            if strict and not self._toml_typed(value):
                raise TypeError
            typed = self._typed(value)
        except (TypeError, ValueError, OverflowError, RecursionError):   # a 400-digit integer for a number; a list
            # nested 100,000 deep given with --set
            raise SettingsError(f"setting {self.key} = {self._shown_short(value)} ({source}) is refused: "
                                f"expected {self.allowed()}") from None
        if typed is not None:
            self._check_range(typed, source)
        return typed

    def canonical(self, value: Any, root: Path | None = None) -> Any:
        """``value`` (a valid value of this setting) in its one spelling per meaning, as the version digests it
        (:func:`config_digest`), so that an equivalent spelling changes no data version (review rev32i):

        - an instant (``form="instant"``): the naive UTC time it names, ``YYYY-MM-DD HH:MM:SS[.ffffff]``
          (``2022-01-01``, ``2022-01-01T00:00:00``, ``...+00:00``, ``...Z`` are ``2022-01-01 00:00:00``, the default's
          spelling); a value that does not parse is kept as written (the stage's own check refuses it);
        - a set (``form="set"``): each member once, the default's members first in the default's order, then the
          other allowed values in their declared order (then any others sorted), so the default is canonical;
        - a home file (``home_file``): ``''`` where the path names that file of the home (``raw/moderation/
          nsfw_phrases.txt``, ``./raw//moderation/nsfw_phrases.txt``, the absolute path, a link to it: compared
          resolved, with ``root``); any other path with ``.`` parts and doubled slashes taken out. A path with a
          ``..`` part, or ending in ``/`` or ``/.`` (which the system reads otherwise), is kept as written.

        Every other value is itself: nothing two different values mean is ever merged."""
        if value is None:
            return None
        if self.form == "instant" and isinstance(value, str):
            try:
                return utc_naive(value).isoformat(sep=" ")
            except (TypeError, ValueError, OverflowError):
                return value
        if self.form == "set" and isinstance(value, (tuple, list)):
            default = list(self.default or ())
            choices = list(self.choices or ())

            def order(member: Any) -> tuple:
                if member in default:
                    return (0, default.index(member), "")
                if member in choices:
                    return (1, choices.index(member), "")
                return (2, 0, str(member))
            return type(value)(sorted(dict.fromkeys(value), key=order))
        if self.home_file and isinstance(value, str):
            return home_file_canonical(value, self.home_file, root)
        return value

    def _toml_typed(self, value: Any) -> bool:
        """Whether a TOML value has this setting's type (an integer is a number too)."""
        if self.kind is bool:
            return isinstance(value, bool)
        if self.kind is int:
            return isinstance(value, int) and not isinstance(value, bool)
        if self.kind is float:
            return isinstance(value, (int, float)) and not isinstance(value, bool)
        return True     # strings and lists: checked by _typed

    def _typed(self, value: Any) -> Any:
        if self.optional and (value is None or value == "" or (isinstance(value, str) and value.lower() == "none")):
            return None
        if self.kind is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in _BOOLS:
                return _BOOLS[value.lower()]
            raise TypeError
        if self.kind is int:
            if isinstance(value, bool) or isinstance(value, float):
                raise TypeError
            return int(value.replace("_", "")) if isinstance(value, str) else int(value)
        if self.kind is float:
            if isinstance(value, bool):
                raise TypeError
            number = float(value)
            if number != number or number in (float("inf"), float("-inf")):
                raise ValueError
            return number
        if self.kind is tuple:
            if isinstance(value, str):
                value = json.loads(value) if value.strip().startswith("[") else [v.strip() for v in value.split(",") if v.strip()]
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
                raise TypeError
            for member in value:
                member.encode("utf-8")      # no lone surrogates (ValueError)
            return tuple(value)
        if not isinstance(value, str):
            raise TypeError
        value.encode("utf-8")       # a lone surrogate (an undecodable command-line byte) is no text: ValueError
        return value

    def _check_range(self, value: Any, source: str) -> None:
        bad = False
        if self.choices:
            members = value if self.kind is tuple else (value,)
            bad = any(member not in self.choices for member in members)
        if self.kind in (int, float):
            if self.minimum is not None and (value < self.minimum or (self.min_exclusive and value == self.minimum)):
                bad = True
            if self.maximum is not None and (value > self.maximum or (self.max_exclusive and value == self.maximum)):
                bad = True
        if bad:
            note = f" ({self.range_note})" if self.range_note else ""
            raise SettingsError(f"setting {self.key} = {self._shown_short(value)} ({source}) is out of range: "
                                f"allowed {self.allowed()}{note}")
        if self.kind is int and not INT64_MIN <= value <= INT64_MAX:
            raise SettingsError(f"setting {self.key} = {self._shown_short(value)} ({source}) is out of range: "
                                f"allowed {self.allowed()}, within a 64-bit integer ({INT64_MIN} .. {INT64_MAX})")

    def _shown_short(self, value: Any) -> str:
        """``value`` as an error message may show it: a secret setting's value never is, any other :func:`quoted`
        (a refused value may be a 400-digit integer or a long string)."""
        return "***" if self.secret else quoted(value)


_BOOLS = {"true": True, "false": False, "yes": True, "no": False, "1": True, "0": False, "on": True, "off": False}


# ``quoted`` lives in formats.text (formats.locks shows paths with it, and this module takes the settings lock)
from formats.text import SHOWN_CHARS, quoted  # noqa: E402,F401 - imported from here by the rest of the project


def _named(name: str) -> bool:
    """Whether a message may show a key or section name it was given as it is: short and printable."""
    return len(name) <= SHOWN_CHARS and name.isprintable()


def _section_shown(section: str) -> str:
    """``[section]`` as a message names a section it was given; :func:`quoted` where that is long or not printable."""
    return f"[{section}]" if _named(section) else f"section {quoted(section)}"


def _close_match(word: str, names: Iterable[str]) -> str | None:
    """difflib's nearest of ``names`` to ``word``, or None. A word over three times the longest name is none
    (difflib's 0.6 cutoff needs at most 7/3 times) and is not given to difflib, whose index of a 3 MB key takes
    ~0.3 s and ~140 MB."""
    names = list(names)
    if len(word) > 3 * max(map(len, names), default=0):
        return None
    near = difflib.get_close_matches(word, names, n=1)
    return near[0] if near else None


def _fmt(number: float) -> str:
    return str(int(number)) if float(number).is_integer() else str(number)


def config_class(section: str) -> type:
    """The stage's config dataclass (imported on first use)."""
    if section not in SECTIONS:
        raise SettingsError(f"unknown settings section {_section_shown(section)}; sections: {', '.join(SECTIONS)}")
    module, name = SECTIONS[section].split(":")
    return getattr(importlib.import_module(module), name)


@functools.cache
def knobs(section: str) -> dict[str, Knob]:
    """name -> Knob for every field of the section's dataclass."""
    dc = config_class(section)
    hints = typing.get_type_hints(dc)
    out = {}
    for f in dataclasses.fields(dc):
        kind, optional = _kind(hints[f.name], f"{dc.__name__}.{f.name}")
        meta = {**f.metadata, **_LIMITS.get(section, {}).get(f.name, {})}
        help_text = str(meta.get("help", ""))
        output = meta.get("output", True)
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        out[f.name] = Knob(
            section=section, name=f.name, kind=kind, optional=optional, default=default, help=help_text,
            minimum=meta.get("min"), maximum=meta.get("max"), min_exclusive=bool(meta.get("min_exclusive")),
            max_exclusive=bool(meta.get("max_exclusive")), choices=tuple(meta["choices"]) if meta.get("choices") else None,
            output=bool(output), secret=bool(meta.get("secret")), in_file=f.name not in _NOT_IN_FILE.get(section, ()),
            private=bool(meta.get("private")), range_note=str(meta.get("range_note") or ""),
            form=str(meta.get("form") or ""), home_file=str(meta.get("home_file") or ""))
    return out


def utc_naive(text: str) -> dt.datetime:
    """The instant an ISO timestamp setting names, as the app's timestamps are: naive UTC (a value with an offset,
    ``...+02:00`` or ``...Z``, is the same instant in UTC). TypeError, ValueError or OverflowError where it names
    none (not ISO, or past the calendar in UTC)."""
    instant = dt.datetime.fromisoformat(text)
    if instant.tzinfo is not None:
        instant = instant.astimezone(dt.timezone.utc).replace(tzinfo=None)
    return instant


def home_file_canonical(value: str, home_file: str, root: Path | None = None) -> str:
    """The canonical spelling of a path setting whose ``''`` is the home's ``home_file`` (:meth:`Knob.canonical`):
    ``''`` where ``value`` names that file (the same relative path once ``.`` parts and doubled slashes are out;
    with ``root``, the same path resolved, links followed, as opening it would); else ``value`` so normalised. A
    ``..`` part (a link before it would lead elsewhere, a missing folder before it fails) and a trailing ``/`` or
    ``/.`` (only a folder matches) keep the value as written: never merged with another spelling."""
    if not value:
        return ""
    last = value.rsplit("/", 1)[-1]
    if last in ("", ".", "..") or ".." in value.split("/"):
        return value
    written = PurePosixPath(value)
    if not written.is_absolute() and written == PurePosixPath(home_file):
        return ""
    if root is not None:
        try:
            if os.path.realpath(Path(root) / value) == os.path.realpath(Path(root) / home_file):
                return ""
        except (OSError, ValueError):   # a path the system cannot resolve: kept as written
            pass
    return str(written)


def _kind(tp: Any, where: str) -> tuple[type, bool]:
    """(base type, optional) of a config field annotation."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _kind(inner[0], where)[0], True
    if tp in (int, float, bool, str):
        return tp, False
    if origin in (tuple, list) and args and args[0] is str:
        return tuple, False
    if origin is typing.Literal:
        return str, False
    raise TypeError(f"config field {where} has type {tp!r}, which a settings file cannot hold")


def check_fields(config: Any) -> None:
    """Check every field of a stage config against its setting's type and range (from ``__post_init__``)."""
    cls = type(config)
    # a module run as a script (python -m pipelines.curation.dedup) defines its classes in __main__
    section = next((s for s, path in SECTIONS.items() if path == f"{cls.__module__}:{cls.__name__}"
                    or (cls.__module__ == "__main__" and path.endswith(f":{cls.__name__}"))), None)
    if section is None:
        raise TypeError(f"{cls.__name__} is not a stage config of formats.settings.SECTIONS")
    for name, spec in knobs(section).items():
        spec.coerce(getattr(config, name), cls.__name__)


# Settings that existed once and were removed: a file or override that still names one is refused
# with the reason (never silently ignored, never a bare "unknown setting").
RETIRED = {
    "dedup.max_iterations": "duplicate clusters are now connected components found in one pass, with no round "
                            "limit (a chain of near duplicates longer than the limit failed the build)",
}


def check_path_text(value: str, key: str) -> None:
    """Refuse a file or folder path setting no file system can hold (a NUL byte), naming ``key``: without this
    the stage that opens it fails with a bare "embedded null byte" (review rev22e)."""
    if "\x00" in value:
        raise ValueError(f"{key} = {quoted(value)} holds a NUL byte, which no path can hold")


def unknown_section(section: str, source: str) -> SettingsError:
    """The error for a section name that is none of ``SECTIONS``, with the nearest one."""
    near = _close_match(section, SECTIONS)
    hint = f" (did you mean [{near}]?)" if near else ""
    return SettingsError(f"unknown settings section {_section_shown(section)} ({source}){hint}; sections: "
                         f"{', '.join(SECTIONS)}")


def knob_for(key: str, source: str) -> Knob:
    """The Knob of ``section.name``; an unknown key is refused with the nearest known ones."""
    if key in RETIRED:
        raise SettingsError(f"setting {quoted(key)} ({source}) was removed: {RETIRED[key]}; delete it")
    section, _, name = key.partition(".")
    if section not in SECTIONS or not name:
        near = _close_match(section, SECTIONS)
        hint = f" (did you mean [{near}]?)" if near else ""
        raise SettingsError(f"unknown setting {quoted(key)} ({source}): settings are SECTION.NAME with SECTION one of "
                            f"{', '.join(SECTIONS)}{hint}")
    known = knobs(section)
    if name not in known or not known[name].in_file:
        names = [n for n, k in known.items() if k.in_file]
        near = _close_match(name, names)
        hint = f"did you mean {section}.{near}? " if near else ""
        raise SettingsError(f"unknown setting {quoted(key)} ({source}): {hint}[{section}] has {', '.join(names)}")
    return known[name]


# ------------------------------------------------------------------------------------- all settings

@dataclass(frozen=True)
class Settings:
    """The settings of one data home: explicit values (file, then overrides) over the dataclass defaults."""

    explicit: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    sources: Mapping[str, str] = field(default_factory=dict)
    # the data home the settings were loaded for (:func:`load`; None: none), so a caller holding only the
    # settings finds the home's raw zone (``pickapic build --from-app-db``'s day selection, review rev29h)
    root: Path | None = field(default=None, compare=False, repr=False)

    def section(self, section: str) -> dict[str, Any]:
        """The explicit values of one section."""
        return dict(self.explicit.get(section, {}))

    def with_values(self, values: Mapping[str, Any], source: str, strict: bool = False,
                    unchecked: Iterable[str] = ()) -> "Settings":
        """A copy with ``{"section.name": value}`` applied (each value validated; ``strict``: values of a TOML
        file, see :meth:`Knob.coerce`); the sections' cross-field checks run, but for those of ``unchecked``
        (values still to come, checked with them)."""
        explicit = {s: dict(v) for s, v in self.explicit.items()}
        sources = dict(self.sources)
        for key, value in values.items():
            spec = knob_for(key, source)
            explicit.setdefault(spec.section, {})[spec.name] = spec.coerce(value, source, strict)
            sources[key] = source
        updated = Settings(explicit, sources, self.root)
        for section in {knob_for(k, source).section for k in values} - set(unchecked):
            updated.config(section)  # cross-field validation
        return updated

    def config(self, section: str, overrides: Mapping[str, Any] | None = None, source: str = "run config") -> Any:
        """The stage's dataclass: defaults, then this home's values, then ``overrides`` (None = not given)."""
        values = self.section(section)
        for name, value in (overrides or {}).items():
            if value is None:
                continue
            spec = knobs(section).get(name)
            if spec is None:
                knob_for(f"{section}.{name}", source)     # raises, naming a retired setting's reason
                raise SettingsError(f"unknown setting {quoted(f'{section}.{name}')} ({source})")
            values[name] = spec.coerce(value, source)
        where = ", ".join(sorted({self.sources.get(f"{section}.{n}", source) for n in values})) or "defaults"
        try:
            cls = config_class(section)
            built = getattr(cls, "from_settings", cls)(**values)   # a class may derive defaults (train: presets)
            if hasattr(built, "validate"):
                built.validate()
        except (TypeError, ValueError) as exc:
            raise SettingsError(f"settings of [{section}] ({where}) are refused: {exc}") from None
        return built

    def digest(self, section: str, config: Any | None = None) -> str:
        """Fingerprint of the settings that change the section's output (secrets through a slow hash), each in its
        canonical spelling (:meth:`Knob.canonical`; a home file resolved inside this home, :attr:`root`)."""
        return config_digest(section, config if config is not None else self.config(section), self.root)

    def describe(self) -> list[dict[str, Any]]:
        """One row per setting: key, effective value (secrets masked), default, source, allowed values, help."""
        rows = []
        for section in SECTIONS:
            effective = self.config(section)
            for name, spec in knobs(section).items():
                if not spec.in_file:
                    continue
                value = getattr(effective, name)
                shown = "***" if spec.secret else _private_shown(value) if spec.private else _redacted(_plain(value))
                rows.append({"key": spec.key, "value": shown,
                             "default": "***" if spec.secret else _plain(spec.default),
                             "source": self.sources.get(spec.key, "default"), "allowed": spec.allowed(),
                             "help": spec.help, "output": spec.output})
        return rows


def config_digest(section: str, config: Any, root: Path | None = None) -> str:
    """sha256 (16 hex) of the output-affecting fields of a stage config, each value in its canonical spelling
    (:meth:`Knob.canonical`: an equivalent spelling of a timestamp, of a set of classes, of the home's own
    moderation list is no change, review rev32i; ``root``: the data home a home file setting is resolved in). A
    value already canonical (every default, the spellings the README shows) digests as it did before."""
    values = {}
    for name, spec in knobs(section).items():
        if not spec.output or not spec.in_file:
            continue
        value = getattr(config, name)
        values[name] = _secret_digest(value) if spec.secret and value is not None else \
            _plain(spec.canonical(value, root))
    return hashlib.sha256(json.dumps([section, values], sort_keys=True).encode()).hexdigest()[:16]


@functools.lru_cache(maxsize=8)
def _secret_digest(secret: str) -> str:
    """A slow, salted derivation: a digest that leaves the machine says nothing usable about the secret."""
    return hashlib.pbkdf2_hmac("sha256", secret.encode("utf-8"), _SECRET_SALT, 200_000).hex()[:32]


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def settings_path(home_root: Path) -> Path:
    """``HOME/pickapic.toml``."""
    return Path(home_root) / SETTINGS_FILE


def read_text(path: Path, source: str | None = None) -> str:
    """The text of a settings file, as written (line endings kept): at most ``MAX_FILE_BYTES``, UTF-8;
    anything else is a one-line ``SettingsError`` naming ``source``."""
    source = source or str(path)
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise SettingsError(f"settings file {source} cannot be read: {exc.strerror or exc}") from None
    if len(data) > MAX_FILE_BYTES:
        raise SettingsError(f"settings file {source} is larger than {MAX_FILE_BYTES // (1 << 20)} MiB, which no "
                            "settings file needs: it is refused unread")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SettingsError(f"settings file {source} is not UTF-8 text: {exc}") from None


def parse_text(text: str, source: str) -> dict[str, Any]:
    """``tomllib.loads`` of a settings file's text; a syntax error or a nesting too deep for the parser is a
    one-line ``SettingsError`` naming ``source``."""
    try:
        # CRLF reads as LF; a lone CR is no line break in TOML (read as one, `# old\rmin_users = 3` set a value an
        # editor shows inside a comment, and --write could not keep it: review rev22f), so tomllib refuses it
        return tomllib.loads(text.replace("\r\n", "\n"))
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"settings file {source} is not valid TOML: {exc}") from None
    except ValueError as exc:       # an integer past Python's digit limit (5,000 digits)
        raise SettingsError(f"settings file {source} holds a value that cannot be read: {exc}") from None
    except RecursionError:
        raise SettingsError(f"settings file {source} nests arrays or tables too deeply to be read (no setting "
                            "nests at all)") from None


def read_file(path: Path, source: str | None = None) -> dict[str, Any]:
    """``{"section.name": raw value}`` from a settings TOML file (syntax errors name the file and line).

    A file over ``MAX_FILE_BYTES``, one nested too deeply, and a section that is none of ``SECTIONS`` (even an
    empty one: ``[splitz]``, a typo of ``[splits]``) are refused, naming the file."""
    source = source or str(path)
    document = parse_text(read_text(path, source), source)
    values = {}
    for section, table in document.items():
        if not isinstance(table, dict):
            raise SettingsError(f"settings file {source}: {quoted(section)} must be a [section] table, e.g. "
                                f"[splits] then heldout_fraction = 0.1")
        if not table and section not in SECTIONS:
            raise unknown_section(section, source)
        for name, value in table.items():
            values[f"{section}.{name}"] = value
    return values


def parse_assignment(text: str) -> tuple[str, str]:
    """``section.name=value`` -> (key, value); anything else is refused with an example."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise SettingsError(f"--set {quoted(text)}: expected SECTION.NAME=VALUE, e.g. "
                            "--set splits.heldout_fraction=0.1")
    return key.strip(), value.strip()


def parse_assignments(texts: Iterable[str]) -> dict[str, str]:
    """``{key: value}`` of ``--set`` assignments; a key given twice is refused (which one was meant?), and so is
    text that is not UTF-8 (a byte the command line could not decode: it would fail a stage much later). A
    secret's values are never shown (review rev22f)."""
    pairs: dict[str, str] = {}
    for text in texts:
        key, value = parse_assignment(text)
        try:
            key.encode("utf-8"), value.encode("utf-8")
        except UnicodeEncodeError:
            shown = quoted(key.encode("utf-8", "backslashreplace").decode())
            raise SettingsError(f"--set {shown}: the value is not UTF-8 "
                                "text (a byte the command line could not decode); give it as text") from None
        if key in pairs:
            try:
                secret = knob_for(key, "--set").secret
            except SettingsError:
                secret = False
            shown = "" if secret else f" ({quoted(pairs[key])} and {quoted(value)})"
            raise SettingsError(f"--set gives {key if _named(key) else quoted(key)} twice{shown}; give it once")
        pairs[key] = value
    return pairs


def load(home_root: Path | None, *, config_file: Path | None = None,
         assignments: Iterable[str] = (), overrides: Mapping[str, Any] | None = None) -> Settings:
    """The home's settings file, then ``config_file``, then ``--set`` assignments, each validated.

    The file is checked as it is: a value it holds that this version refuses fails every command that reads it
    (runs, builds, sensors alike), naming the key; `pickapic settings --set KEY=VALUE --write` replaces it
    (:func:`write_settings` checks the file but for the keys it replaces, review rev22f)."""
    settings = Settings(root=None if home_root is None else Path(home_root))
    if home_root is not None:
        path = settings_path(home_root)
        if path.is_file():
            values = read_file(path, f"{SETTINGS_FILE} of the data home")
            settings = settings.with_values(values, f"{SETTINGS_FILE} of the data home", strict=True)
            if _holds_private(values):
                guard_private_file(path)
        elif os.path.lexists(path):
            # there but not a file (a link whose target is gone, a folder): never read as "no settings",
            # which would rebuild with the defaults, the default pseudonym secret included (review rev21b)
            raise SettingsError(f"{SETTINGS_FILE} of the data home ({path}) is there but is not a file (a link "
                                "whose target is gone, or a folder): restore or remove it; the defaults are "
                                "never used in its place")
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            raise SettingsError(f"--config {path}: no such file")
        settings = settings.with_values(no_secrets(read_file(path, f"--config {path}"), f"--config {path}"),
                                        f"--config {path}", strict=True)
    pairs = parse_assignments(assignments)
    if pairs:
        settings = settings.with_values(no_secrets(pairs, "--set"), "--set")
    if overrides:
        settings = settings.with_values(overrides, "override")
    return settings


def no_secrets(values: dict[str, Any], source: str) -> dict[str, Any]:
    """Refuse secrets given for one run: they would be stored with the run and show in shell history."""
    for key in values:
        if knob_for(key, source).secret:
            raise SettingsError(f"{source} sets {key}: a secret is only read from HOME/{SETTINGS_FILE} (a one-run "
                                f"value would be stored with the run and show in shell history)")
    return values


def settings_lock_file(home_root: Path) -> Path:
    """The lock file of ``write_settings`` (``HOME/.locks/settings.lock``, beside the home's other locks)."""
    from formats.home import DataHome

    return DataHome(Path(home_root)).locks / "settings.lock"


def write_settings(home_root: Path, values: Mapping[str, Any], header: str | None = None) -> Path:
    """Set ``{"section.name": value}`` in ``HOME/pickapic.toml`` (created if absent, comments kept).

    The file is read, changed and replaced under the home's settings lock, so two writes at once both land
    (review rev22e: the second rename dropped the first one's value). It keeps its line endings (CRLF stays
    CRLF) and its permission bits; a file holding a secret (or a ``private`` setting's value) is 0600, and so is its temporary file from the
    moment it is created. A value of none (``features.staging=``) removes the key, whose default is none."""
    from formats.locks import hold_lock

    def wait(holder: str) -> None:
        print(f"waiting for another settings write of {home_root} (pid {holder})", file=sys.stderr, flush=True)

    with_new_values(home_root, values)   # a refused value is refused before HOME/.locks is made
    with hold_lock(settings_lock_file(home_root), f"the settings file of {home_root}", wait):
        return _write_settings(home_root, values, header)   # read again: another write may have changed it


def with_new_values(home_root: Path, values: Mapping[str, Any], source: str = "new values") -> Settings:
    """The home's settings with ``values`` in place of the file's: the file must be valid but for the keys being
    set, so a value the file is refused for (a relative ``features.staging`` an earlier version took) can be
    replaced with `pickapic settings --set ... --write` (review rev22f)."""
    settings, path = Settings(), settings_path(home_root)
    in_file = f"{SETTINGS_FILE} of the data home"
    if path.is_file():
        specs = [knob_for(key, source) for key in values]
        replaced = {spec.key for spec in specs}
        kept = {key: value for key, value in read_file(path, in_file).items() if key not in replaced}
        # the sections being changed are checked once, with the new values in place (min_side 5000 in the file
        # and max_side 9000 set: never checked against max_side's default, review rev22h)
        settings = settings.with_values(kept, in_file, strict=True, unchecked={spec.section for spec in specs})
    elif os.path.lexists(path):
        load(home_root)                     # the same refusal as every command's
    return settings.with_values(values, source)


def _write_settings(home_root: Path, values: Mapping[str, Any], header: str | None) -> Path:
    """:func:`write_settings`, the settings lock held."""
    import tomlkit

    from formats import files

    path = settings_path(home_root)
    if path.is_symlink() or (path.exists() and not path.is_file()):
        raise SettingsError(f"{path} is not a regular file; refusing to replace it")
    links = os.lstat(path).st_nlink if path.exists() else 1
    if links > 1:   # replaced by a rename, its other names would keep the old settings (as a symlink's target would)
        raise SettingsError(f"{path} has {links} hard links; refusing to replace it (the other names would keep the "
                            "old settings): give the home a file of its own (copy it, then move the copy over it) "
                            "or edit it by hand")
    updated = with_new_values(home_root, values)  # the file must be valid but for what is being replaced
    old = read_text(path, f"{SETTINGS_FILE} of the data home") if path.exists() else None
    crlf = old is not None and "\r\n" in old and old.count("\n") == old.count("\r\n")
    document = tomlkit.parse(old.replace("\r\n", "\n") if crlf else old) if old is not None else tomlkit.document()
    if old is None:
        for line in (header or _HEADER).strip().splitlines():
            document.add(tomlkit.comment(line.lstrip("# ").rstrip()))
        document.add(tomlkit.nl())
    for key in values:
        spec = knob_for(key, "new values")
        value = updated.explicit[spec.section][spec.name]
        if value is None:   # none: TOML has no null; the key is removed (default none) or set empty
            if spec.default is None:
                if spec.section in document and spec.name in document[spec.section]:
                    del document[spec.section][spec.name]
                continue
            value = ""
        if spec.section not in document:
            document.add(spec.section, tomlkit.table())
        document[spec.section][spec.name] = list(value) if isinstance(value, tuple) else value
    text = tomlkit.dumps(document)
    written = read_file_text(text)
    for key in values:  # never write a file that reads back other than intended
        spec = knob_for(key, "new values")
        wanted = updated.explicit[spec.section][spec.name]
        got = spec.coerce(written[key], "the new file") if key in written else spec.default
        if got != wanted:
            raise SettingsError(f"{path}: setting {key} would not read back as written; the file is left as it "
                                "is (change it by hand)")
    # a secret, or a private setting's value (Beam options may hold a credential: review rev23j), is read by no
    # other account (but the group of a group-shared home, where the file gave it access: review rev25a)
    secret = _holds_private(written)
    held = old is not None and _holds_private(read_file_text(old.replace("\r\n", "\n") if crlf else old))
    info = os.stat(path) if old is not None else None
    if info is not None and info.st_uid != os.geteuid() and (secret or held) and os.geteuid() != 0:
        # replaced by rename, it would become this account's file, 0600: its owner (whose daemon builds the home)
        # and the group could no longer read it (review rev25a)
        raise SettingsError(f"{path} belongs to another account ({_account(info.st_uid)}) and holds a secret: "
                            f"written by this account it would become this account's own file, which that account "
                            f"could no longer read; it is left as it is: ask its owner to change it (pickapic "
                            f"settings --set ... --write, or by hand)")
    if secret:
        mode = private_mode(path, info)
    elif old is not None and not held:
        mode = stat.S_IMODE(info.st_mode)    # the owner's choice of mode is kept
    else:   # new, or 0600 only for what it no longer holds: readable as the umask allows again (review rev23l)
        mode = files.file_mode()
    data = (text.replace("\n", "\r\n") if crlf else text).encode("utf-8")
    if len(data) > MAX_FILE_BYTES:      # every command would refuse the file written (review rev22f)
        raise SettingsError(f"{path}: with these values the file would be larger than "
                            f"{MAX_FILE_BYTES // (1 << 20)} MiB, which every command refuses; it is left as it is")
    with files.atomic_path(path, private=True) as tmp:   # 0600 until the chmod: a secret is never readable
        tmp.write_bytes(data)
        if info is not None and info.st_uid != os.geteuid() == 0:   # root's write: the file stays its owner's
            os.chown(tmp, info.st_uid, info.st_gid)                    # (review rev25a)
        os.chmod(tmp, mode)
    return path


def private_mode(path: Path, info: os.stat_result | None) -> int:
    """The mode of the settings file ``path`` (``info``: its stat, None when new) when it holds a secret or a
    private setting's value: 0600, plus the group's read and write bits it had where its home is group-shared
    (a setgid folder, README: *Readers and a shared home*) and it belongs to the home's group, whose members
    build with it: the owner gave them access (review rev25a). Never any access for other accounts."""
    if info is None:
        return 0o600
    return 0o600 | (info.st_mode & 0o060 if _home_group(path, info.st_gid) else 0)


def _home_group(path: Path, gid: int) -> bool:
    """Whether ``gid`` is the group of the group-shared (setgid) folder holding ``path``."""
    try:
        home = os.stat(Path(path).parent)
    except OSError:
        return False
    return bool(home.st_mode & stat.S_ISGID) and home.st_gid == gid


def _account(uid: int) -> str:
    """``name (uid N)``, or ``uid N`` where the uid has no name."""
    try:
        import pwd

        return f"{pwd.getpwuid(uid).pw_name}, uid {uid}"
    except (ImportError, KeyError):
        return f"uid {uid}"


_GUARDED: set[tuple[str, int, int]] = set()   # (path, mode, uid) already told about by this process


def guard_private_file(path: Path) -> None:
    """A settings file holding a secret (or a private setting's value) that other accounts may read, e.g. one
    made under umask 022 and then given the pseudonym secret by hand, the only way to set it: made private
    (:func:`private_mode`'s bits, its owner's kept) where this account owns it, with a line on stderr naming the
    file and the chmod; else that line says which chmod its owner should run (review rev25a). A link is never
    changed through (only told about)."""
    from formats.text import terminal_text

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        fd = None     # a link (read through, never changed through) or gone meanwhile
    try:
        try:
            info = os.fstat(fd) if fd is not None else os.stat(path)
        except OSError:
            return
        mode = stat.S_IMODE(info.st_mode)
        wanted = (mode & 0o7700) | (private_mode(path, info) & 0o077)
        if mode == wanted:
            return
        shown = terminal_text(str(path))
        why = ""
        if fd is not None and stat.S_ISREG(info.st_mode) and info.st_uid == os.geteuid():
            try:
                os.fchmod(fd, wanted)
                print(f"warning: {SETTINGS_FILE} of the data home ({shown}) holds a secret and was readable by other "
                      f"accounts (mode {mode:04o}): made {wanted:04o} (chmod {wanted:o} {shown})",
                      file=sys.stderr, flush=True)
                return
            except OSError as exc:
                why = f" ({exc.strerror or exc})"
        elif fd is None:
            why = " (it is a symbolic link: never changed through)"
        else:
            why = f" (it belongs to {_account(info.st_uid)})"
        key = (str(path), mode, info.st_uid)
        if key not in _GUARDED:
            _GUARDED.add(key)
            print(f"warning: {SETTINGS_FILE} of the data home ({shown}) holds a secret and is readable by other "
                  f"accounts (mode {mode:04o}), which this account cannot change{why}: run chmod {wanted:o} {shown} "
                  f"as its owner", file=sys.stderr, flush=True)
    finally:
        if fd is not None:
            os.close(fd)


def _holds_private(values: Mapping[str, Any]) -> bool:
    """Whether file values (``{"section.name": value}``) hold a secret, a non-empty private setting (Beam
    options may hold a credential: review rev23j) or a value holding a credential :func:`holds_credential` finds
    (a URL's password, user token or query: ``features.blob_base = "s3://KEY:SECRET@bucket"``, review rev25g):
    such a file is read by no other account."""
    for key, value in values.items():
        try:
            spec = knob_for(key, "the file")
        except SettingsError:
            continue
        if spec.secret or (spec.private and value) or holds_credential(value):
            return True
    return False


def read_file_text(text: str) -> dict[str, Any]:
    """``{"section.name": value}`` of TOML text."""
    return {f"{s}.{n}": v for s, table in parse_text(text, "(new text)").items() if isinstance(table, dict)
            for n, v in table.items()}


_HEADER = """
Settings of this pickapic data home: read by `pickapic build`, the nightly schedule, the sensors and
every Dagster run of the home. `pickapic settings --home HOME` lists every key with its value, default
and allowed range; `pickapic build --set SECTION.NAME=VALUE` overrides one for a single run.
"""


# ------------------------------------------------------------------------------------------ flags

def add_flags(parser: argparse.ArgumentParser, section: str, *, exclude: Iterable[str] = ()) -> None:
    """One ``--name`` flag per setting of ``section`` (default: the home's settings file, then the default)."""
    skip = set(exclude)
    for name, spec in knobs(section).items():
        if name in skip or spec.secret or not spec.in_file:
            continue
        flag = "--" + name.replace("_", "-")
        text = f"{spec.help + '; ' if spec.help else ''}default {_plain(spec.default)!r}; {spec.allowed()}"
        text = text.replace("%", "%%")
        if spec.kind is bool:
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            parser.add_argument(flag, dest=name, default=None, metavar=name.upper(), help=text,
                                type=flag_type(spec))


def flag_type(spec: Knob):
    """An argparse ``type`` that coerces and validates a flag's text like a setting (range, choices)."""

    def parse(text: str) -> Any:
        try:
            return spec.coerce(text, "command line")
        except SettingsError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    parse.__name__ = spec.name  # argparse names the flag's type in its messages
    return parse


def stage_config(home_root: Path | None, section: str, args: argparse.Namespace | None = None) -> Any:
    """The config of a command-line run of a stage: the home's settings file, then the flags given."""
    return load(home_root).config(section, flag_values(section, args) if args is not None else None, "command line")


def flag_values(section: str, args: argparse.Namespace) -> dict[str, Any]:
    """The settings of ``section`` given as flags (those left out are absent)."""
    return {name: getattr(args, name) for name in knobs(section)
            if getattr(args, name, None) is not None}
