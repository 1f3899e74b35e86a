//! `--lock-image` (`--lock-image-unlocked-groups`) and `--lock-text`
//! (`--lock-text-unlocked-layers`): the parameters left trainable equal those
//! OpenCLIP's `lock_image_tower` / `lock_text_tower` leave, for a ViT with
//! LayerScale, the `text.` (CustomTextCLIP) layout, a ModifiedResNet, timm
//! towers and a HuggingFace text tower.

mod common;

use clipflow_core::hf_hub::HubCache;
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
        lock_text_tower(&vs, &config, layers, true).unwrap();
    }
    trainable(&vs)
}

/// The names of the trainable variables, sorted.
fn trainable(vs: &VarStore) -> Vec<String> {
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

/// A HuggingFace text tower locks as OpenCLIP's `HFTextEncoder.lock` does:
/// the whole transformer, or its embeddings and all but the last layers,
/// with or without the weights named LayerNorm (roberta's; mt5's and
/// nllb's norms are named otherwise, which OpenCLIP's rule does not spare),
/// never the projection; nllb whole only.
#[test]
fn a_locked_huggingface_text_tower_leaves_openclip_s_parameters_trainable() {
    // (unlocked layers, freeze_layer_norm); each tower has 2 layers after
    // its embeddings. OpenCLIP locks nllb whole only (its architecture
    // table names no layers).
    let partial = [
        (0, true),
        (0, false),
        (1, true),
        (1, false),
        (2, true),
        (3, true),
    ];
    let whole = [(0, true), (0, false)];
    for (config_file, repo, model_type, cases) in [
        ("hf-roberta.json", "roberta-base", "roberta", &partial[..]),
        ("hf-mt5.json", "google/mt5-base", "mt5", &partial[..]),
        (
            "hf-nllb.json",
            "facebook/nllb-200-distilled-600M",
            "m2m_100",
            &whole[..],
        ),
    ] {
        let cache = common::hf_text_cache(repo, model_type, &[]);
        let cache_dir = cache.path().to_str().unwrap();
        let config_path = format!("{}/tests/data/{config_file}", env!("CARGO_MANIFEST_DIR"));
        let cases_json: Vec<serde_json::Value> = cases
            .iter()
            .map(|(layers, freeze)| serde_json::json!([null, layers, false, freeze]))
            .collect();
        let cases_json = serde_json::to_string(&cases_json).unwrap();
        let expected = run_oracle(ORACLE, &[&config_path, &cases_json, cache_dir]);
        let text = std::fs::read_to_string(&config_path).unwrap();
        for ((layers, freeze), line) in cases.iter().zip(expected.lines()) {
            let expected: Vec<String> = serde_json::from_str(line).unwrap();
            let mut config =
                ModelConfig::from_json(&text, &config_path, &ModelOverrides::default()).unwrap();
            config
                .read_hf_text_config(&HubCache::locate(Some(cache.path())))
                .unwrap();
            let vs = VarStore::new(Device::Cpu);
            let _model = Clip::new(&vs.root(), &config).unwrap();
            lock_text_tower(&vs, &config, *layers, *freeze).unwrap();
            assert_eq!(
                trainable(&vs),
                expected,
                "{model_type}: unlocked layers {layers}, freeze_layer_norm {freeze}"
            );
            if cases.len() == whole.len() {
                let refused = lock_text_tower(&vs, &config, 1, true).unwrap_err();
                assert!(refused.to_string().contains("whole only"), "{refused}");
            }
        }
    }
}
