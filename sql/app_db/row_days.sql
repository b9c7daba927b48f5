-- Where rows stand now, by primary key: dated to a day ('YYYY-MM-DD', UTC) or undated (NULL); an id no row holds
-- returns nothing. Read by the export (pipelines/appdb/export.py) for: the rows once reported undated
-- (export.REMEMBER_UNDATED ids a table at most, kept in HOME/cache/app_export_undated.json): dated since, the
-- export re-exports that day (review rev29c: a row dated as the undated warning asks, on a day past the lookback
-- window, reached no raw day); the rows a day's raw file holds that its re-export did not read (held_ids, review
-- rev29d): a row the app still holds (moved to another day, undated, or left out by app_export.users_snapshot) is
-- not kept in the day, and the late-row check marks a day holding such a row for re-export.
-- Review rev30b: an id says which row only until the app takes it again (a database restored from an older
-- backup gives the lost rows' ids to new, unrelated rows), so each row also returns its identity: the columns a
-- row keeps when it moves (its created_at corrected) and when it is edited (review rev30g: a prompt cleaned or an
-- email changed made the moved row another one, left in its old day), which export.row_identity reads from the raw
-- line the same way: users none (an account is its id: the id is what every other row names it by, its email and
-- name are its user's to change); images the image_uid and user_id; rankings the user_id and the four image uids;
-- downloads the user_id and image_uid. Each is '-' for NULL, an integer as text, a text as the
-- hex sha256 of its stored bytes (bounded whatever its length), or '?' for a text that is not ASCII in a database
-- whose encoding is neither UTF8 nor SQL_ASCII ($exact false: its stored bytes are not the raw line's UTF-8);
-- joined with ','.
-- Inputs: tables users, images, rankings, downloads. Output: table_name, id (int8), day (NULL: undated), identity
-- (text), in id order (review rev29h: export.held_ids reads them one at a time into int64 arrays, never a set of
-- Python ints).
-- Parameters: $users, $images, $rankings, $downloads (int8[]: the ids; a primary-key lookup each); $exact (bool).
SELECT 'users' AS table_name, user_id::int8 AS id,
       CASE WHEN created_at >= '0001-01-01' AND created_at < '10000-01-01'
            THEN to_char(created_at, 'YYYY-MM-DD') END AS day,
       ''::text AS identity
FROM users WHERE user_id = ANY($users::int8[])
UNION ALL
SELECT 'images', image_id::int8,
       CASE WHEN created_at >= '0001-01-01' AND created_at < '10000-01-01' THEN to_char(created_at, 'YYYY-MM-DD') END,
       concat_ws(',',
         CASE WHEN image_uid IS NULL THEN '-' WHEN $exact OR image_uid::text ~ '^[\x01-\x7f]*$'
              THEN encode(sha256(convert_to(image_uid::text, getdatabaseencoding())), 'hex') ELSE '?' END,
         coalesce(user_id::int8::text, '-'))
FROM images WHERE image_id = ANY($images::int8[])
UNION ALL
SELECT 'rankings', ranking_id::int8,
       CASE WHEN created_at >= '0001-01-01' AND created_at < '10000-01-01' THEN to_char(created_at, 'YYYY-MM-DD') END,
       concat_ws(',', coalesce(user_id::int8::text, '-'),
         CASE WHEN image_0_uid IS NULL THEN '-' WHEN $exact OR image_0_uid::text ~ '^[\x01-\x7f]*$'
              THEN encode(sha256(convert_to(image_0_uid::text, getdatabaseencoding())), 'hex') ELSE '?' END,
         CASE WHEN image_1_uid IS NULL THEN '-' WHEN $exact OR image_1_uid::text ~ '^[\x01-\x7f]*$'
              THEN encode(sha256(convert_to(image_1_uid::text, getdatabaseencoding())), 'hex') ELSE '?' END,
         CASE WHEN image_2_uid IS NULL THEN '-' WHEN $exact OR image_2_uid::text ~ '^[\x01-\x7f]*$'
              THEN encode(sha256(convert_to(image_2_uid::text, getdatabaseencoding())), 'hex') ELSE '?' END,
         CASE WHEN image_3_uid IS NULL THEN '-' WHEN $exact OR image_3_uid::text ~ '^[\x01-\x7f]*$'
              THEN encode(sha256(convert_to(image_3_uid::text, getdatabaseencoding())), 'hex') ELSE '?' END)
FROM rankings WHERE ranking_id = ANY($rankings::int8[])
UNION ALL
SELECT 'downloads', download_id::int8,
       CASE WHEN created_at >= '0001-01-01' AND created_at < '10000-01-01' THEN to_char(created_at, 'YYYY-MM-DD') END,
       concat_ws(',', coalesce(user_id::int8::text, '-'),
         CASE WHEN image_uid IS NULL THEN '-' WHEN $exact OR image_uid::text ~ '^[\x01-\x7f]*$'
              THEN encode(sha256(convert_to(image_uid::text, getdatabaseencoding())), 'hex') ELSE '?' END)
FROM downloads WHERE download_id = ANY($downloads::int8[])
ORDER BY 2, 1
