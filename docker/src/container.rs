//! Sandbox containers: create (hardened, labelled, kept alive), inspect, list, stop, remove.
//!
//! A sandbox container runs nothing of its own but a keep-alive holding it up between
//! executions so that it can be reused within its TTL: the agent (module `agent`) as PID 1,
//! which also runs the commands and reaps orphans, or, where the agent cannot run, `sleep
//! infinity` under `docker-init` (which reaps), with commands as execs ([`crate::exec`]). Every container carries the
//! `io.stigmer.*` labels, so that a crash at any instant leaves something the reaper can find,
//! and a reaper only ever lists (and so only ever removes) its own store's containers.
//!
//! Removing and stopping are idempotent: "not found" is success, because the reaper and a
//! release may race for the same container, and a retried activity must not fail on its own
//! earlier success.

use std::collections::{BTreeMap, HashMap};

use bollard::models::{ContainerCreateBody, HostConfig, HostConfigLogConfig, Mount, MountType};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ListContainersOptionsBuilder, RemoveContainerOptionsBuilder,
    StopContainerOptionsBuilder,
};

use crate::agent::{AGENT_PATH, AGENT_PROTOCOL, LABEL_AGENT};
use crate::egress::{EGRESS_MOUNT, proxy_env};
use crate::error::status_of;
use crate::spec::WORKSPACE_DIR;
use crate::{ContainerSpec, Engine, EngineError};

/// Label present (`true`) on every container this crate creates.
pub const LABEL_MANAGED: &str = "io.stigmer.managed";
/// Label naming the store (installation) that owns the container.
pub const LABEL_STORE: &str = "io.stigmer.store";
/// Label naming the lease row the container belongs to.
pub const LABEL_LEASE: &str = "io.stigmer.lease";
/// Label naming the worker that created the container.
pub const LABEL_WORKER: &str = "io.stigmer.worker";
/// Label carrying [`ContainerSpec::spec_hash`], set by [`Engine::create_container`].
pub const LABEL_SPEC_HASH: &str = "io.stigmer.spec-hash";
/// Label: the owner a container is reused for (absent: shared by its spec).
pub const LABEL_OWNER: &str = "io.stigmer.owner";
/// Label naming the session a container belongs to (its owner is `session:<id>`): `session end`
/// and the session reaper find the container by it.
pub const LABEL_SESSION: &str = "io.stigmer.session";
/// The owner prefix of a session's own container.
pub const SESSION_OWNER_PREFIX: &str = "session:";

/// How long a stop waits for the keep-alive to exit before the engine kills it.
const STOP_GRACE_SECS: i32 = 5;

/// A container found by [`Engine::list_managed`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagedContainer {
    /// Full 64-hex container id.
    pub id: String,
    /// Container name, without the leading `/`.
    pub name: String,
    /// Image the container was created from, as given at creation.
    pub image: String,
    /// All labels of the container.
    pub labels: BTreeMap<String, String>,
    /// Docker's state: `created`, `running`, `exited`, `dead`, `removing`, …
    pub state: String,
    /// Creation time, seconds since the Unix epoch.
    pub created: i64,
}

impl ManagedContainer {
    /// Whether Docker reports the container as running.
    #[must_use]
    pub fn is_running(&self) -> bool {
        self.state == "running"
    }
}

/// What [`Engine::container_state`] reports about an existing container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerState {
    /// Docker's status: `created`, `running`, `exited`, …
    pub status: String,
    /// Whether the container is running.
    pub running: bool,
    /// Whether the kernel's OOM killer killed a process of the container at some point.
    /// Sticky for the container's life; per-exec OOM is reported by [`crate::ExecOutcome`].
    pub oom_killed: bool,
    /// Exit code of the container's main process, when it has exited.
    pub exit_code: Option<i64>,
    /// Start time (RFC 3339), when started.
    pub started_at: Option<String>,
    /// Finish time (RFC 3339), when finished.
    pub finished_at: Option<String>,
    /// All labels of the container.
    pub labels: BTreeMap<String, String>,
    /// The id (`sha256:…`) of the image it was created from.
    pub image_id: Option<String>,
}

/// One process of a container, as the engine's `top` reports it (host pids).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessInfo {
    /// Process id in the host's pid namespace.
    pub pid: String,
    /// User the process runs as (name or uid, as the host's `ps` shows it).
    pub user: String,
    /// Command line.
    pub command: String,
}

