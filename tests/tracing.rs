//! OTLP tracing end to end: a loopback OTLP/HTTP receiver started here decodes what the real
//! binary exports while an execution runs through a real Temporal dev server and store, and
//! the spans are checked for their names, parentage and attributes, and against the trace id
//! that `executions show` prints.

mod common;

use common::{Env, eventually, text};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A span as received, with the service that sent it.
#[derive(Clone, Debug)]
struct Received {
    service: Option<String>,
    span: Span,
}

/// An OTLP/HTTP (protobuf) trace receiver on 127.0.0.1, keeping every span it is sent.
struct Receiver {
    port: u16,
    spans: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    fn start() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the receiver");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let port = listener.local_addr().expect("receiver address").port();
        let spans = Arc::new(Mutex::new(Vec::new()));
        let sink = spans.clone();
        // Lives as long as the test process; each test binary is its own process.
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("receiver runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                while let Ok((stream, _)) = listener.accept().await {
                    let sink = sink.clone();
                    tokio::spawn(async move {
                        let service = service_fn(move |request| export(sink.clone(), request));
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            });
        });
        Self { port, spans }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn spans(&self) -> Vec<Received> {
        self.spans.lock().expect("spans").clone()
    }
}

/// `POST /v1/traces`: decodes an `ExportTraceServiceRequest` and keeps its spans.
async fn export(
    sink: Arc<Mutex<Vec<Received>>>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let path = request.uri().path().to_string();
    let body = request.into_body().collect().await?.to_bytes();
    let status = if path != "/v1/traces" {
        StatusCode::NOT_FOUND
    } else {
        match ExportTraceServiceRequest::decode(body) {
            Ok(export) => {
                let mut spans = sink.lock().expect("spans");
                for resource_spans in export.resource_spans {
                    let service = resource_spans.resource.as_ref().and_then(|r| {
                        r.attributes
                            .iter()
                            .find(|kv| kv.key == "service.name")
                            .and_then(|kv| value_text(kv.value.as_ref()?.value.as_ref()?))
                    });
                    for scope_spans in resource_spans.scope_spans {
                        for span in scope_spans.spans {
                            spans.push(Received {
                                service: service.clone(),
                                span,
                            });
                        }
                    }
                }
                StatusCode::OK
            }
            Err(_) => StatusCode::BAD_REQUEST,
        }
    };
    // An empty body is an empty ExportTraceServiceResponse: everything accepted.
    Ok(Response::builder()
        .status(status)
        .header("content-type", "application/x-protobuf")
        .body(Full::new(Bytes::new()))
        .expect("response"))
}

fn value_text(value: &Value) -> Option<String> {
    match value {
        Value::StringValue(s) => Some(s.clone()),
        Value::IntValue(i) => Some(i.to_string()),
        Value::BoolValue(b) => Some(b.to_string()),
        _ => None,
    }
}

fn attr(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| value_text(kv.value.as_ref()?.value.as_ref()?))
}

/// The spans' ids in hex, as `executions show` prints trace ids.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The names of `span`'s ancestors among `spans`, nearest first, following parent ids.
fn ancestors<'a>(span: &'a Span, by_id: &HashMap<Vec<u8>, &'a Span>) -> Vec<&'a Span> {
    let mut chain = Vec::new();
    let mut parent = &span.parent_span_id;
    while let Some(next) = by_id.get(parent) {
        chain.push(*next);
        parent = &next.parent_span_id;
        if chain.len() > 32 {
            break;
        }
    }
    chain
}

