//! `clipflow models`: every OpenCLIP architecture, and why clipflow does not
//! build it yet where it does not.

use std::io::Write;

use anyhow::Result;
use clipflow_core::model::config::{model_names, unsupported_reason};
use clipflow_core::model::{ModelConfig, ModelOverrides};

pub fn run() -> Result<()> {
    let mut out = std::io::stdout().lock();
    for name in model_names() {
        let config = ModelConfig::by_name(name, &ModelOverrides::default())?;
        match unsupported_reason(&config) {
            None => writeln!(out, "{name}")?,
            Some(why) => writeln!(out, "{name}\t(not yet: {why})")?,
        }
    }
    Ok(())
}
