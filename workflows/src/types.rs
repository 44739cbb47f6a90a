//! Request and result types of an agent execution. They travel through Temporal history, where
//! every payload is encrypted by the clients' codec: environment values travel only inside the
//! workflow input and `exec`'s, and never in the store.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Where the user asked a command to run.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    strum::Display,
    strum::EnumString,
    strum::IntoStaticStr,
    schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase", ascii_case_insensitive)]
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
        self.into()
    }

    /// Parses a mode name as users write it (case-insensitive).
    pub fn parse(value: &str) -> Option<Self> {
        value.trim().parse().ok()
    }
}

/// Where a command actually runs (auto resolved to one of these before the workflow starts).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, strum::Display, strum::IntoStaticStr,
)]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase")]
pub enum Mode {
    Local,
    Sandbox,
    Cloud,
}

impl Mode {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        self.into()
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

/// One word quoted for a POSIX shell: as it is when it needs no quoting, else single-quoted.
#[must_use]
pub fn shell_quote(arg: &str) -> String {
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
    pub network: Network,
    /// With the `public` posture: the only hosts its proxy lets it reach (`--allow-net`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_net: Vec<String>,
    pub memory_bytes: i64,
    pub nano_cpus: i64,
    pub pids_limit: i64,
    /// Host directory bind-mounted at /workspace, if any.
    pub workspace: Option<String>,
    /// Who gets the workspace's files afterwards (`uid`, `gid` of the caller).
    #[serde(default)]
    pub workspace_owner: Option<(u32, u32)>,
    /// Host paths mounted read-only (credentials).
    pub credential_mounts: Vec<CredentialMount>,
    /// Path of a `--requirements` file on the worker's host, if any.
    pub requirements: Option<String>,
    /// The execution this is for (progress goes to its client).
    #[serde(default)]
    pub execution_id: Option<String>,
    /// Where the container lives: Docker on the worker's host, or a Daytona cloud sandbox
    /// (`image` is then the Daytona snapshot). Histories before 0.2 carry `"cloud": bool`.
    #[serde(default, alias = "cloud", deserialize_with = "backend_or_cloud_flag")]
    pub backend: Backend,
    /// Whose container it is: the caller's uid (as the daemon's socket sees it) and CI run.
    /// Containers are reused only by the same owner; none (older inputs) shares by spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

/// A sandbox's network. Never the host's.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    /// Its own network namespace, the open network (opt-in).
    Bridge,
    /// Its own network namespace with loopback only.
    None,
    /// Loopback only, and HTTP(S) to public hosts (ports 80 and 443) through the worker's
    /// proxy: metadata, private ranges and the worker's host are refused. With an allow-list,
    /// only the hosts listed.
    #[default]
    Public,
}

/// What each posture means, for messages that list them.
pub const NETWORK_CHOICES: &str = "public (the default: HTTP(S) to public hosts through the \
     worker's proxy), none (loopback only), bridge (the open network)";

impl Network {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Bridge => "bridge",
            Self::None => "none",
            Self::Public => "public",
        }
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Network {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, String> {
        match raw.trim().to_ascii_lowercase().as_str() {
            "bridge" => Ok(Self::Bridge),
            "none" => Ok(Self::None),
            "public" => Ok(Self::Public),
            "host" => Err(format!(
                "the host network is never used for a sandbox; allowed values: {NETWORK_CHOICES}"
            )),
            _ => Err(format!("allowed values: {NETWORK_CHOICES}")),
        }
    }
}

/// A host path mounted read-only into the sandbox (credentials). Older histories carry it as
/// one `HOST:TARGET` string.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CredentialMount {
    pub host: String,
    pub target: String,
}

