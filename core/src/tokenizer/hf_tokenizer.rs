//! HuggingFace tokenizers (a `tokenizer.json`: a config's
//! `hf_tokenizer_name` found in the local hub cache, or `--tokenizer FILE`),
//! used as OpenCLIP's `HFTokenizer` uses them: the caption is cleaned as the
//! config's `tokenizer_kwargs` say (`clean`: whitespace, lower or
//! canonicalize), encoded with the file's special tokens, truncated to the
//! context length (room kept for the special tokens) and padded to it with
//! the pad token; with `strip_sep_token`, the separator token becomes 0.
//! The special tokens are those `transformers` would read beside the file
//! (`tokenizer_config.json`, then `special_tokens_map.json`).

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use tokenizers::{PostProcessor, Tokenizer, TruncationDirection};

use super::text_fixer::{canonicalize_caption, clean_caption};
use super::TextTokenizer;
use crate::hf_hub::HubCache;

/// Pad tokens looked up, in this order, when neither the files beside the
/// tokenizer nor its own padding name one.
const PAD_TOKEN_NAMES: [&str; 3] = ["<pad>", "[PAD]", "<|pad|>"];

/// OpenCLIP's `clean` option of `HFTokenizer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Cleaning {
    /// ftfy, unescaping, whitespace collapsed (OpenCLIP's default).
    #[default]
    Whitespace,
    /// The same, lower-cased.
    Lower,
    /// The same, lower-cased, without ASCII punctuation (SigLIP's).
    Canonicalize,
}

impl Cleaning {
    fn apply(self, text: &str) -> String {
        match self {
            Cleaning::Whitespace => clean_caption(text),
            Cleaning::Lower => clean_caption(text).to_lowercase(),
            Cleaning::Canonicalize => canonicalize_caption(text),
        }
    }
}

/// What a model config's `tokenizer_kwargs` and `tokenizer_mode` ask of an
/// `HFTokenizer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HfTokenizerOptions {
    pub cleaning: Cleaning,
    pub strip_sep_token: bool,
}

impl HfTokenizerOptions {
    /// The options of `tokenizer_kwargs` (a JSON object or null) and
    /// `tokenizer_mode`; a key clipflow does not apply is an error naming it.
    pub fn from_config(
        kwargs: Option<&serde_json::Value>,
        mode: Option<&str>,
    ) -> Result<HfTokenizerOptions> {
        if let Some(mode) = mode.filter(|mode| !mode.is_empty()) {
            bail!("tokenizer_mode '{mode}': clipflow's HuggingFace tokenizers have the standard mode only");
        }
        let mut options = HfTokenizerOptions::default();
        let Some(kwargs) = kwargs.filter(|kwargs| !kwargs.is_null()) else {
            return Ok(options);
        };
        let kwargs = kwargs
            .as_object()
            .context("tokenizer_kwargs must be a JSON object")?;
        for (key, value) in kwargs {
            match key.as_str() {
                "clean" => {
                    options.cleaning = match value.as_str() {
                        Some("whitespace") => Cleaning::Whitespace,
                        Some("lower") => Cleaning::Lower,
                        Some("canonicalize") => Cleaning::Canonicalize,
                        _ => bail!(
                            "tokenizer_kwargs clean {value}: OpenCLIP takes \"whitespace\", \"lower\" or \"canonicalize\""
                        ),
                    }
                }
                "strip_sep_token" => {
                    options.strip_sep_token = value
                        .as_bool()
                        .with_context(|| format!("tokenizer_kwargs strip_sep_token {value}: not true or false"))?
                }
                other => bail!(
                    "tokenizer_kwargs '{other}': clipflow applies clean and strip_sep_token only"
                ),
            }
        }
        Ok(options)
    }
}

/// A HuggingFace tokenizer loaded from a `tokenizer.json`.
pub struct HfTokenizer {
    /// The file's tokenizer with its own truncation and padding switched off
    /// (the context length of each call decides them).
    tokenizer: Tokenizer,
    pad_id: i64,
    /// The separator's id, replaced by 0 (`strip_sep_token`).
    stripped_sep_id: Option<i64>,
    cleaning: Cleaning,
}

