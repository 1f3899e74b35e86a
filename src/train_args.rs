//! `clipflow train` flags: every flag of OpenCLIP 3.3.0's `open_clip_train.main`
//! with the same spelling, default and meaning.
//!
//! This module owns the flag surface only: parsing (`TrainArgs`, a clap
//! `Args` struct that the CLI flattens into its `train` subcommand), the
//! defaults OpenCLIP fills in after parsing (`lr`, `beta1`, `beta2` and `eps`
//! from the model name), value and cross-flag checks with errors that name the
//! flag, and `to_open_clip_namespace`, the same key/value map as OpenCLIP's
//! `vars(parse_args(argv))`, which the tests compare with OpenCLIP itself.
//!
//! Parsing follows Python's argparse where users would notice: a repeated flag
//! keeps its last value (`--aug-cfg` and the list flags included), and a long
//! flag may be shortened to any unambiguous prefix (`--batch 128`).

use clap::builder::PossibleValue;
use clap::error::ErrorKind;
use clap::{ArgAction, Args, Command, FromArgMatches, ValueEnum};
use clipflow_core::py_literal::without_digit_separators;
use clipflow_core::transform::{AugCfgEntry, AugmentationCfg};
use serde_json::{json, Value};

/// Parses `clipflow train` flags (`argv` without the program name), then fills
/// in OpenCLIP's model-dependent defaults and runs the cross-flag checks.
pub fn parse_train_args<I, T>(argv: I) -> Result<TrainArgs, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let command = TrainArgs::augment_args(Command::new("clipflow train").no_binary_name(true));
    let matches = command.try_get_matches_from(argv)?;
    TrainArgs::from_arg_matches(&matches)?.resolve_defaults_and_validate()
}

/// Every flag of `python -m open_clip_train.main`, under OpenCLIP's names.
#[derive(Args, Debug, Clone, PartialEq)]
#[command(args_override_self = true, infer_long_args = true)]
pub struct TrainArgs {
    // ---------------------------------------------------------------- data
    /// Training data: a CSV file, or webdataset tar shards written with brace
    /// patterns (`/data/train-{0000..2175}.tar`); join several sources with `::`.
    #[arg(long, help_heading = "Data")]
    pub train_data: Option<String>,

    /// Relative sampling weight of each `::`-joined --train-data source, joined
    /// the same way (`1::4`); needs --dataset-resampled. Default: uniform.
    #[arg(long, help_heading = "Data")]
    pub train_data_upsampling_factors: Option<String>,

    /// Validation data, in the same forms as --train-data.
    #[arg(long, help_heading = "Data")]
    pub val_data: Option<String>,

    /// Number of training samples; webdataset needs it unless the shards come
    /// with a size file.
    #[arg(long, allow_negative_numbers = true, value_parser = positive_u64, help_heading = "Data")]
    pub train_num_samples: Option<u64>,

    /// Number of validation samples, when the webdataset shards don't say.
    #[arg(long, allow_negative_numbers = true, value_parser = positive_u64, help_heading = "Data")]
    pub val_num_samples: Option<u64>,

    /// Format of the data; `auto` picks webdataset for `.tar` paths and csv for
    /// `.csv`/`.tsv` files.
    #[arg(long, value_enum, default_value_t = DatasetType::Auto, help_heading = "Data")]
    pub dataset_type: DatasetType,

    /// Draw webdataset shards with replacement instead of one pass per epoch.
    #[arg(long, help_heading = "Data")]
    pub dataset_resampled: bool,

