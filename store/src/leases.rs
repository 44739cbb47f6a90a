//! Leases: one row per container (or Daytona sandbox), written before the container exists.
//!
//! A lease moves `creating → idle ⇄ busy → removing → removed` ([`LeaseState`]). Every move is
//! one conditional `UPDATE` on the database's clock, so two executions never share a busy
//! container and the reaper never races an acquire; the write-ahead row means a crash at any
//! instant leaves something the reaper can reconcile. The states are stored as
//! [`LeaseState::as_str`], bound as parameters, and parsed when rows are read.

use crate::{Result, Store, q};
use LeaseState::{Busy, Creating, Idle, Removed, Removing};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Where a lease is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LeaseState {
    /// Written before the container is asked for; no container id yet, or one just made.
    Creating,
    /// Held by an execution.
    Busy,
    /// Free for the next execution with the same spec, until it expires.
    Idle,
    /// On its way out: the container is to be removed (or stopped, with cleanup off).
    Removing,
    /// The container is gone: history.
    Removed,
}

impl LeaseState {
    /// Every state, in the order of a lease's life.
    pub const ALL: [Self; 5] = [
        Self::Creating,
        Self::Busy,
        Self::Idle,
        Self::Removing,
        Self::Removed,
    ];

    /// The text stored in `leases.state`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Creating => "creating",
            Self::Busy => "busy",
            Self::Idle => "idle",
            Self::Removing => "removing",
            Self::Removed => "removed",
        }
    }
}

impl fmt::Display for LeaseState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad`, so width and alignment (`{:<9}` in `leases list`) apply.
        f.pad(self.as_str())
    }
}

/// A `leases.state` value this binary does not know.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown lease state {0:?} (known: creating, busy, idle, removing, removed)")]
pub struct UnknownLeaseState(pub String);

impl FromStr for LeaseState {
    type Err = UnknownLeaseState;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| UnknownLeaseState(s.to_string()))
    }
}

/// How a row's `state` column is read (`#[sqlx(try_from = "String")]`).
impl TryFrom<String> for LeaseState {
    type Error = UnknownLeaseState;

    fn try_from(s: String) -> std::result::Result<Self, Self::Error> {
        s.parse()
    }
}

/// A container (or cloud sandbox) lease: one row per container, written before it exists.
#[derive(Clone, Debug, Serialize, Deserialize, sqlx::FromRow)]
pub struct LeaseRecord {
    pub id: String,
    pub backend: String,
    pub worker_id: String,
    pub engine_id: Option<String>,
    pub container_id: Option<String>,
    pub image: String,
    pub spec_hash: String,
    #[sqlx(try_from = "String")]
    pub state: LeaseState,
    pub execution_id: Option<String>,
    pub ttl_secs: i64,
    pub created_at: i64,
    pub last_used_at: i64,
    pub expires_at: i64,
    pub tainted: i64,
    pub note: Option<String>,
}

const LEASE_COLUMNS: &str = "id, backend, worker_id, engine_id, container_id, image, spec_hash, \
    state, execution_id, ttl_secs, created_at, last_used_at, expires_at, tainted, note";

/// What a lease is for, when it is created.
#[derive(Clone, Debug)]
pub struct NewLease<'a> {
    pub backend: &'a str,
    pub worker_id: &'a str,
    pub engine_id: Option<&'a str>,
    pub image: &'a str,
    pub spec_hash: &'a str,
    pub ttl_secs: u64,
    pub execution_id: &'a str,
}

impl Store {
    /// Writes a lease in state `creating` before the container is asked for (write-ahead), so a
    /// crash at any instant leaves a row the reaper can reconcile.
    pub async fn create_lease(&self, new: &NewLease<'_>) -> Result<LeaseRecord> {
        let id = format!("lse-{}", ulid::Ulid::new().to_string().to_lowercase());
        let now = self.db_now();
        let sql = format!(
            "INSERT INTO leases (id, backend, worker_id, engine_id, image, spec_hash, state, execution_id, \
             ttl_secs, created_at, last_used_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $9, $7, $8, {now}, {now}, {now}) RETURNING {LEASE_COLUMNS}"
        );
        with_pool!(self, pool => sqlx::query_as::<_, LeaseRecord>(&sql)
            .bind(&id)
            .bind(new.backend)
            .bind(new.worker_id)
            .bind(new.engine_id)
            .bind(new.image)
            .bind(new.spec_hash)
            .bind(new.execution_id)
            .bind(new.ttl_secs as i64)
            .bind(Creating.as_str())
            .fetch_one(pool)
            .await
            .map_err(q("create lease")))
    }

