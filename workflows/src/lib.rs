//! The `AgentExecution` workflow and the types that cross Temporal's boundary.
//!
//! This crate holds only deterministic code: the workflow decides the order of steps and what
//! happens when one fails or is cancelled; every step that touches the world is an activity,
//! declared here by name and typed input/output (`StigmerActivities`) and implemented in the
//! `stigmer-activities` crate. Keeping the declarations here means the workflow compiles
//! without any I/O code, and a worker written elsewhere can implement the same contract.

mod public;
mod types;

pub use public::*;
pub use types::*;

use serde::{Deserialize, Serialize};
use std::time::Duration;
use temporalio_common::RetryPolicy;
use temporalio_common::data_converters::RawValue;
use temporalio_common::error::ApplicationFailure;
use temporalio_common::protos::temporal::api::enums::v1::TimeoutType;
use temporalio_macros::{activity_definitions, workflow, workflow_methods};
use temporalio_sdk::{
    ActivityCancellationType, ActivityExecutionError, ActivityOptions, LocalActivityOptions,
    WorkflowCancellationToken, WorkflowContext, WorkflowContextView, WorkflowResult,
    WorkflowTermination, activities::ActivityError,
};

/// The prefix of every execution's workflow id: `stigmer/agent-execution/<execution id>`.
pub const WORKFLOW_ID_PREFIX: &str = "stigmer/agent-execution/";

/// The workflow id of an execution.
#[must_use]
pub fn workflow_id(execution_id: &str) -> String {
    format!("{WORKFLOW_ID_PREFIX}{execution_id}")
}

/// The failure type of a warm-path `exec` that found no idle container on its host: nothing
/// ran, and the workflow goes the long way (ensure image, acquire, exec).
pub const NO_IDLE_CONTAINER: &str = "NoIdleContainer";

/// How long a warm-path `exec` waits for its host to pick it up before the workflow goes the
/// long way instead (nothing has run until it is picked up).
const WARM_SCHEDULE_TO_START: Duration = Duration::from_secs(10);

/// How long a worker may go without heartbeating from `exec` before Temporal declares it lost.
pub const EXEC_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(5);

/// The same for the other steps (they heartbeat every second while they work), so a step whose
/// worker died is retried elsewhere in seconds rather than after its start-to-close timeout.
pub const STEP_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(10);

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

    /// Makes sure the sandbox image exists on the worker's Docker host: present, pulled (when
    /// auto-pull is on) or built; with `--requirements`, a derived image with those packages.
    #[activity(name = "ensure_image")]
    pub fn ensure_image(spec: SandboxSpec) -> Result<ImageReady, ActivityError> {
        unimplemented!()
    }

    /// Leases a container: an idle one with the same spec inside its TTL, or a new one (its
    /// lease row written before Docker is asked).
    #[activity(name = "acquire_container")]
    pub fn acquire_container(request: AcquireRequest) -> Result<Placement, ActivityError> {
        unimplemented!()
    }

    /// Gives the container back: idle for reuse, or removed (cleanup on, TTL 0, or tainted).
    #[activity(name = "release_container")]
    pub fn release_container(request: ReleaseRequest) -> Result<String, ActivityError> {
        unimplemented!()
    }

    /// Records a terminal state for an execution whose `exec` could not record one itself
    /// (its worker was lost, it was cancelled before starting, its retries ran out).
    /// Idempotent: a row already terminal is left as it is.
    #[activity(name = "finish")]
    pub fn finish(result: ExecutionResult) -> Result<ExecutionResult, ActivityError> {
        unimplemented!()
    }

    /// Admits a start with the public input (a local activity, so the decision is in history
    /// and replay never decides again): records the execution under an id derived from the
    /// workflow id (the same run again is idempotent, another run of the id is refused), decides
    /// the mode (auto by the worker's own policy) and the sandbox from the worker's settings,
    /// and returns the input the rest of the workflow runs.
    #[activity(name = "admit")]
    pub fn admit(request: AdmitRequest) -> Result<ExecutionInput, ActivityError> {
        unimplemented!()
    }

    /// The mode, the reason and the head and tail of the output, for a public start's result.
    #[activity(name = "collect_output")]
    pub fn collect_output(request: CollectRequest) -> Result<Report, ActivityError> {
        unimplemented!()
    }
}

