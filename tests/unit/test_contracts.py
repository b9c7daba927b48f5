"""Every contract is valid ODCS v3 and its columns equal its pyarrow schema exactly."""
from importlib import resources

import pytest
import yaml

from data_contracts.engine import contract_names, evaluate, load_contract
from pipelines.sqlrun import connect
from schemas import SCHEMAS, get_schema

CONTRACTS = contract_names()


def test_every_schema_has_a_contract():
    missing = sorted(set(SCHEMAS) - set(CONTRACTS))
    assert not missing, f"datasets without a contract: {missing}"


@pytest.mark.parametrize("dataset", CONTRACTS)
def test_contract_is_valid_odcs_v3(dataset):
    contract = load_contract(dataset)
    model = contract.model
    assert model.apiVersion.startswith("v3."), model.apiVersion
    assert model.kind == "DataContract"
    assert model.id and model.version and model.status
    assert contract.description, f"{dataset}: contract needs a description"
    for name, column in contract.columns.items():
        assert column.get("description"), f"{dataset}.{name}: every column needs a meaning"


@pytest.mark.parametrize("dataset", CONTRACTS)
def test_contract_columns_match_pyarrow_schema(dataset):
    contract = load_contract(dataset)
    schema = get_schema(dataset)
    assert list(contract.columns) == schema.names
    for field in schema:
        column = contract.columns[field.name]
        assert column.get("physicalType") == str(field.type), (dataset, field.name)
        assert bool(column.get("required", False)) == (not field.nullable), (dataset, field.name)


@pytest.mark.parametrize("dataset", CONTRACTS)
def test_contract_rules_run_on_an_empty_table(dataset):
    """Every rule's SQL parses and runs against empty views of every dataset."""
    views = {name: schema.empty_table() for name, schema in SCHEMAS.items()}
    con = connect(views)
    for result in evaluate(load_contract(dataset), con):
        assert result.error is None, f"{dataset}.{result.rule.name}: {result.error}"


def test_contract_files_ship_as_package_data():
    names = [p.name for p in resources.files("data_contracts").iterdir()]
    assert any(n.endswith(".yaml") for n in names)
    for name in names:
        if name.endswith(".yaml"):
            yaml.safe_load(resources.files("data_contracts").joinpath(name).read_text())


# --- rules answered together (engine.evaluate fuses the row-count rules of a contract) ---------------

def _pool_array(field, rows: int, rng):
    """``rows`` values of ``field``'s type drawn from small pools (so joins and equalities hit), with nulls."""
    import datetime as dt

    import pyarrow as pa

    t = field.type
    pools = {
        "string": ["", "a", "b", "train", "test", "validation", "test_unique", "x.y", "0" * 64, "f" * 64,
                   "pickapic-train-000000.tar", "u1", "banned", "nsfw"],
        "int": [-1, 0, 1, 2, 3, 512, 1024],
        "float": [0.0, 0.5, 1.0, -1.0, 0.25, float("nan")],
        "date": [dt.date(2023, 3, 1), dt.date(2023, 3, 2), dt.date(1970, 1, 1)],
        "timestamp": [dt.datetime(2023, 3, 1, 12), dt.datetime(2023, 3, 2), dt.datetime(1999, 1, 1)],
        "bool": [True, False],
    }
    if pa.types.is_string(t) or pa.types.is_binary(t):
        kind = "string"
    elif pa.types.is_integer(t):
        kind = "int"
    elif pa.types.is_floating(t):
        kind = "float"
    elif pa.types.is_date(t):
        kind = "date"
    elif pa.types.is_timestamp(t):
        kind = "timestamp"
    elif pa.types.is_boolean(t):
        kind = "bool"
    else:
        return pa.nulls(rows, t)
    values = [None if rng.random() < 0.15 else rng.choice(pools[kind]) for _ in range(rows)]
    if pa.types.is_unsigned_integer(t):
        values = [None if v is None else abs(v) for v in values]
    if kind == "int" and t.bit_width == 8:
        values = [None if v is None else max(-1, min(v, 100)) for v in values]
    if pa.types.is_binary(t):
        values = [None if v is None else v.encode() for v in values]
    return pa.array(values, t)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fused_rules_give_each_rules_own_value(seed):
    """On tables of pooled values (nulls, duplicates, out-of-range labels, bad splits...), every rule of
    every contract has the value its own query gives, alone, whether or not it was answered in a fused scan."""
    import random

    import duckdb
    import pyarrow as pa

    from data_contracts.engine import row_condition

    rng = random.Random(seed)
    views = {name: pa.table({f.name: _pool_array(f, 80, rng) for f in schema}) for name, schema in SCHEMAS.items()}
    con = connect(views)
    fused_rules = compared = failed = 0
    for dataset in CONTRACTS:
        contract = load_contract(dataset)
        for result in evaluate(contract, con):
            try:
                alone = con.execute(result.rule.sql()).fetchone()[0]
            except duckdb.Error as exc:     # e.g. a JSON column holding a pooled non-JSON string
                assert result.value is None and result.error == f"query failed: {exc}", (dataset, result.rule.name)
                failed += 1
            else:
                assert result.error is None, (dataset, result.rule.name, result.error)
                assert result.value == float(alone or 0), (dataset, result.rule.name, result.value, alone)
            compared += 1
            fused_rules += row_condition(result.rule) is not None
    assert fused_rules == 92 and compared == 146 and failed < 10
    nonzero = [r for d in CONTRACTS for r in evaluate(load_contract(d), con) if row_condition(r.rule) and r.value]
    assert len(nonzero) > 20        # the pooled values break many rules: the comparison is not all zeros


