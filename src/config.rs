//! Settings: each one's effective value and where it came from.
//!
//! Precedence is flag > environment > config file (`$STIGMER_CONFIG` or
//! `~/.config/stigmer/config.toml`) > default. A bad value is an error that names the setting,
//! where the value came from, the value and what is allowed, before anything starts.

use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use stigmer_workflows::{Network, RequestedMode};

/// Where a setting's value came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Flag(String),
    Env(String),
    File(PathBuf),
    Default,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Flag(name) => write!(f, "flag {name}"),
            Self::Env(name) => write!(f, "env {name}"),
            Self::File(path) => write!(f, "file {}", path.display()),
            Self::Default => f.write_str("default"),
        }
    }
}

/// A resolved value with its origin.
#[derive(Clone, Debug)]
pub struct Setting<T> {
    pub value: T,
    pub source: Source,
}

/// Values given on the command line, by setting name.
pub type Flags = BTreeMap<&'static str, (String, String)>;

/// Every setting stigmer reads.
#[derive(Clone, Debug)]
pub struct Config {
    pub execution_mode: Setting<RequestedMode>,
    pub sandbox_image: Setting<String>,
    pub sandbox_auto_pull: Setting<bool>,
    pub sandbox_cleanup: Setting<bool>,
    pub sandbox_agent: Setting<bool>,
    pub sandbox_ttl: Setting<u64>,
    pub sandbox_network: Setting<Network>,
    /// With the `public` posture: the only hosts the proxy lets a sandbox reach (empty: any
    /// public host).
    pub sandbox_allow_net: Setting<Vec<String>>,
    /// Where the egress proxy binds one socket per `public` container; the Docker engine must
    /// see it at the same path (a worker in a container mounts a host directory there).
    pub sandbox_egress_dir: Setting<PathBuf>,
    pub temporal_address: Setting<Option<String>>,
    pub temporal_namespace: Setting<String>,
    pub temporal_port: Setting<u16>,
    pub temporal_ui_port: Setting<u16>,
    pub temporal_bin: Setting<Option<PathBuf>>,
    pub data_dir: Setting<PathBuf>,
    pub database_url: Setting<String>,
    pub task_queue: Setting<String>,
    pub output_retain_bytes: Setting<u64>,
    /// Where the daemon or worker serves Prometheus `/metrics` (off when unset).
    pub metrics_addr: Setting<Option<SocketAddr>>,
    pub daytona_api_key: Setting<Option<String>>,
    pub daytona_api_url: Setting<String>,
    pub daytona_snapshot_id: Setting<Option<String>>,
    /// The file holding the ed25519 key that signs each new audit chain head (workers and the
    /// daemon read it; unset: records are not signed).
    pub audit_signing_key: Setting<Option<PathBuf>>,
    /// The public key `audit verify` checks head signatures with: 64 hex characters, or a file
    /// holding them (unset: signatures are not checked).
    pub audit_verify_key: Setting<Option<String>>,
    /// The file of keys that encrypt every Temporal payload (docs/temporal-api.md): made on
    /// first use when missing. Every worker and client of one cluster must share it.
    pub codec_key_file: Setting<PathBuf>,
    /// The modes a start from another Temporal client (the public input) may ask for.
    pub foreign_modes: Setting<Vec<RequestedMode>>,
    /// The config file that was read, if any.
    pub file: Option<PathBuf>,
}

/// Raw lookup across the layers, before typing.
struct Layers<'a> {
    flags: &'a Flags,
    file: BTreeMap<String, String>,
    file_path: Option<PathBuf>,
}

impl Layers<'_> {
    /// The first layer that has a value for `key`: flag, then each env name, then the file.
    fn raw(&self, key: &'static str, envs: &[&str]) -> Option<(String, Source)> {
        if let Some((flag, value)) = self.flags.get(key) {
            return Some((value.clone(), Source::Flag(flag.clone())));
        }
        for env in envs {
            if let Ok(value) = std::env::var(env)
                && !value.is_empty()
            {
                return Some((value, Source::Env((*env).to_string())));
            }
        }
        let value = self.file.get(key)?;
        let path = self.file_path.clone().unwrap_or_default();
        Some((value.clone(), Source::File(path)))
    }

    fn get<T>(
        &self,
        key: &'static str,
        envs: &[&str],
        default: impl FnOnce() -> T,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<Setting<T>> {
        match self.raw(key, envs) {
            Some((raw, source)) => match parse(&raw) {
                Ok(value) => Ok(Setting { value, source }),
                Err(allowed) => bail!(
                    "invalid value {raw:?} for {} (from {source}): {allowed}",
                    display_name(key, &source)
                ),
            },
            None => Ok(Setting {
                value: default(),
                source: Source::Default,
            }),
        }
    }
}