/// The typed activity definitions, for the crate that implements them.
pub mod activity_defs {
    pub use super::stigmer_activities::{
        AcquireContainer, Admit, CollectOutput, EnsureImage, Exec, Finish, ReleaseContainer,
    };
}

/// The marks the payload codec leaves on a payload it decoded (the codec lives with the
/// clients; the workflow only reads the marks, which never travel).
pub mod codec_marks {
    /// On a payload that decrypted: the id of the key it decrypted with.
    pub const DECRYPTED_WITH: &str = "stigmer-decrypted-with";
    /// On the sentinel an undecryptable payload becomes: why it did not decrypt.
    pub const CODEC_ERROR: &str = "stigmer-codec-error";
}

/// The patch under which the workflow accepts only an input that decrypted with a key this
/// worker holds and names the workflow's own id. Histories from before it replay without it.
pub const ENCRYPTED_INPUT_PATCH: &str = "encrypted-input-v1";

/// The failure type of an input the workflow refuses (nothing ran).
pub const INVALID_INPUT: &str = "InvalidInput";

/// One agent execution: a command, where it runs, and its outcome.
#[workflow]
pub struct AgentExecution {
    /// The input as it arrived: read inside `run`, so that bad input fails the workflow with a
    /// message instead of failing its workflow task forever.
    input: RawValue,
    /// What the `status` query answers.
    progress: Progress,
}

/// What the workflow knows of its execution, for the `status` query: the phase, where, and
/// since when. The command's own progress is in the pending `exec` step's heartbeats
/// (`temporal workflow describe`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Progress {
    /// `received`, `queued` (placing the command), `running` (`exec` scheduled; it claims the
    /// execution before it spawns anything), or `ended`.
    pub phase: String,
    pub execution_id: Option<String>,
    pub mode: Option<String>,
    /// The container the command runs in, once it has one.
    pub container_id: Option<String>,
    /// Milliseconds since the epoch, in workflow time, when the phase began.
    pub since_ms: Option<u64>,
}

#[workflow_methods]
impl AgentExecution {
    #[init]
    fn new(_ctx: &WorkflowContextView, input: RawValue) -> Self {
        Self {
            input,
            progress: Progress {
                phase: "received".into(),
                ..Progress::default()
            },
        }
    }

    /// Where the execution is: see [`Progress`].
    #[query]
    pub fn status(&self, _ctx: &WorkflowContextView) -> Progress {
        self.progress.clone()
    }

    #[run(name = "AgentExecution")]
    pub async fn run(ctx: &mut WorkflowContext<Self>) -> WorkflowResult<ExecutionResult> {
        let raw = ctx.state(|s| s.input.clone());
        let checked = ctx.patched(ENCRYPTED_INPUT_PATCH);
        let info = ctx.info();
        let repeats =
            info.cron_schedule().is_some_and(|c| !c.is_empty()) || info.retry_policy().is_some();
        let accepted = refuse_repeats(checked && repeats)
            .and_then(|()| accept_input(raw, checked.then(|| ctx.workflow_id())))
            .map_err(refused)?;
        let (mut input, public) = match accepted {
            Accepted::Internal(input) => (*input, None),
            Accepted::Public(public) => (admit(ctx, &public).await?, Some(public)),
        };
        set_progress(ctx, "queued", |p| {
            p.execution_id = Some(input.id.clone());
            p.mode = Some(input.effective_mode.to_string());
        });
        let outcome = match input.route {
            Route::Direct => run_exec(ctx, &input).await,
            Route::Acquire | Route::Warm { .. } | Route::ReadyHost { .. } => {
                run_in_sandbox(ctx, &mut input).await
            }
        };
        let mut result = match outcome {
            Ok(result) => result,
            Err(terminal) => record_terminal(ctx, terminal).await?,
        };
        if let Some(public) = public {
            result.report = collect_output(ctx, &result.id, public.output_limit())
                .await
                .map(Box::new);
        }
        set_progress(ctx, "ended", |_| {});
        Ok(result)
    }
}

