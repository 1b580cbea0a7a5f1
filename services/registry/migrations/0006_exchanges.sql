-- Bulk comparison jobs of departments' ID files. Items keep the keyed hash and the masked
-- ID only (the plain number is hashed as soon as the file is read); ``result`` is the answer
-- for the job's purpose, filled batch by batch by the job worker.
CREATE TABLE IF NOT EXISTS comparison_jobs (
    job_id       uuid        PRIMARY KEY,
    owner        text        NOT NULL,            -- principal subject (user:<id> or client:<id>)
    purpose      text        NOT NULL,
    jurisdiction char(12)    NOT NULL,            -- the owner's, when the job was created
    status       text        NOT NULL CHECK (status IN ('queued', 'running', 'done', 'failed')),
    total        integer     NOT NULL,
    processed    integer     NOT NULL DEFAULT 0,
    matched      integer     NOT NULL DEFAULT 0,
    invalid      integer     NOT NULL DEFAULT 0,
    error        text,
    attempts     integer     NOT NULL DEFAULT 0,     -- failed tries (failed after 3)
    created_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz
);
CREATE INDEX IF NOT EXISTS comparison_jobs_pending_idx ON comparison_jobs (created_at)
    WHERE status IN ('queued', 'running');

CREATE TABLE IF NOT EXISTS comparison_job_items (
    job_id    uuid     NOT NULL REFERENCES comparison_jobs (job_id) ON DELETE CASCADE,
    idx       integer  NOT NULL,                  -- position in the file
    row_no    integer  NOT NULL,                  -- the row a spreadsheet user sees
    id_hmac   char(64),                           -- NULL for an invalid ID
    id_masked text,
    error     text,
    result    jsonb,
    PRIMARY KEY (job_id, idx)
);
CREATE INDEX IF NOT EXISTS comparison_job_items_todo_idx ON comparison_job_items (job_id, idx) WHERE result IS NULL;

-- Files received from departments (by content hash): a file is received once.
CREATE TABLE IF NOT EXISTS inbound_files (
    sha256      char(64)    PRIMARY KEY,
    kind        text        NOT NULL,
    received_by text        NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);

-- Change requests may remove a member (a death reported by civil registration, reviewed first).
ALTER TABLE change_requests DROP CONSTRAINT IF EXISTS change_requests_kind_check;
ALTER TABLE change_requests ADD CONSTRAINT change_requests_kind_check
    CHECK (kind IN ('member_update', 'income', 'conditions', 'causes', 'coordinates', 'plan', 'member_removal'));
