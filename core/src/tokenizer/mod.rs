//! Text tokenizers: captions to fixed-length rows of token ids.
//!
//! - [`ClipTokenizer`]: the CLIP byte-level BPE tokenizer, giving the same ids
//!   as `open_clip.tokenize` (text cleaning included).
//! - [`HfTokenizer`]: a HuggingFace `tokenizer.json` (a config's
//!   `hf_tokenizer_name` in the local hub cache, or `--tokenizer FILE`),
//!   used the way OpenCLIP's `HFTokenizer` uses one.
//!
//! Both implement [`TextTokenizer`]; [`for_model`] picks a model's as
//! OpenCLIP's `get_tokenizer` does, and [`tokenize_batch`] stacks a batch of
//! captions into the `[n, context_length]` Int64 tensor the text towers take.

mod charmaps;
mod clip_bpe;
mod hf_tokenizer;
mod html_entities;
mod html_unescape;
mod mojibake;
mod text_fixer;

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use tch::Tensor;

use crate::hf_hub::HubCache;
use crate::model::config::TextConfig;

pub use clip_bpe::ClipTokenizer;
pub use hf_tokenizer::{Cleaning, HfTokenizer, HfTokenizerOptions};
pub use text_fixer::clean_caption;

/// The tokenizer of model `model_name` with text config `text_cfg`, as
/// OpenCLIP's `get_tokenizer` picks it: `file` (`--tokenizer FILE`) when
/// given, else the HuggingFace tokenizer the config names, found in `hub`,
/// else the CLIP tokenizer. Either HuggingFace tokenizer applies the
/// config's `tokenizer_kwargs`.
pub fn for_model(
    model_name: &str,
    text_cfg: &TextConfig,
    hub: &HubCache,
    file: Option<&Path>,
) -> Result<Arc<dyn TextTokenizer + Send + Sync>> {
    let options = || {
        HfTokenizerOptions::from_config(
            text_cfg.tokenizer_kwargs.as_ref(),
            text_cfg.tokenizer_mode.as_deref(),
        )
        .with_context(|| format!("the tokenizer of model {model_name}"))
    };
    if let Some(file) = file {
        return Ok(Arc::new(HfTokenizer::from_file(file, options()?)?));
    }
    match text_cfg.hf_tokenizer_name.as_deref() {
        Some(repo) if !repo.is_empty() => {
            Ok(Arc::new(HfTokenizer::from_hub(hub, repo, options()?)?))
        }
        _ if model_name.to_lowercase().contains("siglip") => bail!(
            "model {model_name}: OpenCLIP gives a model named *siglip* without an \
             hf_tokenizer_name its SigLIP SentencePiece tokenizer, which clipflow does not \
             load; set hf_tokenizer_name in the config, or pass --tokenizer FILE"
        ),
        _ => Ok(Arc::new(ClipTokenizer::new()?)),
    }
}

/// A tokenizer that turns one caption into exactly `context_length` ids
/// (truncated or padded as the tokenizer defines).
pub trait TextTokenizer {
    fn encode(&self, text: &str, context_length: usize) -> Vec<i64>;
}

/// Tokenizes `texts` into an Int64 tensor of shape `[texts.len(), context_length]`.
pub fn tokenize_batch<T, S>(tokenizer: &T, texts: &[S], context_length: usize) -> Tensor
where
    T: TextTokenizer + ?Sized,
    S: AsRef<str>,
{
    let ids: Vec<i64> = texts
        .iter()
        .flat_map(|text| tokenizer.encode(text.as_ref(), context_length))
        .collect();
    Tensor::from_slice(&ids).view([texts.len() as i64, context_length as i64])
}
