//! Sessions (docs/sessions.md): starting, finding, ending and reaping them. The store is the
//! truth, so `session start`, `list`, `show` and `end` work on it directly, as `executions`
//! does; only a command in a session goes through the daemon, which holds the session's busy
//! marker for it.

use crate::cli::UsageError;
use anyhow::Result;
use stigmer_activities::cloud::{CloudBackend, CloudError, CloudSettings};
use stigmer_activities::sandbox::SandboxBackend;
use stigmer_activities::store::{NewSession, SessionRecord, Store, now_ms};
use stigmer_workflows::{Backend, Mode, SandboxSpec};

use crate::config::Config;

/// The mode a session runs its commands in.
pub const SESSION_MODES: &str = "sandbox, cloud or local";

/// A fresh session id: `ses-` and 16 random hex digits.
pub fn new_session_id() -> Result<String> {
    let mut bytes = [0u8; 8];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| anyhow::anyhow!("the system's random source failed"))?;
    Ok(format!("ses-{}", hex::encode(bytes)))
}

/// The owner string a session records for its creator, and checks on every command: the uid
/// the daemon's socket sees.
#[must_use]
pub fn creator_of(uid: u32) -> String {
    format!("uid:{uid}")
}

/// The owner of a session's own container (part of its spec hash, so no other execution ever
/// reuses it).
#[must_use]
pub fn container_owner(id: &str) -> String {
    format!("{}{id}", stigmer_docker::SESSION_OWNER_PREFIX)
}

/// What `session start` asks for.
#[derive(Clone, Debug)]
pub struct SessionStart {
    pub name: Option<String>,
    /// The sandbox spec of a sandbox or cloud session (backend `Daytona`); `None` for a local
    /// one.
    pub sandbox: Option<SandboxSpec>,
    pub ttl_secs: u64,
    pub creator: String,
}

/// Records a new session. Its container (sandbox) is made by its first command.
pub async fn start_session(store: &Store, start: SessionStart) -> Result<SessionRecord> {
    if let Some(name) = &start.name {
        if name.is_empty() || name.starts_with("ses-") || name.contains(char::is_whitespace) {
            return Err(UsageError(format!(
                "--name {name:?}: give a name without spaces that does not start with `ses-`"
            ))
            .into());
        }
        if let Some(live) = store
            .get_session(name)
            .await?
            .filter(SessionRecord::is_live)
        {
            return Err(UsageError(format!(
                "--name {name:?} is taken by the live session {}; end it (`stigmer session end {}`) or pick another name",
                live.id, live.id
            ))
            .into());
        }
    }
    let id = new_session_id()?;
    let spec = match &start.sandbox {
        Some(spec) => {
            let mut spec = spec.clone();
            spec.owner = Some(container_owner(&id));
            spec.ttl_secs = start.ttl_secs;
            Some(serde_json::to_string(&spec)?)
        }
        None => None,
    };
    store
        .create_session(&NewSession {
            id: id.clone(),
            name: start.name.clone(),
            mode: match &start.sandbox {
                Some(spec) if spec.backend == Backend::Daytona => "cloud",
                Some(_) => "sandbox",
                None => "local",
            }
            .into(),
            spec,
            ttl_secs: start.ttl_secs,
            creator: start.creator,
        })
        .await?;
    find_session(store, &id).await
}

/// `session start`: checks the flags as `run` does, makes sure the daemon runs (it creates the
/// store and reaps the session when it idles out), and records the session.
pub async fn start_from_args(args: &crate::cli::SessionStartArgs) -> Result<SessionRecord> {
    let mut flags = crate::config::Flags::new();
    if let Some(image) = &args.sandbox_image {
        flags.insert("sandbox_image", ("--sandbox-image".into(), image.clone()));
    }
    let cfg = Config::load(&flags).map_err(|e| crate::cli::usage(format!("{e:#}")))?;
    let max = stigmer_workflows::limits::MAX_TTL_SECS;
    if args.ttl == 0 || args.ttl > max {
        return Err(crate::cli::usage(format!(
            "--ttl {}: give between 1 and {max} seconds",
            args.ttl
        )));
    }
    let sandbox = match args.mode.as_deref().unwrap_or("sandbox") {
        "sandbox" => Some(crate::cli::session_sandbox_spec(args, &cfg)?),
        "cloud" => Some(crate::cli::session_cloud_spec(args, &cfg)?),
        "local" => {
            let flags = [
                args.sandbox_image.is_some(),
                args.network.is_some(),
                args.allow_net.is_some(),
                args.memory.is_some(),
                args.cpus.is_some(),
                args.pids_limit.is_some(),
            ];
            if flags.iter().any(|f| *f) {
                return Err(crate::cli::usage(
                    "the sandbox flags do not apply to a local session; drop them or use --mode sandbox",
                ));
            }
            None
        }
        other => {
            return Err(crate::cli::usage(format!(
                "--mode {other:?}: a session runs in {SESSION_MODES} mode"
            )));
        }
    };
    if !cfg.is_remote() {
        // The daemon creates the store, and reaps the session when it idles out.
        drop(crate::client::connect_daemon(&cfg).await?);
    }
    let store = Store::open(&cfg.database_url.value, false).await?;
    start_session(
        &store,
        SessionStart {
            name: args.name.clone(),
            sandbox,
            ttl_secs: args.ttl,
            creator: creator_of(nix::unistd::getuid().as_raw()),
        },
    )
    .await
}

