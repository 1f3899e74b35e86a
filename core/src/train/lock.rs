//! `--lock-image` and `--lock-text` (LiT-style tower locking): which
//! parameters stop taking gradients, by OpenCLIP's rules. A tower is split
//! into groups from input to output; everything is frozen, then the last
//! `unlocked` groups are trainable again.
//!
//! Image tower (ViT): [conv1, class_embedding, positional_embedding, ln_pre],
//! one group per residual block but the last, [last block, ln_post], proj.
//! ModifiedResNet can only be locked whole. A timm tower locks its trunk by
//! timm's groups (embeddings, each block, then the pooling head), never
//! OpenCLIP's head after it. Text tower: [token_embedding,
//! positional_embedding, cls_emb], one group per block but the last, [last
//! block, ln_final], text_projection; a HuggingFace text tower locks as
//! OpenCLIP's `HFTextEncoder` does.

use anyhow::{bail, Result};
use tch::nn::VarStore;

use crate::model::config::VisionLayers;
use crate::model::timm_model::timm_tower;
use crate::model::ModelConfig;

/// A group: parameter names, or name prefixes when they end with `.`.
type Group = Vec<String>;

fn in_group(name: &str, group: &Group) -> bool {
    group.iter().any(|entry| {
        if entry.ends_with('.') {
            name.starts_with(entry.as_str())
        } else {
            name == entry
        }
    })
}

/// Freezes every parameter under `tower_prefixes`, then unfreezes the last
/// `unlocked` of `groups`.
fn lock(vs: &VarStore, tower_prefixes: &[String], groups: &[Group], unlocked: usize) {
    let unlocked_groups = &groups[groups.len().saturating_sub(unlocked)..];
    for (name, tensor) in vs.variables() {
        if !tower_prefixes
            .iter()
            .any(|prefix| name.starts_with(prefix.as_str()))
        {
            continue;
        }
        let trainable = unlocked_groups.iter().any(|group| in_group(&name, group));
        let _ = tensor.set_requires_grad(trainable);
    }
}

/// The groups of a ViT-like timm trunk (`visual.trunk.`), as timm's
/// `group_parameters` makes them from the VisionTransformer's (or Eva's)
/// `group_matcher`: the embeddings ([cls_token, reg_token, pos_embed,
/// patch_embed, norm_pre]), one group per block with `norm` joining the
/// last, then whatever no pattern names (attn_pool, fc_norm, head) as one
/// group, where the trunk has any.
fn timm_trunk_groups(vs: &VarStore, depth: i64) -> Vec<Group> {
    let trunk = |name: &str| format!("visual.trunk.{name}");
    let mut groups: Vec<Group> = vec![[
        "cls_token",
        "reg_token",
        "pos_embed",
        "patch_embed.",
        "norm_pre.",
    ]
    .map(trunk)
    .to_vec()];
    for block in 0..depth {
        groups.push(vec![trunk(&format!("blocks.{block}."))]);
    }
    if let Some(last) = groups.last_mut() {
        last.push(trunk("norm."));
    }
    let named: Vec<String> = vs.variables().into_keys().collect();
    let unnamed: Group = named
        .iter()
        .filter(|name| name.starts_with("visual.trunk."))
        .filter(|name| !groups.iter().any(|group| in_group(name, group)))
        .cloned()
        .collect();
    if !unnamed.is_empty() {
        groups.push(unnamed);
    }
    groups
}

/// `model.lock_image_tower(unlocked_groups)`.
pub fn lock_image_tower(vs: &VarStore, config: &ModelConfig, unlocked_groups: usize) -> Result<()> {
    if let Some(name) = &config.vision_cfg.timm_model_name {
        // OpenCLIP's TimmModel locks its trunk only: the head after it
        // (`visual.head.`) stays trainable.
        let groups = match timm_tower(name)?.transformer_depth() {
            Some(depth) => timm_trunk_groups(vs, depth),
            None if unlocked_groups == 0 => Vec::new(),
            _ => bail!(
                "--lock-image-unlocked-groups {unlocked_groups}: clipflow locks the timm model \
                 `{name}` whole only (--lock-image alone)"
            ),
        };
        lock(vs, &["visual.trunk.".into()], &groups, unlocked_groups);
        return Ok(());
    }
    let layers = match config.vision_cfg.layers {
        VisionLayers::Transformer(layers) => layers as usize,
        VisionLayers::ResNet(_) => {
            if unlocked_groups != 0 {
                bail!(
                    "--lock-image-unlocked-groups {unlocked_groups}: a ModifiedResNet image tower \
                     can only be locked whole (OpenCLIP does not support partial locking for it)"
                );
            }
            0
        }
    };
    let mut groups: Vec<Group> = vec![vec![
        "visual.conv1.".into(),
        "visual.class_embedding".into(),
        "visual.positional_embedding".into(),
        "visual.ln_pre.".into(),
    ]];
    for block in 0..layers.saturating_sub(1) {
        groups.push(vec![format!("visual.transformer.resblocks.{block}.")]);
    }
    if layers > 0 {
        groups.push(vec![
            format!("visual.transformer.resblocks.{}.", layers - 1),
            "visual.ln_post.".into(),
        ]);
        groups.push(vec!["visual.proj".into()]);
    }
    lock(vs, &["visual.".into()], &groups, unlocked_groups);
    Ok(())
}

