-- Bulk imports of household files (services/registry/importer.py): one row per
-- upload or `tpa import households` run. The events carry the run's correlation id:
-- the import id for the CLI, the HTTP request's correlation id for the API.
CREATE TABLE IF NOT EXISTS imports (
    import_id                   uuid PRIMARY KEY,
    file_name                   text,
    file_format                 text CHECK (file_format IN ('xlsx', 'csv')),
    file_sha256                 char(64) NOT NULL,
    file_size                   bigint NOT NULL CHECK (file_size >= 0),
    skip_invalid                boolean NOT NULL,
    actor                       text,
    status                      text NOT NULL
                                CHECK (status IN ('running', 'imported', 'partial', 'rejected', 'failed')),
    households_in_file          integer NOT NULL DEFAULT 0,
    members_in_file             integer NOT NULL DEFAULT 0,
    households_imported         integer NOT NULL DEFAULT 0,
    members_imported            integer NOT NULL DEFAULT 0,
    households_skipped          integer NOT NULL DEFAULT 0,
    households_already_imported integer NOT NULL DEFAULT 0,
    error_count                 integer NOT NULL DEFAULT 0,
    report                      jsonb,  -- the report as returned (errors capped at 10,000)
    started_at                  timestamptz NOT NULL DEFAULT now(),
    finished_at                 timestamptz
);

CREATE INDEX IF NOT EXISTS imports_sha256_idx ON imports (file_sha256);
CREATE INDEX IF NOT EXISTS imports_started_at_idx ON imports (started_at DESC);
