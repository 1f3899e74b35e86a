//! HuggingFace tokenizers (`--tokenizer FILE`, a `tokenizer.json`), used as
//! OpenCLIP's `HFTokenizer` uses them: the caption gets the same cleaning as
//! the CLIP tokenizer but keeps its case, is encoded with the file's special
//! tokens, truncated to the context length (room kept for the special
//! tokens) and padded to it.

use std::path::Path;

use anyhow::{anyhow, Context, Result};
use tokenizers::{PostProcessor, Tokenizer, TruncationDirection};

use super::text_fixer::clean_caption;
use super::TextTokenizer;

/// Pad tokens looked up, in this order, when the file sets no padding.
const PAD_TOKEN_NAMES: [&str; 3] = ["<pad>", "[PAD]", "<|pad|>"];

/// A HuggingFace tokenizer loaded from a `tokenizer.json`.
pub struct HfTokenizer {
    /// The file's tokenizer with its own truncation and padding switched off
    /// (the context length of each call decides them).
    tokenizer: Tokenizer,
    pad_id: i64,
}

impl HfTokenizer {
    /// Loads `path`. Padding uses the file's padding id if it sets one, else
    /// the id of its pad token (`<pad>`, `[PAD]` or `<|pad|>`), else 0.
    pub fn from_file(path: &Path) -> Result<HfTokenizer> {
        let mut tokenizer = Tokenizer::from_file(path)
            .map_err(|error| anyhow!("{error}"))
            .with_context(|| format!("loading HuggingFace tokenizer file {}", path.display()))?;
        let pad_id = match tokenizer.get_padding() {
            Some(padding) => padding.pad_id,
            None => PAD_TOKEN_NAMES
                .iter()
                .find_map(|name| tokenizer.token_to_id(name))
                .unwrap_or(0),
        };
        tokenizer
            .with_truncation(None)
            .map_err(|error| anyhow!("{error}"))
            .with_context(|| format!("configuring tokenizer {}", path.display()))?;
        tokenizer.with_padding(None);
        let hf = HfTokenizer {
            tokenizer,
            pad_id: i64::from(pad_id),
        };
        hf.try_encode("a photo of a cat.", 16)
            .with_context(|| format!("tokenizer {} cannot encode text", path.display()))?;
        Ok(hf)
    }

    /// The padded, truncated ids of `text`, or the tokenizer's error.
    pub fn try_encode(&self, text: &str, context_length: usize) -> Result<Vec<i64>> {
        let to_error = |error: tokenizers::Error| anyhow!("{error}");
        let mut encoding = self
            .tokenizer
            .encode(clean_caption(text), false)
            .map_err(to_error)?;
        let special_token_count = self
            .tokenizer
            .get_post_processor()
            .map_or(0, |processor| processor.added_tokens(false));
        encoding.truncate(
            context_length.saturating_sub(special_token_count),
            0,
            TruncationDirection::Right,
        );
        let encoding = self
            .tokenizer
            .post_process(encoding, None, true)
            .map_err(to_error)?;
        let mut ids: Vec<i64> = encoding.get_ids().iter().map(|&id| i64::from(id)).collect();
        ids.truncate(context_length);
        ids.resize(context_length, self.pad_id);
        Ok(ids)
    }
}

impl TextTokenizer for HfTokenizer {
    /// See [`HfTokenizer::try_encode`]; a caption the tokenizer cannot encode
    /// (it accepted a probe caption when loaded) becomes a row of padding.
    fn encode(&self, text: &str, context_length: usize) -> Vec<i64> {
        self.try_encode(text, context_length)
            .unwrap_or_else(|_| vec![self.pad_id; context_length])
    }
}
