//! The audit trail: hash-chained records of each execution, one when it starts and one when it
//! ends.
//!
//! When an execution is claimed to run, [`append_started`] turns its row in `executions` into a
//! canonical JSON record (`"event":"started"`) and appends it to `audit_log` with
//! `hash = sha256(prev_hash || record)`; when it reaches its terminal state, [`append`] does the
//! same with `"event":"ended"`. Records written before start records existed have no `event`
//! key and read as `ended`.
//! Appends serialize on the single `audit_head` row (locked with `SELECT … FOR UPDATE` on
//! Postgres; SQLite write transactions begin `IMMEDIATE`), so several workers sharing one store
//! still build one unbroken chain. [`append`] is idempotent per execution: `finish` calls it every
//! time, so a worker lost between recording the result and appending is healed by the retry. It
//! returns the record only the time it appends it, so a caller that counts ended executions
//! counts each once.
//!
//! When the writer holds a [`Signer`] (an ed25519 key), each append also signs the head it makes
//! (`seq` and `hash`, see [`head_message`]) and stores the signature with the row.
//!
//! [`verify`] walks the chain and names the first record that does not fit; given an [`Anchor`]
//! (a head saved earlier, outside the store) it also says whether the chain still holds that
//! record at that seq, which catches truncation and a consistently rewritten chain; given a
//! [`VerifyKey`] it checks the signatures. [`export`] streams records as JSON lines. See
//! docs/audit.md for what the chain does and does not prove.

use crate::executions::EXECUTION_COLUMNS;
use crate::{ExecutionRecord, Store, StoreError, is_missing_table, now_ms, q};
use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use stigmer_workflows::Status;

/// Format version of the record, inside the hashed text so a reader knows how to read it.
pub const RECORD_VERSION: i64 = 1;

/// `prev_hash` of the first record.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Rows read per query by `verify` and `export`: memory stays bounded however long the chain.
const PAGE: i64 = 500;

/// How long an execution may stay ended in the store without its end record before [`verify`]
/// calls the record missing: `finish` appends it in the same step, and a worker lost in between
/// leaves it to the activity's retry.
pub const END_RECORD_GRACE_MS: i64 = 10 * 60_000;

type Result<T> = std::result::Result<T, StoreError>;

/// What a record is about: the execution starting, or ending.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Event {
    Started,
    Ended,
}

impl Event {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Started => "started",
            Self::Ended => "ended",
        }
    }

    /// The event a stored record states: its `event` key, or `ended` for a record written before
    /// start records existed (it has no such key). `None` for a value this binary does not know.
    #[must_use]
    pub fn of_record(record: &Value) -> Option<Self> {
        match record.get("event") {
            None => Some(Self::Ended),
            Some(v) => match v.as_str()? {
                "started" => Some(Self::Started),
                "ended" => Some(Self::Ended),
                _ => None,
            },
        }
    }
}

/// The text a head signature signs: the seq and hash of the chain's last record, with a
/// domain prefix so the signature cannot be replayed as anything else.
#[must_use]
pub fn head_message(seq: i64, hash: &str) -> String {
    format!("stigmer-audit-head/v1:{seq}:{hash}")
}

/// A public key's id: the first 16 hex characters of sha256 of its 32 bytes.
fn key_id_of(public: &VerifyingKey) -> String {
    let digest = hex::encode(Sha256::digest(public.as_bytes()));
    digest[..16].to_string()
}

/// The key that signs each new head, held by the writers (workers) that should be trusted.
#[derive(Clone)]
pub struct Signer {
    key: Arc<SigningKey>,
    key_id: String,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        write!(f, "Signer(key id {})", self.key_id)
    }
}

