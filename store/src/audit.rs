//! The audit trail: one hash-chained record per ended execution.
//!
//! When an execution reaches its terminal state, [`append`] turns its row in `executions` into a
//! canonical JSON record and appends it to `audit_log` with `hash = sha256(prev_hash || record)`.
//! Appends serialize on the single `audit_head` row (locked with `SELECT … FOR UPDATE` on
//! Postgres; SQLite write transactions begin `IMMEDIATE`), so several workers sharing one store
//! still build one unbroken chain. [`append`] is idempotent per execution: `finish` calls it every
//! time, so a worker lost between recording the result and appending is healed by the retry. It
//! returns the record only the time it appends it, so a caller that counts ended executions
//! counts each once.
//!
//! [`verify`] walks the chain and names the first record that does not fit; [`export`] streams
//! records as JSON lines. The chain shows that records were not edited, removed or reordered
//! *after the fact by someone who did not also rewrite every later hash*; see docs/audit.md for
//! what it does and does not prove.

use crate::executions::EXECUTION_COLUMNS;
use crate::{ExecutionRecord, Store, StoreError, is_missing_table, now_ms, q};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// Format version of the record, inside the hashed text so a reader knows how to read it.
pub const RECORD_VERSION: i64 = 1;

/// `prev_hash` of the first record.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Rows read per query by `verify` and `export`: memory stays bounded however long the chain.
const PAGE: i64 = 500;

type Result<T> = std::result::Result<T, StoreError>;

/// What is recorded about an execution. Field names are the keys of the canonical JSON.
/// Timestamps are unix milliseconds (UTC); absent values are `null`, never omitted, so every
/// record has the same keys.
#[derive(Clone, Debug, Serialize)]
pub struct AuditRecord {
    pub v: i64,
    pub seq: i64,
    pub recorded_at_ms: i64,
    pub execution_id: String,
    pub workflow_id: String,
    pub run_id: Option<String>,
    pub os_user: Option<String>,
    pub ci_identity: Option<String>,
    pub client_host: Option<String>,
    pub created_at_ms: i64,
    pub started_at_ms: Option<i64>,
    pub finished_at_ms: Option<i64>,
    pub duration_ms: Option<i64>,
    pub command: String,
    pub workdir: String,
    pub requested_mode: String,
    pub effective_mode: String,
    pub mode_reason: String,
    pub image: Option<String>,
    pub image_digest: Option<String>,
    pub container_id: Option<String>,
    pub worker_id: Option<String>,
    pub attempt: i64,
    pub timeout_secs: Option<i64>,
    pub status: String,
    pub exit_code: Option<i64>,
    pub error: Option<String>,
    pub output_bytes: i64,
    pub output_dropped_bytes: i64,
    pub output_sha256: Option<String>,
}

impl AuditRecord {
    /// The record of an ended execution, as the `seq`-th of the chain.
    #[must_use]
    pub fn of(execution: &ExecutionRecord, seq: i64, recorded_at_ms: i64) -> Self {
        let e = execution;
        Self {
            v: RECORD_VERSION,
            seq,
            recorded_at_ms,
            execution_id: e.id.clone(),
            workflow_id: e.workflow_id.clone(),
            run_id: e.run_id.clone(),
            os_user: e.os_user.clone(),
            ci_identity: e.ci_identity.clone(),
            client_host: e.client_host.clone(),
            created_at_ms: e.created_at,
            started_at_ms: e.started_at,
            finished_at_ms: e.finished_at,
            duration_ms: match (e.started_at, e.finished_at) {
                (Some(s), Some(f)) => Some(f - s),
                _ => None,
            },
            command: e.command.clone(),
            workdir: e.workdir.clone(),
            requested_mode: e.requested_mode.clone(),
            effective_mode: e.effective_mode.clone(),
            mode_reason: e.reason.clone(),
            image: e.image.clone(),
            image_digest: e.image_digest.clone(),
            container_id: e.container_id.clone(),
            worker_id: e.worker_id.clone(),
            attempt: e.attempt,
            timeout_secs: e.timeout_secs,
            status: e.status.clone(),
            exit_code: e.exit_code,
            error: e.error.clone(),
            output_bytes: e.output_bytes,
            output_dropped_bytes: e.output_dropped,
            output_sha256: e.output_sha256.clone(),
        }
    }

    /// The canonical text that is hashed: compact JSON, keys sorted, UTF-8.
    #[must_use]
    pub fn canonical(&self) -> String {
        // A plain struct cannot fail to serialize; the fallback keeps this infallible.
        serde_json::to_value(self)
            .map(|v| canonical_json(&v))
            .unwrap_or_default()
    }
}

