//! The cloud backend: commands in Daytona sandboxes created from a snapshot, leased through the
//! same store as Docker containers (backend `daytona`) and reused within the TTL.
//!
//! A command runs in a toolbox *session* (stdout and stderr kept apart, logs followed over the
//! WebSocket or by polling); each execution gets its own session, deleted afterwards. Sandboxes
//! carry the `io.stigmer.*` labels, so the reaper finds what a crash left by listing by label.

use crate::local::{Ended, StopReason, Stopper};
use crate::output::{OutputSink, StreamKind};
use crate::stdin::StdinFeed;
use crate::store::{LeaseState, NewLease, Store, StoreError};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::time::Duration;
use stigmer_daytona::{
    Client, Config, CreateSandbox, FollowOptions, OutputStream, SandboxState, WaitOptions,
};
use stigmer_workflows::{AcquireRequest, Placement, SandboxSpec, shell_quote};
use tokio::sync::OnceCell;

/// The lease backend name of Daytona sandboxes.
pub const BACKEND: &str = "daytona";

/// Why a cloud step failed.
#[derive(Debug, thiserror::Error)]
pub enum CloudError {
    #[error("{0}")]
    Daytona(#[from] stigmer_daytona::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Invalid(String),
}

impl CloudError {
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        match self {
            // The client already retried what Daytona says can be retried; what is left is
            // worth another activity attempt only when the service or the network failed.
            Self::Daytona(e) => matches!(
                e,
                stigmer_daytona::Error::Api {
                    status: 429 | 500..=599,
                    ..
                } | stigmer_daytona::Error::Transport { .. }
                    | stigmer_daytona::Error::Timeout { .. }
            ),
            Self::Store(_) => true,
            Self::Invalid(_) => false,
        }
    }
}

/// The Daytona settings a worker was configured with (flag, environment, config file: the
/// binary's `Config` resolves them). `DAYTONA_TARGET` and `DAYTONA_TOOLBOX_URL`, which have no
/// setting of their own, are still read from the environment.
#[derive(Clone, Debug, Default)]
pub struct CloudSettings {
    pub api_key: Option<String>,
    pub api_url: Option<String>,
    pub snapshot: Option<String>,
}

impl CloudSettings {
    /// Whether a key is set (cloud mode and the Daytona reaper need one).
    #[must_use]
    pub fn is_configured(&self) -> bool {
        self.api_key
            .as_deref()
            .is_some_and(|k| !k.trim().is_empty())
    }

    /// The client's configuration from these settings.
    pub fn client_config(&self) -> Result<Config, stigmer_daytona::Error> {
        Config::from_lookup(|name| match name {
            "DAYTONA_API_KEY" => self.api_key.clone(),
            "DAYTONA_API_URL" => self.api_url.clone(),
            "DAYTONA_DEV_TOOLS_SNAPSHOT_ID" => self.snapshot.clone(),
            other => std::env::var(other).ok(),
        })
    }
}

/// The Daytona side of a worker: a client made on first use from its [`CloudSettings`].
#[derive(Clone)]
pub struct CloudBackend {
    client: std::sync::Arc<OnceCell<Client>>,
    settings: CloudSettings,
    store: Store,
    worker_id: String,
}

/// What decides whether an idle sandbox can be reused: its settings and its owner (a user, a
/// CI run, or `temporal` for starts from other clients), so that nobody is lent another
/// owner's sandbox with its files. Without an owner (older inputs) the settings alone.
fn spec_hash(spec: &SandboxSpec) -> String {
    let mut h = Sha256::new();
    h.update(format!(
        "daytona\n{}\n{}\n{}\n{}",
        spec.image, spec.network, spec.memory_bytes, spec.nano_cpus
    ));
    if let Some(owner) = &spec.owner {
        h.update(format!("\nowner {owner}"));
    }
    hex::encode(h.finalize())
}

impl CloudBackend {
    /// The backend when Daytona is configured (a key is set), else `None`.
    #[must_use]
    pub fn configured(store: Store, worker_id: String, settings: CloudSettings) -> Option<Self> {
        settings
            .is_configured()
            .then(|| Self::new(store, worker_id, settings))
    }

    #[must_use]
    pub fn new(store: Store, worker_id: String, settings: CloudSettings) -> Self {
        Self {
            client: std::sync::Arc::new(OnceCell::new()),
            settings,
            store,
            worker_id,
        }
    }

    pub async fn client(&self) -> Result<&Client, CloudError> {
        Ok(self
            .client
            .get_or_try_init(|| async { Client::new(self.settings.client_config()?) })
            .await?)
    }

    async fn placed(
        &self,
        req: &AcquireRequest,
        lease: &str,
        sandbox: &str,
    ) -> Result<(), CloudError> {
        self.store
            .set_placement(
                &req.execution_id,
                Some(&req.spec.image),
                None,
                Some(sandbox),
                Some(lease),
            )
            .await?;
        Ok(())
    }

