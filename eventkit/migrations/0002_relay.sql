-- What the relay has published, so that it resumes where it stopped.
CREATE TABLE IF NOT EXISTS relay_checkpoint (
    relay           text        PRIMARY KEY,
    position        bigint      NOT NULL DEFAULT 0,
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- Offsets the broker acknowledged per partition: the highest one, and the lowest
-- one of the last publish call. If the partition's end offset falls to or below
-- the latter, or a new acknowledgement is not above the former, the broker lost
-- data and the relay republishes. (The lower bound tolerates brokers that report
-- the end offset as "base offset of the last batch + 1", as Tansu 0.6 does.)
CREATE TABLE IF NOT EXISTS relay_partition_offsets (
    relay           text    NOT NULL,
    topic           text    NOT NULL,
    partition       integer NOT NULL,
    last_offset     bigint  NOT NULL,
    batch_first_offset bigint NOT NULL,
    PRIMARY KEY (relay, topic, partition)
);
