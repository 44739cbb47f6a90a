//! Cloud mode end to end: the real `stigmer` daemon and Temporal, against the fake Daytona
//! server (built from Daytona's published OpenAPI description, validating every request body),
//! which runs the commands on the host when told to.

mod common;

use common::{Env, cloud_env, start_fake, text};
use sha2::Digest;

/// Starts a cloud session and returns its id.
fn start_cloud_session(env: &Env, extra: &[&str]) -> String {
    let mut args = vec!["session", "start", "--mode", "cloud", "--output", "json"];
    args.extend_from_slice(extra);
    let out = env.stigmer(&args);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    let started: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    started["id"].as_str().unwrap().to_string()
}

/// Bytes with NULs and every other value, in an order that is not periodic.
fn binary_data(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x9e37_79b9;
    (0..len)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            if i % 97 == 0 { 0 } else { (x >> 24) as u8 }
        })
        .collect()
}

#[test]
fn commands_run_in_a_daytona_sandbox_that_is_reused_and_released() {
    let fake = start_fake();
    let env = cloud_env(&fake.fake);
    let out = env.stigmer(&["run", "--mode", "cloud", "echo hi; echo oops >&2; exit 4"]);
    assert_eq!(out.status.code(), Some(4), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "hi\n");
    assert!(text(&out.stderr).contains("oops"));
    let record = env.last_execution();
    assert_eq!(record["effective_mode"], "cloud");
    let sandbox = record["container_id"].as_str().unwrap().to_string();
    assert!(fake.fake.sandbox_ids().contains(&sandbox));

    // Within the TTL the same sandbox serves the next command.
    let out = env.stigmer(&[
        "run",
        "--mode",
        "cloud",
        "--env",
        "GREETING=hello",
        "echo $GREETING",
    ]);
    assert_eq!(
        text(&out.stdout),
        "hello\n",
        "stderr: {}",
        text(&out.stderr)
    );
    assert_eq!(env.last_execution()["container_id"], sandbox.as_str());
    assert_eq!(
        fake.fake.requests_for("createSandbox").len(),
        1,
        "one sandbox was created"
    );
    let create = &fake.fake.requests_for("createSandbox")[0];
    let body = create.body.clone().unwrap_or_default();
    assert_eq!(body["labels"]["io.stigmer.managed"], "true", "{body}");
    assert!(
        create.schema_errors.is_empty(),
        "the request matches Daytona's schema: {:?}",
        create.schema_errors
    );
    assert!(
        fake.fake.requests().iter().all(|r| r.authorized),
        "every call carries the bearer token"
    );

    let list = env.stigmer(&["leases", "list", "--output", "json"]);
    let leases: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(leases[0]["backend"], "daytona");
    assert_eq!(leases[0]["state"], "idle");

    // A start from another client (the Python SDK, the public input) runs in a sandbox of its
    // own: foreign starts never reuse a local user's.
    let done = common::python_start(
        &env,
        "cloud-orders-1",
        &serde_json::json!({"version": 1, "command": "echo from python", "mode": "cloud",
            "workflow_id": "cloud-orders-1"}),
        &[],
    );
    assert_eq!(done["result"]["exit_code"], 0, "{done}");
    assert_eq!(
        done["result"]["report"]["stdout"], "from python\n",
        "{done}"
    );
    assert_eq!(done["result"]["report"]["mode"], "cloud", "{done}");
    let id = done["result"]["id"].as_str().unwrap();
    let foreign = env.show(id)["container_id"].as_str().unwrap().to_string();
    assert_ne!(foreign, sandbox, "a sandbox of the foreign owner");
    assert_eq!(fake.fake.requests_for("createSandbox").len(), 2);
    // A stdin in the public input reaches the command in the cloud too.
    let done = common::python_start(
        &env,
        "cloud-orders-2",
        &serde_json::json!({"version": 1, "command": "cat", "mode": "cloud", "stdin": "x",
            "workflow_id": "cloud-orders-2"}),
        &[],
    );
    assert_eq!(done["result"]["exit_code"], 0, "{done}");
    assert_eq!(done["result"]["report"]["stdout"], "x", "{done}");
}

