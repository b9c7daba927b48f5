-- Inputs: phrase_hits (ranking_id, prompt: the prompts matching the combined phrase RE2).
-- Output: (ranking_id, phrase) for every hit whose prompt matches this one phrase's word-bounded RE2.
-- Parameters: $phrase, $pattern (one phrase and its RE2). Run once per phrase, so the pattern is a
--             constant compiled once; a pattern read from a joined column is compiled per row.
SELECT ranking_id, $phrase::VARCHAR AS phrase
FROM phrase_hits
WHERE regexp_matches(prompt, $pattern)
