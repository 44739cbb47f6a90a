//! What a sandbox container is: image, limits, mounts, network, user — and its hash.
//!
//! A [`ContainerSpec`] carries the hardening defaults of the sandbox (uid 1000, 2 GiB without
//! swap, 2 CPUs, 512 pids, bridge network) so that a caller has to opt *out* of safety, never
//! in. [`ContainerSpec::spec_hash`] is what lease reuse compares: two executions may share an
//! idle container only when everything that shapes the container is equal. The environment is
//! deliberately not part of the spec: it is given per exec, so one container can serve
//! executions with different variables and none of them is baked into the container.
//!
//! Validation lives here too, because a spec that mounts the Docker socket (or a directory that
//! contains it) would hand the sandbox the host: such a spec is rejected before Docker sees it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::EngineError;

/// Default memory limit: 2 GiB (swap is disabled by setting memory-swap to the same value).
pub const DEFAULT_MEMORY_BYTES: i64 = 2 * 1024 * 1024 * 1024;
/// Default CPU limit: 2 CPUs, in units of 10⁻⁹ CPUs.
pub const DEFAULT_NANO_CPUS: i64 = 2_000_000_000;
/// Default limit on the number of processes (and threads) in the container.
pub const DEFAULT_PIDS_LIMIT: i64 = 512;
/// Default user: the `sandbox` user of the stigmer images, numeric so it needs no passwd entry.
pub const DEFAULT_USER: &str = "1000:1000";

/// The uid (and gid) of the sandbox user, `DEFAULT_USER` as a number.
pub const SANDBOX_UID: u32 = 1000;
/// Where the workspace is mounted and where commands run by default.
pub const WORKSPACE_DIR: &str = "/workspace";

/// Which network namespace the container gets. Never the host's: there is no variant for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    /// Docker's default bridge: the open network, opt-in.
    #[default]
    Bridge,
    /// Only a loopback interface: no traffic leaves the container.
    None,
    /// Only a loopback interface, and HTTP(S) to public hosts through the worker's egress
    /// proxy (module `egress`): the agent forwards `127.0.0.1:3128` to the proxy's socket.
    /// [`ContainerSpec::allow_net`] narrows it to the hosts listed.
    Public,
}

impl Network {
    /// The Docker `NetworkMode` string.
    #[must_use]
    pub fn as_docker_mode(self) -> &'static str {
        match self {
            Network::Bridge => "bridge",
            Network::None | Network::Public => "none",
        }
    }

    /// The posture's name (`bridge`, `none`, `public`), as the spec hash and users see it.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Network::Bridge => "bridge",
            Network::None => "none",
            Network::Public => "public",
        }
    }
}

impl std::str::FromStr for Network {
    type Err = EngineError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "bridge" => Ok(Network::Bridge),
            "none" => Ok(Network::None),
            "public" => Ok(Network::Public),
            other => Err(EngineError::InvalidSpec(format!(
                "network {other:?} is not allowed (public, none or bridge; never host)"
            ))),
        }
    }
}

/// A read-only bind mount of a host path (e.g. `~/.aws`) into the container.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CredentialMount {
    /// Host path (file or directory).
    pub source: PathBuf,
    /// Absolute path inside the container.
    pub target: String,
}

/// The shape of a sandbox container. Build one with [`ContainerSpec::new`] and the `with_*`
/// methods; every field not set keeps its hardened default.
///
/// ```
/// use stigmer_docker::{ContainerSpec, Network};
/// let spec = ContainerSpec::new("stigmer-sandbox-basic:local")
///     .with_network(Network::None)
///     .with_memory_bytes(256 * 1024 * 1024);
/// assert_eq!(spec.user, "1000:1000");
/// assert_ne!(spec.spec_hash(), ContainerSpec::new("stigmer-sandbox-basic:local").spec_hash());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerSpec {
    /// Image reference (tag or id). Passing the image id from
    /// [`crate::ImageInfo::id`] pins the version, so a rebuilt image never reuses an old
    /// container.
    pub image: String,
    /// `uid:gid` the keep-alive process and every exec run as.
    pub user: String,
    /// Memory limit in bytes; swap is disabled (memory-swap = memory).
    pub memory_bytes: i64,
    /// CPU limit in 10⁻⁹ CPUs.
    pub nano_cpus: i64,
    /// Maximum number of processes and threads.
    pub pids_limit: i64,
    /// Network namespace.
    pub network: Network,
    /// Host directory bind-mounted read-write at `/workspace`.
    pub workspace: Option<PathBuf>,
    /// Read-only bind mounts (credentials such as `~/.aws`, `~/.kube`), only when asked for.
    pub credential_mounts: Vec<CredentialMount>,
    /// Mount the root filesystem read-only (with a tmpfs on `/tmp`). Off by default: `pip`,
    /// `npm` and most tools write to `$HOME` and their caches, which is the sandbox's main job;
    /// the container is disposable and non-root, so a writable root harms nothing but itself.
    pub readonly_rootfs: bool,
    /// Whose container it is (a user, a CI run): containers are reused only by their owner.
    /// `None` shares it with every caller of the same spec (as before owners existed).
    pub owner: Option<String>,
    /// With [`Network::Public`]: the only hosts the proxy lets it reach (exact names, or
    /// `*.domain`); empty allows any public host.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_net: Vec<String>,
}

