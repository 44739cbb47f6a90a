//! What the fake does when asked to run a command.
//!
//! By default nothing runs: a command gets a [`ScriptedCommand`] (output, pauses, exit code)
//! chosen by a substring of its command line, so tests say exactly what a "sandbox" answers and
//! no test can touch the host by accident. Only a fake built with `execute_on_host(true)` runs
//! unscripted commands with `/bin/sh -c`, for tests that need real processes.
//!
//! Output goes to a [`CommandLog`] the way Daytona's toolbox writes a session command's log:
//! each line prefixed with the stdout (`01 01 01`) or stderr (`02 02 02`) marker.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::sync::watch;

use crate::demux::{STDERR_MARKER, STDOUT_MARKER};
use crate::model::OutputStream;

/// A scripted command: what it writes, when, and how it exits.
///
/// ```
/// use std::time::Duration;
/// use stigmer_daytona::fake::ScriptedCommand;
///
/// let build = ScriptedCommand::exit(2)
///     .stdout("compiling\n")
///     .sleep(Duration::from_millis(50))
///     .stderr("error: oops\n");
/// assert_eq!(build.exit_code(), 2);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use]
pub struct ScriptedCommand {
    steps: Vec<Step>,
    exit_code: i32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Step {
    Write(OutputStream, Vec<u8>),
    Sleep(Duration),
}

impl Default for ScriptedCommand {
    fn default() -> Self {
        ScriptedCommand::exit(0)
    }
}

impl ScriptedCommand {
    /// A command that writes nothing and exits with `code`; add steps with the methods below.
    pub fn exit(code: i32) -> Self {
        ScriptedCommand {
            steps: Vec::new(),
            exit_code: code,
        }
    }

    /// Writes to stdout.
    pub fn stdout(mut self, text: impl AsRef<[u8]>) -> Self {
        self.steps
            .push(Step::Write(OutputStream::Stdout, text.as_ref().to_vec()));
        self
    }

    /// Writes to stderr.
    pub fn stderr(mut self, text: impl AsRef<[u8]>) -> Self {
        self.steps
            .push(Step::Write(OutputStream::Stderr, text.as_ref().to_vec()));
        self
    }

    /// Pauses (a slow command).
    pub fn sleep(mut self, pause: Duration) -> Self {
        self.steps.push(Step::Sleep(pause));
        self
    }

    /// The exit code.
    #[must_use]
    pub fn exit_code(&self) -> i32 {
        self.exit_code
    }
}

/// What to run for one command.
#[derive(Clone, Debug)]
pub(crate) enum Source {
    Script(ScriptedCommand),
    Host {
        command: String,
        cwd: Option<String>,
        env: BTreeMap<String, String>,
        merge_stderr: bool,
        /// The sandbox's directory: where the command starts (unless `cwd`), and its `HOME`.
        home: Option<std::path::PathBuf>,
        /// Whether stdin is a pipe for `command/{id}/input` (session commands), else empty.
        input: bool,
    },
}

/// How a run ended.
pub(crate) enum RunEnd {
    Exited(i32),
    TimedOut,
}

/// A command's log and exit code, observable while it runs.
#[derive(Debug)]
pub(crate) struct CommandLog {
    pub id: String,
    pub command: String,
    inner: Mutex<LogInner>,
    version: watch::Sender<u64>,
    /// The command's stdin while it runs on the host with a pipe for input.
    pub input: tokio::sync::Mutex<Option<tokio::process::ChildStdin>>,
    /// Its process group on the host, while it runs.
    group: Mutex<Option<u32>>,
    /// Set when the process has exited (before the exit code is recorded).
    pub exited: std::sync::atomic::AtomicBool,
    /// Set when the command runs on the host with a pipe for input: input that comes before
    /// the process has started waits for its pipe.
    pub takes_input: std::sync::atomic::AtomicBool,
    /// Whether input is echoed into the log as stdout (Daytona's default, unless the command
    /// was started with `suppressInputEcho`).
    pub echo_input: std::sync::atomic::AtomicBool,
}

#[derive(Debug, Default)]
struct LogInner {
    bytes: Vec<u8>,
    exit_code: Option<i32>,
}

impl CommandLog {
    pub fn new(id: String, command: String) -> Self {
        CommandLog {
            id,
            command,
            inner: Mutex::new(LogInner::default()),
            version: watch::Sender::new(0),
            input: tokio::sync::Mutex::new(None),
            group: Mutex::new(None),
            exited: std::sync::atomic::AtomicBool::new(false),
            takes_input: std::sync::atomic::AtomicBool::new(false),
            echo_input: std::sync::atomic::AtomicBool::new(true),
        }
    }

    /// Kills the command's process group, if it runs on the host (its session or sandbox is
    /// being deleted).
    pub fn kill(&self) {
        let group = self.group.lock().ok().and_then(|mut g| g.take());
        drop(GroupKiller(group));
    }

    /// Appends output, each line behind its stream's marker, as the toolbox does.
    pub fn append(&self, stream: OutputStream, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let marker = match stream {
            OutputStream::Stdout => STDOUT_MARKER,
            OutputStream::Stderr => STDERR_MARKER,
        };
        if let Ok(mut inner) = self.inner.lock() {
            for line in data.split_inclusive(|b| *b == b'\n') {
                inner.bytes.extend_from_slice(&marker);
                inner.bytes.extend_from_slice(line);
            }
        }
        self.version.send_modify(|v| *v += 1);
    }

