//! The daemon (`stigmer server start`) and the bare worker (`stigmer worker`).
//!
//! The daemon owns the data dir (a lock file makes it the only one), manages the embedded
//! Temporal dev server unless `TEMPORAL_ADDRESS` is set, opens the store (running migrations),
//! hosts the worker, and listens on a local socket. Because the worker lives in the same process,
//! a `run` request is started with eager workflow start and its output reaches the client
//! through the in-process hub as it is produced: no polling, and no database credentials in the
//! client.

use crate::config::Config;
use crate::metrics::MetricsServer;
use crate::ops;
use crate::protocol::{self, DaemonStatus, RunRequest, Tag};
use crate::telemetry::ExecutionSpan;
use crate::temporal_server::{self, ManagedTemporal};
use anyhow::{Context, Result, bail};
use nix::fcntl::{Flock, FlockArg};
use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use stigmer_activities::Activities;
use stigmer_activities::hub::{Hub, HubEvent};
use stigmer_activities::output::StreamKind;
use stigmer_activities::sandbox::{SandboxBackend, host_task_queue};
use stigmer_activities::stdin::StdinSource;
use stigmer_activities::store::Store;
use stigmer_workflows::{
    AgentExecution, Backend, ExecutionResult, Mode, RequestedMode, Status, StdinInput,
};
use temporalio_client::{Client, WorkflowCancelOptions};
use temporalio_sdk::{Runtime, Worker, WorkerOptions};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{UnixListener, UnixStream};

/// How often a running step's heartbeat reaches the server at most. The SDK's default (80% of
/// the heartbeat timeout, 4 s of `exec`'s 5 s) leaves a late RPC on a busy host one second
/// before the server times the attempt out and kills a healthy command; every second leaves
/// four.
const HEARTBEAT_THROTTLE: Duration = Duration::from_secs(1);

/// Creates the data dir (private to the user) and checks it can be written.
pub fn prepare_data_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| {
        format!(
            "could not create the data dir {}: set STIGMER_DATA_DIR to a writable directory",
            dir.display()
        )
    })?;
    let probe = dir.join(".write-test");
    std::fs::write(&probe, b"ok").with_context(|| {
        format!(
            "the data dir {} is not writable: fix its permissions or set STIGMER_DATA_DIR to a writable directory",
            dir.display()
        )
    })?;
    let _ = std::fs::remove_file(probe);
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    Ok(())
}

fn pid_path(cfg: &Config) -> PathBuf {
    cfg.data_dir.value.join("daemon.pid")
}

fn lock_path(cfg: &Config) -> PathBuf {
    cfg.data_dir.value.join("daemon.lock")
}

pub fn log_path(cfg: &Config) -> PathBuf {
    cfg.data_dir.value.join("daemon.log")
}

/// The pid of a live daemon for this data dir, if any.
pub fn running_pid(cfg: &Config) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(pid_path(cfg))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    // The lock, not the pid file, says whether a daemon is alive: try to take it.
    let file = File::open(lock_path(cfg)).ok()?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(_unlocked_on_drop) => None,
        Err(_) => Some(pid),
    }
}

/// Asks the daemon over its socket how it is.
pub async fn ping(cfg: &Config) -> Result<DaemonStatus> {
    let stream = UnixStream::connect(cfg.socket_path())
        .await
        .with_context(|| format!("no daemon answers at {}", cfg.socket_path().display()))?;
    let (reader, mut writer) = stream.into_split();
    protocol::write_frame(&mut writer, Tag::Ping, b"").await?;
    match protocol::Frames::new(reader).next().await? {
        Some((Tag::Pong, body)) => Ok(serde_json::from_slice(&body)?),
        other => bail!(
            "unexpected answer from the daemon: {:?}",
            other.map(|f| f.0)
        ),
    }
}

