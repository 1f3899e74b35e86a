//! Features and gradients equal OpenCLIP's for the same weights and inputs,
//! CoCa's caption logits and CoCaLoss terms too.
//!
//! The oracle (tests/oracle/model_parity.py) builds the model in OpenCLIP with
//! random weights; clipflow loads those weights strictly, runs the same
//! inputs, and must agree within 1e-4 absolute on the features and on the
//! gradient of the CLIP loss w.r.t. every parameter. Both sides run libtorch
//! 2.11 fp32 kernels on CPU; the only differences are summation order inside
//! fused kernels (attention, layer norm), which perturbs results at the
//! ~1e-6 relative level — well inside 1e-4 for features of magnitude ~1.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use clipflow_core::collective::SingleProcess;
use clipflow_core::hf_hub::HubCache;
use clipflow_core::loss::{ClipLoss, CoCaLoss, Loss, LossInputs};
use clipflow_core::model::hf_text;
use clipflow_core::model::load::load_strict;
use clipflow_core::model::timm_eva::{TimmEva, TimmEvaFacts};
use clipflow_core::model::timm_vision_transformer::{
    TimmVisionTransformer, TimmVitFacts, TrunkOptions, TrunkPool,
};
use clipflow_core::model::{Clip, ImageSize, ModelConfig, ModelOverrides};
use tch::{nn::VarStore, Device, Tensor};

const TOLERANCE: f64 = 1e-4;

fn read(path: &Path) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .into_iter()
        .collect()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a - b).abs().max().double_value(&[])
}

/// Runs the oracle for `name` (from tests/data/`config_file` when given, with
/// `create_model` keyword arguments `kwargs` mirroring `overrides`) and
/// compares clipflow's features, loss and gradients with it.
fn check_model(name: &str, config_file: Option<&str>, kwargs: &str, overrides: ModelOverrides) {
    check_model_in(name, config_file, kwargs, overrides, None);
}

