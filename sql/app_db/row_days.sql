-- Where rows stand now, by primary key: dated to a day ('YYYY-MM-DD', UTC) or undated (NULL); an id no row holds
-- returns nothing. Read by the export (pipelines/appdb/export.py) for: the rows once reported undated
-- (export.REMEMBER_UNDATED ids a table at most, kept in HOME/cache/app_export_undated.json): dated since, the
-- export re-exports that day (review rev29c: a row dated as the undated warning asks, on a day past the lookback
-- window, reached no raw day); the rows a day's raw file holds that its re-export did not read (held_ids, review
-- rev29d): a row the app still holds (moved to another day, undated, or left out by app_export.users_snapshot) is
-- not kept in the day, and the late-row check marks a day holding such a row for re-export.
-- Inputs: tables users, images, rankings, downloads. Output: table_name, id (int8), day (NULL: undated), in id
-- order (review rev29h: export.held_ids reads them one at a time into int64 arrays, never a set of Python ints).
-- Parameters: $users, $images, $rankings, $downloads (int8[]: the ids; a primary-key lookup each).
SELECT 'users' AS table_name, user_id::int8 AS id,
       CASE WHEN created_at >= '0001-01-01' AND created_at < '10000-01-01'
            THEN to_char(created_at, 'YYYY-MM-DD') END AS day
FROM users WHERE user_id = ANY($users::int8[])
UNION ALL
SELECT 'images', image_id::int8,
       CASE WHEN created_at >= '0001-01-01' AND created_at < '10000-01-01' THEN to_char(created_at, 'YYYY-MM-DD') END
FROM images WHERE image_id = ANY($images::int8[])
UNION ALL
SELECT 'rankings', ranking_id::int8,
       CASE WHEN created_at >= '0001-01-01' AND created_at < '10000-01-01' THEN to_char(created_at, 'YYYY-MM-DD') END
FROM rankings WHERE ranking_id = ANY($rankings::int8[])
UNION ALL
SELECT 'downloads', download_id::int8,
       CASE WHEN created_at >= '0001-01-01' AND created_at < '10000-01-01' THEN to_char(created_at, 'YYYY-MM-DD') END
FROM downloads WHERE download_id = ANY($downloads::int8[])
ORDER BY 2, 1
