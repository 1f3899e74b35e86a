//! The step executor: one per device. It owns the model replica, its
//! optimiser and schedule (a [`Trainer`]), takes the batcher's batches and
//! trains on them, and reports each optimiser step and the end of the epoch
//! as [`TrainEvent`]s for the stages after it (evaluator, checkpointer,
//! logger, each of which takes every event).
//!
//! The trainer outlives the graph of one epoch: the program that runs
//! training keeps it in a [`SharedTrainer`] and builds each epoch's graph
//! around it, as OpenCLIP's loader restarts its workers every epoch.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use anyhow::{anyhow, Result};
use clipflow_core::train::trainer::Trainer;

use crate::batcher::Batch;
use crate::runtime::{Emitter, Stage, WorkerInfo};
use crate::train_events::{EpochPlan, StepEvent, TrainEvent};

/// The trainer, shared by the step executor and the stages that read the
/// model between epochs (evaluator, checkpointer).
#[derive(Clone)]
pub struct SharedTrainer(Arc<Mutex<Trainer>>);

impl SharedTrainer {
    pub fn new(trainer: Trainer) -> Self {
        SharedTrainer(Arc::new(Mutex::new(trainer)))
    }

    /// The trainer; an error when a stage panicked while holding it.
    pub fn lock(&self) -> Result<MutexGuard<'_, Trainer>> {
        self.0
            .lock()
            .map_err(|_| anyhow!("the trainer was poisoned by a failed stage"))
    }
}

/// Trains on each batch it receives.
pub struct StepExecutor {
    trainer: SharedTrainer,
    plan: EpochPlan,
    /// Batches taken this epoch.
    batches: u64,
    /// When the previous step ended (OpenCLIP's `end`).
    last_step_end: Instant,
}

impl StepExecutor {
    /// A function that builds the step executor (one worker: it owns the
    /// model replica of its device).
    pub fn maker(
        trainer: SharedTrainer,
        plan: EpochPlan,
    ) -> impl Fn(WorkerInfo) -> Result<StepExecutor> {
        move |worker| {
            anyhow::ensure!(
                worker.count == 1,
                "a step executor runs as one worker per device (parallelism = 1), not {}",
                worker.count
            );
            Ok(StepExecutor {
                trainer: trainer.clone(),
                plan,
                batches: 0,
                last_step_end: Instant::now(),
            })
        }
    }
}

impl Stage for StepExecutor {
    type In = Batch;
    type Out = TrainEvent;

    fn process(&mut self, batch: Batch, out: &mut Emitter<TrainEvent>) -> Result<()> {
        let data_time = self.last_step_end.elapsed();
        let mut trainer = self.trainer.lock()?;
        let accum_freq = trainer.settings().accum_freq as u64;
        let step = self.plan.steps_per_epoch * self.plan.epoch + self.batches / accum_freq;
        self.batches += 1;
        let report = {
            let _span = tracing::info_span!("train_step", step).entered();
            trainer.train_batch(step, &batch.images, &batch.texts)?
        };
        drop(trainer);
        let Some(report) = report else {
            return Ok(());
        };
        let now = Instant::now();
        let event = StepEvent {
            plan: self.plan,
            steps_done: self.batches / accum_freq,
            batch_size: batch.keys.len(),
            data_time,
            batch_time: now - self.last_step_end,
            report,
        };
        self.last_step_end = now;
        out.emit(TrainEvent::Step(event))?;
        Ok(())
    }

    fn finish(&mut self, out: &mut Emitter<TrainEvent>) -> Result<()> {
        out.emit(TrainEvent::EpochEnd(self.plan))?;
        Ok(())
    }
}
