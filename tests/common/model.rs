//! Models for the weight tests: building one by name or test config, and
//! comparing its features with those the oracle computed.
//!
//! Tolerance: 1e-4 absolute on features. Both sides run the same libtorch
//! fp32 CPU kernels on identical weights; only summation order inside fused
//! kernels differs (~1e-6 relative), far below 1e-4 for features of order 1.

use std::collections::HashMap;
use std::path::Path;

use clipflow_core::model::{Clip, ModelConfig, ModelOverrides};
use tch::{nn::VarStore, Device, Tensor};

const TOLERANCE: f64 = 1e-4;

/// The path of a model config in tests/data.
pub fn config_path(file: &str) -> String {
    format!("{}/tests/data/{file}", env!("CARGO_MANIFEST_DIR"))
}

/// A randomly initialised model: OpenCLIP's config `name`, or the config in
/// tests/data/`config_file`.
pub fn build(name: &str, config_file: Option<&str>) -> (VarStore, Clip) {
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

/// Asserts `model` computes the features in `features_file` (written by
/// tests/oracle/weights_roundtrip.py) from the inputs stored with them.
pub fn assert_same_features(model: &Clip, features_file: &Path, what: &str) {
    let f: HashMap<String, Tensor> = Tensor::read_safetensors(features_file)
        .unwrap()
        .into_iter()
        .collect();
    let image = tch::no_grad(|| model.encode_image(&f["images"], false)).unwrap();
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
