//! OpenCLIP's `TimmModel`, the image tower under `visual.` of a config with
//! a `timm_model_name`: timm's model as `trunk`, then OpenCLIP's `head`
//! (`head.proj`, or `head.mlp.fc1`/`fc2`, or nothing). The trunk is built
//! natively from what timm's registry says of the named model
//! (`timm_configs.json`, written by `scripts/gen_timm_configs.py` from the
//! installed timm); no Python runs. The config's `timm_pool`, `timm_proj`,
//! `timm_proj_bias`, `timm_drop` and `timm_drop_path` shape the trunk's
//! pooling and head as OpenCLIP's adapter does.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use tch::nn::{self, Module};
use tch::Tensor;

use super::config::ModelConfig;
use super::timm_vision_transformer::{
    timm_linear, TimmMlp, TimmVisionTransformer, TimmVitFacts, TrunkOptions, TrunkPool,
};
use super::transformer::Activation;

const TIMM_CONFIGS_JSON: &str = include_str!("timm_configs.json");

/// One timm model of OpenCLIP's configs: a VisionTransformer clipflow
/// builds (with its facts), or the class of one it does not.
#[derive(Debug, Deserialize)]
struct TimmTower {
    class: String,
    #[serde(flatten)]
    facts: Option<TimmVitFacts>,
}

#[derive(Debug, Deserialize)]
struct TimmConfigs {
    timm_version: String,
    towers: BTreeMap<String, TimmTower>,
}

fn timm_configs() -> &'static TimmConfigs {
    static CONFIGS: OnceLock<TimmConfigs> = OnceLock::new();
    CONFIGS.get_or_init(|| {
        serde_json::from_str(TIMM_CONFIGS_JSON).expect("timm_configs.json is generated valid JSON")
    })
}

/// The facts of timm model `name`, or why clipflow does not build it.
pub fn timm_vit_facts(name: &str) -> Result<&'static TimmVitFacts> {
    let configs = timm_configs();
    let tower = configs.towers.get(name).with_context(|| {
        format!(
            "clipflow does not know the timm model `{name}` (it knows those OpenCLIP's \
             configs name, as timm {} builds them)",
            configs.timm_version
        )
    })?;
    match &tower.facts {
        Some(facts) => Ok(facts),
        None => bail!(
            "its image tower is the timm model `{name}` (timm's `{}`), which clipflow does not build yet",
            tower.class
        ),
    }
}

/// OpenCLIP's head after the trunk.
#[derive(Debug)]
enum TimmHead {
    /// `timm_proj = "none"` or `""`: the trunk's output is the feature.
    None,
    /// `timm_proj = "linear"`: dropout (`timm_drop`), then `head.proj`.
    Proj { proj: nn::Linear, drop: f64 },
    /// `timm_proj = "mlp"`: `head.mlp` (fc1, GELU, dropout, fc2).
    Mlp(TimmMlp),
}

/// A timm image tower with OpenCLIP's head.
#[derive(Debug)]
pub struct TimmModel {
    trunk: TimmVisionTransformer,
    head: TimmHead,
}