/// Moves the `status` query's answer to `phase`, stamped with workflow time.
fn set_progress(
    ctx: &mut WorkflowContext<AgentExecution>,
    phase: &str,
    change: impl FnOnce(&mut Progress),
) {
    let since_ms = ctx
        .workflow_time()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as u64);
    ctx.state_mut(|s| {
        s.progress.phase = phase.to_string();
        s.progress.since_ms = since_ms;
        change(&mut s.progress);
    });
}

/// A refusal of the input, as the workflow's failure: non-retryable, nothing ran.
fn refused(why: String) -> WorkflowTermination {
    WorkflowTermination::failed_application(
        ApplicationFailure::builder(why)
            .type_name(INVALID_INPUT.to_string())
            .non_retryable(true)
            .build(),
    )
}

/// What the workflow was started with: stigmer's own clients' input (the execution already
/// recorded), or the public input any client sends.
#[derive(Debug)]
enum Accepted {
    Internal(Box<ExecutionInput>),
    Public(Box<PublicInput>),
}

/// Has the worker record and place a public start. A refusal there (a mode the input may not
/// ask for, limits out of range, the workflow id used by another run) fails the workflow with
/// the worker's message.
async fn admit(
    ctx: &mut WorkflowContext<AgentExecution>,
    public: &PublicInput,
) -> WorkflowResult<ExecutionInput> {
    let mut named = public.clone();
    // The values go to `exec` alone; admitting needs the names.
    named.env.values_mut().for_each(String::clear);
    named.stdin = None;
    named.stdin_base64 = None;
    let request = AdmitRequest {
        workflow_id: ctx.workflow_id().to_string(),
        run_id: ctx.run_id().to_string(),
        input: named,
        stdin: public.stdin_input().is_some(),
    };
    let options = LocalActivityOptions::builder()
        .start_to_close_timeout(Duration::from_secs(60))
        .retry_policy(steady_retries())
        .build();
    match ctx
        .execute_local_activity(StigmerActivities::admit, request, options)
        .await
    {
        Ok(mut input) => {
            input.env = public.env_values();
            input.stdin = public.stdin_input();
            Ok(input)
        }
        Err(ActivityExecutionError::Cancelled(_)) => Err(WorkflowTermination::cancelled()),
        Err(e) => Err(refused(failure_message(&e))),
    }
}

/// The report of a public start's result. Best effort: without it the result still says how
/// the execution ended, and `stigmer logs ID` has the output.
async fn collect_output(
    ctx: &mut WorkflowContext<AgentExecution>,
    id: &str,
    limit: u64,
) -> Option<Report> {
    let options = LocalActivityOptions::builder()
        .start_to_close_timeout(Duration::from_secs(60))
        .cancellation_token(WorkflowCancellationToken::new())
        .retry_policy(RetryPolicy::builder().maximum_attempts(5).build())
        .build();
    let request = CollectRequest {
        execution_id: id.to_string(),
        limit,
    };
    ctx.execute_local_activity(StigmerActivities::collect_output, request, options)
        .await
        .ok()
}

impl ExecutionInput {
    /// The workflow's input as a starter sends it (JSON; the client's codec encrypts it).
    pub fn to_raw(&self) -> Result<RawValue, serde_json::Error> {
        use temporalio_common::protos::temporal::api::common::v1::Payload;
        Ok(RawValue::new(vec![Payload {
            metadata: [("encoding".to_string(), b"json/plain".to_vec())].into(),
            data: serde_json::to_vec(self)?,
            ..Default::default()
        }]))
    }
}

/// A workflow retry policy or cron schedule set by the starter would start the same execution
/// again: refused, so that a command runs once unless `retry_exec` asks otherwise.
fn refuse_repeats(repeats: bool) -> Result<(), String> {
    if repeats {
        return Err(
            "refused: the workflow was started with a retry policy or a cron schedule; an \
                    execution runs its command once (set retry_exec in the input to re-run a \
                    command whose worker was lost, and schedule new executions instead of cron); \
                    nothing ran"
                .into(),
        );
    }
    Ok(())
}