fn display_name(key: &str, source: &Source) -> String {
    match source {
        Source::Env(name) => name.clone(),
        Source::Flag(name) => name.clone(),
        _ => key.to_string(),
    }
}

fn parse_bool(raw: &str) -> Result<bool, String> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err("allowed values: true, false (also 1/0, yes/no, on/off)".into()),
    }
}

fn parse_u64(raw: &str) -> Result<u64, String> {
    raw.trim()
        .parse()
        .map_err(|_| "allowed values: a whole number ≥ 0".to_string())
}

/// Seconds an idle container is kept: 0 (never reused) up to 30 days.
fn parse_ttl(raw: &str) -> Result<u64, String> {
    let max = stigmer_workflows::limits::MAX_TTL_SECS;
    match raw.trim().parse::<u64>() {
        Ok(secs) if secs <= max => Ok(secs),
        _ => Err(format!(
            "allowed values: a whole number of seconds from 0 (never reuse) to {max} (30 days)"
        )),
    }
}

/// `HOST:PORT` for the metrics listener: an IP address (or `localhost`) and a port.
fn parse_metrics_addr(raw: &str) -> Result<Option<SocketAddr>, String> {
    let raw = raw.trim();
    let allowed = "allowed values: IP:PORT such as 127.0.0.1:9464 (this host only) or \
                   0.0.0.0:9464 (reachable by a Prometheus on another host), or localhost:PORT";
    let addr = match raw.strip_prefix("localhost:") {
        Some(port) => port
            .parse::<u16>()
            .map(|p| SocketAddr::from(([127, 0, 0, 1], p)))
            .map_err(|_| allowed.to_string())?,
        None => raw.parse::<SocketAddr>().map_err(|_| allowed.to_string())?,
    };
    if addr.port() == 0 {
        return Err(format!("port 0 would pick a random port; {allowed}"));
    }
    Ok(Some(addr))
}

fn parse_port(raw: &str) -> Result<u16, String> {
    match raw.trim().parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err("allowed values: a TCP port, 1-65535".into()),
    }
}

/// The names the config file accepts (the setting names of `config show`).
const FILE_KEYS: &[&str] = &[
    "execution_mode",
    "sandbox_image",
    "sandbox_auto_pull",
    "sandbox_cleanup",
    "sandbox_agent",
    "sandbox_ttl",
    "sandbox_network",
    "sandbox_allow_net",
    "sandbox_egress_dir",
    "temporal_address",
    "temporal_namespace",
    "temporal_port",
    "temporal_ui_port",
    "temporal_bin",
    "data_dir",
    "database_url",
    "task_queue",
    "output_retain_bytes",
    "metrics_addr",
    "daytona_api_url",
    "daytona_snapshot_id",
    "audit_signing_key",
    "audit_verify_key",
    "codec_key_file",
    "foreign_modes",
];

fn home_dir() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/"))
}

/// The config file path: `$STIGMER_CONFIG`, or `~/.config/stigmer/config.toml`.
#[must_use]
pub fn config_file_path() -> (PathBuf, bool) {
    match std::env::var_os("STIGMER_CONFIG") {
        Some(p) if !p.is_empty() => (PathBuf::from(p), true),
        _ => (home_dir().join(".config/stigmer/config.toml"), false),
    }
}

fn read_file(path: &Path, explicit: bool) -> Result<BTreeMap<String, String>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
            return Ok(BTreeMap::new());
        }
        Err(e) => {
            return Err(e)
                .with_context(|| format!("could not read config file {}", path.display()));
        }
    };
    let table: toml::Table = text
        .parse()
        .with_context(|| format!("config file {} is not valid TOML", path.display()))?;
    let mut out = BTreeMap::new();
    for (key, value) in table {
        if !FILE_KEYS.contains(&key.as_str()) {
            bail!(
                "config file {}: unknown setting {key:?} (known: {})",
                path.display(),
                FILE_KEYS.join(", ")
            );
        }
        let text = match value {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            other => bail!(
                "config file {}: {key} must be a string, number or boolean, not {}",
                path.display(),
                other.type_str()
            ),
        };
        out.insert(key, text);
    }
    Ok(out)
}