impl Engine {
    /// Creates and starts a sandbox container named `name` from `spec`, labelled with
    /// `io.stigmer.managed=true`, the spec hash and the caller's `labels` (store, lease,
    /// worker). Returns the full 64-hex id.
    ///
    /// Hardening is not optional: the caller's user (non-root), all capabilities dropped,
    /// `no-new-privileges`, the container's own network namespace (bridge or none), memory
    /// without swap, CPU and pids limits, a reaping PID 1 (the agent, or `docker-init`), a private IPC namespace, an
    /// empty environment apart from the image's own, and no mount that exposes the Docker socket.
    ///
    /// Idempotent per name: if a container of that name already exists with the same labels
    /// and spec hash (a retried create after a crash), it is started if needed and its id
    /// returned. If starting a new container fails, it is removed again.
    pub async fn create_container(
        &self,
        spec: &ContainerSpec,
        labels: &BTreeMap<String, String>,
        name: &str,
    ) -> Result<String, EngineError> {
        spec.validate()?;
        let spec_hash = spec.spec_hash();
        let mut all_labels: HashMap<String, String> =
            labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        all_labels.insert(LABEL_MANAGED.into(), "true".into());
        all_labels.insert(LABEL_SPEC_HASH.into(), spec_hash.clone());
        if let Some(owner) = &spec.owner {
            all_labels.insert(LABEL_OWNER.into(), owner.clone());
            if let Some(session) = owner.strip_prefix(SESSION_OWNER_PREFIX) {
                all_labels.insert(LABEL_SESSION.into(), session.to_string());
            }
        }

        let mut agent = !spec.readonly_rootfs && self.agent_fits(&spec.image).await;
        let mut mount = if agent {
            self.agent_mount_source()
        } else {
            None
        };
        let egress = self.egress_for_new(spec, name, agent, &mut all_labels)?;
        let made = match self
            .create_stopped(
                spec,
                &all_labels,
                name,
                agent,
                mount.as_deref(),
                egress.as_deref(),
            )
            .await
        {
            Err(EngineError::Api { source, .. })
                if status_of(&source) == Some(400)
                    && egress
                        .as_deref()
                        .is_some_and(|d| source.to_string().contains(&*d.to_string_lossy())) =>
            {
                self.forget_egress(name);
                return Err(EngineError::InvalidSpec(format!(
                    "the public network posture mounts the worker's egress proxy into the \
                     container, and this engine ({}) does not see the worker's files: set \
                     STIGMER_SANDBOX_NETWORK (or --network) to none or bridge for a remote \
                     engine ({source})",
                    self.endpoint()
                )));
            }
            Err(EngineError::Api { source, .. })
                if status_of(&source) == Some(400)
                    && mount
                        .as_deref()
                        .is_some_and(|m| source.to_string().contains(&*m.to_string_lossy())) =>
            {
                // The engine does not see this host's files: copy the agent in instead.
                self.agent_bind_refused(&source.to_string());
                mount = None;
                self.create_stopped(spec, &all_labels, name, agent, None, egress.as_deref())
                    .await?
            }
            other => other?,
        };
        let egress_name = egress.as_ref().map(|_| name);
        let mut id = match made {
            Created::New(id) => id,
            Created::Adopted(id) => {
                self.note_egress(&id, egress_name);
                return Ok(id);
            }
        };
        if agent
            && mount.is_none()
            && let Err(e) = self.install_agent(&id).await
        {
            // This container cannot hold the agent: make it again without.
            tracing::warn!(container = %id, error = %e, "could not install the agent; commands go through docker exec");
            self.remove_container(&id).await?;
            if egress.is_some() {
                self.forget_egress(name);
                return Err(EngineError::InvalidSpec(format!(
                    "the public network posture needs the sandbox agent in the container (it \
                     forwards the proxy), and it could not be installed ({e}): choose --network \
                     none or bridge for this image"
                )));
            }
            agent = false;
            id = match self
                .create_stopped(spec, &all_labels, name, false, None, None)
                .await?
            {
                Created::New(id) => id,
                Created::Adopted(id) => return Ok(id),
            };
        }
        self.note_agent(&id, agent);
        self.note_egress(&id, egress_name);
        if let Err(e) = self.docker.start_container(&id, None).await {
            let err = EngineError::api(
                format!(
                    "could not start container {name} ({id}) from image {}",
                    spec.image
                ),
                e,
            );
            if let Err(cleanup) = self.remove_container(&id).await {
                tracing::warn!(container = %id, error = %cleanup, "could not remove a container that failed to start");
            }
            return Err(err);
        }
        tracing::debug!(container = %id, name, spec_hash, agent, "sandbox container started");
        Ok(id)
    }

