//! A copy of a trainer's state at one point of training (the end of an
//! epoch, a save step), for the stages that read it while training goes
//! on: the evaluator (the weights) and the checkpointer (weights, optimiser
//! and gradient-scaler state). The trainer may change its own tensors at
//! once. The copy stays on the training device when that device has room
//! for it ([`snapshot_device`] has the rule), which is a device-to-device
//! copy; otherwise, and on CPU, it is on the host.

use anyhow::Result;
use tch::{Device, Tensor};

use super::trainer::Trainer;
use crate::shim::{device_memory, DeviceMemory};
use crate::weights::Value;

/// The trained state, copied.
#[derive(Debug)]
pub struct TrainerSnapshot {
    /// Where the copy is: the training device, or the host.
    pub device: Device,
    /// Every variable of the model (weights and buffers), sorted by name.
    pub state_dict: Vec<(String, Tensor)>,
    /// The optimiser's `state_dict()`.
    pub optimizer: Value,
    /// The gradient scaler's `state_dict()`, under `--precision amp`.
    pub scaler: Option<Value>,
}

/// Device memory a snapshot leaves free, beyond itself and the evaluator's
/// copy of the weights: at least this many bytes...
const DEVICE_RESERVE_BYTES: u64 = 2 << 30;
/// ...and at least this fraction of the device's memory.
const DEVICE_RESERVE_FRACTION: f64 = 0.1;

/// Where a snapshot of `snapshot_bytes` is copied, for a trainer on
/// `device` whose memory is `memory`: on the device when its free memory
/// holds twice the snapshot (the copy, and the evaluator's model built from
/// it) and still leaves the larger of 2 GiB and a tenth of the device free
/// (for training's and evaluation's activations); otherwise on the host.
/// The free memory is measured when the snapshot is taken, after training
/// steps, so the memory the caching allocator keeps for training counts as
/// used.
pub fn snapshot_device(
    device: Device,
    snapshot_bytes: u64,
    memory: Option<DeviceMemory>,
) -> Device {
    let Some(memory) = memory else {
        return Device::Cpu;
    };
    let reserve =
        DEVICE_RESERVE_BYTES.max((memory.total_bytes as f64 * DEVICE_RESERVE_FRACTION) as u64);
    let needed = snapshot_bytes.saturating_mul(2).saturating_add(reserve);
    if memory.free_bytes >= needed {
        device
    } else {
        Device::Cpu
    }
}

/// Bytes held by `tensor`'s elements.
pub fn bytes_of(tensor: &Tensor) -> u64 {
    (tensor.numel() * tensor.kind().elt_size_in_bytes()) as u64
}

/// A copy of `tensor` on `device` that shares nothing with it.
fn copy_to(tensor: &Tensor, device: Device) -> Tensor {
    let detached = tensor.detach();
    if detached.device() == device {
        detached.copy()
    } else {
        detached.to_device(device)
    }
}

impl TrainerSnapshot {
    /// Copies `trainer`'s state, on its device when [`snapshot_device`]
    /// allows.
    pub fn of(trainer: &Trainer) -> Result<TrainerSnapshot> {
        let variables = trainer.vs.variables();
        let optimizer = trainer.optimizer.state_dict();
        let scaler = trainer.scaler.as_ref().map(|scaler| scaler.state_dict());
        let bytes = variables.values().map(bytes_of).sum::<u64>()
            + optimizer.tensor_bytes()
            + scaler.as_ref().map_or(0, Value::tensor_bytes);
        let training_device = trainer.vs.device();
        let device = snapshot_device(training_device, bytes, device_memory(training_device)?);
        let copy = |tensor: &Tensor| copy_to(tensor, device);
        Ok(tch::no_grad(|| {
            let mut state_dict: Vec<(String, Tensor)> = variables
                .into_iter()
                .map(|(name, tensor)| (name, copy(&tensor)))
                .collect();
            state_dict.sort_by(|a, b| a.0.cmp(&b.0));
            TrainerSnapshot {
                device,
                state_dict,
                optimizer: optimizer.map_tensors(&copy),
                scaler: scaler.map(|scaler| scaler.map_tensors(&copy)),
            }
        }))
    }
}

// SAFETY: the snapshot's tensors are its own (copies no other handle refers
// to) and nothing mutates them, so reading it from several threads races
// with nothing. (It is Send already, as tch's tensors are.)
unsafe impl Sync for TrainerSnapshot {}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn memory(free_gib: u64, total_gib: u64) -> Option<DeviceMemory> {
        Some(DeviceMemory {
            free_bytes: free_gib * GIB,
            total_bytes: total_gib * GIB,
        })
    }

    #[test]
    fn a_cpu_trainer_snapshots_to_the_host() {
        assert_eq!(snapshot_device(Device::Cpu, 1, None), Device::Cpu);
    }

    #[test]
    fn a_device_with_room_keeps_the_snapshot() {
        // 2 x 4 GiB + a tenth of 140 GiB = 22 GiB.
        assert_eq!(
            snapshot_device(Device::Cuda(0), 4 * GIB, memory(22, 140)),
            Device::Cuda(0)
        );
    }

    #[test]
    fn a_device_short_of_room_sends_the_snapshot_to_the_host() {
        assert_eq!(
            snapshot_device(Device::Cuda(0), 4 * GIB, memory(21, 140)),
            Device::Cpu
        );
        // A small device: the 2 GiB floor of the reserve holds.
        assert_eq!(
            snapshot_device(Device::Cuda(1), GIB / 2, memory(2, 8)),
            Device::Cpu
        );
        assert_eq!(
            snapshot_device(Device::Cuda(1), GIB / 2, memory(3, 8)),
            Device::Cuda(1)
        );
    }
}
