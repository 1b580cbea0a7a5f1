-- A client system's name is unique within its jurisdiction: registering the same system twice
-- (a retried request) is a 409, not a second client with a second secret. Secrets are never
-- stored with a remembered response, so registration cannot be replayed by Idempotency-Key.
CREATE UNIQUE INDEX IF NOT EXISTS accounts_client_name_idx ON accounts (jurisdiction, name)
    WHERE principal_type = 'client';
