-- Where a hot standby (read replica) stands in replaying its primary's WAL (the export checks it before its
-- snapshot: see pipelines/appdb/export.py, check_standby).
-- Inputs: the server's recovery state. Output: one row: standby (pg_is_in_recovery()), received (the last
-- WAL position streamed to it, NULL where it does not stream), replayed (the last position replayed),
-- behind_bytes (received - replayed, NULL where either is NULL), caught_up (replayed >= $target, the
-- position it had received when the check began; NULL without a target), paused (replay paused or a
-- pause requested; NULL on a primary, where the function would fail), replayed_at (commit time of the
-- last transaction replayed, by the primary's clock; NULL when none was since the standby started).
-- Parameters: $target (pg_lsn text or NULL).
SELECT pg_is_in_recovery() AS standby,
       pg_last_wal_receive_lsn()::text AS received,
       pg_last_wal_replay_lsn()::text AS replayed,
       pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())::int8 AS behind_bytes,
       pg_last_wal_replay_lsn() >= $target::pg_lsn AS caught_up,
       CASE WHEN pg_is_in_recovery() THEN pg_is_wal_replay_paused() END AS paused,
       pg_last_xact_replay_timestamp() AS replayed_at
