//! Shards on object stores stream through the `object_store` crate: shards
//! served over HTTP (Python's http.server) give the same batches as the
//! local files, and a shard the server does not have is skipped as
//! unreadable, naming its URL; from an S3 endpoint (moto's server, with
//! credentials and endpoint from `AWS_*` environment variables) every sample
//! arrives, environment variables outside the providers' namespaces
//! (`ENDPOINT`) do not configure the store, and a missing bucket is an error
//! naming the shard.

mod common;
mod loaders_support;
mod object_store_support;

use std::process::Command;

use loaders_support::{bench_summary, make_test_shards, run_train_data, LoadingRun};
use object_store_support::{s3_environment, serve_http, serve_s3, upload_to_s3};

/// The loading flags of these tests, reading `data`: one worker, so the
/// order of samples depends only on the seed.
fn load(data: &str) -> LoadingRun {
    run_train_data(&[
        ("train-data", data),
        ("train-num-samples", "24"),
        ("dataset-type", "webdataset"),
        ("batch-size", "8"),
        ("workers", "1"),
        ("model", "RN50"),
        ("seed", "3"),
    ])
    .unwrap_or_else(|e| panic!("loading {data}: {e}"))
}

fn assert_same_batches(local: &LoadingRun, remote: &LoadingRun, what: &str) {
    assert_eq!(local.keys(), remote.keys(), "{what}: other samples");
    assert_eq!(local.batches.len(), 3);
    for (l, r) in local.batches.iter().zip(&remote.batches) {
        assert!(l.images.equal(&r.images), "{what}: other pixels");
        assert!(l.texts.equal(&r.texts), "{what}: other tokens");
    }
}

#[test]
fn http_shards_load_as_the_local_files_and_a_missing_one_is_skipped() {
    let dir = tempfile::tempdir().unwrap();
    make_test_shards(dir.path(), 2, 12);
    let (_server, port) = serve_http(dir.path());

    let local = load(&format!(
        "{}/shard-{{00000..00001}}.tar",
        dir.path().display()
    ));
    let remote = load(&format!(
        "http://127.0.0.1:{port}/shard-{{00000..00001}}.tar"
    ));
    assert_same_batches(&local, &remote, "http");
    assert_eq!(remote.totals.skipped.get("unreadable_shard"), 0);

    // A third shard the server does not have (404): skipped and counted,
    // its URL in the log; the others still load.
    let (ok, stdout, stderr) = loaders_support::run_bench(&[
        "--train-data",
        &format!("http://127.0.0.1:{port}/shard-{{00000..00002}}.tar"),
        "--train-num-samples",
        "24",
        "--dataset-type",
        "webdataset",
        "--batch-size",
        "8",
        "--workers",
        "1",
        "--model",
        "RN50",
        "--max-bad-fraction",
        "1",
    ]);
    assert!(ok, "{stderr}");
    let summary = bench_summary(&stdout);
    assert_eq!(summary["skipped"]["unreadable_shard"], 1, "{summary}");
    assert_eq!(summary["images"], 24, "{summary}");
    let missing = format!("http://127.0.0.1:{port}/shard-00002.tar");
    assert!(stderr.contains(&missing), "{stderr}");
}

#[test]
fn s3_shards_stream_with_settings_from_aws_variables_only() {
    let dir = tempfile::tempdir().unwrap();
    make_test_shards(dir.path(), 2, 12);
    let (_server, port) = serve_s3();
    upload_to_s3(dir.path(), port, "photos");

    // Through the CLI, whose environment holds the S3 settings; an ENDPOINT
    // variable (no AWS_ prefix, so not the store's; object_store's option
    // parser would take it for the S3 endpoint) points nowhere and must be
    // left alone.
    let bench = |data: &str| {
        Command::new(common::clipflow_bin())
            .args(["bench", "data", "--train-data", data])
            .args(["--train-num-samples", "24", "--dataset-type", "webdataset"])
            .args(["--batch-size", "4", "--workers", "2", "--model", "RN50"])
            .args(["--max-bad-fraction", "0"])
            .envs(s3_environment(port))
            .env("ENDPOINT", "http://127.0.0.1:1")
            .output()
            .unwrap()
    };
    let output = bench("s3://photos/shards/shard-{00000..00001}.tar");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let summary = bench_summary(&String::from_utf8_lossy(&output.stdout));
    assert_eq!(summary["images"], 24, "{summary}");
    assert_eq!(summary["skipped"], serde_json::json!({}), "{summary}");

    // A bucket that does not exist: the shard is unreadable, and with
    // nothing else to read the run stops with an error naming it.
    let output = bench("s3://elsewhere/shard-00000.tar");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("s3://elsewhere/shard-00000.tar"),
        "{stderr}"
    );
}
