-- Inputs: rankings (every daily partition; a late or repeated export can carry a ranking twice).
-- Output: one row per ranking_id: the earliest export's columns, shown (non-null image uids in
--         display order), n_exports, n_variants (distinct contents; > 1 = conflicting re-export), export_days.
-- Parameters: none.
WITH exports AS (
    SELECT r.*,
           -- compared only within one ranking_id (a few exports), never written out: DuckDB's 64-bit
           -- hash of the row is enough and 4x cheaper than md5 of its JSON
           hash(struct_pack(created_at, user_id, image_0_uid, image_1_uid, image_2_uid, image_3_uid,
                            best_image_uid, is_tie, prompt, bracket_negative_prompt)) AS content_digest
    FROM rankings r
),
per_id AS (
    SELECT ranking_id, count(*) AS n_exports, count(DISTINCT content_digest) AS n_variants,
           list(strftime(dt, '%Y-%m-%d') ORDER BY dt, content_digest) AS export_days
    FROM exports GROUP BY ranking_id
),
first_export AS (
    SELECT * FROM exports
    QUALIFY row_number() OVER (PARTITION BY ranking_id ORDER BY dt, content_digest) = 1
)
SELECT f.ranking_id, f.created_at, f.user_id, f.image_0_uid, f.image_1_uid, f.image_2_uid, f.image_3_uid,
       list_filter([f.image_0_uid, f.image_1_uid, f.image_2_uid, f.image_3_uid], lambda u: u IS NOT NULL) AS shown,
       f.best_image_uid, f.is_tie, f.prompt, f.dt,
       p.n_exports, p.n_variants, p.export_days
FROM first_export f JOIN per_id p USING (ranking_id)
ORDER BY f.ranking_id
