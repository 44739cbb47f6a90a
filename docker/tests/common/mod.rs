//! Shared set-up for the integration tests: a real engine, a unique store id per test binary
//! run, and a guard that removes every container of that store when the test ends — also when
//! it panics.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use stigmer_docker::{
    CancellationToken, ContainerSpec, Engine, ExecOutcome, ExecRequest, LABEL_LEASE, LABEL_STORE,
    LABEL_WORKER, StreamKind,
};

/// The image the tests run in: `STIGMER_TEST_IMAGE` or `stigmer-base:bookworm`.
pub fn test_image() -> String {
    std::env::var("STIGMER_TEST_IMAGE").unwrap_or_else(|_| "stigmer-base:bookworm".to_string())
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A unique suffix for names and store ids.
pub fn unique(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}-{}-{nanos}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// One test's view of the engine: its own store id, and cleanup on drop.
pub struct Harness {
    pub engine: Engine,
    pub store: String,
    pub image: String,
}

impl Harness {
    /// Connects, or prints why the test is skipped and returns `None` when no engine answers.
    /// A missing test image is a failure, not a skip.
    pub async fn new() -> Option<Harness> {
        // STIGMER_TEST_EXEC_PATH=1 runs the suite with the agent off: every command a docker exec.
        let exec_path = std::env::var("STIGMER_TEST_EXEC_PATH").is_ok_and(|v| v == "1");
        let engine = match Engine::connect().await {
            Ok(e) => e
                .with_agent(!exec_path)
                .with_agent_dir(std::env::temp_dir().join("stigmer-test-agent")),
            Err(e) => {
                eprintln!("SKIPPED: {e}");
                return None;
            }
        };
        let image = test_image();
        assert!(
            engine.docker().inspect_image(&image).await.is_ok(),
            "test image {image} is not on this Docker host (set STIGMER_TEST_IMAGE, or build it)"
        );
        Some(Harness {
            engine,
            store: unique("st-test"),
            image,
        })
    }

    /// Labels a container of this test's store would carry.
    pub fn labels(&self, lease: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            (LABEL_STORE.to_string(), self.store.clone()),
            (LABEL_LEASE.to_string(), lease.to_string()),
            (LABEL_WORKER.to_string(), "test-worker".to_string()),
        ])
    }

    /// The default spec for the test image.
    pub fn spec(&self) -> ContainerSpec {
        ContainerSpec::new(self.image.clone())
    }

    /// The default spec for another image.
    pub fn spec_for(&self, image: &str) -> ContainerSpec {
        ContainerSpec::new(image)
    }

    /// Creates and starts a container of this store.
    pub async fn container(&self, spec: &ContainerSpec) -> String {
        let lease = unique("lease");
        self.engine
            .create_container(spec, &self.labels(&lease), &format!("stigmer-test-{lease}"))
            .await
            .expect("create container")
    }

    /// Runs argv in the container, collecting output.
    pub async fn run(&self, id: &str, req: ExecRequest) -> Collected {
        self.run_with(id, req, CancellationToken::new()).await
    }

    pub async fn run_with(
        &self,
        id: &str,
        req: ExecRequest,
        cancel: CancellationToken,
    ) -> Collected {
        let mut stdout = Vec::new();
        let mut stderr = Vec::new();
        let outcome = self
            .engine
            .exec(
                id,
                req,
                &mut |kind: StreamKind, bytes: &[u8]| match kind {
                    StreamKind::Stdout => stdout.extend_from_slice(bytes),
                    StreamKind::Stderr => stderr.extend_from_slice(bytes),
                },
                cancel,
            )
            .await
            .expect("exec");
        Collected {
            outcome,
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        }
    }

    /// `sh -c script` with a fresh pid file.
    pub async fn sh(&self, id: &str, script: &str) -> Collected {
        self.run(id, sh(script)).await
    }
}

/// A request for `/bin/sh -c script` with a unique pid file.
pub fn sh(script: &str) -> ExecRequest {
    ExecRequest::new(
        ["/bin/sh", "-c", script],
        ExecRequest::pid_file_for(&unique("aex")),
    )
}

pub struct Collected {
    pub outcome: ExecOutcome,
    pub stdout: String,
    pub stderr: String,
}

impl Drop for Harness {
    fn drop(&mut self) {
        let engine = self.engine.clone();
        let store = self.store.clone();
        // Drop cannot await, and may run while the test's runtime is unwinding: clean up on a
        // runtime of our own on another thread.
        let done = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("cleanup runtime");
            rt.block_on(async {
                match engine.list_managed(&store).await {
                    Ok(list) => {
                        for c in list {
                            if let Err(e) = engine.remove_container(&c.id).await {
                                eprintln!("cleanup: could not remove {}: {e}", c.id);
                            }
                        }
                    }
                    Err(e) => eprintln!("cleanup: could not list store {store}: {e}"),
                }
            });
        });
        let _ = done.join();
    }
}

/// Reads a `Key:\tvalue` line of /proc/self/status output.
pub fn status_field<'a>(status: &'a str, key: &str) -> Option<&'a str> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(':')))
        .map(str::trim)
}
