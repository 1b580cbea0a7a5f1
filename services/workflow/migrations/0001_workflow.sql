-- Workflow service tables besides the event store (eventkit migrations).

-- Local projection of the registry's households (topic tpa.registry.household.v1):
-- what opening and deciding cases need to know about a household, nothing personal.
CREATE TABLE wf_households (
    household_id   text PRIMARY KEY,
    village_code   text NOT NULL,
    status         text NOT NULL,
    head_member_id text,
    monitoring     text,            -- monitoring object type while designated
    updated_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX wf_households_village ON wf_households (village_code);

CREATE TABLE wf_members (
    member_id    text PRIMARY KEY,
    household_id text NOT NULL,
    relation     text,
    name_masked  text,              -- blanked when the registry erases the member's personal data
    active       boolean NOT NULL DEFAULT true
);
CREATE INDEX wf_members_household ON wf_members (household_id);

-- Monitoring alerts that asked for verification before the household was known here.
CREATE TABLE wf_pending_alerts (
    alert_id     text PRIMARY KEY,
    household_id text NOT NULL,
    envelope     jsonb NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX wf_pending_alerts_household ON wf_pending_alerts (household_id);

-- Command side: at most one open case per (type, household, subject). Written in the
-- same transaction as the case's events; the row goes when the case concludes.
CREATE TABLE wf_open_cases (
    case_type    text NOT NULL,
    household_id text NOT NULL,
    subject      text NOT NULL DEFAULT '',
    case_id      text NOT NULL UNIQUE,
    PRIMARY KEY (case_type, household_id, subject)
);

-- Read model of cases (topic tpa.workflow.case.v1), see services/workflow/board.py.
CREATE TABLE wf_cases (
    case_id          text PRIMARY KEY,
    case_type        text NOT NULL,
    household_id     text NOT NULL,
    village_code     text NOT NULL,
    subject          text,
    opened_by        text NOT NULL,
    opened_at        timestamptz NOT NULL,
    status           text NOT NULL CHECK (status IN ('open', 'closed')),
    outcome          text,
    closed_on        date,
    current_step     text,
    step_kind        text,
    step_role        text,
    step_level       text,
    step_entered_at  timestamptz,
    due_at           timestamptz,
    overdue_flagged  boolean NOT NULL DEFAULT false,
    notice_id        text,
    notice_ends_at   timestamptz,
    open_objections  integer NOT NULL DEFAULT 0,
    comparison_hits  integer NOT NULL DEFAULT 0,
    comparisons      jsonb NOT NULL DEFAULT '{}'::jsonb,
    version          integer NOT NULL
);
CREATE INDEX wf_cases_village ON wf_cases (village_code text_pattern_ops);
CREATE INDEX wf_cases_inbox ON wf_cases (step_role, step_level, village_code text_pattern_ops)
    WHERE status = 'open';
CREATE INDEX wf_cases_due ON wf_cases (due_at) WHERE status = 'open';
CREATE INDEX wf_cases_household ON wf_cases (household_id);

CREATE TABLE wf_notices (
    case_id          text NOT NULL,
    notice_id        text NOT NULL,
    village_code     text NOT NULL,
    household_id     text NOT NULL,
    case_type        text NOT NULL,
    step_id          text NOT NULL,
    starts_at        timestamptz NOT NULL,
    ends_at          timestamptz NOT NULL,
    ended_at         timestamptz,     -- when the step was decided or the case closed
    objections       integer NOT NULL DEFAULT 0,
    open_objection_ids text[] NOT NULL DEFAULT '{}',
    PRIMARY KEY (case_id, notice_id)
);
CREATE INDEX wf_notices_board ON wf_notices (village_code, ends_at);
