//! The one place requests are sent: authentication, timeouts, retries, error mapping.
//!
//! Every call goes through [`Transport::send`], so the rules hold everywhere: a bearer header
//! marked sensitive (so neither this crate nor reqwest/hyper ever print it), a timeout on every
//! request, retries with backoff and jitter on 429 (waiting `Retry-After` when sent), 5xx and
//! connection errors, never on other 4xx, and errors that name the action, the status and
//! Daytona's message. Calls that run a command are not idempotent: they are retried only when
//! the command cannot have started (see [`Idempotency`]).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue, RETRY_AFTER};
use reqwest::{Method, StatusCode};
use url::Url;

use crate::config::{ApiKey, Config, RetryPolicy};
use crate::error::{Error, Result};

/// Sent with every request so Daytona's logs can tell stigmer's traffic apart.
pub(crate) const SOURCE_HEADER: (&str, &str) = ("X-Daytona-Source", "stigmer");

/// Asks the toolbox to keep stdout and stderr apart in session logs (0x01/0x02 markers) instead
/// of merging them, without claiming to be one of Daytona's SDKs.
pub(crate) const SPLIT_OUTPUT_HEADER: (&str, &str) = ("X-Daytona-Split-Output", "true");

/// Whether a request may be sent twice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Idempotency {
    /// Reads, deletes, creates that at worst leave a labelled duplicate: retried on 429, any 5xx,
    /// timeouts and transport errors.
    Retryable,
    /// Runs a command: retried only on 429, 502, 503 and connection failures, where the command
    /// cannot have started. A 500, a 504 or a timeout may mean it ran, so they are returned.
    RunsCommand,
}

/// What a request carries.
pub(crate) enum Body {
    Json(serde_json::Value),
    /// Bytes as they are (a file upload's multipart form); shared, so a retry does not copy
    /// them.
    Raw {
        content_type: String,
        data: bytes::Bytes,
    },
}

/// A request to send.
pub(crate) struct Call {
    pub action: String,
    pub method: Method,
    pub url: Url,
    pub body: Option<Body>,
    pub timeout: Duration,
    pub idempotency: Idempotency,
    pub toolbox: bool,
}

/// A 2xx answer.
pub(crate) struct Answer {
    pub content_type: Option<String>,
    pub body: Vec<u8>,
    pub action: String,
}

impl Answer {
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_slice(&self.body).map_err(|e| Error::UnexpectedResponse {
            action: self.action.clone(),
            detail: format!(
                "the body is not the JSON expected ({e}); it starts with: {}",
                snippet(&self.body)
            ),
        })
    }

    pub fn is_json(&self) -> bool {
        self.content_type
            .as_deref()
            .is_some_and(|ct| ct.to_ascii_lowercase().contains("json"))
    }
}

/// Sends requests with the client's key and policy.
pub(crate) struct Transport {
    http: reqwest::Client,
    key: ApiKey,
    retry: RetryPolicy,
    pub call_timeout: Duration,
    pub tls: Arc<rustls::ClientConfig>,
}

impl Transport {
    pub fn new(config: &Config) -> Result<Self> {
        let tls = Arc::new(tls_config()?);
        let http = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .user_agent(concat!("stigmer-daytona/", env!("CARGO_PKG_VERSION")))
            .use_preconfigured_tls((*tls).clone())
            .build()
            .map_err(|e| Error::InvalidConfig(format!("could not build the HTTP client: {e}")))?;
        Ok(Transport {
            http,
            key: config.api_key().clone(),
            retry: config.retry.clone(),
            call_timeout: config.call_timeout,
            tls,
        })
    }

    /// The headers every request carries; the bearer is marked sensitive so that no `Debug`
    /// of a request or header map shows it.
    pub fn headers(&self, toolbox: bool) -> Result<HeaderMap> {
        let mut headers = HeaderMap::new();
        let mut bearer =
            HeaderValue::from_str(&format!("Bearer {}", self.key.expose())).map_err(|_| {
                Error::InvalidConfig(
                    "the Daytona API key contains characters not allowed in an HTTP header".into(),
                )
            })?;
        bearer.set_sensitive(true);
        headers.insert(AUTHORIZATION, bearer);
        headers.insert(SOURCE_HEADER.0, HeaderValue::from_static(SOURCE_HEADER.1));
        if toolbox {
            headers.insert(
                SPLIT_OUTPUT_HEADER.0,
                HeaderValue::from_static(SPLIT_OUTPUT_HEADER.1),
            );
        }
        Ok(headers)
    }

    /// Removes the API key from text that came from outside (a body echoed back in an error).
    pub fn scrub(&self, text: &str) -> String {
        scrub(text, self.key.expose())
    }

