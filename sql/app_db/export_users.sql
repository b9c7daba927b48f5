-- Accounts for one day's users export, in the raw line's column order (formats.rawlines.user_line).
-- Inputs: table users. Output: user_id, created_at as 'YYYY-MM-DD HH24:MI:SS.US' text, email, name,
-- for accounts created in [$start, $end) ($start = '0001-01-01' for the snapshot of all dated accounts
-- up to the day's end: BC and -infinity ones are undated_rows.sql's, never written), ordered by user_id, then every column (stable even without a primary key).
-- Parameters: $start, $end (timestamp text, UTC).
SELECT user_id::int8, to_char(created_at, 'YYYY-MM-DD HH24:MI:SS.US'), email::text, name::text
FROM users
WHERE created_at >= $start AND created_at < $end
ORDER BY 1, 2, 3, 4