    /// Column separator of csv data (default: a tab).
    #[arg(
        long,
        default_value = "\t",
        hide_default_value = true,
        help_heading = "Data"
    )]
    pub csv_separator: String,

    /// Column of csv data that holds the image paths.
    #[arg(long, default_value = "filepath", help_heading = "Data")]
    pub csv_img_key: String,

    /// Column of csv data that holds the captions.
    #[arg(long, default_value = "title", help_heading = "Data")]
    pub csv_caption_key: String,

    // --------------------------------------------------------------- model
    /// Model architecture, by OpenCLIP's config name (RN50, ViT-B-32, coca_ViT-L-14, ...).
    #[arg(long, default_value = "RN50", help_heading = "Model")]
    pub model: String,

    /// Weights to start from: a pretrained tag (e.g. laion2b_s34b_b79k) or a
    /// checkpoint file (default: none, random initialisation).
    #[arg(
        long,
        default_value = "",
        hide_default_value = true,
        help_heading = "Model"
    )]
    pub pretrained: String,

    /// Start the image tower from ImageNet weights (timm backbones only).
    #[arg(long, help_heading = "Model")]
    pub pretrained_image: bool,

    /// Replace the model's input image size: one number for a square, or
    /// height and width.
    #[arg(long, num_args = 1.., action = ArgAction::Set, allow_negative_numbers = true, value_parser = positive_usize, help_heading = "Model")]
    pub force_image_size: Option<Vec<usize>>,

    /// Replace the model's text context length (tokens per caption).
    #[arg(long, allow_negative_numbers = true, value_parser = positive_usize, help_heading = "Model")]
    pub force_context_length: Option<usize>,

    /// Replace the fraction of image patches dropped during training (ViT
    /// towers); 0 turns patch dropout off.
    #[arg(long, value_parser = unit_fraction, allow_negative_numbers = true, help_heading = "Model")]
    pub force_patch_dropout: Option<f64>,

    /// Use QuickGELU activations in a model whose config does not.
    #[arg(long, help_heading = "Model")]
    pub force_quick_gelu: bool,

    /// Build the model with a separate text tower (CustomTextCLIP layout).
    #[arg(long, help_heading = "Model")]
    pub force_custom_text: bool,

    // -------------------------------------------------------- optimisation
    /// Samples per batch on each device.
    #[arg(long, default_value_t = 64, allow_negative_numbers = true, value_parser = positive_usize, help_heading = "Optimisation")]
    pub batch_size: usize,

    /// Number of epochs to train.
    #[arg(long, default_value_t = 32, allow_negative_numbers = true, value_parser = non_negative_u64, help_heading = "Optimisation")]
    pub epochs: u64,

    /// Accumulate this many batches before each optimiser step.
    #[arg(long, default_value_t = 1, allow_negative_numbers = true, value_parser = positive_usize, help_heading = "Optimisation")]
    pub accum_freq: usize,

    /// Peak learning rate (default from the model name: 5e-4).
    #[arg(long, value_parser = non_negative_float, allow_negative_numbers = true, help_heading = "Optimisation")]
    pub lr: Option<f64>,

    /// Number of steps of linear learning-rate warmup from 0.
    #[arg(long, default_value_t = 10000, allow_negative_numbers = true, value_parser = non_negative_u64, help_heading = "Optimisation")]
    pub warmup: u64,

    /// Learning-rate schedule after warmup.
    #[arg(long, value_enum, default_value_t = LrScheduler::Cosine, help_heading = "Optimisation")]
    pub lr_scheduler: LrScheduler,

    /// Length of the cooldown at the end of training, in epochs (const-cooldown schedule).
    #[arg(long, allow_negative_numbers = true, value_parser = non_negative_u64, help_heading = "Optimisation")]
    pub epochs_cooldown: Option<u64>,

    /// Learning rate at the end of the cooldown.
    #[arg(long, default_value_t = 0.0, value_parser = non_negative_float, allow_negative_numbers = true, help_heading = "Optimisation")]
    pub lr_cooldown_end: f64,

    /// Exponent of the polynomial cooldown; 1 is a straight line.
    #[arg(long, default_value_t = 1.0, value_parser = non_negative_float, allow_negative_numbers = true, help_heading = "Optimisation")]
    pub lr_cooldown_power: f64,

    /// Keep the learning rate fixed: no warmup and no decay.
    #[arg(long, help_heading = "Optimisation")]
    pub skip_scheduler: bool,

    /// Optimiser: `adamw`, or `timm/<name>` for one of timm's optimisers.
    #[arg(long, default_value = "adamw", value_parser = optimizer_name, help_heading = "Optimisation")]
    pub opt: String,

    /// AdamW beta1 (default from the model name: 0.9).
    #[arg(long, value_parser = beta, allow_negative_numbers = true, help_heading = "Optimisation")]
    pub beta1: Option<f64>,

    /// AdamW beta2 (default from the model name: 0.98 for ViT models, 0.999 otherwise).
    #[arg(long, value_parser = beta, allow_negative_numbers = true, help_heading = "Optimisation")]
    pub beta2: Option<f64>,

    /// AdamW epsilon (default from the model name: 1e-6 for ViT models, 1e-8 otherwise).
    #[arg(long, value_parser = non_negative_float, allow_negative_numbers = true, help_heading = "Optimisation")]
    pub eps: Option<f64>,

    /// Weight decay, applied to weight matrices only (not to gains, biases or logit_scale).
    #[arg(long, default_value_t = 0.2, value_parser = non_negative_float, allow_negative_numbers = true, help_heading = "Optimisation")]
    pub wd: f64,

    /// Momentum, for timm optimisers that have one.
    #[arg(long, value_parser = non_negative_float, allow_negative_numbers = true, help_heading = "Optimisation")]
    pub momentum: Option<f64>,

    /// Clip the global gradient norm to this value.
    #[arg(long, value_parser = positive_float, allow_negative_numbers = true, help_heading = "Optimisation")]
    pub grad_clip_norm: Option<f64>,

    /// Seed of every random generator (data order, augmentation, initialisation).
    #[arg(long, default_value_t = 0, value_parser = python_int, allow_negative_numbers = true, help_heading = "Optimisation")]
    pub seed: i64,

    // ------------------------------------------------- precision and memory
    /// Number format of weights and arithmetic.
    #[arg(long, value_enum, default_value_t = Precision::Amp, help_heading = "Precision and memory")]
    pub precision: Precision,

    /// Recompute activations in the backward pass instead of storing them.
    #[arg(long, help_heading = "Precision and memory")]
    pub grad_checkpointing: bool,

    // ---------------------------------------------------------------- loss
    /// Compare local features with the gathered global ones instead of
    /// building the full global similarity matrix on every device.
    #[arg(long, help_heading = "Loss")]
    pub local_loss: bool,

    /// Let gradients flow back through the feature all-gather.
    #[arg(long, help_heading = "Loss")]
    pub gather_with_grad: bool,

    /// Train with the sigmoid (SigLIP) loss instead of the softmax contrastive loss.
    #[arg(long, help_heading = "Loss")]
    pub siglip: bool,

    /// How the SigLIP loss exchanges features between devices (default: bidir).
    #[arg(long, value_enum, help_heading = "Loss")]
    pub loss_dist_impl: Option<LossDistImpl>,

    /// Weight of the captioning loss of CoCa models.
    #[arg(long, default_value_t = 2.0, value_parser = non_negative_float, allow_negative_numbers = true, help_heading = "Loss")]
    pub coca_caption_loss_weight: f64,

    /// Weight of the contrastive loss of CoCa models.
    #[arg(long, default_value_t = 1.0, value_parser = non_negative_float, allow_negative_numbers = true, help_heading = "Loss")]
    pub coca_contrastive_loss_weight: f64,

    /// Teacher architecture to distill from (needs --distill-pretrained).
    #[arg(long, help_heading = "Loss")]
    pub distill_model: Option<String>,

    /// Teacher weights to distill from: a pretrained tag or a file (needs --distill-model).
    #[arg(long, help_heading = "Loss")]
    pub distill_pretrained: Option<String>,

    // ------------------------------------------ data loading and preprocessing
    /// Data-loading workers per device.
    #[arg(long, default_value_t = 4, allow_negative_numbers = true, value_parser = non_negative_usize, help_heading = "Data loading and preprocessing")]
    pub workers: usize,

    /// Replace the model's per-channel normalisation mean (one value, or R G B).
    #[arg(long, num_args = 1.., action = ArgAction::Set, value_name = "MEAN", value_parser = finite_float, allow_negative_numbers = true, help_heading = "Data loading and preprocessing")]
    pub image_mean: Option<Vec<f64>>,

    /// Replace the model's per-channel normalisation standard deviation (one value, or R G B).
    #[arg(long, num_args = 1.., action = ArgAction::Set, value_name = "STD", value_parser = positive_float, allow_negative_numbers = true, help_heading = "Data loading and preprocessing")]
    pub image_std: Option<Vec<f64>>,

    /// Replace the model's resize interpolation.
    #[arg(long, value_enum, help_heading = "Data loading and preprocessing")]
    pub image_interpolation: Option<ImageInterpolation>,

    /// Replace how evaluation images are resized (and cropped) to the model's size.
    #[arg(long, value_enum, help_heading = "Data loading and preprocessing")]
    pub image_resize_mode: Option<ImageResizeMode>,

    /// Training augmentation settings as key=value pairs with Python literal
    /// values, e.g. `scale=(0.08,1.0) ratio=(0.75,1.33) re_prob=0.25`. Keys:
    /// scale, ratio, color_jitter, re_prob, re_count, use_timm,
    /// color_jitter_prob, gray_scale_prob.
    #[arg(long, num_args = 0.., action = ArgAction::Set, value_name = "KEY=VALUE", value_parser = AugCfgEntry::parse, help_heading = "Data loading and preprocessing")]
    pub aug_cfg: Vec<AugCfgEntry>,

    // ------------------------------------------------------------- locking
    /// Freeze the whole image tower.
    #[arg(long, help_heading = "Locking (transfer learning)")]
    pub lock_image: bool,

    /// With --lock-image, keep the last N layer groups of the image tower trainable.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true, value_parser = non_negative_usize, help_heading = "Locking (transfer learning)")]
    pub lock_image_unlocked_groups: usize,

    /// With --lock-image, also freeze the BatchNorm running statistics of the locked layers.
    #[arg(long, help_heading = "Locking (transfer learning)")]
    pub lock_image_freeze_bn_stats: bool,

    /// Freeze the whole text tower.
    #[arg(long, help_heading = "Locking (transfer learning)")]
    pub lock_text: bool,

    /// With --lock-text, keep the last N layers of the text tower trainable.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true, value_parser = non_negative_usize, help_heading = "Locking (transfer learning)")]
    pub lock_text_unlocked_layers: usize,

    /// With --lock-text, also freeze the LayerNorms of the locked layers.
    #[arg(long, help_heading = "Locking (transfer learning)")]
    pub lock_text_freeze_layer_norm: bool,

    // ---------------------------------------------------------- checkpoints
    /// Save a checkpoint every N epochs; 0 saves none.
    #[arg(long, default_value_t = 1, allow_negative_numbers = true, value_parser = non_negative_u64, help_heading = "Checkpoints")]
    pub save_frequency: u64,

    /// Also keep the newest checkpoint as epoch_latest.pt.
    #[arg(long, help_heading = "Checkpoints")]
    pub save_most_recent: bool,

    /// Delete the previous epoch's checkpoint once a new one is saved.
    #[arg(long, help_heading = "Checkpoints")]
    pub delete_previous_checkpoint: bool,

    /// Checkpoint to resume from, or `latest` for the newest one of this experiment.
    #[arg(long, help_heading = "Checkpoints")]
    pub resume: Option<String>,

    /// Also save a checkpoint every N optimiser steps inside an epoch, which resumes exactly where it was saved (clipflow's own flag); 0 never.
    #[arg(long, default_value_t = 0, value_parser = non_negative_u64, help_heading = "Checkpoints")]
    pub save_every_n_steps: u64,

    // -------------------------------------------------------------- logging
    /// Folder for logs and checkpoints; `none` keeps nothing on disk.
    #[arg(long, default_value = "./logs/", help_heading = "Logging")]
    pub logs: String,

    /// Experiment name, the sub-folder of --logs (default: built from the date and main flags).
    #[arg(long, help_heading = "Logging")]
    pub name: Option<String>,

    /// Write a log file on the first process of every node, not only the first process overall.
    #[arg(long, help_heading = "Logging")]
    pub log_local: bool,

    /// Metric sinks, comma-separated: tensorboard, wandb, or all (default: none).
    #[arg(long, default_value = "", hide_default_value = true, value_parser = report_to_list, help_heading = "Logging")]
    pub report_to: String,

    /// Log training metrics every N steps.
    #[arg(long, default_value_t = 100, allow_negative_numbers = true, value_parser = positive_u64, help_heading = "Logging")]
    pub log_every_n_steps: u64,

    /// Weights & Biases project name.
    #[arg(long, default_value = "open-clip", help_heading = "Logging")]
    pub wandb_project_name: String,

    /// Notes attached to the Weights & Biases run.
    #[arg(
        long,
        default_value = "",
        hide_default_value = true,
        help_heading = "Logging"
    )]
    pub wandb_notes: String,

    /// Log more detail.
    #[arg(long, help_heading = "Logging")]
    pub debug: bool,

    /// Copy the topology and the resolved flags into <logs>/<name>/code (OpenCLIP copies its source tree).
    #[arg(long, help_heading = "Logging")]
    pub copy_codebase: bool,

    // ----------------------------------------------------------- evaluation
    /// ImageNet validation folder for zero-shot evaluation.
    #[arg(long, help_heading = "Evaluation")]
    pub imagenet_val: Option<String>,

    /// ImageNet-V2 folder for zero-shot evaluation.
    #[arg(long, help_heading = "Evaluation")]
    pub imagenet_v2: Option<String>,

    /// Run zero-shot evaluation every N epochs; 0 never.
    #[arg(long, default_value_t = 2, allow_negative_numbers = true, value_parser = non_negative_u64, help_heading = "Evaluation")]
    pub zeroshot_frequency: u64,

    /// Evaluate on --val-data every N epochs; 0 never.
    #[arg(long, default_value_t = 1, allow_negative_numbers = true, value_parser = non_negative_u64, help_heading = "Evaluation")]
    pub val_frequency: u64,

    /// Evaluate and save an epoch before the next one trains, in OpenCLIP's order (clipflow's own flag; by default the next epoch trains while the last one is evaluated and saved, with the same metrics).
    #[arg(long, help_heading = "Evaluation")]
    pub blocking_eval: bool,

    // ---------------------------------------------------------- distributed
    /// Device to train on (cuda, cpu).
    #[arg(long, default_value = "cuda", help_heading = "Distributed")]
    pub device: String,

    /// Rendezvous address for distributed training (e.g. tcp://host:port).
    #[arg(long, help_heading = "Distributed")]
    pub dist_url: Option<String>,

    /// Collective-communication backend (nccl for GPUs, gloo for CPUs).
    #[arg(long, help_heading = "Distributed")]
    pub dist_backend: Option<String>,

    /// Launch through Horovod instead of torchrun-style environment variables.
    #[arg(long, help_heading = "Distributed")]
    pub horovod: bool,

    /// Tell DistributedDataParallel the graph is the same every step.
    #[arg(long, help_heading = "Distributed")]
    pub ddp_static_graph: bool,

    /// Synchronise BatchNorm statistics across devices.
    #[arg(long, help_heading = "Distributed")]
    pub use_bn_sync: bool,

    /// Don't pick the device from the local rank (use when each process sees one device).
    #[arg(long, help_heading = "Distributed")]
    pub no_set_device_rank: bool,

    // ---------------------------------------------------------- remote sync
    /// Remote folder (e.g. s3://bucket/path) that the logs folder is mirrored to.
    #[arg(long, help_heading = "Remote sync")]
    pub remote_sync: Option<String>,

    /// Seconds between two mirrorings to --remote-sync.
    #[arg(long, default_value_t = 300, allow_negative_numbers = true, value_parser = non_negative_u64, help_heading = "Remote sync")]
    pub remote_sync_frequency: u64,

    /// How --remote-sync copies.
    #[arg(long, value_enum, default_value_t = RemoteSyncProtocol::S3, help_heading = "Remote sync")]
    pub remote_sync_protocol: RemoteSyncProtocol,

    // ------------------------------------------------------------- advanced
    /// Compile the model with TorchScript (torch.jit.script).
    #[arg(long, help_heading = "Advanced")]
    pub torchscript: bool,

    /// Compile the model with torch.compile.
    #[arg(long, help_heading = "Advanced")]
    pub torchcompile: bool,

    /// Trace the model with torch.jit.trace (evaluation only).
    #[arg(long, help_heading = "Advanced")]
    pub trace: bool,

    /// Replace linear layers with this bitsandbytes layer class (int8 training).
    #[arg(long, help_heading = "Advanced")]
    pub use_bnb_linear: Option<String>,

    /// Folder for downloaded weights and tokenizer files (default: the system cache).
    #[arg(long, help_heading = "Advanced")]
    pub cache_dir: Option<String>,
}