/// Starts the daemon in the background (setsid, stdio closed) and waits until it answers.
pub async fn spawn_detached(cfg: &Config, quiet: bool) -> Result<DaemonStatus> {
    prepare_data_dir(&cfg.data_dir.value)?;
    let exe = std::env::current_exe().context("could not find the stigmer executable")?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path(cfg))
        .with_context(|| format!("could not open {}", log_path(cfg).display()))?;
    let mut command = std::process::Command::new(exe);
    command.args(["server", "start"]);
    // A flag given to `server start --detach` must reach the daemon it starts.
    if let (crate::config::Source::Flag(_), Some(addr)) =
        (&cfg.metrics_addr.source, cfg.metrics_addr.value)
    {
        command.arg("--metrics-addr").arg(addr.to_string());
    }
    command
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // A session of its own: no controlling terminal, no shared process group with the caller,
    // and no inherited pipe that would keep `out=$(stigmer run …)` waiting.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut command, || {
            nix::unistd::setsid()
                .map(|_| ())
                .map_err(std::io::Error::from)
        });
    }
    let mut child = command.spawn().context("could not start the daemon")?;
    if !quiet {
        eprintln!(
            "stigmer: starting the daemon (log: {})",
            log_path(cfg).display()
        );
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        if let Ok(status) = ping(cfg).await {
            // Reap it later from nowhere: the daemon outlives us by design.
            std::thread::spawn(move || child.wait());
            return Ok(status);
        }
        if let Ok(Some(status)) = child.try_wait() {
            // Lost a race with another start, or failed: the log says which.
            if let Ok(status) = ping(cfg).await {
                return Ok(status);
            }
            let tail = std::fs::read_to_string(log_path(cfg)).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(12).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!(
                "the daemon exited ({status}) before answering; last lines of {}:\n{}",
                log_path(cfg).display(),
                tail.join("\n")
            );
        }
        if std::time::Instant::now() > deadline {
            bail!(
                "the daemon did not answer within 90 s; see {}",
                log_path(cfg).display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Stops the daemon (and with it the managed Temporal server), waiting until both are gone.
/// Returns the daemon's pid if one was running.
pub async fn stop(cfg: &Config) -> Result<Option<i32>> {
    let daemon = running_pid(cfg);
    if let Some(pid) = daemon {
        temporal_server::stop_pid(pid, Duration::from_secs(30)).await;
    }
    // A daemon killed with SIGKILL leaves its Temporal server: stop that too.
    temporal_server::stop(cfg).await;
    let _ = std::fs::remove_file(cfg.socket_path());
    Ok(daemon)
}

/// Identity of this worker process in the store and in Temporal.
fn worker_identity() -> String {
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into());
    format!("{host}-{}", std::process::id())
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into())
}

/// Everything a running worker shares with the socket handlers.
#[derive(Clone)]
struct Shared {
    cfg: Arc<Config>,
    store: Store,
    hub: Hub,
    client: Client,
    worker_id: String,
    temporal: Option<ManagedTemporal>,
    /// The Docker side of this daemon's worker, when it serves its host's queue.
    sandbox: Option<SandboxBackend>,
}

/// The Temporal workers of one stigmer process: the shared task queue (the workflow and every
/// activity not tied to a host) and, when a Docker engine answers, that host's own task queue,
/// where the image, container, exec and release steps of its containers are sent.
struct Workers {
    main: Worker,
    host: Option<Worker>,
    sandbox: SandboxBackend,
    engine_id: Option<String>,
}

impl Workers {
    fn build(
        runtime: &Runtime,
        cfg: &Config,
        client: Client,
        store: Store,
        hub: Hub,
        worker_id: &str,
        engine_id: Option<String>,
    ) -> Result<Self> {
        let sandbox = SandboxBackend::new(store.clone(), worker_id.to_string())
            .with_agent(cfg.sandbox_agent.value, cfg.data_dir.value.join("agent"))
            .with_egress_dir(cfg.sandbox_egress_dir.value.clone());
        let activities = Activities::new(
            store,
            hub,
            worker_id.to_string(),
            cfg.output_retain_bytes.value,
            sandbox.clone(),
            cfg.daytona(),
        )
        .with_admission(stigmer_activities::admit::AdmitSettings {
            default_mode: cfg.execution_mode.value,
            allowed_modes: cfg.foreign_modes.value.clone(),
            sandbox: stigmer_workflows::SandboxSpec {
                image: cfg.sandbox_image.value.clone(),
                auto_pull: cfg.sandbox_auto_pull.value,
                cleanup: cfg.sandbox_cleanup.value,
                ttl_secs: cfg.sandbox_ttl.value,
                network: cfg.sandbox_network.value,
                allow_net: if cfg.sandbox_network.value == stigmer_workflows::Network::Public {
                    cfg.sandbox_allow_net.value.clone()
                } else {
                    Vec::new()
                },
                memory_bytes: stigmer_docker::DEFAULT_MEMORY_BYTES,
                nano_cpus: stigmer_docker::DEFAULT_NANO_CPUS,
                pids_limit: stigmer_docker::DEFAULT_PIDS_LIMIT,
                ..Default::default()
            },
            cloud_snapshot: cfg.daytona_snapshot_id.value.clone(),
        })
        .with_session_seal(std::sync::Arc::new(crate::codec::SessionSeal::new(
            crate::codec::Keyring::load_or_create(&cfg.codec_key_file.value)?,
        )));
        let options = WorkerOptions::new(cfg.task_queue.value.clone())
            .register_workflow::<AgentExecution>()
            .context("could not register the AgentExecution workflow")?
            .register_activities(activities.clone())
            .graceful_shutdown_period(Duration::from_secs(5))
            .max_heartbeat_throttle_interval(HEARTBEAT_THROTTLE)
            .build();
        let main = Worker::new(runtime, client.clone(), options)
            .context("could not create the Temporal worker")?;
        let host = match &engine_id {
            Some(engine) => {
                let queue = host_task_queue(&cfg.task_queue.value, engine);
                let options = WorkerOptions::new(queue.clone())
                    .register_activities(activities)
                    .graceful_shutdown_period(Duration::from_secs(5))
                    .max_heartbeat_throttle_interval(HEARTBEAT_THROTTLE)
                    .build();
                let worker = Worker::new(runtime, client, options)
                    .context("could not create the Temporal worker for this Docker host")?;
                sandbox.serve_host_queue(queue);
                Some(worker)
            }
            None => None,
        };
        Ok(Self {
            main,
            host,
            sandbox,
            engine_id,
        })
    }

    /// What runs beside the workers, forever: liveness heartbeats and the reaper, both for
    /// this worker's identity and Docker host.
    fn upkeep(
        &self,
        store: &Store,
        worker_id: &str,
        cfg: &Config,
    ) -> impl Future<Output = ()> + use<> {
        upkeep(
            store.clone(),
            worker_id.to_string(),
            cfg.clone(),
            self.sandbox.clone(),
            self.engine_id.clone(),
        )
    }

    /// A closure that asks every worker to shut down.
    fn shutdown_handle(&self) -> impl Fn() + use<> {
        let main = self.main.shutdown_handle();
        let host = self.host.as_ref().map(Worker::shutdown_handle);
        move || {
            main();
            if let Some(host) = &host {
                host();
            }
        }
    }

    /// Runs the workers until they stop (the first error ends both).
    async fn run(&mut self) -> Result<()> {
        let main = async { self.main.run().await.context("the Temporal worker stopped") };
        let host = async {
            match self.host.as_mut() {
                Some(worker) => worker
                    .run()
                    .await
                    .context("the Temporal worker for this Docker host stopped"),
                None => Ok(()),
            }
        };
        tokio::try_join!(main, host).map(|_| ())
    }
}

/// Whether the client may have its result as soon as `exec` records it (see `handle_run`).
fn answer_at_end(request: &RunRequest, result: &ExecutionResult) -> bool {
    let ended_by_itself =
        result.error.is_none() && matches!(result.status, Status::Succeeded | Status::Failed);
    match request.effective_mode {
        Mode::Local => true,
        Mode::Sandbox => ended_by_itself,
        Mode::Cloud => false,
    }
}

/// The ID of the Docker engine on this host, when one answers within a few seconds.
async fn docker_engine_id() -> Option<String> {
    match tokio::time::timeout(Duration::from_secs(5), async {
        let engine = stigmer_docker::Engine::connect().await?;
        engine.engine_id().await
    })
    .await
    {
        Ok(Ok(id)) => Some(id),
        Ok(Err(e)) => {
            tracing::info!("no Docker engine: sandbox mode unavailable on this worker ({e})");
            None
        }
        Err(_) => {
            tracing::info!("the Docker engine did not answer in 5 s: sandbox mode unavailable");
            None
        }
    }
}

/// `stigmer server start` in the foreground: runs until SIGTERM/SIGINT.
pub async fn run_daemon(cfg: Config) -> Result<()> {
    prepare_data_dir(&cfg.data_dir.value)?;
    let lock_file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(lock_path(&cfg))
        .with_context(|| format!("could not open {}", lock_path(&cfg).display()))?;
    let _lock = match Flock::lock(lock_file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => lock,
        Err(_) => {
            let pid = std::fs::read_to_string(pid_path(&cfg)).unwrap_or_default();
            eprintln!(
                "stigmer: a daemon is already running for {} (pid {}, socket {})",
                cfg.data_dir.value.display(),
                pid.trim(),
                cfg.socket_path().display()
            );
            return Ok(());
        }
    };
    std::fs::write(pid_path(&cfg), format!("{}\n", std::process::id()))
        .with_context(|| format!("could not write {}", pid_path(&cfg).display()))?;

    let result = serve(cfg.clone()).await;
    let _ = std::fs::remove_file(cfg.socket_path());
    let _ = std::fs::remove_file(pid_path(&cfg));
    result
}

async fn serve(cfg: Config) -> Result<()> {
    let temporal = if cfg.is_remote() {
        None
    } else {
        let managed = temporal_server::ensure_running(&cfg).await?;
        eprintln!(
            "stigmer: Temporal dev server {} (pid {}) at {}; Web UI: {}",
            if managed.adopted {
                "adopted"
            } else {
                "started"
            },
            managed.pid,
            cfg.temporal_target(),
            managed.ui_url
        );
        Some(managed)
    };
    let outcome = serve_with_temporal(&cfg, temporal.clone()).await;
    if temporal.is_some() {
        temporal_server::stop(&cfg).await;
    }
    outcome
}

async fn serve_with_temporal(cfg: &Config, temporal: Option<ManagedTemporal>) -> Result<()> {
    let metrics = MetricsServer::bind(cfg).await?;
    // A bad signing key stops the start here, before anything is served.
    let signer = crate::audit::load_signer(cfg)?;
    let store = Store::open(&cfg.database_url.value, true)
        .await?
        .with_audit_signer(signer);
    let worker_id = worker_identity();
    let (client, engine_id) = tokio::join!(
        temporal_server::wait_ready(cfg, Duration::from_secs(30), None),
        docker_engine_id()
    );
    let client = client?;
    let hub = Hub::new();
    let runtime = Runtime::from_current_tokio(Default::default())
        .context("could not start the Temporal runtime")?;
    let mut workers = Workers::build(
        &runtime,
        cfg,
        client.clone(),
        store.clone(),
        hub.clone(),
        &worker_id,
        engine_id,
    )?;
    let shutdown_worker = workers.shutdown_handle();
    let upkeep = workers.upkeep(&store, &worker_id, cfg);

    let socket = cfg.socket_path();
    let _ = std::fs::remove_file(&socket);
    let listener = UnixListener::bind(&socket)
        .with_context(|| format!("could not listen on {}", socket.display()))?;
    let _ = std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600));

    let shared_temporal = temporal.clone();
    let shared = Shared {
        cfg: Arc::new(cfg.clone()),
        store: store.clone(),
        hub,
        client,
        worker_id: worker_id.clone(),
        temporal,
        sandbox: workers.host.is_some().then(|| workers.sandbox.clone()),
    };
    eprintln!(
        "stigmer: daemon {} ready on {} (store {}, task queue {})",
        std::process::id(),
        socket.display(),
        store.display_url(),
        cfg.task_queue.value
    );

    let accept = async {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let shared = shared.clone();
                    tokio::spawn(async move {
                        if let Err(e) = handle_connection(shared, stream).await {
                            tracing::debug!("client connection ended: {e:#}");
                        }
                    });
                }
                Err(e) => tracing::warn!("accept failed: {e}"),
            }
        }
    };
    let signals = async {
        wait_for_shutdown_signal().await;
        eprintln!("stigmer: shutting down");
        let _ = std::fs::remove_file(&socket);
        shutdown_worker();
    };

    // The worker future is not Send; it runs on this task beside the others.
    let supervise = async {
        match &shared_temporal {
            Some(_) => keep_temporal_up(cfg).await,
            None => std::future::pending().await,
        }
    };
    let worker_run = workers.run();
    tokio::pin!(worker_run);
    let workers_stopped = tokio::select! {
        result = &mut worker_run => result.map(|()| true)?,
        () = accept => false,
        () = upkeep => false,
        () = supervise => false,
        () = metrics.serve(store.clone()) => false,
        () = async { signals.await; std::future::pending::<()>().await } => false,
    };
    // Let the worker finish its shutdown (running activities get the grace period); a future
    // that has completed must not be polled again.
    if !workers_stopped {
        let _ = tokio::time::timeout(Duration::from_secs(15), worker_run).await;
    }
    Ok(())
}

