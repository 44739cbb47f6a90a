//! The sandbox side of the API: create, get, wait until started, list by labels, delete.
//!
//! [`Client`] is cheap to clone (one connection pool behind an `Arc`) and is what stigmer's
//! Daytona backend holds. Commands run through a sandbox's [`Toolbox`], obtained from
//! [`Client::toolbox`] (by id, as an activity on another worker would) or [`Client::toolbox_for`]
//! (from a sandbox just fetched).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::Method;
use url::Url;

use crate::config::{Config, ToolboxAddressing};
use crate::error::{Error, Result};
use crate::http::{Call, Idempotency, Transport};
use crate::model::{CreateSandbox, Sandbox, SandboxListBody, SandboxState, ToolboxProxyUrlBody};
use crate::toolbox::Toolbox;

/// How [`Client::wait_until_started`] polls.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WaitOptions {
    /// Give up after this long.
    pub timeout: Duration,
    /// First pause between polls; grows by half each poll.
    pub initial_interval: Duration,
    /// Longest pause between polls.
    pub max_interval: Duration,
}

impl Default for WaitOptions {
    fn default() -> Self {
        WaitOptions {
            timeout: Duration::from_secs(180),
            initial_interval: Duration::from_millis(250),
            max_interval: Duration::from_secs(5),
        }
    }
}

impl WaitOptions {
    /// Default intervals with this overall deadline.
    #[must_use]
    pub fn with_timeout(timeout: Duration) -> Self {
        WaitOptions {
            timeout,
            ..WaitOptions::default()
        }
    }
}

