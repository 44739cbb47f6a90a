//! The fake's HTTP surface: routes, the gate every request passes, and the handlers.
//!
//! Paths, as the descriptions give them:
//! - main API under `/api`: `POST|GET /sandbox`, `GET|DELETE /sandbox/{id}`,
//!   `GET /sandbox/{id}/toolbox-proxy-url`, and the deprecated `/toolbox/{id}/toolbox/...`;
//! - toolbox under `/toolbox/{sandboxId}` (the `toolboxProxyUrl` sandboxes report):
//!   `process/execute`, `process/session[/{sid}[/exec|/command/{cid}[/logs]]]`.
//!
//! The gate records the request, checks the bearer, applies injected faults, and validates the
//! body against the description before a handler sees it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::body::{Body, to_bytes};
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{FromRequestParts, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::exec::{self, CommandLog, RunEnd, Source};
use super::{FakeSandbox, FakeSession, FaultKind, RecordedRequest, Shared};
use crate::demux::demux_all;
use crate::openapi::{self, Spec, Strictness};

/// The largest request body read: a file upload of 256 MiB and its form.
const MAX_BODY: usize = 257 << 20;

/// An OpenAPI operation the fake serves: its id, description, and body schemas.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Operation {
    /// `operationId` in the description.
    pub id: &'static str,
    /// Which description.
    pub spec: Spec,
    /// Component schema of the request body.
    pub request_schema: Option<&'static str>,
    /// Component schema of a JSON answer.
    pub response_schema: Option<&'static str>,
}

const fn op(
    id: &'static str,
    spec: Spec,
    request_schema: Option<&'static str>,
    response_schema: Option<&'static str>,
) -> Option<Operation> {
    Some(Operation {
        id,
        spec,
        request_schema,
        response_schema,
    })
}

/// The operation a request to the fake's `path` is, if it serves it.
#[must_use]
pub fn classify(method: &str, path: &str) -> Option<Operation> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (method, segments.as_slice()) {
        ("POST", ["api", "sandbox"]) => op(
            "createSandbox",
            Spec::Api,
            Some("CreateSandbox"),
            Some("Sandbox"),
        ),
        ("GET", ["api", "sandbox"]) => op(
            "listSandboxes",
            Spec::Api,
            None,
            Some("ListSandboxesResponse"),
        ),
        ("GET", ["api", "sandbox", _]) => op("getSandbox", Spec::Api, None, Some("Sandbox")),
        ("DELETE", ["api", "sandbox", _]) => op("deleteSandbox", Spec::Api, None, Some("Sandbox")),
        ("GET", ["api", "sandbox", _, "toolbox-proxy-url"]) => op(
            "getToolboxProxyUrl",
            Spec::Api,
            None,
            Some("ToolboxProxyUrl"),
        ),
        (m, ["api", "toolbox", _, "toolbox", rest @ ..]) => toolbox_operation(m, rest, true),
        (m, ["toolbox", _, rest @ ..]) => toolbox_operation(m, rest, false),
        _ => None,
    }
}

fn toolbox_operation(method: &str, rest: &[&str], deprecated: bool) -> Option<Operation> {
    let spec = if deprecated { Spec::Api } else { Spec::Toolbox };
    let name = |current: &'static str, old: &'static str| if deprecated { old } else { current };
    match (method, rest) {
        ("POST", ["process", "execute"]) => op(
            name("ExecuteCommand", "executeCommand_deprecated"),
            spec,
            Some("ExecuteRequest"),
            Some("ExecuteResponse"),
        ),
        ("POST", ["process", "session"]) => op(
            name("CreateSession", "createSession_deprecated"),
            spec,
            Some("CreateSessionRequest"),
            None,
        ),
        ("GET", ["process", "session", _]) => op(
            name("GetSession", "getSession_deprecated"),
            spec,
            None,
            Some("Session"),
        ),
        ("DELETE", ["process", "session", _]) => op(
            name("DeleteSession", "deleteSession_deprecated"),
            spec,
            None,
            None,
        ),
        ("POST", ["process", "session", _, "exec"]) => op(
            name("SessionExecuteCommand", "executeSessionCommand_deprecated"),
            spec,
            Some("SessionExecuteRequest"),
            Some("SessionExecuteResponse"),
        ),
        ("GET", ["process", "session", _, "command", _]) => op(
            name("GetSessionCommand", "getSessionCommand_deprecated"),
            spec,
            None,
            Some("Command"),
        ),
        ("POST", ["process", "session", _, "command", _, "input"]) if !deprecated => {
            op("SendInput", spec, Some("SessionSendInputRequest"), None)
        }
        ("GET", ["files", "info"]) if !deprecated => {
            op("GetFileInfo", spec, None, Some("FileInfo"))
        }
        ("GET", ["files", "download"]) if !deprecated => op("DownloadFile", spec, None, None),
        // A multipart form, not JSON: the handler checks it has its `file` part.
        ("POST", ["files", "upload"]) if !deprecated => op("UploadFile", spec, None, None),
        ("POST", ["files", "permissions"]) if !deprecated => {
            op("SetFilePermissions", spec, None, None)
        }
        ("GET", ["process", "session", _, "command", _, "logs"]) => op(
            name("GetSessionCommandLogs", "getSessionCommandLogs_deprecated"),
            spec,
            None,
            (!deprecated).then_some("SessionCommandLogsResponse"),
        ),
        _ => None,
    }
}

