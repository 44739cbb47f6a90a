//! `stigmer codec-server`: Temporal's remote codec protocol over the payload codec, so the
//! `temporal` CLI (`--codec-endpoint URL --codec-auth TOKEN`) and the Web UI show readable
//! payloads, and a tool without the key can have an input encoded.
//!
//! - `POST /encode` and `POST /decode`, also under `/{namespace}/…`. The body is the proto3 JSON
//!   of `Payloads`: `{"payloads": [{"metadata": {KEY: BASE64}, "data": BASE64}]}`.
//! - Every request but a CORS preflight needs `Authorization` equal to the codec token
//!   ([`codec_auth`]): `/encode` hands out inputs the workers will run, so the token is as secret
//!   as the key. Without it: 401.
//! - CORS: a preflight is answered for any origin, echoing it, with the headers the Web UI sends.

use crate::codec::{Codec, Keyring};
use anyhow::{Context, Result};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use temporalio_common::protos::temporal::api::common::v1::Payload;
use tokio::net::TcpListener;

/// The largest request body accepted (Temporal's own blob limit is 2 MB per payload).
const MAX_BODY: usize = 8 * 1024 * 1024;

fn derive(keys: &Keyring, label: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, keys.newest().secret());
    hex::encode(ring::hmac::sign(&key, label).as_ref())
}

/// The token clients of the codec server send as `Authorization`, for `/encode` and `/decode`:
/// derived from the newest key (HMAC-SHA256 of a fixed label), so it changes when the key
/// rotates and says nothing about the key.
#[must_use]
pub fn codec_auth(keys: &Keyring) -> String {
    format!(
        "Bearer {}",
        derive(keys, b"stigmer codec-server authorization v1")
    )
}

/// The token of the Web UI's login link (`/login?token=…`), which sets a cookie good for
/// `/decode` only: the Web UI cannot send a static header, and a link that leaks can read
/// payloads but never have an input encoded.
#[must_use]
pub fn decode_token(keys: &Keyring) -> String {
    derive(keys, b"stigmer codec-server decode-only v1")
}

/// The cookie the login link sets.
const COOKIE: &str = "stigmer_codec_decode";

/// One payload in proto3 JSON.
#[derive(Serialize, Deserialize, Default)]
struct JsonPayload {
    #[serde(default)]
    metadata: BTreeMap<String, String>,
    #[serde(default)]
    data: String,
}

#[derive(Serialize, Deserialize, Default)]
struct JsonPayloads {
    #[serde(default)]
    payloads: Vec<JsonPayload>,
}

impl JsonPayload {
    fn into_payload(self) -> Result<Payload, String> {
        let b64 = |what: &str, v: &str| {
            BASE64
                .decode(v)
                .map_err(|_| format!("{what} is not base64"))
        };
        let mut metadata = std::collections::HashMap::new();
        for (k, v) in self.metadata {
            let value = b64(&format!("metadata {k:?}"), &v)?;
            metadata.insert(k, value);
        }
        Ok(Payload {
            metadata,
            data: b64("data", &self.data)?,
            ..Default::default()
        })
    }

    fn from_payload(p: Payload) -> Self {
        Self {
            metadata: p
                .metadata
                .into_iter()
                .map(|(k, v)| (k, BASE64.encode(v)))
                .collect(),
            data: BASE64.encode(p.data),
        }
    }
}

struct State {
    codec: Codec,
    auth: String,
    decode_token: String,
}

/// Binds `addr` and serves until the process ends.
pub async fn serve(keys: Keyring, addr: SocketAddr) -> Result<()> {
    let listener = TcpListener::bind(addr).await.with_context(|| {
        format!("could not listen on {addr}: is another process using the port? Pick another with --addr")
    })?;
    let bound = listener.local_addr()?;
    let state = Arc::new(State {
        auth: codec_auth(&keys),
        decode_token: decode_token(&keys),
        codec: Codec::new(keys),
    });
    eprintln!(
        "stigmer: codec server on http://{bound}\n  the temporal CLI: --codec-endpoint \
         http://{bound} --codec-auth \"$(stigmer codec key --output json | jq -r .codec_auth)\"\n  \
         the Web UI (decode only): open http://{bound}/login?token=$(stigmer codec key --output \
         json | jq -r .decode_token) once, then set the UI's codec endpoint to http://{bound} \
         with cross-origin credentials on"
    );
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!("codec server: accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| respond(req, state.clone()));
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!("codec server: connection ended: {e}");
            }
        });
    }
}