impl ContainerSpec {
    /// A spec for `image` with the hardened defaults.
    #[must_use]
    pub fn new(image: impl Into<String>) -> Self {
        ContainerSpec {
            image: image.into(),
            user: DEFAULT_USER.to_string(),
            memory_bytes: DEFAULT_MEMORY_BYTES,
            nano_cpus: DEFAULT_NANO_CPUS,
            pids_limit: DEFAULT_PIDS_LIMIT,
            network: Network::Bridge,
            workspace: None,
            credential_mounts: Vec::new(),
            readonly_rootfs: false,
            owner: None,
            allow_net: Vec::new(),
        }
    }

    /// Lets the container reach only these hosts through the proxy ([`Network::Public`]).
    #[must_use]
    pub fn with_allow_net(mut self, hosts: Vec<String>) -> Self {
        self.allow_net = hosts;
        self
    }

    /// What the egress proxy lets this container reach, when it has the proxy.
    #[must_use]
    pub fn egress_policy(&self) -> Option<crate::EgressPolicy> {
        (self.network == Network::Public).then(|| crate::EgressPolicy::from_allow(&self.allow_net))
    }

    /// Sets the owner: only an execution of the same owner reuses the container.
    #[must_use]
    pub fn with_owner(mut self, owner: impl Into<String>) -> Self {
        self.owner = Some(owner.into());
        self
    }

    /// Sets the network namespace.
    #[must_use]
    pub fn with_network(mut self, network: Network) -> Self {
        self.network = network;
        self
    }

    /// Sets the memory limit in bytes.
    #[must_use]
    pub fn with_memory_bytes(mut self, bytes: i64) -> Self {
        self.memory_bytes = bytes;
        self
    }

    /// Sets the CPU limit in 10⁻⁹ CPUs.
    #[must_use]
    pub fn with_nano_cpus(mut self, nano_cpus: i64) -> Self {
        self.nano_cpus = nano_cpus;
        self
    }

    /// Sets the pids limit.
    #[must_use]
    pub fn with_pids_limit(mut self, limit: i64) -> Self {
        self.pids_limit = limit;
        self
    }

    /// Sets the user (`uid:gid`).
    #[must_use]
    pub fn with_user(mut self, user: impl Into<String>) -> Self {
        self.user = user.into();
        self
    }

    /// Bind-mounts a host directory read-write at `/workspace`.
    #[must_use]
    pub fn with_workspace(mut self, dir: impl Into<PathBuf>) -> Self {
        self.workspace = Some(dir.into());
        self
    }

    /// Adds a read-only bind mount of `source` at `target`.
    #[must_use]
    pub fn with_credential_mount(
        mut self,
        source: impl Into<PathBuf>,
        target: impl Into<String>,
    ) -> Self {
        self.credential_mounts.push(CredentialMount {
            source: source.into(),
            target: target.into(),
        });
        self
    }

    /// Makes the root filesystem read-only (see the field's documentation for the trade-off).
    #[must_use]
    pub fn with_readonly_rootfs(mut self, readonly: bool) -> Self {
        self.readonly_rootfs = readonly;
        self
    }

