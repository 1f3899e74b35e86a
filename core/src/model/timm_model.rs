//! OpenCLIP's `TimmModel`, the image tower under `visual.` of a config with
//! a `timm_model_name`: timm's model as `trunk` (a VisionTransformer, with
//! or without relative positions, an Eva or a ConvNeXt), then OpenCLIP's
//! `head` (`head.proj`, or `head.mlp.fc1`/`fc2`,
//! or nothing). The trunk is built natively from what timm's registry says
//! of the named model
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
use super::timm_convnext::{ConvNeXtFacts, TimmConvNeXt};
use super::timm_eva::{TimmEva, TimmEvaFacts};
use super::timm_vision_transformer::{
    TimmMlp, TimmVisionTransformer, TimmVitFacts, TrunkOptions, TrunkPool,
};
use super::transformer::{normal_linear, Activation};

const TIMM_CONFIGS_JSON: &str = include_str!("timm_configs.json");

/// A timm model clipflow builds, with its facts, by timm class.
#[derive(Debug, Deserialize)]
#[serde(tag = "class")]
pub enum TimmTower {
    #[serde(alias = "VisionTransformerRelPos")]
    VisionTransformer(TimmVitFacts),
    Eva(TimmEvaFacts),
    ConvNeXt(ConvNeXtFacts),
}

impl TimmTower {
    /// The number of blocks of a ViT-like trunk (its lock groups), or None
    /// for a ConvNeXt.
    pub fn transformer_depth(&self) -> Option<i64> {
        match self {
            TimmTower::VisionTransformer(facts) => Some(facts.depth),
            TimmTower::Eva(facts) => Some(facts.depth),
            TimmTower::ConvNeXt(_) => None,
        }
    }
}

/// One timm model of OpenCLIP's configs: one clipflow builds, or the class
/// of one it does not.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum TimmConfigEntry {
    Built(Box<TimmTower>),
    NotBuilt { class: String },
}

#[derive(Debug, Deserialize)]
struct TimmConfigs {
    timm_version: String,
    towers: BTreeMap<String, TimmConfigEntry>,
}

fn timm_configs() -> &'static TimmConfigs {
    static CONFIGS: OnceLock<TimmConfigs> = OnceLock::new();
    CONFIGS.get_or_init(|| {
        serde_json::from_str(TIMM_CONFIGS_JSON).expect("timm_configs.json is generated valid JSON")
    })
}