impl Config {
    /// The Daytona settings the worker's cloud backend and reaper use.
    #[must_use]
    pub fn daytona(&self) -> stigmer_activities::cloud::CloudSettings {
        stigmer_activities::cloud::CloudSettings {
            api_key: self.daytona_api_key.value.clone(),
            api_url: Some(self.daytona_api_url.value.clone()),
            snapshot: self.daytona_snapshot_id.value.clone(),
        }
    }

    /// Resolves every setting from flags, environment, file and defaults.
    pub fn load(flags: &Flags) -> Result<Self> {
        let (path, explicit) = config_file_path();
        let file = read_file(&path, explicit)?;
        let file_path = (!file.is_empty() || explicit).then_some(path);
        let layers = Layers {
            flags,
            file,
            file_path: file_path.clone(),
        };

        // MODE=cloud is the original design's switch; only that value is taken from MODE.
        let mut execution_mode = layers.get(
            "execution_mode",
            &["STIGMER_EXECUTION_MODE"],
            || RequestedMode::Local,
            |raw| {
                RequestedMode::parse(raw)
                    .ok_or_else(|| format!("allowed values: {}", RequestedMode::ALLOWED))
            },
        )?;
        if !matches!(execution_mode.source, Source::Flag(_) | Source::Env(_))
            && std::env::var("MODE").is_ok_and(|m| m.eq_ignore_ascii_case("cloud"))
        {
            execution_mode = Setting {
                value: RequestedMode::Cloud,
                source: Source::Env("MODE".into()),
            };
        }

        let data_dir = layers.get(
            "data_dir",
            &["STIGMER_DATA_DIR"],
            || home_dir().join(".stigmer"),
            |raw| Ok(PathBuf::from(expand_home(raw))),
        )?;
        let default_egress = data_dir.value.join("egress");
        let default_db = format!("sqlite:{}", data_dir.value.join("stigmer.db").display());
        let default_codec_key = data_dir.value.join("codec.key");
        let temporal_port = layers.get(
            "temporal_port",
            &["STIGMER_TEMPORAL_PORT"],
            || 7233,
            parse_port,
        )?;
        let ui_default = temporal_port.value.saturating_add(1000);

        Ok(Self {
            execution_mode,
            sandbox_image: layers.get(
                "sandbox_image",
                &["STIGMER_SANDBOX_IMAGE"],
                || "ghcr.io/stigmer/agent-sandbox-basic:latest".into(),
                |raw| {
                    let raw = raw.trim();
                    if raw.is_empty() || raw.contains(char::is_whitespace) {
                        Err("allowed values: an image reference such as stigmer-sandbox-basic:local".into())
                    } else {
                        Ok(raw.to_string())
                    }
                },
            )?,
            sandbox_auto_pull: layers.get(
                "sandbox_auto_pull",
                &["STIGMER_SANDBOX_AUTO_PULL"],
                || true,
                parse_bool,
            )?,
            sandbox_cleanup: layers.get(
                "sandbox_cleanup",
                &["STIGMER_SANDBOX_CLEANUP"],
                || true,
                parse_bool,
            )?,
            sandbox_agent: layers.get(
                "sandbox_agent",
                &["STIGMER_SANDBOX_AGENT"],
                || true,
                parse_bool,
            )?,
            sandbox_ttl: layers.get("sandbox_ttl", &["STIGMER_SANDBOX_TTL"], || 3600, parse_ttl)?,
            sandbox_network: layers.get(
                "sandbox_network",
                &["STIGMER_SANDBOX_NETWORK"],
                || Network::Public,
                str::parse::<Network>,
            )?,
            sandbox_allow_net: layers.get(
                "sandbox_allow_net",
                &["STIGMER_SANDBOX_ALLOW_NET"],
                Vec::new,
                stigmer_docker::parse_allow_list,
            )?,
            sandbox_egress_dir: layers.get(
                "sandbox_egress_dir",
                &["STIGMER_SANDBOX_EGRESS_DIR"],
                move || default_egress.clone(),
                |raw| Ok(PathBuf::from(expand_home(raw))),
            )?,
            temporal_address: layers.get(
                "temporal_address",
                &["TEMPORAL_ADDRESS"],
                || None,
                |raw| Ok(Some(raw.trim().to_string())),
            )?,
            temporal_namespace: layers.get(
                "temporal_namespace",
                &["TEMPORAL_NAMESPACE"],
                || "default".into(),
                |raw| Ok(raw.trim().to_string()),
            )?,
            temporal_ui_port: layers.get(
                "temporal_ui_port",
                &["STIGMER_TEMPORAL_UI_PORT"],
                || ui_default,
                parse_port,
            )?,
            temporal_port,
            temporal_bin: layers.get(
                "temporal_bin",
                &["STIGMER_TEMPORAL_BIN"],
                || None,
                |raw| Ok(Some(PathBuf::from(expand_home(raw)))),
            )?,
            database_url: layers.get(
                "database_url",
                &["STIGMER_DATABASE_URL"],
                || default_db,
                |raw| {
                    let raw = raw.trim();
                    if raw.starts_with("sqlite:")
                        || raw.starts_with("postgres://")
                        || raw.starts_with("postgresql://")
                    {
                        Ok(raw.to_string())
                    } else {
                        Err("allowed values: sqlite:PATH or postgres://USER:PASS@HOST:PORT/DB".into())
                    }
                },
            )?,
            data_dir,
            task_queue: layers.get(
                "task_queue",
                &["STIGMER_TASK_QUEUE"],
                || "stigmer".into(),
                |raw| Ok(raw.trim().to_string()),
            )?,
            metrics_addr: layers.get(
                "metrics_addr",
                &["STIGMER_METRICS_ADDR"],
                || None,
                parse_metrics_addr,
            )?,
            output_retain_bytes: layers.get(
                "output_retain_bytes",
                &["STIGMER_OUTPUT_RETAIN_BYTES"],
                || stigmer_activities::DEFAULT_OUTPUT_RETAIN_BYTES,
                |raw| match parse_u64(raw) {
                    Ok(n) if n >= 1024 => Ok(n),
                    _ => Err("allowed values: a number of bytes ≥ 1024".into()),
                },
            )?,
            daytona_api_key: layers.get(
                "daytona_api_key",
                &["DAYTONA_API_KEY"],
                || None,
                |raw| Ok(Some(raw.trim().to_string())),
            )?,
            daytona_api_url: layers.get(
                "daytona_api_url",
                &["DAYTONA_API_URL"],
                || "https://app.daytona.io/api".into(),
                |raw| Ok(raw.trim().trim_end_matches('/').to_string()),
            )?,
            daytona_snapshot_id: layers.get(
                "daytona_snapshot_id",
                &["DAYTONA_DEV_TOOLS_SNAPSHOT_ID"],
                || None,
                |raw| Ok(Some(raw.trim().to_string())),
            )?,
            audit_signing_key: layers.get(
                "audit_signing_key",
                &["STIGMER_AUDIT_SIGNING_KEY"],
                || None,
                |raw| match raw.trim() {
                    "" => Err("allowed values: the path of a key file written by `stigmer audit keygen PATH`".into()),
                    path => Ok(Some(PathBuf::from(expand_home(path)))),
                },
            )?,
            audit_verify_key: layers.get(
                "audit_verify_key",
                &["STIGMER_AUDIT_VERIFY_KEY"],
                || None,
                |raw| match raw.trim() {
                    "" => Err("allowed values: the public key `stigmer audit keygen` printed (64 hex characters), or the path of a file holding it".into()),
                    key => Ok(Some(expand_home(key))),
                },
            )?,
            codec_key_file: layers.get(
                "codec_key_file",
                &["STIGMER_CODEC_KEY_FILE"],
                move || default_codec_key,
                |raw| match raw.trim() {
                    "" => Err("allowed values: the path of a codec key file (made on first use; see `stigmer codec key`)".into()),
                    path => Ok(PathBuf::from(expand_home(path))),
                },
            )?,
            foreign_modes: layers.get(
                "foreign_modes",
                &["STIGMER_FOREIGN_MODES"],
                || {
                    vec![
                        RequestedMode::Local,
                        RequestedMode::Sandbox,
                        RequestedMode::Auto,
                        RequestedMode::Cloud,
                    ]
                },
                |raw| {
                    let modes: Option<Vec<RequestedMode>> = raw
                        .split(',')
                        .filter(|m| !m.trim().is_empty())
                        .map(RequestedMode::parse)
                        .collect();
                    match modes {
                        Some(modes) if !modes.is_empty() => Ok(modes),
                        _ => Err(format!(
                            "allowed values: a comma-separated list of {}",
                            RequestedMode::ALLOWED
                        )),
                    }
                },
            )?,
            file: file_path,
        })
    }

