-- The audit trail: one record per ended execution, hash-chained so that an edited, removed or
-- reordered record is detected by `stigmer audit verify`.
--   hash = sha256(prev_hash || record), hex; the first record's prev_hash is 64 zeros.
-- `record` is the canonical JSON text that was hashed; the other columns copy fields of it for
-- lookups and are checked against it. Timestamps are unix milliseconds.

CREATE TABLE audit_log (
    seq          INTEGER PRIMARY KEY,
    execution_id TEXT NOT NULL UNIQUE,
    recorded_at  INTEGER NOT NULL,
    record       TEXT NOT NULL,
    prev_hash    TEXT NOT NULL,
    hash         TEXT NOT NULL
);
CREATE INDEX audit_log_recorded ON audit_log (recorded_at);

-- The chain head: one row, the last appended seq and hash. Appends lock it (the write
-- transaction on SQLite, SELECT … FOR UPDATE on Postgres), so several workers append one chain.
CREATE TABLE audit_head (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    seq  INTEGER NOT NULL,
    hash TEXT NOT NULL
);
INSERT INTO audit_head (id, seq, hash)
VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');
