//! A fake Daytona: the endpoints this crate uses, served from memory, with failures on demand.
//!
//! Daytona's cloud cannot run on a test machine, so tests (this crate's, and the integration
//! tests of the crates that build on it) run against this axum server on `127.0.0.1:0`. It is
//! built from Daytona's published API descriptions (`openapi/`): the same paths and bodies, and
//! every request body it receives is validated against the description's schema for that
//! operation (recorded in [`RecordedRequest::schema_errors`], and answered with 400 unless
//! [`FakeDaytonaBuilder::reject_invalid_bodies`] is off).
//!
//! Behaviour:
//! - sandboxes go `creating` → `starting` → `started` over [`FakeDaytonaBuilder::start_delay`],
//!   unless a [`SandboxFate`] says otherwise (stuck in `starting`, `error`, `build_failed`);
//! - commands never run on the host unless the fake is built with
//!   [`FakeDaytonaBuilder::execute_on_host`]; otherwise each gets a [`ScriptedCommand`]
//!   ([`FakeDaytona::script_command`]). On the host, each sandbox has a directory of its own
//!   ([`FakeDaytona::sandbox_home`]): its commands start there with `HOME` set to it, and its
//!   file API (`files/upload`, `files/download`, `files/info`, `files/permissions`) is
//!   confined to it. Deleting a session kills what runs in it; deleting a sandbox also removes
//!   its directory;
//! - a session command's stdin is a pipe that `command/{id}/input` writes to, as Daytona's
//!   toolbox does: a newline is added to data that does not end with one, there is no end of
//!   input, and a command that has ended answers 410;
//! - session logs are served as Daytona's toolbox serves them: plain text with stream markers,
//!   JSON for clients announcing a recent SDK version, merged text otherwise, and a WebSocket
//!   follow (`?follow=true`) that closes normally when the command ends;
//! - failures are injected with [`FakeDaytona::inject`] ([`Fault`]: N × a status, 429 with
//!   `Retry-After`), [`FakeDaytona::push_sandbox_fate`], [`FakeDaytona::drop_log_streams_after`],
//!   [`FakeDaytona::set_websocket_logs`], [`FakeDaytona::set_honour_exec_timeout`]; a wrong
//!   bearer always gets 401;
//! - every request is recorded ([`FakeDaytona::requests`]) with its arrival time, body, answer
//!   and schema violations.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use stigmer_daytona::fake::{FakeDaytona, ScriptedCommand};
//! use stigmer_daytona::{Client, CreateSandbox, ExecuteCommand, WaitOptions};
//!
//! let fake = FakeDaytona::builder().start_delay(Duration::from_millis(20)).start().await?;
//! fake.script_command("make", ScriptedCommand::exit(0).stdout("built\n"));
//! let client = Client::new(fake.config())?;
//! let sandbox = client.create_sandbox(CreateSandbox::from_snapshot("dev")).await?;
//! let sandbox = client.wait_until_started(&sandbox.id, &WaitOptions::default()).await?;
//! let out = client
//!     .toolbox_for(&sandbox)?
//!     .execute(&ExecuteCommand::new("make all", Duration::from_secs(5)))
//!     .await?;
//! assert_eq!(out.result, "built\n");
//! # Ok(()) }
//! ```

mod exec;
mod routes;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};
use tokio::task::JoinHandle;

pub use exec::ScriptedCommand;
pub use routes::{Operation, classify};

use crate::config::Config;
use exec::CommandLog;

/// What becomes of the next sandbox created.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum SandboxFate {
    /// `creating` → `starting` → `started`.
    #[default]
    Start,
    /// `creating` → `starting`, forever.
    StuckStarting,
    /// `creating` → `starting` → `error`, with this `errorReason`.
    Error(String),
    /// `creating` → `build_failed`, with this `errorReason`.
    BuildFailed(String),
    /// `creating` → `starting` → this state, verbatim: `stopped`, `archived`, or one the
    /// published description does not list (the live API drifts).
    Reports(String),
}

