-- Rows no day's export can hold: created_at NULL, infinite, or outside years 1..9999 (see export_days.sql).
-- Inputs: tables users, images, rankings, downloads. Output: one row per table (table_name, rows,
-- first_ids: up to 10 primary keys as text, smallest first, a NULL key as 'NULL': a table without its primary
-- key may hold one). Parameters: none.
SELECT 'users' AS table_name, count(*) AS rows,
       (array_agg(coalesce(user_id::text, 'NULL') ORDER BY user_id))[1:10] AS first_ids
FROM users WHERE created_at IS NULL OR NOT (created_at >= '0001-01-01' AND created_at < '10000-01-01')
UNION ALL
SELECT 'images', count(*), (array_agg(coalesce(image_id::text, 'NULL') ORDER BY image_id))[1:10]
FROM images WHERE created_at IS NULL OR NOT (created_at >= '0001-01-01' AND created_at < '10000-01-01')
UNION ALL
SELECT 'rankings', count(*), (array_agg(coalesce(ranking_id::text, 'NULL') ORDER BY ranking_id))[1:10]
FROM rankings WHERE created_at IS NULL OR NOT (created_at >= '0001-01-01' AND created_at < '10000-01-01')
UNION ALL
SELECT 'downloads', count(*), (array_agg(coalesce(download_id::text, 'NULL') ORDER BY download_id))[1:10]
FROM downloads WHERE created_at IS NULL OR NOT (created_at >= '0001-01-01' AND created_at < '10000-01-01')