    /// Sends `call`, retrying as its idempotency allows; returns the 2xx answer or the error.
    pub async fn send(&self, call: Call) -> Result<Answer> {
        let headers = self.headers(call.toolbox)?;
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            let last = attempt >= self.retry.max_attempts;
            let mut request = self
                .http
                .request(call.method.clone(), call.url.clone())
                .headers(headers.clone())
                .header(ACCEPT, "application/json, text/plain;q=0.9")
                .timeout(call.timeout);
            match &call.body {
                Some(Body::Json(body)) => request = request.json(body),
                Some(Body::Raw { content_type, data }) => {
                    request = request
                        .header(CONTENT_TYPE, content_type.as_str())
                        .body(data.clone());
                }
                None => {}
            }
            tracing::debug!(action = %call.action, url = %call.url, attempt, "daytona request");

            let outcome = match request.send().await {
                Ok(response) => read_answer(response, &call).await,
                Err(e) => Err(e),
            };

            let failure = match outcome {
                Ok(Ok(answer)) => return Ok(answer),
                Ok(Err(failure)) => failure,
                Err(e) => Failure::from_reqwest(&e),
            };

            match self.decide(&failure, &call, attempt, last) {
                Decision::Retry(wait) => {
                    tracing::warn!(
                        action = %call.action,
                        url = %call.url,
                        attempt,
                        wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                        "daytona call failed ({}); retrying",
                        failure.summary(),
                    );
                    tokio::time::sleep(wait).await;
                }
                Decision::Fail => return Err(self.to_error(failure, &call, attempt)),
            }
        }
    }

    fn decide(&self, failure: &Failure, call: &Call, attempt: u32, last: bool) -> Decision {
        if last {
            return Decision::Fail;
        }
        let backoff = self.retry.backoff(attempt);
        match failure {
            Failure::Status {
                status,
                retry_after,
                ..
            } => {
                let code = status.as_u16();
                if code == 429 {
                    match retry_after {
                        Some(wait) if *wait > self.retry.max_retry_after => Decision::Fail,
                        Some(wait) => Decision::Retry(*wait + retry_after_jitter(*wait)),
                        None => Decision::Retry(backoff),
                    }
                } else if status.is_server_error() {
                    let retryable = match call.idempotency {
                        Idempotency::Retryable => true,
                        Idempotency::RunsCommand => matches!(code, 502 | 503),
                    };
                    if !retryable {
                        return Decision::Fail;
                    }
                    match retry_after {
                        Some(wait) if *wait <= self.retry.max_retry_after => {
                            Decision::Retry((*wait).max(backoff))
                        }
                        _ => Decision::Retry(backoff),
                    }
                } else {
                    Decision::Fail
                }
            }
            Failure::Connect(_) => Decision::Retry(backoff),
            Failure::Timeout | Failure::Other(_) => match call.idempotency {
                Idempotency::Retryable => Decision::Retry(backoff),
                Idempotency::RunsCommand => Decision::Fail,
            },
        }
    }

    fn to_error(&self, failure: Failure, call: &Call, attempts: u32) -> Error {
        match failure {
            Failure::Status {
                status,
                body,
                retry_after,
            } => {
                let (message, code) = parse_error_body(&body, status);
                Error::Api {
                    action: call.action.clone(),
                    status: status.as_u16(),
                    message: self.scrub(&message),
                    code: code.map(|c| self.scrub(&c)),
                    retry_after,
                    attempts,
                }
            }
            Failure::Timeout => Error::Timeout {
                action: call.action.clone(),
                url: call.url.to_string(),
                timeout: call.timeout,
                attempts,
            },
            Failure::Connect(detail) | Failure::Other(detail) => Error::Transport {
                action: call.action.clone(),
                url: call.url.to_string(),
                detail: self.scrub(&detail),
                attempts,
            },
        }
    }
}

enum Decision {
    Retry(Duration),
    Fail,
}

/// Why one request did not produce a 2xx answer.
enum Failure {
    Status {
        status: StatusCode,
        body: Vec<u8>,
        retry_after: Option<Duration>,
    },
    /// The connection could not be made: the request was never sent.
    Connect(String),
    Timeout,
    Other(String),
}

impl Failure {
    fn from_reqwest(e: &reqwest::Error) -> Self {
        if e.is_timeout() {
            Failure::Timeout
        } else if e.is_connect() {
            Failure::Connect(error_chain(e))
        } else {
            Failure::Other(error_chain(e))
        }
    }

    fn summary(&self) -> String {
        match self {
            Failure::Status { status, .. } => status.to_string(),
            Failure::Connect(_) => "connection failed".into(),
            Failure::Timeout => "timed out".into(),
            Failure::Other(_) => "transport error".into(),
        }
    }
}

async fn read_answer(
    response: reqwest::Response,
    call: &Call,
) -> std::result::Result<std::result::Result<Answer, Failure>, reqwest::Error> {
    let status = response.status();
    let retry_after = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after);
    let content_type = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = response.bytes().await?.to_vec();
    if status.is_success() {
        Ok(Ok(Answer {
            content_type,
            body,
            action: call.action.clone(),
        }))
    } else {
        Ok(Err(Failure::Status {
            status,
            body,
            retry_after,
        }))
    }
}

