//! The Docker Engine layer of stigmer: hardened sandbox containers and the commands run in them.
//!
//! Everything goes through the Engine API (`bollard`), never the `docker` CLI, so the worker
//! needs nothing but a socket. The crate knows nothing of Temporal, leases or the store; the
//! activities crate composes these calls into `ensure_image → acquire → exec → release`.
//!
//! - [`Engine::connect`] / [`Engine::engine_id`] — reach the engine; its ID keys the host's task
//!   queue.
//! - [`Engine::ensure_image`] / [`Engine::build_requirements_image`] (module `image`) — present,
//!   pulled or built.
//! - [`Engine::create_container`] and friends (module `container`) — a hardened, labelled,
//!   long-lived container that executions reuse.
//! - [`Engine::exec`] / [`Engine::kill_exec`] (module `exec`) — a command with streamed output,
//!   timeout, cancellation, and OOM / pids-limit detection; through the container's agent
//!   (module `agent`) where it has one, else as a `docker exec`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), stigmer_docker::EngineError> {
//! use std::collections::BTreeMap;
//! use stigmer_docker::{ContainerSpec, Engine, ExecRequest, StreamKind};
//! use tokio_util::sync::CancellationToken;
//!
//! let engine = Engine::connect().await?;
//! let spec = ContainerSpec::new("stigmer-sandbox-basic:local");
//! let labels = BTreeMap::from([("io.stigmer.store".to_string(), "st-1".to_string())]);
//! let id = engine.create_container(&spec, &labels, "stigmer-demo").await?;
//! let req = ExecRequest::new(["/bin/sh", "-c", "echo hi"], "/tmp/stigmer-demo.pid");
//! let outcome = engine
//!     .exec(&id, req, &mut |kind: StreamKind, bytes: &[u8]| print!("{kind:?}: {}", String::from_utf8_lossy(bytes)), CancellationToken::new())
//!     .await?;
//! assert_eq!(outcome.exit_code, Some(0));
//! engine.remove_container(&id).await?;
//! # Ok(()) }
//! ```

mod agent;
mod container;
mod egress;
mod error;
mod exec;
mod files;
mod image;
mod spec;

use std::time::Duration;

use bollard::Docker;

pub use agent::{AGENT_PATH, AGENT_PROTOCOL, LABEL_AGENT, agent_available};
pub use container::{
    ContainerState, LABEL_LEASE, LABEL_MANAGED, LABEL_OWNER, LABEL_SESSION, LABEL_SPEC_HASH,
    LABEL_STORE, LABEL_WORKER, ManagedContainer, ProcessInfo, SESSION_OWNER_PREFIX,
};
pub use egress::{
    ALLOWED_PORTS, EGRESS_MOUNT, EgressPolicy, LABEL_EGRESS, MAX_ALLOW_ENTRIES, blocked_address,
    check_allow_entry, parse_allow_list, proxy_env,
};
pub use error::EngineError;
pub use exec::{
    DEFAULT_KILL_GRACE, ExecEnd, ExecOutcome, ExecRequest, OutputChunk, StreamKind, feed_stdin,
};
pub use files::{ContainerFile, MAX_COPY_BYTES, check_container_path};
pub use image::{BuildSpec, EnsureImage, ImageHow, ImageInfo, ImageProgress};
pub use spec::{
    ContainerSpec, CredentialMount, DEFAULT_MEMORY_BYTES, DEFAULT_NANO_CPUS, DEFAULT_PIDS_LIMIT,
    DEFAULT_USER, Network, SANDBOX_UID, WORKSPACE_DIR,
};

/// Re-exported so callers can pass a token without naming the crate version themselves.
pub use tokio_util::sync::CancellationToken;

/// Where the engine listens when `DOCKER_HOST` is not set.
pub const DEFAULT_ENDPOINT: &str = "unix:///var/run/docker.sock";

