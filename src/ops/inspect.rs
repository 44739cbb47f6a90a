//! Reading the store for `executions`, `logs` and `leases`. A client only reads: it never
//! creates or migrates the store, and never connects to Docker or Daytona to do so.

use crate::config::Config;
use anyhow::{Result, bail};
use stigmer_activities::store::{ExecutionRecord, LeaseRecord, PruneReport, Store};

/// Opens the configured store for a command that reads it (no migrations).
pub async fn open_for_reading(cfg: &Config) -> Result<Store> {
    Ok(Store::open(&cfg.database_url.value, false).await?)
}

/// One execution, or an error that says where to find the ids there are.
pub async fn execution(store: &Store, id: &str) -> Result<ExecutionRecord> {
    match store.get_execution(id).await? {
        Some(record) => Ok(record),
        None => bail!(
            "no execution {id:?} in the store {}; `stigmer executions list` shows the recent ones",
            store.display_url()
        ),
    }
}

/// The most recent executions, newest first.
pub async fn executions(cfg: &Config, limit: i64) -> Result<Vec<ExecutionRecord>> {
    let store = open_for_reading(cfg).await?;
    Ok(store.list_executions(limit).await?)
}

/// Removes (or, with `dry_run`, counts) the executions that ended before `before_ms`, with
/// their output; never the audit log, never one still holding a lease or not yet audited.
pub async fn prune(cfg: &Config, before_ms: i64, dry_run: bool) -> Result<PruneReport> {
    let store = open_for_reading(cfg).await?;
    Ok(store.prune_executions(before_ms, dry_run).await?)
}

/// The leases in the store: the live ones, or with `all` the ended ones too.
pub async fn leases(cfg: &Config, all: bool) -> Result<Vec<LeaseRecord>> {
    let store = open_for_reading(cfg).await?;
    Ok(store.list_leases(all).await?)
}
