//! Benchmark (not a test): sandbox-mode latency beside the Docker baselines measured in the
//! same run, alternating with them. Warm: `stigmer run --mode sandbox true` reusing its
//! container vs `docker exec` into that same container. Cold (TTL 0: create + start + exec +
//! remove, timed until the container is gone, with the answer time beside it) vs
//! `docker run --rm`. Run with `cargo bench --bench sandbox_latency` (or `make bench`); the image is
//! `STIGMER_BENCH_SANDBOX_IMAGE` (default `stigmer-sandbox-basic:local`).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const RUNS: usize = 20;

/// The pause before each sample.
const SETTLE: Duration = Duration::from_millis(300);

fn stigmer() -> String {
    let exe = std::env::current_exe().expect("bench path");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    dir.join("stigmer").display().to_string()
}

/// Times `a` and `b` alternately, `RUNS` each after one warm-up of each, so that a machine
/// getting busier or quieter during the bench moves both figures alike. Each sample starts after
/// a pause, so neither is timed while the other's background work (a workflow finishing after
/// its client returned, a container being removed) still runs.
fn measure_pair(mut a: impl FnMut(), mut b: impl FnMut()) -> (Vec<Duration>, Vec<Duration>) {
    a();
    b();
    let time = |f: &mut dyn FnMut()| {
        std::thread::sleep(SETTLE);
        let t = Instant::now();
        f();
        t.elapsed()
    };
    let (mut sa, mut sb) = (Vec::with_capacity(RUNS), Vec::with_capacity(RUNS));
    for _ in 0..RUNS {
        sa.push(time(&mut a));
        sb.push(time(&mut b));
    }
    sa.sort();
    sb.sort();
    (sa, sb)
}

fn median(s: &[Duration]) -> f64 {
    s[s.len() / 2].as_secs_f64() * 1e3
}

fn report(name: &str, s: &[Duration]) {
    println!(
        "{name:<52} median {:>8.1} ms   p95 {:>8.1} ms   (n={})",
        median(s),
        s[((s.len() as f64 - 1.0) * 0.95).round() as usize].as_secs_f64() * 1e3,
        s.len()
    );
}

fn ok(cmd: &mut Command) {
    let status = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("spawn");
    assert!(status.success(), "{cmd:?} failed");
}