/// Up to a tenth of the wait (at most 1 s) on top of `Retry-After`, never less than asked, so
/// clients told the same moment do not all come back at once.
fn retry_after_jitter(wait: Duration) -> Duration {
    let max_ms = u64::try_from((wait / 10).min(Duration::from_secs(1)).as_millis()).unwrap_or(0);
    Duration::from_millis(fastrand::u64(0..=max_ms))
}

/// `Retry-After` is either delay-seconds or an HTTP-date.
pub(crate) fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    if let Ok(secs) = value.parse::<f64>()
        && secs.is_finite()
        && secs >= 0.0
    {
        return Some(Duration::from_secs_f64(secs));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(
        when.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// Daytona's error bodies: the API (NestJS) sends `{statusCode, message, error}` where `message`
/// may be a list of validation messages; the toolbox sends `{statusCode, message, code, ...}`.
/// Anything else is quoted.
pub(crate) fn parse_error_body(body: &[u8], status: StatusCode) -> (String, Option<String>) {
    if let Ok(serde_json::Value::Object(map)) = serde_json::from_slice::<serde_json::Value>(body) {
        let message = match map.get("message") {
            Some(serde_json::Value::String(s)) if !s.is_empty() => Some(s.clone()),
            Some(serde_json::Value::Array(items)) if !items.is_empty() => Some(
                items
                    .iter()
                    .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_owned))
                    .collect::<Vec<_>>()
                    .join("; "),
            ),
            _ => None,
        };
        let code = ["code", "error"]
            .iter()
            .find_map(|k| map.get(*k).and_then(|v| v.as_str()).map(str::to_owned));
        if let Some(message) = message {
            return (message, code);
        }
        if let Some(code) = code {
            return (code.clone(), Some(code));
        }
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        let reason = status.canonical_reason().unwrap_or("no reason given");
        return (format!("{reason} (empty body)"), None);
    }
    (snippet(body), None)
}

/// The start of a body, for messages.
pub(crate) fn snippet(body: &[u8]) -> String {
    const MAX: usize = 300;
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.chars().count() > MAX {
        let cut: String = text.chars().take(MAX).collect();
        format!("{cut}…")
    } else {
        text.to_owned()
    }
}

pub(crate) fn scrub(text: &str, key: &str) -> String {
    if key.len() < 4 {
        return text.to_owned();
    }
    text.replace(key, "<redacted>")
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let msg = s.to_string();
        if !out.contains(&msg) {
            out.push_str(": ");
            out.push_str(&msg);
        }
        source = s.source();
    }
    out
}

/// TLS with the ring provider chosen explicitly, so the client works whatever rustls features
/// other crates in the build turn on, and Mozilla's roots so no system store is needed.
fn tls_config() -> Result<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::InvalidConfig(format!("could not set up TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_seconds_and_dates() {
        assert_eq!(parse_retry_after("3"), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after(" 0 "), Some(Duration::ZERO));
        let future = SystemTime::now() + Duration::from_secs(120);
        let parsed = parse_retry_after(&httpdate::fmt_http_date(future)).unwrap();
        assert!(parsed > Duration::from_secs(100) && parsed <= Duration::from_secs(120));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn error_bodies_of_api_and_toolbox() {
        let (m, c) = parse_error_body(
            br#"{"statusCode":400,"message":["cpu must be an integer","memory must be positive"],"error":"Bad Request"}"#,
            StatusCode::BAD_REQUEST,
        );
        assert_eq!(m, "cpu must be an integer; memory must be positive");
        assert_eq!(c.as_deref(), Some("Bad Request"));
        let (m, c) = parse_error_body(
            br#"{"statusCode":404,"message":"session not found","code":"NOT_FOUND"}"#,
            StatusCode::NOT_FOUND,
        );
        assert_eq!(m, "session not found");
        assert_eq!(c.as_deref(), Some("NOT_FOUND"));
        let (m, _) = parse_error_body(b"<html>bad gateway</html>", StatusCode::BAD_GATEWAY);
        assert_eq!(m, "<html>bad gateway</html>");
        let (m, _) = parse_error_body(b"", StatusCode::BAD_GATEWAY);
        assert_eq!(m, "Bad Gateway (empty body)");
    }

    #[test]
    fn backoff_grows_is_capped_and_jittered_within_bounds() {
        let policy = RetryPolicy {
            max_attempts: 10,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(1000),
            max_retry_after: Duration::from_secs(60),
        };
        for _ in 0..50 {
            let first = policy.backoff(1);
            assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
            let third = policy.backoff(3);
            assert!(third >= Duration::from_millis(200) && third <= Duration::from_millis(400));
            let capped = policy.backoff(9);
            assert!(capped >= Duration::from_millis(500) && capped <= Duration::from_millis(1000));
        }
    }

    #[test]
    fn scrub_removes_the_key() {
        assert_eq!(
            scrub("token dtn_secret123 rejected", "dtn_secret123"),
            "token <redacted> rejected"
        );
    }
}