/// A Daytona API client.
///
/// ```no_run
/// # async fn demo() -> stigmer_daytona::Result<()> {
/// use std::time::Duration;
/// use stigmer_daytona::{Client, Config, CreateSandbox, ExecuteCommand, WaitOptions};
///
/// let client = Client::new(Config::from_env()?)?;
/// let sandbox = client
///     .create_sandbox(CreateSandbox::default().label("stigmer.dev/run", "42"))
///     .await?;
/// let sandbox = client.wait_until_started(&sandbox.id, &WaitOptions::default()).await?;
/// let out = client
///     .toolbox_for(&sandbox)?
///     .execute(&ExecuteCommand::new("uname -a", Duration::from_secs(30)))
///     .await?;
/// println!("{} -> {}", out.result, out.exit_code);
/// client.delete_sandbox(&sandbox.id).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub config: Config,
    pub transport: Transport,
    /// Toolbox bases already resolved, so an id-only caller asks the API once per sandbox.
    toolbox_bases: Mutex<HashMap<String, Url>>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client for `config`.
    ///
    /// # Errors
    /// [`Error::MissingApiKey`] for an empty key, [`Error::InvalidConfig`] for unusable settings.
    pub fn new(config: Config) -> Result<Self> {
        config.validate()?;
        let transport = Transport::new(&config)?;
        Ok(Client {
            inner: Arc::new(Inner {
                config,
                transport,
                toolbox_bases: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The configuration in use.
    #[must_use]
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    pub(crate) fn api_endpoint(&self, segments: &[&str]) -> Result<Url> {
        endpoint(&self.inner.config.api_url, segments)
    }

    pub(crate) async fn call(
        &self,
        action: String,
        method: Method,
        url: Url,
        body: Option<serde_json::Value>,
        idempotency: Idempotency,
    ) -> Result<crate::http::Answer> {
        self.inner
            .transport
            .send(Call {
                action,
                method,
                url,
                body: body.map(crate::http::Body::Json),
                timeout: self.inner.config.call_timeout,
                idempotency,
                toolbox: false,
            })
            .await
    }

    /// Creates a sandbox (`POST /sandbox`). The request's snapshot and target default to the
    /// configured ones. The answer usually shows it `creating` or `starting`; see
    /// [`Client::wait_until_started`].
    ///
    /// A create that fails with a 5xx is retried, and Daytona has no idempotency key: a retry
    /// after a create that did happen leaves a second sandbox. Label sandboxes so such a
    /// duplicate can be found with [`Client::list_sandboxes`] and deleted.
    ///
    /// # Errors
    /// [`Error::Api`] with Daytona's message (quota, unknown snapshot, ...) and transport errors.
    pub async fn create_sandbox(&self, request: CreateSandbox) -> Result<Sandbox> {
        let mut request = request;
        if request.snapshot.is_none() {
            request.snapshot.clone_from(&self.inner.config.snapshot);
        }
        if request.target.is_none() {
            request.target.clone_from(&self.inner.config.target);
        }
        let action = match &request.snapshot {
            Some(s) => format!("create sandbox from snapshot `{s}`"),
            None => "create sandbox from the default snapshot".to_owned(),
        };
        let body =
            serde_json::to_value(&request).map_err(|e| Error::InvalidConfig(e.to_string()))?;
        let answer = self
            .call(
                action,
                Method::POST,
                self.api_endpoint(&["sandbox"])?,
                Some(body),
                Idempotency::Retryable,
            )
            .await?;
        let sandbox: Sandbox = answer.json()?;
        self.remember_toolbox(&sandbox);
        Ok(sandbox)
    }

    /// Gets a sandbox by id or name (`GET /sandbox/{id}`).
    ///
    /// # Errors
    /// [`Error::Api`] with status 404 when there is no such sandbox ([`Error::is_not_found`]).
    pub async fn get_sandbox(&self, id: &str) -> Result<Sandbox> {
        let answer = self
            .call(
                format!("get sandbox `{id}`"),
                Method::GET,
                self.api_endpoint(&["sandbox", id])?,
                None,
                Idempotency::Retryable,
            )
            .await?;
        let sandbox: Sandbox = answer.json()?;
        self.remember_toolbox(&sandbox);
        Ok(sandbox)
    }

    /// Polls the sandbox, with growing pauses, until it is `started`, and returns it.
    ///
    /// # Errors
    /// - [`Error::SandboxFailed`] when it reaches `error` or `build_failed` (with `errorReason`);
    /// - [`Error::UnexpectedState`] when it reaches a state it will not leave by itself
    ///   (`stopped`, `archived`, `destroyed`, ... with no `started` desired state);
    /// - [`Error::StartTimeout`] naming the sandbox and its last state when `options.timeout`
    ///   passes first;
    /// - any error of [`Client::get_sandbox`] (after its own retries).
    pub async fn wait_until_started(&self, id: &str, options: &WaitOptions) -> Result<Sandbox> {
        let started_at = Instant::now();
        let deadline = started_at + options.timeout;
        let mut interval = options.initial_interval;
        let mut last_state = String::from("unknown");
        loop {
            let sandbox = match tokio::time::timeout_at(deadline.into(), self.get_sandbox(id)).await
            {
                Ok(result) => result?,
                Err(_) => {
                    return Err(Error::StartTimeout {
                        sandbox_id: id.to_owned(),
                        last_state,
                        waited: started_at.elapsed(),
                    });
                }
            };
            let state = sandbox.state_or_unknown();
            if state.as_str() != last_state {
                tracing::debug!(sandbox = id, state = %state, "sandbox state");
            }
            last_state = state.to_string();
            match &state {
                SandboxState::Started => return Ok(sandbox),
                s if s.is_failure() => {
                    return Err(Error::SandboxFailed {
                        sandbox_id: sandbox.id.clone(),
                        state: state.to_string(),
                        reason: sandbox
                            .error_reason
                            .clone()
                            .filter(|r| !r.trim().is_empty())
                            .unwrap_or_else(|| "Daytona gave no errorReason".to_owned()),
                        recoverable: sandbox.recoverable,
                    });
                }
                s if s.is_on_the_way_to_started() => {}
                SandboxState::Other(name) => {
                    // A state newer than this client: keep waiting, the deadline bounds it, and
                    // the timeout error will name it.
                    tracing::warn!(sandbox = id, state = %name, "sandbox in a state this client does not know; still waiting for `started`");
                }
                _ if sandbox.desired_state.as_deref() == Some("started") => {}
                _ => {
                    return Err(Error::UnexpectedState {
                        sandbox_id: sandbox.id.clone(),
                        state: state.to_string(),
                    });
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::StartTimeout {
                    sandbox_id: id.to_owned(),
                    last_state,
                    waited: started_at.elapsed(),
                });
            }
            tokio::time::sleep(interval.min(deadline - now)).await;
            interval = interval.mul_f64(1.5).min(options.max_interval);
        }
    }

    /// Deletes a sandbox (`DELETE /sandbox/{id}`). Returns `false` when it was already gone
    /// (404), so cleanup can be repeated safely.
    ///
    /// # Errors
    /// Any other error answer or transport error.
    pub async fn delete_sandbox(&self, id: &str) -> Result<bool> {
        let result = self
            .call(
                format!("delete sandbox `{id}`"),
                Method::DELETE,
                self.api_endpoint(&["sandbox", id])?,
                None,
                Idempotency::Retryable,
            )
            .await;
        self.forget_toolbox(id);
        match result {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Lists the sandboxes carrying all of `labels` (`GET /sandbox?labels=...`), following the
    /// pagination cursor. Daytona documents this listing as eventually consistent: a sandbox
    /// created a moment ago may be missing.
    ///
    /// # Errors
    /// Error answers and transport errors.
    pub async fn list_sandboxes(&self, labels: &BTreeMap<String, String>) -> Result<Vec<Sandbox>> {
        let labels_json =
            serde_json::to_string(labels).map_err(|e| Error::InvalidConfig(e.to_string()))?;
        let mut all = Vec::new();
        let mut cursor: Option<String> = None;
        // A server that keeps handing out cursors must not keep us here forever.
        for _page in 0..1000 {
            let mut url = self.api_endpoint(&["sandbox"])?;
            {
                let mut query = url.query_pairs_mut();
                if !labels.is_empty() {
                    query.append_pair("labels", &labels_json);
                }
                query.append_pair("limit", "100");
                if let Some(c) = &cursor {
                    query.append_pair("cursor", c);
                }
            }
            let answer = self
                .call(
                    format!("list sandboxes labelled {labels_json}"),
                    Method::GET,
                    url,
                    None,
                    Idempotency::Retryable,
                )
                .await?;
            match answer.json::<SandboxListBody>()? {
                SandboxListBody::Bare(items) => {
                    // Older API: no pagination, and possibly no server-side label filter.
                    all.extend(items.into_iter().filter(|s| has_labels(s, labels)));
                    return Ok(all);
                }
                SandboxListBody::Page { items, next_cursor } => {
                    all.extend(items.into_iter().filter(|s| has_labels(s, labels)));
                    match next_cursor.filter(|c| !c.is_empty()) {
                        Some(next) if Some(&next) != cursor.as_ref() => cursor = Some(next),
                        _ => return Ok(all),
                    }
                }
            }
        }
        Ok(all)
    }

    /// The toolbox of a sandbox known by id. Asks the API for the toolbox URL (once per sandbox)
    /// unless addressing is [`ToolboxAddressing::Fixed`] or [`ToolboxAddressing::ApiDeprecated`].
    ///
    /// # Errors
    /// Errors of `GET /sandbox/{id}/toolbox-proxy-url`.
    pub async fn toolbox(&self, sandbox_id: &str) -> Result<Toolbox> {
        if let Some(base) = self.cached_toolbox(sandbox_id) {
            return Ok(Toolbox::new(self.clone(), sandbox_id, base));
        }
        let base = match &self.inner.config.toolbox {
            ToolboxAddressing::ProxyFromSandbox => {
                let answer = self
                    .call(
                        format!("get the toolbox URL of sandbox `{sandbox_id}`"),
                        Method::GET,
                        self.api_endpoint(&["sandbox", sandbox_id, "toolbox-proxy-url"])?,
                        None,
                        Idempotency::Retryable,
                    )
                    .await?;
                let body: ToolboxProxyUrlBody = answer.json()?;
                toolbox_base_from_proxy(&body.url, sandbox_id)?
            }
            other => self.static_toolbox_base(other, sandbox_id)?,
        };
        self.cache_toolbox(sandbox_id, base.clone());
        Ok(Toolbox::new(self.clone(), sandbox_id, base))
    }

    /// The toolbox of a sandbox at hand, using its `toolboxProxyUrl`.
    ///
    /// # Errors
    /// [`Error::UnexpectedResponse`] when the sandbox carries no usable `toolboxProxyUrl` (use
    /// [`Client::toolbox`], which asks the API for it).
    pub fn toolbox_for(&self, sandbox: &Sandbox) -> Result<Toolbox> {
        let base = match &self.inner.config.toolbox {
            ToolboxAddressing::ProxyFromSandbox => {
                let proxy = sandbox
                    .toolbox_proxy_url
                    .as_deref()
                    .filter(|u| !u.trim().is_empty())
                    .ok_or_else(|| Error::UnexpectedResponse {
                        action: format!("find the toolbox of sandbox `{}`", sandbox.id),
                        detail: "the sandbox has no toolboxProxyUrl".into(),
                    })?;
                toolbox_base_from_proxy(proxy, &sandbox.id)?
            }
            other => self.static_toolbox_base(other, &sandbox.id)?,
        };
        self.cache_toolbox(&sandbox.id, base.clone());
        Ok(Toolbox::new(self.clone(), &sandbox.id, base))
    }

    fn static_toolbox_base(&self, addressing: &ToolboxAddressing, sandbox_id: &str) -> Result<Url> {
        match addressing {
            ToolboxAddressing::Fixed(base) => endpoint(base, &[sandbox_id]),
            ToolboxAddressing::ApiDeprecated => {
                self.api_endpoint(&["toolbox", sandbox_id, "toolbox"])
            }
            ToolboxAddressing::ProxyFromSandbox => Err(Error::Unsupported(
                "the toolbox URL must come from the sandbox".into(),
            )),
        }
    }

    fn remember_toolbox(&self, sandbox: &Sandbox) {
        if self.inner.config.toolbox != ToolboxAddressing::ProxyFromSandbox {
            return;
        }
        if let Some(proxy) = sandbox.toolbox_proxy_url.as_deref()
            && let Ok(base) = toolbox_base_from_proxy(proxy, &sandbox.id)
        {
            self.cache_toolbox(&sandbox.id, base);
        }
    }

    fn cached_toolbox(&self, id: &str) -> Option<Url> {
        self.inner
            .toolbox_bases
            .lock()
            .ok()
            .and_then(|m| m.get(id).cloned())
    }

    fn cache_toolbox(&self, id: &str, base: Url) {
        if let Ok(mut m) = self.inner.toolbox_bases.lock() {
            m.insert(id.to_owned(), base);
        }
    }

    fn forget_toolbox(&self, id: &str) {
        if let Ok(mut m) = self.inner.toolbox_bases.lock() {
            m.remove(id);
        }
    }
}

fn has_labels(sandbox: &Sandbox, labels: &BTreeMap<String, String>) -> bool {
    labels
        .iter()
        .all(|(k, v)| sandbox.labels.get(k).is_some_and(|have| have == v))
}

fn toolbox_base_from_proxy(proxy: &str, sandbox_id: &str) -> Result<Url> {
    let base = Url::parse(proxy.trim()).map_err(|e| Error::UnexpectedResponse {
        action: format!("find the toolbox of sandbox `{sandbox_id}`"),
        detail: format!("toolboxProxyUrl `{proxy}` is not a URL: {e}"),
    })?;
    endpoint(&base, &[sandbox_id])
}

/// `base` with path segments appended (each percent-encoded), keeping the base's own path.
pub(crate) fn endpoint(base: &Url, segments: &[&str]) -> Result<Url> {
    let mut url = base.clone();
    url.set_query(None);
    url.set_fragment(None);
    {
        let mut path = url
            .path_segments_mut()
            .map_err(|()| Error::InvalidConfig(format!("`{base}` cannot be a base URL")))?;
        path.pop_if_empty();
        path.extend(segments);
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_keep_the_base_path_and_encode_segments() {
        let base = Url::parse("https://app.daytona.io/api").unwrap();
        assert_eq!(
            endpoint(&base, &["sandbox", "a b/c"]).unwrap().as_str(),
            "https://app.daytona.io/api/sandbox/a%20b%2Fc"
        );
        let base = Url::parse("https://proxy.app.daytona.io/toolbox/").unwrap();
        assert_eq!(
            endpoint(&base, &["sb1", "process", "execute"])
                .unwrap()
                .as_str(),
            "https://proxy.app.daytona.io/toolbox/sb1/process/execute"
        );
    }
}
