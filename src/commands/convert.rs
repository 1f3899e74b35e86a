//! `clipflow convert IN OUT.safetensors`: rewrites any weights file clipflow
//! reads (safetensors, an OpenCLIP `.pt`/`.bin` state_dict or training
//! checkpoint) as safetensors with OpenCLIP's names.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;
use clipflow_core::weights::{read_weights, write_safetensors};

#[derive(Args, Debug)]
pub struct ConvertArgs {
    /// The weights file to read.
    pub input: PathBuf,
    /// The safetensors file to write.
    pub output: PathBuf,
}

pub fn run(args: &ConvertArgs) -> Result<()> {
    if args.input == args.output {
        bail!(
            "convert: input and output are the same file ({})",
            args.input.display()
        );
    }
    let tensors = read_weights(&args.input)?;
    write_safetensors(&args.output, &tensors)?;
    eprintln!(
        "clipflow convert: {} tensor(s) from {} to {}",
        tensors.len(),
        args.input.display(),
        args.output.display()
    );
    Ok(())
}
