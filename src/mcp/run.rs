//! `run_command`: `stigmer run` for an MCP client. The request is built by the CLI's own
//! `build_request` (same modes, environment rules and checks) and driven over the daemon's
//! socket as `run` drives it; the answer is the execution's end with its output's head and
//! tail from the store (the Temporal contract's report), or its id while it still runs.
//!
//! MCP clients time out tool calls, so a call waits `wait_secs` at most; the command goes on
//! after that (closing the socket does not cancel it), and `read_output` follows it. Cancelling
//! the call is the socket's `Cancel`, as Ctrl-C is for `run`.

use super::{StigmerMcp, Summary, in_tool_terms};
use crate::cli::{Cli, Command, RunArgs};
use crate::client;
use crate::config::Config;
use crate::protocol::{self, RunRequest, Started, Tag};
use clap::Parser;
use rmcp::RoleServer;
use rmcp::model::{ProgressNotificationParam, ProgressToken};
use rmcp::service::{Peer, RequestContext};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use stigmer_activities::store::Store;
use stigmer_workflows::{AgentExecution, ExecutionResult, Status};
use temporalio_client::WorkflowCancelOptions;
use tokio::net::UnixStream;

/// How long a call waits for its command unless told otherwise: under the usual client
/// timeouts, long enough for most builds and tests.
pub const DEFAULT_WAIT_SECS: u64 = 60;
/// The longest a call may wait: past that, `read_output` follows the command.
pub const MAX_WAIT_SECS: u64 = 600;
/// Each stream's bytes a result carries (half from its head, half from its tail): enough to
/// read a failure, small enough for a model's context; `read_output` has the rest.
pub const OUTPUT_LIMIT_BYTES: u64 = 16 * 1024;
/// How often a running command reports progress to a client that asked for it.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// `run_command`'s input.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunCommandArgs {
    /// The command: one shell string, run with `/bin/sh -c`.
    pub command: String,
    /// Where it runs: `local` (this host, with the server's environment), `sandbox` (a hardened
    /// container that sees only `env`; needs Docker), `auto` (stigmer decides for each command:
    /// see `explain_command`) or `cloud` (a Daytona sandbox). Default: the user's configured
    /// mode, `local` unless set.
    #[serde(default)]
    pub mode: Option<String>,
    /// The working directory, an existing absolute path (default: the server's).
    #[serde(default)]
    pub workdir: Option<String>,
    /// Kill the command after this many seconds; it then ends `timed_out`, exit code 124.
    #[serde(default)]
    pub timeout_secs: Option<u64>,
    /// Environment variables for the command, name to value.
    #[serde(default)]
    pub env: Option<BTreeMap<String, String>>,
    /// How long this call waits for the command to end, in seconds (default 60, at most 600).
    /// A command still running then goes on and the result is `{id, status: "running"}`.
    #[serde(default)]
    pub wait_secs: Option<u64>,
    /// Labels kept with the execution and its audit records, name to value (e.g. the task or
    /// the step it belongs to): at most 32, names of letters, digits and `._/-`.
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
    /// A session's id or name (`start_session`): the command runs in its container, where the
    /// previous command of the session ended (directory, exported variables). The session
    /// decides the mode; waits while another command of the session runs.
    #[serde(default)]
    pub session: Option<String>,
}

