//! Weights move both ways between clipflow and OpenCLIP with strict key
//! matching, and give the same features on both sides (tolerance: see
//! tests/common/model.rs).

mod common;

use std::process::Command;

use clipflow_core::model::load::load_strict;
use clipflow_core::weights::{read_weights, write_safetensors};
use common::model::{assert_same_features, build, config_path};
use tch::Tensor;

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

/// timm towers (`visual.trunk.`, `visual.head.`): a ViT with its MAP head,
/// a ConvNeXt with an MLP head.
#[test]
fn a_timm_tower_round_trips() {
    clipflow_to_open_clip("timm-map-tower", Some("timm-map-tower.json"));
    open_clip_to_clipflow("timm-map-tower", Some("timm-map-tower.json"));
    clipflow_to_open_clip(
        "timm-convnext-mlp-head",
        Some("timm-convnext-mlp-head.json"),
    );
    open_clip_to_clipflow(
        "timm-convnext-mlp-head",
        Some("timm-convnext-mlp-head.json"),
    );
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
