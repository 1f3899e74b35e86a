//! The safetensors format: an 8-byte little-endian header length, a JSON
//! header mapping each tensor name to its dtype, shape and byte range, then
//! the tensors' raw little-endian bytes.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use anyhow::{anyhow, bail, ensure, Context, Result};
use serde::Deserialize;
use serde_json::json;
use tch::{Device, Kind, Tensor};

use super::atomic_file::write_atomically;
use super::NamedTensors;

/// The header key that holds free-form string metadata, not a tensor.
const METADATA_KEY: &str = "__metadata__";

/// One tensor's entry in the header.
#[derive(Deserialize)]
struct TensorInfo {
    dtype: String,
    shape: Vec<u64>,
    data_offsets: (usize, usize),
}

/// Reads every tensor of a safetensors file, in the order of their bytes.
pub(crate) fn read(path: &Path) -> Result<NamedTensors> {
    let file = std::fs::read(path).context("reading the file")?;
    let (header_len, rest) = file
        .split_first_chunk::<8>()
        .ok_or_else(|| anyhow!("file is too short for a safetensors header"))?;
    let header_len = usize::try_from(u64::from_le_bytes(*header_len))?;
    ensure!(
        header_len <= rest.len(),
        "safetensors header claims {header_len} bytes but the file has {} after the length: \
         the file is truncated or corrupt",
        rest.len()
    );
    let (header, data) = rest.split_at(header_len);
    let header: BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(header).context("parsing the safetensors JSON header")?;

    let mut entries = Vec::new();
    for (name, info) in header {
        if name == METADATA_KEY {
            continue;
        }
        let info: TensorInfo = serde_json::from_value(info)
            .with_context(|| format!("reading the header entry of tensor `{name}`"))?;
        entries.push((name, info));
    }
    entries.sort_by_key(|(_, info)| info.data_offsets);

    let mut tensors = Vec::with_capacity(entries.len());
    for (name, info) in entries {
        let tensor =
            tensor_from_bytes(&info, data).with_context(|| format!("reading tensor `{name}`"))?;
        tensors.push((name, tensor));
    }
    Ok(tensors)
}

fn tensor_from_bytes(info: &TensorInfo, data: &[u8]) -> Result<Tensor> {
    let kind = kind_of_dtype(&info.dtype)?;
    let shape = info
        .shape
        .iter()
        .map(|&n| i64::try_from(n))
        .collect::<Result<Vec<i64>, _>>()?;
    let expected_bytes = info
        .shape
        .iter()
        .try_fold(kind.elt_size_in_bytes() as u64, |acc, &n| {
            acc.checked_mul(n)
        })
        .ok_or_else(|| anyhow!("shape {:?} is too large", info.shape))?;
    let (begin, end) = info.data_offsets;
    ensure!(
        begin <= end && end <= data.len(),
        "byte range {begin}..{end} lies outside the {} data bytes: the file is truncated or corrupt",
        data.len()
    );
    ensure!(
        (end - begin) as u64 == expected_bytes,
        "byte range {begin}..{end} does not hold a {} tensor of shape {:?}",
        info.dtype,
        info.shape
    );
    Ok(Tensor::f_from_data_size(&data[begin..end], &shape, kind)?)
}

fn kind_of_dtype(dtype: &str) -> Result<Kind> {
    let kind = match dtype {
        "BOOL" => Kind::Bool,
        "U8" => Kind::Uint8,
        "I8" => Kind::Int8,
        "I16" => Kind::Int16,
        "I32" => Kind::Int,
        "I64" => Kind::Int64,
        "F16" => Kind::Half,
        "BF16" => Kind::BFloat16,
        "F32" => Kind::Float,
        "F64" => Kind::Double,
        other => bail!("unsupported safetensors dtype `{other}`"),
    };
    Ok(kind)
}

fn dtype_of_kind(kind: Kind) -> Result<&'static str> {
    let dtype = match kind {
        Kind::Bool => "BOOL",
        Kind::Uint8 => "U8",
        Kind::Int8 => "I8",
        Kind::Int16 => "I16",
        Kind::Int => "I32",
        Kind::Int64 => "I64",
        Kind::Half => "F16",
        Kind::BFloat16 => "BF16",
        Kind::Float => "F32",
        Kind::Double => "F64",
        other => bail!("safetensors cannot store tensors of kind {other:?}"),
    };
    Ok(dtype)
}

/// Writes `tensors` to `path` atomically (see [`write_atomically`]).
pub(crate) fn write(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    write_atomically(path, |file| write_file(file, tensors))
}

fn write_file(file: &File, tensors: &[(String, Tensor)]) -> Result<()> {
    // Wider elements first keeps every tensor's bytes aligned to its element
    // size (the header is padded to 8 bytes), as the Python writer does.
    let mut order: Vec<&(String, Tensor)> = tensors.iter().collect();
    order.sort_by_key(|(_, tensor)| std::cmp::Reverse(tensor.kind().elt_size_in_bytes()));

    let mut header = serde_json::Map::new();
    header.insert(METADATA_KEY.to_owned(), json!({ "format": "pt" }));
    let mut names = HashSet::new();
    let mut offset = 0usize;
    for (name, tensor) in &order {
        ensure!(
            name != METADATA_KEY,
            "`{METADATA_KEY}` cannot name a tensor"
        );
        ensure!(
            names.insert(name.as_str()),
            "tensor name `{name}` appears twice"
        );
        let dtype = dtype_of_kind(tensor.kind()).with_context(|| format!("tensor `{name}`"))?;
        let len = tensor.numel() * tensor.kind().elt_size_in_bytes();
        header.insert(
            name.clone(),
            json!({ "dtype": dtype, "shape": tensor.size(), "data_offsets": [offset, offset + len] }),
        );
        offset += len;
    }
    let mut header = serde_json::to_vec(&header)?;
    header.resize(header.len().next_multiple_of(8), b' ');

    let mut out = BufWriter::new(file);
    out.write_all(&(header.len() as u64).to_le_bytes())?;
    out.write_all(&header)?;
    for (name, tensor) in order {
        let contiguous = tensor
            .f_to_device(Device::Cpu)
            .and_then(|t| t.f_contiguous())
            .with_context(|| format!("copying tensor `{name}` to the CPU"))?;
        let mut bytes = vec![0u8; contiguous.numel() * contiguous.kind().elt_size_in_bytes()];
        contiguous.f_copy_data_u8(&mut bytes, contiguous.numel())?;
        out.write_all(&bytes)?;
    }
    out.flush()?;
    Ok(())
}
