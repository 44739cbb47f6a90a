//! The cloud backend: commands in Daytona sandboxes created from a snapshot, leased through the
//! same store as Docker containers (backend `daytona`) and reused within the TTL.
//!
//! A command runs in a toolbox *session* (stdout and stderr kept apart, logs followed over the
//! WebSocket or by polling); each execution gets its own session, deleted afterwards. Sandboxes
//! carry the `io.stigmer.*` labels, so the reaper finds what a crash left by listing by label.
//!
//! A stigmer session's sandbox (owner `session:<id>`, label `io.stigmer.session`) is never
//! lent to anyone else; its files are moved through the toolbox's file API
//! ([`CloudBackend::write_file`], [`CloudBackend::read_file`]).
//!
//! Standard input goes through the toolbox's `command/{id}/input`, which takes text only, adds
//! a newline to what does not end with one, and has no end of input. So the bytes travel as
//! base64 lines (one per chunk, padded only at the end), a line `.` marks the end, and a small
//! reader in the sandbox (`sed`, `base64 -d`) turns them back into the command's stdin and
//! gives it end of file at the mark. Such a command is started with `suppressInputEcho`, or
//! Daytona would copy the lines into its stdout.

use crate::local::{Ended, StopReason, Stopper};
use crate::output::{OutputSink, StreamKind};
use crate::stdin::StdinFeed;
use crate::store::{LeaseState, NewLease, Store, StoreError};
use base64::Engine as _;
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

/// The label naming the stigmer session that owns a sandbox.
const LABEL_SESSION: &str = "io.stigmer.session";

/// Raw bytes of stdin per input call (a multiple of 3, so only the last line is padded):
/// 64 KiB of base64 on the wire.
const STDIN_CALL_BYTES: usize = 48 * 1024;

/// How long one input call may wait for a command that does not read yet; the command's own
/// timeout and cancellation end the feeding before that.
const STDIN_CALL_TIMEOUT: Duration = Duration::from_secs(3600);

