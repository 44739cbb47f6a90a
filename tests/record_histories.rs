//! Records the workflow histories that `workflows/tests/replay.rs` replays: one execution of
//! every path the `AgentExecution` workflow can take, run for real (daemon, remote worker,
//! Docker, the fake Daytona server), then fetched with the SDK's own serde JSON
//! (`fetch_history(..).to_json()`) into `workflows/histories/<name>.json`.
//!
//! Not part of `make test`: it rewrites the recorded files. Run it when a release adds a path
//! worth guarding, on the code that release ships, and commit the new files beside the old ones
//! (old histories stay: they are the in-flight executions an upgrade must still carry):
//!
//! ```sh
//! STIGMER_RECORD_HISTORIES=1 STIGMER_TEST_SANDBOX_IMAGE=stigmer-sandbox-basic:local \
//!   cargo test --test record_histories -- --nocapture [record_public]
//! ```
//!
//! A name already recorded is never overwritten: the new file gets the next free `-N` suffix.
//! Payloads are saved decoded with the environment's codec key (as `temporal workflow show
//! --codec-endpoint` shows them, with the codec's decrypted mark), so the replay runs without
//! the key and the payload check reads them.

mod common;

use common::{
    Children, Env, RemoveContainers, eventually, processes_matching, remote_env, start_temporal,
    start_worker, text, wait_output, wait_terminal,
};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use temporalio_client::{
    Client, ClientOptions, Connection, ConnectionOptions, UntypedWorkflow,
    WorkflowFetchHistoryOptions,
};

fn out_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("workflows/histories")
}

/// Fetches the history of execution `id` from `env`'s Temporal server and writes it, its
/// payloads decoded with `env`'s codec key.
fn save(env: &Env, id: &str, name: &str) {
    save_workflow(env, &stigmer_workflows::workflow_id(id), name);
}

/// The codec of `env`'s key file.
fn codec_of(env: &Env) -> stigmer::codec::Codec {
    let out = env.stigmer(&["codec", "key", "--output", "json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let key: serde_json::Value = serde_json::from_slice(&out.stdout).expect("codec key JSON");
    let file = key["key_file"].as_str().expect("key_file");
    let keys =
        stigmer::codec::Keyring::load_or_create(std::path::Path::new(file)).expect("the codec key");
    stigmer::codec::Codec::new(keys)
}

/// Every encrypted payload in `value` (a history in the SDK's serde JSON), decrypted.
fn decode_payloads(value: &mut serde_json::Value, codec: &stigmer::codec::Codec) {
    use temporalio_common::protos::temporal::api::common::v1::Payload;
    match value {
        serde_json::Value::Object(map)
            if map.contains_key("data") && map.contains_key("metadata") =>
        {
            if let Ok(payload) = serde_json::from_value::<Payload>(value.clone())
                && payload.metadata.get("encoding").map(Vec::as_slice)
                    == Some(b"binary/encrypted".as_slice())
            {
                let mut payload = codec.decrypt(payload);
                redact_env(&mut payload.data);
                *value = serde_json::to_value(payload).expect("payload JSON");
            }
        }
        serde_json::Value::Object(map) => map.values_mut().for_each(|v| decode_payloads(v, codec)),
        serde_json::Value::Array(items) => items.iter_mut().for_each(|v| decode_payloads(v, codec)),
        _ => {}
    }
}

/// The values of an input's `env` (the recorder's own environment, in a local run), replaced:
/// a committed history must not carry them, and replay needs only their shape.
fn redact_env(data: &mut Vec<u8>) {
    let Ok(mut json) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let Some(env) = json.get_mut("env") else {
        return;
    };
    let redacted = |v: &mut serde_json::Value| *v = serde_json::Value::from("redacted");
    match env {
        // ExecutionInput: a list of [name, value] pairs.
        serde_json::Value::Array(pairs) => pairs
            .iter_mut()
            .filter_map(|pair| pair.get_mut(1))
            .for_each(redacted),
        // PublicInput: an object.
        serde_json::Value::Object(map) => map.values_mut().for_each(redacted),
        _ => return,
    }
    *data = serde_json::to_vec(&json).expect("JSON");
}

/// Where a recording named `name` goes: `name.json`, or the first free `name-N.json`.
fn free_path(name: &str) -> PathBuf {
    let mut path = out_dir().join(format!("{name}.json"));
    let mut n = 2;
    while path.exists() {
        path = out_dir().join(format!("{name}-{n}.json"));
        n += 1;
    }
    path
}

/// Fetches the history of workflow `wf_id` and writes it, decoded.
fn save_workflow(env: &Env, wf_id: &str, name: &str) {
    let port = env.port;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let json = runtime.block_on(async {
        let url = url::Url::parse(&format!("http://127.0.0.1:{port}")).expect("url");
        let connection = Connection::connect(ConnectionOptions::new(url).build())
            .await
            .expect("connect to Temporal");
        let client = Client::new(connection, ClientOptions::new("default").build())
            .expect("Temporal client");
        let handle = client.get_workflow_handle::<UntypedWorkflow>(wf_id);
        handle
            .fetch_history(WorkflowFetchHistoryOptions::default())
            .to_json()
            .await
            .expect("fetch the history")
    });
    let mut value: serde_json::Value = serde_json::from_slice(&json).expect("history JSON");
    decode_payloads(&mut value, &codec_of(env));
    std::fs::create_dir_all(out_dir()).expect("histories dir");
    let path = free_path(name);
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&value).expect("pretty JSON") + "\n",
    )
    .expect("write the history");
    eprintln!("recorded {name}: {wf_id} -> {}", path.display());
}

