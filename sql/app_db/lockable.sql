-- Which app relations the export can lock (ACCESS SHARE, as pg_dump does) before it takes its snapshot.
-- Inputs: the catalog (pg_class of $schema.<table> for each of $tables). Output: table_name, relkind
-- ('r' table, 'p' partitioned table, 'v' view, 'm' materialized view, 'f' foreign table, ...), may_lock
-- (whether LOCK TABLE ... IN ACCESS SHARE MODE is allowed: a table or view on which the role holds
-- table-level SELECT, UPDATE, DELETE or TRUNCATE, or owns it; a role granted SELECT on some columns
-- only may read them but not lock the table). One row per table that exists; a missing table has none
-- (check_tables names it). Parameters: $schema (text), $tables (array of table names).
SELECT t AS table_name, c.relkind::text AS relkind,
       c.relkind IN ('r', 'p', 'v')
       AND has_table_privilege(c.oid, 'SELECT, UPDATE, DELETE, TRUNCATE') AS may_lock
FROM unnest($tables::text[]) AS t
JOIN pg_class c ON c.oid = to_regclass(format('%I.%I', $schema::text, t))
ORDER BY array_position($tables::text[], t)
