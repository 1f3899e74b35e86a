//! `clipflow train`, the drop-in for `python -m open_clip_train.main`: sets up
//! the run as OpenCLIP's `main` does (run folder, params.txt, model with
//! `--pretrained`, precision, locked towers, optimiser, schedule, loss,
//! `--resume`), then runs its topology (`topologies/train.toml`, or the file
//! `--topology` names) once per epoch around a trainer, evaluator settings
//! and logs that live across epochs.

mod epoch_size;
mod launch;
mod params;
mod precision;
mod ranks;
mod setup;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Result};
use clipflow_actors::evaluator::evaluate;
use clipflow_actors::kinds::{register_training_kinds, standard_registry, TrainingStages};
use clipflow_actors::step_executor::TrainerHandover;
use clipflow_actors::topology::Topology;
use clipflow_actors::train_events::EpochPlan;

use crate::commands::bench::topology_flags;
use crate::runtime::run_graph;
use crate::topology_files::TopologyFile;
use crate::train_args::TrainArgs;

/// The file in clipflow's topologies/ folder that `clipflow train` runs
/// unless `--topology` names another.
pub const TOPOLOGY_NAME: &str = "train.toml";

pub use setup::ZeroShotLabels;

/// What a finished run leaves for a caller that wants to show it.
pub struct RunSummary {
    /// `<--logs>/<name>`, unless `--logs none`.
    pub run_dir: Option<PathBuf>,
    /// (step, loss) at every logged step.
    pub losses: Vec<(u64, f64)>,
    /// (completed epoch, metrics) of every evaluation.
    pub evaluations: Vec<(u64, Vec<(String, f64)>)>,
}

/// Trains with `args`, running `topology` each epoch.
pub fn run(args: TrainArgs, topology: TopologyFile) -> Result<()> {
    run_with(args, None, topology).map(|_| ())
}

/// [`run`]; `labels` replaces the class names and prompt templates of
/// `--imagenet-val` (the quickstart's own classes).
pub fn run_with(
    args: TrainArgs,
    labels: Option<ZeroShotLabels>,
    topology: TopologyFile,
) -> Result<RunSummary> {
    let args = args
        .resolve_defaults_and_validate()
        .unwrap_or_else(|e| e.exit());
    let unsupported = args.unsupported_flags();
    if !unsupported.is_empty() {
        let lines: Vec<String> = unsupported.iter().map(ToString::to_string).collect();
        bail!("{}", lines.join("\n"));
    }
    let mut run = setup::prepare(&args, labels, &topology)?;
    let result = train(&args, &mut run, &topology);
    let finished = run.finish();
    result.and(finished)?;
    let log = run.logger.lock();
    Ok(RunSummary {
        run_dir: run.run_dir.clone(),
        losses: log.losses().to_vec(),
        evaluations: log.evaluations().to_vec(),
    })
}

fn train(args: &TrainArgs, run: &mut setup::PreparedRun, topology: &TopologyFile) -> Result<()> {
    let mut trainer = run.take_trainer()?;
    let Some(epoch_size) = run.epoch_size else {
        // No training data: evaluate the model once, as OpenCLIP does.
        let metrics = evaluate(&trainer.model, &run.evaluator, run.start_epoch, &mut |p| {
            if let Err(error) = run.logger.lock().evaluation_progress(&p) {
                eprintln!("clipflow: writing the log: {error:#}");
            }
        })?;
        run.logger.lock().evaluation(run.start_epoch, &metrics)?;
        return Ok(());
    };
    for epoch in run.start_epoch..args.epochs {
        run.logger.lock().info(&format!("Start epoch {epoch}"));
        let plan = EpochPlan {
            epoch,
            epochs: args.epochs,
            steps_per_epoch: epoch_size.num_batches / args.accum_freq as u64,
            samples_per_epoch: epoch_size.num_samples,
        };
        let handover = TrainerHandover::default();
        handover.give(trainer)?;
        run_epoch(args, run, &handover, plan, topology)?;
        trainer = handover.take_back()?;
        if let Some(group) = &run.group {
            // Rank 0 evaluates and saves after the epoch while the others
            // wait here (as at OpenCLIP's barrier), for as long as that
            // takes rather than the group's timeout.
            group.barrier_unbounded()?;
        }
    }
    Ok(())
}

/// Builds and runs one epoch's graph.
fn run_epoch(
    args: &TrainArgs,
    run: &setup::PreparedRun,
    trainer: &TrainerHandover,
    plan: EpochPlan,
    topology: &TopologyFile,
) -> Result<()> {
    let mut flags = topology_flags(args);
    flags.set("epoch", &plan.epoch.to_string());
    flags.set("rank", &run.launch.rank.to_string());
    flags.set("world-size", &run.launch.world_size.to_string());
    let mut registry = standard_registry();
    register_training_kinds(
        &mut registry,
        TrainingStages {
            trainer: trainer.clone(),
            plan,
            evaluator: Arc::clone(&run.evaluator),
            checkpointer: run.checkpointer.clone(),
            logger: run.logger.clone(),
        },
    );
    let checked = Topology::parse(&topology.path, &topology.text, &flags, &registry)?;
    let mut graph = checked.into_graph()?;
    graph.show_live_status(args.debug && std::io::stderr().is_terminal());
    let stopped = format!("training stopped in epoch {}", plan.epoch);
    let report = run_graph(graph, &topology.path.display().to_string(), &stopped)?;
    if args.debug {
        eprintln!("{report}");
    }
    Ok(())
}
