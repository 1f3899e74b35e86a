//! `clipflow check FILE [--flag value ...]`: validates a topology file (kinds,
//! settings, links, item types, cycles, flags) without running it.

use clipflow_actors::kinds::standard_registry;
use clipflow_actors::topology::{FlagValues, Topology};

use crate::topology_files;

use super::run::RunArgs;

pub fn run(args: &RunArgs) -> anyhow::Result<()> {
    let flags = FlagValues::parse_args(&args.flags)?;
    let sources = topology_files::read(&args.topology)?;
    let topology = Topology::check(&sources, &flags, &standard_registry())?;
    let components: Vec<String> = topology
        .components()
        .map(|(name, kind)| format!("{name} ({kind})"))
        .collect();
    println!(
        "{}: ok: {}",
        args.topology.display(),
        components.join(" -> ")
    );
    Ok(())
}
