-- One day's images export, in the raw line's column order (formats.rawlines.image_line).
-- Inputs: table images. Output: every column, ids as int8, created_at as 'YYYY-MM-DD HH24:MI:SS.US'
-- text, gs as its shortest exact text, for rows created in [$start, $end), ordered by image_id, then
-- every column (stable even without a primary key). Parameters: $start, $end (timestamp text, UTC).
SELECT image_id::int8, to_char(created_at, 'YYYY-MM-DD HH24:MI:SS.US'), image_uid::text, user_id::int8,
       prompt::text, negative_prompt::text, seed::int8, gs::text, steps::int8, idx::int8, num_generated::int8,
       scheduler_cls::text, model_id::text
FROM images
WHERE created_at >= $start AND created_at < $end
ORDER BY 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13
