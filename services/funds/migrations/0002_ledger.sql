-- The funds double-entry ledger (资金台账), a read model kept by the projection 'funds-ledger'
-- (services/funds/ledger.py) from the allocation, project and disbursement topics. Every
-- table is derived from events and can be rebuilt at any time (TRUNCATE + replay); the
-- chart of accounts is described in the module docstring of services/funds/ledger.py.
--
-- Money is numeric(14,2) (yuan), never floating point. The CHECK constraints are the
-- ledger's own invariants: an event that would break one fails, and the strict
-- projection holds its stream instead of letting the ledger drift.

-- Every event the ledger has applied, once (idempotency under redelivery and replay).
CREATE TABLE IF NOT EXISTS ledger_events (
    event_id        uuid        PRIMARY KEY,
    event_type      text        NOT NULL,
    stream_type     text        NOT NULL,
    stream_id       text        NOT NULL,
    version         integer     NOT NULL,
    global_position bigint      NOT NULL,
    applied_at      timestamptz NOT NULL DEFAULT now()
);

-- One row per posting line. The lines of one event balance: sum(debit) = sum(credit).
-- Dimensions: allocation_id always; project_id for project reservations and payments;
-- disbursement_id for policy reservations and for every payment and reversal. Household,
-- village, policy and year of a payment come from ledger_disbursements, joined at query
-- time: the disbursement's own events may arrive after the allocation's FundsSpent.
CREATE TABLE IF NOT EXISTS ledger_postings (
    event_id        uuid          NOT NULL,
    line_no         smallint      NOT NULL CHECK (line_no >= 1),
    account         text          NOT NULL,
    debit           numeric(14,2) NOT NULL DEFAULT 0 CHECK (debit >= 0),
    credit          numeric(14,2) NOT NULL DEFAULT 0 CHECK (credit >= 0),
    event_type      text          NOT NULL,
    occurred        date          NOT NULL,   -- the event's business date (China date)
    allocation_id   uuid          NOT NULL,
    project_id      uuid,
    disbursement_id uuid,
    PRIMARY KEY (event_id, line_no),
    CONSTRAINT ledger_postings_one_side CHECK ((debit = 0) <> (credit = 0))
);

CREATE INDEX IF NOT EXISTS ledger_postings_account_idx ON ledger_postings (account, occurred);
CREATE INDEX IF NOT EXISTS ledger_postings_allocation_idx ON ledger_postings (allocation_id, occurred);
CREATE INDEX IF NOT EXISTS ledger_postings_project_idx ON ledger_postings (project_id) WHERE project_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS ledger_postings_disbursement_idx ON ledger_postings (disbursement_id)
    WHERE disbursement_id IS NOT NULL;

-- Running balance of every account (debit minus credit), updated with its postings.
-- Source accounts are credit-normal (balance <= 0: minus what was allocated); allocation
-- accounts are debit-normal and never negative.
CREATE TABLE IF NOT EXISTS ledger_balances (
    account       text          PRIMARY KEY,
    kind          text          NOT NULL CHECK (kind IN ('source', 'available', 'reserved', 'paid')),
    source        text          NOT NULL,
    year          integer       NOT NULL,
    allocation_id uuid,                      -- NULL for source accounts
    debits        numeric(16,2) NOT NULL DEFAULT 0,
    credits       numeric(16,2) NOT NULL DEFAULT 0,
    balance       numeric(16,2) NOT NULL DEFAULT 0,
    updated_at    timestamptz   NOT NULL DEFAULT now(),
    CONSTRAINT ledger_balances_sign CHECK (CASE WHEN kind = 'source' THEN balance <= 0 ELSE balance >= 0 END),
    CONSTRAINT ledger_balances_running CHECK (balance = debits - credits),
    CONSTRAINT ledger_balances_allocation CHECK ((kind = 'source') = (allocation_id IS NULL))
);

CREATE INDEX IF NOT EXISTS ledger_balances_source_year_idx ON ledger_balances (source, year, kind);
CREATE INDEX IF NOT EXISTS ledger_balances_allocation_idx ON ledger_balances (allocation_id)
    WHERE allocation_id IS NOT NULL;

-- Allocations (budget lines) as their own events state them: available = amount - reserved - spent.
CREATE TABLE IF NOT EXISTS ledger_allocations (
    allocation_id uuid          PRIMARY KEY,
    source        text          NOT NULL,
    year          integer       NOT NULL,
    purpose       text          NOT NULL,
    region_code   text          NOT NULL,
    amount        numeric(14,2) NOT NULL CHECK (amount >= 0),
    reserved      numeric(14,2) NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    spent         numeric(14,2) NOT NULL DEFAULT 0 CHECK (spent >= 0),
    available     numeric(14,2) GENERATED ALWAYS AS (amount - reserved - spent) STORED,
    created_on    date          NOT NULL,
    version       integer       NOT NULL,
    updated_at    timestamptz   NOT NULL DEFAULT now(),
    CONSTRAINT ledger_allocations_no_overdraft CHECK (amount - reserved - spent >= 0)
);

