//! The public input of `AgentExecution`: what any Temporal client (Go, Java, Python, TypeScript,
//! the `temporal` CLI) sends to start an execution (docs/temporal-api.md). The workflow reads it,
//! checks it, and has the worker admit it (`admit`): record the execution and decide where it
//! runs. Unknown fields are refused; an error names the field and never echoes a value.

use crate::types::{EnvValues, MAX_INLINE_STDIN_BYTES, Network, RequestedMode, StdinInput, limits};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The only version there is.
pub const PUBLIC_INPUT_VERSION: u32 = 1;

/// Output kept in the result per stream, unless the input asks for another bound.
pub const DEFAULT_OUTPUT_LIMIT_BYTES: u64 = 64 * 1024;

/// The most output the result may carry per stream, so that the result stays well under
/// Temporal's 512 KB payload warning; the whole output stays in the store.
pub const MAX_OUTPUT_LIMIT_BYTES: u64 = 128 * 1024;

/// The most environment a start may carry (names and values together).
pub const MAX_ENV_BYTES: usize = 128 * 1024;

/// The most labels an execution may carry.
pub const MAX_LABELS: usize = 32;

/// The longest label name (bytes).
pub const MAX_LABEL_NAME_BYTES: usize = 63;

/// The longest label value (bytes).
pub const MAX_LABEL_VALUE_BYTES: usize = 256;

/// Checks an execution's labels (from the public input or `stigmer run --label`): at most
/// [`MAX_LABELS`]; a name of letters, digits and `._/-`, starting with a letter or digit, at most
/// [`MAX_LABEL_NAME_BYTES`]; a value of at most [`MAX_LABEL_VALUE_BYTES`] without control
/// characters. The error says what is allowed and never echoes a value.
pub fn check_labels<'a>(
    labels: impl ExactSizeIterator<Item = (&'a str, &'a str)>,
) -> Result<(), String> {
    if labels.len() > MAX_LABELS {
        return Err(format!(
            "{} labels given; at most {MAX_LABELS} are allowed",
            labels.len()
        ));
    }
    for (name, value) in labels {
        let name_ok = name.len() <= MAX_LABEL_NAME_BYTES
            && name.starts_with(|c: char| c.is_ascii_alphanumeric())
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '/' | '-'));
        if !name_ok {
            return Err(format!(
                "a label name must be 1 to {MAX_LABEL_NAME_BYTES} letters, digits, `.`, `_`, `/` \
                 or `-`, starting with a letter or digit"
            ));
        }
        if value.len() > MAX_LABEL_VALUE_BYTES || value.chars().any(char::is_control) {
            return Err(format!(
                "the value of label `{name}` must be at most {MAX_LABEL_VALUE_BYTES} bytes, \
                 without control characters"
            ));
        }
    }
    Ok(())
}

/// A start from any client.
#[derive(Clone, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PublicInput {
    /// Always 1.
    pub version: u32,
    /// A shell string, run with `/bin/sh -c` (or `argv`: exactly one of the two).
    #[serde(default)]
    pub command: Option<String>,
    /// A program and its arguments, run without a shell.
    #[serde(default)]
    pub argv: Option<Vec<String>>,
    /// `local`, `sandbox`, `auto` or `cloud`; default: the worker's mode.
    #[serde(default)]
    pub mode: Option<RequestedMode>,
    /// Where a local command runs (default: the worker's working directory).
    #[serde(default)]
    pub workdir: Option<String>,
    /// The command's environment: exactly these variables, nothing of the worker's own (without
    /// `PATH`, the shell's default search path applies).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Kill the command after this many seconds (1 s to 30 days).
    #[serde(default)]
    pub timeout_secs: Option<u64>,
    /// Run the command again if its worker is lost mid-run (default: never twice).
    #[serde(default)]
    pub retry_exec: bool,
    /// Sandbox settings; unset fields take the worker's.
    #[serde(default)]
    pub sandbox: Option<PublicSandbox>,
    /// Output kept in the result per stream (default 64 KiB, at most 128 KiB): its head and
    /// tail, with a marker where it was cut.
    #[serde(default)]
    pub output_limit_bytes: Option<u64>,
    /// The caller's metadata, kept with the execution and its audit records (not secret): at
    /// most 32 names of letters, digits and `._/-`, values up to 256 bytes.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// The command's standard input, as text (at most 256 KiB; or `stdin_base64`). Without it
    /// the command reads end of file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<String>,
    /// The command's standard input as base64, for binary data (at most 256 KiB decoded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin_base64: Option<String>,
    /// Reserved for sessions; a start that sets it is refused by this version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// The workflow id this input was made for: it must be the id it is started under, so that
    /// a copied input cannot be started again under another.
    pub workflow_id: String,
}