/// A live session by id or name, or a usage error that says how to find or start one.
pub async fn find_session(store: &Store, id_or_name: &str) -> Result<SessionRecord> {
    match store.get_session(id_or_name).await? {
        Some(s) if s.is_live() => Ok(s),
        Some(s) => Err(UsageError(format!(
            "session {} ended ({}); `stigmer session start` starts a new one",
            s.id,
            s.end_reason.as_deref().unwrap_or("ended")
        ))
        .into()),
        None => Err(UsageError(format!(
            "no session {id_or_name:?}; `stigmer session list` shows the live ones, \
             `stigmer session start` starts one"
        ))
        .into()),
    }
}

/// Any session by id or name, live or ended (for `session show`).
pub async fn session(store: &Store, id_or_name: &str) -> Result<SessionRecord> {
    store.get_session(id_or_name).await?.ok_or_else(|| {
        UsageError(format!(
            "no session {id_or_name:?}; `stigmer session list --all` shows every one"
        ))
        .into()
    })
}

/// The sandbox spec a sandbox or cloud session's commands run with.
pub fn session_spec(session: &SessionRecord) -> Result<Option<SandboxSpec>> {
    match &session.spec {
        Some(text) => {
            let mut spec: SandboxSpec = serde_json::from_str(text)?;
            spec.owner = Some(container_owner(&session.id));
            spec.ttl_secs = u64::try_from(session.ttl_secs).unwrap_or(0);
            Ok(Some(spec))
        }
        None => Ok(None),
    }
}

/// Ends a session at once and removes its container. Returns the session as it ended and the
/// containers removed.
pub async fn end_session(
    store: &Store,
    daytona: &CloudSettings,
    id_or_name: &str,
    reason: &str,
) -> Result<(SessionRecord, Vec<String>)> {
    let live = find_session(store, id_or_name).await?;
    store.end_session(&live.id, reason).await?;
    let removed = remove_containers(store, daytona, &live).await?;
    Ok((session(store, &live.id).await?, removed))
}

/// The client for a cloud session's Daytona sandbox (to move files), or an error that says
/// what to set.
fn cloud_backend(
    store: &Store,
    daytona: &CloudSettings,
    s: &SessionRecord,
) -> Result<CloudBackend> {
    CloudBackend::configured(store.clone(), "stigmer-session".into(), daytona.clone()).ok_or_else(
        || {
            anyhow::anyhow!(
                "session {} is a cloud session and no Daytona key is set here: export \
                 DAYTONA_API_KEY (the same as the daemon's) and try again",
                s.id
            )
        },
    )
}

async fn remove_containers(
    store: &Store,
    daytona: &CloudSettings,
    s: &SessionRecord,
) -> Result<Vec<String>> {
    match s.run_mode() {
        Mode::Sandbox => {
            let backend = SandboxBackend::new(store.clone(), "stigmer-session".into());
            Ok(backend.remove_session_containers(&s.id).await?)
        }
        Mode::Cloud => {
            let Some(cloud) =
                CloudBackend::configured(store.clone(), "stigmer-session".into(), daytona.clone())
            else {
                anyhow::bail!(
                    "session {} ended, but its Daytona sandbox was not deleted: no Daytona key is \
                     set here (DAYTONA_API_KEY); the daemon's reaper deletes it once it has been \
                     idle for the session's TTL",
                    s.id
                );
            };
            cloud.remove_session_sandboxes(&s.id).await.map_err(|e| {
                anyhow::anyhow!(
                    "session {} ended, but its Daytona sandbox could not be deleted ({e}); the \
                         daemon's reaper deletes it once it has been idle for the session's TTL",
                    s.id
                )
            })
        }
        _ => Ok(Vec::new()),
    }
}