/// `stigmer worker`: a worker alone, for an existing Temporal and store.
pub async fn run_worker(cfg: Config) -> Result<()> {
    if !cfg.is_remote() {
        bail!(
            "`stigmer worker` joins an existing Temporal cluster: set TEMPORAL_ADDRESS (and \
             STIGMER_DATABASE_URL to a shared Postgres store); for a single machine use `stigmer server start`"
        );
    }
    let metrics = MetricsServer::bind(&cfg).await?;
    // A bad signing key stops the start here, before anything is served.
    let signer = crate::audit::load_signer(&cfg)?;
    let store = Store::open(&cfg.database_url.value, true)
        .await?
        .with_audit_signer(signer);
    let worker_id = worker_identity();
    let (client, engine_id) = tokio::join!(
        temporal_server::wait_ready(&cfg, Duration::from_secs(60), None),
        docker_engine_id()
    );
    let client = client?;
    let runtime = Runtime::from_current_tokio(Default::default())
        .context("could not start the Temporal runtime")?;
    let mut workers = Workers::build(
        &runtime,
        &cfg,
        client,
        store.clone(),
        Hub::new(),
        &worker_id,
        engine_id,
    )?;
    let shutdown = workers.shutdown_handle();
    eprintln!(
        "stigmer: worker {worker_id} polling task queue {}{} on {} (store {})",
        cfg.task_queue.value,
        workers
            .sandbox
            .host_queue()
            .map(|q| format!(" and {q}"))
            .unwrap_or_default(),
        cfg.temporal_target(),
        store.display_url()
    );
    let upkeep = workers.upkeep(&store, &worker_id, &cfg);
    let worker_run = workers.run();
    tokio::pin!(worker_run);
    tokio::select! {
        result = &mut worker_run => return result,
        () = upkeep => {}
        () = metrics.serve(store.clone()) => {}
        () = wait_for_shutdown_signal() => {
            eprintln!("stigmer: worker shutting down");
            shutdown();
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(15), worker_run).await;
    Ok(())
}

/// What a worker does beside polling, forever: records its liveness, and reaps.
async fn upkeep(
    store: Store,
    worker_id: String,
    cfg: Config,
    sandbox: SandboxBackend,
    engine_id: Option<String>,
) {
    tokio::join!(
        liveness(
            store.clone(),
            worker_id,
            cfg.task_queue.value.clone(),
            engine_id
        ),
        reaper(store, sandbox, cfg.daytona(), cfg.sandbox_cleanup.value),
    );
}

/// Keeps the managed Temporal dev server up: when it dies (killed, crashed, out of memory) it
/// is started again on the same port and database file, and running executions carry on from
/// its history; the workers reconnect by themselves.
async fn keep_temporal_up(cfg: &Config) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_pid = temporal_server::recorded_server(cfg);
    loop {
        tick.tick().await;
        if let Some(pid) = temporal_server::recorded_server(cfg) {
            last_pid = Some(pid);
            continue;
        }
        // Ours: reap it so it does not linger as a zombie (not ours: nothing to reap).
        if let Some(pid) = last_pid.take() {
            let _ = nix::sys::wait::waitpid(
                nix::unistd::Pid::from_raw(pid),
                Some(nix::sys::wait::WaitPidFlag::WNOHANG),
            );
        }
        eprintln!("stigmer: the managed Temporal server is gone; starting it again");
        match temporal_server::ensure_running(cfg).await {
            Ok(managed) => {
                eprintln!(
                    "stigmer: Temporal dev server running again (pid {})",
                    managed.pid
                );
                last_pid = Some(managed.pid);
            }
            Err(e) => eprintln!("stigmer: could not start the Temporal server again: {e:#}"),
        }
    }
}

