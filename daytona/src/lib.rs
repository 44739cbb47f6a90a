//! A small typed client for Daytona's cloud sandboxes, and a fake Daytona for tests.
//!
//! stigmer's `daytona` execution backend runs commands in Daytona sandboxes. This crate is the
//! part that speaks Daytona's REST API, shaped after the published OpenAPI descriptions kept in
//! `openapi/`:
//!
//! - [`Config`]: API key, API URL, default snapshot, timeouts, retry policy, toolbox addressing;
//!   [`Config::from_env`] reads `DAYTONA_API_KEY` and friends.
//! - [`Client`]: create / get / wait-until-started / list-by-labels / delete sandboxes.
//! - [`Toolbox`]: one sandbox's toolbox: [`Toolbox::execute`] for short commands, sessions and
//!   [`Toolbox::follow_command`] for long ones with stdout and stderr kept apart,
//!   [`Toolbox::send_input`] for a session command's stdin, and the file API
//!   ([`Toolbox::upload_file`], [`Toolbox::download_file`], [`Toolbox::file_info`],
//!   [`Toolbox::set_file_mode`]).
//! - [`Error`]: what was attempted and what came back; never the API key.
//!
//! With the `fake` feature, `fake::FakeDaytona` serves the same endpoints from memory on
//! `127.0.0.1:0` with injectable failures, and `openapi` validates bodies against the
//! published schemas. Other crates' integration tests use it where the real service cannot run:
//!
//! ```toml
//! [dev-dependencies]
//! stigmer-daytona = { path = "../daytona", features = ["fake"] }
//! ```
//!
//! then `let fake = FakeDaytona::start().await?; let client = Client::new(fake.config())?;`.

mod client;
mod config;
pub mod demux;
mod error;
mod files;
mod http;
mod model;
mod toolbox;

#[cfg(feature = "fake")]
pub mod fake;
#[cfg(feature = "fake")]
pub mod openapi;

pub use client::{Client, WaitOptions};
pub use config::{API_KEY_PAGE, ApiKey, Config, DEFAULT_API_URL, RetryPolicy, ToolboxAddressing};
pub use error::{Error, Result};
pub use files::FileInfo;
pub use model::{
    CommandLogs, CreateSandbox, ExecuteCommand, ExecuteOutput, LogChunk, OutputStream, Resources,
    Sandbox, SandboxState, SessionCommand, SessionExecOutput,
};
pub use toolbox::{FollowOptions, FollowOutcome, Toolbox};

/// Wraps a shell script for Daytona's `process/execute`, which splits the command line on spaces
/// and quotes and runs no shell: `sh -c '<script>'`, with single quotes escaped.
///
/// ```
/// assert_eq!(stigmer_daytona::sh_c("echo 'hi' && ls"), r#"sh -c 'echo '"'"'hi'"'"' && ls'"#);
/// ```
#[must_use]
pub fn sh_c(script: &str) -> String {
    format!("sh -c '{}'", script.replace('\'', r#"'"'"'"#))
}
