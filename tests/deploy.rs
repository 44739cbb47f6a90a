//! The files that deploy and publish stigmer: docker-compose.yml, deploy/Dockerfile.worker and
//! the GitHub workflows.
//!
//! - The workflows pass two linters from PyPI that work offline: check-jsonschema against
//!   GitHub's workflow schema, and zizmor's security audits (pinned actions, no template
//!   injection, least privilege). `scripts/test.sh` installs both.
//! - `docker compose config` accepts the compose file, and it wires the workers to Temporal, the
//!   Postgres store and the host's Docker engine.
//! - The whole stack comes up from images made here without a registry
//!   (deploy/offline/build.sh: the worker image from deploy/Dockerfile.worker on the offline
//!   base, Debian's PostgreSQL, the Temporal CLI's dev server), two workers serve `stigmer run`
//!   from this host in local and sandbox mode, and nothing is left behind.

mod common;

use common::{Env, eventually, free_port, path_str, text};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("could not start {cmd:?}: {e} (scripts/test.sh installs it)"))
}

fn describe(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        text(&out.stdout),
        text(&out.stderr)
    )
}

/// `docker compose` (v2) where the plugin is installed, else `docker-compose` (v1).
fn compose() -> Command {
    let v2 = Command::new("docker")
        .args(["compose", "version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if v2 {
        let mut cmd = Command::new("docker");
        cmd.arg("compose");
        cmd
    } else {
        Command::new("docker-compose")
    }
}

fn lint_workflows(dir: &Path) -> (Output, Output) {
    let files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yml"))
        .collect();
    assert!(!files.is_empty(), "no workflows in {}", dir.display());
    let schema = run(Command::new("check-jsonschema")
        .args(["--builtin-schema", "vendor.github-workflows"])
        .args(&files));
    let audit = run(Command::new("zizmor")
        .args(["--offline", "--no-progress"])
        .args(&files)
        .env("NO_COLOR", "1"));
    (schema, audit)
}

#[test]
fn the_github_workflows_pass_the_workflow_linters() {
    let workflows = repo().join(".github/workflows");
    let (schema, audit) = lint_workflows(&workflows);
    assert!(schema.status.success(), "schema: {}", describe(&schema));
    assert!(audit.status.success(), "zizmor: {}", describe(&audit));

    let ci = std::fs::read_to_string(workflows.join("ci.yml")).unwrap();
    for needle in ["make test", "cargo fmt --all -- --check", "cargo clippy"] {
        assert!(ci.contains(needle), "ci.yml runs {needle}");
    }
    let publish = std::fs::read_to_string(workflows.join("publish-sandbox.yml")).unwrap();
    for needle in [
        "workflow_dispatch:",
        "platforms: linux/amd64,linux/arm64",
        "agent-sandbox-basic:${{ inputs.version }}",
        "agent-sandbox-basic:latest",
        "agent-sandbox-full:latest",
    ] {
        assert!(publish.contains(needle), "publish-sandbox.yml has {needle}");
    }

    // The linters are not rubber stamps: a job without runs-on fails the schema, and a version
    // pasted into a shell script (template injection) fails the audit.
    let no_runner = tempfile::tempdir().unwrap();
    std::fs::write(
        no_runner.path().join("bad.yml"),
        publish.replacen("    runs-on: ubuntu-24.04\n", "", 1),
    )
    .unwrap();
    let (schema, _) = lint_workflows(no_runner.path());
    assert!(!schema.status.success(), "schema: {}", describe(&schema));
    let injected = tempfile::tempdir().unwrap();
    std::fs::write(
        injected.path().join("bad.yml"),
        publish.replacen(
            "run: |\n",
            "run: |\n          echo ${{ inputs.version }}\n",
            1,
        ),
    )
    .unwrap();
    let (schema, audit) = lint_workflows(injected.path());
    assert!(schema.status.success(), "schema: {}", describe(&schema));
    assert!(
        !audit.status.success() && text(&audit.stdout).contains("template-injection"),
        "zizmor: {}",
        describe(&audit)
    );
}

#[test]
fn compose_config_accepts_the_file_and_wires_workers_to_temporal_postgres_and_docker() {
    let out = run(compose()
        .current_dir(repo())
        .args(["-f", "docker-compose.yml", "config"])
        .env("POSTGRES_PASSWORD", "s3cret"));
    assert!(out.status.success(), "{}", describe(&out));
    let config = text(&out.stdout);
    for needle in [
        "/var/run/docker.sock:/var/run/docker.sock",
        "TEMPORAL_ADDRESS: temporal:7233",
        "STIGMER_CODEC_KEY_FILE: /etc/stigmer/codec.key",
        "/etc/stigmer/codec.key",
        "STIGMER_DATABASE_URL: postgres://stigmer:s3cret@postgres:5432/stigmer",
        "POSTGRES_PWD: s3cret",
        "DB: postgres12",
        "dockerfile: deploy/Dockerfile.worker",
        "condition: service_healthy",
        "127.0.0.1",
    ] {
        assert!(config.contains(needle), "missing {needle:?} in:\n{config}");
    }

    // A broken file is refused (the check is real).
    let dir = tempfile::tempdir().unwrap();
    let original = std::fs::read_to_string(repo().join("docker-compose.yml")).unwrap();
    std::fs::write(
        dir.path().join("docker-compose.yml"),
        original.replacen("    depends_on:\n", "    depends_on: [[\n", 1),
    )
    .unwrap();
    let out = run(compose()
        .current_dir(dir.path())
        .args(["-f", "docker-compose.yml", "config"]));
    assert!(!out.status.success(), "{}", describe(&out));
}

/// Tears the stack down (volumes too) and removes the sandbox containers its workers made.
struct Stack<'a> {
    project: String,
    env: &'a Env,
    compose_env: Vec<(String, String)>,
}