/// How often the reaper runs: 30 s, or `STIGMER_REAPER_INTERVAL_SECS` (tests shorten it to see
/// a session's TTL pass).
fn reaper_interval() -> Duration {
    std::env::var("STIGMER_REAPER_INTERVAL_SECS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|secs| *secs > 0)
        .map_or(Duration::from_secs(30), Duration::from_secs)
}

/// Reaps expired and orphaned sandbox containers and idle sessions at start and every 30 s
/// (see [`reaper_interval`]), forever. A worker
/// without a Docker engine skips quietly (local mode needs none).
async fn reaper(
    store: Store,
    sandbox: SandboxBackend,
    daytona: stigmer_activities::cloud::CloudSettings,
    cleanup: bool,
) {
    let cloud = stigmer_activities::cloud::CloudBackend::configured(
        store.clone(),
        sandbox.worker_id().into(),
        daytona.clone(),
    );
    let mut tick = tokio::time::interval(reaper_interval());
    loop {
        tick.tick().await;
        // Sessions idle past their TTL end, and their containers go (docs/sessions.md).
        match ops::session::reap_sessions(&store, &daytona).await {
            Ok(ended) if !ended.is_empty() => tracing::info!("reaper: ended sessions {ended:?}"),
            Ok(_) => {}
            Err(e) => tracing::warn!("session reaper pass failed: {e:#}"),
        }
        let pass =
            stigmer_activities::reaper::reap_all(&store, &sandbox, cloud.as_ref(), cleanup).await;
        match pass.daytona {
            Some(Ok(removed)) if !removed.is_empty() => {
                tracing::info!("reaper: deleted Daytona sandboxes {removed:?}");
            }
            Some(Err(e)) => tracing::warn!("Daytona reaper pass failed: {e}"),
            _ => {}
        }
        // Without a Docker engine (local mode needs none) there is nothing to reap there.
        match pass.docker {
            Ok(Ok(report)) if !report.is_empty() => tracing::info!("reaper: {report:?}"),
            Ok(Err(e)) => tracing::warn!("reaper pass failed: {e}"),
            _ => {}
        }
    }
}

/// Records this worker's liveness in the store every few seconds, forever.
async fn liveness(store: Store, worker_id: String, task_queue: String, engine_id: Option<String>) {
    let host = hostname();
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tick.tick().await;
        if let Err(e) = store
            .heartbeat_worker(&worker_id, &host, engine_id.as_deref(), &task_queue)
            .await
        {
            tracing::warn!("could not record worker liveness: {e}");
        }
    }
}

