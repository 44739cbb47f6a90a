//! Logs and traces: `tracing` to stderr, filtered by `RUST_LOG`, and, when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set, OpenTelemetry traces sent to that OTLP collector.
//!
//! One tracer provider serves both the `tracing` bridge and the Temporal SDK's OpenTelemetry
//! plugin (installed on every Temporal client `temporal_server::connect` builds, and through the
//! client on the workers). The plugin carries the trace context in Temporal headers, so one
//! trace runs from the process that starts an execution (the `stigmer.execution` span, see
//! [`ExecutionSpan`]) through the workflow to every activity, in whatever process it runs. The
//! provider uses the plugin's replay-safe id generator and span processor, so a workflow
//! replayed after an eviction or a worker restart does not export its spans a second time.
//!
//! Without the variable nothing is set up: no exporter, no thread, no plugin.

use anyhow::{Result, bail};
use opentelemetry::trace::{
    FutureExt as _, SpanKind, Status as SpanStatus, TraceContextExt, Tracer, WithContext,
};
use opentelemetry::{Context, KeyValue, global};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{BatchSpanProcessor, SdkTracerProvider};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use stigmer_workflows::ExecutionResult;
use temporalio_sdk::opentelemetry::{
    OpenTelemetryPlugin, WorkflowIdGenerator, WorkflowSpanProcessor,
};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The variable that turns OTLP tracing on: the collector's base URL (`/v1/traces` is added).
pub const ENDPOINT_VAR: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
/// The full URL of the traces endpoint, used as it is; wins over [`ENDPOINT_VAR`].
pub const TRACES_ENDPOINT_VAR: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
/// `http/protobuf` (the default) or `http/json`.
pub const PROTOCOL_VAR: &str = "OTEL_EXPORTER_OTLP_PROTOCOL";
/// The service name on every span; `stigmer` unless set.
pub const SERVICE_NAME_VAR: &str = "OTEL_SERVICE_NAME";
/// The name of the span that covers one execution.
pub const EXECUTION_SPAN: &str = "stigmer.execution";

/// The instrumentation scope of stigmer's own spans.
const SCOPE: &str = "stigmer";

/// How long the last spans may take to leave when the process exits.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether this process exports traces (set once by [`Telemetry::init`]).
#[must_use]
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The Temporal client plugin that traces workflows and activities, when tracing is on.
#[must_use]
pub fn temporal_plugin() -> Option<temporalio_sdk::SimplePlugin> {
    enabled().then(|| OpenTelemetryPlugin::builder().build())
}

/// Where and how to send traces, read from the standard OpenTelemetry variables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpSettings {
    /// The full URL spans are posted to.
    pub traces_endpoint: String,
    pub protocol: Protocol,
    pub service_name: String,
}

impl OtlpSettings {
    /// The settings from a variable lookup; `None` when tracing is off (no endpoint, or
    /// `OTEL_SDK_DISABLED=true`). A value that cannot work is an error naming the variable.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Option<Self>> {
        let var = |k: &str| {
            lookup(k)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        if var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        let traces_endpoint = match (var(TRACES_ENDPOINT_VAR), var(ENDPOINT_VAR)) {
            (Some(url), _) => checked_endpoint(TRACES_ENDPOINT_VAR, &url)?,
            (None, Some(base)) => {
                let base = checked_endpoint(ENDPOINT_VAR, &base)?;
                format!("{}/v1/traces", base.trim_end_matches('/'))
            }
            (None, None) => return Ok(None),
        };
        let protocol = match var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            .or_else(|| var(PROTOCOL_VAR))
            .as_deref()
        {
            None | Some("http/protobuf") => Protocol::HttpBinary,
            Some("http/json") => Protocol::HttpJson,
            Some(other) => bail!(
                "{PROTOCOL_VAR}={other:?} is not supported: use http/protobuf (the default) or http/json"
            ),
        };
        Ok(Some(Self {
            traces_endpoint,
            protocol,
            service_name: var(SERVICE_NAME_VAR).unwrap_or_else(|| SCOPE.to_string()),
        }))
    }
}

