//! The client side: `stigmer run`, `logs`, and `executions`.
//!
//! Against the local daemon, `run` speaks the socket protocol and the daemon streams the output
//! live. Against a remote cluster (`TEMPORAL_ADDRESS`), `run` starts the workflow itself and
//! follows the output through the store. Either way stdout carries only the command's stdout
//! (or the JSON of `--output json`), and stigmer's own messages go to stderr.

use crate::config::Config;
use crate::daemon;
use crate::ops;
use crate::protocol::{self, RunRequest, Started, Tag};
use crate::temporal_server;
use anyhow::{Context, Result};
use serde_json::json;
use std::time::Duration;
use stigmer_activities::store::{ExecutionRecord, Store};
use stigmer_workflows::{
    AgentExecution, EXIT_CANCELLED, EXIT_INFRA_FAILURE, ExecutionResult, Status, StdinInput,
};
use temporalio_client::WorkflowCancelOptions;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use tokio::signal::unix::{SignalKind, signal};

/// How `run` prints its result.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    Text,
    Json,
}

/// The identity of whoever runs the command, for the audit record.
#[must_use]
pub fn os_user() -> Option<String> {
    std::env::var("USER")
        .ok()
        .filter(|u| !u.is_empty())
        .or_else(|| {
            nix::unistd::User::from_uid(nix::unistd::getuid())
                .ok()
                .flatten()
                .map(|u| u.name)
        })
}

/// The CI system and run this is part of, from the variables CI systems set.
#[must_use]
pub fn ci_identity() -> Option<String> {
    ci_identity_from(|k| std::env::var(k).ok())
}

/// The CI identity from a variable lookup: `SYSTEM:PROJECT#RUN key=value…`, naming the system,
/// the project, the run (and its attempt), the job, the commit and the person who started it,
/// so an audit record leads back to the exact pipeline run. Unset values are left out.
#[must_use]
pub fn ci_identity_from(lookup: impl Fn(&str) -> Option<String>) -> Option<String> {
    let var = |k: &str| lookup(k).filter(|v| !v.trim().is_empty());
    let with = |head: String, pairs: &[(&str, &str)]| {
        let mut out = head;
        for (key, name) in pairs {
            if let Some(value) = var(name) {
                out.push_str(&format!(
                    " {key}={}",
                    value.replace(char::is_whitespace, "_")
                ));
            }
        }
        out
    };
    let or_empty = |k: &str| var(k).unwrap_or_default();
    if var("GITHUB_ACTIONS").is_some() {
        let attempt = var("GITHUB_RUN_ATTEMPT")
            .map(|a| format!("/attempt/{a}"))
            .unwrap_or_default();
        return Some(with(
            format!(
                "github-actions:{}@run/{}{attempt}",
                or_empty("GITHUB_REPOSITORY"),
                or_empty("GITHUB_RUN_ID")
            ),
            &[
                ("actor", "GITHUB_ACTOR"),
                ("triggered_by", "GITHUB_TRIGGERING_ACTOR"),
                ("workflow", "GITHUB_WORKFLOW"),
                ("job", "GITHUB_JOB"),
                ("event", "GITHUB_EVENT_NAME"),
                ("ref", "GITHUB_REF"),
                ("sha", "GITHUB_SHA"),
                ("server", "GITHUB_SERVER_URL"),
            ],
        ));
    }
    if var("GITLAB_CI").is_some() {
        return Some(with(
            format!(
                "gitlab:{}@pipeline/{}",
                or_empty("CI_PROJECT_PATH"),
                or_empty("CI_PIPELINE_ID")
            ),
            &[
                ("user", "GITLAB_USER_LOGIN"),
                ("job", "CI_JOB_ID"),
                ("job_name", "CI_JOB_NAME"),
                ("source", "CI_PIPELINE_SOURCE"),
                ("ref", "CI_COMMIT_REF_NAME"),
                ("sha", "CI_COMMIT_SHA"),
                ("server", "CI_SERVER_URL"),
            ],
        ));
    }
    if var("JENKINS_URL").is_some() {
        return Some(with(
            format!(
                "jenkins:{}#{}",
                or_empty("JOB_NAME"),
                or_empty("BUILD_NUMBER")
            ),
            &[
                // Set by the build-user-vars plugin when installed.
                ("user", "BUILD_USER_ID"),
                ("url", "BUILD_URL"),
                ("node", "NODE_NAME"),
                ("branch", "GIT_BRANCH"),
                ("sha", "GIT_COMMIT"),
            ],
        ));
    }
    if var("BUILDKITE").is_some() {
        let org = var("BUILDKITE_ORGANIZATION_SLUG")
            .map(|o| format!("{o}/"))
            .unwrap_or_default();
        return Some(with(
            format!(
                "buildkite:{org}{}#{}",
                or_empty("BUILDKITE_PIPELINE_SLUG"),
                or_empty("BUILDKITE_BUILD_NUMBER")
            ),
            &[
                ("creator", "BUILDKITE_BUILD_CREATOR_EMAIL"),
                ("job", "BUILDKITE_JOB_ID"),
                ("source", "BUILDKITE_SOURCE"),
                ("branch", "BUILDKITE_BRANCH"),
                ("sha", "BUILDKITE_COMMIT"),
                ("url", "BUILDKITE_BUILD_URL"),
            ],
        ));
    }
    if var("CIRCLECI").is_some() {
        let owner = var("CIRCLE_PROJECT_USERNAME")
            .map(|o| format!("{o}/"))
            .unwrap_or_default();
        return Some(with(
            format!(
                "circleci:{owner}{}#{}",
                or_empty("CIRCLE_PROJECT_REPONAME"),
                or_empty("CIRCLE_BUILD_NUM")
            ),
            &[
                ("user", "CIRCLE_USERNAME"),
                ("workflow", "CIRCLE_WORKFLOW_ID"),
                ("job", "CIRCLE_JOB"),
                ("branch", "CIRCLE_BRANCH"),
                ("sha", "CIRCLE_SHA1"),
                ("url", "CIRCLE_BUILD_URL"),
            ],
        ));
    }
    var("CI").map(|_| "ci".to_string())
}

