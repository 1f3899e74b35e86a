//! TensorBoard event files (`--report-to tensorboard`), written without
//! TensorFlow or protoc: a TFRecord stream (length, masked CRC-32C of the
//! length, payload, masked CRC-32C of the payload) of `Event` protobufs,
//! encoded by hand for the few fields scalars need. The first event carries
//! `file_version: "brain.Event:2"`, as every TensorBoard writer's does; each
//! scalar is one `Event{wall_time, step, summary{value{tag, simple_value}}}`
//! as `SummaryWriter.add_scalar` writes it.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};

/// Appends scalars to one event file in a run's tensorboard folder; every
/// call is flushed, so a TensorBoard watching the folder sees each log step.
pub struct TensorboardWriter {
    file: BufWriter<File>,
    path: PathBuf,
}

impl TensorboardWriter {
    /// Creates `dir` if needed and a new event file in it, named as
    /// PyTorch's `SummaryWriter` names them
    /// (`events.out.tfevents.<seconds>.<host>.<pid>.0`).
    pub fn create(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the tensorboard folder {}", dir.display()))?;
        let name = format!(
            "events.out.tfevents.{:010}.{}.{}.0",
            unix_seconds() as u64,
            super::hostname(),
            std::process::id()
        );
        let path = dir.join(name);
        let file = File::create(&path)
            .with_context(|| format!("creating the tensorboard event file {}", path.display()))?;
        let mut writer = TensorboardWriter {
            file: BufWriter::new(file),
            path,
        };
        let mut version = Vec::new();
        put_double(&mut version, 1, unix_seconds());
        put_bytes(&mut version, 3, b"brain.Event:2");
        writer.write_record(&version)?;
        writer.flush()?;
        Ok(writer)
    }

    /// The event file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes one scalar event per `(tag, value)` at `step` (values are
    /// stored as 32-bit floats, as TensorBoard's `simple_value` is), then
    /// flushes.
    pub fn add_scalars(&mut self, step: i64, scalars: &[(String, f64)]) -> Result<()> {
        let wall_time = unix_seconds();
        for (tag, value) in scalars {
            self.write_record(&scalar_event(wall_time, step, tag, *value as f32))?;
        }
        self.flush()
    }

    fn write_record(&mut self, payload: &[u8]) -> Result<()> {
        let length = (payload.len() as u64).to_le_bytes();
        let mut record = Vec::with_capacity(payload.len() + 16);
        record.extend_from_slice(&length);
        record.extend_from_slice(&masked_crc32c(&length).to_le_bytes());
        record.extend_from_slice(payload);
        record.extend_from_slice(&masked_crc32c(payload).to_le_bytes());
        self.file
            .write_all(&record)
            .with_context(|| format!("writing {}", self.path.display()))
    }

    fn flush(&mut self) -> Result<()> {
        self.file
            .flush()
            .with_context(|| format!("writing {}", self.path.display()))
    }
}

fn unix_seconds() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|since| since.as_secs_f64())
        .unwrap_or(0.0)
}

/// `Event{wall_time: 1, step: 2, summary: 5 {value: 1 {tag: 1, simple_value: 2}}}`.
fn scalar_event(wall_time: f64, step: i64, tag: &str, value: f32) -> Vec<u8> {
    let mut summary_value = Vec::new();
    put_bytes(&mut summary_value, 1, tag.as_bytes());
    put_key(&mut summary_value, 2, WIRE_FIXED32);
    summary_value.extend_from_slice(&value.to_le_bytes());
    let mut summary = Vec::new();
    put_bytes(&mut summary, 1, &summary_value);
    let mut event = Vec::new();
    put_double(&mut event, 1, wall_time);
    put_key(&mut event, 2, WIRE_VARINT);
    put_varint(&mut event, step as u64);
    put_bytes(&mut event, 5, &summary);
    event
}

const WIRE_VARINT: u8 = 0;
const WIRE_FIXED64: u8 = 1;
const WIRE_BYTES: u8 = 2;
const WIRE_FIXED32: u8 = 5;

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn put_key(out: &mut Vec<u8>, field: u32, wire_type: u8) {
    put_varint(out, (u64::from(field) << 3) | u64::from(wire_type));
}

fn put_double(out: &mut Vec<u8>, field: u32, value: f64) {
    put_key(out, field, WIRE_FIXED64);
    out.extend_from_slice(&value.to_le_bytes());
}

fn put_bytes(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_key(out, field, WIRE_BYTES);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), table driven.
fn crc32c(bytes: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut index = 0;
        while index < 256 {
            let mut crc = index as u32;
            let mut bit = 0;
            while bit < 8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0x82F6_3B78
                } else {
                    crc >> 1
                };
                bit += 1;
            }
            table[index] = crc;
            index += 1;
        }
        table
    };
    !bytes.iter().fold(!0u32, |crc, &byte| {
        TABLE[((crc ^ u32::from(byte)) & 0xff) as usize] ^ (crc >> 8)
    })
}

/// TFRecord's masking of a CRC, so a CRC of data holding CRCs stays strong.
fn masked_crc32c(bytes: &[u8]) -> u32 {
    let crc = crc32c(bytes);
    (crc.rotate_right(15)).wrapping_add(0xa282_ead8)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The check value of CRC-32C (the catalogue's `CRC-32/ISCSI`).
    #[test]
    fn crc32c_matches_the_catalogue_check_value() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn varints_use_seven_bits_per_byte() {
        let mut out = Vec::new();
        put_varint(&mut out, 300);
        assert_eq!(out, [0xAC, 0x02]);
    }
}
