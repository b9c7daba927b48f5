-- Columns and types of the app's tables as the server sees them (the export checks them first).
-- Inputs: the catalog (pg_attribute of the tables visible on the search path, pg_type for domains).
-- Output: table_name, column_name, data_type (format_type, e.g. 'timestamp without time zone'), is_enum
-- (the type is an ENUM: the export reads its label as text), one row per column. A column whose type is a
-- domain (CREATE DOMAIN email_t AS text CHECK (...)) reads as its base type, looked up through domains
-- over domains: the export reads the value, never the domain.
-- Parameters: $tables (array of table names).
WITH RECURSIVE cols(table_name, column_name, attnum, type_oid, depth) AS (
    SELECT c.relname::text, a.attname::text, a.attnum, a.atttypid, 0
    FROM pg_attribute a
    JOIN pg_class c ON c.oid = a.attrelid
    WHERE c.oid = ANY (SELECT to_regclass(t)::oid FROM unnest($tables::text[]) AS t)
      AND a.attnum > 0 AND NOT a.attisdropped
    UNION ALL
    SELECT cols.table_name, cols.column_name, cols.attnum, t.typbasetype, cols.depth + 1
    FROM cols JOIN pg_type t ON t.oid = cols.type_oid
    WHERE t.typtype = 'd' AND cols.depth < 64
)
SELECT cols.table_name, cols.column_name, format_type(cols.type_oid, NULL) AS data_type, t.typtype = 'e' AS is_enum
FROM cols JOIN pg_type t ON t.oid = cols.type_oid
WHERE t.typtype <> 'd'
ORDER BY 1, cols.attnum