pub(super) fn router(shared: Arc<Shared>) -> Router {
    let toolbox = Router::new()
        .route("/process/execute", post(execute))
        .route("/process/session", post(create_session).get(list_sessions))
        .route(
            "/process/session/{session_id}",
            get(get_session).delete(delete_session),
        )
        .route("/process/session/{session_id}/exec", post(session_exec))
        .route(
            "/process/session/{session_id}/command/{command_id}",
            get(get_command),
        )
        .route(
            "/process/session/{session_id}/command/{command_id}/logs",
            get(command_logs),
        )
        .route(
            "/process/session/{session_id}/command/{command_id}/input",
            post(send_input),
        )
        .route("/files/info", get(file_info))
        .route("/files/download", get(download_file))
        .route("/files/upload", post(upload_file))
        .route("/files/permissions", post(set_permissions));
    let api = Router::new()
        .route("/sandbox", post(create_sandbox).get(list_sandboxes))
        .route(
            "/sandbox/{sandbox_id}",
            get(get_sandbox).delete(delete_sandbox),
        )
        .route(
            "/sandbox/{sandbox_id}/toolbox-proxy-url",
            get(toolbox_proxy_url),
        )
        .nest("/toolbox/{sandbox_id}/toolbox", toolbox.clone());
    Router::new()
        .nest("/api", api)
        .nest("/toolbox/{sandbox_id}", toolbox)
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such route in the fake Daytona") })
        .layer(middleware::from_fn_with_state(shared.clone(), gate))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(shared)
}

/// Daytona-style error answer: `{statusCode, message, error}`.
fn error(status: StatusCode, message: impl Into<String>) -> Response {
    let body = json!({
        "statusCode": status.as_u16(),
        "message": message.into(),
        "error": status.canonical_reason().unwrap_or("Error"),
    });
    (status, Json(body)).into_response()
}