fn main() {
    let image = std::env::var("STIGMER_BENCH_SANDBOX_IMAGE")
        .unwrap_or_else(|_| "stigmer-sandbox-basic:local".into());
    let bin = stigmer();
    let data = tempfile::tempdir().expect("temp dir");
    let port = 32000 + (std::process::id() % 500) as u16;
    let cmd = |ttl: &str| {
        let mut c = Command::new(&bin);
        c.env("STIGMER_DATA_DIR", data.path())
            .env("STIGMER_TEMPORAL_PORT", port.to_string())
            .env("STIGMER_TEMPORAL_UI_PORT", (port + 1000).to_string())
            .env("STIGMER_SANDBOX_IMAGE", &image)
            .env("STIGMER_SANDBOX_AUTO_PULL", "false")
            .env("STIGMER_SANDBOX_TTL", ttl)
            .env_remove("TEMPORAL_ADDRESS")
            .env_remove("STIGMER_DATABASE_URL")
            .stdin(Stdio::null());
        c
    };
    ok(cmd("3600").args(["server", "start", "--detach"]));
    println!("sandbox latency ({RUNS} runs each, image {image})");

    // Warm: stigmer reusing its container, vs docker exec into that same container.
    ok(cmd("3600").args(["run", "--mode", "sandbox", "true"]));
    let out = cmd("3600")
        .args(["leases", "list", "--output", "json"])
        .output()
        .expect("leases");
    let leases: serde_json::Value = serde_json::from_slice(&out.stdout).expect("leases json");
    let container = leases[0]["container_id"]
        .as_str()
        .expect("a leased container")
        .to_string();
    let (warm, docker_exec) = measure_pair(
        || ok(cmd("3600").args(["run", "--mode", "sandbox", "true"])),
        || ok(Command::new("docker").args(["exec", "-u", "1000:1000", &container, "true"])),
    );
    report("baseline: docker exec CONTAINER true", &docker_exec);
    report("stigmer run --mode sandbox true (warm, reused)", &warm);
    println!(
        "{:<52} {:>8.2}x",
        "warm ratio (target ≤ 0.5x docker exec)",
        median(&warm) / median(&docker_exec)
    );

    // A session's command (the state wrapper restores and saves the shell's state around it)
    // against the warm run, alternating.
    let out = cmd("3600")
        .args(["session", "start", "--mode", "sandbox"])
        .output()
        .expect("session start");
    assert!(
        out.status.success(),
        "session start: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let session = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let (warm_again, in_session) = measure_pair(
        || ok(cmd("3600").args(["run", "--mode", "sandbox", "true"])),
        || ok(cmd("3600").args(["run", "--session", &session, "true"])),
    );
    report(
        "stigmer run --mode sandbox true (warm, reused)",
        &warm_again,
    );
    report(
        "stigmer run --session ID true (sandbox session)",
        &in_session,
    );
    println!(
        "{:<52} {:>8.2}x",
        "session ratio (target ≤ 1.0x warm run)",
        median(&in_session) / median(&warm_again)
    );
    ok(cmd("3600").args(["session", "end", &session]));

    // The clean check: after each command the agent kills what it left and counts what
    // remains, before the container may meet the next execution. Its own measure, from the exit
    // frames of commands run through the engine in that same container.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let engine = rt
        .block_on(stigmer_docker::Engine::connect())
        .expect("docker engine");
    let mut checks = Vec::with_capacity(RUNS);
    for i in 0..RUNS {
        let argv: &[&str] = if i % 2 == 0 {
            &["true"]
        } else {
            // Something left behind to kill: a background sleep in a session of its own.
            &["sh", "-c", "setsid sleep 60 & true"]
        };
        let req = stigmer_docker::ExecRequest::new(
            argv.iter().copied(),
            stigmer_docker::ExecRequest::pid_file_for("bench-clean-check"),
        );
        let outcome = rt
            .block_on(engine.exec(
                &container,
                req,
                &mut |_, _| {},
                stigmer_docker::CancellationToken::new(),
            ))
            .expect("exec through the agent");
        checks.push(
            outcome
                .clean_check
                .expect("the agent reports its clean check"),
        );
    }
    checks.sort();
    report(
        "clean check after a command (agent; target ≤ 2 ms)",
        &checks,
    );

    // Cold: a container per run. `stigmer run` answers once the result is recorded, and the
    // workflow's release removes the container after; `docker run --rm` answers once the
    // container is removed. So the cold sample runs until the container is gone (polled through
    // the Engine API), and the answer time is kept beside it.
    // This installation's containers only: the store label of the warm one says which.
    let store = rt
        .block_on(engine.container_state(&container))
        .expect("inspect")
        .and_then(|s| s.labels.get(stigmer_docker::LABEL_STORE).cloned())
        .expect("the warm container's store label");
    let managed = |engine: &stigmer_docker::Engine| {
        let filters = std::collections::HashMap::from([(
            "label",
            vec![format!("{}={store}", stigmer_docker::LABEL_STORE)],
        )]);
        let options = bollard::query_parameters::ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        rt.block_on(engine.docker().list_containers(Some(options)))
            .expect("list containers")
            .into_iter()
            .filter_map(|c| c.id)
            .filter(|id| *id != container)
            .count()
    };
    let answers = std::cell::RefCell::new(Vec::with_capacity(RUNS + 1));
    let (docker_run, cold) = measure_pair(
        || {
            ok(Command::new("docker").args([
                "run",
                "--rm",
                "--user",
                "1000:1000",
                "--cap-drop",
                "ALL",
                "--security-opt",
                "no-new-privileges",
                "--pids-limit",
                "512",
                "--memory",
                "2g",
                &image,
                "true",
            ]))
        },
        || {
            let t = Instant::now();
            ok(cmd("0").args(["run", "--mode", "sandbox", "true"]));
            answers.borrow_mut().push(t.elapsed());
            while managed(&engine) > 0 {
                assert!(
                    t.elapsed() < Duration::from_secs(30),
                    "the cold container was never removed"
                );
                std::thread::sleep(Duration::from_millis(2));
            }
        },
    );
    let mut answers = answers.into_inner();
    answers.remove(0); // the warm-up
    answers.sort();
    report("baseline: docker run --rm IMAGE true", &docker_run);
    report(
        "stigmer run --mode sandbox true (cold, TTL 0) answer",
        &answers,
    );
    report("  … until its container is removed", &cold);
    println!(
        "{:<52} {:>8.2}x   (answer: {:.2}x)",
        "cold ratio (target ≤ 1.1x docker run --rm)",
        median(&cold) / median(&docker_run),
        median(&answers) / median(&docker_run)
    );

    let _ = cmd("3600").args(["leases", "reap"]).status();
    ok(cmd("3600").args(["server", "stop"]));
    let _ = Command::new("docker")
        .args(["rm", "-f", &container])
        .output();
}