    /// A hex sha256 over a canonical serialization of everything that shapes the container
    /// (image, user, limits, network, mounts, read-only root). Two specs with the same hash
    /// produce interchangeable containers; lease reuse compares it.
    #[must_use]
    pub fn spec_hash(&self) -> String {
        // A versioned, explicitly ordered form: adding a field to the struct must not silently
        // change (or fail to change) the hash of existing containers.
        let mut mounts: Vec<(String, String)> = self
            .credential_mounts
            .iter()
            .map(|m| (m.source.to_string_lossy().into_owned(), m.target.clone()))
            .collect();
        mounts.sort();
        let mut canonical = serde_json::json!({
            "v": 1,
            "image": self.image,
            "user": self.user,
            "memory_bytes": self.memory_bytes,
            "memory_swap_bytes": self.memory_bytes,
            "nano_cpus": self.nano_cpus,
            "pids_limit": self.pids_limit,
            "network": self.network.as_str(),
            "workspace": self.workspace.as_ref().map(|p| p.to_string_lossy().into_owned()),
            "credential_mounts": mounts,
            "readonly_rootfs": self.readonly_rootfs,
        });
        // Only when set, so the hash of an ownerless spec is what it always was.
        if let Some(owner) = &self.owner {
            canonical["owner"] = serde_json::json!(owner);
        }
        if !self.allow_net.is_empty() {
            canonical["allow_net"] = serde_json::json!(self.allow_net);
        }
        hex::encode(Sha256::digest(canonical.to_string().as_bytes()))
    }

    /// Checks the spec before Docker sees it: positive limits, a `uid:gid` user that is not
    /// root, absolute mount targets, existing mount sources, and no mount that exposes the
    /// Docker socket.
    pub fn validate(&self) -> Result<(), EngineError> {
        let bad = |m: String| Err(EngineError::InvalidSpec(m));
        if self.image.trim().is_empty() {
            return bad("the image is empty".into());
        }
        if self.memory_bytes < 6 * 1024 * 1024 {
            return bad(format!(
                "memory limit {} bytes is below Docker's minimum of 6 MiB",
                self.memory_bytes
            ));
        }
        if self.nano_cpus <= 0 {
            return bad(format!("CPU limit {} must be positive", self.nano_cpus));
        }
        if self.pids_limit <= 0 {
            return bad(format!("pids limit {} must be positive", self.pids_limit));
        }
        let user_ok = match self.user.split_once(':') {
            Some((u, g)) => is_nonroot_id(u) && g.parse::<u32>().is_ok(),
            None => is_nonroot_id(&self.user),
        };
        if !user_ok {
            return bad(format!(
                "user {:?} must be a numeric non-root uid or uid:gid (e.g. 1000:1000)",
                self.user
            ));
        }
        if !self.allow_net.is_empty() && self.network != Network::Public {
            return bad(format!(
                "an allow-list of hosts needs the public network posture (the proxy enforces \
                 it), not {}",
                self.network.as_str()
            ));
        }
        for host in &self.allow_net {
            crate::egress::check_allow_entry(host).map_err(EngineError::InvalidSpec)?;
        }
        let sockets = docker_socket_paths();
        if let Some(ws) = &self.workspace {
            check_mount_source(ws, "workspace", &sockets)?;
        }
        for m in &self.credential_mounts {
            check_mount_source(&m.source, "credential mount", &sockets)?;
            check_mount_target(&m.target)?;
        }
        Ok(())
    }
}

fn is_nonroot_id(s: &str) -> bool {
    matches!(s.parse::<u32>(), Ok(uid) if uid != 0)
}

fn check_mount_target(target: &str) -> Result<(), EngineError> {
    let p = Path::new(target);
    let ok = p.is_absolute()
        && target != "/"
        && !p
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
        && !target.contains(['\0', ',', '\n']);
    if ok {
        Ok(())
    } else {
        Err(EngineError::InvalidSpec(format!(
            "mount target {target:?} must be an absolute path other than / without `..`"
        )))
    }
}

/// Rejects a bind-mount source that is the Docker socket or a directory containing it
/// (mounting `/run` or `/` would expose the socket just as well).
fn check_mount_source(source: &Path, what: &str, sockets: &[PathBuf]) -> Result<(), EngineError> {
    let canonical = std::fs::canonicalize(source).map_err(|e| {
        EngineError::InvalidSpec(format!(
            "{what} source {} cannot be used: {e}",
            source.display()
        ))
    })?;
    let named_like_socket = canonical
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n == "docker.sock" || n == "containerd.sock");
    if named_like_socket || sockets.iter().any(|s| s.starts_with(&canonical)) {
        return Err(EngineError::InvalidSpec(format!(
            "{what} source {} is or contains the Docker socket; the sandbox never gets access \
             to the Docker engine",
            source.display()
        )));
    }
    Ok(())
}

