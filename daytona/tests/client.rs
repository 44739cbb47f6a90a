//! The client against the fake Daytona: sandbox lifecycle, command execution, sessions and log
//! following, with every exchange checked against Daytona's published API description.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{assert_conforms, client, config, fake, started_sandbox};
use stigmer_daytona::fake::{FakeDaytona, SandboxFate, ScriptedCommand};
use stigmer_daytona::{
    Client, CreateSandbox, Error, ExecuteCommand, FollowOptions, LogChunk, OutputStream, Resources,
    SandboxState, ToolboxAddressing, WaitOptions, sh_c,
};
use url::Url;

fn collect(chunks: &[LogChunk], stream: OutputStream) -> String {
    let bytes: Vec<u8> = chunks
        .iter()
        .filter(|c| c.stream == stream)
        .flat_map(|c| c.data.clone())
        .collect();
    String::from_utf8(bytes).expect("utf-8 output")
}

#[tokio::test]
async fn create_wait_execute_delete() {
    let fake = FakeDaytona::builder()
        .start_delay(Duration::from_millis(300))
        .start()
        .await
        .unwrap();
    fake.script_command("echo hello", ScriptedCommand::exit(0).stdout("hello\n"));
    let client = client(&fake);

    let request = CreateSandbox::from_snapshot("stigmer-dev-tools")
        .name("run-42")
        .label("stigmer.dev/execution", "42")
        .env("CI", "1")
        .resources(Resources {
            cpu: Some(2),
            memory_gib: Some(4),
            disk_gib: Some(10),
        })
        .network_block_all(false)
        .network_allow_list(["10.0.0.0/8", "192.168.0.0/16"])
        .auto_stop_minutes(15)
        .auto_delete_minutes(0);
    let created = client.create_sandbox(request).await.unwrap();
    assert!(
        matches!(
            created.state,
            Some(SandboxState::Creating | SandboxState::Starting)
        ),
        "a new sandbox is not started yet: {:?}",
        created.state
    );
    assert_eq!(created.labels["stigmer.dev/execution"], "42");

    let started = client
        .wait_until_started(&created.id, &WaitOptions::default())
        .await
        .unwrap();
    assert_eq!(started.state, Some(SandboxState::Started));
    assert!(
        fake.requests_for("getSandbox").len() >= 2,
        "waiting polled more than once"
    );

    let out = client
        .toolbox_for(&started)
        .unwrap()
        .execute(&ExecuteCommand::new("echo hello", Duration::from_millis(4500)).cwd("/tmp"))
        .await
        .unwrap();
    assert_eq!(out.exit_code, 0);
    assert_eq!(out.result, "hello\n");

    assert!(client.delete_sandbox(&created.id).await.unwrap());
    assert!(
        !client.delete_sandbox(&created.id).await.unwrap(),
        "already gone"
    );
    let err = client.get_sandbox(&created.id).await.unwrap_err();
    assert!(err.is_not_found(), "{err}");

    // What went over the wire.
    let create = &fake.requests_for("createSandbox")[0];
    let body = create.body.as_ref().unwrap();
    assert_eq!(body["snapshot"], "stigmer-dev-tools");
    assert_eq!(body["networkAllowList"], "10.0.0.0/8,192.168.0.0/16");
    assert_eq!(body["networkBlockAll"], false);
    assert_eq!(
        (
            body["cpu"].clone(),
            body["memory"].clone(),
            body["disk"].clone()
        ),
        (2.into(), 4.into(), 10.into())
    );
    assert_eq!(body["autoStopInterval"], 15);
    assert_eq!(body["env"]["CI"], "1");
    let exec = &fake.requests_for("ExecuteCommand")[0];
    let body = exec.body.as_ref().unwrap();
    assert_eq!(
        body["timeout"], 5,
        "the timeout is always sent, rounded up to seconds"
    );
    assert_eq!(body["cwd"], "/tmp");
    assert!(exec.path.starts_with(&format!("/toolbox/{}/", created.id)));
    // The fake's answers carry a field the description does not have; the client ignored it.
    assert!(
        create
            .response_body
            .as_ref()
            .unwrap()
            .get("fakeDaytona")
            .is_some()
    );
    assert!(assert_conforms(&fake) >= 6);
}

