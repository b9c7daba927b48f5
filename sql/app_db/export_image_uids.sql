-- The image uids of one day, for copying their blobs from the app's storage into the raw zone.
-- Inputs: table images. Output: one row per distinct image_uid of rows created in [$start, $end), sorted
-- by the whole uid, as its first $max_chars characters: a blob name is a canonical UUID (36 characters),
-- so the export cuts every uid to $max_chars = 37 and a cut one (longer than a UUID) is counted as not a
-- uid; a huge value (a table without the UNIQUE index) never travels whole to the export.
-- Parameters: $start, $end (timestamp text, UTC), $max_chars.
SELECT left(image_uid::text, $max_chars)
FROM images
WHERE created_at >= $start AND created_at < $end AND image_uid IS NOT NULL
GROUP BY image_uid::text
ORDER BY image_uid::text
