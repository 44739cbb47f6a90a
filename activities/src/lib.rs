//! The activities of the `AgentExecution` workflow and everything they touch: the store, the
//! live output hub, and the execution backends.
//!
//! `exec` is deliberately not idempotent: it claims the execution in the store (`queued →
//! running`) before spawning anything, so a retry after a lost worker finds the claim and
//! reports the loss instead of silently running the command a second time.

pub use stigmer_store::audit;
pub mod admit;
pub mod backend;
pub mod chaos;
pub mod cloud;
pub mod hub;
pub mod local;
pub mod metrics;
pub mod output;
pub mod process;
pub mod reaper;
pub mod route;
pub mod sandbox;
pub mod session;
pub mod stdin;
pub use stigmer_store as store;
pub mod telemetry;

use backend::{BackendError, ContainerBackend};
use hub::{Hub, HubEvent};
use local::{Ended, StopReason, Stopper};
use opentelemetry::KeyValue;
use output::OutputSink;
use sandbox::SandboxBackend;
use std::sync::Arc;
use std::time::Duration;
use stdin::{StdinFeed, StdinSource};
use stigmer_workflows::{
    AcquireRequest, AdmitRequest, Backend, CollectRequest, ExecutionInput, ExecutionResult,
    ImageReady, Mode, Placement, ReleaseRequest, Report, Route, SandboxSpec, Status, StdinInput,
};
use store::{StartClaim, Store, StoreError};
use temporalio_common::error::ApplicationFailure;
use temporalio_macros::activities;
use temporalio_sdk::activities::{ActivityContext, ActivityError};
use tokio_util::sync::CancellationToken;

/// Default bound on the output the store keeps per execution.
pub const DEFAULT_OUTPUT_RETAIN_BYTES: u64 = 8 * 1024 * 1024;

/// How often `exec` heartbeats (the workflow's heartbeat timeout is 5 s).
const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);

/// Runs `$body` with `$backend` bound to the container backend `$kind` names: the one place the
/// activities choose between Docker and Daytona.
macro_rules! with_backend {
    ($self:expr, $kind:expr, |$backend:ident| $body:expr) => {
        match $kind {
            Backend::Docker => {
                let $backend = &$self.sandbox;
                $body
            }
            Backend::Daytona => {
                let $backend = &$self.cloud;
                $body
            }
        }
    };
}

/// What the activities need from the worker that hosts them.
#[derive(Clone)]
pub struct Activities {
    store: Store,
    hub: Hub,
    worker_id: String,
    output_retain_bytes: u64,
    sandbox: SandboxBackend,
    cloud: cloud::CloudBackend,
    admission: admit::AdmitSettings,
    /// Seals a local session's saved state in the store (the payload codec's key).
    session_seal: Option<Arc<dyn session::StateSeal>>,
    /// The executions whose command an attempt in this process runs.
    running: Running,
}

/// The executions whose command an attempt in this process runs, each with a token cancelled
/// when that attempt has recorded its end.
#[derive(Clone, Default)]
struct Running(Arc<std::sync::Mutex<std::collections::HashMap<String, Arc<CancellationToken>>>>);

impl Running {
    fn enter(&self, id: &str) -> RunningGuard {
        let token = Arc::new(CancellationToken::new());
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(id.to_string(), token.clone());
        RunningGuard {
            running: self.clone(),
            id: id.to_string(),
            token,
        }
    }

    fn attempt_of(&self, id: &str) -> Option<Arc<CancellationToken>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(id)
            .cloned()
    }
}

/// Leaves [`Running`] when the attempt ends, on every path.
struct RunningGuard {
    running: Running,
    id: String,
    token: Arc<CancellationToken>,
}

impl Drop for RunningGuard {
    fn drop(&mut self) {
        let mut map = self
            .running
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if map
            .get(&self.id)
            .is_some_and(|t| Arc::ptr_eq(t, &self.token))
        {
            map.remove(&self.id);
        }
        self.token.cancel();
    }
}

impl Activities {
    #[must_use]
    pub fn new(
        store: Store,
        hub: Hub,
        worker_id: String,
        output_retain_bytes: u64,
        sandbox: SandboxBackend,
        cloud: cloud::CloudSettings,
    ) -> Self {
        let cloud = cloud::CloudBackend::new(store.clone(), worker_id.clone(), cloud);
        Self {
            store,
            hub,
            worker_id,
            output_retain_bytes,
            sandbox,
            cloud,
            admission: admit::AdmitSettings::default(),
            session_seal: None,
            running: Running::default(),
        }
    }

    /// How a local session's state is sealed at rest; without it, local sessions keep no state.
    #[must_use]
    pub fn with_session_seal(mut self, seal: Arc<dyn session::StateSeal>) -> Self {
        self.session_seal = Some(seal);
        self
    }

