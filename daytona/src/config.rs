//! Configuration: where Daytona is, how to authenticate, and how patient to be.
//!
//! Read from the environment by [`Config::from_env`] (stigmer's cloud mode) or built in code
//! (tests point it at the fake). The API key is held in [`ApiKey`], whose `Debug` never shows it,
//! so a `Config` can be logged or put in a panic message without leaking the key.

use std::fmt;
use std::time::Duration;

use url::Url;

use crate::error::{Error, Result};

/// Daytona's public API, used when `DAYTONA_API_URL` is not set.
pub const DEFAULT_API_URL: &str = "https://app.daytona.io/api";

/// Where a user creates an API key; named in the missing-key error.
pub const API_KEY_PAGE: &str = "https://app.daytona.io/dashboard/keys";

/// A Daytona API key. `Debug` prints `ApiKey(<redacted>)`; there is no `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    /// Wraps a key.
    pub fn new(key: impl Into<String>) -> Self {
        ApiKey(key.into())
    }

    /// The key itself, for the `Authorization` header only.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

/// How the toolbox API (process execute, sessions) of a sandbox is addressed.
///
/// The toolbox is served per sandbox. Daytona's toolbox description says its base URL is the
/// sandbox's `toolboxProxyUrl` plus the sandbox id: `{toolboxProxyUrl}/{sandboxId}/{endpoint}`
/// (`https://proxy.app.daytona.io/toolbox/{sandboxId}` on Daytona Cloud). The main API also
/// still describes `/toolbox/{sandboxId}/toolbox/...` routes, marked deprecated.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum ToolboxAddressing {
    /// `{toolboxProxyUrl}/{sandboxId}`, the proxy URL taken from the sandbox (or asked for with
    /// `GET /sandbox/{id}/toolbox-proxy-url`). The default, as Daytona's SDKs do.
    #[default]
    ProxyFromSandbox,
    /// `{base}/{sandboxId}` with a fixed proxy base (`DAYTONA_TOOLBOX_URL`), for self-hosted
    /// Daytona or a proxy the API reports wrongly.
    Fixed(Url),
    /// `{apiUrl}/toolbox/{sandboxId}/toolbox`, the main API's deprecated routes. These do not
    /// accept per-command environment variables.
    ApiDeprecated,
}

/// When and how often a failed call is sent again.
///
/// 429 answers wait for `Retry-After` when Daytona sends one; 5xx answers and connection errors
/// wait an exponential backoff with jitter. Other 4xx answers are never retried. Calls that run
/// a command are retried only when the command cannot have started (see `http::Idempotency`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Requests sent at most, the first included (1 = no retry).
    pub max_attempts: u32,
    /// Backoff before the second request; doubles each time.
    pub initial_backoff: Duration,
    /// Ceiling of the backoff.
    pub max_backoff: Duration,
    /// A `Retry-After` longer than this is not waited for: the 429 is returned as an error.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 4,
            initial_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(8),
            max_retry_after: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// One request per call, never retried.
    #[must_use]
    pub fn none() -> Self {
        RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        }
    }

    /// The wait before request number `attempt + 1` (attempt counts from 1): exponential, capped,
    /// with "equal jitter" (half fixed, half random) so callers that failed together do not retry
    /// together, while every wait keeps a floor.
    pub(crate) fn backoff(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(16);
        let full = self
            .initial_backoff
            .saturating_mul(1u32 << exp)
            .min(self.max_backoff);
        let half = full / 2;
        let jitter_ms = u64::try_from(half.as_millis()).unwrap_or(u64::MAX);
        half + Duration::from_millis(fastrand::u64(0..=jitter_ms))
    }
}

/// Everything the client needs to talk to Daytona.
#[derive(Clone)]
pub struct Config {
    /// Base of the main API, e.g. `https://app.daytona.io/api`.
    pub api_url: Url,
    api_key: ApiKey,
    /// Snapshot used when a create request names none (`DAYTONA_DEV_TOOLS_SNAPSHOT_ID`).
    pub snapshot: Option<String>,
    /// Region to create sandboxes in when a create request names none (`DAYTONA_TARGET`).
    pub target: Option<String>,
    /// Timeout of one request. Command execution adds the command's own timeout to it.
    pub call_timeout: Duration,
    /// Timeout for establishing a connection.
    pub connect_timeout: Duration,
    /// Retry behaviour.
    pub retry: RetryPolicy,
    /// How the per-sandbox toolbox API is addressed.
    pub toolbox: ToolboxAddressing,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("api_url", &self.api_url.as_str())
            .field("api_key", &"<redacted>")
            .field("snapshot", &self.snapshot)
            .field("target", &self.target)
            .field("call_timeout", &self.call_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("retry", &self.retry)
            .field("toolbox", &self.toolbox)
            .finish()
    }
}

