-- Why things were dropped (or kept): decisions counted by subject and reason.
-- Inputs: decisions. Output: subject, reason, dropped, kept, total (largest drop counts first).
-- Parameters: none.
SELECT
    subject,
    reason,
    count(*) FILTER (WHERE NOT keep) AS dropped,
    count(*) FILTER (WHERE keep) AS kept,
    count(*) AS total
FROM decisions
GROUP BY subject, reason
ORDER BY dropped DESC, total DESC, subject, reason
