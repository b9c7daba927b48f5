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
