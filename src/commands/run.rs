//! `clipflow run FILE [--flag value ...]`: launches the pipeline a topology
//! file describes, shows a live line per stage while it runs (on a terminal)
//! and prints the per-stage summary when it ends.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Context;
use clipflow_actors::kinds::standard_registry;
use clipflow_actors::runtime::RunError;
use clipflow_actors::topology::{FlagValues, Topology};

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
    let topology = Topology::load(&args.topology, &flags, &standard_registry())?;
    let mut graph = topology.into_graph()?;
    graph.show_live_status(std::io::stderr().is_terminal());
    match graph.run() {
        Ok(report) => {
            println!("{report}");
            Ok(())
        }
        Err(RunError::StageFailed {
            stage,
            error,
            report,
        }) => {
            eprintln!("{report}");
            Err(error).with_context(|| {
                format!(
                    "{}: stage '{stage}' failed; the pipeline was stopped",
                    args.topology.display()
                )
            })
        }
        Err(error) => Err(error).with_context(|| args.topology.display().to_string()),
    }
}
