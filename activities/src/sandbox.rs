//! The sandbox backend: commands in hardened Docker containers, leased through the store and
//! reused within a TTL.
//!
//! Every container has a lease row written *before* Docker is asked to create it, and carries
//! the `io.stigmer.*` labels, so a crash at any instant leaves something the reaper can find.
//! Acquire is one atomic `idle → busy` transition in the store; a container whose command may
//! still be running is tainted and removed, never returned to idle.

use crate::local::{Ended, StopReason, Stopper};
use crate::output::OutputSink;
use crate::stdin::StdinFeed;
use crate::store::{LeaseState, NewLease, Store, StoreError};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;
use stigmer_docker::{
    BuildSpec, ContainerSpec, CredentialMount, Engine, EngineError, EnsureImage, ExecEnd,
    ExecRequest, ImageHow, ImageProgress, LABEL_LEASE, LABEL_MANAGED, LABEL_STORE, LABEL_WORKER,
    Network,
};
use stigmer_workflows::{AcquireRequest, ImageReady, Placement, SandboxSpec};
use tokio::sync::OnceCell;

/// The lease backend name of Docker containers.
pub const BACKEND: &str = "docker";

/// Where the sandbox Dockerfiles live, for building the image when it cannot be pulled:
/// `STIGMER_SANDBOX_DIR`, else the `sandbox/` folder of the source tree this was built from.
#[must_use]
pub fn sandbox_dir() -> PathBuf {
    std::env::var_os("STIGMER_SANDBOX_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../sandbox")))
}

/// Why a sandbox step failed, and whether trying again can help.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("{0}")]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Invalid(String),
}

impl SandboxError {
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Engine(e) => e.is_retryable(),
            Self::Store(_) => true,
            Self::Invalid(_) => false,
        }
    }
}

/// The Docker side of a worker: one engine connection, made on first use so a worker without
/// Docker still serves local mode.
#[derive(Clone)]
pub struct SandboxBackend {
    engine: std::sync::Arc<OnceCell<(Engine, String)>>,
    /// Whether containers get the in-container agent, and where this host keeps its binary.
    agent: bool,
    agent_dir: Option<PathBuf>,
    /// Where the egress proxy's sockets live (the `public` posture).
    egress_dir: Option<PathBuf>,
    host_queue: std::sync::Arc<std::sync::OnceLock<String>>,
    store: Store,
    worker_id: String,
}

/// The task queue of one Docker host: `<task queue>@docker:<engine ID>`. The engine's ID is
/// stable across worker restarts, so a restarted worker serves its host's containers again.
#[must_use]
pub fn host_task_queue(task_queue: &str, engine_id: &str) -> String {
    format!("{task_queue}@docker:{engine_id}")
}

impl SandboxBackend {
    #[must_use]
    pub fn new(store: Store, worker_id: String) -> Self {
        Self {
            engine: std::sync::Arc::new(OnceCell::new()),
            agent: true,
            agent_dir: None,
            egress_dir: None,
            host_queue: std::sync::Arc::new(std::sync::OnceLock::new()),
            store,
            worker_id,
        }
    }

    /// Sets whether new containers get the agent (`STIGMER_SANDBOX_AGENT`), and the directory
    /// (under the data dir) where the agent's binary is kept for bind-mounting. Before first use.
    #[must_use]
    pub fn with_agent(mut self, enabled: bool, dir: PathBuf) -> Self {
        self.agent = enabled;
        self.agent_dir = Some(dir);
        self
    }

    /// Sets the directory (under the data dir, private to the worker) where the egress proxy
    /// binds one socket per container of the `public` posture. Before first use.
    #[must_use]
    pub fn with_egress_dir(mut self, dir: PathBuf) -> Self {
        self.egress_dir = Some(dir);
        self
    }

    /// The worker this backend acts for (its leases carry this id).
    #[must_use]
    pub fn worker_id(&self) -> &str {
        &self.worker_id
    }

    /// Says that this worker also polls its host's task queue: from now on images, containers
    /// and execs placed here are pinned to that queue. Set once, by the worker that polls it.
    pub fn serve_host_queue(&self, queue: String) {
        let _ = self.host_queue.set(queue);
    }

    /// The host task queue this worker polls, if it polls one.
    #[must_use]
    pub fn host_queue(&self) -> Option<String> {
        self.host_queue.get().cloned()
    }

