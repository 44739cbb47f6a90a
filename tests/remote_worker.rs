//! The scale-out deployment: a Temporal server the user runs, `stigmer worker` processes, and
//! `stigmer run` with `TEMPORAL_ADDRESS` starting the workflow itself and following the output
//! through the store. Also what happens when a worker dies with SIGKILL mid-command.

mod common;

use common::{
    Children, eventually, processes_matching, remote_env, start_temporal, start_worker, text,
    wait_terminal,
};
use std::time::Duration;

#[test]
fn run_against_a_remote_cluster_follows_output_through_the_store() {
    let env = remote_env();
    let _cluster = cluster(&env);

    let out = env.stigmer(&["run", "echo remote; echo err >&2; exit 5"]);
    assert_eq!(out.status.code(), Some(5), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "remote\n");
    assert!(text(&out.stderr).contains("err\n"));
    assert!(
        env.daemon_pid().is_none(),
        "no daemon is started when TEMPORAL_ADDRESS is set"
    );

    let out = env.stigmer(&["run", "--no-follow", "--output", "json", "echo queued-work"]);
    let id = serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let record = wait_terminal(&env, &id, Duration::from_secs(30));
    assert_eq!(record["status"], "succeeded");
    assert_eq!(text(&env.stigmer(&["logs", &id]).stdout), "queued-work\n");
}

#[test]
fn a_command_whose_worker_is_killed_is_not_rerun_and_ends_failed() {
    let env = remote_env();
    let mut children = cluster(&env);

    let marker = "4545.4545";
    let out = env.stigmer(&[
        "run",
        "--no-follow",
        &format!("echo ran >> runs.txt; sleep {marker}"),
    ]);
    let id = text(&out.stdout).trim().to_string();
    assert!(eventually(Duration::from_secs(20), || !processes_matching(
        &format!("sleep {marker}")
    )
    .is_empty()));
    // The worker records the command's process group in the store just after starting it; a
    // worker killed within those milliseconds leaves nothing to find (docs/durability.md).
    assert!(eventually(Duration::from_secs(10), || common::exec_sql(
        &env.database_url,
        &format!("UPDATE executions SET pgid = pgid WHERE id = '{id}' AND pgid IS NOT NULL")
    ) == 1));

    let error = replace_worker_and_wait_lost(&env, &mut children, &id);
    assert!(error.contains("--retry-exec"), "{error}");
    let runs = std::fs::read_to_string(env.dir.path().join("runs.txt")).unwrap();
    assert_eq!(runs.lines().count(), 1, "the command ran exactly once");
    assert!(
        eventually(Duration::from_secs(10), || processes_matching(&format!(
            "sleep {marker}"
        ))
        .is_empty()),
        "the lost worker's command was left running"
    );
}

#[test]
fn retry_exec_reruns_a_command_whose_worker_was_lost() {
    let env = remote_env();
    let mut children = cluster(&env);

    let out = env.stigmer(&[
        "run",
        "--no-follow",
        "--retry-exec",
        "echo attempt >> attempts.txt; if [ $(wc -l < attempts.txt) -lt 2 ]; then sleep 4646.4646; fi; echo done",
    ]);
    let id = text(&out.stdout).trim().to_string();
    assert!(eventually(Duration::from_secs(20), || !processes_matching(
        "sleep 4646.4646"
    )
    .is_empty()));
    assert!(eventually(Duration::from_secs(10), || common::exec_sql(
        &env.database_url,
        &format!("UPDATE executions SET pgid = pgid WHERE id = '{id}' AND pgid IS NOT NULL")
    ) == 1));
    children.0[1].kill().unwrap();
    children.0[1].wait().unwrap();
    children.0.push(start_worker(&env));

    let record = wait_terminal(&env, &id, Duration::from_secs(60));
    assert_eq!(record["status"], "succeeded", "{record}");
    assert_eq!(record["attempt"], 2);
    let attempts = std::fs::read_to_string(env.dir.path().join("attempts.txt")).unwrap();
    assert_eq!(attempts.lines().count(), 2);
    assert!(text(&env.stigmer(&["logs", &id]).stdout).contains("done"));
}

