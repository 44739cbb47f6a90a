//! Sessions: durable workspaces whose commands share a container (sandbox) or a saved shell
//! state (local); docs/sessions.md.
//!
//! The row is the truth: a session lives until `ended_at` is set (by `session end` or by the
//! reaper once idle past its TTL). One command at a time: [`Store::try_acquire_session`] takes
//! the `busy` marker in one conditional `UPDATE`, and [`Store::finish`] clears it when the
//! holding execution ends, so a crash between two commands never leaves a session held by
//! nothing (a holder that ended, or never got recorded, no longer counts).

use crate::{LeaseState, Result, Store, now_ms, q};
use serde::{Deserialize, Serialize};
use stigmer_workflows::{Mode, Status};

/// A holder recorded as busy but absent from `executions` still counts for this long: the
/// daemon takes the session just before it records the execution.
const ABSENT_HOLDER_GRACE_MS: i64 = 60_000;

/// A new session, as `session start` records it.
#[derive(Clone, Debug, Default)]
pub struct NewSession {
    /// `ses-` and random hex.
    pub id: String,
    pub name: Option<String>,
    /// `sandbox` or `local`.
    pub mode: String,
    /// The sandbox spec (JSON) of a sandbox session.
    pub spec: Option<String>,
    pub ttl_secs: u64,
    /// The owner string of whoever started it (`uid:N`): only they may run in it.
    pub creator: String,
}

/// A session as stored (without its sealed state).
#[derive(Clone, Debug, Serialize, Deserialize, sqlx::FromRow)]
pub struct SessionRecord {
    pub id: String,
    pub name: Option<String>,
    pub mode: String,
    pub spec: Option<String>,
    pub ttl_secs: i64,
    pub creator: String,
    pub created_at: i64,
    pub last_used_at: i64,
    pub ended_at: Option<i64>,
    pub end_reason: Option<String>,
    /// The execution holding it, if any.
    pub busy: Option<String>,
    pub busy_since: Option<i64>,
    /// The last command did not save its state (1), so the next one says so.
    pub state_lost: i64,
}

impl SessionRecord {
    #[must_use]
    pub fn is_live(&self) -> bool {
        self.ended_at.is_none()
    }

    /// The mode the session's commands run in (what `mode` records).
    #[must_use]
    pub fn run_mode(&self) -> Mode {
        match self.mode.as_str() {
            "sandbox" => Mode::Sandbox,
            "cloud" => Mode::Cloud,
            _ => Mode::Local,
        }
    }
}

const SESSION_COLUMNS: &str = "id, name, mode, spec, ttl_secs, creator, created_at, last_used_at, \
    ended_at, end_reason, busy, busy_since, state_lost";

/// No container lease is still held for the execution in `busy`. A command's end is recorded
/// before its container is given back; the next command in the session waits for that, or it
/// would find the session's container busy and make the session a second one.
fn holder_lease_gone() -> String {
    format!(
        "NOT EXISTS (SELECT 1 FROM leases l WHERE l.execution_id = sessions.busy AND l.state IN \
         ('{}', '{}'))",
        LeaseState::Creating.as_str(),
        LeaseState::Busy.as_str()
    )
}

/// The condition under which the holder in `busy` no longer holds: it ended and gave its
/// container back, or it was never recorded and the grace for that has passed. `$T1`, `$T2`
/// are the active statuses, `$NOW` the clock.
fn holder_gone(t1: &str, t2: &str, now: &str) -> String {
    format!(
        "(busy IS NULL OR NOT EXISTS (SELECT 1 FROM executions e WHERE e.id = sessions.busy \
         AND e.status IN ({t1}, {t2})) AND {} AND (EXISTS (SELECT 1 FROM \
         executions e WHERE e.id = sessions.busy) OR busy_since < {now} - \
         {ABSENT_HOLDER_GRACE_MS}))",
        holder_lease_gone()
    )
}

impl Store {
    /// Records a new session. Fails if its name is taken by a live session.
    pub async fn create_session(&self, new: &NewSession) -> Result<()> {
        let now = now_ms();
        with_pool!(self, pool => sqlx::query(
            "INSERT INTO sessions (id, name, mode, spec, ttl_secs, creator, created_at, last_used_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $7)",
        )
        .bind(&new.id)
        .bind(&new.name)
        .bind(&new.mode)
        .bind(&new.spec)
        .bind(new.ttl_secs as i64)
        .bind(&new.creator)
        .bind(now)
        .execute(pool)
        .await
        .map_err(q("insert session"))?.rows_affected());
        Ok(())
    }

    /// A session by id, or a live one by name.
    pub async fn get_session(&self, id_or_name: &str) -> Result<Option<SessionRecord>> {
        let by_id = format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE id = $1");
        let row = with_pool!(self, pool => sqlx::query_as::<_, SessionRecord>(&by_id)
            .bind(id_or_name)
            .fetch_optional(pool)
            .await
            .map_err(q("read session"))?);
        if row.is_some() {
            return Ok(row);
        }
        let by_name =
            format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE name = $1 AND ended_at IS NULL");
        Ok(
            with_pool!(self, pool => sqlx::query_as::<_, SessionRecord>(&by_name)
            .bind(id_or_name)
            .fetch_optional(pool)
            .await
            .map_err(q("read session by name"))?),
        )
    }

