//! Request and result types of an agent execution. They travel through Temporal history, so they
//! carry no secrets: environment values stay in the store and the history holds only their names.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Where the user asked a command to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RequestedMode {
    Local,
    Sandbox,
    Auto,
    Cloud,
}

impl RequestedMode {
    pub const ALLOWED: &'static str = "local, sandbox, auto, cloud";

    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Sandbox => "sandbox",
            Self::Auto => "auto",
            Self::Cloud => "cloud",
        }
    }

    /// Parses a mode name as users write it (case-insensitive).
    pub fn parse(value: &str) -> Option<Self> {
        match value.trim().to_ascii_lowercase().as_str() {
            "local" => Some(Self::Local),
            "sandbox" => Some(Self::Sandbox),
            "auto" => Some(Self::Auto),
            "cloud" => Some(Self::Cloud),
            _ => None,
        }
    }
}

impl fmt::Display for RequestedMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a command actually runs (auto resolved to one of these before the workflow starts).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Local,
    Sandbox,
    Cloud,
}

impl Mode {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Sandbox => "sandbox",
            Self::Cloud => "cloud",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "local" => Some(Self::Local),
            "sandbox" => Some(Self::Sandbox),
            "cloud" => Some(Self::Cloud),
            _ => None,
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The command as the user gave it: a shell string (`/bin/sh -c`) or an argv (after `--`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CommandSpec {
    Shell(String),
    Argv(Vec<String>),
}

impl CommandSpec {
    /// The argv that runs this command: `/bin/sh -c CMD` for a shell string, never a string
    /// spliced from the argv.
    #[must_use]
    pub fn argv(&self) -> Vec<String> {
        match self {
            Self::Shell(cmd) => vec!["/bin/sh".into(), "-c".into(), cmd.clone()],
            Self::Argv(argv) => argv.clone(),
        }
    }

    /// A one-line rendering for people: the shell string, or the argv shell-quoted.
    #[must_use]
    pub fn display(&self) -> String {
        match self {
            Self::Shell(cmd) => cmd.clone(),
            Self::Argv(argv) => argv
                .iter()
                .map(|a| shell_quote(a))
                .collect::<Vec<_>>()
                .join(" "),
        }
    }
}

fn shell_quote(arg: &str) -> String {
    let plain = !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if plain {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

/// Settings of a sandbox container that decide whether an idle one can be reused.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxSpec {
    pub image: String,
    pub auto_pull: bool,
    pub cleanup: bool,
    pub ttl_secs: u64,
    /// `bridge` (own namespace, outbound allowed) or `none` (loopback only).
    pub network: String,
    pub memory_bytes: i64,
    pub nano_cpus: i64,
    pub pids_limit: i64,
    /// Host directory bind-mounted at /workspace, if any.
    pub workspace: Option<String>,
    /// Who gets the workspace's files afterwards (`uid`, `gid` of the caller).
    #[serde(default)]
    pub workspace_owner: Option<(u32, u32)>,
    /// Host paths mounted read-only (credentials), as `host:target`.
    pub credential_mounts: Vec<String>,
    /// Path of a `--requirements` file on the worker's host, if any.
    pub requirements: Option<String>,
    /// The execution this is for (progress goes to its client).
    #[serde(default)]
    pub execution_id: Option<String>,
    /// Where the container lives: Docker on the worker's host, or a Daytona cloud sandbox
    /// (`image` is then the Daytona snapshot).
    #[serde(default)]
    pub cloud: bool,
}

impl SandboxSpec {
    /// Whether an execution with this spec may take an idle container straight from `exec`
    /// (the warm path): a reusable Docker container whose image needs no ensuring. Not with
    /// `--requirements` (the derived image must be ensured), TTL 0 (no reuse), or in the cloud.
    #[must_use]
    pub fn allows_warm_path(&self) -> bool {
        !self.cloud && self.requirements.is_none() && self.ttl_secs > 0
    }
}

/// The workflow's input: everything needed to run the command, minus environment values.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExecutionInput {
    pub id: String,
    pub command: CommandSpec,
    pub requested_mode: RequestedMode,
    pub effective_mode: Mode,
    /// Why this mode (the auto decision's reason, or "requested").
    pub reason: String,
    pub workdir: String,
    pub timeout_secs: Option<u64>,
    /// Re-run the command if its worker is lost mid-run (not idempotent by default).
    pub retry_exec: bool,
    /// Names of the environment variables stored for this execution (values are in the store).
    pub env_names: Vec<String>,
    pub sandbox: Option<SandboxSpec>,
    /// Where a sandbox command runs; filled in by the workflow after `acquire_container`.
    #[serde(default)]
    pub placement: Option<Placement>,
    /// The task queue of a Docker host that had an idle container with this spec when the
    /// execution was started (the warm path: `exec` goes there and takes the container itself).
    #[serde(default)]
    pub warm_host: Option<String>,
    /// The image as the starter found it present on its own Docker host (the daemon, which
    /// serves that host's queue): the workflow then skips `ensure_image` and acquires there.
    #[serde(default)]
    pub image_ready: Option<ImageReady>,
}

/// The image a sandbox execution runs in, as `ensure_image` found or made it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageReady {
    /// The reference to create containers from (a derived tag with `--requirements`).
    pub image: String,
    pub image_id: String,
    pub digest: Option<String>,
    /// present, pulled or built.
    pub how: String,
    /// The task queue of the Docker host the image is on: the container is acquired there.
    #[serde(default)]
    pub task_queue: Option<String>,
}

/// Input of `acquire_container`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcquireRequest {
    pub execution_id: String,
    pub spec: SandboxSpec,
    pub image: ImageReady,
}

