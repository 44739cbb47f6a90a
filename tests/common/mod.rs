//! Test harness: a private stigmer installation per test (its own data dir, Temporal ports and
//! store), driven through the real `stigmer` binary against a real Temporal dev server.
//!
//! The store is SQLite unless `STIGMER_TEST_POSTGRES_URL` names a Postgres server, in which case
//! each installation gets a fresh database on it (`.ci/run` runs the suite both ways).

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};
use stigmer_daytona::fake::FakeDaytona;

pub const BIN: &str = env!("CARGO_BIN_EXE_stigmer");

/// The binary the tests drive: [`BIN`], or `STIGMER_TEST_BIN` (how `tests/record_histories.rs`
/// records with a released binary while the tree moves on).
pub fn bin() -> std::ffi::OsString {
    std::env::var_os("STIGMER_TEST_BIN").unwrap_or_else(|| BIN.into())
}

static NEXT_PORT: AtomicU16 = AtomicU16::new(0);

/// Two free loopback ports (gRPC and UI) that no other test in this process will pick.
fn free_port_pair() -> (u16, u16) {
    if NEXT_PORT.load(Ordering::SeqCst) == 0 {
        // Spread test binaries apart by pid so parallel test processes rarely collide, and stay
        // below the kernel's ephemeral range (32768+), where servers pick their random ports.
        let base = 15000 + (std::process::id() % 150) as u16 * 100;
        let _ = NEXT_PORT.compare_exchange(0, base, Ordering::SeqCst, Ordering::SeqCst);
    }
    loop {
        let p = NEXT_PORT.fetch_add(2, Ordering::SeqCst);
        let free = |port: u16| TcpListener::bind(("127.0.0.1", port)).is_ok();
        if free(p) && free(p + 1) && free(p + 1000) {
            return (p, p + 1000);
        }
    }
}

/// A private installation: data dir, ports, store.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub ui_port: u16,
    pub database_url: String,
    pub extra: Vec<(String, String)>,
}