async fn wait_for_shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

async fn handle_connection(shared: Shared, stream: UnixStream) -> Result<()> {
    let peer = stream.peer_cred().map(|c| c.uid());
    let (reader, mut writer) = stream.into_split();
    let mut frames = protocol::Frames::new(reader);
    let Some((tag, body)) = frames.next().await? else {
        return Ok(());
    };
    match tag {
        Tag::Ping => {
            let status = DaemonStatus {
                pid: std::process::id(),
                version: env!("CARGO_PKG_VERSION").to_string(),
                temporal_address: shared.cfg.temporal_target(),
                temporal_ui: shared.temporal.as_ref().map(|t| t.ui_url.clone()),
                // The server may have been started again since (keep_temporal_up).
                temporal_pid: shared
                    .temporal
                    .as_ref()
                    .map(|t| temporal_server::recorded_server(&shared.cfg).unwrap_or(t.pid)),
                store: shared.store.display_url(),
                task_queue: shared.cfg.task_queue.value.clone(),
                worker_id: shared.worker_id.clone(),
            };
            protocol::write_json(&mut writer, Tag::Pong, &status).await
        }
        Tag::Request => {
            let mut request: RunRequest = match serde_json::from_slice(&body) {
                Ok(r) => r,
                Err(e) => {
                    let msg = format!("malformed run request: {e}");
                    return protocol::write_frame(&mut writer, Tag::Fatal, msg.as_bytes()).await;
                }
            };
            // Who ran it is who the kernel says is on the other end of the socket, not the
            // client's `$USER`, which any client can set; it also owns the containers the
            // execution may reuse (with the CI run the client names).
            match &peer {
                Ok(uid) => {
                    request.os_user = Some(user_name(*uid));
                    if let Some(spec) = request.sandbox.as_mut() {
                        spec.owner =
                            Some(crate::cli::owner_of(*uid, request.ci_identity.as_deref()));
                    }
                }
                Err(e) => tracing::warn!(
                    "could not read the socket peer's credentials ({e}); recording the user the \
                     client claims ({:?})",
                    request.os_user
                ),
            }
            if request.session.is_some()
                && let Err(msg) = session_request(&shared, &mut request, peer.as_ref().ok()).await
            {
                return protocol::write_frame(&mut writer, Tag::Fatal, msg.as_bytes()).await;
            }
            handle_run(shared, frames, writer, request).await
        }
        // A client whose connection carries a streamed stdin cancels on a connection of its own.
        Tag::Cancel => {
            let id = String::from_utf8_lossy(&body).into_owned();
            let record = match shared.store.get_execution(&id).await {
                Ok(Some(record)) => record,
                Ok(None) => {
                    let msg = format!("no execution {id}");
                    return protocol::write_frame(&mut writer, Tag::Fatal, msg.as_bytes()).await;
                }
                Err(e) => {
                    let msg = format!("could not read execution {id}: {e}");
                    return protocol::write_frame(&mut writer, Tag::Fatal, msg.as_bytes()).await;
                }
            };
            let reason = "cancelled by the client (Ctrl-C)".to_string();
            let handle = shared
                .client
                .get_workflow_handle::<AgentExecution>(record.workflow_id);
            match handle
                .cancel(WorkflowCancelOptions::builder().reason(reason).build())
                .await
            {
                Ok(()) => protocol::write_frame(&mut writer, Tag::Notice, b"cancelling").await,
                Err(e) => {
                    let msg = format!("could not cancel {id}: {e}");
                    protocol::write_frame(&mut writer, Tag::Fatal, msg.as_bytes()).await
                }
            }
        }
        other => bail!("unexpected first frame {other:?}"),
    }
}

