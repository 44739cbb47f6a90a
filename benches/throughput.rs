//! Benchmark (not a test): throughput of `stigmer run true` in local mode at concurrency 1, 8
//! and 32, beside plain `/bin/sh -c true` spawns at the same concurrencies measured in the same
//! run, and where each execution's cost goes: CPU time of the managed Temporal server, of the
//! daemon (which hosts the worker), of the commands and of the `stigmer run` clients, and the
//! history events and workflow tasks of one execution. Run with `cargo bench --bench throughput`.
//!
//! CPU time is utime+stime from /proc/PID/stat, read before a level and after its last
//! workflow closed, so the work left behind by a client that already answered is counted too;
//! how long those closes took after the level (the tail) is printed, with the rate counting it.
//! The daemon is private to the run (its own data dir and Temporal ports) and stopped at the end.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const LEVELS: [usize; 3] = [1, 8, 32];
/// How long the clients of one level keep starting runs (a run in flight at the end finishes).
const RUN_FOR: Duration = Duration::from_secs(15);
const BASELINE_FOR: Duration = Duration::from_secs(2);
const WARMUP: usize = 10;
/// Executions per level whose histories are read.
const HISTORIES: usize = 3;

fn stigmer() -> String {
    // `cargo bench` builds the binary beside the bench executable.
    let exe = std::env::current_exe().expect("bench path");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    dir.join("stigmer").display().to_string()
}

/// The private daemon: its data dir and ports, stopped when dropped (a failed assertion too).
struct Daemon {
    bin: String,
    data: tempfile::TempDir,
    port: u16,
}

impl Daemon {
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.args(args)
            .env("STIGMER_DATA_DIR", self.data.path())
            .env("STIGMER_TEMPORAL_PORT", self.port.to_string())
            .env("STIGMER_TEMPORAL_UI_PORT", (self.port + 1000).to_string())
            .env_remove("TEMPORAL_ADDRESS")
            .env_remove("STIGMER_DATABASE_URL")
            .env_remove("STIGMER_EXECUTION_MODE")
            .stdin(Stdio::null());
        c
    }

    fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn pid(&self, file: &str) -> u32 {
        let path = self.data.path().join(file);
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("could not read {}: {e}", path.display()));
        text.lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or_else(|| panic!("{} holds no pid", path.display()))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self
            .cmd(&["server", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// CPU time in clock ticks from /proc/PID/stat: (own utime+stime, reaped children's).
fn cpu_ticks(pid: &str) -> (u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap_or_else(|e| panic!("could not read /proc/{pid}/stat: {e}"));
    // Fields after the command name, which is in parentheses and may hold spaces: the state is
    // field 3, so utime (14), stime (15), cutime (16), cstime (17) are at 11..=14 here.
    let rest = &stat[stat.rfind(')').expect("stat format") + 1..];
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    (f[10] + f[11], f[12] + f[13])
}

fn clock_ticks_per_sec() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// The whole machine's CPU time in clock ticks from /proc/stat: (busy, all), all cores summed.
fn machine_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").expect("/proc/stat");
    let f: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user already).
    let all: u64 = f.iter().take(8).sum();
    (all - f[3] - f[4], all)
}

/// One reading of every process whose CPU time is attributed.
#[derive(Clone, Copy)]
struct Cpu {
    temporal: u64,
    daemon: u64,
    commands: u64,
    clients: u64,
    machine_busy: u64,
    machine_all: u64,
}

fn read_cpu(temporal: u32, daemon: u32) -> Cpu {
    let (temporal, _) = cpu_ticks(&temporal.to_string());
    let (daemon, commands) = cpu_ticks(&daemon.to_string());
    let (_, clients) = cpu_ticks("self");
    let (machine_busy, machine_all) = machine_ticks();
    Cpu {
        temporal,
        daemon,
        commands,
        clients,
        machine_busy,
        machine_all,
    }
}

struct Level {
    runs: usize,
    failed: usize,
    wall: Duration,
    latencies: Vec<Duration>,
}

impl Level {
    fn rate(&self) -> f64 {
        self.runs as f64 / self.wall.as_secs_f64()
    }

    fn percentile_ms(&self, p: f64) -> f64 {
        let idx = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        self.latencies[idx].as_secs_f64() * 1e3
    }
}