    /// The engine and its ID, connecting on first use.
    pub async fn engine(&self) -> Result<&(Engine, String), SandboxError> {
        Ok(self
            .engine
            .get_or_try_init(|| async {
                let mut engine = Engine::connect().await?.with_agent(self.agent);
                if let Some(dir) = &self.agent_dir {
                    engine = engine.with_agent_dir(dir.clone());
                }
                if let Some(dir) = &self.egress_dir {
                    engine = engine.with_egress_dir(dir.clone());
                }
                let id = engine.engine_id().await?;
                Ok::<_, EngineError>((engine, id))
            })
            .await?)
    }

    /// The container shape a sandbox spec asks for.
    pub fn container_spec(spec: &SandboxSpec, image: &str) -> Result<ContainerSpec, SandboxError> {
        spec.check_limits().map_err(SandboxError::Invalid)?;
        let network = match spec.network {
            stigmer_workflows::Network::Bridge => Network::Bridge,
            stigmer_workflows::Network::None => Network::None,
            stigmer_workflows::Network::Public => Network::Public,
        };
        let mut c = ContainerSpec::new(image)
            .with_network(network)
            .with_allow_net(spec.allow_net.clone())
            .with_memory_bytes(spec.memory_bytes)
            .with_nano_cpus(spec.nano_cpus)
            .with_pids_limit(spec.pids_limit);
        if let Some(dir) = &spec.workspace {
            c = c.with_workspace(dir.clone());
        }
        if let Some(owner) = &spec.owner {
            c = c.with_owner(owner.clone());
        }
        for mount in &spec.credential_mounts {
            c.credential_mounts.push(CredentialMount {
                source: PathBuf::from(&mount.host),
                target: mount.target.clone(),
            });
        }
        c.validate()?;
        Ok(c)
    }

    /// Present, pulled, or built from the sandbox Dockerfile; with requirements, layered.
    pub async fn ensure_image(
        &self,
        spec: &SandboxSpec,
        progress: &mut (dyn FnMut(String) + Send),
    ) -> Result<ImageReady, SandboxError> {
        let (engine, _) = self.engine().await?;
        let dir = sandbox_dir();
        let dockerfile = dir.join("Dockerfile.sandbox.basic");
        let build = dockerfile.is_file().then(|| {
            let mut b = BuildSpec::new(&dockerfile, &dir);
            if let Ok(base) = std::env::var("STIGMER_SANDBOX_BASE_IMAGE") {
                b.build_args.insert("BASE_IMAGE".into(), base);
            }
            b
        });
        let opts = EnsureImage {
            auto_pull: spec.auto_pull,
            build,
        };
        let mut last_pct = -1i64;
        let mut on_progress = |p: ImageProgress| match p {
            ImageProgress::Pull {
                layer,
                status,
                current: Some(c),
                total: Some(t),
            } if t > 0 => {
                let pct = c * 100 / t;
                if pct / 10 != last_pct / 10 {
                    last_pct = pct;
                    progress(format!(
                        "pulling {}: layer {layer} {status} {pct}%",
                        spec.image
                    ));
                }
            }
            ImageProgress::Pull { status, .. } if status.contains("Pull complete") => {}
            ImageProgress::Build { line } => progress(format!("building {}: {line}", spec.image)),
            _ => {}
        };
        let info = engine
            .ensure_image(&spec.image, &opts, &mut on_progress)
            .await?;
        match info.how {
            ImageHow::Pulled => crate::metrics::metrics().image_pulled(&spec.image),
            ImageHow::Built => crate::metrics::metrics().image_built(&spec.image),
            ImageHow::Present => {}
        }
        if info.how == ImageHow::Built {
            progress(format!(
                "{} could not be pulled; built it from {}",
                spec.image,
                dockerfile.display()
            ));
        }
        let mut ready = ImageReady {
            image: spec.image.clone(),
            image_id: info.id,
            digest: info.repo_digest,
            how: format!("{:?}", info.how).to_lowercase(),
            task_queue: self.host_queue(),
        };
        if let Some(requirements) = &spec.requirements {
            let mut on_build = |p: ImageProgress| {
                if let ImageProgress::Build { line } = p {
                    progress(format!("layering {requirements}: {line}"));
                }
            };
            let tag = engine
                .build_requirements_image(
                    &spec.image,
                    std::path::Path::new(requirements),
                    &mut on_build,
                )
                .await?;
            progress(format!("layered {requirements} into {tag}"));
            ready.image = tag;
        }
        Ok(ready)
    }

