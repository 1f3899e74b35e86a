//! Everything `open_clip_train.main` does before its epoch loop, in its
//! order: run name and folder (refusing to overwrite a run unless resuming),
//! logs and params.txt, the model (seeded, `--pretrained`, `--precision`,
//! locked towers), the epoch's size, optimiser, schedule, loss, `--resume`,
//! and the evaluator's and checkpointer's settings.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::topology_files;
use anyhow::{bail, Context, Result};
use clipflow_actors::checkpointer::CheckpointerConfig;
use clipflow_actors::evaluator::{EvaluatorConfig, ValidationData, ZeroShotData};
use clipflow_actors::remote_syncer::RemoteSyncer;
use clipflow_actors::report::WandbInit;
use clipflow_actors::topology::TopologySources;
use clipflow_actors::train_logger::{SharedTrainLog, TrainLogConfig};
use clipflow_core::collective::{Collective, SingleProcess};
use clipflow_core::data::csv_source::CsvDataset;
use clipflow_core::data::dataset_type::{resolve_data_format, DataFormat};
use clipflow_core::distributed::ProcessGroup;
use clipflow_core::eval::zero_shot::ZeroShotSet;
use clipflow_core::hf_hub::HubCache;
use clipflow_core::loss::{create_loss, LossOptions};
use clipflow_core::model::load::load_strict;
use clipflow_core::model::{ModelConfig, ModelOverrides};
use clipflow_core::tokenizer;
use clipflow_core::train::data_parallel::DataParallel;
use clipflow_core::train::lock::{lock_image_tower, lock_text_tower};
use clipflow_core::train::optimizer::{Optimizer, OptimizerFlags};
use clipflow_core::train::run_folder::{
    default_run_name, local_now, CheckpointPolicy, DataPosition, RunNameFields, RunPaths,
};
use clipflow_core::train::schedule::{LrSchedule, LrScheduleKind, ScheduleFlags};
use clipflow_core::train::trainer::{Trainer, TrainerSettings};
use clipflow_core::transform::{
    Interpolation, ResizeMode, ValTransform, OPENAI_DATASET_MEAN, OPENAI_DATASET_STD,
};
use clipflow_core::weights::read_checkpoint;

use super::epoch_size::{train_epoch, EpochSize};
use super::launch::{DistFlags, Launch};
use super::params::{run_params, DerivedParams};
use super::precision::TrainingPrecision;
use super::ranks::{broadcast_text, check_ranks_agree};
use crate::model_setup::{build_model, parse_device, LoadedModel};
use crate::remote_sync::{fetch_latest_remote_checkpoint, start_remote_sync};
use crate::run_config::copy_run_configuration;
use crate::train_args::{LrScheduler, TrainArgs};

/// Non-finite steps in a row that stop training.
const MAX_NON_FINITE_IN_A_ROW: usize = 5;

/// Class names and prompt templates (with `{}` for the name) for the
/// zero-shot set, in place of OpenAI's ImageNet ones.
#[derive(Debug, Clone)]
pub struct ZeroShotLabels {
    pub class_names: Vec<String>,
    pub templates: Vec<String>,
}

/// A run ready for its epoch loop.
pub struct PreparedRun {
    /// This process's rank among the run's processes.
    pub launch: Launch,
    /// The run's process group, when there are several ranks.
    pub group: Option<Arc<ProcessGroup>>,
    /// `<--logs>/<name>`, unless `--logs none`.
    pub run_dir: Option<PathBuf>,
    trainer: Option<Trainer>,
    /// `--remote-sync`: mirrors the run folder until [`PreparedRun::finish`].
    remote_sync: Option<RemoteSyncer>,
    /// `None` without training data (evaluation only).
    pub epoch_size: Option<EpochSize>,
    /// The epoch to start from: 0, or the resumed checkpoint's.
    pub start_epoch: u64,
    /// Where in `start_epoch` to continue, when the checkpoint was saved
    /// inside it.
    pub resume_position: Option<DataPosition>,
    pub evaluator: Arc<EvaluatorConfig>,
    pub checkpointer: CheckpointerConfig,
    pub logger: SharedTrainLog,
}

