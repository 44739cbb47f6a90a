//! `stigmer leases reap`: one reaper pass now, over the Docker engine and Daytona, with the
//! same pass the daemon runs on its timer (`stigmer_activities::reaper::reap_all`).

use crate::config::Config;
use anyhow::Result;
use stigmer_activities::cloud::CloudBackend;
use stigmer_activities::reaper::{ReapReport, reap_all};
use stigmer_activities::sandbox::SandboxBackend;

/// What one reaper pass did.
#[derive(Debug, Default)]
pub struct Reaped {
    /// The Docker side; `None` when no engine answered and Daytona is configured.
    pub docker: Option<ReapReport>,
    /// Why Docker was skipped (no engine answered), when it was.
    pub docker_skipped: Option<String>,
    /// The Daytona sandboxes deleted; `None` when Daytona is not configured.
    pub daytona_deleted: Option<Vec<String>>,
}

/// Runs one reaper pass. Without a Docker engine it is an error, unless Daytona is configured:
/// a cloud-only setup reaps its sandboxes and says Docker was skipped.
pub async fn reap(cfg: &Config) -> Result<Reaped> {
    let store = super::open_for_reading(cfg).await?;
    let identity = "cli-reaper".to_string();
    let sandbox = SandboxBackend::new(store.clone(), identity.clone());
    let cloud = CloudBackend::configured(store.clone(), identity, cfg.daytona());
    let pass = reap_all(&store, &sandbox, cloud.as_ref(), cfg.sandbox_cleanup.value).await;
    let (docker, docker_skipped) = match pass.docker {
        Ok(report) => (Some(report?), None),
        Err(e) if cloud.is_some() => (None, Some(e.to_string())),
        Err(e) => return Err(e.into()),
    };
    Ok(Reaped {
        docker,
        docker_skipped,
        daytona_deleted: pass.daytona.transpose()?,
    })
}
