//! The toolbox of one sandbox: run commands, and run long ones in sessions and follow them.
//!
//! Two ways to run a command, as Daytona offers them:
//! - [`Toolbox::execute`] (`process/execute`) waits for the command and returns its exit code and
//!   output, stdout and stderr merged. It always sends a `timeout`: Daytona does not apply its
//!   documented default when the field is missing.
//! - a session ([`Toolbox::create_session`], [`Toolbox::start_command`]) runs a command in the
//!   background; [`Toolbox::follow_command`] then streams its stdout and stderr apart and returns
//!   its exit code. It follows over the logs WebSocket where the server offers one and falls back
//!   to polling the logs endpoint when it does not, or when the socket drops mid-stream, resuming
//!   where the socket stopped so no output is lost or repeated.

use std::time::{Duration, Instant};

use futures::StreamExt;
use reqwest::Method;
use tokio_tungstenite::tungstenite::{self, Message, client::IntoClientRequest};
use url::Url;

use crate::client::{Client, endpoint};
use crate::config::ToolboxAddressing;
use crate::demux::{Demuxer, demux_all, has_markers};
use crate::error::{Error, Result};
use crate::http::{Answer, Call, Idempotency};
use crate::model::{
    CommandLogs, ExecuteCommand, ExecuteOutput, ExecuteRequestBody, LogChunk, OutputStream,
    SessionCommand, SessionExecOutput, SessionExecuteResponseBody,
};

/// How [`Toolbox::follow_command`] follows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FollowOptions {
    /// Try the WebSocket first (`logs?follow=true`); `false` polls from the start.
    pub websocket: bool,
    /// Pause between polls of the logs endpoint.
    pub poll_interval: Duration,
    /// A WebSocket silent this long (no data, no ping) is taken as dead and polling takes over.
    pub idle_timeout: Duration,
    /// Give up following after this long; `None` follows until the command ends.
    pub deadline: Option<Duration>,
}

impl Default for FollowOptions {
    fn default() -> Self {
        FollowOptions {
            websocket: true,
            poll_interval: Duration::from_millis(500),
            idle_timeout: Duration::from_secs(90),
            deadline: None,
        }
    }
}

/// How a followed command ended.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct FollowOutcome {
    /// The command's exit code.
    pub exit_code: i32,
    /// Whether the output came (at least partly) over the WebSocket.
    pub used_websocket: bool,
    /// Whether the WebSocket ended before the command did and polling finished the job.
    pub websocket_interrupted: bool,
    /// Bytes of stdout delivered.
    pub stdout_bytes: u64,
    /// Bytes of stderr delivered.
    pub stderr_bytes: u64,
}

/// One sandbox's toolbox API.
#[derive(Clone, Debug)]
pub struct Toolbox {
    client: Client,
    sandbox_id: String,
    base: Url,
}

impl Toolbox {
    pub(crate) fn new(client: Client, sandbox_id: &str, base: Url) -> Self {
        Toolbox {
            client,
            sandbox_id: sandbox_id.to_owned(),
            base,
        }
    }

    /// The sandbox this toolbox belongs to.
    #[must_use]
    pub fn sandbox_id(&self) -> &str {
        &self.sandbox_id
    }

    /// The base URL endpoints are appended to (`{toolboxProxyUrl}/{sandboxId}`).
    #[must_use]
    pub fn base_url(&self) -> &Url {
        &self.base
    }

    pub(crate) fn url(&self, segments: &[&str]) -> Result<Url> {
        endpoint(&self.base, segments)
    }

    async fn call(
        &self,
        action: String,
        method: Method,
        url: Url,
        body: Option<serde_json::Value>,
        timeout: Duration,
        idempotency: Idempotency,
    ) -> Result<Answer> {
        self.call_with(
            action,
            method,
            url,
            body.map(crate::http::Body::Json),
            timeout,
            idempotency,
        )
        .await
    }

    /// [`Toolbox::call`] with any body (the file API's uploads are multipart forms).
    pub(crate) async fn call_with(
        &self,
        action: String,
        method: Method,
        url: Url,
        body: Option<crate::http::Body>,
        timeout: Duration,
        idempotency: Idempotency,
    ) -> Result<Answer> {
        self.client
            .inner
            .transport
            .send(Call {
                action,
                method,
                url,
                body,
                timeout,
                idempotency,
                toolbox: true,
            })
            .await
    }

