-- The audit trail records an execution when it starts as well as when it ends, so a running
-- execution deleted from the store leaves a start record without an end.
--   event      'started' or 'ended'; rows written before this migration are 'ended' (their
--              hashed record has no "event" key, which reads as "ended").
--   signature  ed25519 signature (hex) of the chain head this row made, by the key `signer`
--   signer     (the key id: the first 16 hex characters of sha256 of the public key), when
--              the writer held a signing key; NULL otherwise.
-- One record per execution and event. SQLite cannot drop the old UNIQUE (execution_id), so the
-- table is rebuilt with the same rows, byte for byte.

CREATE TABLE audit_log_v2 (
    seq          INTEGER PRIMARY KEY,
    execution_id TEXT NOT NULL,
    event        TEXT NOT NULL DEFAULT 'ended',
    recorded_at  INTEGER NOT NULL,
    record       TEXT NOT NULL,
    prev_hash    TEXT NOT NULL,
    hash         TEXT NOT NULL,
    signature    TEXT,
    signer       TEXT
);
INSERT INTO audit_log_v2 (seq, execution_id, event, recorded_at, record, prev_hash, hash)
SELECT seq, execution_id, 'ended', recorded_at, record, prev_hash, hash FROM audit_log;
DROP TABLE audit_log;
ALTER TABLE audit_log_v2 RENAME TO audit_log;
CREATE UNIQUE INDEX audit_log_execution_event ON audit_log (execution_id, event);
CREATE INDEX audit_log_recorded ON audit_log (recorded_at);
