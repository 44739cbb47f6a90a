//! What the commands do, as plain functions the CLI, the daemon and the tests share; the CLI
//! only parses arguments and renders what these return.

use std::fmt::Display;
use stigmer_activities::store::Store;
use stigmer_workflows::{ExecutionResult, Status};

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
