//! Shared by the tests that reach object stores: servers on localhost that
//! stand in for them (Python's http.server for HTTP, moto's server for S3),
//! and the `AWS_*` environment that points clipflow's S3 client at moto.
#![allow(dead_code)] // each test binary uses its own subset

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use crate::common;

/// A server process, stopped when dropped.
pub struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Serves `dir` over HTTP on a free port; returns the server and its port.
pub fn serve_http(dir: &Path) -> (Server, u16) {
    let mut child = Command::new(common::oracle_python())
        .args([
            "-u",
            "-m",
            "http.server",
            "0",
            "--bind",
            "127.0.0.1",
            "--directory",
        ])
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting python -m http.server");
    // "Serving HTTP on 127.0.0.1 port 41234 (http://127.0.0.1:41234/) ..."
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line
        .split_whitespace()
        .skip_while(|word| *word != "port")
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {line:?}"));
    (Server(child), port)
}

/// Starts moto's S3 server on a free port and waits until it accepts
/// connections.
pub fn serve_s3() -> (Server, u16) {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(common::oracle_python())
        .args([
            "-m",
            "moto.server",
            "-H",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting moto's server");
    let server = Server(child);
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "moto's server did not start"
        );
        sleep(Duration::from_millis(100));
    }
    (server, port)
}

/// The `AWS_*` settings that point the S3 client at moto's server.
pub fn s3_environment(port: u16) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ACCESS_KEY_ID", "testing".into()),
        ("AWS_SECRET_ACCESS_KEY", "testing".into()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}")),
        ("AWS_ALLOW_HTTP", "true".into()),
    ]
}

/// Python that connects `s3` to moto's server at `sys.argv[1]`; the
/// scripts below take their own arguments after it.
const S3_CLIENT: &str = r#"
import json, os, sys, boto3
s3 = boto3.client("s3", endpoint_url=sys.argv[1], region_name="us-east-1",
                  aws_access_key_id="testing", aws_secret_access_key="testing")
"#;

/// Runs `body` after [`S3_CLIENT`] with `args`; returns its stdout.
fn run_s3_script(port: u16, body: &str, args: &[&str]) -> String {
    let endpoint = format!("http://127.0.0.1:{port}");
    let all: Vec<&str> = std::iter::once(endpoint.as_str())
        .chain(args.iter().copied())
        .collect();
    common::run_oracle(&format!("{S3_CLIENT}{body}"), &all)
}

/// Creates `bucket` on moto's server.
pub fn create_bucket(port: u16, bucket: &str) {
    run_s3_script(port, "s3.create_bucket(Bucket=sys.argv[2])", &[bucket]);
}

/// Uploads every file of `dir` into `bucket` (created) under `shards/`.
pub fn upload_to_s3(dir: &Path, port: u16, bucket: &str) {
    create_bucket(port, bucket);
    let body = r#"
folder, bucket = sys.argv[2:]
for name in sorted(os.listdir(folder)):
    s3.upload_file(os.path.join(folder, name), bucket, "shards/" + name)
"#;
    run_s3_script(port, body, &[dir.to_str().unwrap(), bucket]);
}

/// The keys under `prefix` in `bucket` on moto's server, with their sizes.
pub fn list_s3(port: u16, bucket: &str, prefix: &str) -> Vec<(String, u64)> {
    let body = r#"
bucket, prefix = sys.argv[2:]
pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
print(json.dumps(sorted([o["Key"], o["Size"]] for p in pages for o in p.get("Contents", []))))
"#;
    let out = run_s3_script(port, body, &[bucket, prefix]);
    serde_json::from_str(out.trim()).expect("a JSON listing")
}
