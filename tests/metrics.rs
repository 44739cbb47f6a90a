//! Prometheus metrics end to end: the daemon (`server start --metrics-addr`) and a bare worker
//! (`STIGMER_METRICS_ADDR`) serve `/metrics`; executions run through the real binary against a
//! real Temporal dev server, Docker engine and store, and a scrape over HTTP shows what a
//! Prometheus would see.

mod common;

use common::{
    Children, Env, RemoveContainers, eventually, free_port, remote_env, start_temporal,
    start_worker, text,
};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::time::Duration;

/// One sample: metric name and labels.
type Key = (String, BTreeMap<String, String>);

/// GET /metrics; the status line, the headers and the parsed samples.
fn scrape(port: u16) -> (String, BTreeMap<Key, f64>) {
    let mut stream =
        std::net::TcpStream::connect(("127.0.0.1", port)).expect("metrics port answers");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    (head.to_string(), parse(body))
}

/// The Prometheus text format, just enough of it: `name{k="v",…} value` lines.
fn parse(body: &str) -> BTreeMap<Key, f64> {
    let mut samples = BTreeMap::new();
    for line in body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = line.rsplit_once(' ').expect("sample line");
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let labels = rest
                    .trim_end_matches('}')
                    .split("\",")
                    .filter(|p| !p.is_empty())
                    .map(|pair| {
                        let (k, v) = pair.split_once("=\"").expect("label pair");
                        (k.to_string(), v.trim_end_matches('"').to_string())
                    })
                    .collect();
                (name.to_string(), labels)
            }
            None => (series.to_string(), BTreeMap::new()),
        };
        samples.insert((name, labels), value.parse().expect("number"));
    }
    samples
}

fn value(samples: &BTreeMap<Key, f64>, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let labels: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    samples.get(&(name.to_string(), labels)).copied()
}

fn run(env: &Env, args: &[&str], expected: i32) {
    let mut all = vec!["run"];
    all.extend_from_slice(args);
    let out = env.stigmer(&all);
    assert_eq!(
        out.status.code(),
        Some(expected),
        "{args:?}: {}",
        text(&out.stderr)
    );
}

fn sandbox_image() -> String {
    std::env::var("STIGMER_TEST_SANDBOX_IMAGE")
        .unwrap_or_else(|_| "stigmer-sandbox-basic:local".into())
}

#[test]
fn the_daemon_counts_executions_by_mode_and_outcome_and_reads_leases_from_the_store() {
    let mut env = Env::new();
    env.extra
        .push(("STIGMER_SANDBOX_AUTO_PULL".into(), "false".into()));
    let _cleanup = RemoveContainers(&env);
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    // Through --detach: the flag must reach the daemon that is started in the background.
    let out = env.stigmer(&["server", "start", "--detach", "--metrics-addr", &addr]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    let (head, before) = scrape(port);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    let local_ok = [
        ("mode", "local"),
        ("requested", "local"),
        ("outcome", "succeeded"),
    ];
    assert_eq!(
        value(&before, "stigmer_executions_total", &local_ok),
        None,
        "nothing ran yet"
    );
    assert_eq!(
        value(&before, "stigmer_leases", &[("state", "idle")]),
        Some(0.0)
    );

    run(&env, &["true"], 0);
    run(&env, &["echo counted"], 0);
    run(&env, &["exit 3"], 3);
    run(&env, &["--timeout", "1", "sleep 30"], 124);
    run(
        &env,
        &[
            "--mode",
            "sandbox",
            "--sandbox-image",
            &sandbox_image(),
            "echo boxed",
        ],
        0,
    );

    let (_, after) = scrape(port);
    let count = |labels: &[(&str, &str)]| value(&after, "stigmer_executions_total", labels);
    assert_eq!(count(&local_ok), Some(2.0), "{after:#?}");
    assert_eq!(
        count(&[
            ("mode", "local"),
            ("requested", "local"),
            ("outcome", "failed")
        ]),
        Some(1.0)
    );
    assert_eq!(
        count(&[
            ("mode", "local"),
            ("requested", "local"),
            ("outcome", "timed_out")
        ]),
        Some(1.0)
    );
    assert_eq!(
        count(&[
            ("mode", "sandbox"),
            ("requested", "sandbox"),
            ("outcome", "succeeded")
        ]),
        Some(1.0)
    );

    // Durations: every execution observed once, and the one killed after 1 s is not in the
    // sub-second buckets.
    let hist = |suffix: &str, labels: &[(&str, &str)]| {
        value(
            &after,
            &format!("stigmer_execution_duration_seconds_{suffix}"),
            labels,
        )
    };
    assert_eq!(
        hist("count", &[("mode", "local"), ("outcome", "succeeded")]),
        Some(2.0)
    );
    let timed_out = [("mode", "local"), ("outcome", "timed_out")];
    assert_eq!(hist("count", &timed_out), Some(1.0));
    assert!(
        hist("sum", &timed_out).is_some_and(|s| s >= 1.0),
        "{after:#?}"
    );
    assert_eq!(
        hist(
            "bucket",
            &[("mode", "local"), ("outcome", "timed_out"), ("le", "0.5")]
        ),
        Some(0.0)
    );

    // The sandbox run left its container idle for reuse: the gauge reads the store.
    assert_eq!(
        value(&after, "stigmer_leases", &[("state", "idle")]),
        Some(1.0),
        "{after:#?}"
    );
    assert_eq!(
        value(&after, "stigmer_leases", &[("state", "busy")]),
        Some(0.0)
    );
    assert!(
        value(
            &after,
            "stigmer_containers_reaped_total",
            &[("reason", "orphan")]
        )
        .is_some()
    );
    assert_eq!(value(&after, "stigmer_audit_records_total", &[]), Some(5.0));

    // Anything but /metrics is a 404 that says where to look.
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        stream,
        "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 404"), "{response}");
    assert!(response.contains("/metrics"));
}