/// Stdin read ahead of the command before the socket is read no further: a command that does
/// not read its stdin holds the client back only past this, so a Ctrl-C behind less is still
/// seen at once.
const STDIN_READ_AHEAD: usize = 8 * 1024 * 1024;

/// A streamed stdin on its way from the client's socket to the command: chunks are read ahead
/// (up to [`STDIN_READ_AHEAD`]) while the command takes them, so the socket stays read for a
/// `Cancel` and output keeps flowing whatever the command does with its stdin.
#[derive(Default)]
struct StdinRelay {
    /// To the command's `exec`; `None` once the stdin ended or the command stopped taking it.
    tx: Option<tokio::sync::mpsc::Sender<Vec<u8>>>,
    pending: std::collections::VecDeque<Vec<u8>>,
    pending_bytes: usize,
    /// The client sent the end (an empty chunk).
    ended: bool,
}

impl StdinRelay {
    fn push(&mut self, chunk: Vec<u8>) {
        if chunk.is_empty() {
            self.ended = true;
        } else if self.tx.is_some() {
            self.pending_bytes += chunk.len();
            self.pending.push_back(chunk);
        }
        self.close_when_done();
    }

    /// The sender to reserve a slot on, when a chunk waits.
    fn slot(&self) -> Option<tokio::sync::mpsc::Sender<Vec<u8>>> {
        self.tx.clone().filter(|_| !self.pending.is_empty())
    }

    /// Sends the next chunk into the reserved slot; `None`: the command's side is gone, and
    /// the rest of the stdin is dropped as it comes.
    fn deliver(&mut self, permit: Option<tokio::sync::mpsc::OwnedPermit<Vec<u8>>>) {
        match (permit, self.pending.pop_front()) {
            (Some(permit), Some(chunk)) => {
                self.pending_bytes -= chunk.len();
                permit.send(chunk);
            }
            _ => {
                self.tx = None;
                self.pending.clear();
                self.pending_bytes = 0;
            }
        }
        self.close_when_done();
    }

    fn close_when_done(&mut self) {
        if self.ended && self.pending.is_empty() {
            self.tx = None;
        }
    }

    fn accepts_more(&self) -> bool {
        self.pending_bytes < STDIN_READ_AHEAD
    }
}

/// The user name of a uid (the socket peer's, from `SO_PEERCRED`), or `uid:N` when it has no
/// name on this host.
fn user_name(uid: u32) -> String {
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        Ok(Some(user)) => user.name,
        _ => format!("uid:{uid}"),
    }
}

/// Ends the execution's span when its workflow ends, whether or not a client still follows.
fn end_span_with_workflow(shared: &Shared, id: &str, workflow_id: &str, span: ExecutionSpan) {
    if !span.is_recording() {
        return;
    }
    let outcome = ops::await_outcome(&shared.client, &shared.store, id, workflow_id);
    tokio::spawn(async move { span.end(&outcome.await) });
}