    pub fn finish(&self, exit_code: i32) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.exit_code = Some(exit_code);
        }
        self.version.send_modify(|v| *v += 1);
    }

    /// Log bytes from `offset` on, and the exit code if the command has ended.
    pub fn read_from(&self, offset: usize) -> (Vec<u8>, Option<i32>) {
        match self.inner.lock() {
            Ok(inner) => (
                inner.bytes.get(offset..).unwrap_or_default().to_vec(),
                inner.exit_code,
            ),
            Err(_) => (Vec::new(), Some(-1)),
        }
    }

    pub fn exit_code(&self) -> Option<i32> {
        self.inner.lock().ok().and_then(|i| i.exit_code)
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }
}

/// Removes the stream markers (what a client that asked for merged output gets).
pub(crate) fn strip_markers(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let rest = &bytes[i..];
        if rest.starts_with(&STDOUT_MARKER) || rest.starts_with(&STDERR_MARKER) {
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}

/// Runs `source`, writing to `log`, within `timeout` if one is given. Does not mark the log
/// finished: the caller decides what a timeout means.
pub(crate) async fn run(source: Source, log: &CommandLog, timeout: Option<Duration>) -> RunEnd {
    let work = async {
        match source {
            Source::Script(script) => run_script(script, log).await,
            Source::Host {
                command,
                cwd,
                env,
                merge_stderr,
                home,
                input,
            } => {
                let place = Place {
                    cwd: cwd.map(std::path::PathBuf::from).or_else(|| home.clone()),
                    home,
                    input,
                };
                run_on_host(&command, &place, &env, merge_stderr, log).await
            }
        }
    };
    match timeout {
        Some(t) => tokio::time::timeout(t, work)
            .await
            .map_or(RunEnd::TimedOut, RunEnd::Exited),
        None => RunEnd::Exited(work.await),
    }
}

async fn run_script(script: ScriptedCommand, log: &CommandLog) -> i32 {
    for step in script.steps {
        match step {
            Step::Write(stream, data) => log.append(stream, &data),
            Step::Sleep(pause) => tokio::time::sleep(pause).await,
        }
    }
    script.exit_code
}

/// Where and how a host command runs.
struct Place {
    cwd: Option<std::path::PathBuf>,
    home: Option<std::path::PathBuf>,
    input: bool,
}

async fn run_on_host(
    command: &str,
    place: &Place,
    env: &BTreeMap<String, String>,
    merge_stderr: bool,
    log: &CommandLog,
) -> i32 {
    // `exec 2>&1` first keeps the order of merged output exact, as Daytona's execute does.
    let script = if merge_stderr {
        format!("exec 2>&1\n{command}")
    } else {
        command.to_owned()
    };
    let mut cmd = tokio::process::Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(script)
        .envs(env)
        .stdin(if place.input {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0);
    if let Some(home) = &place.home {
        cmd.env("HOME", home);
    }
    if let Some(dir) = &place.cwd {
        cmd.current_dir(dir);
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            log.append(
                OutputStream::Stderr,
                format!("fake daytona: could not start /bin/sh: {e}\n").as_bytes(),
            );
            return -1;
        }
    };
    // On a timeout this future is dropped: kill the whole process group, not only the shell.
    let mut group = GroupKiller(child.id());
    if let Ok(mut g) = log.group.lock() {
        *g = child.id();
    }
    if let Some(stdin) = child.stdin.take() {
        *log.input.lock().await = Some(stdin);
    }
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let (status, (), ()) = tokio::join!(
        child.wait(),
        pump(stdout.map(Pipe::Out), OutputStream::Stdout, log),
        pump(stderr.map(Pipe::Err), OutputStream::Stderr, log),
    );
    group.0 = None;
    if let Ok(mut g) = log.group.lock() {
        *g = None;
    }
    log.exited.store(true, std::sync::atomic::Ordering::SeqCst);
    // The end of the writer: a reader the command left behind sees end of file. An input call
    // holding it drops it once it sees the command exited.
    if let Ok(mut input) = log.input.try_lock() {
        input.take();
    }
    match status {
        Ok(s) => s.code().unwrap_or_else(|| {
            use std::os::unix::process::ExitStatusExt;
            s.signal().map_or(-1, |sig| 128 + sig)
        }),
        Err(_) => -1,
    }
}

async fn pump(pipe: Option<Pipe>, stream: OutputStream, log: &CommandLog) {
    let Some(mut pipe) = pipe else { return };
    let mut buf = vec![0u8; 8192];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => log.append(stream, &buf[..n]),
        }
    }
}

/// Kills a process group when dropped while still armed.
struct GroupKiller(Option<u32>);

impl Drop for GroupKiller {
    fn drop(&mut self) {
        if let Some(pgid) = self.0 {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{pgid}")])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Either pipe, so one reader serves both.
enum Pipe {
    Out(tokio::process::ChildStdout),
    Err(tokio::process::ChildStderr),
}

impl tokio::io::AsyncRead for Pipe {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Pipe::Out(p) => std::pin::Pin::new(p).poll_read(cx, buf),
            Pipe::Err(p) => std::pin::Pin::new(p).poll_read(cx, buf),
        }
    }
}
