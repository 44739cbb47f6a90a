//! The worker's side of the sandbox agent (`agent/stigmer-agent.rs`): the keep-alive process of
//! a sandbox container that also runs its commands.
//!
//! Why: a `docker exec` costs a runc exec inside the engine before the command's first
//! instruction, which bounds a reused container's latency from below. The agent is already in
//! the container, so it spawns a command with a fork. The worker copies the agent (a static
//! binary built with this crate, see `build.rs`) into a created container before starting it,
//! then reaches it through the container's attached stdio: one attach per command, a request
//! line on stdin, framed output and the exit on stdout. That needs no network and no shared
//! file system, so it works with `--network none` and with a remote engine alike.
//!
//! The agent records the command's pid in the same pid file, with the same format, as the exec
//! wrapper does, so a lost command is killed ([`Engine::kill_exec`]) and checked
//! ([`Engine::check_leftovers`]) the same way in either kind of container. It also enforces the
//! timeout itself, so a command is stopped on time even when its worker is gone. Containers
//! whose image is for another architecture, with a read-only root, or created while the agent is
//! turned off keep `sleep infinity` and the exec path ([`crate::exec`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bollard::container::{AttachContainerResults, LogOutput};
use bollard::query_parameters::{AttachContainerOptionsBuilder, UploadToContainerOptionsBuilder};
use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::exec::{ExecEnd, ExecOutcome, ExecRequest, OutputChunk, Sink, StreamKind};
use crate::{Engine, EngineError};

/// Where the agent lives inside a container.
pub const AGENT_PATH: &str = "/.stigmer/agent";
/// Label carrying the agent protocol a container's keep-alive speaks (absent: `sleep infinity`).
pub const LABEL_AGENT: &str = "io.stigmer.agent";
/// The protocol of `agent/stigmer-agent.rs`. A container labelled with another one was made by
/// a worker of another release: it is served by exec, and workers remove it rather than reuse it
/// (`stigmer-activities`' `reuse_idle`), so a framing change never meets an old agent.
///
/// 2: the agent is the container's PID 1 (no docker-init holding its stdio).
/// 3: its exit frame carries how long the clean check took, and `RUN`'s fourth field is flags
/// (bit 1: keep the command's background processes, for a session's own container).
pub const AGENT_PROTOCOL: &str = "3";

/// The agent binary built for this crate's target, empty where it could not be built.
static AGENT_BINARY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/stigmer-agent"));

// The encoder serves the agent, and this side's tests.
#[allow(dead_code)]
#[path = "../agent/protocol.rs"]
mod protocol;
#[cfg(test)]
pub(crate) use protocol::EGRESS_SOCKET_PATH;
pub(crate) use protocol::PROXY_LISTEN;
use protocol::{
    FRAME_EXIT, FRAME_HEADER, FRAME_REFUSED, FRAME_STARTED, FRAME_STDERR, FRAME_STDOUT,
};

/// The agent sends at most 64 KiB per frame; anything far larger is a broken stream.
const MAX_FRAME: usize = 16 * 1024 * 1024;

/// How long the agent may take to answer a request before the container is looked at.
const FIRST_ANSWER_CHECK: Duration = Duration::from_secs(1);
/// After a timeout, how much longer than the agent's own kill the worker waits for its answer.
const BACKSTOP_AFTER_KILL: Duration = Duration::from_secs(10);

/// Which containers and images the agent serves, and how it gets into containers, learnt once
/// per engine connection.
#[derive(Debug, Default)]
pub(crate) struct AgentCache {
    containers: Mutex<HashMap<String, bool>>,
    images: Mutex<HashMap<String, bool>>,
    /// The agent's binary on this host, for a read-only bind mount (`None`: no directory was
    /// given, or it could not be written).
    host_file: OnceLock<Option<PathBuf>>,
    /// The engine could not bind-mount it (a remote engine, or a worker in a container whose
    /// files the engine does not see): the agent is copied into each container instead.
    bind_refused: AtomicBool,
}

/// At most this many containers and images are remembered (then the memory starts afresh).
const CACHE_LIMIT: usize = 4096;

fn remember(map: &Mutex<HashMap<String, bool>>, key: &str, value: bool) {
    if let Ok(mut m) = map.lock() {
        if m.len() >= CACHE_LIMIT {
            m.clear();
        }
        m.insert(key.to_string(), value);
    }
}

