-- Share of tied pairs (labels 0.5 / 0.5) in each split.
-- Inputs: pairs. Output: split, pairs, ties, tie_rate. Parameters: none.
SELECT
    split,
    count(*) AS pairs,
    count(*) FILTER (WHERE label_0 = label_1) AS ties,
    round(count(*) FILTER (WHERE label_0 = label_1) / count(*), 4) AS tie_rate
FROM pairs
GROUP BY split
ORDER BY list_position(['train', 'validation', 'test', 'validation_unique', 'test_unique'], split), split