/// `run_command`'s result: the execution's end, or its id while it runs.
#[derive(Debug, Serialize, JsonSchema)]
pub struct CommandOutcome {
    /// The execution's id: for `read_output`, and `stigmer executions show` / `stigmer logs`.
    pub id: String,
    /// `running` (the wait ended first), or how it ended: `succeeded`, `failed`, `timed_out`,
    /// `cancelled`.
    pub status: String,
    /// The command's exit code, when it exited on its own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// stdout, whole or its head and tail with a marker where it was cut.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stdout: Option<String>,
    /// stderr, whole or its head and tail with a marker where it was cut.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stderr: Option<String>,
    /// The size of the whole stdout.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stdout_bytes: Option<u64>,
    /// The size of the whole stderr.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stderr_bytes: Option<u64>,
    /// Whether either stream was cut here or in the store (`read_output` reads what is stored).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub truncated: Option<bool>,
    /// Why it ended other than by its own exit: a timeout, a cancel, a failure of stigmer's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Where it ran: `local`, `sandbox` or `cloud`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// Why there (auto mode's decision, or the mode asked for).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Summary for CommandOutcome {
    fn summary(&self) -> String {
        let id = &self.id;
        if self.status == "running" {
            return format!(
                "{id} is still running; call read_output with id \"{id}\" for its output and its end"
            );
        }
        let mut text = format!("{id} {}", self.status);
        if let Some(code) = self.exit_code {
            text.push_str(&format!(", exit code {code}"));
        }
        if let Some(mode) = &self.mode {
            text.push_str(&format!(" ({mode})"));
        }
        if let Some(error) = &self.error {
            text.push_str(&format!("\n{error}"));
        }
        text.push('\n');
        for (name, body, bytes) in [
            ("stdout", &self.stdout, self.stdout_bytes),
            ("stderr", &self.stderr, self.stderr_bytes),
        ] {
            let body = body.as_deref().unwrap_or_default();
            text.push_str(&format!(
                "--- {name} ({} bytes) ---\n{body}",
                bytes.unwrap_or_default()
            ));
            if !body.is_empty() && !body.ends_with('\n') {
                text.push('\n');
            }
        }
        if self.truncated == Some(true) {
            text.push_str(&format!(
                "(output cut; read_output with id \"{id}\" reads what is stored)\n"
            ));
        }
        text
    }
}

/// How a call's wait ended.
pub enum Ending {
    /// The wait ran out with the command still running.
    Running(String),
    Ended(ExecutionResult),
}

/// Starts the command and waits for its end, `wait_secs` at most.
pub async fn run_command(
    server: &StigmerMcp,
    cfg: &Config,
    args: &RunCommandArgs,
    context: &RequestContext<RoleServer>,
) -> Result<Ending, String> {
    if cfg.is_remote() {
        return Err(
            "`stigmer mcp` runs commands through the local daemon, and TEMPORAL_ADDRESS points \
             at a remote cluster; unset it for this server, or use `stigmer run` there"
                .into(),
        );
    }
    let wait_secs = args.wait_secs.unwrap_or(DEFAULT_WAIT_SECS);
    if wait_secs > MAX_WAIT_SECS {
        return Err(format!(
            "`wait_secs` {wait_secs}: give at most {MAX_WAIT_SECS}; a longer command goes on \
             after the wait and `read_output` follows it"
        ));
    }
    let mut run = run_args(args)?;
    let session = match &args.session {
        Some(id) => {
            if args.mode.is_some() {
                return Err(
                    "`mode` with `session`: the session decides the mode; drop `mode`".into(),
                );
            }
            run.session = Some(id.clone());
            let found = crate::cli::session_of_run(&run, id)
                .await
                .map_err(|e| in_tool_terms(&format!("{e:#}")))?;
            Some(found)
        }
        None => None,
    };
    let session_cfg;
    let cfg = match &session {
        Some(s) => {
            session_cfg = StigmerMcp::config(Some(&s.mode))?;
            &session_cfg
        }
        None => cfg,
    };
    let mut request =
        crate::cli::build_request(&run, cfg).map_err(|e| in_tool_terms(&format!("{e:#}")))?;
    if let Some(s) = &session {
        crate::cli::in_session(&mut request, &run, s)
            .map_err(|e| in_tool_terms(&format!("{e:#}")))?;
    }
    let stream = client::connect_daemon(cfg).await.map_err(|e| {
        format!(
            "could not reach the stigmer daemon: {e:#}. Nothing was run; `stigmer server start` \
             in a terminal shows why it does not start"
        )
    })?;
    let mut call = Call {
        progress: Progress::new(context),
        deadline: Instant::now() + Duration::from_secs(wait_secs),
        ct: context.ct.clone(),
    };
    call.drive(server, cfg, stream, &request).await
}