async fn gate(State(shared): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    let received_at = Instant::now();
    let (parts, body) = request.into_parts();
    let bytes = to_bytes(body, MAX_BODY).await.unwrap_or_default();
    let method = parts.method.to_string();
    let path = parts.uri.path().to_owned();
    let query = parts.uri.query().map(str::to_owned);
    let operation = classify(&method, &path);
    let body_json: Option<Value> = if bytes.is_empty() {
        None
    } else {
        serde_json::from_slice(&bytes).ok()
    };
    let websocket = parts
        .headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let expected = format!("Bearer {}", shared.api_key);
    let authorized = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        == Some(expected.as_str());
    let headers = parts
        .headers
        .iter()
        .filter(|(k, _)| *k != header::AUTHORIZATION)
        .map(|(k, v)| {
            (
                k.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();

    let mut schema_errors = Vec::new();
    if let Some(schema) = operation.and_then(|o| o.request_schema.map(|s| (o.spec, s))) {
        let value = body_json.clone().unwrap_or(Value::Null);
        if let Err(errors) =
            openapi::validate(schema.0, schema.1, &value, Strictness::NoUnknownFields)
        {
            schema_errors = errors;
        }
    }

    // Recorded on arrival, so a request whose client gave up before the answer still shows
    // (with status 0); the answer is filled in when it is ready.
    let record_id = {
        let mut state = shared.lock();
        state.record_seq += 1;
        let id = state.record_seq;
        state.requests.push(RecordedRequest {
            method,
            path: path.clone(),
            query,
            operation: operation.map(|o| o.id),
            headers,
            authorized,
            websocket,
            body: body_json,
            schema_errors: schema_errors.clone(),
            status: 0,
            response_body: None,
            received_at,
            id,
        });
        id
    };

    let fault = if authorized {
        shared.lock().take_fault(&path)
    } else {
        None
    };
    let response = if !authorized {
        error(StatusCode::UNAUTHORIZED, "Invalid credentials")
    } else if let Some(fault) = fault {
        fault_response(&fault)
    } else if !schema_errors.is_empty() && shared.reject_invalid_bodies {
        error(StatusCode::BAD_REQUEST, schema_errors.join("; "))
    } else {
        next.run(Request::from_parts(parts, Body::from(bytes)))
            .await
    };

    let (resp_parts, resp_body) = response.into_parts();
    let status = resp_parts.status.as_u16();
    let is_json = resp_parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.contains("json"));
    let (response, response_body) = if status == 101 || !is_json {
        (Response::from_parts(resp_parts, resp_body), None)
    } else {
        let resp_bytes = to_bytes(resp_body, MAX_BODY).await.unwrap_or_default();
        let value = serde_json::from_slice(&resp_bytes).ok();
        (
            Response::from_parts(resp_parts, Body::from(resp_bytes)),
            value,
        )
    };
    if let Some(record) = shared
        .lock()
        .requests
        .iter_mut()
        .find(|r| r.id == record_id)
    {
        record.status = status;
        record.response_body = response_body;
    }
    response
}

fn fault_response(kind: &FaultKind) -> Response {
    match kind {
        FaultKind::Status(code) => {
            let status = StatusCode::from_u16(*code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            error(status, format!("injected failure: {status}"))
        }
        FaultKind::RateLimited(after) => {
            let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
            let mut response = error(
                StatusCode::TOO_MANY_REQUESTS,
                "ThrottlerException: Too Many Requests",
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            response
        }
    }
}

type Params = Path<HashMap<String, String>>;

fn param<'a>(params: &'a HashMap<String, String>, name: &str) -> &'a str {
    params.get(name).map_or("", String::as_str)
}

/// An error answer not rendered yet: small enough to pass around in `Result`s.
struct Reject(StatusCode, String);

impl IntoResponse for Reject {
    fn into_response(self) -> Response {
        error(self.0, self.1)
    }
}

fn not_found_sandbox(id: &str) -> Reject {
    Reject(
        StatusCode::NOT_FOUND,
        format!("Sandbox with ID or name {id} not found"),
    )
}

fn parse_body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, Reject> {
    serde_json::from_slice(bytes).map_err(|e| {
        Reject(
            StatusCode::BAD_REQUEST,
            format!("invalid request body: {e}"),
        )
    })
}

fn is_deprecated_path(headers_path: &str) -> bool {
    headers_path.starts_with("/api/")
}

// ---- sandboxes ---------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CreateSandboxBody {
    name: Option<String>,
    snapshot: Option<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    network_block_all: Option<bool>,
    network_allow_list: Option<String>,
    target: Option<String>,
    cpu: Option<u64>,
    memory: Option<u64>,
    disk: Option<u64>,
    auto_stop_interval: Option<i64>,
    auto_delete_interval: Option<i64>,
}

async fn create_sandbox(State(shared): State<Arc<Shared>>, body: axum::body::Bytes) -> Response {
    let body: CreateSandboxBody = match parse_body(&body) {
        Ok(b) => b,
        Err(r) => return r.into_response(),
    };
    let mut state = shared.lock();
    let id = state.next_id("sbx");
    let fate = state.fates.pop_front().unwrap_or_default();
    let home = match &shared.home_root {
        Some(root) => {
            let home = root.join(&id);
            if let Err(e) = std::fs::create_dir_all(&home) {
                return error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("fake daytona: could not make the sandbox's directory: {e}"),
                );
            }
            Some(home)
        }
        None => None,
    };
    let sandbox = FakeSandbox {
        id: id.clone(),
        name: body.name.unwrap_or_else(|| id.clone()),
        snapshot: body.snapshot,
        env: body.env,
        labels: body.labels,
        target: body.target.unwrap_or_else(|| "us".into()),
        cpu: body.cpu.unwrap_or(1),
        memory: body.memory.unwrap_or(1),
        disk: body.disk.unwrap_or(3),
        network_block_all: body.network_block_all.unwrap_or(false),
        network_allow_list: body.network_allow_list,
        auto_stop_interval: body.auto_stop_interval.unwrap_or(15),
        auto_delete_interval: body.auto_delete_interval,
        created: Instant::now(),
        created_at: super::rfc3339(SystemTime::now()),
        fate,
        sessions: HashMap::new(),
        home,
    };
    let answer = sandbox.to_json(&shared);
    state.sandboxes.insert(id, sandbox);
    Json(answer).into_response()
}

#[derive(Deserialize)]
struct ListQuery {
    labels: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

async fn list_sandboxes(State(shared): State<Arc<Shared>>, Query(q): Query<ListQuery>) -> Response {
    let wanted: BTreeMap<String, String> = match q.labels.as_deref() {
        None | Some("") => BTreeMap::new(),
        Some(s) => match serde_json::from_str(s) {
            Ok(l) => l,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("labels must be a JSON object of strings: {e}"),
                );
            }
        },
    };
    let limit = match q.limit.as_deref().map(str::parse::<f64>) {
        None => 100,
        Some(Ok(n)) if (1.0..=200.0).contains(&n) => n as usize,
        Some(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "limit must be a number from 1 to 200",
            );
        }
    }
    .min(shared.max_page_size);
    let offset = match q.cursor.as_deref().map(str::parse::<usize>) {
        None => 0,
        Some(Ok(n)) => n,
        Some(Err(_)) => return error(StatusCode::BAD_REQUEST, "invalid cursor"),
    };
    let state = shared.lock();
    let matching: Vec<Value> = state
        .sandboxes
        .values()
        .filter(|s| wanted.iter().all(|(k, v)| s.labels.get(k) == Some(v)))
        .map(|s| s.to_json(&shared))
        .collect();
    let items: Vec<&Value> = matching.iter().skip(offset).take(limit).collect();
    let next = if offset + limit < matching.len() {
        json!((offset + limit).to_string())
    } else {
        Value::Null
    };
    Json(json!({ "items": items, "nextCursor": next })).into_response()
}

