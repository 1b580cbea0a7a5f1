-- Administrative divisions: province, city, county (GB/T 2260, source
-- 'gb2260:<revision>'), township and village (statistical division codes,
-- source 'import', or synthetic, source 'generated'). Codes are 12 digits
-- (2+2+2+3+3); a county-level code 620102 is stored as 620102000000.
CREATE TABLE IF NOT EXISTS regions (
    code        char(12) PRIMARY KEY CHECK (code ~ '^[0-9]{12}$'),
    level       text     NOT NULL CHECK (level IN ('province', 'city', 'county', 'township', 'village')),
    parent_code char(12) REFERENCES regions (code),
    name        text     NOT NULL CHECK (btrim(name) <> ''),
    source      text     NOT NULL CHECK (source ~ '^(generated|import|gb2260(:[0-9A-Za-z._-]+)?)$'),
    valid_from  date,
    valid_to    date,
    CHECK (valid_to IS NULL OR valid_from IS NULL OR valid_to >= valid_from),
    CHECK ((level = 'province') = (parent_code IS NULL))
);

CREATE INDEX IF NOT EXISTS regions_parent_code_idx ON regions (parent_code);
CREATE INDEX IF NOT EXISTS regions_level_idx ON regions (level);
-- Prefix searches for descendants: code LIKE '620102%'.
CREATE INDEX IF NOT EXISTS regions_code_prefix_idx ON regions (code bpchar_pattern_ops);
