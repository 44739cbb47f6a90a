//! Prometheus metrics of this process: executions, their durations, leases, reaped containers
//! and image pulls/builds.
//!
//! One registry per process, reached through [`metrics()`], because the events happen deep in
//! the activities, the reaper and the sandbox backend, which should not carry a handle for it.
//! The store only records: an ended execution is counted here, by whoever called
//! `Store::finish` or `audit::append` ([`count_finished`], [`count_appended`]).
//! Counting is cheap and always on; the daemon or worker serves the text format on `/metrics`
//! only when `--metrics-addr` is set. Counters are per process: with many workers, sum them.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};
use std::sync::LazyLock;
use stigmer_store::audit::AuditRecord;
use stigmer_store::{Finished, LeaseState};
use stigmer_workflows::ExecutionResult;

/// Lease states shown by the `stigmer_leases` gauge (removed leases are history, not counted).
pub const LEASE_STATES: &[LeaseState] = &[
    LeaseState::Creating,
    LeaseState::Idle,
    LeaseState::Busy,
    LeaseState::Removing,
];

/// The collectors of this process.
pub struct Metrics {
    registry: Registry,
    executions: IntCounterVec,
    durations: HistogramVec,
    leases: IntGaugeVec,
    reaped: IntCounterVec,
    image_pulls: IntCounterVec,
    image_builds: IntCounterVec,
    audit_records: IntCounter,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// This process's metrics.
#[must_use]
pub fn metrics() -> &'static Metrics {
    &METRICS
}

/// Counts the execution whose audit record was just appended, if one was: `append` returns a
/// record only the time it appends it, so an execution is counted once however many times its
/// end is recorded.
pub fn count_appended(appended: Option<AuditRecord>) {
    if let Some(record) = appended {
        metrics().execution_ended(
            &record.effective_mode,
            &record.requested_mode,
            &record.status,
            record.duration_ms,
        );
    }
}

/// The outcome of `Store::finish`, once the execution it ended (if this call ended it) is
/// counted.
pub fn count_finished(finished: Finished) -> ExecutionResult {
    count_appended(finished.appended);
    finished.result
}

impl Metrics {
    fn new() -> Self {
        let registry = Registry::new();
        // The names and labels are fixed at compile time; failing here is a programming error
        // that every test run would catch, so a panic is the right answer.
        let executions = IntCounterVec::new(
            Opts::new(
                "stigmer_executions_total",
                "Executions that ended, by effective mode, requested mode and outcome.",
            ),
            &["mode", "requested", "outcome"],
        )
        .expect("valid metric");
        let durations = HistogramVec::new(
            HistogramOpts::new(
                "stigmer_execution_duration_seconds",
                "Time from the command's start to its end, by effective mode and outcome.",
            )
            .buckets(vec![
                0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
            ]),
            &["mode", "outcome"],
        )
        .expect("valid metric");
        let leases = IntGaugeVec::new(
            Opts::new(
                "stigmer_leases",
                "Container and sandbox leases in the store, by state (read on each scrape).",
            ),
            &["state"],
        )
        .expect("valid metric");
        let reaped = IntCounterVec::new(
            Opts::new(
                "stigmer_containers_reaped_total",
                "Containers the reaper removed: disposed (their lease expired or was released \
                 for removal) or orphan (no live lease).",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let image_pulls = IntCounterVec::new(
            Opts::new(
                "stigmer_image_pulls_total",
                "Sandbox images pulled from a registry.",
            ),
            &["image"],
        )
        .expect("valid metric");
        let image_builds = IntCounterVec::new(
            Opts::new(
                "stigmer_image_builds_total",
                "Sandbox images built from the sandbox Dockerfile because they could not be pulled.",
            ),
            &["image"],
        )
        .expect("valid metric");
        let audit_records = IntCounter::new(
            "stigmer_audit_records_total",
            "Records appended to the audit chain by this process.",
        )
        .expect("valid metric");
        for collector in [
            Box::new(executions.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(durations.clone()),
            Box::new(leases.clone()),
            Box::new(reaped.clone()),
            Box::new(image_pulls.clone()),
            Box::new(image_builds.clone()),
            Box::new(audit_records.clone()),
        ] {
            registry.register(collector).expect("unique metric names");
        }
        // Series that exist from the start read 0 rather than being absent until first use,
        // so rate() and alerts work on a fresh process.
        for state in LEASE_STATES {
            leases.with_label_values(&[state.as_str()]).set(0);
        }
        for reason in ["disposed", "orphan"] {
            reaped.with_label_values(&[reason]).reset();
        }
        Self {
            registry,
            executions,
            durations,
            leases,
            reaped,
            image_pulls,
            image_builds,
            audit_records,
        }
    }

    /// An execution ended (counted once, when its audit record is appended).
    pub fn execution_ended(
        &self,
        mode: &str,
        requested: &str,
        outcome: &str,
        duration_ms: Option<i64>,
    ) {
        self.executions
            .with_label_values(&[mode, requested, outcome])
            .inc();
        if let Some(ms) = duration_ms {
            self.durations
                .with_label_values(&[mode, outcome])
                .observe(ms.max(0) as f64 / 1000.0);
        }
        self.audit_records.inc();
    }

    /// The reaper removed `n` containers for `reason` (`disposed` or `orphan`).
    pub fn containers_reaped(&self, reason: &str, n: usize) {
        if n > 0 {
            self.reaped.with_label_values(&[reason]).inc_by(n as u64);
        }
    }

    /// A sandbox image was pulled.
    pub fn image_pulled(&self, image: &str) {
        self.image_pulls.with_label_values(&[image]).inc();
    }

    /// A sandbox image was built from its Dockerfile.
    pub fn image_built(&self, image: &str) {
        self.image_builds.with_label_values(&[image]).inc();
    }

    /// Sets the lease gauge from counts read from the store; states not listed read 0.
    pub fn set_leases(&self, counts: &[(LeaseState, i64)]) {
        for state in LEASE_STATES {
            let n = counts
                .iter()
                .find(|(s, _)| s == state)
                .map_or(0, |(_, n)| *n);
            self.leases.with_label_values(&[state.as_str()]).set(n);
        }
    }

    /// Everything in the Prometheus text exposition format.
    #[must_use]
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding into memory fails only on a malformed family, which the registry prevents.
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!("could not encode metrics: {e}");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

/// The content type of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::metrics;
    use stigmer_store::LeaseState;

    #[test]
    fn ended_executions_show_up_with_their_labels() {
        let m = metrics();
        m.execution_ended("local", "auto", "failed", Some(1500));
        m.set_leases(&[(LeaseState::Idle, 2)]);
        let text = m.render();
        assert!(
            text.contains(
                r#"stigmer_executions_total{mode="local",outcome="failed",requested="auto"} 1"#
            ),
            "{text}"
        );
        assert!(text.contains(r#"stigmer_leases{state="idle"} 2"#), "{text}");
        assert!(text.contains(r#"stigmer_leases{state="busy"} 0"#), "{text}");
        assert!(text.contains(r#"stigmer_containers_reaped_total{reason="orphan"} 0"#));
    }
}
