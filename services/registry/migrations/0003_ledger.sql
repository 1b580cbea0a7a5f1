-- The household ledger (户台账), a read model of the registry's own events kept by the
-- projection 'household-ledger' (services/registry/ledger.py). Rebuildable at any time:
-- everything here is derived from the event store.

CREATE TABLE IF NOT EXISTS ledger_households (
    household_id            uuid        PRIMARY KEY,
    village_code            char(12)    NOT NULL,
    county_code             char(6)     GENERATED ALWAYS AS (substr(village_code, 1, 6)) STORED,
    township_code           char(9)     GENERATED ALWAYS AS (substr(village_code, 1, 9)) STORED,
    status                  text        NOT NULL,
    attribute               text,
    identification_standard text,
    address                 text,
    head_member_id          uuid,
    primary_cause           text,
    causes                  text[]      NOT NULL DEFAULT '{}',
    monitoring_object_type  text,
    member_count            integer     NOT NULL DEFAULT 0,   -- active members
    version                 integer     NOT NULL,
    registered_on           date,
    updated_at              timestamptz NOT NULL DEFAULT now(),
    doc                     jsonb       NOT NULL              -- the full current state document
);

-- Region scopes are code ranges: village_code BETWEEN '620102000000' AND '620102999999'.
CREATE INDEX IF NOT EXISTS ledger_households_village_idx ON ledger_households (village_code, household_id);
CREATE INDEX IF NOT EXISTS ledger_households_county_idx ON ledger_households (county_code, household_id);
CREATE INDEX IF NOT EXISTS ledger_households_township_idx ON ledger_households (township_code, household_id);
CREATE INDEX IF NOT EXISTS ledger_households_status_idx ON ledger_households (status, household_id);
CREATE INDEX IF NOT EXISTS ledger_households_attribute_idx ON ledger_households (attribute, household_id);
CREATE INDEX IF NOT EXISTS ledger_households_primary_cause_idx ON ledger_households (primary_cause, household_id);
CREATE INDEX IF NOT EXISTS ledger_households_causes_idx ON ledger_households USING gin (causes);

CREATE TABLE IF NOT EXISTS ledger_members (
    member_id       uuid     PRIMARY KEY,
    household_id    uuid     NOT NULL,
    id_hmac         char(64),            -- NULL once the member's personal data is erased
    active          boolean  NOT NULL,
    relation        text     NOT NULL,
    sex             text     NOT NULL,
    birth_year      integer  NOT NULL,
    schooling_stage text,
    health          text[]   NOT NULL DEFAULT '{}'
);

CREATE INDEX IF NOT EXISTS ledger_members_household_idx ON ledger_members (household_id);
CREATE INDEX IF NOT EXISTS ledger_members_id_hmac_idx ON ledger_members (id_hmac) WHERE id_hmac IS NOT NULL;

-- The latest profile of each village (poverty incidence denominators).
CREATE TABLE IF NOT EXISTS ledger_villages (
    village_code          char(12)    PRIMARY KEY,
    effective_on          date        NOT NULL,
    rural_population      integer     NOT NULL,
    registered_population integer     NOT NULL,
    poor_village          boolean     NOT NULL,
    indicators            jsonb       NOT NULL DEFAULT '{}',
    updated_at            timestamptz NOT NULL DEFAULT now()
);
