-- Snapshot of keep/drop decisions for a published version (query view `decisions`).
-- Inputs: decisions. Output: schema decisions, emails in `evidence` replaced by '<email>'.
-- Parameters: none.
SELECT
    subject,
    subject_id,
    keep,
    reason,
    regexp_replace(evidence, '[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+', '<email>', 'g') AS evidence
FROM decisions
ORDER BY subject, subject_id, reason, keep, evidence