/// What OpenCLIP's adapter makes of a config: the trunk's facts and
/// options, and the head after it.
#[derive(Debug)]
pub struct TimmPlan {
    facts: &'static TimmVitFacts,
    trunk: TrunkOptions,
    head: HeadPlan,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HeadPlan {
    None,
    Linear,
    Mlp,
}

impl TimmPlan {
    /// The plan of `config`'s timm tower, or why clipflow cannot build it
    /// (checked without building anything, so `clipflow models` can say).
    pub fn of(config: &ModelConfig) -> Result<TimmPlan> {
        let v = &config.vision_cfg;
        let name = v
            .timm_model_name
            .as_deref()
            .context("a timm image tower needs timm_model_name")?;
        let facts = timm_vit_facts(name)?;
        if v.timm_model_pretrained {
            bail!(
                "timm_model_pretrained (--pretrained-image) for the timm model `{name}`: \
                 clipflow does not load timm's ImageNet weights yet"
            );
        }
        let (height, width) = v.image_size.height_width();
        if [height, width] != facts.img_size {
            bail!(
                "the timm model `{name}` takes {}x{} images, not the {height}x{width} of the \
                 config's image_size (or --force-image-size); timm builds its position \
                 embedding for its own size",
                facts.img_size[0],
                facts.img_size[1]
            );
        }
        let embed_dim = config.embed_dim;
        let (pool, proj) = (v.timm_pool.as_str(), v.timm_proj.as_str());
        let own_pool = TrunkPool::parse(&facts.global_pool).with_context(|| {
            format!(
                "the timm model `{name}` pools with '{}', which clipflow does not build",
                facts.global_pool
            )
        })?;
        let head = match proj {
            "linear" => HeadPlan::Linear,
            "mlp" => HeadPlan::Mlp,
            "none" | "" => HeadPlan::None,
            other => bail!("timm_proj '{other}': OpenCLIP takes 'linear', 'mlp' or 'none'"),
        };
        if matches!(pool, "abs_attn" | "rot_attn") {
            bail!(
                "timm_pool '{pool}' pools a 2-D feature map; the timm model `{name}` is a \
                 VisionTransformer, whose features are tokens"
            );
        }
        let trunk_pool = if head == HeadPlan::None {
            // OpenCLIP creates the trunk with global_pool = timm_pool and,
            // for timm_proj "", the trunk's own head as the projection.
            if pool != facts.global_pool {
                bail!(
                    "timm_pool '{pool}' with timm_proj '{proj}': OpenCLIP creates the timm \
                     model `{name}` with that pooling in place of its own '{}', which \
                     clipflow does not build",
                    facts.global_pool
                );
            }
            own_pool
        } else if pool.is_empty() {
            // reset_classifier keeps the trunk's own pooling.
            own_pool
        } else {
            // reset_classifier(0, global_pool = timm_pool).
            let chosen = TrunkPool::parse(pool).with_context(|| {
                format!("timm_pool '{pool}': timm's VisionTransformer takes avg, max, avgmax, token or map")
            })?;
            if chosen == TrunkPool::Map && facts.attn_pool.is_none() {
                bail!("timm_pool 'map': the timm model `{name}` has no attention pool to keep");
            }
            if chosen == TrunkPool::Token && !facts.class_token {
                bail!("timm_pool 'token': the timm model `{name}` has no class token");
            }
            chosen
        };
        let head_dim = if proj.is_empty() { embed_dim } else { 0 };
        if head == HeadPlan::None && head_dim == 0 && facts.embed_dim != embed_dim {
            bail!(
                "timm_proj 'none': the timm model `{name}` gives {}-wide features, not the \
                 config's embed_dim {embed_dim}",
                facts.embed_dim
            );
        }
        Ok(TimmPlan {
            facts,
            trunk: TrunkOptions {
                pool: trunk_pool,
                head_dim,
                patch_drop: v.patch_dropout,
                drop_path: v.timm_drop_path.unwrap_or(0.0),
            },
            head,
        })
    }
}

impl TimmModel {
    pub fn new(p: nn::Path, config: &ModelConfig) -> Result<Self> {
        let plan = TimmPlan::of(config)?;
        let v = &config.vision_cfg;
        let embed_dim = config.embed_dim;
        let trunk = TimmVisionTransformer::new(&p / "trunk", plan.facts, &plan.trunk);
        let width = if plan.trunk.head_dim > 0 {
            plan.trunk.head_dim
        } else {
            plan.facts.embed_dim
        };
        let head_path = &p / "head";
        let head = match plan.head {
            HeadPlan::Linear => TimmHead::Proj {
                proj: timm_linear(&head_path / "proj", width, embed_dim, v.timm_proj_bias),
                drop: v.timm_drop,
            },
            HeadPlan::Mlp => TimmHead::Mlp(TimmMlp::with_output(
                &head_path / "mlp",
                width,
                2 * embed_dim,
                embed_dim,
                Activation::Gelu,
                v.timm_proj_bias,
                v.timm_drop,
            )),
            HeadPlan::None => TimmHead::None,
        };
        Ok(TimmModel { trunk, head })
    }

    pub fn set_grad_checkpointing(&mut self, enable: bool) {
        self.trunk.set_grad_checkpointing(enable);
    }

    /// Images [N, 3, H, W] to features [N, embed_dim] (not normalised).
    pub fn forward_t(&self, images: &Tensor, train: bool) -> Tensor {
        let x = self.trunk.forward_t(images, train);
        match &self.head {
            TimmHead::None => x,
            TimmHead::Proj { proj, drop } => proj.forward(&x.dropout(*drop, train)),
            TimmHead::Mlp(mlp) => mlp.forward_t(&x, train),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_siglip_towers_are_known_and_other_classes_are_named() {
        let facts = timm_vit_facts("vit_base_patch16_siglip_224").unwrap();
        assert_eq!(facts.global_pool, "map");
        assert!(facts.attn_pool.is_some());
        let refused = timm_vit_facts("convnext_base").unwrap_err().to_string();
        assert!(refused.contains("ConvNeXt"), "{refused}");
        let unknown = timm_vit_facts("no_such_model").unwrap_err().to_string();
        assert!(unknown.contains("no_such_model"), "{unknown}");
    }
}