/// The places a Docker (or containerd) socket lives on this host, canonicalized.
fn docker_socket_paths() -> Vec<PathBuf> {
    let mut candidates: Vec<PathBuf> = vec![
        "/var/run/docker.sock".into(),
        "/run/docker.sock".into(),
        "/run/containerd/containerd.sock".into(),
    ];
    if let Ok(host) = std::env::var("DOCKER_HOST")
        && let Some(path) = host.strip_prefix("unix://")
    {
        candidates.push(path.into());
    }
    if let Ok(dir) = std::env::var("XDG_RUNTIME_DIR") {
        candidates.push(Path::new(&dir).join("docker.sock"));
    }
    if let Ok(home) = std::env::var("HOME") {
        candidates.push(Path::new(&home).join(".docker/run/docker.sock"));
    }
    candidates
        .into_iter()
        .filter_map(|p| std::fs::canonicalize(&p).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_changes_with_what_shapes_the_container() {
        let base = ContainerSpec::new("img:1");
        let h = base.spec_hash();
        assert_eq!(h, ContainerSpec::new("img:1").spec_hash());
        assert_eq!(h.len(), 64);
        for other in [
            ContainerSpec::new("img:2"),
            base.clone().with_network(Network::None),
            base.clone().with_memory_bytes(1 << 30),
            base.clone().with_nano_cpus(1_000_000_000),
            base.clone().with_pids_limit(100),
            base.clone().with_user("1001:1001"),
            base.clone().with_workspace("/tmp"),
            base.clone()
                .with_credential_mount("/tmp", "/home/sandbox/.aws"),
            base.clone().with_readonly_rootfs(true),
            base.clone().with_owner("uid:1000"),
        ] {
            assert_ne!(other.spec_hash(), h, "{other:?}");
        }
    }

    #[test]
    fn mount_order_does_not_matter() {
        let a = ContainerSpec::new("i")
            .with_credential_mount("/a", "/x")
            .with_credential_mount("/b", "/y");
        let b = ContainerSpec::new("i")
            .with_credential_mount("/b", "/y")
            .with_credential_mount("/a", "/x");
        assert_eq!(a.spec_hash(), b.spec_hash());
    }

    #[test]
    fn rejects_root_and_bad_limits() {
        assert!(ContainerSpec::new("i").validate().is_ok());
        assert!(ContainerSpec::new("i").with_user("0").validate().is_err());
        assert!(ContainerSpec::new("i").with_user("0:0").validate().is_err());
        assert!(
            ContainerSpec::new("i")
                .with_user("root")
                .validate()
                .is_err()
        );
        assert!(
            ContainerSpec::new("i")
                .with_pids_limit(0)
                .validate()
                .is_err()
        );
        assert!(
            ContainerSpec::new("i")
                .with_memory_bytes(1024)
                .validate()
                .is_err()
        );
        assert!(ContainerSpec::new(" ").validate().is_err());
        assert!("host".parse::<Network>().is_err());
        assert_eq!("none".parse::<Network>().ok(), Some(Network::None));
    }

    #[test]
    fn rejects_mounts_exposing_the_socket() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("docker.sock");
        std::fs::write(&sock, b"").expect("write");
        let spec = ContainerSpec::new("i").with_credential_mount(&sock, "/run/x");
        assert!(matches!(spec.validate(), Err(EngineError::InvalidSpec(_))));

        // The real socket, and any directory above it.
        if Path::new("/var/run/docker.sock").exists() {
            for src in ["/var/run/docker.sock", "/var/run", "/run", "/"] {
                let spec = ContainerSpec::new("i").with_workspace(src);
                let err = spec.validate().expect_err(src);
                assert!(err.to_string().contains("Docker socket"), "{err}");
            }
        }
        let ok = ContainerSpec::new("i")
            .with_workspace(dir.path())
            .with_credential_mount(dir.path(), "/home/sandbox/.aws");
        assert!(ok.validate().is_ok());
        let rel = ContainerSpec::new("i").with_credential_mount(dir.path(), "rel/path");
        assert!(rel.validate().is_err());
        let missing = ContainerSpec::new("i").with_workspace("/definitely/not/here");
        assert!(missing.validate().is_err());
    }
}
