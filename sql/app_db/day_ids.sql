-- The ids of one table's rows created in [$start, $end), in order (NULL ids last), for the late-row check's
-- exact comparison of a day whose id digest differs from its raw file's while the database holds no more rows
-- and no larger id (rows deleted since, maybe a late row too: export.late_rows). Streamed from a server-side cursor into a
-- spill file, 8 bytes an id. OFFSET 0: the rows are found through the created_at index and then sorted (a
-- cursor's fast-start plan could otherwise walk the whole primary key filtering by day).
-- Inputs: tables users, images, rankings, downloads. Output: id (int8). Parameters: $table (one of the four
-- names; the other three branches are constant-false and read nothing), $start, $end (timestamp text, UTC).
SELECT id FROM (
    SELECT user_id::int8 AS id FROM users
    WHERE $table = 'users' AND created_at >= $start AND created_at < $end
    UNION ALL
    SELECT image_id::int8 FROM images
    WHERE $table = 'images' AND created_at >= $start AND created_at < $end
    UNION ALL
    SELECT ranking_id::int8 FROM rankings
    WHERE $table = 'rankings' AND created_at >= $start AND created_at < $end
    UNION ALL
    SELECT download_id::int8 FROM downloads
    WHERE $table = 'downloads' AND created_at >= $start AND created_at < $end
    OFFSET 0
) AS ids
ORDER BY id
