//! Errors: what was attempted, and what came back.
//!
//! Every variant that comes from a call names the action in words ("get sandbox `abc`") so a
//! message read in a log or a workflow failure says what stigmer was doing, and, for an answer
//! from Daytona, the HTTP status and Daytona's own message. The API key never appears here: the
//! messages are built from URLs, statuses and response bodies, and bodies are scrubbed of the key
//! before they are kept (see `http::scrub`).

use std::time::Duration;

use crate::config::API_KEY_PAGE;

/// Result of a Daytona call.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong talking to Daytona or waiting on a sandbox.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `DAYTONA_API_KEY` is missing or empty.
    #[error(
        "DAYTONA_API_KEY is not set: cloud mode needs a Daytona API key; create one at \
         {API_KEY_PAGE} and export it (export DAYTONA_API_KEY=...)"
    )]
    MissingApiKey,

    /// A setting could not be used (a URL that does not parse, a zero timeout, ...).
    #[error("invalid Daytona configuration: {0}")]
    InvalidConfig(String),

    /// Daytona answered with an HTTP error status.
    #[error("{action}: Daytona answered {status}: {message}{}", attempts_note(*attempts))]
    Api {
        /// What was attempted, e.g. "get sandbox `abc`".
        action: String,
        /// The HTTP status.
        status: u16,
        /// Daytona's message (its JSON `message`, else the start of the body).
        message: String,
        /// Daytona's machine-readable code (`code` or `error` in the body), when it sent one.
        code: Option<String>,
        /// The `Retry-After` Daytona asked for (429 and 503 answers).
        retry_after: Option<Duration>,
        /// How many requests were sent in all.
        attempts: u32,
    },

    /// The request never got an HTTP answer: DNS, connection refused, TLS, reset.
    #[error("{action}: could not reach {url}: {detail}{}", attempts_note(*attempts))]
    Transport {
        /// What was attempted.
        action: String,
        /// The URL (no credentials are ever part of it).
        url: String,
        /// The transport error and its causes.
        detail: String,
        /// How many requests were sent in all.
        attempts: u32,
    },

    /// No complete answer arrived within the call's timeout.
    #[error("{action}: no answer from {url} within {timeout:?}{}", attempts_note(*attempts))]
    Timeout {
        /// What was attempted.
        action: String,
        /// The URL.
        url: String,
        /// The per-request timeout that ran out.
        timeout: Duration,
        /// How many requests were sent in all.
        attempts: u32,
    },

    /// Daytona answered 2xx with a body this client cannot read.
    #[error("{action}: unexpected response from Daytona: {detail}")]
    UnexpectedResponse {
        /// What was attempted.
        action: String,
        /// What did not fit, with the start of the body.
        detail: String,
    },

    /// The sandbox did not reach `started` before the deadline.
    #[error(
        "sandbox {sandbox_id} did not become `started` within {waited:?}; its last state was \
         `{last_state}`"
    )]
    StartTimeout {
        /// The sandbox.
        sandbox_id: String,
        /// The last state seen (or `unknown` if none was reported).
        last_state: String,
        /// How long we waited.
        waited: Duration,
    },

    /// The sandbox reached a failure state (`error`, `build_failed`).
    #[error("sandbox {sandbox_id} is in state `{state}`: {reason}")]
    SandboxFailed {
        /// The sandbox.
        sandbox_id: String,
        /// The failure state.
        state: String,
        /// Daytona's `errorReason`, or a note that it gave none.
        reason: String,
        /// Daytona's `recoverable` flag, when present.
        recoverable: Option<bool>,
    },

    /// The sandbox went somewhere it will not come back from by itself while we waited for
    /// `started` (stopped, archived, destroyed, ...).
    #[error("sandbox {sandbox_id} went to state `{state}` while waiting for it to start")]
    UnexpectedState {
        /// The sandbox.
        sandbox_id: String,
        /// The state it reached.
        state: String,
    },

    /// Daytona stopped a command that ran past the `timeout` sent with it (HTTP 408).
    #[error(
        "command in sandbox {sandbox_id} ran past its {timeout:?} timeout and was stopped: {message}"
    )]
    CommandTimeout {
        /// The sandbox.
        sandbox_id: String,
        /// The timeout sent with the command.
        timeout: Duration,
        /// Daytona's message.
        message: String,
    },

    /// Following a session command's output failed in a way polling could not recover.
    #[error("following command {command_id} in session {session_id}: {detail}")]
    LogStream {
        /// The session.
        session_id: String,
        /// The command.
        command_id: String,
        /// What happened.
        detail: String,
    },

    /// The request cannot be expressed with the configured addressing or API.
    #[error("{0}")]
    Unsupported(String),
}

impl Error {
    /// The HTTP status Daytona answered with, if this error is such an answer.
    #[must_use]
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// True when Daytona said the thing asked about does not exist (HTTP 404).
    #[must_use]
    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }

    /// How many requests were sent before giving up, for errors that come from a call.
    #[must_use]
    pub fn attempts(&self) -> Option<u32> {
        match self {
            Error::Api { attempts, .. }
            | Error::Transport { attempts, .. }
            | Error::Timeout { attempts, .. } => Some(*attempts),
            _ => None,
        }
    }
}

fn attempts_note(attempts: u32) -> String {
    if attempts > 1 {
        format!(" (after {attempts} attempts)")
    } else {
        String::new()
    }
}