fn run_ok(env: &Env, args: &[&str]) -> String {
    let out = env.stigmer(args);
    eprintln!(
        "{args:?}: exit {:?}, stderr {}",
        out.status.code(),
        text(&out.stderr)
    );
    env.last_execution()["id"].as_str().expect("id").to_string()
}

fn image() -> String {
    std::env::var("STIGMER_TEST_SANDBOX_IMAGE")
        .unwrap_or_else(|_| "stigmer-sandbox-basic:local".into())
}

/// Starts `stigmer run ARGS`, waits for `started` on its stdout, sends SIGINT; the id.
fn cancelled(env: &Env, args: &[&str]) -> String {
    let mut child = env
        .cmd()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("stigmer run");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut buf = [0u8; 16];
    let n = std::io::Read::read(&mut stdout, &mut buf).expect("read");
    assert_eq!(&buf[..n], b"started\n");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .expect("SIGINT");
    let out = wait_output(child, Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(130), "{}", text(&out.stderr));
    env.last_execution()["id"].as_str().expect("id").to_string()
}

#[test]
fn record() {
    if std::env::var("STIGMER_RECORD_HISTORIES").is_err() {
        eprintln!(
            "skipped: set STIGMER_RECORD_HISTORIES=1 to record (rewrites workflows/histories)"
        );
        return;
    }

    // The daemon: local paths, and the sandbox's ready-host and warm paths.
    let mut env = Env::new();
    env.extra.push(("STIGMER_SANDBOX_IMAGE".into(), image()));
    env.extra
        .push(("STIGMER_SANDBOX_AUTO_PULL".into(), "false".into()));
    let _cleanup = RemoveContainers(&env);
    let id = run_ok(&env, &["run", "echo hi; echo oops >&2; exit 3"]);
    save(&env, &id, "local");
    let id = run_ok(&env, &["run", "--timeout", "1", "sleep 30"]);
    save(&env, &id, "local-timeout");
    let id = cancelled(&env, &["run", "echo started; sleep 300"]);
    save(&env, &id, "local-cancel");
    let id = run_ok(&env, &["run", "--mode", "sandbox", "echo cold"]);
    save(&env, &id, "sandbox-ready-host");
    let id = run_ok(&env, &["run", "--mode", "sandbox", "echo warm"]);
    save(&env, &id, "sandbox-warm");
    // The warm container gone behind the store's back: exec finds none, the long way follows.
    let container = env.show(&id)["container_id"]
        .as_str()
        .expect("container")
        .to_string();
    let _ = std::process::Command::new("docker")
        .args(["rm", "-f", &container])
        .output();
    let id = run_ok(&env, &["run", "--mode", "sandbox", "echo fallback"]);
    save(&env, &id, "sandbox-warm-fallback");
    let id = run_ok(
        &env,
        &["run", "--mode", "sandbox", "--timeout", "1", "sleep 30"],
    );
    save(&env, &id, "sandbox-timeout");
    let id = cancelled(
        &env,
        &["run", "--mode", "sandbox", "echo started; sleep 300"],
    );
    save(&env, &id, "sandbox-cancel");
    // A comment-only requirements file: the derived image is built without a package index.
    let req = env.dir.path().join("requirements.txt");
    std::fs::write(&req, format!("# {}\n", ulid::Ulid::new())).expect("requirements");
    let id = run_ok(
        &env,
        &[
            "run",
            "--mode",
            "sandbox",
            "--requirements",
            req.to_str().expect("utf-8 path"),
            "echo requirements",
        ],
    );
    save(&env, &id, "sandbox-requirements");
    drop(_cleanup);
    drop(env);

    // A remote cluster: the long sandbox path, a lost worker, --retry-exec.
    let mut env = remote_env();
    env.extra.push(("STIGMER_SANDBOX_IMAGE".into(), image()));
    env.extra
        .push(("STIGMER_SANDBOX_AUTO_PULL".into(), "false".into()));
    let _cleanup = RemoveContainers(&env);
    let mut children = Children(vec![start_temporal(&env)]);
    children.0.push(start_worker(&env));
    assert!(eventually(Duration::from_secs(90), || env
        .stigmer(&["executions", "list"])
        .status
        .success()));
    let id = run_ok(&env, &["run", "--mode", "sandbox", "echo long"]);
    save(&env, &id, "sandbox-long");

    let out = env.stigmer(&["run", "--no-follow", "sleep 4747.4747"]);
    let id = text(&out.stdout).trim().to_string();
    wait_started(&env, &id, "sleep 4747.4747");
    children.0[1].kill().expect("kill");
    children.0[1].wait().expect("wait");
    children.0.push(start_worker(&env));
    wait_terminal(&env, &id, Duration::from_secs(60));
    save(&env, &id, "local-worker-lost");

    let out = env.stigmer(&[
        "run",
        "--no-follow",
        "--retry-exec",
        "echo attempt >> attempts.txt; if [ $(wc -l < attempts.txt) -lt 2 ]; then sleep 4848.4848; fi; echo done",
    ]);
    let id = text(&out.stdout).trim().to_string();
    wait_started(&env, &id, "sleep 4848.4848");
    let last = children.0.len() - 1;
    children.0[last].kill().expect("kill");
    children.0[last].wait().expect("wait");
    children.0.push(start_worker(&env));
    wait_terminal(&env, &id, Duration::from_secs(60));
    save(&env, &id, "local-retry-exec");
    drop(_cleanup);
    drop(env);
    drop(children);

    // Cloud mode against the fake Daytona server.
    let fake = common::start_fake();
    let env = common::cloud_env(&fake.fake);
    let id = run_ok(&env, &["run", "--mode", "cloud", "echo cloud"]);
    save(&env, &id, "cloud");
}