fn recall(map: &Mutex<HashMap<String, bool>>, key: &str) -> Option<bool> {
    map.lock().ok().and_then(|m| m.get(key).copied())
}

/// Whether this build carries the agent (see `build.rs`).
#[must_use]
pub fn agent_available() -> bool {
    !AGENT_BINARY.is_empty()
}

/// Docker's name for the architecture this crate was built for.
fn docker_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// The tar that puts the agent at [`AGENT_PATH`], root-owned and not writable by the sandbox
/// user, so no command can replace what runs the next one.
fn agent_archive() -> &'static [u8] {
    static TAR: OnceLock<Vec<u8>> = OnceLock::new();
    TAR.get_or_init(|| {
        let mut builder = tar::Builder::new(Vec::new());
        let mut dir = tar::Header::new_gnu();
        dir.set_entry_type(tar::EntryType::Directory);
        dir.set_mode(0o755);
        dir.set_uid(0);
        dir.set_gid(0);
        dir.set_size(0);
        let mut file = tar::Header::new_gnu();
        file.set_mode(0o755);
        file.set_uid(0);
        file.set_gid(0);
        file.set_size(AGENT_BINARY.len() as u64);
        let appended = builder
            .append_data(&mut dir, ".stigmer/", std::io::empty())
            .and_then(|()| builder.append_data(&mut file, ".stigmer/agent", AGENT_BINARY))
            .and_then(|()| builder.into_inner());
        // Writing into a Vec cannot fail; an empty archive only makes the install fail loudly.
        appended.unwrap_or_default()
    })
}

/// Writes the embedded agent into `dir` (unless an identical file is there) and returns its
/// path.
fn write_host_file(dir: &Path) -> std::io::Result<PathBuf> {
    use sha2::{Digest, Sha256};
    use std::os::unix::fs::PermissionsExt;
    let hash = hex::encode(Sha256::digest(AGENT_BINARY));
    let path = dir.join(format!("stigmer-agent-{}", &hash[..16]));
    if std::fs::read(&path).is_ok_and(|bytes| hex::encode(Sha256::digest(&bytes)) == hash) {
        return Ok(path);
    }
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".stigmer-agent-{}.{}",
        std::process::id(),
        next_nonce()
    ));
    std::fs::write(&tmp, AGENT_BINARY)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

/// A nonce per request: unique enough that a worker never takes another request's frames.
fn next_nonce() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    (seed ^ (u64::from(std::process::id()) << 40))
        .wrapping_add(COUNTER.fetch_add(1, Ordering::Relaxed) << 20)
        | 1
}

/// `RUN …`: every variable field hex-encoded, so no byte of a value can end the line (or form
/// the engine's detach keys).
fn request_line(nonce: u64, req: &ExecRequest) -> Vec<u8> {
    let timeout_ms = req.timeout.map_or(0, |t| t.as_millis().max(1) as u64);
    let mut line = format!(
        "\nRUN {nonce} {timeout_ms} {} {} {} {} {}",
        req.kill_grace.as_millis(),
        u8::from(req.last_command) | (u8::from(req.keep_background) << 1),
        hex::encode(&req.pid_file),
        hex::encode(&req.workdir),
        req.argv.len()
    );
    for arg in &req.argv {
        line.push(' ');
        line.push_str(&hex::encode(arg));
    }
    line.push_str(&format!(" {}", req.env.len()));
    for (k, v) in &req.env {
        line.push(' ');
        line.push_str(&hex::encode(format!("{k}={v}")));
    }
    line.push('\n');
    line.into_bytes()
}

/// One frame of the agent's stdout.
struct Frame {
    kind: u8,
    nonce: u64,
    payload: bytes::Bytes,
}

/// Reassembles frames from the stdout bytes as the engine delivers them (split or merged).
#[derive(Default)]
struct Frames {
    buf: bytes::BytesMut,
}

