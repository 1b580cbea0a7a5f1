-- Attendance: what the registry says about households and pairings (projection
-- household-geo), and a mirror of the cadres' attendance events written with them
-- (visits, contacts, team days by China date) for duty compliance and dashboards.
CREATE TABLE mon_households (
    household_id text PRIMARY KEY,
    village_code text NOT NULL,
    latitude     double precision,
    longitude    double precision
);

CREATE TABLE mon_pairings (
    cadre_id     text NOT NULL,
    household_id text NOT NULL,
    village_code text NOT NULL,
    assigned_on  date NOT NULL,
    released_on  date,
    PRIMARY KEY (cadre_id, household_id, assigned_on)
);
CREATE INDEX mon_pairings_household ON mon_pairings (household_id);

CREATE TABLE mon_attendance (
    event_id         text PRIMARY KEY,
    cadre_id         text NOT NULL,
    kind             text NOT NULL CHECK (kind IN ('visit', 'contact', 'team_day')),
    household_id     text,
    village_code     text,
    day              date NOT NULL,
    outside_geofence boolean NOT NULL DEFAULT false,
    impossible_travel boolean NOT NULL DEFAULT false
);
CREATE INDEX mon_attendance_cadre ON mon_attendance (cadre_id, day);
CREATE INDEX mon_attendance_village ON mon_attendance (village_code text_pattern_ops, day);
