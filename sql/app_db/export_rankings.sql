-- One day's rankings export, in the raw line's column order (formats.rawlines.ranking_line).
-- Inputs: table rankings. Output: every column, ids as int8, created_at as 'YYYY-MM-DD HH24:MI:SS.US'
-- text, for rows created in [$start, $end), ordered by ranking_id, then every column (stable even
-- without a primary key). Parameters: $start, $end (timestamp text, UTC).
SELECT ranking_id::int8, to_char(created_at, 'YYYY-MM-DD HH24:MI:SS.US'), user_id::int8, image_0_uid::text,
       image_1_uid::text, image_2_uid::text, image_3_uid::text, best_image_uid::text, prompt::text
FROM rankings
WHERE created_at >= $start AND created_at < $end
ORDER BY 1, 2, 3, 4, 5, 6, 7, 8, 9