#[tokio::test]
async fn execute_merges_stdout_and_stderr_and_reports_the_exit_code() {
    let fake = fake().await;
    fake.script_command(
        "make",
        ScriptedCommand::exit(3)
            .stdout("compiling\n")
            .stderr("error: boom\n"),
    );
    let client = client(&fake);
    let sandbox = started_sandbox(&client).await;
    let out = client
        .toolbox_for(&sandbox)
        .unwrap()
        .execute(&ExecuteCommand::new("make all", Duration::from_secs(5)).env("RUST_LOG", "info"))
        .await
        .unwrap();
    assert_eq!(out.exit_code, 3);
    assert_eq!(out.result, "compiling\nerror: boom\n");
    let body = fake.requests_for("ExecuteCommand")[0].body.clone().unwrap();
    assert_eq!(body["envs"]["RUST_LOG"], "info");
    assert_conforms(&fake);
}

#[tokio::test]
async fn a_slow_command_is_stopped_at_its_timeout() {
    let fake = fake().await;
    fake.script_command(
        "sleep",
        ScriptedCommand::exit(0).sleep(Duration::from_secs(4)),
    );
    let client = client(&fake);
    let sandbox = started_sandbox(&client).await;
    let started = Instant::now();
    let err = client
        .toolbox_for(&sandbox)
        .unwrap()
        .execute(&ExecuteCommand::new("sleep 4", Duration::from_secs(1)))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::CommandTimeout { timeout, .. } if *timeout == Duration::from_secs(1)),
        "{err:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "did not wait for the command"
    );
    assert_eq!(
        fake.requests_for("ExecuteCommand").len(),
        1,
        "a timed-out command is not run again"
    );
}

#[tokio::test]
async fn the_client_gives_up_on_a_server_that_ignores_the_timeout() {
    let fake = fake().await;
    fake.set_honour_exec_timeout(false);
    fake.script_command(
        "sleep",
        ScriptedCommand::exit(0).sleep(Duration::from_secs(6)),
    );
    let client = Client::new(config(&fake).with_call_timeout(Duration::from_millis(300))).unwrap();
    let sandbox = started_sandbox(&client).await;
    let started = Instant::now();
    let err = client
        .toolbox_for(&sandbox)
        .unwrap()
        .execute(&ExecuteCommand::new("sleep 6", Duration::from_secs(1)))
        .await
        .unwrap_err();
    let waited = started.elapsed();
    assert!(matches!(err, Error::Timeout { attempts: 1, .. }), "{err:?}");
    assert!(
        err.to_string().contains("execute a command in sandbox"),
        "{err}"
    );
    // The command's 1 s plus the 0.3 s call timeout, not the server's 6 s.
    assert!(
        waited >= Duration::from_millis(1300) && waited < Duration::from_secs(6),
        "{waited:?}"
    );
    assert_eq!(
        fake.requests_for("ExecuteCommand").len(),
        1,
        "not retried: it may have run"
    );
}