    /// Lays out a local session's saved state for its next command (opened from the store).
    async fn local_session_state(
        &self,
        session: &str,
        id: &str,
    ) -> Result<session::LocalState, String> {
        let (sealed, lost) = self
            .store
            .session_state(session)
            .await
            .map_err(|e| format!("could not read the session's state: {e}"))?;
        let plain = match (sealed, &self.session_seal) {
            (Some(sealed), Some(seal)) => Some(
                seal.open(&sealed)
                    .map_err(|e| format!("could not open the session's saved state: {e}"))?,
            ),
            _ => None,
        };
        session::LocalState::prepare(id, plain.as_deref(), lost)
            .map_err(|e| format!("could not lay out the session's state: {e}"))
    }

    /// Keeps what a local session's command left (sealed), or notes that it saved nothing.
    async fn keep_local_session_state(&self, session: &str, state: session::LocalState) {
        let sealed = match (state.collect(), &self.session_seal) {
            (Some(plain), Some(seal)) => match seal.seal(&plain) {
                Ok(sealed) => Some(sealed),
                Err(e) => {
                    tracing::warn!("could not seal session {session}'s state: {e}");
                    None
                }
            },
            _ => None,
        };
        if let Err(e) = self
            .store
            .save_session_state(session, sealed.as_deref())
            .await
        {
            tracing::warn!("could not save session {session}'s state: {e}");
        }
    }

    /// What a start with the public input may ask for, and the defaults it gets.
    #[must_use]
    pub fn with_admission(mut self, admission: admit::AdmitSettings) -> Self {
        self.admission = admission;
        self
    }

    /// Taints the lease when the backend says its container may still run the command, and
    /// turns a backend failure into the execution's failure. Store errors stay errors, so the
    /// activity is retried rather than reporting an outcome it could not record.
    async fn settle<B: ContainerBackend>(
        &self,
        _backend: &B,
        placement: &Placement,
        outcome: Result<(Ended, bool), B::Error>,
    ) -> Result<Ended, B::Error> {
        match outcome {
            Ok((ended, taint)) => {
                if taint {
                    let _ = self
                        .store
                        .taint_lease(
                            &placement.lease_id,
                            "the command may still be running",
                            None,
                        )
                        .await;
                }
                Ok(ended)
            }
            Err(e) if e.is_store() => Err(e),
            Err(e) => {
                // The backend failed mid-command: nothing says the command is not still
                // running in the container, so it is never lent again.
                let _ = self
                    .store
                    .taint_lease(
                        &placement.lease_id,
                        "the backend failed while the command ran",
                        None,
                    )
                    .await;
                Ok(Ended::Failed {
                    exit_code: None,
                    reason: format!("{} could not run the command: {e}", B::NAME),
                })
            }
        }
    }

    /// A lost worker on this host may have left its command running: kill that process group.
    async fn kill_leftover(&self, id: &str) {
        let Ok(Some((worker, pgid, started))) = self.store.recorded_process(id).await else {
            return;
        };
        let same_host = worker.rsplit_once('-').map(|(h, _)| h)
            == self.worker_id.rsplit_once('-').map(|(h, _)| h);
        if same_host && local::kill_leftover_group(pgid as i32, started) {
            tracing::warn!(
                "killed process group {pgid} left running by lost worker {worker} ({id})"
            );
        }
    }

    /// Records the workflow's run id from the activity's own info: with eager start the command
    /// can end before the starter has learnt the run id, and the audit record needs it.
    async fn record_run_id(&self, ctx: &ActivityContext, id: &str) {
        if let Some(run_id) = &ctx.info().workflow_run_id
            && let Err(e) = self.store.set_run_id(id, run_id).await
        {
            tracing::warn!("could not record the run id of {id}: {e}");
        }
    }

    /// Appends the execution's start record to the audit chain, once (a retry that finds it
    /// already there appends nothing), so an execution deleted from the store while it runs
    /// leaves a start without an end. A store error is logged rather than failing the step: the
    /// command is already claimed, and failing here would report it lost without running it.
    async fn record_start(&self, id: &str) {
        if let Err(e) = audit::append_started(&self.store, id).await {
            tracing::warn!("could not append the start record of {id} to the audit chain: {e}");
        }
    }

    /// Says in the client's terminal which container the command runs in.
    async fn announce_container(&self, id: &str, placement: &Placement, image: &str) {
        let how = if placement.reused {
            "reusing"
        } else {
            "created"
        };
        let short: String = placement.container_id.chars().take(12).collect();
        self.hub
            .publish(
                id,
                HubEvent::Notice(format!("sandbox: {how} container {short} ({image})")),
                &Default::default(),
            )
            .await;
    }