/// What `run` says when a sandbox command finds no Docker engine: nothing ran.
pub fn no_docker_message(request: &RunRequest, e: &dyn std::fmt::Display) -> String {
    let why = if request.requested_mode == RequestedMode::Auto {
        "auto mode decided this command must be isolated, so it is not run on the host"
    } else {
        "nothing was run"
    };
    format!(
        "sandbox mode needs a Docker engine and none answered ({e}); {why}. Start Docker, or use --mode local to run it on the host anyway"
    )
}

/// A sandbox run needs this host's Docker engine: the daemon's own connection when it serves
/// the host (its steps report an engine that went away since), else a fresh one.
async fn docker_missing(shared: &Shared, request: &RunRequest) -> Option<String> {
    let local_sandbox = request.effective_mode == Mode::Sandbox
        && request
            .sandbox
            .as_ref()
            .is_some_and(|s| s.backend == Backend::Docker);
    if !local_sandbox {
        return None;
    }
    let answered = match &shared.sandbox {
        Some(host) => host.engine().await.map(|_| ()).map_err(|e| e.to_string()),
        None => stigmer_docker::Engine::connect()
            .await
            .map(|_| ())
            .map_err(|e| e.to_string()),
    };
    answered.err().map(|e| no_docker_message(request, &e))
}

/// Puts a run into its session, as the store has it: only the session's creator may use it,
/// and the session, not the client, decides the mode and the sandbox (whose owner, the
/// session, gives it a container of its own).
async fn session_request(
    shared: &Shared,
    request: &mut RunRequest,
    peer: Option<&u32>,
) -> std::result::Result<(), String> {
    let id = request.session.clone().unwrap_or_default();
    let session = match shared.store.get_session(&id).await {
        Ok(Some(s)) if s.is_live() => s,
        Ok(_) => {
            return Err(format!(
                "no live session {id}; `stigmer session list` shows the live ones, `stigmer session start` starts one"
            ));
        }
        Err(e) => return Err(format!("could not read session {id}: {e}")),
    };
    let caller = peer.map(|uid| ops::session::creator_of(*uid));
    if caller.as_deref().is_some_and(|c| c != session.creator) {
        return Err(format!(
            "session {id} belongs to {}; only who started it may run commands in it",
            session.creator
        ));
    }
    if request.effective_mode != session.run_mode() {
        return Err(format!(
            "session {id} runs its commands in {} mode; the session decides the mode",
            session.mode
        ));
    }
    request.sandbox =
        ops::session::session_spec(&session).map_err(|e| format!("session {id}: {e:#}"))?;
    Ok(())
}

/// Takes the session for execution `id`: at once, or (without `--no-wait`) once its command
/// ends. Says on the client's stderr what it waits for, and gives up when the client goes away
/// or cancels: nothing was started. Returns the stdin the client streamed meanwhile.
async fn take_session(
    shared: &Shared,
    frames: &mut protocol::Frames<OwnedReadHalf>,
    writer: &mut OwnedWriteHalf,
    request: &RunRequest,
    id: &str,
) -> std::result::Result<Vec<Vec<u8>>, String> {
    let session = request.session.as_deref().unwrap_or_default();
    let mut told = false;
    let mut stdin = Vec::new();
    let mut stdin_bytes = 0;
    loop {
        match shared.store.try_acquire_session(session, id).await {
            Ok(true) => return Ok(stdin),
            Ok(false) => {}
            Err(e) => return Err(format!("could not take session {session}: {e}")),
        }
        let current = match shared.store.get_session(session).await {
            Ok(Some(s)) if s.is_live() => s,
            Ok(_) => {
                return Err(format!(
                    "session {session} ended; `stigmer session start` starts a new one"
                ));
            }
            Err(e) => return Err(format!("could not read session {session}: {e}")),
        };
        let holder = current.busy.as_deref().unwrap_or("another command");
        if request.no_wait {
            return Err(format!(
                "session {session} is busy: execution {holder} is running in it (one command at \
                 a time); run again without --no-wait to wait for it, or `stigmer logs -f \
                 {holder}` to follow it"
            ));
        }
        if !told {
            told = true;
            let msg =
                format!("session {session} is busy with execution {holder}; waiting for it to end");
            let _ = protocol::write_frame(writer, Tag::Notice, msg.as_bytes()).await;
        }
        let pause = tokio::time::sleep(Duration::from_millis(200));
        tokio::pin!(pause);
        loop {
            tokio::select! {
                () = &mut pause => break,
                frame = frames.next(), if stdin_bytes < STDIN_READ_AHEAD => match frame {
                    Ok(Some((Tag::Stdin, chunk))) => {
                        stdin_bytes += chunk.len();
                        stdin.push(chunk);
                    }
                    Ok(Some((Tag::Cancel, _))) | Ok(None) | Err(_) => {
                        return Err("cancelled while waiting for the session; nothing ran".into());
                    }
                    Ok(Some(_)) => {}
                },
            }
        }
    }
}

