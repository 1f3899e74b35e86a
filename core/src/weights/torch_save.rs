//! Writing `torch.save` archives: a [`Value`] tree pickled as `torch.save`
//! pickles it (protocol 2, tensors rebuilt by `torch._utils._rebuild_tensor_v2`
//! from storages named by persistent ids), in the zip layout PyTorch writes
//! (`<root>/data.pkl`, `<root>/data/<key>` per storage, `byteorder`,
//! `version`, every entry's bytes aligned to 64), so `torch.load(path,
//! weights_only=True)` loads it.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use tch::{Device, Kind, Tensor};
use zip::write::FileOptions;
use zip::{CompressionMethod, ZipWriter};

use super::atomic_file::write_atomically;
use super::pickle::STORAGE_CLASSES;
use super::Value;

/// The alignment of every entry's bytes in the archive, as torch writes it
/// (and records in `.storage_alignment`).
const ALIGNMENT: u16 = 64;
/// The archive format version torch 2.x writes in `version`.
const ARCHIVE_VERSION: &[u8] = b"3\n";
/// Storage bytes are copied to the file in chunks of this many bytes, so a
/// large tensor is never duplicated whole in memory.
const COPY_CHUNK_BYTES: i64 = 64 << 20;

/// Writes `value` to `path` as a `torch.save` archive, atomically.
pub(crate) fn write(path: &Path, value: &Value) -> Result<()> {
    let pickled = Pickler::pickle(value)?;
    let root = archive_root_name(path);
    write_atomically(path, |file| write_archive(file, &root, &pickled))
}

/// The archive's top folder: the file name up to its first dot, as torch
/// names it (`epoch_3.pt` holds `epoch_3/data.pkl`).
fn archive_root_name(path: &Path) -> String {
    let file_name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    match file_name.split('.').next() {
        Some(stem) if !stem.is_empty() => stem.to_owned(),
        _ => "archive".to_owned(),
    }
}

type Archive<'a> = ZipWriter<BufWriter<&'a File>>;

fn write_archive(file: &File, root: &str, pickled: &Pickler) -> Result<()> {
    let mut zip = ZipWriter::new(BufWriter::new(file));
    write_entry(&mut zip, root, "data.pkl", &pickled.out)?;
    write_entry(&mut zip, root, ".format_version", b"1")?;
    write_entry(
        &mut zip,
        root,
        ".storage_alignment",
        ALIGNMENT.to_string().as_bytes(),
    )?;
    write_entry(&mut zip, root, "byteorder", b"little")?;
    for (key, tensor) in pickled.storages.iter().enumerate() {
        let name = format!("data/{key}");
        let size = tensor.numel() * tensor.kind().elt_size_in_bytes();
        start_entry(&mut zip, root, &name, size as u64)?;
        write_storage(&mut zip, tensor).with_context(|| format!("writing `{root}/{name}`"))?;
    }
    write_entry(&mut zip, root, "version", ARCHIVE_VERSION)?;
    let mut out = zip.finish().context("finishing the zip archive")?;
    out.flush().context("writing the file")?;
    Ok(())
}

/// Starts the stored (uncompressed), 64-byte aligned entry `<root>/<name>`
/// of `size` bytes.
fn start_entry(zip: &mut Archive, root: &str, name: &str, size: u64) -> Result<()> {
    let options = FileOptions::default()
        .compression_method(CompressionMethod::Stored)
        .large_file(size >= u64::from(u32::MAX));
    zip.start_file_aligned(format!("{root}/{name}"), options, ALIGNMENT)
        .with_context(|| format!("starting `{root}/{name}`"))?;
    Ok(())
}

fn write_entry(zip: &mut Archive, root: &str, name: &str, bytes: &[u8]) -> Result<()> {
    start_entry(zip, root, name, bytes.len() as u64)?;
    zip.write_all(bytes)
        .with_context(|| format!("writing `{root}/{name}`"))
}

