//! stigmer-agent: the keep-alive process of a sandbox container, which also runs its commands.
//!
//! A `docker exec` costs the engine a runc exec (tens of milliseconds) before the command's first
//! instruction; this process is already inside the container, so it spawns a command with a
//! fork. The worker copies it into the container before starting it (it is a static binary with
//! no dependency on the image), makes it the container's first process (PID 1, no `docker-init`:
//! init would hold the same stdio, dumpable, where a command could read `/proc/1/fd/0`), and
//! talks to it over the container's attached stdio: requests are lines on stdin, answers are frames on
//! stdout. That channel needs no network (it works with `--network none`) and no shared file
//! system (it works with a remote engine).
//!
//! Requests (one line each; variable fields are hex, so no byte of a value can break a line):
//!   `RUN <nonce> <timeout_ms|0> <grace_ms> <flags> <pid_file> <workdir> <argc> <arg>… <envc> <K=V>…`
//!   (`flags`: bit 0 `last`, the container's last command; the agent exits after its exit
//!   frame, so the container stops by itself while the worker records the result, and its
//!   removal is quick. Bit 1 `keep`: a session's own container, where what the command left
//!   running in the background (a dev server) stays, so it is not killed after the command)
//!   `STOP <nonce>` — SIGTERM to the command's process group, SIGKILL after the grace period.
//! Frames (`protocol.rs`): `[kind: u8][nonce: u64 BE][len: u32 BE][payload]`; kinds: stdout,
//! stderr, started (payload: pid), exit (`<how> <code> <pids_max_before> <oom_before>
//! <pids_max_after> <oom_after> <left_running> <check_us>`; `check_us`: how long making sure
//! nothing was left took, in microseconds), refused (payload: why; nothing ran).
//! Every frame names its request, so a worker that attaches while an older request's tail is
//! still being written ignores what is not its own.
//!
//! The pid file has the format of the exec wrapper (`<pgid> <pids_max> <oom_kill>`), so the
//! exec-based kill and leftover checks work on either kind of container. Single-threaded (poll):
//! an idle container holds one task, this process. Not dumpable: a command of the same uid can
//! neither read this process's memory (where the next request's environment passes) nor open
//! its stdio through `/proc/1/fd`. As PID 1 it reaps the orphans commands leave (never the
//! command itself, which its `Child` waits for) and exits on SIGTERM, which PID 1 would
//! otherwise ignore.

use std::ffi::{c_int, c_long, c_uint, c_ulong};
use std::fs::File;
use std::io::{Read, Write};
use std::mem::ManuallyDrop;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, ChildStderr, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

mod protocol;
use protocol::{
    encode_frame, EGRESS_SOCKET_PATH, FRAME_EXIT, FRAME_REFUSED, FRAME_STARTED, FRAME_STDERR,
    FRAME_STDOUT, PROXY_LISTEN,
};

#[repr(C)]
struct PollFd {
    fd: c_int,
    events: i16,
    revents: i16,
}

unsafe extern "C" {
    fn poll(fds: *mut PollFd, nfds: c_ulong, timeout: c_int) -> c_int;
    fn kill(pid: c_int, sig: c_int) -> c_int;
    fn syscall(num: c_long, ...) -> c_long;
    fn prctl(option: c_int, ...) -> c_int;
    fn waitid(idtype: c_int, id: c_uint, infop: *mut c_int, options: c_int) -> c_int;
    fn waitpid(pid: c_int, status: *mut c_int, options: c_int) -> c_int;
    fn signal(signum: c_int, handler: extern "C" fn(c_int)) -> usize;
    fn _exit(status: c_int) -> !;
}

const P_ALL: c_int = 0;
const WNOHANG: c_int = 1;
const WEXITED: c_int = 4;
const WNOWAIT: c_int = 0x0100_0000;
/// Where `si_pid` sits in a `siginfo_t` (128 bytes on every Linux), counted in `c_int`s: after
/// signo, errno and code, and on 64-bit targets the padding that aligns the union.
const SI_PID: usize = if cfg!(target_pointer_width = "64") { 4 } else { 3 };
/// How often an idle PID 1 reaps orphans (a command running wakes it more often anyway).
const REAP_TICK: Duration = Duration::from_secs(1);