impl PreparedRun {
    /// The trainer, once, for the epoch loop to share.
    pub fn take_trainer(&mut self) -> Result<Trainer> {
        self.trainer.take().context("the trainer was already taken")
    }

    /// Flushes and closes the logs (TensorBoard, wandb), then makes the
    /// final remote sync.
    pub fn finish(&mut self) -> Result<()> {
        let logs = self.logger.lock().finish();
        let sync = match self.remote_sync.take() {
            Some(syncer) => {
                self.logger.lock().info("Final remote sync.");
                syncer.finish().map(|_| ())
            }
            None => Ok(()),
        };
        logs.and(sync)
    }
}

pub fn prepare(
    args: &TrainArgs,
    labels: Option<ZeroShotLabels>,
    topology: &TopologySources,
) -> Result<PreparedRun> {
    let launch = Launch::from_env(
        |name| std::env::var(name).ok(),
        &DistFlags {
            dist_url: args.dist_url.as_deref(),
            dist_backend: args.dist_backend.as_deref(),
            device: parse_device(&args.device)?,
            no_set_device_rank: args.no_set_device_rank,
        },
    )?;
    let device = launch.device;
    // As OpenCLIP, the group forms before anything else is set up.
    let group = match &launch.rendezvous {
        Some(rendezvous) => Some(Arc::new(ProcessGroup::join(rendezvous)?)),
        None => None,
    };
    let is_master = launch.is_master(false);
    let precision = TrainingPrecision::new(args.precision)?;
    let Some(lr) = args.lr else {
        // OpenCLIP leaves --lr unset for timm optimisers, and its scheduler
        // then fails on the first step.
        bail!(
            "--opt {}: give --lr (timm optimisers have no model-dependent default)",
            args.opt
        );
    };

    let name = args.name.clone().unwrap_or_else(|| {
        default_run_name(
            &RunNameFields {
                model: &args.model,
                lr,
                batch_size: args.batch_size as i64,
                workers: args.workers as i64,
                precision: args.precision.as_str(),
            },
            local_now(),
        )
    });
    // The default name holds the time; every rank takes rank 0's.
    let name = match &group {
        Some(group) if args.name.is_none() => {
            broadcast_text(group, Some(name))?.context("rank 0 sent no run name")?
        }
        _ => name,
    };
    let resume_latest = args.resume.as_deref() == Some("latest");
    let (tensorboard, wandb) = (args.reports_to_tensorboard(), args.reports_to_wandb());
    // Rank 0 keeps the run folder (and with --log-local, each node's local
    // rank 0 its own log file), as in OpenCLIP.
    let all_paths = args
        .logs_dir()
        .map(|logs| RunPaths::new(Path::new(logs), &name));
    let log_file = all_paths
        .as_ref()
        .filter(|_| launch.is_master(args.log_local))
        .map(|paths| paths.log_file(args.log_local, launch.rank));
    let paths = all_paths.filter(|_| is_master);
    if let (Some(paths), Some(log_file)) = (&paths, &log_file) {
        paths.check_new_or_resuming(log_file, resume_latest)?;
        paths.create_dirs(tensorboard)?;
    }
    if let (Some(log_file), None) = (&log_file, &paths) {
        if let Some(dir) = log_file.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating the log folder {}", dir.display()))?;
        }
    }
    let resume_from = match (&args.resume, &paths) {
        (Some(resume), Some(paths)) if resume == "latest" => {
            // With --remote-sync the remote holds the latest checkpoint, as
            // in OpenCLIP; it is fetched into the local folder first.
            let remote = fetch_latest_remote_checkpoint(args, &name, &paths.run_dir)?;
            remote
                .or_else(|| paths.resume_latest(args.save_most_recent))
                .map(|path| path.display().to_string())
        }
        (Some(resume), None) if resume == "latest" && args.logs_dir().is_none() => {
            bail!("--resume latest needs a run folder, but --logs is none")
        }
        // Other ranks take rank 0's answer below.
        (Some(resume), None) if resume == "latest" => None,
        (resume, _) => resume.clone(),
    };
    let resume_from = match &group {
        Some(group) if resume_latest => broadcast_text(group, resume_from)?,
        _ => resume_from,
    };
    let path_text = |path: Option<&Path>| path.map(|p| p.display().to_string()).unwrap_or_default();
    // The device as OpenCLIP names it.
    let device_name = match device {
        tch::Device::Cuda(index) => format!("cuda:{index}"),
        _ => "cpu".to_string(),
    };
    let launch_line = launch.distributed().then(|| {
        format!(
            "Running in distributed mode with multiple processes. Device: {device_name}.\
             Process (global: {}, local {}), total {}.",
            launch.rank, launch.local_rank, launch.world_size
        )
    });
    let params = run_params(
        args,
        &DerivedParams {
            name: &name,
            device: device_name,
            log_path: log_file.as_ref().map(|path| path.display().to_string()),
            checkpoint_path: path_text(paths.as_ref().map(|p| p.checkpoints.as_path())),
            tensorboard_path: if tensorboard {
                path_text(paths.as_ref().map(|p| p.tensorboard.as_path()))
            } else {
                String::new()
            },
            wandb,
            tensorboard,
            resume: resume_from.clone(),
            ranks: (
                launch.distributed(),
                launch.world_size,
                launch.rank,
                launch.local_rank,
            ),
        },
    );
    let logger = SharedTrainLog::open(TrainLogConfig {
        log_file: log_file.clone(),
        debug: args.debug,
        params_txt: paths.as_ref().map(|paths| paths.params_txt.clone()),
        params: params
            .iter()
            .map(|(name, value)| (name.clone(), value.to_string()))
            .collect(),
        tensorboard_dir: paths
            .as_ref()
            .filter(|_| tensorboard)
            .map(|paths| paths.tensorboard.clone()),
        results_jsonl: paths.as_ref().map(RunPaths::results_jsonl),
        wandb: wandb.then(|| WandbInit {
            project: args.wandb_project_name.clone(),
            name: name.clone(),
            notes: args.wandb_notes.clone(),
            resume_latest,
            config: params.clone(),
            save: paths.iter().map(|paths| paths.params_txt.clone()).collect(),
        }),
        log_every_n_steps: args.log_every_n_steps,
        batch_size: args.batch_size as u64,
        accum_freq: args.accum_freq as u64,
        world_size: launch.world_size as u64,
        launch_line,
        quiet: !is_master,
    })?;

    if let Some(warning) = args
        .trains()
        .then(|| args.augmentation_cfg().unused_without_timm_warning())
        .flatten()
    {
        logger.lock().warning(&warning);
    }
    if let (true, Some(paths)) = (args.copy_codebase, &paths) {
        let flags: Vec<(String, String)> = params
            .iter()
            .map(|(name, value)| (name.clone(), value.to_string()))
            .collect();
        // OpenCLIP reports a taken code/ folder and trains on.
        if let Err(error) = copy_run_configuration(
            &paths.run_dir,
            &topology_files::copy_names(topology),
            &flags,
        ) {
            logger.lock().info(&format!("{error:#}"));
        }
    }
    if let Some(group) = &group {
        check_ranks_agree(group, args)?;
    }
    let remote_sync = match &paths {
        Some(paths) => start_remote_sync(args, &name, &paths.run_dir)?,
        None => None,
    };

    // OpenCLIP seeds torch before building the model (random_seed(seed, 0)).
    tch::manual_seed(args.seed);
    let overrides = model_overrides(args)?;
    let mut config = ModelConfig::by_name(&args.model, &overrides)?;
    if args.siglip {
        // OpenCLIP builds the model with init_logit_scale ln 10 and
        // init_logit_bias -10 for --siglip.
        config.init_logit_scale = Some(10f64.ln());
        config.init_logit_bias = Some(-10.0);
    }
    let pretrained = (!args.pretrained.is_empty()).then_some(args.pretrained.as_str());
    let LoadedModel {
        mut vs,
        mut model,
        config,
        ..
    } = build_model(&args.model, config, pretrained, &hub_cache(args), device)?;
    model.set_grad_checkpointing(args.grad_checkpointing);
    if let (Some(group), true) = (&group, args.use_bn_sync) {
        // OpenCLIP converts to SyncBatchNorm before wrapping in DDP, and
        // only when distributed.
        model.synchronise_batch_norms(Arc::clone(group));
    }
    precision.prepare_weights(&mut vs);
    if args.lock_image {
        lock_image_tower(&vs, &config, args.lock_image_unlocked_groups)?;
    }
    if args.lock_text {
        lock_text_tower(
            &vs,
            &config,
            args.lock_text_unlocked_layers,
            args.lock_text_freeze_layer_norm,
        )?;
    }

    let epoch_size = args
        .trains()
        .then(|| train_epoch(args, launch.world_size as u64))
        .transpose()?;
    let mut named: Vec<(String, tch::Tensor)> = vs.variables().into_iter().collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    let optimizer = Optimizer::new(
        &OptimizerFlags {
            opt: args.opt.clone(),
            lr: args.lr,
            beta1: args.beta1,
            beta2: args.beta2,
            eps: args.eps,
            wd: args.wd,
            momentum: args.momentum,
        },
        &named,
    )?;
    let schedule = match epoch_size {
        Some(size) => Some(LrSchedule::from_flags(
            &schedule_flags(args, lr),
            size.num_batches,
        )?),
        None => None,
    };
    let loss = create_loss(
        &LossOptions {
            model_name: args.model.clone(),
            coca_weights: (
                args.coca_contrastive_loss_weight,
                args.coca_caption_loss_weight,
            ),
            siglip: args.siglip,
            local_loss: args.local_loss,
            gather_with_grad: args.gather_with_grad,
            siglip_dist_impl: args
                .loss_dist_impl
                .map(|d| d.as_str().parse())
                .transpose()?,
            distill: args.distill_model.is_some() && args.distill_pretrained.is_some(),
        },
        match &group {
            Some(group) => Arc::clone(group) as Arc<dyn Collective>,
            None => Arc::new(SingleProcess),
        },
    )?;
    let mut trainer = Trainer::new(
        vs,
        model,
        optimizer,
        loss,
        schedule,
        TrainerSettings {
            device,
            accum_freq: args.accum_freq,
            grad_clip_norm: args.grad_clip_norm,
            autocast: precision.autocast(),
            input_kind: precision.forward.input_kind(),
            grad_scaler: precision.grad_scaler,
            skip_scheduler: args.skip_scheduler,
            freeze_image_bn_stats: args.lock_image && args.lock_image_freeze_bn_stats,
            max_non_finite_in_a_row: MAX_NON_FINITE_IN_A_ROW,
        },
    )?;
    if let Some(group) = &group {
        // DistributedDataParallel(model): rank 0's weights everywhere, and
        // a reducer for the gradients.
        let data_parallel =
            DataParallel::new(Arc::clone(group), &trainer.vs, args.ddp_static_graph)?;
        trainer = trainer.with_data_parallel(data_parallel);
    }
    if let (Some(teacher), Some(weights)) = (&args.distill_model, &args.distill_pretrained) {
        trainer = with_teacher(trainer, args, teacher, weights, &precision, device)?;
    }
    let (start_epoch, resume_position) = resume(resume_from.as_deref(), &mut trainer, &logger)?;

    let (height, width) = config.vision_cfg.image_size.height_width();
    // OpenCLIP evaluates on rank 0 alone.
    let preprocess = args.image_preprocess();
    let evaluator = EvaluatorConfig {
        validation: validation_data(args)?.filter(|_| is_master),
        zero_shot: if is_master {
            zero_shot_data(args, labels)
        } else {
            Vec::new()
        },
        val_frequency: args.val_frequency,
        zeroshot_frequency: args.zeroshot_frequency,
        epochs: args.epochs,
        batch_size: args.batch_size,
        loading_threads: args.workers.max(1),
        transform: ValTransform::new(
            (height as u32, width as u32),
            channels(preprocess.mean.as_deref(), OPENAI_DATASET_MEAN)?,
            channels(preprocess.std.as_deref(), OPENAI_DATASET_STD)?,
            match &preprocess.interpolation {
                Some(interpolation) => interpolation.parse()?,
                None => Interpolation::Bicubic,
            },
            match &preprocess.resize_mode {
                Some(mode) => mode.parse()?,
                None => ResizeMode::Shortest,
            },
        ),
        tokenizer: tokenizer::for_model(&args.model, &config.text_cfg, &hub_cache(args), None)?,
        context_length: config.text_cfg.context_length as usize,
        device,
        autocast: precision.autocast(),
        input_kind: precision.forward.input_kind(),
        model: config.clone(),
    };
    let checkpointer = CheckpointerConfig {
        dir: paths.as_ref().map(|paths| paths.checkpoints.clone()),
        run_name: name,
        policy: CheckpointPolicy {
            save_frequency: args.save_frequency as i64,
            save_most_recent: args.save_most_recent,
            delete_previous: args.delete_previous_checkpoint,
        },
        epochs: args.epochs,
    };
    Ok(PreparedRun {
        launch,
        group,
        run_dir: paths.as_ref().map(|paths| paths.run_dir.clone()),
        remote_sync,
        trainer: Some(trainer),
        epoch_size,
        start_epoch,
        resume_position,
        evaluator: Arc::new(evaluator),
        checkpointer,
        logger,
    })
}