impl<'de> Deserialize<'de> for CredentialMount {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Wire {
            Fields { host: String, target: String },
            Joined(String),
        }
        match Wire::deserialize(d)? {
            Wire::Fields { host, target } => Ok(Self { host, target }),
            Wire::Joined(joined) => match joined.split_once(':') {
                Some((host, target)) => Ok(Self {
                    host: host.into(),
                    target: target.into(),
                }),
                None => Err(serde::de::Error::custom(format!(
                    "credential mount {joined:?} is not HOST:TARGET"
                ))),
            },
        }
    }
}

/// The bounds of a sandbox's resources, the same for every starter (the CLI checks them before
/// anything starts; the worker again for whoever started the workflow).
pub mod limits {
    /// Below this a shell and a small command cannot start.
    pub const MIN_MEMORY_BYTES: i64 = 16 * 1024 * 1024;
    /// A shell, the command and a few children.
    pub const MIN_PIDS: i64 = 8;
    /// CPUs, as Docker counts them.
    pub const MAX_CPUS: f64 = 1024.0;
    /// The longest `--timeout`: 30 days. Longer cannot be a Temporal timeout (a huge value made
    /// the start hang), and no command here is meant to run for a month.
    pub const MAX_TIMEOUT_SECS: u64 = 30 * 24 * 3600;
    /// The longest an idle container is kept for reuse: 30 days.
    pub const MAX_TTL_SECS: u64 = 30 * 24 * 3600;
}

/// What runs a sandbox execution's container.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// A hardened container on a worker's Docker host.
    #[default]
    Docker,
    /// A Daytona cloud sandbox.
    Daytona,
}

/// Reads a backend by name, or the `cloud` flag older histories recorded in its place.
fn backend_or_cloud_flag<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Backend, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Wire {
        Named(Backend),
        CloudFlag(bool),
    }
    Ok(match Wire::deserialize(d)? {
        Wire::Named(backend) => backend,
        Wire::CloudFlag(true) => Backend::Daytona,
        Wire::CloudFlag(false) => Backend::Docker,
    })
}

impl SandboxSpec {
    /// Checks the resource limits against [`limits`]: what was wrong and what is allowed.
    pub fn check_limits(&self) -> Result<(), String> {
        if self.memory_bytes < limits::MIN_MEMORY_BYTES {
            return Err(format!(
                "memory limit {} bytes: give at least 16m (e.g. 512m or 2g)",
                self.memory_bytes
            ));
        }
        if self.nano_cpus <= 0 || self.nano_cpus as f64 > limits::MAX_CPUS * 1e9 {
            return Err(format!(
                "CPU limit {} CPUs: give a number of CPUs above 0 and at most {}, e.g. 1.5",
                self.nano_cpus as f64 / 1e9,
                limits::MAX_CPUS
            ));
        }
        if self.pids_limit < limits::MIN_PIDS {
            return Err(format!(
                "process limit {}: give at least {}",
                self.pids_limit,
                limits::MIN_PIDS
            ));
        }
        if self.ttl_secs > limits::MAX_TTL_SECS {
            return Err(format!(
                "sandbox TTL {} s: give at most {} s (30 days)",
                self.ttl_secs,
                limits::MAX_TTL_SECS
            ));
        }
        Ok(())
    }

    /// Whether an execution with this spec may take an idle container straight from `exec`
    /// (the warm path): a reusable Docker container whose image needs no ensuring. Not with
    /// `--requirements` (the derived image must be ensured), TTL 0 (no reuse), or in the cloud.
    #[must_use]
    pub fn allows_warm_path(&self) -> bool {
        self.allows_ready_host() && self.ttl_secs > 0
    }

    /// Whether `exec` may acquire the container itself on a host that has the image (the
    /// ready-host path): a Docker container whose image is the spec's own, not one derived
    /// with `--requirements`.
    #[must_use]
    pub fn allows_ready_host(&self) -> bool {
        self.backend == Backend::Docker && self.requirements.is_none()
    }
}

