"""Load ODCS v3 contracts and evaluate their quality rules with DuckDB.

Conventions used by every contract here:
- ``schema[0].name`` is the dataset name (the key in ``schemas.SCHEMAS``); each property's
  ``physicalType`` is the pyarrow type string, ``required: true`` means non-null.
- Quality rules are ``type: sql`` with a ``query`` returning one number and one ``mustBe*``
  comparison. ``{object}`` in a query stands for the dataset's own view; other views are
  referred to by dataset name. ``severity: error`` makes the rule a blocking check.
"""
from __future__ import annotations

import json
import os
import re
import threading
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import duckdb
import yaml
from open_data_contract_standard.model import OpenDataContractStandard

from formats.duck import offline_connection
from schemas import get_schema

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


def evaluate(contract: Contract, con: duckdb.DuckDBPyConnection,
             given: dict[str, float] | None = None) -> list[RuleResult]:
    """Run every rule of ``contract`` on ``con`` (views already registered by dataset name).

    ``given``: rule name -> value already known for these views (e.g. summed from earlier
    per-file counts, see :func:`row_local`); those rules are judged on it and not run.

    The rules that count the dataset's rows matching a condition (``SELECT count(*) FROM {object}
    WHERE ...``: 92 of the 146 rules here) are answered together, by one scan of the dataset
    (:func:`fused_query`). For a published version's sidecars (thousands of files) that is one pass
    over them for eight rules instead of eight passes (``benchmarks/sidecar_scan.py``). Such a rule's
    value is always its ``count(*) FILTER (WHERE <condition>)``, fused or alone, so it never depends
    on the rules beside it. That is its own query's count, except where DuckDB's Parquet min/max
    statistics, which leave out NaN, let the ``WHERE`` form skip a row group holding a NaN the
    condition matches (``WHERE isnan(x)`` gives 0 on a file with a NaN; DuckDB 2.0.1): the filter
    form reads every row. Should the fused query fail, each rule runs alone in that form, and if that
    fails too, as its own query (a ``WHERE`` may avoid an error the filter meets, e.g. a cast guarded
    by an ``AND``), so an error is reported against the rule that causes it.
    """
    values: dict[str, object] = dict(given or {})
    fused = [rule for rule in contract.rules if rule.name not in values and row_condition(rule) is not None]
    if len(fused) > 1:
        try:
            row = con.execute(fused_query(fused)).fetchone()
        except duckdb.Error:
            pass                                    # each rule runs alone below, and reports its own error
        else:
            values.update({rule.name: value for rule, value in zip(fused, row)})
    results = []
    for rule in contract.rules:
        if rule.name in values:
            results.append(result_of(rule, values[rule.name]))
            continue
        queries = ([fused_query([rule])] if row_condition(rule) is not None else []) + [rule.sql()]
        for query in queries:
            try:
                row = con.execute(query).fetchone()
            except duckdb.Error as exc:
                error = exc
                continue
            results.append(result_of(rule, row[0] if row else None))
            break
        else:
            results.append(RuleResult(rule, None, False, f"query failed: {error}"))
    return results


_COUNT_WHERE = re.compile(r"\s*SELECT\s+count\s*\(\s*\*\s*\)\s+FROM\s+\{object\}\s+WHERE\s+(?P<condition>.*[^\s;])\s*",
                          re.DOTALL | re.IGNORECASE)


def row_condition(rule: Rule) -> str | None:
    """The condition of a rule that counts its dataset's rows where it holds, else None.

    The query must read ``SELECT count(*) FROM {object} WHERE <condition>`` and DuckDB's own parse of
    it must say the same: one plain SELECT of ``count_star()`` from the dataset's view, with a WHERE
    and nothing else (no GROUP BY, HAVING, QUALIFY, ORDER BY, LIMIT, set operation, CTE or sample,
    which the text after WHERE could otherwise hide). Then ``count(*) FILTER (WHERE <condition>)``
    over the view is the rule's value.
    """
    match = _COUNT_WHERE.fullmatch(rule.query)
    if match is None or not _plain_count_where(rule.sql(), rule.dataset):
        return None
    condition = match.group("condition").replace("{object}", rule.dataset)
    # the condition must also parse on its own inside a filter (a WINDOW clause, say, vanishes from
    # the parse of the whole query but leaves the text after WHERE no expression)
    if not _parses(f"SELECT count(*) FILTER (WHERE (\n{condition}\n)) FROM {rule.dataset}"):
        return None
    return condition