/// An endpoint URL as the exporter will use it, or an error that says what is wrong with it.
fn checked_endpoint(name: &str, value: &str) -> Result<String> {
    let url = match url::Url::parse(value) {
        Ok(url) => url,
        Err(e) => bail!(
            "{name}={value:?} is not a URL ({e}): expected something like http://localhost:4318"
        ),
    };
    match url.scheme() {
        "http" if url.host().is_some() => Ok(value.to_string()),
        "http" => {
            bail!("{name}={value:?} has no host: expected something like http://localhost:4318")
        }
        "https" => bail!(
            "{name}={value:?}: this build sends OTLP over plain HTTP only; point it at a local \
             collector (http://…) that forwards over TLS"
        ),
        scheme => bail!(
            "{name}={value:?}: unsupported scheme {scheme:?}; expected http://host:port (OTLP over HTTP)"
        ),
    }
}

/// The process's tracing set-up. Shut it down before the process exits: `std::process::exit`
/// runs no destructors, and spans still queued would be lost.
#[must_use = "call shutdown() before the process exits, or the last spans are lost"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Installs the global `tracing` subscriber (stderr, `RUST_LOG`, default `warn`) and, when
    /// the OTLP variables ask for it, the exporter, the tracer provider and the bridge.
    pub fn init() -> Result<Self> {
        let settings = OtlpSettings::from_lookup(|k| std::env::var(k).ok())?;
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
        let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
        let provider = settings.map(|s| provider(&s)).transpose()?;
        let bridge = provider.as_ref().map(|p| {
            use opentelemetry::trace::TracerProvider as _;
            tracing_opentelemetry::layer().with_tracer(p.tracer(SCOPE))
        });
        tracing_subscriber::registry()
            .with(filter)
            .with(fmt)
            .with(bridge)
            .init();
        if let Some(provider) = &provider {
            // The plugin and `ExecutionSpan` use the global provider.
            global::set_tracer_provider(provider.clone());
            ENABLED.store(true, Ordering::Relaxed);
        }
        Ok(Self { provider })
    }

    /// Sends what is still queued and stops the exporter (waits at most a few seconds).
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(e) = provider.shutdown_with_timeout(SHUTDOWN_GRACE)
        {
            eprintln!("stigmer: warning: could not send the last traces: {e}");
        }
    }
}

fn provider(settings: &OtlpSettings) -> Result<SdkTracerProvider> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(settings.protocol)
        .with_endpoint(settings.traces_endpoint.clone())
        .build()
        .map_err(|e| {
            anyhow::anyhow!(
                "could not set up the OTLP exporter for {}: {e}",
                settings.traces_endpoint
            )
        })?;
    let resource = Resource::builder()
        .with_service_name(settings.service_name.clone())
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build();
    Ok(SdkTracerProvider::builder()
        .with_span_processor(WorkflowSpanProcessor::new(
            BatchSpanProcessor::builder(exporter).build(),
        ))
        .with_id_generator(WorkflowIdGenerator::default())
        .with_resource(resource)
        .build())
}

/// The `stigmer.execution` span: the root of an execution's trace, opened by the process that
/// starts the workflow (the daemon, or the client against a remote cluster) and ended with the
/// execution's outcome. The workflow start runs inside it, so the plugin's workflow and
/// activity spans are its descendants. With tracing off it is an empty context and costs
/// nothing.
#[must_use = "end() records the execution's outcome on the span"]
pub struct ExecutionSpan {
    cx: Context,
}

/// What the execution span says about the execution when it starts.
pub struct ExecutionAttributes<'a> {
    pub id: &'a str,
    pub workflow_id: &'a str,
    pub command: &'a str,
    pub requested_mode: &'a str,
    pub effective_mode: &'a str,
}

