//! Integration tests against the real Docker engine: hardening, isolation, limits, exec
//! semantics, labels and cleanup. Each test uses its own store id and removes every container
//! of that store when it ends, even on failure.

mod common;

use std::time::{Duration, Instant};

use common::{Harness, sh, status_field, unique};
use stigmer_docker::{
    AGENT_PATH, CancellationToken, EngineError, ExecEnd, ExecRequest, LABEL_AGENT, LABEL_LEASE,
    LABEL_MANAGED, LABEL_SPEC_HASH, LABEL_STORE, LABEL_WORKER, Network,
};

macro_rules! harness {
    () => {
        match Harness::new().await {
            Some(h) => h,
            None => return,
        }
    };
}

/// Processes of the container other than docker-init and the keep-alive.
async fn leftover_processes(h: &Harness, id: &str) -> Vec<String> {
    h.engine
        .processes(id)
        .await
        .expect("processes")
        .into_iter()
        .map(|p| p.command)
        .filter(|c| !c.contains("docker-init") && c != "sleep infinity" && c != AGENT_PATH)
        .collect()
}

#[tokio::test]
async fn runs_as_uid_1000_without_capabilities_or_new_privileges() {
    let h = harness!();
    let spec = h.spec();
    let id = h.container(&spec).await;
    let r = h.sh(&id, "cat /proc/self/status; pwd").await;
    assert_eq!(r.outcome.exit_code, Some(0), "{}", r.stderr);
    let s = &r.stdout;
    let first = |k| status_field(s, k).and_then(|v| v.split_whitespace().next());
    assert_eq!(first("Uid"), Some("1000"), "{s}");
    assert_eq!(first("Gid"), Some("1000"), "{s}");
    for cap in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(
            status_field(s, cap),
            Some("0000000000000000"),
            "{cap} in {s}"
        );
    }
    assert_eq!(status_field(s, "NoNewPrivs"), Some("1"));
    assert!(s.trim_end().ends_with("/workspace"), "{s}");

    // The container's settings, as the engine reports them.
    let inspect = h
        .engine
        .docker()
        .inspect_container(&id, None)
        .await
        .expect("inspect");
    let hc = inspect.host_config.expect("host config");
    assert_eq!(hc.network_mode.as_deref(), Some("bridge"));
    // The agent is PID 1 and reaps; without it, docker-init is.
    assert_eq!(hc.init, Some(!h.engine.agent_enabled()));
    assert_eq!(hc.memory, Some(2 * 1024 * 1024 * 1024));
    assert_eq!(hc.memory_swap, hc.memory, "no swap");
    assert_eq!(hc.pids_limit, Some(512));
    assert_eq!(hc.nano_cpus, Some(2_000_000_000));
    assert_eq!(hc.cap_drop, Some(vec!["ALL".to_string()]));
    assert!(
        hc.security_opt
            .unwrap_or_default()
            .iter()
            .any(|o| o.starts_with("no-new-privileges"))
    );
    assert_ne!(hc.privileged, Some(true));
    let config = inspect.config.expect("config");
    assert_eq!(config.working_dir.as_deref(), Some("/workspace"));
    assert_eq!(config.user.as_deref(), Some("1000:1000"));
    let mounts = inspect.mounts.unwrap_or_default();
    assert!(
        mounts
            .iter()
            .all(|m| !m.source.as_deref().unwrap_or("").contains("docker.sock")),
        "{mounts:?}"
    );
}

