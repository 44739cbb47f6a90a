//! What the commands do, as plain functions the CLI, the daemon and the tests share. They take
//! the configuration or a store and return data; `client.rs`, `audit.rs` and `cli.rs` only parse
//! arguments and render what these return (as cargo's `ops` do for its commands).

mod inspect;
mod reap;
pub mod session;
mod start;

pub use inspect::{execution, executions, leases, open_for_reading, prune};
pub use reap::{Reaped, reap};
pub use start::{new_execution_id, start_execution};

use std::fmt::Display;
use std::future::Future;
use stigmer_activities::store::Store;
use stigmer_workflows::{AgentExecution, ExecutionResult, Status};
use temporalio_client::{Client, WorkflowGetResultOptions};

/// The outcome of an execution once its workflow has ended: the workflow's result, else (a
/// failed, cancelled or terminated workflow) what its last step recorded in the store, else a
/// failure that says why.
pub async fn outcome<E: Display>(
    store: &Store,
    id: &str,
    workflow_result: Result<ExecutionResult, E>,
) -> ExecutionResult {
    match workflow_result {
        Ok(result) => result,
        Err(e) => match store.get_execution(id).await {
            Ok(Some(record)) if record.status().is_some_and(Status::is_terminal) => record.result(),
            _ => ExecutionResult::ended(id, Status::Failed, &format!("the workflow failed: {e}")),
        },
    }
}

/// Waits for an execution's workflow to end and returns its [`outcome`]. The future owns what
/// it needs, so a caller can race it against output and interrupts, or spawn it.
pub fn await_outcome(
    client: &Client,
    store: &Store,
    id: &str,
    workflow_id: &str,
) -> impl Future<Output = ExecutionResult> + Send + 'static {
    let handle = client.get_workflow_handle::<AgentExecution>(workflow_id.to_string());
    let store = store.clone();
    let id = id.to_string();
    async move {
        let result = handle.get_result(WorkflowGetResultOptions::default()).await;
        outcome(&store, &id, result).await
    }
}
