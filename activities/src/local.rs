//! The local backend: the command as a subprocess on the worker's host, in the caller's working
//! directory with the caller's environment.
//!
//! The command leads its own process group so that Ctrl-C, `--timeout` and the end of the
//! command itself can take down everything it started (TERM, then KILL after a grace period):
//! no orphan keeps running after `stigmer run` returns.

use crate::output::{FLUSH_INTERVAL, OutputSink, StreamKind};
use crate::stdin::StdinFeed;
use crate::store::StoreError;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::process::Command;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How long a process group gets between TERM and KILL.
pub const KILL_GRACE: Duration = Duration::from_secs(2);
const READ_CHUNK: usize = 64 * 1024;

/// How a command ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ended {
    /// Exited on its own (a signal death is reported as 128 + signal, as shells do).
    Exited(i32),
    TimedOut,
    Cancelled,
    /// It could not be started or run; the text says why (for the user).
    Failed {
        exit_code: Option<i32>,
        reason: String,
    },
}

/// Why a run stopped early.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    Cancelled,
    TimedOut,
}

/// A token that fires on cancel or timeout and remembers which came first.
#[derive(Clone, Default)]
pub struct Stopper {
    token: CancellationToken,
    reason: std::sync::Arc<std::sync::OnceLock<StopReason>>,
}

impl Stopper {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    pub fn stop(&self, reason: StopReason) {
        let _ = self.reason.set(reason);
        self.token.cancel();
    }

    #[must_use]
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    #[must_use]
    pub fn reason(&self) -> Option<StopReason> {
        self.reason.get().copied()
    }
}

/// Runs `argv` on the host, feeding it `stdin` (else it reads end of file), and pumps its output
/// into `sink` until it ends or `stop` fires.
pub async fn run(
    argv: &[String],
    workdir: &str,
    env: &[(String, String)],
    sink: &mut OutputSink,
    stop: &Stopper,
    stdin: Option<StdinFeed>,
    on_spawn: impl FnOnce(i32),
) -> Result<Ended, StoreError> {
    let Some((program, args)) = argv.split_first() else {
        return Ok(Ended::Failed {
            exit_code: None,
            reason: "empty command: give a command string or a program after `--`".into(),
        });
    };
    if !std::path::Path::new(workdir).is_dir() {
        return Ok(Ended::Failed {
            exit_code: None,
            reason: format!("working directory {workdir} does not exist or is not a directory"),
        });
    }
    let mut command = Command::new(program);
    command
        .args(args)
        .current_dir(workdir)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            let (code, what) = match e.kind() {
                std::io::ErrorKind::NotFound => (127, "command not found"),
                std::io::ErrorKind::PermissionDenied => (126, "permission denied"),
                _ => (126, "could not start"),
            };
            return Ok(Ended::Failed {
                exit_code: Some(code),
                reason: format!("{what}: {program} ({e})"),
            });
        }
    };
    let pgid = child.id().map(|id| Pid::from_raw(id as i32));
    // From here, every way out kills the group, errors included (a store that fails mid-run
    // must not leave the command running while its execution is recorded failed).
    let mut group = crate::process::GroupGuard::new(pgid);
    if let Some(pgid) = pgid {
        on_spawn(pgid.as_raw());
    }

    let _feeding = match (stdin, child.stdin.take()) {
        (Some(feed), Some(pipe)) => Some(feed.spawn(pipe)),
        _ => None,
    };
    let (tx, mut rx) = mpsc::channel::<(StreamKind, Vec<u8>)>(16);
    if let Some(out) = child.stdout.take() {
        tokio::spawn(pump(out, StreamKind::Stdout, tx.clone()));
    }
    if let Some(err) = child.stderr.take() {
        tokio::spawn(pump(err, StreamKind::Stderr, tx.clone()));
    }
    drop(tx);

    let mut flush_tick = tokio::time::interval(FLUSH_INTERVAL);
    let mut status = None;
    let mut streams_open = true;
    let mut stopping: Option<StopReason> = None;
    loop {
        if status.is_some() && !streams_open {
            break;
        }
        tokio::select! {
            biased;
            () = stop.token().cancelled(), if stopping.is_none() => {
                stopping = Some(stop.reason().unwrap_or(StopReason::Cancelled));
                if let Some(pgid) = pgid {
                    crate::process::terminate(crate::process::Target::Group(pgid), KILL_GRACE).await;
                }
            }
            chunk = rx.recv(), if streams_open => match chunk {
                Some((stream, data)) => sink.write(stream, data, stop.token()).await?,
                None => streams_open = false,
            },
            exited = child.wait(), if status.is_none() => {
                status = Some(exited);
                // The command is done: whatever it left running in its group goes with it,
                // now, before its pid can be reused.
                if let Some(pgid) = pgid {
                    let _ = killpg(pgid, Signal::SIGKILL);
                }
                group.disarm();
            }
            _ = flush_tick.tick() => sink.flush().await?,
        }
    }

    if let Some(reason) = stopping {
        return Ok(match reason {
            StopReason::Cancelled => Ended::Cancelled,
            StopReason::TimedOut => Ended::TimedOut,
        });
    }
    Ok(match status {
        Some(Ok(st)) => Ended::Exited(exit_code_of(st)),
        Some(Err(e)) => Ended::Failed {
            exit_code: None,
            reason: format!("lost track of the command: {e}"),
        },
        None => Ended::Failed {
            exit_code: None,
            reason: "the command's status is unknown".into(),
        },
    })
}

/// Kills the process group `pgid` if its leader is still the process that started at
/// `started` (so a reused pid is never hit). Returns whether something was killed.
pub fn kill_leftover_group(pgid: i32, started: i64) -> bool {
    if crate::process::start_time(pgid) != Some(started) {
        return false;
    }
    killpg(Pid::from_raw(pgid), Signal::SIGKILL).is_ok()
}

fn exit_code_of(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1)
}

async fn pump(
    mut reader: impl tokio::io::AsyncRead + Unpin,
    stream: StreamKind,
    tx: mpsc::Sender<(StreamKind, Vec<u8>)>,
) {
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if tx.send((stream, buf[..n].to_vec())).await.is_err() {
                    return;
                }
            }
        }
    }
}