impl Env {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("stigmer-test-")
            .tempdir()
            .expect("temp dir");
        let (port, ui_port) = free_port_pair();
        let database_url = match std::env::var("STIGMER_TEST_POSTGRES_URL") {
            Ok(admin) if !admin.is_empty() => fresh_postgres_db(&admin),
            _ => format!("sqlite:{}", dir.path().join("data/stigmer.db").display()),
        };
        Self {
            dir,
            port,
            ui_port,
            database_url,
            extra: Vec::new(),
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// A `stigmer` command with this installation's settings and nothing of the caller's.
    pub fn cmd(&self) -> Command {
        let mut cmd = Command::new(bin());
        for var in [
            "TEMPORAL_ADDRESS",
            "STIGMER_EXECUTION_MODE",
            "MODE",
            "STIGMER_CONFIG",
            "STIGMER_DATABASE_URL",
            "DAYTONA_API_KEY",
            "DAYTONA_API_URL",
            "DAYTONA_DEV_TOOLS_SNAPSHOT_ID",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
            "OTEL_SDK_DISABLED",
            "STIGMER_CODEC_KEY_FILE",
            "STIGMER_AUDIT_SIGNING_KEY",
            "STIGMER_AUDIT_VERIFY_KEY",
        ] {
            cmd.env_remove(var);
        }
        cmd.env("STIGMER_DATA_DIR", self.data_dir())
            .env("STIGMER_TEMPORAL_PORT", self.port.to_string())
            .env("STIGMER_TEMPORAL_UI_PORT", self.ui_port.to_string())
            .env("STIGMER_DATABASE_URL", &self.database_url)
            .env("HOME", self.dir.path())
            .current_dir(self.dir.path());
        for (k, v) in &self.extra {
            cmd.env(k, v);
        }
        cmd
    }

    /// Runs `stigmer ARGS` to completion (with a deadline, so a hang fails the test).
    pub fn stigmer(&self, args: &[&str]) -> Output {
        let mut cmd = self.cmd();
        cmd.args(args);
        output_within(cmd, Duration::from_secs(120))
    }

    /// `stigmer executions show ID --output json`.
    pub fn show(&self, id: &str) -> serde_json::Value {
        let out = self.stigmer(&["executions", "show", id, "--output", "json"]);
        assert!(out.status.success(), "show failed: {}", text(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("show json")
    }

    pub fn last_execution(&self) -> serde_json::Value {
        let out = self.stigmer(&["executions", "list", "--output", "json", "--limit", "1"]);
        assert!(out.status.success(), "list failed: {}", text(&out.stderr));
        let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("list json");
        list[0].clone()
    }

    pub fn daemon_pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.data_dir().join("daemon.pid"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }

    pub fn temporal_pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.data_dir().join("temporal/temporal.pid"))
            .ok()
            .and_then(|s| s.lines().next().and_then(|l| l.trim().parse().ok()))
    }

    pub fn start_daemon(&self) {
        let out = self.stigmer(&["server", "start", "--detach"]);
        assert!(
            out.status.success(),
            "server start failed: {}",
            text(&out.stderr)
        );
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let mut cmd = self.cmd();
        cmd.args(["server", "stop"]);
        let _ = output_within(cmd, Duration::from_secs(60));
        // Whatever a test started on its own (workers, servers) is in this list.
        for (k, v) in &self.extra {
            if k == "STIGMER_TEST_KILL_PID"
                && let Ok(pid) = v.parse::<i32>()
            {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

/// Creates a fresh database on the Postgres server at `admin_url` and returns its URL.
fn fresh_postgres_db(admin_url: &str) -> String {
    let name = format!(
        "stigmer_test_{}",
        ulid::Ulid::new().to_string().to_lowercase()
    );
    let status = Command::new("psql")
        .arg(admin_url)
        .args(["-v", "ON_ERROR_STOP=1", "-q", "-c"])
        .arg(format!("CREATE DATABASE {name}"))
        .status()
        .expect("psql must be installed when STIGMER_TEST_POSTGRES_URL is set");
    assert!(status.success(), "could not create database {name}");
    let (base, _) = admin_url
        .rsplit_once('/')
        .expect("postgres URL with a database");
    format!("{base}/{name}")
}

/// Waits for a command's output, killing it if it takes longer than `limit`.
pub fn output_within(mut cmd: Command, limit: Duration) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().expect("spawn stigmer");
    wait_output(child, limit)
}

/// Runs `stigmer ARGS` with `input` on its stdin (written from a thread, then closed).
#[allow(dead_code)]
pub fn run_with_stdin(env: &Env, args: &[&str], input: Vec<u8>) -> std::process::Output {
    let mut child = env
        .cmd()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        // A command that stops reading closes the pipe early: not an error here either.
        let _ = std::io::Write::write_all(&mut stdin, &input);
    });
    let out = wait_output(child, Duration::from_secs(120));
    writer.join().unwrap();
    out
}

/// [`output_within`] with `stdin` (a file) on the command's stdin, two minutes at most.
#[allow(dead_code)]
pub fn output_within_stdin(cmd: &mut Command, stdin: std::fs::File) -> Output {
    let child = cmd
        .stdin(Stdio::from(stdin))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn stigmer");
    wait_output(child, Duration::from_secs(120))
}

pub fn wait_output(child: Child, limit: Duration) -> Output {
    let pid = child.id() as i32;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.expect("wait for stigmer"),
        Err(_) => {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            panic!(
                "command did not finish within {limit:?} (a hang: stdout kept open, or a lost execution)"
            );
        }
    }
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Polls `cond` until it holds or `limit` passes.
pub fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    cond()
}

/// Pids of processes whose command line contains `needle`.
pub fn processes_matching(needle: &str) -> Vec<i32> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let zombie = std::fs::read_to_string(entry.path().join("stat"))
            .ok()
            .and_then(|s| {
                s.rsplit_once(')')
                    .map(|(_, r)| r.trim_start().starts_with('Z'))
            })
            .unwrap_or(false);
        if cmdline.contains(needle) && !zombie {
            found.push(pid);
        }
    }
    found
}