    /// A warm-path `exec` found no idle container: nothing ran, and the workflow goes the long
    /// way. Unless an earlier attempt already ran the command to its end (its worker lost
    /// before answering): then that recorded result is the answer.
    async fn no_idle_container(&self, id: &str) -> Result<ExecutionResult, ActivityError> {
        if let Some(record) = self.store.get_execution(id).await.map_err(retryable)?
            && record.status().is_some_and(Status::is_terminal)
        {
            metrics::count_appended(audit::append(&self.store, id).await.map_err(retryable)?);
            return Ok(record.result());
        }
        Err(ActivityError::application(
            ApplicationFailure::builder(anyhow::anyhow!(
                "no idle container with this spec on this host"
            ))
            .type_name(stigmer_workflows::NO_IDLE_CONTAINER.to_string())
            .non_retryable(true)
            .build(),
        ))
    }

    /// A sandbox command whose worker was lost may still run in its container: kill what is
    /// left of it there and taint the lease, so the container is removed, never reused (a
    /// session keeps its own container: see [`SandboxBackend::abandon`]).
    async fn abandon_container(&self, id: &str, input: &ExecutionInput) {
        if input.effective_mode != Mode::Sandbox {
            return;
        }
        let session_owned = input.session.is_some();
        if let Some(placement) = &input.placement
            && let Err(e) = self.sandbox.abandon(id, placement, session_owned).await
        {
            tracing::warn!("could not stop what the lost worker left in its container: {e}");
        }
    }

