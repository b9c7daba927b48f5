-- Inputs: split_pairs (the split_pairs latest was published from: the home's file before a build overwrites it),
--         stored_pins (split_key_owners as read: every salt's).
-- Output: split_key_owners: every stored pin as it is, plus one pin under $salt for each key of a kept train /
--         validation / test row (its prompt_key, image_0_uid and image_1_uid) that has none under $salt: owner its
--         split (a key kept in two splits, which the assignment never does, as held out: test, then validation),
--         first_dt the export day of its earliest kept row. First writer wins: a pin is never changed (but by
--         assign.rekey_prompt_pins after a key-function change, and only towards held out).
--         Ordered by salt, kind, key (same inputs, same bytes).
-- Parameters: $salt.
WITH used AS (
    SELECT unnest(['prompt', 'image', 'image']) AS kind, unnest([prompt_key, image_0_uid, image_1_uid]) AS key, split, dt
    FROM split_pairs
    WHERE split IN ('train', 'validation', 'test')
),
new AS (
    SELECT kind, key,
           CASE WHEN bool_or(split = 'test') THEN 'test'
                WHEN bool_or(split = 'validation') THEN 'validation'
                ELSE 'train' END AS owner,
           min(dt) AS first_dt
    FROM used u
    WHERE NOT EXISTS (SELECT 1 FROM stored_pins s WHERE s.salt = $salt AND s.kind = u.kind AND s.key = u.key)
    GROUP BY kind, key
)
SELECT kind, key, owner, first_dt, salt FROM stored_pins
UNION ALL
SELECT kind, key, owner, first_dt, $salt FROM new
ORDER BY salt, kind, key
