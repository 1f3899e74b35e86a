//! `--grad-checkpointing`: the checkpoint primitive (core/src/activation_checkpoint.rs
//! over the C++ shim) and the model's checkpointed residual blocks.
//!
//! Checkpointing must not change any number: the recomputation runs the same
//! fp32 kernels on the same values in the same order, so losses and gradients
//! are compared for exact equality. What it changes is memory, measured as
//! the peak resident set of a child process running one training step.

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use clipflow_core::activation_checkpoint::checkpoint;
use clipflow_core::collective::SingleProcess;
use clipflow_core::loss::{ClipLoss, ClipLossOptions, CoCaLoss, Loss, LossInputs};
use clipflow_core::model::hf_m2m100::M2M100Config;
use clipflow_core::model::hf_roberta::RobertaConfig;
use clipflow_core::model::hf_t5::T5Config;
use clipflow_core::model::hf_text::HfTextModelConfig;
use clipflow_core::model::{Clip, ModelConfig, ModelOverrides};
use clipflow_core::shim::AutocastGuard;
use tch::{nn::VarStore, Device, Kind, Tensor};

fn assert_same(a: &Tensor, b: &Tensor, what: &str) {
    assert_eq!(a.size(), b.size(), "{what}: shapes");
    let diff = (a - b).abs().max().double_value(&[]);
    assert_eq!(diff, 0.0, "{what}: differs by {diff}");
}

fn leaf(shape: &[i64]) -> Tensor {
    Tensor::randn(shape, (Kind::Float, Device::Cpu)).set_requires_grad(true)
}

/// A copy of `tensor`'s gradient, which is then zeroed for the next run;
/// zeros where no gradient reached it (a layer LayerDrop skipped), so that
/// a gradient lost on one side only still differs.
fn take_grad(tensor: &Tensor) -> Tensor {
    let mut grad = tensor.grad();
    if !grad.defined() {
        return tensor.zeros_like();
    }
    let copy = grad.copy();
    let _ = grad.zero_();
    copy
}

/// A small block-like function: matmul with a weight, GELU, scale.
fn block(x: &Tensor, w: &Tensor, b: &Tensor) -> Tensor {
    x.matmul(w).gelu("none") * b
}

#[test]
fn backward_recomputes_once_and_gradients_match() {
    let _turn = common::random_generator_turn();
    tch::manual_seed(0);
    let x = leaf(&[4, 8]);
    let (w, b) = (leaf(&[8, 8]), leaf(&[8]));

    block(&x, &w, &b).sum(None).backward();
    let plain = [take_grad(&x), take_grad(&w), take_grad(&b)];

    let calls = Arc::new(AtomicUsize::new(0));
    let (counter, w2, b2) = (calls.clone(), w.shallow_clone(), b.shallow_clone());
    let y = checkpoint(&[&x], &[&w, &b], move |inputs| {
        counter.fetch_add(1, Ordering::SeqCst);
        block(&inputs[0], &w2, &b2)
    })
    .unwrap();
    assert!(y.requires_grad());
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "forward runs the function once"
    );
    assert_same(&y, &block(&x, &w, &b), "output");
    y.sum(None).backward();
    assert_eq!(calls.load(Ordering::SeqCst), 2, "backward runs it again");
    for (name, (tensor, expected)) in ["x", "w", "b"].iter().zip([&x, &w, &b].iter().zip(&plain)) {
        assert_same(&take_grad(tensor), expected, &format!("gradient of {name}"));
    }
}

#[test]
fn parameters_get_gradients_when_no_input_requires_grad() {
    let _turn = common::random_generator_turn();
    // As after a partially locked tower: the block's input is constant.
    let x = Tensor::randn([4, 8], (Kind::Float, Device::Cpu));
    let (w, b) = (leaf(&[8, 8]), leaf(&[8]));
    block(&x, &w, &b).sum(None).backward();
    let plain = take_grad(&w);

    let calls = Arc::new(AtomicUsize::new(0));
    let (counter, w2, b2) = (calls.clone(), w.shallow_clone(), b.shallow_clone());
    let y = checkpoint(&[&x], &[&w, &b], move |inputs| {
        counter.fetch_add(1, Ordering::SeqCst);
        block(&inputs[0], &w2, &b2)
    })
    .unwrap();
    y.sum(None).backward();
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "checkpointed, not run plainly"
    );
    assert_same(&take_grad(&w), &plain, "gradient of w");
}