async fn handle_run(
    shared: Shared,
    mut frames: protocol::Frames<OwnedReadHalf>,
    mut writer: OwnedWriteHalf,
    request: RunRequest,
) -> Result<()> {
    if let Some(msg) = docker_missing(&shared, &request).await {
        return protocol::write_frame(&mut writer, Tag::Fatal, msg.as_bytes()).await;
    }
    // With eager start the exec activity can print before start_workflow returns, so the
    // subscription exists before the workflow does.
    let id = ops::new_execution_id();
    let early_stdin = if request.session.is_some() {
        match take_session(&shared, &mut frames, &mut writer, &request, &id).await {
            Ok(chunks) => chunks,
            Err(msg) => {
                return protocol::write_frame(&mut writer, Tag::Fatal, msg.as_bytes()).await;
            }
        }
    } else {
        Vec::new()
    };
    let mut events = shared.hub.subscribe(&id);
    let mut stdin = StdinRelay::default();
    if request.follow && request.stdin == Some(StdinInput::Streamed) {
        let (tx, source) = StdinSource::channel();
        shared.hub.offer_stdin(&id, source);
        stdin.tx = Some(tx);
    }
    for chunk in early_stdin {
        stdin.push(chunk);
    }
    let started = ops::start_execution(
        &shared.store,
        &shared.client,
        &shared.cfg.task_queue.value,
        &request,
        true,
        id.clone(),
        shared.sandbox.as_ref(),
    )
    .await;
    let started = match started {
        Ok((_, started, span)) => {
            end_span_with_workflow(&shared, &id, &started.workflow_id, span);
            started
        }
        Err(e) => {
            shared.hub.unsubscribe(&id);
            // Nothing runs: the session is free for the next command.
            let _ = shared.store.release_session(&id).await;
            let msg = format!("{e:#}");
            return protocol::write_frame(&mut writer, Tag::Fatal, msg.as_bytes()).await;
        }
    };
    protocol::write_json(&mut writer, Tag::Started, &started).await?;
    if !request.follow {
        shared.hub.unsubscribe(&id);
        return Ok(());
    }

    let handle = shared
        .client
        .get_workflow_handle::<AgentExecution>(started.workflow_id.clone());
    let mut workflow_result = Box::pin(ops::await_outcome(
        &shared.client,
        &shared.store,
        &id,
        &started.workflow_id,
    ));

    let mut cancel_sent = false;
    loop {
        let slot = stdin.slot();
        tokio::select! {
            permit = async move {
                match slot {
                    Some(tx) => tx.reserve_owned().await.ok(),
                    None => std::future::pending().await,
                }
            } => stdin.deliver(permit),
            event = events.recv() => match event {
                Some(HubEvent::Output { stream, data }) => {
                    let tag = match stream { StreamKind::Stdout => Tag::Stdout, StreamKind::Stderr => Tag::Stderr };
                    if protocol::write_frame(&mut writer, tag, &data).await.is_err() {
                        break;
                    }
                }
                Some(HubEvent::Notice(text)) => {
                    let _ = protocol::write_frame(&mut writer, Tag::Notice, text.as_bytes()).await;
                }
                // The result is final once recorded. A sandbox container that may be reused was
                // already given back by `exec` when its command ended cleanly, so the next run
                // finds it idle; one that is not reused (TTL 0, tainted) is removed by the
                // workflow's release after the answer, as an expired one is by the reaper. A
                // timed-out or cancelled run, and cloud, wait for the release: their command is
                // stopped only once it has run.
                Some(HubEvent::Ended(result)) if answer_at_end(&request, &result) => {
                    let _ = protocol::write_json(&mut writer, Tag::Result, &result).await;
                    break;
                }
                Some(HubEvent::Ended(_)) => {}
                None => break,
            },
            frame = frames.next(), if stdin.accepts_more() => match frame {
                Ok(Some((Tag::Stdin, chunk))) => stdin.push(chunk),
                Ok(Some((Tag::Cancel, _))) if !cancel_sent => {
                    cancel_sent = true;
                    let reason = "cancelled by the client (Ctrl-C)".to_string();
                    if let Err(e) = handle.cancel(WorkflowCancelOptions::builder().reason(reason).build()).await {
                        let msg = format!("could not cancel {id}: {e}");
                        let _ = protocol::write_frame(&mut writer, Tag::Notice, msg.as_bytes()).await;
                    }
                }
                Ok(Some(_)) => {}
                // The client went away without cancelling: the execution carries on (durable);
                // its output stays in the store for `stigmer logs`.
                Ok(None) | Err(_) => break,
            },
            result = &mut workflow_result => {
                // Drain what the hub still holds before the result.
                while let Ok(event) = events.try_recv() {
                    if let HubEvent::Output { stream, data } = event {
                        let tag = match stream { StreamKind::Stdout => Tag::Stdout, StreamKind::Stderr => Tag::Stderr };
                        let _ = protocol::write_frame(&mut writer, tag, &data).await;
                    }
                }
                let _ = protocol::write_json(&mut writer, Tag::Result, &result).await;
                break;
            }
        }
    }
    shared.hub.unsubscribe(&id);
    Ok(())
}
