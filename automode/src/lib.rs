//! Auto mode: decides, per command, whether it runs on the host (`local`) or in the sandbox, and
//! says why.
//!
//! The first design matched substrings (`"pip" in command`): it sent `cat pipeline.yaml` to the
//! sandbox and let `uv add requests`, `curl … | sh` and `rm -rf ~` run on the host. Here the
//! command is parsed as a shell program (brush-parser, a pure-Rust bash parser, so there is no C
//! toolchain in the build and its AST is typed) and **every simple command** in it is judged on
//! its own: in pipelines and `&&`/`||`/`;` lists, subshells and `{ …; }` groups, `$(…)` and
//! backticks, process substitutions, loops, conditionals, function bodies, here-documents fed to
//! a shell, and the scripts given to `bash -c`/`sh -c`/`su -c`/`watch`/`trap`, which are parsed
//! again. Wrappers are looked through to the command they run (`sudo`, `env -i VAR=x`,
//! `nohup`, `time`, `timeout`, `nice`, `xargs`, `command`, `exec`, `uv run`, …).
//!
//! A command goes to the sandbox if any part of it installs or removes packages, runs code
//! fetched from the network, raises privileges, writes outside the working directory or changes
//! the system, or cannot be fully understood (a syntax error, `eval`, a program or script only
//! known at run time): when unsure of the *syntax*, isolate. An unknown *program* is not a reason
//! by itself: `./gradlew test` runs locally. The full rule is in `AUTO_MODE.md`.
//!
//! The classifier is a pure function of the command text and the [`Policy`] (no file system or
//! environment access while classifying), so `stigmer explain` and `stigmer run` always agree,
//! and it is cheap enough to run on every command (a few microseconds for an ordinary command,
//! about a quarter of a millisecond for a 50-stage pipeline; see `benches/classify.rs`). Hostile
//! input is bounded: nesting, length and word growth beyond what ordinary commands use send the
//! command to the sandbox without being walked, so classification cannot exhaust stack or memory.
//!
//! # User rules
//!
//! A [`Policy`] adds the user's prefix rules (see [`Policy::load`] for the file format). A rule
//! is matched against the words of each simple command, at each layer of wrappers from the
//! outside in: for `sudo env CI=1 npm install`, first `sudo env CI=1 npm install`, then
//! `env CI=1 npm install`, then `npm install`. The first layer that some rule matches is decided
//! by the longest matching rule (a tie goes to `sandbox`), and that decision covers the layers
//! inside it; the built-in rules judge the layers outside it. So a rule `npm install = local`
//! lets `npm install` and `env CI=1 npm install` run on the host, but not `sudo npm install`:
//! raising privileges is judged at the `sudo` layer, before the rule is reached. Redirections
//! (`> /etc/x`) are judged separately from the command's words and are not affected by rules.
//!
//! ```
//! use stigmer_automode::{classify, Mode, Policy};
//!
//! let policy = Policy::builtin();
//! let d = classify("make && pip install .", &policy, false);
//! assert_eq!(d.decision, Mode::Sandbox);
//! assert_eq!(d.rule, "install:pip");
//! assert_eq!(d.part.as_deref(), Some("pip install ."));
//!
//! assert_eq!(classify("cat pipeline.yaml | grep npm", &policy, false).decision, Mode::Local);
//! ```

mod closed;
mod policy;
mod programs;
mod trust;
mod walk;
mod words;

pub use policy::{Policy, PolicyError, Rule};
pub use trust::{
    PROJECT_POLICY, PolicyFileStatus, PolicyNotice, Trust, TrustError, TrustStore, TrustedPolicy,
    default_trust_store_path,
};

use serde::{Deserialize, Serialize};
use std::fmt;

/// Where a command runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// On the host, in the working directory.
    Local,
    /// In an isolated sandbox.
    Sandbox,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Local => "local",
            Self::Sandbox => "sandbox",
        })
    }
}

/// The outcome of classifying a command, with its explanation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// Where the command runs.
    pub decision: Mode,
    /// A sentence for people: what the deciding part does, and the rule.
    pub reason: String,
    /// A stable id of the deciding rule: `install:pip`, `network-exec:pipe`, `privilege:sudo`,
    /// `write-outside:rm`, `system:systemctl`, `unsure:eval`, `requirements`,
    /// `policy:FILE:LINE`, or `default:local`.
    pub rule: String,
    /// The simple command (as written) that decided it; `None` when no single part did.
    pub part: Option<String>,
}

/// Classifies a shell command string (what `stigmer run "CMD"` runs with `/bin/sh -c`).
///
/// `has_requirements`: the run comes with a `--requirements` file, which needs a layered
/// sandbox image whatever the command.
#[must_use]
pub fn classify(command: &str, policy: &Policy, has_requirements: bool) -> Decision {
    if has_requirements {
        return requirements_decision();
    }
    let mut walker = walk::Walker::new(policy);
    walker.walk_script(command);
    walk::decide(walker)
}

/// Classifies an argv (what `stigmer run -- PROG ARGS…` runs without a shell): the words are
/// taken literally (`;` or `$HOME` in an argument is just text), but wrappers and `bash -c`
/// scripts are still looked into.
#[must_use]
pub fn classify_argv(argv: &[String], policy: &Policy, has_requirements: bool) -> Decision {
    if has_requirements {
        return requirements_decision();
    }
    let mut walker = walk::Walker::new(policy);
    walker.walk_argv(argv);
    walk::decide(walker)
}

fn requirements_decision() -> Decision {
    Decision {
        decision: Mode::Sandbox,
        reason: "a --requirements file needs a sandbox image with those packages installed (rule requirements)".into(),
        rule: "requirements".into(),
        part: None,
    }
}