    /// Sessions, newest first: the live ones, or all with `all`.
    pub async fn list_sessions(&self, all: bool) -> Result<Vec<SessionRecord>> {
        let filter = if all { "" } else { "WHERE ended_at IS NULL" };
        let sql =
            format!("SELECT {SESSION_COLUMNS} FROM sessions {filter} ORDER BY created_at DESC, id");
        Ok(
            with_pool!(self, pool => sqlx::query_as::<_, SessionRecord>(&sql)
            .fetch_all(pool)
            .await
            .map_err(q("list sessions"))?),
        )
    }

    /// Ends a live session and drops its saved state. Returns whether this call ended it.
    pub async fn end_session(&self, id: &str, reason: &str) -> Result<bool> {
        let n = with_pool!(self, pool => sqlx::query(
            "UPDATE sessions SET ended_at = $2, end_reason = $3, state = NULL \
             WHERE id = $1 AND ended_at IS NULL",
        )
        .bind(id)
        .bind(now_ms())
        .bind(reason)
        .execute(pool)
        .await
        .map_err(q("end session"))?.rows_affected());
        Ok(n == 1)
    }

    /// Marks a session used now (its TTL counts from here).
    pub async fn touch_session(&self, id: &str) -> Result<()> {
        with_pool!(self, pool => sqlx::query("UPDATE sessions SET last_used_at = $2 WHERE id = $1")
            .bind(id)
            .bind(now_ms())
            .execute(pool)
            .await
            .map_err(q("touch session"))?.rows_affected());
        Ok(())
    }

    /// Takes a live session for `execution_id`, if it is free (or its holder ended). One
    /// conditional update: of two racing callers, one gets it.
    pub async fn try_acquire_session(&self, id: &str, execution_id: &str) -> Result<bool> {
        let sql = format!(
            "UPDATE sessions SET busy = $2, busy_since = $3, last_used_at = $3 \
             WHERE id = $1 AND ended_at IS NULL AND (busy = $2 OR {})",
            holder_gone("$4", "$5", "$3")
        );
        let n = with_pool!(self, pool => sqlx::query(&sql)
            .bind(id)
            .bind(execution_id)
            .bind(now_ms())
            .bind(Status::Queued.as_str())
            .bind(Status::Running.as_str())
            .execute(pool)
            .await
            .map_err(q("acquire session"))?.rows_affected());
        Ok(n == 1)
    }

    /// Frees the session `execution_id` holds, if any, once no container lease is held for it
    /// (called by [`Store::finish`], by [`Store::release_lease`], and by a starter whose
    /// execution never got going).
    pub async fn release_session(&self, execution_id: &str) -> Result<()> {
        let sql = format!(
            "UPDATE sessions SET busy = NULL, busy_since = NULL, last_used_at = $2 \
             WHERE busy = $1 AND {}",
            holder_lease_gone()
        );
        with_pool!(self, pool => sqlx::query(&sql)
        .bind(execution_id)
        .bind(now_ms())
        .execute(pool)
        .await
        .map_err(q("release session"))?.rows_affected());
        Ok(())
    }

    /// Live sessions idle past their TTL at `now_ms` (none held by a running command).
    pub async fn expired_sessions(&self, now_ms: i64) -> Result<Vec<SessionRecord>> {
        let sql = format!(
            "SELECT {SESSION_COLUMNS} FROM sessions WHERE ended_at IS NULL \
             AND last_used_at + ttl_secs * 1000 < $1 AND {}",
            holder_gone("$2", "$3", "$1")
        );
        Ok(
            with_pool!(self, pool => sqlx::query_as::<_, SessionRecord>(&sql)
            .bind(now_ms)
            .bind(Status::Queued.as_str())
            .bind(Status::Running.as_str())
            .fetch_all(pool)
            .await
            .map_err(q("find expired sessions"))?),
        )
    }

    /// A local session's sealed state (if any was saved) and whether the last command lost it.
    pub async fn session_state(&self, id: &str) -> Result<(Option<Vec<u8>>, bool)> {
        let row: Option<(Option<Vec<u8>>, i64)> = with_pool!(self, pool => sqlx::query_as(
            "SELECT state, state_lost FROM sessions WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(pool)
        .await
        .map_err(q("read session state"))?);
        Ok(row.map_or((None, false), |(state, lost)| (state, lost != 0)))
    }

    /// Records what a command left: its sealed state, or (`None`) that it saved none, which
    /// keeps the previous state and marks it lost for the next command's notice.
    pub async fn save_session_state(&self, id: &str, sealed: Option<&[u8]>) -> Result<()> {
        with_pool!(self, pool => match sealed {
            Some(state) => sqlx::query(
                "UPDATE sessions SET state = $2, state_lost = 0 WHERE id = $1 AND ended_at IS NULL",
            )
            .bind(id)
            .bind(state)
            .execute(pool)
            .await,
            None => sqlx::query("UPDATE sessions SET state_lost = 1 WHERE id = $1")
                .bind(id)
                .execute(pool)
                .await,
        }
        .map_err(q("save session state"))?.rows_affected());
        Ok(())
    }
}
