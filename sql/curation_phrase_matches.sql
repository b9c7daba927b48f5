-- Inputs: phrase_hits (ranking_id, prompt, moderation_key, moderation_text: the prompts matching a combined RE2).
-- Output: (ranking_id, phrase) for every hit whose prompt matches this one phrase's word-bounded RE2, or
--         whose moderation key matches the phrase's key's, or whose moderation text the phrase's text's.
-- Parameters: $phrase, $pattern, $key_pattern, $text_pattern (one phrase, its RE2, its key's RE2, its text's
--             RE2). Run once per phrase, so the patterns are constants compiled once; a pattern read from a
--             joined column is compiled per row.
SELECT ranking_id, $phrase::VARCHAR AS phrase
FROM phrase_hits
WHERE regexp_matches(prompt, $pattern) OR regexp_matches(moderation_key, $key_pattern)
   OR regexp_matches(moderation_text, $text_pattern)
