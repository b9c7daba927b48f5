-- Every day holding app activity, for choosing which days to export: the days of the four tables'
-- created_at values in years 1..9999 (a date text can name them), found by skipping from one day to
-- the next through each table's created_at index (one probe a table per day, however many rows).
-- Inputs: tables users, images, rankings, downloads. Output: one row per day, day as 'YYYY-MM-DD'
-- text, in order; none when no table has a dated row. Parameters: none. Rows with a NULL, infinite
-- or out-of-range created_at belong to no day: undated_rows.sql counts them.
WITH RECURSIVE days(day) AS (
    SELECT date_trunc('day', min(first_at)) FROM (
        SELECT min(created_at) AS first_at FROM users
        WHERE created_at >= '0001-01-01' AND created_at < '10000-01-01'
        UNION ALL SELECT min(created_at) FROM images
        WHERE created_at >= '0001-01-01' AND created_at < '10000-01-01'
        UNION ALL SELECT min(created_at) FROM rankings
        WHERE created_at >= '0001-01-01' AND created_at < '10000-01-01'
        UNION ALL SELECT min(created_at) FROM downloads
        WHERE created_at >= '0001-01-01' AND created_at < '10000-01-01'
    ) firsts
    UNION ALL
    SELECT (
        SELECT date_trunc('day', min(next_at)) FROM (
            SELECT min(created_at) AS next_at FROM users
            WHERE created_at >= days.day + interval '1 day' AND created_at < '10000-01-01'
            UNION ALL SELECT min(created_at) FROM images
            WHERE created_at >= days.day + interval '1 day' AND created_at < '10000-01-01'
            UNION ALL SELECT min(created_at) FROM rankings
            WHERE created_at >= days.day + interval '1 day' AND created_at < '10000-01-01'
            UNION ALL SELECT min(created_at) FROM downloads
            WHERE created_at >= days.day + interval '1 day' AND created_at < '10000-01-01'
        ) nexts
    )
    FROM days
    WHERE days.day IS NOT NULL
)
SELECT to_char(day, 'YYYY-MM-DD') AS day FROM days WHERE day IS NOT NULL ORDER BY day
