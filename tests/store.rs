//! The store's guarantees, on the database the suite runs against (SQLite, or Postgres when
//! `STIGMER_TEST_POSTGRES_URL` is set): a command is claimed once however many attempts race for
//! it, a terminal state is recorded once, environment values are wiped at the end, output
//! comes back in order.

mod common;

use stigmer_activities::store::{LeaseState, NewExecution, OutputSummary, StartClaim, Store};
use stigmer_workflows::{ExecutionResult, Status};

async fn open(env: &common::Env) -> Store {
    std::fs::create_dir_all(env.data_dir()).unwrap();
    Store::open(&env.database_url, true)
        .await
        .expect("open store")
}

fn new_execution(id: &str) -> NewExecution {
    NewExecution {
        id: id.into(),
        workflow_id: format!("stigmer/agent-execution/{id}"),
        command: "echo hi".into(),
        workdir: "/tmp".into(),
        requested_mode: "local".into(),
        effective_mode: "local".into(),
        reason: "test".into(),
        env_names: vec!["TOKEN".into()],
        ..Default::default()
    }
}

#[tokio::test]
async fn a_command_is_claimed_once_even_when_attempts_race() {
    let env = common::Env::new();
    let store = open(&env).await;
    for round in 0..10 {
        let id = format!("aex-race-{round}");
        store.insert_execution(&new_execution(&id)).await.unwrap();
        let mut tasks = Vec::new();
        for worker in 0..8 {
            let store = store.clone();
            let id = id.clone();
            tasks.push(tokio::spawn(async move {
                store
                    .mark_started(&id, &format!("w{worker}"), 1)
                    .await
                    .unwrap()
            }));
        }
        let mut claimed = 0;
        for t in tasks {
            if matches!(t.await.unwrap(), StartClaim::Claimed) {
                claimed += 1;
            }
        }
        assert_eq!(
            claimed, 1,
            "round {round}: exactly one attempt may spawn the command"
        );
    }
}

#[tokio::test]
async fn the_first_terminal_state_wins_and_no_environment_value_is_kept() {
    let env = common::Env::new();
    let store = open(&env).await;
    store
        .insert_execution(&new_execution("aex-t1"))
        .await
        .unwrap();
    assert!(
        store.execution_env("aex-t1").await.unwrap().is_empty(),
        "the store keeps the names of the environment, never a value"
    );
    assert!(matches!(
        store.mark_started("aex-t1", "w1", 1).await.unwrap(),
        StartClaim::Claimed
    ));
    assert!(matches!(
        store.mark_started("aex-t1", "w2", 2).await.unwrap(),
        StartClaim::AlreadyStarted { worker_id: Some(ref w) } if w == "w1"
    ));
    let done = ExecutionResult {
        id: "aex-t1".into(),
        status: Status::Failed,
        exit_code: Some(3),
        error: None,
        report: None,
    };
    let summary = OutputSummary {
        bytes: 3,
        dropped: 0,
        sha256: Some("abc".into()),
        stdin: None,
    };
    let finished = store.finish(&done, Some(&summary)).await.unwrap();
    assert!(
        finished.appended.is_some(),
        "the first finish appends the audit record"
    );
    let recorded = finished.result;
    assert_eq!(recorded.exit_code, Some(3));
    let late = ExecutionResult::ended("aex-t1", Status::Cancelled, "too late");
    let finished = store.finish(&late, None).await.unwrap();
    assert!(
        finished.appended.is_none(),
        "an execution's end is reported once"
    );
    let kept = finished.result;
    assert_eq!(
        kept.status,
        Status::Failed,
        "a terminal state is never overwritten"
    );
    assert!(
        store.execution_env("aex-t1").await.unwrap().is_empty(),
        "nothing of the environment is left at the end"
    );
    match store.mark_started("aex-t1", "w3", 3).await.unwrap() {
        StartClaim::AlreadyFinished(r) => assert_eq!(r.exit_code, Some(3)),
        other => panic!("expected AlreadyFinished, got {other:?}"),
    }
    let record = store.get_execution("aex-t1").await.unwrap().unwrap();
    assert_eq!(record.output_bytes, 3);
    assert_eq!(record.output_sha256.as_deref(), Some("abc"));
}

#[tokio::test]
async fn output_comes_back_in_order_and_pages() {
    let env = common::Env::new();
    let store = open(&env).await;
    store
        .insert_execution(&new_execution("aex-o1"))
        .await
        .unwrap();
    let chunks: Vec<(i64, &str, Vec<u8>)> = (0..500)
        .map(|i| {
            (
                i,
                if i % 3 == 0 { "stderr" } else { "stdout" },
                format!("line {i}\n").into_bytes(),
            )
        })
        .collect();
    for batch in chunks.chunks(37) {
        let rows: Vec<(i64, &str, &[u8])> = batch
            .iter()
            .map(|(s, st, d)| (*s, *st, d.as_slice()))
            .collect();
        store.append_output("aex-o1", &rows).await.unwrap();
    }
    let mut seen = Vec::new();
    let mut after = -1;
    loop {
        let page = store.read_output("aex-o1", after, 64).await.unwrap();
        if page.is_empty() {
            break;
        }
        after = page.last().unwrap().seq;
        seen.extend(page);
    }
    assert_eq!(seen.len(), 500);
    for (i, c) in seen.iter().enumerate() {
        assert_eq!(c.seq, i as i64);
        assert_eq!(c.data, format!("line {i}\n").into_bytes());
        assert_eq!(c.stream, if i % 3 == 0 { "stderr" } else { "stdout" });
    }
}