def row_local(rule: Rule) -> bool:
    """Whether the rule's value over several files is the sum of its values over each of them, and
    a file's value depends on its bytes alone.

    True for a :func:`row_condition` rule whose condition reads only the row it is judging:
    - every column it names is a column of its dataset's contract (so not ``current_date``,
      ``CURRENT_TIMESTAMP`` or ``localtimestamp``, which parse as names, nor a reader's virtual
      columns such as ``file_row_number``), unqualified, and no ``*`` / ``COLUMNS(*)``;
    - no subquery (nothing else of the dataset or of another view), window, parameter or lambda;
    - every function it calls is in ``PURE_FUNCTIONS`` (string, number and list functions of their
      arguments alone) and has only overloads DuckDB declares ``CONSISTENT``, or is an arithmetic
      operator (whose other overloads are time-zone arithmetic). The flag alone is not enough:
      DuckDB calls ``json_serialize_plan`` consistent, and it plans SQL against the catalog and
      reads files;
    - no cast to a type with a time zone.
    What is left can still meet the session's ``TimeZone`` through an implicit cast, so the cache of
    counts (:mod:`pipelines.publish.rulecache`) keys them by that setting too.
    """
    if row_condition(rule) is None:
        return False
    try:
        columns = frozenset(name.lower() for name in load_contract(rule.dataset).columns)
    except (FileNotFoundError, ValueError):
        return False
    return _reads_only_the_row(rule.sql(), columns)


_ARITHMETIC = frozenset({"+", "-", "*", "/", "//", "%"})
# Functions a row-local condition may call: pure functions of their arguments. DuckDB's stability
# flag alone is not enough (it calls json_serialize_plan CONSISTENT, which plans SQL against the
# catalog and reads files), so a function must be listed here *and* have only CONSISTENT overloads.
PURE_FUNCTIONS = frozenset({
    "~~", "!~~", "~~*", "!~~*", "~~~", "like_escape", "not_like_escape", "ilike_escape", "not_ilike_escape",
    "regexp_full_match", "regexp_matches", "starts_with", "ends_with", "prefix", "suffix", "contains",
    "length", "strlen", "octet_length", "lower", "upper", "lcase", "ucase", "||", "concat", "substring",
    "substr", "left", "right", "trim", "ltrim", "rtrim", "replace", "strpos", "instr", "position",
    "abs", "sign", "round", "floor", "ceil", "ceiling", "isnan", "isinf", "isfinite", "greatest", "least",
    "md5", "sha256", "len", "array_length", "list_contains", "list_has",
})
_TIME_ZONE_TYPES = ("TIME ZONE", "TZ")      # TIMESTAMP WITH TIME ZONE, TIMESTAMPTZ, TIMESTAMP_TZ, TIMETZ


@lru_cache(maxsize=None)
def _reads_only_the_row(sql: str, columns: frozenset[str]) -> bool:
    statements = _statements(sql)
    try:
        where = statements[0]["node"]["where_clause"]
    except (TypeError, KeyError, IndexError):
        return False
    functions = set()
    stack = [where]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, dict):
            kind = node.get("class")
            if kind in ("SUBQUERY", "WINDOW", "PARAMETER", "LAMBDA", "STAR", "LAMBDA_REF", "POSITIONAL_REFERENCE"):
                return False
            if kind == "COLUMN_REF":              # one unqualified name, a column of the dataset
                names = node.get("column_names") or []
                if len(names) != 1 or str(names[0]).lower() not in columns:
                    return False
            if kind == "FUNCTION":
                functions.add(str(node.get("function_name")))
            if kind == "CAST":
                target = json.dumps([node.get("type_expr"), node.get("cast_type")]).upper()
                if any(t in target for t in _TIME_ZONE_TYPES):
                    return False
            stack.extend(node.values())
    if functions - _ARITHMETIC - PURE_FUNCTIONS:
        return False
    # unknown, or some overload volatile / fixed per query only
    return all(_stability(name) == {"CONSISTENT"} for name in functions - _ARITHMETIC)


