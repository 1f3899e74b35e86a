//! The checkpointer: at the end of each epoch it writes OpenCLIP's training
//! checkpoint, from the epoch's snapshot of the trained state, (`{"epoch", "name", "state_dict", "optimizer", "scaler"}`) to
//! `checkpoints/epoch_N.pt` and `epoch_latest.pt` as `--save-frequency`,
//! `--save-most-recent` and `--delete-previous-checkpoint` say. Every file is
//! written atomically (temporary file, fsync, rename), so a run killed at any
//! instant leaves the previous checkpoint valid. It takes the step
//! executor's events beside the evaluator and the logger (a fan-out), and
//! emits nothing.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clipflow_core::train::checkpoint::{checkpoint_dict, CheckpointPolicy};
use clipflow_core::train::snapshot::TrainerSnapshot;

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
}

impl Checkpointer {
    pub fn maker(config: CheckpointerConfig) -> impl Fn(WorkerInfo) -> Result<Checkpointer> {
        move |worker| {
            anyhow::ensure!(
                worker.count == 1,
                "a checkpointer runs as one worker (parallelism = 1), not {}",
                worker.count
            );
            Ok(Checkpointer {
                config: config.clone(),
            })
        }
    }

    /// Writes what the policy asks for after `completed_epoch` epochs, from
    /// the trained state at that point.
    fn save(&self, completed_epoch: u64, snapshot: &TrainerSnapshot) -> Result<()> {
        let Some(dir) = &self.config.dir else {
            return Ok(());
        };
        let _span = tracing::info_span!("save_checkpoint", epoch = completed_epoch).entered();
        let shallow = |tensor: &tch::Tensor| tensor.shallow_clone();
        let checkpoint = checkpoint_dict(
            completed_epoch as i64,
            &self.config.run_name,
            &snapshot.state_dict,
            snapshot.optimizer.map_tensors(&shallow),
            snapshot
                .scaler
                .as_ref()
                .map(|scaler| scaler.map_tensors(&shallow)),
        );
        self.config
            .policy
            .save_after_epoch(
                dir,
                completed_epoch as i64,
                self.config.epochs as i64,
                &checkpoint,
            )
            .with_context(|| {
                format!(
                    "saving the checkpoint of epoch {completed_epoch} in {}",
                    dir.display()
                )
            })
    }
}

impl Stage for Checkpointer {
    type In = TrainEvent;
    type Out = ();

    fn process(&mut self, event: TrainEvent, _out: &mut Emitter<()>) -> Result<()> {
        if let TrainEvent::EpochEnd(end) = &event {
            self.save(end.plan.epoch + 1, &end.snapshot)?;
        }
        Ok(())
    }
}