CREATE INDEX IF NOT EXISTS ledger_allocations_source_year_idx ON ledger_allocations (source, year);
CREATE INDEX IF NOT EXISTS ledger_allocations_region_idx ON ledger_allocations (region_code);

-- What is still held per reservation (a project's funding line or a policy disbursement).
CREATE TABLE IF NOT EXISTS ledger_reservations (
    allocation_id uuid          NOT NULL,
    ref_type      text          NOT NULL CHECK (ref_type IN ('project', 'disbursement')),
    ref_id        uuid          NOT NULL,
    reserved      numeric(14,2) NOT NULL CHECK (reserved >= 0),
    PRIMARY KEY (allocation_id, ref_type, ref_id)
);

CREATE INDEX IF NOT EXISTS ledger_reservations_ref_idx ON ledger_reservations (ref_type, ref_id);

-- Projects as their own events state them (the project stream): committed and paid follow
-- ProjectPaymentCommitted / Recorded / Released.
CREATE TABLE IF NOT EXISTS ledger_projects (
    project_id      uuid          PRIMARY KEY,
    name            text          NOT NULL,
    kind            text          NOT NULL,
    region_code     text          NOT NULL,   -- village (12 digits) or township (9, or 12 ending 000)
    plan_year       integer       NOT NULL,
    status          text          NOT NULL,
    budget          numeric(14,2) NOT NULL CHECK (budget >= 0),
    approved_budget numeric(14,2) CHECK (approved_budget >= 0),
    committed       numeric(14,2) NOT NULL DEFAULT 0 CHECK (committed >= 0),
    paid            numeric(14,2) NOT NULL DEFAULT 0 CHECK (paid >= 0),
    beneficiaries   integer       NOT NULL,   -- number of covered households
    milestones      integer       NOT NULL DEFAULT 0,
    declared_on     date          NOT NULL,
    approved_on     date,
    started_on      date,
    completed_on    date,
    closed_on       date,                     -- accepted, rejected or cancelled
    version         integer       NOT NULL,
    updated_at      timestamptz   NOT NULL DEFAULT now(),
    CONSTRAINT ledger_projects_within_budget CHECK (
        approved_budget IS NULL OR committed + paid <= approved_budget)
);

CREATE INDEX IF NOT EXISTS ledger_projects_region_idx ON ledger_projects (region_code, plan_year);

CREATE TABLE IF NOT EXISTS ledger_project_households (
    project_id   uuid NOT NULL,
    household_id uuid NOT NULL,
    PRIMARY KEY (project_id, household_id)
);

CREATE INDEX IF NOT EXISTS ledger_project_households_household_idx ON ledger_project_households (household_id);

-- A project's funding lines (approved) and what acceptance or cancellation released of each.
CREATE TABLE IF NOT EXISTS ledger_project_funding (
    project_id    uuid          NOT NULL,
    allocation_id uuid          NOT NULL,
    amount        numeric(14,2) NOT NULL CHECK (amount >= 0),
    released      numeric(14,2) NOT NULL DEFAULT 0 CHECK (released >= 0),
    PRIMARY KEY (project_id, allocation_id),
    CONSTRAINT ledger_project_funding_released CHECK (released <= amount)
);

-- Disbursements (the disbursement stream): the dimensions of the payments in ledger_postings.
-- No names or account numbers: the account only masked.
CREATE TABLE IF NOT EXISTS ledger_disbursements (
    disbursement_id uuid          PRIMARY KEY,
    household_id    uuid          NOT NULL,
    member_id       uuid,
    village_code    char(12)      NOT NULL,
    basis           text          NOT NULL CHECK (basis IN ('policy', 'project')),
    policy_code     text,
    policy_group    text,
    project_id      uuid,
    period          text          NOT NULL,
    year            integer       NOT NULL,   -- the year of the period
    amount          numeric(14,2) NOT NULL CHECK (amount >= 0),
    status          text          NOT NULL,
    allocation_id   uuid,
    requested_on    date          NOT NULL,
    paid_on         date,
    reversed_on     date,
    channel         text,
    account_masked  text,
    version         integer       NOT NULL,
    updated_at      timestamptz   NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS ledger_disbursements_household_idx ON ledger_disbursements (household_id, year);
CREATE INDEX IF NOT EXISTS ledger_disbursements_village_idx ON ledger_disbursements (village_code, year);
CREATE INDEX IF NOT EXISTS ledger_disbursements_project_idx ON ledger_disbursements (project_id)
    WHERE project_id IS NOT NULL;
