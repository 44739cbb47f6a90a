//! Trust for project policies: a project's `.stigmer/policy.toml` comes with the repository, so a
//! cloned repository could bring rules that make `curl … | sh` run on the host. Such a file is
//! obeyed only once the user trusts it, as `direnv allow` or an editor's workspace trust ask.
//!
//! The trust store is a small TOML file in the user's config directory (usually
//! `~/.config/stigmer/trusted-policies.toml`; the caller passes its path). It records, for each
//! trusted project policy, where it is (the project directory made canonical, then
//! `.stigmer/policy.toml`) and the sha256 of its content. A file whose content changed, or the
//! same content at another place, is not trusted until trusted again. The user's own policy
//! file is always trusted: it is the user's.
//!
//! ```
//! use stigmer_automode::{Policy, TrustStore};
//! # let tmp = tempfile::tempdir().unwrap();
//! # let project = tmp.path().join("project");
//! # std::fs::create_dir_all(project.join(".stigmer")).unwrap();
//! # std::fs::write(project.join(".stigmer/policy.toml"),
//! #     "[[rule]]\nprefix = \"npm install\"\ndecision = \"local\"\n").unwrap();
//! let store_path = tmp.path().join("config/stigmer/trusted-policies.toml");
//! let mut store = TrustStore::load(&store_path).unwrap();
//!
//! // Untrusted: the project's rules are ignored, and the policy says so.
//! let policy = Policy::load_trusted(&project, None, &store).unwrap();
//! assert!(policy.rules().is_empty());
//! assert_eq!(policy.notices().len(), 1);
//!
//! // `stigmer policy trust DIR`:
//! store.trust(&project).unwrap();
//! let policy = Policy::load_trusted(&project, None, &store).unwrap();
//! assert_eq!(policy.rules().len(), 1);
//! assert!(policy.notices().is_empty());
//! ```

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Where a project's policy file is, relative to the project directory.
pub const PROJECT_POLICY: &str = ".stigmer/policy.toml";

/// The usual place of the trust store, given the user's home directory:
/// `~/.config/stigmer/trusted-policies.toml`.
#[must_use]
pub fn default_trust_store_path(home: &Path) -> PathBuf {
    home.join(".config")
        .join("stigmer")
        .join("trusted-policies.toml")
}

/// One trusted project policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustedPolicy {
    /// The policy file: the canonical project directory joined with `.stigmer/policy.toml`.
    pub path: PathBuf,
    /// The sha256 of the file's content when it was trusted, in lowercase hex.
    pub sha256: String,
}

/// The user's record of trusted project policies (see the module docs).
#[derive(Clone, Debug, Default)]
pub struct TrustStore {
    path: PathBuf,
    entries: Vec<TrustedPolicy>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoreFile {
    #[serde(default)]
    policy: Vec<TrustedPolicy>,
}

/// Why the trust store, or a policy being trusted, cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// The trust store exists but could not be read.
    #[error("could not read the trust store {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The trust store is not what stigmer writes.
    #[error(
        "the trust store {} is not valid ({problem}); fix it, or delete it and trust your project policies again with `stigmer policy trust DIR`",
        .path.display()
    )]
    Malformed { path: PathBuf, problem: String },
    /// The trust store could not be written.
    #[error("could not save the trust store {}: {source}", .path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The directory has no project policy to trust.
    #[error("there is no project policy at {}: nothing to trust", .path.display())]
    NoPolicy { path: PathBuf },
    /// The project directory or its policy could not be read.
    #[error("could not read {}: {source}", .path.display())]
    Policy {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The project policy is not a valid policy: trusting it would not make it work.
    #[error("not trusted: {0}")]
    Invalid(#[from] crate::PolicyError),
}

/// Whether a project policy file may be obeyed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Trust {
    /// Trusted, with this content.
    Trusted,
    /// Never trusted at this place.
    NotTrusted,
    /// Trusted once, but its content changed since.
    Changed,
    /// The same content is trusted at another place (a copy, or the project moved).
    TrustedElsewhere(PathBuf),
}

impl fmt::Display for Trust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Trusted => f.write_str("trusted"),
            Self::NotTrusted => f.write_str("not trusted"),
            Self::Changed => f.write_str("changed since it was trusted"),
            Self::TrustedElsewhere(p) => {
                write!(f, "trusted only at another path ({})", p.display())
            }
        }
    }
}

/// A project policy that was ignored, with why and what to do; shown by `run` (on stderr) and
/// `explain`. Its `Display` is one sentence for people.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyNotice {
    /// The project directory (what to pass to `stigmer policy trust`).
    pub dir: PathBuf,
    /// The ignored policy file.
    pub file: PathBuf,
    /// Why it was ignored (never [`Trust::Trusted`]).
    pub trust: Trust,
}

impl fmt::Display for PolicyNotice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ignored the project policy {}: it is {}; read it, then run `stigmer policy trust {}` to obey it",
            self.file.display(),
            self.trust,
            self.dir.display()
        )
    }
}

/// A policy file that applies to a directory, for `stigmer policy show`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyFileStatus {
    pub path: PathBuf,
    /// The user's own file (always trusted) rather than the project's.
    pub user: bool,
    /// Whether the file exists (a missing file applies no rules).
    pub exists: bool,
    /// For the project's file: whether it is trusted. The user's file is [`Trust::Trusted`].
    pub trust: Trust,
}

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The place a project's policy is recorded under: the canonical project directory joined with
/// `.stigmer/policy.toml` (the file itself is not resolved, so a link to a trusted file elsewhere
/// is a new place).
pub(crate) fn policy_location(dir: &Path) -> Result<PathBuf, TrustError> {
    let canonical = std::fs::canonicalize(dir).map_err(|source| TrustError::Policy {
        path: dir.to_path_buf(),
        source,
    })?;
    Ok(canonical.join(PROJECT_POLICY))
}

