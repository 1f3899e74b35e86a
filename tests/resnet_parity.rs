//! Parity of the ModifiedResNet image tower with OpenCLIP's: the oracle
//! exports a randomly initialised tower (RN50, and a small tower of the same
//! class), an image batch, its features in eval and train mode, the
//! gradients of a fixed random projection of the train-mode features, and the
//! batch-norm buffers after the train-mode step. clipflow loads the same
//! weights by name and must reproduce all of it. Also checks `lock`.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use clipflow_core::model::modified_resnet::{ModifiedResNet, ModifiedResNetConfig};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

/// Writes `<name>.weights.safetensors` (the tower's state_dict) and
/// `<name>.reference.safetensors` (inputs, outputs, gradients, buffers after
/// one train-mode step) into the folder given as the first argument.
const ORACLE: &str = r#"
import sys
import torch
import open_clip
from open_clip.modified_resnet import ModifiedResNet
from safetensors.torch import save_file

out_dir = sys.argv[1]

def randomize_batch_norms(tower, seed):
    # OpenCLIP zeroes each block's bn3.weight, which would make every residual
    # branch (and its gradients) zero: random affine parameters and running
    # statistics exercise all of them.
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in tower.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.copy_(torch.rand(module.weight.shape, generator=g) + 0.5)
                module.bias.copy_(torch.randn(module.bias.shape, generator=g) * 0.1)
                module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=g) * 0.1)
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=g) + 0.5)
                module.num_batches_tracked.fill_(7)

def export(name, tower, batch):
    randomize_batch_norms(tower, 1)
    save_file({k: v.contiguous() for k, v in tower.state_dict().items()},
              f"{out_dir}/{name}.weights.safetensors")
    g = torch.Generator().manual_seed(2)
    images = torch.randn(batch, 3, tower.image_size, tower.image_size, generator=g)
    tower.eval()
    with torch.no_grad():
        eval_features = tower(images)
    tower.train()
    train_features = tower(images)
    output_weights = torch.randn(train_features.shape, generator=g)
    (train_features * output_weights).sum().backward()
    reference = {
        "images": images,
        "eval_features": eval_features,
        "train_features": train_features.detach(),
        "output_weights": output_weights,
    }
    for key, parameter in tower.named_parameters():
        reference["grad." + key] = parameter.grad
    for key, buffer in tower.named_buffers():
        reference["after_train." + key] = buffer
    save_file({k: v.contiguous() for k, v in reference.items()},
              f"{out_dir}/{name}.reference.safetensors")

torch.manual_seed(0)
export("rn50", open_clip.create_model("RN50").visual, 2)
torch.manual_seed(0)
export("small", ModifiedResNet(layers=[2, 1, 1, 1], output_dim=32, heads=4, image_size=64, width=16), 3)
"#;

/// RN50's tower as OpenCLIP's RN50.json makes it (heads = 64 * 32 / 64).
fn rn50_config() -> ModifiedResNetConfig {
    ModifiedResNetConfig::from_openclip([3, 4, 6, 3], 64, 224, 1024, 64).unwrap()
}

/// Must match the `ModifiedResNet(...)` call of the oracle's "small" tower.
fn small_config() -> ModifiedResNetConfig {
    ModifiedResNetConfig {
        layers: [2, 1, 1, 1],
        width: 16,
        output_dim: 32,
        heads: 4,
        image_size: 64,
    }
}

fn read_tensors(path: &Path) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(path)
        .unwrap()
        .into_iter()
        .collect()
}

fn max_abs(t: &Tensor) -> f64 {
    t.abs().max().double_value(&[])
}

/// Largest elementwise difference between `actual` and `expected`.
fn max_abs_diff(actual: &Tensor, expected: &Tensor) -> f64 {
    assert_eq!(actual.size(), expected.size());
    max_abs(&(actual - expected))
}

/// Builds the tower in a fresh VarStore and loads `weights`, after checking
/// that the VarStore's names and the file's keys are the same set.
fn load_tower(weights: &Path, config: &ModifiedResNetConfig) -> (VarStore, ModifiedResNet) {
    let mut vs = VarStore::new(Device::Cpu);
    let tower = ModifiedResNet::new(vs.root(), config);
    let ours: BTreeSet<String> = vs.variables().into_keys().collect();
    let theirs: BTreeSet<String> = read_tensors(weights).into_keys().collect();
    let missing: Vec<_> = theirs.difference(&ours).collect();
    let extra: Vec<_> = ours.difference(&theirs).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "state_dict keys differ: in OpenCLIP only {missing:?}, in clipflow only {extra:?}"
    );
    vs.load(weights).unwrap();
    (vs, tower)
}

