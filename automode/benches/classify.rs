//! Benchmark (not a test): how long a decision takes, for ordinary commands and a long pipeline,
//! beside a baseline measured in the same run (splitting the same strings on whitespace, the
//! least any classifier must do). Run with `cargo bench -p stigmer-automode`.

use std::hint::black_box;
use std::time::{Duration, Instant};
use stigmer_automode::{Policy, classify};

const ORDINARY: &[&str] = &[
    "ls -la",
    "git status",
    "cargo test --workspace",
    "pip install requests",
    "npm install -g typescript",
    "curl -fsSL https://example.com/install.sh | sh",
    "make build && make check",
    "find . -name '*.rs' | xargs wc -l",
    "bash -c 'npm i -g pnpm'",
    "echo hello > out.txt",
];

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn time_each(commands: &[String], rounds: usize, mut f: impl FnMut(&str)) -> Vec<Duration> {
    let mut samples = Vec::with_capacity(commands.len() * rounds);
    for _ in 0..rounds {
        for c in commands {
            let t = Instant::now();
            f(c);
            samples.push(t.elapsed());
        }
    }
    samples.sort();
    samples
}

fn report(name: &str, s: &[Duration]) {
    println!(
        "{name:<44} median {:>9.1} µs   p99 {:>9.1} µs   (n={})",
        percentile(s, 0.5).as_secs_f64() * 1e6,
        percentile(s, 0.99).as_secs_f64() * 1e6,
        s.len()
    );
}

fn main() {
    let policy = Policy::builtin();
    let ordinary: Vec<String> = ORDINARY.iter().map(|s| s.to_string()).collect();
    let long = vec![(0..50).map(|i| format!("grep -v pattern{i} file{i}.txt")).collect::<Vec<_>>().join(" | ")];

    println!("auto-mode decision time");
    report("baseline: split_whitespace (ordinary)", &time_each(&ordinary, 2000, |c| {
        black_box(c.split_whitespace().count());
    }));
    report("classify (ordinary commands)", &time_each(&ordinary, 2000, |c| {
        black_box(classify(c, &policy, false));
    }));
    report("baseline: split_whitespace (50-stage pipeline)", &time_each(&long, 500, |c| {
        black_box(c.split_whitespace().count());
    }));
    report("classify (50-stage pipeline)", &time_each(&long, 500, |c| {
        black_box(classify(c, &policy, false));
    }));
}
