//! The live output hub: how a client waiting on the daemon's socket sees a command's output as it
//! is produced, without polling. The `exec` activity publishes into it; the socket handler that
//! started the execution subscribes before starting it. Each subscriber has a bounded queue, so
//! a slow client slows the command (as a terminal would) instead of growing memory.

use crate::output::StreamKind;
use crate::stdin::StdinSource;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use stigmer_workflows::ExecutionResult;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Chunks queued per subscriber (each at most 64 KiB).
const QUEUE: usize = 64;

/// What a subscriber receives.
#[derive(Debug)]
pub enum HubEvent {
    Output {
        stream: StreamKind,
        data: Vec<u8>,
    },
    /// A human-readable line about the execution (goes to the client's stderr).
    Notice(String),
    /// The command ended; the result is also in the store and the workflow's result.
    Ended(ExecutionResult),
}

/// Shared between the worker's activities and the daemon's socket handlers.
#[derive(Clone, Default)]
pub struct Hub {
    subscribers: Arc<Mutex<HashMap<String, mpsc::Sender<HubEvent>>>>,
    /// Stdin streams offered by socket handlers, each taken once by its execution's `exec`.
    stdin: Arc<Mutex<HashMap<String, StdinSource>>>,
}

impl Hub {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Subscribes to an execution's events; call before starting it so nothing is missed.
    #[must_use]
    pub fn subscribe(&self, execution_id: &str) -> mpsc::Receiver<HubEvent> {
        let (tx, rx) = mpsc::channel(QUEUE);
        if let Ok(mut subs) = self.subscribers.lock() {
            subs.insert(execution_id.to_string(), tx);
        }
        rx
    }

    pub fn unsubscribe(&self, execution_id: &str) {
        if let Ok(mut subs) = self.subscribers.lock() {
            subs.remove(execution_id);
        }
        drop(self.take_stdin(execution_id));
    }

    /// Offers an execution's stdin to its `exec`; call before starting it.
    pub fn offer_stdin(&self, execution_id: &str, source: StdinSource) {
        if let Ok(mut offered) = self.stdin.lock() {
            offered.insert(execution_id.to_string(), source);
        }
    }

    /// The execution's stdin, once: `None` when it was never offered in this process (another
    /// worker's execution) or an earlier attempt took it.
    #[must_use]
    pub fn take_stdin(&self, execution_id: &str) -> Option<StdinSource> {
        self.stdin.lock().ok()?.remove(execution_id)
    }

    /// Delivers an event to the execution's subscriber, if any, waiting for room in its queue
    /// unless `cancel` fires. A subscriber that went away is forgotten.
    pub async fn publish(&self, execution_id: &str, event: HubEvent, cancel: &CancellationToken) {
        let sender = match self.subscribers.lock() {
            Ok(subs) => subs.get(execution_id).cloned(),
            Err(_) => None,
        };
        let Some(sender) = sender else { return };
        let gone = tokio::select! {
            sent = sender.send(event) => sent.is_err(),
            () = cancel.cancelled() => false,
        };
        if gone {
            self.unsubscribe(execution_id);
        }
    }
}