fn model_overrides(args: &TrainArgs) -> Result<ModelOverrides> {
    Ok(ModelOverrides {
        force_quick_gelu: args.force_quick_gelu,
        force_custom_text: args.force_custom_text,
        force_patch_dropout: args.force_patch_dropout,
        force_image_size: match args.force_image_size.as_deref() {
            None => None,
            Some([size]) => Some(clipflow_core::model::ImageSize::Square(*size as i64)),
            Some([height, width]) => Some(clipflow_core::model::ImageSize::HeightWidth([
                *height as i64,
                *width as i64,
            ])),
            Some(other) => bail!(
                "--force-image-size takes one or two numbers, got {}",
                other.len()
            ),
        },
        force_context_length: args.force_context_length.map(|n| n as i64),
    })
}

fn schedule_flags(args: &TrainArgs, lr: f64) -> ScheduleFlags {
    ScheduleFlags {
        kind: match args.lr_scheduler {
            LrScheduler::Cosine => LrScheduleKind::Cosine,
            LrScheduler::Const => LrScheduleKind::Const,
            LrScheduler::ConstCooldown => LrScheduleKind::ConstCooldown,
        },
        lr,
        warmup: args.warmup,
        epochs: args.epochs,
        epochs_cooldown: args.epochs_cooldown,
        accum_freq: args.accum_freq as u64,
        lr_cooldown_power: args.lr_cooldown_power,
        lr_cooldown_end: args.lr_cooldown_end,
    }
}

