//! `--lock-image` (`--lock-image-unlocked-groups`) and `--lock-text`
//! (`--lock-text-unlocked-layers`): the parameters left trainable equal those
//! OpenCLIP's `lock_image_tower` / `lock_text_tower` leave, for a ViT with
//! LayerScale, the `text.` (CustomTextCLIP) layout, a ModifiedResNet and
//! timm towers.

mod common;

use clipflow_core::model::{Clip, ModelConfig, ModelOverrides};
use clipflow_core::train::lock::{lock_image_tower, lock_text_tower};
use common::run_oracle;
use tch::nn::VarStore;
use tch::Device;

const ORACLE: &str = include_str!("oracle/train_lock.py");

/// (unlocked image groups, unlocked text layers, --force-custom-text); `None`
/// leaves that tower unlocked.
type Case = (Option<usize>, Option<usize>, bool);

fn trainable_after_lock(config_path: &str, case: Case) -> Vec<String> {
    let (image_groups, text_layers, custom_text) = case;
    let overrides = ModelOverrides {
        force_custom_text: custom_text,
        ..ModelOverrides::default()
    };
    let text = std::fs::read_to_string(config_path).unwrap();
    let config = ModelConfig::from_json(&text, config_path, &overrides).unwrap();
    let vs = VarStore::new(Device::Cpu);
    let _model = Clip::new(&vs.root(), &config).unwrap();
    if let Some(groups) = image_groups {
        lock_image_tower(&vs, &config, groups).unwrap();
    }
    if let Some(layers) = text_layers {
        lock_text_tower(&vs, &config, layers);
    }
    let mut names: Vec<String> = vs
        .variables()
        .into_iter()
        .filter(|(_, tensor)| tensor.requires_grad())
        .map(|(name, _)| name)
        .collect();
    names.sort();
    names
}

fn compare_with_open_clip(config_file: &str, cases: &[Case]) {
    let config = format!("{}/tests/data/{config_file}", env!("CARGO_MANIFEST_DIR"));
    let cases_json = serde_json::to_string(cases).unwrap();
    let expected = run_oracle(ORACLE, &[&config, &cases_json]);
    for (case, line) in cases.iter().zip(expected.lines()) {
        let expected: Vec<String> = serde_json::from_str(line).unwrap();
        let ours = trainable_after_lock(&config, *case);
        assert_eq!(ours, expected, "{config_file}, case {case:?}");
    }
}

#[test]
fn locked_vit_and_text_towers_leave_openclip_s_parameters_trainable() {
    // tiny-vit: 2 blocks per tower, so groups/layers 0..=5 cover "nothing
    // unlocked" through "more than there are".
    let mut cases: Vec<Case> = Vec::new();
    for groups in 0..=5 {
        cases.push((Some(groups), None, false));
    }
    for layers in 0..=5 {
        cases.push((None, Some(layers), false));
        cases.push((None, Some(layers), true));
    }
    cases.push((Some(1), Some(1), true));
    compare_with_open_clip("tiny-vit.json", &cases);
}

#[test]
fn a_modified_resnet_locks_whole_and_refuses_partial_unlocking() {
    compare_with_open_clip("tiny-resnet.json", &[(Some(0), None, false)]);
    let path = format!("{}/tests/data/tiny-resnet.json", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap();
    let config = ModelConfig::from_json(&text, &path, &ModelOverrides::default()).unwrap();
    let vs = VarStore::new(Device::Cpu);
    let _model = Clip::new(&vs.root(), &config).unwrap();
    let error = lock_image_tower(&vs, &config, 1).unwrap_err();
    assert!(format!("{error:#}").contains("--lock-image-unlocked-groups"));
}

#[test]
fn a_locked_timm_tower_leaves_openclip_s_parameters_trainable() {
    // 12 blocks: groups 0..=2 and 12..=15 cover "nothing unlocked", the
    // MAP head alone, the last block with `norm`, the embeddings, and
    // "more than there are"; OpenCLIP's head is never locked.
    let cases: Vec<Case> = [0, 1, 2, 12, 13, 14, 15]
        .into_iter()
        .map(|groups| (Some(groups), None, false))
        .collect();
    compare_with_open_clip("timm-map-tower.json", &cases);
    compare_with_open_clip(
        "timm-mlp-head.json",
        &[(Some(0), None, false), (Some(1), None, false)],
    );
    // An Eva trunk (PE-Core's: `norm_pre` in the embeddings group, the MAP
    // head and the trunk's own `head` after the blocks).
    compare_with_open_clip(
        "timm-pe-tower.json",
        &[0, 1, 2, 12, 13, 14].map(|groups| (Some(groups), None, false)),
    );
}
