//! Sessions end to end (docs/sessions.md), against the real Docker engine and a real Temporal
//! dev server: state, files and background processes carry over in a sandbox session and stay
//! in it; a command that does not save says so; one command at a time; `kill -9` of the daemon
//! loses nothing; `session end` and the TTL remove the container; a local session keeps its
//! state sealed in the store.
//!
//! One installation serves the whole file (the CI has a time budget), so the scenarios run in
//! order inside one test. The image is `STIGMER_TEST_SANDBOX_IMAGE` (default
//! `stigmer-sandbox-basic:local`).

mod common;

use common::{Env, RemoveContainers, eventually, text};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

fn image() -> String {
    std::env::var("STIGMER_TEST_SANDBOX_IMAGE")
        .unwrap_or_else(|_| "stigmer-sandbox-basic:local".into())
}

fn session_env() -> Env {
    let mut env = Env::new();
    env.extra.push(("STIGMER_SANDBOX_IMAGE".into(), image()));
    env.extra
        .push(("STIGMER_SANDBOX_AUTO_PULL".into(), "false".into()));
    // The reaper every second, so a short TTL is seen to pass.
    env.extra
        .push(("STIGMER_REAPER_INTERVAL_SECS".into(), "1".into()));
    env
}

/// Removes the containers of the sessions a test started, whatever it did.
struct RemoveSessionContainers(Vec<String>);

impl Drop for RemoveSessionContainers {
    fn drop(&mut self) {
        for id in &self.0 {
            for c in session_containers(id) {
                let _ = Command::new("docker").args(["rm", "-f", &c]).output();
            }
        }
    }
}

fn session_containers(id: &str) -> Vec<String> {
    let out = Command::new("docker")
        .args(["ps", "-aq", "--filter"])
        .arg(format!("label=io.stigmer.session={id}"))
        .output()
        .expect("docker ps");
    text(&out.stdout).lines().map(str::to_string).collect()
}