/// `--image-mean`, `--image-std`, `--image-interpolation` and
/// `--image-resize-mode` as a run applies them: each flag as given, else the
/// value of the `--pretrained` tag's preprocessing (OpenCLIP's order: the
/// flags over the tag's config over the defaults); `None` leaves the
/// default.
#[derive(Debug, Clone, PartialEq)]
pub struct ImagePreprocess {
    pub mean: Option<Vec<f64>>,
    pub std: Option<Vec<f64>>,
    pub interpolation: Option<String>,
    pub resize_mode: Option<String>,
}

impl TrainArgs {
    /// See [`ImagePreprocess`].
    pub fn image_preprocess(&self) -> ImagePreprocess {
        let tag = clipflow_core::model::pretrained::tag(&self.model, &self.pretrained);
        ImagePreprocess {
            mean: self
                .image_mean
                .clone()
                .or_else(|| tag.map(|tag| tag.mean.to_vec())),
            std: self
                .image_std
                .clone()
                .or_else(|| tag.map(|tag| tag.std.to_vec())),
            interpolation: self
                .image_interpolation
                .map(|i| i.as_str().to_string())
                .or_else(|| tag.map(|tag| tag.interpolation.clone())),
            resize_mode: self
                .image_resize_mode
                .map(|m| m.as_str().to_string())
                .or_else(|| tag.map(|tag| tag.resize_mode.clone())),
        }
    }

