-- Inputs: image_features (every partition).
-- Output: one row per image_uid (earliest dt wins) with rid = its rank by image_uid, so the
--         smallest rid of a component is its smallest image_uid (the canonical member).
-- Parameters: $constant_mask (bits that never vary, e.g. the pHash DC bit), masked off before banding.
SELECT
    row_number() OVER (ORDER BY image_uid) AS rid,
    image_uid,
    sha256,
    phash & ~($constant_mask::UBIGINT) AS phash,
    dhash
FROM (
    SELECT image_uid, arg_min(sha256, (dt, blob_path)) AS sha256,
           arg_min(phash, (dt, blob_path)) AS phash, arg_min(dhash, (dt, blob_path)) AS dhash
    FROM image_features
    GROUP BY image_uid
)
ORDER BY rid