/// What a start may set of its sandbox. Host paths (workspace, credentials, requirements) are
/// for the worker's own clients only.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PublicSandbox {
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default)]
    pub network: Option<Network>,
    /// With the `public` network: the only hosts the proxy lets the command reach (names, or
    /// `*.domain` for the names below it). Replaces the worker's own list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_net: Option<Vec<String>>,
    /// Bytes (at least 16 MiB).
    #[serde(default)]
    pub memory_bytes: Option<i64>,
    #[serde(default)]
    pub cpus: Option<f64>,
    #[serde(default)]
    pub pids_limit: Option<i64>,
    /// How long the container is kept for reuse after the command (0: removed at once).
    #[serde(default)]
    pub ttl_secs: Option<u64>,
}

impl std::fmt::Debug for PublicInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublicInput")
            .field("command", &self.command)
            .field("argv", &self.argv)
            .field("mode", &self.mode)
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .field("workflow_id", &self.workflow_id)
            .finish_non_exhaustive()
    }
}

impl PublicInput {
    /// Reads and checks a start; the error names the field and what is allowed, never a value.
    pub fn read(json: &[u8], own_workflow_id: &str) -> Result<Self, String> {
        let mut reader = serde_json::Deserializer::from_slice(json);
        let input: Self = serde_path_to_error::deserialize(&mut reader).map_err(|e| {
            let at = e.path().to_string();
            let inner = e.inner().to_string();
            // serde's own words name a field for these; for a wrong value they quote it.
            let what = if inner.starts_with("unknown field") || inner.starts_with("missing field") {
                inner
                    .split(" at line")
                    .next()
                    .unwrap_or_default()
                    .to_string()
            } else if e.inner().is_syntax() || e.inner().is_eof() {
                "the input is not JSON".to_string()
            } else {
                "a value of the wrong type, or not one of those allowed".to_string()
            };
            format!(
                "refused: {what} at `{at}`; the input is documented in docs/temporal-api.md \
                 (fields: version, command or argv, mode, workdir, env, timeout_secs, \
                 retry_exec, sandbox, output_limit_bytes, labels, stdin or stdin_base64, workflow_id); \
                 nothing ran"
            )
        })?;
        input.check(own_workflow_id)?;
        Ok(input)
    }

    fn check(&self, own_workflow_id: &str) -> Result<(), String> {
        let refuse = |why: String| Err(format!("refused: {why}; nothing ran"));
        if self.version != PUBLIC_INPUT_VERSION {
            return refuse(format!(
                "`version` must be {PUBLIC_INPUT_VERSION}, the only version there is"
            ));
        }
        if self.workflow_id != own_workflow_id {
            return refuse(
                "`workflow_id` is not the id this workflow was started under; set it to that \
                 id (an input cannot be started again under another)"
                    .into(),
            );
        }
        match (&self.command, &self.argv) {
            (Some(c), None) if !c.trim().is_empty() => {}
            (None, Some(argv)) if argv.first().is_some_and(|p| !p.is_empty()) => {}
            (Some(_), Some(_)) => {
                return refuse("give `command` or `argv`, not both".into());
            }
            _ => {
                return refuse(
                    "give the command: `command` (a shell string) or `argv` (a non-empty list)"
                        .into(),
                );
            }
        }
        if let Some(secs) = self.timeout_secs
            && !(1..=limits::MAX_TIMEOUT_SECS).contains(&secs)
        {
            return refuse(format!(
                "`timeout_secs` must be 1 to {} (30 days)",
                limits::MAX_TIMEOUT_SECS
            ));
        }
        if let Some(limit) = self.output_limit_bytes
            && limit > MAX_OUTPUT_LIMIT_BYTES
        {
            return refuse(format!(
                "`output_limit_bytes` must be at most {MAX_OUTPUT_LIMIT_BYTES} (the whole output \
                 stays in the store: `stigmer logs ID`)"
            ));
        }
        if self.session.is_some() {
            return refuse(
                "`session` is reserved: this worker does not run commands in sessions yet; \
                 leave it out"
                    .into(),
            );
        }
        let stdin_bytes = match (&self.stdin, &self.stdin_base64) {
            (Some(_), Some(_)) => {
                return refuse("give `stdin` or `stdin_base64`, not both".into());
            }
            (Some(text), None) => text.len(),
            (None, Some(encoded)) => match BASE64.decode(encoded) {
                Ok(bytes) => bytes.len(),
                Err(_) => return refuse("`stdin_base64` is not standard base64".into()),
            },
            (None, None) => 0,
        };
        if stdin_bytes > MAX_INLINE_STDIN_BYTES {
            return refuse(format!(
                "the standard input is {stdin_bytes} bytes; at most {MAX_INLINE_STDIN_BYTES} \
                 travel in a start (put larger data in a file the command reads)"
            ));
        }
        if let Err(why) = check_labels(self.labels.iter().map(|(k, v)| (k.as_str(), v.as_str()))) {
            return refuse(format!("`labels`: {why}"));
        }
        let mut env_bytes = 0;
        for (name, value) in &self.env {
            if name.is_empty() || name.contains(['=', '\0']) || value.contains('\0') {
                return refuse(
                    "`env` holds a name that is empty or has `=` or NUL in it, or a value with \
                     NUL"
                    .into(),
                );
            }
            env_bytes += name.len() + value.len();
        }
        if env_bytes > MAX_ENV_BYTES {
            return refuse(format!(
                "`env` is {env_bytes} bytes; at most {MAX_ENV_BYTES} are allowed"
            ));
        }
        Ok(())
    }

