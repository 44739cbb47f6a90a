//! Sessions (docs/sessions.md): starting, finding, ending and reaping them. The store is the
//! truth, so `session start`, `list`, `show` and `end` work on it directly, as `executions`
//! does; only a command in a session goes through the daemon, which holds the session's busy
//! marker for it.

use crate::cli::UsageError;
use anyhow::Result;
use stigmer_activities::sandbox::SandboxBackend;
use stigmer_activities::store::{NewSession, SessionRecord, Store, now_ms};
use stigmer_workflows::SandboxSpec;

/// The mode a session runs its commands in.
pub const SESSION_MODES: &str = "sandbox or local";

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
    /// The sandbox spec of a sandbox session; `None` for a local one.
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
            mode: if start.sandbox.is_some() {
                "sandbox"
            } else {
                "local"
            }
            .into(),
            spec,
            ttl_secs: start.ttl_secs,
            creator: start.creator,
        })
        .await?;
    find_session(store, &id).await
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

/// The sandbox spec a sandbox session's commands run with.
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
    id_or_name: &str,
    reason: &str,
) -> Result<(SessionRecord, Vec<String>)> {
    let live = find_session(store, id_or_name).await?;
    store.end_session(&live.id, reason).await?;
    let removed = remove_containers(store, &live).await?;
    Ok((session(store, &live.id).await?, removed))
}

async fn remove_containers(store: &Store, s: &SessionRecord) -> Result<Vec<String>> {
    if s.mode != "sandbox" {
        return Ok(Vec::new());
    }
    let backend = SandboxBackend::new(store.clone(), "stigmer-session".into());
    Ok(backend.remove_session_containers(&s.id).await?)
}

/// One pass of the session reaper: ends the sessions idle past their TTL and removes their
/// containers. Returns the ids ended.
pub async fn reap_sessions(store: &Store) -> Result<Vec<String>> {
    let mut ended = Vec::new();
    for s in store.expired_sessions(now_ms()).await? {
        if store.end_session(&s.id, "idle past its TTL").await? {
            if let Err(e) = remove_containers(store, &s).await {
                tracing::warn!("could not remove the container of session {}: {e:#}", s.id);
            }
            ended.push(s.id);
        }
    }
    Ok(ended)
}
