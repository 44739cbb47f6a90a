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
    exit_code      BIGINT,
    error          TEXT,
    os_user        TEXT,
    ci_identity    TEXT,
    client_host    TEXT,
    worker_id      TEXT,
    attempt        BIGINT NOT NULL DEFAULT 0,
    timeout_secs   BIGINT,
    image          TEXT,
    image_digest   TEXT,
    container_id   TEXT,
    lease_id       TEXT,
    -- Process group and its start time (clock ticks) on the worker's host, for local commands:
    -- lets a restarted worker kill what a lost one left running.
    pgid           BIGINT,
    pgid_started   BIGINT,
    -- JSON object of environment values; cleared when the execution ends.
    env            TEXT,
    created_at     BIGINT NOT NULL,
    started_at     BIGINT,
    finished_at    BIGINT,
    output_bytes   BIGINT NOT NULL DEFAULT 0,
    output_dropped BIGINT NOT NULL DEFAULT 0,
    output_sha256  TEXT
);
CREATE INDEX executions_created ON executions (created_at);
CREATE INDEX executions_status ON executions (status);

CREATE TABLE output (
    execution_id TEXT NOT NULL,
    seq          BIGINT NOT NULL,
    stream       TEXT NOT NULL,
    data         BYTEA NOT NULL,
    at           BIGINT NOT NULL,
    PRIMARY KEY (execution_id, seq)
);

CREATE TABLE workers (
    id           TEXT PRIMARY KEY,
    host         TEXT NOT NULL,
    pid          BIGINT NOT NULL,
    engine_id    TEXT,
    task_queue   TEXT NOT NULL,
    started_at   BIGINT NOT NULL,
    heartbeat_at BIGINT NOT NULL
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
    ttl_secs     BIGINT NOT NULL,
    created_at   BIGINT NOT NULL,
    last_used_at BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL,
    tainted      BIGINT NOT NULL DEFAULT 0,
    note         TEXT
);
CREATE INDEX leases_idle ON leases (state, spec_hash, expires_at);
