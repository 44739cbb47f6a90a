//! The SQL store: executions (the audit record), their output, and container leases.
//!
//! One set of queries serves SQLite (the default, one file under the data dir) and Postgres
//! (many workers): placeholders are `$N`, which both accept, timestamps are unix milliseconds,
//! and `with_pool!` expands each query once per backend so the SQL is written once.
//! SQLite write transactions begin `IMMEDIATE` so two writers never deadlock upgrading a lock.

use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use stigmer_workflows::{ExecutionResult, Status};

/// Errors of the store, with what was being done.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("could not open the store at {url}: {source}")]
    Open {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("could not migrate the store at {url}: {source}")]
    Migrate {
        url: String,
        #[source]
        source: sqlx::migrate::MigrateError,
    },
    #[error("unsupported STIGMER_DATABASE_URL {0:?}: use sqlite:PATH or postgres://USER@HOST/DB")]
    UnsupportedUrl(String),
    #[error(
        "the store has no tables yet ({0}); start the daemon (`stigmer server start`) or a worker once to create them"
    )]
    NotInitialized(String),
    #[error("store query failed ({what}): {source}")]
    Query {
        what: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error("stored value is corrupt ({0})")]
    Corrupt(String),
}

type Result<T> = std::result::Result<T, StoreError>;

pub(crate) fn q(what: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| StoreError::Query { what, source }
}

#[derive(Clone, Debug)]
pub(crate) enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs `$body` with `$pool` bound to whichever backend the store uses; the query text and
/// bindings are written once and compiled for both.
macro_rules! with_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match &$store.pool {
            Pool::Sqlite($pool) => $body,
            Pool::Postgres($pool) => $body,
        }
    };
}
pub(crate) use with_pool;

/// Milliseconds since the Unix epoch, the store's timestamp unit.
#[must_use]
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A handle on the store; cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    pub(crate) pool: Pool,
    url: String,
    store_id: String,
}

/// A new execution, as the daemon or client records it before starting the workflow.
#[derive(Clone, Debug, Default)]
pub struct NewExecution {
    pub id: String,
    pub workflow_id: String,
    pub command: String,
    pub argv: Option<Vec<String>>,
    pub workdir: String,
    pub requested_mode: String,
    pub effective_mode: String,
    pub reason: String,
    pub os_user: Option<String>,
    pub ci_identity: Option<String>,
    pub client_host: Option<String>,
    pub timeout_secs: Option<u64>,
    pub env: Vec<(String, String)>,
    /// The OpenTelemetry trace the execution's spans belong to (32 hex), when tracing is on.
    pub trace_id: Option<String>,
}

/// An execution as stored: what `executions show` prints.
#[derive(Clone, Debug, Serialize, Deserialize, sqlx::FromRow)]
pub struct ExecutionRecord {
    pub id: String,
    pub workflow_id: String,
    pub run_id: Option<String>,
    pub command: String,
    pub workdir: String,
    pub requested_mode: String,
    pub effective_mode: String,
    pub reason: String,
    pub status: String,
    pub exit_code: Option<i64>,
    pub error: Option<String>,
    pub os_user: Option<String>,
    pub ci_identity: Option<String>,
    pub client_host: Option<String>,
    pub worker_id: Option<String>,
    pub attempt: i64,
    pub timeout_secs: Option<i64>,
    pub image: Option<String>,
    pub image_digest: Option<String>,
    pub container_id: Option<String>,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub output_bytes: i64,
    pub output_dropped: i64,
    pub output_sha256: Option<String>,
    pub trace_id: Option<String>,
}

impl ExecutionRecord {
    #[must_use]
    pub fn status(&self) -> Option<Status> {
        Status::parse(&self.status)
    }

    /// The execution's result as the workflow would report it.
    #[must_use]
    pub fn result(&self) -> ExecutionResult {
        ExecutionResult {
            id: self.id.clone(),
            status: self.status().unwrap_or(Status::Failed),
            exit_code: self.exit_code.map(|c| c as i32),
            error: self.error.clone(),
        }
    }
}

