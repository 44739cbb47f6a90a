//! The session tools of `stigmer mcp`: `start_session`, `end_session`, `write_file` and
//! `read_file`, over the same operations as `stigmer session start|end|cp` (docs/sessions.md).

use base64::Engine as _;
use rmcp::handler::server::tool::schema_for_output;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::{tool, tool_router};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Answer, StigmerMcp, Summary, in_tool_terms};
use crate::cli::SessionStartArgs;
use crate::client::OutputFormat;
use crate::ops::session as ops_session;

/// `start_session`'s input.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StartSessionArgs {
    /// `sandbox` (default: a container of its own, where files, installed packages and
    /// background processes persist), `cloud` (a Daytona sandbox of its own, where files and
    /// installed packages persist) or `local` (this host; the directory and exported variables
    /// persist).
    #[serde(default)]
    pub mode: Option<String>,
    /// A name that can stand for the id while the session lives.
    #[serde(default)]
    pub name: Option<String>,
    /// The sandbox image (default: the user's configured one; not for `cloud`, whose
    /// Daytona snapshot decides).
    #[serde(default)]
    pub image: Option<String>,
    /// End the session after this many idle seconds (default 3600).
    #[serde(default)]
    pub ttl_secs: Option<u64>,
    /// `public` (default: HTTP(S) to public hosts through the worker's proxy), `none` or
    /// `bridge`.
    #[serde(default)]
    pub network: Option<String>,
    /// With `public`: the only hosts the sandbox may reach (e.g. ["pypi.org",
    /// "files.pythonhosted.org"]).
    #[serde(default)]
    pub allow_net: Option<Vec<String>>,
    /// Memory limit, e.g. "512m", "2g".
    #[serde(default)]
    pub memory: Option<String>,
    /// CPU limit, e.g. 1.5.
    #[serde(default)]
    pub cpus: Option<f64>,
}

/// A session started.
#[derive(Debug, Serialize, JsonSchema)]
pub struct SessionStarted {
    /// Pass it as `session` to `run_command`, `write_file` and `read_file`.
    pub id: String,
    pub name: Option<String>,
    pub mode: String,
    pub ttl_secs: i64,
}

impl Summary for SessionStarted {
    fn summary(&self) -> String {
        format!(
            "session {} started ({}; ends after {} idle seconds)",
            self.id, self.mode, self.ttl_secs
        )
    }
}

/// `end_session`'s input.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EndSessionArgs {
    /// The session's id or name.
    pub id: String,
}

/// A session ended.
#[derive(Debug, Serialize, JsonSchema)]
pub struct SessionEnded {
    pub id: String,
    /// The containers removed with it.
    pub removed_containers: Vec<String>,
}

impl Summary for SessionEnded {
    fn summary(&self) -> String {
        format!(
            "session {} ended ({} container(s) removed)",
            self.id,
            self.removed_containers.len()
        )
    }
}

/// `write_file`'s input.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WriteFileArgs {
    /// The session's id or name (a sandbox session).
    pub session: String,
    /// Absolute path inside the session's container; its directory must exist.
    pub path: String,
    /// The file's content: text, or base64 with `base64: true`.
    pub content: String,
    /// `content` is base64 (for binary files).
    #[serde(default)]
    pub base64: Option<bool>,
    /// Permission bits as an octal string, e.g. "755" (default "644").
    #[serde(default)]
    pub mode: Option<String>,
}

/// A file written.
#[derive(Debug, Serialize, JsonSchema)]
pub struct FileWritten {
    pub session: String,
    pub path: String,
    pub bytes: u64,
}

impl Summary for FileWritten {
    fn summary(&self) -> String {
        format!(
            "wrote {} bytes to {} in {}",
            self.bytes, self.path, self.session
        )
    }
}

/// `read_file`'s input.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReadFileArgs {
    /// The session's id or name (a sandbox session).
    pub session: String,
    /// Absolute path of a file inside the session's container.
    pub path: String,
    /// Return the content as base64 (needed for a file that is not UTF-8 text).
    #[serde(default)]
    pub base64: Option<bool>,
}

/// A file read.
#[derive(Debug, Serialize, JsonSchema)]
pub struct FileRead {
    pub session: String,
    pub path: String,
    /// The content: text, or base64 when `base64` is true.
    pub content: String,
    pub base64: bool,
    pub bytes: u64,
    /// Permission bits, octal (e.g. "644").
    pub mode: String,
}

impl Summary for FileRead {
    fn summary(&self) -> String {
        if self.base64 {
            format!("{} ({} bytes, base64)", self.path, self.bytes)
        } else {
            format!("{} ({} bytes):\n{}", self.path, self.bytes, self.content)
        }
    }
}

fn tool_error(e: &anyhow::Error) -> String {
    in_tool_terms(&format!("{e:#}"))
}

