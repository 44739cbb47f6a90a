//! `stigmer mcp`: the Model Context Protocol server agents reach stigmer through, on stdin and
//! stdout, built on the official SDK (`rmcp`). Each tool is an operation the CLI already has:
//! `run_command` is `stigmer run` over the daemon's socket, `read_output` is `stigmer logs` from
//! an offset, `explain_command` is `stigmer explain` (docs/mcp.md).
//!
//! stdout carries JSON-RPC only: stigmer's own messages (the daemon starting, logs) go to stderr.
//! A command that ran is a result, whatever its exit code; what kept it from running (a bad
//! argument, an unknown id, a refused decision, no daemon) is a tool error (`isError`) whose text
//! says what to do, so the model can correct its call.

mod output;
mod run;
mod session;

pub use output::{OutputPage, ReadOutputArgs, read_output};
pub use run::{CommandOutcome, RunCommandArgs};

use crate::config::{Config, Flags};
use anyhow::{Context, Result};
use rmcp::handler::server::tool::{IntoCallToolResult, ToolRouter, schema_for_output};
use rmcp::handler::server::wrapper::{Json, Parameters};
use rmcp::model::{CallToolResponse, ContentBlock};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServiceExt, tool, tool_handler, tool_router};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use stigmer_activities::store::Store;
use tokio::sync::{OnceCell, RwLock};

/// How long, after the client has gone, calls still in flight get to tell the daemon to cancel
/// their commands before the process leaves.
const DRAIN: Duration = Duration::from_secs(10);

/// Serves MCP on stdin/stdout until the client closes the connection.
pub async fn serve() -> Result<i32> {
    let server = StigmerMcp::new();
    let calls = server.calls.clone();
    let running = server
        .serve(rmcp::transport::stdio())
        .await
        .context("the MCP client did not complete the handshake")?;
    let quit = running.waiting().await;
    tracing::debug!("MCP connection closed: {quit:?}");
    // rmcp cancels the calls still running when the connection closes; each then sends its
    // command's cancel to the daemon. Wait for them (each holds a read guard), within reason.
    let _ = tokio::time::timeout(DRAIN, calls.write()).await;
    Ok(0)
}

/// The server: its tools and what they share.
#[derive(Clone)]
pub struct StigmerMcp {
    /// The store, opened on first use (the daemon creates it, so it may not exist at start).
    store: Arc<OnceCell<Store>>,
    /// Held shared by every call in flight, so that leaving can wait for them.
    calls: Arc<RwLock<()>>,
    tools: ToolRouter<Self>,
}

impl Default for StigmerMcp {
    fn default() -> Self {
        Self::new()
    }
}

impl StigmerMcp {
    #[must_use]
    pub fn new() -> Self {
        Self {
            store: Arc::new(OnceCell::new()),
            calls: Arc::new(RwLock::new(())),
            tools: Self::command_tools() + Self::session_tools(),
        }
    }

    /// The configuration a call runs under: the user's, with `mode` as `--mode` would set it.
    fn config(mode: Option<&str>) -> Result<Config, String> {
        let mut flags = Flags::new();
        if let Some(mode) = mode {
            flags.insert("execution_mode", ("`mode`".into(), mode.to_string()));
        }
        Config::load(&flags).map_err(|e| format!("{e:#}"))
    }

    /// The store, opened once it exists.
    async fn store(&self, cfg: &Config) -> Result<&Store, String> {
        self.store
            .get_or_try_init(|| crate::ops::open_for_reading(cfg))
            .await
            .map_err(|e| {
                format!(
                    "could not open the store ({e:#}); `run_command` starts the daemon, which \
                     creates it"
                )
            })
    }
}

/// A tool's result: its `structuredContent` (rmcp's [`Json`], which the output schema
/// describes) with a short text a model reads in place of the JSON dump.
pub struct Answer<T>(pub T);

/// The short text of a result.
pub trait Summary {
    fn summary(&self) -> String;
}

impl<T: Serialize + JsonSchema + Summary + 'static> IntoCallToolResult for Answer<T> {
    fn into_call_tool_result(self) -> Result<CallToolResponse, ErrorData> {
        let text = self.0.summary();
        let mut response = Json(self.0).into_call_tool_result()?;
        if let CallToolResponse::Complete(result) = &mut response {
            result.content = vec![ContentBlock::text(text)];
        }
        Ok(response)
    }
}

/// `explain_command`'s input.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExplainCommandArgs {
    /// The command, one shell string, as `run_command` would get it.
    pub command: String,
    /// The directory whose trusted `.stigmer/policy.toml` applies (default: the server's
    /// working directory).
    #[serde(default)]
    pub workdir: Option<String>,
}

/// Where auto mode would run a command, and why.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Explanation {
    /// `local` (on this host) or `sandbox` (a hardened container).
    pub decision: String,
    pub reason: String,
    /// The policy rule that decided.
    pub rule: String,
    /// The part of the command the rule matched, when it was one part of several.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub part: Option<String>,
    /// Project policies that were ignored (not trusted), and why.
    pub notices: Vec<String>,
}

impl Summary for Explanation {
    fn summary(&self) -> String {
        // The reason names its rule already.
        let mut text = format!("{}: {}", self.decision, self.reason);
        for notice in &self.notices {
            text.push_str(&format!("\nnote: {notice}"));
        }
        text
    }
}

