-- Projection bookkeeping, written in the same transaction as the read model.
CREATE TABLE IF NOT EXISTS projection_state (
    projection      text        PRIMARY KEY,
    epoch           integer     NOT NULL DEFAULT 1,
    rebuilt_at      timestamptz
);

-- Last version applied per source stream: redelivered and replayed events are no-ops.
CREATE TABLE IF NOT EXISTS projection_streams (
    projection      text    NOT NULL,
    stream_id       text    NOT NULL,
    version         integer NOT NULL,
    PRIMARY KEY (projection, stream_id)
);

-- Events that arrived ahead of a missing version (or behind a poison event in a
-- strict projection). The stream is held until the gap is filled.
CREATE TABLE IF NOT EXISTS projection_parked (
    projection      text        NOT NULL,
    stream_id       text        NOT NULL,
    version         integer     NOT NULL,
    envelope        jsonb       NOT NULL,
    reason          text        NOT NULL,
    parked_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (projection, stream_id, version)
);
