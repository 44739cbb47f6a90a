//! The one error type of this crate.
//!
//! Every variant says what was attempted, on which container or image, and what the engine
//! answered, because the message ends up in front of a user ("could not create container
//! stigmer-ab12 from image x: Docker responded with status code 409: …"). The activities decide
//! whether to retry from [`EngineError::is_retryable`]: a connection problem or an engine-side
//! failure (5xx) may pass, a missing image or a bad spec will not.

use std::path::PathBuf;

/// What went wrong while talking to the Docker engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// No engine answered at the configured endpoint (socket missing, daemon down, …).
    #[error("no Docker engine answered at {endpoint}: {reason}; start Docker or use --mode local")]
    Unavailable {
        /// The endpoint tried, e.g. `unix:///var/run/docker.sock`.
        endpoint: String,
        /// What the connection attempt reported.
        reason: String,
    },

    /// An Engine API call failed; `action` says what was attempted on which object.
    #[error("{action}: {source}")]
    Api {
        /// What was attempted, e.g. "could not start container 3f2a…".
        action: String,
        /// The engine's answer.
        #[source]
        source: bollard::errors::Error,
    },

    /// The image is not on this host and may not (or could not) be pulled or built.
    #[error(
        "image {image} is not present on this Docker host{detail}; build it with \
         `make sandbox-build-basic`, or set STIGMER_SANDBOX_AUTO_PULL=true to pull it"
    )]
    ImageMissing {
        /// The image reference asked for.
        image: String,
        /// Extra context, starting with a separator (e.g. " and pulling it failed: …"), or empty.
        detail: String,
    },

    /// Pulling an image failed and there was nothing to build it from.
    #[error(
        "could not pull image {image}: {source}; build it locally with `make sandbox-build-basic`, \
         or check that the registry is reachable"
    )]
    PullFailed {
        /// The image reference asked for.
        image: String,
        /// The engine's answer.
        #[source]
        source: bollard::errors::Error,
    },

    /// The engine ran the build and the build failed (a `RUN` step, a missing file, …).
    #[error("could not build image {tag} from {dockerfile}: {message}")]
    BuildFailed {
        /// The tag the build was to produce.
        tag: String,
        /// The Dockerfile used.
        dockerfile: String,
        /// The builder's error and the last lines of its output.
        message: String,
    },

    /// A local file needed for a build (Dockerfile, context, requirements) could not be read.
    #[error("could not read {what} {path}: {source}")]
    Io {
        /// What the file was for, e.g. "build context".
        what: &'static str,
        /// The path that failed.
        path: PathBuf,
        /// The operating system's answer.
        #[source]
        source: std::io::Error,
    },

    /// The request or container spec is not acceptable (mounts the Docker socket, relative
    /// mount target, empty argv, …). Fix the input; retrying cannot help.
    #[error("invalid sandbox request: {0}")]
    InvalidSpec(String),

    /// The exec was started but the connection to it broke, so the command may still be
    /// running inside the container. The caller must not re-run it; it should kill it through
    /// its pid file ([`crate::Engine::kill_exec`]) and taint the container.
    #[error(
        "lost the connection to the command running in container {container} (exec {exec_id}); \
         it may still be running: {source}"
    )]
    ExecInterrupted {
        /// The container the command runs in.
        container: String,
        /// The Docker exec id.
        exec_id: String,
        /// The engine's answer.
        #[source]
        source: bollard::errors::Error,
    },

    /// The connection to a container's agent broke while it ran a command, so the command may
    /// still be running; as for [`EngineError::ExecInterrupted`], kill it through its pid file
    /// and taint the container.
    #[error(
        "lost the connection to the command running in container {container}; it may still be \
         running: {reason}"
    )]
    AgentLost {
        /// The container the command runs in.
        container: String,
        /// What broke.
        reason: String,
    },

    /// The engine answered, but not in a way this crate understands (a missing field, …).
    #[error("unexpected answer from the Docker engine: {0}")]
    Unexpected(String),

    /// A process group survived SIGKILL (uninterruptible sleep, or it escaped its group).
    #[error("process group {pgid} in container {container} is still alive after SIGKILL")]
    KillFailed {
        /// The container the command runs in.
        container: String,
        /// The process group that would not die.
        pgid: i64,
    },
}

impl EngineError {
    pub(crate) fn api(action: impl Into<String>, source: bollard::errors::Error) -> Self {
        EngineError::Api {
            action: action.into(),
            source,
        }
    }

    /// Whether trying the same call again later may succeed: engine unreachable, a timeout, or an
    /// engine-side failure (HTTP 5xx). A missing image, a bad spec, a failed build, a client
    /// error (4xx) or an interrupted exec (the command may have run) are not retryable.
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        match self {
            EngineError::Unavailable { .. } => true,
            EngineError::Api { source, .. } | EngineError::PullFailed { source, .. } => {
                bollard_error_is_retryable(source)
            }
            EngineError::ImageMissing { .. }
            | EngineError::BuildFailed { .. }
            | EngineError::Io { .. }
            | EngineError::InvalidSpec(_)
            | EngineError::Unexpected(_)
            | EngineError::ExecInterrupted { .. }
            | EngineError::AgentLost { .. }
            | EngineError::KillFailed { .. } => false,
        }
    }

    /// The HTTP status the engine answered with, when it answered with an error status.
    #[must_use]
    pub fn status_code(&self) -> Option<u16> {
        match self {
            EngineError::Api { source, .. }
            | EngineError::PullFailed { source, .. }
            | EngineError::ExecInterrupted { source, .. } => status_of(source),
            _ => None,
        }
    }

    /// Whether the engine said the object (container, image, exec) does not exist.
    #[must_use]
    pub fn is_not_found(&self) -> bool {
        self.status_code() == Some(404)
    }
}

pub(crate) fn status_of(err: &bollard::errors::Error) -> Option<u16> {
    match err {
        bollard::errors::Error::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

fn bollard_error_is_retryable(err: &bollard::errors::Error) -> bool {
    use bollard::errors::Error as B;
    match err {
        B::DockerResponseServerError { status_code, .. } => {
            *status_code >= 500 || *status_code == 408 || *status_code == 429
        }
        B::RequestTimeoutError
        | B::IOError { .. }
        | B::HyperResponseError { .. }
        | B::HyperLegacyError { .. } => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_by_status() {
        let e = |status_code| EngineError::Api {
            action: "x".into(),
            source: bollard::errors::Error::DockerResponseServerError {
                status_code,
                message: "m".into(),
            },
        };
        assert!(e(500).is_retryable());
        assert!(e(503).is_retryable());
        assert!(!e(404).is_retryable());
        assert!(!e(409).is_retryable());
        assert!(e(404).is_not_found());
        assert!(
            !EngineError::ImageMissing {
                image: "x".into(),
                detail: String::new()
            }
            .is_retryable()
        );
        assert!(
            EngineError::Unavailable {
                endpoint: "unix:///x".into(),
                reason: "r".into()
            }
            .is_retryable()
        );
    }

    #[test]
    fn image_missing_says_how_to_fix() {
        let msg = EngineError::ImageMissing {
            image: "stigmer-sandbox-basic:local".into(),
            detail: String::new(),
        }
        .to_string();
        assert!(msg.contains("make sandbox-build-basic"), "{msg}");
        assert!(msg.contains("STIGMER_SANDBOX_AUTO_PULL=true"), "{msg}");
    }
}