impl Signer {
    /// The signer whose ed25519 secret seed is `seed`.
    #[must_use]
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        let key = SigningKey::from_bytes(seed);
        let key_id = key_id_of(&key.verifying_key());
        Self {
            key: Arc::new(key),
            key_id,
        }
    }

    #[must_use]
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The public half, for `audit verify --verify-key`.
    #[must_use]
    pub fn verify_key(&self) -> VerifyKey {
        VerifyKey::from_key(self.key.verifying_key())
    }

    /// The signature (hex) of the head at `seq` with `hash`.
    #[must_use]
    pub fn sign_head(&self, seq: i64, hash: &str) -> String {
        hex::encode(self.key.sign(head_message(seq, hash).as_bytes()).to_bytes())
    }
}

/// A public key that checks head signatures.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyKey {
    key: VerifyingKey,
    key_id: String,
}

impl VerifyKey {
    fn from_key(key: VerifyingKey) -> Self {
        let key_id = key_id_of(&key);
        Self { key, key_id }
    }

    /// Reads a public key written as 64 hex characters (what `stigmer audit keygen` prints).
    pub fn from_hex(raw: &str) -> std::result::Result<Self, String> {
        let raw = raw.trim();
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(raw, &mut bytes).map_err(|_| {
            format!(
                "{} is not an ed25519 public key: give the 64 hex characters `stigmer audit keygen` \
                 printed",
                if raw.len() > 80 {
                    format!("a value of {} characters", raw.len())
                } else {
                    format!("{raw:?}")
                }
            )
        })?;
        let key = VerifyingKey::from_bytes(&bytes)
            .map_err(|_| format!("{raw} is not a valid ed25519 public key (not a curve point)"))?;
        Ok(Self::from_key(key))
    }

    #[must_use]
    pub fn to_hex(&self) -> String {
        hex::encode(self.key.as_bytes())
    }

    #[must_use]
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// Whether `signature` (hex) signs the head at `seq` with `hash` under this key.
    #[must_use]
    pub fn check(&self, seq: i64, hash: &str, signature: &str) -> bool {
        let mut bytes = [0u8; 64];
        if hex::decode_to_slice(signature.trim(), &mut bytes).is_err() {
            return false;
        }
        self.key
            .verify(
                head_message(seq, hash).as_bytes(),
                &Signature::from_bytes(&bytes),
            )
            .is_ok()
    }
}

/// What is recorded about an execution. Field names are the keys of the canonical JSON.
/// Timestamps are unix milliseconds (UTC); absent values are `null`, never omitted, so every
/// record has the same keys.
#[derive(Clone, Debug, Serialize)]
pub struct AuditRecord {
    pub v: i64,
    pub seq: i64,
    pub event: Event,
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
    /// The caller's labels (`{}` when none; records written before labels existed lack the key).
    pub labels: BTreeMap<String, String>,
    /// What the command was given on stdin, when anything was forwarded (records written
    /// before stdin was forwarded lack the keys).
    pub stdin_bytes: Option<i64>,
    pub stdin_sha256: Option<String>,
    /// The session the command ran in (docs/sessions.md); omitted when none, so a record of a
    /// command outside a session reads as it did before sessions existed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
}

