//! The container backends behind one interface: where a sandbox execution's container comes
//! from, how its command runs there, and how it is given back. Docker (`sandbox.rs`) and
//! Daytona (`cloud.rs`) implement [`ContainerBackend`]; the activities pick one by the spec's
//! [`Backend`](stigmer_workflows::Backend) and otherwise do not know which ran. Local mode has
//! no container (`local::run`).
//!
//! What only Docker has (images, the warm and ready-host claims, the host task queue) stays on
//! `SandboxBackend`; this trait is what every container backend must do.

use crate::local::{Ended, Stopper};
use crate::output::OutputSink;
use crate::stdin::StdinFeed;
use std::future::Future;
use stigmer_workflows::{AcquireRequest, Placement, SandboxSpec};

/// A backend's error, as the activities sort it: a store failure is retried (the outcome could
/// not be recorded), anything else retried only when the backend says so.
pub trait BackendError: std::error::Error + Send + Sync + 'static {
    /// Whether another activity attempt may succeed.
    fn is_retryable(&self) -> bool;
    /// Whether this is the store failing rather than the backend.
    fn is_store(&self) -> bool;
}

/// A place that holds sandbox containers.
pub trait ContainerBackend {
    type Error: BackendError;

    /// How messages name this backend's container ("the sandbox", "the Daytona sandbox").
    const NAME: &'static str;

    /// Leases a container for the execution: an idle one with the same spec inside its TTL, or
    /// a new one, its lease written before the backend is asked. A retried attempt finds the
    /// lease its execution already holds.
    fn acquire(
        &self,
        request: &AcquireRequest,
    ) -> impl Future<Output = Result<Placement, Self::Error>> + Send;

    /// Runs `argv` in the container until it ends or `stop` fires, streaming its output to
    /// `sink`. The flag says whether the container may still run something of the command (its
    /// lease is then tainted, never reused).
    #[allow(clippy::too_many_arguments)]
    fn exec(
        &self,
        execution_id: &str,
        placement: &Placement,
        spec: &SandboxSpec,
        argv: Vec<String>,
        env: &[(String, String)],
        stdin: Option<StdinFeed>,
        sink: &mut OutputSink,
        stop: &Stopper,
    ) -> impl Future<Output = Result<(Ended, bool), Self::Error>> + Send;

    /// Gives the container back once its command ended by itself and left nothing running, so
    /// the next command finds it idle before the workflow's release; `false` when this backend
    /// leaves that to the release.
    fn release_clean(
        &self,
        execution_id: &str,
        placement: &Placement,
    ) -> impl Future<Output = Result<bool, Self::Error>> + Send;

    /// Back to idle for reuse, or removed (tainted, TTL 0, or cleanup on).
    fn release(
        &self,
        execution_id: &str,
        placement: &Placement,
        taint: bool,
        ttl_secs: u64,
        cleanup: bool,
    ) -> impl Future<Output = Result<String, Self::Error>> + Send;

    /// The container the execution still holds here, if any (after a step that took its own
    /// container, the release finds it by execution).
    fn held_by(
        &self,
        execution_id: &str,
    ) -> impl Future<Output = Result<Option<Placement>, Self::Error>> + Send;
}