    /// Creates the container (not started), or adopts an existing one of that name that is ours.
    async fn create_stopped(
        &self,
        spec: &ContainerSpec,
        all_labels: &HashMap<String, String>,
        name: &str,
        agent: bool,
        agent_mount: Option<&std::path::Path>,
        egress_dir: Option<&std::path::Path>,
    ) -> Result<Created, EngineError> {
        let mut labels = all_labels.clone();
        if agent {
            labels.insert(LABEL_AGENT.into(), AGENT_PROTOCOL.into());
        }
        let body = container_body(spec, labels, agent, agent_mount, egress_dir);
        let options = CreateContainerOptionsBuilder::new().name(name).build();
        match self.docker.create_container(Some(options), body).await {
            Ok(created) => Ok(Created::New(created.id)),
            Err(e) if status_of(&e) == Some(409) => self
                .adopt_existing(name, all_labels, e)
                .await
                .map(Created::Adopted),
            Err(e) if status_of(&e) == Some(404) => Err(EngineError::ImageMissing {
                image: spec.image.clone(),
                detail: format!(" (creating container {name}: {e})"),
            }),
            Err(e) => Err(EngineError::api(
                format!(
                    "could not create container {name} from image {}",
                    spec.image
                ),
                e,
            )),
        }
    }

    /// A create hit a name conflict: take over the existing container if it is ours (same
    /// labels, same spec), else report the conflict.
    async fn adopt_existing(
        &self,
        name: &str,
        labels: &HashMap<String, String>,
        conflict: bollard::errors::Error,
    ) -> Result<String, EngineError> {
        let existing = self
            .docker
            .inspect_container(name, None)
            .await
            .map_err(|e| {
                EngineError::api(format!("could not inspect existing container {name}"), e)
            })?;
        let existing_labels = existing
            .config
            .as_ref()
            .and_then(|c| c.labels.clone())
            .unwrap_or_default();
        let same = labels
            .iter()
            .all(|(k, v)| existing_labels.get(k) == Some(v));
        let id = existing.id.unwrap_or_default();
        if !same || id.is_empty() {
            return Err(EngineError::api(
                format!("could not create container {name}: another container has that name"),
                conflict,
            ));
        }
        let running = existing
            .state
            .as_ref()
            .and_then(|s| s.running)
            .unwrap_or(false);
        let agent = existing_labels.get(LABEL_AGENT).map(String::as_str) == Some(AGENT_PROTOCOL);
        if !running {
            let mounted = existing
                .mounts
                .iter()
                .flatten()
                .any(|m| m.destination.as_deref() == Some(AGENT_PATH));
            if agent && !mounted {
                // It may have been made but not yet given its agent when its creator died.
                self.install_agent(&id).await?;
            }
            self.docker.start_container(&id, None).await.map_err(|e| {
                EngineError::api(
                    format!("could not start existing container {name} ({id})"),
                    e,
                )
            })?;
        }
        self.note_agent(&id, agent);
        Ok(id)
    }

    /// Stops a container (SIGTERM to its init, SIGKILL after 5 s) and keeps it for inspection.
    /// A container that does not exist or is already stopped is fine.
    pub async fn stop_container(&self, id: &str) -> Result<(), EngineError> {
        let options = StopContainerOptionsBuilder::new()
            .t(STOP_GRACE_SECS)
            .build();
        match self.docker.stop_container(id, Some(options)).await {
            Ok(()) => Ok(()),
            Err(e) if matches!(status_of(&e), Some(404 | 304)) => Ok(()),
            Err(e) => Err(EngineError::api(
                format!("could not stop container {id}"),
                e,
            )),
        }
    }

    /// Removes a container with force (killing whatever runs in it) and its anonymous volumes.
    /// A container that does not exist, or whose removal is already under way, is fine.
    pub async fn remove_container(&self, id: &str) -> Result<(), EngineError> {
        let options = RemoveContainerOptionsBuilder::new()
            .force(true)
            .v(true)
            .build();
        let removed = self.docker.remove_container(id, Some(options)).await;
        if removed.is_ok() || removed.as_ref().is_err_and(|e| status_of(e) == Some(404)) {
            self.forget_egress_of(id);
        }
        match removed {
            Ok(()) => Ok(()),
            Err(e) if status_of(&e) == Some(404) => Ok(()),
            Err(e)
                if status_of(&e) == Some(409) && e.to_string().contains("already in progress") =>
            {
                Ok(())
            }
            Err(e) => Err(EngineError::api(
                format!("could not remove container {id}"),
                e,
            )),
        }
    }