impl Frames {
    fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    fn next(&mut self) -> Result<Option<Frame>, String> {
        if self.buf.len() < FRAME_HEADER {
            return Ok(None);
        }
        let kind = self.buf[0];
        let mut nonce = [0u8; 8];
        nonce.copy_from_slice(&self.buf[1..9]);
        let mut len = [0u8; 4];
        len.copy_from_slice(&self.buf[9..13]);
        let len = u32::from_be_bytes(len) as usize;
        if !(FRAME_STDOUT..=FRAME_REFUSED).contains(&kind) || len > MAX_FRAME {
            return Err(format!(
                "the agent sent a broken frame (kind {kind}, {len} bytes)"
            ));
        }
        if self.buf.len() < FRAME_HEADER + len {
            return Ok(None);
        }
        let mut frame = self.buf.split_to(FRAME_HEADER + len);
        let payload = frame.split_off(FRAME_HEADER).freeze();
        Ok(Some(Frame {
            kind,
            nonce: u64::from_be_bytes(nonce),
            payload,
        }))
    }
}

/// The agent's exit payload: `<how> <code> <pm0> <ok0> <pm1> <ok1> <alive>`.
struct Exit {
    ended: ExecEnd,
    code: i64,
    pids_limit_hit: bool,
    /// `None`: the counters could not be read.
    oom_killed: Option<bool>,
    left_running: bool,
    /// How long the agent's clean check took (protocol 3 and later).
    clean_check: Option<Duration>,
}

fn parse_exit(payload: &[u8]) -> Option<Exit> {
    let text = std::str::from_utf8(payload).ok()?;
    let f: Vec<&str> = text.split_whitespace().collect();
    // Protocol 2's agents end at `left_running`; 3 adds the clean check's duration.
    if f.len() != 7 && f.len() != 8 {
        return None;
    }
    let ended = match f[0] {
        "exited" => ExecEnd::Exited,
        "timedout" => ExecEnd::TimedOut,
        "cancelled" => ExecEnd::Cancelled,
        _ => return None,
    };
    let num = |s: &str| s.parse::<u64>().ok();
    let grew = |a: &str, b: &str| match (num(a), num(b)) {
        (Some(before), Some(after)) => Some(after > before),
        _ => None,
    };
    Some(Exit {
        ended,
        code: f[1].parse().ok()?,
        pids_limit_hit: grew(f[2], f[4]).unwrap_or(false),
        oom_killed: grew(f[3], f[5]),
        left_running: f[6] == "1",
        clean_check: f
            .get(7)
            .and_then(|us| us.parse().ok())
            .map(Duration::from_micros),
    })
}

impl Engine {
    /// Whether a container created from `image` gets the agent: this build has it, it is not
    /// turned off, and the image is a Linux image of this architecture (the agent is a native
    /// static binary). One image inspect per image and connection.
    pub(crate) async fn agent_fits(&self, image: &str) -> bool {
        if !self.agent_enabled || !agent_available() {
            return false;
        }
        if let Some(known) = recall(&self.agent_cache.images, image) {
            return known;
        }
        let fits = match self.docker.inspect_image(image).await {
            Ok(info) => {
                info.os.as_deref().unwrap_or("linux") == "linux"
                    && info.architecture.as_deref().unwrap_or(docker_arch()) == docker_arch()
            }
            Err(_) => return false,
        };
        if !fits {
            tracing::info!(
                image,
                "the image is not a linux/{} image; its containers run commands through docker exec",
                docker_arch()
            );
        }
        remember(&self.agent_cache.images, image, fits);
        fits
    }

    /// The agent's binary on this host, to bind-mount read-only into new containers, which
    /// costs nothing at create (copying it in costs the engine an extraction helper, ≈ 50 ms).
    /// Written once into the agent directory, named by its content hash, and checked against
    /// the embedded binary before it is trusted. `None` where the engine does not see this
    /// host's files (learnt from its first refusal) or no directory was given.
    pub(crate) fn agent_mount_source(&self) -> Option<PathBuf> {
        if self.agent_cache.bind_refused.load(Ordering::Relaxed) {
            return None;
        }
        let dir = self.agent_dir.as_ref()?;
        self.agent_cache
            .host_file
            .get_or_init(|| match write_host_file(dir) {
                Ok(path) => Some(path),
                Err(e) => {
                    tracing::info!(dir = %dir.display(), error = %e, "could not keep the agent on this host; copying it into each container");
                    None
                }
            })
            .clone()
    }

    /// The engine refused the bind mount: copy the agent in from now on.
    pub(crate) fn agent_bind_refused(&self, why: &str) {
        if !self.agent_cache.bind_refused.swap(true, Ordering::Relaxed) {
            tracing::info!(
                "the Docker engine cannot bind-mount the agent from this host ({why}); copying it into each container"
            );
        }
    }