/// `--image-mean` / `--image-std`: one value for all channels or three.
/// The HuggingFace hub cache of `--cache-dir` (or the environment's).
fn hub_cache(args: &TrainArgs) -> HubCache {
    HubCache::locate(args.cache_dir.as_deref().map(Path::new))
}

fn channels(values: Option<&[f64]>, default: [f64; 3]) -> Result<[f64; 3]> {
    match values {
        None => Ok(default),
        Some([all]) => Ok([*all; 3]),
        Some([r, g, b]) => Ok([*r, *g, *b]),
        Some(other) => bail!(
            "--image-mean/--image-std take one or three values, got {}",
            other.len()
        ),
    }
}

/// `--distill-model` / `--distill-pretrained`: the teacher as OpenCLIP's
/// `create_model_and_transforms` makes it (OpenCLIP's config, the weights
/// file, the training precision's weight casts), frozen in the trainer.
fn with_teacher(
    trainer: Trainer,
    args: &TrainArgs,
    teacher: &str,
    weights: &str,
    precision: &TrainingPrecision,
    device: tch::Device,
) -> Result<Trainer> {
    let source = format!("--distill-model {teacher} --distill-pretrained {weights}");
    if args.model.to_lowercase().contains("coca") {
        bail!("{source}: distilling into a CoCa model is not supported (as in OpenCLIP)");
    }
    let config = ModelConfig::by_name(teacher, &ModelOverrides::default())
        .with_context(|| source.clone())?;
    let LoadedModel { mut vs, model, .. } =
        build_model(teacher, config, Some(weights), &hub_cache(args), device)
            .with_context(|| source.clone())?;
    precision.prepare_weights(&mut vs);
    trainer.with_teacher(vs, model).with_context(|| source)
}