    /// Fills in what OpenCLIP derives after parsing and checks the flags
    /// against each other. `parse_train_args` calls it; call it yourself after
    /// a clap derive parse that flattens `TrainArgs` into a bigger command.
    ///
    /// Unless the optimiser is a timm one, an absent --lr, --beta1, --beta2 or
    /// --eps takes the CLIP paper's value for the model family: ViT models
    /// (name containing "vit", any case) use betas (0.9, 0.98) and eps 1e-6,
    /// the others (0.9, 0.999) and 1e-8; both use lr 5e-4.
    pub fn resolve_defaults_and_validate(mut self) -> Result<Self, clap::Error> {
        if !self.opt.contains("timm") {
            let is_vit = self.model.to_lowercase().contains("vit");
            let (beta2, eps) = if is_vit {
                (0.98, 1.0e-6)
            } else {
                (0.999, 1.0e-8)
            };
            self.lr.get_or_insert(5.0e-4);
            self.beta1.get_or_insert(0.9);
            self.beta2.get_or_insert(beta2);
            self.eps.get_or_insert(eps);
        }
        self.validate()?;
        Ok(self)
    }

    /// Checks that involve more than one flag, or a flag's number of values.
    fn validate(&self) -> Result<(), clap::Error> {
        let invalid =
            |message: String| clap::Error::raw(ErrorKind::ValueValidation, message + "\n");
        if let Some(size) = &self.force_image_size {
            if size.len() > 2 {
                return Err(invalid(format!(
                    "--force-image-size takes one size or a height and a width, got {} values",
                    size.len()
                )));
            }
        }
        for (flag, values) in [
            ("--image-mean", &self.image_mean),
            ("--image-std", &self.image_std),
        ] {
            if let Some(values) = values {
                if values.len() != 1 && values.len() != 3 {
                    return Err(invalid(format!(
                        "{flag} takes one value for all channels or three (R G B), got {} values",
                        values.len()
                    )));
                }
            }
        }
        if let Some(factors) = &self.train_data_upsampling_factors {
            let weights = self.upsampling_factors().ok_or_else(|| {
                invalid(format!(
                    "--train-data-upsampling-factors must be non-negative numbers joined by `::` (e.g. 1::4), got {factors:?}"
                ))
            })?;
            if let Some(train_data) = &self.train_data {
                let sources = train_data.split("::").count();
                if weights.len() != sources {
                    return Err(invalid(format!(
                        "--train-data-upsampling-factors has {} factors but --train-data has {sources} `::`-joined sources",
                        weights.len()
                    )));
                }
            }
        }
        if self.trains()
            && self.lr_scheduler == LrScheduler::ConstCooldown
            && self.epochs_cooldown.is_none()
        {
            return Err(invalid(
                "--lr-scheduler const-cooldown needs --epochs-cooldown (the number of cooldown epochs)".to_owned(),
            ));
        }
        if self.opt.contains("timm") && self.beta1.is_some() != self.beta2.is_some() {
            return Err(invalid(format!(
                "--opt {} takes both --beta1 and --beta2 or neither",
                self.opt
            )));
        }
        if self.distill_model.is_some() != self.distill_pretrained.is_some() {
            return Err(invalid(
                "--distill-model and --distill-pretrained go together: give both to distill, or neither".to_owned(),
            ));
        }
        Ok(())
    }

