"""Reading a published version: read-only DuckDB SQL (``engine``) and exports to other formats (``export``)."""
