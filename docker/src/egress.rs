//! The sandbox's way out: an HTTP(S) proxy the worker runs for each container of the `public`
//! posture (and `--allow-net`).
//!
//! Such a container has no network interface but loopback. The worker binds a Unix socket in a
//! directory of its own (`<egress dir>/<container name>/proxy.sock`) and bind-mounts that
//! directory read-only at [`EGRESS_MOUNT`]. The agent (PID 1) forwards `127.0.0.1:3128` inside
//! the container to that socket, and the container's `http_proxy` / `https_proxy` point there,
//! so pip, npm, git and curl work unchanged. The directory is mounted rather than the socket, so
//! a worker that starts again binds a new socket the running container sees.
//!
//! The proxy takes `CONNECT host:port` and absolute-form `http://` requests. For each it:
//! 1. allows only ports 80 and 443, and under `--allow-net` only the listed hosts (exact, or
//!    `*.suffix` for any name below it), before anything is resolved;
//! 2. resolves the name once and refuses addresses no sandbox may reach: loopback, private
//!    ranges, link-local (cloud metadata at 169.254.169.254), shared and multicast addresses,
//!    and this host's own;
//! 3. connects to an address it checked, never to the name again (no second lookup an attacker's
//!    DNS could answer differently).
//!
//! A refusal is a 403 whose body says why and what to do, a warning in the worker's log, and a
//! notice kept for the execution's stderr ([`EgressProxy::take_notices`]).

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixListener, UnixStream};

use crate::EngineError;

/// Where the proxy's directory is mounted in the container.
pub const EGRESS_MOUNT: &str = "/run/stigmer/egress";
/// The socket's name in that directory.
const EGRESS_SOCKET: &str = "proxy.sock";
/// The variables that send a container's HTTP(S) through the proxy (lower and upper case, as
/// tools differ), and keep loopback off it.
#[must_use]
pub fn proxy_env() -> Vec<String> {
    let mut env = Vec::new();
    for key in ["http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"] {
        env.push(format!("{key}=http://{}", crate::agent::PROXY_LISTEN));
    }
    for key in ["no_proxy", "NO_PROXY"] {
        env.push(format!("{key}=localhost,127.0.0.1,::1"));
    }
    env
}
/// The container's egress policy (`public`, or `allow:` and the hosts), so that a worker that
/// did not create the container binds its proxy again with the same policy.
pub const LABEL_EGRESS: &str = "io.stigmer.egress";
/// The ports the proxy connects to.
pub const ALLOWED_PORTS: [u16; 2] = [80, 443];
/// At most this many `--allow-net` entries.
pub const MAX_ALLOW_ENTRIES: usize = 64;

/// A request head larger than this is refused (nothing legitimate needs more).
const MAX_HEAD: usize = 16 * 1024;
/// How long a client has to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a name may take to resolve, and an address to connect.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How old a proxy directory of no listed container must be before the sweep removes it.
const SWEEP_GRACE: Duration = Duration::from_secs(120);
/// Notices kept per container between two commands (the rest are counted).
const MAX_NOTICES: usize = 20;

/// What a container may reach through the proxy.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum EgressPolicy {
    /// Any public host, on ports 80 and 443.
    Public,
    /// Only these hosts (normalized by [`check_allow_entry`]), on ports 80 and 443.
    Allow(Vec<String>),
}

impl EgressPolicy {
    /// The policy for an allow-list: `Public` when it is empty.
    #[must_use]
    pub fn from_allow(hosts: &[String]) -> Self {
        if hosts.is_empty() {
            EgressPolicy::Public
        } else {
            EgressPolicy::Allow(hosts.to_vec())
        }
    }

    /// The container label's value.
    #[must_use]
    pub fn label(&self) -> String {
        match self {
            EgressPolicy::Public => "public".into(),
            EgressPolicy::Allow(hosts) => format!("allow:{}", hosts.join(",")),
        }
    }

    /// Reads a label written by [`EgressPolicy::label`].
    #[must_use]
    pub fn from_label(label: &str) -> Option<Self> {
        if label == "public" {
            return Some(EgressPolicy::Public);
        }
        let hosts: Vec<String> = label
            .strip_prefix("allow:")?
            .split(',')
            .map(check_allow_entry)
            .collect::<Result<_, _>>()
            .ok()?;
        (!hosts.is_empty()).then_some(EgressPolicy::Allow(hosts))
    }