impl AuditRecord {
    /// The record of an execution's `event`, as the `seq`-th of the chain.
    #[must_use]
    pub fn of(execution: &ExecutionRecord, event: Event, seq: i64, recorded_at_ms: i64) -> Self {
        let e = execution;
        Self {
            v: RECORD_VERSION,
            seq,
            event,
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
            labels: e.labels(),
            stdin_bytes: e.stdin_bytes,
            stdin_sha256: e.stdin_sha256.clone(),
            session: e.session.clone(),
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
    /// `started` or `ended` (rows from before start records existed are `ended`).
    pub event: String,
    pub recorded_at: i64,
    pub record: String,
    pub prev_hash: String,
    pub hash: String,
    /// The ed25519 signature (hex) of the head this row made, when its writer held a key.
    pub signature: Option<String>,
    /// The id of the key that made `signature`.
    pub signer: Option<String>,
}

const ROW_COLUMNS: &str =
    "seq, execution_id, event, recorded_at, record, prev_hash, hash, signature, signer";

/// Appends the end record of execution `id` if it has ended and has none yet. Returns the new
/// record, or `None` when there was nothing to append (not ended, unknown, or already recorded).
pub async fn append(store: &Store, id: &str) -> Result<Option<AuditRecord>> {
    append_event(store, id, Event::Ended).await
}

/// Appends the start record of execution `id` if it is running and has no record yet (neither
/// start nor end). Returns the new record, or `None` when there was nothing to append.
pub async fn append_started(store: &Store, id: &str) -> Result<Option<AuditRecord>> {
    append_event(store, id, Event::Started).await
}

async fn append_event(store: &Store, id: &str, event: Event) -> Result<Option<AuditRecord>> {
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
        let recorded: Vec<(String,)> =
            sqlx::query_as("SELECT event FROM audit_log WHERE execution_id = $1")
                .bind(id)
                .fetch_all(&mut *tx)
                .await
                .map_err(q("look up audit records"))?;
        let execution = sqlx::query_as::<_, ExecutionRecord>(&select)
            .bind(id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(q("read execution for audit"))?;
        let due = match event {
            // A late start record after the end would misplace the start in the chain.
            Event::Started => recorded.is_empty(),
            Event::Ended => !recorded.iter().any(|(e,)| e == Event::Ended.as_str()),
        };
        let execution = execution.filter(|e| match event {
            Event::Started => e.status() == Some(Status::Running),
            Event::Ended => e.status().is_some_and(Status::is_terminal),
        });
        let (true, Some(execution)) = (due, execution) else {
            tx.rollback().await.map_err(q("end audit append"))?;
            return Ok(None);
        };
        let seq = head_seq + 1;
        let recorded_at = now_ms();
        let record = AuditRecord::of(&execution, event, seq, recorded_at);
        let text = record.canonical();
        let hash = chain_hash(&head_hash, &text);
        let (signature, signer) = match &store.signer {
            Some(signer) => (
                Some(signer.sign_head(seq, &hash)),
                Some(signer.key_id().to_string()),
            ),
            None => (None, None),
        };
        sqlx::query(
            "INSERT INTO audit_log (seq, execution_id, event, recorded_at, record, prev_hash, \
             hash, signature, signer) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(seq)
        .bind(id)
        .bind(event.as_str())
        .bind(recorded_at)
        .bind(&text)
        .bind(&head_hash)
        .bind(&hash)
        .bind(signature)
        .bind(signer)
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

/// The chain head as stored: what a pipeline saves (as `SEQ:HASH`) to check the next time.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Head {
    pub seq: i64,
    pub hash: String,
    /// The stored signature of this head (hex), when its writer held a signing key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    /// The id of the key that signed it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
}

/// Reads the chain head and the signature stored with its record.
pub async fn head(store: &Store) -> Result<Head> {
    let (seq, hash) = read_head(store).await?;
    let signed: Option<(Option<String>, Option<String>)> = with_pool!(store, pool =>
        sqlx::query_as("SELECT signature, signer FROM audit_log WHERE seq = $1 AND hash = $2")
            .bind(seq)
            .bind(&hash)
            .fetch_optional(pool)
            .await
            .map_err(q("read the head's signature"))?);
    let (signature, key_id) = signed.unwrap_or_default();
    Ok(Head {
        seq,
        hash,
        signature,
        key_id,
    })
}

async fn read_head(store: &Store) -> Result<(i64, String)> {
    let head: std::result::Result<(i64, String), sqlx::Error> = with_pool!(store, pool =>
        sqlx::query_as("SELECT seq, hash FROM audit_head WHERE id = 1")
            .fetch_one(pool)
            .await);
    match head {
        Ok(head) => Ok(head),
        // A store made before the audit trail existed: the daemon or a worker migrates it.
        Err(e) if is_missing_table(&e) => Err(StoreError::NotInitialized(store.display_url())),
        Err(source) => Err(StoreError::Query {
            what: "read the audit chain head",
            source,
        }),
    }
}

/// A head saved earlier, outside the store: the chain must still hold the record `hash` at
/// `seq`. Written `SEQ:HASH`.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Anchor {
    pub seq: i64,
    pub hash: String,
}

/// What an anchor looks like, for messages.
pub const ANCHOR_FORM: &str = "SEQ:HASH, a record number and its 64-hex-character hash \
    (e.g. 742:3f9a…), as `stigmer audit head` prints it";

impl std::str::FromStr for Anchor {
    type Err = String;

    fn from_str(raw: &str) -> std::result::Result<Self, String> {
        let raw = raw.trim();
        let Some((seq, hash)) = raw.split_once(':') else {
            return Err(format!("{raw:?} has no ':'; give {ANCHOR_FORM}"));
        };
        let seq: i64 = match seq.trim().parse() {
            Ok(n) if n >= 0 => n,
            _ => {
                return Err(format!(
                    "{seq:?} is not a record number (a whole number ≥ 0); give {ANCHOR_FORM}"
                ));
            }
        };
        let hash = hash.trim().to_ascii_lowercase();
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!(
                "the hash {hash:?} is not 64 hex characters (a sha256); give {ANCHOR_FORM}"
            ));
        }
        Ok(Self { seq, hash })
    }
}

impl std::fmt::Display for Anchor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.seq, self.hash)
    }
}

