-- Dashboard read models (projection dashboard, services/monitoring/dashboard.py): one row per
-- household, village profile, allocation, payment and open review case, so that every
-- dashboard figure is an SQL aggregate over a region prefix, never a scan of events.
CREATE TABLE dash_households (
    household_id  text PRIMARY KEY,
    village_code  text NOT NULL,
    status        text NOT NULL,
    people        integer NOT NULL DEFAULT 0,
    primary_cause text,
    monitoring    text
);
CREATE INDEX dash_households_village ON dash_households (village_code text_pattern_ops);

CREATE TABLE dash_villages (
    village_code     text PRIMARY KEY,
    rural_population integer NOT NULL,
    poor_village     boolean NOT NULL,
    effective_on     date NOT NULL
);

CREATE TABLE dash_allocations (
    allocation_id text PRIMARY KEY,
    source        text NOT NULL,
    year          integer NOT NULL
);

CREATE TABLE dash_payments (
    disbursement_id text PRIMARY KEY,
    household_id    text NOT NULL,
    village_code    text NOT NULL,
    policy_code     text,
    project_id      text,
    allocation_id   text,
    amount          numeric(14, 2) NOT NULL,
    status          text NOT NULL,
    paid_on         date
);
CREATE INDEX dash_payments_village ON dash_payments (village_code text_pattern_ops);

CREATE TABLE dash_cases (
    case_id      text PRIMARY KEY,
    case_type    text NOT NULL,
    village_code text NOT NULL,
    current_step text,
    overdue      boolean NOT NULL DEFAULT false,
    open         boolean NOT NULL DEFAULT true
);
CREATE INDEX dash_cases_village ON dash_cases (village_code text_pattern_ops) WHERE open;