/// Reads the workflow's input. With `bound_to` (the workflow's id, under
/// [`ENCRYPTED_INPUT_PATCH`]) it must also have decrypted with a key this worker holds and be
/// the input of that workflow id: a plain-text start, or an input copied to another id, runs
/// nothing. The message names what is wrong and never echoes a value (failure text stays in
/// history).
fn accept_input(raw: RawValue, bound_to: Option<&str>) -> Result<Accepted, String> {
    let payload = raw.payloads.into_iter().next().unwrap_or_default();
    if bound_to.is_some() && !payload.metadata.contains_key(codec_marks::DECRYPTED_WITH) {
        let why = payload
            .metadata
            .get(codec_marks::CODEC_ERROR)
            .map(|r| String::from_utf8_lossy(r).into_owned())
            .unwrap_or_else(|| "it arrived in plain text".into());
        return Err(format!(
            "refused: the input was not encrypted with a key this worker holds ({why}). Start \
             executions with the AES-256-GCM codec and the cluster's key (docs/temporal-api.md, \
             `stigmer codec key`); nothing ran"
        ));
    }
    // The public input says its version; stigmer's own clients' input has none. Before the
    // patch there was only the latter.
    if let Some(own) = bound_to
        && serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&payload.data)
            .is_ok_and(|object| object.contains_key("version"))
    {
        return PublicInput::read(&payload.data, own).map(|p| Accepted::Public(Box::new(p)));
    }
    let mut reader = serde_json::Deserializer::from_slice(&payload.data);
    let input: ExecutionInput = serde_path_to_error::deserialize(&mut reader).map_err(|e| {
        let at = e.path().to_string();
        let what = match e.inner().classify() {
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof => "is not JSON",
            _ => "has a missing field or a value of the wrong type",
        };
        format!(
            "refused: the input {what} at `{at}` (line {}, column {}); the input is \
                 documented in docs/temporal-api.md; nothing ran",
            e.inner().line(),
            e.inner().column()
        )
    })?;
    if let Some(own) = bound_to
        && workflow_id(&input.id) != own
    {
        return Err(format!(
            "refused: the input belongs to another workflow id than this one ({own:?}); an \
             input cannot be started again under another id; nothing ran"
        ));
    }
    Ok(Accepted::Internal(Box::new(input)))
}

/// Records a terminal state when `exec` could not: even when the workflow itself is being
/// cancelled (a detached token keeps this step from being cancelled with everything else).
async fn record_terminal(
    ctx: &mut WorkflowContext<AgentExecution>,
    terminal: ExecutionResult,
) -> WorkflowResult<ExecutionResult> {
    let finish_options = LocalActivityOptions::builder()
        .start_to_close_timeout(Duration::from_secs(30))
        .cancellation_token(WorkflowCancellationToken::new())
        .build();
    let recorded = ctx
        .execute_local_activity(StigmerActivities::finish, terminal, finish_options)
        .await?;
    Ok(recorded)
}

/// Runs `exec`; an `Err` carries the terminal result to record when it could not.
async fn run_exec(
    ctx: &mut WorkflowContext<AgentExecution>,
    input: &ExecutionInput,
) -> Result<ExecutionResult, ExecutionResult> {
    let outcome = exec_activity(ctx, input, None).await;
    exec_outcome(input, outcome)
}

/// What `exec` returned, as the execution's result or the terminal result to record.
fn exec_outcome(
    input: &ExecutionInput,
    outcome: Result<ExecutionResult, ActivityExecutionError>,
) -> Result<ExecutionResult, ExecutionResult> {
    match outcome {
        Ok(result) => Ok(result),
        Err(ActivityExecutionError::Cancelled(_)) => Err(ExecutionResult::ended(
            &input.id,
            Status::Cancelled,
            "cancelled by request",
        )),
        Err(err) => Err(ExecutionResult::ended(
            &input.id,
            Status::Failed,
            &describe_failure(&err),
        )),
    }
}

