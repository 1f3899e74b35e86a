//! Tracing export of `clipflow run`: `--otel-file` writes a span for the
//! command, the graph run, every stage worker and every item, nested in that
//! order and named after the topology's stages, also when a stage fails (the
//! exporter flushes on error exits); OTLP export posts protobuf to
//! `/v1/traces` of the endpoint `OTEL_EXPORTER_OTLP_ENDPOINT` names; lost
//! traces are reported without failing the run.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::mpsc;
use std::time::Duration;

use common::clipflow_bin;
use serde_json::Value;

const DEMO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/topologies/demo.toml");

/// The variables that would send the spans elsewhere or change batching.
const OTEL_VARIABLES: [&str; 3] = [
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_BSP_MAX_QUEUE_SIZE",
];

fn clipflow(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(clipflow_bin());
    for name in OTEL_VARIABLES {
        command.env_remove(name);
    }
    command.args(args).envs(env.iter().copied());
    command.output().expect("starting clipflow")
}

/// The spans of a `--otel-file` file, one JSON object a line.
fn read_spans(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .expect("reading the span file")
        .lines()
        .map(|line| serde_json::from_str(line).expect("each line is a JSON span"))
        .collect()
}

fn str_field<'a>(span: &'a Value, key: &str) -> &'a str {
    span[key].as_str().unwrap_or_default()
}

/// The stage names of a topology file: its `[stages.NAME]` tables.
fn stage_names(topology: &str) -> Vec<String> {
    topology
        .lines()
        .filter_map(|line| line.trim().strip_prefix("[stages."))
        .map(|rest| rest.trim_end_matches(']').to_string())
        .collect()
}

/// Checks the nesting every run has: `clipflow run` (the root) > `graph` >
/// one span per stage worker > that worker's `item` spans. Returns the
/// stage spans by id and the item spans.
fn check_run_structure(spans: &[Value]) -> (HashMap<&str, &Value>, Vec<&Value>) {
    let roots: Vec<&Value> = spans
        .iter()
        .filter(|s| s["parent_span_id"].is_null())
        .collect();
    assert_eq!(roots.len(), 1, "one root span: {roots:?}");
    let root = roots[0];
    assert_eq!(str_field(root, "name"), "clipflow run");
    assert_eq!(str_field(&root["resource"], "service.name"), "clipflow");
    assert_eq!(str_field(&root["resource"], "clipflow.command"), "run");
    let trace_id = str_field(root, "trace_id");
    assert!(
        spans.iter().all(|s| str_field(s, "trace_id") == trace_id),
        "every span is in the command's trace"
    );

    let graph: Vec<&Value> = spans
        .iter()
        .filter(|s| str_field(s, "name") == "graph")
        .collect();
    assert_eq!(graph.len(), 1);
    assert_eq!(
        str_field(graph[0], "parent_span_id"),
        str_field(root, "span_id")
    );
    let graph_id = str_field(graph[0], "span_id");

    let workers: HashMap<&str, &Value> = spans
        .iter()
        .filter(|s| str_field(s, "parent_span_id") == graph_id)
        .map(|s| (str_field(s, "span_id"), s))
        .collect();
    for worker in workers.values() {
        let stage = str_field(&worker["attributes"], "stage");
        assert_eq!(
            str_field(worker, "name"),
            stage,
            "a worker span is named after its stage"
        );
    }
    let items: Vec<&Value> = spans
        .iter()
        .filter(|s| str_field(s, "name") == "item")
        .collect();
    for item in &items {
        let parent = workers
            .get(str_field(item, "parent_span_id"))
            .expect("an item span's parent is a stage worker's span");
        assert_eq!(item["attributes"]["stage"], parent["attributes"]["stage"]);
        assert_eq!(item["attributes"]["worker"], parent["attributes"]["worker"]);
    }
    (workers, items)
}

fn items_of<'a>(items: &[&'a Value], stage: &str) -> Vec<&'a Value> {
    items
        .iter()
        .copied()
        .filter(|item| str_field(&item["attributes"], "stage") == stage)
        .collect()
}

