-- Remembered results are expired by age (eventkit.idempotency.expire).
CREATE INDEX IF NOT EXISTS idempotency_keys_created_at_idx ON idempotency_keys (created_at);
