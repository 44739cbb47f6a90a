//! `stigmer mcp` end to end, driven by the official MCP Python SDK as a client
//! (`tests/foreign/mcp_client.py`) against a real daemon, Temporal dev server and store. What is
//! asserted is what an agent's user checks: the tools and their schemas, results apart from
//! errors, a command that outlives its wait, and a cancel that kills the command.

mod common;

use common::{Env, eventually, output_within, processes_matching, text};
use serde_json::Value;
use std::process::Command;
use std::time::Duration;

/// Runs the Python client's scenario against `stigmer mcp` in `env`; returns what it saw.
fn python_scenario(env: &Env, sleep_secs: u32) -> Value {
    let mut cmd = Command::new("python3");
    // The server the client spawns inherits this environment: the installation's settings.
    let settings = env.cmd();
    for (key, value) in settings.get_envs() {
        match value {
            Some(value) => cmd.env(key, value),
            None => cmd.env_remove(key),
        };
    }
    cmd.current_dir(env.dir.path())
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/foreign/mcp_client.py"
        ))
        .arg(common::bin())
        .arg(sleep_secs.to_string());
    let out = output_within(cmd, Duration::from_secs(120));
    assert!(
        out.status.success(),
        "the MCP client (scripts/test.sh installs `mcp`) failed: {}",
        text(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out.stdout)))
}

