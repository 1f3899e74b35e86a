//! The `clipflow` command: a drop-in for `python -m open_clip_train.main`
//! plus tools around it (`embed`, `tokenize`, `convert`, `models`).

use clap::{Parser, Subcommand};
use clipflow::commands::{convert, models, train};
use clipflow::train_args::TrainArgs;

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
    /// Train a model with open_clip_train.main's flags.
    Train(TrainArgs),
    /// Rewrite a weights file (.safetensors, OpenCLIP .pt/.bin) as safetensors.
    Convert(convert::ConvertArgs),
    /// List the model architectures and whether clipflow builds them yet.
    Models,
}

/// True when stdout's reader went away (`clipflow models | head`): not an error.
fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.downcast_ref::<std::io::Error>()
        .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
}

fn main() {
    let result = match Cli::parse().command {
        Command::Train(args) => train::run(args),
        Command::Convert(args) => convert::run(&args),
        Command::Models => models::run(),
    };
    if let Err(err) = result {
        if !is_broken_pipe(&err) {
            eprintln!("error: {err:#}");
            std::process::exit(1);
        }
    }
}