/// Writes a tensor's elements, in row-major order, as raw little-endian
/// bytes; non-contiguous and non-CPU tensors are copied chunk by chunk.
fn write_storage(out: &mut impl Write, tensor: &Tensor) -> Result<()> {
    if tensor.numel() == 0 {
        return Ok(());
    }
    let bytes = tensor
        .f_to_device(Device::Cpu)?
        .f_contiguous()?
        .f_reshape([-1])?
        .f_view_dtype(Kind::Uint8)?;
    let total = bytes.size()[0];
    let mut buffer = Vec::new();
    let mut start = 0;
    while start < total {
        let len = COPY_CHUNK_BYTES.min(total - start);
        let chunk = bytes.f_narrow(0, start, len)?;
        buffer.resize(len as usize, 0);
        chunk.f_copy_data_u8(&mut buffer, len as usize)?;
        out.write_all(&buffer)?;
        start += len;
    }
    Ok(())
}

/// Pickles a [`Value`] with the opcodes Python's pickler uses at protocol 2,
/// collecting the tensors whose bytes go into the archive as storages.
struct Pickler {
    out: Vec<u8>,
    /// The tensors in storage-key order: storage `data/<i>` holds the `i`th.
    storages: Vec<Tensor>,
}

impl Pickler {
    /// The pickle of `value` (protocol 2) and the tensors it refers to.
    fn pickle(value: &Value) -> Result<Pickler> {
        let mut pickler = Pickler {
            out: vec![0x80, 2], // PROTO 2
            storages: Vec::new(),
        };
        pickler.value(value)?;
        pickler.out.push(b'.'); // STOP
        Ok(pickler)
    }

    fn value(&mut self, value: &Value) -> Result<()> {
        match value {
            Value::None => self.out.push(b'N'),
            Value::Bool(true) => self.out.push(0x88),
            Value::Bool(false) => self.out.push(0x89),
            Value::Int(int) => self.int(*int),
            Value::Float(float) => {
                self.out.push(b'G'); // BINFLOAT
                self.out.extend_from_slice(&float.to_be_bytes());
            }
            Value::Str(text) => self.str(text),
            Value::Bytes(bytes) => {
                // Protocol 2 has no bytes opcode: Python writes
                // `_codecs.encode(<the bytes as latin-1 text>, "latin1")`.
                self.global("_codecs", "encode");
                self.str(&bytes.iter().map(|&b| char::from(b)).collect::<String>());
                self.str("latin1");
                self.out.extend_from_slice(&[0x86, b'R']); // TUPLE2, REDUCE
            }
            Value::List(items) => {
                self.out.push(b']'); // EMPTY_LIST
                if !items.is_empty() {
                    self.out.push(b'(');
                    for (index, item) in items.iter().enumerate() {
                        self.value(item)
                            .with_context(|| format!("in list item {index}"))?;
                    }
                    self.out.push(b'e'); // APPENDS
                }
            }
            Value::Tuple(items) => {
                self.start_tuple(items.len());
                for (index, item) in items.iter().enumerate() {
                    self.value(item)
                        .with_context(|| format!("in tuple item {index}"))?;
                }
                self.end_tuple(items.len());
            }
            Value::Dict(items) => {
                self.out.push(b'}'); // EMPTY_DICT
                self.dict_items(items)?;
            }
            Value::OrderedDict(items) => {
                self.empty_ordered_dict();
                self.dict_items(items)?;
            }
            Value::Tensor(tensor) => self.tensor(tensor)?,
        }
        Ok(())
    }

    /// The smallest integer opcode that holds `int`, as Python picks it.
    fn int(&mut self, int: i64) {
        if let Ok(byte) = u8::try_from(int) {
            self.out.extend_from_slice(&[b'K', byte]); // BININT1
        } else if let Ok(short) = u16::try_from(int) {
            self.out.push(b'M'); // BININT2
            self.out.extend_from_slice(&short.to_le_bytes());
        } else if let Ok(int) = i32::try_from(int) {
            self.out.push(b'J'); // BININT
            self.out.extend_from_slice(&int.to_le_bytes());
        } else {
            // LONG1: the shortest little-endian two's complement.
            let mut bytes = int.to_le_bytes().to_vec();
            while let [.., next, last] = bytes[..] {
                let redundant = (last == 0 && next < 0x80) || (last == 0xff && next >= 0x80);
                if !redundant {
                    break;
                }
                bytes.pop();
            }
            self.out.extend_from_slice(&[0x8a, bytes.len() as u8]);
            self.out.extend_from_slice(&bytes);
        }
    }

    fn str(&mut self, text: &str) {
        self.out.push(b'X'); // BINUNICODE
        self.out
            .extend_from_slice(&(text.len() as u32).to_le_bytes());
        self.out.extend_from_slice(text.as_bytes());
    }