#[tokio::test]
async fn network_none_has_only_loopback_and_bridge_has_eth0() {
    let h = harness!();
    let interfaces = |out: &str| -> Vec<String> {
        out.lines()
            .skip(2)
            .filter_map(|l| l.split(':').next())
            .map(|i| i.trim().to_string())
            .collect()
    };
    let none = h.container(&h.spec().with_network(Network::None)).await;
    let r = h.sh(&none, "cat /proc/net/dev").await;
    assert_eq!(r.outcome.exit_code, Some(0));
    assert_eq!(interfaces(&r.stdout), vec!["lo"], "{}", r.stdout);

    let bridge = h.container(&h.spec().with_network(Network::Bridge)).await;
    let r = h.sh(&bridge, "cat /proc/net/dev").await;
    let ifs = interfaces(&r.stdout);
    assert!(ifs.contains(&"eth0".to_string()), "{ifs:?}");
    assert!(ifs.contains(&"lo".to_string()), "{ifs:?}");
}

#[tokio::test]
async fn only_the_requested_environment_reaches_the_command() {
    let h = harness!();
    // A variable of this (host) process must not appear in the sandbox: cargo gives every
    // test process its manifest dir (set_var is unsound beside other test threads).
    let host_value = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let id = h.container(&h.spec()).await;
    let r = h
        .run(
            &id,
            sh("env").with_env("GIVEN", "yes").with_env("SPACED", "a b"),
        )
        .await;
    assert_eq!(r.outcome.exit_code, Some(0));
    assert!(!r.stdout.contains("CARGO_MANIFEST_DIR"), "{}", r.stdout);
    assert!(!r.stdout.contains(&host_value), "{}", r.stdout);
    assert!(r.stdout.lines().any(|l| l == "GIVEN=yes"), "{}", r.stdout);
    assert!(r.stdout.lines().any(|l| l == "SPACED=a b"), "{}", r.stdout);
    // Nothing else but what the image itself declares and what Docker always sets.
    let image_env = h
        .engine
        .docker()
        .inspect_image(&h.image)
        .await
        .expect("inspect image")
        .config
        .and_then(|c| c.env)
        .unwrap_or_default();
    let mut allowed: Vec<String> = image_env
        .iter()
        .filter_map(|kv| kv.split('=').next().map(str::to_string))
        .collect();
    allowed.extend(
        [
            "GIVEN", "SPACED", "PATH", "HOME", "HOSTNAME", "PWD", "SHLVL", "_",
        ]
        .map(String::from),
    );
    for line in r.stdout.lines() {
        let name = line.split('=').next().unwrap_or_default();
        assert!(
            allowed.iter().any(|a| a == name),
            "unexpected variable {name} (allowed: {allowed:?})"
        );
    }
}

#[tokio::test]
async fn stdout_and_stderr_apart_with_exit_code_and_argv_untouched() {
    let h = harness!();
    let id = h.container(&h.spec()).await;
    let r = h.sh(&id, "echo out; echo err >&2; echo out2; exit 3").await;
    assert_eq!(r.outcome.exit_code, Some(3));
    assert_eq!(r.outcome.ended, ExecEnd::Exited);
    assert_eq!(r.stdout, "out\nout2\n");
    assert_eq!(r.stderr, "err\n");
    assert!(!r.outcome.oom_killed && !r.outcome.pids_limit_hit && !r.outcome.stray_processes);

    // argv is argv: quotes, dollars and spaces arrive as they were given.
    let args = ["a b", "$HOME", "it's", "\"q\"", "`x`", ";", ""];
    let mut argv = vec!["printf", "[%s]\n"];
    argv.extend(args);
    let r = h
        .run(
            &id,
            ExecRequest::new(argv, ExecRequest::pid_file_for(&unique("aex"))),
        )
        .await;
    assert_eq!(r.outcome.exit_code, Some(0), "{}", r.stderr);
    let expected: String = args.iter().map(|a| format!("[{a}]\n")).collect();
    assert_eq!(r.stdout, expected);

    let r = h
        .run(
            &id,
            ExecRequest::new(
                ["no-such-program"],
                ExecRequest::pid_file_for(&unique("aex")),
            ),
        )
        .await;
    assert_eq!(r.outcome.exit_code, Some(127), "{}", r.stderr);

    let r = h.run(&id, sh("pwd").with_workdir("/tmp")).await;
    assert_eq!(r.stdout, "/tmp\n");
}

