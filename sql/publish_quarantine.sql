-- Snapshot of quarantined raw lines for a published version (query view `quarantine`).
-- Inputs: quarantine (every daily partition). Output: schema published_quarantine: no raw_text,
-- emails in `detail` replaced by '<email>'. Parameters: none.
SELECT
    "table",
    dt,
    file,
    line_number,
    reason,
    regexp_replace(detail, '[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+', '<email>', 'g') AS detail,
    raw_length,
    raw_sha256
FROM quarantine
ORDER BY dt, "table", file, line_number, reason, raw_sha256
