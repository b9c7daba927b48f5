-- How balanced the shards of each split are (samples and bytes per shard).
-- Inputs: shards. Output: split, shards, samples, min/max samples per shard, min/max MB per shard.
-- Parameters: none.
SELECT
    split,
    count(*) AS shards,
    sum(num_samples)::BIGINT AS samples,
    min(num_samples) AS min_samples,
    max(num_samples) AS max_samples,
    round(min(num_bytes) / 1e6, 3) AS min_mb,
    round(max(num_bytes) / 1e6, 3) AS max_mb
FROM shards
GROUP BY split
ORDER BY list_position(['train', 'validation', 'test', 'validation_unique', 'test_unique'], split), split