pub(crate) const EXECUTION_COLUMNS: &str = "id, workflow_id, run_id, command, workdir, requested_mode, \
    effective_mode, reason, status, exit_code, error, os_user, ci_identity, client_host, \
    worker_id, attempt, timeout_secs, image, image_digest, container_id, created_at, started_at, \
    finished_at, output_bytes, output_dropped, output_sha256, trace_id";

/// What `mark_started` found.
#[derive(Debug)]
pub enum StartClaim {
    /// The row moved to `running` now: spawn the command.
    Claimed,
    /// A previous attempt already started the command (its worker may be gone).
    AlreadyStarted { worker_id: Option<String> },
    /// The execution already has a terminal state (a retry after it was recorded).
    AlreadyFinished(ExecutionResult),
    /// No such execution in the store.
    Missing,
}

/// One stored piece of output.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct OutputChunk {
    pub seq: i64,
    pub stream: String,
    pub data: Vec<u8>,
}

/// Totals of an execution's output, recorded when it ends.
#[derive(Clone, Debug, Default)]
pub struct OutputSummary {
    pub bytes: i64,
    pub dropped: i64,
    pub sha256: Option<String>,
}

/// What [`Store::prune_executions`] removed, or would remove on a dry run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct PruneReport {
    pub executions: u64,
    pub output_chunks: u64,
    pub output_bytes: u64,
    pub dry_run: bool,
}

/// The embedded migrations, ignoring ones the store has that this binary does not know.
fn additive(mut migrator: sqlx::migrate::Migrator) -> sqlx::migrate::Migrator {
    migrator.set_ignore_missing(true);
    migrator
}