    /// The environment values, for `exec` alone.
    #[must_use]
    pub fn env_values(&self) -> EnvValues {
        EnvValues(
            self.env
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        )
    }

    /// The standard input, for `exec` alone.
    #[must_use]
    pub fn stdin_input(&self) -> Option<StdinInput> {
        match (&self.stdin, &self.stdin_base64) {
            (Some(text), _) => Some(StdinInput::Base64(BASE64.encode(text))),
            (None, Some(encoded)) => Some(StdinInput::Base64(encoded.clone())),
            (None, None) => None,
        }
    }

    /// The bound on the output the result carries, per stream.
    #[must_use]
    pub fn output_limit(&self) -> u64 {
        self.output_limit_bytes
            .unwrap_or(DEFAULT_OUTPUT_LIMIT_BYTES)
    }
}

/// Input of `admit`: a checked start, for the worker to record and place.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct AdmitRequest {
    pub workflow_id: String,
    pub run_id: String,
    /// The start without its environment values (the names stay) and without its stdin.
    pub input: PublicInput,
    /// Whether the start gives the command a stdin.
    #[serde(default)]
    pub stdin: bool,
}

/// Input of `collect_output`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct CollectRequest {
    pub execution_id: String,
    /// Bytes per stream.
    pub limit: u64,
}

/// What the result of a public start carries besides the status: the mode and why, and the
/// output's head and tail per stream within the input's bound (the whole output stays in the
/// store: `stigmer logs ID`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Report {
    pub mode: String,
    pub reason: String,
    pub stdout: String,
    pub stderr: String,
    pub stdout_bytes: u64,
    pub stderr_bytes: u64,
    /// Whether either stream was cut here, or the store kept only its head and tail.
    pub truncated: bool,
    /// The sha256 of the whole output (both streams as produced), once recorded.
    pub output_sha256: Option<String>,
}