/// One pass of the session reaper: ends the sessions idle past their TTL and removes their
/// containers (Docker) or sandboxes (Daytona). Returns the ids ended.
pub async fn reap_sessions(store: &Store, daytona: &CloudSettings) -> Result<Vec<String>> {
    let mut ended = Vec::new();
    for s in store.expired_sessions(now_ms()).await? {
        if store.end_session(&s.id, "idle past its TTL").await? {
            if let Err(e) = remove_containers(store, daytona, &s).await {
                tracing::warn!("could not remove the container of session {}: {e:#}", s.id);
            }
            ended.push(s.id);
        }
    }
    Ok(ended)
}

/// One side of `session cp`: a path on this host, or `SESSION:/path` inside a session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CopyEnd {
    Host(std::path::PathBuf),
    Session { session: String, path: String },
}

impl CopyEnd {
    /// `SESSION:/path` (a session id or name, a colon, an absolute path) is in a session;
    /// anything else is a host path (write `./a:/b` for a host path that looks like one).
    #[must_use]
    pub fn parse(raw: &str) -> Self {
        match raw.split_once(':') {
            Some((session, path))
                if !session.is_empty()
                    && !session.contains('/')
                    && !session.starts_with('.')
                    && path.starts_with('/') =>
            {
                CopyEnd::Session {
                    session: session.to_string(),
                    path: path.to_string(),
                }
            }
            _ => CopyEnd::Host(raw.into()),
        }
    }
}

/// What `session cp` copied.
#[derive(Clone, Debug)]
pub struct Copied {
    pub session: String,
    pub from: String,
    pub to: String,
    pub bytes: u64,
    pub mode: u32,
}

/// Where a session's files are: its Docker container or its Daytona sandbox.
enum FileHost {
    Docker(stigmer_docker::Engine, String),
    Cloud(CloudBackend, String),
}

/// A session's running container or sandbox, for moving files: only the session's creator
/// may, and the session needs its container (made by its first command).
async fn open_files(
    store: &Store,
    daytona: &CloudSettings,
    session_ref: &str,
) -> Result<(SessionRecord, FileHost)> {
    let session = find_session(store, session_ref).await?;
    let me = creator_of(nix::unistd::getuid().as_raw());
    if session.creator != me {
        return Err(UsageError(format!(
            "session {} belongs to {}; only its creator copies files in or out",
            session.id, session.creator
        ))
        .into());
    }
    let no_container = |session: &SessionRecord| -> anyhow::Error {
        UsageError(format!(
            "session {} has no running {} yet: run a command in it first \
             (`stigmer run --session {} true`)",
            session.id,
            if session.run_mode() == Mode::Cloud {
                "sandbox"
            } else {
                "container"
            },
            session.id
        ))
        .into()
    };
    match session.run_mode() {
        Mode::Sandbox => {
            let engine = stigmer_docker::Engine::connect().await?;
            match engine
                .session_container(store.store_id(), &session.id)
                .await?
            {
                Some(container) => Ok((session, FileHost::Docker(engine, container))),
                None => Err(no_container(&session)),
            }
        }
        Mode::Cloud => {
            let cloud = cloud_backend(store, daytona, &session)?;
            match cloud.session_sandbox(&session.id).await? {
                Some(sandbox) => Ok((session, FileHost::Cloud(cloud, sandbox))),
                None => Err(no_container(&session)),
            }
        }
        _ => Err(UsageError(format!(
            "session {} is a {} session: its files are this host's own; use cp",
            session.id, session.mode
        ))
        .into()),
    }
}

/// Writes one file into a session's container or sandbox (`session cp`, MCP's `write_file`);
/// a copy is use, so the session's idle clock starts again.
pub async fn write_in(
    store: &Store,
    daytona: &CloudSettings,
    session_ref: &str,
    path: &str,
    data: &[u8],
    mode: u32,
) -> Result<SessionRecord> {
    let (session, host) = open_files(store, daytona, session_ref).await?;
    match host {
        FileHost::Docker(engine, container) => engine
            .write_file(&container, path, data, mode)
            .await
            .map_err(usage_of)?,
        FileHost::Cloud(cloud, sandbox) => cloud
            .write_file(&sandbox, path, data, mode)
            .await
            .map_err(cloud_usage_of)?,
    }
    store.touch_session(&session.id).await?;
    Ok(session)
}

