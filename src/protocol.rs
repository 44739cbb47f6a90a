//! The local socket protocol between `stigmer run` and the daemon.
//!
//! Frames are a one-byte tag, a big-endian u32 length, and the payload. Output travels as raw
//! bytes (commands print binary too); everything else is JSON. The client sends one `Request`,
//! then, when the request says its stdin is streamed, the stdin's bytes in `Stdin` frames ended
//! by an empty one, and at most a `Cancel` (at any point); the daemon answers `Started`, then
//! output and notices, then `Result` (or `Fatal` when the request could not be run at all).

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use stigmer_workflows::{CommandSpec, Mode, RequestedMode, SandboxSpec, StdinInput};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_util::codec::{FramedRead, LengthDelimitedCodec};

/// Largest frame payload accepted (a request carries the caller's environment).
const MAX_FRAME: usize = 16 * 1024 * 1024;
/// The tag byte and the big-endian u32 length.
const HEADER: usize = 5;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Tag {
    Request = b'R',
    Cancel = b'C',
    /// A chunk of the command's stdin (client to daemon); empty: the end of it.
    Stdin = b'I',
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
            b'I' => Self::Stdin,
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
    /// `--label KEY=VALUE` (kept with the execution and its audit records).
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    /// The command's stdin: streamed on this connection after the request (`Stdin` frames), or
    /// carried in the request (a `--no-follow` run's, bounded).
    #[serde(default)]
    pub stdin: Option<StdinInput>,
    /// `--session`: the session's id (the client resolved a name); the daemon checks that the
    /// caller started it and gives the sandbox its container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// `--no-wait`: refuse at once when the session is busy, instead of waiting for it.
    #[serde(default)]
    pub no_wait: bool,
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
    let mut header = [0u8; HEADER];
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

/// The frames arriving on a connection. Built on `tokio-util`'s length-delimited codec (the
/// tag sits before the length), so reading is cancel-safe: `run` and the daemon read frames
/// inside `select!` beside Ctrl-C and the workflow's end, and a frame half read when another
/// branch wins is kept for the next read instead of desynchronising the stream.
pub struct Frames<R>(FramedRead<R, LengthDelimitedCodec>);

impl<R: AsyncRead + Unpin> Frames<R> {
    pub fn new(reader: R) -> Self {
        let codec = LengthDelimitedCodec::builder()
            .length_field_offset(1)
            .length_field_length(4)
            // Keep the header in the frame (the tag is read from it): the frame is the
            // header and the length's payload.
            .num_skip(0)
            .length_adjustment(HEADER as isize)
            .max_frame_length(MAX_FRAME)
            .new_codec();
        Self(FramedRead::new(reader, codec))
    }

    /// The next frame; `None` at a clean end of stream.
    pub async fn next(&mut self) -> Result<Option<(Tag, Vec<u8>)>> {
        let Some(frame) = self.0.next().await else {
            return Ok(None);
        };
        let frame = frame.context("could not read a frame from the socket")?;
        let Some(tag) = Tag::from_byte(frame[0]) else {
            bail!(
                "unknown frame tag {:#x}: is the daemon the same version as this client?",
                frame[0]
            );
        };
        Ok(Some((tag, frame[HEADER..].to_vec())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_frame_half_read_when_another_branch_wins_is_still_read_whole() {
        let (client, daemon) = tokio::io::duplex(64);
        let (_, mut writer) = tokio::io::split(client);
        let mut frames = Frames::new(daemon);
        let payload = vec![b'x'; 1000];
        let sent = payload.clone();
        // The frame trickles in, so reads are cut off mid-frame by the timer below, as
        // `run`'s reads are by Ctrl-C.
        tokio::spawn(async move {
            let mut bytes = vec![Tag::Stdout as u8];
            bytes.extend_from_slice(&1000u32.to_be_bytes());
            bytes.extend_from_slice(&sent);
            bytes.push(Tag::Cancel as u8);
            bytes.extend_from_slice(&0u32.to_be_bytes());
            for piece in bytes.chunks(100) {
                writer.write_all(piece).await.unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        let mut got = Vec::new();
        let mut interrupted = 0;
        while got.len() < 2 {
            tokio::select! {
                frame = frames.next() => got.push(frame.unwrap().unwrap()),
                () = tokio::time::sleep(Duration::from_millis(2)) => interrupted += 1,
            }
        }
        assert!(interrupted > 0, "no read was cut off");
        assert_eq!(got[0], (Tag::Stdout, payload));
        assert_eq!(got[1], (Tag::Cancel, Vec::new()));
    }

    #[tokio::test]
    async fn an_oversized_or_unknown_frame_is_refused() {
        let mut bytes = vec![Tag::Request as u8];
        bytes.extend_from_slice(&u32::MAX.to_be_bytes());
        let err = Frames::new(&bytes[..]).next().await.unwrap_err();
        assert!(format!("{err:#}").contains("frame"), "{err:#}");
        let bytes = [b'?', 0, 0, 0, 0];
        let err = Frames::new(&bytes[..]).next().await.unwrap_err();
        assert!(err.to_string().contains("unknown frame tag"), "{err}");
    }
}