    /// Records the container of a `creating` lease and hands it to its execution (`busy`).
    pub async fn lease_created(&self, lease_id: &str, container_id: &str) -> Result<()> {
        let now = self.db_now();
        let sql = format!(
            "UPDATE leases SET container_id = $1, state = $3, last_used_at = {now} \
             WHERE id = $2 AND state = $4"
        );
        with_pool!(self, pool => sqlx::query(&sql)
            .bind(container_id)
            .bind(lease_id)
            .bind(Busy.as_str())
            .bind(Creating.as_str())
            .execute(pool)
            .await
            .map_err(q("record created container"))?.rows_affected());
        Ok(())
    }

    /// Takes an idle container with this spec on this engine, inside its TTL, for `execution_id`:
    /// one atomic `idle → busy` transition, so two executions never share a busy container.
    pub async fn acquire_idle(
        &self,
        backend: &str,
        spec_hash: &str,
        engine_id: Option<&str>,
        execution_id: &str,
        worker_id: &str,
    ) -> Result<Option<LeaseRecord>> {
        let now = self.db_now();
        let lock = if self.is_postgres() {
            "FOR UPDATE SKIP LOCKED"
        } else {
            ""
        };
        let sql = format!(
            "UPDATE leases SET state = $6, execution_id = $1, worker_id = $5, last_used_at = {now} \
             WHERE id = (SELECT id FROM leases WHERE state = $7 AND backend = $2 AND spec_hash = $3 \
                 AND COALESCE(engine_id, '') = COALESCE($4, '') AND expires_at > {now} AND tainted = 0 \
                 ORDER BY last_used_at DESC LIMIT 1 {lock}) \
             AND state = $7 RETURNING {LEASE_COLUMNS}"
        );
        let begin = self.begin_write();
        with_pool!(self, pool => {
            let mut tx = pool.begin_with(begin).await.map_err(q("begin acquire"))?;
            let row = sqlx::query_as::<_, LeaseRecord>(&sql)
                .bind(execution_id)
                .bind(backend)
                .bind(spec_hash)
                .bind(engine_id)
                .bind(worker_id)
                .bind(Busy.as_str())
                .bind(Idle.as_str())
                .fetch_optional(&mut *tx)
                .await
                .map_err(q("acquire idle lease"))?;
            tx.commit().await.map_err(q("commit acquire"))?;
            Ok(row)
        })
    }

    /// The Docker engine of the most recently used idle container with this spec that is still
    /// inside its TTL, without claiming it: where a new execution will probably find a warm
    /// container. Only a hint; [`Store::acquire_idle`] is what claims.
    pub async fn idle_engine(&self, backend: &str, spec_hash: &str) -> Result<Option<String>> {
        let now = self.db_now();
        let sql = format!(
            "SELECT engine_id FROM leases WHERE state = $3 AND backend = $1 AND spec_hash = $2 \
             AND engine_id IS NOT NULL AND expires_at > {now} AND tainted = 0 \
             ORDER BY last_used_at DESC LIMIT 1"
        );
        with_pool!(self, pool => sqlx::query_scalar::<_, String>(&sql)
            .bind(backend)
            .bind(spec_hash)
            .bind(Idle.as_str())
            .fetch_optional(pool)
            .await
            .map_err(q("look for an idle container")))
    }