#[tool_router(router = session_tools, vis = "pub")]
impl StigmerMcp {
    /// Starts a session.
    #[tool(
        description = "Start a session: a durable workspace for multi-step work. Each \
        `run_command` with `session` starts where the previous one ended (working directory, \
        exported variables, functions, aliases); in a sandbox session the container is the \
        session's own, so files, installed packages and background processes persist; in a \
        cloud session its Daytona sandbox is, so files and installed packages persist. One \
        command at a time. It ends after `ttl_secs` idle seconds or with `end_session`.",
        output_schema = schema_for_output::<SessionStarted>()
    )]
    async fn start_session(
        &self,
        Parameters(args): Parameters<StartSessionArgs>,
    ) -> Result<Answer<SessionStarted>, String> {
        let start = SessionStartArgs {
            mode: args.mode,
            name: args.name,
            ttl: args.ttl_secs.unwrap_or(3600),
            sandbox_image: args.image,
            network: args.network,
            allow_net: args.allow_net.map(|hosts| hosts.join(",")),
            memory: args.memory,
            cpus: args.cpus,
            pids_limit: None,
            output: OutputFormat::Json,
        };
        let s = ops_session::start_from_args(&start)
            .await
            .map_err(|e| tool_error(&e))?;
        Ok(Answer(SessionStarted {
            id: s.id,
            name: s.name,
            mode: s.mode,
            ttl_secs: s.ttl_secs,
        }))
    }

    /// Ends a session.
    #[tool(
        description = "End a session now and remove its container (its files and processes \
        go with it).",
        output_schema = schema_for_output::<SessionEnded>(),
        annotations(destructive_hint = true)
    )]
    async fn end_session(
        &self,
        Parameters(args): Parameters<EndSessionArgs>,
    ) -> Result<Answer<SessionEnded>, String> {
        let cfg = Self::config(None)?;
        let store = self.store(&cfg).await?;
        let (s, removed) =
            ops_session::end_session(store, &cfg.daytona(), &args.id, "ended by end_session")
                .await
                .map_err(|e| tool_error(&e))?;
        Ok(Answer(SessionEnded {
            id: s.id,
            removed_containers: removed,
        }))
    }

    /// Writes a file into a sandbox or cloud session.
    #[tool(
        description = "Write a file into a sandbox session's container or a cloud session's \
        Daytona sandbox (absolute path; the directory must exist). Text content, or base64 \
        with `base64: true` for binary files. The file belongs to the sandbox user. At most \
        256 MiB.",
        output_schema = schema_for_output::<FileWritten>()
    )]
    async fn write_file(
        &self,
        Parameters(args): Parameters<WriteFileArgs>,
    ) -> Result<Answer<FileWritten>, String> {
        let data = if args.base64.unwrap_or(false) {
            base64::engine::general_purpose::STANDARD
                .decode(args.content.trim())
                .map_err(|e| {
                    format!("`content` is not base64 ({e}); send text with `base64: false`")
                })?
        } else {
            args.content.into_bytes()
        };
        let mode = match args.mode.as_deref() {
            None => 0o644,
            Some(raw) => u32::from_str_radix(raw, 8)
                .ok()
                .filter(|m| *m <= 0o7777)
                .ok_or_else(|| {
                    format!("`mode` {raw:?}: give octal permission bits such as \"644\" or \"755\"")
                })?,
        };
        let cfg = Self::config(None)?;
        let store = self.store(&cfg).await?;
        let session = ops_session::write_in(
            store,
            &cfg.daytona(),
            &args.session,
            &args.path,
            &data,
            mode,
        )
        .await
        .map_err(|e| tool_error(&e))?;
        Ok(Answer(FileWritten {
            session: session.id,
            path: args.path,
            bytes: data.len() as u64,
        }))
    }

    /// Reads a file out of a sandbox or cloud session.
    #[tool(
        description = "Read a file from a sandbox session's container or a cloud session's \
        Daytona sandbox (absolute path). Returns \
        text, or base64 with `base64: true` (needed for a file that is not UTF-8). At most \
        256 MiB.",
        output_schema = schema_for_output::<FileRead>(),
        annotations(read_only_hint = true)
    )]
    async fn read_file(
        &self,
        Parameters(args): Parameters<ReadFileArgs>,
    ) -> Result<Answer<FileRead>, String> {
        let cfg = Self::config(None)?;
        let store = self.store(&cfg).await?;
        let (session, file) =
            ops_session::read_in(store, &cfg.daytona(), &args.session, &args.path)
                .await
                .map_err(|e| tool_error(&e))?;
        let bytes = file.data.len() as u64;
        let base64 = args.base64.unwrap_or(false);
        let content = if base64 {
            base64::engine::general_purpose::STANDARD.encode(&file.data)
        } else {
            String::from_utf8(file.data).map_err(|_| {
                format!(
                    "{} is not UTF-8 text; read it with `base64: true`",
                    args.path
                )
            })?
        };
        Ok(Answer(FileRead {
            session: session.id,
            path: args.path,
            content,
            base64,
            bytes,
            mode: format!("{:o}", file.mode),
        }))
    }
}
