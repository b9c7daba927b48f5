-- The image uids of one day, for copying their blobs from the app's storage into the raw zone.
-- Inputs: table images. Output: distinct image_uid text of rows created in [$start, $end), sorted.
-- Parameters: $start, $end (timestamp text, UTC).
SELECT DISTINCT image_uid::text
FROM images
WHERE created_at >= $start AND created_at < $end AND image_uid IS NOT NULL
ORDER BY 1
