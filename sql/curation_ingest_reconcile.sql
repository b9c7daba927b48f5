-- Inputs: rankings, images (every partition curation reads), ingest_files (every day's ingest record).
-- Output: one row per (table, dt) whose rows curation reads differ from what that day's ingest accepted
--         (sum of ingest_files.accepted): rows (in the partitions now, by their dt column), accepted (null: the
--         day has no ingest record for the table), repeated (rows whose key, ranking_id / image_uid, another row of
--         the day holds, or that have none). The ingest writes one row per key and day (a repeat is quarantined as
--         duplicate_row or conflicting_primary_key), so a repeat is a changed partition even when the count holds
--         (review rev32g: a ranking lost and another repeated kept the accepted count). Empty when every partition
--         still holds what its ingest wrote.
-- Parameters: none.
WITH parts AS (
    SELECT 'rankings' AS "table", dt, count(*) AS rows, count(*) - count(DISTINCT ranking_id) AS repeated
    FROM rankings GROUP BY dt
    UNION ALL
    SELECT 'images', dt, count(*), count(*) - count(DISTINCT image_uid) FROM images GROUP BY dt
),
recorded AS (
    SELECT "table", dt, sum(accepted) AS accepted
    FROM ingest_files WHERE "table" IN ('rankings', 'images') GROUP BY "table", dt
)
SELECT "table", strftime(dt, '%Y-%m-%d') AS dt, coalesce(p.rows, 0)::BIGINT AS rows, r.accepted::BIGINT AS accepted,
       coalesce(p.repeated, 0)::BIGINT AS repeated
FROM parts p FULL JOIN recorded r USING ("table", dt)
WHERE r.accepted IS NULL OR coalesce(p.rows, 0) <> r.accepted OR coalesce(p.repeated, 0) > 0
ORDER BY dt, "table"
