//! Running one command in a sandbox container: streamed output, exit code, timeout,
//! cancellation, and what the kernel did to it (OOM kill, pids limit).
//!
//! Docker has no exec-kill, and an exec outlives the client that started it. So every command
//! runs under a tiny `/bin/sh` wrapper that first writes, into the request's pid file, its own
//! pid and the container's cgroup counters (pids `max` events, memory `oom_kill` events), makes
//! itself the leader of a process group (it already is one under runc; `setsid` otherwise),
//! and then `exec`s the caller's argv unchanged — argv stays argv, nothing is spliced into a
//! quoted string. Killing is then a second exec, as the same user, sending a signal to that
//! process group: TERM, and KILL after a grace period. The pid file lives in the container, so
//! a worker that restarts after a crash can still kill a command it lost ([`Engine::kill_exec`]).
//!
//! When the command has ended, one more small exec reads the counters again and checks whether
//! anything of the command's process group is still alive (a background job, say). Comparing
//! the counters with the wrapper's snapshot tells, for this command alone, whether the OOM
//! killer struck (`memory.oom_control` `oom_kill` under cgroup v1, `memory.events` under v2) and
//! whether a fork failed at the pids limit (`pids.events` `max`). `State.OOMKilled` of the
//! container cannot serve: the keep-alive survives an exec's OOM kill, and the flag, once set,
//! stays set for every later command. Where the counters are unreadable, an exit by SIGKILL is
//! checked against the engine's `oom` events for the container instead.
//!
//! Output is handed to the caller's sink chunk by chunk as the engine delivers it (frames of at
//! most a few tens of KiB); nothing is accumulated, so memory stays flat whatever the command
//! prints.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use bollard::query_parameters::EventsOptionsBuilder;
use futures::StreamExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::status_of;
use crate::spec::WORKSPACE_DIR;
use crate::{ContainerSpec, Engine, EngineError};

/// Default time between SIGTERM and SIGKILL when a command is timed out or cancelled.
pub const DEFAULT_KILL_GRACE: Duration = Duration::from_secs(2);

/// How long after the kill began the output stream may stay open before we stop waiting.
const STREAM_LINGER_AFTER_KILL: Duration = Duration::from_secs(10);

/// Reads the container's cgroup counters into `$pm` (pids limit hits) and `$ok` (OOM kills);
/// `-` when unreadable. Shell builtins only: it must work when no process can be forked.
const COUNTERS_FN: &str = r#"c() {
  pm=-; ok=-
  for f in /sys/fs/cgroup/pids/pids.events /sys/fs/cgroup/pids.events; do
    if [ -r "$f" ]; then pm=0; while read -r k v; do if [ "$k" = max ]; then pm=$v; fi; done < "$f"; break; fi
  done
  for f in /sys/fs/cgroup/memory/memory.oom_control /sys/fs/cgroup/memory.events; do
    if [ -r "$f" ]; then while read -r k v; do if [ "$k" = oom_kill ]; then ok=$v; fi; done < "$f"; break; fi
  done
}
"#;

/// The wrapper: record pid + counters, lead a process group, exec the argv.
const WRAPPER_BODY: &str = r#"c
p=$1; shift
if ! { echo "$$ $pm $ok" > "$p"; } 2>/dev/null; then
  echo "stigmer: cannot record the command's pid in $p" >&2; exit 125
fi
g=; { read -r _ _ _ _ g _ < /proc/$$/stat; } 2>/dev/null
if [ "$g" != "$$" ] && command -v setsid >/dev/null 2>&1; then exec setsid "$@"; fi
exec "$@"
"#;

/// After the command: counters before and after, and whether its group is still alive.
/// A pid file of a finished group is emptied, so a later kill can never hit a reused pid.
const CHECK_BODY: &str = r#"c
p=$1; pid=; pm0=-; ok0=-
{ read -r pid pm0 ok0 < "$p"; } 2>/dev/null
alive=0
if [ -n "$pid" ] && { kill -0 -"$pid" || kill -0 "$pid"; } 2>/dev/null; then alive=1; fi
if [ "$alive" = 0 ] && [ -n "$pid" ]; then : > "$p"; fi
echo "$pm0 $ok0 $pm $ok $alive"
"#;

/// Signal the recorded group: exit 0 signalled, 3 no pid recorded, 4 nothing alive.
const SIGNAL_BODY: &str = r#"p=$1; s=$2; pid=
{ read -r pid _ < "$p"; } 2>/dev/null
[ -n "$pid" ] || exit 3
{ kill -0 -"$pid" || kill -0 "$pid"; } 2>/dev/null || exit 4
[ "$s" = 0 ] && exit 0
kill -"$s" -"$pid" 2>/dev/null; kill -"$s" "$pid" 2>/dev/null; exit 0
"#;