    /// Whether the host (lowercase, no trailing dot) may be asked for.
    fn permits_host(&self, host: &str) -> bool {
        match self {
            EgressPolicy::Public => true,
            EgressPolicy::Allow(hosts) => {
                hosts.iter().any(|entry| match entry.strip_prefix("*.") {
                    Some(suffix) => host
                        .strip_suffix(suffix)
                        .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
                    None => entry == host,
                })
            }
        }
    }
}

/// Checks one `--allow-net` entry and returns it normalized (lowercase, no trailing dot): a
/// host name, `*.` and a domain, or an IP address.
pub fn check_allow_entry(raw: &str) -> Result<String, String> {
    let entry = raw.trim().trim_end_matches('.').to_ascii_lowercase();
    let name = entry.strip_prefix("*.").unwrap_or(&entry);
    let is_ip = entry.parse::<IpAddr>().is_ok();
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    let name_ok = name.len() <= 253 && name.split('.').all(label_ok);
    let wildcard_ok = !entry.starts_with("*.") || name.contains('.');
    if is_ip || (name_ok && wildcard_ok) {
        Ok(entry)
    } else {
        Err(format!(
            "{raw:?} is not a host: give a name (pypi.org), a wildcard for the names below a \
             domain (*.github.com, two labels at least), or an IP address; no scheme, port or \
             path"
        ))
    }
}

/// Checks a whole `--allow-net` list (comma-separated, at most [`MAX_ALLOW_ENTRIES`]).
pub fn parse_allow_list(raw: &str) -> Result<Vec<String>, String> {
    let mut hosts = Vec::new();
    for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let host = check_allow_entry(part)?;
        if !hosts.contains(&host) {
            hosts.push(host);
        }
    }
    if hosts.len() > MAX_ALLOW_ENTRIES {
        return Err(format!(
            "{} hosts listed; at most {MAX_ALLOW_ENTRIES} are allowed (use *.domain for many \
             names below one domain)",
            hosts.len()
        ));
    }
    Ok(hosts)
}

/// Why a sandbox may not reach this address, or `None` when it may.
#[must_use]
pub fn blocked_address(ip: IpAddr, host_addresses: &[IpAddr]) -> Option<&'static str> {
    let ip = match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    };
    if host_addresses.contains(&ip) {
        return Some("an address of the worker's own host");
    }
    match ip {
        IpAddr::V4(v4) => blocked_v4(v4),
        IpAddr::V6(v6) => blocked_v6(v6),
    }
}

fn blocked_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    if ip.is_loopback() {
        Some("a loopback address")
    } else if ip.is_link_local() {
        Some("a link-local address (cloud metadata lives there)")
    } else if ip.is_private() {
        Some("a private address")
    } else if a == 100 && (64..128).contains(&b) {
        Some("a shared (carrier-grade NAT) address")
    } else if ip.is_unspecified() || a == 0 {
        Some("an unspecified address")
    } else if ip.is_multicast() || ip.is_broadcast() || a >= 240 {
        Some("a multicast, broadcast or reserved address")
    } else if a == 192 && b == 0 && ip.octets()[2] == 0 {
        Some("an IETF protocol address")
    } else {
        None
    }
}

fn blocked_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let first = ip.segments()[0];
    if ip.is_loopback() {
        Some("a loopback address")
    } else if ip.is_unspecified() {
        Some("an unspecified address")
    } else if (first & 0xffc0) == 0xfe80 {
        Some("a link-local address")
    } else if (first & 0xfe00) == 0xfc00 {
        Some("a private (unique local) address")
    } else if ip.is_multicast() {
        Some("a multicast address")
    } else if ip.segments()[..6] == [0, 0, 0, 0, 0, 0] {
        Some("an IPv4-compatible address")
    } else {
        None
    }
}