def result_of(rule: Rule, value: object) -> RuleResult:
    """The rule judged on a value it already has (None counts as 0, as from a query)."""
    value = 0 if value is None else value
    return RuleResult(rule, float(value), bool(_COMPARATORS[rule.comparator](value, rule.target)))


def fused_query(rules: list[Rule]) -> str:
    """One query over the rules' dataset: per rule (each with a :func:`row_condition`), in order, the
    number of rows where its condition holds."""
    (dataset,) = {rule.dataset for rule in rules}
    return f"SELECT\n{filter_counts(rules)}\nFROM {dataset}"


def filter_counts(rules: list[Rule]) -> str:
    """The select list of :func:`fused_query`: ``count(*) FILTER (WHERE (<condition>))`` per rule, in
    order. Each condition stands on lines of its own, in parentheses, so a trailing ``--`` comment
    in one ends with its line."""
    return ",\n".join(f"count(*) FILTER (WHERE (\n{row_condition(rule)}\n))" for rule in rules)


_parser_lock = threading.Lock()
_parser: list[duckdb.DuckDBPyConnection] = []      # this process's connection for parsing rules


_inherited: list[duckdb.DuckDBPyConnection] = []   # a forked child's parent connections: kept, never used


def _forget_parser_after_fork() -> None:
    """In a forked child: a fresh lock and no parser. The parent's connection stays referenced, never
    used or freed: its threads do not exist in the child, and tearing it down there crashes the
    process (see ``pipelines.publish.shards._duckdb``)."""
    global _parser_lock, _parser
    _inherited.extend(_parser)
    _parser_lock, _parser = threading.Lock(), []


os.register_at_fork(after_in_child=_forget_parser_after_fork)


def _parser_query(sql: str, params: list) -> list[tuple]:
    """Run a query on this process's parsing connection (made on first use)."""
    with _parser_lock:
        if not _parser:
            _parser.append(offline_connection())
        return _parser[0].execute(sql, params).fetchall()


def _statements(sql: str) -> list[dict]:
    """DuckDB's parse of ``sql`` (``json_serialize_sql``): its statements, empty where it does not
    parse (or is nested too deep for the JSON reader)."""
    try:
        tree = json.loads(_parser_query("SELECT json_serialize_sql(?)", [sql])[0][0])
    except (duckdb.Error, ValueError, TypeError, RecursionError):
        return []
    statements = tree.get("statements") if isinstance(tree, dict) and not tree.get("error") else None
    return statements if isinstance(statements, list) else []


@lru_cache(maxsize=None)
def _stability(function: str) -> frozenset[str]:
    """The stabilities DuckDB declares for the overloads of ``function`` (empty: no such function)."""
    return frozenset(row[0] for row in _parser_query(
        "SELECT DISTINCT stability FROM duckdb_functions() WHERE function_name = ?", [function]))


@lru_cache(maxsize=None)
def _parses(sql: str) -> bool:
    """Whether DuckDB parses ``sql`` as one statement."""
    return len(_statements(sql)) == 1


@lru_cache(maxsize=None)
def _plain_count_where(sql: str, dataset: str) -> bool:
    """Whether DuckDB parses ``sql`` as ``SELECT count(*) FROM <dataset> WHERE ...`` and nothing more."""
    statements = _statements(sql)
    if len(statements) != 1:
        return False
    node = statements[0].get("node") or {}
    select = node.get("select_list") or []
    source = node.get("from_table") or {}
    return (node.get("type") == "SELECT_NODE" and not node.get("modifiers")
            and not (node.get("cte_map") or {}).get("map")
            and len(select) == 1 and select[0].get("class") == "FUNCTION" and select[0].get("function_name") == "count_star"
            and not select[0].get("filter") and not select[0].get("distinct") and not select[0].get("arguments")
            and not (select[0].get("order_bys") or {}).get("orders")
            and source.get("type") == "BASE_TABLE" and source.get("table_name") == dataset
            and not source.get("alias") and not source.get("schema_name") and not source.get("catalog_name")
            and not source.get("sample")
            and node.get("where_clause") is not None
            and not node.get("group_expressions") and not node.get("group_sets")
            and node.get("having") is None and node.get("qualify") is None and node.get("sample") is None
            and node.get("aggregate_handling", "STANDARD_HANDLING") == "STANDARD_HANDLING")   # not GROUP BY ALL


