//! stigmer: a durable agent-runner. Every command is an `AgentExecution` Temporal workflow whose
//! steps retry independently, on the host or in a hardened sandbox, recorded in a SQL store.
//!
//! The binary is thin (`cli`); what each command does lives in these modules so that tests can
//! call it directly.

pub mod audit;
pub mod cli;
pub mod client;
pub mod codec;
pub mod codec_server;
pub mod config;
pub mod daemon;
pub mod mcp;
pub mod metrics;
pub mod ops;
pub mod protocol;
pub mod sandbox_images;
pub mod telemetry;
pub mod temporal_server;