#[tokio::test]
async fn fork_bomb_is_contained_by_the_pids_limit() {
    let h = harness!();
    let id = h.container(&h.spec().with_pids_limit(48)).await;
    // Bounded: at most 200 short sleeps, whatever the limit; the limit stops it at 48.
    let r = h
        .sh(
            &id,
            "i=0; while [ $i -lt 200 ]; do sleep 2 & i=$((i+1)); done; wait",
        )
        .await;
    assert!(r.outcome.pids_limit_hit, "{:?} {}", r.outcome, r.stderr);
    assert_ne!(r.outcome.exit_code, Some(0));
    let state = h
        .engine
        .container_state(&id)
        .await
        .expect("state")
        .expect("exists");
    assert!(state.running, "the container survives");
    // Once the sleeps are gone, the container serves the next command, which sees no hit.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = h.sh(&id, "echo ok").await;
        if r.outcome.exit_code == Some(0) && r.stdout == "ok\n" {
            assert!(!r.outcome.pids_limit_hit);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "container never recovered: {:?}",
            r.outcome
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test]
async fn out_of_memory_is_reported_and_the_container_survives() {
    let h = harness!();
    let spec = h.spec().with_memory_bytes(64 * 1024 * 1024);
    let id = h.container(&spec).await;
    // Bounded: stops at 1 GiB even if no limit applied.
    let script = "b = []\nfor i in range(100):\n    b.append(b'x' * (10 * 1024 * 1024))\nprint('not killed')\n";
    let r = h
        .run(
            &id,
            ExecRequest::new(
                ["python3", "-c", script],
                ExecRequest::pid_file_for(&unique("aex")),
            ),
        )
        .await;
    assert_eq!(r.outcome.exit_code, Some(137), "{}", r.stdout);
    assert!(r.outcome.oom_killed, "{:?}", r.outcome);
    assert_eq!(
        r.outcome.kill_reason(&spec).as_deref(),
        Some("killed: out of memory (limit 64 MiB)")
    );
    let state = h
        .engine
        .container_state(&id)
        .await
        .expect("state")
        .expect("exists");
    assert!(state.running);
    // The engine's events agree (the fallback where cgroup counters cannot be read).
    let since = std::time::SystemTime::now() - Duration::from_secs(120);
    let deadline = Instant::now() + Duration::from_secs(5);
    while h.engine.oom_events_since(&id, since).await.expect("events") == 0 {
        assert!(Instant::now() < deadline, "no oom event for the container");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The next command is not blamed for the earlier OOM kill.
    let r = h.sh(&id, "echo fine").await;
    assert_eq!(r.outcome.exit_code, Some(0));
    assert!(!r.outcome.oom_killed);
}

#[tokio::test]
async fn timeout_kills_the_whole_process_tree() {
    let h = harness!();
    let id = h.container(&h.spec()).await;
    let started = Instant::now();
    let r = h
        .run(
            &id,
            sh("sleep 300 & sleep 300 & (sleep 300; echo never) & echo started; wait")
                .with_timeout(Duration::from_secs(1)),
        )
        .await;
    assert_eq!(r.outcome.ended, ExecEnd::TimedOut);
    assert_eq!(r.stdout, "started\n");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    assert!(!r.outcome.stray_processes, "{:?}", r.outcome);
    assert_eq!(r.outcome.exit_code, Some(143), "killed by SIGTERM");
    assert_eq!(leftover_processes(&h, &id).await, Vec::<String>::new());

    // A tree that ignores SIGTERM is killed after the grace period.
    let r = h
        .run(
            &id,
            sh("trap '' TERM; sleep 300 & sleep 300; wait")
                .with_timeout(Duration::from_millis(500))
                .with_kill_grace(Duration::from_secs(1)),
        )
        .await;
    assert_eq!(r.outcome.ended, ExecEnd::TimedOut);
    assert_eq!(r.outcome.exit_code, Some(137), "killed by SIGKILL");
    assert!(!r.outcome.stray_processes);
    assert_eq!(leftover_processes(&h, &id).await, Vec::<String>::new());
}

#[tokio::test]
async fn cancel_kills_the_whole_process_tree() {
    let h = harness!();
    let id = h.container(&h.spec()).await;
    let cancel = CancellationToken::new();
    let trigger = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        trigger.cancel();
    });
    let r = h
        .run_with(&id, sh("sleep 300 & sh -c 'sleep 300' & wait"), cancel)
        .await;
    assert_eq!(r.outcome.ended, ExecEnd::Cancelled);
    assert!(!r.outcome.stray_processes);
    assert_eq!(leftover_processes(&h, &id).await, Vec::<String>::new());

    // Cancelled before it starts: nothing runs.
    let cancel = CancellationToken::new();
    cancel.cancel();
    let r = h.run_with(&id, sh("touch /tmp/ran"), cancel).await;
    assert_eq!(r.outcome.ended, ExecEnd::Cancelled);
    assert_eq!(r.outcome.exit_code, None);
    let r = h.sh(&id, "test -e /tmp/ran").await;
    assert_eq!(r.outcome.exit_code, Some(1));
}