    /// Runs the command of `input` to its end and records the result.
    async fn run_exec(
        &self,
        ctx: &ActivityContext,
        mut input: ExecutionInput,
    ) -> Result<ExecutionResult, ActivityError> {
        let attempt = ctx.info().attempt;
        let id = input.id.clone();
        telemetry::annotate([
            KeyValue::new(telemetry::EXECUTION_ID, id.clone()),
            KeyValue::new("stigmer.execution.mode", input.effective_mode.to_string()),
            KeyValue::new("stigmer.exec.attempt", i64::from(attempt)),
        ]);
        self.record_run_id(ctx, &id).await;
        // Steps that take their own container (the warm and ready-host routes) do so before
        // claiming the execution, so that finding none leaves it queued for the long way.
        if input.placement.is_none()
            && let Some(spec) = &input.sandbox
        {
            match &input.route {
                Route::Warm { .. } => match self.sandbox.claim_warm(&id, spec, attempt > 1).await {
                    Ok(Some(placement)) => {
                        self.announce_container(&id, &placement, &spec.image).await;
                        input.placement = Some(placement);
                    }
                    Ok(None) => return self.no_idle_container(&id).await,
                    Err(e) => return Err(backend_error(e)),
                },
                Route::ReadyHost { image, .. } => {
                    // A retried attempt finds the lease it holds; one whose command already
                    // started goes on to the claim below, which says how it ended.
                    let request = AcquireRequest {
                        execution_id: id.clone(),
                        spec: spec.clone(),
                        image: image.clone(),
                    };
                    let placement =
                        with_heartbeats(ctx, self.sandbox.acquire_unless_started(&request))
                            .await
                            .map_err(backend_error)?;
                    if let Some(placement) = placement {
                        annotate_placement(&placement, image);
                        self.announce_container(&id, &placement, &image.image).await;
                        input.placement = Some(placement);
                    }
                }
                Route::Direct | Route::Acquire => {}
            }
        }
        // Temporal may time out an attempt whose heartbeats came late while its command still
        // runs here, and send the retry to this same process: the retry waits for the earlier
        // attempt to kill its command and record how it ended, and reports that.
        if let Some(earlier) = self.running.attempt_of(&id) {
            with_heartbeats(ctx, earlier.cancelled()).await;
        }
        match self
            .store
            .mark_started(&id, &self.worker_id, attempt)
            .await
            .map_err(retryable)?
        {
            StartClaim::Claimed => self.record_start(&id).await,
            StartClaim::AlreadyFinished(result) => {
                // A worker lost between recording the result and appending its audit record
                // leaves the append to this retry.
                metrics::count_appended(audit::append(&self.store, &id).await.map_err(retryable)?);
                return Ok(result);
            }
            StartClaim::Missing => {
                return Err(non_retryable(format!(
                    "execution {id} is not in the store {}; was it started against another store?",
                    self.store.display_url()
                )));
            }
            StartClaim::AlreadyStarted { worker_id } if !input.retry_exec => {
                // A worker lost between the claim and its start record leaves it to this retry.
                self.record_start(&id).await;
                self.kill_leftover(&id).await;
                self.abandon_container(&id, &input).await;
                let who = worker_id.unwrap_or_else(|| "unknown".into());
                let lost = ExecutionResult::ended(
                    &id,
                    Status::Failed,
                    &format!(
                        "the worker running the command ({who}) was lost while it ran; \
                         the command was not re-run (use --retry-exec to allow that)"
                    ),
                );
                return self
                    .store
                    .finish(&lost, None)
                    .await
                    .map(metrics::count_finished)
                    .map_err(retryable);
            }
            StartClaim::AlreadyStarted { .. } => {
                self.record_start(&id).await;
                self.kill_leftover(&id).await;
                self.abandon_container(&id, &input).await;
                self.store
                    .mark_restarted(&id, &self.worker_id, attempt)
                    .await
                    .map_err(retryable)?;
            }
        }

        let _running = self.running.enter(&id);
        // The values travel in the (encrypted) input; executions started before kept them in
        // the store.
        let env = if input.env.is_empty() {
            self.store.execution_env(&id).await.map_err(retryable)?
        } else {
            input.env.0.clone()
        };
        let mut sink = OutputSink::new(
            self.store.clone(),
            self.hub.clone(),
            &id,
            self.output_retain_bytes,
        );
        if attempt > 1 {
            // A deliberate re-run appends after what the lost attempt stored.
            if let Ok(chunks) = self.store.read_output(&id, -1, i64::MAX).await
                && let Some(last) = chunks.last()
            {
                sink.resume_after(last.seq);
            }
        }

        let stop = Stopper::new();
        // What `temporal workflow describe` shows of the pending `exec` (its heartbeat details).
        let progress = stigmer_workflows::Progress {
            phase: "running".into(),
            execution_id: Some(id.clone()),
            mode: Some(input.effective_mode.to_string()),
            container_id: input.placement.as_ref().map(|p| p.container_id.clone()),
            since_ms: u64::try_from(crate::store::now_ms()).ok(),
        };
        let heartbeats = spawn_heartbeats(ctx.clone(), stop.clone(), progress);
        let timer = input.timeout_secs.map(|secs| {
            let stop = stop.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(secs)).await;
                stop.stop(StopReason::TimedOut);
            })
        });

        let mut release_early = false;
        let (stdin, stdin_tally, stdin_refused) = match self.stdin_of(&id, &input) {
            Ok(Some(source)) => {
                let (feed, tally) = StdinFeed::new(source);
                (Some(feed), Some(tally), None)
            }
            Ok(None) => (None, None, None),
            Err(why) => (None, None, Some(why)),
        };
        let ended = match (stdin_refused, input.effective_mode) {
            (Some(reason), _) => Ok(Ended::Failed {
                exit_code: None,
                reason,
            }),
            (None, Mode::Local) => 'local: {
                let (argv, state) = match &input.session {
                    Some(session) => match self.local_session_state(session, &id).await {
                        Ok(state) => {
                            let file = state.state_file().display().to_string();
                            (session::wrap(&input.command, &file), Some(state))
                        }
                        Err(reason) => {
                            break 'local Ok(Ended::Failed {
                                exit_code: None,
                                reason,
                            });
                        }
                    },
                    None => (input.command.argv(), None),
                };
                let store = self.store.clone();
                let exec_id = id.clone();
                let on_spawn = move |pgid: i32| {
                    crate::chaos::point("mid-exec");
                    if let Some(started) = process::start_time(pgid) {
                        tokio::spawn(async move {
                            let _ = store
                                .record_process(&exec_id, i64::from(pgid), started)
                                .await;
                        });
                    }
                };
                let ended = local::run(
                    &argv,
                    &input.workdir,
                    &env,
                    &mut sink,
                    &stop,
                    stdin,
                    on_spawn,
                )
                .await
                .map_err(|e| e.to_string());
                if let (Some(session), Some(state)) = (&input.session, state) {
                    self.keep_local_session_state(session, state).await;
                }
                ended
            }
            (None, Mode::Sandbox | Mode::Cloud) => match (&input.placement, &input.sandbox) {
                (Some(placement), Some(spec)) => with_backend!(self, spec.backend, |backend| {
                    let outcome = ContainerBackend::exec(
                        backend,
                        &id,
                        placement,
                        spec,
                        match (&input.session, spec.backend) {
                            (Some(_), stigmer_workflows::Backend::Daytona) => {
                                session::wrap(&input.command, session::CLOUD_STATE_FILE)
                            }
                            (Some(_), _) => {
                                session::wrap(&input.command, session::SANDBOX_STATE_FILE)
                            }
                            (None, _) => input.command.argv(),
                        },
                        &env,
                        stdin,
                        &mut sink,
                        &stop,
                    )
                    .await;
                    let clean = matches!(&outcome, Ok((Ended::Exited(_), false)));
                    let ended = self.settle(backend, placement, outcome).await;
                    release_early = clean && spec.ttl_secs > 0 && ended.is_ok();
                    ended.map_err(|e| e.to_string())
                }),
                _ => Ok(Ended::Failed {
                    exit_code: None,
                    reason: "sandbox execution without a container placement".into(),
                }),
            },
        };
        heartbeats.abort();
        if let Some(timer) = timer {
            timer.abort();
        }

        let ended = match ended {
            Ok(Ended::Cancelled) => cancel_cause(ctx).await.ended(),
            Ok(ended) => ended,
            Err(e) => Ended::Failed {
                exit_code: None,
                reason: format!("could not record the command's output: {e}"),
            },
        };
        let totals = sink.finish().await.ok();
        let result = result_of(&id, &ended, input.timeout_secs);
        let stdin = stdin_tally.map(|tally| {
            let t = tally.totals();
            (t.bytes as i64, t.sha256)
        });
        let summary = totals.map(|t| store::OutputSummary {
            bytes: t.bytes as i64,
            dropped: t.dropped as i64,
            sha256: Some(t.sha256),
            stdin,
        });
        let recorded = self
            .store
            .finish(&result, summary.as_ref())
            .await
            .map(metrics::count_finished)
            .map_err(retryable)?;
        // Reusable now, the next command need not wait for the workflow. Only once the result
        // is recorded: a worker lost in between must not leave this execution open in the store
        // while its container already serves the next one.
        if let (true, Some(placement), Some(spec)) =
            (release_early, &input.placement, &input.sandbox)
        {
            let given_back = with_backend!(self, spec.backend, |backend| {
                ContainerBackend::release_clean(backend, &id, placement)
                    .await
                    .map_err(|e| e.to_string())
            });
            if let Err(e) = given_back {
                tracing::warn!("could not give container back early: {e}");
            }
        }
        annotate_result(&recorded);
        self.hub
            .publish(&id, HubEvent::Ended(recorded.clone()), &Default::default())
            .await;
        if ended == Ended::Cancelled {
            return Err(ActivityError::cancelled());
        }
        Ok(recorded)
    }
}