/// Reads one file out of a session's container or sandbox (`session cp`, MCP's `read_file`).
pub async fn read_in(
    store: &Store,
    daytona: &CloudSettings,
    session_ref: &str,
    path: &str,
) -> Result<(SessionRecord, stigmer_docker::ContainerFile)> {
    let (session, host) = open_files(store, daytona, session_ref).await?;
    let file = match host {
        FileHost::Docker(engine, container) => {
            engine.read_file(&container, path).await.map_err(usage_of)?
        }
        FileHost::Cloud(cloud, sandbox) => cloud
            .read_file(&sandbox, path)
            .await
            .map_err(cloud_usage_of)?,
    };
    store.touch_session(&session.id).await?;
    Ok((session, file))
}

/// Copies one file between this host and a session's container (the engine's archive API) or
/// Daytona sandbox (the toolbox's file API), binary-safe and with its permission bits. Only
/// the session's creator may.
pub async fn copy(store: &Store, daytona: &CloudSettings, src: &str, dst: &str) -> Result<Copied> {
    use std::os::unix::fs::PermissionsExt;
    match (CopyEnd::parse(src), CopyEnd::parse(dst)) {
        (CopyEnd::Host(from), CopyEnd::Session { session, mut path }) => {
            let meta = std::fs::metadata(&from).map_err(|e| {
                UsageError(format!("{}: {e}; give a file on this host", from.display()))
            })?;
            if !meta.is_file() {
                return Err(UsageError(format!(
                    "{} is not a regular file: copy one file (pack a directory with tar first)",
                    from.display()
                ))
                .into());
            }
            if meta.len() > stigmer_docker::MAX_COPY_BYTES {
                return Err(UsageError(format!(
                    "{} is {} bytes, more than a copy may carry ({} MiB)",
                    from.display(),
                    meta.len(),
                    stigmer_docker::MAX_COPY_BYTES / (1024 * 1024)
                ))
                .into());
            }
            let data =
                std::fs::read(&from).map_err(|e| UsageError(format!("{}: {e}", from.display())))?;
            let mode = meta.permissions().mode() & 0o7777;
            if path.ends_with('/') {
                let name = from.file_name().map(|n| n.to_string_lossy().into_owned());
                path.push_str(&name.unwrap_or_default());
            }
            let session = write_in(store, daytona, &session, &path, &data, mode).await?;
            Ok(Copied {
                from: from.display().to_string(),
                to: format!("{}:{path}", session.id),
                session: session.id,
                bytes: data.len() as u64,
                mode,
            })
        }
        (CopyEnd::Session { session, path }, CopyEnd::Host(mut to)) => {
            let (session, file) = read_in(store, daytona, &session, &path).await?;
            if to.is_dir() {
                to = to.join(path.rsplit('/').next().unwrap_or("file"));
            }
            std::fs::write(&to, &file.data)
                .map_err(|e| UsageError(format!("{}: {e}", to.display())))?;
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(file.mode))
                .map_err(|e| UsageError(format!("{}: {e}", to.display())))?;
            Ok(Copied {
                from: format!("{}:{path}", session.id),
                to: to.display().to_string(),
                session: session.id,
                bytes: file.data.len() as u64,
                mode: file.mode,
            })
        }
        _ => Err(UsageError(
            "give one side as SESSION:/path and the other as a path on this host, e.g. \
             `stigmer session cp data.csv ses-1234:/workspace/data.csv`"
                .into(),
        )
        .into()),
    }
}

/// An engine error the caller can fix (a bad path, a missing file) is a usage error.
fn usage_of(e: stigmer_docker::EngineError) -> anyhow::Error {
    match e {
        stigmer_docker::EngineError::InvalidSpec(m) => UsageError(m).into(),
        other => other.into(),
    }
}

/// A Daytona answer the caller can fix (a bad path, a missing file) is a usage error.
fn cloud_usage_of(e: CloudError) -> anyhow::Error {
    match e {
        CloudError::Invalid(m) => UsageError(m).into(),
        other => other.into(),
    }
}

#[cfg(test)]
mod copy_tests {
    use super::CopyEnd;

    #[test]
    fn a_session_side_is_a_name_a_colon_and_an_absolute_path() {
        assert_eq!(
            CopyEnd::parse("ses-12ab:/workspace/a.csv"),
            CopyEnd::Session {
                session: "ses-12ab".into(),
                path: "/workspace/a.csv".into()
            }
        );
        assert_eq!(
            CopyEnd::parse("work:/tmp/x"),
            CopyEnd::Session {
                session: "work".into(),
                path: "/tmp/x".into()
            }
        );
        for host in [
            "a.csv",
            "./a:/b",
            "dir/a:/b",
            "a:b",
            "/abs/path",
            "C:relative",
        ] {
            assert!(matches!(CopyEnd::parse(host), CopyEnd::Host(_)), "{host}");
        }
    }
}