    /// Gives a busy container back: `idle` until TTL seconds from now (reuse), or `removing`
    /// (cleanup, tainted, or no reuse). Returns the new state.
    ///
    /// With `holder`, only while that execution still holds the lease: a release that comes
    /// after `exec` already gave the container back (and another execution took it) must not
    /// touch it.
    pub async fn release_lease(
        &self,
        lease_id: &str,
        reuse: bool,
        note: Option<&str>,
        holder: Option<&str>,
    ) -> Result<LeaseState> {
        let now = self.db_now();
        let held = "($3 IS NULL OR execution_id IS NULL OR execution_id = $3)";
        // $4 the new state, then the states it may be reached from.
        let (sql, states): (String, &[LeaseState]) = if reuse {
            (
                format!(
                    "UPDATE leases SET state = $4, execution_id = NULL, last_used_at = {now}, \
                     expires_at = {now} + ttl_secs * 1000, note = COALESCE($1, note) \
                     WHERE id = $2 AND state IN ($5, $6) AND tainted = 0 AND {held}"
                ),
                &[Idle, Busy, Creating],
            )
        } else {
            (
                format!(
                    "UPDATE leases SET state = $4, last_used_at = {now}, note = COALESCE($1, note) \
                     WHERE id = $2 AND state IN ($5, $6, $7) AND {held}"
                ),
                &[Removing, Busy, Creating, Idle],
            )
        };
        with_pool!(self, pool => {
            let mut query = sqlx::query(&sql).bind(note).bind(lease_id).bind(holder);
            for state in states {
                query = query.bind(state.as_str());
            }
            query
                .execute(pool)
                .await
                .map_err(q("release lease"))?
                .rows_affected()
        });
        // A session whose command's end was recorded while it still held this container is
        // free from here (see `release_session`).
        if let Some(holder) = holder {
            self.release_session(holder).await?;
        }
        Ok(self.get_lease(lease_id).await?.map_or(Removed, |l| l.state))
    }

    /// Marks a lease's container as one that may still be running a command: never reused.
    /// With `holder`, only while that execution still holds the lease: a late step of an
    /// execution must not taint a container that has since passed to another.
    pub async fn taint_lease(
        &self,
        lease_id: &str,
        note: &str,
        holder: Option<&str>,
    ) -> Result<()> {
        with_pool!(self, pool => sqlx::query(
            "UPDATE leases SET tainted = 1, note = $1 WHERE id = $2 AND ($3 IS NULL OR execution_id = $3)",
        )
        .bind(note)
        .bind(lease_id)
        .bind(holder)
        .execute(pool)
        .await
        .map_err(q("taint lease"))?.rows_affected());
        Ok(())
    }

    /// The container is gone (or never existed).
    pub async fn lease_removed(&self, lease_id: &str) -> Result<()> {
        let now = self.db_now();
        let sql = format!(
            "UPDATE leases SET state = $2, execution_id = NULL, last_used_at = {now} WHERE id = $1"
        );
        with_pool!(self, pool => sqlx::query(&sql)
            .bind(lease_id)
            .bind(Removed.as_str())
            .execute(pool)
            .await
            .map_err(q("mark lease removed"))?.rows_affected());
        Ok(())
    }

    /// Moves every idle lease past its TTL to `removing` in one update on the database's clock,
    /// before any container is touched, so the reaper never races an acquire.
    pub async fn expire_idle(&self, backend: &str) -> Result<Vec<LeaseRecord>> {
        let now = self.db_now();
        let sql = format!(
            "UPDATE leases SET state = $2, note = 'idle past its TTL' \
             WHERE state = $3 AND backend = $1 AND expires_at <= {now} RETURNING {LEASE_COLUMNS}"
        );
        with_pool!(self, pool => sqlx::query_as::<_, LeaseRecord>(&sql)
            .bind(backend)
            .bind(Removing.as_str())
            .bind(Idle.as_str())
            .fetch_all(pool)
            .await
            .map_err(q("expire idle leases")))
    }

    /// Leases in a given state (oldest first).
    pub async fn leases_in_state(&self, state: LeaseState) -> Result<Vec<LeaseRecord>> {
        let sql =
            format!("SELECT {LEASE_COLUMNS} FROM leases WHERE state = $1 ORDER BY created_at");
        with_pool!(self, pool => sqlx::query_as::<_, LeaseRecord>(&sql)
            .bind(state.as_str())
            .fetch_all(pool)
            .await
            .map_err(q("list leases by state")))
    }

    pub async fn get_lease(&self, lease_id: &str) -> Result<Option<LeaseRecord>> {
        let sql = format!("SELECT {LEASE_COLUMNS} FROM leases WHERE id = $1");
        with_pool!(self, pool => sqlx::query_as::<_, LeaseRecord>(&sql)
            .bind(lease_id)
            .fetch_optional(pool)
            .await
            .map_err(q("read lease")))
    }