/// JSON with object keys sorted at every level and no insignificant whitespace: the same value
/// always gives the same text, whatever order its keys were built in. Anyone can reproduce it
/// (e.g. Python's `json.dumps(v, sort_keys=True, separators=(",", ":"), ensure_ascii=False)`).
#[must_use]
pub fn canonical_json(value: &Value) -> String {
    fn sorted(value: &Value) -> Value {
        match value {
            Value::Object(map) => {
                let ordered: BTreeMap<&String, Value> =
                    map.iter().map(|(k, v)| (k, sorted(v))).collect();
                // Re-inserting in sorted order keeps the order even if serde_json preserves
                // insertion order (its `preserve_order` feature may be on in the build).
                Value::Object(ordered.into_iter().map(|(k, v)| (k.clone(), v)).collect())
            }
            Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    sorted(value).to_string()
}

/// `sha256(prev_hash || record)` in lowercase hex: the link of the chain.
#[must_use]
pub fn chain_hash(prev_hash: &str, record: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(prev_hash.as_bytes());
    hasher.update(record.as_bytes());
    hex::encode(hasher.finalize())
}

/// One row of `audit_log`.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct AuditRow {
    pub seq: i64,
    pub execution_id: String,
    pub recorded_at: i64,
    pub record: String,
    pub prev_hash: String,
    pub hash: String,
}

/// Appends the audit record of execution `id` if it has ended and has none yet. Returns the new
/// record, or `None` when there was nothing to append (not ended, unknown, or already recorded).
pub async fn append(store: &Store, id: &str) -> Result<Option<AuditRecord>> {
    let select = format!("SELECT {EXECUTION_COLUMNS} FROM executions WHERE id = $1");
    // SQLite's IMMEDIATE transaction already holds the write lock; Postgres locks the head row,
    // so two workers appending at once take turns and both see the other's head.
    let head_sql = if store.is_postgres() {
        "SELECT seq, hash FROM audit_head WHERE id = 1 FOR UPDATE"
    } else {
        "SELECT seq, hash FROM audit_head WHERE id = 1"
    };
    let begin = store.begin_write();
    with_pool!(store, pool => {
        let mut tx = pool.begin_with(begin).await.map_err(q("begin audit append"))?;
        let (head_seq, head_hash): (i64, String) = sqlx::query_as(head_sql)
            .fetch_one(&mut *tx)
            .await
            .map_err(q("lock the audit chain head"))?;
        let exists: Option<(i64,)> =
            sqlx::query_as("SELECT seq FROM audit_log WHERE execution_id = $1")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(q("look up audit record"))?;
        let execution = sqlx::query_as::<_, ExecutionRecord>(&select)
            .bind(id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(q("read execution for audit"))?;
        let ended = execution
            .filter(|e| e.status().is_some_and(stigmer_workflows::Status::is_terminal));
        let (None, Some(execution)) = (exists, ended) else {
            tx.rollback().await.map_err(q("end audit append"))?;
            return Ok(None);
        };
        let seq = head_seq + 1;
        let recorded_at = now_ms();
        let record = AuditRecord::of(&execution, seq, recorded_at);
        let text = record.canonical();
        let hash = chain_hash(&head_hash, &text);
        sqlx::query(
            "INSERT INTO audit_log (seq, execution_id, recorded_at, record, prev_hash, hash) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(seq)
        .bind(id)
        .bind(recorded_at)
        .bind(&text)
        .bind(&head_hash)
        .bind(&hash)
        .execute(&mut *tx)
        .await
        .map_err(q("append audit record"))?;
        sqlx::query("UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1")
            .bind(seq)
            .bind(&hash)
            .execute(&mut *tx)
            .await
            .map_err(q("advance the audit chain head"))?;
        tx.commit().await.map_err(q("commit audit record"))?;
        Ok(Some(record))
    })
}

/// The first place the chain does not hold.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Break {
    /// The seq of the first record that is wrong or missing.
    pub seq: i64,
    /// Its execution, when it can still be told (a deleted record's is a best guess).
    pub execution_id: Option<String>,
    /// What is wrong, in words.
    pub problem: String,
}

/// The outcome of [`verify`].
#[derive(Clone, Debug, Serialize)]
pub struct VerifyReport {
    /// Records that were checked and found intact (up to the break, if any).
    pub intact: u64,
    /// The head as stored: last seq and hash. Keep the hash elsewhere to detect a rewrite.
    pub head_seq: i64,
    pub head_hash: String,
    pub broken: Option<Break>,
}

impl VerifyReport {
    #[must_use]
    pub fn ok(&self) -> bool {
        self.broken.is_none()
    }
}

/// Checks the whole chain: seqs contiguous from 1, each `prev_hash` the previous `hash`, each
/// `hash = sha256(prev_hash || record)`, each record's own seq and execution id matching its
/// row, and the head pointing at the last record. Stops at the first break.
pub async fn verify(store: &Store) -> Result<VerifyReport> {
    let head: std::result::Result<(i64, String), sqlx::Error> = with_pool!(store, pool =>
        sqlx::query_as("SELECT seq, hash FROM audit_head WHERE id = 1")
            .fetch_one(pool)
            .await);
    let (head_seq, head_hash) = match head {
        Ok(head) => head,
        // A store made before the audit trail existed: the daemon or a worker migrates it.
        Err(e) if is_missing_table(&e) => {
            return Err(StoreError::NotInitialized(store.display_url()));
        }
        Err(source) => {
            return Err(StoreError::Query {
                what: "read the audit chain head",
                source,
            });
        }
    };
    let mut report = VerifyReport {
        intact: 0,
        head_seq,
        head_hash: head_hash.clone(),
        broken: None,
    };
    let mut expected_seq = 1i64;
    let mut prev_hash = GENESIS_HASH.to_string();
    let mut prev_recorded_at = 0i64;
    loop {
        let rows = page(store, expected_seq - 1, None).await?;
        if rows.is_empty() {
            break;
        }
        for row in rows {
            if row.seq != expected_seq {
                let guess = unaudited_between(store, prev_recorded_at, row.recorded_at).await?;
                report.broken = Some(Break {
                    seq: expected_seq,
                    execution_id: guess.first().cloned(),
                    problem: missing_problem(expected_seq, &row, &guess),
                });
                return Ok(report);
            }
            if let Some(problem) = check_row(&row, &prev_hash) {
                report.broken = Some(Break {
                    seq: row.seq,
                    execution_id: Some(row.execution_id.clone()),
                    problem,
                });
                return Ok(report);
            }
            report.intact += 1;
            expected_seq = row.seq + 1;
            prev_hash = row.hash;
            prev_recorded_at = row.recorded_at;
        }
    }
    let last_seq = expected_seq - 1;
    if head_seq != last_seq || head_hash != prev_hash {
        let problem = if head_seq > last_seq {
            let guess = unaudited_between(store, prev_recorded_at, i64::MAX).await?;
            report.broken = Some(Break {
                seq: last_seq + 1,
                execution_id: guess.first().cloned(),
                problem: format!(
                    "the chain head says {head_seq} record(s) but the log ends at seq {last_seq}: \
                     record(s) {}..={head_seq} were deleted{}",
                    last_seq + 1,
                    likely(&guess)
                ),
            });
            return Ok(report);
        } else {
            format!(
                "the chain head (seq {head_seq}, hash {head_hash}) does not match the last \
                 record (seq {last_seq}, hash {prev_hash}): the head or the log was rewritten"
            )
        };
        report.broken = Some(Break {
            seq: last_seq,
            execution_id: None,
            problem,
        });
    }
    Ok(report)
}

/// Why `row`, in its place by seq, does not continue a chain whose last hash is `prev_hash`.
fn check_row(row: &AuditRow, prev_hash: &str) -> Option<String> {
    if row.prev_hash != prev_hash {
        return Some(format!(
            "its prev_hash {} is not the hash of the record before it ({prev_hash}): a record \
             before it was replaced, or the chain was spliced",
            row.prev_hash
        ));
    }
    let computed = chain_hash(&row.prev_hash, &row.record);
    if computed != row.hash {
        return Some(format!(
            "its content does not match its hash (stored {}, computed {computed}): the record \
             was edited after it was written",
            row.hash
        ));
    }
    let parsed: Option<Value> = serde_json::from_str(&row.record).ok();
    let field = |k: &str| parsed.as_ref().and_then(|v| v.get(k)).cloned();
    if field("seq").and_then(|v| v.as_i64()) != Some(row.seq)
        || field("execution_id").and_then(|v| v.as_str().map(String::from))
            != Some(row.execution_id.clone())
    {
        return Some(
            "its seq or execution id columns disagree with the hashed record: the row was \
             edited after it was written"
                .into(),
        );
    }
    None
}

fn missing_problem(expected: i64, next: &AuditRow, guess: &[String]) -> String {
    let range = if next.seq > expected + 1 {
        format!("records {expected}..={}", next.seq - 1)
    } else if next.seq > expected {
        format!("record {expected}")
    } else {
        return format!(
            "seq {} appears where {expected} was expected: records were renumbered or duplicated",
            next.seq
        );
    };
    format!(
        "{range} missing: the log jumps to seq {} (execution {}); {} deleted{}",
        next.seq,
        next.execution_id,
        if next.seq > expected + 1 {
            "they were"
        } else {
            "it was"
        },
        likely(guess)
    )
}

fn likely(guess: &[String]) -> String {
    if guess.is_empty() {
        String::new()
    } else {
        format!(
            "; ended executions with no audit record (likely the deleted ones): {}",
            guess.join(", ")
        )
    }
}

/// Ended executions without an audit record that finished before `until` (and after `from`,
/// give or take the gap between finishing and appending): what a deleted record was about.
async fn unaudited_between(store: &Store, from: i64, until: i64) -> Result<Vec<String>> {
    // A record is appended just after its execution finishes; allow a minute of slack.
    let from = from.saturating_sub(60_000);
    let rows: Vec<(String,)> = with_pool!(store, pool => sqlx::query_as(
        "SELECT id FROM executions e WHERE finished_at IS NOT NULL \
         AND finished_at >= $1 AND finished_at <= $2 \
         AND NOT EXISTS (SELECT 1 FROM audit_log a WHERE a.execution_id = e.id) \
         ORDER BY finished_at LIMIT 10",
    )
    .bind(from)
    .bind(until)
    .fetch_all(pool)
    .await
    .map_err(q("find executions without audit records"))?);
    Ok(rows.into_iter().map(|(id,)| id).collect())
}

/// Up to [`PAGE`] rows with seq greater than `after_seq` (and recorded at or after `since_ms`).
async fn page(store: &Store, after_seq: i64, since_ms: Option<i64>) -> Result<Vec<AuditRow>> {
    with_pool!(store, pool => sqlx::query_as::<_, AuditRow>(
        "SELECT seq, execution_id, recorded_at, record, prev_hash, hash FROM audit_log \
         WHERE seq > $1 AND recorded_at >= $2 ORDER BY seq LIMIT $3",
    )
    .bind(after_seq)
    .bind(since_ms.unwrap_or(i64::MIN))
    .bind(PAGE)
    .fetch_all(pool)
    .await
    .map_err(q("read audit records")))
}

/// One JSON line of `audit export`: the row's chain fields and the record itself. The record is
/// embedded byte for byte as it was hashed, so `hash` can be recomputed from the line.
#[must_use]
pub fn export_line(row: &AuditRow) -> String {
    let record = if serde_json::from_str::<Value>(&row.record).is_ok() {
        row.record.clone()
    } else {
        // An edited row may no longer be JSON; export it as a string rather than break the line.
        Value::String(row.record.clone()).to_string()
    };
    format!(
        "{{\"seq\":{},\"execution_id\":{},\"recorded_at_ms\":{},\"prev_hash\":{},\"hash\":{},\"record\":{record}}}",
        row.seq,
        Value::String(row.execution_id.clone()),
        row.recorded_at,
        Value::String(row.prev_hash.clone()),
        Value::String(row.hash.clone()),
    )
}

/// Streams the records appended at or after `since_ms` (all when `None`), in chain order, to
/// `emit` one JSON line at a time. Returns how many were exported.
pub async fn export(
    store: &Store,
    since_ms: Option<i64>,
    mut emit: impl FnMut(&str) -> std::io::Result<()>,
) -> std::result::Result<u64, ExportError> {
    let mut after = 0i64;
    let mut count = 0u64;
    loop {
        let rows = page(store, after, since_ms).await?;
        if rows.is_empty() {
            return Ok(count);
        }
        for row in rows {
            emit(&export_line(&row)).map_err(ExportError::Write)?;
            after = row.seq;
            count += 1;
        }
    }
}

/// Why an export stopped.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("could not write the export: {0}")]
    Write(std::io::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_text_sorts_keys_and_is_compact() {
        let v: Value = serde_json::from_str(r#"{"b": 1, "a": {"d": null, "c": "x\ny"}}"#).unwrap();
        assert_eq!(canonical_json(&v), r#"{"a":{"c":"x\ny","d":null},"b":1}"#);
    }

    #[test]
    fn the_hash_binds_the_previous_hash_and_the_record() {
        let a = chain_hash(GENESIS_HASH, "{}");
        assert_eq!(a.len(), 64);
        assert_ne!(
            a,
            chain_hash(&a, "{}"),
            "the same record later has another hash"
        );
        assert_ne!(a, chain_hash(GENESIS_HASH, "{ }"));
    }

    #[test]
    fn an_edited_row_is_named() {
        let record = r#"{"execution_id":"aex-1","seq":1}"#.to_string();
        let mut row = AuditRow {
            seq: 1,
            execution_id: "aex-1".into(),
            recorded_at: 0,
            hash: chain_hash(GENESIS_HASH, &record),
            record,
            prev_hash: GENESIS_HASH.into(),
        };
        assert_eq!(check_row(&row, GENESIS_HASH), None);
        row.record = row.record.replace("aex-1", "aex-2");
        assert!(check_row(&row, GENESIS_HASH).is_some_and(|p| p.contains("edited")));
    }
}
