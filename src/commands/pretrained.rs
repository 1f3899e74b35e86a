//! `clipflow pretrained [MODEL] [--cache-dir DIR]`: OpenCLIP's pretrained
//! tags (of one architecture, or of all), each with the HuggingFace repo its
//! weights are in and whether the local hub cache has them, so a user sees
//! what `--pretrained TAG` can load offline and what to fetch.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;
use clipflow_core::hf_hub::HubCache;
use clipflow_core::model::pretrained::{models_with_tags, tags_of};

#[derive(Args, Debug)]
pub struct PretrainedArgs {
    /// The architecture whose tags to list (all, when left out).
    pub model: Option<String>,
    /// The HuggingFace hub cache to look in (default: HF_HUB_CACHE,
    /// HF_HOME/hub or ~/.cache/huggingface/hub).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
}

pub fn run(args: &PretrainedArgs) -> Result<()> {
    let hub = HubCache::locate(args.cache_dir.as_deref());
    let models: Vec<&str> = match &args.model {
        Some(model) => {
            if tags_of(model).is_empty() {
                bail!(
                    "{model} has no pretrained tags (`clipflow pretrained` lists every architecture that has)"
                );
            }
            vec![model.as_str()]
        }
        None => models_with_tags().collect(),
    };
    let mut out = std::io::stdout().lock();
    for model in models {
        for (tag, cfg) in tags_of(model) {
            let (repo, _) = cfg.repo_and_files();
            let state = if cfg.is_cached(&hub) {
                "in the cache"
            } else {
                "not in the cache"
            };
            writeln!(out, "{model}\t{tag}\t{repo}\t{state}")?;
        }
    }
    Ok(())
}
