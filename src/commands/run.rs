//! `clipflow run FILE [--flag value ...]`: launches the pipeline a topology
//! file describes, shows a live line per stage while it runs (on a terminal)
//! and prints the per-stage summary when it ends.

use std::io::IsTerminal;
use std::path::PathBuf;

use clipflow_actors::kinds::standard_registry;
use clipflow_actors::topology::{FlagValues, Topology};

use crate::topology_files;

use crate::topology_files::run_graph;

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Topology file (see topologies/README.md).
    pub topology: PathBuf,
    /// Values for the flags the topology's [flags] table declares, as
    /// `--name value` or `--name=value`.
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "--FLAG VALUE"
    )]
    pub flags: Vec<String>,
}

pub fn run(args: &RunArgs) -> anyhow::Result<()> {
    let flags = FlagValues::parse_args(&args.flags)?;
    let sources = topology_files::read(&args.topology)?;
    let topology = Topology::check(&sources, &flags, &standard_registry())?;
    let mut graph = topology.into_graph()?;
    graph.show_live_status(std::io::stderr().is_terminal());
    let report = run_graph(
        graph,
        &args.topology.display().to_string(),
        "the pipeline was stopped",
    )?;
    println!("{report}");
    Ok(())
}