/// The explanation `stigmer explain` prints, for a tool call.
pub fn explain(args: &ExplainCommandArgs) -> Result<Explanation, String> {
    let spec = crate::cli::command_spec(std::slice::from_ref(&args.command), &[])
        .map_err(|e| in_tool_terms(&format!("{e:#}")))?;
    let workdir = crate::cli::resolve_workdir(args.workdir.as_ref().map(Into::into).as_ref())
        .map_err(|e| in_tool_terms(&format!("{e:#}")))?;
    let (decision, notices) = crate::cli::auto_decide(&spec, &workdir, false)
        .map_err(|e| in_tool_terms(&format!("{e:#}")))?;
    Ok(Explanation {
        decision: decision.decision.to_string(),
        reason: decision.reason,
        rule: decision.rule,
        part: decision.part,
        notices,
    })
}

/// A CLI message with the CLI's flag names replaced by the tool's argument names.
pub(crate) fn in_tool_terms(message: &str) -> String {
    [
        ("--mode", "`mode`"),
        ("--workdir", "`workdir`"),
        ("--timeout", "`timeout_secs`"),
    ]
    .iter()
    .fold(message.to_string(), |text, (flag, arg)| {
        text.replace(flag, arg)
    })
}

#[tool_router(router = command_tools, vis = "pub")]
impl StigmerMcp {
    /// Runs a command as a durable stigmer execution and answers with its end, or with its id
    /// while it still runs.
    #[tool(
        description = "Run a shell command as a durable stigmer execution (on this host, or in a \
        hardened sandbox container) and return its exit code with stdout and stderr kept apart \
        (each bounded: head and tail). A non-zero exit is a normal result, not an error. If the \
        command is still running after `wait_secs` (default 60), the result is {id, status: \
        \"running\"}: the command goes on, and `read_output` with that id gets its output and \
        its end. Cancelling the call kills the command.",
        output_schema = schema_for_output::<CommandOutcome>()
    )]
    async fn run_command(
        &self,
        Parameters(args): Parameters<RunCommandArgs>,
        context: RequestContext<RoleServer>,
    ) -> Result<Answer<CommandOutcome>, String> {
        let _call = self.calls.clone().read_owned().await;
        let cfg = Self::config(args.mode.as_deref()).map_err(|e| in_tool_terms(&e))?;
        let outcome = run::run_command(self, &cfg, &args, &context).await?;
        let store = self.store(&cfg).await?;
        run::with_output(store, outcome).await.map(Answer)
    }

    /// Reads an execution's stored output from a byte offset.
    #[tool(
        description = "Read the output of an execution (running or ended) from a byte offset: \
        stdout and stderr as they were stored, both streams counted together in the order they \
        were produced. Returns the status, the exit code once ended, `next_offset` for the next \
        call, and `more` (false once the execution has ended and everything was read).",
        output_schema = schema_for_output::<OutputPage>()
    )]
    async fn read_output(
        &self,
        Parameters(args): Parameters<ReadOutputArgs>,
    ) -> Result<Answer<OutputPage>, String> {
        let cfg = Self::config(None)?;
        let store = self.store(&cfg).await?;
        read_output(store, &args).await.map(Answer)
    }

    /// Where auto mode would run a command, and why.
    #[tool(
        description = "Explain where `mode: \"auto\"` would run a command (`local` on this host, \
        or `sandbox`) and why, under the user's policy and the project's trusted policy. \
        Runs nothing.",
        output_schema = schema_for_output::<Explanation>(),
        annotations(read_only_hint = true)
    )]
    async fn explain_command(
        &self,
        Parameters(args): Parameters<ExplainCommandArgs>,
    ) -> Result<Answer<Explanation>, String> {
        explain(&args).map(Answer)
    }
}

#[tool_handler(
    router = self.tools,
    name = "stigmer",
    instructions = "stigmer runs commands durably, on this host or in hardened sandbox \
    containers, and records each as an execution with an id. Use run_command to run one; \
    read_output to follow one that is still running; explain_command to see where auto mode \
    would run a command. For multi-step work, start_session, then run_command with `session` \
    (the directory and exported variables carry over), write_file and read_file to move files, \
    and end_session."
)]
impl rmcp::ServerHandler for StigmerMcp {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_flag_names_read_as_the_tools_arguments() {
        assert_eq!(
            in_tool_terms("--timeout must be at least 1 second"),
            "`timeout_secs` must be at least 1 second"
        );
        assert!(in_tool_terms("--workdir /x: No such file").starts_with("`workdir` /x"));
    }

    #[test]
    fn every_tool_has_a_description_and_an_object_schema_for_its_input_and_result() {
        let tools = StigmerMcp::new().tools.list_all();
        let mut names: Vec<_> = tools.iter().map(|t| t.name.to_string()).collect();
        names.sort();
        assert_eq!(
            names,
            [
                "end_session",
                "explain_command",
                "read_file",
                "read_output",
                "run_command",
                "start_session",
                "write_file"
            ],
            "{names:?}"
        );
        for tool in tools {
            assert!(tool.description.is_some(), "{}", tool.name);
            assert_eq!(tool.input_schema["type"], "object", "{}", tool.name);
            let output = tool.output_schema.expect("an output schema");
            assert_eq!(output["type"], "object", "{}", tool.name);
        }
    }
}