/// A container leased to one execution.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    pub lease_id: String,
    pub container_id: String,
    /// An idle container was reused (else one was created).
    pub reused: bool,
    /// The task queue of the host that owns the container (exec and release go there).
    pub task_queue: Option<String>,
}

/// Input of `release_container`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseRequest {
    pub execution_id: String,
    /// The container to give back; `None` after the warm path, where `exec` took it: whatever
    /// lease the execution still holds on the worker's host.
    pub placement: Option<Placement>,
    /// The command may still be running (cancelled, lost, timed out): never reuse the container.
    pub taint: bool,
    pub ttl_secs: u64,
    pub cleanup: bool,
    /// A Daytona sandbox rather than a Docker container.
    #[serde(default)]
    pub cloud: bool,
}

impl ExecutionInput {
    #[must_use]
    pub fn display_command(&self) -> String {
        let text = self.command.display();
        if text.chars().count() > 80 {
            let cut: String = text.chars().take(77).collect();
            format!("{cut}...")
        } else {
            text
        }
    }
}

/// Lifecycle of an execution as the store and `executions show` report it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    TimedOut,
}

impl Status {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::TimedOut => "timed_out",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        Some(match value {
            "queued" => Self::Queued,
            "running" => Self::Running,
            "succeeded" => Self::Succeeded,
            "failed" => Self::Failed,
            "cancelled" => Self::Cancelled,
            "timed_out" => Self::TimedOut,
            _ => return None,
        })
    }

    #[must_use]
    pub fn is_terminal(self) -> bool {
        !matches!(self, Self::Queued | Self::Running)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Exit code `run` uses when stigmer itself failed (not the command): as `docker run` does.
pub const EXIT_INFRA_FAILURE: i32 = 125;
/// Exit code for `--timeout`, as coreutils `timeout`.
pub const EXIT_TIMED_OUT: i32 = 124;
/// Exit code for Ctrl-C (128 + SIGINT).
pub const EXIT_CANCELLED: i32 = 130;

/// How an execution ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecutionResult {
    pub id: String,
    pub status: Status,
    /// The command's exit code, when it exited on its own.
    pub exit_code: Option<i32>,
    /// Set when the status is not the command's own doing (infrastructure, timeout, cancel).
    pub error: Option<String>,
}

impl ExecutionResult {
    /// A result for an execution that ended without an exit code of its own.
    #[must_use]
    pub fn ended(id: &str, status: Status, error: &str) -> Self {
        Self {
            id: id.to_string(),
            status,
            exit_code: None,
            error: Some(error.to_string()),
        }
    }

    /// The exit code `stigmer run` exits with: the command's own, or 124 / 130 / 125.
    #[must_use]
    pub fn process_exit_code(&self) -> i32 {
        match self.status {
            Status::TimedOut => EXIT_TIMED_OUT,
            Status::Cancelled => EXIT_CANCELLED,
            Status::Succeeded => 0,
            _ => self.exit_code.unwrap_or(EXIT_INFRA_FAILURE),
        }
    }
}
