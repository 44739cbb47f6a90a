//! Workers: who is alive, on which host and Docker engine.
//!
//! Each worker heart-beats its row; the reaper reads which ones went quiet, to reconcile the
//! leases of workers that are gone. (Heartbeats are stamped with the worker's clock and judged
//! against the database's, so a worker's clock skew counts against it.)

use crate::{Result, Store, now_ms, q};
use serde::{Deserialize, Serialize};

/// A worker as the reaper sees it: who, where, and when it last said it was alive.
#[derive(Clone, Debug, Serialize, Deserialize, sqlx::FromRow)]
pub struct WorkerRecord {
    pub id: String,
    pub host: String,
    pub engine_id: Option<String>,
    pub heartbeat_at: i64,
}

impl Store {
    /// Records (or refreshes) a worker's liveness.
    pub async fn heartbeat_worker(
        &self,
        id: &str,
        host: &str,
        engine_id: Option<&str>,
        task_queue: &str,
    ) -> Result<()> {
        let now = now_ms();
        with_pool!(self, pool => sqlx::query(
            "INSERT INTO workers (id, host, pid, engine_id, task_queue, started_at, heartbeat_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $6) \
             ON CONFLICT (id) DO UPDATE SET heartbeat_at = $6, engine_id = COALESCE($4, workers.engine_id), \
             pid = $3, host = $2, task_queue = $5",
        )
        .bind(id)
        .bind(host)
        .bind(i64::from(std::process::id()))
        .bind(engine_id)
        .bind(task_queue)
        .bind(now)
        .execute(pool)
        .await
        .map_err(q("worker heartbeat"))?.rows_affected());
        Ok(())
    }

    /// Workers whose last heartbeat is older than `stale` on the database's clock, with the
    /// Docker engine each one served.
    pub async fn stale_workers(&self, stale: std::time::Duration) -> Result<Vec<WorkerRecord>> {
        let now = self.db_now();
        let sql = format!(
            "SELECT id, host, engine_id, heartbeat_at FROM workers WHERE heartbeat_at < {now} - $1"
        );
        with_pool!(self, pool => sqlx::query_as::<_, WorkerRecord>(&sql)
            .bind(stale.as_millis() as i64)
            .fetch_all(pool)
            .await
            .map_err(q("list stale workers")))
    }

    /// Whether any worker serving `engine_id` heart-beat within `window`: is that host alive?
    pub async fn engine_alive(&self, engine_id: &str, window: std::time::Duration) -> Result<bool> {
        let now = self.db_now();
        let sql = format!(
            "SELECT COUNT(*) FROM workers WHERE engine_id = $1 AND heartbeat_at >= {now} - $2"
        );
        with_pool!(self, pool => {
            let n: i64 = sqlx::query_scalar(&sql)
                .bind(engine_id)
                .bind(window.as_millis() as i64)
                .fetch_one(pool)
                .await
                .map_err(q("check a host's workers"))?;
            Ok(n > 0)
        })
    }
}
