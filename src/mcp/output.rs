//! `read_output`: an execution's stored output from a byte offset, a page at a time. The offset
//! counts both streams together, in the order they were produced (as `stigmer logs` prints
//! them), so one number says where to go on; each page gives the streams apart.

use super::Summary;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use stigmer_activities::store::Store;
use stigmer_workflows::Status;

/// Bytes a page holds unless told otherwise.
pub const DEFAULT_PAGE_BYTES: u64 = 16 * 1024;
/// The most a page holds.
pub const MAX_PAGE_BYTES: u64 = 128 * 1024;

/// `read_output`'s input.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReadOutputArgs {
    /// The execution's id (`run_command`'s `id`).
    pub id: String,
    /// Where to start, in bytes of the output stored so far, both streams counted together
    /// (default 0). Pass the previous page's `next_offset` to go on.
    #[serde(default)]
    pub offset: Option<u64>,
    /// At most this many bytes (default 16384, at most 131072).
    #[serde(default)]
    pub limit: Option<u64>,
}

/// A page of an execution's output.
#[derive(Debug, Serialize, JsonSchema)]
pub struct OutputPage {
    pub id: String,
    /// `queued`, `running`, or how it ended: `succeeded`, `failed`, `timed_out`, `cancelled`.
    pub status: String,
    /// The command's exit code, once it exited on its own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Why it ended other than by its own exit, once ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Where this page starts.
    pub offset: u64,
    /// The stdout bytes of this page.
    pub stdout: String,
    /// The stderr bytes of this page.
    pub stderr: String,
    /// Where the next page starts.
    pub next_offset: u64,
    /// The bytes stored so far, both streams.
    pub stored_bytes: u64,
    /// Whether there is more: stored past this page, or still to come from a running command.
    pub more: bool,
}

impl Summary for OutputPage {
    fn summary(&self) -> String {
        let mut text = format!(
            "{} {}{}: bytes {}..{} of {} stored",
            self.id,
            self.status,
            self.exit_code
                .map(|c| format!(", exit code {c}"))
                .unwrap_or_default(),
            self.offset,
            self.next_offset,
            self.stored_bytes
        );
        if let Some(error) = &self.error {
            text.push_str(&format!("\n{error}"));
        }
        text.push('\n');
        for (name, body) in [("stdout", &self.stdout), ("stderr", &self.stderr)] {
            if !body.is_empty() {
                text.push_str(&format!("--- {name} ---\n{body}"));
                if !body.ends_with('\n') {
                    text.push('\n');
                }
            }
        }
        if self.more {
            text.push_str(&format!(
                "(more: call read_output with offset {})\n",
                self.next_offset
            ));
        }
        text
    }
}

/// A page of `args.id`'s output, or a message that says what was wrong.
pub async fn read_output(store: &Store, args: &ReadOutputArgs) -> Result<OutputPage, String> {
    let offset = args.offset.unwrap_or(0);
    let limit = args.limit.unwrap_or(DEFAULT_PAGE_BYTES);
    if limit == 0 || limit > MAX_PAGE_BYTES {
        return Err(format!("`limit` {limit}: give 1 to {MAX_PAGE_BYTES} bytes"));
    }
    // The status first: an execution seen ended has all its output stored already (the output
    // is flushed before the end is recorded), so `more` is never false too early.
    let record = crate::ops::execution(store, &args.id)
        .await
        .map_err(|e| format!("{e:#}"))?;
    let ended = record.status().is_some_and(Status::is_terminal);
    let mut page = Window::new(offset, limit);
    let mut after = -1;
    loop {
        let chunks = store
            .read_output(&args.id, after, 256)
            .await
            .map_err(|e| format!("could not read the output of {}: {e}", args.id))?;
        let Some(last) = chunks.last() else { break };
        after = last.seq;
        for chunk in &chunks {
            page.take(chunk.stream == "stderr", &chunk.data);
        }
    }
    let result = ended.then(|| record.result());
    Ok(OutputPage {
        id: args.id.clone(),
        status: record.status.clone(),
        exit_code: result.as_ref().and_then(|r| r.exit_code),
        error: result.and_then(|r| r.error),
        offset,
        stdout: String::from_utf8_lossy(&page.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&page.stderr).into_owned(),
        next_offset: page.end(),
        stored_bytes: page.seen,
        more: !ended || page.end() < page.seen,
    })
}