/// `check_model` with a HuggingFace hub cache (`hub`) holding the model's
/// HuggingFace text tower: its config.json, and its weights when the config
/// starts the tower from them, which clipflow must load as OpenCLIP does
/// (the same tensors under `text.transformer.`, exactly).
fn check_model_in(
    name: &str,
    config_file: Option<&str>,
    kwargs: &str,
    overrides: ModelOverrides,
    hub: Option<&Path>,
) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    let script = include_str!("oracle/model_parity.py");
    let mut args = vec![name, out, "--kwargs", kwargs];
    let config_path = config_file.map(|f| format!("{}/tests/data/{f}", env!("CARGO_MANIFEST_DIR")));
    if let Some(path) = &config_path {
        args.extend(["--config", path]);
    }
    let hub_arg = hub.map(|hub| hub.to_str().unwrap().to_string());
    if let Some(hub) = &hub_arg {
        args.extend(["--hf-cache", hub]);
    }
    common::run_oracle(script, &args);

    let mut config = match &config_path {
        Some(path) => {
            ModelConfig::from_json(&std::fs::read_to_string(path).unwrap(), path, &overrides)
        }
        None => ModelConfig::by_name(name, &overrides),
    }
    .unwrap();
    let hub = HubCache::locate(hub);
    config.read_hf_text_config(&hub).unwrap();
    let vs = VarStore::new(Device::Cpu);
    let model = {
        let _turn = common::random_generator_turn();
        Clip::new(&vs.root(), &config).unwrap()
    };
    let weights = Tensor::read_safetensors(dir.path().join("weights.safetensors")).unwrap();
    if config.text_cfg.hf_model_pretrained && config.text_cfg.hf_model_name.is_some() {
        hf_text::load_pretrained(&vs, &config, &hub).unwrap();
        let variables = vs.variables();
        let mut compared = 0;
        // A pooler the file lacks (a masked-LM checkpoint has none) starts
        // from random weights on both sides.
        let from_file =
            |key: &str| key.starts_with("text.transformer.") && !key.contains(".pooler.");
        for (key, expected) in weights.iter().filter(|(key, _)| from_file(key)) {
            let ours = variables
                .get(key)
                .unwrap_or_else(|| panic!("{name}: clipflow's tower has no {key}"));
            let diff = max_abs_diff(ours, expected);
            assert_eq!(diff, 0.0, "{name}: the pretrained {key} differs by {diff}");
            compared += 1;
        }
        assert!(compared > 0, "{name}: the tower has pretrained weights");
    }
    load_strict(&vs, &weights, "weights.safetensors").unwrap();

    let inputs = read(&dir.path().join("inputs.safetensors"));
    let expected = read(&dir.path().join("outputs.safetensors"));
    let image_features = model.encode_image(&inputs["images"], false).unwrap();
    let text_features = model.encode_text(&inputs["text"]);
    let image_diff = max_abs_diff(&image_features, &expected["image_features"]);
    let text_diff = max_abs_diff(&text_features, &expected["text_features"]);
    assert!(
        image_diff <= TOLERANCE,
        "{name}: image features differ by {image_diff}"
    );
    assert!(
        text_diff <= TOLERANCE,
        "{name}: text features differ by {text_diff}"
    );

    let output = model
        .forward_t(&inputs["images"], &inputs["text"], false)
        .unwrap();
    // The oracle calls ClipLoss (CoCaLoss with weights 1 and 2 for CoCa)
    // without logit_bias.
    let loss_inputs = LossInputs {
        logit_bias: None,
        ..LossInputs::from(&output)
    };
    let loss = match &output.caption {
        None => ClipLoss::new(Default::default(), Arc::new(SingleProcess))
            .forward(&loss_inputs)
            .unwrap(),
        Some(caption) => {
            let logits_diff = max_abs_diff(&caption.logits, &expected["logits"]);
            assert!(
                logits_diff <= TOLERANCE,
                "{name}: caption logits differ by {logits_diff}"
            );
            let coca = CoCaLoss::new(1.0, 2.0, Default::default(), Arc::new(SingleProcess));
            let terms = coca.forward_dict(&loss_inputs).unwrap();
            for (term, value) in &terms {
                let diff = max_abs_diff(value, &expected[*term]);
                assert!(diff <= TOLERANCE, "{name}: {term} differs by {diff}");
            }
            coca.forward(&loss_inputs).unwrap()
        }
    };
    let loss_diff = max_abs_diff(&loss, &expected["loss"]);
    assert!(
        loss_diff <= TOLERANCE,
        "{name}: loss differs by {loss_diff}"
    );
    loss.backward();

    let mut checked = 0;
    for (param, value) in vs.variables() {
        if !value.requires_grad() {
            continue;
        }
        let expected_grad = expected
            .get(&format!("grad.{param}"))
            .unwrap_or_else(|| panic!("{name}: oracle has no gradient for {param}"));
        let grad = value.grad();
        let grad = if grad.defined() {
            grad
        } else {
            value.zeros_like()
        };
        let diff = max_abs_diff(&grad, expected_grad);
        assert!(
            diff <= TOLERANCE,
            "{name}: gradient of {param} differs by {diff}"
        );
        checked += 1;
    }
    let oracle_params = expected.keys().filter(|k| k.starts_with("grad.")).count();
    assert_eq!(
        checked, oracle_params,
        "{name}: every parameter's gradient is compared"
    );
}

#[test]
fn tiny_vit_matches_open_clip() {
    check_model(
        "tiny-vit",
        Some("tiny-vit.json"),
        "{}",
        ModelOverrides::default(),
    );
}

/// no_ln_pre, avg pooling with final LN after pool, non-square images, a
/// bidirectional text tower pooled on the last token with a biased
/// projection, tanh-GELU, custom LayerNorm eps, `text.` layout and logit_bias.
#[test]
fn clipa_style_variants_match_open_clip() {
    check_model(
        "tiny-clipa-style",
        Some("tiny-clipa-style.json"),
        "{}",
        ModelOverrides::default(),
    );
}