    /// The lease an execution already holds on this backend and engine (`creating` or `busy`):
    /// what a retried acquire finds, so a crash between steps never leaves two containers for
    /// one execution.
    pub async fn lease_of_execution(
        &self,
        backend: &str,
        execution_id: &str,
        engine_id: Option<&str>,
    ) -> Result<Option<LeaseRecord>> {
        let sql = format!(
            "SELECT {LEASE_COLUMNS} FROM leases WHERE backend = $1 AND execution_id = $2 \
             AND COALESCE(engine_id, '') = COALESCE($3, '') AND state IN ($4, $5) \
             ORDER BY created_at DESC LIMIT 1"
        );
        with_pool!(self, pool => sqlx::query_as::<_, LeaseRecord>(&sql)
            .bind(backend)
            .bind(execution_id)
            .bind(engine_id)
            .bind(Creating.as_str())
            .bind(Busy.as_str())
            .fetch_optional(pool)
            .await
            .map_err(q("find the lease of an execution")))
    }

    /// Hands an idle lease of a lost worker to `worker_id` (same Docker host): it stays
    /// reusable and is reaped by its new owner.
    pub async fn adopt_lease(&self, lease_id: &str, from: &str, worker_id: &str) -> Result<bool> {
        with_pool!(self, pool => Ok(sqlx::query(
            "UPDATE leases SET worker_id = $1 WHERE id = $2 AND worker_id = $3 AND state = $4",
        )
        .bind(worker_id)
        .bind(lease_id)
        .bind(from)
        .bind(Idle.as_str())
        .execute(pool)
        .await
        .map_err(q("adopt a lease"))?
        .rows_affected() == 1))
    }

    /// A busy lease whose execution is over but whose worker was lost before releasing it:
    /// tainted (its command may still run) and on its way out, in one step.
    pub async fn retire_lease(&self, lease_id: &str, note: &str) -> Result<bool> {
        let now = self.db_now();
        let sql = format!(
            "UPDATE leases SET state = $3, tainted = 1, note = $1, last_used_at = {now} \
             WHERE id = $2 AND state IN ($4, $5, $6)"
        );
        with_pool!(self, pool => Ok(sqlx::query(&sql)
            .bind(note)
            .bind(lease_id)
            .bind(Removing.as_str())
            .bind(Busy.as_str())
            .bind(Creating.as_str())
            .bind(Idle.as_str())
            .execute(pool)
            .await
            .map_err(q("retire a lease"))?
            .rows_affected() == 1))
    }

    /// Marks a lease removed with a note saying why (its container is gone, or out of reach).
    pub async fn forget_lease(&self, lease_id: &str, note: &str) -> Result<()> {
        let now = self.db_now();
        let sql = format!(
            "UPDATE leases SET state = $3, execution_id = NULL, note = $1, last_used_at = {now} \
             WHERE id = $2 AND state <> $3"
        );
        with_pool!(self, pool => sqlx::query(&sql)
            .bind(note)
            .bind(lease_id)
            .bind(Removed.as_str())
            .execute(pool)
            .await
            .map_err(q("forget a lease"))?.rows_affected());
        Ok(())
    }

    /// Every lease not yet removed, newest first (plus removed ones when `all`).
    pub async fn list_leases(&self, all: bool) -> Result<Vec<LeaseRecord>> {
        let filter = if all { "" } else { "WHERE state <> $1" };
        let sql = format!("SELECT {LEASE_COLUMNS} FROM leases {filter} ORDER BY created_at DESC");
        with_pool!(self, pool => {
            let mut query = sqlx::query_as::<_, LeaseRecord>(&sql);
            if !all {
                query = query.bind(Removed.as_str());
            }
            query.fetch_all(pool).await.map_err(q("list leases"))
        })
    }

    /// How many leases are in each state (removed ones included), for the metrics gauge. A
    /// state this binary does not know (a newer worker's) is left out, not an error.
    pub async fn count_leases_by_state(&self) -> Result<Vec<(LeaseState, i64)>> {
        let rows: Vec<(String, i64)> = with_pool!(self, pool => sqlx::query_as(
            "SELECT state, COUNT(*) FROM leases GROUP BY state",
        )
        .fetch_all(pool)
        .await
        .map_err(q("count leases by state"))?);
        Ok(rows
            .into_iter()
            .filter_map(|(state, n)| Some((state.parse().ok()?, n)))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::LeaseState;

    #[test]
    fn every_state_reads_back_from_its_stored_text() {
        for state in LeaseState::ALL {
            assert_eq!(state.as_str().parse::<LeaseState>(), Ok(state));
            assert_eq!(
                serde_json::to_value(state).unwrap(),
                serde_json::Value::from(state.as_str())
            );
        }
        assert!("hibernating".parse::<LeaseState>().is_err());
        assert_eq!(format!("{:<6}|", LeaseState::Idle), "idle  |");
    }
}
