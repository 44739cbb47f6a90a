//! Starting an execution: record it in the store, decide its route, start its workflow. The
//! daemon (eager start, its own Docker host's hints) and a remote client (no hints) both come
//! here, so an execution is recorded and started the same way whoever asks.

use crate::protocol::{RunRequest, Started};
use crate::telemetry::{ExecutionAttributes, ExecutionSpan};
use anyhow::Result;
use stigmer_activities::sandbox::SandboxBackend;
use stigmer_activities::store::{NewExecution, Store};
use stigmer_workflows::{
    AgentExecution, ExecutionInput, ExecutionResult, Route, Status, workflow_id,
};
use temporalio_client::{Client, WorkflowStartOptions};

/// A fresh execution id: `aex-` and a ULID (sortable by creation time).
#[must_use]
pub fn new_execution_id() -> String {
    format!("aex-{}", ulid::Ulid::new().to_string().to_lowercase())
}

/// Records the execution, starts its workflow, and returns the input it was started with and
/// the execution's span (for the caller to end with the outcome; with tracing off, a no-op).
pub async fn start_execution(
    store: &Store,
    client: &Client,
    task_queue: &str,
    request: &RunRequest,
    eager: bool,
    id: String,
    host: Option<&SandboxBackend>,
) -> Result<(ExecutionInput, Started, ExecutionSpan)> {
    let wf_id = workflow_id(&id);
    let (command, argv) = match &request.command {
        stigmer_workflows::CommandSpec::Shell(cmd) => (cmd.clone(), None),
        spec @ stigmer_workflows::CommandSpec::Argv(argv) => (spec.display(), Some(argv.clone())),
    };
    let span = ExecutionSpan::start(&ExecutionAttributes {
        id: &id,
        workflow_id: &wf_id,
        command: &command,
        requested_mode: &request.requested_mode.to_string(),
        effective_mode: &request.effective_mode.to_string(),
    });
    let recorded = store
        .insert_execution(&NewExecution {
            id: id.clone(),
            workflow_id: wf_id.clone(),
            trace_id: span.trace_id(),
            command,
            argv,
            workdir: request.workdir.clone(),
            requested_mode: request.requested_mode.to_string(),
            effective_mode: request.effective_mode.to_string(),
            reason: request.reason.clone(),
            os_user: request.os_user.clone(),
            ci_identity: request.ci_identity.clone(),
            client_host: request.client_host.clone(),
            timeout_secs: request.timeout_secs,
            env_names: request.env.iter().map(|(k, _)| k.clone()).collect(),
            labels: request.labels.clone(),
            session: request.session.clone(),
        })
        .await;
    if let Err(e) = recorded {
        span.end(&ExecutionResult::ended(
            &id,
            Status::Failed,
            &format!("could not record the execution: {e}"),
        ));
        return Err(e.into());
    }
    let input = ExecutionInput {
        id: id.clone(),
        command: request.command.clone(),
        requested_mode: request.requested_mode,
        effective_mode: request.effective_mode,
        reason: request.reason.clone(),
        workdir: request.workdir.clone(),
        timeout_secs: request.timeout_secs,
        retry_exec: request.retry_exec,
        env_names: request.env.iter().map(|(k, _)| k.clone()).collect(),
        env: stigmer_workflows::EnvValues(request.env.clone()),
        sandbox: request.sandbox.clone().map(|mut spec| {
            spec.execution_id = Some(id.clone());
            spec
        }),
        placement: None,
        route: Route::Direct,
        stdin: request.stdin.clone(),
        session: request.session.clone(),
    };
    let route = stigmer_activities::route::route_for(
        store,
        host,
        task_queue,
        input.effective_mode,
        input.sandbox.as_ref(),
    )
    .await;
    let input = ExecutionInput { route, ..input };
    let options = WorkflowStartOptions::new(task_queue.to_string(), wf_id.clone())
        .enable_eager_workflow_start(eager)
        .static_summary(input.display_command())
        .build();
    let started = match input.to_raw() {
        Ok(raw) => span
            .run_in(client.start_workflow(AgentExecution::run, raw, options))
            .await
            .map_err(anyhow::Error::new),
        Err(e) => Err(anyhow::Error::new(e).context("the workflow input did not serialize")),
    };
    let handle = match started {
        Ok(handle) => handle,
        Err(e) => {
            let failed = ExecutionResult::ended(
                &id,
                Status::Failed,
                &format!("could not start the workflow: {e:#}"),
            );
            if let Ok(finished) = store.finish(&failed, None).await {
                stigmer_activities::metrics::count_finished(finished);
            }
            span.end(&failed);
            return Err(e.context("could not start the AgentExecution workflow"));
        }
    };
    let run_id = handle.run_id().unwrap_or_default().to_string();
    let _ = store.set_run_id(&id, &run_id).await;
    Ok((
        input,
        Started {
            id,
            workflow_id: wf_id,
            run_id,
        },
        span,
    ))
}
