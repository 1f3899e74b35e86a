//! Weight files: safetensors read/write with OpenCLIP names, and a restricted reader for PyTorch `.pt`/`.bin` pickles that runs no pickled code.
//!
//! [`read_weights`] accepts safetensors files and `torch.save` archives (a
//! plain state_dict or OpenCLIP's training checkpoint), telling them apart by
//! their content, not their extension. [`read_checkpoint`] also returns a
//! training checkpoint's epoch, run name and optimizer state.
//! [`write_safetensors`] writes a file that OpenCLIP loads with
//! `create_model(name, pretrained=path)`; [`write_torch_checkpoint`] writes
//! any [`Value`] tree (such as OpenCLIP's training checkpoint dict) as a
//! `torch.save` archive that `torch.load(path, weights_only=True)` loads.

mod atomic_file;
mod pickle;
mod safetensors;
mod torch_save;
mod torch_zip;
mod value;

use std::fs::File;
use std::io::Read;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};

pub use atomic_file::remove_stale_temporaries;
pub use value::Value;

/// Tensors with their OpenCLIP `state_dict` names, in file order.
pub type NamedTensors = Vec<(String, tch::Tensor)>;

/// What an OpenCLIP training checkpoint holds (`epoch_<n>.pt`,
/// `epoch_latest.pt`). A file holding only weights gives just `state_dict`.
#[derive(Debug, Default)]
pub struct TrainingCheckpoint {
    /// The number of epochs completed when it was saved.
    pub epoch: Option<i64>,
    /// The run's `--name`.
    pub name: Option<String>,
    /// Model weights, with DDP's `module.` prefix removed.
    pub state_dict: NamedTensors,
    /// The optimizer's `state_dict()`.
    pub optimizer: Option<Value>,
    /// The AMP gradient scaler's `state_dict()`.
    pub scaler: Option<Value>,
    /// clipflow's record of where the data stream stood, in a checkpoint
    /// saved inside an epoch (`data_position`).
    pub data_position: Option<Value>,
}

/// Reads model weights from a safetensors file or a `torch.save` file (a
/// state_dict, or a training checkpoint's `state_dict` entry). Tensors come
/// back on the CPU with their stored dtype; a `module.` prefix on every name
/// is removed. Errors name the file.
pub fn read_weights(path: &Path) -> Result<NamedTensors> {
    Ok(read(path, false)?.state_dict)
}

/// Reads a training checkpoint: weights as [`read_weights`] does, plus the
/// epoch, run name, optimizer and gradient-scaler state when the file has
/// them.
pub fn read_checkpoint(path: &Path) -> Result<TrainingCheckpoint> {
    read(path, true)
}

/// Writes tensors to a safetensors file under the names given, atomically
/// (a temporary file renamed into place). Tensors may live on any device and
/// need not be contiguous.
pub fn write_safetensors(path: &Path, tensors: &[(String, tch::Tensor)]) -> Result<()> {
    safetensors::write(path, tensors).map_err(|e| anyhow!("{}: {e:#}", path.display()))
}

/// Writes `value` as `torch.save(value, path)` would, atomically: a
/// temporary file beside `path` is written, synced and renamed over it, so a
/// failure leaves an existing `path` intact and no temporary file behind.
/// Tensors may be of any dtype [`read_weights`] reads, on any device and
/// non-contiguous; each is stored contiguously in its own storage. A
/// [`Value::OrderedDict`] (see [`Value::state_dict`]) is written as a
/// `collections.OrderedDict`, as a module's `state_dict()` is. Errors name
/// the file and where in `value` the problem is.
pub fn write_torch_checkpoint(path: &Path, value: &Value) -> Result<()> {
    torch_save::write(path, value).map_err(|e| anyhow!("{}: {e:#}", path.display()))
}

/// The formats [`read_weights`] recognises.
enum Format {
    Safetensors,
    TorchZip,
}

fn read(path: &Path, with_training_state: bool) -> Result<TrainingCheckpoint> {
    let read_by_format = || match detect_format(path)? {
        Format::Safetensors => Ok(TrainingCheckpoint {
            state_dict: safetensors::read(path)?,
            ..TrainingCheckpoint::default()
        }),
        Format::TorchZip => torch_zip::read_checkpoint(path, with_training_state),
    };
    let mut checkpoint = read_by_format().map_err(|e| anyhow!("{}: {e:#}", path.display()))?;
    strip_module_prefix(&mut checkpoint.state_dict);
    Ok(checkpoint)
}

fn detect_format(path: &Path) -> Result<Format> {
    let mut start = Vec::with_capacity(9);
    File::open(path)
        .context("opening the file")?
        .take(9)
        .read_to_end(&mut start)
        .context("reading the file")?;
    match start.as_slice() {
        [b'P', b'K', 3, 4, ..] => Ok(Format::TorchZip),
        [_, _, _, _, _, _, _, _, b'{'] => Ok(Format::Safetensors),
        [0x80, ..] => bail!(
            "this is a pickle without a zip archive around it (the torch.save format before \
             PyTorch 1.6), which is not supported; re-save it with a recent torch.save"
        ),
        _ => bail!("not a weights file: neither safetensors nor a torch.save zip archive"),
    }
}

/// Removes the `module.` prefix DistributedDataParallel puts on every name,
/// when every name has it.
fn strip_module_prefix(state_dict: &mut NamedTensors) {
    const PREFIX: &str = "module.";
    if !state_dict.is_empty() && state_dict.iter().all(|(name, _)| name.starts_with(PREFIX)) {
        for (name, _) in state_dict.iter_mut() {
            name.drain(..PREFIX.len());
        }
    }
}
