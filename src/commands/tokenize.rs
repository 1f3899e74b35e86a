//! `clipflow tokenize`: captions on stdin to token ids on stdout, one line
//! each, as `open_clip.get_tokenizer(model)(captions)` gives them.

use std::io::{BufRead, Write};
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use clipflow_core::hf_hub::HubCache;
use clipflow_core::model::{ModelConfig, ModelOverrides};
use clipflow_core::tokenizer;

#[derive(Args, Debug)]
pub struct TokenizeArgs {
    /// Model architecture whose tokenizer and context length to use.
    #[arg(long, default_value = "RN50")]
    pub model: String,
    /// A HuggingFace tokenizer.json to use instead of the model's own
    /// tokenizer.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// The HuggingFace hub cache holding the model's tokenizer (default:
    /// HF_HUB_CACHE, HF_HOME/hub or ~/.cache/huggingface/hub).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Override the model's context length.
    #[arg(long)]
    pub force_context_length: Option<i64>,
}

pub fn run(args: &TokenizeArgs) -> Result<()> {
    let overrides = ModelOverrides {
        force_context_length: args.force_context_length,
        ..Default::default()
    };
    let config = ModelConfig::by_name(&args.model, &overrides)?;
    let context_length = config.text_cfg.context_length as usize;
    let hub = HubCache::locate(args.cache_dir.as_deref());
    let tokenizer = tokenizer::for_model(
        &args.model,
        &config.text_cfg,
        &hub,
        args.tokenizer.as_deref(),
    )?;
    let stdin = std::io::stdin().lock();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for (number, line) in stdin.lines().enumerate() {
        let line = line.with_context(|| format!("reading line {} of stdin", number + 1))?;
        let ids = tokenizer.encode(&line, context_length);
        let text: Vec<String> = ids.iter().map(i64::to_string).collect();
        writeln!(out, "{}", text.join(" "))?;
    }
    out.flush()?;
    Ok(())
}