/// A failure to answer some requests with, instead of serving them.
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use]
pub struct Fault {
    kind: FaultKind,
    times: usize,
    path_contains: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum FaultKind {
    Status(u16),
    RateLimited(Duration),
}

impl Fault {
    /// Answer the next request with `status` (and a Daytona-style JSON error body).
    pub fn status(status: u16) -> Self {
        Fault {
            kind: FaultKind::Status(status),
            times: 1,
            path_contains: None,
        }
    }

    /// Answer the next request with 429 and `Retry-After` (whole seconds, rounded up).
    pub fn rate_limited(retry_after: Duration) -> Self {
        Fault {
            kind: FaultKind::RateLimited(retry_after),
            times: 1,
            path_contains: None,
        }
    }

    /// Apply to the next `n` matching requests instead of one.
    pub fn times(mut self, n: usize) -> Self {
        self.times = n;
        self
    }

    /// Only requests whose path contains `fragment` match.
    pub fn on_path(mut self, fragment: impl Into<String>) -> Self {
        self.path_contains = Some(fragment.into());
        self
    }

    fn matches(&self, path: &str) -> bool {
        self.times > 0
            && self
                .path_contains
                .as_deref()
                .is_none_or(|fragment| path.contains(fragment))
    }
}

/// A request the fake received, with what it answered.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct RecordedRequest {
    /// HTTP method.
    pub method: String,
    /// Path, e.g. `/api/sandbox/sbx-1`.
    pub path: String,
    /// Raw query string.
    pub query: Option<String>,
    /// The OpenAPI operation matched, e.g. `createSandbox`, `ExecuteCommand`.
    pub operation: Option<&'static str>,
    /// Request headers, except `Authorization`.
    pub headers: Vec<(String, String)>,
    /// Whether the bearer matched the fake's key.
    pub authorized: bool,
    /// Whether this was a WebSocket upgrade.
    pub websocket: bool,
    /// JSON request body, if any.
    pub body: Option<Value>,
    /// Schema violations of the body (empty when valid or when the operation has no body).
    pub schema_errors: Vec<String>,
    /// Status answered; 0 while the answer is not ready, or when the client went away first.
    pub status: u16,
    /// JSON answer body, if the answer was JSON.
    pub response_body: Option<Value>,
    /// When the request arrived.
    pub received_at: Instant,
    id: u64,
}

impl RecordedRequest {
    /// A request header's value.
    #[must_use]
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Builds a [`FakeDaytona`].
#[derive(Clone, Debug)]
#[must_use]
pub struct FakeDaytonaBuilder {
    api_key: String,
    start_delay: Duration,
    execute_on_host: bool,
    max_page_size: usize,
    reject_invalid_bodies: bool,
    bind: SocketAddr,
}

impl Default for FakeDaytonaBuilder {
    fn default() -> Self {
        FakeDaytonaBuilder {
            api_key: "dtn_fake_0123456789abcdef".into(),
            start_delay: Duration::from_millis(50),
            execute_on_host: false,
            max_page_size: 100,
            reject_invalid_bodies: true,
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
        }
    }
}

impl FakeDaytonaBuilder {
    /// The bearer the fake accepts (others get 401).
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = key.into();
        self
    }

    /// How long a new sandbox takes to reach `started` (half `creating`, half `starting`).
    pub fn start_delay(mut self, delay: Duration) -> Self {
        self.start_delay = delay;
        self
    }

    /// Run unscripted commands on this machine with `/bin/sh -c`. Off by default: only tests
    /// that mean to run real processes turn it on.
    pub fn execute_on_host(mut self, on: bool) -> Self {
        self.execute_on_host = on;
        self
    }

    /// Largest page `GET /sandbox` returns, to exercise pagination.
    pub fn max_page_size(mut self, n: usize) -> Self {
        self.max_page_size = n.max(1);
        self
    }

