-- Rejected raw lines by table and reason (the raw text itself is never published).
-- Inputs: quarantine. Output: table, reason, lines, days, first_day, last_day. Parameters: none.
SELECT
    "table",
    reason,
    count(*) AS lines,
    count(DISTINCT dt) AS days,
    min(dt) AS first_day,
    max(dt) AS last_day
FROM quarantine
GROUP BY "table", reason
ORDER BY lines DESC, "table", reason
