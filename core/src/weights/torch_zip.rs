//! `torch.save` files: the zip archive PyTorch writes since 1.6
//! (`<name>/data.pkl` holding the pickled object, `<name>/data/<key>` holding
//! the raw bytes of each storage). The pickle goes through the restricted
//! unpickler; this module reads the storages and turns its lazy tensor records
//! into tensors, and picks the state_dict out of OpenCLIP's checkpoint dict.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use anyhow::{anyhow, bail, ensure, Context, Result};
use tch::{Kind, Tensor};
use zip::ZipArchive;

use super::pickle::{unpickle, Object, TensorRecord};
use super::{NamedTensors, TrainingCheckpoint, Value};

/// The most values one read may build. A pickle can reference one container
/// from many places; this bound stops a small file from expanding into an
/// exponentially large tree.
const MAX_VALUES: usize = 10_000_000;
/// The deepest nesting of containers a read accepts.
const MAX_DEPTH: usize = 256;

/// Reads a `torch.save` file. `with_training_state` also reads the optimizer
/// and gradient-scaler state of a training checkpoint; without it those
/// tensors are never loaded.
pub(crate) fn read_checkpoint(
    path: &Path,
    with_training_state: bool,
) -> Result<TrainingCheckpoint> {
    let mut archive = TorchArchive::open(path)?;
    let root = archive.unpickle_root()?;
    let Some(state_dict) = root.get("state_dict") else {
        return Ok(TrainingCheckpoint {
            state_dict: archive.state_dict(&root)?,
            ..TrainingCheckpoint::default()
        });
    };
    let epoch = match root.get("epoch") {
        None | Some(Object::None) => None,
        Some(Object::Int(epoch)) => Some(epoch),
        Some(other) => bail!(
            "checkpoint `epoch` is a `{}`, not an integer",
            other.type_name()
        ),
    };
    let name = match root.get("name") {
        None | Some(Object::None) => None,
        Some(Object::Str(name)) => Some(name),
        Some(other) => bail!(
            "checkpoint `name` is a `{}`, not a string",
            other.type_name()
        ),
    };
    let mut training_state = |key: &str| -> Result<Option<Value>> {
        match root.get(key) {
            Some(object) if with_training_state => archive.value(&object).map(Some),
            _ => Ok(None),
        }
    };
    let optimizer = training_state("optimizer")?;
    let scaler = training_state("scaler")?;
    let data_position = training_state("data_position")?;
    Ok(TrainingCheckpoint {
        epoch,
        name,
        state_dict: archive.state_dict(&state_dict)?,
        optimizer,
        scaler,
        data_position,
    })
}

/// An open `torch.save` archive and the storages read from it so far.
struct TorchArchive {
    zip: ZipArchive<BufReader<File>>,
    /// The archive's top folder, the name `torch.save` gave the record.
    prefix: String,
    /// Each storage's bytes, read once and shared by all views of it.
    storages: HashMap<String, Tensor>,
    /// How many values have been built, against [`MAX_VALUES`].
    values_built: usize,
}