    /// Answer 400 to request bodies that do not validate against the description (default on).
    pub fn reject_invalid_bodies(mut self, on: bool) -> Self {
        self.reject_invalid_bodies = on;
        self
    }

    /// Listen on this address instead of `127.0.0.1:0`.
    pub fn bind(mut self, addr: SocketAddr) -> Self {
        self.bind = addr;
        self
    }

    /// Binds and starts serving in a background task.
    ///
    /// # Errors
    /// When the address cannot be bound.
    pub async fn start(self) -> std::io::Result<FakeDaytona> {
        let listener = tokio::net::TcpListener::bind(self.bind).await?;
        let addr = listener.local_addr()?;
        let home_root = if self.execute_on_host {
            let root = std::env::temp_dir().join(format!(
                "fake-daytona-{}-{}",
                std::process::id(),
                addr.port()
            ));
            std::fs::create_dir_all(&root)?;
            Some(root)
        } else {
            None
        };
        let shared = Arc::new(Shared {
            home_root,
            api_key: self.api_key,
            start_delay: self.start_delay,
            execute_on_host: self.execute_on_host,
            max_page_size: self.max_page_size,
            reject_invalid_bodies: self.reject_invalid_bodies,
            base_url: format!("http://{addr}"),
            state: Mutex::new(State::default()),
        });
        let router = routes::router(shared.clone());
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, router).await {
                tracing::error!(error = %e, "fake daytona stopped serving");
            }
        });
        Ok(FakeDaytona { addr, shared, task })
    }
}

/// A running fake Daytona. Stops serving when dropped.
#[derive(Debug)]
pub struct FakeDaytona {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Drop for FakeDaytona {
    fn drop(&mut self) {
        self.task.abort();
        let commands: Vec<Arc<CommandLog>> = self
            .shared
            .lock()
            .sandboxes
            .values()
            .flat_map(|s| s.sessions.values())
            .flat_map(|s| s.commands.values().cloned())
            .collect();
        for command in commands {
            command.kill();
        }
        if let Some(root) = &self.shared.home_root {
            let _ = std::fs::remove_dir_all(root);
        }
    }
}

impl FakeDaytona {
    /// A fake with default settings.
    ///
    /// # Errors
    /// When `127.0.0.1:0` cannot be bound.
    pub async fn start() -> std::io::Result<Self> {
        FakeDaytonaBuilder::default().start().await
    }

    /// A builder.
    pub fn builder() -> FakeDaytonaBuilder {
        FakeDaytonaBuilder::default()
    }

    /// The address served.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The main API base, `http://127.0.0.1:PORT/api`.
    #[must_use]
    pub fn api_url(&self) -> String {
        format!("{}/api", self.shared.base_url)
    }

    /// The toolbox proxy base, `http://127.0.0.1:PORT/toolbox` (what sandboxes report as
    /// `toolboxProxyUrl`).
    #[must_use]
    pub fn toolbox_url(&self) -> String {
        self.shared.toolbox_url()
    }

    /// The bearer the fake accepts.
    #[must_use]
    pub fn api_key(&self) -> &str {
        &self.shared.api_key
    }

    /// A client configuration pointing at the fake, with its key and default settings.
    #[must_use]
    pub fn config(&self) -> Config {
        Config::new(self.shared.api_key.clone())
            .with_api_url(&self.api_url())
            .expect("the fake's own URL is a valid http URL")
    }

    /// Answers matching requests with a failure, `fault.times` times. Faults queue up: the
    /// first still matching a request is used.
    pub fn inject(&self, fault: Fault) {
        self.shared.lock().faults.push(fault);
    }

    /// Shorthand for `inject(Fault::status(status).times(times))`.
    pub fn fail_next(&self, times: usize, status: u16) {
        self.inject(Fault::status(status).times(times));
    }

    /// Shorthand for `inject(Fault::rate_limited(retry_after).times(times))`.
    pub fn rate_limit_next(&self, times: usize, retry_after: Duration) {
        self.inject(Fault::rate_limited(retry_after).times(times));
    }

