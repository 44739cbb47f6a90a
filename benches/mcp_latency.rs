//! Benchmark (not a test): what `run_command` over MCP adds to `stigmer run`. Both run `true`
//! against the same warm daemon in the same run: `stigmer run true` as a process per command
//! (as run_latency measures it), and `run_command` calls over one `stigmer mcp` connection (as
//! an agent's client makes them), timed from writing the request to reading the response.
//! Run with `cargo bench --bench mcp_latency`.
//!
//! The daemon is private to the run (its own data dir and Temporal ports) and stopped at the end.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

mod common;

use common::{RUNS, WARMUP, measure, percentile, report, stigmer};

/// A `stigmer mcp` server spoken to as a client would: newline-delimited JSON-RPC on its
/// stdin and stdout.
struct McpClient {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    next_id: u64,
}

impl McpClient {
    fn start(mut cmd: Command) -> Self {
        let mut child = cmd
            .arg("mcp")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("stigmer mcp");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut client = Self {
            child,
            stdin,
            stdout,
            next_id: 0,
        };
        client.request(
            "initialize",
            serde_json::json!({
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "mcp_latency", "version": "0"}
            }),
        );
        client.send(&serde_json::json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
        client
    }

    fn send(&mut self, message: &serde_json::Value) {
        writeln!(self.stdin, "{message}").expect("write to stigmer mcp");
        self.stdin.flush().expect("flush");
    }

    /// Sends a request and returns its response's `result`.
    fn request(&mut self, method: &str, params: serde_json::Value) -> serde_json::Value {
        self.next_id += 1;
        let id = self.next_id;
        self.send(
            &serde_json::json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}),
        );
        let mut line = String::new();
        loop {
            line.clear();
            let n = self
                .stdout
                .read_line(&mut line)
                .expect("read from stigmer mcp");
            assert!(n > 0, "stigmer mcp closed its stdout");
            let message: serde_json::Value = serde_json::from_str(&line).expect("JSON-RPC");
            if message["id"] == id {
                assert!(message["error"].is_null(), "{method}: {message}");
                return message["result"].clone();
            }
        }
    }
}

impl Drop for McpClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn main() {
    let bin = stigmer();
    let data = tempfile::tempdir().expect("temp dir");
    let port = 30000 + (std::process::id() % 2000) as u16;
    let cmd = |args: &[&str]| {
        let mut c = Command::new(&bin);
        c.args(args)
            .env("STIGMER_DATA_DIR", data.path())
            .env("STIGMER_TEMPORAL_PORT", port.to_string())
            .env("STIGMER_TEMPORAL_UI_PORT", (port + 1000).to_string())
            .env_remove("TEMPORAL_ADDRESS")
            .env_remove("STIGMER_DATABASE_URL")
            .env_remove("STIGMER_EXECUTION_MODE")
            .stdin(Stdio::null());
        c
    };
    let started = cmd(&["server", "start", "--detach"])
        .status()
        .expect("start daemon");
    assert!(started.success(), "the daemon did not start");

    println!(
        "run_command over MCP beside stigmer run (warm daemon, {RUNS} runs after {WARMUP} warm-up runs)"
    );
    let run = measure(|| {
        let out = cmd(&["run", "true"])
            .stdout(Stdio::null())
            .status()
            .expect("stigmer run");
        assert!(out.success(), "stigmer run true failed");
    });
    report("stigmer run true (a process per command)", &run);

    let mut client = McpClient::start(cmd(&[]));
    let mcp = measure(|| {
        let result = client.request(
            "tools/call",
            serde_json::json!({"name": "run_command", "arguments": {"command": "true"}}),
        );
        assert_eq!(
            result["structuredContent"]["status"], "succeeded",
            "{result}"
        );
    });
    report("run_command true over MCP (one connection)", &mcp);
    drop(client);

    let median = |s: &[Duration]| percentile(s, 0.5).as_secs_f64() * 1e3;
    println!(
        "{:<44} {:>+8.2} ms (target ≤ 5 ms; the client's process start is in `stigmer run` only)",
        "median: run_command minus stigmer run",
        median(&mcp) - median(&run)
    );
    let _ = cmd(&["server", "stop"]).status();
}