    /// Whether these flags train (OpenCLIP trains when it has training data:
    /// --train-data, or the synthetic dataset); otherwise they only evaluate.
    pub fn trains(&self) -> bool {
        self.train_data.is_some() || self.dataset_type == DatasetType::Synthetic
    }

    /// The weights of --train-data-upsampling-factors, one per `::`-joined
    /// source; `None` when the flag is absent or not a list of numbers.
    pub fn upsampling_factors(&self) -> Option<Vec<f64>> {
        self.train_data_upsampling_factors
            .as_deref()?
            .split("::")
            .map(|factor| non_negative_float(factor).ok())
            .collect()
    }

    /// The logs folder, or `None` when --logs is empty or `none` (any case),
    /// which OpenCLIP reads as "keep no logs".
    pub fn logs_dir(&self) -> Option<&str> {
        let logs = self.logs.as_str();
        (!logs.is_empty() && !logs.eq_ignore_ascii_case("none")).then_some(logs)
    }

    /// Whether --report-to asks for TensorBoard event files.
    pub fn reports_to_tensorboard(&self) -> bool {
        self.report_to_names()
            .any(|name| name == "tensorboard" || name == "all")
    }

    /// Whether --report-to asks for Weights & Biases.
    pub fn reports_to_wandb(&self) -> bool {
        self.report_to_names()
            .any(|name| name == "wandb" || name == "all")
    }

    fn report_to_names(&self) -> impl Iterator<Item = &str> {
        self.report_to.split(',').map(str::trim)
    }