/// Compares in time independent of where the first difference is.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn respond(
    req: Request<Incoming>,
    state: Arc<State>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let origin = req.headers().get(header::ORIGIN).cloned();
    let reply = |status: StatusCode, content_type: &str, body: Vec<u8>| {
        let mut response = Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, content_type);
        if let Some(origin) = &origin {
            response = response
                .header(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone())
                .header(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, "true")
                .header(header::VARY, "Origin");
        }
        response
            .body(Full::new(Bytes::from(body)))
            .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
    };
    let text = |status: StatusCode, body: &str| {
        reply(status, "text/plain", format!("{body}\n").into_bytes())
    };

    let path = req.uri().path().trim_end_matches('/').to_string();
    if path == "/login" && req.method() == Method::GET {
        let given = req
            .uri()
            .query()
            .unwrap_or_default()
            .split('&')
            .find_map(|kv| kv.strip_prefix("token="))
            .unwrap_or_default();
        if !same(given.as_bytes(), state.decode_token.as_bytes()) {
            return Ok(text(
                StatusCode::UNAUTHORIZED,
                "the login link needs ?token= with the decode token (`stigmer codec key --output \
                 json` prints it as decode_token)",
            ));
        }
        let mut response = text(
            StatusCode::OK,
            "signed in: this browser may now decode payloads here (not encode). Close this tab.",
        );
        if let Ok(cookie) = header::HeaderValue::from_str(&format!(
            "{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict; Max-Age=43200",
            state.decode_token
        )) {
            response.headers_mut().insert(header::SET_COOKIE, cookie);
        }
        return Ok(response);
    }
    let op = match path.rsplit_once('/') {
        Some((_, "encode")) => "encode",
        Some((_, "decode")) => "decode",
        _ => {
            return Ok(text(
                StatusCode::NOT_FOUND,
                "the codec server answers POST /encode and POST /decode (also under /NAMESPACE/)",
            ));
        }
    };
    if req.method() == Method::OPTIONS {
        let mut response = reply(StatusCode::OK, "text/plain", Vec::new());
        let headers = response.headers_mut();
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            header::HeaderValue::from_static("POST, OPTIONS"),
        );
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            header::HeaderValue::from_static("authorization, content-type, x-namespace"),
        );
        return Ok(response);
    }
    if req.method() != Method::POST {
        return Ok(text(
            StatusCode::METHOD_NOT_ALLOWED,
            &format!("use POST /{op}"),
        ));
    }
    let by_header = req
        .headers()
        .get(header::AUTHORIZATION)
        .is_some_and(|v| same(v.as_bytes(), state.auth.as_bytes()));
    let by_cookie = op == "decode"
        && req
            .headers()
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|c| c.trim().strip_prefix(COOKIE)?.strip_prefix('='))
            .any(|v| same(v.as_bytes(), state.decode_token.as_bytes()));
    let authorized = by_header || by_cookie;
    if !authorized {
        return Ok(text(
            StatusCode::UNAUTHORIZED,
            "send the codec token as Authorization (`stigmer codec key --output json` prints it \
             as codec_auth)",
        ));
    }
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => {
            return Ok(text(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("the body is over {MAX_BODY} bytes or was cut off"),
            ));
        }
    };
    let parsed: Result<Vec<Payload>, String> = serde_json::from_slice::<JsonPayloads>(&body)
        .map_err(|e| {
            format!(
                "the body is not the proto3 JSON of Payloads ({{\"payloads\": [{{\"metadata\": \
                 {{…}}, \"data\": BASE64}}]}}): line {}, column {}",
                e.line(),
                e.column()
            )
        })
        .and_then(|p| {
            p.payloads
                .into_iter()
                .map(JsonPayload::into_payload)
                .collect()
        });
    let payloads = match parsed {
        Ok(payloads) => payloads,
        Err(why) => return Ok(text(StatusCode::BAD_REQUEST, &why)),
    };
    let coded: Result<Vec<Payload>, String> = if op == "encode" {
        payloads
            .into_iter()
            .map(|p| state.codec.encrypt(p).map_err(|e| e.to_string()))
            .collect()
    } else {
        Ok(payloads
            .into_iter()
            .map(|p| state.codec.decrypt(p))
            .collect())
    };
    match coded {
        Ok(payloads) => {
            let out = JsonPayloads {
                payloads: payloads
                    .into_iter()
                    .map(JsonPayload::from_payload)
                    .collect(),
            };
            Ok(reply(
                StatusCode::OK,
                "application/json",
                serde_json::to_vec(&out).unwrap_or_default(),
            ))
        }
        Err(why) => Ok(text(StatusCode::INTERNAL_SERVER_ERROR, &why)),
    }
}