/// The addresses of this host's interfaces (the bridge gateway among them), which no sandbox
/// may reach through the proxy.
fn host_addresses() -> Vec<IpAddr> {
    let mut found = Vec::new();
    // /proc/net/fib_trie lists each local IPv4 address as a `/32 host LOCAL` leaf.
    if let Ok(trie) = std::fs::read_to_string("/proc/net/fib_trie") {
        let mut last: Option<Ipv4Addr> = None;
        for line in trie.lines() {
            let line = line.trim();
            if let Some(addr) = line.strip_prefix("|-- ") {
                last = addr.trim().parse().ok();
            } else if line.contains("/32 host LOCAL")
                && let Some(ip) = last
                && !found.contains(&IpAddr::V4(ip))
            {
                found.push(IpAddr::V4(ip));
            }
        }
    }
    // /proc/net/if_inet6: one address per line, 32 hex digits first.
    if let Ok(list) = std::fs::read_to_string("/proc/net/if_inet6") {
        for line in list.lines() {
            let Some(hex) = line.split_whitespace().next().filter(|h| h.len() == 32) else {
                continue;
            };
            if let Ok(bits) = u128::from_str_radix(hex, 16) {
                found.push(IpAddr::V6(Ipv6Addr::from(bits)));
            }
        }
    }
    found
}