impl Stack<'_> {
    fn compose(&self, args: &[&str]) -> Output {
        let mut cmd = compose();
        cmd.current_dir(repo())
            .args(["-f", "docker-compose.yml", "-p", &self.project])
            .args(args);
        for (k, v) in &self.compose_env {
            cmd.env(k, v);
        }
        run(&mut cmd)
    }
}

impl Drop for Stack<'_> {
    fn drop(&mut self) {
        // Read before `down`: the store lives in the stack's Postgres.
        let leases = common::leases(self.env, true);
        let logs = self.compose(&["logs", "--no-color", "--tail", "40", "worker"]);
        if std::thread::panicking() {
            eprintln!("worker logs:\n{}", text(&logs.stdout));
        }
        let _ = self.compose(&["down", "--volumes", "--remove-orphans", "--timeout", "5"]);
        common::remove_lease_containers(&leases);
    }
}

#[test]
fn the_stack_comes_up_from_offline_images_and_its_workers_run_commands() {
    // The offline base where it was made (scripts/test.sh does without a registry), else
    // Debian's own image from the registry.
    let base = std::env::var("STIGMER_BASE_IMAGE").unwrap_or_else(|_| {
        let offline = Command::new("docker")
            .args(["image", "inspect", "stigmer-base:bookworm"])
            .output()
            .is_ok_and(|o| o.status.success());
        if offline {
            "stigmer-base:bookworm"
        } else {
            "debian:bookworm-slim"
        }
        .into()
    });
    let Ok(sandbox_image) = std::env::var("STIGMER_TEST_SANDBOX_IMAGE") else {
        eprintln!("skipped: STIGMER_TEST_SANDBOX_IMAGE is not set (scripts/test.sh sets it)");
        return;
    };
    let built = run(Command::new(repo().join("deploy/offline/build.sh")).args([
        "--stigmer-bin",
        common::BIN,
        "--base",
        &base,
    ]));
    assert!(built.status.success(), "{}", describe(&built));

    let mut env = Env::new();
    let (pg_port, temporal_port) = (free_port(), free_port());
    env.extra.extend([
        (
            "TEMPORAL_ADDRESS".to_string(),
            format!("127.0.0.1:{temporal_port}"),
        ),
        (
            "STIGMER_DATABASE_URL".to_string(),
            format!("postgres://stigmer:stigmer@127.0.0.1:{pg_port}/stigmer"),
        ),
        ("STIGMER_SANDBOX_IMAGE".to_string(), sandbox_image),
        ("STIGMER_SANDBOX_AUTO_PULL".to_string(), "false".to_string()),
    ]);
    // The cluster's payload key, made here before the stack comes up; the workers read it
    // through the compose file's mount, the client from here.
    let key_file = env.dir.path().join("codec.key");
    env.extra
        .push(("STIGMER_CODEC_KEY_FILE".to_string(), path_str(&key_file)));
    let key = env.stigmer(&["codec", "key", "--output", "json"]);
    assert!(key.status.success(), "{}", describe(&key));
    let stack = Stack {
        project: format!("stigmer-deploy-test-{}", std::process::id()),
        env: &env,
        compose_env: vec![
            ("STIGMER_WORKER_IMAGE".into(), "stigmer-worker:local".into()),
            ("POSTGRES_IMAGE".into(), "stigmer-postgres:local".into()),
            ("TEMPORAL_IMAGE".into(), "stigmer-temporal-dev:local".into()),
            ("STIGMER_POSTGRES_PORT".into(), pg_port.to_string()),
            ("TEMPORAL_PORT".into(), temporal_port.to_string()),
            // The client runs here, in a directory the workers see at the same path.
            ("STIGMER_WORKSPACES".into(), path_str(env.dir.path())),
            ("RUST_LOG".into(), "info".into()),
            ("STIGMER_CODEC_KEY_FILE".into(), path_str(&key_file)),
        ],
    };
    let up = stack.compose(&[
        "up",
        "-d",
        "--no-build",
        "--scale",
        "worker=2",
        "postgres",
        "temporal",
        "worker",
    ]);
    assert!(up.status.success(), "{}", describe(&up));
    let ps = stack.compose(&["ps", "-q", "worker"]);
    let workers: Vec<String> = text(&ps.stdout).lines().map(str::to_string).collect();
    assert_eq!(workers.len(), 2, "two workers: {}", describe(&ps));

    // Ready when both workers say they poll (they have made the store's tables by then).
    assert!(
        eventually(Duration::from_secs(180), || {
            let logs = stack.compose(&["logs", "--no-color", "worker"]);
            text(&logs.stdout)
                .matches("polling task queue stigmer")
                .count()
                >= 2
        }),
        "the workers never started polling"
    );

    // Local mode runs inside a worker container: its hostname is the container's short id.
    let out = env.stigmer(&["run", "--mode", "local", "test -f /.dockerenv && hostname"]);
    assert!(out.status.success(), "{}", describe(&out));
    let host = text(&out.stdout).trim().to_string();
    assert!(
        host.len() >= 12 && workers.iter().any(|w| w.starts_with(&host)),
        "ran in a worker container ({host}), not in {workers:?}"
    );

    // Sandbox mode: a hardened container made by a worker through the host's engine, with the
    // workspace (the same path on the host and in the workers) handed back afterwards.
    let ws = env.dir.path().join("project");
    std::fs::create_dir_all(&ws).unwrap();
    let out = env.stigmer(&[
        "run",
        "--mode",
        "sandbox",
        "--workspace",
        &path_str(&ws),
        "id -u; echo made > out.txt; exit 7",
    ]);
    assert_eq!(out.status.code(), Some(7), "{}", describe(&out));
    assert_eq!(text(&out.stdout).trim(), "1000");
    assert_eq!(
        std::fs::read_to_string(ws.join("out.txt")).unwrap(),
        "made\n"
    );

    let last = env.last_execution();
    assert_eq!(last["exit_code"], 7, "{last}");
    assert_eq!(last["effective_mode"], "sandbox", "{last}");
}