/// A worker killed with SIGKILL leaves a warm sandbox container behind, leased to it. Once its
/// heartbeat is 30 s stale, another worker on the same Docker engine adopts the lease, and the
/// next run reuses that container instead of leaking it or making a new one.
#[test]
fn a_lost_workers_idle_container_is_adopted_by_another_worker_and_reused() {
    let Some((env, mut children)) = sandbox_cluster() else {
        return;
    };
    let first_worker = children.0[1].id();
    let leases = |env: &common::Env| common::leases(env, false);
    let cleanup = common::RemoveContainers(&env);

    let out = env.stigmer(&["run", "--output", "json", "echo warm"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let first = env.last_execution();
    let container = first["container_id"].as_str().unwrap().to_string();
    let lease = eventually(Duration::from_secs(10), || {
        leases(&env).iter().any(|l| l["state"] == "idle")
    });
    assert!(lease, "an idle lease after the run: {:?}", leases(&env));
    let owned = leases(&env);
    assert!(
        owned[0]["worker_id"]
            .as_str()
            .unwrap()
            .ends_with(&format!("-{first_worker}")),
        "{owned:?}"
    );

    children.0[1].kill().unwrap();
    children.0[1].wait().unwrap();
    children.0.push(start_worker(&env));
    let second_worker = children.0[2].id();

    let adopted = eventually(Duration::from_secs(90), || {
        leases(&env).iter().any(|l| {
            l["state"] == "idle"
                && l["container_id"] == container.as_str()
                && l["worker_id"]
                    .as_str()
                    .is_some_and(|w| w.ends_with(&format!("-{second_worker}")))
        })
    });
    assert!(adopted, "adopted by the new worker: {:?}", leases(&env));

    let out = env.stigmer(&["run", "echo reused"]);
    assert_eq!(text(&out.stdout), "reused\n", "{}", text(&out.stderr));
    let second = env.last_execution();
    assert_eq!(
        second["container_id"], first["container_id"],
        "the warm container was reused"
    );
    drop(cleanup);
}

/// A worker killed with SIGKILL while its sandbox command runs: the command is not re-run, what
/// is left of it in the container is killed, and the container is removed rather than handed to
/// the next execution (which gets a fresh one).
#[test]
fn a_sandbox_command_whose_worker_is_killed_is_stopped_in_its_container_and_not_reused() {
    let Some((env, mut children)) = sandbox_cluster() else {
        return;
    };
    let _cleanup = common::RemoveContainers(&env);

    // A warm container first, so the command below takes the warm path.
    let out = env.stigmer(&["run", "true"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let marker = "4646.4646";
    let out = env.stigmer(&["run", "--no-follow", &format!("sleep {marker}")]);
    let id = text(&out.stdout).trim().to_string();
    assert!(
        eventually(Duration::from_secs(20), || !processes_matching(&format!(
            "sleep {marker}"
        ))
        .is_empty()),
        "the command started in its container"
    );
    let container = env.show(&id)["container_id"].as_str().unwrap().to_string();

    replace_worker_and_wait_lost(&env, &mut children, &id);
    assert!(
        eventually(Duration::from_secs(20), || processes_matching(&format!(
            "sleep {marker}"
        ))
        .is_empty()),
        "the lost command was left running in its container"
    );
    assert!(
        eventually(Duration::from_secs(20), || !common::leases(&env, false)
            .iter()
            .any(|l| l["container_id"] == container.as_str())),
        "its container was kept: {:?}",
        common::leases(&env, false)
    );

    let out = env.stigmer(&["run", "echo next"]);
    assert_eq!(text(&out.stdout), "next\n", "{}", text(&out.stderr));
    assert_ne!(env.last_execution()["container_id"], container.as_str());
}

/// A Temporal server and one worker in sandbox mode, once the worker has made the store; `None`
/// (the test skipped) without a sandbox image.
fn sandbox_cluster() -> Option<(common::Env, Children)> {
    let Ok(image) = std::env::var("STIGMER_TEST_SANDBOX_IMAGE") else {
        eprintln!("skipped: STIGMER_TEST_SANDBOX_IMAGE is not set (scripts/test.sh sets it)");
        return None;
    };
    let mut env = remote_env();
    env.extra.extend([
        ("STIGMER_EXECUTION_MODE".to_string(), "sandbox".to_string()),
        ("STIGMER_SANDBOX_IMAGE".to_string(), image),
        ("STIGMER_SANDBOX_AUTO_PULL".to_string(), "false".to_string()),
    ]);
    let children = cluster(&env);
    Some((env, children))
}

/// Kills the worker (SIGKILL: no chance to clean up), starts another, and waits for the
/// execution to end `failed` saying its worker was lost; returns that error.
fn replace_worker_and_wait_lost(env: &common::Env, children: &mut Children, id: &str) -> String {
    children.0[1].kill().unwrap();
    children.0[1].wait().unwrap();
    children.0.push(start_worker(env));
    let record = wait_terminal(env, id, Duration::from_secs(60));
    assert_eq!(record["status"], "failed", "{record}");
    let error = record["error"].as_str().unwrap_or_default().to_string();
    assert!(error.contains("lost"), "{error}");
    error
}

/// A Temporal server and one worker, once the worker has made the store (the client opens it).
fn cluster(env: &common::Env) -> Children {
    let mut children = Children(vec![start_temporal(env)]);
    children.0.push(start_worker(env));
    // A loaded machine (CI runs two such tests at once) can take a while to start both.
    assert!(
        eventually(Duration::from_secs(90), || env
            .stigmer(&["executions", "list"])
            .status
            .success()),
        "the worker did not make the store; its stderr:\n{}",
        common::worker_log(env)
    );
    children
}
