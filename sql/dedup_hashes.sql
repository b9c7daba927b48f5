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
--             distinct symmetric images are a few bits apart (review rev34b); nor is any pHash whose image's dHash
--             is a mirror's ($max_lr, $max_tb, $min_mirror_rows, $m: a signed mirror's odd bits are tie-breaks).
--             dhash_keyed: its dHash has at least 3 distinct rows (MIN_DHASH_ROWS: texture that varies down the
--             image) and its pHash is not informative, or is within $k of one that is not (at most $k odd horizontal
--             or odd vertical bits set, or fewer than $min_bits + $k bits: a JPEG re-encode of a symmetric image is
--             not quite symmetric; or a dHash within $dhash_k, DHASH_K, of a mirror's). Such images are near
--             duplicates only within $k on the pHash AND within DHASH_K on the dHash
--             (pipelines.curation.dedup.dhash_keyed_links), unless its dHash is a mirror's both ways
--             (a kaleidoscope: distinct ones are equal on both hashes, review rev34k). A flat image (dHash 0), a
--             ramp (all ones), a sky, a horizon or a vignette (every row alike) is neither: it clusters by its bytes
--             (sha256) only.
SELECT
    row_number() OVER (ORDER BY image_uid) AS rid,
    image_uid,
    sha256,
    phash & ~($constant_mask::UBIGINT) AS phash,
    dhash,
    informative,
    textured AND NOT (lr_mirror AND tb_mirror)
        AND (NOT informative OR bit_count(phash & $odd_u::UBIGINT) <= $k OR bit_count(phash & $odd_v::UBIGINT) <= $k
             OR bit_count(phash & ~($dc_bit::UBIGINT)) < $min_bits + $k
             -- within $dhash_k of a mirror's dHash: each flipped bit moves lr_pairs or tb_bits by at most 1
             OR nonzero_rows >= $min_mirror_rows AND (lr_pairs <= $max_lr + $dhash_k OR tb_bits <= $max_tb + $dhash_k))
        AS dhash_keyed
FROM (
    -- a mirror's pHash is not informative however many odd bits it has (only a textured dHash tells a mirror)
    SELECT *, phash_informative AND NOT (textured AND (lr_mirror OR tb_mirror)) AS informative
    FROM (
    SELECT *, lr_pairs <= $max_lr AND nonzero_rows >= $min_mirror_rows AS lr_mirror,
              tb_bits <= $max_tb AND nonzero_rows >= $min_mirror_rows AS tb_mirror
    FROM (
    -- three distinct rows: some row is neither row 0 nor the first row unlike row 0 (scalar, no lists: 4x faster)
    SELECT *, (r1 NOT IN (r0, other) OR r2 NOT IN (r0, other) OR r3 NOT IN (r0, other) OR r4 NOT IN (r0, other)
               OR r5 NOT IN (r0, other) OR r6 NOT IN (r0, other) OR r7 NOT IN (r0, other)) AS textured
    FROM (
    SELECT *, CASE WHEN r1 != r0 THEN r1 WHEN r2 != r0 THEN r2 WHEN r3 != r0 THEN r3 WHEN r4 != r0 THEN r4
                   WHEN r5 != r0 THEN r5 WHEN r6 != r0 THEN r6 ELSE r7 END AS other
    FROM (
        SELECT *,
               bit_count(phash & ~($dc_bit::UBIGINT)) >= $min_bits AND (phash & $odd_u::UBIGINT) != 0
                   AND (phash & $odd_v::UBIGINT) != 0 AS phash_informative,
               -- the dHash of a left-right mirror: bits j and 7 - j of a row are never both set (p[j+1] > p[j] and
               -- p[j] > p[j+1]); of a top-bottom mirror: row r equals row 7 - r ($m = 0x0101010101010101); either
               -- needs $min_mirror_rows rows with a set bit as evidence (a sparse dHash is "symmetric" by chance)
               bit_count((dhash >> 7) & dhash & $m::UBIGINT) + bit_count((dhash >> 5) & dhash & ($m::UBIGINT << 1))
                   + bit_count((dhash >> 3) & dhash & ($m::UBIGINT << 2))
                   + bit_count((dhash >> 1) & dhash & ($m::UBIGINT << 3)) AS lr_pairs,
               bit_count(xor(dhash, dhash >> 56) & 255) + bit_count(xor(dhash >> 8, dhash >> 48) & 255)
                   + bit_count(xor(dhash >> 16, dhash >> 40) & 255)
                   + bit_count(xor(dhash >> 24, dhash >> 32) & 255) AS tb_bits,
               dhash & 255 AS r0, (dhash >> 8) & 255 AS r1, (dhash >> 16) & 255 AS r2, (dhash >> 24) & 255 AS r3,
               (dhash >> 32) & 255 AS r4, (dhash >> 40) & 255 AS r5, (dhash >> 48) & 255 AS r6, dhash >> 56 AS r7
        FROM (
          SELECT *, bit_count((dhash | dhash >> 1 | dhash >> 2 | dhash >> 3 | dhash >> 4 | dhash >> 5 | dhash >> 6
                               | dhash >> 7) & $m::UBIGINT) AS nonzero_rows
          FROM (
            SELECT image_uid, arg_min(sha256, (dt, blob_path)) AS sha256,
                   arg_min(phash, (dt, blob_path)) AS phash, arg_min(dhash, (dt, blob_path)) AS dhash
            FROM image_features
            GROUP BY image_uid
          )
        )
    )
    )
    )
    )
)
ORDER BY rid
