//! The checkpointer: at the end of each epoch it writes OpenCLIP's training
//! checkpoint (`{"epoch", "name", "state_dict", "optimizer", "scaler"}`),
//! from the epoch's snapshot of the trained state, to
//! `checkpoints/epoch_N.pt` and `epoch_latest.pt` as `--save-frequency`,
//! `--save-most-recent` and `--delete-previous-checkpoint` say; inside an
//! epoch, on `--save-every-n-steps`, the same dict with the data stream's
//! position to `epoch_E_step_S.pt` (and `epoch_latest.pt`; with
//! `--delete-previous-checkpoint` each new checkpoint removes the step
//! checkpoint this run wrote before it). Every file is
//! written atomically (temporary file, fsync, rename), so a run killed at any
//! instant leaves the previous checkpoint valid; the hidden temporary file
//! such a kill leaves is removed when the next run (the resumed one) starts
//! its checkpointer. It takes the step executor's events beside the
//! evaluator and the logger (a fan-out), and emits nothing.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clipflow_core::train::run_folder::{
    checkpoint_dict, step_checkpoint_dict, step_checkpoint_file_name, CheckpointAction,
    CheckpointPolicy, DataPosition,
};
use clipflow_core::train::snapshot::TrainerSnapshot;
use clipflow_core::weights::{remove_stale_temporaries, Value};

use crate::runtime::{Emitter, Stage, WorkerInfo};
use crate::train_events::TrainEvent;

/// Where and when checkpoints are written.
#[derive(Debug, Clone)]
pub struct CheckpointerConfig {
    /// `<logs>/<name>/checkpoints`; `None` when `--logs none` (nothing saved).
    pub dir: Option<PathBuf>,
    /// `--name`, stored in the checkpoint.
    pub run_name: String,
    pub policy: CheckpointPolicy,
    /// `--epochs`.
    pub epochs: u64,
}

pub struct Checkpointer {
    config: CheckpointerConfig,
    /// The step checkpoint this run wrote last, if it is still there.
    last_step_file: Option<String>,
}

impl Checkpointer {
    pub fn maker(config: CheckpointerConfig) -> impl Fn(WorkerInfo) -> Result<Checkpointer> {
        move |worker| {
            anyhow::ensure!(
                worker.count == 1,
                "a checkpointer runs as one worker (parallelism = 1), not {}",
                worker.count
            );
            if let Some(dir) = &config.dir {
                for stale in remove_stale_temporaries(dir)? {
                    tracing::info!(
                        "removed {}, left by a run that was stopped mid-save",
                        stale.display()
                    );
                }
            }
            Ok(Checkpointer {
                config: config.clone(),
                last_step_file: None,
            })
        }
    }

    /// Writes what the policy asks for after `completed_epoch` epochs, from
    /// the trained state at that point.
    fn save_after_epoch(&mut self, completed_epoch: u64, snapshot: &TrainerSnapshot) -> Result<()> {
        let Some(dir) = &self.config.dir else {
            return Ok(());
        };
        let _span = tracing::info_span!("save_checkpoint", epoch = completed_epoch).entered();
        let policy = &self.config.policy;
        let mut actions =
            policy.actions_after_epoch(completed_epoch as i64, self.config.epochs as i64);
        if policy.delete_previous {
            actions.extend(
                self.last_step_file
                    .take()
                    .map(CheckpointAction::RemoveIfPresent),
            );
        }
        let checkpoint = self.checkpoint(completed_epoch, snapshot);
        policy
            .carry_out(dir, &actions, &checkpoint)
            .with_context(|| {
                format!(
                    "saving the checkpoint of epoch {completed_epoch} in {}",
                    dir.display()
                )
            })
    }

    /// Writes the checkpoint of a snapshot taken inside an epoch.
    fn save_inside_epoch(
        &mut self,
        position: &DataPosition,
        snapshot: &TrainerSnapshot,
    ) -> Result<()> {
        let Some(dir) = &self.config.dir else {
            return Ok(());
        };
        let _span = tracing::info_span!("save_checkpoint", step = position.steps).entered();
        let policy = &self.config.policy;
        let actions = policy.actions_inside_epoch(position, self.last_step_file.as_deref());
        let checkpoint = step_checkpoint_dict(self.checkpoint(position.epoch, snapshot), position);
        policy
            .carry_out(dir, &actions, &checkpoint)
            .with_context(|| {
                format!(
                    "saving the checkpoint of step {} in {}",
                    position.steps,
                    dir.display()
                )
            })?;
        self.last_step_file = Some(step_checkpoint_file_name(position.epoch, position.steps));
        Ok(())
    }

    /// OpenCLIP's checkpoint dict of `snapshot` after `completed_epoch`
    /// epochs.
    fn checkpoint(&self, completed_epoch: u64, snapshot: &TrainerSnapshot) -> Value {
        let shallow = |tensor: &tch::Tensor| tensor.shallow_clone();
        checkpoint_dict(
            completed_epoch as i64,
            &self.config.run_name,
            &snapshot.state_dict,
            snapshot.optimizer.map_tensors(&shallow),
            snapshot
                .scaler
                .as_ref()
                .map(|scaler| scaler.map_tensors(&shallow)),
        )
    }
}

impl Stage for Checkpointer {
    type In = TrainEvent;
    type Out = ();

    fn process(&mut self, event: TrainEvent, _out: &mut Emitter<()>) -> Result<()> {
        match &event {
            TrainEvent::EpochEnd(end) => match &end.snapshot {
                Some(snapshot) => self.save_after_epoch(end.plan.epoch + 1, snapshot),
                None => Ok(()),
            },
            TrainEvent::MidEpoch(mid) => self.save_inside_epoch(&mid.position, &mid.snapshot),
            _ => Ok(()),
        }
    }
}