#[tokio::test]
async fn a_client_never_creates_or_migrates_the_store() {
    let env = common::Env::new();
    if env.database_url.starts_with("sqlite:") {
        let err = Store::open(&env.database_url, false)
            .await
            .expect_err("no store yet");
        let msg = format!("{err}");
        assert!(
            msg.contains("stigmer server start") || msg.contains("could not open"),
            "{msg}"
        );
    }
    let store = open(&env).await;
    let id = store.store_id().to_string();
    let again = Store::open(&env.database_url, true).await.unwrap();
    assert_eq!(again.store_id(), id, "the store id is stable across opens");
}

/// A container passes from one execution to the next through `idle`; a late step of the first
/// (its release, say, deciding to taint) must not taint what the second now holds, and the
/// starter's warm-path hint sees only idle, untainted containers inside their TTL.
#[tokio::test]
async fn a_late_taint_never_reaches_the_next_holder_and_the_warm_hint_sees_only_idle_containers() {
    let env = common::Env::new();
    let store = open(&env).await;
    let (spec, engine) = ("spec-hash-1", "ENGINE-A");
    let lease = store
        .create_lease(&stigmer_activities::store::NewLease {
            backend: "docker",
            worker_id: "host-1",
            engine_id: Some(engine),
            image: "img",
            spec_hash: spec,
            ttl_secs: 600,
            execution_id: "aex-first",
        })
        .await
        .unwrap();
    store
        .lease_created(&lease.id, &"c".repeat(64))
        .await
        .unwrap();
    assert_eq!(
        store.idle_engine("docker", spec).await.unwrap(),
        None,
        "busy"
    );

    let state = store
        .release_lease(&lease.id, true, None, Some("aex-first"))
        .await
        .unwrap();
    assert_eq!(state, LeaseState::Idle);
    assert_eq!(
        store.idle_engine("docker", spec).await.unwrap().as_deref(),
        Some(engine)
    );
    assert_eq!(
        store.idle_engine("docker", "other-spec").await.unwrap(),
        None
    );

    let taken = store
        .acquire_idle("docker", spec, Some(engine), "aex-second", "host-1")
        .await
        .unwrap()
        .expect("the idle container is taken");
    assert_eq!(taken.id, lease.id);

    store
        .taint_lease(&lease.id, "late", Some("aex-first"))
        .await
        .unwrap();
    let now = store.get_lease(&lease.id).await.unwrap().unwrap();
    assert_eq!(
        now.tainted, 0,
        "the first execution's late taint is ignored"
    );
    store
        .taint_lease(&lease.id, "stray process", Some("aex-second"))
        .await
        .unwrap();
    let now = store.get_lease(&lease.id).await.unwrap().unwrap();
    assert_eq!(now.tainted, 1, "its holder taints it");

    let state = store
        .release_lease(&lease.id, true, None, Some("aex-second"))
        .await
        .unwrap();
    assert_ne!(
        state,
        LeaseState::Idle,
        "a tainted container never goes back to idle"
    );
    assert_eq!(store.idle_engine("docker", spec).await.unwrap(), None);
}

/// A store that fails while a local command runs ends the run with the error, and the command
/// goes with it: it must not run on while its execution is recorded failed.
#[test]
fn a_command_whose_store_fails_mid_run_is_killed_not_left_running() {
    use std::time::Duration;
    use stigmer_activities::hub::Hub;
    use stigmer_activities::local::{self, Stopper};
    use stigmer_activities::output::OutputSink;
    use stigmer_activities::process::alive;

    let env = common::Env::new();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let id = "aex-store-fails";
    let store = runtime.block_on(open(&env));
    runtime
        .block_on(store.insert_execution(&new_execution(id)))
        .unwrap();
    // The output table goes away under the running command: its next flush fails.
    common::exec_sql(&env.database_url, "DROP TABLE output");
    let pid_file = env.dir.path().join("command.pid");
    let script = format!(
        "echo $$ > {}; sleep 30 & while :; do echo tick; sleep 0.05; done",
        pid_file.display()
    );
    let argv = vec!["/bin/sh".to_string(), "-c".to_string(), script];
    let workdir = common::path_str(env.dir.path());
    let ended = runtime.block_on(async {
        let mut sink = OutputSink::new(store.clone(), Hub::new(), id, 1 << 20);
        tokio::time::timeout(
            Duration::from_secs(20),
            local::run(
                &argv,
                &workdir,
                &[],
                &mut sink,
                &Stopper::new(),
                None,
                |_| {},
            ),
        )
        .await
    });
    let Ok(ended) = ended else {
        panic!("the run did not end when its store failed");
    };
    assert!(ended.is_err(), "the store error ends the run: {ended:?}");
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let pid = nix::unistd::Pid::from_raw(pid);
    assert!(
        common::eventually(Duration::from_secs(2), || !alive(pid)),
        "the command is still running after its run failed"
    );
    let in_group = |p: &i32| nix::unistd::getpgid(Some(nix::unistd::Pid::from_raw(*p))) == Ok(pid);
    assert!(
        common::eventually(Duration::from_secs(2), || !common::processes_matching(
            "sleep 30"
        )
        .iter()
        .any(in_group)),
        "a child of the command is still running after its run failed"
    );
}

