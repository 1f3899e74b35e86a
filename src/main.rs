//! The `clipflow` command: a drop-in for `python -m open_clip_train.main`
//! plus tools around it (`embed`, `tokenize`, `convert`, `models`).

use std::io::Write;

use anyhow::Result;
use clap::{Parser, Subcommand};
use clipflow_core::model::config::{model_names, unsupported_reason};
use clipflow_core::model::{ModelConfig, ModelOverrides};

#[derive(Parser)]
#[command(
    name = "clipflow",
    version,
    about = "CLIP training as a streaming dataflow of actors"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List the model architectures and whether clipflow builds them yet.
    Models,
}

fn list_models() -> Result<()> {
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

/// True when stdout's reader went away (`clipflow models | head`): not an error.
fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.downcast_ref::<std::io::Error>()
        .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Models => list_models(),
    };
    if let Err(err) = result.or_else(|e| if is_broken_pipe(&e) { Ok(()) } else { Err(e) }) {
        eprintln!("error: {err:#}");
        std::process::exit(2);
    }
}
