//! The user's policy: prefix rules that force `local` or `sandbox` for matching commands.
//!
//! Two files are read, both optional: the user's (`~/.config/stigmer/policy.toml`, path given
//! by the caller) and the project's (`<cwd>/.stigmer/policy.toml`). Their rules form **one
//! list**: neither file outranks the other. For each simple command the rule with the longest
//! matching prefix (counted in words) decides, and when rules of the same length disagree the
//! command goes to the sandbox, so a project file cannot quietly loosen a stricter rule of the
//! same specificity in the user's file (and vice versa). A user rule overrides the built-in rules
//! for the command it matches.
//!
//! ```toml
//! [[rule]]
//! prefix = "npm install"            # words the command starts with, after wrappers
//! decision = "local"                # or "sandbox"
//! reason = "npm install is fine on the host in this project"   # optional
//! ```
//!
//! The project's file comes with the repository, so [`Policy::load_trusted`] obeys it only once
//! the user has trusted it with its current content (see `trust.rs`); the user's file is always
//! obeyed.
//!
//! A file that cannot be used is an error naming the file, the line and the problem: a policy
//! that silently does nothing would send commands somewhere the user did not intend.

use crate::Mode;
use crate::trust::{PROJECT_POLICY, PolicyFileStatus, PolicyNotice, Trust, TrustStore};
use serde::Deserialize;
use std::fmt;
use std::path::{Path, PathBuf};

/// One rule from a policy file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// The words a simple command must start with (compared after wrappers such as `sudo`,
    /// `env` or `nohup` and `VAR=x` assignments are looked through; see [`crate::classify`]).
    pub prefix: Vec<String>,
    /// Where matching commands run.
    pub decision: Mode,
    /// The user's explanation, if the file gave one.
    pub reason: Option<String>,
    /// The file the rule was read from.
    pub file: PathBuf,
    /// The line of the rule's `[[rule]]` header (1-based).
    pub line: usize,
}

impl Rule {
    /// The stable id used in decisions: `policy:FILE:LINE`.
    #[must_use]
    pub fn id(&self) -> String {
        format!("policy:{}:{}", self.file.display(), self.line)
    }
}

/// What auto mode decides by: the built-in rules plus the user's prefix rules, and the working
/// directory (absolute paths inside it count as inside).
///
/// ```
/// use stigmer_automode::{classify, Mode, Policy};
/// let policy = Policy::builtin();
/// assert_eq!(classify("cargo test", &policy, false).decision, Mode::Local);
/// ```
#[derive(Clone, Debug, Default)]
pub struct Policy {
    rules: Vec<Rule>,
    workdir: Option<PathBuf>,
    files: Vec<PathBuf>,
    notices: Vec<PolicyNotice>,
}

/// A policy file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The file exists but could not be read.
    #[error("could not read {}: {source}", Shown(.path))]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML or not a valid policy.
    #[error("{} line {line}: {problem}", Shown(.path))]
    Invalid {
        path: PathBuf,
        line: usize,
        problem: String,
    },
}

/// A path as the user knows it: `~/…` for paths under `$HOME`.
struct Shown<'a>(&'a Path);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(home) = std::env::var_os("HOME").filter(|h| !h.is_empty())
            && let Ok(rest) = self.0.strip_prefix(Path::new(&home))
        {
            return write!(f, "~/{}", rest.display());
        }
        write!(f, "{}", self.0.display())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    rule: Vec<toml::Spanned<RawRule>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    prefix: toml::Spanned<String>,
    decision: toml::Spanned<String>,
    reason: Option<String>,
}

fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset)
        .map_or(1, |t| t.matches('\n').count() + 1)
}

/// The best user rule for one simple command.
pub(crate) struct Match<'p> {
    pub rule: &'p Rule,
}

impl Policy {
    /// Only the built-in rules, with no working directory known (every absolute path then
    /// counts as outside it).
    #[must_use]
    pub fn builtin() -> Self {
        Self::default()
    }