/// A special token of `tokenizer_config.json` or `special_tokens_map.json`:
/// a string, or an added-token object with its `content`.
fn special_token(files: &[serde_json::Value], key: &str) -> Option<String> {
    files.iter().find_map(|file| match file.get(key)? {
        serde_json::Value::String(token) => Some(token.clone()),
        serde_json::Value::Object(token) => token.get("content")?.as_str().map(str::to_owned),
        _ => None,
    })
}

/// The JSON files `transformers` reads special tokens from, where present
/// beside `tokenizer_json`.
fn special_token_files(tokenizer_json: &Path) -> Result<Vec<serde_json::Value>> {
    let dir = tokenizer_json.parent().unwrap_or(Path::new("."));
    let mut files = Vec::new();
    for name in ["tokenizer_config.json", "special_tokens_map.json"] {
        let path = dir.join(name);
        if let Ok(text) = std::fs::read_to_string(&path) {
            files.push(
                serde_json::from_str(&text)
                    .with_context(|| format!("{}: not valid JSON", path.display()))?,
            );
        }
    }
    Ok(files)
}

impl HfTokenizer {
    /// `tokenizer.json` of HuggingFace repo `repo` in the local hub cache.
    pub fn from_hub(
        hub: &HubCache,
        repo: &str,
        options: HfTokenizerOptions,
    ) -> Result<HfTokenizer> {
        let path = hub.file(repo, "tokenizer.json").with_context(|| {
            format!(
                "the tokenizer {repo} (hf_tokenizer_name): a tokenizer.json is needed; a repo \
                 with SentencePiece files only gets one from transformers: \
                 AutoTokenizer.from_pretrained('{repo}').save_pretrained(DIR), then \
                 --tokenizer DIR/tokenizer.json"
            )
        })?;
        Self::from_file(&path, options)
    }

    /// Loads `path`. The pad token is the one `tokenizer_config.json` or
    /// `special_tokens_map.json` beside it names, else the file's padding
    /// id, else its `<pad>`, `[PAD]` or `<|pad|>` token, else 0.
    pub fn from_file(path: &Path, options: HfTokenizerOptions) -> Result<HfTokenizer> {
        let mut tokenizer = Tokenizer::from_file(path)
            .map_err(|error| anyhow!("{error}"))
            .with_context(|| format!("loading HuggingFace tokenizer file {}", path.display()))?;
        let special = special_token_files(path)?;
        let id_of = |key: &str| -> Result<Option<u32>> {
            match special_token(&special, key) {
                Some(token) => tokenizer.token_to_id(&token).map(Some).with_context(|| {
                    format!(
                        "{}: its {key} {token:?} is not in the tokenizer's vocabulary",
                        path.display()
                    )
                }),
                None => Ok(None),
            }
        };
        let pad_id = match id_of("pad_token")? {
            Some(id) => id,
            None => match tokenizer.get_padding() {
                Some(padding) => padding.pad_id,
                None => PAD_TOKEN_NAMES
                    .iter()
                    .find_map(|name| tokenizer.token_to_id(name))
                    .unwrap_or(0),
            },
        };
        let stripped_sep_id = if options.strip_sep_token {
            let sep = match id_of("sep_token")? {
                Some(id) => id,
                None => tokenizer.token_to_id("[SEP]").with_context(|| {
                    format!(
                        "tokenizer_kwargs strip_sep_token: {} names no sep_token",
                        path.display()
                    )
                })?,
            };
            Some(i64::from(sep))
        } else {
            None
        };
        tokenizer
            .with_truncation(None)
            .map_err(|error| anyhow!("{error}"))
            .with_context(|| format!("configuring tokenizer {}", path.display()))?;
        tokenizer.with_padding(None);
        let hf = HfTokenizer {
            tokenizer,
            pad_id: i64::from(pad_id),
            stripped_sep_id,
            cleaning: options.cleaning,
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
            .encode(self.cleaning.apply(text), false)
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
        if let Some(sep) = self.stripped_sep_id {
            for id in &mut ids {
                if *id == sep {
                    *id = 0;
                }
            }
        }
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
