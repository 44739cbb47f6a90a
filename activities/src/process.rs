//! Stopping host processes: TERM, then KILL after a grace period, for a command's process
//! group (local mode) and for a single process (the managed Temporal server, a daemon). One
//! place, so every caller waits the same way and never signals a reused pid by accident.

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use std::time::Duration;
use tokio::time::Instant;

/// What to stop.
#[derive(Clone, Copy, Debug)]
pub enum Target {
    /// One process.
    Process(Pid),
    /// Every process of a process group.
    Group(Pid),
}

impl Target {
    fn signal(self, signal: Option<Signal>) -> bool {
        match self {
            Self::Process(pid) => kill(pid, signal).is_ok(),
            Self::Group(pgid) => killpg(pgid, signal).is_ok(),
        }
    }

    /// Whether anything of it is left to stop (a zombie is not: it only waits to be reaped).
    #[must_use]
    pub fn is_running(self) -> bool {
        match self {
            Self::Process(pid) => alive(pid),
            // Signal 0 probes whether any member of the group is left.
            Self::Group(_) => self.signal(None),
        }
    }
}

/// TERM, then KILL once `grace` has passed with something still running; a process is waited
/// for until it is gone (at most two seconds past the KILL). Returns whether there was anything
/// to stop.
pub async fn terminate(target: Target, grace: Duration) -> bool {
    if !target.signal(Some(Signal::SIGTERM)) {
        return false;
    }
    if wait_gone(target, grace).await {
        return true;
    }
    target.signal(Some(Signal::SIGKILL));
    // KILL cannot be ignored. A group may still answer the probe through a zombie leader its
    // caller has yet to reap, so only a single process is waited for.
    if let Target::Process(_) = target {
        wait_gone(target, Duration::from_secs(2)).await;
    }
    true
}

async fn wait_gone(target: Target, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if !target.is_running() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Kills a command's process group when dropped, unless [`GroupGuard::disarm`]ed first: every
/// way out of running a command (an error through `?`, a panic, the activity's future dropped)
/// takes what it started with it, so a command never runs on after its execution is recorded
/// as failed.
#[must_use = "the group is killed when the guard is dropped"]
pub struct GroupGuard(Option<Pid>);

impl GroupGuard {
    pub fn new(pgid: Option<Pid>) -> Self {
        Self(pgid)
    }

    /// The group has been dealt with (killed at the command's end): nothing to do on drop.
    pub fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pgid) = self.0.take() {
            let _ = killpg(pgid, Signal::SIGKILL);
        }
    }
}

/// Whether a process exists and is not a zombie.
#[must_use]
pub fn alive(pid: Pid) -> bool {
    if kill(pid, None).is_err() {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// The start time of a process (clock ticks since boot, /proc/PID/stat field 22): with the pid
/// it names one process, even after the pid is reused.
#[must_use]
pub fn start_time(pid: i32) -> Option<i64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_group_that_ignores_term_is_killed_after_the_grace() {
        use tokio::io::AsyncBufReadExt;
        let mut child = tokio::process::Command::new("sh")
            .args(["-c", "trap '' TERM; sleep 30 & echo $!; wait"])
            .process_group(0)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let pgid = Pid::from_raw(child.id().unwrap() as i32);
        let mut line = String::new();
        let stdout = child.stdout.take().unwrap();
        tokio::io::BufReader::new(stdout)
            .read_line(&mut line)
            .await
            .unwrap();
        let sleep = Pid::from_raw(line.trim().parse().unwrap());
        assert!(alive(sleep));
        let born = start_time(sleep.as_raw());
        // The same process, not a later one given its pid.
        let still_there = || alive(sleep) && start_time(sleep.as_raw()) == born;
        let started = Instant::now();
        assert!(terminate(Target::Group(pgid), Duration::from_millis(300)).await);
        assert!(started.elapsed() >= Duration::from_millis(300));
        let _ = child.wait().await;
        // KILL is pending at once but acted on when the process is next scheduled, which on a
        // loaded machine can be a moment after its parent's exit has been reaped.
        let deadline = Instant::now() + Duration::from_secs(5);
        while still_there() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!still_there(), "the command's child outlived KILL by 5 s");
    }
}
