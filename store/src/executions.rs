//! Executions: one row per `AgentExecution`, from `queued` to its terminal state.
//!
//! The row is the claim that keeps `exec` from running a command twice ([`Store::mark_started`]
//! moves it `queued → running` atomically before anything is spawned) and, once ended, the
//! source of its audit record ([`Store::finish`] appends it). Statuses are written and compared
//! as [`Status`] values; the strings in the database are [`Status::as_str`].

use crate::audit::AuditRecord;
use crate::{Result, Store, StoreError, now_ms, q};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use stigmer_workflows::{ExecutionResult, Status};

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
    /// The names of its environment variables. Their values are never written to the store: they
    /// travel inside the execution's encrypted workflow input.
    pub env_names: Vec<String>,
    /// The OpenTelemetry trace the execution's spans belong to (32 hex), when tracing is on.
    pub trace_id: Option<String>,
    /// The caller's labels (metadata kept with the audit records; not secret).
    pub labels: BTreeMap<String, String>,
    /// The session it runs in, if any (docs/sessions.md).
    pub session: Option<String>,
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
    /// As stored; [`ExecutionRecord::status`] reads it (a value this binary does not know is
    /// kept, not refused: a newer worker may share the store).
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
    /// The caller's labels as a JSON object, when it gave any ([`ExecutionRecord::labels`]).
    pub labels: Option<String>,
    /// What the command was given on stdin: size and sha256, when anything was forwarded.
    pub stdin_bytes: Option<i64>,
    pub stdin_sha256: Option<String>,
    /// The session it ran in, if any.
    pub session: Option<String>,
}

impl ExecutionRecord {
    /// The caller's labels (empty when none, or when the stored text is not an object of
    /// strings).
    #[must_use]
    pub fn labels(&self) -> BTreeMap<String, String> {
        self.labels
            .as_deref()
            .and_then(|text| serde_json::from_str(text).ok())
            .unwrap_or_default()
    }

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
            report: None,
        }
    }
}

pub(crate) const EXECUTION_COLUMNS: &str = "id, workflow_id, run_id, command, workdir, requested_mode, \
    effective_mode, reason, status, exit_code, error, os_user, ci_identity, client_host, \
    worker_id, attempt, timeout_secs, image, image_digest, container_id, created_at, started_at, \
    finished_at, output_bytes, output_dropped, output_sha256, trace_id, labels, stdin_bytes, stdin_sha256, session";

/// The statuses an execution ends in; [`Store::prune_executions`] binds them in this order.
const TERMINAL: [Status; 4] = [
    Status::Succeeded,
    Status::Failed,
    Status::Cancelled,
    Status::TimedOut,
];

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

/// What [`Store::finish`] recorded.
#[derive(Clone, Debug)]
#[must_use = "`appended` is an execution that just ended: the caller counts it"]
pub struct Finished {
    /// The execution's outcome as stored: the first one recorded wins.
    pub result: ExecutionResult,
    /// The audit record this call appended; `None` when an earlier call already had, so an
    /// execution is reported as ended once however often `finish` is retried.
    pub appended: Option<AuditRecord>,
}

/// What [`Store::prune_executions`] removed, or would remove on a dry run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct PruneReport {
    pub executions: u64,
    pub output_chunks: u64,
    pub output_bytes: u64,
    pub dry_run: bool,
}

