-- Funds service tables besides the event store (eventkit migrations) and the ledger (0002).

-- The registry's household events that eligibility reads, kept per household in stream
-- order (projection registry-households); HouseholdFacts is their fold.
CREATE TABLE fd_household_events (
    household_id text    NOT NULL,
    version      integer NOT NULL,
    event_type   text    NOT NULL,
    data         jsonb   NOT NULL,
    PRIMARY KEY (household_id, version)
);

-- Command side: one live disbursement per entitlement (payment_key), written in the same
-- transaction as the request; the row goes when the disbursement fails or is reversed.
CREATE TABLE fd_payment_keys (
    beneficiary_kind text NOT NULL,
    beneficiary_id   text NOT NULL,
    policy_group     text NOT NULL,
    period           text NOT NULL,
    disbursement_id  text NOT NULL UNIQUE,
    PRIMARY KEY (beneficiary_kind, beneficiary_id, policy_group, period)
);

-- Command side: every disbursement as it stands, updated with its events (anomaly rules,
-- reconciliation matching by channel reference, lists).
CREATE TABLE fd_disbursements (
    disbursement_id   text PRIMARY KEY,
    household_id      text NOT NULL,
    member_id         text,
    village_code      text NOT NULL,
    basis             text NOT NULL,
    policy_code       text,
    policy_group      text,
    policy_unit       text,
    cost_basis        numeric(14, 2),
    project_id        text,
    period            text NOT NULL,
    amount            numeric(14, 2) NOT NULL,
    status            text NOT NULL,
    allocation_id     text,
    paid_on           date,
    channel           text,
    channel_reference text,
    account_hash      text,
    account_masked    text,
    version           integer NOT NULL
);
CREATE INDEX fd_disbursements_household ON fd_disbursements (household_id);
CREATE INDEX fd_disbursements_reference ON fd_disbursements (channel, channel_reference);
CREATE INDEX fd_disbursements_account ON fd_disbursements (account_hash) WHERE account_hash IS NOT NULL;
CREATE INDEX fd_disbursements_project ON fd_disbursements (project_id) WHERE project_id IS NOT NULL;

-- Imported payment-channel statements and their reconciliation exceptions.
CREATE TABLE fd_statements (
    statement_id text PRIMARY KEY,
    channel      text NOT NULL,
    file_sha256  text NOT NULL UNIQUE,
    imported_at  timestamptz NOT NULL DEFAULT now(),
    lines        integer NOT NULL,
    matched      integer NOT NULL,
    exceptions   integer NOT NULL
);

CREATE TABLE fd_reconciliation_exceptions (
    statement_id    text    NOT NULL REFERENCES fd_statements (statement_id),
    line_no         integer NOT NULL,
    reference       text,
    kind            text    NOT NULL,
    detail          text    NOT NULL,
    disbursement_id text,
    PRIMARY KEY (statement_id, line_no)
);