impl Store {
    /// Opens the store at `url` (`sqlite:PATH` or `postgres://…`). Only the daemon and workers
    /// pass `migrate = true`; clients open an existing store.
    pub async fn open(url: &str, migrate: bool) -> Result<Self> {
        let open_err = |source| StoreError::Open {
            url: redact_url(url),
            source,
        };
        let pool = if let Some(path) = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
        {
            if migrate
                && let Some(dir) = std::path::Path::new(path).parent()
                && !dir.as_os_str().is_empty()
            {
                let _ = std::fs::create_dir_all(dir);
            }
            let options = SqliteConnectOptions::from_str(&format!("sqlite://{path}"))
                .map_err(open_err)?
                .create_if_missing(migrate)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(30))
                .foreign_keys(true);
            let pool = SqlitePoolOptions::new()
                .max_connections(8)
                .min_connections(1)
                .connect_with(options)
                .await
                .map_err(open_err)?;
            Pool::Sqlite(pool)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let options = PgConnectOptions::from_str(url).map_err(open_err)?;
            let pool = PgPoolOptions::new()
                .max_connections(16)
                .acquire_timeout(Duration::from_secs(30))
                .connect_with(options)
                .await
                .map_err(open_err)?;
            Pool::Postgres(pool)
        } else {
            return Err(StoreError::UnsupportedUrl(url.to_string()));
        };
        let mut store = Self {
            pool,
            url: url.to_string(),
            store_id: String::new(),
        };
        if migrate {
            store.migrate().await?;
        }
        store.store_id = store.load_store_id().await?;
        Ok(store)
    }

    // Migrations only add tables and nullable columns, so a binary may use a store that a newer
    // one has migrated further: workers are upgraded one at a time (docs/operations.md).
    async fn migrate(&self) -> Result<()> {
        let mig_err = |source| StoreError::Migrate {
            url: redact_url(&self.url),
            source,
        };
        match &self.pool {
            Pool::Sqlite(pool) => additive(sqlx::migrate!("../migrations/sqlite"))
                .run(pool)
                .await
                .map_err(mig_err)?,
            Pool::Postgres(pool) => additive(sqlx::migrate!("../migrations/postgres"))
                .run(pool)
                .await
                .map_err(mig_err)?,
        }
        // The store id labels every container this installation makes, so a reaper only ever
        // touches its own. Generated once; the first writer wins.
        let candidate = ulid::Ulid::new().to_string().to_lowercase();
        with_pool!(self, pool => sqlx::query(
            "INSERT INTO meta (key, value) VALUES ('store_id', $1) ON CONFLICT (key) DO NOTHING",
        )
        .bind(&candidate)
        .execute(pool)
        .await
        .map_err(q("create store id"))?.rows_affected());
        Ok(())
    }

    async fn load_store_id(&self) -> Result<String> {
        let row: std::result::Result<Option<(String,)>, sqlx::Error> = with_pool!(self, pool =>
            sqlx::query_as("SELECT value FROM meta WHERE key = 'store_id'")
                .fetch_optional(pool)
                .await);
        match row {
            Ok(Some((id,))) => Ok(id),
            Ok(None) => Err(StoreError::NotInitialized(redact_url(&self.url))),
            Err(e) if is_missing_table(&e) => {
                Err(StoreError::NotInitialized(redact_url(&self.url)))
            }
            Err(e) => Err(StoreError::Query {
                what: "read store id",
                source: e,
            }),
        }
    }

    /// This installation's id (labels its containers).
    #[must_use]
    pub fn store_id(&self) -> &str {
        &self.store_id
    }

    /// The URL with any password removed, for messages.
    #[must_use]
    pub fn display_url(&self) -> String {
        redact_url(&self.url)
    }

    /// The statement that opens a write transaction: SQLite takes the write lock up front.
    pub(crate) fn begin_write(&self) -> &'static str {
        match self.pool {
            Pool::Sqlite(_) => "BEGIN IMMEDIATE",
            Pool::Postgres(_) => "BEGIN",
        }
    }

    #[must_use]
    pub fn is_postgres(&self) -> bool {
        matches!(self.pool, Pool::Postgres(_))
    }

    /// Records a new execution as `queued`, with its environment (kept until it ends).
    pub async fn insert_execution(&self, new: &NewExecution) -> Result<()> {
        let argv = new
            .argv
            .as_ref()
            .map(|a| serde_json::to_string(a).unwrap_or_default());
        let env: serde_json::Map<String, serde_json::Value> = new
            .env
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect();
        let env = serde_json::Value::Object(env).to_string();
        with_pool!(self, pool => sqlx::query(
            "INSERT INTO executions (id, workflow_id, command, argv, workdir, requested_mode, \
             effective_mode, reason, status, os_user, ci_identity, client_host, timeout_secs, env, \
             created_at, trace_id) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'queued', $9, $10, $11, $12, $13, $14, $15)",
        )
        .bind(&new.id)
        .bind(&new.workflow_id)
        .bind(&new.command)
        .bind(argv)
        .bind(&new.workdir)
        .bind(&new.requested_mode)
        .bind(&new.effective_mode)
        .bind(&new.reason)
        .bind(&new.os_user)
        .bind(&new.ci_identity)
        .bind(&new.client_host)
        .bind(new.timeout_secs.map(|t| t as i64))
        .bind(env)
        .bind(now_ms())
        .bind(&new.trace_id)
        .execute(pool)
        .await
        .map_err(q("insert execution"))?.rows_affected());
        Ok(())
    }

    /// Records the Temporal run id once the workflow has started.
    pub async fn set_run_id(&self, id: &str, run_id: &str) -> Result<()> {
        with_pool!(self, pool => sqlx::query("UPDATE executions SET run_id = $1 WHERE id = $2")
            .bind(run_id)
            .bind(id)
            .execute(pool)
            .await
            .map_err(q("record run id"))?.rows_affected());
        Ok(())
    }

    pub async fn get_execution(&self, id: &str) -> Result<Option<ExecutionRecord>> {
        let sql = format!("SELECT {EXECUTION_COLUMNS} FROM executions WHERE id = $1");
        with_pool!(self, pool => sqlx::query_as::<_, ExecutionRecord>(&sql)
            .bind(id)
            .fetch_optional(pool)
            .await
            .map_err(q("read execution")))
    }

    /// The most recent executions first.
    pub async fn list_executions(&self, limit: i64) -> Result<Vec<ExecutionRecord>> {
        let sql = format!(
            "SELECT {EXECUTION_COLUMNS} FROM executions ORDER BY created_at DESC, id DESC LIMIT $1"
        );
        with_pool!(self, pool => sqlx::query_as::<_, ExecutionRecord>(&sql)
            .bind(limit)
            .fetch_all(pool)
            .await
            .map_err(q("list executions")))
    }

    /// Removes ended executions that finished before `before_ms`, with their stored output.
    /// Only executions whose audit record exists and that no live lease points at are touched,
    /// so the audit trail stays whole. With `dry_run` nothing is removed: the report says what
    /// would be.
    pub async fn prune_executions(&self, before_ms: i64, dry_run: bool) -> Result<PruneReport> {
        const ELIGIBLE: &str = "SELECT e.id FROM executions e \
             WHERE e.status IN ('succeeded', 'failed', 'cancelled', 'timed_out') \
               AND e.finished_at IS NOT NULL AND e.finished_at < $1 \
               AND EXISTS (SELECT 1 FROM audit_log a WHERE a.execution_id = e.id) \
               AND NOT EXISTS (SELECT 1 FROM leases l \
                               WHERE l.execution_id = e.id AND l.state <> 'removed')";
        let count_sql = format!(
            "SELECT (SELECT COUNT(*) FROM ({ELIGIBLE}) x), \
                    (SELECT COUNT(*) FROM output WHERE execution_id IN ({ELIGIBLE})), \
                    (SELECT COALESCE(SUM(LENGTH(data)), 0) FROM output \
                     WHERE execution_id IN ({ELIGIBLE}))"
        );
        let delete_output = format!("DELETE FROM output WHERE execution_id IN ({ELIGIBLE})");
        let delete_executions = format!("DELETE FROM executions WHERE id IN ({ELIGIBLE})");
        with_pool!(self, pool => {
            let mut tx = pool.begin().await.map_err(q("prune executions"))?;
            let (executions, output_chunks, output_bytes): (i64, i64, i64) =
                sqlx::query_as(&count_sql)
                    .bind(before_ms)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(q("count executions to prune"))?;
            if !dry_run {
                sqlx::query(&delete_output)
                    .bind(before_ms)
                    .execute(&mut *tx)
                    .await
                    .map_err(q("prune output"))?;
                sqlx::query(&delete_executions)
                    .bind(before_ms)
                    .execute(&mut *tx)
                    .await
                    .map_err(q("prune executions"))?;
            }
            tx.commit().await.map_err(q("prune executions"))?;
            Ok(PruneReport {
                executions: executions as u64,
                output_chunks: output_chunks as u64,
                output_bytes: output_bytes as u64,
                dry_run,
            })
        })
    }

    /// The environment values recorded for an execution (empty once it has ended).
    pub async fn execution_env(&self, id: &str) -> Result<Vec<(String, String)>> {
        let row: Option<(Option<String>,)> = with_pool!(self, pool =>
            sqlx::query_as("SELECT env FROM executions WHERE id = $1")
                .bind(id)
                .fetch_optional(pool)
                .await
                .map_err(q("read environment"))?);
        let Some((Some(json),)) = row else {
            return Ok(Vec::new());
        };
        let map: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&json)
            .map_err(|e| StoreError::Corrupt(format!("environment of {id}: {e}")))?;
        Ok(map
            .into_iter()
            .filter_map(|(k, v)| v.as_str().map(|v| (k, v.to_string())))
            .collect())
    }

    /// Claims the right to spawn the command: `queued → running`, recorded before anything is
    /// spawned, in one atomic update. A second attempt finds the row already `running`.
    pub async fn mark_started(
        &self,
        id: &str,
        worker_id: &str,
        attempt: u32,
    ) -> Result<StartClaim> {
        let claimed = with_pool!(self, pool => sqlx::query(
            "UPDATE executions SET status = 'running', started_at = $1, worker_id = $2, attempt = $3 \
             WHERE id = $4 AND status = 'queued'",
        )
        .bind(now_ms())
        .bind(worker_id)
        .bind(i64::from(attempt))
        .bind(id)
        .execute(pool)
        .await
        .map_err(q("mark execution started"))?.rows_affected());
        if claimed == 1 {
            return Ok(StartClaim::Claimed);
        }
        let Some(record) = self.get_execution(id).await? else {
            return Ok(StartClaim::Missing);
        };
        match record.status() {
            Some(s) if s.is_terminal() => Ok(StartClaim::AlreadyFinished(record.result())),
            _ => Ok(StartClaim::AlreadyStarted {
                worker_id: record.worker_id,
            }),
        }
    }

    /// Re-claims a started execution for a deliberate re-run (`--retry-exec`).
    pub async fn mark_restarted(&self, id: &str, worker_id: &str, attempt: u32) -> Result<()> {
        with_pool!(self, pool => sqlx::query(
            "UPDATE executions SET status = 'running', started_at = $1, worker_id = $2, attempt = $3 \
             WHERE id = $4 AND status IN ('queued', 'running')",
        )
        .bind(now_ms())
        .bind(worker_id)
        .bind(i64::from(attempt))
        .bind(id)
        .execute(pool)
        .await
        .map_err(q("mark execution restarted"))?.rows_affected());
        Ok(())
    }

    /// Records the process group a local command runs in, so a restarted worker on the same
    /// host can kill what a lost one left running.
    pub async fn record_process(&self, id: &str, pgid: i64, started: i64) -> Result<()> {
        with_pool!(self, pool => sqlx::query("UPDATE executions SET pgid = $1, pgid_started = $2 WHERE id = $3")
            .bind(pgid)
            .bind(started)
            .bind(id)
            .execute(pool)
            .await
            .map_err(q("record process group"))?.rows_affected());
        Ok(())
    }

    /// The worker, process group and its start time recorded for an execution.
    pub async fn recorded_process(&self, id: &str) -> Result<Option<(String, i64, i64)>> {
        let row: Option<(Option<String>, Option<i64>, Option<i64>)> = with_pool!(self, pool =>
            sqlx::query_as("SELECT worker_id, pgid, pgid_started FROM executions WHERE id = $1")
                .bind(id)
                .fetch_optional(pool)
                .await
                .map_err(q("read process group"))?);
        Ok(match row {
            Some((Some(worker), Some(pgid), Some(started))) => Some((worker, pgid, started)),
            _ => None,
        })
    }

    /// Records where a sandbox execution ran.
    pub async fn set_placement(
        &self,
        id: &str,
        image: Option<&str>,
        image_digest: Option<&str>,
        container_id: Option<&str>,
        lease_id: Option<&str>,
    ) -> Result<()> {
        with_pool!(self, pool => sqlx::query(
            "UPDATE executions SET image = COALESCE($1, image), image_digest = COALESCE($2, image_digest), \
             container_id = COALESCE($3, container_id), lease_id = COALESCE($4, lease_id) WHERE id = $5",
        )
        .bind(image)
        .bind(image_digest)
        .bind(container_id)
        .bind(lease_id)
        .bind(id)
        .execute(pool)
        .await
        .map_err(q("record placement"))?.rows_affected());
        Ok(())
    }

    /// Records the terminal state once; a row already terminal keeps its first outcome, which is
    /// returned. The environment is wiped here, and the execution's audit record appended (on
    /// every call, so a retry after a crash between the two still appends it, once).
    pub async fn finish(
        &self,
        result: &ExecutionResult,
        output: Option<&OutputSummary>,
    ) -> Result<ExecutionResult> {
        let (bytes, dropped, sha) = match output {
            Some(o) => (Some(o.bytes), Some(o.dropped), o.sha256.clone()),
            None => (None, None, None),
        };
        with_pool!(self, pool => sqlx::query(
            "UPDATE executions SET status = $1, exit_code = $2, error = $3, finished_at = $4, \
             output_bytes = COALESCE($5, output_bytes), output_dropped = COALESCE($6, output_dropped), \
             output_sha256 = COALESCE($7, output_sha256), env = NULL \
             WHERE id = $8 AND status IN ('queued', 'running')",
        )
        .bind(result.status.as_str())
        .bind(result.exit_code.map(i64::from))
        .bind(&result.error)
        .bind(now_ms())
        .bind(bytes)
        .bind(dropped)
        .bind(sha)
        .bind(&result.id)
        .execute(pool)
        .await
        .map_err(q("record execution result"))?.rows_affected());
        crate::audit::append(self, &result.id).await?;
        match self.get_execution(&result.id).await? {
            Some(record) => Ok(record.result()),
            None => Ok(result.clone()),
        }
    }

    /// Appends output chunks (seq numbers chosen by the one writer of an execution).
    pub async fn append_output(&self, id: &str, chunks: &[(i64, &str, &[u8])]) -> Result<()> {
        if chunks.is_empty() {
            return Ok(());
        }
        let at = now_ms();
        let begin = self.begin_write();
        with_pool!(self, pool => {
            let mut tx = pool.begin_with(begin).await.map_err(q("begin output write"))?;
            for (seq, stream, data) in chunks {
                sqlx::query(
                    "INSERT INTO output (execution_id, seq, stream, data, at) VALUES ($1, $2, $3, $4, $5) \
                     ON CONFLICT (execution_id, seq) DO NOTHING",
                )
                .bind(id)
                .bind(seq)
                .bind(stream)
                .bind(*data)
                .bind(at)
                .execute(&mut *tx)
                .await
                .map_err(q("write output"))?;
            }
            tx.commit().await.map_err(q("commit output"))?;
        });
        Ok(())
    }

    /// Output chunks after `after_seq`, in order, at most `limit`.
    pub async fn read_output(
        &self,
        id: &str,
        after_seq: i64,
        limit: i64,
    ) -> Result<Vec<OutputChunk>> {
        with_pool!(self, pool => sqlx::query_as::<_, OutputChunk>(
            "SELECT seq, stream, data FROM output WHERE execution_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        )
        .bind(id)
        .bind(after_seq)
        .bind(limit)
        .fetch_all(pool)
        .await
        .map_err(q("read output")))
    }

    /// Deletes output of executions that ended before `before_ms` (retention).
    pub async fn prune_output(&self, before_ms: i64) -> Result<u64> {
        with_pool!(self, pool => Ok(sqlx::query(
            "DELETE FROM output WHERE execution_id IN \
             (SELECT id FROM executions WHERE finished_at IS NOT NULL AND finished_at < $1)",
        )
        .bind(before_ms)
        .execute(pool)
        .await
        .map_err(q("prune output"))?
        .rows_affected()))
    }

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
}