async fn get_sandbox(State(shared): State<Arc<Shared>>, Path(p): Params) -> Response {
    let id = param(&p, "sandbox_id");
    let state = shared.lock();
    match state.sandboxes.get(id) {
        Some(s) => Json(s.to_json(&shared)).into_response(),
        None => not_found_sandbox(id).into_response(),
    }
}

async fn delete_sandbox(State(shared): State<Arc<Shared>>, Path(p): Params) -> Response {
    let id = param(&p, "sandbox_id");
    let mut state = shared.lock();
    match state.sandboxes.remove(id) {
        Some(s) => {
            for command in s.sessions.values().flat_map(|s| s.commands.values()) {
                command.kill();
            }
            if let Some(home) = &s.home {
                let _ = std::fs::remove_dir_all(home);
            }
            let mut answer = s.to_json(&shared);
            answer["state"] = json!("destroying");
            answer["desiredState"] = json!("destroyed");
            Json(answer).into_response()
        }
        None => not_found_sandbox(id).into_response(),
    }
}

async fn toolbox_proxy_url(State(shared): State<Arc<Shared>>, Path(p): Params) -> Response {
    let id = param(&p, "sandbox_id");
    if !shared.lock().sandboxes.contains_key(id) {
        return not_found_sandbox(id).into_response();
    }
    Json(json!({ "url": shared.toolbox_url() })).into_response()
}

// ---- toolbox -----------------------------------------------------------------------------------

/// Runs `f` on the sandbox if it exists and is started; otherwise the error answer.
fn with_started<T>(
    shared: &Shared,
    id: &str,
    f: impl FnOnce(&mut super::State, &str) -> Result<T, Reject>,
) -> Result<T, Reject> {
    let mut state = shared.lock();
    let current = match state.sandboxes.get(id) {
        None => return Err(not_found_sandbox(id)),
        Some(s) => s.state(shared.start_delay).0,
    };
    if current != "started" {
        return Err(Reject(
            StatusCode::BAD_REQUEST,
            format!("Sandbox {id} is not started (state: {current})"),
        ));
    }
    f(&mut state, id)
}

fn choose_source(
    shared: &Shared,
    state: &super::State,
    sandbox_id: &str,
    command: &str,
    cwd: Option<String>,
    env: BTreeMap<String, String>,
    merge_stderr: bool,
) -> Source {
    if let Some((_, script)) = state
        .scripts
        .iter()
        .find(|(pattern, _)| command.contains(pattern.as_str()))
    {
        Source::Script(script.clone())
    } else if shared.execute_on_host {
        Source::Host {
            command: command.to_owned(),
            cwd,
            env,
            merge_stderr,
            home: state.sandboxes.get(sandbox_id).and_then(|s| s.home.clone()),
            // Session commands read what `command/{id}/input` sends; `execute` reads nothing.
            input: !merge_stderr,
        }
    } else {
        Source::Script(state.default_command.clone())
    }
}

#[derive(Deserialize)]
struct ExecuteBody {
    command: String,
    cwd: Option<String>,
    #[serde(default)]
    envs: BTreeMap<String, String>,
    timeout: Option<f64>,
}