    /// The --aug-cfg settings applied to OpenCLIP's defaults; when a key is
    /// given twice the last one wins, as in a Python dict.
    pub fn augmentation_cfg(&self) -> AugmentationCfg {
        AugmentationCfg::from_entries(&self.aug_cfg)
    }

    /// The flags set here that clipflow cannot honour, each with the reason
    /// and what to do instead. The training launcher refuses to start while
    /// this is not empty; parsing itself accepts them, as OpenCLIP does.
    pub fn unsupported_flags(&self) -> Vec<UnsupportedFlag> {
        let unsupported = |flag, reason| UnsupportedFlag { flag, reason };
        let mut found = Vec::new();
        if self.opt.to_lowercase().starts_with("timm/")
            && clipflow_core::train::optimizer::OptimizerKind::from_opt_flag(&self.opt).is_err()
        {
            found.push(unsupported(
                "--opt",
                "of timm's optimisers clipflow has timm/sgd, timm/nesterov and timm/momentum; use one of those or --opt adamw",
            ));
        }
        if self.pretrained_image {
            found.push(unsupported(
                "--pretrained-image",
                "it loads timm's ImageNet weights into a timm image tower, which clipflow does not do yet; start from --pretrained instead",
            ));
        }
        if self.augmentation_cfg().use_timm {
            found.push(unsupported(
                "--aug-cfg use_timm=True",
                "timm's augmentation pipeline is Python code; leave use_timm out to get OpenCLIP's own augmentations",
            ));
        }
        if self.horovod {
            found.push(unsupported(
                "--horovod",
                "clipflow does not use Horovod: launch with torchrun or srun (one process per device, gradients over libtorch's c10d)",
            ));
        }
        let python_compilers = [
            (self.torchscript, "--torchscript"),
            (self.torchcompile, "--torchcompile"),
            (self.trace, "--trace"),
        ];
        for (set, flag) in python_compilers {
            if set {
                found.push(unsupported(
                    flag,
                    "it compiles Python modules; clipflow's model is already native libtorch code, so drop the flag",
                ));
            }
        }
        if self.use_bnb_linear.is_some() {
            found.push(unsupported(
                "--use-bnb-linear",
                "bitsandbytes layers are Python/Triton code; train with --precision amp_bf16 or amp instead",
            ));
        }
        found
    }

    /// The same key/value map as OpenCLIP's `vars(parse_args(argv))` for the
    /// same argv: underscored names, `null` for Python's None, arrays for lists.
    pub fn to_open_clip_namespace(&self) -> Value {
        let aug_cfg: serde_json::Map<String, Value> = self
            .aug_cfg
            .iter()
            .map(|entry| (entry.setting.key().to_owned(), entry.literal.to_json()))
            .collect();
        let mut namespace = serde_json::Map::new();
        let mut set = |key: &str, value: Value| {
            namespace.insert(key.to_owned(), value);
        };
        set("train_data", json!(self.train_data));
        set(
            "train_data_upsampling_factors",
            json!(self.train_data_upsampling_factors),
        );
        set("val_data", json!(self.val_data));
        set("train_num_samples", json!(self.train_num_samples));
        set("val_num_samples", json!(self.val_num_samples));
        set("dataset_type", json!(self.dataset_type.as_str()));
        set("dataset_resampled", json!(self.dataset_resampled));
        set("csv_separator", json!(self.csv_separator));
        set("csv_img_key", json!(self.csv_img_key));
        set("csv_caption_key", json!(self.csv_caption_key));
        set("imagenet_val", json!(self.imagenet_val));
        set("imagenet_v2", json!(self.imagenet_v2));
        set("cache_dir", json!(self.cache_dir));
        set("logs", json!(self.logs));
        set("log_local", json!(self.log_local));
        set("name", json!(self.name));
        set("workers", json!(self.workers));
        set("batch_size", json!(self.batch_size));
        set("epochs", json!(self.epochs));
        set("epochs_cooldown", json!(self.epochs_cooldown));
        set("lr", json!(self.lr));
        set("beta1", json!(self.beta1));
        set("beta2", json!(self.beta2));
        set("eps", json!(self.eps));
        set("wd", json!(self.wd));
        set("momentum", json!(self.momentum));
        set("warmup", json!(self.warmup));
        set("opt", json!(self.opt));
        set("use_bn_sync", json!(self.use_bn_sync));
        set("skip_scheduler", json!(self.skip_scheduler));
        set("lr_scheduler", json!(self.lr_scheduler.as_str()));
        set("lr_cooldown_end", json!(self.lr_cooldown_end));
        set("lr_cooldown_power", json!(self.lr_cooldown_power));
        set("save_frequency", json!(self.save_frequency));
        set("save_most_recent", json!(self.save_most_recent));
        set("zeroshot_frequency", json!(self.zeroshot_frequency));
        set("val_frequency", json!(self.val_frequency));
        set("resume", json!(self.resume));
        set("precision", json!(self.precision.as_str()));
        set("model", json!(self.model));
        set("pretrained", json!(self.pretrained));
        set("pretrained_image", json!(self.pretrained_image));
        set("lock_image", json!(self.lock_image));
        set(
            "lock_image_unlocked_groups",
            json!(self.lock_image_unlocked_groups),
        );
        set(
            "lock_image_freeze_bn_stats",
            json!(self.lock_image_freeze_bn_stats),
        );
        set("image_mean", json!(self.image_mean));
        set("image_std", json!(self.image_std));
        set(
            "image_interpolation",
            json!(self.image_interpolation.map(ImageInterpolation::as_str)),
        );
        set(
            "image_resize_mode",
            json!(self.image_resize_mode.map(ImageResizeMode::as_str)),
        );
        set("aug_cfg", Value::Object(aug_cfg));
        set("grad_checkpointing", json!(self.grad_checkpointing));
        set("local_loss", json!(self.local_loss));
        set("gather_with_grad", json!(self.gather_with_grad));
        set("force_context_length", json!(self.force_context_length));
        set("force_image_size", json!(self.force_image_size));
        set("force_quick_gelu", json!(self.force_quick_gelu));
        set("force_patch_dropout", json!(self.force_patch_dropout));
        set("force_custom_text", json!(self.force_custom_text));
        set("torchscript", json!(self.torchscript));
        set("torchcompile", json!(self.torchcompile));
        set("trace", json!(self.trace));
        set("accum_freq", json!(self.accum_freq));
        set("device", json!(self.device));
        set("dist_url", json!(self.dist_url));
        set("dist_backend", json!(self.dist_backend));
        set("report_to", json!(self.report_to));
        set("wandb_notes", json!(self.wandb_notes));
        set("wandb_project_name", json!(self.wandb_project_name));
        set("debug", json!(self.debug));
        set("copy_codebase", json!(self.copy_codebase));
        set("horovod", json!(self.horovod));
        set("ddp_static_graph", json!(self.ddp_static_graph));
        set("no_set_device_rank", json!(self.no_set_device_rank));
        set("seed", json!(self.seed));
        set("grad_clip_norm", json!(self.grad_clip_norm));
        set("lock_text", json!(self.lock_text));
        set(
            "lock_text_unlocked_layers",
            json!(self.lock_text_unlocked_layers),
        );
        set(
            "lock_text_freeze_layer_norm",
            json!(self.lock_text_freeze_layer_norm),
        );
        set("log_every_n_steps", json!(self.log_every_n_steps));
        set(
            "coca_caption_loss_weight",
            json!(self.coca_caption_loss_weight),
        );
        set(
            "coca_contrastive_loss_weight",
            json!(self.coca_contrastive_loss_weight),
        );
        set("remote_sync", json!(self.remote_sync));
        set("remote_sync_frequency", json!(self.remote_sync_frequency));
        set(
            "remote_sync_protocol",
            json!(self.remote_sync_protocol.as_str()),
        );
        set(
            "delete_previous_checkpoint",
            json!(self.delete_previous_checkpoint),
        );
        set("distill_model", json!(self.distill_model));
        set("distill_pretrained", json!(self.distill_pretrained));
        set("use_bnb_linear", json!(self.use_bnb_linear));
        set("siglip", json!(self.siglip));
        set(
            "loss_dist_impl",
            json!(self.loss_dist_impl.map(LossDistImpl::as_str)),
        );
        Value::Object(namespace)
    }
}

