-- Rejected raw lines by table and reason (the raw text itself is never published).
-- Inputs: quarantine. Output: table, reason, lines (identical lines share a row: summed line_count), rows, days,
-- first_day, last_day. Parameters: none.
SELECT
    "table",
    reason,
    sum(line_count) AS lines,
    count(*) AS rows,
    count(DISTINCT dt) AS days,
    min(dt) AS first_day,
    max(dt) AS last_day
FROM quarantine
GROUP BY "table", reason
ORDER BY lines DESC, "table", reason