    /// The image of `spec` when it is on the Docker host whose queue this worker serves, as
    /// `ensure_image` would report it: the starter on that host (the daemon) passes it in, and
    /// the workflow goes straight to acquire. `None` when anything is to be done first (pull,
    /// build, `--requirements`) or this worker serves no host queue.
    pub async fn present_image(&self, spec: &SandboxSpec) -> Option<ImageReady> {
        if !spec.allows_ready_host() {
            return None;
        }
        let queue = self.host_queue()?;
        let (engine, _) = self.engine().await.ok()?;
        let info = engine.image_present(&spec.image).await.ok()??;
        Some(ImageReady {
            image: spec.image.clone(),
            image_id: info.id,
            digest: info.repo_digest,
            how: "present".into(),
            task_queue: Some(queue),
        })
    }

    /// [`Self::acquire`], or `None` when the execution holds no container here although it got
    /// past `queued`: an earlier attempt ran it and lost its container (its record says how
    /// it ended, or that its worker was lost).
    pub async fn acquire_unless_started(
        &self,
        req: &AcquireRequest,
    ) -> Result<Option<Placement>, SandboxError> {
        let (engine, engine_id) = self.engine().await?;
        let container = Self::container_spec(&req.spec, &req.image.image)?;
        let spec_hash = container.spec_hash();
        if let Some(placement) = self
            .resume_acquire(engine, engine_id, &req.execution_id)
            .await?
        {
            return Ok(Some(placement));
        }
        if self.started_elsewhere(&req.execution_id).await? {
            return Ok(None);
        }
        if req.spec.ttl_secs > 0
            && let Some(placement) = self
                .reuse_idle(
                    engine,
                    engine_id,
                    &req.execution_id,
                    &spec_hash,
                    Some(&req.image),
                )
                .await?
        {
            return Ok(Some(placement));
        }
        let lease = self
            .store
            .create_lease(&NewLease {
                backend: BACKEND,
                worker_id: &self.worker_id,
                engine_id: Some(engine_id),
                image: &req.image.image,
                spec_hash: &spec_hash,
                ttl_secs: req.spec.ttl_secs,
                execution_id: &req.execution_id,
            })
            .await?;
        let labels = BTreeMap::from([
            (LABEL_MANAGED.to_string(), "true".to_string()),
            (LABEL_STORE.to_string(), self.store.store_id().to_string()),
            (LABEL_LEASE.to_string(), lease.id.clone()),
            (LABEL_WORKER.to_string(), self.worker_id.clone()),
        ]);
        let name = container_name(&lease.id);
        crate::chaos::point("before-create");
        let container_id = match engine.create_container(&container, &labels, &name).await {
            Ok(id) => id,
            Err(e) => {
                // Whatever Docker made of it carries our labels; the reaper removes it.
                let _ = self
                    .store
                    .release_lease(&lease.id, false, Some("create failed"), None)
                    .await;
                return Err(e.into());
            }
        };
        crate::chaos::point("after-create");
        self.store.lease_created(&lease.id, &container_id).await?;
        self.store
            .set_placement(
                &req.execution_id,
                Some(&req.image.image),
                req.image.digest.as_deref().or(Some(&req.image.image_id)),
                Some(&container_id),
                Some(&lease.id),
            )
            .await?;
        Ok(Some(Placement {
            lease_id: lease.id,
            container_id,
            reused: false,
            task_queue: self.host_queue(),
        }))
    }

    /// The warm path: `exec` takes an idle container with the execution's spec itself, without
    /// the ensure-image and acquire steps (a running container proves its image is here). A
    /// retried attempt finds the container it already holds. `None`: no idle container with
    /// this spec on this host (another execution took it, or its TTL ran out); the workflow
    /// then goes the long way.
    pub async fn claim_warm(
        &self,
        execution_id: &str,
        spec: &SandboxSpec,
        retried: bool,
    ) -> Result<Option<Placement>, SandboxError> {
        let (engine, engine_id) = self.engine().await?;
        if let Some(placement) = self.resume_acquire(engine, engine_id, execution_id).await? {
            return Ok(Some(placement));
        }
        if retried && self.started_elsewhere(execution_id).await? {
            return Ok(None);
        }
        let spec_hash = Self::container_spec(spec, &spec.image)?.spec_hash();
        self.reuse_idle(engine, engine_id, execution_id, &spec_hash, None)
            .await
    }

