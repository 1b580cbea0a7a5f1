-- Subsidy records from other departments (services/funds/subsidies.py, subsidy_api.py): payments a
-- department's own system made, imported quarterly and recorded as DepartmentPaymentRecorded.

-- One row per imported file. A file is identified by its SHA-256 within its payer (department and
-- the importer's jurisdiction): the same file again is a 409. `report` lists, by row number only,
-- what was recorded, found already recorded or skipped (no ID numbers, no names).
CREATE TABLE fd_subsidy_imports (
    import_id          text        PRIMARY KEY,
    department         text        NOT NULL,
    payer_jurisdiction text        NOT NULL,
    quarter            text        NOT NULL,
    file_sha256        text        NOT NULL,
    format             text        NOT NULL,
    rows               integer     NOT NULL,
    recorded           integer     NOT NULL,
    already_recorded   integer     NOT NULL,
    skipped            integer     NOT NULL,
    total_amount       numeric(16, 2) NOT NULL,
    imported_by        text        NOT NULL,
    imported_at        timestamptz NOT NULL DEFAULT now(),
    report             jsonb       NOT NULL,
    UNIQUE (department, payer_jurisdiction, file_sha256)
);

-- Every recorded department payment by the department's own reference: idempotency per
-- (department, jurisdiction, reference). `fingerprint` (SHA-256 of household, member, policy,
-- period, amount, date and channel) tells a re-sent record from a conflicting one.
CREATE TABLE fd_subsidy_records (
    department         text    NOT NULL,
    payer_jurisdiction text    NOT NULL,
    reference          text    NOT NULL,
    disbursement_id    text    NOT NULL UNIQUE,
    import_id          text    NOT NULL REFERENCES fd_subsidy_imports (import_id),
    row_no             integer NOT NULL,
    fingerprint        text    NOT NULL,
    PRIMARY KEY (department, payer_jurisdiction, reference)
);

-- Matching a department's rows to members: by the keyed hash of the ID number (when the service
-- holds the registry's hashing key) or by member id, among the registry events funds keeps.
CREATE INDEX fd_household_events_member_hmac ON fd_household_events ((data->>'id_hmac'))
    WHERE event_type = 'MemberAdded';
CREATE INDEX fd_household_events_member_id ON fd_household_events ((data->>'member_id'))
    WHERE event_type = 'MemberAdded';

-- The ledger's department accounts (services/funds/ledger.py): department:<dept>:<year> (credit)
-- and paid:department:<dept>:<year> (debit), with no allocation.
ALTER TABLE ledger_postings ALTER COLUMN allocation_id DROP NOT NULL;
ALTER TABLE ledger_balances DROP CONSTRAINT ledger_balances_kind_check;
ALTER TABLE ledger_balances ADD CONSTRAINT ledger_balances_kind_check
    CHECK (kind IN ('source', 'available', 'reserved', 'paid', 'department', 'department_paid'));
ALTER TABLE ledger_balances DROP CONSTRAINT ledger_balances_sign;
ALTER TABLE ledger_balances ADD CONSTRAINT ledger_balances_sign
    CHECK (CASE WHEN kind IN ('source', 'department') THEN balance <= 0 ELSE balance >= 0 END);
ALTER TABLE ledger_balances DROP CONSTRAINT ledger_balances_allocation;
ALTER TABLE ledger_balances ADD CONSTRAINT ledger_balances_allocation
    CHECK ((kind IN ('source', 'department', 'department_paid')) = (allocation_id IS NULL));

-- The paying department of a department's payment (null for the platform's own disbursements).
ALTER TABLE ledger_disbursements ADD COLUMN department text;