/// `stigmer run`'s arguments for this call: clap's defaults for every flag the tool does not
/// have (the CLI's own checks follow in `build_request`).
fn run_args(args: &RunCommandArgs) -> Result<RunArgs, String> {
    // A command line cannot carry NUL, so the CLI's checks do not look for it; JSON can.
    if args.command.contains('\0') {
        return Err("the command contains a NUL character, which no process can run".into());
    }
    let mut run = cli_defaults()?;
    run.argv.clear();
    run.command = vec![args.command.clone()];
    run.mode = args.mode.clone();
    run.workdir = args.workdir.as_ref().map(PathBuf::from);
    run.timeout = args.timeout_secs;
    // This process's stdin is the protocol's channel: never the command's.
    run.no_stdin = true;
    if let Some(labels) = &args.labels {
        stigmer_workflows::check_labels(labels.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .map_err(|why| format!("`labels`: {why}"))?;
        run.labels = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    }
    run.env = Vec::new();
    for (name, value) in args.env.iter().flatten() {
        if name.is_empty() || name.contains(['=', '\0']) || name.contains(char::is_whitespace) {
            return Err(format!(
                "`env`: {name:?} is not a variable name (no `=`, spaces or NUL)"
            ));
        }
        if value.contains('\0') {
            return Err(format!(
                "`env`: the value of {name} contains a NUL character, which no environment can hold"
            ));
        }
        run.env.push(format!("{name}={value}"));
    }
    Ok(run)
}

/// The request `stigmer run` would send for these arguments (outside a session).
#[cfg(test)]
fn request(cfg: &Config, args: &RunCommandArgs) -> Result<RunRequest, String> {
    let run = run_args(args)?;
    crate::cli::build_request(&run, cfg).map_err(|e| in_tool_terms(&format!("{e:#}")))
}

/// `stigmer run -- true` as clap parses it: every flag at its default.
fn cli_defaults() -> Result<RunArgs, String> {
    match Cli::try_parse_from(["stigmer", "run", "--", "true"]) {
        Ok(Cli {
            command: Command::Run(run),
        }) => Ok(*run),
        Ok(_) => Err("internal error: `stigmer run` did not parse as a run".into()),
        Err(e) => Err(format!("internal error: `stigmer run` did not parse: {e}")),
    }
}

/// One `run_command` call in flight.
struct Call {
    progress: Progress,
    deadline: Instant,
    ct: tokio_util::sync::CancellationToken,
}

impl Call {
    async fn drive(
        &mut self,
        server: &StigmerMcp,
        cfg: &Config,
        stream: UnixStream,
        request: &RunRequest,
    ) -> Result<Ending, String> {
        let lost = |e: anyhow::Error| format!("lost the connection to the daemon: {e:#}");
        let (reader, mut writer) = stream.into_split();
        let mut frames = protocol::Frames::new(reader);
        protocol::write_json(&mut writer, Tag::Request, request)
            .await
            .map_err(lost)?;
        let mut started: Option<Started> = None;
        let mut cancelling = false;
        let mut ticks =
            tokio::time::interval_at(tokio::time::Instant::now() + PROGRESS_EVERY, PROGRESS_EVERY);
        let deadline = tokio::time::sleep_until(self.deadline.into());
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                frame = frames.next() => {
                    let (tag, body) = match frame {
                        Ok(Some(frame)) => frame,
                        // The daemon went away: a started execution is durable and goes on.
                        Ok(None) | Err(_) => {
                            let Some(started) = started else {
                                return Err("lost the connection to the daemon before the command \
                                            started; nothing was run; try again".into());
                            };
                            return self.follow_in_store(server, cfg, started).await;
                        }
                    };
                    match tag {
                        Tag::Started => {
                            let s: Started = serde_json::from_slice(&body)
                                .map_err(|e| format!("the daemon's answer was unreadable: {e}"))?;
                            self.progress.send(format!("started {}", s.id)).await;
                            started = Some(s);
                        }
                        Tag::Stdout => self.progress.stdout += body.len() as u64,
                        Tag::Stderr => self.progress.stderr += body.len() as u64,
                        Tag::Notice => {
                            self.progress.send(String::from_utf8_lossy(&body).into_owned()).await;
                        }
                        Tag::Result => {
                            let result: ExecutionResult = serde_json::from_slice(&body)
                                .map_err(|e| format!("the daemon's result was unreadable: {e}"))?;
                            return Ok(Ending::Ended(result));
                        }
                        // Nothing ran: a refused decision, no Docker, a bad sandbox setting.
                        Tag::Fatal => return Err(in_tool_terms(&String::from_utf8_lossy(&body))),
                        _ => {}
                    }
                }
                () = self.ct.cancelled(), if !cancelling => {
                    cancelling = true;
                    // The client has stopped listening to this call.
                    self.progress.to = None;
                    // As Ctrl-C for `run`: the daemon cancels the workflow, which kills the
                    // command; its result (cancelled) follows on this connection.
                    if let Err(e) = protocol::write_frame(&mut writer, Tag::Cancel, b"").await {
                        tracing::warn!("could not send the cancel to the daemon: {e:#}");
                    }
                }
                () = &mut deadline, if started.is_some() => {
                    let id = started.map(|s| s.id).unwrap_or_default();
                    return Ok(Ending::Running(id));
                }
                _ = ticks.tick() => {
                    if let Some(s) = &started {
                        let line = self.progress.running(&s.id);
                        self.progress.send(line).await;
                    }
                }
            }
        }
    }

    /// After the daemon was lost mid-command: start it again and follow the execution in the
    /// store, as `run` does, until it ends or the wait does.
    async fn follow_in_store(
        &mut self,
        server: &StigmerMcp,
        cfg: &Config,
        started: Started,
    ) -> Result<Ending, String> {
        let store: &Store = server.store(cfg).await?;
        let mut poll = tokio::time::interval(Duration::from_millis(100));
        let mut revive = tokio::time::interval(Duration::from_secs(2));
        let mut cancelled = false;
        loop {
            tokio::select! {
                _ = poll.tick() => {
                    if let Ok(Some(record)) = store.get_execution(&started.id).await
                        && record.status().is_some_and(Status::is_terminal)
                    {
                        return Ok(Ending::Ended(record.result()));
                    }
                    if Instant::now() >= self.deadline {
                        return Ok(Ending::Running(started.id));
                    }
                }
                _ = revive.tick() => {
                    // Connecting starts the daemon when none answers; the lock file keeps it
                    // to one.
                    if let Err(e) = client::connect_daemon(cfg).await {
                        tracing::debug!("could not restart the daemon yet: {e:#}");
                    }
                }
                () = self.ct.cancelled(), if !cancelled => {
                    cancelled = true;
                    if let Err(e) = cancel_workflow(cfg, &started.workflow_id).await {
                        tracing::warn!("could not cancel {}: {e:#}", started.id);
                    }
                }
            }
        }
    }
}