#[test]
fn cloud_mode_without_a_key_or_snapshot_says_what_to_set() {
    let env = Env::new();
    let out = env.stigmer(&["run", "--mode", "cloud", "true"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("DAYTONA_API_KEY"),
        "{}",
        text(&out.stderr)
    );
    let mut env = Env::new();
    env.extra.push(("DAYTONA_API_KEY".into(), "k".into()));
    env.extra.push(("MODE".into(), "cloud".into()));
    let out = env.stigmer(&["run", "true"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("DAYTONA_DEV_TOOLS_SNAPSHOT_ID"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn expired_daytona_sandboxes_are_deleted_by_the_reaper() {
    let fake = start_fake();
    let mut env = cloud_env(&fake.fake);
    env.extra.push(("STIGMER_SANDBOX_TTL".into(), "1".into()));
    let out = env.stigmer(&["run", "--mode", "cloud", "echo once"]);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let sandbox = env.last_execution()["container_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(fake.fake.sandbox_ids().contains(&sandbox));

    // Past its TTL, the idle sandbox is deleted in Daytona and its lease ends.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let out = env.stigmer(&["leases", "reap", "--output", "json"]);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        report["daytona_deleted"],
        serde_json::json!([sandbox]),
        "{report}"
    );
    assert!(
        !fake.fake.sandbox_ids().contains(&sandbox),
        "the sandbox is gone from Daytona"
    );
    assert_eq!(fake.fake.requests_for("deleteSandbox").len(), 1);
    let list = env.stigmer(&["leases", "list", "--output", "json"]);
    let leases: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(leases, serde_json::json!([]), "no lease is left");
}

/// The Daytona API URL and snapshot written in the config file (only the key, which the file
/// does not take, in the environment) reach the worker that runs the command and the reaper,
/// not only `config show`.
#[test]
fn daytona_settings_from_the_config_file_reach_the_worker_and_the_reaper() {
    let fake = start_fake();
    let mut env = Env::new();
    env.extra.push(("STIGMER_SANDBOX_TTL".into(), "1".into()));
    env.extra
        .push(("DAYTONA_API_KEY".into(), "test-key".into()));
    let config_dir = env.dir.path().join(".config/stigmer");
    std::fs::create_dir_all(&config_dir).unwrap();
    std::fs::write(
        config_dir.join("config.toml"),
        format!(
            "daytona_api_url = \"{}\"\ndaytona_snapshot_id = \"stigmer-full\"\n",
            fake.fake.api_url()
        ),
    )
    .unwrap();
    let out = env.stigmer(&["run", "--mode", "cloud", "echo from-the-file"]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "from-the-file\n");
    let create = fake.fake.requests_for("createSandbox");
    assert_eq!(
        create.len(),
        1,
        "the sandbox was made in the configured Daytona"
    );
    let body = create[0].body.clone().unwrap_or_default();
    assert_eq!(body["snapshot"], "stigmer-full", "{body}");

    std::thread::sleep(std::time::Duration::from_millis(1500));
    let out = env.stigmer(&["leases", "reap", "--output", "json"]);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        report["daytona_deleted"].as_array().map(Vec::len),
        Some(1),
        "{report}"
    );
}

/// A cloud session keeps, from one command to the next, the directory, an exported variable
/// and the files of its own Daytona sandbox; a run outside the session sees none of it; and
/// `session end` deletes the sandbox in Daytona.
#[test]
fn a_cloud_session_keeps_its_state_and_files_and_its_end_deletes_the_sandbox() {
    let fake = start_fake();
    let env = cloud_env(&fake.fake);
    let id = start_cloud_session(&env, &[]);
    let show = env.stigmer(&["session", "show", &id, "--output", "json"]);
    let shown: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap();
    assert_eq!(shown["mode"], "cloud", "{shown}");

    let out = env.stigmer(&[
        "run",
        "--session",
        &id,
        "mkdir -p work && cd work && export APP_ENV=test && echo kept > note.txt && pwd",
    ]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    let dir = text(&out.stdout).trim().to_string();
    assert!(dir.ends_with("/work"), "{dir}");
    let first = env.last_execution();
    assert_eq!(first["effective_mode"], "cloud", "{first}");
    assert_eq!(first["session"], id.as_str(), "{first}");
    let sandbox = first["container_id"].as_str().unwrap().to_string();
    let create = fake.fake.requests_for("createSandbox");
    assert_eq!(create.len(), 1);
    let body = create[0].body.clone().unwrap_or_default();
    assert_eq!(body["labels"]["io.stigmer.session"], id.as_str(), "{body}");

    let out = env.stigmer(&[
        "run",
        "--session",
        &id,
        "pwd; echo \"$APP_ENV\"; cat note.txt",
    ]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), format!("{dir}\ntest\nkept\n"));
    assert_eq!(env.last_execution()["container_id"], sandbox.as_str());
    // The command went through the toolbox's session API with the state wrapper.
    let execs = fake.fake.requests_for("SessionExecuteCommand");
    let line = execs.last().unwrap().body.clone().unwrap_or_default();
    assert!(
        line["command"]
            .as_str()
            .unwrap_or_default()
            .contains("session-state"),
        "{line}"
    );

    // Piped input reaches a command of the session, which still starts where the last ended.
    let out = common::run_with_stdin(
        &env,
        &[
            "run",
            "--session",
            &id,
            "read line; echo \"got $line in $PWD\"",
        ],
        b"piped\n".to_vec(),
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), format!("got piped in {dir}\n"));

    // Outside the session: another sandbox, and none of the session's state.
    let out = env.stigmer(&[
        "run",
        "--mode",
        "cloud",
        "pwd; echo \"[$APP_ENV]\"; cat work/note.txt 2>/dev/null || echo missing",
    ]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    let seen = text(&out.stdout);
    assert!(!seen.starts_with(&dir), "{seen}");
    assert!(seen.ends_with("[]\nmissing\n"), "{seen}");
    let other = env.last_execution()["container_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(other, sandbox);

    let out = env.stigmer(&["session", "end", &id, "--output", "json"]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    let ended: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        ended["removed_containers"],
        serde_json::json!([sandbox]),
        "{ended}"
    );
    let left = fake.fake.sandbox_ids();
    assert!(
        !left.contains(&sandbox),
        "the session's sandbox is gone: {left:?}"
    );
    assert!(left.contains(&other), "the other sandbox stays: {left:?}");
    let out = env.stigmer(&["run", "--session", &id, "true"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
}

/// `session cp` moves binary data (NUL bytes) and the file's mode into and out of a cloud
/// session's sandbox through the toolbox's file API, and refuses bad paths with what to do.
#[test]
fn session_cp_round_trips_binary_data_and_a_mode_through_a_cloud_sandbox() {
    use std::os::unix::fs::PermissionsExt;
    let fake = start_fake();
    let env = cloud_env(&fake.fake);
    let id = start_cloud_session(&env, &["--name", "files"]);
    let out = env.stigmer(&["session", "cp", "/etc/hostname", &format!("{id}:/tmp/x")]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("run a command in it first"),
        "{}",
        text(&out.stderr)
    );

    let out = env.stigmer(&["run", "--session", "files", "pwd"]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    let home = text(&out.stdout).trim().to_string();

    let data = binary_data(300_000);
    let sha = hex::encode(sha2::Sha256::digest(&data));
    let local = env.dir.path().join("data.bin");
    std::fs::write(&local, &data).unwrap();
    std::fs::set_permissions(&local, std::fs::Permissions::from_mode(0o750)).unwrap();
    let remote = format!("files:{home}/data.bin");
    let out = env.stigmer(&[
        "session",
        "cp",
        local.to_str().unwrap(),
        &remote,
        "--output",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    let copied: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(copied["bytes"], 300_000, "{copied}");
    assert_eq!(copied["mode"], "0750", "{copied}");
    assert!(!fake.fake.requests_for("UploadFile").is_empty());
    assert!(!fake.fake.requests_for("SetFilePermissions").is_empty());

    // The command in the session sees the same bytes and mode.
    let out = env.stigmer(&[
        "run",
        "--session",
        "files",
        "sha256sum data.bin; stat -c %a data.bin",
    ]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), format!("{sha}  data.bin\n750\n"));

    // Out again, under another mode set inside the sandbox.
    let out = env.stigmer(&["run", "--session", "files", "chmod 0604 data.bin"]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    let back = env.dir.path().join("back.bin");
    let out = env.stigmer(&["session", "cp", &remote, back.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert_eq!(
        std::fs::read(&back).unwrap(),
        data,
        "the bytes came back as they were"
    );
    let mode = std::fs::metadata(&back).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o604);
    assert!(!fake.fake.requests_for("DownloadFile").is_empty());

    // Bad paths: usage errors that say what to do.
    for (src, dst, says) in [
        (
            local.to_str().unwrap().to_string(),
            format!("files:{home}/no/such/dir/x"),
            "mkdir -p",
        ),
        (
            format!("files:{home}/missing.bin"),
            back.to_str().unwrap().to_string(),
            "does not exist",
        ),
        (
            format!("files:{home}/../x"),
            back.to_str().unwrap().to_string(),
            "without `..`",
        ),
        (
            format!("files:{home}"),
            back.to_str().unwrap().to_string(),
            "is a directory",
        ),
        (
            format!("files:{home}/"),
            back.to_str().unwrap().to_string(),
            "absolute path of a file",
        ),
    ] {
        let out = env.stigmer(&["session", "cp", &src, &dst]);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{src} -> {dst}: {}",
            text(&out.stderr)
        );
        assert!(
            text(&out.stderr).contains(says),
            "{src} -> {dst}: {}",
            text(&out.stderr)
        );
    }
    let out = env.stigmer(&["session", "end", "files"]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
}

/// What is piped into `stigmer run --mode cloud` reaches the command through Daytona's
/// command input: text, binary data of a few MB intact, and a command that reads nothing
/// does not wait for it.
#[test]
fn stdin_reaches_a_cloud_command_intact_and_a_command_that_ignores_it_ends() {
    let fake = start_fake();
    let env = cloud_env(&fake.fake);
    let out = common::run_with_stdin(
        &env,
        &["run", "--mode", "cloud", "cat"],
        b"hello\n".to_vec(),
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "hello\n");
    let inputs = fake.fake.requests_for("SendInput");
    assert!(
        !inputs.is_empty(),
        "the bytes went through the command input"
    );
    assert!(
        inputs
            .iter()
            .all(|r| r.status == 204 && r.schema_errors.is_empty())
    );
    // Daytona would otherwise echo the input into the output.
    let started = fake.fake.requests_for("SessionExecuteCommand");
    let body = started.last().unwrap().body.clone().unwrap_or_default();
    assert_eq!(body["suppressInputEcho"], true, "{body}");

    let data = binary_data(3 << 20);
    let sha = hex::encode(sha2::Sha256::digest(&data));
    let out = common::run_with_stdin(&env, &["run", "--mode", "cloud", "sha256sum"], data.clone());
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), format!("{sha}  -\n"));
    let record = env.last_execution();
    assert_eq!(record["stdin_bytes"], data.len() as u64, "{record}");
    assert_eq!(record["stdin_sha256"], sha.as_str(), "{record}");

    // Nothing read: the command ends, and that is not an error.
    let out = common::run_with_stdin(&env, &["run", "--mode", "cloud", "true"], data);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    // Without stdin (a terminal, /dev/null) the command reads end of file at once.
    let out = env.stigmer(&["run", "--mode", "cloud", "--no-stdin", "cat; echo done"]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "done\n");
}

/// An idle cloud session ends when its TTL passes, and the reaper deletes its sandbox.
#[test]
fn an_idle_cloud_session_ends_and_its_sandbox_is_deleted() {
    let fake = start_fake();
    let mut env = cloud_env(&fake.fake);
    env.extra
        .push(("STIGMER_REAPER_INTERVAL_SECS".into(), "1".into()));
    let id = start_cloud_session(&env, &["--ttl", "2"]);
    let out = env.stigmer(&["run", "--session", &id, "echo hi > kept.txt"]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    let sandbox = env.last_execution()["container_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(fake.fake.sandbox_ids().contains(&sandbox));
    assert!(
        common::eventually(std::time::Duration::from_secs(30), || {
            !fake.fake.sandbox_ids().contains(&sandbox)
        }),
        "the idle session's sandbox was deleted"
    );
    let show = env.stigmer(&["session", "show", &id, "--output", "json"]);
    let shown: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap();
    assert_ne!(shown["ended_at"], serde_json::Value::Null, "{shown}");
}
