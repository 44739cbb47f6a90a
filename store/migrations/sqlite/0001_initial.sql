-- The store: executions (the audit record), their output, container leases, worker liveness.
-- Timestamps are unix milliseconds (BIGINT) so one set of queries serves SQLite and Postgres.

CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE executions (
    id             TEXT PRIMARY KEY,
    workflow_id    TEXT NOT NULL,
    run_id         TEXT,
    command        TEXT NOT NULL,
    argv           TEXT,
    workdir        TEXT NOT NULL,
    requested_mode TEXT NOT NULL,
    effective_mode TEXT NOT NULL,
    reason         TEXT NOT NULL,
    status         TEXT NOT NULL,
    exit_code      INTEGER,
    error          TEXT,
    os_user        TEXT,
    ci_identity    TEXT,
    client_host    TEXT,
    worker_id      TEXT,
    attempt        INTEGER NOT NULL DEFAULT 0,
    timeout_secs   INTEGER,
    image          TEXT,
    image_digest   TEXT,
    container_id   TEXT,
    lease_id       TEXT,
    -- Process group and its start time (clock ticks) on the worker's host, for local commands:
    -- lets a restarted worker kill what a lost one left running.
    pgid           INTEGER,
    pgid_started   INTEGER,
    -- JSON object of environment values; cleared when the execution ends.
    env            TEXT,
    created_at     INTEGER NOT NULL,
    started_at     INTEGER,
    finished_at    INTEGER,
    output_bytes   INTEGER NOT NULL DEFAULT 0,
    output_dropped INTEGER NOT NULL DEFAULT 0,
    output_sha256  TEXT
);
CREATE INDEX executions_created ON executions (created_at);
CREATE INDEX executions_status ON executions (status);

CREATE TABLE output (
    execution_id TEXT NOT NULL,
    seq          INTEGER NOT NULL,
    stream       TEXT NOT NULL,
    data         BLOB NOT NULL,
    at           INTEGER NOT NULL,
    PRIMARY KEY (execution_id, seq)
);

CREATE TABLE workers (
    id           TEXT PRIMARY KEY,
    host         TEXT NOT NULL,
    pid          INTEGER NOT NULL,
    engine_id    TEXT,
    task_queue   TEXT NOT NULL,
    started_at   INTEGER NOT NULL,
    heartbeat_at INTEGER NOT NULL
);

CREATE TABLE leases (
    id           TEXT PRIMARY KEY,
    backend      TEXT NOT NULL,
    worker_id    TEXT NOT NULL,
    engine_id    TEXT,
    container_id TEXT,
    image        TEXT NOT NULL,
    spec_hash    TEXT NOT NULL,
    state        TEXT NOT NULL,
    execution_id TEXT,
    ttl_secs     INTEGER NOT NULL,
    created_at   INTEGER NOT NULL,
    last_used_at INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL,
    tainted      INTEGER NOT NULL DEFAULT 0,
    note         TEXT
);
CREATE INDEX leases_idle ON leases (state, spec_hash, expires_at);