    /// How many processes run in the container besides its init and the keep-alive (the agent
    /// or `sleep infinity`) that holds it up: anything else after a command ended is a leftover of that command. One
    /// Engine API call (the engine lists the container's processes itself), about half the cost
    /// of an exec that looks from inside.
    ///
    /// When the engine runs on this host and its cgroup file system is visible here, the
    /// container's `pids.current` is read first: 2 (init and the keep-alive) means nothing else
    /// runs, at the cost of a file read. Any other count, or no such file (a remote engine, a
    /// worker in a container), asks the engine.
    pub async fn processes_besides_keepalive(&self, id: &str) -> Result<usize, EngineError> {
        // Only containers without the agent come here: docker-init and `sleep infinity`.
        if pids_current_on_this_host(id) == Some(2) {
            return Ok(0);
        }
        let top = self
            .docker
            .top_processes(id, None::<bollard::query_parameters::TopOptions>)
            .await
            .map_err(|e| EngineError::api(format!("could not list the processes of {id}"), e))?;
        let titles = top.titles.unwrap_or_default();
        let Some(cmd) = titles.iter().position(|t| t == "CMD" || t == "COMMAND") else {
            return Err(EngineError::Unexpected(format!(
                "the process list of {id} has no command column: {titles:?}"
            )));
        };
        Ok(top
            .processes
            .unwrap_or_default()
            .iter()
            .filter_map(|row| row.get(cmd))
            .filter(|c| {
                !(c.starts_with("/sbin/docker-init")
                    || c.as_str() == "sleep infinity"
                    || c.as_str() == AGENT_PATH)
            })
            .count())
    }

    /// Every container (running or not) labelled `io.stigmer.managed=true` and
    /// `io.stigmer.store=<store_id>`: what this store's reaper may touch, and nothing else.
    pub async fn list_managed(&self, store_id: &str) -> Result<Vec<ManagedContainer>, EngineError> {
        let filters = HashMap::from([(
            "label",
            vec![
                format!("{LABEL_MANAGED}=true"),
                format!("{LABEL_STORE}={store_id}"),
            ],
        )]);
        let options = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        let list = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(|e| {
                EngineError::api(
                    format!("could not list the containers of store {store_id}"),
                    e,
                )
            })?;
        Ok(list
            .into_iter()
            .filter_map(|c| {
                let id = c.id?;
                let name = c
                    .names
                    .and_then(|n| n.into_iter().next())
                    .map(|n| n.trim_start_matches('/').to_string())
                    .unwrap_or_default();
                let state = c.state.map(|s| s.to_string()).unwrap_or_default();
                Some(ManagedContainer {
                    id,
                    name,
                    image: c.image.unwrap_or_default(),
                    labels: c.labels.unwrap_or_default().into_iter().collect(),
                    state,
                    created: c.created.unwrap_or_default(),
                })
            })
            .collect())
    }

    /// The state of a container, or `None` when it does not exist (Docker is the truth about
    /// what exists).
    pub async fn container_state(&self, id: &str) -> Result<Option<ContainerState>, EngineError> {
        let inspect = match self.docker.inspect_container(id, None).await {
            Ok(i) => i,
            Err(e) if status_of(&e) == Some(404) => return Ok(None),
            Err(e) => {
                return Err(EngineError::api(
                    format!("could not inspect container {id}"),
                    e,
                ));
            }
        };
        let state = inspect.state.unwrap_or_default();
        let running = state.running.unwrap_or(false);
        let image_id = inspect.image;
        Ok(Some(ContainerState {
            status: state.status.map(|s| s.to_string()).unwrap_or_default(),
            running,
            oom_killed: state.oom_killed.unwrap_or(false),
            exit_code: if running { None } else { state.exit_code },
            started_at: state.started_at.filter(|t| !t.starts_with("0001-")),
            finished_at: state.finished_at.filter(|t| !t.starts_with("0001-")),
            labels: inspect
                .config
                .and_then(|c| c.labels)
                .unwrap_or_default()
                .into_iter()
                .collect(),
            image_id,
        }))
    }

    /// The processes of a running container as the engine sees them (`docker top`). Works
    /// whatever the image contains, so it can tell whether anything of an execution is left.
    pub async fn processes(&self, id: &str) -> Result<Vec<ProcessInfo>, EngineError> {
        let top = self.docker.top_processes(id, None).await.map_err(|e| {
            EngineError::api(format!("could not list processes of container {id}"), e)
        })?;
        let titles = top.titles.unwrap_or_default();
        let col = |name: &str| titles.iter().position(|t| t == name);
        let (pid, user, cmd) = (
            col("PID"),
            col("UID").or(col("USER")),
            col("CMD").or(col("COMMAND")),
        );
        Ok(top
            .processes
            .unwrap_or_default()
            .into_iter()
            .map(|row| {
                let get =
                    |i: Option<usize>| i.and_then(|i| row.get(i)).cloned().unwrap_or_default();
                ProcessInfo {
                    pid: get(pid),
                    user: get(user),
                    command: get(cmd),
                }
            })
            .collect())
    }
}

