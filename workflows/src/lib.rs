//! The `AgentExecution` workflow and the types that cross Temporal's boundary.
//!
//! This crate holds only deterministic code: the workflow decides the order of steps and what
//! happens when one fails or is cancelled; every step that touches the world is an activity,
//! declared here by name and typed input/output (`StigmerActivities`) and implemented in the
//! `stigmer-activities` crate. Keeping the declarations here means the workflow compiles
//! without any I/O code, and a worker written elsewhere can implement the same contract.

mod types;

pub use types::*;

use std::time::Duration;
use temporalio_common::RetryPolicy;
use temporalio_common::protos::temporal::api::enums::v1::TimeoutType;
use temporalio_macros::{activity_definitions, workflow, workflow_methods};
use temporalio_sdk::{
    ActivityCancellationType, ActivityExecutionError, ActivityOptions, LocalActivityOptions,
    WorkflowCancellationToken, WorkflowContext, WorkflowContextView, WorkflowResult,
    activities::ActivityError,
};

/// Name of the workflow type as Temporal sees it.
pub const WORKFLOW_TYPE: &str = "AgentExecution";

/// The prefix of every execution's workflow id: `stigmer/agent-execution/<execution id>`.
pub const WORKFLOW_ID_PREFIX: &str = "stigmer/agent-execution/";

/// The workflow id of an execution.
#[must_use]
pub fn workflow_id(execution_id: &str) -> String {
    format!("{WORKFLOW_ID_PREFIX}{execution_id}")
}

/// How long a worker may go without heartbeating from `exec` before Temporal declares it lost.
pub const EXEC_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(5);

/// The activities the workflow schedules. Implemented by `stigmer_activities::Activities`.
pub struct StigmerActivities;

#[activity_definitions]
impl StigmerActivities {
    /// Runs the command where the input says and records its output and result in the store.
    /// Not idempotent: it records "started" before spawning and never silently re-runs a command.
    #[activity(name = "exec")]
    pub fn exec(input: ExecutionInput) -> Result<ExecutionResult, ActivityError> {
        unimplemented!()
    }

    /// Records a terminal state for an execution whose `exec` could not record one itself
    /// (its worker was lost, it was cancelled before starting, its retries ran out).
    /// Idempotent: a row already terminal is left as it is.
    #[activity(name = "finish")]
    pub fn finish(result: ExecutionResult) -> Result<ExecutionResult, ActivityError> {
        unimplemented!()
    }
}

/// The typed activity definitions, for the crate that implements them.
pub mod activity_defs {
    pub use super::stigmer_activities::{Exec, Finish};
}

/// One agent execution: a command, where it runs, and its outcome.
#[workflow]
pub struct AgentExecution {
    input: ExecutionInput,
}

#[workflow_methods]
impl AgentExecution {
    #[init]
    fn new(_ctx: &WorkflowContextView, input: ExecutionInput) -> Self {
        Self { input }
    }

    #[run(name = "AgentExecution")]
    pub async fn run(ctx: &mut WorkflowContext<Self>) -> WorkflowResult<ExecutionResult> {
        let input = ctx.state(|s| s.input.clone());
        let id = input.id.clone();
        let retry_exec = input.retry_exec;

        // `exec` must not run a command twice unless asked. The activity itself refuses to
        // re-spawn a command whose start is recorded, so retries here only cover failures
        // before the spawn (store unavailable, worker crashed before starting).
        let exec_options =
            ActivityOptions::with_start_to_close_timeout(exec_start_to_close(&input))
                .heartbeat_timeout(EXEC_HEARTBEAT_TIMEOUT)
                .cancellation_type(ActivityCancellationType::WaitCancellationCompleted)
                .retry_policy(
                    RetryPolicy::builder()
                        .initial_interval(Duration::from_millis(500))
                        .maximum_interval(Duration::from_secs(10))
                        .maximum_attempts(if retry_exec { 5 } else { 10 })
                        .build(),
                )
                .summary(format!("exec {}", input.display_command()))
                .build();

        let outcome = ctx
            .execute_activity(StigmerActivities::exec, input, exec_options)
            .await;

        let terminal = match outcome {
            Ok(result) => return Ok(result),
            Err(ActivityExecutionError::Cancelled(_)) => {
                ExecutionResult::ended(&id, Status::Cancelled, "cancelled by request")
            }
            Err(err) => ExecutionResult::ended(&id, Status::Failed, &describe_failure(&err)),
        };

        // Record the terminal state even when the workflow itself is being cancelled:
        // a detached token keeps this step from being cancelled along with everything else.
        let finish_options = LocalActivityOptions::builder()
            .start_to_close_timeout(Duration::from_secs(30))
            .cancellation_token(WorkflowCancellationToken::new())
            .build();
        let recorded = ctx
            .execute_local_activity(StigmerActivities::finish, terminal, finish_options)
            .await?;
        Ok(recorded)
    }
}

/// The exec activity's start-to-close: the user's timeout (enforced inside the activity) plus
/// room to kill and report, or a day when there is none (heartbeats catch a lost worker).
fn exec_start_to_close(input: &ExecutionInput) -> Duration {
    match input.timeout_secs {
        Some(secs) => Duration::from_secs(secs.saturating_add(60)),
        None => Duration::from_secs(24 * 3600),
    }
}

/// A sentence for the audit record saying why `exec` failed as infrastructure, not as a command.
fn describe_failure(err: &ActivityExecutionError) -> String {
    let Some(failure) = err.failure() else {
        return format!("exec failed: {err}");
    };
    // The cause chain holds the last attempt's failure; a heartbeat timeout there means the
    // worker running the command stopped answering.
    let mut cause = failure.cause.as_deref();
    while let Some(f) = cause {
        if let Some(
            temporalio_common::protos::temporal::api::failure::v1::failure::FailureInfo::TimeoutFailureInfo(t),
        ) = &f.failure_info
            && t.timeout_type() == TimeoutType::Heartbeat
        {
            return "the worker running the command was lost (no heartbeat for 5 s); \
                    the command was not re-run (use --retry-exec to allow that)"
                .to_string();
        }
        if !f.message.is_empty() && f.cause.is_none() {
            return format!("exec failed: {}", f.message);
        }
        cause = f.cause.as_deref();
    }
    format!("exec failed: {}", failure.message)
}
