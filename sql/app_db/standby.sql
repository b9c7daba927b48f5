-- Where the app database's server stands as a copy of another (the export checks it before its snapshot:
-- see pipelines/appdb/export.py, check_standby).
-- Inputs: the server's recovery state, its WAL receiver (pg_stat_wal_receiver) and the database's logical
-- subscriptions (pg_subscription). Output: one row: standby (pg_is_in_recovery()), received (the last WAL
-- position streamed to it, NULL where it never streamed), replayed (the last position replayed),
-- behind_bytes (received - replayed, NULL where either is NULL), caught_up (replayed >= $target, the
-- position it had received when the check began; NULL without a target), paused (replay paused or a
-- pause requested; NULL on a primary, where the function would fail), replayed_at (commit time of the
-- last transaction replayed, by the primary's clock; NULL when none was since the standby started);
-- receiver (a WAL receiver process runs), receiver_status (its status, 'streaming' when it streams; NULL
-- where the role may not see it: pg_read_all_stats), flushed (WAL it has received and flushed), latest_end
-- (the upstream's WAL end as its last message reported it), sent_at (when the upstream sent its last
-- message, by the upstream's clock), silent_s (seconds since a message last arrived, by this server's
-- clock), replayed_all (it has replayed all it flushed, and flushed all its upstream reported: a caught-up
-- standby), receiver_timeout_ms (wal_receiver_timeout); subscriptions (this database's logical
-- subscriptions that replicate one of the app tables ($schema.$tables, pg_subscription_rel; review rev24k: one of
-- unrelated tables does not make the database a replica of the app's), 'name', 'name (disabled)', 'name (no
-- worker)' (enabled, no apply worker running: pg_stat_subscription.pid NULL) or 'name (copying)' (an app table
-- not synchronized yet), NULL where there are none); sender_host, sender_port (the upstream the WAL receiver
-- streams from; NULL without one, or where the role may not see it).
-- pg_stat_wal_receiver is read through to_jsonb, so its PostgreSQL 13+ flushed_lsn and the older
-- received_lsn are both found.
-- Parameters: $target (pg_lsn text or NULL), $schema (the app schema), $tables (the app tables, text[]).
SELECT pg_is_in_recovery() AS standby,
       pg_last_wal_receive_lsn()::text AS received,
       pg_last_wal_replay_lsn()::text AS replayed,
       pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())::int8 AS behind_bytes,
       pg_last_wal_replay_lsn() >= $target::pg_lsn AS caught_up,
       CASE WHEN pg_is_in_recovery() THEN pg_is_wal_replay_paused() END AS paused,
       pg_last_xact_replay_timestamp() AS replayed_at,
       w.r IS NOT NULL AS receiver,
       w.r ->> 'status' AS receiver_status,
       coalesce(w.r ->> 'flushed_lsn', w.r ->> 'received_lsn') AS flushed,
       w.r ->> 'latest_end_lsn' AS latest_end,
       (w.r ->> 'last_msg_send_time')::timestamptz AS sent_at,
       extract(epoch FROM clock_timestamp() - (w.r ->> 'last_msg_receipt_time')::timestamptz)::float8 AS silent_s,
       coalesce(pg_last_wal_replay_lsn() >= coalesce(w.r ->> 'flushed_lsn', w.r ->> 'received_lsn')::pg_lsn
                AND coalesce(w.r ->> 'flushed_lsn', w.r ->> 'received_lsn')::pg_lsn
                    >= coalesce(w.r ->> 'latest_end_lsn', '0/0')::pg_lsn, false) AS replayed_all,
       (SELECT setting::int8 FROM pg_settings WHERE name = 'wal_receiver_timeout') AS receiver_timeout_ms,
       (SELECT array_agg(quote_ident(s.subname::text)
                         || CASE WHEN NOT s.subenabled THEN ' (disabled)'
                                 WHEN NOT EXISTS (SELECT 1 FROM pg_stat_subscription AS w
                                                   WHERE w.subid = s.oid AND w.relid IS NULL AND w.pid IS NOT NULL)
                                 THEN ' (no worker)'
                                 WHEN EXISTS (SELECT 1 FROM pg_subscription_rel AS r
                                                JOIN pg_class AS c ON c.oid = r.srrelid
                                                JOIN pg_namespace AS n ON n.oid = c.relnamespace
                                               WHERE r.srsubid = s.oid AND n.nspname = $schema
                                                 AND c.relname = ANY($tables) AND r.srsubstate NOT IN ('r', 's'))
                                 THEN ' (copying)'
                                 ELSE '' END
                         ORDER BY s.subname)
          FROM pg_subscription AS s JOIN pg_database AS d ON d.oid = s.subdbid
         WHERE d.datname = current_database()
           AND EXISTS (SELECT 1 FROM pg_subscription_rel AS r
                         JOIN pg_class AS c ON c.oid = r.srrelid
                         JOIN pg_namespace AS n ON n.oid = c.relnamespace
                        WHERE r.srsubid = s.oid AND n.nspname = $schema AND c.relname = ANY($tables))) AS subscriptions,
       (SELECT w.r ->> 'sender_host') AS sender_host,
       (SELECT (w.r ->> 'sender_port')::int4) AS sender_port
FROM (SELECT 1) AS one
LEFT JOIN (SELECT to_jsonb(v) AS r FROM pg_stat_wal_receiver AS v) AS w ON true