/// Attentional pooling in the image tower and eos pooling in the text tower.
#[test]
fn attentional_pool_matches_open_clip() {
    check_model(
        "tiny-attn-pool",
        Some("tiny-attn-pool.json"),
        "{}",
        ModelOverrides::default(),
    );
}

/// The --force-* flags change the model exactly as in OpenCLIP.
#[test]
fn coca_matches_open_clip() {
    // Captions shorter than the context, so padding is masked as a key.
    check_model(
        "tiny-coca",
        Some("tiny-coca.json"),
        "{}",
        ModelOverrides::default(),
    );
}

#[test]
fn force_flags_match_open_clip() {
    let overrides = ModelOverrides {
        force_quick_gelu: false,
        force_custom_text: true,
        force_patch_dropout: Some(0.5),
        force_image_size: Some(ImageSize::HeightWidth([40, 24])),
        force_context_length: Some(20),
    };
    let kwargs = r#"{"force_custom_text": true, "force_patch_dropout": 0.5,
        "force_image_size": [40, 24], "force_context_length": 20}"#;
    check_model("tiny-vit", Some("tiny-vit.json"), kwargs, overrides);
}

#[test]
fn vit_b_32_matches_open_clip() {
    check_model("ViT-B-32", None, "{}", ModelOverrides::default());
}

#[test]
fn vit_b_16_matches_open_clip() {
    check_model("ViT-B-16", None, "{}", ModelOverrides::default());
}

#[test]
fn rn50_matches_open_clip() {
    check_model("RN50", None, "{}", ModelOverrides::default());
}

/// timm's SigLIP trunk (as `vit_b_16_siglip_matches_open_clip` has it,
/// below) with OpenCLIP's other head: `timm_pool = "avg"` drops the MAP
/// head (timm's `reset_classifier`), then `head.mlp` with a biased output
/// layer.
#[test]
fn a_timm_tower_with_an_mlp_head_matches_open_clip() {
    check_model(
        "timm-mlp-head",
        Some("timm-mlp-head.json"),
        "{}",
        ModelOverrides::default(),
    );
}

/// A CLIP-style timm ViT (class token, `norm_pre`, no patch bias) pooled
/// on its class token, with `timm_proj: null`: OpenCLIP makes the trunk's
/// own `head` the projection (as for MobileCLIP2-L-14).
#[test]
fn a_timm_tower_projected_by_its_own_head_matches_open_clip() {
    check_model(
        "timm-clip-tower",
        Some("timm-clip-tower.json"),
        "{}",
        ModelOverrides::default(),
    );
}

/// timm's `vit_medium_patch16_gap_256` by its OpenCLIP name: mean pooling
/// without a class token, layer scale, `head.proj`.
#[test]
fn vit_medium_patch16_gap_256_matches_open_clip() {
    check_model(
        "vit_medium_patch16_gap_256",
        None,
        "{}",
        ModelOverrides::default(),
    );
}

/// ViT-B-16-SigLIP by its OpenCLIP name: timm's SigLIP trunk as OpenCLIP's
/// `TimmModel` wraps it (`visual.trunk.`: no class token, the MAP
/// attention-pool head, `timm_proj = "none"`) and the SigLIP text tower
/// (bidirectional, pooled on the last token, biased projection), with
/// `logit_bias`.
#[test]
fn vit_b_16_siglip_matches_open_clip() {
    check_model("ViT-B-16-SigLIP", None, "{}", ModelOverrides::default());
}

/// timm's ConvNeXt by OpenCLIP's `convnext_tiny` config: patch stem, four
/// stages of depthwise-conv blocks with layer scale, the pool-then-norm
/// head, `head.proj`.
#[test]
fn convnext_tiny_matches_open_clip() {
    check_model("convnext_tiny", None, "{}", ModelOverrides::default());
}

