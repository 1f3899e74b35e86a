//! `clipflow train` with `--val-data` and no training data evaluates the
//! initial weights once, as `open_clip_train.main` does, and writes the same
//! `checkpoints/results.jsonl` line: the same metrics in the same order,
//! `epoch` and `num_samples` as integers, values within what fp32 rounding
//! explains; for a CoCa model, `val_generative_loss` too; and the same
//! validation progress lines in out.log. The evaluator
//! decodes images on `--workers` threads in file order, so 1 and 3 workers
//! give the same line, byte for byte.

mod common;

use std::path::Path;

use common::{make_scenes, run_clipflow, TINY_TRAIN_CONFIG};
use serde_json::{json, Map, Value};

const ORACLE: &str = include_str!("oracle/train_parity.py");

/// The flags both sides share: 96 samples in 2 shards, batches of 32.
fn flags(shards: &str, initial: &Path, workers: &str, logs: &Path, name: &str) -> Vec<String> {
    [
        "--val-data",
        shards,
        "--dataset-type",
        "webdataset",
        "--batch-size",
        "32",
        "--workers",
        workers,
        "--val-num-samples",
        "96",
        "--precision",
        "fp32",
        "--pretrained",
        initial.to_str().unwrap(),
        "--logs",
        logs.to_str().unwrap(),
        "--name",
        name,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// The validation progress records of a run's out.log (`Eval Epoch: E
/// [N / TOTAL] ...` and CoCa's `Generative Loss: ...`), without their time
/// stamps.
fn progress_lines(logs: &Path, name: &str) -> Vec<String> {
    let log = std::fs::read_to_string(logs.join(name).join("out.log")).unwrap();
    log.lines()
        .filter_map(|line| line.split_once(" | INFO | ").map(|(_, message)| message))
        .filter(|message| message.contains(" / 96]") || message.starts_with("Generative Loss:"))
        .map(str::to_owned)
        .collect()
}

fn results(logs: &Path, name: &str) -> (String, Map<String, Value>) {
    let path = logs.join(name).join("checkpoints/results.jsonl");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "{text}");
    let Value::Object(metrics) = serde_json::from_str(lines[0]).unwrap() else {
        panic!("not a JSON object: {text}");
    };
    (text, metrics)
}

#[test]
fn validation_metrics_and_results_jsonl_match_open_clip() {
    check_validation("parity-tiny", TINY_TRAIN_CONFIG);
}

/// A CoCa model adds `val_generative_loss`.
#[test]
fn coca_validation_metrics_match_open_clip() {
    let config = include_str!("data/tiny-coca.json");
    let metrics = check_validation("parity-tiny-coca", config);
    assert!(metrics.contains_key("val_generative_loss"), "{metrics:?}");
}

/// Evaluates model `model` (config text `config`) on both sides and
/// compares; returns OpenCLIP's metrics.
fn check_validation(model: &str, config: &str) -> Map<String, Value> {
    let scratch = tempfile::tempdir().unwrap();
    let root = scratch.path();
    make_scenes(&root.join("scenes"), 96, 48, 0);
    let shards = format!(
        "{}/scenes/shards/scenes-{{00000..00001}}.tar",
        root.display()
    );
    let config_path = root.join(format!("{model}.json"));
    std::fs::write(&config_path, config).unwrap();
    let config = config_path.to_str().unwrap();
    let initial = root.join("initial.pt");
    let (ours, theirs) = (root.join("ours"), root.join("theirs"));

    let mut their_flags = flags(&shards, &initial, "1", &theirs, "val");
    their_flags.extend(["--model".into(), model.into()]);
    common::run_oracle(
        ORACLE,
        &[
            "init",
            config,
            initial.to_str().unwrap(),
            "+",
            "main",
            config,
            &json!([their_flags]).to_string(),
        ],
    );
    for (workers, name) in [("3", "val"), ("1", "val-one-worker")] {
        let mut args = vec!["train".to_string()];
        args.extend(flags(&shards, &initial, workers, &ours, name));
        args.extend(["--model".into(), config.into()]);
        run_clipflow(&args);
    }

    let (our_text, our_metrics) = results(&ours, "val");
    let (their_text, their_metrics) = results(&theirs, "val");
    let (one_worker_text, _) = results(&ours, "val-one-worker");
    // The running loss after the first batch, to 6 decimals (and CoCa's
    // generative loss): the same text as OpenCLIP's, whose values agree to
    // ~1e-7 relative.
    let their_progress = progress_lines(&theirs, "val");
    assert!(
        their_progress[0].starts_with("Eval Epoch: 0 [32 / 96]"),
        "{their_progress:?}"
    );
    assert_eq!(progress_lines(&ours, "val"), their_progress);
    assert_eq!(
        our_text, one_worker_text,
        "the worker count changed the results"
    );

    let keys = |m: &Map<String, Value>| m.keys().cloned().collect::<Vec<_>>();
    assert_eq!(
        keys(&our_metrics),
        keys(&their_metrics),
        "{our_text}{their_text}"
    );
    let samples = 96.0;
    for (key, theirs) in &their_metrics {
        let ours = &our_metrics[key];
        if key == "epoch" || key == "num_samples" {
            assert!(
                theirs.is_u64() && ours == theirs,
                "{key}: {ours} vs {theirs}"
            );
            continue;
        }
        let (ours, theirs) = (ours.as_f64().unwrap(), theirs.as_f64().unwrap());
        // Same pixels, tokens and weights; the forward passes agree to
        // ~1e-6 relative in fp32. The losses: 1e-5 relative. The ranks are
        // exact unless two similarities lie within that rounding of each
        // other and swap: allow one swap per direction, 2 / 96 of a rank
        // mean or a recall, and one rank of a median.
        let tolerance = if key.ends_with("_loss") {
            1e-5 * theirs.abs()
        } else if key.ends_with("median_rank") {
            1.0
        } else {
            2.0 / samples
        };
        assert!(
            (ours - theirs).abs() <= tolerance,
            "{key}: {ours} vs OpenCLIP's {theirs}\n{our_text}{their_text}"
        );
    }
    assert_eq!(their_metrics["num_samples"], json!(96));
    their_metrics
}
