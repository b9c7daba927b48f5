-- Inputs: images (every daily partition; an image re-exported on a later day is there once per export).
-- Output: image_base, one row per image_uid: the earliest export's user_id, prompt and model_id, n_exports,
--         n_variants (distinct contents over every exported column but dt and blob_path, which the ingest
--         derives from the uid; > 1 = a conflicting re-export: conflicting_image), export_days (ascending).
-- Parameters: none.
WITH exports AS (
    SELECT image_uid, dt, user_id, prompt, model_id,
           -- compared only within one image_uid (a few exports), never written out: DuckDB's 64-bit hash of the
           -- row, as curation_rankings.sql does for a ranking's exports
           hash(struct_pack(image_id, created_at, user_id, prompt, bracket_negative_prompt, negative_prompt, seed,
                            gs, steps, idx, num_generated, scheduler_cls, model_id)) AS content_digest
    FROM images
)
SELECT image_uid,
       arg_min(user_id, struct_pack(d := dt, h := content_digest)) AS user_id,
       arg_min(prompt, struct_pack(d := dt, h := content_digest)) AS prompt,
       arg_min(model_id, struct_pack(d := dt, h := content_digest)) AS model_id,
       count(*) AS n_exports,
       count(DISTINCT content_digest) AS n_variants,
       list(strftime(dt, '%Y-%m-%d') ORDER BY dt, content_digest) AS export_days
FROM exports
GROUP BY image_uid
ORDER BY image_uid
