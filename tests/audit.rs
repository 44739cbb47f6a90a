//! The audit trail end to end: real executions through the real binary and daemon (a real
//! Temporal dev server, a real SQLite or Postgres store), then `stigmer audit verify` and
//! `stigmer audit export` as an auditor would use them, and the database edited behind
//! stigmer's back as a tamperer would.

mod common;

use common::{Env, exec_sql, text};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The record as it was hashed, rebuilt here independently of stigmer's code: compact JSON with
/// sorted keys (the records are flat).
fn canonical(record: &Value) -> String {
    let sorted: BTreeMap<&String, &Value> = record.as_object().expect("object").iter().collect();
    serde_json::to_string(&sorted).expect("json")
}

fn export(env: &Env, extra: &[&str]) -> Vec<Value> {
    let mut args = vec!["audit", "export"];
    args.extend_from_slice(extra);
    let out = env.stigmer(&args);
    assert!(out.status.success(), "export: {}", text(&out.stderr));
    text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

fn verify(env: &Env) -> (Option<i32>, String) {
    let out = env.stigmer(&["audit", "verify"]);
    (
        out.status.code(),
        format!("{}{}", text(&out.stdout), text(&out.stderr)),
    )
}

/// Runs `command` through the daemon as if from a GitHub Actions job; returns its execution id.
fn run_in_ci(env: &Env, command: &str, expected_exit: i32) -> String {
    let mut cmd = env.cmd();
    cmd.env("GITHUB_ACTIONS", "true")
        .env("GITHUB_REPOSITORY", "acme/widgets")
        .env("GITHUB_RUN_ID", "4242")
        .env("GITHUB_ACTOR", "octocat")
        .env("USER", "audit-tester")
        .args(["run", "--output", "json", command]);
    let out = common::output_within(cmd, std::time::Duration::from_secs(120));
    assert_eq!(
        out.status.code(),
        Some(expected_exit),
        "{command}: {}",
        text(&out.stderr)
    );
    // The result is the JSON object that ends stdout (after output that may lack a newline).
    let stdout = text(&out.stdout);
    let start = stdout.rfind("{\"").expect("a JSON result");
    let result: Value = serde_json::from_str(stdout[start..].trim()).expect("json result line");
    result["id"].as_str().expect("id").to_string()
}

#[test]
fn every_ended_execution_is_chained_and_tampering_is_named() {
    let env = Env::new();
    env.start_daemon();
    let (code, said) = verify(&env);
    assert_eq!(code, Some(0), "an empty chain is intact: {said}");
    assert!(said.contains("0 record(s)"), "{said}");

    let ids = [
        run_in_ci(&env, "echo one", 0),
        run_in_ci(&env, "echo two >&2; exit 4", 4),
        run_in_ci(&env, "echo three", 0),
        run_in_ci(&env, "printf four", 0),
    ];

    let (code, said) = verify(&env);
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains("intact: 4 record(s)"), "{said}");

    // The export: one line per record, in chain order, each carrying what an auditor asks.
    let lines = export(&env, &[]);
    assert_eq!(lines.len(), 4, "{lines:?}");
    let mut prev = "0".repeat(64);
    for (i, line) in lines.iter().enumerate() {
        let record = &line["record"];
        assert_eq!(line["seq"], i as i64 + 1);
        assert_eq!(record["seq"], line["seq"]);
        assert_eq!(record["execution_id"], ids[i].as_str());
        assert_eq!(line["execution_id"], ids[i].as_str());
        // The chain can be checked from the export alone.
        assert_eq!(line["prev_hash"], prev.as_str());
        let hash = sha256_hex(format!("{prev}{}", canonical(record)).as_bytes());
        assert_eq!(line["hash"], hash.as_str(), "record {} rehashed", i + 1);
        prev = hash;

        assert_eq!(record["os_user"], "audit-tester");
        let ci = record["ci_identity"].as_str().expect("ci identity");
        assert!(
            ci.contains("github-actions") && ci.contains("acme/widgets") && ci.contains("octocat"),
            "{ci}"
        );
        assert_eq!(record["requested_mode"], "local");
        assert_eq!(record["effective_mode"], "local");
        assert!(
            record["mode_reason"]
                .as_str()
                .is_some_and(|r| !r.is_empty())
        );
        assert!(
            record["workflow_id"]
                .as_str()
                .is_some_and(|w| w.contains(&ids[i])),
            "{record}"
        );
        assert!(
            record["run_id"].as_str().is_some_and(|r| !r.is_empty()),
            "the Temporal run id is recorded even with eager start: {record}"
        );
        assert!(record["worker_id"].as_str().is_some_and(|w| !w.is_empty()));
        let created = record["created_at_ms"].as_i64().expect("created");
        let started = record["started_at_ms"].as_i64().expect("started");
        let finished = record["finished_at_ms"].as_i64().expect("finished");
        assert!(created <= started && started <= finished, "{record}");
        assert_eq!(record["duration_ms"], finished - started);
        for key in ["image", "image_digest", "container_id", "error"] {
            assert!(
                record.get(key).is_some(),
                "{key} is always present: {record}"
            );
        }
        assert!(record.get("output_sha256").is_some());
    }
    let second = &lines[1]["record"];
    assert_eq!(second["status"], "failed");
    assert_eq!(second["exit_code"], 4);
    assert_eq!(second["command"], "echo two >&2; exit 4");
    let fourth = &lines[3]["record"];
    assert_eq!(fourth["status"], "succeeded");
    assert_eq!(fourth["exit_code"], 0);
    assert_eq!(fourth["output_bytes"], 4);
    assert_eq!(fourth["output_sha256"], sha256_hex(b"four").as_str());

    // Someone rewrites history: the failed run becomes a success.
    let original = lines[1]["record"].to_string();
    let forged = canonical(&lines[1]["record"]).replace("\"exit_code\":4", "\"exit_code\":0");
    assert_ne!(forged, canonical(&lines[1]["record"]));
    let changed = exec_sql(
        &env.database_url,
        &format!(
            "UPDATE audit_log SET record = '{}' WHERE seq = 2",
            forged.replace('\'', "''")
        ),
    );
    assert_eq!(changed, 1);
    let (code, said) = verify(&env);
    assert_ne!(
        code,
        Some(0),
        "an edited record must fail verification: {said}"
    );
    assert_eq!(code, Some(3), "{said}");
    assert!(said.contains("seq 2"), "names the record: {said}");
    assert!(said.contains(&ids[1]), "names its execution: {said}");
    assert!(said.contains("edited"), "{said}");

    // Put it back exactly: the chain holds again (the check is on content, not on a flag).
    exec_sql(
        &env.database_url,
        &format!(
            "UPDATE audit_log SET record = '{}' WHERE seq = 2",
            canonical(&serde_json::from_str::<Value>(&original).unwrap()).replace('\'', "''")
        ),
    );
    let (code, said) = verify(&env);
    assert_eq!(code, Some(0), "restored: {said}");

    // The last record is removed: the head still remembers it.
    assert_eq!(
        exec_sql(&env.database_url, "DELETE FROM audit_log WHERE seq = 4"),
        1
    );
    let (code, said) = verify(&env);
    assert_eq!(code, Some(3), "a deleted last record is detected: {said}");
    assert!(said.contains("seq 4"), "{said}");
    assert!(
        said.contains(&ids[3]),
        "names the execution left unaudited: {said}"
    );

    // A record in the middle is removed.
    assert_eq!(
        exec_sql(&env.database_url, "DELETE FROM audit_log WHERE seq = 2"),
        1
    );
    let (code, said) = verify(&env);
    assert_eq!(code, Some(3), "a deleted middle record is detected: {said}");
    assert!(said.contains("seq 2"), "names the first break: {said}");
    assert!(
        said.contains(&ids[1]),
        "names the missing execution: {said}"
    );

    // Executions go on being recorded after the damage; the break stays reported.
    let later = run_in_ci(&env, "echo after", 0);
    let lines = export(&env, &[]);
    assert_eq!(
        lines.last().unwrap()["record"]["execution_id"],
        later.as_str()
    );
    assert_eq!(lines.last().unwrap()["seq"], 5);
    let (code, said) = verify(&env);
    assert_eq!(code, Some(3), "{said}");
    assert!(said.contains("seq 2"), "{said}");
}