    /// Copies the agent into a created (not yet started) container.
    pub(crate) async fn install_agent(&self, id: &str) -> Result<(), EngineError> {
        let options = UploadToContainerOptionsBuilder::new().path("/").build();
        self.docker
            .upload_to_container(
                id,
                Some(options),
                bollard::body_full(bytes::Bytes::from_static(agent_archive())),
            )
            .await
            .map_err(|e| {
                EngineError::api(format!("could not copy the agent into container {id}"), e)
            })
    }

    /// Records what a container's keep-alive is, for containers this connection made.
    pub(crate) fn note_agent(&self, id: &str, agent: bool) {
        remember(&self.agent_cache.containers, id, agent);
    }

    /// Whether commands in this container go through its agent. Learnt from the container's
    /// label once (an inspect), then remembered.
    pub(crate) async fn uses_agent(&self, id: &str) -> bool {
        if !self.agent_enabled || !agent_available() {
            return false;
        }
        if let Some(known) = recall(&self.agent_cache.containers, id) {
            return known;
        }
        let Ok(info) = self.docker.inspect_container(id, None).await else {
            return false;
        };
        let config = info.config.unwrap_or_default();
        let labelled = config
            .labels
            .as_ref()
            .and_then(|l| l.get(LABEL_AGENT))
            .is_some_and(|v| v == AGENT_PROTOCOL);
        let runs_it = config
            .cmd
            .as_ref()
            .and_then(|c| c.first())
            .is_some_and(|c| c == AGENT_PATH);
        let agent = labelled && runs_it && config.open_stdin == Some(true);
        self.note_agent(id, agent);
        agent
    }