#[tokio::test]
async fn background_job_left_running_is_reported_and_kill_exec_ends_it() {
    let h = harness!();
    let id = h.container(&h.spec()).await;
    let req = sh("sleep 300 >/dev/null 2>&1 & echo bg");
    let pid_file = req.pid_file.clone();
    let r = h.run(&id, req).await;
    assert_eq!(r.outcome.exit_code, Some(0));
    if h.engine.agent_enabled() {
        // The agent kills what a command leaves behind when it ends, as the host kills a local
        // command's group: nothing is left to report or to kill.
        assert!(
            r.outcome.checked && !r.outcome.stray_processes,
            "{:?}",
            r.outcome
        );
        assert_eq!(leftover_processes(&h, &id).await, Vec::<String>::new());
        assert!(!h.engine.kill_exec(&id, &pid_file).await.expect("kill"));
        return;
    }
    assert!(r.outcome.stray_processes, "{:?}", r.outcome);
    assert!(h.engine.kill_exec(&id, &pid_file).await.expect("kill"));
    assert_eq!(leftover_processes(&h, &id).await, Vec::<String>::new());
    assert!(
        !h.engine
            .kill_exec(&id, &pid_file)
            .await
            .expect("kill again")
    );

    // With the check skipped on success, the caller checks before reuse.
    let req = sh("sleep 300 >/dev/null 2>&1 & echo bg").skip_check_on_success();
    let pid_file = req.pid_file.clone();
    let r = h.run(&id, req).await;
    assert_eq!(r.outcome.exit_code, Some(0));
    assert!(
        !r.outcome.checked && !r.outcome.stray_processes,
        "{:?}",
        r.outcome
    );
    assert!(
        h.engine
            .check_leftovers(&id, &pid_file)
            .await
            .expect("check")
    );
    assert!(h.engine.kill_exec(&id, &pid_file).await.expect("kill"));
    assert!(
        !h.engine
            .check_leftovers(&id, &pid_file)
            .await
            .expect("check")
    );
    // A failing command is checked anyway.
    let r = h.run(&id, sh("exit 2").skip_check_on_success()).await;
    assert!(r.outcome.checked);
}