/// Where an execution's first step goes: decided once, by its starter, from what it saw
/// ([`Route::decide`]); the workflow and `exec` match on it and decide nothing again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "path")]
pub enum Route {
    /// `exec` on the workflow's own task queue, with no container: local mode.
    Direct,
    /// The long way: ensure the image (Docker), acquire a container, then `exec` and release
    /// on the host that owns it.
    Acquire,
    /// A Docker host had an idle, untainted container of this spec inside its TTL: `exec` goes
    /// to that host's queue and takes the container itself. When it finds none there, or the
    /// host does not pick the step up in time, nothing ran and the workflow goes the long way.
    Warm { task_queue: String },
    /// The starter saw the image on the Docker host it serves: `exec` goes there, acquires the
    /// container (reused or created) and runs the command in one step.
    ReadyHost {
        task_queue: String,
        image: ImageReady,
    },
}

impl Route {
    /// The one place the route is decided. `warm_host` is the queue of a host with an idle
    /// container of the spec (from the store's leases); `image_ready` is the image as the
    /// starter found it on its own host. A warm host wins over a ready image; either is used
    /// only where the spec allows it.
    #[must_use]
    pub fn decide(
        mode: Mode,
        spec: Option<&SandboxSpec>,
        warm_host: Option<String>,
        image_ready: Option<ImageReady>,
    ) -> Self {
        if mode == Mode::Local {
            return Self::Direct;
        }
        // Without a spec the long way reports what is missing; never the host.
        let Some(spec) = spec else {
            return Self::Acquire;
        };
        if let Some(task_queue) = warm_host.filter(|_| spec.allows_warm_path()) {
            return Self::Warm { task_queue };
        }
        match image_ready.filter(|_| spec.allows_ready_host()) {
            Some(image) => match image.task_queue.clone() {
                Some(task_queue) => Self::ReadyHost { task_queue, image },
                None => Self::Acquire,
            },
            None => Self::Acquire,
        }
    }

    /// Whether the starter needs to look for the image on its host: not when a warm host was
    /// found (its fallback ensures the image) or the spec cannot use it.
    #[must_use]
    pub fn wants_image_check(mode: Mode, spec: &SandboxSpec, warm_host: Option<&str>) -> bool {
        mode == Mode::Sandbox && warm_host.is_none() && spec.allows_ready_host()
    }
}

/// The workflow's input: everything needed to run the command.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(from = "wire::ExecutionInputWire")]
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
    /// Names of the environment variables of this execution.
    pub env_names: Vec<String>,
    /// Their values. They travel only inside this input, which the payload codec encrypts, and
    /// reach only `exec`; the store keeps the names. Empty in inputs from before, whose values
    /// are in the store.
    #[serde(default, skip_serializing_if = "EnvValues::is_empty")]
    pub env: EnvValues,
    pub sandbox: Option<SandboxSpec>,
    /// Where a sandbox command runs; filled in by the workflow after `acquire_container`.
    pub placement: Option<Placement>,
    /// Where the first step goes ([`Route::decide`]).
    pub route: Route,
    /// The command's standard input, when the caller gave one (else it reads end of file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<StdinInput>,
    /// The session the command runs in (docs/sessions.md): its state is restored before the
    /// command and saved after it. Absent in inputs from before sessions, and for a command
    /// without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
}

/// The most stdin an input may carry inline ([`StdinInput::Base64`]): a remote client's or a
/// public start's. The daemon streams a local `stigmer run`'s stdin without a bound.
pub const MAX_INLINE_STDIN_BYTES: usize = 256 * 1024;

/// A command's standard input.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StdinInput {
    /// Streamed by the daemon that started the execution to its own worker, as the caller
    /// writes it; never in history. Only that process can give it, and only once.
    Streamed,
    /// The bytes themselves, base64, inside the encrypted input (at most
    /// [`MAX_INLINE_STDIN_BYTES`] decoded).
    Base64(String),
}

impl std::fmt::Debug for StdinInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the bytes: stdin may carry secrets.
        match self {
            Self::Streamed => write!(f, "Streamed"),
            Self::Base64(text) => write!(f, "Base64({} chars)", text.len()),
        }
    }
}

