-- Inputs: ranking_base (curation_rankings).
-- Output: (ranking_id, prompt) of the rankings whose prompt matches any moderation phrase.
-- Parameters: $phrase_regex (every phrase in one word-bounded, case-insensitive RE2).
SELECT ranking_id, prompt FROM ranking_base WHERE regexp_matches(prompt, $phrase_regex)