async fn execute(
    State(shared): State<Arc<Shared>>,
    Path(p): Params,
    body: axum::body::Bytes,
) -> Response {
    let id = param(&p, "sandbox_id");
    let body: ExecuteBody = match parse_body(&body) {
        Ok(b) => b,
        Err(_) => return error(StatusCode::BAD_REQUEST, "command is required"),
    };
    if body.command.trim().is_empty() {
        return error(StatusCode::BAD_REQUEST, "empty command");
    }
    let prepared = with_started(&shared, id, |state, _| {
        let source = choose_source(
            &shared,
            state,
            id,
            &body.command,
            body.cwd.clone(),
            body.envs.clone(),
            true,
        );
        Ok((source, state.ignore_exec_timeout))
    });
    let (source, ignore_timeout) = match prepared {
        Ok(x) => x,
        Err(r) => return r.into_response(),
    };
    // As Daytona: a missing or zero timeout means none at all.
    let timeout = body
        .timeout
        .filter(|t| *t > 0.0 && !ignore_timeout)
        .map(Duration::from_secs_f64);
    let log = CommandLog::new("execute".into(), body.command.clone());
    match exec::run(source, &log, timeout).await {
        RunEnd::Exited(code) => {
            let (bytes, _) = log.read_from(0);
            let result = String::from_utf8_lossy(&exec::strip_markers(&bytes)).into_owned();
            Json(json!({ "exitCode": code, "result": result })).into_response()
        }
        RunEnd::TimedOut => error(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "Command execution timed out after {} seconds. The timeout can be increased by \
                 adjusting the timeout parameter in the request.",
                body.timeout.unwrap_or_default()
            ),
        ),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CreateSessionBody {
    session_id: String,
}

async fn create_session(
    State(shared): State<Arc<Shared>>,
    Path(p): Params,
    uri: axum::http::Uri,
    body: axum::body::Bytes,
) -> Response {
    let id = param(&p, "sandbox_id");
    let body: CreateSessionBody = match parse_body(&body) {
        Ok(b) => b,
        Err(r) => return r.into_response(),
    };
    let created = with_started(&shared, id, |state, id| {
        let sandbox = state
            .sandboxes
            .get_mut(id)
            .ok_or_else(|| not_found_sandbox(id))?;
        if sandbox.sessions.contains_key(&body.session_id) {
            return Err(Reject(
                StatusCode::CONFLICT,
                "session already exists".into(),
            ));
        }
        sandbox
            .sessions
            .insert(body.session_id.clone(), FakeSession::default());
        Ok(())
    });
    match created {
        Ok(()) if is_deprecated_path(uri.path()) => StatusCode::OK.into_response(),
        Ok(()) => StatusCode::CREATED.into_response(),
        Err(r) => r.into_response(),
    }
}

fn command_json(log: &CommandLog) -> Value {
    let mut v = json!({ "id": log.id, "command": log.command });
    if let Some(code) = log.exit_code() {
        v["exitCode"] = json!(code);
    }
    v
}

fn session_json(id: &str, session: &FakeSession) -> Value {
    let commands: Vec<Value> = session.commands.values().map(|c| command_json(c)).collect();
    json!({ "sessionId": id, "commands": commands })
}

async fn list_sessions(State(shared): State<Arc<Shared>>, Path(p): Params) -> Response {
    let id = param(&p, "sandbox_id");
    match with_started(&shared, id, |state, id| {
        let sandbox = state
            .sandboxes
            .get(id)
            .ok_or_else(|| not_found_sandbox(id))?;
        Ok(sandbox
            .sessions
            .iter()
            .map(|(sid, s)| session_json(sid, s))
            .collect::<Vec<_>>())
    }) {
        Ok(list) => Json(list).into_response(),
        Err(r) => r.into_response(),
    }
}

fn with_session<T>(
    shared: &Shared,
    p: &HashMap<String, String>,
    f: impl FnOnce(&mut super::State, &str, &str) -> Result<T, Reject>,
) -> Result<T, Reject> {
    let session_id = param(p, "session_id");
    with_started(shared, param(p, "sandbox_id"), |state, id| {
        let exists = state
            .sandboxes
            .get(id)
            .is_some_and(|s| s.sessions.contains_key(session_id));
        if !exists {
            return Err(Reject(StatusCode::NOT_FOUND, "session not found".into()));
        }
        f(state, id, session_id)
    })
}

async fn get_session(State(shared): State<Arc<Shared>>, Path(p): Params) -> Response {
    match with_session(&shared, &p, |state, id, sid| {
        let session = state
            .sandboxes
            .get(id)
            .and_then(|s| s.sessions.get(sid))
            .ok_or_else(|| Reject(StatusCode::NOT_FOUND, "session not found".into()))?;
        Ok(session_json(sid, session))
    }) {
        Ok(v) => Json(v).into_response(),
        Err(r) => r.into_response(),
    }
}

async fn delete_session(
    State(shared): State<Arc<Shared>>,
    Path(p): Params,
    uri: axum::http::Uri,
) -> Response {
    match with_session(&shared, &p, |state, id, sid| {
        // As Daytona does, deleting a session ends what still runs in it.
        if let Some(session) = state
            .sandboxes
            .get_mut(id)
            .and_then(|s| s.sessions.remove(sid))
        {
            for command in session.commands.values() {
                command.kill();
            }
        }
        Ok(())
    }) {
        Ok(()) if is_deprecated_path(uri.path()) => StatusCode::OK.into_response(),
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(r) => r.into_response(),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SessionExecBody {
    command: String,
    #[serde(default)]
    run_async: bool,
    #[serde(default, rename = "async")]
    async_old: bool,
    #[serde(default)]
    suppress_input_echo: bool,
}

/// What a client gets for session output, decided from its headers as Daytona's toolbox does:
/// JSON with stdout/stderr for SDKs from 0.167.0, marked text for SDKs from 0.27.0 or a client
/// sending `X-Daytona-Split-Output: true`, merged text for anyone else.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OutputMode {
    Merged,
    Marked,
    Json,
}

fn output_mode(headers: &HeaderMap) -> OutputMode {
    let from_header = headers
        .get("x-daytona-sdk-version")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let from_protocol = || {
        headers
            .get(header::SEC_WEBSOCKET_PROTOCOL)
            .and_then(|v| v.to_str().ok())
            .and_then(|list| {
                list.split(',')
                    .map(str::trim)
                    .find_map(|p| p.strip_prefix("X-Daytona-SDK-Version~").map(str::to_owned))
            })
    };
    let version = from_header.or_else(from_protocol).filter(|v| !v.is_empty());
    let Some(version) = version else {
        let split = headers
            .get("x-daytona-split-output")
            .and_then(|v| v.to_str().ok())
            == Some("true");
        return if split {
            OutputMode::Marked
        } else {
            OutputMode::Merged
        };
    };
    if version.contains("dev") {
        return OutputMode::Json;
    }
    let numbers: Vec<u64> = version
        .trim_start_matches('v')
        .split(|c: char| !c.is_ascii_digit())
        .take(3)
        .map(|n| n.parse().unwrap_or(0))
        .collect();
    let v = (
        numbers.first().copied().unwrap_or(0),
        numbers.get(1).copied().unwrap_or(0),
        numbers.get(2).copied().unwrap_or(0),
    );
    if v < (0, 27, 0) {
        OutputMode::Merged
    } else if v >= (0, 167, 0) {
        OutputMode::Json
    } else {
        OutputMode::Marked
    }
}

async fn session_exec(
    State(shared): State<Arc<Shared>>,
    Path(p): Params,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let body: SessionExecBody = match parse_body(&body) {
        Ok(b) => b,
        Err(r) => return r.into_response(),
    };
    if body.command.trim().is_empty() {
        return error(StatusCode::BAD_REQUEST, "command cannot be empty");
    }
    let run_async = body.run_async || body.async_old;
    let prepared = with_session(&shared, &p, |state, id, sid| {
        let command_id = state.next_id("cmd");
        let source = choose_source(
            &shared,
            state,
            id,
            &body.command,
            None,
            BTreeMap::new(),
            false,
        );
        let log = Arc::new(CommandLog::new(command_id.clone(), body.command.clone()));
        if body.suppress_input_echo {
            log.echo_input
                .store(false, std::sync::atomic::Ordering::SeqCst);
        }
        if matches!(source, Source::Host { input: true, .. }) {
            log.takes_input
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
        if let Some(session) = state
            .sandboxes
            .get_mut(id)
            .and_then(|s| s.sessions.get_mut(sid))
        {
            session.commands.insert(command_id, log.clone());
        }
        Ok((source, log))
    });
    let (source, log) = match prepared {
        Ok(x) => x,
        Err(r) => return r.into_response(),
    };
    if run_async {
        let running = log.clone();
        tokio::spawn(async move {
            let code = match exec::run(source, &running, None).await {
                RunEnd::Exited(code) => code,
                RunEnd::TimedOut => -1,
            };
            running.finish(code);
        });
        return (StatusCode::ACCEPTED, Json(json!({ "cmdId": log.id }))).into_response();
    }
    let code = match exec::run(source, &log, None).await {
        RunEnd::Exited(code) => code,
        RunEnd::TimedOut => -1,
    };
    log.finish(code);
    let (bytes, _) = log.read_from(0);
    let mut answer = json!({ "cmdId": log.id, "exitCode": code });
    match output_mode(&headers) {
        OutputMode::Merged => {
            answer["output"] = json!(String::from_utf8_lossy(&exec::strip_markers(&bytes)));
        }
        OutputMode::Marked => answer["output"] = json!(String::from_utf8_lossy(&bytes)),
        OutputMode::Json => {
            let split = demux_all(&bytes);
            answer["output"] = json!(String::from_utf8_lossy(&bytes));
            answer["stdout"] = json!(String::from_utf8_lossy(&split.stdout));
            answer["stderr"] = json!(String::from_utf8_lossy(&split.stderr));
        }
    }
    Json(answer).into_response()
}

fn find_command(shared: &Shared, p: &HashMap<String, String>) -> Result<Arc<CommandLog>, Reject> {
    let command_id = param(p, "command_id");
    with_session(shared, p, |state, id, sid| {
        state
            .sandboxes
            .get(id)
            .and_then(|s| s.sessions.get(sid))
            .and_then(|s| s.commands.get(command_id))
            .cloned()
            .ok_or_else(|| Reject(StatusCode::NOT_FOUND, "command not found".into()))
    })
}

async fn get_command(State(shared): State<Arc<Shared>>, Path(p): Params) -> Response {
    match find_command(&shared, &p) {
        Ok(log) => Json(command_json(&log)).into_response(),
        Err(r) => r.into_response(),
    }
}

async fn command_logs(
    State(shared): State<Arc<Shared>>,
    Path(p): Params,
    request: Request,
) -> Response {
    let log = match find_command(&shared, &p) {
        Ok(log) => log,
        Err(r) => return r.into_response(),
    };
    let (mut parts, _body) = request.into_parts();
    let mode = output_mode(&parts.headers);
    let wants_ws = parts
        .headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let (ws_off, drop_after) = {
        let state = shared.lock();
        (state.websocket_logs_off, state.drop_log_streams_after)
    };
    if wants_ws && !ws_off {
        return match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
            Ok(ws) => ws.on_upgrade(move |socket| stream_log(socket, log, mode, drop_after)),
            Err(rejection) => rejection.into_response(),
        };
    }
    let (bytes, _) = log.read_from(0);
    match mode {
        OutputMode::Json => {
            let split = demux_all(&bytes);
            Json(json!({
                "output": String::from_utf8_lossy(&bytes),
                "stdout": String::from_utf8_lossy(&split.stdout),
                "stderr": String::from_utf8_lossy(&split.stderr),
            }))
            .into_response()
        }
        OutputMode::Marked => text(bytes),
        OutputMode::Merged => text(exec::strip_markers(&bytes)),
    }
}

fn text(bytes: Vec<u8>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        Body::from(bytes),
    )
        .into_response()
}

/// Sends the log as it grows, one binary frame per read, then a normal close once the command
/// has ended and everything is sent, as the toolbox's follow does. With `drop_after`, the socket
/// is dropped without a close frame before the frame after that many.
async fn stream_log(
    mut socket: WebSocket,
    log: Arc<CommandLog>,
    mode: OutputMode,
    drop_after: Option<usize>,
) {
    let mut changes = log.subscribe();
    let mut offset = 0;
    let mut frames = 0usize;
    loop {
        changes.borrow_and_update();
        let (bytes, exit_code) = log.read_from(offset);
        if !bytes.is_empty() {
            if drop_after.is_some_and(|n| frames >= n) {
                return; // dropped: no close frame, as when a proxy or the network cuts it
            }
            offset += bytes.len();
            let payload = if mode == OutputMode::Merged {
                exec::strip_markers(&bytes)
            } else {
                bytes
            };
            if socket.send(Message::Binary(payload.into())).await.is_err() {
                return;
            }
            frames += 1;
            continue;
        }
        if exit_code.is_some() {
            let close = CloseFrame {
                code: close_code::NORMAL,
                reason: "".into(),
            };
            let _ = socket.send(Message::Close(Some(close))).await;
            return;
        }
        if changes.changed().await.is_err() {
            return;
        }
    }
}

// ---- command input -----------------------------------------------------------------------------

#[derive(Deserialize)]
struct SendInputBody {
    data: String,
}

/// Writes to a session command's stdin as Daytona's toolbox does: a newline is added to data
/// that does not end with one, a command that has ended answers 410, and nothing ever ends the
/// input.
async fn send_input(
    State(shared): State<Arc<Shared>>,
    Path(p): Params,
    body: axum::body::Bytes,
) -> Response {
    let body: SendInputBody = match parse_body(&body) {
        Ok(b) => b,
        Err(r) => return r.into_response(),
    };
    let log = match find_command(&shared, &p) {
        Ok(log) => log,
        Err(r) => return r.into_response(),
    };
    let gone = |log: &CommandLog| {
        error(
            StatusCode::GONE,
            format!(
                "command has already completed with exit code {}",
                log.exit_code().unwrap_or(-1)
            ),
        )
    };
    if log.exit_code().is_some() || log.exited.load(std::sync::atomic::Ordering::SeqCst) {
        return gone(&log);
    }
    let mut data = body.data.into_bytes();
    if !data.ends_with(b"\n") {
        data.push(b'\n');
    }
    // The process may not have started yet: its pipe comes with it.
    let mut input = log.input.lock().await;
    let since = std::time::Instant::now();
    while input.is_none()
        && log.takes_input.load(std::sync::atomic::Ordering::SeqCst)
        && !log.exited.load(std::sync::atomic::Ordering::SeqCst)
        && since.elapsed() < Duration::from_secs(10)
    {
        drop(input);
        tokio::time::sleep(Duration::from_millis(5)).await;
        input = log.input.lock().await;
    }
    if log.exited.load(std::sync::atomic::Ordering::SeqCst) && input.is_none() {
        return gone(&log);
    }
    // A scripted command reads nothing: what is sent to it is dropped, as a pipe nobody reads
    // until the command ends would.
    let Some(pipe) = input.as_mut() else {
        return StatusCode::NO_CONTENT.into_response();
    };
    let written = tokio::io::AsyncWriteExt::write_all(pipe, &data).await;
    if log.exited.load(std::sync::atomic::Ordering::SeqCst) {
        input.take();
    }
    match written {
        Ok(()) => {
            // As Daytona: the input also shows in the output, as stdout, unless suppressed.
            if log.echo_input.load(std::sync::atomic::Ordering::SeqCst) {
                log.append(crate::model::OutputStream::Stdout, &data);
            }
            StatusCode::NO_CONTENT.into_response()
        }
        Err(_) if log.exited.load(std::sync::atomic::Ordering::SeqCst) => gone(&log),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("failed to write to input pipe: {e}"),
        ),
    }
}

