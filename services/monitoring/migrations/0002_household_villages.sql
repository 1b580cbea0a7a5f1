-- Which village each household is in: member events carry only the household id.
CREATE TABLE IF NOT EXISTS household_villages (
    household_id text     PRIMARY KEY,
    village_code char(12) NOT NULL
);