/// The ConvNeXt trunk with OpenCLIP's MLP head, at 64 pixels (a CNN trunk
/// takes any size).
#[test]
fn a_timm_convnext_with_an_mlp_head_matches_open_clip() {
    check_model(
        "timm-convnext-mlp-head",
        Some("timm-convnext-mlp-head.json"),
        "{}",
        ModelOverrides::default(),
    );
}

/// Runs the trunk oracle for timm model `name` created with `kwargs` and
/// compares clipflow's trunk, built from the facts the oracle's copy of
/// scripts/gen_timm_configs.py reads off the model: features in eval mode,
/// features in training mode (patch dropout and drop path drawn from the
/// same seeded generator on both sides), and every parameter's gradient,
/// with and without activation checkpointing.
/// What the trunk test drives of a timm trunk.
trait TestTrunk {
    fn forward_t(&self, images: &Tensor, train: bool) -> Tensor;
    fn set_grad_checkpointing(&mut self, enable: bool);
}

impl TestTrunk for TimmEva {
    fn forward_t(&self, images: &Tensor, train: bool) -> Tensor {
        TimmEva::forward_t(self, images, train)
    }
    fn set_grad_checkpointing(&mut self, enable: bool) {
        TimmEva::set_grad_checkpointing(self, enable)
    }
}

impl TestTrunk for TimmVisionTransformer {
    fn forward_t(&self, images: &Tensor, train: bool) -> Tensor {
        TimmVisionTransformer::forward_t(self, images, train)
    }
    fn set_grad_checkpointing(&mut self, enable: bool) {
        TimmVisionTransformer::set_grad_checkpointing(self, enable)
    }
}

fn check_eva_trunk(name: &str, kwargs: &str) {
    check_timm_trunk(name, kwargs, |p, facts: &TimmEvaFacts, options| {
        Box::new(TimmEva::new(p, facts, options))
    });
}

fn check_timm_trunk<F: serde::de::DeserializeOwned>(
    name: &str,
    kwargs: &str,
    build: impl Fn(tch::nn::Path, &F, &TrunkOptions) -> Box<dyn TestTrunk>,
) {
    let _turn = common::random_generator_turn();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    let gen_script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/gen_timm_configs.py");
    let train_seed = 3;
    common::run_oracle(
        include_str!("oracle/timm_trunk_parity.py"),
        &[name, out, gen_script, kwargs, &train_seed.to_string()],
    );
    let text = std::fs::read_to_string(dir.path().join("facts.json")).unwrap();
    let facts: F = serde_json::from_str(&text).unwrap();
    let own_pool: serde_json::Value = serde_json::from_str(&text).unwrap();
    let kwargs: serde_json::Value = serde_json::from_str(kwargs).unwrap();
    let options = TrunkOptions {
        pool: TrunkPool::parse(own_pool["global_pool"].as_str().unwrap()).unwrap(),
        head_dim: kwargs["num_classes"].as_i64().unwrap(),
        patch_drop: kwargs["patch_drop_rate"].as_f64().unwrap_or(0.0),
        drop_path: kwargs["drop_path_rate"].as_f64().unwrap_or(0.0),
    };
    let vs = VarStore::new(Device::Cpu);
    let mut trunk = build(vs.root(), &facts, &options);
    let weights = Tensor::read_safetensors(dir.path().join("weights.safetensors")).unwrap();
    load_strict(&vs, &weights, "weights.safetensors").unwrap();
    let inputs = read(&dir.path().join("inputs.safetensors"));
    let expected = read(&dir.path().join("outputs.safetensors"));

    let eval = tch::no_grad(|| trunk.forward_t(&inputs["images"], false));
    let diff = max_abs_diff(&eval, &expected["eval"]);
    assert!(diff <= TOLERANCE, "{name}: eval features differ by {diff}");
    for checkpointed in [false, true] {
        trunk.set_grad_checkpointing(checkpointed);
        for (_, value) in vs.variables() {
            value.grad().defined().then(|| value.grad().zero_());
        }
        tch::manual_seed(train_seed);
        let train = trunk.forward_t(&inputs["images"], true);
        let diff = max_abs_diff(&train, &expected["train"]);
        assert!(
            diff <= TOLERANCE,
            "{name} (checkpointed: {checkpointed}): training features differ by {diff}"
        );
        (train * &inputs["weights"]).sum(None).backward();
        for (param, value) in vs.variables() {
            let diff = max_abs_diff(&value.grad(), &expected[&format!("grad.{param}")]);
            assert!(
                diff <= TOLERANCE,
                "{name} (checkpointed: {checkpointed}): gradient of {param} differs by {diff}"
            );
        }
    }
    let oracle_params = expected.keys().filter(|k| k.starts_with("grad.")).count();
    assert_eq!(
        vs.variables().len(),
        oracle_params,
        "{name}: same parameters"
    );
}