/// Writes `chunks` to a command's stdin as they come, each passed to `seen` first, then closes
/// it (end of file). Once a write fails (the command is gone, or closed its stdin) the rest is
/// still received and seen, and dropped, so the sender never blocks on a command that stopped
/// reading.
pub async fn feed_stdin<W: tokio::io::AsyncWrite + Unpin>(
    mut chunks: tokio::sync::mpsc::Receiver<Vec<u8>>,
    writer: W,
    mut seen: impl FnMut(&[u8]),
) {
    use tokio::io::AsyncWriteExt;
    let mut writer = Some(writer);
    while let Some(chunk) = chunks.recv().await {
        seen(&chunk);
        if let Some(w) = writer.as_mut()
            && w.write_all(&chunk).await.is_err()
        {
            writer = None;
        }
    }
    if let Some(mut w) = writer {
        let _ = w.shutdown().await;
    }
}

/// A stdin feed that stops when the exec it serves is done with.
struct FeedOnDrop(tokio::task::JoinHandle<()>);

impl Drop for FeedOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Which stream a chunk of output came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamKind {
    /// The command's standard output.
    Stdout,
    /// The command's standard error.
    Stderr,
}

impl StreamKind {
    /// The stream's name, as the store records it.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stdout => "stdout",
            Self::Stderr => "stderr",
        }
    }
}

/// One command to run in a container.
///
/// ```
/// use std::time::Duration;
/// use stigmer_docker::ExecRequest;
/// let req = ExecRequest::new(["/bin/sh", "-c", "make test"], "/tmp/stigmer-aex-1.pid")
///     .with_env("CI", "true")
///     .with_timeout(Duration::from_secs(600));
/// assert_eq!(req.workdir, "/workspace");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecRequest {
    /// The program and its arguments, passed to the engine as they are. A shell command is
    /// the caller's `["/bin/sh", "-c", CMD]`.
    pub argv: Vec<String>,
    /// The only variables added to the image's own environment (`PATH`, `HOME`, …).
    pub env: Vec<(String, String)>,
    /// Working directory inside the container.
    pub workdir: String,
    /// Kill the command (TERM, then KILL) when it runs longer than this.
    pub timeout: Option<Duration>,
    /// Absolute path inside the container where the wrapper records the command's pid; unique
    /// per execution (see [`ExecRequest::pid_file_for`]) and worth recording by the caller,
    /// who needs it to kill a command it lost track of.
    pub pid_file: String,
    /// Time between SIGTERM and SIGKILL on timeout or cancellation.
    pub kill_grace: Duration,
    /// Run the post-command check (OOM, pids limit, leftover processes) even when the command
    /// exited 0. On by default. Turning it off saves one exec (≈ 50 ms) on the success path; the
    /// caller must then call [`Engine::check_leftovers`] before reusing the container, unless
    /// [`ExecOutcome::checked`] says the check ran anyway (a container's agent always checks).
    pub check_on_success: bool,
    /// The container's last command (it is not reused): its agent exits after the command, so
    /// the container stops by itself and its removal afterwards is quick. No effect where
    /// commands are `docker exec`s.
    pub last_command: bool,
    /// Leave what the command started in the background running after it (a session's own
    /// container: `npm run dev &` persists). The agent then neither kills the others nor counts
    /// them against the container; the caller decides what a leftover means.
    pub keep_background: bool,
}