/// Cancels an execution's workflow through Temporal (when the daemon's socket is gone).
async fn cancel_workflow(cfg: &Config, workflow_id: &str) -> anyhow::Result<()> {
    let client = crate::temporal_server::connect(cfg, "stigmer-mcp").await?;
    client
        .get_workflow_handle::<AgentExecution>(workflow_id.to_string())
        .cancel(
            WorkflowCancelOptions::builder()
                .reason("cancelled by the MCP client".to_string())
                .build(),
        )
        .await?;
    Ok(())
}

/// Progress notifications, for a client that sent a progress token with its call.
struct Progress {
    to: Option<(Peer<RoleServer>, ProgressToken)>,
    began: Instant,
    last: f64,
    stdout: u64,
    stderr: u64,
}

impl Progress {
    fn new(context: &RequestContext<RoleServer>) -> Self {
        Self {
            to: context
                .meta
                .get_progress_token()
                .map(|token| (context.peer.clone(), token)),
            began: Instant::now(),
            last: 0.0,
            stdout: 0,
            stderr: 0,
        }
    }

    fn running(&self, id: &str) -> String {
        format!(
            "{id} running for {} s: {} bytes of stdout, {} of stderr so far",
            self.began.elapsed().as_secs(),
            self.stdout,
            self.stderr
        )
    }

    /// Sends a notification whose progress is the seconds since the call began (rising with
    /// every notification, as the protocol asks).
    async fn send(&mut self, message: String) {
        let Some((peer, token)) = &self.to else {
            return;
        };
        let seconds = self.began.elapsed().as_secs_f64().max(self.last + 0.001);
        self.last = seconds;
        let param = ProgressNotificationParam::new(token.clone(), seconds).with_message(message);
        if let Err(e) = peer.notify_progress(param).await {
            tracing::debug!("could not send a progress notification: {e}");
        }
    }
}

impl CommandOutcome {
    /// A command still running when the call's wait ended: its id and status alone.
    fn running(id: String) -> Self {
        Self {
            id,
            status: Status::Running.as_str().to_string(),
            exit_code: None,
            stdout: None,
            stderr: None,
            stdout_bytes: None,
            stderr_bytes: None,
            truncated: None,
            error: None,
            mode: None,
            reason: None,
        }
    }
}