/// A flag clipflow parses but cannot honour, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsupportedFlag {
    /// The flag as the user wrote it, e.g. `--horovod`.
    pub flag: &'static str,
    /// Why clipflow does not honour it, and what to use instead.
    pub reason: &'static str,
}

impl std::fmt::Display for UnsupportedFlag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} is not supported by clipflow: {}",
            self.flag, self.reason
        )
    }
}

// ------------------------------------------------------------ choice flags

/// Declares a flag's fixed set of values: the enum, its OpenCLIP spelling
/// (`as_str`) and clap's list of choices, all from one table.
macro_rules! choice_enum {
    ($(#[$doc:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name {
            $($variant),+
        }

        impl $name {
            /// The value as written on OpenCLIP's command line.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text),+
                }
            }
        }

        impl ValueEnum for $name {
            fn value_variants<'a>() -> &'a [Self] {
                &[$(Self::$variant),+]
            }

            fn to_possible_value(&self) -> Option<PossibleValue> {
                Some(PossibleValue::new(self.as_str()))
            }
        }
    };
}

choice_enum! {
    /// --dataset-type: the format of the training and validation data.
    DatasetType { Webdataset => "webdataset", Csv => "csv", Synthetic => "synthetic", Auto => "auto" }
}

choice_enum! {
    /// --precision: the number format of weights and arithmetic.
    Precision {
        Amp => "amp",
        AmpBf16 => "amp_bf16",
        AmpBfloat16 => "amp_bfloat16",
        Bf16 => "bf16",
        Fp16 => "fp16",
        PureBf16 => "pure_bf16",
        PureFp16 => "pure_fp16",
        Fp32 => "fp32",
    }
}

choice_enum! {
    /// --lr-scheduler: the learning-rate schedule after warmup. OpenCLIP
    /// checks this list when the schedule is built; clipflow checks it when
    /// parsing.
    LrScheduler { Cosine => "cosine", Const => "const", ConstCooldown => "const-cooldown" }
}

choice_enum! {
    /// --image-interpolation: the resize filter.
    ImageInterpolation { Bicubic => "bicubic", Bilinear => "bilinear", Random => "random" }
}

choice_enum! {
    /// --image-resize-mode: how evaluation images are fitted to the model's size.
    ImageResizeMode { Shortest => "shortest", Longest => "longest", Squash => "squash" }
}

choice_enum! {
    /// --remote-sync-protocol: how the logs folder is mirrored.
    RemoteSyncProtocol { S3 => "s3", Fsspec => "fsspec" }
}