impl ExecRequest {
    /// A request for `argv`, recording its pid in `pid_file`, in `/workspace`, no extra
    /// environment, no timeout.
    #[must_use]
    pub fn new<I, S>(argv: I, pid_file: impl Into<String>) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ExecRequest {
            argv: argv.into_iter().map(Into::into).collect(),
            env: Vec::new(),
            workdir: WORKSPACE_DIR.to_string(),
            timeout: None,
            pid_file: pid_file.into(),
            kill_grace: DEFAULT_KILL_GRACE,
            check_on_success: true,
            last_command: false,
            keep_background: false,
        }
    }

    /// The conventional pid file of an execution: `/tmp/stigmer-<id>.pid`, with anything but
    /// `[A-Za-z0-9._-]` in the id replaced by `_`.
    #[must_use]
    pub fn pid_file_for(execution_id: &str) -> String {
        let safe: String = execution_id
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        format!("/tmp/stigmer-{safe}.pid")
    }

    /// Adds one environment variable.
    #[must_use]
    pub fn with_env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Adds environment variables.
    #[must_use]
    pub fn with_envs<I, K, V>(mut self, vars: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        self.env
            .extend(vars.into_iter().map(|(k, v)| (k.into(), v.into())));
        self
    }

    /// Sets the working directory.
    #[must_use]
    pub fn with_workdir(mut self, dir: impl Into<String>) -> Self {
        self.workdir = dir.into();
        self
    }

    /// Sets the timeout.
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Sets the grace period between SIGTERM and SIGKILL.
    #[must_use]
    pub fn with_kill_grace(mut self, grace: Duration) -> Self {
        self.kill_grace = grace;
        self
    }

    /// Skips the post-command check when the command exits 0 (see
    /// [`ExecRequest::check_on_success`]).
    #[must_use]
    pub fn skip_check_on_success(mut self) -> Self {
        self.check_on_success = false;
        self
    }

    /// Leaves the command's background processes running (see
    /// [`ExecRequest::keep_background`]).
    #[must_use]
    pub fn keep_background(mut self) -> Self {
        self.keep_background = true;
        self
    }

    /// Marks the request as the container's last command (see [`ExecRequest::last_command`]).
    #[must_use]
    pub fn last_command(mut self) -> Self {
        self.last_command = true;
        self
    }

    fn validate(&self) -> Result<(), EngineError> {
        let bad = |m: String| Err(EngineError::InvalidSpec(m));
        if self.argv.is_empty() || self.argv[0].is_empty() {
            return bad("the command is empty".into());
        }
        if self.argv.iter().any(|a| a.contains('\0')) {
            return bad("an argument contains a NUL byte".into());
        }
        if !self.pid_file.starts_with('/') || self.pid_file.contains(['\0', '\n']) {
            return bad(format!(
                "pid file {:?} must be an absolute path",
                self.pid_file
            ));
        }
        if !self.workdir.starts_with('/') {
            return bad(format!(
                "working directory {:?} must be absolute",
                self.workdir
            ));
        }
        for (k, v) in &self.env {
            if k.is_empty() || k.contains(['=', '\0']) || v.contains('\0') {
                return bad(format!("environment variable name {k:?} is not valid"));
            }
        }
        Ok(())
    }

    /// The argv handed to the engine: the wrapper, then the caller's argv untouched.
    fn wrapped_argv(&self) -> Vec<String> {
        let mut argv = vec![
            "/bin/sh".to_string(),
            "-c".to_string(),
            format!("{COUNTERS_FN}{WRAPPER_BODY}"),
            "stigmer-exec".to_string(),
            self.pid_file.clone(),
        ];
        argv.extend(self.argv.iter().cloned());
        argv
    }
}

/// How a command came to an end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExecEnd {
    /// It exited (or was killed by something other than us: OOM, a signal of its own).
    Exited,
    /// It ran past [`ExecRequest::timeout`] and was killed.
    TimedOut,
    /// The cancellation token fired and it was killed.
    Cancelled,
}

/// The result of [`Engine::exec`]. A non-zero exit is a result, not an error.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct ExecOutcome {
    /// The Docker exec id.
    pub exec_id: String,
    /// Exit code (128 + signal when killed by a signal); `None` when the command could not be
    /// confirmed to have ended, or was cancelled before it started.
    pub exit_code: Option<i64>,
    /// Exited, timed out or cancelled.
    pub ended: ExecEnd,
    /// The kernel's OOM killer killed a process of the container while the command ran.
    pub oom_killed: bool,
    /// A fork failed because the container reached its pids limit while the command ran.
    pub pids_limit_hit: bool,
    /// Something of the command's process group was still alive after it ended (a background
    /// job, or a kill that did not take), or that could not be checked. Such a container must
    /// not be reused.
    pub stray_processes: bool,
    /// Whether the post-command check ran. It always runs unless the request skipped it for a
    /// command that exited 0; then the three flags above are unknown (false) and
    /// [`Engine::check_leftovers`] is due before the container is reused.
    pub checked: bool,
    /// From start to end of the command.
    pub duration: Duration,
    /// How long the agent took after the command to make sure nothing of it was left (kill
    /// what remains, reap, count); `None` on the `docker exec` path.
    pub clean_check: Option<Duration>,
}

impl ExecOutcome {
    /// A short phrase for a user when the kernel or stigmer ended the command, e.g.
    /// `killed: out of memory (limit 256 MiB)`; `None` for an ordinary exit.
    #[must_use]
    pub fn kill_reason(&self, spec: &ContainerSpec) -> Option<String> {
        let mib = spec.memory_bytes / (1024 * 1024);
        match self.ended {
            ExecEnd::TimedOut => Some("killed: timed out".to_string()),
            ExecEnd::Cancelled => Some("killed: cancelled".to_string()),
            ExecEnd::Exited if self.oom_killed => {
                Some(format!("killed: out of memory (limit {mib} MiB)"))
            }
            ExecEnd::Exited if self.pids_limit_hit => Some(format!(
                "hit the process limit ({} processes)",
                spec.pids_limit
            )),
            ExecEnd::Exited => None,
        }
    }
}

/// A chunk of output, as [`Engine::exec_to_channel`] sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputChunk {
    /// Which stream it came from.
    pub kind: StreamKind,
    /// The bytes, as the engine delivered them (not split at line ends).
    pub data: bytes::Bytes,
}