#[tokio::test]
async fn kill_exec_stops_a_command_whose_client_is_gone() {
    let h = harness!();
    let id = h.container(&h.spec()).await;
    let req = sh("echo running; sleep 300");
    let pid_file = req.pid_file.clone();
    // The "lost" worker: an exec whose output nobody waits for.
    let engine = h.engine.clone();
    let cid = id.clone();
    let lost = tokio::spawn(async move {
        engine
            .exec(&cid, req, &mut |_, _| {}, CancellationToken::new())
            .await
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(h.engine.kill_exec(&id, &pid_file).await.expect("kill"));
    let outcome = tokio::time::timeout(Duration::from_secs(10), lost)
        .await
        .expect("exec ended")
        .expect("join")
        .expect("exec");
    assert_eq!(outcome.exit_code, Some(143));
    assert_eq!(leftover_processes(&h, &id).await, Vec::<String>::new());
    // No pid file, nothing to kill.
    assert!(
        !h.engine
            .kill_exec(&id, "/tmp/stigmer-never-written.pid")
            .await
            .expect("kill")
    );
}

#[tokio::test]
async fn labels_are_set_and_list_managed_filters_by_store() {
    let h = harness!();
    let other = Harness::new().await.expect("second harness");
    let a = h.container(&h.spec()).await;
    let b = h.container(&h.spec().with_network(Network::None)).await;
    let c = other.container(&other.spec()).await;

    let mut listed = h.engine.list_managed(&h.store).await.expect("list");
    listed.sort_by(|x, y| x.id.cmp(&y.id));
    let mut ids: Vec<&str> = listed.iter().map(|m| m.id.as_str()).collect();
    let mut want = vec![a.as_str(), b.as_str()];
    want.sort();
    ids.sort();
    assert_eq!(ids, want);
    assert!(!ids.contains(&c.as_str()));
    for m in &listed {
        assert_eq!(m.id.len(), 64);
        assert!(m.is_running());
        assert_eq!(
            m.labels.get(LABEL_MANAGED).map(String::as_str),
            Some("true")
        );
        assert_eq!(m.labels.get(LABEL_STORE), Some(&h.store));
        assert!(m.labels.contains_key(LABEL_LEASE));
        assert_eq!(
            m.labels.get(LABEL_WORKER).map(String::as_str),
            Some("test-worker")
        );
        assert_eq!(m.labels.get(LABEL_SPEC_HASH).map(String::len), Some(64));
        assert!(m.name.starts_with("stigmer-test-"));
        assert!(m.created > 0);
    }
    let listed_b = listed.iter().find(|m| m.id == b).expect("b");
    assert_eq!(
        listed_b.labels.get(LABEL_SPEC_HASH),
        Some(&h.spec().with_network(Network::None).spec_hash())
    );

    // Stop keeps it (listed, not running); remove drops it; both are idempotent.
    h.engine.stop_container(&a).await.expect("stop");
    h.engine.stop_container(&a).await.expect("stop again");
    let state = h
        .engine
        .container_state(&a)
        .await
        .expect("state")
        .expect("exists");
    assert!(!state.running);
    h.engine.remove_container(&a).await.expect("remove");
    h.engine
        .remove_container(&a)
        .await
        .expect("remove missing is Ok");
    assert_eq!(h.engine.container_state(&a).await.expect("state"), None);
    h.engine
        .stop_container(&a)
        .await
        .expect("stop missing is Ok");
    let listed = h.engine.list_managed(&h.store).await.expect("list");
    assert_eq!(listed.len(), 1);
}

#[tokio::test]
async fn create_is_idempotent_per_name() {
    let h = harness!();
    let labels = h.labels("lease-same");
    let name = format!("stigmer-test-{}", unique("same"));
    let first = h
        .engine
        .create_container(&h.spec(), &labels, &name)
        .await
        .expect("create");
    let again = h
        .engine
        .create_container(&h.spec(), &labels, &name)
        .await
        .expect("create again");
    assert_eq!(first, again);
    // Another lease's container under the same name is a conflict, not an adoption.
    let err = h
        .engine
        .create_container(&h.spec(), &h.labels("lease-other"), &name)
        .await
        .expect_err("conflict");
    assert_eq!(err.status_code(), Some(409), "{err}");
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn workspace_is_writable_and_credentials_are_read_only() {
    let h = harness!();
    let ws = tempfile::tempdir().expect("tempdir");
    let creds = tempfile::tempdir().expect("tempdir");
    for d in [ws.path(), creds.path()] {
        std::fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o777))
            .expect("chmod");
    }
    std::fs::write(creds.path().join("config"), "secret").expect("write");
    let spec = h
        .spec()
        .with_workspace(ws.path())
        .with_credential_mount(creds.path(), "/home/sandbox/.aws");
    let id = h.container(&spec).await;
    let r = h
        .sh(
            &id,
            "echo hi > /workspace/out.txt && cat /home/sandbox/.aws/config",
        )
        .await;
    assert_eq!(r.outcome.exit_code, Some(0), "{}", r.stderr);
    assert_eq!(r.stdout, "secret");
    assert_eq!(
        std::fs::read_to_string(ws.path().join("out.txt")).expect("read"),
        "hi\n"
    );
    let r = h.sh(&id, "echo x > /home/sandbox/.aws/config").await;
    assert_ne!(r.outcome.exit_code, Some(0));
    assert!(r.stderr.contains("Read-only"), "{}", r.stderr);
}

#[tokio::test]
async fn the_docker_socket_is_never_mounted() {
    let h = harness!();
    for source in ["/var/run/docker.sock", "/var/run", "/"] {
        if !std::path::Path::new(source).exists() {
            continue;
        }
        for spec in [
            h.spec().with_workspace(source),
            h.spec().with_credential_mount(source, "/mnt/x"),
        ] {
            let err = h
                .engine
                .create_container(
                    &spec,
                    &h.labels("l"),
                    &format!("stigmer-test-{}", unique("sock")),
                )
                .await
                .expect_err(source);
            assert!(matches!(err, EngineError::InvalidSpec(_)), "{err}");
            assert!(!err.is_retryable());
        }
    }
    assert!(
        h.engine
            .list_managed(&h.store)
            .await
            .expect("list")
            .is_empty()
    );
}

#[tokio::test]
async fn engine_id_is_stable() {
    let h = harness!();
    let a = h.engine.engine_id().await.expect("id");
    let b = stigmer_docker::Engine::connect()
        .await
        .expect("connect")
        .engine_id()
        .await
        .expect("id");
    assert!(!a.is_empty());
    assert_eq!(a, b);
}

#[tokio::test]
async fn connect_to_a_missing_socket_says_what_to_do() {
    let err = stigmer_docker::Engine::connect_to("unix:///nonexistent/docker.sock")
        .await
        .expect_err("no engine there");
    let msg = err.to_string();
    assert!(
        msg.contains("no Docker engine answered at unix:///nonexistent/docker.sock"),
        "{msg}"
    );
    assert!(msg.contains("--mode local"), "{msg}");
    assert!(err.is_retryable());
}

#[tokio::test]
async fn a_command_that_kills_everything_it_can_taints_the_container() {
    let h = harness!();
    let id = h.container(&h.spec()).await;
    // SIGKILL to every process uid 1000 may signal. The agent is PID 1, which kill(-1) spares:
    // the container stays up, clean, and serves the next command.
    let r = h.sh(&id, "kill -KILL -1").await;
    if h.engine.agent_enabled() {
        assert!(!r.outcome.stray_processes, "{:?}", r.outcome);
        let next = h.sh(&id, "echo alive").await;
        assert_eq!(next.stdout, "alive\n", "{:?}", next.outcome);
        return;
    }
    // Without the agent the keep-alive (`sleep infinity`) dies, and the container stops.
    assert!(r.outcome.stray_processes, "{:?}", r.outcome);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let state = h
            .engine
            .container_state(&id)
            .await
            .expect("state")
            .expect("exists");
        if !state.running {
            break;
        }
        assert!(Instant::now() < deadline, "container still running");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // An exec in a stopped container is refused before anything runs, and says so.
    let err = h
        .engine
        .exec(&id, sh("true"), &mut |_, _| {}, CancellationToken::new())
        .await
        .expect_err("stopped");
    assert_eq!(err.status_code(), Some(409), "{err}");
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn a_missing_working_directory_fails_the_command_not_the_engine() {
    let h = harness!();
    let id = h.container(&h.spec()).await;
    let r = h.run(&id, sh("pwd").with_workdir("/does/not/exist")).await;
    assert_eq!(r.outcome.exit_code, Some(126), "{:?}", r.outcome);
    // The engine reports this on the exec's stdout stream (Docker 20.10 frames it as stdout).
    let said = format!("{}{}", r.stdout, r.stderr);
    assert!(said.contains("/does/not/exist"), "{said}");
    // The container is fine for the next command.
    assert_eq!(h.sh(&id, "true").await.outcome.exit_code, Some(0));
}

#[tokio::test]
async fn channel_output_with_a_slow_receiver_still_times_out() {
    let h = harness!();
    let id = h.container(&h.spec()).await;
    let (tx, mut rx) = tokio::sync::mpsc::channel(1);
    let reader = tokio::spawn(async move {
        let mut bytes = 0usize;
        while let Some(chunk) = rx.recv().await {
            let chunk: stigmer_docker::OutputChunk = chunk;
            bytes += chunk.data.len();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bytes
    });
    let started = Instant::now();
    let outcome = h
        .engine
        .exec_to_channel(
            &id,
            sh("yes stigmer").with_timeout(Duration::from_secs(1)),
            tx,
            CancellationToken::new(),
        )
        .await
        .expect("exec");
    assert_eq!(outcome.ended, ExecEnd::TimedOut);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    assert!(reader.await.expect("reader") > 0);
    assert_eq!(leftover_processes(&h, &id).await, Vec::<String>::new());

    // A receiver that goes away does not stop the command from finishing.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    drop(rx);
    let outcome = h
        .engine
        .exec_to_channel(
            &id,
            sh("head -c 10000000 /dev/zero; exit 4"),
            tx,
            CancellationToken::new(),
        )
        .await
        .expect("exec");
    assert_eq!(outcome.exit_code, Some(4));
}

#[tokio::test]
async fn read_only_root_keeps_tmp_writable_and_exec_working() {
    let h = harness!();
    let id = h.container(&h.spec().with_readonly_rootfs(true)).await;
    let r = h
        .sh(&id, "echo x > /tmp/ok && cat /tmp/ok && echo y > /etc/nope")
        .await;
    assert_eq!(r.stdout, "x\n");
    assert_ne!(r.outcome.exit_code, Some(0));
    assert!(r.stderr.contains("Read-only file system"), "{}", r.stderr);
    assert!(r.outcome.checked && !r.outcome.stray_processes);
}

#[tokio::test]
async fn the_agent_keeps_the_container_and_commands_cannot_touch_it() {
    let h = harness!();
    if !h.engine.agent_enabled() {
        eprintln!("SKIPPED: the agent is off in this run");
        return;
    }
    let id = h.container(&h.spec()).await;
    let inspect = h
        .engine
        .docker()
        .inspect_container(&id, None)
        .await
        .expect("inspect");
    let config = inspect.config.expect("config");
    assert_eq!(config.cmd, Some(vec![AGENT_PATH.to_string()]));
    assert_eq!(
        config
            .labels
            .expect("labels")
            .get(LABEL_AGENT)
            .map(String::as_str),
        Some(stigmer_docker::AGENT_PROTOCOL)
    );
    // Its output (the commands' output) is kept by no log driver.
    let log = inspect
        .host_config
        .and_then(|c| c.log_config)
        .and_then(|l| l.typ);
    assert_eq!(log.as_deref(), Some("none"));
    // Root-owned and not writable: no command replaces what runs the next one; not dumpable:
    // no command reads its memory (where the next request's environment passes) or its stdio.
    let r = h
        .sh(
            &id,
            "stat -c '%u %a' /.stigmer/agent; echo x >> /.stigmer/agent && echo WROTE; \
             p=$(pgrep -x agent); cat /proc/$p/environ >/dev/null && echo READ; \
             ls -l /proc/$p/fd/ >/dev/null 2>&1 && echo FDS; echo $p",
        )
        .await;
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert!(
        lines.first().is_some_and(|l| l.ends_with(" 755")),
        "{}{}",
        r.stdout,
        r.stderr
    );
    assert!(!r.stdout.contains("WROTE"), "{}", r.stdout);
    assert!(!r.stdout.contains("READ"), "{}", r.stdout);
    assert!(!r.stdout.contains("FDS"), "{}", r.stdout);
    assert!(
        lines.last().is_some_and(|p| p.parse::<u32>().is_ok()),
        "{}{}",
        r.stdout,
        r.stderr
    );
    // Idle, the container holds the agent (its PID 1) and nothing else.
    assert_eq!(leftover_processes(&h, &id).await, Vec::<String>::new());
    assert_eq!(h.engine.processes(&id).await.expect("top").len(), 1);
    // Bind-mounted read-only from this host, not copied in.
    let mount = inspect
        .mounts
        .unwrap_or_default()
        .into_iter()
        .find(|m| m.destination.as_deref() == Some(AGENT_PATH))
        .expect("the agent is bind-mounted");
    assert_eq!(mount.rw, Some(false));
}

#[tokio::test]
async fn without_an_agent_dir_the_agent_is_copied_in_and_serves_alike() {
    let h = harness!();
    if !h.engine.agent_enabled() {
        eprintln!("SKIPPED: the agent is off in this run");
        return;
    }
    let engine = stigmer_docker::Engine::connect().await.expect("engine");
    let lease = common::unique("lease");
    let id = engine
        .create_container(
            &h.spec(),
            &h.labels(&lease),
            &format!("stigmer-test-{lease}"),
        )
        .await
        .expect("create");
    let inspect = engine
        .docker()
        .inspect_container(&id, None)
        .await
        .expect("inspect");
    assert_eq!(
        inspect.config.and_then(|c| c.cmd),
        Some(vec![AGENT_PATH.to_string()])
    );
    assert!(
        !inspect
            .mounts
            .unwrap_or_default()
            .iter()
            .any(|m| m.destination.as_deref() == Some(AGENT_PATH))
    );
    let mut out = Vec::new();
    let outcome = engine
        .exec(
            &id,
            sh("stat -c %u /.stigmer/agent; echo x >> /.stigmer/agent || echo refused; exit 4"),
            &mut |kind, b| {
                if kind == stigmer_docker::StreamKind::Stdout {
                    out.extend_from_slice(b);
                }
            },
            CancellationToken::new(),
        )
        .await
        .expect("exec");
    assert_eq!(outcome.exit_code, Some(4));
    assert!(outcome.exec_id.starts_with("agent:"), "{outcome:?}");
    assert_eq!(String::from_utf8_lossy(&out), "0\nrefused\n");
}

#[tokio::test]
async fn after_its_last_command_the_container_stops_by_itself() {
    let h = harness!();
    let id = h.container(&h.spec()).await;
    let r = h.run(&id, sh("echo bye; exit 5").last_command()).await;
    assert_eq!(r.outcome.exit_code, Some(5), "{:?}", r.outcome);
    assert_eq!(r.stdout, "bye\n");
    if !h.engine.agent_enabled() {
        // docker exec cannot end the container's keep-alive: it keeps running.
        let state = h
            .engine
            .container_state(&id)
            .await
            .expect("state")
            .expect("exists");
        assert!(state.running);
        return;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while h
        .engine
        .container_state(&id)
        .await
        .expect("state")
        .is_some_and(|s| s.running)
    {
        assert!(Instant::now() < deadline, "the container kept running");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    h.engine.remove_container(&id).await.expect("remove");
}
