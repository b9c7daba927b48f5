"""Load ODCS v3 contracts and evaluate their quality rules with DuckDB.

Conventions used by every contract here:
- ``schema[0].name`` is the dataset name (the key in ``schemas.SCHEMAS``); each property's
  ``physicalType`` is the pyarrow type string, ``required: true`` means non-null.
- Quality rules are ``type: sql`` with a ``query`` returning one number and one ``mustBe*``
  comparison. ``{object}`` in a query stands for the dataset's own view; other views are
  referred to by dataset name. ``severity: error`` makes the rule a blocking check.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import duckdb
import yaml
from open_data_contract_standard.model import OpenDataContractStandard

_COMPARATORS = {
    "mustBe": lambda v, t: v == t,
    "mustNotBe": lambda v, t: v != t,
    "mustBeGreaterThan": lambda v, t: v > t,
    "mustBeGreaterOrEqualTo": lambda v, t: v >= t,
    "mustBeLessThan": lambda v, t: v < t,
    "mustBeLessOrEqualTo": lambda v, t: v <= t,
    "mustBeBetween": lambda v, t: t[0] <= v <= t[1],
    "mustNotBeBetween": lambda v, t: not (t[0] <= v <= t[1]),
}


@dataclass(frozen=True)
class Rule:
    """One quality rule of one contract."""

    dataset: str
    name: str
    description: str
    query: str
    comparator: str
    target: object
    blocking: bool

    @property
    def check_name(self) -> str:
        return self.name

    def sql(self) -> str:
        return self.query.replace("{object}", self.dataset)

    def expectation(self) -> str:
        return f"{self.comparator} {self.target}"


@dataclass(frozen=True)
class RuleResult:
    rule: Rule
    value: float | None
    passed: bool
    error: str | None = None


@dataclass(frozen=True)
class Contract:
    dataset: str
    version: str
    description: str
    columns: dict[str, dict]
    rules: tuple[Rule, ...]
    model: OpenDataContractStandard


def contract_names() -> list[str]:
    """Dataset names that have a contract YAML in the installed package."""
    return sorted(p.name[: -len(".yaml")] for p in resources.files("data_contracts").iterdir() if p.name.endswith(".yaml"))


@lru_cache(maxsize=None)
def load_contract(dataset: str) -> Contract:
    """Parse and validate ``data_contracts/<dataset>.yaml``; errors name the file and the field."""
    resource = resources.files("data_contracts").joinpath(f"{dataset}.yaml")
    if not resource.is_file():
        raise FileNotFoundError(f"no contract data_contracts/{dataset}.yaml")
    raw = yaml.safe_load(resource.read_text(encoding="utf-8"))
    try:
        model = OpenDataContractStandard.model_validate(raw)
    except Exception as exc:  # pydantic.ValidationError; re-raised with the file named
        raise ValueError(f"data_contracts/{dataset}.yaml is not a valid ODCS v3 contract: {exc}") from exc
    if not model.schema_ or model.schema_[0].name != dataset:
        raise ValueError(f"data_contracts/{dataset}.yaml: first schema object must be named {dataset!r}")
    obj = model.schema_[0]
    columns = {prop.name: prop.model_dump(exclude_none=True) for prop in (obj.properties or [])}
    rules = []
    for quality in obj.quality or []:
        if quality.type != "sql" or not quality.query:
            raise ValueError(f"data_contracts/{dataset}.yaml rule {quality.name!r}: only type: sql rules with a query are supported")
        comparisons = [(k, getattr(quality, k)) for k in _COMPARATORS if getattr(quality, k) is not None]
        if len(comparisons) != 1:
            raise ValueError(f"data_contracts/{dataset}.yaml rule {quality.name!r}: needs exactly one mustBe* comparison")
        comparator, target = comparisons[0]
        if not quality.name:
            raise ValueError(f"data_contracts/{dataset}.yaml: every rule needs a name")
        rules.append(Rule(dataset, quality.name, quality.description or quality.name, quality.query,
                          comparator, target, (quality.severity or "error") == "error"))
    names = [r.name for r in rules]
    if len(names) != len(set(names)):
        raise ValueError(f"data_contracts/{dataset}.yaml: duplicate rule names {names}")
    return Contract(dataset, model.version, obj.description or model.description or "", columns, tuple(rules), model)


def evaluate(contract: Contract, con: duckdb.DuckDBPyConnection) -> list[RuleResult]:
    """Run every rule of ``contract`` on ``con`` (views already registered by dataset name)."""
    results = []
    for rule in contract.rules:
        try:
            row = con.execute(rule.sql()).fetchone()
        except duckdb.Error as exc:
            results.append(RuleResult(rule, None, False, f"query failed: {exc}"))
            continue
        value = row[0] if row else None
        value = 0 if value is None else value
        results.append(RuleResult(rule, float(value), bool(_COMPARATORS[rule.comparator](value, rule.target))))
    return results