/// Where [`Engine::run_exec`] hands output.
pub(crate) enum Sink<'a> {
    Callback(&'a mut (dyn FnMut(StreamKind, &[u8]) + Send)),
    Channel(tokio::sync::mpsc::Sender<OutputChunk>),
}

/// What the signal script found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Signalled {
    Yes,
    NoPidRecorded,
    NothingAlive,
}

impl Engine {
    /// Runs `req` in the running container `container_id`, handing stdout and stderr chunks to
    /// `sink` as they come, and returns when the command has ended.
    ///
    /// `req.timeout` and `cancel` kill the command's whole process group inside the container
    /// (SIGTERM, SIGKILL after `req.kill_grace`) and are reported as
    /// [`ExecEnd::TimedOut`] / [`ExecEnd::Cancelled`]. Cancel through the token rather than by
    /// dropping this future: a dropped exec keeps running in the container.
    ///
    /// Errors before the command started ([`EngineError::Api`], [`EngineError::InvalidSpec`])
    /// mean it did not run. [`EngineError::ExecInterrupted`] means it started and may still be
    /// running: kill it with [`Engine::kill_exec`] and do not reuse the container.
    pub async fn exec(
        &self,
        container_id: &str,
        req: ExecRequest,
        sink: &mut (dyn FnMut(StreamKind, &[u8]) + Send),
        cancel: CancellationToken,
    ) -> Result<ExecOutcome, EngineError> {
        self.run_exec(container_id, req, None, Sink::Callback(sink), cancel)
            .await
    }

    /// [`Engine::exec`] for async consumers: output chunks are sent to `tx` as they come. A
    /// full channel holds the command's output back (memory stays bounded) without holding
    /// back the timeout or the cancellation; a dropped receiver discards the rest of the
    /// output (cancel through the token to stop the command).
    pub async fn exec_to_channel(
        &self,
        container_id: &str,
        req: ExecRequest,
        tx: tokio::sync::mpsc::Sender<OutputChunk>,
        cancel: CancellationToken,
    ) -> Result<ExecOutcome, EngineError> {
        self.run_exec(container_id, req, None, Sink::Channel(tx), cancel)
            .await
    }

    /// [`Engine::exec_to_channel`] with the command's standard input, when `stdin` is given:
    /// its chunks, written as they come, then end of file. It runs as a `docker exec` even in a container
    /// with an agent (the engine's own stdin pipe holds a command that does not read back, and
    /// never its cancellation). A command that stops reading is not an error: the rest of the
    /// chunks are received and dropped, so the sender never blocks.
    pub async fn exec_with_stdin(
        &self,
        container_id: &str,
        req: ExecRequest,
        stdin: Option<tokio::sync::mpsc::Receiver<Vec<u8>>>,
        tx: tokio::sync::mpsc::Sender<OutputChunk>,
        cancel: CancellationToken,
    ) -> Result<ExecOutcome, EngineError> {
        self.run_exec(container_id, req, stdin, Sink::Channel(tx), cancel)
            .await
    }

    /// Serves the container's egress proxy (when it has one) before the command, and hands what
    /// the proxy refused meanwhile to the command's stderr after it.
    async fn run_exec(
        &self,
        container_id: &str,
        req: ExecRequest,
        stdin: Option<tokio::sync::mpsc::Receiver<Vec<u8>>>,
        mut sink: Sink<'_>,
        cancel: CancellationToken,
    ) -> Result<ExecOutcome, EngineError> {
        let egress = self.serve_egress(container_id).await;
        let outcome = self
            .run_exec_inner(container_id, req, stdin, &mut sink, cancel)
            .await;
        let notices = egress
            .map(|name| self.egress_notices(&name))
            .unwrap_or_default();
        for line in notices {
            let data = bytes::Bytes::from(format!("{line}\n"));
            match &mut sink {
                Sink::Callback(f) => f(StreamKind::Stderr, &data),
                Sink::Channel(tx) => {
                    let _ = tx
                        .send(OutputChunk {
                            kind: StreamKind::Stderr,
                            data,
                        })
                        .await;
                }
            }
        }
        outcome
    }

