//! `clipflow embed`: images and captions to the features OpenCLIP's
//! `encode_image` / `encode_text` return (not normalised), written to a
//! safetensors file as `image_features` (one row per image, in sorted
//! file-name order) and `text_features` (one row per line).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use clipflow_core::hf_hub::HubCache;
use clipflow_core::model::ModelOverrides;
use clipflow_core::tokenizer::{self, tokenize_batch};
use clipflow_core::transform::{
    decode_image, Interpolation, ResizeMode, ValTransform, OPENAI_DATASET_MEAN, OPENAI_DATASET_STD,
};
use clipflow_core::weights::write_safetensors;
use tch::{Kind, Tensor};

use crate::model_setup::{inference_precision, load_model, parse_device};

/// File extensions `--images` picks up (case-insensitive).
const IMAGE_EXTENSIONS: [&str; 5] = ["jpg", "jpeg", "png", "webp", "bmp"];

#[derive(Args, Debug)]
pub struct EmbedArgs {
    /// Model architecture (`clipflow models` lists them).
    #[arg(long, default_value = "RN50")]
    pub model: String,
    /// Weights to load: a pretrained tag of the model (found in the
    /// HuggingFace hub cache), a .safetensors file, or an OpenCLIP .pt/.bin
    /// checkpoint.
    #[arg(long)]
    pub pretrained: Option<String>,
    /// A folder of images (.jpg, .jpeg, .png, .webp, .bmp), embedded in sorted file-name order.
    #[arg(long)]
    pub images: Option<PathBuf>,
    /// A text file with one caption per line.
    #[arg(long)]
    pub texts: Option<PathBuf>,
    /// A HuggingFace tokenizer.json to use instead of the model's own
    /// tokenizer.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// The HuggingFace hub cache holding the model's tokenizer and
    /// pretrained weights (default: HF_HUB_CACHE, HF_HOME/hub or
    /// ~/.cache/huggingface/hub).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Where to write the features (safetensors).
    #[arg(long)]
    pub output: PathBuf,
    /// Images or captions per forward pass.
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// `cpu`, `cuda` or `cuda:N` (falls back to the CPU where CUDA is absent).
    #[arg(long, default_value = "cuda")]
    pub device: String,
    /// Numeric precision, as in `clipflow train`.
    #[arg(long, default_value = "fp32")]
    pub precision: String,
}

/// The image files of `dir`, sorted by file name.
fn image_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).with_context(|| format!("--images {}", dir.display()))?;
    let mut files = Vec::new();
    for entry in entries {
        let path = entry
            .with_context(|| format!("--images {}", dir.display()))?
            .path();
        let is_image = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()));
        if is_image && path.is_file() {
            files.push(path);
        }
    }
    files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    if files.is_empty() {
        bail!("--images {}: no image files found", dir.display());
    }
    Ok(files)
}

/// The captions of `path`, one per line.
fn captions(path: &Path) -> Result<Vec<String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("--texts {}", path.display()))?;
    Ok(text.lines().map(str::to_owned).collect())
}

pub fn run(args: &EmbedArgs) -> Result<()> {
    if args.images.is_none() && args.texts.is_none() {
        bail!("clipflow embed needs --images DIR, --texts FILE, or both");
    }
    if args.batch_size == 0 {
        bail!("--batch-size must be a positive integer, got 0");
    }
    let device = parse_device(&args.device)?;
    let precision = inference_precision(&args.precision)?;
    let hub = HubCache::locate(args.cache_dir.as_deref());
    let loaded = load_model(
        &args.model,
        &ModelOverrides::default(),
        args.pretrained.as_deref(),
        &hub,
        device,
    )?;
    let mut vs = loaded.vs;
    precision.prepare_weights(&mut vs);
    let model = loaded.model;
    let mut outputs: Vec<(String, Tensor)> = Vec::new();

    if let Some(dir) = &args.images {
        let (height, width) = loaded.config.vision_cfg.image_size.height_width();
        // The pretrained tag's preprocessing, as OpenCLIP's transforms for
        // it have; OpenAI's otherwise.
        let transform = match loaded.tag {
            Some(tag) => ValTransform::new(
                (height as u32, width as u32),
                tag.mean,
                tag.std,
                tag.interpolation.parse()?,
                tag.resize_mode.parse()?,
            ),
            None => ValTransform::new(
                (height as u32, width as u32),
                OPENAI_DATASET_MEAN,
                OPENAI_DATASET_STD,
                Interpolation::Bicubic,
                ResizeMode::Shortest,
            ),
        };
        let files = image_files(dir)?;
        let mut rows = Vec::new();
        for chunk in files.chunks(args.batch_size) {
            let pixels = chunk
                .iter()
                .map(|path| {
                    let bytes = std::fs::read(path)
                        .with_context(|| format!("reading {}", path.display()))?;
                    let image = decode_image(&bytes, &path.display().to_string())?;
                    Ok(transform.apply(&image))
                })
                .collect::<Result<Vec<_>>>()?;
            let batch = Tensor::stack(&pixels, 0)
                .to_device(device)
                .to_kind(precision.input_kind());
            rows.push(precision.run(device, || model.encode_image(&batch, false))??);
        }
        outputs.push((
            "image_features".into(),
            Tensor::cat(&rows, 0).to_kind(Kind::Float),
        ));
        eprintln!(
            "clipflow embed: {} image(s) from {}",
            files.len(),
            dir.display()
        );
    }

    if let Some(path) = &args.texts {
        let tokenizer = tokenizer::for_model(
            &args.model,
            &loaded.config.text_cfg,
            &hub,
            args.tokenizer.as_deref(),
        )?;
        let lines = captions(path)?;
        if lines.is_empty() {
            bail!("--texts {}: the file has no lines", path.display());
        }
        let context_length = loaded.config.text_cfg.context_length as usize;
        let mut rows = Vec::new();
        for chunk in lines.chunks(args.batch_size) {
            let ids = tokenize_batch(tokenizer.as_ref(), chunk, context_length).to_device(device);
            rows.push(precision.run(device, || model.encode_text(&ids))?);
        }
        outputs.push((
            "text_features".into(),
            Tensor::cat(&rows, 0).to_kind(Kind::Float),
        ));
        eprintln!(
            "clipflow embed: {} caption(s) from {}",
            lines.len(),
            path.display()
        );
    }

    write_safetensors(&args.output, &outputs)
        .with_context(|| format!("--output {}", args.output.display()))?;
    eprintln!("clipflow embed: wrote {}", args.output.display());
    Ok(())
}
