//! Crash points for the chaos test, which has to kill a worker at exact instants (after the
//! container exists but before its lease says so, say) that a timer outside cannot hit reliably.
//!
//! `STIGMER_CHAOS_KILL_AT=point[,point…]` makes the process kill itself with SIGKILL, exactly as
//! `kill -9` would, when it reaches one of the named points. Unset (always, outside that test),
//! a point costs one read of a value computed once.

use std::sync::OnceLock;

/// The points a worker can be told to die at, in the order an execution reaches them.
pub const POINTS: &[&str] = &[
    "before-create",
    "after-create",
    "mid-exec",
    "before-release",
    "mid-release",
];

/// Dies here when `STIGMER_CHAOS_KILL_AT` names this point.
pub fn point(name: &str) {
    static ARMED: OnceLock<Vec<String>> = OnceLock::new();
    let armed = ARMED.get_or_init(|| {
        std::env::var("STIGMER_CHAOS_KILL_AT")
            .map(|v| v.split(',').map(|p| p.trim().to_string()).collect())
            .unwrap_or_default()
    });
    if armed.iter().any(|p| p == name) {
        tracing::warn!("chaos: killing this process at {name}");
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
}
