//! OpenCLIP's pretrained tags (`--pretrained laion2b_s34b_b79k`, `openai`,
//! `webli`, ...): for each architecture, the HuggingFace hub repo and file
//! its published weights are in and the image preprocessing they were
//! trained with, read from the installed open_clip_torch by
//! `scripts/gen_pretrained_tags.py` into `pretrained_tags.json`. A tag's
//! weights are found in the local hub cache where OpenCLIP (through
//! huggingface_hub) downloads them, offline.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::OnceLock;

use anyhow::{bail, Result};
use serde::Deserialize;

use crate::hf_hub::HubCache;

const PRETRAINED_TAGS_JSON: &str = include_str!("pretrained_tags.json");

/// The file OpenCLIP fetches from a repo whose tag names none...
const DEFAULT_WEIGHTS_FILE: &str = "open_clip_pytorch_model.bin";
/// ...and the safetensors file it prefers to it when the repo has one.
const DEFAULT_SAFE_WEIGHTS_FILE: &str = "open_clip_model.safetensors";

/// One tag of an architecture.
#[derive(Debug, Clone, Deserialize)]
pub struct PretrainedTag {
    /// `ORG/REPO/FILE`, or `ORG/REPO/` for the default file.
    pub hf_hub: String,
    pub mean: [f64; 3],
    pub std: [f64; 3],
    pub interpolation: String,
    pub resize_mode: String,
    /// The weights were trained with QuickGELU.
    #[serde(default)]
    pub quick_gelu: bool,
}

type Table = BTreeMap<String, BTreeMap<String, PretrainedTag>>;

fn table() -> &'static Table {
    static TABLE: OnceLock<Table> = OnceLock::new();
    TABLE.get_or_init(|| {
        serde_json::from_str(PRETRAINED_TAGS_JSON)
            .expect("pretrained_tags.json is generated valid JSON")
    })
}

/// OpenCLIP's spelling of a tag: lower case, `-` as `_`.
fn clean_tag(tag: &str) -> String {
    tag.to_lowercase().replace('-', "_")
}

/// The tags of architecture `model`, sorted.
pub fn tags_of(model: &str) -> Vec<(&'static str, &'static PretrainedTag)> {
    table()
        .get(model)
        .map(|tags| tags.iter().map(|(tag, cfg)| (tag.as_str(), cfg)).collect())
        .unwrap_or_default()
}

/// Architectures with at least one tag, sorted.
pub fn models_with_tags() -> impl Iterator<Item = &'static str> {
    table().keys().map(String::as_str)
}

/// Tag `tag` of `model`, spelled as OpenCLIP accepts it.
pub fn tag(model: &str, tag: &str) -> Option<&'static PretrainedTag> {
    table().get(model)?.get(&clean_tag(tag))
}

impl PretrainedTag {
    /// The hub repo and the files OpenCLIP would fetch from it, in the
    /// order it tries them: a `.bin` or `.pth` file's safetensors twin
    /// first, then the file itself.
    pub fn repo_and_files(&self) -> (&str, Vec<String>) {
        let (repo, file) = match self.hf_hub.rsplit_once('/') {
            Some((repo, file)) => (repo, file),
            None => (self.hf_hub.as_str(), ""),
        };
        let files = if file.is_empty() {
            vec![
                DEFAULT_SAFE_WEIGHTS_FILE.into(),
                DEFAULT_WEIGHTS_FILE.into(),
            ]
        } else if let Some(stem) = file
            .strip_suffix(".bin")
            .or_else(|| file.strip_suffix(".pth"))
        {
            vec![format!("{stem}.safetensors"), file.into()]
        } else {
            vec![file.into()]
        };
        (repo, files)
    }

    /// The weights file in `hub`, or an error naming the repo and the file
    /// to fetch.
    pub fn weights_file(&self, hub: &HubCache) -> Result<PathBuf> {
        let (repo, files) = self.repo_and_files();
        let mut last_error = None;
        for file in &files {
            match hub.file(repo, file) {
                Ok(path) => return Ok(path),
                Err(error) => last_error = Some(error),
            }
        }
        match last_error {
            Some(error) => Err(error),
            None => bail!("pretrained tag with no file in {repo}"),
        }
    }

    /// Whether `hub` has the weights.
    pub fn is_cached(&self, hub: &HubCache) -> bool {
        self.weights_file(hub).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_resolve_as_open_clip_spells_them() {
        let laion = tag("ViT-B-32", "LAION2B-s34b-b79k").unwrap();
        let (repo, files) = laion.repo_and_files();
        assert_eq!(repo, "laion/CLIP-ViT-B-32-laion2B-s34B-b79K");
        assert_eq!(files, [DEFAULT_SAFE_WEIGHTS_FILE, DEFAULT_WEIGHTS_FILE]);
        let webli = tag("ViT-B-16-SigLIP", "webli").unwrap();
        assert_eq!(webli.mean, [0.5; 3]);
        assert_eq!(webli.resize_mode, "squash");
        assert!(tag("ViT-B-32", "openai").unwrap().quick_gelu);
        assert!(tag("ViT-B-32", "no-such-tag").is_none());
    }
}