    /// Runs `req` through the container's agent; the same contract as [`Engine::exec`].
    pub(crate) async fn run_agent_exec(
        &self,
        container_id: &str,
        req: &ExecRequest,
        sink: &mut Sink<'_>,
        cancel: CancellationToken,
    ) -> Result<ExecOutcome, EngineError> {
        let nonce = next_nonce();
        let options = AttachContainerOptionsBuilder::new()
            .stream(true)
            .stdin(true)
            .stdout(true)
            .stderr(true)
            .logs(false)
            .build();
        let AttachContainerResults {
            mut output,
            mut input,
        } = self
            .docker
            .attach_container(container_id, Some(options))
            .await
            .map_err(|e| {
                EngineError::api(
                    format!("could not attach to the agent in container {container_id}"),
                    e,
                )
            })?;
        // A request line never reached the agent whole unless this write succeeded; a partial
        // one is discarded by the agent at the leading newline of the next request.
        let line = request_line(nonce, req);
        if let Err(e) = async {
            input.write_all(&line).await?;
            input.flush().await
        }
        .await
        {
            return Err(EngineError::Unexpected(format!(
                "could not send the command to the agent in container {container_id}: {e}"
            )));
        }
        let wall_start = SystemTime::now();
        let started = Instant::now();
        let far = started + Duration::from_secs(365 * 24 * 3600);
        let backstop = tokio::time::sleep_until(
            req.timeout
                .map_or(far, |t| started + t + req.kill_grace + BACKSTOP_AFTER_KILL),
        );
        tokio::pin!(backstop);
        // The engine accepts an attach to a stopped container and holds it until the container
        // starts again; an agent that has not answered within a second is looked at.
        let answer_check = tokio::time::sleep(FIRST_ANSWER_CHECK);
        tokio::pin!(answer_check);
        let mut answered = false;
        let mut frames = Frames::default();
        let mut stop_sent = false;
        let mut receiver_gone = false;
        let stop_line = format!("STOP {nonce}\n").into_bytes();
        // The STOP line goes out once, whether the token fires while waiting for output or
        // while a full channel holds the output back.
        macro_rules! send_stop {
            () => {{
                stop_sent = true;
                if let Err(e) = input.write_all(&stop_line).await {
                    tracing::warn!(container = container_id, error = %e, "could not ask the agent to stop the command");
                }
                let _ = input.flush().await;
            }};
        }
        loop {
            let item = tokio::select! {
                biased;
                () = cancel.cancelled(), if !stop_sent => {
                    send_stop!();
                    continue;
                }
                () = &mut answer_check, if !answered => {
                    self.check_running(container_id).await?;
                    answer_check.as_mut().reset(Instant::now() + FIRST_ANSWER_CHECK);
                    continue;
                }
                () = &mut backstop => {
                    return Err(EngineError::AgentLost {
                        container: container_id.to_string(),
                        reason: "no answer from the agent after the command's timeout and kill".into(),
                    });
                }
                item = output.next() => item,
            };
            match item {
                Some(Ok(LogOutput::StdOut { message })) => frames.push(&message),
                Some(Ok(LogOutput::StdErr { message } | LogOutput::Console { message })) => {
                    tracing::debug!(
                        container = container_id,
                        "agent: {}",
                        String::from_utf8_lossy(&message).trim_end()
                    );
                    continue;
                }
                Some(Ok(LogOutput::StdIn { .. })) => continue,
                Some(Err(e)) => {
                    return self
                        .agent_gone(container_id, e.to_string(), wall_start, started)
                        .await;
                }
                None => {
                    return self
                        .agent_gone(container_id, "the stream ended".into(), wall_start, started)
                        .await;
                }
            }
            loop {
                let frame = match frames.next() {
                    Ok(Some(frame)) => frame,
                    Ok(None) => break,
                    Err(why) => {
                        return self
                            .agent_gone(container_id, why, wall_start, started)
                            .await;
                    }
                };
                if frame.nonce != nonce {
                    continue;
                }
                answered = true;
                let kind = match frame.kind {
                    FRAME_STDOUT => StreamKind::Stdout,
                    FRAME_STDERR => StreamKind::Stderr,
                    FRAME_STARTED => continue,
                    FRAME_REFUSED => {
                        return Err(EngineError::Unexpected(format!(
                            "the agent in container {container_id} refused the command: {}",
                            String::from_utf8_lossy(&frame.payload)
                        )));
                    }
                    FRAME_EXIT => {
                        let Some(exit) = parse_exit(&frame.payload) else {
                            return self
                                .agent_gone(
                                    container_id,
                                    "the agent sent a broken exit".into(),
                                    wall_start,
                                    started,
                                )
                                .await;
                        };
                        return Ok(self
                            .agent_outcome(container_id, nonce, exit, wall_start, started)
                            .await);
                    }
                    other => {
                        return self
                            .agent_gone(
                                container_id,
                                format!("the agent sent a frame of kind {other}"),
                                wall_start,
                                started,
                            )
                            .await;
                    }
                };
                match sink {
                    Sink::Callback(f) => f(kind, &frame.payload),
                    Sink::Channel(tx) if !receiver_gone => {
                        // A slow receiver holds the command back (bounded memory), never its
                        // cancellation.
                        let send = tx.send(OutputChunk {
                            kind,
                            data: frame.payload,
                        });
                        tokio::pin!(send);
                        loop {
                            tokio::select! {
                                biased;
                                sent = &mut send => {
                                    receiver_gone = sent.is_err();
                                    break;
                                }
                                () = cancel.cancelled(), if !stop_sent => send_stop!(),
                            }
                        }
                    }
                    Sink::Channel(_) => {}
                }
            }
        }
    }

    /// Fails as the engine fails an exec in a container that is not running (409), or is gone.
    async fn check_running(&self, container_id: &str) -> Result<(), EngineError> {
        let refuse = |status_code: u16, what: &str| {
            Err(EngineError::api(
                format!("could not run a command in container {container_id}"),
                bollard::errors::Error::DockerResponseServerError {
                    status_code,
                    message: format!("container {container_id} {what}"),
                },
            ))
        };
        match self.container_state(container_id).await? {
            Some(state) if state.running => Ok(()),
            Some(state) => refuse(409, &format!("is not running ({})", state.status)),
            None => refuse(404, "does not exist"),
        }
    }

