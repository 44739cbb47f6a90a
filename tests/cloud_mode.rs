//! Cloud mode end to end: the real `stigmer` daemon and Temporal, against the fake Daytona
//! server (built from Daytona's published OpenAPI description, validating every request body),
//! which runs the commands on the host when told to.

mod common;

use common::{Env, cloud_env, start_fake, text};

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
    // A stdin does not go to the cloud: refused before anything is recorded or created.
    let done = common::python_start(
        &env,
        "cloud-orders-2",
        &serde_json::json!({"version": 1, "command": "cat", "mode": "cloud", "stdin": "x",
            "workflow_id": "cloud-orders-2"}),
        &[],
    );
    assert_eq!(done["status"], "failed", "{done}");
    assert!(
        done["message"]
            .as_str()
            .unwrap_or_default()
            .contains("does not forward `stdin`"),
        "{done}"
    );
    assert_eq!(fake.fake.requests_for("createSandbox").len(), 2);
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
