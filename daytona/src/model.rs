//! The request and response bodies this client exchanges with Daytona, in Rust types.
//!
//! Field names follow the OpenAPI component schemas in `openapi/` (`CreateSandbox`, `Sandbox`,
//! `ExecuteRequest`, `SessionExecuteResponse`, ...). Responses are read leniently because the live
//! API drifts ahead of the published description: unknown fields are ignored, fields the spec
//! calls required are optional here, numbers are accepted as integers or floats, and a state this
//! client does not know is kept verbatim ([`SandboxState::Other`]) rather than failing the call.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A sandbox's lifecycle state (`SandboxState` in the API description).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum SandboxState {
    /// `creating`
    Creating,
    /// `restoring`
    Restoring,
    /// `destroyed`
    Destroyed,
    /// `destroying`
    Destroying,
    /// `started`: commands can run.
    Started,
    /// `stopped`
    Stopped,
    /// `starting`
    Starting,
    /// `stopping`
    Stopping,
    /// `error`: see the sandbox's `errorReason`.
    Error,
    /// `build_failed`: the snapshot build failed; see `errorReason`.
    BuildFailed,
    /// `pending_build`
    PendingBuild,
    /// `building_snapshot`
    BuildingSnapshot,
    /// `unknown`
    Unknown,
    /// `pulling_snapshot`
    PullingSnapshot,
    /// `archived`
    Archived,
    /// `archiving`
    Archiving,
    /// `resizing`
    Resizing,
    /// `snapshotting`
    Snapshotting,
    /// `forking`
    Forking,
    /// `pausing`
    Pausing,
    /// `paused`
    Paused,
    /// `resuming`
    Resuming,
    /// A state this client does not know (the API moved on); kept as sent.
    Other(String),
}

const STATE_NAMES: &[(&str, SandboxState)] = &[
    ("creating", SandboxState::Creating),
    ("restoring", SandboxState::Restoring),
    ("destroyed", SandboxState::Destroyed),
    ("destroying", SandboxState::Destroying),
    ("started", SandboxState::Started),
    ("stopped", SandboxState::Stopped),
    ("starting", SandboxState::Starting),
    ("stopping", SandboxState::Stopping),
    ("error", SandboxState::Error),
    ("build_failed", SandboxState::BuildFailed),
    ("pending_build", SandboxState::PendingBuild),
    ("building_snapshot", SandboxState::BuildingSnapshot),
    ("unknown", SandboxState::Unknown),
    ("pulling_snapshot", SandboxState::PullingSnapshot),
    ("archived", SandboxState::Archived),
    ("archiving", SandboxState::Archiving),
    ("resizing", SandboxState::Resizing),
    ("snapshotting", SandboxState::Snapshotting),
    ("forking", SandboxState::Forking),
    ("pausing", SandboxState::Pausing),
    ("paused", SandboxState::Paused),
    ("resuming", SandboxState::Resuming),
];

impl SandboxState {
    /// The state as Daytona spells it.
    #[must_use]
    pub fn as_str(&self) -> &str {
        match self {
            SandboxState::Other(s) => s,
            known => STATE_NAMES
                .iter()
                .find(|(_, s)| s == known)
                .map_or("unknown", |(name, _)| name),
        }
    }

    /// Parses Daytona's spelling; unknown names become [`SandboxState::Other`].
    #[must_use]
    pub fn parse(name: &str) -> Self {
        STATE_NAMES
            .iter()
            .find(|(n, _)| *n == name)
            .map_or_else(|| SandboxState::Other(name.to_owned()), |(_, s)| s.clone())
    }

    /// `error` or `build_failed`: the sandbox will not start without intervention.
    #[must_use]
    pub fn is_failure(&self) -> bool {
        matches!(self, SandboxState::Error | SandboxState::BuildFailed)
    }

    /// States a sandbox passes through on its way to `started`.
    #[must_use]
    pub fn is_on_the_way_to_started(&self) -> bool {
        matches!(
            self,
            SandboxState::Creating
                | SandboxState::Restoring
                | SandboxState::Starting
                | SandboxState::PendingBuild
                | SandboxState::BuildingSnapshot
                | SandboxState::PullingSnapshot
                | SandboxState::Resuming
                | SandboxState::Resizing
                | SandboxState::Unknown
        )
    }
}

impl fmt::Display for SandboxState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for SandboxState {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for SandboxState {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        Ok(SandboxState::parse(&name))
    }
}