extern "C" fn exit_on_term(_: c_int) {
    // SAFETY: _exit is async-signal-safe and ends the process at once.
    unsafe { _exit(0) }
}

/// As PID 1, reaps every exited child but `command`, which its `Child` reaps: `WNOWAIT` looks
/// first, so the command's status is never taken from it.
fn reap_orphans(command: Option<c_int>) {
    loop {
        let mut info = [0 as c_int; 32];
        // SAFETY: `info` is a 128-byte buffer, the size of siginfo_t, valid for the call.
        let r = unsafe { waitid(P_ALL, 0, info.as_mut_ptr(), WEXITED | WNOHANG | WNOWAIT) };
        let pid = info[SI_PID];
        if r != 0 || pid == 0 || Some(pid) == command {
            return;
        }
        // SAFETY: reaps the one exited child named; a null status pointer is allowed.
        unsafe { waitpid(pid, std::ptr::null_mut(), WNOHANG) };
    }
}

const POLLIN: i16 = 0x1;
const POLLOUT: i16 = 0x4;
const SIGKILL: c_int = 9;
const SIGTERM: c_int = 15;
const PR_SET_DUMPABLE: c_int = 4;
/// pidfd_open(2): the same number on every architecture (Linux 5.3+).
const SYS_PIDFD_OPEN: c_long = 434;


/// After the command exits, how long output still held open by something it left behind is
/// waited for (that something makes the container unfit for reuse anyway).
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(200);
/// Without a pidfd (a kernel before 5.3), how often the child is looked at.
const FALLBACK_TICK: Duration = Duration::from_millis(2);

fn main() {
    // SAFETY: prctl(PR_SET_DUMPABLE, 0) only changes this process's own attributes.
    unsafe {
        prctl(PR_SET_DUMPABLE, 0 as c_ulong);
    }
    if std::process::id() == 1 {
        // SAFETY: installs a handler that only calls _exit (async-signal-safe).
        unsafe {
            signal(SIGTERM, exit_on_term);
        }
    }
    // SAFETY: fd 1 is the container's stdout for the life of the process; never closed here.
    let mut out = ManuallyDrop::new(unsafe { File::from_raw_fd(1) });
    let mut agent = Agent {
        out: &mut out,
        running: None,
    };
    agent.serve();
    // stdin is gone: no request can come any more, but the container must stay up until the
    // worker removes it.
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum How {
    Exited,
    TimedOut,
    Cancelled,
}

impl How {
    fn word(self) -> &'static str {
        match self {
            How::Exited => "exited",
            How::TimedOut => "timedout",
            How::Cancelled => "cancelled",
        }
    }
}

struct Running {
    nonce: u64,
    child: Child,
    pgid: c_int,
    pidfd: Option<OwnedFd>,
    stdout: Option<ChildStdout>,
    stderr: Option<ChildStderr>,
    pid_file: String,
    counters_before: (String, String),
    deadline: Option<Instant>,
    grace: Duration,
    how: How,
    /// SIGTERM was sent; SIGKILL is due at this instant.
    kill_at: Option<Instant>,
    /// The exit code, and until when output is still drained.
    exited: Option<(i32, Instant)>,
    /// Exit after this command.
    last: bool,
    /// Leave what the command started in the background running (a session's container).
    keep: bool,
}

struct Agent<'a> {
    out: &'a mut File,
    running: Option<Running>,
}

