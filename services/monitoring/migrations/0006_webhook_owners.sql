-- A webhook subscription belongs to the jurisdiction of the principal who created it: it is
-- sent only the alerts of villages within that jurisdiction, and only callers whose
-- jurisdiction covers it may list, inspect or deactivate it (services/monitoring/delivery.py).
-- A subscription without a row here (created before this table) is sent nothing and is
-- visible to province-level callers only.
CREATE TABLE mon_webhook_owners (
    subscription_id uuid PRIMARY KEY REFERENCES webhook_subscriptions (id) ON DELETE CASCADE,
    jurisdiction    text NOT NULL,  -- 12-digit region code of the creator's jurisdiction
    region_prefix   text NOT NULL,  -- its code prefix: alerts whose village_code LIKE region_prefix || '%'
    created_by      text NOT NULL   -- the creator's subject (user:<id> or client:<id>)
);
CREATE INDEX mon_webhook_owners_prefix ON mon_webhook_owners (region_prefix text_pattern_ops);