/// A sandbox as the API reports it (`Sandbox`, and `SandboxListItem` in list answers).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
#[non_exhaustive]
pub struct Sandbox {
    /// The sandbox id.
    pub id: String,
    /// Its name (the id when none was given).
    pub name: Option<String>,
    /// Owning organization.
    pub organization_id: Option<String>,
    /// Snapshot it was created from.
    pub snapshot: Option<String>,
    /// OS user commands run as.
    pub user: Option<String>,
    /// Environment variables set in the sandbox.
    pub env: BTreeMap<String, String>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Current state; `None` if the API left it out.
    pub state: Option<SandboxState>,
    /// The state Daytona is driving the sandbox to.
    pub desired_state: Option<String>,
    /// Why the sandbox is in `error` / `build_failed`.
    pub error_reason: Option<String>,
    /// Whether the error is recoverable.
    pub recoverable: Option<bool>,
    /// Region.
    pub target: Option<String>,
    /// CPU cores.
    pub cpu: Option<f64>,
    /// GPUs.
    pub gpu: Option<f64>,
    /// Memory in GiB.
    pub memory: Option<f64>,
    /// Disk in GiB.
    pub disk: Option<f64>,
    /// Whether all network access is blocked.
    pub network_block_all: Option<bool>,
    /// Comma-separated CIDRs allowed out.
    pub network_allow_list: Option<String>,
    /// Auto-stop interval in minutes (0 = disabled).
    pub auto_stop_interval: Option<f64>,
    /// Auto-delete interval in minutes (negative = disabled).
    pub auto_delete_interval: Option<f64>,
    /// Base URL of the toolbox proxy; the toolbox of this sandbox is at `{toolboxProxyUrl}/{id}`.
    pub toolbox_proxy_url: Option<String>,
    /// Creation time, as sent.
    pub created_at: Option<String>,
    /// Last update time, as sent.
    pub updated_at: Option<String>,
}

impl Sandbox {
    /// The state, or `unknown` when the API did not report one.
    #[must_use]
    pub fn state_or_unknown(&self) -> SandboxState {
        self.state.clone().unwrap_or(SandboxState::Unknown)
    }
}

/// CPU, memory and disk for a new sandbox.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Resources {
    /// CPU cores.
    pub cpu: Option<u32>,
    /// Memory in GiB.
    pub memory_gib: Option<u32>,
    /// Disk in GiB.
    pub disk_gib: Option<u32>,
}

/// A request to create a sandbox (`CreateSandbox`). Build it with the methods below.
///
/// ```
/// use stigmer_daytona::{CreateSandbox, Resources};
///
/// let request = CreateSandbox::from_snapshot("stigmer-dev-tools")
///     .label("stigmer.dev/execution", "01J...")
///     .env("CI", "1")
///     .resources(Resources { cpu: Some(2), memory_gib: Some(4), disk_gib: Some(10) })
///     .network_allow_list(["10.0.0.0/8", "192.168.0.0/16"])
///     .auto_stop_minutes(15);
/// let body = serde_json::to_value(&request).unwrap();
/// assert_eq!(body["networkAllowList"], "10.0.0.0/8,192.168.0.0/16");
/// assert_eq!(body["autoStopInterval"], 15);
/// ```
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[must_use]
pub struct CreateSandbox {
    /// Name (Daytona uses the id when none is given).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Snapshot id or name; the client fills in [`crate::Config::snapshot`] when this is `None`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    /// OS user.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Environment variables.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Labels, used to find the sandbox again ([`crate::Client::list_sandboxes`]).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Block all network access.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network_block_all: Option<bool>,
    /// CIDRs allowed out; sent comma-separated as the API expects.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "serialize_comma_list"
    )]
    pub network_allow_list: Option<Vec<String>>,
    /// Region.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// CPU cores.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<u32>,
    /// Memory in GiB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<u32>,
    /// Disk in GiB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk: Option<u32>,
    /// Auto-stop interval in minutes (0 disables it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auto_stop_interval: Option<u32>,
    /// Auto-delete interval in minutes (negative disables it, 0 deletes on stop).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auto_delete_interval: Option<i32>,
}

impl CreateSandbox {
    /// A request for a sandbox from `snapshot`.
    pub fn from_snapshot(snapshot: impl Into<String>) -> Self {
        CreateSandbox {
            snapshot: Some(snapshot.into()),
            ..CreateSandbox::default()
        }
    }

