//! Benchmark (not a test): what the exec wrapper and the post-command check cost. Runs `true`
//! in one warm sandbox container three ways, in the same run:
//!
//! - a bare Engine API exec (create, start attached, inspect) — the floor;
//! - [`Engine::exec`] — wrapper (pid file, counters, process group) plus the check exec;
//! - the same with `skip_check_on_success` — the wrapper alone;
//! - container create + start, for scale.
//!
//! Run with `cargo bench -p stigmer-docker --bench exec_latency`. Uses `STIGMER_TEST_IMAGE`
//! (default `stigmer-base:bookworm`) and removes its container at the end.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, StartExecResults};
use futures::StreamExt;
use stigmer_docker::{CancellationToken, ContainerSpec, Engine, ExecRequest, LABEL_STORE};

const RUNS: usize = 30;
const WARMUP: usize = 3;

fn report(name: &str, mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    let pick = |p: f64| samples[((samples.len() as f64 - 1.0) * p).round() as usize];
    println!(
        "{name:<44} median {:>7.2} ms   p95 {:>7.2} ms   min {:>7.2} ms   (n={})",
        pick(0.5).as_secs_f64() * 1e3,
        pick(0.95).as_secs_f64() * 1e3,
        samples[0].as_secs_f64() * 1e3,
        samples.len()
    );
    pick(0.5)
}

async fn bare_exec(engine: &Engine, id: &str) {
    let docker = engine.docker();
    let exec = docker
        .create_exec(
            id,
            CreateExecOptions::<String> {
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                cmd: Some(vec!["true".into()]),
                ..Default::default()
            },
        )
        .await
        .expect("create exec");
    if let StartExecResults::Attached { mut output, .. } =
        docker.start_exec(&exec.id, None).await.expect("start exec")
    {
        while let Some(item) = output.next().await {
            let _: LogOutput = item.expect("output");
        }
    }
    let info = docker.inspect_exec(&exec.id).await.expect("inspect");
    assert_eq!(info.exit_code, Some(0));
}

#[tokio::main]
async fn main() {
    let engine = match Engine::connect().await {
        Ok(e) => e,
        Err(e) => {
            eprintln!("skipped: {e}");
            return;
        }
    };
    let image =
        std::env::var("STIGMER_TEST_IMAGE").unwrap_or_else(|_| "stigmer-base:bookworm".into());
    let store = format!("st-bench-{}", std::process::id());
    let labels = BTreeMap::from([(LABEL_STORE.to_string(), store.clone())]);
    let spec = ContainerSpec::new(image.clone());

    let mut creates = Vec::new();
    for i in 0..5 {
        let t = Instant::now();
        let id = engine
            .create_container(
                &spec,
                &labels,
                &format!("stigmer-bench-{}-{i}", std::process::id()),
            )
            .await
            .expect("create");
        creates.push(t.elapsed());
        engine.remove_container(&id).await.expect("remove");
    }
    let id = engine
        .create_container(
            &spec,
            &labels,
            &format!("stigmer-bench-{}", std::process::id()),
        )
        .await
        .expect("create");

    let mut bare = Vec::new();
    let mut wrapped = Vec::new();
    let mut unchecked = Vec::new();
    for i in 0..WARMUP + RUNS {
        let t = Instant::now();
        bare_exec(&engine, &id).await;
        let b = t.elapsed();
        let req = ExecRequest::new(["true"], ExecRequest::pid_file_for(&format!("bench-{i}")));
        let t = Instant::now();
        let outcome = engine
            .exec(&id, req, &mut |_, _| {}, CancellationToken::new())
            .await
            .expect("exec");
        let w = t.elapsed();
        assert_eq!(outcome.exit_code, Some(0));
        let req = ExecRequest::new(["true"], ExecRequest::pid_file_for(&format!("bench-u{i}")))
            .skip_check_on_success();
        let t = Instant::now();
        let outcome = engine
            .exec(&id, req, &mut |_, _| {}, CancellationToken::new())
            .await
            .expect("exec");
        let u = t.elapsed();
        assert_eq!(outcome.exit_code, Some(0));
        assert!(!outcome.checked);
        if i >= WARMUP {
            bare.push(b);
            wrapped.push(w);
            unchecked.push(u);
        }
    }
    println!("image {image}");
    report("container create + start", creates);
    let floor = report("bare exec `true` (Engine API)", bare);
    let ours = report("Engine::exec `true` (wrapper + check)", wrapped);
    report("Engine::exec `true`, skip_check_on_success", unchecked);
    println!(
        "overhead of wrapper + check: {:.2} ms ({:.1}x the bare exec)",
        (ours.as_secs_f64() - floor.as_secs_f64()) * 1e3,
        ours.as_secs_f64() / floor.as_secs_f64()
    );
    for c in engine.list_managed(&store).await.unwrap_or_default() {
        let _ = engine.remove_container(&c.id).await;
    }
}
