//! The frames the sandbox agent writes on its stdout, shared by the agent
//! (`agent/stigmer-agent.rs`) and the worker's side (`src/agent.rs`), so the two never disagree:
//! `[kind: u8][nonce: u64 BE][len: u32 BE][payload]`. Standard library only (the agent is built
//! without crates).

/// The command's stdout.
pub const FRAME_STDOUT: u8 = 1;
/// The command's stderr.
pub const FRAME_STDERR: u8 = 2;
/// The command started (payload: its pid).
pub const FRAME_STARTED: u8 = 3;
/// The command ended (payload: `<how> <code> <pm0> <ok0> <pm1> <ok1> <left_running>
/// <check_us>`).
pub const FRAME_EXIT: u8 = 4;
/// The request was refused and nothing ran (payload: why).
pub const FRAME_REFUSED: u8 = 5;
/// Bytes before a frame's payload.
pub const FRAME_HEADER: usize = 13;

/// One frame, ready to write.
#[must_use]
pub fn encode_frame(kind: u8, nonce: u64, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(FRAME_HEADER + payload.len());
    f.push(kind);
    f.extend_from_slice(&nonce.to_be_bytes());
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// Where the worker's egress proxy listens, as the container sees it: a Unix socket in a
/// directory the worker bind-mounts read-only (module `egress` of the worker's side).
pub const EGRESS_SOCKET_PATH: &str = "/run/stigmer/egress/proxy.sock";
/// Where the agent forwards connections to that socket from, inside the container (the proxy
/// variables point here).
pub const PROXY_LISTEN: &str = "127.0.0.1:3128";