def _rule(query: str, dataset: str = "shard_samples", name: str = "r"):
    from data_contracts.engine import Rule

    return Rule(dataset, name, name, query, "mustBe", 0, True)


@pytest.mark.parametrize("query", [
    "SELECT count(*) FROM {object} WHERE key = 'a' GROUP BY split",
    "SELECT count(*) FROM {object} WHERE key = 'a' LIMIT 0",
    "SELECT count(*) FROM {object} WHERE key = 'a' ORDER BY 1",
    "SELECT count(*) FROM {object} WHERE key = 'a' HAVING count(*) > 1",
    "SELECT count(*) FROM {object} WHERE key = 'a' UNION ALL SELECT 1",
    "SELECT count(*) FROM {object} WHERE key = 'a' QUALIFY true",
    "SELECT count(*) FROM {object} WHERE key = 'a' USING SAMPLE 50%",
    "SELECT count(*) FROM {object} WHERE key = 'a'; SELECT 1",
    "WITH x AS (SELECT 1) SELECT count(*) FROM {object} WHERE key = 'a'",
    "SELECT count(DISTINCT key) FROM {object} WHERE key = 'a'",
    "SELECT count(*) FROM {object} AS s WHERE s.key = 'a'",
    "SELECT count(*) FROM {object}, shards WHERE key = 'a'",
    "SELECT count(*) FROM shards WHERE shard = 'a'",
    "SELECT count(*) FROM {object}",
    "SELECT count(*) FROM {object} WHERE",
    "SELECT count(*) FROM {object} WHERE key = 'a' GROUP BY ALL",
    "SELECT count(*) FROM {object} WHERE key = 'a';",
    "SELECT count(*) FROM {object} WHERE key = 'a' WINDOW w AS (ORDER BY key)",
])
def test_only_plain_row_counts_are_fused(query):
    from data_contracts.engine import row_condition

    assert row_condition(_rule(query)) is None


def test_fused_rules_keep_comments_subqueries_and_errors_to_themselves():
    """A trailing comment ends with its line; a subquery on another view works inside the filter; a rule
    whose condition fails reports its own error while the others keep their values."""
    import pyarrow as pa

    from data_contracts.engine import Contract, fused_query, row_condition

    table = pa.table({"key": ["a", "b", "b", None], "split": ["train", "test", "oops", "train"]})
    con = connect({"shard_samples": table, "shards": pa.table({"shard": ["b"]})})
    rules = (
        _rule("SELECT count(*) FROM {object} WHERE split NOT IN ('train', 'test') -- a comment", name="comment"),
        _rule("SELECT count(*)\nFROM {object}\nWHERE key IN (SELECT shard FROM shards)", name="subquery"),
        _rule("SELECT count(*) FROM {object} WHERE key IS NULL OR key IN (SELECT key FROM {object} WHERE split = 'test')",
              name="self"),
    )
    assert all(row_condition(r) for r in rules)
    assert con.execute(fused_query(list(rules))).fetchone() == (1, 2, 3)
    broken = _rule("SELECT count(*) FROM {object} WHERE no_such_column > 0", name="broken")
    contract = Contract("shard_samples", "1", "", {}, rules + (broken,), None)
    results = {r.rule.name: r for r in evaluate(contract, con)}
    assert [results[n].value for n in ("comment", "subquery", "self")] == [1.0, 2.0, 3.0]
    assert results["broken"].value is None and "no_such_column" in results["broken"].error
    assert not results["broken"].passed


def _parse_in_child(query: str) -> tuple[bool, bool, int]:
    import duckdb

    from data_contracts import engine

    fresh = not engine._parser
    return fresh, engine.row_condition(_rule(query)) is not None, duckdb.connect().execute("SELECT 1").fetchone()[0]


