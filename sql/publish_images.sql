-- Snapshot of per-image features for a published version (query view `images`).
-- Inputs: image_features (every daily partition). Output: schema image_features, one row per
-- (image_uid, dt). Parameters: none. The features table holds no personal data.
SELECT *
FROM image_features
ORDER BY image_uid, dt
