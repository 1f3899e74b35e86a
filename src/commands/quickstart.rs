//! `clipflow quickstart`: the main job on an embedded default. It renders a
//! small image-caption dataset of coloured shapes (WebDataset shards plus a
//! held-out zero-shot folder), trains a small CLIP on it with `clipflow
//! train` (CPU, fp32, a few minutes), evaluates zero-shot classification of
//! the held-out images after every epoch, and ends by printing the final
//! top-1 accuracy, the TensorBoard folder and a PNG plot of the loss and
//! accuracy curves.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clipflow_core::data::rendered_scenes::{write_scene_dataset, SceneDatasetSpec};
use clipflow_core::train::run_folder::local_now;

use crate::plot::write_curves_png;
use crate::topology_files;
use crate::train_args::parse_train_args;
use crate::training::{run_with, ZeroShotLabels, TOPOLOGY_NAME};

/// The quickstart's model: a ViT CLIP small enough to train on a CPU in
/// minutes (64 px images in 8 px patches, 3 layers of width 128 per tower).
const QUICKSTART_MODEL: &str = include_str!("quickstart_model.json");

#[derive(clap::Args, Debug)]
pub struct QuickstartArgs {
    /// Folder for the dataset, the model config, the run and the plot.
    #[arg(long, default_value = "quickstart")]
    pub dir: PathBuf,
    /// Training image-caption pairs to render.
    #[arg(long, default_value_t = 10_000)]
    pub samples: usize,
    /// Training epochs.
    #[arg(long, default_value_t = 4)]
    pub epochs: u64,
    /// Loader workers per stage.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Seed of the dataset and of training.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

pub fn run(args: &QuickstartArgs) -> Result<()> {
    let data_dir = args.dir.join("data");
    eprintln!(
        "clipflow quickstart: rendering {} scenes into {}",
        args.samples,
        data_dir.display()
    );
    let dataset = write_scene_dataset(
        &data_dir,
        &SceneDatasetSpec {
            train_samples: args.samples,
            seed: args.seed,
            ..SceneDatasetSpec::default()
        },
    )?;
    let model_path = args.dir.join("model.json");
    std::fs::write(&model_path, QUICKSTART_MODEL)
        .with_context(|| format!("writing {}", model_path.display()))?;

    let logs = args.dir.join("logs");
    let text = |path: &std::path::Path| path.display().to_string();
    let argv: Vec<String> = [
        ("--model", text(&model_path)),
        ("--train-data", dataset.train_shards.clone()),
        ("--dataset-type", "webdataset".into()),
        ("--train-num-samples", dataset.num_train_samples.to_string()),
        ("--batch-size", "128".into()),
        ("--epochs", args.epochs.to_string()),
        ("--workers", args.workers.to_string()),
        ("--precision", "fp32".into()),
        ("--device", "cpu".into()),
        ("--lr", "2e-3".into()),
        ("--warmup", "50".into()),
        ("--seed", args.seed.to_string()),
        ("--logs", text(&logs)),
        (
            "--name",
            format!("quickstart-{}", local_now().format("%Y_%m_%d-%H_%M_%S")),
        ),
        ("--report-to", "tensorboard".into()),
        ("--imagenet-val", text(&dataset.zeroshot_dir)),
        ("--zeroshot-frequency", "1".into()),
        ("--log-every-n-steps", "20".into()),
        ("--save-frequency", "0".into()),
    ]
    .into_iter()
    .flat_map(|(flag, value)| [flag.to_string(), value])
    .collect();
    let train_args = parse_train_args(&argv).map_err(|error| anyhow::anyhow!("{error}"))?;
    let summary = run_with(
        train_args,
        Some(ZeroShotLabels {
            class_names: dataset.class_names.clone(),
            templates: dataset.templates.clone(),
        }),
        topology_files::standard(TOPOLOGY_NAME)?,
    )?;

    let top1: Vec<(u64, f64)> = summary
        .evaluations
        .iter()
        .filter_map(|(epoch, metrics)| {
            let top1 = metrics
                .iter()
                .find(|(name, _)| name == "imagenet-zeroshot-val-top1")?;
            Some((*epoch, top1.1))
        })
        .collect();
    let run_dir = summary
        .run_dir
        .context("the quickstart's run has a run folder")?;
    let plot = run_dir.join("curves.png");
    write_curves_png(&plot, &summary.losses, &top1)?;
    let &(_, final_top1) = top1
        .last()
        .context("the quickstart evaluated zero-shot accuracy")?;
    let classes = dataset.class_names.len();
    println!("run folder: {}", run_dir.display());
    println!(
        "TensorBoard: tensorboard --logdir {}",
        run_dir.join("tensorboard").display()
    );
    println!(
        "plot (loss by step, left; zero-shot top-1 by epoch, right): {}",
        plot.display()
    );
    println!(
        "zero-shot top-1: {:.1}% ({classes} classes, chance {:.1}%)",
        100.0 * final_top1,
        100.0 / classes as f64
    );
    Ok(())
}