fn start(env: &Env, args: &[&str]) -> String {
    let mut all = vec!["session", "start", "--output", "json"];
    all.extend_from_slice(args);
    let out = env.stigmer(&all);
    assert!(out.status.success(), "session start: {}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let id = v["id"].as_str().expect("id").to_string();
    assert!(id.starts_with("ses-"), "{id}");
    id
}

fn run_in(env: &Env, session: &str, command: &str) -> Output {
    env.stigmer(&["run", "--session", session, command])
}

fn show(env: &Env, session: &str) -> serde_json::Value {
    let out = env.stigmer(&["session", "show", session, "--output", "json"]);
    assert!(out.status.success(), "session show: {}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("json")
}

#[test]
fn sessions_keep_state_files_and_processes_and_end_cleanly() {
    let env = session_env();
    let _leases = RemoveContainers(&env);
    let mut cleanup = RemoveSessionContainers(Vec::new());

    // State, files, a function, an alias and a background process carry over.
    let s1 = start(&env, &["--name", "work", "--ttl", "600"]);
    cleanup.0.push(s1.clone());
    let out = run_in(
        &env,
        "work",
        "cd /tmp && export FOO=bar && mkdir -p /tmp/d && echo hi > /tmp/d/f; \
         greet() { echo hello \"$1\"; }; alias ll='echo aliased'; sleep 300 & echo started",
    );
    assert!(out.status.success(), "first: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "started\n");
    let out = run_in(
        &env,
        &s1,
        "pwd; echo $FOO; cat /tmp/d/f; greet you; ll; pgrep -x sleep >/dev/null && echo alive",
    );
    assert!(out.status.success(), "second: {}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "/tmp\nbar\nhi\nhello you\naliased\nalive\n"
    );
    let record = env.last_execution();
    assert_eq!(record["session"], s1.as_str(), "{record}");
    assert_eq!(record["effective_mode"], "sandbox");
    assert_eq!(session_containers(&s1).len(), 1, "one container of its own");
    let audit = env.stigmer(&["audit", "export"]);
    assert!(audit.status.success(), "{}", text(&audit.stderr));
    assert!(
        text(&audit.stdout).contains(&format!("\"session\":\"{s1}\"")),
        "the audit record names the session: {}",
        text(&audit.stdout)
    );

    // Exit codes pass through, and the state is still saved.
    let out = run_in(&env, &s1, "export CODE=three; exit 3");
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    let out = run_in(&env, &s1, "echo $CODE");
    assert_eq!(text(&out.stdout), "three\n");

    // A command that replaces the shell saves nothing: the next one says so, from the state
    // before it.
    let out = run_in(&env, &s1, "export FOO=lost; cd /; exec true");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = run_in(&env, &s1, "pwd; echo $FOO");
    assert_eq!(text(&out.stdout), "/tmp\nbar\n");
    assert!(
        text(&out.stderr).contains("did not save its state"),
        "{}",
        text(&out.stderr)
    );

    // Per-command variables apply once and are not kept.
    let out = env.stigmer(&["run", "--session", &s1, "--env", "ONCE=1", "echo [$ONCE]"]);
    assert_eq!(text(&out.stdout), "[1]\n", "{}", text(&out.stderr));
    let out = run_in(&env, &s1, "echo [$ONCE]");
    assert_eq!(text(&out.stdout), "[]\n");

    // Neither a run without a session nor another session sees the session's files.
    let out = env.stigmer(&["run", "--mode", "sandbox", "cat /tmp/d/f"]);
    assert!(
        !out.status.success(),
        "a run without the session saw its file"
    );
    let s2 = start(&env, &[]);
    cleanup.0.push(s2.clone());
    let out = run_in(&env, &s2, "cat /tmp/d/f; echo [$FOO]");
    assert_eq!(text(&out.stdout), "[]\n", "another session saw the file");

    // Files in and out with `session cp`: binary data (NUL bytes, every byte value) and the
    // file's mode survive the round trip; the file is the sandbox user's inside; the paths stay
    // in the session's container, and a bad one is a usage error that says what to do.
    let host = env.data_dir().join("cp");
    std::fs::create_dir_all(&host).unwrap();
    let mut data: Vec<u8> = (0..=255u8).cycle().take(3 * 1024 * 1024 + 7).collect();
    data.extend_from_slice(b"\0end\0");
    let input = host.join("in.bin");
    std::fs::write(&input, &data).unwrap();
    std::fs::set_permissions(&input, std::os::unix::fs::PermissionsExt::from_mode(0o750)).unwrap();
    let remote = format!("{s1}:/tmp/d/in.bin");
    let out = env.stigmer(&["session", "cp", input.to_str().unwrap(), &remote]);
    assert!(out.status.success(), "cp in: {}", text(&out.stderr));
    let out = run_in(
        &env,
        &s1,
        "stat -c '%u %a %s' /tmp/d/in.bin; sha256sum < /tmp/d/in.bin",
    );
    let digest = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&data))
    };
    assert_eq!(
        text(&out.stdout),
        format!("1000 750 {}\n{digest}  -\n", data.len()),
        "cp in: {}",
        text(&out.stderr)
    );
    let back = host.join("back.bin");
    let out = env.stigmer(&[
        "session",
        "cp",
        "--output",
        "json",
        &remote,
        back.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "cp out: {}", text(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["bytes"], data.len() as u64);
    assert_eq!(report["mode"], "0750");
    assert_eq!(
        std::fs::read(&back).unwrap(),
        data,
        "cp out: the same bytes"
    );
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&back).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o750, "cp out: the same mode");
    let out = env.stigmer(&[
        "session",
        "cp",
        input.to_str().unwrap(),
        &format!("{s2}:/tmp/d/in.bin"),
    ]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "another session's missing dir: {}",
        text(&out.stderr)
    );
    assert!(
        text(&out.stderr).contains("does not exist in the sandbox"),
        "{}",
        text(&out.stderr)
    );
    for (src, dst, says) in [
        (
            format!("{s1}:/tmp/d"),
            back.display().to_string(),
            "is a directory",
        ),
        (
            format!("{s1}:/tmp/../etc/passwd"),
            back.display().to_string(),
            "without `..`",
        ),
        (
            format!("{s1}:/tmp/none"),
            back.display().to_string(),
            "does not exist",
        ),
        (
            "a".to_string(),
            "b".to_string(),
            "give one side as SESSION:/path",
        ),
        ("ses-0000:/tmp/x".to_string(), "b".to_string(), "no session"),
    ] {
        let out = env.stigmer(&["session", "cp", &src, &dst]);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{src} {dst}: {}",
            text(&out.stderr)
        );
        assert!(
            text(&out.stderr).contains(says),
            "{src} {dst}: {}",
            text(&out.stderr)
        );
    }

    // The session decides the mode and the sandbox.
    let out = env.stigmer(&["run", "--session", &s1, "--mode", "local", "true"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let out = env.stigmer(&["run", "--session", &s1, "--memory", "1g", "true"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("the session decides"));

    // One command at a time: --no-wait refuses at once, naming the running execution.
    let mut busy = env.cmd();
    busy.args(["run", "--session", &s1, "sleep 5"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut busy = busy.spawn().expect("spawn");
    assert!(
        eventually(Duration::from_secs(60), || show(&env, &s1)["busy"]
            .is_string()),
        "the session never became busy"
    );
    let holder = show(&env, &s1)["busy"].as_str().unwrap().to_string();
    let out = env.stigmer(&["run", "--session", &s1, "--no-wait", "true"]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("busy") && stderr.contains(&holder),
        "{stderr}"
    );
    // Without it, the next command waits its turn.
    let out = run_in(&env, &s1, "echo after");
    assert_eq!(text(&out.stdout), "after\n", "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("waiting for it to end"),
        "{}",
        text(&out.stderr)
    );
    assert!(busy.wait().unwrap().success());

    // kill -9 of the daemon between two commands loses nothing.
    let pid = env.daemon_pid().expect("daemon pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert!(eventually(Duration::from_secs(10), || {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err()
    }));
    let out = run_in(&env, &s1, "pwd; echo $FOO; cat /tmp/d/f");
    assert_eq!(
        text(&out.stdout),
        "/tmp\nbar\nhi\n",
        "after kill -9: {}",
        text(&out.stderr)
    );

    // kill -9 of the daemon while a command runs: that command is lost (stopped, not re-run),
    // and the session keeps its container and its files.
    let container = session_containers(&s1);
    let lost = env
        .cmd()
        .args([
            "run",
            "--session",
            &s1,
            "export FOO=never; touch /tmp/d/mid; sleep 4646",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run");
    let in_container = |test: &str| {
        std::process::Command::new("docker")
            .args(["exec", &container[0], "sh", "-c", test])
            .status()
            .is_ok_and(|s| s.success())
    };
    assert!(eventually(Duration::from_secs(30), || in_container(
        "test -f /tmp/d/mid"
    )));
    let pid = env.daemon_pid().expect("daemon pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    common::wait_output(lost, Duration::from_secs(60));
    let out = run_in(
        &env,
        &s1,
        "pwd; echo $FOO; cat /tmp/d/f; test -f /tmp/d/mid && echo mid; \
         ps -eo args | grep -qx 'sleep 4646' || echo gone",
    );
    // Stopped with SIGTERM, the command's shell may run its EXIT trap (then what it exported
    // is kept) or go before it saves (then the state from before it, and a notice).
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    let saved = stdout == "/tmp\nnever\nhi\nmid\ngone\n" && !stderr.contains("did not save");
    let not_saved = stdout == "/tmp\nbar\nhi\nmid\ngone\n" && stderr.contains("did not save");
    assert!(
        saved || not_saved,
        "after kill -9 mid-command: {stdout}\n{stderr}\n{}",
        text(
            &env.stigmer(&["leases", "list", "--all", "--output", "json"])
                .stdout
        )
    );
    assert_eq!(session_containers(&s1), container, "the same container");

    // `session end` removes the container; a later run in it is a usage error.
    let out = env.stigmer(&["session", "end", &s1]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        session_containers(&s1).is_empty(),
        "the container is still there"
    );
    let out = run_in(&env, &s1, "true");
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("session start"));
    let out = run_in(&env, "work", "true");
    assert_eq!(out.status.code(), Some(2), "the name went with the session");
    let out = env.stigmer(&["session", "end", &s2]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    // An idle session ends after its TTL, and its container goes.
    let s3 = start(&env, &["--ttl", "2"]);
    cleanup.0.push(s3.clone());
    let out = run_in(&env, &s3, "true");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        eventually(Duration::from_secs(60), || show(&env, &s3)["state"]
            == "ended"
            && session_containers(&s3).is_empty()),
        "the session outlived its TTL: {}",
        show(&env, &s3)
    );

    // A local session keeps the directory and exported variables, sealed in the store.
    let dir = env.dir.path().join("place");
    std::fs::create_dir_all(&dir).unwrap();
    // The value is made inside the commands, so neither a command's text nor its output (both
    // stored) holds it.
    let secret = "s3cr3t-value-of-the-session";
    let make = "$(printf '%s-%s' s3cr3t value-of-the-session)";
    let s4 = start(&env, &["--mode", "local"]);
    let out = run_in(
        &env,
        &s4,
        &format!("cd {} && export TOKEN={make}", dir.display()),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = run_in(
        &env,
        &s4,
        &format!("pwd; [ \"$TOKEN\" = \"{make}\" ] && echo kept"),
    );
    assert_eq!(
        text(&out.stdout),
        format!("{}\nkept\n", dir.canonicalize().unwrap().display()),
        "{}",
        text(&out.stderr)
    );
    if env.database_url.starts_with("sqlite:") {
        let db = env.data_dir().join("stigmer.db");
        for file in [db.clone(), db.with_extension("db-wal")] {
            let bytes = std::fs::read(&file).unwrap_or_default();
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{} holds the variable's value in plain text",
                file.display()
            );
        }
    }
    let out = env.stigmer(&["session", "end", &s4]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}
