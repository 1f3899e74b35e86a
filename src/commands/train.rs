//! `clipflow train`: the drop-in for `python -m open_clip_train.main`. Today it
//! parses and validates every OpenCLIP flag; the training loop lands with
//! issue 4, so a valid command line ends with a clear "not yet".

use anyhow::{bail, Result};

use crate::train_args::TrainArgs;

pub fn run(args: TrainArgs) -> Result<()> {
    let args = args
        .resolve_defaults_and_validate()
        .unwrap_or_else(|e| e.exit());
    let unsupported = args.unsupported_flags();
    if !unsupported.is_empty() {
        let lines: Vec<String> = unsupported.iter().map(ToString::to_string).collect();
        bail!("{}", lines.join("\n"));
    }
    bail!(
        "the flags are valid (model {}, batch size {}, {} epochs), but training itself is not built yet",
        args.model,
        args.batch_size,
        args.epochs
    )
}
