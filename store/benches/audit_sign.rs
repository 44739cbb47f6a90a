//! Benchmark (not a test): what signing the audit chain head costs per execution. Each
//! execution appends two records (its start and its end), and with a signing key each append
//! signs the head it makes. Executions alternate between a store handle without a key and one
//! with a key, on the same store in the same run, so both see the same database, chain length
//! and machine load; the medians are printed side by side, with the signing alone beside them.
//!
//! Run with `cargo bench -p stigmer-store --bench audit_sign`. The store is a fresh SQLite file
//! unless `STIGMER_BENCH_DATABASE_URL` names another (a Postgres database, say).

use std::time::{Duration, Instant};
use stigmer_store::{NewExecution, Store, audit};
use stigmer_workflows::{ExecutionResult, Status};

/// Executions timed per configuration (after the warm-up).
const ROUNDS: usize = 500;
const WARMUP: usize = 50;

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// One execution's life as the audit trail sees it: recorded, claimed (untimed), then its
/// start record and its end (`finish`, which appends the end record) timed together.
async fn one_execution(store: &Store, id: &str) -> Duration {
    store
        .insert_execution(&NewExecution {
            id: id.to_string(),
            workflow_id: format!("stigmer/agent-execution/{id}"),
            command: "true".into(),
            workdir: "/tmp".into(),
            requested_mode: "local".into(),
            effective_mode: "local".into(),
            reason: "bench".into(),
            ..Default::default()
        })
        .await
        .expect("insert execution");
    store
        .mark_started(id, "bench-worker", 1)
        .await
        .expect("mark started");
    let result = ExecutionResult {
        id: id.to_string(),
        status: Status::Succeeded,
        exit_code: Some(0),
        error: None,
        report: None,
    };
    let start = Instant::now();
    let started = audit::append_started(store, id)
        .await
        .expect("start record");
    let finished = store.finish(&result, None).await.expect("finish");
    let took = start.elapsed();
    assert!(
        started.is_some() && finished.appended.is_some(),
        "{id}: two records"
    );
    took
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = std::env::var("STIGMER_BENCH_DATABASE_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| format!("sqlite:{}", dir.path().join("bench.db").display()));
    let plain = Store::open(&url, true).await.expect("open the store");
    let signer = audit::Signer::from_seed(&[42u8; 32]);
    let signed = plain.clone().with_audit_signer(Some(signer.clone()));
    let run = ulid::Ulid::new().to_string().to_lowercase();

    let mut without = Vec::with_capacity(ROUNDS);
    let mut with = Vec::with_capacity(ROUNDS);
    for i in 0..(WARMUP + ROUNDS) * 2 {
        let id = format!("aex-bench-{run}-{i:05}");
        let (store, samples) = if i % 2 == 0 {
            (&plain, &mut without)
        } else {
            (&signed, &mut with)
        };
        let took = one_execution(store, &id).await;
        if i >= WARMUP * 2 {
            samples.push(took);
        }
    }

    // The signing alone: two heads per execution.
    let hash = audit::chain_hash(audit::GENESIS_HASH, "{}");
    let mut signing = Vec::with_capacity(ROUNDS);
    for seq in 0..ROUNDS as i64 {
        let start = Instant::now();
        std::hint::black_box(signer.sign_head(seq, &hash));
        std::hint::black_box(signer.sign_head(seq + 1, &hash));
        signing.push(start.elapsed());
    }

    let report = audit::verify_with(
        &plain,
        &audit::VerifyOptions {
            expect: None,
            key: None,
        },
    )
    .await
    .expect("verify");
    assert!(report.ok(), "the bench's chain holds: {:?}", report.broken);

    let (without, with, signing) = (median(without), median(with), median(signing));
    let added = micros(with) - micros(without);
    println!(
        "audit records per execution (start + end), store {}, {ROUNDS} executions each, \
         interleaved:",
        plain.display_url()
    );
    println!("  without signing   median {:8.1} µs", micros(without));
    println!("  with signing      median {:8.1} µs", micros(with));
    println!("  difference               {added:8.1} µs per execution (budget 1000 µs)");
    println!(
        "  signing alone     median {:8.1} µs per execution (two ed25519 signatures)",
        micros(signing)
    );
}