    /// What a lost worker's command left in its container: killed (its whole process group),
    /// and the lease tainted so the container is removed rather than reused; a session's own
    /// container, once the command is killed, stays the session's.
    pub async fn abandon(
        &self,
        execution_id: &str,
        placement: &Placement,
        session_owned: bool,
    ) -> Result<(), SandboxError> {
        let (engine, _) = self.engine().await?;
        let pid_file = ExecRequest::pid_file_for(execution_id);
        if session_owned {
            // A session's container is its files and processes: once the lost command is
            // stopped it goes on serving the session. Only one that cannot be stopped is given up.
            match engine.kill_exec(&placement.container_id, &pid_file).await {
                Ok(_) => return Ok(()),
                Err(e) => tracing::warn!(
                    "could not stop the lost command of {execution_id} in its session's \
                     container, which is given up: {e}"
                ),
            }
        }
        self.store
            .taint_lease(
                &placement.lease_id,
                "the worker running its command was lost",
                Some(execution_id),
            )
            .await?;
        engine.kill_exec(&placement.container_id, &pid_file).await?;
        Ok(())
    }

    /// Whether the execution got past `queued` although it holds no container here: an earlier
    /// attempt ran it (and gave its container back) but could not answer.
    async fn started_elsewhere(&self, execution_id: &str) -> Result<bool, SandboxError> {
        Ok(self
            .store
            .get_execution(execution_id)
            .await?
            .is_some_and(|r| {
                r.status()
                    .is_some_and(|s| s != stigmer_workflows::Status::Queued)
            }))
    }

    /// Claims the most recently used idle container with this spec inside its TTL, if any, and
    /// records it as the execution's placement. Docker is the truth about what exists: an idle
    /// lease whose container died is dropped, and the next one tried.
    async fn reuse_idle(
        &self,
        engine: &Engine,
        engine_id: &str,
        execution_id: &str,
        spec_hash: &str,
        image: Option<&ImageReady>,
    ) -> Result<Option<Placement>, SandboxError> {
        while let Some(lease) = self
            .store
            .acquire_idle(
                BACKEND,
                spec_hash,
                Some(engine_id),
                execution_id,
                &self.worker_id,
            )
            .await?
        {
            let Some(container_id) = lease.container_id.clone() else {
                self.store.lease_removed(&lease.id).await?;
                continue;
            };
            match engine.container_state(&container_id).await? {
                // Its agent speaks another protocol (made by another release): not reused.
                Some(state) if state.running && speaks_our_agent(&state.labels) => {
                    // From `ensure_image` when it ran; else what the container was made from.
                    let (name, digest) = match image {
                        Some(i) => (
                            i.image.clone(),
                            Some(i.digest.clone().unwrap_or_else(|| i.image_id.clone())),
                        ),
                        None => (lease.image.clone(), state.image_id),
                    };
                    self.store
                        .set_placement(
                            execution_id,
                            Some(&name),
                            digest.as_deref(),
                            Some(&container_id),
                            Some(&lease.id),
                        )
                        .await?;
                    return Ok(Some(Placement {
                        lease_id: lease.id,
                        container_id,
                        reused: true,
                        task_queue: self.host_queue(),
                    }));
                }
                _ => {
                    let _ = engine.remove_container(&container_id).await;
                    self.store.lease_removed(&lease.id).await?;
                }
            }
        }
        Ok(None)
    }

    /// A retried acquire (its worker died, or the store failed after Docker answered) finds the
    /// lease its execution already holds: a busy one with a live container is handed back; a
    /// half-made one is undone, so one execution never ends up with two containers.
    async fn resume_acquire(
        &self,
        engine: &Engine,
        engine_id: &str,
        execution_id: &str,
    ) -> Result<Option<Placement>, SandboxError> {
        let Some(held) = self
            .store
            .lease_of_execution(BACKEND, execution_id, Some(engine_id))
            .await?
        else {
            return Ok(None);
        };
        if held.state == LeaseState::Busy
            && let Some(container_id) = held.container_id.clone()
            && engine
                .container_state(&container_id)
                .await?
                .is_some_and(|s| s.running)
        {
            return Ok(Some(Placement {
                lease_id: held.id,
                container_id,
                reused: false,
                task_queue: self.host_queue(),
            }));
        }
        let target = held
            .container_id
            .clone()
            .unwrap_or_else(|| container_name(&held.id));
        engine.remove_container(&target).await?;
        self.store
            .forget_lease(&held.id, "replaced by a retried acquire")
            .await?;
        Ok(None)
    }