    /// Decides the fate of the next sandbox created (fates queue up; default [`SandboxFate::Start`]).
    pub fn push_sandbox_fate(&self, fate: SandboxFate) {
        self.shared.lock().fates.push_back(fate);
    }

    /// Commands whose command line contains `pattern` get `script` (first match wins).
    pub fn script_command(&self, pattern: impl Into<String>, script: ScriptedCommand) {
        self.shared.lock().scripts.push((pattern.into(), script));
    }

    /// What commands no script matches get (when not executing on the host). Default: exit 0,
    /// no output.
    pub fn set_default_command(&self, script: ScriptedCommand) {
        self.shared.lock().default_command = script;
    }

    /// Offer (default) or refuse the WebSocket follow of session logs; refused, an upgrade gets
    /// the plain logs answer, as from a server that does not speak WebSocket.
    pub fn set_websocket_logs(&self, on: bool) {
        self.shared.lock().websocket_logs_off = !on;
    }

    /// Every log WebSocket from now on is dropped (no close frame) after sending `frames`
    /// frames, while the command still runs. `None` restores normal streams.
    pub fn drop_log_streams_after(&self, frames: Option<usize>) {
        self.shared.lock().drop_log_streams_after = frames;
    }

    /// Whether `process/execute` stops commands at the `timeout` sent (default) or ignores it,
    /// as a server that hangs would.
    pub fn set_honour_exec_timeout(&self, on: bool) {
        self.shared.lock().ignore_exec_timeout = !on;
    }

    /// All requests so far, in arrival order.
    #[must_use]
    pub fn requests(&self) -> Vec<RecordedRequest> {
        let mut all = self.shared.lock().requests.clone();
        all.sort_by_key(|r| r.received_at);
        all
    }

    /// The requests for one OpenAPI operation (e.g. `getSandbox`), in arrival order.
    #[must_use]
    pub fn requests_for(&self, operation: &str) -> Vec<RecordedRequest> {
        self.requests()
            .into_iter()
            .filter(|r| r.operation == Some(operation))
            .collect()
    }

    /// Forgets the recorded requests.
    pub fn clear_requests(&self) {
        self.shared.lock().requests.clear();
    }

    /// Ids of the sandboxes that exist (not deleted).
    #[must_use]
    pub fn sandbox_ids(&self) -> Vec<String> {
        self.shared.lock().sandboxes.keys().cloned().collect()
    }

    /// A sandbox's current state as the fake would report it.
    /// The host directory standing for sandbox `id`'s file system (its commands' `HOME`), when
    /// the fake executes on the host.
    #[must_use]
    pub fn sandbox_home(&self, id: &str) -> Option<std::path::PathBuf> {
        self.shared
            .lock()
            .sandboxes
            .get(id)
            .and_then(|s| s.home.clone())
    }

    #[must_use]
    pub fn sandbox_state(&self, id: &str) -> Option<String> {
        let state = self.shared.lock();
        state
            .sandboxes
            .get(id)
            .map(|s| s.state(self.shared.start_delay).0.to_owned())
    }
}

#[derive(Debug)]
pub(crate) struct Shared {
    /// Where the sandboxes' directories are made, when commands run on the host.
    home_root: Option<std::path::PathBuf>,
    api_key: String,
    start_delay: Duration,
    execute_on_host: bool,
    max_page_size: usize,
    reject_invalid_bodies: bool,
    base_url: String,
    state: Mutex<State>,
}

impl Shared {
    /// The state; a panic while holding the lock (a bug in a test) does not wedge the fake.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn toolbox_url(&self) -> String {
        format!("{}/toolbox", self.base_url)
    }
}

