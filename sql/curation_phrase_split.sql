-- Inputs: phrase_values (value: distinct prompts, moderation keys or moderation texts to test).
-- Output: (value, left, right): whether each value matches the $left and the $right pattern.
-- Parameters: $left, $right (combined word-bounded RE2s of two groups of phrases, keys or texts:
--             pipelines.curation.decisions.phrase_pattern). Constants, so each is compiled once per query;
--             a pattern read from a joined column is compiled per row.
SELECT value, regexp_matches(value, $left) AS "left", regexp_matches(value, $right) AS "right"
FROM phrase_values
WHERE regexp_matches(value, $left) OR regexp_matches(value, $right)