/// The JSON Schema of the public input, generated from these types (docs/temporal-api.schema.json
/// is this; a test keeps it current).
#[must_use]
pub fn public_input_schema() -> String {
    let schema = schemars::schema_for!(PublicInput);
    serde_json::to_string_pretty(&schema).unwrap_or_default() + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_schema_is_current() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../docs/temporal-api.schema.json"
        );
        let generated = public_input_schema();
        if std::env::var_os("STIGMER_UPDATE_SCHEMA").is_some() {
            std::fs::write(path, &generated).unwrap();
        }
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            committed == generated,
            "docs/temporal-api.schema.json is not the schema of today's PublicInput: run \
             STIGMER_UPDATE_SCHEMA=1 cargo test -p stigmer-workflows the_committed_schema"
        );
        let schema: serde_json::Value = serde_json::from_str(&committed).unwrap();
        assert_eq!(
            schema["additionalProperties"], false,
            "unknown fields are refused"
        );
        let required: Vec<&str> = schema["required"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        assert_eq!(required, ["version", "workflow_id"]);
    }

    const OWN: &str = "orders-42";

    fn read(json: &str) -> Result<PublicInput, String> {
        PublicInput::read(json.as_bytes(), OWN)
    }

    #[test]
    fn the_minimal_input_reads() {
        let input = read(r#"{"version":1,"command":"echo hi","workflow_id":"orders-42"}"#).unwrap();
        assert_eq!(input.command.as_deref(), Some("echo hi"));
        assert_eq!(input.output_limit(), DEFAULT_OUTPUT_LIMIT_BYTES);
    }

    #[test]
    fn bad_input_names_the_field_and_never_the_value() {
        let cases = [
            (
                r#"{"version":1,"command":"x","workflow_id":"orders-42","colour":"s3cret"}"#,
                "unknown field `colour`",
            ),
            (
                r#"{"version":1,"workflow_id":"orders-42"}"#,
                "give the command",
            ),
            (
                r#"{"version":1,"command":"x","argv":["y"],"workflow_id":"orders-42"}"#,
                "not both",
            ),
            (
                r#"{"version":1,"command":"x","timeout_secs":"s3cret","workflow_id":"orders-42"}"#,
                "`timeout_secs`",
            ),
            (
                r#"{"version":1,"command":"x","mode":"s3cret","workflow_id":"orders-42"}"#,
                "`mode`",
            ),
            (
                r#"{"version":1,"command":"x","timeout_secs":99999999999,"workflow_id":"orders-42"}"#,
                "30 days",
            ),
            (
                r#"{"version":1,"command":"x","workflow_id":"s3cret"}"#,
                "`workflow_id`",
            ),
            (
                r#"{"version":2,"command":"x","workflow_id":"orders-42"}"#,
                "`version`",
            ),
            (
                r#"{"version":1,"command":"x","workflow_id":"orders-42","sandbox":{"workspace":"/"}}"#,
                "unknown field `workspace`",
            ),
            (
                r#"{"version":1,"command":"x","workflow_id":"orders-42","output_limit_bytes":10000000}"#,
                "at most",
            ),
            (r#"{"version":1,"command":"x""#, "not JSON"),
            (
                r#"{"version":1,"command":"x","workflow_id":"orders-42","labels":{"s3cret!":"v"}}"#,
                "label name",
            ),
            (
                r#"{"version":1,"command":"x","workflow_id":"orders-42","labels":{"k":"s3cret\n"}}"#,
                "control characters",
            ),
            (
                r#"{"version":1,"command":"x","workflow_id":"orders-42","labels":{"k":7}}"#,
                "`labels.k`",
            ),
            (
                r#"{"version":1,"command":"x","workflow_id":"orders-42","stdin":"a","stdin_base64":"YQ=="}"#,
                "not both",
            ),
            (
                r#"{"version":1,"command":"x","workflow_id":"orders-42","stdin_base64":"s3cret!!"}"#,
                "not standard base64",
            ),
            (
                r#"{"version":1,"command":"x","workflow_id":"orders-42","session":"s3cret"}"#,
                "`session` is reserved",
            ),
        ];
        for (json, expected) in cases {
            let err = read(json).unwrap_err();
            assert!(err.contains(expected), "{json}: {err}");
            assert!(
                !err.contains("s3cret"),
                "{json}: the value is echoed: {err}"
            );
            assert!(err.contains("nothing ran"), "{err}");
        }
    }

    #[test]
    fn labels_are_kept_and_bounded() {
        let input = read(
            r#"{"version":1,"command":"x","workflow_id":"orders-42","labels":{"team":"payments","ci.run/id":"123-a_b"}}"#,
        )
        .unwrap();
        assert_eq!(input.labels["team"], "payments");
        let many: Vec<String> = (0..=MAX_LABELS)
            .map(|i| format!("\"l{i}\":\"v\""))
            .collect();
        let json = format!(
            r#"{{"version":1,"command":"x","workflow_id":"orders-42","labels":{{{}}}}}"#,
            many.join(",")
        );
        assert!(read(&json).unwrap_err().contains("at most 32"));
        let long = "v".repeat(MAX_LABEL_VALUE_BYTES + 1);
        let json = format!(
            r#"{{"version":1,"command":"x","workflow_id":"orders-42","labels":{{"k":"{long}"}}}}"#
        );
        assert!(read(&json).unwrap_err().contains("at most 256 bytes"));
        // An input without labels serializes as before they existed (recorded histories).
        let plain = read(r#"{"version":1,"command":"x","workflow_id":"orders-42"}"#).unwrap();
        let text = serde_json::to_string(&plain).unwrap();
        assert!(
            !text.contains("labels") && !text.contains("session"),
            "{text}"
        );
    }

    #[test]
    fn env_values_never_show_in_debug_output() {
        let input = read(
            r#"{"version":1,"argv":["env"],"env":{"TOKEN":"hunter2"},"workflow_id":"orders-42"}"#,
        )
        .unwrap();
        let shown = format!("{input:?}");
        assert!(
            shown.contains("TOKEN") && !shown.contains("hunter2"),
            "{shown}"
        );
    }
}
