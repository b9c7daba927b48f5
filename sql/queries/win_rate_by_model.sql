-- Win rate of each generator model against the other models (pairs showing two different models).
-- Inputs: pairs (train, validation, test; the _unique splits repeat rows and are left out).
-- Output: model, pairs, wins, losses, ties, win_rate (wins / decided), tie_rate. Parameters: none.
WITH sides AS (
    SELECT model_0 AS model, label_0 AS label, label_1 AS other FROM pairs
    WHERE split IN ('train', 'validation', 'test') AND model_0 <> model_1
    UNION ALL
    SELECT model_1 AS model, label_1 AS label, label_0 AS other FROM pairs
    WHERE split IN ('train', 'validation', 'test') AND model_0 <> model_1
)
SELECT
    model,
    count(*) AS pairs,
    count(*) FILTER (WHERE label > other) AS wins,
    count(*) FILTER (WHERE label < other) AS losses,
    count(*) FILTER (WHERE label = other) AS ties,
    round(count(*) FILTER (WHERE label > other) / nullif(count(*) FILTER (WHERE label <> other), 0), 4) AS win_rate,
    round(count(*) FILTER (WHERE label = other) / count(*), 4) AS tie_rate
FROM sides
GROUP BY model
ORDER BY win_rate DESC NULLS LAST, model