    /// The built-in rules plus the user's rules from `home_config` (usually
    /// `~/.config/stigmer/policy.toml`) and the project's `<cwd>/.stigmer/policy.toml`, whichever
    /// exist. Absolute paths inside `cwd` count as inside the working directory.
    ///
    /// A policy file holds prefix rules:
    ///
    /// ```toml
    /// [[rule]]
    /// prefix = "npm install"     # the words a command starts with (after wrappers)
    /// decision = "local"         # or "sandbox"
    /// reason = "npm install is fine on the host in this project"   # optional
    /// ```
    ///
    /// The rules of both files form one list; neither file outranks the other. For each simple
    /// command the longest matching prefix (in words) decides, and equally long rules that
    /// disagree send it to the sandbox. A project file therefore cannot loosen a rule of the same
    /// length in the user's file, nor the other way round; a longer rule in either wins. A rule
    /// overrides the built-in rules for the command it matches (see the crate docs for how it
    /// meets wrappers such as `sudo`).
    ///
    /// **This obeys the project file without asking whether the user trusts it**: a cloned
    /// repository can bring rules that run its commands on the host. Use
    /// [`Policy::load_trusted`], which ignores a project file the user has not trusted.
    ///
    /// # Errors
    /// A file that exists but cannot be read, is not TOML, or holds an invalid rule; the message
    /// names the file, the line and the problem, e.g.
    /// `~/.config/stigmer/policy.toml line 4: unknown decision "fast" (allowed: local, sandbox)`.
    pub fn load(cwd: &Path, home_config: Option<&Path>) -> Result<Self, PolicyError> {
        let mut policy = Self::builtin().with_workdir(cwd);
        let project = cwd.join(".stigmer").join("policy.toml");
        for path in home_config
            .into_iter()
            .chain(std::iter::once(project.as_path()))
        {
            let text = match std::fs::read_to_string(path) {
                Ok(text) => text,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(source) => {
                    return Err(PolicyError::Read {
                        path: path.to_path_buf(),
                        source,
                    });
                }
            };
            policy.add_file(path, &text)?;
        }
        Ok(policy)
    }

    /// Like [`Policy::load`], but the project's `<cwd>/.stigmer/policy.toml` is obeyed only if
    /// `trust` holds it with its current content at this place (see [`TrustStore`]). An ignored
    /// project file is not parsed; it leaves a [`PolicyNotice`] in [`Policy::notices`] saying
    /// which file, why (not trusted, changed since trusted, trusted at another path) and what to
    /// do. The user's file (`home_config`) is the user's own and always obeyed.
    ///
    /// # Errors
    /// As [`Policy::load`], for the user's file and a trusted project file.
    pub fn load_trusted(
        cwd: &Path,
        home_config: Option<&Path>,
        trust: &TrustStore,
    ) -> Result<Self, PolicyError> {
        let mut policy = Self::builtin().with_workdir(cwd);
        if let Some(home) = home_config
            && let Some(text) = read_optional(home)?
        {
            policy.add_file(home, &text)?;
        }
        let project = cwd.join(PROJECT_POLICY);
        let Some(bytes) = read_optional_bytes(&project)? else {
            return Ok(policy);
        };
        // The place trust is recorded under; a directory that cannot be made canonical cannot
        // have been trusted.
        let location = crate::trust::policy_location(cwd).ok();
        let verdict = location
            .as_deref()
            .map_or(Trust::NotTrusted, |l| trust.check(l, &bytes));
        if verdict == Trust::Trusted {
            let text = String::from_utf8_lossy(&bytes);
            policy.add_file(&project, &text)?;
        } else {
            policy.notices.push(PolicyNotice {
                dir: cwd.to_path_buf(),
                file: project,
                trust: verdict,
            });
        }
        Ok(policy)
    }

