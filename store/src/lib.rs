//! The SQL store: executions (the audit record), their output, workers, container leases and
//! the hash-chained audit trail.
//!
//! One set of queries serves SQLite (the default, one file under the data dir) and Postgres
//! (many workers): placeholders are `$N`, which both accept, timestamps are unix milliseconds,
//! and `with_pool!` expands each query once per backend so the SQL is written once.
//! SQLite write transactions begin `IMMEDIATE` so two writers never deadlock upgrading a lock.
//!
//! The store only reads and writes. It knows nothing of Docker, Daytona, Temporal or metrics:
//! what an event means to them (counting an ended execution, say) is its caller's business, so
//! calls that record something return what they recorded.

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Runs `$body` with `$pool` bound to whichever backend the store uses; the query text and
/// bindings are written once and compiled for both. Defined before the modules, which see it
/// by textual scope.
macro_rules! with_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match &$store.pool {
            $crate::Pool::Sqlite($pool) => $body,
            $crate::Pool::Postgres($pool) => $body,
        }
    };
}

pub mod audit;
mod executions;
mod leases;
mod output;
mod sessions;
mod workers;

pub use executions::{ExecutionRecord, Finished, NewExecution, PruneReport, StartClaim};
pub use leases::{LeaseRecord, LeaseState, NewLease, UnknownLeaseState};
pub use output::{OutputChunk, OutputSummary};
pub use sessions::{NewSession, SessionRecord};
pub use workers::WorkerRecord;

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

pub(crate) type Result<T> = std::result::Result<T, StoreError>;

/// Wraps a failed query with what it was doing.
pub(crate) fn q(what: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| StoreError::Query { what, source }
}

#[derive(Clone, Debug)]
pub(crate) enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

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
    /// Signs each new head of the audit chain, when this writer holds the key.
    pub(crate) signer: Option<audit::Signer>,
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
            signer: None,
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
            Pool::Sqlite(pool) => additive(sqlx::migrate!("./migrations/sqlite"))
                .run(pool)
                .await
                .map_err(mig_err)?,
            Pool::Postgres(pool) => additive(sqlx::migrate!("./migrations/postgres"))
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

    /// This handle signs every audit record it appends with `signer` (none: unsigned).
    #[must_use]
    pub fn with_audit_signer(mut self, signer: Option<audit::Signer>) -> Self {
        self.signer = signer;
        self
    }

    /// The key this handle signs audit records with, if any.
    #[must_use]
    pub fn audit_signer(&self) -> Option<&audit::Signer> {
        self.signer.as_ref()
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

    /// The database's clock in unix milliseconds, as SQL: lease expiry and worker liveness are
    /// judged on one clock however skewed the workers' clocks are.
    pub(crate) fn db_now(&self) -> &'static str {
        match self.pool {
            Pool::Sqlite(_) => "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)",
            Pool::Postgres(_) => "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)",
        }
    }
}

pub(crate) fn is_missing_table(e: &sqlx::Error) -> bool {
    let text = e.to_string();
    text.contains("no such table") || text.contains("does not exist")
}

/// Removes a password from a database URL so it can appear in messages.
#[must_use]
pub fn redact_url(url: &str) -> String {
    /// Query parameters that carry a secret (libpq's and sqlx's names among them).
    const SECRET_PARAMS: &[&str] = &[
        "password",
        "passwd",
        "pwd",
        "sslpassword",
        "secret",
        "token",
    ];
    let Ok(mut parsed) = url::Url::parse(url) else {
        // Not a URL this can read: show only that there was one.
        return match url.split_once("://") {
            Some((scheme, _)) => format!("{scheme}://(not shown: it does not parse as a URL)"),
            None => url.to_string(),
        };
    };
    if parsed.password().is_some() {
        let _ = parsed.set_password(Some("***"));
    }
    if parsed.query().is_some() {
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(k, v)| {
                let secret = SECRET_PARAMS.contains(&k.to_ascii_lowercase().as_str());
                (
                    k.into_owned(),
                    if secret { "***".into() } else { v.into_owned() },
                )
            })
            .collect();
        parsed.query_pairs_mut().clear().extend_pairs(pairs);
    }
    parsed.to_string()
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
        // A password holding `@`, and one given as a query parameter.
        let shown = redact_url("postgres://stigmer:p@ss@db:5432/stigmer");
        assert_eq!(shown, "postgres://stigmer:***@db:5432/stigmer");
        let shown = redact_url("postgres://db/stigmer?user=me&password=s3cret&sslmode=require");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(
            shown.contains("user=me") && shown.contains("sslmode=require"),
            "{shown}"
        );
        let shown = redact_url("postgres://me:s3cret@[::1/db");
        assert!(!shown.contains("s3cret"), "{shown}");
    }
}