/// What [`Engine::create_stopped`] found or made.
enum Created {
    New(String),
    /// A container of that name and labels existed (a retried create), now running.
    Adopted(String),
}

/// The create request: the hardened defaults plus what the spec chooses. With `agent`, the
/// keep-alive is the agent, reading requests from the container's stdin; its stdout carries the
/// commands' output, which no log driver keeps.
fn container_body(
    spec: &ContainerSpec,
    labels: HashMap<String, String>,
    agent: bool,
    agent_mount: Option<&std::path::Path>,
    egress_dir: Option<&std::path::Path>,
) -> ContainerCreateBody {
    let mut mounts = Vec::new();
    if let Some(source) = agent_mount {
        mounts.push(bind(source, AGENT_PATH, true));
    }
    if let Some(dir) = egress_dir {
        mounts.push(bind(dir, EGRESS_MOUNT, true));
    }
    if let Some(ws) = &spec.workspace {
        mounts.push(bind(ws, WORKSPACE_DIR, false));
    }
    for m in &spec.credential_mounts {
        mounts.push(bind(&m.source, &m.target, true));
    }
    let tmpfs = spec.readonly_rootfs.then(|| {
        HashMap::from([(
            "/tmp".to_string(),
            "rw,nosuid,nodev,size=512m,mode=1777".to_string(),
        )])
    });
    let host_config = HostConfig {
        // The agent is PID 1 itself (it reaps orphans); `sleep infinity` needs docker-init.
        init: Some(!agent),
        cap_drop: Some(vec!["ALL".into()]),
        cap_add: Some(vec![]),
        security_opt: Some(vec!["no-new-privileges".into()]),
        privileged: Some(false),
        network_mode: Some(spec.network.as_docker_mode().into()),
        ipc_mode: Some("private".into()),
        memory: Some(spec.memory_bytes),
        memory_swap: Some(spec.memory_bytes),
        nano_cpus: Some(spec.nano_cpus),
        pids_limit: Some(spec.pids_limit),
        oom_kill_disable: Some(false),
        readonly_rootfs: Some(spec.readonly_rootfs),
        tmpfs,
        mounts: Some(mounts),
        auto_remove: Some(false),
        log_config: agent.then(|| HostConfigLogConfig {
            typ: Some("none".into()),
            config: None,
        }),
        ..Default::default()
    };
    let keepalive = if agent {
        vec![AGENT_PATH.to_string()]
    } else {
        vec!["sleep".into(), "infinity".into()]
    };
    ContainerCreateBody {
        image: Some(spec.image.clone()),
        user: Some(spec.user.clone()),
        // The keep-alive holds the container up: the agent as PID 1, or `sleep infinity` under
        // docker-init.
        cmd: Some(keepalive),
        entrypoint: Some(vec![]),
        // Nothing of the worker's environment; with the proxy, the variables that lead to it.
        env: Some(if egress_dir.is_some() {
            proxy_env()
        } else {
            vec![]
        }),
        working_dir: Some(WORKSPACE_DIR.into()),
        labels: Some(labels),
        tty: Some(false),
        open_stdin: Some(agent),
        stdin_once: Some(false),
        attach_stdin: Some(false),
        attach_stdout: Some(false),
        attach_stderr: Some(false),
        network_disabled: Some(false),
        host_config: Some(host_config),
        ..Default::default()
    }
}

fn bind(source: &std::path::Path, target: &str, read_only: bool) -> Mount {
    Mount {
        typ: Some(MountType::BIND),
        source: Some(source.to_string_lossy().into_owned()),
        target: Some(target.to_string()),
        read_only: Some(read_only),
        ..Default::default()
    }
}

/// The container's task count from its pids cgroup, where this host's cgroup file system has it
/// (cgroup v1 or v2, cgroupfs or systemd driver); `None` otherwise.
fn pids_current_on_this_host(id: &str) -> Option<u64> {
    if id.len() != 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    [
        format!("/sys/fs/cgroup/pids/docker/{id}/pids.current"),
        format!("/sys/fs/cgroup/pids/system.slice/docker-{id}.scope/pids.current"),
        format!("/sys/fs/cgroup/system.slice/docker-{id}.scope/pids.current"),
        format!("/sys/fs/cgroup/docker/{id}/pids.current"),
    ]
    .iter()
    .find_map(|path| std::fs::read_to_string(path).ok())
    .and_then(|text| text.trim().parse().ok())
}