/// `model.lock_text_tower(unlocked_layers, freeze_layer_norm)` for a
/// HuggingFace text tower (OpenCLIP's `HFTextEncoder.lock`): with no
/// unlocked layers the whole `text.transformer.` is frozen; otherwise
/// `modules` (its embeddings, then each layer) but the last
/// `unlocked_layers` are (a pooler and the later layers stay trainable).
/// Weights named `LayerNorm` are frozen only with `freeze_layer_norm`. The
/// projection after the pooler is never locked.
fn lock_hf_text_tower(
    vs: &VarStore,
    modules: &[String],
    unlocked_layers: usize,
    freeze_layer_norm: bool,
) {
    let transformer = "text.transformer.";
    let frozen: Vec<String> = if unlocked_layers == 0 {
        vec![transformer.to_string()]
    } else {
        let kept = modules.len().saturating_sub(unlocked_layers);
        modules[..kept]
            .iter()
            .map(|module| format!("{transformer}{module}"))
            .collect()
    };
    for (name, tensor) in vs.variables() {
        if !frozen
            .iter()
            .any(|prefix| name.starts_with(prefix.as_str()))
        {
            continue;
        }
        let layer_norm = name.split('.').any(|part| part == "LayerNorm");
        let _ = tensor.set_requires_grad(layer_norm && !freeze_layer_norm);
    }
}

/// `model.lock_text_tower(unlocked_layers, freeze_layer_norm)`. For
/// OpenCLIP's own text tower OpenCLIP requires `freeze_layer_norm` (layer
/// norms are locked like any other weight); a HuggingFace tower takes
/// either.
pub fn lock_text_tower(
    vs: &VarStore,
    config: &ModelConfig,
    unlocked_layers: usize,
    freeze_layer_norm: bool,
) -> Result<()> {
    if let Some(hf) = &config.text_cfg.hf_model_config {
        let modules = match (hf.lock_modules(), unlocked_layers) {
            (Some(modules), _) => modules,
            (None, 0) => Vec::new(),
            (None, _) => bail!(
                "--lock-text-unlocked-layers {unlocked_layers}: OpenCLIP locks the HuggingFace \
                 text tower `{}` whole only (--lock-text alone)",
                config.text_cfg.hf_model_name.as_deref().unwrap_or_default()
            ),
        };
        lock_hf_text_tower(vs, &modules, unlocked_layers, freeze_layer_norm);
        return Ok(());
    }
    if !freeze_layer_norm {
        bail!("--lock-text without --lock-text-freeze-layer-norm: OpenCLIP does not support unfreezing layer norms (they are locked like other weights)");
    }
    lock_native_text_tower(vs, config, unlocked_layers);
    Ok(())
}

fn lock_native_text_tower(vs: &VarStore, config: &ModelConfig, unlocked_layers: usize) {
    let root = if config.custom_text { "text." } else { "" };
    let layers = config.text_cfg.layers as usize;
    let name = |suffix: &str| format!("{root}{suffix}");
    let mut groups: Vec<Group> = vec![vec![
        name("token_embedding."),
        name("positional_embedding"),
        name("cls_emb"),
    ]];
    for block in 0..layers.saturating_sub(1) {
        groups.push(vec![name(&format!("transformer.resblocks.{block}."))]);
    }
    groups.push(vec![
        name(&format!(
            "transformer.resblocks.{}.",
            layers.saturating_sub(1)
        )),
        name("ln_final."),
    ]);
    groups.push(vec![name("text_projection"), name("text_projection.")]);
    let tower: Vec<String> = [
        "token_embedding.",
        "positional_embedding",
        "cls_emb",
        "transformer.",
        "ln_final.",
        "text_projection",
    ]
    .iter()
    .map(|suffix| name(suffix))
    .collect();
    lock(vs, &tower, &groups, unlocked_layers);
}
