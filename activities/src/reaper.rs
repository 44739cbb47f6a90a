//! The reaper: what keeps leases and containers in step after crashes and TTL expiry.
//!
//! Docker is the truth about what exists; the store is the truth about intent. A pass:
//! 1. expires idle leases past their TTL in one atomic update on the database's clock
//!    (`idle → removing`) before touching Docker, so it never races an acquire;
//! 2. finishes every `removing` lease (removes or stops its container, marks it removed);
//! 3. removes containers labelled with this store's id that have no live lease (orphans), giving
//!    a `creating` lease a grace period;
//! 4. drops `creating` leases that never got a container within the grace period.
//!
//! It only ever touches containers labelled with its own store's id: two installations on one
//! host never reap each other.

use crate::sandbox::{CREATING_GRACE, SandboxBackend, SandboxError};
use crate::store::{Store, now_ms};
use serde::Serialize;
use std::collections::HashMap;
use stigmer_docker::LABEL_LEASE;

/// What one pass did (printed by `stigmer leases reap`).
#[derive(Clone, Debug, Default, Serialize)]
pub struct ReapReport {
    /// Idle leases past their TTL, now removed.
    pub expired: Vec<String>,
    /// Containers removed (or stopped) for leases that were `removing`.
    pub disposed: Vec<String>,
    /// Containers with no live lease, removed.
    pub orphans: Vec<String>,
    /// `creating` leases that never got a container.
    pub abandoned: Vec<String>,
}

/// One reaper pass over this store's containers on this worker's Docker engine.
pub async fn reap_once(
    store: &Store,
    sandbox: &SandboxBackend,
    cleanup: bool,
) -> Result<ReapReport, SandboxError> {
    let mut report = ReapReport::default();
    let (engine, engine_id) = sandbox.engine().await?;
    let ours = |l: &crate::store::LeaseRecord| {
        l.backend == crate::sandbox::BACKEND && l.engine_id.as_deref() == Some(engine_id.as_str())
    };

    for lease in store
        .expire_idle(crate::sandbox::BACKEND)
        .await?
        .into_iter()
        .filter(|l| ours(l))
    {
        report.expired.push(lease.id.clone());
    }
    for lease in store
        .leases_in_state("removing")
        .await?
        .into_iter()
        .filter(|l| ours(l))
    {
        match &lease.container_id {
            Some(container) => {
                sandbox.dispose(&lease.id, container, cleanup).await?;
                report.disposed.push(container.clone());
            }
            None => store.lease_removed(&lease.id).await?,
        }
    }

    let live: HashMap<String, crate::store::LeaseRecord> = store
        .list_leases(false)
        .await?
        .into_iter()
        .map(|l| (l.id.clone(), l))
        .collect();
    let now = now_ms();
    for container in engine.list_managed(store.store_id()).await? {
        let lease = container
            .labels
            .get(LABEL_LEASE)
            .and_then(|id| live.get(id));
        let keep = match lease {
            Some(l) if l.state == "creating" => {
                now - l.created_at < CREATING_GRACE.as_millis() as i64
            }
            Some(l) => l.container_id.as_deref().is_none_or(|c| c == container.id),
            // A stopped container kept for inspection (cleanup off) is the user's to remove.
            None => !cleanup && container.state != "running",
        };
        if !keep {
            engine.remove_container(&container.id).await?;
            if let Some(l) = lease {
                store.lease_removed(&l.id).await?;
            }
            report.orphans.push(container.id);
        }
    }

    for lease in live.values().filter(|l| ours(l) && l.state == "creating") {
        if lease.container_id.is_none()
            && now - lease.created_at > CREATING_GRACE.as_millis() as i64
        {
            store.lease_removed(&lease.id).await?;
            report.abandoned.push(lease.id.clone());
        }
    }
    Ok(report)
}