/// `clients` threads each run `f` back to back until `run_for` has passed since the start.
fn drive(clients: usize, run_for: Duration, f: impl Fn() -> bool + Sync) -> Level {
    let failed = AtomicUsize::new(0);
    let start = Instant::now();
    let deadline = start + run_for;
    let mut latencies: Vec<Duration> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..clients)
            .map(|_| {
                s.spawn(|| {
                    let mut mine = Vec::new();
                    while Instant::now() < deadline {
                        let t = Instant::now();
                        if f() {
                            mine.push(t.elapsed());
                        } else {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    mine
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("client thread"))
            .collect()
    });
    let wall = start.elapsed();
    latencies.sort();
    Level {
        runs: latencies.len(),
        failed: failed.into_inner(),
        wall,
        latencies,
    }
}

fn temporal_cli(daemon: &Daemon, args: &[&str]) -> Option<serde_json::Value> {
    let out = Command::new("temporal")
        .args(args)
        .args(["--address", &daemon.address(), "--output", "json"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    serde_json::from_slice(&out.stdout).ok()
}

/// Waits until no workflow is open (a client answers before its workflow closes), up to 30 s:
/// how long that took, or None if some stayed open.
fn wait_all_closed(daemon: &Daemon) -> Option<Duration> {
    let start = Instant::now();
    let query = [
        "workflow",
        "count",
        "--query",
        "ExecutionStatus=\"Running\"",
    ];
    while start.elapsed() < Duration::from_secs(30) {
        // protojson leaves a zero count out, and writes an int64 as a string.
        let open = temporal_cli(daemon, &query).map(|v| match &v["count"] {
            serde_json::Value::Null => 0,
            n => n
                .as_u64()
                .or_else(|| n.as_str().and_then(|s| s.parse().ok()))
                .unwrap_or(u64::MAX),
        });
        if open == Some(0) {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

/// The ids of the `n` most recent executions.
fn recent_executions(daemon: &Daemon, n: usize) -> Vec<String> {
    let out = daemon
        .cmd(&[
            "executions",
            "list",
            "--limit",
            &n.to_string(),
            "--output",
            "json",
        ])
        .output()
        .expect("stigmer executions list");
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).expect("list json");
    rows.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|r| r["id"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// An execution's history event types, in order.
fn history(daemon: &Daemon, id: &str) -> Vec<String> {
    let wfid = format!("stigmer/agent-execution/{id}");
    let v = temporal_cli(daemon, &["workflow", "show", "--workflow-id", &wfid])
        .unwrap_or_else(|| panic!("temporal workflow show {wfid} gave no JSON"));
    v["events"]
        .as_array()
        .map(|events| {
            events
                .iter()
                .filter_map(|e| e["eventType"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn main() {
    let daemon = Daemon {
        bin: stigmer(),
        data: tempfile::tempdir().expect("temp dir"),
        port: 34000 + (std::process::id() % 1000) as u16,
    };
    let started = daemon
        .cmd(&["server", "start", "--detach"])
        .status()
        .expect("start daemon");
    assert!(started.success(), "the daemon did not start");
    let daemon_pid = daemon.pid("daemon.pid");
    let temporal_pid = daemon.pid("temporal/temporal.pid");
    let cmdline = std::fs::read(format!("/proc/{temporal_pid}/cmdline")).unwrap_or_default();
    assert!(
        String::from_utf8_lossy(&cmdline).contains("start-dev"),
        "pid {temporal_pid} is not the managed Temporal dev server"
    );
    let tick_ms = 1e3 / clock_ticks_per_sec();
    let ms = |ticks: u64| ticks as f64 * tick_ms;

    let run_true = || {
        daemon
            .cmd(&["run", "true"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let sh_true = || {
        Command::new("/bin/sh")
            .args(["-c", "true"])
            .status()
            .is_ok_and(|s| s.success())
    };

    for _ in 0..WARMUP {
        assert!(run_true(), "stigmer run true failed");
    }
    assert!(
        wait_all_closed(&daemon).is_some(),
        "the warm-up's workflows did not close"
    );
    let idle_for = Duration::from_secs(3);
    let before = read_cpu(temporal_pid, daemon_pid);
    std::thread::sleep(idle_for);
    let after = read_cpu(temporal_pid, daemon_pid);
    let idle_temporal = ms(after.temporal - before.temporal) / idle_for.as_secs_f64();
    let idle_daemon = ms(after.daemon - before.daemon) / idle_for.as_secs_f64();

    println!(
        "stigmer run true throughput (local mode, warm daemon, {} s per level after {WARMUP} \
         warm-up runs; {} cores)",
        RUN_FOR.as_secs(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let idle_busy = 100.0 * (after.machine_busy - before.machine_busy) as f64
        / (after.machine_all - before.machine_all).max(1) as f64;
    println!(
        "idle: Temporal server {idle_temporal:.1} ms/s, daemon {idle_daemon:.1} ms/s of CPU \
         (included in the figures below); machine busy {idle_busy:.0} % meanwhile"
    );
    println!();
    let mut throughput = Vec::new();
    let mut cost = Vec::new();
    let mut sample_history = Vec::new();
    for clients in LEVELS {
        let baseline = drive(clients, BASELINE_FOR, sh_true);
        assert_eq!(baseline.failed, 0, "sh -c true failed");
        std::thread::sleep(Duration::from_millis(500));

        let before = read_cpu(temporal_pid, daemon_pid);
        let level = drive(clients, RUN_FOR, run_true);
        let clients_after = read_cpu(temporal_pid, daemon_pid).clients;
        let closed = wait_all_closed(&daemon);
        let mut after = read_cpu(temporal_pid, daemon_pid);
        // The `temporal workflow count` calls above are this process's children too.
        after.clients = clients_after;

        let mut events = 0;
        let mut tasks = 0;
        let mut activities = 0;
        let ids = recent_executions(&daemon, HISTORIES);
        for id in &ids {
            let types = history(&daemon, id);
            events += types.len();
            tasks += types
                .iter()
                .filter(|t| *t == "EVENT_TYPE_WORKFLOW_TASK_COMPLETED")
                .count();
            activities += types
                .iter()
                .filter(|t| *t == "EVENT_TYPE_ACTIVITY_TASK_SCHEDULED")
                .count();
            if sample_history.is_empty() {
                sample_history = types;
            }
        }
        let per_history = |n: usize| n as f64 / ids.len().max(1) as f64;
        let per_exec = |ticks: u64| ms(ticks) / level.runs.max(1) as f64;
        let temporal = per_exec(after.temporal - before.temporal);
        let daemon_cpu = per_exec(after.daemon - before.daemon);
        let commands = per_exec(after.commands - before.commands);
        let client = per_exec(after.clients - before.clients);
        let ours = (after.temporal - before.temporal)
            + (after.daemon - before.daemon)
            + (after.commands - before.commands)
            + (after.clients - before.clients);
        let all = (after.machine_all - before.machine_all).max(1) as f64;
        let busy = (after.machine_busy - before.machine_busy) as f64;
        // NaN when the workflows did not close; the note below the row says so.
        let tail = closed.map_or(f64::NAN, |t| t.as_secs_f64());
        let note = match (level.failed, closed) {
            (0, Some(_)) => String::new(),
            (n, Some(_)) => format!("   ({n} runs failed, not counted)"),
            (n, None) => format!(
                "   ({n} runs failed; workflows still open 30 s after the level: CPU figures \
                 include the wait)"
            ),
        };
        throughput.push(format!(
            "{:>5} {:>6} {:>7.1} {:>8.1} {:>7.1} {:>9.1} {:>8.1} {:>8.1} {:>10.0} {:>7.0} \
             {:>8.0}{note}",
            clients,
            level.runs,
            level.wall.as_secs_f64(),
            level.rate(),
            tail,
            level.runs as f64 / (level.wall.as_secs_f64() + tail),
            level.percentile_ms(0.5),
            level.percentile_ms(0.95),
            baseline.rate(),
            100.0 * busy / all,
            100.0 * (busy - ours as f64).max(0.0) / all,
        ));
        cost.push(format!(
            "{:>5} {:>9.1} {:>7.1} {:>8.1} {:>7.1} {:>7.1} {:>7.1} {:>9.1} {:>11.1}",
            clients,
            temporal,
            daemon_cpu,
            commands,
            client,
            temporal + daemon_cpu + commands + client,
            per_history(events),
            per_history(tasks),
            per_history(activities)
        ));
    }

    println!(
        "{:>5} {:>6} {:>7} {:>8} {:>7} {:>9} {:>8} {:>8} {:>10} {:>7} {:>8}",
        "conc",
        "runs",
        "wall s",
        "exec/s",
        "tail s",
        "closed/s",
        "p50 ms",
        "p95 ms",
        "sh exec/s",
        "busy %",
        "other %"
    );
    for row in &throughput {
        println!("{row}");
    }
    println!();
    println!(
        "{:>5} {:>9} {:>7} {:>8} {:>7} {:>7} {:>7} {:>9} {:>11}",
        "conc",
        "temporal",
        "daemon",
        "command",
        "client",
        "total",
        "events",
        "wf tasks",
        "activities"
    );
    for row in &cost {
        println!("{row}");
    }
    println!();
    for line in [
        "exec/s: answers per second of wall time. tail s: from the level's end until its last",
        "  workflow closed (a client answers before its workflow closes). closed/s: runs over",
        "  wall + tail. sh exec/s: /bin/sh -c true spawned by as many threads, before the level.",
        "busy %: the machine's CPU in use during the level and its tail, of all cores; other %:",
        "  the part not used by the Temporal server, the daemon, its commands or the clients.",
        "temporal … total: CPU ms per execution (utime+stime; command: the daemon's reaped",
        "  children; client: the `stigmer run` processes). events, wf tasks",
        "  (WORKFLOW_TASK_COMPLETED), activities (ACTIVITY_TASK_SCHEDULED): per history, mean",
    ] {
        println!("{line}");
    }
    println!("  of the level's last {HISTORIES} executions.");
    let steps: Vec<&str> = sample_history
        .iter()
        .map(|t| t.trim_start_matches("EVENT_TYPE_"))
        .collect();
    println!("one execution's history: {}", steps.join(" → "));
}