/// What [`verify`] checks beyond the chain itself.
#[derive(Clone, Debug, Default)]
pub struct VerifyOptions {
    /// A head saved earlier: the chain must hold that record at that seq.
    pub expect: Option<Anchor>,
    /// The public key whose signatures are checked; the head must carry one.
    pub key: Option<VerifyKey>,
}

/// The first place the chain does not hold.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Break {
    /// The seq of the first record that is wrong or missing.
    pub seq: i64,
    /// Its execution, when it can still be told (a deleted record's is a best guess).
    pub execution_id: Option<String>,
    /// What kind of break: `edited`, `missing`, `head`, `truncated`, `rewritten`,
    /// `signature`, `unsigned` or `start-without-end`.
    pub kind: &'static str,
    /// What is wrong, in words.
    pub problem: String,
}

/// The outcome of [`verify`].
#[derive(Clone, Debug, Serialize)]
pub struct VerifyReport {
    /// Records that were checked and found intact (up to the break, if any).
    pub intact: u64,
    /// The head as stored: last seq and hash. Keep them elsewhere (`audit head`) and pass them
    /// back as an [`Anchor`] to detect truncation and a rewrite.
    pub head_seq: i64,
    pub head_hash: String,
    /// The anchor that was checked and held, if one was given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected: Option<Anchor>,
    /// Signatures that were checked with the verify key and held.
    pub signatures_checked: u64,
    /// Signatures by another key than the verify key (not checked).
    pub signatures_other_key: u64,
    /// Executions with a start record and no end record that the store holds as running.
    pub running: u64,
    pub broken: Option<Break>,
}

impl VerifyReport {
    #[must_use]
    pub fn ok(&self) -> bool {
        self.broken.is_none()
    }
}

/// Checks the whole chain with no anchor and no key: see [`verify_with`].
pub async fn verify(store: &Store) -> Result<VerifyReport> {
    verify_with(store, &VerifyOptions::default()).await
}

