"""Turn stage reports into Dagster metadata: column schemas, markdown tables, embedded pictures."""
from __future__ import annotations

import base64
from pathlib import Path
from typing import Any, Mapping

import dagster as dg
import pyarrow as pa

from schemas import get_schema


def column_schema(dataset: str, descriptions: Mapping[str, str] | None = None) -> dg.TableSchema:
    """Dagster column schema from the dataset's pyarrow schema."""
    descriptions = descriptions or {}
    schema: pa.Schema = get_schema(dataset)
    return dg.TableSchema(columns=[
        dg.TableColumn(name=f.name, type=str(f.type), description=descriptions.get(f.name),
                       constraints=dg.TableColumnConstraints(nullable=f.nullable))
        for f in schema
    ])


def spec_metadata(dataset: str) -> dict[str, Any]:
    """Definition-time metadata for a dataset's asset spec (the column schema)."""
    from data_contracts.engine import load_contract

    try:
        contract = load_contract(dataset)
        descriptions = {name: col.get("description", "") for name, col in contract.columns.items()}
    except FileNotFoundError:
        descriptions = {}
    return {"dagster/column_schema": column_schema(dataset, descriptions)}


def png_markdown(path: Path, title: str) -> dg.MetadataValue:
    """A PNG embedded in markdown so the UI shows the picture."""
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return dg.MetadataValue.md(f"**{title}**\n\n![{title}](data:image/png;base64,{data})")


def to_metadata(values: Mapping[str, Any]) -> dict[str, Any]:
    """Convert a report's ``metadata()`` dict: markdown strings, PNG paths, plain values."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Path) or (isinstance(value, str) and value.endswith(".png") and Path(value).is_file()):
            out[key] = png_markdown(Path(value), key)
        elif isinstance(value, str) and ("\n" in value or value.startswith("|")):
            out[key] = dg.MetadataValue.md(value)
        elif isinstance(value, (dict, list)):
            out[key] = dg.MetadataValue.json(value)
        elif value is None:
            out[key] = dg.MetadataValue.text("")
        else:
            out[key] = value
    return out


def report_metadata(report: Any, dataset: str | None = None, output: Path | None = None) -> dict[str, Any]:
    """Metadata for one asset from a stage report (per-dataset when the report offers it).

    With ``output`` (the Parquet file the asset wrote) the row count comes from the file itself.
    """
    if dataset is not None and hasattr(report, "asset_metadata"):
        values = dict(report.asset_metadata(dataset))
    else:
        values = dict(report.metadata())
    if output is not None and Path(output).is_file():
        import pyarrow.parquet as pq

        values["dagster/row_count"] = pq.ParquetFile(output).metadata.num_rows
        values["path"] = str(output)
    return to_metadata(values)
