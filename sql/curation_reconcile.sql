-- Inputs: rankings (every partition), ranking_base (curation_rankings), pairs, decisions.
-- Output: one row: distinct rankings, those with pairs, those with a ranking drop decision, those with
--         neither (must be 0), export rows neither used nor decided (must be 0), ties, 4-image pairs (the pairs
--         of rankings that showed more than two images, whichever of their pairs survived: it counted only
--         rankings with a pair_index > 0 left, so one left with pair 0 alone was not 4-image, review rev32g).
-- Parameters: none.
WITH ids AS (SELECT DISTINCT ranking_id FROM rankings),
with_pairs AS (SELECT DISTINCT ranking_id FROM pairs),
with_decision AS (
    SELECT DISTINCT TRY_CAST(subject_id AS BIGINT) AS ranking_id FROM decisions WHERE subject = 'ranking' AND NOT keep
),
exports AS (SELECT DISTINCT ranking_id, dt FROM rankings)
SELECT
    (SELECT count(*) FROM ids) AS rankings,
    (SELECT count(*) FROM with_pairs) AS with_pairs,
    (SELECT count(*) FROM with_decision) AS with_decision,
    (SELECT count(*) FROM ids ANTI JOIN with_pairs USING (ranking_id) ANTI JOIN with_decision USING (ranking_id)) AS unaccounted,
    (SELECT count(*) FROM exports e
        ANTI JOIN with_decision USING (ranking_id)
        ANTI JOIN (SELECT DISTINCT ranking_id, dt FROM pairs) p USING (ranking_id, dt)
        WHERE e.ranking_id::VARCHAR || '@' || strftime(e.dt, '%Y-%m-%d') NOT IN
              (SELECT subject_id FROM decisions WHERE subject = 'ranking_export')) AS unaccounted_exports,
    (SELECT count(*) FROM pairs WHERE label_0 = 0.5) AS ties,
    (SELECT count(*) FROM pairs p JOIN ranking_base r USING (ranking_id) WHERE len(r.shown) > 2) AS four_image_pairs,
    (SELECT count(*) FROM pairs WHERE are_different) AS are_different