impl Agent<'_> {
    fn serve(&mut self) {
        let mut stdin_open = true;
        let mut pending: Vec<u8> = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut forwarder = Forwarder::open();
        while stdin_open || self.running.is_some() || forwarder.is_some() {
            let mut fds = Vec::with_capacity(4);
            if stdin_open {
                fds.push(PollFd { fd: 0, events: POLLIN, revents: 0 });
            }
            let mut wait = None::<Duration>;
            if let Some(r) = &self.running {
                if r.exited.is_none() {
                    match &r.pidfd {
                        Some(fd) => fds.push(PollFd { fd: fd.as_raw_fd(), events: POLLIN, revents: 0 }),
                        None => wait = Some(FALLBACK_TICK),
                    }
                }
                for fd in [r.stdout.as_ref().map(AsRawFd::as_raw_fd), r.stderr.as_ref().map(AsRawFd::as_raw_fd)]
                    .into_iter()
                    .flatten()
                {
                    fds.push(PollFd { fd, events: POLLIN, revents: 0 });
                }
                let now = Instant::now();
                for due in [r.deadline.filter(|_| r.kill_at.is_none() && r.exited.is_none()), r.kill_at, r.exited.map(|e| e.1)]
                    .into_iter()
                    .flatten()
                {
                    let left = due.saturating_duration_since(now);
                    wait = Some(wait.map_or(left, |w| w.min(left)));
                }
            }
            let pid1 = std::process::id() == 1;
            if pid1 {
                reap_orphans(self.running.as_ref().map(|r| r.pgid));
                wait = Some(wait.map_or(REAP_TICK, |w| w.min(REAP_TICK)));
            }
            let forwarded = fds.len();
            if let Some(f) = &forwarder {
                f.poll_fds(&mut fds);
            }
            let timeout_ms = wait.map_or(-1, |w| w.as_nanos().div_ceil(1_000_000).min(60_000) as c_int);
            // SAFETY: `fds` is a valid array of `fds.len()` pollfd structs for the call's duration.
            let n = unsafe { poll(fds.as_mut_ptr(), fds.len() as c_ulong, timeout_ms) };
            if n < 0 {
                continue; // EINTR
            }
            let ready = |fd: c_int| fds.iter().any(|p| p.fd == fd && p.revents != 0);
            if stdin_open && ready(0) {
                // SAFETY: fd 0 is the container's stdin; ManuallyDrop keeps it open.
                let mut stdin = ManuallyDrop::new(unsafe { File::from_raw_fd(0) });
                match stdin.read(&mut buf) {
                    Ok(0) => stdin_open = false,
                    Ok(k) => {
                        pending.extend_from_slice(&buf[..k]);
                        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                            let line: Vec<u8> = pending.drain(..=end).collect();
                            self.request(&line[..end]);
                        }
                        if pending.len() > 64 * 1024 * 1024 {
                            pending.clear(); // not a request of ours
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => stdin_open = false,
                }
            }
            self.pump(&ready, &mut buf);
            self.supervise();
            if let Some(f) = forwarder.as_mut() {
                f.service(&fds[forwarded..], &mut buf);
            }
        }
    }

    /// Forwards what the command wrote.
    fn pump(&mut self, ready: &dyn Fn(c_int) -> bool, buf: &mut [u8]) {
        let Some(r) = self.running.as_mut() else { return };
        let nonce = r.nonce;
        let mut frames = Vec::new();
        if let Some(s) = r.stdout.as_mut().filter(|s| ready(s.as_raw_fd())) {
            match s.read(buf) {
                Ok(0) | Err(_) => r.stdout = None,
                Ok(k) => frames.push((FRAME_STDOUT, buf[..k].to_vec())),
            }
        }
        if let Some(s) = r.stderr.as_mut().filter(|s| ready(s.as_raw_fd())) {
            match s.read(buf) {
                Ok(0) | Err(_) => r.stderr = None,
                Ok(k) => frames.push((FRAME_STDERR, buf[..k].to_vec())),
            }
        }
        for (kind, data) in frames {
            self.frame(kind, nonce, &data);
        }
    }

    /// Timeout, kill escalation, exit and the end of a command.
    fn supervise(&mut self) {
        let now = Instant::now();
        let Some(r) = self.running.as_mut() else { return };
        if r.exited.is_none() {
            if let Ok(Some(status)) = r.child.try_wait() {
                let code = status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
                r.exited = Some((code, now + DRAIN_AFTER_EXIT));
            }
        }
        if r.kill_at.is_none() && r.exited.is_none() && r.deadline.is_some_and(|d| now >= d) {
            r.how = How::TimedOut;
            signal_group(r.pgid, SIGTERM);
            r.kill_at = Some(now + r.grace);
        }
        if r.kill_at.is_some_and(|k| now >= k) {
            signal_group(r.pgid, SIGKILL);
            r.kill_at = None;
        }
        let Some((code, drain_until)) = r.exited else { return };
        let drained = r.stdout.is_none() && r.stderr.is_none();
        if !drained && now < drain_until {
            return;
        }
        if r.how != How::Exited && group_alive(r.pgid) {
            // A stopped command's group goes with it, whatever it did with SIGTERM.
            signal_group(r.pgid, SIGKILL);
            for _ in 0..50 {
                if !group_alive(r.pgid) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        // What the command left behind goes with it, as its group does on the host: in its
        // group or in a session of its own (`setsid`, a double fork), anything alive besides
        // init and this agent. kill(-1) reaches every process this user may signal but PID 1
        // and the caller. Whatever survives that makes the container unfit for the next
        // execution (it would meet it, and could read its environment).
        let check_started = Instant::now();
        if !r.keep && others_alive() {
            // SAFETY: kill(2) with pid -1 signals processes; no memory is involved.
            unsafe {
                kill(-1, SIGKILL);
            }
            for _ in 0..200 {
                if std::process::id() == 1 {
                    reap_orphans(None);
                }
                if !others_alive() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        let alive = others_alive();
        let check_us = check_started.elapsed().as_micros();
        // A kept background process must not be found by a later kill of this command's group.
        if !alive || r.keep {
            let _ = std::fs::write(&r.pid_file, b"");
        }
        let (pm1, ok1) = counters();
        let payload = format!(
            "{} {code} {} {} {pm1} {ok1} {} {check_us}",
            r.how.word(),
            r.counters_before.0,
            r.counters_before.1,
            u8::from(alive)
        );
        let nonce = r.nonce;
        let last = r.last;
        self.running = None;
        self.frame(FRAME_EXIT, nonce, payload.as_bytes());
        if last {
            std::process::exit(0);
        }
    }

    fn request(&mut self, line: &[u8]) {
        let text = String::from_utf8_lossy(line);
        let mut words = text.split(' ');
        let verb = words.next().unwrap_or("");
        let nonce = words.next().and_then(|n| n.parse::<u64>().ok());
        match (verb, nonce) {
            ("", _) => {}
            ("RUN", Some(nonce)) => match parse_run(&mut words) {
                Ok(run) => self.start(nonce, run),
                Err(why) => self.frame(FRAME_REFUSED, nonce, why.as_bytes()),
            },
            ("STOP", Some(nonce)) => {
                if let Some(r) = self.running.as_mut().filter(|r| r.nonce == nonce) {
                    if r.kill_at.is_none() && r.exited.is_none() {
                        r.how = How::Cancelled;
                        signal_group(r.pgid, SIGTERM);
                        r.kill_at = Some(Instant::now() + r.grace);
                    }
                }
            }
            _ => self.frame(FRAME_REFUSED, 0, b"not a request"),
        }
    }

    fn start(&mut self, nonce: u64, run: Run) {
        if self.running.is_some() {
            return self.frame(FRAME_REFUSED, nonce, b"another command is running in this container");
        }
        let counters_before = counters();
        // Like the exec wrapper: a command whose pid cannot be recorded (so that it can be
        // killed) is not started.
        if let Err(e) = std::fs::write(&run.pid_file, b"") {
            let msg = format!("stigmer: cannot record the command's pid in {}: {e}\n", run.pid_file);
            self.frame(FRAME_STDERR, nonce, msg.as_bytes());
            let exit = format!("exited 125 {} {} - - 0", counters_before.0, counters_before.1);
            return self.frame(FRAME_EXIT, nonce, exit.as_bytes());
        }
        if !std::path::Path::new(&run.workdir).is_dir() {
            let msg = format!("stigmer: cannot enter the working directory {}\n", run.workdir);
            self.frame(FRAME_STDERR, nonce, msg.as_bytes());
            let exit = format!("exited 126 {} {} - - 0", counters_before.0, counters_before.1);
            return self.frame(FRAME_EXIT, nonce, exit.as_bytes());
        }
        let mut cmd = Command::new(&run.argv[0]);
        cmd.args(&run.argv[1..])
            .envs(run.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&run.workdir)
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = match cmd.spawn() {
            Ok(child) => child,
            Err(e) => {
                // What a shell says and exits with when it cannot run a program.
                let code = if e.kind() == std::io::ErrorKind::NotFound { 127 } else { 126 };
                let msg = format!("stigmer: {}: {e}\n", run.argv[0]);
                self.frame(FRAME_STDERR, nonce, msg.as_bytes());
                let _ = std::fs::write(&run.pid_file, b"");
                let exit = format!("exited {code} {} {} - - 0", counters_before.0, counters_before.1);
                return self.frame(FRAME_EXIT, nonce, exit.as_bytes());
            }
        };
        let pid = child.id() as c_int;
        let _ = std::fs::write(
            &run.pid_file,
            format!("{pid} {} {}\n", counters_before.0, counters_before.1),
        );
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
        let raw = unsafe { syscall(SYS_PIDFD_OPEN, pid as c_long, 0 as c_long) };
        // SAFETY: a non-negative result is a fresh fd that nothing else owns.
        let pidfd = (raw >= 0).then(|| unsafe { OwnedFd::from_raw_fd(raw as c_int) });
        let now = Instant::now();
        self.running = Some(Running {
            nonce,
            stdout: child.stdout.take(),
            stderr: child.stderr.take(),
            child,
            pgid: pid,
            pidfd,
            pid_file: run.pid_file,
            counters_before,
            deadline: run.timeout.map(|t| now + t),
            grace: run.grace,
            how: How::Exited,
            kill_at: None,
            exited: None,
            last: run.last,
            keep: run.keep,
        });
        self.frame(FRAME_STARTED, nonce, pid.to_string().as_bytes());
    }

    fn frame(&mut self, kind: u8, nonce: u64, payload: &[u8]) {
        let f = encode_frame(kind, nonce, payload);
        // Nobody attached: the engine discards it. A broken stdout: nothing can be told anyway.
        let _ = self.out.write_all(&f);
    }
}

struct Run {
    last: bool,
    keep: bool,
    timeout: Option<Duration>,
    grace: Duration,
    pid_file: String,
    workdir: String,
    argv: Vec<String>,
    env: Vec<(String, String)>,
}

fn parse_run<'a>(words: &mut impl Iterator<Item = &'a str>) -> Result<Run, String> {
    let mut num = |what: &str| {
        words
            .next()
            .and_then(|w| w.parse::<u64>().ok())
            .ok_or_else(|| format!("bad request: {what}"))
    };
    let timeout_ms = num("timeout")?;
    let grace_ms = num("grace")?;
    let flags = num("flags")?;
    let mut field = |what: &str| {
        words
            .next()
            .and_then(unhex)
            .ok_or_else(|| format!("bad request: {what}"))
    };
    let pid_file = field("pid file")?;
    let workdir = field("working directory")?;
    let argc: usize = field_count(&mut *words, "argc")?;
    let mut argv = Vec::with_capacity(argc);
    for _ in 0..argc {
        argv.push(words.next().and_then(unhex).ok_or("bad request: argument")?);
    }
    let envc: usize = field_count(&mut *words, "envc")?;
    let mut env = Vec::with_capacity(envc);
    for _ in 0..envc {
        let kv = words.next().and_then(unhex).ok_or("bad request: variable")?;
        let (k, v) = kv.split_once('=').ok_or("bad request: variable without =")?;
        env.push((k.to_string(), v.to_string()));
    }
    if argv.is_empty() || argv[0].is_empty() {
        return Err("bad request: empty command".into());
    }
    Ok(Run {
        last: flags & 1 != 0,
        keep: flags & 2 != 0,
        timeout: (timeout_ms > 0).then(|| Duration::from_millis(timeout_ms)),
        grace: Duration::from_millis(grace_ms),
        pid_file,
        workdir,
        argv,
        env,
    })
}

fn field_count<'a>(words: &mut impl Iterator<Item = &'a str>, what: &str) -> Result<usize, String> {
    words
        .next()
        .and_then(|w| w.parse().ok())
        .ok_or_else(|| format!("bad request: {what}"))
}

fn unhex(s: &str) -> Option<String> {
    if s.len() % 2 != 0 {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

fn signal_group(pgid: c_int, sig: c_int) {
    if pgid > 1 {
        // SAFETY: kill(2) with a negative pid signals a process group; no memory is involved.
        unsafe {
            kill(-pgid, sig);
        }
    }
}

/// Whether a live (not zombie) process of the group is left. Read from /proc, because a
/// zombie still answers kill(-pgid, 0) until its new parent reaps it; the probe serves where
/// /proc cannot be read.
fn group_alive(pgid: c_int) -> bool {
    if pgid <= 1 {
        return false;
    }
    // SAFETY: kill(2) with signal 0 probes a process group; no memory is involved.
    any_live_process(|_, pgrp| pgrp == pgid).unwrap_or_else(|| unsafe { kill(-pgid, 0) } == 0)
}

/// Whether a live process other than init (PID 1) and this agent runs in the container. Where
/// /proc cannot be read, nothing can be told, and the container is taken as not clean.
fn others_alive() -> bool {
    let me = std::process::id() as c_int;
    any_live_process(|pid, _| pid != 1 && pid != me).unwrap_or(true)
}

/// Whether a live (not zombie) process matching `wanted(pid, pgrp)` is listed in /proc; `None`
/// when /proc cannot be read.
fn any_live_process(wanted: impl Fn(c_int, c_int) -> bool) -> Option<bool> {
    let entries = std::fs::read_dir("/proc").ok()?;
    Some(entries.flatten().any(|entry| {
        let name = entry.file_name();
        let Some(pid) = name.to_str().filter(|n| n.bytes().all(|b| b.is_ascii_digit())) else {
            return false;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            return false;
        };
        // `pid (comm) state ppid pgrp …`; comm may hold spaces and parentheses.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            return false;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next().unwrap_or("Z");
        let Some(pgrp) = fields.nth(1).and_then(|g| g.parse::<c_int>().ok()) else {
            return false;
        };
        let Ok(pid) = pid.parse::<c_int>() else {
            return false;
        };
        state != "Z" && state != "X" && wanted(pid, pgrp)
    }))
}

/// The container's cgroup counters: pids-limit hits and OOM kills (`-` when unreadable), read
/// as the exec wrapper reads them.
fn counters() -> (String, String) {
    let find = |paths: &[&str], key: &str| {
        paths.iter().find_map(|p| std::fs::read_to_string(p).ok()).map(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix(key).and_then(|v| v.trim().parse::<u64>().ok()))
                .unwrap_or(0)
                .to_string()
        })
    };
    let pm = find(&["/sys/fs/cgroup/pids/pids.events", "/sys/fs/cgroup/pids.events"], "max ");
    let ok = find(
        &["/sys/fs/cgroup/memory/memory.oom_control", "/sys/fs/cgroup/memory.events"],
        "oom_kill ",
    );
    (pm.unwrap_or_else(|| "-".into()), ok.unwrap_or_else(|| "-".into()))
}

/// The container's way to the worker's egress proxy: `127.0.0.1:3128` forwarded to the proxy's
/// Unix socket, which the worker mounts at `/run/stigmer/egress` for the `public` posture. Part
/// of the poll loop (no thread, no process: an idle container still holds one task). Present
/// only where that directory is mounted.
struct Forwarder {
    listener: std::net::TcpListener,
    pairs: Vec<Pair>,
}

/// One forwarded connection: the command's TCP side and the proxy's Unix side, with what each
/// has sent that the other has not taken yet.
struct Pair {
    tcp: std::net::TcpStream,
    unix: std::os::unix::net::UnixStream,
    /// From the command, for the proxy.
    up: Vec<u8>,
    /// From the proxy, for the command.
    down: Vec<u8>,
    tcp_eof: bool,
    unix_eof: bool,
    up_shut: bool,
    down_shut: bool,
    dead: bool,
}

/// How much of one direction is held before its reader waits for the writer.
const PAIR_BUFFER: usize = 256 * 1024;
/// At most this many connections at once; more are refused.
const MAX_PAIRS: usize = 256;

impl Forwarder {
    fn open() -> Option<Self> {
        let dir = std::path::Path::new(EGRESS_SOCKET_PATH).parent()?;
        if !dir.is_dir() {
            return None;
        }
        let listener = std::net::TcpListener::bind(PROXY_LISTEN).ok()?;
        listener.set_nonblocking(true).ok()?;
        Some(Forwarder { listener, pairs: Vec::new() })
    }

    /// The listener, then each pair's TCP and Unix sides; a side with nothing to wait for is
    /// left out (fd -1), so a hung-up socket never wakes the loop for nothing.
    fn poll_fds(&self, fds: &mut Vec<PollFd>) {
        fds.push(PollFd { fd: self.listener.as_raw_fd(), events: POLLIN, revents: 0 });
        for p in &self.pairs {
            let mut tcp = 0;
            if !p.tcp_eof && p.up.len() < PAIR_BUFFER {
                tcp |= POLLIN;
            }
            if !p.down.is_empty() {
                tcp |= POLLOUT;
            }
            let mut unix = 0;
            if !p.unix_eof && p.down.len() < PAIR_BUFFER {
                unix |= POLLIN;
            }
            if !p.up.is_empty() {
                unix |= POLLOUT;
            }
            for (fd, events) in [(p.tcp.as_raw_fd(), tcp), (p.unix.as_raw_fd(), unix)] {
                let fd = if events == 0 { -1 } else { fd };
                fds.push(PollFd { fd, events, revents: 0 });
            }
        }
    }

    /// `fds`: what `poll_fds` added, after the poll.
    fn service(&mut self, fds: &[PollFd], buf: &mut [u8]) {
        let woke = |i: usize| fds.get(i).is_some_and(|p| p.revents != 0);
        for (i, p) in self.pairs.iter_mut().enumerate() {
            if woke(1 + 2 * i) || woke(2 + 2 * i) {
                p.pump(buf);
            }
        }
        self.pairs.retain(|p| !p.dead);
        if woke(0) {
            self.accept();
        }
    }

    fn accept(&mut self) {
        use std::os::unix::net::UnixStream;
        while let Ok((mut tcp, _)) = self.listener.accept() {
            if self.pairs.len() >= MAX_PAIRS {
                continue;
            }
            let unix = match UnixStream::connect(EGRESS_SOCKET_PATH) {
                Ok(unix) => unix,
                Err(e) => {
                    let body = format!("stigmer: the worker's egress proxy cannot be reached ({e})\n");
                    let reply = format!(
                        "HTTP/1.1 502 Bad Gateway\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = tcp.write_all(reply.as_bytes());
                    continue;
                }
            };
            if tcp.set_nonblocking(true).is_err() || unix.set_nonblocking(true).is_err() {
                continue;
            }
            let _ = tcp.set_nodelay(true);
            self.pairs.push(Pair {
                tcp,
                unix,
                up: Vec::new(),
                down: Vec::new(),
                tcp_eof: false,
                unix_eof: false,
                up_shut: false,
                down_shut: false,
                dead: false,
            });
        }
    }
}

impl Pair {
    /// Moves what can be moved without blocking, in both directions.
    fn pump(&mut self, buf: &mut [u8]) {
        let ok = read_some(&mut self.tcp, &mut self.up, &mut self.tcp_eof, buf)
            && read_some(&mut self.unix, &mut self.down, &mut self.unix_eof, buf)
            && write_some(&mut self.unix, &mut self.up)
            && write_some(&mut self.tcp, &mut self.down);
        if !ok {
            self.dead = true;
            return;
        }
        if self.tcp_eof && self.up.is_empty() && !self.up_shut {
            let _ = self.unix.shutdown(std::net::Shutdown::Write);
            self.up_shut = true;
        }
        if self.unix_eof && self.down.is_empty() && !self.down_shut {
            let _ = self.tcp.shutdown(std::net::Shutdown::Write);
            self.down_shut = true;
        }
        self.dead = self.up_shut && self.down_shut;
    }
}

/// Reads what is there into `into` (up to the buffer bound); false on an error.
fn read_some(from: &mut impl Read, into: &mut Vec<u8>, eof: &mut bool, buf: &mut [u8]) -> bool {
    while !*eof && into.len() < PAIR_BUFFER {
        match from.read(buf) {
            Ok(0) => *eof = true,
            Ok(n) => into.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    true
}

/// Writes what it can of `from`; false on an error (the other end is gone).
fn write_some(to: &mut impl Write, from: &mut Vec<u8>) -> bool {
    while !from.is_empty() {
        match to.write(from) {
            Ok(0) => return false,
            Ok(n) => {
                from.drain(..n);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    true
}
