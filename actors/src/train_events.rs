//! The events of a training graph: what the step executor reports (the
//! start of an epoch, each optimiser step, the end of an epoch) and the
//! evaluator adds (validation progress, metrics), which the stages after the
//! step executor (evaluator, checkpointer, logger) take, and the plan of the
//! run they share. Events are values that copy cheaply (an epoch's snapshot
//! is shared, not copied), so one output can fan out to several stages.

use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Sender;

use clipflow_core::train::run_folder::DataPosition;
use clipflow_core::train::snapshot::TrainerSnapshot;
use clipflow_core::train::trainer::StepReport;

/// The shape of a run's training: its epochs and their size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunPlan {
    /// The first epoch trained (the resumed one, or 0).
    pub first_epoch: u64,
    /// `--epochs`.
    pub epochs: u64,
    /// Optimiser steps in one epoch (the loader's batches / `--accum-freq`).
    pub steps_per_epoch: u64,
    /// The loader's batches in one epoch.
    pub batches_per_epoch: u64,
    /// Samples in one epoch (OpenCLIP's `dataloader.num_samples`).
    pub samples_per_epoch: u64,
    /// Where in the first epoch the run continues, when it resumed from a
    /// checkpoint saved inside an epoch.
    pub resume: Option<DataPosition>,
}

impl RunPlan {
    /// The plan of `epoch`.
    pub fn epoch(&self, epoch: u64) -> EpochPlan {
        EpochPlan {
            epoch,
            epochs: self.epochs,
            steps_per_epoch: self.steps_per_epoch,
            samples_per_epoch: self.samples_per_epoch,
        }
    }
}

/// Where one epoch stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochPlan {
    /// The epoch being trained, from 0.
    pub epoch: u64,
    /// `--epochs`.
    pub epochs: u64,
    /// Optimiser steps in one epoch (the loader's batches / `--accum-freq`).
    pub steps_per_epoch: u64,
    /// Samples in one epoch (OpenCLIP's `dataloader.num_samples`).
    pub samples_per_epoch: u64,
}

/// One optimiser step, with OpenCLIP's timings.
#[derive(Debug, Clone, PartialEq)]
pub struct StepEvent {
    pub plan: EpochPlan,
    pub report: StepReport,
    /// Optimiser steps done in this epoch, this one included.
    pub steps_done: u64,
    /// Rows in the step's last batch.
    pub batch_size: usize,
    /// Time waiting for the batch (OpenCLIP's "data time").
    pub data_time: Duration,
    /// Time of the whole step, waiting included ("batch time").
    pub batch_time: Duration,
}

/// The running validation loss that OpenCLIP's `evaluate` logs every 100
/// batches (from the first): `Eval Epoch: E [N / TOTAL]\tClip Loss: L\t`,
/// and for CoCa `Generative Loss: G\t`.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalProgress {
    pub epoch: u64,
    pub num_samples: u64,
    pub samples_per_val: u64,
    pub clip_loss: f64,
    pub generative_loss: Option<f64>,
}

/// The end of an epoch: every batch of it has been trained on.
#[derive(Debug, Clone)]
pub struct EpochEnd {
    pub plan: EpochPlan,
    /// The trained state at that point, for the evaluator and the
    /// checkpointer; `None` on a rank where neither has anything to do with
    /// it (every rank but 0), which then copies nothing.
    pub snapshot: Option<Arc<TrainerSnapshot>>,
    /// Signals when the last stage that took the event lets go of it.
    pub handled: Arc<HandledSignal>,
}

/// A checkpoint is due inside an epoch (`--save-every-n-steps`): the
/// trained state after an optimiser step, and where the data stream stands.
#[derive(Debug, Clone)]
pub struct MidEpochSnapshot {
    pub plan: EpochPlan,
    pub position: DataPosition,
    pub snapshot: Arc<TrainerSnapshot>,
}

/// Sends one message when dropped: shared by every copy of an event, it
/// tells the sender when all the stages that took the event are done with
/// it (the evaluation and the checkpoint of an epoch, say).
#[derive(Debug)]
pub struct HandledSignal(Sender<()>);

impl HandledSignal {
    pub fn new(to: Sender<()>) -> Self {
        HandledSignal(to)
    }
}

impl Drop for HandledSignal {
    fn drop(&mut self) {
        // The sender may have stopped waiting; nothing to tell then.
        let _ = self.0.try_send(());
    }
}

/// What flows from the step executor to the stages after it.
#[derive(Debug, Clone)]
pub enum TrainEvent {
    /// The first batch of an epoch is about to train.
    EpochStart(EpochPlan),
    Step(StepEvent),
    /// The running validation loss, every 100 validation batches.
    EvaluationProgress(EvalProgress),
    /// Metrics from an evaluation after `completed_epoch` epochs, by
    /// OpenCLIP's names (`val/...`, `imagenet-zeroshot-val-top1`, ...).
    Evaluation {
        completed_epoch: u64,
        metrics: Vec<(String, f64)>,
    },
    MidEpoch(MidEpochSnapshot),
    EpochEnd(EpochEnd),
}