    fn global(&mut self, module: &str, name: &str) {
        self.out.push(b'c'); // GLOBAL
        for part in [module, name] {
            self.out.extend_from_slice(part.as_bytes());
            self.out.push(b'\n');
        }
    }

    /// Opens a tuple of `len` items, to be pickled next.
    fn start_tuple(&mut self, len: usize) {
        if len > 3 {
            self.out.push(b'('); // MARK
        }
    }

    /// Closes a tuple of `len` items started by [`Pickler::start_tuple`].
    fn end_tuple(&mut self, len: usize) {
        match len {
            0 => self.out.push(b')'),                 // EMPTY_TUPLE
            1..=3 => self.out.push(0x84 + len as u8), // TUPLE1, TUPLE2, TUPLE3
            _ => self.out.push(b't'),                 // TUPLE
        }
    }

    fn int_tuple(&mut self, ints: &[i64]) {
        self.start_tuple(ints.len());
        ints.iter().for_each(|&int| self.int(int));
        self.end_tuple(ints.len());
    }

    /// `collections.OrderedDict()`.
    fn empty_ordered_dict(&mut self) {
        self.global("collections", "OrderedDict");
        self.out.extend_from_slice(b")R"); // EMPTY_TUPLE, REDUCE
    }

    /// Fills the dict on top of the stack.
    fn dict_items(&mut self, items: &[(Value, Value)]) -> Result<()> {
        if items.is_empty() {
            return Ok(());
        }
        self.out.push(b'('); // MARK
        for (key, value) in items {
            self.value(key).context("in a dict key")?;
            self.value(value)
                .with_context(|| format!("under key {}", describe_key(key)))?;
        }
        self.out.push(b'u'); // SETITEMS
        Ok(())
    }

    /// `_rebuild_tensor_v2(storage, 0, size, contiguous stride, False,
    /// OrderedDict())`, with the storage a new `data/<key>` entry holding the
    /// tensor's elements in row-major order.
    fn tensor(&mut self, tensor: &Tensor) -> Result<()> {
        let kind = tensor.f_kind()?;
        let storage_class = STORAGE_CLASSES
            .iter()
            .find(|(_, class_kind)| *class_kind == kind)
            .map(|(class, _)| *class)
            .ok_or_else(|| {
                let supported: Vec<String> = STORAGE_CLASSES
                    .iter()
                    .map(|(_, kind)| format!("{kind:?}"))
                    .collect();
                anyhow!(
                    "a tensor of dtype {kind:?} cannot be saved; supported dtypes: {}",
                    supported.join(", ")
                )
            })?;
        if tensor.is_sparse() {
            bail!("a sparse tensor cannot be saved; make it dense first");
        }
        let size = tensor.size();
        let key = self.storages.len().to_string();
        self.storages.push(tensor.shallow_clone());

        self.global("torch._utils", "_rebuild_tensor_v2");
        self.out.push(b'('); // MARK: the rebuild arguments
        self.out.push(b'('); // MARK: the persistent id
        self.str("storage");
        self.global("torch", storage_class);
        self.str(&key);
        self.str("cpu");
        self.int(size.iter().product());
        self.out.extend_from_slice(b"tQ"); // TUPLE, BINPERSID
        self.int(0); // storage offset
        self.int_tuple(&size);
        self.int_tuple(&contiguous_strides(&size));
        self.out.push(0x89); // requires_grad = False
        self.empty_ordered_dict(); // backward hooks
        self.out.extend_from_slice(b"tR"); // TUPLE, REDUCE
        Ok(())
    }
}

/// The strides of a row-major tensor of `size`, as torch computes them
/// (a dimension of length 0 counts as 1).
fn contiguous_strides(size: &[i64]) -> Vec<i64> {
    let mut strides = vec![1; size.len()];
    for dim in (0..size.len().saturating_sub(1)).rev() {
        strides[dim] = strides[dim + 1] * size[dim + 1].max(1);
    }
    strides
}

/// A dict key for an error message: `"name"` for strings, the value otherwise.
fn describe_key(key: &Value) -> String {
    match key {
        Value::Str(text) => format!("`{text}`"),
        Value::Int(int) => int.to_string(),
        other => format!("{other:?}"),
    }
}
