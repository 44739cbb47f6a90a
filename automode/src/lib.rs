//! Auto mode: decides, per command, whether it runs on the host (`local`) or in the sandbox.
//!
//! The original design matched substrings (`"pip" in command`), which sent `cat pipeline.yaml`
//! to the sandbox and let `curl … | sh` run on the host. Here the command is parsed as a shell
//! program (tree-sitter-bash) and **every** simple command in it is looked at: in pipelines and
//! lists, subshells, `$(…)`/backticks, process substitutions, loops, conditionals, functions,
//! `bash -c` strings (parsed again), and behind wrappers (`sudo`, `env`, `xargs`, `nohup`,
//! `time`, `timeout`, `nice`, `VAR=x` prefixes). Anything the parser or the classifier does not
//! fully understand goes to the sandbox: when unsure of the *syntax*, isolate. An unknown
//! *program* is not a reason by itself.
//!
//! The decision carries the rule that made it and the part of the command it matched, so
//! `stigmer explain` and the audit record can say why.

mod policy;
mod rules;

pub use policy::{Policy, PolicyError, Rule};

use serde::{Deserialize, Serialize};
use std::fmt;

/// Where a command runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Local,
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
    pub decision: Mode,
    /// A sentence for people.
    pub reason: String,
    /// A stable id of the rule: `install:pip`, `network-exec`, `policy:FILE:LINE`, `default:local`…
    pub rule: String,
    /// The part of the command that decided it (a simple command or a redirect).
    pub part: Option<String>,
}

impl Decision {
    fn local() -> Self {
        Self {
            decision: Mode::Local,
            reason: "every part of the command only reads, builds or writes inside the working directory".into(),
            rule: "default:local".into(),
            part: None,
        }
    }
}

/// Classifies a shell command string (what `stigmer run "CMD"` runs with `/bin/sh -c`).
#[must_use]
pub fn classify(command: &str, policy: &Policy, has_requirements: bool) -> Decision {
    if has_requirements {
        return requirements_decision();
    }
    rules::Classifier::new(policy).classify_script(command, 0)
}

/// Classifies an argv (what `stigmer run -- PROG ARGS…` runs without a shell).
#[must_use]
pub fn classify_argv(argv: &[String], policy: &Policy, has_requirements: bool) -> Decision {
    if has_requirements {
        return requirements_decision();
    }
    let words: Vec<rules::Word> = argv.iter().map(|a| rules::Word::literal(a)).collect();
    rules::Classifier::new(policy).classify_words(&words, &argv.join(" "), 0)
}

fn requirements_decision() -> Decision {
    Decision {
        decision: Mode::Sandbox,
        reason: "a --requirements file needs a layered sandbox image with those packages".into(),
        rule: "requirements".into(),
        part: None,
    }
}
