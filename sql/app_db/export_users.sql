-- Accounts for one day's users export, in the raw line's column order (formats.rawlines.user_line).
-- Inputs: table users. Output: user_id, created_at as 'YYYY-MM-DD HH24:MI:SS.US' text, email, name,
-- for accounts created in [$start, $end) ($start = '0001-01-01' for the snapshot of all dated accounts
-- up to the day's end: BC and -infinity ones are undated_rows.sql's, never written), ordered by
-- user_id, then every column (stable even without a primary key).
-- Text is cut to $max_chars characters (the ingest's max_line_bytes + 1: a longer value makes a line the
-- ingest quarantines as line_too_long, and its whole size would only cost the export memory).
-- Parameters: $start, $end (timestamp text, UTC), $max_chars.
SELECT user_id::int8, to_char(created_at, 'YYYY-MM-DD HH24:MI:SS.US'), left(email::text, $max_chars),
       left(name::text, $max_chars)
FROM users
WHERE created_at >= $start AND created_at < $end
ORDER BY 1, 2, 3, 4
