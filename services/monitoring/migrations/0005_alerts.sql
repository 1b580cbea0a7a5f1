-- Return-risk alerts: the facts the rules read (projection risk-facts), cadres' reports,
-- and the alerts as they stand (written with their events).
CREATE TABLE mon_risk_events (
    household_id text    NOT NULL,
    version      integer NOT NULL,
    event_type   text    NOT NULL,
    data         jsonb   NOT NULL,
    PRIMARY KEY (household_id, version)
);

CREATE TABLE mon_medical_requests (
    disbursement_id text PRIMARY KEY,
    household_id    text NOT NULL,
    position        bigint NOT NULL,
    data            jsonb NOT NULL
);
CREATE INDEX mon_medical_requests_household ON mon_medical_requests (household_id, position);

CREATE TABLE mon_reports (
    report_id    text PRIMARY KEY,
    household_id text NOT NULL,
    reported_by  text NOT NULL,
    data         jsonb NOT NULL
);
CREATE INDEX mon_reports_household ON mon_reports (household_id);

CREATE TABLE mon_alerts (
    alert_id     text PRIMARY KEY,
    household_id text NOT NULL,
    village_code text NOT NULL,
    rule         text NOT NULL,
    risk         text NOT NULL,
    severity     text NOT NULL,
    state        text NOT NULL,
    level        text NOT NULL,
    is_open      boolean NOT NULL,
    raised_at    timestamptz NOT NULL,
    updated_at   timestamptz NOT NULL,
    finding_id   text NOT NULL,
    version      integer NOT NULL
);
-- The same risk for the same household is not raised twice while an alert is open.
CREATE UNIQUE INDEX mon_alerts_open_key ON mon_alerts (household_id, risk) WHERE is_open;
CREATE INDEX mon_alerts_village ON mon_alerts (village_code text_pattern_ops, state);

-- Findings already raised (by their evidence key): the same evidence never raises a second alert.
CREATE TABLE mon_findings (
    finding_id text PRIMARY KEY,
    alert_id   text NOT NULL
);
