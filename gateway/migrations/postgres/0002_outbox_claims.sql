-- A delivery in progress holds its outbox row until `claimed_until` (unix seconds), so two
-- gateway replicas sharing this database, or one gateway's retry sweep and its own live send,
-- never send the same reply twice. A row with no claim, or an expired one, is free to deliver.
ALTER TABLE outbox ADD COLUMN claimed_by TEXT;
ALTER TABLE outbox ADD COLUMN claimed_until BIGINT;
