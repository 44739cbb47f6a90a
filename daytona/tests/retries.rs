//! Retry behaviour against injected failures: what is retried, how often, how long it waits,
//! and what is never retried.

mod common;

use std::time::{Duration, Instant};

use common::{client, config, fake, started_sandbox};
use stigmer_daytona::fake::{FakeDaytona, Fault, ScriptedCommand};
use stigmer_daytona::{Client, Config, CreateSandbox, Error, ExecuteCommand, RetryPolicy};

fn statuses(fake: &FakeDaytona, operation: &str) -> Vec<u16> {
    fake.requests_for(operation)
        .iter()
        .map(|r| r.status)
        .collect()
}

#[tokio::test]
async fn server_errors_are_retried_until_an_answer_comes() {
    let fake = fake().await;
    let client = client(&fake);
    let sandbox = client
        .create_sandbox(CreateSandbox::default())
        .await
        .unwrap();
    fake.inject(Fault::status(500).times(2).on_path("/api/sandbox/"));
    let got = client.get_sandbox(&sandbox.id).await.unwrap();
    assert_eq!(got.id, sandbox.id);
    assert_eq!(statuses(&fake, "getSandbox"), [500, 500, 200]);

    fake.inject(Fault::status(502).on_path("/api/sandbox"));
    client
        .create_sandbox(CreateSandbox::default())
        .await
        .unwrap();
    assert_eq!(statuses(&fake, "createSandbox"), [200, 502, 200]);
}