/// The proxy of one container: its policy and what it refused since the last command ended.
struct Listener {
    policy: EgressPolicy,
    notices: Arc<Mutex<Notices>>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct Notices {
    kept: Vec<String>,
    dropped: usize,
}

impl Notices {
    fn push(&mut self, line: String) {
        if self.kept.len() < MAX_NOTICES {
            self.kept.push(line);
        } else {
            self.dropped += 1;
        }
    }
}

/// The worker's egress proxies, one per container it serves, under one directory of this host.
#[derive(Debug)]
pub(crate) struct EgressProxy {
    root: PathBuf,
    listeners: Mutex<HashMap<String, Listener>>,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl EgressProxy {
    pub(crate) fn new(root: PathBuf) -> Self {
        EgressProxy {
            root,
            listeners: Mutex::default(),
        }
    }

    /// The host directory mounted into container `name`: a short hash of the name, so the
    /// socket's path stays within the 108 bytes a Unix socket's address holds.
    pub(crate) fn dir_for(&self, name: &str) -> PathBuf {
        self.root.join(dir_name(name))
    }

    /// Makes sure this process serves container `name`'s socket with `policy`, binding it
    /// afresh when it does not (a new container, or one this worker meets after a restart).
    /// Returns the directory to mount.
    pub(crate) fn listen(&self, name: &str, policy: &EgressPolicy) -> io::Result<PathBuf> {
        let dir = self.dir_for(name);
        let mut listeners = self.listeners.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(l) = listeners.get(name)
            && l.policy == *policy
            && !l.task.is_finished()
            && dir.join(EGRESS_SOCKET).exists()
        {
            return Ok(dir);
        }
        std::fs::create_dir_all(&self.root)?;
        set_mode(&self.root, 0o711)?;
        std::fs::create_dir_all(&dir)?;
        set_mode(&dir, 0o755)?;
        let path = dir.join(EGRESS_SOCKET);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let listener = UnixListener::bind(&path)?;
        // The container's user (uid 1000) connects; the directory above is the worker's own.
        set_mode(&path, 0o666)?;
        let notices = Arc::new(Mutex::new(Notices::default()));
        let task = tokio::spawn(serve(
            listener,
            policy.clone(),
            Arc::clone(&notices),
            name.to_string(),
        ));
        if let Some(old) = listeners.insert(
            name.to_string(),
            Listener {
                policy: policy.clone(),
                notices,
                task,
            },
        ) {
            old.task.abort();
        }
        Ok(dir)
    }

    /// Whether this process serves container `name`.
    pub(crate) fn serves(&self, name: &str) -> bool {
        let listeners = self.listeners.lock().unwrap_or_else(|p| p.into_inner());
        listeners.get(name).is_some_and(|l| !l.task.is_finished())
    }

    /// What the proxy refused for container `name` since the last call, as lines for the
    /// execution's stderr.
    pub(crate) fn take_notices(&self, name: &str) -> Vec<String> {
        let listeners = self.listeners.lock().unwrap_or_else(|p| p.into_inner());
        let Some(l) = listeners.get(name) else {
            return Vec::new();
        };
        let mut n = l.notices.lock().unwrap_or_else(|p| p.into_inner());
        let mut lines = std::mem::take(&mut n.kept);
        if n.dropped > 0 {
            lines.push(format!(
                "stigmer: egress: {} more requests refused (see the worker's log)",
                n.dropped
            ));
            n.dropped = 0;
        }
        lines
    }

    /// Stops serving container `name` and removes its directory.
    pub(crate) fn forget(&self, name: &str) {
        let removed = {
            let mut listeners = self.listeners.lock().unwrap_or_else(|p| p.into_inner());
            listeners.remove(name)
        };
        if let Some(l) = removed {
            l.task.abort();
        }
        let dir = self.dir_for(name);
        if dir.starts_with(&self.root) && dir != self.root {
            let _ = std::fs::remove_dir_all(dir);
        }
    }

    /// Removes the directories of containers not in `live` (their container is gone).
    pub(crate) fn sweep(&self, live: &[String]) {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return;
        };
        let live: Vec<String> = live.iter().map(|n| dir_name(n)).collect();
        for entry in entries.flatten() {
            let dir = entry.file_name().to_string_lossy().into_owned();
            // A directory made moments ago may be for a container being created right now.
            let young = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_none_or(|age| age < SWEEP_GRACE);
            if live.contains(&dir) || young {
                continue;
            }
            let mut listeners = self.listeners.lock().unwrap_or_else(|p| p.into_inner());
            listeners.retain(|name, l| {
                let gone = dir_name(name) == dir;
                if gone {
                    l.task.abort();
                }
                !gone
            });
            drop(listeners);
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

impl crate::Engine {
    /// For a new container of the `public` posture: the proxy's directory to mount, served
    /// from now on, and the label that names its policy. `None` for any other posture.
    pub(crate) fn egress_for_new(
        &self,
        spec: &crate::ContainerSpec,
        name: &str,
        agent: bool,
        labels: &mut HashMap<String, String>,
    ) -> Result<Option<PathBuf>, EngineError> {
        let Some(policy) = spec.egress_policy() else {
            return Ok(None);
        };
        let Some(proxy) = &self.egress else {
            return Err(EngineError::InvalidSpec(
                "the public network posture needs the worker's egress proxy, and this engine \
                 has no directory for its sockets: choose the network none or bridge"
                    .into(),
            ));
        };
        if !agent {
            return Err(EngineError::InvalidSpec(
                "the public network posture needs the sandbox agent in the container (it \
                 forwards the proxy), and it is off here (STIGMER_SANDBOX_AGENT=false, a \
                 read-only root file system, or an image it cannot run in): choose --network \
                 none or bridge, or turn the agent on"
                    .into(),
            ));
        }
        labels.insert(LABEL_EGRESS.into(), policy.label());
        let dir = proxy.listen(name, &policy).map_err(|e| {
            EngineError::Unexpected(format!(
                "could not start the egress proxy for container {name}: {e}"
            ))
        })?;
        Ok(Some(dir))
    }

    /// Remembers that container `id` is `name`, with a proxy (`Some`) or without.
    pub(crate) fn note_egress(&self, id: &str, name: Option<&str>) {
        if self.egress.is_some() {
            let mut names = self.egress_names.lock().unwrap_or_else(|p| p.into_inner());
            names.insert(id.to_string(), name.map(str::to_string));
        }
    }

    /// Stops serving container `name`'s proxy and removes its directory.
    pub(crate) fn forget_egress(&self, name: &str) {
        if let Some(proxy) = &self.egress {
            proxy.forget(name);
        }
    }

    /// The container was removed: its proxy goes too.
    pub(crate) fn forget_egress_of(&self, id: &str) {
        let name = {
            let mut names = self.egress_names.lock().unwrap_or_else(|p| p.into_inner());
            names.remove(id).flatten()
        };
        if let Some(name) = name {
            self.forget_egress(&name);
        }
    }

    /// Before a command: makes sure this process serves the container's proxy (a container
    /// made by another worker, or before this one started again), and returns the container's
    /// name when it has one. One inspection per container and process; a lookup after that.
    pub(crate) async fn serve_egress(&self, container_id: &str) -> Option<String> {
        let proxy = self.egress.as_ref()?;
        let known = {
            let names = self.egress_names.lock().unwrap_or_else(|p| p.into_inner());
            names.get(container_id).cloned()
        };
        match known {
            Some(None) => return None,
            Some(Some(name)) if proxy.serves(&name) => return Some(name),
            _ => {}
        }
        let inspect = self
            .docker
            .inspect_container(container_id, None)
            .await
            .ok()?;
        let name = inspect
            .name
            .as_deref()
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_string();
        let policy = inspect
            .config
            .and_then(|c| c.labels)
            .and_then(|l| l.get(LABEL_EGRESS).cloned())
            .and_then(|label| EgressPolicy::from_label(&label));
        let Some(policy) = policy.filter(|_| !name.is_empty()) else {
            self.note_egress(container_id, None);
            return None;
        };
        if let Err(e) = proxy.listen(&name, &policy) {
            tracing::warn!(container = %container_id, error = %e, "could not serve the container's egress proxy; its requests fail");
            return None;
        }
        self.note_egress(container_id, Some(&name));
        Some(name)
    }

    /// What the proxy refused for container `name` since the last command.
    pub(crate) fn egress_notices(&self, name: &str) -> Vec<String> {
        self.egress
            .as_ref()
            .map(|p| p.take_notices(name))
            .unwrap_or_default()
    }

    /// Removes the proxy directories of containers that no longer exist (`live`: the names of
    /// the stigmer containers the engine still has). The reaper calls it.
    pub fn sweep_egress(&self, live: &[String]) {
        if let Some(proxy) = &self.egress {
            proxy.sweep(live);
        }
    }
}

fn dir_name(container: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(&Sha256::digest(container.as_bytes())[..8])
}

fn set_mode(path: &Path, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

async fn serve(
    listener: UnixListener,
    policy: EgressPolicy,
    notices: Arc<Mutex<Notices>>,
    container: String,
) {
    let policy = Arc::new(policy);
    let container: Arc<str> = container.into();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(container = %container, error = %e, "egress proxy: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let policy = Arc::clone(&policy);
        let notices = Arc::clone(&notices);
        let container = Arc::clone(&container);
        tokio::spawn(async move {
            if let Err(refusal) = handle(stream, &policy).await
                && let Some(line) = refusal
            {
                tracing::warn!(container = %container, "{line}");
                notices.lock().unwrap_or_else(|p| p.into_inner()).push(line);
            }
        });
    }
}

/// A request the proxy will carry out.
struct Target {
    host: String,
    port: u16,
    /// `CONNECT` (a tunnel) or a plain HTTP request to pass on.
    connect: bool,
}

/// Serves one client connection. `Err(Some(notice))` is a refusal to report; `Err(None)` a
/// connection that ended without a request worth reporting.
async fn handle(mut client: UnixStream, policy: &EgressPolicy) -> Result<(), Option<String>> {
    let (head, rest) = match tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut client)).await {
        Ok(Ok(Some(read))) => read,
        Ok(Ok(None)) | Ok(Err(_)) | Err(_) => return Err(None),
    };
    let (target, forward_head) = match parse_head(&head) {
        Ok(parsed) => parsed,
        Err(why) => return refuse(&mut client, 400, &why).await,
    };
    let what = format!("{}:{}", target.host, target.port);
    if !ALLOWED_PORTS.contains(&target.port) {
        let why = format!("{what} refused: only ports 80 and 443 are allowed through the proxy");
        return refuse(&mut client, 403, &why).await;
    }
    if !policy.permits_host(&target.host) {
        let why = match policy {
            EgressPolicy::Allow(hosts) => format!(
                "{what} refused: {} is not in --allow-net ({}); add it to --allow-net \
                 (STIGMER_SANDBOX_ALLOW_NET) to reach it",
                target.host,
                hosts.join(",")
            ),
            EgressPolicy::Public => format!("{what} refused"),
        };
        return refuse(&mut client, 403, &why).await;
    }
    let addresses = match resolve(&target).await {
        Ok(a) => a,
        Err(why) => return refuse(&mut client, 502, &format!("{what}: {why}")).await,
    };
    let own = host_addresses();
    let mut allowed = Vec::new();
    let mut blocked = None;
    for addr in addresses {
        match blocked_address(addr.ip(), &own) {
            Some(reason) => blocked = Some((addr.ip(), reason)),
            None => allowed.push(addr),
        }
    }
    if let Some((ip, reason)) = blocked {
        // A name that resolves to any blocked address is refused whole: it was made to.
        let resolved = if target.host.parse::<IpAddr>().is_ok() {
            format!("{ip} is")
        } else {
            format!("it resolves to {ip},")
        };
        let why = format!(
            "{what} refused: {resolved} {reason}, which a sandbox may not reach (use --network \
             bridge for an open network)"
        );
        return refuse(&mut client, 403, &why).await;
    }
    let mut upstream = None;
    let mut last_error = String::from("no address");
    for addr in allowed {
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => {
                upstream = Some(s);
                break;
            }
            Ok(Err(e)) => last_error = e.to_string(),
            Err(_) => last_error = format!("no answer within {}s", CONNECT_TIMEOUT.as_secs()),
        }
    }
    let Some(mut upstream) = upstream else {
        let why = format!("{what}: could not connect ({last_error})");
        let _ = reply(&mut client, 502, &why).await;
        return Err(None);
    };
    let _ = upstream.set_nodelay(true);
    let sent = if target.connect {
        client
            .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
            .await
    } else {
        upstream.write_all(&forward_head).await
    };
    if sent.is_err() || (!rest.is_empty() && upstream.write_all(&rest).await.is_err()) {
        return Err(None);
    }
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
    Ok(())
}

async fn refuse(client: &mut UnixStream, status: u16, why: &str) -> Result<(), Option<String>> {
    let _ = reply(client, status, why).await;
    Err(Some(format!("stigmer: egress: {why}")))
}

async fn reply(client: &mut UnixStream, status: u16, why: &str) -> io::Result<()> {
    let reason = match status {
        400 => "Bad Request",
        403 => "Forbidden",
        _ => "Bad Gateway",
    };
    let body = format!("stigmer: {why}\n");
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    client.write_all(response.as_bytes()).await?;
    client.shutdown().await
}

/// Reads up to the end of the request head; returns the head and what came after it.
async fn read_head(client: &mut UnixStream) -> io::Result<Option<(Vec<u8>, Vec<u8>)>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return Ok(Some((buf, rest)));
        }
        if buf.len() > MAX_HEAD {
            return Ok(Some((buf, Vec::new())));
        }
    }
}