    /// Deletes expired idle sandboxes and labelled sandboxes of this store with no live lease.
    pub async fn reap(&self) -> Result<Vec<String>, CloudError> {
        let client = self.client().await?;
        let mut removed = Vec::new();
        for lease in self.store.expire_idle(BACKEND).await? {
            if lease.backend != BACKEND {
                continue;
            }
            if let Some(id) = &lease.container_id {
                client.delete_sandbox(id).await?;
                removed.push(id.clone());
            }
            self.store.lease_removed(&lease.id).await?;
        }
        let live: BTreeMap<String, LeaseState> = self
            .store
            .list_leases(false)
            .await?
            .into_iter()
            .filter(|l| l.backend == BACKEND)
            .map(|l| (l.id, l.state))
            .collect();
        let labels = BTreeMap::from([
            ("io.stigmer.managed".to_string(), "true".to_string()),
            (
                "io.stigmer.store".to_string(),
                self.store.store_id().to_string(),
            ),
        ]);
        for sandbox in client.list_sandboxes(&labels).await? {
            let lease = sandbox.labels.get("io.stigmer.lease");
            if lease.is_none_or(|l| !live.contains_key(l)) {
                client.delete_sandbox(&sandbox.id).await?;
                removed.push(sandbox.id);
            }
        }
        Ok(removed)
    }
}

impl crate::backend::BackendError for CloudError {
    fn is_retryable(&self) -> bool {
        CloudError::is_retryable(self)
    }

    fn is_store(&self) -> bool {
        matches!(self, Self::Store(_))
    }
}

impl crate::backend::ContainerBackend for CloudBackend {
    type Error = CloudError;

    const NAME: &'static str = "the Daytona sandbox";

    /// Reuses an idle sandbox with the same settings inside its TTL, or creates one from the
    /// snapshot (its lease written first) and waits until it has started.
    async fn acquire(&self, req: &AcquireRequest) -> Result<Placement, CloudError> {
        let client = self.client().await?;
        let hash = spec_hash(&req.spec);
        if req.spec.ttl_secs > 0 {
            while let Some(lease) = self
                .store
                .acquire_idle(BACKEND, &hash, None, &req.execution_id, &self.worker_id)
                .await?
            {
                let Some(sandbox_id) = lease.container_id.clone() else {
                    self.store.lease_removed(&lease.id).await?;
                    continue;
                };
                match client.get_sandbox(&sandbox_id).await {
                    Ok(s) if s.state == Some(SandboxState::Started) => {
                        self.placed(req, &lease.id, &sandbox_id).await?;
                        return Ok(Placement {
                            lease_id: lease.id,
                            container_id: sandbox_id,
                            reused: true,
                            task_queue: None,
                        });
                    }
                    _ => {
                        let _ = client.delete_sandbox(&sandbox_id).await;
                        self.store.lease_removed(&lease.id).await?;
                    }
                }
            }
        }
        let lease = self
            .store
            .create_lease(&NewLease {
                backend: BACKEND,
                worker_id: &self.worker_id,
                engine_id: None,
                image: &req.spec.image,
                spec_hash: &hash,
                ttl_secs: req.spec.ttl_secs,
                execution_id: &req.execution_id,
            })
            .await?;
        // Daytona stops an idle sandbox on its own a little after our TTL, as a backstop.
        let auto_stop = u32::try_from(req.spec.ttl_secs / 60 + 15).unwrap_or(u32::MAX);
        let create = CreateSandbox::from_snapshot(req.spec.image.clone())
            .label("io.stigmer.managed", "true")
            .label("io.stigmer.store", self.store.store_id())
            .label("io.stigmer.lease", lease.id.clone())
            .label("io.stigmer.worker", self.worker_id.clone())
            .network_block_all(req.spec.network == stigmer_workflows::Network::None)
            .auto_stop_minutes(auto_stop);
        let sandbox = match client.create_sandbox(create).await {
            Ok(s) => s,
            Err(e) => {
                let _ = self
                    .store
                    .release_lease(&lease.id, false, Some("create failed"), None)
                    .await;
                return Err(e.into());
            }
        };
        self.store.lease_created(&lease.id, &sandbox.id).await?;
        let wait = WaitOptions {
            timeout: Duration::from_secs(180),
            initial_interval: Duration::from_millis(200),
            max_interval: Duration::from_secs(5),
        };
        if let Err(e) = client.wait_until_started(&sandbox.id, &wait).await {
            let _ = client.delete_sandbox(&sandbox.id).await;
            let _ = self.store.lease_removed(&lease.id).await;
            return Err(e.into());
        }
        self.placed(req, &lease.id, &sandbox.id).await?;
        Ok(Placement {
            lease_id: lease.id,
            container_id: sandbox.id,
            reused: false,
            task_queue: None,
        })
    }