#[tokio::test]
async fn a_sandbox_stuck_in_starting_times_out_naming_it_and_its_state() {
    let fake = fake().await;
    fake.push_sandbox_fate(SandboxFate::StuckStarting);
    let client = client(&fake);
    let sandbox = client
        .create_sandbox(CreateSandbox::default())
        .await
        .unwrap();
    let started = Instant::now();
    let err = client
        .wait_until_started(
            &sandbox.id,
            &WaitOptions::with_timeout(Duration::from_millis(800)),
        )
        .await
        .unwrap_err();
    match &err {
        Error::StartTimeout {
            sandbox_id,
            last_state,
            ..
        } => {
            assert_eq!(sandbox_id, &sandbox.id);
            assert_eq!(last_state, "starting");
        }
        other => panic!("expected a start timeout, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains(&sandbox.id) && msg.contains("`starting`"),
        "{msg}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        fake.requests_for("getSandbox").len() >= 3,
        "it kept polling until the deadline"
    );
}

#[tokio::test]
async fn error_and_build_failed_states_carry_the_error_reason() {
    let fake = fake().await;
    fake.push_sandbox_fate(SandboxFate::Error("no capacity left in region us".into()));
    fake.push_sandbox_fate(SandboxFate::BuildFailed(
        "RUN apt-get install failed".into(),
    ));
    let client = client(&fake);
    for (state, reason) in [
        ("error", "no capacity left in region us"),
        ("build_failed", "RUN apt-get install failed"),
    ] {
        let sandbox = client
            .create_sandbox(CreateSandbox::default())
            .await
            .unwrap();
        let err = client
            .wait_until_started(&sandbox.id, &WaitOptions::default())
            .await
            .unwrap_err();
        match &err {
            Error::SandboxFailed {
                sandbox_id,
                state: s,
                reason: r,
                recoverable,
            } => {
                assert_eq!(sandbox_id, &sandbox.id);
                assert_eq!(s, state);
                assert_eq!(r, reason);
                assert_eq!(*recoverable, Some(false));
            }
            other => panic!("expected a failed sandbox, got {other:?}"),
        }
        assert!(err.to_string().contains(reason), "{err}");
    }
    assert_conforms(&fake);
}

#[tokio::test]
async fn list_by_labels_filters_and_follows_pages() {
    let fake = FakeDaytona::builder()
        .start_delay(Duration::ZERO)
        .max_page_size(2)
        .start()
        .await
        .unwrap();
    let client = client(&fake);
    let mut run_a = Vec::new();
    for i in 0..5 {
        let run = if i % 2 == 0 { "a" } else { "b" };
        let sandbox = client
            .create_sandbox(
                CreateSandbox::default()
                    .label("stigmer.dev/run", run)
                    .label("stigmer.dev/owner", "tests"),
            )
            .await
            .unwrap();
        if run == "a" {
            run_a.push(sandbox.id);
        }
    }
    let labels = BTreeMap::from([("stigmer.dev/run".to_owned(), "a".to_owned())]);
    let mut found: Vec<String> = client
        .list_sandboxes(&labels)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    found.sort();
    assert_eq!(found, run_a);
    let lists = fake.requests_for("listSandboxes");
    assert_eq!(lists.len(), 2, "3 matches in pages of 2");
    assert!(lists[1].query.as_deref().unwrap().contains("cursor="));
    let query: Vec<(String, String)> =
        Url::parse(&format!("http://x/?{}", lists[0].query.as_deref().unwrap()))
            .unwrap()
            .query_pairs()
            .into_owned()
            .collect();
    assert!(
        query.contains(&("labels".into(), r#"{"stigmer.dev/run":"a"}"#.into())),
        "{query:?}"
    );

    let owner = BTreeMap::from([("stigmer.dev/owner".to_owned(), "tests".to_owned())]);
    assert_eq!(client.list_sandboxes(&owner).await.unwrap().len(), 5);
    let none = BTreeMap::from([("stigmer.dev/run".to_owned(), "z".to_owned())]);
    assert!(client.list_sandboxes(&none).await.unwrap().is_empty());
    assert_conforms(&fake);
}

#[tokio::test]
async fn toolbox_by_id_asks_the_api_for_its_url_once() {
    let fake = fake().await;
    fake.script_command("true", ScriptedCommand::exit(0));
    let sandbox = started_sandbox(&client(&fake)).await;
    // A fresh client, as on another worker that only has the id.
    let client = client(&fake);
    let toolbox = client.toolbox(&sandbox.id).await.unwrap();
    assert_eq!(
        toolbox.base_url().as_str(),
        format!("{}/{}", fake.toolbox_url(), sandbox.id)
    );
    let again = client.toolbox(&sandbox.id).await.unwrap();
    assert_eq!(again.base_url(), toolbox.base_url());
    assert_eq!(fake.requests_for("getToolboxProxyUrl").len(), 1);
    again
        .execute(&ExecuteCommand::new("true", Duration::from_secs(2)))
        .await
        .unwrap();
    assert_conforms(&fake);
}

#[tokio::test]
async fn fixed_and_deprecated_toolbox_addressing() {
    let fake = fake().await;
    fake.script_command("uname", ScriptedCommand::exit(0).stdout("Linux\n"));
    let sandbox = started_sandbox(&client(&fake)).await;

    let fixed = Client::new(config(&fake).with_toolbox(ToolboxAddressing::Fixed(
        Url::parse(&fake.toolbox_url()).unwrap(),
    )))
    .unwrap();
    let out = fixed
        .toolbox(&sandbox.id)
        .await
        .unwrap()
        .execute(&ExecuteCommand::new("uname", Duration::from_secs(2)))
        .await
        .unwrap();
    assert_eq!(out.result, "Linux\n");
    assert!(fake.requests_for("getToolboxProxyUrl").is_empty());

    let old = Client::new(config(&fake).with_toolbox(ToolboxAddressing::ApiDeprecated)).unwrap();
    let toolbox = old.toolbox(&sandbox.id).await.unwrap();
    let out = toolbox
        .execute(&ExecuteCommand::new("uname", Duration::from_secs(2)))
        .await
        .unwrap();
    assert_eq!(out.result, "Linux\n");
    let deprecated = fake.requests_for("executeCommand_deprecated");
    assert_eq!(deprecated.len(), 1);
    assert_eq!(
        deprecated[0].path,
        format!("/api/toolbox/{}/toolbox/process/execute", sandbox.id)
    );
    let err = toolbox
        .execute(&ExecuteCommand::new("uname", Duration::from_secs(2)).env("A", "1"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unsupported(_)), "{err:?}");
    assert_conforms(&fake);
}

fn streaming_build() -> ScriptedCommand {
    ScriptedCommand::exit(4)
        .stdout("step 1\n")
        .sleep(Duration::from_millis(150))
        .stderr("warning: deprecated flag\n")
        .sleep(Duration::from_millis(150))
        .stdout("step 2\n")
        .sleep(Duration::from_millis(150))
        .stderr("error: tests failed\n")
        .sleep(Duration::from_millis(150))
        .stdout("done\n")
}

const BUILD_STDOUT: &str = "step 1\nstep 2\ndone\n";
const BUILD_STDERR: &str = "warning: deprecated flag\nerror: tests failed\n";

async fn run_build(
    fake: &FakeDaytona,
    options: &FollowOptions,
) -> (Vec<LogChunk>, stigmer_daytona::FollowOutcome) {
    fake.script_command("./build.sh", streaming_build());
    let client = client(fake);
    let sandbox = started_sandbox(&client).await;
    let toolbox = client.toolbox_for(&sandbox).unwrap();
    toolbox.create_session("stigmer-run").await.unwrap();
    let command_id = toolbox
        .start_command("stigmer-run", "./build.sh --all")
        .await
        .unwrap();
    let mut chunks = Vec::new();
    let outcome = toolbox
        .follow_command("stigmer-run", &command_id, options, |c| chunks.push(c))
        .await
        .unwrap();
    let cmd = toolbox
        .get_command("stigmer-run", &command_id)
        .await
        .unwrap();
    assert_eq!(cmd.exit_code, Some(4));
    toolbox.delete_session("stigmer-run").await.unwrap();
    (chunks, outcome)
}

#[tokio::test]
async fn session_command_streams_stdout_and_stderr_apart_over_websocket() {
    let fake = fake().await;
    let (chunks, outcome) = run_build(&fake, &FollowOptions::default()).await;
    assert_eq!(collect(&chunks, OutputStream::Stdout), BUILD_STDOUT);
    assert_eq!(collect(&chunks, OutputStream::Stderr), BUILD_STDERR);
    assert_eq!(outcome.exit_code, 4);
    assert!(
        outcome.used_websocket && !outcome.websocket_interrupted,
        "{outcome:?}"
    );
    assert_eq!(outcome.stdout_bytes, BUILD_STDOUT.len() as u64);
    assert!(
        chunks.len() >= 4,
        "output arrived as it was written: {chunks:?}"
    );
    let logs = fake.requests_for("GetSessionCommandLogs");
    let ws: Vec<_> = logs.iter().filter(|r| r.websocket).collect();
    assert_eq!(ws.len(), 1);
    assert_eq!(ws[0].status, 101);
    assert_eq!(ws[0].query.as_deref(), Some("follow=true"));
    assert_eq!(ws[0].header("x-daytona-split-output"), Some("true"));
    let exec = &fake.requests_for("SessionExecuteCommand")[0];
    assert_eq!(exec.body.as_ref().unwrap()["runAsync"], true);
    assert_eq!(exec.status, 202);
    assert_conforms(&fake);
}

#[tokio::test]
async fn follow_polls_when_the_server_offers_no_websocket() {
    let fake = fake().await;
    fake.set_websocket_logs(false);
    let options = FollowOptions {
        poll_interval: Duration::from_millis(60),
        ..FollowOptions::default()
    };
    let (chunks, outcome) = run_build(&fake, &options).await;
    assert_eq!(collect(&chunks, OutputStream::Stdout), BUILD_STDOUT);
    assert_eq!(collect(&chunks, OutputStream::Stderr), BUILD_STDERR);
    assert_eq!(outcome.exit_code, 4);
    assert!(!outcome.used_websocket, "{outcome:?}");
    let logs = fake.requests_for("GetSessionCommandLogs");
    assert!(
        logs.iter().any(|r| r.websocket && r.status == 200),
        "the upgrade was refused"
    );
    assert!(
        logs.iter().filter(|r| !r.websocket).count() >= 3,
        "polled while it ran"
    );
    assert_conforms(&fake);
}

#[tokio::test]
async fn a_dropped_log_stream_is_resumed_by_polling_without_loss_or_repeat() {
    let fake = fake().await;
    fake.drop_log_streams_after(Some(1));
    let options = FollowOptions {
        poll_interval: Duration::from_millis(60),
        ..FollowOptions::default()
    };
    let (chunks, outcome) = run_build(&fake, &options).await;
    assert!(
        outcome.used_websocket && outcome.websocket_interrupted,
        "{outcome:?}"
    );
    assert_eq!(collect(&chunks, OutputStream::Stdout), BUILD_STDOUT);
    assert_eq!(collect(&chunks, OutputStream::Stderr), BUILD_STDERR);
    assert_eq!(outcome.exit_code, 4);
    assert_eq!(
        chunks[0],
        LogChunk {
            stream: OutputStream::Stdout,
            data: b"step 1\n".to_vec()
        },
        "the first frame came over the socket"
    );
    let logs = fake.requests_for("GetSessionCommandLogs");
    assert!(logs.iter().any(|r| !r.websocket), "polling took over");
    assert_conforms(&fake);
}

#[tokio::test]
async fn following_past_the_deadline_is_a_clear_error() {
    for websocket in [true, false] {
        let fake = fake().await;
        fake.script_command(
            "serve",
            ScriptedCommand::exit(0)
                .stdout("listening\n")
                .sleep(Duration::from_secs(10)),
        );
        let client = client(&fake);
        let sandbox = started_sandbox(&client).await;
        let toolbox = client.toolbox_for(&sandbox).unwrap();
        toolbox.create_session("s").await.unwrap();
        let id = toolbox
            .start_command("s", "serve --port 8080")
            .await
            .unwrap();
        let options = FollowOptions {
            websocket,
            poll_interval: Duration::from_millis(50),
            deadline: Some(Duration::from_millis(400)),
            ..FollowOptions::default()
        };
        let mut out = Vec::new();
        let started = Instant::now();
        let err = toolbox
            .follow_command("s", &id, &options, |c| out.push(c))
            .await
            .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(
            matches!(&err, Error::LogStream { command_id, .. } if *command_id == id),
            "{err:?}"
        );
        assert!(err.to_string().contains("deadline"), "{err}");
        assert_eq!(
            collect(&out, OutputStream::Stdout),
            "listening\n",
            "output before the deadline was delivered"
        );
    }
}

#[tokio::test]
async fn synchronous_session_exec_returns_streams_apart() {
    let fake = fake().await;
    fake.script_command(
        "check",
        ScriptedCommand::exit(1)
            .stdout("ok 1\n")
            .stderr("not ok 2\n"),
    );
    let client = client(&fake);
    let sandbox = started_sandbox(&client).await;
    let toolbox = client.toolbox_for(&sandbox).unwrap();
    toolbox.create_session("s").await.unwrap();
    let out = toolbox
        .run_in_session("s", "check", Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(out.exit_code, Some(1));
    assert_eq!(out.stdout.as_deref(), Some("ok 1\n"));
    assert_eq!(out.stderr.as_deref(), Some("not ok 2\n"));
    let logs = toolbox.command_logs("s", &out.command_id).await.unwrap();
    assert_eq!(logs.stdout, b"ok 1\n");
    assert_eq!(logs.stderr, b"not ok 2\n");
    let err = toolbox.create_session("s").await.unwrap_err();
    assert_eq!(err.status(), Some(409), "{err}");
    let err = toolbox
        .run_in_session("nope", "check", Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(err.is_not_found(), "{err}");

    // The wait is bounded by the timeout given (plus the call timeout).
    fake.script_command(
        "slow",
        ScriptedCommand::exit(0).sleep(Duration::from_secs(5)),
    );
    let impatient =
        Client::new(config(&fake).with_call_timeout(Duration::from_millis(200))).unwrap();
    let started = Instant::now();
    let err = impatient
        .toolbox_for(&sandbox)
        .unwrap()
        .run_in_session("s", "slow", Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Timeout { attempts: 1, .. }), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_conforms(&fake);
}

#[tokio::test]
async fn unexpected_and_unknown_states_are_reported() {
    let fake = fake().await;
    fake.push_sandbox_fate(SandboxFate::Reports("stopped".into()));
    fake.push_sandbox_fate(SandboxFate::Reports("hibernating".into()));
    let client = client(&fake);

    let stopped = client
        .create_sandbox(CreateSandbox::default())
        .await
        .unwrap();
    let err = client
        .wait_until_started(&stopped.id, &WaitOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::UnexpectedState { sandbox_id, state } if *sandbox_id == stopped.id && state == "stopped"),
        "{err:?}"
    );

    // A state newer than the client: parsed, waited on, and named when the wait runs out.
    let drifted = client
        .create_sandbox(CreateSandbox::default())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(60)).await;
    let got = client.get_sandbox(&drifted.id).await.unwrap();
    assert_eq!(got.state, Some(SandboxState::Other("hibernating".into())));
    let err = client
        .wait_until_started(
            &drifted.id,
            &WaitOptions::with_timeout(Duration::from_millis(500)),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::StartTimeout { last_state, .. } if last_state == "hibernating"),
        "{err:?}"
    );
}

#[tokio::test]
async fn commands_touch_the_host_only_when_the_fake_is_told_to() {
    let marker = std::env::temp_dir().join(format!("stigmer-daytona-fake-{}", std::process::id()));
    let _ = std::fs::remove_file(&marker);
    let script = format!("echo out; echo err >&2; touch {}; exit 5", marker.display());

    // Default fake: a scripted answer, nothing runs.
    let fake = fake().await;
    let client = client(&fake);
    let sandbox = started_sandbox(&client).await;
    let out = client
        .toolbox_for(&sandbox)
        .unwrap()
        .execute(&ExecuteCommand::new(sh_c(&script), Duration::from_secs(5)))
        .await
        .unwrap();
    assert_eq!((out.exit_code, out.result.as_str()), (0, ""));
    assert!(
        !marker.exists(),
        "the default fake ran a command on the host"
    );

    // execute_on_host: /bin/sh runs it, in execute and in a session.
    let fake = FakeDaytona::builder()
        .start_delay(Duration::ZERO)
        .execute_on_host(true)
        .start()
        .await
        .unwrap();
    let client = common::client(&fake);
    let sandbox = started_sandbox(&client).await;
    let toolbox = client.toolbox_for(&sandbox).unwrap();
    let out = toolbox
        .execute(&ExecuteCommand::new(sh_c(&script), Duration::from_secs(5)))
        .await
        .unwrap();
    assert_eq!(out.exit_code, 5);
    assert_eq!(out.result, "out\nerr\n");
    assert!(marker.exists());
    std::fs::remove_file(&marker).unwrap();

    toolbox.create_session("host").await.unwrap();
    let id = toolbox.start_command("host", &script).await.unwrap();
    let mut chunks = Vec::new();
    let outcome = toolbox
        .follow_command("host", &id, &FollowOptions::default(), |c| chunks.push(c))
        .await
        .unwrap();
    assert_eq!(outcome.exit_code, 5);
    assert_eq!(collect(&chunks, OutputStream::Stdout), "out\n");
    assert_eq!(collect(&chunks, OutputStream::Stderr), "err\n");
    let _ = std::fs::remove_file(&marker);
}

#[test]
fn from_env_explains_a_missing_key() {
    for unset in [None, Some(String::new()), Some("   ".to_owned())] {
        let err = stigmer_daytona::Config::from_lookup(|name| {
            (name == "DAYTONA_API_KEY").then(|| unset.clone()).flatten()
        })
        .unwrap_err();
        assert!(matches!(err, Error::MissingApiKey));
        let msg = err.to_string();
        assert!(
            msg.starts_with("DAYTONA_API_KEY is not set: cloud mode needs a Daytona API key"),
            "{msg}"
        );
        assert!(msg.contains(stigmer_daytona::API_KEY_PAGE), "{msg}");
    }
    let config = stigmer_daytona::Config::from_lookup(|name| match name {
        "DAYTONA_API_KEY" => Some("dtn_x1".into()),
        "DAYTONA_DEV_TOOLS_SNAPSHOT_ID" => Some("snap-7".into()),
        "DAYTONA_TOOLBOX_URL" => Some("https://proxy.example/toolbox".into()),
        _ => None,
    })
    .unwrap();
    assert_eq!(config.api_url.as_str(), stigmer_daytona::DEFAULT_API_URL);
    assert_eq!(config.snapshot.as_deref(), Some("snap-7"));
    assert!(
        matches!(config.toolbox, ToolboxAddressing::Fixed(ref u) if u.as_str() == "https://proxy.example/toolbox")
    );
    let err = stigmer_daytona::Config::from_lookup(|name| match name {
        "DAYTONA_API_KEY" => Some("dtn_x1".into()),
        "DAYTONA_API_URL" => Some("app.daytona.io".into()),
        _ => None,
    })
    .unwrap_err();
    assert!(
        matches!(err, Error::InvalidConfig(ref m) if m.contains("DAYTONA") || m.contains("API URL")),
        "{err}"
    );
}

#[tokio::test]
async fn the_configured_snapshot_is_used_when_a_request_names_none() {
    let fake = fake().await;
    let client = Client::new(config(&fake).with_snapshot("dev-tools-v3")).unwrap();
    let sandbox = client
        .create_sandbox(CreateSandbox::default())
        .await
        .unwrap();
    assert_eq!(sandbox.snapshot.as_deref(), Some("dev-tools-v3"));
    let sandbox = client
        .create_sandbox(CreateSandbox::from_snapshot("other"))
        .await
        .unwrap();
    assert_eq!(sandbox.snapshot.as_deref(), Some("other"));
}

/// A session command's stdin through `command/{id}/input` (text only, a newline added, no end
/// of input, 410 once the command ended, 404 for an unknown one, 400 for a bad body), and the
/// file API (upload, info, permissions, download), as the fake serves them on the host.
#[tokio::test]
async fn command_input_and_files_on_the_fakes_host() {
    let fake = FakeDaytona::builder()
        .start_delay(Duration::from_millis(10))
        .execute_on_host(true)
        .start()
        .await
        .unwrap();
    let client = common::client(&fake);
    let sandbox = started_sandbox(&client).await;
    let toolbox = client.toolbox_for(&sandbox).unwrap();
    toolbox.create_session("s").await.unwrap();
    let id = toolbox
        .start_command_with_input("s", "head -n 2")
        .await
        .unwrap();
    let long = Duration::from_secs(10);
    assert!(toolbox.send_input("s", &id, "one", long).await.unwrap());
    assert!(toolbox.send_input("s", &id, "two\n", long).await.unwrap());
    let mut chunks = Vec::new();
    let outcome = toolbox
        .follow_command("s", &id, &FollowOptions::default(), |c| chunks.push(c))
        .await
        .unwrap();
    assert_eq!(outcome.exit_code, 0);
    assert_eq!(collect(&chunks, OutputStream::Stdout), "one\ntwo\n");
    assert!(
        !toolbox.send_input("s", &id, "late", long).await.unwrap(),
        "an ended command answers 410"
    );
    let err = toolbox
        .send_input("s", "cmd-none", "x", long)
        .await
        .unwrap_err();
    assert!(err.is_not_found(), "{err}");
    // By default Daytona echoes input into the output, as stdout.
    let echoing = toolbox.start_command("s", "cat > /dev/null").await.unwrap();
    assert!(
        toolbox
            .send_input("s", &echoing, "seen", long)
            .await
            .unwrap()
    );
    let logs = toolbox.command_logs("s", &echoing).await.unwrap();
    assert_eq!(logs.stdout, b"seen\n");

    // Bodies the description does not allow are refused with 400, as Daytona's binding does.
    let http = reqwest::Client::new();
    let input_url = format!(
        "{}/{}/process/session/s/command/{id}/input",
        fake.toolbox_url(),
        sandbox.id
    );
    for bad in [
        serde_json::json!({"text": "x"}),
        serde_json::json!({"data": 5}),
    ] {
        let answer = http
            .post(&input_url)
            .bearer_auth(fake.api_key())
            .json(&bad)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status().as_u16(), 400, "{bad}");
    }
    let answer = http
        .post(format!(
            "{}/{}/files/upload?path={}/x",
            fake.toolbox_url(),
            sandbox.id,
            fake.sandbox_home(&sandbox.id).unwrap().display()
        ))
        .bearer_auth(fake.api_key())
        .body("not a form")
        .send()
        .await
        .unwrap();
    assert_eq!(
        answer.status().as_u16(),
        400,
        "an upload that is not a form"
    );

    let home = fake.sandbox_home(&sandbox.id).unwrap();
    let path = format!("{}/f.bin", home.display());
    let data: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    toolbox.upload_file(&path, &data).await.unwrap();
    toolbox.set_file_mode(&path, 0o751).await.unwrap();
    let info = toolbox.file_info(&path).await.unwrap();
    assert_eq!(
        (info.size, info.is_dir, info.mode_bits()),
        (70_000, false, Some(0o751))
    );
    assert_eq!(toolbox.download_file(&path, info.size).await.unwrap(), data);
    let err = toolbox.file_info("/etc/passwd").await.unwrap_err();
    assert_eq!(err.status(), Some(403), "outside the fake sandbox: {err}");
    let err = toolbox
        .file_info(&format!("{}/missing", home.display()))
        .await
        .unwrap_err();
    assert!(err.is_not_found(), "{err}");
    let upload = fake.requests_for("UploadFile");
    assert_eq!(upload.len(), 2, "the bad form, then the file");
    assert!(
        upload[1]
            .header("content-type")
            .is_some_and(|ct| ct.starts_with("multipart/form-data; boundary=")),
        "{:?}",
        upload[1].headers
    );
}