/// Checks the whole chain: seqs contiguous from 1, each `prev_hash` the previous `hash`, each
/// `hash = sha256(prev_hash || record)`, each record's own seq, execution id and event matching
/// its row, and the head pointing at the last record. Then, in this order: that the chain holds
/// `options.expect`; with `options.key`, every signature by that key and a signature on the
/// head; and that every execution with a start record and no end record is still running in
/// the store. Stops at the first break.
pub async fn verify_with(store: &Store, options: &VerifyOptions) -> Result<VerifyReport> {
    let (head_seq, head_hash) = read_head(store).await?;
    let mut report = VerifyReport {
        intact: 0,
        head_seq,
        head_hash: head_hash.clone(),
        expected: None,
        signatures_checked: 0,
        signatures_other_key: 0,
        running: 0,
        broken: None,
    };
    let mut expected_seq = 1i64;
    let mut prev_hash = GENESIS_HASH.to_string();
    let mut prev_recorded_at = 0i64;
    // The last row's signature and signer: the head's, once the walk is done.
    let mut last_signed: (Option<String>, Option<String>) = (None, None);
    // Executions started and not (yet) ended in the chain, with their start record's seq.
    let mut open: HashMap<String, i64> = HashMap::new();
    let expect = options.expect.as_ref();
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
                    kind: "missing",
                    problem: missing_problem(expected_seq, &row, &guess),
                });
                return Ok(report);
            }
            let event = match check_row(&row, &prev_hash) {
                Ok(event) => event,
                Err(problem) => {
                    report.broken = Some(Break {
                        seq: row.seq,
                        execution_id: Some(row.execution_id.clone()),
                        kind: "edited",
                        problem,
                    });
                    return Ok(report);
                }
            };
            if let (Some(key), Some(signature)) = (&options.key, &row.signature) {
                if row.signer.as_deref() == Some(key.key_id()) {
                    if !key.check(row.seq, &row.hash, signature) {
                        report.broken = Some(Break {
                            seq: row.seq,
                            execution_id: Some(row.execution_id.clone()),
                            kind: "signature",
                            problem: format!(
                                "the signature stored with it does not verify with key {}: \
                                 the record or its hash was rewritten after it was signed, or \
                                 the signature was forged",
                                key.key_id()
                            ),
                        });
                        return Ok(report);
                    }
                    report.signatures_checked += 1;
                } else {
                    report.signatures_other_key += 1;
                }
            }
            if let Some(anchor) = expect
                && anchor.seq == row.seq
                && anchor.hash != row.hash
            {
                report.broken = Some(Break {
                    seq: row.seq,
                    execution_id: Some(row.execution_id.clone()),
                    kind: "rewritten",
                    problem: format!(
                        "the saved head {anchor} does not match: the record at seq {} now has \
                         hash {}. The chain was rewritten at or before seq {} since that head \
                         was saved (or the head was saved from another store)",
                        row.seq, row.hash, row.seq
                    ),
                });
                return Ok(report);
            }
            match event {
                Event::Started => {
                    open.insert(row.execution_id.clone(), row.seq);
                }
                Event::Ended => {
                    open.remove(&row.execution_id);
                }
            }
            report.intact += 1;
            expected_seq = row.seq + 1;
            prev_hash = row.hash;
            prev_recorded_at = row.recorded_at;
            last_signed = (row.signature, row.signer);
        }
    }
    let last_seq = expected_seq - 1;
    if head_seq != last_seq || head_hash != prev_hash {
        if head_seq > last_seq {
            let guess = unaudited_between(store, prev_recorded_at, i64::MAX).await?;
            report.broken = Some(Break {
                seq: last_seq + 1,
                execution_id: guess.first().cloned(),
                kind: "missing",
                problem: format!(
                    "the chain head says {head_seq} record(s) but the log ends at seq {last_seq}: \
                     record(s) {}..={head_seq} were deleted{}",
                    last_seq + 1,
                    likely(&guess)
                ),
            });
        } else {
            report.broken = Some(Break {
                seq: last_seq,
                execution_id: None,
                kind: "head",
                problem: format!(
                    "the chain head (seq {head_seq}, hash {head_hash}) does not match the last \
                     record (seq {last_seq}, hash {prev_hash}): the head or the log was rewritten"
                ),
            });
        }
        return Ok(report);
    }
    if let Some(anchor) = expect {
        if anchor.seq > last_seq {
            let missing = anchor.seq - last_seq;
            report.broken = Some(Break {
                seq: last_seq + 1,
                execution_id: None,
                kind: "truncated",
                problem: format!(
                    "the chain was truncated: the saved head is seq {} but the chain ends at seq \
                     {last_seq} (head hash {head_hash}); {missing} record(s) are missing, \
                     {}..={}, and the head was reset to hide it",
                    anchor.seq,
                    last_seq + 1,
                    anchor.seq
                ),
            });
            return Ok(report);
        }
        if anchor.seq == 0 && anchor.hash != GENESIS_HASH {
            report.broken = Some(Break {
                seq: 0,
                execution_id: None,
                kind: "rewritten",
                problem: format!(
                    "the saved head {anchor} cannot be: the hash before record 1 is always \
                     {GENESIS_HASH}"
                ),
            });
            return Ok(report);
        }
        report.expected = Some(anchor.clone());
    }
    if let Some(key) = &options.key
        && last_seq > 0
    {
        let problem = match last_signed {
            (Some(_), Some(signer)) if signer != key.key_id() => Some(format!(
                "the head is signed by key {signer}, not by the verify key {}: check \
                 --verify-key, or the head was signed by a key that should not write this chain",
                key.key_id()
            )),
            (Some(_), Some(_)) => None,
            _ => Some(format!(
                "the head is not signed, but a verify key ({}) was given: it was appended by a \
                 writer without the signing key, or its signature was removed",
                key.key_id()
            )),
        };
        if let Some(problem) = problem {
            report.broken = Some(Break {
                seq: last_seq,
                execution_id: None,
                kind: "unsigned",
                problem,
            });
            return Ok(report);
        }
    }
    let mut open: Vec<(i64, String)> = open.into_iter().map(|(id, seq)| (seq, id)).collect();
    open.sort();
    let now = now_ms();
    for (seq, id) in open {
        let execution = store.get_execution(&id).await?;
        let problem = match execution {
            None => format!(
                "execution {id} started (record seq {seq}) but has no end record, and the store \
                 no longer holds it: it was deleted while it ran, or after its end record was \
                 removed"
            ),
            Some(e) => match e.status() {
                Some(s) if s.is_terminal() => {
                    let ended_at = e.finished_at.unwrap_or(0);
                    if now.saturating_sub(ended_at) < END_RECORD_GRACE_MS {
                        // Its worker may still be appending it (or retrying to).
                        report.running += 1;
                        continue;
                    }
                    format!(
                        "execution {id} started (record seq {seq}) and the store says it ended \
                         ({}), but the chain has no end record for it: the end record was \
                         removed, or never appended",
                        e.status
                    )
                }
                _ => {
                    report.running += 1;
                    continue;
                }
            },
        };
        report.broken = Some(Break {
            seq,
            execution_id: Some(id),
            kind: "start-without-end",
            problem,
        });
        return Ok(report);
    }
    Ok(report)
}