#[tokio::test]
async fn a_session_is_held_by_one_execution_at_a_time_and_freed_when_it_ends() {
    use stigmer_activities::store::NewSession;
    let env = common::Env::new();
    let store = open(&env).await;
    store
        .create_session(&NewSession {
            id: "ses-1".into(),
            name: Some("work".into()),
            mode: "sandbox".into(),
            spec: Some("{}".into()),
            ttl_secs: 3600,
            creator: "uid:1000".into(),
        })
        .await
        .unwrap();
    assert_eq!(
        store.get_session("work").await.unwrap().unwrap().id,
        "ses-1"
    );
    // A live name is unique.
    let twin = NewSession {
        id: "ses-2".into(),
        name: Some("work".into()),
        mode: "local".into(),
        ttl_secs: 60,
        creator: "uid:1000".into(),
        ..Default::default()
    };
    assert!(store.create_session(&twin).await.is_err());

    store
        .insert_execution(&new_execution("aex-s1"))
        .await
        .unwrap();
    store
        .insert_execution(&new_execution("aex-s2"))
        .await
        .unwrap();
    assert!(store.try_acquire_session("ses-1", "aex-s1").await.unwrap());
    assert!(
        !store.try_acquire_session("ses-1", "aex-s2").await.unwrap(),
        "a second command must wait"
    );
    let s = store.get_session("ses-1").await.unwrap().unwrap();
    assert_eq!(s.busy.as_deref(), Some("aex-s1"));
    // Its end frees the session.
    let done = ExecutionResult {
        id: "aex-s1".into(),
        status: Status::Succeeded,
        exit_code: Some(0),
        error: None,
        report: None,
    };
    let _ = store.finish(&done, None).await.unwrap();
    assert!(
        store
            .get_session("ses-1")
            .await
            .unwrap()
            .unwrap()
            .busy
            .is_none()
    );
    assert!(store.try_acquire_session("ses-1", "aex-s2").await.unwrap());
    // A holder that ended without its finish reaching the session no longer counts.
    exec_status(&env, "aex-s2", "failed").await;
    store
        .insert_execution(&new_execution("aex-s3"))
        .await
        .unwrap();
    assert!(store.try_acquire_session("ses-1", "aex-s3").await.unwrap());
    store.release_session("aex-s3").await.unwrap();

    // The sealed state is kept as given; a command that saved nothing marks it lost.
    store
        .save_session_state("ses-1", Some(b"sealed"))
        .await
        .unwrap();
    assert_eq!(
        store.session_state("ses-1").await.unwrap(),
        (Some(b"sealed".to_vec()), false)
    );
    store.save_session_state("ses-1", None).await.unwrap();
    assert_eq!(
        store.session_state("ses-1").await.unwrap(),
        (Some(b"sealed".to_vec()), true)
    );

    // Idle past its TTL: expired; ended: gone from the live list, its name free, never taken.
    assert!(
        store
            .expired_sessions(stigmer_activities::store::now_ms())
            .await
            .unwrap()
            .is_empty()
    );
    let later = stigmer_activities::store::now_ms() + 3_601_000;
    let expired = store.expired_sessions(later).await.unwrap();
    assert_eq!(expired.len(), 1);
    assert!(
        store
            .end_session("ses-1", "idle past its TTL")
            .await
            .unwrap()
    );
    assert!(!store.end_session("ses-1", "again").await.unwrap());
    assert!(store.list_sessions(false).await.unwrap().is_empty());
    assert_eq!(store.list_sessions(true).await.unwrap().len(), 1);
    assert!(
        store.session_state("ses-1").await.unwrap().0.is_none(),
        "the state goes with it"
    );
    store
        .insert_execution(&new_execution("aex-s4"))
        .await
        .unwrap();
    assert!(!store.try_acquire_session("ses-1", "aex-s4").await.unwrap());
    store.create_session(&twin).await.unwrap();
    assert_eq!(
        store.get_session("work").await.unwrap().unwrap().id,
        "ses-2"
    );
}

/// Sets an execution's status behind the store's back (a finish that never came).
async fn exec_status(env: &common::Env, id: &str, status: &str) {
    let url = env.database_url.clone();
    let sql = format!("UPDATE executions SET status = '{status}' WHERE id = '{id}'");
    tokio::task::spawn_blocking(move || common::exec_sql(&url, &sql))
        .await
        .unwrap();
}
