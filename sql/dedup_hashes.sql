-- Inputs: image_features (every partition).
-- Output: one row per image_uid (earliest dt wins) with rid = its rank by image_uid, so the
--         smallest rid of a component is its smallest image_uid (the canonical member).
-- Parameters: $constant_mask (bits that never vary, e.g. the pHash DC bit), masked off before banding;
--             $dc_bit (the pHash DC bit), $min_bits, $k (DedupConfig.k), $odd_u and $odd_v (the pHash bits of the
--             DCT terms of odd horizontal / vertical frequency):
--             informative: the pHash alone tells images apart: at least $min_bits set bits besides the DC bit, some
--             of them odd horizontal and some odd vertical terms. A flat or smoothly shaded image (any colour) has
--             a pHash of a few bits or none (its DCT terms tie at the median, review rev33u); a mirror-symmetric
--             image has every odd term of its mirror's axis exactly 0 (tied): half its bits say nothing, so
--             distinct symmetric images are a few bits apart (review rev34b).
--             dhash_keyed: its dHash has at least 3 distinct rows (MIN_DHASH_ROWS: texture that varies down the
--             image) and its pHash is not informative, or is within $k of one that is not (at most $k odd horizontal
--             or odd vertical bits set, or fewer than $min_bits + $k bits: a JPEG re-encode of a symmetric image is
--             not quite symmetric). Such images are near duplicates only within $k on the pHash AND within DHASH_K
--             on the dHash (pipelines.curation.dedup.dhash_keyed_links). A flat image (dHash 0), a ramp (all ones),
--             a sky, a horizon or a vignette (every row alike) is neither: it clusters by its bytes (sha256) only.
SELECT
    row_number() OVER (ORDER BY image_uid) AS rid,
    image_uid,
    sha256,
    phash & ~($constant_mask::UBIGINT) AS phash,
    dhash,
    informative,
    -- three distinct rows: some row is neither row 0 nor the first row unlike row 0 (scalar, no lists: 4x faster)
    (r1 NOT IN (r0, other) OR r2 NOT IN (r0, other) OR r3 NOT IN (r0, other) OR r4 NOT IN (r0, other)
     OR r5 NOT IN (r0, other) OR r6 NOT IN (r0, other) OR r7 NOT IN (r0, other))
        AND (NOT informative OR bit_count(phash & $odd_u::UBIGINT) <= $k OR bit_count(phash & $odd_v::UBIGINT) <= $k
             OR bit_count(phash & ~($dc_bit::UBIGINT)) < $min_bits + $k) AS dhash_keyed
FROM (
    SELECT *, CASE WHEN r1 != r0 THEN r1 WHEN r2 != r0 THEN r2 WHEN r3 != r0 THEN r3 WHEN r4 != r0 THEN r4
                   WHEN r5 != r0 THEN r5 WHEN r6 != r0 THEN r6 ELSE r7 END AS other
    FROM (
        SELECT *,
               bit_count(phash & ~($dc_bit::UBIGINT)) >= $min_bits AND (phash & $odd_u::UBIGINT) != 0
                   AND (phash & $odd_v::UBIGINT) != 0 AS informative,
               dhash & 255 AS r0, (dhash >> 8) & 255 AS r1, (dhash >> 16) & 255 AS r2, (dhash >> 24) & 255 AS r3,
               (dhash >> 32) & 255 AS r4, (dhash >> 40) & 255 AS r5, (dhash >> 48) & 255 AS r6, dhash >> 56 AS r7
        FROM (
            SELECT image_uid, arg_min(sha256, (dt, blob_path)) AS sha256,
                   arg_min(phash, (dt, blob_path)) AS phash, arg_min(dhash, (dt, blob_path)) AS dhash
            FROM image_features
            GROUP BY image_uid
        )
    )
)
ORDER BY rid