impl Config {
    /// A configuration for the public Daytona API with this key and default settings.
    pub fn new(api_key: impl Into<String>) -> Self {
        Config {
            api_url: Url::parse(DEFAULT_API_URL).expect("DEFAULT_API_URL is a valid URL"),
            api_key: ApiKey::new(api_key),
            snapshot: None,
            target: None,
            call_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            retry: RetryPolicy::default(),
            toolbox: ToolboxAddressing::default(),
        }
    }

    /// Reads the configuration from the process environment:
    ///
    /// | variable | meaning |
    /// | --- | --- |
    /// | `DAYTONA_API_KEY` | required |
    /// | `DAYTONA_API_URL` | base of the main API (default [`DEFAULT_API_URL`]) |
    /// | `DAYTONA_DEV_TOOLS_SNAPSHOT_ID` | default snapshot for new sandboxes |
    /// | `DAYTONA_TARGET` | default region for new sandboxes |
    /// | `DAYTONA_TOOLBOX_URL` | fixed toolbox proxy base ([`ToolboxAddressing::Fixed`]) |
    ///
    /// # Errors
    /// [`Error::MissingApiKey`] when `DAYTONA_API_KEY` is unset or empty, and
    /// [`Error::InvalidConfig`] for a URL that does not parse.
    pub fn from_env() -> Result<Self> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// [`Config::from_env`] with the variables read through `lookup`, so tests need not touch
    /// the process environment.
    ///
    /// ```
    /// use stigmer_daytona::{Config, Error};
    ///
    /// let err = Config::from_lookup(|_| None).unwrap_err();
    /// assert!(matches!(err, Error::MissingApiKey));
    /// assert!(err.to_string().starts_with("DAYTONA_API_KEY is not set"));
    ///
    /// let config = Config::from_lookup(|name| match name {
    ///     "DAYTONA_API_KEY" => Some("dtn_example".into()),
    ///     "DAYTONA_API_URL" => Some("https://daytona.internal/api".into()),
    ///     _ => None,
    /// })
    /// .unwrap();
    /// assert_eq!(config.api_url.as_str(), "https://daytona.internal/api");
    /// ```
    ///
    /// # Errors
    /// As [`Config::from_env`].
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let non_empty = |name: &str| {
            lookup(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let key = non_empty("DAYTONA_API_KEY").ok_or(Error::MissingApiKey)?;
        let mut config = Config::new(key);
        if let Some(url) = non_empty("DAYTONA_API_URL") {
            config = config.with_api_url(&url)?;
        }
        config.snapshot = non_empty("DAYTONA_DEV_TOOLS_SNAPSHOT_ID");
        config.target = non_empty("DAYTONA_TARGET");
        if let Some(url) = non_empty("DAYTONA_TOOLBOX_URL") {
            config.toolbox = ToolboxAddressing::Fixed(parse_url("DAYTONA_TOOLBOX_URL", &url)?);
        }
        Ok(config)
    }

    /// The API key (its `Debug` is redacted).
    #[must_use]
    pub fn api_key(&self) -> &ApiKey {
        &self.api_key
    }

    /// Points the client at another API base, e.g. a self-hosted Daytona or the fake.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when `url` is not an absolute http(s) URL.
    pub fn with_api_url(mut self, url: &str) -> Result<Self> {
        self.api_url = parse_url("the Daytona API URL", url)?;
        Ok(self)
    }

    /// Sets the default snapshot.
    #[must_use]
    pub fn with_snapshot(mut self, snapshot: impl Into<String>) -> Self {
        self.snapshot = Some(snapshot.into());
        self
    }

    /// Sets the per-request timeout.
    #[must_use]
    pub fn with_call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = timeout;
        self
    }

    /// Sets the retry policy.
    #[must_use]
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Sets how the toolbox API is addressed.
    #[must_use]
    pub fn with_toolbox(mut self, toolbox: ToolboxAddressing) -> Self {
        self.toolbox = toolbox;
        self
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.api_key.expose().trim().is_empty() {
            return Err(Error::MissingApiKey);
        }
        if self.call_timeout.is_zero() {
            return Err(Error::InvalidConfig(
                "call_timeout must be greater than zero".into(),
            ));
        }
        if self.retry.max_attempts == 0 {
            return Err(Error::InvalidConfig(
                "retry.max_attempts must be at least 1 (1 means no retry)".into(),
            ));
        }
        Ok(())
    }
}

fn parse_url(what: &str, url: &str) -> Result<Url> {
    let parsed = Url::parse(url.trim())
        .map_err(|e| Error::InvalidConfig(format!("{what} `{url}` is not a URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.cannot_be_a_base() {
        return Err(Error::InvalidConfig(format!(
            "{what} `{url}` must be an http:// or https:// URL"
        )));
    }
    Ok(parsed)
}