    /// Removes the containers of an ended session (found by their `io.stigmer.session` label)
    /// and retires their leases. Returns the containers removed.
    pub async fn remove_session_containers(
        &self,
        session: &str,
    ) -> Result<Vec<String>, SandboxError> {
        let (engine, _) = self.engine().await?;
        let mut removed = Vec::new();
        for c in engine.list_managed(self.store.store_id()).await? {
            if c.labels
                .get(stigmer_docker::LABEL_SESSION)
                .map(String::as_str)
                != Some(session)
            {
                continue;
            }
            engine.remove_container(&c.id).await?;
            if let Some(lease) = c.labels.get(stigmer_docker::LABEL_LEASE) {
                self.store.lease_removed(lease).await?;
            }
            removed.push(c.id);
        }
        Ok(removed)
    }

    /// Removes (cleanup on) or stops (cleanup off: kept for inspection) a container whose lease
    /// is `removing`, then marks the lease removed.
    pub async fn dispose(
        &self,
        lease_id: &str,
        container_id: &str,
        cleanup: bool,
    ) -> Result<(), SandboxError> {
        let (engine, _) = self.engine().await?;
        if cleanup {
            engine.remove_container(container_id).await?;
        } else {
            engine.stop_container(container_id).await?;
        }
        self.store.lease_removed(lease_id).await?;
        Ok(())
    }
}

/// Gives every file under a host directory to `uid:gid`, never following a symbolic link out
/// of it: to the sandbox user before a command runs in a caller's directory, and back to the
/// caller afterwards. The worker does this on the host (the container has no capabilities to
/// do it with), so it needs CAP_CHOWN there, as a worker running as root has; without it the
/// files stay as they are and the worker says so in its log.
async fn lend_workspace(dir: &str, uid: u32, gid: u32) {
    let root = PathBuf::from(dir);
    let outcome = tokio::task::spawn_blocking(move || chown_tree(&root, uid, gid)).await;
    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(
            "could not give the workspace {dir} to {uid}:{gid} ({e}); run the worker as root \
             (or as uid 1000) for the sandbox to share a workspace with other users"
        ),
        Err(e) => tracing::warn!("handing over the workspace {dir} failed: {e}"),
    }
}

