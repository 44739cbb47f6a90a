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
    verify_with(env, &[])
}

/// `stigmer audit verify EXTRA…`: its exit code and everything it said.
fn verify_with(env: &Env, extra: &[&str]) -> (Option<i32>, String) {
    let mut args = vec!["audit", "verify"];
    args.extend_from_slice(extra);
    let out = env.stigmer(&args);
    (
        out.status.code(),
        format!("{}{}", text(&out.stdout), text(&out.stderr)),
    )
}

/// `stigmer audit head --output json`.
fn head(env: &Env) -> Value {
    let out = env.stigmer(&["audit", "head", "--output", "json"]);
    assert!(out.status.success(), "audit head: {}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("head json")
}

/// The head as a pipeline saves it: the first line of `stigmer audit head`, `SEQ:HASH`.
fn saved_head(env: &Env) -> String {
    let out = env.stigmer(&["audit", "head"]);
    assert!(out.status.success(), "audit head: {}", text(&out.stderr));
    text(&out.stdout)
        .lines()
        .next()
        .expect("a line")
        .to_string()
}

/// The name of the user running the tests, as the system knows it (not `$USER`).
fn real_user() -> String {
    nix::unistd::User::from_uid(nix::unistd::getuid())
        .expect("passwd lookup")
        .expect("the test user has a name")
        .name
}

/// Runs `command` through the daemon as if from a GitHub Actions job; returns its execution id.
fn run_in_ci(env: &Env, command: &str, expected_exit: i32) -> String {
    let mut cmd = env.cmd();
    cmd.env("GITHUB_ACTIONS", "true")
        .env("GITHUB_REPOSITORY", "acme/widgets")
        .env("GITHUB_RUN_ID", "4242")
        .env("GITHUB_ACTOR", "octocat")
        .env("USER", "audit-tester")
        .args(["run", "--output", "json", "--label", "pipeline=nightly"])
        .args(["--label", "ticket=OPS-12", command]);
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
fn every_execution_is_chained_when_it_starts_and_ends_signed_and_tampering_is_named() {
    let mut env = Env::new();
    // The signing key lives outside the data dir, as docs/audit.md asks.
    let key_path = env.dir.path().join("audit-signing.key");
    let out = env.stigmer(&["audit", "keygen", key_path.to_str().unwrap()]);
    assert!(out.status.success(), "keygen: {}", text(&out.stderr));
    let public = text(&out.stdout).trim().to_string();
    assert_eq!(
        public.len(),
        64,
        "the public key, alone on stdout: {public}"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&key_path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the key file is private");
    let again = env.stigmer(&["audit", "keygen", key_path.to_str().unwrap()]);
    assert_eq!(
        again.status.code(),
        Some(2),
        "a key file is never overwritten"
    );
    assert!(text(&again.stderr).contains("already exists"));
    env.extra.push((
        "STIGMER_AUDIT_SIGNING_KEY".into(),
        key_path.display().to_string(),
    ));
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
    assert!(
        said.contains("intact: 8 record(s)"),
        "a start and an end record per execution: {said}"
    );

    // The export: one line per record, in chain order, each carrying what an auditor asks.
    let lines = export(&env, &[]);
    assert_eq!(lines.len(), 8, "{lines:?}");
    let mut prev = "0".repeat(64);
    for (n, line) in lines.iter().enumerate() {
        let record = &line["record"];
        let i = n / 2;
        let event = if n % 2 == 0 { "started" } else { "ended" };
        assert_eq!(line["seq"], n as i64 + 1);
        assert_eq!(record["seq"], line["seq"]);
        assert_eq!(record["execution_id"], ids[i].as_str());
        assert_eq!(line["execution_id"], ids[i].as_str());
        assert_eq!(record["event"], event, "{line}");
        assert_eq!(line["event"], event, "{line}");
        // The chain can be checked from the export alone.
        assert_eq!(line["prev_hash"], prev.as_str());
        let hash = sha256_hex(format!("{prev}{}", canonical(record)).as_bytes());
        assert_eq!(line["hash"], hash.as_str(), "record {} rehashed", n + 1);
        prev = hash;
        assert!(
            line["signature"].as_str().is_some_and(|s| s.len() == 128),
            "every record is signed by the daemon's key: {line}"
        );

        // Who ran it is the user the socket's credentials name, not the `$USER` the client
        // claimed ("audit-tester").
        assert_eq!(record["os_user"], real_user().as_str());
        let ci = record["ci_identity"].as_str().expect("ci identity");
        assert!(
            ci.contains("github-actions") && ci.contains("acme/widgets") && ci.contains("octocat"),
            "{ci}"
        );
        assert_eq!(record["requested_mode"], "local");
        assert_eq!(record["effective_mode"], "local");
        assert_eq!(
            record["labels"],
            serde_json::json!({"pipeline": "nightly", "ticket": "OPS-12"}),
            "the caller's labels are in every record: {record}"
        );
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
        assert!(record["worker_id"].as_str().is_some_and(|w| !w.is_empty()));
        let created = record["created_at_ms"].as_i64().expect("created");
        let started = record["started_at_ms"].as_i64().expect("started");
        assert!(created <= started, "{record}");
        for key in ["image", "image_digest", "container_id", "error"] {
            assert!(
                record.get(key).is_some(),
                "{key} is always present: {record}"
            );
        }
        assert!(record.get("output_sha256").is_some());
        if event == "started" {
            assert_eq!(record["status"], "running", "{record}");
            assert_eq!(record["finished_at_ms"], Value::Null, "{record}");
            continue;
        }
        assert!(
            record["run_id"].as_str().is_some_and(|r| !r.is_empty()),
            "the Temporal run id is recorded even with eager start: {record}"
        );
        let finished = record["finished_at_ms"].as_i64().expect("finished");
        assert!(started <= finished, "{record}");
        assert_eq!(record["duration_ms"], finished - started);
    }
    assert_eq!(
        env.show(&ids[0])["labels"]["ticket"],
        "OPS-12",
        "executions show prints the labels"
    );
    // A bad label is refused before anything is recorded.
    let refused = env.stigmer(&["run", "--label", "bad label=x", "true"]);
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused.stderr));
    assert!(
        text(&refused.stderr).contains("label name must be"),
        "{}",
        text(&refused.stderr)
    );
    assert_eq!(export(&env, &[]).len(), 8, "nothing was recorded");
    let second = &lines[3]["record"];
    assert_eq!(second["status"], "failed");
    assert_eq!(second["exit_code"], 4);
    assert_eq!(second["command"], "echo two >&2; exit 4");
    let fourth = &lines[7]["record"];
    assert_eq!(fourth["status"], "succeeded");
    assert_eq!(fourth["exit_code"], 0);
    assert_eq!(fourth["output_bytes"], 4);
    assert_eq!(fourth["output_sha256"], sha256_hex(b"four").as_str());

    // The head, signed by the key the daemon holds; an auditor checks it with the public key,
    // against the head saved at the end of the last run and against an earlier one.
    let signed_head = head(&env);
    assert_eq!(signed_head["seq"], 8);
    assert_eq!(signed_head["hash"], lines[7]["hash"]);
    assert!(
        signed_head["signature"]
            .as_str()
            .is_some_and(|s| s.len() == 128)
    );
    assert!(
        signed_head["key_id"]
            .as_str()
            .is_some_and(|k| k.len() == 16)
    );
    let saved = saved_head(&env);
    assert_eq!(saved, format!("8:{}", lines[7]["hash"].as_str().unwrap()));
    // As a pipeline saves it: only the first line, the reader closing the pipe early.
    let template = env.cmd();
    let mut piped = std::process::Command::new("bash");
    for (k, v) in template.get_envs() {
        match v {
            Some(v) => piped.env(k, v),
            None => piped.env_remove(k),
        };
    }
    piped
        .arg("-c")
        .arg("set -o pipefail; \"$0\" audit head | head -n 1")
        .arg(common::bin());
    let out = common::output_within(piped, std::time::Duration::from_secs(60));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), saved);
    let earlier = format!("3:{}", lines[2]["hash"].as_str().unwrap());
    for anchor in [&saved, &earlier] {
        let (code, said) = verify_with(&env, &["--expect", anchor, "--verify-key", &public]);
        assert_eq!(code, Some(0), "{anchor}: {said}");
        assert!(
            said.contains(&format!("holds the saved head {anchor}")),
            "{said}"
        );
        assert!(said.contains("8 signature(s) verified"), "{said}");
    }
    // The public key may also be a file, as keygen's stdout saved.
    let pub_file = env.dir.path().join("audit.pub");
    std::fs::write(&pub_file, format!("{public}\n")).unwrap();
    let (code, said) = verify_with(&env, &["--verify-key", pub_file.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{said}");
    // Another key's verify key does not vouch for this chain.
    let other_key = env.dir.path().join("other.key");
    let other = env.stigmer(&["audit", "keygen", other_key.to_str().unwrap()]);
    let other_public = text(&other.stdout).trim().to_string();
    let (code, said) = verify_with(&env, &["--verify-key", &other_public]);
    assert_eq!(code, Some(3), "{said}");
    assert!(
        said.contains("seq 8") && said.contains("not by the verify key"),
        "{said}"
    );

    // Someone rewrites history: the failed run becomes a success.
    let original = lines[3]["record"].to_string();
    let forged = canonical(&lines[3]["record"]).replace("\"exit_code\":4", "\"exit_code\":0");
    assert_ne!(forged, canonical(&lines[3]["record"]));
    let changed = exec_sql(
        &env.database_url,
        &format!(
            "UPDATE audit_log SET record = '{}' WHERE seq = 4",
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
    assert!(said.contains("seq 4"), "names the record: {said}");
    assert!(said.contains(&ids[1]), "names its execution: {said}");
    assert!(said.contains("edited"), "{said}");

    // Put it back exactly: the chain holds again (the check is on content, not on a flag).
    exec_sql(
        &env.database_url,
        &format!(
            "UPDATE audit_log SET record = '{}' WHERE seq = 4",
            canonical(&serde_json::from_str::<Value>(&original).unwrap()).replace('\'', "''")
        ),
    );
    let (code, said) = verify(&env);
    assert_eq!(code, Some(0), "restored: {said}");

    // The last record is removed: the head still remembers it.
    assert_eq!(
        exec_sql(&env.database_url, "DELETE FROM audit_log WHERE seq = 8"),
        1
    );
    let (code, said) = verify(&env);
    assert_eq!(code, Some(3), "a deleted last record is detected: {said}");
    assert!(said.contains("seq 8"), "{said}");
    assert!(
        said.contains(&ids[3]),
        "names the execution left unaudited: {said}"
    );

    // A record in the middle is removed.
    assert_eq!(
        exec_sql(&env.database_url, "DELETE FROM audit_log WHERE seq = 4"),
        1
    );
    let (code, said) = verify(&env);
    assert_eq!(code, Some(3), "a deleted middle record is detected: {said}");
    assert!(said.contains("seq 4"), "names the first break: {said}");
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
    assert_eq!(lines.last().unwrap()["seq"], 10);
    let (code, said) = verify(&env);
    assert_eq!(code, Some(3), "{said}");
    assert!(said.contains("seq 4"), "{said}");
}

#[test]
fn export_filters_by_time_and_rejects_bad_input_with_usage() {
    let env = Env::new();
    env.start_daemon();
    let id = run_in_ci(&env, "echo x", 0);
    let recent = export(&env, &["--since", "1h", "--format", "jsonl"]);
    assert_eq!(recent.len(), 2, "its start and end records: {recent:?}");
    for line in &recent {
        assert_eq!(line["record"]["execution_id"], id.as_str());
    }
    assert_eq!(export(&env, &["--since", "2999-01-01T00:00:00Z"]).len(), 0);
    assert_eq!(
        export(&env, &["--since", "2000-01-01T00:00:00+02:00"]).len(),
        2
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

    // An execution deleted from the store while it runs leaves its start record without an end.
    let mut cmd = env.cmd();
    cmd.args(["run", "sleep 3; echo done"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let client = cmd.spawn().expect("run");
    let mut running = None;
    assert!(
        common::eventually(std::time::Duration::from_secs(30), || {
            let last = env.last_execution();
            let ok = last["status"] == "running" && last["id"] != id.as_str();
            if ok {
                running = last["id"].as_str().map(String::from);
            }
            ok
        }),
        "the command starts"
    );
    let running = running.unwrap();
    let (code, said) = verify(&env);
    assert_eq!(
        code,
        Some(0),
        "a running execution has no end record yet: {said}"
    );
    assert!(
        said.contains("1 execution(s) started and not yet ended"),
        "{said}"
    );
    let deleted = exec_sql(
        &env.database_url,
        &format!("DELETE FROM executions WHERE id = '{running}'"),
    );
    assert_eq!(deleted, 1);
    let (code, said) = verify(&env);
    assert_eq!(code, Some(3), "{said}");
    assert!(
        said.contains(&running) && said.contains("no end record") && said.contains("deleted"),
        "names the execution that was deleted while it ran: {said}"
    );
    // Once the command ends the gap stays: nothing is left to append an end record for.
    common::wait_output(client, std::time::Duration::from_secs(60));
    let (code, said) = verify_with(&env, &["--output", "json"]);
    assert_eq!(code, Some(3), "{said}");
    let report: Value = serde_json::from_str(said.lines().next().unwrap()).unwrap();
    assert_eq!(report["broken"]["kind"], "start-without-end", "{report}");
    assert_eq!(
        report["broken"]["execution_id"],
        running.as_str(),
        "{report}"
    );
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
    assert_eq!(
        ids,
        [
            old.as_str(),
            old.as_str(),
            older.as_str(),
            older.as_str(),
            recent.as_str(),
            recent.as_str()
        ]
    );
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
                    report: None,
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

/// Executions recorded through the store as a worker records them: each claimed, its start
/// record appended, then finished (every third one failed, exit 1). Returns their ids.
async fn record_executions(
    store: &stigmer_activities::store::Store,
    prefix: &str,
    count: usize,
) -> Vec<String> {
    use stigmer_activities::audit;
    use stigmer_activities::store::NewExecution;
    use stigmer_workflows::{ExecutionResult, Status};
    let mut ids = Vec::new();
    for i in 0..count {
        let id = format!("aex-{prefix}-{i:02}");
        store
            .insert_execution(&NewExecution {
                id: id.clone(),
                workflow_id: format!("stigmer/agent-execution/{id}"),
                command: format!("step {i}"),
                workdir: "/tmp".into(),
                requested_mode: "local".into(),
                effective_mode: "local".into(),
                reason: "test".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        store.mark_started(&id, "worker-a", 1).await.unwrap();
        assert!(audit::append_started(store, &id).await.unwrap().is_some());
        let failed = i % 3 == 1;
        let result = ExecutionResult {
            id: id.clone(),
            status: if failed {
                Status::Failed
            } else {
                Status::Succeeded
            },
            exit_code: Some(i32::from(failed)),
            error: None,
            report: None,
        };
        let _ = store.finish(&result, None).await.unwrap();
        ids.push(id);
    }
    ids
}

/// A fresh installation's store (no daemon), opened as a worker opens it, on `rt`.
fn fresh_store(rt: &tokio::runtime::Runtime, env: &Env) -> stigmer_activities::store::Store {
    std::fs::create_dir_all(env.data_dir()).unwrap();
    rt.block_on(stigmer_activities::store::Store::open(
        &env.database_url,
        true,
    ))
    .expect("store")
}

/// The runtime the tests that write through the store use between their (blocking) commands.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Rewrites the chain from `from_seq` on as an attacker with write access would: `edit` changes
/// each record, and every later hash is recomputed so the chain and its head are consistent
/// again. The old signatures are kept.
fn rewrite_chain(env: &Env, from_seq: i64, edit: impl Fn(&mut Value)) {
    let lines = export(env, &[]);
    let mut prev = "0".repeat(64);
    for line in &lines {
        let seq = line["seq"].as_i64().unwrap();
        if seq < from_seq {
            prev = line["hash"].as_str().unwrap().to_string();
            continue;
        }
        let mut record = line["record"].clone();
        edit(&mut record);
        let text = canonical(&record);
        let hash = sha256_hex(format!("{prev}{text}").as_bytes());
        exec_sql(
            &env.database_url,
            &format!(
                "UPDATE audit_log SET record = '{}', prev_hash = '{prev}', hash = '{hash}' \
                 WHERE seq = {seq}",
                text.replace('\'', "''")
            ),
        );
        prev = hash;
    }
    exec_sql(
        &env.database_url,
        &format!("UPDATE audit_head SET hash = '{prev}' WHERE id = 1"),
    );
}

/// The anchor a pipeline saved holds at the head and at an earlier record; a chain truncated
/// with its head reset, or rewritten with every hash recomputed, passes a plain `verify` (the
/// chain is consistent) but fails `verify --expect`, which says which it was.
#[test]
fn a_saved_head_catches_truncation_and_a_rewritten_chain() {
    let rt = runtime();
    // Truncation: records 5.. deleted and the head pointed at record 4.
    let env = Env::new();
    let store = fresh_store(&rt, &env);
    rt.block_on(record_executions(&store, "trunc", 6));
    let saved = saved_head(&env);
    assert!(
        saved.starts_with("12:"),
        "6 executions, 12 records: {saved}"
    );
    let (code, said) = verify_with(&env, &["--expect", &saved]);
    assert_eq!(code, Some(0), "a good chain holds its own head: {said}");
    assert!(
        said.contains(&format!("holds the saved head {saved}")),
        "{said}"
    );
    let lines = export(&env, &[]);
    let earlier = format!("5:{}", lines[4]["hash"].as_str().unwrap());
    let (code, said) = verify_with(&env, &["--expect", &earlier]);
    assert_eq!(code, Some(0), "and an earlier head: {said}");

    let fourth_hash = lines[3]["hash"].as_str().unwrap();
    assert_eq!(
        exec_sql(&env.database_url, "DELETE FROM audit_log WHERE seq > 4"),
        8
    );
    exec_sql(
        &env.database_url,
        &format!("UPDATE audit_head SET seq = 4, hash = '{fourth_hash}' WHERE id = 1"),
    );
    let (code, said) = verify(&env);
    assert_eq!(
        code,
        Some(0),
        "without the saved head a consistent truncation cannot be seen: {said}"
    );
    assert!(said.contains("intact: 4 record(s)"), "{said}");
    let (code, said) = verify_with(&env, &["--expect", &saved]);
    assert_eq!(code, Some(3), "{said}");
    assert!(
        said.contains("truncated") && said.contains("8 record(s) are missing"),
        "says how many records are gone: {said}"
    );
    assert!(
        said.contains("ends at seq 4") && said.contains(fourth_hash),
        "says the head it found: {said}"
    );
    let (code, said) = verify_with(&env, &["--expect", &saved, "--output", "json"]);
    assert_eq!(code, Some(3));
    let report: Value = serde_json::from_str(said.lines().next().unwrap()).unwrap();
    assert_eq!(report["broken"]["kind"], "truncated", "{report}");
    drop(store);

    // A full rewrite: the failed step 1 made a success, and every hash after it recomputed.
    let env = Env::new();
    let store = fresh_store(&rt, &env);
    let ids_rewritten = rt.block_on(record_executions(&store, "rewrite", 6));
    let saved = saved_head(&env);
    let before_rewrite = format!("2:{}", export(&env, &[])[1]["hash"].as_str().unwrap());
    rewrite_chain(&env, 4, |record| {
        if record["execution_id"] == ids_rewritten[1].as_str() && record["event"] == "ended" {
            record["status"] = "succeeded".into();
            record["exit_code"] = 0.into();
        }
    });
    assert_eq!(export(&env, &[])[3]["record"]["status"], "succeeded");
    let (code, said) = verify(&env);
    assert_eq!(
        code,
        Some(0),
        "a consistent rewrite passes a plain verify: {said}"
    );
    let (code, said) = verify_with(&env, &["--expect", &saved]);
    assert_eq!(code, Some(3), "{said}");
    assert!(
        said.contains("rewritten") && said.contains("seq 12"),
        "says the record at the saved seq has another hash: {said}"
    );
    assert!(said.contains(&saved), "names the saved head: {said}");
    let (code, said) = verify_with(&env, &["--expect", &before_rewrite]);
    assert_eq!(
        code,
        Some(0),
        "records before the rewrite still hold: {said}"
    );

    // What --expect accepts.
    for bad in [
        "",
        "12",
        "12:abc",
        "twelve:00",
        "-3:00",
        &saved.replace(':', "/"),
    ] {
        let out = env.stigmer(&["audit", "verify", "--expect", bad]);
        assert_eq!(out.status.code(), Some(2), "--expect {bad:?}");
        let err = text(&out.stderr);
        assert!(
            err.contains("--expect")
                && err.contains("SEQ:HASH")
                && err.contains("742:3f9a")
                && err.contains("stigmer audit head"),
            "says the form and where it comes from: {err}"
        );
        assert!(out.stdout.is_empty());
    }
}

/// With a verify key, every signature by it is checked and the head must carry one: a forged
/// signature, a rewrite by someone without the key and a stripped signature are each named.
#[test]
fn signatures_catch_a_writer_without_the_key() {
    let rt = runtime();
    use stigmer_activities::audit::Signer;
    let env = Env::new();
    let signer = Signer::from_seed(&[0x5a; 32]);
    let public = signer.verify_key().to_hex();
    let store = fresh_store(&rt, &env).with_audit_signer(Some(signer.clone()));
    rt.block_on(record_executions(&store, "signed", 3));
    let signed_head = head(&env);
    assert_eq!(signed_head["seq"], 6);
    assert_eq!(signed_head["key_id"], signer.key_id());
    let (code, said) = verify_with(&env, &["--verify-key", &public]);
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains("6 signature(s) verified"), "{said}");

    // A forged signature in the middle (any other 64 bytes).
    let lines = export(&env, &[]);
    let real = lines[2]["signature"].as_str().unwrap().to_string();
    let forged = format!(
        "{}{}",
        if real.starts_with('0') { "1" } else { "0" },
        &real[1..]
    );
    exec_sql(
        &env.database_url,
        &format!("UPDATE audit_log SET signature = '{forged}' WHERE seq = 3"),
    );
    let (code, said) = verify_with(&env, &["--verify-key", &public]);
    assert_eq!(code, Some(3), "{said}");
    assert!(
        said.contains("seq 3") && said.contains("signature") && said.contains(signer.key_id()),
        "names the record whose signature fails: {said}"
    );
    let (code, said) = verify(&env);
    assert_eq!(
        code,
        Some(0),
        "without a key the signatures are not checked: {said}"
    );
    exec_sql(
        &env.database_url,
        &format!("UPDATE audit_log SET signature = '{real}' WHERE seq = 3"),
    );

    // A writer without the key rewrites the chain from record 4 and keeps the old signatures.
    rewrite_chain(&env, 4, |record| {
        record["command"] = "something else".into()
    });
    let (code, said) = verify(&env);
    assert_eq!(code, Some(0), "the rewrite is consistent: {said}");
    let (code, said) = verify_with(&env, &["--verify-key", &public]);
    assert_eq!(code, Some(3), "{said}");
    assert!(
        said.contains("BROKEN at seq 4") && said.contains("does not verify"),
        "{said}"
    );
    // …and, knowing that, strips them.
    exec_sql(
        &env.database_url,
        "UPDATE audit_log SET signature = NULL, signer = NULL WHERE seq >= 4",
    );
    let (code, said) = verify_with(&env, &["--verify-key", &public]);
    assert_eq!(code, Some(3), "{said}");
    assert!(
        said.contains("seq 6") && said.contains("head is not signed"),
        "{said}"
    );

    for bad in ["nonsense", "abcd", &"0".repeat(63)] {
        let out = env.stigmer(&["audit", "verify", "--verify-key", bad]);
        assert_eq!(out.status.code(), Some(2), "--verify-key {bad}");
        let err = text(&out.stderr);
        assert!(
            err.contains("--verify-key") && err.contains("keygen"),
            "says what a key looks like: {err}"
        );
    }
}

/// A start record whose execution the store no longer holds is reported; one still running is
/// not; records written before start records existed (no `event`) still verify.
#[test]
fn a_start_without_an_end_is_named_and_old_records_still_verify() {
    let rt = runtime();
    use stigmer_activities::audit::{self, GENESIS_HASH};
    use stigmer_activities::store::NewExecution;
    let env = Env::new();
    let store = fresh_store(&rt, &env);

    // A record as the first audit trail wrote it: no "event" key.
    let legacy = serde_json::json!({
        "v": 1, "seq": 1, "recorded_at_ms": 1_700_000_000_000_i64,
        "execution_id": "aex-legacy", "status": "succeeded", "command": "true"
    });
    let legacy_text = canonical(&legacy);
    let legacy_hash = sha256_hex(format!("{GENESIS_HASH}{legacy_text}").as_bytes());
    exec_sql(
        &env.database_url,
        &format!(
            "INSERT INTO audit_log (seq, execution_id, recorded_at, record, prev_hash, hash) \
             VALUES (1, 'aex-legacy', 1700000000000, '{legacy_text}', '{GENESIS_HASH}', \
             '{legacy_hash}')"
        ),
    );
    exec_sql(
        &env.database_url,
        &format!("UPDATE audit_head SET seq = 1, hash = '{legacy_hash}' WHERE id = 1"),
    );
    let done = rt.block_on(record_executions(&store, "done", 1));

    // One still running.
    let running = "aex-still-running";
    rt.block_on(store.insert_execution(&NewExecution {
        id: running.into(),
        workflow_id: format!("stigmer/agent-execution/{running}"),
        command: "sleep 100".into(),
        workdir: "/tmp".into(),
        requested_mode: "local".into(),
        effective_mode: "local".into(),
        reason: "test".into(),
        ..Default::default()
    }))
    .unwrap();
    rt.block_on(store.mark_started(running, "worker-a", 1))
        .unwrap();
    assert!(
        rt.block_on(audit::append_started(&store, running))
            .unwrap()
            .is_some()
    );
    assert!(
        rt.block_on(audit::append_started(&store, running))
            .unwrap()
            .is_none(),
        "one start record per execution"
    );
    let lines = export(&env, &[]);
    let events: Vec<&str> = lines.iter().map(|l| l["event"].as_str().unwrap()).collect();
    assert_eq!(events, ["ended", "started", "ended", "started"]);
    assert_eq!(
        lines[0]["record"].get("event"),
        None,
        "the old record as it was"
    );
    assert_eq!(lines[1]["record"]["execution_id"], done[0].as_str());
    let (code, said) = verify(&env);
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains("intact: 4 record(s)"), "{said}");
    assert!(
        said.contains("1 execution(s) started and not yet ended"),
        "{said}"
    );

    // It is deleted from the store, as someone hiding it would.
    exec_sql(
        &env.database_url,
        &format!("DELETE FROM executions WHERE id = '{running}'"),
    );
    let (code, said) = verify(&env);
    assert_eq!(code, Some(3), "{said}");
    assert!(
        said.contains("seq 4") && said.contains(running) && said.contains("no end record"),
        "names the execution and its start record: {said}"
    );
    // Saving a head does not make it go away.
    let saved = saved_head(&env);
    let (code, said) = verify_with(&env, &["--expect", &saved]);
    assert_eq!(code, Some(3), "{said}");
    assert!(said.contains(running), "{said}");
}
