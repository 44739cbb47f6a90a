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
//! Before all that it reconciles the leases of workers that stopped heart-beating: on this
//! Docker host, a lost worker's idle containers are adopted (still reusable), its `creating`
//! leases dropped at once (their containers become orphans), and its busy leases retired when
//! their execution is over (a busy lease whose execution is still open is left to the workflow,
//! whose release comes to this host's task queue). Leases on a host none of whose workers has
//! heart-beaten for [`HOST_GONE`] are forgotten: if that host comes back, its own reaper finds
//! their containers without a live lease and removes them.
//!
//! It only ever touches containers labelled with its own store's id: two installations on one
//! host never reap each other.

use crate::sandbox::{CREATING_GRACE, SandboxBackend, SandboxError};
use crate::store::{LeaseState, Store, now_ms};
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use stigmer_docker::LABEL_LEASE;

/// A worker that has not heart-beaten for this long is lost (workers heartbeat every 5 s).
pub const WORKER_STALE: Duration = Duration::from_secs(30);

/// A Docker host none of whose workers has heart-beaten for this long is gone.
pub const HOST_GONE: Duration = Duration::from_secs(600);

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
    /// Idle leases of lost workers on this host, now this worker's.
    pub adopted: Vec<String>,
    /// Leases of lost workers retired or dropped (their containers removed by this pass).
    pub reconciled: Vec<String>,
    /// Leases on hosts that are gone, forgotten.
    pub forgotten: Vec<String>,
}

impl ReapReport {
    /// Whether the pass changed anything.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.expired.is_empty()
            && self.disposed.is_empty()
            && self.orphans.is_empty()
            && self.abandoned.is_empty()
            && self.adopted.is_empty()
            && self.reconciled.is_empty()
            && self.forgotten.is_empty()
    }
}

/// What one pass over both kinds of leases did.
pub struct Pass {
    /// Docker's leases: `Err` with the engine's error when no engine answered (a cloud-only
    /// setup has none).
    pub docker: Result<Result<ReapReport, SandboxError>, SandboxError>,
    /// The Daytona sandboxes deleted, when a Daytona key is configured.
    pub daytona: Option<Result<Vec<String>, crate::cloud::CloudError>>,
}

/// One pass over the Docker leases of this worker's engine (when one answers) and over the
/// Daytona leases (when `cloud` is configured): what the daemon's reaper does every 30 s and
/// `stigmer leases reap` once.
pub async fn reap_all(
    store: &Store,
    sandbox: &SandboxBackend,
    cloud: Option<&crate::cloud::CloudBackend>,
    cleanup: bool,
) -> Pass {
    let daytona = match cloud {
        Some(cloud) => Some(cloud.reap().await),
        None => None,
    };
    let docker = match sandbox.engine().await {
        Ok(_) => Ok(reap_once(store, sandbox, cleanup).await),
        Err(e) => Err(e),
    };
    Pass { docker, daytona }
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

    reconcile_lost_workers(store, sandbox.worker_id(), engine_id, &mut report).await?;

    for lease in store
        .expire_idle(crate::sandbox::BACKEND)
        .await?
        .into_iter()
        .filter(|l| ours(l))
    {
        report.expired.push(lease.id.clone());
    }
    for lease in store
        .leases_in_state(LeaseState::Removing)
        .await?
        .into_iter()
        .filter(|l| ours(l))
    {
        match &lease.container_id {
            Some(container) => {
                sandbox.dispose(&lease.id, container, cleanup).await?;
                report.disposed.push(container.clone());
                crate::metrics::metrics().containers_reaped("disposed", 1);
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
    let managed = engine.list_managed(store.store_id()).await?;
    let names: Vec<String> = managed.iter().map(|c| c.name.clone()).collect();
    engine.sweep_egress(&names);
    for container in managed {
        let lease = container
            .labels
            .get(LABEL_LEASE)
            .and_then(|id| live.get(id));
        let keep = match lease {
            Some(l) if l.state == LeaseState::Creating => {
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
            crate::metrics::metrics().containers_reaped("orphan", 1);
        }
    }

    for lease in live
        .values()
        .filter(|l| ours(l) && l.state == LeaseState::Creating)
    {
        if lease.container_id.is_none()
            && now - lease.created_at > CREATING_GRACE.as_millis() as i64
        {
            store.lease_removed(&lease.id).await?;
            report.abandoned.push(lease.id.clone());
        }
    }
    Ok(report)
}

/// Step 0: leases whose worker stopped heart-beating (see the module comment).
async fn reconcile_lost_workers(
    store: &Store,
    me: &str,
    engine_id: &str,
    report: &mut ReapReport,
) -> Result<(), SandboxError> {
    let stale: HashMap<String, crate::store::WorkerRecord> = store
        .stale_workers(WORKER_STALE)
        .await?
        .into_iter()
        .map(|w| (w.id.clone(), w))
        .collect();
    if stale.is_empty() {
        return Ok(());
    }
    let mut gone_hosts: HashMap<String, bool> = HashMap::new();
    let mut seen = HashSet::new();
    for lease in store.list_leases(false).await? {
        if lease.backend != crate::sandbox::BACKEND
            || lease.worker_id == me
            || !stale.contains_key(&lease.worker_id)
            || !seen.insert(lease.id.clone())
        {
            continue;
        }
        let Some(lease_engine) = lease.engine_id.clone() else {
            continue;
        };
        if lease_engine != engine_id {
            let gone = match gone_hosts.get(&lease_engine) {
                Some(gone) => *gone,
                None => {
                    let gone = !store.engine_alive(&lease_engine, HOST_GONE).await?;
                    gone_hosts.insert(lease_engine.clone(), gone);
                    gone
                }
            };
            if gone {
                store
                    .forget_lease(
                        &lease.id,
                        &format!(
                            "its Docker host {lease_engine} has had no live worker for {} s",
                            HOST_GONE.as_secs()
                        ),
                    )
                    .await?;
                report.forgotten.push(lease.id);
            }
            continue;
        }
        let lost = format!("worker {} was lost", lease.worker_id);
        match lease.state {
            LeaseState::Idle => {
                let adopted = store.adopt_lease(&lease.id, &lease.worker_id, me).await?;
                if adopted {
                    report.adopted.push(lease.id);
                }
            }
            LeaseState::Creating => {
                // Its container, if Docker made one, has no live lease now: an orphan below.
                store
                    .forget_lease(&lease.id, &format!("{lost} while creating it"))
                    .await?;
                report.reconciled.push(lease.id);
            }
            LeaseState::Busy => {
                let open = match &lease.execution_id {
                    Some(id) => store
                        .get_execution(id)
                        .await?
                        .is_some_and(|e| e.status().is_none_or(|s| !s.is_terminal())),
                    None => false,
                };
                if !open
                    && store
                        .retire_lease(&lease.id, &format!("{lost} before releasing it"))
                        .await?
                {
                    report.reconciled.push(lease.id);
                }
            }
            LeaseState::Removing | LeaseState::Removed => {}
        }
    }
    Ok(())
}
