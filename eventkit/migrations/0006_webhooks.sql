-- Outgoing webhooks (eventkit.webhooks): endpoints, one delivery per message and endpoint,
-- and a log of every attempt. Signed per Standard Webhooks v1.
CREATE TABLE IF NOT EXISTS webhook_subscriptions (
    id              uuid        PRIMARY KEY,
    url             text        NOT NULL,
    -- The shared HMAC secret ("whsec_" + base64), stored as given: the receiver holds the
    -- same secret to verify signatures. Treat the column as a credential.
    secret          text        NOT NULL,
    event_types     text[],     -- NULL: every event type
    description     text        NOT NULL DEFAULT '',
    active          boolean     NOT NULL DEFAULT true,
    disabled_reason text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS webhook_deliveries (
    id               uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    subscription_id  uuid        NOT NULL REFERENCES webhook_subscriptions (id) ON DELETE CASCADE,
    message_id       text        NOT NULL,  -- the webhook-id header: same for every attempt
    event_type       text        NOT NULL,
    payload          jsonb       NOT NULL,
    occurred_at      timestamptz NOT NULL DEFAULT now(),
    -- pending: not tried yet; failed: the last attempt failed, retried at next_attempt_at;
    -- delivered: a 2xx answer; dead: no more attempts (exhausted, or the endpoint was disabled).
    status           text        NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'delivered', 'failed', 'dead')),
    attempts         integer     NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz DEFAULT now(),  -- also the lease of an attempt in flight
    lease_token      uuid,
    last_status_code integer,
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    delivered_at     timestamptz,
    CONSTRAINT webhook_deliveries_message_key UNIQUE (subscription_id, message_id)
);

CREATE INDEX IF NOT EXISTS webhook_deliveries_due_idx ON webhook_deliveries (next_attempt_at)
    WHERE status IN ('pending', 'failed');
CREATE INDEX IF NOT EXISTS webhook_deliveries_created_idx ON webhook_deliveries (created_at);

CREATE TABLE IF NOT EXISTS webhook_attempts (
    id              bigserial   PRIMARY KEY,
    delivery_id     uuid        NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    attempt         integer     NOT NULL,
    attempted_at    timestamptz NOT NULL DEFAULT now(),
    status_code     integer,
    error           text,
    duration_ms     integer     NOT NULL
);

CREATE INDEX IF NOT EXISTS webhook_attempts_delivery_idx ON webhook_attempts (delivery_id, id);
