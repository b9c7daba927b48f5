-- Rejected raw lines by table and reason (the raw text itself is never published).
-- Inputs: quarantine. Output: table, reason, lines (the summed line_count of line-level rows, line_number > 0:
-- identical lines share a row; a file-level row, missing_file / unreadable_file with line_number 0, is no line
-- read and counts 0 lines, so the lines of a day add up to its ingest_files.quarantined), rows (file-level rows
-- included), days, first_day, last_day. Parameters: none.
SELECT
    "table",
    reason,
    coalesce(sum(line_count) FILTER (WHERE line_number > 0), 0) AS lines,
    count(*) AS rows,
    count(DISTINCT dt) AS days,
    min(dt) AS first_day,
    max(dt) AS last_day
FROM quarantine
GROUP BY "table", reason
ORDER BY lines DESC, "table", reason