impl TrustStore {
    /// Reads the trust store at `path`; a missing file is an empty store.
    ///
    /// # Errors
    /// [`TrustError::Read`] if the file exists but cannot be read, [`TrustError::Malformed`]
    /// (saying what is wrong and what to do) if it is not a trust store.
    pub fn load(path: &Path) -> Result<Self, TrustError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Self {
                    path: path.to_path_buf(),
                    entries: Vec::new(),
                });
            }
            Err(source) => {
                return Err(TrustError::Read {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        let malformed = |problem: String| TrustError::Malformed {
            path: path.to_path_buf(),
            problem,
        };
        let file: StoreFile = toml::from_str(&text).map_err(|e| {
            let first = e.message().lines().next().unwrap_or("invalid TOML");
            let line = e.span().map_or(1, |s| {
                text.get(..s.start)
                    .map_or(1, |t| t.matches('\n').count() + 1)
            });
            malformed(format!("line {line}: {first}"))
        })?;
        for entry in &file.policy {
            if !entry.path.is_absolute() {
                return Err(malformed(format!(
                    "{} is not an absolute path",
                    entry.path.display()
                )));
            }
            if entry.sha256.len() != 64 || !entry.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(malformed(format!(
                    "the sha256 of {} is not 64 hex digits",
                    entry.path.display()
                )));
            }
        }
        Ok(Self {
            path: path.to_path_buf(),
            entries: file.policy,
        })
    }

    /// The file this store is read from and saved to.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every trusted project policy.
    #[must_use]
    pub fn entries(&self) -> &[TrustedPolicy] {
        &self.entries
    }

    /// Trusts the project policy of `dir` as it is now (`stigmer policy trust DIR`), replacing
    /// any earlier trust at the same place, and saves the store.
    ///
    /// # Errors
    /// No policy in `dir` ([`TrustError::NoPolicy`]), a policy that cannot be read or is not
    /// valid (it would not work if trusted), or a store that cannot be saved.
    pub fn trust(&mut self, dir: &Path) -> Result<TrustedPolicy, TrustError> {
        let location = policy_location(dir)?;
        let bytes = match std::fs::read(&location) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(TrustError::NoPolicy { path: location });
            }
            Err(source) => {
                return Err(TrustError::Policy {
                    path: location,
                    source,
                });
            }
        };
        let text = String::from_utf8_lossy(&bytes);
        crate::Policy::builtin().add_file(&location, &text)?;
        let entry = TrustedPolicy {
            path: location,
            sha256: sha256_hex(&bytes),
        };
        self.entries.retain(|e| e.path != entry.path);
        self.entries.push(entry.clone());
        self.save()?;
        Ok(entry)
    }

    /// Stops trusting the project policy of `dir` (`stigmer policy untrust DIR`) and saves the
    /// store. Returns whether it was trusted. A directory that no longer exists is looked up
    /// as given.
    ///
    /// # Errors
    /// The store cannot be saved.
    pub fn untrust(&mut self, dir: &Path) -> Result<bool, TrustError> {
        let location = policy_location(dir).unwrap_or_else(|_| dir.join(PROJECT_POLICY));
        let before = self.entries.len();
        self.entries.retain(|e| e.path != location);
        let removed = self.entries.len() != before;
        if removed {
            self.save()?;
        }
        Ok(removed)
    }

    /// Whether a project policy at `location` (see [`TrustStore::trust`]) with this content
    /// is trusted.
    #[must_use]
    pub fn check(&self, location: &Path, content: &[u8]) -> Trust {
        let sha = sha256_hex(content);
        match self.entries.iter().find(|e| e.path == location) {
            Some(e) if e.sha256.eq_ignore_ascii_case(&sha) => Trust::Trusted,
            Some(_) => Trust::Changed,
            None => match self
                .entries
                .iter()
                .find(|e| e.sha256.eq_ignore_ascii_case(&sha))
            {
                Some(other) => Trust::TrustedElsewhere(other.path.clone()),
                None => Trust::NotTrusted,
            },
        }
    }

    /// Whether the project policy of `dir` is trusted as it is now; `None` when there is none.
    ///
    /// # Errors
    /// The directory or the policy cannot be read.
    pub fn status(&self, dir: &Path) -> Result<Option<Trust>, TrustError> {
        let location = policy_location(dir)?;
        match std::fs::read(&location) {
            Ok(bytes) => Ok(Some(self.check(&location, &bytes))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(TrustError::Policy {
                path: location,
                source,
            }),
        }
    }

    /// Writes the store: to a temporary file beside it, then renamed over it, so a reader never
    /// sees half a file and a crash leaves the old store.
    fn save(&self) -> Result<(), TrustError> {
        let write_err = |source| TrustError::Write {
            path: self.path.clone(),
            source,
        };
        let dir = self
            .path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(write_err)?;
        let mut text = String::from(
            "# Project policies trusted with `stigmer policy trust DIR`: the policy file and the\n\
             # sha256 of its content. A changed file is ignored until trusted again.\n\n",
        );
        let body = toml::to_string(&StoreFile {
            policy: self.entries.clone(),
        })
        .map_err(|e| write_err(std::io::Error::other(e)))?;
        text.push_str(&body);
        let name = self
            .path
            .file_name()
            .map_or_else(|| "trusted-policies.toml".into(), |n| n.to_string_lossy());
        let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
        let result = (|| {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result.map_err(write_err)
    }
}
