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
//! **Auto mode fails closed.** A command runs locally only when every part of it is understood
//! and known to be safe for the host outside the working directory. A part goes to the sandbox
//! if it installs or removes packages, runs code fetched from the network or freshly downloaded
//! (`pip download`, `uv run --with`), raises privileges, writes outside the working directory
//! (by a path, through an output option such as `-o`/`--prefix`, or through a link the command
//! made) or changes the system, sends or copies a credential file, changes remote
//! infrastructure (`kubectl delete`, `terraform apply`), gives a container the host, or opens a
//! listener. It also goes to the sandbox when auto mode cannot tell what it will do: a syntax
//! error, `eval`, inline code for another interpreter (`python3 -c`, `node -e`, code piped into
//! one), a program name only resolved at run time (`/???/r?`, `$a$b`), a command that runs its
//! arguments or settings (`git config core.fsmonitor`, `sed e`, `tar --checkpoint-action`,
//! `ssh -o ProxyCommand`, `BASH_ENV`), or a file the same command wrote or cloned, then runs.
//! Where a tool has read-only uses and others (`kubectl`, `helm`, `terraform`, cloud CLIs), the
//! read-only verbs are listed and any other verb counts as a change (`closed.rs`).
//!
//! An unknown *program run from the project* is not a reason by itself: `./gradlew test` and
//! `mytool build` run locally unless their arguments, redirections or a rule above say
//! otherwise. That is the limit of what auto mode promises: it protects the host *outside* the
//! working directory from commands it cannot understand. It does not protect you from your own
//! project's build scripts (`make` runs whatever the Makefile says; use `--mode sandbox` for a
//! repository you do not trust), and it cannot catch a flow split across commands (copy a
//! credential into the project now, send it in a later command). The full rule is in
//! `docs/execution-modes.md`.
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
//! A [`Policy`] adds the user's prefix rules (see [`Policy::load`] for the file format). A
//! project's own `.stigmer/policy.toml` is obeyed only once the user trusts it
//! ([`Policy::load_trusted`] with a [`TrustStore`]); until then it is ignored and the policy
//! carries a [`PolicyNotice`] saying so. A rule
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
//!
//! // Code auto mode cannot read goes to the sandbox, however harmless it looks.
//! let d = classify("python3 -c 'print(1)'", &policy, false);
//! assert_eq!((d.decision, d.rule.as_str()), (Mode::Sandbox, "unsure:inline-code"));
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
    /// `write-outside:rm`, `system:systemctl`, `credentials:curl`, `remote:kubectl`,
    /// `listener:nc`, `host-access:docker`, `network-code:pip`, `unsure:eval`,
    /// `unsure:inline-code`, `unsure:runs-hidden:sed`, `requirements`, `policy:FILE:LINE`, or
    /// `default:local`.
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