#[activities]
impl Activities {
    #[activity(definition = stigmer_workflows::activity_defs::Exec)]
    pub async fn exec(
        self: Arc<Self>,
        ctx: ActivityContext,
        input: ExecutionInput,
    ) -> Result<ExecutionResult, ActivityError> {
        own_execution(&ctx, &input.id)?;
        self.run_exec(&ctx, input).await
    }

    #[activity(definition = stigmer_workflows::activity_defs::EnsureImage)]
    pub async fn ensure_image(
        self: Arc<Self>,
        ctx: ActivityContext,
        spec: SandboxSpec,
    ) -> Result<ImageReady, ActivityError> {
        // Inputs from before the spec named its execution carry none: nothing to check there.
        if let Some(id) = &spec.execution_id {
            own_execution(&ctx, id)?;
        }
        let execution = spec.execution_id.clone();
        annotate_execution(execution.as_deref());
        telemetry::annotate([KeyValue::new("stigmer.sandbox.image", spec.image.clone())]);
        let hub = self.hub.clone();
        let heartbeat_ctx = ctx.clone();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        // Progress goes to the waiting client (its terminal) and the worker's log.
        let forward = tokio::spawn(async move {
            while let Some(line) = rx.recv().await {
                tracing::info!("{line}");
                if let Some(id) = &execution {
                    hub.publish(id, HubEvent::Notice(line), &Default::default())
                        .await;
                }
                let _ = ctx.record_heartbeat(()).await;
            }
        });
        let mut progress = move |line: String| {
            let _ = tx.send(line);
        };
        let ready = self.sandbox.ensure_image(&spec, &mut progress);
        let ready = with_heartbeats(&heartbeat_ctx, ready).await;
        drop(progress);
        let _ = forward.await;
        if let Ok(ready) = &ready {
            telemetry::annotate([
                KeyValue::new("stigmer.sandbox.image_id", ready.image_id.clone()),
                KeyValue::new("stigmer.sandbox.image_source", ready.how.clone()),
            ]);
        }
        ready.map_err(backend_error)
    }

    #[activity(definition = stigmer_workflows::activity_defs::AcquireContainer)]
    pub async fn acquire_container(
        self: Arc<Self>,
        ctx: ActivityContext,
        request: AcquireRequest,
    ) -> Result<Placement, ActivityError> {
        own_execution(&ctx, &request.execution_id)?;
        annotate_execution(Some(&request.execution_id));
        let placement = with_backend!(self, request.spec.backend, |backend| {
            with_heartbeats(&ctx, ContainerBackend::acquire(backend, &request))
                .await
                .map_err(backend_error)?
        });
        annotate_placement(&placement, &request.image);
        self.announce_container(&request.execution_id, &placement, &request.image.image)
            .await;
        Ok(placement)
    }

