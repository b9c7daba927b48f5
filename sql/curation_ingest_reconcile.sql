-- Inputs: rankings, images (every partition curation reads), ingest_files (every day's ingest record).
-- Output: one row per (table, dt) whose rows curation reads differ from what that day's ingest accepted
--         (sum of ingest_files.accepted): rows (in the partitions now, by their dt column), accepted (null: the
--         day has no ingest record for the table). Empty when every partition still holds what its ingest wrote.
-- Parameters: none.
WITH parts AS (
    SELECT 'rankings' AS "table", dt, count(*) AS rows FROM rankings GROUP BY dt
    UNION ALL
    SELECT 'images', dt, count(*) FROM images GROUP BY dt
),
recorded AS (
    SELECT "table", dt, sum(accepted) AS accepted
    FROM ingest_files WHERE "table" IN ('rankings', 'images') GROUP BY "table", dt
)
SELECT "table", strftime(dt, '%Y-%m-%d') AS dt, coalesce(p.rows, 0)::BIGINT AS rows, r.accepted::BIGINT AS accepted
FROM parts p FULL JOIN recorded r USING ("table", dt)
WHERE r.accepted IS NULL OR coalesce(p.rows, 0) <> r.accepted
ORDER BY dt, "table"
