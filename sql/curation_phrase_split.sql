-- Inputs: phrase_values (value: distinct prompts, moderation keys or moderation texts to test).
-- Output: (value, left, right): the values matching the $left or the $right pattern, and which.
-- Parameters: $left, $right (combined RE2s of two groups of phrases, keys or texts, with or without their word
--             guards: pipelines.curation.decisions.phrase_pattern / body_pattern). Each is compiled once per query
--             (a guarded pattern costs ~7 ms to compile): the matches are computed once in a materialized CTE,
--             since a filter on them is otherwise pushed down as a second copy of each call (review rev18c); a
--             pattern read from a joined column would be compiled per row.
WITH tested AS MATERIALIZED (
    SELECT value, regexp_matches(value, $left) AS "left", regexp_matches(value, $right) AS "right"
    FROM phrase_values
)
SELECT value, "left", "right" FROM tested WHERE "left" OR "right"
