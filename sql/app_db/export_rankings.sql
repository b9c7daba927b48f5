-- One day's rankings export, in the raw line's column order (formats.rawlines.ranking_line).
-- Inputs: table rankings. Output: every column, ids as int8, created_at as 'YYYY-MM-DD HH24:MI:SS.US'
-- text, for rows created in [$start, $end), ordered by ranking_id, then every column (stable even
-- without a primary key).
-- Text is cut to $max_chars characters (the ingest's max_line_bytes + 1: a longer value makes a line the
-- ingest quarantines as line_too_long, and its whole size would only cost the export memory).
-- Parameters: $start, $end (timestamp text, UTC), $max_chars.
SELECT ranking_id::int8, to_char(created_at, 'YYYY-MM-DD HH24:MI:SS.US'), user_id::int8,
       left(image_0_uid::text, $max_chars), left(image_1_uid::text, $max_chars), left(image_2_uid::text, $max_chars),
       left(image_3_uid::text, $max_chars), left(best_image_uid::text, $max_chars), left(prompt::text, $max_chars)
FROM rankings
WHERE created_at >= $start AND created_at < $end
ORDER BY 1, 2, 3, 4, 5, 6, 7, 8, 9