#[test]
fn a_worker_serves_metrics_from_the_environment_and_bad_addresses_are_refused() {
    let env = Env::new();
    let out = env.stigmer(&["server", "start", "--metrics-addr", "nonsense"]);
    assert_eq!(out.status.code(), Some(2), "a bad value is a usage error");
    let err = text(&out.stderr);
    assert!(
        err.contains("--metrics-addr")
            && err.contains("nonsense")
            && err.contains("127.0.0.1:9464"),
        "names the flag, the value and what is allowed: {err}"
    );
    assert!(env.daemon_pid().is_none(), "nothing started");

    // A port already taken fails the start with a message that says so.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap().to_string();
    let out = env.stigmer(&["server", "start", "--detach", "--metrics-addr", &taken_addr]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!("could not serve metrics on {taken_addr}")),
        "{err}"
    );
    drop(taken);

    let mut env = remote_env();
    let port = free_port();
    env.extra
        .push(("STIGMER_METRICS_ADDR".into(), format!("127.0.0.1:{port}")));
    let mut children = Children(vec![start_temporal(&env)]);
    children.0.push(start_worker(&env));
    assert!(
        eventually(Duration::from_secs(30), || std::net::TcpStream::connect((
            "127.0.0.1",
            port
        ))
        .is_ok()),
        "the worker serves metrics"
    );
    // The metrics port is bound before the store is made (a taken port fails fast); wait for
    // the store too before a client opens it.
    assert!(
        eventually(Duration::from_secs(60), || env
            .stigmer(&["executions", "list"])
            .status
            .success()),
        "the worker did not make the store; its stderr:\n{}",
        common::worker_log(&env)
    );
    let out = env.stigmer(&["run", "echo from-worker"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let (_, samples) = scrape(port);
    assert_eq!(
        value(
            &samples,
            "stigmer_executions_total",
            &[
                ("mode", "local"),
                ("requested", "local"),
                ("outcome", "succeeded")
            ]
        ),
        Some(1.0),
        "{samples:#?}"
    );
}

#[test]
fn the_metrics_address_follows_the_usual_precedence() {
    let env = Env::new();
    let config_dir = env.dir.path().join(".config/stigmer");
    std::fs::create_dir_all(&config_dir).unwrap();
    std::fs::write(
        config_dir.join("config.toml"),
        "metrics_addr = \"127.0.0.1:9464\"\n",
    )
    .unwrap();
    let show = |env_value: Option<&str>| {
        let mut cmd = env.cmd();
        if let Some(v) = env_value {
            cmd.env("STIGMER_METRICS_ADDR", v);
        }
        cmd.args(["config", "show", "--output", "json"]);
        let out = common::output_within(cmd, Duration::from_secs(30));
        assert!(out.status.success(), "{}", text(&out.stderr));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["metrics_addr"].clone()
    };
    let from_file = show(None);
    assert_eq!(from_file["value"], "127.0.0.1:9464");
    assert!(
        from_file["source"]
            .as_str()
            .is_some_and(|s| s.starts_with("file ")),
        "{from_file}"
    );
    let from_env = show(Some("localhost:9500"));
    assert_eq!(from_env["value"], "127.0.0.1:9500");
    assert_eq!(from_env["source"], "env STIGMER_METRICS_ADDR");
}