    async fn run_exec_inner(
        &self,
        container_id: &str,
        req: ExecRequest,
        stdin: Option<tokio::sync::mpsc::Receiver<Vec<u8>>>,
        sink: &mut Sink<'_>,
        cancel: CancellationToken,
    ) -> Result<ExecOutcome, EngineError> {
        req.validate()?;
        if cancel.is_cancelled() {
            return Ok(ExecOutcome {
                exec_id: String::new(),
                exit_code: None,
                ended: ExecEnd::Cancelled,
                oom_killed: false,
                pids_limit_hit: false,
                stray_processes: false,
                checked: true,
                duration: Duration::ZERO,
                clean_check: None,
            });
        }
        if stdin.is_none() && self.uses_agent(container_id).await {
            return self.run_agent_exec(container_id, &req, sink, cancel).await;
        }
        let env: Vec<String> = req.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let options = CreateExecOptions::<String> {
            attach_stdin: Some(stdin.is_some()),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            tty: Some(false),
            env: Some(env),
            cmd: Some(req.wrapped_argv()),
            working_dir: Some(req.workdir.clone()),
            privileged: Some(false),
            ..Default::default()
        };
        let exec_id = self
            .docker
            .create_exec(container_id, options)
            .await
            .map_err(|e| {
                EngineError::api(
                    format!("could not create an exec in container {container_id}"),
                    e,
                )
            })?
            .id;

        let wall_start = SystemTime::now();
        let started = Instant::now();
        let start = StartExecOptions {
            detach: false,
            tty: false,
            output_capacity: Some(64 * 1024),
        };
        let (mut output, _feeding) = match self.docker.start_exec(&exec_id, Some(start)).await {
            Ok(StartExecResults::Attached { output, input }) => (
                output,
                stdin.map(|chunks| FeedOnDrop(tokio::spawn(feed_stdin(chunks, input, |_| {})))),
            ),
            Ok(StartExecResults::Detached) => {
                return Err(EngineError::Unexpected(format!(
                    "exec {exec_id} in container {container_id} started detached"
                )));
            }
            Err(e) if matches!(status_of(&e), Some(400..=499)) => {
                return Err(EngineError::api(
                    format!("could not start exec {exec_id} in container {container_id}"),
                    e,
                ));
            }
            Err(source) => {
                return Err(EngineError::ExecInterrupted {
                    container: container_id.to_string(),
                    exec_id,
                    source,
                });
            }
        };

        let far = started + Duration::from_secs(365 * 24 * 3600);
        let has_timeout = req.timeout.is_some();
        let timeout_sleep = tokio::time::sleep_until(req.timeout.map_or(far, |t| started + t));
        tokio::pin!(timeout_sleep);
        let linger_sleep = tokio::time::sleep_until(far);
        tokio::pin!(linger_sleep);

        let mut ended = ExecEnd::Exited;
        let mut killer: Option<tokio::task::JoinHandle<Result<bool, EngineError>>> = None;
        let mut receiver_gone = false;
        // Timeout and cancellation start the kill; the stream is drained until it ends (or
        // lingers too long), so the command is never blocked on a full pipe meanwhile.
        macro_rules! start_kill {
            ($why:expr) => {{
                ended = $why;
                killer = Some(self.spawn_killer(container_id, &req));
                linger_sleep
                    .as_mut()
                    .reset(Instant::now() + req.kill_grace + STREAM_LINGER_AFTER_KILL);
            }};
        }
        'stream: loop {
            let item = tokio::select! {
                biased;
                () = cancel.cancelled(), if killer.is_none() => {
                    start_kill!(ExecEnd::Cancelled);
                    continue 'stream;
                }
                () = &mut timeout_sleep, if killer.is_none() && has_timeout => {
                    start_kill!(ExecEnd::TimedOut);
                    continue 'stream;
                }
                () = &mut linger_sleep, if killer.is_some() => {
                    warn_lingering(container_id, &exec_id);
                    break 'stream;
                },
                item = output.next() => item,
            };
            let (kind, data) = match item {
                Some(Ok(LogOutput::StdOut { message })) => (StreamKind::Stdout, message),
                // Without a tty, unframed bytes are the engine's own messages, never the
                // command's stdout.
                Some(Ok(LogOutput::StdErr { message } | LogOutput::Console { message })) => {
                    (StreamKind::Stderr, message)
                }
                Some(Ok(LogOutput::StdIn { .. })) => continue 'stream,
                Some(Err(_)) if killer.is_some() => break 'stream,
                Some(Err(source)) => {
                    return Err(EngineError::ExecInterrupted {
                        container: container_id.to_string(),
                        exec_id,
                        source,
                    });
                }
                None => break 'stream,
            };
            match sink {
                Sink::Callback(f) => f(kind, &data),
                Sink::Channel(tx) if !receiver_gone => {
                    // A slow receiver holds the command back (bounded memory), but never the
                    // timeout or the cancellation.
                    let send = tx.send(OutputChunk { kind, data });
                    tokio::pin!(send);
                    loop {
                        tokio::select! {
                                    biased;
                                    sent = &mut send => {
                                        receiver_gone = sent.is_err();
                                        break;
                                    }
                                    () = cancel.cancelled(), if killer.is_none() => start_kill!(ExecEnd::Cancelled),
                                    () = &mut timeout_sleep, if killer.is_none() && has_timeout => {
                                        start_kill!(ExecEnd::TimedOut);
                                    }
                                    () = &mut linger_sleep, if killer.is_some() => {
                            warn_lingering(container_id, &exec_id);
                            break 'stream;
                        },
                                }
                    }
                }
                Sink::Channel(_) => {}
            }
        }
        drop(output);
        let duration = started.elapsed();