#[test]
fn without_gradients_the_function_runs_once() {
    let _turn = common::random_generator_turn();
    let x = leaf(&[2, 8]);
    let w = leaf(&[8, 8]);
    let calls = Arc::new(AtomicUsize::new(0));
    let (counter, w2) = (calls.clone(), w.shallow_clone());
    let y = tch::no_grad(|| {
        checkpoint(&[&x], &[&w], move |inputs| {
            counter.fetch_add(1, Ordering::SeqCst);
            inputs[0].matmul(&w2)
        })
        .unwrap()
    });
    assert!(!y.requires_grad());
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[test]
fn recomputation_replays_the_random_draws_and_leaves_the_rng_where_it_was() {
    let _turn = common::random_generator_turn();
    let x = leaf(&[64, 32]);
    let w = leaf(&[32, 32]);
    let dropped = |x: &Tensor, w: &Tensor| x.matmul(w).dropout(0.5, true);

    tch::manual_seed(7);
    dropped(&x, &w).sum(None).backward();
    let plain = take_grad(&w);
    let next_draw = Tensor::rand([4], (Kind::Float, Device::Cpu));

    tch::manual_seed(7);
    let w2 = w.shallow_clone();
    let y = checkpoint(&[&x], &[&w], move |inputs| dropped(&inputs[0], &w2)).unwrap();
    y.sum(None).backward();
    // Without restoring the forward's RNG state, backward would draw another
    // dropout mask and the gradient would differ.
    assert_same(&take_grad(&w), &plain, "gradient through dropout");
    let after = Tensor::rand([4], (Kind::Float, Device::Cpu));
    assert_same(&after, &next_draw, "the RNG stream after backward");
}

#[test]
fn recomputation_runs_under_the_forwards_autocast_state() {
    let _turn = common::random_generator_turn();
    let x = leaf(&[4, 16]);
    let w = leaf(&[16, 16]);
    let step = |checkpointed: bool, backward_inside_autocast: bool| -> Tensor {
        let guard = AutocastGuard::new(Device::Cpu, Kind::BFloat16).unwrap();
        let y = if checkpointed {
            let w2 = w.shallow_clone();
            checkpoint(&[&x], &[&w], move |inputs| inputs[0].matmul(&w2).relu()).unwrap()
        } else {
            x.matmul(&w).relu()
        };
        assert_eq!(y.kind(), Kind::BFloat16, "autocast applies in the forward");
        let loss = y.to_kind(Kind::Float).sum(None);
        if backward_inside_autocast {
            loss.backward();
            drop(guard);
        } else {
            drop(guard);
            loss.backward();
        }
        take_grad(&w)
    };
    let plain = step(false, false);
    // Recomputed outside any autocast region: an fp32 recomputation would
    // give other gradients than the bf16 forward's.
    assert_same(&step(true, false), &plain, "backward after autocast");
    // Recomputed inside the forward's region (a nested one): the weight's
    // cast must still carry its gradient to w.
    assert_same(&step(true, true), &plain, "backward inside autocast");
}

#[test]
fn a_panic_in_the_function_becomes_an_error() {
    let _turn = common::random_generator_turn();
    let x = leaf(&[2, 4]);
    let error = checkpoint(&[&x], &[], |_| panic!("bad block on the forward call")).unwrap_err();
    assert!(
        format!("{error:#}").contains("bad block on the forward call"),
        "{error:#}"
    );

    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let y = checkpoint(&[&x], &[], move |inputs| {
        if counter.fetch_add(1, Ordering::SeqCst) > 0 {
            panic!("bad block on the recomputation");
        }
        &inputs[0] * 2.0
    })
    .unwrap();
    let error = y.sum(None).f_backward().unwrap_err();
    assert!(
        error.to_string().contains("bad block on the recomputation"),
        "{error}"
    );
}

fn tiny_vit() -> ModelConfig {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/tiny-vit.json");
    let text = std::fs::read_to_string(path).unwrap();
    ModelConfig::from_json(&text, path, &ModelOverrides::default()).unwrap()
}

/// One CLIP training step's loss on random images and captions of `batch`.
fn clip_step(model: &Clip, config: &ModelConfig, batch: i64) -> Tensor {
    let (height, width) = config.vision_cfg.image_size.height_width();
    let images = Tensor::randn([batch, 3, height, width], (Kind::Float, Device::Cpu));
    let context = config.text_cfg.context_length;
    let text = Tensor::randint_low(1, 1000, [batch, context], (Kind::Int64, Device::Cpu));
    let output = model.forward_t(&images, &text, true).unwrap();
    let loss = ClipLoss::new(ClipLossOptions::default(), Arc::new(SingleProcess));
    loss.forward(&LossInputs::from(&output)).unwrap()
}

/// Runs `step` (a training step's loss, drawing its inputs after seed 2)
/// on a model of `config`, plain and then checkpointed; asserts that the
/// loss and every gradient are the same; returns the parameters' names.
fn assert_unchanged_by_checkpointing(
    config: &ModelConfig,
    step: impl Fn(&Clip) -> Tensor,
) -> Vec<String> {
    let _turn = common::random_generator_turn();
    tch::manual_seed(1);
    let vs = VarStore::new(Device::Cpu);
    let mut model = Clip::new(&vs.root(), config).unwrap();
    let run = |model: &Clip| {
        tch::manual_seed(2);
        let loss = step(model);
        loss.backward();
        let grads: BTreeMap<String, Tensor> = vs
            .variables()
            .into_iter()
            .map(|(name, value)| (name, take_grad(&value)))
            .collect();
        (loss, grads)
    };
    let (plain_loss, plain_grads) = run(&model);
    model.set_grad_checkpointing(true);
    let (loss, grads) = run(&model);

    assert_same(&loss, &plain_loss, "loss");
    for ((name, grad), (_, expected)) in grads.iter().zip(&plain_grads) {
        assert_same(grad, expected, &format!("gradient of {name}"));
    }
    grads.into_keys().collect()
}

/// Both towers' blocks (the text tower's with its causal mask) give the
/// same loss and the same gradient for every parameter.
#[test]
fn tiny_vit_loss_and_gradients_are_unchanged() {
    let config = tiny_vit();
    let names = assert_unchanged_by_checkpointing(&config, |model| clip_step(model, &config, 4));
    let block_params = names.iter().filter(|n| n.contains("resblocks")).count();
    // 2 ViT blocks of 14 tensors (with LayerScale), 2 text blocks of 12.
    assert_eq!(block_params, 2 * 14 + 2 * 12);
}

/// A timm tower's blocks, with stochastic depth and head dropout on: the
/// recomputation replays the random draws, so loss and gradients are the
/// same.
#[test]
fn a_timm_tower_with_drop_path_is_unchanged() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/timm-mlp-head.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    json["vision_cfg"]["timm_drop_path"] = 0.2.into();
    json["vision_cfg"]["timm_drop"] = 0.1.into();
    let config =
        ModelConfig::from_json(&json.to_string(), path, &ModelOverrides::default()).unwrap();
    let names = assert_unchanged_by_checkpointing(&config, |model| clip_step(model, &config, 2));
    assert!(names
        .iter()
        .any(|n| n.starts_with("visual.trunk.blocks.11.")));
}