# What a rule may use to be answered from a view holding only some of its dataset's columns
# (:func:`reads_only_columns`): aggregates whose value does not depend on the rows' order, the pure
# functions of row-local rules, and the arithmetic operators. ``first``, ``list``, ``string_agg``,
# ``any_value``, ``arg_min``... are refused: their value is the order the rows come in.
ORDER_FREE_AGGREGATES = frozenset({"count_star", "count", "min", "max"})
_ROW = frozenset({"row"})                  # (a, b): a row value, as in count(DISTINCT (a, b))
_NARROW_EXPRESSIONS = frozenset({"COLUMN_REF", "CONSTANT", "FUNCTION", "COMPARISON", "CONJUNCTION", "OPERATOR",
                                 "CASE", "CAST", "BETWEEN"})
_NARROW_TABLE_REFS = frozenset({"BASE_TABLE", "SUBQUERY", "JOIN", "EMPTY"})
_NARROW_NODES = frozenset({"SELECT_NODE", "SET_OPERATION_NODE"})
READER_COLUMNS = frozenset({"filename", "file_row_number", "file_index", "rowid"})


def reads_only_columns(rule: Rule, dataset: str, columns: frozenset[str], tables: frozenset[str]) -> bool:
    """Whether ``rule`` (of any dataset) reads ``dataset`` and has the same value over a view of
    ``dataset`` holding only ``columns`` (its rows in any order) as over the whole dataset, the other
    views (``tables``) being the same. Conservative, from DuckDB's own parse (``json_serialize_sql``):
    - one SELECT (set operations allowed) whose tables are views of ``tables`` (no schema, catalog,
      sample, table function, VALUES list or time travel), joined plainly (no NATURAL, POSITIONAL or
      ASOF join, which pair rows by their names or their order), or subqueries and CTEs of those;
    - no ``*`` / ``COLUMNS(*)``, window, expression subquery, parameter or lambda; no ORDER BY,
      LIMIT, DISTINCT ON or sample anywhere (which rows survive could depend on the order);
    - every function an order-free aggregate (``ORDER_FREE_AGGREGATES``), a ``PURE_FUNCTIONS`` one
      with only ``CONSISTENT`` overloads, or an arithmetic operator; no cast to a time zone type;
    - no name in it (column reference or USING column) is one of ``dataset``'s columns outside
      ``columns``, wherever it would bind: with those columns gone it could bind elsewhere (to an
      outer query, a select alias, another view's column) instead of failing;
    - every name is a column of a view's contract, a view, or an alias the query defines; none is a
      reader's column (``READER_COLUMNS``).
    The caller still runs the rule over the narrow view and falls back to the whole one if it fails
    to bind there.
    """
    try:
        contracts = {table: load_contract(table) for table in tables}
    except (FileNotFoundError, ValueError):
        return False
    if dataset not in contracts:
        return False
    try:        # the files' own columns, beside the contract's
        every = {name.lower() for name in get_schema(dataset).names}
    except KeyError:
        every = set()
    every |= {name.lower() for name in contracts[dataset].columns}
    narrow = frozenset(c.lower() for c in columns)
    known = set(narrow) | {t.lower() for t in tables}
    for table, contract in contracts.items():
        if table != dataset:
            known |= {name.lower() for name in contract.columns}
    return _narrow_safe(rule.sql(), dataset, frozenset(every - narrow), frozenset(known))