/// The input as older histories recorded it, read into today's [`ExecutionInput`].
mod wire {
    use super::*;

    /// Before [`Route`], the starter's hints travelled as `warm_host` and `image_ready`, and
    /// the workflow and `exec` each worked the route out from them; the same rule
    /// ([`Route::decide`]) reads them now, so an execution in flight across the upgrade takes
    /// the path it was started on.
    #[derive(Deserialize)]
    pub(super) struct ExecutionInputWire {
        id: String,
        command: CommandSpec,
        requested_mode: RequestedMode,
        effective_mode: Mode,
        reason: String,
        workdir: String,
        timeout_secs: Option<u64>,
        retry_exec: bool,
        env_names: Vec<String>,
        #[serde(default)]
        env: EnvValues,
        sandbox: Option<SandboxSpec>,
        #[serde(default)]
        placement: Option<Placement>,
        #[serde(default)]
        route: Option<Route>,
        #[serde(default)]
        warm_host: Option<String>,
        #[serde(default)]
        image_ready: Option<ImageReady>,
        #[serde(default)]
        stdin: Option<StdinInput>,
        #[serde(default)]
        session: Option<String>,
    }

    impl From<ExecutionInputWire> for ExecutionInput {
        fn from(w: ExecutionInputWire) -> Self {
            let route = w.route.unwrap_or_else(|| {
                Route::decide(
                    w.effective_mode,
                    w.sandbox.as_ref(),
                    w.warm_host,
                    w.image_ready,
                )
            });
            Self {
                id: w.id,
                command: w.command,
                requested_mode: w.requested_mode,
                effective_mode: w.effective_mode,
                reason: w.reason,
                workdir: w.workdir,
                timeout_secs: w.timeout_secs,
                retry_exec: w.retry_exec,
                env_names: w.env_names,
                env: w.env,
                sandbox: w.sandbox,
                placement: w.placement,
                route,
                stdin: w.stdin,
                session: w.session,
            }
        }
    }
}

/// An execution's environment values. Shown by name only, so that no log line or error made
/// from an input's `Debug` carries a value.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EnvValues(pub Vec<(String, String)>);