/// The bytes of a window of the output, gathered chunk by chunk.
struct Window {
    offset: u64,
    limit: u64,
    /// Bytes of output passed so far.
    seen: u64,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    /// Set once the window ended early, at a character's start.
    cut_at: Option<u64>,
}

impl Window {
    fn new(offset: u64, limit: u64) -> Self {
        Self {
            offset,
            limit,
            seen: 0,
            stdout: Vec::new(),
            stderr: Vec::new(),
            cut_at: None,
        }
    }

    /// Where the window ends (and the next begins).
    fn end(&self) -> u64 {
        let taken = (self.stdout.len() + self.stderr.len()) as u64;
        self.cut_at
            .unwrap_or(self.offset.saturating_add(taken))
            .max(self.offset)
    }

    fn take(&mut self, stderr: bool, data: &[u8]) {
        let start = self.seen;
        self.seen += data.len() as u64;
        if self.cut_at.is_some() || self.seen <= self.offset {
            return;
        }
        let from = self.offset.saturating_sub(start) as usize;
        let room = self.limit - (self.stdout.len() + self.stderr.len()) as u64;
        let mut to = data.len().min(from.saturating_add(room as usize));
        if to < data.len() {
            // Not in the middle of a UTF-8 character: the next page starts with all of it
            // (unless this page would be empty, which would never get anywhere).
            let whole = to;
            while to > from && is_continuation(data[to]) {
                to -= 1;
            }
            if to == from && self.stdout.is_empty() && self.stderr.is_empty() {
                to = whole;
            }
            self.cut_at = Some(start + to as u64);
        }
        let into = if stderr {
            &mut self.stderr
        } else {
            &mut self.stdout
        };
        into.extend_from_slice(&data[from..to]);
    }
}

fn is_continuation(byte: u8) -> bool {
    byte & 0xC0 == 0x80
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(offset: u64, limit: u64, chunks: &[(bool, &str)]) -> (String, String, u64, u64) {
        let mut w = Window::new(offset, limit);
        for (stderr, data) in chunks {
            w.take(*stderr, data.as_bytes());
        }
        (
            String::from_utf8(w.stdout.clone()).expect("whole characters"),
            String::from_utf8(w.stderr.clone()).expect("whole characters"),
            w.end(),
            w.seen,
        )
    }

    #[test]
    fn a_window_spans_both_streams_in_order_and_pages_on_where_it_stopped() {
        let chunks = [(false, "out1\n"), (true, "err1\n"), (false, "out2\n")];
        assert_eq!(
            window(0, 1000, &chunks),
            ("out1\nout2\n".into(), "err1\n".into(), 15, 15)
        );
        assert_eq!(window(3, 5, &chunks), ("1\n".into(), "err".into(), 8, 15));
        assert_eq!(window(8, 5, &chunks), ("out".into(), "1\n".into(), 13, 15));
        assert_eq!(window(15, 5, &chunks), ("".into(), "".into(), 15, 15));
        assert_eq!(window(99, 5, &chunks), ("".into(), "".into(), 99, 15));
    }

    #[test]
    fn a_page_never_ends_inside_a_character() {
        // "é" is two bytes: a 2-byte page after "a" holds only "a"; the next starts at "é".
        assert_eq!(
            window(0, 2, &[(false, "aé")]),
            ("a".into(), "".into(), 1, 3)
        );
        assert_eq!(
            window(1, 2, &[(false, "aé")]),
            ("é".into(), "".into(), 3, 3)
        );
        // A page too small for one character still moves on.
        let mut w = Window::new(1, 1);
        w.take(false, "aé".as_bytes());
        assert_eq!((w.stdout.len(), w.end()), (1, 2));
    }
}
