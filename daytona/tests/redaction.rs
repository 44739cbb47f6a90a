//! The API key never shows: not in `Debug` output, not in errors, not in logs.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use stigmer_daytona::fake::{FakeDaytona, Fault, ScriptedCommand};
use stigmer_daytona::{Client, Config, CreateSandbox, ExecuteCommand, FollowOptions, WaitOptions};

const KEY: &str = "dtn_SECRET_9f8e7d6c5b4a39281706";
const WRONG_KEY: &str = "dtn_ALSO_SECRET_0a1b2c3d4e5f6071";

#[test]
fn debug_output_hides_the_key() {
    let config = Config::new(KEY);
    let shown = format!("{config:?} {:?} {config:#?}", config.api_key());
    assert!(!shown.contains(KEY), "{shown}");
    assert!(shown.contains("<redacted>"), "{shown}");
    let client = Client::new(config).unwrap();
    let shown = format!("{client:?}");
    assert!(
        !shown.contains(KEY) && shown.contains("<redacted>"),
        "{shown}"
    );
}

/// A `MakeWriter` collecting everything logged.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

// Single-threaded runtime: the subscriber set for this thread sees the client, the fake and
// every library under them.
#[tokio::test(flavor = "current_thread")]
async fn errors_and_logs_never_show_the_key() {
    let logs = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(logs.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let fake = FakeDaytona::builder()
        .api_key(KEY)
        .start_delay(Duration::from_millis(30))
        .start()
        .await
        .unwrap();
    fake.script_command(
        "build",
        ScriptedCommand::exit(0).stdout("ok\n").stderr("warn\n"),
    );
    let client = Client::new(fake.config().with_retry(common::quick_retry())).unwrap();

    // Retried failures (logged at WARN), a full run, a followed session command.
    fake.inject(Fault::status(500).times(2));
    let sandbox = client
        .create_sandbox(CreateSandbox::default())
        .await
        .unwrap();
    let sandbox = client
        .wait_until_started(&sandbox.id, &WaitOptions::default())
        .await
        .unwrap();
    let toolbox = client.toolbox_for(&sandbox).unwrap();
    toolbox
        .execute(&ExecuteCommand::new("build", Duration::from_secs(5)))
        .await
        .unwrap();
    toolbox.create_session("s").await.unwrap();
    let id = toolbox.start_command("s", "build").await.unwrap();
    toolbox
        .follow_command("s", &id, &FollowOptions::default(), |_| {})
        .await
        .unwrap();

    // Errors of every kind, shown both ways.
    let mut errors = Vec::new();
    fake.fail_next(10, 503);
    errors.push(client.get_sandbox(&sandbox.id).await.unwrap_err());
    fake.clear_requests();
    let wrong = Client::new(
        Config::new(WRONG_KEY)
            .with_api_url(&fake.api_url())
            .unwrap()
            .with_retry(common::quick_retry()),
    )
    .unwrap();
    errors.push(wrong.list_sandboxes(&Default::default()).await.unwrap_err());
    errors.push(
        wrong
            .toolbox_for(&sandbox)
            .unwrap()
            .execute(&ExecuteCommand::new("build", Duration::from_secs(1)))
            .await
            .unwrap_err(),
    );
    let follow_err = wrong
        .toolbox_for(&sandbox)
        .unwrap()
        .follow_command("s", &id, &FollowOptions::default(), |_| {})
        .await
        .unwrap_err();
    assert_eq!(follow_err.status(), Some(401), "{follow_err}");
    errors.push(follow_err);
    let unreachable = Client::new(
        Config::new(KEY)
            .with_api_url("http://127.0.0.1:9/api")
            .unwrap()
            .with_retry(stigmer_daytona::RetryPolicy::none()),
    )
    .unwrap();
    errors.push(unreachable.get_sandbox("x").await.unwrap_err());

    for err in &errors {
        let shown = format!("{err} {err:?}");
        assert!(
            !shown.contains(KEY) && !shown.contains(WRONG_KEY),
            "{shown}"
        );
    }
    assert!(errors[1].to_string().contains("401"), "{}", errors[1]);

    let logged = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(
        logged.contains("daytona request"),
        "the client's logs were captured"
    );
    assert!(logged.contains("retrying"), "retries were logged");
    assert!(!logged.contains(KEY), "the key was logged");
    assert!(!logged.contains(WRONG_KEY), "the wrong key was logged");
    // The fake did see the key, as a bearer: the check above is not vacuous.
    assert!(fake.requests().iter().any(|r| !r.authorized));
}
