-- Published images per generator model and how many have a NudeNet exposed-class score >= 0.5.
-- Inputs: pairs, images. Output: model, images, flagged, flagged_rate. Parameters: none.
-- Only images that appear in a published pair are counted.
WITH shown AS (
    SELECT DISTINCT image_0_uid AS image_uid, model_0 AS model FROM pairs
    UNION SELECT DISTINCT image_1_uid, model_1 FROM pairs
),
scored AS (
    SELECT image_uid, greatest(
        coalesce(nsfw_max.FEMALE_BREAST_EXPOSED, 0), coalesce(nsfw_max.FEMALE_GENITALIA_EXPOSED, 0),
        coalesce(nsfw_max.MALE_GENITALIA_EXPOSED, 0), coalesce(nsfw_max.BUTTOCKS_EXPOSED, 0),
        coalesce(nsfw_max.ANUS_EXPOSED, 0)) AS score
    FROM images
)
SELECT
    s.model,
    count(DISTINCT s.image_uid) AS images,
    count(DISTINCT s.image_uid) FILTER (WHERE c.score >= 0.5) AS flagged,
    round(count(DISTINCT s.image_uid) FILTER (WHERE c.score >= 0.5) / count(DISTINCT s.image_uid), 4) AS flagged_rate
FROM shown AS s
LEFT JOIN scored AS c USING (image_uid)
GROUP BY s.model
ORDER BY flagged_rate DESC, s.model