/// The paths of the public input (docs/temporal-api.md), started by the official Python SDK
/// with the sample codec, and the refusals of what the worker must not run.
#[test]
fn record_public() {
    if std::env::var("STIGMER_RECORD_HISTORIES").is_err() {
        eprintln!("skipped: set STIGMER_RECORD_HISTORIES=1 to record");
        return;
    }
    let mut env = Env::new();
    env.extra.push(("STIGMER_SANDBOX_IMAGE".into(), image()));
    env.extra
        .push(("STIGMER_SANDBOX_AUTO_PULL".into(), "false".into()));
    let _cleanup = RemoveContainers(&env);
    // The CLI's own input under the encrypted-input patch.
    let id = run_ok(&env, &["run", "echo encrypted"]);
    save(&env, &id, "encrypted-local");
    let id = run_ok(&env, &["run", "--mode", "sandbox", "echo encrypted"]);
    save(&env, &id, "encrypted-sandbox-ready-host");

    let start = |wf: &str, input: serde_json::Value, extra: &[&str]| {
        let printed = common::python_start(&env, wf, &input, extra);
        eprintln!("{wf}: {printed}");
        save_workflow(
            &env,
            wf,
            &format!("public-{}", wf.trim_start_matches("rec-")),
        );
    };
    let wf = |name: &str| format!("rec-{name}");
    start(
        &wf("local"),
        serde_json::json!({"version": 1, "argv": ["sh", "-c", "echo out; echo err >&2; exit 4"],
            "env": {"GREETING": "hi"}, "labels": {"team": "payments"}, "workflow_id": wf("local")}),
        &["--query-after", "0"],
    );
    start(
        &wf("auto"),
        serde_json::json!({"version": 1, "command": "echo auto", "mode": "auto", "workflow_id": wf("auto")}),
        &[],
    );
    start(
        &wf("sandbox"),
        serde_json::json!({"version": 1, "command": "echo sandboxed", "mode": "sandbox",
            "sandbox": {"network": "none", "ttl_secs": 0}, "workflow_id": wf("sandbox")}),
        &[],
    );
    start(
        &wf("cancel"),
        serde_json::json!({"version": 1, "command": "sleep 300", "workflow_id": wf("cancel")}),
        &["--cancel-after", "2"],
    );
    start(
        &wf("malformed"),
        serde_json::json!({"version": 1, "command": "true", "colour": "red", "workflow_id": wf("malformed")}),
        &[],
    );
    start(
        &wf("copied"),
        serde_json::json!({"version": 1, "command": "true", "workflow_id": "another-id"}),
        &[],
    );
    start(
        &wf("retry-policy"),
        serde_json::json!({"version": 1, "command": "true", "workflow_id": wf("retry-policy")}),
        &["--retry"],
    );
    // A plaintext start, as any process that reaches the port could send it.
    let plain = wf("plaintext");
    let out = std::process::Command::new("temporal")
        .args([
            "workflow",
            "execute",
            "--address",
            &format!("127.0.0.1:{}", env.port),
            "--type",
            "AgentExecution",
            "--task-queue",
            "stigmer",
            "--workflow-id",
            &plain,
            "--input",
            &serde_json::json!({"version": 1, "command": "true", "workflow_id": plain}).to_string(),
        ])
        .output()
        .expect("temporal workflow execute");
    eprintln!("{plain}: {}", text(&out.stderr));
    save_workflow(&env, &plain, "public-plaintext");
}

/// Waits until execution `id`'s command is running and its process group is recorded.
fn wait_started(env: &Env, id: &str, needle: &str) {
    assert!(eventually(Duration::from_secs(20), || !processes_matching(
        needle
    )
    .is_empty()));
    assert!(eventually(Duration::from_secs(10), || common::exec_sql(
        &env.database_url,
        &format!("UPDATE executions SET pgid = pgid WHERE id = '{id}' AND pgid IS NOT NULL")
    ) == 1));
}