/// A connection to the local daemon's socket, starting the daemon first when none answers
/// (`run`, and each command of `stigmer mcp`).
pub async fn connect_daemon(cfg: &Config) -> Result<UnixStream> {
    match UnixStream::connect(cfg.socket_path()).await {
        Ok(stream) => Ok(stream),
        Err(_) => {
            daemon::spawn_detached(cfg, false).await?;
            UnixStream::connect(cfg.socket_path())
                .await
                .with_context(|| {
                    format!(
                        "the daemon started but {} does not answer",
                        cfg.socket_path().display()
                    )
                })
        }
    }
}

/// Runs a request to its end (or just starts it) and returns the exit code for the process.
pub async fn run(cfg: &Config, request: RunRequest, format: OutputFormat) -> Result<i32> {
    if cfg.is_remote() {
        return run_remote(cfg, request, format).await;
    }
    let stream = connect_daemon(cfg).await?;
    run_via_daemon(cfg, stream, request, format).await
}

async fn run_via_daemon(
    cfg: &Config,
    stream: UnixStream,
    request: RunRequest,
    format: OutputFormat,
) -> Result<i32> {
    let (reader, mut writer) = stream.into_split();
    let mut frames = protocol::Frames::new(reader);
    protocol::write_json(&mut writer, Tag::Request, &request).await?;
    // A streamed stdin has the connection's write half to itself; a cancel then goes on a
    // connection of its own, so that it never waits behind stdin the command does not read.
    let (mut writer, _stdin_pump) = if request.stdin == Some(StdinInput::Streamed) {
        (None, Some(StdinPump::spawn(writer)))
    } else {
        (Some(writer), None)
    };
    let mut stdout = tokio::io::stdout();
    let mut stderr = tokio::io::stderr();
    let mut interrupts = Interrupts::new()?;
    let mut id: Option<String> = None;
    let mut cancelling = false;
    let mut follower = Follower::new("");
    let mut progress = Progress::new();
    loop {
        tokio::select! {
            frame = frames.next() => {
                let frame = match frame {
                    Ok(frame) => frame,
                    Err(e) => {
                        tracing::debug!("daemon connection failed: {e:#}");
                        None
                    }
                };
                let Some((tag, body)) = frame else {
                    let Some(id) = id else {
                        eprintln!("stigmer: lost the connection to the daemon before the execution started");
                        return Ok(EXIT_INFRA_FAILURE);
                    };
                    follower.id = id;
                    return resume_after_daemon_loss(cfg, follower, format).await;
                };
                match tag {
                    Tag::Started => {
                        let started: Started = serde_json::from_slice(&body)?;
                        if !request.follow {
                            print_started(&started, format);
                            return Ok(0);
                        }
                        id = Some(started.id);
                    }
                    Tag::Stdout => {
                        progress.done();
                        follower.skip_stdout += body.len() as u64;
                        stdout.write_all(&body).await?;
                        stdout.flush().await?;
                    }
                    Tag::Stderr => {
                        progress.done();
                        follower.skip_stderr += body.len() as u64;
                        stderr.write_all(&body).await?;
                        stderr.flush().await?;
                    }
                    Tag::Notice => progress.notice(&String::from_utf8_lossy(&body)),
                    Tag::Result => {
                        progress.done();
                        let result: ExecutionResult = serde_json::from_slice(&body)?;
                        return Ok(finish_output(&result, format));
                    }
                    Tag::Fatal => {
                        progress.done();
                        eprintln!("stigmer: {}", String::from_utf8_lossy(&body));
                        return Ok(EXIT_INFRA_FAILURE);
                    }
                    _ => {}
                }
            }
            () = interrupts.next() => {
                if cancelling {
                    eprintln!("stigmer: interrupted again; leaving without waiting (the execution is being cancelled)");
                    return Ok(EXIT_CANCELLED);
                }
                cancelling = true;
                eprintln!("stigmer: cancelling {} (Ctrl-C again to stop waiting)", id.as_deref().unwrap_or("the execution"));
                match (writer.as_mut(), id.as_deref()) {
                    (Some(writer), _) => protocol::write_frame(writer, Tag::Cancel, b"").await?,
                    (None, Some(id)) => cancel_out_of_band(cfg, id).await,
                    // Not started yet: the daemon cancels nothing it has not started, and it
                    // starts nothing for a client that went away.
                    (None, None) => return Ok(EXIT_CANCELLED),
                }
            }
        }
    }
}