    /// The policy files that apply to `cwd` and whether each is obeyed, for
    /// `stigmer policy show`: the user's file (always trusted), then the project's.
    #[must_use]
    pub fn files_for(
        cwd: &Path,
        home_config: Option<&Path>,
        trust: &TrustStore,
    ) -> Vec<PolicyFileStatus> {
        let mut out = Vec::new();
        if let Some(home) = home_config {
            out.push(PolicyFileStatus {
                path: home.to_path_buf(),
                user: true,
                exists: home.exists(),
                trust: Trust::Trusted,
            });
        }
        let project = cwd.join(PROJECT_POLICY);
        let status = trust.status(cwd).ok().flatten();
        out.push(PolicyFileStatus {
            exists: project.exists(),
            path: project,
            user: false,
            trust: status.unwrap_or(Trust::NotTrusted),
        });
        out
    }

    /// Project policies that were ignored because they are not trusted (see
    /// [`Policy::load_trusted`]); `run` and `explain` show them.
    #[must_use]
    pub fn notices(&self) -> &[PolicyNotice] {
        &self.notices
    }

    /// The same policy, with absolute paths inside `dir` counting as inside the working
    /// directory.
    #[must_use]
    pub fn with_workdir(mut self, dir: &Path) -> Self {
        self.workdir = Some(dir.to_path_buf());
        self
    }

    /// The working directory, if known.
    #[must_use]
    pub fn workdir(&self) -> Option<&Path> {
        self.workdir.as_deref()
    }

    /// The user's rules, in file order (the user's file first, then the project's).
    #[must_use]
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The policy files that were read.
    #[must_use]
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    pub(crate) fn add_file(&mut self, path: &Path, text: &str) -> Result<(), PolicyError> {
        let invalid = |line: usize, problem: String| PolicyError::Invalid {
            path: path.to_path_buf(),
            line,
            problem,
        };
        let raw: RawFile = toml::from_str(text).map_err(|e| {
            let line = e.span().map_or(1, |s| line_of(text, s.start));
            // toml's message can span lines (it quotes the source); the first line is the point.
            let problem = e
                .message()
                .lines()
                .next()
                .unwrap_or("invalid TOML")
                .to_string();
            invalid(line, problem)
        })?;
        for spanned in raw.rule {
            let line = line_of(text, spanned.span().start);
            let rule = spanned.into_inner();
            let decision = match rule.decision.get_ref().as_str() {
                "local" => Mode::Local,
                "sandbox" => Mode::Sandbox,
                other => {
                    return Err(invalid(
                        line_of(text, rule.decision.span().start),
                        format!("unknown decision {other:?} (allowed: local, sandbox)"),
                    ));
                }
            };
            let prefix: Vec<String> = rule
                .prefix
                .get_ref()
                .split_whitespace()
                .map(String::from)
                .collect();
            if prefix.is_empty() {
                return Err(invalid(
                    line_of(text, rule.prefix.span().start),
                    "empty prefix: give the words a command starts with, e.g. prefix = \"npm install\"".into(),
                ));
            }
            self.rules.push(Rule {
                prefix,
                decision,
                reason: rule.reason.filter(|r| !r.trim().is_empty()),
                file: path.to_path_buf(),
                line,
            });
        }
        self.files.push(path.to_path_buf());
        Ok(())
    }

    /// The user rule deciding a command with these (normalized) words: the longest matching
    /// prefix; among equally long ones, a `sandbox` rule.
    pub(crate) fn best_match(&self, words: &[&str]) -> Option<Match<'_>> {
        let mut best: Option<&Rule> = None;
        for rule in &self.rules {
            let matches = rule.prefix.len() <= words.len()
                && rule.prefix.iter().zip(words).all(|(p, w)| p == w);
            if !matches {
                continue;
            }
            let better = match best {
                None => true,
                Some(b) => {
                    rule.prefix.len() > b.prefix.len()
                        || (rule.prefix.len() == b.prefix.len()
                            && rule.decision == Mode::Sandbox
                            && b.decision == Mode::Local)
                }
            };
            if better {
                best = Some(rule);
            }
        }
        best.map(|rule| Match { rule })
    }
}

fn read_optional(path: &Path) -> Result<Option<String>, PolicyError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(PolicyError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn read_optional_bytes(path: &Path) -> Result<Option<Vec<u8>>, PolicyError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(PolicyError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}
