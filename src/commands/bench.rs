//! `clipflow bench data [training flags]`: runs the loading path alone, from
//! shards to device-ready batches, with `clipflow train`'s flags, prints the
//! per-stage summary on stderr and ends with one JSON line on stdout:
//! `images`, `seconds`, `images_per_second`, `skipped` (counts by kind),
//! `peak_memory_bytes` (the process's peak resident set), and the batch
//! count, batch size and workers.
//!
//! The graph is `topologies/train-data.toml` (read when the command starts,
//! see `crate::topology_files`), or the file `--topology` names; the training flags fill in its `[flags]`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Result;
use clap::Subcommand;
use clipflow_actors::batcher::LoadingLedger;
use clipflow_actors::kinds::{register_batcher, standard_registry};
use clipflow_actors::topology::Topology;
use serde_json::json;

use crate::topology_files::{self, run_graph, topology_flags};
use crate::train_args::TrainArgs;

/// The loading topology in clipflow's topologies/ folder that `clipflow
/// bench data` runs unless `--topology` names another.
const TRAIN_DATA_TOPOLOGY_NAME: &str = "train-data.toml";

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub what: BenchTarget,
}

#[derive(Subcommand, Debug)]
pub enum BenchTarget {
    /// Time the loading path alone: shards to device-ready batches.
    Data(Box<BenchDataArgs>),
}

#[derive(clap::Args, Debug)]
pub struct BenchDataArgs {
    /// Loading topology to run instead of clipflow's topologies/train-data.toml.
    #[arg(long, value_name = "FILE")]
    pub topology: Option<PathBuf>,
    /// Stop with an error when more than this fraction of the data is bad
    /// (corrupt images, samples without a caption, unreadable shards...).
    #[arg(long, default_value_t = 0.25, value_name = "FRACTION")]
    pub max_bad_fraction: f64,
    #[command(flatten)]
    pub train: TrainArgs,
}

pub fn run(args: BenchArgs) -> Result<()> {
    match args.what {
        BenchTarget::Data(args) => bench_data(*args),
    }
}

fn bench_data(args: BenchDataArgs) -> Result<()> {
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.max_bad_fraction),
        "--max-bad-fraction must be from 0 to 1, got {}",
        args.max_bad_fraction
    );
    let train = args
        .train
        .resolve_defaults_and_validate()
        .map_err(|error| anyhow::anyhow!("{}", error.to_string().trim_end()))?;
    let mut flags = topology_flags(&train);
    flags.set("max-bad-fraction", &args.max_bad_fraction.to_string());

    let ledger = Arc::new(LoadingLedger::default());
    let mut registry = standard_registry();
    register_batcher(&mut registry, Arc::clone(&ledger));
    let sources = topology_files::chosen(args.topology.as_deref(), TRAIN_DATA_TOPOLOGY_NAME)?;
    let topology = Topology::check(&sources, &flags, &registry)?;
    let mut graph = topology.into_graph()?;
    graph.show_live_status(std::io::stderr().is_terminal());
    let report = run_graph(
        graph,
        &sources.named().path.display().to_string(),
        "the loading path was stopped",
    )?;
    eprintln!("{report}");

    let totals = ledger.totals();
    let seconds = report.elapsed.as_secs_f64();
    let summary = json!({
        "images": totals.samples,
        "batches": totals.batches,
        "seconds": seconds,
        "images_per_second": if seconds > 0.0 { totals.samples as f64 / seconds } else { 0.0 },
        "skipped": totals.skipped,
        "dropped_samples": totals.dropped_samples,
        "peak_memory_bytes": peak_resident_bytes(),
        "batch_size": train.batch_size,
        "workers": train.workers,
    });
    println!("{summary}");
    Ok(())
}

/// The peak resident set size of this process (`VmHWM` in
/// `/proc/self/status`), where the system reports it.
fn peak_resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    let kilobytes: u64 = line
        .trim_start_matches("VmHWM:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kilobytes * 1024)
}
