-- Inputs: ranking_base (curation_rankings), prompt_moderation_keys (prompt, moderation_key, moderation_text: each
--         distinct prompt's key and symbol-keeping text, pipelines.splits.assign.moderation_key / moderation_text;
--         the text NULL when no phrase holds a symbol).
-- Output: (ranking_id, prompt, moderation_key, moderation_text) of the rankings whose prompt matches any
--         moderation phrase, as typed, by its key or by its text.
-- Parameters: $phrase_regex (every phrase in one word-bounded, case-insensitive RE2), $key_regex (every
--             words-only phrase's key, the same way), $text_regex (every symbol phrase's moderation_text).
SELECT r.ranking_id, r.prompt, k.moderation_key, k.moderation_text
FROM ranking_base r LEFT JOIN prompt_moderation_keys k ON k.prompt = r.prompt
WHERE regexp_matches(r.prompt, $phrase_regex) OR regexp_matches(k.moderation_key, $key_regex)
   OR regexp_matches(k.moderation_text, $text_regex)
