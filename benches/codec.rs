//! Benchmark (not a test): what the payload codec adds to one local run. A local run's history
//! carries the workflow input and the `exec` step's input (each with the caller's whole
//! environment), `exec`'s result and the workflow's result; each is encoded once and decoded
//! once or twice (the starter encodes, the worker decodes, and so on). This measures those
//! payloads sealed and opened with the codec, beside the same payloads only serialized, in the
//! same run. Run with `cargo bench --bench codec`.

use std::time::{Duration, Instant};
use stigmer::codec::{Codec, Keyring};
use stigmer_workflows::{
    CommandSpec, EnvValues, ExecutionInput, ExecutionResult, Mode, RequestedMode, Route, Status,
};
use temporalio_common::protos::temporal::api::common::v1::Payload;

const RUNS: usize = 2000;

fn json(data: Vec<u8>) -> Payload {
    Payload {
        metadata: [("encoding".to_string(), b"json/plain".to_vec())].into(),
        data,
        ..Default::default()
    }
}

/// The payloads of one local run, as JSON, with an environment like a developer's shell.
fn run_payloads() -> Vec<Payload> {
    let env: Vec<(String, String)> = std::env::vars()
        .chain((0..40).map(|i| (format!("VAR_{i}"), "x".repeat(60))))
        .collect();
    let input = ExecutionInput {
        id: "aex-01kbench0000000000000000".into(),
        command: CommandSpec::Shell("python3 --version".into()),
        requested_mode: RequestedMode::Local,
        effective_mode: Mode::Local,
        reason: "requested".into(),
        workdir: "/home/dev/project".into(),
        timeout_secs: None,
        retry_exec: false,
        env_names: env.iter().map(|(k, _)| k.clone()).collect(),
        env: EnvValues(env),
        sandbox: None,
        placement: None,
        route: Route::Direct,
        stdin: None,
        session: None,
    };
    let result = ExecutionResult {
        id: input.id.clone(),
        status: Status::Succeeded,
        exit_code: Some(0),
        error: None,
        report: None,
    };
    let input = serde_json::to_vec(&input).expect("input");
    let result = serde_json::to_vec(&result).expect("result");
    vec![
        json(input.clone()),
        json(input),
        json(result.clone()),
        json(result),
    ]
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let codec = Codec::new(Keyring::load_or_create(&dir.path().join("codec.key")).expect("key"));
    let payloads = run_payloads();
    let bytes: usize = payloads.iter().map(|p| p.data.len()).sum();

    // Baseline: what a run does with its payloads without the codec (clone and parse the JSON).
    let plain = median(
        (0..RUNS)
            .map(|_| {
                let t = Instant::now();
                for p in payloads.clone() {
                    let _: serde_json::Value = serde_json::from_slice(&p.data).expect("json");
                }
                t.elapsed()
            })
            .collect(),
    );
    // With the codec: each payload sealed once and opened twice (the worker that decodes the
    // workflow's activation, and the one that decodes the step's input or result).
    let sealed = median(
        (0..RUNS)
            .map(|_| {
                let t = Instant::now();
                for p in payloads.clone() {
                    let s = codec.encrypt(p).expect("seal");
                    let _ = codec.decrypt(s.clone());
                    let o = codec.decrypt(s);
                    let _: serde_json::Value = serde_json::from_slice(&o.data).expect("json");
                }
                t.elapsed()
            })
            .collect(),
    );
    println!(
        "payloads of one local run: {} ({bytes} bytes of JSON)",
        payloads.len()
    );
    println!(
        "baseline (no codec):  median {:>8.1} µs per run",
        plain.as_secs_f64() * 1e6
    );
    println!(
        "with the codec:       median {:>8.1} µs per run",
        sealed.as_secs_f64() * 1e6
    );
    println!(
        "the codec adds:              {:>8.1} µs per run (target: under 1000 µs)",
        (sealed.saturating_sub(plain)).as_secs_f64() * 1e6
    );
}