/// A timm ConvNeXt's blocks with stochastic depth: unchanged too.
#[test]
fn a_timm_convnext_with_drop_path_is_unchanged() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/timm-convnext-mlp-head.json"
    );
    let text = std::fs::read_to_string(path).unwrap();
    let config = ModelConfig::from_json(&text, path, &ModelOverrides::default()).unwrap();
    let names = assert_unchanged_by_checkpointing(&config, |model| clip_step(model, &config, 2));
    assert!(names
        .iter()
        .any(|n| n.starts_with("visual.trunk.stages.3.blocks.2.")));
}

/// A HuggingFace roberta text tower's layers, with its dropouts on (0.1 in
/// the embeddings, the attention probabilities and after each dense
/// layer): unchanged too.
#[test]
fn a_huggingface_text_tower_with_dropout_is_unchanged() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/hf-roberta.json");
    let text = std::fs::read_to_string(path).unwrap();
    let mut config = ModelConfig::from_json(&text, path, &ModelOverrides::default()).unwrap();
    config.text_cfg.hf_model_config = Some(HfTextModelConfig::Roberta(RobertaConfig {
        vocab_size: 1000,
        hidden_size: 64,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        intermediate_size: 128,
        hidden_act: "gelu".into(),
        hidden_dropout_prob: 0.1,
        attention_probs_dropout_prob: 0.1,
        max_position_embeddings: 80,
        type_vocab_size: 1,
        layer_norm_eps: 1e-5,
        pad_token_id: 1,
        position_embedding_type: "absolute".into(),
    }));
    let names = assert_unchanged_by_checkpointing(&config, |model| clip_step(model, &config, 2));
    assert!(names
        .iter()
        .any(|n| n.starts_with("text.transformer.encoder.layer.1.")));
}

