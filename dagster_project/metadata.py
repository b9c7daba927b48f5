"""Turn stage reports into Dagster metadata: column schemas, markdown tables, embedded pictures."""
from __future__ import annotations

import base64
import math
import re
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


def display_float(value: float, digits: int = 4) -> float:
    """``value`` rounded for display: ``digits`` significant digits, at least one decimal (1031.9, 0.8, 0.0001235).

    Only what the UI shows is rounded; files (metrics.json, eval.json, Parquet) keep full precision.
    """
    if not math.isfinite(value) or value == 0:
        return value
    return round(value, max(1, digits - 1 - math.floor(math.log10(abs(value)))))


def rounded(value: Any) -> Any:
    """``value`` with every float inside (dicts and lists too) rounded by ``display_float``."""
    if isinstance(value, float):
        return display_float(value)
    if isinstance(value, dict):
        return {key: rounded(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [rounded(item) for item in value]
    return value


# A float literal with 5+ decimals in markdown text (e.g. a table cell printed with str(float)).
_LONG_FLOAT = re.compile(r"(?<![\w.])-?\d+\.\d{5,}(?![\w.])")


def rounded_markdown(text: str) -> str:
    """Markdown with long float literals rounded by ``display_float`` (everything else untouched)."""
    return _LONG_FLOAT.sub(lambda m: repr(display_float(float(m.group()))), text)


def to_metadata(values: Mapping[str, Any]) -> dict[str, Any]:
    """Convert a report's ``metadata()`` dict: markdown strings, PNG paths, plain values (floats rounded for display)."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Path) or (isinstance(value, str) and value.endswith(".png") and Path(value).is_file()):
            out[key] = png_markdown(Path(value), key)
        elif isinstance(value, str) and ("\n" in value or value.startswith("|")):
            out[key] = dg.MetadataValue.md(rounded_markdown(value))
        elif isinstance(value, (dict, list)):
            out[key] = dg.MetadataValue.json(rounded(value))
        elif value is None:
            out[key] = dg.MetadataValue.text("")
        else:
            out[key] = rounded(value)
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
