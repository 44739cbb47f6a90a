//! The `/metrics` endpoint of the daemon and of `stigmer worker` (`--metrics-addr`,
//! `STIGMER_METRICS_ADDR`): Prometheus text format over plain HTTP/1.1, served by hyper.
//!
//! The counters live in `stigmer_activities::metrics`, where the events happen; this module
//! only listens, refreshes the lease gauge from the store on each scrape (so it is right however
//! many workers share the store), and renders.

use crate::config::Config;
use anyhow::{Context, Result};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;
use stigmer_activities::metrics::{CONTENT_TYPE, metrics};
use stigmer_activities::store::Store;
use tokio::net::TcpListener;

/// How long a scrape waits for the store before serving the last lease counts.
const STORE_TIMEOUT: Duration = Duration::from_secs(5);

/// The metrics listener, bound before the worker starts so a taken port fails the start.
pub struct MetricsServer {
    listener: Option<TcpListener>,
}

impl MetricsServer {
    /// Binds `metrics_addr` if it is set; a listener that cannot be bound is an error naming the
    /// setting, where it came from, and what to do.
    pub async fn bind(cfg: &Config) -> Result<Self> {
        let Some(addr) = cfg.metrics_addr.value else {
            return Ok(Self { listener: None });
        };
        let listener = TcpListener::bind(addr).await.with_context(|| {
            format!(
                "could not serve metrics on {addr} (metrics_addr from {}): is another process \
                 using the port? Pick another with --metrics-addr or STIGMER_METRICS_ADDR",
                cfg.metrics_addr.source
            )
        })?;
        eprintln!("stigmer: Prometheus metrics on http://{addr}/metrics");
        Ok(Self {
            listener: Some(listener),
        })
    }

    /// The bound address, if serving.
    #[must_use]
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Serves until the process ends (never returns when metrics are off).
    pub async fn serve(self, store: Store) {
        let Some(listener) = self.listener else {
            return std::future::pending().await;
        };
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!("metrics: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let store = store.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| respond(req, store.clone()));
                if let Err(e) = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await
                {
                    tracing::debug!("metrics: connection ended: {e}");
                }
            });
        }
    }
}

async fn respond(
    req: Request<Incoming>,
    store: Store,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let reply = |status: StatusCode, content_type: &str, body: String| {
        Response::builder()
            .status(status)
            .header(hyper::header::CONTENT_TYPE, content_type)
            .body(Full::new(Bytes::from(body)))
            .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
    };
    if req.uri().path() != "/metrics" {
        return Ok(reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "stigmer serves Prometheus metrics at /metrics\n".into(),
        ));
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Ok(reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "use GET /metrics\n".into(),
        ));
    }
    // The gauge reflects the store, shared by every worker; a slow store must not hang the
    // scrape, so it then shows the last counts read.
    match tokio::time::timeout(STORE_TIMEOUT, store.count_leases_by_state()).await {
        Ok(Ok(counts)) => metrics().set_leases(&counts),
        Ok(Err(e)) => tracing::warn!("metrics: could not count leases: {e}"),
        Err(_) => tracing::warn!("metrics: counting leases took over {STORE_TIMEOUT:?}"),
    }
    Ok(reply(StatusCode::OK, CONTENT_TYPE, metrics().render()))
}