/// Reads the request line and, for plain HTTP, rewrites the head for the origin server:
/// origin-form target, no `Proxy-*` headers, `Connection: close` (so one connection carries one
/// checked request).
fn parse_head(head: &[u8]) -> Result<(Target, Vec<u8>), String> {
    if head.len() > MAX_HEAD {
        return Err(format!("request head larger than {MAX_HEAD} bytes"));
    }
    let text = std::str::from_utf8(head).map_err(|_| "request head is not UTF-8".to_string())?;
    let mut lines = text.split("\r\n");
    let first = lines.next().unwrap_or_default();
    let mut words = first.split(' ');
    let (Some(method), Some(uri), Some(version), None) =
        (words.next(), words.next(), words.next(), words.next())
    else {
        return Err("malformed request line".into());
    };
    if !version.starts_with("HTTP/1.") {
        return Err(format!("{version} is not spoken here; HTTP/1.x only"));
    }
    if method.eq_ignore_ascii_case("CONNECT") {
        let (host, port) = split_host_port(uri, None)?;
        return Ok((
            Target {
                host,
                port,
                connect: true,
            },
            Vec::new(),
        ));
    }
    let Some(after) = uri.strip_prefix("http://") else {
        return Err(format!(
            "{method} {uri}: a proxy request names an http:// URL (https goes through CONNECT)"
        ));
    };
    let (authority, path) = match after.find('/') {
        Some(i) => (&after[..i], &after[i..]),
        None => (after, "/"),
    };
    let authority = authority.rsplit('@').next().unwrap_or(authority);
    let (host, port) = split_host_port(authority, Some(80))?;
    let mut out = format!("{method} {path} {version}\r\n");
    for line in lines.filter(|l| !l.is_empty()) {
        let name = line.split(':').next().unwrap_or_default().trim();
        if name.eq_ignore_ascii_case("connection")
            || name.eq_ignore_ascii_case("keep-alive")
            || name.to_ascii_lowercase().starts_with("proxy-")
        {
            continue;
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str("Connection: close\r\n\r\n");
    Ok((
        Target {
            host,
            port,
            connect: false,
        },
        out.into_bytes(),
    ))
}

/// `host:port`, `[v6]:port`, or a bare host when `default_port` is given.
fn split_host_port(authority: &str, default_port: Option<u16>) -> Result<(String, u16), String> {
    let bad = || format!("{authority:?} is not host:port");
    let (host, port) = if let Some(inner) = authority.strip_prefix('[') {
        let (h, after) = inner.split_once(']').ok_or_else(bad)?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err(bad()),
        };
        (h, port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    let port = match port {
        Some(p) => p.parse::<u16>().map_err(|_| bad())?,
        None => default_port.ok_or_else(bad)?,
    };
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    if host.is_empty() || host.contains(['/', ' ', '\\']) {
        return Err(bad());
    }
    Ok((host, port))
}

async fn resolve(target: &Target) -> Result<Vec<SocketAddr>, String> {
    if let Ok(ip) = target.host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, target.port)]);
    }
    let lookup = tokio::net::lookup_host((target.host.as_str(), target.port));
    match tokio::time::timeout(RESOLVE_TIMEOUT, lookup).await {
        Ok(Ok(addrs)) => {
            let addrs: Vec<SocketAddr> = addrs.collect();
            if addrs.is_empty() {
                Err("the name resolves to no address".into())
            } else {
                Ok(addrs)
            }
        }
        Ok(Err(e)) => Err(format!("could not resolve the name ({e})")),
        Err(_) => Err(format!(
            "the name did not resolve within {}s",
            RESOLVE_TIMEOUT.as_secs()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_a_sandbox_may_not_reach_are_named() {
        let own = [IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7))];
        for blocked in [
            "127.0.0.1",
            "169.254.169.254",
            "10.1.2.3",
            "172.17.0.1",
            "192.168.1.1",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:169.254.169.254",
            "::ffff:127.0.0.1",
            "203.0.113.7",
        ] {
            let ip: IpAddr = blocked.parse().unwrap();
            assert!(
                blocked_address(ip, &own).is_some(),
                "{blocked} must be refused"
            );
        }
        for public in ["151.101.0.223", "203.0.113.80", "2a04:4e42::223", "8.8.8.8"] {
            let ip: IpAddr = public.parse().unwrap();
            assert_eq!(blocked_address(ip, &own), None, "{public} is public");
        }
    }

    #[test]
    fn allow_list_matches_exact_names_and_names_below_a_wildcard() {
        let policy = EgressPolicy::Allow(parse_allow_list("PyPI.org., *.github.com").unwrap());
        assert!(policy.permits_host("pypi.org"));
        assert!(policy.permits_host("api.github.com"));
        assert!(policy.permits_host("a.b.github.com"));
        assert!(!policy.permits_host("github.com"));
        assert!(!policy.permits_host("evilgithub.com"));
        assert!(!policy.permits_host("pypi.org.evil.com"));
        assert!(!policy.permits_host("files.pythonhosted.org"));
        assert!(EgressPolicy::Public.permits_host("anything.example"));
        assert_eq!(
            EgressPolicy::from_label(&policy.label()),
            Some(policy.clone())
        );
        assert_eq!(
            EgressPolicy::from_label("public"),
            Some(EgressPolicy::Public)
        );
        for bad in [
            "https://pypi.org",
            "pypi.org:443",
            "*.com",
            "a b",
            "*",
            "pypi.org/simple",
        ] {
            assert!(parse_allow_list(bad).is_err(), "{bad} must be refused");
        }
    }

    #[test]
    fn requests_are_read_and_plain_http_is_rewritten_for_the_origin() {
        let (t, _) =
            parse_head(b"CONNECT pypi.org:443 HTTP/1.1\r\nHost: pypi.org:443\r\n\r\n").unwrap();
        assert!(t.connect && t.host == "pypi.org" && t.port == 443);
        let (t, _) = parse_head(b"CONNECT [::1]:443 HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 443));
        let head = b"GET http://u:p@Example.com/a?b HTTP/1.1\r\nHost: example.com\r\n\
                     Proxy-Connection: keep-alive\r\nProxy-Authorization: x\r\nAccept: */*\r\n\r\n";
        let (t, out) = parse_head(head).unwrap();
        assert!(!t.connect && t.host == "example.com" && t.port == 80);
        let out = String::from_utf8(out).unwrap();
        assert_eq!(
            out,
            "GET /a?b HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\nConnection: close\r\n\r\n"
        );
        assert!(parse_head(b"GET /local HTTP/1.1\r\n\r\n").is_err());
        assert!(parse_head(b"CONNECT pypi.org HTTP/1.1\r\n\r\n").is_err());
        assert!(parse_head(b"GARBAGE\r\n\r\n").is_err());
    }

    #[test]
    fn the_agent_and_the_worker_name_the_same_socket() {
        assert_eq!(
            crate::agent::EGRESS_SOCKET_PATH,
            format!("{EGRESS_MOUNT}/{EGRESS_SOCKET}")
        );
    }

    #[test]
    fn this_hosts_own_addresses_are_found() {
        let own = host_addresses();
        assert!(
            own.contains(&IpAddr::V4(Ipv4Addr::LOCALHOST)),
            "loopback is an address of every host: {own:?}"
        );
    }
}