// ---- files -------------------------------------------------------------------------------------

#[derive(Deserialize)]
struct FileQuery {
    path: Option<String>,
    mode: Option<String>,
}

/// The file a file route names in its sandbox; with `directory_ok` false, a directory is
/// refused as Daytona refuses it (400).
fn file_path(
    shared: &Shared,
    sandbox: &str,
    q: &FileQuery,
    directory_ok: bool,
) -> Result<std::path::PathBuf, Reject> {
    let path = sandbox_path(shared, sandbox, q.path.as_deref())?;
    if !directory_ok && path.is_dir() {
        return Err(Reject(
            StatusCode::BAD_REQUEST,
            format!("{} is a directory", path.display()),
        ));
    }
    Ok(path)
}

fn sandbox_path(
    shared: &Shared,
    id: &str,
    path: Option<&str>,
) -> Result<std::path::PathBuf, Reject> {
    let home = with_started(shared, id, |state, id| {
        state
            .sandboxes
            .get(id)
            .and_then(|s| s.home.clone())
            .ok_or_else(|| {
                Reject(
                    StatusCode::NOT_IMPLEMENTED,
                    "the fake keeps files only when it executes commands on the host".into(),
                )
            })
    })?;
    let Some(path) = path.filter(|p| !p.is_empty()) else {
        return Err(Reject(StatusCode::BAD_REQUEST, "path is required".into()));
    };
    let path = std::path::Path::new(path);
    let full = if path.is_absolute() {
        path.to_path_buf()
    } else {
        home.join(path)
    };
    let outside = || {
        Reject(
            StatusCode::FORBIDDEN,
            format!(
                "{}: the fake sandbox's files are under {}",
                full.display(),
                home.display()
            ),
        )
    };
    let home = home.canonicalize().map_err(|_| outside())?;
    // The parent resolved (symbolic links included) must lie in the sandbox's directory.
    let (Some(parent), Some(name)) = (full.parent(), full.file_name()) else {
        return Err(outside());
    };
    let parent = match parent.canonicalize() {
        Ok(p) => p,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Reject(
                StatusCode::NOT_FOUND,
                format!("{}: no such file or directory", full.display()),
            ));
        }
        Err(_) => return Err(outside()),
    };
    let resolved = parent.join(name);
    if name == ".." || !(parent.starts_with(&home) || resolved == home) {
        return Err(outside());
    }
    Ok(resolved)
}