    #[activity(definition = stigmer_workflows::activity_defs::ReleaseContainer)]
    pub async fn release_container(
        self: Arc<Self>,
        ctx: ActivityContext,
        request: ReleaseRequest,
    ) -> Result<String, ActivityError> {
        own_execution(&ctx, &request.execution_id)?;
        annotate_execution(Some(&request.execution_id));
        let held = match request.placement.clone() {
            Some(placement) => Some(placement),
            // After a step that took its own container: whatever the execution still holds here.
            None => with_backend!(self, request.backend, |backend| {
                ContainerBackend::held_by(backend, &request.execution_id)
                    .await
                    .map_err(backend_error)?
            }),
        };
        let Some(placement) = held else {
            return Ok("nothing held".into());
        };
        telemetry::annotate([
            KeyValue::new(
                "stigmer.sandbox.container_id",
                placement.container_id.clone(),
            ),
            KeyValue::new("stigmer.sandbox.tainted", request.taint),
        ]);
        let outcome = with_backend!(self, request.backend, |backend| {
            let release = ContainerBackend::release(
                backend,
                &request.execution_id,
                &placement,
                request.taint,
                request.ttl_secs,
                request.cleanup,
            );
            with_heartbeats(&ctx, release).await.map_err(backend_error)
        });
        if let Ok(outcome) = &outcome {
            telemetry::annotate([KeyValue::new("stigmer.sandbox.release", outcome.clone())]);
        }
        outcome
    }

    #[activity(definition = stigmer_workflows::activity_defs::Admit)]
    pub async fn admit(
        self: Arc<Self>,
        ctx: ActivityContext,
        request: AdmitRequest,
    ) -> Result<ExecutionInput, ActivityError> {
        if ctx.info().workflow_id.as_deref() != Some(request.workflow_id.as_str()) {
            return Err(refusal(
                "the start names another workflow than its own".into(),
            ));
        }
        let worker_dir = std::env::current_dir()
            .map(|d| d.display().to_string())
            .unwrap_or_else(|_| "/".into());
        let planned = admit::plan(
            &self.admission,
            &request.workflow_id,
            &request.input,
            &worker_dir,
        )
        .map_err(|admit::Refusal(why)| refusal(why))?;
        annotate_execution(Some(&planned.id));
        if let Err(admit::Refusal(why)) = admit::record(&self.store, &request, &planned)
            .await
            .map_err(retryable)?
        {
            return Err(refusal(why));
        }
        let route = route::route_for(
            &self.store,
            Some(&self.sandbox),
            &ctx.info().task_queue,
            planned.effective_mode,
            planned.sandbox.as_ref(),
        )
        .await;
        Ok(ExecutionInput { route, ..planned })
    }

    #[activity(definition = stigmer_workflows::activity_defs::CollectOutput)]
    pub async fn collect_output(
        self: Arc<Self>,
        ctx: ActivityContext,
        request: CollectRequest,
    ) -> Result<Report, ActivityError> {
        own_execution(&ctx, &request.execution_id)?;
        admit::report(&self.store, &request.execution_id, request.limit)
            .await
            .map_err(retryable)
    }

    #[activity(definition = stigmer_workflows::activity_defs::Finish)]
    pub async fn finish(
        self: Arc<Self>,
        ctx: ActivityContext,
        result: ExecutionResult,
    ) -> Result<ExecutionResult, ActivityError> {
        own_execution(&ctx, &result.id)?;
        annotate_execution(Some(&result.id));
        self.record_run_id(&ctx, &result.id).await;
        // `exec` gave up (its worker lost, say): what that worker left running on this host
        // must not outlive the execution.
        if result.status != Status::Succeeded {
            self.kill_leftover(&result.id).await;
        }
        let recorded = self
            .store
            .finish(&result, None)
            .await
            .map(metrics::count_finished)
            .map_err(retryable)?;
        annotate_result(&recorded);
        self.hub
            .publish(
                &result.id,
                HubEvent::Ended(recorded.clone()),
                &Default::default(),
            )
            .await;
        Ok(recorded)
    }
}

/// Names the execution on the running activity's span.
fn annotate_execution(id: Option<&str>) {
    if let Some(id) = id {
        telemetry::annotate([KeyValue::new(telemetry::EXECUTION_ID, id.to_string())]);
    }
}

