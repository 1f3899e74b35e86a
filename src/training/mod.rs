//! `clipflow train`, the drop-in for `python -m open_clip_train.main`: sets up
//! the run as OpenCLIP's `main` does (run folder, params.txt, model with
//! `--pretrained`, precision, locked towers, optimiser, schedule, loss,
//! `--resume`), then runs its topology (`topologies/train.toml`, or the file
//! `--topology` names): one graph for the whole run, whose step executor
//! owns the trainer until the last epoch is done.

mod epoch_size;
mod evaluate_once;
mod launch;
mod params;
mod precision;
mod ranks;
mod setup;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Result};
use clipflow_actors::kinds::{register_training_kinds, standard_registry, TrainingStages};
use clipflow_actors::step_executor::TrainerHandover;
use clipflow_actors::topology::{Registry, Topology};
use clipflow_actors::train_events::RunPlan;

use crate::topology_files::run_graph;
use crate::topology_files::topology_flags;
use crate::train_args::TrainArgs;
use clipflow_actors::topology::TopologySources;

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

/// Trains with `args`, running `topology`.
pub fn run(args: TrainArgs, topology: TopologySources) -> Result<()> {
    run_with(args, None, topology).map(|_| ())
}

/// [`run`]; `labels` replaces the class names and prompt templates of
/// `--imagenet-val` (the quickstart's own classes).
pub fn run_with(
    args: TrainArgs,
    labels: Option<ZeroShotLabels>,
    topology: TopologySources,
) -> Result<RunSummary> {
    run_with_kinds(args, labels, topology, &|_| {})
}

/// [`run_with`], with kinds of a program's own (`add_kinds` registers
/// them) that `topology` may use beside clipflow's: a stage that takes the
/// step executor's events, say, as a sibling of the logger.
pub fn run_with_kinds(
    args: TrainArgs,
    labels: Option<ZeroShotLabels>,
    topology: TopologySources,
    add_kinds: &dyn Fn(&mut Registry),
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
    let result = train(&args, &mut run, &topology, add_kinds);
    let finished = run.finish();
    result.and(finished)?;
    let log = run.logger.lock();
    Ok(RunSummary {
        run_dir: run.run_dir.clone(),
        losses: log.losses().to_vec(),
        evaluations: log.evaluations().to_vec(),
    })
}

fn train(
    args: &TrainArgs,
    run: &mut setup::PreparedRun,
    topology: &TopologySources,
    add_kinds: &dyn Fn(&mut Registry),
) -> Result<()> {
    let trainer = run.take_trainer()?;
    let Some(epoch_size) = run.epoch_size else {
        // No training data: evaluate the model once, as OpenCLIP does.
        let metrics = evaluate_once::evaluate_once(args, run, &trainer.model)?;
        run.logger.lock().evaluation(run.start_epoch, &metrics)?;
        return Ok(());
    };
    if run.start_epoch >= args.epochs {
        return Ok(());
    }
    let plan = RunPlan {
        first_epoch: run.start_epoch,
        epochs: args.epochs,
        steps_per_epoch: epoch_size.num_batches / args.accum_freq as u64,
        batches_per_epoch: epoch_size.num_batches,
        samples_per_epoch: epoch_size.num_samples,
        resume: run.resume_position,
    };
    let handover = TrainerHandover::default();
    handover.give(trainer)?;
    run_graph_of_run(args, run, &handover, plan, topology, add_kinds)?;
    handover.take_back()?;
    Ok(())
}

/// Builds and runs the run's graph.
fn run_graph_of_run(
    args: &TrainArgs,
    run: &setup::PreparedRun,
    trainer: &TrainerHandover,
    plan: RunPlan,
    topology: &TopologySources,
    add_kinds: &dyn Fn(&mut Registry),
) -> Result<()> {
    let mut flags = topology_flags(args);
    flags.set("epoch", &plan.first_epoch.to_string());
    flags.set("epochs", &plan.epochs.to_string());
    flags.set("rank", &run.launch.rank.to_string());
    flags.set("world-size", &run.launch.world_size.to_string());
    flags.set("blocking-eval", &args.blocking_eval.to_string());
    flags.set("save-every-n-steps", &args.save_every_n_steps.to_string());
    let first_place = plan.resume.map_or(0, |position| position.place);
    flags.set("first-place", &first_place.to_string());
    let first_batch = plan.resume.map_or(0, |position| position.batches);
    flags.set("first-batch", &first_batch.to_string());
    flags.set("epoch-batches", &plan.batches_per_epoch.to_string());
    flags.set("val-data", args.val_data.as_deref().unwrap_or_default());
    let passes = run.evaluator.validation_passes(plan.first_epoch);
    flags.set("validation-passes", &passes.to_string());
    let mut registry = standard_registry();
    register_training_kinds(
        &mut registry,
        TrainingStages {
            trainer: trainer.clone(),
            plan,
            group: run.group.clone(),
            evaluator: Arc::clone(&run.evaluator),
            checkpointer: run.checkpointer.clone(),
            logger: run.logger.clone(),
            take_snapshots: run.checkpointer.dir.is_some()
                || run.evaluator.validation.is_some()
                || !run.evaluator.zero_shot.is_empty(),
        },
    );
    add_kinds(&mut registry);
    let checked = Topology::check(topology, &flags, &registry)?;
    let mut graph = checked.into_graph()?;
    graph.show_live_status(args.debug && std::io::stderr().is_terminal());
    let report = run_graph(
        graph,
        &topology.named().path.display().to_string(),
        "training stopped",
    )?;
    if args.debug {
        eprintln!("{report}");
    }
    Ok(())
}
