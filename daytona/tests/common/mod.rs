//! Helpers shared by the integration tests: a fake with quick retries, and the check that every
//! exchange with the fake matched Daytona's published API description.

#![allow(dead_code)]

use std::time::Duration;

use stigmer_daytona::fake::{FakeDaytona, classify};
use stigmer_daytona::openapi::{self, Strictness};
use stigmer_daytona::{Client, Config, CreateSandbox, RetryPolicy, Sandbox, WaitOptions};

/// Retries quick enough for tests; waits that matter (Retry-After) come from the server.
pub fn quick_retry() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 4,
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(200),
        max_retry_after: Duration::from_secs(5),
    }
}

pub fn config(fake: &FakeDaytona) -> Config {
    fake.config()
        .with_retry(quick_retry())
        .with_call_timeout(Duration::from_secs(10))
}

pub fn client(fake: &FakeDaytona) -> Client {
    Client::new(config(fake)).expect("client")
}

pub async fn fake() -> FakeDaytona {
    FakeDaytona::builder()
        .start_delay(Duration::from_millis(40))
        .start()
        .await
        .expect("fake daytona")
}

pub async fn started_sandbox(client: &Client) -> Sandbox {
    let sandbox = client
        .create_sandbox(CreateSandbox::from_snapshot("stigmer-dev-tools"))
        .await
        .expect("create");
    client
        .wait_until_started(
            &sandbox.id,
            &WaitOptions::with_timeout(Duration::from_secs(10)),
        )
        .await
        .expect("started")
}

/// Every request body the fake received validates (strictly: no undeclared fields) against the
/// description's schema for its operation, and every JSON answer it gave validates against the
/// answer's schema. Returns how many bodies were checked, so a test can insist on some.
pub fn assert_conforms(fake: &FakeDaytona) -> usize {
    let mut checked = 0;
    let mut problems = Vec::new();
    for r in fake.requests() {
        if !r.schema_errors.is_empty() {
            problems.push(format!("{} {}: {:?}", r.method, r.path, r.schema_errors));
        }
        let Some(op) = classify(&r.method, &r.path) else {
            continue;
        };
        if let (Some(schema), Some(body)) = (op.request_schema, &r.body) {
            match openapi::validate(op.spec, schema, body, Strictness::NoUnknownFields) {
                Ok(()) => checked += 1,
                Err(e) => problems.push(format!("request {} {}: {e:?}", r.method, r.path)),
            }
        }
        if (200..300).contains(&r.status)
            && let (Some(schema), Some(body)) = (op.response_schema, &r.response_body)
        {
            match openapi::validate(op.spec, schema, body, Strictness::AsPublished) {
                Ok(()) => checked += 1,
                Err(e) => problems.push(format!("answer to {} {}: {e:?}", r.method, r.path)),
            }
        }
    }
    assert!(
        problems.is_empty(),
        "exchanges off the description:\n{}",
        problems.join("\n")
    );
    checked
}