/// How long [`Engine::connect`] waits for the engine to answer before giving up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection to one Docker engine. Cheap to clone (the client is shared).
#[derive(Debug, Clone)]
pub struct Engine {
    docker: Docker,
    endpoint: String,
    /// Whether new containers get the in-container agent (module `agent`), and commands go
    /// through it in containers that have one.
    agent_enabled: bool,
    agent_dir: Option<std::path::PathBuf>,
    agent_cache: std::sync::Arc<agent::AgentCache>,
    /// The egress proxies of `public` containers (module `egress`), when a directory of this
    /// host is given for their sockets.
    egress: Option<std::sync::Arc<egress::EgressProxy>>,
    /// Container id → its name, for the containers with a proxy this process has met.
    egress_names:
        std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, Option<String>>>>,
}

impl Engine {
    /// Connects to the engine named by `DOCKER_HOST`, or the local socket
    /// (`unix:///var/run/docker.sock`), and negotiates the API version (Docker 20.10 speaks
    /// 1.41). Fails with [`EngineError::Unavailable`] when nothing answers.
    pub async fn connect() -> Result<Self, EngineError> {
        let endpoint = std::env::var("DOCKER_HOST")
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string());
        Self::connect_to(&endpoint).await
    }

    /// Connects to an explicit endpoint (`unix:///…`, `tcp://…`, `http://…`).
    pub async fn connect_to(endpoint: &str) -> Result<Self, EngineError> {
        let unavailable = |reason: String| EngineError::Unavailable {
            endpoint: endpoint.to_string(),
            reason,
        };
        let docker = Docker::connect_with_host(endpoint).map_err(|e| match e {
            bollard::errors::Error::SocketNotFoundError(path) => {
                unavailable(format!("socket {path} does not exist"))
            }
            other => unavailable(other.to_string()),
        })?;
        let docker = match tokio::time::timeout(CONNECT_TIMEOUT, docker.negotiate_version()).await {
            Ok(Ok(docker)) => docker,
            Ok(Err(e)) => return Err(unavailable(e.to_string())),
            Err(_) => {
                return Err(unavailable(format!(
                    "no answer within {}s",
                    CONNECT_TIMEOUT.as_secs()
                )));
            }
        };
        Ok(Engine {
            docker,
            endpoint: endpoint.to_string(),
            agent_enabled: true,
            agent_dir: None,
            agent_cache: std::sync::Arc::default(),
            egress: None,
            egress_names: std::sync::Arc::default(),
        })
    }

    /// Turns the in-container agent on (the default) or off. Off, new containers keep
    /// `sleep infinity` and every command is a `docker exec`: slower, for an engine or image
    /// where the agent cannot run.
    #[must_use]
    pub fn with_agent(mut self, enabled: bool) -> Self {
        self.agent_enabled = enabled;
        self
    }

    /// A directory of this host (private to the worker) where the agent's binary is kept, so
    /// that new containers bind-mount it read-only instead of having it copied in. Without one,
    /// or where the engine does not see this host's files, it is copied into each container.
    #[must_use]
    pub fn with_agent_dir(mut self, dir: impl Into<std::path::PathBuf>) -> Self {
        self.agent_dir = Some(dir.into());
        self
    }

    /// A directory of this host (private to the worker) where the egress proxy's sockets live,
    /// one subdirectory per container, mounted into the containers of the `public` posture.
    /// Without one, such a container cannot be made.
    #[must_use]
    pub fn with_egress_dir(mut self, dir: impl Into<std::path::PathBuf>) -> Self {
        self.egress = Some(std::sync::Arc::new(egress::EgressProxy::new(dir.into())));
        self
    }

    /// Whether new containers get the agent: turned on, and this build carries it.
    #[must_use]
    pub fn agent_enabled(&self) -> bool {
        self.agent_enabled && agent::agent_available()
    }

    /// The endpoint this engine was reached at.
    #[must_use]
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The underlying `bollard` client, for calls this crate does not wrap.
    #[must_use]
    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    /// The engine's ID (`docker info` → `ID`): stable across daemon and worker restarts, so it
    /// keys the host-specific task queue that serves this host's containers.
    pub async fn engine_id(&self) -> Result<String, EngineError> {
        let info = self
            .docker
            .info()
            .await
            .map_err(|e| EngineError::api("could not read the Docker engine's info", e))?;
        info.id
            .filter(|id| !id.is_empty())
            .ok_or_else(|| EngineError::Unexpected("the Docker engine reported no ID".into()))
    }
}
