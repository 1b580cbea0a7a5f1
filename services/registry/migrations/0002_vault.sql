-- The personal-data vault: names, ID numbers and phones live only here, written in
-- the same transaction as the events that reference the member id.
CREATE TABLE IF NOT EXISTS person_vault (
    member_id    uuid PRIMARY KEY,
    household_id uuid NOT NULL,
    id_hmac      char(64) NOT NULL,
    id_number    text,
    name         text,
    phone        text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    erased_at    timestamptz,
    CHECK (erased_at IS NOT NULL OR (id_number IS NOT NULL AND name IS NOT NULL))
);
CREATE INDEX IF NOT EXISTS person_vault_hmac_idx ON person_vault (id_hmac);

-- One person (by ID number) belongs to at most one active household in the whole
-- register. The primary key enforces it, also against concurrent registrations.
CREATE TABLE IF NOT EXISTS active_persons (
    id_hmac      char(64) PRIMARY KEY,
    household_id uuid NOT NULL,
    member_id    uuid NOT NULL UNIQUE
);

-- Workflow decisions applied to the register (causation = the decision's event id).
CREATE TABLE IF NOT EXISTS applied_decisions (
    decision_event_id text PRIMARY KEY,
    household_id      uuid NOT NULL,
    applied_at        timestamptz NOT NULL DEFAULT now()
);