impl EnvValues {
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for EnvValues {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(name, _)| format!("{name}=…")))
            .finish()
    }
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
    /// What holds the container. Histories before 0.2 carry `"cloud": bool`.
    #[serde(default, alias = "cloud", deserialize_with = "backend_or_cloud_flag")]
    pub backend: Backend,
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
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    strum::Display,
    strum::EnumString,
    strum::IntoStaticStr,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
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
        self.into()
    }

    pub fn parse(value: &str) -> Option<Self> {
        value.parse().ok()
    }

    #[must_use]
    pub fn is_terminal(self) -> bool {
        !matches!(self, Self::Queued | Self::Running)
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
    /// For a start with the public input: the mode, and the output's head and tail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<Box<crate::public::Report>>,
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
            report: None,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_stored_and_serialized_ones() {
        // The store and `executions show` hold these strings; serde writes the same ones.
        let statuses = [
            (Status::Queued, "queued"),
            (Status::Running, "running"),
            (Status::Succeeded, "succeeded"),
            (Status::Failed, "failed"),
            (Status::Cancelled, "cancelled"),
            (Status::TimedOut, "timed_out"),
        ];
        for (status, name) in statuses {
            assert_eq!(status.as_str(), name);
            assert_eq!(status.to_string(), name);
            assert_eq!(Status::parse(name), Some(status));
            assert_eq!(serde_json::to_value(status).unwrap(), name);
        }
        assert_eq!(Status::parse("TimedOut"), None);
        for mode in [
            RequestedMode::Local,
            RequestedMode::Sandbox,
            RequestedMode::Auto,
            RequestedMode::Cloud,
        ] {
            let name = serde_json::to_value(mode).unwrap();
            assert_eq!(mode.as_str(), name);
            assert_eq!(
                RequestedMode::parse(&format!(" {} ", mode.as_str().to_uppercase())),
                Some(mode)
            );
        }
        assert_eq!(RequestedMode::parse("host"), None);
        assert_eq!(Mode::Cloud.to_string(), "cloud");
    }

    fn spec() -> SandboxSpec {
        SandboxSpec {
            image: "img".into(),
            ttl_secs: 60,
            network: Network::None,
            ..SandboxSpec::default()
        }
    }

    fn image(queue: Option<&str>) -> ImageReady {
        ImageReady {
            image: "img".into(),
            image_id: "sha256:1".into(),
            digest: None,
            how: "present".into(),
            task_queue: queue.map(String::from),
        }
    }

    #[test]
    fn local_mode_goes_direct_whatever_the_hints() {
        let route = Route::decide(
            Mode::Local,
            Some(&spec()),
            Some("q".into()),
            Some(image(Some("q"))),
        );
        assert_eq!(route, Route::Direct);
    }

    #[test]
    fn a_warm_host_wins_over_a_ready_image_and_only_where_the_spec_allows_reuse() {
        let route = Route::decide(
            Mode::Sandbox,
            Some(&spec()),
            Some("warm".into()),
            Some(image(Some("ready"))),
        );
        assert_eq!(
            route,
            Route::Warm {
                task_queue: "warm".into()
            }
        );
        for no_reuse in [
            SandboxSpec {
                ttl_secs: 0,
                ..spec()
            },
            SandboxSpec {
                requirements: Some("r.txt".into()),
                ..spec()
            },
            SandboxSpec {
                backend: Backend::Daytona,
                ..spec()
            },
        ] {
            let route = Route::decide(Mode::Sandbox, Some(&no_reuse), Some("warm".into()), None);
            assert_eq!(route, Route::Acquire, "{no_reuse:?}");
        }
    }

    #[test]
    fn a_ready_image_needs_its_host_queue_and_a_plain_docker_spec() {
        let route = Route::decide(Mode::Sandbox, Some(&spec()), None, Some(image(Some("h"))));
        assert_eq!(
            route,
            Route::ReadyHost {
                task_queue: "h".into(),
                image: image(Some("h"))
            }
        );
        // TTL 0 still acquires on the ready host (a fresh container there).
        let ttl0 = SandboxSpec {
            ttl_secs: 0,
            ..spec()
        };
        assert!(matches!(
            Route::decide(Mode::Sandbox, Some(&ttl0), None, Some(image(Some("h")))),
            Route::ReadyHost { .. }
        ));
        assert_eq!(
            Route::decide(Mode::Sandbox, Some(&spec()), None, Some(image(None))),
            Route::Acquire
        );
        let req = SandboxSpec {
            requirements: Some("r.txt".into()),
            ..spec()
        };
        assert_eq!(
            Route::decide(Mode::Sandbox, Some(&req), None, Some(image(Some("h")))),
            Route::Acquire
        );
        let cloud = SandboxSpec {
            backend: Backend::Daytona,
            ..spec()
        };
        assert_eq!(
            Route::decide(Mode::Cloud, Some(&cloud), None, Some(image(Some("h")))),
            Route::Acquire
        );
    }

    #[test]
    fn a_sandbox_execution_without_a_spec_never_goes_to_the_host() {
        assert_eq!(
            Route::decide(Mode::Sandbox, None, None, None),
            Route::Acquire
        );
        assert_eq!(Route::decide(Mode::Cloud, None, None, None), Route::Acquire);
    }

    fn input_json(extra: serde_json::Value) -> serde_json::Value {
        let mut input = serde_json::json!({
            "id": "aex-1",
            "command": {"shell": "true"},
            "requested_mode": "sandbox",
            "effective_mode": "sandbox",
            "reason": "requested",
            "workdir": "/",
            "timeout_secs": null,
            "retry_exec": false,
            "env_names": [],
            "sandbox": serde_json::to_value(spec()).unwrap(),
        });
        for (k, v) in extra.as_object().unwrap() {
            input[k] = v.clone();
        }
        input
    }

    #[test]
    fn older_inputs_read_into_the_route_they_were_started_on() {
        let read = |extra| serde_json::from_value::<ExecutionInput>(input_json(extra)).unwrap();
        assert_eq!(read(serde_json::json!({})).route, Route::Acquire);
        assert_eq!(
            read(serde_json::json!({"warm_host": "q@docker:e"})).route,
            Route::Warm {
                task_queue: "q@docker:e".into()
            }
        );
        let ready = serde_json::to_value(image(Some("q@docker:e"))).unwrap();
        assert_eq!(
            read(serde_json::json!({"image_ready": ready})).route,
            Route::ReadyHost {
                task_queue: "q@docker:e".into(),
                image: image(Some("q@docker:e"))
            }
        );
        // Today's form wins, and round-trips.
        let today = read(serde_json::json!({"route": {"path": "direct"}, "warm_host": "q"}));
        assert_eq!(today.route, Route::Direct);
        let again: ExecutionInput =
            serde_json::from_value(serde_json::to_value(&today).unwrap()).unwrap();
        assert_eq!(again, today);
    }

    #[test]
    fn networks_and_credential_mounts_are_typed_and_read_their_older_strings() {
        let mut value = serde_json::to_value(spec()).unwrap();
        assert_eq!(value["network"], "none");
        value["network"] = "bridge".into();
        value["credential_mounts"] = serde_json::json!(["/home/u/.aws:/home/sandbox/.aws"]);
        let read: SandboxSpec = serde_json::from_value(value.clone()).unwrap();
        assert_eq!(read.network, Network::Bridge);
        let aws = CredentialMount {
            host: "/home/u/.aws".into(),
            target: "/home/sandbox/.aws".into(),
        };
        assert_eq!(read.credential_mounts, vec![aws.clone()]);
        let again: SandboxSpec =
            serde_json::from_value(serde_json::to_value(&read).unwrap()).unwrap();
        assert_eq!(again.credential_mounts, vec![aws]);
        value["credential_mounts"] = serde_json::json!(["no-colon"]);
        let err = serde_json::from_value::<SandboxSpec>(value.clone()).unwrap_err();
        assert!(err.to_string().contains("HOST:TARGET"), "{err}");
        value["credential_mounts"] = serde_json::json!([]);
        value["network"] = "host".into();
        assert!(serde_json::from_value::<SandboxSpec>(value).is_err());
        assert!(
            "host"
                .parse::<Network>()
                .unwrap_err()
                .contains("never used")
        );
        assert_eq!(" None ".parse::<Network>(), Ok(Network::None));
    }

    #[test]
    fn the_backend_reads_from_the_older_cloud_flag_and_by_name() {
        let mut value = serde_json::to_value(spec()).unwrap();
        value.as_object_mut().unwrap().remove("backend");
        assert_eq!(
            serde_json::from_value::<SandboxSpec>(value.clone())
                .unwrap()
                .backend,
            Backend::Docker
        );
        value["cloud"] = true.into();
        assert_eq!(
            serde_json::from_value::<SandboxSpec>(value.clone())
                .unwrap()
                .backend,
            Backend::Daytona
        );
        value["cloud"] = false.into();
        assert_eq!(
            serde_json::from_value::<SandboxSpec>(value.clone())
                .unwrap()
                .backend,
            Backend::Docker
        );
        let daytona = SandboxSpec {
            backend: Backend::Daytona,
            ..spec()
        };
        let json = serde_json::to_value(&daytona).unwrap();
        assert_eq!(json["backend"], "daytona");
        assert_eq!(
            serde_json::from_value::<SandboxSpec>(json).unwrap(),
            daytona
        );
    }
}
