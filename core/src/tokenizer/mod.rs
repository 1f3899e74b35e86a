//! Text tokenizers: captions to fixed-length rows of token ids.
//!
//! - [`ClipTokenizer`]: the CLIP byte-level BPE tokenizer, giving the same ids
//!   as `open_clip.tokenize` (text cleaning included).
//! - [`HfTokenizer`]: a HuggingFace `tokenizer.json` (`--tokenizer FILE`),
//!   used the way OpenCLIP's `HFTokenizer` uses one.
//!
//! Both implement [`TextTokenizer`]; [`tokenize_batch`] stacks a batch of
//! captions into the `[n, context_length]` Int64 tensor the text towers take.

mod charmaps;
mod clip_bpe;
mod hf_tokenizer;
mod html_entities;
mod html_unescape;
mod mojibake;
mod text_fixer;

use tch::Tensor;

pub use clip_bpe::ClipTokenizer;
pub use hf_tokenizer::HfTokenizer;
pub use text_fixer::clean_caption;

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
