//! The component kinds clipflow ships, by the names topology files use, each
//! registered here with the function that reads its settings: the generic
//! and loading kinds in [`standard_registry`], and the training kinds, bound
//! to one run, in [`register_training_kinds`]. A program embedding clipflow
//! starts from [`standard_registry`] and adds its own kinds with
//! `Registry::register_*`.

use std::sync::Arc;
use std::time::Duration;

use clipflow_core::distributed::ProcessGroup;

use crate::augmenter::{Augmenter, AugmenterConfig};
use crate::batcher::{BatchSink, Batcher, BatcherConfig, LoadingLedger};
use crate::checkpointer::{Checkpointer, CheckpointerConfig};
use crate::decoder::Decoder;
use crate::evaluator::{Evaluator, EvaluatorConfig};
use crate::runtime::generic::{Counter, Null, Work};
use crate::shard_reader::{ShardReader, ShardReaderConfig};
use crate::step_executor::{SnapshotOrder, StepExecutor, TrainerHandover};
use crate::topology::{Registry, Restarts};
use crate::train_events::{RunPlan, TrainEvent};
use crate::train_logger::{SharedTrainLog, TrainLogger};
use crate::validation_reader::{ValidationReader, ValidationReaderConfig};

/// The kinds any pipeline may use: the generic ones and those of the
/// loading paths (the training kinds need a run: [`register_training_kinds`]).
pub fn standard_registry() -> Registry {
    let mut registry = Registry::new();
    register_generic_kinds(&mut registry);
    register_loading_kinds(&mut registry);
    registry
}

/// The loading paths (see `topologies/train-data.toml` and the validation
/// path of `topologies/train.toml`): `shard-reader`, `validation-reader`,
/// `decoder`, `augmenter`, `batcher` and `batch-sink`.
fn register_loading_kinds(registry: &mut Registry) {
    registry.register_source(
        "shard-reader",
        "reads each epoch of webdataset shards, a CSV table or synthetic data as undecoded samples, in order (one worker per rank)",
        |settings| {
            Ok(ShardReader::maker(ShardReaderConfig::from_settings(
                settings,
            )?))
        },
    );
    registry.register_source(
        "validation-reader",
        "reads --val-data (webdataset shards or a CSV table) as undecoded samples, every sample once and in order, a pass for each evaluation (settings: data, dataset_type, passes, csv_*)",
        |settings| {
            Ok(ValidationReader::maker(
                ValidationReaderConfig::from_settings(settings)?,
            ))
        },
    );
    registry.register_stage(
        "decoder",
        "decodes JPEG/PNG/WebP images to RGB, refusing decompression bombs (setting: max_image_pixels)",
        Restarts::Allowed,
        |settings| {
            let decoder = Decoder::from_settings(settings)?;
            Ok(move |_worker| Ok(decoder.clone()))
        },
    );
    registry.register_stage(
        "augmenter",
        "transforms images (OpenCLIP's training or validation transform) and tokenizes captions for a model (settings: mode, model, aug_cfg, seed, epoch, image_mean, image_std, ...)",
        Restarts::Allowed,
        |settings| Ok(Augmenter::maker(AugmenterConfig::from_settings(settings)?)),
    );
    register_batcher(registry, Arc::new(LoadingLedger::default()));
    registry.register_stage(
        "batch-sink",
        "drops the batches it receives (the loading path run alone)",
        Restarts::Allowed,
        |_settings| Ok(|_worker| Ok(BatchSink)),
    );
}

/// Registers the `batcher` kind, whose components report their totals
/// (batches, samples, skips by kind) to `ledger`; a program that wants to
/// read them registers it again with its own ledger.
pub fn register_batcher(registry: &mut Registry, ledger: Arc<LoadingLedger>) {
    registry.register_stage(
        "batcher",
        "cuts samples into device-ready batches and applies the bad-data policy (settings: batch_size, drop_last, pin_memory, max_bad_fraction)",
        Restarts::Forbidden,
        move |settings| {
            Ok(Batcher::maker(
                BatcherConfig::from_settings(settings)?,
                Arc::clone(&ledger),
            ))
        },
    );
}

