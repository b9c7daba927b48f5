-- One day's images export, in the raw line's column order (formats.rawlines.image_line).
-- Inputs: table images. Output: every column, ids as int8, created_at as 'YYYY-MM-DD HH24:MI:SS.US'
-- text, gs as its shortest exact text, for rows created in [$start, $end), ordered by image_id, then
-- every column (stable even without a primary key).
-- Text (not gs) is cut to $max_chars characters (the ingest's max_line_bytes + 1: a longer value makes a
-- line the ingest quarantines as line_too_long, and its whole size would only cost the export memory).
-- Parameters: $start, $end (timestamp text, UTC), $max_chars.
SELECT image_id::int8, to_char(created_at, 'YYYY-MM-DD HH24:MI:SS.US'), left(image_uid::text, $max_chars),
       user_id::int8, left(prompt::text, $max_chars), left(negative_prompt::text, $max_chars), seed::int8,
       gs::text, steps::int8, idx::int8, num_generated::int8, left(scheduler_cls::text, $max_chars),
       left(model_id::text, $max_chars)
FROM images
WHERE created_at >= $start AND created_at < $end
ORDER BY 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13