fn io_reject(path: &std::path::Path, e: &std::io::Error) -> Reject {
    let status = match e.kind() {
        std::io::ErrorKind::NotFound => StatusCode::NOT_FOUND,
        std::io::ErrorKind::PermissionDenied => StatusCode::FORBIDDEN,
        _ => StatusCode::BAD_REQUEST,
    };
    Reject(status, format!("{}: {e}", path.display()))
}

async fn file_info(
    State(shared): State<Arc<Shared>>,
    Path(p): Params,
    Query(q): Query<FileQuery>,
) -> Response {
    let path = match file_path(&shared, param(&p, "sandbox_id"), &q, true) {
        Ok(path) => path,
        Err(r) => return r.into_response(),
    };
    // As Daytona: a symbolic link is followed.
    match std::fs::metadata(&path) {
        Ok(meta) => {
            use std::os::unix::fs::{MetadataExt, PermissionsExt};
            let perm = meta.permissions().mode() & 0o777;
            let mut letters = String::from(if meta.is_dir() { "d" } else { "-" });
            for i in (0..9).rev() {
                letters.push(if perm & (1 << i) == 0 {
                    '-'
                } else {
                    ['x', 'w', 'r'][i % 3]
                });
            }
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let modified = meta.modified().map(super::rfc3339).unwrap_or_default();
            Json(json!({
                "name": name,
                "isDir": meta.is_dir(),
                "size": meta.len(),
                "mode": letters,
                "permissions": format!("{perm:04o}"),
                "owner": meta.uid().to_string(),
                "group": meta.gid().to_string(),
                "modTime": modified,
                "modifiedAt": modified,
            }))
            .into_response()
        }
        Err(e) => io_reject(&path, &e).into_response(),
    }
}