def test_rule_parser_is_not_shared_with_a_forked_child():
    """The engine's parsing connection is per process. A forked pool worker (the shard writers fork the
    publishing process) starts without it, parses with its own, and lives: freeing the inherited
    connection in the child killed every worker of the pool."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from data_contracts import engine

    assert engine.row_condition(_rule("SELECT count(*) FROM {object} WHERE key = 'parent'")) is not None
    parent = id(engine._parser[0])       # no reference here: the child must keep the connection alive itself
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("fork")) as pool:
        results = list(pool.map(_parse_in_child, [f"SELECT count(*) FROM {{object}} WHERE key = 'c{i}'" for i in range(4)]))
    assert any(fresh for fresh, _, _ in results)                 # each worker's first task found no parser
    assert all(ok and one == 1 for _, ok, one in results)
    assert id(engine._parser[0]) == parent


def test_a_rules_value_never_depends_on_the_rules_beside_it(tmp_path):
    """DuckDB's Parquet min/max statistics leave out NaN, so a WHERE can skip a row group holding a NaN
    its condition matches; a rule of the row-count form is therefore always counted with FILTER, alone
    or fused, and a sibling that breaks the fused query does not change it. A condition that only a
    WHERE can evaluate (a cast guarded by AND) falls back to the rule's own query."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from data_contracts.engine import Contract

    pq.write_table(pa.table({"x": [0.0, float("nan"), 1.0], "s": ["1", "b", "3"]}), tmp_path / "t.parquet")
    con = connect({"shard_samples": str(tmp_path / "t.parquet")})
    assert con.execute("SELECT count(*) FROM shard_samples WHERE isnan(x)").fetchone()[0] == 0   # DuckDB 2.0.1
    nan = _rule("SELECT count(*) FROM {object} WHERE isnan(x)", name="nan")
    guarded = _rule("SELECT count(*) FROM {object} WHERE x > 4000 AND CAST(s AS INT) < 0", name="guarded")
    plain = _rule("SELECT count(*) FROM {object} WHERE x >= 1", name="plain")      # NaN sorts above every number
    for rules in ((nan,), (nan, plain), (nan, guarded), (nan, guarded, plain)):
        values = {r.rule.name: (r.value, r.error) for r in evaluate(Contract("shard_samples", "1", "", {}, rules, None), con)}
        assert values["nan"] == (1.0, None), rules
        if "guarded" in values:
            assert values["guarded"] == (0.0, None)
        if "plain" in values:
            assert values["plain"] == (2.0, None)


def test_a_deeply_nested_condition_is_not_fused_and_breaks_nothing():
    from data_contracts.engine import row_condition, row_local

    deep = _rule("SELECT count(*) FROM {object} WHERE " + " + ".join(["sample_index"] * 600) + " < 0")
    assert row_condition(deep) is None and not row_local(deep)
    assert [r.passed for r in evaluate(load_contract("shard_samples"), connect({"shard_samples": get_schema(
        "shard_samples").empty_table()}))] == [True] * len(load_contract("shard_samples").rules)


@pytest.mark.parametrize("condition", [
    "dt < current_date - INTERVAL 400 DAY",          # parses as a column name
    "CURRENT_TIMESTAMP IS NULL",
    "localtimestamp IS NULL",
    "random() < 2",
    "now() IS NULL",
    "age(CAST(dt AS TIMESTAMP)) > INTERVAL 1 DAY",   # one argument: against the clock
    "CAST(dt AS TIMESTAMPTZ) > TIMESTAMP '2024-01-01'",
    "strftime(CAST(dt AS TIMESTAMP), '%Y') = '2024'",
    "concat_ws('|', *COLUMNS(*)) LIKE '%.parquet%'",
    "sample_index <> file_row_number",                # a reader's virtual column
    "shard_samples.key = 'a'",
    "key IN (SELECT key FROM {object} WHERE split = 'test')",
    "EXISTS (SELECT 1 FROM shards)",
    "list_filter([1, 2], v -> v > sample_index) = []",
    "getvariable('x') IS NULL",
    "current_setting('TimeZone') = 'UTC'",
    "json_serialize_plan(caption) IS NULL",          # called CONSISTENT by DuckDB, but plans against the catalog
    "CAST(dt AS TIMESTAMP_TZ) IS NULL",
])
def test_row_local_refuses_what_depends_on_more_than_the_row(condition):
    from data_contracts.engine import row_local

    assert not row_local(_rule(f"SELECT count(*) FROM {{object}} WHERE {condition}"))


def test_row_local_accepts_the_sidecar_rules():
    from data_contracts.engine import row_local

    local = [r.name for r in load_contract("shard_samples").rules if row_local(r)]
    assert local == [r.name for r in load_contract("shard_samples").rules if r.name != "key_unique"]
