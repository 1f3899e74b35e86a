//! `clipflow make-scenes DIR`: writes the rendered-scenes dataset the
//! quickstart trains on (WebDataset shards of coloured shapes with captions,
//! and a held-out zero-shot set), so it can be looked at or trained on.

use std::path::PathBuf;

use anyhow::Result;
use clipflow_core::data::rendered_scenes::{write_scene_dataset, SceneDatasetSpec};

#[derive(clap::Args, Debug)]
pub struct MakeScenesArgs {
    /// Folder to write into (created if needed).
    pub dir: PathBuf,
    /// Training image-caption pairs.
    #[arg(long, default_value_t = SceneDatasetSpec::default().train_samples)]
    pub samples: usize,
    /// Samples per shard.
    #[arg(long, default_value_t = SceneDatasetSpec::default().samples_per_shard)]
    pub samples_per_shard: usize,
    /// Held-out zero-shot images per class.
    #[arg(long, default_value_t = SceneDatasetSpec::default().zeroshot_per_class)]
    pub zeroshot_per_class: usize,
    /// Image width and height in pixels.
    #[arg(long, default_value_t = SceneDatasetSpec::default().image_size)]
    pub image_size: u32,
    /// Random seed; the same seed writes the same files.
    #[arg(long, default_value_t = SceneDatasetSpec::default().seed)]
    pub seed: u64,
}

pub fn run(args: &MakeScenesArgs) -> Result<()> {
    let spec = SceneDatasetSpec {
        train_samples: args.samples,
        samples_per_shard: args.samples_per_shard,
        zeroshot_per_class: args.zeroshot_per_class,
        image_size: args.image_size,
        seed: args.seed,
    };
    let dataset = write_scene_dataset(&args.dir, &spec)?;
    println!(
        "train data: {} ({} samples)",
        dataset.train_shards, dataset.num_train_samples
    );
    println!(
        "zero-shot: {} ({} classes x {} images; class names and templates in {})",
        dataset.zeroshot_dir.display(),
        dataset.class_names.len(),
        spec.zeroshot_per_class,
        args.dir.join("zeroshot.json").display()
    );
    Ok(())
}
