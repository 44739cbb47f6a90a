//! The local socket protocol between `stigmer run` and the daemon.
//!
//! Frames are a one-byte tag, a big-endian u32 length, and the payload. Output travels as raw
//! bytes (commands print binary too); everything else is JSON. The client sends one `Request`,
//! then at most a `Cancel`; the daemon answers `Started`, then output and notices, then `Result`
//! (or `Fatal` when the request could not be run at all).

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use stigmer_workflows::{CommandSpec, Mode, RequestedMode, SandboxSpec};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest frame accepted (a request carries the caller's environment).
const MAX_FRAME: usize = 16 * 1024 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Tag {
    Request = b'R',
    Cancel = b'C',
    Ping = b'P',
    Started = b'S',
    Stdout = b'O',
    Stderr = b'E',
    Notice = b'N',
    Result = b'X',
    Fatal = b'F',
    Pong = b'Q',
}

impl Tag {
    fn from_byte(b: u8) -> Option<Self> {
        Some(match b {
            b'R' => Self::Request,
            b'C' => Self::Cancel,
            b'P' => Self::Ping,
            b'S' => Self::Started,
            b'O' => Self::Stdout,
            b'E' => Self::Stderr,
            b'N' => Self::Notice,
            b'X' => Self::Result,
            b'F' => Self::Fatal,
            b'Q' => Self::Pong,
            _ => return None,
        })
    }
}

/// What `stigmer run` asks the daemon to do.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunRequest {
    pub command: CommandSpec,
    pub requested_mode: RequestedMode,
    pub effective_mode: Mode,
    pub reason: String,
    pub workdir: String,
    pub env: Vec<(String, String)>,
    pub timeout_secs: Option<u64>,
    pub follow: bool,
    pub retry_exec: bool,
    pub os_user: Option<String>,
    pub ci_identity: Option<String>,
    pub client_host: Option<String>,
    pub sandbox: Option<SandboxSpec>,
}

/// The daemon's acknowledgement that the execution exists.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Started {
    pub id: String,
    pub workflow_id: String,
    pub run_id: String,
}

/// What the daemon says about itself.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DaemonStatus {
    pub pid: u32,
    pub version: String,
    pub temporal_address: String,
    pub temporal_ui: Option<String>,
    pub temporal_pid: Option<i32>,
    pub store: String,
    pub task_queue: String,
    pub worker_id: String,
}

pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, tag: Tag, payload: &[u8]) -> Result<()> {
    let len = u32::try_from(payload.len()).context("frame too large")?;
    let mut header = [0u8; 5];
    header[0] = tag as u8;
    header[1..].copy_from_slice(&len.to_be_bytes());
    w.write_all(&header).await?;
    w.write_all(payload).await?;
    w.flush().await?;
    Ok(())
}

pub async fn write_json<W: AsyncWrite + Unpin, T: Serialize>(
    w: &mut W,
    tag: Tag,
    value: &T,
) -> Result<()> {
    let bytes = serde_json::to_vec(value)?;
    write_frame(w, tag, &bytes).await
}

/// Reads one frame; `None` at a clean end of stream.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<(Tag, Vec<u8>)>> {
    let mut header = [0u8; 5];
    match r.read_exact(&mut header).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let Some(tag) = Tag::from_byte(header[0]) else {
        bail!(
            "unknown frame tag {:#x}: is the daemon the same version as this client?",
            header[0]
        );
    };
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    if len > MAX_FRAME {
        bail!("frame of {len} bytes is larger than the {MAX_FRAME} allowed");
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await?;
    Ok(Some((tag, payload)))
}
