-- The audit trail records an execution when it starts as well as when it ends, so a running
-- execution deleted from the store leaves a start record without an end.
--   event      'started' or 'ended'; rows written before this migration are 'ended' (their
--              hashed record has no "event" key, which reads as "ended").
--   signature  ed25519 signature (hex) of the chain head this row made, by the key `signer`
--   signer     (the key id: the first 16 hex characters of sha256 of the public key), when
--              the writer held a signing key; NULL otherwise.
-- One record per execution and event (the old UNIQUE (execution_id) allowed only one).

ALTER TABLE audit_log DROP CONSTRAINT audit_log_execution_id_key;
ALTER TABLE audit_log ADD COLUMN event TEXT NOT NULL DEFAULT 'ended';
ALTER TABLE audit_log ADD COLUMN signature TEXT;
ALTER TABLE audit_log ADD COLUMN signer TEXT;
CREATE UNIQUE INDEX audit_log_execution_event ON audit_log (execution_id, event);