#[test]
fn an_mcp_client_lists_runs_follows_and_cancels_commands() {
    let mut env = Env::new();
    // Its sandbox session runs in the image the other suites use, made by the test script.
    let image = std::env::var("STIGMER_TEST_SANDBOX_IMAGE")
        .unwrap_or_else(|_| "stigmer-sandbox-basic:local".into());
    env.extra.push(("STIGMER_SANDBOX_IMAGE".into(), image));
    env.extra
        .push(("STIGMER_SANDBOX_AUTO_PULL".into(), "false".into()));
    let _containers = common::RemoveContainers(&env);
    // A duration no other test sleeps, to find this command's process by.
    let sleep_secs = 40_000 + std::process::id() % 10_000;
    let seen = python_scenario(&env, sleep_secs);

    // The tools, each with a description and the JSON Schema of its input and result.
    let tools = &seen["tools"];
    for name in [
        "run_command",
        "read_output",
        "explain_command",
        "start_session",
        "end_session",
        "write_file",
        "read_file",
    ] {
        let tool = &tools[name];
        assert!(tool["description"].is_string(), "{name}: {tool}");
        assert_eq!(tool["input_schema"]["type"], "object", "{name}");
        assert_eq!(tool["output_schema"]["type"], "object", "{name}");
    }
    let run_input = &tools["run_command"]["input_schema"];
    assert_eq!(run_input["required"], serde_json::json!(["command"]));
    for arg in ["mode", "workdir", "timeout_secs", "env", "wait_secs"] {
        assert!(
            run_input["properties"][arg].is_object(),
            "{arg}: {run_input}"
        );
    }
    assert_eq!(
        tools["read_output"]["input_schema"]["required"],
        serde_json::json!(["id"])
    );

    // A command that exits non-zero is a result, with its streams apart.
    let stdin = &seen["stdin"];
    assert_eq!(
        stdin["structured"]["stdout"], "read-all\n",
        "a command reading stdin gets end of file, never the protocol: {stdin}"
    );
    let exit3 = &seen["exit3"];
    assert_eq!(exit3["is_error"], false, "{exit3}");
    let result = &exit3["structured"];
    assert_eq!(result["exit_code"], 3, "{result}");
    assert_eq!(result["status"], "failed");
    assert_eq!(result["stdout"], "out\n");
    assert_eq!(result["stderr"], "err\n");
    assert_eq!(result["stdout_bytes"], 4);
    assert_eq!(result["truncated"], false);
    assert_eq!(result["mode"], "local");
    let id = result["id"].as_str().expect("an execution id");
    assert!(
        exit3["text"].as_str().unwrap().contains("exit code 3"),
        "{exit3}"
    );
    assert_eq!(
        env.show(id)["exit_code"],
        3,
        "the same execution as the CLI sees"
    );
    assert_eq!(
        env.show(id)["labels"]["step"],
        "build-1",
        "its labels are kept"
    );
    let bad_label = &seen["bad_label"];
    assert_eq!(bad_label["is_error"], true, "{bad_label}");
    assert!(
        bad_label["text"]
            .as_str()
            .unwrap()
            .contains("`labels`: a label name"),
        "{bad_label}"
    );

    // A bad argument, a misspelt one, or an unknown id is a tool error that says what to do.
    let bad_mode = &seen["bad_mode"];
    assert_eq!(bad_mode["is_error"], true, "{bad_mode}");
    let message = bad_mode["text"].as_str().unwrap();
    assert!(
        message.contains("\"fast\"") && message.contains("local, sandbox, auto, cloud"),
        "{message}"
    );
    let misspelt = &seen["misspelt"];
    assert_eq!(misspelt["is_error"], true, "{misspelt}");
    assert!(
        misspelt["text"]
            .as_str()
            .unwrap()
            .contains("unknown field `timeout`"),
        "{misspelt}"
    );
    let unknown = &seen["unknown_id"];
    assert_eq!(unknown["is_error"], true, "{unknown}");
    assert!(
        unknown["text"]
            .as_str()
            .unwrap()
            .contains("stigmer executions list"),
        "{unknown}"
    );

    // The classifier `stigmer explain` uses.
    let explain = &seen["explain"]["structured"];
    assert_eq!(explain["decision"], "sandbox", "{explain}");
    assert!(explain["reason"].as_str().is_some_and(|r| !r.is_empty()));

    // A command still running when the wait ends: its id now, all its output later.
    let long = &seen["long"]["structured"];
    assert_eq!(long["status"], "running", "{long}");
    assert!(
        seen["long_returned_after"].as_f64().unwrap() < 3.0,
        "the call waited for the end: {}",
        seen["long_returned_after"]
    );
    let pages = seen["pages"].as_array().expect("pages");
    let last = &pages.last().expect("read_output was called")["structured"];
    assert_eq!(last["status"], "succeeded", "{pages:?}");
    assert_eq!(last["more"], false);
    let (stdout, stderr): (String, String) = pages
        .iter()
        .map(|p| {
            (
                p["structured"]["stdout"].as_str().unwrap_or_default(),
                p["structured"]["stderr"].as_str().unwrap_or_default(),
            )
        })
        .fold((String::new(), String::new()), |(o, e), (po, pe)| {
            (o + po, e + pe)
        });
    assert_eq!(stdout, "first\nsecond\n", "{pages:?}");
    assert_eq!(stderr, "done\n");
    assert!(pages.len() > 2, "8-byte pages: {pages:?}");

    // A cancel from the client kills the command, and the execution ends cancelled.
    assert_eq!(seen["cancel_alive_before"], true, "{seen}");
    let progress = seen["cancel_progress"].as_array().expect("progress");
    assert!(
        progress.iter().any(|p| p["message"]
            .as_str()
            .is_some_and(|m| m.contains("running for"))),
        "progress while it ran: {progress:?}"
    );
    let cancelled = seen["cancel_id"].as_str().expect("the id, from progress");
    let needle = format!("sleep {sleep_secs}");
    assert!(
        eventually(Duration::from_secs(20), || processes_matching(&needle)
            .is_empty()),
        "the command's process is still there: {:?}",
        processes_matching(&needle)
    );
    let record = common::wait_terminal(&env, cancelled, Duration::from_secs(20));
    assert_eq!(record["status"], "cancelled", "{record}");
    // The connection goes on after a cancelled call.
    assert_eq!(seen["after_cancel"]["structured"]["stdout"], "still here\n");

    // A sandbox session over MCP: the directory and exported variables carry over, files go in
    // (text and binary, with a mode) and out, and mistakes are tool errors that say what to do.
    let started = &seen["start_session"];
    assert_eq!(started["is_error"], false, "{started}");
    let sid = started["structured"]["id"].as_str().expect("session id");
    assert!(sid.starts_with("ses-"), "{sid}");
    assert_eq!(started["structured"]["mode"], "sandbox");
    assert_eq!(
        seen["session_first"]["structured"]["exit_code"], 0,
        "{seen}"
    );
    for step in ["write_text", "write_binary"] {
        assert_eq!(seen[step]["is_error"], false, "{step}: {}", seen[step]);
    }
    let second = &seen["session_second"]["structured"];
    let digest = seen["payload_sha256"].as_str().unwrap();
    assert_eq!(
        second["stdout"].as_str().unwrap(),
        format!("/tmp/w\nhello\nfrom the client\n750 16389\n{digest}  -\n"),
        "{second}"
    );
    assert_eq!(seen["read_text"]["structured"]["content"], "made", "{seen}");
    assert_eq!(seen["read_binary_same"], true, "binary read back whole");
    assert_eq!(seen["read_binary_mode"], "750");
    for (step, says) in [
        ("read_binary_as_text", "base64: true"),
        ("read_missing", "does not exist"),
        ("session_with_mode", "the session decides the mode"),
        ("after_end", "ended"),
        ("unknown_session", "session start"),
    ] {
        let r = &seen[step];
        assert_eq!(r["is_error"], true, "{step}: {r}");
        assert!(
            r["text"].as_str().is_some_and(|t| t.contains(says)),
            "{step}: {r}"
        );
    }
    let ended = &seen["end_session"];
    assert_eq!(ended["is_error"], false, "{ended}");
    assert_eq!(
        ended["structured"]["removed_containers"]
            .as_array()
            .map(Vec::len),
        Some(1),
        "{ended}"
    );
}
