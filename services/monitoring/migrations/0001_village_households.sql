-- Households and people per village, from the registry's household events.
CREATE TABLE IF NOT EXISTS village_households (
    village_code    char(12)    PRIMARY KEY,
    households      integer     NOT NULL DEFAULT 0,
    people          integer     NOT NULL DEFAULT 0,
    updated_at      timestamptz NOT NULL DEFAULT now()
);