#[test]
fn otel_file_holds_a_span_per_stage_worker_and_item() {
    let dir = tempfile::tempdir().unwrap();
    let trace_file = dir.path().join("traces.jsonl");
    let trace_arg = trace_file.to_str().unwrap();
    let out = clipflow(
        &[
            "run",
            "--otel-file",
            trace_arg,
            DEMO,
            "--count",
            "60",
            "--workers",
            "3",
        ],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let spans = read_spans(&trace_file);
    let (workers, items) = check_run_structure(&spans);

    let stages = stage_names(&std::fs::read_to_string(DEMO).unwrap());
    assert_eq!(stages.len(), 3, "demo.toml's stages: {stages:?}");
    for stage in &stages {
        let worker_spans: Vec<_> = workers
            .values()
            .filter(|w| str_field(&w["attributes"], "stage") == stage)
            .collect();
        let expected_workers = if stage == "square" { 3 } else { 1 };
        assert_eq!(
            worker_spans.len(),
            expected_workers,
            "worker spans of '{stage}'"
        );
    }
    // The source's work is its worker span; each stage handles every number.
    assert!(items_of(&items, "numbers").is_empty());
    assert_eq!(items_of(&items, "square").len(), 60);
    assert_eq!(items_of(&items, "drain").len(), 60);
    let square_workers: std::collections::HashSet<i64> = items_of(&items, "square")
        .iter()
        .map(|item| item["attributes"]["worker"].as_i64().expect("worker index"))
        .collect();
    assert!(square_workers.iter().all(|w| (0..3).contains(w)));
}

#[test]
fn a_failed_run_still_writes_its_spans() {
    let dir = tempfile::tempdir().unwrap();
    let topology = dir.path().join("failing.toml");
    std::fs::write(
        &topology,
        r#"
[stages.numbers]
kind = "counter"
count = 40

[stages.picky]
kind = "work"
inputs = ["numbers"]
fail_on = [25]

[stages.drain]
kind = "null"
inputs = ["picky"]
"#,
    )
    .unwrap();
    let trace_file = dir.path().join("traces.jsonl");
    let out = clipflow(
        &[
            "run",
            "--otel-file",
            trace_file.to_str().unwrap(),
            topology.to_str().unwrap(),
        ],
        &[],
    );
    assert!(!out.status.success(), "the run fails on item 25");
    let spans = read_spans(&trace_file);
    let (workers, items) = check_run_structure(&spans);
    let root = spans
        .iter()
        .find(|s| s["parent_span_id"].is_null())
        .unwrap();
    assert_eq!(root["status"]["code"], "error");
    assert!(
        str_field(&root["status"], "message").contains("picky"),
        "the root span's status names the failed stage: {}",
        root["status"]
    );
    assert!(workers
        .values()
        .any(|w| str_field(&w["attributes"], "stage") == "picky"));
    assert!(
        items_of(&items, "picky").len() >= 26,
        "items up to the failing one"
    );
}

/// What the test collector saw of one HTTP request.
struct Request {
    request_line: String,
    content_type: String,
    body: Vec<u8>,
}

/// Reads the requests of one connection, answering each with 200 OK.
fn serve_connection(stream: TcpStream, seen: &mpsc::Sender<Request>) -> std::io::Result<()> {
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line)? == 0 {
            return Ok(());
        }
        let mut headers = HashMap::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line)?;
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
            }
        }
        let length: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; length];
        reader.read_exact(&mut body)?;
        writer.write_all(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n",
        )?;
        let _ = seen.send(Request {
            request_line: request_line.trim_end().to_string(),
            content_type: headers.remove("content-type").unwrap_or_default(),
            body,
        });
    }
}

#[test]
fn otlp_endpoint_variable_sends_protobuf_to_v1_traces() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let (seen, requests) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let seen = seen.clone();
            std::thread::spawn(move || serve_connection(stream, &seen));
        }
    });

    let out = clipflow(
        &["run", DEMO, "--count", "20"],
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let request = requests
        .recv_timeout(Duration::from_secs(10))
        .expect("clipflow posted its spans before exiting");
    assert_eq!(request.request_line, "POST /v1/traces HTTP/1.1");
    assert_eq!(request.content_type, "application/x-protobuf");
    assert!(!request.body.is_empty());
    // Protobuf keeps strings as bytes: the stage names are in the body.
    let body = String::from_utf8_lossy(&request.body);
    assert!(body.contains("square") && body.contains("clipflow"));
}

#[test]
fn export_failures_are_reported_not_fatal() {
    // A port nothing listens on: the run succeeds and says its traces were lost.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let out = clipflow(
        &["run", "--otel", DEMO, "--count", "5"],
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("traces were not exported"));

    // A span file that cannot be created is an error naming the option.
    let dir = tempfile::tempdir().unwrap();
    let unwritable = dir.path().join("no-such-folder").join("traces.jsonl");
    let out = clipflow(
        &["run", "--otel-file", unwritable.to_str().unwrap(), DEMO],
        &[],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--otel-file"));
}
