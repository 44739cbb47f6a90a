//! What the latency benches share: the binary beside them, warm-up and timed runs, and the
//! line each prints per measurement.

use std::time::{Duration, Instant};

pub const RUNS: usize = 50;
pub const WARMUP: usize = 5;

pub fn stigmer() -> String {
    // `cargo bench` builds the binary beside the bench executable.
    let exe = std::env::current_exe().expect("bench path");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    dir.join("stigmer").display().to_string()
}

pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

pub fn measure(mut f: impl FnMut()) -> Vec<Duration> {
    for _ in 0..WARMUP {
        f();
    }
    let mut samples: Vec<Duration> = (0..RUNS)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    samples.sort();
    samples
}

pub fn report(name: &str, samples: &[Duration]) {
    println!(
        "{name:<44} median {:>8.2} ms   p95 {:>8.2} ms   min {:>8.2} ms   (n={})",
        percentile(samples, 0.5).as_secs_f64() * 1e3,
        percentile(samples, 0.95).as_secs_f64() * 1e3,
        samples[0].as_secs_f64() * 1e3,
        samples.len()
    );
}