/// Sends the command's stdin to the daemon as it is read, in `Stdin` frames ended by an empty
/// one; stops with the run.
struct StdinPump(tokio::task::JoinHandle<()>);

impl StdinPump {
    fn spawn(mut writer: tokio::net::unix::OwnedWriteHalf) -> Self {
        Self(tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let mut stdin = tokio::io::stdin();
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = match stdin.read(&mut buf).await {
                    Ok(n) => n,
                    Err(e) => {
                        eprintln!(
                            "stigmer: could not read stdin ({e}); the command gets end of file here"
                        );
                        0
                    }
                };
                // An empty frame is the end of the stdin. The write half stays open until the
                // run ends: closing it would tell the daemon the client went away.
                if protocol::write_frame(&mut writer, Tag::Stdin, &buf[..n])
                    .await
                    .is_err()
                    || n == 0
                {
                    std::future::pending::<()>().await;
                }
            }
        }))
    }
}

impl Drop for StdinPump {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Asks the daemon, on a connection of its own, to cancel execution `id`.
async fn cancel_out_of_band(cfg: &Config, id: &str) {
    let asked = async {
        let mut stream = UnixStream::connect(cfg.socket_path()).await?;
        protocol::write_frame(&mut stream, Tag::Cancel, id.as_bytes()).await?;
        let (reader, _writer) = stream.into_split();
        protocol::Frames::new(reader).next().await
    }
    .await;
    match asked {
        Ok(Some((Tag::Fatal, why))) => {
            eprintln!(
                "stigmer: could not cancel {id}: {}",
                String::from_utf8_lossy(&why)
            );
        }
        Ok(_) => {}
        Err(e) => eprintln!("stigmer: could not cancel {id}: {e:#}"),
    }
}

/// The daemon went away mid-execution (crashed, killed, upgraded). The execution is a durable
/// workflow, so it goes on once a daemon runs again: start one, then follow the execution
/// through the store to its end, printing only what the live stream had not yet delivered.
async fn resume_after_daemon_loss(
    cfg: &Config,
    mut follower: Follower,
    format: OutputFormat,
) -> Result<i32> {
    let id = follower.id.clone();
    eprintln!(
        "stigmer: lost the connection to the daemon; {id} is durable: restarting the daemon and following it"
    );
    let store = ops::open_for_reading(cfg).await?;
    let mut interrupts = Interrupts::new()?;
    let mut poll = tokio::time::interval(Duration::from_millis(100));
    let mut revive = tokio::time::interval(Duration::from_secs(2));
    loop {
        tokio::select! {
            _ = poll.tick() => {
                follower.pump(&store).await?;
                if let Some(record) = store.get_execution(&id).await?
                    && record.status().is_some_and(Status::is_terminal)
                {
                    follower.pump(&store).await?;
                    return Ok(finish_output(&record.result(), format));
                }
            }
            _ = revive.tick() => {
                // Whoever runs first starts the daemon; the lock file keeps it to one.
                if UnixStream::connect(cfg.socket_path()).await.is_err()
                    && let Err(e) = daemon::spawn_detached(cfg, false).await
                {
                    tracing::debug!("could not restart the daemon yet: {e:#}");
                }
            }
            () = interrupts.next() => {
                eprintln!("stigmer: stopped following {id}; it goes on (`stigmer logs --follow {id}` follows it again)");
                return Ok(EXIT_CANCELLED);
            }
        }
    }
}

/// Image pull and build progress: a bar on a terminal, one line per notice elsewhere (logs,
/// CI). Notices arrive as `pulling IMAGE: layer … NN%` or `building IMAGE: STEP` lines.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    terminal: bool,
}