/// Where `exec` is sent when the workflow holds no placement yet.
#[derive(Clone, Copy)]
enum ExecQueue<'a> {
    /// A host that had an idle container of the spec (the warm path).
    Warm(&'a str),
    /// The host the starter saw the image on: `exec` acquires the container there.
    ReadyHost(&'a str),
}

/// Schedules `exec` on the placement's host queue, or on `queue` when given.
async fn exec_activity(
    ctx: &mut WorkflowContext<AgentExecution>,
    input: &ExecutionInput,
    queue: Option<ExecQueue<'_>>,
) -> Result<ExecutionResult, ActivityExecutionError> {
    // `exec` must not run a command twice unless asked. The activity itself refuses to
    // re-spawn a command whose start is recorded, so retries here only cover failures
    // before the spawn (store unavailable, worker crashed before starting).
    let mut exec_options = ActivityOptions::with_start_to_close_timeout(exec_start_to_close(input))
        .heartbeat_timeout(EXEC_HEARTBEAT_TIMEOUT)
        .cancellation_type(ActivityCancellationType::WaitCancellationCompleted)
        .retry_policy(
            RetryPolicy::builder()
                .initial_interval(Duration::from_millis(500))
                .maximum_interval(Duration::from_secs(10))
                // Acquiring in exec, attempts lost with their worker before the command
                // started must not use up the retries (as for acquire_container).
                .maximum_attempts(if matches!(queue, Some(ExecQueue::ReadyHost(_))) {
                    ACQUIRE_ATTEMPTS
                } else {
                    10
                })
                .build(),
        )
        .summary(format!("exec {}", input.display_command()))
        .build();
    if let Some(ExecQueue::Warm(queue)) = queue {
        exec_options.task_queue = Some(queue.to_string());
        exec_options.schedule_to_start_timeout = Some(WARM_SCHEDULE_TO_START);
    } else if let Some(ExecQueue::ReadyHost(queue)) = queue {
        exec_options.task_queue = Some(queue.to_string());
        exec_options.schedule_to_start_timeout = Some(HOST_QUEUE_SCHEDULE_TO_START);
    } else if let Some(queue) = input.placement.as_ref().and_then(|p| p.task_queue.clone()) {
        exec_options.task_queue = Some(queue);
        exec_options.schedule_to_start_timeout = Some(HOST_QUEUE_SCHEDULE_TO_START);
    }
    set_progress(ctx, "running", |p| {
        p.container_id = input.placement.as_ref().map(|pl| pl.container_id.clone());
    });
    ctx.execute_activity(StigmerActivities::exec, input.clone(), exec_options)
        .await
}

/// The warm path: when the execution was started with an idle container of its spec in
/// sight, `exec` goes straight to that container's host and takes the container itself: one
/// step instead of three. `None` when it found none there (taken meanwhile, expired) or its host
/// did not pick the step up in time: nothing ran, and the workflow goes the long way.
async fn run_warm(
    ctx: &mut WorkflowContext<AgentExecution>,
    input: &ExecutionInput,
    spec: &SandboxSpec,
    queue: String,
) -> Option<Result<ExecutionResult, ExecutionResult>> {
    let outcome = exec_activity(ctx, input, Some(ExecQueue::Warm(&queue))).await;
    if let Err(err) = &outcome
        && never_started(err)
    {
        return None;
    }
    let outcome = exec_outcome(input, outcome);
    release_after(ctx, &input.id, &outcome, None, Some(queue), spec).await;
    Some(outcome)
}

/// The cold path when the starter saw the image on the Docker host it serves (the daemon):
/// `exec` goes to that host and acquires the container itself (reusing an idle one inside its
/// TTL, else creating one), then runs the command: one step instead of ensure-image, acquire
/// and exec. Acquiring is idempotent per execution (a retry finds its lease), and the command
/// is claimed in the store only once the container is held, so a lost attempt is retried like
/// a lost acquire until the command has started.
async fn run_on_ready_host(
    ctx: &mut WorkflowContext<AgentExecution>,
    input: &ExecutionInput,
    spec: &SandboxSpec,
    queue: String,
) -> Result<ExecutionResult, ExecutionResult> {
    let outcome = exec_activity(ctx, input, Some(ExecQueue::ReadyHost(&queue))).await;
    let outcome = exec_outcome(input, outcome);
    release_after(ctx, &input.id, &outcome, None, Some(queue), spec).await;
    outcome
}

/// A warm-path `exec` that found no idle container, or was never picked up by its host.
fn never_started(err: &ActivityExecutionError) -> bool {
    use temporalio_common::protos::temporal::api::failure::v1::failure::FailureInfo;
    let mut next = err.failure();
    while let Some(f) = next {
        match &f.failure_info {
            Some(FailureInfo::ApplicationFailureInfo(a)) if a.r#type == NO_IDLE_CONTAINER => {
                return true;
            }
            Some(FailureInfo::TimeoutFailureInfo(t))
                if t.timeout_type() == TimeoutType::ScheduleToStart =>
            {
                return true;
            }
            _ => {}
        }
        next = f.cause.as_deref();
    }
    false
}

