//! Where a command's output goes while it runs: the live stream to a waiting client (the hub,
//! never truncated) and the store (bounded: the head and the tail are kept, with a marker saying
//! how much was dropped between them). The sha256 and byte count cover everything printed.
//!
//! Memory stays bounded however much a command prints: chunks are passed on as they arrive, the
//! head is flushed to the store as it fills, and only the tail window is held until the end.

use crate::hub::{Hub, HubEvent};
use crate::store::{Store, StoreError};
use sha2::{Digest, Sha256};
use std::collections::VecDeque;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Which stream a chunk came from: one type from the container's streams to the store.
pub use stigmer_docker::StreamKind;

/// The stream name of a marker chunk in the store (not part of the command's output).
pub const MARKER_STREAM: &str = "marker";

/// How long buffered output may wait before it is written to the store.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(100);
const FLUSH_BYTES: usize = 64 * 1024;

/// Totals of what a command printed.
#[derive(Clone, Debug, Default)]
pub struct OutputTotals {
    pub bytes: u64,
    pub dropped: u64,
    pub sha256: String,
}

/// Receives a command's output chunks in order and sends them where they belong.
pub struct OutputSink {
    store: Store,
    hub: Hub,
    execution_id: String,
    hasher: Sha256,
    total: u64,
    next_seq: i64,
    /// Bytes still allowed into the head (written to the store as it goes).
    head_left: u64,
    /// Chunks waiting to be written to the store.
    pending: Vec<(StreamKind, Vec<u8>)>,
    pending_bytes: usize,
    last_flush: Instant,
    /// Once the head is full: the most recent output, at most `tail_cap` bytes.
    tail: VecDeque<(StreamKind, Vec<u8>)>,
    tail_bytes: u64,
    tail_cap: u64,
    dropped: u64,
}

impl OutputSink {
    /// `retain_bytes` bounds what the store keeps of this execution: half for the head, half for
    /// the tail.
    #[must_use]
    pub fn new(store: Store, hub: Hub, execution_id: &str, retain_bytes: u64) -> Self {
        Self {
            store,
            hub,
            execution_id: execution_id.to_string(),
            hasher: Sha256::new(),
            total: 0,
            next_seq: 0,
            head_left: retain_bytes / 2,
            pending: Vec::new(),
            pending_bytes: 0,
            last_flush: Instant::now(),
            tail: VecDeque::new(),
            tail_bytes: 0,
            tail_cap: retain_bytes - retain_bytes / 2,
            dropped: 0,
        }
    }

    /// Continues numbering after output a previous attempt already stored.
    pub fn resume_after(&mut self, last_seq: i64) {
        self.next_seq = last_seq + 1;
    }

    /// Takes one chunk: live to the client (waiting for it unless `cancel` fires), into the
    /// store's head or tail window.
    pub async fn write(
        &mut self,
        stream: StreamKind,
        data: Vec<u8>,
        cancel: &CancellationToken,
    ) -> Result<(), StoreError> {
        if data.is_empty() {
            return Ok(());
        }
        self.hasher.update(&data);
        self.total += data.len() as u64;
        self.hub
            .publish(
                &self.execution_id,
                HubEvent::Output {
                    stream,
                    data: data.clone(),
                },
                cancel,
            )
            .await;
        if self.head_left > 0 {
            let take = (data.len() as u64).min(self.head_left) as usize;
            self.head_left -= take as u64;
            let rest = data[take..].to_vec();
            let mut head = data;
            head.truncate(take);
            self.pending_bytes += head.len();
            self.pending.push((stream, head));
            if !rest.is_empty() {
                self.push_tail(stream, rest);
            }
        } else {
            self.push_tail(stream, data);
        }
        if self.pending_bytes >= FLUSH_BYTES || self.last_flush.elapsed() >= FLUSH_INTERVAL {
            self.flush().await?;
        }
        Ok(())
    }

    fn push_tail(&mut self, stream: StreamKind, data: Vec<u8>) {
        self.tail_bytes += data.len() as u64;
        self.tail.push_back((stream, data));
        while self.tail_bytes > self.tail_cap {
            let Some((stream, mut front)) = self.tail.pop_front() else {
                break;
            };
            let excess = (self.tail_bytes - self.tail_cap) as usize;
            if front.len() > excess {
                // Keep the newest part of the oldest chunk.
                front.drain(..excess);
                self.tail_bytes -= excess as u64;
                self.dropped += excess as u64;
                self.tail.push_front((stream, front));
            } else {
                self.tail_bytes -= front.len() as u64;
                self.dropped += front.len() as u64;
            }
        }
    }

    /// Writes what is pending to the store (called on a timer so slow output shows up promptly).
    pub async fn flush(&mut self) -> Result<(), StoreError> {
        self.last_flush = Instant::now();
        if self.pending.is_empty() {
            return Ok(());
        }
        let first = self.next_seq;
        let rows: Vec<(i64, &str, &[u8])> = self
            .pending
            .iter()
            .enumerate()
            .map(|(i, (s, d))| (first + i as i64, s.as_str(), d.as_slice()))
            .collect();
        self.store.append_output(&self.execution_id, &rows).await?;
        self.next_seq += self.pending.len() as i64;
        self.pending.clear();
        self.pending_bytes = 0;
        Ok(())
    }

    /// Writes the tail window (with a marker when something was dropped) and returns the totals.
    pub async fn finish(mut self) -> Result<OutputTotals, StoreError> {
        self.flush().await?;
        if self.dropped > 0 {
            let marker = format!(
                "[stigmer: {} bytes of output dropped here; the store keeps the first and last parts \
                 (STIGMER_OUTPUT_RETAIN_BYTES); sha256 and size cover all {} bytes]\n",
                self.dropped, self.total
            );
            self.store
                .append_output(
                    &self.execution_id,
                    &[(self.next_seq, MARKER_STREAM, marker.as_bytes())],
                )
                .await?;
            self.next_seq += 1;
        }
        let tail: Vec<(StreamKind, Vec<u8>)> = self.tail.drain(..).collect();
        for batch in tail.chunks(64) {
            let first = self.next_seq;
            let rows: Vec<(i64, &str, &[u8])> = batch
                .iter()
                .enumerate()
                .map(|(i, (s, d))| (first + i as i64, s.as_str(), d.as_slice()))
                .collect();
            self.store.append_output(&self.execution_id, &rows).await?;
            self.next_seq += batch.len() as i64;
        }
        Ok(OutputTotals {
            bytes: self.total,
            dropped: self.dropped,
            sha256: hex::encode(self.hasher.finalize()),
        })
    }
}
