//! A command printing 200 MB streams through without the worker's memory growing: output goes
//! to the sink chunk by chunk. Alone in its binary so no other test disturbs the RSS figure.

mod common;

use common::{Harness, sh};
use stigmer_docker::{CancellationToken, StreamKind};

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("status");
    common::status_field(&status, "VmRSS")
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}

#[tokio::test]
async fn two_hundred_megabytes_stream_through_in_bounded_memory() {
    let Some(h) = Harness::new().await else {
        return;
    };
    let id = h.container(&h.spec()).await;
    // Warm up the client so its buffers are part of the baseline.
    let _ = h.sh(&id, "head -c 1000000 /dev/zero").await;
    let before = rss_kib();
    let mut stdout = 0u64;
    let mut stderr = 0u64;
    let mut peak = before;
    let mut chunks = 0u64;
    let total: u64 = 200 * 1000 * 1000;
    let outcome = h
        .engine
        .exec(
            &id,
            sh(&format!("head -c {total} /dev/zero; echo done >&2")),
            &mut |kind: StreamKind, bytes: &[u8]| {
                match kind {
                    StreamKind::Stdout => stdout += bytes.len() as u64,
                    StreamKind::Stderr => stderr += bytes.len() as u64,
                }
                chunks += 1;
                if chunks.is_multiple_of(256) {
                    peak = peak.max(rss_kib());
                }
            },
            CancellationToken::new(),
        )
        .await
        .expect("exec");
    let after = rss_kib();
    peak = peak.max(after);
    println!(
        "200 MB streamed in {:?} as {chunks} chunks; RSS {before} KiB before, {after} KiB after, peak {peak} KiB",
        outcome.duration
    );
    assert_eq!(outcome.exit_code, Some(0));
    assert_eq!(stdout, total);
    assert_eq!(stderr, 5);
    assert!(
        peak.saturating_sub(before) < 100 * 1024,
        "RSS grew by {} KiB",
        peak - before
    );
}
