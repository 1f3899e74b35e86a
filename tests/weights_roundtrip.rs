//! Weights move both ways between clipflow and OpenCLIP with strict key
//! matching, and give the same features on both sides.
//!
//! Tolerance: 1e-4 absolute on features. Both sides run the same libtorch
//! fp32 CPU kernels on identical weights; only summation order inside fused
//! kernels differs (~1e-6 relative), far below 1e-4 for features of order 1.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use clipflow_core::model::load::load_strict;
use clipflow_core::model::{Clip, ModelConfig, ModelOverrides};
use clipflow_core::weights::{read_weights, write_safetensors};
use tch::{nn::VarStore, Device, Tensor};

const TOLERANCE: f64 = 1e-4;

fn config_path(file: &str) -> String {
    format!("{}/tests/data/{file}", env!("CARGO_MANIFEST_DIR"))
}

fn build(name: &str, config_file: Option<&str>) -> (VarStore, Clip) {
    let config = match config_file {
        Some(f) => {
            let path = config_path(f);
            ModelConfig::from_json(
                &std::fs::read_to_string(&path).unwrap(),
                &path,
                &Default::default(),
            )
        }
        None => ModelConfig::by_name(name, &ModelOverrides::default()),
    }
    .unwrap();
    let vs = VarStore::new(Device::Cpu);
    let model = Clip::new(&vs.root(), &config).unwrap();
    (vs, model)
}

fn assert_same_features(model: &Clip, features_file: &Path, what: &str) {
    let f: HashMap<String, Tensor> = Tensor::read_safetensors(features_file)
        .unwrap()
        .into_iter()
        .collect();
    let image = tch::no_grad(|| model.encode_image(&f["images"], false));
    let text = tch::no_grad(|| model.encode_text(&f["text"]));
    let image_diff = (image - &f["image_features"]).abs().max().double_value(&[]);
    let text_diff = (text - &f["text_features"]).abs().max().double_value(&[]);
    assert!(
        image_diff <= TOLERANCE,
        "{what}: image features differ by {image_diff}"
    );
    assert!(
        text_diff <= TOLERANCE,
        "{what}: text features differ by {text_diff}"
    );
}

/// clipflow writes safetensors; `open_clip.create_model(name, pretrained=path)`
/// loads them strictly and computes the same features.
fn clipflow_to_open_clip(name: &str, config_file: Option<&str>) {
    let dir = tempfile::tempdir().unwrap();
    let (vs, model) = build(name, config_file);
    let weights = dir.path().join("clipflow.safetensors");
    let mut named: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    write_safetensors(&weights, &named).unwrap();
    let out = dir.path().to_str().unwrap();
    let mut args = vec!["load", name, weights.to_str().unwrap(), out];
    let config = config_file.map(config_path);
    if let Some(c) = &config {
        args.extend(["--config", c]);
    }
    common::run_oracle(include_str!("oracle/weights_roundtrip.py"), &args);
    assert_same_features(&model, &dir.path().join("features.safetensors"), name);
}

/// OpenCLIP saves a DDP training checkpoint; `clipflow convert` rewrites it
/// as safetensors, which loads strictly into clipflow's model and computes
/// the same features.
fn open_clip_to_clipflow(name: &str, config_file: Option<&str>) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    let mut args = vec!["save", name, out];
    let config = config_file.map(config_path);
    if let Some(c) = &config {
        args.extend(["--config", c]);
    }
    common::run_oracle(include_str!("oracle/weights_roundtrip.py"), &args);
    let converted = dir.path().join("converted.safetensors");
    let status = Command::new(common::clipflow_bin())
        .arg("convert")
        .arg(dir.path().join("checkpoint.pt"))
        .arg(&converted)
        .status()
        .unwrap();
    assert!(status.success(), "clipflow convert failed");
    let (vs, model) = build(name, config_file);
    load_strict(&vs, &read_weights(&converted).unwrap(), "converted").unwrap();
    assert_same_features(&model, &dir.path().join("features.safetensors"), name);
}

#[test]
fn tiny_vit_round_trips() {
    clipflow_to_open_clip("tiny-clipa-style", Some("tiny-clipa-style.json"));
    open_clip_to_clipflow("tiny-clipa-style", Some("tiny-clipa-style.json"));
}

#[test]
fn vit_b_32_round_trips() {
    clipflow_to_open_clip("ViT-B-32", None);
    open_clip_to_clipflow("ViT-B-32", None);
}

#[test]
fn rn50_round_trips() {
    clipflow_to_open_clip("RN50", None);
    open_clip_to_clipflow("RN50", None);
}

/// `--pretrained` is strict: a missing, unexpected or misshapen tensor is an
/// error naming it.
#[test]
fn strict_loading_names_the_offending_tensor() {
    let (vs, _model) = build("tiny-vit", Some("tiny-vit.json"));
    let complete: Vec<(String, Tensor)> = vs.variables().into_iter().collect();

    let mut missing: Vec<(String, Tensor)> = complete
        .iter()
        .map(|(k, v)| (k.clone(), v.shallow_clone()))
        .collect();
    missing.retain(|(k, _)| k != "visual.proj");
    let err = load_strict(&vs, &missing, "w.pt").unwrap_err().to_string();
    assert!(
        err.contains("missing 1 tensor(s) [visual.proj]") && err.starts_with("w.pt"),
        "{err}"
    );

    let mut unexpected: Vec<(String, Tensor)> = complete
        .iter()
        .map(|(k, v)| (k.clone(), v.shallow_clone()))
        .collect();
    unexpected.push((
        "visual.extra".into(),
        Tensor::zeros([1], tch::kind::FLOAT_CPU),
    ));
    let err = load_strict(&vs, &unexpected, "w.pt")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("unexpected 1 tensor(s) [visual.extra]"),
        "{err}"
    );

    let misshapen: Vec<(String, Tensor)> = complete
        .iter()
        .map(|(k, v)| {
            let v = if k == "logit_scale" {
                Tensor::zeros([2], tch::kind::FLOAT_CPU)
            } else {
                v.shallow_clone()
            };
            (k.clone(), v)
        })
        .collect();
    let err = load_strict(&vs, &misshapen, "w.pt")
        .unwrap_err()
        .to_string();
    assert!(err.contains("`logit_scale` has shape [2]"), "{err}");
}