/// The outcome a call answers with: the end with the output's head and tail from the store
/// (the report of the Temporal contract), or the id of a command still running.
pub async fn with_output(store: &Store, ending: Ending) -> Result<CommandOutcome, String> {
    let result = match ending {
        Ending::Running(id) => {
            return Ok(CommandOutcome::running(id));
        }
        Ending::Ended(result) => result,
    };
    let report = stigmer_activities::admit::report(store, &result.id, OUTPUT_LIMIT_BYTES)
        .await
        .map_err(|e| {
            format!(
                "{} ended ({}) but its output could not be read: {e}; read_output may get it",
                result.id, result.status
            )
        })?;
    Ok(CommandOutcome {
        id: result.id,
        status: result.status.as_str().to_string(),
        exit_code: result.exit_code,
        stdout: Some(report.stdout),
        stderr: Some(report.stderr),
        stdout_bytes: Some(report.stdout_bytes),
        stderr_bytes: Some(report.stderr_bytes),
        truncated: Some(report.truncated),
        error: result.error,
        mode: Some(report.mode),
        reason: Some(report.reason),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(json: serde_json::Value) -> RunCommandArgs {
        serde_json::from_value(json).expect("valid arguments")
    }

    fn refusal(json: serde_json::Value) -> String {
        let cfg = StigmerMcp::config(None).expect("default configuration");
        request(&cfg, &args(json)).expect_err("refused")
    }

    #[test]
    fn a_request_is_the_one_stigmer_run_builds() {
        let cfg = StigmerMcp::config(Some("local")).expect("configuration");
        let req = request(
            &cfg,
            &args(serde_json::json!({
                "command": "echo hi",
                "env": {"STIGMER_MCP_UNIT": "a=b"},
                "timeout_secs": 5,
                "workdir": "/"
            })),
        )
        .expect("request");
        assert_eq!(
            req.command,
            stigmer_workflows::CommandSpec::Shell("echo hi".into())
        );
        assert_eq!(req.workdir, "/");
        assert_eq!(req.timeout_secs, Some(5));
        assert!(req.follow);
        // Local mode: the server's environment, with the named variables on top.
        assert!(req.env.contains(&("STIGMER_MCP_UNIT".into(), "a=b".into())));
        assert!(req.env.iter().any(|(k, _)| k == "PATH"));
    }

    #[test]
    fn bad_arguments_are_refused_in_the_tools_terms() {
        for (json, says) in [
            (serde_json::json!({"command": "  "}), "the command is empty"),
            (
                serde_json::json!({"command": "true", "timeout_secs": 0}),
                "`timeout_secs` must be at least 1 second",
            ),
            (
                serde_json::json!({"command": "true", "workdir": "/nonexistent/dir"}),
                "`workdir` /nonexistent/dir",
            ),
            (
                serde_json::json!({"command": "true", "env": {"A B": "1"}}),
                "`env`: \"A B\" is not a variable name",
            ),
            (
                serde_json::json!({"command": "true", "env": {"A": "x\u{0}y"}}),
                "the value of A contains a NUL",
            ),
            (
                serde_json::json!({"command": "tr\u{0}ue"}),
                "contains a NUL",
            ),
        ] {
            let message = refusal(json.clone());
            assert!(message.contains(says), "{json}: {message}");
        }
        let bad_mode = StigmerMcp::config(Some("fast")).expect_err("refused");
        assert!(
            bad_mode.contains("\"fast\"") && bad_mode.contains("local, sandbox"),
            "{bad_mode}"
        );
        assert!(
            serde_json::from_value::<RunCommandArgs>(
                serde_json::json!({"command": "x", "timeout": 3})
            )
            .is_err(),
            "a misspelt argument is not silently ignored"
        );
    }

    #[test]
    fn a_running_outcome_is_only_its_id_and_status() {
        let outcome = CommandOutcome::running("aex-1".into());
        assert_eq!(
            serde_json::to_value(&outcome).unwrap(),
            serde_json::json!({"id": "aex-1", "status": "running"})
        );
        assert!(outcome.summary().contains("read_output"));
    }
}