impl TorchArchive {
    fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).context("opening the file")?;
        let zip =
            ZipArchive::new(BufReader::new(file)).context("reading the torch.save zip archive")?;
        let prefix = zip
            .file_names()
            .find_map(|name| {
                name.strip_suffix("/data.pkl")
                    .filter(|prefix| !prefix.contains('/'))
            })
            .ok_or_else(|| anyhow!("zip archive has no `data.pkl`: not a torch.save file"))?
            .to_owned();
        let mut archive = TorchArchive {
            zip,
            prefix,
            storages: HashMap::new(),
            values_built: 0,
        };
        if archive.has_entry("constants.pkl") {
            bail!("this is a TorchScript archive (torch.jit.save); save a state_dict with torch.save or safetensors instead");
        }
        if archive.has_entry("byteorder") {
            let byteorder = archive.read_entry("byteorder")?;
            ensure!(
                byteorder == b"little",
                "storages are stored {}-endian; only little-endian files are supported",
                String::from_utf8_lossy(&byteorder)
            );
        }
        Ok(archive)
    }

    fn has_entry(&self, name: &str) -> bool {
        let full = format!("{}/{name}", self.prefix);
        self.zip.file_names().any(|entry| entry == full)
    }

    fn read_entry(&mut self, name: &str) -> Result<Vec<u8>> {
        let full = format!("{}/{name}", self.prefix);
        let mut entry = self
            .zip
            .by_name(&full)
            .with_context(|| format!("finding `{full}` in the archive"))?;
        let mut bytes = Vec::new();
        entry
            .read_to_end(&mut bytes)
            .with_context(|| format!("reading `{full}` from the archive"))?;
        Ok(bytes)
    }

    fn unpickle_root(&mut self) -> Result<Object> {
        let pickle = self.read_entry("data.pkl")?;
        unpickle(&pickle)
    }

    /// Reads a mapping of names to tensors.
    fn state_dict(&mut self, object: &Object) -> Result<NamedTensors> {
        let Object::Dict(items) = object else {
            bail!(
                "the pickle holds a `{}`, not a state_dict (a mapping of names to tensors) \
                 or a training checkpoint with a `state_dict` entry",
                object.type_name()
            );
        };
        let items = items.borrow();
        let mut state_dict = Vec::with_capacity(items.len());
        for (key, value) in items.iter() {
            let Object::Str(name) = key else {
                bail!(
                    "state_dict has a `{}` key; names must be strings",
                    key.type_name()
                );
            };
            let Object::Tensor(record) = value else {
                bail!(
                    "state_dict entry `{name}` holds a `{}`, not a tensor",
                    value.type_name()
                );
            };
            let tensor = self
                .tensor(record)
                .with_context(|| format!("reading tensor `{name}`"))?;
            state_dict.push((name.clone(), tensor));
        }
        Ok(state_dict)
    }

    /// Turns an unpickled object into a [`Value`], reading its tensors.
    fn value(&mut self, object: &Object) -> Result<Value> {
        self.value_at_depth(object, 0)
    }

    fn value_at_depth(&mut self, object: &Object, depth: usize) -> Result<Value> {
        self.values_built += 1;
        ensure!(
            self.values_built <= MAX_VALUES,
            "pickle expands to more than {MAX_VALUES} values"
        );
        ensure!(
            depth <= MAX_DEPTH,
            "pickle nests containers deeper than {MAX_DEPTH}"
        );
        let mut values = |items: &[Object]| -> Result<Vec<Value>> {
            items
                .iter()
                .map(|item| self.value_at_depth(item, depth + 1))
                .collect()
        };
        let value = match object {
            Object::None => Value::None,
            Object::Bool(b) => Value::Bool(*b),
            Object::Int(i) => Value::Int(*i),
            Object::Float(f) => Value::Float(*f),
            Object::Str(s) => Value::Str(s.clone()),
            Object::Bytes(b) => Value::Bytes(b.clone()),
            Object::List(items) => Value::List(values(&items.borrow())?),
            Object::Tuple(items) => Value::Tuple(values(items)?),
            Object::Dict(items) => {
                let items = items.borrow();
                let mut pairs = Vec::with_capacity(items.len());
                for (key, value) in items.iter() {
                    pairs.push((
                        self.value_at_depth(key, depth + 1)?,
                        self.value_at_depth(value, depth + 1)?,
                    ));
                }
                Value::Dict(pairs)
            }
            Object::Tensor(record) => Value::Tensor(self.tensor(record)?),
            Object::Storage(_) | Object::Global(_) => {
                bail!(
                    "pickle holds a bare `{}` outside a tensor",
                    object.type_name()
                )
            }
        };
        Ok(value)
    }

    /// Builds the strided view a tensor record describes, on the CPU.
    fn tensor(&mut self, record: &TensorRecord) -> Result<Tensor> {
        let storage = &record.storage;
        if !self.storages.contains_key(&storage.key) {
            let bytes = self.read_entry(&format!("data/{}", storage.key))?;
            let len = i64::try_from(bytes.len())?;
            let tensor = Tensor::f_from_data_size(&bytes, &[len], Kind::Uint8)?;
            self.storages.insert(storage.key.clone(), tensor);
        }
        let bytes = &self.storages[&storage.key];
        let needed = storage
            .numel
            .checked_mul(storage.kind.elt_size_in_bytes() as i64)
            .ok_or_else(|| anyhow!("storage `{}` is too large", storage.key))?;
        let available = bytes.size()[0];
        ensure!(
            available >= needed,
            "storage `{}` holds {available} bytes but its record needs {needed} \
             ({} elements of {:?}): the file is truncated or corrupt",
            storage.key,
            storage.numel,
            storage.kind
        );
        let typed = bytes.f_narrow(0, 0, needed)?.f_view_dtype(storage.kind)?;
        Ok(typed.f_as_strided(&record.size, &record.stride, record.offset)?)
    }
}
