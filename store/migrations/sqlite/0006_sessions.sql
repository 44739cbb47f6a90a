-- Sessions (docs/sessions.md): a durable workspace whose commands share a container (sandbox)
-- or a saved shell state (local). Each command in one is still an execution, which names it.
CREATE TABLE sessions (
    id            TEXT PRIMARY KEY,
    -- Optional; unique among live sessions (an ended one gives its name up: see the index).
    name          TEXT,
    mode          TEXT NOT NULL,
    -- The sandbox spec (JSON) of a sandbox session; NULL for a local one.
    spec          TEXT,
    ttl_secs      BIGINT NOT NULL,
    -- Who started it (the owner string of its creator, `uid:N`): only they may use it.
    creator       TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    last_used_at  BIGINT NOT NULL,
    ended_at      BIGINT,
    end_reason    TEXT,
    -- The execution holding it (one command at a time), NULL when free.
    busy          TEXT,
    busy_since    BIGINT,
    -- A local session's saved shell state, sealed with the payload codec's key (it holds
    -- exported variables, which may be secrets); NULL when none was saved yet.
    state         BLOB,
    -- The last command did not save its state (it exec'd, was killed, replaced the EXIT trap).
    state_lost    INTEGER NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX sessions_live_name ON sessions (name) WHERE ended_at IS NULL;
CREATE INDEX sessions_busy ON sessions (busy);
-- The session an execution ran in, NULL for one without.
ALTER TABLE executions ADD COLUMN session TEXT;