        let mut kill_failed = false;
        if let Some(handle) = killer {
            match handle.await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::warn!(container = container_id, error = %e, "killing the command failed");
                    kill_failed = true;
                }
                Err(join) => {
                    tracing::warn!(container = container_id, error = %join, "the kill task failed");
                    kill_failed = true;
                }
            }
        }

        let exit_code = self.wait_exit_code(&exec_id).await;
        let mut outcome = ExecOutcome {
            exec_id,
            exit_code,
            ended,
            oom_killed: false,
            pids_limit_hit: false,
            stray_processes: kill_failed || exit_code.is_none(),
            checked: false,
            duration,
            clean_check: None,
        };
        let clean_success = exit_code == Some(0) && ended == ExecEnd::Exited;
        if req.check_on_success || !clean_success {
            self.check_after(container_id, &req.pid_file, wall_start, &mut outcome)
                .await;
            outcome.checked = true;
        }
        Ok(outcome)
    }

    /// Whether anything of the process group recorded in `pid_file` is still alive in
    /// `container_id` (a background job of a finished command). When nothing is, the pid file
    /// is emptied so a later kill can never hit a reused pid. For commands run with
    /// [`ExecRequest::skip_check_on_success`], before their container is reused.
    pub async fn check_leftovers(
        &self,
        container_id: &str,
        pid_file: &str,
    ) -> Result<bool, EngineError> {
        let script = format!("{COUNTERS_FN}{CHECK_BODY}");
        let (code, out) = self
            .run_small(
                container_id,
                &["/bin/sh", "-c", &script, "stigmer-check", pid_file],
            )
            .await?;
        match (code, out.split_whitespace().nth(4)) {
            (Some(0), Some(alive)) => Ok(alive == "1"),
            _ => Err(EngineError::Unexpected(format!(
                "checking container {container_id} for leftovers ended with {code:?}: {out}"
            ))),
        }
    }

    /// Kills the command whose pid `pid_file` records in `container_id`, with its whole process
    /// group: SIGTERM, then SIGKILL after 2 s. Returns whether anything was running. For a
    /// command this worker lost (a crash, an interrupted exec).
    pub async fn kill_exec(&self, container_id: &str, pid_file: &str) -> Result<bool, EngineError> {
        terminate_group(
            self.clone(),
            container_id.to_string(),
            pid_file.to_string(),
            DEFAULT_KILL_GRACE,
            false,
        )
        .await
    }

    fn spawn_killer(
        &self,
        container_id: &str,
        req: &ExecRequest,
    ) -> tokio::task::JoinHandle<Result<bool, EngineError>> {
        tokio::spawn(terminate_group(
            self.clone(),
            container_id.to_string(),
            req.pid_file.clone(),
            req.kill_grace,
            true,
        ))
    }

    /// The exec's exit code, once the engine reports it ended (it may lag the stream's end).
    async fn wait_exit_code(&self, exec_id: &str) -> Option<i64> {
        for attempt in 0..50 {
            match self.docker.inspect_exec(exec_id).await {
                Ok(info) if info.running != Some(true) => return info.exit_code,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(exec = exec_id, error = %e, "could not inspect the exec");
                    if attempt > 3 {
                        return None;
                    }
                }
            }
            // The engine usually marks the exec ended within a few ms of its stream closing:
            // poll fast first (this wait is on every command's path), then back off.
            tokio::time::sleep(Duration::from_millis((2u64 << attempt.min(4)).min(40))).await;
        }
        None
    }

    /// Fills in the OOM / pids-limit / stray flags from the post-command check.
    async fn check_after(
        &self,
        container_id: &str,
        pid_file: &str,
        since: SystemTime,
        outcome: &mut ExecOutcome,
    ) {
        let script = format!("{COUNTERS_FN}{CHECK_BODY}");
        let result = self
            .run_small(
                container_id,
                &["/bin/sh", "-c", &script, "stigmer-check", pid_file],
            )
            .await;
        let (code, out) = match result {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(container = container_id, error = %e, "could not check the container after the command");
                outcome.stray_processes = true;
                outcome.pids_limit_hit = self.pids_full(container_id).await;
                return;
            }
        };
        let fields: Vec<&str> = out.split_whitespace().collect();
        if code != Some(0) || fields.len() != 5 {
            tracing::warn!(
                container = container_id,
                ?code,
                out,
                "unexpected answer from the post-command check"
            );
            outcome.stray_processes = true;
            outcome.pids_limit_hit = self.pids_full(container_id).await;
            return;
        }
        let num = |s: &str| s.parse::<u64>().ok();
        if let (Some(before), Some(after)) = (num(fields[0]), num(fields[2])) {
            outcome.pids_limit_hit = after > before;
        }
        match (num(fields[1]), num(fields[3])) {
            (Some(before), Some(after)) => outcome.oom_killed = after > before,
            _ if outcome.exit_code == Some(137) && outcome.ended == ExecEnd::Exited => {
                // The event can trail the exit by a moment.
                tokio::time::sleep(Duration::from_millis(200)).await;
                outcome.oom_killed = match self.oom_events_since(container_id, since).await {
                    Ok(n) => n > 0,
                    Err(e) => {
                        tracing::warn!(container = container_id, error = %e, "could not read oom events");
                        false
                    }
                };
            }
            _ => {}
        }
        if fields[4] == "1" {
            outcome.stray_processes = true;
        }
    }

    /// Whether the container's processes fill its pids limit, seen from the engine's side
    /// (its process list needs no fork inside the container). The explanation of last resort
    /// when the post-command check could not even start: what a fork bomb's leftovers cause.
    async fn pids_full(&self, container_id: &str) -> bool {
        let limit = match self.docker.inspect_container(container_id, None).await {
            Ok(info) => info.host_config.and_then(|h| h.pids_limit).unwrap_or(0),
            Err(_) => return false,
        };
        if limit <= 0 {
            return false;
        }
        match self
            .docker
            .top_processes(container_id, None::<bollard::query_parameters::TopOptions>)
            .await
        {
            // One short of the limit counts: the command's own shell has just exited.
            Ok(top) => top.processes.map_or(0, |p| p.len()) as i64 + 1 >= limit,
            Err(_) => false,
        }
    }

    /// How many `oom` events the engine logged for the container since `since` (the engine
    /// keeps a bounded backlog of recent events). The fallback OOM signal where the cgroup
    /// counters cannot be read, and a way to explain why a container's process died.
    pub async fn oom_events_since(
        &self,
        container_id: &str,
        since: SystemTime,
    ) -> Result<usize, EngineError> {
        let secs = |t: SystemTime| {
            t.duration_since(UNIX_EPOCH)
                .map(|d| format!("{}.{:09}", d.as_secs(), d.subsec_nanos()))
                .unwrap_or_else(|_| "0".into())
        };
        let filters = HashMap::from([
            ("container", vec![container_id.to_string()]),
            ("event", vec!["oom".to_string()]),
            ("type", vec!["container".to_string()]),
        ]);
        let options = EventsOptionsBuilder::new()
            .since(&secs(since))
            .until(&secs(SystemTime::now()))
            .filters(&filters)
            .build();
        let action = || format!("could not read the engine's events for container {container_id}");
        let events = self.docker.events(Some(options));
        tokio::pin!(events);
        let count = tokio::time::timeout(Duration::from_secs(10), async {
            let mut n = 0;
            while let Some(event) = events.next().await {
                let event = event.map_err(|e| EngineError::api(action(), e))?;
                if event.action.as_deref() == Some("oom") {
                    n += 1;
                }
            }
            Ok::<_, EngineError>(n)
        })
        .await
        .map_err(|_| EngineError::Unexpected(format!("{}: no answer in 10 s", action())))??;
        Ok(count)
    }

    /// Sends `signal` (a name such as `TERM`, or `0` to probe) to the recorded process group.
    async fn signal_group(
        &self,
        container_id: &str,
        pid_file: &str,
        signal: &str,
    ) -> Result<Signalled, EngineError> {
        let (code, _) = self
            .run_small(
                container_id,
                &[
                    "/bin/sh",
                    "-c",
                    SIGNAL_BODY,
                    "stigmer-kill",
                    pid_file,
                    signal,
                ],
            )
            .await?;
        match code {
            Some(0) => Ok(Signalled::Yes),
            Some(3) => Ok(Signalled::NoPidRecorded),
            Some(4) => Ok(Signalled::NothingAlive),
            other => Err(EngineError::Unexpected(format!(
                "sending {signal} to the command in container {container_id} ended with {other:?}"
            ))),
        }
    }

    /// Runs a short internal command (as the container's user, no environment) and returns its
    /// exit code and up to 4 KiB of its stdout.
    async fn run_small(
        &self,
        container_id: &str,
        argv: &[&str],
    ) -> Result<(Option<i64>, String), EngineError> {
        let options = CreateExecOptions::<String> {
            attach_stdin: Some(false),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            tty: Some(false),
            env: Some(Vec::new()),
            cmd: Some(argv.iter().map(|s| (*s).to_string()).collect()),
            working_dir: Some("/".into()),
            ..Default::default()
        };
        let action = || format!("could not run a helper command in container {container_id}");
        let exec_id = self
            .docker
            .create_exec(container_id, options)
            .await
            .map_err(|e| EngineError::api(action(), e))?
            .id;
        let mut stdout = Vec::new();
        match self
            .docker
            .start_exec(&exec_id, None)
            .await
            .map_err(|e| EngineError::api(action(), e))?
        {
            StartExecResults::Attached { mut output, .. } => {
                while let Some(item) = output.next().await {
                    match item {
                        Ok(LogOutput::StdOut { message } | LogOutput::Console { message }) => {
                            if stdout.len() < 4096 {
                                stdout.extend_from_slice(&message);
                            }
                        }
                        Ok(_) => {}
                        Err(e) => return Err(EngineError::api(action(), e)),
                    }
                }
            }
            StartExecResults::Detached => {}
        }
        let code = self.wait_exit_code(&exec_id).await;
        Ok((code, String::from_utf8_lossy(&stdout).into_owned()))
    }
}

