//! A command's standard input: the bytes the caller gave, streamed to the command as they come
//! (never buffered whole), counted and hashed for the audit record.
//!
//! The daemon hands the stream of a `stigmer run` whose stdin is a pipe or a file to its own
//! worker through the [`Hub`](crate::hub::Hub); a remote client or a public start carries small
//! inputs inside the encrypted workflow input instead. Either way `exec` gets a [`StdinSource`]
//! and the backend feeds it to the command with [`feed`].
//!
//! A command that exits, or closes its stdin, before reading everything is not an error: what is
//! left is still received (so the sender never blocks on it) and counted, then dropped.

use sha2::{Digest, Sha256};
use std::sync::{Arc, Mutex};
use tokio::io::AsyncWrite;
use tokio::sync::mpsc;

/// Chunks in flight between the sender and the command (each at most 64 KiB).
const QUEUE: usize = 16;

/// The bytes for a command's stdin, in order; the end of the channel is the end of input.
#[derive(Debug)]
pub struct StdinSource {
    chunks: mpsc::Receiver<Vec<u8>>,
}

impl StdinSource {
    /// A source fed through the returned sender; dropping the sender ends the input.
    #[must_use]
    pub fn channel() -> (mpsc::Sender<Vec<u8>>, Self) {
        let (tx, rx) = mpsc::channel(QUEUE);
        (tx, Self { chunks: rx })
    }

    /// A source of bytes already in hand (a remote client's or a public start's input).
    #[must_use]
    pub fn from_bytes(data: Vec<u8>) -> Self {
        let (tx, rx) = mpsc::channel(1);
        // Capacity 1 and one send: never full, never closed here.
        let _ = tx.try_send(data);
        Self { chunks: rx }
    }
}

/// What was received for a command's stdin: its size and sha256 (hex), for the audit record.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StdinTotals {
    pub bytes: u64,
    pub sha256: String,
}

/// The running count and hash of a stdin being fed, readable while it is fed.
#[derive(Clone, Default)]
pub struct StdinTally(Arc<Mutex<(u64, Sha256)>>);

impl StdinTally {
    fn add(&self, chunk: &[u8]) {
        if let Ok(mut tally) = self.0.lock() {
            tally.0 += chunk.len() as u64;
            tally.1.update(chunk);
        }
    }

    /// What has been received so far.
    #[must_use]
    pub fn totals(&self) -> StdinTotals {
        match self.0.lock() {
            Ok(tally) => StdinTotals {
                bytes: tally.0,
                sha256: hex::encode(tally.1.clone().finalize()),
            },
            Err(_) => StdinTotals::default(),
        }
    }
}

/// A command's stdin on its way: the source, and the tally the caller reads afterwards.
#[derive(Debug)]
pub struct StdinFeed {
    source: StdinSource,
    tally: StdinTally,
}

impl std::fmt::Debug for StdinTally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StdinTally({} bytes)", self.totals().bytes)
    }
}

impl StdinFeed {
    /// The feed of `source`, and the tally of what it receives.
    #[must_use]
    pub fn new(source: StdinSource) -> (Self, StdinTally) {
        let tally = StdinTally::default();
        (
            Self {
                source,
                tally: tally.clone(),
            },
            tally,
        )
    }

    /// Feeds the command's stdin ([`feed`]) in a task that ends when the returned guard is
    /// dropped, whichever way the run ends.
    #[must_use]
    pub fn spawn<W: AsyncWrite + Unpin + Send + 'static>(self, writer: W) -> Feeding {
        Feeding(tokio::spawn(feed(self.source, writer, self.tally)))
    }

    /// The chunks as a channel, counted as they pass, for a backend that writes them itself
    /// (a `docker exec`'s stdin); the guard stops the passing.
    #[must_use]
    pub fn into_channel(self) -> (mpsc::Receiver<Vec<u8>>, Feeding) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let Self { mut source, tally } = self;
        let passing = tokio::spawn(async move {
            let mut open = true;
            while let Some(chunk) = source.chunks.recv().await {
                tally.add(&chunk);
                // Once the backend stops taking chunks, the rest is still received and counted.
                open = open && tx.send(chunk).await.is_ok();
            }
        });
        (rx, Feeding(passing))
    }
}

/// A stdin being fed; dropping it stops the feeding.
#[derive(Debug)]
pub struct Feeding(tokio::task::JoinHandle<()>);

impl Drop for Feeding {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Copies `source` into `writer` (the command's stdin) until the source ends, then closes it
/// so the command sees end of file. A writer that fails (the command exited or closed its
/// stdin: a broken pipe) is dropped at once, and the rest of the source is still received and
/// counted without being delivered.
pub async fn feed<W: AsyncWrite + Unpin>(source: StdinSource, writer: W, tally: StdinTally) {
    stigmer_docker::feed_stdin(source.chunks, writer, |chunk| tally.add(chunk)).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn what_is_fed_arrives_whole_and_is_counted() {
        let (tx, source) = StdinSource::channel();
        let (writer, mut reader) = tokio::io::duplex(1024);
        let tally = StdinTally::default();
        let feeding = tokio::spawn(feed(source, writer, tally.clone()));
        let sender = tokio::spawn(async move {
            for n in 0..100u8 {
                tx.send(vec![n; 1000]).await.unwrap();
            }
        });
        let mut got = Vec::new();
        reader.read_to_end(&mut got).await.unwrap();
        sender.await.unwrap();
        feeding.await.unwrap();
        assert_eq!(got.len(), 100_000);
        assert_eq!(got[99_999], 99);
        let totals = tally.totals();
        assert_eq!(totals.bytes, 100_000);
        assert_eq!(totals.sha256, hex::encode(Sha256::digest(&got)));
    }

    #[tokio::test]
    async fn a_reader_that_goes_away_does_not_block_the_sender() {
        let (tx, source) = StdinSource::channel();
        let (writer, reader) = tokio::io::duplex(16);
        drop(reader);
        let tally = StdinTally::default();
        let feeding = tokio::spawn(feed(source, writer, tally.clone()));
        for _ in 0..(QUEUE * 4) {
            tx.send(vec![7; 4096]).await.unwrap();
        }
        drop(tx);
        feeding.await.unwrap();
        assert_eq!(tally.totals().bytes, (QUEUE * 4 * 4096) as u64);
    }
}
