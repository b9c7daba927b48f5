-- Inputs: image_features (every partition).
-- Output: one row per image_uid (earliest dt wins) with rid = its rank by image_uid, so the
--         smallest rid of a component is its smallest image_uid (the canonical member).
-- Parameters: $constant_mask (bits that never vary, e.g. the pHash DC bit), masked off before banding;
--             $dc_bit (the pHash DC bit) and $min_bits: informative is whether the pHash has at least $min_bits
--             set bits besides the DC bit. A flat or smoothly shaded image (any colour) has a pHash of a few bits
--             or none (its DCT terms tie at the median): such a hash says too little to call two images near
--             duplicates, so it is left out of the near-duplicate search and the equal-pHash groups (review rev33u).
SELECT
    row_number() OVER (ORDER BY image_uid) AS rid,
    image_uid,
    sha256,
    phash & ~($constant_mask::UBIGINT) AS phash,
    dhash,
    bit_count(phash & ~($dc_bit::UBIGINT)) >= $min_bits AS informative
FROM (
    SELECT image_uid, arg_min(sha256, (dt, blob_path)) AS sha256,
           arg_min(phash, (dt, blob_path)) AS phash, arg_min(dhash, (dt, blob_path)) AS dhash
    FROM image_features
    GROUP BY image_uid
)
ORDER BY rid