/// A worker as the reaper sees it: who, where, and when it last said it was alive.
#[derive(Clone, Debug, Serialize, Deserialize, sqlx::FromRow)]
pub struct WorkerRecord {
    pub id: String,
    pub host: String,
    pub engine_id: Option<String>,
    pub heartbeat_at: i64,
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
    pub state: String,
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
    /// The database's clock in unix milliseconds, as SQL: lease expiry is judged on one clock
    /// however skewed the workers' clocks are.
    fn db_now(&self) -> &'static str {
        match self.pool {
            Pool::Sqlite(_) => "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)",
            Pool::Postgres(_) => "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)",
        }
    }

    /// Writes a lease in state `creating` before the container is asked for (write-ahead), so a
    /// crash at any instant leaves a row the reaper can reconcile.
    pub async fn create_lease(&self, new: &NewLease<'_>) -> Result<LeaseRecord> {
        let id = format!("lse-{}", ulid::Ulid::new().to_string().to_lowercase());
        let now = self.db_now();
        let sql = format!(
            "INSERT INTO leases (id, backend, worker_id, engine_id, image, spec_hash, state, execution_id, \
             ttl_secs, created_at, last_used_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, 'creating', $7, $8, {now}, {now}, {now}) RETURNING {LEASE_COLUMNS}"
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
            .fetch_one(pool)
            .await
            .map_err(q("create lease")))
    }

    /// Records the container of a `creating` lease and hands it to its execution (`busy`).
    pub async fn lease_created(&self, lease_id: &str, container_id: &str) -> Result<()> {
        let now = self.db_now();
        let sql = format!(
            "UPDATE leases SET container_id = $1, state = 'busy', last_used_at = {now} \
             WHERE id = $2 AND state = 'creating'"
        );
        with_pool!(self, pool => sqlx::query(&sql)
            .bind(container_id)
            .bind(lease_id)
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
            "UPDATE leases SET state = 'busy', execution_id = $1, worker_id = $5, last_used_at = {now} \
             WHERE id = (SELECT id FROM leases WHERE state = 'idle' AND backend = $2 AND spec_hash = $3 \
                 AND COALESCE(engine_id, '') = COALESCE($4, '') AND expires_at > {now} AND tainted = 0 \
                 ORDER BY last_used_at DESC LIMIT 1 {lock}) \
             AND state = 'idle' RETURNING {LEASE_COLUMNS}"
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
            "SELECT engine_id FROM leases WHERE state = 'idle' AND backend = $1 AND spec_hash = $2 \
             AND engine_id IS NOT NULL AND expires_at > {now} AND tainted = 0 \
             ORDER BY last_used_at DESC LIMIT 1"
        );
        with_pool!(self, pool => sqlx::query_scalar::<_, String>(&sql)
            .bind(backend)
            .bind(spec_hash)
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
    ) -> Result<String> {
        let now = self.db_now();
        let held = "($3 IS NULL OR execution_id IS NULL OR execution_id = $3)";
        let sql = if reuse {
            format!(
                "UPDATE leases SET state = 'idle', execution_id = NULL, last_used_at = {now}, \
                 expires_at = {now} + ttl_secs * 1000, note = COALESCE($1, note) \
                 WHERE id = $2 AND state IN ('busy', 'creating') AND tainted = 0 AND {held}"
            )
        } else {
            format!(
                "UPDATE leases SET state = 'removing', last_used_at = {now}, note = COALESCE($1, note) \
                 WHERE id = $2 AND state IN ('busy', 'creating', 'idle') AND {held}"
            )
        };
        with_pool!(self, pool => sqlx::query(&sql)
            .bind(note)
            .bind(lease_id)
            .bind(holder)
            .execute(pool)
            .await
            .map_err(q("release lease"))?.rows_affected());
        Ok(self
            .get_lease(lease_id)
            .await?
            .map(|l| l.state)
            .unwrap_or_else(|| "removed".into()))
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
            "UPDATE leases SET state = 'removed', execution_id = NULL, last_used_at = {now} WHERE id = $1"
        );
        with_pool!(self, pool => sqlx::query(&sql)
            .bind(lease_id)
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
            "UPDATE leases SET state = 'removing', note = 'idle past its TTL' \
             WHERE state = 'idle' AND backend = $1 AND expires_at <= {now} RETURNING {LEASE_COLUMNS}"
        );
        with_pool!(self, pool => sqlx::query_as::<_, LeaseRecord>(&sql)
            .bind(backend)
            .fetch_all(pool)
            .await
            .map_err(q("expire idle leases")))
    }

    /// Leases in a given state (oldest first).
    pub async fn leases_in_state(&self, state: &str) -> Result<Vec<LeaseRecord>> {
        let sql =
            format!("SELECT {LEASE_COLUMNS} FROM leases WHERE state = $1 ORDER BY created_at");
        with_pool!(self, pool => sqlx::query_as::<_, LeaseRecord>(&sql)
            .bind(state)
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
             AND COALESCE(engine_id, '') = COALESCE($3, '') AND state IN ('creating', 'busy') \
             ORDER BY created_at DESC LIMIT 1"
        );
        with_pool!(self, pool => sqlx::query_as::<_, LeaseRecord>(&sql)
            .bind(backend)
            .bind(execution_id)
            .bind(engine_id)
            .fetch_optional(pool)
            .await
            .map_err(q("find the lease of an execution")))
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

    /// Hands an idle lease of a lost worker to `worker_id` (same Docker host): it stays
    /// reusable and is reaped by its new owner.
    pub async fn adopt_lease(&self, lease_id: &str, from: &str, worker_id: &str) -> Result<bool> {
        with_pool!(self, pool => Ok(sqlx::query(
            "UPDATE leases SET worker_id = $1 WHERE id = $2 AND worker_id = $3 AND state = 'idle'",
        )
        .bind(worker_id)
        .bind(lease_id)
        .bind(from)
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
            "UPDATE leases SET state = 'removing', tainted = 1, note = $1, last_used_at = {now} \
             WHERE id = $2 AND state IN ('busy', 'creating', 'idle')"
        );
        with_pool!(self, pool => Ok(sqlx::query(&sql)
            .bind(note)
            .bind(lease_id)
            .execute(pool)
            .await
            .map_err(q("retire a lease"))?
            .rows_affected() == 1))
    }

    /// Marks a lease removed with a note saying why (its container is gone, or out of reach).
    pub async fn forget_lease(&self, lease_id: &str, note: &str) -> Result<()> {
        let now = self.db_now();
        let sql = format!(
            "UPDATE leases SET state = 'removed', execution_id = NULL, note = $1, last_used_at = {now} \
             WHERE id = $2 AND state <> 'removed'"
        );
        with_pool!(self, pool => sqlx::query(&sql)
            .bind(note)
            .bind(lease_id)
            .execute(pool)
            .await
            .map_err(q("forget a lease"))?.rows_affected());
        Ok(())
    }

    /// Every lease not yet removed, newest first (plus removed ones when `all`).
    pub async fn list_leases(&self, all: bool) -> Result<Vec<LeaseRecord>> {
        let filter = if all { "" } else { "WHERE state <> 'removed'" };
        let sql = format!("SELECT {LEASE_COLUMNS} FROM leases {filter} ORDER BY created_at DESC");
        with_pool!(self, pool => sqlx::query_as::<_, LeaseRecord>(&sql)
            .fetch_all(pool)
            .await
            .map_err(q("list leases")))
    }

    /// How many leases are in each state (removed ones included), for the metrics gauge.
    pub async fn count_leases_by_state(&self) -> Result<Vec<(String, i64)>> {
        with_pool!(self, pool => sqlx::query_as::<_, (String, i64)>(
            "SELECT state, COUNT(*) FROM leases GROUP BY state",
        )
        .fetch_all(pool)
        .await
        .map_err(q("count leases by state")))
    }
}

pub(crate) fn is_missing_table(e: &sqlx::Error) -> bool {
    let text = e.to_string();
    text.contains("no such table") || text.contains("does not exist")
}

/// Removes a password from a database URL so it can appear in messages.
#[must_use]
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let Some((creds, host)) = rest.split_once('@') else {
        return url.to_string();
    };
    match creds.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(
            redact_url("postgres://stigmer:s3cret@db:5432/stigmer"),
            "postgres://stigmer:***@db:5432/stigmer"
        );
        assert_eq!(redact_url("sqlite:/tmp/x.db"), "sqlite:/tmp/x.db");
    }
}