/// The facts of timm model `name`, or why clipflow does not build it.
pub fn timm_tower(name: &str) -> Result<&'static TimmTower> {
    let configs = timm_configs();
    let tower = configs.towers.get(name).with_context(|| {
        format!(
            "clipflow does not know the timm model `{name}` (it knows those OpenCLIP's \
             configs name, as timm {} builds them)",
            configs.timm_version
        )
    })?;
    match tower {
        TimmConfigEntry::Built(tower) => Ok(tower.as_ref()),
        TimmConfigEntry::NotBuilt { class } => bail!(
            "its image tower is the timm model `{name}` (timm's `{class}`), which clipflow does not build yet"
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

/// The trunk, by timm class.
#[derive(Debug)]
enum Trunk {
    VisionTransformer(Box<TimmVisionTransformer>),
    Eva(Box<TimmEva>),
    ConvNeXt(Box<TimmConvNeXt>),
}

/// A timm image tower with OpenCLIP's head.
#[derive(Debug)]
pub struct TimmModel {
    trunk: Trunk,
    head: TimmHead,
}

/// What OpenCLIP's adapter makes of a config: the trunk and its options,
/// the width of its output, and the head after it.
#[derive(Debug)]
pub struct TimmPlan {
    trunk: TrunkPlan,
    width: i64,
    head: HeadPlan,
}

#[derive(Debug)]
enum TrunkPlan {
    VisionTransformer(&'static TimmVitFacts, TrunkOptions),
    Eva(&'static TimmEvaFacts, TrunkOptions),
    ConvNeXt {
        facts: &'static ConvNeXtFacts,
        head_dim: i64,
        drop_path: f64,
    },
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
        let tower = timm_tower(name)?;
        if v.timm_model_pretrained {
            bail!(
                "timm_model_pretrained (--pretrained-image) for the timm model `{name}`: \
                 clipflow does not load timm's ImageNet weights yet"
            );
        }
        let embed_dim = config.embed_dim;
        let (pool, proj) = (v.timm_pool.as_str(), v.timm_proj.as_str());
        let head = match proj {
            "linear" => HeadPlan::Linear,
            "mlp" => HeadPlan::Mlp,
            "none" | "" => HeadPlan::None,
            other => bail!("timm_proj '{other}': OpenCLIP takes 'linear', 'mlp' or 'none'"),
        };
        if matches!(pool, "abs_attn" | "rot_attn") {
            bail!("timm_pool '{pool}': clipflow does not build OpenCLIP's attention pools yet");
        }
        // timm_proj "": OpenCLIP makes the trunk's own classifier the
        // projection.
        let head_dim = if proj.is_empty() { embed_dim } else { 0 };
        let drop_path = v.timm_drop_path.unwrap_or(0.0);
        let (trunk, features) = match tower {
            TimmTower::VisionTransformer(facts) => {
                if facts.rel_pos.is_some() && v.patch_dropout > 0.0 {
                    bail!("patch_dropout (--force-patch-dropout): timm's VisionTransformerRelPos takes no patch dropout");
                }
                let trunk = VitTrunk {
                    own_pool: &facts.global_pool,
                    attn_pool: facts.attn_pool.is_some(),
                    class_token: facts.class_token,
                    img_size: facts.img_size,
                };
                let options = trunk.options(name, config, head, head_dim)?;
                (
                    TrunkPlan::VisionTransformer(facts, options),
                    facts.embed_dim,
                )
            }
            TimmTower::Eva(facts) => {
                let trunk = VitTrunk {
                    own_pool: &facts.global_pool,
                    attn_pool: facts.attn_pool.is_some(),
                    class_token: facts.class_token,
                    img_size: facts.img_size,
                };
                let options = trunk.options(name, config, head, head_dim)?;
                (TrunkPlan::Eva(facts, options), facts.embed_dim)
            }
            TimmTower::ConvNeXt(facts) => {
                // OpenCLIP gives a ConvNeXt its own average pooling (an empty
                // timm_pool keeps it); timm's ConvNeXt takes no patch dropout.
                if !(pool == "avg" || (pool.is_empty() && head != HeadPlan::None)) {
                    bail!("timm_pool '{pool}' with timm_proj '{proj}': clipflow builds timm's ConvNeXt with its average pooling only");
                }
                if v.patch_dropout > 0.0 {
                    bail!("patch_dropout (--force-patch-dropout): timm's ConvNeXt takes no patch dropout");
                }
                let trunk = TrunkPlan::ConvNeXt {
                    facts,
                    head_dim,
                    drop_path,
                };
                (trunk, facts.num_features())
            }
        };
        let width = if head_dim > 0 { head_dim } else { features };
        if head == HeadPlan::None && width != embed_dim {
            bail!(
                "timm_proj '{proj}': the timm model `{name}` gives {width}-wide features, not the \
                 config's embed_dim {embed_dim}"
            );
        }
        Ok(TimmPlan { trunk, width, head })
    }
}

/// What OpenCLIP's adapter asks of a ViT-like trunk (a VisionTransformer
/// or an Eva).
struct VitTrunk<'a> {
    own_pool: &'a str,
    attn_pool: bool,
    class_token: bool,
    img_size: [i64; 2],
}

impl VitTrunk<'_> {
    /// What OpenCLIP's adapter makes of the trunk for `config`.
    fn options(
        &self,
        name: &str,
        config: &ModelConfig,
        head: HeadPlan,
        head_dim: i64,
    ) -> Result<TrunkOptions> {
        let v = &config.vision_cfg;
        self.check_image_size(name, config)?;
        Ok(TrunkOptions {
            pool: self.pool(name, &v.timm_pool, &v.timm_proj, head)?,
            head_dim,
            patch_drop: v.patch_dropout,
            drop_path: v.timm_drop_path.unwrap_or(0.0),
        })
    }

    /// The trunk's pooling, as OpenCLIP's adapter sets it: created with
    /// `global_pool = timm_pool` when the trunk projects (`timm_proj` none
    /// or ""), else reset to it (an empty one keeps the trunk's own).
    fn pool(&self, name: &str, pool: &str, proj: &str, head: HeadPlan) -> Result<TrunkPool> {
        let own_pool = TrunkPool::parse(self.own_pool).with_context(|| {
            format!(
                "the timm model `{name}` pools with '{}', which clipflow does not build",
                self.own_pool
            )
        })?;
        if head == HeadPlan::None {
            if pool != self.own_pool {
                bail!(
                    "timm_pool '{pool}' with timm_proj '{proj}': OpenCLIP creates the timm model \
                     `{name}` with that pooling in place of its own '{}', which clipflow does not build",
                    self.own_pool
                );
            }
            return Ok(own_pool);
        }
        if pool.is_empty() {
            return Ok(own_pool);
        }
        let chosen = TrunkPool::parse(pool).with_context(|| {
            format!("timm_pool '{pool}': timm's ViTs take avg, max, avgmax, token or map")
        })?;
        if chosen == TrunkPool::Map && !self.attn_pool {
            bail!("timm_pool 'map': the timm model `{name}` has no attention pool to keep");
        }
        if chosen == TrunkPool::Token && !self.class_token {
            bail!("timm_pool 'token': the timm model `{name}` has no class token");
        }
        Ok(chosen)
    }

    /// The trunk's position embeddings are for timm's image size only.
    fn check_image_size(&self, name: &str, config: &ModelConfig) -> Result<()> {
        let (height, width) = config.vision_cfg.image_size.height_width();
        if [height, width] != self.img_size {
            bail!(
                "the timm model `{name}` takes {}x{} images, not the {height}x{width} of the \
                 config's image_size (or --force-image-size); timm builds its position \
                 embeddings for its own size",
                self.img_size[0],
                self.img_size[1]
            );
        }
        Ok(())
    }
}

impl TimmModel {
    pub fn new(p: nn::Path, config: &ModelConfig) -> Result<Self> {
        let plan = TimmPlan::of(config)?;
        let v = &config.vision_cfg;
        let embed_dim = config.embed_dim;
        let trunk_path = &p / "trunk";
        let trunk = match &plan.trunk {
            TrunkPlan::VisionTransformer(facts, options) => Trunk::VisionTransformer(Box::new(
                TimmVisionTransformer::new(trunk_path, facts, options),
            )),
            TrunkPlan::Eva(facts, options) => {
                Trunk::Eva(Box::new(TimmEva::new(trunk_path, facts, options)))
            }
            TrunkPlan::ConvNeXt {
                facts,
                head_dim,
                drop_path,
            } => Trunk::ConvNeXt(Box::new(TimmConvNeXt::new(
                trunk_path, facts, *head_dim, *drop_path,
            ))),
        };
        let head_path = &p / "head";
        let head = match plan.head {
            HeadPlan::Linear => TimmHead::Proj {
                proj: normal_linear(&head_path / "proj", plan.width, embed_dim, v.timm_proj_bias),
                drop: v.timm_drop,
            },
            HeadPlan::Mlp => TimmHead::Mlp(TimmMlp::with_output(
                &head_path / "mlp",
                plan.width,
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
        match &mut self.trunk {
            Trunk::VisionTransformer(vit) => vit.set_grad_checkpointing(enable),
            Trunk::Eva(eva) => eva.set_grad_checkpointing(enable),
            Trunk::ConvNeXt(convnext) => convnext.set_grad_checkpointing(enable),
        }
    }

    /// Images [N, 3, H, W] to features [N, embed_dim] (not normalised).
    pub fn forward_t(&self, images: &Tensor, train: bool) -> Tensor {
        let x = match &self.trunk {
            Trunk::VisionTransformer(vit) => vit.forward_t(images, train),
            Trunk::Eva(eva) => eva.forward_t(images, train),
            Trunk::ConvNeXt(convnext) => convnext.forward_t(images, train),
        };
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
        let TimmTower::VisionTransformer(facts) =
            timm_tower("vit_base_patch16_siglip_224").unwrap()
        else {
            panic!("a VisionTransformer");
        };
        assert_eq!(facts.global_pool, "map");
        assert!(facts.attn_pool.is_some());
        assert!(matches!(
            timm_tower("convnext_base"),
            Ok(TimmTower::ConvNeXt(_))
        ));
        assert!(matches!(
            timm_tower("eva02_base_patch16_clip_224"),
            Ok(TimmTower::Eva(_))
        ));
        let refused = timm_tower("fastvit_mci0").unwrap_err().to_string();
        assert!(refused.contains("timm's `FastVit`"), "{refused}");
        let unknown = timm_tower("no_such_model").unwrap_err().to_string();
        assert!(unknown.contains("no_such_model"), "{unknown}");
    }
}
