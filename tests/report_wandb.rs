//! `--report-to wandb` through the sidecar, with the real wandb SDK of the
//! oracle environment in offline mode: after a run, the offline run folder
//! exists, and its `.wandb` file (read back with wandb's own protobuf
//! records) holds the run's id, name, notes, config and every logged metric
//! at OpenCLIP's steps. Also: a Python without wandb and a sidecar that dies
//! are reported as errors, not hangs.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clipflow_actors::report::{PyValue, WandbInit, WandbSidecar};
use serde_json::Value;

/// Reads the offline run's `.wandb` file: a LevelDB-style log of 32 KiB
/// blocks (7-byte file header, 7-byte record headers) holding wandb's
/// `Record` protobufs.
const READER: &str = r#"
import glob, json, os, struct, sys
from wandb.proto import wandb_internal_pb2 as pb
(run_dir,) = glob.glob(os.path.join(sys.argv[1], "wandb", "offline-run-*"))
(path,) = glob.glob(os.path.join(run_dir, "*.wandb"))
data = open(path, "rb").read()
BLOCK, pos, pending, records = 32768, 7, b"", []
while pos + 7 <= len(data):
    if BLOCK - pos % BLOCK < 7:
        pos += BLOCK - pos % BLOCK
        continue
    _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
    pos += 7
    if kind == 0 and length == 0:
        pos += BLOCK - pos % BLOCK
        continue
    pending += data[pos:pos + length]
    pos += length
    if kind in (1, 4):
        records.append(pending)
        pending = b""
out = {"run_dir": os.path.basename(run_dir), "history": [], "files": sorted(
    os.path.relpath(os.path.join(d, f), os.path.join(run_dir, "files"))
    for d, _, names in os.walk(os.path.join(run_dir, "files")) for f in names)}
for raw in records:
    record = pb.Record()
    record.ParseFromString(raw)
    kind = record.WhichOneof("record_type")
    if kind == "run":
        run = record.run
        out["run"] = {"id": run.run_id, "name": run.display_name, "notes": run.notes,
                      "project": run.project, "tags": list(run.tags)}
        out["config"] = {item.key: json.loads(item.value_json) for item in run.config.update}
    elif kind == "history":
        row = {item.key or ".".join(item.nested_key): repr(json.loads(item.value_json))
               for item in record.history.item}
        out["history"].append({"step": record.history.step.num, "row": row})
print(json.dumps(out))
"#;

fn oracle_python() -> PathBuf {
    common::oracle_python()
}

fn offline_env(dir: &Path) {
    std::env::set_var("WANDB_MODE", "offline");
    std::env::set_var("WANDB_DIR", dir);
    std::env::set_var("WANDB_SILENT", "true");
}

fn init(name: &str, save: Vec<PathBuf>) -> WandbInit {
    WandbInit {
        project: "clipflow-test".into(),
        name: name.into(),
        notes: "a \"quoted\" note".into(),
        resume_latest: false,
        config: vec![
            ("lr".into(), PyValue::Float(5e-4)),
            ("model".into(), PyValue::Str("ViT-B-32".into())),
            ("epochs".into(), PyValue::Int(3)),
            ("resume".into(), PyValue::None),
            (
                "image_mean".into(),
                PyValue::List(vec![PyValue::Float(0.5), PyValue::Float(0.25)]),
            ),
            (
                "aug_cfg".into(),
                PyValue::Dict(vec![(
                    "scale".into(),
                    PyValue::Tuple(vec![PyValue::Float(0.9)]),
                )]),
            ),
        ],
        save,
    }
}

fn scalars(pairs: &[(&str, f64)]) -> Vec<(String, f64)> {
    pairs.iter().map(|(n, v)| (n.to_string(), *v)).collect()
}

