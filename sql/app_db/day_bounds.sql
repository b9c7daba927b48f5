-- First and last day holding any app activity, for choosing which days to export.
-- Inputs: tables users, images, rankings, downloads. Output: one row (first_day, last_day) as
-- 'YYYY-MM-DD' text, nulls when every table is empty. Parameters: none.
WITH bounds AS (
    SELECT min(created_at) AS lo, max(created_at) AS hi FROM users
    UNION ALL SELECT min(created_at), max(created_at) FROM images
    UNION ALL SELECT min(created_at), max(created_at) FROM rankings
    UNION ALL SELECT min(created_at), max(created_at) FROM downloads
)
SELECT to_char(min(lo), 'YYYY-MM-DD') AS first_day, to_char(max(hi), 'YYYY-MM-DD') AS last_day FROM bounds