/// An mt5 text tower's blocks, with its dropout on: unchanged too, the
/// relative position bias (computed once, from block 0's table, and fed to
/// every checkpointed block) included.
#[test]
fn a_huggingface_mt5_text_tower_with_dropout_is_unchanged() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/hf-mt5.json");
    let text = std::fs::read_to_string(path).unwrap();
    let mut config = ModelConfig::from_json(&text, path, &ModelOverrides::default()).unwrap();
    config.text_cfg.hf_model_config = Some(HfTextModelConfig::Mt5(T5Config {
        vocab_size: 1000,
        d_model: 64,
        d_kv: 16,
        d_ff: 128,
        num_layers: 2,
        num_heads: 4,
        relative_attention_num_buckets: 32,
        relative_attention_max_distance: 128,
        dropout_rate: 0.1,
        layer_norm_epsilon: 1e-6,
        feed_forward_proj: "gated-gelu".into(),
        pad_token_id: 0,
    }));
    let names = assert_unchanged_by_checkpointing(&config, |model| clip_step(model, &config, 2));
    assert!(names.iter().any(|n| n.contains("relative_attention_bias")));
}

/// An nllb text tower's layers, with dropout and LayerDrop on (the skip
/// draws come before each layer, outside its recomputation): unchanged too.
#[test]
fn a_huggingface_nllb_text_tower_with_layer_drop_is_unchanged() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/hf-nllb.json");
    let text = std::fs::read_to_string(path).unwrap();
    let mut config = ModelConfig::from_json(&text, path, &ModelOverrides::default()).unwrap();
    config.text_cfg.hf_model_config = Some(HfTextModelConfig::M2M100(M2M100Config {
        vocab_size: 1000,
        d_model: 64,
        encoder_layers: 4,
        encoder_attention_heads: 4,
        encoder_ffn_dim: 128,
        activation_function: "relu".into(),
        dropout: 0.1,
        attention_dropout: 0.1,
        activation_dropout: 0.1,
        encoder_layerdrop: 0.3,
        scale_embedding: true,
        pad_token_id: 1,
    }));
    let names = assert_unchanged_by_checkpointing(&config, |model| clip_step(model, &config, 2));
    assert!(names
        .iter()
        .any(|n| n.starts_with("text.transformer.layers.3.")));
}