/// Runs the rest of its arguments with stdin read from the base64 lines the toolbox's input
/// delivers, up to the line `.`. A reader the command leaves unread ends with the toolbox
/// session, which is deleted after every command.
const STDIN_READER: &str =
    r#"exec "$@" < <({ sed -n -e '/^[.]$/q' -e p | base64 -d; } 2>/dev/null)"#;

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

    fn session_labels(&self, session: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("io.stigmer.managed".to_string(), "true".to_string()),
            (
                "io.stigmer.store".to_string(),
                self.store.store_id().to_string(),
            ),
            (LABEL_SESSION.to_string(), session.to_string()),
        ])
    }

    /// The started sandbox of a stigmer session, if it has one yet (its first command makes
    /// it).
    pub async fn session_sandbox(&self, session: &str) -> Result<Option<String>, CloudError> {
        let client = self.client().await?;
        Ok(client
            .list_sandboxes(&self.session_labels(session))
            .await?
            .into_iter()
            .find(|s| s.state == Some(SandboxState::Started))
            .map(|s| s.id))
    }

    /// Deletes the sandboxes of an ended session (found by their `io.stigmer.session` label)
    /// and retires their leases. Returns the sandboxes deleted.
    pub async fn remove_session_sandboxes(&self, session: &str) -> Result<Vec<String>, CloudError> {
        let client = self.client().await?;
        let mut removed = Vec::new();
        for sandbox in client.list_sandboxes(&self.session_labels(session)).await? {
            client.delete_sandbox(&sandbox.id).await?;
            if let Some(lease) = sandbox.labels.get("io.stigmer.lease") {
                self.store.lease_removed(lease).await?;
            }
            removed.push(sandbox.id);
        }
        Ok(removed)
    }

    /// Writes `data` as the file `path` in `sandbox` with permission bits `mode`, through the
    /// toolbox's file API. The directory it goes into must exist.
    pub async fn write_file(
        &self,
        sandbox: &str,
        path: &str,
        data: &[u8],
        mode: u32,
    ) -> Result<(), CloudError> {
        checked_path(path)?;
        if data.len() as u64 > stigmer_docker::MAX_COPY_BYTES {
            return Err(CloudError::Invalid(format!(
                "{} bytes is more than a copy may carry ({} MiB); split it, or fetch it from \
                 inside the sandbox",
                data.len(),
                stigmer_docker::MAX_COPY_BYTES / (1024 * 1024)
            )));
        }
        let toolbox = self.client().await?.toolbox(sandbox).await?;
        let dir = match path.rsplit_once('/') {
            Some(("", _)) | None => "/",
            Some((dir, _)) => dir,
        };
        match toolbox.file_info(dir).await {
            Ok(info) if info.is_dir => {}
            Ok(_) => {
                return Err(CloudError::Invalid(format!(
                    "{dir} is not a directory in the sandbox"
                )));
            }
            Err(e) if e.is_not_found() => {
                return Err(CloudError::Invalid(format!(
                    "{dir} does not exist in the sandbox: make it first (mkdir -p {dir})"
                )));
            }
            Err(e) => return Err(file_error(dir, "cannot be looked at in the sandbox", e)),
        }
        match toolbox.file_info(path).await {
            Ok(info) if info.is_dir => {
                return Err(CloudError::Invalid(format!(
                    "{path} is a directory in the sandbox: give the path of a file"
                )));
            }
            Ok(_) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(file_error(path, "cannot be looked at in the sandbox", e)),
        }
        toolbox
            .upload_file(path, data)
            .await
            .map_err(|e| file_error(path, "cannot be written in the sandbox", e))?;
        toolbox
            .set_file_mode(path, mode)
            .await
            .map_err(|e| file_error(path, "was written, but its mode could not be set", e))?;
        Ok(())
    }

    /// Reads the regular file `path` out of `sandbox`, at most
    /// [`stigmer_docker::MAX_COPY_BYTES`], with its permission bits.
    pub async fn read_file(
        &self,
        sandbox: &str,
        path: &str,
    ) -> Result<stigmer_docker::ContainerFile, CloudError> {
        checked_path(path)?;
        let toolbox = self.client().await?.toolbox(sandbox).await?;
        let info = match toolbox.file_info(path).await {
            Ok(info) => info,
            Err(e) if e.is_not_found() => {
                return Err(CloudError::Invalid(format!(
                    "{path} does not exist in the sandbox"
                )));
            }
            Err(e) => return Err(file_error(path, "cannot be looked at in the sandbox", e)),
        };
        if info.is_dir {
            return Err(CloudError::Invalid(format!(
                "{path} is a directory: copy one file (pack a directory with tar inside the \
                 sandbox first)"
            )));
        }
        let too_big = || {
            CloudError::Invalid(format!(
                "{path} is larger than a copy may carry ({} MiB); compress or split it inside \
                 the sandbox first",
                stigmer_docker::MAX_COPY_BYTES / (1024 * 1024)
            ))
        };
        if info.size > stigmer_docker::MAX_COPY_BYTES {
            return Err(too_big());
        }
        let data = toolbox
            .download_file(path, info.size)
            .await
            .map_err(|e| file_error(path, "cannot be read in the sandbox", e))?;
        if data.len() as u64 > stigmer_docker::MAX_COPY_BYTES {
            return Err(too_big());
        }
        Ok(stigmer_docker::ContainerFile {
            data,
            mode: info.mode_bits().unwrap_or(0o644),
        })
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
            .label("io.stigmer.worker", self.worker_id.clone());
        let create = match session_of(&req.spec) {
            Some(session) => create.label(LABEL_SESSION, session),
            None => create,
        };
        let create = create
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
        spec: &SandboxSpec,
        argv: Vec<String>,
        env: &[(String, String)],
        stdin: Option<StdinFeed>,
        sink: &mut OutputSink,
        stop: &Stopper,
    ) -> Result<(Ended, bool), CloudError> {
        let client = self.client().await?;
        let toolbox = client.toolbox(&placement.container_id).await?;
        let session = format!("stigmer-{execution_id}");
        toolbox.create_session(&session).await?;
        let mut words: Vec<String> = Vec::new();
        if stdin.is_some() {
            words.extend(["/bin/bash", "-c", STDIN_READER, "stigmer-stdin"].map(String::from));
        }
        if !env.is_empty() {
            words.push("env".into());
            words.extend(env.iter().map(|(k, v)| format!("{k}={v}")));
        }
        words.extend(argv);
        let mut line = words
            .iter()
            .map(|a| shell_quote(a))
            .collect::<Vec<_>>()
            .join(" ");
        if stdin.is_none() {
            // Nothing to read: end of file at once, not the toolbox's input pipe, which never
            // ends.
            line.push_str(" < /dev/null");
        }
        let started = if stdin.is_some() {
            toolbox.start_command_with_input(&session, &line).await
        } else {
            toolbox.start_command(&session, &line).await
        };
        let command_id = match started {
            Ok(id) => id,
            Err(e) => {
                let _ = toolbox.delete_session(&session).await;
                return Err(e.into());
            }
        };
        // What the command did not read is still received and counted (the audit record's
        // tally), then dropped: the guard ends that when the run ends.
        let (stdin, _passing) = stdin.map(StdinFeed::into_channel).unzip();
        let mut sending = stdin.map(|chunks| {
            AbortOnDrop(tokio::spawn(send_stdin(
                toolbox.clone(),
                session.clone(),
                command_id.clone(),
                chunks,
            )))
        });
        let mut input_failed = None;
        let mut input_error: Option<(String, tokio::time::Instant)> = None;

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
        while (outcome.is_none() && stopped.is_none() && input_failed.is_none()) || streams_open {
            tokio::select! {
                result = &mut follow, if outcome.is_none() && stopped.is_none() && input_failed.is_none() => outcome = Some(result),
                sent = async {
                    match sending.as_mut() {
                        Some(task) => (&mut task.0).await,
                        None => std::future::pending().await,
                    }
                }, if sending.is_some() && outcome.is_none() && stopped.is_none() => {
                    sending = None;
                    match sent {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => {
                            input_error = Some((format!("could not pass standard input to the command in the Daytona sandbox: {e}"), tokio::time::Instant::now() + INPUT_FAILURE_GRACE));
                        }
                        Err(e) => {
                            input_error = Some((format!("the standard input's sender ended: {e}"), tokio::time::Instant::now() + INPUT_FAILURE_GRACE));
                        }
                    }
                }
                // A command that ended closed its input first: what it did not read is no
                // error. One still running past the grace would wait for input that never comes.
                () = async {
                    match &input_error {
                        Some((_, at)) => tokio::time::sleep_until(*at).await,
                        None => std::future::pending().await,
                    }
                }, if input_error.is_some() && outcome.is_none() && stopped.is_none() && input_failed.is_none() => {
                    input_failed = input_error.take().map(|(why, _)| why);
                    streams_open = false;
                }
                () = stop.token().cancelled(), if stopped.is_none() && outcome.is_none() && input_failed.is_none() => {
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
        drop(sending);
        // Deleting the session ends whatever still runs in it.
        let deleted = toolbox.delete_session(&session).await.is_ok();
        // A session's own sandbox stays the session's when a command had to be stopped (as a
        // sandbox session's container does): deleting the toolbox session ended the command.
        let taint = !(deleted && session_of(spec).is_some());
        if let Some(reason) = stopped {
            let ended = match reason {
                StopReason::Cancelled => Ended::Cancelled,
                StopReason::TimedOut => Ended::TimedOut,
            };
            return Ok((ended, taint));
        }
        if let Some(reason) = input_failed {
            return Ok((
                Ended::Failed {
                    exit_code: None,
                    reason,
                },
                taint,
            ));
        }
        match outcome {
            Some(Ok(o)) => Ok((Ended::Exited(o.exit_code), false)),
            Some(Err(e)) => Ok((
                Ended::Failed {
                    exit_code: None,
                    reason: format!("lost the command in the Daytona sandbox: {e}"),
                },
                taint,
            )),
            None => Ok((
                Ended::Failed {
                    exit_code: None,
                    reason: "the command ended without an outcome".into(),
                },
                taint,
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

/// The stigmer session a sandbox spec belongs to (its owner `session:<id>`), if any.
fn session_of(spec: &SandboxSpec) -> Option<&str> {
    spec.owner
        .as_deref()
        .and_then(|o| o.strip_prefix(stigmer_docker::SESSION_OWNER_PREFIX))
}

/// The same path rules as a sandbox session's copies: absolute, no `..`, a file's path.
fn checked_path(path: &str) -> Result<(), CloudError> {
    stigmer_docker::check_container_path(path).map_err(|e| match e {
        stigmer_docker::EngineError::InvalidSpec(m) => CloudError::Invalid(m),
        other => CloudError::Invalid(other.to_string()),
    })
}

/// A refusal the caller can act on (a 4xx about the path) is said as such; the rest stays a
/// Daytona error.
fn file_error(path: &str, what: &str, e: stigmer_daytona::Error) -> CloudError {
    match e.status() {
        Some(400 | 403 | 404 | 409) => CloudError::Invalid(format!("{path} {what} ({e})")),
        _ => CloudError::Daytona(e),
    }
}

/// A task that is stopped when the run that started it ends, whichever way.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How long a command whose input could not be passed may take to be seen ending by itself (a
/// command that exits closes its input: the toolbox then answers an error, or 410, at once).
const INPUT_FAILURE_GRACE: Duration = Duration::from_secs(3);

/// Passes the command's stdin to it as base64 lines, then the end mark (see the module's
/// comment). Returns once all is sent, or as soon as the command has ended (what it did not
/// read is not an error).
async fn send_stdin(
    toolbox: stigmer_daytona::Toolbox,
    session: String,
    command: String,
    mut chunks: tokio::sync::mpsc::Receiver<Vec<u8>>,
) -> Result<(), stigmer_daytona::Error> {
    let engine = base64::engine::general_purpose::STANDARD;
    let mut pending: Vec<u8> = Vec::new();
    let mut open = true;
    while open || !pending.is_empty() {
        if open && pending.len() < STDIN_CALL_BYTES {
            match chunks.recv().await {
                Some(chunk) => {
                    pending.extend_from_slice(&chunk);
                    continue;
                }
                None => open = false,
            }
        }
        // Whole groups of 3 bytes while more may come, so that no line but the last is padded.
        let take = if open {
            STDIN_CALL_BYTES
        } else {
            pending.len().min(STDIN_CALL_BYTES)
        };
        let take = if open || take < pending.len() {
            take / 3 * 3
        } else {
            take
        };
        if take == 0 {
            continue;
        }
        let mut line = engine.encode(&pending[..take]);
        pending.drain(..take);
        line.push('\n');
        if !open && pending.is_empty() {
            line.push_str(".\n");
        }
        if !toolbox
            .send_input(&session, &command, &line, STDIN_CALL_TIMEOUT)
            .await?
        {
            return Ok(());
        }
        if !open && pending.is_empty() {
            return Ok(());
        }
    }
    // No bytes at all: only the end mark.
    toolbox
        .send_input(&session, &command, ".\n", STDIN_CALL_TIMEOUT)
        .await
        .map(drop)
}