#[tokio::test]
async fn retries_stop_at_max_attempts_with_the_status_and_message() {
    let fake = fake().await;
    let client = client(&fake);
    fake.fail_next(10, 503);
    let err = client.get_sandbox("sbx-any").await.unwrap_err();
    match &err {
        Error::Api {
            status,
            attempts,
            message,
            ..
        } => {
            assert_eq!(*status, 503);
            assert_eq!(*attempts, 4);
            assert!(message.contains("injected failure"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.starts_with("get sandbox `sbx-any`: Daytona answered 503"),
        "{msg}"
    );
    assert!(msg.contains("after 4 attempts"), "{msg}");
    assert_eq!(fake.requests().len(), 4);
}

#[tokio::test]
async fn retry_after_is_honoured_on_429() {
    let fake = fake().await;
    let client = client(&fake); // backoff of 20-200 ms: any longer wait is Retry-After's
    let sandbox = client
        .create_sandbox(CreateSandbox::default())
        .await
        .unwrap();
    fake.inject(
        Fault::rate_limited(Duration::from_secs(1))
            .times(2)
            .on_path("/api/sandbox/"),
    );
    let started = Instant::now();
    client.get_sandbox(&sandbox.id).await.unwrap();
    let gets = fake.requests_for("getSandbox");
    assert_eq!(
        gets.iter().map(|r| r.status).collect::<Vec<_>>(),
        [429, 429, 200]
    );
    for pair in gets.windows(2) {
        let gap = pair[1].received_at - pair[0].received_at;
        assert!(
            gap >= Duration::from_millis(950),
            "retried after {gap:?}, before Retry-After"
        );
    }
    assert!(started.elapsed() >= Duration::from_millis(1900));
}

#[tokio::test]
async fn a_retry_after_beyond_the_limit_fails_at_once() {
    let fake = fake().await;
    let client = Client::new(config(&fake).with_retry(RetryPolicy {
        max_retry_after: Duration::from_secs(2),
        ..common::quick_retry()
    }))
    .unwrap();
    fake.rate_limit_next(1, Duration::from_secs(30));
    let started = Instant::now();
    let err = client
        .list_sandboxes(&Default::default())
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(2));
    match err {
        Error::Api {
            status: 429,
            retry_after,
            attempts: 1,
            ..
        } => assert_eq!(retry_after, Some(Duration::from_secs(30))),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn client_errors_are_not_retried() {
    let fake = fake().await;
    let client = client(&fake);

    fake.fail_next(1, 400);
    let err = client
        .create_sandbox(CreateSandbox::default())
        .await
        .unwrap_err();
    assert_eq!(
        (err.status(), err.attempts()),
        (Some(400), Some(1)),
        "{err}"
    );
    assert_eq!(fake.requests().len(), 1);

    fake.clear_requests();
    let err = client.get_sandbox("sbx-missing").await.unwrap_err();
    assert!(err.is_not_found());
    assert!(
        err.to_string()
            .contains("Sandbox with ID or name sbx-missing not found"),
        "{err}"
    );
    assert_eq!(fake.requests().len(), 1);

    fake.clear_requests();
    let wrong = Client::new(
        Config::new("dtn_wrong_key_1234")
            .with_api_url(&fake.api_url())
            .unwrap()
            .with_retry(common::quick_retry()),
    )
    .unwrap();
    let err = wrong.list_sandboxes(&Default::default()).await.unwrap_err();
    assert_eq!(err.status(), Some(401), "{err}");
    assert!(err.to_string().contains("Invalid credentials"), "{err}");
    assert_eq!(fake.requests().len(), 1);
    assert!(!fake.requests()[0].authorized);
}

#[tokio::test]
async fn command_execution_is_retried_only_when_it_cannot_have_run() {
    let fake = fake().await;
    fake.script_command("deploy", ScriptedCommand::exit(0).stdout("deployed\n"));
    let client = client(&fake);
    let sandbox = started_sandbox(&client).await;
    let toolbox = client.toolbox_for(&sandbox).unwrap();
    let deploy = ExecuteCommand::new("deploy --prod", Duration::from_secs(5));

    // A 500 may come after the command ran: not sent again.
    fake.inject(Fault::status(500).on_path("/process/execute"));
    let err = toolbox.execute(&deploy).await.unwrap_err();
    assert_eq!(err.status(), Some(500), "{err}");
    assert_eq!(statuses(&fake, "ExecuteCommand"), [500]);

    // 503 and 429 come before it runs: sent again.
    fake.inject(Fault::status(503).on_path("/process/execute"));
    fake.inject(Fault::rate_limited(Duration::ZERO).on_path("/process/execute"));
    let out = toolbox.execute(&deploy).await.unwrap();
    assert_eq!(out.result, "deployed\n");
    assert_eq!(statuses(&fake, "ExecuteCommand"), [500, 503, 429, 200]);

    // The same holds for session commands.
    toolbox.create_session("s").await.unwrap();
    fake.inject(Fault::status(500).on_path("/exec"));
    let err = toolbox
        .start_command("s", "deploy --prod")
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(500));
    assert_eq!(statuses(&fake, "SessionExecuteCommand"), [500]);
}

/// A port with nothing listening (bound, then released).
async fn free_port() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

#[tokio::test]
async fn connection_errors_are_retried_until_the_server_is_up() {
    let addr = free_port().await;
    let config = Config::new("dtn_fake_0123456789abcdef")
        .with_api_url(&format!("http://{addr}/api"))
        .unwrap()
        .with_retry(RetryPolicy {
            max_attempts: 10,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(300),
            max_retry_after: Duration::from_secs(5),
        });
    let client = Client::new(config).unwrap();
    let server = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(400)).await;
        FakeDaytona::builder().bind(addr).start().await.unwrap()
    });
    let started = Instant::now();
    let listed = client.list_sandboxes(&Default::default()).await.unwrap();
    assert!(listed.is_empty());
    assert!(
        started.elapsed() >= Duration::from_millis(350),
        "the first attempts were refused"
    );
    let fake = server.await.unwrap();
    assert_eq!(fake.requests_for("listSandboxes").len(), 1);
}

#[tokio::test]
async fn an_unreachable_server_gives_a_transport_error_after_the_attempts() {
    let addr = free_port().await;
    let config = Config::new("dtn_fake_0123456789abcdef")
        .with_api_url(&format!("http://{addr}/api"))
        .unwrap()
        .with_retry(RetryPolicy {
            max_attempts: 3,
            ..common::quick_retry()
        });
    let err = Client::new(config)
        .unwrap()
        .get_sandbox("sbx-1")
        .await
        .unwrap_err();
    match &err {
        Error::Transport { attempts, url, .. } => {
            assert_eq!(*attempts, 3);
            assert_eq!(url, &format!("http://{addr}/api/sandbox/sbx-1"));
        }
        other => panic!("{other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.starts_with("get sandbox `sbx-1`: could not reach"),
        "{msg}"
    );
}