/// Chowns `root` and everything below it. Below the root nothing is followed: each directory
/// is opened relative to the one held open above it with `O_NOFOLLOW`, and each entry is
/// chowned relative to its directory with `AT_SYMLINK_NOFOLLOW`. So a process in the container
/// that swaps a directory for a link to a host path while the walk runs changes which link is
/// chowned, never the host path behind it (a path-based walk would follow it).
fn chown_tree(root: &std::path::Path, uid: u32, gid: u32) -> std::io::Result<()> {
    use nix::dir::Dir;
    use nix::fcntl::OFlag;
    use nix::sys::stat::Mode;
    use std::os::fd::AsRawFd;
    let owner = Some(nix::unistd::Uid::from_raw(uid));
    let group = Some(nix::unistd::Gid::from_raw(gid));
    // The root is the caller's own path (it may be reached through links it chose).
    let dir = Dir::open(
        root,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    nix::unistd::fchown(dir.as_raw_fd(), owner, group)?;
    chown_below(dir, owner, group)
}

fn chown_below(
    mut dir: nix::dir::Dir,
    owner: Option<nix::unistd::Uid>,
    group: Option<nix::unistd::Gid>,
) -> std::io::Result<()> {
    use nix::dir::{Dir, Type};
    use nix::errno::Errno;
    use nix::fcntl::{AtFlags, OFlag};
    use nix::sys::stat::Mode;
    use std::os::fd::AsRawFd;
    let fd = dir.as_raw_fd();
    let mut subdirs = Vec::new();
    for entry in dir.iter() {
        let entry = entry?;
        let name = entry.file_name();
        if name == c"." || name == c".." {
            continue;
        }
        match nix::unistd::fchownat(Some(fd), name, owner, group, AtFlags::AT_SYMLINK_NOFOLLOW) {
            // Gone since it was listed: nothing to hand back.
            Ok(()) | Err(Errno::ENOENT) => {}
            Err(e) => return Err(e.into()),
        }
        if matches!(entry.file_type(), Some(Type::Directory) | None) {
            subdirs.push(name.to_owned());
        }
    }
    for name in subdirs {
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        match Dir::openat(Some(fd), name.as_c_str(), flags, Mode::empty()) {
            Ok(sub) => chown_below(sub, owner, group)?,
            // A link or a file by now (or gone): not followed.
            Err(Errno::ELOOP | Errno::ENOTDIR | Errno::ENOENT) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// The name of a lease's container: a crash before its id is recorded can still find it.
#[must_use]
pub fn container_name(lease_id: &str) -> String {
    format!("stigmer-{lease_id}")
}

/// How long a `creating` lease may go without its container before the reaper calls it dead.
pub const CREATING_GRACE: Duration = Duration::from_secs(120);

/// Whether a container's agent (if it has one) speaks this release's protocol.
fn speaks_our_agent(labels: &std::collections::BTreeMap<String, String>) -> bool {
    labels
        .get(stigmer_docker::LABEL_AGENT)
        .is_none_or(|protocol| protocol == stigmer_docker::AGENT_PROTOCOL)
}

impl crate::backend::BackendError for SandboxError {
    fn is_retryable(&self) -> bool {
        SandboxError::is_retryable(self)
    }

    fn is_store(&self) -> bool {
        matches!(self, Self::Store(_))
    }
}

impl crate::backend::ContainerBackend for SandboxBackend {
    type Error = SandboxError;

    const NAME: &'static str = "the sandbox";

    /// Reuses an idle container with the same spec inside its TTL, or creates one.
    async fn acquire(&self, req: &AcquireRequest) -> Result<Placement, SandboxError> {
        // A warm-path attempt ran it and its answer was lost: placing it again would record a
        // container it never ran in. The workflow then reports what was recorded.
        self.acquire_unless_started(req).await?.ok_or_else(|| {
            SandboxError::Invalid(format!(
                "execution {} already started in another container",
                req.execution_id
            ))
        })
    }

    /// Runs `argv` in the leased container, pumping output into `sink` until it ends or `stop`
    /// fires. Returns how it ended and whether the container must not be reused.
    // Each argument is a different part of one execution; bundling them would only rename them.
    #[allow(clippy::too_many_arguments)]
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
    ) -> Result<(Ended, bool), SandboxError> {
        let (engine, _) = self.engine().await?;
        // A caller other than the sandbox user lends it the workspace for the command.
        let lent = match (&spec.workspace, spec.workspace_owner) {
            (Some(dir), Some((uid, gid))) if uid != stigmer_docker::SANDBOX_UID => {
                lend_workspace(
                    dir,
                    stigmer_docker::SANDBOX_UID,
                    stigmer_docker::SANDBOX_UID,
                )
                .await;
                Some((dir.clone(), uid, gid))
            }
            _ => None,
        };
        // A clean exit is checked for leftovers through the engine's process list below, which
        // is cheaper than the in-container check (needed only to explain a failure).
        let mut req = ExecRequest::new(argv, ExecRequest::pid_file_for(execution_id))
            .skip_check_on_success()
            .with_envs(env.iter().cloned())
            .with_workdir(stigmer_docker::WORKSPACE_DIR);
        // A session's own container keeps what its commands leave running (docs/sessions.md);
        // the clean-container rule is for containers that other executions may meet.
        let session_owned = spec
            .owner
            .as_deref()
            .is_some_and(|o| o.starts_with(stigmer_docker::SESSION_OWNER_PREFIX));
        if session_owned {
            req = req.keep_background();
        }
        if spec.ttl_secs == 0 {
            // Never reused: the container stops by itself once the command is done, so the
            // release's removal does not wait for its teardown.
            req = req.last_command();
        }
        // Output comes through a bounded channel: a full channel holds the command's output
        // back (memory stays bounded) without holding back its timeout or cancellation.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<stigmer_docker::OutputChunk>(16);
        let (stdin, _passing) = stdin.map(StdinFeed::into_channel).unzip();
        let run = engine.exec_with_stdin(
            &placement.container_id,
            req,
            stdin,
            tx,
            stop.token().clone(),
        );
        tokio::pin!(run);
        let mut flush_tick = tokio::time::interval(crate::output::FLUSH_INTERVAL);
        let mut outcome = None;
        let mut streams_open = true;
        let pumped: Result<(), StoreError> = async {
            while outcome.is_none() || streams_open {
                tokio::select! {
                    result = &mut run, if outcome.is_none() => outcome = Some(result),
                    chunk = rx.recv(), if streams_open => match chunk {
                        Some(chunk) => {
                            crate::chaos::point("mid-exec");
                            sink.write(chunk.kind, chunk.data.to_vec(), stop.token()).await?;
                        }
                        None => streams_open = false,
                    },
                    _ = flush_tick.tick() => sink.flush().await?,
                }
            }
            Ok(())
        }
        .await;
        if let Err(e) = pumped {
            // The store failed mid-run: the command must not run on in the container while its
            // execution is recorded failed, and the caller gets its workspace back.
            if outcome.is_none() {
                let pid_file = ExecRequest::pid_file_for(execution_id);
                let _ = engine.kill_exec(&placement.container_id, &pid_file).await;
            }
            if let Some((dir, uid, gid)) = lent {
                lend_workspace(&dir, uid, gid).await;
            }
            return Err(e.into());
        }
        let Some(outcome) = outcome else {
            return Ok((
                Ended::Failed {
                    exit_code: None,
                    reason: "the exec ended without an outcome".into(),
                },
                true,
            ));
        };
        let outcome = match outcome {
            Ok(outcome) => outcome,
            Err(e @ (EngineError::ExecInterrupted { .. } | EngineError::AgentLost { .. })) => {
                let pid_file = ExecRequest::pid_file_for(execution_id);
                let (engine, _) = self.engine().await?;
                let _ = engine.kill_exec(&placement.container_id, &pid_file).await;
                return Ok((
                    Ended::Failed {
                        exit_code: None,
                        reason: format!("lost the command in the container: {e}"),
                    },
                    true,
                ));
            }
            Err(e) => return Err(e.into()),
        };
        if let Some((dir, uid, gid)) = lent {
            // What the sandbox user wrote into the caller's directory is the caller's.
            lend_workspace(&dir, uid, gid).await;
        }
        let container = Self::container_spec(spec, "unused")?;
        let note = outcome.kill_reason(&container);
        let ended = match outcome.ended {
            ExecEnd::TimedOut => Ended::TimedOut,
            ExecEnd::Cancelled => match stop.reason() {
                Some(StopReason::TimedOut) => Ended::TimedOut,
                _ => Ended::Cancelled,
            },
            ExecEnd::Exited => match (outcome.exit_code, note) {
                (code, Some(reason)) => Ended::Failed {
                    exit_code: code.map(|c| c as i32),
                    reason,
                },
                (Some(code), None) => Ended::Exited(code as i32),
                (None, None) => Ended::Failed {
                    exit_code: None,
                    reason: "the command's exit code could not be read".into(),
                },
            },
        };
        let mut taint =
            !session_owned && (outcome.stray_processes || outcome.ended != ExecEnd::Exited);
        if !outcome.checked && !taint && !session_owned {
            taint = match engine
                .processes_besides_keepalive(&placement.container_id)
                .await
            {
                Ok(n) => n > 0,
                Err(e) => {
                    tracing::warn!("{e}; the container will not be reused");
                    true
                }
            };
        }
        Ok((ended, taint))
    }

    /// Gives a container back to idle straight from `exec`, when its command ended by itself
    /// and left nothing running: the client can have its answer at once and its next command
    /// still finds the container idle. The workflow's release then finds nothing to do.
    async fn release_clean(
        &self,
        execution_id: &str,
        placement: &Placement,
    ) -> Result<bool, SandboxError> {
        let state = self
            .store
            .release_lease(&placement.lease_id, true, None, Some(execution_id))
            .await?;
        Ok(state == LeaseState::Idle)
    }

    /// Back to idle for reuse, or removed (or stopped and kept when cleanup is off).
    async fn release(
        &self,
        execution_id: &str,
        placement: &Placement,
        taint: bool,
        ttl_secs: u64,
        cleanup: bool,
    ) -> Result<String, SandboxError> {
        // A session's own container outlives a command that timed out or was cancelled: the
        // command's group was stopped, and its files and background processes are the session's
        // (docs/sessions.md). `exec`'s own taint (a lost command) still counts below.
        let taint = taint
            && self
                .store
                .get_execution(execution_id)
                .await?
                .is_none_or(|e| e.session.is_none());
        // `exec` may have tainted the lease itself (a process left behind after a clean exit).
        let taint = taint
            || self
                .store
                .get_lease(&placement.lease_id)
                .await?
                .is_some_and(|l| l.tainted != 0 && l.execution_id.as_deref() == Some(execution_id));
        if taint {
            self.store
                .taint_lease(
                    &placement.lease_id,
                    "the command may still have been running",
                    Some(execution_id),
                )
                .await?;
        }
        let reuse = !taint && ttl_secs > 0;
        crate::chaos::point("before-release");
        let state = self
            .store
            .release_lease(&placement.lease_id, reuse, None, Some(execution_id))
            .await?;
        crate::chaos::point("mid-release");
        if state == LeaseState::Removing {
            self.dispose(&placement.lease_id, &placement.container_id, cleanup)
                .await?;
            return Ok(LeaseState::Removed.to_string());
        }
        Ok(state.to_string())
    }

    /// The container an execution still holds on this worker's host, if any (busy, or being
    /// made).
    async fn held_by(&self, execution_id: &str) -> Result<Option<Placement>, SandboxError> {
        let (_, engine_id) = self.engine().await?;
        let Some(lease) = self
            .store
            .lease_of_execution(BACKEND, execution_id, Some(engine_id))
            .await?
        else {
            return Ok(None);
        };
        let container_id = lease
            .container_id
            .clone()
            .unwrap_or_else(|| container_name(&lease.id));
        Ok(Some(Placement {
            lease_id: lease.id,
            container_id,
            reused: true,
            task_queue: self.host_queue(),
        }))
    }
}

#[cfg(test)]
mod chown_tests {
    use super::chown_tree;
    use std::os::unix::fs::MetadataExt;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[test]
    fn the_hand_back_never_follows_a_link_even_one_swapped_in_during_the_walk() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: chowning to another user needs root");
            return;
        }
        let host = tempfile::tempdir().unwrap();
        let outside = host.path().join("outside");
        // The host directory looks like the workspace's `sub`, so a walk by path that is led
        // there finds the names it expects.
        std::fs::create_dir_all(outside.join("deeper")).unwrap();
        std::fs::write(outside.join("deeper/f"), "host file").unwrap();
        let ws = host.path().join("ws");
        std::fs::create_dir_all(ws.join("sub/deeper")).unwrap();
        std::fs::write(ws.join("sub/deeper/f"), "x").unwrap();
        std::os::unix::fs::symlink(&outside, ws.join("link")).unwrap();

        chown_tree(&ws, 1000, 1000).unwrap();
        for path in ["", "sub", "sub/deeper", "sub/deeper/f"] {
            assert_eq!(
                std::fs::metadata(ws.join(path)).unwrap().uid(),
                1000,
                "{path}"
            );
        }
        assert_eq!(
            std::fs::symlink_metadata(ws.join("link")).unwrap().uid(),
            1000
        );
        assert_eq!(
            std::fs::metadata(outside.join("deeper/f")).unwrap().uid(),
            0
        );

        // A process keeps swapping `sub` for a link to the host directory while walks run.
        let stop = Arc::new(AtomicBool::new(false));
        let swapper = {
            let (ws, outside, stop) = (ws.clone(), outside.clone(), stop.clone());
            std::thread::spawn(move || {
                let (sub, parked) = (ws.join("sub"), ws.join("parked"));
                while !stop.load(Ordering::Relaxed) {
                    let _ = std::fs::rename(&sub, &parked);
                    let _ = std::os::unix::fs::symlink(&outside, &sub);
                    let _ = std::fs::remove_file(&sub);
                    let _ = std::fs::rename(&parked, &sub);
                }
            })
        };
        for round in 0..20_000 {
            let _ = chown_tree(&ws, 1000 + round % 2, 1000);
        }
        stop.store(true, Ordering::Relaxed);
        swapper.join().unwrap();
        for file in [outside.join("deeper"), outside.join("deeper/f")] {
            assert_eq!(
                std::fs::metadata(&file).unwrap().uid(),
                0,
                "{} was chowned through a swapped-in link",
                file.display()
            );
        }
    }
}
