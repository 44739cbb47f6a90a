//! Recorded histories of every path the `AgentExecution` workflow takes (`histories/`, made by
//! `tests/record_histories.rs` on the code that shipped them) against today's code:
//!
//! - replayed with the SDK's `WorkflowReplayer`: today's workflow must schedule the same steps
//!   from the same inputs and results, or an execution in flight across an upgrade fails its
//!   workflow task forever (a nondeterminism error);
//! - every recorded payload (the workflow's input and result, each activity's input and result,
//!   the local `finish` step) read into today's types: replay compares only activity types and
//!   ids, and an old `ReleaseRequest` read wrongly by a new worker would take the wrong path.
//!
//! A change that fails here either keeps the old shape readable (serde defaults and aliases) or
//! is gated with Temporal's patching API (`ctx.patched(..)`); docs/durability.md says when.

use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use stigmer_workflows::{
    AcquireRequest, AdmitRequest, AgentExecution, CollectRequest, ExecutionInput, ExecutionResult,
    ImageReady, Placement, PublicInput, ReleaseRequest, Report, SandboxSpec,
};
use temporalio_client::WorkflowHistory;
use temporalio_common::protos::temporal::api::common::v1::Payload;
use temporalio_common::protos::temporal::api::history::v1::{History, history_event::Attributes};
use temporalio_sdk::workflow_replayer::{WorkflowReplayer, WorkflowReplayerOptions};

fn histories() -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("histories");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("dir entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let name = path
                .file_stem()
                .expect("name")
                .to_string_lossy()
                .into_owned();
            let bytes = std::fs::read(&path).expect("read history");
            (name, bytes)
        })
        .collect()
}

/// The paths the recorded histories must cover (one file each, at least).
const PATHS: &[&str] = &[
    "local",
    "local-timeout",
    "local-cancel",
    "local-worker-lost",
    "local-retry-exec",
    "sandbox-ready-host",
    "sandbox-warm",
    "sandbox-warm-fallback",
    "sandbox-long",
    "sandbox-requirements",
    "sandbox-timeout",
    "sandbox-cancel",
    "cloud",
    // Under the encrypted-input patch: the CLI's input, and the public input of any client.
    "encrypted-local",
    "encrypted-sandbox-ready-host",
    "public-local",
    "public-auto",
    "public-sandbox",
    "public-cancel",
    // Refused starts: nothing runs, the workflow fails with `InvalidInput`.
    "public-malformed",
    "public-copied",
    "public-retry-policy",
    "public-plaintext",
];

/// Whether the workflow failed as refused input (its input may be anything a client sent).
fn refused(history: &History) -> bool {
    history.events.iter().any(|event| {
        matches!(&event.attributes,
            Some(Attributes::WorkflowExecutionFailedEventAttributes(a))
                if format!("{:?}", a.failure).contains("InvalidInput"))
    })
}

#[tokio::test]
async fn every_recorded_history_replays_on_todays_workflow() {
    let recorded = histories();
    let names: Vec<&str> = recorded.iter().map(|(n, _)| n.as_str()).collect();
    for path in PATHS {
        assert!(
            names.iter().any(|n| n.starts_with(path)),
            "no recorded history for the {path} path (have {names:?})"
        );
    }
    let replayer = WorkflowReplayer::new(
        WorkflowReplayerOptions::new()
            .register_workflow::<AgentExecution>()
            .expect("register the workflow")
            .build(),
    )
    .expect("replayer");
    let mut failures = Vec::new();
    for (name, bytes) in &recorded {
        let history = WorkflowHistory::from_json(bytes)
            .unwrap_or_else(|e| panic!("{name}: not a history in the SDK's JSON: {e}"));
        if let Err(e) = replayer.replay_workflow(history).await {
            failures.push(format!("{name}: {e}"));
        }
    }
    assert!(
        failures.is_empty(),
        "histories that no longer replay:\n{}",
        failures.join("\n")
    );
}

