-- Inputs: ranking_base (curation_rankings), prompt_moderation_keys (prompt, moderation_key: each distinct
--         prompt's key, pipelines.splits.assign.moderation_key).
-- Output: (ranking_id, prompt, moderation_key) of the rankings whose prompt matches any moderation phrase,
--         as typed or by its key.
-- Parameters: $phrase_regex (every phrase in one word-bounded, case-insensitive RE2), $key_regex (every
--             phrase's key, the same way).
SELECT r.ranking_id, r.prompt, k.moderation_key
FROM ranking_base r LEFT JOIN prompt_moderation_keys k ON k.prompt = r.prompt
WHERE regexp_matches(r.prompt, $phrase_regex) OR regexp_matches(k.moderation_key, $key_regex)