pub fn read_proc_kb(pid: i32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

pub fn path_str(p: &Path) -> String {
    p.display().to_string()
}

// --- The scale-out deployment: a Temporal server and workers started by the test ----------

/// Kills what the test started, whatever way it ends.
pub struct Children(pub Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn start_temporal(env: &Env) -> Child {
    let temporal = std::env::var("STIGMER_TEMPORAL_BIN").unwrap_or_else(|_| "temporal".into());
    let child = Command::new(temporal)
        .args([
            "server",
            "start-dev",
            "--headless",
            "--ip",
            "127.0.0.1",
            "--log-level",
            "error",
        ])
        .args(["--port", &env.port.to_string()])
        .args([
            "--dynamic-config-value",
            "history.transferProcessorMaxPollRPS=10000",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("temporal CLI on PATH");
    let address = format!("127.0.0.1:{}", env.port);
    assert!(
        eventually(Duration::from_secs(30), || {
            Command::new(
                std::env::var("STIGMER_TEMPORAL_BIN").unwrap_or_else(|_| "temporal".into()),
            )
            .args(["workflow", "list", "--limit", "1", "--address", &address])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        }),
        "Temporal dev server did not answer"
    );
    child
}

/// Starts `stigmer worker`; its stderr goes to `worker.log` in the test's directory (appended,
/// one file for every worker of the test), for [`worker_log`] to show when a test fails.
pub fn start_worker(env: &Env) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(env.dir.path().join("worker.log"))
        .expect("worker log");
    let mut cmd = env.cmd();
    cmd.arg("worker").stdout(Stdio::null()).stderr(log);
    cmd.spawn().expect("stigmer worker")
}

/// What the test's workers wrote to stderr.
#[allow(dead_code)]
pub fn worker_log(env: &Env) -> String {
    std::fs::read_to_string(env.dir.path().join("worker.log")).unwrap_or_default()
}

pub fn remote_env() -> Env {
    let mut env = Env::new();
    env.extra
        .push(("TEMPORAL_ADDRESS".into(), format!("127.0.0.1:{}", env.port)));
    env
}

pub fn wait_terminal(env: &Env, id: &str, limit: Duration) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    let done = eventually(limit, || {
        last = env.show(id);
        !matches!(last["status"].as_str(), Some("queued") | Some("running"))
    });
    assert!(done, "execution {id} is not terminal: {last}");
    last
}

/// A free loopback port no other test in this process will pick (for servers a test starts).
pub fn free_port() -> u16 {
    free_port_pair().0
}

/// Runs one SQL statement directly against a store (SQLite or Postgres), bypassing stigmer:
/// how tests play the part of someone editing the database behind its back. Returns the number
/// of rows affected.
pub fn exec_sql(database_url: &str, statement: &str) -> u64 {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        use sqlx::Connection;
        if let Some(path) = database_url.strip_prefix("sqlite:") {
            let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{path}"))
                .await
                .expect("open the SQLite store");
            sqlx::query(statement)
                .execute(&mut conn)
                .await
                .unwrap_or_else(|e| panic!("{statement}: {e}"))
                .rows_affected()
        } else {
            let mut conn = sqlx::PgConnection::connect(database_url)
                .await
                .expect("open the Postgres store");
            sqlx::query(statement)
                .execute(&mut conn)
                .await
                .unwrap_or_else(|e| panic!("{statement}: {e}"))
                .rows_affected()
        }
    })
}

/// This installation's container leases (with `all`, removed ones too); none when its store
/// cannot be read.
pub fn leases(env: &Env, all: bool) -> Vec<serde_json::Value> {
    let mut args = vec!["leases", "list", "--output", "json"];
    if all {
        args.push("--all");
    }
    serde_json::from_slice(&env.stigmer(&args).stdout).unwrap_or_default()
}

/// Removes the containers of `leases` (`docker rm -f`), quietly.
pub fn remove_lease_containers(leases: &[serde_json::Value]) {
    for lease in leases {
        if let Some(id) = lease["container_id"].as_str() {
            let _ = Command::new("docker").args(["rm", "-f", id]).output();
        }
    }
}