/// Why `row`, in its place by seq, does not continue a chain whose last hash is `prev_hash`;
/// else the event it records.
fn check_row(row: &AuditRow, prev_hash: &str) -> std::result::Result<Event, String> {
    if row.prev_hash != prev_hash {
        return Err(format!(
            "its prev_hash {} is not the hash of the record before it ({prev_hash}): a record \
             before it was replaced, or the chain was spliced",
            row.prev_hash
        ));
    }
    let computed = chain_hash(&row.prev_hash, &row.record);
    if computed != row.hash {
        return Err(format!(
            "its content does not match its hash (stored {}, computed {computed}): the record \
             was edited after it was written",
            row.hash
        ));
    }
    let edited = || {
        "its seq, execution id or event columns disagree with the hashed record: the row was \
         edited after it was written"
            .to_string()
    };
    let parsed: Value = serde_json::from_str(&row.record).map_err(|_| edited())?;
    let event = Event::of_record(&parsed).ok_or_else(edited)?;
    if parsed.get("seq").and_then(Value::as_i64) != Some(row.seq)
        || parsed.get("execution_id").and_then(Value::as_str) != Some(row.execution_id.as_str())
        || event.as_str() != row.event
    {
        return Err(edited());
    }
    Ok(event)
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
         AND NOT EXISTS (SELECT 1 FROM audit_log a \
                         WHERE a.execution_id = e.id AND a.event = 'ended') \
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
    let sql = format!(
        "SELECT {ROW_COLUMNS} FROM audit_log WHERE seq > $1 AND recorded_at >= $2 \
         ORDER BY seq LIMIT $3"
    );
    with_pool!(store, pool => sqlx::query_as::<_, AuditRow>(&sql)
    .bind(after_seq)
    .bind(since_ms.unwrap_or(i64::MIN))
    .bind(PAGE)
    .fetch_all(pool)
    .await
    .map_err(q("read audit records")))
}