    /// Sets the name.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Adds a label.
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// Adds an environment variable.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.insert(key.into(), value.into());
        self
    }

    /// Sets CPU, memory and disk.
    pub fn resources(mut self, resources: Resources) -> Self {
        self.cpu = resources.cpu;
        self.memory = resources.memory_gib;
        self.disk = resources.disk_gib;
        self
    }

    /// Blocks (or unblocks) all network access.
    pub fn network_block_all(mut self, block: bool) -> Self {
        self.network_block_all = Some(block);
        self
    }

    /// Allows outbound traffic to these CIDRs only.
    pub fn network_allow_list<I, S>(mut self, cidrs: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.network_allow_list = Some(cidrs.into_iter().map(Into::into).collect());
        self
    }

    /// Stops the sandbox after this many idle minutes (0 disables auto-stop).
    pub fn auto_stop_minutes(mut self, minutes: u32) -> Self {
        self.auto_stop_interval = Some(minutes);
        self
    }

    /// Deletes the sandbox this many minutes after it stops (0: at once; negative: never).
    pub fn auto_delete_minutes(mut self, minutes: i32) -> Self {
        self.auto_delete_interval = Some(minutes);
        self
    }

    /// Sets the region.
    pub fn target(mut self, target: impl Into<String>) -> Self {
        self.target = Some(target.into());
        self
    }
}

fn serialize_comma_list<S: Serializer>(
    list: &Option<Vec<String>>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match list {
        Some(items) => s.serialize_str(&items.join(",")),
        None => s.serialize_none(),
    }
}

/// A command for the toolbox's synchronous `process/execute`.
///
/// The timeout is required: Daytona does not apply its documented default when the field is
/// omitted, so a command without one can run forever.
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use]
pub struct ExecuteCommand {
    /// The command line. Daytona splits it on spaces and quotes and does not run a shell; wrap
    /// shell syntax with [`crate::sh_c`].
    pub command: String,
    /// Working directory.
    pub cwd: Option<String>,
    /// Extra environment variables.
    pub env: BTreeMap<String, String>,
    /// How long Daytona lets the command run (sent in whole seconds, rounded up).
    pub timeout: Duration,
}

impl ExecuteCommand {
    /// A command with a timeout.
    pub fn new(command: impl Into<String>, timeout: Duration) -> Self {
        ExecuteCommand {
            command: command.into(),
            cwd: None,
            env: BTreeMap::new(),
            timeout,
        }
    }

    /// Sets the working directory.
    pub fn cwd(mut self, cwd: impl Into<String>) -> Self {
        self.cwd = Some(cwd.into());
        self
    }

    /// Adds an environment variable.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.insert(key.into(), value.into());
        self
    }

    /// The timeout in whole seconds as sent, at least 1 (0 would mean "no timeout").
    #[must_use]
    pub fn timeout_secs(&self) -> u64 {
        let secs = self.timeout.as_secs() + u64::from(self.timeout.subsec_nanos() > 0);
        secs.max(1)
    }
}

/// The body sent for [`ExecuteCommand`] (`ExecuteRequest`).
#[derive(Serialize)]
pub(crate) struct ExecuteRequestBody<'a> {
    pub command: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cwd: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub envs: Option<&'a BTreeMap<String, String>>,
    pub timeout: u64,
}

/// The answer of `process/execute`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct ExecuteOutput {
    /// Exit code (-1 when Daytona could not tell).
    #[serde(
        default = "minus_one",
        deserialize_with = "de_i32_lenient",
        alias = "code"
    )]
    pub exit_code: i32,
    /// Standard output and standard error merged, in the order written: Daytona's synchronous
    /// execute does not keep them apart (use a session for that).
    #[serde(default)]
    pub result: String,
}

fn minus_one() -> i32 {
    -1
}

/// The answer of a session `exec` (`SessionExecuteResponse`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SessionExecOutput {
    /// The command id, to poll or follow it.
    pub command_id: String,
    /// Exit code; `None` for an asynchronous command.
    pub exit_code: Option<i32>,
    /// Standard output, when known apart (always for synchronous commands).
    pub stdout: Option<String>,
    /// Standard error, when known apart.
    pub stderr: Option<String>,
    /// The output as Daytona sent it.
    pub output: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SessionExecuteResponseBody {
    #[serde(alias = "commandId")]
    pub cmd_id: Option<String>,
    #[serde(default, deserialize_with = "de_opt_i32_lenient")]
    pub exit_code: Option<i32>,
    pub output: Option<String>,
    pub stdout: Option<String>,
    pub stderr: Option<String>,
}

/// A command in a session (`Command`).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct SessionCommand {
    /// Command id.
    pub id: String,
    /// The command line.
    #[serde(default)]
    pub command: String,
    /// Exit code, once the command has finished.
    #[serde(default, deserialize_with = "de_opt_i32_lenient")]
    pub exit_code: Option<i32>,
}

/// Which output stream a piece of output came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OutputStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// A piece of a command's output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogChunk {
    /// Where it was written.
    pub stream: OutputStream,
    /// The bytes, as written (not necessarily whole lines or whole UTF-8 characters).
    pub data: Vec<u8>,
}

/// A session command's output so far, split by stream.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CommandLogs {
    /// Standard output.
    pub stdout: Vec<u8>,
    /// Standard error.
    pub stderr: Vec<u8>,
}

