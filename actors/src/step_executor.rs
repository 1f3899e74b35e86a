//! The step executor: one per device. It owns the model replica, its
//! optimiser and schedule (a [`Trainer`]) for the whole run, takes the
//! batcher's batches and trains on them, and reports the start of each
//! epoch, each optimiser step and the end of each epoch as [`TrainEvent`]s
//! for the stages after it (evaluator, checkpointer, logger, each of which
//! takes every event). The end of an epoch carries a snapshot of the
//! trained state (on the device when it has room, else on the host; see
//! [`TrainerSnapshot`]), which is all those stages see of the model, so the next
//! epoch trains while they evaluate and save the last one; with
//! `wait_for_epoch_end` it waits until they are done (OpenCLIP's order:
//! evaluate, save, then train on), all ranks together. Every
//! `save_every_n_steps` optimiser steps inside an epoch it sends a snapshot
//! too, with the place in the data stream the next batch starts at, for a
//! checkpoint that resumes exactly there.
//!
//! The program that runs training hands the trainer to the step executor
//! through a [`TrainerHandover`] and gets it back when the run's batches
//! are done.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use clipflow_core::collective::Collective;
use clipflow_core::distributed::ProcessGroup;
use clipflow_core::train::run_folder::DataPosition;
use clipflow_core::train::snapshot::TrainerSnapshot;
use clipflow_core::train::trainer::Trainer;
use crossbeam_channel::{bounded, Receiver, Sender};

use crate::batcher::{Batch, BatchItem};
use crate::runtime::{Emitter, Stage, WorkerInfo};
use crate::train_events::{
    EpochEnd, EpochPlan, HandledSignal, MidEpochSnapshot, RunPlan, StepEvent, TrainEvent,
};

/// Passes the trainer from the program to the step executor and back:
/// [`give`](Self::give) before the graph runs, the step executor takes it
/// when it starts and returns it when its input ends,
/// [`take_back`](Self::take_back) after the graph ran.
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
    /// Hands `trainer` over to the step executor.
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
            .context("the step executor did not hand the trainer back (it failed mid-run)")
    }
}

/// When the step executor hands out snapshots and waits for the stages that
/// take them.
#[derive(Clone, Default)]
pub struct SnapshotOrder {
    /// A snapshot for a checkpoint every this many optimiser steps inside
    /// an epoch (`--save-every-n-steps`); 0 never.
    pub every_n_steps: u64,
    /// Wait until every stage that took the epoch's end is done with it
    /// (evaluation, checkpoint) before training on.
    pub wait_for_stages: bool,
    /// Then wait for every rank, for as long as that takes (rank 0 may be
    /// evaluating).
    pub group: Option<Arc<ProcessGroup>>,
    /// Whether a stage of this rank uses snapshots (it checkpoints or
    /// evaluates); without one, none is taken.
    pub take_snapshots: bool,
}

/// Trains on each batch it receives.
pub struct StepExecutor {
    /// Held while the run trains; handed back at its end.
    trainer: Option<Trainer>,
    handback: Sender<Trainer>,
    plan: RunPlan,
    order: SnapshotOrder,
    /// The epoch being trained, once its first batch came.
    epoch: Option<u64>,
    /// Batches taken in the epoch.
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
        plan: RunPlan,
        order: SnapshotOrder,
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
                order: order.clone(),
                epoch: None,
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

    /// The plan of `epoch`, announcing it when it is new.
    fn enter_epoch(&mut self, epoch: u64, out: &mut Emitter<TrainEvent>) -> Result<EpochPlan> {
        let plan = self.plan.epoch(epoch);
        if self.epoch != Some(epoch) {
            self.epoch = Some(epoch);
            self.batches = match self.plan.resume {
                Some(position) if position.epoch == epoch => position.batches,
                _ => 0,
            };
            out.emit(TrainEvent::EpochStart(plan))?;
        }
        Ok(plan)
    }