/// Releases after `exec` ended with `outcome`. The container is tainted unless the command
/// ended by itself: when `exec` failed, the command may still run; when it was cancelled or
/// timed out, what it started may.
async fn release_after(
    ctx: &mut WorkflowContext<AgentExecution>,
    id: &str,
    outcome: &Result<ExecutionResult, ExecutionResult>,
    placement: Option<Placement>,
    queue: Option<String>,
    spec: &SandboxSpec,
) {
    let taint = match outcome {
        Ok(result) => matches!(result.status, Status::Cancelled | Status::TimedOut),
        Err(_) => true,
    };
    release(ctx, id, placement, queue, taint, spec).await;
}

/// Gives the container back on every path (a release that cannot run, its host gone, is left
/// to the reaper; the outcome stands).
async fn release(
    ctx: &mut WorkflowContext<AgentExecution>,
    id: &str,
    placement: Option<Placement>,
    queue: Option<String>,
    taint: bool,
    spec: &SandboxSpec,
) {
    let mut release_options =
        ActivityOptions::with_start_to_close_timeout(Duration::from_secs(120))
            .heartbeat_timeout(STEP_HEARTBEAT_TIMEOUT)
            .cancellation_token(WorkflowCancellationToken::new())
            .retry_policy(steady_retries())
            .build();
    if let Some(queue) = queue {
        release_options.task_queue = Some(queue);
        release_options.schedule_to_start_timeout = Some(HOST_QUEUE_SCHEDULE_TO_START);
    }
    let request = ReleaseRequest {
        execution_id: id.to_string(),
        placement,
        taint,
        ttl_secs: spec.ttl_secs,
        cleanup: spec.cleanup,
        backend: spec.backend,
    };
    let _ = ctx
        .execute_activity(
            StigmerActivities::release_container,
            request,
            release_options,
        )
        .await;
}