/// Removes every container this installation's store leased, whatever the test did.
pub struct RemoveContainers<'a>(pub &'a Env);

impl Drop for RemoveContainers<'_> {
    fn drop(&mut self) {
        remove_lease_containers(&leases(self.0, true));
    }
}

/// `temporal workflow show --output json` of a workflow on the environment's Temporal server
/// (the CLI is `STIGMER_TEMPORAL_BIN`, else `temporal` on PATH).
#[allow(dead_code)]
pub fn workflow_history(env: &Env, workflow_id: &str) -> Output {
    let temporal = std::env::var("STIGMER_TEMPORAL_BIN").unwrap_or_else(|_| "temporal".into());
    Command::new(temporal)
        .args(["workflow", "show", "--output", "json", "--address"])
        .arg(format!("127.0.0.1:{}", env.port))
        .args(["--workflow-id", workflow_id])
        .output()
        .expect("run the temporal CLI")
}

/// The activities a workflow scheduled, in order, once it has closed (what `temporal workflow
/// show` lists as its steps).
#[allow(dead_code)]
pub fn activity_steps(env: &Env, workflow_id: &str) -> Vec<String> {
    let mut steps = Vec::new();
    let closed = eventually(Duration::from_secs(30), || {
        let out = workflow_history(env, workflow_id);
        let Ok(history) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
            return false;
        };
        let events = history["events"].as_array().cloned().unwrap_or_default();
        steps = events
            .iter()
            .filter_map(|e| {
                e["activityTaskScheduledEventAttributes"]["activityType"]["name"]
                    .as_str()
                    .map(String::from)
            })
            .collect();
        events
            .iter()
            .any(|e| e["eventType"] == "EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED")
    });
    assert!(closed, "workflow {workflow_id} did not complete");
    steps
}

/// The fake Daytona server (built from Daytona's OpenAPI description) on a runtime of its own,
/// running commands on the host.
pub struct Fake {
    pub fake: FakeDaytona,
    _runtime: tokio::runtime::Runtime,
}

pub fn start_fake() -> Fake {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let fake = runtime
        .block_on(
            FakeDaytona::builder()
                .api_key("test-key")
                .execute_on_host(true)
                .start(),
        )
        .expect("fake Daytona");
    Fake {
        fake,
        _runtime: runtime,
    }
}

/// An installation whose cloud mode talks to `fake`.
pub fn cloud_env(fake: &FakeDaytona) -> Env {
    let mut env = Env::new();
    env.extra
        .push(("DAYTONA_API_KEY".into(), "test-key".into()));
    env.extra.push(("DAYTONA_API_URL".into(), fake.api_url()));
    env.extra.push((
        "DAYTONA_DEV_TOOLS_SNAPSHOT_ID".into(),
        "stigmer-full".into(),
    ));
    env
}

/// Runs `tests/foreign/start.py` (the official Temporal Python SDK with the sample codec) against
/// the environment's Temporal: starts `input` under `workflow_id` and returns what it printed.
#[allow(dead_code)]
pub fn python_start(
    env: &Env,
    workflow_id: &str,
    input: &serde_json::Value,
    extra: &[&str],
) -> serde_json::Value {
    let key = env.stigmer(&["codec", "key", "--output", "json"]);
    assert!(key.status.success(), "{}", text(&key.stderr));
    let key: serde_json::Value = serde_json::from_slice(&key.stdout).unwrap();
    let mut cmd = std::process::Command::new("python3");
    cmd.arg(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/foreign/start.py"
    ))
    .arg(format!("127.0.0.1:{}", env.port))
    .arg(key["key_id"].as_str().unwrap())
    .arg(key["key"].as_str().unwrap())
    .arg(workflow_id)
    .arg(input.to_string())
    .args(extra);
    let out = output_within(cmd, Duration::from_secs(90));
    assert!(
        out.status.success(),
        "the Python client (scripts/test.sh installs temporalio and cryptography): {}",
        text(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out.stdout)))
}