#[test]
fn offline_run_holds_the_metrics_at_openclip_steps() {
    let scratch = tempfile::tempdir().unwrap();
    offline_env(scratch.path());
    let params = scratch.path().join("params.txt");
    std::fs::write(&params, "lr: 0.0005\n").unwrap();
    let mut wandb = WandbSidecar::start_with(&oracle_python(), &init("run-1", vec![params]))
        .expect("the sidecar starts a wandb run");

    let train_0 = scalars(&[
        ("train/loss", 8.25),
        ("train/lr", 1e-5),
        ("train/scale", 14.285),
    ]);
    let train_2 = scalars(&[
        ("train/loss", f64::NAN),
        ("train/lr", 2e-5),
        ("train/scale", 14.3),
    ]);
    let val_1 = scalars(&[("val/clip_val_loss", 4.5), ("val/image_to_text_R@1", 0.125)]);
    wandb.log_train(0, &train_0).unwrap();
    wandb.log_train(2, &train_2).unwrap();
    wandb.log_eval(1, Some(3), &val_1).unwrap();
    wandb.finish().expect("wandb.finish");

    let out = common::run_oracle(READER, &[scratch.path().to_str().unwrap()]);
    let back: Value = serde_json::from_str(&out).unwrap();
    assert!(
        back["run_dir"].as_str().unwrap().ends_with("-run-1"),
        "{}",
        back["run_dir"]
    );
    assert_eq!(
        back["run"],
        serde_json::json!({"id": "run-1", "name": "run-1", "notes": "a \"quoted\" note",
                           "project": "clipflow-test", "tags": []})
    );
    let config = &back["config"];
    assert_eq!(config["lr"], 5e-4);
    assert_eq!(config["model"], "ViT-B-32");
    assert_eq!(config["epochs"], 3);
    assert_eq!(config["resume"], Value::Null);
    assert_eq!(config["image_mean"], serde_json::json!([0.5, 0.25]));
    assert_eq!(config["aug_cfg"], serde_json::json!({"scale": [0.9]}));
    // wandb.save keeps an absolute path's parent folder, as it does for
    // OpenCLIP's `<logs>/<name>/params.txt`.
    let saved_as = format!(
        "{}/params.txt",
        scratch.path().file_name().unwrap().to_str().unwrap()
    );
    assert!(
        back["files"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| *f == *saved_as),
        "params.txt saved with the run: {}",
        back["files"]
    );

    let history = back["history"].as_array().unwrap();
    let logged = [
        (0, &train_0, ("step", 0)),
        (2, &train_2, ("step", 2)),
        (3, &val_1, ("epoch", 1)),
    ];
    assert_eq!(history.len(), logged.len(), "{history:?}");
    for ((step, metrics, (counter, count)), entry) in logged.iter().zip(history) {
        assert_eq!(entry["step"], *step);
        let row = &entry["row"];
        assert_eq!(row["_step"], step.to_string());
        // OpenCLIP logs the step (train) or epoch (val) as an integer too.
        assert_eq!(row[*counter], count.to_string(), "{row}");
        for (name, value) in metrics.iter() {
            let read: f64 = row[name.as_str()].as_str().unwrap().parse().unwrap();
            assert!(
                read == *value || (read.is_nan() && value.is_nan()),
                "{name} at {step}: {read} != {value}"
            );
        }
    }
}

/// A stand-in interpreter: a shell script run instead of Python.
fn fake_python(dir: &Path, name: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[test]
fn python_without_wandb_is_told_to_install_it() {
    let scratch = tempfile::tempdir().unwrap();
    // The oracle's Python with wandb made unimportable.
    let python = fake_python(
        scratch.path(),
        "python-without-wandb",
        &format!(
            "exec '{}' -c 'import sys; sys.modules[\"wandb\"] = None; exec(sys.argv[2])' \"$@\"",
            oracle_python().display()
        ),
    );
    let error = WandbSidecar::start_with(&python, &init("run-2", vec![]))
        .err()
        .expect("no wandb, no run");
    assert!(
        format!("{error:#}").contains("pip install wandb"),
        "{error:#}"
    );
}

#[test]
fn a_dead_sidecar_is_an_error_not_a_hang() {
    let scratch = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let python = fake_python(scratch.path(), "python-exits", "exit 3");
    let error = WandbSidecar::start_with(&python, &init("run-3", vec![]))
        .err()
        .expect("a sidecar that exits cannot start a run");
    assert!(
        format!("{error:#}").contains("stopped during wandb.init"),
        "{error:#}"
    );

    // Answers init, then dies: the next logs fail instead of blocking.
    let python = fake_python(
        scratch.path(),
        "python-dies-after-init",
        "read line; echo '{\"ok\": \"init\"}'; exit 0",
    );
    let mut wandb = WandbSidecar::start_with(&python, &init("run-3", vec![])).unwrap();
    let metrics = scalars(&[("train/loss", 1.0)]);
    let error = (0..200)
        .find_map(|step| {
            std::thread::sleep(Duration::from_millis(20));
            wandb.log_train(step, &metrics).err()
        })
        .expect("logging to a dead sidecar fails");
    assert!(format!("{error:#}").contains("stopped"), "{error:#}");
    assert!(started.elapsed() < Duration::from_secs(20));
}