/// Puts the recorded outcome of the execution on the running activity's span.
fn annotate_result(result: &ExecutionResult) {
    telemetry::annotate(
        [
            Some(KeyValue::new(
                "stigmer.execution.status",
                result.status.to_string(),
            )),
            result
                .exit_code
                .map(|code| KeyValue::new("stigmer.execution.exit_code", i64::from(code))),
        ]
        .into_iter()
        .flatten(),
    );
}

/// The container a step placed its execution in, and the image, on the step's span.
fn annotate_placement(placement: &Placement, image: &ImageReady) {
    telemetry::annotate([
        KeyValue::new(
            "stigmer.sandbox.container_id",
            placement.container_id.clone(),
        ),
        KeyValue::new("stigmer.sandbox.lease_id", placement.lease_id.clone()),
        KeyValue::new("stigmer.sandbox.reused", placement.reused),
        KeyValue::new("stigmer.sandbox.image", image.image.clone()),
        KeyValue::new("stigmer.sandbox.image_source", image.how.clone()),
    ]);
}

/// Runs a step while heartbeating every second, so a worker that dies mid-step is noticed by
/// the step's heartbeat timeout instead of its start-to-close timeout.
async fn with_heartbeats<T>(ctx: &ActivityContext, step: impl Future<Output = T>) -> T {
    tokio::pin!(step);
    let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
    loop {
        tokio::select! {
            out = &mut step => return out,
            _ = tick.tick() => {
                let _ = ctx.record_heartbeat(()).await;
            }
        }
    }
}

/// Why Temporal cancelled an attempt. Its SDK gives the activity no reason, and only a cancel
/// the workflow asked for is the execution's end: an attempt the server timed out (a heartbeat
/// late on an overloaded host) or a worker shutting down is neither the user's wish nor
/// something to record as one.
#[derive(Debug, PartialEq, Eq)]
enum CancelCause {
    /// The workflow asked (a cancel request, or the workflow ended).
    Requested,
    /// The server gave up on this attempt: its heartbeats stopped arriving.
    AttemptTimedOut,
    /// The attempt is still the current one: its worker stopped it (shutdown, pause, reset).
    WorkerStopped,
    /// Temporal could not be asked.
    Unknown,
}

impl CancelCause {
    fn ended(self) -> Ended {
        let reason = match self {
            Self::Requested | Self::Unknown => return Ended::Cancelled,
            Self::AttemptTimedOut => format!(
                "Temporal timed this attempt out while the command ran (no heartbeat reached it \
                 within {} s: is the worker's host overloaded?); the command and its process \
                 group were killed and were not re-run",
                stigmer_workflows::EXEC_HEARTBEAT_TIMEOUT.as_secs()
            ),
            Self::WorkerStopped => "the worker stopped this attempt while the command ran \
                (shut down, or the activity was paused or reset); the command and its process \
                group were killed and were not re-run"
                .to_string(),
        };
        Ended::Failed {
            exit_code: None,
            reason,
        }
    }
}

/// Asks Temporal why this attempt was cancelled: the workflow's pending `exec` says whether a
/// cancel was requested, or whether the server has moved on to another attempt.
async fn cancel_cause(ctx: &ActivityContext) -> CancelCause {
    use temporalio_common::protos::temporal::api::enums::v1::{
        PendingActivityState, WorkflowExecutionStatus,
    };
    let Some(handle) = ctx.workflow_handle::<stigmer_workflows::AgentExecution>() else {
        return CancelCause::Unknown;
    };
    let described = tokio::time::timeout(
        Duration::from_secs(5),
        handle.describe(temporalio_client::WorkflowDescribeOptions::default()),
    )
    .await;
    let raw = match described {
        Ok(Ok(d)) => d.raw_description,
        Ok(Err(e)) => {
            tracing::warn!("could not ask Temporal why the command was cancelled: {e}");
            return CancelCause::Unknown;
        }
        Err(_) => {
            tracing::warn!("Temporal did not say in 5 s why the command was cancelled");
            return CancelCause::Unknown;
        }
    };
    let running = raw
        .workflow_execution_info
        .as_ref()
        .is_some_and(|w| w.status == WorkflowExecutionStatus::Running as i32);
    if !running {
        return CancelCause::Requested;
    }
    let info = ctx.info();
    let cause = match raw
        .pending_activities
        .iter()
        .find(|a| a.activity_id == info.activity_id)
    {
        Some(a) if a.state == PendingActivityState::CancelRequested as i32 => {
            CancelCause::Requested
        }
        Some(a)
            if u32::try_from(a.attempt).ok() == Some(info.attempt)
                && a.state == PendingActivityState::Started as i32 =>
        {
            CancelCause::WorkerStopped
        }
        _ => CancelCause::AttemptTimedOut,
    };
    if cause != CancelCause::Requested {
        tracing::warn!(
            "exec attempt {} of workflow {:?} was cancelled without a request ({cause:?}); \
             recording the execution failed, not cancelled",
            info.attempt,
            info.workflow_id
        );
    }
    cause
}

