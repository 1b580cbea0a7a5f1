-- Change requests: a cadre's proposed change to household data, which counts only
-- once a data_change review case approves it (services/registry/changes.py). The
-- proposed values may be sensitive, so they stay here; the ChangeRequested event
-- only names the fields. Written in the same transaction as the household events
-- (ChangeRequested when asked, the change and ChangeRequestApplied or
-- ChangeRequestClosed when the case concludes). Not a read model: not rebuildable.
CREATE TABLE IF NOT EXISTS change_requests (
    id                uuid        PRIMARY KEY,
    household_id      uuid        NOT NULL,
    kind              text        NOT NULL
                      CHECK (kind IN ('member_update', 'income', 'conditions', 'causes', 'coordinates', 'plan')),
    target            text,                           -- member id (member_update), year (income, plan)
    changes           jsonb       NOT NULL,           -- the body of the corresponding household command
    reason            text        NOT NULL,
    requested_by      text        NOT NULL,
    requested_at      timestamptz NOT NULL,
    base_version      integer     NOT NULL,           -- household version the change was validated against
    status            text        NOT NULL DEFAULT 'pending'
                      CHECK (status IN ('pending', 'applied', 'rejected', 'not_applicable')),
    case_id           text,                           -- the data_change case that concluded it
    decision_event_id text,                           -- that case's CaseConcluded event
    decided_at        timestamptz,
    closed_reason     text,                           -- why an approved change could not be applied
    CHECK ((status = 'pending') = (decided_at IS NULL))
);

CREATE INDEX IF NOT EXISTS change_requests_household_idx ON change_requests (household_id, requested_at DESC);