/// One JSON line of `audit export`: the row's chain fields (its event, and its signature and
/// signer, `null` when unsigned) and the record itself. The record is embedded byte for byte as
/// it was hashed, so `hash` can be recomputed from the line.
#[must_use]
pub fn export_line(row: &AuditRow) -> String {
    let record = if serde_json::from_str::<Value>(&row.record).is_ok() {
        row.record.clone()
    } else {
        // An edited row may no longer be JSON; export it as a string rather than break the line.
        Value::String(row.record.clone()).to_string()
    };
    let opt = |v: &Option<String>| v.clone().map_or(Value::Null, Value::String).to_string();
    format!(
        "{{\"seq\":{},\"execution_id\":{},\"event\":{},\"recorded_at_ms\":{},\"prev_hash\":{},\"hash\":{},\"signature\":{},\"signer\":{},\"record\":{record}}}",
        row.seq,
        Value::String(row.execution_id.clone()),
        Value::String(row.event.clone()),
        row.recorded_at,
        Value::String(row.prev_hash.clone()),
        Value::String(row.hash.clone()),
        opt(&row.signature),
        opt(&row.signer),
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
            event: "ended".into(),
            recorded_at: 0,
            hash: chain_hash(GENESIS_HASH, &record),
            record,
            prev_hash: GENESIS_HASH.into(),
            signature: None,
            signer: None,
        };
        assert_eq!(
            check_row(&row, GENESIS_HASH),
            Ok(Event::Ended),
            "a record without an event key is an end record"
        );
        row.event = "started".into();
        assert!(
            check_row(&row, GENESIS_HASH).is_err_and(|p| p.contains("edited")),
            "the event column must agree with the record"
        );
        row.event = "ended".into();
        row.record = row.record.replace("aex-1", "aex-2");
        assert!(check_row(&row, GENESIS_HASH).is_err_and(|p| p.contains("edited")));
    }

    #[test]
    fn anchors_read_as_audit_head_prints_them() {
        let hash = "3F9A".repeat(16);
        let anchor: Anchor = format!(" 742:{hash} ").parse().unwrap();
        assert_eq!(anchor.seq, 742);
        assert_eq!(anchor.hash, hash.to_lowercase());
        assert_eq!(anchor.to_string().parse::<Anchor>(), Ok(anchor));
        for bad in [
            "",
            "742",
            "742:3f9a",
            "x:3f9a",
            "-1:0000",
            &format!("{hash}:742"),
            &format!("742:{}", "g".repeat(64)),
        ] {
            let err = bad.parse::<Anchor>().unwrap_err();
            assert!(
                err.contains("SEQ:HASH") && err.contains("audit head"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn a_head_signature_binds_seq_hash_and_key() {
        let signer = Signer::from_seed(&[7u8; 32]);
        let key = VerifyKey::from_hex(&signer.verify_key().to_hex()).unwrap();
        assert_eq!(key.key_id(), signer.key_id());
        assert_eq!(key.key_id().len(), 16);
        let hash = chain_hash(GENESIS_HASH, "{}");
        let sig = signer.sign_head(5, &hash);
        assert!(key.check(5, &hash, &sig));
        assert!(!key.check(6, &hash, &sig), "another seq");
        assert!(!key.check(5, GENESIS_HASH, &sig), "another hash");
        assert!(!key.check(5, &hash, "00"), "not a signature");
        let other = Signer::from_seed(&[8u8; 32]).verify_key();
        assert!(!other.check(5, &hash, &sig), "another key");
        assert_ne!(other.key_id(), key.key_id());
        assert!(format!("{signer:?}").contains(signer.key_id()));
        for bad in ["", "xyz", &"0".repeat(63)] {
            assert!(
                VerifyKey::from_hex(bad).is_err_and(|e| e.contains("keygen")),
                "{bad}"
            );
        }
    }
}
