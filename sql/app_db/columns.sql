-- Columns and types of the app's tables as the server sees them (the export checks them first).
-- Inputs: the catalog (pg_attribute of the tables visible on the search path). Output: table_name,
-- column_name, data_type (format_type, e.g. 'timestamp without time zone'), one row per column.
-- Parameters: $tables (array of table names).
SELECT c.relname::text AS table_name, a.attname::text AS column_name, format_type(a.atttypid, NULL) AS data_type
FROM pg_attribute a
JOIN pg_class c ON c.oid = a.attrelid
WHERE c.oid = ANY (SELECT to_regclass(t)::oid FROM unnest($tables::text[]) AS t)
  AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY 1, a.attnum