/// ensure_image → acquire_container → exec → release_container; exec → release on the warm
/// path and when the starter saw the image on its host (exec acquires there). Release runs on
/// every path.
async fn run_in_sandbox(
    ctx: &mut WorkflowContext<AgentExecution>,
    input: &mut ExecutionInput,
) -> Result<ExecutionResult, ExecutionResult> {
    let id = input.id.clone();
    let Some(spec) = input.sandbox.clone() else {
        return Err(ExecutionResult::ended(
            &id,
            Status::Failed,
            "sandbox mode without a sandbox specification",
        ));
    };
    let failed = |what: &str, err: &ActivityExecutionError| match err {
        ActivityExecutionError::Cancelled(_) => {
            ExecutionResult::ended(&id, Status::Cancelled, "cancelled by request")
        }
        other => ExecutionResult::ended(
            &id,
            Status::Failed,
            &format!("{what}: {}", failure_message(other)),
        ),
    };
    match input.route.clone() {
        Route::Warm { task_queue } => {
            if let Some(outcome) = run_warm(ctx, input, &spec, task_queue).await {
                return outcome;
            }
        }
        Route::ReadyHost { task_queue, .. } => {
            return run_on_ready_host(ctx, input, &spec, task_queue).await;
        }
        Route::Acquire | Route::Direct => {}
    }
    let image_options = ActivityOptions::with_start_to_close_timeout(Duration::from_secs(3600))
        .heartbeat_timeout(STEP_HEARTBEAT_TIMEOUT)
        .retry_policy(
            RetryPolicy::builder()
                .initial_interval(Duration::from_secs(1))
                .maximum_attempts(3)
                .build(),
        )
        .summary(format!("ensure image {}", spec.image))
        .build();
    // A Daytona sandbox starts from a snapshot that lives in the cloud: nothing to ensure here.
    let image = match spec.backend {
        Backend::Daytona => ImageReady {
            image: spec.image.clone(),
            image_id: spec.image.clone(),
            digest: None,
            how: "snapshot".into(),
            task_queue: None,
        },
        Backend::Docker => ctx
            .execute_activity(StigmerActivities::ensure_image, spec.clone(), image_options)
            .await
            .map_err(|e| failed("the sandbox image is not available", &e))?,
    };

    let mut acquire_options =
        ActivityOptions::with_start_to_close_timeout(Duration::from_secs(120))
            .heartbeat_timeout(STEP_HEARTBEAT_TIMEOUT)
            .retry_policy(
                RetryPolicy::builder()
                    .initial_interval(Duration::from_millis(500))
                    .maximum_interval(Duration::from_secs(5))
                    .maximum_attempts(ACQUIRE_ATTEMPTS)
                    .build(),
            )
            .build();
    // The container is made on the host that has the image.
    if let Some(queue) = image.task_queue.clone() {
        acquire_options.task_queue = Some(queue);
        acquire_options.schedule_to_start_timeout = Some(HOST_QUEUE_SCHEDULE_TO_START);
    }
    let request = AcquireRequest {
        execution_id: id.clone(),
        spec: spec.clone(),
        image,
    };
    let placement = ctx
        .execute_activity(
            StigmerActivities::acquire_container,
            request,
            acquire_options,
        )
        .await
        .map_err(|e| failed("could not get a sandbox container", &e))?;
    input.placement = Some(placement.clone());

    let outcome = run_exec(ctx, input).await;
    let queue = placement.task_queue.clone();
    release_after(ctx, &id, &outcome, Some(placement), queue, &spec).await;
    outcome
}

/// Ten attempts a second apart and more: for steps that are safe to repeat (release, admit).
fn steady_retries() -> RetryPolicy {
    RetryPolicy::builder()
        .initial_interval(Duration::from_secs(1))
        .maximum_attempts(10)
        .build()
}

/// Attempts of a step that acquires a container. Attempts lost with their worker must not use
/// up the retries: a storm of crashes (tests/chaos.rs) ended executions with 5.
const ACQUIRE_ATTEMPTS: u32 = 50;

/// How long exec/release wait for the container's host to pick them up before giving up (the
/// host is gone; its leases are reconciled by the reaper).
const HOST_QUEUE_SCHEDULE_TO_START: Duration = Duration::from_secs(60);

fn failure_message(err: &ActivityExecutionError) -> String {
    let Some(failure) = err.failure() else {
        return err.to_string();
    };
    let mut deepest = failure;
    while let Some(cause) = deepest.cause.as_deref() {
        deepest = cause;
    }
    if deepest.message.is_empty() {
        failure.message.clone()
    } else {
        deepest.message.clone()
    }
}