fn warn_lingering(container_id: &str, exec_id: &str) {
    tracing::warn!(
        container = container_id,
        exec = exec_id,
        "output stream still open after the kill; giving up on it"
    );
}

/// TERM the group (retrying while the wrapper has not yet recorded its pid), wait up to
/// `grace` for it to go, then KILL. `Ok(true)` when something was running.
async fn terminate_group(
    engine: Engine,
    container_id: String,
    pid_file: String,
    grace: Duration,
    wait_for_pid: bool,
) -> Result<bool, EngineError> {
    let t0 = Instant::now();
    loop {
        match engine
            .signal_group(&container_id, &pid_file, "TERM")
            .await?
        {
            Signalled::Yes => break,
            Signalled::NothingAlive => return Ok(false),
            Signalled::NoPidRecorded if wait_for_pid && t0.elapsed() < grace => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Signalled::NoPidRecorded => return Ok(false),
        }
    }
    while t0.elapsed() < grace {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if engine.signal_group(&container_id, &pid_file, "0").await? != Signalled::Yes {
            return Ok(true);
        }
    }
    for _ in 0..10 {
        match engine
            .signal_group(&container_id, &pid_file, "KILL")
            .await?
        {
            Signalled::Yes => tokio::time::sleep(Duration::from_millis(200)).await,
            Signalled::NothingAlive | Signalled::NoPidRecorded => return Ok(true),
        }
    }
    let pgid = tokio::time::timeout(
        Duration::from_secs(5),
        engine.run_small(
            &container_id,
            &[
                "/bin/sh",
                "-c",
                "read -r p _ < \"$1\"; echo \"$p\"",
                "x",
                &pid_file,
            ],
        ),
    )
    .await
    .ok()
    .and_then(Result::ok)
    .and_then(|(_, out)| out.trim().parse().ok())
    .unwrap_or(-1);
    Err(EngineError::KillFailed {
        container: container_id,
        pgid,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argv_is_passed_through_untouched() {
        let req = ExecRequest::new(["echo", "a b", "$HOME", "'\""], "/tmp/p.pid");
        let argv = req.wrapped_argv();
        assert_eq!(&argv[..2], ["/bin/sh", "-c"]);
        assert_eq!(argv[3], "stigmer-exec");
        assert_eq!(argv[4], "/tmp/p.pid");
        assert_eq!(&argv[5..], ["echo", "a b", "$HOME", "'\""]);
    }

    #[test]
    fn validation() {
        assert!(
            ExecRequest::new(Vec::<String>::new(), "/tmp/p")
                .validate()
                .is_err()
        );
        assert!(ExecRequest::new(["true"], "rel.pid").validate().is_err());
        assert!(
            ExecRequest::new(["true"], "/tmp/p")
                .with_env("A=B", "c")
                .validate()
                .is_err()
        );
        assert!(
            ExecRequest::new(["true"], "/tmp/p")
                .with_workdir("x")
                .validate()
                .is_err()
        );
        assert!(
            ExecRequest::new(["true"], "/tmp/p")
                .with_env("A", "b=c")
                .validate()
                .is_ok()
        );
    }

    #[test]
    fn pid_file_names_are_safe() {
        assert_eq!(
            ExecRequest::pid_file_for("aex-01H/../x y"),
            "/tmp/stigmer-aex-01H_.._x_y.pid"
        );
    }

    #[test]
    fn kill_reasons() {
        let spec = ContainerSpec::new("i").with_memory_bytes(256 * 1024 * 1024);
        let mut o = ExecOutcome {
            exec_id: "e".into(),
            exit_code: Some(137),
            ended: ExecEnd::Exited,
            oom_killed: true,
            pids_limit_hit: false,
            stray_processes: false,
            checked: true,
            duration: Duration::ZERO,
            clean_check: None,
        };
        assert_eq!(
            o.kill_reason(&spec).as_deref(),
            Some("killed: out of memory (limit 256 MiB)")
        );
        o.oom_killed = false;
        assert_eq!(o.kill_reason(&spec), None);
        o.ended = ExecEnd::TimedOut;
        assert_eq!(o.kill_reason(&spec).as_deref(), Some("killed: timed out"));
    }
}