/// Runs one exported tower through clipflow and compares everything the
/// oracle recorded.
fn check_parity(dir: &Path, name: &str, config: &ModifiedResNetConfig) {
    let (vs, tower) = load_tower(&dir.join(format!("{name}.weights.safetensors")), config);
    let reference = read_tensors(&dir.join(format!("{name}.reference.safetensors")));
    let images = &reference["images"];

    // fp32 on CPU, same maths in a possibly different order (clipflow's
    // attention computes only the pooled token's query; reductions may block
    // differently): rounding at 2^-24 relative, accumulated over ~50 layers
    // with fan-in up to 4608, measures below 1e-6 on features of size O(1).
    // 1e-4 leaves margin yet catches any wrong layer, which moves the
    // features by O(0.1).
    const FEATURE_TOLERANCE: f64 = 1e-4;
    let eval_features = tch::no_grad(|| tower.forward(images, false).unwrap());
    let eval_diff = max_abs_diff(&eval_features, &reference["eval_features"]);
    assert!(
        eval_diff <= FEATURE_TOLERANCE,
        "{name}: eval features differ by {eval_diff}"
    );

    let train_features = tower.forward(images, true).unwrap();
    let train_diff = max_abs_diff(&train_features, &reference["train_features"]);
    assert!(
        train_diff <= FEATURE_TOLERANCE,
        "{name}: train features differ by {train_diff}"
    );

    (&train_features * &reference["output_weights"])
        .sum(Kind::Float)
        .backward();
    let variables = vs.variables();
    let mut compared_gradients = 0;
    for (key, variable) in &variables {
        if variable.requires_grad() {
            let expected = &reference[&format!("grad.{key}")];
            if key.ends_with("k_proj.bias") {
                // Exactly zero in exact arithmetic: adding one vector to every
                // key shifts each row of scores by a constant, which softmax
                // ignores. Both sides hold rounding noise only, so require it
                // to be negligible next to the k_proj weight gradient.
                let weight_grad_scale =
                    max_abs(&reference[&format!("grad.{}", key.replace("bias", "weight"))]);
                assert!(
                    max_abs(&variable.grad()) <= 1e-5 * weight_grad_scale,
                    "{name}: gradient of {key} should vanish, got {}",
                    max_abs(&variable.grad())
                );
            } else {
                // Gradients sum over the batch and up to 112x112 positions and
                // flow back through ~50 layers, so fp32 rounding scales with
                // each gradient's own magnitude (which spans orders between
                // layers): measured up to 4e-6 of the largest entry; 1e-4
                // leaves margin while any wrong layer is off by O(1).
                let relative = max_abs_diff(&variable.grad(), expected) / max_abs(expected);
                assert!(
                    relative <= 1e-4,
                    "{name}: gradient of {key} differs by {relative} (relative)"
                );
            }
            compared_gradients += 1;
        } else {
            let expected = &reference[&format!("after_train.{key}")];
            if key.ends_with("num_batches_tracked") {
                assert_eq!(variable.kind(), Kind::Int64, "{name}: {key} kind");
                assert_eq!(
                    variable.int64_value(&[]),
                    expected.int64_value(&[]),
                    "{name}: {key}"
                );
            } else {
                // Running statistics are a momentum blend of the batch
                // statistics, themselves means over the batch: within the
                // features' tolerance.
                let diff = max_abs_diff(variable, expected);
                assert!(
                    diff <= FEATURE_TOLERANCE,
                    "{name}: {key} after a train step differs by {diff}"
                );
            }
        }
    }
    assert_eq!(
        compared_gradients,
        tower.parameters().len(),
        "{name}: parameters that require grad"
    );
}

/// `lock(0, freeze)` stops gradients; with `freeze` the batch norms keep
/// their running statistics in train mode, without it they do not.
fn check_lock(dir: &Path) {
    let config = small_config();
    let weights = dir.join("small.weights.safetensors");
    let images = &read_tensors(&dir.join("small.reference.safetensors"))["images"];

    let (_vs, tower) = load_tower(&weights, &config);
    assert!(
        tower.lock(1, false).is_err(),
        "partial locking must be refused"
    );
    tower.lock(0, true).unwrap();
    assert!(tower.parameters().iter().all(|p| !p.requires_grad()));
    let eval_features = tower.forward(images, false).unwrap();
    let frozen_train_features = tower.forward(images, true).unwrap();
    assert!(!frozen_train_features.requires_grad());
    assert_eq!(max_abs_diff(&frozen_train_features, &eval_features), 0.0);

    let (_vs, tower) = load_tower(&weights, &config);
    tower.lock(0, false).unwrap();
    let eval_features = tower.forward(images, false).unwrap();
    let train_features = tower.forward(images, true).unwrap();
    assert!(
        max_abs_diff(&train_features, &eval_features) > 1e-3,
        "unfrozen batch norms use batch statistics"
    );
}

#[test]
fn modified_resnet_matches_openclip() {
    let dir = tempfile::tempdir().unwrap();
    common::run_oracle(ORACLE, &[dir.path().to_str().unwrap()]);
    check_parity(dir.path(), "rn50", &rn50_config());
    check_parity(dir.path(), "small", &small_config());
    check_lock(dir.path());
}

#[test]
fn config_validation_names_the_bad_field() {
    let bad_heads = ModifiedResNetConfig {
        heads: 3,
        ..small_config()
    };
    let message = bad_heads.validate().unwrap_err().to_string();
    assert!(message.contains("heads"), "{message}");
    let bad_size = ModifiedResNetConfig {
        image_size: 100,
        ..small_config()
    };
    let message = bad_size.validate().unwrap_err().to_string();
    assert!(message.contains("image_size"), "{message}");
    assert!(small_config().validate().is_ok());
}

#[test]
fn wrong_image_size_is_an_error() {
    let vs = VarStore::new(Device::Cpu);
    let tower = ModifiedResNet::new(vs.root(), &small_config());
    let images = Tensor::zeros([1, 3, 32, 32], (Kind::Float, Device::Cpu));
    let message = tower
        .forward_checked(&images, false)
        .unwrap_err()
        .to_string();
    assert!(message.contains("[batch, 3, 64, 64]"), "{message}");
    let images = Tensor::zeros([1, 3, 64, 64], (Kind::Float, Device::Cpu));
    assert_eq!(
        tower.forward_checked(&images, false).unwrap().size(),
        [1, 32]
    );
}
