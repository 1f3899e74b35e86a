//! `clipflow tokenize`: captions on stdin to token ids on stdout, one line
//! each, as `open_clip.get_tokenizer(model)(captions)` gives them.

use std::io::{BufRead, Write};
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use clipflow_core::model::{ModelConfig, ModelOverrides};
use clipflow_core::tokenizer::{ClipTokenizer, HfTokenizer, TextTokenizer};

#[derive(Args, Debug)]
pub struct TokenizeArgs {
    /// Model architecture whose tokenizer and context length to use.
    #[arg(long, default_value = "RN50")]
    pub model: String,
    /// A HuggingFace tokenizer.json to use instead of the CLIP tokenizer.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
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
    let tokenizer: Box<dyn TextTokenizer> = match &args.tokenizer {
        Some(file) => Box::new(HfTokenizer::from_file(file)?),
        None => Box::new(ClipTokenizer::new()?),
    };
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