    fn train(&mut self, batch: Batch, out: &mut Emitter<TrainEvent>) -> Result<()> {
        let data_time = self.last_step_end.elapsed();
        let plan = self.enter_epoch(batch.next_place.epoch, out)?;
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
        let steps_done = self.batches / accum_freq;
        let event = StepEvent {
            plan,
            steps_done,
            batch_size: batch.keys.len(),
            data_time,
            batch_time: now - self.last_step_end,
            report,
        };
        self.last_step_end = now;
        out.emit(TrainEvent::Step(event))?;
        let every = self.order.every_n_steps;
        let steps = step + 1;
        let save_due = every > 0 && steps % every == 0 && steps_done < plan.steps_per_epoch;
        if save_due && self.order.take_snapshots {
            let position = DataPosition {
                epoch: plan.epoch,
                place: batch.next_place.index,
                batches: self.batches,
                steps,
            };
            let snapshot = {
                let span =
                    tracing::info_span!("snapshot", step = steps, device = tracing::field::Empty)
                        .entered();
                let snapshot = TrainerSnapshot::of(self.trainer()?)?;
                span.record("device", format!("{:?}", snapshot.device));
                Arc::new(snapshot)
            };
            out.emit(TrainEvent::MidEpoch(MidEpochSnapshot {
                plan,
                position,
                snapshot,
            }))?;
            // Copying the state is not the next step's data time.
            self.last_step_end = Instant::now();
        }
        Ok(())
    }

    /// Reports the end of `epoch` with a snapshot of the trained state, and
    /// waits as the order says.
    fn end_epoch(&mut self, epoch: u64, out: &mut Emitter<TrainEvent>) -> Result<()> {
        let plan = self.enter_epoch(epoch, out)?;
        if let Some(group) = &self.order.group {
            // The other ranks are waiting in this epoch's next step.
            anyhow::ensure!(
                self.batches >= self.plan.batches_per_epoch,
                "rank {} of {}: epoch {epoch} ended after {} of its {} batches, as more of \
                 its samples failed to decode than the shard reader read spares \
                 ('spare_samples' in the topology); the ranks would train different steps",
                group.rank(),
                group.world_size(),
                self.batches,
                self.plan.batches_per_epoch
            );
        }
        let snapshot = if self.order.take_snapshots {
            let span =
                tracing::info_span!("snapshot", epoch, device = tracing::field::Empty).entered();
            let snapshot = TrainerSnapshot::of(self.trainer()?)?;
            span.record("device", format!("{:?}", snapshot.device));
            Some(Arc::new(snapshot))
        } else {
            None
        };
        let (handled, all_handled) = bounded(1);
        out.emit(TrainEvent::EpochEnd(EpochEnd {
            plan,
            snapshot,
            handled: Arc::new(HandledSignal::new(handled)),
        }))?;
        if self.order.wait_for_stages {
            let _span = tracing::info_span!("wait_for_epoch_end", epoch).entered();
            // Every copy dropped: the signal fires, or the graph stopped.
            let _ = all_handled.recv();
            if let Some(group) = &self.order.group {
                group.barrier_unbounded()?;
            }
        }
        // Waiting for the stages is not the next step's data time.
        self.last_step_end = Instant::now();
        Ok(())
    }
}

impl Stage for StepExecutor {
    type In = BatchItem;
    type Out = TrainEvent;

    fn process(&mut self, item: BatchItem, out: &mut Emitter<TrainEvent>) -> Result<()> {
        match item {
            BatchItem::Batch(batch) => self.train(batch, out),
            BatchItem::EpochEnd { epoch } => self.end_epoch(epoch, out),
        }
    }

    fn finish(&mut self, _out: &mut Emitter<TrainEvent>) -> Result<()> {
        let trainer = self
            .trainer
            .take()
            .context("the step executor already handed its trainer back")?;
        self.handback
            .try_send(trainer)
            .map_err(|_| anyhow::anyhow!("the program did not wait for the trainer"))
    }
}