#[test]
fn an_execution_is_one_trace_from_its_span_through_the_workflow_to_each_activity() {
    let receiver = Receiver::start();
    let mut env = Env::new();
    env.extra
        .push(("OTEL_EXPORTER_OTLP_ENDPOINT".into(), receiver.endpoint()));
    // Short batches, so spans arrive while the daemon runs.
    env.extra
        .push(("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into()));
    env.start_daemon();

    let out = env.stigmer(&["run", "--output", "json", "echo traced; exit 3"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert_eq!(stdout.lines().next(), Some("traced"));
    let result: serde_json::Value =
        serde_json::from_str(stdout.lines().nth(1).expect("a JSON result line")).unwrap();
    let id = result["id"].as_str().expect("execution id").to_string();

    // The trace id is recorded with the execution and shown, as JSON and as text.
    let shown = env.show(&id);
    let trace_id = shown["trace_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no trace_id in `executions show`: {shown}"))
        .to_string();
    assert_eq!(trace_id.len(), 32, "{trace_id}");
    assert!(
        trace_id.chars().all(|c| c.is_ascii_hexdigit()),
        "{trace_id}"
    );
    let shown_text = env.stigmer(&["executions", "show", &id]);
    assert!(
        text(&shown_text.stdout)
            .lines()
            .any(|l| l.trim_start().starts_with("trace_id") && l.trim_end().ends_with(&trace_id)),
        "{}",
        text(&shown_text.stdout)
    );

    // The execution span ends when the workflow does; wait for it and the exec activity's.
    let arrived = |spans: &[Received]| {
        let named = |name: &str| {
            spans.iter().any(|r| {
                r.span.name == name && attr(&r.span, "stigmer.execution.id").as_deref() == Some(&id)
            })
        };
        named("stigmer.execution") && named("RunActivity:exec")
    };
    let complete = eventually(Duration::from_secs(30), || arrived(&receiver.spans()));
    let received = receiver.spans();
    let names: Vec<&str> = received.iter().map(|r| r.span.name.as_str()).collect();
    assert!(
        complete,
        "the execution and exec spans were not received within 30 s; received: {names:?}"
    );

    for r in &received {
        eprintln!(
            "received {} trace={} span={} parent={}",
            r.span.name,
            hex(&r.span.trace_id),
            hex(&r.span.span_id),
            hex(&r.span.parent_span_id)
        );
    }
    let by_id: HashMap<Vec<u8>, &Span> = received
        .iter()
        .map(|r| (r.span.span_id.clone(), &r.span))
        .collect();
    let execution = received
        .iter()
        .find(|r| {
            r.span.name == "stigmer.execution"
                && attr(&r.span, "stigmer.execution.id").as_deref() == Some(&id)
        })
        .expect("the execution span");
    assert_eq!(execution.service.as_deref(), Some("stigmer"));
    assert_eq!(
        hex(&execution.span.trace_id),
        trace_id,
        "the shown trace id is the execution's"
    );
    assert!(
        execution.span.parent_span_id.is_empty(),
        "the execution span is the root of its trace"
    );
    let e = &execution.span;
    assert_eq!(attr(e, "stigmer.execution.exit_code").as_deref(), Some("3"));
    assert_eq!(
        attr(e, "stigmer.execution.status").as_deref(),
        Some("failed")
    );
    assert_eq!(attr(e, "stigmer.execution.mode").as_deref(), Some("local"));
    assert_eq!(
        attr(e, "stigmer.execution.workflow_id"),
        Some(format!("stigmer/agent-execution/{id}"))
    );
    assert_eq!(
        attr(e, "stigmer.execution.command").as_deref(),
        Some("echo traced; exit 3")
    );

    // Every activity of this execution is in the same trace, under the execution span.
    let activities: Vec<&Span> = received
        .iter()
        .map(|r| &r.span)
        .filter(|s| s.name.starts_with("RunActivity:") && s.trace_id == e.trace_id)
        .collect();
    let exec = activities
        .iter()
        .find(|s| s.name == "RunActivity:exec")
        .expect("the exec activity's span");
    assert_eq!(
        attr(exec, "stigmer.execution.id").as_deref(),
        Some(id.as_str())
    );
    assert_eq!(
        attr(exec, "stigmer.execution.exit_code").as_deref(),
        Some("3")
    );
    assert_eq!(
        attr(exec, "stigmer.execution.mode").as_deref(),
        Some("local")
    );
    assert_eq!(
        attr(exec, "temporalWorkflowID"),
        Some(format!("stigmer/agent-execution/{id}"))
    );
    for activity in &activities {
        let chain = ancestors(activity, &by_id);
        let chain_names: Vec<&str> = chain.iter().map(|s| s.name.as_str()).collect();
        assert!(
            chain.iter().any(|s| s.span_id == e.span_id),
            "{} does not descend from the execution span; its ancestors: {chain_names:?}",
            activity.name
        );
        assert!(
            chain.iter().all(|s| s.trace_id == e.trace_id),
            "{} has ancestors in another trace",
            activity.name
        );
    }
    // The path runs through the workflow: execution → start → workflow → schedule → activity.
    let chain: Vec<&str> = ancestors(exec, &by_id)
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(
        chain,
        [
            "StartActivity:exec",
            "RunWorkflow:AgentExecution",
            "StartWorkflow:AgentExecution",
            "stigmer.execution"
        ]
    );
}

#[test]
fn an_unparsable_endpoint_is_a_clear_error_not_a_panic() {
    let mut env = Env::new();
    env.extra
        .push(("OTEL_EXPORTER_OTLP_ENDPOINT".into(), "not a url".into()));
    let out = env.stigmer(&["executions", "list"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("OTEL_EXPORTER_OTLP_ENDPOINT") && stderr.contains("not a url"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// A sandbox execution: the image, container and release steps are spans of the same trace,
/// with what they did (the image, the container, whether it was reused, what became of it).
#[test]
fn a_sandbox_execution_traces_its_image_container_and_release_steps() {
    let Ok(image) = std::env::var("STIGMER_TEST_SANDBOX_IMAGE") else {
        eprintln!("skipped: STIGMER_TEST_SANDBOX_IMAGE is not set (scripts/test.sh sets it)");
        return;
    };
    let receiver = Receiver::start();
    let mut env = Env::new();
    env.extra.extend([
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT".to_string(),
            receiver.endpoint(),
        ),
        ("OTEL_BSP_SCHEDULE_DELAY".to_string(), "100".to_string()),
        ("STIGMER_EXECUTION_MODE".to_string(), "sandbox".to_string()),
        ("STIGMER_SANDBOX_IMAGE".to_string(), image.clone()),
        ("STIGMER_SANDBOX_AUTO_PULL".to_string(), "false".to_string()),
        // TTL 0: the container is removed by the release step, which then says so.
        ("STIGMER_SANDBOX_TTL".to_string(), "0".to_string()),
    ]);
    env.start_daemon();
    let out = env.stigmer(&["run", "--output", "json", "echo boxed"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let record = env.last_execution();
    let id = record["id"].as_str().unwrap().to_string();
    let container = record["container_id"].as_str().unwrap().to_string();
    let trace_id = env.show(&id)["trace_id"].as_str().unwrap().to_string();

    let step = |spans: &[Received], name: &str| {
        spans
            .iter()
            .find(|r| r.span.name == name && hex(&r.span.trace_id) == trace_id)
            .map(|r| r.span.clone())
    };
    // The daemon saw the image on its host, so exec acquired the container itself: no
    // ensure-image or acquire step, and the image, where it came from and the container are on
    // the exec step.
    let names = ["RunActivity:exec", "RunActivity:release_container"];
    let all = eventually(Duration::from_secs(30), || {
        let spans = receiver.spans();
        names.iter().all(|n| step(&spans, n).is_some())
    });
    let spans = receiver.spans();
    let seen: Vec<&str> = spans.iter().map(|r| r.span.name.as_str()).collect();
    assert!(all, "missing sandbox step spans; received {seen:?}");

    for skipped in ["RunActivity:ensure_image", "RunActivity:acquire_container"] {
        assert!(step(&spans, skipped).is_none(), "{seen:?}");
    }
    let exec = step(&spans, "RunActivity:exec").unwrap();
    assert_eq!(attr(&exec, "stigmer.sandbox.image"), Some(image));
    assert_eq!(
        attr(&exec, "stigmer.sandbox.image_source").as_deref(),
        Some("present")
    );
    assert_eq!(
        attr(&exec, "stigmer.sandbox.container_id"),
        Some(container.clone())
    );
    assert_eq!(
        attr(&exec, "stigmer.sandbox.reused").as_deref(),
        Some("false")
    );
    let release = step(&spans, "RunActivity:release_container").unwrap();
    assert_eq!(
        attr(&release, "stigmer.sandbox.container_id"),
        Some(container)
    );
    for span in [&exec, &release] {
        assert_eq!(
            attr(span, "stigmer.execution.id").as_deref(),
            Some(id.as_str()),
            "{}",
            span.name
        );
    }
    eprintln!(
        "release: {:?}, tainted: {:?}",
        attr(&release, "stigmer.sandbox.release"),
        attr(&release, "stigmer.sandbox.tainted")
    );
}
