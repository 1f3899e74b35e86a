//! The step executor: one per device. It owns the model replica, its
//! optimiser and schedule (a [`Trainer`]), takes the batcher's batches and
//! trains on them, and reports each optimiser step and the end of the epoch
//! as [`TrainEvent`]s for the stages after it (evaluator, checkpointer,
//! logger, each of which takes every event). The end of the epoch carries a
//! host snapshot of the trained state, which is all those stages see of the
//! model.
//!
//! The trainer outlives the graph of one epoch: the program that runs
//! training hands it to the epoch's step executor through a
//! [`TrainerHandover`] and gets it back when the epoch's batches are done,
//! as OpenCLIP's loader restarts its workers every epoch.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use clipflow_core::train::snapshot::TrainerSnapshot;
use clipflow_core::train::trainer::Trainer;
use crossbeam_channel::{bounded, Receiver, Sender};

use crate::batcher::Batch;
use crate::runtime::{Emitter, Stage, WorkerInfo};
use crate::train_events::{EpochEnd, EpochPlan, StepEvent, TrainEvent};

/// Passes the trainer from the program to one epoch's step executor and
/// back: [`give`](Self::give) before the graph runs, the step executor takes
/// it when it starts and returns it when its input ends, [`take_back`](Self::take_back)
/// after the graph ran.
#[derive(Clone)]
pub struct TrainerHandover {
    to_step_executor: (Sender<Trainer>, Receiver<Trainer>),
    to_program: (Sender<Trainer>, Receiver<Trainer>),
}

impl Default for TrainerHandover {
    fn default() -> Self {
        TrainerHandover {
            to_step_executor: bounded(1),
            to_program: bounded(1),
        }
    }
}

impl TrainerHandover {
    /// Hands `trainer` over to the next step executor.
    pub fn give(&self, trainer: Trainer) -> Result<()> {
        self.to_step_executor
            .0
            .try_send(trainer)
            .map_err(|_| anyhow::anyhow!("a trainer is already waiting for the step executor"))
    }

    /// The trainer, back from the step executor (or never taken, when the
    /// topology had none).
    pub fn take_back(&self) -> Result<Trainer> {
        self.to_program
            .1
            .try_recv()
            .or_else(|_| self.to_step_executor.1.try_recv())
            .context("the step executor did not hand the trainer back (it failed mid-epoch)")
    }
}

/// Trains on each batch it receives.
pub struct StepExecutor {
    /// Held while the epoch runs; handed back at its end.
    trainer: Option<Trainer>,
    handback: Sender<Trainer>,
    plan: EpochPlan,
    /// Batches taken this epoch.
    batches: u64,
    /// When the previous step ended (OpenCLIP's `end`).
    last_step_end: Instant,
}

impl StepExecutor {
    /// A function that builds the step executor (one worker: it owns the
    /// model replica of its device), which takes the trainer `handover`
    /// holds.
    pub fn maker(
        handover: TrainerHandover,
        plan: EpochPlan,
    ) -> impl Fn(WorkerInfo) -> Result<StepExecutor> {
        move |worker| {
            anyhow::ensure!(
                worker.count == 1,
                "a step executor runs as one worker per device (parallelism = 1), not {}",
                worker.count
            );
            let trainer = handover
                .to_step_executor
                .1
                .try_recv()
                .context("no trainer was handed to the step executor")?;
            Ok(StepExecutor {
                trainer: Some(trainer),
                handback: handover.to_program.0.clone(),
                plan,
                batches: 0,
                last_step_end: Instant::now(),
            })
        }
    }

    fn trainer(&mut self) -> Result<&mut Trainer> {
        self.trainer
            .as_mut()
            .context("the step executor already handed its trainer back")
    }
}

impl Stage for StepExecutor {
    type In = Batch;
    type Out = TrainEvent;

    fn process(&mut self, batch: Batch, out: &mut Emitter<TrainEvent>) -> Result<()> {
        let data_time = self.last_step_end.elapsed();
        let plan = self.plan;
        let batches = self.batches;
        let trainer = self.trainer()?;
        let accum_freq = trainer.settings().accum_freq as u64;
        let step = plan.steps_per_epoch * plan.epoch + batches / accum_freq;
        let report = {
            let _span = tracing::info_span!("train_step", step).entered();
            trainer.train_batch(step, &batch.images, &batch.texts)?
        };
        self.batches += 1;
        let Some(report) = report else {
            return Ok(());
        };
        let now = Instant::now();
        let event = StepEvent {
            plan,
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
        let trainer = self
            .trainer
            .take()
            .context("the step executor already handed its trainer back")?;
        let snapshot = {
            let _span = tracing::info_span!("snapshot", epoch = self.plan.epoch).entered();
            Arc::new(TrainerSnapshot::of(&trainer))
        };
        self.handback
            .try_send(trainer)
            .map_err(|_| anyhow::anyhow!("the program did not wait for the trainer"))?;
        out.emit(TrainEvent::EpochEnd(EpochEnd {
            plan: self.plan,
            snapshot,
        }))?;
        Ok(())
    }
}