/// Heartbeats `progress` until aborted, and turns Temporal's cancellation into a stop.
fn spawn_heartbeats(
    ctx: ActivityContext,
    stop: Stopper,
    progress: stigmer_workflows::Progress,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
        loop {
            tokio::select! {
                () = ctx.cancelled() => {
                    stop.stop(StopReason::Cancelled);
                    return;
                }
                _ = tick.tick() => {
                    let _ = ctx.record_heartbeat(progress.clone()).await;
                }
            }
        }
    })
}

impl Activities {
    /// The command's stdin, as its input says it comes: streamed by the daemon of this process
    /// (taken from the hub, once), or carried in the input. An error says why it cannot be
    /// given, and nothing runs.
    fn stdin_of(&self, id: &str, input: &ExecutionInput) -> Result<Option<StdinSource>, String> {
        use base64::Engine as _;
        match &input.stdin {
            None => Ok(None),
            Some(StdinInput::Streamed) => self.hub.take_stdin(id).map(Some).ok_or_else(|| {
                "the command's standard input was streamed to the daemon that started it, and \
                 this attempt cannot have it (another worker, or an earlier attempt took it); \
                 nothing ran: run the command again"
                    .to_string()
            }),
            Some(StdinInput::Base64(text)) => base64::engine::general_purpose::STANDARD
                .decode(text)
                .map(|bytes| Some(StdinSource::from_bytes(bytes)))
                .map_err(|_| {
                    "the standard input in the workflow input is not base64; nothing ran".into()
                }),
        }
    }
}

fn result_of(id: &str, ended: &Ended, timeout_secs: Option<u64>) -> ExecutionResult {
    match ended {
        Ended::Exited(0) => ExecutionResult {
            id: id.to_string(),
            status: Status::Succeeded,
            exit_code: Some(0),
            error: None,
            report: None,
        },
        Ended::Exited(code) => ExecutionResult {
            id: id.to_string(),
            status: Status::Failed,
            exit_code: Some(*code),
            error: None,
            report: None,
        },
        Ended::TimedOut => ExecutionResult::ended(
            id,
            Status::TimedOut,
            &format!(
                "timed out after {} s; the command and its process group were killed",
                timeout_secs.unwrap_or(0)
            ),
        ),
        Ended::Cancelled => ExecutionResult::ended(
            id,
            Status::Cancelled,
            "cancelled by request; the command and its process group were killed",
        ),
        Ended::Failed { exit_code, reason } => ExecutionResult {
            id: id.to_string(),
            status: Status::Failed,
            exit_code: *exit_code,
            error: Some(reason.clone()),
            report: None,
        },
    }
}

/// A backend's failure as the activity reports it: retried when the backend says another
/// attempt may succeed, else the step's final failure.
fn backend_error<E: BackendError>(e: E) -> ActivityError {
    if e.is_retryable() {
        ActivityError::from(anyhow::Error::from(e))
    } else {
        non_retryable(e.to_string())
    }
}

/// Every step acts only on its own workflow's execution: an input naming another execution (a
/// workflow started to take over a queued or running one) fails at once and touches nothing.
fn own_execution(ctx: &ActivityContext, id: &str) -> Result<(), ActivityError> {
    let workflow = ctx.info().workflow_id.as_deref();
    // stigmer's own starts name their workflow after the execution; a public start's execution
    // id is derived from its workflow id.
    if workflow == Some(stigmer_workflows::workflow_id(id).as_str())
        || workflow.is_some_and(|w| admit::execution_id_for(w) == id)
    {
        return Ok(());
    }
    Err(ActivityError::application(
        ApplicationFailure::builder(anyhow::anyhow!(
            "refused: the step's execution is not its workflow's own ({}); a workflow acts \
                 only on the execution it was started for",
            workflow.unwrap_or("no workflow")
        ))
        .type_name(stigmer_workflows::INVALID_INPUT.to_string())
        .non_retryable(true)
        .build(),
    ))
}

/// A start the worker will not run: non-retryable, with what was wrong and what is allowed.
fn refusal(why: String) -> ActivityError {
    ActivityError::application(
        ApplicationFailure::builder(anyhow::anyhow!("refused: {why}; nothing ran"))
            .type_name(stigmer_workflows::INVALID_INPUT.to_string())
            .non_retryable(true)
            .build(),
    )
}

fn retryable(e: StoreError) -> ActivityError {
    ActivityError::from(anyhow::Error::from(e))
}

fn non_retryable(message: String) -> ActivityError {
    ActivityError::application(ApplicationFailure::non_retryable(message))
}