    /// Every setting as (name, shown value, source), for `config show`. Secrets are masked.
    #[must_use]
    pub fn rows(&self) -> Vec<(&'static str, String, String)> {
        fn row<T>(
            name: &'static str,
            s: &Setting<T>,
            show: impl Fn(&T) -> String,
        ) -> (&'static str, String, String) {
            (name, show(&s.value), s.source.to_string())
        }
        let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "(unset)".into());
        vec![
            row("execution_mode", &self.execution_mode, |v| v.to_string()),
            row("sandbox_image", &self.sandbox_image, Clone::clone),
            row(
                "sandbox_auto_pull",
                &self.sandbox_auto_pull,
                bool::to_string,
            ),
            row("sandbox_cleanup", &self.sandbox_cleanup, bool::to_string),
            row("sandbox_agent", &self.sandbox_agent, bool::to_string),
            row("sandbox_ttl", &self.sandbox_ttl, u64::to_string),
            row("sandbox_network", &self.sandbox_network, |v| {
                v.as_str().into()
            }),
            row("sandbox_egress_dir", &self.sandbox_egress_dir, |v| {
                v.display().to_string()
            }),
            row("sandbox_allow_net", &self.sandbox_allow_net, |v| {
                if v.is_empty() {
                    "(any public host)".into()
                } else {
                    v.join(",")
                }
            }),
            row("temporal_address", &self.temporal_address, |v| {
                v.clone()
                    .unwrap_or_else(|| "(unset: managed dev server)".into())
            }),
            row("temporal_namespace", &self.temporal_namespace, Clone::clone),
            row("temporal_port", &self.temporal_port, u16::to_string),
            row("temporal_ui_port", &self.temporal_ui_port, u16::to_string),
            row("temporal_bin", &self.temporal_bin, |v| {
                v.as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "(search PATH and data dir)".into())
            }),
            row("data_dir", &self.data_dir, |v| v.display().to_string()),
            row("database_url", &self.database_url, |v| {
                stigmer_activities::store::redact_url(v)
            }),
            row("task_queue", &self.task_queue, Clone::clone),
            row(
                "output_retain_bytes",
                &self.output_retain_bytes,
                u64::to_string,
            ),
            row("metrics_addr", &self.metrics_addr, |v| {
                v.map_or_else(|| "(unset: no /metrics)".into(), |a| a.to_string())
            }),
            row("daytona_api_key", &self.daytona_api_key, |v| {
                if v.is_some() {
                    "(set, hidden)".into()
                } else {
                    "(unset)".into()
                }
            }),
            row("daytona_api_url", &self.daytona_api_url, Clone::clone),
            row("daytona_snapshot_id", &self.daytona_snapshot_id, opt),
            row("audit_signing_key", &self.audit_signing_key, |v| {
                v.as_ref().map_or_else(
                    || "(unset: audit records are not signed)".into(),
                    |p| p.display().to_string(),
                )
            }),
            row("audit_verify_key", &self.audit_verify_key, |v| {
                v.clone()
                    .unwrap_or_else(|| "(unset: signatures are not checked)".into())
            }),
            row("codec_key_file", &self.codec_key_file, |v| {
                v.display().to_string()
            }),
            row("foreign_modes", &self.foreign_modes, |v| {
                v.iter().map(|m| m.as_str()).collect::<Vec<_>>().join(",")
            }),
        ]
    }

    /// Whether this installation uses a Temporal it does not manage.
    #[must_use]
    pub fn is_remote(&self) -> bool {
        self.temporal_address.value.is_some()
    }

    /// The Temporal frontend to talk to: the configured one or the managed dev server.
    #[must_use]
    pub fn temporal_target(&self) -> String {
        match &self.temporal_address.value {
            Some(addr) if addr.contains("://") => addr.clone(),
            Some(addr) => format!("http://{addr}"),
            None => format!("http://127.0.0.1:{}", self.temporal_port.value),
        }
    }

    #[must_use]
    pub fn socket_path(&self) -> PathBuf {
        self.data_dir.value.join("stigmer.sock")
    }
}

fn expand_home(raw: &str) -> String {
    match raw.strip_prefix("~/") {
        Some(rest) => home_dir().join(rest).display().to_string(),
        None => raw.to_string(),
    }
}