/// CoCa: the text decoder's self- and cross-attention blocks checkpointed
/// too; CoCaLoss and every gradient unchanged.
#[test]
fn tiny_coca_loss_and_gradients_are_unchanged() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/tiny-coca.json");
    let text = std::fs::read_to_string(path).unwrap();
    let config = ModelConfig::from_json(&text, path, &ModelOverrides::default()).unwrap();
    let coca = CoCaLoss::new(
        1.0,
        2.0,
        ClipLossOptions::default(),
        Arc::new(SingleProcess),
    );
    let names = assert_unchanged_by_checkpointing(&config, |model| {
        let (height, width) = config.vision_cfg.image_size.height_width();
        let images = Tensor::randn([3, 3, height, width], (Kind::Float, Device::Cpu));
        let context = config.text_cfg.context_length;
        // Captions padded (id 0) after 12 tokens.
        let text = Tensor::randint_low(1, 1000, [3, context], (Kind::Int64, Device::Cpu));
        let _ = text.narrow(1, 12, context - 12).fill_(0);
        let output = model.forward_t(&images, &text, true).unwrap();
        coca.forward(&LossInputs::from(&output)).unwrap()
    });
    let cross_params = names
        .iter()
        .filter(|n| n.starts_with("text_decoder.cross_attn"))
        .count();
    // 2 cross-attention blocks of 14 tensors (with ln_1_kv).
    assert_eq!(cross_params, 2 * 14);
}

/// The probe the memory test runs in a child process (a fresh allocator per
/// measurement): one training step of a ViT wide and deep enough that its
/// block activations dominate, printing how far the peak resident set rose
/// above the resident set before the step.
#[test]
#[ignore = "run in a child process by checkpointing_lowers_peak_memory"]
fn peak_memory_probe() {
    let checkpointed = std::env::var("CLIPFLOW_PROBE_CHECKPOINTING").unwrap() == "1";
    let config = ModelConfig::from_json(
        r#"{"embed_dim": 64,
            "vision_cfg": {"image_size": 64, "layers": 8, "width": 128,
                           "head_width": 32, "patch_size": 8},
            "text_cfg": {"context_length": 8, "vocab_size": 1000, "width": 32,
                         "heads": 2, "layers": 1}}"#,
        "probe config",
        &ModelOverrides::default(),
    )
    .unwrap();
    tch::manual_seed(0);
    let vs = VarStore::new(Device::Cpu);
    let mut model = Clip::new(&vs.root(), &config).unwrap();
    model.set_grad_checkpointing(checkpointed);
    // Warm up libtorch (thread pools, kernels) on a small batch.
    clip_step(&model, &config, 2).backward();

    // "5" resets the peak resident set to the current one.
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
    let before = status_kib("VmRSS");
    clip_step(&model, &config, 32).backward();
    let peak = status_kib("VmHWM");
    println!("peak rise KiB: {}", peak - before);
}

fn status_kib(field: &str) -> i64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|line| line.starts_with(&format!("{field}:")))
        .unwrap_or_else(|| panic!("/proc/self/status has no {field}"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn probe_peak_rise_kib(checkpointed: bool) -> i64 {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["peak_memory_probe", "--exact", "--ignored", "--nocapture"])
        .env(
            "CLIPFLOW_PROBE_CHECKPOINTING",
            if checkpointed { "1" } else { "0" },
        )
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "probe failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .find_map(|line| line.strip_prefix("peak rise KiB: "))
        .unwrap_or_else(|| panic!("probe printed no measurement:\n{stdout}"))
        .parse()
        .unwrap()
}

/// Without checkpointing a step keeps every block's activations until
/// backward (~16 MiB per block here); with it, only each block's input and
/// one block's activations at a time.
#[test]
fn checkpointing_lowers_peak_memory() {
    let plain = probe_peak_rise_kib(false);
    let checkpointed = probe_peak_rise_kib(true);
    assert!(
        checkpointed * 2 < plain,
        "peak rise with checkpointing {checkpointed} KiB, without {plain} KiB"
    );
}
