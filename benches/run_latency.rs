//! Benchmark (not a test): end-to-end latency of `stigmer run true` against a warm daemon,
//! client process start included, beside a raw `sh -c true` spawn measured in the same run;
//! what a foreign start costs (a Temporal client in its own process starting the public input
//! and waiting for its result: no eager start, `admit` and `collect_output` added) against the
//! same daemon; and the daemon's idle memory. Run with `cargo bench --bench run_latency` (or
//! `make bench`).
//!
//! The daemon is private to the run (its own data dir and Temporal ports) and stopped at the end.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::{RUNS, WARMUP, measure, percentile, report, stigmer};

fn rss_kb(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn main() {
    let bin = stigmer();
    let data = tempfile::tempdir().expect("temp dir");
    let port = 30000 + (std::process::id() % 2000) as u16;
    let cmd = |args: &[&str]| {
        let mut c = Command::new(&bin);
        c.args(args)
            .env("STIGMER_DATA_DIR", data.path())
            .env("STIGMER_TEMPORAL_PORT", port.to_string())
            .env("STIGMER_TEMPORAL_UI_PORT", (port + 1000).to_string())
            .env_remove("TEMPORAL_ADDRESS")
            .env_remove("STIGMER_DATABASE_URL")
            .env_remove("STIGMER_EXECUTION_MODE")
            .stdin(Stdio::null());
        c
    };
    let started = cmd(&["server", "start", "--detach"])
        .status()
        .expect("start daemon");
    assert!(started.success(), "the daemon did not start");

    println!("stigmer run latency (warm daemon, {RUNS} runs after {WARMUP} warm-up runs)");
    let baseline = measure(|| {
        let ok = Command::new("sh")
            .args(["-c", "true"])
            .status()
            .expect("sh");
        assert!(ok.success());
    });
    report("baseline: sh -c true", &baseline);
    let run = measure(|| {
        let out = cmd(&["run", "true"])
            .stdout(Stdio::null())
            .status()
            .expect("stigmer run");
        assert!(out.success(), "stigmer run true failed");
    });
    report("stigmer run true (local mode)", &run);
    let overhead = percentile(&run, 0.5).saturating_sub(percentile(&baseline, 0.5));
    println!(
        "{:<38} {:>8.2} ms over the baseline",
        "median overhead",
        overhead.as_secs_f64() * 1e3
    );

    let foreign = foreign_starts(data.path(), port);
    report("foreign start, public input (true)", &foreign);
    println!(
        "{:<38} {:>8.2} ms over stigmer run (its median)",
        "foreign start overhead",
        percentile(&foreign, 0.5)
            .saturating_sub(percentile(&run, 0.5))
            .as_secs_f64()
            * 1e3
    );

    std::thread::sleep(Duration::from_secs(2));
    let pid = std::fs::read_to_string(data.path().join("daemon.pid")).unwrap_or_default();
    let pid = pid.trim();
    println!(
        "{:<38} {:>8.1} MB (target ≤ 60 MB); managed Temporal server not included",
        "daemon idle RSS",
        rss_kb(pid) as f64 / 1024.0
    );
    let _ = cmd(&["server", "stop"]).status();
}

/// Starts `true` through the public input from a Temporal client of the bench's own (the
/// worker's codec key, as any SDK with the sample codec would hold), each under a new workflow
/// id, and times start to result.
fn foreign_starts(data: &std::path::Path, port: u16) -> Vec<Duration> {
    use temporalio_client::{
        Client, ClientOptions, Connection, ConnectionOptions, WorkflowGetResultOptions,
        WorkflowStartOptions,
    };
    use temporalio_common::data_converters::RawValue;
    use temporalio_common::protos::temporal::api::common::v1::Payload;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        let url = url::Url::parse(&format!("http://127.0.0.1:{port}")).expect("url");
        let connection = Connection::connect(ConnectionOptions::new(url).build())
            .await
            .expect("connect to Temporal");
        let keys = stigmer::codec::Keyring::load_or_create(&data.join("codec.key"))
            .expect("the codec key");
        let client = Client::new(
            connection,
            ClientOptions::new("default")
                .data_converter(stigmer::codec::Codec::new(keys).data_converter())
                .build(),
        )
        .expect("Temporal client");
        let mut samples = Vec::new();
        for n in 0..WARMUP + RUNS {
            let wf_id = format!("bench-{}-{n}", std::process::id());
            let input = serde_json::json!({"version": 1, "argv": ["true"], "workflow_id": wf_id});
            let raw = RawValue::new(vec![Payload {
                metadata: [("encoding".to_string(), b"json/plain".to_vec())].into(),
                data: serde_json::to_vec(&input).expect("JSON"),
                ..Default::default()
            }]);
            let t = Instant::now();
            let handle = client
                .start_workflow(
                    stigmer_workflows::AgentExecution::run,
                    raw,
                    WorkflowStartOptions::new("stigmer".to_string(), wf_id.clone()).build(),
                )
                .await
                .expect("start");
            let result = handle
                .get_result(WorkflowGetResultOptions::default())
                .await
                .expect("result");
            if n >= WARMUP {
                samples.push(t.elapsed());
            }
            assert_eq!(result.exit_code, Some(0), "{result:?}");
        }
        samples.sort();
        samples
    })
}