#[derive(Debug, Default)]
struct State {
    sandboxes: BTreeMap<String, FakeSandbox>,
    seq: u64,
    faults: Vec<Fault>,
    fates: VecDeque<SandboxFate>,
    scripts: Vec<(String, ScriptedCommand)>,
    default_command: ScriptedCommand,
    websocket_logs_off: bool,
    drop_log_streams_after: Option<usize>,
    ignore_exec_timeout: bool,
    requests: Vec<RecordedRequest>,
    record_seq: u64,
}

impl State {
    fn take_fault(&mut self, path: &str) -> Option<FaultKind> {
        let fault = self.faults.iter_mut().find(|f| f.matches(path))?;
        fault.times -= 1;
        let kind = fault.kind.clone();
        self.faults.retain(|f| f.times > 0);
        Some(kind)
    }

    fn next_id(&mut self, prefix: &str) -> String {
        self.seq += 1;
        format!("{prefix}-{:04}", self.seq)
    }
}

#[derive(Debug)]
struct FakeSandbox {
    id: String,
    name: String,
    snapshot: Option<String>,
    env: BTreeMap<String, String>,
    labels: BTreeMap<String, String>,
    target: String,
    cpu: u64,
    memory: u64,
    disk: u64,
    network_block_all: bool,
    network_allow_list: Option<String>,
    auto_stop_interval: i64,
    auto_delete_interval: Option<i64>,
    created: Instant,
    created_at: String,
    fate: SandboxFate,
    sessions: HashMap<String, FakeSession>,
    /// The sandbox's directory on the host (commands run on the host only).
    home: Option<std::path::PathBuf>,
}

#[derive(Debug, Default)]
struct FakeSession {
    commands: BTreeMap<String, Arc<CommandLog>>,
}

impl FakeSandbox {
    fn state(&self, delay: Duration) -> (&str, Option<&str>) {
        let elapsed = self.created.elapsed();
        let creating = elapsed < delay / 2;
        let ready = elapsed >= delay;
        match &self.fate {
            SandboxFate::Start if ready => ("started", None),
            SandboxFate::Error(reason) if ready => ("error", Some(reason)),
            SandboxFate::BuildFailed(reason) if ready || !creating => {
                ("build_failed", Some(reason))
            }
            SandboxFate::Reports(state) if ready => (state, None),
            _ if creating => ("creating", None),
            _ => ("starting", None),
        }
    }

    fn to_json(&self, shared: &Shared) -> Value {
        let (state, reason) = self.state(shared.start_delay);
        let desired = match &self.fate {
            SandboxFate::Reports(_) => "stopped",
            _ => "started",
        };
        let mut v = json!({
            "id": self.id,
            "organizationId": "fake-organization",
            "name": self.name,
            "user": "daytona",
            "env": self.env,
            "labels": self.labels,
            "public": false,
            "networkBlockAll": self.network_block_all,
            "target": self.target,
            "cpu": self.cpu,
            "gpu": 0,
            "memory": self.memory,
            "disk": self.disk,
            "state": state,
            "desiredState": desired,
            "backupState": "None",
            "autoStopInterval": self.auto_stop_interval,
            "autoArchiveInterval": 10080,
            "createdAt": self.created_at,
            "updatedAt": self.created_at,
            "toolboxProxyUrl": shared.toolbox_url(),
            // Not in the published description: the live API has fields clients do not know.
            "fakeDaytona": { "note": "undocumented field, to check clients tolerate drift" },
        });
        if let Some(snapshot) = &self.snapshot {
            v["snapshot"] = json!(snapshot);
        }
        if let Some(list) = &self.network_allow_list {
            v["networkAllowList"] = json!(list);
        }
        if let Some(d) = self.auto_delete_interval {
            v["autoDeleteInterval"] = json!(d);
        }
        if let Some(reason) = reason {
            v["errorReason"] = json!(reason);
            v["recoverable"] = json!(false);
        }
        v
    }
}

/// RFC 3339 UTC timestamp, e.g. `2026-06-01T12:00:00Z`.
fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_709_210_096); // 2024-02-29T12:34:56Z
        assert_eq!(rfc3339(t), "2024-02-29T12:34:56Z");
    }
}
