-- Snapshot of quarantined raw lines for a published version (query view `quarantine`).
-- Inputs: quarantine (every daily partition). Output: schema published_quarantine: no raw_text
-- (line_count identical lines per row, as in the warehouse);
-- in `detail`, emails become '<email>', the quoted value of any user_id (any table) and of any field
-- of a users line becomes '<value>', and quoted text of a users line becomes '<value>'. Parameters: none.
WITH emails AS (
    SELECT *,
           regexp_replace(detail, '[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+', '<email>', 'g') AS d,
           "table" = 'users' AS personal
    FROM quarantine
),
values_redacted AS (
    SELECT *,
           CASE WHEN personal OR regexp_matches(d, '^user_id[ :=]') THEN
               regexp_replace(regexp_replace(regexp_replace(d,
                   '^([a-z0-9_]+: [a-z]+ ).*(, expected [a-z]+)$', '\1<value>\2'),
                   '^([a-z0-9_]+ = ).*( outside \[[^\]]*\])$', '\1<value>\2'),
                   '^([a-z0-9_]+ ).*( has [0-9]+ lines with different content \(lines [^)]*\))$', '\1<value>\2')
           ELSE d END AS d2
    FROM emails
)
SELECT
    "table",
    dt,
    file,
    line_number,
    last_line_number,
    line_count,
    reason,
    CASE WHEN personal THEN regexp_replace(d2, '''[^'']*''|"[^"]*"', '<value>', 'g') ELSE d2 END AS detail,
    raw_length,
    raw_sha256
FROM values_redacted
ORDER BY dt, "table", file, line_number, reason, raw_sha256
