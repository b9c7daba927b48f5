-- Rows, largest id and a digest of the ids per table and day, for comparing days exported earlier with the
-- database (rows committed after their day's last export: export.late_rows).
-- Inputs: tables users, images, rankings, downloads. Output: table_name, day ('YYYY-MM-DD', UTC), rows,
-- max_id (int8, NULL when every id is NULL), digest (numeric: the sum of hashint8extended(id, 0) over the
-- non-NULL ids, which export.id_digest computes alike from a raw file; the export takes it modulo 2^64, so
-- it is order-independent and additive: one more, one fewer or one other id changes it) for rows created
-- in [$start, $end), one row per table and day with rows; and one row ('users', NULL day) counting the dated
-- accounts created before $start (the users file of a day is a snapshot of every account up to its end).
-- hashint8extended is a C function of a few shifts (PostgreSQL 11+, the hash of hash partitioning, stable
-- across versions and platforms); sum() of int8 accumulates in 128 bits: the rows this query reads anyway
-- cost no more than a count.
-- Review rev35a: content (numeric, taken modulo 2^64 alike) sums hashtextextended(row text, 0) of each row's
-- exported columns, cast as the export_*.sql files cast them (the session's settings are pinned: connection.py),
-- so an edit of a row (a choice changed, a prompt cleaned, an email corrected) changes it while rows, max_id and
-- digest stay: the export records it for the day it wrote (export.record_content) and the late-row check compares.
-- Parameters: $start, $end (timestamp text, UTC).
SELECT 'users' AS table_name, to_char(created_at, 'YYYY-MM-DD') AS day, count(*) AS rows, max(user_id)::int8 AS max_id,
       sum(hashint8extended(user_id::int8, 0)) AS digest,
       sum(hashtextextended((ROW(user_id::int8, to_char(created_at, 'YYYY-MM-DD HH24:MI:SS.US'), email::text, name::text)::text) COLLATE "C", 0)) AS content
FROM users WHERE created_at >= $start AND created_at < $end GROUP BY 2
UNION ALL
SELECT 'images', to_char(created_at, 'YYYY-MM-DD'), count(*), max(image_id)::int8,
       sum(hashint8extended(image_id::int8, 0)),
       sum(hashtextextended((ROW(image_id::int8, to_char(created_at, 'YYYY-MM-DD HH24:MI:SS.US'), image_uid::text, user_id::int8, prompt::text,
                 negative_prompt::text, seed::int8, gs::text, steps::int8, idx::int8, num_generated::int8,
                 scheduler_cls::text, model_id::text)::text) COLLATE "C", 0))
FROM images WHERE created_at >= $start AND created_at < $end GROUP BY 2
UNION ALL
SELECT 'rankings', to_char(created_at, 'YYYY-MM-DD'), count(*), max(ranking_id)::int8,
       sum(hashint8extended(ranking_id::int8, 0)),
       sum(hashtextextended((ROW(ranking_id::int8, to_char(created_at, 'YYYY-MM-DD HH24:MI:SS.US'), user_id::int8, image_0_uid::text,
                 image_1_uid::text, image_2_uid::text, image_3_uid::text, best_image_uid::text, prompt::text)::text) COLLATE "C", 0))
FROM rankings WHERE created_at >= $start AND created_at < $end GROUP BY 2
UNION ALL
SELECT 'downloads', to_char(created_at, 'YYYY-MM-DD'), count(*), max(download_id)::int8,
       sum(hashint8extended(download_id::int8, 0)),
       sum(hashtextextended((ROW(download_id::int8, to_char(created_at, 'YYYY-MM-DD HH24:MI:SS.US'), user_id::int8, image_uid::text,
                 prompt::text)::text) COLLATE "C", 0))
FROM downloads WHERE created_at >= $start AND created_at < $end GROUP BY 2
UNION ALL
SELECT 'users', NULL, count(*), max(user_id)::int8,
       sum(hashint8extended(user_id::int8, 0)),
       sum(hashtextextended((ROW(user_id::int8, to_char(created_at, 'YYYY-MM-DD HH24:MI:SS.US'), email::text, name::text)::text) COLLATE "C", 0))
FROM users WHERE created_at >= '0001-01-01' AND created_at < $start
