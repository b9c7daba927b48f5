-- Rows no day's export can hold: created_at NULL, infinite, or outside years 1..9999 (see export_days.sql).
-- Inputs: tables users, images, rankings, downloads. Output: one row per table (table_name, rows,
-- first_ids: up to $keep primary keys as text, smallest first, a NULL key as 'NULL': a table without its
-- primary key may hold one). Parameters: $keep (int: how many keys to return; export.REMEMBER_UNDATED).
-- The keys are a top-N sort of the undated rows (read through the created_at index, a BitmapOr; OFFSET 0
-- keeps the ORDER BY ... LIMIT from being planned as a walk of the primary key filtering every row), so
-- the server holds $keep keys, not every undated one (before review rev29c, array_agg of them all).
SELECT 'users' AS table_name,
       (SELECT count(*) FROM users
        WHERE created_at IS NULL OR NOT (created_at >= '0001-01-01' AND created_at < '10000-01-01')) AS rows,
       ARRAY(SELECT coalesce(k::text, 'NULL') FROM (
                 SELECT user_id AS k FROM users
                 WHERE created_at IS NULL OR NOT (created_at >= '0001-01-01' AND created_at < '10000-01-01')
                 OFFSET 0) AS u ORDER BY k LIMIT $keep) AS first_ids
UNION ALL
SELECT 'images',
       (SELECT count(*) FROM images
        WHERE created_at IS NULL OR NOT (created_at >= '0001-01-01' AND created_at < '10000-01-01')),
       ARRAY(SELECT coalesce(k::text, 'NULL') FROM (
                 SELECT image_id AS k FROM images
                 WHERE created_at IS NULL OR NOT (created_at >= '0001-01-01' AND created_at < '10000-01-01')
                 OFFSET 0) AS u ORDER BY k LIMIT $keep)
UNION ALL
SELECT 'rankings',
       (SELECT count(*) FROM rankings
        WHERE created_at IS NULL OR NOT (created_at >= '0001-01-01' AND created_at < '10000-01-01')),
       ARRAY(SELECT coalesce(k::text, 'NULL') FROM (
                 SELECT ranking_id AS k FROM rankings
                 WHERE created_at IS NULL OR NOT (created_at >= '0001-01-01' AND created_at < '10000-01-01')
                 OFFSET 0) AS u ORDER BY k LIMIT $keep)
UNION ALL
SELECT 'downloads',
       (SELECT count(*) FROM downloads
        WHERE created_at IS NULL OR NOT (created_at >= '0001-01-01' AND created_at < '10000-01-01')),
       ARRAY(SELECT coalesce(k::text, 'NULL') FROM (
                 SELECT download_id AS k FROM downloads
                 WHERE created_at IS NULL OR NOT (created_at >= '0001-01-01' AND created_at < '10000-01-01')
                 OFFSET 0) AS u ORDER BY k LIMIT $keep)