/// What the training kinds of a run's graph get from the program that runs
/// training: the trainer (handed to the step executor and back), the plan
/// of the run, the process group of its ranks, and the evaluator's,
/// checkpointer's and logger's settings and state.
pub struct TrainingStages {
    pub trainer: TrainerHandover,
    pub plan: RunPlan,
    pub group: Option<Arc<ProcessGroup>>,
    pub evaluator: Arc<EvaluatorConfig>,
    pub checkpointer: CheckpointerConfig,
    pub logger: SharedTrainLog,
    /// Whether the checkpointer or the evaluator of this rank uses the
    /// step executor's snapshots.
    pub take_snapshots: bool,
}

/// The kinds of `topologies/train.toml` after the batcher: `step-executor`,
/// `evaluator`, `checkpointer` and `train-logger`, bound to one run and
/// run.
pub fn register_training_kinds(registry: &mut Registry, stages: TrainingStages) {
    let TrainingStages {
        trainer,
        plan,
        group,
        evaluator,
        checkpointer,
        logger,
        take_snapshots,
    } = stages;
    // The step executor's events go to the evaluator, the checkpointer and
    // the logger alike.
    registry.allow_fan_out::<TrainEvent>();
    registry.register_stage(
        "step-executor",
        "trains the model on each batch: forward, loss, backward, optimiser step (one per device; settings: save_every_n_steps, wait_for_epoch_end)",
        Restarts::Forbidden,
        move |settings| {
            let order = SnapshotOrder {
                every_n_steps: settings.u64("save_every_n_steps")?.unwrap_or(0),
                wait_for_stages: settings.bool("wait_for_epoch_end")?.unwrap_or(false),
                group: group.clone(),
                take_snapshots,
            };
            Ok(StepExecutor::maker(trainer.clone(), plan, order))
        },
    );
    registry.register_stage_with_side_input(
        "evaluator",
        "evaluates the epoch's snapshot of the model when due (validation loss, retrieval, zero-shot; setting: validation, the batcher of the validation path)",
        "validation",
        Restarts::Forbidden,
        move |_settings| Ok(Evaluator::maker(Arc::clone(&evaluator))),
    );
    registry.register_stage(
        "checkpointer",
        "writes epoch_N.pt / epoch_latest.pt atomically from the epoch's snapshot",
        Restarts::Forbidden,
        move |_settings| Ok(Checkpointer::maker(checkpointer.clone())),
    );
    registry.register_stage(
        "train-logger",
        "writes the training and evaluation lines, TensorBoard scalars and wandb metrics",
        Restarts::Forbidden,
        move |_settings| Ok(TrainLogger::maker(logger.clone())),
    );
}

/// `counter`, `work` and `null`: components for trying the runtime out.
fn register_generic_kinds(registry: &mut Registry) {
    // The numbers may fan out: each stage that reads them gets every one.
    registry.allow_fan_out::<u64>();
    registry.register_source(
        "counter",
        "emits the numbers 0..count (setting: count)",
        |settings| {
            let count = settings.required_u64("count")?;
            Ok(move |worker| Ok(Counter::new(count, worker)))
        },
    );
    registry.register_stage(
        "work",
        "passes numbers through after simulated work (settings: work_us, sleep_us, fail_on)",
        Restarts::Allowed,
        |settings| {
            let stage = Work {
                work: Duration::from_micros(settings.u64("work_us")?.unwrap_or(0)),
                sleep: Duration::from_micros(settings.u64("sleep_us")?.unwrap_or(0)),
                fail_on: settings.u64_list("fail_on")?.unwrap_or_default(),
            };
            Ok(move |_worker| Ok(stage.clone()))
        },
    );
    registry.register_stage(
        "null",
        "drops the numbers it receives (setting: sleep_us)",
        Restarts::Allowed,
        |settings| {
            let sink = Null {
                sleep: Duration::from_micros(settings.u64("sleep_us")?.unwrap_or(0)),
            };
            Ok(move |_worker| Ok(sink.clone()))
        },
    );
}