    pub(crate) fn call_timeout(&self) -> Duration {
        self.client.inner.transport.call_timeout
    }

    /// Runs a command and waits for it (`process/execute`).
    ///
    /// The HTTP request is given the command's timeout plus the client's call timeout, so Daytona
    /// has the time to stop the command and say so before the client gives up.
    ///
    /// # Errors
    /// - [`Error::CommandTimeout`] when Daytona stopped the command at its timeout (HTTP 408);
    /// - [`Error::Timeout`] when no answer came at all in time (not retried: the command may
    ///   have run);
    /// - [`Error::Unsupported`] for environment variables with
    ///   [`ToolboxAddressing::ApiDeprecated`], whose `ExecuteRequest` has no `envs`;
    /// - other error answers and transport errors.
    pub async fn execute(&self, command: &ExecuteCommand) -> Result<ExecuteOutput> {
        if !command.env.is_empty()
            && self.client.config().toolbox == ToolboxAddressing::ApiDeprecated
        {
            return Err(Error::Unsupported(
                "the deprecated /toolbox routes of the Daytona API take no environment variables \
                 for process/execute; use the toolbox proxy addressing"
                    .into(),
            ));
        }
        let body = ExecuteRequestBody {
            command: &command.command,
            cwd: command.cwd.as_deref(),
            envs: (!command.env.is_empty()).then_some(&command.env),
            timeout: command.timeout_secs(),
        };
        let body = serde_json::to_value(&body).map_err(|e| Error::InvalidConfig(e.to_string()))?;
        let timeout = Duration::from_secs(command.timeout_secs()) + self.call_timeout();
        let result = self
            .call(
                format!("execute a command in sandbox `{}`", self.sandbox_id),
                Method::POST,
                self.url(&["process", "execute"])?,
                Some(body),
                timeout,
                Idempotency::RunsCommand,
            )
            .await;
        match result {
            Ok(answer) => answer.json(),
            Err(Error::Api {
                status: 408,
                message,
                ..
            }) => Err(Error::CommandTimeout {
                sandbox_id: self.sandbox_id.clone(),
                timeout: command.timeout,
                message,
            }),
            Err(e) => Err(e),
        }
    }

    /// Creates a session (`process/session`) in which commands run one after another, sharing
    /// the shell's state.
    ///
    /// # Errors
    /// Error answers (e.g. 409 for an id in use) and transport errors.
    pub async fn create_session(&self, session_id: &str) -> Result<()> {
        self.call(
            format!(
                "create session `{session_id}` in sandbox `{}`",
                self.sandbox_id
            ),
            Method::POST,
            self.url(&["process", "session"])?,
            Some(serde_json::json!({ "sessionId": session_id })),
            self.call_timeout(),
            Idempotency::Retryable,
        )
        .await
        .map(drop)
    }