/// timm's Eva trunk of each EVA, EVA02 and PE-Core config, as OpenCLIP
/// creates it (its `global_pool`, and the trunk's own head projecting to
/// the embedding), shrunk to 64 wide, 2 blocks and a 4x3 patch grid (not
/// square, so the row-major and column-major rotary grids differ), with
/// patch dropout and drop path while training: EVA01's packed qkv with q/v
/// biases, EVA02's split projections, inner attention norm, SwiGLU and
/// rotary embedding, EVA02-E's post-norm blocks, PE-Core's `norm_pre`,
/// offset column-major rotary grid and MAP head over every token.
#[test]
fn timm_eva_trunks_match_timm() {
    for (name, pool) in [
        ("eva_giant_patch14_224", "token"),
        ("eva02_base_patch16_clip_224", "token"),
        ("eva02_large_patch14_clip_224", "token"),
        ("eva02_large_patch14_clip_336", "token"),
        ("eva02_enormous_patch14_clip_224", "token"),
        ("vit_pe_core_tiny_patch16_384", "map"),
        ("vit_pe_core_small_patch16_384", "map"),
        ("vit_pe_core_base_patch16_224", "map"),
        ("vit_pe_core_large_patch14_336", "map"),
        ("vit_pe_core_gigantic_patch14_448", "map"),
    ] {
        let grid = if name.contains("patch14") {
            [56, 42]
        } else {
            [64, 48]
        };
        let kwargs = format!(
            r#"{{"embed_dim": 64, "depth": 2, "num_heads": 4, "img_size": {grid:?},
                "num_classes": 32, "global_pool": "{pool}",
                "patch_drop_rate": 0.5, "drop_path_rate": 0.2}}"#
        );
        check_eva_trunk(name, &kwargs);
    }
}

/// EVA02-B-16 by its OpenCLIP name: timm's Eva trunk with split q/v-biased
/// projections, the inner attention norm, SwiGLU with its norm, the rotary
/// embedding rescaled to a 16x16 reference grid, class-token pooling and
/// the trunk's own head as the projection.
#[test]
fn eva02_b_16_matches_open_clip() {
    check_model("EVA02-B-16", None, "{}", ModelOverrides::default());
}

/// PE-Core-T-16-384 by its OpenCLIP name: timm's Eva trunk as Perception
/// Encoder builds it (no patch bias, `norm_pre`, packed biased qkv, an
/// offset column-major rotary grid, the MAP head over every token).
#[test]
fn pe_core_t_16_384_matches_open_clip() {
    check_model("PE-Core-T-16-384", None, "{}", ModelOverrides::default());
}

/// HuggingFace roberta as OpenCLIP's HFTextEncoder wraps it (`text.`:
/// `transformer` with HuggingFace's names, the mean of the real tokens,
/// OpenCLIP's default mlp projection `proj.0`/`proj.2`), built from the
/// config.json in the hub cache with random weights (`pretrained_hf=False`
/// in OpenCLIP, `hf_model_pretrained` false here); the second caption is
/// padded, so positions and masking count.
#[test]
fn a_huggingface_roberta_text_tower_matches_open_clip() {
    let cache = common::hf_text_cache("roberta-base", "roberta", &[]);
    let overrides = ModelOverrides::default();
    let config = Some("hf-roberta.json");
    let kwargs = r#"{"pretrained_hf": false}"#;
    check_model_in("hf-roberta", config, kwargs, overrides, Some(cache.path()));
}