impl Progress {
    fn new() -> Self {
        Self {
            bar: None,
            terminal: std::io::IsTerminal::is_terminal(&std::io::stderr()),
        }
    }

    fn notice(&mut self, line: &str) {
        let pulling = line.starts_with("pulling ");
        if !self.terminal || !(pulling || line.starts_with("building ")) {
            self.done();
            eprintln!("stigmer: {line}");
            return;
        }
        let bar = self.bar.get_or_insert_with(|| {
            let bar = indicatif::ProgressBar::new(100);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "stigmer: {spinner} [{bar:30}] {pos:>3}% {wide_msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        if pulling
            && let Some(pct) = line
                .rsplit_once(' ')
                .and_then(|(_, p)| p.strip_suffix('%'))
                .and_then(|p| p.parse::<u64>().ok())
        {
            bar.set_position(pct.min(100));
        }
        bar.set_message(line.to_string());
    }

    fn done(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

/// Ctrl-C and SIGTERM both mean "cancel the execution".
struct Interrupts {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Interrupts {
    fn new() -> Result<Self> {
        Ok(Self {
            int: signal(SignalKind::interrupt()).context("could not watch for Ctrl-C")?,
            term: signal(SignalKind::terminate()).context("could not watch for SIGTERM")?,
        })
    }

    async fn next(&mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
        }
    }
}

fn print_started(started: &Started, format: OutputFormat) {
    match format {
        OutputFormat::Json => println!(
            "{}",
            json!({ "id": started.id, "workflow_id": started.workflow_id })
        ),
        OutputFormat::Text => println!("{}", started.id),
    }
}

/// Prints the JSON result line when asked, says why on stderr when it was not the command's
/// own exit, and returns the process exit code.
fn finish_output(result: &ExecutionResult, format: OutputFormat) -> i32 {
    if let Some(error) = &result.error {
        eprintln!("stigmer: {} {}: {error}", result.id, result.status);
    }
    if format == OutputFormat::Json {
        println!(
            "{}",
            json!({
                "id": result.id,
                "status": result.status,
                "exit_code": result.exit_code,
                "error": result.error,
            })
        );
    }
    result.process_exit_code()
}

/// `run` against a remote Temporal: start the workflow here, follow the output in the store.
async fn run_remote(cfg: &Config, request: RunRequest, format: OutputFormat) -> Result<i32> {
    let store = ops::open_for_reading(cfg).await?;
    let client = temporal_server::connect(cfg, "stigmer-client").await?;
    let id = ops::new_execution_id();
    let (_, started, span) = ops::start_execution(
        &store,
        &client,
        &cfg.task_queue.value,
        &request,
        false,
        id.clone(),
        None,
    )
    .await?;
    if !request.follow {
        // Nobody here waits for the end: the execution's span ends with this process.
        print_started(&started, format);
        return Ok(0);
    }
    let handle = client.get_workflow_handle::<AgentExecution>(started.workflow_id.clone());
    let mut workflow_result = Box::pin(ops::await_outcome(
        &client,
        &store,
        &id,
        &started.workflow_id,
    ));
    let mut interrupts = Interrupts::new()?;
    let mut follower = Follower::new(&id);
    let mut cancelling = false;
    let mut poll = tokio::time::interval(Duration::from_millis(50));
    let result = loop {
        tokio::select! {
            _ = poll.tick() => { follower.pump(&store).await?; }
            () = interrupts.next() => {
                if cancelling {
                    return Ok(EXIT_CANCELLED);
                }
                cancelling = true;
                eprintln!("stigmer: cancelling {id} (Ctrl-C again to stop waiting)");
                handle
                    .cancel(WorkflowCancelOptions::builder().reason("cancelled by the client (Ctrl-C)".to_string()).build())
                    .await
                    .context("could not cancel the workflow")?;
            }
            result = &mut workflow_result => break result,
        }
    };
    follower.pump(&store).await?;
    span.end(&result);
    Ok(finish_output(&result, format))
}

/// Copies an execution's stored output to stdout/stderr, resuming where it left off.
struct Follower {
    id: String,
    next: i64,
    /// Bytes of each stream already printed from elsewhere (the live stream), not to repeat.
    skip_stdout: u64,
    skip_stderr: u64,
}

impl Follower {
    fn new(id: &str) -> Self {
        Self {
            id: id.to_string(),
            next: -1,
            skip_stdout: 0,
            skip_stderr: 0,
        }
    }

    /// Prints what is new; returns how many chunks were printed.
    async fn pump(&mut self, store: &Store) -> Result<usize> {
        let mut printed = 0;
        loop {
            let chunks = store.read_output(&self.id, self.next, 256).await?;
            if chunks.is_empty() {
                return Ok(printed);
            }
            let mut stdout = tokio::io::stdout();
            let mut stderr = tokio::io::stderr();
            for chunk in &chunks {
                let skip = match chunk.stream.as_str() {
                    "stdout" => &mut self.skip_stdout,
                    _ => &mut self.skip_stderr,
                };
                let already = (*skip).min(chunk.data.len() as u64);
                *skip -= already;
                let data = &chunk.data[already as usize..];
                match chunk.stream.as_str() {
                    "stdout" => stdout.write_all(data).await?,
                    _ => stderr.write_all(data).await?,
                }
                self.next = chunk.seq;
            }
            stdout.flush().await?;
            stderr.flush().await?;
            printed += chunks.len();
        }
    }
}

/// `stigmer logs ID [--follow]`.
pub async fn logs(cfg: &Config, id: &str, follow: bool) -> Result<i32> {
    let store = ops::open_for_reading(cfg).await?;
    ops::execution(&store, id).await?;
    let mut follower = Follower::new(id);
    loop {
        follower.pump(&store).await?;
        if !follow {
            return Ok(0);
        }
        let record = ops::execution(&store, id).await?;
        if record.status().is_some_and(Status::is_terminal) {
            follower.pump(&store).await?;
            return Ok(0);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn rfc3339(ms: Option<i64>) -> Option<String> {
    let ms = ms?;
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

/// An execution as `executions show --output json` prints it.
#[must_use]
pub fn execution_json(r: &ExecutionRecord) -> serde_json::Value {
    let mut value = json!({
        "id": r.id,
        "status": r.status,
        "exit_code": r.exit_code,
        "error": r.error,
        "command": r.command,
        "workdir": r.workdir,
        "mode": r.requested_mode,
        "effective_mode": r.effective_mode,
        "reason": r.reason,
        "created_at": rfc3339(Some(r.created_at)),
        "started_at": rfc3339(r.started_at),
        "finished_at": rfc3339(r.finished_at),
        "duration_ms": match (r.started_at, r.finished_at) { (Some(s), Some(f)) => Some(f - s), _ => None },
        "os_user": r.os_user,
        "ci_identity": r.ci_identity,
        "client_host": r.client_host,
        "worker_id": r.worker_id,
        "attempt": r.attempt,
        "timeout_secs": r.timeout_secs,
        "image": r.image,
        "image_digest": r.image_digest,
        "container_id": r.container_id,
        "workflow_id": r.workflow_id,
        "run_id": r.run_id,
        "output_bytes": r.output_bytes,
        "output_dropped_bytes": r.output_dropped,
        "output_sha256": r.output_sha256,
        "labels": r.labels(),
        "stdin_bytes": r.stdin_bytes,
        "stdin_sha256": r.stdin_sha256,
        "session": r.session,
    });
    // Only executions started with tracing on have a trace.
    if let Some(trace_id) = &r.trace_id {
        value["trace_id"] = json!(trace_id);
    }
    value
}

/// `stigmer executions show ID`.
pub async fn show(cfg: &Config, id: &str, format: OutputFormat) -> Result<i32> {
    let store = ops::open_for_reading(cfg).await?;
    let record = ops::execution(&store, id).await?;
    print_object(&execution_json(&record), format, 20)?;
    Ok(0)
}

/// `stigmer executions prune --older-than AGE [--dry-run]`: removes ended executions and their
/// output (never the audit log, never one still holding a lease or not yet audited).
pub async fn prune(
    cfg: &Config,
    before_ms: i64,
    dry_run: bool,
    format: OutputFormat,
) -> Result<i32> {
    let report = ops::prune(cfg, before_ms, dry_run).await?;
    match format {
        OutputFormat::Json => println!("{}", serde_json::to_string(&report)?),
        OutputFormat::Text => {
            let verb = if dry_run { "would remove" } else { "removed" };
            let cutoff = chrono::DateTime::from_timestamp_millis(before_ms)
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                .unwrap_or_else(|| before_ms.to_string());
            println!(
                "{verb} {} execution(s) that ended before {cutoff}, with {} output chunk(s), {} bytes; the audit log is kept",
                report.executions, report.output_chunks, report.output_bytes
            );
        }
    }
    Ok(0)
}

/// `stigmer executions list`.
pub async fn list(cfg: &Config, limit: i64, format: OutputFormat) -> Result<i32> {
    let records = ops::executions(cfg, limit).await?;
    match format {
        OutputFormat::Json => {
            let rows: Vec<_> = records.iter().map(execution_json).collect();
            println!("{}", serde_json::to_string_pretty(&rows)?);
        }
        OutputFormat::Text => {
            println!(
                "{:<30} {:<10} {:>4} {:<8} {:<24} COMMAND",
                "ID", "STATUS", "EXIT", "MODE", "CREATED"
            );
            for r in &records {
                let exit = r
                    .exit_code
                    .map(|c| c.to_string())
                    .unwrap_or_else(|| "-".into());
                let created = rfc3339(Some(r.created_at)).unwrap_or_default();
                let mut command = r.command.replace('\n', " ");
                if command.chars().count() > 60 {
                    command = command.chars().take(57).collect::<String>() + "...";
                }
                println!(
                    "{:<30} {:<10} {:>4} {:<8} {:<24} {}",
                    r.id, r.status, exit, r.effective_mode, created, command
                );
            }
        }
    }
    Ok(0)
}

/// A lease as `leases list --output json` prints it.
fn lease_json(l: &stigmer_activities::store::LeaseRecord) -> serde_json::Value {
    json!({
        "id": l.id,
        "backend": l.backend,
        "container_id": l.container_id,
        "state": l.state,
        "image": l.image,
        "spec_hash": l.spec_hash,
        "execution_id": l.execution_id,
        "worker_id": l.worker_id,
        "engine_id": l.engine_id,
        "ttl_secs": l.ttl_secs,
        "tainted": l.tainted != 0,
        "created_at": rfc3339(Some(l.created_at)),
        "last_used_at": rfc3339(Some(l.last_used_at)),
        "expires_at": rfc3339(Some(l.expires_at)),
        "note": l.note,
    })
}

/// `stigmer leases list`.
pub async fn leases_list(cfg: &Config, all: bool, format: OutputFormat) -> Result<i32> {
    let leases = ops::leases(cfg, all).await?;
    match format {
        OutputFormat::Json => {
            let rows: Vec<_> = leases.iter().map(lease_json).collect();
            println!("{}", serde_json::to_string_pretty(&rows)?);
        }
        OutputFormat::Text => {
            println!(
                "{:<30} {:<9} {:<13} {:<24} {:<30} IMAGE",
                "LEASE", "STATE", "CONTAINER", "EXPIRES", "EXECUTION"
            );
            for l in &leases {
                let container: String = l
                    .container_id
                    .as_deref()
                    .unwrap_or("-")
                    .chars()
                    .take(12)
                    .collect();
                println!(
                    "{:<30} {:<9} {:<13} {:<24} {:<30} {}",
                    l.id,
                    l.state,
                    container,
                    rfc3339(Some(l.expires_at)).unwrap_or_default(),
                    l.execution_id.as_deref().unwrap_or("-"),
                    l.image
                );
            }
        }
    }
    Ok(0)
}

/// `stigmer leases reap`: one reaper pass now.
pub async fn leases_reap(cfg: &Config, format: OutputFormat) -> Result<i32> {
    let reaped = ops::reap(cfg).await?;
    if let Some(e) = &reaped.docker_skipped {
        eprintln!("stigmer: no Docker engine ({e}); reaping Daytona sandboxes only");
    }
    let report = reaped.docker;
    let daytona = reaped.daytona_deleted.is_some();
    let deleted = reaped.daytona_deleted.unwrap_or_default();
    match format {
        OutputFormat::Json => {
            let mut value = serde_json::to_value(report.clone().unwrap_or_default())?;
            value["daytona_deleted"] = json!(deleted);
            println!("{value}");
        }
        OutputFormat::Text => {
            if let Some(report) = &report {
                println!(
                    "expired {} idle lease(s), removed {} container(s) of ending leases, {} orphan container(s), dropped {} abandoned lease(s); lost workers: adopted {}, reconciled {}, forgot {} on hosts gone",
                    report.expired.len(),
                    report.disposed.len(),
                    report.orphans.len(),
                    report.abandoned.len(),
                    report.adopted.len(),
                    report.reconciled.len(),
                    report.forgotten.len()
                );
                for id in report.orphans.iter().chain(&report.disposed) {
                    println!("  removed {id}");
                }
            }
            if daytona {
                println!("deleted {} Daytona sandbox(es)", deleted.len());
                for id in &deleted {
                    println!("  deleted {id}");
                }
            }
        }
    }
    Ok(0)
}

/// `stigmer session start|list|show|end` (docs/sessions.md): the store is the truth, so these
/// work on it directly; `start` makes sure the daemon runs (it creates the store and reaps the
/// session when its TTL passes).
pub async fn session(command: crate::cli::SessionCommand) -> Result<i32> {
    use crate::cli::{SessionCommand, UsageError};
    use crate::ops::session as ops_session;
    let usage = |msg: String| -> anyhow::Error { UsageError(msg).into() };
    match command {
        SessionCommand::Start(args) => {
            let started = ops_session::start_from_args(&args).await?;
            match args.output {
                OutputFormat::Json => println!("{}", json!({ "id": started.id })),
                OutputFormat::Text => println!("{}", started.id),
            }
            Ok(0)
        }
        SessionCommand::List { all, output } => {
            let cfg =
                Config::load(&crate::config::Flags::new()).map_err(|e| usage(format!("{e:#}")))?;
            let store = ops::open_for_reading(&cfg).await?;
            let sessions = store.list_sessions(all).await?;
            match output {
                OutputFormat::Json => {
                    let list: Vec<_> = sessions.iter().map(session_json).collect();
                    println!("{}", serde_json::Value::Array(list));
                }
                OutputFormat::Text => {
                    println!(
                        "{:<21} {:<16} {:<8} {:<8} {:<26} LAST USED",
                        "ID", "NAME", "MODE", "STATE", "BUSY"
                    );
                    for s in &sessions {
                        let state = if s.is_live() { "live" } else { "ended" };
                        println!(
                            "{:<21} {:<16} {:<8} {:<8} {:<26} {}",
                            s.id,
                            s.name.as_deref().unwrap_or("-"),
                            s.mode,
                            state,
                            s.busy.as_deref().unwrap_or("-"),
                            rfc3339(Some(s.last_used_at)).unwrap_or_default()
                        );
                    }
                }
            }
            Ok(0)
        }
        SessionCommand::Show { id, output } => {
            let cfg =
                Config::load(&crate::config::Flags::new()).map_err(|e| usage(format!("{e:#}")))?;
            let store = ops::open_for_reading(&cfg).await?;
            let s = ops_session::session(&store, &id).await?;
            print_object(&session_json(&s), output, 14)?;
            Ok(0)
        }
        SessionCommand::Cp { src, dst, output } => {
            let cfg =
                Config::load(&crate::config::Flags::new()).map_err(|e| usage(format!("{e:#}")))?;
            let store = ops::open_for_reading(&cfg).await?;
            let c = ops_session::copy(&store, &cfg.daytona(), &src, &dst).await?;
            match output {
                OutputFormat::Json => println!(
                    "{}",
                    json!({
                        "session": c.session,
                        "from": c.from,
                        "to": c.to,
                        "bytes": c.bytes,
                        "mode": format!("{:04o}", c.mode),
                    })
                ),
                OutputFormat::Text => {
                    println!("copied {} bytes: {} -> {}", c.bytes, c.from, c.to)
                }
            }
            Ok(0)
        }
        SessionCommand::End { id, output } => {
            let cfg =
                Config::load(&crate::config::Flags::new()).map_err(|e| usage(format!("{e:#}")))?;
            let store = ops::open_for_reading(&cfg).await?;
            let (s, removed) =
                ops_session::end_session(&store, &cfg.daytona(), &id, "ended by `session end`")
                    .await?;
            match output {
                OutputFormat::Json => {
                    let mut value = session_json(&s);
                    value["removed_containers"] = json!(removed);
                    println!("{value}");
                }
                OutputFormat::Text => {
                    println!("ended {} (removed {} container(s))", s.id, removed.len())
                }
            }
            Ok(0)
        }
    }
}

fn session_json(s: &stigmer_activities::store::SessionRecord) -> serde_json::Value {
    json!({
        "id": s.id,
        "name": s.name,
        "mode": s.mode,
        "state": if s.is_live() { "live" } else { "ended" },
        "ttl_secs": s.ttl_secs,
        "created_at": rfc3339(Some(s.created_at)),
        "last_used_at": rfc3339(Some(s.last_used_at)),
        "ended_at": rfc3339(s.ended_at),
        "end_reason": s.end_reason,
        "busy": s.busy,
        "sandbox": s.spec.as_deref().and_then(|t| serde_json::from_str::<serde_json::Value>(t).ok()),
    })
}

/// One record: pretty JSON, or its fields one per line, names right-aligned to `width`.
fn print_object(value: &serde_json::Value, format: OutputFormat, width: usize) -> Result<()> {
    match format {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(value)?),
        OutputFormat::Text => {
            if let Some(map) = value.as_object() {
                for (key, v) in map {
                    let shown = match v {
                        serde_json::Value::Null => "-".to_string(),
                        serde_json::Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    println!("{key:>width$}  {shown}");
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::ci_identity_from;
    use std::collections::HashMap;

    fn identity(vars: &[(&str, &str)]) -> Option<String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        ci_identity_from(|k| map.get(k).cloned())
    }

    #[test]
    fn each_ci_system_is_named_with_its_run_and_who_started_it() {
        assert_eq!(
            identity(&[
                ("GITHUB_ACTIONS", "true"),
                ("GITHUB_REPOSITORY", "acme/app"),
                ("GITHUB_RUN_ID", "7"),
                ("GITHUB_RUN_ATTEMPT", "2"),
                ("GITHUB_ACTOR", "octo"),
                ("GITHUB_WORKFLOW", "CI build"),
                ("GITHUB_SHA", "abc"),
            ])
            .as_deref(),
            Some("github-actions:acme/app@run/7/attempt/2 actor=octo workflow=CI_build sha=abc")
        );
        assert_eq!(
            identity(&[
                ("GITLAB_CI", "true"),
                ("CI_PROJECT_PATH", "g/p"),
                ("CI_PIPELINE_ID", "9"),
                ("CI_JOB_ID", "91"),
                ("GITLAB_USER_LOGIN", "ann"),
            ])
            .as_deref(),
            Some("gitlab:g/p@pipeline/9 user=ann job=91")
        );
        assert_eq!(
            identity(&[
                ("JENKINS_URL", "https://ci/"),
                ("JOB_NAME", "deploy"),
                ("BUILD_NUMBER", "12"),
                ("BUILD_USER_ID", "bob"),
            ])
            .as_deref(),
            Some("jenkins:deploy#12 user=bob")
        );
        assert_eq!(
            identity(&[
                ("BUILDKITE", "true"),
                ("BUILDKITE_ORGANIZATION_SLUG", "acme"),
                ("BUILDKITE_PIPELINE_SLUG", "web"),
                ("BUILDKITE_BUILD_NUMBER", "3"),
                ("BUILDKITE_BUILD_CREATOR_EMAIL", "c@acme.io"),
            ])
            .as_deref(),
            Some("buildkite:acme/web#3 creator=c@acme.io")
        );
        assert_eq!(
            identity(&[
                ("CIRCLECI", "true"),
                ("CIRCLE_PROJECT_USERNAME", "acme"),
                ("CIRCLE_PROJECT_REPONAME", "api"),
                ("CIRCLE_BUILD_NUM", "44"),
                ("CIRCLE_USERNAME", "dee"),
            ])
            .as_deref(),
            Some("circleci:acme/api#44 user=dee")
        );
        assert_eq!(identity(&[("CI", "1")]).as_deref(), Some("ci"));
        assert_eq!(identity(&[("CI", "")]), None);
        assert_eq!(identity(&[]), None);
    }
}
