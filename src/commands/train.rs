//! `clipflow train`: the drop-in for `python -m open_clip_train.main` (see
//! `crate::training`), with one flag of clipflow's own: `--topology`.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::topology_files;
use crate::train_args::TrainArgs;

#[derive(Args, Debug)]
pub struct TrainCommand {
    #[command(flatten)]
    pub open_clip: TrainArgs,
    /// Topology to run instead of clipflow's topologies/train.toml (a copy
    /// of it with stages changed, added or re-linked); not an OpenCLIP flag.
    #[arg(long, value_name = "FILE", help_heading = "clipflow")]
    pub topology: Option<PathBuf>,
}

pub fn run(command: TrainCommand) -> Result<()> {
    let topology =
        topology_files::chosen(command.topology.as_deref(), crate::training::TOPOLOGY_NAME)?;
    crate::training::run(command.open_clip, topology)
}
