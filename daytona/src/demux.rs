//! Splitting a session command's log back into stdout and stderr.
//!
//! Daytona's toolbox writes a session command's output to one log, each line prefixed with a
//! three-byte marker: `01 01 01` for stdout, `02 02 02` for stderr. The same bytes come back from
//! the logs endpoint (plain text) and, in pieces, from its WebSocket follow, where a marker can be
//! cut in two by a frame boundary. [`Demuxer`] is fed those pieces in order, holds back the one or
//! two bytes that might start a marker, and hands out each run of bytes with the stream it
//! belongs to. Bytes before any marker count as stdout (a server that merges the streams sends no
//! markers at all).

use crate::model::{CommandLogs, LogChunk, OutputStream};

/// Marker that starts stdout bytes.
pub const STDOUT_MARKER: [u8; 3] = [0x01, 0x01, 0x01];
/// Marker that starts stderr bytes.
pub const STDERR_MARKER: [u8; 3] = [0x02, 0x02, 0x02];

/// An incremental stdout/stderr splitter for marked log bytes.
#[derive(Debug)]
pub struct Demuxer {
    current: OutputStream,
    carry: Vec<u8>,
}

impl Default for Demuxer {
    fn default() -> Self {
        Demuxer {
            current: OutputStream::Stdout,
            carry: Vec::new(),
        }
    }
}

impl Demuxer {
    /// A splitter at the start of a log.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds the next bytes; returns the complete pieces they contain, in order.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<LogChunk> {
        let mut buf = std::mem::take(&mut self.carry);
        buf.extend_from_slice(bytes);
        let mut out: Vec<LogChunk> = Vec::new();
        let mut start = 0;
        let mut pos = 0;
        while pos < buf.len() {
            let rest = &buf[pos..];
            let marker = if rest.starts_with(&STDOUT_MARKER) {
                Some(OutputStream::Stdout)
            } else if rest.starts_with(&STDERR_MARKER) {
                Some(OutputStream::Stderr)
            } else {
                None
            };
            if let Some(stream) = marker {
                emit(&mut out, self.current, &buf[start..pos]);
                self.current = stream;
                pos += STDOUT_MARKER.len();
                start = pos;
                continue;
            }
            if rest.len() < STDOUT_MARKER.len() && could_start_marker(rest) {
                // Possibly the first bytes of a marker cut by a frame boundary: keep for later.
                break;
            }
            pos += 1;
        }
        emit(&mut out, self.current, &buf[start..pos]);
        self.carry = buf[pos..].to_vec();
        out
    }

    /// Ends the log: bytes still held back were not a marker after all.
    pub fn finish(&mut self) -> Vec<LogChunk> {
        let rest = std::mem::take(&mut self.carry);
        let mut out = Vec::new();
        emit(&mut out, self.current, &rest);
        out
    }
}

fn could_start_marker(rest: &[u8]) -> bool {
    STDOUT_MARKER.starts_with(rest) || STDERR_MARKER.starts_with(rest)
}

fn emit(out: &mut Vec<LogChunk>, stream: OutputStream, bytes: &[u8]) {
    if bytes.is_empty() {
        return;
    }
    match out.last_mut() {
        Some(last) if last.stream == stream => last.data.extend_from_slice(bytes),
        _ => out.push(LogChunk {
            stream,
            data: bytes.to_vec(),
        }),
    }
}

/// Splits a whole marked log.
#[must_use]
pub fn demux_all(bytes: &[u8]) -> CommandLogs {
    let mut d = Demuxer::new();
    let mut logs = CommandLogs::default();
    for chunk in d.push(bytes).into_iter().chain(d.finish()) {
        match chunk.stream {
            OutputStream::Stdout => logs.stdout.extend_from_slice(&chunk.data),
            OutputStream::Stderr => logs.stderr.extend_from_slice(&chunk.data),
        }
    }
    logs
}

/// True when the bytes carry at least one marker.
#[must_use]
pub fn has_markers(bytes: &[u8]) -> bool {
    bytes
        .windows(3)
        .any(|w| w == STDOUT_MARKER || w == STDERR_MARKER)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marked() -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&STDOUT_MARKER);
        v.extend_from_slice(b"out 1\n");
        v.extend_from_slice(&STDERR_MARKER);
        v.extend_from_slice(b"err 1\n");
        v.extend_from_slice(&STDOUT_MARKER);
        v.extend_from_slice(b"out 2\n");
        v
    }

    #[test]
    fn whole_log_splits() {
        let logs = demux_all(&marked());
        assert_eq!(logs.stdout, b"out 1\nout 2\n");
        assert_eq!(logs.stderr, b"err 1\n");
    }

    #[test]
    fn any_split_into_frames_gives_the_same_streams() {
        let log = marked();
        for cut1 in 0..log.len() {
            for cut2 in cut1..log.len() {
                let mut d = Demuxer::new();
                let mut got = CommandLogs::default();
                let pieces = [&log[..cut1], &log[cut1..cut2], &log[cut2..]];
                let mut chunks = Vec::new();
                for p in pieces {
                    chunks.extend(d.push(p));
                }
                chunks.extend(d.finish());
                for c in chunks {
                    match c.stream {
                        OutputStream::Stdout => got.stdout.extend(c.data),
                        OutputStream::Stderr => got.stderr.extend(c.data),
                    }
                }
                assert_eq!(got.stdout, b"out 1\nout 2\n", "cuts {cut1} {cut2}");
                assert_eq!(got.stderr, b"err 1\n", "cuts {cut1} {cut2}");
            }
        }
    }

    #[test]
    fn unmarked_output_is_stdout_and_lone_control_bytes_survive() {
        let logs = demux_all(b"plain\x01\x01text\x02");
        assert_eq!(logs.stdout, b"plain\x01\x01text\x02");
        assert!(logs.stderr.is_empty());
        assert!(!has_markers(b"plain\x01\x01text"));
        assert!(has_markers(&marked()));
    }
}
