-- Counter flushes already applied, so a flush retried after an ambiguous failure (the
-- connection broke around COMMIT) is not added twice. Rows older than a day are pruned by the
-- flushes themselves.
CREATE TABLE IF NOT EXISTS counter_flushes (
    flush_id   uuid        PRIMARY KEY,
    flushed_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS counter_flushes_by_age ON counter_flushes (flushed_at);