async fn download_file(
    State(shared): State<Arc<Shared>>,
    Path(p): Params,
    Query(q): Query<FileQuery>,
) -> Response {
    let path = match file_path(&shared, param(&p, "sandbox_id"), &q, false) {
        Ok(path) => path,
        Err(r) => return r.into_response(),
    };
    match tokio::fs::read(&path).await {
        Ok(bytes) => (
            [(header::CONTENT_TYPE, "application/octet-stream")],
            Body::from(bytes),
        )
            .into_response(),
        Err(e) => io_reject(&path, &e).into_response(),
    }
}

async fn upload_file(
    State(shared): State<Arc<Shared>>,
    Path(p): Params,
    Query(q): Query<FileQuery>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let path = match file_path(&shared, param(&p, "sandbox_id"), &q, false) {
        Ok(path) => path,
        Err(r) => return r.into_response(),
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let Some(data) = crate::files::multipart_file_part(content_type, &body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "the body must be a multipart/form-data form with a `file` part",
        );
    };
    match tokio::fs::write(&path, data).await {
        Ok(()) => Json(json!({ "message": "File uploaded successfully" })).into_response(),
        Err(e) => io_reject(&path, &e).into_response(),
    }
}

async fn set_permissions(
    State(shared): State<Arc<Shared>>,
    Path(p): Params,
    Query(q): Query<FileQuery>,
) -> Response {
    let path = match file_path(&shared, param(&p, "sandbox_id"), &q, true) {
        Ok(path) => path,
        Err(r) => return r.into_response(),
    };
    let Some(mode) = q.mode.as_deref() else {
        return StatusCode::OK.into_response();
    };
    let Ok(bits) = u32::from_str_radix(mode, 8) else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("invalid file mode {mode:?}: give it in octal, e.g. 0755"),
        );
    };
    use std::os::unix::fs::PermissionsExt;
    match std::fs::set_permissions(&path, std::fs::Permissions::from_mode(bits & 0o7777)) {
        Ok(()) => StatusCode::OK.into_response(),
        Err(e) => io_reject(&path, &e).into_response(),
    }
}