#[derive(Deserialize)]
pub(crate) struct ToolboxProxyUrlBody {
    pub url: String,
}

/// A page of `GET /sandbox`: `ListSandboxesResponse` now, a bare array in older API versions.
#[derive(Deserialize)]
#[serde(untagged)]
pub(crate) enum SandboxListBody {
    Page {
        items: Vec<Sandbox>,
        #[serde(default, rename = "nextCursor")]
        next_cursor: Option<String>,
    },
    Bare(Vec<Sandbox>),
}

fn number_to_i32<E: serde::de::Error>(v: &serde_json::Value) -> Result<Option<i32>, E> {
    match v {
        serde_json::Value::Null => Ok(None),
        serde_json::Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                i32::try_from(i).map(Some).map_err(E::custom)
            } else if let Some(f) = n.as_f64().filter(|f| f.fract() == 0.0) {
                // Whole floats only (the API types exit codes as `number`); exit codes fit in i32.
                #[allow(clippy::cast_possible_truncation)]
                Ok(Some(f as i32))
            } else {
                Err(E::custom(format!("expected a whole number, got {n}")))
            }
        }
        serde_json::Value::String(s) => s.trim().parse::<i32>().map(Some).map_err(E::custom),
        other => Err(E::custom(format!("expected a number, got {other}"))),
    }
}

fn de_opt_i32_lenient<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i32>, D::Error> {
    let v = serde_json::Value::deserialize(d)?;
    number_to_i32(&v)
}

fn de_i32_lenient<'de, D: Deserializer<'de>>(d: D) -> Result<i32, D::Error> {
    let v = serde_json::Value::deserialize(d)?;
    Ok(number_to_i32(&v)?.unwrap_or(-1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_and_unknown_states_are_kept() {
        for (name, state) in STATE_NAMES {
            assert_eq!(SandboxState::parse(name), *state);
            assert_eq!(state.as_str(), *name);
        }
        let drifted: SandboxState = serde_json::from_str("\"hibernating\"").unwrap();
        assert_eq!(drifted, SandboxState::Other("hibernating".into()));
        assert_eq!(drifted.to_string(), "hibernating");
    }

    #[test]
    fn sandbox_tolerates_unknown_fields_and_float_numbers() {
        let s: Sandbox = serde_json::from_value(serde_json::json!({
            "id": "sb1", "state": "started", "cpu": 2.0, "somethingNew": {"x": 1},
            "labels": {"a": "b"}
        }))
        .unwrap();
        assert_eq!(s.id, "sb1");
        assert_eq!(s.state, Some(SandboxState::Started));
        assert_eq!(s.cpu, Some(2.0));
    }

    #[test]
    fn exit_codes_accept_floats_strings_and_old_field_name() {
        let out: ExecuteOutput =
            serde_json::from_value(serde_json::json!({"exitCode": 3.0, "result": "x"})).unwrap();
        assert_eq!(out.exit_code, 3);
        let out: ExecuteOutput =
            serde_json::from_value(serde_json::json!({"code": 2, "result": "x"})).unwrap();
        assert_eq!(out.exit_code, 2);
        let cmd: SessionCommand =
            serde_json::from_value(serde_json::json!({"id": "c", "exitCode": "7"})).unwrap();
        assert_eq!(cmd.exit_code, Some(7));
        let cmd: SessionCommand =
            serde_json::from_value(serde_json::json!({"id": "c", "exitCode": null})).unwrap();
        assert_eq!(cmd.exit_code, None);
        assert!(
            serde_json::from_value::<SessionCommand>(
                serde_json::json!({"id": "c", "exitCode": 1.5})
            )
            .is_err()
        );
    }

    #[test]
    fn timeout_is_rounded_up_to_whole_seconds_and_never_zero() {
        let c = ExecuteCommand::new("true", Duration::from_millis(1500));
        assert_eq!(c.timeout_secs(), 2);
        let c = ExecuteCommand::new("true", Duration::from_millis(0));
        assert_eq!(c.timeout_secs(), 1);
        let c = ExecuteCommand::new("true", Duration::from_secs(30));
        assert_eq!(c.timeout_secs(), 30);
    }

    #[test]
    fn list_answers_in_both_shapes_parse() {
        let page: SandboxListBody =
            serde_json::from_str(r#"{"items":[{"id":"a"}],"nextCursor":null}"#).unwrap();
        assert!(matches!(page, SandboxListBody::Page { ref items, .. } if items.len() == 1));
        let bare: SandboxListBody = serde_json::from_str(r#"[{"id":"a"},{"id":"b"}]"#).unwrap();
        assert!(matches!(bare, SandboxListBody::Bare(ref items) if items.len() == 2));
    }
}