/// `--resume` (with `latest` already resolved to a file): loads the
/// weights, optimiser and scaler state of a training checkpoint and returns
/// its epoch; a bare state_dict loads weights only and starts at epoch 0.
fn resume(
    path: Option<&str>,
    trainer: &mut Trainer,
    logger: &SharedTrainLog,
) -> Result<(u64, Option<DataPosition>)> {
    let Some(path) = path else {
        return Ok((0, None));
    };
    let source = format!("--resume {path}");
    let checkpoint = read_checkpoint(Path::new(path)).with_context(|| source.clone())?;
    load_strict(&trainer.vs, &checkpoint.state_dict, &source)?;
    let Some(epoch) = checkpoint.epoch else {
        logger
            .lock()
            .info(&format!("=> loaded checkpoint '{path}' (epoch 0)"));
        return Ok((0, None));
    };
    if let Some(optimizer) = &checkpoint.optimizer {
        // An OpenCLIP checkpoint keys its optimizer state by position in
        // named_parameters() order, which its state_dict keeps.
        let torch_order: Vec<String> = checkpoint
            .state_dict
            .iter()
            .map(|(name, _)| name.clone())
            .collect();
        trainer
            .optimizer
            .load_state_dict(optimizer, Some(&torch_order))
            .with_context(|| format!("{source}: the optimizer state"))?;
    }
    if let (Some(scaler), Some(state)) = (trainer.scaler.as_mut(), &checkpoint.scaler) {
        scaler
            .load_state_dict(state)
            .with_context(|| format!("{source}: the scaler state"))?;
    }
    let position = checkpoint
        .data_position
        .as_ref()
        .map(DataPosition::from_value)
        .transpose()
        .with_context(|| source.clone())?;
    let at = match &position {
        Some(position) if position.epoch != epoch as u64 => bail!(
            "{source}: its data_position is in epoch {}, its epoch is {epoch}",
            position.epoch
        ),
        Some(position) => format!(", step {}", position.steps),
        None => String::new(),
    };
    logger.lock().info(&format!(
        "=> resuming checkpoint '{path}' (epoch {epoch}{at})"
    ));
    Ok((epoch as u64, position))
}