    /// Deletes a session, stopping what still runs in it. A session already gone is not an error.
    ///
    /// # Errors
    /// Other error answers and transport errors.
    pub async fn delete_session(&self, session_id: &str) -> Result<()> {
        let result = self
            .call(
                format!(
                    "delete session `{session_id}` in sandbox `{}`",
                    self.sandbox_id
                ),
                Method::DELETE,
                self.url(&["process", "session", session_id])?,
                None,
                self.call_timeout(),
                Idempotency::Retryable,
            )
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Starts a command in the background in a session (`process/session/{id}/exec` with
    /// `runAsync`); returns its command id, to follow with [`Toolbox::follow_command`].
    ///
    /// # Errors
    /// Error answers and transport errors. Not retried once the command may have started.
    pub async fn start_command(&self, session_id: &str, command: &str) -> Result<String> {
        let out = self
            .session_exec(session_id, command, true, false, self.call_timeout())
            .await?;
        Ok(out.command_id)
    }

    /// [`Toolbox::start_command`] for a command that will be given input
    /// ([`Toolbox::send_input`]): Daytona is asked not to echo that input into the command's
    /// output (`suppressInputEcho`), which it does by default, as stdout.
    ///
    /// # Errors
    /// As [`Toolbox::start_command`].
    pub async fn start_command_with_input(
        &self,
        session_id: &str,
        command: &str,
    ) -> Result<String> {
        let out = self
            .session_exec(session_id, command, true, true, self.call_timeout())
            .await?;
        Ok(out.command_id)
    }

    /// Runs a command in a session and waits for it: its exit code and output, stdout and stderr
    /// apart. The session API has no timeout of its own; `timeout` bounds the wait (plus the
    /// call timeout), after which [`Error::Timeout`] is returned and the command may still be
    /// running in the session (delete the session to stop it).
    ///
    /// # Errors
    /// Error answers and transport errors. Not retried once the command may have started.
    pub async fn run_in_session(
        &self,
        session_id: &str,
        command: &str,
        timeout: Duration,
    ) -> Result<SessionExecOutput> {
        self.session_exec(
            session_id,
            command,
            false,
            false,
            timeout + self.call_timeout(),
        )
        .await
    }

    async fn session_exec(
        &self,
        session_id: &str,
        command: &str,
        run_async: bool,
        suppress_input_echo: bool,
        timeout: Duration,
    ) -> Result<SessionExecOutput> {
        let mut body = serde_json::json!({ "command": command, "runAsync": run_async });
        if suppress_input_echo {
            body["suppressInputEcho"] = serde_json::Value::Bool(true);
        }
        let answer = self
            .call(
                format!(
                    "run a command in session `{session_id}` of sandbox `{}`",
                    self.sandbox_id
                ),
                Method::POST,
                self.url(&["process", "session", session_id, "exec"])?,
                Some(body),
                timeout,
                Idempotency::RunsCommand,
            )
            .await?;
        let body: SessionExecuteResponseBody = answer.json()?;
        let command_id =
            body.cmd_id
                .filter(|id| !id.is_empty())
                .ok_or_else(|| Error::UnexpectedResponse {
                    action: format!("run a command in session `{session_id}`"),
                    detail: "the answer carries no cmdId".into(),
                })?;
        let (stdout, stderr) = match (&body.stdout, &body.stderr, &body.output) {
            (Some(_), _, _) | (_, Some(_), _) => (body.stdout.clone(), body.stderr.clone()),
            (None, None, Some(output)) if has_markers(output.as_bytes()) => {
                let logs = demux_all(output.as_bytes());
                (
                    Some(String::from_utf8_lossy(&logs.stdout).into_owned()),
                    Some(String::from_utf8_lossy(&logs.stderr).into_owned()),
                )
            }
            _ => (None, None),
        };
        Ok(SessionExecOutput {
            command_id,
            exit_code: body.exit_code,
            stdout,
            stderr,
            output: body.output,
        })
    }

    /// Sends `data` to the standard input of a running session command
    /// (`process/session/{id}/command/{cid}/input`). Returns `false` when the command has
    /// already ended (Daytona answers 410 Gone): what it did not read is not an error.
    ///
    /// What the API offers, and what it does not (so callers frame their data themselves):
    /// - `data` is a JSON string, so only text travels: binary data must be encoded;
    /// - Daytona appends a newline to data that does not end with one;
    /// - there is no end of input: a command reading to the end of its stdin waits forever
    ///   unless the caller's framing tells it where the data ends.
    ///
    /// The call waits while the command does not read (its pipe is full), up to `timeout`; it
    /// is never sent twice, since the data may have arrived.
    ///
    /// # Errors
    /// Error answers (404 for an unknown session or command, 400 for a bad body) and transport
    /// errors.
    pub async fn send_input(
        &self,
        session_id: &str,
        command_id: &str,
        data: &str,
        timeout: Duration,
    ) -> Result<bool> {
        let result = self
            .call(
                format!(
                    "send input to command `{command_id}` of session `{session_id}` in sandbox `{}`",
                    self.sandbox_id
                ),
                Method::POST,
                self.url(&[
                    "process", "session", session_id, "command", command_id, "input",
                ])?,
                Some(serde_json::json!({ "data": data })),
                timeout,
                Idempotency::RunsCommand,
            )
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(Error::Api { status: 410, .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// A session command's state; `exit_code` is `None` while it runs.
    ///
    /// # Errors
    /// Error answers (404 for an unknown session or command) and transport errors.
    pub async fn get_command(&self, session_id: &str, command_id: &str) -> Result<SessionCommand> {
        self.call(
            format!(
                "get command `{command_id}` of session `{session_id}` in sandbox `{}`",
                self.sandbox_id
            ),
            Method::GET,
            self.url(&["process", "session", session_id, "command", command_id])?,
            None,
            self.call_timeout(),
            Idempotency::Retryable,
        )
        .await?
        .json()
    }

    /// A session command's output so far, stdout and stderr apart. Reads both answers Daytona
    /// gives: JSON (`SessionCommandLogsResponse`) and plain text carrying stream markers.
    ///
    /// # Errors
    /// Error answers and transport errors.
    pub async fn command_logs(&self, session_id: &str, command_id: &str) -> Result<CommandLogs> {
        let answer = self
            .call(
                format!(
                    "get the output of command `{command_id}` of session `{session_id}` in sandbox `{}`",
                    self.sandbox_id
                ),
                Method::GET,
                self.url(&["process", "session", session_id, "command", command_id, "logs"])?,
                None,
                self.call_timeout(),
                Idempotency::Retryable,
            )
            .await?;
        Ok(parse_logs(&answer))
    }

    /// Streams a session command's output to `sink` as it is written, stdout and stderr apart,
    /// until the command ends; returns its exit code.
    ///
    /// Over the WebSocket where the server offers it; by polling the logs endpoint otherwise, or
    /// from where the socket stopped when it drops before the command ends.
    ///
    /// # Errors
    /// [`Error::LogStream`] when `options.deadline` passes, and the errors of
    /// [`Toolbox::get_command`] / [`Toolbox::command_logs`] while polling (after their retries).
    pub async fn follow_command<F>(
        &self,
        session_id: &str,
        command_id: &str,
        options: &FollowOptions,
        mut sink: F,
    ) -> Result<FollowOutcome>
    where
        F: FnMut(LogChunk) + Send,
    {
        let started = Instant::now();
        let deadline = options.deadline.map(|d| started + d);
        let mut delivered = Delivered::default();
        let mut outcome = FollowOutcome {
            exit_code: -1,
            used_websocket: false,
            websocket_interrupted: false,
            stdout_bytes: 0,
            stderr_bytes: 0,
        };

        if options.websocket {
            let ws = self
                .follow_websocket(
                    session_id,
                    command_id,
                    options,
                    deadline,
                    &mut delivered,
                    &mut sink,
                )
                .await;
            match ws {
                WsEnd::Unavailable(why) => {
                    tracing::debug!(session = session_id, command = command_id, %why, "no log WebSocket; polling");
                }
                WsEnd::Fatal(e) => return Err(e),
                WsEnd::Closed => {
                    outcome.used_websocket = true;
                    // A clean close means the command ended; confirm and take its exit code.
                    let cmd = self.get_command(session_id, command_id).await?;
                    if let Some(code) = cmd.exit_code {
                        // The socket carried everything up to the exit; one read of the logs
                        // catches anything written after the last frame.
                        self.deliver_new(session_id, command_id, &mut delivered, &mut sink)
                            .await?;
                        outcome.exit_code = code;
                        outcome.stdout_bytes = delivered.stdout;
                        outcome.stderr_bytes = delivered.stderr;
                        return Ok(outcome);
                    }
                    tracing::warn!(
                        session = session_id,
                        command = command_id,
                        "log WebSocket closed before the command ended; polling the rest"
                    );
                    outcome.websocket_interrupted = true;
                }
                WsEnd::Dropped(why) => {
                    outcome.used_websocket = true;
                    outcome.websocket_interrupted = true;
                    tracing::warn!(session = session_id, command = command_id, %why, "log WebSocket dropped; polling the rest");
                }
            }
        }

        loop {
            // Read the exit code before the logs: if the command had ended by then, the logs
            // read after it are complete.
            let cmd = self.get_command(session_id, command_id).await?;
            self.deliver_new(session_id, command_id, &mut delivered, &mut sink)
                .await?;
            if let Some(code) = cmd.exit_code {
                outcome.exit_code = code;
                outcome.stdout_bytes = delivered.stdout;
                outcome.stderr_bytes = delivered.stderr;
                return Ok(outcome);
            }
            if let Some(deadline) = deadline
                && Instant::now() + options.poll_interval > deadline
            {
                return Err(self.follow_deadline(session_id, command_id, started));
            }
            tokio::time::sleep(options.poll_interval).await;
        }
    }

    fn follow_deadline(&self, session_id: &str, command_id: &str, started: Instant) -> Error {
        Error::LogStream {
            session_id: session_id.to_owned(),
            command_id: command_id.to_owned(),
            detail: format!(
                "still running after {:?}, the follow deadline",
                started.elapsed()
            ),
        }
    }

    /// Reads the whole log and delivers what lies past what was already delivered.
    async fn deliver_new<F>(
        &self,
        session_id: &str,
        command_id: &str,
        delivered: &mut Delivered,
        sink: &mut F,
    ) -> Result<()>
    where
        F: FnMut(LogChunk) + Send,
    {
        let logs = self.command_logs(session_id, command_id).await?;
        for (stream, all, seen) in [
            (OutputStream::Stdout, &logs.stdout, &mut delivered.stdout),
            (OutputStream::Stderr, &logs.stderr, &mut delivered.stderr),
        ] {
            let from = usize::try_from(*seen).unwrap_or(usize::MAX);
            if all.len() > from {
                sink(LogChunk {
                    stream,
                    data: all[from..].to_vec(),
                });
                *seen = all.len() as u64;
            }
        }
        Ok(())
    }

    async fn follow_websocket<F>(
        &self,
        session_id: &str,
        command_id: &str,
        options: &FollowOptions,
        deadline: Option<Instant>,
        delivered: &mut Delivered,
        sink: &mut F,
    ) -> WsEnd
    where
        F: FnMut(LogChunk) + Send,
    {
        let mut url = match self.url(&[
            "process", "session", session_id, "command", command_id, "logs",
        ]) {
            Ok(u) => u,
            Err(e) => return WsEnd::Fatal(e),
        };
        url.set_query(Some("follow=true"));
        let scheme = if url.scheme() == "https" { "wss" } else { "ws" };
        if url.set_scheme(scheme).is_err() {
            return WsEnd::Unavailable(format!("cannot make a WebSocket URL of {url}"));
        }
        let mut request = match url.as_str().into_client_request() {
            Ok(r) => r,
            Err(e) => return WsEnd::Unavailable(format!("bad WebSocket request: {e}")),
        };
        match self.client.inner.transport.headers(true) {
            Ok(headers) => request.headers_mut().extend(headers),
            Err(e) => return WsEnd::Fatal(e),
        }
        let connector = (scheme == "wss")
            .then(|| tokio_tungstenite::Connector::Rustls(self.client.inner.transport.tls.clone()));
        let connect =
            tokio_tungstenite::connect_async_tls_with_config(request, None, false, connector);
        let (mut ws, _) = match tokio::time::timeout(self.call_timeout(), connect).await {
            Err(_) => return WsEnd::Unavailable("WebSocket handshake timed out".into()),
            Ok(Err(tungstenite::Error::Http(response))) => {
                let status = response.status().as_u16();
                if status == 401 || status == 403 {
                    let body = response.body().as_deref().unwrap_or_default();
                    let (message, code) = crate::http::parse_error_body(body, response.status());
                    return WsEnd::Fatal(Error::Api {
                        action: format!("follow command `{command_id}` of session `{session_id}`"),
                        status,
                        message: self.client.inner.transport.scrub(&message),
                        code,
                        retry_after: None,
                        attempts: 1,
                    });
                }
                return WsEnd::Unavailable(format!(
                    "server answered {status} to the WebSocket upgrade"
                ));
            }
            Ok(Err(e)) => return WsEnd::Unavailable(format!("WebSocket connect failed: {e}")),
            Ok(Ok(pair)) => pair,
        };

        let mut demux = Demuxer::new();
        loop {
            let idle = tokio::time::sleep(options.idle_timeout);
            let past_deadline = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d.into()).await,
                    None => std::future::pending().await,
                }
            };
            let next = tokio::select! {
                msg = ws.next() => msg,
                () = idle => return WsEnd::Dropped(format!("no frame for {:?}", options.idle_timeout)),
                () = past_deadline => {
                    return WsEnd::Fatal(Error::LogStream {
                        session_id: session_id.to_owned(),
                        command_id: command_id.to_owned(),
                        detail: "still running at the follow deadline".into(),
                    });
                }
            };
            let bytes: Vec<u8> = match next {
                None => {
                    // Stream ended without a close frame: nothing says the command ended.
                    return WsEnd::Dropped("connection ended without a close frame".into());
                }
                Some(Err(e)) => return WsEnd::Dropped(e.to_string()),
                Some(Ok(Message::Binary(b))) => b.to_vec(),
                Some(Ok(Message::Text(t))) => t.as_bytes().to_vec(),
                Some(Ok(Message::Close(frame))) => {
                    let abnormal = frame.as_ref().is_some_and(|f| {
                        f.code != tungstenite::protocol::frame::coding::CloseCode::Normal
                    });
                    if abnormal {
                        let why = frame
                            .map(|f| format!("closed with {} {}", f.code, f.reason))
                            .unwrap_or_default();
                        return WsEnd::Dropped(why);
                    }
                    // Bytes held back as a possible marker start were not one.
                    for chunk in demux.finish() {
                        delivered.deliver(chunk, sink);
                    }
                    return WsEnd::Closed;
                }
                Some(Ok(_)) => continue, // ping, pong, raw frames
            };
            for chunk in demux.push(&bytes) {
                delivered.deliver(chunk, sink);
            }
        }
    }
}

enum WsEnd {
    /// No WebSocket here (old server, proxy in the way): poll from the start.
    Unavailable(String),
    /// Closed normally: the server saw the command end.
    Closed,
    /// Ended abnormally: poll from where it stopped.
    Dropped(String),
    /// Stop following with this error.
    Fatal(Error),
}

/// Bytes delivered so far per stream; polling resumes after them.
#[derive(Default)]
struct Delivered {
    stdout: u64,
    stderr: u64,
}

impl Delivered {
    fn deliver<F: FnMut(LogChunk)>(&mut self, chunk: LogChunk, sink: &mut F) {
        let n = chunk.data.len() as u64;
        match chunk.stream {
            OutputStream::Stdout => self.stdout += n,
            OutputStream::Stderr => self.stderr += n,
        }
        sink(chunk);
    }
}

/// The logs endpoint answers JSON (`{output, stdout, stderr}`) to clients it takes for recent
/// SDKs and plain text otherwise: marked with stream prefixes when asked to split, merged when
/// not. All three are read here.
fn parse_logs(answer: &Answer) -> CommandLogs {
    if answer.is_json()
        && let Ok(serde_json::Value::Object(map)) =
            serde_json::from_slice::<serde_json::Value>(&answer.body)
    {
        let field = |k: &str| map.get(k).and_then(|v| v.as_str()).map(str::to_owned);
        match (field("stdout"), field("stderr"), field("output")) {
            (None, None, Some(output)) => return demux_all(output.as_bytes()),
            (None, None, None) => {}
            (stdout, stderr, _) => {
                return CommandLogs {
                    stdout: stdout.unwrap_or_default().into_bytes(),
                    stderr: stderr.unwrap_or_default().into_bytes(),
                };
            }
        }
    }
    demux_all(&answer.body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(ct: &str, body: &[u8]) -> Answer {
        Answer {
            content_type: Some(ct.into()),
            body: body.to_vec(),
            action: "test".into(),
        }
    }

    #[test]
    fn logs_in_json_marked_text_and_merged_text() {
        let json = answer(
            "application/json; charset=utf-8",
            br#"{"output":"x","stdout":"out\n","stderr":"err\n"}"#,
        );
        let logs = parse_logs(&json);
        assert_eq!(logs.stdout, b"out\n");
        assert_eq!(logs.stderr, b"err\n");

        let marked = answer("text/plain", b"\x01\x01\x01out\n\x02\x02\x02err\n");
        let logs = parse_logs(&marked);
        assert_eq!(logs.stdout, b"out\n");
        assert_eq!(logs.stderr, b"err\n");

        let merged = answer("text/plain; charset=utf-8", b"out\nerr\n");
        let logs = parse_logs(&merged);
        assert_eq!(logs.stdout, b"out\nerr\n");
        assert!(logs.stderr.is_empty());
    }
}