/// The exec activity's start-to-close: the user's timeout (enforced inside the activity) plus
/// room to kill and report, or a day when there is none (heartbeats catch a lost worker). The
/// timeout is bounded, so an input from elsewhere cannot ask for one Temporal cannot encode.
fn exec_start_to_close(input: &ExecutionInput) -> Duration {
    match input.timeout_secs {
        Some(secs) => Duration::from_secs(secs.min(limits::MAX_TIMEOUT_SECS) + 60),
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

#[cfg(test)]
mod tests {
    use super::*;
    use temporalio_common::protos::temporal::api::common::v1::Payload;

    fn input(id: &str) -> ExecutionInput {
        ExecutionInput {
            id: id.into(),
            command: CommandSpec::Shell("true".into()),
            requested_mode: RequestedMode::Local,
            effective_mode: Mode::Local,
            reason: "requested".into(),
            workdir: "/tmp".into(),
            timeout_secs: None,
            retry_exec: false,
            env_names: vec!["TOKEN".into()],
            env: EnvValues(vec![("TOKEN".into(), "hunter2".into())]),
            sandbox: None,
            placement: None,
            route: Route::Direct,
            stdin: None,
            session: None,
        }
    }

    fn decrypted(mut raw: RawValue) -> RawValue {
        raw.payloads[0]
            .metadata
            .insert(codec_marks::DECRYPTED_WITH.into(), b"k1".to_vec());
        raw
    }

    #[test]
    fn under_the_patch_only_a_decrypted_input_of_this_workflow_id_is_read() {
        let own = workflow_id("aex-1");
        let raw = input("aex-1").to_raw().unwrap();
        let err = accept_input(raw.clone(), Some(&own)).unwrap_err();
        assert!(
            err.contains("plain text") && err.contains("nothing ran"),
            "{err}"
        );
        let Ok(Accepted::Internal(read)) = accept_input(decrypted(raw.clone()), Some(&own)) else {
            panic!("not read as stigmer's own input");
        };
        assert_eq!(read.env.0, [("TOKEN".to_string(), "hunter2".to_string())]);
        let err = accept_input(decrypted(raw.clone()), Some(&workflow_id("aex-2"))).unwrap_err();
        assert!(err.contains("another workflow id"), "{err}");
        // Histories from before the patch: read as they were.
        assert!(matches!(accept_input(raw, None), Ok(Accepted::Internal(i)) if i.id == "aex-1"));
    }

    #[test]
    fn an_undecryptable_input_says_why_and_a_bad_one_names_the_field_not_the_value() {
        let own = workflow_id("aex-1");
        let sentinel = RawValue::new(vec![Payload {
            metadata: [
                ("encoding".to_string(), b"json/plain".to_vec()),
                (
                    codec_marks::CODEC_ERROR.to_string(),
                    b"the payload was encrypted with key \"k9\", which this worker does not hold"
                        .to_vec(),
                ),
            ]
            .into(),
            data: b"null".to_vec(),
            ..Default::default()
        }]);
        let err = accept_input(sentinel, Some(&own)).unwrap_err();
        assert!(err.contains("does not hold"), "{err}");

        let mut json = serde_json::to_value(input("aex-1")).unwrap();
        json["timeout_secs"] = "secret-looking-value".into();
        let raw = RawValue::new(vec![Payload {
            metadata: [("encoding".to_string(), b"json/plain".to_vec())].into(),
            data: json.to_string().into_bytes(),
            ..Default::default()
        }]);
        let err = accept_input(decrypted(raw), Some(&own)).unwrap_err();
        assert!(err.contains("`timeout_secs`"), "{err}");
        assert!(
            !err.contains("secret-looking-value"),
            "the value is echoed: {err}"
        );

        let raw = RawValue::new(vec![Payload {
            data: b"{not json".to_vec(),
            ..Default::default()
        }]);
        let err = accept_input(decrypted(raw), Some(&own)).unwrap_err();
        assert!(err.contains("not JSON"), "{err}");
    }

    #[test]
    fn a_versioned_input_is_read_as_the_public_one_and_only_under_the_patch() {
        let public = RawValue::new(vec![Payload {
            data: br#"{"version":1,"command":"true","workflow_id":"orders-42"}"#.to_vec(),
            ..Default::default()
        }]);
        assert!(matches!(
            accept_input(decrypted(public.clone()), Some("orders-42")),
            Ok(Accepted::Public(_))
        ));
        let err = accept_input(decrypted(public.clone()), Some("orders-43"))
            .err()
            .unwrap();
        assert!(err.contains("`workflow_id`"), "{err}");
        // Without the codec: refused before it is read.
        let err = accept_input(public, Some("orders-42")).err().unwrap();
        assert!(err.contains("plain text"), "{err}");
    }

    #[test]
    fn env_values_never_show_in_debug_output() {
        let shown = format!("{:?}", input("aex-1"));
        assert!(shown.contains("TOKEN"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }
}