choice_enum! {
    /// --loss-dist-impl: how the SigLIP loss exchanges features between
    /// devices. OpenCLIP checks this list when the loss is built; clipflow
    /// checks it when parsing.
    LossDistImpl { Bidir => "bidir", Shift => "shift", Reduce => "reduce", Gather => "gather" }
}

// ---------------------------------------------------------- value parsers

/// Reads an integer the way Python's `int()` does for decimal text: spaces
/// around it and `_` between digits are allowed.
fn python_int(text: &str) -> Result<i64, String> {
    without_digit_separators(text)
        .and_then(|digits| digits.parse().ok())
        .ok_or_else(|| "expected an integer".to_owned())
}

/// Reads a number the way Python's `float()` does and requires it finite.
fn finite_float(text: &str) -> Result<f64, String> {
    let number: f64 = without_digit_separators(text)
        .and_then(|digits| digits.parse().ok())
        .ok_or_else(|| "expected a number".to_owned())?;
    if number.is_finite() {
        Ok(number)
    } else {
        Err("must be a finite number".to_owned())
    }
}

fn positive_usize(text: &str) -> Result<usize, String> {
    match python_int(text) {
        Ok(n) if n > 0 => usize::try_from(n).map_err(|_| format!("{n} is too large")),
        _ => Err("must be a positive integer".to_owned()),
    }
}

fn non_negative_usize(text: &str) -> Result<usize, String> {
    match python_int(text) {
        Ok(n) if n >= 0 => usize::try_from(n).map_err(|_| format!("{n} is too large")),
        _ => Err("must be a non-negative integer".to_owned()),
    }
}

fn positive_u64(text: &str) -> Result<u64, String> {
    match python_int(text) {
        Ok(n) if n > 0 => Ok(n.unsigned_abs()),
        _ => Err("must be a positive integer".to_owned()),
    }
}

fn non_negative_u64(text: &str) -> Result<u64, String> {
    match python_int(text) {
        Ok(n) if n >= 0 => Ok(n.unsigned_abs()),
        _ => Err("must be a non-negative integer".to_owned()),
    }
}

fn non_negative_float(text: &str) -> Result<f64, String> {
    float_where(text, |x| x >= 0.0, "must be a non-negative number")
}

fn positive_float(text: &str) -> Result<f64, String> {
    float_where(text, |x| x > 0.0, "must be a positive number")
}

/// An Adam beta: at least 0 and below 1.
fn beta(text: &str) -> Result<f64, String> {
    float_where(
        text,
        |x| (0.0..1.0).contains(&x),
        "must be a number in [0, 1)",
    )
}

/// A fraction of things dropped: at least 0 and below 1.
fn unit_fraction(text: &str) -> Result<f64, String> {
    float_where(
        text,
        |x| (0.0..1.0).contains(&x),
        "must be a fraction in [0, 1)",
    )
}

/// A finite number that satisfies `accept`, or the error `requirement`.
fn float_where(text: &str, accept: fn(f64) -> bool, requirement: &str) -> Result<f64, String> {
    let x = finite_float(text)?;
    if accept(x) {
        Ok(x)
    } else {
        Err(requirement.to_owned())
    }
}

/// --opt: `adamw` (any case) or `timm/<optimizer>`, the two forms OpenCLIP builds.
fn optimizer_name(text: &str) -> Result<String, String> {
    let lower = text.to_lowercase();
    if lower == "adamw" || (lower.starts_with("timm/") && lower.len() > "timm/".len()) {
        Ok(text.to_owned())
    } else {
        Err("must be adamw or timm/<optimizer>".to_owned())
    }
}

/// --report-to: empty, or comma-separated names from tensorboard, wandb, all
/// (and `none`, which OpenCLIP's substring test also reads as no sink).
fn report_to_list(text: &str) -> Result<String, String> {
    const SINKS: [&str; 4] = ["tensorboard", "wandb", "all", "none"];
    if text.trim().is_empty() {
        return Ok(text.to_owned());
    }
    match text.split(',').map(str::trim).find(|name| !SINKS.contains(name)) {
        Some(unknown) => Err(format!(
            "unknown sink {unknown:?}; use tensorboard, wandb or all, comma-separated (e.g. tensorboard,wandb)"
        )),
        None => Ok(text.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Command {
        #[command(flatten)]
        args: TrainArgs,
    }

    fn parse(flags: &[&str]) -> TrainArgs {
        Command::parse_from(std::iter::once("train").chain(flags.iter().copied())).args
    }

    #[test]
    fn a_pretrained_tag_preprocesses_as_it_was_trained_unless_a_flag_says_otherwise() {
        let siglip = ["--model", "ViT-B-16-SigLIP", "--pretrained", "webli"];
        let tagged = parse(&siglip).image_preprocess();
        assert_eq!(tagged.mean, Some(vec![0.5; 3]));
        assert_eq!(tagged.resize_mode.as_deref(), Some("squash"));
        let overridden = parse(
            &[
                &siglip[..],
                &["--image-mean", "0.4", "--image-resize-mode", "shortest"],
            ]
            .concat(),
        )
        .image_preprocess();
        assert_eq!(overridden.mean, Some(vec![0.4]));
        assert_eq!(overridden.std, Some(vec![0.5; 3]));
        assert_eq!(overridden.resize_mode.as_deref(), Some("shortest"));
        // A file, or no weights: the defaults.
        let untagged = parse(&["--model", "ViT-B-16-SigLIP"]).image_preprocess();
        assert_eq!(untagged.mean, None);
        assert_eq!(untagged.interpolation, None);
    }
}