    /// Runs the command in a session of its own, following its output until it ends or `stop`
    /// fires (then the session is deleted, which ends the command).
    async fn exec(
        &self,
        execution_id: &str,
        placement: &Placement,
        _spec: &SandboxSpec,
        argv: Vec<String>,
        env: &[(String, String)],
        stdin: Option<StdinFeed>,
        sink: &mut OutputSink,
        stop: &Stopper,
    ) -> Result<(Ended, bool), CloudError> {
        if stdin.is_some() {
            // Clients refuse this before starting; an input that asks anyway runs nothing.
            return Ok((
                Ended::Failed {
                    exit_code: None,
                    reason: "cloud mode does not forward standard input; nothing ran (use \
                             sandbox or local mode, or put the data in a file the command reads)"
                        .into(),
                },
                false,
            ));
        }
        let client = self.client().await?;
        let toolbox = client.toolbox(&placement.container_id).await?;
        let session = format!("stigmer-{execution_id}");
        toolbox.create_session(&session).await?;
        let mut line = String::new();
        if !env.is_empty() {
            line.push_str("env");
            for (k, v) in env {
                line.push(' ');
                line.push_str(&shell_quote(&format!("{k}={v}")));
            }
            line.push(' ');
        }
        line.push_str(
            &argv
                .iter()
                .map(|a| shell_quote(a))
                .collect::<Vec<_>>()
                .join(" "),
        );
        let command_id = toolbox.start_command(&session, &line).await?;

        // The follower hands chunks to a callback; a channel carries them to the async sink.
        // Unbounded, yet memory stays bounded: the follower only runs when the loop below
        // polls it, and the loop drains the channel (and awaits the sink) between polls, so the
        // channel never holds more than one network read of output.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(StreamKind, Vec<u8>)>();
        let follow_options = FollowOptions::default();
        let follow = toolbox.follow_command(&session, &command_id, &follow_options, move |chunk| {
            let kind = match chunk.stream {
                OutputStream::Stdout => StreamKind::Stdout,
                _ => StreamKind::Stderr,
            };
            let _ = tx.send((kind, chunk.data));
        });
        tokio::pin!(follow);
        let mut flush_tick = tokio::time::interval(crate::output::FLUSH_INTERVAL);
        let mut outcome = None;
        let mut streams_open = true;
        let mut stopped = None;
        while (outcome.is_none() && stopped.is_none()) || streams_open {
            tokio::select! {
                result = &mut follow, if outcome.is_none() && stopped.is_none() => outcome = Some(result),
                () = stop.token().cancelled(), if stopped.is_none() && outcome.is_none() => {
                    stopped = Some(stop.reason().unwrap_or(StopReason::Cancelled));
                    streams_open = false;
                }
                chunk = rx.recv(), if streams_open => match chunk {
                    Some((kind, data)) => sink.write(kind, data, stop.token()).await?,
                    None => streams_open = false,
                },
                _ = flush_tick.tick() => sink.flush().await?,
            }
        }
        // Deleting the session ends whatever still runs in it.
        let _ = toolbox.delete_session(&session).await;
        if let Some(reason) = stopped {
            let ended = match reason {
                StopReason::Cancelled => Ended::Cancelled,
                StopReason::TimedOut => Ended::TimedOut,
            };
            return Ok((ended, true));
        }
        match outcome {
            Some(Ok(o)) => Ok((Ended::Exited(o.exit_code), false)),
            Some(Err(e)) => Ok((
                Ended::Failed {
                    exit_code: None,
                    reason: format!("lost the command in the Daytona sandbox: {e}"),
                },
                true,
            )),
            None => Ok((
                Ended::Failed {
                    exit_code: None,
                    reason: "the command ended without an outcome".into(),
                },
                true,
            )),
        }
    }

    /// A Daytona sandbox goes back to idle through the workflow's release only.
    async fn release_clean(&self, _: &str, _: &Placement) -> Result<bool, CloudError> {
        Ok(false)
    }

    /// Back to idle for reuse, or deleted.
    async fn release(
        &self,
        _execution_id: &str,
        placement: &Placement,
        taint: bool,
        ttl_secs: u64,
        _cleanup: bool,
    ) -> Result<String, CloudError> {
        // `exec` may have tainted the lease itself.
        let taint = taint
            || self
                .store
                .get_lease(&placement.lease_id)
                .await?
                .is_some_and(|l| l.tainted != 0 && l.state == LeaseState::Busy);
        if taint {
            self.store
                .taint_lease(
                    &placement.lease_id,
                    "the command may still have been running",
                    None,
                )
                .await?;
        }
        let state = self
            .store
            .release_lease(&placement.lease_id, !taint && ttl_secs > 0, None, None)
            .await?;
        if state == LeaseState::Removing {
            self.client()
                .await?
                .delete_sandbox(&placement.container_id)
                .await?;
            self.store.lease_removed(&placement.lease_id).await?;
            return Ok(LeaseState::Removed.to_string());
        }
        Ok(state.to_string())
    }

    /// Every cloud step carries its placement: nothing is taken without one.
    async fn held_by(&self, _: &str) -> Result<Option<Placement>, CloudError> {
        Ok(None)
    }
}