impl ExecutionSpan {
    pub fn start(execution: &ExecutionAttributes<'_>) -> Self {
        if !enabled() {
            return Self { cx: Context::new() };
        }
        let tracer = global::tracer(SCOPE);
        let span = tracer
            .span_builder(EXECUTION_SPAN)
            .with_kind(SpanKind::Internal)
            .with_attributes([
                KeyValue::new("stigmer.execution.id", execution.id.to_string()),
                KeyValue::new(
                    "stigmer.execution.workflow_id",
                    execution.workflow_id.to_string(),
                ),
                KeyValue::new("stigmer.execution.command", execution.command.to_string()),
                KeyValue::new(
                    "stigmer.execution.requested_mode",
                    execution.requested_mode.to_string(),
                ),
                KeyValue::new(
                    "stigmer.execution.mode",
                    execution.effective_mode.to_string(),
                ),
            ])
            // A root: an execution is its own trace, whatever span the caller is in.
            .start_with_context(&tracer, &Context::new());
        Self {
            cx: Context::new().with_span(span),
        }
    }

    /// Runs `work` (the workflow start) inside the span, so Temporal's spans become its children.
    pub fn run_in<F: std::future::Future>(&self, work: F) -> WithContext<F> {
        work.with_context(self.cx.clone())
    }

    /// Whether the span records anything (tracing is on and it was sampled).
    #[must_use]
    pub fn is_recording(&self) -> bool {
        self.cx.span().is_recording()
    }

    /// The trace id, 32 lowercase hex characters, when tracing is on.
    #[must_use]
    pub fn trace_id(&self) -> Option<String> {
        let span = self.cx.span();
        let context = span.span_context();
        context.is_valid().then(|| context.trace_id().to_string())
    }

    /// Records the outcome and ends the span.
    pub fn end(self, result: &ExecutionResult) {
        let span = self.cx.span();
        span.set_attribute(KeyValue::new(
            "stigmer.execution.status",
            result.status.to_string(),
        ));
        if let Some(code) = result.exit_code {
            span.set_attribute(KeyValue::new(
                "stigmer.execution.exit_code",
                i64::from(code),
            ));
        }
        if let Some(error) = &result.error {
            span.set_status(SpanStatus::error(error.clone()));
        }
        span.end();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn settings(vars: &[(&str, &str)]) -> Result<Option<OtlpSettings>> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        OtlpSettings::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn tracing_is_off_without_an_endpoint() {
        assert_eq!(settings(&[]).unwrap(), None);
        assert_eq!(settings(&[(ENDPOINT_VAR, "  ")]).unwrap(), None);
        assert_eq!(
            settings(&[
                (ENDPOINT_VAR, "http://127.0.0.1:4318"),
                ("OTEL_SDK_DISABLED", "true")
            ])
            .unwrap(),
            None
        );
    }

    #[test]
    fn the_base_endpoint_gets_the_traces_path_and_the_service_is_stigmer() {
        let s = settings(&[(ENDPOINT_VAR, "http://127.0.0.1:4318/")])
            .unwrap()
            .unwrap();
        assert_eq!(s.traces_endpoint, "http://127.0.0.1:4318/v1/traces");
        assert_eq!(s.protocol, Protocol::HttpBinary);
        assert_eq!(s.service_name, "stigmer");
        let s = settings(&[
            (ENDPOINT_VAR, "http://ignored:1"),
            (TRACES_ENDPOINT_VAR, "http://collector:4318/custom"),
            (PROTOCOL_VAR, "http/json"),
            (SERVICE_NAME_VAR, "ci-runner"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(s.traces_endpoint, "http://collector:4318/custom");
        assert_eq!(s.protocol, Protocol::HttpJson);
        assert_eq!(s.service_name, "ci-runner");
    }

    #[test]
    fn a_bad_endpoint_or_protocol_is_an_error_that_names_the_variable() {
        for bad in [
            "not a url",
            "localhost:4318",
            "ftp://x",
            "https://collector:4318",
        ] {
            let e = settings(&[(ENDPOINT_VAR, bad)]).unwrap_err().to_string();
            assert!(e.contains(ENDPOINT_VAR) && e.contains(bad), "{e}");
        }
        let e = settings(&[
            (ENDPOINT_VAR, "http://127.0.0.1:4318"),
            (PROTOCOL_VAR, "grpc"),
        ])
        .unwrap_err()
        .to_string();
        assert!(e.contains(PROTOCOL_VAR) && e.contains("grpc"), "{e}");
    }
}