@lru_cache(maxsize=None)
def _narrow_safe(sql: str, dataset: str, hidden: frozenset[str], known: frozenset[str]) -> bool:
    statements = _statements(sql)
    if len(statements) != 1 or not isinstance(statements[0].get("node"), dict):
        return False
    if not _one_row(statements[0]["node"]):
        return False
    names: set[str] = set()         # every name the query refers to
    defined: set[str] = set()       # aliases and CTE names it defines
    last_parts: set[str] = set()    # what each column reference names last: a column, or a whole row
    relations: set[str] = set()     # the names a row of a table, subquery or CTE goes by
    functions: set[str] = set()
    reads = False
    stack: list = [statements[0]["node"]]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
            continue
        if not isinstance(node, dict):
            continue
        kind = node.get("class")
        if kind is not None:                                # an expression
            if kind not in _NARROW_EXPRESSIONS:
                return False
            if node.get("alias"):
                defined.add(str(node["alias"]).lower())
            if kind == "COLUMN_REF":
                parts = [str(n).lower() for n in node.get("column_names") or []]
                names.update(parts)
                last_parts.update(parts[-1:])
            elif kind == "FUNCTION":
                if node.get("export_state") or (node.get("order_bys") or {}).get("orders"):
                    return False
                functions.add(str(node.get("function_name")))
            elif kind == "CAST":
                target = json.dumps([node.get("type_expr"), node.get("cast_type")]).upper()
                if any(t in target for t in _TIME_ZONE_TYPES):
                    return False
        elif "type" in node:                                # a query node, a table, a modifier
            kind = node["type"]
            if kind in ("ORDER_MODIFIER", "DISTINCT_MODIFIER"):
                if node.get("orders") or node.get("distinct_on_targets"):
                    return False                            # ORDER BY; DISTINCT ON
            elif kind in _NARROW_NODES:
                if node.get("sample") is not None:
                    return False
                for entry in (node.get("cte_map") or {}).get("map") or []:
                    defined.add(str(entry.get("key")).lower())
                    relations.add(str(entry.get("key")).lower())
                    defined.update(str(a).lower() for a in (entry.get("value") or {}).get("aliases") or [])
            elif kind in _NARROW_TABLE_REFS:
                if node.get("sample") is not None:
                    return False
                if node.get("alias"):
                    defined.add(str(node["alias"]).lower())
                    relations.add(str(node["alias"]).lower())
                defined.update(str(a).lower() for a in node.get("column_name_alias") or [])
                if kind == "BASE_TABLE":
                    table = str(node.get("table_name")).lower()
                    relations.add(table)
                    if node.get("schema_name") or node.get("catalog_name") or node.get("at_clause") is not None:
                        return False
                    names.add(table)
                    reads |= table == dataset.lower()
                elif kind == "JOIN":
                    if node.get("ref_type") not in ("REGULAR", "CROSS"):
                        return False
                    names.update(str(n).lower() for n in node.get("using_columns") or [])
            else:                                           # LIMIT, a table function, VALUES, PIVOT...
                return False
        stack.extend(node.values())
    if not reads or names & hidden or (names | defined) & READER_COLUMNS:
        return False
    if last_parts & relations:
        return False    # a whole row (``concat(shard_samples)``, ``count(DISTINCT s)``): the narrow view's has 3 columns
    if names - known - defined:
        return False
    if functions - _ARITHMETIC - PURE_FUNCTIONS - ORDER_FREE_AGGREGATES - _ROW:
        return False
    return all(_stability(name) == {"CONSISTENT"} for name in functions - _ARITHMETIC)


def _one_row(node: dict) -> bool:
    """Whether a query's rows are one aggregate row, or rows that are all alike: the rule's value is
    its first row, so several different rows would make it the order's. A plain SELECT without GROUP
    BY whose select list reads columns only inside aggregates."""
    if (node.get("type") != "SELECT_NODE" or node.get("group_expressions") or node.get("group_sets")
            or node.get("aggregate_handling", "STANDARD_HANDLING") != "STANDARD_HANDLING"):
        return False
    stack: list = list(node.get("select_list") or [])
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            if item.get("class") == "FUNCTION" and item.get("function_name") in ORDER_FREE_AGGREGATES:
                continue
            if item.get("class") == "COLUMN_REF":
                return False
            stack.extend(item.values())
    return True