fn validation_data(args: &TrainArgs) -> Result<Option<ValidationData>> {
    let Some(data) = &args.val_data else {
        return Ok(None);
    };
    let samples_per_val = match resolve_data_format(data, args.dataset_type.as_str().parse()?)? {
        DataFormat::Csv => CsvDataset::load(
            Path::new(data),
            &args.csv_separator,
            &args.csv_img_key,
            &args.csv_caption_key,
        )
        .with_context(|| format!("--val-data {data}"))?
        .len() as u64,
        _ => args.val_num_samples.unwrap_or(0),
    };
    Ok(Some(ValidationData {
        data: data.clone(),
        samples_per_val,
    }))
}

fn zero_shot_data(args: &TrainArgs, labels: Option<ZeroShotLabels>) -> Vec<ZeroShotData> {
    let sets = [
        (ZeroShotSet::ImagenetVal, &args.imagenet_val),
        (ZeroShotSet::ImagenetV2, &args.imagenet_v2),
    ];
    sets.into_iter()
        .filter_map(|(set, root)| {
            root.as_ref().map(|root| ZeroShotData {
                set,
                root: PathBuf::from(root),
                class_names: labels.as_ref().map(|labels| labels.class_names.clone()),
                templates: labels.as_ref().map(|labels| labels.templates.clone()),
            })
        })
        .collect()
}