#[test]
fn every_recorded_payload_reads_into_todays_types() {
    let mut failures = Vec::new();
    let mut read = 0;
    for (name, bytes) in histories() {
        let history: History = serde_json::from_slice(&bytes).expect("history JSON");
        let refused = refused(&history);
        let mut scheduled: HashMap<i64, String> = HashMap::new();
        for event in &history.events {
            let mut check = |what: &str, outcome: Result<(), String>| {
                read += 1;
                if let Err(e) = outcome {
                    failures.push(format!("{name} event {} ({what}): {e}", event.event_id));
                }
            };
            match &event.attributes {
                Some(Attributes::WorkflowExecutionStartedEventAttributes(a)) if !refused => check(
                    "workflow input",
                    first(a.input.as_ref().map(|p| &p.payloads)).and_then(|p| {
                        decode::<ExecutionInput>(p).or_else(|_| decode::<PublicInput>(p))
                    }),
                ),
                Some(Attributes::WorkflowExecutionCompletedEventAttributes(a)) => check(
                    "workflow result",
                    first(a.result.as_ref().map(|p| &p.payloads))
                        .and_then(decode::<ExecutionResult>),
                ),
                Some(Attributes::ActivityTaskScheduledEventAttributes(a)) => {
                    let kind = a
                        .activity_type
                        .as_ref()
                        .map(|t| t.name.clone())
                        .unwrap_or_default();
                    scheduled.insert(event.event_id, kind.clone());
                    let payload = first(a.input.as_ref().map(|p| &p.payloads));
                    check(
                        &format!("{kind} input"),
                        payload.and_then(|p| input_of(&kind, p)),
                    );
                }
                Some(Attributes::ActivityTaskCompletedEventAttributes(a)) => {
                    let kind = scheduled
                        .get(&a.scheduled_event_id)
                        .cloned()
                        .unwrap_or_default();
                    let payload = first(a.result.as_ref().map(|p| &p.payloads));
                    check(
                        &format!("{kind} result"),
                        payload.and_then(|p| result_of(&kind, p)),
                    );
                }
                Some(Attributes::MarkerRecordedEventAttributes(a)) => {
                    // A local activity: its type is in the marker's `data`, its result in
                    // `result`.
                    if let (Some(data), Some(result)) =
                        (a.details.get("data"), a.details.get("result"))
                    {
                        let kind = first(Some(&data.payloads))
                            .ok()
                            .and_then(|p| serde_json::from_slice::<serde_json::Value>(&p.data).ok())
                            .and_then(|v| v["activity_type"].as_str().map(String::from))
                            .unwrap_or_default();
                        check(
                            &format!("{kind} result"),
                            first(Some(&result.payloads)).and_then(|p| result_of(&kind, p)),
                        );
                    }
                }
                _ => {}
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(read > PATHS.len() * 3, "only {read} payloads were read");
}

fn first(payloads: Option<&Vec<Payload>>) -> Result<&Payload, String> {
    payloads
        .and_then(|p| p.first())
        .ok_or_else(|| "no payload".to_string())
}

fn decode<T: DeserializeOwned>(payload: &Payload) -> Result<(), String> {
    serde_json::from_slice::<T>(&payload.data)
        .map(drop)
        .map_err(|e| format!("{e}: {}", String::from_utf8_lossy(&payload.data)))
}

fn input_of(kind: &str, payload: &Payload) -> Result<(), String> {
    match kind {
        "exec" => decode::<ExecutionInput>(payload),
        "ensure_image" => decode::<SandboxSpec>(payload),
        "acquire_container" => decode::<AcquireRequest>(payload),
        "release_container" => decode::<ReleaseRequest>(payload),
        "finish" => decode::<ExecutionResult>(payload),
        "admit" => decode::<AdmitRequest>(payload),
        "collect_output" => decode::<CollectRequest>(payload),
        other => Err(format!(
            "an activity today's workflow does not know: {other:?}"
        )),
    }
}

fn result_of(kind: &str, payload: &Payload) -> Result<(), String> {
    match kind {
        "exec" | "finish" => decode::<ExecutionResult>(payload),
        "ensure_image" => decode::<ImageReady>(payload),
        "acquire_container" => decode::<Placement>(payload),
        "release_container" => decode::<String>(payload),
        "admit" => decode::<ExecutionInput>(payload),
        "collect_output" => decode::<Report>(payload),
        other => Err(format!(
            "an activity today's workflow does not know: {other:?}"
        )),
    }
}
