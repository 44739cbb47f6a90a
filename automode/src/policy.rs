//! The user's policy: prefix rules that force `local` or `sandbox` for matching commands.
//!
//! Read from `~/.config/stigmer/policy.toml` and then `.stigmer/policy.toml` in the working
//! directory; rules from both files form one list. A user rule overrides the built-in rules for
//! the part of the command it matches; among user rules the longest matching prefix (in words)
//! wins, and a tie goes to `sandbox`. A bad file is an error naming the file, line and problem.
//!
//! ```toml
//! [[rule]]
//! prefix = "npm install"
//! decision = "local"
//! reason = "npm install is fine on the host in this project"   # optional
//! ```

use crate::{Decision, Mode};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// A user rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// The words a simple command must start with (after wrappers like `env` or `nohup`).
    pub prefix: Vec<String>,
    pub decision: Mode,
    pub reason: Option<String>,
    /// `FILE:LINE` where the rule was written.
    pub source: String,
}

/// Built-in rules plus the user's.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    rules: Vec<Rule>,
    workdir: Option<String>,
    files: Vec<PathBuf>,
}

/// A policy file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("could not read policy file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} line {line}: {message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        message: String,
    },
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
    text.get(..offset).map_or(1, |t| t.matches('\n').count() + 1)
}

impl Policy {
    /// Only the built-in rules.
    #[must_use]
    pub fn builtin() -> Self {
        Self::default()
    }

    /// Built-in rules plus `home_policy` (usually `~/.config/stigmer/policy.toml`) and
    /// `<cwd>/.stigmer/policy.toml`, whichever exist. Absolute paths inside `cwd` count as
    /// inside the working directory.
    pub fn load(cwd: &Path, home_policy: Option<&Path>) -> Result<Self, PolicyError> {
        let mut policy = Self::builtin().with_workdir(cwd);
        let project = cwd.join(".stigmer/policy.toml");
        for path in home_policy.into_iter().chain(std::iter::once(project.as_path())) {
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

    /// Adds the rules of one policy file's text.
    pub fn add_file(&mut self, path: &Path, text: &str) -> Result<(), PolicyError> {
        let invalid = |line: usize, message: String| PolicyError::Invalid {
            path: path.to_path_buf(),
            line,
            message,
        };
        let raw: RawFile = toml::from_str(text).map_err(|e| {
            let line = e.span().map_or(1, |s| line_of(text, s.start));
            invalid(line, e.message().to_string())
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
                reason: rule.reason,
                source: format!("{}:{line}", path.display()),
            });
        }
        self.files.push(path.to_path_buf());
        Ok(())
    }

    /// Treats absolute paths inside `dir` as inside the working directory.
    #[must_use]
    pub fn with_workdir(mut self, dir: &Path) -> Self {
        self.workdir = Some(dir.display().to_string());
        self
    }

    #[must_use]
    pub fn workdir(&self) -> Option<&str> {
        self.workdir.as_deref()
    }

    #[must_use]
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The policy files that were read.
    #[must_use]
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// The user rule deciding a simple command starting with `words`, if any.
    pub(crate) fn match_user(&self, words: &[&str], part: &str) -> Option<Decision> {
        let best = self
            .rules
            .iter()
            .filter(|r| r.prefix.len() <= words.len() && r.prefix.iter().zip(words).all(|(p, w)| p == w))
            .max_by_key(|r| (r.prefix.len(), r.decision == Mode::Sandbox))?;
        let reason = best.reason.clone().unwrap_or_else(|| {
            format!("your policy rule for `{}` says {}", best.prefix.join(" "), best.decision)
        });
        Some(Decision {
            decision: best.decision,
            reason,
            rule: format!("policy:{}", best.source),
            part: Some(part.trim().to_string()),
        })
    }
}