impl Store {
    /// Records a new execution as `queued`, with the names of its environment (kept until it
    /// ends).
    pub async fn insert_execution(&self, new: &NewExecution) -> Result<()> {
        let argv = new
            .argv
            .as_ref()
            .map(|a| serde_json::to_string(a).unwrap_or_default());
        let env: serde_json::Map<String, serde_json::Value> = new
            .env_names
            .iter()
            .map(|k| (k.clone(), serde_json::Value::Null))
            .collect();
        let env = serde_json::Value::Object(env).to_string();
        let labels = (!new.labels.is_empty())
            .then(|| serde_json::to_string(&new.labels).unwrap_or_default());
        with_pool!(self, pool => sqlx::query(
            "INSERT INTO executions (id, workflow_id, command, argv, workdir, requested_mode, \
             effective_mode, reason, status, os_user, ci_identity, client_host, timeout_secs, env, \
             created_at, trace_id, labels, session) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $16, $9, $10, $11, $12, $13, $14, $15, $17, $18)",
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
        .bind(Status::Queued.as_str())
        .bind(labels)
        .bind(&new.session)
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
    /// Only executions whose end record is in the audit chain and that no live lease points at
    /// are touched, so the audit trail stays whole. With `dry_run` nothing is removed: the
    /// report says what would be.
    pub async fn prune_executions(&self, before_ms: i64, dry_run: bool) -> Result<PruneReport> {
        // The statuses and the lease state are this crate's own names, spelt into the SQL from
        // their enums; only the cutoff ($1) comes from outside.
        let [succeeded, failed, cancelled, timed_out] = TERMINAL.map(Status::as_str);
        let removed = crate::LeaseState::Removed.as_str();
        let eligible = format!(
            "SELECT e.id FROM executions e \
             WHERE e.status IN ('{succeeded}', '{failed}', '{cancelled}', '{timed_out}') \
               AND e.finished_at IS NOT NULL AND e.finished_at < $1 \
               AND EXISTS (SELECT 1 FROM audit_log a \
                           WHERE a.execution_id = e.id AND a.event = 'ended') \
               AND NOT EXISTS (SELECT 1 FROM leases l \
                               WHERE l.execution_id = e.id AND l.state <> '{removed}')"
        );
        let count_sql = format!(
            "SELECT (SELECT COUNT(*) FROM ({eligible}) x), \
                    (SELECT COUNT(*) FROM output WHERE execution_id IN ({eligible})), \
                    (SELECT COALESCE(SUM(LENGTH(data)), 0) FROM output \
                     WHERE execution_id IN ({eligible}))"
        );
        let delete_output = format!("DELETE FROM output WHERE execution_id IN ({eligible})");
        let delete_executions = format!("DELETE FROM executions WHERE id IN ({eligible})");
        with_pool!(self, pool => {
            let mut tx = pool.begin().await.map_err(q("prune executions"))?;
            let (executions, output_chunks, output_bytes): (i64, i64, i64) =
                sqlx::query_as(&count_sql)
                    .bind(before_ms)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(q("count executions to prune"))?;
            if !dry_run {
                for (sql, what) in [
                    (&delete_output, "prune output"),
                    (&delete_executions, "prune executions"),
                ] {
                    sqlx::query(sql)
                        .bind(before_ms)
                        .execute(&mut *tx)
                        .await
                        .map_err(q(what))?;
                }
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

    /// The environment values an execution started before they moved into its encrypted input
    /// recorded here (empty once it has ended, and for every execution since: the store keeps
    /// only names).
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
            "UPDATE executions SET status = $5, started_at = $1, worker_id = $2, attempt = $3 \
             WHERE id = $4 AND status = $6",
        )
        .bind(now_ms())
        .bind(worker_id)
        .bind(i64::from(attempt))
        .bind(id)
        .bind(Status::Running.as_str())
        .bind(Status::Queued.as_str())
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
            "UPDATE executions SET status = $5, started_at = $1, worker_id = $2, attempt = $3 \
             WHERE id = $4 AND status IN ($6, $5)",
        )
        .bind(now_ms())
        .bind(worker_id)
        .bind(i64::from(attempt))
        .bind(id)
        .bind(Status::Running.as_str())
        .bind(Status::Queued.as_str())
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
    /// every call, so a retry after a crash between the two still appends it, once). The
    /// record appended by this call, if any, comes back in [`Finished::appended`].
    pub async fn finish(
        &self,
        result: &ExecutionResult,
        output: Option<&crate::OutputSummary>,
    ) -> Result<Finished> {
        let (bytes, dropped, sha) = match output {
            Some(o) => (Some(o.bytes), Some(o.dropped), o.sha256.clone()),
            None => (None, None, None),
        };
        let (stdin_bytes, stdin_sha) = output
            .and_then(|o| o.stdin.clone())
            .map_or((None, None), |(n, sha)| (Some(n), Some(sha)));
        with_pool!(self, pool => sqlx::query(
            "UPDATE executions SET status = $1, exit_code = $2, error = $3, finished_at = $4, \
             output_bytes = COALESCE($5, output_bytes), output_dropped = COALESCE($6, output_dropped), \
             output_sha256 = COALESCE($7, output_sha256), env = NULL, \
             stdin_bytes = COALESCE($11, stdin_bytes), stdin_sha256 = COALESCE($12, stdin_sha256) \
             WHERE id = $8 AND status IN ($9, $10)",
        )
        .bind(result.status.as_str())
        .bind(result.exit_code.map(i64::from))
        .bind(&result.error)
        .bind(now_ms())
        .bind(bytes)
        .bind(dropped)
        .bind(sha)
        .bind(&result.id)
        .bind(Status::Queued.as_str())
        .bind(Status::Running.as_str())
        .bind(stdin_bytes)
        .bind(stdin_sha)
        .execute(pool)
        .await
        .map_err(q("record execution result"))?.rows_affected());
        // One command at a time per session: its end frees the session for the next.
        self.release_session(&result.id).await?;
        let appended = crate::audit::append(self, &result.id).await?;
        let result = match self.get_execution(&result.id).await? {
            Some(record) => record.result(),
            None => result.clone(),
        };
        Ok(Finished { result, appended })
    }
}