#[test]
fn export_filters_by_time_and_rejects_bad_input_with_usage() {
    let env = Env::new();
    env.start_daemon();
    let id = run_in_ci(&env, "echo x", 0);
    let recent = export(&env, &["--since", "1h", "--format", "jsonl"]);
    assert_eq!(recent.len(), 1);
    assert_eq!(recent[0]["record"]["execution_id"], id.as_str());
    assert_eq!(export(&env, &["--since", "2999-01-01T00:00:00Z"]).len(), 0);
    assert_eq!(
        export(&env, &["--since", "2000-01-01T00:00:00+02:00"]).len(),
        1
    );

    for bad in ["yesterday", "24", "-1h", "5 parsecs"] {
        let out = env.stigmer(&["audit", "export", "--since", bad]);
        assert_eq!(out.status.code(), Some(2), "--since {bad}");
        let err = text(&out.stderr);
        assert!(
            err.contains("--since") && err.contains("RFC 3339") && err.contains("24h"),
            "the error names what is allowed: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
        assert!(out.stdout.is_empty());
    }
    let out = env.stigmer(&["audit", "export", "--format", "xml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("jsonl"), "{}", text(&out.stderr));
}

#[test]
fn prune_removes_old_executions_and_their_output_but_keeps_the_audit_chain() {
    let env = Env::new();
    env.start_daemon();
    let old = run_in_ci(&env, "seq 1 2000", 0);
    let older = run_in_ci(&env, "echo bye; exit 3", 3);
    let recent = run_in_ci(&env, "echo still-here", 0);
    // Two of them ended 40 days ago (the database edited, as time would have).
    let forty_days_ago = stigmer_activities::store::now_ms() - 40 * 86_400_000;
    let moved = exec_sql(
        &env.database_url,
        &format!(
            "UPDATE executions SET finished_at = {forty_days_ago} WHERE id IN ('{old}', '{older}')"
        ),
    );
    assert_eq!(moved, 2);

    let out = env.stigmer(&[
        "executions",
        "prune",
        "--older-than",
        "30d",
        "--dry-run",
        "--output",
        "json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["executions"], 2, "{report}");
    assert_eq!(report["dry_run"], true);
    assert!(
        report["output_bytes"].as_u64().unwrap() > 8000,
        "seq 1 2000 wrote ~8.9 kB: {report}"
    );
    assert_eq!(
        text(&env.stigmer(&["logs", &old]).stdout).lines().count(),
        2000
    );

    let out = env.stigmer(&["executions", "prune", "--older-than", "30d"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("removed 2 execution(s)"),
        "{}",
        text(&out.stdout)
    );
    for id in [&old, &older] {
        let out = env.stigmer(&["executions", "show", id]);
        assert!(!out.status.success(), "{id} is gone");
        assert!(env.stigmer(&["logs", id]).stdout.is_empty());
    }
    assert_eq!(env.show(&recent)["status"], "succeeded");
    assert_eq!(
        text(&env.stigmer(&["logs", &recent]).stdout),
        "still-here\n"
    );

    // The audit trail still has all three, and the chain holds.
    let records = export(&env, &[]);
    let ids: Vec<&str> = records
        .iter()
        .map(|r| r["record"]["execution_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [old.as_str(), older.as_str(), recent.as_str()]);
    let (code, said) = verify(&env);
    assert_eq!(code, Some(0), "{said}");

    // Nothing else is old enough now.
    let out = env.stigmer(&[
        "executions",
        "prune",
        "--older-than",
        "1h",
        "--output",
        "json",
    ]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["executions"], 0, "{report}");

    for bad in ["5m", "30", "a week", "-2d"] {
        let out = env.stigmer(&["executions", "prune", "--older-than", bad]);
        assert_eq!(out.status.code(), Some(2), "--older-than {bad}");
        let err = text(&out.stderr);
        assert!(
            err.contains("--older-than") && err.contains("one hour") && err.contains("30m"),
            "{err}"
        );
    }
    assert_eq!(
        env.show(&recent)["status"],
        "succeeded",
        "bad input removed nothing"
    );
}

/// Several workers finishing executions at the same moment on one store (two connection pools,
/// as two processes would have) still build one unbroken chain, with exactly one record per
/// execution even when the same result is recorded twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_from_several_workers_build_one_chain() {
    use stigmer_activities::audit;
    use stigmer_activities::store::{NewExecution, Store};
    use stigmer_workflows::{ExecutionResult, Status};

    let env = Env::new();
    std::fs::create_dir_all(env.data_dir()).unwrap();
    let first = Store::open(&env.database_url, true).await.expect("store");
    let second = Store::open(&env.database_url, false).await.expect("store");
    let ids: Vec<String> = (0..30).map(|i| format!("aex-concurrent-{i:02}")).collect();
    for id in &ids {
        first
            .insert_execution(&NewExecution {
                id: id.clone(),
                workflow_id: format!("stigmer/agent-execution/{id}"),
                command: "true".into(),
                workdir: "/tmp".into(),
                requested_mode: "local".into(),
                effective_mode: "local".into(),
                reason: "test".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        first.mark_started(id, "worker-a", 1).await.unwrap();
    }
    let mut tasks = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        // Each result is recorded by both workers, as a retried activity would.
        for store in [first.clone(), second.clone()] {
            let id = id.clone();
            tasks.push(tokio::spawn(async move {
                let result = ExecutionResult {
                    id: id.clone(),
                    status: if i % 3 == 0 {
                        Status::Failed
                    } else {
                        Status::Succeeded
                    },
                    exit_code: Some(if i % 3 == 0 { 1 } else { 0 }),
                    error: None,
                };
                store.finish(&result, None).await.expect("finish").result
            }));
        }
    }
    for task in tasks {
        task.await.unwrap();
    }
    let report = audit::verify(&first).await.unwrap();
    assert!(report.ok(), "{report:?}");
    assert_eq!(report.intact, 30);
    assert_eq!(report.head_seq, 30);
    let mut lines = Vec::new();
    audit::export(&first, None, |l| {
        lines.push(l.to_string());
        Ok(())
    })
    .await
    .unwrap();
    let mut recorded: Vec<String> = lines
        .iter()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["execution_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    recorded.sort();
    assert_eq!(recorded, ids, "one record per execution");
}