    async fn agent_outcome(
        &self,
        container_id: &str,
        nonce: u64,
        exit: Exit,
        wall_start: SystemTime,
        started: Instant,
    ) -> ExecOutcome {
        let duration = started.elapsed();
        let oom_killed = match exit.oom_killed {
            Some(known) => known,
            // Counters unreadable: an exit by SIGKILL is checked against the engine's events.
            None if exit.code == 137 && exit.ended == ExecEnd::Exited => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                self.oom_events_since(container_id, wall_start)
                    .await
                    .is_ok_and(|n| n > 0)
            }
            None => false,
        };
        ExecOutcome {
            exec_id: format!("agent:{nonce:016x}"),
            exit_code: Some(exit.code),
            ended: exit.ended,
            oom_killed,
            pids_limit_hit: exit.pids_limit_hit,
            stray_processes: exit.left_running,
            checked: true,
            duration,
            clean_check: exit.clean_check,
        }
    }

    /// The agent's stream broke before the exit. When the container is gone with it (the agent
    /// was killed: by the OOM killer, or by the command), that is the command's outcome, and the
    /// container is not reused; otherwise the command may still run.
    async fn agent_gone(
        &self,
        container_id: &str,
        reason: String,
        wall_start: SystemTime,
        started: Instant,
    ) -> Result<ExecOutcome, EngineError> {
        let duration = started.elapsed();
        if let Ok(Some(state)) = self.container_state(container_id).await
            && !state.running
        {
            let oom_killed = state.oom_killed
                || self
                    .oom_events_since(container_id, wall_start)
                    .await
                    .is_ok_and(|n| n > 0);
            return Ok(ExecOutcome {
                exec_id: String::new(),
                exit_code: Some(137),
                ended: ExecEnd::Exited,
                oom_killed,
                pids_limit_hit: false,
                stray_processes: true,
                checked: true,
                duration,
                clean_check: None,
            });
        }
        Err(EngineError::AgentLost {
            container: container_id.to_string(),
            reason,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_reassembled_whatever_the_split() {
        let mut bytes = Vec::new();
        for (kind, nonce, payload) in [
            (FRAME_STDOUT, 7u64, &b"hello"[..]),
            (FRAME_STDERR, 9, b""),
            (FRAME_EXIT, 7, b"exited 0 1 2 1 2 0"),
        ] {
            // Encoded as the agent encodes them.
            bytes.extend(protocol::encode_frame(kind, nonce, payload));
        }
        for split in 1..bytes.len() {
            let mut frames = Frames::default();
            let mut got = Vec::new();
            for chunk in bytes.chunks(split) {
                frames.push(chunk);
                while let Some(f) = frames.next().expect("valid") {
                    got.push((f.kind, f.nonce, f.payload.to_vec()));
                }
            }
            assert_eq!(got.len(), 3, "split {split}");
            assert_eq!(got[0], (1, 7, b"hello".to_vec()));
            assert_eq!(got[1], (2, 9, Vec::new()));
        }
        let mut broken = Frames::default();
        broken.push(&[9u8; 13]);
        assert!(broken.next().is_err());
    }

    #[test]
    fn requests_are_one_line_of_words() {
        let req = ExecRequest::new(["/bin/sh", "-c", "echo 'a b'\n\u{10}\u{11}"], "/tmp/p.pid")
            .with_env("K", "v\nw")
            .with_timeout(Duration::from_secs(3));
        let line = request_line(42, &req);
        assert_eq!(line.first(), Some(&b'\n'));
        assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 2);
        assert!(
            line.iter()
                .all(|b| b.is_ascii_graphic() || *b == b' ' || *b == b'\n')
        );
        let text = String::from_utf8(line).expect("ascii");
        let words: Vec<&str> = text.split_whitespace().collect();
        assert_eq!(&words[..5], ["RUN", "42", "3000", "2000", "0"]);
        assert_eq!(words[7], "3");
        assert_eq!(
            hex::decode(words[10]).expect("hex"),
            b"echo 'a b'\n\x10\x11"
        );
        assert_eq!(words[11], "1");
        assert_eq!(hex::decode(words[12]).expect("hex"), b"K=v\nw");
    }

    #[test]
    fn exits_are_read_like_the_exec_check() {
        let e = parse_exit(b"exited 137 3 0 3 1 0").expect("valid");
        assert_eq!(
            (e.ended, e.code, e.oom_killed, e.pids_limit_hit),
            (ExecEnd::Exited, 137, Some(true), false)
        );
        let e = parse_exit(b"timedout 143 0 - 2 - 1").expect("valid");
        assert_eq!(
            (e.ended, e.oom_killed, e.pids_limit_hit, e.left_running),
            (ExecEnd::TimedOut, None, true, true)
        );
        assert!(parse_exit(b"exited x").is_none());
    }
}
