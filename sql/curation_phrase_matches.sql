-- Inputs: ranking_base (curation_rankings), phrase_prompt_matches (prompt, phrase: every distinct prompt that
--         holds a moderation phrase as typed, by its moderation key or by its moderation text, with the phrase;
--         pipelines.curation.decisions.phrase_matches).
-- Output: (ranking_id, phrase), one row per ranking and phrase its prompt holds.
SELECT DISTINCT r.ranking_id, m.phrase
FROM ranking_base r JOIN phrase_prompt_matches m ON m.prompt = r.prompt
ORDER BY r.ranking_id, m.phrase
