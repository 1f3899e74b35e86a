//! A copy of a trainer's state at one point of training (the end of an
//! epoch), for the stages that read it while training goes on: the
//! evaluator (the weights) and the checkpointer (weights, optimiser and
//! gradient-scaler state). The copy is on the host, so it costs host memory
//! rather than device memory, and the trainer may change its own tensors
//! at once.

use tch::{Device, Tensor};

use super::trainer::Trainer;
use crate::weights::Value;

/// The trained state, copied to the host.
#[derive(Debug)]
pub struct TrainerSnapshot {
    /// Every variable of the model (weights and buffers), sorted by name.
    pub state_dict: Vec<(String, Tensor)>,
    /// The optimiser's `state_dict()`.
    pub optimizer: Value,
    /// The gradient scaler's `state_dict()`, under `--precision amp`.
    pub scaler: Option<Value>,
}

/// A host copy of `tensor` that shares nothing with it.
fn host_copy(tensor: &Tensor) -> Tensor {
    let detached = tensor.detach();
    if detached.device() == Device::Cpu {
        detached.copy()
    } else {
        detached.to_device(Device::Cpu)
    }
}

impl TrainerSnapshot {
    /// Copies `trainer`'s state.
    pub fn of(trainer: &Trainer) -> TrainerSnapshot {
        tch::no_grad(|| {
            let mut state_dict: Vec<(String, Tensor)> = trainer
                .vs
                .variables()
                .into_iter()
                .map(|(name, tensor)| (name, host_copy(&tensor)))
                .collect();
            state_dict.sort_by(|a, b| a.0.cmp(&b.0));
            TrainerSnapshot {
                state_dict,
                optimizer: trainer.optimizer.state_dict().map_tensors(&host_copy),
                scaler: trainer
                    .scaler
                    .as_ref()
                    .map(|scaler| scaler.state_dict().map_tensors(&host_copy)),
            }
        })
    }
}

// SAFETY: the snapshot's tensors are its own (host copies no other handle
// refers to) and nothing mutates them, so reading it from several threads
// races with nothing. (It is Send already, as tch's tensors are.)
unsafe impl Sync for TrainerSnapshot {}