/// xlm-roberta pooled by OpenCLIP's `cls_pooler` (the model's own
/// `pooler.dense` and tanh on the first token) with a linear `proj`,
/// starting from the model's weights in the hub cache (a masked-LM
/// checkpoint: `roberta.`-prefixed names and an `lm_head`, as the hub's
/// files have), which land where OpenCLIP's `from_pretrained` puts them.
#[test]
fn a_pretrained_huggingface_xlm_roberta_text_tower_matches_open_clip() {
    let repo = "FacebookAI/xlm-roberta-base";
    let cache = common::hf_text_cache(repo, "xlm-roberta", &["--weights"]);
    let overrides = ModelOverrides::default();
    let config = Some("hf-xlm-roberta.json");
    check_model_in(
        "hf-xlm-roberta",
        config,
        "{}",
        overrides,
        Some(cache.path()),
    );
}

/// mt5 as OpenCLIP's HFTextEncoder wraps it (the encoder of `MT5Model`:
/// `embed_tokens`, `block.N` with T5's root-mean-square norms, unscaled
/// attention with the relative position bias of block 0 added in every
/// block, the gated-GELU feed-forward), mean-pooled with the mlp
/// projection, starting from a generation checkpoint's weights in the hub
/// cache (`shared` as `embed_tokens`, the encoder's, not the decoder's).
#[test]
fn a_pretrained_huggingface_mt5_text_tower_matches_open_clip() {
    let repo = "google/mt5-base";
    let cache = common::hf_text_cache(repo, "mt5", &["--weights"]);
    let overrides = ModelOverrides::default();
    let config = Some("hf-mt5.json");
    check_model_in("hf-mt5", config, "{}", overrides, Some(cache.path()));
}

/// nllb as OpenCLIP's HFTextEncoder wraps it (the encoder of
/// `M2M100Model`: embeddings scaled by the square root of the width,
/// sinusoidal positions from the padding token, pre-norm layers with ReLU),
/// pooled on the first token with a linear projection, as the nllb-clip
/// configs have it, starting from a generation checkpoint's weights in the
/// hub cache (`model.`-prefixed, `shared` as `embed_tokens`).
#[test]
fn a_pretrained_huggingface_nllb_text_tower_matches_open_clip() {
    let repo = "facebook/nllb-200-distilled-600M";
    let cache = common::hf_text_cache(repo, "m2m_100", &["--weights"]);
    let overrides = ModelOverrides::default();
    let config = Some("hf-nllb.json");
    check_model_in("hf-nllb", config, "{}", overrides, Some(cache.path()));
}

/// timm's VisionTransformerRelPos as `vit_relpos_medium_patch16_cls_224`
/// builds it, shrunk like the Eva trunks above: no position embedding, a
/// relative position MLP in every block (log-spaced row and column offsets
/// to a bias per head, none for the class token, dropout while training),
/// layer scale, class-token pooling.
#[test]
fn a_timm_relpos_trunk_matches_timm() {
    let kwargs = r#"{"embed_dim": 64, "depth": 2, "num_heads": 4, "img_size": [64, 48],
        "num_classes": 32, "global_pool": "token", "rel_pos_dim": 32,
        "drop_path_rate": 0.2}"#;
    check_timm_trunk(
        "vit_relpos_medium_patch16_cls_224",
        kwargs,
        |p, facts: &TimmVitFacts, options| Box::new(TimmVisionTransformer::new(p, facts, options)),
    );
}

/// vit_relpos_medium_patch16_cls_224 by its OpenCLIP name: the relpos
/// trunk reset to no head, then OpenCLIP's `head.proj`.
#[test]
fn vit_relpos_medium_patch16_cls_224_matches_open_clip() {
    check_model(
        "vit_relpos_medium_patch16_cls_224",
        None,
        "{}",
        ModelOverrides::default(),
    );
}
